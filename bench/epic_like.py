"""EPIC-like synthetic inputs shared by the benchmarks: train annotations with segments
of realistic length, and the ffmpeg source whose 456x256 JPEGs are about the size of a
real kitchen frame's."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from epicdata.annotations import LABELLED_COLUMNS

RATE = 60


def grain_source(seed: int, rate: int = RATE) -> str:
    """An ffmpeg lavfi source of moving gradients with grain: through H.264 (crf 23) and
    then JPEG at the store's -q:v 4, its 456x256 frames are about 20 kB, a real kitchen
    frame's order of size."""
    return (
        f"gradients=size=456x256:rate={rate}:speed=0.02:seed={seed},"
        "noise=alls=2:allf=t+u,gblur=sigma=0.9"
    )


def timestamp(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours:02d}:{minutes:02d}:{secs:05.2f}"


def segment_rows(video_id: str, frames: int, rng: np.random.Generator) -> list[str]:
    """EPIC_100_train.csv rows of one video: segments of 1-4 s back to back with short gaps."""
    rows, start, n = [], 1, 0
    while True:
        length = int(rng.integers(RATE, 4 * RATE))
        stop = start + length
        if stop > frames:
            return rows
        verb, noun = int(rng.integers(0, 97)), int(rng.integers(0, 300))
        times = [timestamp((f - 1) / RATE) for f in (start, start, stop)]
        rows.append(
            f"{video_id}_{n},P01,{video_id},{times[0]},{times[1]},{times[2]},{start},{stop},"
            f"verb {verb} noun {noun},verb{verb},{verb},noun{noun},{noun},['noun{noun}'],[{noun}]"
        )
        start, n = stop + int(rng.integers(0, RATE // 2)), n + 1


def write_train_csv(folder: Path, videos: dict[str, int], seed: int = 0) -> Path:
    """``folder/EPIC_100_train.csv`` for ``videos`` (id -> frames)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = [row for vid, n in videos.items() for row in segment_rows(vid, n, rng)]
    path = folder / "EPIC_100_train.csv"
    path.write_text("\n".join([",".join(LABELLED_COLUMNS), *rows]) + "\n")
    return path
