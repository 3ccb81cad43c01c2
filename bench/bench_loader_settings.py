"""The trainer's DataLoader settings, measured: prefetch depth and persistent workers.

Usage::

    python -m bench.bench_loader_settings [--workers 2] [--batch-size 16] [--batches 40]
                                          [--repeats 2]

The trainer's own loader (``train.data.build_loader``) over the mini-EPIC store, train
clips (8 frames, crop 224 + flip, uint8), read by a stand-in for the GPU: a consumer that
takes a fixed time per batch, set to 90% of the loader's measured rate (the loader has 10%
headroom, where the depth of its queue matters most). Reported:

- prefetch factor 2, 4 (the trainer's) and 8: the fraction of the consumer's time spent
  waiting for data, conditions alternating, best-worst of ``--repeats``;
- epoch start: the wait for the first batch of a new epoch with the workers re-created (the
  trainer) and persistent, against the steady batch interval; what it adds to 30 epochs.

Pinned memory is for the GPU suite (bench/gpu_suite.py): without CUDA there is nothing to
pin. Writes its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import RandomSampler

from bench.bench_loader import build_mini_store
from bench.report import machine_line, markdown_table, value_range, write_section
from epicdata.annotations import AnnotationDir
from epicdata.dataset import EpicActionDataset
from epicdata.store import FrameStore
from train.data import PREFETCH_FACTOR, build_loader
from train.transforms import TrainClipTransform

#: The consumer's rate, as a fraction of the loader's.
CONSUMER_SHARE = 0.9
WARMUP_BATCHES = 3
EPIC_TRAIN_CLIPS = 67_217
SEED_EPOCHS = 30
#: Prefetch factors compared: fewer, the trainer's, more.
PREFETCHES = (2, PREFETCH_FACTOR, 8)


def _loader(dataset, args, batches: int, prefetch: int, persistent: bool = False):
    sampler = RandomSampler(
        dataset,
        replacement=True,
        num_samples=args.batch_size * batches,
        generator=torch.Generator().manual_seed(0),
    )
    return build_loader(
        dataset,
        batch_size=args.batch_size,
        workers=args.workers,
        sampler=sampler,
        drop_last=True,
        pin_memory=False,
        prefetch_factor=prefetch,
        persistent_workers=persistent,
    )


def loader_rate(dataset, args) -> float:
    """Batches/s of the loader alone, after its warm-up batches."""
    iterator = iter(_loader(dataset, args, args.batches + WARMUP_BATCHES, PREFETCH_FACTOR))
    for _ in range(WARMUP_BATCHES):
        next(iterator)
    started = time.perf_counter()
    count = sum(1 for _ in iterator)
    return count / (time.perf_counter() - started)


def consume(loader, step_s: float) -> tuple[float, float, list[float]]:
    """Iterate ``loader`` as a training loop taking ``step_s`` a batch: (seconds waiting for
    data after the warm-up, seconds in all after it, each batch's wait)."""
    waits = []
    iterator = iter(loader)
    while True:
        started = time.perf_counter()
        try:
            next(iterator)
        except StopIteration:
            break
        waits.append(time.perf_counter() - started)
        time.sleep(step_s)
    steady = waits[WARMUP_BATCHES:]
    return sum(steady), sum(steady) + step_s * len(steady), waits


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=40, help="Measured batches a run.")
    parser.add_argument("--epochs", type=int, default=3, help="Epochs of the epoch-start test.")
    parser.add_argument("--repeats", type=int, default=2)
    return parser


def prefetch_waits(dataset, args, step_s: float) -> dict[int, list[float]]:
    """Each prefetch factor's data wait as a share of the loop's time, one per repeat
    (the factors alternate)."""
    waits: dict[int, list[float]] = {p: [] for p in PREFETCHES}
    for _ in range(args.repeats):
        for prefetch in PREFETCHES:
            loader = _loader(dataset, args, args.batches + WARMUP_BATCHES, prefetch)
            waited, total, _ = consume(loader, step_s)
            waits[prefetch].append(waited / total)
            print(f"prefetch {prefetch}: data wait {waited / total:.1%}", flush=True)
    return waits


