"""--weights, offline: every checkpoint layout people have loads by name (the C1 397-way
head split into 97 verbs + 300 nouns), a backbone of another shape or temporal shift is
refused naming key and shapes, a Lightning file's framework objects are read by the
lenient restricted unpickler and a crafted one runs nothing, missing cache files name
the login-node command, and input the weights were not trained on is refused.

Every file is built here, tiny where possible (ResNet-18), in the layout its writer
produces: torchvision's ``state_dict()``, a transcription of the TSM authors' model
wrapped in ``nn.DataParallel`` (their ``module.`` prefix), and C1's LightningModule
holding the TSM as ``self.model`` inside a Lightning checkpoint dict."""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import pickle
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from epicdata.constants import IMAGENET_MEAN, IMAGENET_STD
from epicdata.errors import EpicInputError
from train.input_spec import InputSpec
from train.model import ActionModel
from train.weights import (
    FETCH_COMMANDS,
    FETCH_KINETICS_COMMAND,
    KINETICS_TSM_URL,
    imagenet_weights_path,
    kinetics_weights_path,
    load_weights,
)

TSM_NAME = "TSM_kinetics_RGB_resnet18_shift8_blockres_avg_segment8_e50.pth"


def _fed(*, std=IMAGENET_STD, clip_length: int = 8) -> InputSpec:
    """What a run feeds: RGB, ImageNet mean, ``std``, 224-px crops of 256-px frames."""
    return InputSpec("rgb", "RGB", IMAGENET_MEAN, tuple(std), 256, 224, clip_length, "tsn")


def _load(model: ActionModel, path: Path | str, fed: InputSpec | None = None, accept=False):
    return load_weights(model, str(path), fed=fed or _fed(), accept_mismatch=accept)


def _torchvision_resnet(arch: str = "resnet18", seed: int = 1) -> torchvision.models.ResNet:
    torch.manual_seed(seed)
    return getattr(torchvision.models, arch)(weights=None)


# ------------------------------------------------ the TSM authors' model, transcribed


class _AuthorsTemporalShift(nn.Module):
    """ops/temporal_shift.py ``TemporalShift``: the wrapped conv is ``self.net``."""

    def __init__(self, net: nn.Module, n_segment: int = 8, n_div: int = 8) -> None:
        super().__init__()
        self.net, self.n_segment, self.fold_div = net, n_segment, n_div


class _AuthorsTSN(nn.Module):
    """ops/models.py ``TSN`` (C1's src/models/tsm.py ``TSM``): ``base_model`` a torchvision
    ResNet whose ``fc`` is a Dropout (dropout > 0), ``new_fc`` the classifier; with
    ``is_shift`` every block's conv1 wrapped ("blockres")."""

    def __init__(self, num_class: int, *, is_shift: bool = True, seed: int = 2) -> None:
        super().__init__()
        self.base_model = _torchvision_resnet(seed=seed)
        if is_shift:  # make_temporal_shift(place="blockres"), n_round 1: every block
            for stage in (self.base_model.layer1, self.base_model.layer2,
                          self.base_model.layer3, self.base_model.layer4):  # fmt: skip
                for block in stage:
                    block.conv1 = _AuthorsTemporalShift(block.conv1)
        feature_dim = self.base_model.fc.in_features
        self.base_model.fc = nn.Dropout(p=0.5)
        self.new_fc = nn.Linear(feature_dim, num_class)
        nn.init.normal_(self.new_fc.bias)  # not C1's zeros: a wrong row split must show


def _tsm_authors_file(tmp_path: Path, *, legacy: bool = False) -> tuple[Path, _AuthorsTSN]:
    """main.py's ``save_checkpoint``: {epoch, arch, state_dict of the DataParallel model,
    optimizer, best_prec1}, Kinetics' 400 classes."""
    net = _AuthorsTSN(400)
    state = {
        "epoch": 50,
        "arch": "resnet18",
        "state_dict": nn.DataParallel(net).state_dict(),
        "best_prec1": 70.5,
    }
    path = tmp_path / TSM_NAME
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    return path, net


