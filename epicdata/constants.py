"""Named constants, defined once. Stores and checkpoints record the values they used."""

from __future__ import annotations

#: Frame rate R of the re-timed stream that EPIC frame numbers count (DESIGN.md rule 1).
EPIC55_FRAME_RATE = 60
EXTENSION_FRAME_RATE = 50

#: Short side of stored frames, as in the official release (456x256 for 16:9).
DEFAULT_SHORT_SIDE = 256
#: ffmpeg ``-q:v`` scale for the JPEG encoder (2 = best, 31 = worst); 4 matches the
#: official-style command the benchmark compares against.
DEFAULT_JPEG_QSCALE = 4

#: A segment may end a few frames past the last decoded frame (official counts run
#: 4-13 frames above duration x R); readers clamp within this many frames.
CLAMP_TOLERANCE_FRAMES = 15

NUM_VERB_CLASSES = 97
NUM_NOUN_CLASSES = 300
#: Action id = verb * ACTION_ID_BASE + noun, as in the official evaluator.
ACTION_ID_BASE = 1000

#: ImageNet statistics for RGB in [0, 1]. Stored in every checkpoint and read back from
#: there (the official baseline shipped the mean in its std field).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
