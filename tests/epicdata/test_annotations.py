"""epicdata.annotations: the real EPIC-100 files, and one test per kind of bad input."""

from __future__ import annotations

import ast
import csv
from pathlib import Path

import numpy as np
import pytest

from epicdata.annotations import (
    AnnotationDir,
    SegmentTable,
    read_classes,
    read_segments,
    read_video_info,
)
from epicdata.errors import AnnotationError

# The official headers, as in the released files.
LABELLED_HEADER = (
    "narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,"
    "start_frame,stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes"
)
TEST_HEADER = (
    "narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,"
    "start_frame,stop_frame"
)
CLASS_HEADER = "id,key,instances,category"
VALIDATION = "EPIC_100_validation.csv"

# Real rows of EPIC_100_validation.csv (P01_11_0, P01_11_1).
ROW_A = (
    "P01_11_0,P01,P01_11,00:00:00.560,00:00:00.00,00:00:01.89,1,113,"
    "take plate,take,0,plate,2,['plate'],[2]"
)
ROW_B = (
    "P01_11_1,P01,P01_11,00:00:01.700,00:00:01.56,00:00:02.45,93,147,"
    "put down plate,put-down,1,plate,2,['plate'],[2]"
)


def _row(**changes: str) -> str:
    """ROW_B with some fields replaced (by column name)."""
    fields = dict(zip(LABELLED_HEADER.split(","), next(csv.reader([ROW_B])), strict=True))
    fields.update(changes)
    out: list[str] = []
    for value in fields.values():
        out.append(f'"{value}"' if "," in value else value)
    return ",".join(out)


def _write(folder: Path, name: str, lines: list[str], newline: str = "\n") -> Path:
    path = folder / name
    path.write_bytes((newline.join(lines) + newline).encode())
    return path


def _write_classes(folder: Path, name: str, keys: list[str]) -> Path:
    """A class file in the real format: CRLF endings and no final newline."""
    lines = [CLASS_HEADER] + [
        f"{i},{key},\"['{key}', '{key}:x']\",misc" for i, key in enumerate(keys)
    ]
    path = folder / name
    path.write_bytes("\r\n".join(lines).encode())
    return path


def _error(path: Path, **kwargs: int) -> str:
    with pytest.raises(AnnotationError) as info:
        read_segments(path, **kwargs)
    return str(info.value)


# ----------------------------------------------------------------------------- real files


# Each test here asks for ``real`` or ``real_annotation_file`` (tests/conftest.py): it runs
# on $EPIC_REAL_ANNOTATIONS or ../shared/epic100, and is skipped naming the variable without.
@pytest.fixture(scope="module")
def real(real_annotations: Path) -> AnnotationDir:
    return AnnotationDir(real_annotations)


@pytest.fixture(scope="module")
def real_validation(real: AnnotationDir) -> list:
    return real.segments("validation")


@pytest.fixture(scope="module")
def real_test(real: AnnotationDir) -> list:
    return real.segments("test")


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_real_validation_has_9668_segments_in_138_videos(real_validation: list) -> None:
    assert len(real_validation) == 9668
    assert len({s.video_id for s in real_validation}) == 138
    assert all(s.verb_class is not None and s.noun_class is not None for s in real_validation)


def test_real_test_has_13092_unlabelled_segments_in_67_videos(real_test: list) -> None:
    assert len(real_test) == 13092
    assert len({s.video_id for s in real_test}) == 67
    assert all(s.verb_class is None and s.all_nouns is None for s in real_test)
    (short,) = [s for s in real_test if s.narration_id == "P04_105_564"]
    assert (short.start_frame, short.stop_frame) == (66637, 66642)


def test_real_class_files_crlf_without_final_newline(
    real: AnnotationDir, real_annotation_file
) -> None:
    for name, count, method in (
        ("EPIC_100_verb_classes.csv", 97, real.verb_classes),
        ("EPIC_100_noun_classes.csv", 300, real.noun_classes),
    ):
        raw = real_annotation_file(name).read_bytes()
        assert b"\r\n" in raw and not raw.endswith(b"\n")  # the format this test is about
        classes = method()
        assert [c.id for c in classes] == list(range(count))
        assert not any("\r" in c.category or "\r" in c.key for c in classes)
        for got, row in zip(classes, _csv_rows(real_annotation_file(name)), strict=True):
            assert got.key == row["key"]
            assert got.category == row["category"]
            assert got.instances == tuple(ast.literal_eval(row["instances"]))
    assert real.verb_classes()[0].key == "take"
    assert real.noun_classes()[0].key == "tap"


