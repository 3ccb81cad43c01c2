"""`epic-extract run`: publishes complete shards only, whatever goes wrong and when."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from epicdata.errors import ExitCode, FFmpegNotFoundError, OutOfSpaceError
from epicdata.layout import shard_path
from epicdata.lmdb_env import open_shard_readonly
from epicdata.synthetic import make_video
from preprocess import extract as extract_module
from preprocess.check import check_store
from preprocess.cli import extract
from preprocess.extract import BadVideoError, run_shard
from preprocess.plan import plan_store
from preprocess.writer import ShardSpaceError, remove_stale_temps


def _run(store: Path, tmp: Path, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        extract, ["run", "--store", str(store), "--tmp-dir", str(tmp), *extra]
    )
    return result.exit_code, result.output


def _items(path: Path) -> list[tuple[bytes, bytes]]:
    env = open_shard_readonly(path)
    try:
        with env.begin() as txn:
            return list(txn.cursor())
    finally:
        env.close()


def test_run_then_check_is_clean(small_store: dict[str, Path]) -> None:
    code, output = _run(small_store["store"], small_store["tmp"], "--shard-index", "0")
    assert code == 0, output
    assert "shard 0: published" in output
    report = check_store(
        small_store["store"], annotations_dir=small_store["annotations"], deep=True
    )
    assert report.ok, report.problems
    assert list(small_store["tmp"].iterdir()) == []  # scratch cleaned up


def test_same_index_twice_publishes_one_identical_shard(small_store: dict[str, Path]) -> None:
    store, tmp = small_store["store"], small_store["tmp"]
    assert _run(store, tmp, "--shard-index", "0")[0] == 0
    path = shard_path(store, 0)
    first_bytes, first_items = path.read_bytes(), _items(path)
    code, output = _run(store, tmp, "--shard-index", "0")
    assert code == 0 and "skipped" in output
    assert path.read_bytes() == first_bytes
    code, output = _run(store, tmp, "--shard-index", "0", "--force")
    assert code == 0 and "published" in output
    # The same keys and values, but for the frame index: its offsets follow the file's
    # layout, which follows how the decoder threads' batches interleaved. It is checked
    # against the B-tree instead, and the publish record (a content digest) is the same.
    items = _items(path)
    assert _without_index(items) == _without_index(first_items)
    assert [k for k, _ in items] == [k for k, _ in first_items]
    assert check_store(store).ok
    assert sorted(p.name for p in path.parent.iterdir()) == ["shard-00000.lmdb"]


def _without_index(items: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in items if not k.startswith(b"__meta__/index/")]


def test_shard_index_from_slurm_array_task_id(small_store: dict[str, Path]) -> None:
    result = CliRunner().invoke(
        extract,
        ["run", "--store", str(small_store["store"]), "--tmp-dir", str(small_store["tmp"])],
        env={"SLURM_ARRAY_TASK_ID": "0"},
    )
    assert result.exit_code == 0, result.output
    assert shard_path(small_store["store"], 0).is_file()


def test_video_changed_after_planning_fails_the_shard_naming_it(
    small_store: dict[str, Path],
) -> None:
    video = small_store["videos"] / "P01" / "videos" / "P01_101.MP4"
    video.write_bytes(video.read_bytes()[:3000])  # damaged after planning: no moov atom
    code, output = _run(small_store["store"], small_store["tmp"], "--shard-index", "0")
    assert code == ExitCode.BAD_SOURCE
    assert "P01_101.MP4: changed since `epic-extract plan`" in output
    assert not shard_path(small_store["store"], 0).exists()
    assert list(small_store["tmp"].iterdir()) == []


def test_video_replaced_by_another_of_the_same_length_is_refused(
    small_store: dict[str, Path], tmp_path: Path
) -> None:
    # Regression: the replacement was extracted and published silently.
    planned = small_store["videos"] / "P01" / "videos" / "P01_101.MP4"
    other = make_video(tmp_path / "P01_101.MP4", fps="50", duration=2.0, size=(192, 108), seed=1)
    planned.write_bytes(Path(other.path).read_bytes())
    code, output = _run(small_store["store"], small_store["tmp"], "--shard-index", "0")
    assert code == ExitCode.BAD_SOURCE, output
    assert "changed since `epic-extract plan`" in output
    assert not shard_path(small_store["store"], 0).exists()


def test_bad_video_fails_the_shard_quoting_ffmpeg(small_store: dict[str, Path]) -> None:
    # A store planned before fingerprints existed: ffmpeg is the one that finds the damage.
    manifest = small_store["store"] / "manifest.json"
    data = json.loads(manifest.read_text())
    for video in data["shards"][0]["videos"]:
        del video["fingerprint"]
    manifest.write_text(json.dumps(data))
    video = small_store["videos"] / "P01" / "videos" / "P01_101.MP4"
    video.write_bytes(video.read_bytes()[:3000])  # damaged after planning: no moov atom
    code, output = _run(small_store["store"], small_store["tmp"], "--shard-index", "0")
    assert code == ExitCode.BAD_SOURCE
    assert "P01_101" in output and "moov atom not found" in output
    assert "download it again" in output
    assert f"epic-slurm submit extract --store {small_store['store'].resolve()} --array 0" in output
    assert not shard_path(small_store["store"], 0).exists()
    assert list(small_store["tmp"].iterdir()) == []
    # The checker, run later (another job), says why the shard is missing, naming the video.
    (problem,) = check_store(small_store["store"]).problems
    assert "its last extraction failed" in problem and "P01_101" in problem, problem
    # Repaired and rerun, the record goes with the failure.
    shutil.copy2(small_store["videos"] / "P01" / "videos" / "P01_01.MP4", video)
    data["shards"][0]["videos"] = [
        v for v in data["shards"][0]["videos"] if v["video_id"] != "P01_101"
    ]
    manifest.write_text(json.dumps(data))
    assert run_shard(store_root=small_store["store"], shard_index=0, tmp_dir=small_store["tmp"])
    assert not (small_store["store"] / "failures" / "shard-00000.txt").exists()


def test_too_small_map_size_is_a_clear_error_and_publishes_nothing(
    small_store: dict[str, Path],
) -> None:
    with pytest.raises(ShardSpaceError, match="map size 131,072 bytes is too small"):
        run_shard(
            store_root=small_store["store"],
            shard_index=0,
            tmp_dir=small_store["tmp"],
            map_size=1 << 17,
        )
    code, output = _run(small_store["store"], small_store["tmp"], "--all", "--map-size", "131072")
    assert code == ExitCode.NO_SPACE and "--map-size" in output, output
    assert not shard_path(small_store["store"], 0).exists()
    assert list(small_store["tmp"].iterdir()) == []


def test_tmp_dir_too_small_for_the_estimate_is_refused_up_front(
    small_store: dict[str, Path], tiny_tmpfs: Path
) -> None:
    code, output = _run(small_store["store"], tiny_tmpfs, "--shard-index", "0")
    assert code == ExitCode.NO_SPACE, output
    first = next(line for line in output.splitlines() if line.startswith("error:"))
    assert first.startswith(f"error: not enough space for --tmp-dir ({tiny_tmpfs}: needs about")
    assert "free" in first
    assert not shard_path(small_store["store"], 0).exists()


def test_tmp_dir_filling_up_mid_shard_is_a_clear_error_and_publishes_nothing(
    small_store: dict[str, Path], tiny_tmpfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pretend the up-front estimate fits, so the disk really fills while writing.
    monkeypatch.setattr(extract_module, "preflight_output", lambda *args, **kwargs: None)
    code, output = _run(small_store["store"], tiny_tmpfs, "--shard-index", "0")
    assert code == ExitCode.NO_SPACE, output
    assert "no space left writing" in output and "--tmp-dir" in output
    assert not shard_path(small_store["store"], 0).exists()
    assert list(tiny_tmpfs.iterdir()) == []


@pytest.mark.slow
def test_sigkill_mid_shard_leaves_nothing_and_a_rerun_completes(
    small_store: dict[str, Path], tmp_path: Path
) -> None:
    # An ffmpeg that finishes its video and then hangs: the run is killed after the first
    # video is in the scratch shard and before the second one ends.
    slow = tmp_path / "slow-ffmpeg"
    slow.write_text('#!/bin/sh\nffmpeg "$@"\nstatus=$?\nsleep 60\nexit $status\n')
    slow.chmod(0o755)
    command = [sys.executable, "-m", "preprocess", "run", "--store", str(small_store["store"])]
    command += ["--shard-index", "0", "--workers", "1", "--tmp-dir", str(small_store["tmp"])]
    proc = subprocess.Popen(
        command,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "EPIC_FFMPEG": str(slow)},
        start_new_session=True,
    )
    try:
        scratch = []
        while not scratch:
            assert proc.poll() is None, proc.stderr.read()
            scratch = list(small_store["tmp"].glob("epic-shard-00000-*/shard-00000.lmdb"))
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not shard_path(small_store["store"], 0).exists()
    code, output = _run(small_store["store"], small_store["tmp"], "--shard-index", "0")
    assert code == 0, output
    assert check_store(small_store["store"]).ok


def test_run_works_from_any_directory(
    small_store: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: video paths were stored relative to the directory `plan` ran in.
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "store-relative"
    plan_store(
        store_root=store, annotations_dir="ann", videos_root="videos", splits=("test",), shards=1
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = run_shard(store_root=store, shard_index=0, tmp_dir=tmp_path / "scratch")
    assert result.status == "published" and len(result.videos) == 2


def test_moved_videos_are_found_with_the_videos_option(
    small_store: dict[str, Path], tmp_path: Path
) -> None:
    moved = tmp_path / "moved-videos"
    shutil.move(small_store["videos"], moved)
    store, tmp = small_store["store"], small_store["tmp"]
    code, output = _run(store, tmp, "--shard-index", "0")
    assert code == ExitCode.BAD_SOURCE and "no such file" in output and "--videos" in output
    code, output = _run(store, tmp, "--shard-index", "0", "--videos", str(moved))
    assert code == 0, output
    assert check_store(store).ok


def test_a_second_run_removing_the_temp_copy_gives_the_first_one_clear_line(
    small_store: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: a paused run whose temp copy a second run of the same index removed died
    # with `lmdb.Error ... No such file or directory` and a traceback.
    store, tmp = small_store["store"], small_store["tmp"]
    assert _run(store, tmp, "--shard-index", "0")[0] == 0
    published = shard_path(store, 0).read_bytes()
    real_fsync = os.fsync

    def second_run_starts(fd: int) -> None:  # the other run's cleanup, mid-publish
        remove_stale_temps(store, 0)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", second_run_starts)
    code, output = _run(store, tmp, "--shard-index", "0", "--force")
    assert code == ExitCode.BAD_INPUT, output
    (line,) = [line for line in output.splitlines() if line.startswith("error:")]
    assert "removed by another run of the same index" in line and "Traceback" not in output
    assert shard_path(store, 0).read_bytes() == published


# ----------------------------------------------------------------------------- run --all

#: Four 1-second videos, one per shard of a 4-shard plan.
FOUR_VIDEOS = [("P01_01", "50", 1.0), ("P01_02", "50", 1.0), ("P02_01", "50", 1.0)]
FOUR_VIDEOS += [("P02_02", "50", 1.0)]


@pytest.fixture(scope="module")
def _four_inputs(tmp_path_factory: pytest.TempPathFactory, epic_files, read_only) -> Path:
    """The videos and annotations of a 4-shard store, encoded once: READ ONLY."""
    root = tmp_path_factory.mktemp("four_shards")
    epic_files.make_videos(root / "videos", FOUR_VIDEOS)
    epic_files.write_test_split(root / "ann", [(v, 0.1, 0.9) for v, _, _ in FOUR_VIDEOS])
    with read_only(root, "four_shards' videos"):
        yield root


@pytest.fixture
def four_shards(_four_inputs: Path, tmp_path: Path, epic_files) -> dict[str, Path]:
    """This test's copy of the videos, planned into 4 shards of one video each (not run):
    the store, the scratch folder and ``video<N>``, the video of shard N."""
    shutil.copytree(_four_inputs / "videos", tmp_path / "videos")
    store = tmp_path / "store"
    manifest = plan_store(
        store_root=store,
        annotations_dir=_four_inputs / "ann",
        videos_root=tmp_path / "videos",
        splits=("test",),
        shards=4,
    )
    videos = {s.index: [v.video_id for v in s.videos] for s in manifest.shards}
    assert sorted(videos) == [0, 1, 2, 3] and all(len(v) == 1 for v in videos.values()), videos
    paths = {
        f"video{i}": epic_files.video_path(tmp_path / "videos", v) for i, (v,) in videos.items()
    }
    return {"store": store, "tmp": tmp_path / "scratch", **paths}


def _resubmit_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "epic-slurm submit extract" in line]


def test_run_all_goes_on_past_bad_videos_and_resubmits_every_failed_shard_in_one_line(
    four_shards: dict[str, Path],
) -> None:
    # Regression: `run --all` stopped at the first bad video; the healthy shards after it
    # were never attempted and the resubmit hint named only the first failed shard.
    for i in (0, 1, 3):
        video = four_shards[f"video{i}"]
        video.write_bytes(video.read_bytes()[:3000])  # damaged after planning
    code, output = _run(four_shards["store"], four_shards["tmp"], "--all")
    assert code == ExitCode.BAD_SOURCE, output
    assert shard_path(four_shards["store"], 2).is_file()  # after two failed shards
    assert "shard 2: published" in output
    for i in (0, 1, 3):
        assert not shard_path(four_shards["store"], i).exists()
    (line,) = _resubmit_lines(output)
    store = four_shards["store"].resolve()
    assert line.endswith(f"epic-slurm submit extract --store {store} --array 0-1,3"), line
    (error,) = [line for line in output.splitlines() if line.startswith("error:")]
    assert error.startswith("error: 3 of 4 shards not published"), error
    for i in (0, 1, 3):  # each failed shard named with its video in the summary
        assert f"  shard {i}: {four_shards[f'video{i}'].stem}: " in output
    assert "Traceback" not in output
    assert list(four_shards["tmp"].iterdir()) == []


@pytest.mark.parametrize(
    ("stop", "code"),
    [
        (OutOfSpaceError("no space left on the disk", where="/scratch"), ExitCode.NO_SPACE),
        (FFmpegNotFoundError("ffmpeg not found"), ExitCode.BAD_INPUT),
        (KeyboardInterrupt(), ExitCode.INTERRUPTED),
    ],
    ids=["out-of-space", "environment", "ctrl-c"],
)
def test_run_all_stops_at_once_on_what_every_shard_would_meet(
    four_shards: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    stop: BaseException,
    code: ExitCode,
) -> None:
    # Shard 0 has a bad video (3), shard 1 stops the run (4, 2 or 130): shards 2 and 3 are
    # never attempted, and the exit code is the one that stopped it, not 3.
    attempted = []

    def fake_run_shard(*, store_root: Path, shard_index: int, **options: object) -> None:
        attempted.append(shard_index)
        if shard_index == 0:
            raise BadVideoError(0, {"P01_01": "moov atom not found"}, store_root)
        raise stop

    monkeypatch.setattr("preprocess.cli.run_shard", fake_run_shard)
    exit_code, output = _run(four_shards["store"], four_shards["tmp"], "--all")
    assert exit_code == code, output
    assert attempted == [0, 1]
    (line,) = _resubmit_lines(output)
    assert "stopped at shard 1" in line and "shards 2-3 (not attempted)" in line, line
    assert line.endswith("--array 0-3"), line
    assert len([x for x in output.splitlines() if x.startswith("error:")]) == 1, output
    assert "Traceback" not in output
