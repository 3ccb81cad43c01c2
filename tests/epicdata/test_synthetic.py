"""The synthetic mini-EPIC: stamps read back exactly, real-format CSVs, real video files."""

from __future__ import annotations

import math
import subprocess
from fractions import Fraction
from pathlib import Path

import ffmpeg
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from epicdata.annotations import (
    NOUN_CLASSES_FILE,
    SPLIT_FILES,
    VERB_CLASSES_FILE,
    AnnotationDir,
)
from epicdata.errors import EpicInputError
from epicdata.ffmpeg_bin import ffmpeg_path, ffprobe_path
from epicdata.frames import frame_rate_for, is_extension_video, is_video_id
from epicdata.synthetic import MiniEpic, main, make_mini_epic, make_video, read_stamp


def extract_jpegs(video: Path, vf: str, out: Path) -> list[np.ndarray]:
    """Frames of ``video`` through the official-style command, as (H, W, 3) uint8 RGB."""
    out.mkdir()
    subprocess.run(
        [
            ffmpeg_path(),
            "-v",
            "error",
            "-i",
            str(video),
            "-vf",
            vf,
            "-q:v",
            "4",
            str(out / "%06d.jpg"),
        ],
        check=True,
    )
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(out.glob("*.jpg"))]


def decode_raw(video: Path, vf: str, size: tuple[int, int]) -> np.ndarray:
    """All frames of ``video`` after filter ``vf`` (which yields ``size`` = (W, H)):
    (N, H, W, 3) uint8 RGB, without JPEG."""
    out, _ = (
        ffmpeg.input(str(video))
        .output("pipe:", vf=vf, format="rawvideo", pix_fmt="rgb24")
        .global_args("-loglevel", "error")
        .run(cmd=ffmpeg_path(), capture_stdout=True)
    )
    width, height = size
    return np.frombuffer(out, np.uint8).reshape(-1, height, width, 3)


def retimed_source_index(n: int, rate: int, fps: Fraction) -> int:
    """Oracle for ffmpeg's ``fps=R`` filter: output frame n (1-based, time (n-1)/R) shows the
    last source frame i whose time i/fps rounds (half up) to an output slot <= n - 1."""
    i = math.floor((n - 1) * fps / rate) + 2
    while math.floor(i * rate / fps + Fraction(1, 2)) > n - 1:
        i -= 1
    return i


# ----------------------------------------------------------------------------- stamps


@pytest.mark.parametrize("fps", ["60000/1001", "50", "30000/1001", "48000/1001", "90"])
def test_stamp_reads_back_exactly_from_native_rate_jpegs(tmp_path: Path, fps: str) -> None:
    video = make_video(tmp_path / "P01_01.MP4", fps=fps, duration=1.5, segments=[(0.3, 1.2, 1, 2)])
    frames = extract_jpegs(video.path, f"fps={fps},scale=-2:256", tmp_path / "jpg")
    assert frames[0].shape == (256, 456, 3)
    assert len(frames) == video.num_frames
    assert [read_stamp(f) for f in frames] == list(range(video.num_frames))


@pytest.mark.slow
def test_stamp_follows_the_retimed_stream_of_a_2997_video_under_an_epic55_id(
    tmp_path: Path, mini_epic: MiniEpic
) -> None:
    video = next(v for v in mini_epic.videos if v.fps == "30000/1001")
    rate = frame_rate_for(video.video_id)
    assert rate == 60
    frames = extract_jpegs(video.path, f"fps={rate},scale=-2:256", tmp_path / "jpg")
    # About twice the native count: every source frame shows up in two stored frames.
    assert abs(len(frames) - video.duration * rate) <= 2
    assert abs(len(frames) - 2 * video.num_frames) <= 2
    fps = Fraction(video.fps)
    stamps = [read_stamp(f) for f in frames]
    assert stamps == [
        min(retimed_source_index(n, rate, fps), video.num_frames - 1)
        for n in range(1, len(frames) + 1)
    ]
    assert all(abs(s - (n - 1) * float(fps) / rate) <= 1 for n, s in enumerate(stamps, 1))