# ------------------------------------------------ C1's Lightning files, with fake frameworks


def _fake_frameworks() -> dict[str, types.ModuleType]:
    """Stand-ins for omegaconf and pytorch_lightning (not installed here) whose objects
    pickle as the real ones do: classes under the real module paths."""
    base = types.ModuleType("omegaconf.base")
    dictconfig = types.ModuleType("omegaconf.dictconfig")
    callbacks = types.ModuleType("pytorch_lightning.callbacks")

    class ContainerMetadata:  # a dataclass in omegaconf 2.0
        def __init__(self) -> None:
            self.ref_type = typing.Any
            self.object_type = dict
            self.key_type = typing.Any
            self.element_type = typing.Any
            self.resolver_cache = collections.defaultdict(dict)

    class DictConfig:
        def __init__(self, content: dict) -> None:
            self._metadata = ContainerMetadata()
            self._content = dict(content)

        def __getstate__(self) -> dict:
            return dict(self.__dict__)

        def __setstate__(self, state: dict) -> None:
            self.__dict__.update(state)

    class ModelCheckpoint:
        def __init__(self) -> None:
            self.monitor, self.best_model_path = "val_loss", Path("/ckpt/epoch=79.ckpt")

    for module, cls in [(base, ContainerMetadata), (dictconfig, DictConfig),
                        (callbacks, ModelCheckpoint)]:  # fmt: skip
        cls.__module__, cls.__qualname__ = module.__name__, cls.__name__
        setattr(module, cls.__name__, cls)
    return {
        "omegaconf": types.ModuleType("omegaconf"),
        "omegaconf.base": base,
        "omegaconf.dictconfig": dictconfig,
        "pytorch_lightning": types.ModuleType("pytorch_lightning"),
        "pytorch_lightning.callbacks": callbacks,
    }


@contextlib.contextmanager
def _frameworks_installed() -> Iterator[dict[str, types.ModuleType]]:
    modules = _fake_frameworks()
    assert not set(modules) & set(sys.modules)  # the real ones are not installed here
    sys.modules.update(modules)
    try:
        yield modules
    finally:
        for name in modules:
            del sys.modules[name]


class _C1System(nn.Module):
    """src/systems.py ``EpicActionRecognitionSystem``: the TSM as ``self.model``."""

    def __init__(self) -> None:
        super().__init__()
        self.model = _AuthorsTSN(97 + 300, seed=3)


class _System:
    """Unpickled by ``pickle.load``, it runs a shell command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _c1_file(tmp_path: Path, *, payload: object = None) -> tuple[Path, _C1System]:
    """A PyTorch Lightning 1.1 checkpoint of C1's TSM: its Hydra config as
    ``hyper_parameters`` (a DictConfig), a callback object, MultiStepLR's Counter."""
    system = _C1System()
    with _frameworks_installed() as fake:
        cfg = fake["omegaconf.dictconfig"].DictConfig({"model": {"type": "TSM"}})
        state = {
            "epoch": 79,
            "global_step": 123,
            "pytorch-lightning_version": "1.1.8",
            "state_dict": system.state_dict(),
            "callbacks": {"ModelCheckpoint": fake["pytorch_lightning.callbacks"].ModelCheckpoint()},
            "lr_schedulers": [{"milestones": collections.Counter({20: 1, 40: 1})}],
            "hparams_name": "cfg",
            "hyper_parameters": cfg if payload is None else [cfg, payload],
        }
        path = tmp_path / "tsm_rgb.ckpt"
        torch.save(state, path)
    return path, system


# ----------------------------------------------------------------------------- tests


def test_none_is_random_initialisation_said_aloud(caplog):
    model = ActionModel()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="train.weights"):
        report = _load(model, "none")
    assert (report.layout, report.loaded, report.spec) == ("none", 0, None)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert "random initialisation" in caplog.text


