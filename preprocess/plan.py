"""`epic-extract plan`: decide which frames of which videos go into which shard.

The plan is made once, before any decoding: it probes every video (or reads durations from
``EPIC_100_video_info.csv``), computes the frame ranges to keep per video, balances videos
into shards by frames to store and writes ``<store>/manifest.json``. Every problem with the
inputs is reported together, before anything is written.
"""

from __future__ import annotations

import bisect
import contextlib
import heapq
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from epicdata.annotations import AnnotationDir, Segment, VideoInfo, read_video_info
from epicdata.console import site_of_environment, user_line
from epicdata.constants import (
    CLAMP_TOLERANCE_FRAMES,
    DEFAULT_JPEG_QSCALE,
    DEFAULT_SHORT_SIDE,
)
from epicdata.errors import BadSourceError, EpicInputError, StoreError
from epicdata.frames import (
    FlowParams,
    expected_frame_count,
    flow_frame_count,
    flow_index,
    flow_params_for,
    frame_rate_for,
)
from epicdata.layout import MANIFEST_NAME, SHARD_META_KEY, SHARDS_DIR, video_meta_key
from epicdata.lmdb_env import ShardReadError, read_in_child
from epicdata.lmdb_pages import ShardPages
from epicdata.manifest import (
    KEEP_MODES,
    SOURCE_FLOW,
    SOURCE_FRAMES,
    SOURCE_VIDEO,
    TAIL_FRAMES,
    ExtractParams,
    Manifest,
    PlannedVideo,
    ShardPlan,
    flow_fields,
)
from epicdata.metadata import ShardMeta, VideoMeta
from epicdata.ranges import Range
from epicdata.sampling import (
    count_in_ranges,
    flow_segment_range,
    merge_ranges,
    sampled_flow_frames_to_keep,
    sampled_frames_to_keep,
)
from preprocess.official_frames import ERRATUM_VIDEO_IDS, FLOW_DIR, find_frames, frames_problem
from preprocess.probe import VideoProbe, find_videos, fingerprint, probe_many

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


@dataclass(frozen=True)
class VideoFacts:
    """What planning knows of one video before choosing its frames: the file or frames it is
    read from (None in a sizing-only plan), native frame rate (fps), duration (s), picture
    size (px), the file's content fingerprint (None when not taken: a folder, a sizing-only
    plan) and the kind of source (``PlannedVideo.source_kind``)."""

    path: str | None
    native_fps: float
    duration: float
    width: int
    height: int
    fingerprint: str | None = None
    source_kind: str = SOURCE_VIDEO

    @classmethod
    def from_probe(cls, probe: VideoProbe) -> VideoFacts:
        """An MP4's facts, as ffprobe read them."""
        return cls(
            path=probe.path,
            native_fps=probe.native_fps,
            duration=probe.duration,
            width=probe.width,
            height=probe.height,
            fingerprint=probe.fingerprint,
        )

    @classmethod
    def from_info(
        cls,
        info: VideoInfo,
        *,
        path: str | None = None,
        fingerprint: str | None = None,
        source_kind: str = SOURCE_VIDEO,
    ) -> VideoFacts:
        """Facts from the video's ``EPIC_100_video_info.csv`` row."""
        return cls(
            path=path,
            native_fps=info.fps,
            duration=info.duration,
            width=info.width,
            height=info.height,
            fingerprint=fingerprint,
            source_kind=source_kind,
        )


