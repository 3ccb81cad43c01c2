"""Fixtures shared by every test package: a generated mini-EPIC, the real annotations, tiny
stamped videos in the EPIC layout with annotation folders that have the real headers (so
every test builds exactly the store it needs), and disks that fill up or refuse writes.

The small store is built once per session: ``small_store_ro`` (planned) and
``small_store_extracted_ro`` (its shard extracted) are shared, READ ONLY, by the tests that
only read them (the session fails if one changed); a test that writes, damages or
re-extracts takes ``small_store``, its own copy in ``tmp_path`` (copied, not re-encoded)."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from epicdata.annotations import SPLIT_FILES, TIMESTAMP_COLUMNS
from epicdata.frames import format_timestamp, frame_rate_for, start_frame_at, stop_frame_at
from epicdata.synthetic import MiniEpic, SyntheticVideo, make_mini_epic, make_video

#: Where the tests find the official EPIC-100 annotation files: this variable, else
#: ../shared/epic100 beside the checkout.
REAL_ANNOTATIONS_VAR = "EPIC_REAL_ANNOTATIONS"
SHARED_ANNOTATIONS = Path(__file__).resolve().parents[2] / "shared" / "epic100"
#: The official repository (github.com/epic-kitchens/epic-kitchens-100-annotations) keeps
#: the UDA splits in this subfolder; ../shared/epic100 holds every file flat.
REAL_SUBFOLDERS = ("UDA_annotations",)
#: A folder without this file is not a copy of the annotations (an empty or wrong folder).
REAL_MARKER = "EPIC_100_video_info.csv"


class RealAnnotations:
    """The one resolver of the real annotation files, so that every real-data test looks in
    the same place and every skip says how to point the tests at a copy."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        given = environ.get(REAL_ANNOTATIONS_VAR)
        self.folder = Path(given) if given else SHARED_ANNOTATIONS
        self.source = f"{REAL_ANNOTATIONS_VAR}={given}" if given else f"{SHARED_ANNOTATIONS}"
        self.hint = (
            f"set {REAL_ANNOTATIONS_VAR} to a clone of "
            "github.com/epic-kitchens/epic-kitchens-100-annotations to run the real-data tests"
        )

    def missing(self) -> str | None:
        """Why there are no real annotations here (the skip reason), or None."""
        if not (self.folder / REAL_MARKER).is_file():
            return f"no real EPIC-100 annotations: {self.source} has no {REAL_MARKER}; {self.hint}"
        return None

    def require(self) -> Path:
        """The folder; skips the calling test when it holds no annotations."""
        reason = self.missing()
        if reason is not None:
            pytest.skip(reason)
        return self.folder

    def file(self, name: str) -> Path:
        """``name`` in the flat layout or the official repository's; skips when absent."""
        folder = self.require()
        for place in (folder, *(folder / sub for sub in REAL_SUBFOLDERS)):
            if (place / name).is_file():
                return place / name
        pytest.skip(
            f"{name} is not in {self.source} (nor in {', '.join(REAL_SUBFOLDERS)}/); {self.hint}"
        )


@pytest.fixture(scope="session")
def mini_epic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MiniEpic]:
    """The default mini-EPIC (seed 0, 8 videos at 320x180), written once per session: READ
    ONLY."""
    root = tmp_path_factory.mktemp("mini_epic")
    made = make_mini_epic(root)
    with _read_only(root, "mini_epic"):
        yield made


@pytest.fixture(scope="session")
def real_annotations() -> Path:
    """The folder of real EPIC-100 annotation files (``$EPIC_REAL_ANNOTATIONS``, else
    ../shared/epic100); skips the test, naming the variable, when there is none."""
    return RealAnnotations(os.environ).require()


@pytest.fixture(scope="session")
def real_annotation_file() -> Callable[[str], Path]:
    """``real_annotation_file(name)``: the path of one real annotation file, found in the
    flat layout of ../shared/epic100 or the official repository's (UDA files in
    ``UDA_annotations/``); skips the test, naming the variable, when it is absent."""
    return RealAnnotations(os.environ).file


@pytest.fixture(scope="session")
def real_annotations_at() -> type[RealAnnotations]:
    """The resolver itself, for the tests of where it looks (``RealAnnotations(environ)``)."""
    return RealAnnotations


