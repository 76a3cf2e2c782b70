"""evaluate.py's depth path (KITTI Eigen, Virtual KITTI 2, Sintel depth, synthetic) on tiny fake trees.

A stand-in estimator predicts a known depth map, so every number of the JSON report is checked against the Eigen /
Monodepth2 metrics computed here in numpy: crop rows and columns, depth caps, median scaling and the skipped frames.
Bad input (8-bit ground truth, split files naming missing frames, a flow model) ends with exit code 2 and a message
that names the problem. Random-init and checkpoint runs of the real small model go through the same code end to end.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import evaluate
from core.config import load_config
from core.data.depth_datasets import KittiEigenDepth
from core.data.loader import build_val_dataset
from core.inference import FlowEstimator, Prediction
from core.metrics import SKIP_NO_GROUND_TRUTH, SKIP_OUTSIDE_PROTOCOL
from core.model import atomic_save, build_model
from core.model.checkpoint import WEIGHTS_FORMAT
from fake_trees import (
    DEPTH_HEIGHT,
    DEPTH_WIDTH,
    KITTI_DRIVES,
    eigen_line,
    kitti_depth_codes,
    make_kitti_depth,
    make_sintel_depth,
    make_vkitti2,
    sintel_depth_values,
    vkitti_depth_codes,
)

REPO = Path(__file__).resolve().parents[1]
DATE1, DRIVE1, _ = KITTI_DRIVES[0]
DATE2, DRIVE2, _ = KITTI_DRIVES[1]
# Crops of a 48 x 64 frame, by hand: Garg rows int(0.40810811 * 48) = 19 .. int(0.99189189 * 48) = 47, Eigen rows
# int(0.3324324 * 48) = 15 .. int(0.91351351 * 48) = 43; both columns int(0.0359477 * 64) = 2 .. int(0.964 * 64) = 61.
GARG = (slice(19, 47), slice(2, 61))
EIGEN = (slice(15, 43), slice(2, 61))
NO_CROP = (slice(None), slice(None))
SYNTHETIC_ARGS = ["--dataset", "synthetic_depth", "--max-samples", "2", "--median-scaling",
                  "synthetic.image_size", "[48, 64]", "synthetic.val_size", "3"]


def known_depth(height: int, width: int) -> np.ndarray:
    """The stand-in model's depth in metres: 2.03 m + 0.49 m per column + 0.27 m per row (2 .. 46 m on 48 x 64;
    steps that do not put ratios with the fake ground truth exactly on a threshold such as 1.25)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    return 2.03 + 0.49 * xs + 0.27 * ys


class KnownDepthEstimator:
    """Stands in for FlowEstimator: a depth model whose disparity is 1 / known_depth."""

    predicts_depth, predicts_flow = True, False
    iters, tile = 4, False

    def __init__(self, cfg) -> None:
        self.cfg = cfg

    def describe(self) -> dict:
        return {"type": "depth", "stand_in": True}

    def run(self, image1: torch.Tensor, image2: torch.Tensor | None = None, flow_init=None) -> Prediction:
        assert image2 is None and image1.shape[:2] == (1, 3)  # monocular: frame 1 only
        depth = known_depth(*image1.shape[-2:])
        return Prediction(disparity=torch.from_numpy(1.0 / depth).float()[None, None])


