"""ProtoFormer: the whole network (paper Fig. 2), one readable forward pass.

    frames --ProtoFormerEncoder (feature)--> f1, f2 (1/8) --CostMemoryEncoder--> cost memory + cost maps
    frame 1 --ProtoFormerEncoder (context)--> [c4 (1/4), c8 (1/8)]
    flow:  FlowDecoder(cost memory, cost maps, c8)  -> flow, refined ``iters`` times, convex-upsampled to full size
    depth: DepthDecoder([c4, c8])                   -> sigmoid disparity (monocular: frame 1 only)

Differences from the official implementation, all deliberate (README, "Deviations"): the input is padded to a
multiple of 8 and the output cropped back (the official code silently floors the size); a batch of N images gives
the same result as N single-image runs (the official vertical attention mixes contexts across the batch); the
depth path runs neither the feature encoder nor the cost memory, whose result it never uses; both frames share
one batched feature-encoder call.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from core.model.cost_memory import CostMemoryEncoder
from core.model.depth_decoder import DepthDecoder
from core.model.encoder import ProtoFormerEncoder
from core.model.flow_decoder import FlowDecoder
from core.model.variants import ProtoFormerSpec
from core.utils.padder import InputPadder

MODEL_TYPES = ("flow", "depth", "joint")


class ProtoFormer(nn.Module):
    """Prototypical Transformer for optical flow and scene depth.

    Args:
        spec: the sizes (an entry of :data:`core.model.VARIANTS`).
        model_type: ``"flow"``, ``"depth"`` or ``"joint"``; only the needed heads are built.
        iters: default number of flow refinement iterations.
        dropout: dropout of the cost-memory transformer (training only).
    """

    def __init__(self, spec: ProtoFormerSpec, model_type: str = "flow", iters: int = 12, dropout: float = 0.0):
        super().__init__()
        if model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}, got '{model_type}'")
        self.spec = spec
        self.model_type = model_type
        self.iters = iters
        self.context_encoder = ProtoFormerEncoder(spec)
        if self.predicts_flow:
            self.feature_encoder = ProtoFormerEncoder(spec)
            self.cost_memory = CostMemoryEncoder(spec, dropout=dropout)
            self.flow_decoder = FlowDecoder(spec, dropout=dropout)
        if self.predicts_depth:
            self.depth_decoder = DepthDecoder(spec)

    @property
    def predicts_flow(self) -> bool:
        return self.model_type in ("flow", "joint")

    @property
    def predicts_depth(self) -> bool:
        return self.model_type in ("depth", "joint")

    @property
    def min_size(self) -> int:
        """Smallest padded side: the depth head needs 4 cells at 1/8 scale, the flow lookup needs 2."""
        return 32 if self.predicts_depth else 16

    def forward(
        self,
        image1: Tensor,
        image2: Tensor | None = None,
        iters: int | None = None,
        flow_init: Tensor | None = None,
        return_all: bool | None = None,
    ) -> dict[str, Tensor | list[Tensor]]:
        """Estimate flow from ``image1`` to ``image2`` and/or the depth of ``image1``.

        Args:
            image1, image2: [B, 3, H, W] RGB in 0..255 (any H, W; padded internally). ``image2`` is needed by a
                flow model; without it a joint model predicts the depth of ``image1`` only.
            iters: flow refinement iterations (default: ``self.iters``).
            flow_init: [B, 2, ceil(H/8), ceil(W/8)] warm start at 1/8 scale, in 1/8-scale pixels (e.g. the
                ``flow_low`` of the previous pair, forward-projected).
            return_all: return every iteration's prediction (default: in training mode).

        Returns:
            dict with, for flow, ``"flow"``: list of [B, 2, H, W] flows in pixels (all iterations, or the last) and
            ``"flow_low"``: [B, 2, H/8, W/8] (padded size) for warm starts; for depth, ``"disparity"``: list of
            [B, 1, H, W] sigmoid disparities in (0, 1) (depth = 1 / max(disparity, 1 / max_depth)).
        """
        return_all = self.training if return_all is None else return_all
        self._check_inputs(image1, image2, flow_init)
        padder = self._padder(image1)
        image1 = self._normalise(padder, image1)
        context = self.context_encoder(image1)
        if not self.predicts_depth:
            context = context[-1:]  # the 1/4-scale map is for the depth head only: do not hold it during the flow

        out: dict[str, Tensor | list[Tensor]] = {}
        if self.predicts_flow and image2 is not None:
            cost_memory, cost_maps = self._cost_memory(image1, self._normalise(padder, image2), context[-1])
            flows, flow_low = self.flow_decoder(
                cost_memory, cost_maps, context[-1], iters=iters or self.iters, flow_init=flow_init,
                return_all=return_all,
            )
            out["flow"] = [padder.unpad(f) for f in flows]
            out["flow_low"] = flow_low
        if self.predicts_depth:
            out["disparity"] = [padder.unpad(d) for d in self.depth_decoder(context, return_all=return_all)]
        return out

    def _cost_memory(self, image1: Tensor, image2: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Both frames' 1/8 features (one batched feature-encoder call) -> cost memory and cost maps. A method of its
        own, so that the features are freed before the decoder runs."""
        feat1, feat2 = self.feature_encoder(torch.cat([image1, image2]))[-1].chunk(2)
        return self.cost_memory(feat1, feat2, context)

    def _padder(self, image: Tensor) -> InputPadder:
        """Centred replicate padding to a multiple of 8 (and at least ``min_size``), as the official callers pad."""
        return InputPadder(image.shape, mode="sintel", divisor=8, min_size=self.min_size)

    @staticmethod
    def _normalise(padder: InputPadder, image: Tensor) -> Tensor:
        """0..255 -> [-1, 1] (the official normalisation), then padding."""
        image = 2.0 * (image / 255.0) - 1.0
        return padder.pad(image)[0] if any(padder.padding) else image

    def _check_inputs(self, image1: Tensor, image2: Tensor | None, flow_init: Tensor | None) -> None:
        images = {"image1": image1} if image2 is None else {"image1": image1, "image2": image2}
        if self.model_type == "flow" and image2 is None:
            raise ValueError("a 'flow' model needs image2")
        for name, image in images.items():
            if not isinstance(image, Tensor) or image.dim() != 4 or image.shape[1] != 3:
                shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
                raise ValueError(f"{name} must be a [B, 3, H, W] tensor of RGB values in 0..255, got {shape}")
            if not image.is_floating_point():
                raise ValueError(f"{name} must be a floating-point tensor (0..255), got {image.dtype}")
            lo, hi = torch.aminmax(image.detach())
            if lo < -0.5 or hi > 255.5:
                raise ValueError(
                    f"{name} values must lie in 0..255 (RGB), got min {lo.item():.3g} and max {hi.item():.3g}; "
                    "do not normalise the images before calling the model"
                )
        if image2 is not None and image2.shape != image1.shape:
            raise ValueError(f"image1 and image2 must have the same shape, got {tuple(image1.shape)} and {tuple(image2.shape)}")
        if flow_init is not None:
            padded_height, padded_width = self._padder(image1).padded_shape
            expected = (image1.shape[0], 2, padded_height // 8, padded_width // 8)
            if tuple(flow_init.shape) != expected:
                raise ValueError(f"flow_init must be {list(expected)} (1/8 of the padded input), got {list(flow_init.shape)}")
