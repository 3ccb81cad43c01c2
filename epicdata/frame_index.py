"""Each video's frame index inside its shard, and the shard's publish record (store format 2).

Why: a clip read through the B-tree costs a lookup per frame (9 us of the 32 us a warm
frame took, bench/bench_reads.py); with the index it costs one ``pread`` of the clip's
entries and one per frame.

``__meta__/index/<video_id>`` holds a 16-byte header and one 16-byte entry per stored frame
position and image (little-endian)::

    header  b"EPFI"  version u16 (1)  images u16  entries u32  CRC-32 of the entries u32
    entry   offset u64 (the JPEG's first byte in the file)  length u32  CRC-32 u32

Entries follow the video's stored frames in ascending order (the order of its checksums,
:func:`epicdata.ranges.frames_in_ranges`), ``images`` entries per position: 1 in an RGB
store (the key ``<video_id>/<frame:010d>``), 2 in a flow store (u and v, keys
``<video_id>/<frame:010d>/u`` and ``/v``, entries u then v; :data:`epicdata.layout.FLOW_IMAGES`).
A reader refuses a count other than the video metadata's rather than misread one.

``__meta__/published`` is the publish record: JSON with the format version and
``content_sha256``, the SHA-256 of the shard's metadata records and every frame's CRC-32
(:func:`content_digest`): equal digests mean equal frames, without reading them.

Both are written after the compacted copy of the shard exists, when the offsets are the
published file's (:func:`add_index`: the keys in one LMDB write transaction, then the
index's bytes in place, so that no frame moves after its offset is taken). The same call
adds them in place to a shard of an earlier release (``epic-check --upgrade``).

Trust: a reader checks an entry's bytes against the entry's CRC-32 and that the bytes lie
inside the file; epic-check checks every entry against the B-tree lookup of its key and the
video's checksums. A damaged entry can make a read fail, not return other bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path

import lmdb

from epicdata.checksums import unpack_checksums
from epicdata.layout import (
    PUBLISH_RECORD_KEY,
    SHARD_META_KEY,
    STORE_FORMAT_VERSION,
    checksum_key,
    entry_keys,
    frame_index_key,
    video_meta_key,
)
from epicdata.lmdb_pages import PageFormatError, ShardPages
from epicdata.metadata import ShardMeta, VideoMeta
from epicdata.ranges import frames_in_ranges

MAGIC = b"EPFI"
VERSION = 1
HEADER = struct.Struct("<4sHHII")
ENTRY = struct.Struct("<QII")
#: Images per frame position in an RGB store.
RGB_IMAGES = 1


class FrameIndexError(PageFormatError):
    """A video's frame index is missing, malformed or disagrees with its shard."""


def pack_index(entries: Iterable[tuple[int, int, int]], images: int = RGB_IMAGES) -> bytes:
    """The index value of (offset, length, CRC-32) entries in stored-frame order."""
    body = b"".join(ENTRY.pack(*entry) for entry in entries)
    count = len(body) // ENTRY.size
    return HEADER.pack(MAGIC, VERSION, images, count, zlib.crc32(body)) + body


def parse_header(header: bytes, length: int, stored_frames: int, images: int = RGB_IMAGES) -> None:
    """Check an index value's header (``length``: the value's bytes) against the video's
    ``stored_frames`` and ``images`` per position; :class:`FrameIndexError` saying what is
    wrong."""
    expected_images = images
    if len(header) < HEADER.size:
        raise FrameIndexError(f"its frame index is {len(header)} bytes, shorter than its header")
    magic, version, images, count, _ = HEADER.unpack_from(header)
    if magic != MAGIC or version != VERSION:
        raise FrameIndexError(f"its frame index has no valid header ({magic!r}, version {version})")
    if images != expected_images:
        raise FrameIndexError(
            f"its frame index holds {images} images per frame, its video metadata {expected_images}"
        )
    if count != stored_frames * images or length != HEADER.size + count * ENTRY.size:
        raise FrameIndexError(
            f"its frame index has {count} entries in {length} bytes for {stored_frames} "
            f"stored frames"
        )


def unpack_index(
    blob: bytes, stored_frames: int, images: int = RGB_IMAGES
) -> list[tuple[int, int, int]]:
    """The entries of a whole index value, its header and CRC checked."""
    parse_header(blob[: HEADER.size], len(blob), stored_frames, images)
    body = blob[HEADER.size :]
    if zlib.crc32(body) != HEADER.unpack_from(blob)[4]:
        raise FrameIndexError("its frame index entries do not match their CRC-32")
    return list(ENTRY.iter_unpack(body))


def content_digest(values: dict[bytes, bytes | None], video_ids: Iterable[str]) -> str:
    """SHA-256 of a shard's metadata records (``values``: key -> value, the shard record and
    each video's metadata and checksums): a changed frame changes its CRC-32, so this."""
    keys = [SHARD_META_KEY]
    keys += [k for v in video_ids for k in (video_meta_key(v), checksum_key(v))]
    digest = hashlib.sha256()
    for key in keys:
        for part in (key, values.get(key) or b""):
            digest.update(len(part).to_bytes(8, "little"))
            digest.update(part)
    return digest.hexdigest()


