"""``--decoder nvjpeg``: the loader workers read JPEG bytes, the GPU decodes and crops them.

The workers return each clip's bytes and the crop/flip they drew from the clip's own
generator (seed, epoch, index), exactly as the CPU path draws it; :func:`collate_jpeg_clips`
packs a batch's bytes into one tensor; :class:`NvjpegClips`, in the main process, decodes
the batch with nvJPEG (one batched call from torchvision 0.19; one call per frame on the
device before, as torchvision 0.16 (torch 2.1) takes one image per call), then applies the
transform's :meth:`apply` (the same function the CPU path runs in its workers) per group of
clips that share a crop. The images are the CPU path's up to decoder and resize rounding
(bench/gpu_suite.py reports the mean absolute difference).
"""

from __future__ import annotations

import warnings
from typing import Any, Protocol

import torch
import torchvision
from torch.utils.data import default_collate
from torchvision.io import decode_jpeg, encode_jpeg

from epicdata.errors import EnvironmentProblem, StoreIncompleteError
from train.device import cuda_unavailable_reason
from train.transforms import CropFlip

#: torchvision decodes a list of JPEGs in one nvJPEG call from this version on.
BATCHED_DECODE_FROM = (0, 19)
#: The sample keys that :func:`collate_jpeg_clips` packs itself.
_JPEG_KEYS = ("jpegs", "crop", "frame_numbers")


class ClipGeometry(Protocol):
    """The geometric half of a clip transform (train.transforms)."""

    def apply(self, frames: torch.Tensor, crop: CropFlip) -> torch.Tensor: ...


def torchvision_version() -> tuple[int, int]:
    major, minor = torchvision.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def _unusable(reason: str) -> EnvironmentProblem:
    return EnvironmentProblem(
        f"--decoder nvjpeg cannot be used: {reason}",
        fix="use --decoder torchvision (the default: the loader workers decode on the CPU)",
    )