def test_torchvision_state_dict_loads_the_backbone_and_skips_fc(tmp_path, caplog):
    reference = _torchvision_resnet()
    torch.save(reference.state_dict(), tmp_path / "weights.bin")  # the suffix says nothing
    model = ActionModel(arch="resnet18", temporal="avg")
    with caplog.at_level(logging.INFO, logger="train.weights"):
        report = _load(model, tmp_path / "weights.bin")
    own = model.state_dict()
    for key, value in reference.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(own[f"backbone.{key}"], value), key
    assert report.layout == "torchvision" and report.skipped == ["fc.weight", "fc.bias"]
    assert report.loaded == len(reference.state_dict()) - 2
    assert sorted(report.missing) == sorted(k for k in own if k.startswith(("verb_", "noun_")))
    assert report.spec == InputSpec("rgb", "RGB", IMAGENET_MEAN, IMAGENET_STD, 0, 224, 0, "")
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("weights:")]
    assert "torchvision layout" in line and "heads newly initialised" in line


def test_torchvision_weights_into_a_tsm_model_land_in_conv1_net(tmp_path):
    reference = _torchvision_resnet()
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    model = ActionModel(arch="resnet18", temporal="tsm", num_frames=8)
    _load(model, tmp_path / "resnet18.pth")
    blocks = [b for s in (1, 2, 3, 4) for b in getattr(model.backbone, f"layer{s}")]
    theirs = [b for s in (1, 2, 3, 4) for b in getattr(reference, f"layer{s}")]
    for ours, ref in zip(blocks, theirs, strict=True):
        assert torch.equal(ours.conv1.net.weight, ref.conv1.weight)
        assert torch.equal(ours.conv2.weight, ref.conv2.weight)
    assert torch.equal(model.backbone.conv1.weight, reference.conv1.weight)


def test_imagenet_is_the_v1_file_of_the_arch_in_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    # torchvision's V1 files (C1's ImageNet start), not V2's resnet50-11ad3fa6.pth.
    assert imagenet_weights_path("resnet50") == tmp_path / "hub/checkpoints/resnet50-0676ba61.pth"
    assert imagenet_weights_path("resnet18") == tmp_path / "hub/checkpoints/resnet18-f37072fd.pth"
    assert kinetics_weights_path() == tmp_path / "hub/checkpoints" / KINETICS_TSM_URL.split("/")[-1]
    reference = _torchvision_resnet(seed=4)
    imagenet_weights_path("resnet18").parent.mkdir(parents=True)
    torch.save(reference.state_dict(), imagenet_weights_path("resnet18"))
    model = ActionModel(arch="resnet18")
    report = _load(model, "imagenet")
    assert report.layout == "torchvision" and report.source == str(
        imagenet_weights_path("resnet18")
    )
    assert torch.equal(
        model.backbone.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var
    )


def test_missing_imagenet_or_kinetics_file_names_the_path_and_the_login_node_command(
    tmp_path, monkeypatch
):
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    r50_tsm = ActionModel(arch="resnet50", temporal="tsm")
    with pytest.raises(EpicInputError) as info:
        _load(r50_tsm, "imagenet")
    message = str(info.value)
    assert "torchvision.models.resnet50(weights='IMAGENET1K_V1')" in message
    assert FETCH_COMMANDS["resnet50"] in message and f"TORCH_HOME (now {home})" in message
    assert str(home / "hub/checkpoints/resnet50-0676ba61.pth") in message
    with pytest.raises(EpicInputError) as info:
        _load(r50_tsm, "kinetics")
    message = str(info.value)
    assert str(home / "hub/checkpoints" / KINETICS_TSM_URL.split("/")[-1]) in message
    assert FETCH_KINETICS_COMMAND in message and KINETICS_TSM_URL in message
    assert not home.exists()  # nothing downloaded, nothing created


