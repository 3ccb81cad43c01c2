"""``epic-train --stage-dir``: the run reads a node-local copy of the shards, learns exactly
what it learns from the store in place, and records only the original store."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from epicdata.annotations import AnnotationDir
from epicdata.layout import shard_path
from epicdata.manifest import Manifest
from epicdata.stage import staged_root
from epicdata.store import FrameStore
from train import fit
from train.cli import train_main

pytestmark = pytest.mark.slow  # every test here trains (about 15-40 s each)


def _args(mini_store, run, fast_options, **options) -> list[str]:
    args = ["--store", mini_store.store, "--annotations", mini_store.annotations]
    args += ["--output-dir", run]
    for key, value in {**fast_options, "epochs": 1, "limit_batches": 2, **options}.items():
        flag = "--" + key.replace("_", "-")
        args += [flag] if value is True else [flag, value]
    return [str(a) for a in args]


def test_a_staged_run_trains_the_same_weights_and_records_the_original_store(
    mini_store, fast_options, tmp_path, monkeypatch
):
    node = tmp_path / "node-local"
    staged_run, plain_run = tmp_path / "staged", tmp_path / "plain"
    opened = []

    class Recorded(FrameStore):
        def __init__(self, root, **kwargs) -> None:
            opened.append(root)
            super().__init__(root, **kwargs)

    monkeypatch.setattr(fit, "FrameStore", Recorded)
    result = CliRunner().invoke(
        train_main, _args(mini_store, staged_run, fast_options, stage_dir=node)
    )
    assert result.exit_code == 0, result.output
    assert opened == [staged_root(mini_store.store, node)]  # the run read the copy
    result = CliRunner().invoke(train_main, _args(mini_store, plain_run, fast_options))
    assert result.exit_code == 0, result.output

    staged = torch.load(staged_run / "last.pt", weights_only=True)
    plain = torch.load(plain_run / "last.pt", weights_only=True)
    assert staged["model"].keys() == plain["model"].keys()
    for key, value in plain["model"].items():
        assert torch.equal(value, staged["model"][key]), key

    # The shards of the train and validation videos, and no other, byte for byte.
    annotations = AnnotationDir(mini_store.annotations)
    videos = {*annotations.table("train").video_ids, *annotations.table("validation").video_ids}
    shard_of = Manifest.load(mini_store.store).video_to_shard()
    needed = sorted({shard_of[v] for v in videos})
    root = staged_root(mini_store.store, node)
    assert sorted(p.name for p in (root / "shards").glob("*.lmdb")) == [
        shard_path(root, i).name for i in needed
    ]
    for index in needed:
        assert filecmp.cmp(shard_path(mini_store.store, index), shard_path(root, index), False)

    # What the run records names the store it was given, never the staged copy.
    config = yaml.safe_load((staged_run / "config.yaml").read_text())
    assert config["store"] == str(mini_store.store.resolve())
    assert config["stage_dir"] == str(node)
    assert staged["config"]["store"] == str(mini_store.store.resolve())
    assert str(root) not in (staged_run / "config.yaml").read_text()


def test_a_staged_run_resumes_without_staging_and_back_without_allow_config_change(
    mini_store, fast_options, tmp_path
):
    run = tmp_path / "run"
    first = _args(mini_store, run, fast_options, stage_dir=tmp_path / "node-a")
    assert CliRunner().invoke(train_main, first).exit_code == 0
    # The requeued job lands on another node, or the site stopped staging: free on resume.
    plain = _args(mini_store, run, fast_options, epochs=2) + ["--resume", "auto"]
    result = CliRunner().invoke(train_main, plain)
    assert result.exit_code == 0, result.output
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 2
    staged = _args(mini_store, run, fast_options, epochs=3, stage_dir=tmp_path / "node-b")
    result = CliRunner().invoke(train_main, [*staged, "--resume", "auto"])
    assert result.exit_code == 0, result.output
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 3
    assert (staged_root(mini_store.store, tmp_path / "node-b") / "manifest.json").is_file()


def test_a_failed_staging_stops_every_rank_instead_of_leaving_them_waiting(
    mini_store, fast_options, tmp_path
):
    # Local rank 0 meets a missing shard while rank 1 waits for its copy: both must stop at
    # once with the reason, not hang until the process group's timeout.
    store = tmp_path / "store"
    shutil.copytree(mini_store.store, store)
    shard_path(store, 1).unlink()
    args = _args(mini_store, tmp_path / "run", fast_options, stage_dir=tmp_path / "node")
    args[args.index("--store") + 1] = str(store)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    epic_train = str(Path(sys.executable).parent / "epic-train")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*torchrun, "--no-python", epic_train, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode != 0
    assert "shard-00001.lmdb" in result.stderr and "epic-check" in result.stderr
    assert "staging the store failed in another process" in result.stderr
    assert not (tmp_path / "run").exists()
