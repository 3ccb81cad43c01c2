"""`epic-check` against damaged LMDB pages, as SQLite tests its reader with fuzzed files: a
shard with any single flipped byte is either reported (exit 5, a problem row naming it), or
every stored frame still reads back byte for byte through FrameStore.read_frames. The
checker never crashes, never hangs, and never passes a shard that the reader then fails on.

Every damaged byte is found by parsing the shard's pages, never assumed: the shape of the
B-tree depends on how the decoder threads' batches interleaved, so each test runs on two
shapes made on purpose (:data:`LAYOUTS`) and asserts its property for every node or byte it
damages. A fixed seed draws the fuzzed bytes and the XORs, so a failure reproduces (each
names page and offset).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import shutil
import struct
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from epicdata.errors import ExitCode
from epicdata.layout import (
    PUBLISH_RECORD_KEY,
    SHARD_META_KEY,
    checksum_key,
    frame_key,
    shard_path,
    video_meta_key,
)
from epicdata.lmdb_env import open_shard_readonly
from epicdata.lmdb_pages import F_BIGDATA, NODE_HEADER, P_BRANCH, P_LEAF, P_OVERFLOW, PAGE_HEADER
from epicdata.ranges import frames_in_ranges
from epicdata.store import FrameStore
from preprocess import check as check_module
from preprocess.check import check_store, format_report
from preprocess.extract import BATCH_FRAMES, run_shard
from preprocess.plan import plan_store
from preprocess.writer import ShardWriter

SEED = 20261130
#: Random flips per target, besides one flip of every byte LMDB reads in each branch page
#: (140 to 220 of them here). About 25 ms each on 2 cores (the check in a child process,
#: and a read-back in another when the check passes).
FLIPS = {"leaf": 300, "meta": 150, "overflow header": 75, "JPEG": 75}
TARGETS = ("branch", *FLIPS)
#: The shard as extracted by one decoder thread (each video's keys appended in order: full
#: leaves), and as two threads write it when their batches alternate (the longer video's
#: later frames land in front of keys already written: leaves split in the middle).
#: And the first as store format 1 wrote it (no frame index: its reads look every frame up in
#: the B-tree, so a damaged branch page fails them as it fails the check).
LAYOUTS = ("one decoder", "two decoders", "format 1")

# LMDB's page header (64-bit builds): mp_pgno (8 bytes), mp_pad (2), mp_flags (2), then
# mp_lower and mp_upper (2 + 2; the free gap between them is not read) or, on the first page
# of a large value, mp_pages (4). Node pointers (2 bytes each) follow the header; a node is
# NODE_HEADER bytes (mn_lo, mn_hi, mn_flags: a branch's child page number, a leaf's value
# size and flags; then the key size) and its key. Large values (the JPEGs) fill the pages
# after such a header, without headers of their own. The constants are the store's
# reader's (epicdata.lmdb_pages).
#: The page header and MDB_meta (magic, version, address, map size, two MDB_db of 48 bytes,
#: last page, txn id) on meta pages 0 and 1: the bytes LMDB reads there.
META_BYTES = PAGE_HEADER + 136
#: Where mp_lower's low byte lies in a page: its lowest bit makes the node table odd.
LOWER_LOW_BYTE = 12


def page_kinds(data: bytes, psize: int) -> dict[int, str]:
    """Kind of every page of an LMDB file: 'meta' (pages 0 and 1), 'branch', 'leaf',
    'overflow' (first page of a large value, with a header) or 'overflow data' (its other
    pages: value bytes only)."""
    kinds: dict[int, str] = {0: "meta", 1: "meta"}
    page, pages = 2, len(data) // psize
    while page < pages:
        flags = struct.unpack_from("<H", data, page * psize + 10)[0]
        if flags & P_OVERFLOW:
            count = struct.unpack_from("<I", data, page * psize + 12)[0]
            kinds[page] = "overflow"
            kinds.update((p, "overflow data") for p in range(page + 1, page + count))
            page += max(count, 1)
            continue
        kinds[page] = {P_BRANCH: "branch", P_LEAF: "leaf"}.get(flags & 0x07, f"flags {flags:#x}")
        page += 1
    return kinds


def nodes(data: bytes, page: int, psize: int) -> list[int]:
    """File offsets of the nodes of branch or leaf page ``page``, in key order."""
    base = page * psize
    lower = struct.unpack_from("<H", data, base + 12)[0]
    count = (lower - PAGE_HEADER) // 2
    return [
        base + struct.unpack_from("<H", data, base + PAGE_HEADER + 2 * i)[0] for i in range(count)
    ]


def node_key(data: bytes, node: int) -> bytes:
    key_size = struct.unpack_from("<H", data, node + 6)[0]
    return data[node + NODE_HEADER : node + NODE_HEADER + key_size]


def child_page(data: bytes, node: int) -> int:
    """The page a branch node points to (mn_lo, mn_hi and mn_flags hold its number)."""
    lo, hi, flags = struct.unpack_from("<HHH", data, node)
    return lo | hi << 16 | flags << 32


def jpeg_extents(data: bytes, kinds: dict[int, str], psize: int) -> list[tuple[int, int]]:
    """File extents [start, end) of the values kept in overflow pages (the JPEGs)."""
    extents = []
    for page in (p for p, kind in kinds.items() if kind == "leaf"):
        for node in nodes(data, page, psize):
            lo, hi, flags, key_size = struct.unpack_from("<HHHH", data, node)
            if flags & F_BIGDATA:
                first = struct.unpack_from("<Q", data, node + NODE_HEADER + key_size)[0]
                start = first * psize + PAGE_HEADER
                extents.append((start, start + (lo | hi << 16)))
    return extents


def flip_offsets(data: bytes, kinds: dict[int, str], psize: int) -> dict[str, list[int]]:
    """File offsets to flip, per target: the bytes LMDB reads in branch, leaf and meta pages
    and overflow headers (not the free gap of a page, nor the unused rest of a meta page),
    and the bytes of the JPEGs."""
    targets: dict[str, list[int]] = {kind: [] for kind in TARGETS}
    for page, kind in kinds.items():
        base = page * psize
        if kind in ("branch", "leaf"):
            lower, upper = struct.unpack_from("<HH", data, base + 12)
            targets[kind] += [*range(base, base + lower), *range(base + upper, base + psize)]
        elif kind == "meta":
            targets[kind] += range(base, base + META_BYTES)
        elif kind == "overflow":
            targets["overflow header"] += range(base, base + PAGE_HEADER)
    for start, end in jpeg_extents(data, kinds, psize):
        targets["JPEG"] += range(start, end)
    return targets


@dataclass(frozen=True)
class Shard:
    store: Path
    path: Path
    psize: int
    data: bytes  # the file as published, before any damage
    kinds: dict[int, str]
    frames: dict[str, list[int]]
    digests: dict[str, list[str]]
    indexed: bool  # reads take the frame index (store format 2), not B-tree lookups

    def read_fails_or_is_right(self, kind: str, value: object, frames_lost: bool = True) -> bool:
        """What a read of every frame gives when the shard's B-tree lost some keys: an error
        of exit 5; or the original bytes, where the reads need none of those keys (frames
        found through the frame index, each checked against its CRC-32; or, without the
        index, only keys no read looks up lost)."""
        if kind == "raised" and str(value).startswith("StoreIncompleteError: "):
            return True
        return (self.indexed or not frames_lost) and (kind, value) == ("read", self.digests)


def stored_frames(store: Path) -> dict[str, list[int]]:
    reader = FrameStore(store)
    try:
        return {
            vid: frames_in_ranges(reader.video_meta(vid).stored_ranges).tolist()
            for vid in reader.video_ids
        }
    finally:
        reader.close()


def _digests(store: Path, frames: dict[str, list[int]]) -> dict[str, list[str]]:
    reader = FrameStore(store)
    try:
        return {
            vid: [hashlib.sha1(j).hexdigest() for j in reader.read_frames(vid, numbers)]
            for vid, numbers in frames.items()
        }
    finally:
        reader.close()


def _read_back_child(sender: Connection, store: Path, frames: dict[str, list[int]]) -> None:
    try:
        sender.send(("read", _digests(store, frames)))
    except Exception as exc:
        sender.send(("raised", f"{type(exc).__name__}: {exc}"))


def read_back(store: Path, frames: dict[str, list[int]], timeout_s: float = 60.0) -> tuple:
    """Every frame through FrameStore.read_frames in a forked child (a corrupt shard can
    kill its reader): ("read", {video: [sha1]}), ("raised", message), ("crashed", exit
    code) or ("hung", None)."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_read_back_child, args=(sender, store, frames))
    child.start()
    sender.close()
    try:
        if not receiver.poll(timeout_s):
            child.kill()
            child.join()
            return "hung", None
        try:
            return receiver.recv()
        except EOFError:
            child.join()
            return "crashed", child.exitcode
    finally:
        receiver.close()
        child.join()


