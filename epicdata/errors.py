"""Exit codes and the errors that carry them. Every command exits with one of
:class:`ExitCode` (the table in docs/conventions.md); an error the code can name is an
:class:`EpicInputError` subclass, printed as one ``error:`` line without a traceback."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """The exit codes of every command (docs/conventions.md lists them with what to do)."""

    OK = 0
    #: A bug: the log holds a traceback and says so.
    INTERNAL = 1
    #: Bad usage or input (options, paths, CSV rows, a run folder in use) or environment
    #: (ffmpeg missing, no CUDA, an unwritable output folder).
    BAD_INPUT = 2
    #: A bad video or frames source: damaged, truncated or shorter than its annotations.
    BAD_SOURCE = 3
    #: Out of space (scratch, store or run folder disk, LMDB map size).
    NO_SPACE = 4
    #: The frame store is incomplete or damaged (epic-check found problems, or a reader
    #: met a missing shard or frame): resubmit the indices epic-check prints.
    STORE_INCOMPLETE = 5
    #: A checkpoint was saved on SIGUSR1 (epic-train: on SIGTERM too): requeue the job
    #: (EX_TEMPFAIL, sysexits.h).
    REQUEUE = 75
    #: A job told to stop (SIGTERM: scancel, a time limit or preemption without --signal)
    #: saved last.pt and did not requeue itself (slurm/lib.sh): run it again to resume.
    STOPPED = 76
    #: Interrupted by Ctrl-C (128 + SIGINT).
    INTERRUPTED = 130


class EpicInputError(Exception):
    """Bad input the user can fix. The first line of the message is ``<what> (<where>):
    <what to do>``; further lines are details. Subclasses set the exit code."""

    exit_code = ExitCode.BAD_INPUT

    def __init__(
        self, what: str, *, where: object = None, fix: str | None = None, details: str = ""
    ) -> None:
        message = what
        if where is not None:
            message += f" ({where})"
        if fix:
            message += f": {fix}"
        if details:
            message += "\n" + details
        super().__init__(message)


class AnnotationError(EpicInputError):
    """A malformed or missing annotation file."""


class StoreError(EpicInputError):
    """A frame store that does not hold what was asked (plan, parameters, keep mode)."""


class StoreIncompleteError(StoreError):
    """A frame store with a missing, unreadable or damaged shard or frame."""

    exit_code = ExitCode.STORE_INCOMPLETE


class EnvironmentProblem(EpicInputError):
    """The machine lacks something the command needs (a tool, a device, a writable folder)."""


class FFmpegNotFoundError(EnvironmentProblem):
    """ffmpeg or ffprobe cannot be found."""


class BadSourceError(EpicInputError):
    """An input video or frames source is unusable (damaged, truncated, too short)."""

    exit_code = ExitCode.BAD_SOURCE


class OutOfSpaceError(EpicInputError):
    """A disk (or an LMDB map) has no room for what the command writes."""

    exit_code = ExitCode.NO_SPACE


class MalformedMetadataError(StoreIncompleteError, ValueError):
    """Metadata read from a shard (JSON or checksums) that does not parse or has wrong
    fields or types: the shard is damaged. ``reason`` says what is wrong, without advice,
    for reports that give their own (epic-check's problem rows)."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(
            what,
            where=reason,
            fix="the shard holding it is damaged; run `epic-check` on the store and "
            "re-extract the shards it names",
        )
        self.what = what
        self.reason = reason

    def __reduce__(self) -> tuple:
        return type(self), (self.what, self.reason)
