"""epic-validate on predictions files: official formats, coverage, non-finite scores,
challenge submission."""

from __future__ import annotations

import json
import logging
import pickle
import zipfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from epicdata.annotations import AnnotationDir
from train.cli import validate_main
from train.metrics import compute_metrics
from train.submission import load_predictions, make_submission, save_predictions


def _not_json(constant: str) -> None:
    raise AssertionError(f"{constant} is not strict JSON")


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def _random_predictions(ids, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(len(ids), 97)), rng.normal(size=(len(ids), 300)), ids


@pytest.mark.slow
def test_test_split_submission_has_every_narration_id_and_all_scores(real_annotations, tmp_path):
    ids = AnnotationDir(real_annotations).table("test").narration_ids
    assert len(ids) == 13092
    save_predictions(tmp_path / "preds.pkl", *_random_predictions(ids))
    args = ["--predictions", tmp_path / "preds.pkl", "--annotations", real_annotations]
    args += ["--split", "test", "--output-dir", tmp_path / "out"]
    result = CliRunner().invoke(validate_main, [str(a) for a in args])
    assert result.exit_code != 0 and "--sls-pt" in result.output  # levels are never guessed
    args += ["--sls-pt", "1", "--sls-tl", "3", "--sls-td", "3"]
    result = CliRunner().invoke(validate_main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    with zipfile.ZipFile(tmp_path / "out" / "submission.zip") as archive:
        assert archive.namelist() == ["test.json"]
        submission = json.loads(archive.read("test.json"), parse_constant=_not_json)
    assert submission["version"] == "0.2" and submission["challenge"] == "action_recognition"
    assert (submission["sls_pt"], submission["sls_tl"], submission["sls_td"]) == (1, 3, 3)
    results = submission["results"]
    assert set(results) == set(ids)
    assert all(len(r["verb"]) == 97 and len(r["noun"]) == 300 for r in results.values())
    assert set(results[ids[0]]["noun"]) == {str(i) for i in range(300)}


@pytest.mark.slow
def test_partial_predictions_are_refused_unless_allowed(real_annotations, tmp_path):
    ids = AnnotationDir(real_annotations).table("validation").narration_ids
    verb, noun, _ = _random_predictions(ids)
    # The official list format in a .pt file, missing the last 100 segments.
    entries = [
        {"verb_output": torch.tensor(v), "noun_output": torch.tensor(n), "narration_id": i}
        for v, n, i in zip(verb[:-100], noun[:-100], ids[:-100], strict=True)
    ]
    torch.save(entries, tmp_path / "preds.pt")
    args = ["--predictions", tmp_path / "preds.pt", "--annotations", real_annotations]
    args += ["--output-dir", tmp_path / "out"]
    result = CliRunner().invoke(validate_main, [str(a) for a in args])
    assert result.exit_code != 0
    assert "covers 9568 of the 9668" in result.output and "100 missing" in result.output
    result = CliRunner().invoke(validate_main, [str(a) for a in args + ["--allow-partial"]])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(metrics) >= {
        "all_action_accuracy_at_5",
        "tail_noun_accuracy_at_1",
        "unseen_verb_accuracy_at_1",
    }
    assert "action@1" in result.output  # the printed table


@pytest.mark.slow
def test_predictions_file_is_scored_as_read_in_its_order_and_dtype(real_annotations, tmp_path):
    # bf16-rounded float32 scores (many ties), 1000 segments in shuffled order: the official
    # evaluator ranks and softmaxes them in file order, as float32; metrics.json must agree.
    annotations = AnnotationDir(real_annotations)
    table = annotations.table("validation")
    rows = np.random.default_rng(3).permutation(len(table))[:1000]
    verb, noun, ids = _random_predictions([table.narration_ids[i] for i in rows], seed=3)
    verb = torch.from_numpy(verb).bfloat16().float().numpy()
    noun = torch.from_numpy(noun).bfloat16().float().numpy()
    save_predictions(tmp_path / "preds.pkl", verb, noun, ids)
    args = ["--predictions", tmp_path / "preds.pkl", "--annotations", real_annotations]
    args += ["--output-dir", tmp_path / "out", "--allow-partial"]
    result = CliRunner().invoke(validate_main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    want = compute_metrics(
        verb,
        noun,
        table.verb_classes[rows],
        table.noun_classes[rows],
        [table.participant_ids[i] for i in rows],
        tail_verbs=annotations.tail_verbs(),
        tail_nouns=annotations.tail_nouns(),
        unseen_participants=annotations.unseen_participants("validation"),
    )
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == want


def test_float64_predictions_are_scored_in_float64(real_annotations, tmp_path):
    # The official evaluator computes in the dtype it reads; float32 would tie these scores.
    ids = AnnotationDir(real_annotations).table("validation").narration_ids[:50]
    verb, noun, _ = _random_predictions(ids, seed=4)
    verb[:, 1] = verb[:, 0] + 1e-12  # distinct in float64, equal in float32
    with open(tmp_path / "preds.pkl", "wb") as handle:
        pickle.dump({"verb_output": verb, "noun_output": noun, "narration_id": ids}, handle)
    loaded_verb, loaded_noun, loaded_ids = load_predictions(tmp_path / "preds.pkl")
    assert loaded_verb.dtype == loaded_noun.dtype == np.float64
    assert np.array_equal(loaded_verb, verb) and loaded_ids == ids
    assert (loaded_verb[:, 1] != loaded_verb[:, 0]).all()


@pytest.mark.parametrize("split", ["validation", "test"])
def test_nan_or_infinite_scores_are_refused_with_the_first_narration_id(
    real_annotations, tmp_path, split
):
    ids = AnnotationDir(real_annotations).table(split).narration_ids[:200]
    verb, noun, _ = _random_predictions(ids)
    verb[17, 3] = np.nan  # one NaN verb column entry: silently scored 0.00 action@1 before
    noun[40, :] = np.inf
    verb[150, :2] = -np.inf
    save_predictions(tmp_path / "preds.pkl", verb, noun, ids)
    args = ["--predictions", tmp_path / "preds.pkl", "--annotations", real_annotations]
    args += ["--split", split, "--output-dir", tmp_path / "out", "--allow-partial"]
    args += ["--sls-pt", "1", "--sls-tl", "3", "--sls-td", "3"]
    result = CliRunner().invoke(validate_main, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    errors = _error_lines(result.output)
    assert len(errors) == 1 and "Traceback" not in result.output
    assert "303 of the 79,400 scores are NaN or infinite" in errors[0]
    assert f"3 segment(s), the first narration id {ids[17]}" in errors[0]
    assert str(tmp_path / "preds.pkl") in errors[0]
    assert not (tmp_path / "out" / "metrics.json").exists()
    assert not (tmp_path / "out" / "submission.zip").exists()


def test_submission_warns_when_the_official_softmax_would_underflow(caplog):
    rng = np.random.default_rng(5)
    verb, noun = rng.normal(size=(20, 97)), rng.normal(size=(20, 300))
    ids = [f"P01_101_{i}" for i in range(20)]
    with caplog.at_level(logging.WARNING, logger="train.submission"):
        make_submission(verb, noun, ids, sls_pt=1, sls_tl=3, sls_td=3)
    assert not caplog.records
    # float32 logits of segments 0-9 about 100 above those of 10-19: the single softmax over
    # every segment underflows for the low ten.
    offset = np.where(np.arange(20) < 10, 100.0, 0.0)[:, None]
    verb, noun = (verb + offset).astype(np.float32), (noun + offset).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="train.submission"):
        submission = make_submission(verb, noun, ids, sls_pt=1, sls_tl=3, sls_td=3)
    assert len(caplog.records) == 1
    assert caplog.records[0].getMessage().startswith("10 of the 20 segments")
    assert set(submission["results"]) == set(ids)
