"""The frame store: its on-disk format (the contract between ``preprocess`` and ``train``)
and its reader.

Layout::

    <store>/manifest.json              written once by `epic-extract plan`
    <store>/shards/shard-00000.lmdb    one LMDB file per shard (subdir=False)

Keys inside a shard:

- ``<video_id>/<frame:010d>`` -> JPEG bytes, frame numbers per :mod:`epicdata.frames`;
- ``__meta__/shard`` -> JSON :class:`ShardMeta`;
- ``__meta__/video/<video_id>`` -> JSON :class:`VideoMeta`;
- ``__meta__/crc32/<video_id>`` -> little-endian uint32 CRC-32 of each stored frame, in
  ascending frame order.

Reserved keys start with ``__`` and can never collide with a video id (``PXX_YY``).
A shard file at its final path is complete: writers publish by atomic rename.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import functools
import itertools
import json
import os
import tempfile
import types
import typing
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lmdb
import numpy as np

from epicdata.constants import CLAMP_TOLERANCE_FRAMES
from epicdata.errors import MalformedMetadataError, StoreError, StoreIncompleteError
from epicdata.lmdb_pages import PageCache, PageFormatError, ShardPages
from epicdata.sampling import merge_ranges

STORE_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SHARDS_DIR = "shards"
SHARD_META_KEY = b"__meta__/shard"
_VIDEO_META_PREFIX = b"__meta__/video/"
_CHECKSUM_PREFIX = b"__meta__/crc32/"
KEEP_MODES = ("segments", "all", "sampled")
#: Where a video's frames come from (``source_kind`` of the plan and of the shard metadata):
#: decoded from its MP4, or copied from EPIC's official RGB frames (tar or folder).
SOURCE_VIDEO = "video"
SOURCE_FRAMES = "frames"
SOURCE_KINDS = (SOURCE_VIDEO, SOURCE_FRAMES)
#: Frames at the end of every video stored whatever the keep mode (2 x the clamp
#: tolerance): the stored end is the decoder's end.
TAIL_FRAMES = 2 * CLAMP_TOLERANCE_FRAMES

Range = tuple[int, int]


def shard_filename(index: int) -> str:
    return f"shard-{index:05d}.lmdb"


#: A shard's last failed extraction, for epic-check to name: store/failures/shard-NNNNN.txt.
FAILURES_DIR = "failures"


def failure_record_path(store_root: str | Path, shard_index: int) -> Path:
    """Where ``epic-extract run`` records why shard ``shard_index`` was not published."""
    return Path(store_root) / FAILURES_DIR / f"shard-{shard_index:05d}.txt"


def shard_path(store_root: str | Path, index: int) -> Path:
    return Path(store_root) / SHARDS_DIR / shard_filename(index)


def frame_key(video_id: str, frame: int) -> bytes:
    return f"{video_id}/{frame:010d}".encode()


def video_meta_key(video_id: str) -> bytes:
    return _VIDEO_META_PREFIX + video_id.encode()


def checksum_key(video_id: str) -> bytes:
    return _CHECKSUM_PREFIX + video_id.encode()


def frame_checksum(jpeg: bytes) -> int:
    return zlib.crc32(jpeg) & 0xFFFFFFFF


def pack_checksums(checksums: Sequence[int]) -> bytes:
    return np.asarray(checksums, dtype="<u4").tobytes()


def unpack_checksums(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<u4")


def frames_in_ranges(ranges: Sequence[Range]) -> np.ndarray:
    """All frame numbers of inclusive ranges, ascending (the order checksums are stored in)."""
    if not ranges:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.arange(a, b + 1, dtype=np.int64) for a, b in ranges])


def _ranges(value: Any, what: str) -> tuple[Range, ...] | None:
    """Inclusive frame ranges from JSON pairs (types already checked by :func:`_fields`):
    ascending and disjoint, from frame 1; a ValueError naming ``what`` otherwise."""
    if value is None:
        return None
    ranges = tuple((a, b) for a, b in value)
    previous_last = 0
    for first, last in ranges:
        if not previous_last < first <= last:
            raise ValueError(
                f"{what} {_short(value)} are not ascending, disjoint [first, last] pairs of "
                f"frames from 1"
            )
        previous_last = last
    return ranges


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fits(value: Any, hint: Any) -> bool:
    """Whether parsed JSON ``value`` can be a dataclass field annotated ``hint`` (JSON lists
    stand for tuples; a nested dataclass needs an object, which its own parser checks)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in args)
    if hint is type(None):
        return value is None
    if hint in (int, float):
        # bool is an int in Python, never a count in this format; JSON writes 50.0 as 50.
        return isinstance(value, (int, hint)) and not isinstance(value, bool)
    if hint in (str, bool):
        return isinstance(value, hint)
    if dataclasses.is_dataclass(hint) or origin is dict:
        return isinstance(value, dict)
    if origin is tuple:
        if not isinstance(value, list):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(
            _fits(v, h) for v, h in zip(value, args, strict=True)
        )
    raise TypeError(f"no JSON rule for fields annotated {hint}")


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    # Evaluating the annotations costs 0.1 ms a class: once, not once per planned video.
    return typing.get_type_hints(cls)


