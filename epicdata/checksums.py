"""The CRC-32 of each stored frame and its encoding under ``__meta__/crc32/<video_id>``:
one little-endian uint32 per stored frame, in ascending frame order
(:func:`epicdata.ranges.frames_in_ranges` of the video's stored ranges)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np


def frame_checksum(jpeg: bytes) -> int:
    return zlib.crc32(jpeg) & 0xFFFFFFFF


def pack_checksums(checksums: Sequence[int]) -> bytes:
    return np.asarray(checksums, dtype="<u4").tobytes()


def unpack_checksums(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<u4")
