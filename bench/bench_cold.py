"""Cold clip reads on a store several times larger than the memory that caches it: the
store (LMDB readahead on and off) vs (a) one JPEG file per frame, and what staging the
shards to node-local disk costs.

Usage (root: it drops the page cache and caps memory with a cgroup)::

    python -m bench.bench_cold [--frames 300000] [--memory-mb 512] [--workers 1,2]
                               [--epochs 2] [--repeats 3] [--work DIR]

One folder of official-style frames (``PXX/rgb_frames/PXX_YY/frame_%010d.jpg``, 456x256
JPEGs of a real frame's size, 5-minute videos at 60 fps) is made, and ingested byte for
byte into two stores with ``epic-extract``'s own code: ``keep=all`` (the whole videos, in
several shards) and ``keep=sampled`` (the 8 frames of each segment's clip). The readers
then run as separate processes inside a memory cgroup of ``--memory-mb``, which caps the
page cache they can use (a store much larger than RAM, without a disk that size): each
pass is an epoch of the train segments in a shuffled order, 8-frame linspace clips, read
to JPEG bytes in memory (the store checks every CRC-32), split over the workers, every
worker with every shard open. The page cache is dropped before each run, the conditions
alternate, and the table gives the best and worst of ``--repeats`` runs. Readers: the
store's reader (frames located in the B-tree and read with ``pread``, a clip's reads
announced together: :mod:`epicdata.lmdb_pages`), the same store read through py-lmdb's
memory map with readahead off (MADV_RANDOM) and on, and (a). The device's
``read_ahead_kb`` (the window a page fault reads with readahead on) is reported.

Staging: the shards copied with ``cp`` to another folder of the same disk, page cache
dropped, the time of the copy (what a job pays at its start on node-local disk).
Writes its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.report import machine_line, markdown_table, value_range, write_section

# The project's modules are imported inside the functions that use them: the reader
# processes start from this module inside the memory cgroup, and each should carry only
# what its own reader needs (a folder reader none of the store's code).

DROP_CACHES = Path("/proc/sys/vm/drop_caches")
CGROUP_V1 = Path("/sys/fs/cgroup/memory")
CGROUP_V2 = Path("/sys/fs/cgroup")
NUM_FRAMES = 8
RATE = 60
#: Distinct rendered frames, cycled through every video (rendering costs ~10 ms a frame).
SOURCE_FRAMES = 1_200


# ----------------------------------------------------------------------------- building


def render_source(work: Path) -> list[bytes]:
    """The ``SOURCE_FRAMES`` distinct JPEGs every video cycles through, rendered once into
    ``work/source``."""
    from bench.epic_like import grain_source
    from epicdata.ffmpeg_bin import ffmpeg_path

    source = work / "source"
    if not source.is_dir():
        # Through H.264 first, as the real frames: the encoder smooths the grain, and the
        # JPEGs come out at about a real kitchen frame's size.
        partial = work / "source.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        ffmpeg = [ffmpeg_path(), "-nostdin", "-loglevel", "error", "-y"]
        subprocess.run(
            [*ffmpeg, "-f", "lavfi", "-i", grain_source(0), "-frames:v", str(SOURCE_FRAMES),
             "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p",
             str(partial / "source.mp4")],
            check=True,
        )  # fmt: skip
        subprocess.run(
            [*ffmpeg, "-i", str(partial / "source.mp4"), "-q:v", "4",
             str(partial / "frame_%010d.jpg")],
            check=True,
        )  # fmt: skip
        partial.rename(source)
    return [(source / f"frame_{k:010d}.jpg").read_bytes() for k in range(1, SOURCE_FRAMES + 1)]


def write_frame_folders(frames_root: Path, videos: dict[str, int], pool: list[bytes]) -> None:
    """``videos`` (id -> frames) in the official layout, frames cycling through ``pool``;
    folders an earlier run finished are kept."""
    for video_id, count in videos.items():
        folder = frames_root / "P01" / "rgb_frames" / video_id
        if folder.is_dir():
            continue
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for n in range(1, count + 1):  # separate files: no page shared between copies
            (partial / f"frame_{n:010d}.jpg").write_bytes(pool[(n - 1) % SOURCE_FRAMES])
        partial.rename(folder)


def ingest_stores(work: Path, annotations: Path, frames_root: Path, shards: int) -> dict:
    """The keep=all (``shards`` shards) and keep=sampled (1 shard) stores of the frame
    folders, keep -> root; complete stores of an earlier run are kept."""
    from preprocess.extract import run_shard
    from preprocess.plan import plan_store

    stores = {}
    for keep, count in (("all", shards), ("sampled", 1)):
        store = work / f"store-{keep}"
        if not (store / "manifest.json").is_file() or not all((store / "shards").glob("*.lmdb")):
            shutil.rmtree(store, ignore_errors=True)
            manifest = plan_store(
                store_root=store, annotations_dir=annotations, frames_root=frames_root,
                splits=("train",), shards=count, keep=keep, num_frames=(NUM_FRAMES,),
            )  # fmt: skip
            for shard in manifest.shards:
                run_shard(store_root=store, shard_index=shard.index, tmp_dir=work / "tmp")
        stores[keep] = store
    return stores


def build(work: Path, frames: int, video_seconds: int, shards: int) -> dict:
    """The official-style frame folders, their annotations, and the two stores."""
    from bench.epic_like import write_train_csv
    from epicdata.annotations import VIDEO_INFO_COLUMNS

    per_video = video_seconds * RATE
    sizes = [per_video] * max(1, frames // per_video)
    ids = [f"P01_{i + 1:02d}" for i in range(len(sizes))]
    frames_root = work / "EPIC-KITCHENS"
    write_frame_folders(frames_root, dict(zip(ids, sizes, strict=True)), render_source(work))
    annotations = work / "annotations"
    write_train_csv(annotations, dict(zip(ids, sizes, strict=True)))
    info = [f"{v},{n / RATE},{RATE},456x256" for v, n in zip(ids, sizes, strict=True)]
    (annotations / "EPIC_100_video_info.csv").write_text(
        "\n".join([",".join(VIDEO_INFO_COLUMNS), *info]) + "\n"
    )
    return {
        "frames": frames_root,
        "annotations": annotations,
        "stores": ingest_stores(work, annotations, frames_root, shards),
        "ids": ids,
        "frames_total": sum(sizes),
    }


def epoch_clips(annotations: Path, epochs: int, seed: int = 0) -> list[tuple[str, list[int]]]:
    """``epochs`` passes over the train segments, each shuffled: (video, linspace frames)."""
    from epicdata.annotations import AnnotationDir
    from epicdata.sampling import linspace_frames

    table = AnnotationDir(annotations).table("train")
    rng = random.Random(seed)
    items = []
    for _ in range(epochs):
        order = list(range(len(table)))
        rng.shuffle(order)
        for i in order:
            start, stop = int(table.start_frames[i]), int(table.stop_frames[i])
            items.append((table.video_ids[i], linspace_frames(start, stop, NUM_FRAMES).tolist()))
    return items


def tree_bytes(root: Path) -> tuple[int, int]:
    """(bytes, files) under ``root``."""
    total = files = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            total += os.stat(os.path.join(dirpath, name)).st_size
            files += 1
    return total, files


# ----------------------------------------------------------------------------- the cgroup


class MemoryCap:
    """A memory cgroup (v1 or v2) of ``limit`` bytes; ``enter`` moves the calling process
    into it (a ``preexec_fn``). Page cache counts against the limit, so a process in it
    reads a store larger than the limit as it would read one larger than RAM."""

    def __init__(self, limit: int) -> None:
        name = f"epic-bench-cold-{os.getpid()}"
        if (CGROUP_V1 / "memory.limit_in_bytes").exists():
            self.path, limit_file = CGROUP_V1 / name, "memory.limit_in_bytes"
        elif (CGROUP_V2 / "cgroup.controllers").exists():
            self.path, limit_file = CGROUP_V2 / name, "memory.max"
        else:
            raise SystemExit("bench_cold: no memory cgroup here (cgroup v1 or v2 needed)")
        try:
            self.path.mkdir(exist_ok=True)
            (self.path / limit_file).write_text(str(limit))
        except OSError as exc:
            raise SystemExit(
                f"bench_cold: cannot make a memory cgroup ({exc}); run as root"
            ) from None
        self.procs = str(self.path / "cgroup.procs")

    def enter(self) -> None:
        with open(self.procs, "w") as handle:
            handle.write(str(os.getpid()))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.path.rmdir()


def read_ahead_kb(path: Path) -> str:
    """The block device's readahead window for the file system holding ``path``."""
    dev = os.stat(path).st_dev
    block = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    for queue in (block / "queue", block / ".." / "queue"):
        with contextlib.suppress(OSError):
            return (queue / "read_ahead_kb").read_text().strip() + " KiB"
    return "unknown"


