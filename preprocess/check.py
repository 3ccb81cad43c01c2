"""`epic-check`: verify a frame store against its manifest, and say which shards to redo.

Per shard: the file is published, is exactly as long as its LMDB meta page says (the
compacted copy epic-extract publishes), its metadata parses and matches the plan (no
missing or extra video, same parameters), every stored frame is found the way the reader
finds it (a lookup of its key from the root) with a matching CRC-32, a walk of the B-tree
meets its keys in order and no other keys, and every planned frame up to the decoder's end
is stored. ``deep`` also decodes every JPEG and checks its size. With annotations, every
annotated frame must be readable (stored, or past the end by at most the clamp tolerance).
The default mode reads each shard once, in key order: it is bound by the disk
(bench/bench_check.py).

Every read goes through the reader training uses (:class:`epicdata.lmdb_pages.ShardPages`,
``pread``, no memory map), so a check that passes means every read of the store succeeds,
and a reader's failure (a damaged page, a missing key, a checksum) is a problem the check
names too. A file of another LMDB format, which that reader leaves to py-lmdb, is checked
through py-lmdb as well, and the report says so once.

Each shard is read in a forked child process (4 ms a shard; spawn costs 180 ms): a bug in
the checker, or py-lmdb's map on a damaged file of another format (SIGABRT, SIGSEGV,
SIGBUS), may not take the checker down or hide the other shards: the shard gets a problem
row instead. A child that takes longer than :func:`shard_timeout_s` is killed and its
shard reported.
"""

from __future__ import annotations

import bisect
import faulthandler
import io
import json
import logging
import multiprocessing
import os
import signal
import tempfile
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

import lmdb
from PIL import Image

from epicdata.annotations import SPLIT_FILES, AnnotationDir, Segment
from epicdata.checksums import frame_checksum, unpack_checksums
from epicdata.console import site_of_environment, user_line
from epicdata.constants import CLAMP_TOLERANCE_FRAMES
from epicdata.errors import MalformedMetadataError
from epicdata.frame_index import (
    ENTRY,
    HEADER,
    FrameIndexError,
    add_index,
    content_digest,
    parse_header,
    unpack_index,
)
from epicdata.frames import flow_index
from epicdata.layout import (
    PUBLISH_RECORD_KEY,
    READABLE_FORMAT_VERSIONS,
    SHARD_META_KEY,
    checksum_key,
    entry_keys,
    failure_record_path,
    frame_index_key,
    shard_path,
    video_meta_key,
)
from epicdata.lmdb_env import open_shard_readonly
from epicdata.lmdb_pages import PageFormatError, ShardPages, iter_keys, main_database
from epicdata.manifest import SOURCE_FRAMES, ExtractParams, Manifest, PlannedVideo, ShardPlan
from epicdata.metadata import ShardMeta, VideoMeta
from epicdata.ranges import Range, array_spec, frames_in_ranges
from epicdata.sampling import (
    flow_segment_range,
    sampled_flow_frames_to_keep,
    sampled_frames_to_keep,
)
from preprocess.extract import load_runnable_manifest

log = logging.getLogger(__name__)

#: Problems listed per video before the rest are summarised as a count.
MAX_PROBLEMS_PER_VIDEO = 5
#: Keys named when a shard holds more keys than its metadata accounts for.
MAX_STRAY_KEYS_NAMED = 5
#: Per-shard time limit: a base (process start, opening the file on a busy parallel file
#: system) plus the shard's bytes at a slow rate, so that only a shard whose B-tree loops,
#: or a disk that has stalled, reaches it. 10 MB/s is 1/130 of the cold-cache speed
#: measured (docs/benchmarks.md); --deep decodes every JPEG on one core, measured at
#: 37 MB/s, so it gets 2 MB/s. A 1.2 GB shard (100,000 frames) gets 4 min, 12 with --deep.
SHARD_TIMEOUT_BASE_S = 120.0
SLOW_READ_BYTES_PER_S = 10e6
SLOW_DECODE_BYTES_PER_S = 2e6
#: The most any shard gets: 12 h is 430 GB at the slow read rate, 86 GB at the slow decode
#: rate. Without it a file with a huge sparse tail (``truncate -s 5T``) asked the pipe for a
#: wait longer than it can take (OverflowError); such a file is reported at once anyway.
SHARD_TIMEOUT_MAX_S = 12 * 3600.0
#: What a signal that killed a shard's child process means.
_SIGNAL_CAUSES = {
    signal.SIGABRT: "LMDB assertion",
    signal.SIGSEGV: "segmentation fault",
    signal.SIGBUS: "bus error",
    signal.SIGKILL: "killed, e.g. out of memory",
}


