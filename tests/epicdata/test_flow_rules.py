"""EPIC's flow frame rules against transcriptions of the official code: C1's RGB-to-flow
index conversion and epic-kitchens-55-lib's flow frame count."""

from __future__ import annotations

import numpy as np
import pytest

from epicdata.frames import (
    EPIC55_FLOW,
    EXTENSION_FLOW,
    FlowParams,
    flow_frame_count,
    flow_index,
    flow_params_for,
)

# github epic-kitchens/C1-Action-Recognition-TSN-TRN-TSM, commit e8e1a79,
# src/convert_rgb_to_flow_frame_idxs.py, verbatim.
STRIDES = {
    2018: 2,
    2020: 1,
}


def convert_rgb_frame_to_flow_frame_idx(frame_idxs, stride: int):
    return (frame_idxs - 1) // stride + 1


def _c1_year(id_):  # main(): the lambda that picks the year of a video id
    return 2020 if len(id_.split("_")[-1]) == 3 else 2018


# github epic-kitchens/epic-kitchens-55-lib, commit 7f2499a, epic_kitchens/time.py, verbatim
# but for the docstring.
def _lib_flow_frame_count(rgb_frame: int, stride: int, dilation: int) -> int:
    return int(np.ceil((float(rgb_frame) - dilation) / stride))


@pytest.mark.parametrize("video_id", ["P01_01", "P22_17", "P01_101", "P37_103", "P01_109"])
def test_each_video_gets_its_groups_stride_as_c1_converts_it(video_id):
    params = flow_params_for(video_id)
    assert params.stride == STRIDES[_c1_year(video_id)]
    rgb = np.arange(1, 5001)
    assert np.array_equal(
        flow_index(rgb, params.stride), convert_rgb_frame_to_flow_frame_idx(rgb, params.stride)
    )
    assert [flow_index(int(n), params.stride) for n in rgb[:7]] == list(
        convert_rgb_frame_to_flow_frame_idx(rgb[:7], params.stride)
    )


def test_the_groups_parameters_are_the_published_ones():
    assert (EPIC55_FLOW.stride, EPIC55_FLOW.dilation, EPIC55_FLOW.bound) == (2, 3, 25.0)
    assert (EXTENSION_FLOW.stride, EXTENSION_FLOW.dilation, EXTENSION_FLOW.bound) == (1, 1, 8.0)
    assert flow_params_for("P01_01") is EPIC55_FLOW
    assert flow_params_for("P27_103") is EXTENSION_FLOW  # an erratum video: the same rule
    custom = FlowParams(stride=1, dilation=2, bound=20.0)
    assert flow_params_for("P01_01", custom) is custom
    with pytest.raises(ValueError):
        flow_params_for("P01_1")


def test_the_flow_frame_count_equals_the_55_libs_on_every_small_case():
    # The library's own doctest table first, then every n, stride, dilation up to a few.
    table = {(6, 1, 1): 5, (6, 2, 1): 3, (6, 1, 2): 4, (6, 2, 2): 2, (6, 3, 1): 2, (6, 1, 3): 3}
    table |= {(7, 1, 1): 6, (7, 2, 1): 3, (7, 1, 2): 5, (7, 2, 2): 3, (7, 3, 1): 2, (7, 1, 3): 4}
    for args, count in table.items():
        assert flow_frame_count(*args) == count == _lib_flow_frame_count(*args)
    for n in range(0, 400):
        for stride in (1, 2, 3):
            for dilation in (1, 2, 3):
                assert flow_frame_count(n, stride, dilation) == _lib_flow_frame_count(
                    n, stride, dilation
                )
    for n in (90_000, 1_234_567, 2**40 + 3):  # an hour at 60 fps, and far beyond
        assert flow_frame_count(n, 2, 3) == _lib_flow_frame_count(n, 2, 3)


def test_every_rgb_frame_of_a_video_maps_inside_its_flow_frames_but_the_tail():
    # "almost 1-to-1 (bar the last frame)": with stride 1 and dilation 1 only the last RGB
    # frame has no flow frame of its own; with EPIC-55's (2, 3) the last two or three.
    for params, n, tail in (
        (EXTENSION_FLOW, 3001, 1),
        (EPIC55_FLOW, 3600, 2),
        (EPIC55_FLOW, 3601, 3),
    ):
        count = flow_frame_count(n, params.stride, params.dilation)
        mapped = flow_index(np.arange(1, n + 1), params.stride)
        assert mapped[0] == 1 and np.all(np.diff(mapped) >= 0)
        assert np.count_nonzero(mapped > count) == tail  # the RGB frames past the last flow frame
