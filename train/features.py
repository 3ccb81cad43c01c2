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
import hashlib
import json
import logging
import os
import shutil
import signal
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
from epicdata.console import EpicCommand, Progress, example, preflight_output, start_command
from epicdata.dataset import check_readable, decode_torchvision, worker_deaths_named
from epicdata.errors import EpicInputError
from epicdata.frames import start_frame_at
from epicdata.store import FrameStore
from train import distributed

# Private helpers of epic-validate (its --store and --annotations options; below, how it
# reads a checkpoint and checks its input), so that epic-features does exactly the same.
from train.cli import _annotations_option, _store_option
from train.config import DEFAULT_WORKERS, TrainConfig, default_workers
from train.data import build_eval_data, build_loader, clip_loader, frames_to
from train.device import Precision, check_workers, resolve_device, resolve_precision
from train.fit import EXIT_REQUEUE, StopFlag
from train.input_spec import InputSpec
from train.model import ActionModel
from train.nvjpeg import check_nvjpeg
from train.transforms import DeviceAugment, EvalClipTransform
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
    """A segment's start as RULSTM's CSVs give it: ``max(1, floor(seconds * 30))``, the
    official rule at 30 fps (epicdata.frames.start_frame_at, float arithmetic). It gives
    the start of every row of rulstm's ``data/ek100/validation.csv`` (9,668) and
    ``test_timestamps.csv`` (13,092) from EPIC-100's timestamps (docs/features.md)."""
    return start_frame_at(start_seconds, RULSTM_FPS)


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


def margin_needed(segments: Sequence[Segment], rates: dict[str, int], clip_length: int) -> int:
    """The ``--margin-frames`` (frames kept before each segment) whose ranges alone hold
    every per-frame clip of ``segments``: the most frames any clip reads before the start
    of the segment that asks for it (neighbouring segments' ranges may make less do)."""
    need = 0
    for seg in segments:
        frames = rulstm_past_frames(rulstm_start_frame(seg.start_seconds))
        if frames is not None:
            first = max(1, our_frame(int(frames.min()), rates[seg.video_id]) - clip_length // 2)
            need = max(need, seg.start_frame - first)
    return need


def check_frames_held(
    store: FrameStore,
    requests: Sequence[FrameRequest],
    clips: Sequence[np.ndarray],
    *,
    margin: int,
) -> None:
    """Refuse (before any inference) a store that lacks a frame the per-frame clips read,
    naming the first one and a keep mode that holds them all (``margin``:
    :func:`margin_needed`). From the store's metadata alone."""
    for req, clip in zip(requests, clips, strict=True):
        if store.holds(req.video_id, clip):
            continue
        missing = next(int(f) for f in clip if not store.holds(req.video_id, [int(f)]))
        params = store.manifest.params
        raise EpicInputError(
            f"--per-frame needs {req.video_id} frame {missing} (for RULSTM's 30 fps frame "
            f"{req.rulstm_frame}, before segment {req.narration_id}), which the store does "
            f"not hold (it keeps {params.keep}, margin {params.margin_frames} frames)",
            where=str(store.root),
            fix="extract a store with `epic-extract plan --keep all`, or `--keep segments "
            f"--margin-frames {margin}` (3.5 s before each action and half a clip)",
        )


# ----------------------------------------------------------------------- output folder


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(temp)`` then rename over ``path``: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    _write_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1) + "\n"))


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # np.save on a name would append ".npy"
            np.save(handle, array)

    _write_atomic(path, write)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def open_output(out: Path, job: dict[str, Any], *, resume: bool) -> int:
    """Make or reopen the output folder of ``job`` (what must match to continue: checkpoint
    digest, split, mode, batch size, rows); returns the chunks already done. Refuses an
    existing folder without ``resume``, and a resume of another job."""
    progress = out / PROGRESS
    if out.exists() and not resume:
        raise EpicInputError(
            "the output folder exists",
            where=str(out),
            fix="pass --resume to continue it, or choose a new --out",
        )
    if out.exists() and not progress.exists() and _foreign_files(out):
        raise EpicInputError(
            "the output folder holds files but no progress.json: not an epic-features folder",
            where=str(out),
            fix="choose a new --out",
        )
    if not progress.exists():
        (out / CHUNKS).mkdir(parents=True, exist_ok=True)
        _write_json(progress, {**job, "chunks_done": 0})
        return 0
    record = json.loads(progress.read_text())
    for name, value in job.items():
        if record.get(name) != value:
            raise EpicInputError(
                f"--resume: this folder was started with {name} {record.get(name)!r}, not "
                f"{value!r}",
                where=str(progress),
                fix="run with the options it was started with, or choose a new --out",
            )
    return int(record["chunks_done"])


