"""Official EPIC-100 metrics: identical to the official evaluator's computation (an oracle
that follows C1-Action-Recognition's evaluate.py and utils/ step by step), ties included;
close to a brute-force oracle of the definition; and on the real validation annotations."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from epicdata.annotations import AnnotationDir
from train.metrics import (
    PER_ROW_ACTION_KEY,
    action_scores,
    compute_metrics,
    count_underflowing,
    format_metrics_table,
)

V, N = 97, 300
TAIL_V, TAIL_N, UNSEEN = {3, 4, 5}, {5, 6, 7}, {"P03", "P04"}
OFFICIAL_KEYS = {
    *(f"all_{t}_accuracy_at_{k}" for t in ("verb", "noun", "action") for k in (1, 5)),
    *(f"{s}_{t}_accuracy_at_1" for s in ("tail", "unseen") for t in ("verb", "noun", "action")),
}


# --------------------------------------------------------------------------------- oracles
# The official computation, written from github.com/epic-kitchens/C1-Action-Recognition
# (evaluate.py main, utils/scoring.py, utils/metrics.py, scipy.special.softmax) with the same
# numpy calls in the same order, laid out as the official code lays it out: one
# (segments, 97 * 100) matrix rather than chunks, a Python dict per segment, boolean masks
# instead of pandas.


def _scipy_softmax(x: np.ndarray, axis: int | None) -> np.ndarray:
    x_max = np.amax(x, axis=axis, keepdims=True)
    exp_x_shifted = np.exp(x - x_max)
    return exp_x_shifted / np.sum(exp_x_shifted, axis=axis, keepdims=True)


def _official_top_scores(scores: np.ndarray, top_n: int) -> tuple[np.ndarray, np.ndarray]:
    top_idx = np.argsort(scores)[:, ::-1][:, :top_n]
    return top_idx, scores[np.arange(0, len(scores)).reshape(-1, 1), top_idx]


def _official_action_dicts(verb, noun, softmax_axis=None, top_n=100) -> list[dict]:
    """compute_action_scores, then evaluate.py's {action id: score} per segment."""
    top_verbs, top_verb_scores = _official_top_scores(verb, top_n)
    top_nouns, top_noun_scores = _official_top_scores(noun, top_n)
    verb_probs = _scipy_softmax(top_verb_scores, softmax_axis)
    noun_probs = _scipy_softmax(top_noun_scores, softmax_axis)
    matrix = verb_probs[:, :, np.newaxis] * noun_probs[:, np.newaxis, :]
    count = matrix.shape[0]
    pair_ranks = matrix.reshape(count, -1).argsort(axis=-1)[:, ::-1]
    verb_rank_idx, noun_rank_idx = np.unravel_index(pair_ranks[:, :top_n], shape=matrix.shape[1:])
    segments = np.arange(0, count).reshape(-1, 1)
    verbs = top_verbs[segments, verb_rank_idx]
    nouns = top_nouns[segments, noun_rank_idx]
    scores = matrix.reshape(count, -1)[segments, pair_ranks[:, :top_n]]
    return [
        {v * 1000 + n: s for v, n, s in zip(sv, sn, ss, strict=True)}
        for sv, sn, ss in zip(verbs, nouns, scores, strict=True)
    ]


def _official_dict_ranks(dicts: list[dict]) -> np.ndarray:
    ranks = []
    for scores in dicts:
        class_ids = np.array(list(scores.keys()))
        score_array = np.array([scores[c] for c in class_ids])
        ranks.append(class_ids[np.argsort(score_array)[::-1]])
    return np.array(ranks)


def _official_topk(rankings: np.ndarray, labels: np.ndarray, ks: tuple[int, ...]) -> list:
    tp = rankings[:, : max(ks)] == labels.reshape(-1, 1)
    return [tp[:, :k].max(1).mean() for k in ks]


