"""Copy the shards a job reads to node-local disk (``epic-train --stage-dir``).

A training run reads the store once per epoch, in small random reads; on a shared parallel
file system (GPFS scratch) a cold read costs a network round trip and a whole file-system
block. Copying the shards the run needs to the node's own disk once, at job start, makes
every later read local: seconds to a minute for a ``--keep sampled`` store.

Layout (one folder per store, named by its resolved path, so two stores never mix)::

    <stage_dir>/<store name>-<12 hex digits>/manifest.json
    <stage_dir>/<store name>-<12 hex digits>/shards/shard-NNNNN.lmdb   only those asked for
    <stage_dir>/<store name>-<12 hex digits>/sources/shard-NNNNN.lmdb.json

Each staged shard has a record of what it was copied from (``sources/``, written after the
copy): the source file's inode and ctime, a digest of its metadata records (among them the
CRC-32 of every frame) and the copy's own inode and ctime. Size and mtime are not enough:
``touch -r`` restores an mtime, and a re-extracted shard often has its old size. Nothing can
set a ctime back, a re-extracted shard is a new inode, and changed frames change their
checksums, which are read from the source at 4 bytes a frame, not the frames. A requeued
job on the same node reuses a shard only when all of these match, and copies it again
otherwise (the log says why); a shard the reader found damaged loses its record
(:func:`forget_staged_copy`) and is copied again at the next start.

Each copy is written under a temp name, fsynced and renamed into place, as the extractor
publishes shards; jobs that share a node stage one store in turn (a lock on its folder), so
a temp file found there is a killed copy's leftover and is removed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from epicdata.console import format_bytes, free_bytes, preflight_output
from epicdata.errors import (
    MalformedMetadataError,
    OutOfSpaceError,
    StoreError,
    StoreIncompleteError,
)
from epicdata.frame_index import content_digest
from epicdata.layout import (
    MANIFEST_NAME,
    SHARD_META_KEY,
    SHARDS_DIR,
    checksum_key,
    shard_path,
    video_meta_key,
)
from epicdata.lmdb_env import ShardReadError, read_in_child
from epicdata.lmdb_pages import PageFormatError, ShardPages
from epicdata.manifest import Manifest
from epicdata.metadata import ShardMeta

log = logging.getLogger(__name__)

#: Held while a process stages into a store's folder (flock; released when it exits).
LOCK_NAME = ".stage.lock"
#: Marks temp copies: ``.shard-00003.lmdb.tmp-<host>-<pid>``, ``.manifest.json.tmp-...``.
TEMP_MARK = ".tmp-"
#: Bytes per read/write of a copy.
COPY_CHUNK = 16 << 20
#: The folder of the records of what each staged shard was copied from.
SOURCES_DIR = "sources"
_SPACE_FIX = (
    "free space there, point --stage-dir at a larger node-local disk, or drop --stage-dir "
    "to read the store where it is"
)


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

    Shards already staged from the same source file, unchanged on both sides (the module's
    docstring says how that is told), are reused. Raises :class:`StoreError` (exit 2) for a
    video not in the store's plan, :class:`~epicdata.errors.EnvironmentProblem` (exit 2)
    when ``stage_dir`` cannot be a writable folder, :class:`StoreIncompleteError` (exit 5)
    for a shard missing from the store or with unreadable metadata, and
    :class:`OutOfSpaceError` (exit 4) when ``stage_dir``'s disk cannot hold the shards still
    to copy (nothing is published then) or fills up while they are copied.
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
    # A writable folder, or exit 2 naming --stage-dir (e.g. a path below a regular file).
    preflight_output(stage_dir, need_bytes=0, option="--stage-dir")
    target = staged_root(source, stage_dir)
    (target / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    (target / SOURCES_DIR).mkdir(exist_ok=True)
    with _locked(target):
        _remove_leftovers(target)
        todo = [i for i in indices if _copy_needed(sources[i], shard_path(target, i))]
        need = sum(sources[i].stat().st_size for i in todo)
        if need > free_bytes(stage_dir):
            raise _no_space(
                f"not enough space to stage {len(todo)} shards of {source}", stage_dir, need
            )
        start = time.monotonic()
        copied = sum(_stage_shard(sources[i], shard_path(target, i), stage_dir) for i in todo)
        _publish_manifest(source / MANIFEST_NAME, target / MANIFEST_NAME, stage_dir)
        _fsync_dir(target / SHARDS_DIR)
        seconds = time.monotonic() - start
    reused = sum(shard_path(target, i).stat().st_size for i in indices if i not in todo)
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


def forget_staged_copy(staged_shard: str | Path) -> None:
    """Drop the record of what ``staged_shard`` was copied from, so that the next staging
    copies it again: the reader calls this when it finds the copy damaged."""
    with contextlib.suppress(OSError):
        _record_path(Path(staged_shard)).unlink(missing_ok=True)


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
    for sub in (folder, folder / SHARDS_DIR, folder / SOURCES_DIR):
        for temp in sub.glob(f".*{TEMP_MARK}*"):
            log.info("removing %s, left by an interrupted staging", temp)
            temp.unlink(missing_ok=True)


def _record_path(staged_shard: Path) -> Path:
    """``<staged>/sources/shard-NNNNN.lmdb.json``: what ``staged_shard`` was copied from."""
    return staged_shard.parent.parent / SOURCES_DIR / f"{staged_shard.name}.json"


def _file_id(stat: os.stat_result) -> dict[str, int]:
    """What identifies one version of a file: a new file (re-extracted, renamed into place)
    is another inode, and any write or ``touch`` sets the ctime to now."""
    return {"inode": stat.st_ino, "ctime_ns": stat.st_ctime_ns, "size": stat.st_size}


def _copy_needed(source: Path, staged: Path) -> bool:
    """Whether ``source`` must be copied to ``staged``; a copy there that cannot be reused
    is logged with the reason."""
    if not staged.is_file():
        return True
    reason = _stale(source, staged)
    if reason is not None:
        log.info("copying %s again: %s", source, reason)
    return reason is not None


def _stale(source: Path, staged: Path) -> str | None:
    """Why the copy ``staged`` is not ``source`` as it is now; None when it is."""
    try:
        record = json.loads(_record_path(staged).read_bytes())
        copy, origin, digest = record["copy"], record["source"], record["metadata_sha256"]
    except (OSError, ValueError, TypeError, KeyError):
        return (
            "no record of what the staged copy was made from (an older release, an "
            "interrupted copy, or the reader found the copy damaged)"
        )
    if copy != _file_id(staged.stat()):
        return f"the staged copy {staged} changed after it was made"
    if origin != _file_id(source.stat()):
        return "the source shard was replaced or written since it was staged (inode or ctime)"
    if digest != _metadata_digest(source, name=source):
        return "the source shard's metadata (its frames' checksums) changed since it was staged"
    return None


def _metadata_digest(shard: Path, *, name: Path) -> str:
    """SHA-256 of every metadata record of ``shard``: the shard's and each video's records
    and the CRC-32 of every stored frame. A changed frame changes it, yet only 4 bytes a
    frame are read, never the frames. Read as the trainer reads (``pread``, no memory map a
    damaged page could turn into SIGBUS; py-lmdb in a child process for a file the page
    reader does not parse). ``name`` is the store's shard, named in errors."""
    damaged = StoreIncompleteError(
        "the shard's metadata cannot be read",
        where=name,
        fix=f"run `epic-check --store {name.parent.parent}` and re-extract the shards it names",
    )
    pages: ShardPages | str | None = None
    try:
        pages = ShardPages.open_or_reason(shard)
        opened = pages

        def read(keys: list[bytes]) -> dict[bytes, bytes | None]:
            if isinstance(opened, str):
                return read_in_child(shard, keys)
            return {key: opened.get(key) for key in keys}

        shard_blob = read([SHARD_META_KEY])[SHARD_META_KEY]
        if shard_blob is None:
            raise damaged
        video_ids = ShardMeta.from_bytes(shard_blob).video_ids
        keys = [k for v in video_ids for k in (video_meta_key(v), checksum_key(v))]
        values = {SHARD_META_KEY: shard_blob, **read(keys)}
    except (OSError, PageFormatError, ShardReadError, MalformedMetadataError):
        raise damaged from None
    finally:
        if isinstance(pages, ShardPages):
            pages.close()
    return content_digest(values, video_ids)


