"""Frame numbering: the rule every EPIC-100 frame number follows (DESIGN.md rule 1).

Frame numbers are 1-based and count a stream re-timed to a constant rate R: 60 fps for
EPIC-55 videos (``PXX_YY``) and 50 fps for extension videos (``PXX_1YY``). Frame n is the
picture at time (n - 1) / R seconds. Native frame rates (59.94, 50, 29.97, 47.95, 90) never
enter the numbering.

The official frame numbers were computed in double precision: seconds as the float
``h * 3600 + m * 60 + s`` and then ``floor(seconds * R)``. Exact (rational) arithmetic
disagrees with the released files on 776 of 22,760 validation/test rows (``00:04:29.15``
at 60 fps is 16149 exactly but 16148 in the file, because 269.15 * 60 = 16148.999...), so
this module deliberately uses the same float arithmetic.
"""

from __future__ import annotations

import math
import re

from epicdata.constants import EPIC55_FRAME_RATE, EXTENSION_FRAME_RATE

# \Z, not $: $ also matches before a trailing newline ("P01_01\n" is not an id).
VIDEO_ID_RE = re.compile(r"^P(\d{2})_(\d{2}|1\d{2})\Z")
_TIMESTAMP_RE = re.compile(r"^(\d+):([0-5]\d):([0-5]\d(?:\.\d+)?)\Z")


def is_video_id(video_id: str) -> bool:
    """True for ``PXX_YY`` (EPIC-55) and ``PXX_1YY`` (extension) ids."""
    return VIDEO_ID_RE.match(video_id) is not None


def is_extension_video(video_id: str) -> bool:
    """True for extension ids ``PXX_1YY``; raises ValueError for a malformed id."""
    match = VIDEO_ID_RE.match(video_id)
    if match is None:
        raise ValueError(f"video id {video_id!r} does not match PXX_YY or PXX_1YY")
    return len(match.group(2)) == 3


def frame_rate_for(video_id: str, override: int | None = None) -> int:
    """R(video_id): 60 for ``PXX_YY``, 50 for ``PXX_1YY``, or ``override`` when given."""
    if override is not None:
        return int(override)
    return EXTENSION_FRAME_RATE if is_extension_video(video_id) else EPIC55_FRAME_RATE


def parse_timestamp(timestamp: str) -> float:
    """``HH:MM:SS.ff`` -> seconds, as the float the official tools computed.

    Raises ValueError on any other shape."""
    match = _TIMESTAMP_RE.match(timestamp.strip())
    if match is None:
        raise ValueError(f"timestamp {timestamp!r} is not HH:MM:SS.ff")
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def format_timestamp(seconds: float, decimals: int = 2) -> str:
    """Seconds -> ``HH:MM:SS.ff`` with ``decimals`` digits, rounded to the nearest tick."""
    scale = 10**decimals
    ticks = round(seconds * scale)
    whole, frac = divmod(ticks, scale)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{text}.{frac:0{decimals}d}" if decimals else text


def start_frame_at(seconds: float, rate: int) -> int:
    """First frame of a segment starting at ``seconds``: ``max(1, floor(seconds * R))``."""
    return max(1, math.floor(float(seconds) * rate))


def stop_frame_at(seconds: float, rate: int) -> int:
    """Last frame (inclusive) of a segment stopping at ``seconds``: ``floor(seconds * R)``."""
    return math.floor(float(seconds) * rate)


def frame_time_seconds(frame: int, rate: int) -> float:
    """Presentation time in seconds of frame number ``frame`` (1-based) at rate R."""
    if frame < 1:
        raise ValueError(f"frame numbers start at 1, got {frame}")
    return (frame - 1) / rate


def expected_frame_count(duration_seconds: float, rate: int) -> int:
    """Frames a decoder re-timing a ``duration_seconds`` video to R emits (about ceil)."""
    return math.ceil(round(duration_seconds * rate, 6))
