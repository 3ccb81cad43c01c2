"""Checkpoints: plain data, complete, atomic, versioned; one strict resume function.

A checkpoint is a dict of tensors and plain Python values, so ``torch.load(path,
weights_only=True)`` reads it without running code::

    format_version  int      CHECKPOINT_VERSION
    model           dict     state of the model unwrapped from DDP / torch.compile
    optimizer       dict
    scheduler       dict
    scaler          dict     GradScaler state ({} when disabled)
    epoch           int      epochs completed (the next epoch to run)
    step            int      batches of epoch ``epoch`` already trained (0 at epoch ends;
                             > 0 after a signal: resume skips them, the data order of an
                             epoch depends only on (seed, epoch))
    best_metric     float    best validation action top-1 so far (-1 before any)
    config          dict     TrainConfig.to_dict()
    input_spec      dict     train.input_spec.InputSpec.to_dict(): modality, channels, mean,
                             std, frame size, crop, clip length, sampler the model was
                             trained on (format 3; formats 1 and 2 hold ``normalization``
                             {"mean", "std"} instead: :func:`checkpoint_input_spec` makes
                             their spec from it and the config, with a warning)
    digest          str      SHA-256 of every value above (:func:`content_digest`), checked on
                             load: a flipped bit in a weight is found, not trained on
                             (formats 2 and 3; format-1 checkpoints have none and still load)
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from epicdata.errors import EpicInputError, OutOfSpaceError
from train.input_spec import InputSpec

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
DIGEST_KEY = "digest"
#: Present in a checkpoint taken mid-epoch: the RNG states and the epoch's sums so far.
MID_EPOCH_KEYS = frozenset({"rng", "epoch_progress"})
CHECKPOINT_KEYS = frozenset(
    {
        "format_version",
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "epoch",
        "step",
        "best_metric",
        "config",
        "input_spec",
    }
)
#: The keys of each format version read (the current one is CHECKPOINT_KEYS + digest).
_OLD_KEYS = (CHECKPOINT_KEYS - {"input_spec"}) | {"normalization"}
VERSION_KEYS = {
    1: _OLD_KEYS,
    2: _OLD_KEYS | {DIGEST_KEY},
    3: CHECKPOINT_KEYS | {DIGEST_KEY},
}


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model under DDP (``.module``) and ``torch.compile`` (``._orig_mod``)."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def checkpoint_bytes_estimate(model: nn.Module) -> int:
    """Bytes of one checkpoint of ``model`` trained with AdamW: fp32 weights and the two
    moment buffers, plus a little for everything else."""
    params = sum(p.numel() for p in model.parameters())
    return 3 * 4 * params + (1 << 20)


_DAMAGED_FIX = (
    "resume from an intact one (`--resume auto` falls back to the newest), or retrain that epoch"
)


class CheckpointDamagedError(EpicInputError):
    """A checkpoint whose content does not match its digest (or does not load); under
    ``--resume auto`` any checkpoint that fails a check. ``--resume auto`` falls back from
    it to the newest intact checkpoint of the run folder."""


class CheckpointReleaseError(CheckpointDamagedError):
    """A checkpoint that loads, and matches its digest where it has one, but whose format
    version, keys or model shapes are not this release's: another release (or program)
    wrote it. Only an explicit ``--resume PATH`` reports it as such; in a run folder's own
    ``last.pt`` (``--resume auto``) it is damage the digest could not see (format 1, or a
    flipped byte in the digest's own key). ``reason`` says what differs, without advice."""

    def __init__(self, reason: str, *, where: object, fix: str, details: str = "") -> None:
        super().__init__(reason, where=where, fix=fix, details=details)
        self.reason = reason
        self.details = details


def as_damage(exc: CheckpointReleaseError, path: Path) -> CheckpointDamagedError:
    """``exc`` reported as the damage it is in a run folder's own checkpoint."""
    return CheckpointDamagedError(
        f"checkpoint damaged: {exc.reason}", where=path, fix=_DAMAGED_FIX, details=exc.details
    )


def content_digest(state: dict[str, Any]) -> str:
    """SHA-256 over every key, tensor (dtype, shape, bytes) and plain value of ``state``
    (but its own digest), walked in sorted key order: independent of how torch.save lays
    the file out."""
    digest = hashlib.sha256()

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key in sorted(value, key=str):
                if not (prefix == "" and key == DIGEST_KEY):
                    walk(f"{prefix}/{key}", value[key])
        elif isinstance(value, (list, tuple)):
            digest.update(f"{prefix}:{type(value).__name__}{len(value)}".encode())
            for i, item in enumerate(value):
                walk(f"{prefix}[{i}]", item)
        elif isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{prefix}:{tensor.dtype}:{tuple(value.shape)}".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes())
        else:
            digest.update(f"{prefix}={value!r}".encode())

    walk("", state)
    return digest.hexdigest()


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` atomically: a temp file in the same folder, then ``os.replace``, so a
    kill mid-write leaves the previous file intact."""
    missing = CHECKPOINT_KEYS - set(state)
    extra = set(state) - CHECKPOINT_KEYS - MID_EPOCH_KEYS - {DIGEST_KEY}
    if missing or extra:
        raise ValueError(f"checkpoint keys: missing {sorted(missing)}, unexpected {sorted(extra)}")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    state = {**state, "format_version": CHECKPOINT_VERSION}  # what is written is format 3
    state[DIGEST_KEY] = content_digest(state)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        # torch.save reports a full disk as "RuntimeError: ... basic_ios::clear" or
        # "file write failed": judge by the room left, and keep what was saved before.
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        free = shutil.disk_usage(path.parent).free
        no_space = getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
        if (
            no_space
            or free < max(written, 1 << 20)
            or "write failed" in str(exc)
            or "basic_ios" in str(exc)
        ):
            raise OutOfSpaceError(
                f"no room to save {path.name} (it was cut at {written:,} bytes; "
                f"{free:,} bytes free)",
                where=path.parent,
                fix="free space or move the run folder to a larger disk, then --resume auto: "
                "the previous checkpoints are intact",
            ) from None
        raise
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint (``weights_only=True``) and check it; errors name the file.

    The digest is checked before the format version and the keys: a flipped byte in a key
    name (``model`` -> ``motel``) is damage, not a checkpoint of another release.
    Raises :class:`CheckpointDamagedError` for a file that does not load or does not match
    its digest, :class:`CheckpointReleaseError` for one that loads but is not this
    release's (another format version, other keys).
    """
    path = Path(path)
    if not path.is_file():
        raise EpicInputError("checkpoint not found", where=path)
    not_ours = "pass a checkpoint written by epic-train (RUN/best.pt, RUN/last.pt)"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign file: name it
        first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise CheckpointDamagedError(
            "not an epic-train checkpoint, or a truncated one",
            where=f"{path}: torch.load says {first}",
            fix=not_ours,
        ) from None
    return check_checkpoint(state, path)


def check_checkpoint(state: Any, path: str | Path) -> dict[str, Any]:
    """:func:`load_checkpoint`'s checks of ``state``, already read from ``path`` with
    ``weights_only=True`` (a caller that has read the file to tell its layout)."""
    path = Path(path)
    not_ours = "pass a checkpoint written by epic-train (RUN/best.pt, RUN/last.pt)"
    if not isinstance(state, dict):
        raise CheckpointReleaseError(
            "not an epic-train checkpoint",
            where=f"{path}: a {type(state).__name__}, not a dict",
            fix=not_ours,
        )
    version = state.get("format_version")
    if (
        DIGEST_KEY in state
        and version in (None, *READABLE_VERSIONS[1:])
        and content_digest(state) != state[DIGEST_KEY]
    ):
        raise CheckpointDamagedError(
            "checkpoint damaged: its content does not match its digest",
            where=path,
            fix=_DAMAGED_FIX,
        )
    _check_format(state, path, not_ours)
    return state


def _check_format(state: dict[str, Any], path: Path, not_ours: str) -> None:
    """The format version and the keys of a loaded checkpoint, as this release writes them."""
    if "format_version" not in state:
        raise CheckpointReleaseError(
            "not an epic-train checkpoint",
            where=f"{path}: a dict without a format_version",
            fix=not_ours + "; a bare state dict is for --weights",
        )
    version = state["format_version"]
    if version not in READABLE_VERSIONS:
        raise CheckpointReleaseError(
            f"checkpoint format version {version!r}, this release reads "
            f"{', '.join(map(str, READABLE_VERSIONS))}",
            where=path,
            fix="use the epic-kitchens-pipeline release that wrote it",
        )
    expected = VERSION_KEYS[version]
    missing = sorted(expected - set(state))
    extra = sorted(set(state) - expected - MID_EPOCH_KEYS, key=str)
    if missing or extra:
        raise CheckpointReleaseError(
            f"missing keys {missing}, unexpected keys {extra}",
            where=path,
            fix="it was not written by this release of epic-train: use the release that wrote it",
        )


def checkpoint_input_spec(state: dict[str, Any], path: str | Path) -> InputSpec:
    """The :class:`InputSpec` of a loaded checkpoint. Formats 1 and 2 recorded only the
    normalisation: their spec is the seed's RGB input with that normalisation and their
    config's crop, clip length and sampling, the frame size unknown; said once per file."""
    if "input_spec" in state:
        try:
            return InputSpec.from_dict(state["input_spec"])
        except (EpicInputError, TypeError) as exc:
            raise CheckpointReleaseError(
                f"its input spec is not this release's ({exc})",
                where=path,
                fix="use the release of epic-train that wrote it",
            ) from None
    config = state["config"]
    norm = state["normalization"]
    spec = InputSpec(
        modality="rgb",
        channels="RGB",
        mean=tuple(norm["mean"]),
        std=tuple(norm["std"]),
        frame_size=0,
        crop_size=int(config.get("crop_size", 224)),
        clip_length=int(config.get("num_frames", 8)),
        sampler=str(config.get("sampling", "linspace")),
    )
    if str(path) not in _WARNED_OLD:
        _WARNED_OLD.add(str(path))
        log.warning(
            "%s: written by an earlier release (checkpoint format %s) without an input spec; "
            "taking the old defaults: %s",
            path,
            state.get("format_version"),
            spec.describe(),
        )
    return spec


_WARNED_OLD: set[str] = set()


def resume(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    auto: bool = False,
) -> dict[str, Any]:
    """Restore everything from ``path`` strictly and return the checkpoint.

    Refuses a checkpoint whose model state has leftover or missing keys or other shapes,
    or whose scheduler is of another kind, rather than continuing with a half-restored run.
    ``auto`` (``--resume auto``: the run folder's own last.pt) reports a checkpoint that
    fails any check but the scheduler's kind (an option of this run) as damaged, for the
    caller to fall back from (:class:`CheckpointDamagedError`).
    """
    path = Path(path)
    try:
        state = load_checkpoint(path)
        _restore_weights(state, path, model=model, optimizer=optimizer)
    except CheckpointReleaseError as exc:
        if auto:
            raise as_damage(exc, path) from None
        raise

    # Private attributes (``_last_lr``, ``_step_count``) appear only once a scheduler has
    # stepped, depending on the torch version; the public ones tell its kind.
    def public(keys: Any) -> set[str]:
        return {k for k in keys if not k.startswith("_")}

    expected = public(scheduler.state_dict())
    if public(state["scheduler"]) != expected:
        raise EpicInputError(
            f"checkpoint {path}: its scheduler state has keys {sorted(state['scheduler'])}, "
            f"this run's scheduler {sorted(expected)}; resume with the same --scheduler"
        )
    scheduler.load_state_dict(state["scheduler"])
    if state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    return state


def _restore_weights(
    state: dict[str, Any], path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer
) -> None:
    """The model (strictly: same keys and shapes) and the optimizer from ``state``."""
    try:
        unwrap_model(model).load_state_dict(state["model"], strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise CheckpointReleaseError(
            "its model state does not match this model",
            where=path,
            fix="resume with the release and model that wrote it",
            details=str(exc),
        ) from None
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointReleaseError(
            "its optimizer state does not match this model's parameters",
            where=path,
            fix="resume with the release and model that wrote it",
            details=str(exc),
        ) from None


# ----------------------------------------------------------------------------- run folder


def training_state(
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    epoch: int,
    step: int,
    best_metric: float,
    config: dict[str, Any],
    input_spec: dict[str, Any],
    mid_epoch: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint dict (see the module docstring): everything resume needs.
    ``mid_epoch``: ``rng`` and ``epoch_progress`` of a checkpoint taken inside an epoch."""
    return (mid_epoch or {}) | {
        "format_version": CHECKPOINT_VERSION,
        "model": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "step": step,
        "best_metric": best_metric,
        "config": config,
        "input_spec": input_spec,
    }


def save_epoch(
    state: dict[str, Any],
    run_dir: Path,
    *,
    is_best: bool,
    metrics: dict[str, float],
    checkpoint_every: int,
) -> None:
    """The save policy at the end of epoch ``state["epoch"]``: last.pt always, best.pt (and
    best_metrics.json) when it is the best so far, epoch_NNN.pt every ``checkpoint_every``."""
    epoch = state["epoch"]
    save_checkpoint(state, run_dir / "last.pt")
    if is_best:
        save_checkpoint(state, run_dir / "best.pt")
        (run_dir / "best_metrics.json").write_text(
            json.dumps({"epoch": epoch, **metrics}, indent=1)
        )
    if epoch % checkpoint_every == 0:
        save_checkpoint(state, run_dir / f"epoch_{epoch:03d}.pt")


def run_folder_bytes(model: nn.Module, *, epochs: int, checkpoint_every: int) -> int:
    """What a run writes at most: last.pt, best.pt, every kept epoch_NNN.pt, and one
    checkpoint's temp file while it is replaced; logs and plots are small."""
    return checkpoint_bytes_estimate(model) * (3 + epochs // checkpoint_every) + (16 << 20)


def newest_intact(run_dir: Path, *, besides: Path) -> tuple[Path, dict[str, Any]] | None:
    """The intact checkpoint of ``run_dir`` (epoch_NNN.pt, best.pt; not ``besides``) that is
    furthest along, with its state; None when there is none."""
    found = []
    for path in [*sorted(run_dir.glob("epoch_*.pt")), run_dir / "best.pt"]:
        if path == besides or not path.is_file():
            continue
        try:
            state = load_checkpoint(path)
        except CheckpointReleaseError as exc:  # in the run's own folder: damage
            log.warning("%s", str(as_damage(exc, path)).splitlines()[0])
            continue
        except EpicInputError as exc:
            log.warning("%s", str(exc).splitlines()[0])
            continue
        found.append(((state["epoch"], state["step"]), path, state))
    if not found:
        return None
    _, path, state = max(found, key=lambda item: item[0])
    return path, state


#: ``save_checkpoint``'s temp file: ``.<name>.<pid>.tmp`` next to ``<name>``.
_TEMP_NAME = re.compile(r"\.(?P<name>.+\.pt)\.(?P<pid>[0-9]+)\.tmp")


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (signal 0 checks without signalling)."""
    if pid <= 0:  # 0 and negatives would address process groups: no writer has them
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_dead_temp_files(run_dir: Path) -> list[Path]:
    """Remove the checkpoint temp files of ``run_dir`` whose writer is not running on this
    machine (a SIGKILL or a node failure during ``save_checkpoint``: 125 MB each for the
    ResNet-18), and return them. A writer that is still alive (another ``epic-train`` of
    the same run folder on this node) keeps its file; the pid of a writer on another node
    cannot be checked, so two runs of one run folder on two nodes at once are not
    supported (they would overwrite each other's last.pt anyway)."""
    removed: list[Path] = []
    try:
        entries = list(run_dir.iterdir())
    except OSError:  # no run folder yet (a first start), or unreadable: preflight says why
        return removed
    for path in entries:
        match = _TEMP_NAME.fullmatch(path.name)
        if match is None or _pid_alive(int(match["pid"])):
            continue
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:  # another rank of this run removed it first
            continue
        except OSError as exc:
            log.warning("cannot remove %s, a leftover checkpoint temp file: %s", path, exc)
            continue
        log.info(
            "removed %s (%s bytes): a temp copy of %s left by process %s, which was stopped "
            "while saving it",
            path,
            f"{size:,}",
            match["name"],
            match["pid"],
        )
        removed.append(path)
    return removed


def find_resume(run_dir: Path, resume_arg: str | None) -> Path | None:
    """The checkpoint to resume: none (refusing a run folder in use), ``auto`` (last.pt if
    present) or a path that must exist. Removes the checkpoint temp files that a killed
    earlier start of this run left in ``run_dir`` first (:func:`remove_dead_temp_files`)."""
    remove_dead_temp_files(run_dir)
    if resume_arg is None:
        if (run_dir / "last.pt").exists():
            raise EpicInputError(
                "the run folder already holds a run",
                where=run_dir / "last.pt",
                fix="pass --resume auto to continue it, or choose a new --output-dir",
            )
        return None
    if resume_arg == "auto":
        path = run_dir / "last.pt"
        return path if path.exists() else None
    if not Path(resume_arg).is_file():
        raise EpicInputError(
            "no checkpoint to resume from",
            where=f"--resume {resume_arg}",
            fix="pass an existing checkpoint, or --resume auto to continue the run folder's "
            "last.pt",
        )
    return Path(resume_arg)
