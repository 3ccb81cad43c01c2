"""EPIC's official RGB frames as a source of a store: find them, and stream their JPEGs.

The official downloader (``epic_downloader.py --rgb-frames``) gives one tar per video,
``PXX/rgb_frames/PXX_YY.tar``, holding ``./frame_0000000001.jpg`` ... (456x256, numbered as
the annotations count). Some users unpack them into ``PXX/rgb_frames/PXX_YY/``; both are
accepted, and member names with or without the leading ``./``. A tar has no index: it is
read once, in stream mode (``r|``), never unpacked to disk, and its JPEG bytes go into the
shard as they are (no decode, no re-encode).
"""

from __future__ import annotations

import re
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from epicdata.errors import BadSourceError
from epicdata.frames import is_video_id

#: The official pre-extracted frames of these videos are wrong and must be made again from
#: the videos. epic-kitchens-100-annotations README, "Erratum": "We have recently detected
#: an error in our pre-extracted RGB and Optical flow frames for two videos in our dataset.
#: [...] Download the videos `P01_109.MP4` and `P27_103.MP4`." (then re-extract them with
#: `scale_npp=-2:256:interp_algo=super` and `-r 50`).
ERRATUM_VIDEO_IDS = frozenset({"P01_109", "P27_103"})
FRAMES_DIR = "rgb_frames"
#: Read buffer of a tar stream (several JPEGs per system call).
TAR_BUFFER_BYTES = 1 << 20
_MEMBER_RE = re.compile(r"^(?:\./)?frame_(\d{10})\.jpg\Z")
_SOI = b"\xff\xd8"
_EOI = b"\xff\xd9"


class FramesSourceError(BadSourceError):
    """An official frames tar or folder is missing, unreadable, truncated or incomplete,
    or holds something that is not a frame JPEG."""


def find_frames(frames_root: str | Path) -> dict[str, Path]:
    """Video id -> its official frames under ``frames_root``: ``PXX/rgb_frames/PXX_YY.tar``
    or the unpacked folder ``PXX/rgb_frames/PXX_YY/`` (the tar when both exist)."""
    found: dict[str, Path] = {}
    for path in sorted(Path(frames_root).glob(f"*/{FRAMES_DIR}/*")):
        video_id = path.name.removesuffix(".tar")
        if not is_video_id(video_id):
            continue
        is_tar = path.suffix == ".tar" and path.is_file()
        if is_tar or (path.is_dir() and video_id not in found):
            found[video_id] = path
    return found


def frames_problem(path: Path) -> str | None:
    """Why the official frames at ``path`` cannot be planned (None when they look sound):
    an empty tar, a tar whose first header does not parse, a folder without frames. Cheap
    (one header); ``run`` reads everything and checks the rest."""
    if path.is_dir():
        if not any(frame_number(p.name) for p in path.iterdir()):
            return f"{path}: no frame_NNNNNNNNNN.jpg in the folder"
        return None
    if path.stat().st_size == 0:
        return f"{path}: empty file; download it again"
    try:
        with path.open("rb") as handle:
            tarfile.TarInfo.frombuf(handle.read(tarfile.BLOCKSIZE), "utf-8", "surrogateescape")
    except (tarfile.TarError, OSError) as exc:
        return f"{path}: not a tar ({exc}); download it again"
    return None


def frame_number(name: str) -> int | None:
    """Frame number of a member or file name ``[./]frame_NNNNNNNNNN.jpg``; None otherwise."""
    match = _MEMBER_RE.match(name)
    return int(match.group(1)) if match else None


def check_jpeg(data: bytes, *, where: str) -> None:
    """Raise :class:`FramesSourceError` unless ``data`` starts with the JPEG SOI marker and
    ends with EOI (a cut or foreign file fails here, before it reaches the store)."""
    if data[:2] != _SOI or data[-2:] != _EOI:
        head = data[:4].hex(" ")
        raise FramesSourceError(
            f"{where}: not a JPEG ({len(data):,} bytes, starting {head or 'empty'}; a JPEG "
            f"starts ff d8 and ends ff d9)",
            fix="download the video's frames again",
        )


@dataclass
class FramesStats:
    """What reading one video's frames found: ``frames`` the highest frame number (every
    number from 1 to it present), ``files`` members read, ``seconds`` wall time, and the
    stored pictures' size in pixels."""

    frames: int = 0
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    width: int = 0
    height: int = 0


_PAX_PATH = re.compile(rb"\d+ path=([^\n]*)\n")


