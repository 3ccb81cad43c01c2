"""Late fusion of prediction files: two streams (RGB + flow), or an ensemble of runs.

``epic-validate --fuse A.pkl B.pkl [--fuse-weights 1,1.5]`` reads each file as
``--predictions`` does (the official formats, by the restricted unpickler), checks that
every file covers the same narration ids, and averages the pre-softmax scores,
``sum(w_i * s_i) / sum(w_i)`` per class, in float64. The first file's row order is kept:
the official metrics break ties by row order, so the fused file must not reorder them.
C1's ``src/fuse.py`` averages with equal weights after sorting by narration id; equal
weights here give its scores, in the first file's order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from epicdata.errors import EpicInputError
from train.submission import load_predictions, require_finite


def parse_fuse_weights(text: str | None, count: int) -> list[float]:
    """``--fuse-weights`` ("1,1.5") as one positive finite weight per file; None: all 1."""
    if text is None:
        return [1.0] * count
    try:
        weights = [float(part) for part in text.split(",")]
    except ValueError:
        weights = []
    if len(weights) != count or not all(np.isfinite(w) and w > 0 for w in weights):
        raise EpicInputError(
            f"--fuse-weights {text}: expected {count} positive numbers separated by commas, "
            f"one per --fuse file",
            fix=f"e.g. --fuse-weights {','.join(['1'] * count)}",
        )
    return weights


def fuse_predictions(
    paths: Sequence[str | Path], weights: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(verb (N, 97), noun (N, 300) float64 fused scores, the first file's narration ids).

    Refuses (exit 2) fewer than two files, a file with a score that is not finite, or a
    file whose narration ids are not the first file's (named: how many differ and one)."""
    if len(paths) < 2:
        raise EpicInputError(
            f"--fuse needs two or more predictions files, got {len(paths)}",
            fix="pass --fuse A.pkl B.pkl (the streams or runs to fuse)",
        )
    loaded = [load_predictions(path) for path in paths]
    for path, (verb_i, noun_i, ids) in zip(paths, loaded, strict=True):
        # Named here, by the file it is in: NaN would spread to every fused row it meets.
        require_finite(verb_i, noun_i, ids, source=f"--fuse {path}")
    first_ids = loaded[0][2]
    row_of = {nid: i for i, nid in enumerate(first_ids)}
    verb = np.zeros(loaded[0][0].shape, dtype=np.float64)
    noun = np.zeros(loaded[0][1].shape, dtype=np.float64)
    for path, weight, (verb_i, noun_i, ids) in zip(paths, weights, loaded, strict=True):
        order = _rows_in_first_order(ids, row_of, path=path, first=paths[0])
        verb += weight * np.asarray(verb_i, dtype=np.float64)[order]
        noun += weight * np.asarray(noun_i, dtype=np.float64)[order]
    total = float(sum(weights))
    return verb / total, noun / total, list(first_ids)


def _rows_in_first_order(
    ids: Sequence[str], row_of: dict[str, int], *, path: str | Path, first: str | Path
) -> np.ndarray:
    """The permutation that puts ``ids``' rows in the first file's order."""
    present = set(ids)
    missing = [nid for nid in row_of if nid not in present]
    extra = [nid for nid in ids if nid not in row_of]
    if missing or extra or len(ids) != len(row_of):
        example = (missing or extra or ["(a repeated id)"])[0]
        raise EpicInputError(
            f"--fuse {path}: its narration ids are not those of {first} ({len(missing)} "
            f"missing, {len(extra)} not in it, e.g. {example})",
            fix="fuse predictions of the same split, each over every segment (the same "
            "--split and no --limit-batches)",
        )
    position = {nid: i for i, nid in enumerate(ids)}
    return np.array([position[nid] for nid in row_of], dtype=np.int64)