def shard_timeout_s(size_bytes: int, *, deep: bool) -> float:
    """Seconds allowed to check a shard of ``size_bytes`` bytes (see SHARD_TIMEOUT_BASE_S)."""
    rate = SLOW_DECODE_BYTES_PER_S if deep else SLOW_READ_BYTES_PER_S
    return min(SHARD_TIMEOUT_BASE_S + size_bytes / rate, SHARD_TIMEOUT_MAX_S)


@dataclass
class ShardCheck:
    """Outcome for one shard; ``published`` False when its file is absent; ``py_lmdb``:
    why it was read with py-lmdb rather than the store's page reader (None: it was not)."""

    index: int
    path: str
    published: bool
    videos: int = 0
    frames: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)
    py_lmdb: str | None = None
    #: False: a shard of store format 1 without a frame index (reads look every frame up
    #: in its B-tree; ``epic-check --upgrade`` adds the index in place).
    indexed: bool = True

    @property
    def index_only(self) -> bool:
        """Whether every problem is one of the frame index (``--upgrade`` fixes them)."""
        return bool(self.problems) and all(INDEX_FIX in p for p in self.problems)


@dataclass
class CheckReport:
    """Outcome for a store. ``problems`` holds every problem (shard ones prefixed with the
    shard); ``resubmit_indices`` the shards to extract again."""

    store: str
    shards: list[ShardCheck]
    store_problems: list[str] = field(default_factory=list)
    #: Videos per source kind (``video``, ``frames``) among the shards read.
    sources: dict[str, int] = field(default_factory=dict)
    #: Shards given their frame index by ``--upgrade``.
    upgraded: list[int] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        out = [f"shard {s.index}: {p}" for s in self.shards for p in s.problems]
        return out + self.store_problems

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def resubmit_indices(self) -> list[int]:
        """The shards to extract again (not those whose frame index alone is wrong)."""
        return [s.index for s in self.shards if s.problems and not s.index_only]

    @property
    def upgrade_notes(self) -> list[str]:
        """What ``--upgrade`` would do, or did."""
        store = self.store
        notes = []
        unindexed = [s.index for s in self.shards if s.published and not s.indexed]
        if unindexed:
            notes.append(
                f"shards {array_spec(unindexed)} have no frame index (store format 1): "
                f"reads look every frame up in the B-tree, slower; `epic-check --store "
                f"{store} --upgrade` adds it in place (no re-extraction)"
            )
        broken = [s.index for s in self.shards if s.index_only]
        if broken:
            notes.append(
                f"shards {array_spec(broken)}: only their frame index is wrong: "
                f"`epic-check --store {store} --upgrade` rewrites it"
            )
        if self.upgraded:
            notes.append(f"frame index written in place: shards {array_spec(self.upgraded)}")
        return notes

    @property
    def py_lmdb_notes(self) -> list[str]:
        """The shards read with py-lmdb, as the store's readers read them, once per reason."""
        by_reason: dict[str, list[int]] = defaultdict(list)
        for s in self.shards:
            if s.py_lmdb is not None:
                by_reason[s.py_lmdb].append(s.index)
        return [
            f"shards {array_spec(indices)} read with py-lmdb, as training reads them: {reason}"
            for reason, indices in by_reason.items()
        ]

    @property
    def resubmit_command(self) -> str | None:
        """The line that redoes the bad shards with the site's settings (``--force`` when
        some are published); it names $EPIC_SITE, which every job has."""
        if not self.resubmit_indices:
            return None
        force = any(s.published for s in self.shards if s.problems)
        spec = array_spec(self.resubmit_indices)
        site = site_of_environment()
        return user_line("extract", site, store=self.store, array=spec, force=force)

    def to_dict(self) -> dict:
        return {
            "store": self.store,
            "ok": self.ok,
            "shards": [asdict(s) for s in self.shards],
            "store_problems": self.store_problems,
            "sources": self.sources,
            "resubmit_indices": self.resubmit_indices,
            "resubmit_command": self.resubmit_command,
            "py_lmdb_notes": self.py_lmdb_notes,
            "upgrade_notes": self.upgrade_notes,
            "upgraded": self.upgraded,
        }


def _covered(frames: Sequence[int], ranges: Sequence[Range]) -> list[int]:
    """Frames of ``frames`` that are not inside the sorted disjoint ``ranges``."""
    starts = [a for a, _ in ranges]
    missing = []
    for frame in frames:
        i = bisect.bisect_right(starts, frame) - 1
        if i < 0 or frame > ranges[i][1]:
            missing.append(frame)
    return missing


