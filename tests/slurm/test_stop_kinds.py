"""The four ways a training job is stopped (issue 21, docs/cluster.md section 5): a plain
``scancel`` stops it (CANCELLED, not requeued, last.pt and RUN/job_end.json kept, exit 76)
and the command its log prints, or the same ``epic-slurm pipeline`` again, resumes it; the
pre-timeout SIGUSR1 of ``--signal`` and ``scontrol requeue`` requeue it and it resumes
(``scancel --signal=USR1 --batch``: test_pipeline_on_slurm.py). First the decision itself,
slurm/lib.sh in bash with a fake scontrol and a fake command, for every signal and exit
code: no daemons, about a second."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from epicdata.errors import ExitCode
from epicdata.synthetic import MiniEpic

pytestmark = pytest.mark.slurm

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
LIB = REPO / "slurm" / "lib.sh"
#: Tiny CPU trainings (as test_pipeline_on_slurm.py's): 64-px crops, 2 frames, a few batches.
TRAIN = ["--crop-size", "64", "--num-frames", "2", "--batch-size", "8", "--lr", "1e-3"]
TRAIN += ["--weights", "none", "--deterministic", "--log-every", "1"]

# ----------------------------------------------------------------------------- the decision

#: The batch shell of a training job, cut to what slurm/lib.sh decides.
DRIVER = """\
set -uo pipefail
source "${LIB}"
rc=0
epic_run_resumable "${RUN}" "${CHILD}" || rc=$?
epic_finish "${RUN}" "${rc}" epic-slurm submit train --run-dir "${RUN}"
"""
#: The command the shell runs (epic-train's part): FAKE_CHILD says what it does on SIGUSR1.
CHILD = """\
#!/bin/bash
case ${FAKE_CHILD} in
    save) trap 'exit 75' USR1 ;;        # saves last.pt and exits 75, as epic-train does
    fail) trap 'exit 2' USR1 ;;         # fails meanwhile
    hang) trap '' USR1 ;;               # cannot save before KillWait
    die) ;;                             # USR1 kills it: its handler was not in place yet
    exit:*) exit "${FAKE_CHILD#exit:}" ;;
esac
echo $$ >> "${READY}"
while true; do sleep 0.05; done
"""
SCONTROL = """\
#!/bin/sh
case "$1" in
    requeue) echo "$2" >> "${FAKE_DIR}/requeued" ;;
    show) echo "JobId=$4 JobName=epic-train JobState=COMPLETING Restarts=${FAKE_RESTARTS:-0}" ;;
    *) exit 1 ;;
esac
"""


def _fakes(tmp_path: Path, child: str = "child") -> Path:
    """A folder with the fake scontrol and CHILD (named ``child``), to put first on PATH."""
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    for name, text in (("scontrol", SCONTROL), (child, CHILD)):
        (fakes / name).write_text(text)
        (fakes / name).chmod(0o755)
    return fakes


def _start(command: list[str | Path], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [str(word) for word in command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _batch_shell(tmp_path: Path, child: str, **env: str) -> tuple[subprocess.Popen, Path]:
    """DRIVER started as SLURM would start the batch shell of job 7; returns it and RUN."""
    fakes = _fakes(tmp_path)
    (tmp_path / "driver.sh").write_text(DRIVER)
    run = tmp_path / "run"
    variables = {
        "PATH": f"{fakes}:/usr/bin:/bin",
        "LIB": str(LIB),
        "RUN": str(run),
        "CHILD": str(fakes / "child"),
        "FAKE_CHILD": child,
        "FAKE_DIR": str(tmp_path),
        "READY": str(tmp_path / "ready"),
        "SLURM_JOB_ID": "7",
        **env,
    }
    return _start(["bash", tmp_path / "driver.sh"], variables), run


def _signal_when_ready(
    process: subprocess.Popen, tmp_path: Path, signum: int, tasks: int = 1
) -> None:
    """Send ``signum`` to the batch shell once ``tasks`` commands have their trap in place."""
    ready = tmp_path / "ready"
    deadline = time.monotonic() + 20
    while len(ready.read_text().split() if ready.exists() else []) < tasks:
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the command never started:\n{_output(process)}")
        time.sleep(0.02)
    process.send_signal(signum)


def _output(process: subprocess.Popen) -> str:
    """The batch shell's output once it has ended; a hang kills its whole group and fails."""
    try:
        return process.communicate(timeout=30)[0]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"the batch shell hung:\n{process.communicate()[0]}")


