"""A synthetic mini-EPIC: small H.264 videos and annotation files that behave like EPIC's.

Usage::

    epic-synth --out work/mini            # or: python -m epicdata.synthetic --out work/mini
    epic-synth --out work/mini --seed 3 --videos 12 --size 1920x1080
    epic-synth --out work/mini --flow     # also EPIC's optical-flow tars

writes, deterministically from the seed::

    work/mini/EPIC-KITCHENS/PXX/videos/PXX_YY.MP4       (what --videos points to)
    work/mini/annotations/EPIC_100_*.csv                (what --annotations points to)
    work/mini/EPIC-KITCHENS/PXX/flow_frames/PXX_YY.tar  (with --flow; what --flow points to)

Every picture carries a time stamp: a band across the top ``1/8`` of the frame holding
``STAMP_CELLS`` equal-width black/white cells (start guard white-black, the 0-based native
frame index as ``STAMP_BITS`` bits MSB first, an even-parity bit, an end guard white).
The layout is a fixed fraction of the frame's width and height, so :func:`read_stamp` reads
it back exactly from any rescaled copy (456x256 JPEGs of a 320x180 source, 342x256 of a
1920x1440 one) after H.264 and JPEG compression.

Below the band, frames inside an annotated block show content that depends on the classes
(background colour from the verb, shape and colour of a central object from the noun, mild
grain), and neutral grey elsewhere, so a small CNN learns the labels in a few epochs. The
object swings left and right at a constant speed set by the verb (``VERB_SPEEDS_PX_PER_S``),
so motion alone tells the verbs apart too; grey gaps are still. The flow tars hold that
motion computed analytically (not estimated) with each video's EPIC group rule (stride,
dilation, bound of :func:`epicdata.frames.flow_params_for`): :func:`synthetic_flow_frame`
and :func:`synthetic_flow_displacement` give the truth a test compares against.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import click
import ffmpeg
import numpy as np
from PIL import Image

from epicdata.annotations import (
    CLASS_COLUMNS,
    LABELLED_COLUMNS,
    NOUN_CLASSES_FILE,
    SPLIT_FILES,
    TAIL_NOUNS_FILE,
    TAIL_VERBS_FILE,
    TIMESTAMP_COLUMNS,
    UNSEEN_PARTICIPANTS_FILES,
    VERB_CLASSES_FILE,
    VIDEO_INFO_COLUMNS,
    VIDEO_INFO_FILE,
    AnnotationDir,
)
from epicdata.console import EpicCommand, example, preflight_output, start_command
from epicdata.constants import NUM_NOUN_CLASSES, NUM_VERB_CLASSES
from epicdata.errors import EpicInputError
from epicdata.ffmpeg_bin import ffmpeg_path, ffprobe_path
from epicdata.frames import (
    FlowParams,
    flow_frame_count,
    flow_params_for,
    format_timestamp,
    frame_rate_for,
    frame_time_seconds,
    parse_timestamp,
    start_frame_at,
    stop_frame_at,
)

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- the stamp

STAMP_BITS = 16
#: start guard (white, black) + data bits + parity + end guard (white)
STAMP_CELLS = 2 + STAMP_BITS + 1 + 1
#: Height of the stamp band as a fraction of the frame height.
STAMP_BAND_FRACTION = 1 / 8
MAX_FRAMES = 2**STAMP_BITS
#: Smallest source frame whose stamp cells stay several pixels wide after yuv420p.
MIN_SIZE = (160, 90)

_WHITE, _BLACK = 255, 0


def _band_height(height: int) -> int:
    return max(4, round(height * STAMP_BAND_FRACTION))


def _stamp_bits(index: int) -> np.ndarray:
    """(STAMP_CELLS,) bool, True = white, for 0-based frame ``index``."""
    data = [bool((index >> bit) & 1) for bit in range(STAMP_BITS - 1, -1, -1)]
    parity = sum(data) % 2 == 1
    return np.array([True, False, *data, parity, True])


def _render_band(index: int, width: int, band_height: int) -> np.ndarray:
    """(band_height, width, 3) uint8 stamp band for frame ``index``."""
    edges = np.round(np.arange(STAMP_CELLS + 1) * width / STAMP_CELLS).astype(int)
    values = np.where(_stamp_bits(index), _WHITE, _BLACK).astype(np.uint8)
    row = np.repeat(values, np.diff(edges))  # (width,)
    return np.ascontiguousarray(np.broadcast_to(row[None, :, None], (band_height, width, 3)))


def read_stamp(rgb: np.ndarray) -> int:
    """0-based native source frame index stamped into ``rgb``.

    ``rgb``: (H, W, 3) uint8, a frame of a :func:`make_video` video at any scale (aspect
    ratio kept, e.g. ``scale=-2:256``). Reads the middle of every cell of the top band and
    checks both guards, the parity bit and that every cell is clearly black or white;
    raises ValueError when any check fails (not a stamped frame, cropped, or too small).
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB frame, got {rgb.shape} {rgb.dtype}")
    height, width = rgb.shape[:2]
    band = height * STAMP_BAND_FRACTION
    # The middle half of band and cells: clear of H.264/JPEG ringing at the cell edges.
    rows = slice(int(band * 0.25), max(int(band * 0.25) + 1, int(band * 0.75)))
    cell = width / STAMP_CELLS
    levels = []
    for i in range(STAMP_CELLS):
        cols = slice(int((i + 0.3) * cell), max(int((i + 0.3) * cell) + 1, int((i + 0.7) * cell)))
        levels.append(float(rgb[rows, cols].mean()))
    levels_arr = np.array(levels)
    ambiguous = np.flatnonzero((levels_arr > 80) & (levels_arr < 175))
    if ambiguous.size:
        raise ValueError(
            f"no readable stamp in this {width}x{height} frame: cell(s) {ambiguous.tolist()} "
            f"are neither black nor white (levels {np.round(levels_arr).astype(int).tolist()})"
        )
    bits = levels_arr >= 128
    if not (bits[0] and not bits[1] and bits[-1]):
        raise ValueError(f"no stamp in this {width}x{height} frame: guard cells do not match")
    data = bits[2 : 2 + STAMP_BITS]
    if int(data.sum()) % 2 != int(bits[2 + STAMP_BITS]):
        raise ValueError(f"stamp parity error in this {width}x{height} frame")
    return int(data @ (1 << np.arange(STAMP_BITS - 1, -1, -1)))


# ----------------------------------------------------------------------------- content

