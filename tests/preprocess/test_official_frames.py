"""`epic-extract plan --frames`: a store built from EPIC's official RGB frame tars holds
their exact bytes, and a missing, cut, foreign or short tar fails only its own shard.

The official-style tars are made from the mini-EPIC's validation and test videos with the
official-style command (``ffmpeg -i X -vf fps=R,scale=-2:256 -q:v 4 frame_%010d.jpg``, then
``tar`` of the folder: members ``./frame_0000000001.jpg`` ...). The erratum rule is tested
with a monkeypatched erratum set naming a mini-EPIC video (the real P01_109 and P27_103 are
not in the mini-EPIC), since the rule, not the ids, is what the code decides. The mini-EPIC's
ids are real ones, so its tars lie where official tars do: every test but the md5 one runs
with an empty official md5 table (tests/preprocess/test_frame_tars.py tests the check).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from epicdata.errors import ExitCode
from epicdata.ffmpeg_bin import ffmpeg_path
from epicdata.frames import frame_rate_for
from epicdata.layout import shard_path
from epicdata.manifest import SOURCE_FRAMES, SOURCE_VIDEO, Manifest
from epicdata.store import FrameStore
from epicdata.synthetic import MiniEpic
from preprocess import official_frames as frames_module
from preprocess import plan as plan_module
from preprocess.check import check_store, format_report
from preprocess.cli import check, extract
from preprocess.compare import PSNR_THRESHOLD_DB, compare_frames

pytestmark = pytest.mark.slow  # every test needs the mini-EPIC's frames and tars

SPLITS = "validation,test"
OFFICIAL_MD5_TABLE = frames_module.md5_table


@pytest.fixture(autouse=True)
def _not_official_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mini-EPIC's tars are not the official downloads: no official md5 to match."""
    monkeypatch.setattr(frames_module, "md5_table", dict)


def _official_folder(video: Path, video_id: str, out: Path) -> Path:
    out.mkdir(parents=True)
    rate = frame_rate_for(video_id)
    subprocess.run(
        [ffmpeg_path(), "-nostdin", "-loglevel", "error", "-i", str(video), "-vf",
         f"fps={rate},scale=-2:256", "-q:v", "4", str(out / "frame_%010d.jpg")],
        check=True,
    )  # fmt: skip
    return out


