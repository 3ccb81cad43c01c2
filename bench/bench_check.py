"""Benchmark `epic-check` (default mode) against reading the shard files with `cat`.

Usage::

    python -m bench.bench_check [--work DIR] [--seconds 60]

Builds a store from bench_extract.py's source video when ``--work`` holds none (run that
benchmark first with the same ``--work`` to reuse it). Measures every method twice: with
the page cache warm (the CPU cost of checking), and cold, after dropping the page cache
before each run (the disk-bound case a fresh store on a cluster is in; needs root to
write /proc/sys/vm/drop_caches, otherwise the cold column says so).
Writes the table into docs/benchmarks.md (section ``check``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

from bench.report import machine_line, markdown_table, write_section
from epicdata.store import Manifest, shard_path
from preprocess.check import check_store

DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def can_drop_page_cache() -> bool:
    return os.access(DROP_CACHES, os.W_OK)


def drop_page_cache() -> None:
    os.sync()
    DROP_CACHES.write_text("3\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="bench_extract.py's work folder.")
    parser.add_argument("--repeats", type=int, default=3, help="Runs per method (best is kept).")
    parser.add_argument("--seconds", type=float, default=60.0, help="Length of the test video.")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-check-"))
    store = work / "store-1"
    if not store.exists():
        from bench.bench_extract import epic_run, make_source

        video = work / "videos" / "P01" / "videos" / "P01_01.MP4"
        if not video.exists():
            make_source(video, args.seconds)
        epic_run(work / "videos", work, 1, args.seconds)
    paths = [shard_path(store, s.index) for s in Manifest.load(store).shards]
    size = sum(p.stat().st_size for p in paths)

    def timed(fn, cold: bool) -> float:  # noqa: ANN001 - a zero-argument callable
        best = float("inf")
        for _ in range(args.repeats):
            if cold:
                drop_page_cache()
            started = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - started)
        return best

    methods = [
        (
            "`cat shard > /dev/null`",
            lambda: subprocess.run(
                ["cat", *map(str, paths)], stdout=subprocess.DEVNULL, check=True
            ),
        ),
        ("`epic-check` (keys, metadata, CRC-32 of every frame)", lambda: check_store(store)),
        ("`epic-check --deep` (+ decode every JPEG)", lambda: check_store(store, deep=True)),
    ]
    can_drop = can_drop_page_cache()
    rows, base = [], {}
    for name, fn in methods:
        row = [name]
        for cold in (False, True):
            if cold and not can_drop:
                row += ["(needs root)", ""]
                continue
            seconds = timed(fn, cold)
            base.setdefault(cold, seconds)
            row += [f"{size / seconds / 1e6:,.0f}", f"{base[cold] / seconds:.2f}x"]
        rows.append(row)
    body = "\n".join([
        f"{machine_line()}. Store: {size / 1e6:.1f} MB, one shard from bench_extract.py "
        f"({args.seconds:.0f} s of 1080p); warm: page cache holds the shard; cold: page cache "
        f"dropped before each run (`python -m bench.bench_check`); best of {args.repeats}.",
        "",
        markdown_table(
            ["method", "warm MB/s", "vs cat", "cold MB/s", "vs cat"], rows
        ),
    ])  # fmt: skip
    write_section("check", "Integrity check: `epic-check` vs `cat`", body)


if __name__ == "__main__":
    main()
