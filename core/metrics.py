"""Evaluation metrics for optical flow (Sintel, KITTI) and monocular depth (KITTI Eigen split, Sintel depth).

Pure functions plus two small accumulators; nothing here touches the model. Inputs may be torch tensors or numpy
arrays (numpy arrays are wrapped with ``torch.from_numpy``, no copy); results are Python floats.

Flow (RAFT's evaluation protocol; EPE = per-pixel end-point error ``|pred - gt|_2`` in pixels):

============  =====================================================================================
Sintel        EPE, 1px, 3px, 5px **pooled** over all pixels of all images (RAFT concatenates the
              per-pixel EPE of every image and takes one mean). Matched / unmatched EPE are pooled too.
KITTI-2015    EPE **per image** (mean over the valid pixels of each image, then mean over images) and
              Fl-all **pooled** over all valid pixels of all images, in percent.
============  =====================================================================================

:class:`FlowMetricAccumulator` provides both kinds of average so an evaluation loop reports either protocol.

Depth (Eigen et al. 2014 / Monodepth2 definitions, computed per image over valid pixels, then averaged over
images by :class:`DepthMetricAccumulator`):
``abs_rel = mean(|p - g| / g)``, ``sq_rel = mean((p - g)^2 / g)``, ``rmse = sqrt(mean((p - g)^2))``,
``rmse_log = sqrt(mean((log p - log g)^2))``, ``log10 = mean(|log10 p - log10 g|)``,
``silog = 100 * sqrt(mean(d^2) - mean(d)^2)`` with ``d = log p - log g`` (the KITTI depth benchmark's SILog,
reported in ``100 * log(m)``), and ``a_k = share of pixels with max(p / g, g / p) < 1.25^k``.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from loguru import logger
from torch import Tensor

ArrayLike = Tensor | np.ndarray

DEPTH_METRIC_KEYS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog", "a1", "a2", "a3")
# Why DepthMetricAccumulator skips an image (keys of its ``skipped``).
SKIP_NO_GROUND_TRUTH = "no valid ground-truth pixel"
SKIP_OUTSIDE_PROTOCOL = "no valid ground-truth pixel inside the eval crop and the depth caps"

# Eval crops of the KITTI Eigen split as fractions of (height, height, width, width): top, bottom, left, right.
# Garg et al. 2016 (used by Monodepth2 and BTS "garg_crop") and Eigen et al. 2014 (BTS "eigen_crop").
KITTI_EVAL_CROPS = {
    "garg": (0.40810811, 0.99189189, 0.03594771, 0.96405229),
    "eigen": (0.3324324, 0.91351351, 0.0359477, 0.96405229),
}

# Per-image sums gathered for every flow batch (columns of the [B, K] table of _flow_error_sums).
_FLOW_SUMS = ("pixels", "epe", "1px", "3px", "5px", "outliers", "matched_pixels", "matched_epe",
              "unmatched_pixels", "unmatched_epe")


def _as_tensor(x: ArrayLike, name: str) -> Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    if isinstance(x, Tensor):
        return x
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def _as_flow_batch(flow: ArrayLike, name: str) -> Tensor:
    """[B, 2, H, W] view of a flow given as [B, 2, H, W] or [2, H, W]."""
    flow = _as_tensor(flow, name)
    if flow.dim() == 3:
        flow = flow.unsqueeze(0)
    if flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(f"{name} must be a flow [B, 2, H, W] or [2, H, W], got shape {tuple(flow.shape)}")
    return flow


def pixel_mask(mask: ArrayLike | None, batch: int, height: int, width: int, name: str = "valid",
               device: torch.device | None = None) -> Tensor:
    """Bool mask [B, H, W] from ``mask`` given as [B, H, W], [B, 1, H, W], [H, W] (if B == 1) or ``None`` (all true).

    Bool masks are used as they are; numeric masks are true where ``mask >= 0.5`` (RAFT's convention for the
    float ``valid`` maps of the datasets).
    """
    if mask is None:
        return torch.ones(batch, height, width, dtype=torch.bool, device=device)
    mask = _as_tensor(mask, name)
    if mask.shape[-2:] != (height, width) or mask.numel() != batch * height * width:
        raise ValueError(
            f"{name} must be a mask [B, H, W] or [B, 1, H, W] with B={batch}, H={height}, W={width}; "
            f"got shape {tuple(mask.shape)}"
        )
    mask = mask.reshape(batch, height, width)
    return mask if mask.dtype == torch.bool else mask >= 0.5


# ----------------------------------------------------------------------------------------------------- flow


def end_point_error(pred: ArrayLike, gt: ArrayLike) -> Tensor:
    """Per-pixel end-point error ``sqrt(du^2 + dv^2)`` in pixels.

    [B, 2, H, W] flows give [B, H, W]; [2, H, W] flows give [H, W].
    """
    single = _as_tensor(pred, "pred").dim() == 3
    pred, gt = _as_flow_batch(pred, "pred"), _as_flow_batch(gt, "gt")
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt flows must have the same shape, got {tuple(pred.shape)} and {tuple(gt.shape)}")
    epe = torch.linalg.vector_norm(pred - gt, dim=1)
    return epe[0] if single else epe


def _flow_error_sums(pred: ArrayLike, gt: ArrayLike, valid: ArrayLike | None, occluded: ArrayLike | None) -> np.ndarray:
    """Per-image counts and sums over valid pixels, float64 [B, len(_FLOW_SUMS)] (one device sync)."""
    pred, gt = _as_flow_batch(pred, "pred"), _as_flow_batch(gt, "gt")
    epe = end_point_error(pred, gt).float()
    batch, height, width = epe.shape
    valid = pixel_mask(valid, batch, height, width, "valid", epe.device)
    epe = torch.where(valid, epe, torch.zeros_like(epe))  # NaN ground truth at invalid pixels must not leak
    magnitude = torch.linalg.vector_norm(gt, dim=1)
    outlier = (epe > 3.0) & (epe > 0.05 * magnitude)

    def count(mask: Tensor) -> Tensor:
        return (mask & valid).sum(dim=(1, 2)).float()

    columns = [count(valid), epe.sum(dim=(1, 2)), count(epe < 1.0), count(epe < 3.0), count(epe < 5.0), count(outlier)]
    if occluded is None:
        columns += [torch.zeros_like(columns[0])] * 4
    else:
        occluded = pixel_mask(occluded, batch, height, width, "occluded", epe.device)
        matched, unmatched = valid & ~occluded, valid & occluded
        columns += [count(matched), (epe * matched).sum(dim=(1, 2)),
                    count(unmatched), (epe * unmatched).sum(dim=(1, 2))]
    return torch.stack(columns, dim=1).detach().cpu().double().numpy()


def flow_metrics(pred: ArrayLike, gt: ArrayLike, valid: ArrayLike | None = None) -> dict[str, float]:
    """EPE, 1px, 3px, 5px and Fl-all of a flow batch, all **pooled** over the valid pixels of all its images.

    Args:
        pred, gt: flows [B, 2, H, W] or [2, H, W] in pixels.
        valid: optional mask [B, H, W] / [B, 1, H, W] (bool, or float where >= 0.5 is valid); ``None`` = all pixels.

    Returns:
        ``epe`` (mean EPE, pixels), ``1px``/``3px``/``5px`` (share of valid pixels with EPE < 1/3/5, in [0, 1]) and
        ``fl_all`` (percent of valid pixels with EPE > 3 px and EPE > 5 % of |gt|, the KITTI outlier rate).

    Raises:
        ValueError: shapes disagree, or no pixel is valid (the metrics would be undefined).
    """
    totals = _flow_error_sums(pred, gt, valid, None).sum(axis=0)
    sums = dict(zip(_FLOW_SUMS, totals))
    if sums["pixels"] == 0:
        raise ValueError("flow_metrics: no valid pixel in the batch (valid mask is all false)")
    return _pooled_flow_metrics(sums)


def _pooled_flow_metrics(sums: dict[str, float]) -> dict[str, float]:
    pixels = sums["pixels"]
    return {
        "epe": float(sums["epe"] / pixels),
        "1px": float(sums["1px"] / pixels),
        "3px": float(sums["3px"] / pixels),
        "5px": float(sums["5px"] / pixels),
        "fl_all": float(100.0 * sums["outliers"] / pixels),
    }


class FlowMetricAccumulator:
    """Accumulates flow errors over a dataset and reports both pooled and per-image averages.

    ``update`` takes one batch at a time (each of its B images counts as one image). ``compute`` returns:

    * ``epe``, ``1px``, ``3px``, ``5px``, ``fl_all``: pooled over all valid pixels of all images (Sintel reports
      ``epe`` this way; KITTI reports ``fl_all`` this way, in percent).
    * ``epe_per_image``, ``fl_all_per_image``: mean over images of each image's mean over its valid pixels (KITTI's
      EPE as RAFT computes it). Images without any valid pixel do not count.
    * ``epe_matched``, ``epe_unmatched`` (only if ``occluded`` masks were passed): pooled EPE over valid pixels that
      are visible in both frames / occluded or out of frame in frame 2 (Sintel's "matched" / "unmatched"); NaN if
      no such pixel was seen.

    Example (Sintel): ``acc.update(flow, flow_gt, occluded=occ)`` per image, then ``acc.compute()["epe"]``.
    Example (KITTI): ``acc.update(flow, flow_gt, valid)``, then ``epe_per_image`` and ``fl_all``.
    """

    def __init__(self) -> None:
        self._totals = np.zeros(len(_FLOW_SUMS))
        self._image_epe_sum = 0.0
        self._image_fl_sum = 0.0
        self._images = 0
        self._has_occlusion = False

    @property
    def num_images(self) -> int:
        """Images seen that had at least one valid pixel."""
        return self._images

    @property
    def num_pixels(self) -> int:
        """Valid pixels seen over all images."""
        return int(self._totals[0])

    def update(self, pred: ArrayLike, gt: ArrayLike, valid: ArrayLike | None = None,
               occluded: ArrayLike | None = None) -> None:
        """Add a batch: flows [B, 2, H, W] or [2, H, W]; ``valid``/``occluded`` masks [B, H, W] or [B, 1, H, W]."""
        sums = _flow_error_sums(pred, gt, valid, occluded)
        self._totals += sums.sum(axis=0)
        pixels = sums[:, 0]
        seen = pixels > 0
        self._images += int(seen.sum())
        self._image_epe_sum += float((sums[seen, 1] / pixels[seen]).sum())
        self._image_fl_sum += float((100.0 * sums[seen, 5] / pixels[seen]).sum())
        self._has_occlusion |= occluded is not None

    def compute(self) -> dict[str, float]:
        """All averages described in the class docstring. Raises ValueError if no valid pixel was seen."""
        sums = dict(zip(_FLOW_SUMS, self._totals))
        if sums["pixels"] == 0:
            raise ValueError("FlowMetricAccumulator.compute: no valid pixel has been accumulated")
        result = _pooled_flow_metrics(sums)
        result["epe_per_image"] = self._image_epe_sum / self._images
        result["fl_all_per_image"] = self._image_fl_sum / self._images
        if self._has_occlusion:
            for part in ("matched", "unmatched"):
                count = sums[f"{part}_pixels"]
                result[f"epe_{part}"] = float(sums[f"{part}_epe"] / count) if count > 0 else math.nan
        return result


# ----------------------------------------------------------------------------------------------------- depth


def disparity_to_depth(disparity: Tensor, max_depth: float = 80.0) -> Tensor:
    """Depth in metres from the depth head's sigmoid disparity in (0, 1), as the official code converts it.

    ``depth = 1 / max(disparity, 1 / max_depth)``: a disparity of 1 is 1 m and anything below ``1 / max_depth``
    (0.0125 for 80 m) is ``max_depth``, so predictions lie in [1, max_depth] metres.
    """
    if max_depth <= 0:
        raise ValueError(f"max_depth must be positive, got {max_depth}")
    return 1.0 / disparity.clamp(min=1.0 / max_depth)


def kitti_eval_crop_mask(height: int, width: int, crop: str = "garg", device: torch.device | None = None) -> Tensor:
    """Bool mask [H, W] of the KITTI Eigen-split evaluation crop (``"garg"`` or ``"eigen"``; ``"none"`` = all true).

    Rows ``int(top * H):int(bottom * H)`` and columns ``int(left * W):int(right * W)`` of :data:`KITTI_EVAL_CROPS`
    are true, as Monodepth2 and BTS compute them (fractions of the ground-truth image size, truncated).
    """
    if height < 1 or width < 1:
        raise ValueError(f"kitti_eval_crop_mask: height and width must be positive, got {height}x{width}")
    mask = torch.zeros(height, width, dtype=torch.bool, device=device)
    if crop == "none":
        return mask.fill_(True)
    if crop not in KITTI_EVAL_CROPS:
        raise ValueError(f"kitti_eval_crop_mask: crop must be one of {sorted(KITTI_EVAL_CROPS)} or 'none', "
                         f"got '{crop}'")
    top, bottom, left, right = KITTI_EVAL_CROPS[crop]
    mask[int(top * height):int(bottom * height), int(left * width):int(right * width)] = True
    return mask


def _median(values: Tensor) -> Tensor:
    """Median of a 1-D tensor, averaging the two middle values for an even count (numpy's median, not torch's)."""
    ordered = values.sort().values
    count = ordered.numel()
    return 0.5 * (ordered[(count - 1) // 2] + ordered[count // 2])


def _as_single_image(x: ArrayLike, name: str) -> Tensor:
    x = _as_tensor(x, name)
    if x.dim() < 2 or x.numel() != x.shape[-2] * x.shape[-1]:
        raise ValueError(f"{name} must be one depth map [H, W], [1, H, W] or [1, 1, H, W], got shape {tuple(x.shape)}")
    return x.reshape(x.shape[-2:])


def _depth_errors(pred: Tensor, gt: Tensor, mask: Tensor, min_depth: float, max_depth: float,
                  median_scaling: bool) -> tuple[dict[str, float], float]:
    """``(metrics, scale)`` of one image over the pixels of ``mask`` (non-empty bool [H, W]); ``scale`` is the
    median-scaling factor applied to the prediction (1.0 without median scaling)."""
    pred, gt = pred.double()[mask], gt.double()[mask]
    scale = 1.0
    if median_scaling:
        pred_median = _median(pred)
        if not bool(pred_median > 0):
            raise ValueError(f"depth_metrics: median scaling needs a positive median prediction, "
                             f"got {float(pred_median)}")
        scale = float(_median(gt) / pred_median)
        pred = pred * scale
    pred = pred.clamp(min=min_depth, max=max_depth)

    ratio = torch.maximum(gt / pred, pred / gt)
    log_diff = torch.log(pred) - torch.log(gt)
    metrics = {
        "abs_rel": (pred - gt).abs().div(gt).mean(),
        "sq_rel": (pred - gt).square().div(gt).mean(),
        "rmse": (pred - gt).square().mean().sqrt(),
        "rmse_log": log_diff.square().mean().sqrt(),
        "log10": (log_diff / math.log(10.0)).abs().mean(),
        "silog": (log_diff.square().mean() - log_diff.mean().square()).clamp(min=0.0).sqrt() * 100.0,
        "a1": (ratio < 1.25).double().mean(),
        "a2": (ratio < 1.25**2).double().mean(),
        "a3": (ratio < 1.25**3).double().mean(),
    }
    return dict(zip(metrics, torch.stack(list(metrics.values())).tolist())), scale


def depth_metrics(pred: ArrayLike, gt: ArrayLike, valid: ArrayLike | None = None, min_depth: float = 1e-3,
                  max_depth: float = 80.0, median_scaling: bool = False) -> dict[str, float]:
    """Depth errors of one image (metres), over pixels with ``min_depth < gt < max_depth`` and ``valid``.

    Following Monodepth2, the prediction is first multiplied by ``median(gt) / median(pred)`` over the valid pixels
    if ``median_scaling`` (for scale-ambiguous models), then clamped to [min_depth, max_depth]. The prediction must
    already be at the ground-truth resolution; apply an eval crop by passing it in ``valid``.
    Computed in float64. Keys: :data:`DEPTH_METRIC_KEYS` (definitions in the module docstring).

    Args:
        pred, gt: one depth map [H, W] (or [1, H, W], [1, 1, H, W]); gt <= 0 marks missing ground truth.
        valid: optional mask of the same size (bool, or float where >= 0.5 is valid).

    Raises:
        ValueError: shapes disagree, no pixel is valid, or (median scaling) the median prediction is not positive.
    """
    pred, gt = _as_single_image(pred, "pred"), _as_single_image(gt, "gt")
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt depth must have the same size, got {tuple(pred.shape)} and {tuple(gt.shape)}")
    mask = (gt > min_depth) & (gt < max_depth)
    if valid is not None:
        mask &= pixel_mask(valid, 1, *gt.shape, device=gt.device)[0]
    if not bool(mask.any()):
        raise ValueError("depth_metrics: no valid ground-truth pixel (check valid mask, min_depth and max_depth)")
    return _depth_errors(pred, gt, mask, min_depth, max_depth, median_scaling)[0]


class DepthMetricAccumulator:
    """Averages :func:`depth_metrics` over images (every image weighs the same, as Monodepth2 and BTS report).

    Args:
        min_depth, max_depth, median_scaling: passed to :func:`depth_metrics` (the depth caps: ground truth outside
            (min_depth, max_depth) does not count, predictions are clamped to [min_depth, max_depth]).
        crop: ``"garg"``, ``"eigen"`` (KITTI Eigen split, see :func:`kitti_eval_crop_mask`), ``"none"`` or ``None``.

    An image without any pixel to evaluate is skipped, not averaged (its metrics would be undefined): it is logged
    and counted under its reason in :attr:`skipped` (:data:`SKIP_NO_GROUND_TRUTH` when the ground truth has no
    valid pixel at all, :data:`SKIP_OUTSIDE_PROTOCOL` when none is left inside the crop and the caps). A caller
    that drops frames before the metrics (e.g. split-file lines without ground truth) records them with
    :meth:`skip`, so :meth:`summary` accounts for every frame.
    """

    def __init__(self, min_depth: float = 1e-3, max_depth: float = 80.0, median_scaling: bool = False,
                 crop: str | None = None) -> None:
        if crop is not None and crop != "none" and crop not in KITTI_EVAL_CROPS:
            raise ValueError(f"DepthMetricAccumulator: crop must be garg, eigen, none or None, got '{crop}'")
        if not 0 <= min_depth < max_depth:
            raise ValueError(f"DepthMetricAccumulator: need 0 <= min_depth < max_depth, got {min_depth}, {max_depth}")
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)
        self.median_scaling = bool(median_scaling)
        self.crop = None if crop == "none" else crop
        self._sums = dict.fromkeys(DEPTH_METRIC_KEYS, 0.0)
        self._images = 0
        self._pixels = 0
        self._seen = 0
        self._scales: list[float] = []
        self.skipped: dict[str, list[str]] = {}

    @classmethod
    def from_config(cls, cfg, dataset: str, crop: str | None = None,
                    median_scaling: bool | None = None) -> "DepthMetricAccumulator":
        """The evaluation protocol of ``cfg.depth`` for the validation set ``dataset``.

        Caps ``cfg.depth.min_depth`` .. ``cfg.depth.max_depth``; median scaling ``cfg.depth.median_scaling``; the
        crop ``cfg.depth.eval_crop`` applies to the KITTI sets (names starting with ``kitti``: the crop fractions
        describe KITTI frames) and no crop to the others. ``crop`` / ``median_scaling`` given here win over both.
        """
        if crop is None:
            crop = cfg.depth.eval_crop if dataset.startswith("kitti") else "none"
        if median_scaling is None:
            median_scaling = cfg.depth.median_scaling
        return cls(cfg.depth.min_depth, cfg.depth.max_depth, median_scaling, crop)

    @property
    def protocol(self) -> dict[str, object]:
        """The options that shape the numbers: ``crop``, ``min_depth``, ``max_depth``, ``median_scaling``."""
        return {"crop": self.crop or "none", "min_depth": self.min_depth, "max_depth": self.max_depth,
                "median_scaling": self.median_scaling}

    @property
    def num_images(self) -> int:
        """Images that had valid ground truth (the ones averaged)."""
        return self._images

    @property
    def num_pixels(self) -> int:
        """Ground-truth pixels evaluated over all averaged images (inside the crop and the caps)."""
        return self._pixels

    @property
    def num_skipped(self) -> int:
        """Images skipped, for every reason (see :attr:`skipped`)."""
        return sum(len(names) for names in self.skipped.values())

    @property
    def scale_ratios(self) -> list[float]:
        """The median-scaling factor ``median(gt) / median(pred)`` of every averaged image (empty without)."""
        return list(self._scales)

    def skip(self, reason: str, names: Sequence[str]) -> None:
        """Count frames dropped before they reached :meth:`update`, under ``reason``."""
        if names:
            self.skipped.setdefault(reason, []).extend(names)

    def update(self, pred: ArrayLike, gt: ArrayLike, valid: ArrayLike | None = None,
               names: Sequence[str] | None = None) -> None:
        """Add depth maps [..., H, W] (e.g. [B, 1, H, W], [B, H, W] or [H, W]); every leading index is one image.

        ``names`` (one per image) identify skipped images in :attr:`skipped`; default ``"image <n>"`` with n the
        running count of images passed in.
        """
        pred, gt = _as_tensor(pred, "pred"), _as_tensor(gt, "gt")
        if pred.shape != gt.shape or pred.dim() < 2:
            raise ValueError(f"pred and gt depth must have the same shape [..., H, W], got {tuple(pred.shape)} "
                             f"and {tuple(gt.shape)}")
        height, width = gt.shape[-2:]
        images = gt.numel() // (height * width)
        if names is None:
            names = [f"image {self._seen + index}" for index in range(images)]
        if len(names) != images:
            raise ValueError(f"DepthMetricAccumulator.update: {len(names)} names for {images} images")
        self._seen += images
        gt = gt.reshape(images, height, width)
        has_ground_truth = pixel_mask(valid, images, height, width, "valid", gt.device) & (gt > 0) & gt.isfinite()
        masks = has_ground_truth & (gt > self.min_depth) & (gt < self.max_depth)
        if self.crop is not None:
            masks &= kitti_eval_crop_mask(height, width, self.crop, gt.device)
        counts = masks.sum(dim=(1, 2)).tolist()
        any_ground_truth = has_ground_truth.any(dim=2).any(dim=1).tolist()
        for image_pred, image_gt, mask, count, name, has_any in zip(pred.reshape(images, height, width), gt, masks,
                                                                    counts, names, any_ground_truth):
            if count == 0:
                reason = SKIP_OUTSIDE_PROTOCOL if has_any else SKIP_NO_GROUND_TRUTH
                logger.warning(f"depth evaluation: skipping {name}: {reason}")
                self.skip(reason, [name])
                continue
            metrics, scale = _depth_errors(image_pred, image_gt, mask, self.min_depth, self.max_depth,
                                           self.median_scaling)
            for key in DEPTH_METRIC_KEYS:
                self._sums[key] += metrics[key]
            self._images += 1
            self._pixels += int(count)
            if self.median_scaling:
                self._scales.append(scale)

    def compute(self) -> dict[str, float]:
        """Mean of every metric over the images seen. Raises ValueError if no image had valid ground truth."""
        if self._images == 0:
            raise ValueError("DepthMetricAccumulator.compute: no image with valid ground truth has been accumulated")
        return {key: total / self._images for key, total in self._sums.items()}

    def summary(self) -> dict[str, object]:
        """Everything an evaluation report needs: the metrics of :meth:`compute` (absent if no image could be
        evaluated), ``num_images``, ``num_pixels``, ``num_skipped``, ``skipped`` (reason -> count),
        ``skipped_images`` (reason -> names) and, with median scaling, ``scale_ratio_median`` and
        ``scale_ratio_std`` (standard deviation of the ratios divided by their median, as Monodepth2 prints them)."""
        result: dict[str, object] = self.compute() if self._images else {}
        result.update(num_images=self._images, num_pixels=self._pixels, num_skipped=self.num_skipped,
                      skipped={reason: len(names) for reason, names in self.skipped.items()},
                      skipped_images={reason: list(names) for reason, names in self.skipped.items()})
        if self._scales:
            median = float(np.median(self._scales))
            result.update(scale_ratio_median=median, scale_ratio_std=float(np.std(np.array(self._scales) / median)))
        return result
