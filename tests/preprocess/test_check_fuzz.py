"""`epic-check` against damaged LMDB pages, as SQLite tests its reader with fuzzed files: a
shard with any single flipped byte is either reported (exit 5, a problem row naming it), or
every stored frame still reads back byte for byte through FrameStore.read_frames. The
checker never crashes, never hangs, and never passes a shard that the reader then fails on.
A fixed seed and fixed flip counts make a failure reproduce (each names page and offset).
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
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from epicdata.errors import ExitCode
from epicdata.lmdb_pages import F_BIGDATA, P_BRANCH, P_LEAF, P_OVERFLOW, PAGE_HEADER
from epicdata.store import FrameStore, frames_in_ranges, open_shard_readonly, shard_path
from preprocess import check as check_module
from preprocess.check import check_store
from preprocess.extract import run_shard
from preprocess.plan import plan_store

SEED = 20261130
#: Flips per target. About 25 ms each on 2 cores (the check in a child process, and a
#: read-back in another when the check passes): these 800 took 20 s on a 2-core VM.
FLIPS = {"branch": 200, "leaf": 300, "meta": 150, "overflow header": 75, "JPEG": 75}

# LMDB's page header (64-bit builds): mp_pgno (8 bytes), mp_pad (2), mp_flags (2), then
# mp_lower and mp_upper (2 + 2; the free gap between them is not read) or, on the first page
# of a large value, mp_pages (4). Node pointers (2 bytes each) follow the header. Large
# values (the JPEGs) fill the pages after such a header, without headers of their own.
# The constants are the store's reader's (epicdata.lmdb_pages).
#: The page header and MDB_meta (magic, version, address, map size, two MDB_db of 48 bytes,
#: last page, txn id) on meta pages 0 and 1: the bytes LMDB reads there.
META_BYTES = PAGE_HEADER + 136


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
    """File offsets of the nodes of branch or leaf page ``page``. A node starts with 6
    bytes (mn_lo, mn_hi, mn_flags: a branch's child page number; a leaf's value size and
    flags), the key size (2), then the key and, in a leaf, the value or its first page."""
    base = page * psize
    lower = struct.unpack_from("<H", data, base + 12)[0]
    count = (lower - PAGE_HEADER) // 2
    return [
        base + struct.unpack_from("<H", data, base + PAGE_HEADER + 2 * i)[0] for i in range(count)
    ]


def jpeg_extents(data: bytes, kinds: dict[int, str], psize: int) -> list[tuple[int, int]]:
    """File extents [start, end) of the values kept in overflow pages (the JPEGs)."""
    extents = []
    for page in (p for p, kind in kinds.items() if kind == "leaf"):
        for node in nodes(data, page, psize):
            lo, hi, flags, key_size = struct.unpack_from("<HHHH", data, node)
            if flags & F_BIGDATA:
                first = struct.unpack_from("<Q", data, node + 8 + key_size)[0]
                start = first * psize + PAGE_HEADER
                extents.append((start, start + (lo | hi << 16)))
    return extents


def flip_offsets(data: bytes, kinds: dict[int, str], psize: int) -> dict[str, list[int]]:
    """File offsets to flip, per target: the bytes LMDB reads in branch, leaf and meta pages
    and overflow headers (not the free gap of a page, nor the unused rest of a meta page),
    and the bytes of the JPEGs."""
    targets: dict[str, list[int]] = {kind: [] for kind in FLIPS}
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
    kinds: dict[int, str]
    frames: dict[str, list[int]]
    digests: dict[str, list[str]]


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


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, epic_files) -> Path:
    """A store of one extracted shard with several leaf pages under a branch page."""
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
    run_shard(store_root=store, shard_index=0, tmp_dir=tmp / "scratch")
    return store


@pytest.fixture
def shard(pristine: Path, tmp_path: Path) -> Shard:
    """A fresh copy of the pristine store, its pages classified and its frames' digests."""
    store = tmp_path / "store"
    shutil.copytree(pristine, store)
    path = shard_path(store, 0)
    env = open_shard_readonly(path)
    try:
        stat = env.stat()
    finally:
        env.close()
    assert stat["depth"] >= 2 and stat["branch_pages"] >= 1 and stat["leaf_pages"] >= 3, stat
    reader = FrameStore(store)
    try:
        frames = {
            vid: frames_in_ranges(reader.video_meta(vid).stored_ranges).tolist()
            for vid in reader.video_ids
        }
    finally:
        reader.close()
    kinds = page_kinds(path.read_bytes(), stat["psize"])
    return Shard(store, path, stat["psize"], kinds, frames, _digests(store, frames))


