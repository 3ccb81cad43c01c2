"""`epic-extract plan`: decide which frames of which videos go into which shard.

The plan is made once, before any decoding: it probes every video (or reads durations from
``EPIC_100_video_info.csv``), computes the frame ranges to keep per video, balances videos
into shards by frames to store and writes ``<store>/manifest.json``. Every problem with the
inputs is reported together, before anything is written.
"""

from __future__ import annotations

import bisect
import heapq
import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import lmdb

from epicdata.annotations import AnnotationDir, Segment, read_video_info
from epicdata.console import site_of_environment, user_line
from epicdata.constants import (
    CLAMP_TOLERANCE_FRAMES,
    DEFAULT_JPEG_QSCALE,
    DEFAULT_SHORT_SIDE,
)
from epicdata.errors import BadSourceError, EpicInputError, StoreError
from epicdata.frames import expected_frame_count, frame_rate_for
from epicdata.sampling import count_in_ranges, merge_ranges, sampled_frames_to_keep
from epicdata.store import (
    KEEP_MODES,
    MANIFEST_NAME,
    SHARD_META_KEY,
    SHARDS_DIR,
    SOURCE_FRAMES,
    SOURCE_VIDEO,
    TAIL_FRAMES,
    ExtractParams,
    Manifest,
    PlannedVideo,
    Range,
    ShardMeta,
    ShardPlan,
    VideoMeta,
    open_shard_readonly,
    video_meta_key,
)
from preprocess.official_frames import ERRATUM_VIDEO_IDS, find_frames, frames_problem
from preprocess.probe import find_videos, fingerprint, probe_many

log = logging.getLogger(__name__)

#: Frames kept on each side of every annotated segment with ``keep="segments"`` (0.25 s at
#: 60 fps): room for temporal jitter and for segments that end a few frames late.
DEFAULT_MARGIN_FRAMES = 15
#: Shard size when neither a shard count nor a target is given: about 3 GB and 10-15 minutes
#: of a 8-core task, small enough that a failed task costs little to redo.
DEFAULT_TARGET_SHARD_FRAMES = 100_000
#: Bytes per stored frame in a compacted shard (JPEG + LMDB overflow-page rounding) at short
#: side 256 and -q:v 4, measured by bench/bench_extract.py (docs/benchmarks.md) on a
#: 1920x1080 testsrc2 H.264 video. Synthetic pictures compress well: expect real kitchen
#: footage to need more, so treat estimates as a lower bound. Scaled by area for other sizes.
SHARD_BYTES_PER_FRAME_256 = 12_400
#: Source pixels one core decodes (re-times, scales, encodes) per second with
#: `epic-extract run`: 389 M (1920x1080 at ~187 frames/s), bench/bench_extract.py with 1
#: worker on the 2-core build machine. Every source frame is decoded whatever is kept
#: (H.264 cannot skip), so core-hours scale with source pixels, not stored frames.
DECODE_PIXELS_PER_CORE_SECOND = 389_000_000


def keep_ranges_for(
    segments: Sequence[Segment],
    *,
    keep: str,
    margin_frames: int,
    num_frames: Sequence[int],
    expected_frames: int,
) -> tuple[Range, ...] | None:
    """Inclusive frame ranges to store for one video (None = every decoded frame)."""
    if keep == "all":
        return None
    ranges: list[Range] = []
    if keep == "segments":
        ranges = [(s.start_frame - margin_frames, s.stop_frame + margin_frames) for s in segments]
    else:
        for s in segments:
            frames = sampled_frames_to_keep(s.start_frame, s.stop_frame, num_frames)
            ranges.extend((int(f), int(f)) for f in frames)
    ranges.append((expected_frames - TAIL_FRAMES, expected_frames))  # PlannedVideo.tail_from
    clipped = [(max(1, a), min(b, expected_frames)) for a, b in ranges]
    return tuple(merge_ranges((a, b) for a, b in clipped if a <= b))


def _balance(videos: Sequence[PlannedVideo], num_shards: int) -> list[list[PlannedVideo]]:
    """Greedy largest-first: each video goes to the shard with the fewest frames so far."""
    heap = [(0, index) for index in range(num_shards)]
    shards: list[list[PlannedVideo]] = [[] for _ in range(num_shards)]
    for video in sorted(videos, key=lambda v: (-v.planned_frames, v.video_id)):
        frames, index = heapq.heappop(heap)
        shards[index].append(video)
        heapq.heappush(heap, (frames + video.planned_frames, index))
    return [sorted(s, key=lambda v: v.video_id) for s in shards]


