"""The training run: builders, the epoch loop, checkpoints, resume and signals.

Run folder (only rank 0 writes)::

    config.yaml            the resolved TrainConfig
    train.log              the log of every (re)start
    summary.csv            one row per epoch: losses, official val metrics, lr, clips/s, data wait
    latest_results.txt     the last row, readable
    curves.png             loss and accuracy per epoch (matplotlib)
    tensorboard/           (when tensorboard is installed)
    last.pt                every epoch, and on SIGUSR1/SIGTERM mid-epoch
    best.pt                best validation action top-1 (best_metrics.json: its metrics)
    epoch_NNN.pt           every ``checkpoint_every`` epochs
"""

from __future__ import annotations

import collections
import logging
import signal
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from epicdata.annotations import AnnotationDir, SegmentTable
from epicdata.console import add_log_file, preflight_output
from epicdata.dataset import EpicActionDataset, check_readable, worker_deaths_named
from epicdata.errors import EpicInputError, ExitCode
from epicdata.stage import stage_store, staged_root
from epicdata.store import FrameStore
from train import distributed
from train.checkpoint import (
    CheckpointDamagedError,
    find_resume,
    newest_intact,
    resume,
    run_folder_bytes,
    save_checkpoint,
    save_epoch,
    training_state,
)
from train.config import TrainConfig, free_on_resume
from train.data import (
    ClipLoader,
    TrainData,
    build_eval_data,
    build_train_data,
    clip_loader,
    metric_sets,
)
from train.device import (
    Precision,
    check_workers,
    make_scaler,
    resolve_device,
    resolve_precision,
)
from train.distributed import DistInfo
from train.engine import EpochStats, evaluate, train_one_epoch
from train.input_spec import InputSpec, check_store_modality, run_input_spec
from train.metrics import compute_metrics
from train.model import ActionModel, build_model, compile_failures_named, compile_model
from train.nvjpeg import check_nvjpeg
from train.recipes import RECIPES, check_store_serves
from train.runlog import RunLog
from train.transforms import DeviceAugment
from train.weights import load_weights

log = logging.getLogger(__name__)

#: Exit code after a checkpoint on SIGUSR1/SIGTERM: the slurm scripts requeue on it.
EXIT_REQUEUE = int(ExitCode.REQUEUE)
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
SELECTION_METRIC = "all_action_accuracy_at_1"


class StopFlag:
    """Records SIGUSR1/SIGTERM; the loop checks it at step boundaries (never mid-step)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: object) -> None:
        # SIGTERM wins over SIGUSR1, as in stop_source across ranks: on scancel the job's
        # shell passes SIGUSR1 on after SLURM's SIGTERM, and the log must say SIGTERM.
        self.signum = max(self.signum or 0, signum)

    def __call__(self) -> bool:
        return self.signum is not None


def stop_source(stop: StopFlag, info: DistInfo, device: torch.device) -> str:
    """Where a stop the ranks agreed on came from, for every rank's log: "SIGTERM received
    by this process", "SIGUSR1 received by rank 2" (a collective: every rank calls it)."""
    own = int(stop.signum or 0)
    signum, rank = own, info.rank
    if info.enabled:
        reduce = torch.distributed.all_reduce
        highest = torch.tensor([own], device=device)
        reduce(highest, op=torch.distributed.ReduceOp.MAX)
        signum = int(highest.item())
        got_it = own != 0 and own == signum
        first = torch.tensor([info.rank if got_it else info.world_size], device=device)
        reduce(first, op=torch.distributed.ReduceOp.MIN)
        rank = int(first.item())
    if not signum:
        return "stop requested"
    name = signal.Signals(signum).name
    if rank == info.rank:
        return f"{name} received by this process" + (f" (rank {rank})" if info.enabled else "")
    return f"{name} received by rank {rank}"


