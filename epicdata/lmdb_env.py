"""Opening a published shard with py-lmdb, the check that makes it safe to map, and a read
of a few values in a child process (for the process that must not die)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
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


class ShardReadError(Exception):
    """py-lmdb could not read a shard in the child process of :func:`read_in_child`; the
    message says why (an LMDB error, or the signal that killed it)."""


#: The child of :func:`read_in_child`: py-lmdb only (no project import: it starts in
#: ~0.1 s), one value per line in hex, "-" for an absent key.
_CHILD_READ = r"""
import os, sys, lmdb
path, keys = sys.argv[1], [bytes.fromhex(k) for k in sys.argv[2:]]
try:
    env = lmdb.open(path, subdir=False, readonly=True, lock=False, readahead=False,
                    meminit=False)
    if os.path.getsize(path) < (env.info()["last_pgno"] + 1) * env.stat()["psize"]:
        sys.exit("the file is truncated (shorter than LMDB's last page)")
    with env.begin(buffers=True) as txn:
        values = [txn.get(key) for key in keys]
        sys.stdout.write("".join("-\n" if v is None else bytes(v).hex() + "\n" for v in values))
except lmdb.Error as exc:
    sys.exit(f"LMDB: {exc}")
"""


def read_in_child(path: str | Path, keys: list[bytes], *, timeout_s: float = 300.0) -> dict:
    """{key: value or None} for ``keys`` of the shard at ``path``, read by py-lmdb in a child
    process. For a file the page reader does not parse, read by a process that must not
    die (the one that drives training): a damaged page can make LMDB kill its process with
    SIGBUS or abort it, and here that kills the child. Raises :class:`ShardReadError`."""
    command = [sys.executable, "-c", _CHILD_READ, str(path), *(key.hex() for key in keys)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise ShardReadError(f"reading it took over {timeout_s:.0f} s (a cycle?)") from None
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        raise ShardReadError(
            f"reading it killed the reader process (signal {-done.returncode}, {name})"
        )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit {done.returncode}"]
        raise ShardReadError(lines[-1])
    values = done.stdout.split("\n")[: len(keys)]
    if len(values) != len(keys):
        raise ShardReadError(f"the reader process returned {len(values)} of {len(keys)} values")
    return {
        key: None if v == "-" else bytes.fromhex(v) for key, v in zip(keys, values, strict=True)
    }
