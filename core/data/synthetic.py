"""Built-in procedural training data: layered image pairs with exact dense flow and depth.

In the spirit of FlyingChairs (Dosovitskiy et al., 2015) and AutoFlow (Sun et al., 2021): a textured background
and several textured foreground layers (polygons, ellipses, thin sticks and unions of them, some with holes),
each moved by its own homography (translation, rotation, scale, stretch, shear, perspective). The background
homography models camera motion; foreground layers move relative to it. Everything is generated on the fly, so
training and evaluation need no download.

Geometry (pixel centres at integer coordinates, ``x`` = column, ``y`` = row, as in ``core.utils.geometry``):

* every layer has a texture (RGB + coverage alpha) and a placement ``P`` (texture -> frame 1);
* its motion ``M`` (frame 1 -> frame 2) gives the frame-2 placement ``M @ P``;
* both frames are rendered by inverse mapping (``cv2.warpPerspective``, bilinear) and painted far to near;
* the flow of frame 1 at ``p`` is ``M_L(p) - p`` for the layer ``L`` visible at ``p`` (exact), so backward-warping
  frame 2 by the flow reproduces frame 1 on pixels that stay visible, up to interpolation and rounding;
* each layer has a planar depth (metres) whose range is kept apart from its neighbours' ranges, so nearer layers
  are nearer at every pixel and the painter's order is the z-buffer order; the depth map is that of frame 1.

Monocular depth cues (``depth_cues=True``, off by default): the layers' depths above are random and nothing in one
image tells them, so a monocular depth network cannot learn them. With the cues on, frame 1 is a view of a world
instead: a camera at a random height, focal length, pitch (horizon row) and roll looks over a ground plane, whose
disparity is linear in the image (``1 / z = distance below the horizon line / (focal * camera height)``), under a
sky at the farthest depth. The ground texture is a top-down texture seen through that perspective (so its detail
shrinks towards the horizon; a mip-map keeps it from aliasing; only the near ground shows a fine grain), foreground
layers are upright billboards standing on the ground (their depth is that of the ground where their lowest pixel
touches it, lower in the image = nearer; a quarter float nearer than that, like birds or signs) with an image size
of ``focal * extent / depth`` for a random metric extent and a texture whose detail scales with depth, and aerial
perspective fades everything towards the sky's haze colour with depth. Only what the layers look like and their
depths change: motions, rendering, flow and occlusions work exactly as in the layered scenes.

A coverage alpha is thresholded at one half, so layer edges are hard and the flow is single-valued at every pixel.
Textures are smoothed (Gaussian, sigma ``TEXTURE_BLUR_SIGMA`` px) so that bilinear resampling is nearly exact.
Photometric effects (per-layer motion blur, sensor noise, brightness/contrast change between the frames) are off
by default (``photometric=0``) so that the ground truth is photometrically exact; colour augmentation is the
augmentor's job.

Randomness: one ``numpy.random.Generator`` per sample, seeded by ``SeedSequence(seed, spawn_key=(stream, index))``,
so a sample depends only on ``(seed, stream, index)`` and never on call order, process or worker.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch
from loguru import logger
from torch.utils.data import Dataset

__all__ = [
    "IMAGE_SUFFIXES",
    "STREAMS",
    "SceneParams",
    "SyntheticFlowDataset",
    "find_texture_images",
    "texture_folder_groups",
    "render_pair",
]

STREAMS = {"train": 0, "val": 1}  # seed streams: the same index in two streams gives unrelated samples
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
TEXTURE_BLUR_SIGMA = 1.0  # px; band-limits textures so that bilinear resampling of them is close to exact
ALPHA_THRESHOLD = 128  # a pixel belongs to a layer where its resampled coverage is at least one half
_MAX_BLUR_LENGTH = 21.0  # px, longest motion-blur streak


@dataclass(frozen=True)
class SceneParams:
    """Knobs of the generator (all have defaults; ``render_pair(**params)`` fills this).

    Attributes:
        max_displacement: largest flow magnitude in pixels (checked on a 3x3 grid over every layer's visible
            extent, corners included, so it holds exactly for affine motion and closely under perspective).
        num_layers: (min, max) number of foreground layers; ``difficulty`` moves the upper end of the draw.
        difficulty: 0 (easy) .. 1 (hard). Scales the number of layers, the motion ranges (translation, rotation,
            scale, stretch, shear, perspective), compound shapes, holes, thin structures and low-contrast textures.
            Every draw is uniform below its bound, so a hard setting still contains easy samples.
        photometric: 0 (off, exact ground truth) .. 1. Strength of per-layer motion blur, sensor noise and a
            brightness/contrast change of frame 2.
        depth_range: (nearest, farthest) depth in metres.
        size_depth_coupling: exponent ``g`` of the size cue of the layered scenes, layer radius ~ (z_ref / z) ** g
            (not used with ``depth_cues``, whose layers have the perspective size ``focal * extent / z``).
        depth_cues: render a ground plane under a sky, standing objects, texture gradients and haze, so that depth
            can be learnt from one image (see the module docstring); False gives the layered scenes.
        texture_paths: image files used as textures (see ``find_texture_images``); empty = procedural only.
        texture_image_prob: probability that a layer uses an image texture when ``texture_paths`` is given.
        texture_groups: empty (every image of ``texture_paths`` is drawn equally often) or groups of indices into
            ``texture_paths`` covering each image once (a group is drawn uniformly, then an image within it); see
            ``texture_folder_groups``.
        dead_leaves: probability that a procedural pattern is a dead-leaves pattern (opaque shapes of all sizes
            painted over each other: sharp edges at every scale, as in photographs); 0 leaves the other patterns
            and their random draws exactly as they are.
    """

    max_displacement: float = 64.0
    num_layers: tuple[int, int] = (3, 8)
    difficulty: float = 1.0
    photometric: float = 0.0
    depth_range: tuple[float, float] = (1.0, 80.0)
    size_depth_coupling: float = 0.5
    texture_paths: tuple[str, ...] = field(default=())
    texture_image_prob: float = 0.5
    texture_groups: tuple[tuple[int, ...], ...] = field(default=())
    depth_cues: bool = False
    dead_leaves: float = 0.0

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "num_layers", tuple(int(n) for n in self.num_layers))
            object.__setattr__(self, "depth_range", tuple(float(z) for z in self.depth_range))
        except (TypeError, ValueError):
            raise ValueError(f"num_layers and depth_range must be pairs of numbers, got {self.num_layers!r} and "
                             f"{self.depth_range!r}") from None
        if isinstance(self.texture_paths, (str, Path)):
            raise ValueError(f"texture_paths must be a sequence of image paths, got one path {self.texture_paths!r}")
        object.__setattr__(self, "texture_paths", tuple(str(p) for p in self.texture_paths))
        try:
            groups = tuple(tuple(group) for group in self.texture_groups)
        except TypeError:
            raise ValueError(f"texture_groups must be groups of image indices, got {self.texture_groups!r}") from None
        if any(not isinstance(i, (int, np.integer)) for group in groups for i in group):
            raise ValueError(f"texture_groups must hold integer indices, got {groups!r}")
        groups = tuple(tuple(int(i) for i in group) for group in groups)
        if groups and (not all(groups) or sorted(i for group in groups for i in group)
                       != list(range(len(self.texture_paths)))):
            raise ValueError(f"texture_groups must hold every index of the {len(self.texture_paths)} texture_paths "
                             f"exactly once, in non-empty groups; got {groups!r}")
        object.__setattr__(self, "texture_groups", groups)
        if not self.max_displacement > 0:
            raise ValueError(f"max_displacement must be > 0 pixels, got {self.max_displacement}")
        low, high = self.num_layers if len(self.num_layers) == 2 else (-1, -1)
        if not 0 <= low <= high <= 254:
            raise ValueError(f"num_layers must be (min, max) with 0 <= min <= max <= 254, got {self.num_layers}")
        for name in ("difficulty", "photometric", "texture_image_prob", "dead_leaves"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if len(self.depth_range) != 2 or not 0 < self.depth_range[0] < self.depth_range[1]:
            raise ValueError(f"depth_range must be (near, far) with 0 < near < far metres, got {self.depth_range}")
        if self.size_depth_coupling < 0:
            raise ValueError(f"size_depth_coupling must be >= 0, got {self.size_depth_coupling}")
        if not isinstance(self.depth_cues, (bool, np.bool_)):
            raise ValueError(f"depth_cues must be True or False, got {self.depth_cues!r}")


@dataclass
class _Layer:
    """One rigid-in-the-image layer: texture, frame-1 placement, motion, planar depth, border handling.

    ``depth_plane = (v0, gx, gy, x0, y0)`` is the plane ``v = v0 + gx (x - x0) + gy (y - y0)`` over frame-1 pixels:
    the depth in metres, or with ``disparity_plane`` the inverse depth (a 3-D plane seen by a pinhole camera), whose
    depth ``1 / v`` is capped at ``max_depth`` (the horizon and the sky beyond it).
    """

    texture: np.ndarray  # [h, w, 4] uint8 RGB + coverage alpha (0..255), or [h, w, 3] for an opaque layer
    placement: np.ndarray  # [3, 3] texture -> frame 1
    motion: np.ndarray  # [3, 3] frame 1 -> frame 2
    depth_plane: tuple[float, float, float, float, float]
    border: int  # cv2 border mode for sampling outside the texture
    blur_kernel: np.ndarray | None = None  # motion-blur kernel applied to the layer's colour in both frames
    disparity_plane: bool = False
    max_depth: float = math.inf

    def depth_at(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        v0, gx, gy, x0, y0 = self.depth_plane
        value = v0 + gx * (xs - x0) + gy * (ys - y0)
        return 1.0 / np.maximum(value, 1.0 / self.max_depth) if self.disparity_plane else value


# ------------------------------------------------------------------------------------------- homographies
def _translation(tx: float, ty: float) -> np.ndarray:
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def _apply(homography: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map points [N, 2] (x, y); returns (mapped [N, 2], homogeneous denominators [N])."""
    mapped = points @ homography[:2, :2].T + homography[:2, 2]
    denominator = points @ homography[2, :2] + homography[2, 2]
    return mapped / denominator[:, None], denominator


