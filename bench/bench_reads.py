"""The read stage of training, the store vs one JPEG file per frame, as issue 20 measures.

Fresh reader processes, shards opened inside the timed part, ratios within alternated
pairs.

Usage (root: it drops the page cache and caps memory with a cgroup)::

    python -m bench.bench_reads [--frames 259200] [--memory-mb 512] [--pairs 16]
                                [--workers 1,2] [--work DIR [--reuse]] [--quick]

The inputs are bench/bench_cold.py's: one folder of official-layout frames
(``PXX/rgb_frames/PXX_YY/frame_%010d.jpg``, 456x256 JPEGs of ~20 kB, 60 fps), ingested
byte for byte with ``epic-extract``'s own code into a ``keep=all`` store (whole videos)
and a ``keep=sampled`` one (each segment's 8 clip frames).

Method (why: DataLoader workers are re-created every epoch, so what a reader gains from
caches kept in a long-lived process is not what training gets):

- every measurement starts its reader processes afresh; they load their code and wait,
  then the timed part opens the shards (the store's ``FrameStore`` is made before, as the
  main process makes it; its shards open lazily inside the timed part) and reads;
- an epoch = one 8-frame linspace clip per train segment, in a seeded shuffled order
  (pair ``k`` reads epoch ``k``), split over 1 or 2 processes; the read stage only: JPEG
  bytes in memory, the store checking every CRC-32 (``FrameStore.read_frames``);
- conditions alternate (store, files, store, files, ...), each pair reads the same items,
  and the store/files ratio of clip rates is taken within each pair: noise from other
  work on the machine moves both halves of a pair, so the per-pair ratios (min, 10th
  percentile, median, max) are robust to it where the absolute rates are not;
- cases: warm (page cache holding the shards and the frame files, read untimed before
  every pair); cold (page cache dropped before every run, readers in a memory cgroup of
  ``--memory-mb``, page cache included) on the keep=all store, on the small keep=sampled
  store, and reading whole segments (every frame, in order; segments shuffled); in the
  last two py-lmdb (``lmdb.open(readahead=True/False)``, ``txn.get`` and the same CRC) is
  a third and fourth condition of each round, and its ratios are taken within the round.

Then a per-frame breakdown of the store's reader in a warm fresh process, its phases
timed separately with the store's own modules (opening the shards, the clip's frame index
entries, the reads ``ShardPages.read``, the CRC ``checksums.frame_checksum``; and, not
summed, the B-tree lookups a store format 1 shard makes instead of the index), against
``FrameStore.read_frames`` and one file per frame in other fresh processes: where the
next optimisation should look.

``--quick``: a small store, a few pairs, the warm case and the breakdown only, nothing
written to docs/benchmarks.md. A full run prints its tables, writes its section there
and keeps every run's numbers in ``<work>/reads-<time>.json``.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.bench_cold import (
    NUM_FRAMES,
    MemoryCap,
    build,
    drop_caches,
    read_ahead_kb,
    tree_bytes,
)
from bench.report import machine_line, markdown_table, write_section

# As in bench_cold: the project's modules are imported inside the functions that use them,
# so that each reader process carries only its own reader's code.

READERS = {
    "store": "store (`FrameStore.read_frames`, every CRC checked)",
    "files": "one JPEG file per frame",
    "lmdb-ra": "py-lmdb, readahead on (`txn.get` + the same CRC)",
    "lmdb-nora": "py-lmdb, readahead off (`txn.get` + the same CRC)",
}
#: A reader: (video, frame numbers) -> the JPEG bytes it read, every frame's CRC checked
#: where the reader has one.
Reader = Callable[[str, list[int]], int]
#: Bytes on disk a frame takes in the folder and in a keep=all store (a ~20 kB JPEG in 4 KiB
#: blocks or LMDB overflow pages), for the free-space check.
FRAME_DISK_BYTES = 24 << 10
#: Free space wanted before building, as a multiple of what the build needs.
SPACE_MARGIN = 2.5
#: Fresh processes of each kind the breakdown times (the median is reported).
BREAKDOWN_RUNS = 5


@dataclass(frozen=True)
class Case:
    """One row group of the table: which store, which reads, warm or cold, which readers."""

    name: str
    title: str
    keep: str  # the store read: "all" or "sampled"
    mode: str  # "clips" (one 8-frame clip per segment) or "segments" (every frame)
    cold: bool
    readers: tuple[str, ...]


CASES = (
    Case("warm", "warm, fresh process", "all", "clips", False, ("store", "files")),
    Case("cold", "cold, keep=all store", "all", "clips", True, ("store", "files")),
    Case(
        "cold-small",
        "cold, keep=sampled store",
        "sampled",
        "clips",
        True,
        ("store", "files", "lmdb-ra", "lmdb-nora"),
    ),
    Case(
        "cold-segments",
        "cold, whole segments in order",
        "all",
        "segments",
        True,
        ("store", "files", "lmdb-ra", "lmdb-nora"),
    ),
)


# ----------------------------------------------------------------------------- the work


def epoch_items(
    annotations: Path, epoch: int, mode: str, segments: int | None = None
) -> list[tuple[str, list[int]]]:
    """Epoch ``epoch`` of the train segments in a shuffled order seeded by it: (video,
    frames), an 8-frame linspace clip (``mode="clips"``) or every frame of the segment in
    order (``"segments"``, the first ``segments`` of the order when given)."""
    from epicdata.annotations import AnnotationDir
    from epicdata.sampling import linspace_frames

    table = AnnotationDir(annotations).table("train")
    order = list(range(len(table)))
    random.Random(epoch).shuffle(order)
    if segments is not None:
        order = order[:segments]
    items = []
    for i in order:
        start, stop = int(table.start_frames[i]), int(table.stop_frames[i])
        if mode == "clips":
            frames = linspace_frames(start, stop, NUM_FRAMES).tolist()
        else:
            frames = list(range(start, max(start, stop - 1) + 1))
        items.append((table.video_ids[i], frames))
    return items


def warm_cache(store: Path, frames_root: Path, items: list) -> None:
    """Read the store's shard files whole and the items' frame files, untimed: the page
    cache then holds everything either reader touches."""
    for shard in sorted((store / "shards").glob("*.lmdb")):
        with open(shard, "rb", buffering=0) as handle:
            while handle.read(8 << 20):
                pass
    for video, frames in items:
        folder = frames_root / video[:3] / "rgb_frames" / video
        for n in frames:
            (folder / f"frame_{n:010d}.jpg").read_bytes()


# ----------------------------------------------------------------------------- readers


def _files_reader(root: Path) -> Reader:
    def read(video: str, frames: list[int]) -> int:
        folder = root / video[:3] / "rgb_frames" / video
        total = 0
        for n in frames:
            with open(folder / f"frame_{n:010d}.jpg", "rb") as handle:
                total += len(handle.read())
        return total

    return read


def _store_reader(root: Path) -> Reader:
    from epicdata.store import FrameStore

    # As the main process of epic-train makes it and checks it (every video's metadata,
    # ``check_readable``) before its DataLoader workers fork: the workers open the shards.
    store = FrameStore(root)
    for video in store.video_ids:
        store.video_meta(video)

    def read(video: str, frames: list[int]) -> int:
        return sum(map(len, store.read_frames(video, frames)))

    return read


def _lmdb_reader(root: Path, readahead: bool) -> Reader:
    """py-lmdb's map, ``txn.get`` of each frame and the CRC-32 the store checks against the
    video's stored checksums. As for the store, the videos' metadata is read before the
    fork (then the maps are closed) and the shards are opened by the reading process."""
    import lmdb

    from epicdata.checksums import frame_checksum, unpack_checksums
    from epicdata.layout import checksum_key, frame_key, shard_path, video_meta_key
    from epicdata.manifest import Manifest
    from epicdata.metadata import VideoMeta

    def open_env(index: int) -> lmdb.Environment:
        return lmdb.open(
            str(shard_path(root, index)), subdir=False, readonly=True, lock=False,
            readahead=readahead, meminit=False,
        )  # fmt: skip

    video_shard = Manifest.load(root).video_to_shard()
    ranges = {}
    for index in set(video_shard.values()):
        with open_env(index) as env, env.begin() as txn:
            for video in (v for v, i in video_shard.items() if i == index):
                ranges[video] = VideoMeta.from_bytes(txn.get(video_meta_key(video))).stored_ranges
    envs: dict[int, lmdb.Environment] = {}
    sums: dict[str, object] = {}

    starts = {v: [a for a, _ in r] for v, r in ranges.items()}
    before = {
        v: list(itertools.accumulate((b - a + 1 for a, b in r), initial=0))
        for v, r in ranges.items()
    }

    def position(video: str, frame: int) -> int:
        """The frame's index among the video's stored frames (its checksum's)."""
        i = bisect.bisect_right(starts[video], frame) - 1
        return before[video][i] + frame - starts[video][i]

    def read(video: str, frames: list[int]) -> int:
        index = video_shard[video]
        env = envs.get(index) or envs.setdefault(index, open_env(index))
        total = 0
        with env.begin(buffers=True) as txn:
            if video not in sums:
                sums[video] = unpack_checksums(bytes(txn.get(checksum_key(video))))
            for n in frames:
                blob = bytes(txn.get(frame_key(video, n)))
                if frame_checksum(blob) != sums[video][position(video, n)]:
                    raise SystemExit(f"bench_reads: {video} frame {n}: checksum mismatch")
                total += len(blob)
        return total

    return read


def _make_reader(reader: str, root: Path) -> Reader:
    if reader == "files":
        return _files_reader(root)
    if reader == "store":
        return _store_reader(root)
    return _lmdb_reader(root, readahead=reader == "lmdb-ra")


def _worker() -> None:
    """One reader: its spec on stdin's first line; the reader made here (as a training
    run's main process makes its store), then read by a forked child (as a DataLoader
    worker reads it) that says ``ready`` and times its items from the ``go`` line on."""
    spec = json.loads(sys.stdin.readline())
    if spec["reader"] == "breakdown":
        _breakdown_worker(spec)
        return
    read = _make_reader(spec["reader"], Path(spec["root"]))
    items = [tuple(i) for i in spec["items"]]
    sys.stdout.flush()
    pid = os.fork()
    if pid:
        sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    try:
        print("ready", flush=True)
        sys.stdin.readline()
        started = time.perf_counter()
        total = sum(read(video, frames) for video, frames in items)
        seconds = time.perf_counter() - started
        print(json.dumps({"seconds": seconds, "bytes": total}), flush=True)
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def _start(spec: dict, cap: MemoryCap | None) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.bench_reads", "--worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=None if cap is None else cap.enter,
    )
    proc.stdin.write(json.dumps(spec) + "\n")
    proc.stdin.flush()
    return proc


