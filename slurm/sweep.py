"""A grid of training runs as one SLURM array job, and the table of their results.

A grid file (``slurm/sweeps/seed-week2.yaml``) maps epic-train options to lists of values;
every combination is one run. ``epic-slurm sweep`` writes ``RUNS/sweep.json`` (index,
name, options of each run) and submits one array of ``slurm/sweep.sbatch``: task N reads
entry N and trains into ``RUNS/<name>`` with ``--resume auto``, requeueing itself like a
single training. Rerun, it submits only the runs not done. ``epic-slurm summary RUNS``
reads every run folder: best validation top-1 and status.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import itertools
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from epicdata.console import user_line
from epicdata.errors import EnvironmentProblem, EpicInputError
from epicdata.manifest import Manifest
from epicslurm.pipeline import (
    FAILED_MARKER,
    RunFolderUnreadable,
    array_spec,
    check_serves,
    combined_status,
    queued_jobs,
    queued_tasks,
    run_status,
    summary_rows,
)
from epicslurm.site import Site, path_problems, require_paths
from epicslurm.submit import Job, submit
from preprocess.check import check_store
from train.config import PATH_FIELDS, FieldType, TrainConfig, field_types
from train.recipes import resolve_options

log = logging.getLogger(__name__)

SWEEP_FILE = "sweep.json"
SWEEP_FORMAT_VERSION = 1
SUMMARY_CSV = "sweep_summary.csv"
#: The grid file's key for options every run gets.
FIXED_KEY = "fixed"
#: Set by the sweep itself (the store, the annotations, RUNS/<name>).
NOT_IN_GRID = PATH_FIELDS
#: Short names in run folder names; other keys appear as key=value.
SHORT_NAMES = {"batch_size": "bs", "lr": "lr", "num_frames": "f"}
#: The summary.csv columns (train/fit.py _end_epoch: "val_" + train/metrics.py keys, in %).
ACTION_COLUMN = "val_all_action_accuracy_at_1"
VERB_COLUMN = "val_all_verb_accuracy_at_1"
NOUN_COLUMN = "val_all_noun_accuracy_at_1"
#: The statuses of the summary, in the order its last line counts them.
STATUSES = ("done", "running", "requeued", "stopped", "failed", "pending", "unreadable")
_NAME_CHARS = re.compile(r"[^A-Za-z0-9._+-]")
_SAFE_NAME = re.compile(r"[A-Za-z0-9._+=-]+")


# ----------------------------------------------------------------------------- the grid


@dataclass(frozen=True)
class Run:
    """One run of a sweep: its array index, its folder name and its epic-train options."""

    index: int
    name: str
    options: dict[str, Any]

    def resolved(self) -> dict[str, Any]:
        """Its options with its recipe's beneath them, as epic-train resolves them."""
        return resolve_options({}, self.options)

    def train_args(self) -> list[str]:
        """The epic-train options as command-line words (``--lr=0.0001``, ``--deterministic``):
        one word each, so a value starting with ``-`` cannot be taken for an option."""
        words = []
        for key, value in self.options.items():
            flag = "--" + key.replace("_", "-")
            if isinstance(value, bool):
                words.append(flag if value else f"--no-{flag[2:]}")
            elif value is not None:  # None: the field's default, which is None
                words.append(f"{flag}={value!r}" if isinstance(value, float) else f"{flag}={value}")
        return words

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "options": self.options}


@dataclass(frozen=True)
class Grid:
    """A grid file, validated and expanded: ``axes`` (key -> values, in file order),
    ``fixed`` options and the runs (cartesian product, the last key varying fastest)."""

    path: Path
    axes: dict[str, tuple[Any, ...]]
    fixed: dict[str, Any]
    runs: tuple[Run, ...]

    @property
    def clip_lengths(self) -> list[int]:
        return sorted(
            {int(r.resolved().get("num_frames", _default("num_frames"))) for r in self.runs}
        )

    @property
    def samplings(self) -> list[str]:
        return sorted({str(r.resolved().get("sampling", _default("sampling"))) for r in self.runs})

    @property
    def modalities(self) -> list[str]:
        return sorted({str(r.resolved().get("modality", _default("modality"))) for r in self.runs})

    @property
    def flow_stacks(self) -> list[int]:
        """The --flow-stack of the grid's flow runs."""
        return sorted(
            {
                int(r.resolved().get("flow_stack", _default("flow_stack")))
                for r in self.runs
                if r.resolved().get("modality", _default("modality")) == "flow"
            }
        )


