"""EPIC-100 annotation files, read by column name into frozen, typed records.

An annotations folder holds the files under their official names. Every error names the
file, the line and the field, and says what was expected::

    EPIC_100_train.csv line 812, stop_frame: 90 < start_frame 120

Per-sample data for training lives in :class:`SegmentTable` (numpy arrays and flat lists),
which DataLoader workers can share without copying a dict per sample.
"""

from __future__ import annotations

import codecs
import csv
import io
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from epicdata.errors import AnnotationError
from epicdata.frames import is_video_id, parse_timestamp

SPLIT_FILES = {
    "train": "EPIC_100_train.csv",
    "validation": "EPIC_100_validation.csv",
    "test": "EPIC_100_test_timestamps.csv",
}
VERB_CLASSES_FILE = "EPIC_100_verb_classes.csv"
NOUN_CLASSES_FILE = "EPIC_100_noun_classes.csv"
VIDEO_INFO_FILE = "EPIC_100_video_info.csv"
TAIL_VERBS_FILE = "EPIC_100_tail_verbs.csv"
TAIL_NOUNS_FILE = "EPIC_100_tail_nouns.csv"
UNSEEN_PARTICIPANTS_FILES = {
    "validation": "EPIC_100_unseen_participant_ids_validation.csv",
    "test": "EPIC_100_unseen_participant_ids_test.csv",
}

TIMESTAMP_COLUMNS = (
    "narration_id",
    "participant_id",
    "video_id",
    "narration_timestamp",
    "start_timestamp",
    "stop_timestamp",
    "start_frame",
    "stop_frame",
)
LABEL_COLUMNS = (
    "narration",
    "verb",
    "verb_class",
    "noun",
    "noun_class",
    "all_nouns",
    "all_noun_classes",
)
LABELLED_COLUMNS = TIMESTAMP_COLUMNS + LABEL_COLUMNS
CLASS_COLUMNS = ("id", "key", "instances", "category")
VIDEO_INFO_COLUMNS = ("video_id", "duration", "fps", "resolution")


@dataclass(frozen=True, slots=True)
class Segment:
    """One annotated action segment; label fields are None in the test split.

    ``start_frame``/``stop_frame`` are inclusive frame numbers of the stream re-timed to R
    (see :mod:`epicdata.frames`); ``*_seconds`` are the parsed timestamps.
    """

    narration_id: str
    participant_id: str
    video_id: str
    narration_timestamp: str
    start_timestamp: str
    stop_timestamp: str
    start_frame: int
    stop_frame: int
    start_seconds: float
    stop_seconds: float
    narration: str | None = None
    verb: str | None = None
    verb_class: int | None = None
    noun: str | None = None
    noun_class: int | None = None
    all_nouns: tuple[str, ...] | None = None
    all_noun_classes: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class ClassInfo:
    """One row of a class vocabulary (``id,key,instances,category``)."""

    id: int
    key: str
    instances: tuple[str, ...]
    category: str


@dataclass(frozen=True, slots=True)
class VideoInfo:
    """One row of ``EPIC_100_video_info.csv``: duration in seconds, native fps, frame size."""

    video_id: str
    duration: float
    fps: float
    width: int
    height: int


@dataclass(frozen=True)
class SegmentTable:
    """All segments of one split as flat arrays (index i = i-th row of the CSV).

    ``verb_classes``/``noun_classes`` are -1 where the split has no labels.
    """

    split: str
    narration_ids: list[str]
    participant_ids: list[str]
    video_ids: list[str]
    start_frames: np.ndarray  # (N,) int64, inclusive
    stop_frames: np.ndarray  # (N,) int64, inclusive
    verb_classes: np.ndarray  # (N,) int64
    noun_classes: np.ndarray  # (N,) int64
    labelled: bool

    @classmethod
    def from_segments(cls, split: str, segments: Sequence[Segment]) -> SegmentTable:
        labelled = bool(segments) and segments[0].verb_class is not None
        return cls(
            split=split,
            narration_ids=[s.narration_id for s in segments],
            participant_ids=[s.participant_id for s in segments],
            video_ids=[s.video_id for s in segments],
            start_frames=np.array([s.start_frame for s in segments], dtype=np.int64),
            stop_frames=np.array([s.stop_frame for s in segments], dtype=np.int64),
            verb_classes=np.array(
                [s.verb_class if labelled else -1 for s in segments], dtype=np.int64
            ),
            noun_classes=np.array(
                [s.noun_class if labelled else -1 for s in segments], dtype=np.int64
            ),
            labelled=labelled,
        )

    def __len__(self) -> int:
        return len(self.narration_ids)

    @classmethod
    def joined(cls, tables: Sequence[SegmentTable]) -> SegmentTable:
        """The rows of ``tables`` one after the other (e.g. train then validation, for a
        final training on both); ``split`` names them all (``train+validation``)."""
        if len(tables) == 1:
            return tables[0]
        return cls(
            split="+".join(t.split for t in tables),
            narration_ids=[n for t in tables for n in t.narration_ids],
            participant_ids=[p for t in tables for p in t.participant_ids],
            video_ids=[v for t in tables for v in t.video_ids],
            start_frames=np.concatenate([t.start_frames for t in tables]),
            stop_frames=np.concatenate([t.stop_frames for t in tables]),
            verb_classes=np.concatenate([t.verb_classes for t in tables]),
            noun_classes=np.concatenate([t.noun_classes for t in tables]),
            labelled=all(t.labelled for t in tables),
        )