#: What the job script (slurm/lib.sh) may leave in the folder before progress.json exists.
JOB_MARKERS = ("job_end.json", "FAILED")


def _foreign_files(out: Path) -> list[str]:
    return [p.name for p in out.iterdir() if p.name not in JOB_MARKERS and p.name[0] != "."]


def _chunk_path(out: Path, index: int) -> Path:
    return out / CHUNKS / f"{index:06d}.npy"


def _save_chunk(out: Path, job: dict[str, Any], index: int, features: np.ndarray) -> None:
    """Chunk ``index`` then the progress record: a stop between the two redoes the chunk."""
    _save_npy(_chunk_path(out, index), features)
    _write_json(out / PROGRESS, {**job, "chunks_done": index + 1})


def _chunks(out: Path, count: int) -> list[np.ndarray]:
    return [np.load(_chunk_path(out, i)) for i in range(count)]


# ----------------------------------------------------------------------- extraction


@dataclass
class Extraction:
    """What one run feeds through the model: a dataset whose samples carry ``frames``, the
    feature function and how clips reach the device."""

    dataset: Dataset
    rows: int
    features: Callable[[torch.Tensor], torch.Tensor]  # (B, T, C, S, S) float -> (B, D)
    load_clips: Callable[[dict[str, Any]], torch.Tensor]


def run_chunks(
    extraction: Extraction,
    *,
    out: Path,
    job: dict[str, Any],
    first_chunk: int,
    batch_size: int,
    workers: int,
    device: torch.device,
    augment: DeviceAugment,
    precision: Precision,
    stop: Callable[[], bool],
) -> bool:
    """Features of rows ``first_chunk * CHUNK_BATCHES * batch_size`` on, a chunk of
    CHUNK_BATCHES batches at a time; returns False when ``stop`` asked to stop (after a
    chunk). Chunks start on batch boundaries, so a resumed run forms the same batches."""
    rows_per_chunk = CHUNK_BATCHES * batch_size
    start = first_chunk * rows_per_chunk
    if start >= extraction.rows:
        return True
    loader = build_loader(
        extraction.dataset,  # type: ignore[arg-type]
        batch_size=batch_size,
        workers=workers,
        sampler=range(start, extraction.rows),  # type: ignore[arg-type]
        drop_last=False,
        pin_memory=device.type == "cuda",
    )
    progress = Progress(len(loader), label="features", unit="batches")
    chunk, parts, done = first_chunk, [], start
    for batch in loader:
        frames = extraction.load_clips(batch)  # (B, T, C, S, S) uint8
        with torch.inference_mode(), precision.autocast():
            feats = extraction.features(augment(frames, train=False))  # (B, D)
        # Kept on the device until the chunk is saved: one copy to the host (and one wait
        # for the GPU) per chunk, not per batch.
        parts.append(feats.float())
        done += len(feats)
        progress.update()
        if done % rows_per_chunk and done < extraction.rows:
            continue
        _save_chunk(out, job, chunk, torch.cat(parts).cpu().numpy())
        chunk, parts = chunk + 1, []
        if stop() and done < extraction.rows:
            progress.close()
            return False
    progress.close()
    return True