#: Small and short: the decode cost of a whole test module stays around a second.
SIZE = (192, 108)


class EpicFiles:
    """Writers of EPIC-layout inputs, handed to tests by the ``epic_files`` fixture."""

    @staticmethod
    def video_path(videos_root: Path, video_id: str) -> Path:
        return videos_root / video_id[:3] / "videos" / f"{video_id}.MP4"

    @staticmethod
    def write_test_split(folder: Path, rows: Sequence[tuple[str, float, float]]) -> Path:
        """``EPIC_100_test_timestamps.csv`` (real header), one segment per (video id,
        start s, stop s); frame numbers by the rule of epicdata.frames."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / SPLIT_FILES["test"]
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(TIMESTAMP_COLUMNS)
            for i, (video_id, start, stop) in enumerate(rows):
                rate = frame_rate_for(video_id)
                start_ts, stop_ts = format_timestamp(start), format_timestamp(stop)
                writer.writerow(
                    [
                        f"{video_id}_{i}",
                        video_id[:3],
                        video_id,
                        start_ts,
                        start_ts,
                        stop_ts,
                        start_frame_at(start, rate),
                        stop_frame_at(stop, rate),
                    ]
                )
        return path

    @staticmethod
    def make_videos(
        videos_root: Path, specs: Sequence[tuple[str, str, float]], *, audio: bool = False
    ) -> dict[str, SyntheticVideo]:
        """Stamped videos (video id, native fps, seconds) under ``videos_root``, EPIC layout."""
        out = {}
        for video_id, fps, duration in specs:
            path = EpicFiles.video_path(videos_root, video_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            out[video_id] = make_video(path, fps=fps, duration=duration, size=SIZE, audio=audio)
        return out


@pytest.fixture(scope="session")
def epic_files() -> type[EpicFiles]:
    return EpicFiles


#: small_store's videos: (video id, native fps, seconds), and its test split's segments.
SMALL_VIDEOS = [("P01_01", "60000/1001", 2.0), ("P01_101", "50", 2.0)]
SMALL_SEGMENTS = [("P01_01", 0.2, 1.5), ("P01_101", 0.5, 1.9)]


def _plan_small_store(root: Path, inputs: Path) -> dict[str, Path]:
    """Plan the videos and annotations under ``inputs`` into ``root``/store (one shard, not
    run)."""
    from preprocess.plan import plan_store

    videos, annotations, store = inputs / "videos", inputs / "ann", root / "store"
    plan_store(
        store_root=store,
        annotations_dir=annotations,
        videos_root=videos,
        splits=("test",),
        shards=1,
    )
    return {"videos": videos, "annotations": annotations, "store": store}


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@contextmanager
def _read_only(root: Path, name: str) -> Iterator[None]:
    """Fail the session when a test wrote into ``root``, a tree shared by every test that
    uses the fixture ``name`` (their verdicts would then depend on the order they ran in)."""
    before = _tree_digest(root)
    yield
    after = _tree_digest(root)
    assert after == before, (
        f"{name} is shared by the whole session and must stay read-only, but a test changed "
        f"{sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))}: "
        "give the test that writes its own copy (small_store, or shutil.copytree to tmp_path)"
    )


@pytest.fixture(scope="session")
def read_only() -> Callable[[Path, str], AbstractContextManager[None]]:
    """``with read_only(tree, name): yield ...`` in a session fixture shared by tests that
    only read ``tree``: the session fails if one of them changed it."""
    return _read_only


def _rewrite_as_format_1(shard: Path) -> None:
    """Rewrite the shard file ``shard`` as the release of store format 1 wrote it: the same
    keys and values without the frame index and the publish record, format version 1 in
    its metadata, written in key order and copied compacted (tests/fixtures/store-format-1
    is one such store, kept byte for byte)."""
    import dataclasses

    import lmdb

    from epicdata.layout import PUBLISH_RECORD_KEY, SHARD_META_KEY
    from epicdata.metadata import ShardMeta

    env = lmdb.open(str(shard), subdir=False, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            items = dict(txn.cursor().iternext())
    finally:
        env.close()
    items = {
        key: value
        for key, value in items.items()
        if not key.startswith(b"__meta__/index/") and key != PUBLISH_RECORD_KEY
    }
    meta = ShardMeta.from_bytes(items[SHARD_META_KEY])
    items[SHARD_META_KEY] = dataclasses.replace(meta, format_version=1).to_bytes()
    written = shard.with_name(f".{shard.name}.format-1")
    env = lmdb.open(str(written), subdir=False, map_size=4 * shard.stat().st_size + (1 << 20))
    try:
        with env.begin(write=True) as txn:
            for key, value in sorted(items.items()):
                txn.put(key, value)
        shard.unlink()
        env.copy(str(shard), compact=True)
    finally:
        env.close()
        written.unlink()


@pytest.fixture(scope="session")
def as_format_1() -> Callable[[Path], None]:
    """``as_format_1(shard_file)`` rewrites a shard in place as store format 1 wrote it (no
    frame index: its reads look every frame up in the B-tree)."""
    return _rewrite_as_format_1


@pytest.fixture(scope="session")
def _small_inputs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """small_store's videos and annotations, encoded once per session: READ ONLY."""
    root = tmp_path_factory.mktemp("small_inputs")
    EpicFiles.make_videos(root / "videos", SMALL_VIDEOS)
    EpicFiles.write_test_split(root / "ann", SMALL_SEGMENTS)
    with _read_only(root, "small_store's videos and annotations"):
        yield root


