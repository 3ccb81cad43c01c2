"""EpicActionDataset on a real store of the mini-EPIC: the right frames, labels, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from epicdata.annotations import AnnotationDir
from epicdata.dataset import EpicActionDataset
from epicdata.errors import StoreError
from epicdata.frames import frame_rate_for, frame_time_seconds
from epicdata.sampling import linspace_frames
from epicdata.store import FrameStore
from epicdata.synthetic import read_stamp
from preprocess.extract import run_shard
from preprocess.plan import plan_store

pytestmark = pytest.mark.slow  # every test reads the mini-EPIC's store (about 30 s to build)


@pytest.fixture(scope="module")
def val_store(mini_epic, tmp_path_factory) -> FrameStore:
    """The validation and test videos only: quick to extract."""
    root = tmp_path_factory.mktemp("val_store")
    manifest = plan_store(
        store_root=root,
        annotations_dir=mini_epic.annotations_dir,
        videos_root=mini_epic.videos_dir,
        splits=("validation", "test"),
        shards=2,
    )
    for shard in manifest.shards:
        run_shard(store_root=root, shard_index=shard.index, workers=2)
    return FrameStore(root)


def _table(mini_epic, split):
    return AnnotationDir(mini_epic.annotations_dir).table(split)


def test_clips_hold_the_linspace_frames_of_their_segment(mini_epic, val_store):
    table = _table(mini_epic, "validation")
    dataset = EpicActionDataset(val_store, table, num_frames=4)
    native_fps = {v.video_id: v.native_fps for v in mini_epic.videos}
    for index in range(0, len(dataset), max(1, len(dataset) // 12)):
        sample = dataset[index]
        frames = sample["frames"]
        assert frames.shape[:2] == (4, 3) and frames.dtype == torch.uint8
        assert sample["narration_id"] == table.narration_ids[index] and sample["index"] == index
        assert (sample["verb"], sample["noun"]) == (
            table.verb_classes[index],
            table.noun_classes[index],
        )
        video = table.video_ids[index]
        rate = frame_rate_for(video)
        wanted = linspace_frames(int(table.start_frames[index]), int(table.stop_frames[index]), 4)
        for frame, number in zip(frames, wanted, strict=True):
            source = read_stamp(frame.permute(1, 2, 0).numpy())
            # Frame n shows the source frame nearest (n - 1) / R, within one source frame.
            expected = frame_time_seconds(int(number), rate) * native_fps[video]
            assert abs(source - expected) <= 1.0, (video, number, source, expected)


def test_test_split_samples_have_no_labels(mini_epic, val_store):
    sample = EpicActionDataset(val_store, _table(mini_epic, "test"), num_frames=2)[0]
    assert set(sample) == {"frames", "narration_id", "index"}


def test_augmentation_depends_on_seed_epoch_and_index_only(mini_epic, val_store):
    def crop(frames, rng):
        top = int(rng.integers(0, 10))
        return frames[..., top : top + 32, :32]

    dataset = EpicActionDataset(
        val_store, _table(mini_epic, "validation"), num_frames=2, training=True, transform=crop
    )
    first = dataset[3]["frames"]
    assert torch.equal(first, dataset[3]["frames"])  # same (seed, epoch, index): same clip
    draws = set()
    for epoch in range(6):
        dataset.set_epoch(epoch)
        draws.add(dataset[3]["frames"].float().mean().item())
    assert len(draws) > 1


def test_a_frame_that_does_not_decode_names_segment_video_and_shard(
    mini_epic, val_store, monkeypatch
):
    table = _table(mini_epic, "validation")
    dataset = EpicActionDataset(val_store, table, num_frames=2)
    monkeypatch.setattr(
        val_store, "read_frames", lambda video, frames: [b"not a jpeg"] * len(frames)
    )
    with pytest.raises(StoreError) as excinfo:
        dataset[0]
    message = str(excinfo.value)
    assert table.narration_ids[0] in message and table.video_ids[0] in message
    assert "shard-0000" in message and "epic-check" in message


def test_a_split_whose_videos_are_not_in_the_store_is_refused(mini_epic, val_store):
    with pytest.raises(StoreError, match="the train split needs .* video"):
        EpicActionDataset(val_store, _table(mini_epic, "train"), num_frames=2)


def test_pil_and_torchvision_decoders_agree(mini_epic, val_store):
    table = _table(mini_epic, "validation")
    a = EpicActionDataset(val_store, table, num_frames=2, decoder="pil")[5]["frames"]
    b = EpicActionDataset(val_store, table, num_frames=2, decoder="torchvision")[5]["frames"]
    # Both are libjpeg(-turbo); IDCT or upsampling choices may differ by a grey level.
    assert np.abs(a.int().numpy() - b.int().numpy()).max() <= 2
