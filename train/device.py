"""Where and how precisely a run computes: the device, mixed precision and its scaler,
and the loader workers said against the CPUs the process may use.

A GPU job never falls back to the CPU silently: ``--device cuda`` (what the slurm scripts
pass) fails at once with torch's own reason, and ``--device auto`` in a SLURM job that was
given GPUs fails the same way. The precision follows the GPU's compute capability, not
``torch.cuda.is_bf16_supported()``, which from torch 2.3 also reports emulated bf16.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass

import torch

from epicdata.errors import EnvironmentProblem
from train.config import DEFAULT_WORKERS, usable_cpus
from train.distributed import DistInfo

log = logging.getLogger(__name__)

#: bf16 convolutions run natively from Ampere (8.0: A100, H100, L40S); V100 (7.0) and T4
#: (7.5) emulate them, far slower than fp16.
BF16_MIN_CAPABILITY = (8, 0)
#: Variables SLURM sets in a job (or step) that was given GPUs: lists of GPU ids, and a
#: count.
SLURM_GPU_LISTS = ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS")
SLURM_GPU_COUNT = "SLURM_GPUS_ON_NODE"
#: What torch's reason (:func:`cuda_unavailable_reason`) says on a machine that simply has
#: no GPU: no NVIDIA driver installed, or none visible to the process.
NO_GPU_SIGNS = ("Found no NVIDIA driver", "no GPU is visible", "No CUDA GPUs are available")
#: The start of torch's DataLoader warning about more workers than CPUs (torch 2.1 to 2.14).
TORCH_WORKER_WARNING = r"This DataLoader will create \d+ worker processes in total"


@dataclass(frozen=True)
class Precision:
    """Autocast settings; ``scaler`` only for fp16 (bf16 has fp32's exponent range)."""

    device_type: str
    dtype: torch.dtype
    enabled: bool

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)


def _cpu_build() -> bool:
    """Whether this torch has no GPU backend at all (neither CUDA nor ROCm, which torch
    also reaches through ``torch.cuda``)."""
    return torch.version.cuda is None and getattr(torch.version, "hip", None) is None


def cuda_unavailable_reason() -> str:
    """Why torch cannot use CUDA here, in torch's own words where it has them."""
    if _cpu_build():
        return f"this torch ({torch.__version__}) is a CPU build"
    try:
        torch.cuda.init()
    except (RuntimeError, AssertionError) as exc:
        reason = str(exc).strip().splitlines()[0]
    else:
        reason = "no GPU is visible"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    backend = f"CUDA {torch.version.cuda}" if torch.version.cuda else f"ROCm {torch.version.hip}"
    context = f"torch {torch.__version__} built for {backend}"
    if visible is not None:
        context += f", CUDA_VISIBLE_DEVICES={visible!r}"
    return f"{reason} ({context})"


def _slurm_gpus() -> str | None:
    """The job's GPU allocation as SLURM states it, or None when it gave none."""
    for name in SLURM_GPU_LISTS:
        if os.environ.get(name):
            return f"{name}={os.environ[name]}"
    count = os.environ.get(SLURM_GPU_COUNT, "0")
    return f"{SLURM_GPU_COUNT}={count}" if count.isdigit() and int(count) > 0 else None


def _no_cuda(where: str) -> EnvironmentProblem:
    return EnvironmentProblem(
        f"CUDA cannot be used on this node: {cuda_unavailable_reason()}",
        where=where,
        fix="check the job's GPU request and `nvidia-smi` on the node; a driver older than "
        "the CUDA of this torch needs a torch built for an older CUDA (`module load` the "
        "site's PyTorch module); or pass --device cpu to train on the CPU on purpose",
    )


def _log_cpu_fallback(work: str) -> None:
    """Say why ``--device auto`` chose the CPU. A machine without a GPU is ordinary and
    gets one plain line, not torch's driver-install advice (a URL at INFO level on every
    laptop); a GPU that is there but unusable (a driver too old for this torch's CUDA) is
    a warning with torch's reason, as it may be a mistake."""
    if _cpu_build():
        log.info(
            "--device auto: this torch (%s) is a CPU build: %s on the CPU", torch.__version__, work
        )
        return
    reason = cuda_unavailable_reason()
    if any(sign in reason for sign in NO_GPU_SIGNS):
        log.info("--device auto: no GPU: %s on the CPU", work)
    else:
        log.warning("--device auto: CUDA cannot be used, %s on the CPU: %s", work, reason)


