"""Depth decoder of ProtoFormer (official ``depth_header``): monocular sigmoid disparity from the context features.

It reads only the context encoder of frame 1 (no cost volume, no frame 2) and runs 4 hard-coded refinement
iterations at 1/8 scale (official ``LatentCostFormer/decoder.py`` ``depth_head`` and ``gru_dep.py``). A hidden
state ``c`` evolves through a separable ConvGRU fed in turn by the 1/8 features, ``c`` itself, the 1/4 features
and ``c`` again:

    it 0: c = tanh(conv3x3(feat8))
    it 1: c = GRU(c, tanh(conv3x1(tanh(conv1x3(c)))))
    it 2: c = GRU(c, tanh(conv3x3 stride 2(feat4)))
    it 3: c = GRU(c, tanh(conv3x1(tanh(conv1x3(c)))))        (own weights)

Each iteration encodes [c, disparity logit] (``net``; the previous net is not reused), adds a predicted delta to
the disparity logit and convex-upsamples ``sigmoid(logit)`` x8 (no value scaling). All 3 x 3 and 7 x 7
convolutions outside the GRU and the separable inputs use reflect padding; activations are LeakyReLU(0.01).

Widths follow the spec: with ``H = spec.hidden_dim`` (128 official): state H, motion encoder 5H/4 -> H and
H/2 -> H/4, net 3H/2 (192), disparity head 2H, mask head 81H/32 (324) -> 576.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from core.model.layers import (
    CONVEX_NEIGHBOURS,
    MASK_SCALE,
    UPSAMPLE_FACTOR,
    SepConvGRU,
    convex_upsample,
    sep_conv_gru_key_map,
)
from core.model.variants import ProtoFormerSpec

DEPTH_ITERS = 4  # hard-coded in the official depth head

# (regex on the official key relative to ``depth_header.``, our key relative to DepthDecoder), applied in order.
OFFICIAL_KEY_MAP: list[tuple[str, str]] = [
    (r"convX31\.1\.(weight|bias)", r"init_from_feat8.0.\1"),
    (r"convX32\.(0|2)\.(weight|bias)", r"input_from_state1.\1.\2"),
    (r"convX21\.1\.(weight|bias)", r"input_from_feat4.0.\1"),
    (r"convX22\.(0|2)\.(weight|bias)", r"input_from_state3.\1.\2"),
    *sep_conv_gru_key_map(r"gruc", "gru"),
    (r"update_block\.encoder\.convc([12])\.conv\.conv\.(weight|bias)", r"motion_encoder.state_conv\1.0.\2"),
    (r"update_block\.encoder\.convf([12])\.1\.(weight|bias)", r"motion_encoder.disp_conv\1.0.\2"),
    (r"update_block\.encoder\.conv\.conv\.conv\.(weight|bias)", r"motion_encoder.fuse_conv.0.\1"),
    (r"update_block\.depth_head\.covd1\.1\.(weight|bias)", r"disp_head.0.\1"),
    (r"update_block\.depth_head\.covd2\.1\.(weight|bias)", r"disp_head.2.\1"),
    (r"update_block\.mask\.1\.(weight|bias)", r"mask_head.0.\1"),
    (r"update_block\.mask\.3\.(weight|bias)", r"mask_head.2.\1"),
]
# The official depth head is built as a copy of the flow head and keeps its flow-only parts, which its forward
# never calls: the cost-query encoder (``flow_token_encoder``), the context projection (``proj``), the memory
# decoder (``decoder_layer``), the GMA attention (``att``, with its position tables) and the GMA aggregator of the
# update block. Depth reads neither the cost memory nor any attention, so none of these is built here.
OFFICIAL_UNUSED: list[str] = [
    r"flow_token_encoder\..*",
    r"proj\..*",
    r"decoder_layer\..*",
    r"att\..*",
    r"update_block\.aggregator\..*",
]


def reflect_conv(in_dim: int, out_dim: int, kernel_size: int, stride: int = 1) -> nn.Conv2d:
    """A k x k convolution with reflect padding k // 2 (the official ``ReflectionPad2d`` + unpadded conv)."""
    return nn.Conv2d(in_dim, out_dim, kernel_size, stride=stride, padding=kernel_size // 2, padding_mode="reflect")


def conv_block(in_dim: int, out_dim: int, kernel_size: int = 3) -> nn.Sequential:
    """Reflect-padded convolution + LeakyReLU(0.01) (official ``ConvBlock``)."""
    return nn.Sequential(reflect_conv(in_dim, out_dim, kernel_size), nn.LeakyReLU(0.01))


def separable_tanh_input(dim: int) -> nn.Sequential:
    """GRU input made from the state itself: tanh(conv 3x1(tanh(conv 1x3(c)))), zero padding."""
    return nn.Sequential(
        nn.Conv2d(dim, dim, (1, 3), padding=(0, 1)), nn.Tanh(), nn.Conv2d(dim, dim, (3, 1), padding=(1, 0)), nn.Tanh()
    )


class DepthMotionEncoder(nn.Module):
    """Encodes the recurrent state and the current disparity logit into ``net`` [B, net_dim, h, w].

    forward(state [B, H, h, w], disp_logit [B, 1, h, w]); the last channel of ``net`` is ``disp_logit`` itself.
    """

    def __init__(self, state_dim: int, net_dim: int):
        super().__init__()
        state_width, disp_width = 5 * state_dim // 4, state_dim // 4
        self.state_conv1 = conv_block(state_dim, state_width)
        self.state_conv2 = conv_block(state_width, state_dim)
        self.disp_conv1 = conv_block(1, state_dim // 2, kernel_size=7)
        self.disp_conv2 = conv_block(state_dim // 2, disp_width)
        self.fuse_conv = conv_block(state_dim + disp_width, net_dim - 1)

    def forward(self, state: Tensor, disp_logit: Tensor) -> Tensor:
        state_features = self.state_conv2(self.state_conv1(state))
        disp_features = self.disp_conv2(self.disp_conv1(disp_logit))
        net = self.fuse_conv(torch.cat([state_features, disp_features], dim=1))
        return torch.cat([net, disp_logit], dim=1)


class DepthDecoder(nn.Module):
    """Recurrent monocular disparity head (official ``depth_head``).

    Args:
        spec: network sizes (``embed_dims`` = context widths C1, C2 and ``hidden_dim``).
    """

    def __init__(self, spec: ProtoFormerSpec):
        super().__init__()
        feat4_dim, feat8_dim = spec.embed_dims
        hidden = spec.hidden_dim
        net_dim = 3 * hidden // 2
        self.feat_dims = (feat4_dim, feat8_dim)
        self.init_from_feat8 = nn.Sequential(reflect_conv(feat8_dim, hidden, 3), nn.Tanh())
        self.input_from_state1 = separable_tanh_input(hidden)
        self.input_from_feat4 = nn.Sequential(reflect_conv(feat4_dim, hidden, 3, stride=2), nn.Tanh())
        self.input_from_state3 = separable_tanh_input(hidden)
        self.gru = SepConvGRU(hidden, input_dim=hidden, kernel_size=3)
        self.motion_encoder = DepthMotionEncoder(hidden, net_dim)
        self.disp_head = nn.Sequential(
            reflect_conv(net_dim, 2 * hidden, 3), nn.LeakyReLU(0.01), reflect_conv(2 * hidden, 1, 3)
        )
        self.mask_head = nn.Sequential(
            reflect_conv(net_dim, 81 * hidden // 32, 3), nn.LeakyReLU(0.01),
            nn.Conv2d(81 * hidden // 32, CONVEX_NEIGHBOURS * UPSAMPLE_FACTOR**2, 1),
        )

    def forward(self, context: list[Tensor] | tuple[Tensor, Tensor], return_all: bool = True) -> list[Tensor]:
        """Predict the disparity of frame 1.

        Args:
            context: ``[feat4 [B, C1, 2h, 2w], feat8 [B, C2, h, w]]`` from the context encoder (h, w >= 4).
            return_all: return all 4 iterations (training); False returns only the last one.

        Returns:
            list of [B, 1, 8h, 8w] sigmoid disparities in (0, 1) (4 entries, or 1 if ``return_all`` is False).
        """
        feat4, feat8 = self._check_inputs(context)
        logit_dtype = torch.promote_types(feat8.dtype, torch.float32)  # a running sum: keep it >= fp32 under autocast
        disp_logit = torch.zeros(feat8.shape[0], 1, *feat8.shape[-2:], device=feat8.device, dtype=logit_dtype)
        disparities = []
        for step in range(DEPTH_ITERS):
            if step == 0:
                state = self.init_from_feat8(feat8)
            elif step == 1:
                state = self.gru(state, self.input_from_state1(state))
            elif step == 2:
                state = self.gru(state, self.input_from_feat4(feat4))
            else:
                state = self.gru(state, self.input_from_state3(state))
            net = self.motion_encoder(state, disp_logit)
            disp_logit = disp_logit + self.disp_head(net)
            if return_all or step == DEPTH_ITERS - 1:
                mask = MASK_SCALE * self.mask_head(net)
                disparities.append(convex_upsample(torch.sigmoid(disp_logit), mask, UPSAMPLE_FACTOR))
        return disparities

    def _check_inputs(self, context: list[Tensor] | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        if not isinstance(context, (list, tuple)) or len(context) != 2:
            raise ValueError("DepthDecoder: context must be [feat4, feat8] (the two context-encoder maps)")
        feat4, feat8 = context
        (feat4_dim, feat8_dim), shapes = self.feat_dims, (list(feat4.shape), list(feat8.shape))
        if feat4.dim() != 4 or feat8.dim() != 4 or feat4.shape[1] != feat4_dim or feat8.shape[1] != feat8_dim:
            expected = f"[[B, {feat4_dim}, H/4, W/4], [B, {feat8_dim}, H/8, W/8]]"
            raise ValueError(f"DepthDecoder: context must be {expected}, got {shapes}")
        height, width = feat8.shape[-2:]
        if feat4.shape[0] != feat8.shape[0] or tuple(feat4.shape[-2:]) != (2 * height, 2 * width):
            raise ValueError(f"DepthDecoder: feat4 must have the batch of feat8 and twice its size, got {shapes}")
        if height < 4 or width < 4:
            raise ValueError(
                f"DepthDecoder: the 1/8-scale map must be at least 4 x 4 (reflect padding), got {height} x {width}"
            )
        return feat4, feat8
