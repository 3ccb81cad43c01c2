"""The recipes (train.recipes): each trains on the mini-EPIC and records itself, their
precedence under --config and the command line, and the input they refuse (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from epicdata.errors import EpicInputError, ExitCode
from epicslurm.pipeline import run_pipeline, train_options
from epicslurm.site import SCRIPTS, load_site
from epicslurm.sweep import load_grid
from train.checkpoint import load_checkpoint
from train.cli import train_main, validate_main
from train.model import ActionModel
from train.recipes import RECIPES, resolve_options
from train.weights import FETCH_KINETICS_COMMAND, KINETICS_TSM_URL

#: C1's configs/tsn_rgb.yaml and tsm_rgb.yaml (commit e8e1a791944305c33adef09a966c51c0dfef0d38),
#: read by hand: what config.yaml must record for each recipe (options not overridden).
C1_VALUES = {
    "arch": "resnet50",
    "partial_bn": True,
    "optimizer": "sgd",
    "lr": 0.01,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "grad_clip": 20.0,
    "scheduler": "step",
    "lr_steps": "20,40",
    "lr_gamma": 0.1,
    "dropout": 0.7,
    "num_frames": 8,
}
EXPECTED = {
    "seed-r18": {"arch": "resnet18", "temporal": "avg", "optimizer": "adamw", "lr": 1e-4},
    "tsn-r50": {**C1_VALUES, "temporal": "avg"},
    "tsm-r50": {**C1_VALUES, "temporal": "tsm"},
}


def _args(mini_store, out: Path, fast_options: dict, *words: str, **options) -> list[str]:
    """epic-train's words: the store, the run folder, FAST's speed settings (not its lr,
    batch size or clip length, which the recipes set) with batch 2, and ``words``."""
    speed = {k: v for k, v in fast_options.items() if k not in ("lr", "num_frames", "batch_size")}
    speed.update(batch_size=2, epochs=1, limit_batches=1, **options)
    args = ["--store", mini_store.store, "--annotations", mini_store.annotations]
    args += ["--output-dir", out]
    for key, value in speed.items():
        flag = "--" + key.replace("_", "-")
        args += [flag] if value is True else [flag, value]
    return [str(a) for a in [*args, *words]]


def _error_line(output: str) -> str:
    (line,) = [x for x in output.splitlines() if x.startswith("error:")]
    return line


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["seed-r18", "tsn-r50", "tsm-r50"])
def test_each_recipe_trains_and_records_itself(
    recipe: str, mini_store, fast_options, tmp_path
) -> None:
    run = tmp_path / "run"
    args = _args(mini_store, run, fast_options, "--recipe", recipe)
    result = CliRunner().invoke(train_main, args)
    assert result.exit_code == 0, result.output
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["recipe"] == recipe and config["epochs"] == 1 and config["batch_size"] == 2
    assert config["crop_size"] == 64 and config["weights"] == "none"
    for key, value in EXPECTED[recipe].items():
        if not (recipe == "seed-r18" and key == "num_frames"):
            assert config[key] == value, key
    for name in ("best.pt", "last.pt"):
        state = load_checkpoint(run / name)
        assert state["config"]["recipe"] == recipe
        model = ActionModel(**{k: config[k] for k in ("arch", "temporal", "num_frames")})
        model.load_state_dict(state["model"])  # strict: the recipe's architecture
    if recipe == "tsm-r50":
        assert "backbone.layer4.2.conv1.net.weight" in state["model"]
        out = tmp_path / "val"
        args = ["--checkpoint", run / "best.pt", "--store", mini_store.store]
        args += ["--annotations", mini_store.annotations, "--output-dir", out]
        args += ["--limit-batches", "1", "--batch-size", "2", "--workers", "0"]
        result = CliRunner().invoke(validate_main, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        assert "EPIC-100 validation metrics" in result.output
        assert (out / "metrics.json").is_file()


# ----------------------------------------------------------------------------- precedence


@pytest.mark.parametrize(
    ("file_values", "command_line", "expected"),
    [
        ({}, {"recipe": "tsn-r50"}, {"lr": 0.01, "arch": "resnet50", "recipe": "tsn-r50"}),
        ({"lr": 0.02}, {"recipe": "tsn-r50"}, {"lr": 0.02, "optimizer": "sgd"}),
        ({"lr": 0.02}, {"recipe": "tsn-r50", "lr": 0.03}, {"lr": 0.03, "optimizer": "sgd"}),
        ({"recipe": "tsn-r50"}, {}, {"recipe": "tsn-r50", "arch": "resnet50", "lr": 0.01}),
        (
            {"recipe": "tsn-r50", "lr": 0.02, "batch_size": 16},
            {"recipe": "tsm-r50"},
            {"recipe": "tsm-r50", "temporal": "tsm", "lr": 0.02, "batch_size": 16},
        ),
        ({}, {}, {"recipe": "seed-r18"}),
        ({"recipe": "tsm-r50"}, {"recipe": "seed-r18"}, {"recipe": "seed-r18"}),
    ],
)
def test_recipe_under_config_under_command_line(file_values, command_line, expected) -> None:
    resolved = resolve_options(file_values, command_line)
    assert {k: resolved.get(k) for k in expected} == expected
    if resolved["recipe"] == "seed-r18":  # the seed's recipe is TrainConfig's defaults
        assert "arch" not in resolved and "optimizer" not in resolved


def test_recipe_options_match_c1_s_configs() -> None:
    for name in ("tsn-r50", "tsm-r50"):
        options = RECIPES[name].options
        assert {k: options[k] for k in EXPECTED[name]} == EXPECTED[name]
    assert RECIPES["tsn-r50"].options["batch_size"] == 128  # tsn_rgb.yaml learning
    assert RECIPES["tsm-r50"].options["batch_size"] == 64  # tsm_rgb.yaml learning
    assert RECIPES["tsm-r50"].options["weights"] == "kinetics"  # model.pretrained
    assert RECIPES["tsn-r50"].options["weights"] == "imagenet"


@pytest.mark.slow
def test_the_command_line_resolves_recipe_config_and_options_in_that_order(
    mini_store, fast_options, tmp_path
) -> None:
    config = tmp_path / "defaults.yaml"
    config.write_text("recipe: tsn-r50\nlr: 0.02\noptimizer: adamw\n")
    run = tmp_path / "run"
    args = _args(mini_store, run, fast_options, "--config", str(config), "--lr", "0.03")
    result = CliRunner().invoke(train_main, [*args, "--dry-run"])
    assert result.exit_code == 0, result.output
    # The log (stderr: epic-train configures logging itself, so caplog sees none of it).
    (line,) = [x for x in result.output.splitlines() if "train.fit: recipe " in x]
    # The YAML's recipe, the YAML's optimizer over the recipe's, the command line's lr.
    assert "train.fit: recipe tsn-r50 " in line
    assert "resnet50 avg, partial BN, adamw lr 0.03, step schedule, 8 frames" in line
    assert not (run / "config.yaml").exists()  # a dry run writes nothing


# ----------------------------------------------------------------------------- bad input


@pytest.mark.slow
def test_an_unknown_recipe_is_exit_2_with_the_choices(mini_store, fast_options, tmp_path) -> None:
    result = CliRunner().invoke(
        train_main, _args(mini_store, tmp_path / "run", fast_options, "--recipe", "tsn-r101")
    )
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    line = _error_line(result.output)
    assert "tsn-r101" in line and "seed-r18" in line and "tsm-r50" in line
    with pytest.raises(EpicInputError, match="unknown recipe 'tsn-r101'"):
        resolve_options({"recipe": "tsn-r101"}, {})


@pytest.fixture(scope="module")
def sampled_store(mini_epic, tmp_path_factory) -> Path:
    """The mini-EPIC planned --keep sampled for clips of 2 and 8 frames, extracted."""
    from preprocess.extract import run_shard
    from preprocess.plan import plan_store

    store = tmp_path_factory.mktemp("sampled") / "store"
    plan_store(
        store_root=store,
        annotations_dir=mini_epic.annotations_dir,
        videos_root=mini_epic.videos_dir,
        shards=1,
        keep="sampled",
        num_frames=(2, 8),
    )
    run_shard(store_root=store, shard_index=0, workers=2)
    return store


@pytest.mark.slow
def test_a_tsn_recipe_on_a_sampled_store_is_refused_before_any_step(
    sampled_store, mini_store, fast_options, tmp_path
) -> None:
    run = tmp_path / "run"
    args = _args(mini_store, run, fast_options, "--recipe", "tsn-r50")
    args[args.index(str(mini_store.store))] = str(sampled_store)
    result = CliRunner().invoke(train_main, args)
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    line = _error_line(result.output)
    assert "recipe tsn-r50" in line and "--keep sampled" in line
    assert "--keep segments" in line
    assert not (run / "last.pt").exists() and not (run / "summary.csv").exists()


@pytest.mark.slow
def test_tsm_without_the_kinetics_file_names_it_and_the_login_node_command(
    mini_store, fast_options, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    args = _args(mini_store, tmp_path / "run", fast_options, "--recipe", "tsm-r50")
    args.remove("--weights")
    args.remove("none")  # the recipe's own: kinetics
    result = CliRunner().invoke(train_main, args)
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    line = _error_line(result.output)
    file = str(tmp_path / "empty_torch_home" / "hub" / "checkpoints" / Path(KINETICS_TSM_URL).name)
    assert file in line and "login node" in line
    assert FETCH_KINETICS_COMMAND in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
@pytest.mark.parametrize("steps", ["40,20", "x", "0,10", ""])
def test_a_malformed_lr_steps_is_exit_2(steps: str, mini_store, fast_options, tmp_path) -> None:
    args = _args(mini_store, tmp_path / "run", fast_options, "--recipe", "tsn-r50")
    result = CliRunner().invoke(train_main, [*args, "--lr-steps", steps])
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    line = _error_line(result.output)
    assert "lr_steps" in line or "--lr-steps" in line
    assert "increasing" in line or "text" in line  # what it takes
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- slurm


def test_a_sweep_grid_resolves_its_runs_through_the_recipe(tmp_path) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text("lr: [0.01, 0.02]\nfixed:\n  recipe: tsn-r50\n  epochs: 2\n")
    runs = load_grid(grid).runs
    assert [r.resolved()["lr"] for r in runs] == [0.01, 0.02]
    assert all(r.resolved()["optimizer"] == "sgd" for r in runs)
    assert all(r.resolved()["arch"] == "resnet50" for r in runs)
    grid.write_text("lr_steps: ['40,20']\nfixed:\n  recipe: tsn-r50\n")
    with pytest.raises(EpicInputError, match="lr_steps='40,20'") as caught:
        load_grid(grid)
    assert str(grid) in str(caught.value)


@pytest.mark.slow
def test_the_pipeline_resolves_the_recipe_before_submitting(
    sampled_store, mini_epic, tmp_path
) -> None:
    assert train_options(["--recipe", "tsn-r50"]) == {"recipe": "tsn-r50"}
    with pytest.raises(EpicInputError, match="epic-train options after --"):
        train_options(["--recipe", "tsn-r50", "--lr-steps", "40,20"])
    site = tmp_path / "site.env"
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "activate").write_text("")
    site.write_text(
        f"source {SCRIPTS / 'sites' / 'cpu.env'}\nEPIC_VENV={tmp_path / 'venv'}\n"
        f"EPIC_LOGS={tmp_path / 'logs'}\nEPIC_STORE={tmp_path / 'site-store'}\n"
    )
    # The recipe's tsn sampling, not the default linspace, is what the store cannot serve.
    with pytest.raises(EpicInputError, match="trains with sampling tsn"):
        run_pipeline(
            load_site(site),
            store=sampled_store,
            annotations=mini_epic.annotations_dir,
            run_dir=tmp_path / "run",
            train_args=["--recipe", "tsn-r50"],
            dry_run=True,
        )
    assert not (tmp_path / "run").exists()
