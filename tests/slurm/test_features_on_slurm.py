"""slurm/features.sbatch on a real SLURM: a per-frame extraction sent USR1 mid-way stops
after a chunk, requeues itself, resumes with --resume and ends with the same files as an
uninterrupted job's."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest

from epicdata.synthetic import MiniEpic
from train.config import TrainConfig
from train.fit import fit

pytestmark = pytest.mark.slurm

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
#: Tiny CPU training (as tests/train's FAST): 64-px crops, 2 frames, two batches.
FAST = dict(crop_size=64, num_frames=2, batch_size=8, lr=1e-3, weights="none", workers=0)
FAST |= dict(log_every=0, deterministic=True, epochs=1, limit_batches=2)
#: One frame per batch: several hundred batches, chunks of 8, seconds of work to stop.
EXTRACT = ["--per-frame", "--batch-size", "1"]


def _site(slurm, folder: Path) -> Path:
    """The CPU site example, pointed at this cluster's partition, this venv and ``folder``."""
    site = folder / "site.env"
    site.write_text(
        f"source {REPO / 'slurm' / 'sites' / 'cpu.env'}\n"
        f"EPIC_PARTITION_CPU={slurm.partition}\nEPIC_PARTITION_GPU={slurm.partition}\n"
        f"EPIC_VENV={sys.prefix}\nEPIC_LOGS={folder / 'logs'}\n"
    )
    return site


@pytest.fixture(scope="module")
def store_and_checkpoint(mini_epic: MiniEpic, tmp_path_factory) -> tuple[Path, Path]:
    """Every frame of the mini-EPIC (--per-frame reads 3.5 s before each action) and a
    checkpoint of two training steps on it."""
    from preprocess.extract import run_shard
    from preprocess.plan import plan_store

    store = tmp_path_factory.mktemp("features_store")
    manifest = plan_store(
        store_root=store,
        annotations_dir=mini_epic.annotations_dir,
        videos_root=mini_epic.videos_dir,
        keep="all",
        shards=1,
    )
    for shard in manifest.shards:
        run_shard(store_root=store, shard_index=shard.index, workers=2)
    run = tmp_path_factory.mktemp("features_run") / "run"
    cfg = TrainConfig(
        store=str(store), annotations=str(mini_epic.annotations_dir), output_dir=str(run), **FAST
    )
    assert fit(cfg) == 0
    return store, run / "last.pt"


def _submit(slurm, site: Path, store: Path, checkpoint: Path, annotations: Path, out: Path):
    submitted = slurm.run(
        [BIN / "epic-slurm", "submit", "features", "--store", store, "--annotations",
         annotations, "--checkpoint", checkpoint, "--out", out, "--", *EXTRACT],
        env={"EPIC_SITE": str(site)}, check=False, timeout=300,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job_id, log = re.search(r"features: job (\S+), log (\S+)", submitted.stdout).groups()
    return job_id, Path(log)


def _files(root: Path) -> dict[str, bytes]:
    """Every file of an output folder but the job's marker and LMDB's lock file."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in ("job_end.json", "lock.mdb")
    }


@pytest.mark.slow
def test_a_features_job_sent_usr1_mid_way_requeues_and_ends_as_an_uninterrupted_one(
    slurm, mini_epic: MiniEpic, store_and_checkpoint, tmp_path
):
    store, checkpoint = store_and_checkpoint
    site = _site(slurm, tmp_path)
    args = (site, store, checkpoint, mini_epic.annotations_dir)
    whole_id, whole_log = _submit(slurm, *args, tmp_path / "whole")
    end = slurm.wait(whole_id, timeout=600)[whole_id]
    assert (end.state, end.exit_code, end.requeues) == ("COMPLETED", 0, 0), whole_log.read_text()

    out = tmp_path / "stopped"
    job_id, log = _submit(slurm, *args, out)
    deadline = time.monotonic() + 300
    while "extracting from chunk 0" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, slurm.diagnostics()
        assert slurm.queue(job_id), (log.read_text() if log.exists() else "") + slurm.diagnostics()
        time.sleep(0.2)
    # What --signal=B:USR1@300 does before the time limit: USR1 to the batch shell.
    slurm.run(["scancel", "--signal=USR1", "--batch", job_id])
    end = slurm.wait(job_id, timeout=600)[job_id]
    text = log.read_text()
    assert (end.state, end.exit_code, end.requeues) == ("COMPLETED", 0, 1), text
    assert "SIGUSR1: stopped after a chunk; exiting with 75" in text
    assert f"requeueing job {job_id}" in text
    headers = [line for line in text.splitlines() if " | command: epic-features " in line]
    assert any(f"slurm job {job_id} restart 1" in line for line in headers), headers
    resumed = re.findall(r"extracting from chunk (\d+)", text)
    assert resumed[0] == "0" and int(resumed[1]) >= 1, resumed
    marker = json.loads((out / "job_end.json").read_text())
    assert (marker["signal"], marker["job_id"], marker["requeued"]) == ("SIGUSR1", job_id, True)
    assert _files(out) == _files(tmp_path / "whole")
