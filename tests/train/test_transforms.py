"""Per-clip augmentation: one draw per clip, applied identically to every frame."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from epicdata.constants import IMAGENET_MEAN, IMAGENET_STD
from train.transforms import (
    DeviceAugment,
    EvalClipTransform,
    TrainClipTransform,
    apply_crop_flip,
    draw_crop_flip,
)


def _clip_of_identical_frames(seed: int, t: int = 4) -> torch.Tensor:
    frame = torch.randint(0, 256, (3, 48, 56), generator=torch.Generator().manual_seed(seed))
    return frame.to(torch.uint8).expand(t, -1, -1, -1).clone()  # (T, C, H, W)


def test_every_frame_of_a_clip_gets_the_same_crop_and_flip():
    transform = TrainClipTransform(24)
    outputs = []
    for seed in range(20):
        clip = _clip_of_identical_frames(seed)
        rng = np.random.default_rng(seed)
        out = transform(clip, rng)
        assert out.shape == (4, 3, 24, 24) and out.dtype == torch.uint8
        # Identical input frames stay identical: one crop and one flip for the whole clip.
        assert all(torch.equal(out[0], out[t]) for t in range(1, 4))
        # And it is exactly the crop/flip drawn once from the same generator.
        crop = draw_crop_flip(48, 56, np.random.default_rng(seed))
        assert torch.equal(out, apply_crop_flip(clip, crop, 24))
        outputs.append(crop)
    assert {c.flip for c in outputs} == {True, False}
    assert len({(c.top, c.left, c.height, c.width) for c in outputs}) > 10
    for c in outputs:  # RandomResizedCrop(scale=(0.85, 1)): the crop keeps most of the frame
        assert 0.8 <= c.height * c.width / (48 * 56) <= 1.0


def test_16_by_9_frames_always_get_the_centre_4_by_3_crop_as_in_torchvision():
    # scale >= 0.85 with ratio <= 4/3 cannot fit a 456x256 frame, so torchvision's
    # RandomResizedCrop (the seed's) falls back to the centre crop every time: regression
    # guard that we reproduce the seed's behaviour rather than silently change the recipe.
    crops = {draw_crop_flip(256, 456, np.random.default_rng(s)) for s in range(50)}
    assert {(c.top, c.left, c.height, c.width) for c in crops} == {(0, 57, 256, 341)}


def test_flip_mirrors_the_crop():
    clip = _clip_of_identical_frames(0)
    crop = draw_crop_flip(48, 56, np.random.default_rng(3))
    flipped = type(crop)(crop.top, crop.left, crop.height, crop.width, not crop.flip)
    assert torch.equal(apply_crop_flip(clip, crop, 24), apply_crop_flip(clip, flipped, 24).flip(-1))


def test_device_augment_is_per_clip_and_normalises():
    augment = DeviceAugment(IMAGENET_MEAN, IMAGENET_STD)
    clips = torch.stack([_clip_of_identical_frames(s) for s in range(64)])  # (B, T, C, H, W)
    out = augment(clips, train=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == clips.shape and out.dtype == torch.float32
    for b in range(len(out)):  # jitter factors and erased rectangle shared by the frames
        assert all(torch.equal(out[b, 0], out[b, t]) for t in range(1, 4))
    # RandomErasing p=0.1 puts zeros (the normalised mean) in some clips only.
    erased = [(out[b, 0] == 0).all(0).sum().item() for b in range(len(out))]
    assert 0 < sum(e > 0 for e in erased) < len(out) // 2
    plain = augment(clips, train=False)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1)
    assert torch.allclose(plain, (clips / 255 - mean) / std)


def test_eval_transform_is_a_centre_crop_at_the_training_scale():
    clip = torch.zeros(2, 3, 256, 456, dtype=torch.uint8)
    assert EvalClipTransform(224)(clip).shape == (2, 3, 224, 224)  # 256 short side: no resize
    assert EvalClipTransform(112)(clip).shape == (2, 3, 112, 112)  # resized to 128 first


class _HostToDevice(TorchDispatchMode):
    """Records every op that takes a CPU tensor and returns a tensor on another device."""

    def __init__(self) -> None:
        super().__init__()
        self.copies: list[tuple[str, dict]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        outputs = out if isinstance(out, (tuple, list)) else (out,)
        if any(a.device.type == "cpu" for a in inputs) and any(
            isinstance(o, torch.Tensor) and o.device.type != "cpu" for o in outputs
        ):
            self.copies.append((str(func), kwargs))
        return out


def test_a_training_augmentation_makes_one_non_blocking_copy_to_the_device():
    # Regression: 7 blocking copies a step, each waiting for the GPU's queued work. On the
    # meta device any op that needs the values on the host (a sync on a GPU) would raise.
    augment = DeviceAugment(IMAGENET_MEAN, IMAGENET_STD).to("meta")
    clips = torch.empty(8, 4, 3, 32, 40, dtype=torch.uint8, device="meta")
    with _HostToDevice() as recorder:
        out = augment(clips, train=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == clips.shape and out.device.type == "meta"
    assert len(recorder.copies) == 1, recorder.copies
    assert recorder.copies[0][1].get("non_blocking") is True


def test_the_draws_come_from_the_generator_alone():
    # Parameters come from a CPU generator: the same seed gives the same clips on any device.
    clips = torch.stack([_clip_of_identical_frames(s) for s in range(16)])
    augment = DeviceAugment(IMAGENET_MEAN, IMAGENET_STD)
    first = augment(clips, train=True, generator=torch.Generator().manual_seed(3))
    again = augment(clips, train=True, generator=torch.Generator().manual_seed(3))
    other = augment(clips, train=True, generator=torch.Generator().manual_seed(4))
    assert torch.equal(first, again) and not torch.equal(first, other)
    draws = DeviceAugment.draw(16, torch.device("cpu"), torch.Generator().manual_seed(3))
    assert draws.shape == (7, 16) and ((draws >= 0) & (draws < 1)).all()
