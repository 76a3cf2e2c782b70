"""Flow and depth metrics against values computed by hand on tiny arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from core.config import load_config
from core.metrics import (
    DEPTH_METRIC_KEYS,
    SKIP_NO_GROUND_TRUTH,
    SKIP_OUTSIDE_PROTOCOL,
    DepthMetricAccumulator,
    FlowMetricAccumulator,
    depth_metrics,
    disparity_to_depth,
    end_point_error,
    flow_metrics,
    kitti_eval_crop_mask,
)

LN2 = math.log(2.0)


def _two_image_batch():
    """Two 2x2 images with hand-chosen errors (EPE per pixel in the comments), gt magnitudes for Fl-all.

    Image A (all valid): gt u = [[10, 0], [100, 0]], errors (3,4), (0,0), (4,0), (0,0.5) -> EPE [5, 0, 4, 0.5];
      Fl outliers: 5 > 3 and 5 > 0.05*10 -> yes; 4 > 3 but 4 < 0.05*100 -> no. 1 of 4.
    Image B (top row valid): gt 0, errors (6,8), (0,2) -> EPE [10, 2]; bottom row invalid (gt NaN there). 1 of 2.
    """
    gt = torch.zeros(2, 2, 2, 2)
    gt[0, 0] = torch.tensor([[10.0, 0.0], [100.0, 0.0]])
    error = torch.zeros(2, 2, 2, 2)
    error[0, :, 0, 0] = torch.tensor([3.0, 4.0])
    error[0, :, 1, 0] = torch.tensor([4.0, 0.0])
    error[0, :, 1, 1] = torch.tensor([0.0, 0.5])
    error[1, :, 0, 0] = torch.tensor([6.0, 8.0])
    error[1, :, 0, 1] = torch.tensor([0.0, 2.0])
    error[1, :, 1, 0] = torch.tensor([50.0, 0.0])  # invalid pixel: must not count
    pred = gt + error
    gt[1, :, 1, 0] = float("nan")  # invalid ground truth may be NaN
    valid = torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[1.0, 1.0], [0.0, 0.0]]])
    return pred, gt, valid


def test_end_point_error_by_hand():
    pred, gt, _ = _two_image_batch()
    epe = end_point_error(pred, torch.nan_to_num(gt))
    assert torch.allclose(epe[0], torch.tensor([[5.0, 0.0], [4.0, 0.5]]))
    assert torch.allclose(epe[1, 0], torch.tensor([10.0, 2.0]))
    assert end_point_error(pred[0], gt[0]).shape == (2, 2)  # [2, H, W] -> [H, W]


def test_flow_metrics_pooled_by_hand():
    pred, gt, valid = _two_image_batch()
    metrics = flow_metrics(pred, gt, valid)
    # Valid EPEs: 5, 0, 4, 0.5, 10, 2 (six pixels).
    assert metrics["epe"] == pytest.approx(21.5 / 6)
    assert metrics["1px"] == pytest.approx(2 / 6)  # 0, 0.5
    assert metrics["3px"] == pytest.approx(3 / 6)  # 0, 0.5, 2
    assert metrics["5px"] == pytest.approx(4 / 6)  # 0, 4, 0.5, 2 (5 is not < 5)
    assert metrics["fl_all"] == pytest.approx(100 * 2 / 6)


def test_flow_accumulator_pooled_vs_per_image():
    pred, gt, valid = _two_image_batch()
    accumulator = FlowMetricAccumulator()
    for index in range(2):  # one image at a time, as evaluate.py does
        accumulator.update(pred[index], gt[index], valid[index][None])
    result = accumulator.compute()
    assert result["epe"] == pytest.approx(21.5 / 6)  # Sintel: pooled over pixels
    assert result["epe_per_image"] == pytest.approx((9.5 / 4 + 12 / 2) / 2)  # KITTI: 2.375 and 6 -> 4.1875
    assert result["fl_all"] == pytest.approx(100 * 2 / 6)  # KITTI: pooled
    assert result["fl_all_per_image"] == pytest.approx((25.0 + 50.0) / 2)
    assert accumulator.num_images == 2 and accumulator.num_pixels == 6
    assert "epe_matched" not in result

    batched = FlowMetricAccumulator()
    batched.update(pred, gt, valid)
    assert batched.compute() == pytest.approx(result)


def test_flow_matched_unmatched_by_hand():
    pred, gt, valid = _two_image_batch()
    occluded = torch.tensor([[[True, False], [False, False]], [[False, True], [True, False]]])
    accumulator = FlowMetricAccumulator()
    accumulator.update(pred, gt, valid, occluded=occluded)
    result = accumulator.compute()
    assert result["epe_matched"] == pytest.approx((0 + 4 + 0.5 + 10) / 4)
    assert result["epe_unmatched"] == pytest.approx((5 + 2) / 2)  # B's occluded (1, 0) is invalid

    no_occlusion = FlowMetricAccumulator()
    no_occlusion.update(pred, gt, valid, occluded=torch.zeros_like(occluded))
    assert math.isnan(no_occlusion.compute()["epe_unmatched"])


def test_flow_metrics_inputs_and_errors():
    pred, gt, valid = _two_image_batch()
    reference = flow_metrics(pred, gt, valid)
    assert flow_metrics(pred.numpy(), gt.numpy(), valid.numpy()) == pytest.approx(reference)
    assert flow_metrics(pred, gt, valid[:, None] > 0.5) == pytest.approx(reference)
    assert flow_metrics(pred[0], gt[0])["epe"] == pytest.approx(9.5 / 4)
    with pytest.raises(ValueError, match="no valid pixel"):
        flow_metrics(pred, gt, torch.zeros_like(valid))
    with pytest.raises(ValueError, match="same shape"):
        flow_metrics(pred, gt[:1])
    with pytest.raises(ValueError, match=r"\[B, 2, H, W\]"):
        flow_metrics(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="valid"):
        flow_metrics(pred, gt, valid[:1])
    with pytest.raises(ValueError, match="no valid pixel"):
        FlowMetricAccumulator().compute()


def test_depth_metrics_by_hand():
    gt = torch.tensor([[2.0, 4.0], [10.0, 0.0]])  # 0 = no ground truth
    pred = torch.tensor([[1.0, 4.0], [20.0, 5.0]])
    metrics = depth_metrics(pred, gt)
    # Valid pixels (gt, pred): (2, 1), (4, 4), (10, 20); log errors d = [-ln 2, 0, ln 2].
    assert metrics["abs_rel"] == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    assert metrics["sq_rel"] == pytest.approx((0.5 + 0.0 + 10.0) / 3)
    assert metrics["rmse"] == pytest.approx(math.sqrt(101 / 3))
    assert metrics["rmse_log"] == pytest.approx(LN2 * math.sqrt(2 / 3))
    assert metrics["log10"] == pytest.approx(2 * LN2 / 3 / math.log(10))
    assert metrics["silog"] == pytest.approx(100 * LN2 * math.sqrt(2 / 3))  # mean(d) = 0
    assert metrics["a1"] == metrics["a2"] == metrics["a3"] == pytest.approx(1 / 3)  # ratios 2, 1, 2
    assert set(metrics) == set(DEPTH_METRIC_KEYS)


def test_depth_thresholds_and_silog_scale_invariance():
    gt = torch.ones(1, 4)
    metrics = depth_metrics(torch.tensor([[1.2, 1.5, 1.9, 2.5]]), gt)
    # 1.25^2 = 1.5625, 1.25^3 = 1.953125
    assert (metrics["a1"], metrics["a2"], metrics["a3"]) == pytest.approx((0.25, 0.5, 0.75))

    gt = torch.tensor([[1.0, 3.0, 7.0, 20.0]])
    doubled = depth_metrics(2 * gt, gt)
    assert doubled["silog"] == pytest.approx(0.0, abs=1e-5)  # a global scale has no SILog error
    assert doubled["rmse_log"] == pytest.approx(LN2)
    assert doubled["a1"] == 0.0


def test_depth_median_scaling_uses_valid_pixels_and_numpy_median():
    gt = torch.tensor([[2.0, 4.0], [6.0, 0.0]])
    pred = torch.tensor([[1.0, 2.0], [3.0, 100.0]])  # 100 sits on missing gt and must not enter the median
    scaled = depth_metrics(pred, gt, median_scaling=True)
    assert scaled["abs_rel"] == pytest.approx(0.0, abs=1e-12) and scaled["a1"] == 1.0

    # Even count: numpy's median averages the middle values: median(gt) = 5, median(pred) = 3 -> ratio 5/3
    # (torch.median would take 4 / 2). Scaled pred = [5/3, 10/3, 20/3, 25/3].
    gt = torch.tensor([[2.0, 4.0, 6.0, 10.0]])
    pred = torch.tensor([[1.0, 2.0, 4.0, 5.0]])
    expected = (1 / 6 + 1 / 6 + 1 / 9 + 1 / 6) / 4
    assert depth_metrics(pred, gt, median_scaling=True)["abs_rel"] == pytest.approx(expected)


def test_depth_caps_clamp_after_scaling():
    # gt 90 and gt == max_depth are outside (min, max); predictions are clamped to [min, max].
    gt = torch.tensor([[50.0, 70.0, 90.0, 80.0]])
    pred = torch.tensor([[100.0, 1e-4, 5.0, 5.0]])
    metrics = depth_metrics(pred, gt, min_depth=1e-3, max_depth=80.0)
    assert metrics["abs_rel"] == pytest.approx((30 / 50 + (70 - 1e-3) / 70) / 2)

    # Median scaling first (ratio 60 / 2 = 30 -> [30, 60, 90]), then the clamp (90 -> 80).
    gt = torch.tensor([[40.0, 60.0, 79.0]])
    pred = torch.tensor([[1.0, 2.0, 3.0]])
    metrics = depth_metrics(pred, gt, median_scaling=True)
    assert metrics["abs_rel"] == pytest.approx((10 / 40 + 0 + 1 / 79) / 3)


def test_depth_metrics_valid_mask_and_errors():
    gt = torch.tensor([[2.0, 4.0]])
    pred = torch.tensor([[1.0, 4.0]])
    assert depth_metrics(pred, gt, valid=torch.tensor([[False, True]]))["abs_rel"] == 0.0
    assert depth_metrics(pred.numpy(), gt.numpy())["abs_rel"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="no valid"):
        depth_metrics(pred, gt, valid=torch.zeros(1, 2))
    with pytest.raises(ValueError, match="same size"):
        depth_metrics(pred, gt.T)
    with pytest.raises(ValueError, match="one depth map"):
        depth_metrics(torch.ones(2, 1, 2, 2), torch.ones(2, 1, 2, 2))


def test_kitti_eval_crops():
    # KITTI raw is about 375 x 1242. Garg: rows int(0.40810811*375)=153 .. int(0.99189189*375)=371,
    # cols int(0.03594771*1242)=44 .. int(0.96405229*1242)=1197. Eigen: rows 124 .. 342, same columns.
    garg = kitti_eval_crop_mask(375, 1242, "garg")
    assert garg.shape == (375, 1242) and garg.dtype == torch.bool
    assert int(garg.sum()) == (371 - 153) * (1197 - 44)
    assert garg[153, 44] and garg[370, 1196]
    assert not garg[152, 44] and not garg[371, 44] and not garg[153, 43] and not garg[153, 1197]
    eigen = kitti_eval_crop_mask(375, 1242, "eigen")
    assert int(eigen.sum()) == (342 - 124) * (1197 - 44)
    assert eigen[124, 44] and not eigen[123, 44] and not eigen[342, 44]
    assert bool(kitti_eval_crop_mask(4, 5, "none").all())
    with pytest.raises(ValueError, match="crop"):
        kitti_eval_crop_mask(375, 1242, "monodepth")


def test_depth_accumulator_averages_per_image_and_crops():
    accumulator = DepthMetricAccumulator()
    gt = torch.tensor([[[2.0, 0.0], [0.0, 0.0]], [[4.0, 4.0], [4.0, 0.0]]])
    pred = torch.tensor([[[4.0, 1.0], [1.0, 1.0]], [[4.0, 4.0], [4.0, 1.0]]])
    accumulator.update(pred[:, None], gt[:, None])  # [B, 1, H, W]
    # abs_rel: image 1 (one pixel) = 1, image 2 (three pixels) = 0 -> 0.5 per image (pooled would give 0.25).
    assert accumulator.compute()["abs_rel"] == pytest.approx(0.5)
    assert accumulator.num_images == 2

    accumulator.update(torch.ones(2, 2), torch.zeros(2, 2))  # no ground truth: skipped
    assert accumulator.num_images == 2

    # Errors only outside the Garg crop vanish when cropping.
    gt = torch.full((375, 1242), 10.0)
    pred = gt.clone()
    pred[:100] = 20.0
    cropped = DepthMetricAccumulator(crop="garg")
    cropped.update(pred, gt)
    assert cropped.compute()["abs_rel"] == 0.0
    uncropped = DepthMetricAccumulator(crop="none")
    uncropped.update(pred, gt)
    assert uncropped.compute()["abs_rel"] == pytest.approx(100 / 375)

    with pytest.raises(ValueError, match="no image"):
        DepthMetricAccumulator().compute()
    with pytest.raises(ValueError, match="crop"):
        DepthMetricAccumulator(crop="nyu")


def test_depth_accumulator_counts_skipped_images_with_reasons():
    accumulator = DepthMetricAccumulator(max_depth=80.0)
    gt = torch.tensor([[[2.0, 4.0]], [[0.0, 0.0]], [[90.0, 0.0]], [[float("nan"), -1.0]]])  # 4 images [1, 2]
    pred = torch.tensor([[[3.0, 4.0]], [[1.0, 1.0]], [[1.0, 1.0]], [[1.0, 1.0]]])
    accumulator.update(pred, gt, names=["a", "b", "c", "d"])
    accumulator.skip("listed without ground truth", ["e"])
    accumulator.update(torch.ones(1, 2), torch.zeros(1, 2))  # default name: running index
    assert accumulator.num_images == 1 and accumulator.num_pixels == 2 and accumulator.num_skipped == 5
    assert accumulator.skipped == {SKIP_NO_GROUND_TRUTH: ["b", "d", "image 4"], SKIP_OUTSIDE_PROTOCOL: ["c"],
                                   "listed without ground truth": ["e"]}
    summary = accumulator.summary()
    assert summary["abs_rel"] == pytest.approx(0.25) and summary["num_skipped"] == 5
    assert summary["skipped"] == {SKIP_NO_GROUND_TRUTH: 3, SKIP_OUTSIDE_PROTOCOL: 1, "listed without ground truth": 1}
    assert "scale_ratio_median" not in summary and all(math.isfinite(summary[key]) for key in DEPTH_METRIC_KEYS)
    empty = DepthMetricAccumulator()
    empty.update(torch.ones(2, 2), torch.zeros(2, 2))
    assert empty.summary()["num_images"] == 0 and "abs_rel" not in empty.summary()  # no NaN, no crash
    with pytest.raises(ValueError, match="2 names for 1 images"):
        empty.update(torch.ones(2, 2), torch.ones(2, 2), names=["x", "y"])


def test_depth_accumulator_scale_ratios_and_protocol_from_config():
    accumulator = DepthMetricAccumulator(median_scaling=True)
    gt = torch.tensor([[[2.0, 4.0, 6.0]], [[10.0, 10.0, 10.0]]])
    pred = torch.tensor([[[1.0, 2.0, 3.0]], [[2.0, 2.5, 25.0]]])  # ratios median(gt) / median(pred) = 2 and 4
    accumulator.update(pred, gt)
    assert accumulator.scale_ratios == pytest.approx([2.0, 4.0])
    summary = accumulator.summary()
    assert summary["scale_ratio_median"] == pytest.approx(3.0)
    assert summary["scale_ratio_std"] == pytest.approx(np.std([2 / 3, 4 / 3]))  # of ratio / median (Monodepth2)
    # image 2 scaled: [8, 10, 100 -> clamped to 80] against 10: |AbsRel| = (0.2 + 0 + 7) / 3; image 1 exact.
    assert summary["abs_rel"] == pytest.approx((0.0 + (0.2 + 0.0 + 7.0) / 3) / 2)

    cfg = load_config(None, ["depth.eval_crop", "eigen", "depth.max_depth", "50.0", "depth.median_scaling", "True"])
    assert DepthMetricAccumulator.from_config(cfg, "kitti_eigen").protocol == {
        "crop": "eigen", "min_depth": 1e-3, "max_depth": 50.0, "median_scaling": True}
    assert DepthMetricAccumulator.from_config(cfg, "vkitti").protocol["crop"] == "none"  # KITTI crops: KITTI only
    assert DepthMetricAccumulator.from_config(cfg, "vkitti", crop="garg", median_scaling=False).protocol == {
        "crop": "garg", "min_depth": 1e-3, "max_depth": 50.0, "median_scaling": False}


def test_disparity_to_depth_matches_official_clamp():
    disparity = torch.tensor([1.0, 0.5, 0.0125, 0.001, 0.0])
    assert torch.allclose(disparity_to_depth(disparity), torch.tensor([1.0, 2.0, 80.0, 80.0, 80.0]))
    assert torch.allclose(disparity_to_depth(torch.tensor([0.01]), max_depth=10.0), torch.tensor([10.0]))
    np.testing.assert_allclose(disparity_to_depth(torch.tensor([0.25])).numpy(), [4.0])
