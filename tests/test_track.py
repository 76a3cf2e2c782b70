"""Object and point tracking (scripts/track.py) on generated clips with known trajectories.

A tracker that does not move must fail the thresholds the real one passes (the static baseline is scored too).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from loguru import logger

from core.data.formats import write_image
from core.flow_backends import make_flow_backend
from core.video import count_frames
from scripts import benchmark_downstream, track
from scripts.benchmark_downstream import box_scores, make_scene_clip, point_scores

REPO = Path(__file__).resolve().parents[1]
SIZE = (120, 160)
FRAMES = 20
SUCCESS, MEAN_IOU, DELTA_AVG = 0.8, 0.6, 0.5  # pass marks of the end-to-end run


@pytest.fixture
def messages():
    collected: list[str] = []
    handler = logger.add(collected.append, level="INFO", format="{level} {message}")
    yield collected
    logger.remove(handler)


@pytest.fixture(scope="module")
def clip():
    """A textured object moving ~3 px/frame on a panning textured background, crossed by an occluder."""
    return make_scene_clip(seed=1, size=SIZE, frames=FRAMES, camera_motion=True, occluder=True)


@pytest.fixture(scope="module")
def clip_folder(clip, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clip") / "frames"
    folder.mkdir()
    for index, frame in enumerate(clip.frames):
        write_image(folder / f"{index:04d}.png", frame)
    return folder


@pytest.fixture(scope="module")
def tracked(clip, clip_folder, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("tracked")
    queries = work / "queries.csv"
    queries.write_text("x,y\n" + "".join(f"{x:.3f},{y:.3f}\n" for x, y in clip.points[0]))
    box = ",".join(f"{v:.3f}" for v in clip.boxes[0])
    output = work / "tracked.mp4"
    assert track.main(["--input", str(clip_folder), "--box", box, "--points", str(queries), "--output", str(output),
                       "--backend", "dis"]) == 0
    return output


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _tracks(output: Path, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    boxes = np.array([[float(r[k]) for k in "xywh"] for r in _read_csv(output.with_name("tracked_boxes.csv"))])
    rows = _read_csv(output.with_name("tracked_points.csv"))
    points = np.array([[float(r["x"]), float(r["y"])] for r in rows]).reshape(-1, count, 2)
    visible = np.array([r["visible"] == "1" for r in rows]).reshape(-1, count)
    return boxes, points, visible


# ----------------------------------------------------------------------------------------------- end to end


def test_box_follows_the_object(clip, tracked):
    boxes, _, _ = _tracks(tracked, clip.points.shape[1])
    assert boxes.shape == (FRAMES, 4)
    scores = box_scores(boxes, clip.boxes)
    assert scores["success"] >= SUCCESS and scores["mean_iou"] >= MEAN_IOU, scores
    static = box_scores(np.repeat(clip.boxes[:1], FRAMES, axis=0), clip.boxes)
    assert static["success"] < SUCCESS and static["mean_iou"] < MEAN_IOU, static  # the marks mean something


def test_points_follow_their_surfaces(clip, tracked):
    _, points, visible = _tracks(tracked, clip.points.shape[1])
    assert points.shape == clip.points.shape
    scores = point_scores(points, visible, clip.points, clip.visible)
    assert scores["delta_avg"] >= DELTA_AVG, scores
    assert scores["occlusion_accuracy"] >= 0.75, scores
    static = point_scores(np.repeat(clip.points[:1], FRAMES, axis=0), np.ones_like(clip.visible), clip.points,
                          clip.visible)
    assert static["delta_avg"] < DELTA_AVG, static
    assert (~clip.visible[1:]).any()  # the clip does contain occlusions


def test_outputs(clip, tracked):
    assert count_frames(tracked) == FRAMES
    box_rows = _read_csv(tracked.with_name("tracked_boxes.csv"))
    assert list(box_rows[0]) == ["frame", "x", "y", "w", "h", "lost"]
    assert [int(r["frame"]) for r in box_rows] == list(range(FRAMES))
    np.testing.assert_allclose([float(box_rows[0][k]) for k in "xywh"], clip.boxes[0], atol=1e-3)
    point_rows = _read_csv(tracked.with_name("tracked_points.csv"))
    assert list(point_rows[0]) == ["frame", "point_id", "x", "y", "visible"]
    assert len(point_rows) == FRAMES * clip.points.shape[1]
    assert [p.name for p in tracked.parent.iterdir() if p.name.startswith(".")] == []


def test_command_line_with_points_only(clip, clip_folder, tmp_path):
    queries = tmp_path / "q.csv"
    queries.write_text("".join(f"{x},{y}\n" for x, y in clip.points[0][:4]))  # no header
    output = tmp_path / "pts.mp4"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "track.py"), "--input", str(clip_folder),
                           "--points", str(queries), "--output", str(output), "--backend", "dis", "--max-side", "96",
                           "--max-frames", "5"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert count_frames(output) == 5
    assert len(_read_csv(tmp_path / "pts_points.csv")) == 5 * 4 and not (tmp_path / "pts_boxes.csv").exists()


def test_benchmark_quick_mode(tmp_path):
    out = tmp_path / "bench.json"
    assert benchmark_downstream.main(["--quick", "--backends", "dis", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    stabilisation = {row["method"]: row for row in result["stabilisation"]}
    assert stabilisation["flow:dis"]["removed"] > 0.5
    tracking = {row["method"]: row for row in result["tracking"]}
    assert set(tracking) == {"flow:dis", "lucas-kanade", "static (no motion)"}
    assert tracking["flow:dis"]["mean_iou"] > tracking["static (no motion)"]["mean_iou"] + 0.3
    assert tracking["lucas-kanade"]["delta_avg"] > tracking["static (no motion)"]["delta_avg"]


# ----------------------------------------------------------------------------------------------- errors


def test_bad_inputs(clip_folder, tmp_path, messages):
    output = str(tmp_path / "o.mp4")
    short = tmp_path / "short"
    short.mkdir()
    write_image(short / "0.png", np.zeros((20, 20, 3), np.uint8))
    assert track.main(["--input", str(short), "--box", "1,1,5,5", "--output", output, "--backend", "dis"]) == 2
    assert any("at least 2" in m for m in messages)
    bogus = tmp_path / "bogus.avi"
    bogus.write_bytes(b"\x00" * 64)
    assert track.main(["--input", str(bogus), "--box", "1,1,5,5", "--output", output, "--backend", "dis"]) == 2
    assert any("cannot open the video" in m for m in messages)
    assert track.main(["--input", str(clip_folder), "--box", "1,1,0,5", "--output", output, "--backend", "dis"]) == 2
    assert any("--box must be x,y,w,h" in m for m in messages)
    assert track.main(["--input", str(clip_folder), "--box", "500,1,5,5", "--output", output, "--backend", "dis"]) == 2
    assert any("outside the 160x120 frame" in m for m in messages)
    assert track.main(["--input", str(clip_folder), "--points", str(tmp_path / "none.csv"), "--output", output,
                       "--backend", "dis"]) == 2
    assert any("--points file not found" in m for m in messages)
    bad_points = tmp_path / "bad.csv"
    bad_points.write_text("x,y\n1,2\n3,oops\n")
    with pytest.raises(ValueError, match="row 2 is not 'x,y' numbers"):
        track.read_points(bad_points)
    with pytest.raises(SystemExit):
        track.parse_args(["--input", "x", "--output", output])  # neither --box nor --points
    assert not (tmp_path / "o.mp4").exists()


# ----------------------------------------------------------------------------------------------- the parts


def test_forward_backward_check_hand_computed():
    height, width = 10, 20
    forward = np.zeros((height, width, 2), np.float32)
    forward[..., 0] = 2.0  # everything moves 2 px right
    backward = np.zeros_like(forward)
    backward[:, :10, 0] = -2.0  # the way back agrees on the left half only
    points = np.array([[3.0, 5.0], [12.0, 5.0], [18.5, 5.0]])
    moved, error = track.forward_backward_error(forward, backward, points)
    np.testing.assert_allclose(moved[:2], [[5.0, 5.0], [14.0, 5.0]])
    assert error[0] == pytest.approx(0.0) and error[1] == pytest.approx(2.0)
    assert error[2] == np.inf  # it leaves the frame
    reliable = error < 1.0
    assert reliable.tolist() == [True, False, False]


def test_dominant_motion_resists_an_occluder():
    object_motion, occluder_motion = np.array([3.0, 0.0]), np.array([0.0, 10.0])
    mostly_object = np.array([object_motion] * 70 + [occluder_motion] * 30) + 0.1
    assert track.dominant_motion(mostly_object, None, 1.0)[:70].all()
    mostly_occluder = np.array([object_motion] * 30 + [occluder_motion] * 70)
    chosen = track.dominant_motion(mostly_occluder, object_motion, 1.0)  # the previous velocity decides
    assert chosen[:30].all() and not chosen[30:].any()
    starting = np.array([object_motion] * 90 + [np.zeros(2)] * 10)  # an object starting to move from rest
    assert track.dominant_motion(starting, np.zeros(2), 1.0)[:90].all()


def test_tracker_on_lucas_kanade_and_a_scaling_box(clip):
    tracker = track.Tracker(track.LucasKanadeMotion(), clip.frames[0], clip.boxes[0], clip.points[0])
    states = [tracker.state] + [tracker.step(frame) for frame in clip.frames[1:]]
    boxes = np.stack([s.box for s in states])
    assert box_scores(boxes, clip.boxes)["mean_iou"] >= MEAN_IOU
    growth = clip.boxes[-1, 2] / clip.boxes[0, 2]
    assert abs(boxes[-1, 2] / boxes[0, 2] - growth) < abs(growth - 1.0) / 2 + 0.02  # the size follows the object


def test_box_that_never_moves_is_scored_as_failed(clip):
    """The scoring itself: a perfect track scores 1, a box shifted by its own width scores 0."""
    assert box_scores(clip.boxes, clip.boxes) == {"success": 1.0, "mean_iou": 1.0}
    shifted = clip.boxes + np.array([1.0, 0.0, 0.0, 0.0]) * clip.boxes[:, 2:3]
    assert box_scores(shifted, clip.boxes)["mean_iou"] == pytest.approx(0.0)
    perfect = point_scores(clip.points, clip.visible, clip.points, clip.visible)
    assert perfect["delta_avg"] == 1.0 and perfect["occlusion_accuracy"] == 1.0
    off_by_3 = point_scores(clip.points + [3.0, 0.0], clip.visible, clip.points, clip.visible)
    assert off_by_3["delta_avg"] == pytest.approx(0.6)  # within 4, 8, 16 px but not 1, 2


def test_dense_motion_uses_both_flow_directions():
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    texture = np.ascontiguousarray(np.repeat(np.repeat(texture[::4, ::4], 4, 0), 4, 1))
    moved_texture = np.roll(texture, 2, axis=1)
    motion = track.DenseFlowMotion(make_flow_backend("dis"))
    motion.set_pair(texture, moved_texture)
    moved, error = motion.move(np.array([[30.0, 30.0]]))
    np.testing.assert_allclose(moved[0], [32.0, 30.0], atol=0.3)
    assert error[0] < 0.5
    back, back_error = motion.move_back(moved)
    np.testing.assert_allclose(back[0], [30.0, 30.0], atol=0.3)


class _ScriptedMotion:
    """Every point moves 2 px right; the forward-backward check passes for the first ``reliable_steps`` pairs only."""

    def __init__(self, reliable_steps: int):
        self.reliable_steps, self.pairs = reliable_steps, 0

    def set_pair(self, frame_a, frame_b) -> None:
        self.pairs += 1

    def move(self, points):
        error = np.zeros(len(points)) if self.pairs <= self.reliable_steps else np.full(len(points), np.inf)
        return points + [2.0, 0.0], error

    def move_back(self, points):
        return points - [2.0, 0.0], np.full(len(points), np.inf)


def test_lost_box_and_hidden_points_coast_for_a_bounded_time():
    flat = np.full((60, 200, 3), 128, np.uint8)  # every patch matches its template: only the flow decides
    tracker = track.Tracker(_ScriptedMotion(reliable_steps=3), flat, np.array([20.0, 20.0, 20.0, 20.0]),
                            np.array([[30.0, 30.0]]))
    states = [tracker.step(flat) for _ in range(30)]
    assert [s.visible[0] for s in states[:4]] == [True, True, True, False] and not states[-1].visible.any()
    assert all(s.lost for s in states[3:]) and not any(s.lost for s in states[:3])
    # 3 reliable steps (+2 px each), then COAST_FRAMES invisible frames that still move (the first by the flow, the
    # rest at the last reliable velocity), then the point stays; the box likewise
    assert states[-1].points[0, 0] == pytest.approx(30.0 + 2.0 * 3 + 2.0 * track.COAST_FRAMES)
    assert states[-1].box[0] == pytest.approx(20.0 + 2.0 * 3 + 2.0 * track.COAST_FRAMES)
    assert track.patches(flat[..., 0].astype(np.float32), np.zeros((0, 2))).shape == (0, track.PATCH, track.PATCH)


def test_the_tools_default_to_dis_and_to_protoformer_when_a_checkpoint_is_named():
    from scripts import stabilize

    base = {track: ["--input", "clip", "--box", "1,1,5,5", "--output", "o.mp4"],
            stabilize: ["--input", "clip", "--output", "o.mp4"]}
    for tool, argv in base.items():
        assert tool.parse_args(argv).backend == "dis"
        assert tool.parse_args(argv + ["--ckpt", "model.pth"]).backend == "protoformer"
        assert tool.parse_args(argv + ["--config", "model.yaml"]).backend == "protoformer"
        assert tool.parse_args(argv + ["--backend", "farneback"]).backend == "farneback"
