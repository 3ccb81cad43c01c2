"""Initial weights of epic-train (``--weights none|imagenet|kinetics|PATH``), offline.

Compute nodes have no internet: ``imagenet`` (torchvision's V1 weights of the model's
arch, as C1 starts from) and ``kinetics`` (the TSM authors' Kinetics-400 RGB ResNet-50
TSM, as C1's TSM starts from) read the files torch caches under ``$TORCH_HOME``
(``torch.hub.get_dir()/checkpoints``). A missing one is an error naming the file and the
command that fetches it on a login node: nothing is downloaded here, and there is no
fallback to another initialisation.

A PATH is recognised by what it holds, never by its suffix:

==============  ==============================================  =========================
layout          what it holds                                   what is loaded
==============  ==============================================  =========================
epic-train      ``format_version`` + ``model``                  the whole model, strictly
torchvision     ``conv1.weight``, ``layer1.0.conv1.weight``..   the backbone (``fc`` not)
tsm             ``state_dict``: ``module.base_model.*``         the backbone (the Kinetics
                (TSM authors' main.py)                          ``new_fc`` not)
c1              ``state_dict``: ``model.base_model.*``,         the backbone, and
                ``model.new_fc`` of 97 + 300 outputs            ``new_fc`` split into the
                (C1 model zoo, PyTorch Lightning)               verb and noun heads
==============  ==============================================  =========================

Keys are mapped by name. The backbone must match the model exactly (every key, every
shape, a temporal shift on both sides or neither); heads a file lacks are newly
initialised, and said so. Then the input the weights were trained on is checked against
what the run feeds (train.input_spec.check_input): a C1 file was trained with the
ImageNet mean as std too, a TSM file on clips of T frames.

Flow models (``ActionModel.in_channels`` = 2 x the flow stack, 10 for C1's 5 pairs): RGB
ImageNet weights (``imagenet`` or a torchvision file) initialise them by TSN's
cross-modality rule (:func:`cross_modality_conv1`); ``kinetics`` reads the TSM authors'
Kinetics *flow* file, whose conv1 already takes 10 channels; an epic-train, TSM or C1 file
must have the model's channel count (an RGB checkpoint is refused for a flow model, and
the other way round), since its conv1 was trained on that input.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision

from epicdata.errors import EpicInputError
from train import safe_pickle
from train.input_spec import (
    FLOW_NORM,
    NORMS,
    STRICT_FIELDS,
    InputSpec,
    check_input,
    differences,
    flow_channels,
    norm_name,
)
from train.model import ActionModel

log = logging.getLogger(__name__)

#: torchvision's V1 ImageNet weights (``IMAGENET1K_V1``): the ResNet-50 ones are those C1
#: initialised from (V2 was trained with another recipe and would not reproduce it).
_IMAGENET_V1 = {
    "resnet18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
    "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
}
#: arch -> the login-node command that puts its V1 weights in torch's cache ($TORCH_HOME).
FETCH_COMMANDS: dict[str, str] = {
    arch: f"python -c \"import torchvision; torchvision.models.{arch}(weights='IMAGENET1K_V1')\""
    for arch in _IMAGENET_V1
}
#: The file C1's TSM starts from (src/models/tsm.py, ``pretrained: kinetics``, RGB).
KINETICS_TSM_URL = (
    "https://hanlab.mit.edu/projects/tsm/models/"
    "TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e50.pth"
)
#: The file C1's TSM flow starts from (src/models/tsm.py, modality flow; the TSM authors'
#: README, "Optical Flow", links the same name on hanlab18.mit.edu): a TSM ResNet-50 whose
#: conv1 takes 5 (u, v) pairs, trained on Kinetics flow.
KINETICS_TSM_FLOW_URL = (
    "https://hanlab.mit.edu/projects/tsm/models/"
    "TSM_kinetics_Flow_resnet50_shift8_blockres_avg_segment8_e50.pth"
)
#: The input channels of the Kinetics flow file's conv1 (``2 * new_length``, new_length 5).
KINETICS_FLOW_CHANNELS = 10


def _fetch_command(url: str) -> str:
    """The login-node command that downloads ``url`` into torch's cache folder (it reads
    $TORCH_HOME there, so one command fits every cluster)."""
    return (
        "python -c \"import os, torch; d = os.path.join(torch.hub.get_dir(), 'checkpoints'); "
        "os.makedirs(d, exist_ok=True); torch.hub.download_url_to_file("
        f"'{url}', os.path.join(d, '{os.path.basename(url)}'))\""
    )


FETCH_KINETICS_COMMAND = _fetch_command(KINETICS_TSM_URL)
FETCH_KINETICS_FLOW_COMMAND = _fetch_command(KINETICS_TSM_FLOW_URL)
#: C1's ``new_fc``: one Linear of 97 verb then 300 noun outputs (src/systems.py
#: TASK_CLASS_COUNTS = [("verb", 97), ("noun", 300)]).
C1_HEAD = "new_fc"


@dataclass(frozen=True)
class WeightsReport:
    """What :func:`load_weights` did. ``source``: the file read ("none" for none);
    ``layout``: none, torchvision, epic-train, tsm or c1; ``loaded``: tensors copied into
    the model; ``skipped``: keys of the file not used; ``missing``: keys of the model the
    file lacks (newly initialised); ``spec``: the input the weights were trained on."""

    source: str
    layout: str
    loaded: int
    skipped: list[str]
    missing: list[str]
    spec: InputSpec | None


def imagenet_weights_path(arch: str) -> Path:
    """Where torchvision caches ``arch``'s V1 ImageNet weights (under ``$TORCH_HOME``)."""
    if arch not in _IMAGENET_V1:
        raise EpicInputError(
            f"--arch {arch}: no ImageNet weights known; one of {list(_IMAGENET_V1)}"
        )
    return _cache_dir() / os.path.basename(_IMAGENET_V1[arch].url)


