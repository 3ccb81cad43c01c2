"""FrameStore: the right bytes for every requested frame, in DataLoader workers under fork
and spawn; clear errors outside the stored ranges; clamping near the end, counted."""

from __future__ import annotations

import faulthandler
import logging
import multiprocessing
import os
import struct
import sys
import tempfile
from pathlib import Path

import lmdb
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from epicdata.checksums import frame_checksum, pack_checksums
from epicdata.errors import ExitCode, StoreError, StoreIncompleteError
from epicdata.layout import SHARD_META_KEY, checksum_key, frame_key, shard_path, video_meta_key
from epicdata.manifest import ExtractParams, Manifest, PlannedVideo, ShardPlan
from epicdata.metadata import ShardMeta, VideoMeta
from epicdata.ranges import frames_in_ranges
from epicdata.store import FrameStore

# video id -> (stored ranges, decoded frames): two shards, one with a gap between ranges.
VIDEOS = {"P01_01": (((1, 50), (80, 120)), 120), "P02_101": (((1, 60),), 60)}
SHARD_OF = {"P01_01": 0, "P02_101": 1}


def _payload(video_id: str, frame: int) -> bytes:
    return f"{video_id}/{frame}".encode()


@pytest.fixture(scope="module")
def store_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store written with the format's own key and metadata functions (no ffmpeg)."""
    root = tmp_path_factory.mktemp("store")
    params = ExtractParams(
        short_side=256, jpeg_qscale=4, keep="segments", margin_frames=0, num_frames=()
    )
    shards = []
    for index in (0, 1):
        planned = []
        path = shard_path(root, index)
        path.parent.mkdir(parents=True, exist_ok=True)
        env = lmdb.open(str(path), subdir=False, map_size=1 << 24)
        with env.begin(write=True) as txn:
            for video_id, (ranges, decoded) in VIDEOS.items():
                if SHARD_OF[video_id] != index:
                    continue
                frames = frames_in_ranges(ranges)
                for frame in frames:
                    txn.put(frame_key(video_id, int(frame)), _payload(video_id, int(frame)))
                sums = [frame_checksum(_payload(video_id, int(f))) for f in frames]
                txn.put(checksum_key(video_id), pack_checksums(sums))
                meta = VideoMeta(video_id, 60, 59.94, decoded / 60, decoded, len(frames), ranges,
                                 456, 256, 256, 4, "synthetic")  # fmt: skip
                txn.put(video_meta_key(video_id), meta.to_bytes())
                planned.append(PlannedVideo(video_id, None, 60, 59.94, decoded / 60, 456, 256,
                                            decoded, len(frames), decoded, ranges))  # fmt: skip
            ids = tuple(v.video_id for v in planned)
            txn.put(SHARD_META_KEY, ShardMeta(1, index, ids, {}, 0).to_bytes())
        env.close()
        shards.append(ShardPlan(index, tuple(planned)))
    Manifest(params=params, shards=tuple(shards), splits=("test",), videos_root=None).save(root)
    return root


class _Frames(Dataset):
    """Item i = the frames of request i, read in whichever process the loader uses."""

    def __init__(self, store: FrameStore, requests: list[tuple[str, list[int]]]) -> None:
        self.store, self.requests = store, requests

    def __len__(self) -> int:
        return len(self.requests)

    def __getitem__(self, i: int) -> list[bytes]:
        video_id, frames = self.requests[i]
        return self.store.read_frames(video_id, frames)


@pytest.mark.slow
@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_dataloader_workers_read_the_right_frames(store_root: Path, start_method: str) -> None:
    store = FrameStore(store_root)
    store.read_frames("P01_01", [1])  # the parent has opened a shard before forking
    requests = [("P01_01", [1, 25, 50, 80, 120]), ("P02_101", [60, 1, 30])] * 4
    loader = DataLoader(
        _Frames(store, requests),
        batch_size=None,
        num_workers=2,
        multiprocessing_context=multiprocessing.get_context(start_method),
    )
    got = list(loader)
    assert got == [[_payload(v, f) for f in frames] for v, frames in requests]
    assert torch.utils.data.get_worker_info() is None


def test_frame_outside_stored_ranges_names_video_frame_and_ranges(store_root: Path) -> None:
    store = FrameStore(store_root)
    with pytest.raises(
        StoreError, match=r"P01_01 frame 60 is not in the store \(stored ranges: 1-50, 80-120"
    ):
        store.read_frames("P01_01", [10, 60])
    with pytest.raises(StoreError, match="P02_101 frame 90"):
        store.read_frames("P02_101", [90])
    with pytest.raises(StoreError, match="P09_01 is not in the store"):
        store.read_frames("P09_01", [1])


