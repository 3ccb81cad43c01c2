"""Multi-view testing (issue 24): ``epic-validate --views CxK`` and ``--test-frames N``.

The view rules are checked against exact rational oracles, the crops against SlowFast's
``uniform_crop`` formula written out here, and the averaged scores against six single views
computed by hand (store bytes -> decode -> resize -> crop -> the model), so that the
averaging is over the views of one segment.
"""

from __future__ import annotations

import io
import math
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from click.testing import CliRunner
from PIL import Image
from torchvision.io import decode_jpeg

from epicdata.annotations import AnnotationDir, SegmentTable
from epicdata.dataset import EpicActionDataset
from epicdata.errors import EpicInputError, StoreError
from epicdata.sampling import (
    flow_snippet_starts,
    flow_view_starts,
    interleaved_linspace,
    linspace_frames,
    linspace_view_frames,
    tsn_frames,
    tsn_view_frames,
)
from epicdata.store import FrameStore
from preprocess.extract import run_shard
from preprocess.plan import plan_store
from train import distributed
from train.cli import validate_main
from train.config import TrainConfig
from train.data import build_eval_data
from train.device import Precision
from train.distributed import DistInfo
from train.engine import evaluate
from train.transforms import EVAL_RESIZE_RATIO, DeviceAugment, EvalClipTransform
from train.validate import _model_of, clip_length_to_test, parse_views, predict

#: (start, stop, T): short, long, shorter than T, one frame, odd lengths.
SEGMENTS = [(1, 1, 4), (5, 7, 8), (10, 109, 8), (100, 355, 25), (3, 20, 3), (7, 8, 1)]
SEGMENTS += [(s, s + n, t) for s, n, t in [(40, 17, 5), (2, 1000, 16), (61, 60, 7)]]


def _tsn_oracle(start: int, stop: int, t: int, view: int, views: int) -> list[int]:
    """Part i of T is [i L / T, (i + 1) L / T); the view takes fraction (c + 1/2) / C of it."""
    length = stop - start + 1
    part = Fraction(length, t)
    return [
        start + math.floor(i * part + part * Fraction(2 * view + 1, 2 * views)) for i in range(t)
    ]


def _linspace_oracle(first: int, last: int, n: int) -> list[int]:
    """The exact grid of n points over [first, last], both ends included, floored."""
    if n == 1:
        return [first]
    return [first + math.floor(Fraction(k * (last - first), n - 1)) for k in range(n)]


def test_one_view_is_exactly_the_evaluation_rule() -> None:
    rng = np.random.default_rng(0)
    cases = SEGMENTS + [
        (int(s), int(s + n), int(t))
        for s, n, t in zip(
            rng.integers(1, 10**5, 500),
            rng.integers(0, 3000, 500),
            rng.integers(1, 40, 500),
            strict=True,
        )
    ]
    for start, stop, t in cases:
        one = dict(view=0, num_views=1)
        assert (
            tsn_view_frames(start, stop, t, **one) == tsn_frames(start, stop, t, training=False)
        ).all()
        assert (
            linspace_view_frames(start, stop, t, **one) == linspace_frames(start, stop, t)
        ).all()
        for sampler in ("linspace", "tsn"):
            expected = flow_snippet_starts(start, stop, t, 3, sampler=sampler)
            assert (flow_view_starts(start, stop, t, 3, sampler=sampler, **one) == expected).all()


@pytest.mark.parametrize("views", [2, 3, 10])
def test_tsn_views_take_their_fraction_of_every_part(views: int) -> None:
    for start, stop, t in SEGMENTS:
        for view in range(views):
            got = tsn_view_frames(start, stop, t, view=view, num_views=views)
            assert got.tolist() == _tsn_oracle(start, stop, t, view, views), (start, stop, t, view)
            assert start <= got.min() and got.max() <= stop