def _fields(
    cls: type, data: Any, what: str, defaults: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Parsed JSON ``data`` checked as the fields of dataclass ``cls``: an object with every
    field (``defaults`` fills absent ones; fields with a default may be absent), no other
    key, each value of its field's type. Returns a new dict; raises a ValueError that names
    ``what`` and the field."""
    if not isinstance(data, dict):
        raise ValueError(f"{what} is {_short(data)}, not a JSON object")
    data = {**(defaults or {}), **data}
    hints = _field_types(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{what} has unknown fields {', '.join(map(repr, unknown))}")
    for name, f in known.items():
        if name in data:
            if not _fits(data[name], hints[name]):
                expected = str(hints[name]).replace("typing.", "")
                if isinstance(hints[name], type):
                    expected = hints[name].__name__
                raise ValueError(
                    f"{what} field {name!r} is {_short(data[name])}, expected {expected}"
                )
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"{what} lacks field {name!r}")
    return data


# ----------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class ExtractParams:
    """How frames were made. ``jpeg_qscale`` is ffmpeg's ``-q:v`` (2 best .. 31 worst)."""

    short_side: int
    jpeg_qscale: int
    keep: str
    margin_frames: int
    num_frames: tuple[int, ...]
    frame_rate_rule: str = "R=60 for PXX_YY, R=50 for PXX_1YY; frame n at (n-1)/R"


@dataclass(frozen=True)
class PlannedVideo:
    """One video in the plan. ``keep_ranges`` None means every decoded frame."""

    video_id: str
    path: str | None
    rate: int
    native_fps: float
    duration: float
    width: int
    height: int
    expected_frames: int
    planned_frames: int
    max_annotated_frame: int
    keep_ranges: tuple[Range, ...] | None
    #: Content fingerprint at plan time (``preprocess.probe.fingerprint``); None in stores
    #: planned before it existed.
    fingerprint: str | None = None
    #: Where the frames come from: :data:`SOURCE_VIDEO` (``path`` is an MP4, decoded) or
    #: :data:`SOURCE_FRAMES` (``path`` is an official ``rgb_frames`` tar or folder, copied
    #: byte for byte). Absent (video) in manifests written before official frames existed.
    source_kind: str = "video"

    @property
    def tail_from(self) -> int:
        """First frame of the stream's end, stored whatever the keep mode, so the stored end
        is the decoder's end and readers clamp exactly."""
        return max(1, self.expected_frames - TAIL_FRAMES)

    def expected_ranges(self, decoded_frames: int) -> list[Range]:
        """The frames a shard must hold for this video once the decoder gave
        ``decoded_frames``: the planned ranges (every frame for keep=all) and every frame
        from :attr:`tail_from` on, cut at the decoder's end. The one home of this rule:
        the writer checks it before publishing, ``epic-check`` checks shards against it."""
        wanted = [(1, decoded_frames)] if self.keep_ranges is None else list(self.keep_ranges)
        wanted.append((self.tail_from, decoded_frames))
        return merge_ranges((a, min(b, decoded_frames)) for a, b in wanted if a <= decoded_frames)

    @classmethod
    def from_dict(cls, data: Any, where: str = "planned video") -> PlannedVideo:
        """From the manifest's JSON; a ValueError naming ``where`` and the field when malformed."""
        data = _fields(cls, data, where, defaults={"keep_ranges": None})
        data["keep_ranges"] = _ranges(data["keep_ranges"], f"{where} keep_ranges")
        return cls(**data)


@dataclass(frozen=True)
class ShardPlan:
    index: int
    videos: tuple[PlannedVideo, ...]

    @property
    def planned_frames(self) -> int:
        return sum(v.planned_frames for v in self.videos)


@dataclass(frozen=True)
class Manifest:
    """``<store>/manifest.json``: parameters and the shard plan, written once by ``plan``."""

    params: ExtractParams
    shards: tuple[ShardPlan, ...]
    splits: tuple[str, ...]
    videos_root: str | None
    format_version: int = STORE_FORMAT_VERSION
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        data = asdict(self)
        for shard in data["shards"]:
            for video in shard["videos"]:
                if video.get("source_kind") == SOURCE_VIDEO:
                    del video["source_kind"]  # the default: older releases read the manifest
        return json.dumps(data, indent=1, sort_keys=False)

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """From parsed manifest.json; a ValueError naming the field when it is malformed."""
        data = _fields(cls, data, "the manifest", defaults={"splits": [], "videos_root": None})
        params = _fields(ExtractParams, data["params"], "params", defaults={"num_frames": []})
        if params["keep"] not in KEEP_MODES:
            raise ValueError(
                f"params field 'keep' is {_short(params['keep'])}, not one of {KEEP_MODES}"
            )
        params["num_frames"] = tuple(params["num_frames"])
        shards = []
        for i, shard in enumerate(data["shards"]):
            shard = _fields(ShardPlan, shard, f"shards[{i}]")
            videos = tuple(
                PlannedVideo.from_dict(v, f"shards[{i}].videos[{j}]")
                for j, v in enumerate(shard["videos"])
            )
            shards.append(ShardPlan(index=shard["index"], videos=videos))
        return cls(
            params=ExtractParams(**params),
            shards=tuple(shards),
            splits=tuple(data["splits"]),
            videos_root=data["videos_root"],
            format_version=data["format_version"],
            created=data.get("created", ""),
            extra=data.get("extra", {}),
        )

    @classmethod
    def load(cls, store_root: str | Path) -> Manifest:
        path = Path(store_root) / MANIFEST_NAME
        if not path.is_file():
            shards = Path(store_root) / SHARDS_DIR
            lost = shards.is_dir() and any(shards.glob("shard-*.lmdb"))
            raise StoreError(
                "manifest.json not found",
                where=path,
                fix=(
                    "it was lost: re-run the same `epic-extract plan` command that made the "
                    "store (its log's header line has it); it checks the published shards "
                    "and keeps them"
                    if lost
                    else f"{store_root} is not a frame store; create it with "
                    f"`epic-extract plan --store {store_root} ...`"
                ),
            )
        fix = (
            "restore it from a copy, or delete it and re-plan the store with the same "
            "`epic-extract plan` command (its log's header line has it), which keeps the "
            "published shards that match the plan"
        )
        try:
            data = json.loads(path.read_bytes())
        except OSError as exc:
            raise StoreError("cannot read the manifest", where=f"{path}: {exc}", fix=fix) from None
        except ValueError as exc:
            # JSONDecodeError and UnicodeDecodeError (bytes that are not UTF-8).
            raise StoreError("manifest is not JSON", where=f"{path}: {exc}", fix=fix) from None
        version = data.get("format_version") if isinstance(data, dict) else None
        if isinstance(data, dict) and version != STORE_FORMAT_VERSION:
            raise StoreError(
                f"{path}: store format version {version}, this code reads version "
                f"{STORE_FORMAT_VERSION}; re-plan and re-extract the store with this version"
            )
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise StoreError("malformed manifest", where=f"{path}: {exc}", fix=fix) from None

    def save(self, store_root: str | Path) -> Path:
        """Write atomically (temp file + rename)."""
        path = Path(store_root) / MANIFEST_NAME
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(self.to_json())
        os.replace(tmp, path)
        return path

    def video_to_shard(self) -> dict[str, int]:
        return {v.video_id: s.index for s in self.shards for v in s.videos}

    def planned_video(self, video_id: str) -> PlannedVideo:
        for shard in self.shards:
            for video in shard.videos:
                if video.video_id == video_id:
                    return video
        raise StoreError(f"video {video_id} is not in the store's plan")


# ----------------------------------------------------------------------------- shard metadata


@dataclass(frozen=True)
class VideoMeta:
    """What a shard holds of one video. ``stored_ranges`` are inclusive frame ranges;
    ``decoded_frames`` is the length of the stream re-timed to ``rate`` (the last frame number
    the decoder made), ``native_frames`` the source pictures it was made from, ``width`` and
    ``height`` the stored pictures' size in pixels, ``source`` the video file."""

    video_id: str
    rate: int
    native_fps: float
    duration: float
    decoded_frames: int
    stored_frames: int
    stored_ranges: tuple[Range, ...]
    width: int
    height: int
    short_side: int
    jpeg_qscale: int
    source: str
    native_frames: int = -1
    #: ``preprocess.probe.fingerprint`` of the file extracted; None before it existed.
    fingerprint: str | None = None
    #: :data:`SOURCE_VIDEO` or :data:`SOURCE_FRAMES` (see :class:`PlannedVideo`); absent
    #: (video) in shards written before official frames existed.
    source_kind: str = "video"

    def to_bytes(self) -> bytes:
        data = asdict(self)
        if data["source_kind"] == SOURCE_VIDEO:
            # Left out when it is the default: a store extracted from videos stays readable
            # by the releases before official frames existed.
            del data["source_kind"]
        return json.dumps(data, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, blob: bytes) -> VideoMeta:
        """Parse ``__meta__/video/<id>``; :class:`MalformedMetadataError` (exit 5: the shard
        is damaged) when it is not JSON or has wrong fields, types or ranges."""
        try:
            data = _fields(cls, json.loads(bytes(blob)), "video metadata")
            data["stored_ranges"] = _ranges(data["stored_ranges"], "stored_ranges")
        except ValueError as exc:
            raise MalformedMetadataError("malformed video metadata", str(exc)) from None
        return cls(**data)

    @property
    def last_stored_frame(self) -> int:
        return self.stored_ranges[-1][1] if self.stored_ranges else 0


@dataclass(frozen=True)
class ShardMeta:
    format_version: int
    shard_index: int
    video_ids: tuple[str, ...]
    params: dict[str, Any]
    total_frames: int

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, blob: bytes) -> ShardMeta:
        """Parse ``__meta__/shard``; :class:`MalformedMetadataError` (exit 5: the shard is
        damaged) when it is not JSON or has wrong fields or types."""
        try:
            data = _fields(cls, json.loads(bytes(blob)), "shard metadata")
        except ValueError as exc:
            raise MalformedMetadataError("malformed shard metadata", str(exc)) from None
        data["video_ids"] = tuple(data["video_ids"])
        return cls(**data)