def _all_items(path: Path) -> dict[bytes, bytes]:
    env = open_shard_readonly(path)
    try:
        with env.begin() as txn:
            return dict(txn.cursor().iternext())
    finally:
        env.close()


def _without_index(path: Path) -> dict[bytes, bytes]:
    return {k: v for k, v in _all_items(path).items() if not k.startswith(b"__meta__/index/")}


def write_with_alternating_batches(store: Path, scratch: Path) -> None:
    """Publish shard 0 of ``store`` again, written as two decoder threads write it when
    their batches of BATCH_FRAMES frames alternate (the longer video first): the writer
    commits when a video's metadata come after its last batch."""
    items = _all_items(shard_path(store, 0))
    frames = stored_frames(store)
    batches = {
        vid: [numbers[i : i + BATCH_FRAMES] for i in range(0, len(numbers), BATCH_FRAMES)]
        for vid, numbers in sorted(frames.items(), key=lambda video: -len(video[1]))
    }
    written: set[bytes] = set()
    writer = ShardWriter(scratch / "shard.lmdb", map_size=1 << 30)
    try:
        for turn in range(max(len(b) for b in batches.values())):
            for vid, video_batches in batches.items():
                if turn >= len(video_batches):
                    continue
                batch = [(n, items[frame_key(vid, n)]) for n in video_batches[turn]]
                writer.put_frames(vid, batch)
                written.update(frame_key(vid, n) for n, _ in batch)
                if turn == len(video_batches) - 1:
                    metadata = [video_meta_key(vid), checksum_key(vid)]
                    writer.put([(k, items[k]) for k in metadata])
                    written.update(metadata)
        writer.put([(SHARD_META_KEY, items[SHARD_META_KEY])])
        index = {k for k in items if k.startswith(b"__meta__/index/") or k == PUBLISH_RECORD_KEY}
        assert written | {SHARD_META_KEY} | index == items.keys()
        writer.publish(store, 0)  # which writes the frame index
    finally:
        writer.close()