@pytest.mark.parametrize("views", [2, 3, 10])
def test_linspace_views_deal_out_one_fine_grid(views: int) -> None:
    for start, stop, t in SEGMENTS:
        fine = _linspace_oracle(start, stop - 1, t * views)
        for view in range(views):
            got = linspace_view_frames(start, stop, t, view=view, num_views=views)
            expected = np.clip(fine[view::views], start, stop)
            assert got.tolist() == expected.tolist(), (start, stop, t, view)
    # Flow: the same rule over the valid snippet starts [first, last - stack + 1].
    got = flow_view_starts(11, 60, 4, 5, sampler="linspace", view=1, num_views=3)
    assert got.tolist() == _linspace_oracle(11, 56, 12)[1::3]
    got = flow_view_starts(11, 60, 4, 5, sampler="tsn", view=2, num_views=3)
    assert got.tolist() == _tsn_oracle(11, 56, 4, 2, 3)
    with pytest.raises(ValueError, match="view must be in"):
        interleaved_linspace(1, 9, 2, view=3, num_views=3)


def _slowfast_offsets(height: int, width: int, size: int, idx: int) -> tuple[int, int]:
    """slowfast/datasets/transform.py uniform_crop, written out (its y_offset, x_offset)."""
    y_offset = int(math.ceil((height - size) / 2))
    x_offset = int(math.ceil((width - size) / 2))
    if height > width:
        y_offset = {0: 0, 1: y_offset, 2: height - size}[idx]
    else:
        x_offset = {0: 0, 1: x_offset, 2: width - size}[idx]
    return y_offset, x_offset


@pytest.mark.parametrize("height, width", [(32, 51), (51, 32), (32, 32), (32, 60)])
def test_three_crops_land_where_slowfast_puts_them(height: int, width: int) -> None:
    size = 28  # the frames are already at the resized short side, round(28 * 256 / 224) = 32
    assert round(size * EVAL_RESIZE_RATIO) == 32
    # A marker image: channel 0 holds each pixel's row, channel 1 its column.
    rows = torch.arange(height).view(height, 1).expand(height, width)
    cols = torch.arange(width).view(1, width).expand(height, width)
    frames = torch.stack([rows, cols, rows * 0]).to(torch.uint8).expand(2, 3, height, width)
    views = EvalClipTransform(size, crops=3).views(frames)  # (3, T, C, S, S)
    assert views.shape == (3, 2, 3, size, size)
    for idx in range(3):
        top, left = _slowfast_offsets(height, width, size, idx)
        assert int(views[idx, 1, 0, 0, 0]) == top and int(views[idx, 1, 1, 0, 0]) == left
        assert int(views[idx, 0, 0, -1, -1]) == top + size - 1
    one = EvalClipTransform(size).views(frames)
    assert torch.equal(one[0], EvalClipTransform(size)(frames))  # today's centre crop


class FlatFlowStore:
    """What EpicActionDataset asks of a flow store: metadata and two flat grayscale JPEGs per
    flow frame (u: level f % 100, v: 120 + f % 100; quality 100 decodes them exactly).
    Records each read."""

    modality = "flow"
    staged_from = None
    root = Path("/fake/flow-store")

    def __init__(self, flow_frames: int, stride: int) -> None:
        meta = SimpleNamespace(
            flow=SimpleNamespace(stride=stride), decoded_frames=flow_frames, height=16, width=24
        )
        self.video_ids = ["P01_01"]
        self.meta = meta
        self.manifest = SimpleNamespace(video_to_shard=lambda: {"P01_01": 0})
        self.reads: list[list[int]] = []

    def video_meta(self, video_id: str) -> SimpleNamespace:
        return self.meta

    def read_frames(self, video_id: str, frames) -> list[bytes]:
        self.reads.append([int(f) for f in frames])
        out = []
        for frame in self.reads[-1]:
            for level in (frame % 100, 120 + frame % 100):
                data = io.BytesIO()
                picture = np.full((16, 24), level, dtype=np.uint8)
                Image.fromarray(picture, mode="L").save(data, format="JPEG", quality=100)
                out.append(data.getvalue())
        return out


