"""Feature extraction throughput (epic-features), for bench/gpu_suite.py.

:func:`feature_rows` times the real extraction loop (``train.features.run_chunks``: the
loader, the model's feature path, the chunks written atomically to a temp folder) on a
store the caller built, per segment (each segment's evaluation clip, pooled feature) and
per frame (one frame's clip each, as ``--per-frame``), and returns gpu_suite rows.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from epicdata.annotations import SegmentTable
from epicdata.store import FrameStore
from train.data import build_eval_data, clip_loader, frames_to
from train.device import Precision
from train.distributed import DistInfo
from train.features import (
    CHUNK_BATCHES,
    Extraction,
    FrameClips,
    frame_clip,
    open_output,
    per_frame_features,
    run_chunks,
)
from train.model import ActionModel
from train.transforms import DeviceAugment

Row = tuple[str, str, str]  # check, result, verdict (bench/gpu_suite.py's)
#: EPIC-100's validation split, for the projected per-segment pass.
EPIC_VALIDATION_SEGMENTS = 9_668


def _segments(
    reader: FrameStore, table: SegmentTable, model: ActionModel, device: torch.device, **clip
) -> Extraction:
    dataset, _ = build_eval_data(
        reader,
        table,
        num_frames=clip["num_frames"],
        sampling="tsn",
        crop_size=clip["crop_size"],
        decoder="torchvision",
        batch_size=1,
        workers=0,
        info=DistInfo(),
        pin_memory=False,
    )
    return Extraction(dataset, len(dataset), model.features, clip_loader(dataset, device))


def _frames(
    reader: FrameStore, table: SegmentTable, model: ActionModel, device: torch.device, **clip
) -> Extraction:
    """One clip per segment start (frames every store holds), as --per-frame builds them."""
    length = model.num_frames if model.temporal == "tsm" else 1
    ends = zip(table.video_ids, table.start_frames, table.stop_frames, strict=True)
    clips = [
        (video, frame_clip(int(start), clip_length=length, last_frame=int(stop)))
        for video, start, stop in ends
    ]
    dataset = FrameClips(reader, clips, clip["crop_size"])
    return Extraction(
        dataset, len(clips), lambda x: per_frame_features(model, x), frames_to(device)
    )


def feature_rows(
    reader: FrameStore,
    table: SegmentTable,
    *,
    model: ActionModel,
    augment: DeviceAugment,
    precision: Precision,
    device: torch.device,
    num_frames: int,
    crop_size: int,
    batch_size: int,
    workers: int,
    batches: int,
    work_dir: str | Path | None = None,
) -> list[Row]:
    """Rows per segment and per frame: rows/s over ``batches`` batches after one warm-up
    chunk (cuDNN autotuning, worker start), and the seconds each row took in all."""
    rows: list[Row] = []
    model = model.eval()
    for name, build in (("per segment", _segments), ("per frame", _frames)):
        started = time.perf_counter()
        extraction = build(reader, table, model, device, num_frames=num_frames, crop_size=crop_size)
        chunk_rows = CHUNK_BATCHES * batch_size
        total = min(extraction.rows, chunk_rows + batches * batch_size)
        if total <= chunk_rows:
            rows.append((f"epic-features {name}", "store too small", "not checked"))
            continue
        extraction.rows = total
        with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
            out = Path(tmp) / "out"
            job = {"batch_size": batch_size, "rows": total}
            open_output(out, job, resume=False)
            run = dict(out=out, job=job, batch_size=batch_size, workers=workers, device=device)
            run |= dict(augment=augment, precision=precision, stop=lambda: False)
            extraction.rows = chunk_rows  # the warm-up chunk
            run_chunks(extraction, first_chunk=0, **run)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            timed = time.perf_counter()
            extraction.rows = total
            run_chunks(extraction, first_chunk=1, **run)
            seconds = time.perf_counter() - timed
        rate = (total - chunk_rows) / seconds
        length = num_frames if name == "per segment" or model.temporal == "tsm" else 1
        projection = (
            f"; EPIC-100 validation {EPIC_VALIDATION_SEGMENTS / rate / 60:.1f} min"
            if name == "per segment"
            else ""
        )
        rows.append(
            (
                f"epic-features {name}, {workers} workers",
                f"{rate:.4g} {'segments' if name == 'per segment' else 'frames'}/s "
                f"({batch_size} a batch, {length}-frame clips, {crop_size} px){projection}; "
                f"{time.perf_counter() - started:.1f} s",
                "info",
            )
        )
    return rows
