"""epic-validate --predictions reads the official formats without running code: C1's
test.py plain pickles (whatever the suffix), fuse.py's torch.save zips, legacy torch.save
files, numpy 1 and numpy 2 module paths; a crafted pickle is refused (exit 2) before any
of its globals is called, and a file of the wrong shape says what it must hold."""

from __future__ import annotations

import importlib
import io
import os
import pickle
import pickletools
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from epicdata.errors import EpicInputError, ExitCode
from train.cli import validate_main
from train.safe_pickle import RefusedGlobal, Unpickler, load_file
from train.submission import load_predictions

#: The official header of EPIC_100_validation.csv and two of its rows.
VALIDATION_CSV = (
    "narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,"
    "start_frame,stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,"
    "all_noun_classes\n"
    "P01_11_0,P01,P01_11,00:00:00.560,00:00:00.00,00:00:01.89,1,113,take plate,take,0,plate,2,"
    "['plate'],[2]\n"
    "P01_11_1,P01,P01_11,00:00:01.700,00:00:01.56,00:00:02.45,93,147,put down plate,put-down,1,"
    "plate,2,['plate'],[2]\n"
)
IDS = ["P01_11_0", "P01_11_1"]


def _scores(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    verb = rng.normal(size=(len(IDS), 97)).astype(np.float32)
    noun = rng.normal(size=(len(IDS), 300)).astype(np.float32)
    return verb, noun


def _c1_test_results() -> dict[str, np.ndarray]:
    """What C1's test.py pickles: ``np.stack`` of per-segment rows, ids included."""
    verb, noun = _scores()
    return {
        "verb_output": np.stack(list(verb)),
        "noun_output": np.stack(list(noun)),
        "narration_id": np.stack([np.str_(i) for i in IDS]),
    }


def _c1_fused_results() -> list[dict[str, object]]:
    """What C1's fuse.py torch.saves: ``decollate`` of the dict, numpy rows and np.str_."""
    results = _c1_test_results()
    return [{k: v[i] for k, v in results.items()} for i in range(len(IDS))]


def _validate(tmp_path: Path, predictions: Path):
    ann = tmp_path / "ann"
    ann.mkdir(exist_ok=True)
    (ann / "EPIC_100_validation.csv").write_text(VALIDATION_CSV)
    args = ["--predictions", predictions, "--annotations", ann, "--output-dir", tmp_path / "out"]
    return CliRunner().invoke(validate_main, [str(a) for a in args])


def _error_line(output: str) -> str:
    (line,) = [x for x in output.splitlines() if x.startswith("error:")]
    return line


# ----------------------------------------------------------------------------- crafted files


class _System:
    """Unpickled by ``pickle.load``, it runs a shell command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _Exec:
    """Unpickled by ``pickle.load``, it runs Python code."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


@pytest.mark.parametrize("container", ["plain pickle", "torch.save zip"])
@pytest.mark.parametrize("payload", ["os.system", "exec"])
def test_a_crafted_predictions_pickle_is_refused_and_runs_nothing_regression(
    tmp_path: Path, container: str, payload: str
) -> None:
    # Regression: `--predictions x.pkl` went through pickle.load, and this created the file.
    victim = tmp_path / "created-by-the-pickle"
    if payload == "os.system":
        hostile, refused = _System(f"touch {victim}"), f"{os.system.__module__}.system"
    else:
        hostile, refused = _Exec(f"open({str(victim)!r}, 'w').write('owned')"), "builtins.exec"
    verb, noun = _scores()
    data = {"verb_output": verb, "noun_output": noun, "narration_id": IDS, "x": hostile}
    path = tmp_path / "preds.pt"  # the suffix C1 uses for both containers
    if container == "plain pickle":
        path.write_bytes(pickle.dumps(data, protocol=4))
    else:
        torch.save(data, path)
    result = _validate(tmp_path, path)
    assert not victim.exists()
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    line = _error_line(result.output)
    assert f"refused to unpickle {refused}" in line and f"--predictions {path}" in line
    assert "Traceback" not in result.output


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # deprecated in newer torch
def test_a_torchscript_archive_is_not_handed_to_torch_jit_load(tmp_path: Path) -> None:
    # torch.load(weights_only=False) runs torch.jit.load on a TorchScript zip.
    path = tmp_path / "preds.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    result = _validate(tmp_path, path)
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert "not a torch.save file" in _error_line(result.output)


# ----------------------------------------------------------------------------- official formats


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("suffix", [".pkl", ".pt"])
def test_c1_test_py_plain_pickles_load_whatever_the_suffix(
    tmp_path: Path, protocol: int, suffix: str
) -> None:
    # A plain pickle named .pt went to torch.load, which said "Invalid magic number".
    path = tmp_path / f"test_results{suffix}"
    with open(path, "wb") as handle:
        pickle.dump(_c1_test_results(), handle, protocol=protocol)
    verb, noun, ids = load_predictions(path)
    want_verb, want_noun = _scores()
    assert np.array_equal(verb, want_verb) and np.array_equal(noun, want_noun) and ids == IDS


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_c1_fuse_py_torch_save_files_load(tmp_path: Path, legacy: bool) -> None:
    path = tmp_path / "fused.pt"
    torch.save(_c1_fused_results(), path, _use_new_zipfile_serialization=not legacy)
    assert path.read_bytes().startswith(b"PK\x03\x04") != legacy
    verb, noun, ids = load_predictions(path)
    want_verb, want_noun = _scores()
    assert np.array_equal(verb, want_verb) and np.array_equal(noun, want_noun) and ids == IDS


def test_torch_tensors_in_a_torch_save_zip_load(tmp_path: Path) -> None:
    verb, noun = _scores()
    data = {
        "verb_output": torch.from_numpy(verb),
        "noun_output": torch.from_numpy(noun).to(torch.bfloat16),
        "narration_id": IDS,
    }
    torch.save(data, tmp_path / "preds.pt")
    got_verb, got_noun, ids = load_predictions(tmp_path / "preds.pt")
    assert np.array_equal(got_verb, verb) and ids == IDS
    assert np.array_equal(got_noun, data["noun_output"].float().numpy())


def _with_numpy_package(data: bytes, old: str, new: str) -> bytes:
    """The pickle ``data`` with its globals in package ``old`` moved to ``new`` (e.g.
    ``numpy._core`` -> ``numpy.core``), rewritten opcode by opcode; frames are dropped,
    since their lengths would change (they are optional)."""
    ops = list(pickletools.genops(data))
    out = bytearray()
    for i, (op, arg, pos) in enumerate(ops):
        end = ops[i + 1][2] if i + 1 < len(ops) else len(data)
        if op.name == "FRAME":
            continue
        if op.name == "GLOBAL" and arg.startswith(old + "."):
            module, name = arg.split(" ")
            out += f"c{new}{module[len(old) :]}\n{name}\n".encode()
        elif op.name == "SHORT_BINUNICODE" and arg.startswith(old + "."):
            text = (new + arg[len(old) :]).encode()
            out += b"\x8c" + bytes([len(text)]) + text
        else:
            out += data[pos:end]
    return bytes(out)


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("package", ["numpy.core", "numpy._core"], ids=["numpy1", "numpy2"])
def test_numpy_1_and_numpy_2_module_paths_both_load(
    tmp_path: Path, protocol: int, package: str
) -> None:
    results = _c1_test_results()
    results["best"] = np.float32(0.5)  # a numpy scalar: multiarray.scalar
    data = pickle.dumps(results, protocol=protocol)
    installed = "numpy._core" if b"numpy._core" in data else "numpy.core"
    data = _with_numpy_package(data, installed, package)
    globals_ = {arg for op, arg, _ in pickletools.genops(data) if isinstance(arg, str)}
    assert any(g.startswith(f"{package}.multiarray") for g in globals_)  # the path under test
    other = "numpy.core" if package == "numpy._core" else "numpy._core"
    assert not any(g.startswith(f"{other}.") for g in globals_)
    (tmp_path / "preds.pkl").write_bytes(data)
    loaded = load_file(tmp_path / "preds.pkl")
    assert loaded["best"] == np.float32(0.5) and loaded["best"].dtype == np.float32
    verb, noun, ids = load_predictions(tmp_path / "preds.pkl")
    assert np.array_equal(verb, results["verb_output"]) and ids == IDS


def test_only_the_allowed_globals_resolve() -> None:
    for module, name in [("os", "system"), ("builtins", "eval"), ("numpy", "load")]:
        data = pickle.dumps(getattr(importlib.import_module(module), name))
        with pytest.raises(RefusedGlobal) as info:
            Unpickler(io.BytesIO(data)).load()
        assert info.value.name == name


# ----------------------------------------------------------------------------- wrong content


@pytest.mark.parametrize(
    ("content", "what"),
    [
        ([np.zeros(97, np.float32), np.zeros(97, np.float32)], "entry 0 of the list is a ndarray"),
        ([{"verb_output": np.zeros(97)}], "entry 0 of the list lacks noun_output, narration_id"),
        ([], "the list is empty"),
        ("P01_11_0", "it holds a str"),
        ({"verb_output": [["a"] * 97] * 2, "noun_output": 0, "narration_id": IDS}, "verb_output"),
        (
            {
                "verb_output": np.zeros((2, 97)),
                "noun_output": np.zeros((2, 300)),
                "narration_id": 7,
            },
            "narration_id is a int",
        ),
    ],  # fmt: skip
    ids=["list-of-arrays", "list-missing-keys", "empty-list", "a-string", "str-scores", "int-ids"],
)
def test_predictions_of_the_wrong_structure_say_what_the_file_must_hold_regression(
    tmp_path: Path, content: object, what: str
) -> None:
    # Regression: a pickled list of arrays instead of a dict: TypeError traceback (exit 1).
    path = tmp_path / "preds.pkl"
    path.write_bytes(pickle.dumps(content, protocol=4))
    with pytest.raises(EpicInputError, match=what):
        load_predictions(path)
    result = _validate(tmp_path, path)
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    line = _error_line(result.output)
    assert "Traceback" not in result.output and what in line
    assert "it must hold a dict {'verb_output': (N, 97) scores" in line
    assert "or a list of N dicts of one segment each" in line
