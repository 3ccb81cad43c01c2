"""Training on train + validation for the final test-server submission (issue 24, item 2):
both splits' segments are trained on, no epoch is validated, last.pt (not a best.pt chosen
by validation) is what is saved, and the test split, or a schedule that needs validation, is
refused."""

from __future__ import annotations

import csv
import logging

import pytest
from click.testing import CliRunner

from epicdata.annotations import AnnotationDir, SegmentTable
from epicdata.errors import EpicInputError, ExitCode
from train.cli import train_main
from train.config import TrainConfig
from train.fit import fit

PATHS = dict(store="s", annotations="a", output_dir="o")


@pytest.mark.parametrize(
    "splits, scheduler, message",
    [
        ("train,test", "step", "the test split has no labels"),
        ("test", "step", "can never be trained on"),
        ("train,validation", "plateau", "--scheduler plateau steps on validation accuracy"),
        ("train,val", "step", "val is not a training split"),
        ("train,train", "step", "(twice) is not a training split"),
    ],
)
def test_training_splits_that_cannot_work_are_refused(splits, scheduler, message) -> None:
    with pytest.raises(EpicInputError) as caught:
        TrainConfig(**PATHS, train_split=splits, scheduler=scheduler)
    assert message in str(caught.value)
    assert caught.value.exit_code == ExitCode.BAD_INPUT


def test_the_plateau_refusal_names_the_alternatives() -> None:
    with pytest.raises(EpicInputError) as caught:
        TrainConfig(**PATHS, train_split="train,validation")
    assert "--scheduler step" in str(caught.value) and "--scheduler cosine" in str(caught.value)


def test_train_splits_is_an_option_of_epic_train(tmp_path) -> None:
    result = CliRunner().invoke(
        train_main,
        ["--store", str(tmp_path), "--annotations", str(tmp_path), "--output-dir",
         str(tmp_path / "run"), "--train-splits", "train,test"],
    )  # fmt: skip
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert "the test split has no labels" in result.output


@pytest.mark.slow
def test_joined_tables_keep_every_row_in_order(mini_epic) -> None:
    annotations = AnnotationDir(mini_epic.annotations_dir)
    train, val = annotations.table("train"), annotations.table("validation")
    both = SegmentTable.joined([train, val])
    assert both.split == "train+validation" and both.labelled
    assert both.narration_ids == train.narration_ids + val.narration_ids
    assert list(both.verb_classes) == list(train.verb_classes) + list(val.verb_classes)
    assert list(both.stop_frames) == list(train.stop_frames) + list(val.stop_frames)


@pytest.mark.slow
def test_a_train_plus_validation_run_trains_on_both_and_saves_no_best(
    fast_config, mini_store, tmp_path, caplog
) -> None:
    cfg = fast_config(
        tmp_path / "run",
        train_split="train,validation",
        scheduler="step",
        lr_steps="1",
        epochs=2,
        checkpoint_every=1,
        limit_batches=2,
    )
    assert not cfg.validates
    with caplog.at_level(logging.INFO):
        assert fit(cfg) == 0
    annotations = AnnotationDir(mini_store.annotations)
    both = len(annotations.table("train")) + len(annotations.table("validation"))
    text = caplog.text
    assert f"train {both} segments, no validation: 0 segments" in text
    assert "no validation (its split is trained on)" in text
    assert "last.pt is the model to submit" in text
    run = tmp_path / "run"
    assert (run / "last.pt").is_file() and (run / "epoch_002.pt").is_file()
    assert not (run / "best.pt").exists() and not (run / "best_metrics.json").exists()
    with open(run / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and not any(k.startswith("val_all") for k in rows[0])
    # The step schedule still steps once per epoch: lr x0.1 after epoch 1.
    assert float(rows[1]["lr"]) == pytest.approx(float(rows[0]["lr"]) * 0.1)


def test_a_pipeline_refuses_a_train_plus_validation_run_it_could_not_validate() -> None:
    from epicslurm.pipeline import train_options

    with pytest.raises(EpicInputError) as caught:
        train_options(["--train-splits", "train,validation", "--scheduler", "step"])
    assert "saves no best.pt" in str(caught.value) and "epic-slurm submit train" in str(
        caught.value
    )
    assert train_options(["--train-splits", "train"]) == {"train_split": "train"}