def estimate_bytes(planned_frames: int, short_side: int) -> int:
    """Bytes of the published shards for ``planned_frames`` frames (see the constant)."""
    return int(planned_frames * SHARD_BYTES_PER_FRAME_256 * (short_side / 256) ** 2)


def estimate_core_hours(videos: Sequence[PlannedVideo]) -> float:
    """Core-hours to decode every source frame of ``videos`` (see the constant); videos
    taken from official frames are copied, not decoded, and count nothing."""
    pixels = sum(
        v.duration * v.native_fps * v.width * v.height
        for v in videos
        if v.source_kind == SOURCE_VIDEO
    )
    return pixels / DECODE_PIXELS_PER_CORE_SECOND / 3600


def plan_store(
    *,
    store_root: str | Path,
    annotations_dir: str | Path,
    videos_root: str | Path | None = None,
    video_info: str | Path | None = None,
    frames_root: str | Path | None = None,
    splits: Sequence[str] = ("train", "validation", "test"),
    shards: int | None = None,
    target_shard_frames: int | None = None,
    short_side: int = DEFAULT_SHORT_SIDE,
    jpeg_qscale: int = DEFAULT_JPEG_QSCALE,
    keep: str = "segments",
    num_frames: Sequence[int] = (8,),
    margin_frames: int = DEFAULT_MARGIN_FRAMES,
    allow_missing: bool = False,
) -> Manifest:
    """Plan a store and write ``<store_root>/manifest.json``; returns the manifest.

    Videos are those the annotation files of ``splits`` name. Exactly one of
    ``videos_root`` (probe the files) and ``video_info`` (``EPIC_100_video_info.csv``
    durations; a sizing-only plan that ``run`` refuses) must be given. ``keep`` is
    ``segments`` (annotated segments +- ``margin_frames``), ``all`` or ``sampled`` (the
    frames the deterministic samplers of the clip lengths ``num_frames`` read). Shards:
    ``shards`` of them, or enough for ``target_shard_frames`` frames each (default
    :data:`DEFAULT_TARGET_SHARD_FRAMES`). Missing, unreadable or too-short videos are all
    reported in one :class:`EpicInputError` unless ``allow_missing`` drops them.

    ``frames_root``: EPIC's official RGB frames (``PXX/rgb_frames/PXX_YY.tar`` or the
    unpacked folders), copied into the shards as they are; frame counts are estimated from
    ``video_info`` (default: the annotations folder's ``EPIC_100_video_info.csv``) and
    checked by ``run``. With ``videos_root`` too, a video without official frames, or one
    of :data:`~preprocess.official_frames.ERRATUM_VIDEO_IDS` (wrong official frames), is
    decoded from its MP4; each video records its source (``PlannedVideo.source_kind``).
    """
    if frames_root is None and (videos_root is None) == (video_info is None):
        raise EpicInputError(
            "give either --videos (probe the files), --frames (official frames) or "
            "--video-info CSV (sizing only)"
        )
    if frames_root is not None and (
        short_side != DEFAULT_SHORT_SIDE or jpeg_qscale != DEFAULT_JPEG_QSCALE
    ):
        raise EpicInputError(
            f"--short-side {short_side} / --quality {jpeg_qscale} with --frames",
            where=frames_root,
            fix=f"official frames are copied as they are ({DEFAULT_SHORT_SIDE} px short side, "
            f"-q:v {DEFAULT_JPEG_QSCALE}): drop these options, or plan from --videos only",
        )
    if keep not in KEEP_MODES:
        raise EpicInputError(f"--keep {keep!r}: expected one of {', '.join(KEEP_MODES)}")
    if keep == "sampled" and not num_frames:
        raise EpicInputError("--keep sampled needs --num-frames (e.g. 8 or 8,16)")
    if short_side < 2 or short_side % 2 or not 2 <= jpeg_qscale <= 31 or margin_frames < 0:
        raise EpicInputError(
            f"--short-side {short_side} must be even and >= 2, --quality {jpeg_qscale} in "
            f"2..31, --margin-frames {margin_frames} >= 0"
        )
    store_root = Path(store_root)
    published = sorted((store_root / SHARDS_DIR).glob("shard-*.lmdb"))
    if published and (store_root / MANIFEST_NAME).exists():
        raise StoreError(
            f"the store is planned and holds {len(published)} published shard(s)",
            where=store_root,
            fix="plan into a new --store folder (or delete this store)",
        )

    annotations = AnnotationDir(annotations_dir)
    by_video: dict[str, list[Segment]] = defaultdict(list)
    for split in splits:
        for segment in annotations.segments(split):
            by_video[segment.video_id].append(segment)
    if not by_video:
        raise EpicInputError(f"no segments in splits {', '.join(splits)} of {annotations_dir}")

    problems: dict[str, str] = {}
    facts: dict[str, tuple[str | None, float, float, int, int, str | None]] = {}
    kinds: dict[str, str] = {}
    if frames_root is not None:
        frames_root = Path(frames_root).resolve()
        _plan_frames_sources(
            by_video,
            annotations=annotations,
            frames_root=frames_root,
            videos_root=None if videos_root is None else Path(videos_root).resolve(),
            video_info=video_info,
            facts=facts,
            kinds=kinds,
            problems=problems,
        )
    elif videos_root is not None:
        # Absolute paths: `run` works from any directory (and --videos re-roots a moved tree).
        videos_root = Path(videos_root).resolve()
        found = find_videos(videos_root)
        for video_id in sorted(set(by_video) - set(found)):
            problems[video_id] = f"missing: no {video_id}.MP4 under {videos_root}"
        probes, errors = probe_many(found[v] for v in sorted(by_video) if v in found)
        problems.update(errors)
        for video_id, p in probes.items():
            facts[video_id] = (
                p.path, p.native_fps, p.duration, p.width, p.height, p.fingerprint
            )  # fmt: skip
    else:
        info = {v.video_id: v for v in read_video_info(video_info)}
        for video_id in sorted(by_video):
            if video_id not in info:
                problems[video_id] = f"missing: not in {Path(video_info).name}"
                continue
            v = info[video_id]
            facts[video_id] = (None, v.fps, v.duration, v.width, v.height, None)

    planned: list[PlannedVideo] = []
    for video_id, (path, native_fps, duration, width, height, fprint) in sorted(facts.items()):
        rate = frame_rate_for(video_id)
        expected = expected_frame_count(duration, rate)
        segments = by_video[video_id]
        last_annotated = max(s.stop_frame for s in segments)
        if last_annotated > expected + CLAMP_TOLERANCE_FRAMES:
            problems[video_id] = (
                f"{path or video_id}: shorter than its annotations: {duration:.2f} s = "
                f"{expected} frames at {rate} fps, but a segment ends at frame {last_annotated}; "
                f"the file is probably truncated, download it again"
            )
            continue
        ranges = keep_ranges_for(
            segments,
            keep=keep,
            margin_frames=margin_frames,
            num_frames=num_frames,
            expected_frames=expected,
        )
        planned.append(
            PlannedVideo(
                video_id=video_id,
                path=path,
                rate=rate,
                native_fps=native_fps,
                duration=duration,
                width=width,
                height=height,
                expected_frames=expected,
                planned_frames=expected if ranges is None else count_in_ranges(ranges),
                max_annotated_frame=last_annotated,
                keep_ranges=ranges,
                fingerprint=fprint,
                source_kind=kinds.get(video_id, SOURCE_VIDEO),
            )
        )

    if problems and not allow_missing:
        lines = "\n".join(f"  {v}: {why}" for v, why in sorted(problems.items()))
        raise BadSourceError(
            f"{len(problems)} of {len(by_video)} videos cannot be planned",
            where=frames_root or videos_root or video_info,
            fix="fix or download them, or pass --allow-missing to plan without them",
            details=lines,
        )
    if not planned:
        raise EpicInputError("no video can be planned: every annotated video has a problem")
    for video_id, why in sorted(problems.items()):
        log.warning("planning without %s (%s)", video_id, why)

    total = sum(v.planned_frames for v in planned)
    if shards is None:
        target = target_shard_frames or DEFAULT_TARGET_SHARD_FRAMES
        shards = math.ceil(total / target)
    num_shards = max(1, min(int(shards), len(planned)))
    manifest = Manifest(
        params=ExtractParams(
            short_side=short_side,
            jpeg_qscale=jpeg_qscale,
            keep=keep,
            margin_frames=margin_frames if keep == "segments" else 0,
            num_frames=tuple(num_frames) if keep == "sampled" else (),
        ),
        shards=tuple(
            ShardPlan(index=i, videos=tuple(videos))
            for i, videos in enumerate(_balance(planned, num_shards))
        ),
        splits=tuple(splits),
        videos_root=None if videos_root is None else str(Path(videos_root).resolve()),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        extra={
            "sizing_only": videos_root is None and frames_root is None,
            "frames_root": None if frames_root is None else str(frames_root),
            "excluded_videos": dict(sorted(problems.items())),
            "estimated_bytes": estimate_bytes(total, short_side),
            "estimated_core_hours": round(estimate_core_hours(planned), 2),
        },
    )
    if published:
        # manifest.json was lost: the same plan, made again, describes the shards exactly.
        mismatches = published_mismatches(store_root, manifest)
        if mismatches:
            raise StoreError(
                f"manifest.json is missing and this plan does not match the {len(published)} "
                f"published shard(s)",
                where=store_root,
                fix="re-run the exact `epic-extract plan` command that made the store (the "
                "header line of its log names it), or plan into a new --store folder",
                details="\n".join(f"  {m}" for m in mismatches[:10]),
            )
        log.warning(
            "manifest.json was missing: recovered it from this plan, which matches the %d "
            "published shards; run `epic-check` to verify them",
            len(published),
        )
    store_root.mkdir(parents=True, exist_ok=True)
    manifest.save(store_root)
    return manifest