def test_requests_just_past_the_end_are_clamped_and_counted(store_root: Path) -> None:
    store = FrameStore(store_root)
    assert store.read_frames("P02_101", [59, 61, 75]) == [
        _payload("P02_101", f) for f in (59, 60, 60)
    ]
    assert store.clamp_count == 2
    assert store.video_ids == ["P01_01", "P02_101"]
    assert store.video_meta("P01_01").stored_ranges == ((1, 50), (80, 120))


def test_truncated_shard_is_an_error_not_a_crash(store_root: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(store_root, copy)
    path = shard_path(copy, 1)
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size - 4096)
    with pytest.raises(StoreError, match="is truncated"):
        FrameStore(copy).read_frames("P02_101", [1])


def _flip_value_byte(store: Path, video_id: str, frame: int) -> None:
    """Flip the last byte of the stored value of ``frame``, found in the file by content
    (every copy: an uncompacted LMDB file may hold a stale one)."""
    path = shard_path(store, SHARD_OF[video_id])
    data = bytearray(path.read_bytes())
    value = _payload(video_id, frame)
    offsets = [i for i in range(len(data)) if data.startswith(value, i)]
    assert offsets
    for offset in offsets:
        data[offset + len(value) - 1] ^= 0x01
    path.write_bytes(bytes(data))


def test_reader_refuses_a_frame_whose_bytes_changed(store_root: Path, tmp_path: Path) -> None:
    # Regression: read_frames returned a JPEG with a flipped byte unchecked.
    import shutil

    from epicdata.errors import StoreIncompleteError
    from preprocess.check import check_store

    copy = tmp_path / "store"
    shutil.copytree(store_root, copy)
    _flip_value_byte(copy, "P01_01", 85)
    store = FrameStore(copy)
    assert store.read_frames("P01_01", [84, 86]) == [_payload("P01_01", 84), _payload("P01_01", 86)]
    with pytest.raises(StoreIncompleteError) as caught:
        store.read_frames("P01_01", [80, 85, 90])
    message = str(caught.value)
    assert "P01_01 frame 85: checksum mismatch" in message
    assert str(shard_path(copy, 0)) in message and "epic-check" in message
    store.close()
    unchecked = FrameStore(copy, verify=False)
    assert unchecked.read_frames("P01_01", [85])[0] != _payload("P01_01", 85)  # handed out before
    unchecked.close()
    problems = check_store(copy).problems
    assert any("P01_01 frame 85: checksum mismatch" in p for p in problems), problems


def test_reader_finds_every_stored_frame_of_thousands_of_ranges() -> None:
    # The stored-range lookup is a bisection: a sampled store has thousands of ranges.
    from epicdata.store import _StoredIndex

    ranges = tuple((10 * i + 1, 10 * i + 1 + i % 3) for i in range(5000))
    index = _StoredIndex.of(ranges)
    stored = frames_in_ranges(ranges).tolist()
    assert [index.position(f) for f in stored] == list(range(len(stored)))
    assert index.position(0) is None and index.position(5) is None
    assert index.position(10 * 4999 + 1 + 4999 % 3 + 1) is None


class _AbortOn(Dataset):
    """Reads like training does, and dies as LMDB does on a damaged page (SIGABRT) while
    reading request ``abort_at``."""

    def __init__(
        self,
        store: FrameStore,
        requests: list[tuple[str, list[int]]],
        abort_at: int,
        signum: int = 6,
    ):
        self.store, self.requests, self.abort_at, self.signum = store, requests, abort_at, signum

    def __len__(self) -> int:
        return len(self.requests)

    def __getitem__(self, i: int) -> int:
        video_id, frames = self.requests[i]
        self.store.read_frames(video_id, frames)
        if i == self.abort_at:
            faulthandler.disable()  # no Python fault dump in the test log: the abort is meant
            os.kill(os.getpid(), self.signum)
        return i


