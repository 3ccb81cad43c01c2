"""Which frame numbers a clip reads from a segment: pure functions, explicit generators.

Frame numbers are the 1-based numbers of :mod:`epicdata.frames`; ``start_frame`` and
``stop_frame`` are inclusive, as in the annotation files.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def linspace_frames(start_frame: int, stop_frame: int, num_frames: int) -> np.ndarray:
    """The seed's sampler: ``np.linspace(start_frame, stop_frame - 1, num_frames, dtype=int)``.

    Deterministic; used for training and evaluation by default. Segments shorter than
    ``num_frames`` repeat frames. Returns (num_frames,) int64 frame numbers.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if stop_frame < start_frame:
        raise ValueError(f"empty segment [{start_frame}, {stop_frame}]")
    frames = np.linspace(start_frame, stop_frame - 1, num_frames, dtype=int).astype(np.int64)
    # For a one-frame segment (start == stop) the seed's formula runs back to start - 1,
    # outside the segment (frame 0 when start is 1). The clip changes nothing for longer
    # segments, whose linspace stays within [start_frame, stop_frame - 1].
    return np.clip(frames, start_frame, stop_frame)


def tsn_frames(
    start_frame: int,
    stop_frame: int,
    num_frames: int,
    *,
    training: bool,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """TSN segment sampling over the inclusive range ``[start_frame, stop_frame]``.

    The range is cut into ``num_frames`` equal parts; training takes one uniformly random
    frame per part (``rng`` required), evaluation the centre of each part.
    Returns (num_frames,) int64 frame numbers, non-decreasing.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    length = stop_frame - start_frame + 1
    if length < 1:
        raise ValueError(f"empty segment [{start_frame}, {stop_frame}]")
    part = length / num_frames
    index = np.arange(num_frames, dtype=np.int64)
    starts = index * part
    if training:
        if rng is None:
            raise ValueError("tsn_frames(training=True) needs an explicit rng")
        offsets = starts + rng.random(num_frames) * part
    else:
        offsets = starts + part / 2
    # Part i covers [i * part, (i + 1) * part); in floats, starts + u * part can round up
    # onto the next part's first frame when u is within an ulp of 1. Bound each offset by
    # its part's first and last frame, computed exactly in integers.
    first = index * length // num_frames
    last = np.maximum(first, -(-(index + 1) * length // num_frames) - 1)
    offsets = np.clip(np.floor(offsets).astype(np.int64), first, last)
    return start_frame + offsets


def clamp_frames(frames: np.ndarray, first_frame: int, last_frame: int) -> tuple[np.ndarray, int]:
    """Clamp frame numbers into ``[first_frame, last_frame]``; returns (frames, how many moved)."""
    clamped = np.clip(frames, first_frame, last_frame)
    return clamped, int(np.count_nonzero(clamped != frames))


def sampled_frames_to_keep(
    start_frame: int, stop_frame: int, clip_lengths: Sequence[int]
) -> np.ndarray:
    """Every frame a deterministic reader may ask for: the linspace frames of each clip
    length plus the TSN evaluation centres. Sorted unique int64 frame numbers."""
    parts = []
    for num_frames in clip_lengths:
        parts.append(linspace_frames(start_frame, stop_frame, num_frames))
        parts.append(tsn_frames(start_frame, stop_frame, num_frames, training=False))
    return np.unique(np.concatenate(parts))


def frames_to_ranges(frames: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted frame numbers -> inclusive ranges ``[(first, last), ...]`` of consecutive runs."""
    ranges: list[tuple[int, int]] = []
    for frame in sorted(set(int(f) for f in frames)):
        if ranges and frame == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], frame)
        else:
            ranges.append((frame, frame))
    return ranges


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Union of inclusive ranges, sorted, with touching or overlapping ranges merged."""
    merged: list[tuple[int, int]] = []
    for first, last in sorted((int(a), int(b)) for a, b in ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def count_in_ranges(ranges: Iterable[tuple[int, int]]) -> int:
    """Number of frames in inclusive ranges (assumed disjoint)."""
    return sum(last - first + 1 for first, last in ranges)
