"""Staging a store on node-local disk (``epic-train --stage-dir``): exactly the shards asked
for, byte for byte; reused when already there, copied again when they differ; leftovers of
a killed copy never used; a disk too small or a store incomplete refused before anything is
published."""

from __future__ import annotations

import filecmp
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

import epicdata.stage as stage
from epicdata.errors import ExitCode, OutOfSpaceError, StoreError, StoreIncompleteError
from epicdata.layout import MANIFEST_NAME, shard_path
from epicdata.manifest import Manifest
from epicdata.stage import TEMP_MARK, stage_store, staged_root
from epicdata.store import FrameStore
from preprocess.extract import run_shard
from preprocess.plan import plan_store

VIDEOS = [("P01_01", "60000/1001", 2.0), ("P01_101", "50", 2.0), ("P02_01", "30", 2.0)]


@pytest.fixture(scope="module")
def store(epic_files, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three short videos extracted into three shards (one video each)."""
    root = tmp_path_factory.mktemp("stage-source")
    epic_files.make_videos(root / "videos", VIDEOS)
    epic_files.write_test_split(
        root / "ann", [("P01_01", 0.2, 1.5), ("P01_101", 0.5, 1.9), ("P02_01", 0.1, 1.0)]
    )
    manifest = plan_store(
        store_root=root / "store",
        annotations_dir=root / "ann",
        videos_root=root / "videos",
        splits=("test",),
        shards=3,
    )
    for shard in manifest.shards:
        run_shard(store_root=root / "store", shard_index=shard.index, workers=1)
    assert all(len(shard.videos) == 1 for shard in manifest.shards)
    return root / "store"


def _video_of(store: Path, index: int) -> str:
    return next(v for v, i in Manifest.load(store).video_to_shard().items() if i == index)


def _staged_files(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "shards").iterdir()) if root.exists() else []


@pytest.mark.slow
def test_only_the_shards_holding_the_videos_are_copied_byte_for_byte(store, tmp_path):
    videos = [_video_of(store, 0), _video_of(store, 2), _video_of(store, 2)]
    staged = stage_store(store, tmp_path / "node", videos)
    assert staged == staged_root(store, tmp_path / "node") and staged.parent == tmp_path / "node"
    assert _staged_files(staged) == ["shard-00000.lmdb", "shard-00002.lmdb"]
    for index in (0, 2):
        assert filecmp.cmp(shard_path(store, index), shard_path(staged, index), shallow=False)
    assert filecmp.cmp(store / MANIFEST_NAME, staged / MANIFEST_NAME, shallow=False)
    assert not [p for p in staged.rglob("*") if TEMP_MARK in p.name]


def test_a_clip_read_from_the_staged_store_is_the_original_bytes(store, tmp_path):
    video = _video_of(store, 1)
    staged = FrameStore(stage_store(store, tmp_path, [video]))
    original = FrameStore(store)
    meta = original.video_meta(video)
    frames = [1, 7, 30, meta.last_stored_frame]
    assert staged.read_frames(video, frames) == original.read_frames(video, frames)
    assert staged.video_meta(video) == meta


def test_staging_again_copies_nothing(store, tmp_path, caplog):
    videos = [_video_of(store, 0), _video_of(store, 1)]
    staged = stage_store(store, tmp_path, videos)
    before = {i: shard_path(staged, i).stat() for i in (0, 1)}
    caplog.set_level("INFO", logger="epicdata.stage")
    assert stage_store(store, tmp_path, videos) == staged
    for index, stat in before.items():
        after = shard_path(staged, index).stat()
        assert (after.st_ino, after.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    assert "copied 0 shards" in caplog.text and "reused 2" in caplog.text


def test_two_stores_with_the_same_folder_name_do_not_share_a_staged_folder(tmp_path):
    assert staged_root(tmp_path / "a" / "store", tmp_path) != staged_root(
        tmp_path / "b" / "store", tmp_path
    )
    assert staged_root(tmp_path / "a" / "store", tmp_path).name.startswith("store-")


def test_a_leftover_temp_copy_is_never_used_and_is_removed(store, tmp_path):
    staged = staged_root(store, tmp_path)
    final = shard_path(staged, 0)
    final.parent.mkdir(parents=True)
    source = shard_path(store, 0).stat()
    # What a copy killed mid-way leaves: this process's own temp name and another's, cut
    # short, one even dressed with the source's mtime.
    own, other = stage._temp_name(final), final.with_name(f".{final.name}{TEMP_MARK}node7-1")
    for temp in (own, other):
        temp.write_bytes(shard_path(store, 0).read_bytes()[: source.st_size // 2])
        os.utime(temp, ns=(source.st_atime_ns, source.st_mtime_ns))
    stage_store(store, tmp_path, [_video_of(store, 0)])
    assert filecmp.cmp(shard_path(store, 0), final, shallow=False)
    assert not own.exists() and not other.exists()


@pytest.mark.parametrize("change", ["size", "mtime"])
def test_a_staged_shard_that_differs_from_the_source_is_copied_again(store, tmp_path, change):
    video = _video_of(store, 2)
    staged = shard_path(stage_store(store, tmp_path, [video]), 2)
    source = shard_path(store, 2).stat()
    data = bytearray(staged.read_bytes())
    if change == "size":  # cut short, with the source's mtime put back
        staged.write_bytes(bytes(data[: len(data) - 4096]))
        os.utime(staged, ns=(source.st_atime_ns, source.st_mtime_ns))
    else:  # same size, other bytes and another mtime
        data[len(data) // 2] ^= 0xFF
        staged.write_bytes(bytes(data))
        os.utime(staged, ns=(source.st_atime_ns, source.st_mtime_ns + 1_000_000_000))
    stage_store(store, tmp_path, [video])
    assert filecmp.cmp(shard_path(store, 2), staged, shallow=False)
    assert staged.stat().st_mtime_ns == source.st_mtime_ns


def _free(monkeypatch, free: int) -> None:
    monkeypatch.setattr(stage.shutil, "disk_usage", lambda path: SimpleNamespace(free=free))


def test_too_little_space_is_refused_naming_the_folder_and_nothing_is_published(
    store, tmp_path, monkeypatch
):
    need = sum(shard_path(store, i).stat().st_size for i in (0, 1))
    _free(monkeypatch, need - 1)
    with pytest.raises(OutOfSpaceError) as caught:
        stage_store(store, tmp_path / "node", [_video_of(store, 0), _video_of(store, 1)])
    assert caught.value.exit_code == ExitCode.NO_SPACE
    message = str(caught.value)
    assert str(tmp_path / "node") in message and f"{need:,} bytes" in message
    assert f"{need - 1:,} bytes" in message and "drop --stage-dir" in message
    staged = staged_root(store, tmp_path / "node")
    assert _staged_files(staged) == [] and not (staged / MANIFEST_NAME).exists()


def test_the_space_check_counts_only_the_shards_still_to_copy(store, tmp_path, monkeypatch):
    stage_store(store, tmp_path, [_video_of(store, 0)])
    _free(monkeypatch, shard_path(store, 1).stat().st_size)  # shard 0 is there already
    staged = stage_store(store, tmp_path, [_video_of(store, 0), _video_of(store, 1)])
    assert _staged_files(staged) == ["shard-00000.lmdb", "shard-00001.lmdb"]


def test_a_disk_that_fills_up_mid_copy_leaves_no_partial_shard(store, tiny_tmpfs, monkeypatch):
    _free(monkeypatch, 1 << 40)  # the check is fooled: the copy itself meets the full disk
    with pytest.raises(OutOfSpaceError, match="no space left staging shard-00000.lmdb"):
        stage_store(store, tiny_tmpfs, [_video_of(store, 0)])
    staged = staged_root(store, tiny_tmpfs)
    assert _staged_files(staged) == [] and not (staged / MANIFEST_NAME).exists()


def test_a_missing_source_shard_is_the_store_incomplete_error(store, tmp_path):
    broken = tmp_path / "store"
    shutil.copytree(store, broken)
    shard_path(broken, 1).unlink()
    with pytest.raises(StoreIncompleteError) as caught:
        stage_store(broken, tmp_path / "node", [_video_of(store, 0), _video_of(store, 1)])
    assert caught.value.exit_code == ExitCode.STORE_INCOMPLETE
    message = str(caught.value)
    assert "shard-00001.lmdb" in message and f"epic-check --store {broken}" in message
    assert not (tmp_path / "node").exists()


def test_a_video_outside_the_plan_is_refused(store, tmp_path):
    with pytest.raises(StoreError, match="not in the store's plan .P09_09.") as caught:
        stage_store(store, tmp_path, [_video_of(store, 0), "P09_09"])
    assert caught.value.exit_code == ExitCode.BAD_INPUT