def build_optimizer(
    model: torch.nn.Module,
    *,
    lr: float,
    weight_decay: float,
    kind: str = "adamw",
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    """AdamW (the seed's) or SGD with momentum (C1's), over the parameters that train
    (partial BatchNorm's frozen ones are left out, as C1's optimiser policies leave them).
    AdamW takes the fused CUDA kernel on a GPU, which also takes fp16's GradScaler step
    without the host sync (an ``.item()`` on the inf check) of the other implementations."""
    params = [p for p in model.parameters() if p.requires_grad]
    on_cuda = params[0].is_cuda
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.AdamW(
        params, lr=lr, weight_decay=weight_decay, fused=True if on_cuda else None
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    kind: str,
    epochs: int,
    factor: float,
    patience: int,
    milestones: list[int] | None = None,
    gamma: float = 0.1,
) -> torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau:
    """plateau (on validation action top-1), cosine over ``epochs``, or step: the lr times
    ``gamma`` at each epoch of ``milestones`` (C1's MultiStepLR, stepped per epoch)."""
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if kind == "step":
        return torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=milestones or [], gamma=gamma
        )
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=factor, patience=patience
    )


def _seed_epoch(seed: int, epoch: int, step: int, rank: int, generator: torch.Generator) -> None:
    """Seed dropout (global RNG) and the device augmentation from (seed, epoch, step, rank):
    an epoch run after a resume draws exactly what it would have drawn uninterrupted."""
    value = ((seed * 1_000_003 + epoch) * 1_000_003 + step) * 1_009 + rank
    torch.manual_seed(value % 2**63)
    generator.manual_seed((value + 1) % 2**63)


@dataclass
class _RunData:
    """What a run reads, built once by :func:`_build_data`."""

    store: FrameStore  # the staged copy with --stage-dir
    train: TrainData
    # None: no validation epochs (the validation split is trained on: --train-splits).
    val_table: SegmentTable | None
    val_set: EpicActionDataset | None
    val_loader: DataLoader | None
    metric_sets: dict[str, frozenset]
    train_clips: ClipLoader  # a batch -> its uint8 clips on the device
    val_clips: ClipLoader | None


@dataclass
class _Run:
    """Everything the epochs of one run share, built once by :func:`_setup`."""

    cfg: TrainConfig
    info: DistInfo
    device: torch.device
    precision: Precision
    data: _RunData
    model: torch.nn.Module
    ddp_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: object
    augment: DeviceAugment
    input_spec: InputSpec
    generator: torch.Generator
    run_dir: Path
    runlog: RunLog | None  # rank 0 of a run that writes
    limit_batches: int | None
    allow_config_change: bool = False
    note: str = ""  # for the next summary row (e.g. options changed on resume)
    start_epoch: int = 0
    start_step: int = 0
    best: float = -1.0
    #: From a checkpoint taken mid-epoch: RNG states and the epoch's sums so far.
    resumed_mid_epoch: dict | None = None

    def state(self, epoch: int, step: int, mid_epoch: dict | None = None) -> dict:
        return training_state(
            mid_epoch=mid_epoch,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
            epoch=epoch,
            step=step,
            best_metric=self.best,
            config=self.cfg.to_dict(),
            input_spec=self.input_spec.to_dict(),
        )


def fit(
    cfg: TrainConfig,
    *,
    resume_from: str | None = None,
    dry_run: bool = False,
    allow_config_change: bool = False,
    accept_input_mismatch: bool = False,
) -> int:
    """Train per ``cfg``; returns the process exit code (0, or EXIT_REQUEUE after a signal).
    ``allow_config_change``: apply options that differ from the resumed checkpoint's.
    ``accept_input_mismatch``: load ``--weights`` trained on other input, with a warning."""
    stop = StopFlag()
    root = logging.getLogger()
    handlers = list(root.handlers)
    try:
        return _fit(
            cfg,
            stop=stop,
            resume_from=resume_from,
            dry_run=dry_run,
            allow_config_change=allow_config_change,
            accept_input_mismatch=accept_input_mismatch,
        )
    finally:
        stop.restore()
        distributed.shutdown()
        for handler in set(root.handlers) - set(handlers):  # this run's train.log
            root.removeHandler(handler)
            handler.close()