def _marker(run: Path) -> dict | None:
    path = run / "job_end.json"
    return json.loads(path.read_text()) if path.exists() else None


USR1, TERM = signal.SIGUSR1, signal.SIGTERM
STOPPED = ExitCode.STOPPED
#: (signal to the shell, what the command does, site/SLURM env) -> (exit code, requeued by
#: the script, the marker's signal/requeued/checkpoint, RUN/FAILED written).
DECISIONS = {
    "usr1-saved-requeues": (USR1, "save", {}, 0, True, ("SIGUSR1", True, True), False),
    "term-saved-stops": (TERM, "save", {}, STOPPED, False, ("SIGTERM", False, True), False),
    "term-saved-requeues-on-site-opt-in": (
        TERM, "save", {"EPIC_REQUEUE_ON_TERM": "1"}, 0, True, ("SIGTERM", True, True), False
    ),
    "term-of-scontrol-requeue-is-no-stop": (
        TERM, "save", {"FAKE_RESTARTS": "1"}, 0, False, ("SIGTERM", True, True), False
    ),
    "term-of-scancel-after-a-requeue-stops": (
        TERM, "save", {"FAKE_RESTARTS": "1", "SLURM_RESTART_COUNT": "1"},
        STOPPED, False, ("SIGTERM", False, True), False
    ),
    "term-before-the-handler-stops-unsaved": (
        TERM, "die", {}, STOPPED, False, ("SIGTERM", False, False), False
    ),
    "usr1-before-the-handler-requeues-unsaved": (
        USR1, "die", {}, 0, True, ("SIGUSR1", True, False), False
    ),
    "usr1-then-a-failure-is-a-failure": (
        USR1, "fail", {}, 2, False, ("SIGUSR1", False, False), True
    ),
    # train_multi.sbatch: --signal=USR1@300 without "B:" reaches the ranks, not the shell.
    "75-without-a-signal-to-the-shell-requeues": (
        None, "exit:75", {}, 0, True, ("SIGUSR1", True, True), False
    ),
    "a-failure-without-a-signal-writes-failed": (None, "exit:3", {}, 3, False, None, True),
    "done": (None, "exit:0", {}, 0, False, None, False),
}  # fmt: skip


@pytest.mark.parametrize("case", DECISIONS)
def test_the_job_script_requeues_on_usr1_and_stops_on_term(tmp_path, case):
    signum, child, env, code, requeued, marker, failed = DECISIONS[case]
    process, run = _batch_shell(tmp_path, child, **env)
    run.mkdir()
    if signum is not None:
        _signal_when_ready(process, tmp_path, signum)
    out = _output(process)
    assert process.returncode == code, out
    assert (tmp_path / "requeued").exists() == requeued, out
    if requeued:
        assert (tmp_path / "requeued").read_text().split() == ["7"]
    assert (run / "FAILED").exists() == failed, out
    written = _marker(run)
    if marker is None:
        assert written is None, written
        return
    assert written is not None, out
    assert (written["signal"], written["requeued"], written["checkpoint"]) == marker
    assert (written["job_id"], written["array_task_id"]) == ("7", None)
    assert datetime.fromisoformat(written["date"]).tzinfo is not None
    assert not list(run.glob(".job_end.json.*"))  # written atomically, no temp file left
    if code == STOPPED:
        assert "stopped by SIGTERM" in out and "not requeued (exit 76)" in out
        assert f"to resume, run: epic-slurm submit train --run-dir {run}" in out


