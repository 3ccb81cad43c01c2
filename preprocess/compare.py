"""`epic-check --compare-frames DIR`: does a store extracted from the videos show, under
each frame number, the picture EPIC's official frames show under that number?

For every video the store decoded from its MP4 and the official frames tree also holds, a
few stored frames spread over the video are decoded and compared with the official frames
``shift`` numbers away, for every shift in ``-max_shift..max_shift``. The shift with the
smallest mean absolute difference must be 0 and the PSNR there above
:data:`PSNR_THRESHOLD_DB`. 2018 GoPro videos repeat frames in low light, so several shifts
can match equally well: the smallest ``|shift|`` among them is taken and the match marked
ambiguous. Frame counts are compared too, and the official frames' extra frames located:
with best shift ``s``, official frame ``n + s`` shows stored frame ``n``, so ``s`` extra
frames sit at the start (they would shift every frame against the annotation timestamps)
and the rest at the end.
"""

from __future__ import annotations

import io
import logging
import math
import tarfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from epicdata.constants import CLAMP_TOLERANCE_FRAMES
from epicdata.manifest import SOURCE_FRAMES
from epicdata.ranges import frames_in_ranges
from epicdata.store import FrameStore
from preprocess.official_frames import (
    FramesSourceError,
    count_frames,
    find_frames,
    read_official_frames,
)

log = logging.getLogger(__name__)

#: Stored frames compared per video, spread evenly over the frames both sources hold.
DEFAULT_SAMPLES = 8
#: Shifts tried each way: the clamp tolerance, which bounds how far official counts run
#: past duration x R (4 to 13 frames measured, DESIGN.md).
DEFAULT_MAX_SHIFT = CLAMP_TOLERANCE_FRAMES
#: PROVISIONAL. The official frames were scaled by NVIDIA's scale_npp (interp_algo=super),
#: which needs an NVIDIA GPU; this store scales with ffmpeg's default (bicubic). The CPU
#: stand-in, ffmpeg's area scaling (also an averaging downscaler) vs bicubic, both
#: JPEG -q:v 4 at 456x256 from a 1920x1080 testsrc2 H.264 video, measured 38.5 dB (min of
#: 12 frames; lanczos vs bicubic 43.4 dB), while a 1-frame shift of that video measured
#: 26.1 dB. 30 dB sits between the two; re-measure against real scale_npp frames (a GPU
#: node, or official tars of a few videos) and replace it.
PSNR_THRESHOLD_DB = 30.0
#: Shifts whose mean absolute difference is within this of the best one match equally
#: (repeated frames): relative part, and grey levels (JPEG noise on identical pictures).
TIE_RELATIVE = 0.02
TIE_GREY_LEVELS = 0.05


@dataclass
class VideoComparison:
    """One video: ``best_shift`` (official frame n + shift shows stored frame n), the mean
    absolute difference (grey levels, 0-255) and PSNR (dB) there, the shifts that tie with
    it, and frame counts (``extra_at_start`` + ``extra_at_end`` = official - store)."""

    video_id: str
    store_frames: int
    official_frames: int
    samples: int = 0
    best_shift: int | None = None
    mean_abs_diff: float | None = None
    psnr_db: float | None = None
    tied_shifts: list[int] = field(default_factory=list)
    extra_at_start: int = 0
    extra_at_end: int = 0
    problem: str | None = None

    @property
    def ambiguous(self) -> bool:
        return len(self.tied_shifts) > 1

    @property
    def ok(self) -> bool:
        return (
            self.problem is None
            and self.best_shift == 0
            and self.psnr_db is not None
            and self.psnr_db >= PSNR_THRESHOLD_DB
        )


@dataclass
class CompareReport:
    """Every compared video, and the videos that could not be compared (by reason)."""

    store: str
    frames_root: str
    videos: list[VideoComparison]
    not_compared: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.videos) and all(v.ok for v in self.videos)

    def to_dict(self) -> dict:
        return {
            "store": self.store,
            "frames_root": self.frames_root,
            "ok": self.ok,
            "psnr_threshold_db": PSNR_THRESHOLD_DB,
            "videos": [
                # JSON has no infinity: identical pictures have PSNR "inf".
                {**asdict(v), "psnr_db": _db(v.psnr_db), "ambiguous": v.ambiguous, "ok": v.ok}
                for v in self.videos
            ],
            "not_compared": self.not_compared,
        }


def _pixels(jpeg: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(jpeg)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32)  # (H, W, 3)


