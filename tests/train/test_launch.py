"""How ranks are found under torchrun, srun and in a job's batch shell, and the multi-GPU job
script run as 2 nodes x 1 task on this machine (fake ``srun`` and ``scontrol`` from
tests/fakes/, gloo on CPU)."""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from epicdata.errors import EpicInputError, ExitCode
from train import distributed
from train.distributed import DistInfo

REPO = Path(__file__).resolve().parents[2]
FAKES = REPO / "tests" / "fakes"
BIN = Path(sys.executable).parent
#: Generous for 2 busy CPU cores; only a hang comes near it.
RUN_TIMEOUT_S = 600
#: A refusal reads the environment before anything else: far less than this.
REFUSE_TIMEOUT_S = 60

#: What SLURM gives the batch shell of `sbatch --nodes 2 --ntasks-per-node 1`: the
#: allocation's SLURM_NTASKS, SLURM_PROCID/LOCALID/NODEID 0, no SLURM_STEP_* variable
#: (sbatch(1), OUTPUT ENVIRONMENT VARIABLES). SLURM_JOB_ID is added per test.
BATCH_SHELL = {
    "SLURM_JOB_NAME": "epic-train-ddp",
    "SLURM_JOB_NODELIST": "localhost,127.0.0.1",
    "SLURM_NODELIST": "localhost,127.0.0.1",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_NNODES": "2",
    "SLURM_NTASKS": "2",
    "SLURM_NPROCS": "2",
    "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_TASKS_PER_NODE": "1(x2)",
    "SLURM_CPUS_PER_TASK": "1",
    "SLURM_JOB_CPUS_PER_NODE": "1(x2)",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "ENVIRONMENT": "BATCH",
}
#: What srun adds for task 1 of a 2-node x 1-task step (srun(1), OUTPUT ENVIRONMENT
#: VARIABLES): on the second node, local rank 0.
SRUN_TASK_1 = {
    "SLURM_PROCID": "1",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "1",
    "SLURM_STEP_ID": "0",
    "SLURM_STEP_NUM_TASKS": "2",
    "SLURM_STEP_NUM_NODES": "2",
}


def _launcher_free(environ: dict[str, str]) -> dict[str, str]:
    """``environ`` without what a launcher sets (the tests may run inside a real job)."""
    launcher = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    return {k: v for k, v in environ.items() if not k.startswith("SLURM_") and k not in launcher}


@pytest.fixture
def launch_env(monkeypatch: pytest.MonkeyPatch):
    """``launch_env(**variables)``: exactly these launcher variables in os.environ."""
    for name in set(os.environ) - set(_launcher_free(dict(os.environ))):
        monkeypatch.delenv(name)

    def apply(**variables: str) -> None:
        for name, value in variables.items():
            monkeypatch.setenv(name, value)

    return apply


def test_torchrun_variables_win_even_in_a_batch_shell(launch_env):
    launch_env(SLURM_JOB_ID="7", **BATCH_SHELL, RANK="3", WORLD_SIZE="4", LOCAL_RANK="1")
    assert distributed.discover(batch_shell="refuse") == DistInfo(3, 4, 1)


@pytest.mark.parametrize("task", [0, 1])
def test_an_srun_step_of_2_nodes_x_1_task_is_world_2_local_rank_0(launch_env, task):
    step = {**SRUN_TASK_1, "SLURM_PROCID": str(task), "SLURM_NODEID": str(task)}
    launch_env(SLURM_JOB_ID="7", **{**BATCH_SHELL, **step})
    assert distributed.discover(batch_shell="refuse") == DistInfo(task, 2, 0)


def test_the_step_size_is_the_world_not_the_allocation(launch_env):
    # `srun --ntasks 1 --preserve-env` in a 2-task job: SLURM_NTASKS stays at 2.
    step = {**SRUN_TASK_1, "SLURM_PROCID": "0", "SLURM_NODEID": "0", "SLURM_STEP_NUM_TASKS": "1"}
    launch_env(SLURM_JOB_ID="7", **{**BATCH_SHELL, **step})
    assert distributed.discover(batch_shell="refuse") == DistInfo()


def test_the_batch_shell_of_a_2_task_job_refuses_or_is_one_process(launch_env):
    launch_env(SLURM_JOB_ID="7", **BATCH_SHELL)
    with pytest.raises(EpicInputError) as raised:
        distributed.discover(batch_shell="refuse")
    assert raised.value.exit_code == ExitCode.BAD_INPUT
    assert "`srun epic-train" in str(raised.value) and "SLURM_NTASKS=2" in str(raised.value)
    assert distributed.discover(batch_shell="single") == DistInfo()
    assert distributed.discover() == DistInfo()