def plan_store(
    *,
    store_root: str | Path,
    annotations_dir: str | Path,
    videos_root: str | Path | None = None,
    video_info: str | Path | None = None,
    frames_root: str | Path | None = None,
    flow_root: str | Path | None = None,
    flow_stack: int = 5,
    official: bool = True,
    splits: Sequence[str] = ("train", "validation", "test"),
    shards: int | None = None,
    target_shard_frames: int | None = None,
    short_side: int = DEFAULT_SHORT_SIDE,
    jpeg_qscale: int = DEFAULT_JPEG_QSCALE,
    keep: str = "segments",
    num_frames: Sequence[int] = (8,),
    margin_frames: int = DEFAULT_MARGIN_FRAMES,
    allow_missing: bool = False,
    write: bool = True,
) -> Manifest:
    """Plan a store and write ``<store_root>/manifest.json``; returns the manifest.

    The videos of ``splits``' annotations, from ``videos_root`` (MP4s), ``frames_root``
    (EPIC's RGB frames, copied; with MP4s too, the missing and erratum ones decoded),
    ``flow_root`` (EPIC's flow: a flow store, in flow-index space; ``flow_stack`` for
    ``keep="sampled"``) or only ``video_info`` (sizing only); copied counts are estimated
    from ``video_info`` (default: the annotations') and checked, with the md5 unless not
    ``official``, by ``run``. ``keep``: ``segments`` (+- ``margin_frames``), ``all`` or
    ``sampled`` (what the samplers of ``num_frames`` read). ``shards``, or enough of
    ``target_shard_frames`` each. Unplannable videos: one :class:`EpicInputError` unless
    ``allow_missing``. ``write`` False: write nothing (``pipeline --dry-run``)."""
    frames_root = frames_root if flow_root is None else flow_root
    params = _checked_params(
        videos_root=videos_root,
        video_info=video_info,
        frames_root=frames_root,
        flow=flow_root is not None,
        flow_stack=flow_stack,
        official=official,
        short_side=short_side,
        jpeg_qscale=jpeg_qscale,
        keep=keep,
        num_frames=num_frames,
        margin_frames=margin_frames,
    )
    published = _published_shards(store_root := Path(store_root))
    annotations = AnnotationDir(annotations_dir)
    by_video = _segments_by_video(annotations, splits, annotations_dir)
    frames_root, videos_root = _absolute(frames_root), _absolute(videos_root)
    facts, problems = build_video_facts(
        sorted(by_video),
        annotations=annotations,
        frames_root=frames_root,
        videos_root=videos_root,
        video_info=video_info,
        flow=flow_root is not None,
    )
    planned, problems = _plan_videos(facts, by_video, params, problems)
    _refuse_problems(
        problems,
        planned,
        annotated=len(by_video),
        allow_missing=allow_missing,
        where=frames_root or videos_root or video_info,
    )
    manifest = build_manifest(
        planned,
        problems=problems,
        splits=splits,
        shards=shards,
        target_shard_frames=target_shard_frames,
        params=params,
        videos_root=videos_root,
        frames_root=frames_root,
    )
    if write:
        _save_manifest(store_root, manifest, published=len(published))
    return manifest


