"""The mini-EPIC's optical-flow tars: official layout, EPIC's group rules, and the motion the
videos really show, each checked against an independent computation.

The group rules are written out here from their sources (not read from epicdata.frames):
``PXX_YY`` stride 2, dilation 3, bound 25 (epic-kitchens-55-annotations README);
``PXX_1YY`` stride 1, dilation 1, bound 8 (epic-kitchens-100-annotations README, erratum
flow); flow frame count ``ceil((n - dilation) / stride)`` (epic-kitchens-55-lib time.py).
"""

from __future__ import annotations

import io
import math
import tarfile
from dataclasses import dataclass
from pathlib import Path

import ffmpeg
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from epicdata.errors import EpicInputError
from epicdata.ffmpeg_bin import ffmpeg_path
from epicdata.synthetic import (
    VERB_SPEEDS_PX_PER_S,
    SyntheticVideo,
    flow_tar_path,
    main,
    make_mini_epic,
    make_video,
    retimed_frame_count,
    synthetic_flow_displacement,
    synthetic_flow_frame,
    write_flow_tar,
)

#: video id -> (native fps, R, stride, dilation, bound, verb class of its one block).
VIDEOS = {
    "P01_01": ("60000/1001", 60, 2, 3, 25.0, 1),
    "P01_101": ("50", 50, 1, 1, 8.0, 2),
}
BLOCK = (0.2, 1.2)  # seconds; grey before and after
NOUN = 1  # a square: flat inside, so JPEG keeps its interior exact to a few levels
SIZE = (320, 180)
BAND = 22  # rows of the stamp band at 180 (1/8, rounded)
#: Half the shape's swing at 180 rows: 8% of the 158 rows below the band.
SWING_PX = 0.08 * (180 - BAND)


@dataclass(frozen=True)
class FlowVideo:
    video: SyntheticVideo
    tar: Path
    rgb: np.ndarray  # (N, H, W, 3) uint8: the re-timed stream a store decodes


def _decode_retimed(path: Path, rate: int) -> np.ndarray:
    out, _ = (
        ffmpeg.input(str(path))
        .output("pipe:", vf=f"fps={rate}", format="rawvideo", pix_fmt="rgb24")
        .global_args("-loglevel", "error")
        .run(cmd=ffmpeg_path(), capture_stdout=True)
    )
    width, height = SIZE
    return np.frombuffer(out, np.uint8).reshape(-1, height, width, 3)


@pytest.fixture(scope="module")
def flow_videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, FlowVideo]:
    """One 1.4-s video per flow group, one class block each, with its flow tar."""
    root = tmp_path_factory.mktemp("flow")
    made = {}
    for video_id, (fps, rate, *_, verb) in VIDEOS.items():
        video = make_video(
            root / f"{video_id}.MP4",
            fps=fps,
            duration=1.4,
            size=SIZE,
            segments=[(*BLOCK, verb, NOUN)],
            audio=False,
        )
        tar = flow_tar_path(root, video_id)
        write_flow_tar(video, tar)
        made[video_id] = FlowVideo(video, tar, _decode_retimed(video.path, rate))
    return made


def _members(tar: Path) -> dict[str, bytes]:
    with tarfile.open(tar) as archive:
        return {m.name: archive.extractfile(m).read() for m in archive.getmembers()}


