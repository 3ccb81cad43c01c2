"""What every command line shares: exit codes and error lines, one logging setup, the run
header, progress with an ETA, preflight checks of output folders, and help conventions.

Commands are built with ``@click.command(cls=EpicCommand)`` (or ``EpicGroup``); their
bodies parse, call :func:`start_command` (logging + run header), run :func:`preflight_output` for
each folder they will write, and call plain library functions that raise
:class:`~epicdata.errors.EpicInputError` subclasses for conditions they can name.
:class:`EpicCommand` turns those into ``error: ...`` lines and exit codes; anything else is
a bug, printed with its traceback and a line saying so. docs/conventions.md is the table.
"""

from __future__ import annotations

import errno
import functools
import importlib.util
import logging
import os
import platform
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import click

from epicdata.errors import (
    EnvironmentProblem,
    EpicInputError,
    ExitCode,
    FFmpegNotFoundError,
    OutOfSpaceError,
)
from epicdata.ffmpeg_bin import ffmpeg_path

log = logging.getLogger(__name__)

PROJECT = "epic-kitchens-pipeline"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: With the date: job logs span days and requeues.
LOG_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
#: At most one progress line per this many seconds in a log file or SLURM output.
PROGRESS_LOG_INTERVAL_S = 30.0
#: A terminal bar is redrawn at most this often.
PROGRESS_DRAW_INTERVAL_S = 0.2

CONTEXT_SETTINGS: dict[str, Any] = {
    "help_option_names": ["-h", "--help"],
    "show_default": True,
    "max_content_width": 100,
}


# ----------------------------------------------------------------------------- help


def example(*command_lines: str) -> str:
    """A help epilog: one example invocation, kept as written (no rewrapping)."""
    return "\b\nExample:\n" + "\n".join(f"  {line}" for line in command_lines)


# ----------------------------------------------------------------------------- errors


def error_text(exc: BaseException) -> str:
    """``error: <first line>`` then the details, indented."""
    lines = _message(exc).splitlines() or [type(exc).__name__]
    details = [line if line.startswith(" ") else f"  {line}" for line in lines[1:]]
    return "\n".join([f"error: {lines[0]}", *details])


def _message(exc: BaseException) -> str:
    """The error's own message, also when a DataLoader worker raised it: torch re-raises it
    in the main process with the worker's traceback in front of the original line."""
    text = str(exc)
    marker = f"{type(exc).__module__}.{type(exc).__name__}: "
    if text.startswith("Caught ") and marker in text:
        return text.split(marker, 1)[1].rstrip()
    return text