@pytest.mark.slow
def test_stamp_reads_back_from_a_1920x1440_source_scaled_to_342x256(tmp_path: Path) -> None:
    video = make_video(
        tmp_path / "P01_101.MP4",
        fps="30000/1001",
        duration=1.0,
        size=(1920, 1440),
        segments=[(0.2, 0.8, 2, 3)],
    )
    frames = extract_jpegs(video.path, "fps=50,scale=-2:256", tmp_path / "jpg")
    assert frames[0].shape == (256, 342, 3)
    fps = Fraction(video.fps)
    assert [read_stamp(f) for f in frames] == [
        min(retimed_source_index(n, 50, fps), video.num_frames - 1)
        for n in range(1, len(frames) + 1)
    ]


def test_read_stamp_refuses_frames_without_a_valid_stamp(tmp_path: Path) -> None:
    video = make_video(tmp_path / "P01_01.MP4", fps="50", duration=0.2, audio=False)
    frame = extract_jpegs(video.path, "scale=-2:256", tmp_path / "jpg")[5].copy()
    assert read_stamp(frame) == 5
    with pytest.raises(ValueError, match="neither black nor white"):
        read_stamp(np.full((256, 456, 3), 128, np.uint8))
    with pytest.raises(ValueError, match="guard"):
        read_stamp(np.zeros((256, 456, 3), np.uint8))
    flipped = frame.copy()
    cell = 456 / 20
    data_cell = slice(int(17 * cell), int(18 * cell))  # the lowest data bit
    flipped[:, data_cell] = 255 - flipped[:, data_cell]
    with pytest.raises(ValueError, match="parity"):
        read_stamp(flipped)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        read_stamp(frame[..., 0])


# ----------------------------------------------------------------------------- content


def test_content_shows_verb_as_background_and_noun_as_object_grey_outside(tmp_path: Path) -> None:
    segments = [(0.5, 1.0, 0, 0), (1.0, 1.5, 1, 0), (1.5, 2.0, 0, 1)]
    video = make_video(
        tmp_path / "P01_01.MP4", fps="50", duration=2.5, segments=segments, audio=False
    )
    frames = decode_raw(video.path, "null", (320, 180)).astype(int)  # (125, 180, 320, 3)
    assert frames.shape == (video.num_frames, 180, 320, 3)
    corner = frames[:, 150:170, 10:40].mean(axis=(1, 2))  # (N, 3) background
    centre = frames[:, 95:107, 150:170].mean(axis=(1, 2))  # (N, 3) object

    def at(seconds: float) -> int:
        return round(seconds * 50)

    grey = [at(t) for t in (0.1, 0.4, 2.1, 2.4)]
    assert np.ptp(corner[grey], axis=1).max() < 12  # neutral: channels nearly equal
    assert np.ptp(corner[at(0.75)]) > 60  # a saturated colour inside a segment
    assert np.abs(corner[at(0.75)] - corner[at(1.25)]).max() > 60  # verb 0 vs verb 1
    assert np.abs(corner[at(0.75)] - corner[at(1.75)]).max() < 15  # same verb
    assert np.abs(centre[at(0.75)] - centre[at(1.75)]).max() > 60  # noun 0 vs noun 1
    assert np.abs(centre[at(0.75)] - centre[at(1.25)]).max() < 15  # same noun


@pytest.mark.slow
@pytest.mark.parametrize("fps", ["30000/1001", "48000/1001", "60000/1001"])
def test_every_frame_of_a_segment_shows_its_classes(mini_epic: MiniEpic, fps: str) -> None:
    """Segments sit inside their class block, so a clip never sees grey or other classes."""
    annotations = AnnotationDir(mini_epic.annotations_dir)
    video = next(v for v in mini_epic.videos if v.fps == fps)
    split = next(s for s, ids in mini_epic.splits.items() if video.video_id in ids)
    table = annotations.table(split)
    rate = frame_rate_for(video.video_id)
    frames = decode_raw(video.path, f"fps={rate},scale=-2:90", (160, 90)).astype(int)
    corner = frames[:, 75:85, 5:20].mean(axis=(1, 2))  # (N, 3) background: the verb
    centre = frames[:, 48:53, 77:83].mean(axis=(1, 2))  # (N, 3) object: the noun
    rows = [i for i, v in enumerate(table.video_ids) if v == video.video_id]
    for classes, patch in ((table.verb_classes, corner), (table.noun_classes, centre)):
        references = {}
        for i in rows:
            colours = patch[table.start_frames[i] - 1 : table.stop_frames[i]]
            reference = references.setdefault(classes[i], np.median(colours, axis=0))
            assert np.abs(colours - reference).max() < 25, (table.narration_ids[i], classes[i])
        assert len(references) >= 3
        values = list(references.values())
        gaps = [np.abs(a - b).max() for k, a in enumerate(values) for b in values[k + 1 :]]
        assert min(gaps) > 60


