"""Staging a store on node-local disk (``epic-train --stage-dir``): exactly the shards asked
for, byte for byte; reused when already there, copied again when they differ; leftovers of
a killed copy never used; a disk too small or a store incomplete refused before anything is
published."""

from __future__ import annotations

import errno
import filecmp
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

import epicdata.stage as stage
from epicdata.checksums import frame_checksum, unpack_checksums
from epicdata.errors import (
    EnvironmentProblem,
    ExitCode,
    OutOfSpaceError,
    StoreError,
    StoreIncompleteError,
)
from epicdata.frame_index import add_index
from epicdata.layout import MANIFEST_NAME, checksum_key, frame_key, shard_path
from epicdata.lmdb_pages import ShardPages
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


def _change_frame_in_place(shard: Path, video: str, frame: int, *, crc: bool = True) -> bytes:
    """Change stored frame ``frame`` of ``video`` inside ``shard`` without moving a byte, as a
    tool editing the file in place would: one letter of the JPEG's comment ("Lavc" ->
    "lavc": it decodes to the same picture), and (``crc``) its CRC-32 in the video's table
    and its frame index (rewritten in place, same length), so that the shard stays
    consistent. Returns the new JPEG bytes."""
    pages = ShardPages.open(shard)
    assert pages is not None
    at, size = pages.locate(frame_key(video, frame))
    table_at, table_size = pages.locate(checksum_key(video))
    old, table = pages.read(at, size), pages.read(table_at, table_size)
    pages.close()
    mark = old.index(b"Lavc")
    new = old[:mark] + b"lavc" + old[mark + 4 :]
    position = unpack_checksums(table).tolist().index(frame_checksum(old))
    fd = os.open(shard, os.O_WRONLY)
    try:
        os.pwrite(fd, new, at)
        if crc:
            os.pwrite(fd, frame_checksum(new).to_bytes(4, "little"), table_at + 4 * position)
    finally:
        os.close(fd)
    if crc:
        size = shard.stat().st_size
        add_index(shard)
        assert shard.stat().st_size == size
    return new


def _own_store(store: Path, tmp_path: Path) -> Path:
    """A copy of the module's store that a test may change (copy2 keeps the mtimes)."""
    shutil.copytree(store, tmp_path / "store")
    return tmp_path / "store"


def test_frames_changed_in_place_behind_a_restored_mtime_are_copied_again(store, tmp_path, caplog):
    # Regression: a staged copy with the source's size and mtime was reused, so a shard
    # changed in place and given its old mtime back (`touch -r`) was read stale, exit 0.
    source = _own_store(store, tmp_path)
    video, shard = _video_of(source, 1), shard_path(source, 1)
    staged = stage_store(source, tmp_path / "node", [video])
    before = shard.stat()
    new = _change_frame_in_place(shard, video, 5)
    os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns))  # touch -r
    after = shard.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    caplog.set_level("INFO", logger="epicdata.stage")
    stage_store(source, tmp_path / "node", [video])
    assert (
        "copied 1 shards" in caplog.text and "source shard was replaced or written" in caplog.text
    )
    assert filecmp.cmp(shard, shard_path(staged, 1), shallow=False)
    assert FrameStore(staged, staged_from=source).read_frames(video, [5]) == [new]


