"""Video stabilisation driven by dense optical flow: flow -> camera path -> Gaussian smoothing -> warp and crop.

    python scripts/stabilize.py --input shaky.mp4 --output stable.mp4                      # DIS flow (the default)
    python scripts/stabilize.py --input frames/ --output stable.mp4 --backend protoformer --smooth 15   # the model
    python scripts/stabilize.py --input big.mp4 --output stable.mp4 --max-side 512 --crop 0.8

Writes OUT.mp4 (stabilised), OUT_side_by_side.mp4 (input | stabilised), OUT_path.png (raw and smoothed camera
path: x, y, angle over frames) and OUT_metrics.json (metrics, per-frame transforms), and logs the metrics.

Method (all transforms act on centred pixel coordinates, origin at the image centre, so a path's translation is
the motion of the frame centre and its angle a rotation about the centre):

1. Frame-to-frame motion M_t (frame t-1 -> frame t). The flow backend gives dense flow; a grid of about
   ``GRID_POINTS`` correspondences (p, p + flow(p)), ``GRID_MARGIN`` away from the borders, is fitted with
   RANSAC by a similarity (default), an affine map or a homography (``--motion``). Moving objects disagree with
   the camera motion and are rejected as outliers.
2. Camera path C_0 = I, C_t = M_t C_{t-1} (frame-0 coordinates -> frame-t coordinates), normalised so that
   C[2, 2] = 1.
3. Smoothing: every element of C_t is filtered by a Gaussian of sigma = ``--smooth`` frames, truncated at
   r = ceil(3 sigma) (at most n - 1 for a clip of n frames). Beyond both ends the path is extended by the
   least-squares line through its r + 1 entries nearest to that end, so that a steady pan stays a steady pan up
   to the last frame and the end frames' own jitter is averaged like any other. It streams: a frame's smoothed
   path is known once r more frames have been read, so only a ring buffer of the last 2r+1 path entries (and,
   for a fixed crop, the r+1 frames waiting for their transform) is held.
4. Stabilising transform B_t = S_t C_t^{-1} (S = smoothed path): input frame t -> output frame t.
5. Crop and zoom: W_t = diag(1/k, 1/k, 1) B_t, so the centred rectangle of relative size k fills the output.
   ``--crop auto``: the largest k <= 1 for which that rectangle lies inside every warped frame B_t(frame) (no
   black border anywhere); it needs all B_t, so the frames are decoded a second time for writing. ``--crop
   RATIO``: k = RATIO (single pass; black borders where the motion needs more). ``--crop none``: k = 1.

Metrics (the definitions of Liu et al., "Bundled camera paths for video stabilization", SIGGRAPH 2013, as
computed by the public evaluation code of DIFRINT / StabNet), with A_t the top-left 2x2 of W_t / W_t[2, 2]:

* cropping ratio: mean over frames of min(1, 1 / sqrt|det A_t|), the linear scale of the output's view of the
  input (1 = nothing cropped; the kept area is its square). The minimum over frames is reported too.
* distortion value: min over frames of |lambda_min| / |lambda_max|, the eigenvalues of A_t ordered by modulus
  (1 = no anisotropic stretch anywhere).
* stability score: the camera path of a video is measured on its frames with the classic feature recipe
  (goodFeaturesToTrack, pyramidal Lucas-Kanade, RANSAC similarity; independent of the flow backend) and
  accumulated as above; its translation (x_t, y_t) and angle_t are 1-D signals. For each, the power spectrum
  |FFT|^2 at frequencies 1..n/2 (the DC term dropped) is summed over the 2nd to 6th components (frequencies
  1..5) and divided by its total; the translation score sums the power of x and y (the 2-D signal, without the
  frequency doubling of |t|). Stability = min(translation, rotation), 1 = only slow motion. It is measured on
  the output and, for comparison, on the input. Note: on a nearly still clip the path is mostly measurement
  noise, so the score says little there; the benchmark's ground-truth jitter does.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import cv2
import numpy as np
from loguru import logger
from numpy.lib.stride_tricks import sliding_window_view
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from core.flow_backends import (  # noqa: E402
    BACKENDS, TOOL_DEFAULT_BACKEND, FlowFn, choose_backend, describe_backend, make_flow_backend)
from core.utils.atomic import atomic_path, atomic_write_text  # noqa: E402
from core.video import FrameSource, VideoError, VideoWriter, open_frames  # noqa: E402

MOTION_MODELS = ("similarity", "affine", "homography")
GRID_POINTS = 1500  # flow correspondences per frame pair
GRID_MARGIN = 0.05  # fraction of the width / height left out at the borders (flow is least reliable there)
MIN_INLIERS = 12
PREVIEW_HALF_WIDTH = 480  # px: each half of the side-by-side video is downscaled to at most this width
STABILITY_LOW_BANDS = 5  # the 2nd..6th spectral components (frequencies 1..5)

Matrix = np.ndarray  # [3, 3] float64


# ----------------------------------------------------------------------------------------------- motion


def centre_of(height: int, width: int) -> np.ndarray:
    """The image centre (x, y) in pixel coordinates: the origin of the centred coordinates."""
    return np.array([(width - 1) / 2.0, (height - 1) / 2.0])


def to_pixel_coordinates(matrix: Matrix, height: int, width: int) -> Matrix:
    """A transform of centred coordinates as a transform of pixel coordinates: T(c) M T(-c)."""
    shift = np.eye(3)
    shift[:2, 2] = centre_of(height, width)
    return shift @ matrix @ np.linalg.inv(shift)


def normalised(matrix: Matrix) -> Matrix:
    return matrix / matrix[2, 2]


def fit_motion(source: np.ndarray, target: np.ndarray, model: str, threshold: float) -> tuple[Matrix, int] | None:
    """Robust fit (RANSAC) of ``target ~ M(source)`` for points [N, 2]; returns (M [3, 3], inlier count) or None."""
    if len(source) < MIN_INLIERS:
        return None
    source, target = source.astype(np.float32), target.astype(np.float32)
    if model == "homography":
        matrix, inliers = cv2.findHomography(source, target, cv2.RANSAC, threshold, maxIters=2000, confidence=0.995)
    else:
        estimate = cv2.estimateAffinePartial2D if model == "similarity" else cv2.estimateAffine2D
        matrix, inliers = estimate(source, target, method=cv2.RANSAC, ransacReprojThreshold=threshold,
                                   maxIters=2000, confidence=0.995, refineIters=10)
        if matrix is not None:
            matrix = np.vstack([matrix, [0.0, 0.0, 1.0]])
    if matrix is None or inliers is None or int(inliers.sum()) < MIN_INLIERS or not np.isfinite(matrix).all():
        return None
    return normalised(matrix.astype(np.float64)), int(inliers.sum())


def grid_points(height: int, width: int, count: int = GRID_POINTS, margin: float = GRID_MARGIN) -> np.ndarray:
    """About ``count`` integer pixel positions [N, 2] (x, y) on a regular grid, ``margin`` away from the borders."""
    columns = max(2, round(math.sqrt(count * width / height)))
    rows = max(2, round(count / columns))
    xs = np.unique(np.round(np.linspace(margin * (width - 1), (1 - margin) * (width - 1), columns)))
    ys = np.unique(np.round(np.linspace(margin * (height - 1), (1 - margin) * (height - 1), rows)))
    grid_x, grid_y = np.meshgrid(xs, ys)
    return np.stack([grid_x.ravel(), grid_y.ravel()], axis=1).astype(np.int64)


@dataclass
class MotionStats:
    """How the per-pair fits went: inlier shares and the pairs where no fit was found (identity used)."""

    inlier_ratios: list[float] = field(default_factory=list)
    failures: list[int] = field(default_factory=list)


class FlowMotion:
    """Camera motion between two frames from dense flow on a grid, fitted with RANSAC (step 1 of the method).

    ``__call__(frame_a, frame_b)`` returns M [3, 3] mapping centred coordinates of ``frame_a`` to ``frame_b``.
    """

    def __init__(self, flow_fn: FlowFn, model: str = "similarity", threshold: float = 1.5):
        if model not in MOTION_MODELS:
            raise ValueError(f"motion model must be one of {', '.join(MOTION_MODELS)}, got '{model}'")
        self.flow_fn, self.model, self.threshold = flow_fn, model, threshold
        self.stats = MotionStats()

    def __call__(self, frame_a: np.ndarray, frame_b: np.ndarray) -> Matrix:
        height, width = frame_a.shape[:2]
        flow = self.flow_fn(frame_a, frame_b)
        points = grid_points(height, width)
        moved = points + flow[points[:, 1], points[:, 0]]
        inside = (moved[:, 0] >= 0) & (moved[:, 0] <= width - 1) & (moved[:, 1] >= 0) & (moved[:, 1] <= height - 1)
        centre = centre_of(height, width)
        fit = fit_motion(points[inside] - centre, moved[inside] - centre, self.model, self.threshold)
        return _record(self.stats, fit, len(points))


class FeatureMotion:
    """The classic recipe: goodFeaturesToTrack + pyramidal Lucas-Kanade + RANSAC similarity (or another model).

    Used as the baseline of the benchmark and to measure the stability score of any video. ``mask_a``
    (uint8 [H, W], optional) restricts the features to valid pixels of ``frame_a``, e.g. inside a warped frame.
    """

    def __init__(self, model: str = "similarity", threshold: float = 3.0, max_corners: int = 200):
        self.model, self.threshold, self.max_corners = model, threshold, max_corners
        self.stats = MotionStats()

    def __call__(self, frame_a: np.ndarray, frame_b: np.ndarray, mask_a: np.ndarray | None = None) -> Matrix:
        height, width = frame_a.shape[:2]
        grey_a = cv2.cvtColor(frame_a, cv2.COLOR_RGB2GRAY) if frame_a.ndim == 3 else frame_a
        grey_b = cv2.cvtColor(frame_b, cv2.COLOR_RGB2GRAY) if frame_b.ndim == 3 else frame_b
        corners = cv2.goodFeaturesToTrack(grey_a, self.max_corners, qualityLevel=0.01,
                                          minDistance=max(5, round(min(height, width) / 20)), blockSize=3,
                                          mask=mask_a)
        fit, candidates = None, 0
        if corners is not None:
            candidates = len(corners)
            tracked, status, _ = cv2.calcOpticalFlowPyrLK(grey_a, grey_b, corners, None, winSize=(21, 21), maxLevel=3)
            ok = status.ravel() == 1
            centre = centre_of(height, width)
            fit = fit_motion(corners.reshape(-1, 2)[ok] - centre, tracked.reshape(-1, 2)[ok] - centre, self.model,
                             self.threshold)
        return _record(self.stats, fit, candidates)


def _record(stats: MotionStats, fit: tuple[Matrix, int] | None, candidates: int) -> Matrix:
    if fit is None:
        stats.failures.append(len(stats.inlier_ratios))
        stats.inlier_ratios.append(0.0)
        return np.eye(3)
    stats.inlier_ratios.append(fit[1] / max(candidates, 1))
    return fit[0]


# ----------------------------------------------------------------------------------------------- smoothing


def smoothing_radius(sigma: float) -> int:
    return int(math.ceil(3.0 * sigma)) if sigma > 0 else 0


def gaussian_weights(sigma: float, radius: int) -> np.ndarray:
    if radius == 0:
        return np.ones(1)
    weights = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return weights / weights.sum()


def line_extension(values: np.ndarray, count: int) -> np.ndarray:
    """The least-squares line through ``values`` [n, ...] (at k = 0..n-1) extrapolated to k = -count..-1."""
    positions = np.arange(len(values), dtype=np.float64)
    centred = positions - positions.mean()
    mean = values.mean(axis=0)
    slope = np.tensordot(centred, values - mean, axes=1) / max(float(centred @ centred), 1e-12)
    targets = np.arange(-count, 0, dtype=np.float64) - positions.mean()
    return mean + targets.reshape(-1, *([1] * (values.ndim - 1))) * slope


def smooth_path(path: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing along axis 0 of ``path`` [N, ...] (step 3 of the method).

    Beyond each end the path is extended by the least-squares line through its r + 1 entries nearest to that end
    (r = the kernel radius), so that a steady pan passes unchanged and the end frames' own jitter is averaged too.
    """
    path = np.asarray(path, dtype=np.float64)
    radius = min(smoothing_radius(sigma), len(path) - 1)
    if radius <= 0:
        return path.copy()
    head = line_extension(path[: radius + 1], radius)
    tail = line_extension(path[::-1][: radius + 1], radius)[::-1]
    windows = sliding_window_view(np.concatenate([head, path, tail]), 2 * radius + 1, axis=0)
    return windows @ gaussian_weights(sigma, radius)


