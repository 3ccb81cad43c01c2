"""Frame numbering (DESIGN.md rule 1), proven on the real EPIC-100 annotation files."""

from __future__ import annotations

import csv
import math
from fractions import Fraction
from pathlib import Path

import pytest

from epicdata.frames import (
    expected_frame_count,
    format_timestamp,
    frame_rate_for,
    frame_time_seconds,
    is_extension_video,
    is_video_id,
    parse_timestamp,
    start_frame_at,
    stop_frame_at,
)

REAL_SPLITS = ("EPIC_100_validation.csv", "EPIC_100_test_timestamps.csv")


def _real_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# ----------------------------------------------------------------------------- video ids


@pytest.mark.parametrize(
    ("video_id", "rate"),
    [("P01_01", 60), ("P37_99", 60), ("P01_100", 50), ("P04_105", 50), ("P37_199", 50)],
)
def test_rate_is_60_for_epic55_and_50_for_extension_ids(video_id: str, rate: int) -> None:
    assert frame_rate_for(video_id) == rate
    assert is_video_id(video_id)
    assert is_extension_video(video_id) == (rate == 50)


def test_rate_override_wins_over_the_id_rule() -> None:
    assert frame_rate_for("P01_01", override=30) == 30
    assert frame_rate_for("P01_101", override=25) == 25


@pytest.mark.parametrize(
    "video_id",
    [
        "P1_01",
        "P01_1",
        "P01_001",
        "P01_200",
        "P01_1000",
        "p01_01",
        "P01-01",
        "P01_01 ",
        "",
        "P01_01\n",
        "X01_01",
        "P01_01.MP4",
    ],
)
def test_malformed_video_ids_are_rejected(video_id: str) -> None:
    assert not is_video_id(video_id)
    with pytest.raises(ValueError, match="PXX_YY or PXX_1YY"):
        is_extension_video(video_id)
    with pytest.raises(ValueError, match="PXX_YY or PXX_1YY"):
        frame_rate_for(video_id)


# ----------------------------------------------------------------------------- timestamps


@pytest.mark.parametrize(
    ("timestamp", "seconds"),
    [
        ("00:00:00.00", 0.0),
        ("00:00:01.89", 1.89),
        ("00:04:29.15", 269.15),
        ("01:02:03.5", 3723.5),
        ("00:22:13.128", 1333.128),
        ("10:00:00", 36000.0),
        (" 00:00:02.86 ", 2.86),
    ],
)
def test_parse_timestamp_gives_seconds(timestamp: str, seconds: float) -> None:
    assert parse_timestamp(timestamp) == pytest.approx(seconds, abs=1e-9)


@pytest.mark.parametrize(
    "timestamp",
    [
        "",
        "12:34",
        "00:60:00.00",
        "00:00:60.00",
        "aa:bb:cc",
        "-00:00:01.00",
        "00:00:01,50",
        "00:00:1.5",
        "00:00:01.",
        "00:00:01.50\nx",
    ],
)
def test_malformed_timestamps_are_rejected(timestamp: str) -> None:
    with pytest.raises(ValueError, match="HH:MM:SS.ff"):
        parse_timestamp(timestamp)


@pytest.mark.parametrize(
    ("seconds", "decimals", "text"),
    [
        (0.0, 2, "00:00:00.00"),
        (3723.5, 2, "01:02:03.50"),
        (269.15, 2, "00:04:29.15"),
        (59.999, 2, "00:01:00.00"),
        (1333.128, 3, "00:22:13.128"),
        (7.4, 0, "00:00:07"),
    ],
)
def test_format_timestamp(seconds: float, decimals: int, text: str) -> None:
    assert format_timestamp(seconds, decimals) == text


def test_every_real_timestamp_round_trips_through_seconds(real_annotation_file) -> None:
    count = 0
    empty = 0
    for filename in REAL_SPLITS:
        for row in _real_rows(real_annotation_file(filename)):
            for column in ("narration_timestamp", "start_timestamp", "stop_timestamp"):
                text = row[column]
                if not text:
                    empty += 1
                    continue
                decimals = len(text.rpartition(".")[2])
                assert format_timestamp(parse_timestamp(text), decimals) == text
                count += 1
    # 70 validation rows have an empty narration_timestamp; start/stop are never empty.
    assert empty == 70
    assert count == 3 * (9668 + 13092) - 70


