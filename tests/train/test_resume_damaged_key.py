"""epic-train --resume auto on a run folder whose last.pt has a flipped byte in a key name,
and a temp file left by a process killed while saving: the damage is named, the run falls
back to the newest intact checkpoint, the leftover is removed; by path, the same file is
named damaged and the run stops."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from epicdata.errors import ExitCode
from train.cli import train_main


def _flip_key(path, old: bytes, new: bytes) -> None:
    """``old`` -> ``new`` (same length) where torch.save's pickle (protocol 2, BINUNICODE:
    the length before the text) wrote the top-level key ``old``."""
    needle = b"X" + len(old).to_bytes(4, "little") + old
    data = bytearray(path.read_bytes())
    assert data.count(needle) == 1
    offset = data.find(needle) + len(needle) - len(old)
    data[offset : offset + len(old)] = new
    path.write_bytes(bytes(data))


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _args(mini_store, run, fast_options) -> list[str]:
    args = ["--store", mini_store.store, "--annotations", mini_store.annotations]
    args += ["--output-dir", run, "--epochs", "2", "--checkpoint-every", "1"]
    for key, value in fast_options.items():
        flag = "--" + key.replace("_", "-")
        args += [flag] if value is True else [flag, value]
    return [str(a) for a in args]


@pytest.mark.slow
def test_a_flipped_byte_in_a_key_name_of_last_pt_falls_back_under_resume_auto_regression(
    trained_run, mini_store, fast_options, tmp_path
):
    # Regression: `model` -> `motel` in last.pt stopped --resume auto with "not written by
    # this version of epic-train" (exit 2), and a .last.pt.<pid>.tmp stayed for ever.
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    _flip_key(run / "last.pt", b"model", b"motel")
    leftover = run / f".last.pt.{_dead_pid()}.tmp"
    leftover.write_bytes(b"PK" * 1000)
    args = _args(mini_store, run, fast_options)
    result = CliRunner().invoke(train_main, [*args, "--resume", "auto"])
    assert result.exit_code == 0, result.output
    assert f"checkpoint damaged: its content does not match its digest ({run / 'last.pt'})" in (
        result.output
    )
    assert f"resuming from {run / 'epoch_002.pt'} (epoch 2 step 0)" in result.output
    assert "not written by" not in result.output
    assert not leftover.exists()

    # Nothing was left to train: last.pt is the damaged one still. By path: named damaged,
    # no fallback.
    assert b"motel" in (run / "last.pt").read_bytes()
    result = CliRunner().invoke(train_main, [*args, "--resume", str(run / "last.pt")])
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert line.startswith("error: checkpoint damaged: its content does not match its digest")
