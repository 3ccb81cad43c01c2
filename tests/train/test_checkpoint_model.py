"""Model shapes, weights loading, and checkpoints: plain data, atomic, strict resume."""

from __future__ import annotations

import pytest
import torch

from epicdata.errors import EpicInputError
from train.checkpoint import CHECKPOINT_VERSION, load_checkpoint, resume, save_checkpoint
from train.config import TrainConfig
from train.device import make_scaler
from train.fit import build_optimizer, build_scheduler
from train.input_spec import run_input_spec
from train.model import ActionModel
from train.weights import FETCH_COMMANDS, imagenet_weights_path, load_weights

#: What a seed-r18 run feeds, for ``load_weights``.
FED = run_input_spec(
    norm="imagenet", frame_size=256, crop_size=224, clip_length=8, sampler="linspace"
)


def _parts(scheduler: str = "plateau"):
    torch.manual_seed(0)
    model = ActionModel(dropout=0.3)
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=1e-4)
    sched = build_scheduler(optimizer, kind=scheduler, epochs=3, factor=0.5, patience=3)
    return model, optimizer, sched, make_scaler(False)


def _state(model, optimizer, scheduler, scaler) -> dict:
    cfg = TrainConfig(store="s", annotations="a", output_dir="o")
    return {
        "format_version": CHECKPOINT_VERSION,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": 2,
        "step": 0,
        "best_metric": 12.5,
        "config": cfg.to_dict(),
        "input_spec": run_input_spec(
            norm="imagenet", frame_size=256, crop_size=224, clip_length=8, sampler="linspace"
        ).to_dict(),
    }


def _as_format(state: dict, version: int) -> dict:
    """``state`` as releases before format 3 wrote it: a normalization record, no spec."""
    old = {k: v for k, v in state.items() if k != "input_spec"}
    spec = state.get("input_spec") or {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    return {
        **old,
        "format_version": version,
        "normalization": {k: spec[k] for k in ("mean", "std")},
    }


def test_model_maps_clips_to_verb_and_noun_logits():
    model = ActionModel(dropout=0.3).eval()
    verb, noun = model(torch.randn(2, 3, 3, 32, 32))  # (B, T, C, H, W)
    assert verb.shape == (2, 97) and noun.shape == (2, 300)


def test_checkpoint_is_plain_data_and_resume_restores_everything(tmp_path):
    model, optimizer, scheduler, scaler = _parts()
    loss = sum(o.sum() for o in model(torch.randn(2, 2, 3, 32, 32)))
    loss.backward()
    optimizer.step()
    scheduler.step(3.0)
    path = save_checkpoint(_state(model, optimizer, scheduler, scaler), tmp_path / "last.pt")
    assert not list(tmp_path.glob(".*tmp"))  # the temp file was renamed into place
    state = torch.load(path, weights_only=True)  # plain data: no pickled code
    assert state["config"]["batch_size"] == 32 and state["input_spec"]["std"][0] == 0.229

    fresh, fresh_opt, fresh_sched, fresh_scaler = _parts()
    restored = resume(
        path, model=fresh, optimizer=fresh_opt, scheduler=fresh_sched, scaler=fresh_scaler
    )
    assert restored["epoch"] == 2 and restored["best_metric"] == 12.5
    for key, value in model.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key]), key
    assert fresh_sched.state_dict()["best"] == scheduler.state_dict()["best"]
    assert fresh_opt.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]


def test_resume_refuses_leftover_or_missing_keys(tmp_path):
    model, optimizer, scheduler, scaler = _parts()
    state = _state(model, optimizer, scheduler, scaler)
    leftover = dict(state, model={**state["model"], "extra_head.weight": torch.zeros(1)})
    save_checkpoint(leftover, tmp_path / "leftover.pt")
    with pytest.raises(EpicInputError, match="extra_head"):
        resume(
            tmp_path / "leftover.pt",
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
        )
    missing = {k: v for k, v in state.items() if k != "scaler"}
    torch.save(_as_format(missing, 1), tmp_path / "missing.pt")
    with pytest.raises(EpicInputError, match="missing keys \\['scaler'\\]"):
        load_checkpoint(tmp_path / "missing.pt")
    _, _, cosine, _ = _parts("cosine")
    save_checkpoint(state, tmp_path / "plateau.pt")
    with pytest.raises(EpicInputError, match="same --scheduler"):
        resume(
            tmp_path / "plateau.pt",
            model=model,
            optimizer=optimizer,
            scheduler=cosine,
            scaler=scaler,
        )