def reference_metrics(pred: np.ndarray, gt: np.ndarray, region: tuple[slice, slice], median_scaling: bool,
                      min_depth: float = 1e-3, max_depth: float = 80.0) -> dict[str, float]:
    """Monodepth2's compute_errors on one image: ground truth > 0 inside ``region`` and the caps."""
    inside = np.zeros(gt.shape, bool)
    inside[region] = True
    mask = inside & (gt > min_depth) & (gt < max_depth)
    p, g = pred[mask].astype(np.float64), gt[mask].astype(np.float64)
    scale = np.median(g) / np.median(p) if median_scaling else 1.0
    p = np.clip(p * scale, min_depth, max_depth)
    ratio = np.maximum(g / p, p / g)
    d = np.log(p) - np.log(g)
    return {"abs_rel": np.mean(np.abs(p - g) / g), "sq_rel": np.mean((p - g) ** 2 / g),
            "rmse": np.sqrt(np.mean((p - g) ** 2)), "rmse_log": np.sqrt(np.mean(d**2)),
            "silog": 100 * np.sqrt(np.mean(d**2) - np.mean(d) ** 2), "a1": np.mean(ratio < 1.25),
            "a2": np.mean(ratio < 1.25**2), "a3": np.mean(ratio < 1.25**3), "pixels": int(mask.sum()), "scale": scale}


def check_against(result: dict, ground_truths: list[np.ndarray], region: tuple[slice, slice], median_scaling: bool,
                  **caps: float) -> None:
    """The report's metrics are the per-image reference metrics averaged over images."""
    references = []
    for gt in ground_truths:  # float32 like the loaded ground truth and the predicted disparity
        disparity = (1.0 / known_depth(*gt.shape)).astype(np.float32)
        pred = np.float32(1.0) / np.maximum(disparity, np.float32(1.0 / caps.get("max_depth", 80.0)))  # official
        references.append(reference_metrics(pred, gt.astype(np.float32), region, median_scaling, **caps))
    for key in ("abs_rel", "sq_rel", "rmse", "rmse_log", "silog", "a1", "a2", "a3"):
        np.testing.assert_allclose(result[key], np.mean([r[key] for r in references]), rtol=2e-5, err_msg=key)
    assert result["num_images"] == len(ground_truths)
    assert result["num_pixels"] == sum(r["pixels"] for r in references)
    if median_scaling:
        np.testing.assert_allclose(result["scale_ratio_median"], np.median([r["scale"] for r in references]),
                                   rtol=2e-5)
    else:
        assert "scale_ratio_median" not in result


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("depth_eval")
    return {"base": base, "kitti_depth": make_kitti_depth(base / "kitti_depth"),
            "vkitti": make_vkitti2(base / "vkitti2"), "sintel_depth": make_sintel_depth(base / "Sintel-depth")}


def _roots(trees: dict[str, Path]) -> list[str]:
    keys = ("kitti_depth", "vkitti", "sintel_depth")
    return [item for key in keys for item in (f"data.roots.{key}", str(trees[key]))]


@pytest.fixture
def known_model(monkeypatch):
    """evaluate.main builds the stand-in estimator (with the config and overrides it was given)."""
    monkeypatch.setattr(evaluate, "build_estimator",
                        lambda args, pad_mode: KnownDepthEstimator(load_config(args.config, args.opts)))


def _run(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "report.json"
    assert evaluate.main([*args, "--out", str(out)]) == 0
    return json.loads(out.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))


def _kitti_test_ground_truth() -> list[np.ndarray]:
    """Ground truth of the default Eigen test list: drive 1 frame 3 and drive 2 frame 2 (a third line is None)."""
    return [kitti_depth_codes(3).astype(np.float64) / 256, kitti_depth_codes(2).astype(np.float64) / 256]


