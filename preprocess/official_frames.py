"""EPIC's official RGB frames as a source of a store: find them, and stream their JPEGs.

The official downloader (``epic_downloader.py --rgb-frames``) gives one tar per video,
``PXX/rgb_frames/PXX_YY.tar``, holding ``./frame_0000000001.jpg`` ... (456x256, numbered as
the annotations count). Some users unpack them into ``PXX/rgb_frames/PXX_YY/``; both are
accepted, and member names with or without the leading ``./``. A tar has no index: it is
read once, in stream mode, never unpacked to disk, and its JPEG bytes go into the shard as
they are (no decode, no re-encode).

A tar must end with its end-of-archive zero blocks (one is accepted, as GNU tar does with a
warning): a tar cut at a member boundary is otherwise a valid tar with fewer frames. A tar
at the downloader's path whose md5 the downloader lists (:func:`official_md5s`) is hashed
while it streams and must match. An unpacked folder has neither check: a file missing from
its end cannot be told from a shorter video.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import logging
import os
import re
import tarfile
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import BinaryIO

from epicdata.errors import BadSourceError
from epicdata.frames import is_video_id

log = logging.getLogger(__name__)

#: The official pre-extracted frames of these videos are wrong and must be made again from
#: the videos. epic-kitchens-100-annotations README, "Erratum": "We have recently detected
#: an error in our pre-extracted RGB and Optical flow frames for two videos in our dataset.
#: [...] Download the videos `P01_109.MP4` and `P27_103.MP4`." (then re-extract them with
#: `scale_npp=-2:256:interp_algo=super` and `-r 50`).
ERRATUM_VIDEO_IDS = frozenset({"P01_109", "P27_103"})
FRAMES_DIR = "rgb_frames"
FLOW_DIR = "flow_frames"
#: Read buffer of a tar stream (several JPEGs per system call).
TAR_BUFFER_BYTES = 1 << 20
#: A tar member larger than this is refused before it is read: a 456x256 frame JPEG is
#: 10-60 KB, and a damaged or hostile size header must not make the reader allocate it.
MAX_MEMBER_BYTES = 64 << 20
#: The official downloader's md5 of every RGB and flow frames tar: the rows of
#: epic-kitchens-download-scripts ``data/md5.csv`` (commit 1e01ecb, 2023-08-06) for
#: ``frames_rgb_flow/{rgb,flow}/...`` (EPIC-55), ``PXX/{rgb,flow}_frames/...`` (EPIC-100) and
#: their errata, unchanged.
MD5_FILE = "frames_md5.csv"
_MEMBER_RE = re.compile(r"^(?:\./)?frame_(\d{10})\.jpg\Z")
#: EPIC-55 rows name the remote path; the downloader saves them as PXX/rgb_frames/PXX_YY.tar.
_EPIC55_REMOTE = re.compile(r"^frames_rgb_flow/(rgb|flow)/[^/]+/(P\d\d)/(P\d\d_\d+\.tar)\Z")
#: GNU tar's pax sparse formats 0.1 and 1.0 name the stored member ``GNUSparseFile.<pid>/``.
_SPARSE_NAME = re.compile(r"(?:^|/)GNUSparseFile\.\d+/")
_SOI = b"\xff\xd8"
_EOI = b"\xff\xd9"
_ZERO_BLOCK = bytes(tarfile.BLOCKSIZE)


class FramesSourceError(BadSourceError):
    """An official frames tar or folder is missing, unreadable, truncated or incomplete,
    or holds something that is not a frame JPEG."""


def find_frames(frames_root: str | Path, folder: str = FRAMES_DIR) -> dict[str, Path]:
    """Video id -> its official frames under ``frames_root``: ``PXX/rgb_frames/PXX_YY.tar``
    or the unpacked folder ``PXX/rgb_frames/PXX_YY/`` (the tar when both exist);
    ``folder`` :data:`FLOW_DIR`: the flow tars ``PXX/flow_frames/PXX_YY.tar``."""
    found: dict[str, Path] = {}
    for path in sorted(Path(frames_root).glob(f"*/{folder}/*")):
        video_id = path.name.removesuffix(".tar")
        if not is_video_id(video_id):
            continue
        is_tar = path.suffix == ".tar" and path.is_file()
        if is_tar or (path.is_dir() and video_id not in found):
            found[video_id] = path
    return found


def frames_problem(path: Path) -> str | None:
    """Why the official frames at ``path`` cannot be planned (None when they look sound):
    an empty tar, a tar whose first header does not parse or whose last block is not a
    zero block (cut), a folder without frames. Cheap (two blocks of a tar); ``run`` reads
    everything and checks the rest."""
    if path.is_dir():
        nested = (path / "u").is_dir() or (path / "v").is_dir()  # an unpacked flow tar
        if not nested and not any(frame_number(p.name) for p in path.iterdir()):
            return f"{path}: no frame_NNNNNNNNNN.jpg in the folder"
        return None
    size = path.stat().st_size
    if size == 0:
        return f"{path}: empty file; download it again"
    block = tarfile.BLOCKSIZE
    try:
        with path.open("rb") as handle:
            tarfile.TarInfo.frombuf(handle.read(block), "utf-8", "surrogateescape")
            # A tar ends with zero blocks (then zero padding to its record size); a file cut
            # anywhere else ends inside a header or a member's data.
            handle.seek(max(0, size // block * block - block))
            last = handle.read(block)
    except (tarfile.TarError, OSError) as exc:
        return f"{path}: not a tar ({exc}); download it again"
    if size < 2 * block or last != _ZERO_BLOCK:
        return (
            f"{path}: truncated ({size:,} bytes): it does not end with the end-of-archive "
            f"zero block, so frames are missing at its end; download it again"
        )
    return None


@functools.cache
def md5_table() -> dict[str, frozenset[str]]:
    """The official md5s (:data:`MD5_FILE`) by the path the downloader saves each tar at,
    ``PXX/rgb_frames/PXX_YY.tar`` (both the original and the erratum md5 of the two erratum
    videos: each is an official download)."""
    text = (resources.files(__package__) / "data" / MD5_FILE).read_text(encoding="ascii")
    table: dict[str, set[str]] = {}
    for row in csv.DictReader(io.StringIO(text)):
        remote = row["file_remote_path"]
        match = _EPIC55_REMOTE.match(remote)
        key = f"{match[2]}/{match[1]}_frames/{match[3]}" if match else remote
        table.setdefault(key, set()).add(row["md5"])
    return {key: frozenset(md5s) for key, md5s in table.items()}


@functools.cache
def superseded_md5s() -> frozenset[str]:
    """The md5s of the original downloads of the erratum tars (RGB and flow of P01_109 and
    P27_103): rows of :data:`MD5_FILE` for a path that also has an ``errata`` row."""
    text = (resources.files(__package__) / "data" / MD5_FILE).read_text(encoding="ascii")
    rows = list(csv.DictReader(io.StringIO(text)))
    replaced = {row["file_remote_path"] for row in rows if row["version"] == "errata"}
    return frozenset(
        row["md5"]
        for row in rows
        if row["file_remote_path"] in replaced and row["version"] != "errata"
    )


def official_md5s(path: Path) -> frozenset[str]:
    """The md5s the official download of the tar at ``path`` may have: empty unless it lies
    where the downloader saves an official tar (``PXX/rgb_frames/PXX_YY.tar``)."""
    key = "/".join(path.parts[-3:])
    return md5_table().get(key, frozenset()) if key[:3] == path.name[:3] else frozenset()


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


class _TarReader:
    """A tar file read front to back: where the reader is, how many bytes the file holds
    (fstat, so a size header can be checked before its data is read), and the md5 of
    everything read when ``hashed``."""

    def __init__(self, handle: BinaryIO, *, hashed: bool) -> None:
        self._handle = handle
        self.size = os.fstat(handle.fileno()).st_size
        self.offset = 0
        self.md5 = hashlib.md5(usedforsecurity=False) if hashed else None

    def read(self, n: int) -> bytes:
        data = self._handle.read(n)
        self.offset += len(data)
        if self.md5 is not None:
            self.md5.update(data)
        return data

    def read_to_end(self) -> None:
        """Read (and hash) what follows the end-of-archive blocks: the record's padding."""
        while self.read(TAR_BUFFER_BYTES):
            pass