def test_a_stopped_sweep_task_names_its_array_index(tmp_path):
    process, run = _batch_shell(tmp_path, "save", SLURM_ARRAY_TASK_ID="4")
    run.mkdir()
    _signal_when_ready(process, tmp_path, TERM)
    out = _output(process)
    assert process.returncode == STOPPED, out
    assert _marker(run)["array_task_id"] == "4"


def test_a_command_that_cannot_save_before_killwait_leaves_a_marker_that_says_stopped(
    tmp_path,
):
    # SLURM sends SIGKILL KillWait seconds after SIGTERM, to the batch shell too: the marker
    # written at SIGTERM is what is left (no checkpoint for the partial epoch).
    process, run = _batch_shell(tmp_path, "hang")
    run.mkdir()
    _signal_when_ready(process, tmp_path, TERM)
    deadline = time.monotonic() + 20
    while _marker(run) is None:
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the shell and its command, as SLURM does
    _output(process)
    marker = _marker(run)
    assert (marker["signal"], marker["requeued"], marker["checkpoint"]) == ("SIGTERM", False, False)
    assert not (run / "FAILED").exists()


def test_a_job_stopped_before_the_run_folder_exists_writes_no_marker(tmp_path):
    # Nothing to resume: a marker would make a run folder of nothing but job_end.json.
    process, run = _batch_shell(tmp_path, "save")
    _signal_when_ready(process, tmp_path, TERM)
    out = _output(process)
    assert process.returncode == STOPPED, out
    assert not run.exists()


def test_scancel_stops_train_multi_too_through_srun(tmp_path):
    # train_multi.sbatch: the shell passes the SIGTERM on to srun as SIGUSR1, srun to the
    # ranks; both save, srun exits 75, and the job stops with the train-multi line to resume.
    fakes, run = _fakes(tmp_path, "epic-train"), tmp_path / "run"
    shutil.copy(REPO / "tests" / "fakes" / "srun", fakes / "srun")
    (fakes / "srun").chmod(0o755)
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "activate").write_text("# PATH is the venv\n")
    site = tmp_path / "site.env"
    site.write_text(
        f"source {REPO / 'slurm' / 'sites' / 'cpu.env'}\nEPIC_VENV={tmp_path / 'venv'}\n"
    )
    env = {
        "PATH": f"{fakes}:{BIN}:/usr/bin:/bin",
        "HOME": str(tmp_path),  # the site example's defaults use it
        "FAKE_CHILD": "save",
        "FAKE_DIR": str(tmp_path),
        "READY": str(tmp_path / "ready"),
        "EPIC_SCRIPTS": str(REPO / "slurm"),
        "EPIC_SITE": str(site),
        "EPIC_STORE": str(tmp_path / "store"),
        "EPIC_ANNOTATIONS": str(tmp_path / "ann"),
        "EPIC_RUN_DIR": str(run),
        "SLURM_JOB_ID": "7",
        "SLURM_NTASKS": "2",
        "SLURM_NNODES": "2",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_JOB_NODELIST": "node1,node2",
    }
    run.mkdir()
    command = ["bash", REPO / "slurm" / "train_multi.sbatch", "--epochs", "3"]
    process = _start(command, env)
    _signal_when_ready(process, tmp_path, TERM, tasks=2)
    out = _output(process)
    assert process.returncode == STOPPED, out
    assert not (tmp_path / "requeued").exists() and not (run / "FAILED").exists()
    marker = _marker(run)
    assert (marker["signal"], marker["requeued"], marker["checkpoint"]) == ("SIGTERM", False, True)
    assert f"--site {site} train-multi --nodes 2 --gpus-per-node 1 --store" in out
    assert out.rstrip().endswith("submitted this job)") and "-- --epochs 3 (or again" in out