@pytest.mark.parametrize("mode", ["refuse", "single"])
def test_a_single_task_job_and_no_job_are_one_process(launch_env, mode):
    assert distributed.discover(batch_shell=mode) == DistInfo()
    launch_env(SLURM_JOB_ID="7", SLURM_NTASKS="1", SLURM_PROCID="0", SLURM_LOCALID="0")
    assert distributed.discover(batch_shell=mode) == DistInfo()


def test_init_in_the_batch_shell_refuses_or_warns_and_joins_nothing(launch_env, caplog):
    launch_env(SLURM_JOB_ID="7", **BATCH_SHELL)
    with pytest.raises(EpicInputError, match="srun"):
        distributed.init("cpu")
    with caplog.at_level(logging.WARNING, logger="train.distributed"):
        assert distributed.init("cpu", batch_shell="single") == DistInfo()
    assert "SLURM_NTASKS=2 but not started by srun: running as one process" in caplog.text
    assert not torch.distributed.is_initialized()


def test_ranks_without_a_rendezvous_address_are_told_where_to_set_it(launch_env):
    launch_env(SLURM_JOB_ID="7", **{**BATCH_SHELL, **SRUN_TASK_1})
    with pytest.raises(EpicInputError) as raised:
        distributed.init("cpu")
    assert raised.value.exit_code == ExitCode.BAD_INPUT
    message = str(raised.value)
    assert "MASTER_ADDR and MASTER_PORT" in message and "slurm/train_multi.sbatch" in message


# ----------------------------------------------------------------------- the job script


def _free_port() -> int:
    """A free port the script's own rule (20000 + job id % 20000) gives for job id = port."""
    for port in range(20000 + os.getpid() % 19000, 40000):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-39999")


def _flags(options: dict) -> list[str]:
    args: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        args += [flag] if value is True else [flag, str(value)]
    return args


