"""Sequence losses for flow and depth against hand computations (weights, exclusions, SILog, empty batches)."""

from __future__ import annotations

import math

import pytest
import torch

from core.losses import FLOW_LOSS_METRIC_KEYS, depth_sequence_loss, sequence_loss, silog_loss
from core.metrics import DEPTH_METRIC_KEYS, flow_metrics

LN2 = math.log(2.0)


def test_sequence_loss_gamma_weights_by_hand():
    gt = torch.zeros(2, 2, 3, 4)
    preds = [torch.full_like(gt, float(i + 1)) for i in range(3)]  # |error| = 1, 2, 3 everywhere
    loss, metrics = sequence_loss(preds, gt, valid=None, gamma=0.8)
    assert loss.item() == pytest.approx(0.8**2 * 1 + 0.8 * 2 + 1.0 * 3)  # 5.24
    assert metrics["epe"] == pytest.approx(3 * math.sqrt(2))  # last prediction only
    loss, _ = sequence_loss(preds, gt, valid=None, gamma=0.5)
    assert loss.item() == pytest.approx(0.25 * 1 + 0.5 * 2 + 3)


def test_sequence_loss_normalises_over_all_pixels_like_raft():
    gt = torch.zeros(1, 2, 1, 2)
    pred = torch.full_like(gt, 2.0)
    loss, metrics = sequence_loss([pred], gt, valid=torch.tensor([[[1.0, 0.0]]]))
    assert loss.item() == pytest.approx((2 + 2 + 0 + 0) / 4)  # invalid entries count as zeros in the mean
    assert metrics["epe"] == pytest.approx(2 * math.sqrt(2))


def test_sequence_loss_excludes_large_flow_and_nan_ground_truth():
    gt = torch.zeros(1, 2, 1, 4)
    gt[0, 0, 0] = torch.tensor([0.0, 399.0, 400.0, float("nan")])  # |gt| >= 400 and NaN are excluded
    pred = torch.nan_to_num(gt).clone().requires_grad_(True)
    with torch.no_grad():
        pred[0, 0] += 1.0  # error 1 in u everywhere
    loss, metrics = sequence_loss([pred], gt, valid=torch.ones(1, 1, 4), max_flow=400.0)
    assert loss.item() == pytest.approx(2 / 8)  # two included pixels, error 1 in one channel, 8 entries
    assert metrics == pytest.approx({"epe": 1.0, "1px": 0.0, "3px": 1.0, "5px": 1.0})
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    assert torch.equal(pred.grad[0, 0, 0] != 0, torch.tensor([True, True, False, False]))


def test_sequence_loss_metrics_come_from_core_metrics():
    gt = torch.randn(2, 2, 8, 8) * 5
    preds = [gt + torch.randn_like(gt) for _ in range(2)]
    valid = torch.rand(2, 8, 8) > 0.3
    _, metrics = sequence_loss(preds, gt, valid)
    reference = flow_metrics(preds[-1], gt, valid)
    assert metrics == pytest.approx({key: reference[key] for key in FLOW_LOSS_METRIC_KEYS})


def test_sequence_loss_all_invalid_is_finite_zero():
    gt = torch.zeros(1, 2, 4, 4)
    pred = torch.ones_like(gt, requires_grad=True)
    loss, metrics = sequence_loss([pred, pred * 2], gt, valid=torch.zeros(1, 4, 4))
    assert loss.item() == 0.0
    assert metrics == dict.fromkeys(FLOW_LOSS_METRIC_KEYS, 0.0)
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_sequence_loss_bad_input():
    gt = torch.zeros(1, 2, 4, 4)
    with pytest.raises(ValueError, match="empty"):
        sequence_loss([], gt, None)
    with pytest.raises(ValueError, match=r"flow_preds\[1\]"):
        sequence_loss([gt, gt[..., :2]], gt, None)
    with pytest.raises(ValueError, match="ground truth"):
        sequence_loss([gt[:, :1]], gt[:, :1], None)


