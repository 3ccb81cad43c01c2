"""Command lines ``epic-train`` and ``epic-validate``: parse, configure logging, call.

Train (1 GPU, or CPU; several GPUs under ``torchrun --nproc_per_node N --no-python
epic-train ...`` or ``srun epic-train ...``)::

    epic-train --store STORE --annotations ANN --output-dir RUN [--config defaults.yaml]
               [--epochs 30 --batch-size 32 --lr 1e-4 ... every TrainConfig field]
               [--resume auto|PATH] [--dry-run]

Score a checkpoint or predictions, or write a challenge submission::

    epic-validate --checkpoint RUN/best.pt --store STORE --annotations ANN \\
                  --split validation --output-dir OUT
    epic-validate --predictions preds.pkl --annotations ANN --split validation --output-dir OUT
    epic-validate --fuse rgb/predictions.pkl flow/predictions.pkl [--fuse-weights 1,1.5] \\
                  --annotations ANN --split validation --output-dir FUSED
    epic-validate --checkpoint RUN/best.pt --store STORE --annotations ANN --split test \\
                  --output-dir OUT --sls-pt 1 --sls-tl 3 --sls-td 3

Exit codes: docs/conventions.md (``epic-train`` exits 75 after saving a checkpoint on
SIGUSR1/SIGTERM; the slurm job scripts requeue the job after SIGUSR1 and stop it, exit 76,
after SIGTERM).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from epicdata.console import EpicCommand, example, start_command
from train import distributed
from train.config import (
    DEFAULT_WORKERS,
    PATH_FIELDS,
    FieldType,
    TrainConfig,
    default_workers,
    field_types,
    load_yaml_defaults,
)
from train.fit import fit
from train.metrics import format_metrics_table
from train.preview import write_preview
from train.recipes import resolve_options
from train.validate import validate

log = logging.getLogger(__name__)

#: Options the slurm scripts set through the environment.
_ENVVARS = {"workers": "EPIC_WORKERS"}


class _Coerced(click.ParamType):
    """A config option's click type: the value (command line or environment) is typed by
    ``FieldType.parse``, as YAML files and sweep grids are; the click type it is mixed into
    then adds its help (choices, range) and checks (bounds) with click's messages."""

    def __init__(self, spec: FieldType, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spec = spec

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            value = self.spec.parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        return super().convert(value, param, ctx)


class _Text(_Coerced, click.types.StringParamType):
    pass


class _Integer(_Coerced, click.types.IntParamType):
    pass


class _Number(_Coerced, click.types.FloatParamType):
    pass


class _Choice(_Coerced, click.Choice):
    pass


class _Bounded(_Coerced, click.IntRange):
    pass


def _click_type(spec: FieldType) -> click.ParamType:
    """The option type of a non-bool field (bools are --x/--no-x flags)."""
    if spec.choices:
        return _Choice(spec, spec.choices)
    if spec.minimum is not None:
        return _Bounded(spec, min=spec.minimum)
    return {str: _Text, int: _Integer, float: _Number}[spec.kind](spec)


#: Other spellings of an option: ``--train-splits train,validation`` reads as it is meant.
_ALIASES = {"train_split": ("--train-splits",)}


def _config_options(command: click.Command) -> click.Command:
    """One option per TrainConfig field: type, default, help and choices come from the field
    itself. Only options given on the command line or in the environment override
    ``--config``."""
    for field in reversed(fields(TrainConfig)):
        if field.name in PATH_FIELDS:
            continue
        spec = field_types()[field.name]
        name = "--" + field.name.replace("_", "-")
        extra: dict[str, object] = {}
        if field.name in _ENVVARS:
            extra.update(envvar=_ENVVARS[field.name], show_envvar=True)
        if field.default is None:
            extra["show_default"] = "none"
        if spec.kind is bool:
            decls = [f"{name}/--no-{name[2:]}"]
        else:
            decls = [name, *_ALIASES.get(field.name, ())]
            extra["type"] = _click_type(spec)
        option = click.option(*decls, default=field.default, help=field.metadata["help"], **extra)
        command = option(command)
    return command


_annotations_option = click.option(
    "--annotations",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    envvar="EPIC_ANNOTATIONS",
    show_envvar=True,
    help="Folder of the EPIC-100 annotation CSVs.",
)


_accept_input_mismatch_option = click.option(
    "--accept-input-mismatch",
    is_flag=True,
    help="Feed input that differs from what the weights were trained on (normalisation, "
    "channels, clip length of a TSM, frame size), with a warning naming both values.",
)


def _store_option(*, required: bool) -> Callable[[click.Command], click.Command]:
    return click.option(
        "--store",
        type=click.Path(exists=True, file_okay=False),
        required=required,
        envvar="EPIC_STORE",
        show_envvar=True,
        show_default=None if required else "none (needed with --checkpoint)",
        help="Frame store folder (epic-extract).",
    )


@click.command(
    cls=EpicCommand,
    epilog=example(
        "epic-train --store store --annotations annotations --output-dir runs/r18 --resume auto"
    ),
)
@_store_option(required=True)
@_annotations_option
@click.option(
    "--output-dir",
    required=True,
    type=click.Path(file_okay=False),
    envvar="EPIC_RUN_DIR",
    show_envvar=True,
    help="Run folder (created).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    show_default="none",
    help="YAML of config defaults; options given on the command line override it.",
)
@click.option(
    "--resume",
    default=None,
    show_default="none: refuse a run folder that holds last.pt",
    help="auto: continue RUN/last.pt if present (requeued jobs); or a checkpoint PATH.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Build everything, run 2 train and 2 validation batches, write nothing.",
)
@click.option(
    "--preview",
    type=click.IntRange(min=1),
    default=None,
    show_default="none: train",
    help="Only write RUN/preview.png: N training clips as stored and as augmented, with "
    "their frame numbers, narration and labels.",
)
@click.option(
    "--allow-config-change",
    is_flag=True,
    help="On resume, apply options that differ from the checkpoint's (recorded in the run).",
)
@_accept_input_mismatch_option
@_config_options
def train_main(
    store: str,
    annotations: str,
    output_dir: str,
    config_file: str | None,
    resume: str | None,
    dry_run: bool,
    allow_config_change: bool,
    accept_input_mismatch: bool,
    preview: int | None,
    **options: object,
) -> int:
    """Train an action model on a frame store (--recipe; default: the seed's ResNet-18).

    Exits 75 after saving last.pt on SIGUSR1/SIGTERM (run again with --resume auto; the
    slurm job scripts requeue after SIGUSR1, stop after SIGTERM); other codes:
    docs/conventions.md.
    """
    ctx = click.get_current_context()
    info = distributed.discover(batch_shell="refuse")  # exit 2 at once, not a hang
    start_command(is_main=info.is_main)
    given = {
        k: v
        for k, v in options.items()
        if ctx.get_parameter_source(k) not in (ParameterSource.DEFAULT, None)
    }
    # The recipe's values, then --config's, then the command line's.
    values = resolve_options(load_yaml_defaults(config_file) if config_file else {}, given)
    # Absolute paths in config.yaml and the checkpoints: a run folder makes sense anywhere.
    paths = {k: str(Path(v).resolve()) for k, v in (("store", store), ("annotations", annotations), ("output_dir", output_dir))}  # fmt: skip
    cfg = TrainConfig(**paths, **values)
    if preview is not None:
        click.echo(f"wrote {write_preview(cfg, preview)}")
        return 0
    return fit(
        cfg,
        resume_from=resume,
        dry_run=dry_run,
        allow_config_change=allow_config_change,
        accept_input_mismatch=accept_input_mismatch,
    )


@click.command(
    cls=EpicCommand,
    epilog=example(
        "epic-validate --checkpoint runs/r18/best.pt --store store --annotations annotations "
        "--output-dir runs/r18/val"
    ),
)
@click.option(
    "--checkpoint",
    type=click.Path(exists=True, dir_okay=False),
    envvar="EPIC_CHECKPOINT",
    show_envvar=True,
    show_default="none: give it or --predictions",
    help="Checkpoint to run (e.g. RUN/best.pt, or a C1 model-zoo .ckpt).",
)
@click.option(
    "--predictions",
    type=click.Path(exists=True, dir_okay=False),
    show_default="none",
    help="Score this predictions file (.pkl/.pt, official format) instead.",
)
@_store_option(required=False)
@_annotations_option
@click.option(
    "--split",
    type=click.Choice(["validation", "test", "train"]),
    default="validation",
    envvar="EPIC_SPLIT",
    show_envvar=True,
    help="Split to score (test: write submission.zip).",
)
@click.option(
    "--output-dir",
    required=True,
    type=click.Path(file_okay=False),
    envvar="EPIC_OUT",
    show_envvar=True,
    help="Where metrics.json / predictions.pkl / submission.zip go.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=32,
    help="Clips per batch per process.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=default_workers(),
    envvar="EPIC_WORKERS",
    show_envvar=True,
    help=f"DataLoader workers per process: {DEFAULT_WORKERS}, or the CPUs this process may use "
    "where they are fewer.",
)
@click.option("--device", default="auto", help="auto, cpu, cuda, cuda:N.")
@click.option(
    "--allow-partial", is_flag=True, help="Score predictions that cover only part of the split."
)
@click.option(
    "--limit-batches",
    type=click.IntRange(min=1),
    default=None,
    show_default="none: the whole split",
    help="Only N batches (smoke runs; implies --allow-partial).",
)
@click.option(
    "--sls-pt",
    type=click.IntRange(0, 5),
    default=None,
    show_default="none: required with --split test",
    help="Submission: pretraining supervision level (0-5).",
)
@click.option(
    "--sls-tl",
    type=click.IntRange(0, 5),
    default=None,
    show_default="none: required with --split test",
    help="Submission: training-label supervision level (0-5).",
)
@click.option(
    "--sls-td",
    type=click.IntRange(0, 5),
    default=None,
    show_default="none: required with --split test",
    help="Submission: training-data supervision level (0-5).",
)
@_accept_input_mismatch_option
@click.option(
    "--fuse",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    show_default="none",
    help="Fuse predictions files (streams, or runs of an ensemble) and score the fusion: "
    "--fuse A.pkl B.pkl. Scores are averaged before the softmax, rows in A's order.",
)
@click.option(
    "--fuse-weights",
    default=None,
    show_default="1 for each file",
    help="One weight per --fuse file, e.g. 1,1.5: sum(w_i * s_i) / sum(w_i).",
)
@click.option(
    "--views",
    default="1x1",
    help="Test views CLIPSxCROPS per segment, logits averaged before the softmax: CLIPS "
    "temporal clips, CROPS 1 (centre) or 3 (along the long side), e.g. 10x3. A batch holds "
    "--batch-size // (CLIPS * CROPS) segments.",
)
@click.option(
    "--test-frames",
    type=int,
    default=None,
    show_default="the checkpoint's --num-frames",
    help="Frames per test clip for a temporal-average model (C1 tests TSN with 25); a TSM "
    "model keeps its own.",
)
@click.argument(
    "more_fused", nargs=-1, type=click.Path(exists=True, dir_okay=False), metavar="[FUSE_FILE]..."
)
def validate_main(
    checkpoint: str | None,
    predictions: str | None,
    store: str | None,
    annotations: str,
    split: str,
    output_dir: str,
    batch_size: int,
    workers: int,
    device: str,
    allow_partial: bool,
    limit_batches: int | None,
    sls_pt: int | None,
    sls_tl: int | None,
    sls_td: int | None,
    accept_input_mismatch: bool,
    fuse: tuple[str, ...],
    fuse_weights: str | None,
    views: str,
    test_frames: int | None,
    more_fused: tuple[str, ...],
) -> None:
    """Official EPIC-100 metrics of a checkpoint (epic-train's or a C1 model-zoo file), a
    predictions file or a fusion of several (--fuse A.pkl B.pkl), or a test submission."""
    start_command(is_main=distributed.discover(batch_shell="single").is_main)
    if more_fused and not fuse:
        raise click.UsageError(f"unexpected argument {more_fused[0]} (files to fuse follow --fuse)")
    result = validate(
        annotations=annotations,
        split=split,
        output_dir=output_dir,
        checkpoint=checkpoint,
        store=store,
        predictions=predictions,
        batch_size=batch_size,
        workers=workers,
        device_name=device,
        allow_partial=allow_partial,
        limit_batches=limit_batches,
        sls=(sls_pt, sls_tl, sls_td),
        accept_input_mismatch=accept_input_mismatch,
        fuse=[*fuse, *more_fused],
        fuse_weights=fuse_weights,
        views=views,
        test_frames=test_frames,
    )
    if result is not None and result.metrics is not None:
        click.echo(
            f"EPIC-100 {split} metrics (%), {result.segments} segments, from {result.source}"
        )
        click.echo(format_metrics_table(result.metrics))
