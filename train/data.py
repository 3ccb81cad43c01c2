"""Datasets and loaders, built the same way for training, per-epoch validation and
``epic-validate``, and how the loop gets a loader batch's clips onto the device."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from epicdata.annotations import AnnotationDir, SegmentTable
from epicdata.dataset import EpicActionDataset
from epicdata.errors import EpicInputError
from epicdata.store import FrameStore
from train import distributed
from train.distributed import DistInfo
from train.nvjpeg import NvjpegClips, collate_jpeg_clips
from train.transforms import EvalClipTransform, TrainClipTransform


def leave_stop_signals_to_the_main_process(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a worker ignores SIGUSR1 and every SIGTERM but its
    parent's.

    torch's worker SIGTERM handler exits quietly for the parent's SIGTERM (how the loader
    ends a stuck worker) and dies of any other, so a SIGTERM sent to the job's processes
    killed the workers and the main process then failed with "DataLoader worker ... killed
    by signal: Terminated" instead of saving last.pt. Here SIGTERM is blocked and a thread
    takes it with sigwaitinfo, which tells who sent it.
    """
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    # Blocked before the thread starts, so that the thread (and any thread the worker
    # starts later) inherits the mask and the signal waits for sigwaitinfo.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=_exit_on_parents_sigterm, name="sigterm", daemon=True).start()


def _exit_on_parents_sigterm() -> None:
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == os.getppid():
            os._exit(0)


#: Batches each worker keeps ready. Measured with a stand-in GPU at 90% of the loader's
#: rate (bench/bench_loader_settings.py, docs/benchmarks.md): the loop waited 4.1-4.5% of
#: its time at 2, 3.3-3.8% at 4 and 2.9-4.1% at 8; 4 it is.
PREFETCH_FACTOR = 4


def build_loader(
    dataset: EpicActionDataset,
    *,
    batch_size: int,
    workers: int,
    sampler: torch.utils.data.Sampler,
    drop_last: bool,
    pin_memory: bool,
    prefetch_factor: int = PREFETCH_FACTOR,
    persistent_workers: bool = False,
) -> DataLoader:
    """The trainer's DataLoader. Workers are not persistent: each epoch's workers get the
    dataset's current epoch (set_epoch), which seeds the per-clip augmentation, and a
    persistent worker would keep its first epoch's copy. Re-creating them was measured to
    cost nothing a persistent one saves (the new epoch's first batch waited 0.31 s either
    way, bench/bench_loader_settings.py); ``persistent_workers`` is there for that
    benchmark."""
    return DataLoader(
        dataset,
        collate_fn=collate_jpeg_clips if dataset.decoder == "nvjpeg" else None,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        prefetch_factor=prefetch_factor if workers else None,
        persistent_workers=persistent_workers and workers > 0,
        worker_init_fn=leave_stop_signals_to_the_main_process if workers else None,
        # Its own generator for the workers' base seed: drawing it from the global RNG
        # would shift dropout's draws, and a mid-epoch resume could not replay them.
        generator=torch.Generator(),
    )


@dataclass
class TrainData:
    dataset: EpicActionDataset
    sampler: distributed.ResumableDistributedSampler
    loader: DataLoader
    steps_per_epoch: int


