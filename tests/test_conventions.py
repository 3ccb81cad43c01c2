"""One set of command-line conventions over all seven commands (docs/conventions.md): exit
codes per class of failure, ``error:`` lines without tracebacks, the run header, dated log
lines, progress throttling, preflight of output folders, and help."""

from __future__ import annotations

import errno
import io
import logging
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import epicdata.console as cli_module
from epicdata.console import Progress, run_header
from epicdata.errors import ExitCode
from epicdata.layout import shard_path
from epicdata.synthetic import main as synth
from epicslurm.cli import main as slurm
from preprocess.cli import check, extract
from train.cli import train_main, validate_main
from train.features import main as features_main

ROOT = Path(__file__).resolve().parents[1]
#: The folders of the installed packages (the cluster layer, import name epicslurm, is slurm/).
PACKAGES = ("epicdata", "preprocess", "train", "slurm")

#: Every leaf command: (name, click command, leading args).
COMMANDS = {
    "epic-synth": (synth, []),
    "epic-extract plan": (extract, ["plan"]),
    "epic-extract run": (extract, ["run"]),
    "epic-check": (check, []),
    "epic-train": (train_main, []),
    "epic-validate": (validate_main, []),
    "epic-features": (features_main, []),
    "epic-slurm submit": (slurm, ["submit"]),
    "epic-slurm pipeline": (slurm, ["pipeline"]),
    "epic-slurm sweep": (slurm, ["sweep"]),
    "epic-slurm summary": (slurm, ["summary"]),
    "epic-slurm site-example": (slurm, ["site-example"]),
}
#: Options the slurm scripts set through the environment (docs/conventions.md).
ENVVARS = {
    "epic-extract plan": {"--store": "EPIC_STORE", "--annotations": "EPIC_ANNOTATIONS"},
    "epic-extract run": {
        "--store": "EPIC_STORE",
        "--force": "EPIC_FORCE",
        "--shard-index": "SLURM_ARRAY_TASK_ID",
        "--tmp-dir": "TMPDIR",
    },
    "epic-check": {
        "--store": "EPIC_STORE",
        "--annotations": "EPIC_ANNOTATIONS",
        "--deep": "EPIC_DEEP",
    },
    "epic-train": {
        "--store": "EPIC_STORE",
        "--annotations": "EPIC_ANNOTATIONS",
        "--output-dir": "EPIC_RUN_DIR",
        "--workers": "EPIC_WORKERS",
    },
    "epic-validate": {
        "--store": "EPIC_STORE",
        "--annotations": "EPIC_ANNOTATIONS",
        "--checkpoint": "EPIC_CHECKPOINT",
        "--split": "EPIC_SPLIT",
        "--output-dir": "EPIC_OUT",
        "--workers": "EPIC_WORKERS",
    },
}
HEADER_FIELDS = (
    "start ",
    "host ",
    "python ",
    "torch ",
    "ffmpeg ",
    "lmdb ",
    "epic-kitchens-pipeline ",
)


def invoke(name: str, *args: str, env: dict[str, str] | None = None) -> click.testing.Result:
    command, lead = COMMANDS[name]
    return CliRunner().invoke(command, [*lead, *map(str, args)], env=env)


def error_lines(result: click.testing.Result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("error:")]