def _planned_missing(planned: PlannedVideo, meta: VideoMeta) -> list[int]:
    """Frames the plan asks of the shard (:meth:`PlannedVideo.expected_ranges`, the rule the
    writer checked before publishing) that it does not hold."""
    wanted = frames_in_ranges(planned.expected_ranges(meta.decoded_frames))
    return _covered(wanted.tolist(), meta.stored_ranges)


class _Shard(Protocol):
    """A shard's file as the checker reads it: lookups of one key from the root, its key
    count, and a walk of its keys in key order. Every method raises PageFormatError or
    lmdb.Error on a damaged page, OSError when the disk fails."""

    def get(self, key: bytes) -> bytes | memoryview | None: ...

    def lookup(self, key: bytes) -> tuple[tuple[int, int] | None, bytes | memoryview | None]:
        """(where the value lies in the file, or None where unknown; the value)."""
        ...

    def entries(self) -> int: ...

    def walk_keys(self) -> Iterator[bytes]: ...


class _PagesShard:
    """A shard read through the reader training uses (ShardPages: ``pread``, no map)."""

    def __init__(self, pages: ShardPages, entries: int) -> None:
        self.pages, self._entries = pages, entries

    def get(self, key: bytes) -> bytes | None:
        return self.pages.get(key)  # one lookup from the root, as FrameStore's

    def lookup(self, key: bytes) -> tuple[tuple[int, int] | None, bytes | None]:
        where = self.pages.locate(key)
        return where, None if where is None else self.pages.read(*where)

    def entries(self) -> int:
        return self._entries

    def walk_keys(self) -> Iterator[bytes]:
        return iter_keys(self.pages)


class _LmdbShard:
    """A shard of another LMDB format, read with py-lmdb as training reads it (its frame
    index is not used: py-lmdb looks every frame up)."""

    def __init__(self, env: lmdb.Environment, txn: lmdb.Transaction) -> None:
        self.env, self.txn = env, txn

    def get(self, key: bytes) -> memoryview | None:
        return self.txn.get(key)

    def lookup(self, key: bytes) -> tuple[None, memoryview | None]:
        return None, self.txn.get(key)

    def entries(self) -> int:
        return self.env.stat()["entries"]

    def walk_keys(self) -> Iterator[bytes]:
        return (bytes(key) for key in self.txn.cursor().iternext(values=False))


#: What ends every frame index problem: it is fixed without extracting the shard again.
INDEX_FIX = "`epic-check --upgrade` rewrites the index in place"


def _video_index(
    shard: _Shard, vid: str, stored_frames: int, images: int
) -> tuple[list[tuple[int, int, int]] | None, list[str]]:
    """The entries of the frame index of ``vid`` (None: none to compare) and what is wrong
    with it. Entries whose CRC-32 fails are still compared one by one, to name the frames."""
    blob = shard.get(frame_index_key(vid))
    if blob is None:
        return None, [f"{vid}: frame index missing ({INDEX_FIX})"]
    blob = bytes(blob)
    try:
        parse_header(blob[: HEADER.size], len(blob), stored_frames, images)
    except FrameIndexError as exc:
        return None, [f"{vid}: {exc} ({INDEX_FIX})"]
    try:
        return unpack_index(blob, stored_frames, images), []
    except FrameIndexError as exc:
        return list(ENTRY.iter_unpack(blob[HEADER.size :])), [f"{vid}: {exc} ({INDEX_FIX})"]


def _meta_problems(
    vid: str, meta: VideoMeta, planned: PlannedVideo, params: ExtractParams
) -> list[str]:
    """Where a video's metadata contradicts its plan (id, rate, encoding, source, counts)."""
    problems = []
    if (meta.video_id, meta.rate) != (vid, planned.rate):
        problems.append(
            f"{vid}: metadata is for {meta.video_id} at {meta.rate} fps, the plan says {vid} at {planned.rate} fps"
        )
    if (meta.short_side, meta.jpeg_qscale) != (params.short_side, params.jpeg_qscale):
        problems.append(
            f"{vid}: made with short side {meta.short_side}, -q:v {meta.jpeg_qscale}; the plan says {params.short_side}, {params.jpeg_qscale}"
        )
    if meta.source_kind != planned.source_kind:
        problems.append(
            f"{vid}: made from {meta.source_kind}, the plan takes it from {planned.source_kind}"
        )
    if (
        None not in (meta.fingerprint, planned.fingerprint)
        and meta.fingerprint != planned.fingerprint
    ):
        problems.append(
            f"{vid}: extracted from another file than the plan's (fingerprint {meta.fingerprint}, planned {planned.fingerprint})"
        )
    if abs(meta.decoded_frames - planned.expected_frames) > CLAMP_TOLERANCE_FRAMES:
        problems.append(
            f"{vid}: {meta.decoded_frames} frames decoded, {planned.expected_frames} expected"
        )
    return problems


