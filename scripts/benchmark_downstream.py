"""Ground-truth benchmark of the downstream tools: removal of injected camera shake, box and point tracking.

    python scripts/benchmark_downstream.py                   # vtest.avi (60 frames) + synthetic; dis (+ protoformer)
    python scripts/benchmark_downstream.py --quick           # tiny synthetic clips only (seconds; used by the tests)
    python scripts/benchmark_downstream.py --backends dis farneback --out runs/downstream/benchmark.json

Stabilisation. A steady clip (the first ``--real-frames`` frames of the fixed-camera ``vtest.avi``, and a synthetic
scene with moving objects and a still camera) is shaken by a known random camera path S_t (centred coordinates:
a similarity with Gaussian-low-pass random translation, rotation and scale, normalised to +-``translation`` px,
+-``rotation`` degrees and +-``scale``, plus white jitter), after a fixed zoom that keeps the shaken frames free
of borders. Each method estimates the camera motion, smooths it with the same Gaussian (sigma 10 frames, 4 with
``--quick``) and warps; its stabilising transforms B_t (before the crop zoom) are scored against the truth
(:func:`shake_residual`): the clean clip's frame corners c land at B_t S_t c in the output, where an exact motion
estimate with the same smoother would put them at smooth(S)_t c (the low-frequency part the smoother intentionally
keeps). Reported: the
injected jitter RMS(S_t c - smooth(S)_t c), the residual jitter RMS(B_t S_t c - smooth(S)_t c), the share removed
(1 - residual / injected), the residual's part above the smoother's pass band (drift excluded), and the standard
cropping ratio, distortion and stability (``scripts/stabilize.py``; stability of the output, and of the shaken
input for reference). Methods: the flow backends (FlowMotion: dense flow on a grid + RANSAC similarity) and the
classic recipe (goodFeaturesToTrack + pyramidal LK + estimateAffinePartial2D), with the same smoothing and crop.

Tracking. Synthetic clips with exact ground truth: a textured background (optionally panning), a textured
rectangle moving along a smooth path while changing scale, optionally a textured occluder crossing it; query
points on the object and on the background, with visibility. Box: success rate (IoU > 0.5) and mean IoU over
frames 1..T-1. Points (TAP-Vid, Doersch et al. 2022): delta_avg, the share of ground-truth-visible points within
1, 2, 4, 8, 16 px of the truth, averaged over the thresholds (pixels of the clip, frames after the query frame),
and the occlusion accuracy (predicted visibility == truth). Methods: the tracker of ``scripts/track.py`` on each
flow backend, the same tracker on OpenCV's pyramidal Lucas-Kanade, and a static baseline (nothing moves) that
shows where chance lies.

Writes ``--out`` (JSON with every number) and logs the tables; ``--previews DIR`` also writes
``stabilize_preview.png`` and ``track_preview.png`` there.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import cv2
import numpy as np
from loguru import logger
from scipy.ndimage import gaussian_filter1d

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from core.data.synthetic import render_pair  # noqa: E402
from core.utils.atomic import atomic_write_text  # noqa: E402
from core.utils.shared import shared_dir  # noqa: E402
from core.flow_backends import BACKENDS, make_flow_backend  # noqa: E402
from core.inference import DEFAULT_CHECKPOINT, DEFAULT_CHECKPOINT_PATH  # noqa: E402
from core.video import open_frames  # noqa: E402
from scripts.stabilize import (  # noqa: E402
    FeatureMotion,
    FlowMotion,
    apply,
    auto_crop_scale,
    frame_corners,
    normalised,
    smooth_path,
    stabilize,
    to_pixel_coordinates,
    zoom,
)
from scripts.track import DenseFlowMotion, LucasKanadeMotion, Tracker, draw  # noqa: E402

REAL_CLIP = Path("realdata") / "videos" / "vtest.avi"
DELTA_THRESHOLDS = (1, 2, 4, 8, 16)
PREVIEW_WIDTH = 576  # px, width of the preview images for the docs


# ----------------------------------------------------------------------------------------------- synthetic clips


@dataclass
class SceneClip:
    """A synthetic clip with exact ground truth (frames are small, so they are kept in memory).

    Attributes:
        frames: T frames, uint8 [H, W, 3] RGB.
        boxes: [T, 4] x, y, w, h of the target's full extent (also while occluded).
        points: [T, N, 2] query point positions (x, y); the queries are ``points[0]``.
        visible: [T, N] bool, the point is in the frame and not hidden by a nearer layer.
    """

    frames: list[np.ndarray]
    boxes: np.ndarray
    points: np.ndarray
    visible: np.ndarray

    @property
    def height(self) -> int:
        return self.frames[0].shape[0]

    @property
    def width(self) -> int:
        return self.frames[0].shape[1]


def _texture(seed: int, height: int, width: int, layers: tuple[int, int] = (3, 6),
             difficulty: float = 0.5) -> np.ndarray:
    """A textured image [H, W, 3] uint8: frame 1 of a procedural layered scene (core.data.synthetic)."""
    return render_pair(seed, 0, (height, width), stream=2, num_layers=layers, difficulty=difficulty)["image1"]


def _layer(texture: np.ndarray, affine: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Render a texture placed by ``affine`` [2, 3] (texture pixel -> frame pixel): colour and coverage [H, W]."""
    colour = cv2.warpAffine(texture, affine, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    coverage = cv2.warpAffine(np.ones(texture.shape[:2], np.float32), affine, (width, height), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    return colour.astype(np.float32), coverage


def _placement(size: tuple[int, int], centre: np.ndarray, scale: float) -> np.ndarray:
    """Affine [2, 3] putting a texture of (h, w) pixels centred at ``centre`` with ``scale``."""
    height, width = size
    return np.array([[scale, 0.0, centre[0] - scale * (width - 1) / 2.0],
                     [0.0, scale, centre[1] - scale * (height - 1) / 2.0]])


def _covered(coverage: np.ndarray, points: np.ndarray) -> np.ndarray:
    xs = np.clip(np.round(points[:, 0]).astype(int), 0, coverage.shape[1] - 1)
    ys = np.clip(np.round(points[:, 1]).astype(int), 0, coverage.shape[0] - 1)
    return coverage[ys, xs] > 0.5


def make_scene_clip(seed: int = 0, size: tuple[int, int] = (240, 320), frames: int = 48, camera_motion: bool = True,
                    occluder: bool = True, num_points: int = 24, travel: float = 0.4) -> SceneClip:
    """A textured target moving over a textured background, with known box, point tracks and visibility.

    The target (about a fifth of the frame) travels ``travel`` of the frame width along a wavy path while its scale
    drifts by up to +-20 %; the camera (``camera_motion``) pans slowly with a wobble; an ``occluder`` crosses the
    target's path around the middle of the clip. Half of the query points lie on the target, half on the
    background (where it is visible in frame 0).
    """
    rng = np.random.default_rng(seed)
    height, width = size
    margin = int(0.25 * max(height, width))
    # a busy background with few flat regions (low difficulty: rarely a near-textureless layer)
    world = _texture(3 * seed, height + 2 * margin, width + 2 * margin, layers=(8, 12), difficulty=0.2)
    time_axis = np.arange(frames, dtype=np.float64)
    progress = time_axis / max(frames - 1, 1)

    camera = np.zeros((frames, 2))
    if camera_motion:
        pan = rng.uniform(-0.3, 0.3, 2) * margin
        wobble = rng.uniform(1.0, 4.0, 2)
        camera = progress[:, None] * pan + wobble * np.sin(2 * np.pi * progress[:, None] * rng.uniform(0.7, 1.5, 2))

    target_size = (round(height * rng.uniform(0.22, 0.3)), round(width * rng.uniform(0.18, 0.24)))
    target_texture = _texture(3 * seed + 1, *target_size)
    direction = rng.choice([-1.0, 1.0])
    start = np.array([width * (0.5 - direction * travel / 2), height * rng.uniform(0.4, 0.6)])
    wave = 0.08 * height * np.sin(2 * np.pi * progress * rng.uniform(0.5, 1.2) + rng.uniform(0, np.pi))
    target_centre = start + np.stack([direction * travel * width * progress, wave], axis=1)
    target_scale = np.exp(np.log(rng.uniform(0.85, 1.2)) * progress)

    occluder_size = (round(0.9 * target_size[0]), round(0.6 * target_size[1]))
    occluder_texture = _texture(3 * seed + 2, *occluder_size)
    crossing = target_centre[frames // 2]
    occluder_centre = crossing + np.stack([np.zeros(frames), (progress - 0.5) * 1.6 * height], axis=1)

    half = num_points // 2
    texture_points = rng.uniform(0.1, 0.9, (half, 2)) * [target_size[1] - 1, target_size[0] - 1]
    frames_out, boxes, points, visible = [], [], [], []
    background_world = None
    for t in range(frames):
        view = np.array([[1.0, 0.0, margin + camera[t, 0]], [0.0, 1.0, margin + camera[t, 1]]])
        image = cv2.warpAffine(world, view, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        image = image.astype(np.float32)
        target_affine = _placement(target_size, target_centre[t], target_scale[t])
        colour, target_coverage = _layer(target_texture, target_affine, height, width)
        image = target_coverage[..., None] * colour + (1 - target_coverage[..., None]) * image
        occluder_coverage = np.zeros((height, width), np.float32)
        if occluder:
            colour, occluder_coverage = _layer(occluder_texture, _placement(occluder_size, occluder_centre[t], 1.0),
                                               height, width)
            image = occluder_coverage[..., None] * colour + (1 - occluder_coverage[..., None]) * image
        frames_out.append(np.clip(np.round(image), 0, 255).astype(np.uint8))

        scale = target_scale[t]
        extent = scale * np.array([target_size[1], target_size[0]])
        boxes.append([*(target_centre[t] - extent / 2), *extent])
        on_target = texture_points @ target_affine[:, :2].T + target_affine[:, 2]
        if background_world is None:
            candidates = rng.uniform([0.05 * width, 0.05 * height], [0.95 * width, 0.95 * height], (8 * half, 2))
            free = ~_covered(np.maximum(target_coverage, occluder_coverage), candidates)
            background_world = candidates[free][: num_points - half] + margin + camera[0]
        on_background = background_world - margin - camera[t]
        positions = np.concatenate([on_target, on_background])
        hidden = np.concatenate([_covered(occluder_coverage, on_target),
                                 _covered(np.maximum(target_coverage, occluder_coverage), on_background)])
        in_frame = (positions[:, 0] >= 0) & (positions[:, 0] <= width - 1) & (positions[:, 1] >= 0) & (
            positions[:, 1] <= height - 1)
        points.append(positions)
        visible.append(in_frame & ~hidden)
    return SceneClip(frames_out, np.array(boxes), np.array(points), np.array(visible))


@dataclass
class ListSource:
    """Frames held in a list, with the attributes of :class:`core.video.FrameSource` the tools use."""

    frames: list[np.ndarray]
    path: Path
    fps: float = 10.0

    @property
    def height(self) -> int:
        return self.frames[0].shape[0]

    @property
    def width(self) -> int:
        return self.frames[0].shape[1]

    @property
    def frame_count(self) -> int:
        return len(self.frames)

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.frames)


# ----------------------------------------------------------------------------------------------- injected shake


def random_shake(count: int, seed: int, translation: float = 15.0, rotation: float = 2.0, scale: float = 0.02,
                 jitter: tuple[float, float, float] = (2.0, 0.3, 0.003), lowpass: float = 8.0) -> np.ndarray:
    """A random camera-shake path [count, 3, 3] of similarities on centred coordinates.

    Gaussian-low-pass (sigma ``lowpass`` frames) white noise scaled to peak at +-``translation`` px (x and y),
    +-``rotation`` degrees and +-``scale`` (relative), plus white jitter of standard deviations
    ``jitter`` = (px, degrees, relative scale).
    """
    rng = np.random.default_rng(seed)
    slow = gaussian_filter1d(rng.normal(size=(count, 4)), lowpass, axis=0, mode="reflect")
    slow /= np.abs(slow).max(axis=0)
    fast = rng.normal(size=(count, 4)) * [jitter[0], jitter[0], jitter[1], jitter[2]]
    shift = translation * slow[:, :2] + fast[:, :2]
    angle = np.radians(rotation * slow[:, 2] + fast[:, 2])
    factor = 1.0 + scale * slow[:, 3] + fast[:, 3]
    shake = np.zeros((count, 3, 3))
    shake[:, 0, 0] = shake[:, 1, 1] = factor * np.cos(angle)
    shake[:, 1, 0] = factor * np.sin(angle)
    shake[:, 0, 1] = -shake[:, 1, 0]
    shake[:, :2, 2] = shift
    shake[:, 2, 2] = 1.0
    return shake


@dataclass
class ShakenSource:
    """A steady clip seen through a shaking camera, rendered lazily frame by frame.

    Frame t is the clean frame warped by S_t zoom(pre_zoom) (centred coordinates), with ``pre_zoom`` just large
    enough that no shaken frame shows a border; so the clean frame's corners, zoomed, are the reference.
    """

    base: Iterable[np.ndarray]  # re-iterable clean frames (a FrameSource or a list)
    shake: np.ndarray
    height: int
    width: int
    path: Path
    fps: float = 10.0

    @property
    def pre_zoom(self) -> float:
        return 1.0 / auto_crop_scale(self.shake, self.height, self.width) * 1.01

    @property
    def frame_count(self) -> int:
        return len(self.shake)

    def __iter__(self) -> Iterator[np.ndarray]:
        pre_zoom = self.pre_zoom
        for frame, shake in zip(self.base, self.shake):
            warp = to_pixel_coordinates(shake @ zoom(pre_zoom), self.height, self.width)
            yield cv2.warpPerspective(frame, warp, (self.width, self.height), flags=cv2.INTER_LINEAR,
                                      borderMode=cv2.BORDER_REPLICATE)


def _rms(offsets: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum(offsets**2, axis=-1))))


def shake_residual(stabilizing: np.ndarray, shake: np.ndarray, sigma: float, height: int,
                   width: int) -> dict[str, float]:
    """Ground-truth scores of stabilising transforms B_t [T, 3, 3] against the injected shake S_t [T, 3, 3].

    With the frame corners c of the clean clip: the smoother alone, given the exact motion, would show them at
    ideal_t = smooth(S)_t c (``smooth_path``, sigma frames); the injected jitter is RMS(S_t c - ideal_t), the part
    of the shake the smoother is meant to remove; the residual jitter is RMS(B_t S_t c - ideal_t), what is left
    of it in the output (0 for an exact motion estimate), and ``removed`` = 1 - residual / injected. The residual
    above the smoother's pass band (slow drift excluded) is reported as ``residual_high_freq_px``.
    """
    corners = frame_corners(height, width)
    ideal = apply(np.stack([normalised(m) for m in smooth_path(shake, sigma)]), corners)
    injected = _rms(apply(shake, corners) - ideal)
    error = apply(stabilizing @ shake, corners) - ideal
    residual = _rms(error)
    return {
        "injected_jitter_px": injected,
        "residual_jitter_px": residual,
        "removed": 1.0 - residual / injected,
        "residual_high_freq_px": _rms(error - smooth_path(error, sigma)),
    }


# ----------------------------------------------------------------------------------------------- tracking metrics


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU of boxes [..., 4] (x, y, w, h) pairwise along the leading axes."""
    x0 = np.maximum(boxes_a[..., 0], boxes_b[..., 0])
    y0 = np.maximum(boxes_a[..., 1], boxes_b[..., 1])
    x1 = np.minimum(boxes_a[..., 0] + boxes_a[..., 2], boxes_b[..., 0] + boxes_b[..., 2])
    y1 = np.minimum(boxes_a[..., 1] + boxes_a[..., 3], boxes_b[..., 1] + boxes_b[..., 3])
    intersection = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    union = boxes_a[..., 2] * boxes_a[..., 3] + boxes_b[..., 2] * boxes_b[..., 3] - intersection
    return intersection / np.maximum(union, 1e-12)


def box_scores(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Success rate (IoU > 0.5) and mean IoU over frames 1..T-1 (frame 0 is the given box)."""
    iou = box_iou(predicted[1:], truth[1:])
    return {"success": float((iou > 0.5).mean()), "mean_iou": float(iou.mean())}


def point_scores(predicted: np.ndarray, predicted_visible: np.ndarray, truth: np.ndarray,
                 truth_visible: np.ndarray) -> dict[str, float]:
    """TAP-Vid delta_avg (over ground-truth-visible points of frames 1..T-1) and occlusion accuracy."""
    error = np.linalg.norm(predicted[1:] - truth[1:], axis=-1)
    seen = truth_visible[1:]
    within = {f"within_{d}": float((error[seen] < d).mean()) for d in DELTA_THRESHOLDS}
    return {"delta_avg": float(np.mean(list(within.values()))),
            "occlusion_accuracy": float((predicted_visible[1:] == seen).mean()), **within}


def run_tracker(clip: SceneClip, motion) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Boxes [T, 4], points [T, N, 2], visibility [T, N] from the tracker of scripts/track.py; seconds per frame."""
    tracker = Tracker(motion, clip.frames[0], clip.boxes[0], clip.points[0])
    states = [tracker.state]
    start = time.perf_counter()
    for frame in clip.frames[1:]:
        states.append(tracker.step(frame))
    seconds = (time.perf_counter() - start) / max(len(clip.frames) - 1, 1)
    return (np.stack([s.box for s in states]), np.stack([s.points for s in states]),
            np.stack([s.visible for s in states]), seconds)


# ----------------------------------------------------------------------------------------------- runs


@dataclass
class Settings:
    sigma: float
    real_frames: int
    stabilisation_clips: list[dict[str, Any]]
    tracking_clips: list[dict[str, Any]]


def settings(quick: bool, real_frames: int) -> Settings:
    if quick:
        shake = dict(translation=6.0, rotation=1.5, scale=0.015, jitter=(1.5, 0.3, 0.003))
        return Settings(
            sigma=4.0,
            real_frames=0,
            stabilisation_clips=[dict(name="synthetic", seed=0, size=(120, 160), frames=20, shake=shake)],
            tracking_clips=[dict(seed=0, size=(120, 160), frames=20, camera_motion=True, occluder=True)],
        )
    return Settings(
        sigma=10.0,
        real_frames=real_frames,
        stabilisation_clips=[dict(name="vtest", seed=1, frames=real_frames, shake={}),
                             dict(name="synthetic", seed=2, size=(288, 384), frames=60, shake={})],
        tracking_clips=[dict(seed=seed, size=(240, 320), frames=48, camera_motion=seed % 2 == 0, occluder=seed % 3 != 2)
                        for seed in range(100, 110)],  # seeds never used to tune the tracker
    )


def stabilisation_methods(flow_backends: dict[str, Any]) -> dict[str, Any]:
    methods = {f"flow:{name}": FlowMotion(backend) for name, backend in flow_backends.items()}
    methods["classic (GFTT+LK)"] = FeatureMotion()
    return methods


def run_stabilisation(settings_: Settings, flow_backends: dict[str, Any], shared: Path | None, workdir: Path,
                      previews: Path | None) -> list[dict[str, Any]]:
    rows = []
    for spec in settings_.stabilisation_clips:
        if spec["name"] == "vtest":
            if shared is None or not (shared / REAL_CLIP).is_file():
                logger.warning(f"skipping the real clip: {REAL_CLIP} not found under --shared {shared}")
                continue
            base = open_frames(shared / REAL_CLIP, max_frames=spec["frames"])
            height, width, frames = base.height, base.width, min(spec["frames"], base.frame_count or spec["frames"])
        else:
            scene = make_scene_clip(spec["seed"], spec["size"], spec["frames"], camera_motion=False, occluder=True,
                                    travel=0.5)
            base, (height, width), frames = scene.frames, spec["size"], spec["frames"]
        shake = random_shake(frames, spec["seed"], **spec["shake"])
        source = ShakenSource(base, shake, height, width, Path(f"{spec['name']}-shaken"))
        for method_name, motion in stabilisation_methods(flow_backends).items():
            start = time.perf_counter()
            output = workdir / f"{spec['name']}_{method_name.split(' ')[0].replace(':', '_')}.mp4"
            result = stabilize(source, motion, output, sigma=settings_.sigma, crop="auto")
            seconds = (time.perf_counter() - start) / len(shake)
            truth = shake_residual(result.stabilizing, shake, settings_.sigma, height, width)
            rows.append({"clip": spec["name"], "method": method_name, "frames": len(shake), "size": [height, width],
                         "seconds_per_frame": seconds, **truth, **result.metrics})
            logger.info(f"stabilisation {spec['name']} {method_name}: removed {truth['removed']:.1%} of the jitter")
            if previews is not None and spec["name"] == "vtest" and method_name == "flow:dis":
                _stabilize_preview(source, result, previews / "stabilize_preview.png")
    return rows


def run_tracking(settings_: Settings, flow_backends: dict[str, Any], previews: Path | None) -> list[dict[str, Any]]:
    per_clip = []
    for spec in settings_.tracking_clips:
        clip = make_scene_clip(spec["seed"], spec["size"], spec["frames"], spec["camera_motion"], spec["occluder"])
        methods = {f"flow:{name}": DenseFlowMotion(backend) for name, backend in flow_backends.items()}
        methods["lucas-kanade"] = LucasKanadeMotion()
        for method_name, motion in methods.items():
            boxes, points, visible, seconds = run_tracker(clip, motion)
            per_clip.append({"clip": spec["seed"], "method": method_name, "seconds_per_frame": seconds,
                             **box_scores(boxes, clip.boxes),
                             **point_scores(points, visible, clip.points, clip.visible)})
            if previews is not None and method_name == "flow:dis" and spec is settings_.tracking_clips[0]:
                _track_preview(clip, boxes, points, visible, previews / "track_preview.png")
        frames = len(clip.frames)
        static_points = np.repeat(clip.points[:1], frames, axis=0)
        per_clip.append({"clip": spec["seed"], "method": "static (no motion)", "seconds_per_frame": 0.0,
                         **box_scores(np.repeat(clip.boxes[:1], frames, axis=0), clip.boxes),
                         **point_scores(static_points, np.ones(clip.visible.shape, bool), clip.points, clip.visible)})
    return per_clip


def average_by_method(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    methods = list(dict.fromkeys(row["method"] for row in rows))
    averaged = []
    for method in methods:
        chosen = [row for row in rows if row["method"] == method]
        keys = [k for k, v in chosen[0].items() if isinstance(v, float)]
        means = {key: float(np.mean([row[key] for row in chosen])) for key in keys}
        averaged.append({"method": method, "clips": len(chosen), **means})
    return averaged


# ----------------------------------------------------------------------------------------------- previews and tables


def _label(image: np.ndarray, text: str) -> np.ndarray:
    """``text`` in the top-left corner, white on a dark band."""
    labelled = image.copy()
    cv2.rectangle(labelled, (0, 0), (8 + 7 * len(text), 18), (0, 0, 0), -1)
    cv2.putText(labelled, text, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
    return labelled


def _stabilize_preview(source: ShakenSource, result, path: Path) -> None:
    """The most shaken frame: input | stabilised, above the camera-path plot; small enough for the docs."""
    index = int(np.argmax(np.abs(source.shake[:, 0, 2]) + np.abs(source.shake[:, 1, 2])))
    frame = next(f for i, f in enumerate(source) if i == index)
    warp = to_pixel_coordinates(result.transforms[index], source.height, source.width)
    stabilised = cv2.warpPerspective(frame, warp, (source.width, source.height), flags=cv2.INTER_LINEAR)
    half = (PREVIEW_WIDTH // 2, round(PREVIEW_WIDTH / 2 * source.height / source.width))
    pair = np.concatenate([_label(cv2.resize(image, half, interpolation=cv2.INTER_AREA), text) for image, text in
                           ((frame, f"input (shaken), frame {index}"), (stabilised, "stabilised (flow: dis)"))], axis=1)
    plot = cv2.cvtColor(cv2.imread(str(result.outputs["path_plot"])), cv2.COLOR_BGR2RGB)
    plot = cv2.resize(plot, (pair.shape[1], round(plot.shape[0] * pair.shape[1] / plot.shape[1])),
                      interpolation=cv2.INTER_AREA)
    _write_png(path, np.concatenate([pair, plot], axis=0))


def _track_preview(clip: SceneClip, boxes: np.ndarray, points: np.ndarray, visible: np.ndarray, path: Path) -> None:
    """Three frames of a synthetic clip: tracked box (green) and trail, true box (white), points (x = occluded)."""
    from scripts.track import TrackState

    panels = []
    size = (PREVIEW_WIDTH // 3, round(PREVIEW_WIDTH / 3 * clip.height / clip.width))
    for index in np.linspace(0, len(clip.frames) - 1, 3).round().astype(int):
        trail = [b[:2] + b[2:] / 2 for b in boxes[: index + 1]]
        canvas = draw(clip.frames[index], TrackState(boxes[index], False, points[index], visible[index]), trail)
        x, y, w, h = clip.boxes[index]
        cv2.rectangle(canvas, (round(x), round(y)), (round(x + w), round(y + h)), (255, 255, 255), 1, cv2.LINE_AA)
        panels.append(_label(cv2.resize(canvas, size, interpolation=cv2.INTER_AREA), f"frame {index}"))
    _write_png(path, np.concatenate(panels, axis=1))


def _write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])


def format_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """A plain-text table; ``columns`` are (key, header, format)."""
    header = " | ".join(title for _, title, _ in columns)
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(" | ".join(format(row[key], fmt).rjust(len(title)) if not isinstance(row[key], str)
                                else row[key].ljust(len(title)) for key, title, fmt in columns))
    return "\n".join(lines)


STABILISATION_COLUMNS = [("clip", "clip     ", ""), ("method", "method              ", ""),
                         ("injected_jitter_px", "injected px", ".2f"), ("residual_jitter_px", "residual px", ".3f"),
                         ("removed", "removed", ".1%"), ("residual_high_freq_px", "resid. HF px", ".3f"),
                         ("cropping_ratio", "crop ratio", ".3f"),
                         ("distortion", "distortion", ".3f"), ("stability", "stability", ".3f"),
                         ("input_stability", "input stab.", ".3f"), ("seconds_per_frame", "s/frame", ".3f")]
TRACKING_COLUMNS = [("method", "method              ", ""), ("clips", "clips", "d"), ("success", "success", ".3f"),
                    ("mean_iou", "mean IoU", ".3f"), ("delta_avg", "delta_avg", ".3f"),
                    ("within_1", "<1px", ".3f"), ("within_4", "<4px", ".3f"), ("within_16", "<16px", ".3f"),
                    ("occlusion_accuracy", "occl. acc.", ".3f"), ("seconds_per_frame", "s/frame", ".3f")]


# ----------------------------------------------------------------------------------------------- command line


def build_backends(names: list[str], ckpt: Path | None, max_side: int | None) -> tuple[dict[str, Any], list[str]]:
    """The flow backends that can run, and notes on those skipped (e.g. protoformer without a checkpoint)."""
    backends, notes = {}, []
    for name in names:
        if name == "protoformer":
            checkpoint = ckpt or DEFAULT_CHECKPOINT_PATH
            if not checkpoint.is_file():
                notes.append(f"protoformer skipped: no checkpoint at {checkpoint} (train one with "
                             f"'python train.py --config configs/synthetic.yaml' or pass --ckpt)")
                continue
            backends[name] = make_flow_backend(name, ckpt=checkpoint, max_side=max_side)
        else:
            backends[name] = make_flow_backend(name)
    return backends, notes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny synthetic clips only (for tests)")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=["dis", "protoformer"],
                        help="flow backends to compare (protoformer is skipped with a note without a checkpoint)")
    parser.add_argument("--ckpt", type=Path, help=f"protoformer checkpoint (default: {DEFAULT_CHECKPOINT})")
    parser.add_argument("--protoformer-max-side", type=int, default=384,
                        help="protoformer runs on frames downscaled to this longer side (CPU time)")
    parser.add_argument("--shared", type=Path, default=shared_dir(),
                        help="folder holding realdata/videos/vtest.avi (default: $PROTOFORMER_SHARED, else "
                             "../shared beside the repository: %(default)s)")
    parser.add_argument("--real-frames", type=int, default=60, help="frames of vtest.avi to use")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "downstream" / "benchmark.json")
    parser.add_argument("--previews", type=Path, help="write stabilize_preview.png and track_preview.png here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    backends, notes = build_backends(args.backends, args.ckpt, args.protoformer_max_side)
    for note in notes:
        logger.warning(note)
    if not backends:
        logger.error("no flow backend can run")
        return 2
    settings_ = settings(args.quick, args.real_frames)
    with tempfile.TemporaryDirectory() as workdir:
        stabilisation = run_stabilisation(settings_, backends, args.shared, Path(workdir), args.previews)
    tracking = run_tracking(settings_, backends, args.previews)
    tracking_summary = average_by_method(tracking)
    logger.info("stabilisation of injected shake (sigma {} frames):\n{}".format(
        settings_.sigma, format_table(stabilisation, STABILISATION_COLUMNS)))
    logger.info("tracking ({} synthetic clips, mean over clips):\n{}".format(
        len(settings_.tracking_clips), format_table(tracking_summary, TRACKING_COLUMNS)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"quick": args.quick, "smooth_sigma": settings_.sigma, "notes": notes,
               "stabilisation": stabilisation, "tracking": tracking_summary, "tracking_per_clip": tracking}
    atomic_write_text(args.out, json.dumps(payload, indent=1))
    logger.info(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