@pytest.mark.parametrize(("arch", "temporal"), [("resnet18", "tsm"), ("resnet50", "avg")])
def test_kinetics_for_another_model_is_refused_naming_the_recipe(
    tmp_path, monkeypatch, arch, temporal
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    kinetics_weights_path().parent.mkdir(parents=True)
    kinetics_weights_path().write_bytes(b"present: refused before it is read")
    with pytest.raises(EpicInputError, match="ResNet-50 with the temporal shift") as info:
        _load(ActionModel(arch=arch, temporal=temporal), "kinetics")
    assert f"{arch} with --temporal {temporal}" in str(info.value)
    assert "--recipe tsm-r50" in str(info.value)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-torch.save"])
def test_tsm_authors_checkpoint_loads_into_a_tsm_model(tmp_path, legacy):
    path, net = _tsm_authors_file(tmp_path, legacy=legacy)
    model = ActionModel(arch="resnet18", temporal="tsm", num_frames=8)
    report = _load(model, path)
    assert report.layout == "tsm"
    assert sorted(report.skipped) == ["new_fc.bias", "new_fc.weight"]  # Kinetics' 400 classes
    own = model.state_dict()
    for key, value in net.base_model.state_dict().items():
        assert torch.equal(own[f"backbone.{key}"], value), key
    assert "backbone.layer3.1.conv1.net.weight" in own
    assert report.spec == InputSpec("rgb", "RGB", IMAGENET_MEAN, IMAGENET_STD, 0, 224, 8, "tsn")


def test_a_tsm_file_into_an_average_pooling_model_is_refused(tmp_path):
    path, _ = _tsm_authors_file(tmp_path)
    with pytest.raises(EpicInputError, match="has a temporal shift") as info:
        _load(ActionModel(arch="resnet18", temporal="avg"), path)
    assert "conv1.net.weight" in str(info.value) and "pass --temporal tsm" in str(info.value)


def test_a_tsm_file_of_8_frames_into_a_4_frame_tsm_run_is_refused(tmp_path):
    path, _ = _tsm_authors_file(tmp_path)
    model = ActionModel(arch="resnet18", temporal="tsm", num_frames=4)
    before = model.backbone.conv1.weight.clone()
    with pytest.raises(EpicInputError) as info:
        _load(model, path, _fed(clip_length=4))
    message = str(info.value)
    assert "clip_length: recorded 8, this run 4" in message and "--num-frames 8" in message
    assert torch.equal(model.backbone.conv1.weight, before)  # refused before loading


def test_c1_lightning_file_loads_through_the_lenient_unpickler_and_splits_its_head(tmp_path):
    path, system = _c1_file(tmp_path)
    with pytest.raises(pickle.UnpicklingError):  # what makes the lenient loader necessary
        torch.load(path, weights_only=True)
    model = ActionModel(arch="resnet18", temporal="tsm", num_frames=8)
    report = _load(model, path, _fed(std=IMAGENET_MEAN))  # --norm epic-c1
    assert "omegaconf" not in sys.modules and "pytorch_lightning" not in sys.modules
    assert report.layout == "c1" and report.missing == [] and report.skipped == []
    fc = system.model.new_fc
    assert torch.equal(model.verb_head.weight, fc.weight[0:97])
    assert torch.equal(model.verb_head.bias, fc.bias[0:97])
    assert torch.equal(model.noun_head.weight, fc.weight[97:397])
    assert torch.equal(model.noun_head.bias, fc.bias[97:397])
    own = model.state_dict()
    for key, value in system.model.base_model.state_dict().items():
        assert torch.equal(own[f"backbone.{key}"], value), key
    assert report.spec == InputSpec("rgb", "RGB", IMAGENET_MEAN, IMAGENET_MEAN, 0, 224, 8, "tsn")


def test_c1_file_with_an_os_system_payload_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "MARKER"
    path, _ = _c1_file(tmp_path, payload=_System(f"touch {marker}"))
    model = ActionModel(arch="resnet18", temporal="tsm", num_frames=8)
    with pytest.raises(EpicInputError) as info:
        _load(model, path, _fed(std=IMAGENET_MEAN))
    assert f"{os.system.__module__}.system" in str(info.value)  # posix.system on Linux
    assert "refused before any of it ran" in str(info.value)
    assert not marker.exists()


def test_c1_file_into_a_run_with_imagenet_std_is_refused_unless_accepted(tmp_path, caplog):
    path, system = _c1_file(tmp_path)
    model = ActionModel(arch="resnet18", temporal="tsm", num_frames=8)
    with pytest.raises(EpicInputError) as info:
        _load(model, path, _fed())  # --norm imagenet
    message = str(info.value)
    assert "std: recorded [0.485, 0.456, 0.406], this run [0.229, 0.224, 0.225]" in message
    assert "--norm epic-c1" in message and "--accept-input-mismatch" in message
    with caplog.at_level(logging.WARNING, logger="train.input_spec"):
        report = _load(model, path, _fed(), accept=True)
    assert report.layout == "c1"
    assert torch.equal(model.noun_head.weight, system.model.new_fc.weight[97:])
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "--accept-input-mismatch" in warning.getMessage()
    assert "[0.229, 0.224, 0.225]" in warning.getMessage()


def test_a_resnet18_file_into_a_resnet50_model_is_refused_naming_key_and_shapes(tmp_path):
    torch.save(_torchvision_resnet("resnet18").state_dict(), tmp_path / "r18.pth")
    model = ActionModel(arch="resnet50")
    before = model.backbone.conv1.weight.clone()
    with pytest.raises(EpicInputError) as info:
        _load(model, tmp_path / "r18.pth")
    first = str(info.value).splitlines()[0]
    assert "backbone.layer1.0.conv1.weight: file (64, 64, 3, 3), model (64, 64, 1, 1)" in first
    assert torch.equal(model.backbone.conv1.weight, before)  # nothing half-loaded


def test_a_file_with_more_or_fewer_backbone_keys_is_refused(tmp_path):
    state = _torchvision_resnet("resnet18").state_dict()
    torch.save({**state, "layer1.2.conv1.weight": torch.zeros(64, 64, 3, 3)}, tmp_path / "more.pth")
    with pytest.raises(EpicInputError, match=r"backbone\.layer1\.2\.conv1\.weight of the file"):
        _load(ActionModel(), tmp_path / "more.pth")
    del state["layer4.1.bn2.weight"]
    torch.save(state, tmp_path / "fewer.pth")
    with pytest.raises(
        EpicInputError, match=r"backbone\.layer4\.1\.bn2\.weight of the model is missing"
    ):
        _load(ActionModel(), tmp_path / "fewer.pth")


def _epic_train_file(tmp_path: Path, model: ActionModel, spec: InputSpec) -> Path:
    from train.checkpoint import CHECKPOINT_KEYS, save_checkpoint

    state = dict.fromkeys(CHECKPOINT_KEYS, {})
    state.update(model=model.state_dict(), epoch=3, step=0, best_metric=1.0,
                 input_spec=spec.to_dict())  # fmt: skip
    return save_checkpoint(state, tmp_path / "best.pt")


def test_epic_train_checkpoint_loads_the_whole_model_strictly(tmp_path):
    torch.manual_seed(5)
    source = ActionModel(arch="resnet18", temporal="tsm", num_frames=8)
    spec = _fed()
    path = _epic_train_file(tmp_path, source, spec)
    model = ActionModel(arch="resnet18", temporal="tsm", num_frames=8)
    report = _load(model, path)
    assert (report.layout, report.missing, report.skipped, report.spec) == (
        "epic-train",
        [],
        [],
        spec,
    )
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    with pytest.raises(EpicInputError, match="has a temporal shift"):
        _load(ActionModel(arch="resnet18", temporal="avg"), path)
    source_avg = ActionModel(arch="resnet18", temporal="avg")
    path = _epic_train_file(tmp_path, source_avg, spec)
    with pytest.raises(EpicInputError, match="has no temporal shift.*pass --temporal avg"):
        _load(model, path)
    torch.save(source.state_dict(), tmp_path / "not-a-checkpoint.pt")  # a bare state dict
    with pytest.raises(EpicInputError, match="not a layout it reads"):
        _load(model, tmp_path / "not-a-checkpoint.pt")


def test_a_damaged_epic_train_checkpoint_is_refused_and_leaves_the_model_untouched(tmp_path):
    # The file is read once to tell its layout; its digest must still be checked.
    torch.manual_seed(6)
    source = ActionModel()
    path = _epic_train_file(tmp_path, source, _fed())
    state = torch.load(path, weights_only=True)
    state["model"]["backbone.conv1.weight"][0, 0, 0, 0] += 1.0  # one weight, digest kept
    torch.save(state, path)
    model = ActionModel()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(EpicInputError, match="does not match its digest"):
        _load(model, path)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_unreadable_or_absent_files_are_named(tmp_path):
    path = tmp_path / "cut.pth"
    torch.save(_torchvision_resnet().state_dict(), path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(EpicInputError, match=f"--weights {path}: cannot read it"):
        _load(ActionModel(), path)
    with pytest.raises(EpicInputError, match="no such file"):
        _load(ActionModel(), tmp_path / "absent.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(EpicInputError, match="not a layout it reads \\(a list\\)"):
        _load(ActionModel(), tmp_path / "list.pth")


@pytest.mark.slow  # a Python subprocess that imports torch: about 2 s
def test_the_kinetics_fetch_command_fills_the_path_the_loader_reads(tmp_path, monkeypatch):
    # Run as written, but from a local file:// copy instead of the authors' server.
    import subprocess

    home = tmp_path / "torch-home"
    source = tmp_path / "served.pth"
    source.write_bytes(b"the authors' file")
    command = FETCH_KINETICS_COMMAND.replace(KINETICS_TSM_URL, source.as_uri())
    assert command.startswith('python -c "') and command.endswith('"')
    env = {**os.environ, "TORCH_HOME": str(home)}
    subprocess.run([sys.executable, "-c", command[len('python -c "') : -1]], env=env, check=True)
    monkeypatch.setenv("TORCH_HOME", str(home))
    assert kinetics_weights_path().read_bytes() == b"the authors' file"


def test_the_readme_login_node_block_fetches_every_file_the_recipes_read():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("# pretrained weights:", 1)[1].split("```", 1)[0]
    for command in (FETCH_COMMANDS["resnet18"], FETCH_COMMANDS["resnet50"], FETCH_KINETICS_COMMAND):
        assert command in block


def test_a_c1_file_whose_new_fc_is_not_97_plus_300_is_refused(tmp_path):
    # C1's TRN: new_fc maps to its consensus' 256 features; the classifier is elsewhere.
    base = {f"model.base_model.{k}": v for k, v in _torchvision_resnet().state_dict().items()}
    state = {**base, "model.new_fc.weight": torch.zeros(256, 512)}
    torch.save({"epoch": 1, "state_dict": state}, tmp_path / "trn_rgb.ckpt")
    with pytest.raises(EpicInputError, match="new_fc.weight has 256 outputs, not 97 verbs"):
        _load(ActionModel(), tmp_path / "trn_rgb.ckpt")


@pytest.mark.parametrize(
    "refused", ["builtins eval", "os system", "subprocess Popen", "omegaconfx DictConfig"]
)
def test_the_lenient_unpickler_stubs_only_its_framework_modules(tmp_path, refused):
    from train.safe_pickle import InertStub, RefusedGlobal, load_file

    marker = str(tmp_path / "MARKER").encode()
    call = b"c%s\n%s\n(S'touch %s'\ntR." % (*refused.encode().split(), marker)
    (tmp_path / "refused.pkl").write_bytes(call)
    with pytest.raises(RefusedGlobal, match=refused.replace(" ", ".")):
        load_file(tmp_path / "refused.pkl", lenient=True)
    (tmp_path / "stub.pkl").write_bytes(b"comegaconf.nodes\nAnyNode\n(S'touch MARKER'\ntR.")
    stub = load_file(tmp_path / "stub.pkl", lenient=True)
    assert isinstance(stub, InertStub) and stub.args == ("touch MARKER",)
    with pytest.raises(RefusedGlobal, match="omegaconf.nodes.AnyNode"):  # strict: unchanged
        load_file(tmp_path / "stub.pkl")
    assert not Path(marker.decode()).exists() and "omegaconf" not in sys.modules
