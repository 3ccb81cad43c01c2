"""``epic-slurm``: submit jobs with the site's options, the whole pipeline, the sweep.

Usage::

    epic-slurm site-example wice > $VSC_DATA/epic-site.env   # edited once
    export EPIC_SITE=$VSC_DATA/epic-site.env
    epic-slurm pipeline --videos V --annotations A --run-dir RUN [--dry-run]
    epic-slurm submit extract --store S --array 3,7  # what epic-check prints after a failure
    epic-slurm sweep --grid grid.yaml --annotations A --runs-root RUNS
    epic-slurm summary RUNS

Exit codes: docs/conventions.md.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from epicdata.console import EpicCommand, EpicGroup, example, run_header, start_command
from epicdata.errors import EpicInputError
from epicdata.layout import MANIFEST_NAME
from epicdata.manifest import KEEP_MODES, Manifest
from epicslurm import sweep as sweeps
from epicslurm.pipeline import (
    Stream,
    Submitted,
    fuse_weight_words,
    plan_differences,
    run_pipeline,
    run_two_streams,
    stream_options,
    train_options,
)
from epicslurm.site import (
    FLOW_STORE_VARIABLE,
    JOBS,
    SITE_VARIABLE,
    Site,
    load_site,
    require_paths,
    site_example_text,
)
from epicslurm.submit import Job, submit
from preprocess.plan import plan_store, plan_summary
from train.config import field_types
from train.recipes import resolve_options

log = logging.getLogger(__name__)

_DIR = click.Path(file_okay=False, path_type=Path)
_SITE = click.option(
    "--site",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=SITE_VARIABLE,
    show_envvar=True,
    show_default="none",
    help="The site file (copied from slurm/sites/ and edited).",
)
_FILE = click.Path(dir_okay=False, path_type=Path)
#: Data paths: the option, else the caller's environment variable, else (EPIC_STORE only)
#: the site file. docs/cluster.md "Which value wins".
_STORE = click.option(
    "--store",
    type=_DIR,
    envvar="EPIC_STORE",
    show_envvar=True,
    show_default="the site's EPIC_STORE",
    help="The frame store.",
)
#: What submit's options mean for each kind of job (the others are refused).
KIND_OPTIONS = {
    "extract": {"store", "array", "force"},
    "check": {"store", "annotations"},
    "train": {"store", "annotations", "run_dir"},
    "train-multi": {"store", "annotations", "run_dir", "nodes", "gpus_per_node"},
    "validate": {"store", "annotations", "checkpoint", "out", "split"},
    "features": {"store", "annotations", "checkpoint", "out", "split"},
    "fuse": {"annotations", "out", "split"},
}
#: Where the words after `--` go, per command or kind of job.
AFTER_DASHES = {
    "pipeline": "epic-train",
    "extract": "epic-extract run",
    "check": "epic-check",
    "train": "epic-train",
    "train-multi": "epic-train",
    "validate": "epic-validate",
    "features": "epic-features",
    "fuse": "epic-validate --fuse",
}


def _given(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE


def _refuse_own_options(ctx: click.Context, words: tuple[str, ...], target: str) -> None:
    """An option of this epic-slurm command written after `--` would go to ``target``
    (``--dry-run`` to epic-train, which would then run the chain for real): refuse it. An
    epic-train option of the same name (``--num-frames``) goes through."""
    trains = target == "epic-train"
    passed = {"--" + k.replace("_", "-") for k in field_types()} if trains else set()
    own = {
        opt
        for param in ctx.command.params
        if isinstance(param, click.Option)
        for opt in (*param.opts, *param.secondary_opts)
        if opt.startswith("--") and opt not in passed
    }
    for word in words:
        if word.split("=", 1)[0] in own:
            raise EpicInputError(
                f"{word.split('=', 1)[0]} is an option of epic-slurm {ctx.info_name}, but it "
                f"comes after `--`, which passes it to {target}",
                where=shlex.join(words),
                fix=f"put it before `--` (epic-slurm's options before `--`, {target}'s after)",
            )


@click.group(
    cls=EpicGroup, epilog=example("epic-slurm pipeline --videos V --annotations A --run-dir RUN")
)
def main() -> None:
    """Run the pipeline on a SLURM cluster with the settings of one site file."""


@main.command(cls=EpicCommand, hidden=True, context_settings={"ignore_unknown_options": True})
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def header(command: tuple[str, ...]) -> None:
    """Print the job header (date, host, job and array ids, restart count, versions, the
    command) for COMMAND: the first line of every job log (slurm/lib.sh)."""
    click.echo(f"{_now()} {run_header(list(command) or ['job'])}")


@main.command(
    "site-example",
    cls=EpicCommand,
    epilog=example("epic-slurm site-example wice > $VSC_DATA/epic-site.env"),
)
@click.argument("name", required=False)
def site_example(name: str | None) -> None:
    """Print the example site file NAME (to edit and use as --site / $EPIC_SITE); without
    NAME, list the examples and the folder that holds them and the sweep grids."""
    click.echo(site_example_text(name), nl=False)


def _now() -> str:
    return datetime.now().strftime("%Y-%m-%d %H:%M:%S")


@main.command(
    cls=EpicCommand,
    epilog=example("epic-slurm submit extract --store $VSC_SCRATCH/epic100-store --array 3,7"),
)
@_SITE
@click.argument("kind", type=click.Choice(sorted(set(JOBS) - {"sweep"})))  # sweep: its own command
@_STORE
@click.option(
    "--annotations",
    type=_DIR,
    envvar="EPIC_ANNOTATIONS",
    show_envvar=True,
    show_default="none",
    help="The annotations folder.",
)
@click.option(
    "--run-dir",
    type=_DIR,
    envvar="EPIC_RUN_DIR",
    show_envvar=True,
    show_default="none",
    help="train*: the run folder.",
)
@click.option(
    "--checkpoint",
    type=_FILE,
    envvar="EPIC_CHECKPOINT",
    show_envvar=True,
    show_default="none",
    help="validate: the checkpoint.",
)
@click.option(
    "--out",
    type=_DIR,
    envvar="EPIC_OUT",
    show_envvar=True,
    show_default="none",
    help="validate, fuse: the output folder.",
)
@click.option(
    "--split",
    envvar="EPIC_SPLIT",
    show_envvar=True,
    show_default="validation",
    help="validate, fuse: validation or test.",
)
@click.option("--array", show_default="none", help="extract: array indices, e.g. 0-199 or 3,7.")
@click.option("--force", is_flag=True, help="extract: redo shards already published.")
@click.option(
    "--after-ok", multiple=True, show_default="none", help="Start after this job succeeded."
)
@click.option("--after-any", multiple=True, show_default="none", help="Start after this job ended.")
@click.option("--nodes", type=click.IntRange(min=1), default=1, help="train-multi: nodes.")
@click.option("--gpus-per-node", type=click.IntRange(min=1), default=1, help="train-multi: GPUs.")
@click.option("--dry-run", is_flag=True, help="Print the sbatch command, submit nothing.")
@click.argument("script_args", nargs=-1, type=click.UNPROCESSED)
def submit_command(
    site: Path | None,
    kind: str,
    store: Path | None,
    annotations: Path | None,
    run_dir: Path | None,
    checkpoint: Path | None,
    out: Path | None,
    split: str | None,
    array: str | None,
    force: bool,
    after_ok: tuple[str, ...],
    after_any: tuple[str, ...],
    nodes: int,
    gpus_per_node: int,
    dry_run: bool,
    script_args: tuple[str, ...],
) -> None:
    """Submit one job (extract, check, train, train-multi, validate, fuse) with the site's
    account, partition, resources and log path. Arguments after `--` go to the command
    (fuse: the predictions files, then epic-validate options such as --fuse-weights).
    Data paths: the option, else its EPIC_* variable, else (the store) the site file."""
    start_command()
    ctx = click.get_current_context()
    _refuse_options_of_other_kinds(ctx, kind)
    _refuse_own_options(ctx, script_args, AFTER_DASHES[kind])
    the_site = load_site(site)
    store = store or (Path(the_site.get("EPIC_STORE")) if the_site.get("EPIC_STORE") else None)
    paths = {"store": store, "annotations": annotations, "run_dir": run_dir}
    paths |= {"checkpoint": checkpoint, "out": out}
    env = {
        f"EPIC_{name.upper()}": str(Path(value).resolve())
        for name, value in paths.items()
        if value is not None and name in KIND_OPTIONS[kind]
    }
    if split and kind in ("validate", "fuse", "features"):
        env["EPIC_SPLIT"] = split
    if force:
        env["EPIC_FORCE"] = "1"
    job = Job(
        kind,
        env,
        array=array,
        after_ok=after_ok,
        after_any=after_any,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        script_args=script_args,
    )
    if kind == "extract" and array is None:
        raise EpicInputError(
            f"{kind} is an array job", where="--array", fix="give --array, e.g. 0-9"
        )
    if dry_run:
        click.echo(shlex.join(job.sbatch(the_site)))
        return
    require_paths(the_site, Path(env["EPIC_STORE"]) if "EPIC_STORE" in env else None)
    job_id = submit(job, the_site)
    click.echo(f"{kind}: job {job_id}, log {job.log(the_site, job_id)}")


def _refuse_options_of_other_kinds(ctx: click.Context, kind: str) -> None:
    """``--array`` for a training, ``--checkpoint`` for an extraction: options the job would
    ignore are refused, naming the kinds they are for."""
    for name in sorted(set().union(*KIND_OPTIONS.values()) - KIND_OPTIONS[kind]):
        if _given(ctx, name):
            kinds = [k for k, names in KIND_OPTIONS.items() if name in names]
            flag = "--" + name.replace("_", "-")
            raise EpicInputError(
                f"{flag} means nothing for a {kind} job",
                where=f"epic-slurm submit {kind}",
                fix=f"drop it ({flag} is for {', '.join(kinds)})",
            )


submit_command.name = "submit"


@main.command(
    cls=EpicCommand,
    epilog=example(
        "epic-slurm pipeline --videos $VSC_DATA/EPIC-KITCHENS --annotations "
        "$VSC_DATA/epic-kitchens-100-annotations --run-dir $VSC_DATA/runs/r18-seed"
    ),
)
@_SITE
@click.option(
    "--videos",
    type=_DIR,
    show_default="none: the store is planned already",
    help="EPIC-KITCHENS videos (PXX/videos/PXX_YY.MP4), to plan the store.",
)
@click.option(
    "--annotations",
    type=_DIR,
    required=True,
    envvar="EPIC_ANNOTATIONS",
    show_envvar=True,
    help="The EPIC-100 annotations folder.",
)
@_STORE
@click.option(
    "--run-dir",
    type=_DIR,
    required=True,
    envvar="EPIC_RUN_DIR",
    show_envvar=True,
    help="The training run folder (two streams: RUN/rgb, RUN/flow, RUN/fused).",
)
@click.option(
    "--keep",
    type=click.Choice(KEEP_MODES),
    default="sampled",
    help="Planning: frames to keep. Not epic-extract plan's segments: sampled keeps only the "
    "frames this training reads (its --num-frames, linspace sampling), the smallest store; "
    "other clip lengths or tsn sampling need another store.",
)
@click.option(
    "--num-frames",
    default="8",
    show_default="8, or the training's --num-frames",
    help="Planning: clip lengths the store serves (8 or 8,12,16).",
)
@click.option(
    "--shards",
    type=click.IntRange(min=1),
    show_default="about 100,000 frames each",
    help="Planning: number of shards.",
)
@click.option(
    "--allow-missing",
    is_flag=True,
    help="Planning: leave out videos that are missing, unreadable or too short (the plan "
    "names them) instead of refusing.",
)
@click.option(
    "--flow",
    type=_DIR,
    show_default="none: one stream, RGB",
    help="Two streams: EPIC's flow (PXX/flow_frames/PXX_YY.tar), to plan the flow store; "
    "trains an RGB and a flow stream and fuses them.",
)
@click.option(
    "--flow-store",
    type=_DIR,
    envvar=FLOW_STORE_VARIABLE,
    show_envvar=True,
    show_default="the site's EPIC_FLOW_STORE",
    help="Two streams: the flow store (planned with the planning options above).",
)
@click.option(
    "--not-official",
    is_flag=True,
    help="Two streams: the --flow tars are your own (flow you computed, epic-synth's), not "
    "official downloads: do not compare their md5 with the official ones.",
)
@click.option(
    "--rgb-args",
    default="",
    show_default="none",
    help="Two streams: epic-train options of the RGB stream only, one string "
    '("--lr 0.001"), after those after `--`.',
)
@click.option(
    "--flow-args",
    default="",
    show_default="none",
    help="Two streams: epic-train options of the flow stream only, one string, after those "
    "after `--` and the flow stream's --modality flow and flow recipe.",
)
@click.option(
    "--fuse-weights",
    show_default="equal weights, as C1",
    help="Two streams: the fusion's weights, rgb then flow (e.g. 1,1.5).",
)
@click.option(
    "--dry-run", is_flag=True, help="Print the sbatch commands; submit and write nothing."
)
@click.argument("train_args", nargs=-1, type=click.UNPROCESSED)
def pipeline(
    site: Path | None,
    videos: Path | None,
    annotations: Path,
    store: Path | None,
    run_dir: Path,
    keep: str,
    num_frames: str,
    shards: int | None,
    allow_missing: bool,
    flow: Path | None,
    flow_store: Path | None,
    not_official: bool,
    rgb_args: str,
    flow_args: str,
    fuse_weights: str | None,
    dry_run: bool,
    train_args: tuple[str, ...],
) -> None:
    """Plan the store here if it has no plan, then submit what is missing of: extraction
    array -> check (afterany) -> training (afterok) -> validation (afterok). Every job is
    checked before the first is submitted. Rerun after a failure or a stop: it submits only
    what is missing. Arguments after `--` go to epic-train. With --flow, two streams: the
    same for the flow store into RUN/flow (epic-train --modality flow, the recipe's flow
    variant) beside RUN/rgb, then the fusion of both into RUN/fused (docs/cluster.md), e.g.
    `--videos V --flow V --annotations A --run-dir RUN -- --recipe tsn-r50`."""
    start_command()
    ctx = click.get_current_context()
    _refuse_own_options(ctx, train_args, "epic-train")
    the_site = load_site(site)
    store = _store_path(store, the_site, "EPIC_STORE", "--store")
    planning = _Planning(
        keep if _given(ctx, "keep") else None,
        _clip_lengths(num_frames) if _given(ctx, "num_frames") else None,
        shards,
        allow_missing,
        dry_run,
        keep,
    )
    resolved = {"annotations": annotations.resolve(), "run_dir": run_dir.resolve()}
    if flow is None:
        _refuse_two_stream_options(ctx)
        manifest = _manifest(store, the_site, planning, train_args, _video_plan(videos, resolved))
        jobs = run_pipeline(
            the_site, store=store, train_args=train_args, manifest=manifest, dry_run=dry_run,
            **resolved,
        )  # fmt: skip
    else:
        jobs = _two_streams(
            ctx, the_site, store, flow, flow_store, planning, resolved, videos=videos,
            train_args=train_args, per_stream=(rgb_args, flow_args), fuse_weights=fuse_weights,
            official=not not_official,
        )  # fmt: skip
    width = max((len(job.kind) for job in jobs), default=0)
    for job in jobs:
        if dry_run:
            click.echo(shlex.join(job.command))
        else:
            click.echo(f"{job.kind:<{width}} job {job.job_id:<10} log {job.log}")


def _words(text: str, option: str) -> list[str]:
    """An option's string of epic-train options as words (shell quoting)."""
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise EpicInputError(
            f"{option} does not split into options: {exc}",
            where=f"{option} {text}",
            fix="balance its quotes",
        ) from None


