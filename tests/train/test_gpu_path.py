"""The GPU path, checked on the CPU: ``--decoder nvjpeg`` (workers return JPEG bytes and the
crops they drew; the main process decodes and crops) gives the CPU path's clips, is refused
with the fix where it cannot run, and ``--compile`` leaves checkpoints as they were."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import train.nvjpeg as nvjpeg
from epicdata.annotations import AnnotationDir
from epicdata.dataset import EpicActionDataset
from epicdata.errors import EnvironmentProblem, ExitCode, StoreIncompleteError
from epicdata.store import FrameStore
from train.checkpoint import load_checkpoint, save_checkpoint, training_state
from train.cli import train_main
from train.config import TrainConfig
from train.data import build_loader, clip_loader
from train.device import make_scaler
from train.fit import build_optimizer, build_scheduler
from train.input_spec import run_input_spec
from train.model import ActionModel, compile_failures_named, compile_model
from train.nvjpeg import NvjpegClips, check_nvjpeg, collate_jpeg_clips, crop_clips, unpack_jpegs
from train.transforms import EvalClipTransform, TrainClipTransform


def _datasets(mini_store, decoder_b: str = "nvjpeg", **options):
    store = FrameStore(mini_store.store)
    table = AnnotationDir(mini_store.annotations).table(options.pop("split", "train"))
    make = dict(num_frames=3, seed=7, **options)
    return (
        EpicActionDataset(store, table, decoder="torchvision", **make),
        EpicActionDataset(store, table, decoder=decoder_b, **make),
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sampling", "training", "transform"),
    [
        ("linspace", True, TrainClipTransform(40)),
        ("tsn", True, TrainClipTransform(40)),  # the frame offsets are drawn before the crop
        ("linspace", False, EvalClipTransform(40)),
    ],
)
def test_nvjpeg_samples_draw_the_cpu_paths_crops_and_crop_to_its_clips(
    mini_store, sampling, training, transform
):
    cpu, gpu = _datasets(
        mini_store, sampling=sampling, training=training, transform=transform, split="train"
    )
    cpu.set_epoch(2)
    gpu.set_epoch(2)
    indices = [0, 3, 5, 8, 11]
    samples = [gpu[i] for i in indices]
    for i, sample in zip(indices, samples, strict=True):
        meta = cpu.store.video_meta(cpu.table.video_ids[i])
        rng = np.random.default_rng([7, 2, i])
        frames = cpu.frame_numbers(i, rng)  # the same draws, in the same order, as a worker
        assert sample["frame_numbers"].tolist() == frames.tolist()
        assert sample["crop"].tolist() == [
            int(v) for v in transform.draw(meta.height, meta.width, rng)
        ]
        assert len(sample["jpegs"]) == 3 and all(j.dtype == torch.uint8 for j in sample["jpegs"])
        assert "frames" not in sample
    # The main process's function, run on CPU tensors: the CPU path's clips, bit for bit
    # (on a GPU they differ by decoder and resize rounding: bench/gpu_suite.py reports it).
    batch = collate_jpeg_clips(samples)
    decoded = [_decode(jpeg) for jpeg in unpack_jpegs(batch)]
    clips = crop_clips(decoded, batch["crop"], transform)  # (B, T, C, S, S)
    expected = torch.stack([cpu[i]["frames"] for i in indices])
    assert clips.shape == expected.shape == (5, 3, 3, 40, 40) and clips.dtype == torch.uint8
    assert torch.equal(clips, expected)


def _decode(jpeg: torch.Tensor) -> torch.Tensor:
    from epicdata.dataset import decode_torchvision

    return decode_torchvision(jpeg.numpy().tobytes())


@pytest.mark.slow
def test_the_nvjpeg_loader_path_on_cpu_tensors_gives_the_cpu_loaders_batches(mini_store):
    transform = TrainClipTransform(32)
    cpu, gpu = _datasets(mini_store, sampling="linspace", training=True, transform=transform)
    batches = []
    for dataset in (cpu, gpu):
        loader = build_loader(
            dataset,
            batch_size=4,
            workers=0,
            sampler=torch.utils.data.SequentialSampler(range(8)),
            drop_last=True,
            pin_memory=False,
        )
        batches.append(list(loader))
    load_gpu = clip_loader(gpu, torch.device("cpu"))
    assert isinstance(load_gpu, NvjpegClips)
    for cpu_batch, jpeg_batch in zip(*batches, strict=True):
        assert jpeg_batch["jpegs"].dim() == 1 and jpeg_batch["jpeg_sizes"].shape == (4, 3)
        assert jpeg_batch["narration_id"] == cpu_batch["narration_id"]
        assert torch.equal(jpeg_batch["verb"], cpu_batch["verb"])
        assert torch.equal(jpeg_batch["index"], cpu_batch["index"])
        assert torch.equal(load_gpu(jpeg_batch), cpu_batch["frames"])
        assert torch.equal(clip_loader(cpu, torch.device("cpu"))(cpu_batch), cpu_batch["frames"])


def test_collate_packs_the_byte_clips_and_unpacks_them_in_order():
    gen = torch.Generator().manual_seed(0)
    samples = [
        {
            "jpegs": [
                torch.randint(0, 256, (int(n),), generator=gen).to(torch.uint8) for n in sizes
            ],
            "crop": torch.tensor([1, 2, 30, 40, b % 2]),
            "frame_numbers": torch.tensor([10 + b, 20 + b]),
            "video_id": f"P01_0{b}",
            "narration_id": f"P01_0{b}_1",
            "index": b,
            "verb": 3 * b,
            "noun": 5 * b,
        }
        for b, sizes in enumerate([(7, 3), (1, 12), (5, 5)])
    ]
    batch = collate_jpeg_clips(samples)
    assert batch["jpegs"].shape == (33,) and batch["jpegs"].dtype == torch.uint8
    assert batch["jpeg_sizes"].tolist() == [[7, 3], [1, 12], [5, 5]]
    assert batch["crop"].shape == (3, 5) and batch["crop"][:, 4].tolist() == [0, 1, 0]
    assert batch["frame_numbers"].tolist() == [[10, 20], [11, 21], [12, 22]]
    assert batch["narration_id"] == ["P01_00_1", "P01_01_1", "P01_02_1"]
    assert batch["verb"].tolist() == [0, 3, 6] and batch["index"].tolist() == [0, 1, 2]
    unpacked = unpack_jpegs(batch)
    originals = [j for s in samples for j in s["jpegs"]]
    assert len(unpacked) == 6 and all(
        torch.equal(a, b) for a, b in zip(unpacked, originals, strict=True)
    )


@pytest.mark.slow
def test_a_frame_nvjpeg_cannot_decode_is_named_with_its_segment_and_shard_fix(mini_store):
    transform = EvalClipTransform(32)
    _, gpu = _datasets(mini_store, transform=transform)
    batch = collate_jpeg_clips([gpu[0], gpu[1]])
    sizes = batch["jpeg_sizes"].flatten().tolist()
    start = sum(sizes[:4])  # clip 1, frame 1: its bytes past the header are garbage
    batch["jpegs"][start + 2 : start + sizes[4]] = 0
    with pytest.raises(StoreIncompleteError) as caught:
        NvjpegClips(transform, torch.device("cpu"), store_root="STORE")(batch)
    frame = int(batch["frame_numbers"][1, 1])
    message = str(caught.value)
    assert f"segment {batch['narration_id'][1]}: {batch['video_id'][1]} frame {frame}" in message
    assert "epic-check --store STORE --deep" in message


def test_nvjpeg_on_a_cpu_device_is_refused_naming_the_option_reason_and_fix():
    with pytest.raises(EnvironmentProblem) as caught:
        check_nvjpeg(torch.device("cpu"))
    message = str(caught.value)
    assert message.startswith("--decoder nvjpeg cannot be used: it decodes on a CUDA GPU")
    assert "use --decoder torchvision" in message
    assert caught.value.exit_code == ExitCode.BAD_INPUT


def test_nvjpeg_on_a_gpu_without_nvjpeg_support_is_refused_with_torchvisions_reason(monkeypatch):
    def no_nvjpeg(data, *args, device="cpu", **kwargs):
        if str(device).startswith("cuda"):
            raise RuntimeError("Not compiled with GPU support")
        return torch.zeros(3, 16, 16, dtype=torch.uint8)

    monkeypatch.setattr(nvjpeg, "decode_jpeg", no_nvjpeg)
    with pytest.raises(EnvironmentProblem, match="cannot decode JPEGs on cuda:0 \\(Not compiled"):
        check_nvjpeg(torch.device("cuda", 0))


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a usable GPU")
def test_epic_train_decoder_nvjpeg_without_cuda_exits_2_before_building_anything(tmp_path):
    command = [str(Path(sys.executable).parent / "epic-train"), "--device", "cpu"]
    command += ["--decoder", "nvjpeg", "--store", tmp_path, "--annotations", tmp_path]
    command += ["--output-dir", tmp_path / "r"]
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=120)
    assert result.returncode == ExitCode.BAD_INPUT, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "--decoder nvjpeg cannot be used" in errors[0]
    assert "--decoder torchvision" in errors[0]
    assert not (tmp_path / "r").exists()


def test_decoder_nvjpeg_and_compile_are_options_recorded_in_checkpoints(tmp_path):
    decoder = next(p for p in train_main.params if p.name == "decoder")
    assert "nvjpeg" in decoder.type.choices
    assert any(p.name == "compile" and "--compile" in p.opts for p in train_main.params)
    cfg = TrainConfig(store="s", annotations="a", output_dir="o", decoder="nvjpeg", compile=True)
    model = ActionModel(dropout=0.3)
    optimizer = build_optimizer(model, lr=1e-4, weight_decay=0)
    state = _state(model, optimizer, cfg)
    save_checkpoint(state, tmp_path / "last.pt")
    config = load_checkpoint(tmp_path / "last.pt")["config"]
    assert config["decoder"] == "nvjpeg" and config["compile"] is True
    assert TrainConfig.from_dict(config) == cfg


def _state(model: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> dict:
    return training_state(
        model=model,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, kind="cosine", epochs=2, factor=0.5, patience=1),
        scaler=make_scaler(False),
        epoch=1,
        step=0,
        best_metric=0.0,
        config=cfg.to_dict(),
        input_spec=run_input_spec(
            norm="imagenet", frame_size=256, crop_size=224, clip_length=8, sampler="linspace"
        ).to_dict(),
    )


@pytest.mark.slow
def test_a_compiled_models_checkpoint_has_the_bare_models_keys(tmp_path):
    # torch.compile wraps lazily (nothing compiles before the first call): its state_dict
    # already carries the "_orig_mod." prefixes a checkpoint must not have.
    model = ActionModel(dropout=0.3)
    compiled = compile_model(model)
    assert any(k.startswith("_orig_mod.") for k in compiled.state_dict())
    cfg = TrainConfig(store="s", annotations="a", output_dir="o", compile=True)
    optimizer = build_optimizer(model, lr=1e-4, weight_decay=0)
    state = _state(compiled, optimizer, cfg)
    assert list(state["model"]) == list(model.state_dict())
    save_checkpoint(state, tmp_path / "last.pt")
    fresh = ActionModel(dropout=0.3)
    fresh.load_state_dict(load_checkpoint(tmp_path / "last.pt")["model"], strict=True)


def test_a_torch_that_cannot_compile_is_refused_with_the_fix(monkeypatch):
    def unsupported(model, *args, **kwargs):
        raise RuntimeError("Python 3.12+ not yet supported for torch.compile")

    monkeypatch.setattr(torch, "compile", unsupported)
    with pytest.raises(EnvironmentProblem) as caught:
        compile_model(nn.Linear(2, 2))
    message = str(caught.value)
    assert message.startswith("--compile: torch.compile cannot compile the model here: Python 3.12")
    assert "train without --compile" in message


def test_a_compiler_failure_at_the_first_step_names_compile():
    from torch._dynamo.exc import BackendCompilerFailed, TorchDynamoException

    assert issubclass(BackendCompilerFailed, TorchDynamoException)
    failing = pytest.raises(EnvironmentProblem, match="--compile: .*no working C\\+\\+ compiler")
    with failing, compile_failures_named(True):
        raise TorchDynamoException("no working C++ compiler\nlong traceback")
    # An uncompiled run leaves such errors alone.
    with pytest.raises(TorchDynamoException), compile_failures_named(False):
        raise TorchDynamoException("not ours")
