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

import json
import logging
import signal
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from epicdata.annotations import AnnotationDir
from epicdata.cli import preflight_output
from epicdata.constants import IMAGENET_MEAN, IMAGENET_STD
from epicdata.dataset import EpicActionDataset, worker_deaths_named
from epicdata.errors import EnvironmentProblem, EpicInputError, ExitCode
from epicdata.store import FrameStore
from train import distributed
from train.checkpoint import (
    CHECKPOINT_VERSION,
    checkpoint_bytes_estimate,
    resume,
    save_checkpoint,
    unwrap_model,
)
from train.config import TrainConfig
from train.engine import Precision, evaluate, train_one_epoch
from train.metrics import compute_metrics
from train.model import ActionModel, build_model
from train.runlog import RunLog
from train.transforms import DeviceAugment, EvalClipTransform, TrainClipTransform

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
        self.signum = signum

    def __call__(self) -> bool:
        return self.signum is not None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EnvironmentProblem(
            "CUDA is not available on this node",
            where=f"--device {name}",
            fix="run on a GPU node (check the job's GPU request and `nvidia-smi`) or pass --device cpu",
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


def build_loader(
    dataset: EpicActionDataset,
    *,
    batch_size: int,
    workers: int,
    sampler: torch.utils.data.Sampler,
    drop_last: bool,
    pin_memory: bool,
) -> DataLoader:
    # Workers are not persistent: each epoch's workers get the dataset's current epoch
    # (set_epoch), which seeds the per-clip augmentation.
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        prefetch_factor=4 if workers else None,
    )


def build_optimizer(
    model: torch.nn.Module, *, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, kind: str, epochs: int, factor: float, patience: int
) -> torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau:
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=factor, patience=patience
    )


def metric_sets(annotations: AnnotationDir, split: str) -> dict[str, frozenset]:
    """Tail classes and unseen participants for the official metrics of ``split``."""
    return {
        "tail_verbs": annotations.tail_verbs(),
        "tail_nouns": annotations.tail_nouns(),
        "unseen_participants": (
            annotations.unseen_participants(split)
            if split in ("validation", "test")
            else frozenset()
        ),
    }


def _seed_epoch(seed: int, epoch: int, step: int, rank: int, generator: torch.Generator) -> None:
    """Seed dropout (global RNG) and the device augmentation from (seed, epoch, step, rank):
    an epoch run after a resume draws exactly what it would have drawn uninterrupted."""
    value = ((seed * 1_000_003 + epoch) * 1_000_003 + step) * 1_009 + rank
    torch.manual_seed(value % 2**63)
    generator.manual_seed((value + 1) % 2**63)


def run_folder_bytes(cfg: TrainConfig) -> int:
    """What a run writes at most: last.pt, best.pt, every kept epoch_NNN.pt, and one
    checkpoint's temp file while it is replaced; logs and plots are small."""
    checkpoint = checkpoint_bytes_estimate(ActionModel(dropout=cfg.dropout))
    return checkpoint * (3 + cfg.epochs // cfg.checkpoint_every) + (16 << 20)


def find_resume(run_dir: Path, resume_arg: str | None) -> Path | None:
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
            fix="pass an existing checkpoint, or --resume auto to continue the run folder's last.pt",
        )
    return Path(resume_arg)


def fit(cfg: TrainConfig, *, resume_from: str | None = None, dry_run: bool = False) -> int:
    """Train per ``cfg``; returns the process exit code (0, or EXIT_REQUEUE after a signal)."""
    stop = StopFlag()
    try:
        return _fit(cfg, stop=stop, resume_from=resume_from, dry_run=dry_run)
    finally:
        stop.restore()
        distributed.shutdown()


