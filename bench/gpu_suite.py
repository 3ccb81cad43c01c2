"""The checks only a GPU can run, in one script for the first session with a GPU machine.

Usage (one run, about 5-6 minutes on one H200 with 16 cores, the recipes' part included
(estimated: not yet run on a GPU); writes the gpu section of
docs/benchmarks.md)::

    python -m bench.gpu_suite [--steps 40] [--batch-size 32] [--num-frames 8] [--skip-run]
                              [--store-frames 150000] [--pipeline-steps 60]
                              [--pipeline-workers 4,all] [--skip-pipeline]

1. environment: torch, its CUDA and cuDNN, the GPUs and their compute capability;
2. device and precision: ``--device cuda`` / ``cuda:N`` land where asked (``cuda:1``
   needs 2 GPUs), ``--amp auto`` picks bf16 on compute capability 8.0+ and fp16 below;
3. host syncs: training steps and an evaluation pass of the real loop bodies on
   synthetic pinned batches under ``torch.cuda.set_sync_debug_mode("warn")``, for bf16 and
   fp16, every sync reported with its source line. A step must not wait for the GPU: the
   loop looks at the loss once every ``STOP_SYNC_STEPS`` steps, nothing else syncs;
4. a short real run (unless ``--skip-run``): the mini-EPIC extracted, 2 epochs of
   ``epic-train --device cuda --amp auto`` with loader workers, then ``epic-validate`` of
   ``last.pt`` in a new process, which must give the metrics the run logged;
5. the recipes (seed-r18, tsn-r50, tsm-r50, tsn-r50-flow, tsm-r50-flow): each one's
   training step at its settings on
   synthetic clips on the device, ``--batch-size`` clips: clips/s and the projected
   EPIC-100 epoch (:func:`recipe_rows`; about 10-30 s each on an H100, estimated);
6. throughput (unless ``--skip-pipeline``), on a synthetic EPIC-like store of
   ``--store-frames`` 456x256 JPEGs (ffmpeg gradients + grain, extracted by the real
   ``epic-extract`` at its JPEG quality; the mean frame size is reported): the training
   step on clips already on the device (the compute bound), with ``--compile`` too; the
   full pipeline from the store (workers read, decode or not, crop; the step) with 4
   workers and with every core, for ``--decoder torchvision`` and ``--decoder nvjpeg``:
   clips/s, per worker, GPU utilisation (``torch.cuda.utilization``, needs pynvml),
   data-wait fraction, the fraction of the compute bound (target >= 95%), and the
   projected time of one EPIC-100 epoch (67,217 clips) and of 30; and the mean absolute
   pixel difference of the nvjpeg clips from the CPU path's (target < 2 levels);
7. evaluation throughput (unless ``--skip-pipeline``) on the same store, for
   ``epic-validate --views 1x1`` and ``--views 10x3`` (:func:`evaluation_rows`): the
   real evaluation loop from the store with TSN sampling, the most loader workers of
   ``--pipeline-workers``, ``--pipeline-steps`` batches of ``--batch-size`` clips after 2
   warm-up ones: clips/s, segments/s and the projected EPIC-100 validation pass (9,668
   segments); each row states its seconds (a few each on an H100, estimated: 1,920 clips
   for 1x1, 60 segments of 30 views for 10x3).
8. feature extraction (unless ``--skip-pipeline``; ``bench.bench_features.feature_rows``):
   ``epic-features`` per segment and per frame from the same store, with their seconds
   (about 10 s for both on an H100, estimated).

On a machine without CUDA it runs what it can (the loop bodies on the CPU, where there is no
sync to see) at toy sizes (``TOY_SIZES``: under a minute, where the GPU sizes take many
minutes on a CPU; an option given on the command line still wins), says so on its first
line, and says what it could not check; it writes nothing to docs/ then. A line on stderr
announces each part as it starts.
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from bench.bench_features import feature_rows
from bench.epic_like import RATE, grain_source, write_train_csv
from bench.report import machine_line, markdown_table, write_section
from epicdata.annotations import AnnotationDir
from epicdata.constants import IMAGENET_MEAN, IMAGENET_STD
from epicdata.ffmpeg_bin import ffmpeg_path
from epicdata.store import FrameStore
from train.config import TrainConfig
from train.data import build_eval_data, build_train_data, clip_loader
from train.device import (
    BF16_MIN_CAPABILITY,
    Precision,
    make_scaler,
    resolve_device,
    resolve_precision,
)
from train.distributed import DistInfo
from train.engine import STOP_SYNC_STEPS, EpochStats, evaluate, train_one_epoch
from train.fit import build_optimizer, optimization
from train.input_spec import run_input_spec
from train.model import build_model, compile_model
from train.nvjpeg import check_nvjpeg, collate_jpeg_clips
from train.recipes import RECIPES, resolve_options
from train.transforms import DeviceAugment

Row = tuple[str, str, str]  # check, result, verdict

#: Training clips of EPIC-100 (one per segment of EPIC_100_train.csv) and the seed's epochs.
EPIC_TRAIN_CLIPS = 67_217
#: Segments of EPIC_100_validation.csv (an epic-validate pass).
EPIC_VALIDATION_SEGMENTS = 9_668
#: The test views of the evaluation rows: one centre clip, and SlowFast's 10 clips x 3 crops.
EVAL_VIEWS = ((1, 1), (10, 3))
EPOCHS = 30
#: The full pipeline must reach this fraction of the compute bound.
PIPELINE_TARGET = 0.95
#: nvJPEG vs the CPU decoder, mean absolute difference of the uint8 clips.
NVJPEG_MAX_MEAN_DIFF = 2.0
#: Frames of one synthetic video (100 s at 60 fps; several videos make the store).
VIDEO_FRAMES = 6_000
#: Distinct rendered sources of the synthetic videos, and their frames (20 s).
SOURCES = 4
SOURCE_FRAMES = 1_200
#: The sizes of the checks on a GPU (the defaults there), and the toy sizes that a machine
#: without CUDA uses by default: the loop bodies and the pipeline still run end to end, in
#: well under a minute instead of minutes per row.
GPU_SIZES = {
    "steps": 40,
    "batch_size": 32,
    "num_frames": 8,
    "crop_size": 224,
    "store_frames": 150_000,
    "pipeline_steps": 60,
    "pipeline_workers": "4,all",
}
TOY_SIZES = {
    "steps": 2,
    "batch_size": 2,
    "num_frames": 2,
    "crop_size": 32,
    "store_frames": 1_200,
    "pipeline_steps": 2,
    "pipeline_workers": "1",
}


def choose_sizes(args: argparse.Namespace, *, cuda: bool) -> str | None:
    """Fill in the size options not given (None in ``args``): GPU_SIZES with CUDA, else
    TOY_SIZES. Returns the line that says so on a CPU (None with CUDA)."""
    sizes = GPU_SIZES if cuda else TOY_SIZES
    for name, value in sizes.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if cuda:
        return None
    used = " ".join(f"--{k.replace('_', '-')} {getattr(args, k)}" for k in sizes)
    return f"no CUDA on this machine: toy sizes ({used}); the GPU sizes would take many minutes"


def _say(text: str) -> None:
    """A progress line on stderr: the table comes at the end, minutes later on a GPU."""
    print(f"gpu_suite: {text}", file=sys.stderr, flush=True)


def environment() -> list[Row]:
    rows: list[Row] = [
        ("torch", f"{torch.__version__} from {Path(torch.__file__).parent}", "info"),
        ("CUDA build / cuDNN", f"{torch.version.cuda} / {torch.backends.cudnn.version()}", "info"),
    ]
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        major, minor = torch.cuda.get_device_capability(i)
        rows.append((f"cuda:{i}", f"{torch.cuda.get_device_name(i)}, cc {major}.{minor}", "info"))
    return rows


def device_and_precision() -> list[Row]:
    if not torch.cuda.is_available():
        return [("device and precision", "no CUDA on this machine", "not checked")]
    rows: list[Row] = []
    device = resolve_device("cuda", DistInfo())
    rows.append(("--device cuda", str(device), _verdict(device == torch.device("cuda", 0))))
    if torch.cuda.device_count() > 1:
        device = resolve_device("cuda:1", DistInfo())
        torch.cuda.set_device(device)
        where = torch.zeros(1, device="cuda").device
        rows.append(
            ("--device cuda:1", f"{device}, tensors on {where}", _verdict(where.index == 1))
        )
        torch.cuda.set_device(0)
    else:
        rows.append(("--device cuda:1", "one GPU only", "not checked"))
    capability = torch.cuda.get_device_capability(0)
    precision = resolve_precision("auto", torch.device("cuda", 0))
    expected = torch.bfloat16 if capability >= BF16_MIN_CAPABILITY else torch.float16
    rows.append(("--amp auto", str(precision.dtype), _verdict(precision.dtype == expected)))
    return rows


def _verdict(ok: bool) -> str:
    return "ok" if ok else "FAILED"


class _Batches:
    """A loader stand-in: the same pinned uint8 batches, as a DataLoader with pin_memory."""

    def __init__(
        self,
        count: int,
        batch: int,
        frames: int,
        size: int,
        pin: bool,
        device: torch.device | None = None,
        channels: int = 3,
    ) -> None:
        gen = torch.Generator().manual_seed(0)
        clips = torch.randint(0, 256, (batch, frames, channels, size, size), generator=gen)
        self.batch = {
            "frames": clips.to(torch.uint8),
            "verb": torch.randint(0, 97, (batch,), generator=gen),
            "noun": torch.randint(0, 300, (batch,), generator=gen),
            "index": torch.arange(batch),
        }
        if pin:
            self.batch = {k: v.pin_memory() if k != "index" else v for k, v in self.batch.items()}
        if device is not None:  # already on the device: the step alone (the compute bound)
            self.batch = {k: v.to(device) if k != "index" else v for k, v in self.batch.items()}
        self.count = count

    def __iter__(self):
        return (dict(self.batch) for _ in range(self.count))

    def __len__(self) -> int:
        return self.count


def _syncs_of(run) -> tuple[collections.Counter, object]:
    """Run ``run()`` under sync debug mode "warn": the syncs by source line, and its result."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            result = run()
            torch.cuda.synchronize()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    root = Path(__file__).resolve().parent.parent
    lines = collections.Counter(
        f"{_relative(Path(w.filename), root)}:{w.lineno}"
        for w in caught
        if "synchroniz" in str(w.message)
    )
    return lines, result