def run_readers(reader: str, root: Path, items: list, workers: int, cap: MemoryCap | None) -> dict:
    """Fresh ``workers`` processes of ``reader`` (in ``cap`` when given) reading ``items``
    split between them: the wall time from the go to the last one's end, clips/s and
    frames/s. Cold runs (``cap``) drop the page cache first."""
    if cap is not None:
        drop_caches()
    procs = [
        _start({"reader": reader, "root": str(root), "items": items[w::workers]}, cap)
        for w in range(workers)
    ]
    for proc in procs:
        line = proc.stdout.readline().strip()
        if line != "ready":
            proc.wait()
            raise SystemExit(
                f"bench_reads: a {reader} reader did not start (exit {proc.returncode})"
            )
    started = time.perf_counter()
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    lines = [proc.stdout.readline() for proc in procs]
    seconds = time.perf_counter() - started
    for proc in procs:
        proc.wait()
        if proc.returncode:
            raise SystemExit(f"bench_reads: a {reader} reader failed (exit {proc.returncode})")
    frames = sum(len(f) for _, f in items)
    results = [json.loads(line) for line in lines]
    return {
        "seconds": seconds,
        "clips_per_s": len(items) / seconds,
        "frames_per_s": frames / seconds,
        "mb": sum(r["bytes"] for r in results) / 1e6,
    }


