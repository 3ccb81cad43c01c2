"""`epic-check` reads through the reader training uses (epicdata.lmdb_pages.ShardPages): a
check that passes means every frame reads back, a damaged page is a problem row naming the
shard (never a killed checker), and the file's length and key count are the meta page's.

Every damaged byte is found by parsing the shard's pages (the meta page's root, a page's
node table at 16 + 2 * i up to its ``lower`` field), never assumed, so each test gives one
verdict whatever the page layout of the shard it made."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path

import pytest
from click.testing import CliRunner

from epicdata.errors import ExitCode
from epicdata.layout import checksum_key, frame_key, shard_path, video_meta_key
from epicdata.lmdb_env import open_shard_readonly
from epicdata.lmdb_pages import (
    PAGE_HEADER,
    PageFormatError,
    ShardPages,
    iter_keys,
    main_database,
)
from epicdata.ranges import frames_in_ranges
from epicdata.store import FrameStore
from preprocess import check as check_module
from preprocess.check import check_store
from preprocess.cli import check

#: Where MDB_meta's fields lie in a meta page (after the page header): the main database's
#: md_entries and md_root, and the transaction id that picks the newer of the two pages.
MAIN_ENTRIES, MAIN_ROOT, TXNID = PAGE_HEADER + 104, PAGE_HEADER + 112, PAGE_HEADER + 128
#: mp_lower in a page header: the end of the node table.
LOWER = 12
SHARD = "shard-00000.lmdb"


@pytest.fixture(scope="module")
def pristine(small_store_extracted_ro: dict[str, Path], tmp_path_factory) -> Path:
    """The extracted small store, copied once for this module: READ ONLY (tests copy it)."""
    store = tmp_path_factory.mktemp("check-reader") / "store"
    shutil.copytree(small_store_extracted_ro["store"], store)
    return store


@pytest.fixture
def store(pristine: Path, tmp_path: Path) -> Path:
    """This test's own copy of the extracted store, free to damage."""
    copy = tmp_path / "store"
    shutil.copytree(pristine, copy)
    return copy


def _items(path: Path) -> dict[bytes, bytes]:
    """Every key and value of the shard, read by py-lmdb (the oracle)."""
    env = open_shard_readonly(path)
    try:
        with env.begin() as txn:
            return dict(txn.cursor().iternext())
    finally:
        env.close()


def _stat(path: Path) -> dict:
    env = open_shard_readonly(path)
    try:
        return {**env.stat(), **env.info()}
    finally:
        env.close()


def _meta_offset(data: bytes, psize: int) -> int:
    """File offset of the newer meta page (the larger transaction id; page 0 on a tie)."""
    txnids = [struct.unpack_from("<Q", data, page * psize + TXNID)[0] for page in (0, 1)]
    return psize if txnids[1] > txnids[0] else 0


def _root(data: bytes, psize: int) -> int:
    return struct.unpack_from("<Q", data, _meta_offset(data, psize) + MAIN_ROOT)[0]