def _fit(cfg: TrainConfig, *, stop: StopFlag, resume_from: str | None, dry_run: bool) -> int:
    device = resolve_device(cfg.device)
    info = distributed.init(device.type)
    if device.type == "cuda":
        device = distributed.local_device(info)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not cfg.deterministic
    run_dir = Path(cfg.output_dir)
    checkpoint_path = find_resume(run_dir, resume_from)
    if info.is_main and not dry_run:
        preflight_output(run_dir, need_bytes=run_folder_bytes(cfg), option="--output-dir")

    annotations = AnnotationDir(cfg.annotations)
    store = FrameStore(cfg.store)
    train_set = EpicActionDataset(
        store,
        annotations.table(cfg.train_split),
        num_frames=cfg.num_frames,
        sampling=cfg.sampling,
        training=True,
        transform=TrainClipTransform(cfg.crop_size),
        decoder=cfg.decoder,
        seed=cfg.seed,
    )
    val_table = annotations.table(cfg.val_split)
    val_set = EpicActionDataset(
        store,
        val_table,
        num_frames=cfg.num_frames,
        sampling=cfg.sampling,
        transform=EvalClipTransform(cfg.crop_size),
        decoder=cfg.decoder,
    )
    sets = metric_sets(annotations, cfg.val_split)
    train_sampler = distributed.ResumableDistributedSampler(
        train_set, rank=info.rank, world_size=info.world_size, seed=cfg.seed
    )
    pin = device.type == "cuda"
    train_loader = build_loader(
        train_set,
        batch_size=cfg.batch_size,
        workers=cfg.workers,
        sampler=train_sampler,
        drop_last=True,
        pin_memory=pin,
    )
    val_loader = build_loader(
        val_set,
        batch_size=cfg.batch_size,
        workers=cfg.workers,
        sampler=distributed.ShardSampler(len(val_set), rank=info.rank, world_size=info.world_size),
        drop_last=False,
        pin_memory=pin,
    )
    steps_per_epoch = len(train_set) // info.world_size // cfg.batch_size
    if steps_per_epoch == 0:
        raise EpicInputError(
            f"the {cfg.train_split} split has {len(train_set)} segments, fewer than one batch "
            f"of {cfg.batch_size} x {info.world_size} process(es): lower --batch-size"
        )
    limit = 2 if dry_run else cfg.limit_batches
    if limit is not None:
        steps_per_epoch = min(steps_per_epoch, limit)

    torch.manual_seed(cfg.seed)  # the same random init on every rank and every run
    model = build_model(
        weights=cfg.weights,
        dropout=cfg.dropout,
        device=device,
        channels_last=device.type == "cuda",
    )
    optimizer = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = build_scheduler(
        optimizer,
        kind=cfg.scheduler,
        epochs=cfg.epochs,
        factor=cfg.plateau_factor,
        patience=cfg.plateau_patience,
    )
    precision = resolve_precision(cfg.amp, device)
    scaler = make_scaler(precision.enabled and precision.dtype == torch.float16)
    augment = DeviceAugment(IMAGENET_MEAN, IMAGENET_STD).to(device)
    generator = torch.Generator()

    start_epoch, start_step, best = 0, 0, -1.0
    if checkpoint_path is not None:
        state = resume(
            checkpoint_path, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler
        )
        start_epoch, start_step, best = state["epoch"], state["step"], state["best_metric"]
        changed = {
            k: (state["config"].get(k), v)
            for k, v in cfg.to_dict().items()
            if state["config"].get(k) != v
        }
        if changed:
            log.warning("config differs from the checkpoint's (old, new): %s", changed)
        log.info(
            "resumed from %s at epoch %d step %d", checkpoint_path, start_epoch + 1, start_step
        )
    ddp_model = (
        DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if info.enabled
        else model
    )

    runlog = None
    if info.is_main and not dry_run:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.yaml")
        runlog = RunLog(run_dir)
    log.info(
        "train %d segments, %s %d segments; %d steps/epoch x %d process(es); device %s, amp %s",
        len(train_set),
        cfg.val_split,
        len(val_set),
        steps_per_epoch,
        info.world_size,
        device,
        precision.dtype if precision.enabled else "off",
    )

    def checkpoint(epoch: int, step: int) -> dict:
        return {
            "format_version": CHECKPOINT_VERSION,
            "model": unwrap_model(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "step": step,
            "best_metric": best,
            "config": cfg.to_dict(),
            "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        }

    last_epoch = 1 if dry_run else cfg.epochs
    for epoch in range(start_epoch, last_epoch):
        step0 = start_step if epoch == start_epoch else 0
        train_set.set_epoch(epoch)
        train_sampler.set_epoch(epoch, skip=step0 * cfg.batch_size)
        _seed_epoch(cfg.seed, epoch, step0, info.rank, generator)
        header = f"epoch {epoch + 1}/{cfg.epochs}"
        with worker_deaths_named(store):
            stats = train_one_epoch(
                ddp_model,
                train_loader,
                optimizer=optimizer,
                scaler=scaler,
                augment=augment,
                generator=generator,
                precision=precision,
                device=device,
                info=info,
                max_steps=steps_per_epoch - step0,
                stop_requested=stop,
                log_every=cfg.log_every,
                header=header,
            )
        if stats.interrupted:
            if info.is_main and not dry_run:
                save_checkpoint(checkpoint(epoch, step0 + stats.steps), run_dir / "last.pt")
                log.warning(
                    "signal %s: saved last.pt at epoch %d step %d; exiting with %d to requeue",
                    stop.signum,
                    epoch + 1,
                    step0 + stats.steps,
                    EXIT_REQUEUE,
                )
            return EXIT_REQUEUE

        with worker_deaths_named(store):
            preds = evaluate(
                model,
                val_loader,
                augment=augment,
                precision=precision,
                device=device,
                info=info,
                max_steps=limit,
            )
        # Rank 0 decides; the others follow its scheduler step through the broadcast metric.
        metric = torch.tensor([0.0], device=device)
        if info.is_main:
            metrics = compute_metrics(
                preds.verb_logits,
                preds.noun_logits,
                val_table.verb_classes[preds.indices],
                val_table.noun_classes[preds.indices],
                [val_table.participant_ids[i] for i in preds.indices],
                **sets,
            )
            metric[0] = metrics[SELECTION_METRIC]
        if info.enabled:
            torch.distributed.broadcast(metric, src=0)
        lr = optimizer.param_groups[0]["lr"]
        if cfg.scheduler == "plateau":
            scheduler.step(metric.item())
        else:
            scheduler.step()
        stop_now = distributed.any_rank(stop(), info, device)
        if info.is_main:
            is_best = metric.item() > best
            best = max(best, metric.item())
            log.info(
                "%s: train loss %.4f action@1 %.2f | val loss %.4f verb@1 %.2f noun@1 %.2f "
                "action@1 %.2f | %.1f clips/s, data wait %.0f%%",
                header,
                stats.loss,
                stats.action_top1,
                preds.loss,
                metrics["all_verb_accuracy_at_1"],
                metrics["all_noun_accuracy_at_1"],
                metrics[SELECTION_METRIC],
                stats.clips / stats.seconds,
                100 * stats.data_wait,
            )
        if info.is_main and not dry_run:
            runlog.write(
                {
                    "epoch": epoch + 1,
                    "lr": lr,
                    "train_loss": stats.loss,
                    "train_verb_top1": stats.verb_top1,
                    "train_noun_top1": stats.noun_top1,
                    "train_action_top1": stats.action_top1,
                    "val_loss": preds.loss,
                    **{f"val_{k}": v for k, v in metrics.items()},
                    "clips_per_s": stats.clips / stats.seconds,
                    "data_wait": stats.data_wait,
                    "epoch_s": stats.seconds,
                }
            )
            state = checkpoint(epoch + 1, 0)
            save_checkpoint(state, run_dir / "last.pt")
            if is_best:
                save_checkpoint(state, run_dir / "best.pt")
                (run_dir / "best_metrics.json").write_text(
                    json.dumps({"epoch": epoch + 1, **metrics}, indent=1)
                )
            if (epoch + 1) % cfg.checkpoint_every == 0:
                save_checkpoint(state, run_dir / f"epoch_{epoch + 1:03d}.pt")
        if stop_now:
            log.warning(
                "signal %s: epoch %d saved; exiting with %d to requeue",
                stop.signum,
                epoch + 1,
                EXIT_REQUEUE,
            )
            return EXIT_REQUEUE
    if runlog is not None:
        runlog.close()
    log.info("done: best validation action top-1 %.2f%%", best)
    return 0