@dataclass
class SmoothedEntry:
    index: int
    payload: Any
    raw: np.ndarray
    smooth: np.ndarray


class PathSmoother:
    """:func:`smooth_path` one entry at a time, with a look-ahead of r = ceil(3 sigma) entries.

    ``push(value, payload)`` returns the entries whose smoothed value became known (in order, each with the
    payload pushed with it); ``finish()`` returns the rest. The results equal ``smooth_path`` on the whole
    sequence; at most 2r+1 values and r+1 payloads are held.
    """

    def __init__(self, sigma: float):
        self.sigma = sigma
        self.radius = smoothing_radius(sigma)
        self._values: deque[np.ndarray] = deque(maxlen=2 * self.radius + 1)
        self._payloads: deque[Any] = deque()
        self._head: np.ndarray | None = None  # the extension before entry 0, fixed at the first emission
        self._tail: np.ndarray | None = None  # the extension after the last entry, fixed by finish()
        self._count = 0
        self._next = 0

    def push(self, value: np.ndarray, payload: Any = None) -> list[SmoothedEntry]:
        self._values.append(np.asarray(value, dtype=np.float64))
        self._payloads.append(payload)
        self._count += 1
        ready = []
        while self._next + self.radius <= self._count - 1:
            ready.append(self._emit(self.radius, last=None))
        return ready

    def finish(self) -> list[SmoothedEntry]:
        radius = min(self.radius, self._count - 1)
        if radius > 0 and self._next < self._count:
            recent = np.stack([self._value(i) for i in range(self._count - 1, self._count - 2 - radius, -1)])
            self._tail = line_extension(recent, radius)[::-1]
        ready = []
        while self._next < self._count:
            ready.append(self._emit(radius, last=self._count - 1))
        return ready

    def _value(self, index: int) -> np.ndarray:
        return self._values[index - (self._count - len(self._values))]

    def _extended(self, index: int, last: int | None) -> np.ndarray:
        if index < 0:
            return self._head[len(self._head) + index]
        if last is not None and index > last:
            return self._tail[index - last - 1]
        return self._value(index)

    def _emit(self, radius: int, last: int | None) -> SmoothedEntry:
        index = self._next
        if self._head is None and radius > 0:  # entries 0..radius are all still held at the first emission
            self._head = line_extension(np.stack([self._value(i) for i in range(radius + 1)]), radius)
        window = np.stack([self._extended(i, last) for i in range(index - radius, index + radius + 1)])
        smooth = np.tensordot(gaussian_weights(self.sigma, radius), window, axes=1)
        self._next += 1
        return SmoothedEntry(index, self._payloads.popleft(), self._value(index), smooth)