def test_imagenet_weights_missing_names_the_login_node_command(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(EpicInputError) as excinfo:
        load_weights(ActionModel(), "imagenet", fed=FED, accept_mismatch=False)
    message = str(excinfo.value)
    assert FETCH_COMMANDS["resnet18"] in message and str(tmp_path / "torch-home") in message


def test_imagenet_weights_load_from_the_torch_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(1)
    reference = ActionModel().backbone
    path = imagenet_weights_path("resnet18")
    path.parent.mkdir(parents=True)
    # A torchvision-format state dict, fc included (the loader drops it).
    state = {
        **reference.state_dict(),
        "fc.weight": torch.zeros(1000, 512),
        "fc.bias": torch.zeros(1000),
    }
    torch.save(state, path)
    model = ActionModel()
    load_weights(model, "imagenet", fed=FED, accept_mismatch=False)
    assert torch.equal(model.backbone.conv1.weight, reference.conv1.weight)


def test_weights_file_that_does_not_fit_is_a_clear_error(tmp_path):
    def load(name: str) -> None:
        load_weights(ActionModel(), str(tmp_path / name), fed=FED, accept_mismatch=False)

    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(EpicInputError, match="not a layout it reads"):
        load("bad.pth")
    resnet_keys = {"conv1.weight": torch.zeros(1), "layer1.0.conv1.weight": torch.zeros(1)}
    torch.save(resnet_keys, tmp_path / "bad_shapes.pth")
    with pytest.raises(EpicInputError, match="does not match the resnet18 --temporal avg model"):
        load("bad_shapes.pth")
    with pytest.raises(EpicInputError, match="no such file"):
        load("absent.pth")


def test_every_config_field_carries_its_cli_help_type_and_bounds() -> None:
    # The CLI is built from the fields: a new field (e.g. typed `float | None`) needs no table.
    from dataclasses import fields

    from click.testing import CliRunner

    from train.cli import train_main

    options = {o.name: o for o in train_main.params}
    for field in fields(TrainConfig):
        if field.name in ("store", "annotations", "output_dir"):
            continue
        assert field.metadata["help"], field.name
        assert options[field.name].default == field.default, field.name
    # Regression: --workers had no range check, and the slurm scripts could pass -1.
    result = CliRunner().invoke(train_main, ["--store", ".", "--annotations", ".",
                                             "--output-dir", "x", "--workers", "-1"])  # fmt: skip
    assert result.exit_code == 2 and "--workers" in result.output
    with pytest.raises(EpicInputError, match="workers=-1: must be >= 0"):
        TrainConfig(store=".", annotations=".", output_dir="x", workers=-1)


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint_and_leaves_no_temp(tiny_tmpfs):
    # Regression: `RuntimeError: basic_ios::clear` and a 125 MB .best.pt.PID.tmp left behind.
    from epicdata.errors import OutOfSpaceError

    small = {"format_version": CHECKPOINT_VERSION, "weights": torch.zeros(10)}
    path = tiny_tmpfs / "last.pt"
    torch.save(small, path)
    before = path.read_bytes()
    model = torch.nn.Linear(300, 300)  # 361 KB of weights: more than the 64 KiB disk
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.0)
    scheduler = build_scheduler(optimizer, kind="plateau", epochs=3, factor=0.5, patience=3)
    big = _state(model, optimizer, scheduler, make_scaler(False))
    with pytest.raises(OutOfSpaceError, match="no room to save last.pt"):
        save_checkpoint(big, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tiny_tmpfs.iterdir()) == ["last.pt"]


def test_format_1_checkpoints_without_a_digest_still_load(tmp_path):
    model, optimizer, scheduler, scaler = _parts()
    state = _state(model, optimizer, scheduler, scaler)
    torch.save(_as_format(state, 1), tmp_path / "v1.pt")
    assert load_checkpoint(tmp_path / "v1.pt")["epoch"] == 2
    saved = torch.load(save_checkpoint(state, tmp_path / "v3.pt"), weights_only=True)
    assert saved["format_version"] == CHECKPOINT_VERSION == 3 and len(saved["digest"]) == 64
    assert load_checkpoint(tmp_path / "v3.pt")["epoch"] == 2


