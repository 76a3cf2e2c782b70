"""scripts/benchmark_real.py: metrics against an independent numpy computation on a generated stereo pair, the JSON,
the previews, the errors for missing data, and (with ../shared) DIS and Farneback on the real motorcycle pair."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from core.config import load_config
from core.data import formats
from core.flow_backends import make_flow_backend
from core.inference import DEFAULT_CHECKPOINT_PATH, FlowEstimator
from core.model import atomic_save, build_model
from core.model.checkpoint import WEIGHTS_FORMAT
from core.utils import shared
from scripts import benchmark_real

REPO = Path(__file__).resolve().parents[1]
SIZE = (44, 70)  # H, W of the generated pair; not multiples of 8
DISPARITY = 4  # px; the left image is the right one shifted right by this much


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A randomly initialised protoformer-s exported like train.py --export does."""
    cfg = load_config(REPO / "configs" / "synthetic.yaml", ["model.variant", "protoformer-s", "model.iters", "1"])
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("bench_real_ckpt") / "random.pth"
    atomic_save({"format": WEIGHTS_FORMAT, "model": build_model(cfg).state_dict(), "config": cfg.dump()}, path)
    return path


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth random RGB texture, uint8 [H, W, 3] (trackable by DIS)."""
    coarse = rng.uniform(0, 255, (height // 4 + 2, width // 4 + 2, 3)).astype(np.float32)
    fine = cv2.resize(coarse, (4 * coarse.shape[1], 4 * coarse.shape[0]), interpolation=cv2.INTER_CUBIC)
    return np.clip(fine[:height, :width], 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def stereo(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """A folder laid out like realdata/ with motorcycle/{im0,im1}.png, flow_gt.flo, valid.png."""
    rng = np.random.default_rng(0)
    height, width = SIZE
    right = _texture(rng, height, width)
    left = _texture(rng, height, width)  # the first DISPARITY columns stay unmatched
    left[:, DISPARITY:] = right[:, :-DISPARITY]
    flow = np.zeros((height, width, 2), np.float32)
    flow[..., 0] = -DISPARITY
    valid = np.zeros((height, width), bool)
    valid[:, DISPARITY:] = True
    data = tmp_path_factory.mktemp("realdata")
    folder = data / "motorcycle"
    folder.mkdir()
    formats.write_image(folder / "im0.png", left)
    formats.write_image(folder / "im1.png", right)
    formats.write_flo(folder / "flow_gt.flo", flow)
    formats.write_mask(folder / "valid.png", valid)
    return data, {"left": left, "right": right, "flow": flow, "valid": valid}


def _numpy_metrics(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> dict[str, float]:
    epe = np.sqrt(((pred.astype(np.float64) - gt) ** 2).sum(axis=2))[valid]
    magnitude = np.sqrt((gt.astype(np.float64) ** 2).sum(axis=2))[valid]
    return {"epe": epe.mean(), "1px": (epe < 1).mean(), "3px": (epe < 3).mean(),
            "fl_all": 100 * ((epe > 3) & (epe > 0.05 * magnitude)).mean()}


def test_generated_pair_metrics_json_and_previews(tmp_path, ckpt, stereo, messages, capsys):
    data, truth = stereo
    out = tmp_path / "out" / "results.json"
    previews = tmp_path / "previews"
    argv = ["--ckpt", str(ckpt), "--data", str(data), "--out", str(out), "--previews", str(previews),
            "--scales", "1", "0.5"]
    assert benchmark_real.main(argv) == 0

    result = json.loads(out.read_text())
    names = [row["method"] for row in result["rows"]]
    assert len(names) == 5 and names[2:] == ["DIS (OpenCV, medium)", "Farneback (OpenCV)", "zero flow (reference)"]
    assert [row["settings"]["scales"] for row in result["rows"]] == [[1.0], [0.5], [1.0], [1.0], [1.0]]
    assert result["rows"][0]["settings"]["iters"] == 1 and result["rows"][0]["settings"]["checkpoint"] == str(ckpt)
    assert result["size"] == list(SIZE) and result["valid_pixels"] == int(truth["valid"].sum())
    for row in result["rows"]:
        assert set(row["metrics"]) == {"epe", "1px", "3px", "5px", "fl_all", "seconds"}
        assert row["metrics"]["seconds"] > 0

    zero = result["rows"][4]["metrics"]
    assert zero["epe"] == pytest.approx(DISPARITY) and zero["3px"] == 0.0 and zero["fl_all"] == 100.0

    # the DIS row against OpenCV called here and errors computed in numpy
    grey = [cv2.cvtColor(truth[side], cv2.COLOR_RGB2GRAY) for side in ("left", "right")]
    dis_flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM).calc(*grey, None)
    expected = _numpy_metrics(dis_flow, truth["flow"], truth["valid"])
    measured = result["rows"][2]["metrics"]
    for key, value in expected.items():
        assert measured[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert measured["epe"] < 1.0  # a pure 4 px shift of a smooth texture is easy for DIS

    # the full-size ProtoFormer row: the same checkpoint called here on left -> right
    ours = FlowEstimator.from_checkpoint(ckpt, device="cpu").predict(truth["left"], truth["right"])
    expected = _numpy_metrics(ours, truth["flow"], truth["valid"])
    for key, value in expected.items():
        assert result["rows"][0]["metrics"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key

    # the table on stdout, ready for the README
    table = capsys.readouterr().out
    assert "| method | EPE (px) |" in table and f"| DIS (OpenCV, medium) | {measured['epe']:.2f} |" in table
    assert table == result["markdown"]

    # previews: the stereo pair (4 panels), the pairs without ground truth are absent here -> skipped with a warning
    assert sorted(p.name for p in previews.iterdir()) == ["motorcycle.png"]
    preview = formats.read_image(previews / "motorcycle.png")
    assert preview.shape[1] == 4 * benchmark_real.PREVIEW_TILE_WIDTH
    assert any("no preview of rubberwhale" in line for line in messages)
    assert any("no preview of vtest" in line and "vtest.avi is missing" in line for line in messages)
    assert result["previews"]["motorcycle_max_radius"] == pytest.approx(DISPARITY)


def _write_clip(path: Path, count: int) -> None:
    """A grey clip whose frame i is uniformly 20 * i (MJPG keeps a flat frame within a few levels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (48, 32))
    for index in range(count):
        writer.write(np.full((32, 48, 3), 20 * index, np.uint8))
    writer.release()


