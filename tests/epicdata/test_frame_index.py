"""The frame index and publish record of store format 2 (epicdata.frame_index): written at
publish with every entry true to the file, read by FrameStore, and every way it can be
wrong (damaged, stale, cut off half-written, missing) refused by the reader and named by
epic-check, which rewrites it in place with --upgrade."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import lmdb
import pytest
from click.testing import CliRunner

from epicdata import store as store_module
from epicdata.errors import ExitCode, StoreIncompleteError
from epicdata.frame_index import ENTRY, HEADER
from epicdata.layout import (
    PUBLISH_RECORD_KEY,
    SHARD_META_KEY,
    checksum_key,
    frame_index_key,
    frame_key,
    shard_path,
    video_meta_key,
)
from epicdata.memory import memory_limit_bytes
from epicdata.metadata import ShardMeta, VideoMeta
from epicdata.ranges import frames_in_ranges
from epicdata.store import FrameStore
from preprocess.check import check_store
from preprocess.cli import check


@pytest.fixture
def store(small_store_extracted_ro: dict[str, Path], tmp_path: Path) -> Path:
    """This test's own copy of the extracted one-shard store."""
    copy = tmp_path / "store"
    shutil.copytree(small_store_extracted_ro["store"], copy)
    return copy


def _items(path: Path) -> dict[bytes, bytes]:
    """Every key and value of a shard, as py-lmdb (the oracle) reads them."""
    env = lmdb.open(str(path), subdir=False, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return dict(txn.cursor().iternext())
    finally:
        env.close()


def _entries(items: dict[bytes, bytes], video: str) -> list[tuple[int, int, int]]:
    blob = items[frame_index_key(video)]
    return list(struct.iter_unpack("<QII", blob[16:]))


def _videos(items: dict[bytes, bytes]) -> dict[str, list[int]]:
    """Each video's stored frame numbers, from its metadata."""
    out = {}
    for key, value in items.items():
        if key.startswith(b"__meta__/video/"):
            meta = VideoMeta.from_bytes(value)
            out[meta.video_id] = frames_in_ranges(meta.stored_ranges).tolist()
    return out


def _entry_offset(path: Path, video: str, position: int) -> int:
    """File offset of entry ``position`` of ``video``'s index (found in the file by value)."""
    items = _items(path)
    data = path.read_bytes()
    blob = items[frame_index_key(video)]
    assert data.count(blob) == 1
    return data.find(blob) + HEADER.size + ENTRY.size * position


def test_every_entry_is_where_lmdb_keeps_the_frame(store: Path) -> None:
    # Independent of the page reader: the bytes at each entry's offset are py-lmdb's value
    # of the frame's key, and the CRC is zlib's of them and the video's stored checksum.
    path = shard_path(store, 0)
    data, items = path.read_bytes(), _items(path)
    videos = _videos(items)
    assert len(videos) == 2
    for video, frames in videos.items():
        blob = items[frame_index_key(video)]
        magic, version, images, count, crc = struct.unpack_from("<4sHHII", blob)
        assert (magic, version, images, count) == (b"EPFI", 1, 1, len(frames))
        assert crc == zlib.crc32(blob[16:]) and len(blob) == 16 + 16 * len(frames)
        sums = struct.unpack(f"<{len(frames)}I", items[checksum_key(video)])
        for frame, (offset, length, entry_crc), stored in zip(
            frames, _entries(items, video), sums, strict=True
        ):
            value = items[frame_key(video, frame)]
            assert data[offset : offset + length] == value, (video, frame)
            assert entry_crc == zlib.crc32(value) == stored


def test_the_publish_record_is_the_digest_of_the_metadata(store: Path) -> None:
    items = _items(shard_path(store, 0))
    record = json.loads(items[PUBLISH_RECORD_KEY])
    digest = hashlib.sha256()
    keys = [SHARD_META_KEY]
    for video in ShardMeta.from_bytes(items[SHARD_META_KEY]).video_ids:
        keys += [video_meta_key(video), checksum_key(video)]
    for key in keys:
        for part in (key, items[key]):
            digest.update(len(part).to_bytes(8, "little") + part)
    assert record == {"format_version": 2, "content_sha256": digest.hexdigest()}


def test_a_published_shard_is_a_compacted_copy(store: Path) -> None:
    # The index is written into the placeholders the writer put before compacting: the
    # published file is exactly as long as its last page, as epic-check requires.
    path = shard_path(store, 0)
    env = lmdb.open(str(path), subdir=False, readonly=True, lock=False)
    try:
        needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    finally:
        env.close()
    assert path.stat().st_size == needed
    assert check_store(store).ok


def _read_all(store: Path) -> dict[str, list[bytes]]:
    reader = FrameStore(store)
    try:
        return {
            video: reader.read_frames(
                video, frames_in_ranges(reader.video_meta(video).stored_ranges)
            )
            for video in reader.video_ids
        }
    finally:
        reader.close()


@pytest.mark.parametrize("span_bytes", [16, 16 << 10])
def test_clips_read_through_the_index_equal_lmdb_values(
    store: Path, monkeypatch: pytest.MonkeyPatch, span_bytes: int
) -> None:
    # Entries read as one span, and one by one (a clip across a long segment).
    monkeypatch.setattr(store_module, "INDEX_SPAN_BYTES", span_bytes)
    items = _items(shard_path(store, 0))
    reader = FrameStore(store)
    for video, frames in _videos(items).items():
        clip = [frames[0], frames[len(frames) // 2], frames[-1], frames[1]]
        assert reader._frame_index(video) is not None
        assert reader.read_frames(video, clip) == [items[frame_key(video, f)] for f in clip]
    reader.close()


def _damage(path: Path, offset: int, new: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, new, offset)
    finally:
        os.close(fd)


DAMAGES = {
    # entry 5's offset one page on: other bytes, which its CRC refuses
    "offset": lambda entry, data: struct.pack(
        "<Q", struct.unpack_from("<Q", data, entry)[0] + 4096
    ),
    # its offset past the end of the file
    "offset past the file": lambda entry, data: struct.pack("<Q", len(data) + 8192),
    # its length one byte short
    "length": lambda entry, data: struct.pack(
        "<I", struct.unpack_from("<I", data, entry + 8)[0] - 1
    ),
    # its CRC
    "crc": lambda entry, data: bytes([data[entry + 12] ^ 0x01]),
    # the entry zeroed (an upgrade cut off before the index was written)
    "zeroed": lambda entry, data: bytes(16),
}
FIELD_AT = {"offset": 0, "offset past the file": 0, "length": 8, "crc": 12, "zeroed": 0}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_entry_is_refused_named_by_check_and_rewritten_by_upgrade(
    store: Path, damage: str
) -> None:
    path = shard_path(store, 0)
    pristine = _read_all(store)
    video = "P01_01"
    entry = _entry_offset(path, video, 5)
    _damage(path, entry + FIELD_AT[damage], DAMAGES[damage](entry, path.read_bytes()))
    reader = FrameStore(store)
    with pytest.raises(StoreIncompleteError) as caught:
        reader.read_frames(video, [6])  # stored position 5
    reader.close()
    assert caught.value.exit_code == ExitCode.STORE_INCOMPLETE
    assert str(path) in str(caught.value) and "frame 6" in str(caught.value)
    report = check_store(store)
    assert not report.ok and report.resubmit_indices == [], report.problems
    assert any(f"{video} frame 6: its frame index entry" in p for p in report.problems)
    assert all("--upgrade" in p for p in report.problems), report.problems
    result = CliRunner().invoke(check, ["--store", str(store)])
    assert result.exit_code == ExitCode.STORE_INCOMPLETE
    assert "only their frame index is wrong" in result.output
    assert "resubmit" not in result.output  # nothing to extract again
    result = CliRunner().invoke(check, ["--store", str(store), "--upgrade"])
    assert result.exit_code == 0, result.output
    assert check_store(store).ok and _read_all(store) == pristine


def test_a_damaged_index_header_is_refused_and_named(store: Path) -> None:
    path = shard_path(store, 0)
    video = "P01_101"
    _damage(path, _entry_offset(path, video, 0) - HEADER.size, b"XPFI")
    reader = FrameStore(store)
    with pytest.raises(StoreIncompleteError, match="frame index has no valid header"):
        reader.read_frames(video, [_videos(_items(path))[video][0]])
    reader.close()
    problems = check_store(store).problems
    assert problems and f"{video}: its frame index has no valid header" in problems[0]


def test_a_format_2_shard_without_its_index_is_damaged_not_format_1(store: Path) -> None:
    path = shard_path(store, 0)
    pristine = _read_all(store)
    env = lmdb.open(str(path), subdir=False, lock=False, map_size=4 * path.stat().st_size)
    try:
        with env.begin(write=True) as txn:
            txn.delete(frame_index_key("P01_01"))
    finally:
        env.close()
    reader = FrameStore(store)
    with pytest.raises(StoreIncompleteError, match="frame index is missing"):
        reader.read_frames("P01_01", [1])
    reader.close()
    report = check_store(store)
    assert "shard 0: P01_01: frame index missing" in report.problems[0], report.problems
    result = CliRunner().invoke(check, ["--store", str(store), "--upgrade"])
    assert result.exit_code == 0, result.output
    assert _read_all(store) == pristine


def test_changed_metadata_behind_the_publish_record_is_named(store: Path) -> None:
    # A video's checksums rewritten after publishing (its frames untouched): the record's
    # digest no longer matches; the reads, which check each frame against the index's CRC,
    # still return the published frames.
    path = shard_path(store, 0)
    items = _items(path)
    sums = items[checksum_key("P01_101")]
    data = path.read_bytes()
    _damage(path, data.find(sums) + 4, bytes([sums[4] ^ 0xFF]))
    problems = check_store(store).problems
    second = _videos(items)["P01_101"][1]
    assert any("publish record's content digest" in p for p in problems), problems
    assert any(f"P01_101 frame {second}: checksum mismatch" in p for p in problems), problems
    reader = FrameStore(store)
    assert reader.read_frames("P01_101", [second]) == [items[frame_key("P01_101", second)]]
    reader.close()


def test_images_per_frame_other_than_one_are_refused(store: Path) -> None:
    path = shard_path(store, 0)
    at = _entry_offset(path, "P01_01", 0) - HEADER.size
    _damage(path, at + 6, struct.pack("<H", 2))
    reader = FrameStore(store)
    with pytest.raises(StoreIncompleteError, match="holds 2 images per frame"):
        reader.read_frames("P01_01", [1])
    reader.close()


# ----------------------------------------------------------------------------- readahead


def _cgroup(root: Path, lines: str, limits: dict[str, str]) -> Path:
    for folder, text in limits.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        name = "memory.max" if "memory/" not in f"{folder}/" else "memory.limit_in_bytes"
        (root / folder / name).write_text(text + "\n")
    cgroup = root / "self-cgroup"
    cgroup.write_text(lines)
    return cgroup


def test_memory_limit_takes_the_least_of_every_cgroup_above_the_process(tmp_path: Path) -> None:
    # SLURM sets --mem on the job's cgroup; the steps run in cgroups below it ("max").
    root = tmp_path / "cg"
    v2 = _cgroup(
        root,
        "0::/system.slice/slurmstepd.scope/job_7/step_0/user/task_0\n",
        {
            "system.slice/slurmstepd.scope/job_7": str(3 << 30),
            "system.slice/slurmstepd.scope/job_7/step_0/user/task_0": "max",
        },
    )
    assert memory_limit_bytes(v2, root) == 3 << 30
    v1 = _cgroup(
        root,
        "4:memory:/slurm/uid_0/job_8\n1:cpuset:/x\n",
        {"memory/slurm/uid_0/job_8": str(1 << 30)},
    )
    assert memory_limit_bytes(v1, root) == 1 << 30
    # No cgroup limit: the machine's memory.
    none = _cgroup(root, "0::/user.slice\n", {"user.slice": "max"})
    assert 0 < memory_limit_bytes(none, root) == memory_limit_bytes(tmp_path / "absent", root)


@pytest.mark.parametrize("memory", [1 << 40, 1 << 20])
@pytest.mark.parametrize("page_cache", ["cold", "warm"])
def test_the_store_reads_ahead_only_when_it_fits_in_memory_and_says_so(
    store: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    memory: int,
    page_cache: str,
) -> None:
    monkeypatch.setattr(store_module, "memory_limit_bytes", lambda: memory)
    monkeypatch.setattr(store_module, "in_page_cache", lambda fd, at: page_cache == "warm")
    calls: list[tuple[int, int]] = []
    real = store_module.fadvise

    def fadvise(fd: int, at: int, length: int, advice: str) -> None:
        if advice == "WILLNEED":
            calls.append((at, length))
        real(fd, at, length, advice)

    monkeypatch.setattr(store_module, "fadvise", fadvise)
    caplog.set_level("INFO", logger="epicdata.store")
    pristine = _read_all(store)
    reader = FrameStore(store)
    fits = memory == 1 << 40
    assert reader.readahead is fits
    assert ("reading each shard ahead" in caplog.text) is fits
    assert ("reading each frame alone" in caplog.text) is not fits
    calls.clear()
    frames = [1, 40, 80, 120]  # spread over the video: not one dense span
    for _ in range(2):
        assert reader.read_frames("P01_01", frames) == [pristine["P01_01"][f - 1] for f in frames]
    window = store_module.READAHEAD_WINDOW
    assert shard_path(store, 0).stat().st_size < window  # one window holds the shard
    pages = reader._pages[0]
    if fits and page_cache == "cold":
        # The window, from the first frame on, then the rest of it; and, on a thread of its
        # own, the whole shard (one window here).
        pages.read_ahead.join(10)
        at = struct.unpack("<Q", os.pread(pages.fd, 8, reader._where["P01_01"][1]))[0]
        assert sorted(calls) == sorted([(at, window - at), (0, at), (0, window)])
        assert calls.index((at, window - at)) < calls.index((0, at))
    elif fits:  # the page cache holds it: nothing announced, nothing read ahead
        assert calls == [] and pages.read_ahead is None
    else:  # each frame of each clip announced alone
        assert len(calls) == 2 * len(frames) and all(0 < n < window for _, n in calls)
    reader.close()


def test_in_page_cache_says_yes_for_a_page_just_written_and_no_where_it_cannot_tell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from epicdata import lmdb_pages

    path = tmp_path / "file"
    path.write_bytes(os.urandom(1 << 16))
    fd = os.open(path, os.O_RDONLY)
    try:
        if hasattr(os, "RWF_NOWAIT"):  # Linux: the page just written is cached
            try:
                os.preadv(fd, [bytearray(16)], 4096, os.RWF_NOWAIT)
            except OSError as exc:  # e.g. EOPNOTSUPP: a file system without the flag
                pytest.skip(f"{tmp_path} refuses RWF_NOWAIT reads ({exc}): nothing to probe")
            assert lmdb_pages.in_page_cache(fd, 4096)
        assert not lmdb_pages.in_page_cache(fd, 1 << 20)  # past the end: nothing read
        monkeypatch.delattr(os, "RWF_NOWAIT", raising=False)  # macOS has no such read
        assert not lmdb_pages.in_page_cache(fd, 4096)
    finally:
        os.close(fd)