def test_a_worker_killed_while_reading_is_reported_with_its_shard(store_root: Path) -> None:
    # Regression: the main process said only "DataLoader worker ... killed by signal".
    from epicdata.dataset import worker_deaths_named
    from epicdata.errors import EpicInputError, StoreIncompleteError

    store = FrameStore(store_root)
    requests = [("P01_01", [1, 2]), ("P02_101", [5, 6, 7]), ("P01_01", [3])]
    loader = DataLoader(_AbortOn(store, requests, abort_at=1), batch_size=None, num_workers=1)
    with pytest.raises(EpicInputError) as caught, worker_deaths_named(store):
        list(loader)
    message = str(caught.value)
    assert message.startswith("a DataLoader worker died (DataLoader worker (pid")
    assert f"{shard_path(store_root, 1)} P02_101 frames [5, 6, 7]" in message
    assert "epic-check --store" in message
    # torch names the signal when its SIGCHLD handler sees it: then it is a damaged shard.
    if "killed by signal" in message:
        assert isinstance(caught.value, StoreIncompleteError)


def test_a_worker_killed_by_sigkill_is_reported_as_memory(store_root: Path) -> None:
    # Regression: an OOM-killed worker gave a traceback.
    import signal

    from epicdata.dataset import worker_deaths_named
    from epicdata.errors import EnvironmentProblem

    store = FrameStore(store_root)
    requests = [("P01_01", [1, 2]), ("P02_101", [5])]
    dataset = _AbortOn(store, requests, abort_at=1, signum=signal.SIGKILL)
    loader = DataLoader(dataset, batch_size=None, num_workers=1)
    with pytest.raises(EnvironmentProblem) as caught, worker_deaths_named(store):
        list(loader)
    message = str(caught.value)
    assert "--workers" in message and "--mem" in message and "P02_101 frames [5]" in message


