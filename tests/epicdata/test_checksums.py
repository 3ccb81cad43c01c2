"""The store's CRC-32 is zlib's, whichever implementation computes it: stores written with
one read with the other (zlib-ng where installed, zlib elsewhere)."""

from __future__ import annotations

import importlib
import random
import sys
import zlib

import pytest

import epicdata.checksums as checksums

#: Lengths around the SIMD implementations' block sizes (16, 64, 256 bytes and their
#: tails) and a frame's size; the bytes are seeded, so every machine checks the same input.
LENGTHS = [0, 1, 3, 15, 16, 17, 63, 64, 65, 255, 256, 257, 4095, 4096, 4097, 20_011, 65_536]


@pytest.mark.parametrize("length", LENGTHS)
def test_the_stores_crc32_is_zlibs_for_every_length(length: int) -> None:
    data = random.Random(length).randbytes(length)
    assert checksums.crc32(data) == zlib.crc32(data)
    assert checksums.frame_checksum(data) == zlib.crc32(data) & 0xFFFFFFFF
    # The checker hands it py-lmdb buffers, the reader bytes read with pread.
    assert checksums.frame_checksum(memoryview(data)) == zlib.crc32(data) & 0xFFFFFFFF


def test_zlib_ng_computes_it_when_installed() -> None:
    # zlib-ng is a dependency (setup.cfg): an install that lost it reads ~10x slower.
    pytest.importorskip("zlib_ng", reason="zlib-ng is not installed here")
    assert checksums.CRC32_IMPLEMENTATION == "zlib-ng"


def test_without_zlib_ng_the_same_crc_comes_from_zlib(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "zlib_ng", None)  # import zlib_ng now fails
    try:
        fallback = importlib.reload(checksums)
        assert fallback.CRC32_IMPLEMENTATION == "zlib"
        data = random.Random(7).randbytes(20_011)
        assert fallback.frame_checksum(data) == zlib.crc32(data)
    finally:
        monkeypatch.undo()
        importlib.reload(checksums)
