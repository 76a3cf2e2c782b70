"""Sinusoidal position codes shared by the cost-memory encoder and the flow decoder."""

from __future__ import annotations

import torch
from torch import Tensor

# The official code writes pi as 3.14 and normalises coordinates by 1/200 (enough for 1/8-scale maps of 1600 px).
_PI_OFFICIAL = 3.14
_NORMALISER = 1.0 / 200.0


def linear_sine_code(coords: Tensor, dim: int) -> Tensor:
    """FlowFormer's "linear sine" position code.

    Args:
        coords: [..., 2] coordinates (x, y) in pixels of the map they index (any float dtype).
        dim: output width, a multiple of 4.

    Returns:
        [..., dim]: ``[sin(a x f), cos(a x f), sin(a y f), cos(a y f)]`` with ``f = 0 .. dim/4 - 1`` and
        ``a = 3.14 / 200``, each block ``dim / 4`` wide (the official constants, kept for weight compatibility).
    """
    if dim % 4:
        raise ValueError(f"position code width must be a multiple of 4, got {dim}")
    freq = torch.arange(dim // 4, device=coords.device, dtype=coords.dtype)
    x = _PI_OFFICIAL * coords[..., 0:1] * freq * _NORMALISER
    y = _PI_OFFICIAL * coords[..., 1:2] * freq * _NORMALISER
    return torch.cat([torch.sin(x), torch.cos(x), torch.sin(y), torch.cos(y)], dim=-1)
