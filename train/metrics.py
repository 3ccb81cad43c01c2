"""EPIC-KITCHENS-100 action-recognition metrics, as the official evaluator computes them.

Reference: ``evaluate.py`` and ``utils/{scoring,metrics}.py`` of
github.com/epic-kitchens/C1-Action-Recognition:

- verb, noun and action top-1 / top-5 over all segments (micro: per segment);
- action scores: softmax over the top-100 verb logits and (separately) the top-100 noun
  logits, the product of every (verb, noun) pair of those, the best 100 pairs ranked;
  action id = verb * 1000 + noun;
- tail (top-1 only): verb accuracy over segments whose verb is a tail verb, noun accuracy
  over segments whose noun is a tail noun, action accuracy over segments whose verb is a
  tail verb OR whose noun is a tail noun;
- unseen (top-1 only): segments of participants in the unseen-participant list; the
  official evaluator omits the ``unseen_*`` keys when there are none, and so do we.

Keys are named as the official evaluator prints them, in percent:
``all_verb_accuracy_at_1`` ... ``tail_action_accuracy_at_1`` ... ``unseen_noun_accuracy_at_1``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
import torch

from epicdata.constants import ACTION_ID_BASE

TOP_N_ACTIONS = 100
_CHUNK = 512  # segments per action-score chunk: (512, 100, 100) floats = 20 MB


def action_scores(
    verb_logits: np.ndarray | torch.Tensor,
    noun_logits: np.ndarray | torch.Tensor,
    top_n: int = TOP_N_ACTIONS,
) -> tuple[np.ndarray, np.ndarray]:
    """Best ``top_n`` actions per segment, ranked, as the official ``compute_action_scores``.

    verb_logits (N, V), noun_logits (N, M) raw scores. Returns (action ids (N, top_n) int64,
    scores (N, top_n) float64), best first.
    """
    verbs = torch.as_tensor(verb_logits, dtype=torch.float64)  # (N, V)
    nouns = torch.as_tensor(noun_logits, dtype=torch.float64)  # (N, M)
    ids, scores = [], []
    for start in range(0, len(verbs), _CHUNK):
        v_logit, v_idx = verbs[start : start + _CHUNK].topk(min(top_n, verbs.shape[1]), dim=1)
        n_logit, n_idx = nouns[start : start + _CHUNK].topk(min(top_n, nouns.shape[1]), dim=1)
        pairs = v_logit.softmax(1)[:, :, None] * n_logit.softmax(1)[:, None, :]  # (n, kv, kn)
        best, flat = pairs.flatten(1).topk(min(top_n, pairs[0].numel()), dim=1)  # (n, top_n)
        verb = v_idx.gather(1, flat // n_idx.shape[1])
        noun = n_idx.gather(1, flat % n_idx.shape[1])
        ids.append(verb * ACTION_ID_BASE + noun)
        scores.append(best)
    return torch.cat(ids).numpy(), torch.cat(scores).numpy()


def _topk_hits(ranked: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """(N,) bool: the label is among the first k entries of each row of ``ranked``."""
    return (ranked[:, :k] == labels[:, None]).any(axis=1)


def _percent(hits: np.ndarray) -> float:
    return float(hits.mean() * 100.0)


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
    """Official EPIC-100 metrics in percent, for N segments in any order.

    verb_logits (N, 97), noun_logits (N, 300), labels (N,) int, participant_ids (N,).
    """
    verb_logits = torch.as_tensor(verb_logits, dtype=torch.float64)
    noun_logits = torch.as_tensor(noun_logits, dtype=torch.float64)
    verb_labels = np.asarray(verb_labels, dtype=np.int64)
    noun_labels = np.asarray(noun_labels, dtype=np.int64)
    if not len(verb_labels) == len(noun_labels) == len(verb_logits) == len(noun_logits):
        raise ValueError("logits and labels must have the same number of segments")
    if len(verb_labels) == 0:
        raise ValueError("need at least one segment to evaluate")
    action_labels = verb_labels * ACTION_ID_BASE + noun_labels
    ranked = {
        "verb": verb_logits.topk(5, dim=1).indices.numpy(),
        "noun": noun_logits.topk(5, dim=1).indices.numpy(),
        "action": action_scores(verb_logits, noun_logits)[0],
    }
    labels = {"verb": verb_labels, "noun": noun_labels, "action": action_labels}
    hits = {(task, k): _topk_hits(ranked[task], labels[task], k) for task in labels for k in (1, 5)}
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
    return metrics


def format_metrics_table(metrics: dict[str, float]) -> str:
    """Rows all/tail/unseen, columns verb/noun/action top-1 (and top-5 for ``all``)."""
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
    return "\n".join(lines)