def _os_error(exc: OSError) -> EpicInputError | None:
    """The named form of an OS error that is about the user's disks, else None."""
    where = exc.filename or "a file"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutOfSpaceError(
            "no space left on the disk",
            where=f"writing {where}: {exc.strerror}",
            fix="free space or point the option at a larger disk; nothing finished was lost",
        )
    if exc.errno == errno.EROFS:
        return EnvironmentProblem(
            "cannot write: read-only file system",
            where=where,
            fix="choose a folder on a writable file system",
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return EnvironmentProblem(
            "permission denied",
            where=f"{where}: {exc.strerror}",
            fix="fix the permissions of that path (`ls -l`; `lsattr` shows immutable files) "
            "or choose another",
        )
    return None


def _report(text: str) -> None:
    click.echo(text, err=True)
    # Run folders keep a log file: the reason a run stopped belongs in it too.
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.stream.write(f"{datetime.now().strftime(LOG_DATE_FORMAT)} {text}\n")
            handler.flush()


class _ProjectFormError(click.ClickException):
    """A click error (bad or missing option, unknown command) shown the way every other
    error is: ``error: ...`` and exit 2, not click's usage text with ``Error: ...``."""

    exit_code = int(ExitCode.BAD_INPUT)

    def show(self, file: IO[Any] | None = None) -> None:
        _report(self.message)


#: Not an error to reword: a group called without a command prints its help (click >= 8.2).
_HELP_NOT_ERROR: tuple[type[Exception], ...] = tuple(
    filter(None, [getattr(click.exceptions, "NoArgsIsHelpError", None)])
)


def _in_project_form(exc: click.ClickException, ctx: click.Context | None) -> Exception:
    """``exc`` as a :class:`_ProjectFormError`: its message, the command and where to read
    its options. Any click error counts as bad usage: click's own code for a few (1) is a
    bug's in this project."""
    if isinstance(exc, (_ProjectFormError, *_HELP_NOT_ERROR)):
        return exc
    ctx = getattr(exc, "ctx", None) or ctx
    path = ctx.command_path if ctx is not None else None
    # One line: click lists a choice's values one per line.
    message = " ".join(exc.format_message().split())
    named = EpicInputError(
        message[:-1] if message.endswith(".") and not message.endswith("..") else message,
        where=path,
        fix=f"see `{path} --help`" if path else None,
    )
    return _ProjectFormError(error_text(named))


def _guarded(ctx: click.Context, invoke: Callable[[], Any]) -> Any:
    try:
        code = invoke()
    except (click.exceptions.Exit, click.Abort):
        raise
    except click.ClickException as exc:
        raise _in_project_form(exc, ctx) from None
    except EpicInputError as exc:
        _report(error_text(exc))
        ctx.exit(int(exc.exit_code))
    except OSError as exc:
        named = _os_error(exc)
        if named is None:
            raise _internal(ctx, exc) from None
        _report(error_text(named))
        ctx.exit(int(named.exit_code))
    except KeyboardInterrupt:
        _report("error: interrupted (Ctrl-C): nothing half-written was published; run it again")
        ctx.exit(int(ExitCode.INTERRUPTED))
    except Exception as exc:
        raise _internal(ctx, exc) from None
    if isinstance(code, int) and code != ExitCode.OK:
        ctx.exit(code)
    return code


def _internal(ctx: click.Context, exc: BaseException) -> click.exceptions.Exit:
    _report("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip())
    first = (str(exc).splitlines() or [""])[0]
    if len(first) > 200:
        first = first[:200] + "..."
    _report(
        f"error: internal error in {ctx.command_path} ({type(exc).__name__}: {first}): this is "
        f"a bug in {PROJECT}; please report it with this log"
    )
    return click.exceptions.Exit(int(ExitCode.INTERNAL))


class _ProjectUsage(click.Command):
    """Errors in parsing the command line (an unknown or missing option, a bad value, an
    unknown command) printed in the project's form, exit 2: the base of both classes below."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.ClickException as exc:
            raise _in_project_form(exc, None) from None


class EpicCommand(_ProjectUsage, click.Command):
    """A command with the shared help settings whose errors become exit codes: an
    :class:`EpicInputError` its own code, an int returned by the body the exit code, a
    usage error 2 (all printed as ``error: ...`` lines)."""

    def __init__(self, *args: Any, context_settings: dict | None = None, **kwargs: Any) -> None:
        super().__init__(
            *args, context_settings={**CONTEXT_SETTINGS, **(context_settings or {})}, **kwargs
        )

    def invoke(self, ctx: click.Context) -> Any:
        return _guarded(ctx, lambda: super(EpicCommand, self).invoke(ctx))


class EpicGroup(_ProjectUsage, click.Group):
    """A command group whose subcommands are :class:`EpicCommand` s."""

    command_class = EpicCommand

    def __init__(self, *args: Any, context_settings: dict | None = None, **kwargs: Any) -> None:
        super().__init__(
            *args, context_settings={**CONTEXT_SETTINGS, **(context_settings or {})}, **kwargs
        )

    def invoke(self, ctx: click.Context) -> Any:
        # An unknown command is found here, after the group's own options were parsed.
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            raise _in_project_form(exc, ctx) from None


# ----------------------------------------------------------------------------- logging


_active_bar: Progress | None = None


class _StreamHandler(logging.StreamHandler):
    """Writes a record on its own line when a progress bar is drawn on the same terminal."""

    def emit(self, record: logging.LogRecord) -> None:
        bar = _active_bar
        if bar is not None and bar.stream is self.stream:
            bar.clear()
            super().emit(record)
            bar.draw()
        else:
            super().emit(record)


def setup_logging(
    *, verbose: bool = False, is_main: bool = True, log_file: str | Path | None = None
) -> None:
    """The one logging setup: dated lines on stderr (and ``log_file``); INFO on the main
    process (DEBUG with ``verbose``), WARNING on the other ranks."""
    handlers: list[logging.Handler] = [_StreamHandler(sys.stderr)]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    level = (logging.DEBUG if verbose else logging.INFO) if is_main else logging.WARNING
    logging.basicConfig(
        level=level, format=LOG_FORMAT, datefmt=LOG_DATE_FORMAT, handlers=handlers, force=True
    )


@functools.cache
def ffmpeg_version() -> str:
    """``ffmpeg -version``'s version, or why there is none."""
    try:
        path = ffmpeg_path()
        out = subprocess.run(
            [path, "-version"], capture_output=True, text=True, timeout=20, check=False
        ).stdout
    except (FFmpegNotFoundError, OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({str(exc).splitlines()[0][:80]})"
    words = out.split()
    return words[2] if len(words) > 2 and words[:2] == ["ffmpeg", "version"] else "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _torch() -> str:
    """torch's version, CUDA build and folder, read without importing torch (which takes
    seconds): which torch a job really runs with (module or venv) is what a log must say."""
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return "torch not installed"
    folder = Path(spec.origin).parent
    try:
        text = (folder / "version.py").read_text()
    except OSError:
        text = ""
    cuda = re.search(r"^cuda(?:: \S+)? = '([^']+)'", text, flags=re.MULTILINE)
    build = f"CUDA {cuda.group(1)}" if cuda else "CPU build"
    return f"torch {_version('torch')} ({build}, {folder})"


def run_header(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> str:
    """One line for the top of a job log: when, where (host, SLURM ids), with what versions,
    and the command line."""
    env = os.environ if environ is None else environ
    argv = sys.argv if argv is None else argv
    parts = [
        f"start {datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"host {socket.gethostname()}",
    ]
    if env.get("SLURM_JOB_ID"):
        slurm = f"slurm job {env['SLURM_JOB_ID']}"
        if env.get("SLURM_ARRAY_JOB_ID"):
            slurm += f" array {env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '?')}"
        slurm += f" restart {env.get('SLURM_RESTART_COUNT', '0')}"
        parts.append(slurm)
    parts.append(
        f"python {platform.python_version()}, {_torch()}, "
        f"ffmpeg {ffmpeg_version()}, lmdb {_version('lmdb')}, {PROJECT} {_version(PROJECT)}"
    )
    parts.append("command: " + shlex.join([Path(argv[0]).name, *argv[1:]]))
    return " | ".join(parts)


def add_log_file(path: str | Path) -> None:
    """Also log into ``path`` from now on (a run folder's log, attached once the run is
    sure to start: a refused start leaves no folder behind), starting with the header."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATE_FORMAT))
    logging.getLogger().addHandler(handler)
    handler.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, run_header(), (), None))


def start_command(
    *, verbose: bool | None = None, is_main: bool = True, log_file: str | Path | None = None
) -> None:
    """Configure logging and log the run header: the first thing a command that works does.

    ``verbose`` None: the ``-v/--verbose`` flag of the running command or its group.
    """
    if verbose is None:
        ctx = click.get_current_context(silent=True)
        verbose = ctx is not None and any(c.params.get("verbose") for c in (ctx, ctx.find_root()))
    setup_logging(verbose=verbose, is_main=is_main, log_file=log_file)
    log.info("%s", run_header())


# ----------------------------------------------------------------------------- progress


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """Progress of ``total`` units with rate and ETA: a bar redrawn in place on a terminal,
    one plain log line at most every ``interval_s`` seconds otherwise (log files and SLURM
    output get no carriage returns). Silent where INFO is not logged (ranks other than 0).

    ``clock`` is injectable for tests; ``note`` (a callable) adds text such as videos done.
    """

    def __init__(
        self,
        total: int | None,
        *,
        label: str,
        unit: str,
        interval_s: float = PROGRESS_LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        stream: IO[str] | None = None,
        logger: logging.Logger | None = None,
        note: Callable[[], str] | None = None,
    ) -> None:
        self.total = total
        self.label = label
        self.unit = unit
        self.interval_s = interval_s
        self.clock = clock
        self.stream = stream if stream is not None else sys.stderr
        self.logger = logger or log
        self.note = note
        self.done = 0
        self.enabled = self.logger.isEnabledFor(logging.INFO)
        self.tty = self.enabled and _isatty(self.stream)
        self.started = self.last = clock()
        #: (time, units done) at the first update: where the rate is measured from.
        self._first: tuple[float, int] | None = None
        self._drawn = False
        if self.tty:
            _set_active_bar(self)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def line(self) -> str:
        """``label: done/total unit (pct), rate unit/s, elapsed h:mm:ss, ETA h:mm:ss``; the
        rate and ETA only once there is a rate (see :meth:`rate`)."""
        now = self.clock()
        text = f"{self.label}: {self.done:,}"
        if self.total:
            text += f"/{self.total:,} {self.unit} ({100 * self.done / self.total:.1f}%)"
        else:
            text += f" {self.unit}"
        rate = self.rate(now)
        if rate is not None:
            text += f", {_rate_text(rate)} {self.unit}/s"
        text += f", elapsed {_duration(now - self.started)}"
        if self.total and rate is not None:
            text += f", ETA {_duration(max(0, self.total - self.done) / rate)}"
        if self.note is not None:
            text += f", {self.note()}"
        return text

    def rate(self, now: float) -> float | None:
        """Units a second since the first update, None before there is a rate. The first
        unit's time is start-up (DataLoader workers, CUDA, opening files): counted from the
        start it shows a rate near 0 and an ETA of hours on the first line."""
        if self._first is None:
            return None
        first_time, first_done = self._first
        if now <= first_time or self.done <= first_done:
            return None
        return (self.done - first_done) / (now - first_time)

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units done."""
        self.done += n
        if not self.enabled:
            return
        now = self.clock()
        if self._first is None:
            self._first = (now, self.done)
        if self.tty:
            if now - self.last >= PROGRESS_DRAW_INTERVAL_S:
                self.last = now
                self.draw()
        elif now - self.last >= self.interval_s:
            self.last = now
            self.logger.info("%s", self.line())

    def draw(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K" + self.line())
            self.stream.flush()
            self._drawn = True

    def clear(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def close(self) -> None:
        if _active_bar is self:
            _set_active_bar(None)
        if self.tty and self._drawn:
            self.draw()
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def _rate_text(rate: float) -> str:
    """``12.5``, or two significant digits below 1 (``0.033``): never ``0.0``."""
    return f"{rate:,.1f}" if rate >= 1 else f"{rate:.2g}"


def _set_active_bar(bar: Progress | None) -> None:
    global _active_bar
    _active_bar = bar


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# ----------------------------------------------------------------------------- preflight


def format_bytes(n: float) -> str:
    """``1.2 GB (1,234,567,890 bytes)``: readable and exact."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit} ({int(n):,} bytes)"
    return f"{int(n):,} bytes"


def free_bytes(path: str | Path) -> int:
    """Bytes free for this user on the file system holding ``path``."""
    return shutil.disk_usage(path).free


def preflight_output(path: str | Path, *, need_bytes: int, option: str) -> Path:
    """Before expensive work: make sure folder ``path`` is writable (or, when it does not
    exist yet, that its nearest existing parent is: nothing is created, so a refused start
    leaves no folder behind) and its disk has ``need_bytes`` free (an estimate of what the
    command will write).

    Raises :class:`EnvironmentProblem` (exit 2) naming the path when it cannot be written,
    :class:`OutOfSpaceError` (exit 4) with the bytes needed and free when it is too small.
    """
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is a file, not a folder")
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".epic-preflight-"):
            pass
    except OSError as exc:
        raise EnvironmentProblem(
            f"cannot write {option}",
            where=f"{path}: {exc.strerror or exc}",
            fix="choose a writable folder, or fix its permissions (`lsattr -d` shows immutable)",
        ) from None
    free = free_bytes(existing)
    if free < need_bytes:
        raise OutOfSpaceError(
            f"not enough space for {option}",
            where=f"{path}: needs about {format_bytes(need_bytes)}, {format_bytes(free)} free",
            fix="free space there or choose a folder on a larger disk",
        )
    return path


#: Where a user's cluster site file is named when no --site is given (every job has it).
SITE_VARIABLE = "EPIC_SITE"


def user_line(kind: str, site_path: Path | None, **options: object) -> str:
    """The ``epic-slurm submit`` line a tool prints for the user: complete for the site
    (``--site`` when known, else $EPIC_SITE must be exported), runnable as printed."""
    words = ["epic-slurm", "submit"]
    if site_path is not None:
        words += ["--site", str(site_path)]
    words.append(kind)
    for name, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        words += [flag] if value is True else [flag, str(value)]
    return shlex.join(words)


def site_of_environment() -> Path | None:
    """The site file a printed line should name: $EPIC_SITE (set in every job)."""
    value = os.environ.get(SITE_VARIABLE)
    return Path(value).resolve() if value else None
