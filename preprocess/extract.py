"""`epic-extract run`: decode the videos of one shard and publish the shard.

Videos are decoded in parallel, one ffmpeg process per video (decoding is the bottleneck and
does not scale well inside one process), while this process's main thread writes the
pictures into the shard. A bounded queue between them keeps memory small whatever the
video length. Each video's counts are checked against its plan before the shard is
published; a bad video fails the shard with a message naming it and quoting ffmpeg.
Every video is read the same way, through its source (:mod:`preprocess.sources`: an MP4
decoded by ffmpeg, or official frames copied as they are).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from epicdata.checksums import frame_checksum, pack_checksums
from epicdata.console import preflight_output, site_of_environment, user_line
from epicdata.errors import BadSourceError, StoreError
from epicdata.ffmpeg_bin import ffmpeg_path
from epicdata.layout import (
    FLOW_IMAGES,
    MANIFEST_NAME,
    RGB_IMAGES,
    SHARD_META_KEY,
    SHARDS_DIR,
    STORE_FORMAT_VERSION,
    checksum_key,
    failure_record_path,
    shard_path,
    video_meta_key,
)
from epicdata.manifest import (
    ExtractParams,
    Manifest,
    PlannedVideo,
    ShardPlan,
    flow_fields,
)
from epicdata.metadata import ShardMeta, VideoMeta
from epicdata.ranges import array_spec
from preprocess.plan import estimate_bytes
from preprocess.sources import FrameSource, source_class
from preprocess.writer import (
    ShardWriter,
    remove_stale_temps,
)

log = logging.getLogger(__name__)

#: Pictures per hand-over from a decode thread to the writer, and hand-overs in flight per
#: decoder: bounds memory at about workers x 4 x 32 x 40 KB.
BATCH_FRAMES = 32
QUEUE_BATCHES_PER_WORKER = 4


class BadVideoError(BadSourceError):
    """One or more input videos of a shard are unusable; ``errors`` maps video id -> reason."""

    def __init__(
        self, shard_index: int, errors: dict[str, str], store_root: str | Path | None = None
    ) -> None:
        self.shard_index = shard_index
        self.errors = dict(sorted(errors.items()))
        lines = "\n".join(f"  {video}: {why}" for video, why in self.errors.items())
        fix = (
            "check them (ffprobe for videos, `tar -tf` for frame tars), download them again "
            "and resubmit this index"
        )
        if store_root is not None:
            store = Path(store_root).resolve()
            fix += ": " + user_line(
                "extract", site_of_environment(), store=store, array=shard_index
            )
        super().__init__(
            f"shard {shard_index} not published: {len(errors)} bad input video(s)",
            where=", ".join(self.errors),
            fix=fix,
            details=lines,
        )


class ShardsFailedError(BadSourceError):
    """`run --all` went on past shards with a bad source: each one, its bad videos, and one
    resubmit line for all of them (exit 3)."""

    def __init__(
        self, failed: dict[int, BadSourceError], *, total: int, store_root: str | Path
    ) -> None:
        self.failed = dict(sorted(failed.items()))
        spec = array_spec(list(self.failed))
        line = user_line(
            "extract", site_of_environment(), store=Path(store_root).resolve(), array=spec
        )
        super().__init__(
            f"{len(self.failed)} of {total} shards not published: bad input videos or frames"
            f" ({_named_inputs(self.failed.values())})",
            where=f"shard{'s' if len(self.failed) > 1 else ''} {spec}",
            fix="check them (ffprobe for videos, `tar -tf` for frame tars), download them "
            f"again and resubmit these shards: {line}",
            details="\n".join(_failure_lines(i, exc) for i, exc in self.failed.items()),
        )


def _named_inputs(failed: Iterable[BadSourceError], most: int = 5) -> str:
    """The bad videos of the failed shards for the error line, the first ``most`` of them
    and how many more (the details list them all)."""
    names = [v for exc in failed for v in (exc.errors if isinstance(exc, BadVideoError) else {})]
    if not names:
        return "see below"
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def _failure_lines(shard_index: int, exc: BadSourceError) -> str:
    """Why shard ``shard_index`` failed, for the summary: each bad video and its reason
    (another error's own text), continuation lines indented under it."""
    video_errors = isinstance(exc, BadVideoError)
    reasons = list(exc.errors.items()) if video_errors else [("", str(exc))]
    lines = []
    for video, why in reasons:
        first, *rest = why.splitlines() or [""]
        lines.append(f"  shard {shard_index}: " + (f"{video}: " if video else "") + first)
        lines.extend(f"      {line.strip()}" for line in rest if line.strip())
    return "\n".join(lines)


def _bad_source_summary(exc: BadSourceError) -> str:
    """One line on a failed shard, without the per-shard resubmit hint (`run --all` prints
    one for every failed shard at the end)."""
    if isinstance(exc, BadVideoError):
        return f"{len(exc.errors)} bad input video(s): {', '.join(exc.errors)}"
    return (str(exc).splitlines() or [type(exc).__name__])[0]


@dataclass(frozen=True)
class VideoResult:
    """Outcome of one video: frame counts, wall seconds and stored JPEG bytes."""

    video_id: str
    native_frames: int
    decoded_frames: int
    stored_frames: int
    seconds: float
    jpeg_bytes: int

    @property
    def frames_per_second(self) -> float:
        """Re-timed frames decoded per wall second."""
        return self.decoded_frames / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class ShardResult:
    """Outcome of one shard: ``status`` is "published" or "skipped" (already published)."""

    shard_index: int
    path: Path
    status: str
    videos: tuple[VideoResult, ...]
    seconds: float
    bytes: int


def default_workers() -> int:
    """``$SLURM_CPUS_PER_TASK`` when set (the cores SLURM gave this task), else the CPUs this
    process may run on."""
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        return int(slurm)
    return len(os.sched_getaffinity(0))


class _Video:
    """Per-video state in the writer thread: stored frame ranges and checksums so far (one
    per image of each position: a flow video's u and v, which its tar may list apart)."""

    def __init__(self, planned: PlannedVideo) -> None:
        self.planned = planned
        self.images = FLOW_IMAGES if planned.flow is not None else RGB_IMAGES
        self.ranges: list[list[int]] = []
        self.checksums: list[int] = []
        self.numbers: list[tuple[int, int]] = []  # (frame, image's index) of each checksum
        self.jpeg_bytes = 0
        self.ordered = True

    def add(self, frame: int, jpeg: bytes, image: str = "") -> None:
        entry = (frame, self.images.index(image))
        if self.numbers and entry <= self.numbers[-1]:
            self.ordered = False
        self.checksums.append(frame_checksum(jpeg))
        self.numbers.append(entry)
        self.jpeg_bytes += len(jpeg)
        if self.ordered and entry[1] == 0:
            self._extend(frame)

    def _extend(self, frame: int) -> None:
        if self.ranges and frame == self.ranges[-1][1] + 1:
            self.ranges[-1][1] = frame
        else:
            self.ranges.append([frame, frame])

    def sort(self) -> None:
        """Put ranges and checksums in (frame, image) order: a tar lists its members in the
        order they were added (a folder's directory order; a flow tar's u/ before its v/),
        not necessarily by number."""
        if self.ordered:
            return
        pairs = sorted(zip(self.numbers, self.checksums, strict=True))
        self.numbers = [n for n, _ in pairs]
        self.checksums = [c for _, c in pairs]
        self.ranges = []
        for frame, image in self.numbers:
            if image == 0:
                self._extend(frame)
        self.ordered = True


def _put_unless_cancelled(out: queue.Queue, cancel: threading.Event, item: tuple) -> bool:
    """Put ``item`` into the writer's queue, waiting while it is full; False once the run
    is cancelled (the writer stopped: the producer thread returns)."""
    while not cancel.is_set():
        try:
            out.put(item, timeout=0.5)
            return True
        except queue.Full:
            continue
    return False


def _put_in_batches(
    put: Callable[[tuple], bool], video_id: str, frames: Iterable[tuple[int, bytes]]
) -> bool:
    """Hand ``frames`` to the writer in batches of BATCH_FRAMES; False once cancelled."""
    batch: list[tuple[int, bytes]] = []
    for item in frames:
        batch.append(item)
        if len(batch) >= BATCH_FRAMES:
            if not put(("frames", video_id, batch)):
                return False
            batch = []
    return not batch or put(("frames", video_id, batch))


def _produce(source: FrameSource, *, out: queue.Queue, cancel: threading.Event) -> None:
    """Producer thread of one video, whatever its source: put ("frames", id, batch) items,
    then ("done", id, source) or ("failed", id, exception)."""
    put = functools.partial(_put_unless_cancelled, out, cancel)
    video_id = source.video.video_id
    try:
        if _put_in_batches(put, video_id, source.frames(cancel)):
            put(("done", video_id, source))
    except Exception as exc:  # noqa: BLE001 - handed to the writer thread, which decides
        put(("failed", video_id, exc))


def _write_videos(
    shard: ShardPlan,
    writer: ShardWriter,
    *,
    params: ExtractParams,
    sources: dict[str, Path],
    workers: int,
    on_frames: Callable[[int], None] | None,
) -> tuple[list[VideoMeta], list[VideoResult], dict[str, str]]:
    """Read every video of ``shard`` (from ``sources`` by video id) into ``writer``: up to
    ``workers`` producer threads (one per video, largest first), this thread writing.
    Returns (metadata, results, bad videos by id -> reason)."""
    videos = sorted(shard.videos, key=lambda v: (-v.duration * v.width * v.height, v.video_id))
    concurrency = max(1, min(workers, len(videos)))
    threads = max(1, workers // concurrency)
    cancel = threading.Event()
    out: queue.Queue = queue.Queue(maxsize=QUEUE_BATCHES_PER_WORKER * concurrency)
    state = {v.video_id: _Video(v) for v in videos}
    with ThreadPoolExecutor(concurrency, thread_name_prefix="decode") as pool:
        try:
            for video in videos:
                path = sources[video.video_id]
                source = source_class(video)(video, path=path, params=params, threads=threads)
                pool.submit(_produce, source, out=out, cancel=cancel)
            metas, results, bad = _consume(out, state, writer, params=params, on_frames=on_frames)
        finally:
            cancel.set()
    return sorted(metas, key=lambda m: m.video_id), results, bad


def _consume(
    out: queue.Queue,
    state: dict[str, _Video],
    writer: ShardWriter,
    *,
    params: ExtractParams,
    on_frames: Callable[[int], None] | None,
) -> tuple[list[VideoMeta], list[VideoResult], dict[str, str]]:
    """Writer side of :func:`_write_videos`: write each batch as it comes and each video's
    metadata once its source is read and matches the plan, until every producer ended."""
    metas: list[VideoMeta] = []
    results: list[VideoResult] = []
    bad: dict[str, str] = {}
    remaining = len(state)
    while remaining:
        kind, video_id, payload = out.get()
        current = state[video_id]
        if kind == "frames":
            for frame, jpeg, *image in payload:
                current.add(frame, jpeg, *image)
            writer.put_frames(video_id, payload)
            if on_frames is not None:
                on_frames(len(payload))
            continue
        remaining -= 1
        try:
            if kind == "failed":
                raise payload
            meta, result = _finish(current, payload, params)
        except BadSourceError as exc:
            # Only a bad file is the video's fault; anything else (ffmpeg missing, a bug)
            # stops the shard as what it is.
            bad[video_id] = str(exc)
            log.error("%s: %s", video_id, exc)
            continue
        writer.put(
            [
                (video_meta_key(video_id), meta.to_bytes()),
                (checksum_key(video_id), pack_checksums(current.checksums)),
            ]
        )
        metas.append(meta)
        results.append(result)
        log.info(
            "%s: %d frames stored of %d decoded in %.1f s (%.0f frames/s)",
            video_id,
            result.stored_frames,
            result.decoded_frames,
            result.seconds,
            result.frames_per_second,
        )
    return metas, results, bad


def _finish(
    current: _Video, source: FrameSource, params: ExtractParams
) -> tuple[VideoMeta, VideoResult]:
    """A read video's metadata (for its shard) and outcome (for the log); raises the
    source's :class:`BadSourceError` when what it read does not match the plan."""
    current.sort()
    counts = source.counts()
    video = current.planned
    meta = VideoMeta(
        video_id=video.video_id,
        rate=video.rate,
        native_fps=video.native_fps,
        duration=video.duration,
        decoded_frames=counts.decoded,
        stored_frames=len(current.checksums) // len(current.images),
        stored_ranges=tuple((a, b) for a, b in current.ranges),
        width=counts.width,
        height=counts.height,
        short_side=params.short_side,
        jpeg_qscale=params.jpeg_qscale,
        source=str(source.path),
        native_frames=counts.native_frames,
        fingerprint=video.fingerprint,
        source_kind=source.kind,
        **flow_fields(video.flow),
    )
    result = VideoResult(
        video_id=video.video_id,
        native_frames=counts.native_frames,
        decoded_frames=counts.decoded,
        stored_frames=meta.stored_frames,
        seconds=counts.seconds,
        jpeg_bytes=current.jpeg_bytes,
    )
    source.check([tuple(r) for r in current.ranges])
    return meta, result


def video_source(
    video: PlannedVideo, *, planned_root: str | None, videos_root: str | Path | None
) -> Path:
    """Where to read ``video`` from: its planned path, or for an MP4 the same place under
    ``videos_root`` when the tree moved (see :meth:`FrameSource.locate`)."""
    return source_class(video).locate(video, planned_root=planned_root, videos_root=videos_root)


def load_runnable_manifest(store_root: str | Path) -> Manifest:
    """The store's manifest, refusing a sizing-only plan (``plan --video-info`` without
    videos or frames): it has no sources to extract, so its shards can never be published
    and there is nothing to check or resubmit (exit 2)."""
    manifest = Manifest.load(store_root)
    if manifest.extra.get("sizing_only"):
        raise StoreError(
            "sizing-only plan: planned from EPIC_100_video_info.csv to size the job, it has "
            "no videos or frames to extract or check",
            where=Path(store_root) / MANIFEST_NAME,
            fix="plan again into this store with `epic-extract plan --videos DIR` (or "
            "`--frames DIR`) and the same options, then run and check it",
        )
    return manifest


def _records_failure(run: Callable[..., ShardResult]) -> Callable[..., ShardResult]:
    """Record a failed run in ``store/failures/`` (what failed, the SLURM job, when) so that
    ``epic-check`` can say why a shard is not published; a successful run removes it."""

    @functools.wraps(run)
    def recorded(*, store_root: str | Path, shard_index: int, **options: Any) -> ShardResult:
        record = failure_record_path(store_root, shard_index)
        try:
            result = run(store_root=store_root, shard_index=shard_index, **options)
        except BaseException as exc:
            _record_failure(record, exc)
            raise
        record.unlink(missing_ok=True)
        return result

    return recorded


def _record_failure(record: Path, exc: BaseException) -> None:
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID"):
        where = f"job {env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '?')}"
    else:
        where = f"job {env['SLURM_JOB_ID']}" if env.get("SLURM_JOB_ID") else "outside SLURM"
    # One line: the error's lines joined with "; ", so a video's detail is not glued to the
    # resubmit line's "--array N" that ends the first line.
    lines = (" ".join(line.split()) for line in str(exc).splitlines())
    what = "; ".join(line for line in lines if line) or type(exc).__name__
    with contextlib.suppress(OSError):  # a full disk must not hide the real error
        record.parent.mkdir(exist_ok=True)
        record.write_text(f"{datetime.now().isoformat(timespec='seconds')} {where}: {what}\n")


@_records_failure
def run_shard(
    *,
    store_root: str | Path,
    shard_index: int,
    workers: int | None = None,
    tmp_dir: str | Path | None = None,
    force: bool = False,
    map_size: int | None = None,
    on_frames: Callable[[int], None] | None = None,
    videos_root: str | Path | None = None,
) -> ShardResult:
    """Extract shard ``shard_index`` of the store at ``store_root`` and publish it.

    ``workers``: ffmpeg processes (and cores) to use, default :func:`default_workers`.
    ``tmp_dir``: scratch for the shard under construction, default ``$TMPDIR``.
    ``force``: redo a shard that is already published (otherwise it is skipped).
    ``map_size``: LMDB map size in bytes, default 4x the plan's estimate + 1 GiB.
    ``on_frames``: called with the number of frames written, for progress bars.
    ``videos_root``: the videos' root when they moved since ``plan`` (same EPIC layout).

    Raises :class:`BadVideoError` (nothing published) when an input video is unusable and
    :class:`~epicdata.errors.OutOfSpaceError` when scratch or the store runs out of space.
    """
    started = time.perf_counter()
    store_root = Path(store_root)
    manifest = load_runnable_manifest(store_root)
    shard = _planned_shard(manifest, store_root, shard_index)
    final = shard_path(store_root, shard_index)
    remove_stale_temps(store_root, shard_index)
    if final.exists() and not force:
        log.info(
            "shard %d already published at %s: skipped (--force redoes it)", shard_index, final
        )
        return ShardResult(shard_index, final, "skipped", (), 0.0, final.stat().st_size)

    workers = workers or default_workers()
    estimate = estimate_bytes(shard.planned_frames, manifest.params.short_side)
    map_size = map_size or 4 * estimate + (1 << 30)
    tmp_root = scratch_root(tmp_dir)
    preflight_run(
        manifest, store_root=store_root, indices=[shard_index], tmp_dir=tmp_dir, force=force
    )
    sources = {
        v.video_id: video_source(v, planned_root=manifest.videos_root, videos_root=videos_root)
        for v in shard.videos
    }
    log.info(
        "shard %d: %d videos, about %d frames planned (from durations), %d workers, scratch %s",
        shard_index,
        len(shard.videos),
        shard.planned_frames,
        workers,
        tmp_root,
    )
    with _scratch_folder(tmp_root, shard_index) as workdir:
        path, shard_meta, results = _build_and_publish(
            shard,
            workdir / final.name,
            map_size=map_size,
            store_root=store_root,
            params=manifest.params,
            sources=sources,
            workers=workers,
            on_frames=on_frames,
        )
    size = path.stat().st_size
    seconds = time.perf_counter() - started
    log.info(
        "shard %d published: %s, %d frames, %.1f MB, %.1f s",
        shard_index,
        path,
        shard_meta.total_frames,
        size / 1e6,
        seconds,
    )
    return ShardResult(shard_index, path, "published", tuple(results), seconds, size)


def run_shards(
    indices: Sequence[int], run_one: Callable[[int], ShardResult], *, store_root: str | Path
) -> list[ShardResult]:
    """`run --all`: extract shards ``indices`` one after the other with ``run_one``.

    A bad source (exit 3) fails only its shard and the run goes on: one damaged video must
    not keep the healthy shards after it from being published. Anything else (out of space,
    an environment problem, Ctrl-C, a bug) stops the run at once, since every later shard
    would meet it too: it propagates with its own exit code (4 over 3) after a log line
    naming the shards not published and one resubmit line for all of them. Raises
    :class:`ShardsFailedError` at the end when shards failed; returns the results.
    """
    results: list[ShardResult] = []
    failed: dict[int, BadSourceError] = {}
    for position, index in enumerate(indices):
        try:
            results.append(run_one(index))
        except BadSourceError as exc:
            failed[index] = exc
            log.error(
                "shard %d not published: %s; going on with the next shard",
                index,
                _bad_source_summary(exc),
            )
        except BaseException:
            _log_stopped(index, failed, list(indices[position + 1 :]), store_root=store_root)
            raise
    if failed:
        raise ShardsFailedError(failed, total=len(indices), store_root=store_root)
    return results


def _log_stopped(
    index: int, failed: dict[int, BadSourceError], left: list[int], *, store_root: str | Path
) -> None:
    """Before the error that stopped `run --all` at shard ``index``: what is not published
    (shards failed before it, it, the ones not attempted) and one line to resubmit them."""
    todo = [*failed, index, *left]
    parts = [f"shard {i} (bad source)" for i in failed]
    parts.append(f"shard {index} (stopped by the error below)")
    if left:
        parts.append(f"shard{'s' if len(left) > 1 else ''} {array_spec(left)} (not attempted)")
    line = user_line(
        "extract", site_of_environment(), store=Path(store_root).resolve(), array=array_spec(todo)
    )
    log.error(
        "run --all stopped at shard %d; not published: %s; once the error below is fixed, "
        "run again with --all or resubmit them: %s",
        index,
        ", ".join(parts),
        line,
    )


def _planned_shard(manifest: Manifest, store_root: Path, shard_index: int) -> ShardPlan:
    """Shard ``shard_index`` of the plan; a StoreError when the plan has no such shard."""
    plans = {s.index: s for s in manifest.shards}
    if shard_index not in plans:
        raise StoreError(
            f"shard index {shard_index} is not in the plan of {store_root} "
            f"(0..{len(plans) - 1}); check --shard-index / the --array range"
        )
    return plans[shard_index]


@contextlib.contextmanager
def _scratch_folder(tmp_root: Path, shard_index: int) -> Iterator[Path]:
    """A new folder under ``tmp_root`` for shard ``shard_index`` under construction,
    removed with whatever it holds when the block ends."""
    tmp_root.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"epic-shard-{shard_index:05d}-", dir=tmp_root))
    try:
        yield workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _build_and_publish(
    shard: ShardPlan,
    scratch_path: Path,
    *,
    map_size: int,
    store_root: Path,
    params: ExtractParams,
    sources: dict[str, Path],
    workers: int,
    on_frames: Callable[[int], None] | None,
) -> tuple[Path, ShardMeta, list[VideoResult]]:
    """Write every video of ``shard`` and the shard's metadata into a new shard at
    ``scratch_path``, verify it and publish it into the store. Returns (published path,
    shard metadata, per-video results)."""
    writer = ShardWriter(scratch_path, map_size=map_size)
    try:
        metas, results, bad = _write_videos(
            shard, writer, params=params, sources=sources, workers=workers, on_frames=on_frames
        )
        if bad:
            raise BadVideoError(shard.index, bad, store_root)
        shard_meta = ShardMeta(
            format_version=STORE_FORMAT_VERSION,
            shard_index=shard.index,
            video_ids=tuple(m.video_id for m in metas),
            params=params.record(),
            total_frames=sum(m.stored_frames for m in metas),
        )
        writer.put([(SHARD_META_KEY, shard_meta.to_bytes())])
        problems = writer.verify(metas, expected_meta=shard_meta)
        if problems:
            raise RuntimeError(f"shard {shard.index} failed verification: {problems[:5]}")
        return writer.publish(store_root, shard.index), shard_meta, results
    finally:
        writer.close()


