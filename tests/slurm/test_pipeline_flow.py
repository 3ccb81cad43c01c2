"""`epic-slurm pipeline --flow`: two streams (RGB and flow, each from its own store into
RUN/rgb and RUN/flow) and their fusion into RUN/fused, planned as dry runs without a SLURM
(squeue faked), the fusion job script run with a stand-in epic-validate, and the whole
two-stream chain on the real SLURM fixture (tests/slurm/conftest.py)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

import epicslurm.pipeline as pipeline_module
from epicdata.errors import EpicInputError
from epicdata.synthetic import MiniEpic, make_mini_epic
from epicslurm.cli import main as slurm
from epicslurm.pipeline import (
    Stream,
    chain_key,
    fusion_key,
    run_two_streams,
    stream_options,
)
from epicslurm.site import SCRIPTS, load_site
from epicslurm.sweep import check_store_serves

#: The flow rules of the two video groups (issue 23): (stride, dilation, bound).
FLOW_RULES = {"PXX_YY": (2, 3, 25.0), "PXX_1YY": (1, 1, 8.0)}


def _site(tmp_path: Path, extra: str = "") -> Path:
    """The CPU site example with this test's folders and a venv that exists."""
    (tmp_path / "venv" / "bin").mkdir(parents=True, exist_ok=True)
    (tmp_path / "venv" / "bin" / "activate").write_text("")
    path = tmp_path / "site.env"
    path.write_text(
        f"source {SCRIPTS / 'sites' / 'cpu.env'}\nEPIC_VENV={tmp_path / 'venv'}\n"
        f"EPIC_LOGS={tmp_path / 'logs'}\n{extra}"
    )
    return path


def _stores(planned: Path, root: Path) -> tuple[Path, Path]:
    """An RGB store and a flow store, planned, nothing extracted: the RGB store is the
    planned small store's manifest; the flow store is the same plan marked flow, each video
    with its group's stride, dilation and bound (what `epic-extract plan --flow` records)."""
    text = (planned / "manifest.json").read_text()
    rgb, flow = root / "rgb-store", root / "flow-store"
    rgb.mkdir()
    flow.mkdir()
    (rgb / "manifest.json").write_text(text)
    data = json.loads(text)
    data["params"].update(modality="flow", flow_stack=5)
    for shard in data["shards"]:
        for video in shard["videos"]:
            group = "PXX_1YY" if len(video["video_id"].split("_")[1]) == 3 else "PXX_YY"
            stride, dilation, bound = FLOW_RULES[group]
            video.update(flow_stride=stride, flow_dilation=dilation, flow_bound=bound)
    (flow / "manifest.json").write_text(json.dumps(data))
    return rgb, flow


@pytest.fixture
def two_stores(small_store_ro, tmp_path) -> SimpleNamespace:
    rgb, flow = _stores(small_store_ro["store"], tmp_path)
    return SimpleNamespace(rgb=rgb, flow=flow, annotations=small_store_ro["annotations"])


@pytest.fixture
def quiet_queue(monkeypatch) -> list[str]:
    """squeue stands in: the comments it was asked about; nothing is queued."""
    asked: list[str] = []
    monkeypatch.setattr(pipeline_module, "queued_jobs", lambda key, site: asked.append(key) or [])
    return asked


def _done_stream(run: Path, *, epochs: int = 2) -> None:
    """A stream's run folder (RUN/rgb or RUN/flow) as a finished training and its
    validation leave it."""
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"epochs: {epochs}\nmodality: {run.name}\n")
    rows = "".join(f"{e},{10.0 + e}\n" for e in range(1, epochs + 1))
    (run / "summary.csv").write_text(f"epoch,val_all_action_accuracy_at_1\n{rows}")
    (run / "best.pt").write_bytes(b"")
    (run / "val").mkdir()
    (run / "val" / "predictions.pkl").write_bytes(b"")
    (run / "val" / "metrics.json").write_text("{}")


def _complete(*stores: Path):
    """check_store for ``stores`` says: every shard published and intact; others as is."""
    real = pipeline_module.check_store
    complete = SimpleNamespace(
        resubmit_indices=[], shards=[SimpleNamespace(index=0, published=True, problems=[])]
    )
    return lambda store: complete if Path(store) in stores else real(store)


