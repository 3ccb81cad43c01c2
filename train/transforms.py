"""Clip transforms. Every random parameter is drawn once per clip and applied to all frames.

Split where it is cheapest: the DataLoader workers do the geometric part on uint8
(RandomResizedCrop(scale=(0.85, 1)) + horizontal flip, or the evaluation centre crop); the
device does the photometric part on the whole batch (ColorJitter(brightness=0.2,
contrast=0.2), ImageNet normalisation, RandomErasing(p=0.1, scale=(0.02, 0.1)) with value
0 in normalised space, as in the seed). Keeping ColorJitter out of the workers doubled
loader throughput (issue 4: about 75 -> 145 clips/s with 2 workers).

Flow clips (T snippets, channels u1 v1 u2 v2 ...) get the same crop and flip on every
channel of every snippet; a flip also turns u (horizontal motion) around, 255 - u, as TSN's
GroupRandomHorizontalFlip(is_flow=True) does with ``ImageOps.invert`` on the even
channels (C1 src/transforms.py lines 71-75); v is unchanged. No photometric
augmentation for flow (C1 has none): DeviceAugment ignores ``photometric`` there, with a
log line, since the RGB recipes turn it on by default.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torchvision.transforms.functional as TF

log = logging.getLogger(__name__)

CROP_SCALE = (0.85, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
BRIGHTNESS = 0.2
CONTRAST = 0.2
ERASE_P = 0.1
ERASE_SCALE = (0.02, 0.1)
ERASE_RATIO = (0.3, 3.3)
#: TSN's GroupMultiScaleCrop (C1 src/transforms.py): crop sides as fractions of the short
#: side, width and height at most one scale apart, at one of 13 fixed places.
MULTISCALE_SCALES = (1.0, 0.875, 0.75, 0.66)
#: The flow models' scales (C1 configs/tsn_flow.yaml and tsm_flow.yaml,
#: ``train_augmentation.multiscale_crop_scales: [1, 0.875, 0.75]``).
FLOW_MULTISCALE_SCALES = (1.0, 0.875, 0.75)
MULTISCALE_SCALES_OF = {"rgb": MULTISCALE_SCALES, "flow": FLOW_MULTISCALE_SCALES}
MULTISCALE_MAX_DISTORT = 1
#: Evaluation resizes the short side to crop_size * 256/224 first (256 -> 224 for the
#: seed, the identity for 256-px frames), so train and eval see objects at one scale.
EVAL_RESIZE_RATIO = 256 / 224


class CropFlip(NamedTuple):
    """One clip's geometric parameters, in input pixels. A tuple of ints (flip: 0/1 in a
    tensor), so that a loader worker can hand it to the main process in a batch
    (``--decoder nvjpeg`` crops there, on the GPU)."""

    top: int
    left: int
    height: int
    width: int
    flip: bool


def draw_crop_flip(height: int, width: int, rng: np.random.Generator) -> CropFlip:
    """torchvision's RandomResizedCrop.get_params (scale 0.85-1, ratio 3/4-4/3) + flip p=0.5."""
    area = height * width
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*CROP_SCALE)
        ratio = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return CropFlip(top, left, h, w, bool(rng.random() < 0.5))
    # Fallback as torchvision: the whole image clipped to the allowed ratio, centred.
    ratio = width / height
    if ratio < CROP_RATIO[0]:
        w, h = width, round(width / CROP_RATIO[0])
    elif ratio > CROP_RATIO[1]:
        h, w = height, round(height * CROP_RATIO[1])
    else:
        w, h = width, height
    return CropFlip((height - h) // 2, (width - w) // 2, h, w, bool(rng.random() < 0.5))


def multiscale_crop_sizes(
    height: int, width: int, size: int, scales: Sequence[float] = MULTISCALE_SCALES
) -> list[tuple[int, int]]:
    """The (crop width, crop height) pairs GroupMultiScaleCrop chooses among (a side within
    3 px of ``size`` snaps to it); ``scales``: fractions of the short side."""
    base = min(height, width)
    sides = [int(base * scale) for scale in scales]
    sides = [size if abs(side - size) < 3 else side for side in sides]
    return [
        (w, h)
        for i, h in enumerate(sides)
        for j, w in enumerate(sides)
        if abs(i - j) <= MULTISCALE_MAX_DISTORT
    ]


def multiscale_offsets(height: int, width: int, crop_w: int, crop_h: int) -> list[tuple[int, int]]:
    """The 13 (left, top) places of ``fill_fix_offset(more_fix_crop=True)``: corners,
    centre, edge centres and quarter points."""
    w, h = (width - crop_w) // 4, (height - crop_h) // 4
    quarters = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 4), (2, 0)]
    quarters += [(1, 1), (3, 1), (1, 3), (3, 3)]
    return [(i * w, j * h) for i, j in quarters]


