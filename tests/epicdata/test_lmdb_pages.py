"""The shard reader that bypasses py-lmdb's map (epicdata.lmdb_pages): every key reads as
LMDB reads it, on trees several levels deep, inline and overflow values, compacted and
not; files of another format are left to py-lmdb; a damaged page is a store error naming
the shard, never a wrong frame, another exception or a hang."""

from __future__ import annotations

import bisect
import csv
import os
import pickle
import random
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import lmdb
import pytest

from epicdata.annotations import LABELLED_COLUMNS, SPLIT_FILES
from epicdata.errors import ExitCode, StoreIncompleteError
from epicdata.layout import shard_path, video_meta_key
from epicdata.lmdb_pages import (
    NODE_HEADER,
    P_BRANCH,
    P_LEAF,
    P_OVERFLOW,
    PAGE_HEADER,
    PageFormatError,
    ShardPages,
)
from epicdata.ranges import frames_in_ranges
from epicdata.store import FrameStore
from preprocess.check import check_store


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


def test_another_data_version_is_left_to_lmdb_and_main_db_flags_are_damage(tmp_path: Path) -> None:
    dupsort = tmp_path / "dupsort.lmdb"
    env = lmdb.open(str(dupsort), subdir=False, map_size=1 << 20, max_dbs=0)
    env.close()
    env = lmdb.open(str(dupsort), subdir=False, map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"k", b"v")
    env.close()
    # The main database with MDB_DUPSORT set in its flags: py-lmdb writes every shard with
    # none, so this is a damaged meta page, not a format to hand to py-lmdb's memory map
    # in a reading process (where a damaged file can SIGBUS it).
    data = bytearray(dupsort.read_bytes())
    for meta in (0, 4096):
        struct.pack_into("<H", data, meta + PAGE_HEADER + 24 + 48 + 4, 0x04)
    dupsort.write_bytes(bytes(data))
    with pytest.raises(PageFormatError, match="main database flags 0x4"):
        ShardPages.open_or_reason(dupsort)
    # Another LMDB data version: py-lmdb's to judge.
    version = tmp_path / "version.lmdb"
    data = bytearray(dupsort.read_bytes())
    for meta in (0, 4096):
        struct.pack_into("<H", data, meta + PAGE_HEADER + 24 + 48 + 4, 0)  # no flags
        struct.pack_into("<I", data, meta + PAGE_HEADER + 4, 2)
    version.write_bytes(bytes(data))
    assert ShardPages.open_or_reason(version) == "it is LMDB data version 2, not 1"


def test_files_lmdb_refuses_are_damaged_not_left_to_lmdb(tmp_path: Path) -> None:
    # An empty file, noise, and a shard with a damaged meta page are no other format: the
    # page reader says what is wrong, as py-lmdb refuses them (no fallback to it).
    good = tmp_path / "good.lmdb"
    _write(good, {b"k": b"v"})
    bad_pages = {
        "empty": b"",
        "noise": random.Random(2).randbytes(3 * 4096),
        "meta 1 magic": _patched(good, 4096 + PAGE_HEADER, b"\x00"),
        "meta 0 not a meta page": _patched(good, 10, b"\x00"),
        "page size 3": _patched(good, PAGE_HEADER + 24, struct.pack("<I", 3)),
        "page size 64 KiB": _patched(good, PAGE_HEADER + 24, struct.pack("<I", 1 << 16)),
    }
    for name, data in bad_pages.items():
        path = tmp_path / f"{name}.lmdb"
        path.write_bytes(data)
        with pytest.raises(lmdb.Error):
            lmdb.open(str(path), subdir=False, readonly=True, lock=False).close()
        with pytest.raises(PageFormatError):
            ShardPages.open_or_reason(path)


def _patched(path: Path, offset: int, new: bytes) -> bytes:
    data = bytearray(path.read_bytes())
    data[offset : offset + len(new)] = new
    return bytes(data)


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
            reader._pages, reader._checksums_at, reader._where = {}, {}, {}
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