def _pax_records(data: bytes) -> dict[bytes, bytes]:
    """The ``key=value`` records of a pax header (``"<length> <key>=<value>\\n"`` each)."""
    records: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data) and data[pos]:
        space = data.find(b" ", pos)
        length = int(data[pos:space]) if data[pos:space].isdigit() else 0
        record = data[pos : pos + length]
        if space < 0 or length <= space - pos or not record.endswith(b"\n"):
            raise tarfile.ReadError(f"bad pax record at byte {pos} of a pax header")
        key, _, value = record[space - pos + 1 : -1].partition(b"=")
        records[key] = value
        pos += length
    return records


def _member_size(name: str, info: tarfile.TarInfo, pax: dict[bytes, bytes], tar: _TarReader) -> int:
    """The data size of the member whose header ``info`` was just read (a pax ``size``
    record overrides its header), refused before anything is read when it is negative,
    larger than the bytes left in the file, or larger than any frame."""
    raw = pax.get(b"size")
    size = int(raw) if raw is not None and raw.isdigit() else info.size
    left = tar.size - tar.offset
    where = f"member {name} (header at byte {tar.offset - tarfile.BLOCKSIZE:,})"
    if (raw is not None and not raw.isdigit()) or size < 0:
        raise tarfile.ReadError(f"{where}: its size header is not a size ({raw or size})")
    if size > left:
        raise tarfile.ReadError(
            f"{where}: its header says {size:,} bytes, but only {left:,} bytes follow in the "
            f"file (a truncated tar or a damaged header)"
        )
    if size > MAX_MEMBER_BYTES:
        raise tarfile.ReadError(
            f"{where}: {size:,} bytes, more than a frame can be ({MAX_MEMBER_BYTES:,})"
        )
    return size