def draw_multiscale_crop(
    height: int,
    width: int,
    size: int,
    rng: np.random.Generator,
    scales: Sequence[float] = MULTISCALE_SCALES,
) -> CropFlip:
    """GroupMultiScaleCrop + GroupRandomHorizontalFlip, drawn once per clip: a uniform
    crop size pair, a uniform fixed place, a flip with p=0.5."""
    pairs = multiscale_crop_sizes(height, width, size, scales)
    crop_w, crop_h = pairs[int(rng.integers(len(pairs)))]
    places = multiscale_offsets(height, width, crop_w, crop_h)
    left, top = places[int(rng.integers(len(places)))]
    return CropFlip(top, left, crop_h, crop_w, bool(rng.random() < 0.5))


def apply_crop_flip(frames: torch.Tensor, crop: CropFlip, size: int) -> torch.Tensor:
    """(N, C, H, W) uint8 -> (N, C, size, size) uint8, the same crop and flip on every frame,
    on any device (a CUDA tensor is resized in float and rounded back: decoder rounding)."""
    out = TF.resized_crop(
        frames, crop.top, crop.left, crop.height, crop.width, [size, size], antialias=True
    )
    return out.flip(-1) if crop.flip else out


def invert_u(flow: torch.Tensor) -> torch.Tensor:
    """(N, 2 * stack, H, W) uint8 flow, channels u1 v1 u2 v2 ... -> the same with every u
    turned around, 255 - u: a mirrored picture moves the other way horizontally (grey
    127.5 is no motion, so the map is the mirror image about it); v is unchanged."""
    out = flow.clone()
    out[:, 0::2] = 255 - flow[:, 0::2]
    return out


