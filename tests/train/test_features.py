"""epic-features: per-segment features equal the model's pooled features of epic-validate's
clips; --per-frame writes RULSTM's LMDB, read back as RULSTM's dataset.py reads it; stores
without the frames and existing output folders are refused; a stopped run resumes to the
same bytes."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch

import train.features as features
from epicdata.annotations import AnnotationDir
from epicdata.dataset import EpicActionDataset, decode_torchvision
from epicdata.store import FrameStore
from train.checkpoint import checkpoint_input_spec, load_checkpoint
from train.config import TrainConfig
from train.features import (
    extract_features,
    frame_clip,
    our_frame,
    rulstm_key,
    rulstm_past_frames,
    rulstm_start_frame,
)
from train.model import ActionModel
from train.transforms import DeviceAugment, EvalClipTransform

BIN = Path(sys.executable).parent


def rulstm_sample_frames_past(point: int, time_step=0.25, sequence_length=14, fps=30):
    """RULSTM/dataset.py ``SequenceDataset.__sample_frames_past`` (fpv-iplab/rulstm
    e648c7ee), line for line: the frames it asks for, the oracle of the tests below."""
    time_stamps = np.arange(time_step, time_step * (sequence_length + 1), time_step)[::-1]
    end_time_stamp = point / fps
    time_stamps = end_time_stamp - time_stamps
    frames = np.floor(time_stamps * fps).astype(int)
    if frames.max() >= 1:
        frames[frames < 1] = frames[frames >= 1].min()
    return frames


def rulstm_read(env, video: str, frames, img_tmpl: str = "frame_{:010d}.jpg") -> np.ndarray:
    """RULSTM/dataset.py ``read_representations`` with its ``__get_frames`` keys."""
    names = [video + "_" + img_tmpl.format(x) for x in frames]
    out = []
    for name in names:
        with env.begin() as e:
            dd = e.get(name.strip().encode("utf-8"))
        assert dd is not None, name
        out.append(np.frombuffer(dd, "float32"))
    return np.array(out)


def nearest_before(rulstm_frame: int, rate: int) -> int:
    """Our last frame at or before the time of RULSTM's 30 fps frame, in exact fractions."""
    t = Fraction(rulstm_frame - 1, 30)
    return max(n for n in range(1, 2 * rate * (int(t) + 2)) if Fraction(n - 1, rate) <= t)


# ----------------------------------------------------------------------- the frame rule


def test_rulstm_past_frames_are_the_ones_its_dataset_asks_for():
    for start in [0, 1, 5, 29, 30, 85, 104, 105, 106, 149, 669, 1000, 123456]:
        ours = rulstm_past_frames(start)
        theirs = rulstm_sample_frames_past(start)
        if theirs.min() >= 1:
            assert ours.tolist() == theirs.tolist(), start
        else:
            assert ours is None, start  # RULSTM discards the segment


def test_rulstm_start_frames_match_its_ek100_csv():
    # data/ek100/test_timestamps.csv (rulstm e648c7ee) vs EPIC_100_test_timestamps.csv
    assert rulstm_start_frame(2.86) == 85  # P01_101_0 00:00:02.86
    assert rulstm_start_frame(4.97) == 149  # P01_101_1 00:00:04.97
    assert rulstm_start_frame(22.31) == 669  # P01_101_10 00:00:22.31
    assert rulstm_start_frame(0.0) == 1  # P01_11_0 00:00:00.00 (validation.csv)


def test_frame_mapping_is_the_last_frame_of_ours_at_or_before_rulstm_s_time():
    for f in range(1, 400):
        assert our_frame(f, 60) == 2 * f - 1 == nearest_before(f, 60)
        assert our_frame(f, 50) == nearest_before(f, 50)


def test_key_and_clip_rules():
    assert rulstm_key("P01_101", 85) == "P01_101_frame_0000000085.jpg"
    assert frame_clip(10, clip_length=1, last_frame=99).tolist() == [10]
    assert frame_clip(10, clip_length=4, last_frame=99).tolist() == [8, 9, 10, 11]
    assert frame_clip(1, clip_length=4, last_frame=99).tolist() == [1, 1, 1, 2]
    assert frame_clip(99, clip_length=5, last_frame=99).tolist() == [97, 98, 99, 99, 99]


# ----------------------------------------------------------------------- with a model


def _model(checkpoint: Path):
    state = load_checkpoint(checkpoint)
    cfg = TrainConfig.from_dict(state["config"])
    model = ActionModel(**cfg.model_options())
    model.load_state_dict(state["model"])
    spec = checkpoint_input_spec(state, checkpoint)
    return model.eval(), cfg, DeviceAugment(spec.mean, spec.std, modality=spec.modality)


def _run(tmp: Path, checkpoint: Path, store: Path, annotations: Path, **kw) -> int:
    options = dict(split="validation", batch_size=2, workers=0, device_name="cpu")
    return extract_features(
        checkpoint=checkpoint, store=store, annotations=annotations, out=tmp, **{**options, **kw}
    )