# ----------------------------------------------------------------------------- files


@pytest.mark.slow
def test_videos_are_h264_aac_at_their_native_rate(mini_epic: MiniEpic) -> None:
    for video in mini_epic.videos:
        streams = ffmpeg.probe(str(video.path), cmd=ffprobe_path())["streams"]
        (v,) = [s for s in streams if s["codec_type"] == "video"]
        (a,) = [s for s in streams if s["codec_type"] == "audio"]
        assert (v["codec_name"], v["pix_fmt"], a["codec_name"]) == ("h264", "yuv420p", "aac")
        # Constant frame timing at exactly the requested rational rate.
        assert Fraction(v["r_frame_rate"]) == Fraction(v["avg_frame_rate"]) == Fraction(video.fps)
        assert int(v["nb_frames"]) == video.num_frames
        assert abs(float(v["duration"]) - video.duration) < 1e-3
        assert (v["width"], v["height"]) == (video.width, video.height) == (320, 180)


@pytest.mark.slow
def test_mini_epic_layout_ids_and_rates(mini_epic: MiniEpic) -> None:
    ids = [v.video_id for v in mini_epic.videos]
    assert len(ids) == 8 and all(is_video_id(i) for i in ids)
    for video in mini_epic.videos:
        assert (
            video.path
            == mini_epic.videos_dir / video.video_id[:3] / "videos" / f"{video.video_id}.MP4"
        )
        assert video.path.is_file()
        assert 15 <= video.duration <= 30
    kinds = {(v.fps, is_extension_video(v.video_id)) for v in mini_epic.videos}
    assert {("60000/1001", False), ("50", True), ("30000/1001", False)} <= kinds
    assert kinds & {("48000/1001", False), ("90", False)}
    splits = mini_epic.splits
    assert {k: len(v) for k, v in splits.items()} == {"train": 5, "validation": 2, "test": 1}
    assert sorted(sum(splits.values(), ())) == sorted(ids)  # disjoint and complete


@pytest.mark.slow
def test_annotations_parse_with_epicdata(mini_epic: MiniEpic) -> None:
    annotations = AnnotationDir(mini_epic.annotations_dir)
    tables = {split: annotations.table(split) for split in SPLIT_FILES}
    for split, table in tables.items():
        assert set(table.video_ids) == set(mini_epic.splits[split])
        assert table.labelled == (split != "test")
    assert 150 <= len(tables["train"]) <= 250
    assert 40 <= len(tables["validation"]) <= 80
    assert len(tables["test"]) > 0
    verbs, nouns = annotations.verb_classes(), annotations.noun_classes()
    assert (len(verbs), len(nouns)) == (97, 300)
    train = tables["train"]
    assert set(train.verb_classes.tolist()) == {0, 1, 2, 3}
    assert set(train.noun_classes.tolist()) == {0, 1, 2, 3, 4}
    assert set(tables["validation"].verb_classes.tolist()) <= {0, 1, 2, 3}
    assert verbs[0].instances == ("verb-00", "verb-00-alt") and nouns[1].instances == ("noun:001",)

    info = {row.video_id: row for row in annotations.video_info()}
    assert set(info) == {v.video_id for v in mini_epic.videos}
    for video in mini_epic.videos:
        row = info[video.video_id]
        assert (row.width, row.height) == (320, 180)
        assert abs(row.fps - video.native_fps) < 1e-9 and abs(row.duration - video.duration) < 1e-6

    # Tail classes are the rare ones in training: every unused class and the rarest used one.
    counts = np.bincount(train.verb_classes, minlength=97)
    tail_verbs = annotations.tail_verbs()
    assert int(np.argmin(np.where(counts > 0, counts, counts.max() + 1))) in tail_verbs
    assert set(np.flatnonzero(counts == 0).tolist()) <= tail_verbs
    assert {0, 1} & tail_verbs == set() and len(annotations.tail_nouns()) < 300

    seen = set(train.participant_ids)
    for split in ("validation", "test"):
        unseen = annotations.unseen_participants(split)
        assert unseen and unseen == set(tables[split].participant_ids) - seen


