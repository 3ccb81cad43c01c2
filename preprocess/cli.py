"""Command lines: ``epic-extract plan|run`` and ``epic-check``.

Usage::

    epic-extract plan --videos EPIC-KITCHENS --annotations annotations --store store
    epic-extract run --store store --shard-index 3      # or SLURM_ARRAY_TASK_ID=3
    epic-extract run --store store --all                # every pending shard, here
    epic-check --store store --annotations annotations

Exit codes: 0 success; 1 internal failure (a traceback: please report it); 2 bad usage or
input (a message naming it); 3 a bad input video (shard not published); 4 out of space
(scratch, map size or store disk; nothing published); ``epic-check``: 1 when problems found.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path

import click

from epicdata.constants import DEFAULT_JPEG_QSCALE, DEFAULT_SHORT_SIDE
from epicdata.errors import EpicInputError
from epicdata.store import KEEP_MODES
from preprocess.plan import DEFAULT_MARGIN_FRAMES

EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_BAD_VIDEO = 3
EXIT_NO_SPACE = 4

_DIR = click.Path(file_okay=False, path_type=Path)
_EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def _fail(exc: EpicInputError) -> None:
    from preprocess.extract import BadVideoError
    from preprocess.writer import ShardSpaceError

    code = EXIT_BAD_INPUT
    if isinstance(exc, BadVideoError):
        code = EXIT_BAD_VIDEO
    elif isinstance(exc, ShardSpaceError):
        code = EXIT_NO_SPACE
    click.echo(f"error: {exc}", err=True)
    sys.exit(code)


def _int_list(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        numbers = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers") from None
    if not numbers or min(numbers) < 1:
        raise click.BadParameter(f"{value!r}: give positive clip lengths such as 8 or 8,16")
    return numbers


def _split_list(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def extract(verbose: bool) -> None:
    """Build an EPIC-KITCHENS frame store: plan it once, then run one task per shard."""
    _setup_logging(verbose)


@extract.command()
@click.option(
    "--videos",
    "videos_root",
    type=_EXISTING_DIR,
    help="EPIC-KITCHENS videos root (PXX/videos/PXX_YY.MP4).",
)
@click.option(
    "--annotations",
    "annotations_dir",
    type=_EXISTING_DIR,
    required=True,
    help="Folder with the EPIC_100_*.csv files.",
)
@click.option(
    "--store",
    "store_root",
    type=_DIR,
    required=True,
    help="Store folder to create (manifest.json, shards/).",
)
@click.option(
    "--splits",
    default="train,validation,test",
    show_default=True,
    callback=_split_list,
    help="Annotation splits whose videos and segments to cover.",
)
@click.option(
    "--shards",
    type=click.IntRange(min=1),
    help="Number of shards (default: enough for --target-shard-frames each).",
)
@click.option(
    "--target-shard-frames",
    type=click.IntRange(min=1),
    help="Frames per shard when --shards is not given [default: 100000].",
)
@click.option(
    "--short-side",
    type=click.IntRange(min=2),
    default=DEFAULT_SHORT_SIDE,
    show_default=True,
    help="Short side of stored frames in pixels (even).",
)
@click.option(
    "--quality",
    "jpeg_qscale",
    type=click.IntRange(2, 31),
    default=DEFAULT_JPEG_QSCALE,
    show_default=True,
    help="JPEG quality as ffmpeg -q:v (2 best, 31 worst).",
)
@click.option(
    "--keep",
    type=click.Choice(KEEP_MODES),
    default="segments",
    show_default=True,
    help="Frames to store: annotated segments + margin, all frames, or only the frames the deterministic samplers read.",
)
@click.option(
    "--num-frames",
    default="8",
    show_default=True,
    callback=_int_list,
    help="Clip lengths for --keep sampled, e.g. 8,12,16.",
)
@click.option(
    "--margin-frames",
    type=click.IntRange(min=0),
    default=DEFAULT_MARGIN_FRAMES,
    show_default=True,
    help="Frames kept on each side of a segment with --keep segments.",
)
@click.option(
    "--video-info",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="EPIC_100_video_info.csv: plan from durations, without videos (sizing only).",
)
@click.option(
    "--allow-missing",
    is_flag=True,
    help="Plan without missing, unreadable or too-short videos (listed in the summary).",
)
def plan(**options: object) -> None:
    """Probe the videos, balance them into shards and write <store>/manifest.json."""
    from preprocess.plan import plan_store, plan_summary

    try:
        manifest = plan_store(**options)
    except EpicInputError as exc:
        _fail(exc)
    click.echo(plan_summary(manifest, options["store_root"]))


@extract.command()
@click.option(
    "--store", "store_root", type=_EXISTING_DIR, required=True, help="Store folder made by `plan`."
)
@click.option(
    "--shard-index",
    type=click.IntRange(min=0),
    envvar="SLURM_ARRAY_TASK_ID",
    help="Shard to extract [env: SLURM_ARRAY_TASK_ID].",
)
@click.option(
    "--all",
    "run_all",
    is_flag=True,
    help="Extract every pending shard, one after the other, in this process.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="ffmpeg processes in parallel [default: $SLURM_CPUS_PER_TASK, else the CPU count].",
)
@click.option(
    "--tmp-dir",
    type=_DIR,
    envvar="TMPDIR",
    help="Node-local scratch for the shard being written [env: TMPDIR].",
)
@click.option("--force", is_flag=True, help="Redo shards that are already published.")
@click.option(
    "--map-size",
    type=click.IntRange(min=1 << 16),
    help="LMDB map size in bytes [default: 4x the estimate + 1 GiB].",
)
def run(
    store_root: Path,
    shard_index: int | None,
    run_all: bool,
    workers: int | None,
    tmp_dir: Path | None,
    force: bool,
    map_size: int | None,
) -> None:
    """Decode the videos of one shard (or all) and publish the shard into the store."""
    from epicdata.store import Manifest
    from preprocess.extract import pending_shards, run_shard

    if run_all == (shard_index is not None):
        raise click.UsageError(
            "give exactly one of --shard-index N (or SLURM_ARRAY_TASK_ID) and --all"
        )
    try:
        manifest = Manifest.load(store_root)
        if run_all:
            indices = [s.index for s in manifest.shards] if force else pending_shards(store_root)
        else:
            indices = [shard_index]
        planned = {s.index: s.planned_frames for s in manifest.shards}
        for index in indices:
            # A progress bar only on a terminal; batch logs get the per-video lines.
            bar = (
                click.progressbar(
                    length=planned.get(index, 0), label=f"shard {index}", file=sys.stderr
                )
                if sys.stderr.isatty()
                else contextlib.nullcontext()
            )
            with bar as progress:
                result = run_shard(
                    store_root=store_root,
                    shard_index=index,
                    workers=workers,
                    tmp_dir=tmp_dir,
                    force=force,
                    map_size=map_size,
                    on_frames=progress.update if progress is not None else None,
                )
            click.echo(
                f"shard {result.shard_index}: {result.status} {result.path} "
                f"({len(result.videos)} videos, {result.bytes / 1e6:.1f} MB, {result.seconds:.1f} s)"
            )
    except EpicInputError as exc:
        _fail(exc)


@click.command()
@click.option(
    "--store", "store_root", type=_EXISTING_DIR, required=True, help="Store folder to check."
)
@click.option(
    "--annotations",
    "annotations_dir",
    type=_EXISTING_DIR,
    help="Also check that every annotated segment of the store's splits is stored.",
)
@click.option("--deep", is_flag=True, help="Also decode every JPEG and check its size (CPU-bound).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def check(
    store_root: Path, annotations_dir: Path | None, deep: bool, as_json: bool, verbose: bool
) -> None:
    """Verify a frame store; prints a table, the problems and the --array spec to resubmit."""
    from preprocess.check import check_store, format_report

    _setup_logging(verbose)
    try:
        report = check_store(store_root, annotations_dir=annotations_dir, deep=deep)
    except EpicInputError as exc:
        _fail(exc)
    click.echo(json.dumps(report.to_dict(), indent=1) if as_json else format_report(report))
    sys.exit(0 if report.ok else 1)
