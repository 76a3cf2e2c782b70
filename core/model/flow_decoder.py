"""Flow decoder of ProtoFormer (official ``flow_header``): FlowFormer's memory decoder with a GMA update block.

Every iteration (official ``LatentCostFormer/decoder.py``, ``gru_flow.py``, ``gma.py``):

1. local cost: sample each source pixel's cost map on a (2r+1)^2 window around its current target ``coords1``;
2. global cost: a query made from that window cross-attends the pixel's latent cost-memory tokens;
3. motion encoder on [global cost, local cost, current flow], GMA aggregation of the motion features;
4. SepConvGRU update of the hidden state, flow head (delta flow), mask head, convex 8x upsampling.

Widths follow the spec: with ``H = spec.hidden_dim`` (128 official) the context projection is 2H -> [net H, inp H],
the motion encoder 2H, 3H/2, H, H/2 -> H, the GRU input 3H, the flow and mask heads 2H wide.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.model.layers import (
    CONVEX_NEIGHBOURS,
    MASK_SCALE,
    UPSAMPLE_FACTOR,
    SepConvGRU,
    convex_upsample,
    sep_conv_gru_key_map,
)
from core.model.position import linear_sine_code
from core.model.variants import ProtoFormerSpec
from core.utils.geometry import bilinear_sampler, coords_grid

# (regex on the official key relative to ``flow_header.``, our key relative to FlowDecoder), applied in order.
OFFICIAL_KEY_MAP: list[tuple[str, str]] = [
    (r"proj\.(weight|bias)", r"context_proj.\1"),
    (r"att\.to_qk\.weight", r"gma_attention.to_qk.weight"),
    (r"flow_token_encoder\.(0|2)\.(weight|bias)", r"cost_query.\1.\2"),
    (r"decoder_layer\.cross_attend\.norm1\.(weight|bias)", r"memory_decoder.query_norm.\1"),
    (r"decoder_layer\.cross_attend\.norm2\.(weight|bias)", r"memory_decoder.ffn_norm.\1"),
    (r"decoder_layer\.cross_attend\.([qkv])\.(weight|bias)", r"memory_decoder.to_\1.\2"),
    (r"decoder_layer\.cross_attend\.proj\.(weight|bias)", r"memory_decoder.out_proj.\1"),
    (r"decoder_layer\.cross_attend\.ffn\.(0|3)\.(weight|bias)", r"memory_decoder.ffn.\1.\2"),
    (r"update_block\.encoder\.convc([12])\.(weight|bias)", r"motion_encoder.cost_conv\1.\2"),
    (r"update_block\.encoder\.convf([12])\.(weight|bias)", r"motion_encoder.flow_conv\1.\2"),
    (r"update_block\.encoder\.conv\.(weight|bias)", r"motion_encoder.fuse_conv.\1"),
    (r"update_block\.aggregator\.gamma", r"motion_aggregator.gamma"),
    (r"update_block\.aggregator\.to_v\.weight", r"motion_aggregator.to_v.weight"),
    *sep_conv_gru_key_map(r"update_block\.gru", "gru"),
    (r"update_block\.flow_head\.conv1\.(weight|bias)", r"flow_head.0.\1"),
    (r"update_block\.flow_head\.conv2\.(weight|bias)", r"flow_head.2.\1"),
    (r"update_block\.mask\.(0|2)\.(weight|bias)", r"mask_head.\1.\2"),
]
# The GMA relative-position embedding is built by the official Attention module but its forward never calls it
# (GMA's "position-only" variant is not used), so its tables and index buffer are dead weights.
OFFICIAL_UNUSED: list[str] = [r"att\.pos_emb\.(rel_height\.weight|rel_width\.weight|rel_ind)"]

# Query rows of the GMA attention computed per chunk (bounds the transient logits to GMA_ROW_CHUNK x N).
GMA_ROW_CHUNK = 512


class GMAAttention(nn.Module):
    """GMA's global attention among context pixels (Jiang et al. 2021), single head, no position term.

    forward(inp [B, dim, h, w]) -> attention [B, h*w, h*w] (rows: query pixels, softmax over key pixels).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.scale = dim**-0.5
        self.to_qk = nn.Conv2d(dim, 2 * dim, 1, bias=False)

    def forward(self, inp: Tensor) -> Tensor:
        q, k = self.to_qk(inp).flatten(2).chunk(2, dim=1)  # [B, dim, h*w] each
        queries = (self.scale * q).transpose(1, 2)  # [B, h*w, dim]
        # Row chunks: the logits of all pairs never exist next to their softmax (a second N x N buffer).
        count = queries.shape[1]
        attention = queries.new_empty(queries.shape[0], count, count)
        for start in range(0, count, GMA_ROW_CHUNK):
            rows = slice(start, start + GMA_ROW_CHUNK)
            attention[:, rows] = torch.bmm(queries[:, rows], k).softmax(dim=-1)
        return attention


