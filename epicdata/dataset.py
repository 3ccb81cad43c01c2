"""The torch Dataset of action segments read from the frame store.

A sample is a dict::

    frames        uint8 tensor (T, C, H, W) after the clip transform: RGB (C = 3), or for
                  ``modality="flow"`` T snippets of ``flow_stack`` (u, v) pairs, channels
                  u1 v1 u2 v2 ... (C = 2 * flow_stack; C1's ``_intersperse`` order)
    verb, noun    int class ids (absent for the unlabelled test split)
    narration_id  str
    index         int, the segment's row in the split (to put outputs back in order)

With ``decoder="nvjpeg"`` the workers decode nothing: ``frames`` is replaced by

    jpegs         list of T uint8 tensors (N_t,), the stored JPEG bytes
    crop          int64 tensor (5,): top, left, height, width, flip drawn by the transform
    frame_numbers int64 tensor (T,)
    video_id      str

and the main process decodes and crops on the GPU (train/nvjpeg.py), with the crop drawn
here from the same per-clip generator as the CPU path's.

Multi-view testing (``num_clips`` temporal views, a transform whose ``view_crops`` > 1,
e.g. train.transforms.EvalClipTransform(size, crops=3)) makes ``frames`` a stack of views

    frames        uint8 tensor (V, T, C, S, S), V = num_clips * crops, view c * crops + k
                  the k-th crop of temporal view c

each frame decoded once per segment however many views share it.

A frame that cannot be read or decoded is an error naming the narration id, the video, the
frame and the shard: never a substitute sample.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_jpeg

from epicdata.annotations import SegmentTable
from epicdata.errors import EnvironmentProblem, EpicInputError, StoreError, StoreIncompleteError
from epicdata.layout import shard_filename
from epicdata.manifest import MODALITIES
from epicdata.sampling import (
    flow_segment_range,
    flow_snippet_frames,
    flow_snippet_starts,
    flow_view_starts,
    linspace_frames,
    linspace_view_frames,
    tsn_frames,
    tsn_view_frames,
)
from epicdata.store import FrameStore

SAMPLINGS = ("linspace", "tsn")
#: Where the JPEGs are decoded: in the loader workers (torchvision, pil), or on the GPU in
#: the main process (nvjpeg: the workers return the bytes).
DECODERS = ("torchvision", "pil", "nvjpeg")
#: The decoders that run in the loader workers (nvjpeg decodes in the main process, on the GPU).
CPU_DECODERS = ("torchvision", "pil")

#: (frames (T, C, H, W) uint8, generator) -> frames (T, C, h, w) uint8. With
#: ``decoder="nvjpeg"`` the transform also needs ``draw(height, width, generator)``,
#: returning a tuple of 5 ints (see train.transforms.TrainClipTransform).
ClipTransform = Callable[[torch.Tensor, np.random.Generator], torch.Tensor]


def decode_torchvision(jpeg: bytes, mode: ImageReadMode = ImageReadMode.UNCHANGED) -> torch.Tensor:
    """JPEG bytes -> (C, H, W) uint8 with libjpeg-turbo through torchvision: RGB (C = 3) as
    stored, or (``mode=ImageReadMode.GRAY``) one grey channel."""
    with warnings.catch_warnings():
        # torchvision >= 0.29 announces decode_jpeg's move to TorchCodec on every call; it
        # still works and is the fastest decoder here (``--decoder pil`` is the fallback).
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(torch.frombuffer(bytearray(jpeg), dtype=torch.uint8), mode=mode)


def decode_pil(jpeg: bytes, mode: str = "RGB") -> torch.Tensor:
    """JPEG bytes -> (C, H, W) uint8 with Pillow (or pillow-simd): RGB, or (``mode="L"``)
    one grey channel."""
    with Image.open(io.BytesIO(jpeg)) as image:
        array = np.array(image.convert(mode))  # writable: torch shares its memory
    if array.ndim == 2:
        return torch.from_numpy(array).unsqueeze(0)  # (1, H, W)
    return torch.from_numpy(array).permute(2, 0, 1)  # (C, H, W)


def decode_torchvision_gray(jpeg: bytes) -> torch.Tensor:
    """A flow component's grayscale JPEG -> (1, H, W) uint8."""
    return decode_torchvision(jpeg, ImageReadMode.GRAY)


def decode_pil_gray(jpeg: bytes) -> torch.Tensor:
    """A flow component's grayscale JPEG -> (1, H, W) uint8."""
    return decode_pil(jpeg, "L")