def test_real_video_info_tails_and_unseen(real: AnnotationDir) -> None:
    videos = real.video_info()
    assert len(videos) == 700
    assert len({v.video_id for v in videos}) == 700
    first = videos[0]
    assert (first.video_id, first.width, first.height) == ("P01_01", 1920, 1080)
    assert first.duration == pytest.approx(1652.152817)
    assert first.fps == pytest.approx(59.94, abs=1e-3)
    tail_verbs, tail_nouns = real.tail_verbs(), real.tail_nouns()
    assert len(tail_verbs) == 86 and len(tail_nouns) == 228
    assert all(0 <= v < 97 for v in tail_verbs) and all(0 <= n < 300 for n in tail_nouns)
    assert real.unseen_participants("validation") == {"P18", "P32"}
    assert real.unseen_participants("test") == {"P33", "P34", "P36"}


def test_every_split_video_is_in_video_info(
    real: AnnotationDir, real_validation: list, real_test: list
) -> None:
    known = {v.video_id for v in real.video_info()}
    assert {s.video_id for s in real_validation + real_test} <= known


@pytest.mark.parametrize("split", ["validation", "test"])
def test_real_segments_match_the_csv_columns(
    real: AnnotationDir, real_annotation_file, split: str
) -> None:
    name = {"validation": VALIDATION, "test": "EPIC_100_test_timestamps.csv"}[split]
    rows = _csv_rows(real_annotation_file(name))
    segments = real.segments(split)
    table = real.table(split)
    assert len(table) == len(rows) == len(segments)
    assert table.narration_ids == [r["narration_id"] for r in rows]
    assert table.video_ids == [r["video_id"] for r in rows]
    assert table.participant_ids == [r["participant_id"] for r in rows]
    assert table.start_frames.dtype == np.int64 and table.stop_frames.dtype == np.int64
    np.testing.assert_array_equal(table.start_frames, [int(r["start_frame"]) for r in rows])
    np.testing.assert_array_equal(table.stop_frames, [int(r["stop_frame"]) for r in rows])
    if split == "validation":
        assert table.labelled
        np.testing.assert_array_equal(table.verb_classes, [int(r["verb_class"]) for r in rows])
        np.testing.assert_array_equal(table.noun_classes, [int(r["noun_class"]) for r in rows])
        for seg, row in zip(segments, rows, strict=True):
            assert seg.all_nouns == tuple(ast.literal_eval(row["all_nouns"]))
            assert seg.all_noun_classes == tuple(ast.literal_eval(row["all_noun_classes"]))
            assert seg.narration == row["narration"]
            assert seg.narration_timestamp == row["narration_timestamp"]
    else:
        assert not table.labelled
        assert (table.verb_classes == -1).all() and (table.noun_classes == -1).all()


def test_real_multi_noun_lists_are_parsed(real_validation: list) -> None:
    multi = [s for s in real_validation if len(s.all_nouns) > 1]
    assert len(multi) == 1602
    assert all(len(s.all_nouns) == len(s.all_noun_classes) for s in real_validation)
    assert all(s.noun_class in s.all_noun_classes for s in real_validation)


def test_real_folder_names_the_missing_train_file(real: AnnotationDir) -> None:
    if real.has("EPIC_100_train.csv"):
        pytest.skip("this copy of the annotations has the train file")
    with pytest.raises(AnnotationError, match="EPIC_100_train.csv is missing"):
        real.segments("train")


# ----------------------------------------------------------------------------- good input


def test_quoted_fields_with_commas_parse(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        VALIDATION,
        [
            LABELLED_HEADER,
            ROW_A,
            _row(
                narration="wash plate, then cup",
                all_nouns="['plate', 'cup', 'tap:water']",
                all_noun_classes="[2, 13, 0]",
            ),
        ],
    )
    first, second = read_segments(path)
    assert first.all_nouns == ("plate",) and first.all_noun_classes == (2,)
    assert second.narration == "wash plate, then cup"
    assert second.all_nouns == ("plate", "cup", "tap:water")
    assert second.all_noun_classes == (2, 13, 0)
    assert (second.start_frame, second.stop_frame) == (93, 147)
    assert second.start_seconds == pytest.approx(1.56)
    assert second.stop_seconds == pytest.approx(2.45)


