"""Shared output for benchmarks: print a table and replace this benchmark's section of
docs/benchmarks.md (between ``<!-- bench:NAME -->`` markers), leaving the others alone."""

from __future__ import annotations

import os
import platform
import re
import time
from collections.abc import Sequence
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
_HEADER = (
    "# Benchmarks\n\n"
    "Every figure here is written by a script in `bench/`; ratios are against a baseline "
    "measured in the same run on the same machine (machines are noisy, ratios less so).\n"
)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def value_range(values: Sequence[float], spec: str) -> str:
    """``min-max`` of ``values``, each formatted with ``spec`` (e.g. ``".2f"``, ``".1%"``)."""
    return f"{min(values):{spec}}-{max(values):{spec}}"


def machine_line() -> str:
    return (
        f"{platform.node() or 'machine'}: {os.cpu_count()} CPUs, {platform.machine()}, "
        f"Python {platform.python_version()}, measured {time.strftime('%Y-%m-%d')}"
    )


def write_section(name: str, title: str, body: str, path: Path = BENCHMARKS_MD) -> Path:
    """Print ``body`` and store it as section ``name`` of docs/benchmarks.md."""
    print(body)
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n## {title}\n\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else _HEADER
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = (
        pattern.sub(lambda _: block, text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + block + "\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
