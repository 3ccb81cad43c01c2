"""The test cluster of tests/slurm/conftest.py gives later SLURM tests what they rely on:
final states and exit codes of jobs and array tasks, dependencies that can never be met
cancelled rather than left pending, a requeued job running again within seconds, and waits
that fail with the queue and the logs instead of hanging."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm


def test_job_completes_with_exit_code_0(slurm, tmp_path: Path):
    out = tmp_path / "out.txt"
    job = slurm.sbatch(f"--output={out}", "--wrap", "echo hello from $SLURM_JOB_ID")
    end = slurm.wait(job, timeout=60)[job]
    assert (end.state, end.exit_code, end.signal, end.requeues) == ("COMPLETED", 0, 0, 0)
    assert out.read_text() == f"hello from {job}\n"
    assert slurm.state(job) == "COMPLETED"


def test_failing_job_is_failed_with_its_exit_code(slurm):
    job = slurm.sbatch("--output=/dev/null", "--wrap", "exit 3")
    end = slurm.wait(job, timeout=60)[job]
    assert (end.state, end.exit_code, end.signal) == ("FAILED", 3, 0)


def test_array_tasks_end_each_with_its_own_state(slurm):
    array = slurm.sbatch("--array=0-1", "--output=/dev/null", "--wrap", "exit $SLURM_ARRAY_TASK_ID")
    ends = slurm.wait(array, timeout=60)
    assert {job: (end.state, end.exit_code) for job, end in ends.items()} == {
        f"{array}_0": ("COMPLETED", 0),
        f"{array}_1": ("FAILED", 1),
    }
    assert slurm.wait(f"{array}_1", timeout=10)[f"{array}_1"].exit_code == 1
    assert slurm.state(f"{array}_0") == "COMPLETED"


def test_afterok_on_a_failed_job_is_cancelled_with_kill_on_invalid_dep(slurm):
    failed = slurm.sbatch("--output=/dev/null", "--wrap", "exit 1")
    dependent = slurm.sbatch(
        f"--dependency=afterok:{failed}",
        "--kill-on-invalid-dep=yes",
        "--output=/dev/null",
        "--wrap",
        "true",
    )
    ends = slurm.wait([failed, dependent], timeout=60)
    assert ends[failed].state == "FAILED"
    assert ends[dependent].state == "CANCELLED"
    assert ends[dependent].record["NodeList"] == "(null)"  # it never ran


def test_array_cancelled_by_its_dependency_reports_every_task(slurm):
    """Tasks that never started share one completion line (the array's own job id)."""
    failed = slurm.sbatch("--output=/dev/null", "--wrap", "exit 1")
    array = slurm.sbatch(
        f"--dependency=afterok:{failed}",
        "--kill-on-invalid-dep=yes",
        "--array=0-2",
        "--output=/dev/null",
        "--wrap",
        "true",
    )
    ends = slurm.wait(array, timeout=60)
    assert {job: end.state for job, end in ends.items()} == {
        f"{array}_{task}": "CANCELLED" for task in range(3)
    }


def test_afterok_on_a_failed_job_without_kill_on_invalid_dep_stays_pending(slurm):
    """Why job chains must pass --kill-on-invalid-dep=yes: without it the dependent job
    waits for ever (the autouse fixture cancels it after the test)."""
    failed = slurm.sbatch("--output=/dev/null", "--wrap", "exit 1")
    dependent = slurm.sbatch(
        f"--dependency=afterok:{failed}", "--output=/dev/null", "--wrap", "true"
    )
    slurm.wait(failed, timeout=60)
    deadline = time.monotonic() + 20
    while (rows := slurm.queue(dependent))[0]["reason"] != "DependencyNeverSatisfied":
        assert time.monotonic() < deadline, rows
        time.sleep(0.5)
    assert rows == [dict(job_id=dependent, state="PENDING", reason="DependencyNeverSatisfied")]


@pytest.mark.slow
def test_requeued_job_runs_again_within_seconds(slurm, tmp_path: Path):
    """SLURM's default would hold the requeued job for 121 s (AuthInfo cred_expire)."""
    runs = tmp_path / "runs"
    script = (
        f'n="${{SLURM_RESTART_COUNT:-0}}"; echo "$n" >> {runs}; '
        'if [ "$n" = 0 ]; then scontrol requeue "$SLURM_JOB_ID"; sleep 60; fi'
    )
    start = time.monotonic()
    job = slurm.sbatch("--requeue", "--output=/dev/null", "--wrap", script)
    end = slurm.wait(job, timeout=60)[job]
    assert runs.read_text().split() == ["0", "1"]
    assert (end.state, end.exit_code, end.requeues) == ("COMPLETED", 0, 1)
    assert time.monotonic() - start < 40


def test_srun_starts_one_process_per_task_inside_a_batch_job(slurm, tmp_path: Path):
    """The multi-GPU script's launcher: srun steps run inside the batch allocation."""
    tasks = min(2, slurm.cpus)
    out = tmp_path / "out.txt"
    job = slurm.sbatch(
        f"--ntasks={tasks}", f"--output={out}", "--wrap", "srun sh -c 'echo rank $SLURM_PROCID'"
    )
    assert slurm.wait(job, timeout=60)[job].state == "COMPLETED"
    assert sorted(out.read_text().splitlines()) == [f"rank {r}" for r in range(tasks)]


@pytest.mark.slow
def test_wait_fails_with_the_queue_and_the_logs_instead_of_hanging(slurm):
    job = slurm.sbatch("--output=/dev/null", "--wrap", "sleep 300")
    with pytest.raises(pytest.fail.Exception, match=rf"(?s)jobs {job} still in the queue.*slurmd"):
        slurm.wait(job, timeout=2)
    slurm.cancel_all()
    assert slurm.queue() == []
    assert slurm.wait(job, timeout=10)[job].state == "CANCELLED"


def test_cluster_is_isolated_from_the_callers_slurm_settings(slurm):
    assert slurm.env["SLURM_CONF"] == str(slurm.conf)
    assert [k for k in slurm.env if k.startswith(("SBATCH_", "SLURM_"))] == ["SLURM_CONF"]
    partitions = slurm.run(["sinfo", "--noheader", "--format=%P %c"]).stdout.split()
    assert partitions == [f"{slurm.partition}*", str(slurm.cpus)]