def _fit(
    cfg: TrainConfig,
    *,
    stop: StopFlag,
    resume_from: str | None,
    dry_run: bool,
    allow_config_change: bool,
    accept_input_mismatch: bool,
) -> int:
    run = _setup(
        cfg,
        resume_from=resume_from,
        dry_run=dry_run,
        allow_config_change=allow_config_change,
        accept_input_mismatch=accept_input_mismatch,
    )
    for epoch in range(run.start_epoch, 1 if dry_run else cfg.epochs):
        step0 = run.start_step if epoch == run.start_epoch else 0
        stats = _train_epoch(run, epoch, step0, stop)
        if stats.interrupted:
            source = stop_source(stop, run.info, run.device)
            if run.runlog is not None:
                mid_epoch = {
                    "rng": {"torch": torch.get_rng_state(), "augment": run.generator.get_state()},
                    "epoch_progress": stats.carry(),
                }
                state = run.state(epoch, step0 + stats.steps, mid_epoch)
                save_checkpoint(state, run.run_dir / "last.pt")
                log.warning(
                    "%s: saved last.pt at epoch %d step %d; exiting with %d to requeue",
                    source,
                    epoch + 1,
                    step0 + stats.steps,
                    EXIT_REQUEUE,
                )
            else:
                log.warning(
                    "%s: stopping at epoch %d step %d with the other ranks (rank 0 saves "
                    "last.pt); exiting with %d",
                    source,
                    epoch + 1,
                    step0 + stats.steps,
                    EXIT_REQUEUE,
                )
            return EXIT_REQUEUE
        lr = run.optimizer.param_groups[0]["lr"]  # this epoch's, before the scheduler steps
        metrics, val_loss = _validate_epoch(run)
        stop_now = distributed.any_rank(stop(), run.info, run.device)
        _end_epoch(run, epoch, stats, metrics, val_loss, lr=lr)
        if stop_now:
            log.warning(
                "%s: epoch %d saved; exiting with %d to requeue",
                stop_source(stop, run.info, run.device),
                epoch + 1,
                EXIT_REQUEUE,
            )
            return EXIT_REQUEUE
    if run.runlog is not None:
        run.runlog.close()
    if run.cfg.validates:
        log.info("done: best validation action top-1 %.2f%%; run folder %s", run.best, run.run_dir)
    else:
        log.info(
            "done: trained on %s without validation: last.pt is the model to submit; run folder %s",
            run.cfg.train_split,
            run.run_dir,
        )
    return 0


def _setup(
    cfg: TrainConfig,
    *,
    resume_from: str | None,
    dry_run: bool,
    allow_config_change: bool,
    accept_input_mismatch: bool = False,
) -> _Run:
    """Device and ranks, the run folder's preflight, data, model and optimiser, resume."""
    device, info = init_device(cfg.device, decoder=cfg.decoder, deterministic=cfg.deterministic)
    run_dir = Path(cfg.output_dir)
    checkpoint_path = find_resume(run_dir, resume_from)
    writes = info.is_main and not dry_run
    if writes:
        need = run_folder_bytes(
            ActionModel(**cfg.model_options()),
            epochs=cfg.epochs,
            checkpoint_every=cfg.checkpoint_every,
        )
        preflight_output(run_dir, need_bytes=need, option="--output-dir")
    limit = 2 if dry_run else cfg.limit_batches
    data = _build_data(cfg, info=info, device=device, dry_run=dry_run, limit_batches=limit)

    torch.manual_seed(cfg.seed)  # the same random init on every rank and every run
    # Resuming, the checkpoint replaces the weights: nothing to load (or to log as loaded).
    model, input_spec = _model_and_input(
        cfg,
        device=device,
        frame_size=data.store.manifest.params.short_side,
        weights=cfg.weights if checkpoint_path is None else None,
        accept_input_mismatch=accept_input_mismatch,
    )
    optimizer, scheduler = optimization(cfg, model)
    precision = resolve_precision(cfg.amp, device)
    run = _Run(
        cfg=cfg,
        info=info,
        device=device,
        precision=precision,
        data=data,
        model=model,
        # Checkpoints take run.model, the bare model: --compile does not change their keys.
        ddp_model=wrap_model(model, info=info, device=device, compiled=cfg.compile),
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=make_scaler(precision.enabled and precision.dtype == torch.float16),
        augment=DeviceAugment(
            input_spec.mean, input_spec.std, photometric=cfg.photometric, modality=cfg.modality
        ).to(device),
        input_spec=input_spec,
        generator=torch.Generator(),
        run_dir=run_dir,
        runlog=None,
        limit_batches=limit,
        allow_config_change=allow_config_change,
    )
    if checkpoint_path is not None:
        _resume(run, checkpoint_path, auto=resume_from == "auto")
    if writes:
        run_dir.mkdir(parents=True, exist_ok=True)
        add_log_file(run_dir / "train.log")
        cfg.save(run_dir / "config.yaml")
        # Records of epochs after the resumed one are dropped: they are redone.
        run.runlog = RunLog(run_dir, upto_epoch=run.start_epoch)
    _log_start(run)
    return run


