"""Object and point tracking driven by dense optical flow, with forward-backward consistency.

    python scripts/track.py --input clip.mp4 --box 120,80,60,40 --output tracked.mp4            # DIS flow (the default)
    python scripts/track.py --input frames/ --box 120,80,60,40 --points q.csv --output tracked.mp4 --backend protoformer

Writes OUT.mp4 (the video with the box, its trail and the points drawn), OUT_boxes.csv (``frame,x,y,w,h,lost``)
and, with ``--points``, OUT_points.csv (``frame,point_id,x,y,visible``). Boxes are ``x,y,w,h`` in pixels (top-left
corner, size); points are pixel positions (x right, y down; pixel centres at integers). ``--points`` is a CSV of
``x,y`` rows (an optional header naming the columns ``x`` and ``y`` may come first): query points in frame 0.

Method, for every consecutive pair of frames (t, t+1):

* Flow both ways: f_fw (t -> t+1) and f_bw (t+1 -> t). A point p moves to p + f_fw(p) and is *reliable* when the
  forward-backward error |f_fw(p) + f_bw(p + f_fw(p))| is below ``--fb-threshold`` px (sampled bilinearly) and
  p + f_fw(p) stays inside the frame (Kalal et al., "Forward-backward error", ICPR 2010; Sundaram et al., ECCV
  2010). Occluded or mismatched points fail it.
* Box: points are re-seeded every frame on a regular grid over the central ``BOX_CORE`` of the box. The box moves
  by the median displacement of the reliable points that share its dominant motion (:func:`dominant_motion`: the
  mode of the displacements, weighted by closeness to the box's previous velocity, so an occluder sweeping over
  the box does not carry it away); by default its size changes by the median ratio of the distances between
  pairs of those points after and before (at most +-``MAX_SCALE_STEP`` per frame; ``--no-scale`` keeps it).
  When that support falls below ``MIN_RELIABLE`` points or below ``OCCLUSION_DROP`` of its recent typical value
  (an occlusion), the box keeps its last velocity (for at most ``COAST_FRAMES`` frames) and is marked lost until
  the support comes back. Whenever the support is not healthy (below ``HEALTHY_SUPPORT`` of its typical value:
  lost, partly occluded or recovering), the box snaps to the best normalised cross-correlation match (at least
  ``RELOCATE_SCORE``) of its grey template, kept from the last healthy frame, within ``RELOCATE_MARGIN`` of its
  size around the predicted box.
* Query points: a visible point follows the flow; it turns invisible when it fails the forward-backward check
  or its 7x7 grey patch no longer matches its template (mean absolute difference above
  ``APPEARANCE_THRESHOLD`` grey levels; the template is refreshed at every confident step). An invisible point
  moves on with its last reliable displacement (constant velocity, for at most ``COAST_FRAMES`` frames; then it
  stays) and becomes visible again where a local search (radius ``SEARCH_RADIUS`` px) finds its template and the
  flow there is reliable.

``--max-side`` computes the flow on downscaled frames (scaled back to the input size); the forward-backward
threshold, given at the input resolution, grows by the same factor.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
from loguru import logger
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from core.flow_backends import (  # noqa: E402
    BACKENDS, TOOL_DEFAULT_BACKEND, FlowFn, choose_backend, describe_backend, make_flow_backend)
from core.utils.atomic import publish, temporary_path_beside  # noqa: E402
from core.video import FrameSource, VideoError, VideoWriter, open_frames  # noqa: E402

BOX_GRID = 16  # box points per side
BOX_CORE = 0.8  # the box points cover this central fraction of the box (its border is often background)
MIN_RELIABLE = 6
MAX_SCALE_STEP = 0.05
PATCH = 7  # px, side of the appearance patch of a query point
APPEARANCE_THRESHOLD = 25.0  # mean absolute grey difference to the template, 0..255
SEARCH_RADIUS = 4  # px, re-detection window around an invisible point's predicted position
COAST_FRAMES = 10  # a lost box or invisible point moves on with its last velocity for at most this many frames
TRAIL = 40  # frames of box-centre trail drawn
CLUSTER_RADIUS = 1.0  # px: displacements this close belong to one motion (at least the forward-backward threshold)
PRIOR_MIN_SPREAD = 2.0  # px: the motion prior's tolerance for a box at rest
OCCLUSION_DROP = 0.5  # the box coasts when its support falls below this share of its recent typical support
SUPPORT_HISTORY = 10  # frames of support remembered
HEALTHY_SUPPORT = 0.95  # the box template is refreshed while the support is at least this share of its typical value
RELOCATE_MARGIN = 0.3  # the relocation search extends this share of the box size around the predicted box
MIN_TEMPLATE_CONTRAST = 2.0  # grey levels (standard deviation) a box template needs to be matched at all
RELOCATE_SCORE = 0.6  # minimum normalised cross-correlation for a relocation


# ----------------------------------------------------------------------------------------------- point motion


def sample(field: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``field`` [H, W, C] at points [N, 2] (x, y) -> [N, C] (borders replicated)."""
    if len(points) == 0:
        return np.zeros((0, field.shape[2]), np.float32)
    maps = np.ascontiguousarray(points, dtype=np.float32).reshape(1, -1, 2)
    values = cv2.remap(field, maps[..., 0], maps[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return values.reshape(len(points), -1)


def inside(points: np.ndarray, height: int, width: int) -> np.ndarray:
    return (points[:, 0] >= 0) & (points[:, 0] <= width - 1) & (points[:, 1] >= 0) & (points[:, 1] <= height - 1)


def forward_backward_error(forward: np.ndarray, backward: np.ndarray,
                           points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Moved points [N, 2] = p + f_fw(p) and the error |f_fw(p) + f_bw(p + f_fw(p))| [N] px.

    ``forward``, ``backward``: [H, W, 2] flows between the two frames; the error is inf where p + f_fw(p) leaves
    the frame.
    """
    displacement = sample(forward, points)
    moved = points + displacement
    error = np.linalg.norm(displacement + sample(backward, moved), axis=1)
    error[~inside(moved, *forward.shape[:2])] = np.inf
    return moved, error


class PointMotion(Protocol):
    """Moves points from one frame to the next; ``move`` returns (moved [N, 2], forward-backward error [N] px)."""

    def set_pair(self, frame_a: np.ndarray, frame_b: np.ndarray) -> None: ...

    def move(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def move_back(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class DenseFlowMotion:
    """Point motion from a dense flow backend: two flow fields per frame pair, sampled at any points."""

    def __init__(self, flow_fn: FlowFn):
        self.flow_fn = flow_fn
        self.forward: np.ndarray | None = None
        self.backward: np.ndarray | None = None

    def set_pair(self, frame_a: np.ndarray, frame_b: np.ndarray) -> None:
        self.forward, self.backward = self.flow_fn(frame_a, frame_b), self.flow_fn(frame_b, frame_a)

    def move(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return forward_backward_error(self.forward, self.backward, points)

    def move_back(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return forward_backward_error(self.backward, self.forward, points)


class LucasKanadeMotion:
    """Point motion from OpenCV's pyramidal Lucas-Kanade (Bouguet), run forward and backward (the baseline)."""

    def __init__(self, window: int = 21, levels: int = 3):
        self.options = dict(winSize=(window, window), maxLevel=levels,
                            criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))
        self.grey_a = self.grey_b = None

    def set_pair(self, frame_a: np.ndarray, frame_b: np.ndarray) -> None:
        self.grey_a, self.grey_b = (cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in (frame_a, frame_b))

    def move(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._round_trip(self.grey_a, self.grey_b, points)

    def move_back(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._round_trip(self.grey_b, self.grey_a, points)

    def _round_trip(self, grey_from: np.ndarray, grey_to: np.ndarray,
                    points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(points) == 0:
            return points.copy(), np.zeros(0)
        start = np.ascontiguousarray(points, dtype=np.float32).reshape(-1, 1, 2)
        moved, status, _ = cv2.calcOpticalFlowPyrLK(grey_from, grey_to, start, None, **self.options)
        back, back_status, _ = cv2.calcOpticalFlowPyrLK(grey_to, grey_from, moved, None, **self.options)
        moved, back = moved.reshape(-1, 2).astype(np.float64), back.reshape(-1, 2)
        error = np.linalg.norm(back - points, axis=1)
        error[(status.ravel() == 0) | (back_status.ravel() == 0) | ~inside(moved, *grey_from.shape)] = np.inf
        return moved, error


# ----------------------------------------------------------------------------------------------- tracker


@dataclass
class TrackState:
    """The tracker's output for one frame."""

    box: np.ndarray | None  # [4] x, y, w, h
    lost: bool
    points: np.ndarray  # [N, 2]
    visible: np.ndarray  # [N] bool


def box_points(box: np.ndarray, height: int, width: int, count: int = BOX_GRID) -> np.ndarray:
    """A ``count`` x ``count`` grid over the central BOX_CORE of ``box`` (x, y, w, h), inside the frame."""
    x, y, w, h = box
    margin = (1.0 - BOX_CORE) / 2.0
    xs = np.linspace(x + margin * w, x + (1 - margin) * w, count)
    ys = np.linspace(y + margin * h, y + (1 - margin) * h, count)
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    return grid[inside(grid, height, width)]


def spread_ratio(before: np.ndarray, after: np.ndarray, min_distance: float) -> float:
    """Median ratio of pairwise distances after / before, over pairs (i, i + N/2) at least ``min_distance`` apart."""
    partner = np.roll(np.arange(len(before)), len(before) // 2)
    distance_before = np.linalg.norm(before - before[partner], axis=1)
    distance_after = np.linalg.norm(after - after[partner], axis=1)
    usable = distance_before >= min_distance
    if usable.sum() < MIN_RELIABLE:
        return 1.0
    return float(np.median(distance_after[usable] / distance_before[usable]))


def dominant_motion(displacements: np.ndarray, prior: np.ndarray | None, radius: float) -> np.ndarray:
    """Inlier mask [N] of the main motion among displacements [N, 2] (a mode with a motion prior).

    Every displacement is a candidate; its support is the number of displacements within ``radius`` px of it.
    With a ``prior`` (the previous box velocity) the support is weighted by exp(-|c - prior|^2 / (2 tau^2)),
    tau = max(PRIOR_MIN_SPREAD, |prior|) px, so that an occluder sweeping over most of the box does not capture
    it while an object that starts or changes its motion still does. The winner's neighbours are the inliers.
    """
    distances = np.linalg.norm(displacements[:, None] - displacements[None], axis=-1)
    support = (distances < radius).sum(axis=1).astype(np.float64)
    if prior is not None:
        spread = max(PRIOR_MIN_SPREAD, float(np.linalg.norm(prior)))
        support *= np.exp(-np.sum((displacements - prior) ** 2, axis=1) / (2.0 * spread**2))
    return distances[int(np.argmax(support))] < radius


def _crop(grey: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The grey pixels of ``box`` (x, y, w, h), resampled to round(w) x round(h) (borders replicated)."""
    x, y, w, h = box
    return cv2.getRectSubPix(grey, (max(3, round(w)), max(3, round(h))), (float(x + w / 2), float(y + h / 2)))


def patches(grey: np.ndarray, points: np.ndarray) -> np.ndarray:
    """PATCH x PATCH bilinear grey patches [N, PATCH, PATCH] centred on points [N, 2]."""
    if len(points) == 0:
        return np.zeros((0, PATCH, PATCH), np.float32)
    offsets = np.arange(PATCH, dtype=np.float32) - (PATCH - 1) / 2.0
    xs = (points[:, 0, None, None] + offsets[None, None, :]).astype(np.float32)
    ys = (points[:, 1, None, None] + offsets[None, :, None]).astype(np.float32)
    xs, ys = np.broadcast_arrays(xs, ys)
    flat = cv2.remap(grey, np.ascontiguousarray(xs.reshape(-1, PATCH)), np.ascontiguousarray(ys.reshape(-1, PATCH)),
                     cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return flat.reshape(len(points), PATCH, PATCH)


class Tracker:
    """Propagates a box and/or query points through a clip, one frame pair at a time (see the module docstring).

    Args:
        motion: a :class:`PointMotion` (dense flow or Lucas-Kanade).
        first_frame: uint8 [H, W, 3] RGB frame 0.
        box: (x, y, w, h) in frame 0, or None.
        points: query points [N, 2] in frame 0 (may be empty).
        fb_threshold: forward-backward threshold in px.
        scale: let the box size follow the spread of its points.
    """

    def __init__(self, motion: PointMotion, first_frame: np.ndarray, box: np.ndarray | None = None,
                 points: np.ndarray | None = None, fb_threshold: float = 1.0, scale: bool = True):
        self.motion, self.fb_threshold, self.scale = motion, fb_threshold, scale
        self.height, self.width = first_frame.shape[:2]
        self.frame = first_frame
        self.grey = cv2.cvtColor(first_frame, cv2.COLOR_RGB2GRAY).astype(np.float32)
        self.box = None if box is None else np.asarray(box, dtype=np.float64)
        self.box_velocity: np.ndarray | None = None  # None until the first step (no motion prior yet)
        self.support: deque[int] = deque(maxlen=SUPPORT_HISTORY)  # inlier counts of recent confident steps
        self.box_template = None if self.box is None else _crop(self.grey, self.box)  # appearance when last healthy
        self.lost = False
        self.lost_for = 0  # consecutive frames the box has been lost
        self.points = np.zeros((0, 2)) if points is None else np.asarray(points, dtype=np.float64).reshape(-1, 2)
        self.visible = inside(self.points, self.height, self.width)
        self.velocity = np.zeros_like(self.points)
        self.hidden_for = np.zeros(len(self.points), np.int64)  # consecutive frames each point has been invisible
        self.templates = patches(self.grey, self.points)

    @property
    def state(self) -> TrackState:
        box = None if self.box is None else self.box.copy()
        return TrackState(box, self.lost, self.points.copy(), self.visible.copy())

    def step(self, frame: np.ndarray) -> TrackState:
        """Advance to the next frame and return its state."""
        self.motion.set_pair(self.frame, frame)
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32)
        if self.box is not None:
            self._update_box(grey)
        if len(self.points):
            self._update_points(grey)
        self.frame, self.grey = frame, grey
        return self.state

    def _update_box(self, grey: np.ndarray) -> None:
        seeds = box_points(self.box, self.height, self.width)
        moved, error = self.motion.move(seeds)
        reliable = error < self.fb_threshold
        x, y, w, h = self.box
        centre = np.array([x + w / 2.0, y + h / 2.0])
        ratio = 1.0
        support = 0
        if reliable.sum() >= MIN_RELIABLE:
            seeds, moved = seeds[reliable], moved[reliable]
            inliers = dominant_motion(moved - seeds, self.box_velocity, max(CLUSTER_RADIUS, self.fb_threshold))
            support = int(inliers.sum())
        typical = np.median(self.support) if self.support else 0.0
        if support >= max(MIN_RELIABLE, OCCLUSION_DROP * typical):
            shift = np.median(moved[inliers] - seeds[inliers], axis=0)
            if self.scale:
                spread = spread_ratio(seeds[inliers], moved[inliers], 0.25 * min(w, h))
                ratio = float(np.clip(spread, 1.0 - MAX_SCALE_STEP, 1.0 + MAX_SCALE_STEP))
            self.box_velocity, self.lost = shift, False
            self.support.append(support)
        else:
            coasting = self.box_velocity is not None and self.lost_for < COAST_FRAMES
            shift = self.box_velocity if coasting else np.zeros(2)
            self.lost = True
        self.lost_for = self.lost_for + 1 if self.lost else 0
        centre = centre + shift
        w, h = w * ratio, h * ratio
        self.box = np.array([centre[0] - w / 2.0, centre[1] - h / 2.0, w, h])
        if not self.lost and support >= HEALTHY_SUPPORT * typical:
            self.box_template = _crop(grey, self.box)
        else:
            self._relocate(grey)

    def _relocate(self, grey: np.ndarray) -> None:
        """Snap the box to the best match of its last healthy template near the predicted box, if good enough."""
        x, y, w, h = self.box
        size = (max(3, round(w)), max(3, round(h)))
        margin = RELOCATE_MARGIN * max(w, h)
        region = cv2.getRectSubPix(grey, (size[0] + 2 * round(margin), size[1] + 2 * round(margin)),
                                   (float(x + w / 2), float(y + h / 2)))
        template = cv2.resize(self.box_template, size, interpolation=cv2.INTER_LINEAR)
        if template.std() < MIN_TEMPLATE_CONTRAST:  # a flat template matches anywhere
            return
        scores = cv2.matchTemplate(region, template, cv2.TM_CCOEFF_NORMED)
        _, best, _, (best_x, best_y) = cv2.minMaxLoc(np.nan_to_num(scores, nan=-1.0, posinf=-1.0, neginf=-1.0))
        if best >= RELOCATE_SCORE:
            self.box[:2] += np.array([best_x, best_y], dtype=np.float64) - round(margin)

    def _update_points(self, grey: np.ndarray) -> None:
        moved, error = self.motion.move(self.points)
        consistent = error < self.fb_threshold
        was_visible = self.visible
        # visible points follow the flow (also at the onset of an occlusion: the flow is their best guess there);
        # invisible ones coast with their last reliable displacement for at most COAST_FRAMES frames, then stop
        self.velocity[was_visible & consistent] = (moved - self.points)[was_visible & consistent]
        coasting = np.where((self.hidden_for < COAST_FRAMES)[:, None], self.velocity, 0.0)
        new_points = np.where(was_visible[:, None] & np.isfinite(moved), moved, self.points + coasting)
        matches = np.abs(patches(grey, new_points) - self.templates).mean(axis=(1, 2)) < APPEARANCE_THRESHOLD
        visible = was_visible & consistent & matches & inside(new_points, self.height, self.width)
        for index in np.flatnonzero(~was_visible):
            found = self._search(grey, new_points[index], self.templates[index])
            if found is not None:
                new_points[index], visible[index] = found, True
        self.templates[visible] = patches(grey, new_points[visible])
        self.hidden_for = np.where(visible, 0, self.hidden_for + 1)
        self.points, self.visible = new_points, visible

    def _search(self, grey: np.ndarray, position: np.ndarray, template: np.ndarray) -> np.ndarray | None:
        """Re-detect an invisible point: best template match within SEARCH_RADIUS, if good and flow-consistent."""
        if not inside(position[None], self.height, self.width)[0]:
            return None
        half = (PATCH - 1) / 2.0 + SEARCH_RADIUS
        window = cv2.getRectSubPix(grey, (int(2 * half + 1),) * 2, (float(position[0]), float(position[1])))
        scores = cv2.matchTemplate(window, template.astype(np.float32), cv2.TM_SQDIFF)
        _, _, (best_x, best_y), _ = cv2.minMaxLoc(scores)
        candidate = position + np.array([best_x, best_y]) - SEARCH_RADIUS
        if not inside(candidate[None], self.height, self.width)[0]:
            return None
        if np.abs(patches(grey, candidate[None])[0] - template).mean() >= APPEARANCE_THRESHOLD:
            return None
        _, error = self.motion.move_back(candidate[None])
        return candidate if error[0] < self.fb_threshold else None


# ----------------------------------------------------------------------------------------------- drawing and files


def _colour(index: int) -> tuple[int, int, int]:
    hue = np.uint8([[[(index * 47) % 180, 220, 255]]])
    return tuple(int(c) for c in cv2.cvtColor(hue, cv2.COLOR_HSV2RGB)[0, 0])


def draw(frame: np.ndarray, state: TrackState, trail: list[np.ndarray]) -> np.ndarray:
    """The frame with the box (green; orange while lost), the trail of its centre and the points drawn."""
    canvas = frame.copy()
    thickness = max(1, round(max(frame.shape[:2]) / 300))
    if len(trail) > 1:
        cv2.polylines(canvas, [np.round(np.stack(trail)).astype(np.int32)], False, (255, 255, 0), thickness,
                      cv2.LINE_AA)
    if state.box is not None:
        x, y, w, h = state.box
        colour = (255, 140, 0) if state.lost else (0, 255, 0)
        cv2.rectangle(canvas, (round(x), round(y)), (round(x + w), round(y + h)), colour, thickness + 1, cv2.LINE_AA)
    radius = 2 * thickness + 1
    for index, (point, visible) in enumerate(zip(state.points, state.visible)):
        centre = (round(point[0]), round(point[1]))
        if visible:
            cv2.circle(canvas, centre, radius, _colour(index), -1, cv2.LINE_AA)
        else:
            cv2.drawMarker(canvas, centre, _colour(index), cv2.MARKER_TILTED_CROSS, 2 * radius, thickness)
    return canvas


def parse_box(text: str) -> np.ndarray:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4 or not np.isfinite(values).all() or values[2] <= 0 or values[3] <= 0:
        raise ValueError(f"--box must be x,y,w,h with w, h > 0 (pixels), got '{text}'")
    return np.array(values)


def read_points(path: Path) -> np.ndarray:
    """Query points [N, 2] from a CSV of ``x,y`` rows, with an optional header row naming ``x`` and ``y``."""
    if not path.is_file():
        raise FileNotFoundError(f"--points file not found: {path}")
    with path.open(newline="") as handle:
        rows = [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]
    columns = (0, 1)
    if rows and not _is_number(rows[0][0]):
        header = [cell.strip().lower() for cell in rows[0]]
        if "x" not in header or "y" not in header:
            raise ValueError(f"{path}: the header must name the columns x and y, got {rows[0]}")
        columns, rows = (header.index("x"), header.index("y")), rows[1:]
    points = []
    for number, row in enumerate(rows, start=1):
        try:
            points.append([float(row[columns[0]]), float(row[columns[1]])])
        except (ValueError, IndexError):
            raise ValueError(f"{path}: row {number} is not 'x,y' numbers: {row}") from None
    if not points:
        raise ValueError(f"{path}: no points")
    return np.array(points)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class _CsvOutput:
    """A CSV written to a temporary file and moved into place on close (like the video)."""

    def __init__(self, name: str, path: Path, header: list[str]):
        self.name, self.path, self.temporary = name, path, temporary_path_beside(path)
        self.handle = self.temporary.open("w", newline="")
        self.writer = csv.writer(self.handle)
        self.writer.writerow(header)

    def close(self) -> None:
        self.handle.close()
        publish(self.temporary, self.path)

    def abort(self) -> None:
        self.handle.close()
        self.temporary.unlink(missing_ok=True)


def output_paths(output: Path) -> dict[str, Path]:
    stem = output.with_suffix("")
    return {"video": output, "boxes": stem.parent / f"{stem.name}_boxes.csv",
            "points": stem.parent / f"{stem.name}_points.csv"}


def track(source: FrameSource, motion: PointMotion, output: Path, box: np.ndarray | None = None,
          points: np.ndarray | None = None, fb_threshold: float = 1.0, scale: bool = True) -> dict[str, Path]:
    """Track through ``source`` (a :class:`core.video.FrameSource`) and write the video and the CSVs."""
    if box is None and (points is None or len(points) == 0):
        raise ValueError("give a --box, --points or both")
    if box is not None:
        x, y, w, h = box
        if x + w <= 0 or y + h <= 0 or x >= source.width or y >= source.height:
            raise ValueError(f"--box {x:g},{y:g},{w:g},{h:g} lies outside the {source.width}x{source.height} frame")
    paths = output_paths(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    video = VideoWriter(paths["video"], source.fps)
    tables = []
    try:
        box_table = (_CsvOutput("boxes", paths["boxes"], ["frame", "x", "y", "w", "h", "lost"])
                     if box is not None else None)
        point_table = (_CsvOutput("points", paths["points"], ["frame", "point_id", "x", "y", "visible"])
                       if points is not None and len(points) else None)
        tables = [t for t in (box_table, point_table) if t is not None]
        frames = iter(source)
        first = next(frames)
        tracker = Tracker(motion, first, box, points, fb_threshold, scale)
        trail: list[np.ndarray] = []
        progress = tqdm(total=source.frame_count, desc="track", unit="frame", dynamic_ncols=True, file=sys.stderr)
        with progress:
            index, frame, state = 0, first, tracker.state
            while frame is not None:
                if box_table is not None:
                    bx, by, bw, bh = state.box
                    trail = (trail + [np.array([bx + bw / 2, by + bh / 2])])[-TRAIL:]
                    box_table.writer.writerow([index, *(f"{v:.3f}" for v in state.box), int(state.lost)])
                if point_table is not None:
                    for point_id, (point, visible) in enumerate(zip(state.points, state.visible)):
                        point_table.writer.writerow([index, point_id, f"{point[0]:.3f}", f"{point[1]:.3f}",
                                                     int(visible)])
                video.write(draw(frame, state, trail))
                progress.update(1)
                frame = next(frames, None)
                if frame is not None:
                    state = tracker.step(frame)
                index += 1
        video.close()
        for table in tables:
            table.close()
    except BaseException:
        video.abort()
        for table in tables:
            table.abort()
        raise
    return {"video": paths["video"], **{table.name: table.path for table in tables}}


# ----------------------------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--input", type=Path, required=True, help="video file or folder of frames")
    parser.add_argument("--box", help="x,y,w,h of the object in frame 0 (pixels)")
    parser.add_argument("--points", type=Path, help="CSV of x,y query points in frame 0")
    parser.add_argument("--output", type=Path, required=True, help="video with the track drawn (.mp4)")
    parser.add_argument("--backend", choices=BACKENDS,
                        help=f"flow backend (default: {TOOL_DEFAULT_BACKEND}, or protoformer with --ckpt/--config)")
    parser.add_argument("--ckpt", help="protoformer checkpoint (default: checkpoints/protoformer-s-synthetic.pth)")
    parser.add_argument("--config", help="protoformer config (default: the one stored with the checkpoint)")
    parser.add_argument("--device", help="protoformer device: cuda, cpu, ... (default: cuda if available)")
    parser.add_argument("--max-side", type=int, help="compute the flow on frames downscaled to this longer side")
    parser.add_argument("--fb-threshold", type=float, default=1.0,
                        help="forward-backward error (px, input resolution) above which a point is unreliable")
    parser.add_argument("--no-scale", dest="scale", action="store_false", help="keep the box size fixed")
    parser.add_argument("--max-frames", type=int, help="track through the first N frames only")
    args = parser.parse_args(argv)
    args.backend = choose_backend(args.backend, args.ckpt, args.config)
    if args.output.suffix.lower() != ".mp4":
        parser.error(f"--output must be an .mp4 file, got {args.output}")
    if args.box is None and args.points is None:
        parser.error("give --box, --points or both")
    if args.fb_threshold <= 0:
        parser.error("--fb-threshold must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    errors: tuple[type[BaseException], ...] = (FileNotFoundError, VideoError, ValueError, OSError)
    if args.backend == "protoformer":
        from core.model.checkpoint import CheckpointError

        errors += (CheckpointError,)
    try:
        box = parse_box(args.box) if args.box is not None else None
        points = read_points(args.points) if args.points is not None else None
        source = open_frames(args.input, max_frames=args.max_frames)
        logger.info(f"input: {source.kind} {source.path} ({source.width}x{source.height}, "
                    f"{source.frame_count or 'unknown number of'} frames at {source.fps:.3g} fps)")
        logger.info(describe_backend(args.backend))
        flow_fn = make_flow_backend(args.backend, ckpt=args.ckpt, config=args.config, device=args.device,
                                    max_side=args.max_side)
        flow_scale = max(1.0, max(source.height, source.width) / args.max_side) if args.max_side else 1.0
        written = track(source, DenseFlowMotion(flow_fn), args.output, box, points,
                        args.fb_threshold * flow_scale, args.scale)
    except errors as err:
        logger.error(str(err))
        return 2
    logger.info("wrote " + ", ".join(str(p) for p in written.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