def assert_named_error(result: click.testing.Result, code: ExitCode, *needles: str) -> str:
    """Exit ``code``, exactly one ``error:`` line naming every needle, no traceback."""
    assert result.exit_code == code, result.output
    lines = error_lines(result)
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def planned(small_store: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    """small_store plus a predictions file path and a run folder path for the trainer."""
    predictions = tmp_path / "preds.pkl"
    predictions.write_bytes(b"not scored: every test here fails before reading it")
    return {**small_store, "predictions": predictions, "run": tmp_path / "run"}


def args_writing_to(name: str, planned: dict[str, Path], folder: Path) -> list[str]:
    """Arguments of a valid invocation of ``name`` whose output folder is ``folder``."""
    return {
        "epic-synth": ["--out", folder / "mini"],
        "epic-extract plan": [
            "--videos", planned["videos"], "--annotations", planned["annotations"],
            "--store", folder / "store", "--splits", "test",
        ],
        "epic-extract run": ["--store", planned["store"], "--shard-index", "0", "--tmp-dir", folder],
        "epic-train": [
            "--store", planned["store"], "--annotations", planned["annotations"],
            "--output-dir", folder / "run", "--train-split", "train", "--val-split", "validation",
        ],
        "epic-validate": [
            "--predictions", planned["predictions"], "--annotations", planned["annotations"],
            "--split", "test", "--output-dir", folder / "out",
            "--sls-pt", "1", "--sls-tl", "3", "--sls-td", "3",
        ],
    }[name]  # fmt: skip


WRITERS = ("epic-synth", "epic-extract plan", "epic-extract run", "epic-train", "epic-validate")


# ----------------------------------------------------------------------------- exit codes


def test_exit_code_table_in_the_docs_is_the_code() -> None:
    text = (ROOT / "docs" / "conventions.md").read_text()
    table = text.split("## Exit codes", 1)[1].split("##", 1)[0]
    documented = [int(m) for m in re.findall(r"^\| (\d+) \|", table, flags=re.MULTILINE)]
    assert documented == sorted(code.value for code in ExitCode)
    readme = (ROOT / "README.md").read_text()
    assert "docs/conventions.md" in readme


def test_the_job_scripts_exit_codes_are_the_code_s() -> None:
    # slurm/lib.sh decides requeue (75, after SIGUSR1) or stop (76, after SIGTERM) in bash.
    lib = (ROOT / "slurm" / "lib.sh").read_text()
    codes = dict(re.findall(r"^EPIC_EXIT_(\w+)=(\d+)$", lib, flags=re.MULTILINE))
    assert codes == {"REQUEUE": str(ExitCode.REQUEUE.value), "STOPPED": str(ExitCode.STOPPED.value)}
    table = (ROOT / "docs" / "conventions.md").read_text().split("## Exit codes", 1)[1]
    row = next(line for line in table.splitlines() if line.startswith("| 75 |"))
    assert "SIGUSR1" in row and "requeue" in row
    row = next(line for line in table.splitlines() if line.startswith("| 76 |"))
    assert "SIGTERM" in row and "did not requeue" in row and "job_end.json" in row


@pytest.mark.parametrize("name", COMMANDS)
def test_bad_usage_exits_2(name: str) -> None:
    result = invoke(name, "--no-such-option")
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert "No such option" in result.output


def test_bad_input_exits_2_with_one_error_line(planned: dict[str, Path], tmp_path: Path) -> None:
    stale = tmp_path / "synth" / "EPIC-KITCHENS" / "P99" / "videos" / "P99_01.MP4"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"")
    bad_grid = tmp_path / "grid.yaml"
    bad_grid.write_text("batch_sise: [16, 32]\n")
    cases = {
        "epic-synth": (["--out", tmp_path / "synth"], ["pass an empty --out folder"]),
        "epic-extract plan": (
            ["--videos", planned["videos"], "--video-info", planned["predictions"],
             "--annotations", planned["annotations"], "--store", tmp_path / "s"],
            ["either --videos"],
        ),
        "epic-extract run": (
            ["--store", planned["store"], "--shard-index", "7"], ["shard index 7", "--array"]
        ),
        "epic-check": (["--store", tmp_path], ["manifest.json"]),
        "epic-train": (
            args_writing_to("epic-train", planned, tmp_path) + ["--resume", tmp_path / "none.pt"],
            ["none.pt"],
        ),
        "epic-validate": (
            ["--annotations", planned["annotations"], "--output-dir", tmp_path / "v"],
            ["--checkpoint, --predictions and --fuse"],
        ),
        "epic-features": (
            ["--checkpoint", planned["predictions"], "--store", planned["store"], "--annotations",
             planned["annotations"], "--out", tmp_path / "f"],
            ["preds.pkl"],
        ),  # fmt: skip
        "epic-slurm submit": (["--site", tmp_path / "none.env", "check"], ["none.env"]),
        "epic-slurm pipeline": (
            ["--annotations", planned["annotations"], "--run-dir", tmp_path / "r"],
            ["no site file", "EPIC_SITE"],
        ),
        "epic-slurm sweep": (
            ["--grid", bad_grid, "--annotations", planned["annotations"],
             "--runs-root", tmp_path / "runs"],
            ["'batch_sise'", str(bad_grid), "batch_size"],
        ),
        "epic-slurm summary": ([tmp_path / "runs"], ["sweep.json", "epic-slurm sweep"]),
        "epic-slurm site-example": (["vsc"], ["'vsc'", "cpu, genius, wice"]),
    }  # fmt: skip
    assert set(cases) == set(COMMANDS)
    for name, (args, needles) in cases.items():
        result = invoke(name, *args, env={"EPIC_SITE": None})
        assert_named_error(result, ExitCode.BAD_INPUT, *needles)


