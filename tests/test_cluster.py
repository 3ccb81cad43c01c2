"""The cluster layer without a SLURM: site files, the sbatch lines built from them, the lines
the tools print for users, and the pipeline's decisions from the artifacts (what is missing,
the chain's dependencies, no second chain while one is queued). tests/slurm runs the same
code on a real SLURM."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import epicslurm.pipeline as pipeline_module
from epicdata.console import user_line
from epicdata.errors import EpicInputError
from epicslurm.pipeline import array_spec, chain_key, run_pipeline, run_status
from epicslurm.site import SCRIPTS, load_site
from epicslurm.submit import Job

HOME = Path(__file__).resolve().parents[1]
SITES = SCRIPTS / "sites"


def _site(tmp_path: Path, example: str = "cpu.env", extra: str = "") -> Path:
    """A user's site file: one of the examples, with its own folders."""
    path = tmp_path / "site.env"
    path.write_text(
        f"source {SITES / example}\nEPIC_VENV={tmp_path / 'venv'}\n"
        f"EPIC_LOGS={tmp_path / 'logs'}\n{extra}"
    )
    return path


@pytest.mark.parametrize("example", ["wice.env", "genius.env", "cpu.env"])
def test_every_example_site_file_sets_what_the_jobs_need(example, monkeypatch):
    monkeypatch.setenv("VSC_DATA", "/data/leuven/300/vsc30000")
    monkeypatch.setenv("VSC_SCRATCH", "/scratch/leuven/300/vsc30000")
    site = load_site(SITES / example)
    for name in ("EPIC_PARTITION_CPU", "EPIC_PARTITION_GPU", "EPIC_VENV", "EPIC_LOGS"):
        assert site.get(name), name
    assert site.get("EPIC_DEVICE") in ("cuda", "cpu")
    if example != "cpu.env":
        assert site.get("EPIC_VENV") == "/data/leuven/300/vsc30000/venvs/epic"


@pytest.mark.parametrize("example", ["wice.env", "genius.env"])
def test_vsc_sites_stage_training_on_the_node_s_own_disk(example, monkeypatch):
    monkeypatch.setenv("VSC_SCRATCH_NODE", "/local_scratch/vsc30000")
    assert load_site(SITES / example).get("EPIC_STAGE_DIR") == "/local_scratch/vsc30000"
    monkeypatch.delenv("VSC_SCRATCH_NODE")
    monkeypatch.setenv("TMPDIR", "/tmp/job-17")
    assert load_site(SITES / example).get("EPIC_STAGE_DIR") == "/tmp/job-17"


def test_the_cpu_site_does_not_stage(tmp_path):
    assert load_site(_site(tmp_path)).get("EPIC_STAGE_DIR", "unset") == ""


FAKE_TRAIN = """#!/bin/sh
printf '%s\\n' "$@" > "${FAKE_SLURM_DIR:?}/train-args"
"""