def _default(name: str) -> Any:
    return next(f.default for f in dataclasses.fields(TrainConfig) if f.name == name)


def _grid_fields() -> dict[str, FieldType]:
    """TrainConfig's grid-able fields and their types (train.config: the one typing of config
    values, shared with epic-train's options and --config files)."""
    return {k: v for k, v in field_types().items() if k not in NOT_IN_GRID}


def _word(value: Any) -> str:
    """A value as it reads in a folder name: 1e-4, 0.3, 16, true, cosine."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, float):
        if value != 0 and abs(value) < 1e-2:
            mantissa, exponent = f"{value:.12e}".split("e")
            mantissa = mantissa.rstrip("0").rstrip(".")
            return f"{mantissa}e{int(exponent)}"
        return repr(value)
    return _NAME_CHARS.sub("_", str(value))


def run_name(values: dict[str, Any]) -> str:
    """The folder name of a run from its grid values: ``bs32-lr1e-4-f8`` (short names for
    batch_size, lr and num_frames, ``key=value`` for other keys), in the grid's key order."""
    return "-".join(
        f"{SHORT_NAMES[k]}{_word(v)}" if k in SHORT_NAMES else f"{k}={_word(v)}"
        for k, v in values.items()
    )


@dataclass(frozen=True)
class _GridFile:
    """A grid file as YAML read it, not yet checked against TrainConfig: the ``fixed:``
    mapping and the other keys (option -> list of values)."""

    path: Path
    fixed: dict[Any, Any]
    axes: dict[Any, Any]

    @property
    def where(self) -> str:
        return str(self.path)


