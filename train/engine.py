"""One training epoch and one evaluation pass: the loop bodies, nothing else.

Mixed precision has no branches here: ``torch.autocast(enabled=...)`` and a GradScaler
with ``enabled=`` are no-ops when precision is full (CPU, or ``--amp off``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from epicdata.console import Progress
from epicdata.errors import EpicInputError
from train.data import ClipLoader, frames_to
from train.device import Precision
from train.distributed import DistInfo, any_rank, gather_to_main
from train.transforms import DeviceAugment

log = logging.getLogger(__name__)

#: Every this many steps the loop looks at the loss (is it finite?) and, under DDP, the
#: ranks agree on a pending stop request: both wait for the GPU's queued work, which every
#: step would stall the queue for. SLURM signals minutes before the limit, so a few steps
#: of delay cost nothing.
STOP_SYNC_STEPS = 20
#: ``--head-loss``: the factor of verb + noun cross-entropy (C1 averages the two tasks).
HEAD_LOSS_WEIGHTS = {"sum": 1.0, "mean": 0.5}


@dataclass(frozen=True)
class EpochStats:
    loss: float
    verb_top1: float  # percent, argmax per head
    noun_top1: float
    action_top1: float  # both heads right
    clips: int  # clips trained on, all ranks
    seconds: float
    data_wait: float  # fraction of the epoch spent waiting for the loader (rank 0)
    steps: int  # optimizer steps done in this call
    interrupted: bool  # stopped early on a signal, at a step boundary
    sums: tuple[float, ...] = ()  # loss*B, verb, noun, action hits over the epoch so far
    wait_seconds: float = 0.0

    def carry(self) -> dict:
        """The epoch so far, for a checkpoint taken mid-epoch (plain data)."""
        return {
            "sums": list(self.sums),
            "clips": self.clips,
            "seconds": self.seconds,
            "wait": self.wait_seconds,
        }


class TrainingDivergedError(EpicInputError):
    """The loss stopped being finite: nothing after the last good epoch is saved."""


class EpochMeter:
    """The running sums of one training epoch on this rank: loss and hits on the device (no
    host sync per step), clips and steps, time spent and time waiting for the loader; then
    the :class:`EpochStats` of all ranks. ``carry`` (:meth:`EpochStats.carry`) continues an
    epoch resumed mid-way."""

    def __init__(self, device: torch.device, info: DistInfo, carry: dict | None = None) -> None:
        self.device = device
        self.info = info
        self.sums = torch.zeros(4, device=device, dtype=torch.float64)  # loss*B, verb, noun, action
        self.clips = self.steps = 0
        self.wait = self.before = 0.0
        if carry and info.is_main:  # the others add zeros when the sums are reduced
            self.sums += torch.tensor(carry["sums"], device=device, dtype=torch.float64)
            self.clips = int(carry["clips"])
        if carry:
            self.before, self.wait = float(carry["seconds"]), float(carry["wait"])
        # The first step whose loss is not finite, tracked on the device and looked at when
        # the ranks agree on a stop anyway.
        self.step_t = torch.zeros((), device=device, dtype=torch.long)
        self.first_bad = torch.full((), -1, device=device, dtype=torch.long)
        self.start = self.tick = time.perf_counter()

    def start_wait(self) -> None:
        """The loop asks the loader for the next batch."""
        self.tick = time.perf_counter()

    def end_wait(self) -> None:
        """The batch is there: the time since :meth:`start_wait` was the loader's."""
        self.wait += time.perf_counter() - self.tick

    def add(
        self,
        loss: torch.Tensor,
        verb_logits: torch.Tensor,
        noun_logits: torch.Tensor,
        verbs: torch.Tensor,
        nouns: torch.Tensor,
    ) -> None:
        """One step's batch mean ``loss`` (scalar), logits (B, 97), (B, 300), labels (B,)."""
        self.step_t += 1
        bad = (self.first_bad < 0) & ~torch.isfinite(loss)
        self.first_bad = torch.where(bad, self.step_t, self.first_bad)
        verb_hit = verb_logits.argmax(1) == verbs
        noun_hit = noun_logits.argmax(1) == nouns
        batch_size = len(verbs)
        self.sums += torch.stack(
            [
                loss.double() * batch_size,
                verb_hit.sum().double(),
                noun_hit.sum().double(),
                (verb_hit & noun_hit).sum().double(),
            ]
        )
        self.clips += batch_size
        self.steps += 1

    def wait_fraction(self) -> float:
        """The share of this run of the epoch spent waiting for the loader so far."""
        return self.wait / (time.perf_counter() - self.start)

    def raise_if_diverged(self, header: str) -> None:
        """Every rank raises when any rank saw a non-finite loss (the same step on all)."""
        none = torch.iinfo(torch.long).max
        bad = torch.where(self.first_bad < 0, torch.full_like(self.first_bad, none), self.first_bad)
        if self.info.enabled:
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MIN)
        step = int(bad.item())
        if step != none:
            raise TrainingDivergedError(
                f"training diverged: the loss is not finite ({header}, first at step {step} of "
                f"this run of the epoch)",
                where="NaN or Inf",
                fix="lower --lr (or use --amp off to rule out fp16 overflow); last.pt and best.pt "
                "still hold the last good epoch, so `--resume auto` continues from there",
            )

    def stats(self, *, interrupted: bool) -> EpochStats:
        """The epoch's record over all ranks (a collective under DDP)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = self.before + time.perf_counter() - self.start
        clips = self.clips
        if self.info.enabled:
            torch.distributed.all_reduce(self.sums)
            counts = torch.tensor([clips], device=self.device)
            torch.distributed.all_reduce(counts)
            clips = int(counts.item())
        loss_sum, verb_hits, noun_hits, action_hits = self.sums.tolist()
        total = max(clips, 1)
        return EpochStats(
            loss=loss_sum / total,
            verb_top1=100 * verb_hits / total,
            noun_top1=100 * noun_hits / total,
            action_top1=100 * action_hits / total,
            clips=clips,
            seconds=seconds,
            data_wait=self.wait / max(seconds, 1e-9),
            steps=self.steps,
            interrupted=interrupted,
            sums=(loss_sum, verb_hits, noun_hits, action_hits),
            wait_seconds=self.wait,
        )


def optimizer_step(
    loss: torch.Tensor,
    *,
    optimizer: torch.optim.Optimizer,
    scaler: torch.cuda.amp.GradScaler,
    clip: tuple[list[torch.Tensor], float | None],
) -> None:
    """Backward, clip (``clip``: the parameters and the largest global L2 norm of their
    gradients, or None), step and zero the gradients."""
    scaler.scale(loss).backward()
    params, max_norm = clip
    if max_norm is not None:
        scaler.unscale_(optimizer)  # the norm of the true gradients, as C1 (fp32) clips
        torch.nn.utils.clip_grad_norm_(params, max_norm)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    *,
    optimizer: torch.optim.Optimizer,
    scaler: torch.cuda.amp.GradScaler,
    augment: DeviceAugment,
    generator: torch.Generator,
    precision: Precision,
    device: torch.device,
    info: DistInfo,
    max_steps: int,
    stop_requested: Callable[[], bool],
    log_every: int = 50,
    header: str = "",
    first_step: int = 0,
    carry: dict | None = None,
    load_clips: ClipLoader | None = None,
    grad_clip: float | None = None,
    head_loss: str = "sum",
) -> EpochStats:
    """Train for at most ``max_steps`` batches; returns early (``interrupted``) when any rank
    has a pending stop request, with every rank at the same step. After a mid-epoch resume,
    ``first_step`` is the step the epoch resumes at and ``carry`` its sums so far
    (:meth:`EpochStats.carry`), so that the epoch's record covers all of its batches.
    ``load_clips``: a batch -> its uint8 clips on ``device`` (train.data.clip_loader; default:
    the workers' decoded clips, copied). ``grad_clip``: the gradients' global L2 norm is
    clipped to it (after unscaling fp16's); ``head_loss``: a key of HEAD_LOSS_WEIGHTS."""
    load_clips = load_clips or frames_to(device)
    weight = HEAD_LOSS_WEIGHTS[head_loss]
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    meter = EpochMeter(device, info, carry)
    interrupted = False
    progress = Progress(max_steps, label=header or "train", unit="batches")
    for batch in loader:
        meter.end_wait()
        frames = load_clips(batch)  # (B, T, C, H, W) uint8
        verbs = batch["verb"].to(device, non_blocking=True)  # (B,)
        nouns = batch["noun"].to(device, non_blocking=True)  # (B,)
        clips_in = augment(frames, train=True, generator=generator)  # (B, T, C, H, W) float
        with precision.autocast():
            verb_logits, noun_logits = model(clips_in)  # (B, 97), (B, 300)
            loss = weight * (
                F.cross_entropy(verb_logits, verbs) + F.cross_entropy(noun_logits, nouns)
            )
        optimizer_step(loss, optimizer=optimizer, scaler=scaler, clip=(params, grad_clip))

        meter.add(loss.detach(), verb_logits, noun_logits, verbs, nouns)
        progress.update()
        steps = meter.steps
        if log_every and steps % log_every == 0:
            log.info(
                "%s step %d/%d loss %.4f data-wait %.0f%%",
                header,
                first_step + steps,
                first_step + max_steps,
                loss.item(),
                100 * meter.wait_fraction(),
            )
        if steps >= max_steps:
            break
        # Looking at the loss waits for the GPU: every STOP_SYNC_STEPS steps only. In one
        # process a stop request is a host flag, looked at every step.
        every = steps % STOP_SYNC_STEPS == 0
        if every:
            meter.raise_if_diverged(header)
        if (every or not info.enabled) and any_rank(stop_requested(), info, device):
            meter.raise_if_diverged(header)  # last.pt is never non-finite
            interrupted = True
            break
        meter.start_wait()
    progress.close()
    meter.raise_if_diverged(header)
    return meter.stats(interrupted=interrupted)


@dataclass(frozen=True)
class Predictions:
    """Outputs for the segments evaluated, in split order (rank 0 only)."""

    indices: np.ndarray  # (N,) int64 rows of the split
    verb_logits: np.ndarray  # (N, 97) float32
    noun_logits: np.ndarray  # (N, 300) float32
    loss: float  # mean verb + noun cross-entropy; NaN when unlabelled


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    *,
    augment: DeviceAugment,
    precision: Precision,
    device: torch.device,
    info: DistInfo,
    max_steps: int | None = None,
    load_clips: ClipLoader | None = None,
    head_loss: str = "sum",
) -> Predictions | None:
    """Logits for every segment of ``loader`` (sharded across ranks without padding), gathered
    on rank 0 in split order; None on other ranks.

    ``model`` must be the bare model, not the DDP wrapper: ranks may run different numbers
    of batches, and DDP's per-forward buffer broadcast would then deadlock. ``load_clips``
    as in :func:`train_one_epoch`.

    Multi-view batches (B, V, T, C, H, W) (train.data.build_eval_data's ``views``): the
    logits of a segment's V views are averaged, before any softmax as SlowFast's and C1's
    multi-view tests average scores, into the segment's one row; the loss is the averaged
    logits'.
    """
    load_clips = load_clips or frames_to(device)
    model.eval()
    total = len(loader) if max_steps is None else min(len(loader), max_steps)
    progress = Progress(total, label="validation", unit="batches")
    indices, verb_out, noun_out = [], [], []
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    labelled = False
    for step, batch in enumerate(loader):
        if max_steps is not None and step >= max_steps:
            break
        frames = load_clips(batch)  # (B, T, C, H, W) uint8, or (B, V, T, C, H, W)
        views = frames.shape[1] if frames.dim() == 6 else 0
        if views:
            frames = frames.flatten(0, 1)  # (B * V, T, C, H, W)
        with precision.autocast():
            features = model.features(augment(frames, train=False))  # (B or B * V, 512)
        # The heads in float32, outside autocast: bf16 logits (8 bits of mantissa) would tie
        # scores that the official ranking then orders arbitrarily.
        verb_logits, noun_logits = model.heads(features.float())
        if views:
            verb_logits = verb_logits.unflatten(0, (-1, views)).mean(1)  # (B, 97)
            noun_logits = noun_logits.unflatten(0, (-1, views)).mean(1)  # (B, 300)
        labelled = "verb" in batch
        if labelled:
            verbs = batch["verb"].to(device, non_blocking=True)
            nouns = batch["noun"].to(device, non_blocking=True)
            loss = F.cross_entropy(verb_logits, verbs, reduction="sum") + F.cross_entropy(
                noun_logits, nouns, reduction="sum"
            )
            loss_sum += HEAD_LOSS_WEIGHTS[head_loss] * loss.double()
        # Kept on the device until the end: a copy to the host per batch waits for the GPU.
        indices.append(batch["index"].numpy())
        verb_out.append(verb_logits)
        noun_out.append(noun_logits)
        progress.update()
    progress.close()
    local = (
        np.concatenate(indices) if indices else np.zeros(0, np.int64),
        torch.cat(verb_out).cpu().numpy() if verb_out else np.zeros((0, 0), np.float32),
        torch.cat(noun_out).cpu().numpy() if noun_out else np.zeros((0, 0), np.float32),
        loss_sum.item(),
        labelled,
    )
    parts = gather_to_main(local, info)
    if parts is None:
        return None
    parts = [p for p in parts if len(p[0])]
    idx = np.concatenate([p[0] for p in parts])
    order = np.argsort(idx, kind="stable")
    labelled = any(p[4] for p in parts)
    return Predictions(
        indices=idx[order],
        verb_logits=np.concatenate([p[1] for p in parts])[order],
        noun_logits=np.concatenate([p[2] for p in parts])[order],
        loss=sum(p[3] for p in parts) / len(idx) if labelled else float("nan"),
    )