def drop_caches() -> None:
    os.sync()
    DROP_CACHES.write_text("3\n")


# ----------------------------------------------------------------------------- readers


def _worker(spec: dict) -> None:
    """One reader process: its share of the clips, timed from the go line on stdin."""
    items = [tuple(i) for i in spec["items"]]
    if spec["kind"] == "folder":
        root = Path(spec["root"])

        def read(video: str, frames: list[int]) -> int:
            folder = root / video[:3] / "rgb_frames" / video
            total = 0
            for n in frames:
                with open(folder / f"frame_{n:010d}.jpg", "rb") as handle:
                    total += len(handle.read())
            return total
    else:
        from epicdata.store import FrameStore

        store = FrameStore(
            spec["root"],
            readahead=spec["kind"] == "store-readahead",
            direct=spec["kind"] == "store-direct",
        )
        for video in store.video_ids:  # every shard open, as in a worker of a long epoch
            store.video_meta(video)

        def read(video: str, frames: list[int]) -> int:
            return sum(map(len, store.read_frames(video, frames)))

    print("ready", flush=True)
    sys.stdin.readline()
    started = time.perf_counter()
    total = sum(read(video, frames) for video, frames in items)
    print(json.dumps({"seconds": time.perf_counter() - started, "bytes": total}), flush=True)


