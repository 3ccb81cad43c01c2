"""Flow models (issue 23 item 3): a first convolution of 2 x stack inputs, initialised from
RGB ImageNet weights by TSN's cross-modality rule (checked against an independent NumPy
average and against a transcription of the TSM authors' ``_construct_flow_model``), the TSM
authors' Kinetics flow file, checkpoints of another channel count refused naming both
counts, and the flow recipes transcribed from C1's configs/ts{n,m}_flow.yaml.

Every weights file is built here, tiny where possible (ResNet-18); nothing is downloaded."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from torch import nn

from epicdata.constants import IMAGENET_MEAN, IMAGENET_STD
from epicdata.errors import EpicInputError
from train.config import TrainConfig
from train.input_spec import FLOW_NORM, InputSpec, flow_channels
from train.model import ActionModel, build_model
from train.recipes import RECIPES, resolve_options
from train.weights import (
    FETCH_KINETICS_COMMAND,
    FETCH_KINETICS_FLOW_COMMAND,
    KINETICS_TSM_FLOW_URL,
    KINETICS_TSM_URL,
    cross_modality_conv1,
    imagenet_weights_path,
    kinetics_weights_path,
    load_weights,
)

#: C1-Action-Recognition-TSN-TRN-TSM, the commit the recipes transcribe.
C1_COMMIT = "e8e1a791944305c33adef09a966c51c0dfef0d38"
#: Where the tests read C1's configs: this variable (a clone, bare or not), else the mirror
#: beside the checkout.
C1_REPO_VAR = "EPIC_C1_REPO"
C1_MIRROR = (
    Path(__file__).resolve().parents[3]
    / ".mirror/epic-kitchens+C1-Action-Recognition-TSN-TRN-TSM/repo"
)


def _flow_fed(stack: int = 5, clip_length: int = 8) -> InputSpec:
    """What a flow run feeds: ``stack`` (u, v) pairs scaled to [0, 1], mean 0.5, std 0.226."""
    mean, std = FLOW_NORM
    return InputSpec("flow", flow_channels(stack), mean, std, 256, 224, clip_length, "tsn")


def _rgb_fed(clip_length: int = 8) -> InputSpec:
    return InputSpec("rgb", "RGB", IMAGENET_MEAN, IMAGENET_STD, 256, 224, clip_length, "tsn")


def _load(model: ActionModel, weights: Path | str, fed: InputSpec):
    return load_weights(model, str(weights), fed=fed, accept_mismatch=False)


def _torchvision_resnet(arch: str = "resnet18", seed: int = 1) -> torchvision.models.ResNet:
    torch.manual_seed(seed)
    return getattr(torchvision.models, arch)(weights=None)


def _authors_flow_conv(resnet: nn.Module, new_length: int) -> nn.Conv2d:
    """ops/models.py ``TSN._construct_flow_model`` of github mit-han-lab/temporal-shift-module
    (C1's src/models/tsn.py is the same), transcribed: the conv it puts in place of the
    first one."""
    modules = list(resnet.modules())
    first_conv_idx = [i for i in range(len(modules)) if isinstance(modules[i], nn.Conv2d)][0]
    conv_layer = modules[first_conv_idx]
    params = [x.clone() for x in conv_layer.parameters()]
    kernel_size = params[0].size()
    new_kernel_size = kernel_size[:1] + (2 * new_length,) + kernel_size[2:]
    new_kernels = params[0].data.mean(dim=1, keepdim=True).expand(new_kernel_size).contiguous()
    new_conv = nn.Conv2d(2 * new_length, conv_layer.out_channels, conv_layer.kernel_size,
                         conv_layer.stride, conv_layer.padding,
                         bias=len(params) == 2)  # fmt: skip
    new_conv.weight.data = new_kernels
    return new_conv


# ----------------------------------------------------------------------------- the models


@pytest.mark.parametrize(
    ("arch", "temporal"),
    [
        ("resnet18", "avg"),
        ("resnet18", "tsm"),
        pytest.param("resnet50", "avg", marks=pytest.mark.slow),  # about 2.5 s each
        pytest.param("resnet50", "tsm", marks=pytest.mark.slow),
    ],
)
def test_a_10_channel_model_takes_flow_clips_and_keeps_the_rgb_key_names(arch, temporal):
    torch.manual_seed(0)
    flow = build_model(arch=arch, temporal=temporal, num_frames=3, partial_bn=True, dropout=0.5,
                       device=torch.device("cpu"), channels_last=False, in_channels=10)  # fmt: skip
    rgb = ActionModel(arch=arch, temporal=temporal, num_frames=3)
    assert flow.in_channels == 10 and rgb.in_channels == 3
    ours, theirs = flow.state_dict(), rgb.state_dict()
    assert list(ours) == list(theirs)  # the same names: checkpoints differ only in conv1
    differ = [k for k in ours if ours[k].shape != theirs[k].shape]
    assert differ == ["backbone.conv1.weight"]
    assert tuple(ours["backbone.conv1.weight"].shape) == (64, 10, 7, 7)
    conv = flow.backbone.conv1
    assert (conv.kernel_size, conv.stride, conv.padding, conv.bias) == (
        (7, 7),
        (2, 2),
        (3, 3),
        None,
    )
    flow.eval()
    with torch.no_grad():
        verb, noun = flow(torch.randn(2, 3, 10, 32, 32))  # (B, T, 2 * stack, H, W)
    assert verb.shape == (2, 97) and noun.shape == (2, 300)
    assert torch.isfinite(verb).all() and torch.isfinite(noun).all()


def test_clips_of_another_channel_count_are_refused_naming_the_modality():
    model = ActionModel(in_channels=10)
    with pytest.raises(
        EpicInputError, match=r"clips \(B, T, 10, H, W\); got \(1, 2, 3, 16, 16\)"
    ) as info:
        model(torch.zeros(1, 2, 3, 16, 16))
    assert "--flow-stack" in str(info.value)
    with pytest.raises(EpicInputError, match="must be >= 1"):
        ActionModel(in_channels=0)


# ----------------------------------------------------------------------------- cross-modality


def _torchvision_file(tmp_path: Path, arch: str = "resnet18") -> tuple[Path, nn.Module]:
    source = _torchvision_resnet(arch)
    path = tmp_path / f"{arch}-imagenet.pth"
    torch.save(source.state_dict(), path)
    return path, source


@pytest.mark.parametrize("how", ["file", "imagenet"])
@pytest.mark.parametrize(("stack", "temporal"), [(5, "avg"), (5, "tsm"), (2, "avg")])
def test_rgb_imagenet_weights_initialise_a_flow_conv1_by_the_cross_modality_rule(
    tmp_path, monkeypatch, caplog, how, stack, temporal
):
    path, source = _torchvision_file(tmp_path)
    if how == "imagenet":  # --weights imagenet: the same file, from torch's cache
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
        imagenet_weights_path("resnet18").parent.mkdir(parents=True)
        os.replace(path, imagenet_weights_path("resnet18"))
        path = Path("imagenet")
    channels = 2 * stack
    model = ActionModel(arch="resnet18", temporal=temporal, num_frames=8, in_channels=channels)
    with caplog.at_level(logging.INFO, logger="train.weights"):
        report = _load(model, path, _flow_fed(stack))
    assert report.layout == "torchvision" and sorted(report.skipped) == ["fc.bias", "fc.weight"]
    assert f"cross-modality init of conv1 (3 -> {channels} channels)" in caplog.text

    # Independent: each of the C inputs gets (w_R + w_G + w_B) / 3, in float64 NumPy.
    rgb = source.conv1.weight.detach().double().numpy()  # (64, 3, 7, 7)
    expected = np.repeat(rgb.sum(axis=1, keepdims=True) / 3.0, channels, axis=1)
    got = model.backbone.conv1.weight.detach()
    assert got.shape == (64, channels, 7, 7) and got.dtype == torch.float32
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=0, atol=1e-6)
    # The authors' transcription gives the same tensor, bit for bit (no rescaling).
    assert torch.equal(got, _authors_flow_conv(source, stack).weight)

    own = model.state_dict()
    for key, value in source.state_dict().items():  # every other layer as for RGB
        if key.startswith("fc.") or key == "conv1.weight":
            continue
        if temporal == "tsm":
            key = key.replace(".conv1.", ".conv1.net.") if key.startswith("layer") else key
        assert torch.equal(own[f"backbone.{key}"], value), key
    assert report.spec.modality == "flow" and report.spec.channels == flow_channels(stack)


def test_cross_modality_conv1_by_hand():
    weight = torch.tensor(
        [[[[1.0]], [[2.0]], [[6.0]]], [[[0.0]], [[-3.0]], [[0.0]]]]
    )  # (2, 3, 1, 1)
    out = cross_modality_conv1(weight, 4)
    assert out.shape == (2, 4, 1, 1) and out.is_contiguous()
    assert out[:, :, 0, 0].tolist() == [[3.0] * 4, [-1.0] * 4]


# ----------------------------------------------------------------------------- Kinetics flow


class _AuthorsTemporalShift(nn.Module):
    """ops/temporal_shift.py ``TemporalShift``: the wrapped conv is ``self.net``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net


class _AuthorsFlowTSM(nn.Module):
    """ops/models.py ``TSN`` with modality Flow, ``new_length`` 5, shift "blockres": the
    base model's conv1 replaced by ``_construct_flow_model``, ``fc`` a Dropout, ``new_fc``
    Kinetics' 400 classes."""

    def __init__(self, arch: str, new_length: int = 5) -> None:
        super().__init__()
        self.base_model = _torchvision_resnet(arch, seed=3)
        for stage in (self.base_model.layer1, self.base_model.layer2,
                      self.base_model.layer3, self.base_model.layer4):  # fmt: skip
            for block in stage:
                block.conv1 = _AuthorsTemporalShift(block.conv1)
        self.base_model.conv1 = _authors_flow_conv(self.base_model, new_length)
        nn.init.normal_(self.base_model.conv1.weight)  # Kinetics-trained: not the average
        feature_dim = self.base_model.fc.in_features
        self.base_model.fc = nn.Dropout(p=0.5)
        self.new_fc = nn.Linear(feature_dim, 400)


def _authors_flow_file(path: Path, arch: str = "resnet18", new_length: int = 5) -> _AuthorsFlowTSM:
    """main.py's ``save_checkpoint`` of the DataParallel model (``module.`` prefix)."""
    net = _AuthorsFlowTSM(arch, new_length)
    torch.save({"epoch": 50, "arch": arch, "state_dict": nn.DataParallel(net).state_dict(),
                "best_prec1": 55.7}, path)  # fmt: skip
    return net


def _assert_backbone_is(model: ActionModel, net: _AuthorsFlowTSM) -> None:
    own = model.state_dict()
    for key, value in net.base_model.state_dict().items():
        assert torch.equal(own[f"backbone.{key}"], value), key


def test_a_tsm_authors_flow_file_loads_into_a_flow_tsm_model(tmp_path):
    path = tmp_path / "TSM_kinetics_Flow_resnet18_shift8_blockres_avg_segment8_e50.pth"
    net = _authors_flow_file(path)
    model = ActionModel(arch="resnet18", temporal="tsm", num_frames=8, in_channels=10)
    report = _load(model, path, _flow_fed())
    assert report.layout == "tsm" and sorted(report.skipped) == ["new_fc.bias", "new_fc.weight"]
    _assert_backbone_is(model, net)  # conv1 as trained, not re-initialised
    assert report.spec == InputSpec("flow", "uv" * 5, (0.5,), (0.226,), 0, 224, 8, "tsn")
    with pytest.raises(EpicInputError) as info:  # into an RGB model
        _load(ActionModel(arch="resnet18", temporal="tsm", num_frames=8), path, _rgb_fed())
    first = str(info.value).splitlines()[0]
    assert "conv1 takes 10 input channels (flow stacks of 5 (u, v) pairs)" in first
    assert "the model takes 3 (RGB)" in first and "--modality flow --flow-stack 5" in first


@pytest.mark.slow  # two ResNet-50s built and a 100 MB file written
def test_weights_kinetics_reads_the_flow_file_for_a_flow_model(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    path = kinetics_weights_path(10)
    assert path.name == "TSM_kinetics_Flow_resnet50_shift8_blockres_avg_segment8_e50.pth"
    path.parent.mkdir(parents=True)
    net = _authors_flow_file(path, "resnet50")
    model = ActionModel(arch="resnet50", temporal="tsm", num_frames=8, in_channels=10)
    report = _load(model, "kinetics", _flow_fed())
    assert report.source == str(path) and report.layout == "tsm"
    _assert_backbone_is(model, net)


def test_weights_kinetics_names_the_flow_file_and_its_login_node_command(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    assert kinetics_weights_path() == kinetics_weights_path(3)
    assert kinetics_weights_path(3).name == Path(KINETICS_TSM_URL).name
    assert kinetics_weights_path(10).name == Path(KINETICS_TSM_FLOW_URL).name
    assert KINETICS_TSM_FLOW_URL == (
        "https://hanlab.mit.edu/projects/tsm/models/"
        "TSM_kinetics_Flow_resnet50_shift8_blockres_avg_segment8_e50.pth"
    )  # C1 src/models/tsm.py; the TSM README links the same name on hanlab18.mit.edu
    rgb_name, flow_name = Path(KINETICS_TSM_URL).name, Path(KINETICS_TSM_FLOW_URL).name
    like_rgb = FETCH_KINETICS_COMMAND.replace(KINETICS_TSM_URL, KINETICS_TSM_FLOW_URL)
    assert like_rgb.replace(rgb_name, flow_name) == FETCH_KINETICS_FLOW_COMMAND
    model = ActionModel(arch="resnet50", temporal="tsm", num_frames=8, in_channels=10)
    with pytest.raises(EpicInputError) as info:
        _load(model, "kinetics", _flow_fed())
    message = str(info.value)
    assert str(kinetics_weights_path(10)) in message and "(flow)" in message
    assert FETCH_KINETICS_FLOW_COMMAND in message and FETCH_KINETICS_COMMAND not in message
    model = ActionModel(arch="resnet50", temporal="tsm", num_frames=8, in_channels=6)
    with pytest.raises(EpicInputError, match="takes stacks of 5 \\(u, v\\) pairs") as info:
        _load(model, "kinetics", _flow_fed(stack=3))
    assert "--flow-stack 5" in str(info.value)
    with pytest.raises(EpicInputError, match="--recipe tsm-r50-flow"):
        _load(ActionModel(arch="resnet50", in_channels=10), "kinetics", _flow_fed())


@pytest.mark.slow  # a Python subprocess that imports torch: about 2 s
def test_the_kinetics_flow_fetch_command_fills_the_path_the_loader_reads(tmp_path, monkeypatch):
    home = tmp_path / "torch-home"
    source = tmp_path / "served.pth"
    source.write_bytes(b"the authors' flow file")
    command = FETCH_KINETICS_FLOW_COMMAND.replace(KINETICS_TSM_FLOW_URL, source.as_uri())
    assert command.startswith('python -c "') and command.endswith('"')
    env = {**os.environ, "TORCH_HOME": str(home)}
    subprocess.run([sys.executable, "-c", command[len('python -c "') : -1]], env=env, check=True)
    monkeypatch.setenv("TORCH_HOME", str(home))
    assert kinetics_weights_path(10).read_bytes() == b"the authors' flow file"


def test_the_readme_login_node_block_fetches_the_kinetics_flow_file():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("# pretrained weights:", 1)[1].split("```", 1)[0]
    assert FETCH_KINETICS_FLOW_COMMAND in block and FETCH_KINETICS_COMMAND in block


# ----------------------------------------------------------------------------- refusals


def _epic_train_file(path: Path, model: ActionModel, spec: InputSpec) -> Path:
    from train.checkpoint import CHECKPOINT_KEYS, save_checkpoint

    state = dict.fromkeys(CHECKPOINT_KEYS, {})
    state.update(model=model.state_dict(), epoch=3, step=0, best_metric=1.0,
                 input_spec=spec.to_dict())  # fmt: skip
    return save_checkpoint(state, path)


@pytest.mark.parametrize(
    ("file_channels", "model_channels", "names"),
    [
        (3, 10, ("3 input channels (RGB)", "takes 10 (flow stacks of 5", "--modality rgb")),
        (
            10,
            3,
            (
                "10 input channels (flow stacks of 5",
                "takes 3 (RGB)",
                "--modality flow --flow-stack 5",
            ),
        ),
        (
            10,
            6,
            ("10 input channels", "takes 6 (flow stacks of 3", "--modality flow --flow-stack 5"),
        ),
    ],
)
def test_an_epic_train_checkpoint_of_another_channel_count_is_refused(
    tmp_path, file_channels, model_channels, names
):
    torch.manual_seed(7)
    spec = _rgb_fed() if file_channels == 3 else _flow_fed(file_channels // 2)
    path = _epic_train_file(tmp_path / "best.pt", ActionModel(in_channels=file_channels), spec)
    model = ActionModel(in_channels=model_channels)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fed = _rgb_fed() if model_channels == 3 else _flow_fed(model_channels // 2)
    with pytest.raises(EpicInputError) as info:
        _load(model, path, fed)
    first = str(info.value).splitlines()[0]
    assert all(name in first for name in names), first
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched


def test_a_flow_epic_train_checkpoint_loads_into_a_flow_model(tmp_path):
    torch.manual_seed(8)
    source = ActionModel(in_channels=10)
    path = _epic_train_file(tmp_path / "best.pt", source, _flow_fed())
    model = ActionModel(in_channels=10)
    report = _load(model, path, _flow_fed())
    assert report.layout == "epic-train" and report.missing == []
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_a_torchvision_file_of_neither_3_nor_the_model_s_channels_is_refused(tmp_path):
    state = _torchvision_resnet().state_dict()
    state["conv1.weight"] = torch.zeros(64, 4, 7, 7)
    torch.save(state, tmp_path / "rgbd.pth")
    with pytest.raises(EpicInputError, match="conv1 takes 4 input channels \\(flow stacks of 2"):
        _load(ActionModel(in_channels=10), tmp_path / "rgbd.pth", _flow_fed())


def test_a_c1_flow_file_sets_the_flow_input_spec_and_refuses_an_rgb_model(tmp_path):
    base = {f"model.base_model.{k}": v for k, v in _torchvision_resnet().state_dict().items()}
    base["model.base_model.conv1.weight"] = torch.randn(64, 10, 7, 7)
    del base["model.base_model.fc.weight"], base["model.base_model.fc.bias"]
    head = {"model.new_fc.weight": torch.randn(397, 512), "model.new_fc.bias": torch.randn(397)}
    path = tmp_path / "tsn_flow.ckpt"
    torch.save({"epoch": 79, "state_dict": {**base, **head}}, path)
    model = ActionModel(in_channels=10)
    report = _load(model, path, _flow_fed())
    assert report.layout == "c1" and report.missing == []
    assert report.spec == InputSpec("flow", "uv" * 5, (0.5,), (0.226,), 0, 224, 8, "tsn")
    assert torch.equal(model.backbone.conv1.weight, base["model.base_model.conv1.weight"])
    with pytest.raises(EpicInputError, match="conv1 takes 10 input channels"):
        _load(ActionModel(), path, _rgb_fed())
    from train.weights import model_for_file, read_file

    scored, spec, layout = model_for_file(path, read_file(path))  # epic-validate's C1 path
    assert (scored.in_channels, layout, spec.modality) == (10, "c1", "flow")


# ----------------------------------------------------------------------------- recipes


#: C1's configs/tsn_flow.yaml and tsm_flow.yaml, read by hand: what the recipes must hold.
C1_FLOW_VALUES = {
    "modality": "flow",
    "flow_stack": 5,
    "arch": "resnet50",
    "partial_bn": True,
    "optimizer": "sgd",
    "lr": 0.01,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "grad_clip": 20.0,
    "scheduler": "step",
    "lr_steps": "20,40",
    "lr_gamma": 0.1,
    "epochs": 80,
    "dropout": 0.7,
    "num_frames": 8,
    "crop_size": 224,
    "train_crop": "multiscale",
}
C1_FLOW_RECIPES = {
    "tsn-r50-flow": (
        "tsn_flow.yaml",
        {"temporal": "avg", "batch_size": 128, "weights": "imagenet"},
    ),
    "tsm-r50-flow": ("tsm_flow.yaml", {"temporal": "tsm", "batch_size": 64, "weights": "kinetics"}),
}


def test_the_flow_recipes_hold_c1_s_values_and_published_numbers():
    for name, (_, own) in C1_FLOW_RECIPES.items():
        options = RECIPES[name].options
        assert {k: options[k] for k in {**C1_FLOW_VALUES, **own}} == {**C1_FLOW_VALUES, **own}
        assert "norm" not in options  # flow's mean 0.5, std 0.226 are fixed by the modality
    assert "22.86%" in RECIPES["tsn-r50-flow"].expected  # C1 README model zoo, TSN Flow
    assert "27.79%" in RECIPES["tsm-r50-flow"].expected  # TSM Flow
    # As C1's YAMLs: each flow recipe is its RGB one but for the input.
    for flow, rgb in (("tsn-r50-flow", "tsn-r50"), ("tsm-r50-flow", "tsm-r50")):
        a, b = RECIPES[flow].options, RECIPES[rgb].options
        assert {k for k in {**a, **b} if a.get(k) != b.get(k)} == {"modality", "flow_stack"}
        assert RECIPES[flow].store_keeps == RECIPES[rgb].store_keeps


def _c1_config(name: str) -> dict:
    given = os.environ.get(C1_REPO_VAR)
    repo = Path(given) if given else C1_MIRROR
    if not repo.exists():
        pytest.skip(
            f"no clone of C1-Action-Recognition-TSN-TRN-TSM at {repo}: set {C1_REPO_VAR} to "
            "one to compare the recipes with its configs (the constants are checked anyway)"
        )
    shown = subprocess.run(["git", "-C", str(repo), "show", f"{C1_COMMIT}:configs/{name}"],
                           capture_output=True, text=True, check=False)  # fmt: skip
    if shown.returncode != 0:
        pytest.skip(f"{repo} has no {C1_COMMIT[:8]}:configs/{name}: {shown.stderr.strip()}")
    return yaml.safe_load(shown.stdout)


@pytest.mark.parametrize("recipe", list(C1_FLOW_RECIPES))
def test_the_flow_recipes_equal_c1_s_yaml(recipe):
    config = _c1_config(C1_FLOW_RECIPES[recipe][0])
    data, model, learning = config["data"], config["model"], config["learning"]
    from_yaml = {
        "modality": config["modality"].lower(),
        "flow_stack": data["segment_length"],
        "num_frames": data["frame_count"],
        "crop_size": data["preprocessing"]["input_size"],
        "arch": model["backbone"],
        "temporal": {"TSN": "avg", "TSM": "tsm"}[model["type"]],
        "weights": model["pretrained"],
        "dropout": model["dropout"],
        "partial_bn": model["partial_bn"],
        "batch_size": learning["batch_size"],
        "optimizer": learning["optimizer"]["type"].lower(),
        "momentum": learning["optimizer"]["momentum"],
        "weight_decay": float(learning["optimizer"]["weight_decay"]),  # YAML 1.1 reads 5e-4 as text
        "lr": learning["lr"],
        "lr_gamma": learning["lr_scheduler"]["gamma"],
        "lr_steps": ",".join(str(e) for e in learning["lr_scheduler"]["epochs"]),
        "grad_clip": float(config["trainer"]["gradient_clip_val"]),
        "epochs": config["trainer"]["max_epochs"],
    }
    options = RECIPES[recipe].options
    assert {k: options[k] for k in from_yaml} == from_yaml
    assert learning["lr_scheduler"]["type"] == "StepLR" and options["scheduler"] == "step"
    assert (data["preprocessing"]["mean"], data["preprocessing"]["std"]) == ([0.5], [0.226])
    assert tuple(map(tuple, (data["preprocessing"]["mean"], data["preprocessing"]["std"]))) == (
        FLOW_NORM
    )
    assert data["train_augmentation"]["multiscale_crop_scales"] == [1, 0.875, 0.75]
    assert options["train_crop"] == "multiscale"  # whose flow scales are those


def test_seed_recipe_with_flow_input_and_the_command_line_over_a_flow_recipe(caplog):
    paths = {"store": "-", "annotations": "-", "output_dir": "-"}
    resolved = resolve_options({}, {"recipe": "seed-r18", "modality": "flow"})
    cfg = TrainConfig(**paths, **resolved)
    assert (cfg.recipe, cfg.arch, cfg.modality, cfg.input_channels) == (
        "seed-r18",
        "resnet18",
        "flow",
        10,
    )
    model = ActionModel(**{**cfg.model_options(), "in_channels": cfg.input_channels})
    assert model.backbone.conv1.in_channels == 10
    with caplog.at_level(logging.INFO, logger="train.recipes"):
        resolved = resolve_options({}, {"recipe": "tsn-r50-flow", "modality": "rgb"})
    assert resolved["modality"] == "rgb" and resolved["batch_size"] == 128  # the line wins
    assert "recipe tsn-r50-flow is for flow input; modality rgb given" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="train.recipes"):
        resolved = resolve_options({}, {"recipe": "tsm-r50-flow", "flow_stack": 5})
    assert resolved["modality"] == "flow" and caplog.text == ""
    cfg = TrainConfig(**paths, **resolved)
    assert cfg.input_channels == 10 and cfg.temporal == "tsm" and cfg.weights == "kinetics"