def _plan_frames_sources(
    by_video: dict[str, list[Segment]],
    *,
    annotations: AnnotationDir,
    frames_root: Path,
    videos_root: Path | None,
    video_info: str | Path | None,
    facts: dict[str, tuple[str | None, float, float, int, int, str | None]],
    kinds: dict[str, str],
    problems: dict[str, str],
) -> None:
    """Fill ``facts``, ``kinds`` and ``problems`` for a plan from official frames: each
    video from its frames (durations from video_info.csv), or from its MP4 when it has no
    frames or its frames are in the erratum and ``videos_root`` holds it."""
    info_rows = read_video_info(video_info) if video_info else annotations.video_info()
    info = {v.video_id: v for v in info_rows}
    info_name = Path(video_info).name if video_info else "EPIC_100_video_info.csv"
    found_frames = find_frames(frames_root)
    found_videos = find_videos(videos_root) if videos_root is not None else {}
    decode: list[str] = []
    for video_id in sorted(by_video):
        frames = found_frames.get(video_id)
        if video_id in ERRATUM_VIDEO_IDS and frames is not None:
            if video_id in found_videos:
                log.warning(
                    "%s: its official frames are wrong (erratum, epic-kitchens-100-annotations "
                    "README): decoding it from %s instead",
                    video_id,
                    found_videos[video_id],
                )
                frames = None
            else:
                log.warning(
                    "%s: its official frames are wrong (erratum, epic-kitchens-100-annotations "
                    "README): copying them anyway; give its video with --videos to decode it",
                    video_id,
                )
        if frames is None:
            if video_id in found_videos:
                decode.append(video_id)
            else:
                also = f" nor {video_id}.MP4 under {videos_root}" if videos_root else ""
                problems[video_id] = (
                    f"missing: no {video_id}.tar or {video_id}/ under "
                    f"{frames_root}/{video_id[:3]}/rgb_frames{also}"
                )
            continue
        why = frames_problem(frames)
        if why is not None:
            problems[video_id] = why
            continue
        if video_id not in info:
            problems[video_id] = (
                f"missing: not in {info_name} (its frame count is estimated from it)"
            )
            continue
        v = info[video_id]
        fprint = fingerprint(frames) if frames.is_file() else None
        facts[video_id] = (str(frames), v.fps, v.duration, v.width, v.height, fprint)
        kinds[video_id] = SOURCE_FRAMES
    probes, errors = probe_many(found_videos[v] for v in decode)
    problems.update(errors)
    for video_id, p in probes.items():
        facts[video_id] = (p.path, p.native_fps, p.duration, p.width, p.height, p.fingerprint)
        kinds[video_id] = SOURCE_VIDEO