def test_crlf_split_without_final_newline_parses(tmp_path: Path) -> None:
    path = tmp_path / VALIDATION
    path.write_bytes("\r\n".join([LABELLED_HEADER, ROW_A, ROW_B]).encode())
    segments = read_segments(path)
    assert [s.narration_id for s in segments] == ["P01_11_0", "P01_11_1"]
    assert segments[1].all_noun_classes == (2,)


def test_csv_saved_with_a_utf8_bom_parses(tmp_path: Path) -> None:
    # Regression: "missing column(s) narration_id (header has: \ufeffnarration_id, ...)".
    path = tmp_path / VALIDATION
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join([LABELLED_HEADER, ROW_A, ROW_B]).encode())
    assert [s.narration_id for s in read_segments(path)] == ["P01_11_0", "P01_11_1"]


def test_test_timestamps_file_gives_unlabelled_segments(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "EPIC_100_test_timestamps.csv",
        [
            TEST_HEADER,
            "P04_105_564,P04,P04_105,00:22:13.128,00:22:12.74,00:22:12.84,66637,66642",
        ],
    )
    (seg,) = read_segments(path)
    assert (seg.video_id, seg.start_frame, seg.stop_frame) == ("P04_105", 66637, 66642)
    assert seg.verb_class is None and seg.noun is None
    table = SegmentTable.from_segments("test", [seg])
    assert not table.labelled and table.verb_classes.tolist() == [-1]


def test_class_file_in_the_real_format_parses(tmp_path: Path) -> None:
    path = _write_classes(tmp_path, "EPIC_100_verb_classes.csv", ["take", "put", "wash"])
    classes = read_classes(path)
    assert [(c.id, c.key, c.category) for c in classes] == [
        (0, "take", "misc"),
        (1, "put", "misc"),
        (2, "wash", "misc"),
    ]
    assert classes[2].instances == ("wash", "wash:x")


# ----------------------------------------------------------------------------- bad input


def test_missing_column_names_the_column(tmp_path: Path) -> None:
    header = LABELLED_HEADER.replace(",stop_frame", "")
    path = _write(tmp_path, VALIDATION, [header, ROW_A.replace(",113,", ",")])
    message = _error(path)
    assert VALIDATION in message and "line 1" in message and "stop_frame" in message


def test_labelled_file_missing_verb_class_is_an_error_not_unlabelled_regression(
    tmp_path: Path,
) -> None:
    """A labelled file without verb_class was read as an unlabelled (test) file,
    silently dropping every label."""
    header = LABELLED_HEADER.replace(",verb_class", "")
    path = _write(tmp_path, VALIDATION, [header, ROW_A.replace(",take,0,", ",take,")])
    message = _error(path)
    assert VALIDATION in message and "line 1" in message and "verb_class" in message


@pytest.mark.parametrize("value", ["12.5", "abc", "", "1e3"])
def test_non_integer_frame(tmp_path: Path, value: str) -> None:
    path = _write(tmp_path, VALIDATION, [LABELLED_HEADER, ROW_A, _row(start_frame=value)])
    message = _error(path)
    assert f"{VALIDATION} line 3, start_frame" in message and "not an integer" in message


def test_stop_frame_before_start_frame(tmp_path: Path) -> None:
    path = _write(tmp_path, VALIDATION, [LABELLED_HEADER, _row(start_frame="120", stop_frame="90")])
    assert f"{VALIDATION} line 2, stop_frame: 90 < start_frame 120" in _error(path)


@pytest.mark.parametrize("value", ["0", "-5"])
def test_start_frame_below_1(tmp_path: Path, value: str) -> None:
    path = _write(tmp_path, VALIDATION, [LABELLED_HEADER, _row(start_frame=value)])
    message = _error(path)
    assert f"{VALIDATION} line 2, start_frame" in message and "< 1" in message


def test_duplicate_narration_id(tmp_path: Path) -> None:
    path = _write(tmp_path, VALIDATION, [LABELLED_HEADER, ROW_A, ROW_B, ROW_A])
    message = _error(path)
    assert f"{VALIDATION} line 4, narration_id" in message
    assert "P01_11_0" in message and "first on line 2" in message


