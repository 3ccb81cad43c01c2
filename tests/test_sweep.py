"""Sweeps without a SLURM: grid files and their errors, run names, sweep.json, the store
check, the array job's sbatch line, the summary of run folders, and slurm/sweep.sbatch run
by bash with a fake epic-train. tests/slurm runs a sweep on a real SLURM."""

from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import epicslurm.sweep as sweep_module
from epicdata.errors import EpicInputError
from epicslurm.cli import main as slurm
from epicslurm.site import SCRIPTS, load_site
from epicslurm.sweep import (
    ACTION_COLUMN,
    NOUN_COLUMN,
    VERB_COLUMN,
    check_store_serves,
    format_summary,
    load_grid,
    read_sweep,
    run_sweep,
    summary,
    write_csv,
    write_sweep,
)

HOME = Path(__file__).resolve().parents[1]
SEED_GRID = SCRIPTS / "sweeps" / "seed-week2.yaml"
SCRIPT = SCRIPTS / "sweep.sbatch"
FAKES = HOME / "tests" / "fakes"
#: This venv's console scripts (epic-slurm), as the job's venv would put them on PATH.
VENV_BIN = Path(sys.executable).parent


def _grid(tmp_path: Path, text: str, name: str = "grid.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _site(tmp_path: Path, extra: str = "") -> Path:
    """The CPU site example with this test's own folders."""
    path = tmp_path / "site.env"
    path.write_text(
        f"source {SCRIPTS / 'sites' / 'cpu.env'}\nEPIC_VENV={tmp_path / 'venv'}\n"
        f"EPIC_LOGS={tmp_path / 'logs'}\n{extra}"
    )
    return path


def _fake_run(run_dir: Path, *, epochs: int, actions: list[float], failed: str = "") -> None:
    """A run folder as epic-train leaves it: config.yaml and one summary.csv row per epoch
    (the trainer's column names), FAILED as slurm/lib.sh writes it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(f"epochs: {epochs}\n")
    with open(run_dir / "summary.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "lr", "val_loss", VERB_COLUMN, NOUN_COLUMN, ACTION_COLUMN])
        for epoch, action in enumerate(actions, start=1):
            writer.writerow([epoch, 1e-4, 3.0, action + 30, action + 10, action])
    if failed:
        (run_dir / "FAILED").write_text(failed + "\n")


# ----------------------------------------------------------------------------- grids


def test_the_seed_grid_is_27_runs_named_by_their_values() -> None:
    grid = load_grid(SEED_GRID)
    names = [r.name for r in grid.runs]
    assert len(names) == len(set(names)) == 27
    assert [r.index for r in grid.runs] == list(range(27))
    # The last key varies fastest; floats read as written (YAML reads 5e-5 as text).
    assert names[:4] == ["bs16-lr5e-5-f8", "bs16-lr5e-5-f12", "bs16-lr5e-5-f16", "bs16-lr1e-4-f8"]
    assert names[-1] == "bs64-lr2e-4-f16"
    assert {n.split("-f")[1] for n in names} == {"8", "12", "16"}
    run = grid.runs[3]
    assert run.options == {"epochs": 30, "batch_size": 16, "lr": 1e-4, "num_frames": 8}
    assert run.train_args() == ["--epochs=30", "--batch-size=16", "--lr=0.0001", "--num-frames=8"]
    assert grid.clip_lengths == [8, 12, 16]


def test_other_keys_are_named_key_value_and_flags_become_switches(tmp_path: Path) -> None:
    grid = load_grid(
        _grid(
            tmp_path,
            "lr: [0.001, 2.5e-5]\nscheduler: [plateau, cosine]\ndeterministic: [true, false]\n"
            "dropout: [0.5]\nfixed:\n  limit-batches: 2\n",
        )
    )
    names = [r.name for r in grid.runs]
    assert names[0] == "lr1e-3-scheduler=plateau-deterministic=true-dropout=0.5"
    assert names[-1] == "lr2.5e-5-scheduler=cosine-deterministic=false-dropout=0.5"
    assert grid.runs[1].train_args() == [
        "--limit-batches=2",
        "--lr=0.001",
        "--scheduler=plateau",
        "--no-deterministic",
        "--dropout=0.5",
    ]


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("batch_sise: [16, 32]\n", ["'batch_sise'", "batch_size", "num_frames", "lr"]),
        ("fixed:\n  epoch: 3\nlr: [1e-4]\n", ["'epoch' in fixed", "epochs"]),
        ("lr: []\n", ["lr", "non-empty list"]),
        ("lr: 1e-4\n", ["lr", "non-empty list", "fixed:"]),
        ("lr: [fast]\n", ["grid option lr", "expected a number (float), got 'fast'"]),
        ("batch_size: [16, 1.5]\n", ["batch_size", "expected an integer (int), got 1.5"]),
        ("fixed:\n  epochs: abc\nlr: [1e-4]\n", ["fixed epochs", "an integer (int), got 'abc'"]),
        ("deterministic: [1]\n", ["deterministic", "expected true or false (bool), got 1"]),
        ("lr: [.inf]\n", ["lr", "expected a number (float), got inf"]),
        ("batch_size: [0, 16]\n", ["run bs0", "batch_size=0", ">= 1"]),
        (
            "scheduler: [plateau, linear]\n",
            ["scheduler", "one of plateau, cosine, step, got 'linear'"],
        ),
        ("store: [/a, /b]\n", ["'store'"]),
        ("lr: [1e-4, 0.0001]\n", ["lr repeats a value"]),
        ("fixed:\n  lr: 1e-4\nlr: [2e-4]\n", ["lr is given twice"]),
        ("fixed: [1]\nlr: [1e-4]\n", ["'fixed' must be a mapping"]),
        ("fixed:\n  epochs: 2\n", ["no option with a list"]),
        ("- lr\n", ["a mapping"]),
        ("lr: [1e-4\n", ["cannot read"]),
    ],
)
def test_a_bad_grid_is_named_with_the_file(tmp_path: Path, text: str, needles: list[str]) -> None:
    path = _grid(tmp_path, text)
    with pytest.raises(EpicInputError) as caught:
        load_grid(path)
    message = str(caught.value)
    for needle in [str(path), *needles]:
        assert needle in message, (needle, message)


def test_grid_values_are_typed_as_epic_train_types_them(tmp_path: Path) -> None:
    # YAML 1.1 reads 5e-5 and 1e-4 (no dot) as text; epic-train and --config files read
    # them as floats through train.config's coercion, and so does the grid.
    grid = load_grid(_grid(tmp_path, "lr: [5e-5, 1]\nfixed:\n  epochs: '3'\n  dropout: 0\n"))
    assert [r.options for r in grid.runs] == [
        {"epochs": 3, "dropout": 0.0, "lr": 5e-5},
        {"epochs": 3, "dropout": 0.0, "lr": 1.0},
    ]
    assert all(type(r.options["lr"]) is float for r in grid.runs)
    assert type(grid.runs[0].options["dropout"]) is float
    assert grid.runs[0].train_args() == ["--epochs=3", "--dropout=0.0", "--lr=5e-05"]


def test_a_missing_grid_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(EpicInputError, match="grid file not found") as caught:
        load_grid(tmp_path / "none.yaml")
    assert str(tmp_path / "none.yaml") in str(caught.value)


# ----------------------------------------------------------------------------- sweep.json


def test_sweep_json_is_rewritten_for_the_same_grid_and_refused_for_another(tmp_path) -> None:
    runs = tmp_path / "runs"
    path = write_sweep(runs, load_grid(SEED_GRID))
    assert path == runs / "sweep.json"
    data = json.loads(path.read_text())
    assert data["runs"][1] == {
        "index": 1,
        "name": "bs16-lr5e-5-f12",
        "options": {"epochs": 30, "batch_size": 16, "lr": 5e-5, "num_frames": 12},
    }
    assert [r.name for r in read_sweep(path)] == [r.name for r in load_grid(SEED_GRID).runs]
    other = _grid(tmp_path, SEED_GRID.read_text().replace("epochs: 30", "epochs: 40"), "o.yaml")
    # No run folder yet: the sweep may still be replaced.
    write_sweep(runs, load_grid(other))
    write_sweep(runs, load_grid(SEED_GRID))
    (runs / "bs16-lr5e-5-f8").mkdir()
    write_sweep(runs, load_grid(SEED_GRID))  # a resubmission
    with pytest.raises(EpicInputError) as caught:
        write_sweep(runs, load_grid(other))
    message = str(caught.value)
    assert str(path) in message and "different sweep" in message and "--runs-root" in message
    assert "run bs16-lr5e-5-f8: epochs 30 -> 40" in message
    assert json.loads(path.read_text()) == data  # left as it was


@pytest.mark.parametrize(
    ("run", "needle"),
    [
        ({"index": 0, "name": "../elsewhere", "options": {}}, "not a plain folder name"),
        ({"index": 1, "name": "a", "options": {}}, "run 0: index 1"),
        ({"index": 0, "name": "a", "options": {"weights": "x\n--lr=1"}}, "weights: expected a"),
        ({"index": 0, "name": "a", "options": {"lr": "fast"}}, "lr: expected a number (float)"),
        ({"index": 0, "name": "a", "options": {"output_dir": "/x"}}, "not an epic-train option"),
        ({"index": 0, "name": "a"}, "KeyError"),
    ],
)
def test_a_malformed_sweep_json_is_named_not_run(tmp_path, run, needle) -> None:
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"runs": [run]}))
    with pytest.raises(EpicInputError, match="malformed sweep file") as caught:
        read_sweep(path)
    assert needle in str(caught.value) and str(path) in str(caught.value)


# ----------------------------------------------------------------------------- the store


@pytest.fixture(scope="module")
def stores(epic_files, tmp_path_factory) -> dict[str, Path]:
    """Stores of one short video: keep=sampled for 8 and for 8,12,16, and keep=segments,
    extracted; "planned-only": keep=sampled for 8,12,16, not extracted."""
    from preprocess.extract import run_shard
    from preprocess.plan import plan_store

    root = tmp_path_factory.mktemp("sweep_stores")
    videos, annotations = root / "videos", root / "ann"
    epic_files.make_videos(videos, [("P01_101", "50", 1.5)])
    epic_files.write_test_split(annotations, [("P01_101", 0.2, 1.2)])
    out = {}
    for name, keep, lengths in [
        ("sampled-8", "sampled", (8,)),
        ("sampled-8-12-16", "sampled", (8, 12, 16)),
        ("segments", "segments", (8,)),
        ("planned-only", "sampled", (8, 12, 16)),
    ]:
        out[name] = root / name
        plan_store(
            store_root=out[name],
            annotations_dir=annotations,
            videos_root=videos,
            splits=("test",),
            shards=1,
            keep=keep,
            num_frames=lengths,
        )
        if name != "planned-only":
            run_shard(store_root=out[name], shard_index=0, workers=1)
    out["annotations"] = annotations
    return out


def test_a_store_kept_for_8_frames_cannot_serve_the_seed_grid(stores) -> None:
    lengths = load_grid(SEED_GRID).clip_lengths
    with pytest.raises(EpicInputError) as caught:
        check_store_serves(stores["sampled-8"], lengths)
    message = str(caught.value)
    assert str(stores["sampled-8"]) in message
    assert "clip lengths 8 only" in message and "needs 12,16" in message
    assert "--num-frames 8,12,16" in message
    check_store_serves(stores["sampled-8-12-16"], lengths)
    check_store_serves(stores["segments"], [4, 8, 12, 16, 32], ["tsn"])
    with pytest.raises(EpicInputError, match="tsn"):
        check_store_serves(stores["sampled-8-12-16"], [8], ["linspace", "tsn"])


def test_run_sweep_refuses_a_store_that_misses_clip_lengths(stores, tmp_path) -> None:
    site = load_site(_site(tmp_path))
    with pytest.raises(EpicInputError, match="needs 12,16"):
        run_sweep(
            site,
            grid_file=SEED_GRID,
            store=stores["sampled-8"],
            annotations=stores["annotations"],
            runs_root=tmp_path / "runs",
            dry_run=True,
        )
    assert not (tmp_path / "runs").exists()


def test_run_sweep_refuses_a_store_not_extracted_yet_with_the_line_that_extracts_it(
    stores, tmp_path
) -> None:
    site = load_site(_site(tmp_path))
    with pytest.raises(EpicInputError, match="not complete: 1 of 1 shards") as caught:
        run_sweep(
            site,
            grid_file=SEED_GRID,
            store=stores["planned-only"],
            annotations=stores["annotations"],
            runs_root=tmp_path / "runs",
            dry_run=True,
        )
    assert f"epic-slurm submit --site {site.path} extract" in str(caught.value)
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- submission


def _array(command: list[str]) -> str:
    return next(w.split("=", 1)[1] for w in command if w.startswith("--array="))


def test_the_sweep_is_one_array_job_of_the_runs_not_done(stores, tmp_path) -> None:
    site = load_site(_site(tmp_path))
    runs = tmp_path / "runs"
    options = dict(
        grid_file=SEED_GRID,
        store=stores["sampled-8-12-16"],
        annotations=stores["annotations"],
        runs_root=runs,
        dry_run=True,
    )
    job_id, command = run_sweep(site, **options)
    assert job_id is None and command[0] == "sbatch"
    assert "--array=0-26" in command and "--job-name=epic-sweep" in command
    assert "--partition=debug" in command and "--time=01:00:00" in command
    assert f"--output={tmp_path / 'logs'}/epic-sweep-%A_%a.out" in command
    assert command[-1] == str(SCRIPTS / "sweep.sbatch")
    export = next(w for w in command if w.startswith("--export="))
    for item in (
        f"EPIC_STORE={stores['sampled-8-12-16']}",
        f"EPIC_ANNOTATIONS={stores['annotations']}",
        f"EPIC_RUN_DIR={runs}",
        f"EPIC_GRID={runs / 'sweep.json'}",
    ):
        assert item in export.split(","), item
    assert not runs.exists()  # a dry run writes nothing
    names = [r.name for r in load_grid(SEED_GRID).runs]
    for index in (0, 1, 5, 26):
        _fake_run(runs / names[index], epochs=2, actions=[10.0, 12.0])
    _fake_run(runs / names[2], epochs=2, actions=[10.0])  # started: still to do
    _fake_run(runs / names[3], epochs=2, actions=[10.0, 11.0], failed="exit 1, job 7")
    assert _array(run_sweep(site, **options)[1]) == "2-4,6-25"
    (runs / names[3] / "FAILED").unlink()  # resubmitted, and then every run finished
    for name in names:
        _fake_run(runs / name, epochs=2, actions=[1.0, 2.0])
    assert run_sweep(site, **options) == (None, [])


def _sweep_args(site: Path, stores: dict[str, Path], runs: Path) -> list[str]:
    return [
        "sweep", "--site", str(site), "--grid", str(SEED_GRID),
        "--store", str(stores["sampled-8-12-16"]), "--annotations", str(stores["annotations"]),
        "--runs-root", str(runs),
    ]  # fmt: skip


def test_a_submitted_sweep_writes_sweep_json_and_waits_for_a_queued_one(
    stores, tmp_path, monkeypatch
) -> None:
    site = load_site(_site(tmp_path))
    (tmp_path / "venv" / "bin").mkdir(parents=True)  # the site's venv: checked before submitting
    (tmp_path / "venv" / "bin" / "activate").write_text("")
    runs = tmp_path / "runs"
    args = _sweep_args(site.path, stores, runs)
    sent = []
    monkeypatch.setattr(sweep_module, "queued_jobs", lambda key, site: [])
    monkeypatch.setattr(sweep_module, "submit", lambda job, site: sent.append(job) or "4242")
    result = CliRunner().invoke(slurm, args)
    assert result.exit_code == 0, result.output
    log = tmp_path / "logs" / "epic-sweep-4242_<task>.out"
    assert f"sweep: job 4242, array 0-26, log {log}" in result.output
    assert f"results: epic-slurm summary {runs}" in result.output
    (job,) = sent
    assert job.kind == "sweep" and job.comment == sweep_module.sweep_key(runs)
    assert len(read_sweep(runs / "sweep.json")) == 27
    # While that array is queued, a second one would train into the same folders.
    monkeypatch.setattr(sweep_module, "queued_jobs", lambda key, site: ["4242_3", "4242_4"])
    result = CliRunner().invoke(slurm, args)
    assert result.exit_code == 2 and "(jobs 4242_3, 4242_4)" in result.output
    monkeypatch.setattr(sweep_module, "queued_jobs", lambda key, site: [])
    for run in load_grid(SEED_GRID).runs:
        _fake_run(runs / run.name, epochs=30, actions=[1.0] * 30)
    result = CliRunner().invoke(slurm, args)
    assert result.exit_code == 0, result.output
    assert f"nothing to submit: every run of {runs} is done" in result.output
    assert len(sent) == 1


def test_epic_slurm_sweep_dry_run_prints_the_sbatch_line(stores, tmp_path) -> None:
    args = _sweep_args(_site(tmp_path), stores, tmp_path / "runs")
    result = CliRunner().invoke(slurm, [*args, "--dry-run"])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("sbatch "))
    assert "--array=0-26" in shlex.split(line)
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- summary


def test_the_summary_sorts_runs_by_action_accuracy_and_writes_csv(tmp_path) -> None:
    runs = tmp_path / "runs"
    grid = load_grid(_grid(tmp_path, "lr: [1e-4, 2e-4, 3e-4, 4e-4, 5e-4]\nfixed: {epochs: 2}\n"))
    write_sweep(runs, grid)
    _fake_run(runs / "lr1e-4", epochs=2, actions=[20.0, 18.0])  # done, best at epoch 1
    _fake_run(runs / "lr2e-4", epochs=2, actions=[25.0], failed="exit 3, job 12, 2026-01-02")
    _fake_run(runs / "lr3e-4", epochs=2, actions=[10.0])  # started (queued or running)
    _fake_run(runs / "lr5e-4", epochs=2, actions=[])  # started, no epoch yet
    rows = summary(runs)
    assert [(r.name, r.status) for r in rows] == [
        ("lr2e-4", "failed"),
        ("lr1e-4", "done"),
        ("lr3e-4", "running"),
        ("lr4e-4", "pending"),
        ("lr5e-4", "running"),
    ]
    failed, done = rows[0], rows[1]
    assert (done.best_epoch, done.action, done.verb, done.noun) == (1, 20.0, 50.0, 30.0)
    assert (done.epochs_done, done.epochs) == (2, 2)
    assert failed.detail == "exit 3, job 12, 2026-01-02"
    assert rows[3].best_epoch is None and (rows[3].epochs_done, rows[3].epochs) == (0, 2)
    text = format_summary(rows)
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["run", "status", "action@1", "verb@1"]
    assert lines[1].split()[:7] == ["lr2e-4", "failed", "25.00", "55.00", "35.00", "1", "1/2"]
    assert lines[1].endswith("exit 3, job 12, 2026-01-02")
    assert lines[4].split() == ["lr4e-4", "pending", "-", "-", "-", "-", "0/2"]
    assert lines[-1] == "5 runs: 1 done, 2 running, 1 failed, 1 pending"
    with open(write_csv(rows, tmp_path / "table.csv"), newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [r["name"] for r in table] == [r.name for r in rows]
    assert table[1]["val_action_top1"] == "20.0000" and table[1]["best_epoch"] == "1"
    assert table[1]["lr"] == "0.0001" and table[1]["epochs"] == "2"
    assert table[3]["val_action_top1"] == "" and table[3]["status"] == "pending"


def test_epic_slurm_summary_prints_the_table_and_writes_the_csv(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(sweep_module, "queued_tasks", lambda key, site: {})
    runs = tmp_path / "runs"
    write_sweep(runs, load_grid(_grid(tmp_path, "lr: [1e-4, 2e-4]\nfixed: {epochs: 2}\n")))
    _fake_run(runs / "lr2e-4", epochs=2, actions=[5.0, 7.5])
    result = CliRunner().invoke(slurm, ["summary", str(runs)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1].split()[:3] == ["lr2e-4", "done", "7.50"]
    assert (runs / "sweep_summary.csv").is_file()
    assert f"wrote {runs / 'sweep_summary.csv'}" in result.output


def test_the_summary_reads_the_columns_the_trainer_writes() -> None:
    from train.fit import SELECTION_METRIC

    written = f"val_{SELECTION_METRIC}"  # train/fit.py _end_epoch: "val_" + metric key
    assert written == ACTION_COLUMN
    assert written.replace("action", "verb") == VERB_COLUMN
    assert written.replace("action", "noun") == NOUN_COLUMN


# ----------------------------------------------------------------------------- the task


def test_sweep_task_prints_the_run_folder_and_its_options(tmp_path) -> None:
    path = write_sweep(tmp_path / "runs", load_grid(SEED_GRID))
    result = CliRunner().invoke(slurm, ["sweep-task", "--grid", str(path), "--index", "1"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "bs16-lr5e-5-f12",
        "--epochs=30",
        "--batch-size=16",
        "--lr=5e-05",
        "--num-frames=12",
    ]
    env = {"EPIC_GRID": str(path), "SLURM_ARRAY_TASK_ID": "26"}
    result = CliRunner().invoke(slurm, ["sweep-task"], env=env)
    assert result.output.splitlines()[0] == "bs64-lr2e-4-f16"
    result = CliRunner().invoke(slurm, ["sweep-task"], env={**env, "SLURM_ARRAY_TASK_ID": "27"})
    assert result.exit_code == 2
    assert "error: run 27 does not exist: the sweep has 27 runs (0-26)" in result.output


FAKE_TRAIN = """#!/bin/sh
# Records its arguments, one a line, and exits with $FAKE_TRAIN_RC.
printf '%s\\n' "$@" > "${FAKE_SLURM_DIR:?}/train-args"
exit "${FAKE_TRAIN_RC:-0}"
"""


def _run_task(
    tmp_path: Path, index: str, rc: int, site_extra: str = ""
) -> subprocess.CompletedProcess:
    """slurm/sweep.sbatch run by bash as array task ``index``, with epic-train and scontrol
    faked (first on PATH), an empty venv and this venv's epic-slurm next; ``site_extra``:
    lines appended to the site file."""
    fakes = tmp_path / "fakes"
    if not fakes.exists():
        fakes.mkdir()
        (fakes / "epic-train").write_text(FAKE_TRAIN)
        shutil.copy(FAKES / "scontrol", fakes / "scontrol")
        for name in ("epic-train", "scontrol"):
            (fakes / name).chmod(0o755)
        (tmp_path / "venv" / "bin").mkdir(parents=True)
        (tmp_path / "venv" / "bin" / "activate").write_text("# the test's PATH is the venv\n")
    runs = tmp_path / "runs"
    grid = runs / "sweep.json"
    if not grid.exists():
        write_sweep(runs, load_grid(SEED_GRID))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EPIC_", "SLURM_"))}
    env.update(
        PATH=os.pathsep.join([str(fakes), str(VENV_BIN), "/usr/bin", "/bin"]),
        EPIC_SCRIPTS=str(SCRIPTS),
        EPIC_SITE=str(_site(tmp_path, site_extra)),
        EPIC_STORE=str(tmp_path / "store"),
        EPIC_ANNOTATIONS=str(tmp_path / "ann"),
        EPIC_RUN_DIR=str(runs),
        EPIC_GRID=str(grid),
        SLURM_ARRAY_TASK_ID=index,
        SLURM_JOB_ID="1",
        FAKE_SLURM_DIR=str(tmp_path),
        FAKE_TRAIN_RC=str(rc),
    )
    return subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120
    )


def test_a_sweep_task_trains_its_run_into_its_folder_with_resume_auto(tmp_path) -> None:
    run_dir = tmp_path / "runs" / "bs16-lr5e-5-f12"
    run_dir.mkdir(parents=True)
    (run_dir / "FAILED").write_text("exit 1, job 0\n")  # an earlier try, now resubmitted
    result = _run_task(tmp_path, "1", 0)
    assert result.returncode == 0, result.stdout + result.stderr
    args = (tmp_path / "train-args").read_text().splitlines()
    assert args == [
        "--store", str(tmp_path / "store"), "--annotations", str(tmp_path / "ann"),
        "--output-dir", str(run_dir), "--workers", "4", "--device", "cpu",
        "--resume", "auto",
        "--epochs=30", "--batch-size=16", "--lr=5e-05", "--num-frames=12",
    ]  # fmt: skip
    assert "| command: epic-train --store" in result.stdout  # the job header
    assert not (run_dir / "FAILED").exists()
    assert not (tmp_path / "requeued").exists()


def test_a_sweep_task_stages_on_the_site_s_stage_dir_before_the_run_s_options(tmp_path) -> None:
    result = _run_task(tmp_path, "1", 0, site_extra=f"EPIC_STAGE_DIR={tmp_path / 'node'}\n")
    assert result.returncode == 0, result.stdout + result.stderr
    args = (tmp_path / "train-args").read_text().splitlines()
    assert args[args.index("--resume") :] == [
        "--resume", "auto", "--stage-dir", str(tmp_path / "node"),
        "--epochs=30", "--batch-size=16", "--lr=5e-05", "--num-frames=12",
    ]  # fmt: skip


def test_a_sweep_task_requeues_itself_after_a_checkpoint(tmp_path) -> None:
    result = _run_task(tmp_path, "1", 75)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "requeued").read_text().split() == ["1"]
    assert "checkpoint saved; requeueing job 1" in result.stdout
    assert not (tmp_path / "runs" / "bs16-lr5e-5-f12" / "FAILED").exists()


def test_a_failed_sweep_task_marks_its_own_run_folder(tmp_path) -> None:
    result = _run_task(tmp_path, "26", 3)
    assert result.returncode == 3
    failed = tmp_path / "runs" / "bs64-lr2e-4-f16" / "FAILED"
    assert failed.read_text().startswith("exit 3, job 1,")
    assert not (tmp_path / "runs" / "FAILED").exists()
    assert [r.status for r in summary(tmp_path / "runs") if r.name == "bs64-lr2e-4-f16"] == [
        "failed"
    ]


def test_a_sweep_task_outside_the_grid_trains_nothing(tmp_path) -> None:
    result = _run_task(tmp_path, "27", 0)
    assert result.returncode == 2
    assert "run 27 does not exist" in result.stderr
    assert not (tmp_path / "train-args").exists()