def kinetics_weights_path(in_channels: int = 3) -> Path:
    """Where :data:`FETCH_KINETICS_COMMAND` puts the TSM authors' Kinetics RGB file, or
    (``in_channels`` other than 3) :data:`FETCH_KINETICS_FLOW_COMMAND` their flow file."""
    url = KINETICS_TSM_URL if in_channels == 3 else KINETICS_TSM_FLOW_URL
    return _cache_dir() / os.path.basename(url)


def _cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def load_weights(
    model: ActionModel, weights: str, *, fed: InputSpec, accept_mismatch: bool
) -> WeightsReport:
    """Initialise ``model`` from ``weights`` (none, imagenet, kinetics or a file), after
    checking that they fit it and that ``fed`` is the input they were trained on.

    Raises :class:`EpicInputError` (exit 2) for a missing or unreadable file, a layout it
    does not know, a backbone that does not match, or a refused input difference
    (``accept_mismatch``: a warning instead)."""
    if weights == "none":
        log.info("weights: none (random initialisation, as asked)")
        return WeightsReport("none", "none", 0, [], [], None)
    if weights == "imagenet":
        path = _cached(
            imagenet_weights_path(model.arch),
            f"--weights imagenet: torchvision's {model.arch} ImageNet (V1) weights",
            FETCH_COMMANDS.get(model.arch, ""),
        )
    elif weights == "kinetics":
        _require_kinetics_model(model)
        flow = model.in_channels != 3  # the file is chosen by the model's input
        path = _cached(
            kinetics_weights_path(model.in_channels),
            "--weights kinetics: the TSM authors' Kinetics-400 ResNet-50 TSM "
            + ("(flow)" if flow else "(RGB)"),
            FETCH_KINETICS_FLOW_COMMAND if flow else FETCH_KINETICS_COMMAND,
        )
    else:
        path = Path(weights)
        if not path.is_file():
            raise EpicInputError(
                f"--weights {weights}: no such file",
                fix="pass imagenet, kinetics, none or the path of a weights file",
            )
    layout, mapped, skipped, spec = read_weights(path, model)
    if _adapt_first_conv(model, mapped, layout=layout, path=path):
        # The ImageNet statistics say nothing of flow; TSN feeds these weights flow
        # normalised its own way, so the pixels' meaning is the run's (the rest is checked).
        spec = dataclasses.replace(
            spec, modality=fed.modality, channels=fed.channels, mean=fed.mean, std=fed.std
        )
    missing = check_fit(model, mapped, layout=layout, path=path)
    _check_spec(model, spec, fed, path=path, accept=accept_mismatch)
    model.load_state_dict(mapped, strict=False)
    report = WeightsReport(str(path), layout, len(mapped), skipped, missing, spec)
    _log_report(report)
    return report


