"""``epic-validate --fuse``: late fusion of predictions files, checked against an
independent computation of the weighted mean and of the official metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from epicdata.annotations import AnnotationDir
from epicdata.errors import ExitCode
from train.cli import validate_main
from train.metrics import compute_metrics
from train.submission import load_predictions, save_predictions

#: Real-format annotation files of a small synthetic EPIC (checked in, read only).
ANNOTATIONS = Path(__file__).resolve().parents[1] / "fixtures" / "store-format-2" / "annotations"


def _predictions(path: Path, ids: list[str], seed: int, order: np.ndarray | None = None) -> Path:
    rng = np.random.default_rng(seed)
    verb = rng.normal(size=(len(ids), 97)).astype(np.float32)
    noun = rng.normal(size=(len(ids), 300)).astype(np.float32)
    order = np.arange(len(ids)) if order is None else order
    return save_predictions(path, verb[order], noun[order], [ids[i] for i in order])


def _validate(out: Path, *args: object) -> tuple[int, str]:
    words = ["--annotations", ANNOTATIONS, "--split", "validation", "--output-dir", out, *args]
    result = CliRunner().invoke(validate_main, [str(w) for w in words])
    return result.exit_code, result.output


def _official(verb: np.ndarray, noun: np.ndarray, ids: list[str]) -> dict[str, float]:
    annotations = AnnotationDir(ANNOTATIONS)
    table = annotations.table("validation")
    rows = [table.narration_ids.index(nid) for nid in ids]
    return compute_metrics(
        verb,
        noun,
        table.verb_classes[rows],
        table.noun_classes[rows],
        [table.participant_ids[i] for i in rows],
        tail_verbs=annotations.tail_verbs(),
        tail_nouns=annotations.tail_nouns(),
        unseen_participants=annotations.unseen_participants("validation"),
    )


def test_a_run_fused_with_itself_scores_exactly_as_the_run(tmp_path):
    ids = list(AnnotationDir(ANNOTATIONS).table("validation").narration_ids)
    run = _predictions(tmp_path / "run.pkl", ids, seed=0)
    code, output = _validate(tmp_path / "alone", "--predictions", run)
    assert code == 0, output
    code, output = _validate(tmp_path / "fused", "--fuse", run, run)
    assert code == 0, output
    alone = json.loads((tmp_path / "alone" / "metrics.json").read_text())
    fused = json.loads((tmp_path / "fused" / "metrics.json").read_text())
    assert fused == alone
    verb, noun, fused_ids = load_predictions(tmp_path / "fused" / "predictions.pkl")
    original = load_predictions(run)
    assert (
        fused_ids == ids and np.array_equal(verb, original[0]) and np.array_equal(noun, original[1])
    )


def test_weighted_fusion_of_files_in_different_orders_keeps_the_first_files_order(tmp_path):
    ids = list(AnnotationDir(ANNOTATIONS).table("validation").narration_ids)
    first_order = np.random.default_rng(1).permutation(len(ids))
    second_order = np.random.default_rng(2).permutation(len(ids))
    a = _predictions(tmp_path / "rgb.pkl", ids, seed=3, order=first_order)
    b = _predictions(tmp_path / "flow.pkl", ids, seed=4, order=second_order)
    code, output = _validate(tmp_path / "out", "--fuse", a, b, "--fuse-weights", "1,1.5")
    assert code == 0, output
    # Independently: align b's rows to a's by narration id, then the weighted mean.
    va, na, ia = load_predictions(a)
    vb, nb, ib = load_predictions(b)
    where = {nid: i for i, nid in enumerate(ib)}
    rows = [where[nid] for nid in ia]
    verb = (1.0 * va.astype(np.float64) + 1.5 * vb.astype(np.float64)[rows]) / 2.5
    noun = (1.0 * na.astype(np.float64) + 1.5 * nb.astype(np.float64)[rows]) / 2.5
    fused_verb, fused_noun, fused_ids = load_predictions(tmp_path / "out" / "predictions.pkl")
    assert fused_ids == ia  # the first file's row order: ties rank as in it
    assert np.allclose(fused_verb, verb, atol=1e-6) and np.allclose(fused_noun, noun, atol=1e-6)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    expected = _official(fused_verb, fused_noun, fused_ids)
    assert metrics == json.loads(json.dumps(expected))


def test_files_of_other_segments_or_bad_weights_are_refused(tmp_path):
    ids = list(AnnotationDir(ANNOTATIONS).table("validation").narration_ids)
    a = _predictions(tmp_path / "a.pkl", ids, seed=0)
    part = _predictions(tmp_path / "part.pkl", ids[:-3], seed=1)
    code, output = _validate(tmp_path / "o1", "--fuse", a, part)
    assert code == ExitCode.BAD_INPUT
    assert "3 missing" in output and str(part) in output
    for weights in ("1", "1,-1", "1,x", "1,nan"):
        code, output = _validate(tmp_path / "o2", "--fuse", a, a, "--fuse-weights", weights)
        assert code == ExitCode.BAD_INPUT and "--fuse-weights" in output, output
    verb, noun, _ = load_predictions(a)
    verb[5, 3] = np.nan
    nan = save_predictions(tmp_path / "nan.pkl", verb, noun, ids)
    code, output = _validate(tmp_path / "o5", "--fuse", a, nan)
    assert code == ExitCode.BAD_INPUT and "NaN or infinite" in output, output
    assert f"--fuse {nan}" in output and ids[5] in output
    assert not (tmp_path / "o5" / "predictions.pkl").exists()  # nothing fused is written
    code, output = _validate(tmp_path / "o3", "--fuse", a)
    assert code == ExitCode.BAD_INPUT and "two or more" in output
    code, output = _validate(tmp_path / "o4", "--fuse", a, a, "--predictions", a)
    assert code == ExitCode.BAD_INPUT and "exactly one of" in output
    assert not any((tmp_path / d / "metrics.json").exists() for d in ("o1", "o2", "o3", "o4", "o5"))