# ----------------------------------------------------------------------------- reading


class _Rows:
    """CSV rows as dicts with their 1-based line numbers; checks the header once."""

    def __init__(self, path: Path, required: Sequence[str]) -> None:
        self.path = Path(path)
        self.name = self.path.name
        self.required = tuple(required)

    def __iter__(self) -> Iterator[tuple[int, dict[str, str]]]:
        if not self.path.is_file():
            raise AnnotationError(f"{self.path}: file not found")
        with io.StringIO(_read_text(self.path), newline="") as handle:
            reader = csv.reader(handle)
            try:
                header = next(reader)
            except StopIteration:
                raise AnnotationError(
                    f"{self.name}: the file is empty (expected a header with columns "
                    f"{', '.join(self.required)})"
                ) from None
            header = [h.strip() for h in header]
            missing = [c for c in self.required if c not in header]
            if missing:
                raise AnnotationError(
                    f"{self.name} line 1: missing column(s) {', '.join(missing)} "
                    f"(header has: {', '.join(header)})"
                )
            line_end = reader.line_num
            for row in reader:
                line = line_end + 1
                line_end = reader.line_num
                if not row or all(not cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    raise AnnotationError(
                        f"{self.name} line {line}: {len(row)} fields, the header has {len(header)}"
                    )
                yield line, dict(zip(header, row, strict=True))

    def error(self, line: int, field: str, message: str) -> AnnotationError:
        return AnnotationError(f"{self.name} line {line}, {field}: {message}")

    def integer(self, line: int, row: dict[str, str], field: str) -> int:
        text = row[field].strip()
        try:
            return int(text)
        except ValueError:
            raise self.error(line, field, f"{text!r} is not an integer") from None

    def number(self, line: int, row: dict[str, str], field: str) -> float:
        text = row[field].strip()
        try:
            value = float(text)
        except ValueError:
            raise self.error(line, field, f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise self.error(line, field, f"{text!r} is not a finite number")
        return value


def _read_text(path: Path) -> str:
    """The text of a UTF-8 file (a leading byte-order mark dropped: Excel saves one).

    A byte that is not UTF-8 (a file saved as Latin-1 or Windows-1252 by a spreadsheet) is
    an :class:`AnnotationError` naming the file, the line, and the byte and its offset, so
    that it can be found with a hex editor or ``cut -b``.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise AnnotationError(
            "cannot read the file", where=f"{path}: {exc.strerror}", fix="check its permissions"
        ) from None
    bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        return raw[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = bom + exc.start
        line = raw.count(b"\n", 0, offset) + 1
        column = offset - (raw.rfind(b"\n", 0, offset) + 1) + 1
        raise AnnotationError(
            f"byte 0x{raw[offset]:02X} is not UTF-8",
            where=f"{path} line {line}, byte {column} of the line, offset {offset} in the file",
            fix="save the file as UTF-8 (the official annotation files are UTF-8)",
        ) from None


def _parse_list(text: str) -> tuple[str, ...]:
    """``"['a', 'b:c']"`` or ``"[1, 2]"`` -> items as strings, quotes removed."""
    inner = text.strip().removeprefix("[").removesuffix("]").strip()
    if not inner:
        return ()
    return tuple(item.strip().strip("'\"") for item in inner.split(","))


def read_segments(
    path: str | Path,
    *,
    num_verbs: int | None = None,
    num_nouns: int | None = None,
) -> list[Segment]:
    """Read a split file (labelled ``EPIC_100_{train,validation}.csv`` or the test timestamps).

    The file is labelled when its header has the label columns. ``num_verbs``/``num_nouns``
    (vocabulary sizes) enable the class-id range check.
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: file not found")
    labelled = _has_label_columns(path)
    rows = _Rows(path, LABELLED_COLUMNS if labelled else TIMESTAMP_COLUMNS)
    segments: list[Segment] = []
    seen: dict[str, int] = {}
    for line, row in rows:
        narration_id = row["narration_id"].strip()
        if not narration_id:
            raise rows.error(line, "narration_id", "empty")
        if narration_id in seen:
            raise rows.error(
                line,
                "narration_id",
                f"duplicate {narration_id!r} (first on line {seen[narration_id]})",
            )
        seen[narration_id] = line
        timestamps = _timestamp_fields(rows, line, row)
        labels = _label_fields(rows, line, row, num_verbs, num_nouns) if labelled else {}
        segments.append(Segment(narration_id=narration_id, **timestamps, **labels))
    if not segments:
        raise AnnotationError(f"{path.name}: no segments after the header")
    return segments


def _has_label_columns(path: Path) -> bool:
    """Whether the header of split file ``path`` has any label column."""
    with io.StringIO(_read_text(path), newline="") as handle:
        header = [column.strip() for column in next(csv.reader(handle), [])]
    # Any label column makes the file labelled, so a labelled file that lacks one of them
    # is reported as missing that column instead of being read silently without labels.
    return any(column in LABEL_COLUMNS for column in header)


def _timestamp_fields(rows: _Rows, line: int, row: dict[str, str]) -> dict[str, object]:
    """The :class:`Segment` fields of the columns every split has
    (:data:`TIMESTAMP_COLUMNS`) but the narration id, checked and parsed."""
    video_id = row["video_id"].strip()
    if not is_video_id(video_id):
        raise rows.error(line, "video_id", f"{video_id!r} does not match PXX_YY or PXX_1YY")
    start_frame = rows.integer(line, row, "start_frame")
    stop_frame = rows.integer(line, row, "stop_frame")
    if start_frame < 1:
        raise rows.error(line, "start_frame", f"{start_frame} < 1 (frame numbers start at 1)")
    if stop_frame < start_frame:
        raise rows.error(line, "stop_frame", f"{stop_frame} < start_frame {start_frame}")
    times = {}
    for field in ("start_timestamp", "stop_timestamp"):
        try:
            times[field] = parse_timestamp(row[field])
        except ValueError as exc:
            raise rows.error(line, field, str(exc)) from None
    return dict(
        participant_id=row["participant_id"].strip(),
        video_id=video_id,
        narration_timestamp=row["narration_timestamp"].strip(),
        start_timestamp=row["start_timestamp"].strip(),
        stop_timestamp=row["stop_timestamp"].strip(),
        start_frame=start_frame,
        stop_frame=stop_frame,
        start_seconds=times["start_timestamp"],
        stop_seconds=times["stop_timestamp"],
    )


def _label_fields(
    rows: _Rows,
    line: int,
    row: dict[str, str],
    num_verbs: int | None,
    num_nouns: int | None,
) -> dict[str, object]:
    """The :class:`Segment` fields of the label columns (:data:`LABEL_COLUMNS`), class ids
    checked against the vocabulary sizes where given."""
    verb_class = rows.integer(line, row, "verb_class")
    noun_class = rows.integer(line, row, "noun_class")
    _check_class_id(rows, line, "verb_class", verb_class, num_verbs)
    _check_class_id(rows, line, "noun_class", noun_class, num_nouns)
    try:
        all_noun_classes = tuple(int(c) for c in _parse_list(row["all_noun_classes"]))
    except ValueError:
        raise rows.error(
            line,
            "all_noun_classes",
            f"{row['all_noun_classes']!r} is not a list of integers",
        ) from None
    for value in all_noun_classes:
        _check_class_id(rows, line, "all_noun_classes", value, num_nouns)
    return dict(
        narration=row["narration"],
        verb=row["verb"],
        verb_class=verb_class,
        noun=row["noun"],
        noun_class=noun_class,
        all_nouns=_parse_list(row["all_nouns"]),
        all_noun_classes=all_noun_classes,
    )


def _check_class_id(rows: _Rows, line: int, field: str, value: int, size: int | None) -> None:
    """A class id must be in ``0..size - 1`` (``>= 0`` when the vocabulary size is unknown)."""
    if value < 0 or (size is not None and value >= size):
        bound = f"0..{size - 1}" if size is not None else ">= 0"
        raise rows.error(line, field, f"{value} is outside the vocabulary ({bound})")


def read_classes(path: str | Path) -> list[ClassInfo]:
    """Read ``EPIC_100_{verb,noun}_classes.csv``; ids must be 0..N-1 in order."""
    rows = _Rows(Path(path), CLASS_COLUMNS)
    classes: list[ClassInfo] = []
    for line, row in rows:
        class_id = rows.integer(line, row, "id")
        if class_id != len(classes):
            raise rows.error(line, "id", f"{class_id}, expected {len(classes)} (ids run 0..N-1)")
        classes.append(
            ClassInfo(
                id=class_id,
                key=row["key"].strip(),
                instances=_parse_list(row["instances"]),
                category=row["category"].strip(),
            )
        )
    if not classes:
        raise AnnotationError(f"{rows.name}: no classes after the header")
    return classes


def read_video_info(path: str | Path) -> list[VideoInfo]:
    """Read ``EPIC_100_video_info.csv`` (``video_id,duration,fps,resolution``)."""
    rows = _Rows(Path(path), VIDEO_INFO_COLUMNS)
    videos: list[VideoInfo] = []
    for line, row in rows:
        video_id = row["video_id"].strip()
        if not is_video_id(video_id):
            raise rows.error(line, "video_id", f"{video_id!r} does not match PXX_YY or PXX_1YY")
        duration = rows.number(line, row, "duration")
        fps = rows.number(line, row, "fps")
        if duration <= 0 or fps <= 0:
            raise rows.error(line, "duration/fps", "must be positive")
        width, sep, height = row["resolution"].strip().partition("x")
        if not (sep and width.isdigit() and height.isdigit()):
            raise rows.error(line, "resolution", f"{row['resolution']!r} is not WIDTHxHEIGHT")
        videos.append(VideoInfo(video_id, duration, fps, int(width), int(height)))
    if not videos:
        raise AnnotationError(f"{rows.name}: no videos after the header")
    return videos


def read_id_list(path: str | Path, column: str) -> list[str]:
    """Read a one-column list (tail verbs/nouns, unseen participant ids)."""
    rows = _Rows(Path(path), (column,))
    return [row[column].strip() for _, row in rows]


def read_class_id_list(path: str | Path, column: str) -> frozenset[int]:
    """Read a one-column list of class ids (``EPIC_100_tail_{verbs,nouns}.csv``)."""
    rows = _Rows(Path(path), (column,))
    return frozenset(rows.integer(line, row, column) for line, row in rows)


# ----------------------------------------------------------------------------- the folder


class AnnotationDir:
    """The annotation files of one folder, under their official names, read on demand."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise AnnotationError(f"annotations folder {self.root} does not exist")

    def path(self, filename: str, *, purpose: str = "") -> Path:
        """Path of ``filename``; a clear error naming the file when it is missing."""
        path = self.root / filename
        if not path.is_file():
            why = f" (needed for {purpose})" if purpose else ""
            raise AnnotationError(
                f"{filename} is missing from {self.root}{why}: download it from "
                f"https://github.com/epic-kitchens/epic-kitchens-100-annotations"
            )
        return path

    def has(self, filename: str) -> bool:
        return (self.root / filename).is_file()

    def verb_classes(self) -> list[ClassInfo]:
        return read_classes(self.path(VERB_CLASSES_FILE, purpose="verb classes"))

    def noun_classes(self) -> list[ClassInfo]:
        return read_classes(self.path(NOUN_CLASSES_FILE, purpose="noun classes"))

    def segments(self, split: str) -> list[Segment]:
        """Segments of ``split`` (train/validation/test), class ids checked when the
        vocabularies are present."""
        if split not in SPLIT_FILES:
            raise AnnotationError(
                f"unknown split {split!r}: expected one of {', '.join(SPLIT_FILES)}"
            )
        path = self.path(SPLIT_FILES[split], purpose=f"the {split} split")
        num_verbs = len(self.verb_classes()) if self.has(VERB_CLASSES_FILE) else None
        num_nouns = len(self.noun_classes()) if self.has(NOUN_CLASSES_FILE) else None
        return read_segments(path, num_verbs=num_verbs, num_nouns=num_nouns)

    def table(self, split: str) -> SegmentTable:
        return SegmentTable.from_segments(split, self.segments(split))

    def video_info(self) -> list[VideoInfo]:
        return read_video_info(self.path(VIDEO_INFO_FILE, purpose="video durations"))

    def tail_verbs(self) -> frozenset[int]:
        path = self.path(TAIL_VERBS_FILE, purpose="tail-class metrics")
        return read_class_id_list(path, "verb")

    def tail_nouns(self) -> frozenset[int]:
        path = self.path(TAIL_NOUNS_FILE, purpose="tail-class metrics")
        return read_class_id_list(path, "noun")

    def unseen_participants(self, split: str) -> frozenset[str]:
        if split not in UNSEEN_PARTICIPANTS_FILES:
            raise AnnotationError(f"no unseen-participant list for split {split!r}")
        path = self.path(UNSEEN_PARTICIPANTS_FILES[split], purpose="unseen-participant metrics")
        return frozenset(read_id_list(path, "participant_id"))
