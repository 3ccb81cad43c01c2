"""The whole pipeline as one chain of jobs: extract (array) -> check -> train -> validate.

What is missing is judged from the artifacts themselves, never from ``sacct`` (clusters and
tests may have no accounting): the store's shards (the checker, in quick mode), the run
folder (epochs done, ``FAILED``) and ``RUN/val/metrics.json``. Rerun after a failure, the
pipeline submits the failed array indices, then the rest of the chain. A chain carries a
``--comment`` naming its store and run; while one is queued or running, no second is sent.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from epicdata.errors import EnvironmentProblem, EpicInputError
from epicdata.layout import MANIFEST_NAME
from epicdata.ranges import array_spec
from epicslurm.site import Site
from epicslurm.submit import Job, submit
from preprocess.check import check_store

log = logging.getLogger(__name__)

#: A run folder's marker of a failed training job (written by slurm/lib.sh epic_finish).
FAILED_MARKER = "FAILED"
VALIDATION_DIR = "val"


@dataclass(frozen=True)
class RunStatus:
    """What a run folder says about its training: ``done``, ``failed``, ``started`` (a
    checkpoint or epochs exist; queued, running or requeued) or ``new``."""

    state: str
    epochs_done: int
    epochs: int | None
    detail: str = ""


def run_status(run_dir: Path) -> RunStatus:
    """The state of a run from its folder alone (config.yaml, summary.csv, FAILED)."""
    epochs = None
    config = run_dir / "config.yaml"
    if config.exists():
        epochs = int((yaml.safe_load(config.read_text()) or {}).get("epochs", 0)) or None
    done = 0
    summary = run_dir / "summary.csv"
    if summary.exists():
        with open(summary, newline="") as handle:
            rows = list(csv.DictReader(handle))
        done = max((int(r["epoch"]) for r in rows if r.get("epoch")), default=0)
    failed = run_dir / FAILED_MARKER
    if failed.exists():
        return RunStatus("failed", done, epochs, failed.read_text().strip())
    if epochs is not None and done >= epochs:
        return RunStatus("done", done, epochs)
    if config.exists() or (run_dir / "last.pt").exists():
        return RunStatus("started", done, epochs)
    return RunStatus("new", 0, epochs)


def chain_key(store: Path, run_dir: Path) -> str:
    """The --comment that names a chain: the same store and run give the same key."""
    digest = hashlib.sha1(f"{store.resolve()}|{run_dir.resolve()}".encode()).hexdigest()
    return f"epic-chain-{digest[:12]}"


def queued_jobs(comment: str, site: Site) -> list[str]:
    """This user's queued or running jobs (on the site's clusters) whose comment is
    ``comment``."""
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or ""
    # squeue's default states: pending (requeued too), running, suspended, completing.
    command = ["squeue", "--noheader", "--format=%i|%k"]
    if user:
        command.append(f"--user={user}")
    if site.get("EPIC_CLUSTERS"):
        command.append(f"--clusters={site.get('EPIC_CLUSTERS')}")
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise EnvironmentProblem(
            "squeue not found", where="PATH", fix="run this on a login node of the cluster"
        ) from None
    if result.returncode != 0:
        raise EnvironmentProblem(
            "squeue failed, so a chain already queued cannot be ruled out",
            where=shlex.join(command),
            fix="retry when the controller answers",
            details=result.stderr.strip(),
        )
    jobs = []
    for line in result.stdout.splitlines():
        job_id, _, job_comment = line.partition("|")
        if job_comment.strip() == comment:
            jobs.append(job_id.strip())
    return jobs


@dataclass
class Plan:
    """What the pipeline will submit, and why."""

    extract_indices: list[int]
    force: bool
    train: bool
    validate: bool
    reasons: list[str]


def assess(store: Path, run_dir: Path) -> Plan:
    """What is missing, from the store's shards and the run folder."""
    reasons = []
    report = check_store(store)
    indices = report.resubmit_indices
    force = any(s.published for s in report.shards if s.problems)
    if indices:
        reasons.append(f"store: {len(indices)} of {len(report.shards)} shards to extract")
    else:
        reasons.append(f"store: all {len(report.shards)} shards published and intact")
    status = run_status(run_dir)
    train = status.state != "done"
    reasons.append(
        f"training: {status.state} ({status.epochs_done}/{status.epochs or '?'} epochs)"
        + (f", {status.detail}" if status.detail else "")
    )
    metrics = run_dir / VALIDATION_DIR / "metrics.json"
    best = run_dir / "best.pt"
    validate = train or not (
        metrics.exists() and best.exists() and metrics.stat().st_mtime >= best.stat().st_mtime
    )
    reasons.append("validation: " + ("to do" if validate else f"done ({metrics})"))
    return Plan(indices, force, train, validate, reasons)


