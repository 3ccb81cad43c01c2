"""Copy the shards a job reads to node-local disk (``epic-train --stage-dir``).

A training run reads the store once per epoch, in small random reads; on a shared parallel
file system (GPFS scratch) a cold read costs a network round trip and a whole file-system
block. Copying the shards the run needs to the node's own disk once, at job start, makes
every later read local: seconds to a minute for a ``--keep sampled`` store.

Layout (one folder per store, named by its resolved path, so two stores never mix)::

    <stage_dir>/<store name>-<12 hex digits>/manifest.json
    <stage_dir>/<store name>-<12 hex digits>/shards/shard-NNNNN.lmdb   only those asked for

A staged shard carries its source's size and mtime: a requeued job on the same node reuses
it and copies nothing, and one whose source changed since (re-extracted) is copied again.
Each copy is written under a temp name, fsynced and renamed into place, as the extractor
publishes shards; jobs that share a node stage one store in turn (a lock on its folder), so
a temp file found there is a killed copy's leftover and is removed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from epicdata.console import format_bytes
from epicdata.errors import OutOfSpaceError, StoreError, StoreIncompleteError
from epicdata.layout import MANIFEST_NAME, SHARDS_DIR, shard_path
from epicdata.manifest import Manifest

log = logging.getLogger(__name__)

#: Held while a process stages into a store's folder (flock; released when it exits).
LOCK_NAME = ".stage.lock"
#: Marks temp copies: ``.shard-00003.lmdb.tmp-<host>-<pid>``, ``.manifest.json.tmp-...``.
TEMP_MARK = ".tmp-"
#: Bytes per read/write of a copy.
COPY_CHUNK = 16 << 20


def staged_root(store_root: str | Path, stage_dir: str | Path) -> Path:
    """The folder under ``stage_dir`` where :func:`stage_store` copies ``store_root``: the
    store's folder name and a hash of its resolved path, so every rank of a job finds it
    without being told and two stores named alike never share it."""
    source = Path(store_root).resolve()
    digest = hashlib.sha256(str(source).encode()).hexdigest()[:12]
    return Path(stage_dir).resolve() / f"{source.name}-{digest}"


def stage_store(store_root: str | Path, stage_dir: str | Path, video_ids: Iterable[str]) -> Path:
    """Copy ``manifest.json`` and the shards holding ``video_ids`` from ``store_root`` into
    :func:`staged_root` under ``stage_dir``; returns that folder, a store that
    :class:`~epicdata.store.FrameStore` opens (it holds only those shards).

    Shards already staged with the source's size and mtime are reused. Raises
    :class:`StoreError` (exit 2) for a video not in the store's plan,
    :class:`StoreIncompleteError` (exit 5) for a shard missing from the store, and
    :class:`OutOfSpaceError` (exit 4) when ``stage_dir``'s disk cannot hold the shards
    still to copy; nothing is published then.
    """
    source = Path(store_root)
    manifest = Manifest.load(source)
    indices = _shard_indices(manifest, set(video_ids), source)
    sources = {index: shard_path(source, index) for index in indices}
    missing = [path for path in sources.values() if not path.is_file()]
    if missing:
        raise StoreIncompleteError(
            f"{len(missing)} of the {len(sources)} shards to stage are not published: "
            f"{', '.join(path.name for path in missing)}",
            where=missing[0].parent,
            fix=f"run `epic-check --store {source}` and extract the shards it names",
        )
    stats = {index: path.stat() for index, path in sources.items()}
    target = staged_root(source, stage_dir)
    (target / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    with _locked(target):
        _remove_leftovers(target)
        todo = [i for i in indices if not _same_file(shard_path(target, i), stats[i])]
        need = sum(stats[i].st_size for i in todo)
        free = shutil.disk_usage(stage_dir).free
        if need > free:
            raise OutOfSpaceError(
                f"not enough space to stage {len(todo)} shards of {source}",
                where=f"--stage-dir {stage_dir}: needs {format_bytes(need)}, "
                f"{format_bytes(free)} free",
                fix="free space there, point --stage-dir at a larger node-local disk, or drop "
                "--stage-dir to read the store where it is",
            )
        start = time.monotonic()
        copied = sum(_copy(sources[i], shard_path(target, i)) for i in todo)
        _publish_manifest(source / MANIFEST_NAME, target / MANIFEST_NAME)
        _fsync_dir(target / SHARDS_DIR)
        seconds = time.monotonic() - start
    reused = sum(stats[i].st_size for i in indices if i not in todo)
    rate = f" ({copied / 1e6 / seconds:.0f} MB/s)" if copied and seconds > 0 else ""
    log.info(
        "staged %s in %s: copied %d shards (%.2f GB) in %.1f s%s, reused %d (%.2f GB)",
        source,
        target,
        len(todo),
        copied / 1e9,
        seconds,
        rate,
        len(indices) - len(todo),
        reused / 1e9,
    )
    return target


def _shard_indices(manifest: Manifest, video_ids: set[str], store_root: Path) -> list[int]:
    """The shards holding ``video_ids``, ascending; every video must be in the plan."""
    video_shard = manifest.video_to_shard()
    unknown = sorted(video_ids - set(video_shard))
    if unknown:
        raise StoreError(
            f"{len(unknown)} videos to stage are not in the store's plan "
            f"({', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''})",
            where=store_root,
            fix="plan a store that holds them (`epic-extract plan`), or train on splits it holds",
        )
    return sorted({video_shard[v] for v in video_ids})


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold the staging lock of ``folder``: another job on the node staging the same store
    finishes first, and this one then reuses its copies."""
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process staging into %s", folder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _remove_leftovers(folder: Path) -> None:
    """Temp copies of killed stagings (under the lock, no other copy is in progress)."""
    for temp in [*folder.glob(f".*{TEMP_MARK}*"), *(folder / SHARDS_DIR).glob(f".*{TEMP_MARK}*")]:
        log.info("removing %s, left by an interrupted staging", temp)
        temp.unlink(missing_ok=True)