def open_shard_readonly(path: str | Path, *, sequential: bool = False) -> lmdb.Environment:
    """Open a published shard for reading (no lock).

    ``sequential=True`` turns the kernel's readahead on: a page fault reads the pages
    around it, not one 4 KiB page. The checker walks whole shards in key order with it (off,
    a walk ran at 0.04x of `cat`'s speed cold, bench/bench_check.py). Random clip reads
    leave it off (:data:`READAHEAD`).
    """
    return lmdb.open(
        str(path),
        subdir=False,
        readonly=True,
        lock=False,
        readahead=sequential,
        meminit=False,
        max_readers=2048,
    )


def shard_file_truncated(env: lmdb.Environment, path: str | Path) -> bool:
    """True when the file is shorter than the pages LMDB says it holds: reading those pages
    through the memory map would kill the process with SIGBUS instead of raising."""
    needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    return os.path.getsize(path) < needed


# ----------------------------------------------------------------------------- reader


#: Bytes of a worker's breadcrumb (what it reads now): a fixed size, overwritten in place.
_CRUMB_BYTES = 512


def _breadcrumb_dir(origin_pid: int) -> Path:
    """Per main process, in $TMPDIR (per job on SLURM)."""
    return Path(tempfile.gettempdir()) / f"epic-reads-{origin_pid}"