@pytest.mark.parametrize(
    ("changes", "field", "value", "bound"),
    [
        ({"verb_class": "3"}, "verb_class", "3", "0..2"),
        ({"verb_class": "-1"}, "verb_class", "-1", "0..2"),
        ({"noun_class": "4"}, "noun_class", "4", "0..3"),
        (
            {"noun_class": "1", "all_noun_classes": "[1, 7]", "all_nouns": "['a', 'b']"},
            "all_noun_classes",
            "7",
            "0..3",
        ),
    ],
)
def test_class_id_outside_the_vocabulary(
    tmp_path: Path, changes: dict[str, str], field: str, value: str, bound: str
) -> None:
    _write_classes(tmp_path, "EPIC_100_verb_classes.csv", ["take", "put", "wash"])
    _write_classes(tmp_path, "EPIC_100_noun_classes.csv", ["tap", "spoon", "plate", "cup"])
    folder = AnnotationDir(tmp_path)
    _write(
        tmp_path,
        VALIDATION,
        [LABELLED_HEADER, _row(verb_class="1", noun_class="2", all_noun_classes="[2]")],
    )
    assert [s.verb_class for s in folder.segments("validation")] == [1]
    _write(tmp_path, VALIDATION, [LABELLED_HEADER, ROW_A, _row(**changes)])
    with pytest.raises(AnnotationError) as info:
        folder.segments("validation")
    message = str(info.value)
    assert f"{VALIDATION} line 3, {field}: {value} is outside the vocabulary ({bound})" in message


@pytest.mark.parametrize("video_id", ["P1_11", "P01_011", "P01_211", "p01_11", "P01-11"])
def test_malformed_video_id(tmp_path: Path, video_id: str) -> None:
    path = _write(tmp_path, VALIDATION, [LABELLED_HEADER, _row(video_id=video_id)])
    message = _error(path)
    assert f"{VALIDATION} line 2, video_id" in message
    assert video_id in message and "PXX_YY or PXX_1YY" in message


def test_malformed_timestamp(tmp_path: Path) -> None:
    path = _write(tmp_path, VALIDATION, [LABELLED_HEADER, _row(stop_timestamp="00:00:2.45")])
    message = _error(path)
    assert f"{VALIDATION} line 2, stop_timestamp" in message and "HH:MM:SS.ff" in message


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / VALIDATION
    path.write_bytes(b"")
    message = _error(path)
    assert VALIDATION in message and "empty" in message


def test_header_without_rows(tmp_path: Path) -> None:
    path = _write(tmp_path, VALIDATION, [LABELLED_HEADER])
    message = _error(path)
    assert VALIDATION in message and "no segments" in message


@pytest.mark.parametrize("row", [ROW_B + ",extra", ROW_B.rsplit(",", 1)[0]])
def test_wrong_field_count(tmp_path: Path, row: str) -> None:
    path = _write(tmp_path, VALIDATION, [LABELLED_HEADER, ROW_A, row])
    message = _error(path)
    assert f"{VALIDATION} line 3" in message and "fields, the header has 15" in message


def test_line_numbers_count_physical_lines_after_a_multiline_field(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        VALIDATION,
        [
            LABELLED_HEADER,
            ROW_A.replace("take plate", '"take\nplate"'),
            _row(stop_frame="50"),
        ],
    )
    assert f"{VALIDATION} line 4, stop_frame: 50 < start_frame 93" in _error(path)


def test_read_segments_on_a_missing_path_is_an_annotation_error_regression(
    tmp_path: Path,
) -> None:
    """read_segments opened the file before checking it, so a missing path gave a bare
    FileNotFoundError traceback instead of an error naming the file."""
    with pytest.raises(AnnotationError, match="EPIC_100_train.csv: file not found"):
        read_segments(tmp_path / "EPIC_100_train.csv")