def open_shard_stat(path: Path) -> dict:
    env = open_shard_readonly(path)
    try:
        return env.stat()
    finally:
        env.close()


def separators(path: Path) -> list[bytes]:
    """The keys of the shard's root page: its B-tree's shape."""
    data = path.read_bytes()
    psize = open_shard_stat(path)["psize"]
    kinds = page_kinds(data, psize)
    return [
        node_key(data, n) for p, k in kinds.items() if k == "branch" for n in nodes(data, p, psize)
    ]


@pytest.fixture(scope="module")
def extracted(tmp_path_factory: pytest.TempPathFactory, epic_files) -> Path:
    """A store of one shard extracted by one decoder thread, so always written in the same
    order: its leaf pages under a branch page."""
    tmp = tmp_path_factory.mktemp("fuzz")
    store = tmp / "store"
    epic_files.make_videos(tmp / "videos", [("P01_01", "60000/1001", 5.0), ("P01_101", "50", 2.0)])
    epic_files.write_test_split(tmp / "ann", [("P01_01", 0.2, 4.5), ("P01_101", 0.5, 1.9)])
    plan_store(
        store_root=store,
        annotations_dir=tmp / "ann",
        videos_root=tmp / "videos",
        splits=("test",),
        shards=1,
    )
    run_shard(store_root=store, shard_index=0, tmp_dir=tmp / "scratch", workers=1)
    return store


