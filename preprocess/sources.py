"""Where a planned video's frames come from: one class per kind of source.

A :class:`FrameSource` knows, for one planned video, where its file is, how to yield the
frames to store (frame number, JPEG bytes) in a producer thread of ``epic-extract run``,
what it read (:class:`SourceCounts`), and how to check that against the plan. The run
treats every source alike (extract.py); another kind of source (e.g. EPIC's optical-flow
tars, a u and a v grayscale image per frame) is one more subclass and one entry in
:data:`SOURCES`.
"""

from __future__ import annotations

import bisect
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from epicdata.constants import CLAMP_TOLERANCE_FRAMES
from epicdata.errors import BadSourceError
from epicdata.manifest import (
    SOURCE_FLOW,
    SOURCE_FRAMES,
    SOURCE_VIDEO,
    ExtractParams,
    PlannedVideo,
)
from epicdata.ranges import Range
from epicdata.sampling import count_in_ranges
from preprocess.decode import (
    DecodeStats,
    JpegStreamError,
    VideoDecodeError,
    decode_video,
    jpeg_header,
)
from preprocess.official_frames import (
    FramesSourceError,
    FramesStats,
    iter_flow_frames,
    iter_frames,
)
from preprocess.probe import fingerprint


@dataclass(frozen=True)
class SourceCounts:
    """What a source gave for one video once read to the end: ``decoded`` the length of its
    frame-numbered stream, ``native_frames`` the source pictures decoded (-1 when nothing
    was decoded or ffmpeg did not say), the stored pictures' ``width`` x ``height`` in
    pixels, and wall ``seconds``."""

    decoded: int
    native_frames: int
    width: int
    height: int
    seconds: float


class FrameSource(ABC):
    """One planned video's frames, read from ``path`` (see :meth:`locate`).

    :meth:`frames` runs in a producer thread; the writer thread calls :meth:`counts` and
    :meth:`check` only after it is exhausted."""

    #: ``PlannedVideo.source_kind`` of the videos this class reads (stored in their metadata).
    kind: ClassVar[str]
    #: Whether reading runs ffmpeg (the run checks for ffmpeg only then).
    needs_ffmpeg: ClassVar[bool]
    #: The error for a bad file of this kind: a :class:`BadSourceError` naming the file.
    error: ClassVar[type[BadSourceError]]

    def __init__(
        self, video: PlannedVideo, *, path: Path, params: ExtractParams, threads: int
    ) -> None:
        self.video = video
        self.path = path
        self.params = params
        self.threads = threads

    @classmethod
    def locate(
        cls, video: PlannedVideo, *, planned_root: str | None, videos_root: str | Path | None
    ) -> Path:
        """Where to read ``video`` from: its planned (absolute) path."""
        return Path(video.path)

    @abstractmethod
    def frames(self, cancel: threading.Event) -> Iterator[tuple[int, bytes]]:
        """(frame number, JPEG bytes) of the frames to store; raises :attr:`error` when the
        file is bad. Stops early once ``cancel`` is set."""

    @abstractmethod
    def counts(self) -> SourceCounts:
        """What :meth:`frames` read."""

    @abstractmethod
    def check_counts(self) -> None:
        """Raise :attr:`error` when what was read does not match the plan (the file's fault)."""

    def check(self, stored: list[Range]) -> None:
        """Raise :attr:`error` when the source does not match the plan, RuntimeError (a bug)
        when the ``stored`` frame ranges are not the ones the plan asks for."""
        self.check_counts()
        video = self.video
        expected_stored = video.expected_ranges(self.counts().decoded)
        if stored != expected_stored:
            raise RuntimeError(
                f"{video.video_id}: stored ranges {stored[:4]}... differ from the planned "
                f"{expected_stored[:4]}... ({count_in_ranges(stored)} vs "
                f"{count_in_ranges(expected_stored)} frames)"
            )

    def require_unchanged(self) -> None:
        """Refuse a source file whose content fingerprint differs from the plan's (stores
        planned before fingerprints existed have none: nothing to compare)."""
        video = self.video
        if video.fingerprint is not None and (found := fingerprint(self.path)) != video.fingerprint:
            raise self.error(
                f"{self.path}: changed since `epic-extract plan` (size:hash {found}, planned "
                f"{video.fingerprint})",
                fix="restore the planned file, or plan a new --store for the new one",
            )