def _rect_corners(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def _rect_grid(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Corners, edge midpoints and centre of a rectangle, [9, 2]."""
    xs, ys = [x0, 0.5 * (x0 + x1), x1], [y0, 0.5 * (y0 + y1), y1]
    return np.array([[x, y] for y in ys for x in xs], dtype=np.float64)


@dataclass(frozen=True)
class _MotionDraw:
    """Raw motion parameters about a centre; ``matrix(alpha)`` shrinks all of them towards the identity."""

    centre: tuple[float, float]
    translation: tuple[float, float]
    rotation: float  # radians
    log_scale: float
    log_stretch: float  # log of the x/y aspect change
    shear: float
    perspective: tuple[float, float]  # last-row entries in centred coordinates (1/px)

    def matrix(self, alpha: float) -> np.ndarray:
        cos, sin = math.cos(alpha * self.rotation), math.sin(alpha * self.rotation)
        sx = math.exp(alpha * (self.log_scale + 0.5 * self.log_stretch))
        sy = math.exp(alpha * (self.log_scale - 0.5 * self.log_stretch))
        linear = np.array([[cos, -sin], [sin, cos]]) @ np.array([[sx, alpha * self.shear], [0.0, sy]])
        centred = np.eye(3)
        centred[:2, :2] = linear
        centred[:2, 2] = alpha * np.asarray(self.translation)
        centred[2, :2] = alpha * np.asarray(self.perspective)
        cx, cy = self.centre
        return _translation(cx, cy) @ centred @ _translation(-cx, -cy)


def _draw_motion(
    rng: np.random.Generator, centre: tuple[float, float], half_extent: float, camera: bool, p: SceneParams
) -> _MotionDraw:
    """Sample motion parameters. Bounds grow with difficulty; translation magnitudes are skewed to small values."""
    d = p.difficulty
    if camera:
        max_translation, max_rotation = 0.6 * p.max_displacement, math.radians(1.0 + 4.0 * d)
        max_log_scale, max_stretch, max_shear, max_perspective = 0.02 + 0.08 * d, 0.03 * d, 0.03 * d, 0.1 * d
    else:
        max_translation, max_rotation = (0.3 + 0.7 * d) * p.max_displacement, math.radians(5.0 + 25.0 * d)
        max_log_scale, max_stretch, max_shear, max_perspective = 0.05 + 0.15 * d, 0.1 * d, 0.1 * d, 0.05 + 0.25 * d
    magnitude = max_translation * rng.random() ** 1.5
    direction = rng.uniform(0.0, 2.0 * math.pi)
    perspective_angle = rng.uniform(0.0, 2.0 * math.pi)
    perspective = max_perspective * rng.random() / max(half_extent, 1.0)
    return _MotionDraw(
        centre=centre,
        translation=(magnitude * math.cos(direction), magnitude * math.sin(direction)),
        rotation=max_rotation * rng.uniform(-1.0, 1.0),
        log_scale=max_log_scale * rng.uniform(-1.0, 1.0),
        log_stretch=max_stretch * rng.uniform(-1.0, 1.0),
        shear=max_shear * rng.uniform(-1.0, 1.0),
        perspective=(perspective * math.cos(perspective_angle), perspective * math.sin(perspective_angle)),
    )


def _bounded_motion(
    draw: _MotionDraw, base: np.ndarray, check_points: np.ndarray, corners: np.ndarray, max_displacement: float
) -> np.ndarray:
    """``draw.matrix(alpha) @ base`` with the largest alpha in [0, 1] (bisection) that keeps the displacement of
    ``check_points`` within ``max_displacement`` and the homogeneous denominator at ``corners`` above one half."""

    def acceptable(alpha: float) -> bool:
        homography = draw.matrix(alpha) @ base
        moved, _ = _apply(homography, check_points)
        _, denominators = _apply(homography, corners)
        return bool(
            np.all(np.linalg.norm(moved - check_points, axis=1) <= max_displacement) and np.all(denominators > 0.5)
        )

    if acceptable(1.0):
        return draw.matrix(1.0) @ base
    low, high = 0.0, 1.0
    for _ in range(8):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if acceptable(middle) else (low, middle)
    return draw.matrix(low) @ base


# ------------------------------------------------------------------------------------------- textures
def _normalise(values: np.ndarray) -> np.ndarray:
    """Stretch a float32 field linearly to [0, 1] (a constant field becomes 0)."""
    return cv2.normalize(values, None, 0.0, 1.0, cv2.NORM_MINMAX)


def _smooth_noise(
    rng: np.random.Generator, height: int, width: int, coarse_cell: float, fine_cell: float, persistence: float
) -> np.ndarray:
    """Fractal value noise [H, W] float32 in [0, 1], built coarse to fine.

    Random grids of spacing ``coarse_cell``, ``coarse_cell / 2``, ... (down to about ``fine_cell`` px) are summed
    with weights ``persistence ** octave``; each coarser sum is upsampled by a Gaussian pyramid step
    (``cv2.pyrUp``) and the finest grid is resized to the image bilinearly. ``persistence = 0`` gives one octave.
    """
    octaves = max(1, math.floor(math.log2(max(coarse_cell / fine_cell, 1.0))) + 1)
    finest = coarse_cell / 2 ** (octaves - 1)
    rows, cols = math.ceil(height / finest) + 2, math.ceil(width / finest) + 2
    factor = 2 ** (octaves - 1)
    total = rng.random((math.ceil(rows / factor) + 1, math.ceil(cols / factor) + 1), dtype=np.float32)
    amplitude = 1.0
    for _ in range(octaves - 1):
        total = cv2.pyrUp(total)
        amplitude *= persistence
        if amplitude > 0:
            total += amplitude * rng.random(total.shape, dtype=np.float32)
    field = cv2.resize(total[:rows, :cols], (width, height), interpolation=cv2.INTER_LINEAR)
    return _normalise(field)


def _fractal_noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Fractal noise from about image scale down to 2..8 px, in [0, 1]."""
    coarse = max(height, width) / rng.uniform(0.5, 3.0)
    return _smooth_noise(rng, height, width, coarse, rng.uniform(1.5, 6.0), rng.uniform(0.5, 0.9))


def _sharpen(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Map a wave in [-1, 1] to [0, 1], from sinusoidal (gain 1) towards square (gain 4, clipped)."""
    gain = rng.uniform(1.0, 4.0)
    return np.clip(wave * (0.5 * gain) + 0.5, 0.0, 1.0)


DEAD_LEAVES_MIN_RADIUS = 3.0  # px, smallest leaf (texture blur and resampling would wash out smaller ones)
DEAD_LEAVES_COVERAGE = 2.5  # expected number of leaves over each pixel (so that little of the first level shows)
DEAD_LEAVES_MAX_COUNT = 4000  # bound on the leaves of one pattern (rendering time)


def _dead_leaves(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Dead-leaves pattern [H, W] float32 in [0, 1] (Lee, Mumford and Huang, 2001).

    Opaque discs, rotated ellipses and rotated rectangles of uniform random grey levels are painted over each other,
    later ones on top. Their radii follow the scale-invariant density ``p(r) ~ r^-3`` between
    ``DEAD_LEAVES_MIN_RADIUS`` and a third of the pattern's longer side, so the pattern has occluding edges and
    corners at every scale and a power-law spectrum, like photographs of cluttered scenes. Edges are drawn aliased;
    the texture blur of :func:`_texture` band-limits them.
    """
    r_min, r_max = DEAD_LEAVES_MIN_RADIUS, max(DEAD_LEAVES_MIN_RADIUS + 1.0, max(height, width) / 3.0)
    mean_area = 2.0 * math.pi * r_min**2 * math.log(r_max / r_min)  # E[pi r^2] under p(r) ~ r^-3 (r_max >> r_min)
    count = int(min(DEAD_LEAVES_MAX_COUNT, math.ceil(DEAD_LEAVES_COVERAGE * height * width / mean_area)))
    radii = (r_min**-2 - rng.random(count) * (r_min**-2 - r_max**-2)) ** -0.5  # inverse CDF of p(r) ~ r^-3
    centres = rng.uniform((-0.1 * width, -0.1 * height), (1.1 * width, 1.1 * height), (count, 2))
    minor = radii * rng.uniform(0.3, 1.0, count)
    angles = rng.uniform(0.0, math.pi, count)
    kinds = rng.choice(3, count, p=[0.4, 0.2, 0.4])  # disc, ellipse, rectangle
    levels = rng.integers(0, 256, count).tolist()
    cos, sin = np.cos(angles), np.sin(angles)
    half_axes = np.stack([radii, minor], axis=1)[:, None, :] * np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]])
    corners = centres[:, None, :] + np.stack([half_axes[..., 0] * cos[:, None] - half_axes[..., 1] * sin[:, None],
                                              half_axes[..., 0] * sin[:, None] + half_axes[..., 1] * cos[:, None]], -1)
    corners = np.round(corners).astype(np.int32)
    centre_px = np.round(centres).astype(int).tolist()
    axes_px = np.maximum(1, np.round(np.stack([radii, minor], axis=1))).astype(int).tolist()
    degrees = np.degrees(angles).tolist()
    canvas = np.full((height, width), rng.integers(0, 256), np.uint8)
    for i, kind in enumerate(kinds.tolist()):
        if kind == 0:
            cv2.circle(canvas, centre_px[i], axes_px[i][0], levels[i], -1)
        elif kind == 1:
            cv2.ellipse(canvas, centre_px[i], axes_px[i], degrees[i], 0.0, 360.0, levels[i], -1)
        else:
            cv2.fillConvexPoly(canvas, corners[i], levels[i])
    return canvas.astype(np.float32) / 255.0