def _cached(path: Path, what: str, command: str) -> Path:
    if path.is_file():
        return path
    torch_home = os.environ.get("TORCH_HOME", "unset: ~/.cache/torch")
    raise EpicInputError(
        f"{what} are not in torch's cache, and compute nodes cannot download them",
        where=path,
        fix=f"on a login node, with the same TORCH_HOME (now {torch_home}), run:\n"
        f"  {command}\nor pass --weights PATH to a local file",
    )


def _require_kinetics_model(model: ActionModel) -> None:
    if model.arch != "resnet50" or model.temporal != "tsm":
        recipe = "tsm-r50" if model.in_channels == 3 else "tsm-r50-flow"
        raise EpicInputError(
            f"--weights kinetics is a ResNet-50 with the temporal shift; this model is "
            f"{model.arch} with --temporal {model.temporal}",
            fix=f"use --recipe {recipe} (or --arch resnet50 --temporal tsm), or --weights imagenet",
        )
    if model.in_channels not in (3, KINETICS_FLOW_CHANNELS):
        raise EpicInputError(
            f"--weights kinetics: the TSM authors' Kinetics flow model takes stacks of "
            f"{KINETICS_FLOW_CHANNELS // 2} (u, v) pairs ({KINETICS_FLOW_CHANNELS} channels); "
            f"this model takes {model.in_channels} channels",
            fix=f"pass --flow-stack {KINETICS_FLOW_CHANNELS // 2}, or --weights imagenet",
        )


# ----------------------------------------------------------------------------- reading


def read_file(path: Path) -> Any:
    """The object in ``path``: ``torch.load(weights_only=True)`` first; a file it refuses
    for its globals (a Lightning checkpoint's config and callbacks) through the lenient
    restricted unpickler of train.safe_pickle, never through arbitrary unpickling."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass
    except Exception as exc:  # a truncated or foreign file: say which and why
        raise _unreadable(path, exc) from None
    try:
        return safe_pickle.load_file(path, lenient=True)
    except safe_pickle.RefusedGlobal as exc:
        raise EpicInputError(
            f"--weights {path}: its pickle names {exc.module}.{exc.name}, which a weights "
            "file has no reason to hold; it was refused before any of it ran",
            fix="pass a state dict (torch.save(model.state_dict(), PATH)) or a checkpoint "
            "of epic-train, torchvision, the TSM authors or the C1 model zoo",
        ) from None
    except Exception as exc:
        raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: Exception) -> EpicInputError:
    why = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return EpicInputError(
        f"--weights {path}: cannot read it ({why})",
        fix="pass a file saved with torch.save: a state dict or a checkpoint",
    )


def read_weights(
    path: Path, model: ActionModel, data: Any = None
) -> tuple[str, dict[str, torch.Tensor], list[str], InputSpec]:
    """(layout, the file's tensors under the model's key names, skipped keys, input spec).
    ``data``: the file's content when the caller has read it (:func:`read_file`)."""
    if data is None:
        data = read_file(path)
    if isinstance(data, dict) and "format_version" in data and "model" in data:
        from train.checkpoint import check_checkpoint, checkpoint_input_spec

        state = check_checkpoint(data, path)  # its digest, version and keys
        return "epic-train", dict(state["model"]), [], checkpoint_input_spec(state, path)
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        state = {re.sub(r"^module\.", "", str(k)): v for k, v in data["state_dict"].items()}
        if any(k.startswith("model.base_model.") for k in state):
            spec = _published_spec(state.get("model.base_model.conv1.weight"), "epic-c1", 8)
            mapped, skipped = _map_c1(state, model, path)
            return "c1", mapped, skipped, spec
        if any(k.startswith("base_model.") for k in state):
            mapped, skipped = _map_base_model(state, "base_model.")
            segments = re.search(r"segment(\d+)", path.name)
            clip_length = int(segments.group(1)) if segments else 8
            spec = _published_spec(state.get("base_model.conv1.weight"), "imagenet", clip_length)
            return "tsm", mapped, skipped, spec
    if isinstance(data, dict) and "conv1.weight" in data and "layer1.0.conv1.weight" in data:
        mapped, skipped = _map_torchvision(data, shift=model.temporal == "tsm")
        mean, std = NORMS["imagenet"]
        return "torchvision", mapped, skipped, InputSpec("rgb", "RGB", mean, std, 0, 224, 0, "")
    raise EpicInputError(
        f"--weights {path}: not a layout it reads ({_describe(data)})",
        fix="pass an epic-train checkpoint, a torchvision ResNet state dict, a TSM authors' "
        "or a C1 model-zoo checkpoint",
    )


