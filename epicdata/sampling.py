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


# ----------------------------------------------------------------------------- optical flow
# A flow store numbers its positions in flow-index space (epicdata.frames.flow_index): flow
# frame k of a video holds the (u, v) pair computed from RGB frame (k - 1) * stride + 1 and
# the frame ``dilation`` after it. A clip of a flow model is ``num_snippets`` snippets of
# ``stack`` consecutive flow frames; the snippet *starts* are what a sampler picks.


def flow_segment_range(
    start_frame: int, stop_frame: int, stride: int, flow_frames: int
) -> tuple[int, int]:
    """The inclusive flow-index range of the RGB segment ``[start_frame, stop_frame]``:
    ``flow_index(start)`` .. ``flow_index(stop)``, the stop cut at the video's last flow
    frame (flow is computed between frames, so the last RGB frames have none).

    Inclusive like our RGB ranges (C1's flow adapter reads ``range(start, stop)``, one flow
    frame less): flow frame ``flow_index(stop)`` starts at an RGB frame inside the segment.
    """
    first = (int(start_frame) - 1) // stride + 1
    last = min((int(stop_frame) - 1) // stride + 1, int(flow_frames))
    return min(first, max(1, last)), max(1, last)


def flow_snippet_starts(
    first: int,
    last: int,
    num_snippets: int,
    stack: int,
    *,
    sampler: str = "linspace",
    training: bool = False,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Snippet starts in the flow range ``[first, last]`` so that every snippet's ``stack``
    frames lie inside it: starts run over ``[first, last - stack + 1]`` (only ``first`` when
    the range is shorter than a stack). ``linspace``: evenly spaced over those starts, both
    ends included (the analogue of the RGB rule); ``tsn``: C1's TSN sampler over them (one
    random start per part when training, the part's centre otherwise). (num_snippets,)."""
    if stack < 1:
        raise ValueError(f"stack must be >= 1, got {stack}")
    last_start = max(first, last - stack + 1)
    if sampler == "linspace":
        if num_snippets < 1:
            raise ValueError(f"num_snippets must be >= 1, got {num_snippets}")
        return np.linspace(first, last_start, num_snippets, dtype=int).astype(np.int64)
    if sampler == "tsn":
        return tsn_frames(first, last_start, num_snippets, training=training, rng=rng)
    raise ValueError(f"sampler {sampler!r}: expected linspace or tsn")


def flow_snippet_frames(starts: np.ndarray, stack: int, flow_frames: int) -> np.ndarray:
    """The flow frames of snippets starting at ``starts``, snippet after snippet
    ((len(starts) * stack,)), clamped to the video's ``flow_frames`` (a segment shorter
    than a stack at the video's end repeats its last flow frame, as the RGB reader clamps)."""
    frames = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(stack, dtype=np.int64)
    return np.clip(frames.reshape(-1), 1, max(1, int(flow_frames)))


def sampled_flow_frames_to_keep(
    start_frame: int,
    stop_frame: int,
    clip_lengths: Sequence[int],
    stack: int,
    stride: int,
    flow_frames: int,
) -> np.ndarray:
    """Every flow frame a deterministic flow reader may ask for (the analogue of
    :func:`sampled_frames_to_keep`): the linspace snippets and the TSN evaluation snippets
    of each clip length, ``stack`` frames each. Sorted unique int64 flow frame numbers."""
    first, last = flow_segment_range(start_frame, stop_frame, stride, flow_frames)
    parts = []
    for num in clip_lengths:
        for sampler in ("linspace", "tsn"):
            starts = flow_snippet_starts(first, last, num, stack, sampler=sampler)
            parts.append(flow_snippet_frames(starts, stack, flow_frames))
    return np.unique(np.concatenate(parts))


# ----------------------------------------------------------------------------- test views
# Multi-view testing (``epic-validate --views CxK``): C temporal views of a segment, each a
# clip of the model's T frames. View 0 of C = 1 is always the evaluation rule above, so
# that ``--views 1x1`` reads exactly the frames of a plain evaluation.


def _check_view(view: int, num_views: int) -> None:
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    if not 0 <= view < num_views:
        raise ValueError(f"view must be in [0, {num_views}), got {view}")


def tsn_view_frames(
    start_frame: int, stop_frame: int, num_frames: int, *, view: int, num_views: int
) -> np.ndarray:
    """Temporal view ``view`` of ``num_views`` under TSN sampling: in each of the
    ``num_frames`` equal parts of ``[start_frame, stop_frame]``, the frame at fraction
    ``(view + 0.5) / num_views`` of the part; the views tile each part evenly.

    One view is :func:`tsn_frames`' evaluation rule itself (the part's centre, in its float
    arithmetic, so that one view reads exactly a plain evaluation's frames); several are
    computed exactly in integers: ``floor((2Ci + 2c + 1) L / 2TC)`` for part i of T, view
    c of C, a segment of L frames, which always lies inside part i.
    Returns (num_frames,) int64."""
    _check_view(view, num_views)
    if num_views == 1:
        return tsn_frames(start_frame, stop_frame, num_frames, training=False)
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    length = stop_frame - start_frame + 1
    if length < 1:
        raise ValueError(f"empty segment [{start_frame}, {stop_frame}]")
    index = np.arange(num_frames, dtype=np.int64)
    twice = 2 * num_frames * num_views
    return start_frame + ((2 * num_views * index + 2 * view + 1) * length) // twice


def interleaved_linspace(
    first: int, last: int, num: int, *, view: int, num_views: int
) -> np.ndarray:
    """View ``view`` of ``num_views`` of a linspace grid over ``[first, last]``: the points
    ``view, view + C, view + 2C, ...`` of ``np.linspace(first, last, num * C, dtype=int)``.

    Each view is a grid of ``num`` points shifted by ``view / C`` of its spacing; together
    the views are one evenly spaced grid of ``num * C`` points, both ends included, so no
    view leaves the range. One view is ``np.linspace(first, last, num, dtype=int)``
    itself (its float arithmetic: a plain evaluation's frames); several are computed
    exactly, point k at ``first + floor(k (last - first) / (num C - 1))``.
    Returns (num,) int64."""
    _check_view(view, num_views)
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    if num_views == 1:
        return np.linspace(first, last, num, dtype=int).astype(np.int64)
    points = view + num_views * np.arange(num, dtype=np.int64)  # k of the fine grid
    return first + (points * (last - first)) // (num * num_views - 1)


def linspace_view_frames(
    start_frame: int, stop_frame: int, num_frames: int, *, view: int, num_views: int
) -> np.ndarray:
    """Temporal view ``view`` of ``num_views`` under linspace sampling: the seed's grid
    ``[start_frame, stop_frame - 1]`` made ``num_frames * num_views`` points fine and dealt
    out view by view (:func:`interleaved_linspace`); clipped into the segment as
    :func:`linspace_frames` is. One view is exactly :func:`linspace_frames`.
    Returns (num_frames,) int64."""
    if stop_frame < start_frame:
        raise ValueError(f"empty segment [{start_frame}, {stop_frame}]")
    frames = interleaved_linspace(
        start_frame, stop_frame - 1, num_frames, view=view, num_views=num_views
    )
    return np.clip(frames, start_frame, stop_frame)


def flow_view_starts(
    first: int,
    last: int,
    num_snippets: int,
    stack: int,
    *,
    sampler: str,
    view: int,
    num_views: int,
) -> np.ndarray:
    """Snippet starts of temporal view ``view`` of ``num_views`` in the flow range
    ``[first, last]``: the view rules above over the valid starts
    ``[first, max(first, last - stack + 1)]`` (``tsn``: :func:`tsn_view_frames`;
    ``linspace``: :func:`interleaved_linspace`, both ends included as in
    :func:`flow_snippet_starts`). One view is exactly :func:`flow_snippet_starts`'
    evaluation rule. Returns (num_snippets,) int64."""
    if stack < 1:
        raise ValueError(f"stack must be >= 1, got {stack}")
    last_start = max(first, last - stack + 1)
    if sampler == "linspace":
        return interleaved_linspace(first, last_start, num_snippets, view=view, num_views=num_views)
    if sampler == "tsn":
        return tsn_view_frames(first, last_start, num_snippets, view=view, num_views=num_views)
    raise ValueError(f"sampler {sampler!r}: expected linspace or tsn")
