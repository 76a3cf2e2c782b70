"""Training-time augmentation of image pairs with their flow (RAFT's augmentor family, used by FlowFormer/ProtoFormer).

Two augmentors share one photometric and one geometric toolbox:

* :class:`FlowAugmentor` for dense ground truth (FlyingChairs, FlyingThings3D, Sintel, procedural data):
  colour jitter (symmetric, or per frame with ``asymmetric_color_prob``), occlusion eraser on frame 2, random
  scale ``2 ** U(min_scale, max_scale)`` with optional stretch, horizontal / vertical flips, random crop.
* :class:`SparseFlowAugmentor` for sparse ground truth (KITTI, HD1K): the same steps, but the flow is never
  interpolated: every valid pixel is moved to its position in the rescaled grid with its value scaled exactly
  (:func:`resize_sparse_flow`), and crops prefer the bottom and side borders where KITTI has ground truth.

Geometric conventions (checked by warp tests): a resize by (fx, fy) maps pixel centres ``x -> (x + 0.5) fx - 0.5``
(OpenCV's convention, also used for the sparse points) and multiplies u by the *actual* ratio ``new_width / width``
(v likewise); a horizontal flip negates u, a vertical flip negates v; crops do not change flow values. Images
smaller than the crop are always enlarged (dense) or zero-padded (sparse, with valid = 0) so that a crop fits.

Randomness comes from a :class:`numpy.random.Generator` owned by the augmentor (never the global numpy state).
Inside a ``DataLoader`` worker the generator is re-seeded from the worker's torch seed (different for every
worker and every epoch, reproducible under ``torch.manual_seed``) combined with the augmentor's ``seed``.

Inputs: ``uint8 [H, W, 3]`` RGB images, ``float32 [H, W, 2]`` flow in pixels, ``[H, W]`` valid mask (sparse) or an
optional ``[H, W]`` depth of frame 1 (dense, resized with nearest neighbour, values unchanged).
"""

from __future__ import annotations

from typing import Any, Sequence

import cv2
import numpy as np
from torch.utils.data import get_worker_info

CONFIG_KEYS = (
    "min_scale", "max_scale", "spatial_prob", "stretch_prob", "max_stretch", "do_flip", "h_flip_prob",
    "v_flip_prob", "brightness", "contrast", "saturation", "hue", "asymmetric_color_prob", "eraser_prob",
)


class ColorJitter:
    """Random brightness, contrast, saturation and hue, applied in random order (torchvision ``ColorJitter``).

    Factors are drawn as in torchvision: brightness/contrast/saturation from ``U(max(0, 1 - s), 1 + s)``, hue shift
    from ``U(-hue, hue)`` (fraction of the colour circle). Works on ``uint8 [H, W, 3]`` RGB with OpenCV (rounded and
    saturated to uint8 after every step, like the PIL path RAFT uses). Contrast blends with the mean grey level of
    the image it is given, so jittering two stacked frames at once treats them as one image.
    """

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0, hue: float = 0.0):
        for name, value in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if value < 0:
                raise ValueError(f"ColorJitter {name} must be >= 0, got {value}")
        if not 0.0 <= hue <= 0.5:
            raise ValueError(f"ColorJitter hue must be in [0, 0.5], got {hue}")
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue

    @property
    def is_identity(self) -> bool:
        return not (self.brightness or self.contrast or self.saturation or self.hue)

    @staticmethod
    def _factor(strength: float, rng: np.random.Generator) -> float:
        return float(rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength))

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for operation in rng.permutation(4):
            if operation == 0 and self.brightness:
                image = cv2.addWeighted(image, self._factor(self.brightness, rng), image, 0.0, 0.0)
            elif operation == 1 and self.contrast:
                factor = self._factor(self.contrast, rng)
                mean_grey = cv2.mean(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))[0]
                image = cv2.addWeighted(image, factor, image, 0.0, mean_grey * (1.0 - factor))
            elif operation == 2 and self.saturation:
                factor = self._factor(self.saturation, rng)
                grey = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
                image = cv2.addWeighted(image, factor, grey, 1.0 - factor, 0.0)
            elif operation == 3 and self.hue:
                shift = int(round(rng.uniform(-self.hue, self.hue) * 256)) % 256
                hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV_FULL)
                hsv[..., 0] += np.uint8(shift)  # uint8 arithmetic wraps around the colour circle
                image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)
        return image


