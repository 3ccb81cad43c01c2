"""``epic-validate`` on a published checkpoint (C1 model-zoo layout) and the input-spec
check of a checkpoint against the store it is scored on."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from epicdata.errors import ExitCode
from train.checkpoint import load_checkpoint, save_checkpoint, training_state
from train.cli import validate_main
from train.config import TrainConfig
from train.device import make_scaler
from train.fit import build_optimizer, build_scheduler
from train.input_spec import NORMS, run_input_spec
from train.model import ActionModel

pytestmark = pytest.mark.slow


def _c1_lightning_file(model: ActionModel, path: Path) -> None:
    """``model`` as C1's Lightning checkpoints hold it: ``model.base_model.*`` and one
    ``model.new_fc`` of 97 verb then 300 noun outputs (C1 src/systems.py)."""
    state = {f"model.base_model.{k}": v for k, v in model.backbone.state_dict().items()}
    state["model.new_fc.weight"] = torch.cat([model.verb_head.weight, model.noun_head.weight])
    state["model.new_fc.bias"] = torch.cat([model.verb_head.bias, model.noun_head.bias])
    torch.save({"epoch": 79, "global_step": 1, "state_dict": state}, path)


def _epic_train_file(model: ActionModel, cfg: TrainConfig, frame_size: int, path: Path) -> None:
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.0)
    state = training_state(
        model=model,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, kind="cosine", epochs=1, factor=0.5, patience=1),
        scaler=make_scaler(False),
        epoch=1,
        step=0,
        best_metric=0.0,
        config=cfg.to_dict(),
        input_spec=run_input_spec(
            norm=cfg.norm,
            frame_size=frame_size,
            crop_size=cfg.crop_size,
            clip_length=cfg.num_frames,
            sampler=cfg.sampling,
        ).to_dict(),
    )
    save_checkpoint(state, path)


def _validate(checkpoint: Path, mini_store, out: Path, *extra: str):
    args = ["--checkpoint", checkpoint, "--store", mini_store.store, "--workers", "0"]
    args += ["--annotations", mini_store.annotations, "--output-dir", out]
    args += ["--batch-size", "2", "--limit-batches", "1", "--device", "cpu", *extra]
    return CliRunner().invoke(validate_main, [str(a) for a in args])


def _scores(out: Path) -> tuple[np.ndarray, np.ndarray]:
    with (out / "predictions.pkl").open("rb") as handle:
        data = pickle.load(handle)  # written by this test's own run
    return np.asarray(data["verb_output"]), np.asarray(data["noun_output"])


def test_a_c1_model_zoo_file_scores_as_the_same_weights_in_an_epic_train_checkpoint(
    mini_store, tmp_path
):
    # The C1 file's clips are made as C1 made them (8 frames, TSN centres, 224 crops, the
    # ImageNet mean as std); an epic-train checkpoint of the same weights recording that
    # input must give the same scores: the 397-way head is split 97 + 300 in order.
    torch.manual_seed(3)
    model = ActionModel(arch="resnet18", temporal="avg", dropout=0.0).eval()
    for p in [model.verb_head.bias, model.noun_head.bias]:
        torch.nn.init.normal_(p)  # a wrong split of new_fc's rows changes the scores
    _c1_lightning_file(model, tmp_path / "tsn_rgb.ckpt")
    cfg = TrainConfig(
        store=str(mini_store.store),
        annotations=str(mini_store.annotations),
        output_dir="-",
        num_frames=8,
        sampling="tsn",
        crop_size=224,
        norm="epic-c1",
    )
    frame_size = _short_side(mini_store.store)
    _epic_train_file(model, cfg, frame_size, tmp_path / "ours.pt")

    published = _validate(tmp_path / "tsn_rgb.ckpt", mini_store, tmp_path / "c1")
    assert published.exit_code == 0, published.output
    ours = _validate(tmp_path / "ours.pt", mini_store, tmp_path / "ours")
    assert ours.exit_code == 0, ours.output
    for a, b in zip(_scores(tmp_path / "c1"), _scores(tmp_path / "ours"), strict=True):
        assert a.shape[0] == 2 and np.array_equal(a, b)
    assert load_checkpoint(tmp_path / "ours.pt")["input_spec"]["std"] == list(NORMS["epic-c1"][1])


def test_a_kinetics_initialisation_is_refused_for_scoring(mini_store, tmp_path):
    model = ActionModel(arch="resnet18", temporal="tsm")
    state = {f"module.base_model.{k}": v for k, v in model.backbone.state_dict().items()}
    state["module.new_fc.weight"] = torch.zeros(400, model.feature_dim)
    torch.save({"epoch": 50, "state_dict": state}, tmp_path / "kinetics_segment8.pth")
    result = _validate(tmp_path / "kinetics_segment8.pth", mini_store, tmp_path / "out")
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert "without verb and noun heads" in line and "--weights" in line


def test_a_store_of_another_frame_size_is_refused_unless_accepted(mini_store, tmp_path):
    torch.manual_seed(0)
    model = ActionModel(dropout=0.0)
    cfg = TrainConfig(store="s", annotations="a", output_dir="o", num_frames=2, crop_size=32)
    frame_size = _short_side(mini_store.store)
    _epic_train_file(model, cfg, frame_size * 2, tmp_path / "big.pt")
    refused = _validate(tmp_path / "big.pt", mini_store, tmp_path / "out")
    assert refused.exit_code == ExitCode.BAD_INPUT, refused.output
    assert f"frame_size: recorded {frame_size * 2}, this run {frame_size}" in refused.output
    assert "--accept-input-mismatch" in refused.output
    assert not (tmp_path / "out" / "predictions.pkl").exists()
    accepted = _validate(
        tmp_path / "big.pt", mini_store, tmp_path / "out", "--accept-input-mismatch"
    )
    assert accepted.exit_code == 0, accepted.output
    assert (tmp_path / "out" / "predictions.pkl").exists()


def _short_side(store: Path) -> int:
    from epicdata.store import FrameStore

    return FrameStore(store).manifest.params.short_side
