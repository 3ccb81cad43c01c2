"""The training configuration: one frozen dataclass, built at the edge (CLI + optional YAML).

Defaults are the seed's ResNet-18 recipe. A YAML file (``--config``) only changes defaults;
command-line options override it. The resolved config is saved as ``config.yaml`` in the
run folder and inside every checkpoint.

Every value from outside (a command-line option, an environment variable, a YAML file, a
sweep grid, a sweep.json) is typed by one coercion, :func:`field_types` /
:func:`coerce_field` / :func:`coerce_values`, read from the dataclass's annotations: a
source cannot type ``5e-5`` or ``2.5`` differently from another.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from epicdata.errors import EpicInputError
from train.input_spec import NORMS
from train.recipes import RECIPES

SCHEDULERS = ("plateau", "cosine", "step")
OPTIMIZERS = ("adamw", "sgd")
HEAD_LOSSES = ("sum", "mean")
TRAIN_CROPS = ("seed", "multiscale")
ARCHS = ("resnet18", "resnet50")
TEMPORALS = ("avg", "tsm")
NORM_NAMES = tuple(NORMS)
RECIPE_NAMES = tuple(RECIPES)
SAMPLINGS = ("linspace", "tsn")
MODALITIES = ("rgb", "flow")
AMP_MODES = ("auto", "bf16", "fp16", "off")
DECODERS = ("torchvision", "pil", "nvjpeg")  # as epicdata.dataset.DECODERS
#: The fields a run's command line gives itself (required options, never in a YAML file).
PATH_FIELDS = ("store", "annotations", "output_dir")
#: Text a bool field takes, as click's BOOL reads it (YAML's own true/false arrive as bools).
_TRUE_WORDS = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE_WORDS = frozenset({"0", "false", "f", "no", "n", "off"})


#: Options that may change on resume without changing the result (docs/training.md).
FREE_ON_RESUME = (
    "workers",
    "stage_dir",
    "log_every",
    "checkpoint_every",
    "device",
    "store",
    "annotations",
    "output_dir",
)


def free_on_resume(scheduler: str) -> frozenset[str]:
    """The options a resumed run of ``scheduler`` may change freely: FREE_ON_RESUME, and
    more epochs unless the schedule depends on their count (cosine's period)."""
    return frozenset(FREE_ON_RESUME) | (frozenset() if scheduler == "cosine" else {"epochs"})


#: Loader workers per process by default (the seed's), where the process has the CPUs.
DEFAULT_WORKERS = 4


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity (what SLURM's --cpus-per-task or a
    container's cpuset grant), not the machine's count; torch's loader warns past it."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows: no affinity to ask
        return os.cpu_count() or 1


def default_workers() -> int:
    """DEFAULT_WORKERS, capped by :func:`usable_cpus`: on a 2-core laptop 4 workers only
    take turns on 2 CPUs (and torch warns about it)."""
    return min(DEFAULT_WORKERS, usable_cpus())


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
    recipe: str = _option(
        "seed-r18",
        "Preset of the options below (docs/training.md): seed-r18 (the seed's ResNet-18), "
        "tsn-r50, tsm-r50 (C1's TSN and TSM), tsn-r50-flow, tsm-r50-flow (their flow "
        "streams); --config and command-line options override it.",
        RECIPE_NAMES,
    )
    arch: str = _option("resnet18", "Backbone (torchvision ResNet).", ARCHS)
    temporal: str = _option(
        "avg",
        "avg: average the frames' features (TSN); tsm: temporal shift in every residual "
        "block (TSM; the clip length is then fixed by the model).",
        TEMPORALS,
    )
    partial_bn: bool = _option(
        False, "Partial BatchNorm (TSN/C1): every BN but the first frozen, in eval mode."
    )
    epochs: int = _option(30, "Epochs to train.", minimum=1)
    batch_size: int = _option(
        32, "Clips per batch per process (global batch: x world size).", minimum=1
    )
    optimizer: str = _option("adamw", "adamw (seed) or sgd (with --momentum; C1).", OPTIMIZERS)
    lr: float = _option(1e-4, "Learning rate.")
    momentum: float = _option(0.9, "SGD momentum (--optimizer sgd).")
    weight_decay: float = _option(1e-4, "Weight decay (AdamW's decoupled; SGD's L2).")
    grad_clip: float | None = _option(
        None, "Clip the gradients' global L2 norm to this (C1: 20); none: no clipping."
    )
    head_loss: str = _option(
        "sum",
        "sum: verb + noun cross-entropy (seed); mean: their mean (C1).",
        HEAD_LOSSES,
    )
    scheduler: str = _option(
        "plateau",
        "plateau: ReduceLROnPlateau(max) on val action top-1 (seed); cosine: per epoch; "
        "step: MultiStepLR at --lr-steps (C1).",
        SCHEDULERS,
    )
    plateau_factor: float = _option(0.5, "ReduceLROnPlateau factor.")
    plateau_patience: int = _option(3, "ReduceLROnPlateau patience in epochs.", minimum=0)
    lr_steps: str = _option(
        "20,40", "Epochs at which --scheduler step multiplies the lr by --lr-gamma."
    )
    lr_gamma: float = _option(0.1, "--scheduler step's factor.")
    dropout: float = _option(0.3, "Dropout before the heads.")
    modality: str = _option(
        "rgb",
        "rgb, or flow: EPIC's TV-L1 flow from a flow store (`epic-extract plan --flow`); a "
        "clip is --num-frames snippets of --flow-stack (u, v) pairs (docs/training.md).",
        MODALITIES,
    )
    flow_stack: int = _option(
        5, "Consecutive (u, v) pairs per snippet of a flow clip (C1: 5).", minimum=1
    )
    num_frames: int = _option(8, "Frames per clip (snippets, for flow).", minimum=1)
    sampling: str = _option(
        "linspace",
        "linspace: np.linspace(start, stop - 1, T) (seed); tsn: one per part.",
        SAMPLINGS,
    )
    crop_size: int = _option(224, "Crop side in pixels (small values for CPU demos).", minimum=1)
    train_crop: str = _option(
        "seed",
        "seed: RandomResizedCrop(scale 0.85-1) + flip; multiscale: TSN's multi-scale crop "
        "(scales 1, .875, .75, .66 of the short side for RGB, 1, .875, .75 for flow; 13 fixed "
        "places) + flip (C1).",
        TRAIN_CROPS,
    )
    photometric: bool = _option(
        True, "The seed's ColorJitter and RandomErasing in training (C1 has neither)."
    )
    norm: str = _option(
        "imagenet",
        "Normalisation: imagenet (mean and std); epic-c1: the ImageNet mean as std too, as "
        "the C1 model-zoo checkpoints were trained.",
        NORM_NAMES,
    )
    weights: str = _option(
        "imagenet",
        "imagenet (torchvision V1 weights in $TORCH_HOME; a flow model's conv1 by TSN's "
        "cross-modality rule), kinetics (the TSM authors' Kinetics ResNet-50 TSM, RGB or flow, "
        "there too), none, or a file: a torchvision state dict, an epic-train checkpoint, a "
        "TSM or C1 model-zoo checkpoint.",
    )
    workers: int = _option(
        default_workers(),
        f"DataLoader worker processes per GPU: {DEFAULT_WORKERS}, or the CPUs this process "
        "may use where they are fewer.",
        minimum=0,
    )
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
    train_split: str = _option(
        "train",
        "Split(s) to train on (also --train-splits): train, or train,validation for the final "
        "test-server submission, which has no validation epochs (docs/training.md).",
    )
    val_split: str = _option(
        "validation", "Split to validate on each epoch (none when it is also trained on)."
    )
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
        # The edges type their values with the names of their sources; this catches a
        # config built elsewhere (a checkpoint's dict, a test) with a value of the wrong type.
        for name, spec in field_types().items():
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, spec.parse(value))  # e.g. an int lr 1 -> 1.0
            except ValueError as exc:
                raise EpicInputError(f"config {name}: {exc}") from None
        for f in fields(self):
            minimum, value = f.metadata.get("min"), getattr(self, f.name)
            if minimum is not None and value is not None and value < minimum:
                raise EpicInputError(f"config {f.name}={value}: must be >= {minimum}")
        if not 0.0 <= self.dropout < 1.0:
            raise EpicInputError(f"config dropout={self.dropout}: must be in [0, 1)")
        self.milestones()  # refuses a malformed --lr-steps now, not at the first epoch
        self._check_splits()
        if self.modality == "flow" and self.decoder == "nvjpeg":
            raise EpicInputError(
                "--decoder nvjpeg with --modality flow: nvjpeg decodes colour frames only",
                fix="use --decoder torchvision (or pil) for a flow run",
            )
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise EpicInputError(f"config grad_clip={self.grad_clip}: must be > 0 (or none)")

    def train_splits(self) -> tuple[str, ...]:
        """The splits trained on (``train_split``, comma-separated), in their order."""
        return tuple(part.strip() for part in self.train_split.split(","))

    @property
    def validates(self) -> bool:
        """Whether epochs are validated: not when the validation split is trained on."""
        return self.val_split not in self.train_splits()

    def _check_splits(self) -> None:
        splits = self.train_splits()
        if "test" in splits:
            raise EpicInputError(
                f"--train-splits {self.train_split}: the test split has no labels and is what "
                "the challenge server scores: it can never be trained on",
                fix="train on train, or train,validation for the final submission",
            )
        unknown = [s for s in splits if s not in ("train", "validation")] or (
            ["(twice)"] if len(set(splits)) != len(splits) else []
        )
        if unknown:
            raise EpicInputError(
                f"--train-splits {self.train_split}: {', '.join(unknown)} is not a training "
                "split; expected train or train,validation"
            )
        if not self.validates and self.scheduler == "plateau":
            raise EpicInputError(
                f"--train-splits {self.train_split} trains on the validation split, so no "
                "epoch is validated, and --scheduler plateau steps on validation accuracy",
                fix="use --scheduler step (the C1 recipes' MultiStepLR at --lr-steps) or "
                "--scheduler cosine, e.g. with the epochs and schedule of the run you validated",
            )

    def milestones(self) -> list[int]:
        """``lr_steps`` as increasing epoch numbers (``"20,40"`` -> [20, 40])."""
        try:
            steps = [int(part) for part in self.lr_steps.split(",")]
        except ValueError:
            steps = []
        if not steps or any(b <= a for a, b in zip(steps, steps[1:], strict=False)) or steps[0] < 1:
            raise EpicInputError(
                f"config lr_steps={self.lr_steps!r}: expected increasing epoch numbers >= 1 "
                "separated by commas, e.g. 20,40"
            )
        return steps

    @property
    def input_channels(self) -> int:
        """The first convolution's input channels: 3 (RGB), or 2 per flow pair of a snippet."""
        return 3 if self.modality == "rgb" else 2 * self.flow_stack

    def model_options(self) -> dict[str, Any]:
        """The keyword arguments of train.model.ActionModel / build_model."""
        return {
            "arch": self.arch,
            "temporal": self.temporal,
            "num_frames": self.num_frames,
            "partial_bn": self.partial_bn,
            "dropout": self.dropout,
            "in_channels": self.input_channels,
        }

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


# ----------------------------------------------------------------------------- typing values


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS | _FALSE_WORDS:
        return value.strip().lower() in _TRUE_WORDS
    raise ValueError


def _as_int(value: Any) -> int:
    # No float, not even 3.0: a YAML `batch_size: 2.5` must not train with 2.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        return int(value)
    raise ValueError


def _as_float(value: Any) -> float:
    # Text too: YAML 1.1 reads 5e-5 (no dot) as the string '5e-5'.
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        number = float(value)
        if math.isfinite(number):
            return number
    raise ValueError


def _as_text(value: Any) -> str:
    # One line: a sweep task hands options to bash one a line.
    if isinstance(value, str) and value and not any(c < " " for c in value):
        return value
    raise ValueError


_PARSERS: dict[type, Callable[[Any], Any]] = {
    bool: _as_bool,
    int: _as_int,
    float: _as_float,
    str: _as_text,
}
_EXPECTED = {
    bool: "true or false (bool)",
    int: "an integer (int)",
    float: "a number (float)",
    str: "a one-line text (str)",
}


@dataclass(frozen=True)
class FieldType:
    """What a TrainConfig field takes, from its annotation and metadata: ``kind`` (bool,
    int, float or str), whether None (YAML ``null``) is allowed, and its choices."""

    name: str
    kind: type
    optional: bool
    choices: tuple[str, ...] | None
    minimum: int | None

    @property
    def expected(self) -> str:
        """What the field takes, in words: ``a number (float)``, ``one of plateau, cosine``."""
        text = f"one of {', '.join(self.choices)}" if self.choices else _EXPECTED[self.kind]
        return f"{text} or null" if self.optional else text

    def parse(self, value: Any) -> Any:
        """``value`` (command-line or environment text, or a YAML/JSON value) as the field
        holds it; ValueError ``expected <type>, got <value>`` when it is not one: an int for
        a float field is a float, ``5e-5`` a float, ``2.5`` no int, ``yes`` a bool."""
        if value is None and self.optional:
            return None
        try:
            typed = _PARSERS[self.kind](value)
        except (TypeError, ValueError):
            raise ValueError(f"expected {self.expected}, got {value!r}") from None
        if self.choices and typed not in self.choices:
            raise ValueError(f"expected {self.expected}, got {value!r}")
        return typed


@functools.cache
def field_types() -> dict[str, FieldType]:
    """Every TrainConfig field's :class:`FieldType`, in the dataclass's order."""
    hints = typing.get_type_hints(TrainConfig)
    out = {}
    for f in fields(TrainConfig):
        kind, optional = hints[f.name], False
        if typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None
            kind = next(k for k in typing.get_args(kind) if k is not type(None))
            optional = True
        out[f.name] = FieldType(
            f.name, kind, optional, f.metadata.get("choices"), f.metadata.get("min")
        )
    return out


def coerce_field(name: str, value: Any, *, source: str) -> Any:
    """``value`` typed for field ``name``, or an EpicInputError (exit 2) naming ``source``
    (the file or option it came from), the field and the type expected:
    ``--config x.yaml: lr: expected a number (float), got 'abc'``."""
    spec = field_types().get(name)
    if spec is None:
        raise EpicInputError(f"{source}: unknown field(s) {name}")
    try:
        return spec.parse(value)
    except ValueError as exc:
        raise EpicInputError(f"{source}: {name}: {exc}") from None


def coerce_values(values: Mapping[str, Any], *, source: str) -> dict[str, Any]:
    """Every value of ``values`` (field name -> value) typed by :func:`coerce_field`; unknown
    names are refused, all in one message."""
    unknown = sorted(set(values) - set(field_types()))
    if unknown:
        raise EpicInputError(f"{source}: unknown field(s) {', '.join(unknown)}")
    return {name: coerce_field(name, value, source=source) for name, value in values.items()}


def load_yaml_defaults(path: str | Path) -> dict[str, Any]:
    """Read a YAML file of config defaults (field names with ``-`` or ``_``), typed."""
    source = f"--config {path}"
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise EpicInputError(f"{source}: cannot read it ({exc})") from None
    if not isinstance(data, dict):
        raise EpicInputError(f"{source}: expected a mapping of option: value")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    paths = [k for k in PATH_FIELDS if k in data]
    if paths:
        options = ", ".join("--" + k.replace("_", "-") for k in paths)
        raise EpicInputError(
            f"{source}: {', '.join(paths)} cannot be set here; give {options} on the command line"
        )
    return coerce_values(data, source=source)


def _dump_yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False)
