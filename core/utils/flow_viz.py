"""Colour images of flow and depth for logs, demos and figures.

Flow uses the Middlebury colour coding (Baker et al., "A Database and Evaluation Methodology for Optical Flow",
ICCV 2007; the C++ code of D. Scharstein and the Matlab code of D. Sun): the direction of a vector picks a hue on a
55-colour wheel, its length (relative to a maximum radius) the saturation, so zero flow is white. Depth or
disparity is coloured with a matplotlib colour map.

All functions take numpy arrays or torch tensors (detached and moved to the CPU) and return uint8 RGB images.
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib import colormaps

# Wheel segments between the six primary/secondary hues: (number of colours, channel held at 255, channel that ramps,
# ramp direction). Red -> yellow -> green -> cyan -> blue -> magenta -> red; 15 + 6 + 4 + 11 + 13 + 6 = 55 colours.
_WHEEL_SEGMENTS = (
    (15, 0, 1, True),   # RY: red, green rises
    (6, 1, 0, False),   # YG: green, red falls
    (4, 1, 2, True),    # GC: green, blue rises
    (11, 2, 1, False),  # CB: blue, green falls
    (13, 2, 0, True),   # BM: blue, red rises
    (6, 0, 2, False),   # MR: red, blue falls
)
# Added to the largest radius when a flow is normalised by its own maximum (the reference implementations' value).
_RADIUS_EPS = 1e-5
# Vectors longer than max_radius keep their hue, at 75 % brightness (Middlebury's out-of-range convention).
_OUT_OF_RANGE_DIMMING = 0.75


def _to_numpy(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")


def make_colorwheel() -> np.ndarray:
    """The 55 Middlebury wheel colours, float64 [55, 3] RGB in 0..255; index 0 (red) is the direction +x."""
    segments = []
    for length, held, ramped, rising in _WHEEL_SEGMENTS:
        segment = np.zeros((length, 3))
        segment[:, held] = 255
        ramp = np.floor(255 * np.arange(length) / length)
        segment[:, ramped] = ramp if rising else 255 - ramp
        segments.append(segment)
    return np.concatenate(segments)


def flow_to_color(flow, max_radius: float | None = None, convert_to_bgr: bool = False, valid=None) -> np.ndarray:
    """Middlebury colour image of a flow field.

    Direction: +x (right) is red, +y (down) yellow-orange, -x cyan-blue, -y violet-blue, interpolated between the
    two nearest wheel colours. Length: white at 0, the full wheel colour at ``max_radius``; longer vectors are
    shown at 75 % brightness.

    Args:
        flow: [H, W, 2] (u, v) in pixels.
        max_radius: the length (pixels) shown at full saturation. Fix it to compare frames of a video or different
            methods; ``None`` normalises by the longest finite vector of this flow.
        convert_to_bgr: return BGR (for cv2.imwrite) instead of RGB.
        valid: optional [H, W] mask (bool, or float >= 0.5); invalid and non-finite vectors are black.

    Returns:
        uint8 [H, W, 3].
    """
    flow = _to_numpy(flow, "flow").astype(np.float64)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"flow must be [H, W, 2], got shape {flow.shape}")
    shown = np.isfinite(flow).all(axis=2)
    if valid is not None:
        valid = _to_numpy(valid, "valid")
        if valid.shape != flow.shape[:2]:
            raise ValueError(f"valid must be [H, W] = {flow.shape[:2]}, got shape {valid.shape}")
        shown &= valid.astype(bool) if valid.dtype == bool else valid >= 0.5
    u = np.where(shown, flow[..., 0], 0.0)
    v = np.where(shown, flow[..., 1], 0.0)
    radius = np.sqrt(u**2 + v**2)
    if max_radius is None:
        scale = radius.max(initial=0.0) + _RADIUS_EPS
    elif max_radius > 0:
        scale = float(max_radius)
    else:
        raise ValueError(f"max_radius must be positive or None, got {max_radius}")
    # "+ 0.0" turns -0.0 into +0.0: arctan2 sees the sign of zero, and a purely +x vector must always be colour 0.
    u, v, radius = u / scale, v / scale + 0.0, radius / scale

    wheel = make_colorwheel() / 255.0
    num_colors = wheel.shape[0]
    # arctan2(-v, -u) / pi runs from -1 (+x, reached with v = -0.0) through 0 (-x) to 1, over wheel positions 0..54.
    position = (np.arctan2(-v, -u) / np.pi + 1.0) / 2.0 * (num_colors - 1)
    lower = np.floor(position).astype(np.int64)
    upper = (lower + 1) % num_colors
    weight = (position - lower)[..., None]
    color = (1.0 - weight) * wheel[lower] + weight * wheel[upper]

    inside = (radius <= 1.0)[..., None]
    color = np.where(inside, 1.0 - radius[..., None] * (1.0 - color), color * _OUT_OF_RANGE_DIMMING)
    image = np.floor(255.0 * color).astype(np.uint8)
    image[~shown] = 0
    return image[..., ::-1].copy() if convert_to_bgr else image


def flow_legend(size: int = 151, convert_to_bgr: bool = False) -> np.ndarray:
    """The colour key: uint8 [size, size, 3] image whose pixel at offset (dx, dy) from the centre shows the colour
    of flow (dx, dy) with ``max_radius = (size - 1) / 2``; outside that disc is white."""
    if size < 3:
        raise ValueError(f"flow_legend: size must be at least 3, got {size}")
    centre = (size - 1) / 2.0
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    offsets = np.stack([xs - centre, ys - centre], axis=2)
    image = flow_to_color(offsets, max_radius=centre, convert_to_bgr=convert_to_bgr)
    image[np.hypot(offsets[..., 0], offsets[..., 1]) > centre] = 255
    return image


def depth_to_color(depth, vmin: float | None = None, vmax: float | None = None, cmap: str = "magma",
                   valid=None) -> np.ndarray:
    """Colour image of a depth or disparity map with a matplotlib colour map.

    Values are mapped linearly from [vmin, vmax] (clipped) to the colour map. With ``magma``, larger values are
    brighter, so pass a disparity (or 1 / depth) to show near things bright. Pixels that are non-finite, <= 0 or
    outside ``valid`` are black.

    Args:
        depth: [H, W] depth or disparity.
        vmin, vmax: value range; ``None`` takes the minimum / maximum of the valid pixels (fix both to compare frames).
        cmap: a matplotlib colour map name (``magma``, ``plasma``, ``viridis``, ``turbo``, ...).
        valid: optional [H, W] mask (bool, or float >= 0.5).

    Returns:
        uint8 [H, W, 3] RGB.
    """
    depth = _to_numpy(depth, "depth").astype(np.float64)
    if depth.ndim != 2:
        raise ValueError(f"depth must be [H, W], got shape {depth.shape}")
    try:
        colormap = colormaps[cmap]
    except KeyError:
        raise ValueError(f"depth_to_color: unknown matplotlib colour map '{cmap}'") from None
    shown = np.isfinite(depth) & (depth > 0)
    if valid is not None:
        valid = _to_numpy(valid, "valid")
        if valid.shape != depth.shape:
            raise ValueError(f"valid must be [H, W] = {depth.shape}, got shape {valid.shape}")
        shown &= valid.astype(bool) if valid.dtype == bool else valid >= 0.5
    values = depth[shown]
    low = vmin if vmin is not None else (float(values.min()) if values.size else 0.0)
    high = vmax if vmax is not None else (float(values.max()) if values.size else 1.0)
    span = high - low
    normalised = np.clip((depth - low) / span, 0.0, 1.0) if span > 0 else np.zeros_like(depth)
    image = np.round(colormap(np.where(shown, normalised, 0.0))[..., :3] * 255.0).astype(np.uint8)
    image[~shown] = 0
    return image
