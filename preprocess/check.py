"""`epic-check`: verify a frame store against its manifest, and say which shards to redo.

Per shard: the file is published, opens, is as long as LMDB says (a truncated file would
crash readers with SIGBUS), its metadata matches the plan (no missing or extra video,
same parameters), every stored frame key is present in order with a matching CRC-32, and
every planned frame up to the decoder's end is stored. ``deep`` also decodes every JPEG and
checks its size. With annotations, every annotated frame must be readable (stored, or past
the end by at most the clamp tolerance). The default mode reads each shard once,
sequentially: it is bound by the disk (bench/bench_check.py).
"""

from __future__ import annotations

import bisect
import io
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lmdb
from PIL import Image

from epicdata.annotations import SPLIT_FILES, AnnotationDir
from epicdata.constants import CLAMP_TOLERANCE_FRAMES
from epicdata.sampling import sampled_frames_to_keep
from epicdata.store import (
    SHARD_META_KEY,
    Manifest,
    PlannedVideo,
    Range,
    ShardMeta,
    ShardPlan,
    VideoMeta,
    checksum_key,
    frame_checksum,
    frames_in_ranges,
    open_shard_readonly,
    shard_file_truncated,
    shard_path,
    unpack_checksums,
    video_meta_key,
)

log = logging.getLogger(__name__)

#: Problems listed per video before the rest are summarised as a count.
MAX_PROBLEMS_PER_VIDEO = 5


@dataclass
class ShardCheck:
    """Outcome for one shard; ``published`` False when its file is absent."""

    index: int
    path: str
    published: bool
    videos: int = 0
    frames: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass
class CheckReport:
    """Outcome for a store. ``problems`` holds every problem (shard ones prefixed with the
    shard); ``resubmit_indices`` the shards to extract again."""

    store: str
    shards: list[ShardCheck]
    store_problems: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        out = [f"shard {s.index}: {p}" for s in self.shards for p in s.problems]
        return out + self.store_problems

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def resubmit_indices(self) -> list[int]:
        return [s.index for s in self.shards if s.problems]

    @property
    def resubmit_command(self) -> str | None:
        """The sbatch line that redoes the bad shards (EPIC_FORCE=1 when some are published)."""
        if not self.resubmit_indices:
            return None
        force = any(s.published for s in self.shards if s.problems)
        export = f"ALL,EPIC_STORE={self.store}" + (",EPIC_FORCE=1" if force else "")
        spec = ",".join(str(i) for i in self.resubmit_indices)
        return f"sbatch --array={spec} --export={export} slurm/extract.sbatch"

    def to_dict(self) -> dict:
        return {
            "store": self.store,
            "ok": self.ok,
            "shards": [asdict(s) for s in self.shards],
            "store_problems": self.store_problems,
            "resubmit_indices": self.resubmit_indices,
            "resubmit_command": self.resubmit_command,
        }


def _covered(frames: Sequence[int], ranges: Sequence[Range]) -> list[int]:
    """Frames of ``frames`` that are not inside the sorted disjoint ``ranges``."""
    starts = [a for a, _ in ranges]
    missing = []
    for frame in frames:
        i = bisect.bisect_right(starts, frame) - 1
        if i < 0 or frame > ranges[i][1]:
            missing.append(frame)
    return missing


def _planned_missing(planned: PlannedVideo, meta: VideoMeta) -> list[int]:
    """Planned frames up to the decoder's end that the shard does not hold."""
    keep = planned.keep_ranges or ((1, meta.decoded_frames),)
    wanted = frames_in_ranges(
        tuple((a, min(b, meta.decoded_frames)) for a, b in keep if a <= meta.decoded_frames)
    )
    return _covered(wanted.tolist(), meta.stored_ranges)


