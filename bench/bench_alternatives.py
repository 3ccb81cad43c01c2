"""The store against what researchers use instead, warm and cold: (a) the official layout,
one JPEG file per frame in a folder per video, and (b) decoding the segments straight from
the MP4 with PyAV (seek to the segment, decode to its last sampled frame).

Usage (root for the cold runs: the page cache is dropped before each)::

    pip install av            # PyAV, for (b) only; not a dependency of the project
    python -m bench.bench_alternatives [--videos 8] [--video-size 1920x1080] [--clips 200]
                                       [--workers 1,2] [--no-cold]

Same segments (the mini-EPIC's train split), same 8-frame linspace clips, same train
transform (random resized crop 224 + flip on uint8), same cores, ratios in one run:

- read stage: the JPEG bytes of a clip in memory (the store: one lookup per frame plus the
  CRC check; (a): open + read per frame); none for (b), whose reading is its decoding;
- whole loader: uint8 clips out of a DataLoader (decode with torchvision, the transform),
  with 1 worker and with all workers; (b) decodes 1080p H.264 and resizes to the store's
  256-px short side first, as a user without a store must.

The store is extracted with ``keep=all`` into several shards, so that reads cross shards.
Writes its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torchvision.transforms.functional as TF
from torch.utils.data import DataLoader, Dataset

from bench.report import machine_line, markdown_table, write_section
from epicdata.annotations import AnnotationDir
from epicdata.dataset import EpicActionDataset, decode_torchvision
from epicdata.ffmpeg_bin import ffmpeg_path
from epicdata.frames import frame_rate_for
from epicdata.sampling import linspace_frames
from epicdata.store import FrameStore
from epicdata.synthetic import make_mini_epic
from preprocess.extract import run_shard
from preprocess.plan import plan_store
from train.transforms import TrainClipTransform

DROP_CACHES = Path("/proc/sys/vm/drop_caches")
NUM_FRAMES = 8
CROP = 224
#: The loaders' names in the tables; (a) is the baseline of every ratio, (b) of the last.
STORE = "store"
FOLDER = "(a) one JPEG file per frame"
MP4 = "(b) PyAV from the MP4"


def build(root: Path, videos: int, size: tuple[int, int], shards: int) -> dict:
    """The mini-EPIC at ``size``, its store (keep=all) and the official layout of it."""
    # The mini-EPIC at the store's size (Python draws its frames: 1080p would take minutes a
    # video), then the MP4s (b) reads scaled up to ``size`` with ffmpeg, same timestamps.
    mini = make_mini_epic(root / "mini", num_videos=videos, size=(456, 256))
    mp4 = root / "mp4"
    for source in sorted(mini.videos_dir.rglob("*.MP4")):
        target = mp4 / source.relative_to(mini.videos_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [ffmpeg_path(), "-v", "error", "-i", source, "-vf", f"scale={size[0]}:{size[1]}",
             "-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-an", target],
            check=True,
        )  # fmt: skip
    store = root / "store"
    manifest = plan_store(
        store_root=store,
        annotations_dir=mini.annotations_dir,
        videos_root=mini.videos_dir,
        splits=("train",),
        shards=shards,
        keep="all",
    )
    for shard in manifest.shards:
        run_shard(store_root=store, shard_index=shard.index)
    frames = root / "rgb_frames"
    reader = FrameStore(store, verify=False)
    files = 0
    for video_id in reader.video_ids:
        folder = frames / video_id[:3] / "rgb_frames" / video_id
        folder.mkdir(parents=True)
        meta = reader.video_meta(video_id)
        numbers = [n for first, last in meta.stored_ranges for n in range(first, last + 1)]
        for number, jpeg in zip(numbers, reader.read_frames(video_id, numbers), strict=True):
            (folder / f"frame_{number:010d}.jpg").write_bytes(jpeg)
            files += 1
    reader.close()
    return {"mini": mini, "mp4": mp4, "store": store, "frames": frames, "files": files}


def clips(annotations: Path, count: int, seed: int = 0) -> tuple[list[int], list[tuple]]:
    """``count`` random train segments: their rows of the split, and (video, linspace
    frames, start, stop) of each, the clip every method reads."""
    table = AnnotationDir(annotations).table("train")
    rng = random.Random(seed)
    rows = [rng.randrange(len(table)) for _ in range(count)]
    items = []
    for i in rows:
        start, stop = int(table.start_frames[i]), int(table.stop_frames[i])
        frames = linspace_frames(start, stop, NUM_FRAMES).tolist()
        items.append((table.video_ids[i], frames, start, stop))
    return rows, items


def drop_caches() -> bool:
    os.sync()
    try:
        DROP_CACHES.write_text("3\n")
    except OSError:
        return False
    return True


# ----------------------------------------------------------------------------- read stage


def read_store(store: Path, direct: bool = True, readahead: bool = False) -> Callable[[list], int]:
    """A reader of clips' JPEG bytes from the store (``direct``: the reader's pread path;
    otherwise through py-lmdb's map, with ``readahead``); ``run.close()`` closes its shards
    (LMDB allows one open environment per file and process)."""
    reader = FrameStore(store, direct=direct, readahead=readahead)

    def run(items: list) -> int:
        return sum(len(b) for video, frames, *_ in items for b in reader.read_frames(video, frames))

    run.close = reader.close  # type: ignore[attr-defined]
    return run


def read_folder(frames_root: Path) -> Callable[[list], int]:
    def run(items: list) -> int:
        total = 0
        for video, frames, *_ in items:
            folder = frames_root / video[:3] / "rgb_frames" / video
            for number in frames:
                with open(folder / f"frame_{number:010d}.jpg", "rb") as handle:
                    total += len(handle.read())
        return total

    return run


# ----------------------------------------------------------------------------- whole loader


class FolderClips(Dataset):
    """(a): the official layout read as a user would: one file per frame, then the same
    decode and transform as the store's loader."""

    def __init__(self, frames_root: Path, items: list) -> None:
        self.root, self.items = frames_root, items
        self.transform = TrainClipTransform(CROP)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> torch.Tensor:
        video, frames, *_ = self.items[index]
        folder = self.root / video[:3] / "rgb_frames" / video
        clip = torch.stack(
            [decode_torchvision((folder / f"frame_{n:010d}.jpg").read_bytes()) for n in frames]
        )
        return self.transform(clip, np.random.default_rng(index))


