"""Command lines: ``epic-extract plan|run`` and ``epic-check``.

Usage::

    epic-extract plan --videos EPIC-KITCHENS --annotations annotations --store store
    epic-extract run --store store --shard-index 3      # or SLURM_ARRAY_TASK_ID=3
    epic-extract run --store store --all                # every pending shard, here
    epic-check --store store --annotations annotations

Exit codes: docs/conventions.md (:class:`epicdata.errors.ExitCode`), shared by every command.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click

from epicdata.console import (
    EpicCommand,
    EpicGroup,
    Progress,
    example,
    preflight_output,
    start_command,
)
from epicdata.constants import DEFAULT_JPEG_QSCALE, DEFAULT_SHORT_SIDE
from epicdata.errors import ExitCode
from epicdata.manifest import KEEP_MODES
from preprocess.check import check_store, format_report
from preprocess.compare import compare_frames, format_comparison
from preprocess.extract import (
    ShardResult,
    load_runnable_manifest,
    pending_shards,
    preflight_run,
    run_shard,
    run_shards,
)
from preprocess.plan import (
    DEFAULT_MARGIN_FRAMES,
    DEFAULT_TARGET_SHARD_FRAMES,
    plan_store,
    plan_summary,
)

_DIR = click.Path(file_okay=False, path_type=Path)
_EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
#: What `plan` writes: manifest.json (a few MB for the whole of EPIC-100).
PLAN_BYTES = 16 << 20


def _existing_store_option(help: str) -> Callable[[Callable], Callable]:
    return click.option(
        "--store",
        "store_root",
        type=_EXISTING_DIR,
        required=True,
        envvar="EPIC_STORE",
        show_envvar=True,
        help=help,
    )


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


@click.group(
    cls=EpicGroup,
    epilog=example(
        "epic-extract plan --videos EPIC-KITCHENS --annotations annotations --store store"
    ),
)
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def extract(verbose: bool) -> None:
    """Build an EPIC-KITCHENS frame store: plan it once, then run one task per shard.

    ffmpeg and ffprobe come from $EPIC_FFMPEG / $EPIC_FFPROBE, else from PATH.
    """


@extract.command(
    epilog=example(
        "epic-extract plan --videos EPIC-KITCHENS --annotations annotations --store store "
        "--keep sampled --num-frames 8"
    )
)
@click.option(
    "--videos",
    "videos_root",
    type=_EXISTING_DIR,
    show_default="none: give it or --video-info",
    help="EPIC-KITCHENS videos root (PXX/videos/PXX_YY.MP4).",
)
@click.option(
    "--annotations",
    "annotations_dir",
    type=_EXISTING_DIR,
    required=True,
    envvar="EPIC_ANNOTATIONS",
    show_envvar=True,
    help="Folder with the EPIC_100_*.csv files.",
)
@click.option(
    "--store",
    "store_root",
    type=_DIR,
    required=True,
    envvar="EPIC_STORE",
    show_envvar=True,
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
    show_default="enough for --target-shard-frames each",
    help="Number of shards.",
)
@click.option(
    "--target-shard-frames",
    type=click.IntRange(min=1),
    default=DEFAULT_TARGET_SHARD_FRAMES,
    help="Frames per shard when --shards is not given.",
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
    show_default="probe the --videos",
    help="EPIC_100_video_info.csv: plan from durations, without videos (sizing only; "
    "with --frames, the durations that estimate frame counts).",
)
@click.option(
    "--frames",
    "frames_root",
    type=_EXISTING_DIR,
    show_default="none: decode the --videos",
    help="EPIC's official RGB frames root (PXX/rgb_frames/PXX_YY.tar or PXX_YY/): copy "
    "their JPEGs instead of decoding; frame counts estimated from --video-info (default: "
    "the annotations' EPIC_100_video_info.csv). With --videos too, videos without frames "
    "and the erratum's P01_109, P27_103 are decoded.",
)
@click.option(
    "--flow",
    "flow_root",
    type=_EXISTING_DIR,
    show_default="none: an RGB store",
    help="EPIC's official optical flow root (PXX/flow_frames/PXX_YY.tar or PXX_YY/ with u/ "
    "and v/): plan a FLOW store (its own --store folder, beside the RGB one), copying the "
    "u and v JPEGs; positions are flow frames, (rgb - 1) // stride + 1 (docs/store.md).",
)
@click.option(
    "--flow-stack",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="With --flow --keep sampled: the (u, v) pairs per snippet the flow samplers read "
    "(epic-train --flow-stack).",
)
@click.option(
    "--not-official",
    "official",
    is_flag=True,
    flag_value=False,
    default=True,
    help="The --frames/--flow tars are your own (e.g. flow you computed, a synthetic "
    "dataset), not official downloads: do not compare their md5 with the official ones.",
)
@click.option(
    "--allow-missing",
    is_flag=True,
    help="Plan without missing, unreadable or too-short videos (listed in the summary).",
)
def plan(**options: object) -> None:
    """Probe the videos, balance them into shards and write <store>/manifest.json."""
    start_command()
    preflight_output(options["store_root"], need_bytes=PLAN_BYTES, option="--store")
    manifest = plan_store(**options)
    click.echo(plan_summary(manifest, options["store_root"]))


@extract.command(epilog=example("epic-extract run --store store --shard-index 3"))
@_existing_store_option("Store folder made by `plan`.")
@click.option(
    "--shard-index",
    type=click.IntRange(min=0),
    envvar="SLURM_ARRAY_TASK_ID",
    show_envvar=True,
    show_default="none: give it or --all",
    help="Shard to extract.",
)
@click.option(
    "--all",
    "run_all",
    is_flag=True,
    help="Extract every pending shard, one after the other, in this process. A shard with "
    "a bad video fails alone and the run goes on (exit 3 at the end, one resubmit line); "
    "out of space, a missing ffmpeg or Ctrl-C stop it at once.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    show_default="$SLURM_CPUS_PER_TASK, else the CPU count",
    help="Cores to use (ffmpeg processes in parallel).",
)
@click.option(
    "--tmp-dir",
    type=_DIR,
    envvar="TMPDIR",
    show_envvar=True,
    show_default="the system's temp folder",
    help="Node-local scratch for the shard being written.",
)
@click.option(
    "--force",
    is_flag=True,
    envvar="EPIC_FORCE",
    show_envvar=True,
    help="Redo shards that are already published.",
)
@click.option(
    "--map-size",
    type=click.IntRange(min=1 << 16),
    show_default="4x the estimate + 1 GiB",
    help="LMDB map size in bytes.",
)
@click.option(
    "--videos",
    "videos_root",
    type=_EXISTING_DIR,
    show_default="where `plan` found them",
    help="EPIC-KITCHENS videos root, when the videos moved since `plan` (same layout).",
)
def run(
    store_root: Path,
    shard_index: int | None,
    run_all: bool,
    workers: int | None,
    tmp_dir: Path | None,
    force: bool,
    map_size: int | None,
    videos_root: Path | None,
) -> None:
    """Decode the videos of one shard (or all) and publish the shard into the store."""
    if run_all == (shard_index is not None):
        raise click.UsageError(
            "give exactly one of --shard-index N (or SLURM_ARRAY_TASK_ID) and --all"
        )
    start_command()
    manifest = load_runnable_manifest(store_root)
    if run_all:
        indices = [s.index for s in manifest.shards] if force else pending_shards(store_root)
    else:
        indices = [shard_index]
    preflight_run(manifest, store_root=store_root, indices=indices, tmp_dir=tmp_dir, force=force)
    planned = {s.index: s.planned_frames for s in manifest.shards}

    def run_one(index: int) -> ShardResult:
        with Progress(planned.get(index), label=f"shard {index}", unit="frames") as progress:
            result = run_shard(
                store_root=store_root,
                shard_index=index,
                workers=workers,
                tmp_dir=tmp_dir,
                force=force,
                map_size=map_size,
                on_frames=progress.update,
                videos_root=videos_root,
            )
        click.echo(
            f"shard {result.shard_index}: {result.status} {result.path} "
            f"({len(result.videos)} videos, {result.bytes / 1e6:.1f} MB, {result.seconds:.1f} s)"
        )
        return result

    if run_all:
        run_shards(indices, run_one, store_root=store_root)
    else:
        run_one(shard_index)


@click.command(
    cls=EpicCommand,
    epilog=example("epic-check --store store --annotations annotations"),
)
@_existing_store_option("Store folder to check.")
@click.option(
    "--annotations",
    "annotations_dir",
    type=_EXISTING_DIR,
    envvar="EPIC_ANNOTATIONS",
    show_envvar=True,
    show_default="no annotation check",
    help="Also check that every annotated segment of the store's splits is stored.",
)
@click.option(
    "--deep",
    is_flag=True,
    envvar="EPIC_DEEP",
    show_envvar=True,
    help="Also decode every JPEG and check its size (CPU-bound).",
)
@click.option(
    "--compare-frames",
    "frames_root",
    type=_EXISTING_DIR,
    show_default="no comparison",
    help="Instead of the integrity check, compare the videos the store decoded with EPIC's "
    "official frames in this folder (PXX/rgb_frames/PXX_YY.tar or PXX_YY/): best frame "
    "shift (must be 0), difference, PSNR, frame counts; exit 5 on a mismatch.",
)
@click.option(
    "--upgrade",
    is_flag=True,
    help="Write the frame index into every shard that checks clean but has none (store "
    "format 1) or whose index alone is damaged, in place (no re-extraction; faster reads). "
    "Run it while no job reads the store.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def check(
    store_root: Path,
    annotations_dir: Path | None,
    deep: bool,
    frames_root: Path | None,
    upgrade: bool,
    as_json: bool,
    verbose: bool,
) -> int:
    """Verify a frame store; prints a table, the problems and the --array spec to resubmit.

    Exits 5 when the store is incomplete or damaged, or with --compare-frames when a
    video's frames do not match the official ones (docs/conventions.md).
    """
    start_command()
    manifest = load_runnable_manifest(store_root)  # a sizing-only plan has nothing to check
    if frames_root is not None:
        videos = len(manifest.video_to_shard())
        with Progress(videos, label="compare", unit="videos") as progress:
            compared = compare_frames(store_root, frames_root, on_video=lambda: progress.update(1))
        text = json.dumps(compared.to_dict(), indent=1) if as_json else format_comparison(compared)
        click.echo(text)
        return ExitCode.OK if compared.ok else ExitCode.STORE_INCOMPLETE
    with Progress(len(manifest.shards), label="epic-check", unit="shards") as progress:
        report = check_store(
            store_root,
            annotations_dir=annotations_dir,
            deep=deep,
            upgrade=upgrade,
            on_shard=lambda: progress.update(1),
        )
    click.echo(json.dumps(report.to_dict(), indent=1) if as_json else format_report(report))
    return ExitCode.OK if report.ok else ExitCode.STORE_INCOMPLETE