def _two_streams(
    ctx: click.Context,
    site: Site,
    store: Path,
    flow: Path,
    flow_store: Path | None,
    planning: _Planning,
    resolved: dict[str, Path],
    *,
    videos: Path | None,
    train_args: tuple[str, ...],
    per_stream: tuple[str, str],
    fuse_weights: str | None,
    official: bool,
) -> list[Submitted]:
    """The two-stream pipeline: each stream's options and store (planned here if need be),
    then :func:`run_two_streams`."""
    fuse_weight_words(fuse_weights)  # a typo fails before a store is planned
    rgb_args, flow_args = _words(per_stream[0], "--rgb-args"), _words(per_stream[1], "--flow-args")
    for words in (rgb_args, flow_args):
        _refuse_own_options(ctx, tuple(words), "epic-train")
    rgb_words, flow_words = stream_options(train_args, rgb_args, flow_args)
    flow_store = _store_path(flow_store, site, FLOW_STORE_VARIABLE, "--flow-store")
    if flow_store == store:
        raise EpicInputError(
            "the flow store is the RGB store (one modality per store)",
            where=f"--flow-store {flow_store}",
            fix="give the flow store its own folder",
        )
    rgb_plan = _manifest(store, site, planning, rgb_words, _video_plan(videos, resolved))
    flow_planner = _flow_plan(flow, flow_words, resolved, official=official)
    flow_plan = _manifest(flow_store, site, planning, flow_words, flow_planner)
    return run_two_streams(
        site,
        rgb=Stream("rgb", store, tuple(rgb_words), rgb_plan),
        flow=Stream("flow", flow_store, tuple(flow_words), flow_plan),
        fuse_weights=fuse_weights,
        dry_run=planning.dry_run,
        **resolved,
    )


