"""The training configuration: one frozen dataclass, built at the edge (CLI + optional YAML).

Defaults are the seed's ResNet-18 recipe. A YAML file (``--config``) only changes defaults;
command-line options override it. The resolved config is saved as ``config.yaml`` in the
run folder and inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from epicdata.errors import EpicInputError

SCHEDULERS = ("plateau", "cosine")
SAMPLINGS = ("linspace", "tsn")
AMP_MODES = ("auto", "bf16", "fp16", "off")
DECODERS = ("torchvision", "pil")  # as epicdata.dataset.DECODERS


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. Paths are required and have no default."""

    store: str
    annotations: str
    output_dir: str
    epochs: int = 30
    batch_size: int = 32  # per process; the global batch is batch_size x world size
    lr: float = 1e-4
    weight_decay: float = 1e-4
    scheduler: str = "plateau"  # ReduceLROnPlateau on val action top-1, or cosine
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    dropout: float = 0.3
    num_frames: int = 8
    sampling: str = "linspace"
    crop_size: int = 224
    weights: str = "imagenet"  # imagenet | none | PATH
    workers: int = 4
    decoder: str = "torchvision"  # 1.7x Pillow's frames/s here (docs/benchmarks.md)
    amp: str = "auto"  # auto: bf16 where supported, else fp16 + scaler; off on CPU
    device: str = "auto"
    seed: int = 0
    train_split: str = "train"
    val_split: str = "validation"
    checkpoint_every: int = 5
    log_every: int = 50
    limit_batches: int | None = None  # cap batches per epoch (train and val) for smoke runs
    deterministic: bool = False

    def __post_init__(self) -> None:
        choices = {
            "scheduler": SCHEDULERS,
            "sampling": SAMPLINGS,
            "amp": AMP_MODES,
            "decoder": DECODERS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise EpicInputError(
                    f"config {name}={getattr(self, name)!r}: expected one of {', '.join(allowed)}"
                )
        positive = ("epochs", "batch_size", "num_frames", "crop_size", "checkpoint_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise EpicInputError(f"config {name}={getattr(self, name)}: must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise EpicInputError(f"config dropout={self.dropout}: must be in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (str, int, float, bool, None): safe for ``weights_only`` checkpoints."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise EpicInputError(
                f"unknown config field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(_dump_yaml(self.to_dict()))


def load_yaml_defaults(path: str | Path) -> dict[str, Any]:
    """Read a YAML file of config defaults (field names with ``-`` or ``_``)."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise EpicInputError(f"--config {path}: cannot read it ({exc})") from None
    if not isinstance(data, dict):
        raise EpicInputError(f"--config {path}: expected a mapping of option: value")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise EpicInputError(f"--config {path}: unknown field(s) {', '.join(unknown)}")
    return data


def _dump_yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False)
