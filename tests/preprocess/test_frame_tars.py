"""Hostile official-frames tars, built byte by byte in the test: a tar cut at a member
boundary, GNU sparse members in every form, size headers past the end of the file, and the
official md5 check (issue 19, items 2-4).

Each tar holds a few tiny "JPEGs" (SOI, filler, EOI: the reader checks the markers, not the
pixels) so that the damage, not a bad frame, is what must be refused. Offsets come from
Python's tarfile (an independent reader) and GNU tar's verdicts are checked where it runs.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from epicdata.errors import ExitCode
from preprocess import official_frames
from preprocess.official_frames import (
    MAX_MEMBER_BYTES,
    FramesSourceError,
    FramesStats,
    frames_problem,
    iter_frames,
    md5_table,
    official_md5s,
)

BLOCK = tarfile.BLOCKSIZE


def _jpeg(number: int, filler: int = 700) -> bytes:
    return b"\xff\xd8" + bytes([number % 250 + 1]) * filler + b"\xff\xd9"


def _member(name: str, data: bytes, fmt: int = tarfile.GNU_FORMAT) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info.tobuf(fmt) + data + bytes(-len(data) % BLOCK)


def _frame(number: int) -> bytes:
    return _member(f"./frame_{number:010d}.jpg", _jpeg(number))


def _tar(*members: bytes, end: bytes = bytes(2 * BLOCK)) -> bytes:
    return b"".join(members) + end


def _frames_tar(count: int) -> bytes:
    """A sound tar of frames 1..count, written by tarfile (end blocks and record padding)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for number in range(1, count + 1):
            info = tarfile.TarInfo(f"./frame_{number:010d}.jpg")
            info.size = len(_jpeg(number))
            tar.addfile(info, io.BytesIO(_jpeg(number)))
    return out.getvalue()


def _read(path: Path) -> list[int]:
    return [n for n, _ in iter_frames(path, wanted=lambda n: True, stats=FramesStats())]


def _refused(path: Path) -> str:
    with pytest.raises(FramesSourceError) as caught:
        _read(path)
    assert caught.value.exit_code == ExitCode.BAD_SOURCE
    message = str(caught.value)
    assert message.startswith(str(path)), message
    return message


@pytest.fixture
def tar_path(tmp_path: Path) -> Path:
    """Where the test's tar goes: not an official path (no md5 to compare)."""
    path = tmp_path / "frames.tar"
    assert not official_md5s(path)
    return path


# ------------------------------------------------------------- item 2: cut at a boundary


@pytest.mark.parametrize("missing", [1, 3, 10])
def test_tar_cut_at_a_member_boundary_is_refused_by_run_and_plan_regression(
    tar_path: Path, missing: int
) -> None:
    # Written only up to the header of its last `missing` members: every member it holds is
    # whole, so only the absent end-of-archive block tells it from a shorter video's tar.
    whole = _frames_tar(12)
    with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
        offsets = [m.offset for m in tar.getmembers()]
    tar_path.write_bytes(whole[: offsets[-missing]])
    message = _refused(tar_path)
    assert "no end-of-archive zero block" in message, message
    assert f"frame_{12 - missing:010d}.jpg" in message, message  # the last whole member
    assert "truncated" in frames_problem(tar_path)


def test_tar_cut_right_after_a_members_data_is_refused_regression(tar_path: Path) -> None:
    # 1,024 bytes of data: no padding, so the cut lies exactly on the next header.
    data = _jpeg(1, filler=1020)
    assert len(data) % BLOCK == 0
    tar_path.write_bytes(_member("./frame_0000000001.jpg", data))
    assert "no end-of-archive zero block" in _refused(tar_path)
    assert "truncated" in frames_problem(tar_path)


def test_tar_cut_inside_the_padding_of_its_last_member_is_refused(tar_path: Path) -> None:
    tar_path.write_bytes(_tar(_frame(1), _frame(2), end=b"")[:-100])
    assert "cut short" in _refused(tar_path)
    assert "truncated" in frames_problem(tar_path)


def test_tar_ending_in_zero_bytes_short_of_a_block_is_refused(tar_path: Path) -> None:
    # GNU tar lists it without a word; a block of zeros is the least a tar ends with.
    tar_path.write_bytes(_tar(_frame(1), _frame(2), end=bytes(100)))
    assert "no end-of-archive zero block" in _refused(tar_path)
    assert "truncated" in frames_problem(tar_path)