def _read_grid_file(path: Path) -> _GridFile:
    """The grid file's two mappings, or an error naming the file."""
    where = str(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise EpicInputError(
            "grid file not found",
            where=where,
            fix="give --grid a YAML file such as slurm/sweeps/seed-week2.yaml",
        ) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise EpicInputError(
            "cannot read the grid file", where=where, fix="fix the YAML", details=str(exc)
        ) from None
    if not isinstance(data, dict) or not data:
        raise EpicInputError(
            "a grid file is a mapping of epic-train options to lists of values",
            where=where,
            fix="write e.g. `batch_size: [16, 32]` (see slurm/sweeps/seed-week2.yaml)",
        )
    fixed = data.pop(FIXED_KEY, None) or {}
    if not isinstance(fixed, dict):
        raise EpicInputError(
            f"'{FIXED_KEY}' must be a mapping of option: value",
            where=where,
            fix=f"write e.g. `{FIXED_KEY}: {{epochs: 30}}`",
        )
    return _GridFile(path, fixed, data)


def _option_name(raw: Any, section: str, where: str) -> str:
    """A grid key as the TrainConfig field it names (``batch-size`` -> ``batch_size``)."""
    key = str(raw).replace("-", "_")
    if key not in _grid_fields():
        raise EpicInputError(
            f"unknown option {raw!r} in {section}",
            where=where,
            fix=f"use epic-train options (TrainConfig fields): {', '.join(sorted(_grid_fields()))}",
        )
    return key


def _option_value(key: str, value: Any, section: str, where: str) -> Any:
    """A grid value typed as epic-train types it (``5e-5``: a float; ``2.5``: no integer)."""
    try:
        return _grid_fields()[key].parse(value)
    except ValueError as exc:
        raise EpicInputError(
            f"{section} {key}: {exc}", where=where, fix="correct the value"
        ) from None


def _fixed_options(grid: _GridFile) -> dict[str, Any]:
    """The options every run gets, typed."""
    fixed = {}
    for raw, value in grid.fixed.items():
        key = _option_name(raw, FIXED_KEY, grid.where)
        fixed[key] = _option_value(key, value, FIXED_KEY, grid.where)
    return fixed


def _grid_axes(grid: _GridFile, fixed: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    """Each varied option and its values, typed, in file order: at least one, none given
    twice, each a non-empty list without repeats."""
    axes: dict[str, tuple[Any, ...]] = {}
    for raw, values in grid.axes.items():
        key = _option_name(raw, "the grid", grid.where)
        if key in axes or key in fixed:
            raise EpicInputError(
                f"option {key} is given twice", where=grid.where, fix="keep one of them"
            )
        if not isinstance(values, list) or not values:
            raise EpicInputError(
                f"grid option {key}: expected a non-empty list of values, got {values!r}",
                where=grid.where,
                fix=f"write `{key}: [value, ...]`, or put a single value under `{FIXED_KEY}:`",
            )
        axes[key] = tuple(_option_value(key, v, "grid option", grid.where) for v in values)
        if len(set(map(repr, axes[key]))) != len(axes[key]):
            raise EpicInputError(
                f"grid option {key} repeats a value", where=grid.where, fix="list each value once"
            )
    if not axes:
        raise EpicInputError(
            "the grid has no option with a list of values",
            where=grid.where,
            fix="add e.g. `lr: [5e-5, 1e-4]` next to `fixed:`",
        )
    return axes


def _expand_runs(
    axes: dict[str, tuple[Any, ...]], fixed: dict[str, Any], where: str
) -> tuple[Run, ...]:
    """Every combination of the axes (the last key varying fastest) as a run whose options
    make a valid TrainConfig, each with its own folder name."""
    runs = []
    for index, combo in enumerate(itertools.product(*axes.values())):
        values = dict(zip(axes, combo, strict=True))
        run = Run(index, run_name(values), {**fixed, **values})
        try:
            TrainConfig(store="-", annotations="-", output_dir="-", **run.resolved())
        except EpicInputError as exc:
            raise EpicInputError(
                f"run {run.name}: {exc}", where=where, fix="correct the grid's values"
            ) from None
        runs.append(run)
    names = [r.name for r in runs]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise EpicInputError(
            f"runs with the same folder name: {', '.join(clash[:3])}",
            where=where,
            fix="use values that differ once written as a name (letters, digits, . _ + -)",
        )
    return tuple(runs)


def load_grid(path: str | Path) -> Grid:
    """Read and validate a grid file (keys: TrainConfig fields; values: non-empty lists;
    ``fixed:`` a mapping) and expand it; every run's options must make a valid TrainConfig."""
    grid = _read_grid_file(Path(path))
    fixed = _fixed_options(grid)
    axes = _grid_axes(grid, fixed)
    return Grid(grid.path, axes, fixed, _expand_runs(axes, fixed, grid.where))


# ----------------------------------------------------------------------------- sweep.json


def sweep_file(runs_root: str | Path) -> Path:
    return Path(runs_root) / SWEEP_FILE


def read_sweep(path: str | Path) -> list[Run]:
    """The runs of a ``sweep.json``; an error naming the file when it is missing or
    malformed (run names must be plain folder names, options epic-train's: a task prints
    them one a line for bash)."""
    path = Path(path)
    fix = "submit the sweep with `epic-slurm sweep --grid FILE --runs-root RUNS`, which writes it"
    try:
        data = json.loads(path.read_text())
        runs = [Run(int(r["index"]), str(r["name"]), dict(r["options"])) for r in data["runs"]]
    except FileNotFoundError:
        raise EpicInputError("no sweep here", where=f"{path} not found", fix=fix) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EpicInputError(
            "malformed sweep file", where=f"{path}: {type(exc).__name__} {exc}", fix=fix
        ) from None
    fields = _grid_fields()
    for position, run in enumerate(runs):
        problem = ""
        if run.index != position:
            problem = f"index {run.index}"
        elif not _SAFE_NAME.fullmatch(run.name) or run.name in (".", ".."):
            problem = f"name {run.name!r} is not a plain folder name"
        for key, value in run.options.items():
            try:
                if key not in fields:
                    raise ValueError("not an epic-train option")
                fields[key].parse(value)
            except ValueError as exc:
                problem = problem or f"option {key}: {exc}"
        if problem:
            raise EpicInputError(
                f"malformed sweep file: run {position}: {problem}", where=str(path), fix=fix
            )
    return runs


def _differences(old: Sequence[Run], new: Sequence[Run], limit: int = 3) -> str:
    """What differs between two lists of runs, in a few words."""
    old_by, new_by = {r.name: r for r in old}, {r.name: r for r in new}
    parts = []
    gone = [n for n in old_by if n not in new_by]
    added = [n for n in new_by if n not in old_by]
    if len(old) != len(new):
        parts.append(f"{len(old)} runs -> {len(new)}")
    if gone:
        parts.append(f"runs only in the old grid: {', '.join(gone[:limit])}")
    if added:
        parts.append(f"runs only in the new grid: {', '.join(added[:limit])}")
    for name in (n for n in old_by if n in new_by):
        a, b = old_by[name], new_by[name]
        if a.index != b.index:
            parts.append(f"run {name}: index {a.index} -> {b.index}")
        for key in dict.fromkeys([*a.options, *b.options]):
            if a.options.get(key) != b.options.get(key):
                parts.append(f"run {name}: {key} {a.options.get(key)!r} -> {b.options.get(key)!r}")
        if len(parts) > limit:
            break
    return "; ".join(parts[: limit + 1])


def _refuse_another_sweep(runs_root: Path, runs: Sequence[Run]) -> None:
    """A different grid may not replace a sweep.json whose runs have folders already."""
    path = sweep_file(runs_root)
    if not path.exists():
        return
    old = read_sweep(path)
    if [r.to_dict() for r in old] == [r.to_dict() for r in runs]:
        return
    started = [r.name for r in old if (runs_root / r.name).exists()]
    if started:
        raise EpicInputError(
            f"{runs_root} holds a different sweep with {len(started)} run folder(s) "
            f"({', '.join(started[:3])})",
            where=str(path),
            fix="use a new --runs-root for this grid (or resubmit the same grid file); to "
            "replace the sweep, delete sweep.json and its run folders first",
            details=_differences(old, runs),
        )


def write_sweep(runs_root: str | Path, grid: Grid) -> Path:
    """Write ``RUNS/sweep.json`` (the array tasks read it) and return its path. The same
    grid again is fine (a resubmission); a different one while runs exist is refused."""
    runs_root = Path(runs_root)
    _refuse_another_sweep(runs_root, grid.runs)
    runs_root.mkdir(parents=True, exist_ok=True)
    data = {
        "format_version": SWEEP_FORMAT_VERSION,
        "grid_file": str(grid.path.resolve()),
        "axes": {k: list(v) for k, v in grid.axes.items()},
        "fixed": grid.fixed,
        "runs": [r.to_dict() for r in grid.runs],
    }
    path = sweep_file(runs_root)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------- submission


def check_store_serves(
    store: str | Path,
    clip_lengths: Iterable[int],
    samplings: Iterable[str] = (),
    modalities: Iterable[str] = (),
    flow_stacks: Iterable[int] = (),
) -> None:
    """Refuse a store that cannot serve every clip length (and sampling, modality, flow
    stack) of the grid (:func:`epicslurm.pipeline.check_serves`, the pipeline's check too).
    A sweep reads one store, so it trains one modality: a grid of both is refused."""
    modalities = sorted(set(modalities))
    if len(modalities) > 1:
        raise EpicInputError(
            f"the grid trains {' and '.join(modalities)} runs, but a sweep reads one store, "
            "which holds one modality",
            where=str(store),
            fix="split the grid in one sweep per modality, each with its store (--store) and "
            "runs root",
        )
    params = Manifest.load(store).params
    check_serves(
        params,
        list(clip_lengths),
        list(samplings),
        modalities=modalities,
        flow_stacks=list(flow_stacks),
        where=store,
        asked="the grid",
    )


def sweep_key(runs_root: Path) -> str:
    """The --comment of a sweep's array job: one per runs root."""
    digest = hashlib.sha1(str(runs_root.resolve()).encode()).hexdigest()
    return f"epic-sweep-{digest[:12]}"


def _require_extracted(store: Path, site: Site) -> None:
    """Every shard published and intact (the checker's quick mode), or an error with the
    line that extracts the rest: a sweep on a half-made store would fail in every task."""
    report = check_store(store)
    if report.resubmit_indices:
        raise EpicInputError(
            f"the store is not complete: {len(report.resubmit_indices)} of "
            f"{len(report.shards)} shards to extract",
            where=str(store),
            fix="extract them first (or run `epic-slurm pipeline`): "
            + user_line(
                "extract",
                site.path,
                store=store,
                array=array_spec(report.resubmit_indices),
                force=any(s.published for s in report.shards if s.problems),
            ),
        )


def run_sweep(
    site: Site,
    *,
    grid_file: str | Path,
    store: Path,
    annotations: Path,
    runs_root: Path,
    dry_run: bool = False,
) -> tuple[str | None, list[str]]:
    """Check the store, write ``RUNS/sweep.json`` and submit one array job of the runs not
    done. Returns (job id, sbatch command): (None, command) for a dry run, which writes
    and submits nothing and does not ask squeue; (None, []) when every run is done.
    Refused while an array of this runs root is queued or running."""
    grid = load_grid(grid_file)
    check_store_serves(store, grid.clip_lengths, grid.samplings, grid.modalities, grid.flow_stacks)
    _require_extracted(store, site)
    key = sweep_key(runs_root)
    if dry_run:
        _refuse_another_sweep(runs_root, grid.runs)
        path = sweep_file(runs_root)
        for problem in path_problems(site, store):
            log.warning("a real submission would be refused: %s", problem)
    else:
        require_paths(site, store)
        # A second array while one is queued would train two tasks into each run folder.
        waiting = queued_jobs(key, site)
        if waiting:
            raise EpicInputError(
                f"a sweep of this runs root is still queued or running (jobs {', '.join(waiting)})",
                where=str(runs_root),
                fix="wait for it (squeue --me) or scancel it; rerun this command afterwards "
                "and it submits only the runs not done",
            )
        path = write_sweep(runs_root, grid)
    todo = _runs_to_do(runs_root, grid.runs)
    log.info(
        "sweep %s: %d runs, %d done, %d to submit",
        grid.path,
        len(grid.runs),
        len(grid.runs) - len(todo),
        len(todo),
    )
    if not todo:
        return None, []
    env = {
        "EPIC_STORE": str(store),
        "EPIC_ANNOTATIONS": str(annotations),
        "EPIC_RUN_DIR": str(runs_root),
        "EPIC_GRID": str(path),
    }
    job = Job("sweep", env, array=array_spec(todo), comment=key)
    if dry_run:
        return None, job.sbatch(site)
    return submit(job, site), job.sbatch(site)


def _runs_to_do(runs_root: Path, runs: Sequence[Run]) -> list[int]:
    """The indices of the runs not done: new, failed, stopped (resumed from last.pt with
    --resume auto) or with a run folder that cannot be read (named in the log)."""
    todo = []
    for run in runs:
        try:
            status = run_status(runs_root / run.name)
        except RunFolderUnreadable as exc:
            log.warning("run %s: %s; submitted again", run.name, exc.reason)
            todo.append(run.index)
            continue
        if status.state in ("stopped", "requeued"):
            log.info("run %s: %s (%s): resumes from last.pt", run.name, status.state, status.detail)
        if status.state != "done":
            todo.append(run.index)
    return todo


# ----------------------------------------------------------------------------- summary


@dataclass(frozen=True)
class Row:
    """One run in the summary. Accuracies in percent (None: no epoch validated yet)."""

    index: int
    name: str
    status: str  # one of STATUSES
    epochs_done: int
    epochs: int
    best_epoch: int | None = None
    action: float | None = None
    verb: float | None = None
    noun: float | None = None
    detail: str = ""
    options: dict[str, Any] = field(default_factory=dict)


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _best_epoch(run_dir: Path) -> dict[str, str] | None:
    """The summary.csv row with the highest validation action top-1 (the first if tied)."""
    rows = [r for r in summary_rows(run_dir) if _number(r.get(ACTION_COLUMN)) is not None]
    return max(rows, key=lambda r: _number(r[ACTION_COLUMN]), default=None)


@dataclass(frozen=True)
class Queue:
    """What squeue says of a sweep: {array task id: state} of its queued tasks, and whether
    squeue answered at all (``note``: why not)."""

    tasks: dict[int, str]
    known: bool = True
    note: str = ""


def sweep_queue(runs_root: Path, site: Site | None) -> Queue:
    """The queued tasks of the sweep of ``runs_root``; where squeue cannot answer (no SLURM
    here, a controller down) the statuses come from the run folders alone."""
    try:
        return Queue(queued_tasks(sweep_key(runs_root), site))
    except EnvironmentProblem as exc:
        return Queue({}, known=False, note=str(exc).splitlines()[0])


def _row(runs_root: Path, run: Run, queue: Queue) -> Row:
    """The summary row of one run, ``unreadable`` with the reason when its folder is."""
    run_dir = runs_root / run.name
    epochs = int(run.resolved().get("epochs", _default("epochs")))
    try:
        status = run_status(run_dir)
        best = _best_epoch(run_dir)
    except RunFolderUnreadable as exc:
        return Row(
            run.index, run.name, "unreadable", 0, epochs, detail=exc.reason, options=run.options
        )
    state, detail = combined_status(status, queue.tasks.get(run.index), queue.known)
    if state == "failed" and not detail:
        detail = f"{FAILED_MARKER} present"
    scores: dict[str, Any] = {}
    if best is not None:
        scores = {
            "best_epoch": int(best["epoch"]),
            "action": _number(best[ACTION_COLUMN]),
            "verb": _number(best.get(VERB_COLUMN)),
            "noun": _number(best.get(NOUN_COLUMN)),
        }
    return Row(
        run.index,
        run.name,
        state,
        status.epochs_done,
        status.epochs or epochs,
        detail=detail,
        options=run.options,
        **scores,
    )


def summary(runs_root: str | Path, queue: Queue | None = None) -> list[Row]:
    """Every run of ``RUNS/sweep.json`` from its folder and ``queue`` (default: no task
    queued, squeue not asked), best action top-1 first (runs without a validated epoch
    last, in index order). A run folder that cannot be read is one ``unreadable`` row."""
    runs_root = Path(runs_root)
    queue = queue or Queue({}, known=False)
    rows = [_row(runs_root, run, queue) for run in read_sweep(sweep_file(runs_root))]
    return sorted(rows, key=lambda r: (r.action is None, -(r.action or 0.0), r.index))


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_summary(rows: Sequence[Row]) -> str:
    """The rows as a text table, one line per run."""
    header = ["run", "status", "action@1", "verb@1", "noun@1", "best epoch", "epochs", "note"]
    table = [
        [
            r.name,
            r.status,
            _percent(r.action),
            _percent(r.verb),
            _percent(r.noun),
            "-" if r.best_epoch is None else str(r.best_epoch),
            f"{r.epochs_done}/{r.epochs}",
            r.detail,
        ]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *table]) for i in range(len(header))]
    numeric = {2, 3, 4, 5, 6}
    lines = []
    for line in [header, *table]:
        cells = [
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    counts = {s: sum(r.status == s for r in rows) for s in STATUSES}
    shown = {s: n for s, n in counts.items() if n or s in ("done", "running", "failed", "pending")}
    lines.append(f"{len(rows)} runs: " + ", ".join(f"{n} {s}" for s, n in shown.items()))
    return "\n".join(lines)


def write_csv(rows: Sequence[Row], path: str | Path) -> Path:
    """The rows as CSV (written to a temp file and renamed), with one column per option."""
    path = Path(path)
    fixed = [
        "index", "name", "status", "epochs_done", "epochs", "best_epoch",
        "val_action_top1", "val_verb_top1", "val_noun_top1", "detail",
    ]  # fmt: skip
    # An option named like a column (epochs, a fixed option) is that column already.
    option_keys = [k for k in dict.fromkeys(k for r in rows for k in r.options) if k not in fixed]
    columns = [*fixed, *option_keys]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for r in rows:
            writer.writerow(
                [
                    r.index, r.name, r.status, r.epochs_done, r.epochs,
                    "" if r.best_epoch is None else r.best_epoch,
                    *("" if v is None else f"{v:.4f}" for v in (r.action, r.verb, r.noun)),
                    r.detail, *(r.options.get(k, "") for k in option_keys),
                ]
            )  # fmt: skip
    os.replace(tmp, path)
    return path
