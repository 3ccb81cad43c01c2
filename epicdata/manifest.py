"""``<store>/manifest.json``: the extraction parameters and the shard plan (which videos
each shard holds, and which of their frames), written once by ``epic-extract plan`` and
read by the extractor, the checker and the reader."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from epicdata.constants import CLAMP_TOLERANCE_FRAMES
from epicdata.errors import StoreError
from epicdata.frames import FlowParams
from epicdata.layout import (
    MANIFEST_NAME,
    READABLE_FORMAT_VERSIONS,
    SHARDS_DIR,
    STORE_FORMAT_VERSION,
)
from epicdata.ranges import Range, ranges_from_json
from epicdata.sampling import merge_ranges
from epicdata.typed_json import checked_fields, short_json

KEEP_MODES = ("segments", "all", "sampled")
MODALITIES = ("rgb", "flow")
_FLOW_FIELDS = ("flow_stride", "flow_dilation", "flow_bound")


def flow_of(record: Any) -> FlowParams | None:
    """The :class:`FlowParams` of a planned video or a shard's video metadata (None: RGB)."""
    if not record.flow_stride:
        return None
    return FlowParams(record.flow_stride, record.flow_dilation, record.flow_bound)


def flow_fields(params: FlowParams | None) -> dict[str, Any]:
    """The record fields of ``params`` (none for an RGB video)."""
    if params is None:
        return {}
    return {
        "flow_stride": params.stride,
        "flow_dilation": params.dilation,
        "flow_bound": params.bound,
    }


def omit_rgb_defaults(data: dict[str, Any]) -> None:
    """Drop an RGB video's flow fields from its JSON: stores without flow stay readable by
    the releases before flow existed."""
    if not data.get("flow_stride"):
        for name in _FLOW_FIELDS:
            data.pop(name, None)


#: Where a video's frames come from (``source_kind`` of the plan and of the shard metadata):
#: decoded from its MP4, or copied from EPIC's official RGB frames (tar or folder).
SOURCE_VIDEO = "video"
SOURCE_FRAMES = "frames"
#: Copied from EPIC's official optical flow tars (``PXX/flow_frames/PXX_YY.tar``): a flow
#: store, positions numbered in flow-index space (:func:`epicdata.frames.flow_index`).
SOURCE_FLOW = "flow"
SOURCE_KINDS = (SOURCE_VIDEO, SOURCE_FRAMES, SOURCE_FLOW)
#: Frames at the end of every video stored whatever the keep mode (2 x the clamp
#: tolerance): the stored end is the decoder's end.
TAIL_FRAMES = 2 * CLAMP_TOLERANCE_FRAMES


@dataclass(frozen=True)
class ExtractParams:
    """How frames were made. ``jpeg_qscale`` is ffmpeg's ``-q:v`` (2 best .. 31 worst)."""

    short_side: int
    jpeg_qscale: int
    keep: str
    margin_frames: int
    num_frames: tuple[int, ...]
    frame_rate_rule: str = "R=60 for PXX_YY, R=50 for PXX_1YY; frame n at (n-1)/R"
    #: "rgb", or "flow" for a flow store (one modality per store).
    modality: str = "rgb"
    #: Flow pairs per snippet the ``sampled`` keep mode keeps (flow stores only).
    flow_stack: int = 0
    #: False (``plan --not-official``): the frames tars are the user's own (flow computed
    #: with EPIC's tool, a synthetic dataset): their md5 is not compared with the official.
    check_md5: bool = True

    def record(self) -> dict[str, Any]:
        """The parameters as a shard records them (``ShardMeta.params``) and the manifest
        writes them: an RGB store's without the flow fields, as releases before flow wrote
        them, so that its shards and theirs compare equal."""
        data = json.loads(json.dumps(asdict(self)))
        if data["modality"] == "rgb":
            del data["modality"], data["flow_stack"]
        if data["check_md5"]:
            del data["check_md5"]
        return data


@dataclass(frozen=True)
class PlannedVideo:
    """One video in the plan. ``keep_ranges`` None means every decoded frame."""

    video_id: str
    path: str | None
    rate: int
    native_fps: float
    duration: float
    width: int
    height: int
    expected_frames: int
    planned_frames: int
    max_annotated_frame: int
    keep_ranges: tuple[Range, ...] | None
    #: Content fingerprint at plan time (``preprocess.probe.fingerprint``); None in stores
    #: planned before it existed.
    fingerprint: str | None = None
    #: Where the frames come from: :data:`SOURCE_VIDEO` (``path`` is an MP4, decoded) or
    #: :data:`SOURCE_FRAMES` (``path`` is an official ``rgb_frames`` tar or folder, copied
    #: byte for byte). Absent (video) in manifests written before official frames existed.
    source_kind: str = "video"
    #: A flow video's :class:`~epicdata.frames.FlowParams` (0: an RGB video); its frame
    #: numbers (``expected_frames``, ``keep_ranges``, ...) are flow indices.
    flow_stride: int = 0
    flow_dilation: int = 0
    flow_bound: float = 0.0

    @property
    def flow(self) -> FlowParams | None:
        """The flow parameters of a flow video; None for an RGB one."""
        return flow_of(self)

    @property
    def tail_from(self) -> int:
        """First frame of the stream's end, stored whatever the keep mode, so the stored end
        is the decoder's end and readers clamp exactly."""
        return max(1, self.expected_frames - TAIL_FRAMES)

    def expected_ranges(self, decoded_frames: int) -> list[Range]:
        """The frames a shard must hold for this video once the decoder gave
        ``decoded_frames``: the planned ranges (every frame for keep=all) and every frame
        from :attr:`tail_from` on, cut at the decoder's end. The one home of this rule:
        the writer checks it before publishing, ``epic-check`` checks shards against it."""
        wanted = [(1, decoded_frames)] if self.keep_ranges is None else list(self.keep_ranges)
        wanted.append((self.tail_from, decoded_frames))
        return merge_ranges((a, min(b, decoded_frames)) for a, b in wanted if a <= decoded_frames)

    @classmethod
    def from_dict(cls, data: Any, where: str = "planned video") -> PlannedVideo:
        """From the manifest's JSON; a ValueError naming ``where`` and the field when malformed."""
        data = checked_fields(cls, data, where, defaults={"keep_ranges": None})
        if data.get("source_kind", SOURCE_VIDEO) not in SOURCE_KINDS:
            # A kind this release cannot read (a newer release's): never decode it as a video.
            raise ValueError(
                f"{where} field 'source_kind' is {short_json(data['source_kind'])}, not one of "
                f"{SOURCE_KINDS}"
            )
        data["keep_ranges"] = ranges_from_json(data["keep_ranges"], f"{where} keep_ranges")
        return cls(**data)


