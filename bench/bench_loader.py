"""Data-loading throughput of the trainer: JPEG decoders, and clips/s per worker count.

Usage::

    python -m bench.bench_loader [--store DIR --annotations DIR] [--workers 0,1,2,4]
                                 [--batches 12] [--num-frames 8] [--crop-size 224]
                                 [--simd-python VENV/bin/python]

Without ``--store``, generates the mini-EPIC (456x256 stored frames, as the real store) in a
temporary folder. Measures (1) single-core decode rate of stored JPEGs with Pillow and with
``torchvision.io.decode_jpeg``, (2) the training DataLoader (read + decode + per-clip crop
and flip, uint8 out) in clips/s for each worker count and decoder. Writes its section of
docs/benchmarks.md. ``--simd-python`` names the interpreter of a second environment with
pillow-simd in place of Pillow (the two cannot share one environment): it decodes and
resizes the same JPEGs in the same run, so the table compares all three.
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, RandomSampler

from bench.report import machine_line, markdown_table, write_section
from epicdata.annotations import AnnotationDir
from epicdata.dataset import CPU_DECODERS, EpicActionDataset, decode_pil, decode_torchvision
from epicdata.store import FrameStore
from epicdata.synthetic import make_mini_epic
from preprocess.extract import run_shard
from preprocess.plan import plan_store
from train.transforms import TrainClipTransform


def build_mini_store(root: Path) -> tuple[Path, Path]:
    mini = make_mini_epic(root / "mini")
    manifest = plan_store(
        store_root=root / "store",
        annotations_dir=mini.annotations_dir,
        videos_root=mini.videos_dir,
        splits=("train",),
        shards=2,
    )
    for shard in manifest.shards:
        run_shard(store_root=root / "store", shard_index=shard.index)
    return root / "store", mini.annotations_dir


def sample_jpegs(store: FrameStore, table, count: int = 300) -> list[bytes]:
    jpegs: list[bytes] = []
    for i in range(len(table)):
        start, stop = int(table.start_frames[i]), int(table.stop_frames[i])
        jpegs += store.read_frames(table.video_ids[i], range(start, min(stop, start + 8) + 1))
        if len(jpegs) >= count:
            break
    return jpegs


def _rate(function, items: list) -> float:
    function(items[0])
    start = time.perf_counter()
    for item in items:
        function(item)
    return len(items) / (time.perf_counter() - start)


def decode_simplejpeg(jpeg: bytes) -> torch.Tensor:
    """simplejpeg (libjpeg-turbo) to a (C, H, W) uint8 tensor, as the loader's decoders."""
    import simplejpeg  # optional (`pip install simplejpeg`): measured where installed

    return torch.from_numpy(simplejpeg.decode_jpeg(jpeg, colorspace="RGB")).permute(2, 0, 1)


def decode_rates(jpegs: list[bytes]) -> dict[str, float]:
    """Frames/s on one core for each decoder, over the same JPEGs (simplejpeg where
    installed: `pip install simplejpeg`)."""
    torch.set_num_threads(1)
    rates = {"pil": _rate(decode_pil, jpegs), "torchvision": _rate(decode_torchvision, jpegs)}
    try:
        import simplejpeg  # noqa: F401
    except ImportError:
        return rates
    rates["simplejpeg"] = _rate(decode_simplejpeg, jpegs)
    return rates


def pil_rates(jpegs: list[bytes]) -> dict[str, object]:
    """Pillow (or pillow-simd) decode and bilinear resize (short side 256 -> 224) rates."""
    images = [Image.open(io.BytesIO(j)).convert("RGB") for j in jpegs[:100]]
    width, height = images[0].size
    size = (round(width * 224 / height), 224)
    return {
        "version": Image.__version__,
        "decode": _rate(decode_pil, jpegs),
        "resize": _rate(lambda im: im.resize(size, Image.BILINEAR), images),
    }


def pil_rates_in(python: str, jpegs: list[bytes]) -> dict[str, object]:
    """:func:`pil_rates` run by another interpreter (e.g. a pillow-simd environment)."""
    with tempfile.NamedTemporaryFile(suffix=".pkl") as handle:
        pickle.dump(jpegs, handle)
        handle.flush()
        out = subprocess.run(
            [python, "-m", "bench.bench_loader", "--pil-rates-of", handle.name],
            check=True,
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        ).stdout
    return json.loads(out.strip().splitlines()[-1])


