"""A real frame store of the mini-EPIC, and one short training run on it, shared by the
trainer tests (session scope: built once)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from epicdata.synthetic import MiniEpic
from preprocess.extract import run_shard
from preprocess.plan import plan_store
from train.config import TrainConfig
from train.fit import fit

#: Small enough for 2 busy CPU cores: 64-px crops, 2 frames, a few-minute budget in all.
FAST = dict(
    crop_size=64,
    num_frames=2,
    batch_size=8,
    lr=1e-3,
    weights="none",
    workers=0,
    log_every=0,
    deterministic=True,
)


@dataclass(frozen=True)
class MiniStore:
    store: Path
    annotations: Path


@pytest.fixture(scope="session")
def mini_store(
    mini_epic: MiniEpic, tmp_path_factory: pytest.TempPathFactory, read_only
) -> Iterator[MiniStore]:
    """Every split of the mini-EPIC extracted into a 2-shard store: READ ONLY (a test that
    damages it copies it first)."""
    store = tmp_path_factory.mktemp("store")
    manifest = plan_store(
        store_root=store,
        annotations_dir=mini_epic.annotations_dir,
        videos_root=mini_epic.videos_dir,
        shards=2,
    )
    for shard in manifest.shards:
        run_shard(store_root=store, shard_index=shard.index, workers=2)
    with read_only(store, "mini_store"):
        yield MiniStore(store, mini_epic.annotations_dir)


@pytest.fixture(scope="session")
def fast_options() -> dict:
    return dict(FAST)


@pytest.fixture(scope="session")
def fast_config(mini_store: MiniStore):
    """``fast_config(output_dir, **overrides)`` -> a TrainConfig of FAST on the mini store."""

    def make(output_dir: Path, **overrides) -> TrainConfig:
        return TrainConfig(
            store=str(mini_store.store),
            annotations=str(mini_store.annotations),
            output_dir=str(output_dir),
            **{**FAST, **overrides},
        )

    return make


@pytest.fixture(scope="session")
def trained_run(fast_config, tmp_path_factory: pytest.TempPathFactory, read_only) -> Iterator[Path]:
    """Two epochs on the mini-EPIC with a checkpoint after each (epoch_001.pt, epoch_002.pt):
    READ ONLY (a test that resumes into it or damages it copies it first)."""
    run = tmp_path_factory.mktemp("run") / "run"
    assert fit(fast_config(run, epochs=2, checkpoint_every=1)) == 0
    with read_only(run, "trained_run"):
        yield run