def _scalar_field(rng: np.random.Generator, height: int, width: int, dead_leaves: float = 0.0) -> np.ndarray:
    """One procedural pattern [H, W] float32 in [0, 1]: with probability ``dead_leaves`` a dead-leaves pattern,
    else fractal noise, stripes, checkers, gradient or patches."""
    if dead_leaves > 0.0 and rng.random() < dead_leaves:
        return _dead_leaves(rng, height, width)
    kind = rng.choice(5, p=[0.4, 0.15, 0.1, 0.15, 0.2])
    if kind == 0:
        return _fractal_noise(rng, height, width)
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    angle = rng.uniform(0.0, math.pi)
    u = xs * math.cos(angle) + ys * math.sin(angle)
    v = ys * math.cos(angle) - xs * math.sin(angle)
    if kind == 1:  # stripes, optionally wobbling with noise
        period = rng.uniform(6.0, max(8.0, 0.5 * max(height, width)))
        wobble = rng.uniform(0.0, 3.0) * _smooth_noise(rng, height, width, rng.uniform(16.0, 128.0), 4.0, 0.0)
        return _sharpen(np.sin(2.0 * math.pi * u / period + wobble), rng).astype(np.float32)
    if kind == 2:  # checkers
        period = rng.uniform(8.0, max(10.0, 0.4 * max(height, width)))
        wave = np.sin(2.0 * math.pi * u / period) * np.sin(2.0 * math.pi * v / (period * rng.uniform(0.5, 2.0)))
        return _sharpen(wave, rng).astype(np.float32)
    if kind == 3:  # linear or radial gradient
        if rng.random() < 0.5:
            return _normalise(u + np.zeros_like(v))
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        return _normalise(np.sqrt((ys - cy) ** 2 + (xs - cx) ** 2))
    return _sharpen(2.0 * _fractal_noise(rng, height, width) - 1.0, rng).astype(np.float32)  # patches


def _colourise(rng: np.random.Generator, height: int, width: int, dead_leaves: float = 0.0) -> np.ndarray:
    """A colour pattern [H, W, 3] float32 in about [0, 255]: a random palette over one field, or a random linear
    mix of one to three fields (each a dead-leaves pattern with probability ``dead_leaves``)."""
    if rng.random() < 0.5:
        stops = np.sort(rng.random(rng.integers(2, 6)))
        colours = rng.uniform(0.0, 255.0, (stops.size, 3))
        levels = np.linspace(0.0, 1.0, 256)
        lut = np.stack([np.interp(levels, stops, colours[:, c]) for c in range(3)], axis=1)
        level = cv2.convertScaleAbs(_scalar_field(rng, height, width, dead_leaves), alpha=255.0)
        return cv2.LUT(cv2.merge([level] * 3), np.round(lut).astype(np.uint8)[:, None]).astype(np.float32)
    fields = cv2.merge([_scalar_field(rng, height, width, dead_leaves) for _ in range(rng.integers(1, 4))])
    mixing = rng.normal(0.0, 120.0, (3, fields.shape[-1] if fields.ndim == 3 else 1))
    offset = rng.uniform(40.0, 215.0, (3, 1)) - 0.5 * mixing.sum(axis=1, keepdims=True)
    return cv2.transform(fields.reshape(height, width, -1), np.hstack([mixing, offset]).astype(np.float32))