def _official_metrics(verb, noun, verb_labels, noun_labels, participants, softmax_axis=None):
    """evaluate.py's printed dict (official keys, percent) for scores in file order."""
    ranks = {
        "verb": verb.argsort(axis=-1)[:, ::-1],
        "noun": noun.argsort(axis=-1)[:, ::-1],
        "action": _official_dict_ranks(_official_action_dicts(verb, noun, softmax_axis)),
    }
    labels = {"verb": verb_labels, "noun": noun_labels, "action": verb_labels * 1000 + noun_labels}
    accuracies = {"all": {t: _official_topk(ranks[t], labels[t], (1, 5)) for t in labels}}
    tail_verb, tail_noun = np.isin(verb_labels, list(TAIL_V)), np.isin(noun_labels, list(TAIL_N))
    tail = {"verb": tail_verb, "noun": tail_noun, "action": tail_verb | tail_noun}
    accuracies["tail"] = {
        t: _official_topk(ranks[t][m], labels[t][m], (1,)) for t, m in tail.items()
    }
    unseen = np.isin(np.asarray(participants), list(UNSEEN))
    if unseen.sum():
        accuracies["unseen"] = {
            t: _official_topk(ranks[t][unseen], labels[t][unseen], (1,)) for t in labels
        }
    return {
        f"{split}_{task}_accuracy_at_{k}": float(value * 100)
        for split, tasks in accuracies.items()
        for task in ("verb", "noun", "action")
        for k, value in zip((1, 5), tasks[task], strict=False)
    }


def _brute_force_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _brute_force_ranked_actions(verb: np.ndarray, noun: np.ndarray) -> list[int]:
    """The definition, per segment: every one of the 97 x 300 (verb, noun) pairs scored
    (softmax over each task's top 100; classes outside it get 0), sorted; no ties."""
    verb_prob = np.zeros(V)
    top_v = np.argsort(-verb)[:100]
    verb_prob[top_v] = _brute_force_softmax(verb[top_v])
    noun_prob = np.zeros(N)
    top_n = np.argsort(-noun)[:100]
    noun_prob[top_n] = _brute_force_softmax(noun[top_n])
    pairs = [(verb_prob[v] * noun_prob[n], v * 1000 + n) for v in range(V) for n in range(N)]
    pairs.sort(key=lambda p: -p[0])
    return [action for _, action in pairs]


# ------------------------------------------------------------------------------- helpers


def _labelled_logits(n: int, seed: int, spread: float = 2.0):
    """(verb (n, 97), noun (n, 300) float32, labels, participants): noisy logits with the
    true class boosted, so that top-1/top-5 hits happen often enough to matter."""
    rng = np.random.default_rng(seed)
    verb_labels = rng.integers(0, 12, n)
    noun_labels = rng.integers(0, 16, n)
    verb = rng.normal(size=(n, V)) * spread
    noun = rng.normal(size=(n, N)) * spread
    verb[np.arange(n), verb_labels] += rng.uniform(spread / 2, 4 * spread, n)
    noun[np.arange(n), noun_labels] += rng.uniform(spread / 2, 4 * spread, n)
    participants = [f"P{p:02d}" for p in rng.integers(1, 6, n)]
    return verb.astype(np.float32), noun.astype(np.float32), verb_labels, noun_labels, participants


def _metrics(verb, noun, verb_labels, noun_labels, participants) -> dict[str, float]:
    return compute_metrics(
        verb,
        noun,
        verb_labels,
        noun_labels,
        participants,
        tail_verbs=TAIL_V,
        tail_nouns=TAIL_N,
        unseen_participants=UNSEEN,
    )


def _tied_in_top5(scores: np.ndarray) -> int:
    """Segments with two equal scores among their best six: ties that top-1/top-5 see."""
    best = -np.sort(-scores, axis=1)[:, :6]  # (N, 6) descending
    return int((best[:, 1:] == best[:, :-1]).any(axis=1).sum())


def _assert_identical_to_official(verb, noun, verb_labels, noun_labels, participants):
    got = _metrics(verb, noun, verb_labels, noun_labels, participants)
    want = _official_metrics(verb, noun, verb_labels, noun_labels, participants)
    per_row = _official_metrics(verb, noun, verb_labels, noun_labels, participants, -1)
    assert set(want) == OFFICIAL_KEYS
    assert set(got) == OFFICIAL_KEYS | {PER_ROW_ACTION_KEY}
    assert {k: got[k] for k in want} == want  # equal, not close: same calls, same numbers
    assert got[PER_ROW_ACTION_KEY] == per_row["all_action_accuracy_at_1"]
    return got


# --------------------------------------------------------------------------------- tests

# 1100 segments: three ranking chunks of train.metrics, one softmax over all of them.
SEGMENTS = 1100