# ----------------------------------------------------------------------------------------------- crop and metrics


def frame_corners(height: int, width: int) -> np.ndarray:
    """The four corner pixel centres [4, 2] in centred coordinates, in order around the frame."""
    half_w, half_h = (width - 1) / 2.0, (height - 1) / 2.0
    return np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]])


def apply(matrices: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map points [P, 2] by transforms [..., 3, 3] -> [..., P, 2]."""
    homogeneous = np.concatenate([points, np.ones((len(points), 1))], axis=1)
    mapped = homogeneous @ np.swapaxes(matrices, -1, -2)
    return mapped[..., :2] / mapped[..., 2:]


def auto_crop_scale(stabilizing: np.ndarray, height: int, width: int) -> float:
    """The largest k <= 1 such that the centred rectangle of relative size k lies inside every warped frame.

    ``stabilizing``: [N, 3, 3] transforms B_t (centred coordinates). Each warped frame B_t(frame) is a convex
    quadrilateral; for each of its edges with outward normal n through vertex P, the rectangle's corners
    (+-k w/2, +-k h/2) satisfy n.x <= n.P iff k (|n_x| w/2 + |n_y| h/2) <= n.P. Returns 0 when some warped frame
    does not cover the frame centre.
    """
    quads = apply(stabilizing, frame_corners(height, width))  # [N, 4, 2]
    edges = np.roll(quads, -1, axis=1) - quads
    normals = np.stack([edges[..., 1], -edges[..., 0]], axis=-1)
    centroid = quads.mean(axis=1, keepdims=True)
    inward = np.einsum("nkd,nkd->nk", normals, centroid - quads) > 0
    normals = np.where(inward[..., None], -normals, normals)  # outward
    offsets = np.einsum("nkd,nkd->nk", normals, quads)
    half_w, half_h = (width - 1) / 2.0, (height - 1) / 2.0
    reach = np.abs(normals[..., 0]) * half_w + np.abs(normals[..., 1]) * half_h
    limits = np.where(offsets > 0, offsets / np.maximum(reach, 1e-12), 0.0)
    return float(min(1.0, limits.min()))


def zoom(scale: float) -> Matrix:
    return np.diag([scale, scale, 1.0])


def affine_parts(transforms: np.ndarray) -> np.ndarray:
    transforms = np.asarray(transforms, dtype=np.float64)
    return transforms[:, :2, :2] / transforms[:, 2:, 2:]


def cropping_ratio(transforms: np.ndarray) -> tuple[float, float]:
    """(mean, min) over frames of min(1, 1 / sqrt|det A_t|) for the final transforms W_t [N, 3, 3]."""
    per_frame = np.minimum(1.0, 1.0 / np.sqrt(np.abs(np.linalg.det(affine_parts(transforms)))))
    return float(per_frame.mean()), float(per_frame.min())


def distortion_value(transforms: np.ndarray) -> float:
    """min over frames of |lambda_min| / |lambda_max| of the affine parts of W_t [N, 3, 3]."""
    moduli = np.abs(np.linalg.eigvals(affine_parts(transforms)))
    return float((moduli.min(axis=1) / moduli.max(axis=1)).min())


def path_signals(path: np.ndarray) -> dict[str, np.ndarray]:
    """x, y (translation of the centre, px), angle (degrees) and scale of a camera path [N, 3, 3] (centred)."""
    path = np.asarray(path, dtype=np.float64) / np.asarray(path)[:, 2:, 2:]
    return {
        "x": path[:, 0, 2],
        "y": path[:, 1, 2],
        "angle": np.degrees(np.arctan2(path[:, 1, 0], path[:, 0, 0])),
        "scale": np.sqrt(np.abs(np.linalg.det(path[:, :2, :2]))),
    }


def _low_frequency_share(*signals: np.ndarray) -> float:
    power = sum(np.abs(np.fft.rfft(signal)) ** 2 for signal in signals)[1 : len(signals[0]) // 2 + 1]
    total = power.sum()
    if total <= 1e-12 * len(signals[0]):
        return 1.0
    return float(power[:STABILITY_LOW_BANDS].sum() / total)


def stability_score(path: np.ndarray) -> dict[str, float]:
    """Liu et al.'s stability of a camera path [N, 3, 3]: share of the 2nd..6th spectral components."""
    signals = path_signals(path)
    translation = _low_frequency_share(signals["x"], signals["y"])
    rotation = _low_frequency_share(signals["angle"])
    return {"stability": min(translation, rotation), "translation": translation, "rotation": rotation}


class PathMeter:
    """The camera path of a video measured frame by frame with :class:`FeatureMotion` (for the stability score)."""

    def __init__(self):
        self.motion = FeatureMotion()
        self.path = [np.eye(3)]
        self._previous: tuple[np.ndarray, np.ndarray | None] | None = None

    def push(self, frame: np.ndarray, mask: np.ndarray | None = None) -> None:
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        if self._previous is not None:
            self.path.append(normalised(self.motion(self._previous[0], grey, self._previous[1]) @ self.path[-1]))
        self._previous = (grey, mask)

    def score(self) -> dict[str, float]:
        return stability_score(np.stack(self.path))


# ----------------------------------------------------------------------------------------------- the pipeline


@dataclass
class Stabilization:
    """Everything a run computed: paths and transforms are [N, 3, 3] in centred coordinates."""

    raw_path: np.ndarray
    smooth_path: np.ndarray
    stabilizing: np.ndarray  # B_t = S_t C_t^-1, input -> output frame before the crop zoom
    crop_scale: float  # k: the output shows the centred rectangle of relative size k
    auto_crop_scale: float  # the largest k without black borders
    metrics: dict[str, float]
    motion: MotionStats
    outputs: dict[str, Path] = field(default_factory=dict)

    @property
    def transforms(self) -> np.ndarray:
        """W_t = zoom(1/k) B_t: the full input -> output transforms (centred coordinates)."""
        return zoom(1.0 / self.crop_scale) @ self.stabilizing


def parse_crop(text: str) -> str | float:
    """``--crop``: 'auto', 'none' or a ratio in (0, 1]."""
    if text in ("auto", "none"):
        return text
    try:
        ratio = float(text)
    except ValueError:
        raise ValueError(f"--crop must be 'auto', 'none' or a ratio in (0, 1], got '{text}'") from None
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"--crop ratio must be in (0, 1], got {ratio}")
    return ratio


