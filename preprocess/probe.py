"""Find EPIC videos on disk and read their stream facts with ffprobe (no decoding)."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import ffmpeg

from epicdata.errors import BadSourceError, EpicInputError
from epicdata.ffmpeg_bin import ffprobe_path
from epicdata.frames import is_video_id

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4",)
#: ffprobe only reads container headers; a few at a time hide its start-up latency.
PROBE_THREADS = 8


@dataclass(frozen=True)
class VideoProbe:
    """Stream facts of one video. ``duration`` in seconds (video stream, not container:
    the audio track may run longer), ``native_fps`` in frames per second."""

    path: str
    native_fps: float
    duration: float
    width: int
    height: int
    native_frames: int | None
    codec: str
    fingerprint: str


class ProbeError(BadSourceError):
    """A video ffprobe cannot read; the message names the file and ffprobe's reason."""


def find_videos(videos_root: str | Path) -> dict[str, Path]:
    """Map video id -> file for every ``<id>.MP4`` under ``videos_root`` (EPIC layout
    ``PXX/videos/PXX_YY.MP4``; any depth, extension case-insensitive)."""
    root = Path(videos_root)
    if not root.is_dir():
        raise EpicInputError(f"videos folder {root} does not exist: pass the EPIC-KITCHENS root")
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in VIDEO_SUFFIXES or not is_video_id(path.stem):
            continue
        if path.stem in found:
            raise EpicInputError(
                f"video {path.stem} found twice under {root}: {found[path.stem]} and {path}; "
                f"remove one"
            )
        found[path.stem] = path
    return found


def _fraction(text: str | None) -> Fraction | None:
    if not text or text in ("0/0", "0"):
        return None
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None
    return value if value > 0 else None


#: Bytes hashed at each of the start, middle and end of a video for its fingerprint.
FINGERPRINT_CHUNK_BYTES = 1 << 20


def fingerprint(path: str | Path) -> str:
    """``<size>:<BLAKE2b of 1 MiB at the start, middle and end>``: tells a replaced or
    re-encoded video from the planned one at the cost of 3 MiB read (the mtime would not:
    copying a tree changes it, and a copy of the same bytes is the same video)."""
    size = os.path.getsize(path)
    digest = hashlib.blake2b(digest_size=16)
    chunk = FINGERPRINT_CHUNK_BYTES
    with open(path, "rb") as handle:
        for offset in sorted({0, max(0, size // 2 - chunk // 2), max(0, size - chunk)}):
            handle.seek(offset)
            digest.update(handle.read(chunk))
    return f"{size}:{digest.hexdigest()}"


def probe_video(path: str | Path) -> VideoProbe:
    """ffprobe ``path``; raises :class:`ProbeError` naming the file when it is unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ProbeError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ProbeError(f"{path}: empty file (0 bytes); download it again")
    try:
        info = ffmpeg.probe(str(path), cmd=ffprobe_path())
    except ffmpeg.Error as exc:
        tail = (exc.stderr or b"").decode(errors="replace").strip().splitlines()[-2:]
        raise ProbeError(f"{path}: ffprobe cannot read it ({' / '.join(tail)})") from None
    streams = [s for s in info.get("streams", []) if s.get("codec_type") == "video"]
    if not streams:
        raise ProbeError(f"{path}: no video stream")
    stream = streams[0]
    fps = _fraction(stream.get("avg_frame_rate")) or _fraction(stream.get("r_frame_rate"))
    duration_text = stream.get("duration") or info.get("format", {}).get("duration")
    if fps is None or not duration_text or float(duration_text) <= 0:
        raise ProbeError(f"{path}: ffprobe reports no frame rate or duration")
    nb_frames = stream.get("nb_frames")
    return VideoProbe(
        path=str(path),
        native_fps=float(fps),
        duration=float(duration_text),
        width=int(stream["width"]),
        height=int(stream["height"]),
        native_frames=int(nb_frames) if nb_frames and nb_frames.isdigit() else None,
        codec=str(stream.get("codec_name", "")),
        fingerprint=fingerprint(path),
    )


def probe_many(paths: Iterable[Path]) -> tuple[dict[str, VideoProbe], dict[str, str]]:
    """Probe videos in parallel. Returns (probes by video id, error message by video id)."""
    paths = list(paths)
    probes: dict[str, VideoProbe] = {}
    errors: dict[str, str] = {}

    def one(path: Path) -> tuple[str, VideoProbe | None, str | None]:
        try:
            return path.stem, probe_video(path), None
        except ProbeError as exc:
            return path.stem, None, str(exc)

    with ThreadPoolExecutor(PROBE_THREADS) as pool:
        for video_id, probe, error in pool.map(one, paths):
            if probe is not None:
                probes[video_id] = probe
            else:
                errors[video_id] = error or "unreadable"
    return probes, errors
