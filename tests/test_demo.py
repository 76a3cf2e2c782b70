"""demo.py: pairs, folders (with a corrupt frame), videos, depth, the bundled sample, the missing-checkpoint message."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import core.inference
import demo
from core.config import load_config
from core.data import formats
from core.inference import FlowEstimator
from core.metrics import flow_metrics
from core.model import atomic_save, build_model
from core.model.checkpoint import WEIGHTS_FORMAT
from scripts import make_demo_sample

REPO = Path(__file__).resolve().parents[1]
SIZE = (36, 52)  # H, W; not multiples of 8


def _export(path: Path, model_type: str = "flow") -> Path:
    cfg = load_config(REPO / "configs" / "synthetic.yaml",
                      ["model.variant", "protoformer-s", "model.iters", "2", "model.type", model_type])
    torch.manual_seed(0)
    atomic_save({"format": WEIGHTS_FORMAT, "model": build_model(cfg).state_dict(), "config": cfg.dump()}, path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return _export(tmp_path_factory.mktemp("demo_ckpt") / "random.pth")


def _frame(seed: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (size[0] // 4 + 1, size[1] // 4 + 1, 3)).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(np.repeat(coarse, 4, 0), 4, 1)[: size[0], : size[1]])


def test_pair_with_save_flo(tmp_path, ckpt):
    formats.write_image(tmp_path / "a.png", _frame(0))
    formats.write_image(tmp_path / "b.png", _frame(1))
    out = tmp_path / "out"
    assert demo.main(["--input", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--output", str(out),
                      "--ckpt", str(ckpt), "--save-flo"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.flo", "a_flow.png", "a_pair.png"]
    flow = formats.read_flo(out / "a.flo")
    expected = FlowEstimator.from_checkpoint(ckpt, device="cpu").predict(_frame(0), _frame(1))
    np.testing.assert_allclose(flow, expected, atol=1e-5)
    assert formats.read_image(out / "a_flow.png").shape == (*SIZE, 3)
    side_by_side = formats.read_image(out / "a_pair.png")
    assert side_by_side.shape == (SIZE[0], 2 * SIZE[1], 3)
    np.testing.assert_array_equal(side_by_side[:, : SIZE[1]], _frame(0))  # frame | flow


def test_folder_skips_a_corrupt_frame_and_writes_a_video(tmp_path, ckpt, messages):
    frames = tmp_path / "frames"
    frames.mkdir()
    formats.write_image(frames / "f0.png", _frame(0))
    formats.write_image(frames / "f1.png", _frame(1))
    (frames / "f2.png").write_bytes(b"this is not a PNG")
    cv2.imwrite(str(frames / "f3.png"), _frame(3)[..., 0])  # grey
    cv2.imwrite(str(frames / "f4.png"), np.dstack([_frame(4)[..., ::-1], np.full(SIZE, 200, np.uint8)]))  # RGBA
    out = tmp_path / "out"
    assert demo.main(["--input", str(frames), "--output", str(out), "--ckpt", str(ckpt), "--save-flo"]) == 0
    # pairs f0->f1 and f3->f4; nothing spans the corrupt f2
    assert sorted(p.name for p in out.glob("*.flo")) == ["f0.flo", "f3.flo"]
    assert any("skipping frame f2" in line and "f2.png" in line for line in messages)
    video = cv2.VideoCapture(str(out / "frames_flow.mp4"))
    count = 0
    while video.read()[0]:
        count += 1
    assert count == 2
    assert video.get(cv2.CAP_PROP_FRAME_WIDTH) == 2 * SIZE[1]


def test_folder_pairs_of_different_sizes_are_skipped(tmp_path, ckpt, messages):
    frames = tmp_path / "frames"
    frames.mkdir()
    formats.write_image(frames / "f0.png", _frame(0))
    formats.write_image(frames / "f1.png", _frame(1, (40, 52)))
    formats.write_image(frames / "f2.png", _frame(2, (40, 52)))
    out = tmp_path / "out"
    assert demo.main(["--input", str(frames), "--output", str(out), "--ckpt", str(ckpt)]) == 0
    assert sorted(p.name for p in out.glob("*_flow.png")) == ["f1_flow.png"]
    assert any("different sizes" in line for line in messages)


def test_video_is_read_frame_by_frame(tmp_path, ckpt):
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (SIZE[1], SIZE[0]))
    for seed in range(4):
        writer.write(_frame(seed))
    writer.release()
    out = tmp_path / "out"
    assert demo.main(["--input", str(path), "--output", str(out), "--ckpt", str(ckpt), "--max-flow", "5"]) == 0
    assert sorted(p.name for p in out.glob("*_flow.png")) == [f"clip_{i:06d}_flow.png" for i in range(3)]
    assert (out / "clip_flow.mp4").is_file()
    limited = tmp_path / "limited"
    assert demo.main(["--input", str(path), "--output", str(limited), "--ckpt", str(ckpt), "--max-frames", "2"]) == 0
    assert sorted(p.name for p in limited.glob("*_flow.png")) == ["clip_000000_flow.png"]


def test_scales_run_the_network_on_resized_frames(tmp_path, ckpt):
    formats.write_image(tmp_path / "a.png", _frame(0))
    formats.write_image(tmp_path / "b.png", _frame(1))
    pair = ["--input", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--ckpt", str(ckpt), "--save-flo"]
    assert demo.main([*pair, "--output", str(tmp_path / "half"), "--scales", "0.5"]) == 0
    assert demo.main([*pair, "--output", str(tmp_path / "full")]) == 0
    half, full = (formats.read_flo(tmp_path / name / "a.flo") for name in ("half", "full"))
    assert half.shape == full.shape == (*SIZE, 2) and not np.array_equal(half, full)
    with pytest.raises(SystemExit):
        demo.parse_args([*pair, "--scales", "0"])
    assert demo.main([*pair, "--output", str(tmp_path / "flip"), "--flip-average"]) == 0
    assert not np.array_equal(formats.read_flo(tmp_path / "flip" / "a.flo"), full)
    args = demo.parse_args([*pair, "--scales", "1", "2", "--refine-iters", "2", "--no-flip-average"])
    estimator, _ = demo.build_estimator(args)
    assert (estimator.scales, estimator.refine_iters, estimator.flip_average) == ([1.0, 2.0], 2, False)
    with pytest.raises(SystemExit):
        demo.parse_args([*pair, "--refine-iters", "-2"])


def test_explicit_pair_errors(tmp_path, ckpt, messages):
    formats.write_image(tmp_path / "a.png", _frame(0))
    formats.write_image(tmp_path / "wide.png", _frame(1, (36, 60)))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    out = str(tmp_path / "out")
    assert demo.main(["--input", str(tmp_path / "a.png"), str(tmp_path / "wide.png"), "--output", out,
                      "--ckpt", str(ckpt)]) == 2
    assert any("different sizes" in line for line in messages)
    assert demo.main(["--input", str(tmp_path / "a.png"), str(tmp_path / "broken.png"), "--output", out,
                      "--ckpt", str(ckpt)]) == 2
    assert any("cannot read frame" in line and "broken.png" in line for line in messages)
    assert demo.main(["--input", str(tmp_path / "absent.png"), "--output", out, "--ckpt", str(ckpt)]) == 2
    assert demo.main(["--input", str(tmp_path / "a.png"), "--output", out, "--ckpt", str(ckpt)]) == 2
    assert any("one image; optical flow needs two" in line and "a.png" in line for line in messages)


def test_missing_checkpoint_explains_how_to_get_one(tmp_path, messages, monkeypatch):
    code = demo.main(["--output", str(tmp_path / "out"), "--ckpt", str(tmp_path / "absent.pth")])
    assert code == 2
    text = "\n".join(messages)
    assert f"checkpoint not found: {tmp_path / 'absent.pth'} (check the path" in text and "train.py" not in text
    assert not (tmp_path / "out").exists()

    messages.clear()  # the shipped default is missing: how to train one, or run on random weights on purpose
    monkeypatch.setattr(core.inference, "DEFAULT_CHECKPOINT_PATH", tmp_path / "default.pth")
    monkeypatch.setattr(demo, "DEFAULT_CHECKPOINT_PATH", tmp_path / "default.pth")
    assert demo.main(["--output", str(tmp_path / "out")]) == 2
    text = "\n".join(messages)
    assert "checkpoint not found" in text and "python train.py --config configs/synthetic.yaml" in text
    assert "--random-init" in text and "check the path" not in text


def test_no_input_runs_on_the_bundled_sample_with_random_init(tmp_path, messages):
    out = tmp_path / "out"
    assert demo.main(["--random-init", "--iters", "1", "--output", str(out)]) == 0
    assert (out / "frame_0001_flow.png").is_file() and (out / "frame_0001_pair.png").is_file()
    text = "\n".join(messages)
    assert "bundled sample frames" in text and "random weights" in text and str(out.resolve()) in text
    assert sum(p.stat().st_size for p in (REPO / "assets").rglob("*")) < 300_000


def test_depth_outputs_of_a_joint_model(tmp_path):
    ckpt = _export(tmp_path / "joint.pth", model_type="joint")
    formats.write_image(tmp_path / "a.png", _frame(0))
    formats.write_image(tmp_path / "b.png", _frame(1))
    out = tmp_path / "out"
    assert demo.main(["--input", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--output", str(out),
                      "--ckpt", str(ckpt), "--depth"]) == 0
    depth = np.load(out / "a_depth.npy")
    assert depth.shape == SIZE and 1.0 <= depth.min() and depth.max() <= 80.0
    np.testing.assert_allclose(depth, FlowEstimator.from_checkpoint(ckpt, device="cpu").predict_depth(_frame(0)),
                               rtol=1e-5)
    assert formats.read_image(out / "a_depth.png").shape == (*SIZE, 3)
    # --depth with a flow-only model is refused with a clear message
    flow_ckpt = _export(tmp_path / "flow.pth")
    assert demo.main(["--input", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--output", str(out),
                      "--ckpt", str(flow_ckpt), "--depth"]) == 2


def test_official_release_checkpoint_through_the_cli(fixtures_dir, tmp_path):
    """demo.py and evaluate.py's engine with a release-style file (``module.`` keys) and configs/sintel.yaml,
    12 iterations: the written .flo reproduces the official 12-iteration output."""
    golden = torch.load(fixtures_dir / "golden_flow.pt", weights_only=True)
    weights = torch.load(fixtures_dir / "weights_seed0_fp16.pt", weights_only=True)
    release = tmp_path / "sintel_release.pth"
    torch.save({f"module.{k}": v.float() if v.is_floating_point() else v for k, v in weights.items()}, release)
    frames = []
    for name, image in (("a.png", golden["image1"]), ("b.png", golden["image2"])):
        frames.append(tmp_path / name)
        formats.write_image(frames[-1], image[0].permute(1, 2, 0).round().to(torch.uint8).numpy())
    config = Path(__file__).resolve().parents[1] / "configs" / "sintel.yaml"
    out = tmp_path / "out"
    assert demo.main(["--input", *map(str, frames), "--output", str(out), "--ckpt", str(release),
                      "--config", str(config), "--iters", "12", "--save-flo"]) == 0
    flow = formats.read_flo(out / "a.flo")
    expected = golden["outputs"]["flow_up"][0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(flow, expected, atol=1e-4, rtol=0)


def test_the_shipped_checkpoint_recovers_the_bundled_sample_flow(tmp_path):
    """The trained default checkpoint, without ../shared: its flow on the bundled sample is close to the exact one
    (README: EPE 2.21 px; zero flow scores 9.16), which a wrong sign, a broken attention or a bad load would miss."""
    if not core.inference.DEFAULT_CHECKPOINT_PATH.is_file():
        pytest.skip(f"no shipped checkpoint at {core.inference.DEFAULT_CHECKPOINT_PATH}")
    assert make_demo_sample.main(["--with-gt", "--output", str(tmp_path)]) == 0
    image1, image2 = (formats.read_image(tmp_path / name) for name in ("frame_0001.png", "frame_0002.png"))
    bundled = [formats.read_image(REPO / "assets" / "demo" / name) for name in ("frame_0001.png", "frame_0002.png")]
    assert all(np.array_equal(a, b) for a, b in zip((image1, image2), bundled))  # the re-rendered sample is bundled
    flow = FlowEstimator.from_checkpoint(device="cpu").predict(image1, image2)
    truth = torch.from_numpy(formats.read_flo(tmp_path / "flow_gt.flo")).permute(2, 0, 1)[None]
    metrics = flow_metrics(torch.from_numpy(flow).permute(2, 0, 1)[None], truth)
    zero = flow_metrics(torch.zeros_like(truth), truth)
    assert metrics["epe"] < 4.0 and metrics["epe"] < 0.4 * zero["epe"], (metrics, zero)
