"""An annotation CSV with a byte that is not UTF-8 (saved as Latin-1 by a spreadsheet):
one error line and exit 2 from every command that reads it, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from epicdata.errors import ExitCode
from preprocess.cli import extract
from train.cli import train_main

#: The official header of EPIC_100_train.csv, and a real row (P01_01_0) whose narration is
#: edited the way a spreadsheet saves it in Latin-1: "open crème door".
HEADER = (
    b"narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,"
    b"start_frame,stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,"
    b"all_noun_classes\n"
)
ROW = (
    b"P01_01_0,P01,P01_01,00:00:01.089,00:00:00.14,00:00:03.37,8,202,open cr\xe8me door,open,"
    b"3,door,3,['door'],[3]\n"
)


def _annotations(folder: Path, split_file: str) -> Path:
    folder.mkdir()
    (folder / split_file).write_bytes(HEADER + ROW)
    return folder


@pytest.mark.parametrize("command", ["epic-train", "epic-extract plan"])
def test_latin1_byte_in_an_annotation_csv_exits_2_naming_file_line_and_offset_regression(
    tmp_path: Path, command: str
) -> None:
    # Regression: UnicodeDecodeError traceback (exit 1) from both commands.
    store = tmp_path / "store"
    store.mkdir()
    if command == "epic-train":
        ann = _annotations(tmp_path / "ann", "EPIC_100_train.csv")
        args = ["--store", store, "--annotations", ann, "--output-dir", tmp_path / "run"]
        result = CliRunner().invoke(train_main, [str(a) for a in [*args, "--workers", "0"]])
    else:
        ann = _annotations(tmp_path / "ann", "EPIC_100_validation.csv")
        (tmp_path / "videos").mkdir()
        args = ["plan", "--videos", tmp_path / "videos", "--annotations", ann]
        args += ["--store", store, "--splits", "validation"]
        result = CliRunner().invoke(extract, [str(a) for a in args])
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert "Traceback" not in result.output and "UnicodeDecodeError" not in result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("error:")]
    column = ROW.index(b"\xe8")
    assert line.startswith("error: byte 0xE8 is not UTF-8 (")
    where = f"line 2, byte {column + 1} of the line, offset {len(HEADER) + column} in the file"
    assert where in line
    assert str(ann) in line and line.endswith(
        "save the file as UTF-8 (the official annotation files are UTF-8)"
    )
    assert not (tmp_path / "run").exists()