@dataclass(frozen=True)
class _Planning:
    """The pipeline's planning options: those given (None: not given; a store's plan must
    agree with them) and how to plan a store that has none."""

    keep: str | None
    num_frames: tuple[int, ...] | None
    shards: int | None
    allow_missing: bool
    dry_run: bool
    keep_default: str

    def given(self) -> dict[str, Any]:
        return {"keep": self.keep, "num_frames": self.num_frames, "shards": self.shards}


#: Plans a store: (store, keep, clip lengths, planning options) -> its manifest.
_Planner = Callable[[Path, str, tuple[int, ...], _Planning], Manifest]


def _store_path(given: Path | None, site: Site, variable: str, option: str) -> Path:
    """The store: the option (or its environment variable), else the site file's value."""
    value = given or (Path(site.get(variable)) if site.get(variable) else None)
    if value is None or not value.resolve().name:
        raise EpicInputError(
            "no store" if variable == "EPIC_STORE" else "no flow store",
            where=option,
            fix=f"give {option} or {variable} in the site file",
        )
    return value.resolve()


def _refuse_two_stream_options(ctx: click.Context) -> None:
    """The two-stream options mean nothing without --flow: refused, not ignored."""
    for name in ("flow_store", "not_official", "rgb_args", "flow_args", "fuse_weights"):
        if _given(ctx, name):
            flag = "--" + name.replace("_", "-")
            raise EpicInputError(
                f"{flag} is an option of a two-stream pipeline",
                where="epic-slurm pipeline",
                fix=f"add --flow DIR (EPIC's flow_frames tars) for two streams, or drop {flag}",
            )