@dataclass(frozen=True)
class ShardPlan:
    index: int
    videos: tuple[PlannedVideo, ...]

    @property
    def planned_frames(self) -> int:
        return sum(v.planned_frames for v in self.videos)


@dataclass(frozen=True)
class Manifest:
    """``<store>/manifest.json``: parameters and the shard plan, written once by ``plan``."""

    params: ExtractParams
    shards: tuple[ShardPlan, ...]
    splits: tuple[str, ...]
    videos_root: str | None
    format_version: int = STORE_FORMAT_VERSION
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        data = asdict(self)
        for shard in data["shards"]:
            for video in shard["videos"]:
                if video.get("source_kind") == SOURCE_VIDEO:
                    del video["source_kind"]  # the default: older releases read the manifest
                omit_rgb_defaults(video)
        data["params"] = self.params.record()
        return json.dumps(data, indent=1, sort_keys=False)

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """From parsed manifest.json; a ValueError naming the field when it is malformed."""
        data = checked_fields(
            cls, data, "the manifest", defaults={"splits": [], "videos_root": None}
        )
        params = checked_fields(
            ExtractParams, data["params"], "params", defaults={"num_frames": []}
        )
        if params["keep"] not in KEEP_MODES:
            raise ValueError(
                f"params field 'keep' is {short_json(params['keep'])}, not one of {KEEP_MODES}"
            )
        params["num_frames"] = tuple(params["num_frames"])
        if params.get("modality", "rgb") not in MODALITIES:
            raise ValueError(
                f"params field 'modality' is {short_json(params['modality'])}, not one of "
                f"{MODALITIES}"
            )
        shards = []
        for i, shard in enumerate(data["shards"]):
            shard = checked_fields(ShardPlan, shard, f"shards[{i}]")
            videos = tuple(
                PlannedVideo.from_dict(v, f"shards[{i}].videos[{j}]")
                for j, v in enumerate(shard["videos"])
            )
            shards.append(ShardPlan(index=shard["index"], videos=videos))
        return cls(
            params=ExtractParams(**params),
            shards=tuple(shards),
            splits=tuple(data["splits"]),
            videos_root=data["videos_root"],
            format_version=data["format_version"],
            created=data.get("created", ""),
            extra=data.get("extra", {}),
        )

    @classmethod
    def load(cls, store_root: str | Path) -> Manifest:
        path = Path(store_root) / MANIFEST_NAME
        if not path.is_file():
            shards = Path(store_root) / SHARDS_DIR
            lost = shards.is_dir() and any(shards.glob("shard-*.lmdb"))
            raise StoreError(
                "manifest.json not found",
                where=path,
                fix=(
                    "it was lost: re-run the same `epic-extract plan` command that made the "
                    "store (its log's header line has it); it checks the published shards "
                    "and keeps them"
                    if lost
                    else f"{store_root} is not a frame store; create it with "
                    f"`epic-extract plan --store {store_root} ...`"
                ),
            )
        fix = (
            "restore it from a copy, or delete it and re-plan the store with the same "
            "`epic-extract plan` command (its log's header line has it), which keeps the "
            "published shards that match the plan"
        )
        try:
            data = json.loads(path.read_bytes())
        except OSError as exc:
            raise StoreError("cannot read the manifest", where=f"{path}: {exc}", fix=fix) from None
        except ValueError as exc:
            # JSONDecodeError and UnicodeDecodeError (bytes that are not UTF-8).
            raise StoreError("manifest is not JSON", where=f"{path}: {exc}", fix=fix) from None
        version = data.get("format_version") if isinstance(data, dict) else None
        if isinstance(data, dict) and version not in READABLE_FORMAT_VERSIONS:
            raise StoreError(
                f"{path}: store format version {version}, this code reads versions "
                f"{', '.join(map(str, READABLE_FORMAT_VERSIONS))}; a newer release wrote it "
                f"(upgrade this one), or re-plan and re-extract the store with this version"
            )
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise StoreError("malformed manifest", where=f"{path}: {exc}", fix=fix) from None

    def save(self, store_root: str | Path) -> Path:
        """Write atomically (temp file + rename)."""
        path = Path(store_root) / MANIFEST_NAME
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(self.to_json())
        os.replace(tmp, path)
        return path

    def video_to_shard(self) -> dict[str, int]:
        return {v.video_id: s.index for s in self.shards for v in s.videos}

    def planned_video(self, video_id: str) -> PlannedVideo:
        for shard in self.shards:
            for video in shard.videos:
                if video.video_id == video_id:
                    return video
        raise StoreError(f"video {video_id} is not in the store's plan")
