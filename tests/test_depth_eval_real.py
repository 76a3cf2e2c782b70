"""Depth evaluation end to end on the real Middlebury 2014 Motorcycle pair (../shared/realdata/motorcycle).

The pair is rectified stereo, so the ground-truth left-to-right flow is (-disparity, 0) and depth is proportional to
1 / disparity. Ground truth ``depth = C / disparity`` (C = 1000, i.e. 17..139 m, so the 80 m cap has pixels to drop)
goes into a one-frame KITTI Eigen tree (16-bit PNG, depth * 256); ``evaluate.py`` runs a randomly initialised
protoformer-s depth model on ``im0.png`` with the Garg crop and median scaling (the scale of depth from a random
model is arbitrary). The test checks that the numbers are finite and that the protocol was applied: the evaluated
pixels are exactly the valid ones inside the crop and the caps, the scale ratio makes the median prediction equal
the median ground truth, and the metrics equal the ones computed here in numpy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import evaluate
from core.config import load_config
from core.data.formats import read_flo, read_image
from core.inference import FlowEstimator

REPO = Path(__file__).resolve().parents[1]
DEPTH_CONSTANT = 1000.0  # metres x pixels: disparity 7.2..59.9 px -> 16.7..139 m
DATE, DRIVE, FRAME = "2014_middlebury", "motorcycle_sync", 0
MIN_DEPTH, MAX_DEPTH = 1e-3, 80.0
GARG = (0.40810811, 0.99189189, 0.03594771, 0.96405229)  # top, bottom, left, right (Garg et al. 2016)


@pytest.fixture(scope="module")
def motorcycle(shared_dir: Path, tmp_path_factory) -> dict:
    folder = shared_dir / "realdata" / "motorcycle"
    if not (folder / "im0.png").is_file():
        pytest.skip(f"Middlebury motorcycle pair not found in {folder}")
    flow = read_flo(folder / "flow_gt.flo")
    valid = cv2.imread(str(folder / "valid.png"), cv2.IMREAD_UNCHANGED) == 255
    disparity = -flow[..., 0]
    valid &= disparity > 0
    codes = np.where(valid, np.round(DEPTH_CONSTANT / np.where(valid, disparity, 1.0) * 256.0), 0).astype(np.uint16)

    root = tmp_path_factory.mktemp("motorcycle") / "kitti_depth"
    image = root / "raw" / DATE / DRIVE / "image_02" / "data" / f"{FRAME:010d}.png"
    image.parent.mkdir(parents=True)
    shutil.copyfile(folder / "im0.png", image)
    truth = (root / "data_depth_annotated" / "train" / DRIVE / "proj_depth" / "groundtruth" / "image_02"
             / f"{FRAME:010d}.png")
    truth.parent.mkdir(parents=True)
    assert cv2.imwrite(str(truth), codes)
    (root / "eigen_test_files_with_gt.txt").write_text(
        f"{DATE}/{DRIVE}/image_02/data/{FRAME:010d}.png {DRIVE}/proj_depth/groundtruth/image_02/{FRAME:010d}.png "
        "721.5377\n")
    return {"root": root, "image": read_image(folder / "im0.png"), "depth": codes.astype(np.float32) / 256.0}


def test_motorcycle_depth_evaluation_with_median_scaling(motorcycle, tmp_path):
    config = REPO / "configs" / "depth_synthetic.yaml"
    out = tmp_path / "motorcycle.json"
    opts = ["data.roots.kitti_depth", str(motorcycle["root"])]
    assert evaluate.main(["--random-init", "--config", str(config), "--dataset", "kitti_eigen", "--eval-crop", "garg",
                          "--median-scaling", "--out", str(out), *opts]) == 0
    report = json.loads(out.read_text())
    assert report["protocol"]["crop"] == "garg" and report["protocol"]["median_scaling"] is True
    assert report["protocol"]["min_depth"] == MIN_DEPTH and report["protocol"]["max_depth"] == MAX_DEPTH
    result = report["results"]["kitti_eigen"]
    assert result["num_images"] == 1 and result["num_skipped"] == 0
    metric_keys = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog", "a1", "a2", "a3")
    assert all(np.isfinite(result[key]) for key in metric_keys)

    # the protocol: valid ground truth inside the Garg crop and the 1e-3..80 m caps
    gt = motorcycle["depth"].astype(np.float64)
    height, width = gt.shape
    top, bottom, left, right = GARG
    inside = np.zeros(gt.shape, bool)
    inside[int(top * height):int(bottom * height), int(left * width):int(right * width)] = True
    in_range = (gt > MIN_DEPTH) & (gt < MAX_DEPTH)
    mask = inside & in_range
    assert (inside & (gt >= MAX_DEPTH)).sum() > 100 and (~inside & in_range).sum() > 1000  # both have work to do
    assert result["num_pixels"] == mask.sum()

    # the same random model (seed cfg.seed), its depth as the official code converts it, scaled by the median ratio
    cfg = load_config(config, opts)
    estimator = FlowEstimator.from_random_init(cfg, device="cpu", pad_mode="kitti")
    disparity = estimator.predict_disparity(motorcycle["image"])
    pred = (np.float32(1.0) / np.maximum(disparity, np.float32(1.0 / MAX_DEPTH))).astype(np.float64)[mask]
    truth = gt[mask]
    scale = np.median(truth) / np.median(pred)
    np.testing.assert_allclose(result["scale_ratio_median"], scale, rtol=1e-4)
    scaled = np.clip(pred * result["scale_ratio_median"], MIN_DEPTH, MAX_DEPTH)
    np.testing.assert_allclose(np.median(scaled), np.median(truth), rtol=1e-4)  # medians agree after scaling

    ratio = np.maximum(scaled / truth, truth / scaled)
    log_error = np.log(scaled) - np.log(truth)
    expected = {"abs_rel": np.mean(np.abs(scaled - truth) / truth), "rmse": np.sqrt(np.mean((scaled - truth) ** 2)),
                "rmse_log": np.sqrt(np.mean(log_error**2)),
                "silog": 100 * np.sqrt(np.mean(log_error**2) - np.mean(log_error) ** 2),
                "a1": np.mean(ratio < 1.25), "a3": np.mean(ratio < 1.25**3)}
    for key, value in expected.items():
        np.testing.assert_allclose(result[key], value, rtol=1e-3, atol=1e-4, err_msg=key)
    assert 0.0 < result["abs_rel"] < 5.0 and 0.0 <= result["a1"] <= result["a2"] <= result["a3"] <= 1.0