def optimization(cfg: TrainConfig, model: torch.nn.Module) -> tuple[torch.optim.Optimizer, Any]:
    """The optimiser and the learning-rate schedule of ``cfg`` (the run's, and the GPU
    suite's recipe rows)."""
    optimizer = build_optimizer(
        model,
        kind=cfg.optimizer,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        momentum=cfg.momentum,
    )
    scheduler = build_scheduler(
        optimizer,
        kind=cfg.scheduler,
        epochs=cfg.epochs,
        factor=cfg.plateau_factor,
        patience=cfg.plateau_patience,
        milestones=cfg.milestones(),
        gamma=cfg.lr_gamma,
    )
    return optimizer, scheduler


def _model_and_input(
    cfg: TrainConfig,
    *,
    device: torch.device,
    frame_size: int,
    weights: str | None,
    accept_input_mismatch: bool,
) -> tuple[torch.nn.Module, InputSpec]:
    """The model, initialised from ``weights`` (None: a checkpoint replaces them), and the
    input this run feeds it, which the weights' own input spec is checked against."""
    model = build_model(**cfg.model_options(), device=device, channels_last=device.type == "cuda")
    input_spec = run_input_spec(
        norm=cfg.norm,
        frame_size=frame_size,
        crop_size=cfg.crop_size,
        clip_length=cfg.num_frames,
        sampler=cfg.sampling,
        modality=cfg.modality,
        flow_stack=cfg.flow_stack,
    )
    if weights is not None:
        load_weights(model, weights, fed=input_spec, accept_mismatch=accept_input_mismatch)
    if weights == "none" and cfg.partial_bn:
        log.warning(
            "--partial-bn with --weights none: the frozen BatchNorms keep their initial "
            "statistics (mean 0, variance 1), which fit no trained layer; the loss starts "
            "high. Partial BN is meant for pretrained weights (or pass --no-partial-bn)"
        )
    return model, input_spec


def init_device(name: str, *, decoder: str, deterministic: bool) -> tuple[torch.device, DistInfo]:
    """This rank's device (``--device name``) and the process group, before anything is
    built: ``--decoder nvjpeg`` where it cannot run exits 2 here, with the fix."""
    device = resolve_device(name, distributed.discover())
    info = distributed.init(device.type)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # nothing lands on cuda:0 by default
    if decoder == "nvjpeg":
        check_nvjpeg(device)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic
    return device, info


