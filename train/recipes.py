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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from epicdata.errors import EpicInputError

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
}


def resolve_options(
    file_values: Mapping[str, Any], command_line: Mapping[str, Any]
) -> dict[str, Any]:
    """The options of a run: the recipe's, then ``--config``'s, then the command line's.
    The recipe is the command line's ``recipe``, else the file's, else seed-r18."""
    name = command_line.get("recipe") or file_values.get("recipe") or "seed-r18"
    if name not in RECIPES:  # the edges' choices refuse it first; a dict built elsewhere
        raise EpicInputError(f"unknown recipe {name!r}", fix=f"choose one of {', '.join(RECIPES)}")
    return {**RECIPES[name].options, **file_values, **command_line, "recipe": name}


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