@dataclass(frozen=True)
class Submitted:
    kind: str
    job_id: str
    log: str
    command: list[str]


def run_pipeline(
    site: Site,
    *,
    store: Path,
    annotations: Path,
    run_dir: Path,
    train_args: Sequence[str] = (),
    dry_run: bool = False,
) -> list[Submitted]:
    """Submit what is missing of the chain for ``store`` and ``run_dir`` (the store must be
    planned already); returns the jobs submitted (dry run: ids are placeholders such as
    ``<extract>``, nothing is sent)."""
    if not (store / MANIFEST_NAME).exists():
        raise EpicInputError(
            "the store is not planned", where=str(store), fix="give --videos to plan it"
        )
    key = chain_key(store, run_dir)
    waiting = queued_jobs(key, site)
    if waiting:
        raise EpicInputError(
            f"a chain for this store and run is still queued or running (jobs "
            f"{', '.join(waiting)})",
            where=f"{store} -> {run_dir}",
            fix="wait for it (squeue --me), or scancel those jobs first; rerun this command "
            "afterwards and it submits only what is still missing",
        )
    plan = assess(store, run_dir)
    for reason in plan.reasons:
        log.info("%s", reason)
    data = {"EPIC_STORE": str(store), "EPIC_ANNOTATIONS": str(annotations)}
    jobs: list[tuple[str, Job]] = []
    if plan.extract_indices:
        extract_env = {"EPIC_STORE": str(store)} | ({"EPIC_FORCE": "1"} if plan.force else {})
        jobs.append(
            ("extract", Job("extract", extract_env, array=array_spec(plan.extract_indices)))
        )
        jobs.append(("check", Job("check", data, after_any=["{extract}"])))
    if plan.train:
        after = ["{check}"] if plan.extract_indices else []
        train_env = data | {"EPIC_RUN_DIR": str(run_dir)}
        jobs.append(("train", Job("train", train_env, after_ok=after, script_args=train_args)))
    if plan.validate:
        after = ["{train}"] if plan.train else (["{check}"] if plan.extract_indices else [])
        val_env = data | {
            "EPIC_CHECKPOINT": str(run_dir / "best.pt"),
            "EPIC_OUT": str(run_dir / VALIDATION_DIR),
        }
        jobs.append(("validate", Job("validate", val_env, after_ok=after)))
    if not jobs:
        log.info("nothing to submit: the store, the run and its validation are complete")
        return []
    ids: dict[str, str] = {}
    done: list[Submitted] = []
    for name, job in jobs:
        job = Job(
            job.kind,
            job.env,
            array=job.array,
            after_ok=[d.format(**ids) for d in job.after_ok],
            after_any=[d.format(**ids) for d in job.after_any],
            comment=key,
            script_args=job.script_args,
        )
        ids[name] = f"<{name}>" if dry_run else submit(job, site)
        done.append(Submitted(name, ids[name], job.log(site, ids[name]), job.sbatch(site)))
    return done