# ----------------------------------------------------------------- damage LMDB reads past


def _headed_pages(data: bytes, psize: int) -> dict[int, int]:
    """mp_flags of every page that has a header (not the data pages of a large value)."""
    flags: dict[int, int] = {}
    page = 2
    while page < len(data) // psize:
        flags[page] = struct.unpack_from("<H", data, page * psize + 10)[0]
        step = struct.unpack_from("<I", data, page * psize + 12)[0]
        page += step if flags[page] & P_OVERFLOW else 1
    return flags


def _node_offsets(data: bytes, page: int, psize: int) -> list[int]:
    """File offsets of the nodes of a branch or leaf page, in key order."""
    base = page * psize
    count = (struct.unpack_from("<H", data, base + 12)[0] - PAGE_HEADER) // 2
    return [base + p for p in struct.unpack_from(f"<{count}H", data, base + PAGE_HEADER)]


def _node_key(data: bytes | bytearray, node: int) -> bytes:
    size = struct.unpack_from("<H", data, node + 6)[0]
    return bytes(data[node + NODE_HEADER : node + NODE_HEADER + size])


def _child(data: bytes, node: int) -> int:
    lo, hi, flags = struct.unpack_from("<HHH", data, node)
    return lo | hi << 16 | flags << 32


def _psize(path: Path) -> int:
    env = lmdb.open(str(path), subdir=False, readonly=True, lock=False)
    try:
        return env.stat()["psize"]
    finally:
        env.close()


def _lmdb_answers(path: Path, keys: list[bytes]) -> list[bytes | None]:
    """What py-lmdb (the oracle) returns for each key."""
    env = lmdb.open(str(path), subdir=False, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return [txn.get(key) for key in keys]
    finally:
        env.close()


def _page_answers(path: Path, keys: list[bytes]) -> tuple[list, list]:
    """The page reader's answers for each key: one lookup each, and a clip's locate_many."""
    pages = ShardPages.open(path)
    assert pages is not None
    try:
        one = [pages.get(key) for key in keys]
        many = [None if at is None else pages.read(*at) for at in pages.locate_many(keys)]
        return one, many
    finally:
        pages.close()


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[bytes, bytes]]:
    """A compacted file of 200-byte keys (a dozen to a page): three levels of pages, whose
    branch pages have few nodes to damage."""
    rng = random.Random(3)
    items = {f"{i:06d}".encode().rjust(200, b"k"): rng.randbytes(rng.choice((5, 40, 3000)))
             for i in range(3000)}  # fmt: skip
    tmp = tmp_path_factory.mktemp("wide")
    _write(tmp / "written.lmdb", items)
    env = lmdb.open(str(tmp / "written.lmdb"), subdir=False, readonly=True, lock=False)
    env.copy(str(tmp / "wide.lmdb"), compact=True)
    env.close()
    return tmp / "wide.lmdb", items


def test_what_lmdb_never_reads_or_rounds_down_reads_as_lmdb_reads_it(wide, tmp_path) -> None:
    # Regression (issue 20): the page reader refused a branch page whose node 0 has a key
    # size past the page (LMDB never reads node 0's key: mdb_node_search starts at 1 in a
    # branch page) and any page with an odd mp_lower (NUMKEYS floors it), both of which
    # epic-check's LMDB read past: "check passes" and then the reader failed.
    source, items = wide
    path = tmp_path / "damaged.lmdb"
    data = bytearray(source.read_bytes())
    psize = _psize(source)
    pages = _headed_pages(bytes(data), psize)
    branches = [p for p, flags in pages.items() if flags & P_BRANCH]
    assert len(branches) > 3
    for page, flags in pages.items():
        if flags & (P_BRANCH | P_LEAF):
            data[page * psize + 12] |= 0x01
    for page in branches:
        struct.pack_into("<H", data, _node_offsets(bytes(data), page, psize)[0] + 6, 0xFFFF)
    path.write_bytes(bytes(data))
    keys = sorted(items)
    assert _lmdb_answers(path, keys) == [items[key] for key in keys]
    one, many = _page_answers(path, keys)
    assert one == many == [items[key] for key in keys]