def _check_video(
    txn: lmdb.Transaction, planned: PlannedVideo, params: dict, deep: bool
) -> tuple[VideoMeta | None, list[str]]:
    vid = planned.video_id
    blob = txn.get(video_meta_key(vid))
    if blob is None:
        return None, [f"{vid}: metadata missing"]
    try:
        meta = VideoMeta.from_bytes(bytes(blob))
    except (ValueError, TypeError, KeyError) as exc:
        return None, [f"{vid}: metadata unreadable ({exc})"]
    problems = []
    if (meta.short_side, meta.jpeg_qscale) != (params["short_side"], params["jpeg_qscale"]):
        problems.append(
            f"{vid}: made with short side {meta.short_side}, -q:v {meta.jpeg_qscale}; the plan says {params['short_side']}, {params['jpeg_qscale']}"
        )
    if abs(meta.decoded_frames - planned.expected_frames) > CLAMP_TOLERANCE_FRAMES:
        problems.append(
            f"{vid}: {meta.decoded_frames} frames decoded, {planned.expected_frames} expected"
        )
    missing = _planned_missing(planned, meta)
    if missing:
        problems.append(f"{vid}: {len(missing)} planned frames not stored (first {missing[0]})")
    sums_blob = txn.get(checksum_key(vid))
    frames = frames_in_ranges(meta.stored_ranges)
    if sums_blob is None or len(sums_blob) != 4 * len(frames) or len(frames) != meta.stored_frames:
        return meta, [*problems, f"{vid}: checksums missing or not one per stored frame"]
    sums = unpack_checksums(bytes(sums_blob))
    prefix = f"{vid}/".encode()
    bad: list[str] = []
    cursor = txn.cursor()
    i = 0
    positioned = cursor.set_range(prefix)
    while positioned:
        key = bytes(cursor.key())
        if not key.startswith(prefix):
            break
        frame = int(key[len(prefix) :])
        while i < len(frames) and frames[i] < frame:
            bad.append(f"{vid} frame {frames[i]}: key missing")
            i += 1
        if i == len(frames) or frames[i] != frame:
            bad.append(f"{vid} frame {frame}: stored but outside the stored ranges")
        else:
            value = cursor.value()
            if frame_checksum(value) != sums[i]:
                bad.append(f"{vid} frame {frame}: checksum mismatch (corrupt JPEG)")
            elif deep:
                bad.extend(_decode_problem(vid, frame, value, meta))
            i += 1
        positioned = cursor.next()
    bad.extend(f"{vid} frame {int(f)}: key missing" for f in frames[i:])
    if len(bad) > MAX_PROBLEMS_PER_VIDEO:
        bad = [
            *bad[:MAX_PROBLEMS_PER_VIDEO],
            f"{vid}: ... and {len(bad) - MAX_PROBLEMS_PER_VIDEO} more frame problems",
        ]
    return meta, problems + bad


def _decode_problem(vid: str, frame: int, jpeg: memoryview, meta: VideoMeta) -> list[str]:
    try:
        with Image.open(io.BytesIO(jpeg)) as image:
            image.load()
            size = image.size
    except (OSError, ValueError) as exc:
        return [f"{vid} frame {frame}: JPEG does not decode ({exc})"]
    if size != (meta.width, meta.height):
        return [f"{vid} frame {frame}: {size[0]}x{size[1]}, expected {meta.width}x{meta.height}"]
    return []


def check_shard(
    store_root: Path, plan: ShardPlan, params: dict, *, deep: bool = False
) -> tuple[ShardCheck, dict[str, VideoMeta]]:
    """Check one shard against its plan; returns the outcome and the metadata it read."""
    path = shard_path(store_root, plan.index)
    result = ShardCheck(index=plan.index, path=str(path), published=path.is_file())
    if not result.published:
        result.problems.append(f"not published ({path.name} missing): run its array task")
        return result, {}
    result.bytes = path.stat().st_size
    try:
        env = open_shard_readonly(path, sequential=True)
    except lmdb.Error as exc:
        result.problems.append(
            f"{path.name} does not open as LMDB ({exc}): truncated or not a shard"
        )
        return result, {}
    metas: dict[str, VideoMeta] = {}
    try:
        if shard_file_truncated(env, path):
            needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
            result.problems.append(
                f"{path.name} is truncated: {result.bytes:,} bytes, LMDB needs {needed:,}"
            )
            return result, {}
        with env.begin(buffers=True) as txn:
            blob = txn.get(SHARD_META_KEY)
            shard_meta = ShardMeta.from_bytes(bytes(blob)) if blob is not None else None
            planned_ids = [v.video_id for v in plan.videos]
            if shard_meta is None:
                result.problems.append("shard metadata missing")
            else:
                if shard_meta.shard_index != plan.index:
                    result.problems.append(
                        f"holds shard {shard_meta.shard_index}, not {plan.index}"
                    )
                if shard_meta.params != params:
                    result.problems.append(
                        f"made with parameters {shard_meta.params}, the plan says {params}"
                    )
                for vid in sorted(set(planned_ids) - set(shard_meta.video_ids)):
                    result.problems.append(f"{vid}: planned but missing from the shard")
                for vid in sorted(set(shard_meta.video_ids) - set(planned_ids)):
                    result.problems.append(f"{vid}: in the shard but not in its plan")
            for planned in plan.videos:
                meta, problems = _check_video(txn, planned, params, deep)
                result.problems.extend(problems)
                if meta is not None:
                    metas[planned.video_id] = meta
            stored = sum(m.stored_frames for m in metas.values())
            entries = env.stat()["entries"]
            if entries != stored + 2 * len(metas) + 1:
                result.problems.append(
                    f"{entries} keys, expected {stored + 2 * len(metas) + 1} (stray keys)"
                )
    except lmdb.Error as exc:
        result.problems.append(f"{path.name} is corrupt: LMDB says {exc}")
    finally:
        env.close()
    result.videos = len(metas)
    result.frames = sum(m.stored_frames for m in metas.values())
    return result, metas