def _build_data(
    cfg: TrainConfig,
    *,
    info: DistInfo,
    device: torch.device,
    dry_run: bool,
    limit_batches: int | None,
) -> _RunData:
    """The store (staged to ``--stage-dir`` unless a dry run), the training and validation
    datasets and loaders, and how their batches reach the device."""
    annotations = AnnotationDir(cfg.annotations)
    train_table = SegmentTable.joined([annotations.table(s) for s in cfg.train_splits()])
    val_table = annotations.table(cfg.val_split) if cfg.validates else None
    store_root, staged_from = Path(cfg.store), None
    if cfg.stage_dir and dry_run:
        log.info("dry run: --stage-dir %s not used, the store is read in place", cfg.stage_dir)
    elif cfg.stage_dir:
        videos = {*train_table.video_ids, *(val_table.video_ids if val_table else ())}
        store_root = _stage(cfg.store, cfg.stage_dir, videos, info=info, device=device)
        staged_from = Path(cfg.store)  # damage found in the copy is the copy's
    # Only the reader sees the staged copy: cfg (config.yaml, checkpoints) keeps --store.
    store = FrameStore(store_root, staged_from=staged_from)
    check_store_modality(store.modality, cfg.modality, store=store_root, source="this run")
    clips = dict(
        num_frames=cfg.num_frames,
        modality=cfg.modality,
        flow_stack=cfg.flow_stack,
        sampling=cfg.sampling,
        crop_size=cfg.crop_size,
        decoder=cfg.decoder,
        batch_size=cfg.batch_size,
        workers=check_workers(cfg.workers),
        info=info,
        pin_memory=device.type == "cuda",
    )
    train = build_train_data(
        store,
        train_table,
        seed=cfg.seed,
        limit_batches=limit_batches,
        train_crop=cfg.train_crop,
        **clips,
    )
    val_set, val_loader = (
        build_eval_data(store, val_table, **clips) if val_table is not None else (None, None)
    )
    check_store_serves(recipe=cfg.recipe, sampling=cfg.sampling, keep=store.manifest.params.keep)
    # Every frame the samplers can ask for, from the metadata: a missing one fails here,
    # not as a worker traceback mid-epoch.
    check_readable(train.dataset)
    if val_set is not None:
        check_readable(val_set)
    return _RunData(
        store=store,
        train=train,
        val_table=val_table,
        val_set=val_set,
        val_loader=val_loader,
        metric_sets=metric_sets(annotations, cfg.val_split) if val_set is not None else {},
        train_clips=clip_loader(train.dataset, device),
        val_clips=clip_loader(val_set, device) if val_set is not None else None,
    )


def wrap_model(
    model: torch.nn.Module, *, info: DistInfo, device: torch.device, compiled: bool
) -> torch.nn.Module:
    """What the training steps call: ``model`` in DDP under several processes, compiled
    with ``--compile``."""
    if info.enabled:
        device_ids = [device.index] if device.type == "cuda" else None
        model = DistributedDataParallel(model, device_ids=device_ids)
    return compile_model(model) if compiled else model


def _log_start(run: _Run) -> None:
    cfg, precision = run.cfg, run.precision
    recipe = RECIPES[cfg.recipe]
    log.info(
        "recipe %s (%s; expected: %s): %s %s%s, %s lr %g, %s schedule, %d frames",
        recipe.name,
        recipe.summary,
        recipe.expected,
        cfg.arch,
        cfg.temporal,
        ", partial BN" if cfg.partial_bn else "",
        cfg.optimizer,
        cfg.lr,
        cfg.scheduler,
        cfg.num_frames,
    )
    log.info(
        "train %d segments, %s %d segments; %d steps/epoch x %d process(es); device %s, amp %s, "
        "decoder %s%s",
        len(run.data.train.dataset),
        cfg.val_split if run.data.val_set is not None else "no validation:",
        len(run.data.val_set) if run.data.val_set is not None else 0,
        run.data.train.steps_per_epoch,
        run.info.world_size,
        run.device,
        precision.dtype if precision.enabled else "off",
        cfg.decoder,
        ", compiled" if cfg.compile else "",
    )


def _stage(
    store: str, stage_dir: str, videos: set[str], *, info: DistInfo, device: torch.device
) -> Path:
    """``--stage-dir``: local rank 0 of each node copies the shards holding ``videos`` to
    node-local disk while the node's other ranks wait; returns the staged store."""
    error: Exception | None = None
    if info.local_rank == 0:
        try:
            stage_store(store, stage_dir, videos)
        except Exception as exc:  # every rank must reach the barrier below first
            error = exc
    # The barrier, as an all-reduce of "failed": a copy that fails on one node stops every
    # rank at once, instead of leaving the others waiting for the process group's timeout.
    failed = distributed.any_rank(error is not None, info, device)
    if error is not None:
        raise error
    if failed:
        raise EpicInputError(
            f"--stage-dir {stage_dir}: staging the store failed in another process",
            where=f"rank {info.rank}",
            fix="the error line of local rank 0 of this or another node says why",
        )
    return staged_root(store, stage_dir)