def resolve_device(
    name: str, info: DistInfo | None = None, *, work: str = "training"
) -> torch.device:
    """The device for ``--device name`` on this rank.

    ``auto``: cuda when usable, else cpu (refused in a SLURM job that was given GPUs; the
    log says "no GPU: <work> on the CPU"); ``cuda``: this rank's GPU (its local rank);
    ``cuda:N``: GPU N, honoured as given in one process and refused under DDP when it is
    not this rank's; ``cpu``.
    """
    info = info or DistInfo()
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        else:
            gpus = _slurm_gpus()
            if gpus is not None:
                raise _no_cuda(f"--device auto in a SLURM job with GPUs ({gpus})")
            _log_cpu_fallback(work)
            return torch.device("cpu")
    device = torch.device(name)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise _no_cuda(f"--device {name}")
    count = torch.cuda.device_count()
    own = info.local_rank % count if info.enabled else 0
    if device.index is None:
        return torch.device("cuda", own)
    if device.index >= count:
        raise EnvironmentProblem(
            f"--device {name}: this process sees {count} GPU(s), cuda:0 to cuda:{count - 1}",
            where=f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}",
            fix="pick a visible GPU, or --device cuda",
        )
    if info.enabled and device.index != own:
        raise EnvironmentProblem(
            f"--device {name} conflicts with this rank's GPU cuda:{own} (rank {info.rank}, "
            f"local rank {info.local_rank})",
            where="DDP",
            fix="pass --device cuda under DDP: each rank takes the GPU of its local rank "
            "(srun --gpus-per-task or CUDA_VISIBLE_DEVICES choose which GPUs a job sees)",
        )
    return device


def resolve_precision(amp: str, device: torch.device) -> Precision:
    """``auto``: bf16 on compute capability 8.0+, else fp16 (with a scaler); full precision
    on the CPU or with ``off``. The decision is logged with the GPU it was made for."""
    if device.type != "cuda" or amp == "off":
        if amp in ("bf16", "fp16"):
            log.warning("--amp %s ignored on %s: mixed precision is for CUDA", amp, device)
        return Precision(device.type, torch.bfloat16, enabled=False)
    capability = tuple(torch.cuda.get_device_capability(device))
    gpu = f"{torch.cuda.get_device_name(device)} ({device}, compute capability "
    gpu += f"{capability[0]}.{capability[1]})"
    native_bf16 = capability >= BF16_MIN_CAPABILITY
    if amp == "auto":
        amp = "bf16" if native_bf16 else "fp16"
        log.info(
            "--amp auto: %s on %s; bf16 needs compute capability %d.%d+, else fp16 with "
            "loss scaling",
            amp,
            gpu,
            *BF16_MIN_CAPABILITY,
        )
    elif amp == "bf16" and not native_bf16:
        log.warning(
            "--amp bf16 on %s: bf16 is emulated below compute capability %d.%d (slow "
            "convolutions); --amp auto would use fp16",
            gpu,
            *BF16_MIN_CAPABILITY,
        )
    return Precision("cuda", torch.bfloat16 if amp == "bf16" else torch.float16, enabled=True)


def check_workers(workers: int) -> int:
    """``workers`` (``--workers``) as given, said once per run where it meets the CPUs this
    process may use: equal to them below the default (the default was capped: an info
    line), or above them (honoured, with a warning in our words instead of torch's
    DataLoader warning, which would repeat every epoch)."""
    cpus = usable_cpus()
    if workers > cpus:
        log.warning(
            "--workers %d: this process may use %d CPU(s), so the loader workers take turns "
            "on them (slower, more memory); --workers %d or fewer loads as fast",
            workers,
            cpus,
            cpus,
        )
        warnings.filterwarnings("ignore", message=TORCH_WORKER_WARNING, category=UserWarning)
    elif workers == cpus < DEFAULT_WORKERS:
        log.info(
            "--workers %d: the CPUs this process may use (the default is %d where there "
            "are as many)",
            workers,
            DEFAULT_WORKERS,
        )
    return workers


def make_scaler(enabled: bool) -> torch.cuda.amp.GradScaler:
    """A GradScaler (torch.amp's from 2.3, torch.cuda.amp's before)."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler("cuda", enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)