def build_train_data(
    store: FrameStore,
    table: SegmentTable,
    *,
    num_frames: int,
    sampling: str,
    crop_size: int,
    decoder: str,
    seed: int,
    batch_size: int,
    workers: int,
    info: DistInfo,
    pin_memory: bool,
    limit_batches: int | None,
    train_crop: str = "seed",
    modality: str = "rgb",
    flow_stack: int = 5,
) -> TrainData:
    """The shuffled, augmented training clips of ``table``, sharded over the ranks;
    ``train_crop``: train.transforms.TrainClipTransform's ``crop``. ``modality="flow"``:
    ``num_frames`` snippets of ``flow_stack`` (u, v) pairs from a flow store, clips
    (B, T, 2 * flow_stack, S, S) uint8."""
    dataset = EpicActionDataset(
        store,
        table,
        num_frames=num_frames,
        sampling=sampling,
        training=True,
        transform=TrainClipTransform(crop_size, crop=train_crop, modality=modality),
        decoder=decoder,
        seed=seed,
        modality=modality,
        flow_stack=flow_stack,
    )
    sampler = distributed.ResumableDistributedSampler(
        dataset, rank=info.rank, world_size=info.world_size, seed=seed
    )
    steps = len(dataset) // info.world_size // batch_size
    if steps == 0:
        raise EpicInputError(
            f"the {table.split} split has {len(dataset)} segments, fewer than one batch of "
            f"{batch_size} x {info.world_size} process(es)",
            fix="lower --batch-size",
        )
    loader = build_loader(
        dataset,
        batch_size=batch_size,
        workers=workers,
        sampler=sampler,
        drop_last=True,
        pin_memory=pin_memory,
    )
    return TrainData(dataset, sampler, loader, min(steps, limit_batches or steps))


def build_eval_data(
    store: FrameStore,
    table: SegmentTable,
    *,
    num_frames: int,
    sampling: str,
    crop_size: int,
    decoder: str,
    batch_size: int,
    workers: int,
    info: DistInfo,
    pin_memory: bool,
    modality: str = "rgb",
    flow_stack: int = 5,
    views: tuple[int, int] = (1, 1),
) -> tuple[EpicActionDataset, DataLoader]:
    """Every segment of ``table`` once, centre crops, split over the ranks without padding
    (``modality``, ``flow_stack``: as :func:`build_train_data`).

    ``views`` (clips, crops) other than (1, 1): each sample is (clips * crops, T, C, S, S)
    test views (epicdata.dataset), and a batch holds ``batch_size // (clips * crops)``
    segments (at least one), so that a batch never holds more than ``batch_size`` clips
    unless one segment's views alone do."""
    clips, crops = views
    dataset = EpicActionDataset(
        store,
        table,
        num_frames=num_frames,
        sampling=sampling,
        transform=EvalClipTransform(crop_size, crops=crops),
        decoder=decoder,
        modality=modality,
        flow_stack=flow_stack,
        num_clips=clips,
    )
    loader = build_loader(
        dataset,
        batch_size=max(1, batch_size // (clips * crops)),
        workers=workers,
        sampler=distributed.ShardSampler(len(dataset), rank=info.rank, world_size=info.world_size),
        drop_last=False,
        pin_memory=pin_memory,
    )
    return dataset, loader


#: A loader batch -> (B, T, C, S, S) uint8 clips on the device (C: 3, or 2 * flow_stack).
ClipLoader = Callable[[dict[str, Any]], torch.Tensor]


def frames_to(device: torch.device) -> ClipLoader:
    """The CPU decoders' batches: the workers' uint8 clips, copied to ``device``."""

    def load(batch: dict[str, Any]) -> torch.Tensor:
        return batch["frames"].to(device, non_blocking=True)  # (B, T, C, H, W) uint8

    return load


def clip_loader(dataset: EpicActionDataset, device: torch.device) -> ClipLoader:
    """How the training or evaluation loop gets a batch's uint8 clips onto ``device``: a copy
    of the workers' clips, or (``--decoder nvjpeg``) decoding and cropping there."""
    if dataset.decoder == "nvjpeg":
        store = dataset.store
        origin = store.staged_from or store.root  # the bytes are the store's: advise on it
        return NvjpegClips(dataset.transform, device, store_root=str(origin))
    return frames_to(device)


def metric_sets(annotations: AnnotationDir, split: str) -> dict[str, frozenset]:
    """Tail classes and unseen participants for the official metrics of ``split``."""
    return {
        "tail_verbs": annotations.tail_verbs(),
        "tail_nouns": annotations.tail_nouns(),
        "unseen_participants": (
            annotations.unseen_participants(split)
            if split in ("validation", "test")
            else frozenset()
        ),
    }
