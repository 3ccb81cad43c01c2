"""Benchmark `epic-check` against reading the shard files with `cat`, and against the
cursor walk it verified frames with before it looked every frame up as the reader does.

Usage::

    python -m bench.bench_check [--work DIR] [--seconds 600] [--repeats 3]

Builds, once per ``--work``, a one-shard ``keep=all`` store from a ``--seconds`` long
456x256 H.264 video (testsrc2 at 59.94 fps, re-timed to 60 fps: 36,000 frames by default,
a shard of realistic size; 456x256 is what bench_extract's 1080p source is stored at).
Measures every method twice: with the page cache warm (the CPU cost of checking), and
cold, after dropping the page cache before each run (the disk-bound case a fresh store on
a cluster is in; needs root to write /proc/sys/vm/drop_caches, otherwise the cold column
says so). Also measures what starting the child process each shard is read in costs,
with the 'fork' and the 'spawn' start methods.
Writes the table into docs/benchmarks.md (section ``check``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.report import machine_line, markdown_table, write_section
from epicdata.checksums import frame_checksum, unpack_checksums
from epicdata.ffmpeg_bin import ffmpeg_path
from epicdata.layout import checksum_key, shard_path, video_meta_key
from epicdata.lmdb_env import open_shard_readonly
from epicdata.manifest import Manifest
from epicdata.metadata import VideoMeta
from epicdata.ranges import frames_in_ranges
from preprocess.check import check_store

DROP_CACHES = Path("/proc/sys/vm/drop_caches")
VIDEO_ID = "P01_01"


def can_drop_page_cache() -> bool:
    return os.access(DROP_CACHES, os.W_OK)


def drop_page_cache() -> None:
    os.sync()
    DROP_CACHES.write_text("3\n")


def build_store(work: Path, seconds: float) -> Path:
    """A one-shard keep=all store of a ``seconds`` long 456x256 video, made once."""
    # Function-local: child_start_s's spawned child imports this module, and it should pay
    # a checker's imports (preprocess.check), not the extractor's.
    from preprocess.extract import run_shard
    from preprocess.plan import plan_store

    store = work / f"check-store-{seconds:g}s"
    if store.exists():
        return store
    video = work / f"check-videos-{seconds:g}s" / "P01" / "videos" / f"{VIDEO_ID}.MP4"
    video.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [ffmpeg_path(), "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
         f"testsrc2=size=456x256:rate=60000/1001:duration={seconds}", "-c:v", "libx264",
         "-preset", "veryfast", "-crf", "20", "-pix_fmt", "yuv420p", str(video)],
        check=True,
    )  # fmt: skip
    annotations = work / "check-ann"
    annotations.mkdir(parents=True, exist_ok=True)
    (annotations / "EPIC_100_test_timestamps.csv").write_text(
        "narration_id,participant_id,video_id,narration_timestamp,start_timestamp,"
        "stop_timestamp,start_frame,stop_frame\n"
        f"{VIDEO_ID}_0,P01,{VIDEO_ID},00:00:01.00,00:00:01.00,00:00:02.00,60,120\n"
    )
    plan_store(
        store_root=store, annotations_dir=annotations, videos_root=video.parents[2],
        splits=("test",), shards=1, keep="all",
    )  # fmt: skip
    run_shard(store_root=store, shard_index=0, tmp_dir=work / "tmp")
    return store


def cursor_walk(store: Path) -> None:
    """What `epic-check` did per video before it looked every frame up: one cursor walk
    over the video's keys in key order, each key parsed, each value's CRC-32 compared with
    the stored checksums, in this process."""
    for plan in Manifest.load(store).shards:
        env = open_shard_readonly(shard_path(store, plan.index), sequential=True)
        with env.begin(buffers=True) as txn:
            for video in plan.videos:
                vid = video.video_id
                meta = VideoMeta.from_bytes(bytes(txn.get(video_meta_key(vid))))
                sums = unpack_checksums(bytes(txn.get(checksum_key(vid))))
                frames = frames_in_ranges(meta.stored_ranges)
                prefix = f"{vid}/".encode()
                cursor = txn.cursor()
                i = 0
                positioned = cursor.set_range(prefix)
                while positioned:
                    key = bytes(cursor.key())
                    if not key.startswith(prefix):
                        break
                    frame = int(key[len(prefix) :])
                    if frames[i] != frame or frame_checksum(cursor.value()) != sums[i]:
                        raise RuntimeError(f"{vid} frame {frame}: the store is damaged")
                    i += 1
                    positioned = cursor.next()
        env.close()


def _nothing() -> None:
    pass


def child_start_s(method: str, repeats: int) -> float:
    """Best time to start and join a child process that does nothing (the spawned child
    imports this module, and with it preprocess.check, as a spawned checker would)."""
    context = multiprocessing.get_context(method)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        child = context.Process(target=_nothing)
        child.start()
        child.join()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="Work folder (default: a temp folder).")
    parser.add_argument("--repeats", type=int, default=3, help="Runs per method (best is kept).")
    parser.add_argument("--seconds", type=float, default=600.0, help="Length of the test video.")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-check-"))
    store = build_store(work, args.seconds)
    paths = [shard_path(store, s.index) for s in Manifest.load(store).shards]
    size = sum(p.stat().st_size for p in paths)
    report = check_store(store)
    assert report.ok, report.problems
    frames = sum(s.frames for s in report.shards)

    def timed(fn: Callable[[], object], cold: bool) -> float:
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
        ("before: a cursor walk in key order + CRC-32 of every frame", lambda: cursor_walk(store)),
        (
            "`epic-check`: a lookup of every frame's key, as the reader does, + CRC-32, in a "
            "child process per shard",
            lambda: check_store(store),
        ),
        ("`epic-check --deep` (+ decode every JPEG)", lambda: check_store(store, deep=True)),
    ]
    can_drop = can_drop_page_cache()
    rows, base, walk = [], {}, {}
    for name, fn in methods:
        row = [name]
        for cold in (False, True):
            if cold and not can_drop:
                row += ["(needs root)", "", ""]
                continue
            seconds = timed(fn, cold)
            base.setdefault(cold, seconds)
            if name.startswith("before"):
                walk[cold] = seconds
            row += [
                f"{size / seconds / 1e6:,.0f}",
                f"{base[cold] / seconds:.2f}x",
                f"{walk[cold] / seconds:.2f}x" if cold in walk else "",
            ]
        rows.append(row)
    fork_s, spawn_s = child_start_s("fork", 20), child_start_s("spawn", 5)
    body = "\n".join([
        f"{machine_line()}. Store: one shard of {frames:,} frames, {size / 1e6:,.1f} MB "
        f"(keep=all of {args.seconds:.0f} s of 456x256 H.264 at 60 fps); warm: page cache "
        f"holds the shard; cold: page cache dropped before each run "
        f"(`python -m bench.bench_check`); best of {args.repeats}. Ratios are speeds "
        f"relative to `cat` and to the cursor walk of the previous version (1.00x: as fast).",
        "",
        markdown_table(
            ["method", "warm MB/s", "vs cat", "vs walk", "cold MB/s", "vs cat", "vs walk"],
            rows,
        ),
        "",
        f"Starting the child process a shard is read in: fork {fork_s * 1e3:.1f} ms, "
        f"spawn {spawn_s * 1e3:.0f} ms (best of 20 and 5). Decision: fork (the checker "
        f"holds no shard open when it forks).",
    ])  # fmt: skip
    write_section("check", "Integrity check: `epic-check` vs `cat`", body)


if __name__ == "__main__":
    main()
