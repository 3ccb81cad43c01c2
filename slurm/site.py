"""A cluster site in one file: account, partitions, GPU request, resources per job type,
modules, venv, logs. Written in shell syntax (``KEY=value`` lines), so the job scripts
source it on the node and this module reads it through bash: one meaning for both.

Examples: ``slurm/sites/wice.env``, ``slurm/sites/genius.env``, ``slurm/sites/cpu.env``
(``epic-slurm site-example NAME`` prints one without a checkout).
"""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from epicdata.console import SITE_VARIABLE
from epicdata.errors import EpicInputError

#: The job scripts, lib.sh, the site examples and the sweep grids: this package's own data
#: files, found wherever the package is installed (a checkout or a wheel). The jobs get the
#: folder as EPIC_SCRIPTS.
SCRIPTS = Path(str(resources.files("epicslurm")))

#: Job types: their script, whether they run on the GPU partition, and the prefix of
#: their resource variables (EPIC_<PREFIX>_CPUS / _MEM / _TIME).
JOBS: dict[str, tuple[str, bool, str]] = {
    "extract": ("extract.sbatch", False, "EXTRACT"),
    "check": ("check.sbatch", False, "CHECK"),
    "train": ("train.sbatch", True, "TRAIN"),
    "train-multi": ("train_multi.sbatch", True, "TRAIN"),
    "validate": ("validate.sbatch", True, "VALIDATE"),
    "sweep": ("sweep.sbatch", True, "TRAIN"),
}
REQUIRED = ("EPIC_PARTITION_CPU", "EPIC_PARTITION_GPU", "EPIC_VENV", "EPIC_LOGS")


@dataclass(frozen=True)
class Site:
    path: Path
    values: dict[str, str]

    def get(self, name: str, default: str = "") -> str:
        return self.values.get(name, default)

    @property
    def logs(self) -> Path:
        return Path(self.values["EPIC_LOGS"])

    def log_path(self, job: str, array: bool) -> str:
        """One pattern for every job log: LOGS/epic-<job>-<jobid>.out (arrays: <id>_<task>)."""
        return str(self.logs / f"epic-{job}-{'%A_%a' if array else '%j'}.out")

    def sbatch_options(
        self,
        job: str,
        *,
        array: str | None = None,
        nodes: int = 1,
        gpus_per_node: int = 1,
    ) -> list[str]:
        """Every sbatch option of ``job`` at this site, from the site file alone."""
        _script, gpu, prefix = JOBS[job]
        options = [f"--job-name=epic-{job}", f"--output={self.log_path(job, array is not None)}"]
        for name, flag in (("EPIC_ACCOUNT", "--account"), ("EPIC_CLUSTERS", "--clusters")):
            if self.get(name):
                options.append(f"{flag}={self.get(name)}")
        options.append(
            f"--partition={self.get('EPIC_PARTITION_GPU' if gpu else 'EPIC_PARTITION_CPU')}"
        )
        if job == "train-multi":
            options += [f"--nodes={nodes}", f"--ntasks-per-node={gpus_per_node}"]
        else:
            options.append("--ntasks=1")
        for suffix, flag in (("CPUS", "--cpus-per-task"), ("MEM", "--mem"), ("TIME", "--time")):
            value = self.get(f"EPIC_{prefix}_{suffix}")
            if value:
                options.append(f"{flag}={value}")
        request = self.get("EPIC_GPU_REQUEST")
        if gpu and request:
            count = gpus_per_node if job == "train-multi" else 1
            options += shlex.split(request.replace("{n}", str(count)))
        if array is not None:
            options.append(f"--array={array}")
        options += shlex.split(self.get("EPIC_SBATCH_EXTRA"))
        return options


def site_path(given: str | Path | None) -> Path:
    """``--site`` or $EPIC_SITE, absolute; an error naming both when neither is set."""
    value = given or os.environ.get(SITE_VARIABLE)
    if not value:
        raise EpicInputError(
            "no site file",
            where=f"--site / ${SITE_VARIABLE}",
            fix=f"copy an example from {SCRIPTS / 'sites'} (wice.env, genius.env, cpu.env), "
            f"edit it, and pass --site FILE or export {SITE_VARIABLE}=FILE",
        )
    return Path(value).expanduser().resolve()


def load_site(given: str | Path | None = None) -> Site:
    """Read a site file as bash reads it (``set -a; source FILE``): its EPIC_* values."""
    path = site_path(given)
    if not path.is_file():
        raise EpicInputError(
            "site file not found",
            where=str(path),
            fix=f"copy one of {SCRIPTS / 'sites'} there and edit it",
        )
    script = 'set -a; source "$1" >/dev/null || exit 97; env -0'
    # The caller's own EPIC_* variables stay out: only the file's count.
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPIC_")}
    result = subprocess.run(
        ["bash", "-c", script, "site", str(path)],
        capture_output=True,
        timeout=30,
        check=False,
        env=env,
    )
    if result.returncode != 0:
        raise EpicInputError(
            "the site file does not source cleanly in bash",
            where=str(path),
            fix="fix the line bash names below (KEY=value, quote values with spaces)",
            details=result.stderr.decode(errors="replace").strip(),
        )
    values = {}
    for item in result.stdout.split(b"\0"):
        key, _, value = item.decode(errors="replace").partition("=")
        if key.startswith("EPIC_"):
            values[key] = value
    missing = [name for name in REQUIRED if not values.get(name)]
    if missing:
        raise EpicInputError(
            f"the site file does not set {', '.join(missing)}",
            where=str(path),
            fix=f"add them (see the examples in {SCRIPTS / 'sites'})",
        )
    return Site(path, values)


def site_example_text(name: str | None) -> str:
    """The example site file ``name`` (``wice`` or ``wice.env``) as text; without a name, the
    list of examples and where they lie (the sweep grids are beside them, in sweeps/)."""
    examples = sorted(p.stem for p in (SCRIPTS / "sites").glob("*.env"))
    if name is None:
        lines = [f"{stem}\t{SCRIPTS / 'sites' / (stem + '.env')}" for stem in examples]
        return "\n".join([*lines, f"sweep grids: {SCRIPTS / 'sweeps'}"]) + "\n"
    stem = name.removesuffix(".env")
    if stem not in examples:
        raise EpicInputError(
            f"no example site file named {name!r}",
            where="epic-slurm site-example NAME",
            fix=f"choose one of {', '.join(examples)}",
        )
    return (SCRIPTS / "sites" / f"{stem}.env").read_text()
