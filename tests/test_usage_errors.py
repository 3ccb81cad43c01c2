"""Usage errors of every command of every console script read like every other error:
``error: <what> (<command>): see `<command> --help``` and exit 2 (docs/conventions.md), not
click's ``Usage: ...`` block with ``Error: ...``, and never a traceback.

The commands are read from setup.cfg's console scripts and their click objects, so a new
script or subcommand is covered without touching this file."""

from __future__ import annotations

import configparser
import importlib
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from epicdata.errors import ExitCode
from preprocess.cli import extract
from preprocess.plan import plan_store

ROOT = Path(__file__).resolve().parents[1]
#: The scripts docs/conventions.md names: a parse of setup.cfg that finds fewer is broken.
KNOWN_SCRIPTS = {"epic-synth", "epic-extract", "epic-check", "epic-train", "epic-validate"}
KNOWN_SCRIPTS |= {"epic-slurm"}
#: Commands that accept every command line, so have no usage error to make: `epic-slurm
#: header` passes its words on to the job header.
ACCEPTS_ANYTHING = {"epic-slurm header"}
BAD_VALUE = "not-a-value"


def _scripts() -> dict[str, click.Command]:
    """Console script name -> its click object, from setup.cfg."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    scripts = {}
    for line in config["options.entry_points"]["console_scripts"].strip().splitlines():
        name, _, target = (part.strip() for part in line.partition("="))
        module, _, attribute = target.partition(":")
        scripts[name] = getattr(importlib.import_module(module), attribute)
    return scripts


SCRIPTS = _scripts()


def _commands() -> dict[str, tuple[str, list[str], click.Command]]:
    """Every command, groups included, by its path (``epic-extract run``): (script, the
    words after the script that select it, the command)."""
    found = {}
    stack = [(script, [], command) for script, command in SCRIPTS.items()]
    while stack:
        script, lead, command = stack.pop()
        found[" ".join([script, *lead])] = (script, lead, command)
        if isinstance(command, click.Group):
            stack += [(script, [*lead, n], sub) for n, sub in command.commands.items()]
    return found


COMMANDS = _commands()


def _rejects(param: click.Parameter) -> bool:
    """Whether a one-word option refuses BAD_VALUE when it converts it."""
    if not isinstance(param, click.Option) or param.is_flag or param.count or param.nargs != 1:
        return False
    try:
        param.type.convert(BAD_VALUE, param, None)
    except click.BadParameter:
        return True
    return False


def _cases() -> list[tuple[str, str, list[str]]]:
    """(command path, what is wrong, the arguments after the command's words)."""
    cases = []
    for path, (_, _, command) in COMMANDS.items():
        if not command.context_settings.get("ignore_unknown_options"):
            cases.append((path, "unknown option", ["--no-such-option"]))
        if isinstance(command, click.Group):
            cases.append((path, "unknown command", ["no-such-command"]))
            continue
        if any(p.required for p in command.params):
            cases.append((path, "missing required", []))
        bad = next((p for p in command.params if _rejects(p)), None)
        if bad is not None:
            cases.append((path, "bad value", [bad.opts[0], BAD_VALUE]))
    return cases


CASES = _cases()


def _unset_envvars(command: click.Command) -> dict[str, str | None]:
    """The environment of a run in which no option of ``command`` is set from a variable."""
    names = {"EPIC_SITE", "SLURM_ARRAY_TASK_ID"}
    for param in command.params:
        envvar = getattr(param, "envvar", None)
        names |= {envvar} if isinstance(envvar, str) else set(envvar or ())
    return dict.fromkeys(names)


def _invoke(path: str, args: list[str], env: dict[str, str | None] | None = None) -> Result:
    script, lead, command = COMMANDS[path]
    environment = {**_unset_envvars(command), **(env or {})}
    return CliRunner().invoke(SCRIPTS[script], [*lead, *args], prog_name=script, env=environment)


def assert_project_form(result: Result, path: str) -> str:
    """Exit 2, one ``error:`` line naming the command and its help, no click form."""
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    assert f"({path}): see `{path} --help`" in lines[0], lines[0]
    for click_form in ("Error:", "Usage:", "Try '", "Traceback"):
        assert click_form not in result.output, result.output
    return lines[0]


def test_every_console_script_and_command_is_found() -> None:
    assert set(SCRIPTS) >= KNOWN_SCRIPTS
    assert {"epic-extract plan", "epic-extract run", "epic-slurm submit"} <= set(COMMANDS)
    without_case = set(COMMANDS) - {path for path, _, _ in CASES}
    assert without_case == ACCEPTS_ANYTHING


@pytest.mark.parametrize(("path", "what", "args"), CASES, ids=[f"{p}: {w}" for p, w, _ in CASES])
def test_usage_error_is_in_the_project_form(path: str, what: str, args: list[str]) -> None:
    line = assert_project_form(_invoke(path, args), path)
    needle = {
        "unknown option": "--no-such-option",
        "unknown command": "no-such-command",
        "missing required": "Missing",
        "bad value": BAD_VALUE,
    }[what]
    assert needle in line, line


# ----------------------------------------------------------------------------- issue 19 item 14


def test_run_without_an_index_is_in_the_project_form(small_store_ro: dict[str, Path]) -> None:
    # Regression: click's `Usage: ... Error: give exactly one of ...`. The real script's
    # entry point, as a user runs it.
    env = {k: v for k, v in os.environ.items() if k != "SLURM_ARRAY_TASK_ID"}
    done = subprocess.run(
        [sys.executable, "-m", "preprocess", "run", "--store", str(small_store_ro["store"])],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == ExitCode.BAD_INPUT, done.stderr
    assert done.stderr.startswith("error: give exactly one of --shard-index N"), done.stderr
    assert "Error:" not in done.stderr and "Usage:" not in done.stderr


def test_a_missing_ffmpeg_for_run_is_in_the_project_form(
    small_store_ro: dict[str, Path], tmp_path: Path
) -> None:
    args = ["--store", str(small_store_ro["store"]), "--shard-index", "0"]
    result = _invoke(
        "epic-extract run", [*args, "--tmp-dir", str(tmp_path)], {"EPIC_FFMPEG": "/nonexistent"}
    )
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert "$EPIC_FFMPEG='/nonexistent'" in line
    assert "Error:" not in result.output and "Traceback" not in result.output


def test_run_on_a_sizing_only_plan_is_in_the_project_form(
    small_store_ro: dict[str, Path], tmp_path: Path
) -> None:
    info = tmp_path / "video_info.csv"
    info.write_text("video_id,duration,fps,resolution\nP01_01,2.0,59.94,192x108\n")
    info.write_text(info.read_text() + "P01_101,2.0,50,192x108\n")
    store = tmp_path / "store"
    plan_store(
        store_root=store,
        annotations_dir=small_store_ro["annotations"],
        video_info=info,
        splits=("test",),
    )
    for args in (["--all"], ["--shard-index", "0"]):
        result = CliRunner().invoke(extract, ["run", "--store", str(store), *args])
        assert result.exit_code == ExitCode.BAD_INPUT, result.output
        (line,) = [x for x in result.output.splitlines() if x.startswith("error:")]
        assert line.startswith("error: sizing-only plan") and "epic-extract plan --videos" in line
        assert "Error:" not in result.output and "Traceback" not in result.output
