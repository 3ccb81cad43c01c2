"""Everything the frame store and the trainer share: annotations, frame numbering,
sampling, the store format and its reader, the torch dataset and the mini-EPIC generator."""

__version__ = "0.1.0"
