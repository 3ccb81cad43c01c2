"""The whole pipeline as one chain of jobs: extract (array) -> check -> train -> validate.

What is missing is judged from the artifacts themselves, never from ``sacct`` (clusters and
tests may have no accounting): the store's shards (the checker, in quick mode), the run
folder (epochs done, ``FAILED``, ``job_end.json``) and ``RUN/val/metrics.json``. Rerun after
a failure or a stop, the pipeline submits the failed array indices, then the rest of the
chain; a training stopped by SIGTERM (``job_end.json``, exit 76) resumes from ``last.pt``.
A chain carries a ``--comment`` naming its store and run; while one is queued or running, no
second is sent. Every job of a chain is checked (``sbatch --test-only`` and the project's own
checks) before the first is submitted: a chain goes in whole or not at all.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import logging
import os
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from epicdata.errors import EnvironmentProblem, EpicInputError
from epicdata.layout import MANIFEST_NAME
from epicdata.manifest import ExtractParams, Manifest
from epicdata.ranges import array_spec
from epicslurm.site import Site, path_problems, require_paths
from epicslurm.submit import Job, cancel, check_accepted, submit
from preprocess.check import check_store
from train.config import PATH_FIELDS, TrainConfig, field_types, free_on_resume, load_yaml_defaults
from train.recipes import RECIPES, resolve_options

log = logging.getLogger(__name__)

#: A run folder's marker of a failed training job (written by slurm/lib.sh epic_finish).
FAILED_MARKER = "FAILED"
#: A run folder's marker of a job ended by a signal (slurm/lib.sh; docs/cluster.md).
JOB_END_MARKER = "job_end.json"
VALIDATION_DIR = "val"
#: What a validation job writes beside metrics.json, and a fusion job reads.
PREDICTIONS = "predictions.pkl"
#: epic-train's option that lets a resumed run take options that differ from its config.
ALLOW_CHANGE = "--allow-config-change"


# ----------------------------------------------------------------------------- run folders


class RunFolderUnreadable(EpicInputError):
    """A run folder whose config.yaml, summary.csv, FAILED or job_end.json cannot be read:
    ``reason`` names the file and what is wrong with it."""

    def __init__(self, run_dir: Path, reason: str) -> None:
        super().__init__(
            f"cannot read the run folder: {reason}",
            where=str(run_dir),
            fix="repair or remove that file (or train into a new run folder)",
        )
        self.reason = reason


def _text(run_dir: Path, name: str) -> str | None:
    """The text of ``run_dir/name``, None when it does not exist."""
    path = run_dir / name
    if not path.exists():
        return None
    try:
        return path.read_text(encoding="utf-8")
    except IsADirectoryError:
        raise RunFolderUnreadable(run_dir, f"{name} is a folder, not a file") from None
    except UnicodeDecodeError as exc:
        raise RunFolderUnreadable(run_dir, f"{name}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise RunFolderUnreadable(run_dir, f"{name}: {exc.strerror}") from None


def read_config(run_dir: Path) -> dict[str, Any] | None:
    """The run's config.yaml (what epic-train resolved), None before the first start."""
    text = _text(run_dir, "config.yaml")
    if text is None:
        return None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        reason = " ".join(str(exc).split())
        raise RunFolderUnreadable(run_dir, f"config.yaml: not YAML ({reason})") from None
    if not isinstance(data, dict):
        what = type(data).__name__
        raise RunFolderUnreadable(run_dir, f"config.yaml holds a {what}, not a mapping")
    return data


def _configured_epochs(run_dir: Path, config: dict[str, Any] | None) -> int | None:
    if config is None or config.get("epochs") is None:
        return None
    try:
        return field_types()["epochs"].parse(config["epochs"]) or None
    except ValueError as exc:
        raise RunFolderUnreadable(run_dir, f"config.yaml: epochs: {exc}") from None


def summary_rows(run_dir: Path) -> list[dict[str, str]]:
    """The rows of the run's summary.csv (one per epoch), each with a whole ``epoch``."""
    text = _text(run_dir, "summary.csv")
    if text is None:
        return []
    rows = list(csv.DictReader(text.splitlines()))
    for line, row in enumerate(rows, start=2):
        epoch = (row.get("epoch") or "").strip()
        if not epoch.isdigit():
            raise RunFolderUnreadable(
                run_dir, f"summary.csv line {line}: epoch {epoch!r} is not a whole number"
            )
    return rows


