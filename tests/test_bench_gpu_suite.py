"""bench/gpu_suite.py picks its sizes by the machine: the GPU sizes with CUDA, toy sizes
without (the full run of the suite on the CPU is tests/train/test_device.py's)."""

from __future__ import annotations

import re

import pytest
import torch

from bench.gpu_suite import (
    GPU_SIZES,
    TOY_SIZES,
    _Trainer,
    build_parser,
    choose_sizes,
    evaluation_rows,
    synthetic_store,
)
from epicdata.annotations import AnnotationDir
from epicdata.store import FrameStore


def _sizes(args) -> dict[str, object]:
    return {name: getattr(args, name) for name in GPU_SIZES}


def test_a_cpu_run_without_options_is_toy_sized_and_says_so_regression() -> None:
    # Regression: on a CPU the suite ran at the GPU sizes, silent for 400 s.
    args = build_parser().parse_args([])
    note = choose_sizes(args, cuda=False)
    assert _sizes(args) == TOY_SIZES
    assert note is not None and note.startswith("no CUDA on this machine: toy sizes (")
    assert "--store-frames 1200" in note


def test_a_gpu_run_without_options_has_the_gpu_sizes() -> None:
    args = build_parser().parse_args([])
    assert choose_sizes(args, cuda=True) is None
    assert _sizes(args) == GPU_SIZES
    assert (args.store_frames, args.pipeline_workers) == (150_000, "4,all")


def test_a_size_given_on_the_command_line_wins_on_either_machine() -> None:
    for cuda in (False, True):
        args = build_parser().parse_args(["--store-frames", "5000", "--pipeline-workers", "2"])
        choose_sizes(args, cuda=cuda)
        assert (args.store_frames, args.pipeline_workers) == (5000, "2")
        assert args.steps == (GPU_SIZES if cuda else TOY_SIZES)["steps"]


def test_toy_sizes_are_smaller_in_every_dimension() -> None:
    for name, value in TOY_SIZES.items():
        if isinstance(value, int):
            assert 0 < value < GPU_SIZES[name], name


@pytest.mark.slow
def test_the_evaluation_rows_run_on_the_cpu_for_one_and_thirty_views(tmp_path) -> None:
    # The rows the GPU session reports (issue 24 item 4), at toy sizes on a small synthetic
    # store: one row per --views, clips/s = views x segments/s, the seconds stated.
    args = build_parser().parse_args([])
    choose_sizes(args, cuda=False)
    store, annotations, _ = synthetic_store(tmp_path, args.store_frames, 1)
    table = AnnotationDir(annotations).table("train")
    reader = FrameStore(store)
    rows = evaluation_rows(reader, table, args, _Trainer(torch.device("cpu")), 1)
    reader.close()
    assert [row[0] for row in rows] == [
        "evaluation --views 1x1, 1 workers",
        "evaluation --views 10x3, 1 workers",
    ]
    for (_, result, verdict), views in zip(rows, (1, 30), strict=True):
        assert verdict == "info", result
        found = re.fullmatch(
            r"(\S+) clips/s, (\S+) segments/s \((\d+) segments a batch, 2 frames a clip\); "
            r"EPIC-100 validation \S+ min; \d+\.\d s",
            result,
        )
        assert found, result
        clips, segments = float(found[1]), float(found[2])
        assert clips == pytest.approx(views * segments, rel=2e-3)
        # A batch holds at most --batch-size clips (2 at toy sizes), one segment at least.
        assert int(found[3]) == max(1, args.batch_size // views)
