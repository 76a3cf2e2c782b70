"""Training losses: RAFT's sequence loss for flow and a sequence of SILog losses for the depth head.

Both follow the official ProtoFormer training code (``core/loss.py`` of the release):

* flow: every refinement iteration i of N is supervised with an L1 loss weighted by ``gamma ** (N - i - 1)``
  (RAFT, eq. 7), so later iterations weigh more;
* depth: every iteration's sigmoid disparity is turned into depth (``1 / max(disp, 1 / max_depth)``) and supervised
  with the scale-invariant log loss of Eigen et al. 2014 in the BTS form (``10 * sqrt(mean(d^2) - lambda mean(d)^2)``),
  weighted the same way.

Each returns ``(loss, metrics)``: a scalar tensor to back-propagate and a dict of Python floats about the last
prediction for the training log, computed with :mod:`core.metrics`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from core.metrics import DEPTH_METRIC_KEYS, DepthMetricAccumulator, disparity_to_depth, flow_metrics, pixel_mask

FLOW_LOSS_METRIC_KEYS = ("epe", "1px", "3px", "5px")


def _check_predictions(predictions: Sequence[Tensor], target: Tensor, name: str, channels: int) -> None:
    if len(predictions) == 0:
        raise ValueError(f"{name} is empty: need at least one prediction")
    if target.dim() != 4 or target.shape[1] != channels:
        raise ValueError(f"{name}: ground truth must be [B, {channels}, H, W], got shape {tuple(target.shape)}")
    for index, prediction in enumerate(predictions):
        if prediction.shape != target.shape:
            raise ValueError(f"{name}[{index}] has shape {tuple(prediction.shape)}, "
                             f"the ground truth has {tuple(target.shape)}")


def sequence_loss(flow_preds: Sequence[Tensor], flow_gt: Tensor, valid: Tensor | None, gamma: float = 0.8,
                  max_flow: float = 400.0) -> tuple[Tensor, dict[str, float]]:
    """RAFT's sequence loss over the flow predictions of all refinement iterations.

    ``loss = sum_i gamma ** (N - i - 1) * mean(mask * |flow_preds[i] - flow_gt|)``: the L1 distance of both flow
    channels, averaged over **all** B x 2 x H x W entries with excluded pixels counted as zero (exactly RAFT's and the
    official normalisation, so an all-invalid batch gives a loss of 0). Excluded pixels: ``valid < 0.5`` (or false)
    and ``|flow_gt| >= max_flow``; their ground truth may be anything, including NaN.

    Args:
        flow_preds: N flows [B, 2, H, W] in pixels, first to last iteration.
        flow_gt: [B, 2, H, W] ground-truth flow in pixels.
        valid: [B, H, W] or [B, 1, H, W] mask (bool or float), or None for dense ground truth.
        gamma: decay of the iteration weights (config ``train.gamma``; official 0.8 chairs/things, 0.75 sintel,
            0.85 kitti).
        max_flow: ground-truth magnitude (pixels) from which pixels are excluded.

    Returns:
        ``(loss, metrics)``; metrics of the last prediction over the loss's pixels: ``epe`` (pixels) and
        ``1px``, ``3px``, ``5px`` (share of pixels with EPE below 1/3/5 px), pooled over the batch; all 0.0 if the
        batch has no supervised pixel.
    """
    _check_predictions(flow_preds, flow_gt, "flow_preds", channels=2)
    batch, _, height, width = flow_gt.shape
    mask = pixel_mask(valid, batch, height, width, "valid", flow_gt.device)
    mask = mask & (torch.linalg.vector_norm(flow_gt, dim=1) < max_flow)
    mask = mask.unsqueeze(1)
    target = torch.where(mask, flow_gt, torch.zeros_like(flow_gt))  # no NaN reaches the graph

    count = len(flow_preds)
    loss = flow_gt.new_zeros(())
    for index, prediction in enumerate(flow_preds):
        error = torch.where(mask, (prediction - target).abs(), torch.zeros_like(prediction))
        loss = loss + gamma ** (count - index - 1) * error.mean()

    if bool(mask.any()):
        last = flow_metrics(flow_preds[-1].detach(), flow_gt, mask)
        metrics = {key: last[key] for key in FLOW_LOSS_METRIC_KEYS}
    else:
        metrics = dict.fromkeys(FLOW_LOSS_METRIC_KEYS, 0.0)
    return loss, metrics


def silog_loss(pred_depth: Tensor, gt_depth: Tensor, valid: Tensor, variance_focus: float = 0.85) -> Tensor:
    """Scale-invariant log loss (Eigen et al. 2014, BTS form) over the valid pixels of the whole batch (pooled).

    ``10 * sqrt(mean(d^2) - variance_focus * mean(d)^2)`` with ``d = log(pred) - log(gt)``. ``variance_focus`` = 1
    is fully scale invariant, 0 is an RMSE in log space; the official code uses 0.85 and the factor 10 (BTS).

    Args:
        pred_depth: positive depth [B, 1, H, W] (or any shape), metres.
        gt_depth: ground-truth depth of the same shape; pixels with ``gt <= 0`` are ignored.
        valid: mask of the same number of elements (bool, or float where >= 0.5 is valid).

    Returns:
        A scalar tensor; exactly 0 (with a finite, zero gradient) if no pixel is valid or the error is zero.
    """
    if pred_depth.shape != gt_depth.shape:
        raise ValueError(f"silog_loss: pred_depth {tuple(pred_depth.shape)} and gt_depth {tuple(gt_depth.shape)} "
                         f"differ")
    if valid.numel() != gt_depth.numel():
        raise ValueError(f"silog_loss: valid {tuple(valid.shape)} does not match the depth {tuple(gt_depth.shape)}")
    mask = valid.reshape(gt_depth.shape)
    mask = (mask if mask.dtype == torch.bool else mask >= 0.5) & (gt_depth > 0)
    ones = torch.ones_like(pred_depth)
    # log of 1 outside the mask: d = 0 there, and no log(0) ever enters the backward pass.
    log_diff = torch.log(torch.where(mask, pred_depth, ones)) - torch.log(torch.where(mask, gt_depth, ones))
    count = mask.sum().clamp(min=1)
    mean_diff = log_diff.sum() / count
    variance = log_diff.square().sum() / count - variance_focus * mean_diff.square()
    # sqrt has an infinite slope at 0; the where keeps a perfect or empty prediction at 0 with a zero gradient.
    root = variance.clamp(min=torch.finfo(variance.dtype).tiny).sqrt()
    return 10.0 * torch.where(variance > 0, root, torch.zeros_like(root))


def depth_sequence_loss(disp_preds: Sequence[Tensor], gt_depth: Tensor, valid: Tensor | None = None,
                        gamma: float = 0.85, variance_focus: float = 0.85, min_depth: float = 0.1,
                        max_depth: float = 80.0) -> tuple[Tensor, dict[str, float]]:
    """Sequence of SILog losses over the depth head's iterations (official ``sequence_loss_depth``).

    Each disparity is converted with :func:`core.metrics.disparity_to_depth` (``1 / max(disp, 1 / max_depth)``), then
    ``loss = sum_i gamma ** (N - i - 1) * silog_loss(depth_i, gt, mask)`` with ``mask = valid & min_depth <= gt <=
    max_depth`` (the official bounds are 0.1 and 80 m, inclusive; the official code ignores ``valid``, here it is
    also applied).

    Args:
        disp_preds: N sigmoid disparities [B, 1, H, W] in (0, 1), first to last iteration.
        gt_depth: [B, 1, H, W] ground-truth depth in metres (<= 0 or out of range = no ground truth).
        valid: optional [B, H, W] or [B, 1, H, W] mask.
        gamma: decay of the iteration weights (official depth stages: 0.85).
        variance_focus: lambda of :func:`silog_loss` (official 0.85).

    Returns:
        ``(loss, metrics)``; metrics: :data:`core.metrics.DEPTH_METRIC_KEYS` of the last prediction (metric depth,
        no median scaling, evaluation range ``min_depth < gt < max_depth``, averaged per image); all 0.0 if no pixel
        is supervised.
    """
    _check_predictions(disp_preds, gt_depth, "disp_preds", channels=1)
    batch, _, height, width = gt_depth.shape
    mask = pixel_mask(valid, batch, height, width, "valid", gt_depth.device).unsqueeze(1)
    mask = mask & (gt_depth >= min_depth) & (gt_depth <= max_depth)

    count = len(disp_preds)
    loss = gt_depth.new_zeros(())
    for index, disparity in enumerate(disp_preds):
        depth = disparity_to_depth(disparity, max_depth)
        loss = loss + gamma ** (count - index - 1) * silog_loss(depth, gt_depth, mask, variance_focus)

    accumulator = DepthMetricAccumulator(min_depth=min_depth, max_depth=max_depth)
    if bool(mask.any()):
        accumulator.update(disparity_to_depth(disp_preds[-1].detach(), max_depth), gt_depth, mask)
    metrics = accumulator.compute() if accumulator.num_images else dict.fromkeys(DEPTH_METRIC_KEYS, 0.0)
    return loss, metrics
