"""Benchmark the keep modes of `epic-extract run` and how ffmpeg's ``select`` is built.

Usage::

    python -m bench.bench_keep [--seconds 60] [--segments-per-minute 40] [--repeats 2]

On a 1920x1080 H.264 video at 59.94 fps (testsrc2) with random annotated segments at a
real EPIC density (P22_03: 24 per minute, median 91 frames; here 40 per minute, 30-180
frames), in the same run: frames decoded per second and bytes written by ``keep=all``
(the baseline), ``keep=segments`` and ``keep=sampled`` (8 frames), with the ``select``
filter capped at several numbers of ``between()`` terms (the planned ranges merged into a
superset by closing the smallest gaps) or left out (every frame scaled and encoded, the
unplanned ones dropped in Python). ffmpeg's expression parser refuses more than 100 terms
(measured on 5.1), which a real video's sampled frames exceed 40-fold.
Writes the table into docs/benchmarks.md (section ``keep``).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import preprocess.decode as decode_module
from bench.bench_extract import VIDEO_ID, make_source
from bench.report import machine_line, markdown_table, write_section
from epicdata.annotations import SPLIT_FILES, TIMESTAMP_COLUMNS
from epicdata.frames import format_timestamp
from epicdata.layout import shard_path
from epicdata.manifest import Manifest
from preprocess.extract import run_shard
from preprocess.plan import plan_store

RATE = 60


def write_annotations(folder: Path, seconds: float, per_minute: float, seed: int = 0) -> int:
    """A test split of random segments (30-180 frames) over the video; returns their count."""
    rng = random.Random(seed)
    count = int(seconds / 60 * per_minute)
    rows = [",".join(TIMESTAMP_COLUMNS)]
    last = int(seconds * RATE) - 200
    for i in range(count):
        start = rng.randint(1, last)
        stop = start + rng.randint(30, 180)
        ts = format_timestamp((start - 1) / RATE)
        rows.append(
            f"{VIDEO_ID}_{i},P01,{VIDEO_ID},{ts},{ts},"
            f"{format_timestamp((stop - 1) / RATE)},{start},{stop}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SPLIT_FILES["test"]).write_text("\n".join(rows) + "\n")
    return count


def run_mode(
    video_root: Path, annotations: Path, work: Path, keep: str, terms: int
) -> tuple[float, int, int, int, int]:
    """(seconds, decoded frames, stored frames, shard bytes, planned ranges)."""
    store = work / f"store-{keep}-{terms}"
    shutil.rmtree(store, ignore_errors=True)
    manifest = plan_store(
        store_root=store, annotations_dir=annotations, videos_root=video_root,
        splits=("test",), shards=1, keep=keep, num_frames=(8,),
    )  # fmt: skip
    planned = manifest.shards[0].videos[0]
    ranges = 0 if planned.keep_ranges is None else len(planned.keep_ranges)
    decode_module.MAX_SELECT_TERMS = terms
    started = time.perf_counter()
    result = run_shard(
        store_root=store, shard_index=0, workers=len(os.sched_getaffinity(0)), tmp_dir=work / "tmp"
    )
    seconds = time.perf_counter() - started
    video = result.videos[0]
    size = shard_path(store, 0).stat().st_size
    Manifest.load(store)  # the store is complete and readable
    return seconds, video.decoded_frames, video.stored_frames, size, ranges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="Length of the test video.")
    parser.add_argument("--segments-per-minute", type=float, default=40.0)
    parser.add_argument("--repeats", type=int, default=2, help="Runs per method (best kept).")
    parser.add_argument("--work", type=Path, help="Work folder (default: a temp folder).")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-keep-"))
    video_root = work / "videos"
    video = video_root / "P01" / "videos" / f"{VIDEO_ID}.MP4"
    if not video.exists():
        make_source(video, args.seconds)
    annotations = work / "ann"
    segments = write_annotations(annotations, args.seconds, args.segments_per_minute)
    default_terms = decode_module.MAX_SELECT_TERMS
    methods = [("all", 0)]
    methods += [("segments", t) for t in (0, default_terms)]
    methods += [("sampled", t) for t in (0, 16, 32, 64)]
    results = {}
    for keep, terms in methods:
        results[keep, terms] = min(
            (run_mode(video_root, annotations, work, keep, terms) for _ in range(args.repeats)),
            key=lambda r: r[0],
        )
    decode_module.MAX_SELECT_TERMS = default_terms
    base_seconds, base_decoded, _, base_bytes, _ = results["all", 0]
    base_fps = base_decoded / base_seconds
    rows = []
    for (keep, terms), (secs, decoded, stored, size, ranges) in results.items():
        select = (
            "none"
            if keep == "all"
            else ("none (drop in Python)" if terms == 0 else f"<= {terms} ranges")
        )
        chosen = " **(chosen)**" if keep != "all" and terms == default_terms else ""
        rows.append(
            [f"keep={keep}{chosen}", ranges, select, stored, f"{decoded / secs:.0f}",
             f"{decoded / secs / base_fps:.2f}x", f"{size / 1e6:.1f}", f"{size / base_bytes:.2f}x"]
        )  # fmt: skip
    body = "\n".join([
        f"{machine_line()}. Source: {args.seconds:.0f} s of 1920x1080 H.264 (testsrc2) at "
        f"59.94 fps, {segments} random segments of 30-180 frames ({args.segments_per_minute:.0f} "
        f"per minute), re-timed to 60 fps, short side 256; all cores; best of {args.repeats} "
        f"(`python -m bench.bench_keep`).",
        "",
        markdown_table(["mode", "planned ranges", "ffmpeg select", "frames stored",
                        "decoded frames/s", "vs keep=all", "shard MB", "vs keep=all"], rows),
        "",
        f"Decision: `select` with at most {default_terms} `between()` terms "
        "(`preprocess.decode.MAX_SELECT_TERMS`), far below the parser's limit of 100 terms "
        "(ffmpeg 5.1; the real-data test builds the graph of the videos with the most segments "
        "and has ffmpeg parse it). Frames in the merged superset that are not planned are "
        "dropped in Python before the shard.",
    ])  # fmt: skip
    write_section("keep", "Keep modes: frames/s and bytes vs `keep=all`", body)


if __name__ == "__main__":
    main()