def test_a_re_extracted_shard_with_the_old_size_and_mtime_is_copied_again(store, tmp_path):
    # Regression: re-extraction publishes a new file by rename; with the old size and mtime
    # (restored, or by chance) the stale copy was reused.
    source = _own_store(store, tmp_path)
    video, shard = _video_of(source, 0), shard_path(source, 0)
    staged = stage_store(source, tmp_path / "node", [video])
    before = shard.stat()
    fresh = shard.with_name(".fresh.lmdb")
    shutil.copyfile(shard, fresh)
    new = _change_frame_in_place(fresh, video, 3)
    os.utime(fresh, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(fresh, shard)  # published as the extractor publishes
    assert (shard.stat().st_size, shard.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    stage_store(source, tmp_path / "node", [video])
    assert filecmp.cmp(shard, shard_path(staged, 0), shallow=False)
    assert FrameStore(staged).read_frames(video, [3]) == [new]


@pytest.mark.parametrize("record", ["missing", "other metadata", "unreadable"])
def test_a_staged_shard_without_a_matching_record_is_copied_again(store, tmp_path, caplog, record):
    # What the record says is what decides: no record (an older release's copy, or one the
    # reader found damaged), or one whose digest of the source's checksums differs.
    video = _video_of(store, 2)
    staged = shard_path(stage_store(store, tmp_path, [video]), 2)
    sidecar = staged.parent.parent / stage.SOURCES_DIR / f"{staged.name}.json"
    entry = json.loads(sidecar.read_text())
    if record == "missing":
        sidecar.unlink()
    elif record == "other metadata":
        entry["metadata_sha256"] = "0" * 64
        sidecar.write_text(json.dumps(entry))
    else:
        sidecar.write_text("{not json")
    inode = staged.stat().st_ino
    caplog.set_level("INFO", logger="epicdata.stage")
    stage_store(store, tmp_path, [video])
    assert staged.stat().st_ino != inode and "copied 1 shards" in caplog.text
    assert ("metadata" if record == "other metadata" else "no record") in caplog.text
    assert json.loads(sidecar.read_text())["copy"] == stage._file_id(staged.stat())
    caplog.clear()
    stage_store(store, tmp_path, [video])  # and the new record is honoured
    assert "copied 0 shards" in caplog.text and "reused 1" in caplog.text


def test_a_damaged_staged_copy_blames_the_copy_and_is_copied_again_at_the_next_start(
    store, tmp_path, caplog
):
    # Regression: damage in a staged copy said to re-extract the store's shard with --force
    # (the store was fine) and every later run reused the same damaged copy.
    video = _video_of(store, 1)
    staged = stage_store(store, tmp_path / "node", [video])
    copy = shard_path(staged, 1)
    _change_frame_in_place(copy, video, 7, crc=False)  # the JPEG no longer matches its CRC
    # Damage that leaves no trace the identity check can see (a failing disk): the record
    # is made to match the damaged copy, so only the reader can find it.
    sidecar = staged / stage.SOURCES_DIR / f"{copy.name}.json"
    entry = json.loads(sidecar.read_text())
    entry["copy"] = stage._file_id(copy.stat())
    sidecar.write_text(json.dumps(entry))
    with pytest.raises(StoreIncompleteError) as caught:
        FrameStore(staged, staged_from=store).read_frames(video, [6, 7])
    assert caught.value.exit_code == ExitCode.STORE_INCOMPLETE
    message = str(caught.value)
    assert message.startswith(f"the staged copy of a shard is damaged: {video} frame 7: checksum")
    assert f"{copy}, copied from {shard_path(store, 1)}" in message
    assert f"the store {store} is not affected" in message and "copies this shard again" in message
    assert "--force" not in message and "re-extract" not in message
    assert not sidecar.exists()  # the mark the next start goes by
    caplog.set_level("INFO", logger="epicdata.stage")
    stage_store(store, tmp_path / "node", [video])
    assert "no record" in caplog.text and "copied 1 shards" in caplog.text
    assert filecmp.cmp(shard_path(store, 1), copy, shallow=False)


def test_a_stage_dir_below_a_regular_file_is_a_usage_error_naming_it(store, tmp_path):
    # Regression: NotADirectoryError traceback.
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(EnvironmentProblem) as caught:
        stage_store(store, tmp_path / "file" / "sub", [_video_of(store, 0)])
    assert caught.value.exit_code == ExitCode.BAD_INPUT
    message = str(caught.value)
    assert (
        message.startswith("cannot write --stage-dir") and str(tmp_path / "file" / "sub") in message
    )
    assert "is a file, not a folder" in message


def test_no_room_for_the_manifest_is_out_of_space_naming_the_stage_dir(
    store, tmp_path, monkeypatch
):
    # Regression: room for the shards but not the manifest gave a generic "no space left on
    # the disk" naming neither --stage-dir nor its folder. The disk fills up as the
    # manifest's copy is synced (as NFS and delayed allocation report it).
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").find(f".{MANIFEST_NAME}{TEMP_MARK}") >= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    node = tmp_path / "node"
    with pytest.raises(OutOfSpaceError) as caught:
        stage_store(store, node, [_video_of(store, 0)])
    assert caught.value.exit_code == ExitCode.NO_SPACE
    message = str(caught.value)
    need = (store / MANIFEST_NAME).stat().st_size
    assert message.startswith(f"no space left staging {MANIFEST_NAME} (--stage-dir {node}: needs")
    assert f"{need:,} bytes" in message and " free)" in message and "drop --stage-dir" in message
    staged = staged_root(store, node)
    assert not (staged / MANIFEST_NAME).exists()
    assert not [p for p in staged.rglob("*") if TEMP_MARK in p.name]
