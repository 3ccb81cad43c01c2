"""sbatch command lines built from the site file alone, and the lines printed for users.

Every job gets ``--export=ALL,EPIC_SCRIPTS=<job scripts>,EPIC_SITE=<site file>`` plus its data
paths as EPIC_* variables; the job script sources ``slurm/lib.sh``, which reads the site
file on the node (modules, venv) and prints the job's header.
"""

from __future__ import annotations

import dataclasses
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from epicdata.errors import EnvironmentProblem, EpicInputError
from epicslurm.site import JOBS, SCRIPTS, Site


@dataclass(frozen=True)
class Job:
    """One sbatch submission: which job, its data paths and where it sits in a chain."""

    kind: str
    env: Mapping[str, str] = field(default_factory=dict)  # EPIC_STORE=..., etc.
    array: str | None = None
    after_ok: Sequence[str] = ()
    after_any: Sequence[str] = ()
    comment: str | None = None
    nodes: int = 1
    gpus_per_node: int = 1
    script_args: Sequence[str] = ()

    def sbatch(self, site: Site) -> list[str]:
        """The whole sbatch command line for ``site``."""
        options = site.sbatch_options(
            self.kind, array=self.array, nodes=self.nodes, gpus_per_node=self.gpus_per_node
        )
        deps = []
        if self.after_any:
            deps.append("afterany:" + ":".join(self.after_any))
        if self.after_ok:
            deps.append("afterok:" + ":".join(self.after_ok))
        if deps:
            # A failed dependency cancels the job instead of leaving it pending for ever.
            options += [f"--dependency={','.join(deps)}", "--kill-on-invalid-dep=yes"]
        if self.comment:
            options.append(f"--comment={self.comment}")
        export = {"EPIC_SCRIPTS": str(SCRIPTS), "EPIC_SITE": str(site.path), **self.env}
        for key, value in export.items():
            if "," in value:  # sbatch's --export list is comma-separated
                raise EpicInputError(
                    f"{key} contains a comma, which sbatch --export cannot pass",
                    where=value,
                    fix="use a path without commas (a symbolic link will do)",
                )
        exports = ",".join(["ALL", *(f"{k}={v}" for k, v in export.items())])
        script = SCRIPTS / JOBS[self.kind][0]
        return [
            "sbatch",
            "--parsable",
            *options,
            f"--export={exports}",
            str(script),
            *self.script_args,
        ]

    def log(self, site: Site, job_id: str) -> str:
        """Where this job's log goes once submitted as ``job_id``."""
        pattern = site.log_path(self.kind, self.array is not None)
        return pattern.replace("%A", job_id).replace("%j", job_id).replace("%a", "<task>")


def _largest_node(partition: str, site: Site) -> tuple[int, int] | None:
    """(CPUs, MB of memory) of the partition's largest node, from sinfo; None if unknown."""
    command = ["sinfo", "--noheader", f"--partition={partition}", "--format=%c|%m"]
    if site.get("EPIC_CLUSTERS"):
        command.append(f"--clusters={site.get('EPIC_CLUSTERS')}")
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    sizes = []
    for line in result.stdout.splitlines():
        cpus, _, memory = line.partition("|")
        if cpus.strip().rstrip("+").isdigit() and memory.strip().rstrip("+").isdigit():
            sizes.append((int(cpus.strip().rstrip("+")), int(memory.strip().rstrip("+"))))
    return (max(c for c, _ in sizes), max(m for _, m in sizes)) if sizes else None


def _megabytes(value: str) -> int | None:
    units = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
    value = value.strip().upper()
    if value[-1:] in units and value[:-1].isdigit():
        return int(int(value[:-1]) * units[value[-1]])
    return int(value) if value.isdigit() else None


def check_fits(job: Job, site: Site) -> None:
    """Refuse a job no node of its partition can run: SLURM accepts it and it pends for
    ever (a 2-CPU node given an 8-CPU extraction task, say)."""
    _script, gpu, prefix = JOBS[job.kind]
    partition = site.get("EPIC_PARTITION_GPU" if gpu else "EPIC_PARTITION_CPU")
    largest = _largest_node(partition, site)
    if largest is None:
        return
    cpus = int(site.get(f"EPIC_{prefix}_CPUS") or 1)
    cpus *= job.gpus_per_node if job.kind == "train-multi" else 1
    memory = _megabytes(site.get(f"EPIC_{prefix}_MEM") or "0") or 0
    for what, asked, most, name in (
        ("CPUs", cpus, largest[0], f"EPIC_{prefix}_CPUS"),
        ("MB of memory", memory, largest[1], f"EPIC_{prefix}_MEM"),
    ):
        if asked > most:
            raise EpicInputError(
                f"the {job.kind} job asks {asked} {what} per node but the nodes of partition "
                f"{partition} have at most {most}: SLURM would keep it pending for ever",
                where=str(site.path),
                fix=f"lower {name} in the site file (sinfo -p {partition} -o '%c %m' shows "
                "the nodes)",
            )


def _sbatch(command: list[str], job: Job, site: Site) -> str:
    """Run ``command`` (an sbatch line of ``job``); its stdout, or an error naming the job,
    the site file and sbatch's own words."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise EnvironmentProblem(
            "sbatch not found",
            where="PATH",
            fix="run this on a login node of the cluster (or load the slurm module)",
        ) from None
    if result.returncode != 0:
        test = " --test-only" if "--test-only" in command else ""
        raise EpicInputError(
            f"sbatch{test} refused the {job.kind} job",
            where=str(site.path),
            fix="check the site file's account, partition and resources against "
            "`sinfo -s` and `sacctmgr show assoc user=$USER`",
            details=f"{shlex.join(command)}\n{result.stderr.strip()}",
        )
    return result.stdout


def check_accepted(job: Job, site: Site) -> None:
    """Ask SLURM whether it would take ``job`` (``sbatch --test-only``, submits nothing),
    after the project's own check (:func:`check_fits`). The job's dependencies are left out:
    the jobs they name do not exist yet."""
    check_fits(job, site)
    alone = dataclasses.replace(job, after_ok=(), after_any=())
    command = alone.sbatch(site)
    _sbatch([command[0], "--test-only", *command[1:]], job, site)


def submit(job: Job, site: Site) -> str:
    """Submit ``job``; returns its job id. The log folder is made first (sbatch does not make
    it, and a job whose log folder is missing fails without a word), and a job no node can
    run is refused (:func:`check_fits`)."""
    site.logs.mkdir(parents=True, exist_ok=True)
    check_fits(job, site)
    out = _sbatch(job.sbatch(site), job, site)
    return out.strip().split(";")[0]  # "123" or "123;cluster"


def cancel(job_ids: Sequence[str], site: Site) -> str:
    """``scancel`` the jobs (the ones this command submitted before a later one failed);
    returns what went wrong, or "" when they were cancelled."""
    command = ["scancel", *job_ids]
    if site.get("EPIC_CLUSTERS"):
        command.insert(1, f"--clusters={site.get('EPIC_CLUSTERS')}")
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{shlex.join(command)}: {exc}"
    return "" if result.returncode == 0 else f"{shlex.join(command)}: {result.stderr.strip()}"
