"""Per-clip augmentation: one draw per clip, applied identically to every frame."""

from __future__ import annotations

import numpy as np
import torch

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