@pytest.fixture(scope="module", params=LAYOUTS)
def pristine(
    request: pytest.FixtureRequest,
    extracted: Path,
    tmp_path_factory: pytest.TempPathFactory,
    as_format_1: Callable[[Path], None],
) -> Path:
    """The extracted store with its shard in one of the :data:`LAYOUTS`."""
    if request.param == "one decoder":
        return extracted
    tmp = tmp_path_factory.mktemp("alternating")
    store = tmp / "store"
    shutil.copytree(extracted, store)
    if request.param == "format 1":
        as_format_1(shard_path(store, 0))
        return store
    write_with_alternating_batches(store, tmp)
    # Another B-tree over the same keys and values, or the second layout tests nothing new.
    assert separators(shard_path(store, 0)) != separators(shard_path(extracted, 0))
    # The same keys and values, but for the frame index: other offsets in another layout.
    assert _without_index(shard_path(store, 0)) == _without_index(shard_path(extracted, 0))
    return store


@pytest.fixture
def shard(pristine: Path, tmp_path: Path) -> Shard:
    """A fresh copy of the pristine store, its pages classified and its frames' digests."""
    store = tmp_path / "store"
    shutil.copytree(pristine, store)
    path = shard_path(store, 0)
    stat = open_shard_stat(path)
    assert stat["depth"] == 2 and stat["branch_pages"] == 1 and stat["leaf_pages"] >= 3, stat
    frames = stored_frames(store)
    data = path.read_bytes()
    kinds = page_kinds(data, stat["psize"])
    indexed = b"__meta__/index/" in data
    return Shard(store, path, stat["psize"], data, kinds, frames, _digests(store, frames), indexed)


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


def flipped(shard: Shard, offset: int, xor: int) -> AbstractContextManager[None]:
    """The shard's file with byte ``offset`` XORed with ``xor``, restored afterwards."""
    return damaged(shard.path, offset, bytes([shard.data[offset] ^ xor]))