def test_video_previews_use_the_listed_frames(tmp_path, monkeypatch, messages):
    data = tmp_path / "realdata"
    _write_clip(data / "videos" / "clip.avi", 8)
    monkeypatch.setattr(benchmark_real, "VIDEO_PAIRS", {"clip": ("clip.avi", 3, 5), "gone": ("gone.avi", 0, 1)})
    first, second = benchmark_real.load_video_pair(data, "clip")
    assert first.shape == (32, 48, 3) and abs(float(first.mean()) - 60) < 3 and abs(float(second.mean()) - 100) < 3

    seen = []

    def recording_flow(image1: np.ndarray, image2: np.ndarray) -> np.ndarray:
        seen.append((round(float(image1.mean())), round(float(image2.mean()))))
        return np.zeros((*image1.shape[:2], 2), np.float32)

    method = benchmark_real.Method("stand-in", recording_flow, {})
    (tmp_path / "previews").mkdir()
    runtimes = benchmark_real.visual_previews(data, tmp_path / "previews", method, method)
    assert sorted(runtimes) == ["video_clip"] and len(seen) == 2 and abs(seen[0][0] - 60) <= 3
    preview = formats.read_image(tmp_path / "previews" / "video_clip.png")
    assert preview.shape[1] == 3 * benchmark_real.PREVIEW_TILE_WIDTH  # image | ours | DIS
    assert any("no preview of gone" in line for line in messages)
    assert any("no preview of rubberwhale" in line for line in messages)

    monkeypatch.setattr(benchmark_real, "VIDEO_PAIRS", {"clip": ("clip.avi", 6, 9)})
    with pytest.raises(ValueError, match=r"clip\.avi: ends before frame 9"):
        benchmark_real.load_video_pair(data, "clip")


def test_scales_default_to_the_config_and_cascades_are_named(tmp_path, ckpt, stereo):
    data, _ = stereo
    args = ["--ckpt", str(ckpt), "--data", str(data), "--out", str(tmp_path / "r.json")]
    config = _config_with_scales(tmp_path, [0.5])
    rows = benchmark_real.run(benchmark_real.parse_args([*args, "--config", str(config)]))["rows"]
    assert rows[0]["settings"]["scales"] == [0.5] and "scale 0.5)" in rows[0]["method"]
    rows = benchmark_real.run(benchmark_real.parse_args([*args, "--scales", "1,2"]))["rows"]
    assert rows[0]["settings"]["scales"] == [1.0, 2.0] and "scales 1,2)" in rows[0]["method"]
    assert benchmark_real.run(benchmark_real.parse_args(args))["rows"][0]["settings"]["scales"] == [1.0]
    rows = benchmark_real.run(benchmark_real.parse_args([*args, "--refine-iters", "2", "--scales", "1", "1,2+flip"]))
    settings = [row["settings"] for row in rows["rows"][:2]]
    assert [(s["scales"], s["refine_iters"], s["flip_average"]) for s in settings] == [
        ([1.0], 2, False), ([1.0, 2.0], 2, True)]
    assert rows["rows"][1]["method"].endswith("1+2 it, scales 1,2, flip-averaged)")
    assert benchmark_real.parse_args([*args, "--flip-average"]).flip_average is True
    assert benchmark_real.parse_passes("0.5,1+flip") == benchmark_real.Passes([0.5, 1.0], True)
    for bad in ("5", "1,x", "", "1+flop", "+flip"):
        with pytest.raises(SystemExit):
            benchmark_real.parse_args([*args, "--scales", bad])


