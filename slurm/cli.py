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
from datetime import datetime
from pathlib import Path

import click

from epicdata.console import EpicCommand, EpicGroup, example, run_header, start_command
from epicdata.errors import EpicInputError
from epicdata.layout import MANIFEST_NAME
from epicdata.manifest import KEEP_MODES
from epicslurm import sweep as sweeps
from epicslurm.pipeline import run_pipeline
from epicslurm.site import JOBS, SITE_VARIABLE, load_site, site_example_text
from epicslurm.submit import Job, submit
from preprocess.plan import plan_store, plan_summary

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
@click.option("--store", type=_DIR, show_default="the site's EPIC_STORE", help="The frame store.")
@click.option("--annotations", type=_DIR, show_default="none", help="The annotations folder.")
@click.option("--run-dir", type=_DIR, show_default="none", help="train*: the run folder.")
@click.option("--checkpoint", type=_FILE, show_default="none", help="validate: the checkpoint.")
@click.option("--out", type=_DIR, show_default="none", help="validate: the output folder.")
@click.option("--split", show_default="validation", help="validate: validation or test.")
@click.option("--array", show_default="none", help="Array indices, e.g. 0-199 or 3,7.")
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
    """Submit one job (extract, check, train, train-multi, validate) with the site's
    account, partition, resources and log path. Arguments after `--` go to the command."""
    start_command()
    the_site = load_site(site)
    store = store or (Path(the_site.get("EPIC_STORE")) if the_site.get("EPIC_STORE") else None)
    env = {
        name: str(Path(value).resolve())
        for name, value in (
            ("EPIC_STORE", store),
            ("EPIC_ANNOTATIONS", annotations),
            ("EPIC_RUN_DIR", run_dir),
            ("EPIC_CHECKPOINT", checkpoint),
            ("EPIC_OUT", out),
        )
        if value is not None
    }
    if split:
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
    if kind in ("extract", "sweep") and array is None:
        raise EpicInputError(
            f"{kind} is an array job", where="--array", fix="give --array, e.g. 0-9"
        )
    if dry_run:
        click.echo(shlex.join(job.sbatch(the_site)))
        return
    job_id = submit(job, the_site)
    click.echo(f"{kind}: job {job_id}, log {job.log(the_site, job_id)}")


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
@click.option("--annotations", type=_DIR, required=True, help="The EPIC-100 annotations folder.")
@click.option("--store", type=_DIR, show_default="the site's EPIC_STORE", help="The frame store.")
@click.option("--run-dir", type=_DIR, required=True, help="The training run folder.")
@click.option(
    "--keep", type=click.Choice(KEEP_MODES), default="sampled", help="Planning: frames to keep."
)
@click.option(
    "--num-frames", default="8", help="Planning: clip lengths the store serves (8 or 8,12,16)."
)
@click.option(
    "--shards",
    type=click.IntRange(min=1),
    show_default="about 100,000 frames each",
    help="Planning: number of shards.",
)
@click.option("--dry-run", is_flag=True, help="Print the sbatch commands, submit nothing.")
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
    dry_run: bool,
    train_args: tuple[str, ...],
) -> None:
    """Plan the store here if it has no plan, then submit what is missing of: extraction
    array -> check (afterany) -> training (afterok) -> validation (afterok). Rerun after a
    failure: it submits only what is missing. Arguments after `--` go to epic-train."""
    start_command()
    the_site = load_site(site)
    store = (store or Path(the_site.get("EPIC_STORE") or ".")).resolve()
    if not store.name or not the_site.get("EPIC_STORE") and store == Path(".").resolve():
        raise EpicInputError(
            "no store", where="--store", fix="give --store or EPIC_STORE in the site file"
        )
    if not (store / MANIFEST_NAME).exists():
        if videos is None:
            raise EpicInputError(
                "the store has no plan yet",
                where=str(store),
                fix="give --videos (the pipeline then plans it here, which only probes videos)",
            )
        clip_lengths = tuple(int(n) for n in num_frames.split(",") if n.strip())
        manifest = plan_store(
            store_root=store,
            annotations_dir=annotations,
            videos_root=videos,
            shards=shards,
            keep=keep,
            num_frames=clip_lengths,
        )
        click.echo(plan_summary(manifest, store, show_next=False))
    jobs = run_pipeline(
        the_site,
        store=store,
        annotations=annotations.resolve(),
        run_dir=run_dir.resolve(),
        train_args=train_args,
        dry_run=dry_run,
    )
    for job in jobs:
        if dry_run:
            click.echo(shlex.join(job.command))
        else:
            click.echo(f"{job.kind:<9} job {job.job_id:<10} log {job.log}")


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
@click.option("--store", type=_DIR, show_default="the site's EPIC_STORE", help="The frame store.")
@click.option("--annotations", type=_DIR, required=True, help="The EPIC-100 annotations folder.")
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
def summary(runs_root: Path, csv_path: Path | None) -> None:
    """The table of a sweep's runs, best validation action top-1 first: verb, noun and
    action top-1 of the best epoch, that epoch, epochs done, status (done, running: queued,
    running or requeued, failed, pending: not started). Read from the run folders alone."""
    rows = sweeps.summary(runs_root)
    click.echo(sweeps.format_summary(rows))
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