def _image_texture(rng: np.random.Generator, path: str, height: int, width: int) -> np.ndarray:
    """A random crop [H, W, 3] float32 of an image file, rescaled by a random factor, maybe flipped."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"texture image {path} cannot be read as an image")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    scale = max(height / image.shape[0], width / image.shape[1]) * rng.uniform(1.0, 2.0)
    size = (max(width, round(image.shape[1] * scale)), max(height, round(image.shape[0] * scale)))
    image = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    top, left = rng.integers(0, image.shape[0] - height + 1), rng.integers(0, image.shape[1] - width + 1)
    crop = image[top : top + height, left : left + width]
    return (crop[:, ::-1] if rng.random() < 0.5 else crop).astype(np.float32)


def _texture(rng: np.random.Generator, height: int, width: int, p: SceneParams, detail: float = 1.0) -> np.ndarray:
    """A layer texture [H, W, 3] uint8: procedural (maybe a mixture of two) or from an image; band-limited.

    ``detail`` is the number of pattern pixels drawn per texture pixel: the pattern is made at ``detail`` times the
    size and resized, so ``detail > 1`` gives finer structure (a farther surface) and ``detail < 1`` coarser; the
    fine grain is added at the texture's own size either way.
    """
    rows, cols = (height, width) if detail == 1.0 else (max(1, round(height * detail)), max(1, round(width * detail)))
    if p.texture_paths and rng.random() < p.texture_image_prob:
        if p.texture_groups:
            group = p.texture_groups[rng.integers(len(p.texture_groups))]
            index = group[rng.integers(len(group))]
        else:  # the draw of configs without groups, unchanged
            index = rng.integers(len(p.texture_paths))
        colour = _image_texture(rng, p.texture_paths[index], rows, cols)
    else:
        colour = _colourise(rng, rows, cols, p.dead_leaves)
        if rng.random() < 0.3:
            blend = _sharpen(2.0 * _fractal_noise(rng, rows, cols) - 1.0, rng)[..., None]
            colour = blend * colour + (1.0 - blend) * _colourise(rng, rows, cols, p.dead_leaves)
    if (rows, cols) != (height, width):
        colour = cv2.resize(colour, (width, height), interpolation=cv2.INTER_AREA if detail > 1 else cv2.INTER_LINEAR)
    if rng.random() < 0.6:  # fine grain, as in photographs
        grain = _smooth_noise(rng, height, width, rng.uniform(4.0, 16.0), rng.uniform(1.5, 3.0), rng.uniform(0.5, 1.0))
        colour = colour + rng.uniform(10.0, 60.0) * (grain - 0.5)[..., None]
    if rng.random() < 0.15 * p.difficulty:  # nearly textureless surfaces are the hard case for matching
        mean = colour.mean(axis=(0, 1))
        colour = mean + rng.uniform(0.05, 0.3) * (colour - mean)
    colour = np.clip(colour, 0.0, 255.0).astype(np.uint8)
    return cv2.GaussianBlur(colour, (0, 0), TEXTURE_BLUR_SIGMA, borderType=cv2.BORDER_REFLECT_101)


# ------------------------------------------------------------------------------------------- shapes
def _draw_primitive(
    rng: np.random.Generator, canvas: np.ndarray, centre: np.ndarray, radius: float, value: int, thin_prob: float
) -> None:
    """Draw a random polygon, ellipse or (with ``thin_prob``) thin polyline of about ``radius`` px into ``canvas``
    (anti-aliased, sub-pixel accurate)."""
    shift, unit = 4, 16.0  # cv2 sub-pixel drawing: coordinates in 1/16 px
    kind = rng.choice(3, p=[0.6 * (1.0 - thin_prob), 0.4 * (1.0 - thin_prob), thin_prob])
    if kind == 0:
        count = rng.integers(3, 13)
        angles = np.sort(rng.uniform(0.0, 2.0 * math.pi, count))
        radii = radius * rng.uniform(1.0 - rng.uniform(0.0, 0.7), 1.0, count)
        points = centre + radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        cv2.fillPoly(canvas, [np.round(points * unit).astype(np.int32)], value, cv2.LINE_AA, shift)
    elif kind == 1:
        axes = np.round(radius * rng.uniform(0.3, 1.0, 2) * unit).astype(int)
        centre_fixed = np.round(centre * unit).astype(int)
        angle = float(rng.uniform(0.0, 180.0))
        cv2.ellipse(canvas, tuple(centre_fixed.tolist()), tuple(axes.tolist()), angle, 0.0, 360.0, value, -1,
                    cv2.LINE_AA, shift)
    else:
        count = rng.integers(2, 5)
        points = centre + radius * rng.uniform(-0.7, 0.7, (count, 2))
        thickness = max(2, round(radius * rng.uniform(0.03, 0.12)))
        cv2.polylines(canvas, [np.round(points * unit).astype(np.int32)], False, value, thickness, cv2.LINE_AA,
                      shift)


def _shape_alpha(rng: np.random.Generator, size: int, radius: float, difficulty: float) -> np.ndarray:
    """Coverage [size, size] uint8 of a random shape centred in the square: one primitive or a union of a few,
    sometimes with a hole."""
    canvas = np.zeros((size, size), np.uint8)
    centre = np.full(2, (size - 1) / 2.0)
    thin_prob = 0.05 + 0.15 * difficulty
    _draw_primitive(rng, canvas, centre, radius, 255, thin_prob)
    if rng.random() < 0.3 * difficulty:
        for _ in range(rng.integers(1, 3)):
            part = radius * rng.uniform(0.3, 0.6)
            offset = (radius - part) * rng.uniform(-1.0, 1.0, 2) / math.sqrt(2.0)
            _draw_primitive(rng, canvas, centre + offset, part, 255, thin_prob)
    if rng.random() < 0.15 * difficulty:
        hole = radius * rng.uniform(0.15, 0.4)
        _draw_primitive(rng, canvas, centre + (radius - hole) * rng.uniform(-0.5, 0.5, 2), hole, 0, 0.0)
    return canvas


# ------------------------------------------------------------------------------------------- scene
def _layer_depths(rng: np.random.Generator, count: int, p: SceneParams) -> tuple[np.ndarray, np.ndarray]:
    """Base depths, far to near (index 0 = background), and the largest planar deviation each may have so that
    depth ranges of different layers never overlap and all stay inside ``depth_range``."""
    near, far = p.depth_range
    background = far * math.exp(-rng.uniform(0.05, 1.4))
    background = max(background, near * 1.2)
    foreground = np.exp(rng.uniform(math.log(near), math.log(max(near, 0.85 * background)), count))
    depths = np.concatenate([[background], np.sort(foreground)[::-1]])
    gaps = np.abs(np.diff(depths))
    slack = np.full(depths.size, np.inf)
    slack[:-1] = np.minimum(slack[:-1], gaps)
    slack[1:] = np.minimum(slack[1:], gaps)
    slack = np.minimum(0.45 * slack, 0.5 * depths)
    slack[0] = min(slack[0], 0.3 * depths[0], far - depths[0])
    slack[-1] = min(slack[-1], depths[-1] - near)
    return depths, slack


def _depth_plane(
    rng: np.random.Generator, depth: float, slack: float, centre: tuple[float, float], half: tuple[float, float],
    difficulty: float,
) -> tuple[float, float, float, float, float]:
    """A plane through ``depth`` at ``centre`` whose deviation over the half-extent ``half`` is at most ``slack``."""
    deviation = slack * rng.random() * (0.3 + 0.7 * difficulty)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    reach = abs(math.cos(angle)) * half[0] + abs(math.sin(angle)) * half[1]
    slope = deviation / max(reach, 1.0)
    return depth, slope * math.cos(angle), slope * math.sin(angle), centre[0], centre[1]


def _layer_motion(
    rng: np.random.Generator, camera: np.ndarray, centre: tuple[float, float], half: float, height: int, width: int,
    p: SceneParams,
) -> np.ndarray:
    """Frame 1 -> frame 2 motion of a foreground layer whose texture square (half-size ``half`` px) is centred at
    ``centre`` in frame 1: the camera motion, then the layer's own, shrunk to respect ``max_displacement``."""
    rect = (centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half)
    visible = (max(rect[0], 0), max(rect[1], 0), min(rect[2], width - 1), min(rect[3], height - 1))
    moved_centre = tuple(_apply(camera, np.array([centre]))[0][0])
    return _bounded_motion(
        _draw_motion(rng, moved_centre, half, False, p), camera, _rect_grid(*visible), _rect_corners(*rect),
        p.max_displacement,
    )


def _layer_count(rng: np.random.Generator, p: SceneParams) -> int:
    """Number of foreground layers: uniform in ``num_layers``, its upper end scaled down by ``difficulty``."""
    low, high = p.num_layers
    return int(rng.integers(low, low + round(p.difficulty * (high - low)) + 1))


def _background_frame(
    rng: np.random.Generator, height: int, width: int, p: SceneParams
) -> tuple[int, np.ndarray, np.ndarray]:
    """The background's margin (px), placement (texture -> frame 1) and the camera motion (frame 1 -> frame 2)."""
    image_corners = _rect_corners(0, 0, width - 1, height - 1)
    image_grid = _rect_grid(0, 0, width - 1, height - 1)
    margin = math.ceil(min(p.max_displacement, 0.1 * max(height, width)))
    offset = rng.random(2)  # sub-pixel placement, so frame 1 is resampled like frame 2
    placement = _translation(-margin - offset[0], -margin - offset[1])
    camera_centre = (rng.uniform(0, width - 1), rng.uniform(0, height - 1))
    camera = _bounded_motion(
        _draw_motion(rng, camera_centre, 0.5 * max(height, width), True, p),
        np.eye(3), image_grid, image_corners, p.max_displacement,
    )
    return margin, placement, camera


