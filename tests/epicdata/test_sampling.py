"""epicdata.sampling against independent oracles written from the definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from epicdata.sampling import (
    clamp_frames,
    count_in_ranges,
    frames_to_ranges,
    linspace_frames,
    merge_ranges,
    sampled_frames_to_keep,
    tsn_frames,
)

# ----------------------------------------------------------------------------- oracles


def linspace_oracle(start: int, stop: int, num: int) -> list[int]:
    """The seed's ``np.linspace(start, stop - 1, num, dtype=int)`` in plain Python floats
    (value k = k * step + start, the endpoint exact, then floor), kept inside the
    inclusive segment [start, stop] (a one-frame segment would otherwise reach start - 1)."""
    last = stop - 1
    if num == 1:
        values = [float(start)]
    else:
        step = (last - start) / (num - 1)
        values = [k * step + start for k in range(num - 1)] + [float(last)]
    return [min(max(math.floor(v), start), stop) for v in values]


def tsn_centre_oracle(start: int, stop: int, num: int) -> list[int]:
    """TSN's test indices (``int(tick / 2.0 + tick * x)``) over the inclusive segment."""
    tick = (stop - start + 1) / float(num)
    return [start + int(tick / 2.0 + tick * x) for x in range(num)]


def part_bounds(start: int, stop: int, num: int) -> list[tuple[int, int]]:
    """Frames of part i: those overlapping [i * L / num, (i + 1) * L / num), exactly."""
    length = stop - start + 1
    bounds = []
    for i in range(num):
        first = start + i * length // num
        last = start + -(-(i + 1) * length // num) - 1
        bounds.append((first, max(first, last)))
    return bounds


# ----------------------------------------------------------------------------- edge cases

EDGE_CASES = [
    pytest.param(1, 1, 8, id="one-frame-at-frame-1"),
    pytest.param(100, 100, 1, id="one-frame-num1"),
    pytest.param(500, 500, 16, id="one-frame-16"),
    pytest.param(10, 11, 8, id="two-frames"),
    pytest.param(66637, 66642, 8, id="P04_105_564-5-frames"),
    pytest.param(66637, 66642, 16, id="P04_105_564-16"),
    pytest.param(66637, 66642, 1, id="P04_105_564-num1"),
    pytest.param(1000, 1007, 8, id="exactly-8-frames"),
    pytest.param(1000, 1008, 8, id="9-frames"),
    pytest.param(1, 113, 8, id="P01_11_0"),
    pytest.param(93, 147, 1, id="num1"),
    pytest.param(1, 3, 99, id="float-step-1/49"),
    pytest.param(2949, 2949 + 8819, 8, id="longest-validation-8819"),
    pytest.param(2949, 2949 + 8819, 32, id="longest-validation-32"),
    pytest.param(1, 1_000_000, 8, id="1e6-frames"),
    pytest.param(7, 1_000_006, 64, id="1e6-frames-64"),
]


@pytest.mark.parametrize(("start", "stop", "num"), EDGE_CASES)
def test_linspace_matches_oracle(start: int, stop: int, num: int) -> None:
    got = linspace_frames(start, stop, num)
    assert got.shape == (num,) and got.dtype == np.int64
    assert got.tolist() == linspace_oracle(start, stop, num)


@pytest.mark.parametrize(("start", "stop", "num"), EDGE_CASES)
def test_linspace_stays_inside_the_segment_in_order(start: int, stop: int, num: int) -> None:
    got = linspace_frames(start, stop, num).tolist()
    assert got[0] == start
    assert all(start <= f <= stop for f in got)
    assert got == sorted(got)
    if num > 1 and stop > start:
        assert got[-1] == stop - 1
    if num <= stop - start:  # enough distinct frames in [start, stop - 1]: no repeats
        assert len(set(got)) == num


def test_linspace_one_frame_segment_stays_inside_the_segment_regression() -> None:
    """The seed's formula on start == stop runs back to start - 1: frame 0, which does not
    exist, for a one-frame segment at frame 1."""
    assert linspace_frames(1, 1, 8).tolist() == [1] * 8
    assert linspace_frames(10, 10, 3).tolist() == [10, 10, 10]


def test_linspace_short_segment_repeats_frames() -> None:
    got = linspace_frames(66637, 66642, 8).tolist()
    assert set(got) <= set(range(66637, 66642))
    assert len(got) == 8 and len(set(got)) == 5


@pytest.mark.parametrize(("start", "stop", "num"), EDGE_CASES)
def test_tsn_evaluation_centres_match_oracle(start: int, stop: int, num: int) -> None:
    got = tsn_frames(start, stop, num, training=False)
    assert got.dtype == np.int64
    assert got.tolist() == tsn_centre_oracle(start, stop, num)
    for frame, (first, last) in zip(got.tolist(), part_bounds(start, stop, num), strict=True):
        assert first <= frame <= last


@pytest.mark.parametrize(("start", "stop", "num"), EDGE_CASES)
def test_tsn_training_frames_inside_their_part_and_seeded(start: int, stop: int, num: int) -> None:
    bounds = part_bounds(start, stop, num)
    rng = np.random.default_rng(1234)
    draws = [tsn_frames(start, stop, num, training=True, rng=rng) for _ in range(50)]
    for got in draws:
        assert got.shape == (num,) and got.dtype == np.int64
        assert all(
            first <= f <= last for f, (first, last) in zip(got.tolist(), bounds, strict=True)
        )
        assert np.all(np.diff(got) >= 0)
    again = np.random.default_rng(1234)
    for got in draws:
        np.testing.assert_array_equal(tsn_frames(start, stop, num, training=True, rng=again), got)


def test_tsn_training_reaches_every_frame_of_every_part() -> None:
    start, stop, num = 101, 140, 8  # 40 frames, parts of 5
    rng = np.random.default_rng(0)
    seen = np.stack([tsn_frames(start, stop, num, training=True, rng=rng) for _ in range(400)])
    for i, (first, last) in enumerate(part_bounds(start, stop, num)):
        assert set(seen[:, i].tolist()) == set(range(first, last + 1))


def test_tsn_training_differs_between_seeds() -> None:
    a = tsn_frames(1, 8820, 8, training=True, rng=np.random.default_rng(1))
    b = tsn_frames(1, 8820, 8, training=True, rng=np.random.default_rng(2))
    assert not np.array_equal(a, b)


class _ExtremeRng:
    """Duck-typed generator whose uniform draws are all ``value``."""

    def __init__(self, value: float) -> None:
        self.value = value

    def random(self, size: int) -> np.ndarray:
        return np.full(size, self.value)


@pytest.mark.parametrize("value", [0.0, np.nextafter(1.0, 0.0)])
def test_tsn_training_frame_stays_in_its_part_at_extreme_draws_regression(value: float) -> None:
    """With a draw within an ulp of 1, start + u * part rounded up onto the next part's
    first frame (e.g. 6 frames in 3 parts: part 1 gave frame 4, part 2's first)."""
    for length in range(1, 120):
        for num in (1, 2, 3, 4, 6, 7, 8, 16, 29, 32):
            got = tsn_frames(1, length, num, training=True, rng=_ExtremeRng(value))
            bounds = part_bounds(1, length, num)
            assert all(a <= f <= b for f, (a, b) in zip(got.tolist(), bounds, strict=True)), (
                length,
                num,
            )


@pytest.mark.parametrize(
    "call",
    [
        lambda: linspace_frames(1, 10, 0),
        lambda: linspace_frames(10, 9, 8),
        lambda: tsn_frames(1, 10, 0, training=False),
        lambda: tsn_frames(10, 9, 8, training=False),
        lambda: tsn_frames(1, 10, 8, training=True),
    ],
    ids=["linspace-num0", "linspace-empty", "tsn-num0", "tsn-empty", "tsn-training-no-rng"],
)
def test_invalid_sampling_requests_are_rejected(call) -> None:
    with pytest.raises(ValueError):
        call()


# ----------------------------------------------------------------------------- clamping


@pytest.mark.parametrize(
    ("start", "stop", "num", "stored"),
    [
        (995, 1013, 8, 1000),  # segment ends 13 frames past the last stored frame
        (66637, 66642, 8, 66639),
        (1, 1, 8, 1),
        (1, 113, 8, 5000),  # nothing to clamp
        (2949, 2949 + 8819, 32, 10000),
    ],
)
def test_clamp_to_stored_frames_counts_what_moved(
    start: int, stop: int, num: int, stored: int
) -> None:
    for frames in (linspace_frames(start, stop, num), tsn_frames(start, stop, num, training=False)):
        clamped, moved = clamp_frames(frames, 1, stored)
        expected = [min(max(f, 1), stored) for f in frames.tolist()]
        assert clamped.tolist() == expected
        assert moved == sum(f > stored for f in frames.tolist())
        assert clamped.max() <= stored


def test_clamp_from_below_and_above() -> None:
    clamped, moved = clamp_frames(np.array([0, 1, 5, 11, 12]), 1, 10)
    assert clamped.tolist() == [1, 1, 5, 10, 10]
    assert moved == 3


# ----------------------------------------------------------------------------- keep list


@pytest.mark.parametrize(("start", "stop", "num"), EDGE_CASES)
def test_keep_list_covers_every_deterministic_frame(start: int, stop: int, num: int) -> None:
    lengths = sorted({1, num, 8, 16})
    keep = sampled_frames_to_keep(start, stop, lengths)
    expected: set[int] = set()
    for n in lengths:
        expected |= set(linspace_oracle(start, stop, n)) | set(tsn_centre_oracle(start, stop, n))
    assert keep.tolist() == sorted(expected)
    assert keep.dtype == np.int64


# ----------------------------------------------------------------------------- ranges


def _expand(ranges: list[tuple[int, int]]) -> list[int]:
    return [f for first, last in ranges for f in range(first, last + 1)]


def _well_formed(ranges: list[tuple[int, int]]) -> bool:
    """Sorted, non-empty, disjoint and not touching (a gap of at least one frame)."""
    return all(a <= b for a, b in ranges) and all(
        prev[1] + 1 < nxt[0] for prev, nxt in zip(ranges, ranges[1:], strict=False)
    )


def test_ranges_examples() -> None:
    assert frames_to_ranges([]) == []
    assert frames_to_ranges([5, 3, 4, 4, 10, 1]) == [(1, 1), (3, 5), (10, 10)]
    assert merge_ranges([(10, 12), (1, 3), (4, 5), (11, 20), (30, 30)]) == [
        (1, 5),
        (10, 20),
        (30, 30),
    ]
    assert merge_ranges([]) == []
    assert count_in_ranges([(1, 5), (10, 20)]) == 16


def test_ranges_round_trip_random_frame_sets() -> None:
    rng = np.random.default_rng(20240601)
    for _ in range(300):
        top = int(rng.integers(1, 400))
        frames = rng.integers(1, top + 1, size=int(rng.integers(0, 200)))
        unique = sorted(set(frames.tolist()))
        ranges = frames_to_ranges(frames)
        assert _well_formed(ranges)
        assert _expand(ranges) == unique
        assert count_in_ranges(ranges) == len(unique)
        assert merge_ranges(ranges) == ranges


def test_merge_ranges_is_the_union_random_ranges() -> None:
    rng = np.random.default_rng(7)
    for _ in range(300):
        firsts = rng.integers(1, 500, size=int(rng.integers(0, 30)))
        ranges = [(int(a), int(a + rng.integers(0, 40))) for a in firsts]
        union = sorted({f for a, b in ranges for f in range(a, b + 1)})
        merged = merge_ranges(ranges)
        assert _well_formed(merged)
        assert _expand(merged) == union
        assert count_in_ranges(merged) == len(union)
        assert merged == frames_to_ranges(union)


def test_keep_lists_of_many_segments_merge_into_ranges() -> None:
    """What a store does per video: union of the keep lists of overlapping segments."""
    rng = np.random.default_rng(3)
    segments = [(int(s), int(s + rng.integers(0, 300))) for s in rng.integers(1, 5000, 60)]
    keep = [sampled_frames_to_keep(a, b, (8, 16)) for a, b in segments]
    union = set(np.concatenate(keep).tolist())
    per_segment = merge_ranges(r for k in keep for r in frames_to_ranges(k))
    assert _expand(per_segment) == sorted(union)
