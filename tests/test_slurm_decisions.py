"""epic-slurm's decisions without a SLURM (issue 21, items 1-10 on the Python side): run
statuses from the run folder and squeue, damaged run folders, a chain checked whole before
it is submitted and cancelled if refused midway, changed training options, dry runs that
write nothing, an old plan, which value wins (option > EPIC_* > site file), the site's
paths, and SLURM's commands faked (sbatch, scancel, squeue, sinfo) on PATH."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import epicslurm.pipeline as pipeline_module
import epicslurm.sweep as sweep_module
from epicdata.errors import EpicInputError
from epicslurm.cli import main as slurm
from epicslurm.pipeline import (
    RunFolderUnreadable,
    RunStatus,
    combined_status,
    queued_tasks,
    run_pipeline,
    run_status,
    train_options,
)
from epicslurm.site import SCRIPTS, load_site
from epicslurm.sweep import (
    ACTION_COLUMN,
    Queue,
    format_summary,
    load_grid,
    summary,
    sweep_key,
    sweep_queue,
    write_csv,
    write_sweep,
)

FAKE_SBATCH = r"""#!/bin/sh
# Records "TEST_ONLY JOB_NAME" per call; refuses the job named epic-$FAKE_REFUSE when its
# --test-only flag is $FAKE_REFUSE_TEST (1: at the check, 0: when really submitted).
log="${FAKE_SLURM_DIR:?}/sbatch.log"
test_only=0
name=
for word in "$@"; do
    case "$word" in
        --test-only) test_only=1 ;;
        --job-name=*) name=${word#--job-name=} ;;
    esac
done
echo "$test_only $name" >> "$log"
if [ "$name" = "epic-${FAKE_REFUSE:-none}" ] && [ "$test_only" = "${FAKE_REFUSE_TEST:-0}" ]; then
    echo "sbatch: error: Batch job submission failed: Requested node configuration is not available" >&2
    exit 1
fi
if [ "$test_only" = 1 ]; then
    echo "sbatch: Job 9 to start at now" >&2
    exit 0
fi
echo "$((99 + $(grep -c '^0 ' "$log")))"
"""
FAKE_SCANCEL = '#!/bin/sh\necho "$@" >> "${FAKE_SLURM_DIR:?}/scancel.log"\n'
FAKE_SQUEUE = (
    '#!/bin/sh\ncat "${FAKE_SLURM_DIR:?}/squeue.out" 2>/dev/null\nexit "${FAKE_SQUEUE_RC:-0}"\n'
)
FAKE_SINFO = "#!/bin/sh\nexit 1\n"


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    """sbatch, scancel, squeue and sinfo faked first on PATH; returns the folder of their
    records (sbatch.log, scancel.log) and of squeue's output (squeue.out)."""
    folder = tmp_path / "fake-slurm"
    folder.mkdir()
    for name, text in [("sbatch", FAKE_SBATCH), ("scancel", FAKE_SCANCEL)] + [
        ("squeue", FAKE_SQUEUE),
        ("sinfo", FAKE_SINFO),
    ]:
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(folder))
    return folder


def _submitted(fake: Path) -> list[str]:
    """The job names sbatch really submitted (not --test-only)."""
    log = fake / "sbatch.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [line.split()[1] for line in lines if line.startswith("0 ")]


def _site(tmp_path: Path, extra: str = "", venv: bool = True) -> Path:
    """The CPU site example with this test's own folders (and a venv that exists)."""
    if venv:
        (tmp_path / "venv" / "bin").mkdir(parents=True, exist_ok=True)
        (tmp_path / "venv" / "bin" / "activate").write_text("")
    path = tmp_path / "site.env"
    path.write_text(
        f"source {SCRIPTS / 'sites' / 'cpu.env'}\nEPIC_VENV={tmp_path / 'venv'}\n"
        f"EPIC_LOGS={tmp_path / 'logs'}\nEPIC_STORE={tmp_path / 'site-store'}\n{extra}"
    )
    return path