def check_nvjpeg(device: torch.device) -> None:
    """Before anything is built: the run's device is a CUDA GPU on which torchvision's
    nvJPEG decodes a JPEG (a tiny one is tried). Raises :class:`EnvironmentProblem` (exit 2)
    naming ``--decoder nvjpeg``, the reason and the fix; there is no silent fallback."""
    if device.type != "cuda":
        reason = f"it decodes on a CUDA GPU and this run's device is {device}"
        if not torch.cuda.is_available():
            reason += f" ({cuda_unavailable_reason()})"
        raise _unusable(reason)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            probe = encode_jpeg(torch.zeros(3, 16, 16, dtype=torch.uint8))
            decode_jpeg(probe, device=device)
    except (RuntimeError, TypeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _unusable(
            f"torchvision {torchvision.__version__} cannot decode JPEGs on {device} ({first})"
        ) from None


def collate_jpeg_clips(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch of byte clips. Every JPEG of the batch goes into one uint8 tensor: a worker
    hands the main process one shared-memory block per batch instead of B x T.

    ``jpegs`` (N,) uint8, the B x T JPEGs back to back; ``jpeg_sizes`` (B, T) int64;
    ``crop`` (B, 5) int64; ``frame_numbers`` (B, T) int64; the other keys as
    ``default_collate`` does them (``verb``, ``noun``, ``index`` tensors (B,), ids lists).
    """
    jpegs = [jpeg for sample in samples for jpeg in sample["jpegs"]]
    batch = default_collate([{k: v for k, v in s.items() if k not in _JPEG_KEYS} for s in samples])
    batch["jpegs"] = torch.cat(jpegs)  # (N,) uint8
    batch["jpeg_sizes"] = torch.tensor([[len(j) for j in s["jpegs"]] for s in samples])  # (B, T)
    batch["crop"] = torch.stack([s["crop"] for s in samples])  # (B, 5)
    batch["frame_numbers"] = torch.stack([s["frame_numbers"] for s in samples])  # (B, T)
    return batch


def unpack_jpegs(batch: dict[str, Any]) -> list[torch.Tensor]:
    """The B x T JPEGs of a collated batch, clip by clip (views of ``batch["jpegs"]``)."""
    return list(torch.split(batch["jpegs"], batch["jpeg_sizes"].flatten().tolist()))


def crop_clips(
    frames: list[torch.Tensor], crops: torch.Tensor, transform: ClipGeometry
) -> torch.Tensor:
    """Decoded frames, B clips of T in order, each (C, H, W) uint8, with the (B, 5) crops the
    workers drew -> (B, T, C, S, S) uint8 on the frames' device. Clips that share a crop and
    a frame size are cropped in one call (a 456x256 store has one crop, flipped or not)."""
    b = len(crops)
    t = len(frames) // b
    groups: dict[tuple, list[int]] = {}
    for i, (top, left, height, width, flip) in enumerate(crops.tolist()):
        crop = CropFlip(top, left, height, width, bool(flip))
        groups.setdefault((crop, tuple(frames[i * t].shape)), []).append(i)
    out: list[torch.Tensor | None] = [None] * b
    for (crop, _), members in groups.items():
        stacked = torch.stack([f for i in members for f in frames[i * t : (i + 1) * t]])
        done = transform.apply(stacked, crop)  # (G*T, C, S, S)
        for j, done_clip in enumerate(done.unflatten(0, (len(members), t))):
            out[members[j]] = done_clip
    return torch.stack(out)  # type: ignore[arg-type]  # (B, T, C, S, S) uint8


def decode_on(jpegs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """JPEG byte tensors (CPU) -> (C, H, W) uint8 tensors on ``device``: one batched nvJPEG
    call from torchvision 0.19, one call per image before."""
    with warnings.catch_warnings():
        # torchvision >= 0.29 announces decode_jpeg's move to TorchCodec on every call.
        warnings.simplefilter("ignore", DeprecationWarning)
        if torchvision_version() >= BATCHED_DECODE_FROM:
            return decode_jpeg(jpegs, device=device)
        return [decode_jpeg(jpeg, device=device) for jpeg in jpegs]


class NvjpegClips:
    """A loader batch of JPEG bytes -> (B, T, C, S, S) uint8 clips on ``device``, decoded
    with nvJPEG and cropped by ``transform`` (the dataset's) with the workers' crops.

    A frame nvJPEG cannot decode is named (segment, video, frame, store) as the CPU path's
    workers name it, found by decoding the batch's frames one by one on the CPU."""

    def __init__(self, transform: ClipGeometry, device: torch.device, *, store_root: str) -> None:
        self.transform = transform
        self.device = device
        self.store_root = store_root

    def __call__(self, batch: dict[str, Any]) -> torch.Tensor:
        jpegs = unpack_jpegs(batch)
        try:
            frames = decode_on(jpegs, self.device)
        except RuntimeError as exc:
            raise self._undecodable(batch, jpegs, exc) from None
        return crop_clips(frames, batch["crop"], self.transform)  # (B, T, C, S, S) uint8

    def _undecodable(
        self, batch: dict[str, Any], jpegs: list[torch.Tensor], exc: RuntimeError
    ) -> Exception:
        t = batch["jpeg_sizes"].shape[1]
        for i, jpeg in enumerate(jpegs):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    decode_jpeg(jpeg)
            except RuntimeError as cpu_exc:
                clip, position = divmod(i, t)
                frame = int(batch["frame_numbers"][clip, position])
                return StoreIncompleteError(
                    f"segment {batch['narration_id'][clip]}: {batch['video_id'][clip]} frame "
                    f"{frame} does not decode ({cpu_exc})",
                    where=self.store_root,
                    fix=f"run `epic-check --store {self.store_root} --deep` and re-extract the "
                    "shard it names with `epic-extract run --force`",
                )
        return exc
