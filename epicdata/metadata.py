"""What a shard says about itself, as JSON under its reserved keys
(:mod:`epicdata.layout`): :class:`ShardMeta` for the shard, :class:`VideoMeta` for each
video in it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from epicdata.errors import MalformedMetadataError
from epicdata.frames import FlowParams
from epicdata.layout import FLOW_IMAGES, RGB_IMAGES
from epicdata.manifest import SOURCE_VIDEO, flow_of, omit_rgb_defaults
from epicdata.ranges import Range, ranges_from_json
from epicdata.typed_json import checked_fields


@dataclass(frozen=True)
class VideoMeta:
    """What a shard holds of one video. ``stored_ranges`` are inclusive frame ranges;
    ``decoded_frames`` is the length of the stream re-timed to ``rate`` (the last frame number
    the decoder made), ``native_frames`` the source pictures it was made from, ``width`` and
    ``height`` the stored pictures' size in pixels, ``source`` the video file."""

    video_id: str
    rate: int
    native_fps: float
    duration: float
    decoded_frames: int
    stored_frames: int
    stored_ranges: tuple[Range, ...]
    width: int
    height: int
    short_side: int
    jpeg_qscale: int
    source: str
    native_frames: int = -1
    #: ``preprocess.probe.fingerprint`` of the file extracted; None before it existed.
    fingerprint: str | None = None
    #: :data:`~epicdata.manifest.SOURCE_VIDEO` or :data:`~epicdata.manifest.SOURCE_FRAMES`
    #: (see :class:`~epicdata.manifest.PlannedVideo`); absent (video) in shards written
    #: before official frames existed.
    source_kind: str = "video"
    #: A flow video's :class:`~epicdata.frames.FlowParams` (0: RGB); its ``decoded_frames``
    #: is then its flow frame count and ``stored_ranges`` are flow indices.
    flow_stride: int = 0
    flow_dilation: int = 0
    flow_bound: float = 0.0

    @property
    def flow(self) -> FlowParams | None:
        """The flow parameters of a flow video; None for an RGB one."""
        return flow_of(self)

    @property
    def images(self) -> tuple[str, ...]:
        """The images of each stored position: u and v for flow, the one JPEG for RGB."""
        return RGB_IMAGES if not self.flow_stride else FLOW_IMAGES

    def to_bytes(self) -> bytes:
        data = asdict(self)
        if data["source_kind"] == SOURCE_VIDEO:
            # Left out when it is the default: a store extracted from videos stays readable
            # by the releases before official frames existed.
            del data["source_kind"]
        omit_rgb_defaults(data)
        return json.dumps(data, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, blob: bytes) -> VideoMeta:
        """Parse ``__meta__/video/<id>``; :class:`MalformedMetadataError` (exit 5: the shard
        is damaged) when it is not JSON or has wrong fields, types or ranges."""
        try:
            data = checked_fields(cls, json.loads(bytes(blob)), "video metadata")
            data["stored_ranges"] = ranges_from_json(data["stored_ranges"], "stored_ranges")
        except ValueError as exc:
            raise MalformedMetadataError("malformed video metadata", str(exc)) from None
        return cls(**data)

    @property
    def last_stored_frame(self) -> int:
        return self.stored_ranges[-1][1] if self.stored_ranges else 0


@dataclass(frozen=True)
class ShardMeta:
    format_version: int
    shard_index: int
    video_ids: tuple[str, ...]
    params: dict[str, Any]
    total_frames: int

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, blob: bytes) -> ShardMeta:
        """Parse ``__meta__/shard``; :class:`MalformedMetadataError` (exit 5: the shard is
        damaged) when it is not JSON or has wrong fields or types."""
        try:
            data = checked_fields(cls, json.loads(bytes(blob)), "shard metadata")
        except ValueError as exc:
            raise MalformedMetadataError("malformed shard metadata", str(exc)) from None
        data["video_ids"] = tuple(data["video_ids"])
        return cls(**data)
