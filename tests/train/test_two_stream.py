"""Two streams end to end (issue 23): a mini-EPIC with its optical flow tars, an RGB store and
a flow store, a stream trained on each, both scored, and the two fused; the fused metrics
must equal an independent fusion of the two prediction files, and each stream refuses the
other's store.

One module fixture builds everything (a 3-video mini-EPIC at 160x90, two stores, two
1-epoch CPU runs: about a minute on 2 cores).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from epicdata.errors import ExitCode
from epicdata.synthetic import make_mini_epic
from preprocess.extract import run_shard
from preprocess.plan import plan_store
from train.checkpoint import load_checkpoint
from train.cli import train_main, validate_main
from train.config import TrainConfig
from train.fit import fit

pytestmark = pytest.mark.slow

#: The trainer tests' FAST options (tests/train/conftest.py), smaller crops and one epoch.
SMALLER = dict(crop_size=48, batch_size=4, epochs=1)


def _extract(store: Path, **source: object) -> None:
    manifest = plan_store(store_root=store, shards=1, **source)
    for shard in manifest.shards:
        run_shard(store_root=store, shard_index=shard.index, workers=1)


@pytest.fixture(scope="module")
def streams(tmp_path_factory: pytest.TempPathFactory, fast_options: dict) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("two_stream")
    mini = make_mini_epic(root / "mini", num_videos=3, size=(160, 90), flow=True)
    ann = mini.annotations_dir
    _extract(root / "rgb-store", annotations_dir=ann, videos_root=mini.videos_dir)
    _extract(root / "flow-store", annotations_dir=ann, flow_root=mini.flow_dir, official=False)
    paths = {"annotations": ann, "root": root}
    for name, extra in (("rgb", {}), ("flow", {"modality": "flow", "flow_stack": 2})):
        store, run = root / f"{name}-store", root / f"{name}-run"
        cfg = TrainConfig(
            store=str(store),
            annotations=str(ann),
            output_dir=str(run),
            **{**fast_options, **SMALLER, **extra},
        )
        assert fit(cfg) == 0
        code, out = _validate(
            "--checkpoint", run / "best.pt", "--store", store,
            "--split", "validation", "--output-dir", root / f"{name}-val", annotations=ann,
        )  # fmt: skip
        assert code == 0, out
        paths |= {f"{name}-store": store, f"{name}-run": run, f"{name}-val": root / f"{name}-val"}
    return paths


def _validate(*args: object, annotations: Path) -> tuple[int, str]:
    argv = [str(a) for a in args] + ["--annotations", str(annotations), "--workers", "0"]
    result = CliRunner().invoke(validate_main, argv)
    return result.exit_code, result.output


def _predictions(path: Path) -> dict:
    with open(path, "rb") as handle:
        return pickle.load(handle)


def test_the_flow_checkpoint_records_flow_input(streams) -> None:
    state = load_checkpoint(streams["flow-run"] / "best.pt")
    spec = state["input_spec"]
    assert (spec["modality"], spec["channels"]) == ("flow", "uvuv")
    assert (spec["mean"], spec["std"]) == ([0.5], [0.226])
    assert state["model"]["backbone.conv1.weight"].shape[1] == 4  # 2 pairs x (u, v)


def test_fused_metrics_equal_an_independent_fusion_of_the_two_prediction_files(
    streams, tmp_path: Path
) -> None:
    rgb = streams["rgb-val"] / "predictions.pkl"
    flow = streams["flow-val"] / "predictions.pkl"
    code, out = _validate(
        "--fuse", rgb, flow, "--fuse-weights", "1,1.5", "--split", "validation",
        "--output-dir", tmp_path / "fused", annotations=streams["annotations"],
    )  # fmt: skip
    assert code == 0, out
    # Independently: align the flow rows to the RGB file's narration ids, take the weighted
    # mean in float64, write it as a predictions file and score it as one run.
    a, b = _predictions(rgb), _predictions(flow)
    row = {nid: i for i, nid in enumerate(b["narration_id"])}
    order = np.array([row[nid] for nid in a["narration_id"]])
    mine = {"narration_id": np.asarray(a["narration_id"])}
    for key in ("verb_output", "noun_output"):
        fused = (1.0 * np.float64(a[key]) + 1.5 * np.float64(b[key][order])) / 2.5
        mine[key] = fused.astype(np.float32)
    (tmp_path / "mine.pkl").write_bytes(pickle.dumps(mine))
    code, out = _validate(
        "--predictions", tmp_path / "mine.pkl", "--split", "validation",
        "--output-dir", tmp_path / "mine", annotations=streams["annotations"],
    )  # fmt: skip
    assert code == 0, out
    fused_metrics = json.loads((tmp_path / "fused" / "metrics.json").read_text())
    mine_metrics = json.loads((tmp_path / "mine" / "metrics.json").read_text())
    assert fused_metrics == mine_metrics
    written = _predictions(tmp_path / "fused" / "predictions.pkl")
    assert np.array_equal(written["verb_output"], mine["verb_output"])


@pytest.mark.parametrize("model, store", [("flow", "rgb"), ("rgb", "flow")])
def test_a_checkpoint_refuses_a_store_of_the_other_modality(streams, model, store, tmp_path):
    code, out = _validate(
        "--checkpoint", streams[f"{model}-run"] / "best.pt", "--store", streams[f"{store}-store"],
        "--split", "validation", "--output-dir", tmp_path / "v", annotations=streams["annotations"],
    )  # fmt: skip
    assert code == ExitCode.BAD_INPUT, out
    assert f"is for {model} input" in out and f"{store.upper()} store" in out
    assert not (tmp_path / "v" / "predictions.pkl").exists()


@pytest.mark.parametrize("modality, store", [("rgb", "flow"), ("flow", "rgb")])
def test_training_refuses_a_store_of_the_other_modality(streams, modality, store, tmp_path):
    argv = [
        "--store", streams[f"{store}-store"], "--annotations", streams["annotations"],
        "--output-dir", tmp_path / "run", "--modality", modality, "--weights", "none",
        "--epochs", "1", "--workers", "0",
    ]  # fmt: skip
    result = CliRunner().invoke(train_main, [str(a) for a in argv])
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert f"{store.upper()} store" in result.output and "--modality" in result.output