def scratch_root(tmp_dir: str | Path | None) -> Path:
    """Where shards are built: ``tmp_dir``, else the system's temp folder ($TMPDIR)."""
    return Path(tmp_dir or tempfile.gettempdir())


def preflight_run(
    manifest: Manifest,
    *,
    store_root: str | Path,
    indices: Sequence[int],
    tmp_dir: str | Path | None,
    force: bool,
) -> None:
    """Fail in a second, before any decoding, when ffmpeg is missing, or scratch or the
    store cannot be written or has no room: scratch for the largest shard of ``indices``,
    the store's disk for all of them (already published ones are skipped unless ``force``)."""
    if any(source_class(v).needs_ffmpeg for s in manifest.shards for v in s.videos):
        ffmpeg_path()  # a store made only from official frames copies, and needs no ffmpeg
    todo = [
        s
        for s in manifest.shards
        if s.index in set(indices) and (force or not shard_path(store_root, s.index).exists())
    ]
    if not todo:
        return
    sizes = [estimate_bytes(s.planned_frames, manifest.params.short_side) for s in todo]
    preflight_output(scratch_root(tmp_dir), need_bytes=max(sizes), option="--tmp-dir")
    preflight_output(Path(store_root) / SHARDS_DIR, need_bytes=sum(sizes), option="--store")


def pending_shards(store_root: str | Path) -> list[int]:
    """Indices of planned shards not yet published."""
    manifest = Manifest.load(store_root)
    return [s.index for s in manifest.shards if not shard_path(store_root, s.index).exists()]
