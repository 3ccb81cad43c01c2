"""The action models and the C1 training parts, each against an independent oracle: the
TSM authors' shift and C1's multi-scale crop (transcribed verbatim below, their sources
named), hand-checked directions, and the optimiser's own view of what trains."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from torch import nn

from epicdata.errors import EpicInputError
from train.device import Precision
from train.distributed import DistInfo
from train.engine import train_one_epoch
from train.fit import build_optimizer
from train.model import ActionModel, TemporalShift, temporal_shift
from train.transforms import (
    DeviceAugment,
    TrainClipTransform,
    draw_multiscale_crop,
    multiscale_crop_sizes,
    multiscale_offsets,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Blocks per stage of torchvision's ResNets (He et al. table 1): 8 and 16 blocks.
BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet50": (3, 4, 6, 3)}


# ----------------------------------------------------------------------------- oracles


# github mit-han-lab/temporal-shift-module, commit 1f6a834b02120441d99fa706b7a13ccc5293c6fa,
# ops/temporal_shift.py, TemporalShift.shift (verbatim; the staticmethod's body).
# fmt: off
def authors_shift(x, n_segment, fold_div=3, inplace=False):
    nt, c, h, w = x.size()
    n_batch = nt // n_segment
    x = x.view(n_batch, n_segment, c, h, w)

    fold = c // fold_div
    if inplace:
        # Due to some out of order error when performing parallel computing.
        # May need to write a CUDA kernel.
        raise NotImplementedError
        # out = InplaceShift.apply(x, fold)
    else:
        out = torch.zeros_like(x)
        out[:, :-1, :fold] = x[:, 1:, :fold]  # shift left
        out[:, 1:, fold: 2 * fold] = x[:, :-1, fold: 2 * fold]  # shift right
        out[:, :, 2 * fold:] = x[:, :, 2 * fold:]  # not shift

    return out.view(nt, c, h, w)


# github epic-kitchens/C1-Action-Recognition-TSN-TRN-TSM, commit
# e8e1a791944305c33adef09a966c51c0dfef0d38, src/transforms.py, GroupMultiScaleCrop: __init__
# (without PIL's interpolation), _sample_crop_size, _sample_fix_offset and fill_fix_offset
# verbatim. Its random.choice calls are recorded by the tests to list what it chooses among.
class C1GroupMultiScaleCrop:
    def __init__(
        self, input_size, scales=None, max_distort=1, fix_crop=True, more_fix_crop=True
    ):
        self.scales = scales if scales is not None else [1, 0.875, 0.75, 0.66]
        self.max_distort = max_distort
        self.fix_crop = fix_crop
        self.more_fix_crop = more_fix_crop
        self.input_size = (
            input_size if not isinstance(input_size, int) else [input_size, input_size]
        )

    def _sample_crop_size(self, im_size):
        image_w, image_h = im_size[0], im_size[1]

        # find a crop size
        base_size = min(image_w, image_h)
        crop_sizes = [int(base_size * x) for x in self.scales]
        crop_h = [
            self.input_size[1] if abs(x - self.input_size[1]) < 3 else x
            for x in crop_sizes
        ]
        crop_w = [
            self.input_size[0] if abs(x - self.input_size[0]) < 3 else x
            for x in crop_sizes
        ]

        pairs = []
        for i, h in enumerate(crop_h):
            for j, w in enumerate(crop_w):
                if abs(i - j) <= self.max_distort:
                    pairs.append((w, h))

        crop_pair = random.choice(pairs)
        if not self.fix_crop:
            w_offset = random.randint(0, image_w - crop_pair[0])
            h_offset = random.randint(0, image_h - crop_pair[1])
        else:
            w_offset, h_offset = self._sample_fix_offset(
                image_w, image_h, crop_pair[0], crop_pair[1]
            )

        return crop_pair[0], crop_pair[1], w_offset, h_offset

    def _sample_fix_offset(self, image_w, image_h, crop_w, crop_h):
        offsets = self.fill_fix_offset(
            self.more_fix_crop, image_w, image_h, crop_w, crop_h
        )
        return random.choice(offsets)

    @staticmethod
    def fill_fix_offset(more_fix_crop, image_w, image_h, crop_w, crop_h):
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
# fmt: on


Pair = tuple[int, int]


def c1_choices(
    monkeypatch: pytest.MonkeyPatch, height: int, width: int, size: int
) -> tuple[list[Pair], dict[Pair, list[Pair]]]:
    """What C1's crop chooses among for an image of ``height`` x ``width``: the (w, h)
    pairs (with their multiplicity: a duplicate is drawn twice as often), and each pair's
    (left, top) offsets. Read from the lists C1 hands to ``random.choice``."""
    crop = C1GroupMultiScaleCrop(size)
    seen: list[list] = []
    pick = [0]

    def choice(seq):  # the first call chooses the pair, the second the offset
        seen.append(list(seq))
        return seq[pick[0]] if len(seen) % 2 == 1 else seq[0]

    monkeypatch.setattr(random, "choice", choice)
    crop._sample_crop_size((width, height))  # PIL's size: (w, h)
    pairs = seen[0]
    offsets: dict[Pair, list[Pair]] = {}
    for index, pair in enumerate(pairs):
        seen.clear()
        pick[0] = index
        w, h, _, _ = crop._sample_crop_size((width, height))
        assert (w, h) == pair
        offsets.setdefault(pair, seen[1])
    monkeypatch.undo()
    return pairs, offsets


# ----------------------------------------------------------------------------- the shift


def _distinct(n: int = 2, t: int = 8, c: int = 16, hw: int = 2) -> torch.Tensor:
    """(N*T, C, H, W) of distinct nonzero values: a zero in an output is a filled end."""
    return torch.arange(1, n * t * c * hw * hw + 1, dtype=torch.float32).view(n * t, c, hw, hw)


def test_temporal_shift_is_the_tsm_authors_shift() -> None:
    x = _distinct()
    before = x.clone()
    ours = temporal_shift(x, 8)  # default fold_div: C1's shift_div 8
    assert torch.equal(ours, authors_shift(x, 8, fold_div=8))
    assert torch.equal(x, before)  # not in place: the residual branch still needs x


def test_a_temporal_shift_wrapped_conv_is_the_authors_module_forward_and_backward() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 4, 3, padding=1)
    x = _distinct().requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    ours = TemporalShift(conv, n_segment=8)(x)
    reference = conv(authors_shift(x_ref, 8, fold_div=8))  # the authors' TemporalShift.forward
    assert torch.allclose(ours, reference, rtol=0, atol=1e-4)
    ours.square().sum().backward()
    reference.square().sum().backward()
    assert torch.allclose(x.grad, x_ref.grad, rtol=1e-6, atol=1e-3)


def test_the_shift_direction_by_hand() -> None:
    """Independent of any transcription: channel 0 at time t holds t+1's value (the future),
    channel C//8 holds t-1's (the past), zeros at the clip's ends, the rest unshifted."""
    n, t, c = 2, 8, 16
    x = _distinct(n, t, c)
    out = temporal_shift(x, t).view(n, t, c, 2, 2)
    x5 = x.view(n, t, c, 2, 2)
    fold = c // 8
    for step in range(t - 1):
        assert torch.equal(out[:, step, 0], x5[:, step + 1, 0])
    assert (out[:, t - 1, :fold] == 0).all()
    for step in range(1, t):
        assert torch.equal(out[:, step, fold], x5[:, step - 1, fold])
    assert (out[:, 0, fold : 2 * fold] == 0).all()
    assert torch.equal(out[:, :, 2 * fold :], x5[:, :, 2 * fold :])
    # Clips do not leak into each other: clip 1's first frame takes nothing from clip 0.
    assert (out[1, 0, fold : 2 * fold] == 0).all()


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_tsm_wraps_conv1_of_every_block_with_the_authors_parameter_names(arch: str) -> None:
    model = ActionModel(arch=arch, temporal="tsm", num_frames=8)
    expected = {
        f"backbone.layer{stage}.{i}.conv1.net.weight"
        for stage, blocks in enumerate(BLOCKS[arch], start=1)
        for i in range(blocks)
    }
    assert len(expected) == {"resnet18": 8, "resnet50": 16}[arch]
    keys = set(model.state_dict())
    assert {k for k in keys if ".net." in k} == expected
    assert not [k for k in keys if k.startswith("backbone.layer") and ".conv1.weight" in k]
    assert "backbone.conv1.weight" in keys  # the stem is not a block: not shifted
    shifts = [m for m in model.modules() if isinstance(m, TemporalShift)]
    assert len(shifts) == len(expected)
    assert all(m.n_segment == 8 and m.fold_div == 8 for m in shifts)
    assert not [m for m in ActionModel(arch=arch).modules() if isinstance(m, TemporalShift)]


