"""Opening a published shard with py-lmdb, and the check that makes it safe to map."""

from __future__ import annotations

import os
from pathlib import Path

import lmdb


def open_shard_readonly(path: str | Path, *, sequential: bool = False) -> lmdb.Environment:
    """Open a published shard for reading (no lock).

    ``sequential=True`` turns the kernel's readahead on: a page fault reads the pages
    around it, not one 4 KiB page. The checker walks whole shards in key order with it (off,
    a walk ran at 0.04x of `cat`'s speed cold, bench/bench_check.py). Random clip reads
    leave it off (:data:`epicdata.store.READAHEAD`).
    """
    return lmdb.open(
        str(path),
        subdir=False,
        readonly=True,
        lock=False,
        readahead=sequential,
        meminit=False,
        max_readers=2048,
    )


def shard_file_truncated(env: lmdb.Environment, path: str | Path) -> bool:
    """True when the file is shorter than the pages LMDB says it holds: reading those pages
    through the memory map would kill the process with SIGBUS instead of raising."""
    needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    return os.path.getsize(path) < needed