# ----------------------------------------------------------------------------------------------- KITTI Eigen
def test_kitti_eigen_garg_crop_caps_and_skipped_frames(trees, known_model, tmp_path, messages):
    report = _run(tmp_path, "--config", str(REPO / "configs" / "depth_eigen.yaml"), "--dataset", "kitti_eigen",
                  *_roots(trees))
    assert report["protocol"] == {"crop": "garg", "min_depth": 1e-3, "max_depth": 80.0, "median_scaling": False,
                                  "depth_from_disparity": "1 / max(disparity, 1 / 80)"}
    result = report["results"]["kitti_eigen"]
    ground_truth = _kitti_test_ground_truth()
    assert any((gt[GARG] >= 80).any() for gt in ground_truth)  # the caps have something to drop
    check_against(result, ground_truth, GARG, median_scaling=False)
    no_annotation = KittiEigenDepth.no_ground_truth
    assert result["num_skipped"] == 1 and result["skipped"] == {no_annotation: 1}
    assert result["skipped_images"][no_annotation] == [
        f"eigen_test_files_with_gt.txt:3 {DATE2}/{DRIVE2}/image_02/data/{0:010d}.png"]
    table = next(message for message in messages if "kitti_eigen depth (" in message)
    assert "crop garg, depth caps 0.001..80 m, median scaling off" in table
    assert "AbsRel" in table and "d<1.25^3" in table and "SILog" in table
    assert f"skipped 1 frame(s): {no_annotation}" in table


def test_kitti_eigen_eigen_crop_median_scaling_and_caps_from_config(trees, known_model, tmp_path):
    config = ["--config", str(REPO / "configs" / "depth_eigen.yaml"), "--dataset", "kitti_eigen", *_roots(trees)]
    garg = _run(tmp_path, *config)["results"]["kitti_eigen"]
    report = _run(tmp_path, *config, "--eval-crop", "eigen", "--median-scaling")
    assert report["protocol"]["crop"] == "eigen" and report["protocol"]["median_scaling"] is True
    scaled = report["results"]["kitti_eigen"]
    check_against(scaled, _kitti_test_ground_truth(), EIGEN, median_scaling=True)
    unscaled = _run(tmp_path, *config, "--eval-crop", "eigen")["results"]["kitti_eigen"]
    check_against(unscaled, _kitti_test_ground_truth(), EIGEN, median_scaling=False)
    assert scaled["scale_ratio_median"] != pytest.approx(1.0) and scaled["abs_rel"] != pytest.approx(unscaled["abs_rel"])

    # median scaling from the config; caps from the config (a 1 m .. 30 m range drops more pixels)
    capped = _run(tmp_path, *config, "depth.median_scaling", "True", "depth.min_depth", "1.0",
                  "depth.max_depth", "30.0")
    assert capped["protocol"] == {"crop": "garg", "min_depth": 1.0, "max_depth": 30.0, "median_scaling": True,
                                  "depth_from_disparity": "1 / max(disparity, 1 / 30)"}
    check_against(capped["results"]["kitti_eigen"], _kitti_test_ground_truth(), GARG, median_scaling=True,
                  min_depth=1.0, max_depth=30.0)
    assert capped["results"]["kitti_eigen"]["num_pixels"] < garg["num_pixels"]
    no_scaling = _run(tmp_path, *config, "depth.median_scaling", "True", "--no-median-scaling")
    assert no_scaling["protocol"]["median_scaling"] is False


def test_all_invalid_ground_truth_is_skipped_with_its_reason(tmp_path, known_model):
    root = make_kitti_depth(tmp_path / "kitti_depth")
    lines = [eigen_line(DATE1, DRIVE1, frame) for frame in (1, 2, 3)]
    (root / "eigen_test_files_with_gt.txt").write_text("\n".join(lines) + "\n")
    annotated = root / "data_depth_annotated" / "train" / DRIVE1 / "proj_depth" / "groundtruth" / "image_02"
    cv2.imwrite(str(annotated / f"{1:010d}.png"), np.zeros((DEPTH_HEIGHT, DEPTH_WIDTH), np.uint16))
    codes = kitti_depth_codes(2)
    codes[GARG[0]] = 0  # ground truth only above the crop
    cv2.imwrite(str(annotated / f"{2:010d}.png"), codes)
    report = _run(tmp_path, "--config", str(REPO / "configs" / "depth_eigen.yaml"), "--dataset", "kitti_eigen",
                  "data.roots.kitti_depth", str(root))
    result = report["results"]["kitti_eigen"]
    check_against(result, [kitti_depth_codes(3) / 256.0], GARG, median_scaling=False)
    assert result["num_skipped"] == 2
    assert result["skipped"] == {SKIP_NO_GROUND_TRUTH: 1, SKIP_OUTSIDE_PROTOCOL: 1}
    assert result["skipped_images"][SKIP_NO_GROUND_TRUTH][0].endswith(f"image_02/{1:010d}.png")
    assert all(np.isfinite(result[key]) for key in ("abs_rel", "rmse", "silog", "a1"))
    # without the crop the second frame counts again
    uncropped = _run(tmp_path, "--config", str(REPO / "configs" / "depth_eigen.yaml"), "--dataset", "kitti_eigen",
                     "data.roots.kitti_depth", str(root), "--eval-crop", "none")["results"]["kitti_eigen"]
    assert uncropped["num_images"] == 2 and uncropped["skipped"] == {SKIP_NO_GROUND_TRUTH: 1}


