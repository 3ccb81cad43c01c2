"""One reader for every read (issue 20): on a damaged shard, `epic-check` and the readers that
training and validation use give one verdict. Either the check passes and every read returns
the stored bytes, or both say exit 5 and name the same shard and the same damage. The
process never dies of a signal. (Before issue 20, one damaged node offset in a root page
killed epic-train with SIGBUS and no message, and a branch node's key size made epic-check
pass a shard that epic-train refused.)

The three shards of the issue go through the CLIs (epic-check, epic-train with 0 and 2
loader workers, epic-validate; the emptied leaf of frames in a shard of store format 1,
whose reads look frames up in the B-tree, and in one of format 2, whose reads take the
frame index and return the right bytes while epic-check names the damage); a fuzz test then damages the shard over a thousand times
(seeded) and asserts the property for each: if the check passes, every frame reads back
byte for byte; a read that fails raises StoreIncompleteError (exit 5); nothing crashes.

Every damaged byte is found by parsing the shard's pages (the meta page names the root, the
root its children, each leaf its values), never assumed. The shard itself is rewritten in
key order with its videos' paths made relative, so that its bytes, and therefore where each
damage lands, are the same in every checkout, whatever its path and however the decoder's
batches interleaved. The CLIs run as subprocesses: a signal shows as a negative return code
and fails the test with the output, instead of killing pytest.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import random
import re
import shutil
import struct
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import lmdb
import pytest

from epicdata.errors import ExitCode, StoreIncompleteError
from epicdata.layout import frame_key, shard_path, video_meta_key
from epicdata.lmdb_pages import F_BIGDATA, NODE_HEADER, P_BRANCH, P_LEAF, P_OVERFLOW, PAGE_HEADER
from epicdata.metadata import VideoMeta
from epicdata.ranges import frames_in_ranges
from epicdata.store import FrameStore
from epicdata.synthetic import make_mini_epic
from preprocess import check as check_module
from preprocess.check import check_shard, check_store
from preprocess.extract import run_shard
from preprocess.plan import plan_store
from preprocess.writer import ShardWriter

SEED = 20261206
SHARD = "shard-00000.lmdb"
#: Clips of 2 frames, and only the frames the clip samplers read are stored (keep=sampled):
#: the shard stays small (about 330 keys: five leaves under one root).
CLIP_FRAMES = 2
TRAIN_OPTIONS = ["--epochs", "1", "--crop-size", "64", "--num-frames", str(CLIP_FRAMES)]
TRAIN_OPTIONS += ["--batch-size", "8", "--weights", "none", "--log-every", "0", "--device", "cpu"]
#: Damages per target of the fuzz test (single bytes XORed with 1..255), and 16-bit fields
#: (node table entries, mp_lower, mp_upper, a node's size fields) set to values LMDB meets in
#: damaged files.
FLIPS = {
    "meta page": 100,
    "branch page": 200,
    "leaf header": 60,
    "leaf node table": 100,
    "leaf node header": 100,
    "leaf key": 100,
    "leaf value or pointer": 60,
    "overflow header": 80,
    "JPEG": 80,
    "metadata value": 60,
}
FIELDS = 140
FIELD_VALUES = (0, 1, PAGE_HEADER, 0x7FFF, 0xFFF0, 0xFFFF)
#: Bytes of pages 0 and 1 that LMDB reads: the page header and MDB_meta (magic, version,
#: address, map size, two MDB_db of 48 bytes, last page, transaction id).
_META = struct.Struct("<IIQQ" + "IHHQQQQQ" * 2 + "QQ")
META_BYTES = PAGE_HEADER + _META.size


# ----------------------------------------------------------------------------- the file


@dataclass(frozen=True)
class Layout:
    """An LMDB file's pages as its meta page and B-tree say: page size, root, each page's
    kind, and the nodes of every branch and leaf page (file offsets, key order)."""

    psize: int
    root: int
    kinds: dict[int, str]  # meta, branch, leaf, overflow (a large value's first page)
    nodes: dict[int, list[int]]

    def pages(self, kind: str) -> list[int]:
        return sorted(p for p, k in self.kinds.items() if k == kind)


def _meta(data: bytes) -> tuple[int, int, int]:
    """(page size, main database root, last page) of the meta page LMDB picks (the newer
    transaction; page 0 on a tie)."""
    first = _META.unpack_from(data, PAGE_HEADER)
    psize = first[4]  # the free database's md_pad holds the page size
    second = _META.unpack_from(data, psize + PAGE_HEADER)
    meta = second if second[-1] > first[-1] else first
    return psize, meta[19], meta[20]


def _node_offsets(data: bytes, page: int, psize: int) -> list[int]:
    base = page * psize
    lower = struct.unpack_from("<H", data, base + 12)[0]
    count = (lower - PAGE_HEADER) // 2
    return [base + p for p in struct.unpack_from(f"<{count}H", data, base + PAGE_HEADER)]


def _child(data: bytes, node: int) -> int:
    lo, hi, flags = struct.unpack_from("<HHH", data, node)
    return lo | hi << 16 | flags << 32


def node_key(data: bytes, node: int) -> bytes:
    size = struct.unpack_from("<H", data, node + 6)[0]
    return data[node + NODE_HEADER : node + NODE_HEADER + size]


def parse(data: bytes) -> Layout:
    """Walk the B-tree of the undamaged file ``data`` from its root."""
    psize, root, last = _meta(data)
    assert len(data) == (last + 1) * psize, "not a compacted copy"
    kinds, nodes, todo = {0: "meta", 1: "meta"}, {}, [root]
    while todo:
        page = todo.pop()
        flags = struct.unpack_from("<H", data, page * psize + 10)[0]
        nodes[page] = _node_offsets(data, page, psize)
        if flags & P_BRANCH:
            kinds[page] = "branch"
            todo += [_child(data, node) for node in nodes[page]]
            continue
        assert flags & P_LEAF, f"page {page}: flags {flags:#x}"
        kinds[page] = "leaf"
        for node in nodes[page]:
            if struct.unpack_from("<H", data, node + 4)[0] & F_BIGDATA:
                first = struct.unpack_from(
                    "<Q", data, node + NODE_HEADER + len(node_key(data, node))
                )
                assert struct.unpack_from("<H", data, first[0] * psize + 10)[0] & P_OVERFLOW
                kinds[first[0]] = "overflow"
    return Layout(psize, root, kinds, nodes)


def value_extent(data: bytes, layout: Layout, node: int) -> tuple[int, int]:
    """[start, end) in the file of a leaf node's value (inline, or in overflow pages)."""
    lo, hi, flags, key_size = struct.unpack_from("<HHHH", data, node)
    start = node + NODE_HEADER + key_size
    if flags & F_BIGDATA:
        start = struct.unpack_from("<Q", data, start)[0] * layout.psize + PAGE_HEADER
    return start, start + (lo | hi << 16)


