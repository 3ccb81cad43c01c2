"""A single-node SLURM of the session's own, for the tests under tests/slurm.

The ``slurm`` fixture writes a ``slurm.conf`` into a temp folder (free ports, state, spool,
logs and the job completion file all inside it), runs ``slurmctld -D`` and ``slurmd -D``
in the foreground as children of pytest, waits until the node is idle, and at the end of
the session cancels every job and stops exactly those two pids (SIGTERM, then SIGKILL).
It never uses a SLURM that is already running.

It needs root (SlurmUser=root, no munge) and the Debian packages ``slurm-wlm``. Without
them the tests skip with the reason; with ``EPIC_REQUIRE_SLURM=1`` (set by ``.ci/run``)
they fail instead, so CI cannot pass by skipping them. See docs/testing.md.

What was learned about SLURM 22.05 here, and why the config reads as it does:

- A requeued job gets a begin time of now + ``cred_expire`` + 1 s (``AuthInfo``, default
  120 s), so it waits ~2 minutes before it may run again; cred_expire=10 makes that 11 s.
  Values under 5 are rejected ("AuthInfo=cred_expire=2 invalid") and fall back to 120.
  Even then the job only starts at the next main scheduling pass (``sched_interval``,
  default 60 s), so that runs every second.
- ``jobcomp/filetxt`` writes one ``Key=Value`` line per job end, and also one (with
  ``JobState=PENDING``) each time a job is requeued: the last line of a job is its final
  state. ``ExitCode=3:0`` is exit status 3, no signal.
- An array task's line has its own ``JobId`` plus ``ArrayJobId=`` and ``ArrayTaskId=``;
  the last task often reuses the array's id (array 4 of 2 tasks: task 1 is JobId=4, task 0
  JobId=6). Tasks are therefore keyed ``ArrayJobId_ArrayTaskId``. Tasks that never started
  (cancelled while pending, e.g. by a dependency) share one line: the array's own JobId
  with no ArrayJobId field; ``squeue -t all`` shows their range (``4_[1-3]``).
- ``squeue -j ID`` lists only jobs still pending/running/completing (an array id lists
  all its tasks) and exits 1 with "Invalid job id" once SLURM has purged the job
  (``MinJobAge``, 300 s); ``squeue -t all -j ID`` also lists finished ones until then.
- ``afterok`` on a failed job leaves the dependent job PENDING for ever (reason
  ``DependencyNeverSatisfied``) unless it was submitted with ``--kill-on-invalid-dep=yes``;
  this config deliberately does not make that the default, as real clusters do not.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

#: Set to 1 (CI does) to turn "SLURM cannot be started here" from a skip into a failure.
REQUIRE_ENV = "EPIC_REQUIRE_SLURM"
DAEMONS = ("slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo", "srun")
#: Client settings that would leak from a surrounding allocation or the user's shell.
FOREIGN_PREFIXES = ("SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "SQUEUE_", "SINFO_", "SCANCEL_")
PARTITION = "debug"
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
#: Where Debian puts the daemons, which a non-login root PATH may lack.
SBIN = ("/usr/sbin", "/usr/local/sbin")

CONF = """\
# Written by tests/slurm/conftest.py for one pytest session; everything lives in {folder}.
ClusterName=epictest
SlurmctldHost=localhost
# Free ports picked at start, so that two sessions on one machine never meet.
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
# No munge: only root on this machine can reach these ports' daemons anyway.
AuthType=auth/none
CredType=cred/none
# A requeued job waits cred_expire + 1 s before it may start again (default 120 s);
# 10 (the floor is 5) keeps a busy slurmd time to accept a launch credential.
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# Trust the CPUs and memory below even where a container hides part of the host.
SlurmdParameters=config_overrides
# No slurmdbd: final states and exit codes come from the job completion file.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={jobcomp}
MpiDefault=none
# No mail program is installed; the default one makes slurmctld log an error.
MailProg=/bin/true
ReturnToService=2
# Main scheduler and backfill every second (defaults 60 s and 30 s): a requeued job starts
# as soon as its begin time passes, not at the next minute.
SchedulerParameters=sched_interval=1,bf_interval=1
# SIGTERM to SIGKILL on scancel and time limits (default 30 s).
KillWait=5
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
NodeName=localhost CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={partition} Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


@dataclass(frozen=True)
class JobEnd:
    """How one job, or one array task, ended: its last line in the job completion file."""

    job_id: str  # "123", or "123_4" for task 4 of array 123
    state: str  # COMPLETED, FAILED, CANCELLED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, ...
    exit_code: int  # the batch script's exit status
    signal: int  # the signal that ended it, 0 if none
    requeues: int  # how many times it was requeued before this end
    record: dict[str, str]  # every field of the line: StartTime, EndTime, NodeList, ...


