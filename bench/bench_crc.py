"""The CRC-32 the store checks on every frame read: zlib's implementation against the
faster ones of the same CRC (same polynomial, same value for every input).

Usage::

    python -m bench.bench_crc [--frame-kb 20] [--repeats 9]

Each implementation checksums the same frame-sized buffer in a loop; the table gives
microseconds per frame (median and range of ``--repeats`` rounds, the implementations
alternated within each round) and the ratio against zlib in the same round. A warm
clip read costs a few tens of microseconds a frame, so zlib's ~11 us is a third of it.
Writes its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time
import zlib
from collections.abc import Callable

from bench.report import machine_line, markdown_table, value_range, write_section


def implementations() -> dict[str, Callable[[bytes], int]]:
    """zlib and those of zlib-ng and ISA-L that are installed (checked equal to zlib's)."""
    found: dict[str, Callable[[bytes], int]] = {"zlib": zlib.crc32}
    for name, module, attr in [
        ("zlib-ng", "zlib_ng.zlib_ng", "crc32"),
        ("isal", "isal.isal_zlib", "crc32"),
    ]:
        try:
            found[name] = getattr(importlib.import_module(module), attr)
        except ImportError:
            continue
    return found


def per_frame_us(fn: Callable[[bytes], int], data: bytes, loops: int) -> float:
    start = time.perf_counter()
    for _ in range(loops):
        fn(data)
    return (time.perf_counter() - start) / loops * 1e6


def measure(
    frame_kb: int, repeats: int, loops: int = 5_000
) -> dict[str, list[tuple[float, float]]]:
    """Per implementation: (us per frame, ratio to zlib in the same round) of each round."""
    data = bytes(range(256)) * (frame_kb * 4)
    impls = implementations()
    for name, fn in impls.items():
        if fn(data) != zlib.crc32(data):
            raise SystemExit(f"bench_crc: {name} gives another CRC than zlib")
    rounds: dict[str, list[tuple[float, float]]] = {name: [] for name in impls}
    for r in range(repeats):
        order = list(impls) if r % 2 == 0 else list(reversed(impls))
        times = {name: per_frame_us(impls[name], data, loops) for name in order}
        for name, us in times.items():
            rounds[name].append((us, times["zlib"] / us))
    return rounds


def report(rounds: dict[str, list[tuple[float, float]]], frame_kb: int) -> str:
    from epicdata.checksums import CRC32_IMPLEMENTATION

    rows = []
    for name, values in rounds.items():
        us = [u for u, _ in values]
        ratio = [x for _, x in values]
        rows.append([name, f"{statistics.median(us):.2f}", value_range(us, ".2f"),
                     f"{statistics.median(ratio):.1f}x", value_range(ratio, ".1f")])  # fmt: skip
    table = markdown_table(
        ["CRC-32 implementation", "us / frame (median)", "range", "speed vs zlib", "range"], rows
    )
    return (
        f"{machine_line()}. One {frame_kb} kB buffer (a frame's size), "
        f"{len(next(iter(rounds.values())))} rounds, implementations alternated. The store "
        f"uses: **{CRC32_IMPLEMENTATION}**.\n\n{table}\n\n"
        "`python -m bench.bench_crc`"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frame-kb", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)
    body = report(measure(args.frame_kb, args.repeats), args.frame_kb)
    write_section("crc", "The CRC-32 of every frame read", body)


if __name__ == "__main__":
    main()