def _sample_scene(rng: np.random.Generator, height: int, width: int, p: SceneParams) -> list[_Layer]:
    """Background + foreground layers in painter's order (far to near), each with texture, placement, motion."""
    count = _layer_count(rng, p)
    depths, slack = _layer_depths(rng, count, p)
    margin, background_placement, camera = _background_frame(rng, height, width, p)
    image_centre = ((width - 1) / 2.0, (height - 1) / 2.0)
    layers = [
        _Layer(
            texture=_texture(rng, height + 2 * margin + 1, width + 2 * margin + 1, p),
            placement=background_placement,
            motion=camera,
            depth_plane=_depth_plane(rng, depths[0], slack[0], image_centre, image_centre, p.difficulty),
            border=cv2.BORDER_REFLECT_101,
        )
    ]

    reference_depth = math.sqrt(p.depth_range[0] * depths[0])
    for depth, depth_slack in zip(depths[1:], slack[1:]):
        size_cue = min(1.8, max(0.6, (reference_depth / depth) ** p.size_depth_coupling))
        radius = max(1.5, math.exp(rng.uniform(math.log(0.1), math.log(0.5))) * min(height, width) * size_cue)
        size = math.ceil(2.0 * radius) + 4
        texture_centre = (size - 1) / 2.0
        centre = (rng.uniform(0, width - 1), rng.uniform(0, height - 1))
        placement = _translation(centre[0] - texture_centre, centre[1] - texture_centre)
        half = size / 2.0
        motion = _layer_motion(rng, camera, centre, half, height, width, p)
        layers.append(
            _Layer(
                texture=cv2.merge([_texture(rng, size, size, p), _shape_alpha(rng, size, radius, p.difficulty)]),
                placement=placement,
                motion=motion,
                depth_plane=_depth_plane(rng, depth, depth_slack, centre, (half, half), p.difficulty),
                border=cv2.BORDER_CONSTANT,
            )
        )
    return layers


# ------------------------------------------------------------------------------------------- monocular depth cues
_GROUND_TEXTURE_SIZE = 256  # px, side of the top-down ground texture (mirrored beyond it)
_GROUND_MIP_LEVELS = 5  # pyramid levels of the ground texture (minification up to 2 ** 5)
_FLOATING_PROB = 0.25  # share of objects that float nearer than the ground under them
_OBJECT_EXTENT = (0.3, 2.0)  # metres, range of an object's size (log-uniform)
_OBJECT_MAX_DEPTH = 0.6  # objects stand on the ground up to this fraction of the far depth


@dataclass(frozen=True)
class _GroundCamera:
    """A pinhole camera of focal length ``focal`` (px) at some height above a ground plane, rolled by ``roll``
    (radians), whose horizon passes through frame-1 pixel (``centre_x``, ``horizon_y``). With ``a`` a pixel's
    coordinate along the horizon line and ``b`` its distance below it, the ground seen there lies ``z = scale / b``
    metres ahead (``scale`` = focal length * camera height, px m) and ``a * z / focal`` metres to the side."""

    focal: float  # px
    scale: float  # px m
    centre_x: float
    horizon_y: float
    roll: float

    @property
    def level_from_image(self) -> np.ndarray:
        """[3, 3] frame-1 pixel (x, y, 1) -> (a, b, 1)."""
        cos, sin = math.cos(self.roll), math.sin(self.roll)
        rotation = np.array([[cos, sin, 0.0], [-sin, cos, 0.0], [0.0, 0.0, 1.0]])
        return rotation @ _translation(-self.centre_x, -self.horizon_y)

    def disparity(self, xs: np.ndarray | float, ys: np.ndarray | float) -> np.ndarray | float:
        """Inverse depth (1/m) of the ground plane at frame-1 pixels; <= 0 above the horizon."""
        return ((ys - self.horizon_y) * math.cos(self.roll) - (xs - self.centre_x) * math.sin(self.roll)) / self.scale

    def disparity_plane(self) -> tuple[float, float, float, float, float]:
        """The ground's inverse depth as a ``_Layer.depth_plane``."""
        cos, sin = math.cos(self.roll), math.sin(self.roll)
        return 0.0, -sin / self.scale, cos / self.scale, self.centre_x, self.horizon_y

    def row_at(self, x: float, disparity: float) -> float:
        """Frame-1 row where the ground has ``disparity`` in column ``x``."""
        return self.horizon_y + (disparity * self.scale + (x - self.centre_x) * math.sin(self.roll)) / math.cos(
            self.roll)


@dataclass(frozen=True)
class _Haze:
    """Aerial perspective: a surface ``z`` metres away is mixed with ``colour`` by the weight
    ``strength * (1 - exp(-z / range))``."""

    colour: np.ndarray  # [3] float32 RGB, also the sky's colour at the horizon
    range: float  # metres
    strength: float

    def weight(self, depth: np.ndarray | float) -> np.ndarray | float:
        return self.strength * (1.0 - np.exp(-np.asarray(depth, np.float32) / self.range))

    def apply(self, colour: np.ndarray, depth: np.ndarray | float) -> np.ndarray:
        """``colour`` [..., 3] uint8 seen through the haze at ``depth`` (a scalar or [...]) -> uint8."""
        weight = np.asarray(self.weight(depth), np.float32)[..., None]
        return cv2.convertScaleAbs(colour + weight * (self.colour - colour))  # rounds and saturates; all >= 0


def _ground_camera(rng: np.random.Generator, height: int, width: int, p: SceneParams) -> _GroundCamera:
    """A random camera: focal 0.8..1.25 image widths, 1.2..2.2 m high, horizon from above the image to 55 % of its
    height, roll up to 4 degrees; the nearest visible ground kept between 1.5 * near and half the far depth."""
    near, far = p.depth_range
    focal = width * rng.uniform(0.8, 1.25)
    camera_height = rng.uniform(1.2, 2.2)
    horizon_y = (height - 1) * rng.uniform(-0.15, 0.55)
    roll = math.radians(4.0) * rng.uniform(-1.0, 1.0)
    centre_x = (width - 1) / 2.0
    lowest = max(((height - 1 - horizon_y) * math.cos(roll) - (x - centre_x) * math.sin(roll)) for x in (0, width - 1))
    lowest = max(lowest, 0.5)  # distance of the nearest image corner below the horizon (px)
    scale = min(max(focal * camera_height, 1.5 * near * lowest), 0.5 * far * lowest)
    return _GroundCamera(focal=focal, scale=scale, centre_x=centre_x, horizon_y=horizon_y, roll=roll)


def _sky_and_haze(rng: np.random.Generator) -> tuple[_Haze, np.ndarray]:
    """The haze (its colour is the sky's at the horizon) and the sky's colour at the zenith, float32 RGB."""
    horizon = np.clip(rng.uniform(140.0, 235.0) + rng.normal(0.0, 12.0, 3), 0.0, 255.0)
    zenith = np.clip(horizon * rng.uniform(0.35, 0.9) + rng.normal(0.0, 25.0, 3) + [0.0, 10.0, 40.0], 0.0, 255.0)
    haze = _Haze(colour=horizon.astype(np.float32), range=float(rng.uniform(20.0, 120.0)),
                 strength=float(rng.uniform(0.5, 1.0)))
    return haze, zenith.astype(np.float32)