# ----------------------------------------------------------------------------- frames


@pytest.mark.parametrize(
    ("frame", "rate", "seconds"),
    [(1, 60, 0.0), (2, 60, 1 / 60), (61, 60, 1.0), (51, 50, 1.0), (3001, 50, 60.0)],
)
def test_frame_n_is_shown_at_n_minus_1_over_r(frame: int, rate: int, seconds: float) -> None:
    assert frame_time_seconds(frame, rate) == pytest.approx(seconds)


def test_frame_zero_does_not_exist() -> None:
    with pytest.raises(ValueError, match="start at 1"):
        frame_time_seconds(0, 60)


def test_start_frame_is_at_least_1_and_stop_frame_is_floor() -> None:
    assert start_frame_at(0.0, 60) == 1
    assert start_frame_at(0.01, 60) == 1
    assert start_frame_at(1.89, 60) == 113
    assert stop_frame_at(1.89, 60) == 113
    assert stop_frame_at(0.0, 50) == 0
    assert start_frame_at(2.86, 50) == 143


@pytest.mark.parametrize(
    ("duration", "rate"),
    [(10.0, 60), (10.001, 60), (269.15, 60), (0.02, 50), (1652.152817, 60), (502.134967, 50)],
)
def test_expected_frame_count_is_ceil_of_duration_times_r(duration: float, rate: int) -> None:
    exact = Fraction(str(duration)) * rate
    assert expected_frame_count(duration, rate) == math.ceil(exact)


def test_official_frames_use_float_seconds_regression() -> None:
    """P01_11_89 starts at 00:04:29.15 and the file says 16148: exact arithmetic gives
    16149 (269.15 * 60 is 16149), the official float arithmetic 16148 (16148.999...)."""
    rate = frame_rate_for("P01_11")
    assert math.floor(Fraction("269.15") * rate) == 16149
    assert start_frame_at(parse_timestamp("00:04:29.15"), rate) == 16148


def test_official_frames_use_float_seconds_regression_real_row(real_annotation_file) -> None:
    rows = _real_rows(real_annotation_file(REAL_SPLITS[0]))
    (row,) = [r for r in rows if r["narration_id"] == "P01_11_89"]
    assert row["start_timestamp"] == "00:04:29.15"
    assert int(row["start_frame"]) == 16148
    assert start_frame_at(parse_timestamp(row["start_timestamp"]), 60) == 16148


@pytest.mark.parametrize(
    ("filename", "rows", "rate"),
    [("EPIC_100_validation.csv", 9668, 60), ("EPIC_100_test_timestamps.csv", 13092, 50)],
)
def test_frame_rule_holds_for_every_real_row(
    real_annotation_file, filename: str, rows: int, rate: int
) -> None:
    """The executable proof of rule 1: start_frame == max(1, floor(start_seconds * R)) and
    stop_frame == floor(stop_seconds * R) for 100% of rows. Validation is all EPIC-55 (R=60)
    and test all extension videos (R=50), so both rates are exercised."""
    data = _real_rows(real_annotation_file(filename))
    assert len(data) == rows
    wrong = []
    for row in data:
        video_rate = frame_rate_for(row["video_id"])
        assert video_rate == rate
        start = start_frame_at(parse_timestamp(row["start_timestamp"]), video_rate)
        stop = stop_frame_at(parse_timestamp(row["stop_timestamp"]), video_rate)
        if (start, stop) != (int(row["start_frame"]), int(row["stop_frame"])):
            wrong.append((row["narration_id"], start, stop, row["start_frame"], row["stop_frame"]))
    assert wrong == []


def test_exact_arithmetic_would_get_real_rows_wrong(real_annotation_file) -> None:
    """Why frames.py uses floats: rational arithmetic misnumbers 776 of the real rows."""
    misses = 0
    for filename in REAL_SPLITS:
        for row in _real_rows(real_annotation_file(filename)):
            rate = frame_rate_for(row["video_id"])
            for column, frame_column, low in (
                ("start_timestamp", "start_frame", 1),
                ("stop_timestamp", "stop_frame", 0),
            ):
                h, m, s = row[column].split(":")
                exact = (int(h) * 3600 + int(m) * 60 + Fraction(s)) * rate
                if max(low, math.floor(exact)) != int(row[frame_column]):
                    misses += 1
                    break
    assert misses == 776
