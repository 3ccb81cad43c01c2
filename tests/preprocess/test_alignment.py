"""Frame alignment, the core property of the store: stored frame n of a video is the source
picture nearest to time (n - 1) / R, for every native rate EPIC has, in both decode paths
(every frame, and only the planned frames through ffmpeg's select filter)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from epicdata.constants import CLAMP_TOLERANCE_FRAMES
from epicdata.ranges import frames_in_ranges
from epicdata.store import FrameStore
from epicdata.synthetic import read_stamp
from preprocess.extract import run_shard
from preprocess.plan import plan_store

pytestmark = pytest.mark.slow  # every test reads a store extracted per keep mode (3 s each)

# (video id, native fps, seconds): R is 60 for PXX_YY and 50 for PXX_1YY whatever the native rate.
VIDEOS = [
    ("P01_01", "60000/1001", 3.0),
    ("P01_101", "50", 3.0),
    ("P02_01", "30000/1001", 3.0),
    ("P02_102", "48000/1001", 3.0),
    ("P03_01", "90", 2.0),
]
SEGMENTS = [
    ("P01_01", 0.3, 1.1),
    ("P01_01", 2.0, 2.4),
    ("P01_101", 0.0, 0.5),
    ("P02_01", 1.0, 2.9),
    ("P02_102", 0.7, 1.3),
    ("P03_01", 0.1, 0.9),
]


@pytest.fixture(scope="module", params=["all", "segments"])
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, epic_files
) -> Path:
    root = tmp_path_factory.mktemp(f"align-{request.param}")
    videos = root / "videos"
    epic_files.make_videos(videos, VIDEOS)
    epic_files.write_test_split(root / "ann", SEGMENTS)
    store = root / "store"
    plan_store(
        store_root=store,
        annotations_dir=root / "ann",
        videos_root=videos,
        splits=("test",),
        shards=1,
        keep=request.param,
    )
    run_shard(store_root=store, shard_index=0, workers=2, tmp_dir=root / "tmp")
    return store


def test_every_stored_frame_is_the_source_picture_at_its_time(store: Path) -> None:
    frames_store = FrameStore(store)
    for video_id, _, _ in VIDEOS:
        meta = frames_store.video_meta(video_id)
        frames = frames_in_ranges(meta.stored_ranges)
        assert len(frames) == meta.stored_frames > 0
        for frame, jpeg in zip(frames, frames_store.read_frames(video_id, frames), strict=True):
            stamp = read_stamp(np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")))
            nearest = round((frame - 1) / meta.rate * meta.native_fps)
            assert abs(stamp - nearest) <= 1, (video_id, int(frame), stamp, nearest)


def test_stored_count_matches_duration_times_r(store: Path) -> None:
    frames_store = FrameStore(store)
    for video_id, _, seconds in VIDEOS:
        meta = frames_store.video_meta(video_id)
        assert abs(meta.decoded_frames - seconds * meta.rate) <= CLAMP_TOLERANCE_FRAMES
        # The stream's end is always stored, so readers can clamp to it.
        assert meta.last_stored_frame == meta.decoded_frames
        assert (meta.width, meta.height) == (456, 256)


def test_2997_fps_video_under_an_epic55_id_yields_twice_its_native_frames(store: Path) -> None:
    meta = FrameStore(store).video_meta("P02_01")
    assert meta.rate == 60
    assert meta.native_frames == 90
    assert abs(meta.decoded_frames - 2 * meta.native_frames) <= 2


def test_store_holds_every_planned_frame_and_little_else(store: Path) -> None:
    frames_store = FrameStore(store)
    meta = frames_store.video_meta("P02_01")
    stored = set(frames_in_ranges(meta.stored_ranges).tolist())
    if frames_store.manifest.params.keep == "all":
        assert stored == set(range(1, meta.decoded_frames + 1))
    else:
        assert set(range(60, 175)) <= stored  # the segment 1.0 s .. 2.9 s at R = 60
        assert 1 not in stored and 30 not in stored
