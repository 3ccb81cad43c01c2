"""A store written by an earlier release still opens, checks and trains: stores cost many
core-hours to extract, so format changes must read the old layout (fixtures written by the
release of each store format and kept byte for byte, tests/fixtures/store-format-N), and
``epic-check --upgrade`` brings a format 1 store to today's reads in place."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from epicdata.annotations import AnnotationDir
from epicdata.dataset import EpicActionDataset
from epicdata.errors import ExitCode
from epicdata.sampling import linspace_frames
from epicdata.store import FrameStore
from preprocess.check import check_store
from train.cli import train_main
from train.config import TrainConfig
from train.fit import fit

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FIXTURE = FIXTURES / "store-format-1"
#: Every store format a release has written.
FORMATS = (1, 2)


def _copy(fixture: Path, tmp_path: Path) -> Path:
    """A copy (checks and readers must not need to write, but a test must not risk it)."""
    store = tmp_path / "store"
    shutil.copytree(fixture, store, ignore=shutil.ignore_patterns("annotations", "README.md"))
    return store


@pytest.fixture
def old_store(tmp_path: Path) -> Path:
    return _copy(FIXTURE, tmp_path)


def _sampled_frames(store: FrameStore, annotations: AnnotationDir) -> dict[tuple[str, int], bytes]:
    """Every frame the fixture's annotations sample (2 per segment), by (video, frame)."""
    out = {}
    for split in ("train", "validation", "test"):
        table = annotations.table(split)
        for i in range(len(table)):
            frames = linspace_frames(int(table.start_frames[i]), int(table.stop_frames[i]), 2)
            jpegs = store.read_frames(table.video_ids[i], frames)
            out.update(
                ((table.video_ids[i], int(f)), j) for f, j in zip(frames, jpegs, strict=True)
            )
    return out


@pytest.mark.parametrize("version", FORMATS)
def test_every_format_checks_clean(tmp_path: Path, version: int) -> None:
    fixture = FIXTURES / f"store-format-{version}"
    report = check_store(
        _copy(fixture, tmp_path), annotations_dir=fixture / "annotations", deep=True
    )
    assert report.ok, report.problems
    assert sum(s.frames for s in report.shards) > 300
    # Format 1 has no frame index: said, not a problem.
    assert [s.indexed for s in report.shards] == [version >= 2]


@pytest.mark.parametrize("version", FORMATS)
def test_every_format_reads_every_sampled_frame(tmp_path: Path, version: int) -> None:
    fixture = FIXTURES / f"store-format-{version}"
    store = FrameStore(_copy(fixture, tmp_path))
    frames = _sampled_frames(store, AnnotationDir(fixture / "annotations"))
    assert len(frames) > 100 and all(j[:2] == b"\xff\xd8" for j in frames.values())


def test_the_two_formats_hold_the_same_frames(tmp_path: Path) -> None:
    # The same recipe, the same seeded inputs: only the index and the record differ.
    annotations = AnnotationDir(FIXTURE / "annotations")
    reads = [
        _sampled_frames(
            FrameStore(_copy(FIXTURES / f"store-format-{v}", tmp_path / str(v))), annotations
        )
        for v in FORMATS
    ]
    assert reads[0] == reads[1]