def leaf_holding(data: bytes, layout: Layout, key: bytes) -> int:
    """The leaf page that holds ``key``."""
    (page,) = [
        p for p in layout.pages("leaf") if key in {node_key(data, n) for n in layout.nodes[p]}
    ]
    return page


# ----------------------------------------------------------------------------- the store


@dataclass(frozen=True)
class Pristine:
    """A published one-shard store of a 3-video mini-EPIC (train and validation videos),
    its annotations, the shard's bytes and layout, and every value as py-lmdb reads it."""

    store: Path
    annotations: Path
    data: bytes
    layout: Layout
    items: dict[bytes, bytes]
    frames: dict[str, list[int]]  # stored frame numbers per video, from its metadata

    @property
    def train_video(self) -> str:
        return min(self.frames)

    @property
    def validation_video(self) -> str:
        return max(self.frames)


def _items(path: Path) -> dict[bytes, bytes]:
    env = lmdb.open(str(path), subdir=False, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return dict(txn.cursor().iternext())
    finally:
        env.close()


def _rewrite_without_paths(store: Path, scratch: Path) -> None:
    """Publish shard 0 again with each video's ``source`` relative to the videos' root and
    its keys written in key order: its bytes no longer depend on where the test runs (the
    path's length moved every value after it) nor on how the decoder threads' batches
    interleaved."""
    items = _items(shard_path(store, 0))
    for key, value in items.items():
        if key.startswith(b"__meta__/video/"):
            meta = VideoMeta.from_bytes(value)
            relative = "/".join(Path(meta.source).parts[-3:])  # PXX/videos/PXX_YY.MP4
            items[key] = dataclasses.replace(meta, source=relative).to_bytes()
    writer = ShardWriter(scratch / "rewrite.lmdb", map_size=1 << 30)
    try:
        writer.put(sorted(items.items()))
        writer.publish(store, 0)
    finally:
        writer.close()


def build_pristine(root: Path) -> Pristine:
    """The store of :class:`Pristine`, built under ``root``."""
    mini = make_mini_epic(root / "mini", num_videos=3, size=(160, 90))
    store = root / "store"
    plan_store(
        store_root=store,
        annotations_dir=mini.annotations_dir,
        videos_root=mini.videos_dir,
        splits=("train", "validation"),
        shards=1,
        keep="sampled",
        num_frames=(CLIP_FRAMES,),
    )
    run_shard(store_root=store, shard_index=0, tmp_dir=root / "scratch", workers=1)
    _rewrite_without_paths(store, root / "scratch")
    data = shard_path(store, 0).read_bytes()
    assert str(root).encode() not in data and b"/tmp" not in data
    layout = parse(data)
    items = _items(shard_path(store, 0))
    metas = [VideoMeta.from_bytes(v) for k, v in items.items() if k.startswith(b"__meta__/video/")]
    frames = {m.video_id: frames_in_ranges(m.stored_ranges).tolist() for m in metas}
    return Pristine(store, mini.annotations_dir, data, layout, items, frames)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Pristine:
    """The module's undamaged store: READ ONLY (each test damages a copy)."""
    pristine = build_pristine(tmp_path_factory.mktemp("one_reader"))
    layout = pristine.layout
    # A root above several leaves, whose middle node every lookup probes first.
    assert len(pristine.frames) == 2 and layout.kinds[layout.root] == "branch", layout.kinds
    assert len(layout.pages("leaf")) >= 4 and len(layout.pages("branch")) == 1
    assert layout.root == len(pristine.data) // layout.psize - 1  # the file's last page
    assert check_store(pristine.store).ok
    return pristine


def damaged_copy(pristine: Pristine, folder: Path, edits: dict[int, bytes]) -> Path:
    """A copy of the store under ``folder`` whose shard has ``edits`` (offset -> bytes)."""
    store = folder / "store"
    shutil.copytree(pristine.store, store)
    data = bytearray(pristine.data)
    for offset, new in edits.items():
        data[offset : offset + len(new)] = new
    shard_path(store, 0).write_bytes(bytes(data))
    return store


# ----------------------------------------------------------------------------- the CLIs


def _cli(name: str, *args: object) -> subprocess.CompletedProcess:
    """One of the project's commands in its own process, on one thread (2 busy cores)."""
    command = [str(Path(sys.executable).parent / name), *(str(a) for a in args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode >= 0, (
        f"{name} was killed by signal {-done.returncode}\n{done.stdout}\n{done.stderr}"
    )
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    return done


def check_problems(store: Path, *options: str) -> list[str]:
    """epic-check's problems for the store (it must exit 5 and name shard 0 only)."""
    done = _cli("epic-check", "--store", store, *options)
    assert done.returncode == ExitCode.STORE_INCOMPLETE, done.stdout + done.stderr
    problems = [line for line in done.stdout.splitlines() if line.startswith("problem: ")]
    assert problems and all(p.startswith("problem: shard 0: ") for p in problems), done.stdout
    assert "resubmit shards 0:" in done.stdout, done.stdout
    return [p.removeprefix("problem: shard 0: ") for p in problems]


def error_line(done: subprocess.CompletedProcess, command: str) -> str:
    """The one ``error:`` line of a command that must exit 5 naming the shard file."""
    output = done.stdout + done.stderr
    assert done.returncode == ExitCode.STORE_INCOMPLETE, f"{command}: {done.returncode}\n{output}"
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and SHARD in errors[0], f"{command}:\n{output}"
    return errors[0]


def train(pristine: Pristine, store: Path, run: Path, workers: int) -> subprocess.CompletedProcess:
    """One epoch of epic-train on ``store`` (its train and validation videos)."""
    return _cli(
        "epic-train", "--store", store, "--annotations", pristine.annotations,
        "--output-dir", run, "--workers", workers, *TRAIN_OPTIONS,
    )  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(pristine: Pristine, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """best.pt of a one-batch run on the undamaged store, for epic-validate."""
    run = tmp_path_factory.mktemp("one_reader_run") / "run"
    done = _cli(
        "epic-train", "--store", pristine.store, "--annotations", pristine.annotations,
        "--output-dir", run, "--workers", 0, "--limit-batches", 1, *TRAIN_OPTIONS,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return run / "best.pt"


def validate(
    pristine: Pristine, store: Path, checkpoint: Path, out: Path
) -> subprocess.CompletedProcess:
    """epic-validate of ``checkpoint`` on the validation video of ``store``."""
    return _cli(
        "epic-validate", "--checkpoint", checkpoint, "--store", store,
        "--annotations", pristine.annotations, "--output-dir", out,
        "--workers", 0, "--device", "cpu", "--batch-size", 8,
    )  # fmt: skip


def corrupt_reason(problems: list[str]) -> str:
    """What epic-check says is wrong with a shard that fails to parse (``<file> is corrupt:
    <reason>``): the reason a reader must give too."""
    reasons = [p.partition(f"{SHARD} is corrupt: ")[2] for p in problems if " is corrupt: " in p]
    assert len(reasons) == 1 and reasons[0], problems
    return reasons[0]


# ----------------------------------------------------------------------------- a. SIGBUS


def sigbus_edit(pristine: Pristine) -> tuple[int, bytes]:
    """The node table entry of the root page's node that every lookup probes first (LMDB's
    binary search over nodes 1..n-1 starts in the middle, node n // 2), aimed about 15 pages
    past the end of the file (the root is its last page): through a memory map, a read there
    is SIGBUS."""
    data, layout = pristine.data, pristine.layout
    count = len(layout.nodes[layout.root])
    entry = layout.root * layout.psize + PAGE_HEADER + 2 * (count // 2)
    assert layout.root * layout.psize + 0xFFF0 > len(data) + layout.psize
    return entry, struct.pack("<H", 0xFFF0)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_sigbus_shard_is_exit_5_naming_it_in_check_and_train(
    pristine: Pristine, tmp_path: Path, workers: int
) -> None:
    # Regression: epic-train died with SIGBUS (exit 135, no message) reading its metadata.
    store = damaged_copy(pristine, tmp_path, dict([sigbus_edit(pristine)]))
    trained = train(pristine, store, tmp_path / "run", workers)  # first: the crash it was
    reason = corrupt_reason(check_problems(store))
    line = error_line(trained, "epic-train")
    assert reason in line, f"epic-check: {reason}\nepic-train: {line}"
    assert not (tmp_path / "run" / "best.pt").exists()


@pytest.mark.slow
def test_sigbus_shard_is_exit_5_naming_it_in_validate(
    pristine: Pristine, checkpoint: Path, tmp_path: Path
) -> None:
    store = damaged_copy(pristine, tmp_path, dict([sigbus_edit(pristine)]))
    validated = validate(pristine, store, checkpoint, tmp_path / "out")
    reason = corrupt_reason(check_problems(store))
    line = error_line(validated, "epic-validate")
    assert reason in line, f"epic-check: {reason}\nepic-validate: {line}"


# ----------------------------------------------------------------------------- b. two verdicts


def originals(pristine: Pristine) -> dict[bytes, bytes]:
    """Every stored frame's key and JPEG bytes, as py-lmdb (the oracle) read them."""
    return {
        frame_key(vid, n): pristine.items[frame_key(vid, n)]
        for vid, numbers in pristine.frames.items()
        for n in numbers
    }


@pytest.mark.slow
def test_branch_key_size_of_node_0_gets_one_verdict_from_check_and_train(
    pristine: Pristine, tmp_path: Path
) -> None:
    # Regression: node 0's key size in the root page set from 0 to 128 (LMDB never reads
    # node 0's key in a branch page): epic-check said complete, epic-train exit 5 "the
    # shard is damaged ... run epic-check".
    node = pristine.layout.nodes[pristine.layout.root][0]
    assert pristine.data[node + 6 : node + 8] == b"\0\0"
    store = damaged_copy(pristine, tmp_path, {node + 6: struct.pack("<H", 128)})
    checks = [_cli("epic-check", "--store", store, *deep) for deep in ([], ["--deep"])]
    trained = train(pristine, store, tmp_path / "run", 0)
    codes = [done.returncode for done in (*checks, trained)]
    if codes == [0, 0, 0]:
        for done in checks:
            assert "is complete" in done.stdout, done.stdout
        reader = FrameStore(store)
        try:
            assert read_frames_back(reader, originals(pristine))
            for vid in pristine.frames:
                stored = VideoMeta.from_bytes(pristine.items[video_meta_key(vid)])
                assert reader.video_meta(vid) == stored
        finally:
            reader.close()
        return
    assert codes == [ExitCode.STORE_INCOMPLETE] * 3, "\n".join(
        f"exit {d.returncode}\n{d.stdout}{d.stderr}" for d in (*checks, trained)
    )
    reason = corrupt_reason(check_problems(store))
    assert reason in error_line(trained, "epic-train")


# ----------------------------------------------------------------------------- c. empty leaf


def emptied_leaf(pristine: Pristine, key: bytes) -> tuple[set[bytes], dict[int, bytes]]:
    """The keys of the leaf page holding ``key``, and the edit that empties it (``mp_lower``
    set to the header's size: no nodes)."""
    data, layout = pristine.data, pristine.layout
    leaf = leaf_holding(data, layout, key)
    keys = {node_key(data, node) for node in layout.nodes[leaf]}
    return keys, {leaf * layout.psize + 12: struct.pack("<H", PAGE_HEADER)}


def _missing_frames(text: str, vid: str, pattern: str) -> set[bytes]:
    return {frame_key(vid, int(n)) for n in re.findall(pattern.format(vid=vid), text)}


def format_1_copy(
    pristine: Pristine, folder: Path, as_format_1: Callable[[Path], None]
) -> tuple[Path, bytes, Layout]:
    """A copy of the store under ``folder`` as store format 1 wrote it (no frame index),
    its shard's bytes and layout."""
    store = folder / "store"
    shutil.copytree(pristine.store, store)
    as_format_1(shard_path(store, 0))
    data = shard_path(store, 0).read_bytes()
    return store, data, parse(data)


def format_1_emptied_leaf(
    pristine: Pristine, folder: Path, as_format_1: Callable[[Path], None]
) -> tuple[Path, set[bytes]]:
    """A format 1 copy of the store whose leaf holding a middle frame of the validation
    video is emptied, and the keys that leaf held."""
    numbers = pristine.frames[pristine.validation_video]
    store, data, layout = format_1_copy(pristine, folder, as_format_1)
    key = frame_key(pristine.validation_video, numbers[len(numbers) // 2])
    leaf = leaf_holding(data, layout, key)
    with shard_path(store, 0).open("r+b") as handle:
        handle.seek(leaf * layout.psize + 12)
        handle.write(struct.pack("<H", PAGE_HEADER))
    return store, {node_key(data, node) for node in layout.nodes[leaf]}


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_emptied_leaf_of_frames_is_exit_5_naming_its_frames_in_check_and_train(
    pristine: Pristine, tmp_path: Path, workers: int, as_format_1: Callable[[Path], None]
) -> None:
    # Regression: the page reader raised IndexError (exit 1, "a bug") where LMDB finds
    # nothing. The leaf holds frames of the validation video, which training reads after
    # its training steps, and epic-validate reads too. In a shard of store format 1 reads
    # look frames up in the B-tree: both say exit 5, naming a frame of the leaf.
    vid = pristine.validation_video
    store, keys = format_1_emptied_leaf(pristine, tmp_path, as_format_1)
    problems = check_problems(store)
    named = _missing_frames("\n".join(problems), vid, r"{vid} frame (\d+): key missing")
    assert named and named <= keys, problems
    line = error_line(train(pristine, store, tmp_path / "run", workers), "epic-train")
    found = _missing_frames(line, vid, r"{vid}: frame (\d+) is listed as stored but its key")
    assert len(found) == 1 and found <= keys, f"epic-check: {problems}\nepic-train: {line}"


@pytest.mark.slow
def test_emptied_leaf_of_frames_with_the_frame_index_reads_right_and_check_names_it(
    pristine: Pristine, checkpoint: Path, tmp_path: Path
) -> None:
    # Store format 2: reads find frames through the frame index, not the B-tree's leaves,
    # and check each one's CRC-32: training and validation read the right bytes; epic-check
    # names the keys the B-tree lost (exit 5: the shard is damaged, re-extract it).
    vid = pristine.validation_video
    numbers = pristine.frames[vid]
    keys, edit = emptied_leaf(pristine, frame_key(vid, numbers[len(numbers) // 2]))
    store = damaged_copy(pristine, tmp_path, edit)
    problems = check_problems(store)
    named = _missing_frames("\n".join(problems), vid, r"{vid} frame (\d+): key missing")
    assert named and named <= keys, problems
    trained = train(pristine, store, tmp_path / "run", 0)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    validated = validate(pristine, store, checkpoint, tmp_path / "out")
    assert validated.returncode == 0, validated.stdout + validated.stderr
    reader = FrameStore(store)
    try:
        assert read_frames_back(reader, {key: pristine.items[key] for key in keys})
    finally:
        reader.close()


@pytest.mark.slow
def test_emptied_leaf_of_frames_is_exit_5_naming_its_frames_in_validate(
    pristine: Pristine, checkpoint: Path, tmp_path: Path, as_format_1: Callable[[Path], None]
) -> None:
    vid = pristine.validation_video
    store, keys = format_1_emptied_leaf(pristine, tmp_path, as_format_1)
    line = error_line(validate(pristine, store, checkpoint, tmp_path / "out"), "epic-validate")
    found = _missing_frames(line, vid, r"{vid}: frame (\d+) is listed as stored but its key")
    assert len(found) == 1 and found <= keys, line


@pytest.mark.slow
def test_emptied_leaf_of_metadata_is_exit_5_naming_it_in_check_and_train(
    pristine: Pristine, tmp_path: Path
) -> None:
    # The leaf of the training video's metadata (keys under __meta__/ sort after every video
    # id): training refuses the shard at its start, before any step.
    keys, edit = emptied_leaf(pristine, video_meta_key(pristine.train_video))
    store = damaged_copy(pristine, tmp_path, edit)
    problems = check_problems(store)
    line = error_line(train(pristine, store, tmp_path / "run", 0), "epic-train")
    (vid,) = [v for v in pristine.frames if f"{v}: metadata missing" in line]
    assert video_meta_key(vid) in keys and f"{vid}: metadata missing" in problems, problems
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- the fuzz test


def fuzz_targets(pristine: Pristine) -> dict[str, list[int]]:
    """File offsets per target of :data:`FLIPS`, all found by parsing the file."""
    data, layout, psize = pristine.data, pristine.layout, pristine.layout.psize
    targets: dict[str, list[int]] = {target: [] for target in FLIPS}
    targets["meta page"] = [*range(META_BYTES), *range(psize, psize + META_BYTES)]
    for page in layout.pages("branch"):
        base = page * psize
        lower, upper = struct.unpack_from("<HH", data, base + 12)
        targets["branch page"] += [*range(base, base + lower), *range(base + upper, base + psize)]
    for page in layout.pages("leaf"):
        base = page * psize
        lower = struct.unpack_from("<H", data, base + 12)[0]
        targets["leaf header"] += range(base, base + PAGE_HEADER)
        targets["leaf node table"] += range(base + PAGE_HEADER, base + lower)
        for node in layout.nodes[page]:
            key_end = node + NODE_HEADER + len(node_key(data, node))
            targets["leaf node header"] += range(node, node + NODE_HEADER)
            targets["leaf key"] += range(node + NODE_HEADER, key_end)
            start, end = value_extent(data, layout, node)
            inline = start == key_end
            targets["leaf value or pointer"] += range(key_end, end if inline else key_end + 8)
            target = "metadata value" if node_key(data, node).startswith(b"__meta__/") else "JPEG"
            targets[target] += range(start, end)
    for page in layout.pages("overflow"):
        targets["overflow header"] += range(page * psize, page * psize + PAGE_HEADER)
    return targets


def field_offsets(pristine: Pristine) -> list[int]:
    """The 16-bit fields of branch and leaf pages: mp_lower, mp_upper, every node table
    entry, and each node's lo, hi, flags and key size."""
    data, layout = pristine.data, pristine.layout
    fields = []
    for page in (*layout.pages("branch"), *layout.pages("leaf")):
        base = page * layout.psize
        count = len(layout.nodes[page])
        fields += [
            base + 12,
            base + 14,
            *range(base + PAGE_HEADER, base + PAGE_HEADER + 2 * count, 2),
        ]
        for node in layout.nodes[page]:
            fields += range(node, node + NODE_HEADER, 2)
    assert all(data[f : f + 2] for f in fields)
    return fields


def damages(pristine: Pristine) -> list[tuple[str, int, bytes]]:
    """(target, offset, new bytes) of every damage, drawn with :data:`SEED`."""
    rng = random.Random(SEED)
    data = pristine.data
    out = []
    for target, offsets in fuzz_targets(pristine).items():
        assert offsets, target
        for offset in (rng.choice(offsets) for _ in range(FLIPS[target])):
            out.append((target, offset, bytes([data[offset] ^ rng.randrange(1, 256)])))
    fields = field_offsets(pristine)
    for offset in (rng.choice(fields) for _ in range(FIELDS)):
        value = rng.choice((*FIELD_VALUES, rng.randrange(0x10000)))
        if data[offset : offset + 2] != struct.pack("<H", value):
            out.append(("16-bit field", offset, struct.pack("<H", value)))
    return out


def read_frames_back(reader: FrameStore, expected: dict[bytes, bytes]) -> bool:
    """Whether ``reader`` reads every frame of ``expected`` with exactly its bytes."""
    by_video: dict[str, list[int]] = {}
    for key in expected:
        vid, _, number = key.decode().partition("/")
        by_video.setdefault(vid, []).append(int(number))
    for vid, numbers in by_video.items():
        jpegs = reader.read_frames(vid, numbers)
        if any(expected[frame_key(vid, n)] != j for n, j in zip(numbers, jpegs, strict=True)):
            return False
    return True


def _read_back_child(sender: Connection, reader: FrameStore, expected: dict[bytes, bytes]) -> None:
    try:
        sender.send(("read", None) if read_frames_back(reader, expected) else ("wrong bytes", None))
    except StoreIncompleteError as exc:
        sender.send(("refused", str(exc)))
    except BaseException as exc:  # what the test is for: any other exception is a failure
        sender.send(("raised", f"{type(exc).__name__}: {exc}"))


def read_back(reader: FrameStore, expected: dict[bytes, bytes], timeout_s: float = 60.0) -> tuple:
    """:func:`read_frames_back` in a forked child, as a DataLoader worker reads with the
    FrameStore of the main process (it opens the shard itself), so that a crash is an
    outcome: ("read" | "wrong bytes" | "refused" | "raised" | "crashed" | "hung", detail)."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_read_back_child, args=(sender, reader, expected))
    child.start()
    sender.close()
    try:
        if not receiver.poll(timeout_s):
            child.kill()
            return "hung", None
        try:
            return receiver.recv()
        except EOFError:
            child.join()
            return "crashed", f"exit code {child.exitcode}"
    finally:
        receiver.close()
        child.join()


def outcome(store: Path, reader: FrameStore, expected: dict[bytes, bytes]) -> str:
    """'reported' (the check refused the shard; reads refuse it, or are unharmed),
    'harmless' (the check passed and every read returns the stored bytes), or what went
    wrong."""
    manifest = reader.manifest
    (plan,) = manifest.shards
    checked, _ = check_shard(store, plan, manifest.params)
    kind, detail = read_back(reader, expected)
    if not checked.problems:
        if kind == "read":
            return "harmless"
        return f"the check passed, then the reader {kind}: {detail}"
    if kind in ("read", "refused"):
        return "reported"
    return f"the check reported {checked.problems}, but the reader {kind}: {detail}"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_check_passes_only_shards_that_read_back_byte_for_byte(
    pristine: Pristine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A B-tree that loops is reported after this long rather than the production limit.
    monkeypatch.setattr(check_module, "SHARD_TIMEOUT_BASE_S", 30.0)
    store = tmp_path / "store"
    shutil.copytree(pristine.store, store)
    path = shard_path(store, 0)
    expected = originals(pristine)
    reader = FrameStore(store)  # made once, read in a forked child per damage
    plan = damages(pristine)
    assert len(plan) >= 1000
    outcomes: Counter[tuple[str, str]] = Counter()
    failures = []
    for target, offset, new in plan:
        data = bytearray(pristine.data)
        data[offset : offset + len(new)] = new
        path.write_bytes(bytes(data))
        try:
            result = outcome(store, reader, expected)
        except Exception as exc:
            result = f"the checker raised {type(exc).__name__}: {exc}"
        if result in ("reported", "harmless"):
            outcomes[target, result] += 1
            continue
        page, within = divmod(offset, pristine.layout.psize)
        was = pristine.data[offset : offset + len(new)].hex()
        failures.append(
            f"{target} at byte {offset} (page {page} + {within}) {was} -> {new.hex()}: {result}"
        )
    assert not failures, f"{len(failures)} of {len(plan)}:\n" + "\n".join(failures)
    # The damages reached what matters: each target had some that the check caught, and a
    # CRC-32 catches every single-byte change of a JPEG.
    assert all(outcomes[target, "reported"] for target in (*FLIPS, "16-bit field")), outcomes
    assert outcomes["JPEG", "reported"] == FLIPS["JPEG"], outcomes
    path.write_bytes(pristine.data)
    assert check_store(store).ok