def _relative(path: Path, root: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(root)) if root in path.parents else str(path)


def host_syncs(args: argparse.Namespace) -> list[Row]:
    if not torch.cuda.is_available():
        return _loop_rows("cpu", None, torch.device("cpu"), args)
    rows: list[Row] = []
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        rows += _loop_rows(name, dtype, torch.device("cuda", 0), args)
    return rows


def _loop_rows(
    name: str, dtype: torch.dtype | None, device: torch.device, args: argparse.Namespace
) -> list[Row]:
    """The syncs of ``args.steps`` training steps and evaluation steps at ``dtype``."""
    precision = Precision(device.type, dtype or torch.bfloat16, enabled=dtype is not None)
    torch.manual_seed(0)
    model = build_model(**_seed_model(dropout=0.5), device=device, channels_last=True)
    optimizer = build_optimizer(model, lr=1e-4, weight_decay=1e-4)
    scaler = make_scaler(dtype == torch.float16)
    augment = DeviceAugment(IMAGENET_MEAN, IMAGENET_STD).to(device)
    shape = (args.batch_size, args.num_frames, args.crop_size, device.type == "cuda")
    common = dict(augment=augment, precision=precision, device=device, info=DistInfo())

    def train(steps: int) -> EpochStats:
        return train_one_epoch(
            model,
            _Batches(steps, *shape),
            optimizer=optimizer,
            scaler=scaler,
            generator=torch.Generator().manual_seed(0),
            max_steps=steps,
            stop_requested=lambda: False,
            log_every=0,
            **common,
        )

    def evaluation() -> None:
        evaluate(model, _Batches(args.steps, *shape), **common)

    train(3)  # warm-up: cuDNN autotuning, the allocator, lazy inits
    if device.type != "cuda":
        started = time.perf_counter()
        train(args.steps)
        evaluation()
        seconds = time.perf_counter() - started
        return [
            (f"{name}: {args.steps} train + eval steps", f"{seconds:.1f} s", "no syncs on a CPU")
        ]
    lines, stats = _syncs_of(lambda: train(args.steps))
    # Allowed: the finite-loss check every STOP_SYNC_STEPS steps, and the end of the epoch
    # (a synchronize for the timing, the epoch's sums to the host: a few).
    allowed = args.steps // STOP_SYNC_STEPS + 4
    rows = [
        (
            f"{name}: syncs in {args.steps} train steps",
            _where(lines),
            _verdict(sum(lines.values()) <= allowed),
        ),
        (f"{name}: train clips/s (synthetic)", f"{stats.clips / stats.seconds:.0f}", "info"),
    ]
    lines, _ = _syncs_of(evaluation)
    rows.append(
        (
            f"{name}: syncs in {args.steps} eval steps",
            _where(lines),
            _verdict(sum(lines.values()) <= 4),
        )
    )
    return rows


