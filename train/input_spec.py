"""The input spec: what a model was trained to see, recorded with its weights.

The most reported reason for not reproducing EPIC numbers is preprocessing: the C1
checkpoints were trained with the ImageNet mean in the std field as well, models are fed
BGR instead of RGB, a config differs. Every checkpoint of this release records one
:class:`InputSpec`; ``epic-train --weights`` and ``epic-validate`` compare it with what
the run will feed and refuse a difference (``--accept-input-mismatch`` feeds anyway, with
a warning naming both values). The flow stream extends this spec (modality, channels);
it does not add a second one.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from epicdata.constants import IMAGENET_MEAN, IMAGENET_STD
from epicdata.errors import EpicInputError

log = logging.getLogger(__name__)

#: ``--norm``: the statistics clips are normalised with, (mean, std) for RGB in [0, 1].
#: ``epic-c1`` is what the C1 model-zoo checkpoints were trained with: the ImageNet mean
#: in the std field too (C1 README, 2021/02/20; configs/*_rgb.yaml), kept there because
#: retraining with the right std scored lower.
NORMS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "epic-c1": (IMAGENET_MEAN, IMAGENET_MEAN),
}


@dataclass(frozen=True)
class InputSpec:
    """What a model sees. ``frame_size`` is the short side of the stored frames clips are
    cut from (0: not known, e.g. a torchvision or C1 file); ``clip_length`` 0: any (an
    ImageNet backbone)."""

    modality: str  # "rgb"
    channels: str  # the first convolution's input channels, in order: "RGB"
    mean: tuple[float, ...]
    std: tuple[float, ...]
    frame_size: int
    crop_size: int
    clip_length: int
    sampler: str  # linspace, tsn, or "" (not known)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, not tuples) for ``weights_only`` checkpoints."""
        data = dataclasses.asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        if set(data) != names:
            raise EpicInputError(
                f"input spec with fields {sorted(data)}, expected {sorted(names)}",
                fix="use the release of epic-train that wrote the checkpoint",
            )
        return cls(**{**data, "mean": tuple(data["mean"]), "std": tuple(data["std"])})

    def describe(self) -> str:
        return (
            f"{self.modality} {self.channels}, mean {_floats(self.mean)} std {_floats(self.std)}, "
            f"{self.crop_size} px crops of {self.frame_size or '?'} px frames, "
            f"{self.clip_length or 'any'} frames ({self.sampler or '?'} sampling)"
        )


#: Flow input (C1 configs/ts?_flow.yaml): grey levels scaled to [0, 1], then mean 0.5 and
#: std 0.226 ("Mean of imagenet std") on every channel.
FLOW_NORM: tuple[tuple[float, ...], tuple[float, ...]] = ((0.5,), (0.226,))


def flow_channels(stack: int) -> str:
    """The channel order of a flow clip's snippet: u1 v1 u2 v2 ... (C1's ``_intersperse``)."""
    return "uv" * stack


def run_input_spec(
    *,
    norm: str,
    frame_size: int,
    crop_size: int,
    clip_length: int,
    sampler: str,
    modality: str = "rgb",
    flow_stack: int = 5,
) -> InputSpec:
    """What a run of this release feeds: RGB in [0, 1] normalised with ``NORMS[norm]``, or
    ``flow_stack`` (u, v) pairs per snippet normalised with :data:`FLOW_NORM` (``norm``
    applies to RGB only)."""
    if modality == "flow":
        mean, std = FLOW_NORM
        channels = flow_channels(flow_stack)
    else:
        (mean, std), channels = NORMS[norm], "RGB"
    return InputSpec(modality, channels, mean, std, frame_size, crop_size, clip_length, sampler)


def check_store_modality(store_modality: str, modality: str, *, store: object, source: str) -> None:
    """Refuse (exit 2) reading a store of another modality than the model's: a flow store
    holds u and v grayscale pairs, an RGB one colour frames; no option feeds one as the
    other."""
    if store_modality == modality:
        return
    option = "--modality flow" if store_modality == "flow" else "--modality rgb (the default)"
    raise EpicInputError(
        f"{source} is for {modality} input, but {store} is a{'n' * (store_modality == 'rgb')} "
        f"{store_modality.upper()} store",
        where=store,
        fix=f"give the {modality} store (epic-extract plan "
        f"{'--flow' if modality == 'flow' else '--frames/--videos'}), or train with {option}",
    )


def _floats(values: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


#: Fields whose difference changes what every pixel means: refused unless accepted.
STRICT_FIELDS = ("modality", "channels", "mean", "std")


def norm_name(mean: tuple[float, ...], std: tuple[float, ...]) -> str | None:
    """The ``--norm`` whose statistics these are, or None."""
    for name, (m, s) in NORMS.items():
        if _close(m, mean) and _close(s, std):
            return name
    return None


def _close(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return len(a) == len(b) and all(abs(x - y) < 1e-6 for x, y in zip(a, b, strict=True))


def _equal(name: str, a: Any, b: Any) -> bool:
    if name in ("mean", "std"):
        return _close(tuple(a), tuple(b))
    return a == b


def differences(
    recorded: InputSpec, fed: InputSpec, names: tuple[str, ...]
) -> list[tuple[str, Any, Any]]:
    """(field, recorded value, fed value) for each of ``names`` that differs; a 0 or ""
    (not known) on either side is no difference."""
    out = []
    for name in names:
        a, b = getattr(recorded, name), getattr(fed, name)
        if a in (0, "") or b in (0, ""):
            continue
        if not _equal(name, a, b):
            out.append((name, a, b))
    return out


def check_input(
    recorded: InputSpec,
    fed: InputSpec,
    *,
    names: tuple[str, ...],
    source: str,
    accept: bool,
    fix: str,
) -> None:
    """Refuse (exit 2) feeding ``fed`` to weights trained on ``recorded`` where a field of
    ``names`` differs, naming both values; with ``accept``, warn and go on."""
    found = differences(recorded, fed, names)
    if not found:
        return
    lines = "\n".join(f"  {name}: recorded {_show(a)}, this run {_show(b)}" for name, a, b in found)
    if accept:
        log.warning(
            "%s: input differs from what it was trained on (--accept-input-mismatch):\n%s",
            source,
            lines,
        )
        return
    raise EpicInputError(
        "the input this run would feed differs from what the weights were trained on",
        where=source,
        fix=fix + "; or pass --accept-input-mismatch to feed it anyway",
        details=lines,
    )


def _show(value: Any) -> str:
    return _floats(tuple(value)) if isinstance(value, (tuple, list)) else repr(value)
