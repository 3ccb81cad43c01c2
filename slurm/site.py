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
    "features": ("features.sbatch", True, "VALIDATE"),
    "sweep": ("sweep.sbatch", True, "TRAIN"),
    # Fusion reads two predictions files on the CPU: the check job's resources serve it.
    "fuse": ("fuse.sbatch", False, "CHECK"),
}
#: The site's flow store (``epic-slurm pipeline --flow-store``), beside its EPIC_STORE; like
#: that one, the caller's environment variable wins over the site file's.
FLOW_STORE_VARIABLE = "EPIC_FLOW_STORE"
REQUIRED = ("EPIC_PARTITION_CPU", "EPIC_PARTITION_GPU", "EPIC_VENV", "EPIC_LOGS")
#: Site values that epic-slurm splits into sbatch words (shell quoting).
SHELL_WORDS = ("EPIC_GPU_REQUEST", "EPIC_SBATCH_EXTRA")
#: 1: a SIGTERM (scancel, preemption on a PreemptMode=CANCEL cluster, a time limit without
#: the USR1 signal) requeues a training job like USR1 does; 0 or empty: it stops it (exit
#: 76, resumable). slurm/lib.sh reads it on the node, from the site file.
REQUEUE_ON_TERM = "EPIC_REQUEUE_ON_TERM"


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
    _check_values(path, values)
    return Site(path, values)


def _check_values(path: Path, values: dict[str, str]) -> None:
    """Refuse values that would only fail later, in the middle of a chain: sbatch words
    that do not split (an unbalanced quote), a requeue switch that is neither 0 nor 1."""
    for key in SHELL_WORDS:
        try:
            shlex.split(values.get(key, ""))
        except ValueError as exc:
            raise EpicInputError(
                f"{key} does not split into sbatch options: {exc}",
                where=f"{path}: {key}={values[key]}",
                fix="balance its quotes, e.g. EPIC_SBATCH_EXTRA='--comment=\"a b\"' (the "
                "value, once bash has read the file, is split as shell words)",
            ) from None
    if values.get(REQUEUE_ON_TERM, "") not in ("", "0", "1"):
        raise EpicInputError(
            f"{REQUEUE_ON_TERM} must be 0 or 1, not {values[REQUEUE_ON_TERM]!r}",
            where=str(path),
            fix=f"set {REQUEUE_ON_TERM}=1 to requeue training jobs on SIGTERM (scancel, "
            "preemption), 0 or nothing to stop them (docs/cluster.md)",
        )


def _writable_folder(path: Path) -> str | None:
    """Why ``path`` cannot be (made and) written as a folder, or None when it can."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def path_problems(site: Site, store: Path | None = None) -> list[str]:
    """What in the site's paths would fail in every job: a venv without ``bin/activate``
    (each job sources it), a log folder that cannot be made (sbatch then fails without a
    log), a store whose parent folder does not exist. One line each, with the fix."""
    problems = []
    venv = Path(site.get("EPIC_VENV"))
    if not (venv / "bin" / "activate").is_file():
        problems.append(
            f"EPIC_VENV={venv}: no {venv / 'bin' / 'activate'}, which every job sources; "
            f"make the venv (bash {SCRIPTS / 'install.sh'} {venv}) or correct EPIC_VENV"
        )
    why = _writable_folder(site.logs)
    if why:
        problems.append(f"EPIC_LOGS={site.logs}: {why}; choose a folder you can write")
    if store is not None and not store.parent.is_dir():
        problems.append(
            f"store {store}: its parent folder {store.parent} does not exist; create it or "
            "correct --store / EPIC_STORE"
        )
    return problems


def require_paths(site: Site, store: Path | None = None) -> None:
    """:func:`path_problems` as one error (exit 2) before anything is submitted."""
    problems = path_problems(site, store)
    if problems:
        raise EpicInputError(
            f"the site's paths would fail in every job ({len(problems)} problem"
            f"{'s' if len(problems) > 1 else ''})",
            where=str(site.path),
            fix="fix them in the site file (or the option named), then submit again",
            details="\n".join(f"  {p}" for p in problems),
        )


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