@pytest.mark.parametrize(
    ("call", "filename"),
    [
        (lambda d: d.segments("train"), "EPIC_100_train.csv"),
        (lambda d: d.segments("validation"), "EPIC_100_validation.csv"),
        (lambda d: d.segments("test"), "EPIC_100_test_timestamps.csv"),
        (lambda d: d.verb_classes(), "EPIC_100_verb_classes.csv"),
        (lambda d: d.noun_classes(), "EPIC_100_noun_classes.csv"),
        (lambda d: d.video_info(), "EPIC_100_video_info.csv"),
        (lambda d: d.tail_verbs(), "EPIC_100_tail_verbs.csv"),
        (lambda d: d.tail_nouns(), "EPIC_100_tail_nouns.csv"),
        (
            lambda d: d.unseen_participants("validation"),
            "EPIC_100_unseen_participant_ids_validation.csv",
        ),
        (lambda d: d.unseen_participants("test"), "EPIC_100_unseen_participant_ids_test.csv"),
    ],
)
def test_missing_file_in_the_folder_is_named(tmp_path: Path, call, filename: str) -> None:
    with pytest.raises(AnnotationError) as info:
        call(AnnotationDir(tmp_path))
    message = str(info.value)
    assert f"{filename} is missing from {tmp_path}" in message


def test_missing_annotations_folder(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match="does not exist"):
        AnnotationDir(tmp_path / "nowhere")


def test_unknown_split(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match="unknown split 'val'"):
        AnnotationDir(tmp_path).segments("val")


def test_class_ids_out_of_order(tmp_path: Path) -> None:
    path = tmp_path / "EPIC_100_verb_classes.csv"
    path.write_bytes(f"{CLASS_HEADER}\r\n0,take,['take'],a\r\n2,put,['put'],a".encode())
    with pytest.raises(AnnotationError) as info:
        read_classes(path)
    assert "EPIC_100_verb_classes.csv line 3, id: 2, expected 1" in str(info.value)


def test_bad_video_info_resolution(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "EPIC_100_video_info.csv",
        [
            "video_id,duration,fps,resolution",
            "P01_01,1652.152817,59.9400599400599,1920x1080",
            "P01_02,502.134967,59.9400599400599,1920by1080",
        ],
    )
    with pytest.raises(AnnotationError) as info:
        read_video_info(path)
    assert "EPIC_100_video_info.csv line 3, resolution" in str(info.value)


def test_non_integer_tail_class_names_file_line_and_field(tmp_path: Path) -> None:
    _write(tmp_path, "EPIC_100_tail_verbs.csv", ["verb", "10", "twelve"])
    with pytest.raises(AnnotationError) as info:
        AnnotationDir(tmp_path).tail_verbs()
    message = str(info.value)
    assert "EPIC_100_tail_verbs.csv line 3, verb" in message
    assert "'twelve' is not an integer" in message


# ----------------------------------------------------------------------------- encodings


def _latin1_split(folder: Path, *, bom: bytes = b"") -> tuple[Path, int, int]:
    """A validation split whose second row says "crème" in Latin-1 (as a spreadsheet saves
    it) -> (path, the file offset of the byte of "è", its 1-based byte in the line)."""
    head = (LABELLED_HEADER + "\n" + ROW_A + "\n").encode()
    row = _row(narration="put down crème", noun="crème").encode("latin-1")
    path = folder / VALIDATION
    path.write_bytes(bom + head + row + b"\n")
    column = row.index(b"\xe8")
    return path, len(bom) + len(head) + column, column + 1


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"], ids=["plain", "bom"])
def test_latin1_byte_names_the_file_line_and_offset_regression(tmp_path: Path, bom) -> None:
    # Regression: a UnicodeDecodeError traceback from epic-train and `epic-extract plan`.
    path, offset, column = _latin1_split(tmp_path, bom=bom)
    message = _error(path)
    first = message.splitlines()[0]
    assert first.startswith("byte 0xE8 is not UTF-8")
    assert f"{path} line 3, byte {column} of the line, offset {offset} in the file" in first
    assert "save the file as UTF-8" in first
    assert path.read_bytes()[offset] == 0xE8  # the offset points at the byte


def test_latin1_byte_in_the_header_or_a_class_file_is_named_too_regression(
    tmp_path: Path,
) -> None:
    path = tmp_path / VALIDATION
    path.write_bytes(LABELLED_HEADER.replace("narration,", "narratión,").encode("latin-1"))
    assert "line 1, byte" in _error(path)
    classes = _write_classes(tmp_path, "EPIC_100_noun_classes.csv", ["plate", "pan"])
    classes.write_bytes(classes.read_bytes().replace(b"pan", b"po\xeale"))
    with pytest.raises(AnnotationError, match=r"byte 0xEA is not UTF-8 .*line 3, byte 5 "):
        AnnotationDir(tmp_path).noun_classes()