@pytest.mark.parametrize("damage", ["separator lowered", "separators swapped"])
def test_a_damaged_separator_routes_every_lookup_as_lmdb_routes_it(
    wide, tmp_path: Path, damage: str
) -> None:
    # A clip's next key is searched in the previous key's leaf only when the branch pages
    # above would route it there: with a separator lowered into the leaf on its left,
    # LMDB loses that leaf's keys above it, and so must a clip read (it found them).
    source, items = wide
    data = bytearray(source.read_bytes())
    psize = _psize(source)
    pages = _headed_pages(bytes(data), psize)
    bottom = [
        p
        for p, flags in pages.items()
        if flags & P_BRANCH
        and len(_node_offsets(bytes(data), p, psize)) >= 4
        and pages[_child(bytes(data), _node_offsets(bytes(data), p, psize)[0])] & P_LEAF
    ]
    nodes = _node_offsets(bytes(data), bottom[0], psize)
    second = nodes[2] + NODE_HEADER  # where node 2's key lies
    if damage == "separator lowered":
        leaf = [
            _node_key(data, n) for n in _node_offsets(bytes(data), _child(data, nodes[1]), psize)
        ]
        data[second : second + 200] = leaf[len(leaf) // 2]
    else:
        first = nodes[1] + NODE_HEADER
        data[first : first + 200], data[second : second + 200] = (
            data[second : second + 200],
            data[first : first + 200],
        )
    path = tmp_path / "damaged.lmdb"
    path.write_bytes(bytes(data))
    keys = sorted(items)
    expected = _lmdb_answers(path, keys)
    assert None in expected  # the damage loses keys
    assert all(got in (None, items[key]) for key, got in zip(keys, expected, strict=True))
    one, many = _page_answers(path, keys)
    assert one == expected
    assert many == expected


def _verdicts(path: Path, keys: list[bytes]) -> tuple[list, list]:
    """Per key, py-lmdb's answer and the page reader's: the value, None (absent) or
    "damaged" (an LMDB error, a PageFormatError). Each LMDB lookup has its own transaction:
    LMDB fails every later lookup of a transaction that met a damaged page."""
    env = lmdb.open(str(path), subdir=False, readonly=True, lock=False)
    pages = ShardPages.open(path)
    assert pages is not None
    lmdb_says, pages_say = [], []
    try:
        for key in keys:
            try:
                with env.begin() as txn:
                    lmdb_says.append(txn.get(key))
            except lmdb.Error:
                lmdb_says.append("damaged")
            try:
                pages_say.append(pages.get(key))
            except PageFormatError:
                pages_say.append("damaged")
    finally:
        env.close()
        pages.close()
    return lmdb_says, pages_say


@pytest.mark.parametrize("damage", ["branch", "leaf", "overflow", "node with duplicates"])
def test_what_lmdb_refuses_on_a_page_it_reads_is_damage_here_too(
    wide, tmp_path: Path, damage: str
) -> None:
    # py-lmdb's LMDB refuses a page on disk marked dirty (P_DIRTY, its patch for
    # CVE-2019-16225), the first page of a large value included, and a leaf node that says
    # it holds duplicates in a database without them (CVE-2019-16227): MDB_CORRUPTED for
    # the lookups that read them, and the same here.
    source, items = wide
    data = bytearray(source.read_bytes())
    psize = _psize(source)
    pages = _headed_pages(bytes(data), psize)
    kind = {"branch": P_BRANCH, "leaf": P_LEAF, "overflow": P_OVERFLOW}.get(damage, P_LEAF)
    page = [p for p, flags in pages.items() if flags & kind][1]
    if damage == "node with duplicates":
        node = _node_offsets(bytes(data), page, psize)[0]
        data[node + 4] |= 0x04  # F_DUPDATA in mn_flags
    else:
        data[page * psize + 10] |= 0x10  # P_DIRTY in mp_flags
    path = tmp_path / "damaged.lmdb"
    path.write_bytes(bytes(data))
    keys = sorted(items)
    lmdb_says, pages_say = _verdicts(path, keys)
    assert "damaged" in lmdb_says and lmdb_says.count("damaged") < len(keys)
    assert pages_say == lmdb_says


def test_an_emptied_leaf_page_is_a_missing_key_not_an_index_error(
    store_root: Path, tmp_path: Path, as_format_1: Callable[[Path], None]
) -> None:
    # Regression (issue 20): a leaf page whose mp_lower was set to 16 (no nodes) raised
    # IndexError in the page reader, an internal error (exit 1); LMDB finds nothing there.
    unindexed = tmp_path / "format-1"
    shutil.copytree(store_root, unindexed)
    as_format_1(shard_path(unindexed, 0))
    path = shard_path(store_root, 0)
    psize = _psize(path)
    data = path.read_bytes()
    keys_of = {
        page: [_node_key(data, node) for node in _node_offsets(data, page, psize)]
        for page, flags in _headed_pages(data, psize).items()
        if flags & P_LEAF and not flags & P_BRANCH
    }
    leaf = next(page for page, keys in keys_of.items() if keys[0].startswith(b"P"))
    video = keys_of[leaf][0].split(b"/")[0].decode()
    reader = FrameStore(store_root)
    frames = [int(key.split(b"/")[1]) for key in keys_of[leaf]]
    pristine = reader.read_frames(video, frames)
    reader.close()
    with path.open("r+b") as handle:
        handle.seek(leaf * psize + 12)
        handle.write(struct.pack("<H", PAGE_HEADER))
    assert _lmdb_answers(path, keys_of[leaf]) == [None] * len(keys_of[leaf])
    pages = ShardPages.open(path)
    assert [pages.locate(key) for key in keys_of[leaf]] == [None] * len(keys_of[leaf])
    pages.close()
    # The frame index still finds the frames, and their CRC says they are the same bytes;
    # epic-check names the keys the B-tree lost (the shard is damaged all the same).
    reader = FrameStore(store_root)
    assert reader.read_frames(video, frames) == pristine
    reader.close()
    report = check_store(store_root)
    assert f"{video} frame {frames[0]}: key missing" in "\n".join(report.problems)
    # A shard without an index (store format 1) looks the frames up: exit 5, naming one.
    path = shard_path(unindexed, 0)
    data = path.read_bytes()
    (leaf,) = [
        page
        for page, flags in _headed_pages(data, psize).items()
        if flags & P_LEAF
        and not flags & P_BRANCH
        and keys_of[leaf][0] in [_node_key(data, n) for n in _node_offsets(data, page, psize)]
    ]
    with path.open("r+b") as handle:
        handle.seek(leaf * psize + 12)
        handle.write(struct.pack("<H", PAGE_HEADER))
    reader = FrameStore(unindexed)
    with pytest.raises(StoreIncompleteError) as caught:
        reader.read_frames(video, frames)
    reader.close()
    assert caught.value.exit_code == ExitCode.STORE_INCOMPLETE
    assert "is listed as stored but its key is missing" in str(caught.value)
    assert str(path) in str(caught.value)


# ----------------------------------------------------------------- the SIGBUS shard

_READ_ONE = """
import sys
from epicdata.errors import StoreIncompleteError
from epicdata.store import FrameStore
from preprocess.check import check_store
store, video, frame = sys.argv[1], sys.argv[2], int(sys.argv[3])
for what in ("video_meta", "read_frames"):
    reader = FrameStore(store)
    try:
        reader.video_meta(video) if what == "video_meta" else reader.read_frames(video, [frame])
        print(what, "read", "-")
    except StoreIncompleteError as exc:
        print(what, int(exc.exit_code), str(exc).splitlines()[0])
"""


_STAGE_ONE = """
import sys
from epicdata.errors import StoreIncompleteError
from epicdata.stage import stage_store
try:
    stage_store(sys.argv[1], sys.argv[2], [sys.argv[3]])
    print("0 staged")
except StoreIncompleteError as exc:
    print(int(exc.exit_code), str(exc).splitlines()[0])
"""


@pytest.mark.slow
def test_a_damaged_node_offset_in_the_root_page_is_exit_5_not_sigbus(
    store_root: Path, small_store: dict[str, Path], tmp_path: Path
) -> None:
    # Regression (issue 20): the offset of a node of the shard's root page (the file's last
    # page) aimed past the end of the file killed epic-train with SIGBUS (exit 135, no
    # message) in py-lmdb's read of the metadata, through its memory map. Reads run in
    # child processes: a SIGBUS kills the child, not pytest.
    path = shard_path(store_root, 0)
    psize = _psize(path)
    data = path.read_bytes()
    (root,) = [p for p, flags in _headed_pages(data, psize).items() if flags & P_BRANCH]
    assert root == len(data) // psize - 1  # past this page is past the end of the file
    reader = FrameStore(store_root)
    video = reader.video_ids[0]
    frame = reader.video_meta(video).stored_ranges[0][0]
    reader.close()
    # The node that LMDB's search for the video's metadata follows (and so reads).
    nodes = _node_offsets(data, root, psize)
    route = bisect.bisect_right([_node_key(data, n) for n in nodes[1:]], video_meta_key(video))
    with path.open("r+b") as handle:
        handle.seek(root * psize + PAGE_HEADER + 2 * route)
        handle.write(struct.pack("<H", 0xFFF0))
    command = [sys.executable, "-c", _READ_ONE, str(store_root), video, str(frame)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])  # -7: SIGBUS
    lines = [line.split(" ", 2) for line in done.stdout.splitlines()]
    assert [what for what, _, _ in lines] == ["video_meta", "read_frames"], done.stdout
    for what, code, message in lines:
        assert code == str(int(ExitCode.STORE_INCOMPLETE)), (what, message)
        assert str(path) in message and "the shard is damaged" in message, (what, message)
    # Staging (--stage-dir) reads the copy's metadata the same way: exit 5, not SIGBUS.
    command = [sys.executable, "-c", _STAGE_ONE, str(store_root), str(tmp_path / "stage"), video]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])  # -7: SIGBUS
    code, message = done.stdout.strip().split(" ", 1)
    assert code == str(int(ExitCode.STORE_INCOMPLETE)), done.stdout
    assert "metadata cannot be read" in message and path.name in message, done.stdout
    # epic-train stops at its start-up check of the store: exit 5 and one error line.
    epic_train = str(Path(sys.executable).parent / "epic-train")
    annotations = _labelled_copy(small_store["annotations"], tmp_path / "labelled")
    args = [epic_train, "--store", store_root, "--annotations", annotations]
    args += ["--output-dir", tmp_path / "run"]
    args += ["--workers", "0", "--weights", "none", "--device", "cpu", "--epochs", "1"]
    args += ["--num-frames", "2", "--crop-size", "32", "--batch-size", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env)
    assert done.returncode == ExitCode.STORE_INCOMPLETE, (done.returncode, done.stderr[-3000:])
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and path.name in errors[0], done.stderr[-3000:]
    assert "the shard is damaged" in errors[0] and "Traceback" not in done.stderr