@pytest.fixture(scope="module")
def checkpoint(trained_run: Path) -> Path:
    return trained_run / "last.pt"


@pytest.mark.slow
def test_segment_features_are_the_models_pooled_features_of_the_eval_clips(
    mini_store, checkpoint, tmp_path
):
    out = tmp_path / "feats"
    assert _run(out, checkpoint, mini_store.store, mini_store.annotations) == 0
    # numpy and csv alone, as docs/features.md shows
    feats = np.load(out / "features.npy")
    with open(out / "narration_ids.csv", newline="") as handle:
        ids = [row["narration_id"] for row in csv.DictReader(handle)]
    table = AnnotationDir(mini_store.annotations).table("validation")
    assert ids == table.narration_ids
    model, cfg, augment = _model(checkpoint)
    assert feats.dtype == np.float32 and feats.shape == (len(table), model.feature_dim)
    dataset = EpicActionDataset(
        FrameStore(mini_store.store),
        table,
        num_frames=cfg.num_frames,
        sampling=cfg.sampling,
        transform=EvalClipTransform(cfg.crop_size),
    )
    with torch.no_grad():
        for i in range(len(table)):
            clip = dataset[i]["frames"][None]  # (1, T, C, S, S) uint8
            expected = model.features(augment(clip, train=False))[0].numpy()
            np.testing.assert_allclose(feats[i], expected, rtol=1e-4, atol=1e-5)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["feature_dim"] == model.feature_dim and meta["rows"] == len(table)
    assert not (out / "chunks").exists()


@pytest.fixture(scope="module")
def full_store(mini_epic, tmp_path_factory) -> Path:
    """The validation videos with every frame (--keep all), as --per-frame needs."""
    from preprocess.extract import run_shard
    from preprocess.plan import plan_store

    store = tmp_path_factory.mktemp("full_store")
    manifest = plan_store(
        store_root=store,
        annotations_dir=mini_epic.annotations_dir,
        videos_root=mini_epic.videos_dir,
        splits=("validation",),
        keep="all",
        shards=1,
    )
    for shard in manifest.shards:
        run_shard(store_root=store, shard_index=shard.index, workers=2)
    return store


@pytest.mark.slow
def test_per_frame_lmdb_reads_back_as_rulstm_reads_it(mini_epic, full_store, checkpoint, tmp_path):
    out = tmp_path / "frames"
    annotations = mini_epic.annotations_dir
    assert _run(out, checkpoint, full_store, annotations, per_frame=True) == 0
    model, cfg, augment = _model(checkpoint)
    store = FrameStore(full_store)
    env = lmdb.open(str(out / "rgb"), readonly=True, lock=False)
    segments = AnnotationDir(annotations).segments("validation")
    checked = 0
    for seg in segments[:6]:
        # RULSTM's CSV start: the official rule at 30 fps
        frames = rulstm_sample_frames_past(max(1, math.floor(seg.start_seconds * 30)))
        assert frames.min() >= 1  # a segment RULSTM keeps
        got = rulstm_read(env, seg.video_id, frames)  # (14, D)
        assert got.shape == (14, model.feature_dim)
        rate = store.video_meta(seg.video_id).rate
        for f, row in zip(frames, got, strict=True):
            ours = nearest_before(int(f), rate)
            jpeg = store.read_frames(seg.video_id, [ours])[0]
            clip = EvalClipTransform(cfg.crop_size)(decode_torchvision(jpeg)[None])[None]
            with torch.no_grad():  # an avg model: the frame's own feature
                expected = model.features(augment(clip, train=False))[0].numpy()
            np.testing.assert_allclose(row, expected, rtol=1e-4, atol=1e-5)
            checked += 1
    assert checked == 6 * 14


@pytest.mark.slow
def test_a_store_without_the_frames_before_actions_is_refused_before_inference(
    mini_store, checkpoint, tmp_path, monkeypatch
):
    def no_inference(*args, **kwargs):
        raise AssertionError("inference started")

    monkeypatch.setattr(features, "run_chunks", no_inference)
    out = tmp_path / "frames"
    with pytest.raises(features.EpicInputError) as caught:
        _run(out, checkpoint, mini_store.store, mini_store.annotations, per_frame=True)
    text = str(caught.value)
    assert "--per-frame needs P" in text and "--keep all" in text and "--margin-frames" in text
    assert not out.exists()


def _stop_after_first_chunk(monkeypatch):
    """SIGUSR1 to this process once the first chunk is saved: the run stops after it."""
    save = features._save_chunk

    def save_then_signal(out, job, index, array):
        save(out, job, index, array)
        if index == 0:
            os.kill(os.getpid(), signal.SIGUSR1)

    monkeypatch.setattr(features, "_save_chunk", save_then_signal)
    monkeypatch.setattr(features, "CHUNK_BATCHES", 1)


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "lock.mdb"
    }


