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
from dataclasses import dataclass

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


# ----------------------------------------------------------------------------- optical flow


@dataclass(frozen=True)
class FlowParams:
    """How EPIC's TV-L1 flow of a video was computed: every ``stride``-th RGB frame, between
    frames ``dilation`` apart, each component clipped to [-bound, +bound] pixels and mapped
    linearly to 0..255 (127.5: no motion). The same grey level means another motion where
    the bound differs, so the parameters are recorded per video, not only the stride."""

    stride: int
    dilation: int
    bound: float


#: ``PXX_YY`` (recorded 2018): "stride = 2, dilation = 3, bound = 25 and size = 256"
#: (github epic-kitchens/epic-kitchens-55-annotations README, commit 63fa7d78).
EPIC55_FLOW = FlowParams(stride=2, dilation=3, bound=25.0)
#: ``PXX_1YY`` (2020): stride 1 (C1 ``src/convert_rgb_to_flow_frame_idxs.py``, STRIDES[2020]:
#: "almost a 1-to-1 correspondence (bar the last frame)", i.e. dilation 1). Dilation 1 and
#: bound 8 are the parameters the erratum flow of P01_109 and P27_103 was regenerated with
#: (``furnari-flow -s 1 -d 1 -b 8``, epic-kitchens-100-annotations README, commit
#: ea8b4045), the only ones published for the 2020 videos; override them where yours differ.
EXTENSION_FLOW = FlowParams(stride=1, dilation=1, bound=8.0)


def flow_params_for(video_id: str, override: FlowParams | None = None) -> FlowParams:
    """The flow parameters of ``video_id``'s group (or ``override`` when given)."""
    if override is not None:
        return override
    return EXTENSION_FLOW if is_extension_video(video_id) else EPIC55_FLOW


def flow_index(rgb_frame: int, stride: int) -> int:
    """The flow frame of RGB frame ``rgb_frame`` (both 1-based): ``(rgb - 1) // stride + 1``,
    C1's ``convert_rgb_frame_to_flow_frame_idx``. Works elementwise on numpy arrays too."""
    return (rgb_frame - 1) // stride + 1


def flow_frame_count(rgb_frames: int, stride: int, dilation: int) -> int:
    """Flow frames computed from ``rgb_frames`` RGB frames: ``ceil((n - dilation) /
    stride)``, as epic-kitchens-55-lib ``epic_kitchens/time.py:flow_frame_count`` (in
    integers: the same value for every n, without its float rounding). Zero or less for a
    video of at most ``dilation`` frames, as there."""
    return -(-(rgb_frames - dilation) // stride)