def test_tied_logits_give_the_official_numbers(caplog):
    verb, noun, *rest = _labelled_logits(SEGMENTS, seed=0)
    # Integer logits: nearly every segment has ties among its best scores.
    verb, noun = np.round(verb), np.round(noun)
    assert _tied_in_top5(verb) > SEGMENTS * 0.9 and _tied_in_top5(noun) > SEGMENTS * 0.9
    with caplog.at_level(logging.WARNING, logger="train.metrics"):
        got = _assert_identical_to_official(verb, noun, *rest)
    # Ties round differently under the two softmaxes: a different figure, no underflow.
    assert got[PER_ROW_ACTION_KEY] != got["all_action_accuracy_at_1"]
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "no segment underflows" in caplog.records[0].getMessage()
    assert 0 < got["all_action_accuracy_at_1"] < got["all_action_accuracy_at_5"] < 100


def test_bf16_rounded_logits_give_the_official_numbers():
    verb, noun, *rest = _labelled_logits(SEGMENTS, seed=1, spread=4.0)
    # What a bf16 model head emits: float32 logits rounded to 8 significant bits.
    verb = torch.from_numpy(verb).bfloat16().float().numpy()
    noun = torch.from_numpy(noun).bfloat16().float().numpy()
    assert _tied_in_top5(verb) > 100 and _tied_in_top5(noun) > 100
    _assert_identical_to_official(verb, noun, *rest)


def test_logits_rounded_to_a_tenth_give_the_official_numbers():
    verb, noun, *rest = _labelled_logits(SEGMENTS, seed=2)
    verb = np.round(verb, 1).astype(np.float32)
    noun = np.round(noun, 1).astype(np.float32)
    assert _tied_in_top5(verb) > SEGMENTS / 3 and _tied_in_top5(noun) > SEGMENTS / 3
    _assert_identical_to_official(verb, noun, *rest)


def test_wide_logit_range_reports_the_collapsed_official_action_accuracy_and_warns(caplog):
    verb, noun, *rest = _labelled_logits(SEGMENTS, seed=3)
    # Each segment's logits shifted by its own offset (max verb logit around 100): the
    # official single softmax over all segments underflows for the low ones.
    offset = np.random.default_rng(4).uniform(0, 95, (SEGMENTS, 1)).astype(np.float32)
    verb, noun = verb + offset, noun + offset
    assert 95 < verb.max() < 115
    with caplog.at_level(logging.WARNING, logger="train.metrics"):
        got = _assert_identical_to_official(verb, noun, *rest)
    official, per_row = got["all_action_accuracy_at_1"], got[PER_ROW_ACTION_KEY]
    assert per_row > 10 and official < 0.7 * per_row  # the collapse
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert f"{official:.4f}%" in text and f"{per_row:.4f}%" in text
    assert "challenge server" in text and f"here {count_underflowing(verb, noun)} segments" in text
    assert count_underflowing(verb, noun) > SEGMENTS / 4
    assert f"action@1 {per_row:.2f} with a softmax per segment" in format_metrics_table(got)


def test_no_warning_when_the_official_and_per_segment_figures_agree(caplog):
    verb, noun, *rest = _labelled_logits(300, seed=5)
    with caplog.at_level(logging.WARNING, logger="train.metrics"):
        got = _assert_identical_to_official(verb, noun, *rest)
    assert got[PER_ROW_ACTION_KEY] == got["all_action_accuracy_at_1"]
    assert not caplog.records
    assert "not official" not in format_metrics_table(got)
    assert count_underflowing(verb, noun) == 0


def test_metrics_are_close_to_brute_force_definition_on_random_logits():
    rng = np.random.default_rng(0)
    n = 40
    verb_labels = rng.integers(0, 6, n)
    noun_labels = rng.integers(0, 8, n)
    verb = rng.normal(size=(n, V)) * 2
    noun = rng.normal(size=(n, N)) * 2
    verb[np.arange(n), verb_labels] += rng.uniform(0, 4, n)
    noun[np.arange(n), noun_labels] += rng.uniform(0, 4, n)
    participants = [f"P{p:02d}" for p in rng.integers(1, 5, n)]
    got = _metrics(verb, noun, verb_labels, noun_labels, participants)
    hits = {}
    for i in range(n):
        ranked = {
            "verb": list(np.argsort(-verb[i])),
            "noun": list(np.argsort(-noun[i])),
            "action": _brute_force_ranked_actions(verb[i], noun[i]),
        }
        truth = {"verb": verb_labels[i], "noun": noun_labels[i]}
        truth["action"] = truth["verb"] * 1000 + truth["noun"]
        for task in ranked:
            for k in (1, 5):
                hits.setdefault((task, k), []).append(truth[task] in ranked[task][:k])
    for (task, k), task_hits in hits.items():
        assert got[f"all_{task}_accuracy_at_{k}"] == pytest.approx(100 * np.mean(task_hits))
    assert got[PER_ROW_ACTION_KEY] == pytest.approx(100 * np.mean(hits["action", 1]))
    tail_verb = [v in TAIL_V for v in verb_labels]
    chosen = [h for h, m in zip(hits["verb", 1], tail_verb, strict=True) if m]
    assert got["tail_verb_accuracy_at_1"] == pytest.approx(100 * np.mean(chosen))
    assert 0 < got["all_action_accuracy_at_1"] < got["all_action_accuracy_at_5"] < 100