def _resume(run: _Run, path: Path, *, auto: bool) -> None:
    """Restore ``path``; with ``--resume auto`` a damaged one gives way to the newest intact
    checkpoint of the run folder, with a warning."""
    parts = dict(
        model=run.model, optimizer=run.optimizer, scheduler=run.scheduler, scaler=run.scaler
    )
    try:
        state = resume(path, **parts, auto=auto)
    except CheckpointDamagedError as exc:
        fallback = newest_intact(run.run_dir, besides=path) if auto else None
        if fallback is None:
            raise
        log.warning(
            "%s; resuming from %s (epoch %d step %d), the newest intact checkpoint",
            str(exc).splitlines()[0],
            fallback[0],
            fallback[1]["epoch"],
            fallback[1]["step"],
        )
        path = fallback[0]
        state = resume(path, **parts)
    run.start_epoch, run.start_step, run.best = state["epoch"], state["step"], state["best_metric"]
    if "rng" in state:
        run.resumed_mid_epoch = {"rng": state["rng"], "epoch_progress": state["epoch_progress"]}
    # A checkpoint from before a field existed (compile) ran with its default.
    saved = {f.name: f.default for f in fields(TrainConfig)} | state["config"]
    changed = {k: (saved.get(k), v) for k, v in run.cfg.to_dict().items() if saved.get(k) != v}
    free = free_on_resume(run.cfg.scheduler)
    binding = {k: v for k, v in changed.items() if k not in free}
    if binding and not run.allow_config_change:
        raise EpicInputError(
            f"--resume: {', '.join(binding)} differ from the checkpoint's and would change the "
            f"result",
            where=path,
            fix="give the checkpoint's values again, or pass --allow-config-change to apply "
            "the new ones (they are recorded in config.yaml, train.log and summary.csv)",
            details="\n".join(f"  {k}: {old!r} -> {new!r}" for k, (old, new) in binding.items()),
        )
    if changed:
        _apply_changes(run)
        log.info(
            "resumed with changed options: %s",
            "; ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items()),
        )
    if binding:
        note = "; ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in binding.items())
        log.warning("resumed with options that change the result (applied): %s", note)
        run.note = f"resumed with {note}"
    log.info("resumed from %s at epoch %d step %d", path, run.start_epoch + 1, run.start_step)


def _apply_changes(run: _Run) -> None:
    """Make the new config real where the restored optimiser and scheduler state would keep
    the old values (the data, model and loop are built from the new config already)."""
    cfg = run.cfg
    for group in run.optimizer.param_groups:
        group["lr"], group["weight_decay"] = cfg.lr, cfg.weight_decay
        group["initial_lr"] = cfg.lr
    if cfg.scheduler == "plateau":
        run.scheduler.factor, run.scheduler.patience = cfg.plateau_factor, cfg.plateau_patience
    elif cfg.scheduler == "step":
        run.scheduler.base_lrs = [cfg.lr] * len(run.optimizer.param_groups)
        run.scheduler.milestones = collections.Counter(cfg.milestones())
        run.scheduler.gamma = cfg.lr_gamma
    else:
        run.scheduler.base_lrs = [cfg.lr] * len(run.optimizer.param_groups)
        run.scheduler.T_max = cfg.epochs


def _train_epoch(run: _Run, epoch: int, step0: int, stop: StopFlag) -> EpochStats:
    """Epoch ``epoch`` from step ``step0`` (> 0 after a mid-epoch resume)."""
    cfg = run.cfg
    run.data.train.dataset.set_epoch(epoch)
    run.data.train.sampler.set_epoch(epoch, skip=step0 * cfg.batch_size)
    mid = run.resumed_mid_epoch if step0 else None
    run.resumed_mid_epoch = None
    if mid is not None and run.info.world_size == 1:
        # Where the interrupted run stood: dropout and augmentation draw on as it would have.
        torch.set_rng_state(mid["rng"]["torch"])
        run.generator.set_state(mid["rng"]["augment"])
    else:
        # Ranks > 0 of a resumed DDP run (only rank 0's states are saved) reseed.
        _seed_epoch(cfg.seed, epoch, step0, run.info.rank, run.generator)
    with worker_deaths_named(run.data.store), compile_failures_named(cfg.compile):
        return train_one_epoch(
            run.ddp_model,
            run.data.train.loader,
            optimizer=run.optimizer,
            scaler=run.scaler,
            augment=run.augment,
            generator=run.generator,
            precision=run.precision,
            device=run.device,
            info=run.info,
            max_steps=run.data.train.steps_per_epoch - step0,
            stop_requested=stop,
            log_every=cfg.log_every,
            header=f"epoch {epoch + 1}/{cfg.epochs}",
            first_step=step0,
            carry=mid["epoch_progress"] if mid is not None else None,
            load_clips=run.data.train_clips,
            grad_clip=cfg.grad_clip,
            head_loss=cfg.head_loss,
        )


