"""The seed's model: ImageNet ResNet-18 per frame, temporal average pooling, dropout, verb
and noun heads; and its weights (``imagenet`` from the torchvision cache, ``none``, or a file).

Compute nodes have no internet, so ``imagenet`` never downloads: it reads the file
torchvision caches under ``$TORCH_HOME`` and, when it is missing, fails with the command
that fetches it on a login node.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import torch
import torchvision
from torch import nn

from epicdata.constants import NUM_NOUN_CLASSES, NUM_VERB_CLASSES
from epicdata.errors import EnvironmentProblem, EpicInputError

log = logging.getLogger(__name__)

FETCH_IMAGENET_COMMAND = (
    "python -c \"import torchvision; torchvision.models.resnet18(weights='IMAGENET1K_V1')\""
)


class ActionModel(nn.Module):
    """(B, T, C, H, W) normalised clips -> (verb logits (B, 97), noun logits (B, 300))."""

    def __init__(
        self,
        *,
        num_verbs: int = NUM_VERB_CLASSES,
        num_nouns: int = NUM_NOUN_CLASSES,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        self.backbone = torchvision.models.resnet18(weights=None)
        feature_dim = self.backbone.fc.in_features
        self.backbone.fc = nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.verb_head = nn.Linear(feature_dim, num_verbs)
        self.noun_head = nn.Linear(feature_dim, num_nouns)

    def forward(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.features(clips))

    def features(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) clips -> (B, 512) temporally averaged frame features."""
        b, t = clips.shape[:2]
        features = self.backbone(clips.flatten(0, 1))  # (B*T, 512)
        return features.view(b, t, -1).mean(1)  # (B, 512)

    def heads(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 512) features -> (verb logits (B, 97), noun logits (B, 300))."""
        features = self.dropout(features)
        return self.verb_head(features), self.noun_head(features)


def imagenet_weights_path() -> Path:
    """Where torchvision caches the ResNet-18 ImageNet weights (under ``$TORCH_HOME``)."""
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def load_backbone_weights(model: ActionModel, weights: str) -> None:
    """``weights``: ``imagenet`` (torchvision cache), ``none`` (random init, said aloud), or a
    file holding a torchvision ResNet-18 state dict or a checkpoint of this trainer."""
    if weights == "none":
        log.info("weights: none (random initialisation, as asked)")
        return
    if weights == "imagenet":
        path = imagenet_weights_path()
        if not path.is_file():
            raise EpicInputError(
                f"--weights imagenet: {path} is missing and compute nodes cannot download it. "
                f"On a login node, with the same TORCH_HOME "
                f"(now {os.environ.get('TORCH_HOME', 'unset: ~/.cache/torch')}), run:\n"
                f"  {FETCH_IMAGENET_COMMAND}\n"
                f"or pass --weights PATH to a ResNet-18 state dict."
            )
    else:
        path = Path(weights)
        if not path.is_file():
            raise EpicInputError(
                f"--weights {weights}: no such file (expected imagenet, none or a file)"
            )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or foreign file: say which and why
        raise EpicInputError(f"--weights {path}: cannot load it ({exc})") from None
    if isinstance(state, dict) and "model" in state and "format_version" in state:
        _load_strict(model, state["model"], path)
        log.info("weights: whole model from checkpoint %s", path)
        return
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    _load_strict(model.backbone, backbone, path)
    log.info("weights: ResNet-18 backbone from %s", path)


def _load_strict(module: nn.Module, state: dict, path: Path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise EpicInputError(
            f"--weights {path}: does not match the ResNet-18 model ({first}); "
            "pass a torchvision resnet18 state dict or a checkpoint of epic-train"
        ) from None


def build_model(
    *, weights: str | None, dropout: float, device: torch.device, channels_last: bool
) -> ActionModel:
    """``weights`` None: a checkpoint is about to replace them (resume): nothing is loaded."""
    model = ActionModel(dropout=dropout)
    if weights is not None:
        load_backbone_weights(model, weights)
    model = model.to(device)
    if channels_last:
        # cuDNN's fastest convolutions on tensor cores want NHWC.
        model = model.to(memory_format=torch.channels_last)
    return model


def _cannot_compile(reason: str) -> EnvironmentProblem:
    return EnvironmentProblem(
        f"--compile: torch.compile cannot compile the model here: {reason}",
        where=f"torch {torch.__version__}",
        fix="train without --compile (the same model and checkpoints, uncompiled)",
    )


def compile_model(model: nn.Module) -> nn.Module:
    """``torch.compile(model)`` for training. Checkpoints are unaffected: they hold the state
    of the bare model (train.checkpoint.unwrap_model strips ``_orig_mod``). Compiling
    happens at the first step; :func:`compile_failures_named` words a failure there."""
    if not hasattr(torch, "compile"):
        raise _cannot_compile("this torch has no torch.compile")
    try:
        return torch.compile(model)
    except RuntimeError as exc:  # e.g. torch 2.1 on Python 3.12: Dynamo is not supported
        raise _cannot_compile(str(exc).strip().splitlines()[0]) from None


@contextlib.contextmanager
def compile_failures_named(compiled: bool) -> Iterator[None]:
    """Around the steps of a compiled model: a compiler failure (a missing C++ compiler or
    Triton, an unsupported operation) becomes an :class:`EnvironmentProblem` naming
    ``--compile`` instead of a long Dynamo traceback."""
    if not compiled:
        yield
        return
    from torch._dynamo.exc import TorchDynamoException  # imported only with --compile

    try:
        yield
    except TorchDynamoException as exc:
        lines = str(exc).strip().splitlines()
        raise _cannot_compile(lines[0] if lines else type(exc).__name__) from None