@pytest.mark.parametrize("tail", [b"", bytes(100)], ids=["at-eof", "then-zero-bytes"])
def test_one_zero_block_is_accepted_with_a_warning_as_gnu_tar_does(
    tar_path: Path, tail: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    tar_path.write_bytes(_tar(_frame(1), _frame(2), end=bytes(BLOCK) + tail))
    with caplog.at_level(logging.WARNING, logger=official_frames.__name__):
        assert _read(tar_path) == [1, 2]
    (record,) = caplog.records
    assert "a lone zero block at byte 3,072" in record.getMessage()
    assert frames_problem(tar_path) is None


def test_a_zero_block_followed_by_a_member_is_refused(tar_path: Path) -> None:
    # GNU tar stops at the lone block and drops frame 2 with only a warning.
    tar_path.write_bytes(_tar(_frame(1), bytes(BLOCK), _frame(2)))
    assert "a lone zero block at byte 1,536 followed by more data" in _refused(tar_path)


def test_sound_tars_pass_run_and_plan(tar_path: Path) -> None:
    tar_path.write_bytes(_frames_tar(12))  # tarfile: two zero blocks, then record padding
    assert _read(tar_path) == list(range(1, 13))
    assert frames_problem(tar_path) is None
    tar_path.write_bytes(_tar(*map(_frame, range(1, 4))))  # exactly two zero blocks
    assert _read(tar_path) == [1, 2, 3]
    assert frames_problem(tar_path) is None


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar is not installed")
def test_gnu_tar_gives_the_same_verdict_on_the_zero_blocks(tmp_path: Path) -> None:
    """The oracle for the rule above: GNU tar warns about one zero block and reads it; it
    lists a tar without any end block silently (where the store refuses it)."""
    if "GNU" not in subprocess.run(["tar", "--version"], capture_output=True, text=True).stdout:
        pytest.skip("tar is not GNU tar")
    frames = ["./frame_0000000001.jpg", "./frame_0000000002.jpg"]
    tar = tmp_path / "frames.tar"
    tar.write_bytes(_tar(_frame(1), _frame(2), end=bytes(BLOCK)))
    listed = subprocess.run(["tar", "-tf", tar], capture_output=True, text=True)
    assert listed.returncode == 0 and "A lone zero block at" in listed.stderr
    assert listed.stdout.split() == frames
    tar.write_bytes(_tar(_frame(1), _frame(2), end=b""))
    listed = subprocess.run(["tar", "-tf", tar], capture_output=True, text=True)
    assert listed.returncode == 0 and listed.stdout.split() == frames


# ------------------------------------------------------------------ item 3: sparse members

# A frame with a run of zero bytes, as GNU tar --sparse stores it: the data without the
# hole, which still starts with SOI and ends with EOI (so the JPEG check alone passes it).
_HEAD, _TAIL, _HOLE = b"\xff\xd8" + b"\x07" * 8190, b"\x08" * 1006 + b"\xff\xd9", 8192
_REAL_SIZE = len(_HEAD) + _HOLE + len(_TAIL)
_STORED = _HEAD + _TAIL
_MAP = [(0, len(_HEAD)), (len(_HEAD) + _HOLE, len(_TAIL)), (_REAL_SIZE, 0)]
_NAME = "./frame_0000000002.jpg"
_SPARSE_NAME = "./GNUSparseFile.4242/frame_0000000002.jpg"


def _octal(value: int, width: int = 12) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _with_checksum(header: bytearray) -> bytes:
    header[148:156] = b" " * 8
    header[148:155] = b"%06o\0" % sum(header)
    return bytes(header)


def _gnu_sparse() -> bytes:
    """Type 'S' (``tar --sparse --format=gnu``): the map in the header, the data without
    its hole."""
    info = tarfile.TarInfo(_NAME)
    info.size, info.type = len(_STORED), tarfile.GNUTYPE_SPARSE
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    for i, (offset, size) in enumerate(_MAP):
        header[386 + 24 * i : 410 + 24 * i] = _octal(offset) + _octal(size)
    header[483:495] = _octal(_REAL_SIZE)
    return _with_checksum(header) + _STORED + bytes(-len(_STORED) % BLOCK)


def _pax_record(key: str, value: object) -> bytes:
    body = f" {key}={value}\n".encode()
    length = len(body)
    while len(str(length)) + len(body) != length:
        length = len(str(length)) + len(body)
    return str(length).encode() + body


def _pax(records: list[tuple[str, object]], name: str, data: bytes) -> bytes:
    """A pax extended header with ``records``, then the member ``name`` holding ``data``."""
    text = b"".join(_pax_record(k, v) for k, v in records)
    info = tarfile.TarInfo("./PaxHeaders/frame_0000000002.jpg")
    info.size, info.type = len(text), tarfile.XHDTYPE
    header = info.tobuf(tarfile.USTAR_FORMAT) + text + bytes(-len(text) % BLOCK)
    return header + _member(name, data, tarfile.USTAR_FORMAT)


def _pax_0_0() -> bytes:
    chunks = [(k, v) for o, n in _MAP for k, v in (("offset", o), ("numbytes", n))]
    records = [("GNU.sparse.size", _REAL_SIZE), ("GNU.sparse.numblocks", len(_MAP))]
    return _pax(records + [(f"GNU.sparse.{k}", v) for k, v in chunks], _NAME, _STORED)


def _pax_0_1() -> bytes:
    records = [
        ("GNU.sparse.size", _REAL_SIZE),
        ("GNU.sparse.numblocks", len(_MAP)),
        ("GNU.sparse.name", _NAME),
        ("GNU.sparse.map", ",".join(f"{o},{n}" for o, n in _MAP)),
    ]
    return _pax(records, _SPARSE_NAME, _STORED)


def _pax_1_0() -> bytes:
    records = [
        ("GNU.sparse.major", 1),
        ("GNU.sparse.minor", 0),
        ("GNU.sparse.name", _NAME),
        ("GNU.sparse.realsize", _REAL_SIZE),
    ]
    sparse_map = "".join(f"{v}\n" for pair in _MAP for v in pair)
    sparse_map = f"{len(_MAP)}\n{sparse_map}".encode()
    return _pax(records, _SPARSE_NAME, sparse_map + bytes(-len(sparse_map) % BLOCK) + _STORED)


def _name_only() -> bytes:
    """Format 1.0's member with its pax header lost: only the name says what it is."""
    return _member(_SPARSE_NAME, _STORED, tarfile.USTAR_FORMAT)


@pytest.mark.parametrize(
    ("build", "named"),
    [
        (_gnu_sparse, _NAME),
        (_pax_0_0, _NAME),
        (_pax_0_1, _NAME),
        (_pax_1_0, _NAME),
        (_name_only, _SPARSE_NAME),
    ],
    ids=["gnu-type-S", "pax-0.0", "pax-0.1", "pax-1.0", "GNUSparseFile-name"],
)
def test_sparse_member_is_refused_naming_it_regression(tar_path: Path, build, named: str) -> None:
    tar_path.write_bytes(_tar(_frame(1), build(), _frame(3)))
    message = _refused(tar_path)
    assert f"member {named}: a sparse file" in message, message


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar is not installed")
@pytest.mark.parametrize(
    "form", ["gnu", "posix --sparse-version=0.0", "posix --sparse-version=0.1", "posix"]
)
def test_sparse_tars_written_by_gnu_tar_are_refused(tmp_path: Path, form: str) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    with (folder / "frame_0000000001.jpg").open("wb") as frame:  # a real hole in the file
        frame.write(_HEAD)
        frame.seek(_HOLE, os.SEEK_CUR)
        frame.write(_TAIL)
    if os.stat(frame.name).st_blocks * 512 >= _REAL_SIZE:
        pytest.skip("this file system stores no holes, so GNU tar writes no sparse member")
    tar = tmp_path / "frames.tar"
    fmt, *version = form.split()
    subprocess.run(
        ["tar", "--sparse", f"--format={fmt}", *version, "-cf", tar, "-C", folder, "."],
        check=True,
    )
    assert "a sparse file" in _refused(tar)


# ------------------------------------------------------------- item 4: impossible sizes


def _sized(size: int, fmt: int) -> bytes:
    info = tarfile.TarInfo("./frame_0000000002.jpg")
    info.size = size
    return info.tobuf(fmt)


@pytest.mark.parametrize(
    ("header", "says"),
    [
        (_sized(1 << 40, tarfile.GNU_FORMAT), "says 1,099,511,627,776 bytes"),
        (_sized((1 << 63) - 1, tarfile.GNU_FORMAT), "says 9,223,372,036,854,775,807 bytes"),
        (_sized(1 << 40, tarfile.PAX_FORMAT), "says 1,099,511,627,776 bytes"),
        (_sized(100_000, tarfile.GNU_FORMAT), "says 100,000 bytes"),
    ],
    ids=["gnu-base256-1TiB", "gnu-base256-2^63-1", "pax-size-1TiB", "past-the-end"],
)
def test_member_larger_than_the_file_is_refused_before_reading_regression(
    tar_path: Path, header: bytes, says: str
) -> None:
    # Before the fix: MemoryError / OverflowError from reading the claimed size (exit 1).
    tar_path.write_bytes(_tar(_frame(1), header, _jpeg(2), end=bytes(2 * BLOCK)))
    message = _refused(tar_path)
    assert "member ./frame_0000000002.jpg (header at byte" in message, message
    assert says in message and "follow in the file" in message, message


def test_negative_size_header_is_refused(tar_path: Path) -> None:
    header = bytearray(_sized(0, tarfile.GNU_FORMAT))
    header[124:136] = b"\xff" * 11 + b"\xfe"  # base-256 -2: read(-2) would read to the end
    tar_path.write_bytes(_tar(_frame(1), _with_checksum(header), _jpeg(2)))
    assert "size header is not a size (-2)" in _refused(tar_path)


def test_member_larger_than_any_frame_is_refused_before_reading(tar_path: Path) -> None:
    size = MAX_MEMBER_BYTES + 1
    with tar_path.open("wb") as tar:
        tar.write(_frame(1) + _sized(size, tarfile.GNU_FORMAT))
        tar.truncate(tar.tell() + size + 2 * BLOCK)  # a hole: no disk used, nothing read
    assert f"{size:,} bytes, more than a frame can be" in _refused(tar_path)


# ---------------------------------------------------------------------- the official md5


def _official_tar(root: Path) -> Path:
    """A tar where the downloader saves P01_01's frames: an official path (this tar, of
    course, is not the official download)."""
    path = root / "EPIC-KITCHENS" / "P01" / "rgb_frames" / "P01_01.tar"
    path.parent.mkdir(parents=True)
    path.write_bytes(_frames_tar(3))
    return path


def test_md5_table_holds_every_official_rgb_tar_by_its_download_path() -> None:
    table = md5_table()
    rgb = {key for key in table if "/rgb_frames/" in key}
    # As data/md5.csv lists them: 434 EPIC-55 tars (PXX_YY) and 268 of the extension.
    assert len(rgb) == 702
    assert sum(len(key.rpartition("/")[2]) == len("P01_01.tar") for key in rgb) == 434
    assert table["P01/rgb_frames/P01_01.tar"] == {"afae27719de2731c72e332d5adbb0dc1"}
    # An erratum video: its original and its corrected download are both official.
    assert table["P01/rgb_frames/P01_109.tar"] == {
        "705aff9e968a3aabd5c2a8ecf66137ce",
        "7ec4eaf78da24cf12b99a1ef20eb1816",
    }


def test_tar_at_an_official_path_with_another_md5_is_refused(tmp_path: Path) -> None:
    tar = _official_tar(tmp_path)
    got = hashlib.md5(tar.read_bytes()).hexdigest()
    message = _refused(tar)
    assert f"md5 {got}, but the official download has md5 afae27719de2731c72e332d5adbb0dc1" in (
        message
    )


def test_tar_whose_md5_is_the_official_one_is_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tar = _official_tar(tmp_path)
    md5 = hashlib.md5(tar.read_bytes()).hexdigest()
    monkeypatch.setattr(official_frames, "md5_table", lambda: {"P01/rgb_frames/P01_01.tar": {md5}})
    assert _read(tar) == [1, 2, 3]


def test_md5_covers_the_bytes_after_the_end_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bit flipped in the record padding changes no member: only the md5 sees it.
    tar = _official_tar(tmp_path)
    md5 = hashlib.md5(tar.read_bytes()).hexdigest()
    monkeypatch.setattr(official_frames, "md5_table", lambda: {"P01/rgb_frames/P01_01.tar": {md5}})
    data = bytearray(tar.read_bytes())
    data[-1] ^= 1
    tar.write_bytes(data)
    assert f"but the official download has md5 {md5}" in _refused(tar)
