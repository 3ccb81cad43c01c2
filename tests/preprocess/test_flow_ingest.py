"""Official-style optical flow tars into a flow store (issue 23, item 1): byte identity of
every u and v image, the flow index rule on every position a sampler reads, and each bad
input refused by ``plan`` or ``run`` with the exit code of docs/conventions.md.

The tars are built here: grayscale JPEGs (Pillow) whose grey levels encode their flow frame
number and image, at the official path ``PXX/flow_frames/PXX_YY.tar``, with a video_info
CSV whose durations give each video's RGB frame count. The expected counts and indices are
computed in the test from the published formulas (C1 ``convert_rgb_frame_to_flow_frame_idx``;
epic-kitchens-55-lib ``flow_frame_count``), not from the code under test.
"""

from __future__ import annotations

import hashlib
import io
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from epicdata.errors import ExitCode, StoreIncompleteError
from epicdata.frames import expected_frame_count, frame_rate_for
from epicdata.layout import image_key, shard_path
from epicdata.lmdb_pages import ShardPages
from epicdata.manifest import Manifest
from epicdata.store import FrameStore
from preprocess import official_frames
from preprocess.check import check_store
from preprocess.cli import extract

#: (video id, seconds, segments (start s, stop s)): an EPIC-55 video (stride 2, dilation 3)
#: and an extension video (stride 1, dilation 1).
VIDEOS = [
    ("P01_01", 3.0, [(0.3, 1.2), (1.5, 2.9)]),
    ("P01_101", 2.5, [(0.2, 0.9), (1.4, 2.45)]),
]
#: The published rules, written out again: (stride, dilation) per group.
RULES = {"P01_01": (2, 3), "P01_101": (1, 1)}
SIZE = (32, 18)


def c1_flow_index(rgb: int, stride: int) -> int:
    """C1 src/convert_rgb_to_flow_frame_idxs.py, convert_rgb_frame_to_flow_frame_idx."""
    return (rgb - 1) // stride + 1


def lib_flow_frame_count(rgb_frames: int, stride: int, dilation: int) -> int:
    """epic-kitchens-55-lib epic_kitchens/time.py, flow_frame_count."""
    return int(math.ceil((rgb_frames - dilation) / stride))


def grey_jpeg(level: int, mode: str = "L") -> bytes:
    out = io.BytesIO()
    colour = level if mode == "L" else (level, 255 - level, 7)
    Image.new(mode, SIZE, colour).save(out, "JPEG", quality=95)
    return out.getvalue()


def rgb_frames(video_id: str, seconds: float) -> int:
    return expected_frame_count(seconds, frame_rate_for(video_id))


def flow_images(video_id: str, seconds: float) -> dict[str, bytes]:
    """Member name -> JPEG of the official flow tar of the video (u then v, all u first)."""
    stride, dilation = RULES[video_id]
    count = lib_flow_frame_count(rgb_frames(video_id, seconds), stride, dilation)
    members = {}
    for image in ("u", "v"):
        for k in range(1, count + 1):
            level = (k * 7 + (0 if image == "u" else 100)) % 256
            members[f"{image}/frame_{k:010d}.jpg"] = grey_jpeg(level)
    return members