def output_paths(output: Path) -> dict[str, Path]:
    stem = output.with_suffix("")
    return {
        "video": output,
        "side_by_side": stem.parent / f"{stem.name}_side_by_side.mp4",
        "path_plot": stem.parent / f"{stem.name}_path.png",
        "metrics": stem.parent / f"{stem.name}_metrics.json",
    }


def _progress(source: FrameSource, description: str) -> tqdm:
    return tqdm(total=source.frame_count, desc=description, unit="frame", dynamic_ncols=True, file=sys.stderr)


def _smoothed_entries(source: Iterable[np.ndarray], motion: Callable[[np.ndarray, np.ndarray], Matrix],
                      sigma: float, keep_frames: bool, progress: tqdm) -> Iterator[SmoothedEntry]:
    """Steps 1-3, streaming: every frame's raw and smoothed path (payload: the frame itself if ``keep_frames``)."""
    smoother = PathSmoother(sigma)
    previous, path = None, np.eye(3)
    for frame in source:
        if previous is not None:
            path = normalised(motion(previous, frame) @ path)
        yield from smoother.push(path, frame if keep_frames else None)
        previous = frame
        progress.update(1)
    yield from smoother.finish()


class _Outputs:
    """The stabilised video, the side-by-side video and the stability meters of input and output."""

    def __init__(self, paths: dict[str, Path], fps: float, height: int, width: int):
        self.height, self.width = height, width
        self.video = VideoWriter(paths["video"], fps)
        self.side_by_side = VideoWriter(paths["side_by_side"], fps)
        self.input_meter, self.output_meter = PathMeter(), PathMeter()
        self.preview_scale = min(1.0, PREVIEW_HALF_WIDTH / width)
        self.frames = 0

    def add(self, frame: np.ndarray, transform: Matrix) -> None:
        """Warp ``frame`` by ``transform`` (centred coordinates, input -> output) and write it everywhere."""
        pixel_transform = to_pixel_coordinates(transform, self.height, self.width)
        size = (self.width, self.height)
        stabilised = cv2.warpPerspective(frame, pixel_transform, size, flags=cv2.INTER_LINEAR,
                                         borderMode=cv2.BORDER_CONSTANT)
        corners = apply(pixel_transform, frame_corners(self.height, self.width) + centre_of(self.height, self.width))
        valid = np.zeros((self.height, self.width), np.uint8)
        cv2.fillConvexPoly(valid, np.round(corners).astype(np.int32), 255)
        valid = cv2.erode(valid, np.ones((7, 7), np.uint8))
        self.video.write(stabilised)
        halves = [frame, stabilised]
        if self.preview_scale < 1.0:
            small = (round(self.width * self.preview_scale), round(self.height * self.preview_scale))
            halves = [cv2.resize(half, small, interpolation=cv2.INTER_AREA) for half in halves]
        self.side_by_side.write(np.concatenate(halves, axis=1))
        self.input_meter.push(frame)
        self.output_meter.push(stabilised, valid)
        self.frames += 1

    def close(self) -> None:
        self.video.close()
        self.side_by_side.close()

    def abort(self) -> None:
        self.video.abort()
        self.side_by_side.abort()