def _fake_run(run: Path, *, epochs: int, done: int, **files: str | bytes) -> Path:
    """A run folder as epic-train and slurm/lib.sh leave it (``files``: name -> content)."""
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(f"epochs: {epochs}\n")
    rows = "".join(f"{e},{10.0 + e}\n" for e in range(1, done + 1))
    (run / "summary.csv").write_text(f"epoch,{ACTION_COLUMN}\n{rows}")
    for name, content in files.items():
        path = run / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return run


def _error_line(output: str) -> str:
    """The ``error:`` line of a command's output (after the run header line)."""
    return next(line for line in output.splitlines() if line.startswith("error: "))


def _job_end(requeued: bool, job: str = "17") -> str:
    """job_end.json as slurm/lib.sh writes it (the contract of docs/cluster.md)."""
    return json.dumps(
        {
            "signal": "SIGUSR1" if requeued else "SIGTERM",
            "job_id": job,
            "array_task_id": None,
            "date": "2026-12-06T10:00:00+00:00",
            "requeued": requeued,
            "checkpoint": True,
        }
    )


@pytest.fixture
def quiet_queue(monkeypatch):
    """squeue stands in: nothing of the chain is queued."""
    monkeypatch.setattr(pipeline_module, "queued_jobs", lambda key, site: [])


def _pipeline(small_store_ro, tmp_path, run: Path, train_args=(), dry_run=True):
    return run_pipeline(
        load_site(_site(tmp_path)),
        store=small_store_ro["store"],
        annotations=small_store_ro["annotations"],
        run_dir=run,
        train_args=list(train_args),
        dry_run=dry_run,
    )


# ----------------------------------------------------------------------------- item 1


def test_a_run_stopped_by_sigterm_is_resumed_by_the_pipeline_not_called_failed(
    small_store_ro, tmp_path, quiet_queue, caplog
):
    run = _fake_run(
        tmp_path / "run", epochs=3, done=1, **{"last.pt": b"", "job_end.json": _job_end(False)}
    )
    status = run_status(run)
    assert status.state == "stopped" and "SIGTERM, job 17" in status.detail
    caplog.set_level("INFO")
    jobs = _pipeline(small_store_ro, tmp_path, run)
    assert [j.kind for j in jobs] == ["extract", "check", "train", "validate"]
    assert "training: stopped, resumes from last.pt (1/3 epochs), SIGTERM, job 17" in caplog.text
    # The sweep likewise submits its stopped runs again.
    runs = tmp_path / "runs"
    grid = load_grid(_grid(tmp_path, "lr: [1e-4, 2e-4]\nfixed: {epochs: 3}\n"))
    write_sweep(runs, grid)
    _fake_run(runs / "lr1e-4", epochs=3, done=3)
    _fake_run(runs / "lr2e-4", epochs=3, done=1, **{"job_end.json": _job_end(False)})
    assert sweep_module._runs_to_do(runs, grid.runs) == [1]