def _labelled_copy(annotations: Path, out: Path) -> Path:
    """``annotations`` (a test split only) with its rows also as a labelled train and
    validation split (verb 0, noun 0): epic-train never trains on the test split."""
    shutil.copytree(annotations, out)
    with (annotations / SPLIT_FILES["test"]).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    labels = dict(narration="v n", verb="v", verb_class="0", noun="n", noun_class="0")
    labels |= dict(all_nouns="['n']", all_noun_classes="[0]")
    for split in ("train", "validation"):
        with (out / SPLIT_FILES[split]).open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=LABELLED_COLUMNS)
            writer.writeheader()
            writer.writerows(
                {k: row.get(k, labels.get(k)) for k in LABELLED_COLUMNS} for row in rows
            )
    return out


# ----------------------------------------------------------------- other page sizes

_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>
/* LMDB gives a file it creates the page size sysconf(_SC_PAGESIZE) returns: say another. */
long sysconf(int name) {
    static long (*real)(int);
    const char *size = getenv("EPIC_TEST_PAGE_SIZE");
    if (name == _SC_PAGESIZE && size) return atol(size);
    if (!real) real = (long (*)(int))dlsym(RTLD_NEXT, "sysconf");
    return real(name);
}
"""

_WRITER = """
import pickle, sys, lmdb
items = pickle.loads(open(sys.argv[2], "rb").read())
env = lmdb.open(sys.argv[1], subdir=False, map_size=1 << 28)
with env.begin(write=True) as txn:
    for key, value in items.items():
        txn.put(key, value)
