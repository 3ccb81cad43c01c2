"""`epic-extract plan`: inputs checked all at once before anything is written, shards
balanced, the real EPIC-100 validation + test plan sized from video_info.csv."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from epicdata.errors import ExitCode
from epicdata.layout import MANIFEST_NAME, shard_path
from epicdata.manifest import Manifest
from preprocess.check import check_store
from preprocess.cli import extract
from preprocess.extract import run_shard


def _plan(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(extract, ["plan", *args])
    return result.exit_code, result.output


def test_missing_empty_and_truncated_videos_are_all_reported_before_writing(
    tmp_path: Path, epic_files
) -> None:
    videos = tmp_path / "videos"
    made = epic_files.make_videos(videos, [("P01_01", "50", 1.0)])
    empty = epic_files.video_path(videos, "P01_02")
    empty.parent.mkdir(parents=True, exist_ok=True)
    empty.write_bytes(b"")
    truncated = epic_files.video_path(videos, "P01_03")
    # Without its moov atom (written last by ffmpeg) an MP4 cannot be read.
    truncated.write_bytes(made["P01_01"].path.read_bytes()[:2000])
    ann = tmp_path / "ann"
    epic_files.write_test_split(
        ann,
        [("P01_01", 0.1, 0.5), ("P01_02", 0.1, 0.5), ("P01_03", 0.1, 0.5), ("P01_04", 0.1, 0.5)],
    )
    store = tmp_path / "store"
    args = [
        "--videos",
        str(videos),
        "--annotations",
        str(ann),
        "--store",
        str(store),
        "--splits",
        "test",
    ]
    code, output = _plan(*args)
    assert code == ExitCode.BAD_SOURCE
    assert "3 of 4 videos cannot be planned" in output
    assert "P01_02.MP4: empty file" in output
    assert "P01_03.MP4: ffprobe cannot read it" in output and "moov atom not found" in output
    assert "P01_04: missing" in output
    assert not (store / MANIFEST_NAME).exists()

    code, output = _plan(*args, "--allow-missing")
    assert code == 0, output
    assert "planned WITHOUT 3 videos: P01_02, P01_03, P01_04" in output
    manifest = Manifest.load(store)
    assert [v.video_id for s in manifest.shards for v in s.videos] == ["P01_01"]


def test_video_shorter_than_its_annotations_is_refused(tmp_path: Path, epic_files) -> None:
    epic_files.make_videos(tmp_path / "videos", [("P01_01", "50", 1.0)])
    epic_files.write_test_split(tmp_path / "ann", [("P01_01", 0.5, 3.0)])
    code, output = _plan(
        "--videos", str(tmp_path / "videos"), "--annotations", str(tmp_path / "ann"),
        "--store", str(tmp_path / "store"), "--splits", "test",
    )  # fmt: skip
    assert code == ExitCode.BAD_SOURCE
    assert "P01_01.MP4: shorter than its annotations" in output and "frame 180" in output


def test_plan_balances_shards_and_prints_the_sbatch_line(tmp_path: Path, epic_files) -> None:
    specs = [
        ("P01_01", "50", 3.0),
        ("P01_02", "50", 1.0),
        ("P01_03", "50", 1.0),
        ("P01_04", "50", 1.0),
    ]
    epic_files.make_videos(tmp_path / "videos", specs)
    epic_files.write_test_split(tmp_path / "ann", [(v, 0.0, d - 0.1) for v, _, d in specs])
    code, output = _plan(
        "--videos", str(tmp_path / "videos"), "--annotations", str(tmp_path / "ann"),
        "--store", str(tmp_path / "store"), "--splits", "test", "--shards", "2", "--keep", "all",
    )  # fmt: skip
    assert code == 0, output
    manifest = Manifest.load(tmp_path / "store")
    assert [[v.video_id for v in s.videos] for s in manifest.shards] == [
        ["P01_01"],
        ["P01_02", "P01_03", "P01_04"],
    ]
    assert [s.planned_frames for s in manifest.shards] == [180, 180]
    # The next step, with the site's settings (EPIC_SITE names the site file).
    assert f"next: epic-slurm submit extract --store {tmp_path / 'store'} --array 0-1" in output


def test_sampled_keeps_only_the_frames_the_samplers_read(tmp_path: Path, epic_files) -> None:
    epic_files.make_videos(tmp_path / "videos", [("P01_01", "50", 4.0)])
    epic_files.write_test_split(tmp_path / "ann", [("P01_01", 1.0, 3.0)])
    code, output = _plan(
        "--videos", str(tmp_path / "videos"), "--annotations", str(tmp_path / "ann"),
        "--store", str(tmp_path / "store"), "--splits", "test", "--keep", "sampled",
        "--num-frames", "8",
    )  # fmt: skip
    assert code == 0, output
    video = Manifest.load(tmp_path / "store").shards[0].videos[0]
    # 8 linspace + 8 TSN centres (some shared) in 60..180, plus the tail kept for clamping.
    tail = [r for r in video.keep_ranges if r[1] == video.expected_frames]
    assert sum(b - a + 1 for a, b in video.keep_ranges if (a, b) not in tail) <= 16
    assert "page cache" in output


def test_real_validation_and_test_plan_covers_205_videos(
    real_annotations: Path, tmp_path: Path
) -> None:
    code, output = _plan(
        "--video-info", str(real_annotations / "EPIC_100_video_info.csv"),
        "--annotations", str(real_annotations), "--store", str(tmp_path / "store"),
        "--splits", "validation,test",
    )  # fmt: skip
    assert code == 0, output
    manifest = Manifest.load(tmp_path / "store")
    videos = [v for s in manifest.shards for v in s.videos]
    assert len(videos) == 205
    assert manifest.extra["sizing_only"] and not manifest.extra["excluded_videos"]
    frames = sum(v.planned_frames for v in videos)
    print(output, f"\nplanned frames {frames:,}, bytes {manifest.extra['estimated_bytes']:,}")
    assert 1_000_000 < frames < sum(v.expected_frames for v in videos)


def test_plan_refuses_a_planned_store_with_published_shards(tmp_path: Path) -> None:
    (tmp_path / "store" / "shards").mkdir(parents=True)
    (tmp_path / "store" / "shards" / "shard-00000.lmdb").write_bytes(b"x")
    (tmp_path / "store" / MANIFEST_NAME).write_text("{}")
    (tmp_path / "ann").mkdir()
    code, output = _plan(
        "--videos", str(tmp_path), "--annotations", str(tmp_path / "ann"),
        "--store", str(tmp_path / "store"),
    )  # fmt: skip
    assert code == ExitCode.BAD_INPUT and "is planned and holds 1 published shard" in output


def test_a_lost_manifest_is_recovered_by_the_same_plan_without_re_extracting(
    small_store: dict[str, Path],
) -> None:
    # Regression: a dead end. `run` asked for `plan`, and `plan` refused because shards exist.
    store, ann, videos = small_store["store"], small_store["annotations"], small_store["videos"]
    run_shard(store_root=store, shard_index=0, tmp_dir=small_store["tmp"])
    shard_bytes = shard_path(store, 0).read_bytes()
    original = (store / MANIFEST_NAME).read_text()
    (store / MANIFEST_NAME).unlink()
    args = ["--videos", str(videos), "--annotations", str(ann), "--store", str(store)]
    code, output = _plan(*args, "--splits", "test", "--keep", "all")
    assert code == ExitCode.BAD_INPUT, output
    assert (
        "does not match the 1 published shard" in output and "exact `epic-extract plan`" in output
    )
    assert not (store / MANIFEST_NAME).exists()
    code, output = _plan(*args, "--splits", "test", "--shards", "1")
    assert code == 0, output
    assert "recovered it from this plan" in output
    recovered = json.loads((store / MANIFEST_NAME).read_text())
    assert recovered["shards"] == json.loads(original)["shards"]
    assert shard_path(store, 0).read_bytes() == shard_bytes
    assert check_store(store).ok


@pytest.mark.parametrize("both", [True, False])
def test_exactly_one_source_of_durations(tmp_path: Path, both: bool, epic_files) -> None:
    epic_files.write_test_split(tmp_path / "ann", [("P01_01", 0.1, 0.5)])
    args = [
        "--annotations",
        str(tmp_path / "ann"),
        "--store",
        str(tmp_path / "s"),
        "--splits",
        "test",
    ]
    if both:
        (tmp_path / "info.csv").write_text(
            "video_id,duration,fps,resolution\nP01_01,2.0,50,320x180\n"
        )
        args += ["--videos", str(tmp_path), "--video-info", str(tmp_path / "info.csv")]
    code, output = _plan(*args)
    assert code == ExitCode.BAD_INPUT and "either --videos" in output
