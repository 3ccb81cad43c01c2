"""Distributed setup under ``torchrun`` or ``srun``, samplers, and gathering evaluation output.

Rank discovery: ``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK; ``srun`` (one task per
GPU) sets SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID. Under srun, the job script exports
MASTER_ADDR / MASTER_PORT (cluster specifics stay in the script).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def discover() -> DistInfo:
    """Rank, world size and local rank from torchrun's or srun's environment (else 1 process)."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistInfo(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return DistInfo(
            int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
        )
    return DistInfo()


def init(device_kind: str) -> DistInfo:
    """Join the process group (NCCL on GPUs, gloo on CPU) when launched with several ranks."""
    info = discover()
    if info.enabled and not dist.is_initialized():
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if name not in os.environ:
                raise RuntimeError(
                    f"{name} is not set: under srun, export MASTER_ADDR (the first node) and "
                    "MASTER_PORT in the job script (see slurm/train_multi.sbatch)"
                )
        backend = "nccl" if device_kind == "cuda" else "gloo"
        if device_kind == "cuda":
            torch.cuda.set_device(local_device(info))
        dist.init_process_group(backend, rank=info.rank, world_size=info.world_size)
        log.info("rank %d/%d joined (%s)", info.rank, info.world_size, backend)
    return info


def local_device(info: DistInfo) -> torch.device:
    """This rank's GPU: its local rank, modulo the GPUs it can see (srun --gpus-per-task=1
    shows each task one GPU, torchrun shows them all)."""
    return torch.device("cuda", info.local_rank % torch.cuda.device_count())


def shutdown() -> None:
    """Leave the process group. The barrier first: with gloo on torch 2.1, a rank that
    destroys the group while another is still finishing its last collective hangs for good
    (seen in test_two_process_gloo_validation_equals_one_process)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class ResumableDistributedSampler(DistributedSampler):
    """DistributedSampler that can start an epoch part-way (after a mid-epoch checkpoint).

    The order of epoch e depends only on (seed, e), so skipping the first ``skip``
    samples of this rank resumes exactly where the interrupted run stopped.
    """

    def __init__(
        self, dataset: torch.utils.data.Dataset, *, rank: int, world_size: int, seed: int
    ) -> None:
        super().__init__(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        super().set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.skip :])

    def __len__(self) -> int:
        return super().__len__() - self.skip


class ShardSampler(Sampler[int]):
    """Evaluation: rank r takes indices r, r + world, ... Unlike DistributedSampler it never
    pads, so gathered outputs cover each sample exactly once."""

    def __init__(self, length: int, *, rank: int, world_size: int) -> None:
        self.indices = range(rank, length, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def gather_to_main(obj: object, info: DistInfo) -> list[object] | None:
    """Every rank's ``obj`` on rank 0 (in rank order), None elsewhere."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size if info.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank when ``flag`` is True on any (so all ranks stop at the same step)."""
    if not info.enabled:
        return flag
    tensor = torch.tensor([int(flag)], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())
