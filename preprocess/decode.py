"""One ffmpeg pass per video: re-time to R, keep the planned frames, scale, JPEG-encode.

The filter chain is ``fps=R`` (rule 1 of DESIGN.md: frame n is the picture at (n-1)/R),
then ``select`` (only planned frames reach the scaler and the encoder), then ``scale`` to
the short side with an even long side (1920x1080 -> 456x256). ffmpeg's own mjpeg encoder
writes the JPEGs to a pipe (``image2pipe``); this module splits that byte stream into
pictures by walking the JPEG markers, so memory stays bounded whatever the video length.
bench/bench_extract.py measured this against decoding to raw RGB and encoding in Python.

The k-th picture out of the pipe is the k-th frame number of the selected set, so the
numbering never depends on timestamps in the pipe. Frames from ``tail_from`` to the end of
the stream are always selected, so the last picture's number is the stream's length
(the decoded frame count) and can be checked against duration x R.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import ffmpeg

from epicdata.errors import BadSourceError
from epicdata.ffmpeg_bin import ffmpeg_path
from epicdata.ranges import Range

#: Cap on ``between()`` ranges in the select expression. ffmpeg's expression parser refuses
#: more than 100 terms (measured on 5.1; an undocumented limit that other builds may set
#: lower), while ``keep=sampled`` plans thousands of single frames per real video. Above the
#: cap the closest ranges are merged into a superset and the extra frames dropped here,
#: which costs some scaling and JPEG encoding but no decoding (bench/bench_keep.py chose
#: the value; docs/benchmarks.md).
MAX_SELECT_TERMS = 32
#: Bytes read from ffmpeg's stdout at a time (about 30 JPEGs at 456x256).
READ_CHUNK_BYTES = 1 << 20
#: Lines of ffmpeg's stderr quoted in errors, and how much of its end is read.
STDERR_TAIL_LINES = 6
STDERR_TAIL_BYTES = 256 << 10
_NATIVE_DECODED = re.compile(
    rb"Input stream #0:\d+ \(video\): \d+ packets read \(\d+ bytes\); (\d+) frames decoded"
)
_FPS_COUNTS = re.compile(rb"\[Parsed_fps_0 @ \w+\] \[verbose\] (\d+) frames in, (\d+) frames out")
_PROBLEM_LINE = re.compile(rb"\[(?:panic|fatal|error|warning)\]")
_ERROR_LINE = re.compile(rb"\[(?:panic|fatal|error)\]")
#: Problem lines that come from the filter graph or the encoder: ffmpeg's context tags
#: (``[Parsed_select_1 @ 0x..]``, ``[AVFilterGraph @ ..]``, ``[mjpeg @ ..]`` is the encoder
#: here, the decoder being h264/hevc) and its messages for a graph or encoder that fails.
_INTERNAL_LINE = re.compile(
    rb"\[(?:Parsed_\w+|AVFilterGraph|graph[ _]\w*|mjpeg|image2pipe) @ "
    rb"|Error (?:initializing|reinitializing|configuring) (?:filter|complex filter|output)"
    rb"|Error while (?:opening encoder|filtering|parsing expression)"
    rb"|Failed to inject frame into filter network"
)
#: Characters of one quoted ffmpeg line (a select expression can be kilobytes long).
QUOTE_LINE_CHARS = 240

_SOI = b"\xff\xd8"
# Inside entropy-coded data 0xFF is followed by 0x00 (stuffing), a restart marker
# (0xD0-0xD7) or another 0xFF (fill); anything else is a real marker (EOI, or the next scan).
_SCAN_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xD8)])
_SOF_MARKERS = frozenset(
    [*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), 0xCD, 0xCE, 0xCF]
)


class VideoDecodeError(BadSourceError):
    """ffmpeg failed on a video or produced a stream that does not match the plan."""


class JpegStreamError(RuntimeError):
    """The byte stream from ffmpeg is not a sequence of JPEGs (an internal failure)."""


class FFmpegInternalError(RuntimeError):
    """ffmpeg failed in its filters or encoder, not on the input: a bug, not a bad video."""


def _jpeg_end(buf: bytearray, start: int) -> int | None:
    """Offset one past the EOI of the JPEG that starts at ``start`` (its SOI), or None when
    ``buf`` does not hold all of it yet."""
    i, size = start + 2, len(buf)
    while True:
        if i + 2 > size:
            return None
        if buf[i] != 0xFF:
            raise JpegStreamError(f"expected a JPEG marker at byte {i}, got 0x{buf[i]:02x}")
        marker = buf[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker == 0xD9:
            return i + 2
        if marker in _STANDALONE_MARKERS:
            i += 2
            continue
        if i + 4 > size:
            return None
        i += 2 + ((buf[i + 2] << 8) | buf[i + 3])
        if marker == 0xDA:
            found = _SCAN_MARKER.search(buf, i)
            if found is None:
                return None
            i = found.start()


class JpegSplitter:
    """Split a concatenation of JPEG files, fed in arbitrary chunks, into pictures."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add ``chunk``; return the pictures completed by it, in order."""
        self._buf += chunk
        pictures, pos = [], 0
        with memoryview(self._buf) as view:
            while len(self._buf) - pos >= 2:
                if self._buf[pos : pos + 2] != _SOI:
                    raise JpegStreamError(f"expected a JPEG start (FFD8) at byte {pos}")
                end = _jpeg_end(self._buf, pos)
                if end is None:
                    break
                pictures.append(bytes(view[pos:end]))
                pos = end
        del self._buf[:pos]
        return pictures

    @property
    def pending(self) -> int:
        """Bytes of an incomplete picture still buffered (0 after a clean end of stream)."""
        return len(self._buf)