@pytest.mark.slow
@pytest.mark.parametrize("per_frame", [False, True])
def test_a_run_stopped_by_a_signal_resumes_to_the_same_bytes(
    mini_epic, full_store, checkpoint, tmp_path, monkeypatch, per_frame
):
    args = (checkpoint, full_store, mini_epic.annotations_dir)
    monkeypatch.setattr(features, "CHUNK_BATCHES", 1)
    assert _run(tmp_path / "whole", *args, per_frame=per_frame) == 0
    _stop_after_first_chunk(monkeypatch)
    stopped = tmp_path / "stopped"
    assert _run(stopped, *args, per_frame=per_frame) == features.EXIT_REQUEUE
    progress = json.loads((stopped / "progress.json").read_text())
    assert progress["chunks_done"] == 1 and not (stopped / "meta.json").exists()
    assert _run(stopped, *args, per_frame=per_frame, resume=True) == 0
    assert _tree(stopped) == _tree(tmp_path / "whole")


@pytest.mark.slow
def test_an_existing_output_folder_is_refused_without_resume(mini_store, checkpoint, tmp_path):
    out = tmp_path / "feats"
    out.mkdir()
    command = [BIN / "epic-features", "--checkpoint", checkpoint, "--store", mini_store.store]
    command += ["--annotations", mini_store.annotations, "--out", out, "--device", "cpu"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert "error: the output folder exists" in result.stderr
    assert "--resume" in result.stderr and "Traceback" not in result.stderr
    # --resume of a folder started with other options: refused too, naming the option
    assert _run(out, checkpoint, mini_store.store, mini_store.annotations, resume=True) == 0
    with pytest.raises(features.EpicInputError, match="batch_size 2, not 3"):
        _run(out, checkpoint, mini_store.store, mini_store.annotations, resume=True, batch_size=3)


@pytest.mark.slow
def test_the_gpu_suite_s_feature_rows_run_the_extraction_loop(mini_store, tmp_path):
    from bench.bench_features import feature_rows
    from epicdata.constants import IMAGENET_MEAN, IMAGENET_STD
    from train.device import Precision

    table = AnnotationDir(mini_store.annotations).table("validation")
    rows = feature_rows(
        FrameStore(mini_store.store),
        table,
        model=ActionModel(num_frames=2),
        augment=DeviceAugment(IMAGENET_MEAN, IMAGENET_STD),
        precision=Precision("cpu", torch.bfloat16, False),
        device=torch.device("cpu"),
        num_frames=2,
        crop_size=32,
        batch_size=2,
        workers=0,
        batches=2,
        work_dir=tmp_path,
    )
    assert [r[0] for r in rows] == [
        "epic-features per segment, 0 workers",
        "epic-features per frame, 0 workers",
    ]
    assert " segments/s " in rows[0][1] and " frames/s " in rows[1][1]
    assert list(tmp_path.iterdir()) == []  # the temp output folders are gone


@pytest.mark.slow
def test_a_tsm_frame_s_feature_is_its_own_inside_a_clip_centred_on_it(
    mini_epic, full_store, tmp_path
):
    """TSM mixes neighbours: the feature is the backbone's output at the centre of T
    consecutive frames around the frame (clamped at the video's start), not the mean."""
    from types import SimpleNamespace

    from epicdata.constants import IMAGENET_MEAN, IMAGENET_STD
    from train.device import Precision

    torch.manual_seed(0)
    model = ActionModel(num_frames=4, temporal="tsm").eval()
    cfg = SimpleNamespace(modality="rgb", crop_size=32)
    store = FrameStore(full_store)
    segments = AnnotationDir(mini_epic.annotations_dir).segments("validation")[:2]
    cpu = torch.device("cpu")
    extraction, requests = features.frame_extraction(model, cfg, store, segments, device=cpu)
    augment = DeviceAugment(IMAGENET_MEAN, IMAGENET_STD)
    out, job = tmp_path / "out", {"batch_size": 4, "rows": extraction.rows}
    features.open_output(out, job, resume=False)
    done = features.run_chunks(
        extraction, out=out, job=job, first_chunk=0, batch_size=4, workers=0, device=cpu,
        augment=augment, precision=Precision("cpu", torch.bfloat16, False), stop=lambda: False,
    )  # fmt: skip
    assert done
    got = np.concatenate([np.load(p) for p in sorted((out / "chunks").iterdir())])
    assert got.shape == (len(requests), model.feature_dim)
    for row, req in [(0, requests[0]), (len(requests) - 1, requests[-1])]:
        n = req.frame
        frames = [min(max(f, 1), store.video_meta(req.video_id).decoded_frames) for f in
                  (n - 2, n - 1, n, n + 1)]  # fmt: skip
        jpegs = store.read_frames(req.video_id, frames)
        clip = EvalClipTransform(32)(torch.stack([decode_torchvision(j) for j in jpegs]))
        with torch.no_grad():
            each = model.backbone(augment(clip[None], train=False)[0])  # (4, D)
        np.testing.assert_allclose(got[row], each[2].numpy(), rtol=1e-4, atol=1e-5)
        assert not np.allclose(got[row], each.mean(0).numpy(), rtol=1e-3, atol=1e-4)