def _check_annotations(
    manifest: Manifest, annotations_dir: Path, metas: dict[str, VideoMeta]
) -> list[str]:
    """Every annotated frame of the store's splits must be readable from the store."""
    annotations = AnnotationDir(annotations_dir)
    planned = {v.video_id: v for s in manifest.shards for v in s.videos}
    params = manifest.params
    problems: list[str] = []
    for split in manifest.splits:
        if not annotations.has(SPLIT_FILES[split]):
            continue
        by_video = defaultdict(list)
        for segment in annotations.segments(split):
            by_video[segment.video_id].append(segment)
        for vid, segments in sorted(by_video.items()):
            if vid not in planned:
                problems.append(
                    f"{SPLIT_FILES[split]} names video {vid}, which is not in the store's plan: re-plan the store with these annotations"
                )
                continue
            meta = metas.get(vid)
            if meta is None:
                continue
            last = meta.last_stored_frame
            late = [s for s in segments if s.stop_frame > last + CLAMP_TOLERANCE_FRAMES]
            if late:
                worst = max(late, key=lambda s: s.stop_frame)
                problems.append(
                    f"{vid}: {len(late)} segments end past the last stored frame {last} by more than {CLAMP_TOLERANCE_FRAMES} (e.g. {worst.narration_id} ends at {worst.stop_frame})"
                )
            missing = []
            for s in segments:
                if params.keep == "sampled":
                    wanted = sampled_frames_to_keep(
                        s.start_frame, s.stop_frame, params.num_frames
                    ).tolist()
                else:
                    wanted = range(s.start_frame, s.stop_frame + 1)
                if _covered([f for f in wanted if f <= last], meta.stored_ranges):
                    missing.append(s.narration_id)
            if missing:
                problems.append(
                    f"{vid}: frames of {len(missing)} segments not stored (e.g. {missing[0]}): the store was planned with other annotations"
                )
    return problems


def check_store(
    store_root: str | Path,
    *,
    annotations_dir: str | Path | None = None,
    deep: bool = False,
    on_shard: Callable[[], None] | None = None,
) -> CheckReport:
    """Check every shard of the store at ``store_root`` (and the annotations, if given);
    ``on_shard`` is called after each shard (progress)."""
    store_root = Path(store_root).resolve()
    manifest = Manifest.load(store_root)
    # Through JSON, as the shard stored them (tuples become lists).
    params = json.loads(json.dumps(asdict(manifest.params)))
    report = CheckReport(store=str(store_root), shards=[])
    all_metas: dict[str, VideoMeta] = {}
    for plan in manifest.shards:
        result, metas = check_shard(store_root, plan, params, deep=deep)
        log.debug("shard %d: %d problems", plan.index, len(result.problems))
        report.shards.append(result)
        all_metas.update(metas)
        if on_shard is not None:
            on_shard()
    if annotations_dir is not None:
        report.store_problems.extend(_check_annotations(manifest, Path(annotations_dir), all_metas))
    return report


def format_report(report: CheckReport) -> str:
    """The table (shard, videos, frames, bytes, problems), the problems and the resubmit line."""
    lines = [f"{'shard':>6} {'videos':>7} {'frames':>10} {'bytes':>15} {'problems':>9}"]
    for s in report.shards:
        lines.append(
            f"{s.index:>6} {s.videos:>7} {s.frames:>10,} {s.bytes:>15,} {len(s.problems):>9}"
        )
    total_frames = sum(s.frames for s in report.shards)
    total_bytes = sum(s.bytes for s in report.shards)
    lines.append(
        f"{'total':>6} {sum(s.videos for s in report.shards):>7} {total_frames:>10,} {total_bytes:>15,} {len(report.problems):>9}"
    )
    lines.extend(f"problem: {p}" for p in report.problems)
    if report.ok:
        lines.append(
            f"store {report.store} is complete: every planned frame present, every checksum matches"
        )
    elif report.resubmit_command:
        spec = ",".join(str(i) for i in report.resubmit_indices)
        lines.append(f"resubmit: --array={spec}\n  {report.resubmit_command}")
    return "\n".join(lines)
