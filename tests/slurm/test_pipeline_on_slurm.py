"""The job scripts and epic-slurm on a real SLURM, through the CPU site example: the whole
pipeline with a corrupt video and its repair, and a training job sent USR1 mid-epoch."""

from __future__ import annotations

import csv
import itertools
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from epicdata.manifest import Manifest
from epicdata.synthetic import MiniEpic
from epicslurm.pipeline import run_status

pytestmark = pytest.mark.slurm

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
#: Tiny CPU trainings (as tests/train's FAST): 64-px crops, 2 frames, a few batches.
TRAIN = ["--crop-size", "64", "--num-frames", "2", "--batch-size", "8", "--lr", "1e-3"]
TRAIN += ["--weights", "none", "--deterministic"]
JOB_LINE = re.compile(r"^(extract|check|train|validate)\s+job (\S+)\s+log (\S+)$", re.MULTILINE)


def _site(slurm, folder: Path) -> Path:
    """The CPU site example, pointed at this cluster's partition, this venv and ``folder``."""
    site = folder / "site.env"
    site.write_text(
        f"source {REPO / 'slurm' / 'sites' / 'cpu.env'}\n"
        f"EPIC_PARTITION_CPU={slurm.partition}\nEPIC_PARTITION_GPU={slurm.partition}\n"
        f"EPIC_VENV={sys.prefix}\nEPIC_LOGS={folder / 'logs'}\n"
        f"EPIC_TRAIN_CPUS={min(2, slurm.cpus)}\n"
    )
    return site