@dataclass
class Slurm:
    """A running single-node cluster; every client call goes through :meth:`run`."""

    folder: Path
    conf: Path  # SLURM_CONF
    env: dict[str, str]  # os.environ without foreign SLURM_* settings, plus SLURM_CONF, PATH
    cpus: int
    partition: str
    jobcomp: Path  # the jobcomp/filetxt file
    workdir: Path  # the default cwd of client calls, hence of jobs (slurm-%j.out lands here)
    daemons: dict[str, subprocess.Popen] = field(default_factory=dict)

    def run(
        self, args: Sequence[str | os.PathLike], *, check: bool = True, timeout: float = 60, **kw
    ) -> subprocess.CompletedProcess[str]:
        """Run a client command (``["sbatch", ...]``) against this cluster; text output.
        ``env=`` adds to (does not replace) :attr:`env`; ``cwd`` defaults to :attr:`workdir`.
        With ``check``, a non-zero exit fails the test with the command's output."""
        env = {**self.env, **kw.pop("env", {})}
        kw.setdefault("cwd", self.workdir)
        args = [str(a) for a in args]
        done = subprocess.run(
            args, env=env, capture_output=True, text=True, timeout=timeout, check=False, **kw
        )
        if check and done.returncode != 0:
            pytest.fail(
                f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}",
                pytrace=False,
            )
        return done

    def sbatch(self, *args: str | os.PathLike, **kw) -> str:
        """``sbatch --parsable ARGS``; returns the job id ("123")."""
        return self.run(["sbatch", "--parsable", *args], **kw).stdout.strip().split(";")[0]

    def queue(self, job_id: str | None = None) -> list[dict[str, str]]:
        """The jobs still pending, running or completing (all, or those of ``job_id``):
        ``{"job_id", "state", "reason"}`` each, e.g. ``PENDING`` /
        ``DependencyNeverSatisfied``. An array's pending rest shows as ``123_[2-3]``."""
        args = ["squeue", "--noheader", "--format=%i|%T|%r"]
        done = self.run([*args, f"--jobs={job_id}"] if job_id else args, check=False)
        if done.returncode != 0:
            if job_id and "Invalid job id" in done.stderr:
                return []  # purged (MinJobAge) or never known: not in the queue either way
            pytest.fail(f"squeue failed: {done.stderr}\n{self.diagnostics()}", pytrace=False)
        rows = [line.split("|", 2) for line in done.stdout.splitlines() if line.strip()]
        return [dict(job_id=i, state=s, reason=r) for i, s, r in rows]

    def state(self, job_id: str) -> str:
        """The state of a job or one array task (``123_4``): from the queue while it is
        there, then its final state from the completion file; "" if SLURM has neither."""
        rows = self.queue(job_id)
        if len(rows) > 1:
            raise ValueError(f"{job_id} is an array of {len(rows)} jobs: use wait()")
        if rows:
            return rows[0]["state"]
        end = end_of(job_id, self.ends())
        return end.state if end else ""

    def records(self) -> list[dict[str, str]]:
        """Every line of the job completion file as a dict, oldest first."""
        if not self.jobcomp.exists():
            return []
        return [parse_record(line) for line in self.jobcomp.read_text().splitlines() if line]

    def ends(self) -> dict[str, JobEnd]:
        """The last completion record of every line's job, by id: ``123`` for a job (or
        the never-started tasks of array 123), ``123_4`` for an array task."""
        ends: dict[str, JobEnd] = {}
        for record in self.records():
            job_id = record_id(record)
            previous = ends.get(job_id)
            ends[job_id] = job_end(job_id, record, previous.requeues + 1 if previous else 0)
        return ends

    def wait(self, job_ids: str | Iterable[str], timeout: float = 120) -> dict[str, JobEnd]:
        """Wait until the given jobs (``123``; an array task ``123_4``; a whole array
        ``123``) have left the queue, then return how each ended, by job id, with a whole
        array expanded into its tasks (``123_0``, ``123_1``, ...). Fails the test, with the
        queue and the daemon logs, when they are still there after ``timeout`` seconds."""
        ids = [job_ids] if isinstance(job_ids, str) else list(job_ids)
        deadline = time.monotonic() + timeout
        waiting = list(ids)
        while waiting := [j for j in waiting if self.queue(j)]:
            if time.monotonic() > deadline:
                pytest.fail(
                    f"jobs {', '.join(waiting)} still in the queue after {timeout:.0f} s\n"
                    + self.diagnostics(),
                    pytrace=False,
                )
            time.sleep(0.5)
        # slurmctld writes the record as the job ends; allow a moment for the file anyway.
        grace = time.monotonic() + 5
        while True:
            ends = self.ends()
            found = {j: end_of(j, ends) for i in ids for j in self._expected_ids(i, ends)}
            missing = [j for j, end in found.items() if end is None]
            if not missing:
                return found
            if time.monotonic() > grace:
                pytest.fail(
                    f"jobs {', '.join(missing)} left the queue without a line in "
                    f"{self.jobcomp}\n" + self.diagnostics(),
                    pytrace=False,
                )
            time.sleep(0.2)

    def _expected_ids(self, job_id: str, ends: dict[str, JobEnd]) -> list[str]:
        """The record ids that ``job_id`` stands for: itself, or every task of an array
        (those SLURM still remembers plus those already in the completion file)."""
        if "_" in job_id:
            return [job_id]
        done = self.run(
            ["squeue", "--noheader", "--states=all", "--format=%i", f"--jobs={job_id}"],
            check=False,
        )
        known = done.stdout.split() if done.returncode == 0 else []
        tasks = {t for row in known if row.startswith(f"{job_id}_") for t in expand_ids(row)}
        tasks |= {j for j in ends if j.startswith(f"{job_id}_")}
        return sorted(tasks, key=lambda j: int(j.split("_")[1])) if tasks else [job_id]

    def cancel_all(self, timeout: float = 60) -> None:
        """Cancel every job and wait until the queue is empty (running jobs get SIGTERM,
        then SIGKILL after KillWait=5 s), so that the next test starts on an idle node."""
        user = pwd.getpwuid(os.getuid()).pw_name
        self.run(["scancel", f"--user={user}"], check=False)
        deadline = time.monotonic() + timeout
        while self.queue():
            if time.monotonic() > deadline:
                pytest.fail(
                    f"jobs still in the queue {timeout:.0f} s after scancel\n" + self.diagnostics(),
                    pytrace=False,
                )
            time.sleep(0.5)

    def diagnostics(self, lines: int = 30) -> str:
        """The whole queue and the tail of each daemon's log, for failure messages."""
        parts = []
        queue = self.run(["squeue", "--states=all", "--format=%i %T %r %j"], check=False)
        parts.append(f"--- squeue --states=all\n{queue.stdout}{queue.stderr}")
        for name, process in self.daemons.items():
            if process.poll() is not None:
                parts.append(f"--- {name} exited {process.returncode}; its stderr:")
                parts.append(tail(self.folder / f"{name}.stderr", lines))
            else:
                parts.append(f"--- {name}.log (pid {process.pid}):")
                parts.append(tail(self.folder / f"{name}.log", lines))
        return "\n".join(parts)

    @classmethod
    def start(cls, folder: Path, timeout: float = 60) -> Slurm:
        """Write the config into ``folder``, start both daemons and wait for an idle node."""
        for sub in ("state", "spool", "jobs"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        cpus = len(os.sched_getaffinity(0))
        memory_mb = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20
        conf = folder / "slurm.conf"
        jobcomp = folder / "jobcomp.txt"
        ctld_port, slurmd_port = free_ports(2)
        conf.write_text(
            CONF.format(
                folder=folder,
                ctld_port=ctld_port,
                slurmd_port=slurmd_port,
                jobcomp=jobcomp,
                cpus=cpus,
                memory_mb=memory_mb,
                partition=PARTITION,
            )
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_PREFIXES)}
        # The venv first, so that jobs find the epic-* commands; then where SLURM lives.
        path = [str(Path(sys.executable).parent)]
        path += sorted({str(Path(find(name)).parent) for name in (*DAEMONS, *CLIENTS)})
        env.update(SLURM_CONF=str(conf), PATH=os.pathsep.join([*path, env.get("PATH", "")]))
        cluster = cls(folder, conf, env, cpus, PARTITION, jobcomp, folder / "jobs")
        commands = {
            "slurmctld": [find("slurmctld"), "-D", "-f", str(conf)],
            "slurmd": [find("slurmd"), "-D", "-f", str(conf), "-N", "localhost"],
        }
        try:
            for name, command in commands.items():
                with (folder / f"{name}.stderr").open("wb") as stderr:
                    cluster.daemons[name] = subprocess.Popen(
                        command,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=stderr,
                        stderr=stderr,
                        preexec_fn=die_with_parent,
                    )
            cluster._wait_idle(timeout)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if any(p.poll() is not None for p in self.daemons.values()):
                pytest.fail("a SLURM daemon exited at start\n" + self.diagnostics(), pytrace=False)
            done = self.run(["sinfo", "--noheader", "--Node", "--format=%T"], check=False)
            if done.returncode == 0 and done.stdout.strip() == "idle":
                return
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the SLURM node is not idle {timeout:.0f} s after start (sinfo: "
                    f"{done.stdout.strip() or done.stderr.strip()})\n" + self.diagnostics(),
                    pytrace=False,
                )
            time.sleep(0.3)

    def stop(self, timeout: float = 15) -> None:
        """Cancel what is left, stop slurmd then slurmctld (SIGTERM, SIGKILL after
        ``timeout`` s), then kill any job process that outlived them."""
        if all(p.poll() is None for p in self.daemons.values()):
            try:
                self.cancel_all(timeout=30)
            except (pytest.fail.Exception, subprocess.TimeoutExpired) as error:
                warnings.warn(f"SLURM teardown: {error}", stacklevel=1)
        for name in ("slurmd", "slurmctld"):
            process = self.daemons.get(name)
            if process is None or process.poll() is not None:
                continue
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        strays = self._stray_pids()
        for pid in strays:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if strays:
            warnings.warn(f"SLURM teardown killed leftover job processes {strays}", stacklevel=1)

    def _stray_pids(self) -> list[int]:
        """Processes SLURM started for this cluster (slurmstepd and job processes carry
        its SLURM_CONF, which names this session's folder) that are still alive."""
        marker = f"SLURM_CONF={self.conf}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker in environ:
                pids.append(int(entry.name))
        return pids