# ----------------------------------------------------------------------------- breakdown


#: The phases of a clip read through the frame index, in the order ``read_frames`` runs
#: them (summed), and for comparison (not summed) what a shard of store format 1 pays
#: instead of the index (building the keys and the B-tree lookups), and zlib's own CRC-32.
PHASES = ("index", "read", "crc")
COMPARED = ("keys", "lookup", "zlib")


def _breakdown_worker(spec: dict) -> None:
    """The store reader's phases per clip, each timed on its own with the store's modules,
    in the order ``read_frames`` runs them (a store that fits in memory: each shard
    announced whole when opened, no frame alone), then the B-tree lookups a format 1 shard
    makes instead of the index, and zlib's CRC-32 of the same bytes."""
    import struct
    import zlib

    from epicdata.checksums import frame_checksum
    from epicdata.frame_index import ENTRY, HEADER
    from epicdata.layout import frame_index_key, frame_key, shard_path
    from epicdata.lmdb_pages import PageCache, ShardPages, fadvise
    from epicdata.manifest import Manifest

    root = Path(spec["root"])
    video_shard = Manifest.load(root).video_to_shard()
    items = [tuple(i) for i in spec["items"]]
    print("ready", flush=True)
    sys.stdin.readline()
    ns = time.perf_counter_ns
    cache, shards, where = PageCache(), {}, {}
    spent = dict.fromkeys(("open", *PHASES, *COMPARED), 0)
    entry = ENTRY.size
    for video, frames in items:
        index = video_shard[video]
        t = ns()
        if index not in shards:
            shards[index] = ShardPages.open(shard_path(root, index), cache)
            if shards[index] is None:
                raise SystemExit(f"bench_reads: the page reader does not parse shard {index}")
            fadvise(shards[index].fd, 0, 0, "WILLNEED")
        pages = shards[index]
        if video not in where:
            found = pages.locate(frame_index_key(video))
            if found is None:
                raise SystemExit(f"bench_reads: {video} has no frame index (epic-check --upgrade)")
            where[video] = found[0] + HEADER.size
        t0 = ns()
        spent["open"] += t0 - t
        # keep=all: a frame's position among the stored frames is its number - 1.
        low, high = frames[0] - 1, frames[-1] - 1
        table = os.pread(pages.fd, (high - low + 1) * entry, where[video] + low * entry)
        entries = [struct.unpack_from("<QII", table, (n - 1 - low) * entry) for n in frames]
        t1 = ns()
        blobs = [pages.read(offset, length) for offset, length, _ in entries]
        t2 = ns()
        for blob, (_, _, crc) in zip(blobs, entries, strict=True):
            if frame_checksum(blob) != crc:
                raise SystemExit(f"bench_reads: {video}: checksum mismatch")
        t3 = ns()
        keys = [frame_key(video, n) for n in frames]
        t4 = ns()
        pages.locate_many(keys)
        t5 = ns()
        for blob in blobs:
            zlib.crc32(blob)
        t6 = ns()
        for phase, took in zip(
            (*PHASES, *COMPARED),
            (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5),
            strict=True,
        ):
            spent[phase] += took
    print(json.dumps({**spent, "shards": len(shards), "videos": len(where)}), flush=True)