def _manifest(
    store: Path,
    site: Site,
    planning: _Planning,
    train_args: Sequence[str],
    planner: _Planner,
) -> Manifest:
    """The store's plan, which must agree with the planning options given; a store without
    one is planned here for the training of ``train_args`` (a dry run: in memory)."""
    if (store / MANIFEST_NAME).exists():
        manifest = Manifest.load(store)
        differences = plan_differences(manifest, **planning.given())
        if differences:
            raise EpicInputError(
                "the store is planned already and these options differ from its plan: "
                + "; ".join(differences),
                where=str(store / MANIFEST_NAME),
                fix="drop them to use the store's plan (a plan is fixed once made), or give "
                "a new --store to plan another",
            )
        return manifest
    if not planning.dry_run:
        require_paths(site, store)
    lengths = planning.num_frames or _training_clip_length(tuple(train_args))
    keep = _keep_for(planning.keep_default, planning.keep is not None, tuple(train_args), store)
    return planner(store, keep, lengths, planning)


def _clip_lengths(text: str) -> tuple[int, ...]:
    words = [w.strip() for w in text.split(",") if w.strip()]
    if not words or not all(w.isdigit() and int(w) > 0 for w in words):
        raise EpicInputError(
            f"--num-frames {text!r}: expected clip lengths",
            where="epic-slurm pipeline",
            fix="give e.g. 8 or 8,12,16",
        )
    return tuple(int(w) for w in words)