@pytest.mark.parametrize("sampling", ["tsn", "linspace"])
@pytest.mark.parametrize("clips, stack, stop", [(2, 2, 140), (1, 3, 30)])
def test_flow_views_are_snippets_of_the_view_starts_each_frame_read_once(
    sampling, clips, stack, stop
) -> None:
    # (1, 3, 30): a short segment whose snippets overlap, out of order ([11, 12, 13],
    # [12, 13, 14], ...): one clip, three crops.
    store = FlatFlowStore(flow_frames=200, stride=2)
    table = SegmentTable(
        split="validation", narration_ids=["P01_01_0"], participant_ids=["P01"],
        video_ids=["P01_01"], start_frames=np.array([21]), stop_frames=np.array([stop]),
        verb_classes=np.zeros(1, np.int64), noun_classes=np.zeros(1, np.int64), labelled=True,
    )  # fmt: skip
    dataset = EpicActionDataset(
        store, table, num_frames=3, sampling=sampling, modality="flow", flow_stack=stack,
        transform=EvalClipTransform(14, crops=3), num_clips=clips,
    )  # fmt: skip
    views = dataset[0]["frames"]
    assert views.shape == (clips * 3, 3, 2 * stack, 14, 14)  # views, T, stack x (u, v)
    # Flow range of RGB [21, stop] at stride 2: [11, (stop - 1) // 2 + 1]; the snippet
    # starts run over [11, that - stack + 1].
    last_start = (stop - 1) // 2 + 1 - stack + 1
    for clip in range(clips):
        if sampling == "tsn":
            starts = _tsn_oracle(11, last_start, 3, clip, clips)
        else:
            starts = _linspace_oracle(11, last_start, 3 * clips)[clip::clips]
        expected = torch.tensor(
            [[lvl for f in range(s, s + stack) for lvl in (f % 100, 120 + f % 100)] for s in starts]
        )  # (T, 2 * stack): u, v of each pair, pair after pair
        for crop in range(3):
            got = views[clip * 3 + crop, :, :, 0, 0].long()
            assert torch.equal(got, expected), (clip, crop)
    read = store.reads[0]
    assert len(store.reads) == 1 and read == sorted(set(read))  # each flow frame once


@pytest.mark.parametrize("text", ["3", "0x1", "2x2", "axb", "2x3x1", "x3", "-1x3", ""])
def test_malformed_views_are_refused(text: str) -> None:
    with pytest.raises(EpicInputError, match="--views"):
        parse_views(text)


def test_views_parse() -> None:
    assert parse_views("1x1") == (1, 1) and parse_views("10x3") == (10, 3)
    assert parse_views(" 2X3 ") == (2, 3)