def require_frame_index(store: Path) -> None:
    """Refuse a store of store format 1 (one an earlier run built and --reuse kept): its
    reads would take the B-tree lookups, not what the current format measures."""
    from epicdata.layout import PUBLISH_RECORD_KEY
    from epicdata.lmdb_pages import ShardPages

    for path in sorted((store / "shards").glob("*.lmdb")):
        pages = ShardPages.open(path)
        try:
            if pages is None or pages.locate(PUBLISH_RECORD_KEY) is None:
                raise SystemExit(
                    f"bench_reads: {path} has no frame index (built by an earlier release): "
                    f"delete {store} to rebuild it, or run `epic-check --store {store} --upgrade`"
                )
        finally:
            if pages is not None:
                pages.close()


def _breakdown_run(root: Path, items: list) -> dict:
    proc = _start({"reader": "breakdown", "root": str(root), "items": items}, None)
    if proc.stdout.readline().strip() != "ready":
        proc.wait()
        raise SystemExit(
            f"bench_reads: the breakdown process did not start (exit {proc.returncode})"
        )
    proc.stdin.write("go\n")
    proc.stdin.flush()
    result = json.loads(proc.stdout.readline())
    if proc.wait():
        raise SystemExit(f"bench_reads: the breakdown process failed (exit {proc.returncode})")
    return result