def _training_clip_length(train_args: tuple[str, ...]) -> tuple[int, ...]:
    """The clip length the training asks for (``-- --num-frames 16``, or its recipe's),
    default 8: what a store planned here for it must serve."""
    return (int(resolve_options({}, train_options(train_args)).get("num_frames", 8)),)


def _keep_for(
    keep: str, given: bool, train_args: tuple[str, ...], store: Path | None = None
) -> str:
    """``--keep`` as given, else sampled, or segments where the training samples with TSN's
    random offsets (``-- --sampling tsn``, or a recipe that does), which a sampled store
    cannot serve."""
    if given or resolve_options({}, train_options(train_args)).get("sampling") != "tsn":
        return keep
    where = f" {store}" if store else ""
    log.info("planning%s with --keep segments: its training samples with tsn", where)
    return "segments"


def _video_plan(videos: Path | None, resolved: dict[str, Path]) -> _Planner:
    """Plans an RGB store from the videos (a dry run keeps the plan in memory)."""
    if videos is None:

        def refuse(store: Path, *_: object) -> Manifest:
            raise EpicInputError(
                "the store has no plan yet",
                where=str(store),
                fix="give --videos (the pipeline then plans it here, which only probes videos)",
            )

        return refuse
    return _planner(resolved, videos_root=videos)