class VideoClips(Dataset):
    """(b): the segment decoded from the MP4 with PyAV: seek to its start, decode to its
    last sampled frame, keep the sampled ones (EPIC numbering: frame n at (n - 1) / R s),
    resize to the store's 256-px short side, then the same transform."""

    def __init__(self, videos_root: Path, items: list) -> None:
        self.root, self.items = videos_root, items
        self.transform = TrainClipTransform(CROP)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> torch.Tensor:
        import av  # optional (`pip install av`): needed by this reader only

        video, frames, *_ = self.items[index]
        rate = frame_rate_for(video)
        times = [(n - 1) / rate for n in frames]
        path = self.root / video[:3] / "videos" / f"{video}.MP4"
        picked: list[torch.Tensor] = []
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            container.seek(int(times[0] / stream.time_base), stream=stream, backward=True)
            want = 0
            for frame in container.decode(stream):
                t = float(frame.pts * stream.time_base)
                while want < len(times) and t + 0.5 / rate >= times[want]:
                    picked.append(
                        torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
                    )
                    want += 1
                if want == len(times):
                    break
        while len(picked) < len(times):  # past the last decoded frame: repeat it
            picked.append(picked[-1])
        clip = TF.resize(torch.stack(picked), [256], antialias=True)
        return self.transform(clip, np.random.default_rng(index))


def _store_clips(store: Path, annotations: Path) -> Dataset:
    table = AnnotationDir(annotations).table("train")
    return EpicActionDataset(
        FrameStore(store),
        table,
        num_frames=NUM_FRAMES,
        training=True,
        transform=TrainClipTransform(CROP),
    )


