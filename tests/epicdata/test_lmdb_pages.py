"""The shard reader that bypasses py-lmdb's map (epicdata.lmdb_pages): every key reads as
LMDB reads it, on trees several levels deep, inline and overflow values, compacted and
not; files of another format are left to py-lmdb; a damaged page is a store error naming
the shard, never a wrong frame, another exception or a hang."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import lmdb
import pytest

from epicdata.errors import ExitCode, StoreIncompleteError
from epicdata.layout import shard_path
from epicdata.lmdb_pages import P_BRANCH, P_LEAF, PAGE_HEADER, ShardPages
from epicdata.ranges import frames_in_ranges
from epicdata.store import FrameStore


def _write(path: Path, items: dict[bytes, bytes], **options: object) -> None:
    env = lmdb.open(str(path), subdir=False, map_size=1 << 28, **options)
    keys = list(items)
    random.Random(0).shuffle(keys)  # not in order: page splits everywhere
    for start in range(0, len(keys), 5_000):  # several transactions: free pages, newer meta
        with env.begin(write=True) as txn:
            for key in keys[start : start + 5_000]:
                txn.put(key, items[key])
    env.close()


def _items() -> dict[bytes, bytes]:
    rng = random.Random(1)
    items = {f"P{v:02d}_{n:02d}/{f:010d}".encode(): rng.randbytes(rng.choice((5, 40, 900)))
             for v in range(3) for n in range(4) for f in range(1, 3_000)}  # fmt: skip
    items.update({f"big/{i:05d}".encode(): rng.randbytes(rng.randint(2_000, 60_000))
                  for i in range(300)})  # fmt: skip
    items.update({b"a": b"1", b"ab": b"22", b"abc": b"333", b"__meta__/shard": b"{}"})
    return items


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[bytes, bytes], list[Path]]:
    """The same items written in many transactions, and its compacted copy (how shards
    are published)."""
    tmp = tmp_path_factory.mktemp("pages")
    items = _items()
    written = tmp / "written.lmdb"
    _write(written, items)
    env = lmdb.open(str(written), subdir=False, readonly=True, lock=False)
    assert env.stat()["depth"] >= 3 and env.stat()["overflow_pages"] > 0, env.stat()
    env.copy(str(tmp / "compact.lmdb"), compact=True)
    env.close()
    return items, [written, tmp / "compact.lmdb"]


@pytest.mark.slow
def test_every_key_reads_as_lmdb_reads_it(files) -> None:
    items, paths = files
    for path in paths:
        pages = ShardPages.open(path)
        assert pages is not None, path
        try:
            for key, value in items.items():
                assert pages.get(key) == value, (path.name, key)
        finally:
            pages.close()


def test_absent_keys_are_none(files) -> None:
    items, paths = files
    pages = ShardPages.open(paths[1])
    assert pages is not None
    try:
        for key in (b"", b"\x00", b"A", b"aa", b"abcd", b"P00_00/", b"P00_00/0000000000",
                    b"P00_00/00000000010", b"P99_99/0000000001", b"\xff" * 30):  # fmt: skip
            assert key not in items
            assert pages.get(key) is None, key
    finally:
        pages.close()


def test_files_of_another_format_are_left_to_lmdb(tmp_path: Path) -> None:
    empty = tmp_path / "empty.lmdb"
    empty.write_bytes(b"")
    noise = tmp_path / "noise.lmdb"
    noise.write_bytes(random.Random(2).randbytes(3 * 4096))
    dupsort = tmp_path / "dupsort.lmdb"
    env = lmdb.open(str(dupsort), subdir=False, map_size=1 << 20, max_dbs=0)
    env.close()
    env = lmdb.open(str(dupsort), subdir=False, map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"k", b"v")
    env.close()
    # The main database with MDB_DUPSORT set in its flags (a format the store never writes).
    data = bytearray(dupsort.read_bytes())
    for meta in (0, 4096):
        struct.pack_into("<H", data, meta + PAGE_HEADER + 24 + 48 + 4, 0x04)
    dupsort.write_bytes(bytes(data))
    for path in (empty, noise, dupsort):
        assert ShardPages.open(path) is None, path.name


# ----------------------------------------------------------------------------- the store


@pytest.fixture
def store_root(small_store: dict[str, Path]) -> Path:
    """Two short videos extracted into one shard (real JPEGs, a B-tree of several pages):
    this test's own, to damage. One decoder thread: two would interleave their batches
    differently from run to run, and the tree's pages (where the flips land) with them."""
    from preprocess.extract import run_shard

    run_shard(store_root=small_store["store"], shard_index=0, tmp_dir=small_store["tmp"], workers=1)
    return small_store["store"]


def test_the_store_reads_through_the_pages_and_equals_the_mapped_reads(
    small_store_extracted_ro: dict[str, Path],
) -> None:
    frames: dict[str, list[bytes]] = {}
    for direct in (True, False):  # one after the other: LMDB opens a file once per process
        reader = FrameStore(small_store_extracted_ro["store"], direct=direct)
        try:
            for video in reader.video_ids:
                wanted = frames_in_ranges(reader.video_meta(video).stored_ranges).tolist()
                got = reader.read_frames(video, wanted)
                assert frames.setdefault(video, got) == got, (video, direct)
            if direct:
                assert reader._pages and all(p is not None for p in reader._pages.values())
            else:
                assert not reader._pages
        finally:
            reader.close()


def _tree_pages(path: Path) -> list[int]:
    data = path.read_bytes()
    return [
        page
        for page in range(2, len(data) // 4096)
        if struct.unpack_from("<H", data, page * 4096 + 10)[0] & (P_BRANCH | P_LEAF)
    ]


def test_a_flipped_byte_in_a_tree_page_is_a_store_error_or_reads_right(
    store_root: Path,
) -> None:
    """300 single-byte flips in branch and leaf pages (the pages this reader parses): each
    read of every frame returns the original bytes (CRC-checked) or raises the store's
    exit-5 error naming the shard; nothing else, and no hang (a loop in a damaged tree
    stops at 64 levels)."""
    store = store_root
    reader = FrameStore(store)
    wanted = {
        video: frames_in_ranges(reader.video_meta(video).stored_ranges).tolist()
        for video in reader.video_ids
    }
    pristine = {video: reader.read_frames(video, frames) for video, frames in wanted.items()}
    rng = random.Random(20261130)
    outcomes = {"read right": 0, "store error": 0}
    try:
        for _ in range(300):
            video = rng.choice(sorted(wanted))
            path = shard_path(store, reader._video_shard[video])
            page = rng.choice(_tree_pages(path))
            offset = page * 4096 + rng.randrange(4096)
            with path.open("r+b") as handle:
                handle.seek(offset)
                old = handle.read(1)[0]
                handle.seek(offset)
                handle.write(bytes([old ^ (1 << rng.randrange(8))]))
            for pages in reader._pages.values():  # a fresh reader of the damaged file
                if pages is not None:
                    pages.close()
            reader._pages, reader._checksums_at = {}, {}
            try:
                assert reader.read_frames(video, wanted[video]) == pristine[video], offset
                outcomes["read right"] += 1
            except StoreIncompleteError as exc:
                assert exc.exit_code == ExitCode.STORE_INCOMPLETE
                assert path.name in str(exc), exc
                outcomes["store error"] += 1
            finally:
                with path.open("r+b") as handle:
                    handle.seek(offset)
                    handle.write(bytes([old]))
    finally:
        reader.close()
    assert outcomes["store error"] > 10 and outcomes["read right"] > 10, outcomes
