"""Prediction files in the official evaluator's input format, and challenge submissions.

Predictions (what ``epic-validate`` writes and reads; ``.pkl`` or ``.pt`` as the official
evaluator accepts), raw logits, either the dict format::

    {"verb_output": float32 (N, 97), "noun_output": float32 (N, 300), "narration_id": (N,) str}

or the list format ``[{"verb_output": (97,), "noun_output": (300,), "narration_id": str}, ...]``.
Both are pickles; they are read by :mod:`train.safe_pickle`, which resolves only the data
types these formats hold, so that a crafted file cannot run code.

Submission: ``test.json`` inside a zip, as the official ``create_submission.py`` writes it.
"""

from __future__ import annotations

import json
import logging
import pickle
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from epicdata.annotations import SegmentTable
from epicdata.constants import NUM_NOUN_CLASSES, NUM_VERB_CLASSES
from epicdata.errors import EpicInputError
from train import safe_pickle
from train.metrics import as_scores, count_underflowing

log = logging.getLogger(__name__)

SUBMISSION_VERSION = "0.2"
CHALLENGE = "action_recognition"


def save_predictions(
    path: str | Path, verb_logits: np.ndarray, noun_logits: np.ndarray, narration_ids: Sequence[str]
) -> Path:
    """Write the dict format (numpy arrays) as a plain pickle, whatever the suffix, as C1's
    test.py does (:func:`load_predictions` tells the formats apart by their first bytes;
    the official evaluator reads a plain pickle only under the suffix ``.pkl``)."""
    path = Path(path)
    data = {
        "verb_output": np.asarray(verb_logits, dtype=np.float32),
        "noun_output": np.asarray(noun_logits, dtype=np.float32),
        "narration_id": np.asarray(narration_ids, dtype=str),
    }
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        pickle.dump(data, handle, protocol=4)
    tmp.replace(path)
    return path


#: The three entries of a predictions file, and what --predictions must hold (for errors).
PREDICTION_KEYS = ("verb_output", "noun_output", "narration_id")
PREDICTIONS_FORMAT = (
    "a dict {'verb_output': (N, 97) scores, 'noun_output': (N, 300) scores, "
    "'narration_id': N strings}, or a list of N dicts of one segment each with the same "
    "keys, as C1-Action-Recognition's test.py and fuse.py write them"
)