@pytest.fixture(scope="session")
def small_store_ro(
    _small_inputs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Path]]:
    """small_store shared by the session: READ ONLY (a test that writes gets ``small_store``)."""
    paths = _plan_small_store(tmp_path_factory.mktemp("small_store_ro"), _small_inputs)
    with _read_only(paths["store"], "small_store_ro"):
        yield paths


@pytest.fixture(scope="session")
def small_store_extracted_ro(
    _small_inputs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Path]]:
    """small_store with its one shard extracted, shared by the session: READ ONLY."""
    from preprocess.extract import run_shard

    root = tmp_path_factory.mktemp("small_store_extracted_ro")
    paths = _plan_small_store(root, _small_inputs)
    run_shard(store_root=paths["store"], shard_index=0, tmp_dir=root / "scratch")
    with _read_only(paths["store"], "small_store_extracted_ro"):
        yield paths


@pytest.fixture(scope="session")
def two_shards_ro(
    small_store_ro: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """small_store's two videos planned into two shards, both extracted, shared by the
    session: READ ONLY."""
    from preprocess.extract import run_shard
    from preprocess.plan import plan_store

    root = tmp_path_factory.mktemp("two_shards_ro")
    store = root / "store"
    plan_store(
        store_root=store,
        annotations_dir=small_store_ro["annotations"],
        videos_root=small_store_ro["videos"],
        splits=("test",),
        shards=2,
    )
    for index in (0, 1):
        run_shard(store_root=store, shard_index=index, tmp_dir=root / "scratch")
    with _read_only(store, "two_shards_ro"):
        yield store


@pytest.fixture
def small_store(_small_inputs: Path, tmp_path: Path) -> dict[str, Path]:
    """Two 2-second videos with segments over most of them, planned into one shard (not run):
    this test's own copy (videos, annotations and store under ``tmp_path``), free to damage."""
    for name in ("videos", "ann"):
        shutil.copytree(_small_inputs / name, tmp_path / name)
    return {**_plan_small_store(tmp_path, tmp_path), "tmp": tmp_path / "scratch"}


def _mount_tmpfs(mount: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (as in CI containers)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)])
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: a disk that fills up (needs root, as in CI containers)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    _mount_tmpfs(mount, "64k")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.fixture
def read_only_mount(tmp_path: Path) -> Iterator[Path]:
    """A read-only file system (a tmpfs remounted ``ro``): root cannot write it either."""
    mount = tmp_path / "read-only"
    mount.mkdir()
    _mount_tmpfs(mount, "1m")
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.fixture
def immutable_dir(tmp_path: Path) -> Iterator[Path]:
    """An empty folder with the immutable attribute (``chattr +i``): nothing can be created
    in it, not even by root."""
    folder = tmp_path / "immutable"
    folder.mkdir()
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported on this file system")
    yield folder
    subprocess.run(["chattr", "-i", str(folder)], check=True)