@pytest.mark.parametrize("per_row_softmax", [False, True])
def test_action_scores_are_the_best_100_pairs_in_order(per_row_softmax):
    rng = np.random.default_rng(1)
    verb, noun = rng.normal(size=(3, V)), rng.normal(size=(3, N))
    ids, scores = action_scores(verb, noun, per_row_softmax=per_row_softmax)
    assert ids.shape == scores.shape == (3, 100) and ids.dtype == np.int64
    for i in range(3):
        assert list(ids[i]) == _brute_force_ranked_actions(verb[i], noun[i])[:100]
        assert np.all(np.diff(scores[i]) <= 0)


def test_non_finite_logits_are_refused():
    verb, noun, *rest = _labelled_logits(10, seed=6)
    verb[3, 4] = np.nan
    noun[5, :2] = np.inf
    with pytest.raises(ValueError, match="3 of the scores are NaN or infinite"):
        _metrics(verb, noun, *rest)


def test_tail_action_counts_segments_with_a_tail_verb_or_a_tail_noun():
    # Segment 0: tail verb only, right; 1: tail noun only, wrong; 2: neither, wrong.
    verb = np.zeros((3, V), np.float32)
    noun = np.zeros((3, N), np.float32)
    verb[0, 1], noun[0, 2] = 9, 9
    verb[1, 0], noun[1, 0] = 9, 9
    verb[2, 0], noun[2, 0] = 9, 9
    m = compute_metrics(
        verb,
        noun,
        np.array([1, 0, 2]),
        np.array([2, 5, 1]),
        ["P01", "P01", "P02"],
        tail_verbs={1},
        tail_nouns={5},
        unseen_participants={"P09"},
    )
    assert m["tail_verb_accuracy_at_1"] == 100.0  # segment 0 only
    assert m["tail_noun_accuracy_at_1"] == 0.0  # segment 1 only
    assert m["tail_action_accuracy_at_1"] == 50.0  # segments 0 and 1
    assert not any(k.startswith("unseen_") for k in m)  # none unseen: keys omitted, as official
    assert "all" in format_metrics_table(m) and "unseen" not in format_metrics_table(m)


@pytest.mark.slow
def test_real_validation_split_scores_9668_random_predictions(real_annotations):
    annotations = AnnotationDir(real_annotations)
    table = annotations.table("validation")
    assert len(table) == 9668
    unseen = annotations.unseen_participants("validation")
    assert sum(p in unseen for p in table.participant_ids) > 0
    rng = np.random.default_rng(0)
    metrics = compute_metrics(
        rng.normal(size=(len(table), V)).astype(np.float32),
        rng.normal(size=(len(table), N)).astype(np.float32),
        table.verb_classes,
        table.noun_classes,
        table.participant_ids,
        tail_verbs=annotations.tail_verbs(),
        tail_nouns=annotations.tail_nouns(),
        unseen_participants=unseen,
    )
    # all: 3 tasks x top-1/5; tail and unseen: 3 x top-1; and the per-segment action top-1.
    assert set(metrics) == OFFICIAL_KEYS | {PER_ROW_ACTION_KEY}
    assert all(math.isfinite(v) for v in metrics.values())
    # Random logits: about 1/97 verbs and 1/300 nouns right at top-1.
    assert metrics["all_verb_accuracy_at_1"] < 3
    assert metrics["all_noun_accuracy_at_1"] < 1.5
    assert metrics["unseen_action_accuracy_at_1"] < 1