def write_tar(path: Path, members: dict[str, bytes], prefix: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def tar_of(root: Path, video_id: str) -> Path:
    return root / video_id[:3] / "flow_frames" / f"{video_id}.tar"


@pytest.fixture
def flow_inputs(tmp_path: Path, epic_files) -> dict[str, Path]:
    """Annotations (test split + video_info) and official-style flow tars of VIDEOS."""
    ann = tmp_path / "ann"
    rows = [(v, a, b) for v, _, segments in VIDEOS for a, b in segments]
    epic_files.write_test_split(ann, rows)
    info = ["video_id,duration,fps,resolution"]
    info += [f"{v},{seconds},{frame_rate_for(v)}.0,{SIZE[0]}x{SIZE[1]}" for v, seconds, _ in VIDEOS]
    (ann / "EPIC_100_video_info.csv").write_text("\n".join(info) + "\n")
    root = tmp_path / "flow"
    for video_id, seconds, _ in VIDEOS:
        write_tar(tar_of(root, video_id), flow_images(video_id, seconds), prefix="./")
    return {"annotations": ann, "flow": root, "store": tmp_path / "flowstore"}


def invoke(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(extract, [str(a) for a in args])
    return result.exit_code, result.output


def plan(inputs: dict[str, Path], *extra: object) -> tuple[int, str]:
    return invoke(
        "plan",
        "--store", inputs["store"], "--annotations", inputs["annotations"],
        "--flow", inputs["flow"], "--splits", "test", "--shards", "1", "--not-official",
        *extra,
    )  # fmt: skip


def run(inputs: dict[str, Path]) -> tuple[int, str]:
    return invoke("run", "--store", inputs["store"], "--shard-index", 0, "--workers", 1)


def planned_segments() -> list[tuple[str, int, int]]:
    """(video id, start frame, stop frame) of every segment, by the frame rule."""
    out = []
    for video_id, _, segments in VIDEOS:
        rate = frame_rate_for(video_id)
        out += [(video_id, max(1, math.floor(a * rate)), math.floor(b * rate)) for a, b in segments]
    return out


# ----------------------------------------------------------------------------- the good path


@pytest.mark.parametrize("keep", ["all", "segments", "sampled"])
def test_flow_tars_are_stored_byte_for_byte_by_the_index_rule(flow_inputs, keep: str) -> None:
    code, out = plan(flow_inputs, "--keep", keep, "--num-frames", "3", "--flow-stack", "2")
    assert code == 0, out
    assert "a flow store" in out
    code, out = run(flow_inputs)
    assert code == 0, out
    report = check_store(flow_inputs["store"], annotations_dir=flow_inputs["annotations"])
    assert report.ok, report.problems
    store = FrameStore(flow_inputs["store"])
    assert store.modality == "flow"
    for video_id, seconds, _ in VIDEOS:
        stride, dilation = RULES[video_id]
        meta = store.video_meta(video_id)
        count = lib_flow_frame_count(rgb_frames(video_id, seconds), stride, dilation)
        assert meta.decoded_frames == count
        assert (meta.flow.stride, meta.flow.dilation) == (stride, dilation)
        members = flow_images(video_id, seconds)
        stored = [f for a, b in meta.stored_ranges for f in range(a, b + 1)]
        blobs = store.read_frames(video_id, stored)
        assert len(blobs) == 2 * len(stored)
        for i, frame in enumerate(stored):  # u then v of each position, the tar's bytes
            assert blobs[2 * i] == members[f"u/frame_{frame:010d}.jpg"]
            assert blobs[2 * i + 1] == members[f"v/frame_{frame:010d}.jpg"]
        if keep == "all":
            assert stored == list(range(1, count + 1))


def test_every_flow_frame_a_sampler_reads_is_in_a_sampled_store(flow_inputs) -> None:
    assert (
        plan(flow_inputs, "--keep", "sampled", "--num-frames", "3,4", "--flow-stack", "2")[0] == 0
    )
    assert run(flow_inputs)[0] == 0
    store = FrameStore(flow_inputs["store"])
    for video_id, start, stop in planned_segments():
        stride = RULES[video_id][0]
        count = store.video_meta(video_id).decoded_frames
        # Independently: the segment's flow range by C1's rule, cut at the last flow frame;
        # linspace over the starts that keep a 2-pair stack inside it.
        first = c1_flow_index(start, stride)
        last = min(c1_flow_index(stop, stride), count)
        for num in (3, 4):
            starts = np.linspace(first, max(first, last - 1), num, dtype=int)
            frames = sorted({int(s) + j for s in starts for j in range(2)})
            assert all(first <= f <= max(last, first + 1) for f in frames)
            assert store.holds(video_id, frames), (video_id, start, stop, frames)
            assert len(store.read_frames(video_id, frames)) == 2 * len(frames)


def test_check_names_the_first_missing_flow_frame_of_a_sampled_store(flow_inputs) -> None:
    assert plan(flow_inputs, "--keep", "sampled", "--num-frames", "3", "--flow-stack", "2")[0] == 0
    manifest = Manifest.load(flow_inputs["store"])
    video = manifest.shards[0].videos[0]
    assert run(flow_inputs)[0] == 0
    # A plan that asks for a frame the shard lacks (an older plan, a hand-edited manifest):
    # epic-check names the video and the frame.
    path = flow_inputs["store"] / "manifest.json"
    text = path.read_text().replace('"flow_stack": 2', '"flow_stack": 5')
    path.write_text(text)
    report = check_store(flow_inputs["store"], annotations_dir=flow_inputs["annotations"])
    assert not report.ok
    assert any(video.video_id in p and "flow frame" in p for p in report.problems), report.problems


def test_u_and_v_members_in_any_order_and_unpacked_folders_read_the_same(
    flow_inputs, tmp_path: Path
) -> None:
    video_id, seconds, _ = VIDEOS[1]
    members = flow_images(video_id, seconds)
    names = sorted(members, key=lambda n: (n[2:], n[0]))  # interleaved u1 v1 u2 v2 ...
    write_tar(tar_of(flow_inputs["flow"], video_id), {n: members[n] for n in names})
    assert plan(flow_inputs, "--keep", "all")[0] == 0
    assert run(flow_inputs)[0] == 0
    first = FrameStore(flow_inputs["store"]).read_frames(video_id, [1, 2, 3])
    assert first == [members[f"{i}/frame_{k:010d}.jpg"] for k in (1, 2, 3) for i in "uv"]


# ----------------------------------------------------------------------------- bad input


def _damage_and_run(flow_inputs, members: dict[str, bytes]) -> str:
    video_id = VIDEOS[0][0]
    write_tar(tar_of(flow_inputs["flow"], video_id), members)
    code, out = plan(flow_inputs)
    assert code == 0, out
    code, out = run(flow_inputs)
    assert code == ExitCode.BAD_SOURCE, out
    assert video_id in out
    assert not shard_path(flow_inputs["store"], 0).exists()  # nothing half published
    return out


def test_a_flow_tar_with_only_u_is_refused_naming_it(flow_inputs) -> None:
    video_id, seconds, _ = VIDEOS[0]
    only_u = {n: b for n, b in flow_images(video_id, seconds).items() if n.startswith("u/")}
    out = _damage_and_run(flow_inputs, only_u)
    assert "no v/ frames, only u/" in out


def test_u_and_v_counts_that_differ_are_refused(flow_inputs) -> None:
    video_id, seconds, _ = VIDEOS[0]
    members = flow_images(video_id, seconds)
    last = max(int(n[8:18]) for n in members)
    del members[f"v/frame_{last:010d}.jpg"]
    out = _damage_and_run(flow_inputs, members)
    assert f"1 without their v, first {last}" in out


def test_a_count_that_contradicts_the_videos_rule_is_refused(flow_inputs) -> None:
    # Twice the frames: the count a stride-1 tool would make for this stride-2 video.
    video_id, seconds, _ = VIDEOS[0]
    count = 2 * lib_flow_frame_count(rgb_frames(video_id, seconds), 2, 3)
    members = {
        f"{i}/frame_{k:010d}.jpg": grey_jpeg(k % 200) for i in "uv" for k in range(1, count + 1)
    }
    out = _damage_and_run(flow_inputs, members)
    assert "ceil((n - dilation) / stride)" in out and "stride 2 and dilation 3" in out


def test_colour_jpegs_in_a_flow_tar_are_refused(flow_inputs) -> None:
    video_id, seconds, _ = VIDEOS[0]
    members = {n: grey_jpeg(9, mode="RGB") for n in flow_images(video_id, seconds)}
    out = _damage_and_run(flow_inputs, members)
    assert "3 colour components where optical flow is 1" in out


def test_rgb_frames_given_as_flow_are_refused_by_plan(flow_inputs) -> None:
    video_id = VIDEOS[0][0]
    tar_of(flow_inputs["flow"], video_id).unlink()
    rgb = flow_inputs["flow"] / video_id[:3] / "rgb_frames" / f"{video_id}.tar"
    write_tar(rgb, {"frame_0000000001.jpg": grey_jpeg(3, "RGB")})
    code, out = plan(flow_inputs)
    assert code == ExitCode.BAD_SOURCE, out
    assert f"no {video_id}.tar or {video_id}/ under" in out and "flow_frames" in out


def test_the_original_erratum_flow_tar_is_refused_by_its_md5_and_its_replacement_accepted(
    tmp_path: Path, epic_files, monkeypatch: pytest.MonkeyPatch
) -> None:
    # P01_109's flow tar at its official path. Both md5s are official (data/md5.csv lists
    # the original and the erratum); the original's frames are wrong. The md5s are this
    # test's two tars': the original one is refused at run, the replacement accepted.
    video_id, seconds = "P01_109", 2.0
    ann = tmp_path / "ann"
    epic_files.write_test_split(ann, [(video_id, 0.2, 1.5)])
    (ann / "EPIC_100_video_info.csv").write_text(
        f"video_id,duration,fps,resolution\n{video_id},{seconds},50.0,{SIZE[0]}x{SIZE[1]}\n"
    )
    members = flow_images("P01_101", seconds)  # the same rule (stride 1, dilation 1)
    original = write_tar(tar_of(tmp_path / "flow", video_id), members)
    md5_original = hashlib.md5(original.read_bytes()).hexdigest()
    replaced = write_tar(tmp_path / "replaced.tar", dict(reversed(list(members.items()))))
    md5_replaced = hashlib.md5(replaced.read_bytes()).hexdigest()
    key = f"P01/flow_frames/{video_id}.tar"
    monkeypatch.setattr(official_frames, "md5_table", lambda: {key: {md5_original, md5_replaced}})
    monkeypatch.setattr(official_frames, "superseded_md5s", lambda: frozenset({md5_original}))
    for store, expected in (("original", ExitCode.BAD_SOURCE), ("replaced", 0)):
        code, out = invoke(
            "plan", "--store", tmp_path / store, "--annotations", ann,
            "--flow", tmp_path / "flow", "--splits", "test", "--shards", "1",
        )  # fmt: skip
        assert code == 0, out
        code, out = invoke("run", "--store", tmp_path / store, "--shard-index", 0)
        assert code == expected, out
        if expected:
            assert f"md5 {md5_original} is the original download" in out, out
            assert "epic_downloader.py --errata --flow-frames" in out, out
            replaced.replace(original)  # the user downloads the replacement


def test_the_real_md5_list_marks_the_erratum_tars_superseded() -> None:
    superseded = official_frames.superseded_md5s()
    table = official_frames.md5_table()
    for path in ("P01/flow_frames/P01_109.tar", "P27/flow_frames/P27_103.tar"):
        assert len(table[path]) == 2 and len(table[path] & superseded) == 1
    # The RGB ones too, and nothing else.
    assert len(superseded) == 4


def test_flow_and_videos_in_one_store_are_refused(flow_inputs, tmp_path: Path) -> None:
    (tmp_path / "videos").mkdir()
    code, out = plan(flow_inputs, "--videos", tmp_path / "videos")
    assert code == ExitCode.BAD_INPUT, out
    assert "one modality per store" in out


def test_an_rgb_store_plan_and_its_manifest_are_unchanged_by_flow(flow_inputs) -> None:
    # key layout: RGB keys have no image suffix.
    assert image_key("P01_01", 5, "") == b"P01_01/0000000005"
    assert image_key("P01_01", 5, "u") == b"P01_01/0000000005/u"


def test_a_flipped_byte_in_one_v_image_is_named_by_check_and_refused_by_the_reader(
    flow_inputs,
) -> None:
    assert plan(flow_inputs, "--keep", "all")[0] == 0
    assert run(flow_inputs)[0] == 0
    video, frame = VIDEOS[0][0], 7
    path = shard_path(flow_inputs["store"], 0)
    pages = ShardPages.open(path)
    offset, length = pages.locate(image_key(video, frame, "v"))
    pages.close()
    with path.open("r+b") as handle:  # one byte in the middle of frame 7's v image
        handle.seek(offset + length // 2)
        byte = handle.read(1)
        handle.seek(offset + length // 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    report = check_store(flow_inputs["store"])
    assert f"shard 0: {video} frame {frame} v: checksum mismatch (corrupt JPEG)" in report.problems
    assert report.resubmit_indices == [0]
    store = FrameStore(flow_inputs["store"])
    assert len(store.read_frames(video, [frame - 1])) == 2  # its neighbour reads
    with pytest.raises(StoreIncompleteError, match=f"{video} frame {frame}: checksum mismatch"):
        store.read_frames(video, [frame])