def loader_rate(
    dataset: EpicActionDataset, *, workers: int, batches: int, batch_size: int
) -> float:
    """Clips/s of the DataLoader alone (first batch excluded: worker start-up)."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=RandomSampler(dataset, replacement=True, num_samples=batch_size * (batches + 1)),
        num_workers=workers,
        prefetch_factor=4 if workers else None,
    )
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    clips = sum(len(batch["frames"]) for batch in iterator)
    return clips / (time.perf_counter() - start)


def loader_rows(store: FrameStore, table, args: argparse.Namespace) -> list[list[object]]:
    """Clips/s of the training loader: a row per worker count, a column per decoder."""
    torch.set_num_threads(1)  # as in a DataLoader worker
    rows = []
    for workers in (int(w) for w in args.workers.split(",")):
        row: list[object] = [workers]
        for decoder in CPU_DECODERS:
            dataset = EpicActionDataset(
                store,
                table,
                num_frames=args.num_frames,
                training=True,
                transform=TrainClipTransform(args.crop_size),
                decoder=decoder,
            )
            rate = loader_rate(
                dataset, workers=workers, batches=args.batches, batch_size=args.batch_size
            )
            row.append(f"{rate:.1f}")
        rows.append(row)
    return rows


def decode_line(rates: dict[str, float], width: int, height: int) -> str:
    """The single-core decode rates of :func:`decode_rates`, against Pillow's."""
    return (
        f"Stored JPEGs {width}x{height}; single-core decode: Pillow "
        f"{rates['pil']:.0f} frames/s, torchvision.io.decode_jpeg "
        f"{rates['torchvision']:.0f} frames/s (x{rates['torchvision'] / rates['pil']:.2f})"
        + (
            f", simplejpeg {rates['simplejpeg']:.0f} frames/s "
            f"(x{rates['simplejpeg'] / rates['pil']:.2f})."
            if "simplejpeg" in rates
            else " (simplejpeg not installed)."
        )
    )


def pil_table(pils: list[dict[str, object]]) -> str:
    """A row per Pillow build of :func:`pil_rates`, resize against the first's."""
    rows = [
        [
            # pillow-simd versions carry a .postN suffix; Pillow's never do.
            f"{'pillow-simd' if '.post' in p['version'] else 'Pillow'} {p['version']}",
            f"{p['decode']:.0f}",
            f"{p['resize']:.0f}",
            f"{p['resize'] / pils[0]['resize']:.2f}x",
        ]
        for p in pils
    ]
    return markdown_table(
        ["PIL", "decode frames/s", "resize frames/s", "resize vs first row"], rows
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path)
    parser.add_argument("--annotations", type=Path)
    parser.add_argument("--workers", default="0,1,2,4")
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--crop-size", type=int, default=224)
    parser.add_argument("--simd-python", help="python of an environment with pillow-simd")
    parser.add_argument("--pil-rates-of", type=Path, help=argparse.SUPPRESS)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.pil_rates_of:  # the child of --simd-python
        torch.set_num_threads(1)
        print(json.dumps(pil_rates(pickle.loads(args.pil_rates_of.read_bytes()))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        if args.store is None:
            args.store, args.annotations = build_mini_store(Path(tmp))
        store = FrameStore(args.store)
        table = AnnotationDir(args.annotations).table("train")
        jpegs = sample_jpegs(store, table)
        rates = decode_rates(jpegs)
        pils = [pil_rates(jpegs)]
        if args.simd_python:
            pils.append(pil_rates_in(args.simd_python, jpegs))
        rows = loader_rows(store, table, args)
    height, width = decode_pil(jpegs[0]).shape[1:]  # the first train segment's first frame
    body = "\n\n".join(
        [
            machine_line(),
            decode_line(rates, width, height),
            "Pillow builds on the same JPEGs, one core (decode to RGB; bilinear resize of the "
            "decoded frame to short side 224):",
            pil_table(pils),
            f"Training loader, {args.num_frames}-frame clips, crop {args.crop_size} + flip on "
            f"uint8 in the workers, batch {args.batch_size}, {args.batches} batches "
            "(`python -m bench.bench_loader --simd-python VENV/bin/python`):",
            markdown_table(["workers", *(f"clips/s ({d})" for d in CPU_DECODERS)], rows),
        ]
    )
    write_section("loader", "Trainer data loading", body)


if __name__ == "__main__":
    main()