def test_a_tsm_model_keeps_its_clip_length_and_an_avg_model_takes_test_frames() -> None:
    common = dict(store="-", annotations="-", output_dir="-", num_frames=8)
    tsm = TrainConfig(temporal="tsm", **common)
    with pytest.raises(EpicInputError, match="clips of 8 frames") as caught:
        clip_length_to_test(tsm, 16, "tsm.pt")
    assert "--test-frames" in str(caught.value)
    assert clip_length_to_test(tsm, 8, "tsm.pt") == clip_length_to_test(tsm, None, "tsm.pt") == 8
    avg = TrainConfig(temporal="avg", **common)
    assert clip_length_to_test(avg, 25, "avg.pt") == 25


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--views", "2x2"], "2 crops"),
        (["--views", "ten"], "is not CLIPSxCROPS"),
        (["--test-frames", "0"], "--test-frames 0"),
    ],
)
def test_bad_view_options_exit_2_before_anything_is_read(tmp_path, extra, words) -> None:
    # The checkpoint is an empty file and no store exists: the options are refused first.
    (tmp_path / "none.pt").touch()
    args = ["--checkpoint", tmp_path / "none.pt", "--store", tmp_path, "--annotations", tmp_path]
    args += ["--output-dir", tmp_path / "out", *extra]
    result = CliRunner().invoke(validate_main, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    errors = _errors(result.output)
    assert len(errors) == 1 and words in errors[0], result.output
    assert "Traceback" not in result.output


# ----------------------------------------------------------------------------- end to end


def _predict(run: Path, store: Path, annotations: Path, **options):
    options.setdefault("batch_size", 6)
    return predict(
        run / "best.pt",
        store=store,
        annotations=AnnotationDir(annotations),
        split="validation",
        workers=0,
        device_name="cpu",
        **options,
    )


@pytest.mark.slow
def test_one_view_gives_exactly_todays_predictions(trained_run, mini_store) -> None:
    verb, noun, ids = _predict(trained_run, mini_store.store, mini_store.annotations)
    # Today's path, by hand: the model and the clips of the checkpoint, no views.
    model, cfg, spec = _model_of(trained_run / "best.pt", store=mini_store.store)
    table = AnnotationDir(mini_store.annotations).table("validation")
    dataset, loader = build_eval_data(
        FrameStore(mini_store.store), table, num_frames=cfg.num_frames, sampling=cfg.sampling,
        crop_size=cfg.crop_size, decoder="torchvision", batch_size=6, workers=0,
        info=DistInfo(), pin_memory=False,
    )  # fmt: skip
    preds = evaluate(
        model,
        loader,
        augment=DeviceAugment(spec.mean, spec.std),
        precision=Precision("cpu", torch.bfloat16, False),
        device=torch.device("cpu"),
        info=DistInfo(),
    )
    distributed.shutdown()
    assert ids == [table.narration_ids[i] for i in preds.indices]
    assert np.array_equal(verb, preds.verb_logits) and np.array_equal(noun, preds.noun_logits)


def _view_logits(model, cfg, spec, store, table, index: int, clip: int, crop: int, clips: int):
    """One view of one segment by hand: its frames, decoded, resized, SlowFast's crop."""
    start, stop = int(table.start_frames[index]), int(table.stop_frames[index])
    rule = linspace_view_frames if cfg.sampling == "linspace" else tsn_view_frames
    frames = rule(start, stop, cfg.num_frames, view=clip, num_views=clips)
    jpegs = store.read_frames(table.video_ids[index], frames)
    images = torch.stack(
        [decode_jpeg(torch.frombuffer(bytearray(j), dtype=torch.uint8)) for j in jpegs]
    )
    images = TF.resize(images, [round(cfg.crop_size * 256 / 224)], antialias=True)
    size = cfg.crop_size
    top, left = _slowfast_offsets(*images.shape[-2:], size, crop)
    images = images[..., top : top + size, left : left + size]  # (T, 3, S, S)
    x = images.float().div(255).unsqueeze(0)
    x = (x - torch.tensor(spec.mean).view(1, 1, 3, 1, 1)) / torch.tensor(spec.std).view(
        1, 1, 3, 1, 1
    )
    with torch.no_grad():
        verb, noun = model.heads(model.features(x).float())
    return verb[0].numpy(), noun[0].numpy()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")  # torchvision 0.29
def test_two_by_three_views_average_six_single_views_of_the_same_segment(
    trained_run, mini_store
) -> None:
    # 18 clips a batch: 3 segments of 6 views; one batch.
    verb, noun, ids = _predict(
        trained_run, mini_store.store, mini_store.annotations, views=(2, 3), batch_size=18,
        limit_batches=1,
    )  # fmt: skip
    distributed.shutdown()
    assert len(ids) == 3
    model, cfg, spec = _model_of(trained_run / "best.pt", store=mini_store.store)
    model.eval()
    table = AnnotationDir(mini_store.annotations).table("validation")
    store = FrameStore(mini_store.store)
    for row, narration_id in enumerate(ids):
        index = table.narration_ids.index(narration_id)
        singles = [
            _view_logits(model, cfg, spec, store, table, index, clip, crop, clips=2)
            for clip in range(2)
            for crop in range(3)
        ]
        np.testing.assert_allclose(verb[row], np.mean([v for v, _ in singles], 0), atol=1e-5)
        np.testing.assert_allclose(noun[row], np.mean([n for _, n in singles], 0), atol=1e-5)
        # The six views differ: the average is over distinct clips.
        assert len({v.tobytes() for v, _ in singles}) == 6


@pytest.mark.slow
def test_test_frames_25_reads_25_frames_per_segment(trained_run, mini_store, monkeypatch) -> None:
    reads: list[tuple[str, list[int]]] = []
    original = FrameStore.read_frames

    def spy(self, video_id, frames):
        reads.append((video_id, [int(f) for f in frames]))
        return original(self, video_id, frames)

    monkeypatch.setattr(FrameStore, "read_frames", spy)
    verb, _, ids = _predict(
        trained_run, mini_store.store, mini_store.annotations, test_frames=25, batch_size=4,
        limit_batches=1,
    )  # fmt: skip
    distributed.shutdown()
    table = AnnotationDir(mini_store.annotations).table("validation")
    cfg = _model_of(trained_run / "best.pt", store=mini_store.store)[1]
    assert cfg.num_frames == 2 and cfg.sampling == "linspace" and len(ids) == 4
    expected = [
        (
            table.video_ids[i],
            linspace_frames(table.start_frames[i], table.stop_frames[i], 25).tolist(),
        )
        for i in range(len(reads))
    ]
    # The loop fetches the next batch before it stops at --limit-batches: >= 4 reads.
    assert len(reads) >= 4 and reads == expected and np.isfinite(verb).all()


@pytest.fixture(scope="module")
def sampled_store(mini_epic, tmp_path_factory) -> Path:
    """The mini-EPIC's validation videos in a ``--keep sampled`` store for 2-frame clips."""
    store = tmp_path_factory.mktemp("sampled") / "store"
    manifest = plan_store(
        store_root=store, annotations_dir=mini_epic.annotations_dir,
        videos_root=mini_epic.videos_dir, shards=1, splits=("validation",), keep="sampled",
        num_frames=(2,),
    )  # fmt: skip
    for shard in manifest.shards:
        run_shard(store_root=store, shard_index=shard.index, workers=1)
    return store


@pytest.mark.slow
def test_views_a_sampled_store_cannot_serve_are_refused_naming_segment_and_frame(
    trained_run, mini_store, sampled_store, tmp_path
) -> None:
    # One clip still works on it, with 1 or 3 crops: the store was planned for its frames.
    for views in ((1, 1), (1, 3)):
        assert _predict(
            trained_run, sampled_store, mini_store.annotations, limit_batches=1, views=views
        )
        distributed.shutdown()
    with pytest.raises(StoreError) as caught:
        _predict(trained_run, sampled_store, mini_store.annotations, views=(2, 1))
    distributed.shutdown()
    message = str(caught.value)
    table = AnnotationDir(mini_store.annotations).table("validation")
    first = table.narration_ids[0]
    assert f"segment {first} of the validation split: temporal view" in message
    assert "--keep segments" in message and "--views 1x1" in message
    # The frame named is one a view needs and the store lacks.
    frame = int(message.split(" frame ")[1].split(",")[0].split()[0])
    start, stop = int(table.start_frames[0]), int(table.stop_frames[0])
    needed = {
        int(f) for v in range(2) for f in linspace_view_frames(start, stop, 2, view=v, num_views=2)
    }
    assert frame in needed
    assert not FrameStore(sampled_store).holds(table.video_ids[0], [frame])
    # Through the command: exit 2, one error line, before any inference.
    args = ["--checkpoint", trained_run / "best.pt", "--store", sampled_store, "--views", "2x3"]
    args += ["--annotations", mini_store.annotations, "--output-dir", tmp_path / "out"]
    result = CliRunner().invoke(
        validate_main, [str(a) for a in [*args, "--workers", "0", "--device", "cpu"]]
    )
    assert result.exit_code == 2, result.output
    assert len(_errors(result.output)) == 1 and f"segment {first}" in result.output
    assert not (tmp_path / "out" / "predictions.pkl").exists()