env.close()
"""


@pytest.fixture(scope="module")
def page_size_shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An LD_PRELOAD library that makes LMDB see another OS page size."""
    if sys.platform != "linux":
        pytest.skip("the LD_PRELOAD shim that changes LMDB's page size works on Linux only")
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler (cc or gcc) to build the LD_PRELOAD page-size shim")
    tmp = tmp_path_factory.mktemp("shim")
    (tmp / "shim.c").write_text(_SHIM)
    command = [compiler, "-shared", "-fPIC", "-o", str(tmp / "shim.so"), str(tmp / "shim.c")]
    subprocess.run([*command, "-ldl"], check=True, capture_output=True)
    return tmp / "shim.so"


@pytest.mark.parametrize(
    ("os_page_size", "page_size"), [(8192, 8192), (16384, 16384), (32768, 32768), (65536, 32768)]
)
def test_files_of_other_page_sizes_read_as_lmdb_reads_them(
    page_size_shim: Path, tmp_path: Path, os_page_size: int, page_size: int
) -> None:
    # LMDB gives a file it creates the OS page size (16 KiB on some aarch64 machines; 64 KiB
    # ones get LMDB 0.9's largest, 32 KiB), and a shard is read wherever it was written.
    rng = random.Random(4)
    items = {f"P01_{v:02d}/{f:010d}".encode(): rng.randbytes(rng.choice((5, 40, 900, 900, 40_000)))
             for v in range(2) for f in range(1, 600)}  # fmt: skip
    items[b"__meta__/shard"] = b"{}"
    (tmp_path / "items.pickle").write_bytes(pickle.dumps(items))
    path = tmp_path / "shard.lmdb"
    env = {
        **os.environ,
        "LD_PRELOAD": str(page_size_shim),
        "EPIC_TEST_PAGE_SIZE": str(os_page_size),
    }
    command = [sys.executable, "-c", _WRITER, str(path), str(tmp_path / "items.pickle")]
    subprocess.run(command, env=env, check=True, timeout=120)
    oracle = lmdb.open(str(path), subdir=False, readonly=True, lock=False)
    try:
        stat = oracle.stat()
        assert stat["psize"] == page_size and stat["depth"] >= 2, stat
        with oracle.begin() as txn:
            assert dict(txn.cursor().iternext()) == items
    finally:
        oracle.close()
    keys = sorted(items)
    one, many = _page_answers(path, keys + [b"P01_00/0000000000", b"zz"])
    assert one == many == [items[key] for key in keys] + [None, None]
    pages = ShardPages.open(path)
    assert pages is not None and pages.page_size == page_size
    pages.close()