def _inside(inner: Sequence[Range], outer: Sequence[Range]) -> bool:
    """Whether every range of ``inner`` lies within one of the merged ``outer`` ranges."""
    starts = [a for a, _ in outer]
    for a, b in inner:
        i = bisect.bisect_right(starts, a) - 1
        if i < 0 or b > outer[i][1]:
            return False
    return True


def published_mismatches(store_root: Path, manifest: Manifest) -> list[str]:
    """Why the published shards of ``store_root`` were not made by ``manifest`` (empty when
    they were): same shard index, videos and parameters, and every frame the plan asks of
    each video stored. Unreadable shards are left to `epic-check` (they must be redone)."""
    plans = {s.index: s for s in manifest.shards}
    params = json.loads(json.dumps(asdict(manifest.params)))
    problems: list[str] = []
    for path in sorted((store_root / SHARDS_DIR).glob("shard-*.lmdb")):
        index = int(path.stem.split("-")[1])
        plan = plans.get(index)
        if plan is None:
            problems.append(f"{path.name}: this plan has only {len(plans)} shards")
            continue
        try:
            env = open_shard_readonly(path)
        except lmdb.Error as exc:
            log.warning("%s: unreadable (%s): epic-check will report it", path.name, exc)
            continue
        try:
            with env.begin() as txn:
                shard = ShardMeta.from_bytes(txn.get(SHARD_META_KEY) or b"")
                if shard.params != params:
                    problems.append(f"{path.name}: made with {shard.params}, this plan {params}")
                    continue
                planned_ids = sorted(v.video_id for v in plan.videos)
                if sorted(shard.video_ids) != planned_ids:
                    problems.append(
                        f"{path.name}: holds {', '.join(sorted(shard.video_ids))}, this plan "
                        f"puts {', '.join(planned_ids)} there"
                    )
                    continue
                for video in plan.videos:
                    meta = VideoMeta.from_bytes(txn.get(video_meta_key(video.video_id)) or b"")
                    if not _inside(video.expected_ranges(meta.decoded_frames), meta.stored_ranges):
                        problems.append(
                            f"{path.name}: {video.video_id} lacks frames this plan keeps"
                        )
                    elif meta.source_kind != video.source_kind:
                        problems.append(
                            f"{path.name}: {video.video_id} came from {meta.source_kind}, this "
                            f"plan takes it from {video.source_kind}"
                        )
                    elif None not in (meta.fingerprint, video.fingerprint) and (
                        meta.fingerprint != video.fingerprint
                    ):
                        problems.append(
                            f"{path.name}: {video.video_id} was extracted from another file"
                        )
        except (lmdb.Error, ValueError) as exc:
            log.warning("%s: unreadable (%s): epic-check will report it", path.name, exc)
        finally:
            env.close()
    return problems