def _published_spec(conv1: Any, rgb_norm: str, clip_length: int) -> InputSpec:
    """The input a TSM or C1 file was trained on, told by its conv1: 3 channels are RGB
    normalised with ``NORMS[rgb_norm]`` (C1's RGB models: the ImageNet mean as std too);
    more are flow stacks of (u, v) pairs, which both normalise with :data:`FLOW_NORM` (the
    TSM authors' ops/models.py: mean [0.5], std the mean of ImageNet's; C1's flow YAMLs)."""
    channels = conv1.shape[1] if isinstance(conv1, torch.Tensor) and conv1.dim() == 4 else 3
    if channels == 3:
        mean, std = NORMS[rgb_norm]
        return InputSpec("rgb", "RGB", mean, std, 0, 224, clip_length, "tsn")
    mean, std = FLOW_NORM
    return InputSpec("flow", flow_channels(channels // 2), mean, std, 0, 224, clip_length, "tsn")


def _describe(data: Any) -> str:
    if not isinstance(data, dict):
        return f"a {type(data).__name__}"
    keys = [str(k) for k in list(data)[:4]]
    inner = data.get("state_dict")
    if isinstance(inner, dict):
        keys.append(f"state_dict: {[str(k) for k in list(inner)[:3]]}")
    return f"a dict of {len(data)} keys: {', '.join(keys)}"


def _map_torchvision(state: dict[str, Any], *, shift: bool) -> tuple[dict, list[str]]:
    """A torchvision ResNet's keys -> ``backbone.*``; into a TSM model each block's
    ``conv1`` goes to ``conv1.net``, as TSM wraps an ImageNet ResNet. ``fc`` skipped."""
    mapped, skipped = {}, []
    for key, value in state.items():
        key = str(key)
        if key.startswith("fc."):
            skipped.append(key)
            continue
        if shift:
            key = re.sub(r"^(layer\d+\.\d+\.conv1)\.", r"\1.net.", key)
        mapped["backbone." + key] = value
    return mapped, skipped


def _map_base_model(state: dict[str, Any], prefix: str) -> tuple[dict, list[str]]:
    """TSN/TSM's ``base_model.*`` -> ``backbone.*``; its ``fc`` (a Linear of the source's
    classes where dropout was 0) and everything outside ``base_model`` skipped."""
    mapped, skipped = {}, []
    for key, value in state.items():
        inner = key[len(prefix) :] if key.startswith(prefix) else None
        if inner is None or inner.startswith("fc."):
            skipped.append(key)
        else:
            mapped["backbone." + inner] = value
    return mapped, skipped


def _map_c1(state: dict[str, Any], model: ActionModel, path: Path) -> tuple[dict, list[str]]:
    """C1's ``model.base_model.*`` -> ``backbone.*``; ``model.new_fc`` (97 + 300 rows) ->
    ``verb_head`` (rows 0..96) and ``noun_head`` (rows 97..396)."""
    names = [f"model.{C1_HEAD}.{p}" for p in ("weight", "bias")]
    head = {name.rpartition(".")[2]: state.pop(name) for name in names if name in state}
    mapped, skipped = _map_base_model(state, "model.base_model.")
    verbs, nouns = model.verb_head.out_features, model.noun_head.out_features
    for param, value in head.items():
        rows = value.shape[0] if isinstance(value, torch.Tensor) and value.dim() else None
        if rows != verbs + nouns:
            raise EpicInputError(
                f"--weights {path}: its model.{C1_HEAD}.{param} has {rows} outputs, not "
                f"{verbs} verbs + {nouns} nouns (a TRN checkpoint, classifying in its "
                "consensus?)",
                fix="pass C1's TSN or TSM checkpoint",
            )
        mapped[f"verb_head.{param}"] = value[:verbs]
        mapped[f"noun_head.{param}"] = value[verbs:]
    return mapped, skipped


# ----------------------------------------------------------------------------- checks


def check_fit(model: ActionModel, mapped: dict[str, Any], *, layout: str, path: Path) -> list[str]:
    """Refuse ``mapped`` unless its backbone is the model's: a temporal shift on both sides
    or neither (a torchvision file is mapped into either), every backbone key present with
    the model's shape, no key the model lacks; an epic-train file must hold every key.
    Returns the model's keys left to their initialisation (the heads, for most files)."""
    shifted = next((k for k in mapped if ".conv1.net." in k), None)
    if layout != "torchvision" and (shifted is not None) != (model.temporal == "tsm"):
        if shifted is not None:
            what, fix = f"has a temporal shift ({shifted})", "pass --temporal tsm"
        else:
            what, fix = "has no temporal shift", "pass --temporal avg"
        raise EpicInputError(
            f"--weights {path}: the file {what}; the model has --temporal {model.temporal}",
            fix=fix,
        )
    own = model.state_dict()
    for key, tensor in own.items():
        if key in mapped:
            theirs = mapped[key]
            if not isinstance(theirs, torch.Tensor):
                raise EpicInputError(
                    f"--weights {path}: {key} is a {type(theirs).__name__}, not a tensor"
                )
            if tuple(theirs.shape) != tuple(tensor.shape):
                raise _mismatch(
                    path, model, f"{key}: file {tuple(theirs.shape)}, model {tuple(tensor.shape)}"
                )
        elif layout == "epic-train" or (
            key.startswith("backbone.") and not key.endswith("num_batches_tracked")
        ):
            raise _mismatch(path, model, f"{key} of the model is missing from the file")
    extra = [k for k in mapped if k not in own]
    if extra:
        raise _mismatch(path, model, f"{extra[0]} of the file is not in the model")
    return [k for k in own if k not in mapped]


def cross_modality_conv1(rgb_weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """(O, 3, kh, kw) RGB kernels -> (O, in_channels, kh, kw): TSN's cross-modality
    initialisation of a flow network's first convolution, as the TSM authors' ops/models.py
    ``_construct_flow_model`` (commit 1f6a834b) and C1's src/models/tsn.py and tsm.py write
    it: ``params[0].data.mean(dim=1, keepdim=True).expand(new_kernel_size).contiguous()``,
    the kernels averaged over the colour channels and repeated for every input, not
    rescaled."""
    out, _, kh, kw = rgb_weight.shape
    return rgb_weight.mean(dim=1, keepdim=True).expand(out, in_channels, kh, kw).contiguous()


def _adapt_first_conv(
    model: ActionModel, mapped: dict[str, Any], *, layout: str, path: Path
) -> bool:
    """Give ``mapped``'s conv1 the model's input channels where the cross-modality rule
    allows it (RGB ImageNet weights, 3 channels, into a model of C != 3; True then), and
    refuse any other difference of channel count, naming both. A file without a conv1
    tensor is left to :func:`check_fit`, which names what is missing."""
    key = "backbone.conv1.weight"
    theirs = mapped.get(key)
    if not isinstance(theirs, torch.Tensor) or theirs.dim() != 4:
        return False
    have, want = int(theirs.shape[1]), model.in_channels
    if have == want:
        return False
    if layout == "torchvision" and have == 3:
        mapped[key] = cross_modality_conv1(theirs, want)
        log.info(
            "--weights %s: cross-modality init of conv1 (3 -> %d channels): the RGB kernels "
            "averaged over their colour channels, repeated for each input (TSN)",
            path,
            want,
        )
        return True
    cross = " (--weights imagenet initialises a flow model from RGB)" if want != 3 else ""
    raise EpicInputError(
        f"--weights {path}: its conv1 takes {have} input channels ({_input_of(have)}); the "
        f"model takes {want} ({_input_of(want)})",
        fix=f"train with {_options_for(have)} to use this file, or pass weights of {want} "
        f"channels{cross}",
    )


def _input_of(channels: int) -> str:
    if channels == 3:
        return "RGB"
    if channels % 2 == 0:
        return f"flow stacks of {channels // 2} (u, v) pairs"
    return "neither RGB nor flow"


def _options_for(channels: int) -> str:
    if channels == 3:
        return "--modality rgb"
    return f"--modality flow --flow-stack {channels // 2}"


def _mismatch(path: Path, model: ActionModel, detail: str) -> EpicInputError:
    return EpicInputError(
        f"--weights {path}: does not match the {model.arch} --temporal {model.temporal} model "
        f"({detail})",
        fix="pass weights of the same --arch and --temporal, or choose those of the file",
    )


def _check_spec(
    model: ActionModel, spec: InputSpec, fed: InputSpec, *, path: Path, accept: bool
) -> None:
    """Refuse input the weights were not trained on (pixels' meaning; a TSM model's clip
    length); other differences (crop, frame size, sampler: fine-tuning may change them)
    are logged."""
    names = STRICT_FIELDS + (("clip_length",) if model.temporal == "tsm" else ())
    fixes = []
    for name, recorded, _ in differences(spec, fed, names):
        norm = norm_name(spec.mean, spec.std)
        if name in ("mean", "std") and norm:
            fixes.append(f"--norm {norm}")
        elif name == "clip_length":
            fixes.append(f"--num-frames {recorded}")
        else:
            fixes.append(f"{name} {recorded!r}")
    fix = "feed what they were trained on: " + ", ".join(dict.fromkeys(fixes))
    check_input(spec, fed, names=names, source=f"--weights {path}", accept=accept, fix=fix)
    soft = tuple(n for n in ("frame_size", "crop_size", "clip_length", "sampler") if n not in names)
    for name, recorded, this_run in differences(spec, fed, soft):
        log.info(
            "--weights %s: trained with %s %r, this run %r (fine-tuning may change it)",
            path,
            name,
            recorded,
            this_run,
        )


def _log_report(report: WeightsReport) -> None:
    heads = [k for k in report.missing if not k.startswith("backbone.")]
    shown = ", ".join(report.skipped[:6]) + (" ..." if len(report.skipped) > 6 else "")
    log.info(
        "weights: %s layout from %s: %d tensors loaded; %d keys skipped%s; %d missing%s",
        report.layout,
        report.source,
        report.loaded,
        len(report.skipped),
        f" ({shown})" if shown else "",
        len(report.missing),
        " (heads newly initialised)" if heads else "",
    )


# ----------------------------------------------------------------------------- scoring


def is_published_checkpoint(data: Any) -> bool:
    """Whether :func:`read_file`'s ``data`` is a training framework's checkpoint (a dict
    holding a ``state_dict``: Lightning's, the TSM authors'), not epic-train's."""
    return isinstance(data, dict) and isinstance(data.get("state_dict"), dict)


def model_for_file(path: Path, data: Any) -> tuple[ActionModel, InputSpec, str]:
    """A whole model (heads included) from a published checkpoint that is not epic-train's
    (a C1 model-zoo file), for ``epic-validate``: (model, the input it was trained on,
    layout). The architecture is read from the keys: Bottleneck blocks (``conv3``) are a
    ResNet-50, ``.conv1.net.`` a temporal shift; the clip length from the layout's spec.
    A file without verb and noun heads (an initialisation such as the Kinetics TSM) is
    refused: train from it with ``--weights``."""
    state = data.get("state_dict") if isinstance(data, dict) else None
    keys = [str(k) for k in state] if isinstance(state, dict) else []
    arch = "resnet50" if any(".layer1.0.conv3." in k for k in keys) else "resnet18"
    temporal = "tsm" if any(".conv1.net." in k for k in keys) else "avg"
    conv1 = next((state[k] for k in keys if k.endswith("base_model.conv1.weight")), None)
    channels = int(conv1.shape[1]) if isinstance(conv1, torch.Tensor) and conv1.dim() == 4 else 3
    options = {"arch": arch, "temporal": temporal, "in_channels": channels}
    # The layout's spec gives the clip length a TSM model is built for; the file is read once.
    _, _, _, spec = read_weights(path, ActionModel(**options), data)
    model = ActionModel(**options, num_frames=spec.clip_length or 8)
    layout, mapped, _, spec = read_weights(path, model, data)
    missing = check_fit(model, mapped, layout=layout, path=path)
    if missing:
        raise EpicInputError(
            f"--checkpoint {path}: a {layout} file without verb and noun heads ({missing[0]} "
            "is missing): it initialises a model, it does not score one",
            fix="train from it with epic-train --weights, then score the run's best.pt",
        )
    model.load_state_dict(mapped, strict=True)
    log.info(
        "%s: a %s checkpoint, scored as %s --temporal %s (%s input)",
        path,
        layout,
        arch,
        temporal,
        _input_of(channels),
    )
    return model, spec, layout