def _flow_plan(
    flow: Path, flow_args: Sequence[str], resolved: dict[str, Path], *, official: bool
) -> _Planner:
    """Plans a flow store from EPIC's flow tars (``epic-extract plan --flow``; ``official``
    False: ``--not-official``), for the flow stream's --flow-stack (the snippets a sampled
    store keeps)."""
    stack = int(resolve_options({}, train_options(flow_args)).get("flow_stack", 5))
    return _planner(resolved, flow_root=flow, flow_stack=stack, official=official)


def _planner(resolved: dict[str, Path], **source: object) -> _Planner:
    """A planner of a store from ``source`` (plan_store's source options), printing the
    plan's summary."""

    def plan(store: Path, keep: str, lengths: tuple[int, ...], planning: _Planning) -> Manifest:
        manifest = plan_store(
            store_root=store,
            annotations_dir=resolved["annotations"],
            shards=planning.shards,
            keep=keep,
            num_frames=lengths,
            allow_missing=planning.allow_missing,
            write=not planning.dry_run,
            **source,
        )
        click.echo(plan_summary(manifest, store, show_next=False))
        return manifest

    return plan


@main.command(
    cls=EpicCommand,
    epilog=example(
        "epic-slurm sweep --grid slurm/sweeps/seed-week2.yaml --annotations "
        "$VSC_DATA/epic-kitchens-100-annotations --runs-root $VSC_DATA/runs/week2"
    ),
)
@_SITE
@click.option(
    "--grid",
    "grid_file",
    type=_FILE,
    required=True,
    help="The grid file: epic-train options -> lists of values (slurm/sweeps/*.yaml).",
)
@_STORE
@click.option(
    "--annotations",
    type=_DIR,
    required=True,
    envvar="EPIC_ANNOTATIONS",
    show_envvar=True,
    help="The EPIC-100 annotations folder.",
)
@click.option(
    "--runs-root",
    type=_DIR,
    required=True,
    help="Folder of the runs: sweep.json and one run folder per grid point.",
)
@click.option("--dry-run", is_flag=True, help="Print the sbatch command, submit nothing.")
def sweep(
    site: Path | None,
    grid_file: Path,
    store: Path | None,
    annotations: Path,
    runs_root: Path,
    dry_run: bool,
) -> None:
    """Train every run of a grid as one array job: task N trains run N into RUNS/<name>
    (e.g. bs32-lr1e-4-f8), resumable and requeued like one training. The store must serve
    every clip length of the grid. Rerun it to resubmit the runs not done."""
    start_command()
    sweeps.load_grid(grid_file)  # a bad grid is named before the site is needed
    the_site = load_site(site)
    store = store or (Path(the_site.get("EPIC_STORE")) if the_site.get("EPIC_STORE") else None)
    if store is None:
        raise EpicInputError(
            "no store", where="--store", fix="give --store or EPIC_STORE in the site file"
        )
    runs_root = runs_root.resolve()
    job_id, command = sweeps.run_sweep(
        the_site,
        grid_file=grid_file,
        store=store.resolve(),
        annotations=annotations.resolve(),
        runs_root=runs_root,
        dry_run=dry_run,
    )
    if not command:
        click.echo(f"nothing to submit: every run of {runs_root} is done")
    elif dry_run:
        click.echo(shlex.join(command))
    else:
        spec = next(w.split("=", 1)[1] for w in command if w.startswith("--array="))
        log_pattern = Job("sweep", array=spec).log(the_site, job_id or "")
        click.echo(f"sweep: job {job_id}, array {spec}, log {log_pattern}")
        click.echo(f"results: epic-slurm summary {shlex.quote(str(runs_root))}")


