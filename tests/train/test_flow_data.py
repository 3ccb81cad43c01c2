"""Flow clips (issue 23 item 2): the flow frames a segment reads, the channel order, one
crop for every channel, the flip that turns u around, the normalisation.

The store is a stand-in that serves grayscale JPEGs encoded here with Pillow, two per flow
frame (u, then v), as a flow FrameStore does; every expectation is computed here from the
published rules (C1 ``convert_rgb_frame_to_flow_frame_idx``, epic-kitchens-55-lib
``flow_frame_count``, C1 ``GroupRandomHorizontalFlip(is_flow=True)``), not by the code
under test.
"""

from __future__ import annotations

import io
import logging
import math
import tarfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from epicdata.annotations import AnnotationDir, SegmentTable
from epicdata.dataset import EpicActionDataset, check_readable
from epicdata.errors import EpicInputError, StoreIncompleteError
from epicdata.frames import FlowParams
from epicdata.store import FrameStore
from epicdata.synthetic import MiniEpic, flow_tar_path, make_mini_epic
from preprocess.extract import run_shard
from preprocess.plan import plan_store
from train.data import build_eval_data, build_train_data
from train.distributed import DistInfo
from train.transforms import CropFlip, DeviceAugment, EvalClipTransform, TrainClipTransform

EPIC55 = FlowParams(stride=2, dilation=3, bound=25.0)  # PXX_YY
EXTENSION = FlowParams(stride=1, dilation=1, bound=8.0)  # PXX_1YY
FLOW_MEAN, FLOW_STD = (0.5,), (0.226,)  # C1 configs/tsn_flow.yaml

#: (video id, flow frame, "u" or "v") -> (H, W) uint8 picture.
Picture = Callable[[str, int, str], np.ndarray]


def c1_flow_index(rgb_frame: int, stride: int) -> int:
    """C1 src/convert_rgb_to_flow_frame_idxs.py: ``(frame_idxs - 1) // stride + 1``."""
    return (rgb_frame - 1) // stride + 1


def lib_flow_frame_count(rgb_frames: int, stride: int, dilation: int) -> int:
    """epic-kitchens-55-lib epic_kitchens/time.py: ``ceil((n - dilation) / stride)``."""
    return math.ceil((rgb_frames - dilation) / stride)


def grey_of(displacement: float, bound: float) -> int:
    """The official encoding of one flow component: clip to [-b, b], map to 0..255."""
    return round((min(max(displacement, -bound), bound) + bound) * 255 / (2 * bound))