@pytest.mark.parametrize("script", ["train.sbatch", "train_multi.sbatch"])
@pytest.mark.parametrize("stage", ["", "node local"])
def test_training_jobs_pass_the_site_s_stage_dir_only_when_it_is_set(tmp_path, script, stage):
    """The job script run by bash with epic-train, srun and scontrol faked: --stage-dir comes
    after the job's own options and before the user's (which win)."""
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    (fakes / "epic-train").write_text(FAKE_TRAIN)
    for name in ("srun", "scontrol"):
        shutil.copy(HOME / "tests" / "fakes" / name, fakes / name)
    for name in ("epic-train", "srun", "scontrol"):
        (fakes / name).chmod(0o755)
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "activate").write_text("# the test's PATH is the venv\n")
    stage_dir = tmp_path / stage if stage else ""
    site = _site(tmp_path, extra=f"EPIC_STAGE_DIR={shlex.quote(str(stage_dir))}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EPIC_", "SLURM_"))}
    env.update(
        PATH=os.pathsep.join([str(fakes), str(Path(sys.executable).parent), "/usr/bin", "/bin"]),
        EPIC_SCRIPTS=str(SCRIPTS),
        EPIC_SITE=str(site),
        EPIC_STORE=str(tmp_path / "store"),
        EPIC_ANNOTATIONS=str(tmp_path / "ann"),
        EPIC_RUN_DIR=str(tmp_path / "run"),
        SLURM_JOB_ID="1",
        SLURM_NTASKS="1",
        SLURM_JOB_NODELIST="node1",
        FAKE_SLURM_DIR=str(tmp_path),
    )
    result = subprocess.run(
        ["bash", str(SCRIPTS / script), "--epochs", "3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    args = (tmp_path / "train-args").read_text().splitlines()
    staged = ["--stage-dir", str(stage_dir)] if stage else []
    assert args[args.index("--resume") :] == ["--resume", "auto", *staged, "--epochs", "3"]


def test_a_gpu_site_gives_training_its_gpu_partition_and_request(tmp_path, monkeypatch):
    monkeypatch.setenv("VSC_DATA", "/data")
    site = load_site(SITES / "wice.env")
    train = Job("train", {"EPIC_RUN_DIR": "/runs/a"}).sbatch(site)
    assert "--partition=gpu_a100" in train and "--gpus-per-node=1" in train
    assert "--account=lp_myproject" in train and "--clusters=wice" in train
    assert "--cpus-per-task=18" in train and "--time=12:00:00" in train
    assert "--output=/data/epic-logs/epic-train-%j.out" in train
    assert train[-1].endswith("slurm/train.sbatch")
    extract = Job("extract", array="0-9").sbatch(site)
    assert "--partition=batch" in extract and not any("gpus" in o for o in extract)
    assert "--output=/data/epic-logs/epic-extract-%A_%a.out" in extract
    multi = Job("train-multi", nodes=2, gpus_per_node=4).sbatch(site)
    assert {"--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4"} <= set(multi)


def test_a_cpu_site_asks_for_no_gpu_and_no_account(tmp_path):
    site = load_site(_site(tmp_path))
    train = Job("train").sbatch(site)
    assert not any(o.startswith(("--gpus", "--gres", "--account", "--clusters")) for o in train)
    assert "--partition=debug" in train
    export = next(o for o in train if o.startswith("--export="))
    assert f"EPIC_SITE={tmp_path / 'site.env'}" in export and f"EPIC_SCRIPTS={SCRIPTS}" in export


def test_site_file_errors_name_the_file_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("EPIC_SITE", raising=False)
    with pytest.raises(EpicInputError, match="no site file"):
        load_site(None)
    broken = tmp_path / "broken.env"
    broken.write_text('EPIC_VENV="unterminated\n')
    with pytest.raises(EpicInputError, match="does not source cleanly") as caught:
        load_site(broken)
    assert str(broken) in str(caught.value)
    partial = tmp_path / "partial.env"
    partial.write_text("EPIC_PARTITION_CPU=batch\n")
    with pytest.raises(EpicInputError, match="EPIC_PARTITION_GPU, EPIC_VENV, EPIC_LOGS"):
        load_site(partial)


def test_the_callers_own_epic_variables_do_not_leak_into_the_site(tmp_path, monkeypatch):
    monkeypatch.setenv("EPIC_ACCOUNT", "someone_elses")
    assert load_site(_site(tmp_path)).get("EPIC_ACCOUNT") == ""


def test_a_comma_in_a_path_is_refused_not_split_by_sbatch(tmp_path):
    site = load_site(_site(tmp_path))
    with pytest.raises(EpicInputError, match="comma"):
        Job("check", {"EPIC_STORE": "/a,b"}).sbatch(site)


def test_printed_submit_lines_name_the_site_and_parse_back(tmp_path):
    line = user_line("extract", tmp_path / "site.env", store=Path("/s"), array="3,7", force=True)
    assert (
        line
        == f"epic-slurm submit --site {tmp_path / 'site.env'} extract --store /s --array 3,7 --force"
    )
    from click.testing import CliRunner

    from epicslurm.cli import main

    site = _site(tmp_path)
    args = shlex.split(user_line("extract", site, store=tmp_path, array="3,7", force=True))
    result = CliRunner().invoke(main, [*args[1:], "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "--array=3,7" in result.output and "EPIC_FORCE=1" in result.output


@pytest.mark.parametrize(
    ("indices", "spec"), [([0, 1, 2, 3, 7], "0-3,7"), ([5], "5"), ([2, 4, 5, 6, 9], "2,4-6,9")]
)
def test_array_spec(indices, spec):
    assert array_spec(indices) == spec


def _fake_run(run: Path, epochs: int, done: int) -> None:
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"epochs: {epochs}\n")
    rows = "".join(f"{e},0.5\n" for e in range(1, done + 1))
    (run / "summary.csv").write_text("epoch,val_all_action_accuracy_at_1\n" + rows)


def test_run_status_reads_the_run_folder(tmp_path):
    assert run_status(tmp_path / "none").state == "new"
    _fake_run(tmp_path / "half", epochs=3, done=1)
    assert run_status(tmp_path / "half").state == "started"
    _fake_run(tmp_path / "done", epochs=3, done=3)
    assert run_status(tmp_path / "done").state == "done"
    _fake_run(tmp_path / "failed", epochs=3, done=1)
    (tmp_path / "failed" / "FAILED").write_text("exit 2, job 17\n")
    status = run_status(tmp_path / "failed")
    assert status.state == "failed" and "job 17" in status.detail


@pytest.fixture
def quiet_queue(monkeypatch):
    """squeue stands in: ``quiet_queue.jobs`` are the jobs it lists for the chain."""

    class Queue:
        jobs: list[str] = []

    monkeypatch.setattr(pipeline_module, "queued_jobs", lambda key, site: Queue.jobs)
    return Queue


def test_a_fresh_pipeline_chains_extract_check_train_validate(
    small_store_ro, tmp_path, quiet_queue
):
    site = load_site(_site(tmp_path))
    run = tmp_path / "run"
    jobs = run_pipeline(
        site,
        store=small_store_ro["store"],
        annotations=small_store_ro["annotations"],
        run_dir=run,
        train_args=["--epochs", "2"],
        dry_run=True,
    )
    assert [j.kind for j in jobs] == ["extract", "check", "train", "validate"]
    commands = {j.kind: j.command for j in jobs}
    key = chain_key(small_store_ro["store"], run)
    for command in commands.values():
        assert f"--comment={key}" in command
    assert "--array=0" in commands["extract"]
    assert "--dependency=afterany:<extract>" in commands["check"]
    assert "--dependency=afterok:<check>" in commands["train"]
    assert "--dependency=afterok:<train>" in commands["validate"]
    for kind in ("check", "train", "validate"):
        assert "--kill-on-invalid-dep=yes" in commands[kind]
    assert commands["train"][-2:] == ["--epochs", "2"]
    export = next(o for o in commands["validate"] if o.startswith("--export="))
    assert f"EPIC_CHECKPOINT={run / 'best.pt'}" in export and f"EPIC_OUT={run / 'val'}" in export
    assert jobs[0].log.endswith("epic-extract-<extract>_<task>.out")


def test_a_finished_run_with_its_metrics_submits_nothing(
    small_store_ro, tmp_path, quiet_queue, monkeypatch
):
    run = tmp_path / "run"
    _fake_run(run, epochs=2, done=2)
    (run / "best.pt").write_bytes(b"")
    (run / "val").mkdir()
    (run / "val" / "metrics.json").write_text("{}")

    class Complete:  # what the checker says of a store with every shard intact
        resubmit_indices: list[int] = []
        shards = [SimpleNamespace(index=0, published=True, problems=[])]

    monkeypatch.setattr(pipeline_module, "check_store", lambda store: Complete)
    site = load_site(_site(tmp_path))
    jobs = run_pipeline(
        site, store=small_store_ro["store"], annotations=small_store_ro["annotations"], run_dir=run
    )
    assert jobs == []


def test_no_second_chain_while_one_is_queued(small_store_ro, tmp_path, quiet_queue):
    quiet_queue.jobs = ["41", "42"]
    site = load_site(_site(tmp_path))
    with pytest.raises(EpicInputError, match="still queued or running .jobs 41, 42") as caught:
        run_pipeline(
            site,
            store=small_store_ro["store"],
            annotations=small_store_ro["annotations"],
            run_dir=tmp_path / "run",
            dry_run=True,
        )
    assert "scancel" in str(caught.value)


def test_the_plan_prints_the_site_s_submit_line(small_store_ro, tmp_path, monkeypatch):
    from epicdata.manifest import Manifest
    from preprocess.plan import plan_summary

    site = _site(tmp_path)
    monkeypatch.setenv("EPIC_SITE", str(site))
    store = small_store_ro["store"]
    text = plan_summary(Manifest.load(store), store)
    expected = user_line("extract", site, store=store.resolve(), array="0-0")
    assert f"next: {expected}" in text