_DECODE = {
    ("torchvision", "rgb"): decode_torchvision,
    ("pil", "rgb"): decode_pil,
    ("torchvision", "flow"): decode_torchvision_gray,
    ("pil", "flow"): decode_pil_gray,
}


class EpicActionDataset(Dataset):
    """Segments of one split, ``num_frames`` frames each, from a :class:`FrameStore`.

    ``sampling``: ``linspace`` (the seed's ``np.linspace(start, stop - 1, T)``, same frames
    every epoch) or ``tsn`` (a random frame per part in training, part centres otherwise).
    ``transform`` gets the decoded clip and a generator seeded by (seed, epoch, index), so
    a sample's augmentation depends neither on the worker that loads it nor on resuming;
    call :meth:`set_epoch` before each epoch (workers must not persist across epochs).

    ``modality="flow"`` reads a flow store: ``num_frames`` snippets of ``flow_stack``
    consecutive flow frames, their starts picked by the same ``sampling`` in flow-index
    space, every snippet inside the segment's flow range (epicdata.sampling's flow
    functions, with the stride and frame count of the video's metadata).

    ``num_clips`` > 1 (evaluation only, CPU decoders): ``num_clips`` temporal views per
    segment (epicdata.sampling's view functions; :meth:`view_frames`), each cut into the
    transform's ``view_crops`` by its ``views`` method: see the module docstring.
    """

    def __init__(
        self,
        store: FrameStore,
        table: SegmentTable,
        *,
        num_frames: int,
        sampling: str = "linspace",
        training: bool = False,
        transform: ClipTransform | None = None,
        decoder: str = "torchvision",
        seed: int = 0,
        modality: str = "rgb",
        flow_stack: int = 5,
        num_clips: int = 1,
    ) -> None:
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling={sampling!r}: expected one of {', '.join(SAMPLINGS)}")
        if decoder not in DECODERS:
            raise ValueError(f"decoder={decoder!r}: expected one of {', '.join(DECODERS)}")
        if modality not in MODALITIES:
            raise ValueError(f"modality={modality!r}: expected one of {', '.join(MODALITIES)}")
        if flow_stack < 1:
            raise ValueError(f"flow_stack must be >= 1, got {flow_stack}")
        crops = getattr(transform, "view_crops", 1)
        if (num_clips, crops) != (1, 1) and (training or decoder == "nvjpeg" or num_clips < 1):
            raise ValueError(
                f"{num_clips}x{crops} test views need num_clips >= 1, an evaluation "
                f"dataset and a CPU decoder (training={training}, decoder={decoder!r})"
            )
        _check_modality(store, modality, decoder)
        missing = sorted(set(table.video_ids) - set(store.video_ids))
        if missing:
            raise StoreError(
                f"the {table.split} split needs {len(missing)} video(s) the store {store.root} "
                f"does not hold ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); "
                f"plan the store with --splits including {table.split}"
            )
        self.store = store
        self.table = table
        self.num_frames = num_frames
        self.sampling = sampling
        self.training = training
        self.transform = transform
        self.decoder = decoder
        self.decode = _DECODE.get((decoder, modality))
        self.modality = modality
        self.flow_stack = flow_stack
        self.seed = seed
        self.epoch = 0
        self.num_clips = num_clips
        self.multi_view = (num_clips, crops) != (1, 1)
        self._shard_of = store.manifest.video_to_shard()

    def __len__(self) -> int:
        return len(self.table)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def frame_numbers(self, index: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """(T,) int64 frame numbers the clip of segment ``index`` reads; for flow the
        (T * flow_stack,) flow frames, snippet after snippet. With several temporal views:
        every frame of every view, sorted and unique (what the sample reads)."""
        if self.multi_view:
            views = [self.view_frames(index, c) for c in range(self.num_clips)]
            return np.unique(np.concatenate(views))
        if self.modality == "flow":
            first, last, count = self._flow_range(index)
            starts = flow_snippet_starts(
                first,
                last,
                self.num_frames,
                self.flow_stack,
                sampler=self.sampling,
                training=self.training,
                rng=rng,
            )
            return flow_snippet_frames(starts, self.flow_stack, count)
        start = int(self.table.start_frames[index])
        stop = int(self.table.stop_frames[index])
        if self.sampling == "linspace":
            return linspace_frames(start, stop, self.num_frames)
        return tsn_frames(start, stop, self.num_frames, training=self.training, rng=rng)

    def view_frames(self, index: int, view: int) -> np.ndarray:
        """The frame numbers of temporal view ``view`` of ``num_clips`` of segment ``index``
        (as :meth:`frame_numbers`; one view is the evaluation clip itself)."""
        if self.modality == "flow":
            first, last, count = self._flow_range(index)
            starts = flow_view_starts(
                first,
                last,
                self.num_frames,
                self.flow_stack,
                sampler=self.sampling,
                view=view,
                num_views=self.num_clips,
            )
            return flow_snippet_frames(starts, self.flow_stack, count)
        start = int(self.table.start_frames[index])
        stop = int(self.table.stop_frames[index])
        rule = linspace_view_frames if self.sampling == "linspace" else tsn_view_frames
        return rule(start, stop, self.num_frames, view=view, num_views=self.num_clips)

    def _flow_range(self, index: int) -> tuple[int, int, int]:
        """(first, last, flow frame count): the inclusive flow-index range of segment
        ``index`` (by its video's stride) and the video's flow frame count, from the
        store's metadata."""
        meta = self.store.video_meta(self.table.video_ids[index])
        count = meta.decoded_frames  # a flow video's: its flow frame count
        first, last = flow_segment_range(
            int(self.table.start_frames[index]),
            int(self.table.stop_frames[index]),
            meta.flow.stride,
            count,
        )
        return first, last, count

    def readable_range(self, index: int) -> tuple[int, int]:
        """The inclusive range of frame numbers a random sampler (TSN training) may read
        for segment ``index``: the segment, or for flow every frame of every snippet whose
        start the sampler can pick (clamped at the video's end as the reader is)."""
        if self.modality != "flow":
            return int(self.table.start_frames[index]), int(self.table.stop_frames[index])
        first, last, count = self._flow_range(index)
        extremes = flow_snippet_starts(first, last, 2, self.flow_stack)  # first and last start
        frames = flow_snippet_frames(extremes, self.flow_stack, count)
        return int(frames.min()), int(frames.max())

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        narration_id = self.table.narration_ids[index]
        video_id = self.table.video_ids[index]
        frames = self.frame_numbers(index, rng)  # several views: each frame once
        try:
            jpegs = self.store.read_frames(video_id, frames)
        except StoreError as exc:
            kind = StoreIncompleteError if isinstance(exc, StoreIncompleteError) else StoreError
            raise kind(f"segment {narration_id}: {exc}") from None
        if self.decoder == "nvjpeg":
            sample = self._jpeg_sample(video_id, frames, jpegs, rng)
        elif self.multi_view:
            decoded = self._decoded_frames(index, video_id, frames, jpegs)
            views = [self.view_frames(index, c) for c in range(self.num_clips)]
            sample = {"frames": self._view_clips(decoded, frames, views)}
        else:
            sample = {"frames": self._decoded_clip(index, video_id, frames, jpegs, rng)}
        sample.update(narration_id=narration_id, index=index)
        if self.table.labelled:
            sample["verb"] = int(self.table.verb_classes[index])
            sample["noun"] = int(self.table.noun_classes[index])
        return sample

    def _decoded_clip(
        self,
        index: int,
        video_id: str,
        frames: np.ndarray,
        jpegs: list[bytes],
        rng: np.random.Generator,
    ) -> torch.Tensor:
        clip = self._decoded_frames(index, video_id, frames, jpegs)
        if self.modality == "flow":
            # Snippet after snippet, pair after pair, u before v: channel 2i is u of the
            # snippet's i-th pair, 2i + 1 its v.
            clip = clip.view(self.num_frames, 2 * self.flow_stack, *clip.shape[-2:])
        if self.transform is not None:
            clip = self.transform(clip, rng)
        return clip

    def _view_clips(
        self, decoded: torch.Tensor, frames: np.ndarray, views: list[np.ndarray]
    ) -> torch.Tensor:
        """The (V, T, C, S, S) uint8 view clips of one segment from its ``decoded`` frames
        (of ``frames``, sorted and unique: snippets of flow views overlap out of order;
        (N, C, H, W) RGB, (2N, 1, H, W) flow u, v)."""
        if self.modality == "flow":
            decoded = decoded.view(len(frames), 2, *decoded.shape[-2:])  # (N, 2, H, W)
        clips = []
        for view in views:
            clip = decoded[torch.from_numpy(np.searchsorted(frames, view))]  # (T or T*stack, ...)
            if self.modality == "flow":
                clip = clip.reshape(self.num_frames, 2 * self.flow_stack, *clip.shape[-2:])
            clips.append(self.transform.views(clip))  # type: ignore[union-attr]  # (K, T, C, S, S)
        return torch.cat(clips)  # (C * K, T, C, S, S): view c * K + k

    def _decoded_frames(
        self, index: int, video_id: str, frames: np.ndarray, jpegs: list[bytes]
    ) -> torch.Tensor:
        """The decoded images, stacked: (N, C, H, W) uint8, or for flow (2N, 1, H, W)."""
        # Flow: two blobs per flow frame, u then v (the store's order, C1's _intersperse).
        per_frame = 2 if self.modality == "flow" else 1
        decoded = []
        for i, jpeg in enumerate(jpegs):
            try:
                decoded.append(self.decode(jpeg))
            except (RuntimeError, OSError, ValueError) as exc:
                frame = frames[i // per_frame]
                name = f"flow frame {frame} ({'uv'[i % 2]})" if per_frame == 2 else f"frame {frame}"
                shard = shard_filename(self._shard_of[video_id])
                # The bytes passed their CRC: a staged copy holds the same as its store.
                store = self.store.staged_from or self.store.root
                raise StoreIncompleteError(
                    f"segment {self.table.narration_ids[index]}: {video_id} {name} in {shard} "
                    f"does not decode ({exc}); run `epic-check --store {store} --deep` and "
                    f"re-extract that shard with `epic-extract run --force`"
                ) from None
        return torch.stack(decoded)  # (T, C, H, W) uint8; flow: (T * stack * 2, 1, H, W)

    def _jpeg_sample(
        self,
        video_id: str,
        frames: np.ndarray,
        jpegs: list[bytes],
        rng: np.random.Generator,
    ) -> dict[str, Any]:
        """The bytes and the crop, drawn from the stored frame size (the video's metadata:
        what the decoded frames' shape is on the CPU path) after the same draws of ``rng``."""
        meta = self.store.video_meta(video_id)
        if self.transform is None:
            crop: tuple[int, ...] = (0, 0, meta.height, meta.width, 0)
        else:
            crop = tuple(self.transform.draw(meta.height, meta.width, rng))  # type: ignore[attr-defined]
        return {
            "jpegs": [torch.frombuffer(bytearray(jpeg), dtype=torch.uint8) for jpeg in jpegs],
            "crop": torch.tensor([int(v) for v in crop], dtype=torch.int64),  # (5,)
            "frame_numbers": torch.from_numpy(np.asarray(frames, dtype=np.int64)),  # (T,)
            "video_id": video_id,
        }


def _check_modality(store: FrameStore, modality: str, decoder: str) -> None:
    """Refuse a store of the other modality (its positions and images mean something
    else) and the GPU decoder for flow (train/nvjpeg.py decodes RGB frames only)."""
    if store.modality != modality:
        raise EpicInputError(
            f"the store holds {store.modality} frames, and this run reads {modality}",
            where=store.root,
            fix=f"give a store of {modality} frames, or --modality {store.modality}",
        )
    if modality == "flow" and decoder == "nvjpeg":
        raise EpicInputError(
            "--decoder nvjpeg decodes RGB frames only, not flow",
            where="--decoder nvjpeg --modality flow",
            fix="use --decoder torchvision (or pil) for a flow model",
        )


def _clip_words(dataset: EpicActionDataset) -> str:
    if dataset.modality == "flow":
        return f"{dataset.num_frames} snippets of {dataset.flow_stack} flow frames"
    return f"{dataset.num_frames} frames"


#: torch's messages for a dead worker: "DataLoader worker (pid 123) is killed by signal:
#: Aborted." and "DataLoader worker (pid(s) 123, 456) exited unexpectedly".
_WORKER_DEATH = re.compile(r"DataLoader worker \(pid(?:\(s\))? ([\d, ]+)\)")


@contextlib.contextmanager
def worker_deaths_named(store: FrameStore) -> Iterator[None]:
    """Turn a DataLoader worker's death into an error naming the shard and video it was
    reading (LMDB aborts its process on some damaged pages) and saying to run epic-check."""
    try:
        yield
    except RuntimeError as exc:
        found = _WORKER_DEATH.search(str(exc))
        if found is None:
            raise
        reads = store.worker_reads([int(p) for p in found.group(1).split(",")])
        what = str(exc).splitlines()[0].rstrip(". ")
        where = "; ".join(reads.values()) or "while loading clips"
        memory = (
            "lower --workers or --batch-size, or ask the job for more memory (--mem); "
            "`sacct -j JOBID -o MaxRSS,State` tells"
        )
        check = f"run `epic-check --store {store.root}` and re-extract the shards it names"
        if "signal: Killed" in what:
            # SIGKILL is what the kernel's out-of-memory killer (and SLURM's) sends.
            raise EnvironmentProblem(
                f"a DataLoader worker was killed ({what}), most likely for memory",
                where=where,
                fix=memory,
            ) from None
        if "killed by signal" in what and reads:
            # SIGABRT/SIGBUS/SIGSEGV while reading: LMDB on a damaged page.
            raise StoreIncompleteError(
                f"a DataLoader worker died ({what}) while reading {where}",
                where=store.root,
                fix=f"a damaged shard can make LMDB abort its reader: {check}",
            ) from None
        # torch could not tell the signal ("exited unexpectedly"): both causes are likely.
        raise EnvironmentProblem(
            f"a DataLoader worker died ({what})",
            where=where,
            fix=f"if the job ran out of memory, {memory}; if not, a damaged shard can make "
            f"LMDB abort its reader: {check}",
        ) from None


def check_readable(dataset: EpicActionDataset, *, limit: int = 5) -> None:
    """Before the first step: every frame the dataset's sampler can ask for is in the store,
    judged from the store's metadata (no JPEG is read). A random sampler (TSN training)
    may ask for any frame of a segment; the deterministic ones for their exact frames.

    Raises :class:`StoreError` (or :class:`StoreIncompleteError` for a missing shard)
    summarising the segments that would fail, by video; with several temporal test views,
    naming the first segment and frame a view needs that the store lacks."""
    table, store = dataset.table, dataset.store
    any_frame = dataset.sampling == "tsn" and dataset.training
    bad: dict[str, list[str]] = {}
    for i in range(len(table)):
        video_id = table.video_ids[i]
        readable = (
            store.holds_range(video_id, *dataset.readable_range(i))
            if any_frame
            else store.holds(video_id, dataset.frame_numbers(i))
        )
        if not readable and dataset.num_clips > 1:
            raise _view_frame_missing(dataset, i)
        if not readable:
            bad.setdefault(video_id, []).append(table.narration_ids[i])
    if bad:
        count = sum(len(v) for v in bad.values())
        lines = [
            f"  {vid}: {len(ids)} segments, e.g. {ids[0]}" for vid, ids in list(bad.items())[:limit]
        ]
        if len(bad) > limit:
            lines.append(f"  ... and {len(bad) - limit} more videos")
        keep = store.manifest.params
        raise StoreError(
            f"{count} segments of the {table.split} split ask for frames the store does not "
            f"hold ({_clip_words(dataset)}, {dataset.sampling} sampling"
            f"{', random offsets' if any_frame else ''}; the store keeps {keep.keep}"
            + (
                f" for clip lengths {','.join(map(str, keep.num_frames))}"
                if keep.keep == "sampled"
                else ""
            )
            + ")",
            where=store.root,
            fix="train with the clip length and sampling the store was planned for, or plan a "
            "store that keeps these frames (--keep segments, or --keep sampled --num-frames N)",
            details="\n".join(lines),
        )


def _view_frame_missing(dataset: EpicActionDataset, index: int) -> StoreError:
    """The first frame of segment ``index``'s temporal test views that the store lacks,
    named with its view and what to do (a ``--keep sampled`` store holds the one-view
    frames of its clip lengths only)."""
    table, store = dataset.table, dataset.store
    video_id = table.video_ids[index]
    missing = [
        (view, int(frame))
        for view in range(dataset.num_clips)
        for frame in dataset.view_frames(index, view)
        if not store.holds(video_id, [int(frame)])
    ]
    view, frame = missing[0]
    keep = store.manifest.params
    kept = f"{keep.keep}" + (
        f" for clip lengths {','.join(map(str, keep.num_frames))}" if keep.keep == "sampled" else ""
    )
    kind = "flow frame" if dataset.modality == "flow" else "frame"
    return StoreError(
        f"segment {table.narration_ids[index]} of the {table.split} split: temporal view "
        f"{view + 1} of {dataset.num_clips} ({_clip_words(dataset)}, {dataset.sampling} "
        f"sampling) needs {video_id} {kind} {frame}, which the store does not hold (it "
        f"keeps {kept})",
        where=store.root,
        fix="test these views on a store that keeps every frame of the segments "
        "(epic-extract plan --keep segments), or test one view (--views 1x1)",
    )