def _checked_params(
    *,
    videos_root: str | Path | None,
    video_info: str | Path | None,
    frames_root: str | Path | None,
    short_side: int,
    jpeg_qscale: int,
    keep: str,
    num_frames: Sequence[int],
    margin_frames: int,
    flow: bool = False,
    flow_stack: int = 5,
    official: bool = True,
) -> ExtractParams:
    """The extraction parameters of the options; an :class:`EpicInputError` for options
    that contradict each other or are out of range (see :func:`plan_store`)."""
    if flow and videos_root is not None:
        raise EpicInputError(
            "--flow with --videos: a flow store holds optical flow only",
            where=frames_root,
            fix="plan the RGB store and the flow store into two --store folders (one "
            "modality per store; docs/store.md)",
        )
    if flow_stack < 1:
        raise EpicInputError(f"--flow-stack {flow_stack}: must be >= 1")
    if frames_root is None and (videos_root is None) == (video_info is None):
        raise EpicInputError(
            "give either --videos (probe the files), --frames (official frames) or "
            "--video-info CSV (sizing only)"
        )
    if frames_root is not None and (
        short_side != DEFAULT_SHORT_SIDE or jpeg_qscale != DEFAULT_JPEG_QSCALE
    ):
        raise EpicInputError(
            f"--short-side {short_side} / --quality {jpeg_qscale} with "
            f"{'--flow' if flow else '--frames'}",
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
    return ExtractParams(
        short_side=short_side,
        jpeg_qscale=jpeg_qscale,
        keep=keep,
        margin_frames=margin_frames if keep == "segments" else 0,
        num_frames=tuple(num_frames) if keep == "sampled" else (),
        modality="flow" if flow else "rgb",
        flow_stack=flow_stack if flow else 0,
        check_md5=official,
    )


def _absolute(path: str | Path | None) -> Path | None:
    """``path`` made absolute, so that `run` works from any directory (and --videos
    re-roots a moved tree)."""
    return None if path is None else Path(path).resolve()


def _published_shards(store_root: Path) -> list[Path]:
    """The shards published in ``store_root``; a StoreError when the store also has its
    manifest (planning again would orphan them). Shards without a manifest are a store
    whose manifest.json was lost: the plan may recover it."""
    published = sorted((store_root / SHARDS_DIR).glob("shard-*.lmdb"))
    if published and (store_root / MANIFEST_NAME).exists():
        raise StoreError(
            f"the store is planned and holds {len(published)} published shard(s)",
            where=store_root,
            fix="plan into a new --store folder (or delete this store)",
        )
    return published


def _segments_by_video(
    annotations: AnnotationDir, splits: Sequence[str], annotations_dir: str | Path
) -> dict[str, list[Segment]]:
    """The annotated segments of ``splits``, by video id; an error when there are none."""
    by_video: dict[str, list[Segment]] = defaultdict(list)
    for split in splits:
        for segment in annotations.segments(split):
            by_video[segment.video_id].append(segment)
    if not by_video:
        raise EpicInputError(f"no segments in splits {', '.join(splits)} of {annotations_dir}")
    return by_video


def build_video_facts(
    video_ids: Sequence[str],
    *,
    annotations: AnnotationDir,
    frames_root: Path | None,
    videos_root: Path | None,
    video_info: str | Path | None,
    flow: bool = False,
) -> tuple[dict[str, VideoFacts], dict[str, str]]:
    """Facts of each of ``video_ids`` from the sources given (official frames, else probed
    videos, else the video_info CSV): (facts by video id, why the others cannot be planned).
    ``flow``: ``frames_root`` holds the official flow tars."""
    if flow:
        return _facts_from_flow(
            video_ids, annotations=annotations, flow_root=frames_root, video_info=video_info
        )
    if frames_root is not None:
        return _facts_from_frames(
            video_ids,
            annotations=annotations,
            frames_root=frames_root,
            videos_root=videos_root,
            video_info=video_info,
        )
    if videos_root is not None:
        return _facts_from_videos(video_ids, videos_root)
    return _facts_from_video_info(video_ids, video_info)


def _facts_from_videos(
    video_ids: Sequence[str], videos_root: Path
) -> tuple[dict[str, VideoFacts], dict[str, str]]:
    """Each video probed from its MP4 under ``videos_root``."""
    found = find_videos(videos_root)
    problems = {
        video_id: f"missing: no {video_id}.MP4 under {videos_root}"
        for video_id in video_ids
        if video_id not in found
    }
    facts, errors = _probe_facts(found[v] for v in video_ids if v in found)
    return facts, problems | errors


def _facts_from_video_info(
    video_ids: Sequence[str], video_info: str | Path
) -> tuple[dict[str, VideoFacts], dict[str, str]]:
    """Each video's row of the video_info CSV (a sizing-only plan: no file to read)."""
    info = {v.video_id: v for v in read_video_info(video_info)}
    problems = {
        video_id: f"missing: not in {Path(video_info).name}"
        for video_id in video_ids
        if video_id not in info
    }
    facts = {
        video_id: VideoFacts.from_info(info[video_id]) for video_id in video_ids if video_id in info
    }
    return facts, problems


def _probe_facts(paths: Iterable[Path]) -> tuple[dict[str, VideoFacts], dict[str, str]]:
    """ffprobe ``paths`` (in parallel): (facts by video id, why the unreadable ones are)."""
    probes, errors = probe_many(paths)
    return {video_id: VideoFacts.from_probe(p) for video_id, p in probes.items()}, errors


def _facts_from_frames(
    video_ids: Sequence[str],
    *,
    annotations: AnnotationDir,
    frames_root: Path,
    videos_root: Path | None,
    video_info: str | Path | None,
) -> tuple[dict[str, VideoFacts], dict[str, str]]:
    """Facts for a plan from official frames: each video from its frames (durations from
    video_info.csv), or from its MP4 when it has no frames or its frames are in the erratum
    and ``videos_root`` holds it."""
    info_rows = read_video_info(video_info) if video_info else annotations.video_info()
    info = {v.video_id: v for v in info_rows}
    info_name = Path(video_info).name if video_info else "EPIC_100_video_info.csv"
    found_frames = find_frames(frames_root)
    found_videos = find_videos(videos_root) if videos_root is not None else {}
    facts: dict[str, VideoFacts] = {}
    problems: dict[str, str] = {}
    decode: list[str] = []
    for video_id in video_ids:
        frames = _usable_frames(video_id, found_frames.get(video_id), found_videos)
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
        fact = _copied_fact(frames, info.get(video_id), info_name, SOURCE_FRAMES)
        if isinstance(fact, str):
            problems[video_id] = fact
        else:
            facts[video_id] = fact
    decoded, errors = _probe_facts(found_videos[v] for v in decode)
    return facts | decoded, problems | errors


def _facts_from_flow(
    video_ids: Sequence[str],
    *,
    annotations: AnnotationDir,
    flow_root: Path,
    video_info: str | Path | None,
) -> tuple[dict[str, VideoFacts], dict[str, str]]:
    """Facts for a flow store: each video's flow tar (or unpacked folder) under
    ``flow_root``, its duration from video_info.csv. The erratum videos' flow cannot be
    made from their MP4 here: their tar is copied, and ``run`` refuses the original
    (pre-erratum) one by its md5."""
    info_rows = read_video_info(video_info) if video_info else annotations.video_info()
    info = {v.video_id: v for v in info_rows}
    info_name = Path(video_info).name if video_info else "EPIC_100_video_info.csv"
    found = find_frames(flow_root, FLOW_DIR)
    facts: dict[str, VideoFacts] = {}
    problems: dict[str, str] = {}
    for video_id in video_ids:
        flow = found.get(video_id)
        if flow is None:
            problems[video_id] = (
                f"missing: no {video_id}.tar or {video_id}/ under "
                f"{flow_root}/{video_id[:3]}/{FLOW_DIR}"
            )
            continue
        fact = _copied_fact(flow, info.get(video_id), info_name, SOURCE_FLOW)
        if isinstance(fact, str):
            problems[video_id] = fact
            continue
        facts[video_id] = fact
        if video_id in ERRATUM_VIDEO_IDS and flow.is_dir():
            log.warning(
                "%s: its original flow is wrong (erratum, epic-kitchens-100-annotations "
                "README) and an unpacked folder has no md5 to tell the replacement from it: "
                "make sure %s is the replacement (epic_downloader.py --errata --flow-frames)",
                video_id,
                flow,
            )
    return facts, problems


def _copied_fact(path: Path, info: VideoInfo | None, info_name: str, kind: str) -> VideoFacts | str:
    """The facts of a video whose official frames (or flow, ``kind``) at ``path`` are
    copied, its duration from its ``info`` row; or why it cannot be planned."""
    why = frames_problem(path)
    if why is None and info is None:
        why = f"missing: not in {info_name} (its frame count is estimated from it)"
    if why is not None:
        return why
    return VideoFacts.from_info(
        info,
        path=str(path),
        fingerprint=fingerprint(path) if path.is_file() else None,
        source_kind=kind,
    )


def _usable_frames(
    video_id: str, frames: Path | None, found_videos: dict[str, Path]
) -> Path | None:
    """``frames``, or None when the video is to be decoded instead: its official frames are
    wrong (erratum) and its MP4 was found. Copied anyway, with a warning, without the MP4."""
    if video_id not in ERRATUM_VIDEO_IDS or frames is None:
        return frames
    if video_id in found_videos:
        log.warning(
            "%s: its official frames are wrong (erratum, epic-kitchens-100-annotations "
            "README): decoding it from %s instead",
            video_id,
            found_videos[video_id],
        )
        return None
    log.warning(
        "%s: its original official frames are wrong (erratum, epic-kitchens-100-annotations "
        "README): `run` copies its tar only if its md5 is the replacement's (a folder is "
        "copied unchecked); give its video with --videos to decode it instead",
        video_id,
    )
    return frames


def _plan_videos(
    facts: dict[str, VideoFacts],
    by_video: dict[str, list[Segment]],
    params: ExtractParams,
    problems: dict[str, str],
) -> tuple[list[PlannedVideo], dict[str, str]]:
    """Plan each video of ``facts`` (rate, expected frames, frames to keep per ``params``),
    by video id. Returns (planned videos, ``problems`` and the videos shorter than their
    annotations)."""
    planned: list[PlannedVideo] = []
    problems = dict(problems)
    for video_id, fact in sorted(facts.items()):
        rate = frame_rate_for(video_id)
        expected = expected_frame_count(fact.duration, rate)
        segments = by_video[video_id]
        last_annotated = max(s.stop_frame for s in segments)
        if last_annotated > expected + CLAMP_TOLERANCE_FRAMES:
            problems[video_id] = (
                f"{fact.path or video_id}: shorter than its annotations: {fact.duration:.2f} s "
                f"= {expected} frames at {rate} fps, but a segment ends at frame "
                f"{last_annotated}; the file is probably truncated, download it again"
            )
            continue
        if fact.source_kind == SOURCE_FLOW:
            planned.append(_flow_video(video_id, fact, segments, params, rgb_frames=expected))
            continue
        ranges = keep_ranges_for(
            segments,
            keep=params.keep,
            margin_frames=params.margin_frames,
            num_frames=params.num_frames,
            expected_frames=expected,
        )
        planned.append(
            PlannedVideo(
                video_id=video_id,
                path=fact.path,
                rate=rate,
                native_fps=fact.native_fps,
                duration=fact.duration,
                width=fact.width,
                height=fact.height,
                expected_frames=expected,
                planned_frames=expected if ranges is None else count_in_ranges(ranges),
                max_annotated_frame=last_annotated,
                keep_ranges=ranges,
                fingerprint=fact.fingerprint,
                source_kind=fact.source_kind,
            )
        )
    return planned, problems


def _flow_video(
    video_id: str,
    fact: VideoFacts,
    segments: Sequence[Segment],
    params: ExtractParams,
    *,
    rgb_frames: int,
) -> PlannedVideo:
    """The plan of one video of a flow store: its counts and keep ranges in flow-index
    space, by its group's flow rule (:func:`~epicdata.frames.flow_params_for`)."""
    flow = flow_params_for(video_id)
    expected = flow_frame_count(rgb_frames, flow.stride, flow.dilation)
    ranges = flow_keep_ranges(segments, params=params, flow=flow, expected_frames=expected)
    last_annotated = flow_index(max(s.stop_frame for s in segments), flow.stride)
    return PlannedVideo(
        video_id=video_id,
        path=fact.path,
        rate=frame_rate_for(video_id),
        native_fps=fact.native_fps,
        duration=fact.duration,
        width=fact.width,
        height=fact.height,
        expected_frames=expected,
        planned_frames=expected if ranges is None else count_in_ranges(ranges),
        # The last RGB frames have no flow (it is computed between frames): a segment that
        # ends there is read clamped to the last flow frame, which must exist.
        max_annotated_frame=max(1, min(last_annotated, expected - CLAMP_TOLERANCE_FRAMES)),
        keep_ranges=ranges,
        fingerprint=fact.fingerprint,
        source_kind=SOURCE_FLOW,
        **flow_fields(flow),
    )


def flow_keep_ranges(
    segments: Sequence[Segment], *, params: ExtractParams, flow: FlowParams, expected_frames: int
) -> tuple[Range, ...] | None:
    """Inclusive flow-frame ranges to store for one video of a flow store (None: all): each
    segment's flow range (:func:`~epicdata.sampling.flow_segment_range`; its RGB margin
    first), or the flow frames the deterministic flow samplers read
    (:func:`~epicdata.sampling.sampled_flow_frames_to_keep`), and the video's tail."""
    if params.keep == "all":
        return None
    ranges: list[Range] = []
    for s in segments:
        if params.keep == "segments":
            start, stop = s.start_frame - params.margin_frames, s.stop_frame + params.margin_frames
            ranges.append(flow_segment_range(max(1, start), stop, flow.stride, expected_frames))
        else:
            frames = sampled_flow_frames_to_keep(
                s.start_frame,
                s.stop_frame,
                params.num_frames,
                params.flow_stack,
                flow.stride,
                expected_frames,
            )
            ranges.extend((int(f), int(f)) for f in frames)
    ranges.append((expected_frames - TAIL_FRAMES, expected_frames))  # PlannedVideo.tail_from
    clipped = [(max(1, a), min(b, expected_frames)) for a, b in ranges]
    return tuple(merge_ranges((a, b) for a, b in clipped if a <= b))


def _refuse_problems(
    problems: dict[str, str],
    planned: Sequence[PlannedVideo],
    *,
    annotated: int,
    allow_missing: bool,
    where: str | Path | None,
) -> None:
    """Report every video that cannot be planned in one error (or, with ``allow_missing``,
    as warnings); an error too when no video is left to plan."""
    if problems and not allow_missing:
        lines = "\n".join(f"  {v}: {why}" for v, why in sorted(problems.items()))
        raise BadSourceError(
            f"{len(problems)} of {annotated} videos cannot be planned",
            where=where,
            fix="fix or download them, or pass --allow-missing to plan without them",
            details=lines,
        )
    if not planned:
        raise EpicInputError("no video can be planned: every annotated video has a problem")
    for video_id, why in sorted(problems.items()):
        log.warning("planning without %s (%s)", video_id, why)


def build_manifest(
    planned: Sequence[PlannedVideo],
    *,
    problems: dict[str, str],
    splits: Sequence[str],
    shards: int | None,
    target_shard_frames: int | None,
    params: ExtractParams,
    videos_root: Path | None,
    frames_root: Path | None,
) -> Manifest:
    """The manifest of ``planned`` balanced into ``shards`` shards (or enough of
    ``target_shard_frames`` frames each), with the size estimates and the videos left out
    (``problems``)."""
    total = sum(v.planned_frames for v in planned)
    if shards is None:
        target = target_shard_frames or DEFAULT_TARGET_SHARD_FRAMES
        shards = math.ceil(total / target)
    num_shards = max(1, min(int(shards), len(planned)))
    return Manifest(
        params=params,
        shards=tuple(
            ShardPlan(index=i, videos=tuple(videos))
            for i, videos in enumerate(_balance(planned, num_shards))
        ),
        splits=tuple(splits),
        videos_root=None if videos_root is None else str(videos_root),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        extra={
            "sizing_only": videos_root is None and frames_root is None,
            "frames_root": None if frames_root is None else str(frames_root),
            "excluded_videos": dict(sorted(problems.items())),
            "estimated_bytes": estimate_bytes(total, params.short_side),
            "estimated_core_hours": round(estimate_core_hours(planned), 2),
        },
    )


def _save_manifest(store_root: Path, manifest: Manifest, *, published: int) -> None:
    """Write ``<store_root>/manifest.json``. With ``published`` shards there already, it was
    lost: the same plan, made again, describes them exactly; a StoreError when this plan
    does not."""
    if published:
        mismatches = published_mismatches(store_root, manifest)
        if mismatches:
            raise StoreError(
                f"manifest.json is missing and this plan does not match the {published} "
                f"published shard(s)",
                where=store_root,
                fix="re-run the exact `epic-extract plan` command that made the store (the "
                "header line of its log names it), or plan into a new --store folder",
                details="\n".join(f"  {m}" for m in mismatches[:10]),
            )
        log.warning(
            "manifest.json was missing: recovered it from this plan, which matches the %d "
            "published shards; run `epic-check` to verify them",
            published,
        )
    store_root.mkdir(parents=True, exist_ok=True)
    manifest.save(store_root)


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
    each video stored. Unreadable shards are left to `epic-check` (they must be redone).
    Read as every reader reads them (``pread``, no memory map a damaged page could turn
    into SIGBUS)."""
    plans = {s.index: s for s in manifest.shards}
    params = manifest.params.record()
    problems: list[str] = []
    for path in sorted((store_root / SHARDS_DIR).glob("shard-*.lmdb")):
        index = int(path.stem.split("-")[1])
        plan = plans.get(index)
        if plan is None:
            problems.append(f"{path.name}: this plan has only {len(plans)} shards")
            continue
        try:
            with _shard_reader(path) as get:
                problems.extend(_shard_mismatches(path.name, get, plan, params))
        except (OSError, ValueError, ShardReadError) as exc:  # PageFormatError included
            log.warning("%s: unreadable (%s): epic-check will report it", path.name, exc)
    return problems


@contextlib.contextmanager
def _shard_reader(path: Path) -> Iterator[Callable[[bytes], bytes | None]]:
    """``get(key)`` on the published shard at ``path``: the page reader, or py-lmdb in a
    child process for a file the page reader does not parse."""
    pages = ShardPages.open_or_reason(path)
    if isinstance(pages, str):
        yield lambda key: read_in_child(path, [key])[key]
        return
    try:
        yield pages.get
    finally:
        pages.close()


def _shard_mismatches(
    name: str, get: Callable[[bytes], bytes | None], plan: ShardPlan, params: dict
) -> list[str]:
    """Why the shard ``name`` (read with ``get``) was not made by ``plan``: the first
    difference found (its parameters, its videos, or one video's frames or source)."""
    shard = ShardMeta.from_bytes(get(SHARD_META_KEY) or b"")
    if shard.params != params:
        return [f"{name}: made with {shard.params}, this plan {params}"]
    planned_ids = sorted(v.video_id for v in plan.videos)
    if sorted(shard.video_ids) != planned_ids:
        return [
            f"{name}: holds {', '.join(sorted(shard.video_ids))}, this plan "
            f"puts {', '.join(planned_ids)} there"
        ]
    problems = []
    for video in plan.videos:
        meta = VideoMeta.from_bytes(get(video_meta_key(video.video_id)) or b"")
        if not _inside(video.expected_ranges(meta.decoded_frames), meta.stored_ranges):
            problems.append(f"{name}: {video.video_id} lacks frames this plan keeps")
        elif meta.source_kind != video.source_kind:
            problems.append(
                f"{name}: {video.video_id} came from {meta.source_kind}, this "
                f"plan takes it from {video.source_kind}"
            )
        elif None not in (meta.fingerprint, video.fingerprint) and (
            meta.fingerprint != video.fingerprint
        ):
            problems.append(f"{name}: {video.video_id} was extracted from another file")
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
    if params.modality == "flow":
        lines.append(
            f"a flow store: {len(videos)} videos' official optical flow copied (u and v "
            f"per position; positions are flow frames: stride 2 for PXX_YY, 1 for PXX_1YY)"
        )
    elif copied:
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