def test_a_tsm_model_refuses_clips_of_another_length() -> None:
    model = ActionModel(arch="resnet18", temporal="tsm", num_frames=4)
    with pytest.raises(EpicInputError, match="clips of 4 frames; got 2") as caught:
        model(torch.zeros(1, 2, 3, 32, 32))
    assert "--num-frames 4" in str(caught.value)
    verb, noun = model.eval()(torch.zeros(1, 4, 3, 32, 32))
    assert verb.shape == (1, 97) and noun.shape == (1, 300)


# ----------------------------------------------------------------------------- partial BN


def _bn_state(bn: nn.BatchNorm2d) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in bn.state_dict().items()}


def test_partial_bn_freezes_every_bn_but_the_first_through_an_sgd_step() -> None:
    torch.manual_seed(0)
    model = ActionModel(arch="resnet18", partial_bn=True, dropout=0.0)
    bns = {name: m for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert len(bns) == 20  # stem 1 + 8 blocks x 2 + 3 downsamples
    first = bns.pop("backbone.bn1")  # the first BN of the forward pass
    assert model.partial_bn and {id(m) for m in model.frozen_bns} == {id(m) for m in bns.values()}
    before = {name: _bn_state(bn) for name, bn in bns.items()}
    first_before = _bn_state(first)

    optimizer = build_optimizer(model, kind="sgd", lr=0.1, weight_decay=5e-4, momentum=0.9)
    assert isinstance(optimizer, torch.optim.SGD)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for bn in bns.values():
        for p in (bn.weight, bn.bias):
            assert not p.requires_grad and id(p) not in in_optimizer
    assert id(first.weight) in in_optimizer and first.weight.requires_grad

    model.train()
    verb, noun = model(torch.randn(2, 2, 3, 32, 32) * 3 + 1)  # stats far from (0, 1)
    loss = nn.functional.cross_entropy(verb, torch.tensor([1, 2]))
    (loss + nn.functional.cross_entropy(noun, torch.tensor([3, 4]))).backward()
    optimizer.step()

    for name, bn in bns.items():
        after = _bn_state(bn)
        for key, value in before[name].items():
            assert torch.equal(after[key], value), f"{name}.{key} changed"
    after = _bn_state(first)
    assert not torch.equal(after["running_mean"], first_before["running_mean"])
    assert not torch.equal(after["running_var"], first_before["running_var"])
    assert int(after["num_batches_tracked"]) == 1
    assert not torch.equal(after["weight"], first_before["weight"])  # it trains


def test_partial_bn_stays_in_eval_mode_through_eval_train_toggles() -> None:
    model = ActionModel(arch="resnet50", partial_bn=True)
    assert len(model.frozen_bns) == 52  # 53 BNs: stem + 16 blocks x 3 + 4 downsamples
    for _ in range(2):
        model.eval()
        assert not any(m.training for m in model.modules())
        model.train()
        assert model.backbone.bn1.training and model.verb_head.training
        assert not any(bn.training for bn in model.frozen_bns)
    plain = ActionModel(arch="resnet18").train()
    assert plain.frozen_bns == [] and not plain.partial_bn
    assert all(m.training for m in plain.modules())


# ----------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("temporal", ["tsm", "avg"])
def test_resnet50_channels_last_and_bf16_autocast_agree_with_contiguous_fp32(
    temporal: str,
) -> None:
    torch.manual_seed(0)
    model = ActionModel(arch="resnet50", temporal=temporal, num_frames=8, dropout=0.0).eval()
    assert model.feature_dim == 2048
    nhwc = ActionModel(arch="resnet50", temporal=temporal, num_frames=8, dropout=0.0).eval()
    nhwc.load_state_dict(model.state_dict())
    nhwc = nhwc.to(memory_format=torch.channels_last)
    layouts = []
    hook = nhwc.backbone.layer2[0].conv1.register_forward_pre_hook(
        lambda _, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    clips = torch.randn(2, 8, 3, 32, 32)  # (B, T, C, H, W)
    with torch.no_grad():
        verb, noun = model(clips)
        verb_cl, noun_cl = nhwc(clips)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            verb_bf, noun_bf = nhwc(clips)
    hook.remove()
    assert layouts == [True, True]  # the block (and its shift) did see NHWC activations
    assert verb.shape == verb_cl.shape == (2, 97) and noun.shape == noun_cl.shape == (2, 300)
    scale = max(verb.abs().max().item(), noun.abs().max().item())
    assert (verb - verb_cl).abs().max() <= 1e-5 * scale
    assert (noun - noun_cl).abs().max() <= 1e-5 * scale
    assert verb_bf.dtype == torch.bfloat16 and verb_bf.shape == (2, 97)
    # bf16 keeps 8 bits of mantissa: about 1% of the scale through 50 layers (0.7% measured).
    assert (verb - verb_bf.float()).abs().max() <= 0.05 * scale
    assert (noun - noun_bf.float()).abs().max() <= 0.05 * scale


# ----------------------------------------------------------------------------- multiscale crop

SHAPES = [(256, 456, 224), (256, 341, 224), (128, 228, 64), (258, 300, 224), (64, 64, 64)]


@pytest.mark.parametrize(("height", "width", "size"), SHAPES)
def test_multiscale_crop_chooses_among_c1_s_sizes_and_places(
    monkeypatch: pytest.MonkeyPatch, height: int, width: int, size: int
) -> None:
    pairs, c1 = c1_choices(monkeypatch, height, width, size)
    ours = multiscale_crop_sizes(height, width, size)
    assert Counter(ours) == Counter(pairs)  # with multiplicity: the draw's weights
    for (w, h), offsets in c1.items():
        assert Counter(multiscale_offsets(height, width, w, h)) == Counter(offsets)


@pytest.mark.parametrize(("height", "width", "size"), SHAPES)
def test_multiscale_draws_stay_in_c1_s_set_and_cover_every_size(
    monkeypatch: pytest.MonkeyPatch, height: int, width: int, size: int
) -> None:
    pair_list, c1 = c1_choices(monkeypatch, height, width, size)
    pairs = set(pair_list)
    rng = np.random.default_rng(22)
    drawn, flips = Counter(), Counter()
    for _ in range(1000):
        crop = draw_multiscale_crop(height, width, size, rng)
        pair = (crop.width, crop.height)
        assert pair in pairs and (crop.left, crop.top) in c1[pair]
        assert crop.left + crop.width <= width and crop.top + crop.height <= height
        drawn[pair] += 1
        flips[crop.flip] += 1
    assert set(drawn) == pairs
    assert set(flips) == {False, True}


def test_train_transform_multiscale_crops_every_frame_alike_from_c1_s_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    height, width, size, frames_n = 128, 228, 64, 4
    pair_list, c1 = c1_choices(monkeypatch, height, width, size)
    pairs = set(pair_list)
    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=gen)
    frames = image.expand(frames_n, -1, -1, -1).contiguous()  # (T, C, H, W), identical
    transform = TrainClipTransform(size, crop="multiscale")
    for seed in range(3):
        out = transform(frames, np.random.default_rng(seed))
        assert out.shape == (frames_n, 3, size, size) and out.dtype == torch.uint8
        # Identical frames stay identical only when one crop is applied to all.
        assert all(torch.equal(out[0], out[i]) for i in range(1, frames_n))
        candidates = [
            TF.resized_crop(image, top, left, h, w, [size, size], antialias=True)
            for (w, h) in pairs
            for (left, top) in c1[(w, h)]
        ]
        assert any(torch.equal(out[0], c) or torch.equal(out[0], c.flip(-1)) for c in candidates)


# ----------------------------------------------------------------------------- device augment


def test_device_augment_without_photometric_is_normalisation_only_and_draws_nothing() -> None:
    clips = torch.randint(0, 256, (3, 2, 3, 16, 16), dtype=torch.uint8)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1)
    expected = (clips.float() / 255 - mean) / std
    generator = torch.Generator().manual_seed(5)
    state = generator.get_state().clone()
    augment = DeviceAugment(IMAGENET_MEAN, IMAGENET_STD, photometric=False)
    out = augment(clips, train=True, generator=generator)
    assert torch.equal(out, expected)
    assert torch.equal(generator.get_state(), state)
    # The control: the seed's augmentation does draw, and does change the clips.
    photometric = DeviceAugment(IMAGENET_MEAN, IMAGENET_STD)
    assert not torch.equal(photometric(clips, train=True, generator=generator), expected)
    assert not torch.equal(generator.get_state(), state)