def _export(command: list[str]) -> dict[str, str]:
    line = next(w for w in command if w.startswith("--export="))
    return dict(item.split("=", 1) for item in line.removeprefix("--export=").split(",")[1:])


def _option(command: list[str], name: str) -> str | None:
    return next((w.split("=", 1)[1] for w in command if w.startswith(f"{name}=")), None)


def _two_streams(site, stores, run, common=(), rgb=(), flow=(), weights=None):
    rgb_words, flow_words = stream_options(list(common), list(rgb), list(flow))
    return run_two_streams(
        load_site(site),
        rgb=Stream("rgb", stores.rgb, tuple(rgb_words)),
        flow=Stream("flow", stores.flow, tuple(flow_words)),
        annotations=stores.annotations,
        run_dir=run,
        fuse_weights=weights,
        dry_run=True,
    )


@pytest.mark.slow
def test_a_fresh_two_stream_plan_chains_both_stores_both_trainings_and_the_fusion(
    two_stores, tmp_path, quiet_queue
) -> None:
    run = tmp_path / "run"
    jobs = _two_streams(
        _site(tmp_path), two_stores, run, common=["--epochs", "2"], rgb=["--lr", "0.001"],
        flow=["--flow-stack", "5"], weights="1,1.5",
    )  # fmt: skip
    streams = [f"{s}-{k}" for s in ("rgb", "flow") for k in ("extract", "check", "train")]
    streams += ["rgb-validate", "flow-validate"]
    order = [*streams[:3], "rgb-validate", *streams[3:6], "flow-validate", "fuse"]
    assert [j.kind for j in jobs] == order
    commands = {j.kind: j.command for j in jobs}
    for name, store in (("rgb", two_stores.rgb), ("flow", two_stores.flow)):
        stream_run = run / name
        key = chain_key(store, stream_run)
        for kind in ("extract", "check", "train", "validate"):
            command = commands[f"{name}-{kind}"]
            assert _export(command)["EPIC_STORE"] == str(store), (name, kind)
            assert _option(command, "--comment") == key
        assert _option(commands[f"{name}-check"], "--dependency") == f"afterany:<{name}-extract>"
        assert _option(commands[f"{name}-train"], "--dependency") == f"afterok:<{name}-check>"
        assert _option(commands[f"{name}-validate"], "--dependency") == f"afterok:<{name}-train>"
        assert _export(commands[f"{name}-train"])["EPIC_RUN_DIR"] == str(stream_run)
        validate = _export(commands[f"{name}-validate"])
        assert validate["EPIC_CHECKPOINT"] == str(stream_run / "best.pt")
        assert validate["EPIC_OUT"] == str(stream_run / "val")
    # epic-train's words come after the script: the options after -- go to both streams,
    # --rgb-args / --flow-args to one, and the flow stream trains flow.
    rgb_train, flow_train = commands["rgb-train"], commands["flow-train"]
    assert rgb_train[-4:] == ["--epochs", "2", "--lr", "0.001"]
    assert rgb_train[-5].endswith("train.sbatch")
    assert flow_train[-6:] == ["--epochs", "2", "--modality", "flow", "--flow-stack", "5"]
    assert flow_train[-7].endswith("train.sbatch")
    fuse = commands["fuse"]
    assert _option(fuse, "--dependency") == "afterok:<rgb-validate>:<flow-validate>"
    assert "--kill-on-invalid-dep=yes" in fuse and _option(fuse, "--comment") == fusion_key(run)
    assert _option(fuse, "--partition") == "debug"
    position = next(i for i, w in enumerate(fuse) if w.endswith("fuse.sbatch"))
    assert fuse[position] == str(SCRIPTS / "fuse.sbatch")
    predictions = [str(run / s / "val" / "predictions.pkl") for s in ("rgb", "flow")]
    assert fuse[position + 1 :] == [*predictions, "--fuse-weights", "1,1.5"]
    export = _export(fuse)
    assert export["EPIC_OUT"] == str(run / "fused") and export["EPIC_SPLIT"] == "validation"
    assert export["EPIC_ANNOTATIONS"] == str(two_stores.annotations)
    # The three chains' comments were each asked of squeue: no second chain while queued.
    assert set(quiet_queue) == {
        chain_key(two_stores.rgb, run / "rgb"),
        chain_key(two_stores.flow, run / "flow"),
        fusion_key(run),
    }