def run_readers(kind: str, root: Path, items: list, workers: int, cap: MemoryCap) -> dict:
    """Clips/s of ``workers`` reader processes in the cgroup, page cache dropped first."""
    drop_caches()
    specs = [{"kind": kind, "root": str(root), "items": items[w::workers]} for w in range(workers)]
    procs = []
    for spec in specs:
        path = Path(tempfile.mkstemp(suffix=".json")[1])
        path.write_text(json.dumps(spec))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "bench.bench_cold", "--worker", str(path)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                preexec_fn=cap.enter,
            )  # fmt: skip
        )
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready"
    started = time.perf_counter()
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = [json.loads(proc.stdout.readline()) for proc in procs]
    seconds = time.perf_counter() - started
    for proc in procs:
        proc.wait()
        if proc.returncode:
            raise SystemExit(f"bench_cold: a {kind} reader failed (exit {proc.returncode})")
    return {"clips_per_s": len(items) / seconds, "mb": sum(r["bytes"] for r in results) / 1e6}


def staging_seconds(store: Path, target: Path, cap: MemoryCap) -> float:
    """Seconds to ``cp`` a store's shards to ``target`` from a dropped page cache, synced."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    drop_caches()
    started = time.perf_counter()
    shards = sorted(str(p) for p in (store / "shards").glob("*.lmdb"))
    subprocess.run(["cp", *shards, str(target)], check=True, preexec_fn=cap.enter)
    subprocess.run(["sync"], check=True)
    seconds = time.perf_counter() - started
    shutil.rmtree(target)
    return seconds


# ----------------------------------------------------------------------------- main

READERS = (
    ("store-direct", "store, frames with pread (the reader)"),
    ("store-random", "store, frames through py-lmdb's map, readahead off"),
    ("store-readahead", "store, frames through py-lmdb's map, readahead on"),
    ("folder", "(a) one JPEG file per frame"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300_000, help="Frames of the keep=all store.")
    parser.add_argument("--video-seconds", type=int, default=300, help="Length of each video.")
    parser.add_argument("--shards", type=int, default=24, help="Shards of the keep=all store.")
    parser.add_argument("--memory-mb", type=int, default=512, help="Memory cap of the readers.")
    parser.add_argument("--workers", default="1,2", help="Reader processes, comma-separated.")
    parser.add_argument("--epochs", type=int, default=2, help="Passes over the segments a run.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, help="Work folder, kept (default: a temp folder).")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    return parser


def measure(
    built: dict, items: list, *, workers: list[int], repeats: int, memory_mb: int, work: Path
) -> tuple[dict[tuple, list[float]], dict[str, float]]:
    """Every reader's clips/s in each repeat, keyed (keep, workers, kind), conditions
    alternating; then each store's staging seconds. All in one ``memory_mb`` cgroup."""
    cap = MemoryCap(memory_mb << 20)
    runs: dict[tuple, list[float]] = {}
    try:
        for _ in range(repeats):
            for keep, store in built["stores"].items():
                for w in workers:
                    for kind, _label in READERS:
                        root = built["frames"] if kind == "folder" else store
                        result = run_readers(kind, root, items, w, cap)
                        runs.setdefault((keep, w, kind), []).append(result["clips_per_s"])
                        print(keep, w, kind, f"{result['clips_per_s']:.0f} clips/s", flush=True)
        staged = {
            keep: staging_seconds(store, work / "staged", cap)
            for keep, store in built["stores"].items()
        }
    finally:
        cap.close()
    return runs, staged


