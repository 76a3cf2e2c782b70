"""Small blocks shared by the model's parts (mostly the flow and depth decoders: RAFT-style recurrent refinement).

* :class:`SepConvGRU`: the separable convolutional GRU of RAFT (a 1 x k pass, then a k x 1 pass); the flow
  decoder uses k = 5, the depth decoder k = 3.
* :func:`convex_upsample`: RAFT's learned convex upsampling from 1/8 to full resolution.
* :func:`sep_conv_gru_key_map`: the official -> our parameter names of a :class:`SepConvGRU`.
* :func:`map_rows`: a row-wise function (MLP, FFN) applied to chunks of rows, to bound its intermediate memory.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Both decoders work at 1/8 resolution and predict a 9-neighbour convex mask for every one of the 8 x 8
# full-resolution pixels of a cell.
UPSAMPLE_FACTOR = 8
CONVEX_NEIGHBOURS = 9
# Rows (tokens, pixels) per chunk in :func:`map_rows`: a 4x-wide MLP of 128 channels then needs 2 x 17 MB.
ROW_CHUNK = 8192
# The official heads scale the predicted upsampling mask by 0.25 ("to balance gradients", from RAFT).
MASK_SCALE = 0.25


class ConvGRUPass(nn.Module):
    """One gated update of a convolutional GRU with a (possibly non-square) kernel and zero padding.

    ``z = sigmoid(conv([h, x]))``, ``r = sigmoid(conv([h, x]))``, ``q = tanh(conv([r * h, x]))``,
    ``h' = (1 - z) * h + z * q``.
    """

    def __init__(self, hidden_dim: int, input_dim: int, kernel_size: tuple[int, int]):
        super().__init__()
        padding = (kernel_size[0] // 2, kernel_size[1] // 2)
        self.update_gate = nn.Conv2d(hidden_dim + input_dim, hidden_dim, kernel_size, padding=padding)
        self.reset_gate = nn.Conv2d(hidden_dim + input_dim, hidden_dim, kernel_size, padding=padding)
        self.candidate = nn.Conv2d(hidden_dim + input_dim, hidden_dim, kernel_size, padding=padding)

    def forward(self, hidden: Tensor, x: Tensor) -> Tensor:
        hx = torch.cat([hidden, x], dim=1)
        z = torch.sigmoid(self.update_gate(hx))
        r = torch.sigmoid(self.reset_gate(hx))
        q = torch.tanh(self.candidate(torch.cat([r * hidden, x], dim=1)))
        return (1 - z) * hidden + z * q


class SepConvGRU(nn.Module):
    """Separable ConvGRU (RAFT): a horizontal 1 x k pass followed by a vertical k x 1 pass.

    forward(hidden [B, hidden_dim, H, W], x [B, input_dim, H, W]) -> new hidden [B, hidden_dim, H, W].
    """

    def __init__(self, hidden_dim: int, input_dim: int, kernel_size: int):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"SepConvGRU kernel_size must be odd, got {kernel_size}")
        self.horizontal = ConvGRUPass(hidden_dim, input_dim, (1, kernel_size))
        self.vertical = ConvGRUPass(hidden_dim, input_dim, (kernel_size, 1))

    def forward(self, hidden: Tensor, x: Tensor) -> Tensor:
        return self.vertical(self.horizontal(hidden, x), x)


def sep_conv_gru_key_map(official_prefix: str, our_prefix: str) -> list[tuple[str, str]]:
    """Key-map rules (see CONTRACT, ``OFFICIAL_KEY_MAP``) from the official GRU names to :class:`SepConvGRU`.

    The official GRUs name their convolutions ``conv{z,r,q}{1,2}`` (gate, pass): 1 = horizontal, 2 = vertical.
    """
    gates = {"z": "update_gate", "r": "reset_gate", "q": "candidate"}
    passes = {"1": "horizontal", "2": "vertical"}
    return [
        (rf"{official_prefix}\.conv{gate}{index}\.(weight|bias)", rf"{our_prefix}.{direction}.{name}.\1")
        for gate, name in gates.items()
        for index, direction in passes.items()
    ]


def convex_upsample(values: Tensor, mask: Tensor, factor: int = UPSAMPLE_FACTOR, scale: float = 1.0) -> Tensor:
    """RAFT's convex upsampling: every fine pixel is a convex combination of its coarse cell's 3 x 3 neighbours.

    Args:
        values: [B, C, h, w] coarse field (flow in 1/8-scale pixels, or a disparity).
        mask: [B, 9 * factor * factor, h, w] logits; channel ``k * factor^2 + i * factor + j`` weights neighbour
            ``k`` (row-major over the 3 x 3 window) for the fine pixel (i, j) of the cell. Softmax over the 9.
        factor: upsampling factor.
        scale: multiplies ``values`` first (``factor`` for a flow, to convert it to full-resolution pixels).

    Returns:
        [B, C, factor * h, factor * w]; neighbours outside the map count as zero (zero padding).
    """
    batch, channels, height, width = values.shape
    if mask.shape != (batch, CONVEX_NEIGHBOURS * factor * factor, height, width):
        raise ValueError(
            f"convex_upsample: mask must be [{batch}, {CONVEX_NEIGHBOURS * factor * factor}, {height}, {width}], "
            f"got {list(mask.shape)}"
        )
    weights = torch.softmax(mask.view(batch, 1, CONVEX_NEIGHBOURS, factor, factor, height, width), dim=2)
    neighbours = F.unfold(scale * values, kernel_size=3, padding=1)
    neighbours = neighbours.view(batch, channels, CONVEX_NEIGHBOURS, 1, 1, height, width)
    # Sum over the 9 neighbours one at a time: no [B, C, 9, factor, factor, h, w] product (32 MB at 440x1024).
    fine = weights[:, :, 0] * neighbours[:, :, 0]  # [B, C, factor_i, factor_j, h, w]
    for k in range(1, CONVEX_NEIGHBOURS):
        fine += weights[:, :, k] * neighbours[:, :, k]
    return fine.permute(0, 1, 4, 2, 5, 3).reshape(batch, channels, factor * height, factor * width)


def map_rows(fn: Callable[[Tensor], Tensor], x: Tensor, chunk: int | None = None) -> Tensor:
    """``fn(x)`` for a ``fn`` that treats the rows ``x[i]`` (slices along dim 0) independently, computed ``chunk``
    rows at a time (default :data:`ROW_CHUNK`) into one output, so that its intermediate activations exist for one
    chunk only. The result equals ``fn(x)`` (the same operations on every row); gradients flow as usual.
    """
    chunk = ROW_CHUNK if chunk is None else chunk
    if x.shape[0] <= chunk:
        return fn(x)
    first = fn(x[:chunk])
    out = first.new_empty(x.shape[0], *first.shape[1:])
    out[:chunk] = first
    for start in range(chunk, x.shape[0], chunk):
        out[start:start + chunk] = fn(x[start:start + chunk])
    return out