def segment_extraction(
    model: ActionModel,
    cfg: TrainConfig,
    store: FrameStore,
    annotations: AnnotationDir,
    split: str,
    *,
    device: torch.device,
    workers: int,
) -> Extraction:
    """Each segment's evaluation clip as epic-validate builds it (1x1 view) and the model's
    pooled feature of it (:meth:`ActionModel.features`)."""
    decoder = cfg.decoder
    if decoder == "nvjpeg" and device.type == "cuda":
        check_nvjpeg(device)
    elif decoder == "nvjpeg":
        decoder = "torchvision"  # as epic-validate on the CPU (train.validate.predict)
    dataset, _ = build_eval_data(
        store,
        annotations.table(split),
        num_frames=cfg.num_frames,
        sampling=cfg.sampling,
        crop_size=cfg.crop_size,
        decoder=decoder,
        batch_size=1,
        workers=workers,
        info=distributed.discover(),
        pin_memory=False,
        modality=cfg.modality,
        flow_stack=cfg.flow_stack,
    )
    check_readable(dataset)
    return Extraction(dataset, len(dataset), model.features, clip_loader(dataset, device))


def frame_extraction(
    model: ActionModel,
    cfg: TrainConfig,
    store: FrameStore,
    segments: Sequence[Segment],
    *,
    device: torch.device,
) -> tuple[Extraction, list[FrameRequest]]:
    """The frames RULSTM reads for ``segments``, each in its clip (:func:`frame_clip`),
    checked against the store before anything runs."""
    if cfg.modality != "rgb":
        raise EpicInputError(
            f"--per-frame takes an RGB checkpoint; this one is {cfg.modality}",
            where="--per-frame",
            fix="extract per-segment features of flow models (leave out --per-frame)",
        )
    missing = sorted({s.video_id for s in segments} - set(store.video_ids))
    if missing:
        raise EpicInputError(
            f"the split needs {len(missing)} video(s) the store does not hold "
            f"({', '.join(missing[:5])})",
            where=str(store.root),
            fix="plan the store with --splits including this split",
        )
    metas = {v: store.video_meta(v) for v in {s.video_id for s in segments}}
    rates = {v: meta.rate for v, meta in metas.items()}
    clip_length = model.num_frames if model.temporal == "tsm" else 1
    requests = rulstm_requests(segments, rates)
    clips = [
        frame_clip(r.frame, clip_length=clip_length, last_frame=metas[r.video_id].decoded_frames)
        for r in requests
    ]
    check_frames_held(store, requests, clips, margin=margin_needed(segments, rates, clip_length))
    dataset = FrameClips(
        store, [(r.video_id, c) for r, c in zip(requests, clips, strict=True)], cfg.crop_size
    )
    return Extraction(
        dataset,
        len(requests),
        lambda x: per_frame_features(model, x),
        frames_to(device),
    ), requests


def _meta(
    mode: str,
    checkpoint: Path,
    digest: str,
    split: str,
    rows: int,
    spec: InputSpec,
    model: ActionModel,
) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "mode": mode,
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": digest,
        "split": split,
        "rows": rows,
        "feature_dim": model.feature_dim,
        "dtype": "float32",
        "input_spec": spec.to_dict(),
        "model": {
            "arch": model.arch,
            "temporal": model.temporal,
            "num_frames": model.num_frames,
            "modality": spec.modality,
        },
    }


def finish_segments(out: Path, job: dict[str, Any], meta: dict[str, Any], ids: list[str]) -> None:
    """features.npy (N, D) float32 and narration_ids.csv in split order, then meta.json
    (written last: its presence says the folder is complete), then the chunks go."""
    count = -(-job["rows"] // (CHUNK_BATCHES * job["batch_size"]))
    _save_npy(out / "features.npy", np.concatenate(_chunks(out, count)).astype(np.float32))

    def write_ids(tmp: Path) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["narration_id"])
            writer.writerows([i] for i in ids)

    _write_atomic(out / "narration_ids.csv", write_ids)
    meta["definition"] = (
        "the pooled feature (frame features averaged over the clip, before dropout and the "
        "heads) of each segment's evaluation clip: the 1x1 view epic-validate scores"
    )
    meta["clip"] = {"num_frames": meta["model"]["num_frames"], "sampling": job["sampling"]}
    _write_json(out / META, meta)
    shutil.rmtree(out / CHUNKS)