def _config_with_scales(tmp_path: Path, scales: list[float]) -> Path:
    path = tmp_path / "scaled.yaml"
    path.write_text(f"_base_: {REPO / 'configs' / 'synthetic.yaml'}\nmodel:\n  iters: 1\neval:\n  scales: {scales}\n")
    return path


def test_missing_data_folder_is_a_clear_error(tmp_path, ckpt, messages):
    missing = tmp_path / "no_realdata"
    assert benchmark_real.main(["--ckpt", str(ckpt), "--data", str(missing), "--out", str(tmp_path / "r.json")]) == 2
    assert any("real-image folder not found" in line and str(missing) in line for line in messages)
    assert not (tmp_path / "r.json").exists()


def test_missing_ground_truth_file_is_named(tmp_path, ckpt, messages):
    (tmp_path / "motorcycle").mkdir()
    assert benchmark_real.main(["--ckpt", str(ckpt), "--data", str(tmp_path), "--out", str(tmp_path / "r.json")]) == 2
    assert any("lacks im0.png, im1.png, flow_gt.flo, valid.png" in line for line in messages)


def test_missing_checkpoint_is_a_clear_error(tmp_path, stereo, messages):
    data, _ = stereo
    argv = ["--ckpt", str(tmp_path / "none.pth"), "--data", str(data), "--out", str(tmp_path / "r.json")]
    assert benchmark_real.main(argv) == 2
    assert any("checkpoint not found" in line for line in messages)


def test_real_motorcycle_dis_and_farneback(shared_dir):
    pair = benchmark_real.load_stereo_pair(shared_dir / "realdata")
    assert pair.image1.shape == (500, 741, 3) and pair.flow.shape == (500, 741, 2)
    disparity = -pair.flow[..., 0][pair.valid]
    assert 7.0 < disparity.min() and disparity.max() < 60.5 and np.all(pair.flow[..., 1][pair.valid] == 0)
    assert 0.9 < pair.valid.mean() < 0.95  # 7.3 % invalid
    results = {}
    for name in ("dis", "farneback"):
        method = benchmark_real.Method(name, make_flow_backend(name), {})
        results[name], _ = benchmark_real.evaluate(method, pair)
    assert results["dis"]["epe"] < 4.0  # about 2.63 px
    assert results["farneback"]["epe"] > results["dis"]["epe"]


@pytest.mark.slow
def test_the_shipped_checkpoint_beats_dis_on_the_motorcycle_pair_with_its_precise_passes(shared_dir):
    """Issue 8's bar, end to end (about 40 s on 2 CPU cores): the shipped checkpoint with the refining pass at 2x and
    the mirror average (README: EPE 2.55 px) below DIS-medium (2.63 px) on the real pair (the default single pass,
    3.34 px, is not; README). A regression in the weights, the cascade or the mirroring would lift it above DIS."""
    if not DEFAULT_CHECKPOINT_PATH.is_file():
        pytest.skip(f"no shipped checkpoint at {DEFAULT_CHECKPOINT_PATH}")
    pair = benchmark_real.load_stereo_pair(shared_dir / "realdata")
    methods = benchmark_real.build_methods(DEFAULT_CHECKPOINT_PATH, None, None, None, None,
                                           [benchmark_real.parse_passes("1,2+flip")])
    ours, dis = (benchmark_real.evaluate(method, pair)[0] for method in methods[:2])
    assert methods[1].name == benchmark_real.DIS_MEDIUM
    assert ours["epe"] < dis["epe"] < 3.0, (ours, dis)
    assert ours["fl_all"] < dis["fl_all"]


def test_epe_by_motion_by_hand():
    truth = np.zeros((1, 4, 2), np.float32)
    truth[0, :, 0] = [5.0, 15.0, 16.0, 55.0]  # lengths in the 0-10, 10-20, 10-20 and >=50 ranges
    flow = truth.copy()
    flow[0, :, 1] = [1.0, 2.0, 4.0, 3.0]  # errors perpendicular to the motion: EPE = these values
    valid = np.array([[True, True, True, False]])
    rows = benchmark_real.epe_by_motion(flow, truth, valid)
    assert rows == [{"range": "0-10", "pixels": 1, "epe": 1.0}, {"range": "10-20", "pixels": 2, "epe": 3.0}]
    valid[0, 3] = True
    assert benchmark_real.epe_by_motion(flow, truth, valid)[-1] == {"range": ">=50", "pixels": 1, "epe": 3.0}


def test_shared_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PROTOFORMER_SHARED", str(tmp_path))
    assert shared.shared_dir() == tmp_path
    monkeypatch.setenv("PROTOFORMER_SHARED", "")
    assert shared.shared_dir() == REPO.parent / "shared"
    monkeypatch.delenv("PROTOFORMER_SHARED")
    assert shared.shared_dir() == REPO.parent / "shared"
