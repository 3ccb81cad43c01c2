"""Recipes: named presets of the training options, each with its published number.

A recipe only sets defaults: ``--config`` overrides it, command-line options override both
(:func:`resolve_options`), and ``config.yaml`` records the result with the recipe's name.
The C1 recipes transcribe github epic-kitchens/C1-Action-Recognition-TSN-TRN-TSM at commit
e8e1a791944305c33adef09a966c51c0dfef0d38 (configs/tsn_rgb.yaml, configs/tsm_rgb.yaml,
src/systems.py, src/models/tsn.py, src/models/tsm.py); docs/training.md has the table.
Two of C1's settings are deliberately not reproduced: its ``lr_mult``/``decay_mult``
parameter groups (its SGD never reads them: every group trains at ``lr`` with
``weight_decay``) and its std (the ImageNet mean, a known mistake: ``--norm epic-c1``
reproduces it where a C1 checkpoint is fine-tuned or evaluated).

The flow recipes transcribe configs/tsn_flow.yaml and tsm_flow.yaml of the same commit,
which differ from the RGB ones only in the modality (Flow, ``segment_length: 5`` (u, v)
pairs), the normalisation (mean 0.5, std 0.226 for every channel: fixed for flow, so the
recipes set no ``norm``) and the multi-scale crop's scales ([1, .875, .75]: the
``multiscale`` crop of the flow modality, chosen by the data pipeline). Their first
convolution takes 10 channels, initialised from ImageNet by TSN's cross-modality rule
(tsn) or from the TSM authors' Kinetics flow model (tsm); see train.weights.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from epicdata.errors import EpicInputError

log = logging.getLogger(__name__)

#: C1's optimisation (configs/ts{n,m}_rgb.yaml learning/trainer, systems.py).
_C1_COMMON: dict[str, Any] = {
    "arch": "resnet50",
    "partial_bn": True,
    "optimizer": "sgd",
    "lr": 0.01,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "grad_clip": 20.0,
    "head_loss": "mean",  # systems.py: loss / n_tasks
    "scheduler": "step",
    "lr_steps": "20,40",
    "lr_gamma": 0.1,
    "epochs": 80,
    "dropout": 0.7,
    "num_frames": 8,
    "sampling": "tsn",  # TsnDataset: one random frame per part in training, centres in test
    "crop_size": 224,
    "train_crop": "multiscale",
    "photometric": False,
}
#: C1's flow input (configs/ts{n,m}_flow.yaml): ``modality: Flow``, ``segment_length: 5``.
_C1_FLOW: dict[str, Any] = {"modality": "flow", "flow_stack": 5}


@dataclass(frozen=True)
class Recipe:
    """A preset: ``options`` (TrainConfig field -> value), what it is expected to reach
    (``expected``, with its source) and what it needs of the store (``store_keeps``: the
    ``epic-extract plan --keep`` values that serve it)."""

    name: str
    summary: str
    options: dict[str, Any] = field(default_factory=dict)
    expected: str = ""
    store_keeps: tuple[str, ...] = ("all", "segments", "sampled")


RECIPES: dict[str, Recipe] = {
    "seed-r18": Recipe(
        "seed-r18",
        "the seed's ImageNet ResNet-18, average pooling, AdamW, plateau schedule",
        {},
        "no published number; below the ResNet-50 TSN's 27.40% (C1) is likely",
        ("all", "segments", "sampled"),
    ),
    "tsn-r50": Recipe(
        "tsn-r50",
        "C1's TSN: ImageNet ResNet-50, average consensus, SGD, steps at 20 and 40 of 80 epochs",
        {**_C1_COMMON, "temporal": "avg", "batch_size": 128, "weights": "imagenet"},
        "27.40% validation action top-1 (C1 README model zoo; 24.11% test)",
        ("all", "segments"),
    ),
    "tsm-r50": Recipe(
        "tsm-r50",
        "C1's TSM: Kinetics ResNet-50 with temporal shift, SGD, steps at 20 and 40 of 80 epochs",
        {**_C1_COMMON, "temporal": "tsm", "batch_size": 64, "weights": "kinetics"},
        "35.75% validation action top-1 (C1 README model zoo; 32.82% test)",
        ("all", "segments"),
    ),
    # configs/tsn_flow.yaml (C1 e8e1a791): model.pretrained imagenet, learning.batch_size 128.
    "tsn-r50-flow": Recipe(
        "tsn-r50-flow",
        "C1's TSN flow stream: ResNet-50 on stacks of 5 (u, v) pairs, conv1 from ImageNet by "
        "cross-modality init, SGD, steps at 20 and 40 of 80 epochs",
        {**_C1_COMMON, **_C1_FLOW, "temporal": "avg", "batch_size": 128, "weights": "imagenet"},
        "22.86% validation action top-1 (C1 README model zoo; 24.62% test)",
        ("all", "segments"),
    ),
    # configs/tsm_flow.yaml (C1 e8e1a791): model.pretrained kinetics, learning.batch_size 64.
    "tsm-r50-flow": Recipe(
        "tsm-r50-flow",
        "C1's TSM flow stream: the TSM authors' Kinetics flow ResNet-50 with temporal shift, "
        "stacks of 5 (u, v) pairs, SGD, steps at 20 and 40 of 80 epochs",
        {**_C1_COMMON, **_C1_FLOW, "temporal": "tsm", "batch_size": 64, "weights": "kinetics"},
        "27.79% validation action top-1 (C1 README model zoo; 27.99% test)",
        ("all", "segments"),
    ),
}


def resolve_options(
    file_values: Mapping[str, Any], command_line: Mapping[str, Any]
) -> dict[str, Any]:
    """The options of a run: the recipe's, then ``--config``'s, then the command line's.
    The recipe is the command line's ``recipe``, else the file's, else seed-r18."""
    name = command_line.get("recipe") or file_values.get("recipe") or "seed-r18"
    if name not in RECIPES:  # the edges' choices refuse it first; a dict built elsewhere
        raise EpicInputError(f"unknown recipe {name!r}", fix=f"choose one of {', '.join(RECIPES)}")
    resolved = {**RECIPES[name].options, **file_values, **command_line, "recipe": name}
    recipe_modality = RECIPES[name].options.get("modality", "rgb")
    if resolved.get("modality", "rgb") != recipe_modality:
        # Allowed, as for every option (seed-r18 --modality flow is the seed's flow stream),
        # but a flow recipe run on RGB keeps its flow-specific choices: say so.
        log.info(
            "recipe %s is for %s input; modality %s given: its other options train a %s model",
            name,
            recipe_modality,
            resolved["modality"],
            resolved["modality"],
        )
    return resolved


def check_store_serves(*, recipe: str, sampling: str, keep: str) -> None:
    """Refuse (exit 2) a store that cannot serve the run, before any data is read: a
    ``--keep sampled`` store holds only the deterministic clips' frames, and TSN's random
    training offsets may ask for any frame of a segment. (Clip lengths a sampled store
    was not planned for are refused by epicdata.dataset.check_readable, segment by
    segment.)"""
    if keep == "sampled" and sampling == "tsn":
        raise EpicInputError(
            f"the store keeps only sampled frames (--keep sampled) and cannot serve this run "
            f"(recipe {recipe}, tsn sampling): TSN sampling's random offsets may pick any "
            "frame of a segment in training",
            fix="extract a store with --keep segments (or all) for this recipe, or train "
            "with --sampling linspace and a clip length the store was planned for",
        )
