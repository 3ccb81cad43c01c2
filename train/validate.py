"""Score a checkpoint or a predictions file with the official EPIC-100 metrics, or turn it
into a challenge submission (``--split test``).

Writes into the output folder: ``predictions.pkl`` (from a checkpoint; the official
evaluator's input format), ``metrics.json`` (labelled splits: official key names, percent),
``submission.zip`` (test split: ``test.json``).

Multi-view testing (``--views CxK``, ``--test-frames N``): C temporal views x K crops per
segment, their logits averaged before any softmax (:func:`parse_views`, train.engine's
``evaluate``); everything after (predictions.pkl, metrics, submission, ``--fuse``) sees one
averaged row per segment.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from epicdata.annotations import AnnotationDir
from epicdata.console import preflight_output
from epicdata.constants import NUM_NOUN_CLASSES, NUM_VERB_CLASSES
from epicdata.dataset import check_readable, worker_deaths_named
from epicdata.errors import EpicInputError
from epicdata.store import FrameStore
from train import distributed
from train.checkpoint import check_checkpoint, checkpoint_input_spec, load_checkpoint
from train.config import TrainConfig
from train.data import build_eval_data, clip_loader, metric_sets
from train.device import check_workers, resolve_device, resolve_precision
from train.engine import evaluate
from train.fusion import fuse_predictions, parse_fuse_weights
from train.input_spec import STRICT_FIELDS, InputSpec, check_input, check_store_modality, norm_name
from train.metrics import compute_metrics
from train.model import ActionModel
from train.nvjpeg import check_nvjpeg
from train.submission import (
    align_to_split,
    load_predictions,
    make_submission,
    require_finite,
    save_predictions,
    write_submission_zip,
)
from train.transforms import VIEW_CROPS, DeviceAugment
from train.weights import is_published_checkpoint, model_for_file, read_file

log = logging.getLogger(__name__)

#: ``--views``: CLIPSxCROPS, e.g. 1x1 (one centre clip), 2x3, 10x3.
_VIEWS_FORMAT = "CLIPSxCROPS with CLIPS >= 1 and CROPS 1 or 3, e.g. 1x1, 2x3, 10x3"


def parse_views(text: str) -> tuple[int, int]:
    """``--views`` "CxK" -> (C temporal clips, K crops). K is 1 (the centre crop) or 3
    (SlowFast's left/top, centre, right/bottom: train.transforms.uniform_crop_offset)."""
    clips, sep, crops = text.strip().lower().partition("x")
    if not (sep and clips.isdigit() and crops.isdigit()) or int(clips) < 1:
        raise EpicInputError(
            f"--views {text!r} is not {_VIEWS_FORMAT}", where="--views", fix="e.g. --views 10x3"
        )
    if int(crops) not in VIEW_CROPS:
        raise EpicInputError(
            f"--views {text}: {crops} crops; a view has 1 crop (the centre) or 3 (along "
            "the long side of the frame)",
            where="--views",
            fix=f"--views {int(clips)}x1 or {int(clips)}x3",
        )
    return int(clips), int(crops)


def clip_length_to_test(cfg: TrainConfig, test_frames: int | None, source: object) -> int:
    """The T of the test clips: the checkpoint's, or ``--test-frames`` for a model that
    averages over time (C1 tests TSN with 25 frames); a TSM model's shift is built for its T,
    so another is refused."""
    if test_frames is None or test_frames == cfg.num_frames:
        return cfg.num_frames
    if cfg.temporal == "tsm":
        raise EpicInputError(
            f"--test-frames {test_frames}: the TSM model of {source} shifts features over "
            f"clips of {cfg.num_frames} frames and is tested with {cfg.num_frames}",
            where="--test-frames",
            fix=f"leave --test-frames out (or give {cfg.num_frames}); more views come from --views",
        )
    return test_frames


def predict(
    checkpoint: str | Path,
    *,
    store: str | Path,
    annotations: AnnotationDir,
    split: str,
    batch_size: int,
    workers: int,
    device_name: str,
    limit_batches: int | None = None,
    accept_input_mismatch: bool = False,
    views: tuple[int, int] = (1, 1),
    test_frames: int | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    """Logits of a checkpoint's model for every segment of ``split`` (rank 0; None elsewhere).

    The model, clip length, sampling, crop size and normalisation come from the checkpoint
    (its input spec); a store whose frames differ from those it was trained on (modality,
    frame size) is refused unless ``accept_input_mismatch``. ``views`` (clips, crops) and
    ``test_frames``: multi-view testing (module docstring); ``batch_size`` counts clips.
    """
    model, cfg, spec = _model_of(Path(checkpoint), store=store)
    num_frames = clip_length_to_test(cfg, test_frames, checkpoint)
    frame_store = FrameStore(store)
    _check_store_input(spec, frame_store, source=checkpoint, accept=accept_input_mismatch)
    device = resolve_device(device_name, distributed.discover(), work="scoring")
    info = distributed.init(device.type, batch_shell="single")
    if device.type == "cuda":
        torch.cuda.set_device(device)  # nothing lands on cuda:0 by default
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    augment = DeviceAugment(spec.mean, spec.std, modality=spec.modality).to(device)
    table = annotations.table(split)
    decoder = _test_decoder(cfg.decoder, device, views=views, source=checkpoint)
    dataset, loader = build_eval_data(
        frame_store,
        table,
        num_frames=num_frames,
        modality=cfg.modality,
        flow_stack=cfg.flow_stack,
        sampling=cfg.sampling,
        crop_size=cfg.crop_size,
        decoder=decoder,
        batch_size=batch_size,
        workers=check_workers(workers),
        info=info,
        pin_memory=device.type == "cuda",
        views=views,
    )
    check_readable(dataset)
    what = f"{num_frames} frames, views {views[0]}x{views[1]}, {loader.batch_size} segments a batch"
    log.info("%s: %d segments of %s with %s, %s", checkpoint, len(dataset), split, device, what)
    with worker_deaths_named(dataset.store):
        preds = evaluate(
            model,
            loader,
            augment=augment,
            precision=resolve_precision(cfg.amp, device),
            device=device,
            info=info,
            max_steps=limit_batches,
            load_clips=clip_loader(dataset, device),
            head_loss=cfg.head_loss,
        )
    distributed.shutdown()
    if preds is None:
        return None
    ids = [table.narration_ids[i] for i in preds.indices]
    return preds.verb_logits, preds.noun_logits, ids


def _test_decoder(
    decoder: str, device: torch.device, *, views: tuple[int, int], source: object
) -> str:
    """The checkpoint's decoder, or the CPU's where nvJPEG cannot serve: scoring a
    GPU-trained model on the CPU, or on test views (train/nvjpeg.py crops one clip per
    segment), is legitimate, and said, not silent."""
    if decoder == "nvjpeg" and (device.type != "cuda" or views != (1, 1)):
        log.warning(
            "%s was trained with --decoder nvjpeg; %s the loader workers decode with "
            "torchvision instead (the same images up to decoder rounding)",
            source,
            f"on {device}" if device.type != "cuda" else "for several test views",
        )
        return "torchvision"
    if decoder == "nvjpeg":
        check_nvjpeg(device)
    return decoder


def _check_store_input(spec: InputSpec, store: FrameStore, *, source: object, accept: bool) -> None:
    """Refuse scoring a model on frames other than those it was trained on (their modality,
    always; their size unless accepted)."""
    check_store_modality(
        store.modality, spec.modality, store=store.root, source=f"checkpoint {source}"
    )
    fed = dataclasses.replace(spec, frame_size=store.manifest.params.short_side)
    check_input(
        spec,
        fed,
        names=(*STRICT_FIELDS, "frame_size"),
        source=f"checkpoint {source} on store {store.root}",
        accept=accept,
        fix="score it on a store extracted like the one it was trained on "
        "(epic-extract plan --short-side)",
    )


def _model_of(path: Path, *, store: str | Path) -> tuple[ActionModel, TrainConfig, InputSpec]:
    """The model to score, the config its clips are made with and the input it was trained
    on: from an epic-train checkpoint, or from a published one (a C1 model-zoo file),
    whose clips are made as its layout's spec says."""
    try:
        data = read_file(path)
    except EpicInputError:  # load_checkpoint says what is wrong, as for any checkpoint
        data = None
    if not is_published_checkpoint(data):
        # Digest, version and keys checked; what could not be read is reread for its message.
        state = load_checkpoint(path) if data is None else check_checkpoint(data, path)
        cfg = TrainConfig.from_dict(state["config"])
        model = ActionModel(**cfg.model_options())
        model.load_state_dict(state["model"], strict=True)
        return model, cfg, checkpoint_input_spec(state, path)
    model, spec, _ = model_for_file(path, data)
    cfg = TrainConfig(
        store=str(store),
        annotations="-",
        output_dir="-",
        arch=model.arch,
        temporal=model.temporal,
        num_frames=model.num_frames,
        crop_size=spec.crop_size,
        sampling=spec.sampler or "tsn",
        norm=norm_name(spec.mean, spec.std) or "imagenet",
        modality=spec.modality,
        **({"flow_stack": model.in_channels // 2} if spec.modality == "flow" else {}),
    )
    return model, cfg, spec


def _check_checkpoint_options(
    views: str, test_frames: int | None, *, checkpoint: object, store: object
) -> tuple[int, int]:
    """Before anything is read: a checkpoint comes with a store; ``--views`` parsed and
    ``--test-frames`` checked, both making a checkpoint's clips (a predictions file's
    scores are already made)."""
    if checkpoint is not None and store is None:
        raise EpicInputError(
            "--checkpoint needs --store",
            where="epic-validate",
            fix="pass the frame store to read clips from",
        )
    counts = parse_views(views)
    if test_frames is not None and test_frames < 1:
        raise EpicInputError(
            f"--test-frames {test_frames}: a clip has at least 1 frame",
            where="--test-frames",
            fix="give N >= 1, or leave it out for the checkpoint's clip length",
        )
    if checkpoint is None and (counts != (1, 1) or test_frames is not None):
        raise EpicInputError(
            "--views and --test-frames make a checkpoint's test clips; --predictions and "
            "--fuse read scores already made",
            where="epic-validate",
            fix="score the checkpoint with --views (its predictions.pkl holds the averaged "
            "scores, ready for --fuse)",
        )
    return counts


def _sls_missing() -> EpicInputError:
    return EpicInputError(
        "--split test needs --sls-pt, --sls-tl and --sls-td",
        where="supervision levels, https://github.com/epic-kitchens/sls",
        fix="the seed's ImageNet ResNet-18 trained on the train split: --sls-pt 1 --sls-tl 3 "
        "--sls-td 3",
    )


def score(
    verb_logits: np.ndarray,
    noun_logits: np.ndarray,
    narration_ids: list[str],
    *,
    annotations: AnnotationDir,
    split: str,
    output_dir: Path,
    allow_partial: bool,
    source: str,
    sls: tuple[int | None, int | None, int | None],
) -> dict[str, float] | None:
    """Official metrics (labelled splits) into metrics.json, or the submission zip (test)."""
    table = annotations.table(split)
    rows = align_to_split(narration_ids, table, allow_partial=allow_partial, source=source)
    require_finite(verb_logits, noun_logits, narration_ids, source=source)
    output_dir.mkdir(parents=True, exist_ok=True)
    if not table.labelled:
        if None in sls:
            raise _sls_missing()
        submission = make_submission(
            verb_logits, noun_logits, narration_ids, sls_pt=sls[0], sls_tl=sls[1], sls_td=sls[2]
        )
        path = write_submission_zip(submission, output_dir / "submission.zip")
        log.info("wrote %s (%d segments)", path, len(narration_ids))
        return None
    metrics = compute_metrics(
        verb_logits,
        noun_logits,
        table.verb_classes[rows],
        table.noun_classes[rows],
        [table.participant_ids[i] for i in rows],
        **metric_sets(annotations, split),
    )
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics


@dataclass(frozen=True)
class ValidationResult:
    """What was scored: ``metrics`` (None for the test split, which writes a submission)."""

    metrics: dict[str, float] | None
    segments: int
    source: str


def _fused(
    paths: Sequence[str | Path], weights: list[float], output_dir: Path
) -> tuple[tuple[np.ndarray, np.ndarray, list[str]], str]:
    """The fusion of ``paths`` written to OUT/predictions.pkl and read back (it is scored
    as written), and its description."""
    verb, noun, ids = fuse_predictions(paths, weights)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_predictions(output_dir / "predictions.pkl", verb, noun, ids)
    parts = ", ".join(f"{p} (weight {w:g})" for p, w in zip(paths, weights, strict=True))
    return load_predictions(output_dir / "predictions.pkl"), f"fusion of {parts}"


def validate(
    *,
    annotations: str | Path,
    split: str,
    output_dir: str | Path,
    checkpoint: str | Path | None = None,
    store: str | Path | None = None,
    predictions: str | Path | None = None,
    batch_size: int = 32,
    workers: int = 4,
    device_name: str = "auto",
    allow_partial: bool = False,
    limit_batches: int | None = None,
    sls: tuple[int | None, int | None, int | None] = (None, None, None),
    accept_input_mismatch: bool = False,
    fuse: Sequence[str | Path] = (),
    fuse_weights: str | None = None,
    views: str = "1x1",
    test_frames: int | None = None,
) -> ValidationResult | None:
    """Run a checkpoint over ``split`` (or read ``predictions``, or fuse the files of
    ``fuse``: train.fusion) and score or submit it. Returns None on ranks other than 0.
    ``views`` ("CxK") and ``test_frames``: multi-view testing of a checkpoint."""
    if sum(x is not None for x in (checkpoint, predictions, fuse or None)) != 1:
        raise EpicInputError(
            "nothing to score" if not (checkpoint or predictions or fuse) else "two inputs",
            where="epic-validate",
            fix="pass exactly one of --checkpoint, --predictions and --fuse",
        )
    view_counts = _check_checkpoint_options(views, test_frames, checkpoint=checkpoint, store=store)
    weights = parse_fuse_weights(fuse_weights, len(fuse)) if fuse else []
    annotation_dir = AnnotationDir(annotations)
    output_dir = Path(output_dir)
    table = annotation_dir.table(split)
    segments = len(table)
    if not table.labelled and None in sls:
        # Checked before inference: the levels are never guessed, and a run is not wasted.
        raise _sls_missing()
    if distributed.discover().is_main:
        # predictions.pkl: float32 verb and noun scores per segment, ids, pickle overhead.
        need = segments * (NUM_VERB_CLASSES + NUM_NOUN_CLASSES) * 4 * 2 + (1 << 20)
        preflight_output(output_dir, need_bytes=need, option="--output-dir")
    if checkpoint is not None:
        out = predict(
            checkpoint,
            store=store,
            annotations=annotation_dir,
            split=split,
            batch_size=batch_size,
            workers=workers,
            device_name=device_name,
            limit_batches=limit_batches,
            accept_input_mismatch=accept_input_mismatch,
            views=view_counts,
            test_frames=test_frames,
        )
        if out is None:  # not rank 0
            return None
        output_dir.mkdir(parents=True, exist_ok=True)
        save_predictions(output_dir / "predictions.pkl", *out)
        # A run over part of the split (--limit-batches) is partial by request.
        allow_partial = allow_partial or limit_batches is not None
        source = f"checkpoint {checkpoint}"
    elif fuse:
        out, source = _fused(fuse, weights, output_dir)
    else:
        out = load_predictions(predictions)
        source = f"--predictions {predictions}"
    metrics = score(
        *out,
        annotations=annotation_dir,
        split=split,
        output_dir=output_dir,
        allow_partial=allow_partial,
        source=source,
        sls=sls,
    )
    return ValidationResult(metrics=metrics, segments=len(out[2]), source=source)
