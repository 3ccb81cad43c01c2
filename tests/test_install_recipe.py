"""slurm/install.sh against a stand-in cluster module (issue 10).

The VSC recipe loads a PyTorch module and installs the project into a venv made with
``--system-site-packages``; a module without torchvision let pip pull torchvision and a new
torch from PyPI into that venv. What the recipe must get right is pip's resolution, which
only reads names, versions and requirements, so the "module" here is a folder on
PYTHONPATH (as EasyBuild modules set it) holding tiny stand-in wheels of torch 2.1.2 and
torchvision 0.16.2 instead of the 2.2 GB CUDA build. The project's other dependencies come
from the configured pip index.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the module builds a venv (about 20 s)

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "slurm" / "install.sh"
TORCH_VERSION = "2.1.2"
TORCHVISION_VERSION = "0.16.2"
#: The newest torchvision when issue 10 was filed; it requires a newer torch than 2.1.2.
PYPI_TORCHVISION = "0.29.1"
WHEEL = (
    "Wheel-Version: 1.0\nGenerator: test_install_recipe\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
)


def make_wheel(
    folder: Path, name: str, version: str, files: Mapping[str, str], requires: tuple[str, ...] = ()
) -> Path:
    """Writes ``name-version-py3-none-any.whl`` holding ``files`` (path -> text) and returns it.

    A wheel is a zip with a METADATA, a WHEEL and a RECORD of sha256 digests; writing it by
    hand takes milliseconds where a setuptools build takes seconds.
    """
    dist_info = f"{name}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {requirement}\n" for requirement in requires)
    contents = {
        **files,
        f"{dist_info}/METADATA": metadata,
        f"{dist_info}/WHEEL": WHEEL,
    }
    record = []
    for path, text in contents.items():
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    contents[f"{dist_info}/RECORD"] = "\n".join([*record, f"{dist_info}/RECORD,,", ""])
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in contents.items():
            archive.writestr(path, text)
    return wheel


def make_module(folder: Path, *, with_torchvision: bool) -> Path:
    """A stand-in PyTorch(-bundle) module: torch 2.1.2 (a CPU build), optionally torchvision
    0.16.2, pip-installed into ``folder/site-packages`` as EasyBuild installs extensions."""
    wheels = folder / "wheels"
    wheels.mkdir(parents=True)
    torch_files = {
        "torch/__init__.py": f'from torch import version\n\n__version__ = "{TORCH_VERSION}"\n',
        "torch/version.py": f'__version__ = "{TORCH_VERSION}"\ncuda = None\n',
    }
    built = [make_wheel(wheels, "torch", TORCH_VERSION, torch_files)]
    if with_torchvision:
        vision_files = {
            "torchvision/__init__.py": f'import torch\n\n__version__ = "{TORCHVISION_VERSION}"\n'
        }
        built.append(
            make_wheel(
                wheels,
                "torchvision",
                TORCHVISION_VERSION,
                vision_files,
                (f"torch=={TORCH_VERSION}",),
            )
        )
    site = folder / "site-packages"
    install_into(site, built)
    return site


def install_into(site: Path, wheels: list[Path]) -> None:
    """pip-installs local ``wheels`` into the folder ``site``, offline and ignoring pip config."""
    pip = [sys.executable, "-m", "pip", "install", "--isolated", "--no-index", "--no-deps"]
    run([*pip, "--target", str(site), *map(str, wheels)])


def base_python_bin(folder: Path) -> Path:
    """A folder whose ``python`` is the interpreter behind this test's venv: the cluster's
    Python module, in the role the recipe expects (not a venv's python)."""
    base = Path(getattr(sys, "_base_executable", sys.executable)).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "python").symlink_to(base)
    return folder


