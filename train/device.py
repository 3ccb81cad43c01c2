"""Where and how precisely a run computes: the device, mixed precision and its scaler."""

from __future__ import annotations

import logging

import torch

from epicdata.errors import EnvironmentProblem
from train.engine import Precision

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` (cuda if available), ``cpu``, ``cuda`` or ``cuda:N``; refuses CUDA where
    there is none."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EnvironmentProblem(
            "CUDA is not available on this node",
            where=f"--device {name}",
            fix="run on a GPU node (check the job's GPU request and `nvidia-smi`) or pass "
            "--device cpu",
        )
    return device


def resolve_precision(amp: str, device: torch.device) -> Precision:
    """bf16 where the GPU supports it, else fp16 (with a scaler); full precision on CPU."""
    if device.type != "cuda" or amp == "off":
        if amp in ("bf16", "fp16"):
            log.warning("--amp %s ignored on %s: mixed precision is for CUDA", amp, device)
        return Precision(device.type, torch.bfloat16, enabled=False)
    if amp == "auto":
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return Precision("cuda", torch.bfloat16 if amp == "bf16" else torch.float16, enabled=True)


def make_scaler(enabled: bool) -> torch.cuda.amp.GradScaler:
    """A GradScaler (torch.amp's from 2.3, torch.cuda.amp's before)."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler("cuda", enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)
