"""The project installs as a wheel: `epic-slurm` from a wheel, run outside any checkout,
finds its job scripts, their library and the site examples (package data of epicslurm).

The wheel is built from a copy of the sources with this venv's setuptools (no download)
and installed with ``--target`` into a folder that is not the checkout; the command runs
from a third folder with only that folder and this venv's dependencies importable.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the module builds the wheel first (about 2 s)

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "epicdata", "preprocess", "train", "slurm")
JOB_SCRIPTS = ("extract", "check", "train", "train_multi", "validate", "sweep", "fuse")


def _pip(*args: str | Path, cwd: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel's contents installed into a folder of their own; returns that folder."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=ignore)
        else:
            shutil.copy(ROOT / name, source / name)
    _pip("wheel", "--no-deps", "--no-build-isolation", "-w", work / "dist", source, cwd=work)
    (wheel,) = (work / "dist").glob("*.whl")
    _pip("install", "--no-deps", "--target", work / "target", wheel, cwd=work)
    return work / "target"


def _run(installed: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EPIC_", "SLURM_"))}
    env["PYTHONPATH"] = str(installed)
    return subprocess.run(
        [str(installed / "bin" / args[0]), *args[1:]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_wheel_carries_the_job_scripts_and_the_examples(installed) -> None:
    scripts = installed / "epicslurm"
    for name in JOB_SCRIPTS:
        assert (scripts / f"{name}.sbatch").is_file(), name
    assert (scripts / "lib.sh").is_file()
    for example in (ROOT / "slurm" / "sites").glob("*.env"):
        assert (scripts / "sites" / example.name).read_bytes() == example.read_bytes()
    assert (scripts / "sweeps" / "seed-week2.yaml").is_file()


def test_epic_slurm_from_the_wheel_submits_its_own_scripts(installed, tmp_path) -> None:
    """`epic-slurm submit --dry-run` run from an unrelated folder names the wheel's scripts,
    and the job gets their folder as EPIC_SCRIPTS (where the scripts source lib.sh)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    example = _run(installed, elsewhere, "epic-slurm", "site-example", "cpu")
    assert example.returncode == 0, example.stderr
    assert example.stdout == (ROOT / "slurm" / "sites" / "cpu.env").read_text()
    site = elsewhere / "site.env"
    site.write_text(
        example.stdout + f"EPIC_VENV={tmp_path / 'venv'}\nEPIC_LOGS={tmp_path / 'logs'}\n"
    )
    result = _run(
        installed,
        elsewhere,
        *("epic-slurm", "submit", "--site", "site.env", "extract"),
        *("--store", str(tmp_path / "store"), "--array", "0-3", "--dry-run"),
    )
    assert result.returncode == 0, result.stderr
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("sbatch ")]
    words = shlex.split(line)
    scripts = installed / "epicslurm"
    assert words[-1] == str(scripts / "extract.sbatch")
    (export,) = [w for w in words if w.startswith("--export=")]
    assert f"EPIC_SCRIPTS={scripts}" in export.split(",")
    assert "--array=0-3" in words
    assert str(ROOT) not in line  # nothing from the checkout


def test_python_m_epicslurm_is_the_wheel_s(installed, tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPIC_")}
    env["PYTHONPATH"] = str(installed)
    probe = "import epicslurm.site as s; print(s.__file__); print(s.SCRIPTS)"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    module, scripts = result.stdout.split()
    assert Path(module).is_relative_to(installed) and Path(scripts) == installed / "epicslurm"
    help_text = subprocess.run(
        [sys.executable, "-m", "epicslurm", "--help"], cwd=tmp_path, env=env, capture_output=True
    )
    assert help_text.returncode == 0 and b"site-example" in help_text.stdout


def test_the_wheel_carries_the_official_frames_md5s(installed, tmp_path) -> None:
    """`epic-extract run` checks official frame tars against this table (package data of
    preprocess): a wheel without it would fail at the first official tar."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPIC_")}
    env["PYTHONPATH"] = str(installed)
    probe = "import preprocess.official_frames as f; print(f.__file__, len(f.md5_table()))"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    module, tars = result.stdout.split()
    assert Path(module).is_relative_to(installed) and int(tars) == 1404  # 702 RGB + 702 flow