def resize_sparse_flow(flow: np.ndarray, valid: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Rescale sparse flow to ``size = (height, width)`` without interpolating it.

    Each valid pixel (x, y) moves to the nearest pixel of ``(x + 0.5) fx - 0.5`` (the pixel-centre mapping of
    ``cv2.resize``) with its flow multiplied exactly by (fx, fy) = (new width / width, new height / height).
    When several points land on one pixel (downscaling) one of them is kept. Returns ``(flow [h, w, 2] float32,
    valid [h, w] float32)``; pixels that receive no point are 0 and invalid.
    """
    height, width = flow.shape[:2]
    new_height, new_width = size
    fx, fy = new_width / width, new_height / height
    ys, xs = np.nonzero(valid >= 0.5)
    new_xs = np.floor((xs + 0.5) * fx).astype(np.int64)  # = round((x + 0.5) fx - 0.5), halves rounded up
    new_ys = np.floor((ys + 0.5) * fy).astype(np.int64)
    new_flow = np.zeros((new_height, new_width, 2), np.float32)
    new_valid = np.zeros((new_height, new_width), np.float32)
    new_flow[new_ys, new_xs] = flow[ys, xs] * np.array([fx, fy], np.float32)
    new_valid[new_ys, new_xs] = 1.0
    return new_flow, new_valid


def _resize(array: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
    """``cv2.resize`` to ``size = (height, width)``."""
    return cv2.resize(array, (size[1], size[0]), interpolation=interpolation)


def _pad(array: np.ndarray, bottom: int, right: int) -> np.ndarray:
    """Zero-pad the bottom and right of an [H, W, ...] array."""
    return np.pad(array, [(0, bottom), (0, right)] + [(0, 0)] * (array.ndim - 2))


def _check_inputs(image1: np.ndarray, image2: np.ndarray, flow: np.ndarray, mask: np.ndarray | None, mask_name: str):
    if image1.dtype != np.uint8 or image1.ndim != 3 or image1.shape[2] != 3 or image2.shape != image1.shape:
        raise ValueError(
            f"augmentor needs two uint8 [H, W, 3] images of one size, got {image1.dtype} {image1.shape} "
            f"and {image2.dtype} {image2.shape}"
        )
    if flow.shape != (*image1.shape[:2], 2):
        raise ValueError(f"flow must be [H, W, 2] = {(*image1.shape[:2], 2)}, got {flow.shape}")
    if mask is not None and mask.shape != image1.shape[:2]:
        raise ValueError(f"{mask_name} must be [H, W] = {image1.shape[:2]}, got {mask.shape}")


class _PairAugmentor:
    """Parameters, random generator and the steps shared by the dense and sparse augmentors."""

    crop_margin: tuple[int, int] = (0, 0)  # extra (rows, columns) range for crop offsets, clipped back inside
    scale_margin: int = 8  # the rescaled image is at least crop + margin pixels on each side

    def __init__(
        self,
        crop_size: Sequence[int],
        min_scale: float = -0.2,
        max_scale: float = 0.5,
        spatial_prob: float = 0.8,
        stretch_prob: float = 0.8,
        max_stretch: float = 0.2,
        do_flip: bool = True,
        h_flip_prob: float = 0.5,
        v_flip_prob: float = 0.1,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.4,
        hue: float = 0.5 / 3.14,
        asymmetric_color_prob: float = 0.2,
        eraser_prob: float = 0.5,
        eraser_bounds: tuple[int, int] = (50, 100),
        seed: int | None = None,
    ):
        if len(crop_size) != 2 or min(crop_size) < 1:
            raise ValueError(f"crop_size must be (height, width) with positive sides, got {crop_size}")
        if min_scale > max_scale:
            raise ValueError(f"min_scale ({min_scale}) must not exceed max_scale ({max_scale})")
        probabilities = dict(spatial_prob=spatial_prob, stretch_prob=stretch_prob, h_flip_prob=h_flip_prob,
                             v_flip_prob=v_flip_prob, asymmetric_color_prob=asymmetric_color_prob,
                             eraser_prob=eraser_prob)
        for name, value in probabilities.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
        if max_stretch < 0:
            raise ValueError(f"max_stretch must be >= 0, got {max_stretch}")
        if not 1 <= eraser_bounds[0] < eraser_bounds[1]:
            raise ValueError(f"eraser_bounds must be (low, high) box sides with 1 <= low < high, got {eraser_bounds}")
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        self.spatial_prob, self.stretch_prob, self.max_stretch = spatial_prob, stretch_prob, max_stretch
        self.do_flip, self.h_flip_prob, self.v_flip_prob = do_flip, h_flip_prob, v_flip_prob
        self.color_jitter = ColorJitter(brightness, contrast, saturation, hue)
        self.asymmetric_color_prob = asymmetric_color_prob
        self.eraser_prob, self.eraser_bounds = eraser_prob, (int(eraser_bounds[0]), int(eraser_bounds[1]))
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._worker_seed: int | None = None

    @classmethod
    def from_config(cls, cfg, crop_size: Sequence[int] | None = None, seed: int | None = None, **overrides: Any):
        """Build from the ``aug`` section of a config; ``crop_size`` defaults to ``cfg.data.crop_size``.

        ``overrides`` replace single ``aug`` values (e.g. a per-dataset ``min_scale``).
        """
        unknown = sorted(set(overrides) - set(CONFIG_KEYS) - {"eraser_bounds"})
        if unknown:
            raise ValueError(f"unknown augmentation parameters {unknown}; known: {list(CONFIG_KEYS)}")
        params = {key: cfg.aug[key] for key in CONFIG_KEYS} | overrides
        return cls(crop_size=list(crop_size if crop_size is not None else cfg.data.crop_size), seed=seed, **params)

    @property
    def rng(self) -> np.random.Generator:
        """The generator; in a DataLoader worker it is re-seeded once from the worker seed and ``self.seed``."""
        worker = get_worker_info()
        if worker is not None and worker.seed != self._worker_seed:
            self._worker_seed = worker.seed
            self._rng = np.random.default_rng([worker.seed, 0 if self.seed is None else self.seed])
        return self._rng

    def reseed(self, seed: int) -> None:
        """Restart the random stream from ``seed`` (per-sample seeding by the trainer, or reproducible tests)."""
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    # ------------------------------------------------------------------------------------------- photometric
    def color_transform(self, image1: np.ndarray, image2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Colour jitter: per frame with probability ``asymmetric_color_prob``, else identical for both."""
        if self.color_jitter.is_identity:
            return image1, image2
        rng = self.rng
        if rng.random() < self.asymmetric_color_prob:
            return self.color_jitter(image1, rng), self.color_jitter(image2, rng)
        stacked = self.color_jitter(np.concatenate([image1, image2], axis=0), rng)
        return stacked[: image1.shape[0]], stacked[image1.shape[0] :]

    def eraser_transform(self, image2: np.ndarray) -> np.ndarray:
        """Occlusion augmentation: with ``eraser_prob`` paint 1-2 boxes of frame 2 with its mean colour."""
        rng = self.rng
        if rng.random() >= self.eraser_prob:
            return image2
        height, width = image2.shape[:2]
        image2 = image2.copy()
        mean_color = cv2.mean(image2)[:3]
        for _ in range(rng.integers(1, 3)):
            x0, y0 = rng.integers(0, width), rng.integers(0, height)
            dx, dy = rng.integers(*self.eraser_bounds, size=2)
            image2[y0 : y0 + dy, x0 : x0 + dx] = mean_color
        return image2

    # ------------------------------------------------------------------------------------------- geometric
    def sample_scale(self, height: int, width: int) -> tuple[float, float] | None:
        """Draw the (x, y) scale factors; None = keep the size. Never shrinks below crop + ``scale_margin``."""
        rng = self.rng
        scale = 2.0 ** rng.uniform(self.min_scale, self.max_scale)
        scale_x = scale_y = scale
        if rng.random() < self.stretch_prob:
            scale_x *= 2.0 ** rng.uniform(-self.max_stretch, self.max_stretch)
            scale_y *= 2.0 ** rng.uniform(-self.max_stretch, self.max_stretch)
        if rng.random() >= self.spatial_prob:
            scale_x = scale_y = 1.0
        crop_height, crop_width = self.crop_size
        smallest = max((crop_height + self.scale_margin) / height, (crop_width + self.scale_margin) / width)
        scale_x, scale_y = max(scale_x, smallest), max(scale_y, smallest)
        return None if scale_x == scale_y == 1.0 else (scale_x, scale_y)

    def sample_flips(self) -> tuple[bool, bool]:
        """(horizontal, vertical) flip decisions."""
        if not self.do_flip:
            return False, False
        rng = self.rng
        return bool(rng.random() < self.h_flip_prob), bool(rng.random() < self.v_flip_prob)

    def sample_crop(self, height: int, width: int) -> tuple[int, int]:
        """Top-left (y0, x0) of the crop; offsets in the margin band are clipped to the border."""
        rng = self.rng
        margin_y, margin_x = self.crop_margin
        y0 = rng.integers(0, height - self.crop_size[0] + margin_y + 1)
        x0 = rng.integers(-margin_x, width - self.crop_size[1] + margin_x + 1)
        return int(np.clip(y0, 0, height - self.crop_size[0])), int(np.clip(x0, 0, width - self.crop_size[1]))

    @staticmethod
    def _scaled_size(height: int, width: int, scale: tuple[float, float]) -> tuple[int, int]:
        return int(round(height * scale[1])), int(round(width * scale[0]))

    def _flip_and_crop(self, image1, image2, flow, mask, flow_scale: tuple[float, float]):
        """Random flips and crop of both frames, the flow and an optional [H, W] mask.

        Flips are views; the flow is multiplied by ``flow_scale`` (from a resize) and the flip signs only after
        cropping, so the large full-size arrays are never rewritten.
        """
        flow_factor = np.array(flow_scale, np.float32)
        arrays = [image1, image2, flow, mask]
        h_flip, v_flip = self.sample_flips()
        if h_flip:
            arrays = [None if a is None else a[:, ::-1] for a in arrays]
            flow_factor[0] = -flow_factor[0]
        if v_flip:
            arrays = [None if a is None else a[::-1] for a in arrays]
            flow_factor[1] = -flow_factor[1]
        y0, x0 = self.sample_crop(*arrays[0].shape[:2])
        height, width = self.crop_size
        image1, image2, flow, mask = (
            None if a is None else np.ascontiguousarray(a[y0 : y0 + height, x0 : x0 + width]) for a in arrays
        )
        return image1, image2, flow * flow_factor, mask


class FlowAugmentor(_PairAugmentor):
    """Augmentation for dense flow (RAFT ``FlowAugmentor``): jitter, eraser, scale + stretch, flips, crop."""

    def spatial_transform(self, image1, image2, flow, depth=None):
        """Scale/stretch, flip and crop both frames, the flow (and the depth of frame 1) consistently."""
        height, width = image1.shape[:2]
        scale, flow_scale = self.sample_scale(height, width), (1.0, 1.0)
        if scale is not None:
            size = self._scaled_size(height, width, scale)
            image1, image2 = _resize(image1, size, cv2.INTER_LINEAR), _resize(image2, size, cv2.INTER_LINEAR)
            flow, flow_scale = _resize(flow, size, cv2.INTER_LINEAR), (size[1] / width, size[0] / height)
            depth = None if depth is None else _resize(depth, size, cv2.INTER_NEAREST)
        return self._flip_and_crop(image1, image2, flow, depth, flow_scale)

    def __call__(self, image1: np.ndarray, image2: np.ndarray, flow: np.ndarray, depth: np.ndarray | None = None):
        """Augment one pair. Returns ``(image1, image2, flow)``, or ``(image1, image2, flow, depth)`` with depth."""
        _check_inputs(image1, image2, flow, depth, "depth")
        image1, image2 = self.color_transform(image1, image2)
        image2 = self.eraser_transform(image2)
        image1, image2, flow, depth = self.spatial_transform(image1, image2, flow.astype(np.float32, copy=False), depth)
        return (image1, image2, flow) if depth is None else (image1, image2, flow, depth)


class SparseFlowAugmentor(_PairAugmentor):
    """Augmentation for sparse flow (RAFT ``SparseFlowAugmentor``): valid points are moved, never interpolated."""

    crop_margin = (20, 50)  # RAFT: crops touch the bottom / side borders more often (KITTI's ground truth is there)
    scale_margin = 1

    def spatial_transform(self, image1, image2, flow, valid):
        """Pad to the crop if needed, scale/stretch, flip and crop with the valid mask."""
        pad_bottom = max(self.crop_size[0] - image1.shape[0], 0)
        pad_right = max(self.crop_size[1] - image1.shape[1], 0)
        if pad_bottom or pad_right:
            image1, image2, flow, valid = (_pad(a, pad_bottom, pad_right) for a in (image1, image2, flow, valid))
        height, width = image1.shape[:2]
        scale = self.sample_scale(height, width)
        if scale is not None:
            size = self._scaled_size(height, width, scale)
            image1, image2 = _resize(image1, size, cv2.INTER_LINEAR), _resize(image2, size, cv2.INTER_LINEAR)
            flow, valid = resize_sparse_flow(flow, valid, size)
        return self._flip_and_crop(image1, image2, flow, valid, flow_scale=(1.0, 1.0))

    def __call__(self, image1: np.ndarray, image2: np.ndarray, flow: np.ndarray, valid: np.ndarray):
        """Augment one pair with its valid mask. Returns ``(image1, image2, flow, valid)`` (float32 flow/valid)."""
        _check_inputs(image1, image2, flow, valid, "valid")
        image1, image2 = self.color_transform(image1, image2)
        image2 = self.eraser_transform(image2)
        flow, valid = flow.astype(np.float32, copy=False), valid.astype(np.float32, copy=False)
        return self.spatial_transform(image1, image2, flow, valid)
