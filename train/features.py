"""epic-features: a checkpoint's backbone features, per segment or per frame for RULSTM.

    epic-features --checkpoint RUN/best.pt --store S --annotations A --split validation \\
        --out feats/val [--per-frame] [--resume]

Per segment (default): the pooled feature (``ActionModel.features``: frame features
averaged over the clip, before dropout and the heads) of each segment's evaluation clip,
the clip ``epic-validate`` scores with 1x1 views. ``OUT/features.npy`` (float32, (N, D)),
``OUT/narration_ids.csv`` (the split's rows, in order) and ``OUT/meta.json``.

``--per-frame``: per-frame features for github fpv-iplab/rulstm's anticipation code, in its
format (``RULSTM/dataset.py``): ``OUT/<modality>/`` one LMDB environment, keys
``f"{video_id}_frame_{n:010d}.jpg"`` with n a 30 fps frame number, values the raw float32
bytes of one feature. The frames are those RULSTM asks for every segment of the split
(every 0.25 s, 14 steps, before the action starts), mapped to this store's numbering
(:func:`our_frame`). A frame's feature: the backbone's feature of that frame, alone (avg
models) or at the centre of a clip of the model's T consecutive frames (TSM). docs/features.md.

Work is done in chunks of whole batches, each written atomically with a progress record;
SIGUSR1/SIGTERM stop the run after the current chunk with exit 75 (as epic-train; the job
script requeues or stops, slurm/lib.sh) and ``--resume`` continues from the last chunk.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import lmdb
import numpy as np
import torch
from torch.utils.data import Dataset

from epicdata.annotations import AnnotationDir, Segment
from epicdata.console import EpicCommand, Progress, example, start_command
from epicdata.dataset import check_readable, decode_torchvision, worker_deaths_named
from epicdata.errors import EpicInputError
from epicdata.store import FrameStore
from train import distributed
from train.config import DEFAULT_WORKERS, TrainConfig, default_workers
from train.data import build_eval_data, build_loader, clip_loader, frames_to
from train.device import Precision, check_workers, resolve_device, resolve_precision
from train.fit import EXIT_REQUEUE, StopFlag
from train.input_spec import InputSpec
from train.model import ActionModel
from train.nvjpeg import check_nvjpeg
from train.transforms import DeviceAugment, EvalClipTransform

# Private helpers of epic-validate, imported so that a checkpoint is read and its input
# checked exactly as there (published C1 files included).
from train.validate import _check_store_input, _model_of

log = logging.getLogger(__name__)

#: RULSTM's frame numbers count a 30 fps stream (its README: "assuming a fixed framerate
#: of 30fps"); ``--alpha`` 0.25 s between steps; ``--S_enc`` 6 + ``--S_ant`` 8 steps.
RULSTM_FPS = 30
RULSTM_TIME_STEP = 0.25
RULSTM_STEPS = 14
RULSTM_KEY = "{video_id}_frame_{frame:010d}.jpg"
#: Batches per chunk: what a stop signal may wait for, and what a resume redoes at most.
CHUNK_BATCHES = 8
FORMAT_VERSION = 1
PROGRESS = "progress.json"
META = "meta.json"
CHUNKS = "chunks"


# ----------------------------------------------------------------------- RULSTM's frames


def rulstm_start_frame(start_seconds: float) -> int:
    """A segment's start as RULSTM's CSVs give it: ``floor(seconds * 30)`` (in floats, as
    the official frame numbers; e.g. P01_101_0 at 00:00:02.86 is 85 in its
    ``data/ek100/test_timestamps.csv``)."""
    return math.floor(float(start_seconds) * RULSTM_FPS)


def rulstm_past_frames(
    start_frame: int,
    *,
    time_step: float = RULSTM_TIME_STEP,
    steps: int = RULSTM_STEPS,
    fps: int = RULSTM_FPS,
) -> np.ndarray | None:
    """(steps,) 30 fps frame numbers RULSTM reads before an action starting at 30 fps
    frame ``start_frame``, oldest first; None where RULSTM discards the segment (no frame
    >= 1). The same numpy operations as ``SequenceDataset.__sample_frames_past``, so the
    same float rounding: ``floor((start / fps - k * time_step) * fps)`` for k = steps..1,
    frames below 1 replaced by the smallest valid one."""
    time_stamps = np.arange(time_step, time_step * (steps + 1), time_step)[::-1]
    time_stamps = start_frame / fps - time_stamps
    frames = np.floor(time_stamps * fps).astype(int)
    if frames.max() >= 1:
        frames[frames < 1] = frames[frames >= 1].min()
    return frames if frames.min() >= 1 else None


def our_frame(rulstm_frame: int, rate: int) -> int:
    """This store's frame (rate R: 60 or 50, frame n at (n - 1) / R s) for RULSTM's 30 fps
    frame f, the picture at (f - 1) / 30 s: the last of ours at or before that time,
    ``(f - 1) * R // 30 + 1`` (exact at 60 fps: 2f - 1; at 50 fps at most 1/50 s earlier,
    never later: an anticipation feature must not see past its time)."""
    return (int(rulstm_frame) - 1) * int(rate) // RULSTM_FPS + 1


def rulstm_key(video_id: str, rulstm_frame: int) -> str:
    """The LMDB key RULSTM reads: ``video + "_" + "frame_{:010d}.jpg".format(f)``."""
    return RULSTM_KEY.format(video_id=video_id, frame=int(rulstm_frame))


@dataclass(frozen=True)
class FrameRequest:
    """One per-frame feature: RULSTM's 30 fps frame, ours, and the first segment asking."""

    video_id: str
    rulstm_frame: int
    frame: int
    narration_id: str

    @property
    def key(self) -> str:
        return rulstm_key(self.video_id, self.rulstm_frame)


