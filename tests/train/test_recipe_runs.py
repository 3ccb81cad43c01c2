"""What the cluster layer reads of a run's recipe: the store a pipeline plans for it, the
samplings and epochs a sweep's checks and status see (the recipes themselves:
test_recipes.py)."""

from __future__ import annotations

from slurm.cli import _keep_for, _training_clip_length
from slurm.sweep import load_grid


def test_the_pipeline_plans_a_store_that_serves_the_recipe():
    assert _keep_for("sampled", False, ("--recipe", "tsn-r50")) == "segments"
    assert _keep_for("sampled", False, ("--sampling", "tsn")) == "segments"
    assert _keep_for("sampled", False, ("--recipe", "seed-r18")) == "sampled"
    assert _keep_for("sampled", True, ("--recipe", "tsm-r50")) == "sampled"  # as asked
    assert _training_clip_length(("--recipe", "tsm-r50")) == (8,)
    assert _training_clip_length(("--recipe", "tsm-r50", "--num-frames", "16")) == (16,)


def test_a_sweeps_store_check_and_run_status_see_the_recipes_values(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("recipe: [seed-r18, tsm-r50]\nlr: [0.01]\n")
    loaded = load_grid(grid)
    # tsm-r50 samples with tsn (a --keep sampled store cannot serve it) and trains 80 epochs.
    assert loaded.samplings == ["linspace", "tsn"] and loaded.clip_lengths == [8]
    assert {run.resolved().get("epochs", 30) for run in loaded.runs} == {30, 80}


def test_the_seed_recipe_is_the_configs_defaults_so_earlier_runs_resume_as_they_were():
    # Checkpoints of earlier releases have no recipe fields: they resume with the defaults,
    # which must be the seed's recipe exactly.
    from train.config import TrainConfig
    from train.recipes import RECIPES, resolve_options

    paths = {"store": "s", "annotations": "a", "output_dir": "o"}
    assert RECIPES["seed-r18"].options == {}
    assert TrainConfig(**paths) == TrainConfig(**paths, **resolve_options({}, {}))