def _check_video(
    shard: _Shard, planned: PlannedVideo, params: ExtractParams, deep: bool, indexed: bool
) -> tuple[VideoMeta | None, list[str]]:
    """The video's metadata and problems; ``indexed``: the shard must hold its frame index
    (store format 2, or a shard upgraded in place), which must agree with every lookup."""
    vid = planned.video_id
    blob = shard.get(video_meta_key(vid))
    if blob is None:
        return None, [f"{vid}: metadata missing"]
    try:
        meta = VideoMeta.from_bytes(bytes(blob))
    except MalformedMetadataError as exc:
        return None, [f"{vid}: metadata unreadable ({exc.reason})"]
    problems = _meta_problems(vid, meta, planned, params)
    # Damaged metadata can claim any length: only count planned frames up to a plausible end.
    if meta.decoded_frames <= planned.expected_frames + CLAMP_TOLERANCE_FRAMES:
        missing = _planned_missing(planned, meta)
        if missing:
            problems.append(f"{vid}: {len(missing)} planned frames not stored (first {missing[0]})")
    sums_blob = shard.get(checksum_key(vid))
    count = sum(b - a + 1 for a, b in meta.stored_ranges)
    images = meta.images
    if (
        sums_blob is None
        or len(sums_blob) != 4 * count * len(images)
        or count != meta.stored_frames
    ):
        unit = "frame" if len(images) == 1 else "image (u and v)"
        return meta, [*problems, f"{vid}: checksums missing or not one per stored {unit}"]
    stored = frames_in_ranges(meta.stored_ranges).tolist()
    keys = entry_keys(vid, stored, images)
    sums = unpack_checksums(bytes(sums_blob)).tolist()
    entries, bad = _video_index(shard, vid, count, len(images)) if indexed else (None, [])

    def frame(i: int) -> str:
        """Entry ``i`` in messages: "12", or "12 u" in a flow store (made only when named)."""
        image = images[i % len(images)]
        return f"{stored[i // len(images)]}{' ' + image if image else ''}"

    # One lookup per frame from the root, as FrameStore reads a shard without its index: a
    # walk follows the leaves' order and passes a shard whose branch pages route some keys
    # to the wrong leaf. The index must give what the lookup gives, as reads take it.
    for i, (key, expected) in enumerate(zip(keys, sums, strict=True)):
        where, value = shard.lookup(key)
        if value is None:
            bad.append(f"{vid} frame {frame(i)}: key missing")
        elif frame_checksum(value) != expected:
            bad.append(f"{vid} frame {frame(i)}: checksum mismatch (corrupt JPEG)")
        elif deep:
            bad.extend(_decode_problem(vid, frame(i), value, meta))
        if entries is not None and where is not None and entries[i] != (*where, expected):
            bad.append(
                f"{vid} frame {frame(i)}: its frame index entry (offset, length, CRC) "
                f"{entries[i]} is not the shard's {(*where, expected)} ({INDEX_FIX})"
            )
    if len(bad) > MAX_PROBLEMS_PER_VIDEO:
        bad = [
            *bad[:MAX_PROBLEMS_PER_VIDEO],
            f"{vid}: ... and {len(bad) - MAX_PROBLEMS_PER_VIDEO} more frame problems",
        ]
    return meta, problems + bad


def _decode_problem(vid: str, frame: str, jpeg: bytes | memoryview, meta: VideoMeta) -> list[str]:
    try:
        with Image.open(io.BytesIO(jpeg)) as image:
            image.load()
            size = image.size
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, ...) here
        return [f"{vid} frame {frame}: JPEG does not decode ({type(exc).__name__}: {exc})"]
    if size != (meta.width, meta.height):
        return [f"{vid} frame {frame}: {size[0]}x{size[1]}, expected {meta.width}x{meta.height}"]
    return []