@pytest.fixture(scope="session")
def official_frames(mini_epic: MiniEpic, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Unpacked official-style frame folders of the validation and test videos:
    ``<root>/PXX/rgb_frames/PXX_YY/frame_NNNNNNNNNN.jpg``."""
    root = tmp_path_factory.mktemp("official") / "EPIC-KITCHENS"
    for video in mini_epic.videos:
        if video.video_id in mini_epic.splits["train"]:
            continue
        vid = video.video_id
        _official_folder(video.path, vid, root / vid[:3] / "rgb_frames" / vid)
    return root


def make_tars(folders: Path, out: Path, *, dot_slash: bool = True) -> Path:
    """The official layout: ``<out>/PXX/rgb_frames/PXX_YY.tar`` made by ``tar`` from the
    folders (members ``./frame_...jpg``, or ``frame_...jpg`` without ``dot_slash``)."""
    for folder in sorted(folders.glob("*/rgb_frames/*")):
        tar = out / folder.parent.relative_to(folders) / f"{folder.name}.tar"
        tar.parent.mkdir(parents=True, exist_ok=True)
        members = ["."] if dot_slash else sorted(p.name for p in folder.iterdir())
        subprocess.run(["tar", "-cf", str(tar), "-C", str(folder), *members], check=True)
    return out


def tar_members(tar: Path) -> dict[int, bytes]:
    out = {}
    with tarfile.open(tar) as archive:
        for member in archive.getmembers():
            if member.isfile():
                number = int(Path(member.name).stem.split("_")[1])
                out[number] = archive.extractfile(member).read()
    return out


def _invoke(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(extract, [str(a) for a in args])
    return result.exit_code, result.output


def plan_and_run(
    store: Path, annotations: Path, *sources: object, keep: str = "all", shards: int = 1
) -> tuple[int, str]:
    code, output = _invoke(
        "plan", "--annotations", annotations, "--store", store, "--splits", SPLITS,
        "--keep", keep, "--shards", shards, *sources,
    )  # fmt: skip
    assert code == 0, output
    return _invoke("run", "--store", store, "--all", "--tmp-dir", store.parent / "scratch")


@pytest.mark.parametrize("keep", ["all", "segments"])
def test_store_from_official_tars_holds_their_exact_bytes(
    mini_epic: MiniEpic, official_frames: Path, tmp_path: Path, keep: str
) -> None:
    tars = make_tars(official_frames, tmp_path / "tars")
    store = tmp_path / "store"
    code, output = plan_and_run(store, mini_epic.annotations_dir, "--frames", tars, keep=keep)
    assert code == 0, output
    reader = FrameStore(store)
    for vid in (*mini_epic.splits["validation"], *mini_epic.splits["test"]):
        members = tar_members(tars / vid[:3] / "rgb_frames" / f"{vid}.tar")
        meta = reader.video_meta(vid)
        assert meta.source_kind == SOURCE_FRAMES
        assert meta.decoded_frames == len(members)
        assert (meta.width, meta.height) == (456, 256)
        stored = [f for a, b in meta.stored_ranges for f in range(a, b + 1)]
        if keep == "all":
            assert stored == sorted(members)
        assert reader.read_frames(vid, stored) == [members[f] for f in stored]
    reader.close()  # LMDB refuses a second open of a shard in one process
    report = check_store(store, annotations_dir=mini_epic.annotations_dir, deep=True)
    assert report.ok, report.problems
    assert "sources: 0 videos from MP4, 3 from official frames" in format_report(report)
    assert list((tmp_path / "scratch").iterdir()) == []


def test_unpacked_folders_and_names_without_dot_slash_give_the_same_bytes(
    mini_epic: MiniEpic, official_frames: Path, tmp_path: Path
) -> None:
    tars = make_tars(official_frames, tmp_path / "tars", dot_slash=False)
    from_tars, from_folders = tmp_path / "a" / "store", tmp_path / "b" / "store"
    assert plan_and_run(from_tars, mini_epic.annotations_dir, "--frames", tars)[0] == 0
    code, output = plan_and_run(
        from_folders, mini_epic.annotations_dir, "--frames", official_frames
    )
    assert code == 0, output
    a, b = FrameStore(from_tars), FrameStore(from_folders)
    for vid in a.video_ids:
        frames = list(range(1, a.video_meta(vid).decoded_frames + 1))
        on_disk = official_frames / vid[:3] / "rgb_frames" / vid
        expected = [(on_disk / f"frame_{f:010d}.jpg").read_bytes() for f in frames]
        assert a.read_frames(vid, frames) == expected == b.read_frames(vid, frames)


def _cut(tar: Path) -> None:
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2 + 100])


def _foreign_member(tar: Path) -> None:
    folder = tar.parent / "unpacked"
    folder.mkdir()
    subprocess.run(["tar", "-xf", str(tar), "-C", str(folder)], check=True)
    (folder / "frame_0000000005.jpg").write_bytes(b"<html>not found</html>")
    subprocess.run(["tar", "-cf", str(tar), "-C", str(folder), "."], check=True)
    shutil.rmtree(folder)


def _too_few(tar: Path) -> None:
    folder = tar.parent / "unpacked"
    folder.mkdir()
    subprocess.run(["tar", "-xf", str(tar), "-C", str(folder)], check=True)
    frames = sorted(folder.iterdir())
    for path in frames[len(frames) // 2 :]:
        path.unlink()
    subprocess.run(["tar", "-cf", str(tar), "-C", str(folder), "."], check=True)
    shutil.rmtree(folder)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (Path.unlink, "no such file or folder"),
        (_cut, "unreadable or truncated tar"),
        (_foreign_member, "member ./frame_0000000005.jpg: not a JPEG"),
        (_too_few, "the frames do not reach the annotations"),
    ],
    ids=["missing", "truncated", "not-a-jpeg", "too-few-frames"],
)
def test_a_bad_tar_fails_only_its_shard_naming_it(
    mini_epic: MiniEpic,
    official_frames: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    damage,
    message: str,
) -> None:
    # A damaged download is planned (plan reads the first and last block of a tar; run
    # reads it all); a missing tar is deleted after planning (a damaged one would then be
    # "changed since plan", by its fingerprint). A cut tar is refused by plan now
    # (test_plan_refuses_a_cut_tar_naming_it): run must refuse it all the same, as it
    # does a tar a plan of an earlier release let through.
    if damage is _cut:
        monkeypatch.setattr(plan_module, "frames_problem", lambda path: None)
    tars = make_tars(official_frames, tmp_path / "tars")
    store = tmp_path / "store"
    bad = mini_epic.splits["test"][0]
    bad_tar = tars / bad[:3] / "rgb_frames" / f"{bad}.tar"
    if damage is not Path.unlink:
        damage(bad_tar)
    code, output = _invoke(
        "plan", "--annotations", mini_epic.annotations_dir, "--store", store, "--splits",
        SPLITS, "--keep", "all", "--shards", "3", "--frames", tars,
    )  # fmt: skip
    assert code == 0, output
    if damage is Path.unlink:
        damage(bad_tar)
    code, output = _invoke("run", "--store", store, "--all", "--tmp-dir", tmp_path / "scratch")
    assert code == ExitCode.BAD_SOURCE, output
    (line,) = [x for x in output.splitlines() if x.startswith("error:")]
    assert "1 of 3 shards not published" in line and f"({bad})" in line, line
    assert message in output, output
    manifest = Manifest.load(store)
    (bad_shard,) = [s.index for s in manifest.shards if bad in {v.video_id for v in s.videos}]
    assert not shard_path(store, bad_shard).exists()
    published = [s.index for s in manifest.shards if shard_path(store, s.index).exists()]
    assert published == sorted(set(range(3)) - {bad_shard})
    assert list((tmp_path / "scratch").iterdir()) == []


def _cut_at_member(tar: Path, missing: int = 3) -> None:
    """``tar`` kept only up to the header of its last ``missing`` members: whole members and
    no end-of-archive block, a download cut at a member boundary."""
    with tarfile.open(tar) as archive:
        offsets = [m.offset for m in archive.getmembers()]
    with tar.open("r+b") as handle:
        handle.truncate(offsets[-missing])


def _plan(store: Path, annotations: Path, tars: Path) -> tuple[int, str]:
    return _invoke(
        "plan", "--annotations", annotations, "--store", store, "--splits", SPLITS,
        "--keep", "all", "--shards", "3", "--frames", tars,
    )  # fmt: skip


@pytest.mark.parametrize("cut", [_cut, _cut_at_member], ids=["in-a-member", "at-a-boundary"])
def test_plan_refuses_a_cut_tar_naming_it(
    mini_epic: MiniEpic, official_frames: Path, tmp_path: Path, cut
) -> None:
    tars = make_tars(official_frames, tmp_path / "tars")
    bad = mini_epic.splits["test"][0]
    bad_tar = tars / bad[:3] / "rgb_frames" / f"{bad}.tar"
    cut(bad_tar)
    store = tmp_path / "store"
    code, output = _plan(store, mini_epic.annotations_dir, tars)
    assert code == ExitCode.BAD_SOURCE, output
    assert "1 of 3 videos cannot be planned" in output, output
    assert f"{bad}: {bad_tar}: truncated (" in output, output
    assert not (store / "manifest.json").exists()


def test_tar_cut_at_a_member_boundary_fails_run_and_check_regression(
    mini_epic: MiniEpic, official_frames: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Members in frame order, the last three cut: three frames short of its video, within
    # the count tolerance and no gap, so before the fix plan, run and epic-check all
    # passed. Planned as a plan of an earlier release would.
    monkeypatch.setattr(plan_module, "frames_problem", lambda path: None)
    tars = make_tars(official_frames, tmp_path / "tars", dot_slash=False)
    bad = mini_epic.splits["test"][0]
    _cut_at_member(tars / bad[:3] / "rgb_frames" / f"{bad}.tar")
    store = tmp_path / "store"
    assert _plan(store, mini_epic.annotations_dir, tars)[0] == 0
    code, output = _invoke("run", "--store", store, "--all", "--tmp-dir", tmp_path / "scratch")
    assert code == ExitCode.BAD_SOURCE, output
    assert f"{bad}.tar: unreadable or truncated tar" in output, output
    assert "no end-of-archive zero block after the last member" in output, output
    manifest = Manifest.load(store)
    (bad_shard,) = [s.index for s in manifest.shards if bad in {v.video_id for v in s.videos}]
    assert not shard_path(store, bad_shard).exists()
    code, output = _check("--store", store)
    assert code == ExitCode.STORE_INCOMPLETE, output


def test_tar_at_an_official_path_with_another_md5_fails_its_shard(
    mini_epic: MiniEpic, official_frames: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The mini-EPIC's ids are real ones: with the shipped table its tars claim to be the
    # official downloads of those videos, and their md5s say they are not.
    monkeypatch.setattr(frames_module, "md5_table", OFFICIAL_MD5_TABLE)
    tars = make_tars(official_frames, tmp_path / "tars")
    claimed = {
        vid
        for vid in (*mini_epic.splits["validation"], *mini_epic.splits["test"])
        if frames_module.official_md5s(tars / vid[:3] / "rgb_frames" / f"{vid}.tar")
    }
    assert claimed
    store = tmp_path / "store"
    assert _plan(store, mini_epic.annotations_dir, tars)[0] == 0
    code, output = _invoke("run", "--store", store, "--all", "--tmp-dir", tmp_path / "scratch")
    assert code == ExitCode.BAD_SOURCE, output
    assert "but the official download has md5" in output, output
    manifest = Manifest.load(store)
    for shard in manifest.shards:
        is_claimed = bool(claimed & {v.video_id for v in shard.videos})
        assert shard_path(store, shard.index).exists() is not is_claimed, shard.index
    code, output = _check("--store", store)
    assert code == ExitCode.STORE_INCOMPLETE, output


def test_erratum_videos_are_decoded_from_their_videos_when_given(
    mini_epic: MiniEpic, official_frames: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = mini_epic.splits["validation"][0]
    monkeypatch.setattr(plan_module, "ERRATUM_VIDEO_IDS", frozenset({wrong}))
    tars = make_tars(official_frames, tmp_path / "tars")
    store = tmp_path / "store"
    code, output = _invoke(
        "plan", "--annotations", mini_epic.annotations_dir, "--store", store, "--splits",
        SPLITS, "--frames", tars, "--videos", mini_epic.videos_dir,
    )  # fmt: skip
    assert code == 0, output
    assert f"WARNING preprocess.plan: {wrong}: its official frames are wrong (erratum" in output
    assert "decoding it from" in output
    assert "sources: 1 videos decoded from MP4, 2 copied from official frames" in output
    code, output = _invoke("run", "--store", store, "--all", "--tmp-dir", tmp_path / "scratch")
    assert code == 0, output
    planned = {v["video_id"]: v for s in json.loads((store / "manifest.json").read_text())["shards"] for v in s["videos"]}  # fmt: skip
    # The default, video, is left out of the manifest (older releases read it).
    assert planned[wrong].get("source_kind", SOURCE_VIDEO) == SOURCE_VIDEO
    reader = FrameStore(store)
    kinds = {vid: reader.video_meta(vid).source_kind for vid in reader.video_ids}
    reader.close()
    assert kinds == {vid: SOURCE_VIDEO if vid == wrong else SOURCE_FRAMES for vid in kinds}
    report = check_store(store, annotations_dir=mini_epic.annotations_dir)
    assert report.ok, report.problems
    assert "sources: 1 videos from MP4, 2 from official frames" in format_report(report)


def test_erratum_video_without_its_video_is_copied_with_a_warning(
    mini_epic: MiniEpic, official_frames: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = mini_epic.splits["validation"][0]
    monkeypatch.setattr(plan_module, "ERRATUM_VIDEO_IDS", frozenset({wrong}))
    code, output = _invoke(
        "plan", "--annotations", mini_epic.annotations_dir, "--store", tmp_path / "store",
        "--splits", SPLITS, "--frames", official_frames,
    )  # fmt: skip
    assert code == 0, output
    assert f"{wrong}: its original official frames are wrong" in output
    assert "only if its md5 is the replacement's" in output
    assert "give its video with --videos to decode it instead" in output
    assert "sources: 0 videos decoded from MP4, 3 copied from official frames" in output
    assert "decoding: 0.0 core-hours" in output


def test_plan_from_frames_reports_every_missing_tar_before_writing(
    mini_epic: MiniEpic, tmp_path: Path
) -> None:
    empty = tmp_path / "frames"
    empty.mkdir()
    store = tmp_path / "store"
    code, output = _invoke(
        "plan", "--annotations", mini_epic.annotations_dir, "--store", store, "--splits",
        SPLITS, "--frames", empty,
    )  # fmt: skip
    assert code == ExitCode.BAD_SOURCE, output
    assert "3 of 3 videos cannot be planned" in output
    for vid in (*mini_epic.splits["validation"], *mini_epic.splits["test"]):
        assert f"{vid}: missing: no {vid}.tar or {vid}/ under" in output
    assert not (store / "manifest.json").exists()


def test_frames_refuse_another_short_side(
    mini_epic: MiniEpic, official_frames: Path, tmp_path: Path
) -> None:
    code, output = _invoke(
        "plan", "--annotations", mini_epic.annotations_dir, "--store", tmp_path / "store",
        "--frames", official_frames, "--short-side", "128",
    )  # fmt: skip
    assert code == ExitCode.BAD_INPUT, output
    (line,) = [x for x in output.splitlines() if x.startswith("error:")]
    assert "--short-side 128" in line and "copied as they are" in line


# ----------------------------------------------------------------------------- compare


@pytest.fixture(scope="module")
def store_from_videos(mini_epic: MiniEpic, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The validation and test videos extracted by the store from their MP4s."""
    store = tmp_path_factory.mktemp("from_videos") / "store"
    code, output = plan_and_run(
        store, mini_epic.annotations_dir, "--videos", mini_epic.videos_dir, keep="segments"
    )
    assert code == 0, output
    return store


def _check(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(check, [str(a) for a in args])
    return result.exit_code, result.output


def test_store_from_videos_matches_official_style_frames_at_shift_0(
    store_from_videos: Path, official_frames: Path, tmp_path: Path
) -> None:
    tars = make_tars(official_frames, tmp_path / "tars")
    code, output = _check("--store", store_from_videos, "--compare-frames", tars)
    assert code == 0, output
    report = compare_frames(store_from_videos, tars)
    assert len(report.videos) == 3 and report.ok
    for video in report.videos:
        assert video.best_shift == 0 and video.extra_at_start == 0, video
        assert video.psnr_db >= PSNR_THRESHOLD_DB, video
        assert video.official_frames == video.store_frames  # same ffmpeg, same rule
    assert "compared 3 videos" in output and "3 match at shift 0" in output


def _renumbered(folders: Path, out: Path, shift: int) -> Path:
    """A copy whose frame n is the original's n - ``shift``: ``shift`` extra frames (copies
    of the first) at the start, as a decoder that emits frames early would make."""
    for folder in sorted(folders.glob("*/rgb_frames/*")):
        target = out / folder.relative_to(folders)
        target.mkdir(parents=True)
        files = sorted(folder.iterdir())
        for i in range(1, shift + 1):
            shutil.copy(files[0], target / f"frame_{i:010d}.jpg")
        for path in files:
            number = int(path.stem.split("_")[1])
            shutil.copy(path, target / f"frame_{number + shift:010d}.jpg")
    return out


@pytest.mark.parametrize("shift", [1, 2])
def test_frames_shifted_by_one_or_two_are_detected(
    store_from_videos: Path, official_frames: Path, tmp_path: Path, shift: int
) -> None:
    shifted = make_tars(_renumbered(official_frames, tmp_path / "shifted", shift), tmp_path / "t")
    code, output = _check("--store", store_from_videos, "--compare-frames", shifted)
    assert code == ExitCode.STORE_INCOMPLETE, output
    assert "MISMATCH:" in output
    report = compare_frames(store_from_videos, shifted)
    for video in report.videos:
        assert video.best_shift == shift and not video.ok, video
        assert video.extra_at_start == shift and video.extra_at_end == 0, video
        assert video.official_frames - video.store_frames == shift
        assert not video.ambiguous, video


def test_repeated_frames_prefer_the_smallest_shift_and_say_ambiguous(
    store_from_videos: Path, official_frames: Path, tmp_path: Path
) -> None:
    # A still picture (a camera repeating frames in the dark) matches at every shift.
    still = _renumbered(official_frames, tmp_path / "still", 0)
    for folder in still.glob("*/rgb_frames/*"):
        first = (folder / "frame_0000000001.jpg").read_bytes()
        for path in folder.iterdir():
            path.write_bytes(first)
    report = compare_frames(store_from_videos, still)
    # The store's frames differ from the still official ones: every shift is as bad.
    for video in report.videos:
        assert video.best_shift == 0 and video.ambiguous, video
        assert video.tied_shifts[:3] == [0, -1, 1]
        assert not video.ok  # PSNR far below the threshold