def breakdown(built: dict, annotations: Path, runs: int) -> dict:
    """Median over ``runs`` warm fresh processes of each phase's µs per frame, the shard
    opens' ms per shard, and the whole ``read_frames`` and one-file-per-frame µs per frame
    (one epoch of clips on the keep=all store)."""
    store = built["stores"]["all"]
    items = epoch_items(annotations, 0, "clips")
    frames = sum(len(f) for _, f in items)
    warm_cache(store, built["frames"], items)
    phases: dict[str, list[float]] = {}
    for _ in range(runs):
        result = _breakdown_run(store, items)
        for phase in (*PHASES, *COMPARED):
            phases.setdefault(phase, []).append(result[phase] / 1e3 / frames)
        phases.setdefault("open_ms", []).append(result["open"] / 1e6 / result["shards"])
        phases.setdefault("open", []).append(result["open"] / 1e3 / frames)
        for reader, root in (("store", store), ("files", built["frames"])):
            rate = run_readers(reader, root, items, 1, None)["frames_per_s"]
            phases.setdefault(reader, []).append(1e6 / rate)
    return {phase: statistics.median(values) for phase, values in phases.items()}


# ----------------------------------------------------------------------------- cases


def measure_case(
    case: Case, built: dict, *, workers: int, pairs: int, cap: MemoryCap | None, segments: int
) -> list[dict[str, dict]]:
    """``pairs`` rounds of ``case``'s readers in turn (store, files[, py-lmdb on, off]),
    round ``k`` reading epoch ``k``; one untimed round first (the interpreter's own files
    into the page cache). Each round: reader -> run_readers' result."""
    store = built["stores"][case.keep]
    rounds = []
    for k in range(-1, pairs):
        items = epoch_items(
            built["annotations"], max(k, 0), case.mode,
            segments if case.mode == "segments" else None,
        )  # fmt: skip
        results = {}
        if not case.cold:
            warm_cache(store, built["frames"], items)
        for reader in case.readers:
            root = built["frames"] if reader == "files" else store
            results[reader] = run_readers(reader, root, items, workers, cap if case.cold else None)
        if k >= 0:
            rounds.append(results)
            print(
                f"{case.name} x{workers} pair {k + 1}/{pairs}: "
                + ", ".join(f"{r} {v['clips_per_s']:,.0f} clips/s" for r, v in results.items()),
                flush=True,
            )
    return rounds


def ratio_stats(ratios: list[float]) -> dict[str, float]:
    """min, 10th percentile (linear, as numpy's default), median and max of ``ratios``."""
    import numpy as np

    values = np.asarray(ratios, dtype=float)
    return {
        "min": float(values.min()),
        "p10": float(np.percentile(values, 10)),
        "median": float(np.median(values)),
        "max": float(values.max()),
    }


def case_rows(case: Case, workers: int, rounds: list[dict[str, dict]]) -> list[list[str]]:
    """A row per reader but files: its median frames/s and its rate over files' within
    each round (min / 10th percentile / median / max); with py-lmdb readahead on in the
    round, one more: the store over it."""
    comparisons = [(r, "files") for r in case.readers if r != "files"]
    if "lmdb-ra" in case.readers:
        comparisons.append(("store", "lmdb-ra"))
    rows = []
    for reader, base in comparisons:
        ratios = [r[reader]["clips_per_s"] / r[base]["clips_per_s"] for r in rounds]
        stats = ratio_stats(ratios)
        rate = statistics.median(r[reader]["frames_per_s"] for r in rounds)
        base_rate = statistics.median(r[base]["frames_per_s"] for r in rounds)
        label = READERS[reader] if base == "files" else "store / py-lmdb readahead on"
        rows.append([
            case.title, workers, label, f"{rate:,.0f}", f"{base_rate:,.0f}",
            " / ".join(f"{stats[s]:.2f}" for s in ("min", "p10", "median", "max")),
            sum(x < 1.0 for x in ratios),
        ])  # fmt: skip
    return rows