def _epic_slurm(slurm, site: Path, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    return slurm.run(
        [BIN / "epic-slurm", *args], env={"EPIC_SITE": str(site)}, check=False, timeout=timeout
    )


def _jobs(output: str) -> dict[str, tuple[str, str]]:
    """{kind: (job id, log)} from the pipeline's printed lines."""
    return {kind: (job_id, log) for kind, job_id, log in JOB_LINE.findall(output)}


def _started_after(later, earlier) -> bool:
    return later.record["StartTime"] >= earlier.record["EndTime"]


@pytest.mark.slow
def test_pipeline_runs_to_the_end_and_a_corrupt_video_costs_only_its_task(
    slurm, mini_epic: MiniEpic, tmp_path
):
    site = _site(slurm, tmp_path)
    videos = tmp_path / "videos"
    shutil.copytree(mini_epic.videos_dir, videos)
    store, run = tmp_path / "store", tmp_path / "run"
    common = ["--annotations", mini_epic.annotations_dir, "--store", store, "--run-dir", run]
    train = ["--", *TRAIN, "--epochs", "2"]

    # A dry run plans in memory and submits and writes nothing.
    dry = _epic_slurm(slurm, site, "pipeline", "--videos", videos, *common, "--num-frames",
                      "2", "--shards", "2", "--dry-run", *train)  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("sbatch --parsable") == 4 and not slurm.queue()
    assert not store.exists() and not run.exists()
    # Plan on the "login node", then break one video.
    plan = slurm.run(
        [BIN / "epic-extract", "plan", "--videos", videos, "--annotations",
         mini_epic.annotations_dir, "--store", store, "--keep", "sampled", "--num-frames", "2",
         "--shards", "2"], check=False, timeout=300,
    )  # fmt: skip
    assert plan.returncode == 0, plan.stderr
    manifest = Manifest.load(store)
    broken = manifest.shards[1].videos[0].video_id
    broken_path = next(videos.rglob(f"{broken}.MP4"))
    pristine = tmp_path / "pristine.MP4"
    shutil.copy2(broken_path, pristine)
    broken_path.write_bytes(b"\0" * broken_path.stat().st_size)  # same size, no video

    first = _epic_slurm(slurm, site, "pipeline", *common, *train)
    assert first.returncode == 0, first.stderr
    jobs = _jobs(first.stdout)
    assert list(jobs) == ["extract", "check", "train", "validate"], first.stdout
    # While that chain is queued, a second is refused, naming its jobs.
    again = _epic_slurm(slurm, site, "pipeline", *common, *train)
    assert again.returncode == 2 and "still queued or running" in again.stderr
    assert jobs["extract"][0] in again.stderr

    ends = slurm.wait([job_id for job_id, _ in jobs.values()], timeout=600)
    extract = jobs["extract"][0]
    assert ends[f"{extract}_0"].state == "COMPLETED"
    assert (ends[f"{extract}_1"].state, ends[f"{extract}_1"].exit_code) == ("FAILED", 3)
    check_id = jobs["check"][0]
    assert (ends[check_id].state, ends[check_id].exit_code) == ("FAILED", 5)
    assert ends[jobs["train"][0]].state == "CANCELLED"  # --kill-on-invalid-dep, no hang
    check_log = Path(jobs["check"][1]).read_text()
    assert broken in check_log
    resubmit = f"epic-slurm submit --site {site} extract --store {store} --array 1"
    assert resubmit in check_log  # complete for the site, runnable as printed
    assert f"slurm job {check_id} restart 0" in check_log.splitlines()[0]  # the header

    # Repaired, the rerun submits only the failed index, then the rest of the chain.
    shutil.copy2(pristine, broken_path)
    second = _epic_slurm(slurm, site, "pipeline", *common, *train)
    assert second.returncode == 0, second.stderr
    jobs = _jobs(second.stdout)
    assert list(jobs) == ["extract", "check", "train", "validate"], second.stdout
    ends = slurm.wait([job_id for job_id, _ in jobs.values()], timeout=900)
    extract = jobs["extract"][0]
    assert [j for j in ends if j.startswith(f"{extract}_")] == [f"{extract}_1"]
    assert all(end.state == "COMPLETED" for end in ends.values()), ends
    order = [ends[f"{extract}_1"], *(ends[jobs[k][0]] for k in ("check", "train", "validate"))]
    assert all(_started_after(b, a) for a, b in itertools.pairwise(order)), order
    assert run_status(run).state == "done"
    assert (run / "val" / "metrics.json").exists()
    check = subprocess.run([BIN / "epic-check", "--store", store], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # Nothing more to do: the third run submits nothing.
    third = _epic_slurm(slurm, site, "pipeline", *common, *train)
    assert third.returncode == 0 and _jobs(third.stdout) == {}, third.stdout + third.stderr


@pytest.fixture(scope="module")
def small_store(mini_epic: MiniEpic, tmp_path_factory) -> Path:
    from preprocess.extract import run_shard
    from preprocess.plan import plan_store

    store = tmp_path_factory.mktemp("slurm_store")
    manifest = plan_store(
        store_root=store,
        annotations_dir=mini_epic.annotations_dir,
        videos_root=mini_epic.videos_dir,
        shards=1,
    )
    for shard in manifest.shards:
        run_shard(store_root=store, shard_index=shard.index, workers=2)
    return store


@pytest.mark.slow
def test_a_training_job_sent_usr1_mid_epoch_requeues_and_finishes(
    slurm, mini_epic: MiniEpic, small_store, tmp_path
):
    site = _site(slurm, tmp_path)
    run = tmp_path / "run"
    submitted = _epic_slurm(
        slurm, site, "submit", "train", "--store", small_store, "--annotations",
        mini_epic.annotations_dir, "--run-dir", run, "--",
        *TRAIN, "--epochs", "2", "--limit-batches", "6", "--log-every", "1",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id, log = re.search(r"train: job (\S+), log (\S+)", submitted.stdout).groups()
    log = Path(log)
    deadline = time.monotonic() + 300
    while "epoch 1/2 step 2/" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, slurm.diagnostics()
        assert slurm.queue(job_id), (log.read_text() if log.exists() else "") + slurm.diagnostics()
        time.sleep(0.5)
    # What --signal=B:USR1@300 does before the time limit: USR1 to the batch shell.
    slurm.run(["scancel", "--signal=USR1", "--batch", job_id])
    end = slurm.wait(job_id, timeout=600)[job_id]
    text = log.read_text()
    assert (end.state, end.exit_code, end.requeues) == ("COMPLETED", 0, 1), text
    assert "SIGUSR1 received by this process: saved last.pt at epoch 1" in text
    assert f"checkpoint saved; requeueing job {job_id}" in text
    headers = [line for line in text.splitlines() if " | command: epic-train " in line]
    assert any(f"slurm job {job_id} restart 1" in line for line in headers), headers
    assert "resumed from" in text
    with open(run / "summary.csv", newline="") as handle:
        assert [r["epoch"] for r in csv.DictReader(handle)] == ["1", "2"]
    assert run_status(run).state == "done"
    # The first run's end, kept by the second (which ended without a signal).
    marker = json.loads((run / "job_end.json").read_text())
    assert (marker["signal"], marker["job_id"], marker["requeued"]) == ("SIGUSR1", job_id, True)
    assert (marker["array_task_id"], marker["checkpoint"]) == (None, True)


def test_a_job_no_node_can_run_is_refused_instead_of_pending_for_ever(slurm, tmp_path):
    site = _site(slurm, tmp_path)
    site.write_text(site.read_text() + f"EPIC_CHECK_CPUS={slurm.cpus + 1}\n")
    result = _epic_slurm(slurm, site, "submit", "check", "--store", tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"asks {slurm.cpus + 1} CPUs per node" in result.stderr
    assert "EPIC_CHECK_CPUS" in result.stderr and not slurm.queue()


def test_a_chain_slurm_would_refuse_in_part_is_refused_whole_before_any_job_is_sent(
    slurm, mini_epic: MiniEpic, tmp_path
):
    """A GPU request this node cannot meet: sbatch --test-only refuses the training job,
    so the extraction and check jobs before it are never submitted (they were, issue 21)."""
    from preprocess.plan import plan_store

    site = _site(slurm, tmp_path)
    site.write_text(site.read_text() + "EPIC_GPU_REQUEST='--gres=gpu:{n}'\n")
    store = tmp_path / "store"
    plan_store(
        store_root=store, annotations_dir=mini_epic.annotations_dir,
        videos_root=mini_epic.videos_dir, shards=1, keep="sampled", num_frames=(2,),
    )  # fmt: skip
    result = _epic_slurm(
        slurm, site, "pipeline", "--annotations", mini_epic.annotations_dir, "--store", store,
        "--run-dir", tmp_path / "run", "--", *TRAIN, "--epochs", "1",
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "sbatch --test-only refused the train job" in result.stderr
    assert "--gres=gpu:1" in result.stderr and not slurm.queue()
    assert _jobs(result.stdout) == {}


@pytest.mark.slow
def test_a_2_task_sweep_array_trains_two_run_folders_and_summarises_them(
    slurm, mini_epic: MiniEpic, small_store, tmp_path
):
    site = _site(slurm, tmp_path)
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "lr: [0.001, 0.002]\nfixed:\n  epochs: 1\n  crop_size: 64\n  num_frames: 2\n"
        "  batch_size: 8\n  weights: none\n  deterministic: true\n  limit_batches: 4\n"
    )
    runs = tmp_path / "runs"
    submitted = _epic_slurm(
        slurm, site, "sweep", "--grid", grid, "--store", small_store,
        "--annotations", mini_epic.annotations_dir, "--runs-root", runs,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = re.search(r"job (\d+)", submitted.stdout).group(1)
    ends = slurm.wait(job_id, timeout=600)
    assert sorted(ends) == [f"{job_id}_0", f"{job_id}_1"]
    assert all(end.state == "COMPLETED" for end in ends.values()), ends
    assert sorted(p.name for p in runs.iterdir() if p.is_dir()) == ["lr1e-3", "lr2e-3"]
    summary = _epic_slurm(slurm, site, "summary", runs)
    assert summary.returncode == 0, summary.stderr
    lines = [line for line in summary.stdout.splitlines() if line.startswith("lr")]
    assert len(lines) == 2 and all(" done " in line for line in lines), summary.stdout
    with open(runs / "sweep_summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["name"] for r in rows) == ["lr1e-3", "lr2e-3"]
    # Everything done: the same command submits nothing.
    again = _epic_slurm(
        slurm, site, "sweep", "--grid", grid, "--store", small_store,
        "--annotations", mini_epic.annotations_dir, "--runs-root", runs,
    )  # fmt: skip
    assert again.returncode == 0 and "job" not in again.stdout, again.stdout
