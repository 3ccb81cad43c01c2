"""The recipes' model parts against their sources: TSM's temporal shift (transcribed from
the authors' code), partial BatchNorm as TSN/C1 train it, and C1's multi-scale crop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from epicdata.errors import EpicInputError
from train.fit import build_optimizer
from train.model import ActionModel, TemporalShift, temporal_shift
from train.transforms import (
    MULTISCALE_SCALES,
    DeviceAugment,
    TrainClipTransform,
    draw_multiscale_crop,
    multiscale_crop_sizes,
    multiscale_offsets,
)


# github mit-han-lab/temporal-shift-module, commit 1f6a834b02120441d99fa706b7a13ccc5293c6fa,
# ops/temporal_shift.py, TemporalShift.shift (inplace=False), verbatim but for the raise.
def _tsm_authors_shift(x, n_segment, fold_div=3, inplace=False):
    nt, c, h, w = x.size()
    n_batch = nt // n_segment
    x = x.view(n_batch, n_segment, c, h, w)

    fold = c // fold_div
    out = torch.zeros_like(x)
    out[:, :-1, :fold] = x[:, 1:, :fold]  # shift left
    out[:, 1:, fold: 2 * fold] = x[:, :-1, fold: 2 * fold]  # shift right  # fmt: skip
    out[:, :, 2 * fold:] = x[:, :, 2 * fold:]  # not shift  # fmt: skip

    return out.view(nt, c, h, w)


def _distinct(n: int, t: int, c: int, hw: int = 2) -> torch.Tensor:
    """(N*T, C, H, W) with every value distinct: any wrong source element shows."""
    return torch.arange(n * t * c * hw * hw, dtype=torch.float32).view(n * t, c, hw, hw) + 1


def test_the_shift_equals_the_authors_function_with_8_segments():
    x = _distinct(2, 8, 16)
    assert torch.equal(temporal_shift(x, 8), _tsm_authors_shift(x, 8, fold_div=8))
    conv = nn.Conv2d(16, 4, 1, bias=False)
    wrapped = TemporalShift(conv, 8)
    assert torch.equal(wrapped(x), conv(_tsm_authors_shift(x, 8, fold_div=8)))


def test_the_shift_direction_by_hand():
    # Checked without any transcription: were both reversed, this still fails.
    n, t, c = 1, 8, 16
    x = _distinct(n, t, c)
    out = temporal_shift(x, t).view(n, t, c, 2, 2)
    x = x.view(n, t, c, 2, 2)
    fold = c // 8
    for step in range(t):
        ahead = x[0, step + 1, 0] if step + 1 < t else torch.zeros(2, 2)
        behind = x[0, step - 1, fold] if step > 0 else torch.zeros(2, 2)
        assert torch.equal(out[0, step, 0], ahead)  # channel 0 at t holds t+1
        assert torch.equal(out[0, step, fold], behind)  # channel C//8 at t holds t-1
        assert torch.equal(out[0, step, 2 * fold :], x[0, step, 2 * fold :])


@pytest.mark.parametrize(("arch", "blocks"), [("resnet18", 8), ("resnet50", 16)])
def test_every_residual_block_is_shifted_under_the_authors_key_names(arch, blocks):
    model = ActionModel(arch=arch, temporal="tsm", num_frames=8)
    shifted = [k for k in model.state_dict() if k.endswith(".conv1.net.weight")]
    assert len(shifted) == blocks
    assert "backbone.layer1.0.conv1.net.weight" in shifted
    assert "backbone.layer4.1.conv1.net.weight" in shifted
    assert "backbone.conv1.weight" in model.state_dict()  # the stem is not shifted
    plain = ActionModel(arch=arch)
    assert not any(".net." in k for k in plain.state_dict())


def test_a_tsm_model_refuses_another_clip_length():
    model = ActionModel(temporal="tsm", num_frames=4).eval()
    assert model(torch.randn(1, 4, 3, 32, 32))[0].shape == (1, 97)
    with pytest.raises(EpicInputError, match="clips of 4 frames; got 3"):
        model(torch.randn(1, 3, 3, 32, 32))


def test_partial_bn_keeps_every_bn_but_the_first_frozen_through_a_step():
    torch.manual_seed(0)
    model = ActionModel(arch="resnet18", partial_bn=True, dropout=0.0)
    bns = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    before = [{k: v.clone() for k, v in bn.state_dict().items()} for bn in bns]
    optimizer = build_optimizer(model, kind="sgd", lr=0.1, weight_decay=5e-4)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    model.eval()
    model.train()  # toggled: the frozen ones go back to eval mode every time
    assert bns[0].training and not any(bn.training for bn in bns[1:])
    verbs, nouns = model(torch.randn(2, 2, 3, 32, 32))
    (verbs.sum() + nouns.sum()).backward()
    optimizer.step()
    first = bns[0].state_dict()
    assert not torch.equal(first["running_mean"], before[0]["running_mean"])
    assert not torch.equal(first["weight"], before[0]["weight"])
    for bn, old in zip(bns[1:], before[1:], strict=True):
        for key, value in bn.state_dict().items():
            assert torch.equal(value, old[key]), key  # statistics and affine unchanged
        assert not bn.weight.requires_grad and not bn.bias.requires_grad
        assert id(bn.weight) not in in_optimizer and id(bn.bias) not in in_optimizer
    assert id(bns[0].weight) in in_optimizer


@pytest.mark.parametrize("temporal", ["avg", "tsm"])
def test_resnet50_in_channels_last_and_autocast_computes_the_same(temporal):
    torch.manual_seed(0)
    model = ActionModel(arch="resnet50", temporal=temporal, num_frames=4).eval()
    assert model.feature_dim == 2048
    clips = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        verbs, nouns = model(clips)
        # channels_last weights make every activation NHWC, the shift's input included.
        last = model.to(memory_format=torch.channels_last)
        verbs_cl, nouns_cl = last(clips)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            verbs_bf, _ = last(clips)
    assert verbs.shape == (2, 97) and nouns.shape == (2, 300)
    assert torch.allclose(verbs, verbs_cl, atol=1e-4) and torch.allclose(nouns, nouns_cl, atol=1e-4)
    assert torch.allclose(verbs, verbs_bf.float(), atol=0.1 * verbs.abs().max().item() + 0.05)


# C1-Action-Recognition-TSN-TRN-TSM, commit e8e1a791944305c33adef09a966c51c0dfef0d38,
# src/transforms.py GroupMultiScaleCrop._sample_crop_size / fill_fix_offset, verbatim
# but for the random choice, which returns every candidate here.
def _c1_candidates(im_size, input_size, scales=None, max_distort=1):
    scales = scales if scales is not None else [1, 0.875, 0.75, 0.66]
    input_size = [input_size, input_size]
    image_w, image_h = im_size[0], im_size[1]

    # find a crop size
    base_size = min(image_w, image_h)
    crop_sizes = [int(base_size * x) for x in scales]
    crop_h = [input_size[1] if abs(x - input_size[1]) < 3 else x for x in crop_sizes]
    crop_w = [input_size[0] if abs(x - input_size[0]) < 3 else x for x in crop_sizes]

    pairs = []
    for i, h in enumerate(crop_h):
        for j, w in enumerate(crop_w):
            if abs(i - j) <= max_distort:
                pairs.append((w, h))
    return {pair: _c1_fill_fix_offset(True, image_w, image_h, *pair) for pair in pairs}


def _c1_fill_fix_offset(more_fix_crop, image_w, image_h, crop_w, crop_h):
    w_step = (image_w - crop_w) // 4
    h_step = (image_h - crop_h) // 4

    ret = list()
    ret.append((0, 0))  # upper left
    ret.append((4 * w_step, 0))  # upper right
    ret.append((0, 4 * h_step))  # lower left
    ret.append((4 * w_step, 4 * h_step))  # lower right
    ret.append((2 * w_step, 2 * h_step))  # center

    if more_fix_crop:
        ret.append((0, 2 * h_step))  # center left
        ret.append((4 * w_step, 2 * h_step))  # center right
        ret.append((2 * w_step, 4 * h_step))  # lower center
        ret.append((2 * w_step, 0 * h_step))  # upper center

        ret.append((1 * w_step, 1 * h_step))  # upper left quarter
        ret.append((3 * w_step, 1 * h_step))  # upper right quarter
        ret.append((1 * w_step, 3 * h_step))  # lower left quarter
        ret.append((3 * w_step, 3 * h_step))  # lower righ quarter

    return ret


@pytest.mark.parametrize(
    ("height", "width", "size"), [(256, 456, 224), (256, 341, 224), (128, 228, 64), (100, 100, 90)]
)
def test_the_multiscale_crop_draws_exactly_c1s_candidates(height, width, size):
    assert list(MULTISCALE_SCALES) == [1, 0.875, 0.75, 0.66]
    expected = _c1_candidates((width, height), size)
    ours = {
        pair: multiscale_offsets(height, width, *pair)
        for pair in multiscale_crop_sizes(height, width, size)
    }
    assert ours == expected
    rng = np.random.default_rng(7)
    seen_pairs, flips = set(), 0
    for _ in range(2000):
        crop = draw_multiscale_crop(height, width, size, rng)
        pair = (crop.width, crop.height)
        assert (crop.left, crop.top) in expected[pair]
        seen_pairs.add(pair)
        flips += crop.flip
    assert seen_pairs == set(expected) and 800 < flips < 1200


def test_the_multiscale_transform_crops_every_frame_alike():
    frames = torch.randint(0, 256, (3, 3, 64, 114), dtype=torch.uint8)
    frames[1:] = frames[0]
    out = TrainClipTransform(32, crop="multiscale")(frames, np.random.default_rng(0))
    assert out.shape == (3, 3, 32, 32) and torch.equal(out[0], out[2])


def test_without_photometric_augmentation_training_only_normalises_and_draws_nothing():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    clips = torch.randint(0, 256, (2, 3, 3, 8, 8), dtype=torch.uint8)
    generator = torch.Generator().manual_seed(5)
    state = generator.get_state()
    out = DeviceAugment(mean, std, photometric=False)(clips, train=True, generator=generator)
    expected = (clips.float() / 255 - torch.tensor(mean).view(1, 1, 3, 1, 1)) / torch.tensor(
        std
    ).view(1, 1, 3, 1, 1)
    assert torch.equal(out, expected) and torch.equal(generator.get_state(), state)
