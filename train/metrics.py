"""EPIC-KITCHENS-100 action-recognition metrics, computed exactly as the official evaluator.

Reference: ``evaluate.py``, ``utils/scoring.py`` and ``utils/metrics.py`` of
github.com/epic-kitchens/C1-Action-Recognition; the challenge server scores submissions with
the same code. Every step below makes the numpy call the official code makes, on arrays of
the same dtype (the scores' own, float32 for this project's predictions) and layout, in the
same order, so that on one machine both give identical numbers for any finite scores, ties
included:

- verb and noun ranks: ``scores.argsort(axis=-1)[:, ::-1]``. numpy's default sort is not
  stable and its order for tied scores depends on the numpy version and the CPU (SIMD sort
  kernels), so with ties the official figures themselves can move between machines;
- action scores (``compute_action_scores``): each task's top-100 classes from that same
  argsort, ONE softmax (``scipy.special.softmax``, axis=None) over the whole
  (segments x 100) matrix of top-100 scores of each task, the product of every
  (verb, noun) pair, the pairs ranked by argsort, the best 100 kept. ``evaluate.py`` then
  puts each segment's 100 actions in a ``{action: score}`` dict and ranks them again with
  ``np.argsort(scores)[::-1]``, which reorders ties; action id = verb * 1000 + noun;
- verb, noun and action top-1 / top-5 over all segments (micro: per segment);
- tail (top-1 only): verb accuracy over segments whose verb is a tail verb, noun accuracy
  over segments whose noun is a tail noun, action accuracy over segments whose verb is a
  tail verb OR whose noun is a tail noun;
- unseen (top-1 only): segments of participants in the unseen-participant list; the
  official evaluator omits the ``unseen_*`` keys when there are none, and so do we.

The single softmax over all segments is where the official figure can collapse: a segment
whose best verb and noun scores lie far below (about 100, in float32) the best of the whole
file gets action scores that underflow to 0, and its actions are then ranked in an arbitrary
order. :func:`compute_metrics` therefore also computes action top-1 with a softmax per
segment (``all_action_accuracy_at_1_per_row_softmax``, not an official key) and logs a
warning whenever the two differ.

Keys are named as the official evaluator prints them, in percent:
``all_verb_accuracy_at_1`` ... ``tail_action_accuracy_at_1`` ... ``unseen_noun_accuracy_at_1``.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence

import numpy as np
import torch

from epicdata.constants import ACTION_ID_BASE

log = logging.getLogger(__name__)

TOP_N_ACTIONS = 100
#: Not an official key: action top-1 with the softmax taken per segment, as intended.
PER_ROW_ACTION_KEY = "all_action_accuracy_at_1_per_row_softmax"
_CHUNK = 512  # segments per action-ranking chunk: (512, 97 * 100) float32 + int64 = 60 MB


def as_scores(logits: np.ndarray | torch.Tensor) -> np.ndarray:
    """(N, C) scores as the numpy array the official evaluator would compute on: numpy
    floating arrays as they are (their dtype sets the precision of its softmax), torch
    tensors as float32 (float64 kept), anything else as float64 (as scipy's softmax)."""
    if isinstance(logits, torch.Tensor):
        logits = logits.detach().cpu()
        return (logits if logits.dtype == torch.float64 else logits.float()).numpy()
    scores = np.asarray(logits)
    return scores if np.issubdtype(scores.dtype, np.floating) else scores.astype(np.float64)


def _ranks(scores: np.ndarray) -> np.ndarray:
    """(N, C) scores -> (N, C) classes, best first (official ``_scores_array_to_ranks``)."""
    return scores.argsort(axis=-1)[:, ::-1]


def _softmax(x: np.ndarray, axis: int | None) -> np.ndarray:
    """``scipy.special.softmax``, call for call; the official code uses axis=None."""
    x_max = np.amax(x, axis=axis, keepdims=True)
    exp_x_shifted = np.exp(x - x_max)
    return exp_x_shifted / np.sum(exp_x_shifted, axis=axis, keepdims=True)


def _action_scores(
    verb: np.ndarray,
    verb_ranks: np.ndarray,
    noun: np.ndarray,
    noun_ranks: np.ndarray,
    top_n: int,
    softmax_axis: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Official ``compute_action_scores`` and evaluate.py's per-segment re-ranking."""
    segments = np.arange(0, len(verb)).reshape(-1, 1)  # (N, 1)
    top_verbs, top_nouns = verb_ranks[:, :top_n], noun_ranks[:, :top_n]  # (N, kv), (N, kn)
    # The softmax must see the whole matrix (its max and sum are over every segment when
    # softmax_axis is None), so it runs before the chunking, which is per segment only.
    verb_probs = _softmax(verb[segments, top_verbs], softmax_axis)  # (N, kv)
    noun_probs = _softmax(noun[segments, top_nouns], softmax_axis)  # (N, kn)
    ids, scores = [], []
    for start in range(0, len(verb), _CHUNK):
        rows = slice(start, start + _CHUNK)
        probs = verb_probs[rows, :, np.newaxis] * noun_probs[rows, np.newaxis, :]  # (n, kv, kn)
        flat = probs.reshape(len(probs), -1)  # (n, kv * kn)
        best = flat.argsort(axis=-1)[:, ::-1][:, :top_n]  # (n, top_n) pair indices
        verb_idx, noun_idx = np.unravel_index(best, shape=probs.shape[1:])
        chunk = np.arange(0, len(probs)).reshape(-1, 1)
        action = (
            top_verbs[rows][chunk, verb_idx] * ACTION_ID_BASE + top_nouns[rows][chunk, noun_idx]
        )
        score = flat[chunk, best]  # (n, top_n)
        # evaluate.py keeps each segment's actions in a dict and ranks them again, one 1-D
        # argsort per segment; with tied scores that changes their order, so do the same.
        for segment_actions, segment_scores in zip(action, score, strict=True):
            order = np.argsort(segment_scores)[::-1]
            ids.append(segment_actions[order])
            scores.append(segment_scores[order])
    return np.array(ids), np.array(scores)


def action_scores(
    verb_logits: np.ndarray | torch.Tensor,
    noun_logits: np.ndarray | torch.Tensor,
    top_n: int = TOP_N_ACTIONS,
    *,
    per_row_softmax: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Best ``top_n`` actions per segment, ranked as the official evaluator ranks them.

    verb_logits (N, V), noun_logits (N, M) raw scores. Returns (action ids (N, top_n) int64,
    scores (N, top_n) in the scores' dtype), best first. ``per_row_softmax`` takes the
    softmax per segment instead of the official single one over all segments.
    """
    verb, noun = as_scores(verb_logits), as_scores(noun_logits)
    return _action_scores(
        verb, _ranks(verb), noun, _ranks(noun), top_n, -1 if per_row_softmax else None
    )


def count_underflowing(
    verb_logits: np.ndarray | torch.Tensor, noun_logits: np.ndarray | torch.Tensor
) -> int:
    """Segments whose best official action score underflows (0 or subnormal): the
    official evaluator ranks their actions in an arbitrary order."""
    verb, noun = as_scores(verb_logits), as_scores(noun_logits)
    segments = np.arange(0, len(verb)).reshape(-1, 1)
    verb_probs = _softmax(verb[segments, _ranks(verb)[:, :TOP_N_ACTIONS]], None)
    noun_probs = _softmax(noun[segments, _ranks(noun)[:, :TOP_N_ACTIONS]], None)
    best = verb_probs[:, 0] * noun_probs[:, 0]  # (N,) the largest product of each segment
    return int((best < np.finfo(best.dtype).tiny).sum())


def _hits(ranks: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """(N,) bool: the label is among the first k ranks (official ``topk_accuracy``)."""
    return (ranks[:, :k] == labels.reshape(-1, 1)).max(1)


def _percent(hits: np.ndarray) -> float:
    return float(hits.mean() * 100)


def compute_metrics(
    verb_logits: np.ndarray | torch.Tensor,
    noun_logits: np.ndarray | torch.Tensor,
    verb_labels: np.ndarray,
    noun_labels: np.ndarray,
    participant_ids: Sequence[str],
    *,
    tail_verbs: Collection[int],
    tail_nouns: Collection[int],
    unseen_participants: Collection[str],
) -> dict[str, float]:
    """Official EPIC-100 metrics in percent, plus ``all_action_accuracy_at_1_per_row_softmax``.

    verb_logits (N, 97), noun_logits (N, 300) finite scores in the order of the predictions
    file (the official single softmax sums over the segments in that order), labels (N,)
    int, participant_ids (N,). Logs a warning when the official action top-1 and the
    per-segment-softmax one differ.
    """
    verb, noun = as_scores(verb_logits), as_scores(noun_logits)
    verb_labels = np.asarray(verb_labels, dtype=np.int64)
    noun_labels = np.asarray(noun_labels, dtype=np.int64)
    if not len(verb_labels) == len(noun_labels) == len(verb) == len(noun):
        raise ValueError("logits and labels must have the same number of segments")
    if len(verb_labels) == 0:
        raise ValueError("need at least one segment to evaluate")
    nonfinite = int((~np.isfinite(verb)).sum() + (~np.isfinite(noun)).sum())
    if nonfinite:
        # epic-validate refuses such files earlier, naming the narration id
        # (train.submission.require_finite); NaN has no rank, so no metric means anything.
        raise ValueError(f"{nonfinite} of the scores are NaN or infinite")
    action_labels = verb_labels * ACTION_ID_BASE + noun_labels
    verb_ranks, noun_ranks = _ranks(verb), _ranks(noun)
    official, per_row = (
        _action_scores(verb, verb_ranks, noun, noun_ranks, TOP_N_ACTIONS, axis)[0]
        for axis in (None, -1)
    )
    ranks = {"verb": verb_ranks, "noun": noun_ranks, "action": official}
    labels = {"verb": verb_labels, "noun": noun_labels, "action": action_labels}
    hits = {(task, k): _hits(ranks[task], labels[task], k) for task in labels for k in (1, 5)}
    metrics = {f"all_{task}_accuracy_at_{k}": _percent(hits[task, k]) for task, k in hits}

    tail_verb = np.isin(verb_labels, list(tail_verbs))
    tail_noun = np.isin(noun_labels, list(tail_nouns))
    tail = {"verb": tail_verb, "noun": tail_noun, "action": tail_verb | tail_noun}
    for task, mask in tail.items():
        # An empty subset has no accuracy; NaN says so instead of a fake 0.
        metrics[f"tail_{task}_accuracy_at_1"] = (
            _percent(hits[task, 1][mask]) if mask.any() else float("nan")
        )
    unseen = np.isin(np.asarray(participant_ids), list(unseen_participants))
    if unseen.any():
        for task in labels:
            metrics[f"unseen_{task}_accuracy_at_1"] = _percent(hits[task, 1][unseen])
    metrics[PER_ROW_ACTION_KEY] = _percent(_hits(per_row, action_labels, 1))
    if metrics[PER_ROW_ACTION_KEY] != metrics["all_action_accuracy_at_1"]:
        _warn_softmax_difference(
            metrics["all_action_accuracy_at_1"],
            metrics[PER_ROW_ACTION_KEY],
            segments=len(verb),
            underflowing=count_underflowing(verb, noun),
        )
    return metrics


def _warn_softmax_difference(
    official: float, per_row: float, *, segments: int, underflowing: int
) -> None:
    figures = (
        f"official action top-1 is {official:.4f}% but {per_row:.4f}% with a softmax per "
        f"segment. The official evaluator takes ONE softmax over the top-100 verb (and noun) "
        f"scores of all {segments} segments together"
    )
    if underflowing:
        log.warning(
            "%s: here %d segments get action scores that underflow in it (0 or subnormal) and "
            "are ranked arbitrarily. The challenge server scores test.json with that code, so "
            "test logits like these get the official figure; shift each segment's logits so "
            "that their maximum is 0 (log-softmax does) before submitting to avoid the "
            "underflow.",
            figures,
            underflowing,
        )
    else:
        log.warning(
            "%s: no segment underflows in it, so the difference comes from tied or nearly tied "
            "action scores, which the two softmaxes round differently and numpy's sort orders "
            "arbitrarily. The official figure is what the challenge server would give.",
            figures,
        )


def format_metrics_table(metrics: dict[str, float]) -> str:
    """Rows all/tail/unseen, columns verb/noun/action top-1 (and top-5 for ``all``); a note
    under the table when the per-segment-softmax action top-1 differs from the official."""
    header = f"{'':8}{'verb@1':>9}{'verb@5':>9}{'noun@1':>9}{'noun@5':>9}{'action@1':>10}{'action@5':>10}"
    lines = [header]
    for split in ("all", "tail", "unseen"):
        if f"{split}_verb_accuracy_at_1" not in metrics:
            continue
        cells = []
        for task in ("verb", "noun", "action"):
            for k in (1, 5):
                value = metrics.get(f"{split}_{task}_accuracy_at_{k}")
                width = 10 if task == "action" else 9
                cells.append(f"{'-' if value is None else f'{value:.2f}':>{width}}")
        lines.append(f"{split:8}" + "".join(cells))
    per_row = metrics.get(PER_ROW_ACTION_KEY)
    if per_row is not None and per_row != metrics.get("all_action_accuracy_at_1"):
        lines.append(f"(not official: action@1 {per_row:.2f} with a softmax per segment)")
    return "\n".join(lines)
