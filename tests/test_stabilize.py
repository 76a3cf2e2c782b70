"""Video stabilisation (scripts/stabilize.py) with the streaming video I/O and flow backends it runs on.

The end-to-end tests shake a generated steady clip by a known camera path and check that the stabiliser removes
it (ground truth from scripts/benchmark_downstream.py); a do-nothing stabiliser must fail the same threshold.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from loguru import logger

from core.data.formats import write_image
from core.flow_backends import make_flow_backend
from core.video import VideoError, VideoWriter, count_frames, open_frames
from scripts import stabilize
from scripts.benchmark_downstream import ShakenSource, make_scene_clip, random_shake, shake_residual

REPO = Path(__file__).resolve().parents[1]
SIZE = (120, 160)
FRAMES = 20
SIGMA = 4.0
SHAKE = dict(translation=6.0, rotation=1.5, scale=0.015, jitter=(1.5, 0.3, 0.003))


@pytest.fixture
def messages():
    """Log messages emitted during the test (loguru writes past pytest's capture)."""
    collected: list[str] = []
    handler = logger.add(collected.append, level="INFO", format="{level} {message}")
    yield collected
    logger.remove(handler)


@pytest.fixture(scope="module")
def shaky_clip(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A steady synthetic scene (moving objects, still camera) shaken by a known path, as a folder of PNGs."""
    scene = make_scene_clip(seed=5, size=SIZE, frames=FRAMES, camera_motion=False, occluder=True)
    shake = random_shake(FRAMES, seed=5, **SHAKE)
    folder = tmp_path_factory.mktemp("shaky") / "frames"
    folder.mkdir()
    for index, frame in enumerate(ShakenSource(scene.frames, shake, *SIZE, path=folder)):
        write_image(folder / f"{index:04d}.png", frame)
    return folder, shake


@pytest.fixture(scope="module")
def stabilised(shaky_clip, tmp_path_factory) -> tuple[Path, dict]:
    folder, _ = shaky_clip
    output = tmp_path_factory.mktemp("stable") / "stable.mp4"
    assert stabilize.main(["--input", str(folder), "--output", str(output), "--backend", "dis",
                           "--smooth", str(SIGMA)]) == 0
    return output, json.loads(output.with_name("stable_metrics.json").read_text())


def _decoded_frames(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


# ----------------------------------------------------------------------------------------------- end to end


def test_removes_the_injected_shake(shaky_clip, stabilised):
    _, shake = shaky_clip
    _, report = stabilised
    stabilizing = np.array(report["stabilizing_transforms"])
    scores = shake_residual(stabilizing, shake, SIGMA, *SIZE)
    assert scores["injected_jitter_px"] > 1.0  # the shake is real
    assert scores["residual_jitter_px"] < 0.3 * scores["injected_jitter_px"], scores
    # a stabiliser that does nothing (B_t = I) keeps all of it, and one that applies the motion the wrong way
    # round (B_t = S_t C_t) doubles it: both fail the threshold
    nothing = shake_residual(np.repeat(np.eye(3)[None], FRAMES, axis=0), shake, SIGMA, *SIZE)
    assert nothing["residual_jitter_px"] >= 0.3 * nothing["injected_jitter_px"]
    path, smooth = np.array(report["camera_path"]), np.array(report["smoothed_camera_path"])
    backwards = shake_residual(smooth @ path, shake, SIGMA, *SIZE)
    assert backwards["residual_jitter_px"] >= 0.3 * backwards["injected_jitter_px"]


def test_outputs_are_complete_videos(stabilised):
    output, report = stabilised
    frames = _decoded_frames(output)
    assert len(frames) == FRAMES and frames[0].shape == (*SIZE, 3)
    side_by_side = _decoded_frames(output.with_name("stable_side_by_side.mp4"))
    assert len(side_by_side) == FRAMES and side_by_side[0].shape == (SIZE[0], 2 * SIZE[1], 3)
    plot = cv2.imread(str(output.with_name("stable_path.png")))
    assert plot is not None and plot.shape[0] > 100
    assert [p.name for p in output.parent.iterdir() if p.name.startswith(".")] == []  # no temporary files left
    metrics = report["metrics"]
    assert 0.5 < metrics["cropping_ratio"] <= 1.0 and metrics["cropping_ratio_min"] <= metrics["cropping_ratio"]
    assert 0.9 < metrics["distortion"] <= 1.0  # a similarity path: no anisotropic stretch
    assert 0.0 <= metrics["stability"] <= 1.0 and 0.0 <= metrics["input_stability"] <= 1.0
    assert report["frames"] == FRAMES and len(report["transforms"]) == FRAMES


def test_auto_crop_leaves_no_border(stabilised):
    """Every output pixel maps back inside its input frame (checked independently of auto_crop_scale)."""
    _, report = stabilised
    height, width = SIZE
    assert 0.5 < report["crop_scale"] < 1.0
    output_corners = np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], float)
    sources = stabilize.apply(np.linalg.inv(np.array(report["transforms"])), output_corners)
    assert sources[..., 0].min() >= -1e-6 and sources[..., 0].max() <= width - 1 + 1e-6
    assert sources[..., 1].min() >= -1e-6 and sources[..., 1].max() <= height - 1 + 1e-6


@pytest.mark.parametrize("crop", ["none", "0.9"])
def test_fixed_crop_single_pass(shaky_clip, tmp_path, crop):
    folder, _ = shaky_clip
    output = tmp_path / "fixed.mp4"
    assert stabilize.main(["--input", str(folder), "--output", str(output), "--backend", "dis", "--smooth", "3",
                           "--crop", crop, "--max-side", "96"]) == 0
    report = json.loads((tmp_path / "fixed_metrics.json").read_text())
    assert report["crop_scale"] == pytest.approx(1.0 if crop == "none" else 0.9)
    assert count_frames(output) == FRAMES


def test_command_line_entry_point(shaky_clip, tmp_path):
    folder, _ = shaky_clip
    output = tmp_path / "cli.mp4"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "stabilize.py"), "--input", str(folder),
                           "--output", str(output), "--backend", "dis", "--max-frames", "6", "--smooth", "2"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "stability" in done.stderr and count_frames(output) == 6


# ----------------------------------------------------------------------------------------------- errors


def test_clip_shorter_than_two_frames(tmp_path, messages):
    folder = tmp_path / "one"
    folder.mkdir()
    write_image(folder / "0000.png", np.zeros((24, 32, 3), np.uint8))
    with pytest.raises(VideoError, match="at least 2"):
        open_frames(folder)
    with VideoWriter(tmp_path / "one.mp4", fps=5) as writer:
        writer.write(np.zeros((24, 32, 3), np.uint8))
    with pytest.raises(VideoError, match="1 readable frame; at least 2"):
        open_frames(tmp_path / "one.mp4")
    assert stabilize.main(["--input", str(folder), "--output", str(tmp_path / "o.mp4"), "--backend", "dis"]) == 2
    assert any("at least 2" in m for m in messages)
    assert not (tmp_path / "o.mp4").exists()


def test_unreadable_and_missing_inputs(tmp_path, messages):
    bogus = tmp_path / "clip.mp4"
    bogus.write_text("not a video")
    with pytest.raises(VideoError, match="cannot open the video"):
        open_frames(bogus)
    assert stabilize.main(["--input", str(bogus), "--output", str(tmp_path / "o.mp4"), "--backend", "dis"]) == 2
    assert any(str(bogus) in m and "cannot open" in m for m in messages)
    with pytest.raises(FileNotFoundError, match="input not found"):
        open_frames(tmp_path / "missing.avi")
    folder = tmp_path / "frames"
    folder.mkdir()
    write_image(folder / "0.png", np.zeros((24, 32, 3), np.uint8))
    (folder / "1.png").write_bytes(b"broken")
    with pytest.raises(VideoError, match="cannot read frame .*1.png"):
        list(open_frames(folder))


def test_bad_options(tmp_path):
    with pytest.raises(SystemExit):
        stabilize.parse_args(["--input", "x", "--output", str(tmp_path / "o.avi")])
    with pytest.raises(SystemExit):
        stabilize.parse_args(["--input", "x", "--output", str(tmp_path / "o.mp4"), "--crop", "1.5"])
    assert stabilize.parse_crop("0.75") == 0.75 and stabilize.parse_crop("auto") == "auto"


# ----------------------------------------------------------------------------------------------- the parts


def test_streaming_smoother_equals_batch_and_holds_a_bounded_window():
    rng = np.random.default_rng(0)
    for count, sigma in [(50, 3.0), (5, 3.0), (2, 10.0), (30, 0.0)]:
        path = rng.normal(size=(count, 3, 3))
        smoother = stabilize.PathSmoother(sigma)
        entries, pending_max = [], 0
        for index, value in enumerate(path):
            entries += smoother.push(value, payload=index)
            pending_max = max(pending_max, index + 1 - len(entries))
        entries += smoother.finish()
        assert [e.payload for e in entries] == list(range(count))
        np.testing.assert_allclose(np.stack([e.smooth for e in entries]), stabilize.smooth_path(path, sigma),
                                   atol=1e-12)
        assert pending_max <= stabilize.smoothing_radius(sigma) + 1


def test_smoothing_keeps_a_steady_pan_and_removes_jitter():
    frames = np.arange(40, dtype=float)
    pan = np.stack([2.0 * frames, -0.5 * frames], axis=1)
    np.testing.assert_allclose(stabilize.smooth_path(pan, 5.0), pan, atol=1e-9)  # line extension at the ends
    jitter = np.where(frames % 2 == 0, 1.0, -1.0)[:, None]
    assert np.abs(stabilize.smooth_path(jitter, 5.0)[10:30]).max() < 0.01  # 99 % of a +-1 jitter removed


def test_auto_crop_scale_hand_computed():
    height, width = 51, 101  # corner pixel centres at x = +-50, y = +-25
    shifts = np.repeat(np.eye(3)[None], 2, axis=0)
    shifts[0, 0, 2], shifts[1, 0, 2] = 5.0, -5.0  # the warped frames overlap on x in [-45, 45]
    assert stabilize.auto_crop_scale(shifts, height, width) == pytest.approx(0.9)
    assert stabilize.auto_crop_scale(stabilize.zoom(0.8)[None], height, width) == pytest.approx(0.8)
    assert stabilize.auto_crop_scale(stabilize.zoom(1.25)[None], height, width) == 1.0
    angle = np.radians(3.0)  # a rotated frame: the centred rectangle touches the rotated edges
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    k = stabilize.auto_crop_scale(rotation[None], height, width)
    corners = stabilize.frame_corners(height, width) * k
    inside_rotated = stabilize.apply(np.linalg.inv(rotation), corners)
    assert np.abs(inside_rotated[:, 0]).max() <= 50 + 1e-6 and np.abs(inside_rotated[:, 1]).max() <= 25 + 1e-6
    assert max(np.abs(inside_rotated[:, 0]).max() - 50, np.abs(inside_rotated[:, 1]).max() - 25) > -1e-6


def test_standard_metrics_hand_computed():
    zoomed = np.repeat(stabilize.zoom(1.25)[None], 4, axis=0)
    assert stabilize.cropping_ratio(zoomed) == pytest.approx((0.8, 0.8))
    stretched = np.repeat(np.diag([1.0, 0.5, 1.0])[None], 3, axis=0)
    assert stabilize.distortion_value(stretched) == pytest.approx(0.5)
    angle = np.radians(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    assert stabilize.distortion_value(rotation[None]) == pytest.approx(1.0)

    count = 64
    frames = np.arange(count)

    def path_with_x(x: np.ndarray) -> np.ndarray:
        path = np.repeat(np.eye(3)[None], count, axis=0)
        path[:, 0, 2] = x
        return path

    slow = np.sin(2 * np.pi * 2 * frames / count)  # frequency 2: inside the 2nd..6th components
    fast = np.sin(2 * np.pi * 20 * frames / count)  # frequency 20: outside
    assert stabilize.stability_score(path_with_x(slow))["translation"] == pytest.approx(1.0)
    assert stabilize.stability_score(path_with_x(fast))["translation"] == pytest.approx(0.0, abs=1e-12)
    assert stabilize.stability_score(path_with_x(slow + fast))["translation"] == pytest.approx(0.5)
    assert stabilize.stability_score(path_with_x(slow + fast))["rotation"] == 1.0  # no rotation at all
    assert stabilize.stability_score(path_with_x(slow + fast))["stability"] == pytest.approx(0.5)


def test_flow_motion_recovers_a_known_similarity():
    scene = make_scene_clip(seed=3, size=SIZE, frames=1, camera_motion=False, occluder=False)
    shake = random_shake(2, seed=1, **SHAKE)
    frames = list(ShakenSource([scene.frames[0]] * 2, shake, *SIZE, path=Path("pair")))
    motion = stabilize.FlowMotion(make_flow_backend("dis"))
    estimate = motion(frames[0], frames[1])
    truth = shake[1] @ np.linalg.inv(shake[0])
    corners = stabilize.frame_corners(*SIZE)
    assert np.abs(stabilize.apply(estimate, corners) - stabilize.apply(truth, corners)).max() < 0.5
    assert motion.stats.inlier_ratios[0] > 0.5 and motion.stats.failures == []


# ----------------------------------------------------------------------------------------------- video I/O, backends


def test_video_writer_is_atomic_and_round_trips(tmp_path):
    path = tmp_path / "clip.mp4"
    frames = [np.full((31, 45, 3), 40 * i, np.uint8) for i in range(5)]  # odd size: padded to 46 x 32
    with VideoWriter(path, fps=12) as writer:
        for frame in frames:
            writer.write(frame)
        assert not path.exists()  # still under its temporary name
    source = open_frames(path)
    assert (source.frame_count, source.fps, source.height, source.width) == (5, 12.0, 32, 46)
    read = list(source)
    assert len(read) == 5 and abs(float(read[3][:31, :45].mean()) - 120) < 3
    assert len(list(open_frames(path, max_frames=3))) == 3
    with pytest.raises(RuntimeError):
        with VideoWriter(tmp_path / "broken.mp4", fps=12) as writer:
            writer.write(frames[0])
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]
    with pytest.raises(ValueError, match="does not fit"):
        with VideoWriter(tmp_path / "sizes.mp4", fps=12) as writer:
            writer.write(frames[0])
            writer.write(np.zeros((10, 10, 3), np.uint8))


def test_folder_reader_is_lazy_and_checks_sizes(tmp_path):
    for index in range(3):
        write_image(tmp_path / f"{index}.png", np.full((8, 10, 3), index, np.uint8))
    write_image(tmp_path / "3.png", np.zeros((9, 10, 3), np.uint8))
    source = open_frames(tmp_path)
    assert source.kind == "folder" and source.frame_count == 4
    frames = iter(source)
    assert next(frames)[0, 0, 0] == 0 and next(frames)[0, 0, 0] == 1
    with pytest.raises(VideoError, match="frame 3 is 10x9"):
        list(source)


def test_flow_backends():
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.integers(0, 256, (80, 120, 3), dtype=np.uint8), (0, 0), 1.5)
    moved = np.roll(texture, 3, axis=1)  # content moves 3 px to the right
    for name, options in [("dis", {}), ("farneback", {}), ("dis", {"max_side": 60})]:
        flow = make_flow_backend(name, **options)(texture, moved)
        assert flow.shape == (80, 120, 2) and flow.dtype == np.float32
        assert np.median(flow[20:60, 20:100], axis=(0, 1)) == pytest.approx([3.0, 0.0], abs=0.3), (name, options)
    with pytest.raises(ValueError, match="unknown flow backend 'raft'.*protoformer, dis, farneback"):
        make_flow_backend("raft")
    with pytest.raises(FileNotFoundError, match="checkpoint not found: /nonexistent/model.pth [(]check the path"):
        make_flow_backend("protoformer", ckpt="/nonexistent/model.pth")
    with pytest.raises(ValueError, match="same size"):
        make_flow_backend("dis")(texture, texture[:40])