def test_upgrade_adds_the_frame_index_in_place_and_moves_no_frame(
    old_store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from epicdata.layout import frame_key, shard_path
    from epicdata.lmdb_pages import ShardPages
    from preprocess.cli import check

    annotations = AnnotationDir(FIXTURE / "annotations")
    caplog.set_level("WARNING", logger="epicdata.store")
    before = _sampled_frames(FrameStore(old_store), annotations)
    assert caplog.text.count("has no frame index (store format 1)") == 1  # once per store
    pages = ShardPages.open(shard_path(old_store, 0))
    where = {key: pages.locate(frame_key(*key)) for key in before}
    pages.close()
    result = CliRunner().invoke(check, ["--store", str(old_store)])
    assert result.exit_code == 0, result.output
    assert "have no frame index (store format 1)" in result.output and "--upgrade" in result.output
    result = CliRunner().invoke(check, ["--store", str(old_store), "--upgrade"])
    assert result.exit_code == 0, result.output
    assert "frame index written in place: shards 0" in result.output
    report = check_store(old_store, annotations_dir=FIXTURE / "annotations", deep=True)
    assert report.ok and [s.indexed for s in report.shards] == [True], report.problems
    caplog.clear()
    store = FrameStore(old_store)
    assert store._frame_index(next(iter(before))[0]) is not None  # reads take the index
    assert _sampled_frames(store, annotations) == before
    assert "no frame index" not in caplog.text
    # No frame moved: a reader that opened the file before the upgrade still reads right.
    data = shard_path(old_store, 0).read_bytes()
    assert all(data[at : at + size] == before[key] for key, (at, size) in where.items())


@pytest.mark.slow
def test_format_1_store_trains(old_store: Path, tmp_path: Path) -> None:
    annotations = AnnotationDir(FIXTURE / "annotations")
    store = FrameStore(old_store)
    dataset = EpicActionDataset(store, annotations.table("train"), num_frames=2)
    assert dataset[0]["frames"].shape[:2] == (2, 3)
    store.close()
    cfg = TrainConfig(
        store=str(old_store), annotations=str(FIXTURE / "annotations"),
        output_dir=str(tmp_path / "run"), epochs=1, batch_size=4, num_frames=2, crop_size=16,
        weights="none", workers=0, log_every=0, limit_batches=2,
    )  # fmt: skip
    assert fit(cfg) == 0
    assert (tmp_path / "run" / "last.pt").is_file()


def test_a_sampled_store_refuses_another_clip_length_before_the_first_step(
    old_store: Path, tmp_path: Path
) -> None:
    # Regression: a missing frame surfaced as a DataLoader worker traceback mid-epoch, and
    # the refused start left a run folder behind.
    run = tmp_path / "run"
    args = ["--store", old_store, "--annotations", FIXTURE / "annotations", "--output-dir", run]
    args += ["--epochs", "1", "--batch-size", "4", "--crop-size", "16", "--weights", "none"]
    args += ["--workers", "0"]
    result = CliRunner().invoke(train_main, [str(a) for a in [*args, "--num-frames", "3"]])
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert "segments of the train split ask for frames the store does not hold" in line
    assert "3 frames, linspace sampling; the store keeps sampled for clip lengths 2" in line
    assert not run.exists()
    result = CliRunner().invoke(train_main, [str(a) for a in [*args, "--sampling", "tsn"]])
    assert result.exit_code == ExitCode.BAD_INPUT and "random offsets" in result.output
    assert not run.exists()


def test_a_store_extracted_from_videos_keeps_the_format_older_releases_read() -> None:
    # source_kind (official frames, issue 13) is written only where it is not the default:
    # the metadata of a video-extracted shard and its manifest carry no field that the
    # previous release's strict field check would refuse.
    import json

    from epicdata.manifest import SOURCE_FRAMES, Manifest
    from epicdata.metadata import VideoMeta

    manifest = Manifest.load(FIXTURE)
    assert "source_kind" not in manifest.to_json()
    assert Manifest.from_dict(json.loads(manifest.to_json())) == manifest
    reader = FrameStore(FIXTURE)
    meta = reader.video_meta(reader.video_ids[0])
    reader.close()
    assert "source_kind" not in json.loads(meta.to_bytes())
    assert VideoMeta.from_bytes(meta.to_bytes()) == meta
    copied = VideoMeta(**{**meta.__dict__, "source_kind": SOURCE_FRAMES})
    assert VideoMeta.from_bytes(copied.to_bytes()).source_kind == SOURCE_FRAMES
