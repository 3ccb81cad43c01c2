"""epicdata.ffmpeg_bin: $EPIC_FFMPEG/$EPIC_FFPROBE first, then PATH, else a clear error."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from epicdata.errors import FFmpegNotFoundError
from epicdata.ffmpeg_bin import ffmpeg_path, ffprobe_path

TOOLS = [
    pytest.param(ffmpeg_path, "ffmpeg", "EPIC_FFMPEG", id="ffmpeg"),
    pytest.param(ffprobe_path, "ffprobe", "EPIC_FFPROBE", id="ffprobe"),
]


def _script(folder: Path, name: str, executable: bool = True) -> Path:
    path = folder / name
    path.write_text(f"#!/bin/sh\necho {name} was run\n")
    path.chmod(0o755 if executable else 0o644)
    return path


@pytest.fixture
def empty_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH holding one empty folder, and neither override set."""
    folder = tmp_path / "empty-bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", str(folder))
    monkeypatch.delenv("EPIC_FFMPEG", raising=False)
    monkeypatch.delenv("EPIC_FFPROBE", raising=False)
    return folder


@pytest.mark.parametrize(("find", "tool", "env_var"), TOOLS)
def test_override_is_used_when_set(
    find, tool: str, env_var: str, tmp_path: Path, empty_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_path = _script(empty_path, tool)  # a PATH binary the override must win over
    custom = _script(tmp_path, f"my-{tool}")
    monkeypatch.setenv(env_var, str(custom))
    found = find()
    assert Path(found) == custom and Path(found) != on_path
    run = subprocess.run([found], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == f"my-{tool} was run"


@pytest.mark.parametrize(("find", "tool", "env_var"), TOOLS)
def test_override_may_name_a_program_on_path(
    find, tool: str, env_var: str, empty_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    versioned = _script(empty_path, f"{tool}-6")
    monkeypatch.setenv(env_var, f"{tool}-6")
    assert Path(find()) == versioned


@pytest.mark.parametrize(("find", "tool", "env_var"), TOOLS)
def test_path_is_used_without_override(find, tool: str, env_var: str, empty_path: Path) -> None:
    on_path = _script(empty_path, tool)
    assert Path(find()) == on_path


@pytest.mark.parametrize(("find", "tool", "env_var"), TOOLS)
def test_nothing_found_names_both_ways_and_module_load(
    find, tool: str, env_var: str, empty_path: Path
) -> None:
    _script(empty_path, tool, executable=False)  # present but not executable: not usable
    with pytest.raises(FFmpegNotFoundError) as info:
        find()
    message = str(info.value)
    assert f"{tool} not found" in message
    assert f"${env_var}" in message and "PATH" in message
    assert "module load FFmpeg" in message


@pytest.mark.parametrize(("find", "tool", "env_var"), TOOLS)
@pytest.mark.parametrize("bad", ["missing-file", "not-executable", "a-folder"])
def test_bad_override_is_a_clear_error(
    find,
    tool: str,
    env_var: str,
    bad: str,
    tmp_path: Path,
    empty_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _script(empty_path, tool)  # a working PATH binary must not hide the bad override
    target = {
        "missing-file": tmp_path / "nowhere" / tool,
        "not-executable": _script(tmp_path, f"my-{tool}", executable=False),
        "a-folder": tmp_path,
    }[bad]
    monkeypatch.setenv(env_var, str(target))
    with pytest.raises(FFmpegNotFoundError) as info:
        find()
    message = str(info.value)
    assert f"${env_var}={str(target)!r}" in message
    assert f"not an executable {tool}" in message
    assert "unset it" in message