def _run(command: list, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """``command`` in its own process group, killed whole (srun's tasks too) on timeout."""
    process = subprocess.Popen(
        [str(c) for c in command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"{command[0]} still running after {timeout} s (hung):\n{err[-3000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def _batch_shell_env(tmp_path: Path, mini_store, run: Path) -> dict[str, str]:
    """The batch shell of a 2-node x 1-task job whose "nodes" are both this machine, with
    the fakes first on PATH and this venv next."""
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    for name in ("srun", "scontrol"):
        shutil.copy(FAKES / name, fakes / name)
        (fakes / name).chmod(0o755)  # whatever the checkout kept of the mode
    job_id = str(_free_port())
    # The CPU site example with this venv, as epic-slurm submit would pass it.
    site = tmp_path / "site.env"
    site.write_text(
        f"source {REPO / 'slurm' / 'sites' / 'cpu.env'}\n"
        f"EPIC_VENV={BIN.parent}\nEPIC_LOGS={tmp_path / 'logs'}\n"
    )
    return {
        **_launcher_free(dict(os.environ)),
        **BATCH_SHELL,
        "SLURM_JOB_ID": job_id,
        "SLURM_JOBID": job_id,
        "SLURM_SUBMIT_DIR": str(tmp_path),
        "PATH": os.pathsep.join([str(fakes), str(BIN), os.environ.get("PATH", "")]),
        "FAKE_SLURM_DIR": str(tmp_path),
        "EPIC_STORE": str(mini_store.store),
        "EPIC_ANNOTATIONS": str(mini_store.annotations),
        "EPIC_RUN_DIR": str(run),
        "EPIC_SCRIPTS": str(REPO / "slurm"),
        "EPIC_SITE": str(site),
        "OMP_NUM_THREADS": "1",
    }


@pytest.fixture(scope="module")
def two_node_run(mini_store, fast_options, tmp_path_factory):
    """slurm/train_multi.sbatch run by bash as a 2-node x 1-task job: 1 epoch."""
    tmp_path = tmp_path_factory.mktemp("two_node")
    run = tmp_path / "run"
    env = _batch_shell_env(tmp_path, mini_store, run)
    script = REPO / "slurm" / "train_multi.sbatch"
    result = _run(["bash", script, *_flags({**fast_options, "epochs": 1})], env, RUN_TIMEOUT_S)
    return run, result, tmp_path, env


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "summary.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_train_multi_sbatch_on_2_nodes_x_1_task_trains_both_ranks_together(two_node_run):
    run, result, fake_dir, _ = two_node_run
    assert result.returncode == 0, result.stderr[-5000:]
    # One task per "node", both started by srun, and they trained as one 2-process job.
    tasks = [line.split()[:2] for line in (fake_dir / "tasks").read_text().splitlines()]
    assert tasks == [["0", "0"], ["1", "1"]]
    assert "2 process(es)" in result.stderr
    assert "master localhost:" in result.stdout
    # The job's header says which torch it runs with (the module's or the venv's).
    assert re.search(r"\| python \S+, torch \S+ \((CUDA \S+|CPU build), /", result.stdout)
    assert not (fake_dir / "requeued").exists()
    assert [r["epoch"] for r in _rows(run)] == ["1"]  # written once, by rank 0
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["epoch"] == 1
    assert not any(key.startswith("module.") for key in state["model"])


@pytest.mark.slow
def test_epic_validate_in_the_batch_shell_is_one_process_with_the_ddp_run_metrics(
    two_node_run, mini_store, tmp_path
):
    # Without srun in that job's batch shell: one process, a warning, and the metrics the
    # two ranks logged for the same weights over exactly the validation set.
    run, trained, _, env = two_node_run
    assert trained.returncode == 0, trained.stderr[-5000:]
    env = {**env, "MASTER_ADDR": "localhost", "MASTER_PORT": env["SLURM_JOB_ID"]}
    command = [BIN / "epic-validate", "--checkpoint", run / "last.pt"]
    command += ["--store", mini_store.store, "--annotations", mini_store.annotations]
    command += ["--split", "validation", "--workers", "0", "--device", "cpu"]
    command += ["--output-dir", tmp_path / "check"]
    result = _run(command, env, RUN_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-5000:]
    assert "SLURM_NTASKS=2 but not started by srun: running as one process" in result.stderr
    metrics = json.loads((tmp_path / "check" / "metrics.json").read_text())
    row = _rows(run)[0]
    for key, value in metrics.items():
        assert abs(float(row[f"val_{key}"]) - value) < 1e-6, key


@pytest.mark.slow
def test_epic_train_in_the_batch_shell_of_a_2_task_job_exits_2_naming_srun(
    mini_store, fast_options, tmp_path
):
    # The hang of issue 10: epic-train without srun in the batch shell waited for rank 1.
    run = tmp_path / "run"
    env = _batch_shell_env(tmp_path, mini_store, run)
    env.update(MASTER_ADDR="localhost", MASTER_PORT=env["SLURM_JOB_ID"])
    command = [BIN / "epic-train", "--store", mini_store.store]
    command += ["--annotations", mini_store.annotations, "--output-dir", run]
    result = _run([*command, *_flags({**fast_options, "epochs": 1})], env, REFUSE_TIMEOUT_S)
    assert result.returncode == ExitCode.BAD_INPUT, result.stderr
    assert "error: not started by srun, but the SLURM job has 2 tasks" in result.stderr
    assert "`srun epic-train ...`" in result.stderr and "Traceback" not in result.stderr
    assert not run.exists()  # refused before anything was written


@pytest.mark.slow
def test_usr1_to_the_ranks_of_train_multi_sbatch_saves_and_requeues(
    mini_store, fast_options, tmp_path
):
    # --signal=USR1@300 (no "B:"): SLURM signals the step's tasks, not the batch shell. The
    # ranks agree to stop (every STOP_SYNC_STEPS steps or at the epoch's end, here the end),
    # rank 0 saves last.pt, both exit 75, srun reports 75 and the script requeues.
    run = tmp_path / "run"
    env = _batch_shell_env(tmp_path, mini_store, run)
    options = {**fast_options, "epochs": 1, "limit_batches": 6, "log_every": 1}
    process = subprocess.Popen(
        ["bash", str(REPO / "slurm" / "train_multi.sbatch"), *_flags(options)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    # A hang must end the test: the watchdog kills the whole job, and the pipes close.
    watchdog = threading.Timer(RUN_TIMEOUT_S, os.killpg, (process.pid, signal.SIGKILL))
    watchdog.start()
    try:
        for line in process.stderr:
            if " step 1/" in line:
                for task in (tmp_path / "tasks").read_text().splitlines():
                    os.kill(int(task.split()[2]), signal.SIGUSR1)
                break
        err = process.stderr.read()
        out = process.stdout.read()
        code = process.wait()
    finally:
        watchdog.cancel()
    assert code == 0, err[-5000:]
    assert f"checkpoint saved; requeueing job {env['SLURM_JOB_ID']}" in out
    assert (tmp_path / "requeued").read_text().split() == [env["SLURM_JOB_ID"]]
    assert "SIGUSR1 received by this process (rank 0)" in err
    assert "exiting with 75 to requeue" in err
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1