def loader_rate(dataset: Dataset, indices: list[int], workers: int, cold: bool) -> float:
    """Clips/s of a DataLoader over ``indices`` of ``dataset``."""
    loader = DataLoader(
        torch.utils.data.Subset(dataset, indices),
        batch_size=8,
        num_workers=workers,
        collate_fn=list,
        prefetch_factor=4 if workers else None,
    )
    if cold:
        drop_caches()
    start = time.perf_counter()
    done = sum(len(batch) for batch in loader)
    return done / (time.perf_counter() - start)


# ----------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--video-size", default="1920x1080")
    parser.add_argument("--shards", type=int, default=6)
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--loader-clips", type=int, default=480)
    parser.add_argument("--mp4-clips", type=int, default=24, help="(b) is 30x slower: fewer")
    parser.add_argument("--workers", default=f"1,{os.cpu_count()}")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-cold", action="store_true")
    parser.add_argument("--root", type=Path, default=None)
    return parser


def load_or_build(root: Path, videos: int, size: tuple[int, int], shards: int) -> dict:
    """What :func:`build` returns, reused from ``root`` when an earlier run (``--root``)
    built it there."""
    if not (root / "store").exists():
        return build(root, videos, size, shards)
    mini = SimpleNamespace(
        annotations_dir=root / "mini" / "annotations",
        videos_dir=root / "mini" / "EPIC-KITCHENS",
    )
    return {
        "mini": mini,
        "mp4": root / "mp4",
        "store": root / "store",
        "frames": root / "rgb_frames",
        "files": sum(1 for _ in (root / "rgb_frames").rglob("*.jpg")),
    }


def temperatures(cold: bool) -> tuple[str, ...]:
    return ("warm", "cold") if cold else ("warm",)


def best_read_rate(make_reader: Callable, items: list, runs: int, cold: bool) -> float:
    """Best clips/s of ``runs`` reads of ``items``, each by a reader made for it."""
    best = 0.0
    for _ in range(runs):
        # A reader opened after the drop: pages an open LMDB map holds survive
        # drop_caches, so a reader kept open across runs would never read cold.
        if cold:
            drop_caches()
        run = make_reader()
        if not cold:
            run(items)  # the page cache holds what this run reads
        start = time.perf_counter()
        run(items)
        best = max(best, len(items) / (time.perf_counter() - start))
        getattr(run, "close", lambda: None)()
    return best


def read_stage(
    store: Path, frames: Path, items: list, runs: int, temps: tuple[str, ...]
) -> list[list[str]]:
    """The read-stage rows: each reader's clips/s and ratio to (a), per temperature."""
    readers = {
        "store (the reader: pread)": lambda: read_store(store),
        "store via py-lmdb's map, readahead off": lambda: read_store(store, False),
        "store via py-lmdb's map, readahead on": lambda: read_store(store, False, True),
        FOLDER: lambda: read_folder(frames),
    }
    rates = {
        (name, t): best_read_rate(make_reader, items, runs, cold=t == "cold")
        for t in temps
        for name, make_reader in readers.items()
    }
    rows = []
    for name in readers:
        row = [name]
        for t in temps:
            row += [f"{rates[(name, t)]:,.0f}", f"{rates[(name, t)] / rates[(FOLDER, t)]:.2f}x"]
        rows.append(row)
    return rows


def loader_rates(
    datasets: dict[str, Callable[[], Dataset]],
    rows: list[int],
    *,
    count: int,
    mp4_clips: int,
    workers: list[int],
    temps: tuple[str, ...],
) -> dict[tuple[str, int, str], float]:
    """Clips/s keyed (dataset, workers, temperature): best of 2 over ``count`` clips, (b)
    once over ``mp4_clips`` of them; warm runs after one unmeasured pass."""
    rates: dict[tuple[str, int, str], float] = {}
    for temperature in temps:
        for name, make in datasets.items():
            dataset = make()
            n = min(mp4_clips, count) if name == MP4 else count
            # The store's dataset is indexed by split row, the others by clip: the same clips.
            indices = rows[:n] if name == STORE else list(range(n))
            for w in workers:
                if temperature == "warm":
                    loader_rate(dataset, indices, w, cold=False)
                rates[(name, w, temperature)] = max(
                    loader_rate(dataset, indices, w, cold=temperature == "cold")
                    for _ in range(1 if name == MP4 else 2)
                )
            if hasattr(dataset, "store"):
                dataset.store.close()
    return rates