#: Background colour per verb class (id modulo 8); ids 8+ are darker variants.
_VERB_COLOURS = np.array(
    [
        (205, 45, 45),
        (45, 165, 65),
        (45, 75, 205),
        (220, 200, 40),
        (185, 55, 190),
        (40, 185, 200),
        (230, 130, 30),
        (110, 70, 40),
    ]
)
#: Object colour per noun class (id modulo 7), chosen to stand out on every background.
_NOUN_COLOURS = np.array(
    [
        (250, 250, 250),
        (15, 15, 15),
        (250, 150, 200),
        (20, 30, 110),
        (160, 255, 120),
        (255, 235, 150),
        (90, 0, 40),
    ]
)
_NOUN_SHAPES = ("disc", "square", "triangle", "cross", "stripes")
_GREY = (120, 120, 120)
_GRAIN = 10  # +- grey levels of the noise
_NUM_GRAIN_FIELDS = 4


def _verb_colour(verb_class: int) -> np.ndarray:
    return _VERB_COLOURS[verb_class % 8] * (1.0 - 0.2 * ((verb_class // 8) % 4))


def _noun_mask(noun_class: int, height: int, width: int) -> np.ndarray:
    """(height, width) bool: the noun's shape, centred; shape from id % 5, size from id // 5."""
    radius = height * (0.38 - 0.08 * ((noun_class // 5) % 3))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    y = (yy - (height - 1) / 2) / radius
    x = (xx - (width - 1) / 2) / radius
    shape = _NOUN_SHAPES[noun_class % len(_NOUN_SHAPES)]
    if shape == "disc":
        return x**2 + y**2 <= 1.0
    if shape == "square":
        return np.maximum(abs(x), abs(y)) <= 0.8
    if shape == "triangle":
        return (y >= -0.9) & (y <= 0.8) & (abs(x) <= (y + 0.9) * 0.6)
    if shape == "cross":
        return ((abs(x) <= 0.25) & (abs(y) <= 0.95)) | ((abs(y) <= 0.25) & (abs(x) <= 0.95))
    return (np.maximum(abs(x), abs(y)) <= 0.9) & (np.floor((y + 1) * 2.5) % 2 == 0)


# ----------------------------------------------------------------------------- motion

Segment = tuple[float, float, int, int]  # (start_s, stop_s, verb_class, noun_class)

#: Horizontal speed of the noun shape per verb class (id modulo 4), in pixels per second of
#: the native picture. The shape swings left and right at this constant speed inside its
#: class block, so the speed, not the direction, carries the verb: a horizontal flip (which
#: inverts u) keeps it. Chosen so every flow group encodes it well inside its bound:
#: 2-8 px per ``PXX_YY`` flow frame (3/60 s, bound 25) and 0.8-3.2 px per ``PXX_1YY`` one
#: (1/50 s, bound 8), 10-51 grey levels away from no motion.
VERB_SPEEDS_PX_PER_S = (40.0, 80.0, 120.0, 160.0)
#: Half the shape's horizontal travel as a fraction of the picture height below the band:
#: small enough that the shape always covers the picture's centre and never reaches the
#: background corners, so a still frame still shows both classes where it did before.
_SWING_FRACTION = 0.08


def shape_speed_px_per_s(verb_class: int) -> float:
    """Horizontal speed (pixels per second of the native picture) of the shape in a block
    of ``verb_class`` (always >= 0)."""
    return VERB_SPEEDS_PX_PER_S[verb_class % len(VERB_SPEEDS_PX_PER_S)]


def _swing_px(height: int) -> float:
    return _SWING_FRACTION * (height - _band_height(height))


def shape_offset_px(
    seconds_into_block: float | np.ndarray, verb_class: int, height: int
) -> float | np.ndarray:
    """Horizontal offset (pixels, positive = right of centre) of the noun shape
    ``seconds_into_block`` after its block began, in a picture ``height`` pixels high.

    A triangle wave: 0 at the block's start, moving right at :func:`shape_speed_px_per_s`,
    turning at +-swing (``_SWING_FRACTION`` of the picture below the band). Works
    elementwise on arrays."""
    swing = _swing_px(height)
    travelled = shape_speed_px_per_s(verb_class) * np.asarray(seconds_into_block, dtype=float)
    offset = swing - np.abs((travelled + swing) % (4 * swing) - 2 * swing)
    return float(offset) if offset.ndim == 0 else offset


def _painted_px(offset: float | np.ndarray) -> np.ndarray:
    """Whole-pixel position at which a shape at ``offset`` is painted (half rounds up)."""
    return np.floor(np.asarray(offset) + 0.5).astype(int)


def _block_at(segments: Sequence[Segment], seconds: float) -> int | None:
    """Index of the first segment with start <= seconds < stop (the one painted), or None."""
    for index, (start, stop, _, _) in enumerate(segments):
        if start <= seconds < stop:
            return index
    return None


def _swing_pad(height: int) -> int:
    """Columns the shape can move beyond its centred place, either way (whole pixels)."""
    return math.ceil(_swing_px(height)) + 1


def _shape_window(noun_class: int, body_height: int, width: int, pad: int) -> np.ndarray:
    """The noun's mask on a canvas ``pad`` columns wider on each side: the window
    ``wide[:, pad - x : pad - x + width]`` is the shape moved ``x`` pixels right, without
    wrapping at the edges."""
    return _noun_mask(noun_class, body_height, width + 2 * pad)


class _Painter:
    """Renders the content below the stamp band. Per block it grains the background and the
    object colour once (the grain stays fixed to the screen); a frame then takes the object
    layer inside the moved shape's mask and the background elsewhere, as bitwise operations
    on bytes (``np.where`` on uint8 is about 50x slower and would dominate ``make demo``)."""

    def __init__(self, width: int, height: int, rng: np.random.Generator) -> None:
        self.width, self.height = width, height
        self.body_height = height - _band_height(height)
        # Grain at half resolution, repeated 2x2: cheap at 1920x1080 and still visible.
        half = (_NUM_GRAIN_FIELDS, math.ceil(self.body_height / 2), math.ceil(width / 2), 3)
        grain = rng.integers(-_GRAIN, _GRAIN + 1, size=half, dtype=np.int16)
        self.grain = grain.repeat(2, axis=1).repeat(2, axis=2)[:, : self.body_height, :width]
        self._pad = _swing_pad(height)
        self._key: tuple[int, int] | None = None
        self._wide = np.empty(0, dtype=np.uint8)  # (body_height, width + 2 pad, 3): 0 or 255
        self._background = np.empty(0, dtype=np.uint8)  # (fields, body_height, width, 3)
        self._xor = np.empty(0, dtype=np.uint8)  # background ^ object, same shape

    def _grained(self, colour: np.ndarray) -> np.ndarray:
        return np.clip(colour.astype(np.int16) + self.grain, 0, 255).astype(np.uint8)

    def body(self, key: tuple[int, int], grain_index: int, offset: int = 0) -> np.ndarray:
        """(body_height, width, 3) uint8 content for classes ``key`` ((-1, -1) = none), the
        noun shape ``offset`` pixels right of the centre."""
        verb_class, noun_class = key
        if key != self._key:
            self._key = key
            if verb_class < 0:
                self._background = self._grained(np.array(_GREY))
            else:
                self._background = self._grained(np.round(_verb_colour(verb_class)))
                self._xor = self._background ^ self._grained(_NOUN_COLOURS[noun_class % 7])
                wide = _shape_window(noun_class, self.body_height, self.width, self._pad)
                self._wide = np.repeat(wide[:, :, None], 3, axis=2).astype(np.uint8) * 255
        if verb_class < 0:
            return self._background[grain_index]
        start = self._pad - offset
        # background ^ ((background ^ object) & mask): the object where the mask is 255.
        picture = np.bitwise_and(self._xor[grain_index], self._wide[:, start : start + self.width])
        return np.bitwise_xor(picture, self._background[grain_index], out=picture)


# ----------------------------------------------------------------------------- one video


@dataclass(frozen=True)
class SyntheticVideo:
    """A video written by :func:`make_video`.

    ``fps`` is the exact native rate as an ffmpeg rational (``"60000/1001"``, ``"50"``);
    ``duration`` is ``num_frames / fps`` in seconds; ``num_frames`` native frames were written
    and carry stamps 0 .. num_frames - 1. ``segments`` are the class blocks painted (the
    ``segments`` argument of :func:`make_video`): with them the shape's motion, and so the
    video's true optical flow, is known (:func:`synthetic_flow_displacement`).
    """

    video_id: str
    path: Path
    fps: str
    native_fps: float
    duration: float
    width: int
    height: int
    num_frames: int
    segments: tuple[Segment, ...] = ()


def _parse_rate(fps: str) -> Fraction:
    try:
        rate = Fraction(str(fps))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"fps {fps!r} is not a rational like '60000/1001' or '50'") from None
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    return rate


def make_video(
    path: str | Path,
    *,
    fps: str = "60000/1001",
    duration: float = 4.0,
    size: tuple[int, int] = (320, 180),
    segments: Sequence[Segment] = (),
    seed: int = 0,
    audio: bool = True,
) -> SyntheticVideo:
    """Write a stamped H.264 (libx264, yuv420p, preset fast) MP4 with an AAC track.

    ``fps``: exact native rate (ffmpeg rational); the file has constant frame timing at it.
    ``duration``: seconds; ``round(duration * fps)`` frames are written. ``size``: (width,
    height), both even, at least ``MIN_SIZE``. ``segments``: (start_s, stop_s, verb_class,
    noun_class); native frame i (time i / fps) inside ``[start_s, stop_s)`` shows that
    class content (the first matching segment wins), other frames are grey; the noun shape
    swings horizontally at the verb's speed (:func:`shape_offset_px`). ``seed`` fixes the
    grain. The video id is the file stem.
    """
    path = Path(path)
    rate = _parse_rate(fps)
    width, height = size
    num_frames = _checked_frame_count(fps, rate, duration, size, segments)
    actual_duration = float(num_frames / rate)

    path.parent.mkdir(parents=True, exist_ok=True)
    # Written under a temporary name and renamed: an interrupted run leaves no broken video.
    partial = path.with_name(f".{path.name}.partial")
    rate_text = str(rate)
    command = _encoder_command(partial, size, rate_text, actual_duration, audio)
    log.debug("writing %s: %s", path, " ".join(command))
    pictures = _raw_pictures(num_frames, rate, size, segments, seed)
    returncode, message = _run_fed(command, pictures)
    written = _probe_frames(partial) if returncode == 0 else 0
    if returncode != 0 or written != num_frames:
        partial.unlink(missing_ok=True)
        if returncode != 0:
            raise RuntimeError(f"ffmpeg failed writing {path} (exit {returncode}): {message}")
        raise RuntimeError(f"{path}: ffmpeg wrote {written} video frames, expected {num_frames}")
    os.replace(partial, path)
    return SyntheticVideo(
        video_id=path.stem,
        path=path,
        fps=rate_text,
        native_fps=float(rate),
        duration=actual_duration,
        width=width,
        height=height,
        num_frames=num_frames,
        segments=tuple((float(a), float(b), int(v), int(n)) for a, b, v, n in segments),
    )


def _checked_frame_count(
    fps: str, rate: Fraction, duration: float, size: tuple[int, int], segments: Sequence[Segment]
) -> int:
    """The native frames of :func:`make_video`'s video; a ValueError naming the argument
    when the size, the duration or a segment is out of range."""
    width, height = size
    if width % 2 or height % 2 or width < MIN_SIZE[0] or height < MIN_SIZE[1]:
        raise ValueError(
            f"size {width}x{height}: width and height must be even and at least "
            f"{MIN_SIZE[0]}x{MIN_SIZE[1]} (yuv420p halves the chroma; the stamp needs room)"
        )
    num_frames = round(Fraction(duration) * rate)
    if not 1 <= num_frames <= MAX_FRAMES:
        raise ValueError(
            f"duration {duration} s at {fps} fps is {num_frames} frames; "
            f"the stamp holds 1..{MAX_FRAMES}"
        )
    actual_duration = float(num_frames / rate)
    for start, stop, verb_class, noun_class in segments:
        if not 0 <= start < stop <= actual_duration or verb_class < 0 or noun_class < 0:
            raise ValueError(
                f"segment ({start}, {stop}, {verb_class}, {noun_class}) must have "
                f"0 <= start < stop <= {actual_duration} and class ids >= 0"
            )
    return num_frames


def _raw_pictures(
    num_frames: int,
    rate: Fraction,
    size: tuple[int, int],
    segments: Sequence[Segment],
    seed: int,
) -> Iterator[memoryview]:
    """The video as ffmpeg's rawvideo rgb24 input: for each native frame its stamp band,
    then the picture below it (uint8, (rows, width, 3) each)."""
    width, height = size
    # Per native frame: which segment's classes it shows, (-1, -1) for none, and where
    # its noun shape stands (whole pixels right of the centre).
    times = np.arange(num_frames) / float(rate)
    verbs = np.full(num_frames, -1)
    nouns = np.full(num_frames, -1)
    offsets = np.zeros(num_frames, dtype=int)
    for start, stop, verb_class, noun_class in reversed(segments):
        inside = (times >= start) & (times < stop)
        verbs[inside], nouns[inside] = verb_class, noun_class
        offsets[inside] = _painted_px(shape_offset_px(times[inside] - start, verb_class, height))
    rng = np.random.default_rng(seed)
    painter = _Painter(width, height, rng)
    grain_indices = rng.integers(0, _NUM_GRAIN_FIELDS, size=num_frames)
    band_height = _band_height(height)
    for index in range(num_frames):
        key = (int(verbs[index]), int(nouns[index]))
        yield _render_band(index, width, band_height).data
        yield painter.body(key, grain_indices[index], int(offsets[index])).data


def _encoder_command(
    partial: Path, size: tuple[int, int], rate_text: str, duration: float, audio: bool
) -> list[str]:
    """The ffmpeg command that encodes rawvideo rgb24 from stdin at ``rate_text`` (and,
    with ``audio``, a 440 Hz tone of ``duration`` seconds) into the MP4 ``partial``."""
    width, height = size
    streams = [
        ffmpeg.input(
            "pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}", framerate=rate_text
        ).video
    ]
    audio_args = {}
    if audio:
        tone = f"sine=frequency=440:sample_rate=48000:duration={duration!r}"
        streams.append(ffmpeg.input(tone, format="lavfi").audio)
        audio_args = {"acodec": "aac", "audio_bitrate": "64k", "ac": 1}
    return (
        ffmpeg.output(
            *streams,
            str(partial),
            vcodec="libx264",
            preset="fast",
            pix_fmt="yuv420p",
            # -r at the input rate keeps timing constant on every ffmpeg version
            # (-fps_mode only exists from 5.1); rawvideo input never drops or duplicates.
            r=rate_text,
            format="mp4",
            map_metadata=-1,
            # No muxer/encoder version strings, and a fixed x264 thread count (its output
            # depends on it): the same seed gives the same bytes with one ffmpeg build.
            fflags="+bitexact",
            **{"flags:v": "+bitexact", "flags:a": "+bitexact", "threads:v": 2},
            **audio_args,
        )
        .global_args("-hide_banner", "-loglevel", "error", "-nostdin")
        .overwrite_output()
        .compile(cmd=ffmpeg_path())
    )


def _run_fed(command: list[str], chunks: Iterable[memoryview]) -> tuple[int, str]:
    """Run ``command`` with ``chunks`` written to its stdin; its exit status and stderr."""
    # stderr to a file, not a pipe: a full pipe would block ffmpeg while we feed stdin.
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=stderr)
        try:
            for chunk in chunks:
                process.stdin.write(chunk)
            process.stdin.close()
        except BrokenPipeError:
            pass  # ffmpeg exited early; its stderr, read below, says why
        returncode = process.wait()
        stderr.seek(0)
        message = stderr.read().decode(errors="replace").strip()
    return returncode, message


def _probe_frames(path: Path) -> int:
    """Video frames in the MP4 header of ``path`` (the sample table: exact, no decoding)."""
    info = ffmpeg.probe(str(path), cmd=ffprobe_path(), select_streams="v:0")
    return int(info["streams"][0]["nb_frames"])


# ----------------------------------------------------------------------------- optical flow

#: Pillow JPEG quality of the flow pictures (EPIC's tool is not documented; ~90 keeps the
#: flat flow fields within a few grey levels of the encoded value).
FLOW_JPEG_QUALITY = 90
#: Layout of the official flow tars under the download root (epic_downloader.py).
FLOW_FOLDER = "flow_frames"


def retimed_frame_count(video: SyntheticVideo) -> int:
    """RGB frames a store decodes from ``video``: the length of the stream re-timed to
    R = ``frame_rate_for(video_id)`` by ffmpeg's ``fps=R`` filter, ``num_frames * R / fps``
    rounded half up (what the filter emits at the end of the input; checked against ffmpeg
    in tests/epicdata/test_synthetic_flow.py). The planner's estimate from the CSV duration
    may exceed it by one."""
    rate = frame_rate_for(video.video_id)
    return math.floor(video.num_frames * rate / _parse_rate(video.fps) + Fraction(1, 2))


def synthetic_flow_displacement(
    video: SyntheticVideo, start_s: float, stop_s: float
) -> tuple[float, float]:
    """(dx, dy) in pixels of the native picture: how far the noun shape shown at
    ``start_s`` has moved at ``stop_s`` (dx > 0: rightward, dy > 0: downward; dy is
    always 0, the shape swings horizontally). (0, 0) where no shape is shown at
    ``start_s`` or ``stop_s`` lies in another block or a grey gap (the shape vanishes:
    no motion defined). Times on the continuous clock, e.g. (n - 1) / R for RGB frame n;
    every pixel outside the shape has (0, 0)."""
    block = _block_at(video.segments, start_s)
    if block is None or _block_at(video.segments, stop_s) != block:
        return 0.0, 0.0
    start, _, verb_class, _ = video.segments[block]
    dx = shape_offset_px(stop_s - start, verb_class, video.height) - shape_offset_px(
        start_s - start, verb_class, video.height
    )
    return float(dx), 0.0


def flow_grey_level(displacement_px: float, bound: float) -> int:
    """The grey level of one flow component: ``round((clip(d, -b, b) + b) * 255 / (2 b))``
    (EPIC's encoding; 127.5 = no motion, stored as 128)."""
    clipped = min(max(float(displacement_px), -bound), bound)
    return int(np.rint((clipped + bound) * 255 / (2 * bound)))


def _flow_times(video_id: str, flow_frame: int, params: FlowParams) -> tuple[float, float]:
    """Times of the two RGB frames flow frame ``flow_frame`` (1-based) compares: frames
    a = (k - 1) * stride + 1 and a + dilation of the stream at R (rule 1)."""
    if flow_frame < 1:
        raise ValueError(f"flow frames are numbered from 1, got {flow_frame}")
    rate = frame_rate_for(video_id)
    first = (flow_frame - 1) * params.stride + 1
    return frame_time_seconds(first, rate), frame_time_seconds(first + params.dilation, rate)


#: (noun class or -1 for no shape, shape offset in whole pixels, grey u, grey v): all that
#: decides a flow picture, so identical pictures are drawn and encoded once.
_FlowKey = tuple[int, int, int, int]


def _flow_key(video: SyntheticVideo, flow_frame: int, params: FlowParams) -> _FlowKey:
    start_s, stop_s = _flow_times(video.video_id, flow_frame, params)
    dx, dy = synthetic_flow_displacement(video, start_s, stop_s)
    grey_u, grey_v = flow_grey_level(dx, params.bound), flow_grey_level(dy, params.bound)
    still = flow_grey_level(0.0, params.bound)
    block = _block_at(video.segments, start_s)
    if block is None or grey_u == grey_v == still:
        return -1, 0, still, still
    start, _, verb_class, noun_class = video.segments[block]
    offset = int(_painted_px(shape_offset_px(start_s - start, verb_class, video.height)))
    return noun_class, offset, grey_u, grey_v


def _flow_pictures(key: _FlowKey, width: int, height: int, still: int) -> list[np.ndarray]:
    """[u, v], each (height, width) uint8: the component's grey on the shape's pixels of
    the first frame (where the painter put it), ``still`` elsewhere (band included)."""
    noun_class, offset, *greys = key
    pictures = [np.full((height, width), still, dtype=np.uint8) for _ in greys]
    if noun_class >= 0:
        band, pad = _band_height(height), _swing_pad(height)
        wide = _shape_window(noun_class, height - band, width, pad)
        mask = wide[:, pad - offset : pad - offset + width]
        for picture, grey in zip(pictures, greys, strict=True):
            picture[band:][mask] = grey
    return pictures


def synthetic_flow_frame(
    video: SyntheticVideo, flow_frame: int, params: FlowParams | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(u, v), each (height, width) uint8 at the video's size: flow frame ``flow_frame``
    (1-based, flow-index space) as :func:`write_flow_tar` encodes it before JPEG, with the
    video's group rule (:func:`epicdata.frames.flow_params_for`) unless ``params``."""
    params = flow_params_for(video.video_id, params)
    key = _flow_key(video, flow_frame, params)
    u, v = _flow_pictures(key, video.width, video.height, flow_grey_level(0.0, params.bound))
    return u, v


def _jpeg_l(picture: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="JPEG", quality=FLOW_JPEG_QUALITY)
    return buffer.getvalue()


def flow_tar_path(root: str | Path, video_id: str) -> Path:
    """``root/PXX/flow_frames/PXX_YY.tar``, the official layout."""
    return Path(root) / video_id[:3] / FLOW_FOLDER / f"{video_id}.tar"


def write_flow_tar(
    video: SyntheticVideo,
    path: str | Path,
    *,
    params: FlowParams | None = None,
    interleaved: bool = False,
    prefix: str = "",
) -> int:
    """Write ``video``'s optical flow as an official-style tar; returns its flow frames.

    Members ``{prefix}u/frame_%010d.jpg`` and ``{prefix}v/...`` (``prefix`` "" or "./"),
    grayscale JPEGs at the video's size, numbered from 1: flow frame k is
    :func:`synthetic_flow_frame` (the analytic motion between RGB frames (k - 1) * stride + 1
    and + dilation of the re-timed stream), for k up to ``flow_frame_count(
    retimed_frame_count(video), stride, dilation)``. Every u member, then every v member
    (as ``tar`` writes a folder per folder), or u1 v1 u2 v2 ... with ``interleaved``.
    Written under a temporary name and renamed; the bytes depend only on the video's
    segments, size, id and Pillow's JPEG encoder (fixed mtime, owner and mode).
    """
    path = Path(path)
    params = flow_params_for(video.video_id, params)
    count = flow_frame_count(retimed_frame_count(video), params.stride, params.dilation)
    keys = [_flow_key(video, k, params) for k in range(1, count + 1)]
    still = flow_grey_level(0.0, params.bound)
    encoded: dict[_FlowKey, list[bytes]] = {}
    for key in keys:
        if key not in encoded:
            pictures = _flow_pictures(key, video.width, video.height, still)
            encoded[key] = [_jpeg_l(picture) for picture in pictures]
    members = [(c, k) for k in range(1, count + 1) for c in (0, 1)]
    if not interleaved:
        members.sort()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with tarfile.open(partial, "w", format=tarfile.GNU_FORMAT) as archive:
        for component, k in members:
            data = encoded[keys[k - 1]][component]
            info = tarfile.TarInfo(f"{prefix}{'uv'[component]}/frame_{k:010d}.jpg")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            archive.addfile(info, io.BytesIO(data))
    os.replace(partial, path)
    return count


# ----------------------------------------------------------------------------- mini-EPIC


@dataclass(frozen=True)
class MiniEpic:
    """What :func:`make_mini_epic` wrote: ``videos_dir`` holds ``PXX/videos/PXX_YY.MP4``
    (pass it as ``--videos``), ``annotations_dir`` the official CSVs (``--annotations``);
    ``splits`` maps ``train``/``validation``/``test`` to their (disjoint) video ids;
    ``flow_dir`` holds ``PXX/flow_frames/PXX_YY.tar`` (``--flow``; None: not written)."""

    root: Path
    videos_dir: Path
    annotations_dir: Path
    videos: tuple[SyntheticVideo, ...]
    splits: dict[str, tuple[str, ...]]
    flow_dir: Path | None = None


#: Native rates of the training videos, cycled, with the id kind EPIC uses for each:
#: (fps, extension id). Validation is EPIC-55 at 59.94 (its last video at 47.95) and test
#: is extension-only at 50, as in the real splits.
_TRAIN_RATES = (
    ("60000/1001", False),
    ("50", True),
    ("30000/1001", False),
    ("50", True),
    ("90", False),
)
#: The ``video_info`` fps text EPIC writes for each native rate.
_FPS_TEXT = {
    Fraction(60000, 1001): "59.9400599400599",
    Fraction(30000, 1001): "29.97002997002997",
    Fraction(48000, 1001): "47.952047952047955",
    Fraction(50): "50.0",
    Fraction(90): "90.0",
}
_SEEN_PARTICIPANTS = 3
#: Keeps EPIC-55 ids two-digit (PXX_YY) for every participant.
MAX_VIDEOS = 100
_DURATION_RANGE_S = (16.0, 22.0)
_BLOCK_RANGE_S = (1.5, 3.5)  # one class-content block
_GAP_RANGE_S = (0.2, 0.8)  # grey between blocks
_SEGMENT_RANGE_S = (0.5, 3.0)
_SEGMENTS_PER_BLOCK = (4, 8)  # inclusive
#: Annotated segments stay this far inside their block: the re-timed frame at a segment
#: edge lies up to 2/R before it and shows a source frame up to 1/fps off (< 0.08 s in all).
_BLOCK_MARGIN_S = 0.1
#: Class frequencies in ten draws: the last verb and nouns are rare (the tail classes).
_VERB_PATTERN = (0, 0, 0, 0, 1, 1, 1, 2, 2, 3)
_NOUN_PATTERN = (0, 0, 0, 1, 1, 1, 2, 2, 3, 4)


def _split_sizes(num_videos: int) -> dict[str, int]:
    if not 3 <= num_videos <= MAX_VIDEOS:
        raise ValueError(
            f"num_videos must be 3..{MAX_VIDEOS} (one per split at least), got {num_videos}"
        )
    test = max(1, round(num_videos / 8))
    validation = max(1, round(num_videos / 4))
    return {"train": num_videos - validation - test, "validation": validation, "test": test}


def _plan_videos(num_videos: int) -> list[tuple[str, str, str]]:
    """(video_id, split, fps) of every video; ids count up per participant and id kind.

    Train uses participants P01-P03. Validation and test reuse them, except the last
    validation video and the first test video: each gets a participant of its own, so both
    unseen-participant lists are non-empty and used.
    """
    sizes = _split_sizes(num_videos)
    counters: dict[tuple[int, bool], int] = {}
    new_participants = iter(range(_SEEN_PARTICIPANTS + 1, 100))

    def next_id(participant: int, extension: bool) -> str:
        number = counters.get((participant, extension), 101 if extension else 1)
        counters[(participant, extension)] = number + 1
        return f"P{participant:02d}_{number:02d}"

    plan = []
    for j in range(sizes["train"]):
        fps, extension = _TRAIN_RATES[j % len(_TRAIN_RATES)]
        plan.append((next_id(1 + j % _SEEN_PARTICIPANTS, extension), "train", fps))
    for j in range(sizes["validation"]):
        last = j == sizes["validation"] - 1
        participant = next(new_participants) if last else 1 + j % _SEEN_PARTICIPANTS
        plan.append(
            (next_id(participant, False), "validation", "48000/1001" if last else "60000/1001")
        )
    for j in range(sizes["test"]):
        participant = next(new_participants) if j == 0 else 1 + j % _SEEN_PARTICIPANTS
        plan.append((next_id(participant, True), "test", "50"))
    return plan


@dataclass(frozen=True)
class _PlannedVideo:
    video_id: str
    split: str
    fps: str
    duration: float  # requested seconds; make_video writes round(duration * fps) frames
    blocks: tuple[Segment, ...]  # class content, disjoint
    segments: tuple[Segment, ...]  # annotated, each inside its block, sorted by time


def _segments_in_block(rng: np.random.Generator, block: Segment) -> list[Segment]:
    start, stop, verb_class, noun_class = block
    # Timestamps have two decimals: draw in centiseconds, inside the block's margins.
    low = math.ceil((start + _BLOCK_MARGIN_S) * 100)
    high = math.floor((stop - _BLOCK_MARGIN_S) * 100)
    shortest, longest = (round(s * 100) for s in _SEGMENT_RANGE_S)
    segments = []
    for _ in range(rng.integers(_SEGMENTS_PER_BLOCK[0], _SEGMENTS_PER_BLOCK[1] + 1)):
        length = int(rng.integers(shortest, min(longest, high - low) + 1))
        begin = int(rng.integers(low, high - length + 1))
        segments.append((begin / 100, (begin + length) / 100, verb_class, noun_class))
    return segments


def _plan(seed: int, num_videos: int) -> list[_PlannedVideo]:
    """Durations, class blocks and annotated segments of every video, from one seeded stream.

    Class labels are dealt per split from ``_VERB_PATTERN``/``_NOUN_PATTERN`` (shuffled), so
    every class in use appears in every split with enough blocks, with fixed proportions.
    """
    rng = np.random.default_rng(seed)
    ids = _plan_videos(num_videos)
    planned: list[_PlannedVideo] = []
    for split in SPLIT_FILES:
        videos = [(video_id, fps) for video_id, s, fps in ids if s == split]
        durations, slots = [], []
        for _, fps in videos:
            duration = round(float(rng.uniform(*_DURATION_RANGE_S)), 2)
            written = float(_frame_count(duration, _parse_rate(fps)) / _parse_rate(fps))
            times, t = [], float(rng.uniform(*_GAP_RANGE_S))
            while True:
                length = float(rng.uniform(*_BLOCK_RANGE_S))
                if t + length > written - _GAP_RANGE_S[0]:
                    break
                times.append((t, t + length))
                t += length + float(rng.uniform(*_GAP_RANGE_S))
            durations.append(duration)
            slots.append(times)
        total = sum(len(times) for times in slots)
        verbs = iter(rng.permutation(np.resize(_VERB_PATTERN, total)).tolist())
        nouns = iter(rng.permutation(np.resize(_NOUN_PATTERN, total)).tolist())
        for (video_id, fps), duration, times in zip(videos, durations, slots, strict=True):
            blocks = tuple((a, b, next(verbs), next(nouns)) for a, b in times)
            segments = [seg for block in blocks for seg in _segments_in_block(rng, block)]
            segments.sort(key=lambda seg: (seg[0], seg[1]))
            planned.append(_PlannedVideo(video_id, split, fps, duration, blocks, tuple(segments)))
    return planned


def _frame_count(duration: float, rate: Fraction) -> int:
    return round(Fraction(duration) * rate)


# ----------------------------------------------------------------------------- CSV files


def _verb_key(verb_class: int) -> str:
    return f"verb-{verb_class:02d}"


def _noun_key(noun_class: int) -> str:
    return f"noun:{noun_class:03d}"


def _csv_text(
    header: Sequence[str], rows: Sequence[Sequence[object]], *, crlf: bool = False
) -> str:
    """CSV as the official files write it: LF with a final newline, or CRLF without one."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n" if crlf else "\n")
    writer.writerow(header)
    writer.writerows(rows)
    text = buffer.getvalue()
    return text.removesuffix("\r\n") if crlf else text


def _class_rows(count: int, key: Callable[[int], str]) -> list[tuple[object, ...]]:
    # Even ids list two instances (quoted, like "['take', 'grab']"), odd ids one (unquoted).
    rows = []
    for class_id in range(count):
        names = [key(class_id)] + ([f"{key(class_id)}-alt"] if class_id % 2 == 0 else [])
        rows.append((class_id, key(class_id), str(names), f"group {class_id % 6}"))
    return rows


def _annotation_files(
    plan: Sequence[_PlannedVideo], videos: Sequence[SyntheticVideo], seed: int
) -> dict[str, str]:
    """File name -> text of every official annotation file."""
    rng = np.random.default_rng([seed, 1])
    rows: dict[str, list[tuple[object, ...]]] = {split: [] for split in SPLIT_FILES}
    counts = {"verb": np.zeros(NUM_VERB_CLASSES, int), "noun": np.zeros(NUM_NOUN_CLASSES, int)}
    for video in plan:
        rate = frame_rate_for(video.video_id)
        participant = video.video_id[:3]
        for i, (start, stop, verb_class, noun_class) in enumerate(video.segments):
            start_ts, stop_ts = format_timestamp(start), format_timestamp(stop)
            spoken = format_timestamp(rng.uniform(start, stop), decimals=3)
            row: tuple[object, ...] = (
                f"{video.video_id}_{i}",
                participant,
                video.video_id,
                spoken,
                start_ts,
                stop_ts,
                start_frame_at(parse_timestamp(start_ts), rate),
                stop_frame_at(parse_timestamp(stop_ts), rate),
            )
            if video.split != "test":
                verb, noun = _verb_key(verb_class), _noun_key(noun_class)
                row += (
                    f"{verb} {noun}",
                    verb,
                    verb_class,
                    noun,
                    noun_class,
                    str([noun]),
                    str([noun_class]),
                )
            if video.split == "train":
                counts["verb"][verb_class] += 1
                counts["noun"][noun_class] += 1
            rows[video.split].append(row)

    files = {}
    for split, name in SPLIT_FILES.items():
        # The official files are sorted by narration_id as text (P01_11_0, P01_11_1, P01_11_10).
        header = TIMESTAMP_COLUMNS if split == "test" else LABELLED_COLUMNS
        files[name] = _csv_text(header, sorted(rows[split], key=lambda row: str(row[0])))
    files[VERB_CLASSES_FILE] = _csv_text(
        CLASS_COLUMNS, _class_rows(NUM_VERB_CLASSES, _verb_key), crlf=True
    )
    files[NOUN_CLASSES_FILE] = _csv_text(
        CLASS_COLUMNS, _class_rows(NUM_NOUN_CLASSES, _noun_key), crlf=True
    )
    files[VIDEO_INFO_FILE] = _csv_text(
        VIDEO_INFO_COLUMNS,
        [
            (
                v.video_id,
                repr(round(v.duration, 6)),
                _FPS_TEXT.get(Fraction(v.fps), repr(v.native_fps)),
                f"{v.width}x{v.height}",
            )
            for v in sorted(videos, key=lambda v: v.video_id)
        ],
    )
    # Tail classes are the rare ones in training, as in EPIC: here every unused class and
    # the rarest used one, so tail metrics have validation segments to score.
    for kind, name in (("verb", TAIL_VERBS_FILE), ("noun", TAIL_NOUNS_FILE)):
        count = counts[kind]
        used = np.flatnonzero(count)
        rarest = used[count[used] == count[used].min()]
        tail = sorted(set(np.flatnonzero(count == 0).tolist()) | set(rarest.tolist()))
        files[name] = _csv_text((kind,), [(c,) for c in tail])
    seen = {v.video_id[:3] for v in plan if v.split == "train"}
    for split, name in UNSEEN_PARTICIPANTS_FILES.items():
        unseen = sorted({v.video_id[:3] for v in plan if v.split == split} - seen)
        files[name] = _csv_text(("participant_id",), [(p,) for p in unseen])
    return files


def _refuse_other_files(videos_dir: Path, planned: Iterable[Path]) -> None:
    """EpicInputError when ``videos_dir`` holds videos or flow tars this mini-EPIC would not
    write (another mini-EPIC's, or the user's): nothing is written then."""
    if not videos_dir.is_dir():
        return
    keep = set(planned)
    stale = sorted(
        str(path)
        for pattern, suffix in (("*/videos/*", ".mp4"), (f"*/{FLOW_FOLDER}/*", ".tar"))
        for path in videos_dir.glob(pattern)
        if path.suffix.lower() == suffix and path not in keep
    )
    if stale:
        raise EpicInputError(
            "the folder holds videos this mini-EPIC would not write",
            where=f"{videos_dir}: {', '.join(stale[:3])}{', ...' if len(stale) > 3 else ''}",
            fix="pass an empty --out folder",
        )


def make_mini_epic(
    root: str | Path,
    *,
    seed: int = 0,
    num_videos: int = 8,
    size: tuple[int, int] = (320, 180),
    flow: bool = False,
) -> MiniEpic:
    """Write a mini-EPIC into ``root``: videos in the EPIC layout and the annotation CSVs.

    ``num_videos`` (3..100) are split video-disjointly, 8 -> train 5, validation 2, test 1,
    each 16-22 s at ``size`` (width, height). With ``flow``, also each video's optical flow
    as an official-style tar ``EPIC-KITCHENS/PXX/flow_frames/PXX_YY.tar`` (see
    :func:`write_flow_tar`; ``flow_dir`` is then the folder to pass as ``--flow``). Every
    byte written is a function of ``seed``, ``num_videos`` and ``size`` (the videos' also
    of the ffmpeg build, the tars' of Pillow's). Rerunning into the same ``root`` replaces
    what an identical run wrote; a folder holding other videos or tars is refused
    (EpicInputError) before anything is written.
    """
    root = Path(root)
    videos_dir = root / "EPIC-KITCHENS"
    annotations_dir = root / "annotations"
    plan = _plan(seed, num_videos)
    paths = {p.video_id: videos_dir / p.video_id[:3] / "videos" / f"{p.video_id}.MP4" for p in plan}
    tars = {p.video_id: flow_tar_path(videos_dir, p.video_id) for p in plan}
    _refuse_other_files(videos_dir, [*paths.values(), *tars.values()])
    videos = []
    for index, planned in enumerate(plan):
        video = make_video(
            paths[planned.video_id],
            fps=planned.fps,
            duration=planned.duration,
            size=size,
            segments=planned.blocks,
            seed=seed * MAX_VIDEOS + index,
        )
        log.info(
            "%s: %d frames at %s fps, %.2f s",
            video.video_id,
            video.num_frames,
            video.fps,
            video.duration,
        )
        if flow:
            count = write_flow_tar(video, tars[video.video_id])
            log.info("%s: %d flow frames in %s", video.video_id, count, tars[video.video_id])
        videos.append(video)
    annotations_dir.mkdir(parents=True, exist_ok=True)
    for name, text in _annotation_files(plan, videos, seed).items():
        (annotations_dir / name).write_bytes(text.encode("utf-8"))
    return MiniEpic(
        root=root,
        videos_dir=videos_dir,
        annotations_dir=annotations_dir,
        videos=tuple(videos),
        splits={
            split: tuple(p.video_id for p in plan if p.split == split) for split in SPLIT_FILES
        },
        flow_dir=videos_dir if flow else None,
    )


# ----------------------------------------------------------------------------- CLI


class _SizeType(click.ParamType):
    name = "WxH"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        width, sep, height = str(value).strip().lower().partition("x")
        if not (sep and width.isdigit() and height.isdigit()):
            self.fail(f"{value!r} is not WIDTHxHEIGHT, e.g. 320x180 or 1920x1080", param, ctx)
        size = int(width), int(height)
        if size[0] % 2 or size[1] % 2 or size[0] < MIN_SIZE[0] or size[1] < MIN_SIZE[1]:
            self.fail(
                f"{value}: width and height must be even and at least {MIN_SIZE[0]}x{MIN_SIZE[1]}",
                param,
                ctx,
            )
        return size


def _flow_summary(videos: Sequence[SyntheticVideo]) -> list[str]:
    """One line per video: its flow group rule and the flow frames its tar holds."""
    lines = ["flow tars (u/ members, then v/): the shape swings at a speed set by the verb"]
    for video in videos:
        params = flow_params_for(video.video_id)
        count = flow_frame_count(retimed_frame_count(video), params.stride, params.dilation)
        lines.append(
            f"{video.video_id:<9} stride {params.stride}, dilation {params.dilation}, "
            f"bound {params.bound:g}: {count} flow frames of {retimed_frame_count(video)} "
            "RGB frames"
        )
    return lines


def _summary(mini: MiniEpic) -> str:
    """What is on disk: the annotation files read back through :mod:`epicdata.annotations`."""
    annotations = AnnotationDir(mini.annotations_dir)
    info = {v.video_id: v for v in annotations.video_info()}
    split_of = {vid: split for split, ids in mini.splits.items() for vid in ids}
    lines = [
        f"videos (--videos):           {mini.videos_dir}",
        f"annotations (--annotations): {mini.annotations_dir}",
        *([f"flow tars (--flow):          {mini.flow_dir}"] if mini.flow_dir else []),
        "",
        "video     split       native fps   R  duration  native frames  size",
    ]
    for video in mini.videos:
        row = info[video.video_id]
        lines.append(
            f"{video.video_id:<9} {split_of[video.video_id]:<11} {video.fps:>10} "
            f"{frame_rate_for(video.video_id):>3} {row.duration:>8.2f}s {video.num_frames:>14}  "
            f"{row.width}x{row.height}"
        )
    lines.append("")
    if mini.flow_dir is not None:
        lines += [*_flow_summary(mini.videos), ""]
    used: dict[str, set[int]] = {"verb": set(), "noun": set()}
    for split in SPLIT_FILES:
        table = annotations.table(split)
        lengths = table.stop_frames - table.start_frames + 1
        num_videos = len(set(table.video_ids))
        lines.append(
            f"{split:<11} {len(table):>4} segments in {num_videos} video"
            f"{'s' if num_videos > 1 else ''}, {lengths.min()}-{lengths.max()} frames at R"
        )
        if table.labelled:
            used["verb"] |= set(table.verb_classes.tolist())
            used["noun"] |= set(table.noun_classes.tolist())
    lines.append("")
    for kind, vocabulary, tail in (
        ("verb", annotations.verb_classes(), annotations.tail_verbs()),
        ("noun", annotations.noun_classes(), annotations.tail_nouns()),
    ):
        lines.append(
            f"{kind} classes: {len(vocabulary)}, {len(used[kind])} used "
            f"({', '.join(vocabulary[c].key for c in sorted(used[kind]))}), {len(tail)} in the tail"
        )
    lines.append(
        "unseen participants: validation "
        f"{', '.join(sorted(annotations.unseen_participants('validation')))}, test "
        f"{', '.join(sorted(annotations.unseen_participants('test')))}"
    )
    return "\n".join(lines)


def estimate_bytes(num_videos: int, size: tuple[int, int], flow: bool = False) -> int:
    """Upper estimate of what :func:`make_mini_epic` writes (measured: ~0.017 B per pixel
    of a frame at 320x180, x4 for margin; up to 90 fps). Flow tars (measured: ~1 kB per
    flat 320x180 JPEG plus 1.5 kB of tar header and padding per member, at most 60 flow
    frames a second, 2 members each) about double it."""
    videos = num_videos * _DURATION_RANGE_S[1] * 90 * size[0] * size[1] * 0.04
    flow_bytes = num_videos * _DURATION_RANGE_S[1] * 60 * 2 * (2048 + 0.05 * size[0] * size[1])
    return int(videos + (flow_bytes if flow else 0)) + (1 << 20)


@click.command(cls=EpicCommand, epilog=example("epic-synth --out work/mini-epic --videos 8"))
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write into (created): OUT/EPIC-KITCHENS and OUT/annotations.",
)
@click.option(
    "--seed",
    default=0,
    type=click.IntRange(min=0),
    help="Seed of everything generated.",
)
@click.option(
    "--videos",
    "num_videos",
    default=8,
    type=click.IntRange(3, MAX_VIDEOS),
    help="Number of videos (split video-disjointly into train/validation/test).",
)
@click.option(
    "--size",
    default="320x180",
    type=_SizeType(),
    metavar="WIDTHxHEIGHT",
    help="Frame size WIDTHxHEIGHT (even numbers), e.g. 1920x1080.",
)
@click.option(
    "--flow",
    is_flag=True,
    help="Also write each video's optical flow as an official-style tar "
    "(OUT/EPIC-KITCHENS/PXX/flow_frames/PXX_YY.tar, for epic-extract plan --flow).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(
    out: Path, seed: int, num_videos: int, size: tuple[int, int], flow: bool, verbose: bool
) -> None:
    """Write a synthetic mini-EPIC (stamped H.264 videos + EPIC-100 annotation CSVs, and
    with --flow the flow tars) to OUT."""
    start_command()
    ffmpeg_path()
    preflight_output(out, need_bytes=estimate_bytes(num_videos, size, flow), option="--out")
    log.info(
        "writing a mini-EPIC of %d videos at %dx%d (seed %d%s) into %s",
        num_videos,
        size[0],
        size[1],
        seed,
        ", with flow tars" if flow else "",
        out,
    )
    mini = make_mini_epic(out, seed=seed, num_videos=num_videos, size=size, flow=flow)
    click.echo(_summary(mini))


if __name__ == "__main__":
    main()