def module_env(module: Path, python_bin: Path, **extra: str) -> dict[str, str]:
    """The environment of a login shell after ``module load``: the module's packages on
    PYTHONPATH, its python first on PATH, no venv active."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("VIRTUAL_ENV", "PYTHONHOME", "PIP_CONSTRAINT", "LOADEDMODULES")
    }
    env["PYTHONPATH"] = str(module)
    env["PATH"] = os.pathsep.join([str(python_bin), env.get("PATH", "")])
    env.update(extra)
    return env


def run(
    command: list[str], env: Mapping[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Runs ``command``; with ``check``, a failure fails the test with its output."""
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        pytest.fail(
            f"{command} exited {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
        )
    return result


def venv_site_packages(venv: Path) -> Path:
    (site,) = venv.glob("lib/python3*/site-packages")
    return site


class Installed:
    """A venv made by slurm/install.sh over the full stand-in module."""

    def __init__(self, root: Path) -> None:
        self.module = make_module(root / "module", with_torchvision=True)
        self.env = module_env(self.module, base_python_bin(root / "bin"))
        self.venv = root / "venv"
        self.result = run(["bash", str(INSTALL), str(self.venv)], self.env, check=False)

    def python(self, code: str) -> str:
        return run([str(self.venv / "bin" / "python"), "-c", code], self.env).stdout.strip()


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    done = Installed(tmp_path_factory.mktemp("installed"))
    assert done.result.returncode == 0, (
        f"install.sh failed:\n{done.result.stdout[-3000:]}\n{done.result.stderr[-3000:]}"
    )
    return done


def test_venv_imports_the_modules_torch(installed: Installed) -> None:
    out = installed.python(
        "import torch, torchvision; print(torch.__version__, torch.__file__, torchvision.__version__)"
    )
    version, path, vision = out.split()
    assert (version, vision) == (TORCH_VERSION, TORCHVISION_VERSION)
    assert Path(path).resolve().is_relative_to(installed.module.resolve())


def test_venv_holds_no_torch_of_its_own(installed: Installed) -> None:
    site = venv_site_packages(installed.venv)
    own = sorted(p.name for p in site.iterdir() if p.name.lower().startswith(("torch", "nvidia")))
    assert own == []
    listed = run(
        [str(installed.venv / "bin" / "pip"), "list", "--format=json", "--path", str(site)],
        installed.env,
    )
    assert not {d["name"].lower() for d in json.loads(listed.stdout)} & {"torch", "torchvision"}


def test_project_is_installed_editable(installed: Installed) -> None:
    out = installed.python(
        "import importlib.metadata as md, importlib.util as u; "
        "print(md.version('epic-kitchens-pipeline'), u.find_spec('epicdata').origin)"
    )
    version, origin = out.split()
    assert version == "0.1.0"
    assert Path(origin).resolve() == ROOT / "epicdata" / "__init__.py"
    assert (installed.venv / "bin" / "epic-train").exists()


def test_summary_line_names_versions_build_and_path(installed: Installed) -> None:
    summary = installed.result.stdout.strip().splitlines()[-1]
    assert summary.startswith(
        f"ok: torch {TORCH_VERSION} (CPU build), torchvision {TORCHVISION_VERSION}, torch from "
    )
    assert str((installed.module / "torch").resolve()) in summary


def test_pins_and_pip_conf(installed: Installed) -> None:
    pins = installed.venv / "torch-pins.txt"
    expected = f"torch=={TORCH_VERSION}\ntorchvision=={TORCHVISION_VERSION}\n"
    # And the numpy the module's python has, if any (torch 2.1 needs numpy 1.x).
    numpy = subprocess.run(
        [sys._base_executable, "-c", "import importlib.metadata as m; print(m.version('numpy'))"],
        capture_output=True,
        text=True,
    )
    if numpy.returncode == 0:
        expected += f"numpy=={numpy.stdout.strip()}\n"
    assert pins.read_text() == expected
    assert (installed.venv / "pip.conf").read_text() == f"[install]\nconstraint = {pins}\n"