def test_every_frame_invalid_gives_no_metrics_but_a_report(tmp_path, known_model):
    root = make_kitti_depth(tmp_path / "kitti_depth", test_lines=[eigen_line(DATE1, DRIVE1, 1)])
    annotated = root / "data_depth_annotated" / "train" / DRIVE1 / "proj_depth" / "groundtruth" / "image_02"
    cv2.imwrite(str(annotated / f"{1:010d}.png"), np.zeros((DEPTH_HEIGHT, DEPTH_WIDTH), np.uint16))
    result = _run(tmp_path, "--config", str(REPO / "configs" / "depth_eigen.yaml"), "--dataset", "kitti_eigen",
                  "data.roots.kitti_depth", str(root))["results"]["kitti_eigen"]
    assert result["num_images"] == 0 and result["skipped"] == {SKIP_NO_GROUND_TRUTH: 1} and "abs_rel" not in result


def test_8bit_ground_truth_and_missing_frames_are_clear_errors(tmp_path, known_model, messages):
    root = make_kitti_depth(tmp_path / "kitti_depth")
    args = ["--config", str(REPO / "configs" / "depth_eigen.yaml"), "--dataset", "kitti_eigen",
            "data.roots.kitti_depth", str(root)]
    gt = root / "data_depth_annotated" / "val" / DRIVE2 / "proj_depth" / "groundtruth" / "image_02" / f"{2:010d}.png"
    cv2.imwrite(str(gt), np.full((DEPTH_HEIGHT, DEPTH_WIDTH), 40, np.uint8))
    assert evaluate.main(args) == 2
    assert any(str(gt) in message and "16-bit PNG, found a 8-bit" in message for message in messages)

    split = root / "eigen_test_files_with_gt.txt"
    split.write_text(eigen_line(DATE1, DRIVE1, 3) + "\n" + eigen_line(DATE1, DRIVE1, 7) + "\n")
    messages.clear()
    assert evaluate.main(args) == 2
    error = next(message for message in messages if "ERROR" in message)
    missing_image = root / "raw" / DATE1 / DRIVE1 / "image_02" / "data" / f"{7:010d}.png"
    assert str(split) in error and "line 2: image not found" in error and str(missing_image) in error


def test_flow_model_on_a_depth_set_and_depth_options_on_flow_sets(trees, tmp_path, messages):
    args = ["--random-init", "--config", str(REPO / "configs" / "synthetic.yaml"), "--dataset", "kitti_eigen",
            *_roots(trees)]
    assert evaluate.main(args) == 2
    assert any("measures depth, but the model is a 'flow' model" in message for message in messages)
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--dataset", "sintel", "--median-scaling"])
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--dataset", "kitti", "--eval-crop", "garg"])