def _temp_dir_is(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$TMPDIR for this process and the workers it starts (forked or spawned)."""
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)
    assert tempfile.gettempdir() == str(tmp)


@pytest.mark.slow
@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_loader_workers_leave_no_epic_reads_folder_in_the_temp_dir(
    store_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start_method: str
) -> None:
    # Regression: every training or validation run left $TMPDIR/epic-reads-<pid>/ (the
    # workers' breadcrumbs) behind; 23 of them in /tmp at one point.
    _temp_dir_is(tmp_path, monkeypatch)
    store = FrameStore(store_root)
    requests = [("P01_01", [1, 2]), ("P02_101", [5, 6])] * 2
    loader = DataLoader(
        _Frames(store, requests),
        batch_size=None,
        num_workers=2,
        multiprocessing_context=multiprocessing.get_context(start_method),
    )
    assert len(list(loader)) == len(requests)
    assert list(tmp_path.glob("epic-reads-*")) == []


@pytest.mark.slow
@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_killed_worker_is_named_without_leaving_files_behind(
    store_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start_method: str
) -> None:
    # The breadcrumbs live in a file without a name: a spawned worker reopens the main
    # process's through /proc, and nothing is left in $TMPDIR whatever ends the run.
    from epicdata.dataset import worker_deaths_named
    from epicdata.errors import EpicInputError

    _temp_dir_is(tmp_path, monkeypatch)
    store = FrameStore(store_root)
    requests = [("P01_01", [1, 2]), ("P02_101", [5, 6, 7]), ("P01_01", [3])]
    loader = DataLoader(
        _AbortOn(store, requests, abort_at=1),
        batch_size=None,
        num_workers=1,
        multiprocessing_context=multiprocessing.get_context(start_method),
    )
    with pytest.raises(EpicInputError) as caught, worker_deaths_named(store):
        list(loader)
    assert f"{shard_path(store_root, 1)} P02_101 frames [5, 6, 7]" in str(caught.value)
    assert list(tmp_path.glob("epic-reads-*")) == []


def _read_then_wait(store: FrameStore, video_id: str, frames: list[int], read, done) -> None:
    store.read_frames(video_id, frames)
    read.put(os.getpid())
    done.wait(60)


@pytest.mark.slow
@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_live_workers_keep_separate_breadcrumbs(store_root: Path, start_method: str) -> None:
    # One slot per live worker, claimed with a lock: two readers never overwrite each other.
    context = multiprocessing.get_context(start_method)
    store = FrameStore(store_root)
    read, done = context.Queue(), context.Event()
    asks = {"P01_01": [4, 5], "P02_101": [9]}
    workers = [
        context.Process(target=_read_then_wait, args=(store, video, frames, read, done))
        for video, frames in asks.items()
    ]
    for worker in workers:
        worker.start()
    try:
        pids = [read.get(timeout=60) for _ in workers]
        reads = store.worker_reads([worker.pid for worker in workers])
    finally:
        done.set()
        for worker in workers:
            worker.join(60)
    assert sorted(pids) == sorted(worker.pid for worker in workers)
    for worker, (video, frames) in zip(workers, asks.items(), strict=True):
        shard = shard_path(store_root, SHARD_OF[video])
        assert reads[worker.pid] == f"{shard} {video} frames {frames}"


def test_a_truncated_staged_copy_blames_the_copy_not_the_store(
    store_root: Path, tmp_path: Path
) -> None:
    # Regression: damage in a staged copy (epic-train --stage-dir) said to re-extract the
    # store's shard, which was fine.
    import shutil

    from epicdata.errors import ExitCode, StoreIncompleteError

    copy = tmp_path / "node" / "store"
    shutil.copytree(store_root, copy)
    path = shard_path(copy, 1)
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size - 4096)
    with pytest.raises(StoreIncompleteError) as caught:
        FrameStore(copy, staged_from=store_root).read_frames("P02_101", [1])
    assert caught.value.exit_code == ExitCode.STORE_INCOMPLETE
    message = str(caught.value)
    assert message.startswith("the staged copy of a shard is damaged: shard-00001.lmdb is trunc")
    assert f"({path}, copied from {shard_path(store_root, 1)})" in message
    assert f"the store {store_root} is not affected" in message and "re-extract" not in message


def test_frames_read_where_the_platform_has_no_posix_fadvise(
    store_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression (issue 20): macOS's CPython has no os.posix_fadvise, and the first frame
    # read of a laptop (the demo's included) died of AttributeError.
    monkeypatch.delattr(os, "posix_fadvise", raising=False)
    store = FrameStore(store_root)
    try:
        for video_id, (ranges, _) in VIDEOS.items():
            frames = frames_in_ranges(ranges).tolist()
            assert store.read_frames(video_id, frames) == [_payload(video_id, f) for f in frames]
        assert store._pages and all(pages is not None for pages in store._pages.values())
    finally:
        store.close()


def _with_main_db_flags(path: Path, flags: int) -> None:
    """Set the main database's flags in both meta pages (a damaged meta page: the store
    writes none)."""
    data = bytearray(path.read_bytes())
    psize = struct.unpack_from("<I", data, 16 + 24)[0]
    for meta in (0, psize):
        struct.pack_into("<H", data, meta + 16 + 24 + 48 + 4, flags)
    path.write_bytes(bytes(data))


def test_main_db_flags_in_the_meta_page_are_damage_not_a_fallback_to_a_memory_map(
    store_root: Path, tmp_path: Path
) -> None:
    # Found by the damage fuzz (issue 20): a meta page whose main-database flags were
    # damaged sent the reader to py-lmdb's memory map in the reading process, where a
    # damaged file can kill it with SIGBUS. py-lmdb writes every shard with no flags.
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(store_root, copy)
    _with_main_db_flags(shard_path(copy, 0), 0x12)
    store = FrameStore(copy)
    video = next(v for v in VIDEOS if store._video_shard[v] == 0)
    try:
        with pytest.raises(StoreIncompleteError) as caught:
            store.video_meta(video)
    finally:
        store.close()
    assert caught.value.exit_code == ExitCode.STORE_INCOMPLETE
    assert "main database flags 0x12" in str(caught.value) and not store._envs


def test_a_shard_the_page_reader_does_not_parse_is_read_with_lmdb_and_logged_once(
    store_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch
) -> None:
    # Shards the page reader leaves to py-lmdb (it parses 64-bit little-endian files only:
    # here a big-endian machine, as the reader sees it): one warning for the store, with
    # its reason; the metadata read in a child process (the main process maps no shard
    # for them), the frames as before.
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(store_root, copy)
    monkeypatch.setattr(sys, "byteorder", "big")
    store = FrameStore(copy)
    try:
        with caplog.at_level(logging.WARNING, logger="epicdata.store"):
            metas = {video_id: store.video_meta(video_id) for video_id in VIDEOS}
            assert not store._envs
            for video_id, (ranges, _) in VIDEOS.items():
                assert metas[video_id].stored_ranges == ranges
                frames = frames_in_ranges(ranges).tolist()
                got = store.read_frames(video_id, frames)
                assert got == [_payload(video_id, f) for f in frames]
        assert store._pages == {0: None, 1: None} and len(store._envs) == 2
    finally:
        store.close()
    records = [
        r for r in caplog.records if r.name == "epicdata.store" and r.levelno >= logging.WARNING
    ]
    assert len(records) == 1, [r.getMessage() for r in records]
    message = records[0].getMessage()
    assert "is read with py-lmdb" in message and "64-bit little-endian" in message
    assert str(shard_path(copy, 0)) in message and str(copy) in message