def test_older_checkpoints_load_with_the_old_input_defaults_and_one_warning(tmp_path, caplog):
    from train.checkpoint import checkpoint_input_spec, content_digest

    state = _state(*_parts())
    v2 = _as_format(state, 2)
    torch.save({**v2, "digest": content_digest(v2)}, tmp_path / "v2.pt")
    loaded = load_checkpoint(tmp_path / "v2.pt")  # the digest of format 2 is still checked
    with caplog.at_level("WARNING"):
        spec = checkpoint_input_spec(loaded, tmp_path / "v2.pt")
        again = checkpoint_input_spec(loaded, tmp_path / "v2.pt")
    assert spec == again
    assert spec.std == (0.229, 0.224, 0.225) and spec.mean == (0.485, 0.456, 0.406)
    assert (spec.modality, spec.channels, spec.frame_size) == ("rgb", "RGB", 0)
    assert (spec.crop_size, spec.clip_length, spec.sampler) == (224, 8, "linspace")
    warnings = [r for r in caplog.records if "without an input spec" in r.getMessage()]
    assert len(warnings) == 1 and "v2.pt" in warnings[0].getMessage()
    flipped = {**v2, "digest": content_digest(v2)[::-1]}
    torch.save(flipped, tmp_path / "v2-damaged.pt")
    with pytest.raises(EpicInputError, match="does not match its digest"):
        load_checkpoint(tmp_path / "v2-damaged.pt")