def _ground_texture(
    rng: np.random.Generator, camera: _GroundCamera, placement: np.ndarray, rows: int, cols: int,
    texels_per_metre: float, haze: _Haze, zenith: np.ndarray, p: SceneParams,
) -> np.ndarray:
    """The background texture [rows, cols, 3] uint8 (mapped to frame 1 by ``placement``): the ground plane seen in
    perspective, hazy with distance, and the sky beyond the far depth.

    The ground is a top-down texture of ``texels_per_metre`` texels per metre (mirrored beyond its edges), mapped by
    the plane's homography and read from the mip level that matches the local minification (blending the two
    nearest levels); an image-space grain, fading beyond the depth where the texture stops being magnified, gives
    the near ground the fine detail that only near surfaces show. The roll is small, so every column has sky above
    and ground below: the ground rows are a band at the bottom and the sky rows a band at the top."""
    far = p.depth_range[1]
    side = _GROUND_TEXTURE_SIZE
    top_down = _texture(rng, side, side, p)
    shift = rng.uniform(0.0, side, 2).astype(np.float32)
    steepness = rng.uniform(1.0, 5.0)  # of the sky's gradient from the horizon colour to the zenith colour
    to_level = (camera.level_from_image @ placement).astype(np.float32)  # texture pixel -> (a, b, 1), see camera
    us = np.arange(cols, dtype=np.float32)[None, :]
    vs = np.arange(rows, dtype=np.float32)[:, None]
    below = to_level[1, 0] * us + to_level[1, 1] * vs + to_level[1, 2]  # b: px below the horizon line
    far_line = np.float32(camera.scale / far)  # b of the ground at the far depth; the sky is above it
    ground = below >= far_line
    colour = np.empty((rows, cols, 3), np.uint8)

    first = int(np.argmax(ground.any(axis=1))) if ground.any() else rows
    if first < rows:  # the ground rows
        along = to_level[0, 0] * us + to_level[0, 1] * vs[first:] + to_level[0, 2]
        depth = np.float32(camera.scale) / np.maximum(below[first:], far_line)
        # top-down texel: texels_per_metre * (side offset = a * depth / focal, distance ahead = depth) + shift
        texel_x = np.float32(texels_per_metre / camera.focal) * along * depth + shift[0]
        texel_y = np.float32(texels_per_metre) * depth + shift[1]
        # texels per image pixel across (depth / focal) and along the view (depth^2 / scale), geometric mean
        minification = np.float32(texels_per_metre / math.sqrt(camera.focal * camera.scale)) * depth * np.sqrt(depth)
        level = np.clip(np.log2(np.maximum(minification, 1.0)), 0.0, _GROUND_MIP_LEVELS)
        level_low, level_high = level.min(axis=1), level.max(axis=1)  # each level is read in a band of rows
        blend = np.zeros((rows - first, cols, 3), np.float32)
        mip = top_down
        for index in range(math.ceil(level_high.max()) + 1):
            if index > 0:
                mip = cv2.pyrDown(mip)
            band = np.flatnonzero((level_low < index + 1) & (level_high > index - 1))
            if band.size == 0:
                continue
            band = slice(band[0], band[-1] + 1)
            weight = np.maximum(0.0, 1.0 - np.abs(level[band] - index))[..., None]
            view = cv2.remap(mip, texel_x[band] * 0.5**index, texel_y[band] * 0.5**index, cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REFLECT_101)  # the mirrored tiling
            blend[band] += weight * view
        # fine surface detail that only near ground resolves: grain fading where the texture is no longer magnified
        grain = _smooth_noise(rng, rows - first, cols, rng.uniform(4.0, 12.0), 1.5, rng.uniform(0.5, 1.0)) - 0.5
        fading = np.minimum(np.float32(camera.focal / texels_per_metre) / depth, 1.0)  # 1 up to the texel depth
        blend += np.float32(rng.uniform(10.0, 40.0)) * (fading * grain)[..., None]
        colour[first:] = haze.apply(blend, depth)

    last = rows - int(np.argmax(~ground[::-1].all(axis=1))) if not ground.all() else 0
    if last > 0:  # the sky rows: the horizon colour fading to the zenith colour upwards, and clouds
        height_above = np.maximum(far_line - below[:last], 0.0)
        gradient = 1.0 - np.exp(np.float32(-steepness / max(rows, cols)) * height_above)
        clouds = _smooth_noise(rng, last, cols, rng.uniform(0.3, 1.0) * max(rows, cols), 8.0, 0.5) - 0.5
        sky = haze.colour + gradient[..., None] * (zenith - haze.colour) + np.float32(rng.uniform(0.0, 50.0)) * clouds[
            ..., None]
        np.copyto(colour[:last], cv2.convertScaleAbs(sky), where=~ground[:last, :, None])
    return cv2.GaussianBlur(colour, (0, 0), TEXTURE_BLUR_SIGMA, borderType=cv2.BORDER_REFLECT_101)


