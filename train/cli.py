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
    epic-validate --checkpoint RUN/best.pt --store STORE --annotations ANN --split test \\
                  --output-dir OUT --sls-pt 1 --sls-tl 3 --sls-td 3

``epic-train`` exits with 75 after saving a checkpoint on SIGUSR1/SIGTERM (requeue me).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import fields
from pathlib import Path

import click

from epicdata.errors import EpicInputError
from train import distributed
from train.config import AMP_MODES, DECODERS, SAMPLINGS, SCHEDULERS, TrainConfig, load_yaml_defaults
from train.fit import fit
from train.validate import validate

log = logging.getLogger(__name__)

_HELP = {
    "epochs": "Epochs to train (seed: 30).",
    "batch_size": "Clips per batch per process (seed: 32).",
    "lr": "AdamW learning rate (seed: 1e-4).",
    "weight_decay": "AdamW weight decay (seed: 1e-4).",
    "scheduler": "plateau: ReduceLROnPlateau(max) on val action top-1 (seed); cosine: per epoch.",
    "plateau_factor": "ReduceLROnPlateau factor (seed: 0.5).",
    "plateau_patience": "ReduceLROnPlateau patience in epochs (seed: 3).",
    "dropout": "Dropout before the heads (seed: 0.3).",
    "num_frames": "Frames per clip (seed: 8).",
    "sampling": "linspace: np.linspace(start, stop - 1, T) (seed); tsn: one per part.",
    "crop_size": "Crop side in pixels (seed: 224; small values for CPU demos).",
    "weights": "imagenet (torchvision cache in $TORCH_HOME), none, or a state-dict file.",
    "workers": "DataLoader worker processes per GPU (seed: 4).",
    "decoder": "JPEG decoder in the workers: torchvision (libjpeg-turbo, fastest here) or pil.",
    "amp": "Mixed precision on CUDA: auto (bf16 if supported, else fp16 + scaler), bf16, fp16, off.",
    "device": "auto (cuda if available), cpu, cuda, cuda:N.",
    "seed": "Seed of initialisation, data order and augmentation.",
    "train_split": "Split to train on.",
    "val_split": "Split to validate on each epoch.",
    "checkpoint_every": "Keep epoch_NNN.pt every N epochs (seed: 5).",
    "log_every": "Log a progress line every N steps (0: never).",
    "limit_batches": "At most N batches per epoch, train and validation (smoke runs).",
    "deterministic": "Deterministic algorithms (slower on GPU; resume tests use it).",
}
_CHOICES = {"scheduler": SCHEDULERS, "sampling": SAMPLINGS, "amp": AMP_MODES, "decoder": DECODERS}
_TYPES = {"int": int, "float": float, "str": str, "int | None": int}
_REQUIRED = ("store", "annotations", "output_dir")


def setup_logging(*, is_main: bool, log_file: Path | None = None) -> None:
    """The one place logging is configured: INFO on rank 0, WARNING elsewhere."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(
        level=logging.INFO if is_main else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=handlers,
        force=True,
    )


def _config_options(command: click.Command) -> click.Command:
    """One option per TrainConfig field (default None = "not given", so YAML can set it)."""
    for field in reversed(fields(TrainConfig)):
        if field.name in _REQUIRED:
            continue
        name = "--" + field.name.replace("_", "-")
        if field.type == "bool":
            option = click.option(f"{name}/--no-{name[2:]}", default=None, help=_HELP[field.name])
        else:
            kind = (
                click.Choice(_CHOICES[field.name]) if field.name in _CHOICES else _TYPES[field.type]
            )
            option = click.option(name, type=kind, default=None, help=_HELP[field.name])
        command = option(command)
    return command


_annotations_option = click.option(
    "--annotations",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Folder of the EPIC-100 annotation CSVs.",
)


@click.command(context_settings={"max_content_width": 100})
@click.option(
    "--store",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Frame store folder (epic-extract).",
)
@_annotations_option
@click.option(
    "--output-dir", required=True, type=click.Path(file_okay=False), help="Run folder (created)."
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    help="YAML of config defaults; options override it.",
)
@click.option(
    "--resume",
    default=None,
    help="auto: continue RUN/last.pt if present (requeued jobs); or a checkpoint PATH.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Build everything, run 2 train and 2 validation batches, write nothing.",
)
@_config_options
def train_main(
    store: str,
    annotations: str,
    output_dir: str,
    config_file: str | None,
    resume: str | None,
    dry_run: bool,
    **options: object,
) -> None:
    """Train the ResNet-18 action model on a frame store (defaults: the seed's recipe)."""
    info = distributed.discover()
    values = load_yaml_defaults(config_file) if config_file else {}
    values.update({k: v for k, v in options.items() if v is not None})
    log_file = None if dry_run or not info.is_main else Path(output_dir) / "train.log"
    setup_logging(is_main=info.is_main, log_file=log_file)
    try:
        cfg = TrainConfig(store=store, annotations=annotations, output_dir=output_dir, **values)
        code = fit(cfg, resume_from=resume, dry_run=dry_run)
    except EpicInputError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(code)


@click.command(context_settings={"max_content_width": 100})
@click.option(
    "--checkpoint",
    type=click.Path(exists=True, dir_okay=False),
    help="Checkpoint to run (e.g. RUN/best.pt).",
)
@click.option(
    "--predictions",
    type=click.Path(exists=True, dir_okay=False),
    help="Score this predictions file (.pkl/.pt, official format) instead.",
)
@click.option(
    "--store",
    type=click.Path(exists=True, file_okay=False),
    help="Frame store (with --checkpoint).",
)
@_annotations_option
@click.option(
    "--split",
    type=click.Choice(["validation", "test", "train"]),
    default="validation",
    show_default=True,
    help="Split to score (test: write submission.zip).",
)
@click.option(
    "--output-dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Where metrics.json / predictions.pkl / submission.zip go.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Clips per batch per process.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=4,
    show_default=True,
    help="DataLoader workers per process.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option(
    "--allow-partial", is_flag=True, help="Score predictions that cover only part of the split."
)
@click.option(
    "--limit-batches",
    type=click.IntRange(min=1),
    default=None,
    help="Only N batches (smoke runs; implies --allow-partial).",
)
@click.option(
    "--sls-pt",
    type=click.IntRange(0, 5),
    default=None,
    help="Submission: pretraining supervision level (0-5).",
)
@click.option(
    "--sls-tl",
    type=click.IntRange(0, 5),
    default=None,
    help="Submission: training-label supervision level (0-5).",
)
@click.option(
    "--sls-td",
    type=click.IntRange(0, 5),
    default=None,
    help="Submission: training-data supervision level (0-5).",
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
) -> None:
    """Official EPIC-100 metrics of a checkpoint or a predictions file, or a test submission."""
    setup_logging(is_main=distributed.discover().is_main)
    try:
        validate(
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
        )
    except EpicInputError as exc:
        raise click.ClickException(str(exc)) from None
