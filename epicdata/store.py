"""The frame store's reader: :class:`FrameStore` reads the JPEG bytes of frames by
(video id, frame number) from a store's published shards, and checks what it returns.

The store's format lives beside it: the files and keys in :mod:`epicdata.layout`, the
shard plan in :mod:`epicdata.manifest`, the shards' own records in
:mod:`epicdata.metadata`, the per-frame CRC-32 in :mod:`epicdata.checksums`.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import itertools
import logging
import os
import tempfile
import threading
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb

from epicdata.checksums import crc32, frame_checksum
from epicdata.constants import CLAMP_TOLERANCE_FRAMES
from epicdata.errors import MalformedMetadataError, StoreError, StoreIncompleteError
from epicdata.frame_index import ENTRY, HEADER, FrameIndexError, parse_header
from epicdata.layout import (
    PUBLISH_RECORD_KEY,
    SHARD_META_KEY,
    SHARDS_DIR,
    checksum_key,
    frame_index_key,
    image_key,
    shard_path,
    video_meta_key,
)
from epicdata.lmdb_env import (
    ShardReadError,
    open_shard_readonly,
    read_in_child,
    shard_file_truncated,
)
from epicdata.lmdb_pages import (
    PageCache,
    PageFormatError,
    ShardPages,
    ShardTruncatedError,
    fadvise,
    in_page_cache,
)
from epicdata.manifest import Manifest
from epicdata.memory import memory_limit_bytes
from epicdata.metadata import ShardMeta, VideoMeta
from epicdata.ranges import Range, describe_ranges
from epicdata.stage import forget_staged_copy

_log = logging.getLogger(__name__)

#: Bytes of a worker's breadcrumb (what it reads now): a fixed size, overwritten in place.
_CRUMB_BYTES = 512
#: Breadcrumb slots of a FrameStore, one per live DataLoader worker (the file is sparse:
#: slots never written cost nothing).
_CRUMB_SLOTS = 1024


def _anonymous_file() -> int:
    """A file without a name (``memfd``; elsewhere one unlinked at once): the kernel frees it
    with its last descriptor, so no end of the process, a signal included, leaves it behind.
    (Breadcrumbs once lived in ``$TMPDIR/epic-reads-<pid>/``, and every run left one.)"""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("epic-reads", os.MFD_CLOEXEC)
    with tempfile.TemporaryFile() as file:
        return os.dup(file.fileno())


@dataclass(frozen=True)
class _StoredIndex:
    """Where each stored frame of a video sits in its checksum array (frame order)."""

    starts: tuple[int, ...]
    ends: tuple[int, ...]
    offsets: tuple[int, ...]  # frames stored before each range

    @classmethod
    def of(cls, ranges: Sequence[Range]) -> _StoredIndex:
        sizes = [b - a + 1 for a, b in ranges]
        return cls(
            starts=tuple(a for a, _ in ranges),
            ends=tuple(b for _, b in ranges),
            offsets=tuple(itertools.accumulate(sizes, initial=0))[:-1] if sizes else (),
        )

    def position(self, frame: int) -> int | None:
        """Index of ``frame`` among the stored frames; None when it is not stored."""
        if len(self.starts) == 1:  # whole videos (keep=all): no search
            if self.starts[0] <= frame <= self.ends[0]:
                return frame - self.starts[0]
            return None
        i = bisect.bisect_right(self.starts, frame) - 1
        if i < 0 or frame > self.ends[i]:
            return None
        return self.offsets[i] + frame - self.starts[i]


#: The kernel's readahead for the shards a FrameStore reads. Off, each frame's bytes are
#: read alone (announced together per clip); on, the READAHEAD_WINDOW a frame lies in is
#: announced the first time a read falls in it (unless the page cache holds it), and the
#: kernel reads it in large requests. On wins while the page cache can hold
#: the store and loses everything once it cannot: with the readers' memory capped as
#: SLURM's cgroup caps a job's (page cache included) at 1/13 of a keep=all store, clip
#: reads through py-lmdb's map ran at 0.02x of one file per frame with readahead on and at
#: about 1x with it off (docs/benchmarks.md, "Cold reads: a store larger than memory").
#: So a store chooses by its size (``readahead=None``): on when the store's shards take at
#: most this fraction of the memory the process may use (its cgroup's limit, SLURM's
#: ``--mem``, or the machine's), off otherwise, and it logs the choice.
READAHEAD_MEMORY_FRACTION = 0.5
#: Bytes a read ahead covers (aligned): what a page fault of py-lmdb's map reads with
#: readahead on, on a device whose ``read_ahead_kb`` is 8192.
READAHEAD_WINDOW = 8 << 20
#: A clip whose frames lie within this many times their own bytes of each other (whole
#: segments, short clips) is announced to the kernel as one range rather than per frame.
DENSE_SPAN = 2
#: Bytes of a clip's frame index entries read with one ``pread`` (a long segment's clip
#: reads its 8 entries one by one instead of the span between them).
INDEX_SPAN_BYTES = 16 << 10
_UNKNOWN = object()


def _read_ahead_whole(pages: ShardPages) -> threading.Thread:
    """Announce the whole shard file to the kernel, window after window, from a daemon
    thread (``posix_fadvise`` takes at most the device's readahead window a call, and
    blocks while it submits the reads); on a descriptor of its own, closed at the end."""
    fd = os.dup(pages.fd)
    size = pages.pages * pages.page_size

    def run() -> None:
        try:
            for offset in range(0, size, READAHEAD_WINDOW):
                fadvise(fd, offset, READAHEAD_WINDOW, "WILLNEED")
        finally:
            os.close(fd)

    thread = threading.Thread(target=run, name=f"read-ahead {pages.path.name}", daemon=True)
    thread.start()
    return thread


class FrameStore:
    """Read JPEG bytes of frames by (video id, frame number).

    Shards are opened lazily in the process that reads them, so a FrameStore made in the
    main process can be handed to DataLoader workers under ``fork`` or ``spawn``: a forked
    child notices the pid change and opens its own environments; pickling drops them.

    Metadata and frames are read with ``pread`` through :mod:`epicdata.lmdb_pages`
    (``direct``: one read per frame, a clip's reads announced together, and no memory map,
    so that no damaged shard can kill the process with SIGBUS), as epic-check reads them.
    py-lmdb's map reads a shard only when the page reader does not parse its file (logged
    once per store, with the reason), and every shard with ``direct=False`` (benchmarks).
    Even then the process that made the store (the one that drives training) reads such a
    file's metadata in a child process: a damaged page kills the child, not the run.

    Requests past the last stored frame of a video by at most ``clamp_tolerance`` frames are
    clamped to it (annotations may end a few frames past the decoder's last frame) and
    counted in :attr:`clamp_count` (per process). Anything else outside the stored ranges is
    an error naming the video, the frame and the stored ranges.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        clamp_tolerance: int = CLAMP_TOLERANCE_FRAMES,
        verify: bool = True,
        readahead: bool | None = None,
        direct: bool = True,
        staged_from: str | Path | None = None,
    ) -> None:
        self.root = Path(root)
        #: The store this one is a staged copy of (``epic-train --stage-dir``): damage found
        #: here is then the copy's, and the copy is made again at the next start.
        self.staged_from = None if staged_from is None else Path(staged_from)
        self.manifest = Manifest.load(self.root)
        self.clamp_tolerance = clamp_tolerance
        self.verify = verify
        #: Shards read with pread through :mod:`epicdata.lmdb_pages` (one read per frame,
        #: a clip's reads in flight together) rather than through py-lmdb's memory map.
        self.direct = direct
        self._fallback_logged = False
        self._child_values: dict[bytes, bytes | None] = {}
        self._video_shard = self.manifest.video_to_shard()
        self.readahead = self._choose_readahead() if readahead is None else readahead
        self._shard_files: dict[int, Path] = {}
        self.clamp_count = 0
        self._envs: dict[int, lmdb.Environment] = {}
        self._pages: dict[int, ShardPages | None] = {}
        self._page_cache = PageCache()
        #: Per video, in the process that reads: (its shard's reader, the file offset of
        #: its frame index's first entry), or None when the shard has no index.
        self._where: dict[str, tuple[ShardPages, int] | None] = {}
        self._unindexed_logged = False
        self._checksums_at: dict[str, tuple[int, int] | None] = {}
        self._meta: dict[str, tuple[VideoMeta, _StoredIndex]] = {}
        self._pid = os.getpid()
        self._origin_pid = os.getpid()
        # The breadcrumbs of this store's DataLoader workers: a file of the main process,
        # inherited by forked workers, reopened through /proc by spawned ones.
        self._crumbs_fd = _anonymous_file()
        self._crumbs_inherited = True
        weakref.finalize(self, os.close, self._crumbs_fd)
        self._crumb: tuple[int, int, int] | None = None  # (pid, fd, slot) of this worker

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_envs"] = {}
        state["_pages"] = {}
        state["_page_cache"] = PageCache()
        state["_where"] = {}
        state["_crumb"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()
        self._crumbs_inherited = False  # _crumbs_fd is the main process's number

    @property
    def video_ids(self) -> list[str]:
        return sorted(self._video_shard)

    def has_video(self, video_id: str) -> bool:
        return video_id in self._video_shard

    def _after_fork(self) -> None:
        """In a forked child, drop the parent's readers: its environments must not be used
        here (LMDB forbids it), nor its descriptors' cached pages."""
        if os.getpid() != self._pid:
            self._envs = {}
            self._pages = {}
            self._page_cache = PageCache()
            self._where = {}
            self._pid = os.getpid()

    def _choose_readahead(self) -> bool:
        """Whether the store's shards fit in this process's memory (see
        READAHEAD_MEMORY_FRACTION); logged."""
        total = 0
        for index in sorted(set(self._video_shard.values())):
            with contextlib.suppress(OSError):  # not published: said when it is read
                total += shard_path(self.root, index).stat().st_size
        memory = memory_limit_bytes()
        fits = total <= READAHEAD_MEMORY_FRACTION * memory
        _log.info(
            "store %s: %.1f GB of shards, %.1f GB of memory for this job: %s",
            self.root,
            total / 1e9,
            memory / 1e9,
            "reading each shard ahead in 8 MiB windows (it fits in memory)"
            if fits
            else "reading each frame alone (the store does not fit in memory)",
        )
        return fits

    def _shard_index(self, video_id: str) -> int:
        try:
            return self._video_shard[video_id]
        except KeyError:
            raise StoreError(
                f"video {video_id} is not in the store {self.root} "
                f"(plan it with `epic-extract plan` and extract its shard)"
            ) from None

    def _published(self, video_id: str) -> Path:
        """The shard file of ``video_id``, which must exist."""
        index = self._shard_index(video_id)
        path = shard_path(self.root, index)
        if not path.is_file():
            raise self._damaged(
                path,
                f"{path.name} (holding {video_id}) is not published",
                f"run `epic-extract run --store {self.root} --shard-index {index}`",
            )
        return path

    def _shard_pages(self, video_id: str) -> ShardPages | None:
        """The pread reader of the shard of ``video_id`` (None: py-lmdb reads it)."""
        if not self.direct:
            return None
        self._after_fork()
        index = self._shard_index(video_id)
        if index in self._pages:
            return self._pages[index]
        path = self._published(video_id)
        try:
            opened = ShardPages.open_or_reason(path, self._page_cache)
        except ShardTruncatedError:
            raise self._truncated(path, index) from None
        except (OSError, PageFormatError) as exc:
            raise self._damaged(
                path,
                f"{path.name} cannot be read ({exc})",
                f"run `epic-check --store {self.root}` and re-extract shard {index}",
            ) from None
        if isinstance(opened, str):
            self._fell_back(path, opened)
        pages = self._pages[index] = None if isinstance(opened, str) else opened
        return pages

    def _fell_back(self, path: Path, reason: str) -> None:
        """Say, once per store, that a shard is read with py-lmdb, and why."""
        if not self._fallback_logged:
            self._fallback_logged = True
            _log.warning(
                "%s is read with py-lmdb, not the store's page reader: %s (said once for the "
                "store %s; its other shards may be too)",
                path,
                reason,
                self.root,
            )

    def _truncated(self, path: Path, index: int) -> StoreIncompleteError:
        return self._damaged(
            path,
            f"{path.name} is truncated (shorter than LMDB's last page)",
            f"run `epic-check --store {self.root}` and re-extract shard {index}",
        )

    def _env(self, video_id: str) -> lmdb.Environment:
        """py-lmdb's environment of the shard of ``video_id`` (a file the page reader does
        not parse, or ``direct=False``)."""
        self._after_fork()
        index = self._shard_index(video_id)
        env = self._envs.get(index)
        if env is None:
            path = self._published(video_id)
            try:
                env = open_shard_readonly(path, sequential=self.readahead)
            except lmdb.Error as exc:
                raise self._damaged(
                    path,
                    f"{path.name} cannot be opened ({exc})",
                    f"run `epic-check --store {self.root}`",
                ) from None
            if shard_file_truncated(env, path):
                env.close()
                raise self._truncated(path, index)
            self._envs[index] = env
        return env

    def video_meta(self, video_id: str) -> VideoMeta:
        return self._video(video_id)[0]

    def _video(self, video_id: str) -> tuple[VideoMeta, _StoredIndex]:
        cached = self._meta.get(video_id)
        if cached is None:
            blob = self._meta_value(video_id)
            if blob is None:
                raise self._missing(video_id, "metadata missing")
            try:
                meta = VideoMeta.from_bytes(blob)
            except MalformedMetadataError as exc:  # named with its shard, as epic-check does
                raise self._missing(video_id, f"{exc.what} ({exc.reason})") from None
            cached = meta, _StoredIndex.of(meta.stored_ranges)
            self._meta[video_id] = cached
        return cached

    def _meta_value(self, video_id: str) -> bytes | None:
        """The stored metadata of ``video_id`` (None: absent)."""
        key = video_meta_key(video_id)
        pages = self._shard_pages(video_id)
        if pages is not None:
            try:
                return pages.get(key)
            except PageFormatError as exc:
                raise self._corrupt(video_id, str(exc)) from None
        if self.direct and os.getpid() == self._origin_pid:
            return self._value_in_child(video_id, key)
        with self._read(video_id) as txn:
            blob = txn.get(key)
            return None if blob is None else bytes(blob)

    def _value_in_child(self, video_id: str, key: bytes) -> bytes | None:
        """The value of ``key``, read by py-lmdb in a child process with the metadata of the
        other videos of the shard (one child per shard)."""
        if key not in self._child_values:
            index = self._shard_index(video_id)
            videos = sorted(v for v, i in self._video_shard.items() if i == index)
            path = self._published(video_id)
            try:
                self._child_values.update(
                    read_in_child(path, [video_meta_key(video) for video in videos])
                )
            except ShardReadError as exc:
                raise self._corrupt(video_id, str(exc)) from None
        return self._child_values.get(key)

    def _corrupt(self, video_id: str, reason: str) -> StoreIncompleteError:
        return self._damaged(
            self._shard_file(video_id),
            f"{video_id}: the shard is damaged ({reason})",
            f"run `epic-check --store {self.root}` and re-extract the shards it names",
        )

    def _shard_file(self, video_id: str) -> Path:
        # Kept per shard: every clip's breadcrumb names it, and a Path costs microseconds.
        index = self._video_shard[video_id]
        path = self._shard_files.get(index)
        if path is None:
            path = self._shard_files[index] = shard_path(self.root, index)
        return path

    @contextlib.contextmanager
    def _read(self, video_id: str) -> Iterator[lmdb.Transaction]:
        """A read transaction on the shard of ``video_id``: an LMDB error (a damaged page)
        becomes an error naming the shard file and the video."""
        env = self._env(video_id)
        try:
            with env.begin(buffers=True) as txn:
                yield txn
        except lmdb.Error as exc:
            raise self._corrupt(video_id, f"LMDB: {exc}") from None

    def holds(self, video_id: str, frames: Sequence[int]) -> bool:
        """Whether every frame of ``frames`` is readable (stored, or clamped near the end),
        from the metadata alone: no JPEG is read, nothing is counted."""
        meta, index = self._video(video_id)
        last = meta.last_stored_frame
        clamps = last == meta.decoded_frames
        return all(
            index.position(int(f)) is not None
            or (clamps and last < f <= last + self.clamp_tolerance)
            for f in frames
        )

    def holds_range(self, video_id: str, first: int, last_frame: int) -> bool:
        """Whether every frame of ``[first, last_frame]`` is readable (see :meth:`holds`)."""
        meta, index = self._video(video_id)
        last = meta.last_stored_frame
        if last_frame > last:
            if not (last == meta.decoded_frames and last_frame <= last + self.clamp_tolerance):
                return False
            if first > last:  # wholly in the clamped tail
                return True
            last_frame = last
        i = bisect.bisect_right(index.starts, first) - 1
        return i >= 0 and last_frame <= index.ends[i]

    def resolve_frames(self, video_id: str, frames: Sequence[int]) -> list[int]:
        """Map requested frame numbers to stored ones (clamping near the end, counted)."""
        return self._resolve(video_id, frames)[0]

    def _resolve(self, video_id: str, frames: Sequence[int]) -> tuple[list[int], list[int]]:
        """The stored frame numbers of ``frames`` (clamped near the end, counted) and their
        positions among the video's stored frames."""
        meta, index = self._video(video_id)
        resolved, positions = [], []
        for frame in frames:
            frame = int(frame)
            position = index.position(frame)
            if position is None:
                last = meta.last_stored_frame
                if not (
                    last == meta.decoded_frames and last < frame <= last + self.clamp_tolerance
                ):
                    raise StoreError(
                        f"{video_id} frame {frame} is not in the store (stored ranges: "
                        f"{describe_ranges(meta.stored_ranges)}; decoded {meta.decoded_frames} "
                        f"frames); re-plan with --keep covering this request"
                    )
                frame, position = last, meta.stored_frames - 1
                self.clamp_count += 1
            resolved.append(frame)
            positions.append(position)
        return resolved, positions

    def _crumbs_file(self) -> int:
        """This process's descriptor of the breadcrumbs file (OSError where a spawned
        process cannot reopen it: no /proc)."""
        if self._crumbs_inherited:
            return self._crumbs_fd
        return os.open(f"/proc/{self._origin_pid}/fd/{self._crumbs_fd}", os.O_RDWR)

    def _claim_slot(self, pid: int) -> tuple[int, int, int]:
        """A slot of the breadcrumbs file for worker ``pid``: the first one no live worker
        holds a lock on (the kernel drops a dead worker's lock). Slot -1: none to be had."""
        try:
            fd = self._crumbs_file()
        except OSError:
            return pid, -1, -1
        for slot in range(_CRUMB_SLOTS):
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, _CRUMB_BYTES, slot * _CRUMB_BYTES)
            except OSError:
                continue
            return pid, fd, slot
        return pid, fd, -1

    def _leave_breadcrumb(self, video_id: str, frames: Sequence[int]) -> None:
        """In a DataLoader worker, note what it reads before it reads: a damaged page can
        make LMDB abort the process, and the main process then names the shard from here
        (:meth:`worker_reads`). One pwrite per clip, into memory."""
        pid = os.getpid()
        if pid == self._origin_pid:
            return
        if self._crumb is None or self._crumb[0] != pid:
            self._crumb = self._claim_slot(pid)
        _, fd, slot = self._crumb
        if slot < 0:
            return
        text = f"{pid} {self._shard_file(video_id)} {video_id} frames {list(frames)}"
        os.pwrite(fd, text.encode()[:_CRUMB_BYTES].ljust(_CRUMB_BYTES), slot * _CRUMB_BYTES)

    def worker_reads(self, pids: Sequence[int]) -> dict[int, str]:
        """What the DataLoader workers ``pids`` of this process last started to read."""
        fd = self._crumbs_file()
        try:
            data = os.pread(fd, _CRUMB_BYTES * _CRUMB_SLOTS, 0)
        finally:
            if not self._crumbs_inherited:
                os.close(fd)
        out = {}
        for at in range(0, len(data), _CRUMB_BYTES):
            pid, _, text = data[at : at + _CRUMB_BYTES].decode(errors="replace").partition(" ")
            if pid.isdigit() and int(pid) in pids:
                out[int(pid)] = text.strip()
        return out

    def read_frames(self, video_id: str, frames: Sequence[int]) -> list[bytes]:
        """JPEG bytes of ``frames`` (1-based numbers) of ``video_id``, in request order, each
        checked against its CRC-32 (unless ``verify`` is off). In a flow store, two per
        frame: its u then its v image (grayscale JPEGs; C1's interleaved order)."""
        self._leave_breadcrumb(video_id, frames)
        resolved, positions = self._resolve(video_id, frames)
        meta = self._video(video_id)[0]
        images = meta.images
        if len(images) > 1:
            # One entry per image, position after position (epicdata.layout.entry_keys).
            count = len(images)
            positions = [p * count + i for p in positions for i in range(count)]
            resolved = [f for f in resolved for _ in images]
        where = self._where.get(video_id, _UNKNOWN)
        if where is _UNKNOWN or os.getpid() != self._pid:
            where = self._frame_index(video_id)
        try:
            if where is not None:
                return self._read_indexed(where, video_id, resolved, positions)  # type: ignore[arg-type]
            keys = [image_key(video_id, f, images[i % len(images)]) for i, f in enumerate(resolved)]
            pages = self._shard_pages(video_id)
            if pages is None:
                out, sums, first = self._read_mapped(video_id, resolved, keys, meta)
            else:
                out, sums, first = self._read_direct(
                    pages, video_id, resolved, keys, positions, meta
                )
        except PageFormatError as exc:
            raise self._corrupt(video_id, str(exc)) from None
        if sums is not None:
            for frame, position, blob in zip(resolved, positions, out, strict=True):
                at = 4 * (position - first)
                if frame_checksum(blob) != int.from_bytes(sums[at : at + 4], "little"):
                    raise self._checksum_mismatch(video_id, frame)
        return out

    @property
    def modality(self) -> str:
        """ "rgb", or "flow" for a flow store (``epic-extract plan --flow``)."""
        return self.manifest.params.modality

    def _checksum_mismatch(self, video_id: str, frame: int) -> StoreIncompleteError:
        return self._damaged(
            self._shard_file(video_id),
            f"{video_id} frame {frame}: checksum mismatch (the stored JPEG is corrupt)",
            f"run `epic-check --store {self.root}` and re-extract that "
            f"shard with `epic-extract run --force`",
        )

    def _frame_index(self, video_id: str) -> tuple[ShardPages, int] | None:
        """Where the frame index of ``video_id`` lies in its shard (see ``_where``), its
        header checked; None (logged once per store) for a shard of store format 1."""
        pages = self._shard_pages(video_id)
        where = None
        if pages is not None:
            meta = self._video(video_id)[0]
            try:
                found = pages.locate(frame_index_key(video_id))
                if found is None:
                    self._unindexed(video_id, pages)
                else:
                    parse_header(
                        pages.read(found[0], HEADER.size),
                        found[1],
                        meta.stored_frames,
                        len(meta.images),
                    )
                    where = pages, found[0] + HEADER.size
            except PageFormatError as exc:  # FrameIndexError included
                raise self._corrupt(video_id, str(exc)) from None
        self._where[video_id] = where
        return where

    def _unindexed(self, video_id: str, pages: ShardPages) -> None:
        """A shard without a frame index: one of store format 1 (logged once per store), or
        a damaged one."""
        blob = pages.get(SHARD_META_KEY)
        version = 1
        if blob is not None:
            with contextlib.suppress(MalformedMetadataError):
                version = ShardMeta.from_bytes(blob).format_version
        if version >= 2 or pages.locate(PUBLISH_RECORD_KEY) is not None:
            raise FrameIndexError("its frame index is missing")
        if not self._unindexed_logged:
            self._unindexed_logged = True
            _log.warning(
                "%s has no frame index (store format 1): frames are looked up in its B-tree, "
                "which reads slower; `epic-check --store %s --upgrade` adds the index in "
                "place (said once for the store)",
                pages.path,
                self.root,
            )

    def _read_indexed(
        self,
        where: tuple[ShardPages, int],
        video_id: str,
        resolved: list[int],
        positions: list[int],
    ) -> list[bytes]:
        """The frames through the video's frame index: one ``pread`` of the clip's entries,
        one of each frame, announced to the kernel together."""
        pages, at = where
        fd, size = pages.fd, ENTRY.size
        low, high = min(positions), max(positions)
        if (high - low + 1) * size <= INDEX_SPAN_BYTES:
            table = os.pread(fd, (high - low + 1) * size, at + low * size)
            if len(table) != (high - low + 1) * size:
                raise PageFormatError("its frame index runs past the end of the file")
            entries = [ENTRY.unpack_from(table, (p - low) * size) for p in positions]
        else:
            entries = []
            for p in positions:
                entry = os.pread(fd, size, at + p * size)
                if len(entry) != size:
                    raise PageFormatError("its frame index runs past the end of the file")
                entries.append(ENTRY.unpack(entry))
        end = pages.pages * pages.page_size
        first, last, total = end, 0, 0
        for frame, (offset, length, _) in zip(resolved, entries, strict=True):
            if offset < 2 * pages.page_size or offset + length > end:
                raise FrameIndexError(
                    f"frame {frame}'s frame index entry ({offset:,}, {length:,}) lies outside "
                    f"the file's {end:,} bytes"
                )
            first, last, total = min(first, offset), max(last, offset + length), total + length
        if self.readahead:
            # The store fits in memory. The first time a read of this process falls in a
            # window that the page cache does not hold, the window is read ahead from the
            # frame on (as a memory map's page faults read ahead: py-lmdb, readahead on),
            # and the first such miss in a shard reads it ahead whole, in the background.
            windows = pages.windows
            for offset, _, _ in entries:
                window = offset // READAHEAD_WINDOW
                if window in windows:
                    continue
                windows.add(window)
                if in_page_cache(fd, offset):
                    continue
                if pages.read_ahead is None:
                    pages.read_ahead = _read_ahead_whole(pages)
                start, stop = window * READAHEAD_WINDOW, (window + 1) * READAHEAD_WINDOW
                fadvise(fd, offset, stop - offset, "WILLNEED")  # the kernel reads in this order
                fadvise(fd, start, offset - start, "WILLNEED")
        elif last - first <= DENSE_SPAN * total + (64 << 10):
            fadvise(fd, first, last - first, "WILLNEED")
        else:
            for offset, length, _ in entries:
                fadvise(fd, offset, length, "WILLNEED")
        # The bytes alone: the CRC-32 says whether they are the frame's (LMDB's checks of
        # the value's page are epic-check's, which reads through the B-tree).
        out = [os.pread(fd, length, offset) for offset, length, _ in entries]
        for frame, blob, (_, length, _) in zip(resolved, out, entries, strict=True):
            if len(blob) != length:
                raise ShardTruncatedError(f"frame {frame} ends past the end of the file")
        if self.verify:
            for frame, blob, entry in zip(resolved, out, entries, strict=True):
                if crc32(blob) & 0xFFFFFFFF != entry[2]:
                    raise self._damaged(
                        self._shard_file(video_id),
                        f"{video_id} frame {frame}: checksum mismatch (the stored JPEG, or "
                        f"its frame index entry, is corrupt)",
                        f"run `epic-check --store {self.root}`: it says which (an index is "
                        f"rewritten with --upgrade, a JPEG re-extracted with "
                        f"`epic-extract run --force`)",
                    )
        return out

    def _damaged(self, shard: Path, what: str, fix: str) -> StoreIncompleteError:
        """The error for a missing, unreadable or damaged ``shard``. In a staged copy
        (``staged_from``) the copy is what is damaged, not the store, whose shard re-extracted
        would be the same: say so, and drop the copy's record so that the next start with
        --stage-dir copies it again."""
        if self.staged_from is None:
            return StoreIncompleteError(what, where=shard, fix=fix)
        forget_staged_copy(shard)
        return StoreIncompleteError(
            f"the staged copy of a shard is damaged: {what}",
            where=f"{shard}, copied from {self.staged_from / SHARDS_DIR / shard.name}",
            fix=f"the store {self.staged_from} is not affected; the next start with --stage-dir "
            f"copies this shard again (or delete {shard})",
        )

    def _missing(self, video_id: str, what: str) -> StoreIncompleteError:
        return self._damaged(
            self._shard_file(video_id),
            f"{video_id}: {what}",
            f"run `epic-check --store {self.root}` and re-extract that shard",
        )

    def _no_key(self, video_id: str, frame: int) -> StoreIncompleteError:
        return self._missing(video_id, f"frame {frame} is listed as stored but its key is missing")

    def _no_sums(self, video_id: str) -> StoreIncompleteError:
        return self._missing(video_id, "checksums missing or not one per stored frame")

    def _read_mapped(
        self, video_id: str, resolved: list[int], keys: list[bytes], meta: VideoMeta
    ) -> tuple[list[bytes], bytes | None, int]:
        """The frames through py-lmdb's map, and (when verifying) the video's checksums
        from its first stored frame on."""
        out = []
        sums = None
        with self._read(video_id) as txn:
            if self.verify:
                # The checksums of a video are one value, in frame order.
                sums = txn.get(checksum_key(video_id))
                if sums is None or len(sums) != 4 * meta.stored_frames * len(meta.images):
                    raise self._no_sums(video_id)
            for frame, key in zip(resolved, keys, strict=True):
                blob = txn.get(key)
                if blob is None:
                    raise self._no_key(video_id, frame)
                out.append(bytes(blob))
            return out, None if sums is None else bytes(sums), 0

    def _read_direct(
        self,
        pages: ShardPages,
        video_id: str,
        resolved: list[int],
        keys: list[bytes],
        positions: list[int],
        meta: VideoMeta,
    ) -> tuple[list[bytes], bytes | None, int]:
        """The frames with pread, every frame's bytes announced to the kernel first, and
        (when verifying) the span of the video's checksums that covers them."""
        spans = pages.locate_many(keys)
        for frame, span in zip(resolved, spans, strict=True):
            if span is None:
                raise self._no_key(video_id, frame)
        pages.advise(spans)  # type: ignore[arg-type]
        out = [pages.read(*span) for span in spans]  # type: ignore[misc]
        if not self.verify or not positions:
            return out, None, 0
        if video_id not in self._checksums_at:
            where = pages.locate(checksum_key(video_id))
            if where is not None:
                pages.read(where[0], 0)  # its first page's header, checked as a whole read's
            self._checksums_at[video_id] = where
        where = self._checksums_at[video_id]
        if where is None or where[1] != 4 * meta.stored_frames * len(meta.images):
            raise self._no_sums(video_id)
        first, last = min(positions), max(positions)
        return out, pages.read(where[0] + 4 * first, 4 * (last - first + 1)), first

    def close(self) -> None:
        if os.getpid() == self._pid:
            for pages in self._pages.values():
                if pages is not None:
                    pages.close()
            self._pages = {}
            self._where = {}
            self._page_cache = PageCache()
            for env in self._envs.values():
                env.close()
        self._envs = {}