class GlobalMotionAggregator(nn.Module):
    """GMA aggregation: ``motion + gamma * attention @ to_v(motion)`` (gamma is learned, initialised at 0).

    forward(attention [B, N, N], motion [B, dim, h, w] with N = h*w) -> [B, dim, h, w].
    """

    def __init__(self, dim: int):
        super().__init__()
        self.to_v = nn.Conv2d(dim, dim, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, attention: Tensor, motion: Tensor) -> Tensor:
        value = self.to_v(motion).flatten(2).transpose(1, 2)  # [B, N, dim]
        aggregated = torch.bmm(attention, value).transpose(1, 2).reshape(motion.shape)
        return motion + self.gamma * aggregated


class CostMemoryDecoderLayer(nn.Module):
    """FlowFormer's memory decoder: each pixel's cost query cross-attends its own latent cost tokens.

    The query of pixel p is position-coded with the linear-sine code of ``coords1(p)`` (where p currently maps
    to in frame 2), so the attention reads the cost memory "around" the current flow estimate.

    Args:
        query_dim: width Q of the query tokens (= width of q, k, v).
        memory_dim: width D of the cost-memory tokens.
        heads: attention heads (Q divisible by heads).
        dropout: dropout inside the FFN (training only).
    """

    def __init__(self, query_dim: int, memory_dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if query_dim % heads or query_dim % 4:
            raise ValueError(f"query_dim ({query_dim}) must be divisible by decoder heads ({heads}) and by 4")
        self.query_dim = query_dim
        self.heads = heads
        self.query_norm = nn.LayerNorm(query_dim)
        self.ffn_norm = nn.LayerNorm(query_dim)
        self.to_q = nn.Linear(query_dim, query_dim)
        self.to_k = nn.Linear(memory_dim, query_dim)
        self.to_v = nn.Linear(memory_dim, query_dim)
        self.out_proj = nn.Linear(2 * query_dim, query_dim)
        self.ffn = nn.Sequential(
            nn.Linear(query_dim, query_dim), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(query_dim, query_dim), nn.Dropout(dropout),
        )

    def memory_key_value(self, cost_memory: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of the cost memory [N, T, D] -> two [N, heads, T, Q/heads] (computed once per forward)."""
        tokens, length, _ = cost_memory.shape
        key = self.to_k(cost_memory).view(tokens, length, self.heads, -1).transpose(1, 2)
        value = self.to_v(cost_memory).view(tokens, length, self.heads, -1).transpose(1, 2)
        return key, value

    def forward(self, query: Tensor, coords: Tensor, key: Tensor, value: Tensor) -> Tensor:
        """query [B, Q, h, w], coords [B, 2, h, w] (x, y at 1/8 scale), key/value from :meth:`memory_key_value`
        -> global cost features [B, Q, h, w]."""
        batch, _, height, width = query.shape
        tokens = query.permute(0, 2, 3, 1).reshape(-1, 1, self.query_dim)  # [N, 1, Q]
        position = linear_sine_code(coords.permute(0, 2, 3, 1).reshape(-1, 1, 2), self.query_dim)
        q = self.to_q(self.query_norm(tokens) + position)
        q = q.view(-1, 1, self.heads, self.query_dim // self.heads).transpose(1, 2)  # [N, heads, 1, Q/heads]
        attended = F.scaled_dot_product_attention(q, key, value).transpose(1, 2).reshape(tokens.shape)
        out = tokens + self.out_proj(torch.cat([attended, tokens], dim=-1))
        out = out + self.ffn(self.ffn_norm(out))
        return out.view(batch, height, width, self.query_dim).permute(0, 3, 1, 2)


class MotionEncoder(nn.Module):
    """RAFT's motion encoder: fuses the cost features with the current flow -> [B, motion_dim, h, w].

    The last 2 channels of the output are the flow itself. forward(cost [B, cost_dim, h, w], flow [B, 2, h, w]).
    """

    def __init__(self, cost_dim: int, motion_dim: int):
        super().__init__()
        self.cost_conv1 = nn.Conv2d(cost_dim, 2 * motion_dim, 1)
        self.cost_conv2 = nn.Conv2d(2 * motion_dim, 3 * motion_dim // 2, 3, padding=1)
        self.flow_conv1 = nn.Conv2d(2, motion_dim, 7, padding=3)
        self.flow_conv2 = nn.Conv2d(motion_dim, motion_dim // 2, 3, padding=1)
        self.fuse_conv = nn.Conv2d(3 * motion_dim // 2 + motion_dim // 2, motion_dim - 2, 3, padding=1)

    def forward(self, cost: Tensor, flow: Tensor) -> Tensor:
        cost = F.relu(self.cost_conv2(F.relu(self.cost_conv1(cost))))
        flow_features = F.relu(self.flow_conv2(F.relu(self.flow_conv1(flow))))
        motion = F.relu(self.fuse_conv(torch.cat([cost, flow_features], dim=1)))
        return torch.cat([motion, flow], dim=1)


def cost_window_offsets(radius: int, device=None, dtype=torch.float32) -> Tensor:
    """Offsets [(2r+1)^2, 2] (dx, dy) of the local cost lookup. dx varies slowest (RAFT's channel order)."""
    steps = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    dx, dy = torch.meshgrid(steps, steps, indexing="ij")
    return torch.stack([dx, dy], dim=-1).reshape(-1, 2)


def sample_cost_window(cost_maps: Tensor, coords: Tensor, offsets: Tensor) -> Tensor:
    """Bilinear lookup of each source pixel's cost map around its target position (zeros outside).

    Args:
        cost_maps: [B*h*w, 1, h2, w2] one cost map per source pixel (raster order).
        coords: [B, 2, h, w] target positions (x, y) in cost-map pixels.
        offsets: [K, 2] from :func:`cost_window_offsets`.

    Returns:
        [B, K, h, w]: channel k is the cost at ``coords + offsets[k]``.
    """
    batch, _, height, width = coords.shape
    points = coords.permute(0, 2, 3, 1).reshape(-1, 1, 1, 2) + offsets.view(1, 1, -1, 2)  # [N, 1, K, 2]
    samples = bilinear_sampler(cost_maps.to(points.dtype), points)  # [N, 1, 1, K]
    return samples.view(batch, height, width, -1).permute(0, 3, 1, 2)


class FlowDecoder(nn.Module):
    """Recurrent flow refinement from the cost memory (official ``flow_head`` with GMA).

    Args:
        spec: network sizes (``embed_dims[1]`` context width, ``hidden_dim``, ``query_dim``, ``decoder_heads``,
            ``corr_radius``, ``cost_latent_dim``).
        dropout: dropout in the memory decoder's FFN (training only; official ``dropout``, 0 in most configs).
    """

    def __init__(self, spec: ProtoFormerSpec, dropout: float = 0.0):
        super().__init__()
        context_dim, hidden = spec.embed_dims[1], spec.hidden_dim
        if context_dim != 2 * hidden:
            raise ValueError(f"context width {context_dim} must be 2 * hidden_dim ({hidden}): it splits into net, inp")
        self.spec = spec
        self.hidden_dim = hidden
        window = (2 * spec.corr_radius + 1) ** 2
        self.context_proj = nn.Conv2d(context_dim, context_dim, 1)
        self.gma_attention = GMAAttention(hidden)
        self.cost_query = nn.Sequential(
            nn.Conv2d(window, spec.query_dim, 1), nn.GELU(), nn.Conv2d(spec.query_dim, spec.query_dim, 1)
        )
        self.memory_decoder = CostMemoryDecoderLayer(spec.query_dim, spec.cost_latent_dim, spec.decoder_heads, dropout)
        self.motion_encoder = MotionEncoder(spec.query_dim + window, hidden)
        self.motion_aggregator = GlobalMotionAggregator(hidden)
        self.gru = SepConvGRU(hidden, input_dim=3 * hidden, kernel_size=5)
        self.flow_head = nn.Sequential(
            nn.Conv2d(hidden, 2 * hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(2 * hidden, 2, 3, padding=1)
        )
        self.mask_head = nn.Sequential(
            nn.Conv2d(hidden, 2 * hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(2 * hidden, CONVEX_NEIGHBOURS * UPSAMPLE_FACTOR**2, 1),
        )

    def forward(
        self,
        cost_memory: Tensor,
        cost_maps: Tensor,
        context: Tensor,
        iters: int,
        flow_init: Tensor | None = None,
        return_all: bool = True,
    ) -> tuple[list[Tensor], Tensor]:
        """Refine the flow ``iters`` times.

        Args:
            cost_memory: [B*h*w, T, D] latent cost tokens of every source pixel (raster order per image).
            cost_maps: [B*h*w, 1, h, w] the 4-D cost volume, one map over frame 2 per source pixel.
            context: [B, C2, h, w] 1/8-scale context features of frame 1.
            iters: number of refinement iterations (>= 1).
            flow_init: optional [B, 2, h, w] warm start in 1/8-scale pixels.
            return_all: upsample every iteration's flow (training); False upsamples only the last one.

        Returns:
            ``(flows, flow_low)``: ``flows`` is the list of [B, 2, 8h, 8w] flows in full-resolution pixels (``iters``
            entries, or only the last one if ``return_all`` is False); ``flow_low`` [B, 2, h, w] is the final
            flow at 1/8 scale in 1/8-scale pixels (for warm starts).
        """
        self._check_inputs(cost_memory, cost_maps, context, iters, flow_init)
        batch, _, height, width = context.shape
        coord_dtype = torch.promote_types(context.dtype, torch.float32)

        net, inp = self.context_proj(context).split([self.hidden_dim, self.hidden_dim], dim=1)
        net, inp = torch.tanh(net), torch.relu(inp)
        attention = self.gma_attention(inp)
        key, value = self.memory_decoder.memory_key_value(cost_memory)
        offsets = cost_window_offsets(self.spec.corr_radius, device=context.device, dtype=coord_dtype)

        coords0 = coords_grid(batch, height, width, device=context.device, dtype=coord_dtype)
        coords1 = coords0 if flow_init is None else coords0 + flow_init
        flows = []
        for step in range(iters):
            coords1 = coords1.detach()
            local_cost = sample_cost_window(cost_maps, coords1, offsets)
            global_cost = self.memory_decoder(self.cost_query(local_cost), coords1, key, value)
            motion = self.motion_encoder(torch.cat([global_cost, local_cost], dim=1), coords1 - coords0)
            motion_global = self.motion_aggregator(attention, motion)
            net = self.gru(net, torch.cat([inp, motion, motion_global], dim=1))
            coords1 = coords1 + self.flow_head(net)
            if return_all or step == iters - 1:
                mask = MASK_SCALE * self.mask_head(net)
                flows.append(convex_upsample(coords1 - coords0, mask, UPSAMPLE_FACTOR, scale=UPSAMPLE_FACTOR))
        return flows, coords1 - coords0

    def _check_inputs(
        self, cost_memory: Tensor, cost_maps: Tensor, context: Tensor, iters: int, flow_init: Tensor | None
    ) -> None:
        def fail(name: str, expected: str, tensor: Tensor) -> None:
            raise ValueError(f"FlowDecoder: {name} must be {expected}, got {list(tensor.shape)}")

        if context.dim() != 4 or context.shape[1] != 2 * self.hidden_dim:
            fail("context", f"[B, {2 * self.hidden_dim}, h, w]", context)
        batch, _, height, width = context.shape
        tokens, latent_dim = batch * height * width, self.spec.cost_latent_dim
        if cost_memory.dim() != 3 or cost_memory.shape[0] != tokens or cost_memory.shape[2] != latent_dim:
            fail("cost_memory", f"[B*h*w={tokens}, T, {latent_dim}]", cost_memory)
        if tuple(cost_maps.shape) != (tokens, 1, height, width):
            fail("cost_maps", f"[{tokens}, 1, {height}, {width}]", cost_maps)
        if not isinstance(iters, int) or iters < 1:
            raise ValueError(f"FlowDecoder: iters must be a positive int, got {iters!r}")
        if flow_init is not None and tuple(flow_init.shape) != (batch, 2, height, width):
            fail("flow_init", f"[{batch}, 2, {height}, {width}] (1/8-scale pixels)", flow_init)
