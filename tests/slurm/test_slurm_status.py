"""epic-slurm summary against a real SLURM's queue (issue 21 item 2): a sweep's array tasks
as squeue lists them (held, so nothing runs), and the same runs once they are cancelled,
which used to show as ``running`` for ever."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from epicslurm.sweep import ACTION_COLUMN, load_grid, sweep_key, write_sweep

pytestmark = pytest.mark.slurm

BIN = Path(sys.executable).parent


def _statuses(slurm, runs: Path) -> dict[str, str]:
    result = slurm.run([BIN / "epic-slurm", "summary", runs], check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return {
        line.split()[0]: line.split()[1]
        for line in result.stdout.splitlines()
        if line.startswith("lr")
    }


def test_summary_reads_the_queue_and_a_cancelled_run_is_stopped(slurm, tmp_path):
    runs = tmp_path / "runs"
    grid = tmp_path / "grid.yaml"
    grid.write_text("lr: [1e-4, 2e-4, 3e-4]\nfixed: {epochs: 3}\n")
    write_sweep(runs, load_grid(grid))
    for name, marker in (("lr1e-4", None), ("lr3e-4", True)):  # lr2e-4: not started
        run = runs / name
        run.mkdir()
        (run / "config.yaml").write_text("epochs: 3\n")
        (run / "summary.csv").write_text(f"epoch,{ACTION_COLUMN}\n1,5.0\n")
        if marker is not None:
            (run / "job_end.json").write_text(
                json.dumps(
                    {
                        "signal": "SIGUSR1",
                        "job_id": "1",
                        "array_task_id": "2",
                        "date": "2026-12-06T10:00:00+00:00",
                        "requeued": True,
                        "checkpoint": True,
                    }
                )  # fmt: skip
            )
    job = slurm.sbatch(
        "--hold", "--array=0-2", f"--comment={sweep_key(runs)}", "--output=/dev/null",
        "--wrap", "sleep 60",
    )  # fmt: skip
    try:
        assert _statuses(slurm, runs) == {
            "lr1e-4": "requeued",
            "lr2e-4": "pending",
            "lr3e-4": "requeued",
        }
    finally:
        slurm.run(["scancel", job])
    slurm.wait(job, timeout=60)
    assert _statuses(slurm, runs) == {"lr1e-4": "stopped", "lr2e-4": "pending", "lr3e-4": "stopped"}
