"""The guard of the session's shared stores (tests/conftest.py ``read_only``) catches a test
that writes into one: changed, added and removed files are all named."""

from __future__ import annotations

from pathlib import Path

import pytest


def _tree(root: Path) -> Path:
    (root / "shards").mkdir(parents=True)
    (root / "manifest.json").write_text("{}")
    (root / "shards" / "shard-00000.lmdb").write_bytes(b"\0" * 4096)
    return root


def test_reading_a_shared_tree_passes(read_only, tmp_path) -> None:
    root = _tree(tmp_path / "store")
    with read_only(root, "store"):
        assert (root / "manifest.json").read_text() == "{}"


@pytest.mark.parametrize(
    ("write", "named"),
    [
        (lambda r: (r / "shards" / "shard-00000.lmdb").write_bytes(b"\1" * 4096), "shard-00000"),
        (
            lambda r: (r / "failures").mkdir() or (r / "failures" / "0.json").write_text("x"),
            "0.json",
        ),
        (lambda r: (r / "manifest.json").unlink(), "manifest.json"),
    ],
    ids=["changed", "added", "removed"],
)
def test_a_write_into_a_shared_tree_fails_naming_the_file(read_only, tmp_path, write, named):
    root = _tree(tmp_path / "store")
    with (
        pytest.raises(AssertionError, match=f"store is shared .*{named}"),
        read_only(root, "store"),
    ):
        write(root)