# ----------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=259_200, help="Frames of the keep=all store.")
    parser.add_argument("--video-seconds", type=int, default=240, help="Length of each video (s).")
    parser.add_argument("--shards", type=int, default=24, help="Shards of the keep=all store.")
    parser.add_argument(
        "--memory-mb", type=int, default=512, help="Memory cap of the cold readers (MiB)."
    )
    parser.add_argument(
        "--small-memory-mb", type=int, default=512,
        help="Memory cap of the cold readers of the keep=sampled store, which should fit it (MiB).",
    )  # fmt: skip
    parser.add_argument("--workers", default="1,2", help="Reader processes, comma-separated.")
    parser.add_argument("--pairs", type=int, default=16, help="Alternated rounds per case.")
    parser.add_argument(
        "--segments", type=int, default=64,
        help="Segments a run of the whole-segment case reads (each ~150 frames).",
    )  # fmt: skip
    parser.add_argument(
        "--cases", default=",".join(c.name for c in CASES), help="Cases to run, comma-separated."
    )
    parser.add_argument(
        "--breakdown-runs", type=int, default=BREAKDOWN_RUNS, help="Fresh processes per phase."
    )
    parser.add_argument("--work", type=Path, help="Work folder, kept (default: a temp folder).")
    parser.add_argument(
        "--reuse", action="store_true", help="Reuse the build already in --work (same sizes)."
    )
    parser.add_argument(
        "--quick", action="store_true",
        help="6,000 frames in 2 shards, 4 pairs, warm case and breakdown; docs not written.",
    )  # fmt: skip
    parser.add_argument(
        "--no-write", action="store_true", help="Print the tables; leave docs/benchmarks.md alone."
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser


def prepare_work(args: argparse.Namespace) -> Path:
    """The work folder: a fresh one, or --work checked against the sizes of its build
    (--reuse), after a check that the disk has room for the build."""
    sizes = {"frames": args.frames, "video_seconds": args.video_seconds, "shards": args.shards}
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-reads-"))
    record = work / "build.json"
    if record.is_file():
        built = json.loads(record.read_text())
        if not args.reuse:
            raise SystemExit(
                f"bench_reads: {work} holds a build ({built}): pass --reuse to read it, or "
                f"remove the folder"
            )
        if built != sizes:
            raise SystemExit(
                f"bench_reads: {work} holds a build of {built}, not {sizes}: pass the same "
                f"sizes, or another --work"
            )
        return work
    needed = 2 * args.frames * FRAME_DISK_BYTES
    free = shutil.disk_usage(work if work.exists() else work.parent).free
    if free < SPACE_MARGIN * needed:
        raise SystemExit(
            f"bench_reads: the build needs about {needed / 1e9:.1f} GB and "
            f"{SPACE_MARGIN}x that should be free where it goes ({work}: "
            f"{free / 1e9:.1f} GB free): choose a --work on a larger disk or fewer --frames"
        )
    work.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(sizes))
    return work


