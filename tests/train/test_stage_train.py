"""``epic-train --stage-dir``: the run reads a node-local copy of the shards, learns exactly
what it learns from the store in place, and records only the original store."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from epicdata.annotations import AnnotationDir
from epicdata.checksums import frame_checksum
from epicdata.errors import ExitCode
from epicdata.frame_index import add_index
from epicdata.layout import checksum_key, frame_key, shard_path
from epicdata.lmdb_pages import ShardPages
from epicdata.manifest import Manifest
from epicdata.ranges import frames_in_ranges
from epicdata.stage import SOURCES_DIR, stage_store, staged_root
from epicdata.store import FrameStore
from train import fit
from train.cli import train_main, validate_main

pytestmark = pytest.mark.slow  # every test here trains (about 15-40 s each)


def _args(mini_store, run, fast_options, *, store=None, **options) -> list[str]:
    args = ["--store", store or mini_store.store, "--annotations", mini_store.annotations]
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


def _change_every_frame_in_place(store: Path, index: int, *, crc: bool) -> list[str]:
    """Change every JPEG of shard ``index`` without moving a byte: one letter of its comment
    ("Lavc" -> "lavc": the same picture) and, with ``crc``, its CRC-32 in the video's table
    and its frame index, as a tool editing the shard in place would; without, the shard is
    damaged. Returns the
    videos of the shard."""
    path = shard_path(store, index)
    videos = [v for v, i in Manifest.load(store).video_to_shard().items() if i == index]
    ranges = {v: FrameStore(store).video_meta(v).stored_ranges for v in videos}
    pages = ShardPages.open(path)
    assert pages is not None
    fd = os.open(path, os.O_WRONLY)
    try:
        for video in videos:
            table_at, _ = pages.locate(checksum_key(video))
            for position, frame in enumerate(frames_in_ranges(ranges[video]).tolist()):
                at, size = pages.locate(frame_key(video, frame))
                jpeg = pages.read(at, size)
                mark = jpeg.index(b"Lavc")
                os.pwrite(fd, b"lavc", at + mark)
                if crc:
                    new = jpeg[:mark] + b"lavc" + jpeg[mark + 4 :]
                    os.pwrite(
                        fd, frame_checksum(new).to_bytes(4, "little"), table_at + 4 * position
                    )
    finally:
        os.close(fd)
        pages.close()
    if crc:  # the frame index carries each frame's CRC-32 too: rewritten in place
        add_index(path)
    return videos


def test_a_restaged_run_reads_frames_changed_in_place_behind_a_restored_mtime(
    mini_store, fast_options, tmp_path, monkeypatch
):
    # Regression: the second run logged "reused 2" and trained on the old frames, exit 0.
    store, node = tmp_path / "store", tmp_path / "node"
    shutil.copytree(mini_store.store, store)
    args = _args(mini_store, tmp_path / "first", fast_options, stage_dir=node, store=store)
    assert CliRunner().invoke(train_main, args).exit_code == 0
    path = shard_path(store, 1)
    before = path.stat()
    changed = _change_every_frame_in_place(store, 1, crc=True)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # touch -r
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)

    read: list[tuple[str, bytes]] = []

    class Recorded(FrameStore):
        def read_frames(self, video_id, frames):
            jpegs = super().read_frames(video_id, frames)
            read.extend((video_id, jpeg) for jpeg in jpegs)
            return jpegs

    monkeypatch.setattr(fit, "FrameStore", Recorded)  # --workers 0: read in this process
    args = _args(mini_store, tmp_path / "second", fast_options, stage_dir=node, store=store)
    result = CliRunner().invoke(train_main, args)
    assert result.exit_code == 0, result.output
    of_shard = [jpeg for video, jpeg in read if video in changed]
    assert of_shard and all(b"lavc" in jpeg and b"Lavc" not in jpeg for jpeg in of_shard)
    assert filecmp.cmp(path, shard_path(staged_root(store, node), 1), shallow=False)


def test_a_damaged_staged_copy_is_exit_5_naming_the_copy_and_is_copied_again_next_start(
    mini_store, fast_options, tmp_path
):
    # Regression: it said to re-extract the store's shard with --force (the store was
    # fine), and every later run reused the same damaged copy.
    node = tmp_path / "node"
    staged = stage_store(mini_store.store, node, FrameStore(mini_store.store).video_ids)
    copy = shard_path(staged, 1)
    _change_every_frame_in_place(staged, 1, crc=False)  # every JPEG fails its CRC
    # Damage no identity check can see (a failing disk): the copy's record is made to
    # match the damaged copy, so only the reader finds it.
    record = staged / SOURCES_DIR / f"{copy.name}.json"
    entry = json.loads(record.read_text())
    entry["copy"] = {"inode": copy.stat().st_ino, "ctime_ns": copy.stat().st_ctime_ns,
                     "size": copy.stat().st_size}  # fmt: skip
    record.write_text(json.dumps(entry))
    args = _args(mini_store, tmp_path / "run", {**fast_options, "workers": 1}, stage_dir=node)
    result = CliRunner().invoke(train_main, args)
    assert result.exit_code == ExitCode.STORE_INCOMPLETE, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert "the staged copy of a shard is damaged" in errors[0]
    assert f"{copy}, copied from {shard_path(mini_store.store, 1)}" in errors[0]
    assert f"the store {mini_store.store} is not affected" in errors[0]
    assert "--force" not in errors[0] and "re-extract" not in errors[0]
    assert not record.exists()  # left by the failing run (in its loader worker)
    # The next start copies the shard again instead of reusing the damaged copy.
    stage_store(mini_store.store, node, FrameStore(mini_store.store).video_ids)
    assert filecmp.cmp(shard_path(mini_store.store, 1), copy, shallow=False)


def test_a_stage_dir_below_a_regular_file_is_exit_2_naming_the_option(
    mini_store, fast_options, tmp_path
):
    # Regression: NotADirectoryError traceback.
    (tmp_path / "file").write_text("not a folder")
    stage_dir = tmp_path / "file" / "sub"
    args = _args(mini_store, tmp_path / "run", fast_options, stage_dir=stage_dir)
    result = CliRunner().invoke(train_main, args)
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert line.startswith("error: cannot write --stage-dir") and str(stage_dir) in line
    assert "Traceback" not in result.output


def test_training_and_validation_leave_no_epic_reads_folder_in_tmpdir(
    mini_store, fast_options, tmp_path, monkeypatch
):
    # Regression: every run with loader workers left $TMPDIR/epic-reads-<pid>/ behind.
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)
    run = tmp_path / "run"
    result = CliRunner().invoke(train_main, _args(mini_store, run, {**fast_options, "workers": 2}))
    assert result.exit_code == 0, result.output
    args = ["--checkpoint", run / "last.pt", "--store", mini_store.store, "--workers", "2"]
    args += ["--annotations", mini_store.annotations, "--split", "validation"]
    args += ["--limit-batches", "2", "--output-dir", tmp_path / "validation"]
    result = CliRunner().invoke(validate_main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert tempfile.gettempdir() == str(tmp) and list(tmp.glob("epic-reads-*")) == []
