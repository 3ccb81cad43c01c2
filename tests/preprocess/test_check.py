"""`epic-check`: damage in a published shard is found and named, with the shards to redo."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import lmdb
import pytest
from click.testing import CliRunner

from epicdata.errors import ExitCode, StoreError
from epicdata.layout import SHARD_META_KEY, checksum_key, frame_key, shard_path, video_meta_key
from epicdata.lmdb_env import open_shard_readonly
from epicdata.manifest import ShardPlan
from epicdata.ranges import array_spec
from preprocess import check as check_module
from preprocess.check import CheckReport, ShardCheck, check_store, format_report
from preprocess.cli import check
from preprocess.extract import run_shard
from preprocess.plan import plan_store


@pytest.fixture
def store(small_store: dict[str, Path]) -> dict[str, Path]:
    """small_store extracted: this test's own, to damage (readers use small_store_extracted_ro)."""
    run_shard(store_root=small_store["store"], shard_index=0, tmp_dir=small_store["tmp"])
    return small_store


def _check(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(check, list(args))
    return result.exit_code, result.stdout


def test_clean_store_passes_with_table_and_json(
    small_store_extracted_ro: dict[str, Path],
) -> None:
    store = small_store_extracted_ro
    code, output = _check(
        "--store", str(store["store"]), "--annotations", str(store["annotations"])
    )
    assert code == 0, output
    assert "shard  videos" in output and "is complete" in output
    code, output = _check("--store", str(store["store"]), "--json", "--deep")
    assert code == 0
    data = json.loads(output)
    assert data["ok"] and data["shards"][0]["videos"] == 2 and data["resubmit_indices"] == []


def test_flipped_byte_in_a_jpeg_is_reported_with_video_and_frame(store: dict[str, Path]) -> None:
    path = shard_path(store["store"], 0)
    env = open_shard_readonly(path)
    with env.begin() as txn:
        jpeg = txn.get(frame_key("P01_101", 40))
    env.close()
    data = bytearray(path.read_bytes())
    offset = data.find(jpeg)
    assert offset > 0 and data.find(jpeg, offset + 1) == -1
    data[offset + len(jpeg) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    code, output = _check("--store", str(store["store"]))
    assert code == ExitCode.STORE_INCOMPLETE
    assert "shard 0: P01_101 frame 40: checksum mismatch" in output
    assert "epic-slurm submit extract" in output and "--array 0 --force" in output


def test_truncated_shard_is_reported_without_crashing(store: dict[str, Path]) -> None:
    path = shard_path(store["store"], 0)
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)
    report = check_store(store["store"])
    assert not report.ok and report.resubmit_indices == [0]
    assert "truncated" in report.problems[0] and "shard-00000.lmdb" in report.problems[0]


def test_missing_shard_is_reported(small_store_ro: dict[str, Path]) -> None:
    report = check_store(small_store_ro["store"])
    assert report.resubmit_indices == [0] and "not published" in report.problems[0]
    assert "--force" not in report.resubmit_command  # nothing published to redo
    assert report.resubmit_command.startswith("epic-slurm submit")


def test_csv_naming_a_video_not_in_the_plan_is_reported(
    small_store_extracted_ro: dict[str, Path], tmp_path: Path, epic_files
) -> None:
    store = small_store_extracted_ro
    epic_files.write_test_split(tmp_path / "other", [("P01_01", 0.2, 1.5), ("P09_01", 0.0, 1.0)])
    code, output = _check("--store", str(store["store"]), "--annotations", str(tmp_path / "other"))
    assert code == ExitCode.STORE_INCOMPLETE
    assert "names video P09_01, which is not in the store's plan" in output


def test_segments_past_the_stored_end_are_reported(
    small_store_extracted_ro: dict[str, Path], tmp_path: Path, epic_files
) -> None:
    store = small_store_extracted_ro
    # P01_01 is 2 s at R = 60 (120 frames); a segment to 2.5 s ends 30 frames past it.
    epic_files.write_test_split(tmp_path / "late", [("P01_01", 0.2, 2.5), ("P01_101", 0.5, 1.9)])
    report = check_store(store["store"], annotations_dir=tmp_path / "late")
    assert any("P01_01: 1 segments end past the last stored frame" in p for p in report.problems)


# ----------------------------------------------------------------------------- damaged metadata


def _replace_in_shard(store: Path, old: bytes, new: bytes) -> None:
    """Overwrite the one occurrence of ``old`` in shard 0's file (same length)."""
    path = shard_path(store, 0)
    data = path.read_bytes()
    assert len(old) == len(new) and data.count(old) == 1, old
    path.write_bytes(data.replace(old, new))


@pytest.mark.parametrize(
    ("old", "new", "row"),
    [
        # Each used to end in a traceback: TypeError (unknown key), JSONDecodeError.
        (
            b'"total_frames": ',
            b'"total_framez": ',
            "shard 0: shard metadata unreadable (shard metadata has unknown fields 'total_framez')",
        ),
        (
            b'{"format_version": 2',
            b'z"format_version": 2',
            "shard 0: shard metadata unreadable (Expecting value: line 1 column 1 (char 0))",
        ),
        (
            b'"stored_ranges": [[1, 120]]',
            b'"stored_ranges": {[1, 120]]',
            "shard 0: P01_01: metadata unreadable (Expecting property name",
        ),
    ],
)
def test_flipped_byte_in_meta_json_is_a_problem_row_not_a_traceback(
    store: dict[str, Path], old: bytes, new: bytes, row: str
) -> None:
    _replace_in_shard(store["store"], old, new)
    result = CliRunner().invoke(check, ["--store", str(store["store"])])
    assert result.exit_code == ExitCode.STORE_INCOMPLETE, result.output
    assert f"problem: {row}" in result.output
    assert "resubmit shards 0:" in result.output and "Traceback" not in result.output


def test_malformed_metadata_and_checksums_are_problem_rows(store: dict[str, Path]) -> None:
    path = shard_path(store["store"], 0)
    env = lmdb.open(str(path), subdir=False, lock=False, map_size=path.stat().st_size * 2)
    with env.begin(write=True) as txn:
        txn.put(SHARD_META_KEY, b"[]")
        meta = json.loads(txn.get(video_meta_key("P01_101")))
        txn.put(video_meta_key("P01_101"), json.dumps({**meta, "rate": "50"}).encode())
        txn.put(checksum_key("P01_01"), txn.get(checksum_key("P01_01"))[:-3])
    env.close()
    report = check_store(store["store"])
    assert report.resubmit_indices == [0]
    assert report.problems[:3] == [
        "shard 0: shard metadata unreadable (shard metadata is [], not a JSON object)",
        "shard 0: P01_01: checksums missing or not one per stored frame",
        "shard 0: P01_101: metadata unreadable (video metadata field 'rate' is \"50\", expected int)",
    ]


def test_stray_keys_are_named(store: dict[str, Path]) -> None:
    path = shard_path(store["store"], 0)
    env = lmdb.open(str(path), subdir=False, lock=False, map_size=path.stat().st_size * 2)
    with env.begin(write=True) as txn:
        txn.put(frame_key("P01_01", 9999), b"not a planned frame")
    env.close()
    (problem,) = check_store(store["store"]).problems
    assert problem.endswith(": stray keys P01_01/0000009999")


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda m: [], "the manifest is [], not a JSON object"),
        (lambda m: {**m, "params": [1]}, "the manifest field 'params' is [1]"),
        (lambda m: {k: v for k, v in m.items() if k != "shards"}, "lacks field 'shards'"),
        (
            lambda m: {**m, "shards": [{"index": "0", "videos": []}]},
            "shards[0] field 'index' is \"0\", expected int",
        ),
        (
            lambda m: {**m, "shards": [{**m["shards"][0], "videos": [{"video_id": "P01_01"}]}]},
            "shards[0].videos[0] lacks field",
        ),
        (  # a kind from a newer release is refused, never decoded as a video
            lambda m: {
                **m,
                "shards": [
                    {
                        **m["shards"][0],
                        "videos": [{**m["shards"][0]["videos"][0], "source_kind": "depth"}],
                    }
                ],
            },
            "shards[0].videos[0] field 'source_kind' is \"depth\", not one of ('video', "
            "'frames', 'flow')",
        ),
    ],
)
def test_malformed_manifest_is_a_clear_error_not_a_traceback(
    store: dict[str, Path], edit: Callable[[dict], object], needle: str
) -> None:
    manifest = store["store"] / "manifest.json"
    manifest.write_text(json.dumps(edit(json.loads(manifest.read_text()))))
    result = CliRunner().invoke(check, ["--store", str(store["store"])])
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert errors[0].startswith(f"error: malformed manifest ({manifest}: ")
    assert (
        needle in errors[0] and "re-plan the store with the same `epic-extract plan`" in errors[0]
    )