def _key_problems(shard: _Shard, metas: dict[str, VideoMeta], indexed: bool) -> list[str]:
    """Whether the shard holds exactly the keys its metadata accounts for: its key count
    (the meta page's) and a walk of every key (which also checks their order), naming up to
    MAX_STRAY_KEYS_NAMED keys that nothing accounts for. The frame index's keys and the
    publish record belong to an indexed shard; their absence is reported with them."""
    expected = {SHARD_META_KEY}
    index_keys = {PUBLISH_RECORD_KEY} if indexed else set()
    for vid, meta in metas.items():
        expected |= {video_meta_key(vid), checksum_key(vid)}
        expected.update(entry_keys(vid, frames_in_ranges(meta.stored_ranges), meta.images))
        if indexed:
            index_keys.add(frame_index_key(vid))
    entries = shard.entries()
    walked, found, stray = 0, 0, []
    for key in shard.walk_keys():
        walked += 1
        if key in expected:
            found += 1
        elif key not in index_keys:
            stray.append(key.decode(errors="backslashreplace"))
    indexes_found = walked - len(stray) - found
    if entries == walked and found == len(expected) and not stray:
        return []
    held = f"{entries} keys" + ("" if walked == entries else f" ({walked} in its B-tree)")
    if stray:
        more = len(stray) - MAX_STRAY_KEYS_NAMED
        why = f"stray keys {', '.join(stray[:MAX_STRAY_KEYS_NAMED])}" + (
            f" and {more} more" if more > 0 else ""
        )
    elif entries != walked:
        why = "the key count is corrupt"
    else:
        why = "keys missing from its B-tree"
    return [f"{held}, the metadata accounts for {len(expected) + indexes_found}: {why}"]


def _check_shard_meta(
    shard: _Shard, plan: ShardPlan, params: ExtractParams
) -> tuple[ShardMeta | None, list[str]]:
    blob = shard.get(SHARD_META_KEY)
    if blob is None:
        return None, ["shard metadata missing"]
    try:
        meta = ShardMeta.from_bytes(bytes(blob))
    except MalformedMetadataError as exc:
        return None, [f"shard metadata unreadable ({exc.reason})"]
    problems = []
    if meta.format_version not in READABLE_FORMAT_VERSIONS:
        problems.append(
            f"store format version {meta.format_version}; this release reads "
            f"{', '.join(map(str, READABLE_FORMAT_VERSIONS))}"
        )
    if meta.shard_index != plan.index:
        problems.append(f"holds shard {meta.shard_index}, not {plan.index}")
    # Through JSON, as the shard stored them (tuples become lists).
    planned_params = params.record()
    if meta.params != planned_params:
        problems.append(f"made with parameters {meta.params}, the plan says {planned_params}")
    planned_ids = [v.video_id for v in plan.videos]
    for vid in sorted(set(planned_ids) - set(meta.video_ids)):
        problems.append(f"{vid}: planned but missing from the shard")
    for vid in sorted(set(meta.video_ids) - set(planned_ids)):
        problems.append(f"{vid}: in the shard but not in its plan")
    return meta, problems


def _record_problems(shard: _Shard, meta: ShardMeta) -> list[str]:
    """The publish record must hold the digest of the metadata the shard holds now."""
    blob = shard.get(PUBLISH_RECORD_KEY)
    if blob is None:
        return [f"publish record missing ({INDEX_FIX})"]
    try:
        record = json.loads(bytes(blob))
        digest = record["content_sha256"]
    except (ValueError, TypeError, KeyError):
        return [f"publish record unreadable ({INDEX_FIX})"]
    keys = [SHARD_META_KEY]
    keys += [k for v in meta.video_ids for k in (video_meta_key(v), checksum_key(v))]
    values = {key: shard.get(key) for key in keys}
    found = content_digest(
        {k: None if v is None else bytes(v) for k, v in values.items()}, meta.video_ids
    )
    if digest != found:
        return [
            f"publish record's content digest {str(digest)[:16]}... is not the metadata's "
            f"{found[:16]}...: the metadata changed after the shard was published"
        ]
    return []


def _length_problem(name: str, size: int, needed: int) -> str | None:
    """What is wrong with a shard file of ``size`` bytes whose LMDB's last page ends at byte
    ``needed``: epic-extract publishes compacted copies, exactly that long."""
    if size < needed:
        return (
            f"{name} is truncated: {size:,} bytes, its LMDB's last page ends at byte "
            f"{needed:,} (a shard epic-extract publishes is exactly that long: this file was "
            f"cut short, or not written by epic-extract)"
        )
    if size > needed:
        return (
            f"{name} is {size:,} bytes, {size - needed:,} more than its LMDB's last page "
            f"needs ({needed:,}): not the compacted copy epic-extract publishes (damaged)"
        )
    return None