def rulstm_requests(segments: Sequence[Segment], rates: dict[str, int]) -> list[FrameRequest]:
    """Every frame RULSTM asks for the ``segments``, once, sorted by (video, frame);
    ``rates``: each video's frame rate R."""
    seen: dict[tuple[str, int], FrameRequest] = {}
    for seg in segments:
        frames = rulstm_past_frames(rulstm_start_frame(seg.start_seconds))
        for f in () if frames is None else frames.tolist():
            if (seg.video_id, f) not in seen:
                ours = our_frame(f, rates[seg.video_id])
                seen[seg.video_id, f] = FrameRequest(seg.video_id, f, ours, seg.narration_id)
    return [seen[k] for k in sorted(seen)]


def frame_clip(frame: int, *, clip_length: int, last_frame: int) -> np.ndarray:
    """(clip_length,) frame numbers of the clip whose feature at position
    ``clip_length // 2`` is ``frame``'s: consecutive frames centred on it, clamped to
    [1, last_frame] (the first or last frame repeated at the video's ends)."""
    offsets = np.arange(clip_length) - clip_length // 2
    return np.clip(frame + offsets, 1, last_frame).astype(np.int64)


def per_frame_features(model: ActionModel, clips: torch.Tensor) -> torch.Tensor:
    """(B, T, C, H, W) normalised clips -> (B, D): the backbone's feature of each clip's
    centre frame (position T // 2), not averaged; T is 1 for avg models."""
    b, t = clips.shape[:2]
    features = model.backbone(clips.flatten(0, 1))  # (B*T, D)
    return features.view(b, t, -1)[:, t // 2]


class FrameClips(Dataset):
    """The (T, C, S, S) uint8 centre-cropped clips of :func:`frame_clip`, one per request."""

    decoder = "torchvision"  # train.data.build_loader's collate choice

    def __init__(self, store: FrameStore, clips: list[tuple[str, np.ndarray]], crop_size: int):
        self.store = store
        self.clips = clips
        self.transform = EvalClipTransform(crop_size)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, Any]:
        video_id, frames = self.clips[index]
        jpegs = self.store.read_frames(video_id, frames)
        decoded = torch.stack([decode_torchvision(j) for j in jpegs])  # (T, 3, H, W) uint8
        return {"frames": self.transform(decoded), "index": index}


def check_frames_held(
    store: FrameStore, requests: Sequence[FrameRequest], clips: Sequence[np.ndarray]
) -> None:
    """Refuse (before any inference) a store that lacks a frame the per-frame clips read,
    naming the first one and a keep mode that holds them all."""
    margin = 0
    starts = {}
    for req, clip in zip(requests, clips, strict=True):
        start = starts.setdefault(req.video_id, {})
        start.setdefault(req.narration_id, None)
    for req, clip in zip(requests, clips, strict=True):
        if not store.holds(req.video_id, clip):
            need = _margin_needed(store, requests, clips)
            missing = [int(f) for f in clip if not store.holds(req.video_id, [int(f)])]
            raise EpicInputError(
                f"--per-frame needs {req.video_id} frame {missing[0]} (for RULSTM's 30 fps "
                f"frame {req.rulstm_frame}, before segment {req.narration_id}), which the "
                f"store does not hold (it keeps {store.manifest.params.keep}, margin "
                f"{store.manifest.params.margin_frames} frames)",
                where=str(store.root),
                fix=f"extract a store with `epic-extract plan --keep all`, or --keep segments "
                f"--margin-frames {need} (3.5 s before each action, and half a clip)",
            )
    del margin


def _margin_needed(
    store: FrameStore, requests: Sequence[FrameRequest], clips: Sequence[np.ndarray]
) -> int:
    """The fewest ``--margin-frames`` that hold every clip: the most frames any clip reads
    before the start of the segment that asks for it."""
    firsts: dict[str, int] = {}
    for req, clip in zip(requests, clips, strict=True):
        firsts[req.narration_id] = min(firsts.get(req.narration_id, clip.min()), clip.min())
    return max(0, *(s - firsts[s_id] for s_id, s in _segment_starts(store, firsts).items()))


def _segment_starts(store: FrameStore, ids: dict[str, int]) -> dict[str, int]:
    return {nid: _STARTS[nid] for nid in ids if nid in _STARTS}


_STARTS: dict[str, int] = {}