def jpeg_size(jpeg: bytes) -> tuple[int, int]:
    """(width, height) in pixels from a JPEG's frame header, without decoding."""
    return jpeg_header(jpeg)[:2]


def jpeg_header(jpeg: bytes) -> tuple[int, int, int]:
    """(width, height, colour components) from a JPEG's frame header (SOF), without
    decoding: 1 component is a grayscale JPEG (optical flow), 3 a colour one."""
    i = 2
    while i + 10 <= len(jpeg):
        if jpeg[i] != 0xFF:
            break
        marker = jpeg[i + 1]
        if marker in _SOF_MARKERS:
            width, height = (jpeg[i + 7] << 8) | jpeg[i + 8], (jpeg[i + 5] << 8) | jpeg[i + 6]
            return width, height, jpeg[i + 9]
        if marker in _STANDALONE_MARKERS or marker == 0xFF:
            i += 2 if marker != 0xFF else 1
            continue
        i += 2 + ((jpeg[i + 2] << 8) | jpeg[i + 3])
    raise JpegStreamError("no frame header (SOF) in JPEG")


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Output (width, height) of ``scale=-2:S`` / ``scale=S:-2``: short side S, long side
    rounded to the nearest even number (ffmpeg's rule: 1920x1080 -> 456x256)."""
    if width >= height:
        return 2 * round(width * short_side / (height * 2)), short_side
    return short_side, 2 * round(height * short_side / (width * 2))


def select_ranges(keep_ranges: Sequence[Range], *, max_terms: int) -> list[Range] | None:
    """A superset of ``keep_ranges`` (sorted, disjoint) with at most ``max_terms`` ranges,
    made by closing the smallest gaps first; None (no select: every frame) for 0."""
    if max_terms <= 0:
        return None
    ranges = [tuple(r) for r in keep_ranges]
    if len(ranges) <= max_terms:
        return list(ranges)
    gaps = sorted(range(len(ranges) - 1), key=lambda i: (ranges[i + 1][0] - ranges[i][1], i))
    close = set(gaps[: len(ranges) - max_terms])
    merged: list[Range] = []
    first = ranges[0][0]
    for i, (_, last) in enumerate(ranges):
        if i not in close:
            merged.append((first, last))
            if i + 1 < len(ranges):
                first = ranges[i + 1][0]
    return merged


def filter_graph(
    *,
    rate: int,
    short_side: int,
    width: int,
    height: int,
    select: Sequence[Range] | None,
    tail_from: int,
) -> str:
    """The ``-vf`` chain. ``select`` ranges are 1-based frame numbers (the fps filter's
    output index n is frame n + 1); frames >= ``tail_from`` always pass."""
    chain = [f"fps={rate}"]
    if select is not None:
        terms = [f"between(n,{a - 1},{b - 1})" for a, b in select if b < tail_from]
        terms += [f"between(n,{a - 1},{tail_from - 2})" for a, b in select if a < tail_from <= b]
        terms.append(f"gte(n,{tail_from - 1})")
        chain.append(f"select='{'+'.join(terms)}'")
    chain.append(f"scale=-2:{short_side}" if width >= height else f"scale={short_side}:-2")
    return ",".join(chain)


def ffmpeg_command(*, path: str | Path, graph: str, jpeg_qscale: int, threads: int) -> list[str]:
    """The ffmpeg command line: video only, JPEGs to stdout, using about ``threads`` cores.

    ``threads=1`` pins decoder, filters and encoder to one thread each: the right setting
    when every core runs its own video. With more cores per video the decoder gets
    ``threads + 1`` frame threads (ffmpeg's own choice for a whole machine: one thread is
    usually waiting) and filters and encoder keep ffmpeg's defaults; pinning the encoder to
    one thread there cost 13% (3.95 s vs 3.45 s for 20 s of 1080p on 2 cores).
    """
    single = threads == 1
    stream = ffmpeg.input(str(path), threads=1 if single else threads + 1).output(
        "pipe:",
        map="0:v:0",
        vf=graph,
        format="image2pipe",
        vcodec="mjpeg",
        an=None,
        sn=None,
        dn=None,
        # The pictures are numbered by position, never by timestamp; passthrough keeps
        # select's gaps from being refilled with duplicates, and -enc_time_base -1 avoids
        # image2pipe's "Invalid pts <= last" abort after a few hundred frames.
        fps_mode="passthrough",
        enc_time_base="-1",
        **{"q:v": jpeg_qscale},
        **({"threads": 1} if single else {}),
    )
    args = ffmpeg.compile(stream, cmd=ffmpeg_path())
    # level+verbose: ffmpeg's closing counts (source pictures decoded, fps filter in/out)
    # are logged at verbose level; the level tag separates them from the errors we quote.
    log_args = ["-nostdin", "-hide_banner", "-nostats", "-loglevel", "level+verbose"]
    return [args[0], *log_args, *(["-filter_threads", "1"] if single else []), *args[1:]]


@dataclass
class DecodeStats:
    """Counts of one decode. ``native_frames``: source pictures decoded; ``retimed_frames``:
    pictures the fps filter made of them (the length of the stream frame numbers count);
    ``emitted``: pictures out of ffmpeg after ``select``; ``kept``: of those, the planned
    ones; ``last_frame``: number of the last picture; ``width``/``height``: of the pictures;
    ``seconds``: wall time. The ffmpeg counts are -1 when ffmpeg did not report them."""

    native_frames: int = -1
    retimed_frames: int = -1
    emitted: int = 0
    kept: int = 0
    last_frame: int = 0
    width: int = 0
    height: int = 0
    seconds: float = 0.0


def _numbers(select: Sequence[Range] | None, tail_from: int) -> Iterator[int]:
    """Frame numbers of the selected pictures, in pipe order."""
    if select is not None:
        for a, b in select:
            yield from range(a, min(b, tail_from - 1) + 1)
    frame = tail_from if select is not None else 1
    while True:
        yield frame
        frame += 1


def decode_video(
    *,
    path: str | Path,
    rate: int,
    short_side: int,
    jpeg_qscale: int,
    width: int,
    height: int,
    keep_ranges: Sequence[Range] | None,
    tail_from: int,
    threads: int = 1,
    stats: DecodeStats | None = None,
    cancel: threading.Event | None = None,
) -> Iterator[tuple[int, bytes]]:
    """Yield (frame number, JPEG bytes) of the planned frames of one video, ascending.

    ``keep_ranges`` None keeps every frame; otherwise the planned ranges plus every frame
    from ``tail_from`` on. ``width``/``height`` are the source size (for the orientation).
    Raises :class:`VideoDecodeError` naming the video and quoting ffmpeg when ffmpeg fails.
    ``stats`` is filled in as pictures arrive.
    """
    stats = stats if stats is not None else DecodeStats()
    select = None if keep_ranges is None else select_ranges(keep_ranges, max_terms=MAX_SELECT_TERMS)
    graph = filter_graph(
        rate=rate,
        short_side=short_side,
        width=width,
        height=height,
        select=select,
        tail_from=tail_from,
    )
    command = ffmpeg_command(path=path, graph=graph, jpeg_qscale=jpeg_qscale, threads=threads)
    wanted = None if keep_ranges is None else list(keep_ranges)
    numbers = _numbers(select, tail_from)
    splitter = JpegSplitter()
    started = time.perf_counter()
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr)
        try:
            range_index = 0
            while True:
                if cancel is not None and cancel.is_set():
                    return
                chunk = proc.stdout.read(READ_CHUNK_BYTES)
                if not chunk:
                    break
                for picture in splitter.feed(chunk):
                    frame = next(numbers)
                    stats.emitted += 1
                    stats.last_frame = frame
                    if stats.emitted == 1:
                        stats.width, stats.height = jpeg_size(picture)
                    if wanted is not None and frame < tail_from:
                        while range_index < len(wanted) and wanted[range_index][1] < frame:
                            range_index += 1
                        if range_index == len(wanted) or frame < wanted[range_index][0]:
                            continue
                    stats.kept += 1
                    yield frame, picture
            code = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            stats.seconds = time.perf_counter() - started
        stderr.seek(max(0, stderr.seek(0, 2) - STDERR_TAIL_BYTES))
        log_tail = stderr.read()
    if (found := _NATIVE_DECODED.search(log_tail)) is not None:
        stats.native_frames = int(found.group(1))
    if (found := _FPS_COUNTS.search(log_tail)) is not None:
        stats.retimed_frames = int(found.group(2))
    if code != 0 or splitter.pending:
        raise _failure(path, code, splitter.pending, stats.emitted, log_tail)