def load_predictions(path: str | Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read a predictions file (dict or list format) -> (verb (N, 97), noun (N, 300), ids).

    The file is unpickled by :mod:`train.safe_pickle`: only data, never a global that
    would run code (a crafted file is refused, exit 2, naming the global).
    """
    path = Path(path)
    if not path.is_file():
        raise EpicInputError(f"--predictions {path}: no such file")
    try:
        data = safe_pickle.load_file(path)
    except safe_pickle.RefusedGlobal as exc:
        raise EpicInputError(
            f"refused to unpickle {exc.module}.{exc.name}: it is not one of the data types of "
            "a predictions file, and unpickling it could run code",
            where=f"--predictions {path}",
            fix="do not use a file from a source you do not trust; predictions hold "
            f"{PREDICTIONS_FORMAT}",
        ) from None
    except Exception as exc:  # any unreadable file: name it
        raise EpicInputError(f"--predictions {path}: cannot read it ({exc})") from None
    verb_raw, noun_raw, ids_raw = _entries(data, path)
    verb = _as_array(verb_raw, "verb_output", path)
    noun = _as_array(noun_raw, "noun_output", path)
    ids = _narration_ids(ids_raw, path)
    expected = {"verb_output": (verb, NUM_VERB_CLASSES), "noun_output": (noun, NUM_NOUN_CLASSES)}
    for key, (array, classes) in expected.items():
        if array.ndim != 2 or array.shape != (len(ids), classes):
            raise EpicInputError(
                f"--predictions {path}: {key} has shape {array.shape}, expected "
                f"({len(ids)}, {classes}) for {len(ids)} narration ids"
            )
    return verb, noun, ids


def _format_error(path: Path, what: str) -> EpicInputError:
    return EpicInputError(
        what, where=f"--predictions {path}", fix=f"it must hold {PREDICTIONS_FORMAT}"
    )


def _entries(data: Any, path: Path) -> tuple[Any, Any, Any]:
    """The verb scores, noun scores and narration ids of the dict or the list format (for
    the list: one list per key, in the list's order)."""
    if isinstance(data, (list, tuple)):
        if not data:
            raise _format_error(path, "the list is empty")
        for i, entry in enumerate(data):
            if not isinstance(entry, dict):
                raise _format_error(
                    path, f"entry {i} of the list is a {type(entry).__name__}, not a dict"
                )
            missing = [k for k in PREDICTION_KEYS if k not in entry]
            if missing:
                raise _format_error(path, f"entry {i} of the list lacks {', '.join(missing)}")
        columns = {k: [entry[k] for entry in data] for k in PREDICTION_KEYS}
        return columns["verb_output"], columns["noun_output"], columns["narration_id"]
    if not isinstance(data, dict):
        raise _format_error(path, f"it holds a {type(data).__name__}")
    missing = [k for k in PREDICTION_KEYS if k not in data]
    if missing:
        raise _format_error(path, f"missing entries {', '.join(missing)}")
    return data["verb_output"], data["noun_output"], data["narration_id"]


def _as_array(value: Any, key: str, path: Path) -> np.ndarray:
    """Scores as float32 (the official format), but float64 kept: the official evaluator
    computes in the dtype it reads, and rounding to float32 could tie scores it ranks apart."""
    try:
        if isinstance(value, list):
            value = [as_scores(v) if isinstance(v, torch.Tensor) else v for v in value]
        array = as_scores(value) if isinstance(value, torch.Tensor) else np.asarray(value)
    except (ValueError, TypeError) as exc:  # rows of different lengths, odd objects
        raise _format_error(path, f"{key} is not an array of scores ({exc})") from None
    if array.dtype.kind not in "iuf":
        raise _format_error(path, f"{key} holds {array.dtype} values, not scores")
    return array if array.dtype == np.float64 else array.astype(np.float32)


def _narration_ids(value: Any, path: Path) -> list[str]:
    """The narration ids as strings (numpy strings, Python strings)."""
    if isinstance(value, np.ndarray) and value.ndim == 1:
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(i, (str, np.str_)) for i in value
    ):
        raise _format_error(
            path, f"narration_id is a {type(value).__name__}, not a list of N strings"
        )
    return [str(i) for i in value]


def require_finite(
    verb_logits: np.ndarray, noun_logits: np.ndarray, narration_ids: Sequence[str], *, source: str
) -> None:
    """Refuse NaN and infinite scores, naming how many and the first narration id: NaN has
    no rank (the official evaluator would score it silently) and strict JSON cannot hold
    it (a submission's test.json)."""
    bad_verb, bad_noun = ~np.isfinite(verb_logits), ~np.isfinite(noun_logits)  # (N, 97), (N, 300)
    count = int(bad_verb.sum()) + int(bad_noun.sum())
    if not count:
        return
    bad_segments = bad_verb.any(axis=1) | bad_noun.any(axis=1)  # (N,)
    first = int(np.flatnonzero(bad_segments)[0])
    raise EpicInputError(
        f"{count:,} of the {bad_verb.size + bad_noun.size:,} scores are NaN or infinite",
        where=f"{source}: {int(bad_segments.sum()):,} segment(s), the first narration id "
        f"{narration_ids[first]}",
        fix="produce the scores again from a model whose outputs are finite",
        details=f"verb_output: {int(bad_verb.sum()):,} non-finite, noun_output: "
        f"{int(bad_noun.sum()):,} non-finite",
    )


def align_to_split(
    narration_ids: Sequence[str], table: SegmentTable, *, allow_partial: bool, source: str
) -> np.ndarray:
    """Rows of ``table`` for each narration id; refuses unknown or repeated ids, and a file
    that does not cover the whole split unless ``allow_partial``."""
    row_of = {nid: i for i, nid in enumerate(table.narration_ids)}
    unknown = [nid for nid in narration_ids if nid not in row_of]
    if unknown:
        raise EpicInputError(
            f"{source}: {len(unknown)} narration id(s) are not in the {table.split} split "
            f"(e.g. {', '.join(unknown[:3])}); is this the right --split?"
        )
    rows = np.array([row_of[nid] for nid in narration_ids], dtype=np.int64)
    if len(np.unique(rows)) != len(rows):
        raise EpicInputError(f"{source}: some narration ids appear more than once")
    missing = len(table) - len(rows)
    if missing and not allow_partial:
        raise EpicInputError(
            f"{source}: covers {len(rows)} of the {len(table)} segments of the {table.split} "
            f"split ({missing} missing); pass --allow-partial to score only those present"
        )
    return rows


def make_submission(
    verb_logits: np.ndarray,
    noun_logits: np.ndarray,
    narration_ids: Sequence[str],
    *,
    sls_pt: int,
    sls_tl: int,
    sls_td: int,
) -> dict[str, Any]:
    """The challenge's JSON: one ``{"verb": {"0": s, ...}, "noun": {...}}`` per narration id.

    Warns when the official evaluator, which the challenge server runs, would rank some
    segments' actions arbitrarily (train.metrics: its single softmax underflows).
    """
    underflowing = count_underflowing(verb_logits, noun_logits)
    if underflowing:
        log.warning(
            "%d of the %d segments get action scores that underflow (0 or subnormal) in the "
            "official evaluator's single softmax over the top-100 scores of all segments: the "
            "challenge server will rank their actions arbitrarily and score action accuracy "
            "below what a softmax per segment gives; shift each segment's logits so that their "
            "maximum is 0 (log-softmax does) before submitting",
            underflowing,
            len(verb_logits),
        )
    results = {
        str(nid): {
            "verb": {str(c): float(s) for c, s in enumerate(verb)},
            "noun": {str(c): float(s) for c, s in enumerate(noun)},
        }
        for nid, verb, noun in zip(
            narration_ids, verb_logits.tolist(), noun_logits.tolist(), strict=True
        )
    }
    return {
        "version": SUBMISSION_VERSION,
        "challenge": CHALLENGE,
        "sls_pt": sls_pt,
        "sls_tl": sls_tl,
        "sls_td": sls_td,
        "results": results,
    }


def write_submission_zip(submission: dict[str, Any], path: str | Path) -> Path:
    """``test.json`` (strict JSON) in a deflated zip, written atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=5) as archive:
        # allow_nan=False: NaN and Infinity are not JSON (score() refuses them first).
        archive.writestr("test.json", json.dumps(submission, allow_nan=False))
    tmp.replace(path)
    return path