def _check_cli(store: Path, *options: str) -> subprocess.CompletedProcess:
    """epic-check in its own process: an LMDB abort used to kill it with exit 134."""
    return subprocess.run(
        [sys.executable, "-c", "from preprocess.cli import check; check()"]
        + ["--store", str(store), *options],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _check_text(store: Path, *, deep: bool = False) -> str:
    """What epic-check prints for ``store`` (its report), from this process."""
    return format_report(check_store(store, deep=deep))


def _root(shard: Shard) -> int:
    (root,) = [p for p, kind in shard.kinds.items() if kind == "branch"]
    return root


def _root_nodes(shard: Shard) -> list[int]:
    return nodes(shard.data, _root(shard), shard.psize)


def _to_overflow_page(shard: Shard, node: int) -> int:
    """The smallest XOR of the low byte of ``node``'s child page number that makes it name
    the first page of a large value (neither a branch nor a leaf page, whatever its data)."""
    child = child_page(shard.data, node)
    for xor in range(1, 256):
        if shard.kinds.get(child ^ xor) == "overflow":
            return xor
    raise AssertionError(f"no large value starts on a page within a byte's flip of {child}")


def test_flipped_child_page_number_in_branch_page_is_reported_not_an_lmdb_abort(
    shard: Shard,
) -> None:
    # Each node of the root page pointed at the first page of a JPEG instead of its leaf.
    for node in _root_nodes(shard):
        xor = _to_overflow_page(shard, node)
        with flipped(shard, node, xor):
            text = _check_text(shard.store)
            kind, value = read_back(shard.store, shard.frames)
        where = f"node at byte {node} -> page {child_page(shard.data, node) ^ xor}"
        assert "problem: shard 0: shard-00000.lmdb is corrupt" in text, f"{where}\n{text}"
        assert shard.read_fails_or_is_right(kind, value), (where, value)
    node = _root_nodes(shard)[1]
    with flipped(shard, node, _to_overflow_page(shard, node)):
        done = _check_cli(shard.store)
    assert done.returncode == ExitCode.STORE_INCOMPLETE, done.stdout + done.stderr
    assert "problem: shard 0: shard-00000.lmdb is corrupt" in done.stdout
    assert "resubmit shards 0:" in done.stdout and "--array 0 --force" in done.stdout
    assert "Traceback" not in done.stderr


def _missing_key_rows(shard: Shard) -> dict[bytes, str]:
    """The problem row epic-check prints for each key of the shard when a lookup of it
    finds nothing."""
    rows = {SHARD_META_KEY: "shard metadata missing"}
    for vid, numbers in shard.frames.items():
        rows[video_meta_key(vid)] = f"{vid}: metadata missing"
        rows[checksum_key(vid)] = f"{vid}: checksums missing or not one per stored frame"
        rows.update((frame_key(vid, n), f"{vid} frame {n}: key missing") for n in numbers)
    return rows


def _raised_separator(node_offset: int, key: bytes, leaf: list[bytes]) -> tuple[int, int, bytes]:
    """(file offset, XOR, new key) of the first flip of one byte of separator ``key`` (its
    last byte first, XORs upwards) that makes it a key above the first key of its child
    ``leaf`` and not above the last."""
    for i in reversed(range(len(key))):
        for xor in range(1, 256):
            raised = key[:i] + bytes([key[i] ^ xor]) + key[i + 1 :]
            if leaf[0] < raised <= leaf[-1]:
                return node_offset + NODE_HEADER + i, xor, raised
    raise AssertionError(f"no single-byte flip of {key!r} lands inside its leaf")


@pytest.mark.slow
def test_flipped_key_byte_in_branch_page_is_reported_not_complete(shard: Shard) -> None:
    # Each separator key of the root page raised by one flipped byte, but not past the last
    # key of its leaf: that leaf's keys below the new separator now route to the leaf on the
    # left, which does not hold them, while a cursor walk still meets every key in order.
    rows = _missing_key_rows(shard)
    flips = []
    for node in _root_nodes(shard)[1:]:  # node 0 has no key
        key = node_key(shard.data, node)
        leaf_page = child_page(shard.data, node)
        leaf = [node_key(shard.data, n) for n in nodes(shard.data, leaf_page, shard.psize)]
        offset, xor, raised = _raised_separator(node, key, leaf)
        # The leaf's first key is lost (and so are the others below the new separator).
        row = f"problem: shard 0: {rows[leaf[0]]}"
        flips.append((offset, xor, row))
        with flipped(shard, offset, xor):
            texts = [_check_text(shard.store, deep=deep) for deep in (False, True)]
            kind, value = read_back(shard.store, shard.frames)
        where = f"separator {key!r} -> {raised!r}"
        for text in texts:
            assert row in text and "is complete" not in text, f"{where}\n{text}"
        frames_lost = not leaf[0].startswith(b"__meta__/")
        assert shard.read_fails_or_is_right(kind, value, frames_lost), (where, value)
    offset, xor, row = flips[0]
    with flipped(shard, offset, xor):
        for deep in ([], ["--deep"]):
            done = _check_cli(shard.store, *deep)
            assert done.returncode == ExitCode.STORE_INCOMPLETE, done.stdout + done.stderr
            assert row in done.stdout and "is complete" not in done.stdout
            assert "Traceback" not in done.stderr


def test_shard_that_kills_its_reader_is_a_problem_row_not_a_crash(shard: Shard) -> None:
    # Each node pointer of the root page (the file's last page) aimed 16 pages past the end
    # of the file: LMDB reads the node there and the process dies with SIGBUS. epic-check
    # reads with pread through the store's reader (issue 20): a problem row naming the page.
    root = _root(shard)
    assert root == len(shard.data) // shard.psize - 1
    pointers = [root * shard.psize + PAGE_HEADER + 2 * i for i in range(len(_root_nodes(shard)))]
    for pointer in pointers:
        with damaged(shard.path, pointer, struct.pack("<H", 0xFFF0)):
            text = _check_text(shard.store)
        where = f"node pointer at byte {pointer}"
        assert f"problem: shard 0: shard-00000.lmdb is corrupt: page {root}" in text, where
        assert "killed the checker process" not in text, f"{where}\n{text}"
    with damaged(shard.path, pointers[1], struct.pack("<H", 0xFFF0)):
        done = _check_cli(shard.store)
    assert done.returncode == ExitCode.STORE_INCOMPLETE, done.stdout + done.stderr
    assert f"problem: shard 0: shard-00000.lmdb is corrupt: page {root}" in done.stdout
    assert "killed" not in done.stdout and "resubmit shards 0:" in done.stdout


def _outcome(shard: Shard) -> str:
    report = check_store(shard.store)
    if not report.ok:
        named = any(p.startswith("shard 0: ") for p in report.problems)
        # A damaged frame index alone is rewritten in place (--upgrade), not re-extracted.
        index_only = report.shards[0].index_only and report.upgrade_notes
        if named and (report.resubmit_indices == [0] or index_only):
            return "reported"
        return f"reported wrongly: {report.problems}"
    kind, value = read_back(shard.store, shard.frames)
    if kind != "read":
        return f"the check passed, then the reader {kind}: {value}"
    if value != shard.digests:
        return "the check passed, then the reader returned other bytes"
    return "harmless"


@pytest.mark.parametrize("damage", ["node 0's key size", "odd node table"])
def test_check_passes_a_damaged_branch_page_that_the_reader_refuses(
    shard: Shard, damage: str
) -> None:
    root = _root(shard)
    if damage == "node 0's key size":
        offset = _root_nodes(shard)[0] + 7  # its high byte: 256 bytes more, past the page
    else:
        offset = root * shard.psize + LOWER_LOW_BYTE  # LMDB counts the same nodes
    with flipped(shard, offset, 0x01):
        outcome = _outcome(shard)
    assert outcome in ("reported", "harmless"), f"page {root} + {offset % shard.psize}: {outcome}"


def test_check_passes_a_leaf_page_with_an_odd_node_table_that_the_reader_refuses(
    shard: Shard,
) -> None:
    leaves = [p for p, kind in shard.kinds.items() if kind == "leaf"]
    outcomes = {}
    for leaf in leaves:
        with flipped(shard, leaf * shard.psize + LOWER_LOW_BYTE, 0x01):
            outcomes[leaf] = _outcome(shard)
    assert set(outcomes.values()) <= {"reported", "harmless"}, outcomes


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_single_byte_flips_are_reported_or_harmless(
    shard: Shard, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A B-tree that loops is reported after this long rather than the production limit.
    monkeypatch.setattr(check_module, "SHARD_TIMEOUT_BASE_S", 30.0)
    assert check_store(shard.store).ok
    targets = flip_offsets(shard.data, shard.kinds, shard.psize)
    assert all(targets[target] for target in TARGETS), {t: len(o) for t, o in targets.items()}
    rng = random.Random(SEED)
    flips = [("branch", offset, rng.randrange(1, 256)) for offset in targets["branch"]]
    for target, count in FLIPS.items():
        flips += [
            (target, rng.choice(targets[target]), rng.randrange(1, 256)) for _ in range(count)
        ]
    outcomes: Counter[tuple[str, str]] = Counter()
    failures: list[str] = []
    for target, offset, xor in flips:
        try:
            with flipped(shard, offset, xor):
                outcome = _outcome(shard)
        except Exception as exc:
            outcome = f"the checker raised {type(exc).__name__}: {exc}"
        if outcome in ("reported", "harmless"):
            outcomes[target, outcome] += 1
        else:
            page, within = divmod(offset, shard.psize)
            failures.append(
                f"{target} byte {offset} (page {page} + {within}) ^ {xor:#04x}: {outcome}"
            )
    assert not failures, "\n".join(failures)
    # The flips reached what matters: each target had flips that the check caught, and a
    # CRC-32 catches every single-byte change in a JPEG.
    assert all(outcomes[target, "reported"] for target in TARGETS), outcomes
    assert outcomes["JPEG", "reported"] == FLIPS["JPEG"], outcomes
    assert check_store(shard.store).ok