def build_index(pages: ShardPages) -> dict[bytes, bytes]:
    """The index of every video of the shard ``pages`` and its publish record (key ->
    value), from the B-tree lookups of its frames and its stored checksums. Raises
    :class:`PageFormatError` (FrameIndexError) where the shard cannot give them."""
    shard_blob = pages.get(SHARD_META_KEY)
    if shard_blob is None:
        raise FrameIndexError("the shard metadata is missing")
    video_ids = ShardMeta.from_bytes(shard_blob).video_ids
    values: dict[bytes, bytes | None] = {SHARD_META_KEY: shard_blob}
    out = {}
    for video in video_ids:
        meta_blob, sums_blob = pages.get(video_meta_key(video)), pages.get(checksum_key(video))
        if meta_blob is None or sums_blob is None:
            raise FrameIndexError(f"{video}: metadata or checksums missing")
        values[video_meta_key(video)], values[checksum_key(video)] = meta_blob, sums_blob
        meta = VideoMeta.from_bytes(meta_blob)
        keys = entry_keys(video, frames_in_ranges(meta.stored_ranges).tolist(), meta.images)
        sums = unpack_checksums(sums_blob).tolist()
        if len(sums) != len(keys):
            raise FrameIndexError(f"{video}: {len(sums)} checksums for {len(keys)} images")
        spans = pages.locate_many(keys)
        entries = []
        for key, span, crc in zip(keys, spans, sums, strict=True):
            if span is None:
                raise FrameIndexError(f"{video} {key.decode()}: key missing")
            entries.append((*span, crc))
        out[frame_index_key(video)] = pack_index(entries, len(meta.images))
    out[PUBLISH_RECORD_KEY] = _record(content_digest(values, video_ids))
    return out


def _record(digest: str) -> bytes:
    record = {"format_version": STORE_FORMAT_VERSION, "content_sha256": digest}
    return json.dumps(record, sort_keys=True).encode()


def placeholders(stored_frames: dict[str, int]) -> list[tuple[bytes, bytes]]:
    """The index keys of videos (id -> stored images: frames x images per frame) and the
    publish record key, with
    zeros of their values' lengths: a writer puts them before the compacted copy is made,
    so that :func:`add_index` then only writes bytes in place and the copy stays compact."""
    out = [
        (frame_index_key(video), bytes(HEADER.size + ENTRY.size * count))
        for video, count in stored_frames.items()
    ]
    return [*out, (PUBLISH_RECORD_KEY, bytes(len(_record("0" * 64))))]


def add_index(path: Path) -> int:
    """Write the frame index and publish record of the shard file at ``path`` into it
    (replacing any there). Nothing else may read or write the file meanwhile (a shard being
    published; ``epic-check --upgrade`` says so). Returns the keys written.

    LMDB moves values when it writes: a transaction copies the leaf pages it changes, and a
    small frame (a few hundred bytes) lives inside its leaf. So the keys must be there
    with values of the right length first (:func:`placeholders`: the writer puts them
    before compacting; here one transaction puts them into a shard of store format 1), and
    the index, computed from the file as it is then, is written over them in place, which
    moves nothing. A file cut off between the two steps has an index of zeros: epic-check
    names it and ``--upgrade`` writes it again."""
    values = _index_of(path)
    pages = ShardPages.open(path)
    try:
        current = {key: pages.locate(key) for key in values}  # type: ignore[union-attr]
    finally:
        pages.close()  # type: ignore[union-attr]
    if any(where is None or where[1] != len(values[key]) for key, where in current.items()):
        size = path.stat().st_size
        need = sum(len(v) for v in values.values())
        # The map must cover the file and what the transaction adds (leaves, branch pages,
        # the values' pages, the free list): generously, it is address space only.
        env = lmdb.open(
            str(path), subdir=False, lock=False, readahead=False, meminit=True,
            map_size=size + 4 * need + (16 << 20),
        )  # fmt: skip
        try:
            with env.begin(write=True) as txn:
                for key in sorted(values):
                    txn.put(key, bytes(len(values[key])))
            env.sync(True)
        finally:
            env.close()
        values = _index_of(path)
    pages = ShardPages.open(path)
    fd = os.open(path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        for key, value in values.items():
            where = pages.locate(key)  # type: ignore[union-attr]
            if where is None or where[1] != len(value):
                raise FrameIndexError(f"{path.name}: {key.decode()} was not written")
            os.pwrite(fd, value, where[0])
        os.fsync(fd)
    finally:
        os.close(fd)
        pages.close()  # type: ignore[union-attr]
    return len(values)


def _index_of(path: Path) -> dict[bytes, bytes]:
    """:func:`build_index` of the file at ``path`` as it is now."""
    pages = ShardPages.open(path)
    if pages is None:
        raise FrameIndexError(f"{path.name} is not in the LMDB format the page reader parses")
    try:
        return build_index(pages)
    finally:
        pages.close()


def read_record(pages: ShardPages) -> dict | None:
    """The publish record of a shard (None: it has none, as shards of store format 1)."""
    blob = pages.get(PUBLISH_RECORD_KEY)
    if blob is None:
        return None
    try:
        record = json.loads(blob)
    except ValueError:
        raise FrameIndexError("its publish record is not JSON") from None
    if not isinstance(record, dict) or not isinstance(record.get("content_sha256"), str):
        raise FrameIndexError("its publish record has no content digest")
    return record
