"""How much memory this process may use: what a store's reader sizes its reading by."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _meminfo_total() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return None


def _cgroup_limits(cgroup_file: Path, root: Path) -> list[int]:
    """The memory limits of this process's cgroup and of every cgroup above it (SLURM sets
    a job's limit on the job's cgroup; its steps run in cgroups below that)."""
    limits = []
    with contextlib.suppress(OSError):
        for line in cgroup_file.read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controllers == "":  # cgroup v2: memory.max
                base, name = root, "memory.max"
            elif "memory" in controllers.split(","):
                base, name = root / "memory", "memory.limit_in_bytes"
            else:
                continue
            folder = base / path.lstrip("/")
            while True:
                with contextlib.suppress(OSError, ValueError):
                    text = (folder / name).read_text().strip()
                    if text != "max":
                        limits.append(int(text))
                if folder == base or base not in folder.parents:
                    break
                folder = folder.parent
    return limits


def memory_limit_bytes(
    cgroup_file: Path = Path("/proc/self/cgroup"), root: Path = CGROUP_ROOT
) -> int:
    """The least of the machine's memory and every cgroup limit over this process (page
    cache included, as cgroups count it); 8 GiB where none can be read (not Linux)."""
    found = [*_cgroup_limits(cgroup_file, root)]
    total = _meminfo_total()
    if total is not None:
        found.append(total)
    if not found and hasattr(os, "sysconf"):
        with contextlib.suppress(ValueError, OSError):
            found.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    return min(found) if found else 8 << 30