def _tar_stream(tar: _TarReader, path: Path) -> Iterator[tuple[str, bytes, bytes]]:
    """(name, type flag, data) of each member of an uncompressed tar read front to back:
    ustar, GNU long names and pax ``path`` and ``size`` records. tarfile's stream mode does
    the same at a quarter of the speed (it re-slices its buffer on every read), which made
    ingest slower than ``tar -xf`` (bench/bench_ingest.py). Raises ReadError for a tar cut
    anywhere, at a member boundary too (no end-of-archive block), and
    :class:`FramesSourceError` for a sparse member (stored without its holes)."""
    block = tarfile.BLOCKSIZE
    long_name: str | None = None
    pax: dict[bytes, bytes] = {}
    last = "none"
    while True:
        header = tar.read(block)
        if header == _ZERO_BLOCK:
            _end_of_archive(tar, path)
            return
        if len(header) < block:
            raise tarfile.ReadError(
                f"no end-of-archive zero block after the last member ({last}, ends at byte "
                f"{tar.offset - len(header):,}): the tar is cut and members after it are "
                f"missing"
            )
        info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
        name = _decoded(pax.get(b"GNU.sparse.name") or pax.get(b"path")) or long_name
        name = name or info.name
        if info.type == tarfile.GNUTYPE_SPARSE or _SPARSE_NAME.search(name) or _sparse(pax):
            raise FramesSourceError(
                f"{path} member {name}: a sparse file (GNU tar --sparse): the tar holds it "
                f"without its runs of zero bytes, which would be stored as a broken JPEG; "
                f"no official tar has sparse members",
                fix="download the video's frames again",
            )
        size = _member_size(name, info, pax, tar)
        data = tar.read(size)
        padding = -size % block
        if len(data) < size or len(tar.read(padding)) < padding:
            raise tarfile.ReadError(f"member {name} is cut short at byte {tar.offset:,}")
        if info.type == tarfile.GNUTYPE_LONGNAME:
            long_name = _decoded(data.rstrip(b"\0"))
        elif info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE):
            records = _pax_records(data)
            # A global header's sparse records would apply to every member: refuse the next.
            pax = records if info.type == tarfile.XHDTYPE else pax | _sparse_only(records)
        else:
            yield name, info.type, data
            last, long_name, pax = name, None, {}


def _decoded(raw: bytes | None) -> str | None:
    return raw.decode("utf-8", "surrogateescape") if raw else None


def _sparse(pax: dict[bytes, bytes]) -> bool:
    return any(key.startswith(b"GNU.sparse.") for key in pax)


def _sparse_only(records: dict[bytes, bytes]) -> dict[bytes, bytes]:
    return {k: v for k, v in records.items() if k.startswith(b"GNU.sparse.")}


def _end_of_archive(tar: _TarReader, path: Path) -> None:
    """Check what follows the first zero block just read: a second one (a sound end); the
    end of the file or zero bytes short of a block (a lone zero block: GNU tar warns and
    reads it the same, with every member present); anything else is refused (GNU tar would
    stop at the lone block and drop the members after it)."""
    at = tar.offset - tarfile.BLOCKSIZE
    after = tar.read(tarfile.BLOCKSIZE)
    if after == _ZERO_BLOCK:
        return
    if not after.strip(b"\0"):
        log.warning(
            "%s: a lone zero block at byte %s ends the archive (GNU tar says the same and "
            "reads it); every member was read",
            path,
            f"{at:,}",
        )
        return
    raise tarfile.ReadError(
        f"a lone zero block at byte {at:,} followed by more data: members after it would be lost"
    )


