"""The recipes end to end on the mini-EPIC (CPU, small overrides), their precedence, and
the refusals of input they cannot serve."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from epicdata.errors import EpicInputError, ExitCode
from train.checkpoint import load_checkpoint
from train.cli import train_main, validate_main
from train.config import TrainConfig
from train.recipes import RECIPES, resolve_options

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "store-format-2"
#: Small enough for 2 CPU cores: a ResNet-50 step on 2 clips of 8 frames at 64 px is ~1 s.
SMALL = ["--crop-size", "64", "--batch-size", "2", "--epochs", "1", "--limit-batches", "2"]
SMALL += ["--workers", "0", "--weights", "none", "--log-every", "0", "--deterministic"]


def _train(store: Path, annotations: Path, out: Path, *extra: str):
    args = ["--store", store, "--annotations", annotations, "--output-dir", out, *extra]
    return CliRunner().invoke(train_main, [str(a) for a in args])


def _error_line(output: str) -> str:
    lines = [x for x in output.splitlines() if x.startswith("error:")]
    assert len(lines) == 1, output
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_each_recipe_trains_on_the_mini_epic_and_records_what_it_ran(recipe, mini_store, tmp_path):
    run = tmp_path / recipe
    result = _train(mini_store.store, mini_store.annotations, run, "--recipe", recipe, *SMALL)
    assert result.exit_code == 0, result.output
    config = yaml.safe_load((run / "config.yaml").read_text())
    expected = {**RECIPES[recipe].options, "recipe": recipe, "crop_size": 64, "batch_size": 2}
    expected |= {"epochs": 1, "weights": "none"}
    for key, value in expected.items():
        assert config[key] == value, key
    state = load_checkpoint(run / "last.pt")
    assert state["config"] == config and state["input_spec"]["clip_length"] == 8
    assert state["input_spec"]["crop_size"] == 64
    if recipe == "tsm-r50":
        assert "backbone.layer4.2.conv1.net.weight" in state["model"]
        out = tmp_path / "scored"
        args = ["--checkpoint", run / "last.pt", "--store", mini_store.store, "--workers", "0"]
        args += ["--annotations", mini_store.annotations, "--output-dir", out]
        args += ["--batch-size", "2", "--limit-batches", "1"]
        scored = CliRunner().invoke(validate_main, [str(a) for a in args])
        assert scored.exit_code == 0, scored.output
        assert (out / "metrics.json").exists()


def test_precedence_is_recipe_then_config_file_then_command_line():
    assert resolve_options({}, {})["recipe"] == "seed-r18"
    assert resolve_options({}, {"recipe": "tsn-r50"})["lr"] == 0.01
    assert resolve_options({"lr": 0.02}, {"recipe": "tsn-r50"})["lr"] == 0.02
    assert resolve_options({"lr": 0.02}, {"recipe": "tsn-r50", "lr": 0.03})["lr"] == 0.03
    from_file = resolve_options({"recipe": "tsn-r50"}, {})
    assert from_file["recipe"] == "tsn-r50" and from_file["arch"] == "resnet50"
    overridden = resolve_options({"recipe": "tsn-r50"}, {"recipe": "tsm-r50"})
    assert overridden["recipe"] == "tsm-r50" and overridden["temporal"] == "tsm"
    # The seed's recipe is the config's defaults: checkpoints of earlier releases (no
    # recipe fields) resume as what they were.
    defaults = TrainConfig(store="s", annotations="a", output_dir="o")
    seed = TrainConfig(store="s", annotations="a", output_dir="o", **resolve_options({}, {}))
    assert defaults == seed and RECIPES["seed-r18"].options == {}
    with pytest.raises(EpicInputError, match="unknown recipe 'tsn-r101'"):
        resolve_options({}, {"recipe": "tsn-r101"})


@pytest.mark.slow
def test_the_command_line_overrides_the_config_file_which_overrides_the_recipe(
    mini_store, tmp_path
):
    config = tmp_path / "defaults.yaml"
    config.write_text("recipe: tsn-r50\nlr: 0.02\nmomentum: 0.8\n")
    run = tmp_path / "run"
    args = ["--config", str(config), "--lr", "0.03", *SMALL, "--num-frames", "2"]
    result = _train(mini_store.store, mini_store.annotations, run, *args)
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["recipe"], saved["lr"], saved["momentum"]) == ("tsn-r50", 0.03, 0.8)
    assert (saved["optimizer"], saved["weight_decay"], saved["grad_clip"]) == ("sgd", 5e-4, 20.0)


@pytest.mark.slow
def test_a_recipe_the_store_cannot_serve_is_refused_before_any_step(tmp_path):
    # The fixture keeps only the linspace frames of 2-frame clips (--keep sampled).
    store = tmp_path / "store"
    shutil.copytree(FIXTURE, store)
    annotations = store / "annotations"
    result = _train(store, annotations, tmp_path / "run", "--recipe", "tsn-r50", *SMALL)
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    line = _error_line(result.output)
    assert "--keep sampled" in line and "recipe tsn-r50" in line and "--keep segments" in line
    assert "TSN sampling" in line and not (tmp_path / "run" / "last.pt").exists()
    seed = _train(store, annotations, tmp_path / "seed", "--num-frames", "4", *SMALL)
    assert seed.exit_code == ExitCode.BAD_INPUT, seed.output
    assert "ask for frames the store does not hold" in _error_line(seed.output)


@pytest.mark.slow
def test_an_unknown_recipe_or_bad_steps_exit_2_naming_the_choices(mini_store, tmp_path):
    result = _train(mini_store.store, mini_store.annotations, tmp_path / "r", "--recipe", "x")
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "seed-r18" in result.output and "tsm-r50" in result.output
    for steps in ("40,20", "x", "0,10"):
        args = ["--recipe", "tsn-r50", "--lr-steps", steps]
        result = _train(mini_store.store, mini_store.annotations, tmp_path / "r", *args)
        assert result.exit_code == ExitCode.BAD_INPUT, result.output
        assert "lr_steps" in _error_line(result.output) and "20,40" in result.output


@pytest.mark.slow
def test_tsm_r50_without_the_kinetics_file_names_it_and_the_login_node_command(
    mini_store, tmp_path, monkeypatch
):
    from train.weights import FETCH_KINETICS_COMMAND

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    args = ["--recipe", "tsm-r50", *SMALL[: SMALL.index("--weights")]]
    result = _train(mini_store.store, mini_store.annotations, tmp_path / "run", *args)
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert "TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e50.pth" in result.output
    assert FETCH_KINETICS_COMMAND in result.output
    assert not (tmp_path / "torch-home" / "hub").exists()  # nothing downloaded, no fallback
    assert not (tmp_path / "run" / "last.pt").exists()


def test_the_pipeline_plans_a_store_that_serves_the_recipe():
    from slurm.cli import _keep_for, _training_clip_length

    assert _keep_for("sampled", False, ("--recipe", "tsn-r50")) == "segments"
    assert _keep_for("sampled", False, ("--sampling", "tsn")) == "segments"
    assert _keep_for("sampled", False, ("--recipe", "seed-r18")) == "sampled"
    assert _keep_for("sampled", True, ("--recipe", "tsm-r50")) == "sampled"  # as asked
    assert _training_clip_length(("--recipe", "tsm-r50")) == (8,)
    assert _training_clip_length(("--recipe", "tsm-r50", "--num-frames", "16")) == (16,)


def test_the_sweep_and_the_pipeline_check_options_through_the_recipe(tmp_path):
    from slurm.pipeline import train_options
    from slurm.sweep import load_grid

    assert train_options(["--recipe", "tsn-r50", "--lr", "0.05"])["lr"] == 0.05
    with pytest.raises(EpicInputError, match="lr_steps"):
        train_options(["--recipe", "tsn-r50", "--lr-steps", "40,20"])
    grid = tmp_path / "grid.yaml"
    grid.write_text("recipe: [seed-r18, tsm-r50]\nlr: [0.01]\n")
    assert {run.options["recipe"] for run in load_grid(grid).runs} == {"seed-r18", "tsm-r50"}
    loaded = load_grid(grid)
    # The store check and the run status read the recipe's values: tsm-r50 samples with
    # tsn (a --keep sampled store cannot serve it) and trains 80 epochs.
    assert loaded.samplings == ["linspace", "tsn"] and loaded.clip_lengths == [8]
    assert {run.resolved().get("epochs", 30) for run in loaded.runs} == {30, 80}
    grid.write_text("fixed:\n  recipe: tsn-r50\n  lr_steps: '40,20'\nlr: [0.01]\n")
    with pytest.raises(EpicInputError, match="lr_steps"):
        load_grid(grid)
