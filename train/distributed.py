"""Distributed setup under ``torchrun`` or ``srun``, samplers, and gathering evaluation output.

Rank discovery: ``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK; ``srun`` sets, for each
task it starts, SLURM_PROCID / SLURM_STEP_NUM_TASKS / SLURM_LOCALID, and the job script
exports MASTER_ADDR / MASTER_PORT (cluster specifics stay in the script). The batch shell of
a job (what ``sbatch`` runs) is not a task of any step: SLURM sets SLURM_NTASKS (the whole
allocation), SLURM_PROCID=0 and SLURM_LOCALID=0 there, but no SLURM_STEP_NUM_TASKS (srun's
and sbatch's man pages, OUTPUT ENVIRONMENT VARIABLES). A command started there without
``srun`` is one process whatever SLURM_NTASKS says: taking SLURM_NTASKS as the world size
would wait for ranks that never come.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler

from epicdata.errors import EpicInputError

log = logging.getLogger(__name__)

#: What a command does when started in the batch shell of a job of several tasks: training
#: refuses (a multi-GPU job on one process is a mistake that costs the whole allocation),
#: evaluation runs as one process (the same metrics, only slower).
BatchShell = Literal["refuse", "single"]


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


def _int(env: Mapping[str, str], name: str, default: int = 0) -> int:
    value = env.get(name, str(default))
    try:
        return int(value)
    except ValueError:
        raise EpicInputError(
            f"{name}={value!r} is not a whole number",
            where="the launcher's environment",
            fix="start the command with srun or torchrun, which set it",
        ) from None


def _batch_shell_tasks(env: Mapping[str, str] | None = None) -> int:
    """The allocation's task count when this process runs in the batch (or salloc) shell
    of a job of several tasks, i.e. outside any srun step; else 0. srun sets
    SLURM_STEP_NUM_TASKS for every task it starts; SLURM_STEP_ID is no marker (slurmstepd
    sets it for the batch step too, src/common/env.c setup_env)."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun, also inside a batch shell
        return 0
    if "SLURM_JOB_ID" not in env or "SLURM_STEP_NUM_TASKS" in env:
        return 0
    tasks = _int(env, "SLURM_NTASKS", 1)
    return tasks if tasks > 1 else 0


def discover(*, batch_shell: BatchShell = "single") -> DistInfo:
    """Rank, world size and local rank of this process.

    torchrun's RANK / WORLD_SIZE / LOCAL_RANK first; then an srun step's SLURM_PROCID /
    SLURM_STEP_NUM_TASKS / SLURM_LOCALID (not SLURM_NTASKS, which ``srun --preserve-env``
    leaves at the allocation's count); else one process. In the batch shell of a job of
    several tasks ``batch_shell="single"`` is one process and ``"refuse"`` raises an
    :class:`EpicInputError` that names srun (exit 2, before anything waits for ranks).
    """
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistInfo(_int(env, "RANK"), _int(env, "WORLD_SIZE"), _int(env, "LOCAL_RANK"))
    if "SLURM_STEP_NUM_TASKS" in env:
        return DistInfo(
            _int(env, "SLURM_PROCID"), _int(env, "SLURM_STEP_NUM_TASKS"), _int(env, "SLURM_LOCALID")
        )
    tasks = _batch_shell_tasks(env)
    if tasks and batch_shell == "refuse":
        raise EpicInputError(
            f"not started by srun, but the SLURM job has {tasks} tasks: the other ranks "
            "would never come",
            where=f"the job's batch shell: SLURM_NTASKS={tasks}, no SLURM_STEP_NUM_TASKS",
            fix="start it with `srun epic-train ...` (one task per GPU; see "
            "slurm/train_multi.sbatch), or with `srun --ntasks 1 epic-train ...` for one "
            "process",
        )
    return DistInfo()


def init(device_kind: str, *, batch_shell: BatchShell = "refuse") -> DistInfo:
    """Join the process group (NCCL on GPUs, gloo on CPU) when launched with several ranks.

    ``batch_shell``: see :func:`discover`; with "single" a warning says that the job's other
    tasks stay idle."""
    info = discover(batch_shell=batch_shell)
    tasks = _batch_shell_tasks()
    if tasks:
        log.warning(
            "SLURM_NTASKS=%d but not started by srun: running as one process (the same "
            "results, only slower); start it with `srun` to use all %d tasks",
            tasks,
            tasks,
        )
    if info.enabled and not dist.is_initialized():
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
        if missing:
            raise EpicInputError(
                f"{' and '.join(missing)} not set for a run of {info.world_size} processes",
                where=f"rank {info.rank}",
                fix="under srun, export MASTER_ADDR (the first node of the job) and "
                "MASTER_PORT in the job script, as slurm/train_multi.sbatch does",
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
