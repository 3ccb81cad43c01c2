"""Device and precision choices for the first GPU run, checked on the CPU by standing in for
torch.cuda's answers: an explicit GPU index is honoured (or refused under DDP when it is not
the rank's), no silent CPU fallback in a GPU job, bf16 only where it is native."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from epicdata.errors import EnvironmentProblem, ExitCode
from train.config import DEFAULT_WORKERS, default_workers
from train.device import check_workers, resolve_device, resolve_precision
from train.distributed import DistInfo

ONE_PROCESS = DistInfo()


@pytest.fixture
def no_slurm_gpus(monkeypatch):
    for name in ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def gpus(monkeypatch, no_slurm_gpus):
    """``gpus(n, capability=(8, 0))``: torch.cuda reports n visible GPUs of that capability."""

    def fake(count: int, capability: tuple[int, int] = (8, 0)) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
        # From torch 2.3 this is True on V100/T4 too (emulated): it must not decide.
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)

    return fake


def test_an_explicit_gpu_index_is_honoured_in_one_process(gpus):
    # Regression: --device cuda:1 became cuda:<local_rank>, i.e. cuda:0.
    gpus(2)
    assert resolve_device("cuda:1", ONE_PROCESS) == torch.device("cuda", 1)
    assert resolve_device("cuda", ONE_PROCESS) == torch.device("cuda", 0)
    assert resolve_device("auto", ONE_PROCESS) == torch.device("cuda", 0)


def test_under_ddp_each_rank_takes_its_local_gpu_and_a_conflicting_index_is_refused(gpus):
    gpus(2)
    rank1 = DistInfo(rank=3, world_size=4, local_rank=1)
    assert resolve_device("cuda", rank1) == torch.device("cuda", 1)
    assert resolve_device("cuda:1", rank1) == torch.device("cuda", 1)  # the same: fine
    with pytest.raises(EnvironmentProblem, match="conflicts with this rank's GPU cuda:1"):
        resolve_device("cuda:0", rank1)


def test_an_index_past_the_visible_gpus_is_refused(gpus):
    gpus(2)
    with pytest.raises(EnvironmentProblem, match="sees 2 GPU"):
        resolve_device("cuda:2", ONE_PROCESS)


def test_cuda_without_a_usable_gpu_fails_with_torchs_reason(gpus, monkeypatch):
    gpus(0)
    monkeypatch.setattr(torch.version, "cuda", "12.1")

    def old_driver() -> None:
        raise RuntimeError("The NVIDIA driver on your system is too old (found version 11040).")

    monkeypatch.setattr(torch.cuda, "init", old_driver)
    with pytest.raises(EnvironmentProblem) as caught:
        resolve_device("cuda", ONE_PROCESS)
    assert "driver on your system is too old" in str(caught.value)
    assert caught.value.exit_code == ExitCode.BAD_INPUT


def test_auto_falls_back_to_the_cpu_only_where_no_gpu_was_asked_for(gpus, monkeypatch, caplog):
    # Regression: a GPU job on a node whose driver cannot run this torch's CUDA trained on
    # the CPU for hours with one log line.
    gpus(0)
    with caplog.at_level(logging.INFO):
        assert resolve_device("auto", ONE_PROCESS) == torch.device("cpu")
    assert "--device auto: " in caplog.text and "training on the CPU" in caplog.text
    monkeypatch.setenv("SLURM_JOB_GPUS", "0")  # GPU id 0, given to this job
    with pytest.raises(EnvironmentProblem, match="SLURM_JOB_GPUS=0"):
        resolve_device("auto", ONE_PROCESS)


#: What torch 2.1 to 2.14 (CUDA builds) raise from torch.cuda.init() on a machine without a GPU.
TORCH_NO_DRIVER = (
    "Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU and "
    "installed a driver from http://www.nvidia.com/Download/index.aspx"
)


def _cuda_init_fails(monkeypatch, message: str) -> None:
    """A CUDA build of torch whose torch.cuda.init() raises ``message``."""
    monkeypatch.setattr(torch.version, "cuda", "12.1")

    def init() -> None:
        raise RuntimeError(message)

    monkeypatch.setattr(torch.cuda, "init", init)


def test_no_gpu_is_one_plain_line_not_torchs_driver_advice_regression(gpus, monkeypatch, caplog):
    # Regression: every CPU machine logged torch's "Found no NVIDIA driver ... nvidia.com"
    # text as the INFO line of --device auto.
    gpus(0)
    _cuda_init_fails(monkeypatch, TORCH_NO_DRIVER)
    with caplog.at_level(logging.INFO, logger="train.device"):
        assert resolve_device("auto", ONE_PROCESS) == torch.device("cpu")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, "--device auto: no GPU: training on the CPU")
    ]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="train.device"):
        resolve_device("auto", ONE_PROCESS, work="scoring")
    assert caplog.messages == ["--device auto: no GPU: scoring on the CPU"]


def test_a_gpu_cuda_cannot_use_is_a_warning_with_torchs_reason(gpus, monkeypatch, caplog):
    gpus(0)
    _cuda_init_fails(monkeypatch, "The NVIDIA driver on your system is too old (found 11040).")
    with caplog.at_level(logging.INFO, logger="train.device"):
        assert resolve_device("auto", ONE_PROCESS) == torch.device("cpu")
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "CUDA cannot be used, training on the CPU: The NVIDIA driver" in record.getMessage()


def test_a_cpu_build_of_torch_says_so(gpus, monkeypatch, caplog):
    gpus(0)
    monkeypatch.setattr(torch.version, "cuda", None)
    with caplog.at_level(logging.INFO, logger="train.device"):
        assert resolve_device("auto", ONE_PROCESS) == torch.device("cpu")
    assert caplog.messages == [
        f"--device auto: this torch ({torch.__version__}) is a CPU build: training on the CPU"
    ]


def test_a_rocm_build_is_not_called_a_cpu_build(gpus, monkeypatch, caplog):
    # ROCm builds of torch have torch.version.cuda None too; they reach the GPU through
    # torch.cuda, so an unusable one is a warning with its reason, not "a CPU build".
    gpus(0)
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", "6.0.32830", raising=False)

    def init() -> None:
        raise RuntimeError("No HIP GPUs are available")

    monkeypatch.setattr(torch.cuda, "init", init)
    with caplog.at_level(logging.INFO, logger="train.device"):
        assert resolve_device("auto", ONE_PROCESS) == torch.device("cpu")
    (message,) = caplog.messages
    assert "CPU build" not in message and "ROCm 6.0.32830" in message, message


@pytest.fixture
def cpus(monkeypatch):
    """``cpus(n)``: this process may run on n CPUs (its affinity), as torch sees it too."""

    def set_count(count: int) -> None:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(count)), raising=False)

    return set_count


@pytest.mark.parametrize(("count", "workers"), [(1, 1), (2, 2), (4, 4), (64, DEFAULT_WORKERS)])
def test_the_default_workers_are_capped_by_the_usable_cpus_regression(cpus, count, workers):
    # Regression: the default --workers 4 on a 2-core machine made torch warn every epoch.
    cpus(count)
    assert default_workers() == workers


def test_a_capped_default_is_said_once_and_taken(cpus, caplog):
    cpus(2)
    with caplog.at_level(logging.INFO, logger="train.device"):
        assert check_workers(2) == 2
        assert check_workers(1) == 1  # below the CPUs: nothing to say
    assert caplog.messages == [
        f"--workers 2: the CPUs this process may use (the default is {DEFAULT_WORKERS} where "
        "there are as many)"
    ]


def test_more_workers_than_cpus_are_honoured_with_our_warning_not_torchs(cpus, caplog):
    cpus(2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        DataLoader(list(range(8)), num_workers=4)  # torch's own warning, without the check
        with caplog.at_level(logging.INFO, logger="train.device"):
            assert check_workers(4) == 4
        DataLoader(list(range(8)), num_workers=4)
    torchs = [w for w in caught if "DataLoader will create 4 worker" in str(w.message)]
    assert len(torchs) == 1  # the first loader's only
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        "--workers 4: this process may use 2 CPU(s), so the loader workers take turns on them "
        "(slower, more memory); --workers 2 or fewer loads as fast"
    )


@pytest.mark.parametrize(
    ("capability", "expected"),
    [
        ((7, 0), torch.float16),
        ((7, 5), torch.float16),
        ((8, 0), torch.bfloat16),
        ((9, 0), torch.bfloat16),
    ],
)
def test_amp_auto_picks_bf16_by_compute_capability(gpus, caplog, capability, expected):
    # V100 (7.0) and T4 (7.5) report bf16 as supported (emulated) from torch 2.3.
    gpus(1, capability)
    with caplog.at_level(logging.INFO):
        precision = resolve_precision("auto", torch.device("cuda", 0))
    assert precision.enabled and precision.dtype == expected
    name = "bf16" if expected == torch.bfloat16 else "fp16"
    assert f"--amp auto: {name} on Fake GPU (cuda:0, compute capability" in caplog.text


def test_forced_bf16_on_an_older_gpu_is_kept_with_a_warning(gpus, caplog):
    gpus(1, (7, 0))
    with caplog.at_level(logging.WARNING):
        precision = resolve_precision("bf16", torch.device("cuda", 0))
    assert precision.dtype == torch.bfloat16 and "emulated" in caplog.text


def test_mixed_precision_is_off_on_the_cpu():
    assert not resolve_precision("auto", torch.device("cpu")).enabled


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a usable GPU")
def test_epic_train_device_cuda_on_a_node_without_gpu_fails_at_once(tmp_path):
    # What the slurm scripts pass: exit 2 with the reason, before anything is built.
    command = [str(Path(sys.executable).parent / "epic-train"), "--device", "cuda"]
    command += ["--store", tmp_path, "--annotations", tmp_path, "--output-dir", tmp_path / "r"]
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=120)
    assert result.returncode == ExitCode.BAD_INPUT, result.stderr
    assert "CUDA cannot be used on this node" in result.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_the_gpu_suite_runs_its_loop_checks_on_the_cpu():
    # The suite is for the first GPU session; on the CPU it must still run and say what it
    # could not check, so that it does not rot between GPU sessions.
    command = [sys.executable, "-m", "bench.gpu_suite", "--steps", "2", "--batch-size", "2"]
    command += ["--num-frames", "2", "--crop-size", "32", "--skip-run"]
    # The throughput part at toy sizes: a 1,200-frame synthetic store, one loader worker.
    command += ["--store-frames", "1200", "--pipeline-steps", "2", "--pipeline-workers", "1"]
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=root)
    assert result.returncode == 0, result.stderr
    assert "| cpu: 2 train + eval steps |" in result.stdout
    assert "| step on clips already on the device | " in result.stdout
    assert "| synthetic store | 1200 frames 456x256, " in result.stdout
    assert "| pipeline torchvision, 1 of " in result.stdout
    assert (
        "| evaluation --views 1x1, " in result.stdout
        and "| evaluation --views 10x3, " in result.stdout
    )
    if not torch.cuda.is_available():
        assert "| device and precision | no CUDA on this machine | not checked |" in result.stdout
        assert "| --decoder nvjpeg | --decoder nvjpeg cannot be used: " in result.stdout
