"""Where everything is in a frame store: its files and the keys inside a shard.

Files::

    <store>/manifest.json              written once by `epic-extract plan`
    <store>/shards/shard-00000.lmdb    one LMDB file per shard (subdir=False)
    <store>/failures/shard-00000.txt   why the last extraction of that shard failed

Keys inside a shard:

- ``<video_id>/<frame:010d>`` -> JPEG bytes, frame numbers per :mod:`epicdata.frames`;
- ``__meta__/shard`` -> JSON :class:`epicdata.metadata.ShardMeta`;
- ``__meta__/video/<video_id>`` -> JSON :class:`epicdata.metadata.VideoMeta`;
- ``__meta__/crc32/<video_id>`` -> little-endian uint32 CRC-32 of each stored frame, in
  ascending frame order (:mod:`epicdata.checksums`);
- ``__meta__/index/<video_id>`` -> where each stored frame's JPEG lies in the file, with
  its CRC-32 (:mod:`epicdata.frame_index`; format 2 on);
- ``__meta__/published`` -> the publish record: format version, content digest (format 2 on).

A flow store (optical flow, issue 23) holds two images per frame position, u and v:
``<video_id>/<frame:010d>/u`` and ``/v`` (:func:`image_key`); its checksums and frame index
hold one entry per image, u then v, position after position (:data:`FLOW_IMAGES`).

Reserved keys start with ``__`` and can never collide with a video id (``PXX_YY``).
A shard file at its final path is complete: writers publish by atomic rename.
"""

from __future__ import annotations

from pathlib import Path

#: The version of this layout and of the records in it (manifest, metadata). 2 added the
#: frame index and the publish record; 1's shards read without them (B-tree lookups) and
#: ``epic-check --upgrade`` adds them in place.
STORE_FORMAT_VERSION = 2
#: The versions this code reads.
READABLE_FORMAT_VERSIONS = (1, 2)
MANIFEST_NAME = "manifest.json"
SHARDS_DIR = "shards"
#: A shard's last failed extraction, for epic-check to name: store/failures/shard-NNNNN.txt.
FAILURES_DIR = "failures"
SHARD_META_KEY = b"__meta__/shard"
_VIDEO_META_PREFIX = b"__meta__/video/"
_CHECKSUM_PREFIX = b"__meta__/crc32/"
_INDEX_PREFIX = b"__meta__/index/"
PUBLISH_RECORD_KEY = b"__meta__/published"


def shard_filename(index: int) -> str:
    return f"shard-{index:05d}.lmdb"


def shard_path(store_root: str | Path, index: int) -> Path:
    return Path(store_root) / SHARDS_DIR / shard_filename(index)


def failure_record_path(store_root: str | Path, shard_index: int) -> Path:
    """Where ``epic-extract run`` records why shard ``shard_index`` was not published."""
    return Path(store_root) / FAILURES_DIR / f"shard-{shard_index:05d}.txt"


def frame_key(video_id: str, frame: int) -> bytes:
    return f"{video_id}/{frame:010d}".encode()


#: The images of one frame position: an RGB store's one JPEG (its key is the position's), a
#: flow store's u and v (C1's interleaved order: u1 v1 u2 v2 ...).
RGB_IMAGES = ("",)
FLOW_IMAGES = ("u", "v")


def image_key(video_id: str, frame: int, image: str) -> bytes:
    """The key of ``image`` of a frame position (``""``: the RGB frame, :func:`frame_key`)."""
    key = f"{video_id}/{frame:010d}"
    return f"{key}/{image}".encode() if image else key.encode()


def entry_keys(video_id: str, frames: object, images: tuple[str, ...]) -> list[bytes]:
    """The keys of every image of ``frames`` (an iterable of frame numbers), position after
    position: the order of a video's checksums and frame index entries."""
    return [image_key(video_id, int(f), image) for f in frames for image in images]  # type: ignore[attr-defined]


def video_meta_key(video_id: str) -> bytes:
    return _VIDEO_META_PREFIX + video_id.encode()


def checksum_key(video_id: str) -> bytes:
    return _CHECKSUM_PREFIX + video_id.encode()


def frame_index_key(video_id: str) -> bytes:
    return _INDEX_PREFIX + video_id.encode()