def _seed_model(dropout: float) -> dict:
    """build_model's options for the seed's ResNet-18 (random weights: nothing to fetch)."""
    return {"arch": "resnet18", "temporal": "avg", "num_frames": 8, "partial_bn": False} | {
        "dropout": dropout
    }


def recipe_rows(args: argparse.Namespace) -> list[Row]:
    """Each recipe's training step at its own settings (model, optimiser, gradient clipping,
    head loss, photometric augmentation, 8 frames) on synthetic clips already on the
    device, ``--batch-size`` clips per step for all three (comparable; the C1 recipes'
    own batches are per 4 GPUs): clips/s and the projected EPIC-100 epoch. About 10-30 s
    per recipe on one H100 (estimated: not yet run on one)."""
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    rows: list[Row] = []
    for name in RECIPES:
        options = resolve_options({}, {"recipe": name, "weights": "none"})
        options |= {"batch_size": args.batch_size, "crop_size": args.crop_size}
        if name == "seed-r18":
            options["num_frames"] = args.num_frames
        cfg = TrainConfig(store="-", annotations="-", output_dir="-", **options)
        started = time.perf_counter()
        rate = _recipe_rate(cfg, device, steps=args.steps)
        seconds = time.perf_counter() - started
        shape = f"{cfg.batch_size} x {cfg.num_frames} frames x {cfg.crop_size} px"
        result = f"{rate:.3g} clips/s ({shape}); {_projection(rate, cfg.epochs)}; {seconds:.0f} s"
        rows.append((f"recipe {name}: train step (synthetic, on the device)", result, "info"))
    return rows