def _check_contents(
    shard: _Shard, name: str, plan: ShardPlan, params: ExtractParams, deep: bool
) -> tuple[list[str], dict[str, VideoMeta], bool]:
    """Problems of an opened shard, the video metadata it holds and whether it has (or
    should have) a frame index; a damaged page ends the check of the shard with a problem
    naming it."""
    problems: list[str] = []
    metas: dict[str, VideoMeta] = {}
    indexed = True
    try:
        shard_meta, meta_problems = _check_shard_meta(shard, plan, params)
        problems.extend(meta_problems)
        # Format 2 shards are published with their index; format 1 ones have it once
        # upgraded (the record and the index are written in one transaction). Readers take
        # any index they find, so any one found is checked too.
        indexed = (
            (shard_meta is not None and shard_meta.format_version >= 2)
            or shard.get(PUBLISH_RECORD_KEY) is not None
            or any(shard.get(frame_index_key(v.video_id)) is not None for v in plan.videos)
        )
        if indexed and shard_meta is not None:
            problems.extend(_record_problems(shard, shard_meta))
        for planned in plan.videos:
            meta, video_problems = _check_video(shard, planned, params, deep, indexed)
            problems.extend(video_problems)
            if meta is not None:
                metas[planned.video_id] = meta
        problems.extend(_key_problems(shard, metas, indexed))
    except PageFormatError as exc:
        problems.append(f"{name} is corrupt: {exc}")
    except lmdb.Error as exc:
        problems.append(f"{name} is corrupt: LMDB says {exc}")
    except OSError as exc:
        problems.append(_unreadable(name, exc))
    return problems, metas, indexed


def _unreadable(name: str, exc: OSError) -> str:
    return f"{name} could not be read ({exc}): check its disk, then check the store again"


def _read_with_lmdb(
    path: Path, plan: ShardPlan, params: ExtractParams, deep: bool
) -> tuple[list[str], dict[str, VideoMeta], bool]:
    """:func:`_read_shard` for a file of another LMDB format, through py-lmdb's map."""
    try:
        env = open_shard_readonly(path, sequential=True)
    except lmdb.Error as exc:
        return [f"{path.name} does not open as LMDB ({exc}): truncated or not a shard"], {}, True
    try:
        needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
        problem = _length_problem(path.name, path.stat().st_size, needed)
        if problem is not None:  # reading past the end of the map would be SIGBUS
            return [problem], {}, True
        with env.begin(buffers=True) as txn:
            return _check_contents(_LmdbShard(env, txn), path.name, plan, params, deep)
    finally:
        env.close()


def _read_shard(
    path: Path, plan: ShardPlan, params: ExtractParams, deep: bool
) -> tuple[list[str], dict[str, VideoMeta], str | None, bool]:
    """Problems of the published shard at ``path``, the video metadata it holds, why
    py-lmdb read it (None: the store's page reader did, with readahead on) and whether it
    has a frame index (False: a store format 1 shard not upgraded). Run in a child process:
    a bug, or py-lmdb's map on a damaged file, must not take the checker down."""
    try:
        database = main_database(path)
        if database is not None:
            problem = _length_problem(path.name, path.stat().st_size, database.bytes_needed)
            if problem is not None:
                return [problem], {}, None, True
        pages = ShardPages.open_or_reason(path, sequential=True)
    except PageFormatError as exc:
        return [f"{path.name} is corrupt: {exc}"], {}, None, True
    except OSError as exc:
        return [_unreadable(path.name, exc)], {}, None, True
    if isinstance(pages, str):
        problems, metas, indexed = _read_with_lmdb(path, plan, params, deep)
        return problems, metas, pages, indexed
    try:
        if database is None or database.root != pages.root:
            # The page reader took another meta page than LMDB's rule picks: a damaged one.
            return [f"{path.name} is corrupt: its meta pages disagree"], {}, None, True
        shard = _PagesShard(pages, database.entries)
        problems, metas, indexed = _check_contents(shard, path.name, plan, params, deep)
        return problems, metas, None, indexed
    finally:
        pages.close()


class _ChildDied(Exception):
    """The child process ended without a result; the message says how (signal, status)."""


def _child_main(sender: Connection, stderr_fd: int, fn: Callable, args: tuple) -> None:
    # LMDB prints its assertion to stderr just before abort(): keep it for the report. The
    # parent reports a crash, so no Python fault dump (pytest turns faulthandler on).
    os.dup2(stderr_fd, 2)
    faulthandler.disable()
    try:
        outcome: tuple[str, Any] = ("ok", fn(*args))
    except Exception:
        # Raised again in the parent as a bug: a corrupt shard must not land here.
        outcome = ("bug", traceback.format_exc())
    sender.send(outcome)
    sender.close()


def _signal_cause(number: int) -> str:
    try:
        name = signal.Signals(number).name
    except ValueError:
        return "unknown signal"
    return _SIGNAL_CAUSES.get(number, name)