def test_later_pip_install_keeps_the_pins(installed: Installed, tmp_path: Path) -> None:
    """pip reads $VIRTUAL_ENV/pip.conf: a later install of PyPI's torchvision (a stand-in,
    offered offline) is refused by the pins, with no -c on its command line; with pip's
    config files switched off the same command is accepted."""
    index = tmp_path / "index"
    index.mkdir()
    make_wheel(index, "torchvision", PYPI_TORCHVISION, {"torchvision/__init__.py": ""})
    later = [str(installed.venv / "bin" / "pip"), "install", "--dry-run", "--no-deps"]
    later += ["--no-index", "--find-links", str(index), f"torchvision=={PYPI_TORCHVISION}"]
    refused = run(later, installed.env, check=False)
    assert refused.returncode != 0
    assert f"(constraint) torchvision=={TORCHVISION_VERSION}" in refused.stdout + refused.stderr
    unpinned = run(later, {**installed.env, "PIP_CONFIG_FILE": os.devnull})
    assert f"Would install torchvision-{PYPI_TORCHVISION}" in unpinned.stdout


def test_rerun_reuses_the_venv(installed: Installed) -> None:
    again = run(["bash", str(INSTALL), str(installed.venv)], installed.env)
    assert again.stdout.strip().splitlines()[-1].startswith(f"ok: torch {TORCH_VERSION} ")


def test_module_without_torchvision_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    module = make_module(tmp_path / "module", with_torchvision=False)
    env = module_env(
        module,
        base_python_bin(tmp_path / "bin"),
        LOADEDMODULES="Python/3.11.3-GCCcore-12.3.0:PyTorch/2.1.2-foss-2023a-CUDA-12.1.1",
    )
    venv = tmp_path / "venv"
    result = run(["bash", str(INSTALL), str(venv)], env, check=False)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: no torchvision beside the module's torch 2.1.2 (")
    assert "PyTorch-bundle/2.1.2-foss-2023a-CUDA-12.1.1" in line
    assert "module spider torchvision" in line
    assert not venv.exists()


def test_old_readme_venv_with_its_own_torch_is_refused(tmp_path: Path) -> None:
    """A venv made by the old recipe holds PyPI's torch and CUDA libraries: the module's
    PYTHONPATH may hide that torch from ``import``, but pip and the torchvision installed
    with it still see their own, so the venv must be remade, not reused."""
    module = make_module(tmp_path / "module", with_torchvision=True)
    env = module_env(module, base_python_bin(tmp_path / "bin"))
    venv = tmp_path / "venv"
    python = str(tmp_path / "bin" / "python")
    run([python, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], env)
    stray = make_wheel(
        tmp_path, "torch", "2.14.1", {"torch/__init__.py": '__version__ = "2.14.1"\n'}
    )
    install_into(venv_site_packages(venv), [stray])
    result = run(["bash", str(INSTALL), str(venv)], env, check=False)
    assert result.returncode == 2
    assert "torch 2.14.1" in result.stderr
    assert f"rm -rf {venv}" in result.stderr
    assert not (venv / "torch-pins.txt").exists()


def test_old_readme_recipe_would_replace_the_modules_torch(tmp_path: Path) -> None:
    """Issue 10: plain ``pip install -e .`` in a --system-site-packages venv over a PyTorch
    module without torchvision pulls torchvision, and with it another torch, from the index.
    A dry run: pip resolves, reads metadata and installs nothing."""
    module = make_module(tmp_path / "module", with_torchvision=False)
    env = module_env(module, base_python_bin(tmp_path / "bin"))
    venv = tmp_path / "venv"
    run([str(tmp_path / "bin" / "python"), "-m", "venv", "--system-site-packages", str(venv)], env)
    report = tmp_path / "report.json"
    old_recipe = [str(venv / "bin" / "pip"), "install", "--dry-run", "--report", str(report)]
    result = run([*old_recipe, "-e", str(ROOT)], env, check=False)
    if result.returncode != 0:
        pytest.fail(
            "the configured pip index could not resolve the old recipe (no network?), so this "
            f"test cannot show what it would install:\n{result.stderr[-3000:]}"
        )
    to_install = {
        item["metadata"]["name"].lower(): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    assert "torchvision" in to_install
    assert to_install.get("torch") not in (None, TORCH_VERSION)
