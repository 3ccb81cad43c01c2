"""Benchmark ingesting EPIC's official frame tars (`epic-extract plan --frames` + `run`)
against unpacking the same tars with `tar -xf`.

Usage::

    python -m bench.bench_ingest [--videos 6] [--seconds 30] [--work DIR]

Official-style tars (``ffmpeg -vf fps=60,scale=-2:256 -q:v 4 frame_%010d.jpg`` of a
1920x1080 testsrc2 pattern, then ``tar`` of the folder, members ``./frame_...jpg``) are
made once, one per video. Then, on the same disk, in one run: (a) ``tar -xf`` of every tar
into a folder followed by ``sync``; (b) ``epic-extract run`` of a store planned from the
tars with ``keep=all``: the store's whole path, the shard built in a scratch folder on the
same disk, read back and verified, copied compacted into the store, fsynced and renamed.
The tars are read once before either, so both read them from the page cache. Writes the
table into docs/benchmarks.md (section ``ingest``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.report import machine_line, markdown_table, write_section
from epicdata.annotations import TIMESTAMP_COLUMNS, VIDEO_INFO_COLUMNS
from epicdata.ffmpeg_bin import ffmpeg_path
from epicdata.layout import shard_path
from preprocess import official_frames
from preprocess.extract import run_shard
from preprocess.plan import plan_store

RATE = 60


def make_tars(frames_root: Path, videos: int, seconds: float) -> list[Path]:
    """``videos`` official-style tars (copies of one, under different ids)."""
    folder = frames_root.parent / "one-video-frames"
    if not folder.is_dir():
        folder.mkdir(parents=True)
        subprocess.run(
            [ffmpeg_path(), "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
             f"testsrc2=size=1920x1080:rate=60000/1001:duration={seconds}", "-vf",
             f"fps={RATE},scale=-2:256", "-q:v", "4", str(folder / "frame_%010d.jpg")],
            check=True,
        )  # fmt: skip
    tars = []
    for i in range(1, videos + 1):
        tar = frames_root / "P01" / "rgb_frames" / f"P01_{i:02d}.tar"
        if not tar.exists():
            tar.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["tar", "-cf", str(tar), "-C", str(folder), "."], check=True)
        tars.append(tar)
    return tars


def write_annotations(folder: Path, videos: int, seconds: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        f"P01_{i:02d}_0,P01,P01_{i:02d},00:00:01.00,00:00:01.00,00:00:02.00,60,120"
        for i in range(1, videos + 1)
    ]
    (folder / "EPIC_100_test_timestamps.csv").write_text(
        ",".join(TIMESTAMP_COLUMNS) + "\n" + "\n".join(rows) + "\n"
    )
    info = [f"P01_{i:02d},{seconds},59.94005994005994,1920x1080" for i in range(1, videos + 1)]
    (folder / "EPIC_100_video_info.csv").write_text(
        ",".join(VIDEO_INFO_COLUMNS) + "\n" + "\n".join(info) + "\n"
    )


def untar(tars: list[Path], out: Path) -> tuple[float, int]:
    """Seconds to `tar -xf` every tar into its own folder under ``out`` and `sync`."""
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run(["sync"], check=True)  # flush others' dirty pages before timing
    started = time.perf_counter()
    for tar in tars:
        target = out / tar.stem
        target.mkdir(parents=True)
        subprocess.run(["tar", "-xf", str(tar), "-C", str(target)], check=True)
    subprocess.run(["sync"], check=True)
    seconds = time.perf_counter() - started
    files = sum(1 for _ in out.rglob("*.jpg"))
    return seconds, files


def ingest(frames_root: Path, annotations: Path, work: Path, workers: int) -> tuple[float, int]:
    """Seconds of `epic-extract run` (keep=all, one shard) on the tars, and frames stored."""
    store = work / "store"
    shutil.rmtree(store, ignore_errors=True)
    plan_store(
        store_root=store, annotations_dir=annotations, frames_root=frames_root,
        splits=("test",), shards=1, keep="all",
    )  # fmt: skip
    subprocess.run(["sync"], check=True)  # flush others' dirty pages before timing
    started = time.perf_counter()
    result = run_shard(store_root=store, shard_index=0, workers=workers, tmp_dir=work / "tmp")
    seconds = time.perf_counter() - started
    assert shard_path(store, 0).is_file()
    return seconds, sum(v.stored_frames for v in result.videos)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=6, help="Tars (videos) to ingest.")
    parser.add_argument("--seconds", type=float, default=30.0, help="Length of each video.")
    parser.add_argument("--work", type=Path, help="Work folder (default: a temp folder).")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    frames_root = work / "EPIC-KITCHENS"
    tars = make_tars(frames_root, args.videos, args.seconds)
    # P01/rgb_frames/P01_NN.tar is where official tars lie, so run md5-checks these stand-ins
    # (against their own md5s here): the hashing is part of the ingest timed below.
    md5s = {"/".join(t.parts[-3:]): {hashlib.md5(t.read_bytes()).hexdigest()} for t in tars}
    official_frames.md5_table = lambda: md5s
    write_annotations(work / "ann", args.videos, args.seconds)
    tar_bytes = sum(t.stat().st_size for t in tars)
    for tar in tars:  # both methods read the tars from the page cache
        tar.read_bytes()
    cores = len(os.sched_getaffinity(0))

    untar_s, files = untar(tars, work / "unpacked")
    ingest_s, frames = ingest(frames_root, work / "ann", work, cores)
    store_bytes = shard_path(work / "store", 0).stat().st_size
    rows = [
        ["`tar -xf` each tar into a folder, then `sync`", files, f"{untar_s:.2f}",
         f"{files / untar_s:,.0f}", f"{tar_bytes / untar_s / 1e6:,.0f}", "1.00x"],
        [f"`epic-extract run` (keep=all, {cores} workers): scratch shard, verify, publish",
         frames, f"{ingest_s:.2f}", f"{frames / ingest_s:,.0f}",
         f"{tar_bytes / ingest_s / 1e6:,.0f}", f"{untar_s / ingest_s:.2f}x"],
    ]  # fmt: skip
    body = "\n".join([
        f"{machine_line()}. {args.videos} official-style tars of {args.seconds:.0f} s at 60 "
        f"fps (456x256 JPEGs, -q:v 4, testsrc2; {tar_bytes / 1e6:,.0f} MB of tars), read from "
        f"the page cache, written to the same disk; one run (`python -m bench.bench_ingest`).",
        "",
        markdown_table(["method", "frames", "seconds", "frames/s", "MB/s of tar",
                        "speed vs tar -xf"], rows),
        "",
        f"The published shard is {store_bytes / 1e6:,.0f} MB ({store_bytes / tar_bytes:.2f}x "
        f"the tars). The store's time includes reading every member, checking its JPEG "
        f"markers and CRC-32, writing the scratch shard, reading it all back, the compacted "
        f"copy into the store and its fsync; `tar -xf` writes each JPEG once into its own file.",
    ])  # fmt: skip
    write_section("ingest", "Ingest of official frame tars vs `tar -xf`", body)


if __name__ == "__main__":
    main()