def iter_frames(
    path: str | Path,
    *,
    wanted: Callable[[int], bool],
    stats: FramesStats,
    cancel: threading.Event | None = None,
    check_md5: bool = True,
) -> Iterator[tuple[int, bytes]]:
    """(frame number, JPEG bytes) of the official frames at ``path`` (a tar, read as a
    stream, or a folder) for which ``wanted(number)`` is true, in the source's order. Every
    member is checked (name, duplicates, JPEG markers), kept or not; at the end the numbers
    must run 1..N without a gap, and an official tar's md5 must be the official one. Raises
    :class:`FramesSourceError` naming the file."""
    members = _iter_members(path, RGB_MEMBERS, wanted, stats, cancel, check_md5)
    for number, data, _ in members:
        yield number, data


def iter_flow_frames(
    path: str | Path,
    *,
    wanted: Callable[[int], bool],
    stats: FramesStats,
    cancel: threading.Event | None = None,
    check_md5: bool = True,
) -> Iterator[tuple[int, bytes, str]]:
    """(flow frame number, JPEG bytes, "u" or "v") of an official flow tar (or its
    unpacked folder, with ``u/`` and ``v/`` inside) for which ``wanted(number)`` is true,
    in the source's order (the tar's: all u then all v, or interleaved). As
    :func:`iter_frames`, and: u and v must hold the same numbers, 1..N."""
    yield from _iter_members(path, FLOW_MEMBERS, wanted, stats, cancel, check_md5)


@dataclass(frozen=True)
class _Members:
    """What the members of one kind of frames source are: their name pattern (its groups:
    the image, when there are several, and the number), the images, and words for errors."""

    pattern: re.Pattern[str]
    images: tuple[str, ...]
    expected: str
    option: str


RGB_MEMBERS = _Members(_MEMBER_RE, ("",), "frame_NNNNNNNNNN.jpg", "--rgb-frames")
FLOW_MEMBERS = _Members(
    re.compile(r"^(?:\./)?([uv])/frame_(\d{10})\.jpg\Z"),
    ("u", "v"),
    "u/frame_NNNNNNNNNN.jpg or v/frame_NNNNNNNNNN.jpg",
    "--flow-frames",
)


def _member(kind: _Members, name: str) -> tuple[str, int] | None:
    """(image, number) of a member name of ``kind``; None when it is not one."""
    match = kind.pattern.match(name)
    if match is None:
        return None
    groups = match.groups()
    return (groups[0] if len(groups) == 2 else ""), int(groups[-1])


def _iter_members(
    path: str | Path,
    kind: _Members,
    wanted: Callable[[int], bool],
    stats: FramesStats,
    cancel: threading.Event | None,
    check_md5: bool,
) -> Iterator[tuple[int, bytes, str]]:
    """(number, JPEG bytes, image) of the members of a frames tar or folder of ``kind``;
    ``check_md5`` False (``plan --not-official``): the tars are the user's own, not
    official downloads, and their md5 is not compared."""
    path = Path(path)
    started = time.perf_counter()
    seen: dict[str, set[int]] = {image: set() for image in kind.images}

    def take(name: str, data: bytes) -> tuple[int, bytes, str] | None:
        member = _member(kind, name)
        where = f"{path} member {name}" if path.suffix == ".tar" else f"{path}/{name}"
        if member is None or member[1] < 1:
            raise FramesSourceError(
                f"{where}: not a frame file (expected {kind.expected}, 10 digits from 1)",
                fix=f"give the official {path.parent.name} tars or their unpacked folders",
            )
        image, number = member
        if number in seen[image]:
            raise FramesSourceError(f"{where}: frame {number} appears twice")
        seen[image].add(number)
        check_jpeg(data, where=where)
        stats.files += 1
        stats.bytes += len(data)
        return (number, data, image) if wanted(number) else None

    expected: frozenset[str] = frozenset()
    md5: str | None = None
    if path.is_dir():
        yield from _folder_frames(path, take, cancel, nested=len(kind.images) > 1)
    elif path.is_file():
        expected = official_md5s(path) if check_md5 else frozenset()
        md5 = yield from _tar_frames(path, take, cancel, hashed=bool(expected))
    else:
        raise FramesSourceError(
            f"{path}: no such file or folder",
            fix="moved since `epic-extract plan`? plan the store again",
        )
    if cancel is not None and cancel.is_set():
        return
    stats.seconds = time.perf_counter() - started
    stats.frames = _complete_numbers(path, seen)
    _check_md5(path, md5, expected, kind)