@dataclass(frozen=True)
class _StoredIndex:
    """Where each stored frame of a video sits in its checksum array (frame order)."""

    starts: tuple[int, ...]
    ends: tuple[int, ...]
    offsets: tuple[int, ...]  # frames stored before each range

    @classmethod
    def of(cls, ranges: Sequence[Range]) -> _StoredIndex:
        sizes = [b - a + 1 for a, b in ranges]
        return cls(
            starts=tuple(a for a, _ in ranges),
            ends=tuple(b for _, b in ranges),
            offsets=tuple(itertools.accumulate(sizes, initial=0))[:-1] if sizes else (),
        )

    def position(self, frame: int) -> int | None:
        """Index of ``frame`` among the stored frames; None when it is not stored."""
        i = bisect.bisect_right(self.starts, frame) - 1
        if i < 0 or frame > self.ends[i]:
            return None
        return self.offsets[i] + frame - self.starts[i]


def _describe_ranges(ranges: Sequence[Range], limit: int = 6) -> str:
    text = ", ".join(f"{a}-{b}" for a, b in ranges[:limit])
    return text + (f", ... ({len(ranges)} ranges)" if len(ranges) > limit else "")


#: The kernel's readahead for the shards a FrameStore reads. Off (LMDB's MADV_RANDOM), a
#: page fault reads the 4 KiB page it needs; on, it reads the device's whole readahead
#: window around it (``read_ahead_kb``: 8 MiB on the machine measured). On wins while the
#: page cache holds the store and loses everything once it cannot: with the readers'
#: memory capped as SLURM's cgroup caps a job's (page cache included) at 1/13 of a keep=all
#: store, clip reads ran at 0.02x of one file per frame with it on and at about 1x with it
#: off (docs/benchmarks.md, "Cold reads: a store larger than memory"). A real store is tens
#: to hundreds of GB, so off.
READAHEAD = False