def read_job_end(run_dir: Path) -> dict[str, Any] | None:
    """The job-end marker slurm/lib.sh writes when a training job ends on a signal:
    ``signal``, ``job_id``, ``date``, ``requeued``, ``checkpoint`` (docs/cluster.md)."""
    text = _text(run_dir, JOB_END_MARKER)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise RunFolderUnreadable(run_dir, f"{JOB_END_MARKER}: not JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("requeued"), bool):
        raise RunFolderUnreadable(
            run_dir, f"{JOB_END_MARKER}: expected an object with requeued true or false"
        )
    return data


def _job_end_detail(marker: dict[str, Any]) -> str:
    task = marker.get("array_task_id")
    job = f"{marker.get('job_id', '?')}" + (f"_{task}" if task not in (None, "") else "")
    saved = "last.pt saved" if marker.get("checkpoint") else "no checkpoint saved"
    return f"{marker.get('signal', 'a signal')}, job {job}, {marker.get('date', '?')}, {saved}"


@dataclass(frozen=True)
class RunStatus:
    """What a run folder says about its training: ``done``, ``failed``, ``stopped`` (a
    SIGTERM ended its job without a requeue: resumable), ``requeued`` (its job requeued
    itself: queued again, or cancelled while waiting), ``started`` (a checkpoint or epochs
    exist, no marker: queued, running, or killed) or ``new``."""

    state: str
    epochs_done: int
    epochs: int | None
    detail: str = ""


def run_status(run_dir: Path) -> RunStatus:
    """The state of a run from its folder alone (config.yaml, summary.csv, FAILED,
    job_end.json); :class:`RunFolderUnreadable` when one of them cannot be read."""
    config = read_config(run_dir)
    epochs = _configured_epochs(run_dir, config)
    done = max((int(r["epoch"]) for r in summary_rows(run_dir)), default=0)
    failed = _text(run_dir, FAILED_MARKER)
    if failed is not None:
        return RunStatus("failed", done, epochs, failed.strip())
    if epochs is not None and done >= epochs:
        return RunStatus("done", done, epochs)
    marker = read_job_end(run_dir)
    if marker is not None:
        state = "requeued" if marker["requeued"] else "stopped"
        return RunStatus(state, done, epochs, _job_end_detail(marker))
    if config is not None or (run_dir / "last.pt").exists():
        return RunStatus("started", done, epochs)
    return RunStatus("new", 0, epochs)


# ----------------------------------------------------------------------------- the queue


def chain_key(store: Path, run_dir: Path) -> str:
    """The --comment that names a chain: the same store and run give the same key."""
    digest = hashlib.sha1(f"{store.resolve()}|{run_dir.resolve()}".encode()).hexdigest()
    return f"epic-chain-{digest[:12]}"


def _squeue(site: Site | None, *options: str) -> list[str]:
    """The lines of this user's ``squeue --noheader OPTIONS`` (on the site's clusters);
    squeue's default states: pending (requeued too), running, suspended, completing."""
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or ""
    command = ["squeue", "--noheader", *options]
    if user:
        command.append(f"--user={user}")
    if site is not None and site.get("EPIC_CLUSTERS"):
        command.append(f"--clusters={site.get('EPIC_CLUSTERS')}")
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (FileNotFoundError, PermissionError):
        raise EnvironmentProblem(
            "squeue not found", where="PATH", fix="run this on a login node of the cluster"
        ) from None
    except subprocess.TimeoutExpired:
        raise EnvironmentProblem(
            "squeue did not answer in 60 s",
            where=shlex.join(command),
            fix="retry when the controller answers",
        ) from None
    if result.returncode != 0:
        raise EnvironmentProblem(
            "squeue failed, so what is queued cannot be known",
            where=shlex.join(command),
            fix="retry when the controller answers",
            details=result.stderr.strip(),
        )
    # A multi-cluster squeue prints a "CLUSTER: name" line before each cluster's jobs.
    return [line for line in result.stdout.splitlines() if "|" in line]


def queued_jobs(comment: str, site: Site) -> list[str]:
    """This user's queued or running jobs (on the site's clusters) whose comment is
    ``comment``."""
    jobs = []
    for line in _squeue(site, "--format=%i|%k"):
        job_id, _, job_comment = line.partition("|")
        if job_comment.strip() == comment:
            jobs.append(job_id.strip())
    return jobs


def queued_tasks(comment: str, site: Site | None) -> dict[int, str]:
    """{array task id: squeue state (PENDING, RUNNING, ...)} of this user's array tasks whose
    comment is ``comment``, one per task (``squeue --array``)."""
    tasks = {}
    # %i, not %a: squeue 22.05 prints "(null)" as %a of a pending task, and 123_4 as its %i.
    for line in _squeue(site, "--array", "--format=%i|%T|%k"):
        job_id, state, job_comment = (part.strip() for part in line.split("|", 2))
        task = job_id.rpartition("_")[2]
        if job_comment == comment and "_" in job_id and task.isdigit():
            tasks[int(task)] = state
    return tasks


#: squeue states of a job that is waiting to start (again).
WAITING = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD")


def combined_status(folder: RunStatus, queued: str | None, known: bool) -> tuple[str, str]:
    """(status, note) of a run: its folder's state combined with what squeue says of its
    job (``queued``: its squeue state, None when it is not queued; ``known``: whether
    squeue answered). Statuses: pending, running, requeued, stopped, failed, done."""
    started = folder.state != "new"
    if queued is not None:
        if queued in WAITING:
            return ("requeued" if started else "pending"), f"queued ({queued.lower()})"
        return "running", ""
    if folder.state in ("done", "failed"):
        return folder.state, folder.detail
    if folder.state == "new":
        return "pending", "" if not known else "not queued"
    if folder.state == "stopped":
        return "stopped", folder.detail
    if not known:  # squeue did not answer: the folder alone
        return ("requeued", folder.detail) if folder.state == "requeued" else ("running", "")
    why = "requeued, then cancelled while waiting" if folder.state == "requeued" else ""
    why = why or "its job is no longer queued (cancelled or killed before a checkpoint)"
    return "stopped", why


# ----------------------------------------------------------------------------- options


#: epic-train's other spellings of an option (train/cli.py).
TRAIN_OPTION_ALIASES = {"train-splits": "train-split"}


def train_options(words: Sequence[str]) -> dict[str, Any]:
    """The TrainConfig values that epic-train options ``words`` (what follows ``--``) set,
    typed as epic-train types them (``--config FILE`` first, the command line over it);
    words that are not TrainConfig options are left to epic-train."""
    types = field_types()
    given: dict[str, Any] = {}
    from_file: dict[str, Any] = {}
    position = 0
    while position < len(words):
        word = words[position]
        position += 1
        name, has_value, text = word.removeprefix("--").partition("=")
        key = TRAIN_OPTION_ALIASES.get(name, name).replace("-", "_")
        negated = key.removeprefix("no_")
        if not word.startswith("--") or key in PATH_FIELDS:
            continue
        if negated != key and negated in types and types[negated].kind is bool:
            given[negated] = False
            continue
        if key != "config" and (key not in types or types[key].kind is bool):
            given.update({key: True} if key in types else {})
            continue
        if not has_value:
            if position >= len(words):
                break  # epic-train says the value is missing
            text, position = words[position], position + 1
        if key == "config":
            from_file = load_yaml_defaults(text)
            continue
        try:
            given[key] = types[key].parse(text)
        except ValueError as exc:
            raise EpicInputError(
                f"epic-train option --{name}: {exc}", where="after --", fix="correct it"
            ) from None
    values = from_file | given
    try:  # the values epic-train would refuse, refused before anything is submitted
        cfg = TrainConfig(
            store="-", annotations="-", output_dir="-", **resolve_options(from_file, given)
        )
    except EpicInputError as exc:
        raise EpicInputError(
            str(exc), where="epic-train options after --", fix="correct it"
        ) from None
    if not cfg.validates:
        raise EpicInputError(
            f"--train-splits {cfg.train_split}: a pipeline validates its run's best.pt on the "
            f"{cfg.val_split} split, which this run trains on (it saves no best.pt)",
            where="epic-train options after --",
            fix="train the final model with `epic-slurm submit train -- --train-splits "
            "train,validation ...` and score its last.pt with `epic-slurm submit validate`",
        )
    return values


def _default(name: str) -> Any:
    return next(f.default for f in dataclasses.fields(TrainConfig) if f.name == name)


def check_serves(
    params: ExtractParams,
    clip_lengths: Sequence[int],
    samplings: Sequence[str],
    *,
    where: object,
    asked: str,
    modalities: Sequence[str] = (),
    flow_stacks: Sequence[int] = (),
) -> None:
    """Refuse a store that cannot serve every clip length (and sampling) ``asked`` trains
    with: a ``--keep sampled`` store holds only the frames of the clip lengths it was
    planned for (manifest params ``num_frames``) and no random TSN offsets; ``all`` and
    ``segments`` serve any. A store holds one modality (``modalities``: those trained), and
    a sampled flow store the snippets of one ``--flow-stack`` (``flow_stacks``)."""
    _check_modality(params, modalities, flow_stacks, where=where, asked=asked)
    if params.keep != "sampled":
        return
    planned = sorted(params.num_frames)
    wanted = sorted(set(clip_lengths))
    missing = [n for n in wanted if n not in planned]
    lengths = ",".join(map(str, sorted(set(planned) | set(wanted))))
    if missing:
        raise EpicInputError(
            f"the store keeps sampled frames for clip lengths {','.join(map(str, planned))} "
            f"only; {asked} also needs {','.join(map(str, missing))}",
            where=str(where),
            fix=f"plan and extract a store that serves them, into a new folder: `epic-extract "
            f"plan --keep sampled --num-frames {lengths} ...` (or --keep segments), then pass "
            f"it as --store",
        )
    if "tsn" in set(samplings):
        raise EpicInputError(
            f"{asked} trains with sampling tsn (random frame offsets), which a --keep "
            "sampled store cannot serve",
            where=str(where),
            fix="plan a store with --keep segments, or drop tsn",
        )


def _check_modality(
    params: ExtractParams,
    modalities: Sequence[str],
    flow_stacks: Sequence[int],
    *,
    where: object,
    asked: str,
) -> None:
    """Refuse training one modality from a store of the other (one modality per store), and
    a flow stack that a sampled flow store was not planned for."""
    held = getattr(params, "modality", "rgb")
    other = sorted(set(modalities) - {held})
    if other:
        fix = (
            "give a flow store (`epic-extract plan --flow DIR ...`; a pipeline: --flow DIR "
            "--flow-store FLOWSTORE)"
            if other[0] == "flow"
            else "give an RGB store (planned from --videos or official rgb_frames)"
        )
        raise EpicInputError(
            f"{asked} trains on {other[0]} input but the store holds {held} (one modality per "
            "store)",
            where=str(where),
            fix=fix,
        )
    planned = getattr(params, "flow_stack", 0)
    wrong = sorted(set(flow_stacks) - {planned})
    if held == "flow" and params.keep == "sampled" and wrong:
        raise EpicInputError(
            f"the flow store keeps sampled snippets of {planned} (u, v) pairs only; {asked} "
            f"reads stacks of {','.join(map(str, wrong))}",
            where=str(where),
            fix=f"train with --flow-stack {planned}, or plan another flow store (--keep "
            "segments serves any stack)",
        )


def plan_differences(
    manifest: Manifest, *, keep: str | None, num_frames: Sequence[int] | None, shards: int | None
) -> list[str]:
    """What the planning options given (None: not given) would change in the store's
    existing plan: a store's plan is fixed once it is made."""
    params = manifest.params
    differences = []
    if keep is not None and keep != params.keep:
        differences.append(f"--keep {keep} (the plan: {params.keep})")
    sampled = params.keep == "sampled" and keep in (None, "sampled")
    if sampled and num_frames is not None and sorted(set(num_frames)) != sorted(params.num_frames):
        planned = ",".join(map(str, params.num_frames))
        given = ",".join(map(str, num_frames))
        differences.append(f"--num-frames {given} (the plan: {planned})")
    if shards is not None and shards != len(manifest.shards):
        differences.append(f"--shards {shards} (the plan: {len(manifest.shards)})")
    return differences


def config_changes(
    run_dir: Path, requested: dict[str, Any]
) -> tuple[dict[str, tuple[Any, Any]], set[str]]:
    """The requested options that differ from the run's config.yaml ({name: (old, new)}),
    and which of them would change its result (epic-train refuses those on resume without
    --allow-config-change; docs/training.md)."""
    saved = read_config(run_dir)
    if saved is None:
        return {}, set()
    types = field_types()
    changes = {}
    for key, new in requested.items():
        old = saved.get(key, _default(key))
        with contextlib.suppress(ValueError):  # unparsable: it differs, and says how
            old = types[key].parse(old)
        if old != new:
            changes[key] = (old, new)
    if not changes:
        return {}, set()
    return changes, set(changes) - free_on_resume(_scheduler_asked(saved, requested))


def _scheduler_asked(saved: dict[str, Any], requested: dict[str, Any]) -> str:
    """The scheduler of the options asked for: given, else their recipe's, else the run's."""
    if "scheduler" in requested:
        return requested["scheduler"]
    if "recipe" in requested:
        return resolve_options({}, requested).get("scheduler", _default("scheduler"))
    return saved.get("scheduler", _default("scheduler"))


def _train_decision(
    run_dir: Path, status: RunStatus, train_args: Sequence[str]
) -> tuple[bool, str]:
    """(whether training must be submitted, what the options after -- change): the run is
    not done, or it is done and they ask for more (more epochs, or changes allowed with
    --allow-config-change). Changes that would alter the result without that flag are
    refused here, not in the job."""
    requested = train_options(train_args)
    changes, binding = config_changes(run_dir, requested)
    said = "; ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items())
    if binding and ALLOW_CHANGE not in train_args:
        done = status.state == "done"
        raise EpicInputError(
            ("the run is done and " if done else "")
            + f"the training options differ from the run's: {said}",
            where=str(run_dir / "config.yaml"),
            fix=f"for a new run give a new --run-dir; to train this run on with them, add "
            f"{ALLOW_CHANGE} after `--` (epic-train resumes from last.pt and records the "
            "change); or drop them to keep the run as it is",
        )
    note = f"options changed from config.yaml: {said}" if changes else ""
    if status.state != "done":
        return True, note
    more_epochs = requested.get("epochs", 0) > status.epochs_done
    return bool(binding) or more_epochs, note


# ----------------------------------------------------------------------------- the chain


@dataclass
class Plan:
    """What the pipeline will submit, and why."""

    extract_indices: list[int]
    force: bool
    train: bool
    validate: bool
    reasons: list[str]


def _store_state(store: Path, manifest: Manifest | None) -> tuple[list[int], bool, str]:
    """(indices to extract, whether to --force, reason): a plan not written yet (a dry run
    that planned) is all to extract."""
    if manifest is not None and not (store / MANIFEST_NAME).exists():
        count = len(manifest.shards)
        return list(range(count)), False, f"store: planned (not written: dry run), {count} shards"
    report = check_store(store)
    indices = report.resubmit_indices
    force = any(s.published for s in report.shards if s.problems)
    if indices:
        return indices, force, f"store: {len(indices)} of {len(report.shards)} shards to extract"
    return [], False, f"store: all {len(report.shards)} shards published and intact"


def assess(
    store: Path,
    run_dir: Path,
    *,
    manifest: Manifest | None = None,
    train_args: Sequence[str] = (),
    predictions: bool = False,
) -> Plan:
    """What is missing, from the store's shards and the run folder. ``predictions``: the
    validation counts as done only with its ``val/predictions.pkl`` too (a fusion reads it)."""
    indices, force, reason = _store_state(store, manifest)
    reasons = [reason]
    status = run_status(run_dir)
    train, note = _train_decision(run_dir, status, train_args)
    what = {"stopped": "stopped, resumes from last.pt", "requeued": "requeued, not queued"}
    state = what.get(status.state, status.state)
    if status.state == "done":
        state = "done, trains on from last.pt" if train else "done"
    details = [d for d in (status.detail, note) if d]
    reasons.append(
        f"training: {state} ({status.epochs_done}/{status.epochs or '?'} epochs)"
        + "".join(f", {d}" for d in details)
    )
    metrics = run_dir / VALIDATION_DIR / "metrics.json"
    best = run_dir / "best.pt"
    validate = train or not (
        metrics.exists() and best.exists() and metrics.stat().st_mtime >= best.stat().st_mtime
    )
    validate = validate or (predictions and not (metrics.parent / PREDICTIONS).exists())
    reasons.append("validation: " + ("to do" if validate else f"done ({metrics})"))
    return Plan(indices, force, train, validate, reasons)


@dataclass(frozen=True)
class Submitted:
    kind: str
    job_id: str
    log: str
    command: list[str]


def _chain(
    plan: Plan,
    store: Path,
    annotations: Path,
    run_dir: Path,
    train_args: Sequence[str],
    prefix: str = "",
) -> list[tuple[str, Job]]:
    """The jobs of ``plan`` in order, named ``prefix`` + kind (``flow-train``), their
    dependencies as ``{name}`` placeholders."""
    data = {"EPIC_STORE": str(store), "EPIC_ANNOTATIONS": str(annotations)}
    extract, check, train = (f"{prefix}{kind}" for kind in ("extract", "check", "train"))
    jobs: list[tuple[str, Job]] = []
    if plan.extract_indices:
        extract_env = {"EPIC_STORE": str(store)} | ({"EPIC_FORCE": "1"} if plan.force else {})
        jobs.append((extract, Job("extract", extract_env, array=array_spec(plan.extract_indices))))
        jobs.append((check, Job("check", data, after_any=[f"{{{extract}}}"])))
    checked = [f"{{{check}}}"] if plan.extract_indices else []
    if plan.train:
        train_env = data | {"EPIC_RUN_DIR": str(run_dir)}
        jobs.append((train, Job("train", train_env, after_ok=checked, script_args=train_args)))
    if plan.validate:
        val_env = data | {
            "EPIC_CHECKPOINT": str(run_dir / "best.pt"),
            "EPIC_OUT": str(run_dir / VALIDATION_DIR),
        }
        after = [f"{{{train}}}"] if plan.train else checked
        jobs.append((f"{prefix}validate", Job("validate", val_env, after_ok=after)))
    return jobs


def _refuse_a_queued_chain(key: str, site: Site, where: str, dry_run: bool) -> None:
    """No second chain while one of this store and run (``where``) is queued; a dry run
    that cannot ask squeue says so and goes on."""
    _refuse_queued_chains([(key, where)], site, dry_run)


def _refuse_queued_chains(chains: Sequence[tuple[str, str]], site: Site, dry_run: bool) -> None:
    """No second chain while one of ``chains`` ((comment, what it is for) each) is queued;
    a dry run that cannot ask squeue says so once and goes on."""
    for key, where in chains:
        try:
            waiting = queued_jobs(key, site)
        except EnvironmentProblem as exc:
            if not dry_run:
                raise
            log.warning("dry run without SLURM: a chain already queued is not ruled out (%s)", exc)
            return
        if waiting:
            raise EpicInputError(
                f"a chain for this store and run is still queued or running (jobs "
                f"{', '.join(waiting)})",
                where=where,
                fix="wait for it (squeue --me), or cancel those jobs first (`scancel "
                f"{' '.join(waiting)}`: a training job saves last.pt and stops); rerun this "
                "command afterwards and it submits only what is still missing",
            )


def _after(job: Job, ids: dict[str, str]) -> Job:
    """``job`` with its ``{name}`` dependencies replaced by the job ids in ``ids``."""
    return dataclasses.replace(
        job,
        after_ok=[d.format(**ids) for d in job.after_ok],
        after_any=[d.format(**ids) for d in job.after_any],
    )


def _submit_all(jobs: list[tuple[str, Job]], site: Site) -> list[Submitted]:
    """Submit the chain, each job after the one it depends on; if one is refused, cancel
    those this call submitted (a half chain would block the next pipeline) and say so."""
    ids: dict[str, str] = {}
    done: list[Submitted] = []
    for name, job in jobs:
        job = _after(job, ids)
        try:
            ids[name] = submit(job, site)
        except EpicInputError as exc:
            if not done:
                raise
            sent = ", ".join(f"{d.kind} {d.job_id}" for d in done)
            failed = cancel([d.job_id for d in done], site)
            undo = (
                f"cancelled the jobs this run had submitted ({sent})"
                if not failed
                else f"could not cancel the jobs this run had submitted ({sent}: {failed}); "
                f"scancel {' '.join(d.job_id for d in done)} yourself"
            )
            raise type(exc)(
                f"the {name} job was refused after {len(done)} job(s) of the chain were "
                f"submitted; {undo}",
                where=str(site.path),
                fix="fix what sbatch says below, then rerun the pipeline",
                details=str(exc),
            ) from None
        done.append(Submitted(name, ids[name], job.log(site, ids[name]), job.sbatch(site)))
    return done


def _planned(store: Path, manifest: Manifest | None) -> Manifest:
    """The store's plan: ``manifest`` when a dry run made it without writing it, else the
    store's manifest.json, which must exist."""
    if manifest is not None:
        return manifest
    if not (store / MANIFEST_NAME).exists():
        raise EpicInputError(
            "the store is not planned", where=str(store), fix="give --videos to plan it"
        )
    return Manifest.load(store)


def _require_serves(store: Path, manifest: Manifest, train_args: Sequence[str], asked: str) -> None:
    """Refuse a store that cannot serve the training of ``train_args`` (its recipe's values
    too): clip length, sampling, modality, flow stack."""
    requested = resolve_options({}, train_options(train_args))

    def value(name: str) -> Any:
        return requested.get(name, _default(name))

    check_serves(
        manifest.params,
        [value("num_frames")],
        [value("sampling")],
        modalities=[value("modality")],
        flow_stacks=[value("flow_stack")] if value("modality") == "flow" else [],
        where=store,
        asked=asked,
    )


def _stream_jobs(
    store: Path,
    manifest: Manifest,
    annotations: Path,
    run_dir: Path,
    train_args: Sequence[str],
    *,
    prefix: str = "",
) -> tuple[Plan, list[tuple[str, Job]]]:
    """What is missing of one stream (store and run), and its jobs, each with the stream's
    chain comment and named ``prefix`` + kind."""
    plan = assess(
        store, run_dir, manifest=manifest, train_args=train_args, predictions=bool(prefix)
    )
    for reason in plan.reasons:
        log.info("%s%s", f"{prefix.rstrip('-')} " if prefix else "", reason)
    key = chain_key(store, run_dir)
    jobs = [
        (name, dataclasses.replace(job, comment=key))
        for name, job in _chain(plan, store, annotations, run_dir, train_args, prefix)
    ]
    return plan, jobs


def _send(
    jobs: list[tuple[str, Job]], site: Site, stores: Sequence[Path], dry_run: bool
) -> list[Submitted]:
    """Submit the chain ``jobs`` whole (every job checked before the first is sent), or for
    a dry run return what would be submitted, with ``<name>`` placeholders as job ids."""
    if dry_run:
        for store in stores:
            for problem in path_problems(site, store):
                log.warning("a real submission would be refused: %s", problem)
        ids = {name: f"<{name}>" for name, _job in jobs}
        return [
            Submitted(name, ids[name], job.log(site, ids[name]), _after(job, ids).sbatch(site))
            for name, job in jobs
        ]
    for store in stores:
        require_paths(site, store)
    for _name, job in jobs:  # the whole chain is checked before the first job is sent
        check_accepted(job, site)
    return _submit_all(jobs, site)


def _refuse_another_layout(run_dir: Path, two_streams: bool) -> None:
    """A run folder is one stream's (RUN/config.yaml) or two streams' (RUN/rgb, RUN/flow,
    RUN/fused): the other kind of pipeline may not train into it."""
    single = (run_dir / "config.yaml").exists()
    double = any((run_dir / name / "config.yaml").exists() for name in STREAMS)
    if two_streams and single:
        raise EpicInputError(
            "the run folder holds a one-stream run (config.yaml), and a two-stream pipeline "
            "trains into RUN/rgb and RUN/flow",
            where=str(run_dir),
            fix="give a new --run-dir for the two streams (or drop --flow to go on with this run)",
        )
    if not two_streams and double:
        raise EpicInputError(
            "the run folder holds a two-stream run (rgb/, flow/)",
            where=str(run_dir),
            fix="add the --flow options it was made with, or give a new --run-dir",
        )


def run_pipeline(
    site: Site,
    *,
    store: Path,
    annotations: Path,
    run_dir: Path,
    train_args: Sequence[str] = (),
    dry_run: bool = False,
    manifest: Manifest | None = None,
) -> list[Submitted]:
    """Submit what is missing of the chain for ``store`` and ``run_dir``; returns the jobs
    submitted (dry run: ids are placeholders such as ``<extract>``, nothing is sent or
    written). ``manifest``: the store's plan when a dry run made it without writing it;
    otherwise the store must be planned already."""
    manifest = _planned(store, manifest)
    _require_serves(store, manifest, train_args, "training (the options after --)")
    _refuse_another_layout(run_dir, two_streams=False)
    key = chain_key(store, run_dir)
    _refuse_a_queued_chain(key, site, f"{store} -> {run_dir}", dry_run)
    _plan, jobs = _stream_jobs(store, manifest, annotations, run_dir, train_args)
    if not jobs:
        log.info("nothing to submit: the store, the run and its validation are complete")
        return []
    return _send(jobs, site, [store], dry_run)


# ----------------------------------------------------------------------------- two streams

#: The run folders of a two-stream pipeline: RUN/rgb and RUN/flow (each a run folder as
#: above, with its val/), RUN/fused (epic-validate --fuse of their val/predictions.pkl).
STREAMS = ("rgb", "flow")
FUSED_DIR = "fused"
#: What slurm/fuse.sbatch writes into RUN/fused after a fusion succeeded: its epic-validate
#: --fuse arguments, one a line, so that other inputs or weights fuse again.
FUSE_RECORD = "fuse_args"
#: TrainConfig fields the pipeline sets per stream, refused in the options given.
PER_STREAM = ("modality",)


@dataclass(frozen=True)
class Stream:
    """One stream of a two-stream pipeline: ``name`` (rgb or flow), its store (``manifest``:
    its plan when a dry run made it without writing it) and its epic-train options."""

    name: str
    store: Path
    train_args: tuple[str, ...]
    manifest: Manifest | None = None


def fusion_key(run_dir: Path) -> str:
    """The --comment of a two-stream run's fusion job."""
    digest = hashlib.sha1(f"fused|{run_dir.resolve()}".encode()).hexdigest()
    return f"epic-chain-{digest[:12]}"


def _recipe_words(words: Sequence[str]) -> tuple[list[str], str | None]:
    """``words`` without their ``--recipe NAME`` / ``--recipe=NAME``, and the last NAME."""
    kept: list[str] = []
    recipe = None
    position = 0
    while position < len(words):
        word = words[position]
        if word == "--recipe" and position + 1 < len(words):
            recipe, position = words[position + 1], position + 2
            continue
        if word.startswith("--recipe="):
            recipe = word.split("=", 1)[1]
        else:
            kept.append(word)
        position += 1
    return kept, recipe


def flow_recipe(rgb_recipe: str) -> str | None:
    """The flow variant of an RGB recipe (``tsn-r50`` -> ``tsn-r50-flow``: C1's ``tsn_flow``
    config), None when train.recipes has none."""
    name = f"{rgb_recipe}-flow"
    return name if name in RECIPES else None


def stream_options(
    common: Sequence[str], rgb_args: Sequence[str] = (), flow_args: Sequence[str] = ()
) -> tuple[list[str], list[str]]:
    """(RGB, flow) epic-train options of a two-stream pipeline: ``common`` (the words after
    ``--``) for both, then each stream's own. The flow stream gets ``--modality flow``, and
    where ``common`` names a recipe (or its --config does) with a flow variant, that
    variant instead (``tsn-r50`` -> ``tsn-r50-flow``); a recipe without one is kept, with
    a warning. The modality is the pipeline's to set: given anywhere, it is refused."""
    for where, words in (
        ("after --", common),
        ("--rgb-args", rgb_args),
        ("--flow-args", flow_args),
    ):
        given = sorted(set(train_options(words)) & set(PER_STREAM))
        if given:
            raise EpicInputError(
                f"--{given[0]} is set per stream by a two-stream pipeline (rgb, flow)",
                where=f"{where}: {shlex.join(words)}",
                fix="drop it: the rgb stream trains rgb, the flow stream flow",
            )
    rgb = [*common, *rgb_args]
    base, named = _recipe_words(common)
    recipe = train_options(common).get("recipe") if named is None else named
    flow = [*(common if recipe is None else base), "--modality", "flow"]
    own_recipe = _recipe_words(flow_args)[1] is not None
    if recipe is not None and not own_recipe:
        variant = flow_recipe(recipe)
        if variant is None:
            log.warning(
                "recipe %s has no flow variant (%s-flow) in train/recipes.py: the flow stream "
                "trains recipe %s with --modality flow",
                recipe,
                recipe,
                recipe,
            )
        flow += ["--recipe", variant or recipe]
    return rgb, [*flow, *flow_args]


def fuse_weight_words(text: str | None) -> list[str]:
    """``--fuse-weights`` as epic-validate words: two positive numbers (rgb, flow), checked
    here so that a typo fails before the chain is submitted (train.fusion's rule)."""
    if text is None:
        return []
    parts = text.split(",")
    try:
        good = len(parts) == 2 and all(0 < float(w) < float("inf") for w in parts)
    except ValueError:
        good = False
    if not good:
        raise EpicInputError(
            f"--fuse-weights {text}: expected two positive numbers, rgb then flow",
            where="epic-slurm pipeline --fuse-weights",
            fix="e.g. --fuse-weights 1,1.5 (C1 fuses with equal weights: leave it out)",
        )
    return ["--fuse-weights", text]


def fusion_arguments(run_dir: Path, fuse_weights: str | None = None) -> list[str]:
    """The fusion job's epic-validate --fuse arguments: the two streams' predictions files
    (rgb first: the fused file keeps its row order), then the weights, if given."""
    files = [str(run_dir / name / VALIDATION_DIR / PREDICTIONS) for name in STREAMS]
    return [*files, *fuse_weight_words(fuse_weights)]


def _fusion_todo(run_dir: Path, arguments: list[str], after_validation: bool) -> tuple[bool, str]:
    """(whether to fuse, why): after a stream's validation, or when RUN/fused has no metrics,
    was fused from other arguments (slurm/fuse.sbatch records them) or is older than a
    stream's predictions."""
    fused = run_dir / FUSED_DIR
    metrics = fused / "metrics.json"
    if after_validation:
        return True, "fusion: to do, after the streams' validation"
    if not metrics.exists():
        return True, "fusion: to do"
    recorded = _text(fused, FUSE_RECORD)
    if recorded is None or recorded.splitlines() != arguments:
        return True, f"fusion: to do again (its {FUSE_RECORD} differs: {shlex.join(arguments)})"
    newer = [
        name
        for name, path in zip(STREAMS, arguments, strict=False)
        if Path(path).stat().st_mtime > metrics.stat().st_mtime
    ]
    if newer:
        return True, f"fusion: to do again ({', '.join(newer)} predictions are newer)"
    return False, f"fusion: done ({metrics})"


def run_two_streams(
    site: Site,
    *,
    rgb: Stream,
    flow: Stream,
    annotations: Path,
    run_dir: Path,
    fuse_weights: str | None = None,
    dry_run: bool = False,
) -> list[Submitted]:
    """Submit what is missing of a two-stream pipeline: each stream's chain (extract ->
    check -> train -> validate, from its own store into RUN/rgb or RUN/flow, with its own
    chain comment) and the fusion of their predictions into RUN/fused, after both
    validations (afterok). Rerun, a finished stream is not trained again; the fusion runs
    again when its output is missing or stale. The whole chain is checked before the first
    job is sent, as in :func:`run_pipeline`."""
    arguments = fusion_arguments(run_dir, fuse_weights)
    _refuse_another_layout(run_dir, two_streams=True)
    streams = []
    for stream in (rgb, flow):
        manifest = _planned(stream.store, stream.manifest)
        _require_serves(stream.store, manifest, stream.train_args, f"the {stream.name} stream")
        streams.append((stream, manifest))
    fused = run_dir / FUSED_DIR
    chains = [
        (chain_key(s.store, run_dir / s.name), f"{s.store} -> {run_dir / s.name}")
        for s, _manifest in streams
    ]
    _refuse_queued_chains([*chains, (fusion_key(run_dir), str(fused))], site, dry_run)
    jobs: list[tuple[str, Job]] = []
    validated = []
    for stream, manifest in streams:
        plan, stream_jobs = _stream_jobs(
            stream.store,
            manifest,
            annotations,
            run_dir / stream.name,
            stream.train_args,
            prefix=f"{stream.name}-",
        )
        jobs += stream_jobs
        validated += [f"{{{stream.name}-validate}}"] if plan.validate else []
    fuse, reason = _fusion_todo(run_dir, arguments, bool(validated))
    log.info("%s", reason)
    if fuse:
        env = {
            "EPIC_ANNOTATIONS": str(annotations),
            "EPIC_SPLIT": "validation",
            "EPIC_OUT": str(fused),
        }
        job = Job("fuse", env, after_ok=validated, comment=fusion_key(run_dir))
        jobs.append(("fuse", dataclasses.replace(job, script_args=arguments)))
    if not jobs:
        log.info("nothing to submit: both streams, their validation and the fusion are complete")
        return []
    return _send(jobs, site, [rgb.store, flow.store], dry_run)