def test_a_run_folder_in_use_is_bad_input(planned: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"")
    result = invoke("epic-train", *args_writing_to("epic-train", planned, tmp_path))
    assert_named_error(result, ExitCode.BAD_INPUT, str(run / "last.pt"), "--resume auto")


@pytest.mark.parametrize("name", ["epic-synth", "epic-extract plan", "epic-extract run"])
def test_missing_ffmpeg_is_an_environment_error_not_a_bad_video(
    name: str, planned: dict[str, Path], tmp_path: Path
) -> None:
    env = {"EPIC_FFMPEG": "/nowhere/ffmpeg", "EPIC_FFPROBE": "/nowhere/ffprobe"}
    result = invoke(name, *args_writing_to(name, planned, tmp_path), env=env)
    line = assert_named_error(result, ExitCode.BAD_INPUT, "/nowhere/")
    assert "EPIC_FFMPEG" in line or "EPIC_FFPROBE" in line
    assert "bad input video" not in result.output and "download it again" not in result.output
    assert not shard_path(planned["store"], 0).exists()


def test_a_store_with_a_missing_shard_exits_5(small_store_ro: dict[str, Path]) -> None:
    result = invoke("epic-check", "--store", small_store_ro["store"])
    assert result.exit_code == ExitCode.STORE_INCOMPLETE, result.output
    assert "resubmit shards 0:" in result.output


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("epic-synth", "epicdata.synthetic.make_mini_epic"),
        ("epic-extract plan", "preprocess.cli.plan_store"),
        ("epic-extract run", "preprocess.cli.run_shard"),
        ("epic-check", "preprocess.cli.check_store"),
        ("epic-train", "train.cli.fit"),
        ("epic-validate", "train.cli.validate"),
    ],
)
def test_a_bug_exits_1_with_traceback_and_says_so_after_the_header(
    name: str, target: str, planned: dict[str, Path], tmp_path: Path, monkeypatch
) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("injected bug")

    monkeypatch.setattr(target, boom)
    args = (
        ["--store", planned["store"]]
        if name == "epic-check"
        else args_writing_to(name, planned, tmp_path)
    )
    result = invoke(name, *args)
    assert result.exit_code == ExitCode.INTERNAL, result.output
    assert "Traceback (most recent call last)" in result.output
    (line,) = error_lines(result)
    assert "internal error" in line and "ZeroDivisionError: injected bug" in line
    assert "this is a bug" in line
    header = [line for line in result.output.splitlines() if "| command: " in line]
    assert len(header) == 1 and all(field in header[0] for field in HEADER_FIELDS), header


@pytest.mark.parametrize("name", ["epic-extract run", "epic-train"])
def test_a_full_disk_mid_run_exits_4_naming_the_file(
    name: str, planned: dict[str, Path], tmp_path: Path, monkeypatch
) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "/scratch/some-file")

    monkeypatch.setattr(
        "preprocess.cli.run_shard" if name != "epic-train" else "train.cli.fit", full
    )
    result = invoke(name, *args_writing_to(name, planned, tmp_path))
    assert_named_error(result, ExitCode.NO_SPACE, "/scratch/some-file", "No space left")