def _quote(line: bytes) -> str:
    text = line.decode(errors="replace").strip()
    if len(text) > QUOTE_LINE_CHARS:
        text = f"{text[:QUOTE_LINE_CHARS]}... ({len(text):,} characters)"
    return text


def _failure(path: str | Path, code: int, pending: int, emitted: int, log_tail: bytes) -> Exception:
    """The error for a failed ffmpeg run: internal when the filter graph or the encoder
    failed (the file is not to blame), else a bad video. Quotes ffmpeg once, trimmed."""
    problems = [line for line in log_tail.splitlines() if _PROBLEM_LINE.search(line)]
    quoted = "\n".join(f"    {_quote(line)}" for line in problems[-STDERR_TAIL_LINES:])
    why = f"exit status {code}" if code != 0 else f"{pending} bytes of a cut JPEG"
    said = f"ffmpeg said:\n{quoted or '    (nothing)'}"
    # Only errors count: a filter may warn about a damaged input's odd frames.
    if any(_ERROR_LINE.search(line) and _INTERNAL_LINE.search(line) for line in problems):
        return FFmpegInternalError(
            f"{path}: ffmpeg failed in its filters or encoder ({why}) after {emitted} pictures, "
            f"not on the input file: this is a bug in epic-extract (or this ffmpeg build); "
            f"please report it with this log\n{said}"
        )
    return VideoDecodeError(
        f"{path}: ffmpeg failed ({why}) after {emitted} pictures",
        fix="the file is probably damaged: check it with `ffprobe` and download it again",
        details=said,
    )