# ----------------------------------------------------------------------------- the loss


class _TinyModel(nn.Module):
    """(B, T, C, H, W) -> verb (B, 97), noun (B, 300) logits, from the clips' pixel means."""

    def __init__(self) -> None:
        super().__init__()
        self.verb = nn.Linear(3, 97)
        self.noun = nn.Linear(3, 300)

    def forward(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = clips.mean(dim=(1, 3, 4)) * 10  # (B, C)
        return self.verb(x), self.noun(x)


def _one_step(*, grad_clip: float | None, head_loss: str, lr: float) -> tuple[nn.Module, float]:
    """The tiny model after one SGD step (no momentum, no decay) on a fixed batch, and the
    loss the epoch recorded."""
    torch.manual_seed(0)
    model = _TinyModel()
    gen = torch.Generator().manual_seed(1)
    batch = {
        "frames": torch.randint(0, 256, (4, 2, 3, 8, 8), dtype=torch.uint8, generator=gen),
        "verb": torch.tensor([0, 5, 96, 7]),
        "noun": torch.tensor([1, 299, 3, 3]),
    }
    optimizer = build_optimizer(model, kind="sgd", lr=lr, weight_decay=0.0, momentum=0.0)
    stats = train_one_epoch(
        model,
        [batch],
        optimizer=optimizer,
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        augment=DeviceAugment(IMAGENET_MEAN, IMAGENET_STD, photometric=False),
        generator=torch.Generator().manual_seed(2),
        precision=Precision("cpu", torch.float32, enabled=False),
        device=torch.device("cpu"),
        info=DistInfo(),
        max_steps=1,
        stop_requested=lambda: False,
        log_every=0,
        grad_clip=grad_clip,
        head_loss=head_loss,
    )
    return model, stats.loss


def _moved(model: nn.Module) -> float:
    """The global L2 norm of the change of the parameters since initialisation."""
    torch.manual_seed(0)
    start = _TinyModel()
    deltas = [
        (p - q).flatten() for p, q in zip(model.parameters(), start.parameters(), strict=True)
    ]
    return torch.cat(deltas).norm().item()


def test_grad_clip_bounds_the_step_to_lr_times_the_max_norm() -> None:
    lr, max_norm = 0.5, 1e-3
    clipped, _ = _one_step(grad_clip=max_norm, head_loss="sum", lr=lr)
    free, _ = _one_step(grad_clip=None, head_loss="sum", lr=lr)
    assert _moved(free) > 100 * lr * max_norm  # the gradient is far above the bound
    # SGD without momentum moves by lr * gradient; clip_grad_norm_ scales it to max_norm.
    assert _moved(clipped) == pytest.approx(lr * max_norm, rel=1e-3)


def test_head_loss_mean_is_half_the_sum() -> None:
    _, summed = _one_step(grad_clip=None, head_loss="sum", lr=0.0)
    _, mean = _one_step(grad_clip=None, head_loss="mean", lr=0.0)
    assert mean == pytest.approx(summed / 2, rel=1e-6)
    # The sum itself, computed here: verb + noun cross-entropy of the initial model.
    torch.manual_seed(0)
    model = _TinyModel()
    gen = torch.Generator().manual_seed(1)
    frames = torch.randint(0, 256, (4, 2, 3, 8, 8), dtype=torch.uint8, generator=gen)
    x = (frames.float() / 255 - torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1)) / torch.tensor(
        IMAGENET_STD
    ).view(1, 1, 3, 1, 1)
    verb, noun = model(x)
    expected = nn.functional.cross_entropy(verb, torch.tensor([0, 5, 96, 7]))
    expected = expected + nn.functional.cross_entropy(noun, torch.tensor([1, 299, 3, 3]))
    assert summed == pytest.approx(expected.item(), rel=1e-5)