def compare_video(
    store: FrameStore,
    video_id: str,
    official: Path,
    *,
    samples: int = DEFAULT_SAMPLES,
    max_shift: int = DEFAULT_MAX_SHIFT,
) -> VideoComparison:
    """Compare ``samples`` stored frames of ``video_id`` with the official frames at
    ``official`` (tar or folder) at every shift in ``-max_shift..max_shift``."""
    meta = store.video_meta(video_id)
    total = _official_count(official)
    result = VideoComparison(video_id, store_frames=meta.decoded_frames, official_frames=total)
    stored = frames_in_ranges(meta.stored_ranges)
    usable = stored[(stored > max_shift) & (stored <= min(total, meta.decoded_frames) - max_shift)]
    if len(usable) == 0:
        result.problem = f"no stored frame between {max_shift + 1} and the end - {max_shift}"
        return result
    picks = sorted(
        {int(usable[i]) for i in np.linspace(0, len(usable) - 1, samples).round().astype(int)}
    )
    shifts = range(-max_shift, max_shift + 1)
    ours = [_pixels(j) for j in store.read_frames(video_id, picks)]
    wanted = {p + s for p in picks for s in shifts}
    theirs = {n: _pixels(j) for n, j in read_official_frames(official, wanted).items()}
    if len(theirs) != len(wanted):
        result.problem = f"official frames missing: {sorted(wanted - set(theirs))[:5]}"
        return result
    if theirs[picks[0]].shape != ours[0].shape:
        h, w, _ = theirs[picks[0]].shape
        result.problem = (
            f"official frames are {w}x{h}, stored ones {ours[0].shape[1]}x{ours[0].shape[0]}"
        )
        return result
    mad, mse = {}, {}
    for s in shifts:
        diffs = [theirs[p + s] - a for p, a in zip(picks, ours, strict=True)]
        mad[s] = float(np.mean([np.abs(d).mean() for d in diffs]))
        mse[s] = float(np.mean([np.square(d).mean() for d in diffs]))
    best = min(mad.values())
    tied = sorted(
        (s for s in shifts if mad[s] <= best * (1 + TIE_RELATIVE) + TIE_GREY_LEVELS),
        key=lambda s: (abs(s), s),
    )
    chosen = tied[0]
    result.samples = len(picks)
    result.best_shift = chosen
    result.tied_shifts = tied
    result.mean_abs_diff = round(mad[chosen], 3)
    result.psnr_db = math.inf if mse[chosen] == 0 else 10 * math.log10(255**2 / mse[chosen])
    result.extra_at_start = chosen
    result.extra_at_end = total - meta.decoded_frames - chosen
    return result


def _official_count(official: Path) -> int:
    """:func:`count_frames` of ``official``; a tar that does not parse is a bad source
    (exit 3) naming it, never a traceback."""
    try:
        return count_frames(official)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise FramesSourceError(
            f"official frames that do not read as a tar ({type(exc).__name__}: {exc})",
            where=official,
            fix="download the video's frames again",
        ) from None


def compare_frames(
    store_root: str | Path,
    frames_root: str | Path,
    *,
    samples: int = DEFAULT_SAMPLES,
    max_shift: int = DEFAULT_MAX_SHIFT,
    on_video: Callable[[], None] | None = None,
) -> CompareReport:
    """Compare every video of the store decoded from its MP4 with the official frames of
    the same video under ``frames_root`` (``PXX/rgb_frames/PXX_YY.tar`` or folders)."""
    store = FrameStore(store_root)
    found = find_frames(frames_root)
    report = CompareReport(store=str(store_root), frames_root=str(frames_root), videos=[])
    try:
        for video_id in store.video_ids:
            if video_id not in found:
                report.not_compared[video_id] = "no official frames"
            elif store.manifest.planned_video(video_id).source_kind == SOURCE_FRAMES:
                report.not_compared[video_id] = "the store copied its official frames"
            elif store.modality == "flow":
                report.not_compared[video_id] = "a flow store: its official flow was copied"
            else:
                report.videos.append(
                    compare_video(
                        store, video_id, found[video_id], samples=samples, max_shift=max_shift
                    )
                )
            if on_video is not None:
                on_video()
    finally:
        store.close()
    return report


def _db(value: float | None) -> str | None:
    if value is None:
        return None
    return "inf" if math.isinf(value) else f"{value:.1f}"


def format_comparison(report: CompareReport) -> str:
    """Per video: best shift (ambiguous or not), difference, PSNR, frame counts and where
    the official frames' extra frames sit; then a summary line."""
    lines = [
        f"{'video':<9} {'shift':>5} {'match':<9} {'MAD':>6} {'PSNR dB':>7} {'store':>7} "
        f"{'official':>8} {'extra':>6} {'where':<14} verdict"
    ]
    for v in report.videos:
        diff = v.official_frames - v.store_frames
        if v.problem is not None:
            where, match = "-", "-"
        else:
            match = f"ambiguous {','.join(map(str, v.tied_shifts))}" if v.ambiguous else "unique"
            where = f"{v.extra_at_start} start, {v.extra_at_end} end"
        verdict = "ok" if v.ok else (v.problem or "MISMATCH")
        shift = "-" if v.best_shift is None else f"{v.best_shift:+d}"
        lines.append(
            f"{v.video_id:<9} {shift:>5} {match:<9} "
            f"{'-' if v.mean_abs_diff is None else f'{v.mean_abs_diff:.2f}':>6} "
            f"{_db(v.psnr_db) or '-':>7} {v.store_frames:>7,} {v.official_frames:>8,} {diff:>+6} "
            f"{where:<14} {verdict}"
        )
    bad = [v.video_id for v in report.videos if not v.ok]
    ambiguous = sum(v.ambiguous for v in report.videos)
    psnrs = [v.psnr_db for v in report.videos if v.psnr_db is not None]
    lines.append(
        f"compared {len(report.videos)} videos with the official frames in "
        f"{report.frames_root} ({len(report.not_compared)} not compared); "
        f"{len(report.videos) - len(bad)} match at shift 0 with PSNR >= {PSNR_THRESHOLD_DB:g} "
        f"dB (provisional), {ambiguous} ambiguous, lowest PSNR {_db(min(psnrs, default=None)) or '-'} dB"
        + (f"; MISMATCH: {', '.join(bad)}" if bad else "")
    )
    if not report.videos:
        lines.append("nothing compared: no video of the store decoded from MP4 has official frames")
    return "\n".join(lines)