def _complete_numbers(path: Path, seen: dict[str, set[int]]) -> int:
    """The highest frame number, once every image holds the same numbers 1..N: a
    :class:`FramesSourceError` naming the first gap or the image that lacks frames."""
    fix = "download the video's frames again"
    if len(seen) > 1:
        empty = [image for image, numbers in seen.items() if not numbers]
        if empty and len(empty) < len(seen):
            present = [image for image in seen if image not in empty]
            raise FramesSourceError(
                f"{path}: no {'/, '.join(empty)}/ frames, only {'/, '.join(present)}/: a flow "
                f"tar holds both u/ and v/",
                fix=fix,
            )
        u, v = seen["u"], seen["v"]
        if u != v:
            only_u, only_v = sorted(u - v), sorted(v - u)
            raise FramesSourceError(
                f"{path}: {len(u)} u and {len(v)} v frames ("
                + (f"{len(only_u)} without their v, first {only_u[0]}" if only_u else "")
                + ("; " if only_u and only_v else "")
                + (f"{len(only_v)} without their u, first {only_v[0]}" if only_v else "")
                + "): u and v must pair up",
                fix=fix,
            )
    numbers = next(iter(seen.values()))
    last = max(numbers, default=0)
    if len(numbers) != last:
        gaps = sorted(set(range(1, last + 1)) - numbers)
        raise FramesSourceError(
            f"{path}: {len(gaps)} frame(s) missing between 1 and {last} (first {gaps[0]}): "
            f"the frames are incomplete",
            fix=fix,
        )
    return last


def _check_md5(path: Path, md5: str | None, expected: frozenset[str], kind: _Members) -> None:
    """Refuse an official tar whose md5 is not its official download's, and the original
    tar of an erratum video (its md5 is official, but its frames are wrong)."""
    if md5 is not None and md5 in superseded_md5s():
        raise FramesSourceError(
            f"{path}: md5 {md5} is the original download of this tar, which the dataset's "
            f'erratum replaced (epic-kitchens-100-annotations README, "Erratum"; '
            f"epic-kitchens-download-scripts data/errata.csv): its frames are wrong",
            fix="download the replacement with `epic_downloader.py --errata "
            f"{kind.option}` (or give the video's MP4 with --videos for an RGB store)",
        )
    if expected and md5 not in expected:
        raise FramesSourceError(
            f"{path}: md5 {md5}, but the official download has md5 "
            f"{' or '.join(sorted(expected))} (epic-kitchens-download-scripts data/md5.csv): "
            f"the tar is damaged, cut or not the official one",
            fix=f"download it again with epic_downloader.py {kind.option}",
        )


_Take = Callable[[str, bytes], tuple[int, bytes, str] | None]


def _folder_frames(
    path: Path, take: _Take, cancel: threading.Event | None, *, nested: bool = False
) -> Iterator[tuple[int, bytes, str]]:
    """What ``take`` keeps of the files of an unpacked folder, in name order (``nested``: a
    flow folder's files in its ``u/`` and ``v/``)."""
    files = sorted(path.glob("*/*") if nested else path.iterdir())
    for file in files:
        if cancel is not None and cancel.is_set():
            return
        got = take(file.relative_to(path).as_posix(), file.read_bytes())
        if got is not None:
            yield got


def _tar_frames(
    path: Path, take: _Take, cancel: threading.Event | None, *, hashed: bool
) -> Generator[tuple[int, bytes, str], None, str | None]:
    """What ``take`` keeps of the members of a tar, read once front to back; returns the
    md5 of the whole file when ``hashed`` (None otherwise, or when cancelled)."""
    try:
        with path.open("rb", buffering=TAR_BUFFER_BYTES) as handle:
            tar = _TarReader(handle, hashed=hashed)
            for name, kind, data in _tar_stream(tar, path):
                if cancel is not None and cancel.is_set():
                    return None
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
            if tar.md5 is None:
                return None
            tar.read_to_end()
            return tar.md5.hexdigest()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise FramesSourceError(
            f"{path}: unreadable or truncated tar ({type(exc).__name__}: {exc})",
            fix="download the video's frames again",
        ) from None


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