def _recipe_rate(cfg: TrainConfig, device: torch.device, *, steps: int) -> float:
    """Clips/s of ``steps`` training steps of ``cfg``'s recipe after 3 warm-up steps (1 on
    a CPU)."""
    torch.manual_seed(0)
    cuda = device.type == "cuda"
    model = build_model(**cfg.model_options(), device=device, channels_last=cuda)
    optimizer, _ = optimization(cfg, model)
    precision = (
        resolve_precision(cfg.amp, device) if cuda else Precision("cpu", torch.bfloat16, False)
    )
    spec = run_input_spec(
        norm=cfg.norm,
        frame_size=0,
        crop_size=cfg.crop_size,
        clip_length=cfg.num_frames,
        sampler=cfg.sampling,
        modality=cfg.modality,
        flow_stack=cfg.flow_stack,
    )
    augment = DeviceAugment(
        spec.mean, spec.std, photometric=cfg.photometric, modality=cfg.modality
    ).to(device)
    shape = (cfg.batch_size, cfg.num_frames, cfg.crop_size, cuda, device, cfg.input_channels)

    def run(count: int) -> EpochStats:
        return train_one_epoch(
            model,
            _Batches(count, *shape),
            optimizer=optimizer,
            scaler=make_scaler(precision.enabled and precision.dtype == torch.float16),
            augment=augment,
            generator=torch.Generator().manual_seed(0),
            precision=precision,
            device=device,
            info=DistInfo(),
            max_steps=count,
            stop_requested=lambda: False,
            log_every=0,
            grad_clip=cfg.grad_clip,
            head_loss=cfg.head_loss,
        )

    # Warm-up: cuDNN autotuning, the allocator (on a CPU, where the suite only checks that
    # every recipe runs, one step: ResNet-50 steps take seconds there).
    run(3 if cuda else 1)
    stats = run(steps)
    return stats.clips / stats.seconds


def _where(lines: collections.Counter) -> str:
    return ", ".join(f"{line} x{n}" for line, n in lines.most_common()) or "none"


