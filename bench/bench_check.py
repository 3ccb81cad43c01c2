"""Benchmark `epic-check` (default mode) against reading the shard files with `cat`.

Usage::

    python bench/bench_check.py [--work DIR]

Builds a store from bench_extract.py's source video when ``--work`` holds none (run that
benchmark first with the same ``--work`` to reuse it), drops nothing from the page cache
(no root needed), so both sides read from the same cache state: `cat` first, then check.
Writes the table into docs/benchmarks.md (section ``check``).
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

from bench.report import machine_line, markdown_table, write_section
from epicdata.store import Manifest, shard_path
from preprocess.check import check_store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="bench_extract.py's work folder.")
    parser.add_argument("--repeats", type=int, default=3, help="Runs per method (best is kept).")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-check-"))
    store = work / "store-1"
    if not store.exists():
        from bench.bench_extract import epic_run, make_source

        video = work / "videos" / "P01" / "videos" / "P01_01.MP4"
        if not video.exists():
            make_source(video, 20.0)
        epic_run(work / "videos", work, 1, 20.0)
    paths = [shard_path(store, s.index) for s in Manifest.load(store).shards]
    size = sum(p.stat().st_size for p in paths)

    def timed(fn) -> float:  # noqa: ANN001 - a zero-argument callable
        best = float("inf")
        for _ in range(args.repeats):
            started = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - started)
        return best

    cat = timed(
        lambda: subprocess.run(["cat", *map(str, paths)], stdout=subprocess.DEVNULL, check=True)
    )
    check = timed(lambda: check_store(store))
    deep = timed(lambda: check_store(store, deep=True))
    rows = [
        ["`cat shard > /dev/null`", f"{size / cat / 1e6:,.0f}", "1.00x"],
        ["`epic-check` (keys, metadata, CRC-32 of every frame)", f"{size / check / 1e6:,.0f}", f"{cat / check:.2f}x"],
        ["`epic-check --deep` (+ decode every JPEG)", f"{size / deep / 1e6:,.0f}", f"{cat / deep:.2f}x"],
    ]  # fmt: skip
    body = "\n".join([
        f"{machine_line()}. Store: {size / 1e6:.1f} MB, one shard from bench_extract.py; page "
        f"cache warm for both (`python bench/bench_check.py`); best of {args.repeats}.",
        "",
        markdown_table(["method", "MB/s", "speed vs cat"], rows),
    ])  # fmt: skip
    write_section("check", "Integrity check: `epic-check` vs `cat`", body)


if __name__ == "__main__":
    main()
