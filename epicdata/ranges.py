"""Inclusive frame ranges ``(first, last)`` as the store records them: read from JSON,
expanded to frame numbers, described in error messages; and shard indices written as the
compact SLURM ``--array`` spec every resubmit line prints."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from epicdata.typed_json import short_json

Range = tuple[int, int]


def frames_in_ranges(ranges: Sequence[Range]) -> np.ndarray:
    """All frame numbers of inclusive ranges, ascending (the order checksums are stored in)."""
    if not ranges:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.arange(a, b + 1, dtype=np.int64) for a, b in ranges])


def ranges_from_json(value: Any, what: str) -> tuple[Range, ...] | None:
    """Inclusive frame ranges from JSON pairs (types already checked by
    :func:`epicdata.typed_json.checked_fields`): ascending and disjoint, from frame 1; a
    ValueError naming ``what`` otherwise."""
    if value is None:
        return None
    ranges = tuple((a, b) for a, b in value)
    previous_last = 0
    for first, last in ranges:
        if not previous_last < first <= last:
            raise ValueError(
                f"{what} {short_json(value)} are not ascending, disjoint [first, last] pairs of "
                f"frames from 1"
            )
        previous_last = last
    return ranges


def describe_ranges(ranges: Sequence[Range], limit: int = 6) -> str:
    """``1-50, 120-300, ...``: the first ``limit`` ranges and how many there are."""
    text = ", ".join(f"{a}-{b}" for a, b in ranges[:limit])
    return text + (f", ... ({len(ranges)} ranges)" if len(ranges) > limit else "")


def array_spec(indices: Sequence[int]) -> str:
    """``0,1,2,3,7`` -> ``0-3,7``: a SLURM ``--array`` spec for ``indices`` (sorted, each
    once). A list of 40 shards reads ``0-39``, not forty numbers a user must check."""
    parts: list[str] = []
    ordered = sorted(set(indices))
    start = 0
    for i, index in enumerate(ordered):
        if i + 1 < len(ordered) and ordered[i + 1] == index + 1:
            continue
        first = ordered[start]
        parts.append(str(index) if first == index else f"{first}-{index}")
        start = i + 1
    return ",".join(parts)