class TrainClipTransform:
    """Training transform: random resized crop (``crop`` "seed") or TSN's multi-scale crop
    ("multiscale"; its scales are the ``modality``'s, MULTISCALE_SCALES_OF), + flip, drawn
    once per clip. For ``modality="flow"`` a flip also inverts u (:func:`invert_u`).

    In two halves, so that both decoders crop alike: :meth:`draw` (the loader worker, from
    the clip's generator and the stored frame size) and :meth:`apply` (the worker on the
    CPU, or the main process on the GPU with ``--decoder nvjpeg``)."""

    def __init__(self, size: int, crop: str = "seed", modality: str = "rgb") -> None:
        if crop not in ("seed", "multiscale"):
            raise ValueError(f"unknown training crop {crop!r}")
        if modality not in MULTISCALE_SCALES_OF:
            raise ValueError(f"unknown modality {modality!r}")
        self.size = size
        self.crop = crop
        self.modality = modality

    def draw(self, height: int, width: int, rng: np.random.Generator) -> CropFlip:
        if self.crop == "multiscale":
            scales = MULTISCALE_SCALES_OF[self.modality]
            return draw_multiscale_crop(height, width, self.size, rng, scales)
        return draw_crop_flip(height, width, rng)

    def apply(self, frames: torch.Tensor, crop: CropFlip) -> torch.Tensor:
        out = apply_crop_flip(frames, crop, self.size)  # (N, C, size, size) uint8
        return invert_u(out) if crop.flip and self.modality == "flow" else out

    def __call__(self, frames: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        crop = self.draw(frames.shape[-2], frames.shape[-1], rng)
        return self.apply(frames, crop)  # (T, C, size, size) uint8


def uniform_crop_offset(height: int, width: int, size: int, spatial_idx: int) -> tuple[int, int]:
    """(top, left) of test crop ``spatial_idx`` (0, 1, 2) of a ``size`` square in a
    ``height`` x ``width`` frame, as SlowFast's ``uniform_crop``
    (github facebookresearch/SlowFast, slowfast/datasets/transform.py): left, centre,
    right along the long side (top, centre, bottom when the frame is taller than wide),
    centred on the short side; centres are ``ceil(margin / 2)``."""
    if spatial_idx not in (0, 1, 2):
        raise ValueError(f"spatial_idx must be 0, 1 or 2, got {spatial_idx}")
    top = math.ceil((height - size) / 2)
    left = math.ceil((width - size) / 2)
    if spatial_idx != 1 and height > width:
        top = 0 if spatial_idx == 0 else height - size
    elif spatial_idx != 1:
        left = 0 if spatial_idx == 0 else width - size
    return top, left


#: ``--views CxK``: the crop counts a test view may have (centre; or SlowFast's three).
VIEW_CROPS = (1, 3)


class EvalClipTransform:
    """Evaluation transform: short side to size*256/224, centre crop ``size``. It draws
    nothing: :meth:`draw` gives the whole frame, unflipped, and :meth:`apply` ignores it.
    The same for flow clips (every channel alike, nothing to invert: C1's test transform
    is GroupScale + GroupCenterCrop for both modalities).

    ``crops`` (multi-view testing; the ``view_crops`` attribute the dataset reads):
    :meth:`views` gives 1 crop (:meth:`apply`'s) or 3 (:func:`uniform_crop_offset`'s,
    from the same resized frames)."""

    def __init__(self, size: int, crops: int = 1) -> None:
        if crops not in VIEW_CROPS:
            raise ValueError(f"crops must be one of {VIEW_CROPS}, got {crops}")
        self.size = size
        self.view_crops = crops

    def draw(self, height: int, width: int, rng: np.random.Generator | None = None) -> CropFlip:
        return CropFlip(0, 0, height, width, False)

    def apply(self, frames: torch.Tensor, crop: CropFlip | None = None) -> torch.Tensor:
        short = round(self.size * EVAL_RESIZE_RATIO)
        if min(frames.shape[-2:]) != short:
            frames = TF.resize(frames, [short], antialias=True)
        return TF.center_crop(frames, [self.size, self.size])  # (N, C, size, size) uint8

    def __call__(
        self, frames: torch.Tensor, rng: np.random.Generator | None = None
    ) -> torch.Tensor:
        return self.apply(frames)  # (T, C, size, size) uint8

    def views(self, frames: torch.Tensor) -> torch.Tensor:
        """(T, C, H, W) uint8 -> (crops, T, C, size, size) uint8: the centre crop of
        :meth:`apply`, or the three crops along the long side of the resized frames."""
        if self.view_crops == 1:
            return self.apply(frames).unsqueeze(0)
        short = round(self.size * EVAL_RESIZE_RATIO)
        if min(frames.shape[-2:]) != short:
            frames = TF.resize(frames, [short], antialias=True)
        height, width = frames.shape[-2:]
        out = []
        for idx in range(self.view_crops):
            top, left = uniform_crop_offset(height, width, self.size, idx)
            out.append(frames[..., top : top + self.size, left : left + self.size])
        return torch.stack(out)  # (3, T, C, size, size) uint8


class DeviceAugment(torch.nn.Module):
    """Batched photometric part on the device: uint8 clips -> normalised float clips.

    Training: brightness then contrast jitter (factors in [0.8, 1.2], one pair per clip;
    contrast blends with each frame's grey mean, as ColorJitter does on a frame),
    normalisation, then RandomErasing of one rectangle per clip (same place in every
    frame) set to 0, the normalised mean. Evaluation: normalisation only.

    The random parameters of a batch come from ``generator`` (CPU, so a run draws the same
    on any device) as one (7, B) tensor, moved with one non-blocking copy from pinned
    memory: a step never waits for the GPU's queued work (one blocking copy per parameter
    did, 7 times a step). ``photometric`` False (the C1 recipes): normalisation only,
    in training too, and nothing is drawn.

    ``mean`` and ``std`` have one value per channel, or one value for every channel (flow:
    (0.5,) and (0.226,), C1 configs/ts?_flow.yaml). ``modality="flow"``: normalisation
    only; ``photometric`` is ignored, with a log line (colour jitter has no meaning for
    motion, and C1 trains flow without it).
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        photometric: bool = True,
        modality: str = "rgb",
    ) -> None:
        super().__init__()
        if modality == "flow" and photometric:
            log.info("flow clips get no photometric augmentation: --photometric is ignored")
            photometric = False
        self.photometric = photometric
        # (1, 1, C or 1, 1, 1): a single value broadcasts over every channel.
        self.register_buffer("mean", torch.tensor(mean).view(1, 1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 1, -1, 1, 1), persistent=False)

    def forward(
        self, clips: torch.Tensor, *, train: bool, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        x = clips.float().div_(255)  # (B, T, C, H, W) in [0, 1]
        train = train and self.photometric
        if train:
            draws = self.draw(len(x), x.device, generator)
            x = self._jitter(x, draws)
        x = (x - self.mean) / self.std
        if train:
            x = x * self._erase_keep_mask(x.shape, draws)
        return x  # (B, T, C, H, W) float32, normalised

    @staticmethod
    def draw(batch: int, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
        """(7, B) uniform [0, 1) draws on ``device``: brightness, contrast, erase or not,
        erase area, erase log-ratio, erase top, erase left."""
        draws = torch.rand(7, batch, generator=generator)
        if device.type == "cuda":
            draws = draws.pin_memory()
        return draws.to(device, non_blocking=True)

    def _jitter(self, x: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        shape = (len(x), 1, 1, 1, 1)
        brightness = (1 - BRIGHTNESS + 2 * BRIGHTNESS * draws[0]).view(shape)
        contrast = (1 - CONTRAST + 2 * CONTRAST * draws[1]).view(shape)
        x = (x * brightness).clamp_(0, 1)
        grey = TF.rgb_to_grayscale(x.flatten(0, 1)).view(*x.shape[:2], 1, *x.shape[3:])
        mean = grey.mean(dim=(-2, -1), keepdim=True)  # (B, T, 1, 1, 1): per frame
        return (contrast * x + (1 - contrast) * mean).clamp_(0, 1)

    def _erase_keep_mask(self, shape: torch.Size, draws: torch.Tensor) -> torch.Tensor:
        """(B, 1, 1, H, W) float: 0 inside each erased clip's rectangle, 1 elsewhere."""
        b, _, _, h, w = shape
        device = draws.device
        apply = draws[2] < ERASE_P
        area = (ERASE_SCALE[0] + (ERASE_SCALE[1] - ERASE_SCALE[0]) * draws[3]) * h * w
        low, high = math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1])
        ratio = (low + (high - low) * draws[4]).exp()
        eh = (area * ratio).sqrt().round().clamp(1, h).long()
        ew = (area / ratio).sqrt().round().clamp(1, w).long()
        top = (draws[5] * (h - eh + 1)).long()
        left = (draws[6] * (w - ew + 1)).long()
        rows = torch.arange(h, device=device).view(1, h, 1)
        cols = torch.arange(w, device=device).view(1, 1, w)
        inside = (
            (rows >= top.view(b, 1, 1))
            & (rows < (top + eh).view(b, 1, 1))
            & (cols >= left.view(b, 1, 1))
            & (cols < (left + ew).view(b, 1, 1))
            & apply.view(b, 1, 1)
        )  # (B, H, W)
        return (~inside).float().view(b, 1, 1, h, w)