def _standing_object(
    rng: np.random.Generator, ground: _GroundCamera, camera: np.ndarray, texel_depth: float, haze: _Haze,
    height: int, width: int, p: SceneParams,
) -> _Layer:
    """A fronto-parallel object standing on the ground (or floating nearer than the ground under it), its image size
    and texture detail set by its depth.

    The object's texel farthest below the horizon line is put on the contact point, so the object touches the ground
    there and, the ground's disparity being linear, is nearer than the ground at every other pixel it covers (its
    depth is the ground's one pixel below the contact: bilinear resampling spreads the coverage by up to a pixel)."""
    near, far = p.depth_range
    contact_x = rng.uniform(0, width - 1)
    # contact depth log-uniform from the bottom of the image (a little below it: objects may be cut off, but stay
    # farther than 1.1 * near) to _OBJECT_MAX_DEPTH * far
    bottom_disparity = ground.disparity(contact_x, (height - 1) + 0.15 * height)
    nearest = max(1.1 * near, 1.0 / bottom_disparity if bottom_disparity > 0 else far)
    farthest = max(nearest, _OBJECT_MAX_DEPTH * far)
    contact_depth = math.exp(rng.uniform(math.log(nearest), math.log(farthest)))
    contact_y = ground.row_at(contact_x, 1.0 / contact_depth)
    depth = contact_depth * rng.uniform(0.4, 0.9) if rng.random() < _FLOATING_PROB else contact_depth
    extent = math.exp(rng.uniform(*np.log(_OBJECT_EXTENT)))
    radius = min(max(1.5, 0.5 * ground.focal * extent / depth), 0.4 * max(height, width))
    size = math.ceil(2.0 * radius) + 4
    alpha = _shape_alpha(rng, size, radius, p.difficulty)
    texel_y, texel_x = np.nonzero(alpha)
    if texel_y.size == 0:  # a shape lost to rounding: the bottom centre of its square stands in for it
        texel_y, texel_x = np.array([size - 1]), np.array([size // 2])
    touching = np.argmax(ground.disparity(texel_x, texel_y))
    left, top = contact_x - texel_x[touching], contact_y - texel_y[touching]
    placement = _translation(left, top)
    pixel_slack = (abs(math.sin(ground.roll)) + math.cos(ground.roll)) / ground.scale  # disparity over 1 px in x and y
    depth = max(near, min(depth, 1.0 / (1.0 / contact_depth + pixel_slack)))
    texture_centre = (size - 1) / 2.0
    centre = (left + texture_centre, top + texture_centre)
    motion = _layer_motion(rng, camera, centre, size / 2.0, height, width, p)
    detail = min(max(depth / texel_depth, 0.25), 4.0)
    colour = haze.apply(_texture(rng, size, size, p, detail), depth)
    return _Layer(
        texture=cv2.merge([colour, alpha]),
        placement=placement,
        motion=motion,
        depth_plane=(depth, 0.0, 0.0, centre[0], centre[1]),
        border=cv2.BORDER_CONSTANT,
    )


def _sample_ground_scene(rng: np.random.Generator, height: int, width: int, p: SceneParams) -> list[_Layer]:
    """A ground plane under a sky plus standing objects, far to near (the monocular depth cues of the module
    docstring); camera and object motions as in :func:`_sample_scene`."""
    count = _layer_count(rng, p)
    margin, background_placement, camera = _background_frame(rng, height, width, p)
    ground = _ground_camera(rng, height, width, p)
    haze, zenith = _sky_and_haze(rng)
    texel_depth = rng.uniform(4.0, 12.0)  # metres at which a texture's pattern appears at its native scale
    rows, cols = height + 2 * margin + 1, width + 2 * margin + 1
    background = _Layer(
        texture=_ground_texture(rng, ground, background_placement, rows, cols, ground.focal / texel_depth, haze,
                                zenith, p),
        placement=background_placement,
        motion=camera,
        depth_plane=ground.disparity_plane(),
        border=cv2.BORDER_REFLECT_101,
        disparity_plane=True,
        max_depth=p.depth_range[1],
    )
    objects = [_standing_object(rng, ground, camera, texel_depth, haze, height, width, p) for _ in range(count)]
    objects.sort(key=lambda layer: -layer.depth_plane[0])
    return [background, *objects]


def _motion_blur_kernel(rng: np.random.Generator, layer: _Layer, strength: float) -> np.ndarray | None:
    """A line kernel along the layer's displacement at its texture centre, length up to a fraction of it."""
    texture_centre = (np.array(layer.texture.shape[1::-1], np.float64) - 1.0) / 2.0
    start, _ = _apply(layer.placement, texture_centre[None])
    end, _ = _apply(layer.motion, start)
    displacement = (end - start)[0]
    length = min(_MAX_BLUR_LENGTH, strength * rng.uniform(0.0, 0.5) * float(np.linalg.norm(displacement)))
    if length < 1.5:
        return None
    size = 2 * math.ceil(length / 2.0) + 1
    kernel = np.zeros((size, size), np.float32)
    half = 0.5 * length * displacement / np.linalg.norm(displacement)
    centre = np.array([(size - 1) / 2.0] * 2)
    unit = 16.0
    cv2.line(kernel, tuple(np.round((centre - half) * unit).astype(int).tolist()),
             tuple(np.round((centre + half) * unit).astype(int).tolist()), 1.0, 1, cv2.LINE_AA, 4)
    return kernel / kernel.sum()


# ------------------------------------------------------------------------------------------- rendering
_Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (end-exclusive) inside the image


def _bounding_box(mapping: np.ndarray, texture_shape: tuple[int, ...], height: int, width: int) -> _Box | None:
    """Integer box (x0, y0, x1, y1), end-exclusive, of the mapped texture rectangle inside the image, or None."""
    corners, _ = _apply(mapping, _rect_corners(-1, -1, texture_shape[1], texture_shape[0]))
    x0, y0 = np.floor(corners.min(axis=0)).astype(int)
    x1, y1 = np.ceil(corners.max(axis=0)).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def _render(
    layers: list[_Layer], frame: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, list[_Box | None], list[np.ndarray | None]]:
    """Paint the layers far to near in frame 0 or 1.

    Returns (image [H, W, 3] uint8, visible layer index [H, W] uint8, per-layer boxes, per-layer coverage masks
    of their boxes).
    """
    image = np.zeros((height, width, 3), np.uint8)
    index = np.zeros((height, width), np.uint8)
    boxes, coverages = [], []
    for k, layer in enumerate(layers):
        mapping = layer.placement if frame == 0 else layer.motion @ layer.placement
        box = (0, 0, width, height) if k == 0 else _bounding_box(mapping, layer.texture.shape, height, width)
        boxes.append(box)
        if box is None:
            coverages.append(None)
            continue
        x0, y0, x1, y1 = box
        inverse = np.linalg.inv(mapping) @ _translation(x0, y0)
        patch = cv2.warpPerspective(
            layer.texture, inverse, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=layer.border, borderValue=(0, 0, 0, 0),
        )
        colour = patch[..., :3]
        if layer.blur_kernel is not None:
            colour = cv2.filter2D(colour, -1, layer.blur_kernel, borderType=cv2.BORDER_REPLICATE)
        if patch.shape[-1] == 3:  # an opaque layer (the background)
            covered = np.ones(patch.shape[:2], bool)
            image[y0:y1, x0:x1] = colour
        else:
            covered = patch[..., 3] >= ALPHA_THRESHOLD
            np.copyto(image[y0:y1, x0:x1], colour, where=covered[..., None])
        index[y0:y1, x0:x1][covered] = k
        coverages.append(covered)
    return image, index, boxes, coverages


def _flow_and_depth(
    layers: list[_Layer], index: np.ndarray, boxes: list[_Box | None]
) -> tuple[np.ndarray, np.ndarray]:
    """Exact flow [H, W, 2] and depth [H, W] of frame 1: each pixel takes the motion and the depth plane of the
    layer that ``index`` says is visible there (that layer's pixels lie inside its frame-1 box)."""
    height, width = index.shape
    grid = np.empty((height, width, 2), np.float32)
    grid[..., 0] = np.arange(width, dtype=np.float32)[None, :]
    grid[..., 1] = np.arange(height, dtype=np.float32)[:, None]
    flow = np.zeros((height, width, 2), np.float32)
    depth = np.zeros((height, width), np.float32)
    for k, (layer, box) in enumerate(zip(layers, boxes)):
        if box is None:
            continue
        x0, y0, x1, y1 = box
        points = grid[y0:y1, x0:x1]
        visible = index[y0:y1, x0:x1] == k
        moved = cv2.perspectiveTransform(points.reshape(-1, 1, 2), layer.motion).reshape(points.shape)
        np.copyto(flow[y0:y1, x0:x1], moved - points, where=visible[..., None])
        np.copyto(depth[y0:y1, x0:x1], layer.depth_at(points[..., 0], points[..., 1]), where=visible)
    return flow, depth


def _occlusion(flow: np.ndarray, index1: np.ndarray, index2: np.ndarray) -> np.ndarray:
    """Frame-1 pixels whose target leaves the image or lands (nearest pixel) on another layer in frame 2."""
    height, width = index1.shape
    target_x = np.arange(width, dtype=np.float32)[None, :] + flow[..., 0]
    target_y = np.arange(height, dtype=np.float32)[:, None] + flow[..., 1]
    inside = (target_x >= 0) & (target_x <= width - 1) & (target_y >= 0) & (target_y <= height - 1)
    column = np.clip(np.rint(target_x), 0, width - 1).astype(np.intp)
    row = np.clip(np.rint(target_y), 0, height - 1).astype(np.intp)
    return ~inside | (index2[row, column] != index1)


def _photometric(
    rng: np.random.Generator, image1: np.ndarray, image2: np.ndarray, strength: float
) -> tuple[np.ndarray, np.ndarray]:
    """Brightness/contrast change of frame 2 and Gaussian sensor noise on both frames."""
    gain = math.exp(rng.normal(0.0, 0.1 * strength)) * np.exp(rng.normal(0.0, 0.03 * strength, 3))
    bias = rng.uniform(-8.0, 8.0) * strength
    frames = [image1.astype(np.float32), image2.astype(np.float32) * gain.astype(np.float32) + bias]
    for k, frame in enumerate(frames):
        sigma = rng.uniform(0.0, 4.0 * strength)
        frames[k] = np.clip(np.rint(frame + rng.normal(0.0, sigma, frame.shape).astype(np.float32)), 0, 255)
    return frames[0].astype(np.uint8), frames[1].astype(np.uint8)


def _make_rng(rng_or_seed: int | np.random.Generator, index: int, stream: int) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    if isinstance(rng_or_seed, (bool, np.bool_)) or not isinstance(rng_or_seed, (int, np.integer)) or rng_or_seed < 0:
        raise ValueError(f"rng_or_seed must be a non-negative int or a numpy Generator, got {rng_or_seed!r}")
    for name, value in (("index", index), ("stream", stream)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return np.random.default_rng(np.random.SeedSequence(int(rng_or_seed), spawn_key=(int(stream), int(index))))


def render_pair(
    rng_or_seed: int | np.random.Generator,
    index: int = 0,
    size: Sequence[int] = (384, 512),
    *,
    stream: int = 0,
    return_layers: bool = False,
    **params: Any,
) -> dict[str, np.ndarray]:
    """Render one image pair with exact ground truth.

    Args:
        rng_or_seed: an int seed (the sample is then a pure function of ``(seed, stream, index)``) or a numpy
            Generator to draw from (then ``index`` and ``stream`` are ignored and the caller owns determinism).
        index: sample number.
        size: (H, W) of the images, any positive integers.
        stream: seed stream (``STREAMS['train']`` = 0, ``STREAMS['val']`` = 1) so that splits never share samples.
        return_layers: also return per-layer frame-1 coverage and depth planes (for tests and debugging).
        **params: fields of :class:`SceneParams` (max_displacement, num_layers, difficulty, photometric, ...).

    Returns:
        ``image1``, ``image2``: [H, W, 3] uint8 RGB; ``flow``: [H, W, 2] float32 pixels (u, v) from frame 1 to 2;
        ``depth``: [H, W] float32 metres of frame 1 (> 0); ``valid``: [H, W] bool (all True, the flow is dense);
        ``occlusion``: [H, W] bool, frame-1 pixels that leave the image or are hidden in frame 2;
        ``layers1``, ``layers2``: [H, W] uint8 index of the visible layer (0 = background, larger = nearer).
        With ``return_layers``: ``layer_coverage`` [L, H, W] bool and ``layer_depth`` [L, H, W] float32.

    Raises:
        ValueError: a bad seed, index, size or parameter.
    """
    if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in size):
        raise ValueError(f"size must be (H, W) with positive integers, got {size!r}")
    known = [f.name for f in fields(SceneParams)]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"render_pair: unknown parameter(s) {unknown}; known: {known}")
    scene_params = SceneParams(**params)
    height, width = int(size[0]), int(size[1])
    rng = _make_rng(rng_or_seed, index, stream)
    photometric_rng = np.random.default_rng(rng.integers(2**63))  # drawn always: geometry ignores `photometric`

    sample_scene = _sample_ground_scene if scene_params.depth_cues else _sample_scene
    layers = sample_scene(rng, height, width, scene_params)
    if scene_params.photometric > 0:
        for layer in layers:
            layer.blur_kernel = _motion_blur_kernel(photometric_rng, layer, scene_params.photometric)
    image1, layers1, boxes1, coverages1 = _render(layers, 0, height, width)
    image2, layers2, _, _ = _render(layers, 1, height, width)
    flow, depth = _flow_and_depth(layers, layers1, boxes1)
    occlusion = _occlusion(flow, layers1, layers2)
    if scene_params.photometric > 0:
        image1, image2 = _photometric(photometric_rng, image1, image2, scene_params.photometric)

    sample = {
        "image1": image1,
        "image2": image2,
        "flow": flow,
        "depth": depth,
        "valid": np.ones((height, width), bool),
        "occlusion": occlusion,
        "layers1": layers1,
        "layers2": layers2,
    }
    if return_layers:
        coverage = np.zeros((len(layers), height, width), bool)
        layer_depth = np.zeros((len(layers), height, width), np.float32)
        xs = np.arange(width, dtype=np.float64)[None, :]
        ys = np.arange(height, dtype=np.float64)[:, None]
        for k, (layer, box, covered) in enumerate(zip(layers, boxes1, coverages1)):
            layer_depth[k] = layer.depth_at(xs, ys)
            if box is not None:
                coverage[k, box[1] : box[3], box[0] : box[2]] = covered
        sample["layer_coverage"] = coverage
        sample["layer_depth"] = layer_depth
    return sample


def find_texture_images(texture_dir: str | Path) -> tuple[str, ...]:
    """All image files under ``texture_dir`` (recursive, sorted so every process sees the same list).

    Raises:
        FileNotFoundError: the folder does not exist or holds no image with a suffix in ``IMAGE_SUFFIXES``.
    """
    root = Path(texture_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"synthetic.texture_dir {root} is not a directory")
    paths = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise FileNotFoundError(f"synthetic.texture_dir {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return tuple(paths)


def texture_folder_groups(texture_dir: str | Path, paths: Sequence[str]) -> tuple[tuple[int, ...], ...]:
    """Groups of ``paths`` (indices) by their first folder below ``texture_dir``; images directly in it form a group.

    Only the first level counts: ``photos/a/x.png`` and ``photos/b/y.png`` are both in the group ``photos``.

    With ``SceneParams.texture_groups`` set to these, every subfolder is drawn equally often whatever its number of
    images (e.g. 24 photographs beside 164 video frames).
    """
    root = Path(texture_dir)
    by_folder: dict[str, list[int]] = {}
    for index, path in enumerate(paths):
        try:
            parts = Path(path).relative_to(root).parts
        except ValueError:
            raise ValueError(f"texture image {path} is not under the texture folder {root}") from None
        by_folder.setdefault(parts[0] if len(parts) > 1 else "", []).append(index)
    return tuple(tuple(by_folder[name]) for name in sorted(by_folder))


def _channels_first(array: np.ndarray) -> np.ndarray:
    """[H, W, C] -> contiguous float32 [C, H, W]."""
    return np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32)


class SyntheticFlowDataset(Dataset):
    """Procedural flow + depth pairs as a torch Dataset (``cfg.synthetic.*``), sample ``i`` = ``render_pair``.

    Train and val draw from different seed streams of ``cfg.synthetic.seed``, so they never share a sample.

    A sample is ``{'image1', 'image2': [3, H, W] float32 0..255, 'flow': [2, H, W] float32 px, 'valid': [H, W]
    float32 (|flow| < 1000), 'depth': [1, H, W] float32 metres, 'meta': {'dataset': 'synthetic', 'frame': i, ...}}`` (the
    keys of ``core.data.datasets.META_KEYS``),
    plus ``'occlusion'`` [H, W] float32 when ``return_occlusion``.

    An ``augmentor`` is called as ``augmentor(image1, image2, flow)`` on uint8 HWC images and float32 HWC flow and
    returns the same triple. If it takes a ``depth`` keyword (``core.data.augment.FlowAugmentor`` does), it is
    called with ``depth=`` [H, W] too and returns ``(image1, image2, flow, depth)``; otherwise the depth cannot
    follow its spatial transform and is all zeros (= invalid for depth losses and metrics, which need depth > 0).

    ``difficulty`` (0..1), ``photometric`` (0..1) and ``depth_cues`` are :class:`SceneParams` knobs (default:
    ``cfg.synthetic``); ``set_difficulty`` changes the first for a curriculum.
    """

    def __init__(
        self,
        cfg,
        split: str = "train",
        augmentor: Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]
        | None = None,
        *,
        difficulty: float | None = None,
        photometric: float | None = None,
        depth_cues: bool | None = None,
        return_occlusion: bool = False,
    ) -> None:
        if split not in STREAMS:
            raise ValueError(f"split must be one of {sorted(STREAMS)}, got {split!r}")
        if return_occlusion and augmentor is not None:
            raise ValueError("return_occlusion cannot be combined with an augmentor (the mask cannot follow it)")
        synthetic = cfg.synthetic
        self.split = split
        self.augmentor = augmentor
        self.augments_depth = augmentor is not None and "depth" in inspect.signature(augmentor).parameters
        self.return_occlusion = return_occlusion
        self.seed = int(synthetic.seed)
        self.size = tuple(int(s) for s in synthetic.image_size)
        self.length = int(synthetic.train_size if split == "train" else synthetic.val_size)
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"synthetic.image_size must be [H, W] with positive sizes, got {list(self.size)}")
        if self.length < 0:
            raise ValueError(f"synthetic.{split}_size must be >= 0, got {self.length}")
        texture_paths = self._texture_paths(synthetic.texture_dir)
        texture_groups = (texture_folder_groups(synthetic.texture_dir, texture_paths)
                          if texture_paths and synthetic.texture_sampling == "folder" else ())
        self.params = SceneParams(
            max_displacement=float(synthetic.max_displacement),
            num_layers=tuple(synthetic.num_layers),
            difficulty=float(synthetic.difficulty if difficulty is None else difficulty),
            photometric=float(synthetic.photometric if photometric is None else photometric),
            depth_cues=bool(synthetic.depth_cues if depth_cues is None else depth_cues),
            texture_paths=texture_paths,
            texture_image_prob=float(synthetic.texture_image_prob),
            texture_groups=texture_groups,
            dead_leaves=float(synthetic.dead_leaves),
        )

    def _texture_paths(self, texture_dir: str) -> tuple[str, ...]:
        """The images of ``texture_dir`` (none if empty). A missing or image-less folder is an error for training;
        for validation it gives procedural textures with a warning: a checkpoint's stored config names the folder
        it was trained with (e.g. ``datasets/textures_videos_dense``), which a fresh checkout does not have."""
        if not texture_dir:
            return ()
        try:
            return find_texture_images(texture_dir)
        except FileNotFoundError as error:
            if self.split == "train":
                raise
            logger.warning(f"synthetic {self.split} split: {error}, so it uses procedural textures only (its numbers "
                           f"differ from those with the images); pass synthetic.texture_dir FOLDER to use them, or "
                           f"synthetic.texture_dir '' to silence this")
            return ()

    def __len__(self) -> int:
        return self.length

    def set_difficulty(self, difficulty: float) -> None:
        """Curriculum hook: samples drawn after this call use ``difficulty`` (0..1). DataLoader workers hold copies
        of the dataset, so call it before they start (e.g. between epochs, without ``persistent_workers``)."""
        self.params = replace(self.params, difficulty=float(difficulty))

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(f"synthetic {self.split} index {index} out of range [0, {self.length})")
        sample = render_pair(self.seed, int(index), self.size, stream=STREAMS[self.split], **asdict(self.params))
        image1, image2, flow, depth = sample["image1"], sample["image2"], sample["flow"], sample["depth"]
        if self.augments_depth:
            image1, image2, flow, depth = self.augmentor(image1, image2, flow, depth=depth)
        elif self.augmentor is not None:
            image1, image2, flow = self.augmentor(image1, image2, flow)
            depth = np.zeros(flow.shape[:2], np.float32)
        valid = (np.abs(flow[..., 0]) < 1000) & (np.abs(flow[..., 1]) < 1000)
        output = {  # HWC -> CHW in numpy (torch ops here would start its thread pool in every sample)
            "image1": torch.from_numpy(_channels_first(image1)),
            "image2": torch.from_numpy(_channels_first(image2)),
            "flow": torch.from_numpy(_channels_first(flow)),
            "valid": torch.from_numpy(valid.astype(np.float32)),
            "depth": torch.from_numpy(depth.astype(np.float32)[None]),
            "meta": {"dataset": "synthetic", "split": self.split, "scene": "", "frame": int(index),
                     "image1_path": "", "image2_path": "", "flow_path": ""},
        }
        if self.return_occlusion:
            output["occlusion"] = torch.from_numpy(sample["occlusion"].astype(np.float32))
        return output