def _stage_shard(source: Path, final: Path, stage_dir: str | Path) -> int:
    """Copy ``source`` to ``final`` and record what it was copied from; returns the bytes
    copied. The old record goes first: a copy killed half-way is never taken for one
    that finished."""
    record = _record_path(final)
    record.unlink(missing_ok=True)
    size = source.stat().st_size
    with _room(f"no space left staging {source.name}", stage_dir, size):
        read = _copy(source, final)
        entry = {
            "source": _file_id(read),
            "metadata_sha256": _metadata_digest(final, name=source),
            "copy": _file_id(final.stat()),
        }
        _write_atomic(record, json.dumps(entry, sort_keys=True).encode())
    return read.st_size


@contextlib.contextmanager
def _room(what: str, stage_dir: str | Path, need: int) -> Iterator[None]:
    """A disk that fills up while staging (``need`` bytes to write) is exit 4 naming
    --stage-dir, the bytes needed and the bytes free."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise _no_space(what, stage_dir, need) from None


def _no_space(what: str, stage_dir: str | Path, need: int) -> OutOfSpaceError:
    return OutOfSpaceError(
        what,
        where=f"--stage-dir {stage_dir}: needs {format_bytes(need)}, "
        f"{format_bytes(free_bytes(stage_dir))} free",
        fix=_SPACE_FIX,
    )


def _temp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}{TEMP_MARK}{socket.gethostname()}-{os.getpid()}")


def _copy(source: Path, final: Path) -> os.stat_result:
    """Copy ``source`` to ``final`` through a temp file (fsynced, given the source's times,
    renamed into place); returns the stat of the file actually read."""
    temp = _temp_name(final)
    try:
        with source.open("rb") as src, temp.open("wb") as dst:
            # The file actually read: a shard re-published meanwhile is another inode, and
            # the record must name the one copied.
            stat = os.fstat(src.fileno())
            shutil.copyfileobj(src, dst, COPY_CHUNK)
            dst.flush()
            os.utime(dst.fileno(), ns=(stat.st_atime_ns, stat.st_mtime_ns))
            os.fsync(dst.fileno())
        os.replace(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return stat


def _publish_manifest(source: Path, final: Path, stage_dir: str | Path) -> None:
    data = source.read_bytes()
    if final.is_file() and final.read_bytes() == data:
        return
    with _room(f"no space left staging {MANIFEST_NAME}", stage_dir, len(data)):
        _write_atomic(final, data)


def _write_atomic(final: Path, data: bytes) -> None:
    """Write ``data`` to a temp file, fsync it and rename it to ``final``."""
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
