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
DECODERS = ("torchvision", "pil", "nvjpeg")  # as epicdata.dataset.DECODERS


def _option(
    default: Any, help: str, choices: tuple[str, ...] | None = None, minimum: int | None = None
) -> Any:
    """A config field with its command-line help, choices and lower bound: `epic-train
    --help`, the CLI's types and the config's validation are built from these, so a new
    field needs no table elsewhere."""
    return dataclasses.field(
        default=default, metadata={"help": help, "choices": choices, "min": minimum}
    )


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. Paths are required and have no default."""

    store: str
    annotations: str
    output_dir: str
    epochs: int = _option(30, "Epochs to train.", minimum=1)
    batch_size: int = _option(
        32, "Clips per batch per process (global batch: x world size).", minimum=1
    )
    lr: float = _option(1e-4, "AdamW learning rate.")
    weight_decay: float = _option(1e-4, "AdamW weight decay.")
    scheduler: str = _option(
        "plateau",
        "plateau: ReduceLROnPlateau(max) on val action top-1 (seed); cosine: per epoch.",
        SCHEDULERS,
    )
    plateau_factor: float = _option(0.5, "ReduceLROnPlateau factor.")
    plateau_patience: int = _option(3, "ReduceLROnPlateau patience in epochs.", minimum=0)
    dropout: float = _option(0.3, "Dropout before the heads.")
    num_frames: int = _option(8, "Frames per clip.", minimum=1)
    sampling: str = _option(
        "linspace",
        "linspace: np.linspace(start, stop - 1, T) (seed); tsn: one per part.",
        SAMPLINGS,
    )
    crop_size: int = _option(224, "Crop side in pixels (small values for CPU demos).", minimum=1)
    weights: str = _option(
        "imagenet", "imagenet (torchvision cache in $TORCH_HOME), none, or a state-dict file."
    )
    workers: int = _option(4, "DataLoader worker processes per GPU.", minimum=0)
    stage_dir: str | None = _option(
        None,
        "Node-local folder (e.g. $VSC_SCRATCH_NODE): copy the shards of the train and "
        "validation videos there at start and read them there; none: read the store in place.",
    )
    decoder: str = _option(
        "torchvision",
        "JPEG decoder: torchvision (libjpeg-turbo in the workers, 1.7x Pillow here), pil, or "
        "nvjpeg (the GPU decodes and crops; workers only read; CUDA only, refused elsewhere).",
        DECODERS,
    )
    amp: str = _option(
        "auto",
        "Mixed precision on CUDA: auto (bf16 if supported, else fp16 + scaler), bf16, fp16, off.",
        AMP_MODES,
    )
    device: str = _option("auto", "auto (cuda if available), cpu, cuda, cuda:N.")
    seed: int = _option(0, "Seed of initialisation, data order and augmentation.")
    train_split: str = _option("train", "Split to train on.")
    val_split: str = _option("validation", "Split to validate on each epoch.")
    checkpoint_every: int = _option(5, "Keep epoch_NNN.pt every N epochs.", minimum=1)
    log_every: int = _option(
        50,
        "Log a line with the loss every N steps (0: never; progress lines come anyway).",
        minimum=0,
    )
    limit_batches: int | None = _option(
        None, "At most N batches per epoch, train and validation (smoke runs).", minimum=1
    )
    deterministic: bool = _option(
        False, "Deterministic algorithms (slower on GPU; resume tests use it)."
    )
    compile: bool = _option(
        False,
        "torch.compile the model for training (the first step compiles: minutes); refused "
        "with the reason where this torch cannot.",
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            allowed = f.metadata.get("choices")
            if allowed and getattr(self, f.name) not in allowed:
                raise EpicInputError(
                    f"config {f.name}={getattr(self, f.name)!r}: expected one of "
                    f"{', '.join(allowed)}"
                )
        for f in fields(self):
            minimum, value = f.metadata.get("min"), getattr(self, f.name)
            if minimum is not None and value is not None and value < minimum:
                raise EpicInputError(f"config {f.name}={value}: must be >= {minimum}")
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