def _check_cli(store: Path, *options: str) -> subprocess.CompletedProcess:
    """epic-check in its own process: an LMDB abort used to kill it with exit 134."""
    return subprocess.run(
        [sys.executable, "-c", "from preprocess.cli import check; check()"]
        + ["--store", str(store), *options],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _patch(path: Path, offset: int, xor: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        old = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([old ^ xor]))


def _root(shard: Shard) -> int:
    (root,) = [p for p, kind in shard.kinds.items() if kind == "branch"]
    return root


def test_flipped_child_page_number_in_branch_page_is_reported_not_an_lmdb_abort(
    shard: Shard,
) -> None:
    second = nodes(shard.path.read_bytes(), _root(shard), shard.psize)[1]
    _patch(shard.path, second, 0x01)  # low byte of the second child's page number
    done = _check_cli(shard.store)
    assert done.returncode == ExitCode.STORE_INCOMPLETE, done.stdout + done.stderr
    assert "problem: shard 0: shard-00000.lmdb is corrupt" in done.stdout
    assert "resubmit shards 0:" in done.stdout and "--array 0 --force" in done.stdout
    assert "Traceback" not in done.stderr


def test_flipped_key_byte_in_branch_page_is_reported_not_complete(shard: Shard) -> None:
    data = shard.path.read_bytes()
    node = nodes(data, _root(shard), shard.psize)[1]
    key_size = struct.unpack_from("<H", data, node + 6)[0]
    key = data[node + 8 : node + 8 + key_size]
    # The separator's hundreds digit 0 -> 2 (e.g. frame 58 -> 258): frames from the old to
    # the new separator now route to the leaf on the left, which does not hold them, while
    # a cursor walk still meets every key in order.
    assert key[-3:-2] == b"0", key
    _patch(shard.path, node + 8 + key_size - 3, 0x02)
    vid, frame = key.decode().split("/")
    assert read_back(shard.store, shard.frames)[0] == "raised"
    for deep in ([], ["--deep"]):
        done = _check_cli(shard.store, *deep)
        assert done.returncode == ExitCode.STORE_INCOMPLETE, done.stdout + done.stderr
        assert f"problem: shard 0: {vid} frame {int(frame)}: key missing" in done.stdout
        assert "is complete" not in done.stdout


def test_shard_that_kills_its_reader_is_a_problem_row_not_a_crash(shard: Shard) -> None:
    # A node pointer of the root page (the file's last page) aimed 16 pages past the end of
    # the file: LMDB reads the node there and the process dies with SIGBUS.
    root = _root(shard)
    assert root == len(shard.path.read_bytes()) // shard.psize - 1
    with shard.path.open("r+b") as f:
        f.seek(root * shard.psize + PAGE_HEADER + 2)
        f.write(struct.pack("<H", 0xFFF0))
    done = _check_cli(shard.store)
    assert done.returncode == ExitCode.STORE_INCOMPLETE, done.stdout + done.stderr
    assert (
        "problem: shard 0: reading shard-00000.lmdb killed the checker process (signal "
        in done.stdout
    )
    assert "the shard is corrupt" in done.stdout and "resubmit shards 0:" in done.stdout


def _outcome(shard: Shard) -> str:
    report = check_store(shard.store)
    if not report.ok:
        if report.resubmit_indices == [0] and any(
            p.startswith("shard 0: ") for p in report.problems
        ):
            return "reported"
        return f"reported wrongly: {report.problems}"
    kind, value = read_back(shard.store, shard.frames)
    if kind != "read":
        return f"the check passed, then the reader {kind}: {value}"
    if value != shard.digests:
        return "the check passed, then the reader returned other bytes"
    return "harmless"


@pytest.mark.timeout(600)
def test_single_byte_flips_are_reported_or_harmless(
    shard: Shard, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A B-tree that loops is reported after this long rather than the production limit.
    monkeypatch.setattr(check_module, "SHARD_TIMEOUT_BASE_S", 30.0)
    assert check_store(shard.store).ok
    data = shard.path.read_bytes()
    targets = flip_offsets(data, shard.kinds, shard.psize)
    assert all(targets[target] for target in FLIPS), {t: len(o) for t, o in targets.items()}
    rng = random.Random(SEED)
    outcomes: Counter[tuple[str, str]] = Counter()
    failures: list[str] = []
    fd = os.open(shard.path, os.O_RDWR)
    try:
        for target, count in FLIPS.items():
            for _ in range(count):
                offset, xor = rng.choice(targets[target]), rng.randrange(1, 256)
                os.pwrite(fd, bytes([data[offset] ^ xor]), offset)
                try:
                    outcome = _outcome(shard)
                except Exception as exc:
                    outcome = f"the checker raised {type(exc).__name__}: {exc}"
                finally:
                    os.pwrite(fd, data[offset : offset + 1], offset)
                if outcome in ("reported", "harmless"):
                    outcomes[target, outcome] += 1
                else:
                    page, within = divmod(offset, shard.psize)
                    failures.append(
                        f"{target} byte {offset} (page {page} + {within}) ^ {xor:#04x}: {outcome}"
                    )
    finally:
        os.close(fd)
    assert not failures, "\n".join(failures)
    # The flips reached what matters: each target had flips that the check caught, and a
    # CRC-32 catches every single-byte change in a JPEG.
    assert all(outcomes[target, "reported"] for target in FLIPS), outcomes
    assert outcomes["JPEG", "reported"] == FLIPS["JPEG"], outcomes
    assert check_store(shard.store).ok