def _run_isolated(fn: Callable, args: tuple, *, timeout_s: float) -> Any:
    """``fn(*args)`` in a forked child process, its value sent back over a pipe.

    Raises TimeoutError when no value came within ``timeout_s`` (the child is killed),
    :class:`_ChildDied` when the child ended without one (a signal: the message names it
    and the child's last line on stderr), and RuntimeError with the child's traceback when
    ``fn`` raised (a bug).
    """
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    with tempfile.TemporaryFile() as stderr:
        child = context.Process(
            target=_child_main, args=(sender, stderr.fileno(), fn, args), daemon=True
        )
        child.start()
        # Without the parent's copy of the sending end, a dead child reads as EOF.
        sender.close()
        try:
            if not receiver.poll(timeout_s):
                child.kill()
                child.join()
                raise TimeoutError(f"no result within {timeout_s:,.0f} s")
            try:
                kind, value = receiver.recv()
            except EOFError:
                kind, value = "died", None
        finally:
            receiver.close()
        child.join(timeout=60)
        if child.is_alive():
            child.kill()
            child.join()
        if kind == "ok":
            return value
        if kind == "bug":
            raise RuntimeError(f"the checker's child process raised:\n{value}")
        stderr.seek(0)
        said = [line.strip() for line in stderr.read().decode(errors="replace").splitlines()]
    code = child.exitcode
    why = f"signal {-code}, {_signal_cause(-code)}" if code < 0 else f"exit status {code}"
    last = [line for line in said if line]
    raise _ChildDied(f"{why}: {last[-1][:200]}" if last else why)


def check_shard(
    store_root: Path, plan: ShardPlan, params: ExtractParams, *, deep: bool = False
) -> tuple[ShardCheck, dict[str, VideoMeta]]:
    """Check one shard against its plan, in a child process; returns the outcome and the
    metadata it read. A shard that kills or hangs its reader is a problem, not a crash."""
    path = shard_path(store_root, plan.index)
    result = ShardCheck(index=plan.index, path=str(path), published=path.is_file())
    if not result.published:
        failure = failure_record_path(store_root, plan.index)
        why = (
            f"its last extraction failed: {failure.read_text().strip()}"
            if failure.is_file()
            else "run its array task"
        )
        result.problems.append(f"not published ({path.name} missing): {why}")
        return result, {}
    result.bytes = path.stat().st_size
    timeout_s = shard_timeout_s(result.bytes, deep=deep)
    try:
        result.problems, metas, result.py_lmdb, result.indexed = _run_isolated(
            _read_shard, (path, plan, params, deep), timeout_s=timeout_s
        )
    except _ChildDied as exc:
        result.problems.append(
            f"reading {path.name} killed the checker process ({exc}): the shard is corrupt"
        )
        return result, {}
    except TimeoutError:
        result.problems.append(
            f"reading {path.name} did not finish within {timeout_s:,.0f} s: the shard is "
            f"corrupt (a loop in its B-tree) or its disk stalled; check it again to tell"
        )
        return result, {}
    result.videos = len(metas)
    result.frames = sum(m.stored_frames for m in metas.values())
    return result, metas


def _check_annotations(
    manifest: Manifest, annotations_dir: Path, metas: dict[str, VideoMeta]
) -> list[str]:
    """Every annotated frame of the store's splits must be readable from the store."""
    annotations = AnnotationDir(annotations_dir)
    planned = {v.video_id: v for s in manifest.shards for v in s.videos}
    params = manifest.params
    problems: list[str] = []
    for split in manifest.splits:
        if not annotations.has(SPLIT_FILES[split]):
            continue
        by_video = defaultdict(list)
        for segment in annotations.segments(split):
            by_video[segment.video_id].append(segment)
        for vid, segments in sorted(by_video.items()):
            if vid not in planned:
                problems.append(
                    f"{SPLIT_FILES[split]} names video {vid}, which is not in the store's plan: re-plan the store with these annotations"
                )
                continue
            meta = metas.get(vid)
            if meta is None:
                continue
            problems += _segment_problems(vid, segments, meta, params)
    return problems


def _segment_problems(
    vid: str, segments: Sequence[Segment], meta: VideoMeta, params: ExtractParams
) -> list[str]:
    """Whether every frame a reader may ask of ``segments`` is stored: the segment's frames,
    or with ``keep=sampled`` those the deterministic samplers read; in a flow store, their
    flow frames by the video's recorded stride (its metadata's, not re-derived)."""
    flow, last = meta.flow, meta.last_stored_frame
    stop = (
        (lambda s: s.stop_frame)
        if flow is None
        else (lambda s: flow_index(s.stop_frame, flow.stride))
    )
    unit = "frame" if flow is None else "flow frame"
    problems = []
    late = [s for s in segments if stop(s) > last + CLAMP_TOLERANCE_FRAMES]
    if late:
        worst = max(late, key=stop)
        problems.append(
            f"{vid}: {len(late)} segments end past the last stored {unit} {last} by more than {CLAMP_TOLERANCE_FRAMES} (e.g. {worst.narration_id} ends at {unit} {stop(worst)})"
        )
    missing = []
    for s in segments:
        if flow is not None:
            wanted = _flow_wanted(s, meta, params)
        elif params.keep == "sampled":
            wanted = sampled_frames_to_keep(s.start_frame, s.stop_frame, params.num_frames).tolist()
        else:
            wanted = range(s.start_frame, s.stop_frame + 1)
        lacking = _covered([f for f in wanted if f <= last], meta.stored_ranges)
        if lacking:
            missing.append(f"{s.narration_id}: {unit} {lacking[0]}")
    if missing:
        problems.append(
            f"{vid}: {unit}s of {len(missing)} segments not stored (e.g. {missing[0]}): the store was planned with other annotations or options"
        )
    return problems