def parse_record(line: str) -> dict[str, str]:
    """``JobId=5 Name=my job JobState=FAILED ...`` -> dict (values may hold spaces)."""
    return dict(re.findall(r"(\w+)=(.*?)(?=\s+\w+=|\s*$)", line))


def expand_ids(job_id: str) -> list[str]:
    """``12_[0-2,5]`` -> 12_0, 12_1, 12_2, 12_5; ``12_3`` and ``12`` stay as they are."""
    match = re.fullmatch(r"(\d+)_\[?([\d,:%-]+)\]?", job_id)
    if not match:
        return [job_id]
    array, tasks = match.group(1), match.group(2).split("%")[0]
    ids = []
    for part in tasks.split(","):
        span, _, step = part.partition(":")
        first, _, last = span.partition("-")
        ids += [f"{array}_{t}" for t in range(int(first), int(last or first) + 1, int(step or 1))]
    return ids


def record_id(record: dict[str, str]) -> str:
    """``ArrayJobId_ArrayTaskId`` for an array task's line, else ``JobId``."""
    array, task = record.get("ArrayJobId"), record.get("ArrayTaskId")
    return f"{array}_{task}" if array and task else record["JobId"]


def end_of(job_id: str, ends: dict[str, JobEnd]) -> JobEnd | None:
    """``ends[job_id]``; for an array task without a line of its own, the line of its
    array's never-started tasks (under the task's id); None when there is neither."""
    array = job_id.partition("_")[0]
    if job_id not in ends and array != job_id and array in ends:
        return replace(ends[array], job_id=job_id)
    return ends.get(job_id)


