"""Real videos have hundreds of segments (P29_05: 564, P04_107: 940): every keep mode must
extract them, whatever ffmpeg's expression parser accepts (regression: ``--keep sampled``
exited 3 on the mini-EPIC with "Error while parsing expression", blaming the video)."""

from __future__ import annotations

import csv
import io
import random
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import preprocess.decode as decode_module
from epicdata.annotations import SPLIT_FILES
from epicdata.errors import ExitCode
from epicdata.ffmpeg_bin import ffmpeg_path
from epicdata.frames import expected_frame_count, frame_rate_for
from epicdata.layout import shard_path
from epicdata.manifest import TAIL_FRAMES
from epicdata.sampling import linspace_frames
from epicdata.store import FrameStore
from epicdata.synthetic import read_stamp
from preprocess.check import check_store
from preprocess.cli import extract
from preprocess.decode import MAX_SELECT_TERMS, filter_graph, select_ranges
from preprocess.extract import run_shard
from preprocess.plan import keep_ranges_for, plan_store

#: ffmpeg 5.1's parser takes 100 terms and refuses 101; stay far below it.
PARSER_LIMIT = 100


def _parse_with_ffmpeg(graph: str, size: str = "1920x1080") -> subprocess.CompletedProcess:
    """Run ``graph`` on half a second of a generated source: ffmpeg parses every filter."""
    return subprocess.run(
        [ffmpeg_path(), "-nostdin", "-v", "error", "-f", "lavfi", "-i",
         f"testsrc=size={size}:rate=60:duration=0.5", "-vf", graph, "-f", "null", "-"],
        capture_output=True, text=True,
    )  # fmt: skip


def test_the_cap_leaves_ffmpeg_parser_a_wide_margin() -> None:
    # ffmpeg 5.1 parses 100 terms and refuses 101 (docs/benchmarks.md, bench_keep); the
    # graph never holds more than the cap + 2 terms, and twice that must still parse.
    terms = 2 * (MAX_SELECT_TERMS + 2)
    graph = "select='" + "+".join(f"between(n,{2 * i},{2 * i})" for i in range(terms)) + "'"
    result = _parse_with_ffmpeg(graph, "64x36")
    assert result.returncode == 0, result.stderr[-500:]
    assert terms <= PARSER_LIMIT


def _real_segments(path: Path, video_id: str) -> list[SimpleNamespace]:
    with open(path, newline="") as handle:
        return [
            SimpleNamespace(start_frame=int(row["start_frame"]), stop_frame=int(row["stop_frame"]))
            for row in csv.DictReader(handle)
            if row["video_id"] == video_id
        ]


@pytest.mark.parametrize(
    ("video_id", "file", "count"),
    [
        ("P29_05", SPLIT_FILES["validation"], 564),
        ("P04_107", "EPIC_100_uda_target_train_timestamps.csv", 940),
    ],
)
@pytest.mark.parametrize("keep", ["sampled", "segments"])
def test_select_graph_of_the_real_videos_with_most_segments_parses(
    real_annotations: Path, real_annotation_file, video_id: str, file: str, count: int, keep: str
) -> None:
    # The UDA file: flat in ../shared/epic100, in UDA_annotations/ of the official repository.
    segments = _real_segments(real_annotation_file(file), video_id)
    assert len(segments) == count
    with open(real_annotations / "EPIC_100_video_info.csv", newline="") as handle:
        duration = {r["video_id"]: float(r["duration"]) for r in csv.DictReader(handle)}[video_id]
    expected = expected_frame_count(duration, frame_rate_for(video_id))
    ranges = keep_ranges_for(
        segments, keep=keep, margin_frames=15, num_frames=(8, 16), expected_frames=expected
    )
    select = select_ranges(ranges, max_terms=MAX_SELECT_TERMS)
    graph = filter_graph(
        rate=frame_rate_for(video_id), short_side=256, width=1920, height=1080,
        select=select, tail_from=expected - TAIL_FRAMES,
    )  # fmt: skip
    if keep == "sampled":
        assert len(ranges) > 10 * PARSER_LIMIT  # thousands of single frames
    assert graph.count("between(") + graph.count("gte(") <= MAX_SELECT_TERMS + 2
    covered = {f for a, b in select for f in range(a, b + 1)}
    assert all(f in covered for a, b in ranges if b < expected - TAIL_FRAMES for f in (a, b))
    result = _parse_with_ffmpeg(graph)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.fixture(scope="module")