# ----------------------------------------------------------------------------- isolation


def test_lmdb_abort_on_one_shard_is_a_problem_row_and_the_other_shards_are_checked(
    two_shards_ro: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read_shard = check_module._read_shard

    def abort_on_shard_0(path: Path, plan: ShardPlan, params: dict, deep: bool) -> object:
        if plan.index == 0:
            os.abort()  # what LMDB does when one of its assertions fails
        return read_shard(path, plan, params, deep)

    monkeypatch.setattr(check_module, "_read_shard", abort_on_shard_0)
    checked = []
    report = check_store(two_shards_ro, on_shard=lambda: checked.append(1))
    assert len(checked) == 2 and report.shards[1].problems == [] and report.shards[1].frames
    assert report.problems == [
        "shard 0: reading shard-00000.lmdb killed the checker process (signal 6, LMDB "
        "assertion): the shard is corrupt"
    ]
    code, output = _check("--store", str(two_shards_ro))
    assert code == ExitCode.STORE_INCOMPLETE
    assert "resubmit shards 0:\n" in output and "--array 0 --force" in output


@pytest.mark.slow
def test_shard_whose_read_hangs_is_killed_and_reported(
    two_shards_ro: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read_shard = check_module._read_shard

    def hang_on_shard_0(path: Path, plan: ShardPlan, params: dict, deep: bool) -> object:
        if plan.index == 0:
            time.sleep(3600)  # a B-tree whose pages point back up loops like this
        return read_shard(path, plan, params, deep)

    monkeypatch.setattr(check_module, "_read_shard", hang_on_shard_0)
    monkeypatch.setattr(check_module, "SHARD_TIMEOUT_BASE_S", 2.0)
    checked = []
    report = check_store(two_shards_ro, on_shard=lambda: checked.append(1))
    assert len(checked) == 2 and 0 in report.resubmit_indices
    assert (
        report.shards[0]
        .problems[0]
        .startswith("reading shard-00000.lmdb did not finish within 2 s: the shard is corrupt")
    )


def test_a_bug_in_the_shard_reader_is_raised_not_reported_as_a_damaged_shard(
    two_shards_ro: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A problem row would send every shard back to extraction for a bug in the checker.
    def buggy(path: Path, plan: ShardPlan, params: dict, deep: bool) -> object:
        raise ZeroDivisionError("injected bug")

    monkeypatch.setattr(check_module, "_read_shard", buggy)
    with pytest.raises(RuntimeError, match="ZeroDivisionError: injected bug"):
        check_store(two_shards_ro)


def test_a_shard_made_from_another_file_than_the_plans_is_reported(
    store: dict[str, Path],
) -> None:
    manifest = store["store"] / "manifest.json"
    data = json.loads(manifest.read_text())
    video = data["shards"][0]["videos"][0]
    video["fingerprint"] = "1:" + "0" * 32
    manifest.write_text(json.dumps(data))
    code, output = _check("--store", str(store["store"]))
    assert code == ExitCode.STORE_INCOMPLETE
    assert f"{video['video_id']}: extracted from another file than the plan's" in output


# ----------------------------------------------------------------------------- resubmit lines


def _expand(spec: str) -> list[int]:
    """An --array spec back to its indices (the oracle of the tests below)."""
    out: list[int] = []
    for part in spec.split(","):
        first, _, last = part.partition("-")
        out += range(int(first), int(last or first) + 1)
    return out


@pytest.mark.parametrize(
    "indices",
    [[0], [3, 7], list(range(40)), [0, 1, 2, 3, 7], [9, 1, 2, 2, 5, 6], [*range(5), *range(6, 9)]],
)
def test_array_spec_is_compact_and_names_exactly_the_indices(indices: list[int]) -> None:
    spec = array_spec(indices)
    assert _expand(spec) == sorted(set(indices))
    parts = [_expand(part) for part in spec.split(",")]
    # Compact: no two parts could be one range.
    assert all(a[-1] + 1 < b[0] for a, b in zip(parts, parts[1:], strict=False)), spec


def test_resubmit_line_of_40_missing_shards_is_a_range_not_a_list() -> None:
    # Regression: `--array 0,1,2,...,39` where `0-39` belongs, in the table and the line.
    shards = [ShardCheck(index=i, path=f"s{i}", published=False, problems=["x"]) for i in range(40)]
    shards.append(ShardCheck(index=40, path="s40", published=True))
    report = CheckReport(store="/store", shards=shards)
    assert report.resubmit_command.endswith("--store /store --array 0-39")
    assert "resubmit shards 0-39:\n" in format_report(report)
    assert "0,1" not in format_report(report)


def test_two_missing_shards_are_resubmitted_as_a_range(
    small_store_ro: dict[str, Path], tmp_path: Path
) -> None:
    store = tmp_path / "store"
    plan_store(
        store_root=store,
        annotations_dir=small_store_ro["annotations"],
        videos_root=small_store_ro["videos"],
        splits=("test",),
        shards=2,
    )
    code, output = _check("--store", str(store))
    assert code == ExitCode.STORE_INCOMPLETE
    assert "resubmit shards 0-1:\n" in output and output.rstrip().endswith("--array 0-1")


def test_sizing_only_plan_is_refused_not_reported_as_shards_to_resubmit(
    small_store_ro: dict[str, Path], tmp_path: Path
) -> None:
    # Regression: every shard of a `plan --video-info` store was "not published", with a
    # resubmit line that could never succeed (run refuses sizing plans).
    info = tmp_path / "video_info.csv"
    info.write_text(
        "video_id,duration,fps,resolution\nP01_01,2.0,59.94,192x108\nP01_101,2.0,50,192x108\n"
    )
    store = tmp_path / "store"
    plan_store(
        store_root=store,
        annotations_dir=small_store_ro["annotations"],
        video_info=info,
        splits=("test",),
        shards=2,
    )
    result = CliRunner().invoke(check, ["--store", str(store)])
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert line.startswith("error: sizing-only plan") and str(store / "manifest.json") in line
    assert "epic-extract plan --videos DIR" in line
    assert "not published" not in result.output and "epic-slurm submit" not in result.output
    assert "Traceback" not in result.output
    with pytest.raises(StoreError, match="sizing-only plan"):  # the pipeline's check too
        check_store(store)


# ----------------------------------------------------------------------------- --compare-frames


@pytest.mark.parametrize("content", [b"", b"not a tar" * 200])
def test_compare_frames_with_an_unreadable_tar_is_a_bad_source_naming_it(
    small_store_extracted_ro: dict[str, Path], tmp_path: Path, content: bytes
) -> None:
    # Regression: count_frames let tarfile's ReadError through, a traceback and exit 1.
    tar = tmp_path / "frames" / "P01" / "rgb_frames" / "P01_01.tar"
    tar.parent.mkdir(parents=True)
    tar.write_bytes(content)
    store = small_store_extracted_ro["store"]
    result = CliRunner().invoke(
        check, ["--store", str(store), "--compare-frames", str(tar.parents[2])]
    )
    assert result.exit_code == ExitCode.BAD_SOURCE, result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert f"({tar})" in line and "download the video's frames again" in line
    assert "Traceback" not in result.output