def _grey(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.mode == "L"
    return np.asarray(image)


def _encoded(d: float, bound: float) -> int:
    return round((min(max(d, -bound), bound) + bound) * 255 / (2 * bound))


def _times(video_id: str, k: int) -> tuple[float, float]:
    _, rate, stride, dilation, *_ = VIDEOS[video_id]
    first = (k - 1) * stride + 1
    return (first - 1) / rate, (first + dilation - 1) / rate


# ----------------------------------------------------------------------------- layout


@pytest.mark.parametrize("video_id", list(VIDEOS))
def test_members_and_count_follow_the_group_rule(
    flow_videos: dict[str, FlowVideo], video_id: str
) -> None:
    made = flow_videos[video_id]
    _, _, stride, dilation, *_ = VIDEOS[video_id]
    n = len(made.rgb)  # what ffmpeg's fps=R makes of the video: the store's RGB frames
    assert retimed_frame_count(made.video) == n
    count = math.ceil((n - dilation) / stride)
    names = list(_members(made.tar))
    assert names == [f"{c}/frame_{k:010d}.jpg" for c in "uv" for k in range(1, count + 1)]
    # Standard end: zero blocks after the last member, padded to whole 10 kB records.
    data = made.tar.read_bytes()
    assert len(data) % tarfile.RECORDSIZE == 0 and data[-1024:] == bytes(1024)


def test_interleaved_order_and_dot_slash_prefix(
    flow_videos: dict[str, FlowVideo], tmp_path: Path
) -> None:
    made = flow_videos["P01_101"]
    tar = tmp_path / "P01_101.tar"
    count = write_flow_tar(made.video, tar, interleaved=True, prefix="./")
    members = _members(tar)
    assert list(members) == [f"./{c}/frame_{k:010d}.jpg" for k in range(1, count + 1) for c in "uv"]
    plain = _members(made.tar)
    assert all(members[f"./{name}"] == data for name, data in plain.items())
    again = tmp_path / "again.tar"
    write_flow_tar(made.video, again)
    assert again.read_bytes() == made.tar.read_bytes()  # deterministic, byte for byte


def test_every_member_is_a_grayscale_jpeg_at_the_video_size(
    flow_videos: dict[str, FlowVideo],
) -> None:
    for made in flow_videos.values():
        for name, data in _members(made.tar).items():
            image = Image.open(io.BytesIO(data))
            assert (image.format, image.mode, image.size) == ("JPEG", "L", SIZE), name


# ----------------------------------------------------------------------------- content


@pytest.mark.parametrize(("video_id", "k"), [("P01_01", 8), ("P01_101", 12)])
def test_rightward_motion_is_bright_u_on_the_shape_and_still_grey_off_it(
    flow_videos: dict[str, FlowVideo], video_id: str, k: int
) -> None:
    made = flow_videos[video_id]
    *_, bound, verb = VIDEOS[video_id]
    start_s, stop_s = _times(video_id, k)
    # Both frames inside the block's first swing to the right: the shape moved
    # speed x elapsed time, rightward.
    speed = VERB_SPEEDS_PX_PER_S[verb]
    assert BLOCK[0] <= start_s < stop_s <= BLOCK[0] + SWING_PX / speed
    d = speed * (stop_s - start_s)
    members = _members(made.tar)
    u = _grey(members[f"u/frame_{k:010d}.jpg"]).astype(int)
    v = _grey(members[f"v/frame_{k:010d}.jpg"]).astype(int)
    inside = (slice(80, 120), slice(140, 180))  # well inside the 96-px square
    expected = _encoded(d, bound)
    assert expected > 140
    assert np.abs(u[inside] - expected).max() <= 3
    assert np.abs(v[inside] - 128).max() <= 1  # no vertical motion
    for off in ((slice(0, BAND), slice(None)), (slice(150, 180), slice(0, 60))):
        assert np.abs(u[off] - 127.5).max() <= 1 and np.abs(v[off] - 127.5).max() <= 1
    assert synthetic_flow_displacement(made.video, start_s, stop_s) == pytest.approx((d, 0.0))


@pytest.mark.parametrize("video_id", list(VIDEOS))
def test_the_shape_turns_left_at_its_swing(
    flow_videos: dict[str, FlowVideo], video_id: str
) -> None:
    made = flow_videos[video_id]
    *_, bound, verb = VIDEOS[video_id]
    speed = VERB_SPEEDS_PX_PER_S[verb]
    turn = BLOCK[0] + SWING_PX / speed
    k = next(k for k in range(1, 200) if _times(video_id, k)[0] > turn + 0.01)
    start_s, stop_s = _times(video_id, k)
    assert stop_s < turn + 2 * SWING_PX / speed  # still on the way left
    u = _grey(_members(made.tar)[f"u/frame_{k:010d}.jpg"]).astype(int)
    expected = _encoded(-speed * (stop_s - start_s), bound)
    assert expected < 115 and np.abs(u[80:120, 140:180] - expected).max() <= 3


@pytest.mark.parametrize("video_id", list(VIDEOS))
def test_flow_frames_in_grey_gaps_are_still_everywhere(
    flow_videos: dict[str, FlowVideo], video_id: str
) -> None:
    made = flow_videos[video_id]
    members = _members(made.tar)
    count = len(members) // 2
    gaps = [
        k
        for k in range(1, count + 1)
        if all(not BLOCK[0] <= t < BLOCK[1] for t in _times(video_id, k))
    ]
    assert gaps[0] == 1 and gaps[-1] == count
    for k in (gaps[0], gaps[-1]):
        for c in "uv":
            assert set(np.unique(_grey(members[f"{c}/frame_{k:010d}.jpg"]))) <= {127, 128}


@pytest.mark.parametrize("video_id", list(VIDEOS))
def test_flow_matches_the_motion_the_rgb_frames_show(
    flow_videos: dict[str, FlowVideo], video_id: str
) -> None:
    """The flow is the painted motion: the shape's centroid moves by the flow's u between
    the RGB frames a flow frame pairs, and the flow's moving pixels are the shape's."""
    made = flow_videos[video_id]
    _, rate, stride, dilation, bound, verb = VIDEOS[video_id]
    dark = np.array([15, 15, 15])  # noun 1's colour
    checked = 0
    for k in range(1, 200):
        a = (k - 1) * stride + 1
        start_s, stop_s = (a - 1) / rate, (a + dilation - 1) / rate
        if not BLOCK[0] + 0.02 <= start_s < stop_s < BLOCK[1] - 0.02:
            continue
        # The shape's pixels below the band (whose black cells are as dark as the shape).
        masks = [
            np.abs(made.rgb[f - 1, BAND:].astype(int) - dark).max(axis=2) < 60
            for f in (a, a + dilation)
        ]
        centroids = [np.nonzero(m)[1].mean() for m in masks]
        dx, _ = synthetic_flow_displacement(made.video, start_s, stop_s)
        assert abs((centroids[1] - centroids[0]) - dx) <= 1.5, (k, centroids, dx)
        u, v = synthetic_flow_frame(made.video, k)
        if abs(dx) > 0.5:
            moving = u != 128
            assert not moving[:BAND].any()
            overlap = (moving[BAND:] & masks[0]).sum() / (moving[BAND:] | masks[0]).sum()
            assert overlap > 0.9, (k, overlap)
            assert set(np.unique(u[moving])) == {_encoded(dx, bound)}
        assert (v == 128).all()
        checked += 1
    assert checked > 20


def test_retimed_count_is_what_ffmpeg_decodes_at_every_native_rate(tmp_path: Path) -> None:
    for i, (video_id, fps, rate) in enumerate(
        [("P02_01", "30000/1001", 60), ("P02_02", "90", 60), ("P02_03", "48000/1001", 60)]
    ):
        video = make_video(
            tmp_path / f"{video_id}.MP4", fps=fps, duration=0.73 + 0.11 * i, audio=False
        )
        out, _ = (
            ffmpeg.input(str(video.path))
            .output("pipe:", vf=f"fps={rate},scale=32:18", format="rawvideo", pix_fmt="gray")
            .global_args("-loglevel", "error")
            .run(cmd=ffmpeg_path(), capture_stdout=True)
        )
        assert retimed_frame_count(video) == len(out) // (32 * 18), fps


# ----------------------------------------------------------------------------- mini-EPIC


@pytest.mark.slow
def test_mini_epic_flow_tars_are_deterministic_and_the_cli_writes_them(tmp_path: Path) -> None:
    args = dict(seed=5, num_videos=3, size=(160, 90))
    first = make_mini_epic(tmp_path / "a", flow=True, **args)
    assert first.flow_dir == first.videos_dir
    result = CliRunner().invoke(
        main,
        ["--out", str(tmp_path / "b"), "--seed", "5", "--videos", "3", "--size", "160x90"]
        + ["--flow"],
    )
    assert result.exit_code == 0, result.output
    assert f"flow tars (--flow):          {tmp_path / 'b' / 'EPIC-KITCHENS'}" in result.output
    groups = set()
    for video in first.videos:
        tar = flow_tar_path(first.flow_dir, video.video_id)
        twin = tmp_path / "b" / tar.relative_to(tmp_path / "a")
        assert twin.read_bytes() == tar.read_bytes()
        n = retimed_frame_count(video)
        stride, dilation = (1, 1) if len(video.video_id) == 7 else (2, 3)
        groups.add(stride)
        count = math.ceil((n - dilation) / stride)
        assert len(_members(tar)) == 2 * count
        assert f"{video.video_id:<9} stride {stride}, dilation {dilation}" in result.output
        assert f"{count} flow frames" in result.output
    assert groups == {1, 2}  # both group rules exercised
    assert make_mini_epic(tmp_path / "c", **args).flow_dir is None


def test_refuses_a_folder_holding_other_flow_tars(tmp_path: Path) -> None:
    stray = flow_tar_path(tmp_path / "EPIC-KITCHENS", "P09_01")
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"")
    with pytest.raises(EpicInputError, match="P09_01.tar"):
        make_mini_epic(tmp_path, flow=True)
    assert not (tmp_path / "annotations").exists()