def _node_table(data: bytes, page: int, psize: int) -> list[int]:
    """File offsets of the node-table entries (2 bytes each) of branch or leaf ``page``."""
    base = page * psize
    lower = struct.unpack_from("<H", data, base + LOWER)[0]
    return [base + PAGE_HEADER + 2 * i for i in range((lower - PAGE_HEADER) // 2)]


def _node(data: bytes, entry: int, psize: int) -> int:
    """File offset of the node a node-table entry points to."""
    return entry // psize * psize + struct.unpack_from("<H", data, entry)[0]


def _children(data: bytes, page: int, psize: int) -> list[int]:
    """The child pages of branch ``page`` (a node's mn_lo, mn_hi, mn_flags)."""
    out = []
    for entry in _node_table(data, page, psize):
        lo, hi, flags = struct.unpack_from("<HHH", data, _node(data, entry, psize))
        out.append(lo | hi << 16 | flags << 32)
    return out


def _key(data: bytes, node: int) -> bytes:
    size = struct.unpack_from("<H", data, node + 6)[0]
    return data[node + 8 : node + 8 + size]


@contextmanager
def damaged(path: Path, offset: int, new: bytes) -> Iterator[None]:
    """``path`` with ``new`` written at ``offset``, restored afterwards."""
    fd = os.open(path, os.O_RDWR)
    try:
        old = os.pread(fd, len(new), offset)
        os.pwrite(fd, new, offset)
        try:
            yield
        finally:
            os.pwrite(fd, old, offset)
    finally:
        os.close(fd)


def _read_every_frame(sender: Connection, store: Path) -> None:
    """Each stored frame through FrameStore.read_frames on its own (any frame can start a
    clip), as {video: [sha1]}; or what the reader raised."""
    try:
        reader = FrameStore(store)
        out = {}
        for vid in reader.video_ids:
            frames = frames_in_ranges(reader.video_meta(vid).stored_ranges).tolist()
            out[vid] = [hashlib.sha1(reader.read_frames(vid, [f])[0]).hexdigest() for f in frames]
        sender.send(("read", out))
    except Exception as exc:
        sender.send(("raised", f"{type(exc).__name__}: {exc}"))


def read_back(store: Path) -> tuple[str, object]:
    """:func:`_read_every_frame` in a forked child (a damaged shard could kill a reader):
    ("read", digests), ("raised", message) or ("crashed", exit code)."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_read_every_frame, args=(sender, store))
    child.start()
    sender.close()
    try:
        if not receiver.poll(120):
            child.kill()
            return "hung", None
        try:
            return receiver.recv()
        except EOFError:
            child.join()
            return "crashed", child.exitcode
    finally:
        receiver.close()
        child.join()


def _check(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(check, list(args))
    return result.exit_code, result.output


# ----------------------------------------------------------------------------- the file's length


@pytest.mark.parametrize("tail", ["one page", "5 TiB sparse"])
def test_file_longer_than_its_last_page_is_reported_not_an_overflow_error(
    store: Path, tail: str
) -> None:
    # Regression: `truncate -s 5T` on a shard made --deep raise `OverflowError: timeout is
    # too large` (its time limit came from the file's size), exit 1; a shorter tail passed.
    path = shard_path(store, 0)
    size = path.stat().st_size
    needed = (_stat(path)["last_pgno"] + 1) * _stat(path)["psize"]
    assert size == needed  # what epic-extract publishes: a compacted copy
    new_size = size + _stat(path)["psize"] if tail == "one page" else 5 * 2**40
    try:
        os.truncate(path, new_size)  # sparse: the tail costs no disk
    except OSError as exc:
        pytest.skip(f"this file system cannot hold a {new_size:,}-byte sparse file ({exc})")
    for deep in ([], ["--deep"]):
        code, output = _check("--store", str(store), *deep)
        assert code == ExitCode.STORE_INCOMPLETE, output
        assert (
            f"problem: shard 0: {SHARD} is {new_size:,} bytes, {new_size - needed:,} more than "
            f"its LMDB's last page needs ({needed:,})" in output
        ), output
        assert "resubmit shards 0:" in output and "Traceback" not in output


def test_truncated_shard_says_it_was_cut_short_or_not_written_by_epic_extract(
    store: Path,
) -> None:
    # An uncompacted LMDB file whose last allocated page was never written reads fine with
    # py-lmdb, and is shorter than its last page too: epic-extract never publishes one.
    path = shard_path(store, 0)
    psize = _stat(path)["psize"]
    os.truncate(path, path.stat().st_size - psize)
    (problem,) = check_store(store).problems
    assert problem.startswith(f"shard 0: {SHARD} is truncated: ")
    assert "cut short, or not written by epic-extract" in problem


def test_time_limit_is_capped_for_any_file_size() -> None:
    assert check_module.shard_timeout_s(5 * 2**40, deep=True) == check_module.SHARD_TIMEOUT_MAX_S
    assert check_module.shard_timeout_s(1.2e9, deep=False) == pytest.approx(240.0)


# ----------------------------------------------------------------------------- damaged pages


def test_damaged_root_node_offset_is_a_problem_row_not_a_killed_checker(store: Path) -> None:
    # Regression: each node offset of the root branch page (the file's last page) aimed past
    # the page made py-lmdb's read die with SIGBUS: "killed the checker process (signal 7)".
    path = shard_path(store, 0)
    data, psize = path.read_bytes(), _stat(path)["psize"]
    root = _root(data, psize)
    assert _stat(path)["depth"] >= 2 and root == len(data) // psize - 1
    entries = _node_table(data, root, psize)
    assert len(entries) >= 2
    for entry in entries:
        with damaged(path, entry, struct.pack("<H", 0xFFF0)):
            problems = check_store(store).problems
        where = f"node-table entry at byte {entry}"
        assert len(problems) == 1 and problems[0].startswith(f"shard 0: {SHARD} is corrupt: "), (
            where,
            problems,
        )
        assert f"page {root}" in problems[0], (where, problems)
    with damaged(path, entries[1], struct.pack("<H", 0xFFF0)):
        code, output = _check("--store", str(store))
    assert code == ExitCode.STORE_INCOMPLETE, output
    assert f"problem: shard 0: {SHARD} is corrupt: " in output and "killed" not in output
    assert "resubmit shards 0:" in output and "--array 0 --force" in output


#: The damages of :func:`damage_at`, each a different way a shard's pages can be wrong.
DAMAGES = (
    "root node offset past the page",
    "root node's child past the file",
    "root node's child is the root (a cycle)",
    "root node 0's key size",  # LMDB never reads node 0's key in a branch page
    "root's node table made odd",
    "root separator raised to its leaf's second key",
    "emptied leaf",
    "leaf node offset past the page",
    "JPEG byte",
    "checksum byte",
    "video metadata byte",
    "free gap of a leaf (harmless)",
)


def damage_at(data: bytes, psize: int, items: dict[bytes, bytes], damage: str) -> tuple[int, bytes]:
    """(file offset, new bytes) of ``damage`` to the shard ``data``, found by parsing its
    pages (``items``: its keys and values, py-lmdb's)."""
    root = _root(data, psize)
    table = _node_table(data, root, psize)
    leaves = _children(data, root, psize)
    separator = _node(data, table[1], psize)
    if damage.startswith("root node offset"):
        return table[1], struct.pack("<H", 0xFFF0)
    if damage.startswith("root node's child past"):
        return separator, struct.pack("<H", 0xFFFF)
    if damage.startswith("root node's child is the root"):
        return separator, struct.pack("<HH", root & 0xFFFF, root >> 16)
    if damage.startswith("root node 0's key size"):
        return _node(data, table[0], psize) + 6, struct.pack("<H", 128)
    if damage.startswith("root's node table"):
        return root * psize + LOWER, bytes([data[root * psize + LOWER] | 1])
    if damage.startswith("root separator raised"):
        second = _key(data, _node(data, _node_table(data, leaves[1], psize)[1], psize))
        assert len(second) == len(_key(data, separator)), "a key of another length"
        return separator + 8, second
    if damage == "emptied leaf":
        return leaves[0] * psize + LOWER, struct.pack("<H", PAGE_HEADER)
    if damage.startswith("leaf node offset"):
        return _node_table(data, leaves[0], psize)[-1], struct.pack("<H", 0xFFF0)
    if damage.startswith("free gap"):
        lower, upper = struct.unpack_from("<HH", data, leaves[0] * psize + LOWER)
        assert upper > lower, "the leaf has no free gap"
        return leaves[0] * psize + (lower + upper) // 2, b"\xa5"
    if damage == "video metadata byte":  # its JSON's opening brace: no longer an object
        value = items[video_meta_key("P01_01")]
        assert data.count(value) == 1 and value.startswith(b"{")
        return data.find(value), b"["
    # Any one changed byte of a JPEG, or of a video's checksums, fails a frame's CRC-32.
    value = items[frame_key("P01_101", 40) if damage == "JPEG byte" else checksum_key("P01_101")]
    assert data.count(value) == 1
    at = len(value) // 2
    return data.find(value) + at, bytes([value[at] ^ 0x10])


@pytest.fixture(scope="module")
def original_reads(pristine: Path) -> tuple[str, object]:
    reads = read_back(pristine)
    assert reads[0] == "read", reads
    return reads


#: Damages that neither LMDB nor the readers ever read.
HARMLESS = ("root node 0's key size", "root's node table made odd", "free gap of a leaf (harmless)")


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("store_format", [1, 2])
def test_check_verdict_equals_the_readers_on_damaged_shards(
    store: Path,
    original_reads: tuple[str, object],
    damage: str,
    store_format: int,
    as_format_1: Callable[[Path], None],
) -> None:
    # "check passes" must mean "every frame reads back with its original bytes", and a read
    # that fails must be of a shard the check reports. Regression: node 0's key size in the
    # root page passed epic-check (py-lmdb) while the reader refused the page.
    path = shard_path(store, 0)
    if store_format == 1:
        as_format_1(path)
    data, psize, items = path.read_bytes(), _stat(path)["psize"], _items(path)
    assert _stat(path)["depth"] == 2, "the damages assume a root branch page over leaves"
    offset, new = damage_at(data, psize, items, damage)
    with damaged(path, offset, new):
        report = check_store(store)
        outcome = read_back(store)
    reads = outcome == original_reads
    if store_format == 1:
        # Reads look every frame up in the B-tree, as the check does: one verdict.
        assert report.ok == reads, (damage, report.problems, outcome)
    else:
        # Reads take the frame index (each frame's bytes checked against its CRC-32), so a
        # damaged leaf of frame keys no longer fails them; the check reports every damage.
        assert report.ok == (damage in HARMLESS), (damage, report.problems, outcome)
        assert reads or not report.ok, (damage, report.problems, outcome)
    if not report.ok:
        assert report.resubmit_indices == [0], (damage, report.problems)
        assert not any("killed" in p for p in report.problems), (damage, report.problems)
    if not reads:  # an error of exit 5, not a crash, another exception or other bytes
        kind, message = outcome
        assert kind == "raised", (damage, outcome)
        assert message.split(":")[0] in ("StoreIncompleteError", "MalformedMetadataError"), (
            damage,
            message,
        )
        # A damaged page or frame names the shard, as the check's row does.
        assert message.startswith("Malformed") or SHARD in message, (damage, message)


# ----------------------------------------------------------------------------- whole-shard walks


def test_walk_and_meta_page_agree_with_lmdb(pristine: Path) -> None:
    path = shard_path(pristine, 0)
    stat = _stat(path)
    database = main_database(path)
    assert database is not None
    assert database.entries == stat["entries"]
    assert database.bytes_needed == (stat["last_pgno"] + 1) * stat["psize"]
    pages = ShardPages.open(path)
    assert pages is not None and pages.root == database.root
    try:
        assert list(iter_keys(pages)) == list(_items(path))  # py-lmdb's cursor order
    finally:
        pages.close()


def test_keys_out_of_order_in_a_leaf_are_reported(store: Path) -> None:
    # Two node-table entries of a leaf swapped: each key still lies in the page, but a walk
    # meets them out of order (a clip read searching that leaf could miss its keys).
    path = shard_path(store, 0)
    data, psize = path.read_bytes(), _stat(path)["psize"]
    leaf = _children(data, _root(data, psize), psize)[0]
    first, second = _node_table(data, leaf, psize)[:2]
    swapped = data[second : second + 2] + data[first : first + 2]
    with damaged(path, first, swapped):
        pages = ShardPages.open(path)
        assert pages is not None
        try:
            with pytest.raises(PageFormatError, match=f"page {leaf}: key 1 .* out of order"):
                list(iter_keys(pages))
        finally:
            pages.close()
        report = check_store(store)
    assert not report.ok and report.resubmit_indices == [0]


def test_key_count_in_the_meta_page_is_checked(store: Path) -> None:
    path = shard_path(store, 0)
    data, psize = path.read_bytes(), _stat(path)["psize"]
    at = _meta_offset(data, psize) + MAIN_ENTRIES
    entries = struct.unpack_from("<Q", data, at)[0]
    with damaged(path, at, struct.pack("<Q", entries + 3)):
        (problem,) = check_store(store).problems
    assert problem == (
        f"shard 0: {entries + 3} keys ({entries} in its B-tree), the metadata accounts for "
        f"{entries}: the key count is corrupt"
    )


def test_shard_the_page_reader_leaves_to_py_lmdb_is_checked_and_said_once(
    two_shards_ro: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A file of another LMDB format (the page reader says why it does not parse it): read
    # with py-lmdb, as FrameStore falls back to, and the report says so once for them all.
    why = "it is LMDB data version 2, not 1"
    monkeypatch.setattr(ShardPages, "open_or_reason", lambda *args, **kwargs: why)
    report = check_store(two_shards_ro)
    assert report.ok and [s.py_lmdb for s in report.shards] == [why, why]
    code, output = _check("--store", str(two_shards_ro))
    assert code == ExitCode.OK, output
    notes = [line for line in output.splitlines() if line.startswith("note:")]
    assert notes == [f"note: shards 0-1 read with py-lmdb, as training reads them: {why}"]


def test_check_reads_without_posix_fadvise(pristine: Path, monkeypatch) -> None:
    # macOS's CPython has no os.posix_fadvise: the checker must not need it.
    monkeypatch.delattr(os, "posix_fadvise", raising=False)
    assert check_store(pristine).ok