def reader_rows(keeps: list[str], workers: list[int], runs: dict) -> list[list[object]]:
    """A row per store, worker count and reader: clips/s and the ratio to (a) in the same
    run, each as the range over the repeats."""
    rows = []
    for keep in keeps:
        for w in workers:
            base = runs[(keep, w, "folder")]
            for kind, label in READERS:
                rates = runs[(keep, w, kind)]
                ratios = [r / b for r, b in zip(rates, base, strict=True)]
                rows.append([
                    f"keep={keep}", w, label, value_range(rates, ",.0f"),
                    value_range(ratios, ".2f") + "x",
                ])  # fmt: skip
    return rows


def staging_rows(
    sizes: dict[str, int], staged: dict[str, float], runs: dict, workers: int, frame_bytes: float
) -> list[list[str]]:
    """A row per store: its size, staging time and rate, against the JPEG bytes its reader
    delivers cold with ``workers`` processes (best run)."""
    rows = []
    for keep in sizes:
        best = max(runs[(keep, workers, "store-direct")])
        rows.append([
            f"keep={keep}", f"{sizes[keep] / 1e9:.2f}", f"{staged[keep]:.1f}",
            f"{sizes[keep] / staged[keep] / 1e6:,.0f}",
            f"{best * NUM_FRAMES * frame_bytes / 1e6:,.0f}",
        ])  # fmt: skip
    return rows


def report_body(
    args: argparse.Namespace,
    built: dict,
    items: list,
    sizes: dict[str, int],
    folder: tuple[int, int],
    rows: list,
    stage_rows: list,
) -> str:
    """The section's text; ``folder`` is (bytes, files) of the frame folders."""
    folder_bytes, files = folder
    per_epoch = len(items) // args.epochs
    workers = max(int(w) for w in args.workers.split(","))
    return "\n".join([
        f"{machine_line()}. {len(built['ids'])} videos of {args.video_seconds} s at 60 fps "
        f"({built['frames_total']:,} frames of 456x256 JPEG, {folder_bytes / 1e9:.2f} GB in {files:,} "
        f"files for (a)), {per_epoch:,} train segments. Stores ingested from those files: "
        f"keep=all {sizes['all'] / 1e9:.2f} GB in {args.shards} shards, keep=sampled "
        f"{sizes['sampled'] / 1e9:.2f} GB in 1 shard; device readahead window "
        f"{read_ahead_kb(built['stores']['all'])}. Readers capped at {args.memory_mb} MB "
        f"of memory, page cache included (a memory cgroup): the keep=all store is "
        f"{sizes['all'] / (args.memory_mb << 20):.0f}x what they can cache. A run = "
        f"{args.epochs} epochs of the segments in shuffled order ({len(items):,} 8-frame "
        f"linspace clips, JPEG bytes in memory, CRC-32 checked), split over the worker "
        f"processes, page cache dropped first; best-worst of {args.repeats} runs, conditions "
        f"alternating (`python -m bench.bench_cold`).",
        "",
        markdown_table(["store", "workers", "reader", "clips/s", "vs (a) same run"], rows),
        "",
        "Staging: the store's shards copied with `cp` to another folder of the same disk from "
        "a dropped page cache, then `sync` (what a job pays at its start to read from "
        f"node-local disk), against the JPEG bytes the reader delivers cold ({workers} "
        "workers, best run):",
        "",
        markdown_table(
            ["store", "GB", "staging s", "staging MB/s", "cold clip reads, MB/s of frames"],
            stage_rows,
        ),
    ])  # fmt: skip


def main() -> None:
    args = build_parser().parse_args()
    if args.worker:
        _worker(json.loads(args.worker.read_text()))
        args.worker.unlink()
        return
    if os.geteuid() != 0:
        raise SystemExit("bench_cold: run as root (it drops the page cache and makes a cgroup)")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-cold-"))
    built = build(work, args.frames, args.video_seconds, args.shards)
    items = epoch_clips(built["annotations"], args.epochs)
    folder_bytes, files = tree_bytes(built["frames"])
    sizes = {k: tree_bytes(s / "shards")[0] for k, s in built["stores"].items()}
    workers = [int(w) for w in args.workers.split(",")]
    runs, staged = measure(
        built, items, workers=workers, repeats=args.repeats, memory_mb=args.memory_mb, work=work
    )
    rows = reader_rows(list(built["stores"]), workers, runs)
    stage_rows = staging_rows(sizes, staged, runs, max(workers), folder_bytes / files)
    body = report_body(args, built, items, sizes, (folder_bytes, files), rows, stage_rows)
    write_section("cold", "Cold reads: a store larger than memory", body)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