def test_epic_train_told_to_stop_by_sigterm_and_then_sigusr1_names_sigterm():
    # On scancel SLURM sends SIGTERM to every process of the job and the batch shell passes
    # SIGUSR1 on: the trainer's log must name the SIGTERM, whichever arrives last.
    from train.fit import StopFlag

    stop = StopFlag()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.01)  # the handlers run between bytecodes of the main thread
    finally:
        stop.restore()
    assert stop.signum == signal.SIGTERM


# ----------------------------------------------------------------------------- on SLURM


@pytest.fixture(scope="module")
def store(mini_epic: MiniEpic, tmp_path_factory) -> Path:
    """mini_epic's train and validation videos extracted into one shard."""
    from preprocess.extract import run_shard
    from preprocess.plan import plan_store

    root = tmp_path_factory.mktemp("stop_store")
    manifest = plan_store(
        store_root=root,
        annotations_dir=mini_epic.annotations_dir,
        videos_root=mini_epic.videos_dir,
        shards=1,
    )
    for shard in manifest.shards:
        run_shard(store_root=root, shard_index=shard.index, workers=2)
    return root


def _site(slurm, folder: Path, extra: str = "") -> Path:
    """The CPU site example, pointed at this cluster's partition, this venv and ``folder``."""
    site = folder / "site.env"
    site.write_text(
        f"source {REPO / 'slurm' / 'sites' / 'cpu.env'}\n"
        f"EPIC_PARTITION_CPU={slurm.partition}\nEPIC_PARTITION_GPU={slurm.partition}\n"
        f"EPIC_VENV={sys.prefix}\nEPIC_LOGS={folder / 'logs'}\n"
        f"EPIC_TRAIN_CPUS={min(2, slurm.cpus)}\n{extra}"
    )
    return site