class VideoSource(FrameSource):
    """An MP4, re-timed, scaled and JPEG-encoded by ffmpeg (:func:`decode_video`)."""

    kind = SOURCE_VIDEO
    needs_ffmpeg = True
    error = VideoDecodeError

    def __init__(
        self, video: PlannedVideo, *, path: Path, params: ExtractParams, threads: int
    ) -> None:
        super().__init__(video, path=path, params=params, threads=threads)
        self.stats = DecodeStats()

    @classmethod
    def locate(
        cls, video: PlannedVideo, *, planned_root: str | None, videos_root: str | Path | None
    ) -> Path:
        """Its planned path, or the same place under ``videos_root`` when the tree moved.
        Old plans kept paths relative to the directory `plan` ran in: those are found under
        the planned root (absolute) by their EPIC tail."""
        path = Path(video.path or f"{video.video_id}.MP4")
        tail = Path(*path.parts[-3:])  # PXX/videos/PXX_YY.MP4
        if videos_root is not None:
            return Path(videos_root) / tail
        if path.is_absolute() or planned_root is None:
            return path
        return Path(planned_root) / tail

    def frames(self, cancel: threading.Event) -> Iterator[tuple[int, bytes]]:
        if not self.path.is_file():
            raise VideoDecodeError(
                f"{self.path}: no such file",
                fix="moved since `epic-extract plan`? give the videos' new root with --videos",
            )
        self.require_unchanged()
        video = self.video
        yield from decode_video(
            path=self.path,
            rate=video.rate,
            short_side=self.params.short_side,
            jpeg_qscale=self.params.jpeg_qscale,
            width=video.width,
            height=video.height,
            keep_ranges=video.keep_ranges,
            tail_from=video.tail_from,
            threads=self.threads,
            stats=self.stats,
            cancel=cancel,
        )

    def counts(self) -> SourceCounts:
        stats = self.stats
        return SourceCounts(
            decoded=stats.retimed_frames if stats.retimed_frames >= 0 else stats.last_frame,
            native_frames=stats.native_frames,
            width=stats.width,
            height=stats.height,
            seconds=stats.seconds,
        )

    def check_counts(self) -> None:
        video, stats, where = self.video, self.stats, self.video.path
        decoded = self.counts().decoded
        if abs(decoded - video.expected_frames) > CLAMP_TOLERANCE_FRAMES:
            raise VideoDecodeError(
                f"{where}: re-timed to {video.rate} fps it has {decoded} frames, but its "
                f"duration {video.duration:.3f} s x {video.rate} = {video.expected_frames} "
                f"(+-{CLAMP_TOLERANCE_FRAMES}); the file is truncated or its timestamps are "
                f"broken"
            )
        expected_native = video.duration * video.native_fps
        if (
            stats.native_frames >= 0
            and abs(stats.native_frames - expected_native) > CLAMP_TOLERANCE_FRAMES
        ):
            raise VideoDecodeError(
                f"{where}: {stats.native_frames} source pictures decoded, but "
                f"{video.duration:.3f} s at {video.native_fps:.3f} fps is "
                f"{expected_native:.0f}: pictures are missing or damaged, and re-timing would "
                f"silently repeat others; download it again"
            )
        if video.max_annotated_frame > decoded + CLAMP_TOLERANCE_FRAMES:
            raise VideoDecodeError(
                f"{where}: shorter than its annotations: {decoded} frames, a segment ends at "
                f"{video.max_annotated_frame}; download it again"
            )
        if stats.last_frame != decoded:
            raise RuntimeError(
                f"{video.video_id}: last picture numbered {stats.last_frame}, ffmpeg made {decoded}"
            )


class OfficialFramesSource(FrameSource):
    """EPIC's official RGB frames (a ``rgb_frames`` tar, read as a stream, or its unpacked
    folder), copied byte for byte (:func:`iter_frames`: a tar must be whole, without sparse
    members, and an official download's md5 must match)."""

    kind = SOURCE_FRAMES
    needs_ffmpeg = False
    error = FramesSourceError

    def __init__(
        self, video: PlannedVideo, *, path: Path, params: ExtractParams, threads: int
    ) -> None:
        super().__init__(video, path=path, params=params, threads=threads)
        self.stats = FramesStats()

    def frames(self, cancel: threading.Event) -> Iterator[tuple[int, bytes]]:
        if self.path.is_file():
            self.require_unchanged()
        frames = iter_frames(
            self.path,
            wanted=wanted_frames(self.video),
            stats=self.stats,
            cancel=cancel,
            check_md5=self.params.check_md5,
        )
        yield from _same_size_frames(frames, self.path, self.stats)

    def counts(self) -> SourceCounts:
        stats = self.stats
        return SourceCounts(
            decoded=stats.frames,
            native_frames=-1,  # no video was decoded
            width=stats.width,
            height=stats.height,
            seconds=stats.seconds,
        )

    def check_counts(self) -> None:
        """Fewer frames than the annotations reach, or a count far from duration x R
        (another video's frames) is the frames' fault."""
        video, stats, where = self.video, self.stats, self.video.path
        if stats.frames < video.max_annotated_frame:
            raise FramesSourceError(
                f"{where}: {stats.frames} frames, but a segment ends at frame "
                f"{video.max_annotated_frame}: the frames do not reach the annotations",
                fix="download the video's frames again",
            )
        if abs(stats.frames - video.expected_frames) > CLAMP_TOLERANCE_FRAMES:
            raise FramesSourceError(
                f"{where}: {stats.frames} frames, but its duration {video.duration:.3f} s x "
                f"{video.rate} = {video.expected_frames} (+-{CLAMP_TOLERANCE_FRAMES}): these "
                f"are not this video's frames, or they are incomplete",
                fix="download the video's frames again",
            )