def _grid(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- item 2


@pytest.mark.parametrize(
    ("folder", "queued", "known", "expected"),
    [
        ("new", None, True, "pending"),
        ("new", "PENDING", True, "pending"),
        ("started", "RUNNING", True, "running"),
        ("requeued", "PENDING", True, "requeued"),
        ("stopped", "PENDING", True, "requeued"),  # resubmitted after a stop
        ("requeued", "RUNNING", True, "running"),  # the marker stays while it runs again
        ("stopped", None, True, "stopped"),
        ("requeued", None, True, "stopped"),  # requeued, then cancelled while pending
        ("started", None, True, "stopped"),  # cancelled: was "running" for ever
        ("failed", None, True, "failed"),
        ("done", None, True, "done"),
        ("started", None, False, "running"),  # no squeue: the folder alone
        ("requeued", None, False, "requeued"),
        ("stopped", None, False, "stopped"),
    ],
)
def test_a_run_s_status_combines_its_folder_and_squeue(folder, queued, known, expected):
    state, _note = combined_status(RunStatus(folder, 1, 3), queued, known)
    assert state == expected


def test_a_cancelled_sweep_run_is_stopped_not_running_for_ever(tmp_path) -> None:
    runs = tmp_path / "runs"
    write_sweep(runs, load_grid(_grid(tmp_path, "lr: [1e-4, 2e-4, 3e-4]\nfixed: {epochs: 3}\n")))
    for name in ("lr1e-4", "lr2e-4", "lr3e-4"):
        _fake_run(runs / name, epochs=3, done=1)
    rows = summary(runs, Queue({1: "RUNNING", 2: "PENDING"}))
    assert {r.name: r.status for r in rows} == {
        "lr1e-4": "stopped",
        "lr2e-4": "running",
        "lr3e-4": "requeued",
    }
    assert "no longer queued" in next(r.detail for r in rows if r.name == "lr1e-4")
    text = format_summary(rows)
    assert (
        text.splitlines()[-1]
        == "3 runs: 0 done, 1 running, 1 requeued, 1 stopped, 0 failed, 0 pending"
    )


def test_squeue_s_array_tasks_are_read_one_a_line(fake_slurm, tmp_path) -> None:
    key = sweep_key(tmp_path / "runs")
    (fake_slurm / "squeue.out").write_text(
        f"41_3|PENDING|{key}\n41_4|RUNNING|{key}\n42|RUNNING|{key}\n43_5|RUNNING|epic-sweep-other\n"
    )
    assert queued_tasks(key, None) == {3: "PENDING", 4: "RUNNING"}
    assert sweep_queue(tmp_path / "runs", None) == Queue({3: "PENDING", 4: "RUNNING"})
    os.environ["FAKE_SQUEUE_RC"] = "1"
    try:
        queue = sweep_queue(tmp_path / "runs", None)
    finally:
        del os.environ["FAKE_SQUEUE_RC"]
    assert not queue.known and "squeue failed" in queue.note


DAMAGES = [
    ("summary.csv", "epoch\nabc\n", "summary.csv line 2: epoch 'abc' is not a whole number"),
    ("summary.csv", "epoch\n1.0\n", "epoch '1.0' is not a whole number"),
    ("summary.csv", b"epoch\n1\xff\n", "summary.csv: not UTF-8"),
    ("summary.csv", None, "summary.csv is a folder"),
    ("config.yaml", "epochs: [3\n", "config.yaml: not YAML"),
    ("config.yaml", "- 3\n", "config.yaml holds a list, not a mapping"),
    ("config.yaml", "epochs: abc\n", "config.yaml: epochs: expected an integer"),
    ("FAILED", b"exit 1, job \xff\n", "FAILED: not UTF-8"),
    ("config.yaml", None, "config.yaml is a folder"),
    ("job_end.json", "{", "job_end.json: not JSON"),
]


@pytest.mark.parametrize(("name", "content", "reason"), DAMAGES)
def test_a_damaged_run_folder_is_one_unreadable_row_and_the_table_goes_on(
    tmp_path, monkeypatch, name, content, reason
) -> None:
    runs = tmp_path / "runs"
    write_sweep(runs, load_grid(_grid(tmp_path, "lr: [1e-4, 2e-4]\nfixed: {epochs: 2}\n")))
    damaged = _fake_run(runs / "lr1e-4", epochs=2, done=1)
    _fake_run(runs / "lr2e-4", epochs=2, done=2)
    path = damaged / name
    if path.exists():
        path.unlink()
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    with pytest.raises(RunFolderUnreadable) as caught:
        run_status(damaged)
    assert reason in str(caught.value) and str(damaged) in str(caught.value)
    monkeypatch.setattr(sweep_module, "queued_tasks", lambda key, site: {})
    result = CliRunner().invoke(slurm, ["summary", str(runs)])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.output.splitlines() if line.startswith("lr")}
    assert rows["lr1e-4"].split()[1] == "unreadable" and reason in rows["lr1e-4"]
    assert rows["lr2e-4"].split()[1] == "done"
    assert "Traceback" not in result.output