def report_body(
    args: argparse.Namespace, built: dict, facts: dict, cases: list[Case], rows: list, parts: dict
) -> str:
    """The section's text: what was measured, the ratio table and the breakdown."""
    workers = args.workers.replace(",", " and ")
    times_memory = facts["all_gb"] * 1e9 / (args.memory_mb << 20)
    text = (
        f"{machine_line()}. {len(built['ids'])} videos of {args.video_seconds} s at 60 fps "
        f"({built['frames_total']:,} frames of 456x256 JPEG, {facts['folder_gb']:.2f} GB in "
        f"{facts['files']:,} files), {facts['segments']:,} train segments; stores ingested "
        f"from those files byte for byte: keep=all {facts['all_gb']:.2f} GB in {args.shards} "
        f"shards, keep=sampled {facts['sampled_gb']:.3f} GB. Reader processes started afresh "
        f"for every run ({workers} processes, the items split between them; each forked, as "
        f"a DataLoader worker, from a process that made the reader and read every video's "
        f"metadata, as epic-train's start-up check does), shards opened inside the timed "
        f"part, one epoch per run (one 8-frame linspace clip per segment, shuffled, seeded; "
        f"the read stage only: JPEG bytes in memory, the store and py-lmdb checking every "
        f"CRC-32). Conditions alternate and each ratio is taken within its round "
        f"({args.pairs} rounds a case, one untimed round first; the machine is shared, which "
        f"moves both halves of a round alike). Warm: the shards and the frame files read "
        f"untimed before every run."
    )
    if any(c.cold for c in cases):
        text += (
            f" Cold: page cache dropped before every run, readers in a memory cgroup of "
            f"{args.memory_mb} MiB (page cache included), the keep=all store {times_memory:.1f}x "
            f"that; device readahead window {facts['read_ahead']}."
        )
        if times_memory < 10:
            text += " (Below the 10x the issue asks for: lower --memory-mb.)"
        if any(c.cold and c.keep == "sampled" for c in cases):
            text += (
                f" The keep=sampled store's readers: a cgroup of {args.small_memory_mb} MiB, "
                f"{args.small_memory_mb * (1 << 20) / 1e9 / facts['sampled_gb']:.1f}x the store."
            )
    if any(c.mode == "segments" for c in cases):
        text += (
            f" Whole segments: {args.segments} segments a run, every frame of each in order, "
            f"the segments shuffled."
        )
    text += f" Code: {facts['code']}. `python -m bench.bench_reads`."
    lines = [
        text,
        "",
        markdown_table(
            [
                "case",
                "processes",
                "reader",
                "frames/s (median)",
                "baseline frames/s",
                "ratio per round: min / p10 / median / max",
                "rounds < 1.0",
            ],
            rows,
        ),  # fmt: skip
    ]
    if parts:
        lines += ["", breakdown_text(parts)]
    return "\n".join(lines)


def breakdown_text(parts: dict) -> str:
    """The breakdown's table: µs per frame of each phase, the whole read and files'."""
    phases = sum(parts[p] for p in ("open", *PHASES))
    rows = [
        ["opening shards, each video's index found (`ShardPages.open`, `locate`)", parts["open"]],
        ["the clip's index entries (one `pread` of their span)", parts["index"]],
        ["read (`ShardPages.read`, one pread a frame)", parts["read"]],
        ["CRC-32 (`checksums.frame_checksum`) against the entry's", parts["crc"]],
        ["sum of the phases", phases],
        ["`FrameStore.read_frames`, whole (in a forked worker)", parts["store"]],
        ["rest of `read_frames` (its checks and bookkeeping)", parts["store"] - phases],
        ["one JPEG file per frame (open + read + close)", parts["files"]],
        ["not in the sum: the keys and B-tree lookups a format 1 shard makes instead",
         parts["keys"] + parts["lookup"]],
        ["not in the sum: zlib's `zlib.crc32` of the same frames", parts["zlib"]],
    ]  # fmt: skip
    return "\n".join([
        "Where a warm fresh process's time goes, per frame (one epoch of clips on the keep=all "
        "store, 1 process, the median of "
        f"{parts['runs']} fresh processes of each kind; opening a shard: "
        f"{parts['open_ms']:.2f} ms):",
        "",
        markdown_table(["phase", "µs per frame"], [[k, f"{v:.1f}"] for k, v in rows]),
    ])  # fmt: skip