class FrameStore:
    """Read JPEG bytes of frames by (video id, frame number).

    Shards are opened lazily in the process that reads them, so a FrameStore made in the
    main process can be handed to DataLoader workers under ``fork`` or ``spawn``: a forked
    child notices the pid change and opens its own environments; pickling drops them.

    Frames are read with ``pread`` through :mod:`epicdata.lmdb_pages` (``direct``, one read
    per frame, a clip's reads announced together), the metadata through py-lmdb.

    Requests past the last stored frame of a video by at most ``clamp_tolerance`` frames are
    clamped to it (annotations may end a few frames past the decoder's last frame) and
    counted in :attr:`clamp_count` (per process). Anything else outside the stored ranges is
    an error naming the video, the frame and the stored ranges.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        clamp_tolerance: int = CLAMP_TOLERANCE_FRAMES,
        verify: bool = True,
        readahead: bool = READAHEAD,
        direct: bool = True,
    ) -> None:
        self.root = Path(root)
        self.manifest = Manifest.load(self.root)
        self.clamp_tolerance = clamp_tolerance
        self.verify = verify
        self.readahead = readahead
        #: Frames read with pread through :mod:`epicdata.lmdb_pages` (one read per frame,
        #: a clip's reads in flight together) rather than through py-lmdb's memory map.
        self.direct = direct
        self._video_shard = self.manifest.video_to_shard()
        self.clamp_count = 0
        self._envs: dict[int, lmdb.Environment] = {}
        self._pages: dict[int, ShardPages | None] = {}
        self._page_cache = PageCache()
        self._checksums_at: dict[str, tuple[int, int] | None] = {}
        self._meta: dict[str, tuple[VideoMeta, _StoredIndex]] = {}
        self._pid = os.getpid()
        self._origin_pid = os.getpid()
        self._crumb: tuple[int, int] | None = None  # (pid, fd) of this worker's breadcrumb

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_envs"] = {}
        state["_pages"] = {}
        state["_page_cache"] = PageCache()
        state["_crumb"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

    @property
    def video_ids(self) -> list[str]:
        return sorted(self._video_shard)

    def has_video(self, video_id: str) -> bool:
        return video_id in self._video_shard

    def _env(self, video_id: str) -> lmdb.Environment:
        if os.getpid() != self._pid:
            # Forked: the parent's environments must not be used here (LMDB forbids it),
            # nor its file offsets' readers.
            self._envs = {}
            self._pages = {}
            self._page_cache = PageCache()
            self._pid = os.getpid()
        try:
            index = self._video_shard[video_id]
        except KeyError:
            raise StoreError(
                f"video {video_id} is not in the store {self.root} "
                f"(plan it with `epic-extract plan` and extract its shard)"
            ) from None
        env = self._envs.get(index)
        if env is None:
            path = shard_path(self.root, index)
            if not path.is_file():
                raise StoreIncompleteError(
                    f"shard {path.name} (holding {video_id}) is not published in {self.root}: "
                    f"run `epic-extract run --store {self.root} --shard-index {index}`"
                )
            try:
                env = open_shard_readonly(path, sequential=self.readahead)
            except lmdb.Error as exc:
                raise StoreIncompleteError(
                    f"shard {path} cannot be opened ({exc}); run `epic-check --store {self.root}`"
                ) from None
            if shard_file_truncated(env, path):
                env.close()
                raise StoreIncompleteError(
                    f"shard {path} is truncated (shorter than LMDB's last page); run "
                    f"`epic-check --store {self.root}` and re-extract shard {index}"
                )
            self._envs[index] = env
        return env

    def video_meta(self, video_id: str) -> VideoMeta:
        return self._video(video_id)[0]

    def _video(self, video_id: str) -> tuple[VideoMeta, _StoredIndex]:
        cached = self._meta.get(video_id)
        if cached is None:
            with self._read(video_id) as txn:
                blob = txn.get(video_meta_key(video_id))
                if blob is None:
                    raise StoreIncompleteError(
                        f"{video_id}: metadata missing",
                        where=self._shard_file(video_id),
                        fix=f"run `epic-check --store {self.root}` and re-extract that shard",
                    )
                meta = VideoMeta.from_bytes(bytes(blob))
            cached = meta, _StoredIndex.of(meta.stored_ranges)
            self._meta[video_id] = cached
        return cached

    def _shard_file(self, video_id: str) -> Path:
        return shard_path(self.root, self._video_shard[video_id])

    @contextlib.contextmanager
    def _read(self, video_id: str) -> Iterator[lmdb.Transaction]:
        """A read transaction on the shard of ``video_id``: an LMDB error (a damaged page)
        becomes an error naming the shard file and the video."""
        env = self._env(video_id)
        try:
            with env.begin(buffers=True) as txn:
                yield txn
        except lmdb.Error as exc:
            raise StoreIncompleteError(
                f"{video_id}: the shard is damaged (LMDB: {exc})",
                where=self._shard_file(video_id),
                fix=f"run `epic-check --store {self.root}` and re-extract the shards it names",
            ) from None

    def holds(self, video_id: str, frames: Sequence[int]) -> bool:
        """Whether every frame of ``frames`` is readable (stored, or clamped near the end),
        from the metadata alone: no JPEG is read, nothing is counted."""
        meta, index = self._video(video_id)
        last = meta.last_stored_frame
        clamps = last == meta.decoded_frames
        return all(
            index.position(int(f)) is not None
            or (clamps and last < f <= last + self.clamp_tolerance)
            for f in frames
        )

    def holds_range(self, video_id: str, first: int, last_frame: int) -> bool:
        """Whether every frame of ``[first, last_frame]`` is readable (see :meth:`holds`)."""
        meta, index = self._video(video_id)
        last = meta.last_stored_frame
        if last_frame > last:
            if not (last == meta.decoded_frames and last_frame <= last + self.clamp_tolerance):
                return False
            if first > last:  # wholly in the clamped tail
                return True
            last_frame = last
        i = bisect.bisect_right(index.starts, first) - 1
        return i >= 0 and last_frame <= index.ends[i]

    def resolve_frames(self, video_id: str, frames: Sequence[int]) -> list[int]:
        """Map requested frame numbers to stored ones (clamping near the end, counted)."""
        meta, index = self._video(video_id)
        last = meta.last_stored_frame
        resolved = []
        for frame in (int(f) for f in frames):
            if index.position(frame) is not None:
                resolved.append(frame)
            elif last == meta.decoded_frames and last < frame <= last + self.clamp_tolerance:
                resolved.append(last)
                self.clamp_count += 1
            else:
                raise StoreError(
                    f"{video_id} frame {frame} is not in the store (stored ranges: "
                    f"{_describe_ranges(meta.stored_ranges)}; decoded {meta.decoded_frames} "
                    f"frames); re-plan with --keep covering this request"
                )
        return resolved

    def _leave_breadcrumb(self, video_id: str, frames: Sequence[int]) -> None:
        """In a DataLoader worker, note what it reads before it reads: a damaged page can
        make LMDB abort the process, and the main process then names the shard from here
        (:meth:`worker_reads`). One pwrite per clip, never synced."""
        pid = os.getpid()
        if pid == self._origin_pid:
            return
        if self._crumb is None or self._crumb[0] != pid:
            folder = _breadcrumb_dir(self._origin_pid)
            folder.mkdir(parents=True, exist_ok=True)
            self._crumb = pid, os.open(folder / str(pid), os.O_WRONLY | os.O_CREAT, 0o644)
        text = f"{self._shard_file(video_id)} {video_id} frames {list(frames)}"
        os.pwrite(self._crumb[1], text.encode()[:_CRUMB_BYTES].ljust(_CRUMB_BYTES), 0)

    def worker_reads(self, pids: Sequence[int]) -> dict[int, str]:
        """What the DataLoader workers ``pids`` of this process last started to read."""
        out = {}
        for pid in pids:
            path = _breadcrumb_dir(self._origin_pid) / str(pid)
            if path.is_file():
                out[pid] = path.read_bytes().decode(errors="replace").strip()
        return out

    def read_frames(self, video_id: str, frames: Sequence[int]) -> list[bytes]:
        """JPEG bytes of ``frames`` (1-based numbers) of ``video_id``, in request order, each
        checked against its CRC-32 (unless ``verify`` is off)."""
        self._leave_breadcrumb(video_id, frames)
        resolved = self.resolve_frames(video_id, frames)
        meta, index = self._video(video_id)
        positions = [index.position(frame) for frame in resolved]
        pages = self._shard_pages(video_id) if self.direct else None
        if pages is None:
            out, sums, first = self._read_mapped(video_id, resolved, meta)
        else:
            try:
                out, sums, first = self._read_direct(pages, video_id, resolved, positions, meta)
            except PageFormatError as exc:
                raise StoreIncompleteError(
                    f"{video_id}: the shard is damaged ({exc})",
                    where=self._shard_file(video_id),
                    fix=f"run `epic-check --store {self.root}` and re-extract the shards it names",
                ) from None
        if sums is not None:
            for frame, position, blob in zip(resolved, positions, out, strict=True):
                at = 4 * (position - first)
                if zlib.crc32(blob) != int.from_bytes(sums[at : at + 4], "little"):
                    raise StoreIncompleteError(
                        f"{video_id} frame {frame}: checksum mismatch (the stored JPEG is corrupt)",
                        where=self._shard_file(video_id),
                        fix=f"run `epic-check --store {self.root}` and re-extract that "
                        f"shard with `epic-extract run --force`",
                    )
        return out

    def _missing(self, video_id: str, what: str) -> StoreIncompleteError:
        return StoreIncompleteError(
            f"{video_id}: {what}",
            where=self._shard_file(video_id),
            fix=f"run `epic-check --store {self.root}` and re-extract that shard",
        )

    def _no_key(self, video_id: str, frame: int) -> StoreIncompleteError:
        return self._missing(video_id, f"frame {frame} is listed as stored but its key is missing")

    def _no_sums(self, video_id: str) -> StoreIncompleteError:
        return self._missing(video_id, "checksums missing or not one per stored frame")

    def _read_mapped(
        self, video_id: str, resolved: list[int], meta: VideoMeta
    ) -> tuple[list[bytes], bytes | None, int]:
        """The frames through py-lmdb's map, and (when verifying) the video's checksums
        from its first stored frame on."""
        out = []
        sums = None
        with self._read(video_id) as txn:
            if self.verify:
                # The checksums of a video are one value, in frame order.
                sums = txn.get(checksum_key(video_id))
                if sums is None or len(sums) != 4 * meta.stored_frames:
                    raise self._no_sums(video_id)
            for frame in resolved:
                blob = txn.get(frame_key(video_id, frame))
                if blob is None:
                    raise self._no_key(video_id, frame)
                out.append(bytes(blob))
            return out, None if sums is None else bytes(sums), 0

    def _read_direct(
        self,
        pages: ShardPages,
        video_id: str,
        resolved: list[int],
        positions: list[int],
        meta: VideoMeta,
    ) -> tuple[list[bytes], bytes | None, int]:
        """The frames with pread, every frame's bytes announced to the kernel first, and
        (when verifying) the span of the video's checksums that covers them."""
        spans = pages.locate_many([frame_key(video_id, frame) for frame in resolved])
        for frame, span in zip(resolved, spans, strict=True):
            if span is None:
                raise self._no_key(video_id, frame)
        pages.advise(spans)  # type: ignore[arg-type]
        out = [pages.read(*span) for span in spans]  # type: ignore[misc]
        if not self.verify or not positions:
            return out, None, 0
        if video_id not in self._checksums_at:
            self._checksums_at[video_id] = pages.locate(checksum_key(video_id))
        where = self._checksums_at[video_id]
        if where is None or where[1] != 4 * meta.stored_frames:
            raise self._no_sums(video_id)
        first, last = min(positions), max(positions)
        return out, pages.read(where[0] + 4 * first, 4 * (last - first + 1)), first

    def _shard_pages(self, video_id: str) -> ShardPages | None:
        """The pread reader of the shard of ``video_id`` (None: py-lmdb reads it)."""
        self._env(video_id)  # opened, checked whole, and the fork handled
        index = self._video_shard[video_id]
        if index not in self._pages:
            try:
                self._pages[index] = ShardPages.open(shard_path(self.root, index), self._page_cache)
            except (OSError, PageFormatError) as exc:
                raise StoreIncompleteError(
                    f"shard {shard_path(self.root, index)} cannot be read ({exc}); run "
                    f"`epic-check --store {self.root}`"
                ) from None
        return self._pages[index]

    def close(self) -> None:
        if os.getpid() == self._pid:
            for pages in self._pages.values():
                if pages is not None:
                    pages.close()
            self._pages = {}
            self._page_cache = PageCache()
            for env in self._envs.values():
                env.close()
        self._envs = {}