def finish_frames(
    out: Path, job: dict[str, Any], meta: dict[str, Any], requests: list[FrameRequest]
) -> None:
    """OUT/<modality>/ (RULSTM's LMDB: key -> raw float32 bytes) and frames.csv (each key,
    its video, RULSTM's frame and ours), then meta.json, then the chunks go. The LMDB is
    built in a temp folder and renamed: a reader never opens half of one."""
    count = -(-job["rows"] // (CHUNK_BATCHES * job["batch_size"]))
    features = np.concatenate(_chunks(out, count)).astype(np.float32)
    final = out / meta["model"]["modality"]
    tmp = out / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    map_size = len(requests) * (features.shape[1] * 4 + 256) * 2 + (16 << 20)
    env = lmdb.open(str(tmp), map_size=map_size, subdir=True)
    with env.begin(write=True) as txn:
        for req, feature in zip(requests, features, strict=True):
            txn.put(req.key.encode(), feature.tobytes())
    env.close()
    shutil.rmtree(final, ignore_errors=True)  # an earlier run stopped between the renames
    os.replace(tmp, final)

    def write_frames(path: Path) -> None:
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["key", "video_id", "rulstm_frame", "frame"])
            writer.writerows([r.key, r.video_id, r.rulstm_frame, r.frame] for r in requests)

    _write_atomic(out / "frames.csv", write_frames)
    meta["definition"] = (
        "per frame: the backbone feature of the frame alone (avg models) or at the centre "
        "(position T // 2) of a clip of the model's T consecutive frames, clamped at the "
        "video's ends (TSM); centre crop"
    )
    meta["rulstm"] = {
        "fps": RULSTM_FPS,
        "time_step": RULSTM_TIME_STEP,
        "steps": RULSTM_STEPS,
        "key": RULSTM_KEY,
        "frame_mapping": "ours = (rulstm_frame - 1) * R // 30 + 1, R = 60 (PXX_YY) or 50 (PXX_1YY)",
        "clip_length": job["clip_length"],
    }
    _write_json(out / META, meta)
    shutil.rmtree(out / CHUNKS)


def _job_record(
    mode: str,
    digest: str,
    split: str,
    batch_size: int,
    rows: int,
    model: ActionModel,
    cfg: TrainConfig,
) -> dict[str, Any]:
    """What a resumed run must share with the run it continues (progress.json)."""
    job = {
        "format_version": FORMAT_VERSION,
        "mode": mode,
        "checkpoint_sha256": digest,
        "split": split,
        "batch_size": batch_size,
        "rows": rows,
    }
    if mode == "per-frame":
        job["clip_length"] = model.num_frames if model.temporal == "tsm" else 1
    else:
        job["sampling"] = cfg.sampling
    return job


def _run_until_done_or_stopped(extraction: Extraction, store: FrameStore, **run: Any) -> bool:
    """:func:`run_chunks` with SIGUSR1/SIGTERM recorded (train.fit.StopFlag, as epic-train):
    False when one stopped it after a chunk, said in the log."""
    stop = StopFlag()
    # Said once the handlers are in place: from here a signal stops the run after a chunk.
    log.info("extracting from chunk %d; SIGUSR1/SIGTERM stop after a chunk", run["first_chunk"])
    try:
        with worker_deaths_named(store):
            finished = run_chunks(extraction, stop=stop, **run)
    finally:
        stop.restore()
    if not finished:
        log.info(
            "%s: stopped after a chunk; exiting with %d (run again with --resume to continue)",
            signal.Signals(stop.signum or signal.SIGUSR1).name, EXIT_REQUEUE,
        )  # fmt: skip
    return finished