def epoch_start_waits(dataset, args, step_s: float) -> dict[bool, list[float]]:
    """Seconds waited for each epoch's first batch (epochs after the first), keyed by
    ``persistent_workers`` (False: re-created each epoch, as the trainer does)."""
    starts: dict[bool, list[float]] = {}
    for persistent in (False, True):
        loader = _loader(dataset, args, args.batches // 2, PREFETCH_FACTOR, persistent)
        firsts = []
        for epoch in range(args.epochs):
            dataset.set_epoch(epoch)
            _, _, batch_waits = consume(loader, step_s)
            if epoch:  # epoch 0 starts the workers either way
                firsts.append(batch_waits[0])
        starts[persistent] = firsts
        print(f"persistent={persistent}: first-batch waits {firsts}", flush=True)
    return starts


def report_body(args, rate: float, step_s: float, waits: dict, starts: dict) -> str:
    """The section's text; ``rate`` is the loader's alone, in batches/s."""
    rows = [
        [f"{p}{' (trainer)' if p == PREFETCH_FACTOR else ''}", value_range(waits[p], ".1%")]
        for p in PREFETCHES
    ]
    epoch_s = EPIC_TRAIN_CLIPS / (CONSUMER_SHARE * rate * args.batch_size)
    start_rows = [
        [
            "persistent" if persistent else "re-created each epoch (trainer)",
            value_range(starts[persistent], ".2f"),
            f"{step_s:.2f}",
            f"{SEED_EPOCHS * max(starts[persistent]):.0f}",
        ]
        for persistent in (False, True)
    ]
    extra = SEED_EPOCHS * (max(starts[False]) - min(starts[True]))
    return "\n".join([
        f"{machine_line()}. The trainer's loader (`train.data.build_loader`), mini-EPIC store, "
        f"8-frame train clips, batch {args.batch_size}, {args.workers} workers: "
        f"{rate * args.batch_size:.1f} clips/s alone. A stand-in GPU takes {step_s:.3f} s a "
        f"batch ({CONSUMER_SHARE:.0%} of the loader's rate); {args.batches} batches measured "
        f"after {WARMUP_BATCHES}, best-worst of {args.repeats} runs "
        f"(`python -m bench.bench_loader_settings`).",
        "",
        markdown_table(["prefetch factor", "data wait (share of the loop's time)"], rows),
        "",
        "Epoch start: the wait for a new epoch's first batch (epochs after the first):",
        "",
        markdown_table(
            ["workers", "first-batch wait s", "steady batch s", "30 epochs s (worst)"],
            start_rows,
        ),
        "",
        f"Re-creating the workers costs at most {extra:.0f} s over the seed's 30 epochs, "
        f"against {SEED_EPOCHS * epoch_s / 3600:.0f} h of epochs at this loader's rate on "
        f"EPIC-100's {EPIC_TRAIN_CLIPS:,} clips (a GPU node's loader is faster, its epochs "
        f"shorter, its start-up the same order).",
    ])  # fmt: skip


def main() -> None:
    args = build_parser().parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        store_root, annotations = build_mini_store(Path(tmp))
        dataset = EpicActionDataset(
            FrameStore(store_root),
            AnnotationDir(annotations).table("train"),
            num_frames=8,
            training=True,
            transform=TrainClipTransform(224),
            seed=0,
        )
        rate = loader_rate(dataset, args)
        step_s = 1 / (CONSUMER_SHARE * rate)
        print(f"loader alone: {rate * args.batch_size:.1f} clips/s; consumer step {step_s:.3f} s")
        waits = prefetch_waits(dataset, args, step_s)
        starts = epoch_start_waits(dataset, args, step_s)
    body = report_body(args, rate, step_s, waits, starts)
    write_section("loader-settings", "Loader settings: prefetch and persistent workers", body)


if __name__ == "__main__":
    main()