@pytest.mark.slow
def test_a_rerun_after_the_rgb_stream_finished_submits_only_flow_and_fusion(
    two_stores, tmp_path, quiet_queue, monkeypatch
) -> None:
    run = tmp_path / "run"
    _done_stream(run / "rgb")
    monkeypatch.setattr(pipeline_module, "check_store", _complete(two_stores.rgb))
    jobs = _two_streams(_site(tmp_path), two_stores, run, common=["--epochs", "2"])
    assert [j.kind for j in jobs] == [
        "flow-extract", "flow-check", "flow-train", "flow-validate", "fuse",
    ]  # fmt: skip
    fuse = jobs[-1].command
    assert _option(fuse, "--dependency") == "afterok:<flow-validate>"
    assert fuse[-2:] == [str(run / s / "val" / "predictions.pkl") for s in ("rgb", "flow")]


@pytest.mark.slow
def test_fusion_runs_again_only_when_its_output_is_missing_or_stale(
    two_stores, tmp_path, quiet_queue, monkeypatch
) -> None:
    site = _site(tmp_path)
    run = tmp_path / "run"
    for name in ("rgb", "flow"):
        _done_stream(run / name)
    monkeypatch.setattr(pipeline_module, "check_store", _complete(two_stores.rgb, two_stores.flow))
    # Both streams done, no fusion yet: the fusion alone, with nothing to wait for.
    jobs = _two_streams(site, two_stores, run, common=["--epochs", "2"])
    assert [j.kind for j in jobs] == ["fuse"]
    assert _option(jobs[0].command, "--dependency") is None
    # What slurm/fuse.sbatch leaves: metrics, and its arguments one a line.
    fused = run / "fused"
    fused.mkdir()
    (fused / "metrics.json").write_text("{}")
    arguments = [str(run / s / "val" / "predictions.pkl") for s in ("rgb", "flow")]
    (fused / "fuse_args").write_text("\n".join(arguments) + "\n")
    assert _two_streams(site, two_stores, run, common=["--epochs", "2"]) == []
    # Other weights than those fused: the fusion again.
    jobs = _two_streams(site, two_stores, run, common=["--epochs", "2"], weights="1,2")
    assert [j.kind for j in jobs] == ["fuse"]
    # A stream validated again after the fusion: the fusion again.
    later = (fused / "metrics.json").stat().st_mtime + 10
    os.utime(run / "flow" / "val" / "predictions.pkl", (later, later))
    assert [j.kind for j in _two_streams(site, two_stores, run, common=["--epochs", "2"])] == [
        "fuse"
    ]


def test_the_flow_stream_gets_the_flow_variant_of_the_recipe(monkeypatch) -> None:
    from train import recipes

    rgb, flow = stream_options(["--recipe", "tsn-r50", "--epochs", "3"], [], [])
    assert rgb == ["--recipe", "tsn-r50", "--epochs", "3"]
    assert "tsn-r50-flow" in recipes.RECIPES, "train/recipes.py has no tsn-r50-flow yet"
    assert flow == ["--epochs", "3", "--modality", "flow", "--recipe", "tsn-r50-flow"]
    rgb, flow = stream_options(["--recipe=tsm-r50"], [], [])
    assert flow == ["--modality", "flow", "--recipe", "tsm-r50-flow"]
    # A recipe of the flow stream's own wins, and is not doubled.
    _rgb, flow = stream_options(["--recipe", "tsn-r50"], [], ["--recipe", "tsm-r50-flow"])
    assert flow == ["--modality", "flow", "--recipe", "tsm-r50-flow"]
    # No recipe: the default (seed) recipe with flow input.
    assert stream_options(["--epochs", "1"], [], [])[1] == ["--epochs", "1", "--modality", "flow"]


