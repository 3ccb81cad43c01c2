"""`epic-check`: damage in a published shard is found and named, with the shards to redo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from epicdata.errors import ExitCode
from epicdata.store import frame_key, open_shard_readonly, shard_path
from preprocess.check import check_store
from preprocess.cli import check
from preprocess.extract import run_shard


@pytest.fixture
def store(small_store: dict[str, Path]) -> dict[str, Path]:
    run_shard(store_root=small_store["store"], shard_index=0, tmp_dir=small_store["tmp"])
    return small_store


def _check(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(check, list(args))
    return result.exit_code, result.stdout


def test_clean_store_passes_with_table_and_json(store: dict[str, Path]) -> None:
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
    assert "--array=0" in output and "EPIC_FORCE=1" in output


def test_truncated_shard_is_reported_without_crashing(store: dict[str, Path]) -> None:
    path = shard_path(store["store"], 0)
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)
    report = check_store(store["store"])
    assert not report.ok and report.resubmit_indices == [0]
    assert "truncated" in report.problems[0] and "shard-00000.lmdb" in report.problems[0]


def test_missing_shard_is_reported(small_store: dict[str, Path]) -> None:
    report = check_store(small_store["store"])
    assert report.resubmit_indices == [0] and "not published" in report.problems[0]
    assert "EPIC_FORCE" not in report.resubmit_command


def test_csv_naming_a_video_not_in_the_plan_is_reported(
    store: dict[str, Path], tmp_path: Path, epic_files
) -> None:
    epic_files.write_test_split(tmp_path / "other", [("P01_01", 0.2, 1.5), ("P09_01", 0.0, 1.0)])
    code, output = _check("--store", str(store["store"]), "--annotations", str(tmp_path / "other"))
    assert code == ExitCode.STORE_INCOMPLETE
    assert "names video P09_01, which is not in the store's plan" in output


def test_segments_past_the_stored_end_are_reported(
    store: dict[str, Path], tmp_path: Path, epic_files
) -> None:
    # P01_01 is 2 s at R = 60 (120 frames); a segment to 2.5 s ends 30 frames past it.
    epic_files.write_test_split(tmp_path / "late", [("P01_01", 0.2, 2.5), ("P01_101", 0.5, 1.9)])
    report = check_store(store["store"], annotations_dir=tmp_path / "late")
    assert any("P01_01: 1 segments end past the last stored frame" in p for p in report.problems)
