"""Tiled inference: overlapping tiles of the training crop size, blended with Gaussian weights (FlowFormer-style).

Memory of the whole-image forward pass grows with the square of the image area (the all-pairs cost volume and the
GMA attention are both ``(H/8 * W/8)^2``), so a 1080p or 4K frame does not fit on a small machine. Tiled inference
runs the network on overlapping windows of the size it was trained on and blends the windows' flows with weights
that fall off towards each window's border, where the network lacks context (FlowFormer, Huang et al. 2022,
"tile" evaluation on Sintel/KITTI).

The image is expected to be padded to a multiple of 8 already. Tile sides and tile origins are multiples of 8 as
well, so every tile's 1/8-scale output (``flow_low``, the warm-start state) lies exactly on the 1/8 grid of the
whole image and is blended the same way. The blending weights are normalised per pixel in log space (a softmax over
the tiles covering that pixel), so narrow Gaussians never underflow and a field that every tile reproduces is
reproduced exactly by the blend, up to float rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

TileFunction = Callable[[Tensor, Tensor, Tensor | None], tuple[Tensor, Tensor]]
"""``fn(image1_tile, image2_tile, flow_init_tile) -> (flow_tile [B, C, th, tw], flow_low_tile [B, 2, th/8, tw/8])``;
C is usually 2 (flow), or more when other full-resolution maps (e.g. disparity) are stacked after the flow."""

# Width of the Gaussian weight relative to the tile side (distance from the tile centre). Between two neighbouring
# tiles the log weight ratio changes linearly, by (tile stride) / (sigma^2 * tile side^2) per pixel: with tiles
# overlapping by a quarter, sigma = 0.15 spreads the hand-over over about half of the shared band (a smooth blend),
# while FlowFormer's 0.05 switches from one tile to the other within a few pixels (nearly a seam).
DEFAULT_SIGMA = 0.15
ALIGN = 8  # the network's stride: tiles start and end on the 1/8 grid


def tile_origins(length: int, tile: int, min_overlap: int, align: int = ALIGN) -> list[int]:
    """Start offsets of the fewest tiles of side ``tile`` that cover ``[0, length)`` overlapping by ``min_overlap``.

    The first tile starts at 0, the last ends at ``length``, the others are spread evenly; all offsets are multiples
    of ``align`` (``length`` and ``tile`` must be multiples of it). Neighbouring tiles share at least
    ``min_overlap`` pixels, rounded up to ``align``.
    """
    if length % align or tile % align:
        raise ValueError(f"length {length} and tile {tile} must be multiples of {align}")
    if tile >= length:
        return [0]
    stride = (tile - min_overlap) // align * align
    if stride < align:
        raise ValueError(f"overlap {min_overlap} leaves no stride for tiles of {tile} pixels (align {align})")
    count = math.ceil((length - tile) / stride) + 1
    units = (length - tile) // align
    return [align * round(i * units / (count - 1)) for i in range(count)]


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one (padded) image lie, and how much each tile's pixels weigh in the blend.

    Attributes:
        height, width: size of the padded image (multiples of 8).
        tile_height, tile_width: size of every tile (multiples of 8, at most the image size).
        origins: (top, left) of every tile, row-major.
        sigma: width of the Gaussian weight relative to the tile side.
    """

    height: int
    width: int
    tile_height: int
    tile_width: int
    origins: tuple[tuple[int, int], ...]
    sigma: float = DEFAULT_SIGMA
    align: int = ALIGN

    @classmethod
    def plan(cls, height: int, width: int, tile_size: tuple[int, int], min_overlap: float = 0.25,
             sigma: float = DEFAULT_SIGMA, align: int = ALIGN) -> "TileGrid":
        """Tiles of ``tile_size`` (H, W; floored to multiples of ``align``, clipped to the image) covering the image.

        Args:
            height, width: image size (multiples of ``align``: pad first).
            tile_size: (H, W) of a tile, typically the training crop size.
            min_overlap: fraction of the tile side that neighbouring tiles share at least, in [0, 1).
            sigma: Gaussian width relative to the tile side (FlowFormer: 0.05).
            align: tile sides and origins are multiples of it (8 = the network's 1/8 grid; 1 = any pixel).
        """
        if height % align or width % align:
            raise ValueError(f"the image must be padded to a multiple of {align} before tiling, got {height}x{width}")
        if not 0.0 <= min_overlap < 1.0:
            raise ValueError(f"min_overlap must be a fraction in [0, 1), got {min_overlap}")
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        if len(tile_size) != 2 or min(tile_size) < 2 * ALIGN:
            raise ValueError(f"tile_size must be (H, W) with both >= {2 * ALIGN}, got {tuple(tile_size)}")
        tile_height = min(int(tile_size[0]) // align * align, height)
        tile_width = min(int(tile_size[1]) // align * align, width)
        tops = tile_origins(height, tile_height, math.ceil(min_overlap * tile_height), align)
        lefts = tile_origins(width, tile_width, math.ceil(min_overlap * tile_width), align)
        origins = tuple((top, left) for top in tops for left in lefts)
        return cls(height, width, tile_height, tile_width, origins, sigma, align)

    def __len__(self) -> int:
        return len(self.origins)

    def log_weight(self, scale: int = 1, dtype: torch.dtype = torch.float64) -> Tensor:
        """Log of the Gaussian tile weight [th/scale, tw/scale]: ``-0.5 (r / sigma)^2``, with ``r`` the distance of the
        pixel centre from the tile centre in units of the tile side (so ``r`` is at most about 0.707)."""
        rows = (torch.arange(self.tile_height // scale, dtype=dtype) + 0.5) / (self.tile_height // scale) - 0.5
        cols = (torch.arange(self.tile_width // scale, dtype=dtype) + 0.5) / (self.tile_width // scale) - 0.5
        radius_sq = rows[:, None] ** 2 + cols[None, :] ** 2
        return -0.5 * radius_sq / self.sigma**2

    def blend_weights(self, scale: int = 1) -> list[Tensor]:
        """Per-tile blending weights [th/scale, tw/scale] (float32) that sum to 1 at every pixel of the image.

        ``w_t(p) = exp(l_t(p) - m(p)) / sum_s exp(l_s(p) - m(p))`` with ``l`` the log weights and ``m(p)`` the largest
        log weight at ``p``: a softmax over the tiles covering ``p``, computed in float64 (no underflow).
        """
        if self.align % scale:
            raise ValueError(f"scale {scale} must divide the grid alignment {self.align}")
        height, width = self.height // scale, self.width // scale
        tile_h, tile_w = self.tile_height // scale, self.tile_width // scale
        log_weight = self.log_weight(scale)
        best = torch.full((height, width), -math.inf, dtype=torch.float64)
        for top, left in self.origins:
            region = best[top // scale : top // scale + tile_h, left // scale : left // scale + tile_w]
            torch.maximum(region, log_weight, out=region)
        total = torch.zeros(height, width, dtype=torch.float64)
        for top, left in self.origins:
            window = (slice(top // scale, top // scale + tile_h), slice(left // scale, left // scale + tile_w))
            total[window] += torch.exp(log_weight - best[window])
        weights = []
        for top, left in self.origins:
            window = (slice(top // scale, top // scale + tile_h), slice(left // scale, left // scale + tile_w))
            weights.append((torch.exp(log_weight - best[window]) / total[window]).float())
        return weights


def _check_inputs(image1: Tensor, image2: Tensor, grid: TileGrid) -> None:
    if tuple(image1.shape[-2:]) != (grid.height, grid.width) or image2.shape != image1.shape:
        raise ValueError(f"images {tuple(image1.shape)} / {tuple(image2.shape)} do not match the tile grid "
                         f"{grid.height}x{grid.width}")


def run_tiled(fn: TileFunction, image1: Tensor, image2: Tensor, grid: TileGrid,
              flow_init: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Run ``fn`` on every tile of ``grid`` and blend the results into whole-image outputs.

    Args:
        fn: the per-tile estimator, see :data:`TileFunction` (e.g. the network on already padded tiles).
        image1, image2: [B, C, H, W] padded images (H, W = ``grid.height``, ``grid.width``).
        grid: the tiles, from :meth:`TileGrid.plan`.
        flow_init: optional [B, 2, H/8, W/8] warm start; each tile gets its window of it.

    Returns:
        ``(flow [B, C, H, W], flow_low [B, 2, H/8, W/8])``: the Gaussian-weighted blends, float32, on the device of
        the tile outputs. Only one tile's activations are alive at a time.
    """
    _check_inputs(image1, image2, grid)
    if grid.align % ALIGN:
        raise ValueError(f"run_tiled needs a grid aligned to {ALIGN} pixels, got align {grid.align}")
    low_h, low_w = grid.tile_height // ALIGN, grid.tile_width // ALIGN
    flow = flow_low = None
    for (top, left), weight, weight_low in zip(grid.origins, grid.blend_weights(1), grid.blend_weights(ALIGN)):
        rows, cols = slice(top, top + grid.tile_height), slice(left, left + grid.tile_width)
        rows_low = slice(top // ALIGN, top // ALIGN + low_h)
        cols_low = slice(left // ALIGN, left // ALIGN + low_w)
        init = None if flow_init is None else flow_init[..., rows_low, cols_low]
        tile_flow, tile_low = fn(image1[..., rows, cols], image2[..., rows, cols], init)
        if flow is None:
            flow = torch.zeros(*tile_flow.shape[:2], grid.height, grid.width, device=tile_flow.device)
            flow_low = torch.zeros(*tile_low.shape[:2], grid.height // ALIGN, grid.width // ALIGN,
                                   device=tile_flow.device)
        flow[..., rows, cols] += tile_flow.float() * weight.to(flow.device)
        flow_low[..., rows_low, cols_low] += tile_low.float() * weight_low.to(flow.device)
    return flow, flow_low


def tiled_predict(fn: Callable[[Tensor, Tensor], Tensor], image1: Tensor, image2: Tensor,
                  tile_size: tuple[int, int], min_overlap: float = 0.25, sigma: float = DEFAULT_SIGMA) -> Tensor:
    """Tiled version of any ``fn(image1, image2) -> output [B, C, h, w]`` that keeps the input size (e.g. a flow
    network that pads internally): ``image1``, ``image2`` [B, 3, H, W] of any size, tiles of ``tile_size`` placed
    on any pixel (no 1/8 alignment), outputs blended with the Gaussian weights of :class:`TileGrid`.
    Returns the blended [B, C, H, W] (float32)."""
    grid = TileGrid.plan(image1.shape[-2], image1.shape[-1], tile_size, min_overlap, sigma, align=1)
    _check_inputs(image1, image2, grid)
    output = None
    for (top, left), weight in zip(grid.origins, grid.blend_weights(1)):
        rows, cols = slice(top, top + grid.tile_height), slice(left, left + grid.tile_width)
        tile = fn(image1[..., rows, cols], image2[..., rows, cols])
        if output is None:
            output = torch.zeros(*tile.shape[:2], grid.height, grid.width, device=tile.device)
        output[..., rows, cols] += tile.float() * weight.to(output.device)
    return output
