"""Errors for bad user input. CLIs print their message without a traceback."""

from __future__ import annotations


class EpicInputError(Exception):
    """Bad input the user can fix: the message names the input, the place and the fix."""


class AnnotationError(EpicInputError):
    """A malformed or missing annotation file."""


class StoreError(EpicInputError):
    """A frame store that is missing, incomplete or does not hold what was asked."""


class FFmpegNotFoundError(EpicInputError):
    """ffmpeg or ffprobe cannot be found."""