class OfficialFlowSource(OfficialFramesSource):
    """EPIC's official optical flow of one video (a ``flow_frames`` tar, or its unpacked
    folder with ``u/`` and ``v/``), copied byte for byte: two grayscale JPEGs per flow
    frame, which the writer stores under the keys ``<id>/<frame>/u`` and ``/v``. Frame
    numbers are flow indices; the planned counts are the video's flow rule's
    (:func:`epicdata.frames.flow_frame_count`)."""

    kind = SOURCE_FLOW

    def frames(self, cancel: threading.Event) -> Iterator[tuple[int, bytes, str]]:  # type: ignore[override]
        if self.path.is_file():
            self.require_unchanged()
        frames = iter_flow_frames(
            self.path,
            wanted=wanted_frames(self.video),
            stats=self.stats,
            cancel=cancel,
            check_md5=self.params.check_md5,
        )
        yield from _same_size_frames(frames, self.path, self.stats, components=1)

    def check_counts(self) -> None:
        """Fewer flow frames than the annotations reach, or a count that contradicts the
        video's flow rule by more than the RGB tolerance, is the tar's fault."""
        video, frames, where = self.video, self.stats.frames, self.video.path
        flow = video.flow
        if frames < video.max_annotated_frame:
            raise FramesSourceError(
                f"{where}: {frames} flow frames, but a segment ends at flow frame "
                f"{video.max_annotated_frame} (stride {flow.stride}): the flow does not reach "
                f"the annotations",
                fix="download the video's flow again",
            )
        if abs(frames - video.expected_frames) > CLAMP_TOLERANCE_FRAMES:
            raise FramesSourceError(
                f"{where}: {frames} flow frames, but its {video.duration:.3f} s at {video.rate} "
                f"fps with stride {flow.stride} and dilation {flow.dilation} give "
                f"ceil((n - dilation) / stride) = {video.expected_frames} "
                f"(+-{CLAMP_TOLERANCE_FRAMES}): not this video's flow, incomplete, or computed "
                f"with other parameters",
                fix="download the video's flow again (or plan with the parameters it was "
                "computed with)",
            )


#: The source class of each ``PlannedVideo.source_kind``.
SOURCES: dict[str, type[FrameSource]] = {
    cls.kind: cls for cls in (VideoSource, OfficialFramesSource, OfficialFlowSource)
}


def source_class(video: PlannedVideo) -> type[FrameSource]:
    """The class that reads ``video`` (the manifest refuses kinds this release does not know)."""
    return SOURCES[video.source_kind]


def wanted_frames(video: PlannedVideo) -> Callable[[int], bool]:
    """Whether frame n of ``video`` is stored: in its keep ranges or from its tail on."""
    if video.keep_ranges is None:
        return lambda n: True
    starts = [a for a, _ in video.keep_ranges]
    ends = [b for _, b in video.keep_ranges]
    tail_from = video.tail_from

    def wanted(n: int) -> bool:
        i = bisect.bisect_right(starts, n) - 1
        return n >= tail_from or (i >= 0 and n <= ends[i])

    return wanted


def _same_size_frames(
    frames: Iterable[tuple], path: Path, stats: FramesStats, components: int = 0
) -> Iterator[tuple]:
    """``frames`` checked to be JPEGs of one picture size, which ends up in ``stats``, and
    of ``components`` colour components when given (1: grayscale flow)."""
    size: tuple[int, int] | None = None
    for item in frames:
        frame, jpeg = item[0], item[1]
        image = f" {item[2]}" if len(item) > 2 else ""
        try:
            width, height, found = jpeg_header(jpeg)
            this = width, height
        except JpegStreamError:
            raise FramesSourceError(
                f"{path} frame {frame}{image}: a JPEG without a frame header",
                fix="download the video's frames again",
            ) from None
        if components and found != components:
            raise FramesSourceError(
                f"{path} frame {frame}{image}: a JPEG of {found} colour components where "
                f"optical flow is {components} (grayscale u and v images): RGB frames in a "
                f"flow tar?",
                fix="give the flow_frames tars to --flow (the rgb_frames ones to --frames)",
            )
        if size is None:
            size = this
        elif this != size:
            raise FramesSourceError(
                f"{path} frame {frame}: {this[0]}x{this[1]} pixels, the frames before it "
                f"{size[0]}x{size[1]}",
                fix="download the video's frames again",
            )
        yield item
    stats.width, stats.height = size or (0, 0)