def _same_file(staged: Path, source: os.stat_result) -> bool:
    try:
        have = staged.stat()
    except FileNotFoundError:
        return False
    return have.st_size == source.st_size and have.st_mtime_ns == source.st_mtime_ns


def _temp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}{TEMP_MARK}{socket.gethostname()}-{os.getpid()}")


def _copy(source: Path, final: Path) -> int:
    """Copy ``source`` to ``final`` through a temp file (fsynced, given the source's times,
    renamed into place); returns the bytes copied."""
    temp = _temp_name(final)
    try:
        with source.open("rb") as src, temp.open("wb") as dst:
            # The times of the file actually read: a shard re-published meanwhile is another
            # inode, and its copy must not carry the old one's mtime.
            stat = os.fstat(src.fileno())
            shutil.copyfileobj(src, dst, COPY_CHUNK)
            dst.flush()
            os.utime(dst.fileno(), ns=(stat.st_atime_ns, stat.st_mtime_ns))
            os.fsync(dst.fileno())
        os.replace(temp, final)
    except BaseException as exc:
        temp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            free = shutil.disk_usage(final.parent).free
            raise OutOfSpaceError(
                f"no space left staging {source.name} ({format_bytes(free)} free)",
                where=final.parent,
                fix="free space there, point --stage-dir at a larger node-local disk, or drop "
                "--stage-dir to read the store where it is",
            ) from None
        raise
    return stat.st_size


def _publish_manifest(source: Path, final: Path) -> None:
    data = source.read_bytes()
    if final.is_file() and final.read_bytes() == data:
        return
    temp = _temp_name(final)
    try:
        with temp.open("wb") as dst:
            dst.write(data)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_dir(final.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
