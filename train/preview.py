"""What the model sees, before spending GPU hours: a contact sheet of training clips.

``epic-train ... --preview N`` writes ``<output-dir>/preview.png``: for N training segments
(drawn with the run's seed), a row of the frames as stored, at the frame numbers the sampler
picks, and a row of the same frames after the training augmentation (crop, flip,
brightness/contrast jitter, random erasing), with the narration id, verb, noun and frame
numbers. The seed's debugging checklist asks for both ("print sample frame indices",
"visualize augmented images").
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from epicdata.annotations import AnnotationDir
from epicdata.dataset import EpicActionDataset
from epicdata.errors import EpicInputError
from epicdata.store import FrameStore
from train.config import TrainConfig
from train.input_spec import NORMS
from train.transforms import DeviceAugment, TrainClipTransform

log = logging.getLogger(__name__)

PREVIEW_NAME = "preview.png"


def preview_rows(cfg: TrainConfig, count: int) -> list[dict]:
    """For ``count`` training segments: narration id, labels, the frame numbers the sampler
    picks, the frames as stored (T, H, W, 3) and after the training augmentation."""
    if cfg.modality != "rgb":
        raise EpicInputError(
            "--preview shows RGB clips; a flow run has no preview",
            fix="drop --preview (the flow clips are checked by tests/train/test_flow_data.py)",
        )
    annotations = AnnotationDir(cfg.annotations)
    table = annotations.table(cfg.train_split)
    store = FrameStore(cfg.store)
    options = dict(
        num_frames=cfg.num_frames,
        sampling=cfg.sampling,
        training=True,
        # The preview shows the frames on the CPU: nvjpeg's are the same up to rounding.
        decoder="torchvision" if cfg.decoder == "nvjpeg" else cfg.decoder,
        seed=cfg.seed,
    )
    stored = EpicActionDataset(store, table, transform=None, **options)
    cropped = EpicActionDataset(
        store, table, transform=TrainClipTransform(cfg.crop_size, crop=cfg.train_crop), **options
    )
    norm_mean, norm_std = NORMS[cfg.norm]
    augment = DeviceAugment(norm_mean, norm_std, photometric=cfg.photometric)
    mean = torch.tensor(norm_mean).view(1, 3, 1, 1)
    std = torch.tensor(norm_std).view(1, 3, 1, 1)
    verbs, nouns = annotations.verb_classes(), annotations.noun_classes()
    picks = np.random.default_rng(cfg.seed).permutation(len(table))[:count]
    rows = []
    for i in picks.tolist():
        # The dataset's own per-clip generator: the frames __getitem__ reads.
        frames = stored.frame_numbers(i, np.random.default_rng([cfg.seed, 0, i]))
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + i)
        clip = cropped[i]["frames"]  # (T, C, S, S) uint8
        seen = augment(clip[None], train=True, generator=generator)[0]  # (T, C, S, S) float
        seen = (seen * std + mean).clamp(0, 1)
        verb, noun = int(table.verb_classes[i]), int(table.noun_classes[i])
        rows.append(
            {
                "narration_id": table.narration_ids[i],
                "verb": verbs[verb].key if verb >= 0 else "?",
                "noun": nouns[noun].key if noun >= 0 else "?",
                "frames": [int(f) for f in frames],
                "stored": stored[i]["frames"].permute(0, 2, 3, 1).numpy(),  # (T, H, W, 3)
                "augmented": seen.permute(0, 2, 3, 1).numpy(),  # (T, S, S, 3) in [0, 1]
            }
        )
    store.close()
    return rows


def write_preview(cfg: TrainConfig, count: int) -> Path:
    """Write ``<output-dir>/preview.png`` for ``count`` segments; returns its path."""
    import matplotlib  # here, not at the top: ~0.5 s that every epic-train start would pay

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = preview_rows(cfg, count)
    t = cfg.num_frames
    fig, axes = plt.subplots(
        2 * len(rows), t, figsize=(1.8 * t, 2.0 * len(rows) * 1.1), squeeze=False
    )
    for r, row in enumerate(rows):
        for kind, offset in (("stored", 0), ("augmented", 1)):
            for j in range(t):
                ax = axes[2 * r + offset][j]
                ax.imshow(row[kind][j])
                ax.set_xticks([])
                ax.set_yticks([])
                if offset == 0:
                    ax.set_title(f"frame {row['frames'][j]}", fontsize=7)
            axes[2 * r + offset][0].set_ylabel(kind, fontsize=7)
        axes[2 * r][0].annotate(
            f"{row['narration_id']}: {row['verb']} {row['noun']}",
            (0, 1.35),
            xycoords="axes fraction",
            fontsize=8,
            weight="bold",
        )
        log.info(
            "preview %s: verb %s, noun %s, frames %s",
            row["narration_id"],
            row["verb"],
            row["noun"],
            row["frames"],
        )
    fig.tight_layout()
    path = Path(cfg.output_dir) / PREVIEW_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