def test_evaluation_logits_are_float32_even_under_bf16_autocast():
    # bf16 logits (8 mantissa bits) manufacture ties that the official ranking orders
    # arbitrarily: the heads run in float32, outside autocast.
    import numpy as np

    from train.device import Precision
    from train.distributed import DistInfo
    from train.engine import evaluate
    from train.transforms import DeviceAugment

    torch.manual_seed(0)
    model = ActionModel(dropout=0.0)
    frames = torch.randint(0, 256, (6, 2, 3, 32, 32), dtype=torch.uint8)
    loader = [{"frames": frames, "index": torch.arange(6)}]
    augment = DeviceAugment((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    preds = evaluate(
        model, loader, augment=augment, precision=Precision("cpu", torch.bfloat16, enabled=True),
        device=torch.device("cpu"), info=DistInfo(),
    )  # fmt: skip
    logits = torch.from_numpy(preds.verb_logits)
    assert logits.dtype == torch.float32
    assert (logits != logits.to(torch.bfloat16).float()).any()  # not bf16-rounded
    assert np.isfinite(preds.noun_logits).all()


# ----------------------------------------------------------------------------- damage


def _rename_key(path, old: bytes, new: bytes) -> None:
    """Flip the bytes of top-level key ``old`` in a saved checkpoint (its pickled string,
    found in the file) to ``new``, of the same length: the file still loads."""
    # BINUNICODE: how torch.save's pickle (protocol 2) writes a str, its length before it.
    opcode = b"X" + len(old).to_bytes(4, "little")
    data = bytearray(path.read_bytes())
    offset = data.find(opcode + old)
    assert offset > 0 and data.count(opcode + old) == 1
    changed = [i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b]
    for i in changed:
        data[offset + len(opcode) + i] = new[i]
    path.write_bytes(bytes(data))


def _resume_into_fresh(path, *, auto: bool, scheduler: str = "plateau"):
    model, optimizer, sched, scaler = _parts(scheduler)
    return resume(path, model=model, optimizer=optimizer, scheduler=sched, scaler=scaler, auto=auto)


def test_a_flipped_byte_in_a_key_name_is_damage_not_another_release_regression(tmp_path):
    # Regression: `model` -> `motel` in last.pt was "not written by this version of
    # epic-train" (exit 2), and --resume auto did not fall back.
    from train.checkpoint import CheckpointDamagedError, CheckpointReleaseError

    path = save_checkpoint(_state(*_parts()), tmp_path / "last.pt")
    _rename_key(path, b"model", b"motel")
    assert "motel" in torch.load(path, weights_only=True)  # one byte: it still loads
    for auto in (False, True):  # --resume PATH and --resume auto alike: damaged
        with pytest.raises(CheckpointDamagedError) as info:
            _resume_into_fresh(path, auto=auto)
        assert not isinstance(info.value, CheckpointReleaseError)
        first = str(info.value).splitlines()[0]
        assert first.startswith("checkpoint damaged: its content does not match its digest")
        assert str(path) in first and "not written by" not in first


def test_without_a_digest_a_failed_check_is_damage_under_resume_auto_only(tmp_path):
    # Format 1 has no digest, and a byte flipped in the digest's own key leaves none: the
    # key check fails. In the run folder (--resume auto) that is damage, to fall back from;
    # a checkpoint passed by path says what differs and stops.
    from train.checkpoint import CheckpointDamagedError, CheckpointReleaseError

    state = _state(*_parts())
    torch.save(_as_format(state, 1), tmp_path / "v1.pt")
    _rename_key(tmp_path / "v1.pt", b"model", b"motel")
    save_checkpoint(state, tmp_path / "v2.pt")
    _rename_key(tmp_path / "v2.pt", b"digest", b"digesu")
    for name, missing, extra in [("v1.pt", "model", "motel"), ("v2.pt", "digest", "digesu")]:
        path = tmp_path / name
        with pytest.raises(CheckpointReleaseError) as info:
            _resume_into_fresh(path, auto=False)
        first = str(info.value).splitlines()[0]
        assert f"missing keys ['{missing}'], unexpected keys ['{extra}']" in first
        assert "not written by this release of epic-train" in first
        with pytest.raises(CheckpointDamagedError) as info:
            _resume_into_fresh(path, auto=True)
        assert not isinstance(info.value, CheckpointReleaseError)
        first = str(info.value).splitlines()[0]
        assert first.startswith(f"checkpoint damaged: missing keys ['{missing}']")
        assert "falls back to the newest" in first


def test_a_checkpoint_of_another_release_says_so_by_path_and_is_damage_under_auto(tmp_path):
    from train.checkpoint import CheckpointDamagedError, CheckpointReleaseError

    state = _state(*_parts())
    torch.save({**state, "format_version": 4, "digest": "0" * 64}, tmp_path / "v4.pt")
    with pytest.raises(
        CheckpointReleaseError, match="format version 4, this release reads 1, 2, 3"
    ):
        _resume_into_fresh(tmp_path / "v4.pt", auto=False)
    other_model = {**state, "model": torch.nn.Linear(2, 2).state_dict()}  # other shapes
    save_checkpoint(other_model, tmp_path / "linear.pt")
    with pytest.raises(CheckpointReleaseError, match="model state does not match this model"):
        _resume_into_fresh(tmp_path / "linear.pt", auto=False)
    for name in ("v4.pt", "linear.pt"):
        with pytest.raises(CheckpointDamagedError, match="^checkpoint damaged: "):
            _resume_into_fresh(tmp_path / name, auto=True)
    # The scheduler's kind is this run's option, not the checkpoint's damage.
    save_checkpoint(state, tmp_path / "plateau.pt")
    with pytest.raises(EpicInputError, match="same --scheduler") as info:
        _resume_into_fresh(tmp_path / "plateau.pt", auto=True, scheduler="cosine")
    assert not isinstance(info.value, CheckpointDamagedError)


def test_a_temp_file_left_by_a_sigkill_is_removed_at_the_next_start_regression(tmp_path):
    # Regression: `.last.pt.<pid>.tmp` of a process killed while saving (125 MB for the
    # ResNet-18) stayed in the run folder for ever.
    import os
    import signal
    import subprocess
    import sys

    from train.checkpoint import find_resume

    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(_state(*_parts()), run / "last.pt")
    killed_while_saving = (
        "import os, signal, sys, torch\n"
        "from train.checkpoint import CHECKPOINT_KEYS, save_checkpoint\n"
        "def save(obj, path):\n"
        "    open(path, 'wb').write(b'PK' * 1000)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "torch.save = save\n"
        "save_checkpoint(dict.fromkeys(CHECKPOINT_KEYS, 0), sys.argv[1])\n"
    )
    child = subprocess.Popen([sys.executable, "-c", killed_while_saving, str(run / "last.pt")])
    assert child.wait() == -signal.SIGKILL
    leftover = run / f".last.pt.{child.pid}.tmp"
    assert leftover.stat().st_size == 2000
    alive = run / f".best.pt.{os.getpid()}.tmp"  # a writer still running: kept
    alive.write_bytes(b"saving")
    other = run / ".summary.csv.tmp"  # not a checkpoint's: kept
    other.write_bytes(b"rows")
    before = (run / "last.pt").read_bytes()
    assert find_resume(run, "auto") == run / "last.pt"
    assert not leftover.exists() and alive.exists() and other.exists()
    assert (run / "last.pt").read_bytes() == before