def _validate_epoch(run: _Run) -> tuple[dict[str, float], float]:
    """Official metrics of the validation split (rank 0; {} elsewhere) and its loss; every
    rank steps its scheduler on rank 0's selection metric. Without validation epochs
    (``--train-splits train,validation``): no metrics, and the (epoch-based) scheduler steps."""
    if run.data.val_loader is None:
        run.scheduler.step()
        return {}, float("nan")
    if run.info.enabled:
        # Each rank's last training forward updated its own BatchNorm running stats: all
        # ranks validate with rank 0's, which are the ones saved.
        for buffer in run.model.buffers():
            torch.distributed.broadcast(buffer, src=0)
    with worker_deaths_named(run.data.store):
        preds = evaluate(
            run.model,
            run.data.val_loader,
            augment=run.augment,
            precision=run.precision,
            device=run.device,
            info=run.info,
            max_steps=run.limit_batches,
            load_clips=run.data.val_clips,
            head_loss=run.cfg.head_loss,
        )
    metrics: dict[str, float] = {}
    metric = torch.tensor([0.0], device=run.device)
    if run.info.is_main:
        table = run.data.val_table
        metrics = compute_metrics(
            preds.verb_logits,
            preds.noun_logits,
            table.verb_classes[preds.indices],
            table.noun_classes[preds.indices],
            [table.participant_ids[i] for i in preds.indices],
            **run.data.metric_sets,
        )
        metric[0] = metrics[SELECTION_METRIC]
    if run.info.enabled:
        torch.distributed.broadcast(metric, src=0)
    if run.cfg.scheduler == "plateau":
        run.scheduler.step(metric.item())
    else:
        run.scheduler.step()
    return metrics, preds.loss if preds is not None else float("nan")


def _end_epoch(
    run: _Run,
    epoch: int,
    stats: EpochStats,
    metrics: dict[str, float],
    val_loss: float,
    *,
    lr: float,
) -> None:
    """Rank 0: the epoch's log line, summary row and checkpoints."""
    if not run.info.is_main:
        return
    value = metrics.get(SELECTION_METRIC)
    is_best = value is not None and value > run.best
    run.best = max(run.best, value if value is not None else run.best)
    if value is None:
        val = "no validation (its split is trained on)"
    else:
        val = (
            f"val loss {val_loss:.4f} verb@1 {metrics['all_verb_accuracy_at_1']:.2f} noun@1 "
            f"{metrics['all_noun_accuracy_at_1']:.2f} action@1 {value:.2f}"
        )
    log.info(
        "epoch %d/%d: train loss %.4f action@1 %.2f | %s | %.1f clips/s, data wait %.0f%%",
        epoch + 1,
        run.cfg.epochs,
        stats.loss,
        stats.action_top1,
        val,
        stats.clips / stats.seconds,
        100 * stats.data_wait,
    )
    if run.runlog is None:
        return
    run.runlog.write(
        {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": stats.loss,
            "train_verb_top1": stats.verb_top1,
            "train_noun_top1": stats.noun_top1,
            "train_action_top1": stats.action_top1,
            "val_loss": val_loss,
            **{f"val_{k}": v for k, v in metrics.items()},
            "clips_per_s": stats.clips / stats.seconds,
            "data_wait": stats.data_wait,
            "epoch_s": stats.seconds,
            "note": run.note,
        }
    )
    run.note = ""
    save_epoch(
        run.state(epoch + 1, 0),
        run.run_dir,
        is_best=is_best,
        metrics=metrics,
        checkpoint_every=run.cfg.checkpoint_every,
    )