def test_requeue_on_term_is_a_checked_site_value(tmp_path) -> None:
    assert load_site(_site(tmp_path, "EPIC_REQUEUE_ON_TERM=1\n")).get("EPIC_REQUEUE_ON_TERM") == "1"
    assert load_site(_site(tmp_path)).get("EPIC_REQUEUE_ON_TERM") == "0"  # cpu.env's default
    with pytest.raises(EpicInputError, match="EPIC_REQUEUE_ON_TERM must be 0 or 1, not 'yes'"):
        load_site(_site(tmp_path, "EPIC_REQUEUE_ON_TERM=yes\n"))


# ----------------------------------------------------------------------------- item 3


def test_a_site_value_that_does_not_split_is_exit_2_naming_the_file_and_key(tmp_path) -> None:
    site = _site(tmp_path, "EPIC_SBATCH_EXTRA='--comment=\"a b'\n")
    result = CliRunner().invoke(slurm, ["submit", "--site", str(site), "check", "--dry-run"])
    assert result.exit_code == 2, result.output
    first = _error_line(result.output)
    assert first.startswith("error: EPIC_SBATCH_EXTRA does not split into sbatch options")
    assert "No closing quotation" in first and str(site) in first


def test_a_chain_is_checked_whole_before_its_first_job_is_sent(
    small_store_ro, tmp_path, fake_slurm, monkeypatch
) -> None:
    monkeypatch.setenv("FAKE_REFUSE", "train")
    monkeypatch.setenv("FAKE_REFUSE_TEST", "1")
    with pytest.raises(EpicInputError, match="sbatch --test-only refused the train job"):
        _pipeline(small_store_ro, tmp_path, tmp_path / "run", dry_run=False)
    assert _submitted(fake_slurm) == []
    checked = (fake_slurm / "sbatch.log").read_text().split()
    assert checked == ["1", "epic-extract", "1", "epic-check", "1", "epic-train"]


def test_a_chain_refused_midway_cancels_what_this_run_submitted(
    small_store_ro, tmp_path, fake_slurm, monkeypatch
) -> None:
    monkeypatch.setenv("FAKE_REFUSE", "train")
    with pytest.raises(EpicInputError) as caught:
        _pipeline(small_store_ro, tmp_path, tmp_path / "run", dry_run=False)
    message = str(caught.value)
    assert "the train job was refused after 2 job(s) of the chain were submitted" in message
    assert "cancelled the jobs this run had submitted (extract 100, check 101)" in message
    assert "Requested node configuration is not available" in message
    assert _submitted(fake_slurm) == ["epic-extract", "epic-check", "epic-train"]
    assert (fake_slurm / "scancel.log").read_text().split() == ["100", "101"]


def test_a_whole_chain_is_submitted_with_its_dependencies(
    small_store_ro, tmp_path, fake_slurm
) -> None:
    jobs = _pipeline(small_store_ro, tmp_path, tmp_path / "run", dry_run=False)
    assert [(j.kind, j.job_id) for j in jobs] == [
        ("extract", "100"),
        ("check", "101"),
        ("train", "102"),
        ("validate", "103"),
    ]
    assert "--dependency=afterok:102" in jobs[3].command
    assert not (fake_slurm / "scancel.log").exists()


# ----------------------------------------------------------------------------- item 4


def _done_run(tmp_path: Path) -> Path:
    run = _fake_run(tmp_path / "run", epochs=2, done=2, **{"best.pt": b""})
    (run / "val").mkdir()
    (run / "val" / "metrics.json").write_text("{}")
    return run


def _kinds(jobs) -> list[str]:
    return [j.kind for j in jobs]


def test_changed_training_options_on_a_finished_run_are_named_not_ignored(
    small_store_ro, tmp_path, quiet_queue, caplog
) -> None:
    run = _done_run(tmp_path)
    assert "train" not in _kinds(_pipeline(small_store_ro, tmp_path, run, ["--epochs", "2"]))
    with pytest.raises(EpicInputError) as caught:
        _pipeline(small_store_ro, tmp_path, run, ["--epochs", "2", "--lr", "0.01"])
    message = str(caught.value)
    assert "the run is done and the training options differ from the run's: lr" in message
    assert "-> 0.01" in message and str(run / "config.yaml") in message
    assert "new --run-dir" in message and "--allow-config-change after `--`" in message
    allowed = ["--lr", "0.01", "--allow-config-change"]
    assert _kinds(_pipeline(small_store_ro, tmp_path, run, allowed))[-2:] == ["train", "validate"]
    # More epochs with the plateau scheduler (the default): epic-train goes on without the flag.
    caplog.set_level("INFO")
    assert "train" in _kinds(_pipeline(small_store_ro, tmp_path, run, ["--epochs=4"]))
    assert "training: done, trains on from last.pt (2/2 epochs)" in caplog.text
    assert "options changed from config.yaml: epochs 2 -> 4" in caplog.text