def job_end(job_id: str, record: dict[str, str], requeues: int) -> JobEnd:
    status, _, sig = record.get("ExitCode", "0:0").partition(":")
    return JobEnd(job_id, record["JobState"], int(status), int(sig or 0), requeues, record)


def tail(path: Path, lines: int) -> str:
    if not path.exists():
        return f"({path} does not exist)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def free_ports(count: int) -> list[int]:
    """Ports that are free now (bound to port 0 together, so they are distinct)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def die_with_parent() -> None:
    """In the child before exec: SIGTERM it when pytest dies, even by SIGKILL (Linux
    PR_SET_PDEATHSIG), so that a killed session leaves no daemons behind."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def find(name: str) -> str | None:
    path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN])
    return shutil.which(name, path=path)


def why_no_slurm() -> str | None:
    """Why this machine cannot run the test cluster, or None when it can."""
    if os.geteuid() != 0:
        return "the test SLURM runs its daemons as root (SlurmUser=root, no munge): run as root"
    missing = [name for name in (*DAEMONS, *CLIENTS) if find(name) is None]
    if missing:
        return f"{', '.join(missing)} not found: apt-get install slurm-wlm (Debian/Ubuntu)"
    return None


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slurm]:
    """A single-node SLURM of this session's own (see the module docstring)."""
    reason = why_no_slurm()
    if reason:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{reason} ({REQUIRE_ENV}=1: SLURM tests may not skip)", pytrace=False)
        pytest.skip(reason)
    cluster = Slurm.start(tmp_path_factory.mktemp("slurm"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(autouse=True)
def _empty_queue_after_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test that used the cluster, cancel what it left, so that a failing test
    never leaves jobs that hold the CPUs of the next one."""
    yield
    cluster = (getattr(request.node, "funcargs", None) or {}).get("slurm")
    if isinstance(cluster, Slurm):
        cluster.cancel_all()