def real_run(args: argparse.Namespace) -> list[Row]:
    """Extract the mini-EPIC, train 2 epochs on the GPU, validate last.pt in a new process."""
    if not torch.cuda.is_available():
        return [("real run on the GPU", "no CUDA on this machine", "not checked")]
    _say("real run: the mini-EPIC extracted, 2 epochs of epic-train, then epic-validate")
    from epicdata.synthetic import make_mini_epic
    from preprocess.extract import run_shard
    from preprocess.plan import plan_store

    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        mini = make_mini_epic(root / "mini", size=(456, 256))
        manifest = plan_store(
            store_root=root / "store",
            annotations_dir=mini.annotations_dir,
            videos_root=mini.videos_dir,
            shards=2,
        )
        for shard in manifest.shards:
            run_shard(store_root=root / "store", shard_index=shard.index, workers=4)
        common = ["--store", root / "store", "--annotations", mini.annotations_dir]
        train = [bin_dir / "epic-train", *common, "--output-dir", root / "run", "--device", "cuda"]
        train += ["--amp", "auto", "--epochs", "2", "--weights", "none", "--workers", "4"]
        started = time.perf_counter()
        done = subprocess.run([str(a) for a in train], capture_output=True, text=True, timeout=900)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            return [("epic-train --device cuda", done.stderr[-2000:], "FAILED")]
        with open(root / "run" / "summary.csv", newline="") as handle:
            logged = list(csv.DictReader(handle))[-1]
        check = [bin_dir / "epic-validate", "--checkpoint", root / "run" / "last.pt", *common]
        check += ["--split", "validation", "--device", "cuda", "--output-dir", root / "val"]
        done = subprocess.run([str(a) for a in check], capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            return [("epic-validate --device cuda", done.stderr[-2000:], "FAILED")]
        metrics = json.loads((root / "val" / "metrics.json").read_text())
        worst = max(abs(float(logged[f"val_{k}"]) - v) for k, v in metrics.items())
        amp = next(
            (
                line
                for line in (root / "run" / "train.log").read_text().splitlines()
                if "--amp auto" in line
            ),
            "",
        )
        return [
            ("epic-train 2 epochs (mini-EPIC)", f"{seconds:.0f} s; {amp.split(': ', 1)[-1]}", "ok"),
            (
                "epic-validate of last.pt vs logged",
                f"largest metric difference {worst:.2g}",
                _verdict(worst < 1e-6),
            ),
        ]


# ----------------------------------------------------------------------------- throughput


def _video_sizes(total: int) -> list[int]:
    """Frames per synthetic video: ``total`` in videos of VIDEO_FRAMES (the last shorter)."""
    sizes = [VIDEO_FRAMES] * (total // VIDEO_FRAMES)
    if total % VIDEO_FRAMES or not sizes:
        sizes.append(max(total % VIDEO_FRAMES, 2 * RATE))
    return sizes


def synthetic_store(root: Path, frames: int, workers: int) -> tuple[Path, Path, float]:
    """A keep=all store of about ``frames`` EPIC-like 456x256 frames (ffmpeg gradients with
    grain, H.264, then the real extraction at the store's JPEG quality) and its train
    annotations: (store, annotations, mean JPEG bytes of a sample of frames)."""
    from preprocess.extract import run_shard
    from preprocess.plan import plan_store

    videos = root / "videos"
    sizes = _video_sizes(frames)
    ids = [f"P01_{i + 1:02d}" if i < 99 else f"P01_{i + 1}" for i in range(len(sizes))]
    (videos / "P01" / "videos").mkdir(parents=True, exist_ok=True)
    ffmpeg = [ffmpeg_path(), "-nostdin", "-loglevel", "error", "-y"]
    # A few distinct 20-s sources, each video one of them looped (a stream copy): rendering
    # the grain costs ~10 ms a frame, too slow for 10^5 frames in minutes. No B-frames, so
    # that a loop cut at any frame decodes to the end.
    sources = [root / f"source{k}.mp4" for k in range(min(len(sizes), SOURCES))]

    def render(k: int) -> None:
        grain = grain_source(k)  # about the bytes of a real kitchen frame at -q:v 4
        subprocess.run(
            [*ffmpeg, "-f", "lavfi", "-i", grain, "-frames:v", str(min(SOURCE_FRAMES, max(sizes))),
             "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-bf", "0",
             "-pix_fmt", "yuv420p", "-threads", "2", str(sources[k])],
            check=True,
        )  # fmt: skip

    def loop(i: int) -> None:
        path = videos / "P01" / "videos" / f"{ids[i]}.MP4"
        subprocess.run(
            [*ffmpeg, "-stream_loop", "-1", "-i", str(sources[i % len(sources)]),
             "-frames:v", str(sizes[i]), "-c", "copy", str(path)],
            check=True,
        )  # fmt: skip

    with ThreadPoolExecutor(max(1, workers // 2)) as pool:
        list(pool.map(render, range(len(sources))))
        list(pool.map(loop, range(len(sizes))))
    annotations = root / "annotations"
    write_train_csv(annotations, dict(zip(ids, sizes, strict=True)))
    store = root / "store"
    manifest = plan_store(
        store_root=store,
        annotations_dir=annotations,
        videos_root=videos,
        splits=("train",),
        shards=max(1, min(len(sizes), workers)),
        keep="all",
    )
    for shard in manifest.shards:
        run_shard(store_root=store, shard_index=shard.index, workers=workers)
    reader = FrameStore(store)
    sample = reader.read_frames(ids[0], list(range(1, min(sizes[0], 300), 7)))
    return store, annotations, sum(map(len, sample)) / len(sample)


class _Measured:
    """A loader seen by the training loop: after ``warmup`` batches (worker start-up, cuDNN
    autotuning), the time the loop waits for each batch, and when the measured part began."""

    def __init__(self, loader, warmup: int) -> None:
        self.loader, self.warmup = loader, warmup
        self.wait = 0.0
        self.started: float | None = None

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for n, batch in enumerate(_timed(iter(self.loader), self)):
            if n == self.warmup:
                self.started = time.perf_counter()
            yield batch

    def count(self, seconds: float) -> None:
        if self.started is not None:
            self.wait += seconds


def _timed(batches, measured: _Measured):
    while True:
        tick = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            return
        measured.count(time.perf_counter() - tick)
        yield batch


class _Utilisation:
    """Mean GPU utilisation (%) sampled every 0.2 s, or None without pynvml."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.samples = device, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self.samples.append(torch.cuda.utilization(self.device))
            except Exception:  # pynvml missing, or NVML unusable: "n/a"
                return

    def __enter__(self) -> _Utilisation:
        if self.device.type == "cuda":
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def text(self) -> str:
        return f"{sum(self.samples) / len(self.samples):.0f}%" if self.samples else "n/a"


class _Trainer:
    """The model, optimiser and augmentation of the real run, to time steps with."""

    def __init__(self, device: torch.device, compiled: bool = False) -> None:
        torch.manual_seed(0)
        cuda = device.type == "cuda"
        self.device = device
        self.precision = (
            resolve_precision("auto", device) if cuda else Precision("cpu", torch.bfloat16, False)
        )
        self.model = build_model(**_seed_model(dropout=0.3), device=device, channels_last=cuda)
        self.optimizer = build_optimizer(self.model, lr=1e-4, weight_decay=1e-4)
        self.step_model = compile_model(self.model) if compiled else self.model
        self.scaler = make_scaler(self.precision.enabled and self.precision.dtype == torch.float16)
        self.augment = DeviceAugment(IMAGENET_MEAN, IMAGENET_STD).to(device)

    def run(self, loader, steps: int, load_clips=None) -> EpochStats:
        return train_one_epoch(
            self.step_model,
            loader,
            optimizer=self.optimizer,
            scaler=self.scaler,
            augment=self.augment,
            generator=torch.Generator().manual_seed(0),
            precision=self.precision,
            device=self.device,
            info=DistInfo(),
            max_steps=steps,
            stop_requested=lambda: False,
            log_every=0,
            load_clips=load_clips,
        )


def _rate(
    trainer: _Trainer, loader, steps: int, warmup: int, load_clips=None
) -> tuple[float, float, str]:
    """(clips/s, data-wait fraction, GPU utilisation text) of ``steps`` measured steps."""
    measured = _Measured(loader, warmup)
    with _Utilisation(trainer.device) as utilisation:
        stats = trainer.run(measured, warmup + steps, load_clips)
        ended = time.perf_counter()
    seconds = ended - measured.started
    clips = stats.clips / stats.steps * (stats.steps - warmup)  # trained after the warm-up
    return clips / seconds, measured.wait / seconds, utilisation.text()


def _projection(rate: float, epochs: int = EPOCHS) -> str:
    epoch = EPIC_TRAIN_CLIPS / rate
    return f"EPIC-100 epoch {epoch / 60:.1f} min, {epochs} epochs {epochs * epoch / 3600:.1f} h"


def throughput(args: argparse.Namespace) -> list[Row]:
    """The compute bound, the full pipeline per decoder and worker count, nvJPEG's images."""
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    cores = len(os.sched_getaffinity(0))
    rows: list[Row] = []
    shape = (args.batch_size, args.num_frames, args.crop_size)
    trainer = _Trainer(device)
    bound, _, util = _rate(trainer, _Batches(3 + args.steps, *shape, cuda, device), args.steps, 3)
    rows.append(
        (
            "step on clips already on the device",
            f"{bound:.4g} clips/s per GPU, GPU {util}; {_projection(bound)}",
            "info (the compute bound)",
        )
    )
    if cuda:
        try:
            compiled = _Trainer(device, compiled=True)
            batches = _Batches(3 + args.steps, *shape, True, device)
            rate, _, util = _rate(compiled, batches, args.steps, 3)
            rows.append(
                (
                    "step with --compile",
                    f"{rate:.4g} clips/s ({rate / bound:.2f}x uncompiled), GPU {util}",
                    "info",
                )
            )
        except Exception as exc:  # reported as a row: the other checks still run
            rows.append(("step with --compile", str(exc).splitlines()[0][:300], "FAILED"))
    else:
        rows.append(
            ("step with --compile", "no CUDA (compiling on a CPU takes minutes)", "not checked")
        )
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        started = time.perf_counter()
        _say(f"building a synthetic store of {args.store_frames} frames")
        store, annotations, jpeg_bytes = synthetic_store(Path(tmp), args.store_frames, cores)
        table = AnnotationDir(annotations).table("train")
        rows.append(
            (
                "synthetic store",
                f"{args.store_frames} frames 456x256, {jpeg_bytes / 1000:.1f} kB per JPEG, "
                f"{len(table)} clips; built in {time.perf_counter() - started:.0f} s",
                "info",
            )
        )
        reader = FrameStore(store)
        counts = [cores if w == "all" else int(w) for w in args.pipeline_workers.split(",")]
        for decoder in ("torchvision", "nvjpeg"):
            if decoder == "nvjpeg":
                try:
                    check_nvjpeg(device)
                except Exception as exc:
                    rows.append(("--decoder nvjpeg", str(exc).splitlines()[0], "not checked"))
                    continue
                rows.append(_nvjpeg_difference(reader, table, args, device))
            for workers in counts:
                _say(f"pipeline {decoder}, loader workers: {workers}, {args.pipeline_steps} steps")
                rows.append(
                    _pipeline_row(reader, table, args, trainer, decoder, workers, bound, cores)
                )
        rows += evaluation_rows(reader, table, args, trainer, max(counts))
        rows += feature_rows(
            reader,
            table,
            model=trainer.model,
            augment=trainer.augment,
            precision=trainer.precision,
            device=trainer.device,
            num_frames=args.num_frames,
            crop_size=args.crop_size,
            batch_size=args.batch_size,
            workers=max(counts),
            batches=args.pipeline_steps,
            work_dir=args.work_dir,
        )
        reader.close()
    return rows


def _pipeline_row(reader, table, args, trainer, decoder, workers, bound, cores) -> Row:
    data = build_train_data(
        reader,
        table,
        num_frames=args.num_frames,
        sampling="linspace",
        crop_size=args.crop_size,
        decoder=decoder,
        seed=0,
        batch_size=args.batch_size,
        workers=workers,
        info=DistInfo(),
        pin_memory=trainer.device.type == "cuda",
        limit_batches=None,
    )
    warmup = min(3, data.steps_per_epoch // 2)  # worker start-up, cuDNN autotuning
    steps = min(args.pipeline_steps, data.steps_per_epoch - warmup)
    if steps < 1:
        return (f"pipeline {decoder}, {workers} workers", "store too small", "not checked")
    data.dataset.set_epoch(0)
    data.sampler.set_epoch(0)
    load = clip_loader(data.dataset, trainer.device)
    rate, wait, util = _rate(trainer, data.loader, steps, warmup, load)
    share = rate / bound
    per_worker = f", {rate / workers:.3g} per worker" if workers else ""
    return (
        f"pipeline {decoder}, {workers} of {cores} cores",
        f"{rate:.4g} clips/s{per_worker}, GPU {util}, data wait {100 * wait:.0f}%, "
        f"{100 * share:.0f}% of the bound; {_projection(rate)}",
        "ok" if share >= PIPELINE_TARGET else f"below the {PIPELINE_TARGET:.0%} target",
    )


def evaluation_rows(reader, table, args, trainer: _Trainer, workers: int) -> list[Row]:
    """``epic-validate``'s evaluation loop from the store for each of EVAL_VIEWS: clips/s,
    segments/s, the projected EPIC-100 validation pass, and the seconds the row took."""
    rows: list[Row] = []
    for views in EVAL_VIEWS:
        name = f"evaluation --views {views[0]}x{views[1]}, {workers} workers"
        _say(f"{name}, {args.pipeline_steps} batches")
        started = time.perf_counter()
        dataset, loader = build_eval_data(
            reader,
            table,
            num_frames=args.num_frames,
            sampling="tsn",
            crop_size=args.crop_size,
            decoder="torchvision",
            batch_size=args.batch_size,
            workers=workers,
            info=DistInfo(),
            pin_memory=trainer.device.type == "cuda",
            views=views,
        )
        warmup = min(2, len(loader) // 2)
        steps = min(args.pipeline_steps, len(loader) - warmup)
        if steps < 1:
            rows.append((name, "store too small", "not checked"))
            continue
        measured = _Measured(loader, warmup)
        preds = evaluate(
            trainer.model,
            measured,
            augment=trainer.augment,
            precision=trainer.precision,
            device=trainer.device,
            info=DistInfo(),
            max_steps=warmup + steps,
            load_clips=clip_loader(dataset, trainer.device),
        )
        seconds = time.perf_counter() - measured.started
        segments = len(preds.indices) - warmup * loader.batch_size
        rate = segments / seconds
        whole = EPIC_VALIDATION_SEGMENTS / rate / 60
        rows.append(
            (
                name,
                f"{rate * views[0] * views[1]:.4g} clips/s, {rate:.4g} segments/s "
                f"({loader.batch_size} segments a batch, {args.num_frames} frames a clip); "
                f"EPIC-100 validation {whole:.1f} min; "
                f"{time.perf_counter() - started:.1f} s",
                "info",
            )
        )
    return rows


def _nvjpeg_difference(reader, table, args, device: torch.device) -> Row:
    """Mean absolute difference of nvjpeg's uint8 clips from the CPU path's (same crops)."""
    from epicdata.dataset import EpicActionDataset
    from train.nvjpeg import NvjpegClips
    from train.transforms import TrainClipTransform

    transform = TrainClipTransform(args.crop_size)
    common = dict(num_frames=args.num_frames, training=True, transform=transform, seed=0)
    cpu = EpicActionDataset(reader, table, decoder="torchvision", **common)
    gpu = EpicActionDataset(reader, table, decoder="nvjpeg", **common)
    indices = list(range(0, len(table), max(1, len(table) // 64)))[:64]
    expected = torch.stack([cpu[i]["frames"] for i in indices])  # (N, T, C, S, S)
    batch = collate_jpeg_clips([gpu[i] for i in indices])
    got = NvjpegClips(transform, device, store_root=str(reader.root))(batch).cpu()
    diff = (got.int() - expected.int()).abs()
    mean = diff.float().mean().item()
    return (
        f"nvjpeg vs CPU decode, {len(indices)} clips",
        f"mean |difference| {mean:.3f} levels, largest {int(diff.max())}",
        _verdict(mean < NVJPEG_MAX_MEAN_DIFF),
    )


def build_parser() -> argparse.ArgumentParser:
    """The suite's options; the sizes default to None, filled in by :func:`choose_sizes`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, what in (
        ("steps", "loop steps timed"),
        ("batch_size", "clips per batch"),
        ("num_frames", "frames per clip"),
        ("crop_size", "crop side in pixels"),
        ("store_frames", "synthetic store size in frames"),
        ("pipeline_steps", "steps timed per pipeline row"),
        ("pipeline_workers", "worker counts ('all': the cores)"),
    ):
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=type(GPU_SIZES[name]),
            help=f"{what} (default {GPU_SIZES[name]} with CUDA, {TOY_SIZES[name]} without)",
        )
    parser.add_argument("--skip-run", action="store_true", help="skip the real 2-epoch run")
    parser.add_argument("--work-dir", default=None, help="where the synthetic store is built")
    parser.add_argument("--skip-pipeline", action="store_true", help="skip the throughput rows")
    return parser


def main() -> int:
    args = build_parser().parse_args()
    note = choose_sizes(args, cuda=torch.cuda.is_available())
    if note is not None:
        _say(note)
    _say("environment, device and precision")
    rows = environment() + device_and_precision()
    _say(f"training and evaluation loops, {args.steps} steps each")
    rows += host_syncs(args)
    if not args.skip_run:
        rows += real_run(args)
    _say(f"the recipes' training steps, {args.steps} steps each")
    rows += recipe_rows(args)
    if not args.skip_pipeline:
        _say("throughput: the step on clips already on the device")
        rows += throughput(args)
    body = f"{machine_line()}\n\n" + markdown_table(("check", "result", "verdict"), rows)
    if torch.cuda.is_available():
        write_section("gpu", "GPU checks (bench/gpu_suite.py)", body)
    else:
        print(body)
    return 1 if any(row[2] == "FAILED" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