def extract_features(
    *,
    checkpoint: str | Path,
    store: str | Path,
    annotations: str | Path,
    split: str,
    out: str | Path,
    per_frame: bool = False,
    resume: bool = False,
    batch_size: int = 32,
    workers: int = 4,
    device_name: str = "auto",
    accept_input_mismatch: bool = False,
) -> int:
    """Write the features of ``split`` into ``out`` (module docstring); returns 0, or
    EXIT_REQUEUE when a signal stopped it after a chunk (run again with ``resume``)."""
    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists() and not resume:  # before anything is loaded
        open_output(out, {}, resume=False)
    model, cfg, spec = _model_of(checkpoint, store=store)
    frame_store = FrameStore(store)
    _check_store_input(spec, frame_store, source=checkpoint, accept=accept_input_mismatch)
    annotation_dir = AnnotationDir(annotations)
    device = resolve_device(device_name, distributed.discover(), work="feature extraction")
    workers = check_workers(workers)
    if per_frame:
        extraction, requests = frame_extraction(
            model, cfg, frame_store, annotation_dir.segments(split), device=device
        )
    else:
        extraction = segment_extraction(
            model, cfg, frame_store, annotation_dir, split, device=device, workers=workers
        )
    digest = file_sha256(checkpoint)
    mode = "per-frame" if per_frame else "segment"
    job = _job_record(mode, digest, split, batch_size, extraction.rows, model, cfg)
    # The chunks and the assembled file (or LMDB) coexist until the end: twice the features.
    preflight_output(out, need_bytes=2 * extraction.rows * model.feature_dim * 4 + (1 << 20),
                     option="--out")  # fmt: skip
    first = open_output(out, job, resume=resume)
    if (out / META).exists():
        log.info("%s is complete already: nothing to do", out)
        return 0
    model = model.to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    log.info(
        "%s: %s features of %d %s of %s on %s",
        checkpoint, mode, extraction.rows, "frames" if per_frame else "segments", split, device,
    )  # fmt: skip
    augment = DeviceAugment(spec.mean, spec.std, modality=spec.modality).to(device)
    run = dict(out=out, job=job, first_chunk=first, batch_size=batch_size, workers=workers)
    run |= dict(device=device, augment=augment, precision=resolve_precision(cfg.amp, device))
    if not _run_until_done_or_stopped(extraction, frame_store, **run):
        return EXIT_REQUEUE
    meta = _meta(mode, checkpoint, digest, split, extraction.rows, spec, model)
    if per_frame:
        finish_frames(out, job, meta, requests)
    else:
        finish_segments(out, job, meta, annotation_dir.table(split).narration_ids)
    log.info("wrote %s (%d x %d float32)", out, extraction.rows, model.feature_dim)
    return 0


# ----------------------------------------------------------------------- command line


@click.command(
    cls=EpicCommand,
    epilog=example(
        "epic-features --checkpoint runs/r18/best.pt --store store --annotations annotations "
        "--split validation --out feats/val"
    ),
)
@click.option(
    "--checkpoint",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    envvar="EPIC_CHECKPOINT",
    show_envvar=True,
    help="Checkpoint (epic-train's, or a C1 model-zoo file).",
)
@_store_option(required=True)
@_annotations_option
@click.option(
    "--split",
    type=click.Choice(["train", "validation", "test"]),
    default="validation",
    envvar="EPIC_SPLIT",
    show_envvar=True,
    help="Split whose segments to extract.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    envvar="EPIC_OUT",
    show_envvar=True,
    help="Output folder (must not exist, unless --resume).",
)
@click.option("--per-frame", is_flag=True, help="Per-frame features in RULSTM's LMDB format.")
@click.option("--resume", is_flag=True, help="Continue the run stopped in --out.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, help="Clips per batch.")
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=default_workers(),
    envvar="EPIC_WORKERS",
    show_envvar=True,
    help=f"DataLoader workers: {DEFAULT_WORKERS}, or the CPUs this process may use if fewer.",
)
@click.option("--device", default="auto", help="auto, cpu, cuda, cuda:N.")
@click.option(
    "--accept-input-mismatch",
    is_flag=True,
    help="Run on a store whose frame size differs from the one the model was trained on.",
)
def main(
    checkpoint: str,
    store: str,
    annotations: str,
    split: str,
    out: str,
    per_frame: bool,
    resume: bool,
    batch_size: int,
    workers: int,
    device: str,
    accept_input_mismatch: bool,
) -> int:
    """A checkpoint's backbone features per segment (features.npy + narration_ids.csv), or
    per frame for RULSTM (--per-frame: an LMDB). Exits 75 when SIGUSR1/SIGTERM stopped it
    after a chunk: run the same command with --resume."""
    start_command()
    return extract_features(
        checkpoint=checkpoint,
        store=store,
        annotations=annotations,
        split=split,
        out=out,
        per_frame=per_frame,
        resume=resume,
        batch_size=batch_size,
        workers=workers,
        device_name=device,
        accept_input_mismatch=accept_input_mismatch,
    )


if __name__ == "__main__":
    main()