@pytest.mark.parametrize(
    ("common", "rgb", "flow", "where"),
    [
        (["--modality", "flow"], [], [], "after --"),
        ([], ["--modality=rgb"], [], "--rgb-args"),
        ([], [], ["--modality", "flow"], "--flow-args"),
    ],
)
def test_the_modality_is_the_pipeline_s_to_set_per_stream(common, rgb, flow, where) -> None:
    with pytest.raises(EpicInputError, match="set per stream") as caught:
        stream_options(common, rgb, flow)
    assert f"({where}: " in str(caught.value)


@pytest.mark.slow
def test_a_store_of_the_other_modality_is_refused_before_anything_is_submitted(
    two_stores, tmp_path, quiet_queue
) -> None:
    swapped = SimpleNamespace(
        rgb=two_stores.flow, flow=two_stores.rgb, annotations=two_stores.annotations
    )
    with pytest.raises(EpicInputError, match="trains on rgb input but the store holds flow"):
        _two_streams(_site(tmp_path), swapped, tmp_path / "run")
    # A sweep reads one store: one modality, the store's.
    with pytest.raises(EpicInputError, match="trains on flow input but the store holds rgb"):
        check_store_serves(two_stores.rgb, [8], ["linspace"], ["flow"], [5])
    with pytest.raises(EpicInputError, match="a sweep reads one store"):
        check_store_serves(two_stores.flow, [8], ["linspace"], ["rgb", "flow"], [5])
    check_store_serves(two_stores.flow, [8], ["linspace"], ["flow"], [5])