def many_segments(tmp_path_factory: pytest.TempPathFactory, epic_files) -> dict[str, object]:
    """A 50 s video at 59.94 fps with 400 short segments 0.12 s apart (real density is ~20
    per minute; this is 480): hundreds of separate ranges in both keep modes."""
    root = tmp_path_factory.mktemp("many-segments")
    epic_files.make_videos(root / "videos", [("P01_01", "60000/1001", 50.0)])
    rng = random.Random(0)
    rows = []
    for i in range(400):
        start = 0.12 * i + 0.01
        rows.append(("P01_01", round(start, 2), round(start + rng.uniform(0.03, 0.07), 2)))
    epic_files.write_test_split(root / "ann", rows)
    return {"root": root, "rows": rows}


@pytest.mark.slow
@pytest.mark.parametrize("keep", ["sampled", "segments"])
def test_hundreds_of_segments_extract_and_every_sampled_frame_shows_its_stamp(
    many_segments: dict[str, object], keep: str
) -> None:
    root = many_segments["root"]
    store = root / f"store-{keep}"
    manifest = plan_store(
        store_root=store, annotations_dir=root / "ann", videos_root=root / "videos",
        splits=("test",), shards=1, keep=keep, num_frames=(8,), margin_frames=0,
    )  # fmt: skip
    assert len(manifest.shards[0].videos[0].keep_ranges) > 3 * PARSER_LIMIT
    result = run_shard(store_root=store, shard_index=0, workers=2, tmp_dir=root / "tmp")
    assert result.status == "published"
    frames_store = FrameStore(store)
    meta = frames_store.video_meta("P01_01")
    with open(root / "ann" / SPLIT_FILES["test"], newline="") as handle:
        segments = list(csv.DictReader(handle))
    assert len(segments) == 400
    checked = 0
    for row in segments:
        frames = linspace_frames(int(row["start_frame"]), int(row["stop_frame"]), 8)
        jpegs = frames_store.read_frames("P01_01", frames)
        for frame, jpeg in zip(frames, jpegs, strict=True):
            stamp = read_stamp(np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")))
            nearest = round((int(frame) - 1) / meta.rate * meta.native_fps)
            assert abs(stamp - nearest) <= 1, (row["narration_id"], int(frame), stamp, nearest)
            checked += 1
    assert checked == 3200


@pytest.mark.slow
def test_an_ffmpeg_filter_failure_is_an_internal_error_not_a_bad_video(
    many_segments: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The old cap (200 terms) made ffmpeg refuse the select expression; the message blamed
    # the video ("download it again") with the re-download exit code.
    root = many_segments["root"]
    store = root / "store-internal"
    plan_store(
        store_root=store, annotations_dir=root / "ann", videos_root=root / "videos",
        splits=("test",), shards=1, keep="sampled", num_frames=(8,),
    )  # fmt: skip
    monkeypatch.setattr(decode_module, "MAX_SELECT_TERMS", 200)
    result = CliRunner().invoke(
        extract, ["run", "--store", str(store), "--shard-index", "0", "--tmp-dir", str(root / "t")]
    )
    assert result.exit_code == ExitCode.INTERNAL, result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert "FFmpegInternalError" in line and "not on the input file" in line
    assert "this is a bug" in line and "between(" not in line
    assert "download it again" not in result.output
    quoted = [
        line for line in result.output.splitlines() if "Error while parsing expression" in line
    ]
    assert len(quoted) == 1 and len(quoted[0]) < 400  # quoted once, trimmed
    assert not shard_path(store, 0).exists()


@pytest.mark.slow
def test_readme_cluster_recipe_keep_sampled_builds_the_mini_epic(mini_epic, tmp_path: Path) -> None:
    # Regression: `plan --keep sampled --num-frames 8` then `run --all` exited 3 on the
    # mini-EPIC ("Error while parsing expression"), blaming a video.
    store = tmp_path / "store"
    runner = CliRunner()
    result = runner.invoke(extract, [
        "plan", "--videos", str(mini_epic.videos_dir), "--annotations",
        str(mini_epic.annotations_dir), "--store", str(store), "--keep", "sampled",
        "--num-frames", "8", "--shards", "2",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        extract, ["run", "--store", str(store), "--all", "--tmp-dir", str(tmp_path / "t")]
    )
    assert result.exit_code == 0, result.output
    report = check_store(store, annotations_dir=mini_epic.annotations_dir)
    assert report.ok, report.problems
