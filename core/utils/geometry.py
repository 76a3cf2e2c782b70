"""Pixel-grid helpers used by the model, the losses, the augmentation tests and the downstream tools."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def coords_grid(batch: int, height: int, width: int, device=None, dtype=torch.float32) -> Tensor:
    """Pixel coordinates [B, 2, H, W]; channel 0 is x (column), channel 1 is y (row)."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype),
        torch.arange(width, device=device, dtype=dtype),
        indexing="ij",
    )
    return torch.stack([xs, ys]).unsqueeze(0).expand(batch, -1, -1, -1)


def bilinear_sampler(image: Tensor, coords: Tensor, padding_mode: str = "zeros") -> Tensor:
    """Sample ``image`` [B, C, H, W] at pixel coordinates ``coords`` [B, h, w, 2] (x, y), bilinearly.

    Pixel centres are at integer coordinates (``align_corners=True``); outside samples follow ``padding_mode``.
    Returns [B, C, h, w]. A side of length 1 is sampled at its only pixel (no division by zero).
    """
    height, width = image.shape[-2:]
    scale = coords.new_tensor([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)])
    grid = coords * scale - 1.0
    return F.grid_sample(image, grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)


def backward_warp(image: Tensor, flow: Tensor) -> tuple[Tensor, Tensor]:
    """Warp ``image`` (frame 2) back to frame 1 with the forward flow of frame 1.

    Args:
        image: [B, C, H, W] frame 2.
        flow: [B, 2, H, W] flow from frame 1 to frame 2, in pixels (u = x displacement, v = y displacement).

    Returns:
        ``(warped [B, C, H, W], inside [B, 1, H, W] bool)``: ``warped[p] = image[p + flow[p]]`` and whether
        ``p + flow[p]`` lies inside frame 2.
    """
    if flow.shape[1] != 2 or flow.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"flow must be [B, 2, H, W] matching the image, got {tuple(flow.shape)} for {tuple(image.shape)}")
    batch, _, height, width = flow.shape
    target = coords_grid(batch, height, width, device=flow.device, dtype=flow.dtype) + flow
    warped = bilinear_sampler(image, target.permute(0, 2, 3, 1))
    inside = (
        (target[:, 0] >= 0) & (target[:, 0] <= width - 1) & (target[:, 1] >= 0) & (target[:, 1] <= height - 1)
    ).unsqueeze(1)
    return warped, inside
