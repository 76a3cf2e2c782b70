"""Middlebury colour coding: wheel entries, known directions, saturation, fixed radius, legend, depth colours."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib import colormaps

from core.utils.flow_viz import depth_to_color, flow_legend, flow_to_color, make_colorwheel


def _vectors(*uv: tuple[float, float]) -> np.ndarray:
    """A 1 x N flow image holding the given vectors."""
    return np.array([uv], dtype=np.float64)


def test_colorwheel_entries():
    wheel = make_colorwheel()
    assert wheel.shape == (55, 3)
    # Segment starts: red, yellow, green, cyan, blue, magenta (RY=15, YG=6, GC=4, CB=11, BM=13, MR=6).
    for index, rgb in {0: (255, 0, 0), 15: (255, 255, 0), 21: (0, 255, 0), 25: (0, 255, 255), 36: (0, 0, 255),
                       49: (255, 0, 255)}.items():
        assert tuple(wheel[index]) == rgb
    assert tuple(wheel[1]) == (255, 17, 0)  # floor(255 * 1 / 15)
    assert tuple(wheel[27]) == (0, 209, 255)  # 255 - floor(255 * 2 / 11)
    assert tuple(wheel[54]) == (255, 0, 43)  # 255 - floor(255 * 5 / 6)


def test_known_directions_at_max_radius():
    image = flow_to_color(_vectors((10, 0), (0, 10), (-10, 0), (0, -10)), max_radius=10)
    assert tuple(image[0, 0]) == (255, 0, 0)  # +x: wheel colour 0
    assert tuple(image[0, 1]) == (255, 229, 0)  # +y: halfway between wheel[13] (255,221,0) and wheel[14] (255,238,0)
    assert tuple(image[0, 2]) == (0, 209, 255)  # -x: wheel[27]
    assert tuple(image[0, 3]) == (88, 0, 255)  # -y: halfway between wheel[40] (78,0,255) and wheel[41] (98,0,255)
    # The sign of a zero v must not matter.
    assert tuple(flow_to_color(_vectors((10, -0.0)), max_radius=10)[0, 0]) == (255, 0, 0)


def test_saturation_zero_and_out_of_range():
    image = flow_to_color(_vectors((0, 0), (5, 0), (20, 0)), max_radius=10)
    assert tuple(image[0, 0]) == (255, 255, 255)  # zero flow is white
    assert tuple(image[0, 1]) == (255, 127, 127)  # half radius: 1 - 0.5 * (1 - colour)
    assert tuple(image[0, 2]) == (191, 0, 0)  # beyond max_radius: 75 % of the wheel colour
    assert np.all(flow_to_color(np.zeros((3, 4, 2))) == 255)


def test_fixed_radius_is_comparable_across_frames():
    frame1 = _vectors((3, 4), (1, 0))
    frame2 = _vectors((3, 4), (40, 0))
    fixed1, fixed2 = flow_to_color(frame1, max_radius=50), flow_to_color(frame2, max_radius=50)
    assert np.array_equal(fixed1[0, 0], fixed2[0, 0])
    auto1, auto2 = flow_to_color(frame1), flow_to_color(frame2)
    assert not np.array_equal(auto1[0, 0], auto2[0, 0])  # self-normalised colours depend on the rest of the frame
    assert tuple(auto1[0, 0]) == tuple(flow_to_color(frame1, max_radius=5 + 1e-5)[0, 0])  # normalised by the max


def test_bgr_invalid_and_tensor_input():
    flow = _vectors((10, 0), (float("nan"), 0), (0, 10))
    rgb = flow_to_color(flow, max_radius=10)
    assert tuple(rgb[0, 1]) == (0, 0, 0)  # non-finite -> black
    assert np.array_equal(flow_to_color(flow, max_radius=10, convert_to_bgr=True), rgb[..., ::-1])
    masked = flow_to_color(flow, max_radius=10, valid=np.array([[True, True, False]]))
    assert tuple(masked[0, 2]) == (0, 0, 0) and tuple(masked[0, 0]) == (255, 0, 0)
    tensor = flow_to_color(torch.tensor(flow, dtype=torch.float32), max_radius=10)
    assert tensor.dtype == np.uint8 and np.array_equal(tensor, rgb)
    with pytest.raises(ValueError, match=r"\[H, W, 2\]"):
        flow_to_color(np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="max_radius"):
        flow_to_color(np.zeros((4, 4, 2)), max_radius=0)


def test_flow_legend():
    legend = flow_legend(101)
    assert legend.shape == (101, 101, 3) and legend.dtype == np.uint8
    assert tuple(legend[50, 50]) == (255, 255, 255)  # centre: zero flow
    assert tuple(legend[50, 100]) == (255, 0, 0)  # right edge: +x at full radius
    assert tuple(legend[0, 0]) == (255, 255, 255)  # outside the disc
    assert tuple(legend[100, 50]) == (255, 229, 0)  # bottom: +y


def test_depth_to_color():
    depth = np.array([[1.0, 2.0, 3.0], [0.0, np.nan, 5.0]])
    image = depth_to_color(depth)  # range of valid values: [1, 5]
    colormap = colormaps["magma"]
    expected = np.round(np.array(colormap([0.0, 0.25, 0.5, 1.0]))[:, :3] * 255).astype(np.uint8)
    assert np.array_equal(image[[0, 0, 0, 1], [0, 1, 2, 2]], expected)
    assert np.all(image[1, :2] == 0)  # 0 and NaN are black

    fixed = depth_to_color(torch.tensor(depth), vmin=0.0, vmax=2.0, cmap="viridis", valid=depth < 4)
    assert np.array_equal(fixed[0, 0], np.round(np.array(colormaps["viridis"](0.5))[:3] * 255).astype(np.uint8))
    assert np.array_equal(fixed[0, 1], fixed[0, 2])  # clipped at vmax
    assert np.all(fixed[1, 2] == 0)  # outside valid
    assert np.all(depth_to_color(np.zeros((2, 2))) == 0)
    with pytest.raises(ValueError, match="colour map"):
        depth_to_color(depth, cmap="not-a-map")
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        depth_to_color(np.ones((1, 2, 2)))