def stabilize(source: FrameSource, motion: Callable[[np.ndarray, np.ndarray], Matrix], output: Path,
              sigma: float = 10.0, crop: str | float = "auto") -> Stabilization:
    """Stabilise ``source`` and write the videos, the path plot and the metrics JSON (see the module docstring).

    Args:
        source: the clip (read once, or twice with ``crop='auto'``).
        motion: frame-to-frame camera motion, e.g. :class:`FlowMotion` or :class:`FeatureMotion`.
        output: the stabilised .mp4; the other outputs are written beside it (:func:`output_paths`).
        sigma: Gaussian smoothing of the camera path, in frames (0 = none).
        crop: 'auto', 'none' or a fixed ratio in (0, 1].
    """
    if sigma < 0:
        raise ValueError(f"--smooth must be >= 0 frames, got {sigma}")
    paths = output_paths(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    two_pass = crop == "auto"
    fixed_scale = 1.0 if crop == "none" else (None if two_pass else float(crop))
    raw, smooth = [], []
    writer = None
    try:
        with _progress(source, "motion" if two_pass else "stabilise") as progress:
            if not two_pass:
                writer = _Outputs(paths, source.fps, source.height, source.width)
            for entry in _smoothed_entries(source, motion, sigma, keep_frames=not two_pass, progress=progress):
                raw.append(entry.raw)
                smooth.append(entry.smooth)
                if writer is not None:
                    stabilizing = entry.smooth @ np.linalg.inv(entry.raw)
                    writer.add(entry.payload, zoom(1.0 / fixed_scale) @ stabilizing)
        stabilizing = np.stack(smooth) @ np.linalg.inv(np.stack(raw))
        best_scale = auto_crop_scale(stabilizing, source.height, source.width)
        if two_pass:
            if best_scale < 0.05:
                raise ValueError(f"{source.path}: the stabilised frames do not overlap enough for an automatic crop "
                                 f"(k = {best_scale:.3f}); use --crop none or a smaller --smooth")
            writer = _Outputs(paths, source.fps, source.height, source.width)
            with _progress(source, "write") as progress:
                for frame, transform in zip(source, zoom(1.0 / best_scale) @ stabilizing):
                    writer.add(frame, transform)
                    progress.update(1)
        elif fixed_scale > best_scale:
            logger.warning(f"--crop {crop}: frames show black borders; the largest crop without them is "
                           f"{best_scale:.3f} (--crop auto)")
        if writer.frames != len(stabilizing):
            raise VideoError(f"{source.path}: the clip gave {len(stabilizing)} frames in the first pass and "
                             f"{writer.frames} in the second")
        writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise

    result = Stabilization(np.stack(raw), np.stack(smooth), stabilizing, best_scale if two_pass else fixed_scale,
                           best_scale, {}, getattr(motion, "stats", MotionStats()), paths)
    result.metrics = compute_metrics(result, writer)
    plot_camera_path(result.raw_path, result.smooth_path, paths["path_plot"])
    _write_json(paths["metrics"], _report(source, result, sigma))
    return result


def compute_metrics(result: Stabilization, writer: _Outputs) -> dict[str, float]:
    crop_mean, crop_min = cropping_ratio(result.transforms)
    output_stability = writer.output_meter.score()
    input_stability = writer.input_meter.score()
    return {
        "cropping_ratio": crop_mean,
        "cropping_ratio_min": crop_min,
        "distortion": distortion_value(result.transforms),
        "stability": output_stability["stability"],
        "stability_translation": output_stability["translation"],
        "stability_rotation": output_stability["rotation"],
        "input_stability": input_stability["stability"],
    }


def plot_camera_path(raw: np.ndarray, smooth: np.ndarray, path: Path) -> None:
    """PNG of the raw and smoothed camera path: x, y (px) and angle (degrees) over frames."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    raw_signals, smooth_signals = path_signals(raw), path_signals(smooth)
    figure, axes = plt.subplots(3, 1, figsize=(7, 5.5), sharex=True)
    for axis, key, label in zip(axes, ("x", "y", "angle"), ("x (px)", "y (px)", "angle (deg)")):
        axis.plot(raw_signals[key], color="tab:red", linewidth=1.0, label="raw")
        axis.plot(smooth_signals[key], color="tab:blue", linewidth=1.6, label="smoothed")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[0].legend(loc="best", fontsize=8)
    axes[0].set_title("camera path (frame-0 coordinates, centre of the frame)")
    axes[-1].set_xlabel("frame")
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=80)
    plt.close(figure)


def _report(source: FrameSource, result: Stabilization, sigma: float) -> dict[str, Any]:
    pixel = [to_pixel_coordinates(t, source.height, source.width) for t in result.transforms]
    return {
        "input": str(source.path),
        "frames": len(result.raw_path),
        "size": [source.height, source.width],
        "smooth_sigma": sigma,
        "crop_scale": result.crop_scale,
        "auto_crop_scale": result.auto_crop_scale,
        "metrics": result.metrics,
        "motion_fit_failures": result.motion.failures,
        "mean_inlier_ratio": float(np.mean(result.motion.inlier_ratios)) if result.motion.inlier_ratios else None,
        "outputs": {key: str(value) for key, value in result.outputs.items()},
        "coordinates": "'transforms': input pixel -> output pixel; the others act on centred coordinates "
                       "(origin at the image centre)",
        "transforms": np.round(pixel, 9).tolist(),
        "stabilizing_transforms": np.round(result.stabilizing, 9).tolist(),
        "camera_path": np.round(result.raw_path, 9).tolist(),
        "smoothed_camera_path": np.round(result.smooth_path, 9).tolist(),
    }


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(payload, indent=1))


def format_metrics(metrics: dict[str, float]) -> str:
    return (f"cropping ratio {metrics['cropping_ratio']:.3f} (min {metrics['cropping_ratio_min']:.3f}) | "
            f"distortion {metrics['distortion']:.3f} | stability {metrics['stability']:.3f} "
            f"(translation {metrics['stability_translation']:.3f}, rotation {metrics['stability_rotation']:.3f}; "
            f"input {metrics['input_stability']:.3f})")


# ----------------------------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--input", type=Path, required=True, help="video file or folder of frames")
    parser.add_argument("--output", type=Path, required=True, help="stabilised video (.mp4)")
    parser.add_argument("--backend", choices=BACKENDS,
                        help=f"flow backend (default: {TOOL_DEFAULT_BACKEND}, or protoformer with --ckpt/--config)")
    parser.add_argument("--ckpt", help="protoformer checkpoint (default: checkpoints/protoformer-s-synthetic.pth)")
    parser.add_argument("--config", help="protoformer config (default: the one stored with the checkpoint)")
    parser.add_argument("--device", help="protoformer device: cuda, cpu, ... (default: cuda if available)")
    parser.add_argument("--smooth", type=float, default=10.0, help="Gaussian sigma of the path smoothing in frames")
    parser.add_argument("--crop", default="auto", help="auto | none | RATIO in (0, 1] (default: %(default)s)")
    parser.add_argument("--max-side", type=int, help="compute the flow on frames downscaled to this longer side")
    parser.add_argument("--motion", choices=MOTION_MODELS, default="similarity", help="camera motion model")
    parser.add_argument("--ransac-threshold", type=float, default=1.5,
                        help="RANSAC inlier threshold in px at the input resolution (default: %(default)s)")
    parser.add_argument("--max-frames", type=int, help="stabilise only the first N frames")
    args = parser.parse_args(argv)
    args.backend = choose_backend(args.backend, args.ckpt, args.config)
    if args.output.suffix.lower() != ".mp4":
        parser.error(f"--output must be an .mp4 file, got {args.output}")
    if args.smooth < 0:
        parser.error("--smooth must be >= 0")
    if args.ransac_threshold <= 0:
        parser.error("--ransac-threshold must be positive")
    try:
        args.crop = parse_crop(args.crop)
    except ValueError as err:
        parser.error(str(err))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    errors: tuple[type[BaseException], ...] = (FileNotFoundError, VideoError, ValueError, OSError)
    if args.backend == "protoformer":
        from core.model.checkpoint import CheckpointError

        errors += (CheckpointError,)
    try:
        source = open_frames(args.input, max_frames=args.max_frames)
        logger.info(f"input: {source.kind} {source.path} ({source.width}x{source.height}, "
                    f"{source.frame_count or 'unknown number of'} frames at {source.fps:.3g} fps)")
        logger.info(describe_backend(args.backend))
        flow_fn = make_flow_backend(args.backend, ckpt=args.ckpt, config=args.config, device=args.device,
                                    max_side=args.max_side)
        flow_scale = max(1.0, max(source.height, source.width) / args.max_side) if args.max_side else 1.0
        motion = FlowMotion(flow_fn, args.motion, args.ransac_threshold * flow_scale)
        result = stabilize(source, motion, args.output, sigma=args.smooth, crop=args.crop)
    except errors as err:
        logger.error(str(err))
        return 2
    if result.motion.failures:
        logger.warning(f"no camera motion found for {len(result.motion.failures)} frame pairs (identity used): "
                       f"{result.motion.failures[:20]}")
    logger.info(f"crop scale {result.crop_scale:.3f} (largest without borders {result.auto_crop_scale:.3f})")
    logger.info(format_metrics(result.metrics))
    logger.info("wrote " + ", ".join(str(p) for p in result.outputs.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