# ----------------------------------------------------------------------------- preflight


@pytest.mark.parametrize("name", WRITERS)
def test_no_room_is_refused_before_any_work(
    name: str, planned: dict[str, Path], tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(cli_module, "free_bytes", lambda path: 1_000)
    result = invoke(name, *args_writing_to(name, planned, tmp_path))
    line = assert_named_error(
        result, ExitCode.NO_SPACE, "not enough space", "needs about", "(1,000 bytes) free"
    )
    assert str(tmp_path) in line
    assert not shard_path(planned["store"], 0).exists()
    # Refused before any work, and nothing left behind (a run folder, a mini-EPIC, output).
    for made in ("run", "mini", "out"):
        assert not (tmp_path / made).exists(), made


@pytest.mark.parametrize("name", WRITERS)
def test_an_immutable_output_folder_is_refused_before_any_work(
    name: str, planned: dict[str, Path], immutable_dir: Path
) -> None:
    result = invoke(name, *args_writing_to(name, planned, immutable_dir))
    assert_named_error(result, ExitCode.BAD_INPUT, "cannot write", str(immutable_dir))


def test_a_read_only_store_is_refused_before_decoding(
    planned: dict[str, Path], read_only_mount: Path, tmp_path: Path
) -> None:
    shards = shard_path(planned["store"], 0).parent
    assert not shards.exists()  # plan writes only the manifest
    shards.symlink_to(read_only_mount, target_is_directory=True)
    scratch = tmp_path / "scratch"
    result = invoke(
        "epic-extract run", "--store", planned["store"], "--shard-index", "0", "--tmp-dir", scratch
    )
    assert_named_error(result, ExitCode.BAD_INPUT, "cannot write --store", "Read-only file system")
    assert not scratch.exists()  # no shard was started, no scratch folder made


# ----------------------------------------------------------------------------- logs


def test_run_header_names_slurm_ids_versions_and_the_command() -> None:
    environ = {
        "SLURM_JOB_ID": "4242",
        "SLURM_ARRAY_JOB_ID": "4200",
        "SLURM_ARRAY_TASK_ID": "7",
        "SLURM_RESTART_COUNT": "2",
    }
    header = run_header(["/venv/bin/epic-extract", "run", "--store", "my store"], environ)
    assert "slurm job 4242 array 4200_7 restart 2" in header
    assert "command: epic-extract run --store 'my store'" in header
    for field in HEADER_FIELDS:
        assert field in header
    assert re.search(r"start \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", header), header
    assert "slurm" not in run_header(["epic-check"], {})


def test_log_lines_carry_the_date(small_store_ro: dict[str, Path]) -> None:
    result = invoke("epic-check", "--store", small_store_ro["store"])
    logged = [line for line in result.output.splitlines() if " INFO " in line]
    assert logged and all(
        re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO ", line) for line in logged
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_progress_in_a_log_is_one_plain_line_per_interval(caplog) -> None:
    clock, stream = FakeClock(), io.StringIO()
    logger = logging.getLogger("test.progress")
    with (
        caplog.at_level(logging.INFO, logger="test.progress"),
        Progress(
            200, label="shard 3", unit="frames", clock=clock, stream=stream, logger=logger
        ) as bar,
    ):
        for _ in range(100):  # 2 frames a second for 100 s
            clock.now += 1
            bar.update(2)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3  # at 30, 60 and 90 s
    assert lines[0] == "shard 3: 60/200 frames (30.0%), 2.0 frames/s, elapsed 0:00:30, ETA 0:01:10"
    assert lines[2].startswith("shard 3: 180/200 frames (90.0%)") and "ETA 0:00:10" in lines[2]
    assert stream.getvalue() == ""  # no carriage-return bar in a log


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_is_a_throttled_bar(caplog) -> None:
    clock, stream = FakeClock(), FakeTerminal()
    logger = logging.getLogger("test.progress")
    with (
        caplog.at_level(logging.INFO, logger="test.progress"),
        Progress(
            50, label="validation", unit="batches", clock=clock, stream=stream, logger=logger
        ) as bar,
    ):
        for _ in range(50):  # 10 updates a second: at most 5 draws a second
            clock.now += 0.1
            bar.update()
    out = stream.getvalue()
    assert 20 <= out.count("\r") <= 30  # redrawn every ~0.2 s, and once at the end
    assert out.endswith(
        "validation: 50/50 batches (100.0%), 10.0 batches/s, elapsed 0:00:05, ETA 0:00:00\n"
    )
    assert not caplog.records


def test_progress_is_silent_where_info_is_not_logged(caplog) -> None:
    clock, stream = FakeClock(), FakeTerminal()
    logger = logging.getLogger("test.progress.rank1")
    logger.setLevel(logging.WARNING)
    with Progress(10, label="x", unit="batches", clock=clock, stream=stream, logger=logger) as bar:
        for _ in range(10):
            clock.now += 60
            bar.update()
    assert stream.getvalue() == "" and not caplog.records


def test_one_logging_setup_and_no_prints_in_library_code() -> None:
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            assert not re.search(r"(?<![\w.])print\(", text), path
            if path != ROOT / "epicdata" / "console.py":
                assert "basicConfig" not in text, path


# ----------------------------------------------------------------------------- help


def _leaf(name: str) -> click.Command:
    command, lead = COMMANDS[name]
    return command.commands[lead[0]] if lead else command


@pytest.mark.parametrize("name", COMMANDS)
def test_help_shows_defaults_choices_envvars_and_an_example(name: str) -> None:
    result = invoke(name, "-h")
    assert result.exit_code == 0, result.output
    tail = result.output.rstrip().splitlines()[-2:]
    assert tail[0].strip() == "Example:" and tail[1].strip().startswith(name), tail
    command = _leaf(name)
    ctx = click.Context(command, info_name=name, show_default=True)
    for param in command.params:
        if not isinstance(param, click.Option) or param.name in ("help", "verbose"):
            continue
        record = param.get_help_record(ctx)
        assert record is not None, param.name
        flag_off = param.is_flag and not param.secondary_opts  # off unless given
        assert param.help, param.name
        if not (param.required or flag_off):
            assert "default:" in record[1], (name, param.name, record)
        if isinstance(param.type, click.Choice):
            assert "|".join(param.type.choices) in record[0], record
    for option, var in ENVVARS.get(name, {}).items():
        (param,) = [p for p in command.params if option in p.opts]
        assert param.envvar == var and f"env var: {var}" in param.get_help_record(ctx)[1]


def test_the_group_takes_dash_h_too() -> None:
    result = CliRunner().invoke(extract, ["-h"])
    assert result.exit_code == 0 and "Example:" in result.output


def test_environment_variables_are_read(small_store_ro: dict[str, Path]) -> None:
    result = CliRunner().invoke(check, [], env={"EPIC_STORE": str(small_store_ro["store"])})
    assert result.exit_code == ExitCode.STORE_INCOMPLETE, result.output
    assert str(small_store_ro["store"].resolve()) in result.output


@pytest.mark.parametrize(
    ("error", "needle"),
    [
        (
            PermissionError(errno.EACCES, "Permission denied", "/data/P01_01.MP4"),
            "permission denied",
        ),
        (OSError(errno.EROFS, "Read-only file system", "/store/shards/x"), "read-only file system"),
    ],
)
def test_an_os_error_about_a_path_is_named_not_a_traceback(
    error: OSError, needle: str, small_store_ro: dict[str, Path], monkeypatch
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr("preprocess.cli.check_store", fail)
    result = invoke("epic-check", "--store", small_store_ro["store"])
    assert_named_error(result, ExitCode.BAD_INPUT, needle, error.filename)
