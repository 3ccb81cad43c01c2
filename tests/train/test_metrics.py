"""Official EPIC-100 metrics against an independent brute-force oracle, and on the real
validation annotations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from epicdata.annotations import AnnotationDir
from train.metrics import action_scores, compute_metrics, format_metrics_table

V, N = 97, 300


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _oracle_ranked_actions(verb: np.ndarray, noun: np.ndarray) -> list[int]:
    """Every one of the 97 x 300 (verb, noun) pairs scored, sorted: no top-k shortcut.

    Per the official definition a class outside a task's top 100 logits gets no
    probability (the softmax runs over the top 100 only), so its pairs score 0.
    """
    verb_prob = np.zeros(V)
    top_v = np.argsort(-verb)[:100]
    verb_prob[top_v] = _softmax(verb[top_v])
    noun_prob = np.zeros(N)
    top_n = np.argsort(-noun)[:100]
    noun_prob[top_n] = _softmax(noun[top_n])
    pairs = [(verb_prob[v] * noun_prob[n], v * 1000 + n) for v in range(V) for n in range(N)]
    pairs.sort(key=lambda p: -p[0])
    return [action for _, action in pairs]


def _oracle_metrics(verb, noun, verb_labels, noun_labels, participants, tail_v, tail_n, unseen):
    hits = {}
    for i in range(len(verb)):
        ranked = {
            "verb": list(np.argsort(-verb[i])),
            "noun": list(np.argsort(-noun[i])),
            "action": _oracle_ranked_actions(verb[i], noun[i]),
        }
        truth = {
            "verb": verb_labels[i],
            "noun": noun_labels[i],
            "action": verb_labels[i] * 1000 + noun_labels[i],
        }
        for task in ranked:
            for k in (1, 5):
                hits.setdefault((task, k), []).append(truth[task] in ranked[task][:k])
    out = {f"all_{t}_accuracy_at_{k}": 100 * np.mean(h) for (t, k), h in hits.items()}
    subsets = {
        "tail_verb": [v in tail_v for v in verb_labels],
        "tail_noun": [n in tail_n for n in noun_labels],
        "tail_action": [
            v in tail_v or n in tail_n for v, n in zip(verb_labels, noun_labels, strict=True)
        ],
    }
    for task in ("verb", "noun", "action"):
        mask = subsets[f"tail_{task}"]
        chosen = [h for h, m in zip(hits[task, 1], mask, strict=True) if m]
        out[f"tail_{task}_accuracy_at_1"] = 100 * np.mean(chosen)
        chosen = [h for h, p in zip(hits[task, 1], participants, strict=True) if p in unseen]
        out[f"unseen_{task}_accuracy_at_1"] = 100 * np.mean(chosen)
    return out


def test_metrics_equal_brute_force_oracle_on_random_logits():
    rng = np.random.default_rng(0)
    n = 40
    # Few distinct labels and sharp logits so top-1/top-5 hits happen often enough to matter.
    verb_labels = rng.integers(0, 6, n)
    noun_labels = rng.integers(0, 8, n)
    verb = rng.normal(size=(n, V)) * 2
    noun = rng.normal(size=(n, N)) * 2
    verb[np.arange(n), verb_labels] += rng.uniform(0, 4, n)
    noun[np.arange(n), noun_labels] += rng.uniform(0, 4, n)
    participants = [f"P{p:02d}" for p in rng.integers(1, 5, n)]
    tail_v, tail_n, unseen = {3, 4, 5}, {5, 6, 7}, {"P03", "P04"}
    got = compute_metrics(
        verb,
        noun,
        verb_labels,
        noun_labels,
        participants,
        tail_verbs=tail_v,
        tail_nouns=tail_n,
        unseen_participants=unseen,
    )
    want = _oracle_metrics(
        verb, noun, verb_labels, noun_labels, participants, tail_v, tail_n, unseen
    )
    assert set(got) == set(want)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-9), key
    assert 0 < got["all_action_accuracy_at_1"] < got["all_action_accuracy_at_5"] < 100


def test_action_scores_are_the_best_100_pairs_in_order():
    rng = np.random.default_rng(1)
    verb, noun = rng.normal(size=(3, V)), rng.normal(size=(3, N))
    ids, scores = action_scores(verb, noun)
    assert ids.shape == scores.shape == (3, 100)
    for i in range(3):
        assert list(ids[i]) == _oracle_ranked_actions(verb[i], noun[i])[:100]
        assert np.all(np.diff(scores[i]) <= 0)


def test_tail_action_counts_segments_with_a_tail_verb_or_a_tail_noun():
    # Segment 0: tail verb only, right; 1: tail noun only, wrong; 2: neither, wrong.
    verb = np.zeros((3, V))
    noun = np.zeros((3, N))
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
    assert len(metrics) == 12  # all: 3 tasks x top-1/5; tail and unseen: 3 x top-1
    assert all(math.isfinite(v) for v in metrics.values())
    # Random logits: about 1/97 verbs and 1/300 nouns right at top-1.
    assert metrics["all_verb_accuracy_at_1"] < 3
    assert metrics["all_noun_accuracy_at_1"] < 1.5
    assert metrics["unseen_action_accuracy_at_1"] < 1