def test_train_options_reads_what_epic_train_would(tmp_path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("lr: 0.5\nepochs: 9\n")
    words = ["--epochs", "3", f"--config={config}", "--deterministic", "--no-compile"]
    words += ["--num-frames=16", "--unknown", "x", "--allow-config-change"]
    assert train_options(words) == {
        "lr": 0.5,
        "epochs": 3,
        "deterministic": True,
        "compile": False,
        "num_frames": 16,
    }
    with pytest.raises(EpicInputError, match="--epochs: expected an integer"):
        train_options(["--epochs", "many"])
    with pytest.raises(EpicInputError, match="batch_size=0: must be >= 1"):
        train_options(["--batch-size", "0"])


# ----------------------------------------------------------------------------- item 5


def test_sweep_summary_csv_has_one_epochs_column_when_epochs_is_fixed(tmp_path) -> None:
    runs = tmp_path / "runs"
    write_sweep(runs, load_grid(_grid(tmp_path, "lr: [1e-4]\nfixed: {epochs: 2}\n")))
    _fake_run(runs / "lr1e-4", epochs=2, done=2)
    with open(write_csv(summary(runs), tmp_path / "t.csv"), newline="") as handle:
        header = next(csv.reader(handle))
    assert header.count("epochs") == 1 and "lr" in header


def test_the_pipeline_has_the_allow_missing_option_its_plan_hint_names(
    tmp_path, monkeypatch
) -> None:
    from preprocess.plan import _refuse_problems

    with pytest.raises(EpicInputError, match="--allow-missing"):
        _refuse_problems({"P01_01": "missing"}, [], annotated=1, allow_missing=False, where="v")
    seen = {}

    def plan_store(**options):
        seen.update(options)
        raise EpicInputError("stop here")

    import epicslurm.cli as cli_module

    monkeypatch.setattr(cli_module, "plan_store", plan_store)
    args = ["pipeline", "--site", str(_site(tmp_path)), "--videos", str(tmp_path)]
    args += ["--annotations", str(tmp_path), "--run-dir", str(tmp_path / "run")]
    result = CliRunner().invoke(slurm, [*args, "--allow-missing", "--dry-run"])
    assert result.exit_code == 2 and "stop here" in result.output, result.output
    assert seen["allow_missing"] is True and seen["write"] is False


@pytest.mark.parametrize(
    "args",
    [["pipeline", "--bogus"], ["submit", "nokind"], ["summary"], ["pipeline", "--shards", "0"]],
)
def test_epic_slurm_usage_errors_are_in_the_project_form(args) -> None:
    result = CliRunner().invoke(slurm, args, prog_name="epic-slurm")
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and "Error:" not in result.output, result.output
    assert "(epic-slurm" in result.output.splitlines()[0]


def test_a_failed_extraction_record_keeps_the_video_apart_from_the_array_line(tmp_path) -> None:
    from preprocess.extract import _record_failure

    exc = EpicInputError(
        "shard 1 not published",
        where="P02_01",
        fix="resubmit: epic-slurm submit extract --array 1",
        details="  P02_01: moov atom not found",
    )
    record = tmp_path / "failures" / "shard-00001.txt"
    _record_failure(record, exc)
    assert "--array 1; P02_01: moov atom not found" in record.read_text()


# ----------------------------------------------------------------------------- item 6


def _pipeline_args(site: Path, store: Path, annotations: Path, run: Path) -> list[str]:
    return [
        "pipeline", "--site", str(site), "--store", str(store),
        "--annotations", str(annotations), "--run-dir", str(run),
    ]  # fmt: skip


def test_a_pipeline_dry_run_plans_in_memory_and_writes_nothing(
    mini_epic, tmp_path, fake_slurm
) -> None:
    site = _site(tmp_path)
    store, run = tmp_path / "store", tmp_path / "run"
    args = _pipeline_args(site, store, mini_epic.annotations_dir, run)
    args += ["--videos", str(mini_epic.videos_dir), "--dry-run", "--", "--epochs", "1"]
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(slurm, args)
    assert result.exit_code == 0, result.output
    assert result.output.count("sbatch --parsable") == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no store, run or logs
    assert _submitted(fake_slurm) == []


@pytest.mark.parametrize(
    ("command", "word"),
    [
        (["pipeline"], "--dry-run"),
        (["pipeline"], "--site=x"),
        (["pipeline"], "--keep"),
        (["submit", "train"], "--dry-run"),
        (["submit", "extract", "--array", "0"], "--array"),
    ],
)
def test_epic_slurm_refuses_its_own_options_after_the_dashes(tmp_path, command, word) -> None:
    args = [command[0], "--site", str(_site(tmp_path)), *command[1:]]
    if command[0] == "pipeline":
        args += ["--annotations", str(tmp_path), "--run-dir", str(tmp_path / "run")]
    result = CliRunner().invoke(slurm, [*args, "--", "--epochs", "1", word])
    assert result.exit_code == 2, result.output
    name = word.split("=")[0]
    assert f"error: {name} is an option of epic-slurm {command[0]}" in result.output
    assert "put it before `--`" in result.output


@pytest.mark.parametrize(
    ("kind", "option", "for_kinds"),
    [
        ("train", ["--array", "1"], "extract"),
        ("check", ["--array", "1"], "extract"),
        ("validate", ["--array", "1"], "extract"),
        ("check", ["--force"], "extract"),
        ("extract", ["--checkpoint", "c.pt"], "validate, features"),
        ("train", ["--nodes", "2"], "train-multi"),
        ("extract", ["--run-dir", "r"], "train, train-multi"),
    ],
)
def test_submit_refuses_options_that_mean_nothing_for_the_kind(
    tmp_path, kind, option, for_kinds
) -> None:
    args = ["submit", "--site", str(_site(tmp_path)), kind, *option, "--dry-run"]
    result = CliRunner().invoke(slurm, args)
    assert result.exit_code == 2, result.output
    assert f"error: {option[0]} means nothing for a {kind} job" in result.output
    assert f"is for {for_kinds})" in result.output


# ----------------------------------------------------------------------------- item 7


def test_an_existing_plan_that_differs_from_the_options_given_is_named(
    small_store_ro, tmp_path, fake_slurm
) -> None:
    args = _pipeline_args(
        _site(tmp_path), small_store_ro["store"], small_store_ro["annotations"], tmp_path / "run"
    )
    result = CliRunner().invoke(
        slurm, [*args, "--keep", "all", "--num-frames", "16", "--shards", "2", "--dry-run"]
    )
    assert result.exit_code == 2, result.output
    first = _error_line(result.output)
    assert "the store is planned already and these options differ from its plan" in first
    assert "--keep all (the plan: segments)" in first and "--shards 2 (the plan: 1)" in first
    assert "a new --store" in first
    # The plan's own values, or none of them, are fine.
    same = CliRunner().invoke(slurm, [*args, "--keep", "segments", "--shards", "1", "--dry-run"])
    assert same.exit_code == 0, same.output


@pytest.fixture(scope="module")
def sampled_8_store(small_store_ro, tmp_path_factory) -> Path:
    """small_store's inputs planned --keep sampled --num-frames 8 (not extracted)."""
    from preprocess.plan import plan_store

    store = tmp_path_factory.mktemp("sampled8") / "store"
    plan_store(
        store_root=store,
        annotations_dir=small_store_ro["annotations"],
        videos_root=small_store_ro["videos"],
        splits=("test",),
        shards=1,
        keep="sampled",
        num_frames=(8,),
    )
    return store


@pytest.mark.parametrize(
    ("train_args", "needle"),
    [
        (
            ["--num-frames", "16"],
            "clip lengths 8 only; training (the options after --) also needs 16",
        ),
        (["--sampling", "tsn"], "trains with sampling tsn"),
    ],
)
def test_training_the_store_cannot_serve_is_refused_before_anything_is_submitted(
    sampled_8_store, small_store_ro, tmp_path, fake_slurm, train_args, needle
) -> None:
    with pytest.raises(EpicInputError, match=re.escape(needle)) as caught:
        run_pipeline(
            load_site(_site(tmp_path)),
            store=sampled_8_store,
            annotations=small_store_ro["annotations"],
            run_dir=tmp_path / "run",
            train_args=train_args,
            dry_run=False,
        )
    assert str(sampled_8_store) in str(caught.value)
    assert not (fake_slurm / "sbatch.log").exists()


def test_the_pipeline_s_keep_help_says_why_it_is_not_epic_extract_s() -> None:
    result = CliRunner().invoke(slurm, ["pipeline", "--help"])
    assert "Not epic-extract plan's segments" in " ".join(result.output.split())


# ----------------------------------------------------------------------------- item 8


def _export(output: str) -> dict[str, str]:
    line = next(w for w in output.split() if w.startswith("--export="))
    return dict(item.split("=", 1) for item in line.removeprefix("--export=").split(",")[1:])


def test_option_beats_epic_variable_beats_site_file_for_submit(tmp_path, monkeypatch) -> None:
    site = _site(tmp_path)
    args = ["submit", "--site", str(site), "check", "--dry-run"]
    monkeypatch.delenv("EPIC_STORE", raising=False)
    result = CliRunner().invoke(slurm, args)
    assert _export(result.output)["EPIC_STORE"] == str(tmp_path / "site-store")
    monkeypatch.setenv("EPIC_STORE", str(tmp_path / "env-store"))
    monkeypatch.setenv("EPIC_ANNOTATIONS", str(tmp_path / "env-ann"))
    result = CliRunner().invoke(slurm, args)
    export = _export(result.output)
    assert export["EPIC_STORE"] == str(tmp_path / "env-store")
    assert export["EPIC_ANNOTATIONS"] == str(tmp_path / "env-ann")
    result = CliRunner().invoke(slurm, [*args, "--store", str(tmp_path / "option-store")])
    assert _export(result.output)["EPIC_STORE"] == str(tmp_path / "option-store")
    # A site value is the site file's: the caller's environment does not change it.
    monkeypatch.setenv("EPIC_PARTITION_CPU", "elsewhere")
    assert "--partition=debug" in CliRunner().invoke(slurm, args).output


def test_option_beats_epic_variable_for_pipeline_and_sweep(
    small_store_extracted_ro, tmp_path, monkeypatch, fake_slurm
) -> None:
    paths = small_store_extracted_ro
    site = _site(tmp_path)
    monkeypatch.setenv("EPIC_STORE", str(paths["store"]))
    monkeypatch.setenv("EPIC_ANNOTATIONS", str(paths["annotations"]))
    monkeypatch.setenv("EPIC_RUN_DIR", str(tmp_path / "env-run"))
    result = CliRunner().invoke(slurm, ["pipeline", "--site", str(site), "--dry-run"])
    assert result.exit_code == 0, result.output  # was: Missing option '--annotations'
    train = next(line for line in result.output.splitlines() if "epic-train" in line)
    export = _export(train)
    assert export["EPIC_STORE"] == str(paths["store"])
    assert export["EPIC_ANNOTATIONS"] == str(paths["annotations"])
    assert export["EPIC_RUN_DIR"] == str(tmp_path / "env-run")
    args = ["pipeline", "--site", str(site), "--run-dir", str(tmp_path / "option-run")]
    result = CliRunner().invoke(slurm, [*args, "--dry-run"])
    train = next(line for line in result.output.splitlines() if "epic-train" in line)
    assert _export(train)["EPIC_RUN_DIR"] == str(tmp_path / "option-run")
    grid = _grid(tmp_path, "lr: [1e-4]\nfixed: {epochs: 1}\n")
    args = ["sweep", "--site", str(site), "--grid", str(grid), "--runs-root", str(tmp_path / "r")]
    result = CliRunner().invoke(slurm, [*args, "--dry-run"])
    assert result.exit_code == 0, result.output
    export = _export(result.output)
    assert export["EPIC_STORE"] == str(paths["store"])
    assert export["EPIC_ANNOTATIONS"] == str(paths["annotations"])


# ----------------------------------------------------------------------------- item 9


def test_a_site_whose_paths_would_fail_every_job_is_refused_before_submitting(
    tmp_path, fake_slurm
) -> None:
    (tmp_path / "a-file").write_text("")
    site = _site(tmp_path, f"EPIC_LOGS={tmp_path / 'a-file' / 'logs'}\n", venv=False)
    args = ["submit", "--site", str(site), "check", "--store", str(tmp_path / "no" / "store")]
    result = CliRunner().invoke(slurm, args)
    assert result.exit_code == 2, result.output
    assert _error_line(result.output).startswith(
        "error: the site's paths would fail in every job (3 problems)"
    )
    assert f"no {tmp_path / 'venv' / 'bin' / 'activate'}" in result.output
    assert "install.sh" in result.output
    assert f"{tmp_path / 'a-file'} is not a folder" in result.output
    assert f"its parent folder {tmp_path / 'no'} does not exist" in result.output
    assert _submitted(fake_slurm) == []
    dry = CliRunner().invoke(slurm, [*args, "--dry-run"])  # says nothing: a dry run prints
    assert dry.exit_code == 0 and "sbatch --parsable" in dry.output, dry.output


# ----------------------------------------------------------------------------- item 10


@pytest.mark.parametrize("squeue", ["missing", "failing"])
def test_a_pipeline_dry_run_without_slurm_says_so_and_prints_the_chain(
    small_store_ro, tmp_path, monkeypatch, squeue
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "env"):  # what reading the site file needs; no SLURM command
        os.symlink(shutil.which(tool), bin_dir / tool)
    if squeue == "failing":
        (bin_dir / "squeue").write_text(
            "#!/bin/sh\necho 'Unable to contact slurm controller' >&2\nexit 1\n"
        )
        (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    args = _pipeline_args(
        _site(tmp_path), small_store_ro["store"], small_store_ro["annotations"], tmp_path / "run"
    )
    result = CliRunner().invoke(slurm, [*args, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert result.output.count("sbatch --parsable") == 4
    assert "dry run without SLURM: a chain already queued is not ruled out" in result.output
    expected = "squeue not found" if squeue == "missing" else "squeue failed"
    assert expected in result.output
    # A real submission still needs the controller.
    result = CliRunner().invoke(slurm, args)
    assert result.exit_code == 2 and expected in result.output, result.output


def test_submit_features_takes_the_split_as_validate_does(tmp_path) -> None:
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"not read by a dry run")
    args = ["submit", "--site", str(_site(tmp_path)), "features", "--store", str(tmp_path)]
    args += ["--annotations", str(tmp_path), "--checkpoint", str(checkpoint)]
    args += ["--out", str(tmp_path / "feats"), "--split", "train", "--dry-run"]
    result = CliRunner().invoke(slurm, args)
    assert result.exit_code == 0, result.output
    assert f"EPIC_CHECKPOINT={checkpoint},EPIC_OUT={tmp_path / 'feats'},EPIC_SPLIT=train " in (
        result.output
    )
    assert result.output.rstrip().endswith("slurm/features.sbatch")


def test_a_pipeline_on_an_unplanned_store_without_videos_says_to_give_them(
    small_store_ro, tmp_path, fake_slurm
) -> None:
    store = tmp_path / "new-store"
    store.mkdir()
    args = ["pipeline", "--site", str(_site(tmp_path)), "--store", str(store)]
    args += ["--annotations", str(small_store_ro["annotations"]), "--run-dir", str(tmp_path / "r")]
    result = CliRunner().invoke(slurm, [*args, "--dry-run"])
    assert result.exit_code == 2, result.output
    assert "the store has no plan yet" in result.output and "give --videos" in result.output