def jpeg(picture: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(picture, mode="L").save(out, format="JPEG", quality=95)
    return out.getvalue()


class FakeFlowStore:
    """What EpicActionDataset asks of a flow FrameStore: metadata (stride, flow frame count,
    size), and two grayscale JPEGs per requested flow frame, u then v. Records each read."""

    modality = "flow"
    staged_from = None

    def __init__(self, videos: dict[str, tuple[FlowParams, int]], picture: Picture) -> None:
        self.root = Path("/fake/flow-store")
        height, width = picture(next(iter(videos)), 1, "u").shape
        self.metas = {
            video: SimpleNamespace(
                flow=params,
                decoded_frames=lib_flow_frame_count(rgb_frames, params.stride, params.dilation),
                height=height,
                width=width,
            )
            for video, (params, rgb_frames) in videos.items()
        }
        self.video_ids = list(videos)
        self.manifest = SimpleNamespace(video_to_shard=lambda: dict.fromkeys(videos, 0))
        self.picture = picture
        self.reads: list[tuple[str, list[int]]] = []
        self._blobs: dict[tuple[str, int, str], bytes] = {}

    def video_meta(self, video_id: str) -> SimpleNamespace:
        return self.metas[video_id]

    def read_frames(self, video_id: str, frames) -> list[bytes]:
        frames = [int(f) for f in frames]
        count = self.metas[video_id].decoded_frames
        assert all(1 <= f <= count for f in frames), (video_id, frames, count)
        self.reads.append((video_id, frames))
        out = []
        for frame in frames:
            for axis in "uv":
                key = (video_id, frame, axis)
                if key not in self._blobs:
                    self._blobs[key] = jpeg(self.picture(video_id, frame, axis))
                out.append(self._blobs[key])
        return out


def table_of(segments: list[tuple[str, int, int]]) -> SegmentTable:
    n = len(segments)
    return SegmentTable(
        split="train",
        narration_ids=[f"{video}_{i}" for i, (video, _, _) in enumerate(segments)],
        participant_ids=[video.split("_")[0] for video, _, _ in segments],
        video_ids=[video for video, _, _ in segments],
        start_frames=np.array([start for _, start, _ in segments], dtype=np.int64),
        stop_frames=np.array([stop for _, _, stop in segments], dtype=np.int64),
        verb_classes=np.zeros(n, dtype=np.int64),
        noun_classes=np.zeros(n, dtype=np.int64),
        labelled=True,
    )


class ForcedFlip(TrainClipTransform):
    """The training transform with its flip decided by the test; records the crop drawn."""

    def __init__(self, *args, flip: bool, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.flip = flip
        self.crops: list[CropFlip] = []

    def draw(self, height: int, width: int, rng: np.random.Generator) -> CropFlip:
        crop = super().draw(height, width, rng)._replace(flip=self.flip)
        self.crops.append(crop)
        return crop


# ----------------------------------------------------------------------------- motion

H, W, SIZE, STACK = 48, 64, 32, 5
SQUARE = 16  # side in pixels, on the 8-px JPEG block grid: flat blocks decode exactly
SPEED = 4  # pixels per RGB frame, rightward
NO_MOTION = grey_of(0, EPIC55.bound)  # 128: 127.5 rounded


def square_left(flow_frame: int) -> int:
    """The square's left edge in flow frame k, whose first RGB frame is (k - 1) * 2 + 1."""
    return SPEED * EPIC55.stride * (flow_frame - 1)


def moving_square(video_id: str, flow_frame: int, axis: str) -> np.ndarray:
    """TV-L1 flow of a bright square moving right at SPEED px per RGB frame, seen between
    frames ``dilation`` apart: u = SPEED * dilation px on the square, 0 elsewhere; v = 0."""
    picture = np.full((H, W), NO_MOTION, dtype=np.uint8)
    if axis == "u":
        left = square_left(flow_frame)
        picture[16 : 16 + SQUARE, left : left + SQUARE] = grey_of(
            SPEED * EPIC55.dilation, EPIC55.bound
        )
    return picture


def regions(crop: CropFlip, left: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, S) masks of the output pixels whose source (the crop's bilinear sampling point)
    lies well inside the square at ``left``, and well outside it: 2.5 px from its edges,
    beyond the resize filter's reach (crops here shrink by at most 1.5)."""
    rows = crop.top + (torch.arange(SIZE) + 0.5) * crop.height / SIZE - 0.5
    cols = crop.left + (torch.arange(SIZE) + 0.5) * crop.width / SIZE - 0.5
    y, x = rows.view(-1, 1), cols.view(1, -1)
    top, last_row, last_col = 16, 16 + SQUARE - 1, left + SQUARE - 1
    inside = (y >= top + 2.5) & (y <= last_row - 2.5) & (x >= left + 2.5) & (x <= last_col - 2.5)
    outside = (y < top - 2.5) | (y > last_row + 2.5) | (x < left - 2.5) | (x > last_col + 2.5)
    return inside, outside


def motion_clip(flip: bool) -> tuple[torch.Tensor, torch.Tensor, CropFlip, np.ndarray]:
    """(uint8 clip (T, 10, S, S), normalised clip, crop, flow frames) of one training clip."""
    store = FakeFlowStore({"P01_01": (EPIC55, 14)}, moving_square)  # 6 flow frames
    transform = ForcedFlip(SIZE, crop="multiscale", modality="flow", flip=flip)
    dataset = EpicActionDataset(
        store,
        table_of([("P01_01", 1, 14)]),
        num_frames=2,
        training=True,
        transform=transform,
        modality="flow",
        flow_stack=STACK,
        seed=7,
    )
    clip = dataset[0]["frames"]
    augment = DeviceAugment(FLOW_MEAN, FLOW_STD, photometric=True, modality="flow")
    x = augment(clip[None], train=True, generator=torch.Generator().manual_seed(0))[0]
    return clip, x, transform.crops[0], np.array(store.reads[0][1])


def test_a_square_moving_right_gives_positive_u_and_a_flip_negative_u():
    clip, x, crop, frames = motion_clip(flip=False)
    flipped_clip, flipped, flipped_crop, flipped_frames = motion_clip(flip=True)
    assert clip.shape == (2, 2 * STACK, SIZE, SIZE) and x.shape == clip.shape
    assert x.dtype == torch.float32
    assert flipped_crop == crop._replace(flip=True) and np.array_equal(flipped_frames, frames)
    seen = 0
    for t in range(2):
        for i in range(STACK):
            inside, outside = regions(crop, square_left(int(frames[t * STACK + i])))
            u, v = x[t, 2 * i], x[t, 2 * i + 1]
            assert (u[inside] > 0.9).all() and (u[outside].abs() < 0.02).all()
            assert (v.abs() < 0.02).all()
            # Flipped: the square is mirrored and moves left; v is the mirrored v.
            u_f, v_f = flipped[t, 2 * i], flipped[t, 2 * i + 1]
            assert (u_f[inside.flip(-1)] < -0.9).all()
            assert (u_f[outside.flip(-1)].abs() < 0.02).all()
            assert torch.equal(v_f, v.flip(-1))
            # C1: ImageOps.invert of the flipped u, on the uint8 values.
            assert torch.equal(flipped_clip[t, 2 * i], 255 - clip[t, 2 * i].flip(-1))
            seen += int(inside.sum())
    assert seen > 100  # the square is in view: the checks above had pixels to check


# ----------------------------------------------------------------------------- channels


def u_level(frame: int) -> int:
    return 10 + 2 * frame  # 12..88 for 39 flow frames; flipped (255 - u): 167..243


def v_level(frame: int) -> int:
    return 130 + 2 * frame


def levels_with_marker(video_id: str, flow_frame: int, axis: str) -> np.ndarray:
    """A flat grey level of its own per flow frame and component, and a black 8x8 marker
    at one place in every picture."""
    level = u_level(flow_frame) if axis == "u" else v_level(flow_frame)
    picture = np.full((H, W), level, dtype=np.uint8)
    picture[24:32, 40:48] = 0
    return picture


@pytest.mark.parametrize("crop", ["seed", "multiscale"])
def test_channels_are_u_v_pairs_in_order_and_share_one_crop(crop):
    store = FakeFlowStore({"P01_101": (EXTENSION, 40)}, levels_with_marker)
    dataset = EpicActionDataset(
        store,
        table_of([("P01_101", 3, 37), ("P01_101", 10, 20)]),
        num_frames=3,
        sampling="tsn",
        training=True,
        transform=TrainClipTransform(SIZE, crop=crop, modality="flow"),
        modality="flow",
        flow_stack=STACK,
    )
    flips = set()
    for epoch in range(4):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            clip = dataset[index]["frames"]  # (3, 10, S, S) uint8
            frames = store.reads[-1][1]
            assert clip.shape == (3, 2 * STACK, SIZE, SIZE) and len(frames) == 3 * STACK
            flip = None
            # The picture every channel must show, up to its grey level: 0 on the marker,
            # 1 elsewhere, blended at the marker's edges by the resize.
            shape = clip[0, 1].float() / v_level(frames[0])  # v: never inverted
            assert 0 < int((shape < 0.5).sum()) < SIZE * SIZE // 4
            for t in range(3):
                for i in range(STACK):
                    frame = frames[t * STACK + i]
                    u, v = clip[t, 2 * i].float(), clip[t, 2 * i + 1].float()
                    # A flip turns u into 255 - u and leaves v: the levels tell it.
                    flipped = bool(abs(u.median() - (255 - u_level(frame))) <= 1)
                    flip = flipped if flip is None else flip
                    assert flipped == flip  # one flip for the whole clip
                    expect_u = 255 - u_level(frame) if flip else u_level(frame)
                    assert abs(u.median() - expect_u) <= 1
                    assert abs(v.median() - v_level(frame)) <= 1
                    # The marker in the same place in every channel: one crop, one flip (a
                    # crop 1 px off moves its edges by far more than 0.1 of the level).
                    u_shape = (255 - u if flip else u) / u_level(frame)
                    assert (u_shape - shape).abs().max() < 0.1
                    assert (v / v_level(frame) - shape).abs().max() < 0.1
            flips.add(flip)
    assert flips == {True, False}


# ----------------------------------------------------------------------------- frames read


def expected_flow_frames(
    start: int, stop: int, stride: int, count: int, num: int, sampler: str
) -> list[int]:
    """The frames a deterministic flow clip must read from a video of ``count`` flow
    frames, from the rules written out here: C1's index rule for both ends, the stop cut at
    the video's last flow frame; snippet starts from ``first`` to the last start whose
    ``STACK`` frames fit, ``linspace`` (both ends, floor) or TSN's part centres; each
    snippet ``STACK`` consecutive frames, clamped to the video's last flow frame."""
    first = c1_flow_index(start, stride)
    last = min(c1_flow_index(stop, stride), count)
    first = min(first, last)
    last_start = max(first, last - STACK + 1)
    span = last_start - first  # starts available: span + 1
    if sampler == "linspace":
        starts = [first + (span * i // (num - 1) if num > 1 else 0) for i in range(num)]
    else:  # TSN evaluation: the centre of each of num equal parts of the span + 1 starts
        starts = [first + ((2 * i + 1) * (span + 1)) // (2 * num) for i in range(num)]
    return [min(s + j, count) for s in starts for j in range(STACK)]


def tiny_levels(video_id: str, flow_frame: int, axis: str) -> np.ndarray:
    return np.full((8, 8), (flow_frame % 100) + (0 if axis == "u" else 120), dtype=np.uint8)


VIDEOS = {"P01_01": (EPIC55, 101), "P01_102": (EXTENSION, 60)}  # 49 and 59 flow frames


def segments_of(video: str, rgb_frames: int) -> list[tuple[str, int, int]]:
    """Short, long, at the start, at the end (past the last flow frame), one-frame."""
    out = []
    out = [(video, rgb_frames, rgb_frames)]  # its RGB frame has no flow frame of its own
    for start in range(1, rgb_frames + 1, 6):
        for length in (0, 1, 2, 4, 9, 10, 11, 23, 200):
            out.append((video, start, min(start + length, rgb_frames)))
    return out


@pytest.mark.parametrize("sampler", ["linspace", "tsn"])
@pytest.mark.parametrize("num", [1, 3, 8])
def test_the_flow_frames_read_follow_the_index_rules(sampler, num):
    store = FakeFlowStore(VIDEOS, tiny_levels)
    segments = [s for video, (_, n) in VIDEOS.items() for s in segments_of(video, n)]
    dataset = EpicActionDataset(
        store,
        table_of(segments),
        num_frames=num,
        sampling=sampler,
        modality="flow",
        flow_stack=STACK,
    )
    for index, (video, start, stop) in enumerate(segments):
        params, rgb_frames = VIDEOS[video]
        clip = dataset[index]["frames"]
        read_video, frames = store.reads[-1]
        count = lib_flow_frame_count(rgb_frames, params.stride, params.dilation)
        wanted = expected_flow_frames(start, stop, params.stride, count, num, sampler)
        assert (read_video, frames) == (video, wanted), (video, start, stop)
        assert dataset.frame_numbers(index).tolist() == wanted
        # The pixels are those of the frames read, u before v, snippet after snippet.
        levels = clip.view(num * STACK, 2, -1)[:, :, 0].tolist()
        assert levels == [[f % 100, f % 100 + 120] for f in wanted]
        # Inside the segment's flow range; past its stop only where the range is shorter
        # than a stack (then up to the video's last flow frame).
        first = min(c1_flow_index(start, params.stride), count)
        last = min(c1_flow_index(stop, params.stride), count)
        assert first <= min(frames) and max(frames) <= count
        assert max(frames) <= last or last - first + 1 < STACK


def test_a_random_sampler_reads_only_inside_the_readable_range():
    # check_readable asks the store for readable_range when TSN training may read anything.
    store = FakeFlowStore(VIDEOS, tiny_levels)
    segments = [s for video, (_, n) in VIDEOS.items() for s in segments_of(video, n)]
    dataset = EpicActionDataset(
        store,
        table_of(segments),
        num_frames=3,
        sampling="tsn",
        training=True,
        modality="flow",
        flow_stack=STACK,
    )
    for index, (video, start, stop) in enumerate(segments):
        params, rgb_frames = VIDEOS[video]
        low, high = dataset.readable_range(index)
        count = lib_flow_frame_count(rgb_frames, params.stride, params.dilation)
        first = min(c1_flow_index(start, params.stride), count)
        last = min(c1_flow_index(stop, params.stride), count)
        assert low == first and high == min(max(last, first + STACK - 1), count)
        for seed in range(20):
            frames = dataset.frame_numbers(index, np.random.default_rng(seed))
            assert low <= frames.min() and frames.max() <= high
        # The extreme draws (TSN's uniform offsets near 0 and near 1) reach both ends.
        lowest = SimpleNamespace(random=lambda n: np.zeros(n))
        highest = SimpleNamespace(random=lambda n: np.full(n, 1 - 1e-9))
        assert dataset.frame_numbers(index, lowest).min() == low
        assert dataset.frame_numbers(index, highest).max() == high


# ----------------------------------------------------------------------------- normalise


def test_flow_is_normalised_as_c1_on_every_channel_without_photometric(caplog):
    clips = torch.randint(0, 256, (3, 2, 10, 12, 12), dtype=torch.uint8)
    with caplog.at_level(logging.INFO, logger="train.transforms"):
        augment = DeviceAugment(FLOW_MEAN, FLOW_STD, photometric=True, modality="flow")
    assert "--photometric is ignored" in caplog.text
    expected = (clips.double() / 255 - 0.5) / 0.226
    for train in (True, False):
        out = augment(clips, train=train, generator=torch.Generator().manual_seed(1))
        assert out.shape == clips.shape and out.dtype == torch.float32
        torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-5)


def test_multiscale_crops_of_flow_use_c1s_flow_scales():
    # C1 configs/tsn_flow.yaml: [1, 0.875, 0.75] of the short side; RGB adds 0.66.
    sides = {"flow": set(), "rgb": set()}
    for modality, seen in sides.items():
        transform = TrainClipTransform(224, crop="multiscale", modality=modality)
        for seed in range(300):
            crop = transform.draw(256, 456, np.random.default_rng(seed))
            seen.update((crop.height, crop.width))
    assert sides["flow"] == {256, 224, 192}  # int(256 * s); 224 is the crop size itself
    assert sides["rgb"] == {256, 224, 192, 168}


def test_train_and_eval_loaders_give_flow_clips_of_2_stack_channels():
    store = FakeFlowStore({"P01_01": (EPIC55, 101)}, tiny_levels)
    table = table_of([("P01_01", s, s + 30) for s in range(1, 60, 5)])
    common = dict(num_frames=2, sampling="linspace", crop_size=16, decoder="pil", batch_size=4)
    common.update(workers=0, info=DistInfo(), pin_memory=False, modality="flow", flow_stack=3)
    train = build_train_data(store, table, seed=0, limit_batches=None, **common)
    dataset, loader = build_eval_data(store, table, **common)
    assert isinstance(dataset.transform, EvalClipTransform)
    augment = DeviceAugment(FLOW_MEAN, FLOW_STD, modality="flow")
    for batches, train_mode in ((train.loader, True), (loader, False)):
        batch = next(iter(batches))
        assert batch["frames"].shape == (4, 2, 6, 16, 16) and batch["frames"].dtype == torch.uint8
        x = augment(batch["frames"], train=train_mode)
        assert x.shape == (4, 2, 6, 16, 16) and x.dtype == torch.float32  # (B, T, 2*stack, S, S)
    assert train.dataset.modality == dataset.modality == "flow"
    assert train.dataset.transform.modality == "flow"


def test_both_cpu_decoders_give_the_same_flow_clip():
    store = FakeFlowStore({"P01_01": (EPIC55, 40)}, moving_square)
    table = table_of([("P01_01", 1, 40)])
    clips = [
        EpicActionDataset(store, table, num_frames=2, decoder=d, modality="flow")[0]["frames"]
        for d in ("pil", "torchvision")
    ]
    assert clips[0].shape == (2, 10, H, W) and torch.equal(clips[0], clips[1])


def test_nvjpeg_and_a_store_of_the_other_modality_are_refused():
    store = FakeFlowStore({"P01_01": (EPIC55, 40)}, tiny_levels)
    table = table_of([("P01_01", 1, 40)])
    with pytest.raises(EpicInputError, match="--decoder torchvision"):
        EpicActionDataset(store, table, num_frames=2, decoder="nvjpeg", modality="flow")
    with pytest.raises(EpicInputError, match="holds flow frames.*reads rgb.*--modality flow"):
        EpicActionDataset(store, table, num_frames=2)


@pytest.mark.parametrize("decoder", ["torchvision", "pil"])
def test_a_flow_image_that_does_not_decode_is_named_with_its_frame_and_component(decoder):
    store = FakeFlowStore({"P01_01": (EPIC55, 40)}, tiny_levels)
    table = table_of([("P01_01", 1, 40)])
    dataset = EpicActionDataset(
        store, table, num_frames=2, modality="flow", flow_stack=2, decoder=decoder
    )
    frame = int(dataset.frame_numbers(0)[1])
    good = jpeg(tiny_levels("P01_01", frame, "v"))
    store._blobs[("P01_01", frame, "v")] = good[: len(good) // 3]  # cut short: v only
    with pytest.raises(StoreIncompleteError) as caught:
        dataset[0]
    message = str(caught.value)
    assert f"P01_01 flow frame {frame} (v) in shard-00000.lmdb does not decode" in message


# ----------------------------------------------------------------------------- a real store


@pytest.fixture(scope="module")
def flow_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[MiniEpic, FrameStore]:
    """A 3-video mini-EPIC (both flow groups) with official-style flow tars, extracted into
    a flow store as `epic-extract plan --flow` and `run` do (about 15 s)."""
    root = tmp_path_factory.mktemp("flow_store")
    mini = make_mini_epic(root / "mini", num_videos=3, size=(160, 90), flow=True)
    manifest = plan_store(
        store_root=root / "store",
        annotations_dir=mini.annotations_dir,
        flow_root=mini.flow_dir,
        official=False,
        shards=1,
    )
    for shard in manifest.shards:
        run_shard(store_root=root / "store", shard_index=shard.index, workers=1)
    return mini, FrameStore(root / "store")


def tar_pictures(path: Path) -> dict[tuple[str, int], np.ndarray]:
    """(axis, flow frame) -> the (H, W) picture of member ``[./]axis/frame_%010d.jpg``."""
    out = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            if member.isfile():
                axis, name = member.name.removeprefix("./").split("/")
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                with Image.open(io.BytesIO(data)) as picture:
                    out[(axis, int(name[len("frame_") : -len(".jpg")]))] = np.array(picture)
    return out


@pytest.mark.slow
def test_clips_of_a_flow_store_are_the_tars_pictures_at_the_rules_frames(flow_store):
    mini, store = flow_store
    annotations = AnnotationDir(mini.annotations_dir)
    for split in ("train", "validation", "test"):
        table = annotations.table(split)
        dataset = EpicActionDataset(
            store, table, num_frames=3, decoder="pil", modality="flow", flow_stack=STACK
        )
        check_readable(dataset)
        training = EpicActionDataset(
            store, table, num_frames=3, sampling="tsn", training=True, modality="flow"
        )
        check_readable(training)  # every frame TSN's random starts may reach is stored
        pictures = {}
        for index in range(len(table)):
            video = table.video_ids[index]
            if video not in pictures:
                pictures[video] = tar_pictures(flow_tar_path(mini.flow_dir, video))
            count = max(k for axis, k in pictures[video] if axis == "u")
            stride = 1 if len(video.split("_")[1]) == 3 else 2  # C1 STRIDES: 2020 1, 2018 2
            wanted = expected_flow_frames(
                int(table.start_frames[index]),
                int(table.stop_frames[index]),
                stride,
                count,
                3,
                "linspace",
            )
            clip = dataset[index]["frames"]  # (3, 10, H, W)
            assert clip.shape == (3, 2 * STACK, 90, 160)
            for t in range(3):
                for i in range(STACK):
                    frame = wanted[t * STACK + i]
                    assert np.array_equal(clip[t, 2 * i].numpy(), pictures[video][("u", frame)])
                    assert np.array_equal(clip[t, 2 * i + 1].numpy(), pictures[video][("v", frame)])