def _submit_train(slurm, site: Path, store: Path, mini_epic: MiniEpic, run: Path, *options):
    """``epic-slurm submit train``; returns (job id, log)."""
    submitted = slurm.run(
        [BIN / "epic-slurm", "submit", "--site", site, "train", "--store", store,
         "--annotations", mini_epic.annotations_dir, "--run-dir", run, "--", *TRAIN, *options],
        check=False,
        timeout=120,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job_id, log = re.search(r"train: job (\S+), log (\S+)", submitted.stdout).groups()
    return job_id, Path(log)


def _wait_for(slurm, job_id: str, log: Path, needle: str, timeout: float = 300) -> str:
    """The log's text once ``needle`` is in it; fails when the job leaves the queue first."""
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text() if log.exists() else ""
        if needle in text:
            return text
        assert time.monotonic() < deadline, f"no {needle!r} in {log}\n{text}{slurm.diagnostics()}"
        assert slurm.queue(job_id), f"left the queue before {needle!r}\n{text}"
        time.sleep(0.5)


def _elapsed_s(slurm, job_id: str) -> int:
    """How long the job has run (squeue's %M: ``M:SS``, ``H:MM:SS`` or ``D-HH:MM:SS``)."""
    text = slurm.run(["squeue", "--noheader", "--format=%M", f"--jobs={job_id}"]).stdout
    days, _, clock = text.strip().rpartition("-")
    seconds = 0
    for part in clock.split(":"):
        seconds = seconds * 60 + int(part)
    return seconds + int(days or 0) * 86400


def _rows(run: Path) -> list[str]:
    text = (run / "summary.csv").read_text().splitlines()
    return [line.split(",", 1)[0] for line in text[1:]]


@pytest.mark.slow
def test_scancel_stops_a_training_job_and_its_printed_command_resumes_it(
    slurm, mini_epic: MiniEpic, store, tmp_path
):
    site, run = _site(slurm, tmp_path), tmp_path / "run"
    # SIGTERM: the step under way and the save must end within the fixture's KillWait (5 s),
    # on a loaded machine too: small steps.
    options = ["--batch-size", "2", "--epochs", "1", "--limit-batches", "12"]
    job_id, log = _submit_train(slurm, site, store, mini_epic, run, *options)
    _wait_for(slurm, job_id, log, "epoch 1/1 step 2/")
    slurm.run(["scancel", job_id])
    end = slurm.wait(job_id, timeout=120)[job_id]
    text = log.read_text()
    assert (end.state, end.requeues) == ("CANCELLED", 0), text
    assert not slurm.queue(job_id)  # not requeued: gone for good
    assert "SIGTERM received by this process: saved last.pt at epoch 1" in text
    assert f"stopped by SIGTERM (scancel, time limit or preemption): last.pt saved, job {job_id} not requeued (exit 76)" in text  # fmt: skip
    assert (run / "last.pt").exists() and not (run / "FAILED").exists()
    marker = json.loads((run / "job_end.json").read_text())
    assert marker["signal"] == "SIGTERM" and marker["job_id"] == job_id
    assert (marker["requeued"], marker["checkpoint"]) == (False, True)

    # The log's last line is the command that resumes it, runnable as printed.
    resume = re.search(r"to resume, run: (.+?) \(or again", text).group(1)
    assert resume.startswith(f"epic-slurm submit --site {site} train ")
    again = slurm.run(shlex.split(resume), check=False, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    second, second_log = re.search(r"train: job (\S+), log (\S+)", again.stdout).groups()
    end = slurm.wait(second, timeout=300)[second]
    text = Path(second_log).read_text()
    assert (end.state, end.exit_code) == ("COMPLETED", 0), text
    assert f"resumed from {run / 'last.pt'} at epoch 1 step " in text
    assert _rows(run) == ["1"]


#: A job line of ``epic-slurm pipeline``'s output: kind, job id, log.
JOB_LINE = re.compile(r"^(extract|check|train|validate)\s+job (\S+)\s+log (\S+)$", re.MULTILINE)


@pytest.mark.slow
def test_scancel_stops_a_pipelines_training_and_the_same_pipeline_resumes_it(
    slurm, mini_epic: MiniEpic, store, tmp_path
):
    from epicslurm.pipeline import run_status

    # Batches of 2: a step (and so the save after it) must end well within the fixture's
    # KillWait of 5 s on a loaded machine, or SIGKILL comes first and no last.pt is left.
    site, run = _site(slurm, tmp_path), tmp_path / "run"
    command = [BIN / "epic-slurm", "pipeline", "--site", site, "--store", store, "--annotations",
               mini_epic.annotations_dir, "--run-dir", run, "--", *TRAIN, "--batch-size", "2",
               "--epochs", "1", "--limit-batches", "12"]  # fmt: skip
    first = slurm.run(command, check=False, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    jobs = {kind: (job, Path(log)) for kind, job, log in JOB_LINE.findall(first.stdout)}
    assert list(jobs) == ["train", "validate"], first.stdout  # the store is complete
    (train, log), (validate, _) = jobs["train"], jobs["validate"]
    _wait_for(slurm, train, log, "epoch 1/1 step 2/")
    slurm.run(["scancel", train])
    ends = slurm.wait([train, validate], timeout=120)
    assert (ends[train].state, ends[train].requeues) == ("CANCELLED", 0), log.read_text()
    assert ends[validate].state == "CANCELLED"  # afterok, --kill-on-invalid-dep
    assert not slurm.queue()
    assert (run / "last.pt").exists() and not (run / "FAILED").exists()
    marker = json.loads((run / "job_end.json").read_text())
    assert (marker["job_id"], marker["requeued"], marker["checkpoint"]) == (train, False, True)
    assert run_status(run).state == "stopped"

    # The same command again: the run is stopped, not failed; only its training (and the
    # validation after it) is submitted, and the training resumes from last.pt.
    again = slurm.run(command, check=False, timeout=120)
    said = again.stdout + again.stderr
    assert again.returncode == 0, said
    assert "training: stopped, resumes from last.pt (0/1 epochs), SIGTERM, job " in said
    jobs = {kind: (job, Path(log)) for kind, job, log in JOB_LINE.findall(again.stdout)}
    assert list(jobs) == ["train", "validate"], said
    (train, log), (validate, _) = jobs["train"], jobs["validate"]
    ends = slurm.wait([train, validate], timeout=300)
    assert all(end.state == "COMPLETED" for end in ends.values()), (ends, log.read_text())
    assert f"resumed from {run / 'last.pt'} at epoch 1 step " in log.read_text()
    assert _rows(run) == ["1"] and run_status(run).state == "done"
    assert (run / "val" / "metrics.json").exists()


@pytest.mark.slow
def test_scontrol_requeue_requeues_a_training_job_that_resumes_from_last_pt(
    slurm, mini_epic: MiniEpic, store, tmp_path
):
    site, run = _site(slurm, tmp_path), tmp_path / "run"
    # SIGTERM: the step under way and the save must end within the fixture's KillWait (5 s),
    # on a loaded machine too: small steps.
    options = ["--batch-size", "2", "--epochs", "1", "--limit-batches", "12"]
    job_id, log = _submit_train(slurm, site, store, mini_epic, run, *options)
    _wait_for(slurm, job_id, log, "epoch 1/1 step 2/")
    slurm.run(["scontrol", "requeue", job_id])
    end = slurm.wait(job_id, timeout=300)[job_id]
    text = log.read_text()
    assert (end.state, end.exit_code, end.requeues) == ("COMPLETED", 0, 1), text
    assert f"SLURM is requeueing job {job_id}" in text and "stopped by SIGTERM" not in text
    assert f"resumed from {run / 'last.pt'} at epoch 1 step " in text
    marker = json.loads((run / "job_end.json").read_text())  # the first run's end
    assert (marker["signal"], marker["requeued"], marker["checkpoint"]) == ("SIGTERM", True, True)
    assert _rows(run) == ["1"]


@pytest.mark.slow
def test_the_time_limit_signal_requeues_a_training_job_that_resumes_from_last_pt(
    slurm, mini_epic: MiniEpic, store, tmp_path
):
    # The site's --signal=B:USR1@50 with a 1-minute limit. SLURM checks time limits about
    # every 30-60 s, so the limit is set only once training runs (a signal during start-up
    # finds no checkpoint to resume from), and the run is far too long to end first.
    site = _site(slurm, tmp_path, 'EPIC_TRAIN_TIME=10\nEPIC_SBATCH_EXTRA="--signal=B:USR1@50"\n')
    run = tmp_path / "run"
    job_id, log = _submit_train(
        slurm, site, store, mini_epic, run, "--epochs", "1000", "--limit-batches", "4"
    )
    _wait_for(slurm, job_id, log, "epoch 1/1000 step 2/")
    # --time=1 where start-up took under 30 s; always 30-90 s left (50 s warn + the timer).
    limit = (_elapsed_s(slurm, job_id) + 30) // 60 + 1
    slurm.run(["scontrol", "update", f"JobId={job_id}", f"TimeLimit={limit}"])
    _wait_for(slurm, job_id, log, f"checkpoint saved; requeueing job {job_id}", timeout=150)
    # Room for the requeued run to start: resumed, not signalled again at once.
    slurm.run(["scontrol", "update", f"JobId={job_id}", "TimeLimit=10"])
    text = _wait_for(slurm, job_id, log, f"resumed from {run / 'last.pt'}", timeout=150)
    assert "SIGUSR1: asking epic-train to save last.pt" in text
    assert re.search(r"SIGUSR1 received by this process: (saved last.pt at|epoch \d+ saved)", text)
    assert f"slurm job {job_id} restart 1" in text
    marker = json.loads((run / "job_end.json").read_text())
    assert (marker["signal"], marker["requeued"], marker["checkpoint"]) == ("SIGUSR1", True, True)