def loader_stage(
    data: dict,
    rows: list[int],
    items: list,
    *,
    count: int,
    mp4_clips: int,
    workers: list[int],
    temps: tuple[str, ...],
) -> list[list[object]]:
    """The whole-loader rows: each loader's clips/s and ratios to (a) and (b), per worker
    count and temperature."""
    datasets = {
        STORE: lambda: _store_clips(data["store"], data["mini"].annotations_dir),
        FOLDER: lambda: FolderClips(data["frames"], items),
        MP4: lambda: VideoClips(data["mp4"], items),
    }
    rates = loader_rates(
        datasets, rows, count=count, mp4_clips=mp4_clips, workers=workers, temps=temps
    )
    table = []
    for name in datasets:
        for w in workers:
            row: list[object] = [name, w]
            for t in temps:
                rate = rates[(name, w, t)]
                base, mp4 = rates[(FOLDER, w, t)], rates[(MP4, w, t)]
                row += [f"{rate:,.1f}", f"{rate / base:.2f}x", f"{rate / mp4:.1f}x"]
            table.append(row)
    return table


def report_body(
    args: argparse.Namespace,
    data: dict,
    cold_ok: bool,
    read_rows: list,
    loader_rows: list,
    count: int,
) -> str:
    """The section's text: the setup, then the read-stage and whole-loader tables."""
    temps = temperatures(cold_ok)
    store_bytes = sum(p.stat().st_size for p in (data["store"] / "shards").glob("*.lmdb"))
    read_header = ["reader"] + [h for t in temps for h in (f"{t} clips/s", f"{t} vs (a)")]
    loader_header = ["loader", "workers"] + [
        h for t in temps for h in (f"{t} clips/s", f"{t} vs (a)", f"{t} vs (b)")
    ]
    return (
        f"{machine_line()}. Store: {store_bytes / 1e6:,.0f} MB in {args.shards} shards "
        f"(keep=all), {data['files']:,} frames of 456x256 JPEG = {data['files']:,} files in "
        f"(a); (b) reads the same {args.videos} mini-EPIC videos scaled to {args.video_size} "
        "(H.264, x264 veryfast crf 20, as EPIC's 1080p). "
        f"{args.clips} random 8-frame linspace clips of train segments; best of {args.runs}; "
        f"cold = page cache dropped before the run "
        f"(`python -m bench.bench_alternatives`{' --no-cold' if not cold_ok else ''}).\n\n"
        "Read stage (JPEG bytes of a clip in memory, one process):\n\n"
        + markdown_table(read_header, read_rows)
        + f"\n\nWhole loader (uint8 clips out: read, torchvision decode, random resized crop "
        f"224 + flip; DataLoader batches of 8; {count} clips, best of 2; (b) {args.mp4_clips} "
        "clips, once):\n\n" + markdown_table(loader_header, loader_rows) + "\n"
    )


def main() -> None:
    args = build_parser().parse_args()
    size = tuple(int(v) for v in args.video_size.split("x"))
    cold_ok = not args.no_cold and drop_caches()
    root = args.root or Path(tempfile.mkdtemp(prefix="bench-alt-"))
    data = load_or_build(root, args.videos, size, args.shards)
    rows, items = clips(data["mini"].annotations_dir, args.clips)
    torch.set_num_threads(1)
    temps = temperatures(cold_ok)
    read_rows = read_stage(data["store"], data["frames"], items, args.runs, temps)
    workers = [int(w) for w in args.workers.split(",")]
    count = min(args.loader_clips, len(items))
    loader_rows = loader_stage(
        data, rows, items, count=count, mp4_clips=args.mp4_clips, workers=workers, temps=temps
    )
    body = report_body(args, data, cold_ok, read_rows, loader_rows, count)
    write_section("alternatives", "The store vs one file per frame vs the MP4", body)


if __name__ == "__main__":
    main()