def _tar_stream(handle: BinaryIO) -> Iterator[tuple[str, bytes, bytes]]:
    """(name, type flag, data) of each member of an uncompressed tar read front to back:
    ustar, GNU long names and pax ``path`` records. tarfile's stream mode does the same at
    a quarter of the speed (it re-slices its buffer on every read), which made ingest
    slower than ``tar -xf`` (bench/bench_ingest.py). A tar cut anywhere but at a member
    boundary raises ReadError; one cut at a boundary ends early, which the frame count
    checks catch."""
    block = tarfile.BLOCKSIZE
    long_name: str | None = None
    while True:
        header = handle.read(block)
        if not header or header == bytes(block):
            return
        if len(header) < block:
            raise tarfile.ReadError("cut inside a member header")
        info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
        data = handle.read(info.size)
        padding = -info.size % block
        if len(data) < info.size or len(handle.read(padding)) < padding:
            raise tarfile.ReadError(f"member {info.name} is cut short")
        if info.type == tarfile.GNUTYPE_LONGNAME:
            long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            continue
        if info.type == tarfile.XHDTYPE:
            match = _PAX_PATH.search(data)
            long_name = match.group(1).decode("utf-8", "surrogateescape") if match else None
            continue
        if info.type == tarfile.XGLTYPE:
            continue
        yield long_name or info.name, info.type, data
        long_name = None


def iter_frames(
    path: str | Path,
    *,
    wanted: Callable[[int], bool],
    stats: FramesStats,
    cancel: threading.Event | None = None,
) -> Iterator[tuple[int, bytes]]:
    """(frame number, JPEG bytes) of the official frames at ``path`` (a tar, read as a
    stream, or a folder) for which ``wanted(number)`` is true, in the source's order. Every
    member is checked (name, duplicates, JPEG markers), kept or not; at the end the numbers
    must run 1..N without a gap. Raises :class:`FramesSourceError` naming the file."""
    path = Path(path)
    started = time.perf_counter()
    seen: set[int] = set()

    def take(name: str, data: bytes) -> tuple[int, bytes] | None:
        number = frame_number(name)
        where = f"{path} member {name}" if path.suffix == ".tar" else f"{path}/{name}"
        if number is None or number < 1:
            raise FramesSourceError(
                f"{where}: not a frame file (expected frame_NNNNNNNNNN.jpg, 10 digits from 1)",
                fix="give the official rgb_frames tars or their unpacked folders",
            )
        if number in seen:
            raise FramesSourceError(f"{where}: frame {number} appears twice")
        seen.add(number)
        check_jpeg(data, where=where)
        stats.files += 1
        stats.bytes += len(data)
        return (number, data) if wanted(number) else None

    if path.is_dir():
        for file in sorted(path.iterdir()):
            if cancel is not None and cancel.is_set():
                return
            got = take(file.name, file.read_bytes())
            if got is not None:
                yield got
    elif path.is_file():
        try:
            with path.open("rb", buffering=TAR_BUFFER_BYTES) as handle:
                for name, kind, data in _tar_stream(handle):
                    if cancel is not None and cancel.is_set():
                        return
                    if kind == tarfile.DIRTYPE:
                        continue
                    if kind not in tarfile.REGULAR_TYPES:
                        raise FramesSourceError(
                            f"{path} member {name}: not a regular file",
                            fix="download the video's frames again",
                        )
                    got = take(name, data)
                    if got is not None:
                        yield got
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise FramesSourceError(
                f"{path}: unreadable or truncated tar ({type(exc).__name__}: {exc})",
                fix="download the video's frames again",
            ) from None
    else:
        raise FramesSourceError(
            f"{path}: no such file or folder",
            fix="moved since `epic-extract plan`? plan the store again with --frames",
        )
    stats.frames = max(seen, default=0)
    stats.seconds = time.perf_counter() - started
    if len(seen) != stats.frames:
        gaps = sorted(set(range(1, stats.frames + 1)) - seen)
        raise FramesSourceError(
            f"{path}: {len(gaps)} frame(s) missing between 1 and {stats.frames} (first "
            f"{gaps[0]}): the frames are incomplete",
            fix="download the video's frames again",
        )


def count_frames(path: str | Path) -> int:
    """Highest frame number of the official frames at ``path`` (reads a tar's headers
    only, seeking past the data)."""
    path = Path(path)
    if path.is_dir():
        names = (p.name for p in path.iterdir())
    else:
        with tarfile.open(path, mode="r:") as tar:
            names = [m.name for m in tar.getmembers() if m.isfile()]
    return max((n for n in map(frame_number, names) if n is not None), default=0)


def read_official_frames(path: str | Path, numbers: set[int]) -> dict[int, bytes]:
    """JPEG bytes of the frames ``numbers`` (those present) of the official frames at
    ``path``: a tar is opened with its member index (random access), a folder read by name."""
    path = Path(path)
    out: dict[int, bytes] = {}
    if path.is_dir():
        for number in numbers:
            file = path / f"frame_{number:010d}.jpg"
            if file.is_file():
                out[number] = file.read_bytes()
        return out
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar.getmembers():
                number = frame_number(member.name)
                if number in numbers and member.isfile():
                    out[number] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise FramesSourceError(
            f"{path}: unreadable or truncated tar ({type(exc).__name__}: {exc})",
            fix="download the video's frames again",
        ) from None
    return out