def _flow_wanted(segment: Segment, meta: VideoMeta, params: ExtractParams) -> list[int]:
    """The flow frames a reader may ask of ``segment`` (see :func:`_segment_problems`)."""
    stride, count = meta.flow.stride, meta.decoded_frames
    if params.keep == "sampled":
        return sampled_flow_frames_to_keep(
            segment.start_frame,
            segment.stop_frame,
            params.num_frames,
            params.flow_stack,
            stride,
            count,
        ).tolist()
    first, last = flow_segment_range(segment.start_frame, segment.stop_frame, stride, count)
    return list(range(first, last + 1))


def check_store(
    store_root: str | Path,
    *,
    annotations_dir: str | Path | None = None,
    deep: bool = False,
    upgrade: bool = False,
    on_shard: Callable[[], None] | None = None,
) -> CheckReport:
    """Check every shard of the store at ``store_root`` (and the annotations, if given);
    ``on_shard`` is called after each shard (progress). ``upgrade``: write the frame index
    of each shard that has none (store format 1) or whose index alone is wrong, then check
    it again. A sizing-only plan is refused
    (StoreError, exit 2): none of its shards can be extracted, so listing them all as
    missing, with a resubmit line, would send the user round in a circle."""
    store_root = Path(store_root).resolve()
    manifest = load_runnable_manifest(store_root)
    # Through JSON, as the shard stored them (tuples become lists).
    params = manifest.params
    report = CheckReport(store=str(store_root), shards=[])
    all_metas: dict[str, VideoMeta] = {}
    for plan in manifest.shards:
        result, metas = check_shard(store_root, plan, params, deep=deep)
        if upgrade and result.py_lmdb is None and (result.index_only or not result.indexed):
            add_index(Path(result.path))
            log.info("shard %d: frame index written in place", plan.index)
            report.upgraded.append(plan.index)
            result, metas = check_shard(store_root, plan, params, deep=deep)
        log.debug("shard %d: %d problems", plan.index, len(result.problems))
        report.shards.append(result)
        all_metas.update(metas)
        if on_shard is not None:
            on_shard()
    for note in report.py_lmdb_notes:
        log.info("%s", note)
    for meta in all_metas.values():
        report.sources[meta.source_kind] = report.sources.get(meta.source_kind, 0) + 1
    if annotations_dir is not None:
        report.store_problems.extend(_check_annotations(manifest, Path(annotations_dir), all_metas))
    return report


def format_report(report: CheckReport) -> str:
    """The table (shard, videos, frames, bytes, problems), the problems and the resubmit line."""
    lines = [f"{'shard':>6} {'videos':>7} {'frames':>10} {'bytes':>15} {'problems':>9}"]
    for s in report.shards:
        lines.append(
            f"{s.index:>6} {s.videos:>7} {s.frames:>10,} {s.bytes:>15,} {len(s.problems):>9}"
        )
    total_frames = sum(s.frames for s in report.shards)
    total_bytes = sum(s.bytes for s in report.shards)
    lines.append(
        f"{'total':>6} {sum(s.videos for s in report.shards):>7} {total_frames:>10,} {total_bytes:>15,} {len(report.problems):>9}"
    )
    if report.sources:
        copied = report.sources.get(SOURCE_FRAMES, 0)
        decoded = sum(report.sources.values()) - copied
        lines.append(f"sources: {decoded} videos from MP4, {copied} from official frames")
    lines.extend(f"note: {note}" for note in report.py_lmdb_notes + report.upgrade_notes)
    lines.extend(f"problem: {p}" for p in report.problems)
    if report.ok:
        lines.append(
            f"store {report.store} is complete: every planned frame present, every checksum matches"
        )
    if report.resubmit_command:
        spec = array_spec(report.resubmit_indices)
        lines.append(f"resubmit shards {spec}:\n  {report.resubmit_command}")
    return "\n".join(lines)