# ----------------------------------------------------------------------------------------------- other sets
def test_vkitti_no_crop_and_median_scaling(trees, known_model, tmp_path):
    report = _run(tmp_path, "--config", str(REPO / "configs" / "depth_vkitti.yaml"), "--dataset", "vkitti",
                  "--median-scaling", "--max-samples", "3", *_roots(trees))
    assert report["protocol"]["crop"] == "none" and report["dataset_sizes"] == {"vkitti": 6}
    codes = [vkitti_depth_codes(frame) for frame in (0, 1, 0)]  # Scene01/clone 0, 1 and Scene01/fog 0
    ground_truth = [np.where((c > 0) & (c < 65535), c / 100.0, 0.0) for c in codes]
    check_against(report["results"]["vkitti"], ground_truth, NO_CROP, median_scaling=True)


def test_sintel_depth_means_both_passes(trees, known_model, tmp_path):
    report = _run(tmp_path, "--config", str(REPO / "configs" / "depth_sintel.yaml"), "--dataset", "sintel_depth",
                  *_roots(trees))
    assert set(report["results"]) == {"sintel_depth_clean", "sintel_depth_final"}
    ground_truth = []
    for frame in (1, 2, 1):  # alley_1 1, 2 and market_2 1
        depth = sintel_depth_values(frame).astype(np.float64)
        ground_truth.append(np.where(np.isfinite(depth) & (depth > 0), depth, 0.0))
    for result in report["results"].values():
        check_against(result, ground_truth, NO_CROP, median_scaling=False)
    single = _run(tmp_path, "--config", str(REPO / "configs" / "depth_sintel.yaml"), "--dataset",
                  "sintel_depth_final", *_roots(trees))
    assert single["results"]["sintel_depth_final"] == report["results"]["sintel_depth_final"]


# ----------------------------------------------------------------------------------------------- real model
def test_random_init_and_checkpoint_depth_model_end_to_end(tmp_path):
    config = str(REPO / "configs" / "depth_synthetic.yaml")
    report = _run(tmp_path, "--random-init", "--config", config, *SYNTHETIC_ARGS)
    result = report["results"]["synthetic_depth"]
    assert report["dataset_sizes"] == {"synthetic_depth": 3} and result["num_images"] == 2

    cfg = load_config(config, ["synthetic.image_size", "[48, 64]", "synthetic.val_size", "3"])
    estimator = FlowEstimator.from_random_init(cfg, device="cpu")
    dataset = build_val_dataset(cfg, "synthetic_depth")
    references = []
    for index in range(2):
        sample = dataset[index]
        disparity = estimator.predict_disparity(sample["image1"]).astype(np.float64)
        prediction = 1.0 / np.maximum(disparity, 1.0 / 80.0)
        references.append(reference_metrics(prediction, sample["depth"][0].numpy(), NO_CROP, median_scaling=True))
    for key in ("abs_rel", "rmse", "rmse_log", "silog", "a1"):
        np.testing.assert_allclose(result[key], np.mean([r[key] for r in references]), rtol=1e-4, err_msg=key)

    torch.manual_seed(cfg.seed)
    checkpoint = tmp_path / "depth.pth"
    atomic_save({"format": WEIGHTS_FORMAT, "model": build_model(cfg).state_dict(), "config": cfg.dump()}, checkpoint)
    from_checkpoint = _run(tmp_path, "--ckpt", str(checkpoint), *SYNTHETIC_ARGS)
    assert from_checkpoint["checkpoint"] == str(checkpoint)
    assert from_checkpoint["results"]["synthetic_depth"]["abs_rel"] == pytest.approx(result["abs_rel"], rel=1e-5)


def test_joint_model_evaluates_depth(tmp_path):
    report = _run(tmp_path, "--random-init", "--config", str(REPO / "configs" / "depth_synthetic.yaml"),
                  *SYNTHETIC_ARGS, "model.type", "joint")
    assert report["options"]["type"] == "joint"
    result = report["results"]["synthetic_depth"]
    assert result["num_images"] == 2 and np.isfinite(result["abs_rel"]) and 0 <= result["a1"] <= 1
