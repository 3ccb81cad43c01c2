"""The CRC-32 of each stored frame and its encoding under ``__meta__/crc32/<video_id>``:
one little-endian uint32 per stored frame, in ascending frame order
(:func:`epicdata.ranges.frames_in_ranges` of the video's stored ranges).

The CRC is zlib's CRC-32 (the stored values are zlib's, since the first store). It is
computed with zlib-ng's implementation where that is installed (a dependency: SIMD
folding, 31 GB/s against zlib's 1.9 GB/s on a 20 kB frame, bench/bench_crc.py), so that
checking every frame on every read costs about 1 us a frame instead of 11; the two give
the same value for every input (tests/epicdata/test_checksums.py), so stores written with
either read with either.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence

import numpy as np

try:
    from zlib_ng import zlib_ng as _fast
except ImportError:  # a platform without a zlib-ng wheel: the same CRC, ~10x slower
    _fast = None

#: The CRC-32 function the store reads and writes with (zlib's polynomial and
#: conventions: ``crc32(data) == zlib.crc32(data)``).
crc32: Callable[[bytes], int] = zlib.crc32 if _fast is None else _fast.crc32
#: Which implementation :data:`crc32` is, for logs and benchmarks.
CRC32_IMPLEMENTATION = "zlib" if _fast is None else "zlib-ng"


def frame_checksum(jpeg: bytes) -> int:
    return crc32(jpeg) & 0xFFFFFFFF


def pack_checksums(checksums: Sequence[int]) -> bytes:
    return np.asarray(checksums, dtype="<u4").tobytes()


def unpack_checksums(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<u4")
