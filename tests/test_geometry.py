"""Pixel-grid helpers: the coordinate grid, bilinear sampling at pixel coordinates and backward warping, checked
against values computed by hand."""

from __future__ import annotations

import pytest
import torch

from core.utils.geometry import backward_warp, bilinear_sampler, coords_grid


def _ramp(height: int = 5, width: int = 7) -> torch.Tensor:
    """[1, 1, H, W] with value 10 * row + column, so a sample's value tells where it was taken."""
    return (10 * torch.arange(height).view(-1, 1) + torch.arange(width)).float()[None, None]


def test_coords_grid_is_x_then_y():
    grid = coords_grid(2, 3, 4)
    assert grid.shape == (2, 2, 3, 4)
    assert grid[1, 0, 2, 3] == 3 and grid[1, 1, 2, 3] == 2  # x = column, y = row


def test_bilinear_sampler_at_pixel_and_between_pixel_centres():
    image = _ramp()
    coords = torch.tensor([[[[3.0, 2.0], [0.5, 1.0], [6.0, 4.0], [2.25, 3.5]]]])  # (x, y)
    values = bilinear_sampler(image, coords)[0, 0, 0]
    torch.testing.assert_close(values, torch.tensor([23.0, 10.5, 46.0, 37.25]))
    assert bilinear_sampler(image, torch.tensor([[[[-1.0, 0.0]]]]))[0, 0, 0, 0] == 0  # outside: zeros


def test_backward_warp_reads_frame2_at_p_plus_flow():
    image = _ramp()
    flow = torch.zeros(1, 2, 5, 7)
    flow[:, 0] = 1.0  # one pixel right
    flow[:, 1, 2] = -2.0  # row 2 also two rows up
    warped, inside = backward_warp(image, flow)
    torch.testing.assert_close(warped[0, 0, :, :-1][[0, 1, 3, 4]], image[0, 0, :, 1:][[0, 1, 3, 4]])
    torch.testing.assert_close(warped[0, 0, 2, :-1], image[0, 0, 0, 1:])
    expected_inside = torch.ones(5, 7, dtype=torch.bool)
    expected_inside[:, -1] = False  # x + 1 leaves the frame in the last column
    assert torch.equal(inside[0, 0], expected_inside)

    half = torch.full((1, 2, 5, 7), 0.5)
    warped, inside = backward_warp(image, half)
    torch.testing.assert_close(warped[0, 0, :-1, :-1], image[0, 0, :-1, :-1] + 5.5)  # + 0.5 * (10 + 1)
    assert inside[0, 0, :-1, :-1].all() and not inside[0, 0, -1].any() and not inside[0, 0, :, -1].any()


def test_backward_warp_checks_shapes():
    with pytest.raises(ValueError, match="flow must be"):
        backward_warp(_ramp(), torch.zeros(1, 3, 5, 7))
    with pytest.raises(ValueError, match="flow must be"):
        backward_warp(_ramp(), torch.zeros(1, 2, 5, 6))