@pytest.mark.slow
def test_annotations_stay_inside_their_videos(mini_epic: MiniEpic) -> None:
    annotations = AnnotationDir(mini_epic.annotations_dir)
    durations = {row.video_id: row.duration for row in annotations.video_info()}
    for split in SPLIT_FILES:
        for seg in annotations.segments(split):
            rate = frame_rate_for(seg.video_id)
            assert seg.narration_id.startswith(f"{seg.video_id}_")
            assert 0.5 <= seg.stop_seconds - seg.start_seconds <= 3.0
            assert seg.start_frame == max(1, math.floor(seg.start_seconds * rate))
            assert seg.stop_frame == math.floor(seg.stop_seconds * rate)
            assert (
                1 <= seg.start_frame <= seg.stop_frame <= math.floor(durations[seg.video_id] * rate)
            )


@pytest.mark.slow
def test_class_files_have_the_official_format(mini_epic: MiniEpic) -> None:
    for name in (VERB_CLASSES_FILE, NOUN_CLASSES_FILE):
        data = (mini_epic.annotations_dir / name).read_bytes()
        assert data.startswith(b"id,key,instances,category\r\n")
        assert not data.endswith(b"\n")
        assert data.count(b"\n") == data.count(b"\r\n")
    verbs = (mini_epic.annotations_dir / VERB_CLASSES_FILE).read_bytes().decode()
    assert (
        "0,verb-00,\"['verb-00', 'verb-00-alt']\",group 0\r\n1,verb-01,['verb-01'],group 1" in verbs
    )
    train = (mini_epic.annotations_dir / SPLIT_FILES["train"]).read_bytes()
    assert b"\r" not in train and train.endswith(b"\n")


@pytest.mark.slow
def test_same_seed_same_bytes_and_cli(tmp_path: Path) -> None:
    """Two runs with one seed (the library and the CLI) agree byte for byte; another seed not."""
    args = dict(seed=7, num_videos=3, size=(160, 90))
    first = make_mini_epic(tmp_path / "a", **args)
    result = CliRunner().invoke(
        main, ["--out", str(tmp_path / "b"), "--seed", "7", "--videos", "3", "--size", "160x90"]
    )
    assert result.exit_code == 0, result.output
    other = make_mini_epic(tmp_path / "c", seed=8, num_videos=3, size=(160, 90))

    names = sorted(p.name for p in first.annotations_dir.iterdir())
    assert len(names) == 10
    for name in names:
        assert (tmp_path / "b" / "annotations" / name).read_bytes() == (
            first.annotations_dir / name
        ).read_bytes()
    for video in first.videos:
        twin = tmp_path / "b" / video.path.relative_to(tmp_path / "a")
        assert twin.read_bytes() == video.path.read_bytes()
    for split_file in SPLIT_FILES.values():
        assert (other.annotations_dir / split_file).read_bytes() != (
            first.annotations_dir / split_file
        ).read_bytes()

    # The CLI prints what is on disk: every video and the segment count of every split.
    annotations = AnnotationDir(first.annotations_dir)
    for video in first.videos:
        assert video.video_id in result.output
    for split in SPLIT_FILES:
        assert (
            f"{split}" in result.output
            and f" {len(annotations.table(split))} segments" in result.output
        )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "320"], "is not WIDTHxHEIGHT"),
        (["--size", "321x180"], "must be even"),
        (["--videos", "2"], "2 is not in the range"),
    ],
)
def test_cli_rejects_bad_options(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "out").exists()


def test_refuses_a_folder_holding_other_videos(tmp_path: Path) -> None:
    stray = tmp_path / "EPIC-KITCHENS" / "P09" / "videos" / "P09_01.MP4"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"")
    with pytest.raises(EpicInputError, match="P09_01.MP4"):
        make_mini_epic(tmp_path)
    result = CliRunner().invoke(main, ["--out", str(tmp_path)])
    assert result.exit_code == 2 and "pass an empty --out folder" in result.output
    assert not (tmp_path / "annotations").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(size=(321, 180)), "must be even"),
        (dict(fps="fast"), "not a rational"),
        (dict(duration=1.0, segments=[(0.5, 1.5, 0, 0)]), "0 <= start < stop"),
        (dict(fps="90", duration=800.0), "the stamp holds"),
    ],
)
def test_make_video_rejects_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_video(tmp_path / "P01_01.MP4", **kwargs)
