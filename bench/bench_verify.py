"""Benchmark what the reader's CRC-32 check of every frame costs, warm and cold.

Usage::

    python -m bench.bench_verify [--seconds 60] [--clips 400] [--repeats 3]

A ``keep=all`` store of a 1920x1080 H.264 video (testsrc2, 59.94 fps; the one of
bench_extract) is read as training reads it: 8-frame clips at ``linspace`` positions over
random 120-frame windows, one process. In the same run, with ``FrameStore(verify=False)``
as the baseline: the read stage alone (JPEG bytes of a clip) and the whole clip load
(read + ``torchvision.io.decode_jpeg``), warm (page cache holds the shard) and cold (page
cache dropped before each run; needs root, else the cold rows are left out).
Writes the table into docs/benchmarks.md (section ``verify``).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torchvision

from bench.bench_extract import VIDEO_ID, make_source
from bench.report import machine_line, markdown_table, write_section
from epicdata.annotations import SPLIT_FILES, TIMESTAMP_COLUMNS
from epicdata.sampling import linspace_frames
from epicdata.store import FrameStore
from preprocess.extract import run_shard
from preprocess.plan import plan_store


def build_store(work: Path, seconds: float) -> Path:
    video_root = work / "videos"
    video = video_root / "P01" / "videos" / f"{VIDEO_ID}.MP4"
    if not video.exists():
        make_source(video, seconds)
    store = work / "store"
    if (store / "shards" / "shard-00000.lmdb").exists():
        return store
    annotations = work / "ann"
    annotations.mkdir(parents=True, exist_ok=True)
    (annotations / SPLIT_FILES["test"]).write_text(
        ",".join(TIMESTAMP_COLUMNS) + "\n"
        f"{VIDEO_ID}_0,P01,{VIDEO_ID},00:00:01.00,00:00:01.00,00:00:02.00,60,120\n"
    )
    shutil.rmtree(store, ignore_errors=True)
    plan_store(
        store_root=store, annotations_dir=annotations, videos_root=video_root,
        splits=("test",), shards=1, keep="all",
    )  # fmt: skip
    run_shard(store_root=store, shard_index=0, tmp_dir=work / "tmp")
    return store


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def clips(last_frame: int, count: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        start = rng.randint(1, last_frame - 120)
        out.append(linspace_frames(start, start + 119, 8).tolist())
    return out


def run(store_root: Path, requests: list[list[int]], *, verify: bool, decode: bool) -> float:
    """Clips per second."""
    store = FrameStore(store_root, verify=verify)
    started = time.perf_counter()
    for frames in requests:
        jpegs = store.read_frames(VIDEO_ID, frames)
        if decode:
            for jpeg in jpegs:
                torchvision.io.decode_jpeg(torch.frombuffer(bytearray(jpeg), dtype=torch.uint8))
    seconds = time.perf_counter() - started
    store.close()
    return len(requests) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="Length of the test video.")
    parser.add_argument("--clips", type=int, default=400, help="Clips per run.")
    parser.add_argument("--repeats", type=int, default=3, help="Runs per method (best kept).")
    parser.add_argument("--work", type=Path, help="Work folder (default: a temp folder).")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-verify-"))
    store = build_store(work, args.seconds)
    last = FrameStore(store).video_meta(VIDEO_ID).decoded_frames
    cold_ok = drop_caches()
    rows = []
    clip_seconds = {}
    for stage, decode in (("read stage (JPEG bytes of a clip)", False), ("clip load (read + decode)", True)):  # fmt: skip
        for cache in ("warm", "cold") if cold_ok else ("warm",):
            rates = {False: 0.0, True: 0.0}
            for repeat in range(args.repeats):  # interleaved: drift hits both alike
                requests = clips(last, args.clips, seed=repeat)
                for verify in (False, True):
                    if cache == "cold":
                        drop_caches()
                    else:
                        run(store, requests, verify=verify, decode=False)  # warm up
                    rates[verify] = max(
                        rates[verify], run(store, requests, verify=verify, decode=decode)
                    )
            cost = 1 / rates[True] - 1 / rates[False]
            if decode:
                clip_seconds[cache] = 1 / rates[False]
            rows.append([stage, cache, f"{rates[False]:,.0f}", f"{rates[True]:,.0f}",
                         f"{rates[True] / rates[False]:.2f}x", f"{1e6 * cost:+.0f} us"])  # fmt: skip
    # The read stage isolates what verifying adds; the decode rows are too noisy for it.
    shares = ", ".join(
        f"{cache} {100 * (1 / float(r[3].replace(',', '')) - 1 / float(r[2].replace(',', ''))) / clip_seconds[cache]:.1f}%"
        for r in rows[: len(clip_seconds)]
        for cache in [r[1]]
    )
    body = "\n".join([
        f"{machine_line()}. Store: keep=all, {last:,} frames of 1920x1080 H.264 (testsrc2) at "
        f"short side 256; {args.clips} 8-frame clips over random 120-frame windows per run, "
        f"one process; best of {args.repeats} (`python -m bench.bench_verify`)"
        + ("" if cold_ok else "; cold rows left out (dropping the page cache needs root)")
        + ".",
        "",
        markdown_table(["stage", "cache", "clips/s unverified", "clips/s verified",
                        "verified vs unverified", "cost per clip"], rows),
        "",
        f"Verification's cost (the read stage's difference) as a share of an unverified clip "
        f"load: {shares}.",
        "Layout: the CRC-32s of a video are one value in frame order (format 1, unchanged); "
        "the reader finds it once per video and reads, per clip, the one span of it that "
        "covers the clip's frames (one `pread`), so no worker caches checksums. "
        "Verification is on by default (`FrameStore(verify=True)`).",
    ])  # fmt: skip
    write_section("verify", "Reader: cost of verifying every frame's CRC-32", body)


if __name__ == "__main__":
    main()