def test_silog_loss_by_hand():
    pred = torch.tensor([[[[2.0, 1.0, 7.0]]]])
    gt = torch.tensor([[[[1.0, 1.0, 0.0]]]])  # third pixel: no ground truth
    valid = torch.ones_like(gt)
    # d = [ln 2, 0]: mean(d^2) = ln2^2 / 2, mean(d) = ln2 / 2 -> 10 * sqrt(ln2^2 (1/2 - 0.85/4))
    assert silog_loss(pred, gt, valid).item() == pytest.approx(10 * LN2 * math.sqrt(0.5 - 0.85 / 4))
    assert silog_loss(pred, gt, valid, variance_focus=0.0).item() == pytest.approx(10 * LN2 * math.sqrt(0.5))
    masked = torch.tensor([[[[1.0, 0.0, 1.0]]]])  # only d = ln 2 left: 10 * ln2 * sqrt(1 - 0.85)
    assert silog_loss(pred, gt, masked).item() == pytest.approx(10 * LN2 * math.sqrt(0.15))


def test_silog_loss_zero_cases_have_finite_gradients():
    gt = torch.tensor([[[[1.0, 3.0, 5.0]]]])
    perfect = gt.clone().requires_grad_(True)
    loss = silog_loss(perfect, gt, torch.ones_like(gt))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(perfect.grad).all()

    scaled = (2 * gt).requires_grad_(True)  # fully scale invariant: a global factor costs nothing
    assert silog_loss(scaled, gt, torch.ones_like(gt), variance_focus=1.0).item() == pytest.approx(0.0, abs=1e-3)

    pred = torch.zeros_like(gt, requires_grad=True)  # log(0) must not reach the graph at invalid pixels
    loss = silog_loss(pred, gt, torch.zeros_like(gt))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(pred.grad, torch.zeros_like(gt))
    with pytest.raises(ValueError, match="differ"):
        silog_loss(gt, gt[..., :2], torch.ones_like(gt))


def test_depth_sequence_loss_by_hand():
    gt = torch.tensor([[[[4.0, 0.05, 81.0, 0.0]]]])  # only 4 m is inside [0.1, 80]
    disp = [torch.full_like(gt, 0.5), torch.full_like(gt, 0.25)]  # depth 2 m, then 4 m
    loss, metrics = depth_sequence_loss(disp, gt, gamma=0.85)
    # First: d = ln(2/4) at one pixel -> 10 ln2 sqrt(1 - 0.85), weight 0.85; last: perfect.
    assert loss.item() == pytest.approx(0.85 * 10 * LN2 * math.sqrt(0.15))
    assert set(metrics) == set(DEPTH_METRIC_KEYS)
    assert metrics["abs_rel"] == pytest.approx(0.0, abs=1e-12) and metrics["a1"] == 1.0

    disp = [torch.full_like(gt, 0.001)]  # clamped to 1/80 -> 80 m; a 4 m target gives d = ln 20
    loss, metrics = depth_sequence_loss(disp, gt)
    assert loss.item() == pytest.approx(10 * math.log(20) * math.sqrt(0.15), rel=1e-5)
    assert metrics["abs_rel"] == pytest.approx(19.0)

    # An explicit valid mask removes the only supervised pixel.
    loss, metrics = depth_sequence_loss(disp, gt, valid=torch.tensor([[[0.0, 1.0, 1.0, 1.0]]]))
    assert loss.item() == 0.0 and metrics == dict.fromkeys(DEPTH_METRIC_KEYS, 0.0)


def test_depth_sequence_loss_all_invalid_and_bad_input():
    gt = torch.zeros(2, 1, 4, 4)
    disp = torch.full_like(gt, 0.3, requires_grad=True)
    loss, metrics = depth_sequence_loss([disp, disp], gt)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(disp.grad).all()
    assert metrics == dict.fromkeys(DEPTH_METRIC_KEYS, 0.0)
    with pytest.raises(ValueError, match="ground truth"):
        depth_sequence_loss([torch.zeros(2, 4, 4)], torch.zeros(2, 4, 4))