def code_state() -> dict[str, str]:
    """The commit measured, and a digest of the reader's sources (epicdata/) as they are on
    disk: a run compares it at its end, since the code under a long run may change."""
    import hashlib

    here = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted((here / "epicdata").glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    git = ["git", "-C", str(here)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "epicdata"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        head, dirty = "unknown", ""
    return {
        "commit": head + (" with uncommitted changes to epicdata/" if dirty else ""),
        "digest": digest.hexdigest()[:12],
    }


def freeze_code(work: Path) -> None:
    """Run the readers from a copy of epicdata/ and bench/ taken now, in ``work/code``: the
    checkout may change under a long run (other work on it), a run's numbers must not."""
    here = Path(__file__).resolve().parent.parent
    copy = work / "code"
    shutil.rmtree(copy, ignore_errors=True)
    for package in ("epicdata", "bench"):
        shutil.copytree(
            here / package, copy / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    # ``python -m`` puts the working folder first on the path of every reader process.
    os.chdir(copy)


def case_memory_mb(args: argparse.Namespace, case: Case) -> int:
    """The cgroup of a cold case: the keep=sampled store's is one it fits in (the issue's
    "small store" case), the keep=all store's one it is many times larger than."""
    return args.small_memory_mb if case.keep == "sampled" else args.memory_mb


def run_cases(args: argparse.Namespace, built: dict, cases: list[Case]) -> tuple[list, dict]:
    """Every case at every worker count: the table rows and the raw rounds. A cold case's
    readers run in a memory cgroup of its own (one at a time: they share its name)."""
    workers = [int(w) for w in args.workers.split(",")]
    rows, raw = [], {}
    for case in cases:
        cap = MemoryCap(case_memory_mb(args, case) << 20) if case.cold else None
        try:
            for w in workers:
                rounds = measure_case(
                    case, built, workers=w, pairs=args.pairs, cap=cap, segments=args.segments
                )
                raw[f"{case.name} x{w}"] = rounds
                rows += case_rows(case, w, rounds)
        finally:
            if cap is not None:
                cap.close()
    return rows, raw


def main() -> None:
    args = build_parser().parse_args()
    if args.worker:
        _worker()
        return
    if args.quick:
        args.frames, args.shards, args.pairs, args.video_seconds = 6_000, 2, 4, 50
    unknown = set(args.cases.split(",")) - {c.name for c in CASES}
    if unknown:
        raise SystemExit(
            f"bench_reads: no case {', '.join(sorted(unknown))} (--cases): choose among "
            f"{', '.join(c.name for c in CASES)}"
        )
    cases = [c for c in CASES if c.name in args.cases.split(",")]
    if args.quick:
        cases = [c for c in cases if not c.cold]
    if any(c.cold for c in cases) and os.geteuid() != 0:
        raise SystemExit("bench_reads: run as root (cold cases drop the page cache, make a cgroup)")
    work = prepare_work(args).resolve()
    built = build(work, args.frames, args.video_seconds, args.shards)
    for store in built["stores"].values():
        require_frame_index(store)
    sizes = {k: tree_bytes(s / "shards")[0] for k, s in built["stores"].items()}
    folder_bytes, files = tree_bytes(built["frames"])
    facts = {
        "folder_gb": folder_bytes / 1e9, "files": files, "all_gb": sizes["all"] / 1e9,
        "sampled_gb": sizes["sampled"] / 1e9, "read_ahead": read_ahead_kb(built["stores"]["all"]),
        "segments": len(epoch_items(built["annotations"], 0, "clips")),
    }  # fmt: skip
    code = code_state()
    facts["code"] = code["commit"]
    freeze_code(work)
    rows, raw = run_cases(args, built, cases)
    parts = {**breakdown(built, built["annotations"], args.breakdown_runs)}
    parts["runs"] = args.breakdown_runs
    if code_state()["digest"] != code["digest"]:
        print("bench_reads: epicdata/ changed during the run; it read the copy taken at its start")
        facts["code"] += " (as at the run's start; it changed during the run)"
    stamp = time.strftime("%Y%m%dT%H%M%S")
    (work / f"reads-{stamp}.json").write_text(
        json.dumps({"args": vars(args) | {"work": str(work)}, "facts": facts, "rounds": raw,
                    "breakdown": parts, "cases": [asdict(c) for c in cases]}, default=str)
    )  # fmt: skip
    body = report_body(args, built, facts, cases, rows, parts)
    if args.quick or args.no_write:
        print(body)
    else:
        write_section("reads", "Reads: the store vs one file per frame (issue 20's method)", body)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
