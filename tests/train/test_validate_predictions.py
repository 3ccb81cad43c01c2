"""epic-validate on predictions files: official formats, coverage, challenge submission."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import torch
from click.testing import CliRunner

from epicdata.annotations import AnnotationDir
from train.cli import validate_main
from train.submission import save_predictions


def _random_predictions(ids, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(len(ids), 97)), rng.normal(size=(len(ids), 300)), ids


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
        submission = json.loads(archive.read("test.json"))
    assert submission["version"] == "0.2" and submission["challenge"] == "action_recognition"
    assert (submission["sls_pt"], submission["sls_tl"], submission["sls_td"]) == (1, 3, 3)
    results = submission["results"]
    assert set(results) == set(ids)
    assert all(len(r["verb"]) == 97 and len(r["noun"]) == 300 for r in results.values())
    assert set(results[ids[0]]["noun"]) == {str(i) for i in range(300)}


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
