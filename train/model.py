"""The action models: a torchvision ResNet per frame (ResNet-18 or -50), optionally with
the temporal shift of TSM, averaged over the clip, dropout, verb and noun heads.

Three recipes build on it (train.recipes): the seed's ResNet-18 with average pooling,
and C1's TSN and TSM ResNet-50s. The temporal shift is ``ops/temporal_shift.py`` of
github mit-han-lab/temporal-shift-module (the "blockres" place, ``n_div`` 8): it wraps
``conv1`` of every residual block, so that parameter names read
``backbone.layerN.i.conv1.net.weight`` like the authors' ``base_model.layerN.i.conv1.net``.

The flow stream is the same network with ``in_channels`` inputs to its first convolution
(``2 * flow_stack``: u1 v1 u2 v2 ... of a snippet, C1's ``_intersperse`` order), as TSN
and C1 (src/models/tsn.py ``_construct_flow_model``) build it; the parameter names do not
change, so RGB and flow checkpoints differ only in the shape of ``backbone.conv1.weight``.

Weights (``imagenet``, ``kinetics``, ``none`` or a file) are loaded by train.weights, which
also initialises a flow model's first convolution from the RGB one (cross-modality).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
import torchvision
from torch import nn

from epicdata.constants import NUM_NOUN_CLASSES, NUM_VERB_CLASSES
from epicdata.errors import EnvironmentProblem, EpicInputError
from train.config import ARCHS, TEMPORALS

log = logging.getLogger(__name__)

#: TSM's ``n_div``: 1/8 of the channels move forward in time, 1/8 backward (C1 shift_div).
SHIFT_DIV = 8


def temporal_shift(x: torch.Tensor, n_segment: int, fold_div: int = SHIFT_DIV) -> torch.Tensor:
    """(N*T, C, H, W) -> (N*T, C, H, W): TSM's shift, as ``TemporalShift.shift`` (not in
    place). Channels ``[0, C//fold_div)`` at time t take time t+1's values, the next
    ``C//fold_div`` take time t-1's, the rest stay; zeros where a clip ends."""
    nt, c, h, w = x.shape
    x = x.view(nt // n_segment, n_segment, c, h, w)  # (N, T, C, H, W)
    fold = c // fold_div
    out = torch.zeros_like(x)
    out[:, :-1, :fold] = x[:, 1:, :fold]  # from the future
    out[:, 1:, fold : 2 * fold] = x[:, :-1, fold : 2 * fold]  # from the past
    out[:, :, 2 * fold :] = x[:, :, 2 * fold :]
    return out.view(nt, c, h, w)


class TemporalShift(nn.Module):
    """``net`` (a block's conv1) applied after :func:`temporal_shift` over ``n_segment``
    frames; ``net`` keeps its name so that checkpoints read ``conv1.net.weight``."""

    def __init__(self, net: nn.Module, n_segment: int, fold_div: int = SHIFT_DIV) -> None:
        super().__init__()
        self.net = net
        self.n_segment = n_segment
        self.fold_div = fold_div

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(temporal_shift(x, self.n_segment, self.fold_div))


def add_temporal_shift(resnet: torchvision.models.ResNet, n_segment: int) -> None:
    """Wrap ``conv1`` of every block of layer1-4 in :class:`TemporalShift` ("blockres";
    ResNets of up to 50 layers shift in every block, as ``n_round`` 1 does)."""
    for stage in (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4):
        for block in stage:
            block.conv1 = TemporalShift(block.conv1, n_segment)


def replace_first_conv(resnet: torchvision.models.ResNet, in_channels: int) -> None:
    """Give ``resnet.conv1`` ``in_channels`` inputs, its kernel, stride, padding and (no)
    bias kept: the flow network of TSN, whose conv1 takes a stack of (u, v) pairs. The new
    weights are random; train.weights.cross_modality_conv1 initialises them from RGB ones."""
    old = resnet.conv1
    resnet.conv1 = nn.Conv2d(
        in_channels,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        bias=old.bias is not None,
    )


class ActionModel(nn.Module):
    """(B, T, C, H, W) normalised clips -> (verb logits (B, 97), noun logits (B, 300)).

    ``in_channels`` is C: 3 for RGB, ``2 * flow_stack`` for flow (10 for C1's stacks of 5
    (u, v) pairs); only the first convolution depends on it.

    ``temporal`` "tsm" fixes the clip length to ``num_frames`` (the shift mixes
    neighbouring frames of a clip of exactly T). ``partial_bn``: every BatchNorm but the
    first stays in eval mode with its weight and bias frozen, as TSN and C1 train
    (``TSN.train``): batches of a few clips would give noisy statistics."""

    def __init__(
        self,
        *,
        arch: str = "resnet18",
        temporal: str = "avg",
        num_frames: int = 8,
        partial_bn: bool = False,
        dropout: float = 0.3,
        num_verbs: int = NUM_VERB_CLASSES,
        num_nouns: int = NUM_NOUN_CLASSES,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise EpicInputError(f"--arch {arch}: unknown; one of {', '.join(ARCHS)}")
        if temporal not in TEMPORALS:
            raise EpicInputError(f"--temporal {temporal}: unknown; one of {', '.join(TEMPORALS)}")
        if in_channels < 1:
            raise EpicInputError(f"a model of {in_channels} input channels: must be >= 1")
        self.arch, self.temporal, self.num_frames = arch, temporal, num_frames
        self.in_channels = in_channels
        self.backbone = getattr(torchvision.models, arch)(weights=None)
        if in_channels != 3:
            replace_first_conv(self.backbone, in_channels)
        self.feature_dim = self.backbone.fc.in_features  # 512 (ResNet-18), 2048 (ResNet-50)
        self.backbone.fc = nn.Identity()
        if temporal == "tsm":
            add_temporal_shift(self.backbone, num_frames)
        self.dropout = nn.Dropout(dropout)
        self.verb_head = nn.Linear(self.feature_dim, num_verbs)
        self.noun_head = nn.Linear(self.feature_dim, num_nouns)
        bns = [m for m in self.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
        self.frozen_bns = bns[1:] if partial_bn else []
        for bn in self.frozen_bns:
            bn.weight.requires_grad_(False)
            bn.bias.requires_grad_(False)

    @property
    def partial_bn(self) -> bool:
        return bool(self.frozen_bns)

    def train(self, mode: bool = True) -> ActionModel:
        super().train(mode)
        for bn in self.frozen_bns:  # running statistics stay those it was loaded with
            bn.eval()
        return self

    def forward(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.features(clips))

    def features(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) clips -> (B, D) temporally averaged frame features (D 512/2048)."""
        if clips.dim() != 5 or clips.shape[2] != self.in_channels:
            raise EpicInputError(
                f"the model takes clips (B, T, {self.in_channels}, H, W); got {tuple(clips.shape)}",
                fix="feed the modality it was built for: 3 channels for --modality rgb, "
                "2 x --flow-stack for --modality flow",
            )
        b, t = clips.shape[:2]
        if self.temporal == "tsm" and t != self.num_frames:
            raise EpicInputError(
                f"the TSM model shifts over clips of {self.num_frames} frames; got {t}",
                fix=f"feed clips of {self.num_frames} frames (--num-frames {self.num_frames})",
            )
        features = self.backbone(clips.flatten(0, 1))  # (B*T, D)
        return features.view(b, t, -1).mean(1)  # (B, D)

    def heads(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) features -> (verb logits (B, 97), noun logits (B, 300))."""
        features = self.dropout(features)
        return self.verb_head(features), self.noun_head(features)


def build_model(
    *,
    arch: str,
    temporal: str,
    num_frames: int,
    partial_bn: bool,
    dropout: float,
    device: torch.device,
    channels_last: bool,
    in_channels: int = 3,
) -> ActionModel:
    """The model on ``device``, randomly initialised (train.weights loads weights);
    ``in_channels`` 3 (RGB) or ``2 * flow_stack`` (flow)."""
    model = ActionModel(
        arch=arch,
        temporal=temporal,
        num_frames=num_frames,
        partial_bn=partial_bn,
        dropout=dropout,
        in_channels=in_channels,
    ).to(device)
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