@pytest.mark.slow
def test_a_one_stream_run_folder_is_not_taken_for_two_streams(
    two_stores, tmp_path, quiet_queue
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("epochs: 2\n")
    with pytest.raises(EpicInputError, match="holds a one-stream run"):
        _two_streams(_site(tmp_path), two_stores, run)


@pytest.mark.slow
def test_pipeline_flow_dry_run_on_the_command_line(two_stores, tmp_path, quiet_queue) -> None:
    """The CLI: --flow-store from the site file's EPIC_FLOW_STORE, --rgb-args/--flow-args
    split as shell words, bad weights refused before anything is planned."""
    site = _site(tmp_path, f"EPIC_FLOW_STORE={two_stores.flow}\n")
    flow_root = tmp_path / "flow-tars"
    flow_root.mkdir()
    args = [
        "pipeline", "--site", str(site), "--store", str(two_stores.rgb), "--flow",
        str(flow_root), "--annotations", str(two_stores.annotations), "--run-dir",
        str(tmp_path / "run"), "--flow-args", "--flow-stack 5 --lr '0.002'", "--dry-run",
        "--", "--epochs", "1",
    ]  # fmt: skip
    result = CliRunner().invoke(slurm, args, env={"EPIC_FLOW_STORE": None})
    assert result.exit_code == 0, result.output
    lines = [shlex.split(x) for x in result.output.splitlines() if x.startswith("sbatch ")]
    assert len(lines) == 9
    flow_train = lines[6]  # rgb: extract, check, train, validate; then flow's
    assert _export(flow_train)["EPIC_STORE"] == str(two_stores.flow)
    assert _export(flow_train)["EPIC_RUN_DIR"] == str(tmp_path / "run" / "flow")
    words = ["--epochs", "1", "--modality", "flow", "--flow-stack", "5", "--lr", "0.002"]
    assert flow_train[-9:] == [str(SCRIPTS / "train.sbatch"), *words]
    assert lines[2][-3:] == [str(SCRIPTS / "train.sbatch"), "--epochs", "1"]
    bad = CliRunner().invoke(slurm, [*args[:-3], "--fuse-weights", "1,0"])
    assert bad.exit_code == 2 and "--fuse-weights 1,0: expected two positive" in bad.output
    alone = ["pipeline", "--site", str(site), "--store", str(two_stores.rgb), "--annotations"]
    alone += [str(two_stores.annotations), "--run-dir", str(tmp_path / "r1"), "--rgb-args", "-x"]
    refused = CliRunner().invoke(slurm, alone)
    assert refused.exit_code == 2 and "--rgb-args is an option of a two-stream" in refused.output


FAKE_VALIDATE = """#!/bin/sh
# Records its arguments one a line, as the fusion job ran it.
printf '%s\\n' "$@" > "${FAKE_RECORD:?}"
echo "${EPIC_STORE-unset}" > "${FAKE_RECORD}.store"
"""


def test_the_fusion_job_runs_epic_validate_fuse_and_records_its_arguments(tmp_path) -> None:
    """slurm/fuse.sbatch under bash with a stand-in epic-validate (and epic-slurm for the
    header), as a node runs it: the exact command, then RUN/fused/fuse_args."""
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "activate").write_text(f'PATH="{bin_dir}:$PATH"\n')
    (bin_dir / "epic-validate").write_text(FAKE_VALIDATE)
    (bin_dir / "epic-slurm").write_text("#!/bin/sh\necho header\n")
    for tool in ("epic-validate", "epic-slurm"):
        (bin_dir / tool).chmod(0o755)
    site = tmp_path / "site.env"
    site.write_text(
        f"source {SCRIPTS / 'sites' / 'cpu.env'}\nEPIC_VENV={tmp_path / 'venv'}\n"
        f"EPIC_LOGS={tmp_path / 'logs'}\n"
    )
    out = tmp_path / "run" / "fused"
    out.mkdir(parents=True)
    files = [str(tmp_path / "run" / s / "val" / "predictions.pkl") for s in ("rgb", "flow")]
    env = {
        "PATH": os.environ["PATH"], "HOME": str(tmp_path), "EPIC_SCRIPTS": str(SCRIPTS),
        "EPIC_SITE": str(site), "EPIC_ANNOTATIONS": str(tmp_path / "ann"), "EPIC_OUT": str(out),
        "EPIC_SPLIT": "validation", "FAKE_RECORD": str(tmp_path / "record"),
    }  # fmt: skip
    script = SCRIPTS / "fuse.sbatch"
    words = [*files, "--fuse-weights", "1,1.5"]
    done = subprocess.run(["bash", script, *words], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "record").read_text().splitlines() == [
        "--annotations", str(tmp_path / "ann"), "--split", "validation",
        "--output-dir", str(out), "--fuse", *words,
    ]  # fmt: skip
    assert (out / "fuse_args").read_text().splitlines() == words
    # Regression: the site's EPIC_STORE reached epic-validate, whose --store must exist.
    assert (tmp_path / "record.store").read_text() == "unset\n"
    # A failed fusion records nothing: the pipeline fuses again.
    (out / "fuse_args").unlink()
    (bin_dir / "epic-validate").write_text("#!/bin/sh\nexit 2\n")
    done = subprocess.run(["bash", script, *words], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and not (out / "fuse_args").exists()


# ----------------------------------------------------------------------------- on SLURM

BIN = Path(sys.executable).parent
#: Tiny CPU trainings (as tests/slurm/test_pipeline_on_slurm.py): 64-px crops, 2 snippets.
TINY = ["--crop-size", "64", "--num-frames", "2", "--batch-size", "8", "--lr", "1e-3"]
TINY += ["--weights", "none", "--deterministic", "--epochs", "1"]
JOB_LINE = re.compile(r"^(\S+)\s+job (\S+)\s+log (\S+)$", re.MULTILINE)
CHAIN = [f"{s}-{k}" for s in ("rgb", "flow") for k in ("extract", "check", "train", "validate")]


@pytest.fixture(scope="module")
def mini_epic_flow(tmp_path_factory) -> MiniEpic:
    """A mini-EPIC of 3 videos (train, validation, test) with its flow tars."""
    return make_mini_epic(tmp_path_factory.mktemp("mini_epic_flow"), num_videos=3, flow=True)


def _failures(jobs: dict[str, str], logs: dict[str, str], ends: dict) -> str:
    """How each job ended, and the last lines of the logs of those that did not complete."""
    lines = []
    for kind, job_id in jobs.items():
        mine = {k: e for k, e in ends.items() if k == job_id or k.startswith(f"{job_id}_")}
        states = sorted({(e.state, e.exit_code) for e in mine.values()})
        lines.append(f"{kind} {job_id}: {states}")
        if any(state != "COMPLETED" for state, _code in states):
            for path in Path(logs[kind].replace("<task>", "*")).parent.glob(
                Path(logs[kind].replace("<task>", "*")).name
            ):
                lines += ["  " + x for x in path.read_text().splitlines()[-12:]]
    return "\n".join(lines)


@pytest.mark.slurm
@pytest.mark.slow
def test_a_two_stream_pipeline_on_slurm_fuses_after_both_streams(
    slurm, mini_epic_flow: MiniEpic, tmp_path
) -> None:
    from train.submission import load_predictions

    site = tmp_path / "site.env"
    site.write_text(
        f"source {SCRIPTS / 'sites' / 'cpu.env'}\n"
        f"EPIC_PARTITION_CPU={slurm.partition}\nEPIC_PARTITION_GPU={slurm.partition}\n"
        f"EPIC_VENV={sys.prefix}\nEPIC_LOGS={tmp_path / 'logs'}\n"
        f"EPIC_TRAIN_CPUS={min(2, slurm.cpus)}\nEPIC_FLOW_STORE={tmp_path / 'flow-store'}\n"
    )
    run = tmp_path / "run"
    args = [
        BIN / "epic-slurm", "pipeline", "--videos", mini_epic_flow.videos_dir, "--flow",
        mini_epic_flow.flow_dir, "--annotations", mini_epic_flow.annotations_dir, "--store",
        tmp_path / "store", "--run-dir", run, "--num-frames", "2", "--shards", "1",
        "--not-official", "--fuse-weights", "1,1.5", "--", *TINY,
    ]  # fmt: skip
    env = {"EPIC_SITE": str(site)}
    first = slurm.run(args, env=env, check=False, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    jobs = {kind: job_id for kind, job_id, _log in JOB_LINE.findall(first.stdout)}
    logs = {kind: log for kind, _job_id, log in JOB_LINE.findall(first.stdout)}
    assert list(jobs) == [*CHAIN, "fuse"], first.stdout
    ends = slurm.wait(list(jobs.values()), timeout=1500)
    assert all(end.state == "COMPLETED" for end in ends.values()), _failures(jobs, logs, ends)
    fuse = ends[jobs["fuse"]]
    for stream in ("rgb", "flow"):
        validated = ends[jobs[f"{stream}-validate"]]
        assert fuse.record["StartTime"] >= validated.record["EndTime"], (fuse, validated)
    # The fused file is the weighted mean of the streams' scores, in the RGB file's order.
    rgb_verb, rgb_noun, ids = load_predictions(run / "rgb" / "val" / "predictions.pkl")
    flow_verb, flow_noun, flow_ids = load_predictions(run / "flow" / "val" / "predictions.pkl")
    verb, noun, fused_ids = load_predictions(run / "fused" / "predictions.pkl")
    order = [list(flow_ids).index(i) for i in ids]
    assert list(fused_ids) == list(ids)
    expected_verb = (np.asarray(rgb_verb, np.float64) + 1.5 * np.asarray(flow_verb)[order]) / 2.5
    expected_noun = (np.asarray(rgb_noun, np.float64) + 1.5 * np.asarray(flow_noun)[order]) / 2.5
    np.testing.assert_allclose(verb, expected_verb, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(noun, expected_noun, rtol=1e-6, atol=1e-6)
    assert (run / "fused" / "metrics.json").exists()
    flow_config = (run / "flow" / "config.yaml").read_text()
    assert "modality: flow" in flow_config, flow_config
    # Everything done: the same command submits nothing.
    again = slurm.run(args, env=env, check=False, timeout=600)
    assert again.returncode == 0 and JOB_LINE.findall(again.stdout) == [], again.stdout


def test_a_sweep_grid_takes_the_modality_like_any_option(tmp_path) -> None:
    from epicslurm.sweep import load_grid

    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text("lr: [0.001, 0.002]\nfixed: {modality: flow, flow_stack: 3}\n")
    grid = load_grid(grid_file)
    assert (grid.modalities, grid.flow_stacks) == (["flow"], [3])
    assert "--modality=flow" in grid.runs[0].train_args()
    # A flow recipe trains flow: the store check sees it through the recipe.
    grid_file.write_text("lr: [0.001]\nfixed: {recipe: tsm-r50-flow}\n")
    assert (load_grid(grid_file).modalities, load_grid(grid_file).flow_stacks) == (["flow"], [5])
    grid_file.write_text("modality: [rgb, flow]\n")
    assert load_grid(grid_file).modalities == ["flow", "rgb"]  # refused by the store check
