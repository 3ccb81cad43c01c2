"""shellcheck over every shell script of the repository, one test per script.

Scripts are discovered, not listed: files ending in .sh, .bash or .sbatch, files whose first
line is an sh/bash/dash/ksh shebang or a ``# shellcheck shell=`` directive (sourced
libraries such as slurm/lib.sh), and the site files ``slurm/sites/*.env``, which the job
scripts source as bash. Environments, caches and run outputs are not searched.

Every finding fails, style included (shellcheck's default severity): the scripts are short
enough to keep clean, and a finding that is wrong for one line is silenced on that line
with ``# shellcheck disable=SCxxxx`` and a reason. Sourced files are followed
(``--external-sources``, paths relative to the script). Site files only assign settings
for the scripts that source them, so "appears unused" (SC2034) is not reported there.

Without shellcheck these tests skip, unless ``EPIC_REQUIRE_SLURM=1`` (set by ``.ci/run``,
which installs it with slurm-wlm), where they fail. See docs/testing.md.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REQUIRE_ENV = "EPIC_REQUIRE_SLURM"
#: Folders that hold no scripts of ours: VCS, environments, caches, build and run outputs.
SKIP_DIRS = {
    ".git",
    ".venv",
    "venv",
    "build",
    "dist",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
}
SUFFIXES = (".sh", ".bash", ".sbatch")
FIRST_LINE = re.compile(
    rb"#!\s*(/usr/bin/env\s+)?(\S*/)?(ba|da|k)?sh(\s|$)|#\s*shellcheck\s+shell=(ba|da|k)?sh\b"
)
#: Settings files sourced by the job scripts: bash without a shebang, every variable
#: assigned for someone else.
SITE_FILES = "slurm/sites/*.env"
SITE_OPTIONS = ["--shell=bash", "--exclude=SC2034"]
#: Findings the scripts' owner has yet to fix, by script: each case fails when it passes.
KNOWN: dict[str, str] = {}


def is_shell_script(path: Path) -> bool:
    if path.name.endswith(SUFFIXES) or path.match(SITE_FILES):
        return True
    try:
        with path.open("rb") as f:
            return bool(FIRST_LINE.match(f.readline(200)))
    except OSError:
        return False


def shell_scripts() -> list[str]:
    """Every shell script under the repository root, as sorted relative paths."""
    found = []
    for folder, subfolders, files in os.walk(ROOT):
        here = Path(folder)
        subfolders[:] = [
            name
            for name in subfolders
            if name not in SKIP_DIRS
            and not name.endswith(".egg-info")
            and here / name != ROOT / "work"  # the demo's and users' run outputs
        ]
        found += [str((here / f).relative_to(ROOT)) for f in files if is_shell_script(here / f)]
    return sorted(found)


def case(script: str):
    if script in KNOWN:
        return pytest.param(
            script, marks=pytest.mark.xfail(strict=True, reason=KNOWN[script]), id=script
        )
    return pytest.param(script, id=script)


@pytest.fixture(scope="module")
def shellcheck() -> str:
    path = shutil.which("shellcheck")
    if path is None:
        reason = "shellcheck not found: apt-get install shellcheck (Debian/Ubuntu)"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{reason} ({REQUIRE_ENV}=1: it may not skip)", pytrace=False)
        pytest.skip(reason)
    return path


@pytest.mark.parametrize("script", [case(s) for s in shell_scripts()])
def test_shellcheck_finds_nothing(shellcheck: str, script: str):
    options = SITE_OPTIONS if Path(script).match(SITE_FILES) else []
    done = subprocess.run(
        [shellcheck, "--format=gcc", "--external-sources", "--source-path=SCRIPTDIR"]
        + [*options, script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"shellcheck {script}:\n{done.stdout}{done.stderr}"


def test_discovery_finds_the_known_scripts_and_no_others():
    scripts = shell_scripts()
    expected = {".ci/run", "demo.sh", "tests/fakes/scontrol"}
    expected |= {str(p.relative_to(ROOT)) for p in ROOT.glob("slurm/*.sbatch")}
    assert expected <= set(scripts), expected - set(scripts)
    assert "tests/fakes/srun" not in scripts  # a Python script
    assert not [s for s in scripts if s.endswith(".py")]