def plan_summary(manifest: Manifest, store_root: str | Path, *, show_next: bool = True) -> str:
    """Human summary of a plan: counts, estimates, the keep trade-off and (``show_next``)
    the line that submits the extraction array with the site's settings."""
    videos = [v for s in manifest.shards for v in s.videos]
    frames = sum(v.planned_frames for v in videos)
    all_frames = sum(v.expected_frames for v in videos)
    per_shard = [s.planned_frames for s in manifest.shards]
    params = manifest.params
    est_bytes = manifest.extra["estimated_bytes"]
    lines = [
        f"planned {len(videos)} videos into {len(manifest.shards)} shards "
        f"(about {min(per_shard):,}-{max(per_shard):,} frames each) in {store_root}",
        f"frames to store: about {frames:,} of {all_frames:,} "
        f"({frames / max(all_frames, 1):.1%}; estimated from durations x R, the run stores "
        f"what the decoder gives), keep={params.keep}, short side {params.short_side}, "
        f"-q:v {params.jpeg_qscale}",
        f"estimated size: {est_bytes / 1e9:,.1f} GB ({SHARD_BYTES_PER_FRAME_256:,} B/frame "
        f"at 256 px); decoding: {manifest.extra['estimated_core_hours']:,.1f} core-hours",
    ]
    copied = sum(v.source_kind == SOURCE_FRAMES for v in videos)
    if copied:
        lines.append(
            f"sources: {len(videos) - copied} videos decoded from MP4, {copied} copied from "
            f"official frames (no decoding; frame counts checked by `run`)"
        )
    if params.keep == "sampled":
        lines.append(
            f"keep=sampled stores only the frames the deterministic samplers read for clip "
            f"lengths {','.join(map(str, params.num_frames))}: small enough for a node's page "
            f"cache, but training may not use random frame offsets or other clip lengths"
        )
    elif params.keep == "segments":
        lines.append(
            f"keep=segments stores annotated segments +-{params.margin_frames} frames: any "
            f"sampler works on annotated segments; frames outside them are not stored"
        )
    excluded = manifest.extra.get("excluded_videos") or {}
    if excluded:
        lines.append(f"planned WITHOUT {len(excluded)} videos: {', '.join(sorted(excluded))}")
    if manifest.extra.get("sizing_only"):
        lines.append(
            "sizing-only plan (from video_info.csv): re-plan with --videos to extract frames"
        )
    elif show_next:
        last = len(manifest.shards) - 1
        site = site_of_environment()
        line = user_line("extract", site, store=Path(store_root).resolve(), array=f"0-{last}")
        lines.append(f"next: {line}")
        if site is None:
            lines.append(
                "(with your site file: export EPIC_SITE=FILE first, copied from "
                "slurm/sites/ and edited; or add --site FILE after `submit`)"
            )
    return "\n".join(lines)