@main.command(cls=EpicCommand, epilog=example("epic-slurm summary $VSC_DATA/runs/week2"))
@click.argument("runs_root", type=_DIR)
@click.option(
    "--csv",
    "csv_path",
    type=_FILE,
    show_default="RUNS_ROOT/sweep_summary.csv",
    help="Where to write the table as CSV.",
)
@click.option(
    "--site",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=SITE_VARIABLE,
    show_envvar=True,
    show_default="none: squeue of the default cluster",
    help="The site file: its EPIC_CLUSTERS for squeue.",
)
def summary(runs_root: Path, csv_path: Path | None, site: Path | None) -> None:
    """The table of a sweep's runs, best validation action top-1 first: verb, noun and
    action top-1 of the best epoch, that epoch, epochs done, status (pending, running,
    requeued, stopped, failed, done; unreadable: a run folder that cannot be read), from the
    run folders and what squeue says is still queued."""
    queue = sweeps.sweep_queue(runs_root.resolve(), load_site(site) if site else None)
    rows = sweeps.summary(runs_root, queue)
    click.echo(sweeps.format_summary(rows))
    if not queue.known:
        click.echo(f"note: statuses from the run folders alone ({queue.note})")
    written = sweeps.write_csv(rows, csv_path or runs_root / sweeps.SUMMARY_CSV)
    click.echo(f"wrote {written}")


@main.command("sweep-task", cls=EpicCommand, hidden=True)
@click.option(
    "--grid",
    "sweep_json",
    type=_FILE,
    envvar="EPIC_GRID",
    required=True,
    help="The sweep's RUNS/sweep.json.",
)
@click.option(
    "--index",
    type=click.IntRange(min=0),
    envvar="SLURM_ARRAY_TASK_ID",
    required=True,
    help="The run's index (the array task id).",
)
def sweep_task(sweep_json: Path, index: int) -> None:
    """Print run INDEX of a sweep for slurm/sweep.sbatch, one word a line: its folder name,
    then its epic-train options (--lr=0.0001)."""
    runs = sweeps.read_sweep(sweep_json)
    if index >= len(runs):
        raise EpicInputError(
            f"run {index} does not exist: the sweep has {len(runs)} runs (0-{len(runs) - 1})",
            where=str(sweep_json),
            fix="submit with epic-slurm sweep, which writes sweep.json and the array together",
        )
    click.echo("\n".join([runs[index].name, *runs[index].train_args()]))
