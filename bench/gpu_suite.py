"""The checks only a GPU can run, in one script for the first session with a GPU machine.

Usage (one run, a few minutes on one GPU; writes the gpu section of docs/benchmarks.md)::

    python -m bench.gpu_suite [--steps 40] [--batch-size 32] [--num-frames 8] [--skip-run]

1. environment: torch, its CUDA and cuDNN, the GPUs and their compute capability;
2. device and precision: ``--device cuda`` / ``cuda:N`` land where asked (``cuda:1``
   needs 2 GPUs), ``--amp auto`` picks bf16 on compute capability 8.0+ and fp16 below;
3. host syncs: training steps and an evaluation pass of the real loop bodies on
   synthetic pinned batches under ``torch.cuda.set_sync_debug_mode("warn")``, for bf16 and
   fp16, every sync reported with its source line. A step must not wait for the GPU: the
   loop looks at the loss once every ``STOP_SYNC_STEPS`` steps, nothing else syncs;
4. a short real run (unless ``--skip-run``): the mini-EPIC extracted, 2 epochs of
   ``epic-train --device cuda --amp auto`` with loader workers, then ``epic-validate`` of
   ``last.pt`` in a new process, which must give the metrics the run logged.

On a machine without CUDA it runs what it can (the loop bodies on the CPU, where there is no
sync to see) and says what it could not check; it writes nothing to docs/ then.
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from bench.report import machine_line, markdown_table, write_section
from epicdata.constants import IMAGENET_MEAN, IMAGENET_STD
from train.device import BF16_MIN_CAPABILITY, make_scaler, resolve_device, resolve_precision
from train.distributed import DistInfo
from train.engine import STOP_SYNC_STEPS, EpochStats, Precision, evaluate, train_one_epoch
from train.fit import build_optimizer
from train.model import build_model
from train.transforms import DeviceAugment

Row = tuple[str, str, str]  # check, result, verdict


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

    def __init__(self, count: int, batch: int, frames: int, size: int, pin: bool) -> None:
        gen = torch.Generator().manual_seed(0)
        clips = torch.randint(0, 256, (batch, frames, 3, size, size), generator=gen)
        self.batch = {
            "frames": clips.to(torch.uint8),
            "verb": torch.randint(0, 97, (batch,), generator=gen),
            "noun": torch.randint(0, 300, (batch,), generator=gen),
            "index": torch.arange(batch),
        }
        if pin:
            self.batch = {k: v.pin_memory() if k != "index" else v for k, v in self.batch.items()}
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
    model = build_model(weights="none", dropout=0.5, device=device, channels_last=True)
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


def _where(lines: collections.Counter) -> str:
    return ", ".join(f"{line} x{n}" for line, n in lines.most_common()) or "none"


def real_run(args: argparse.Namespace) -> list[Row]:
    """Extract the mini-EPIC, train 2 epochs on the GPU, validate last.pt in a new process."""
    if not torch.cuda.is_available():
        return [("real run on the GPU", "no CUDA on this machine", "not checked")]
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--crop-size", type=int, default=224)
    parser.add_argument("--skip-run", action="store_true", help="skip the real 2-epoch run")
    args = parser.parse_args()
    rows = environment() + device_and_precision() + host_syncs(args)
    if not args.skip_run:
        rows += real_run(args)
    body = f"{machine_line()}\n\n" + markdown_table(("check", "result", "verdict"), rows)
    if torch.cuda.is_available():
        write_section("gpu", "GPU checks (bench/gpu_suite.py)", body)
    else:
        print(body)
    return 1 if any(row[2] == "FAILED" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
