"""Cost volume and latent cost memory (FlowFormer's cost-volume encoder as used by ProtoFormer).

Implements the official ``memory_encoder`` without its feature encoder (``LatentCostFormer/encoder.py``:
``MemoryEncoder.corr`` + ``CostPerceiverEncoder``; vertical attention from ``twins.py``):

1. ``feature_proj`` (official ``channel_convertor``) maps both frames' 1/8 features, the all-pairs cost volume is
   their plain dot product (no 1/sqrt(C) scaling, one head) and is kept as one cost map per source pixel.
2. ``CostPatchEmbedding`` turns every cost map into a few cost tokens (stride-8 conv stack + position code).
3. ``LatentCrossAttention`` summarises each pixel's cost tokens into ``T`` latent tokens ("cost memory").
4. ``cost_encoder_depth`` rounds of ``LatentSelfAttention`` (among the T latents of a pixel) and
   ``VerticalAttention`` (across pixels, one latent index at a time, local 7x7 windows then sub-sampled global
   attention, both guided by the context features), plus a residual to the output of step 3.

Inside the rounds the latents are kept as ``[B, h, w, T, D]`` (which is the same memory as ``[B*h*w, T, D]``), so
the vertical attention needs no transposes to ``[B*T, h*w, D]``. Every image attends with its own context; the
official code pairs latent group k of image b with the context of image (b*T + k) mod B when B > 1 (a bug,
NOTES 5.3), so batched results here equal single-image runs, and equal the official ones for B = 1.

Weights that act on a concatenation ``[tokens, context]`` (queries/keys of the vertical attention, the cost
patch MLP) are applied as a sum of their column blocks: the context / position part is computed once per image
or pixel and broadcast over the T latents. This is the same function with fewer operations.

Memory (eval, 440x1024: h*w = 7040 pixels, so one [h*w, h*w] cost volume is 198 MB). Every step works on chunks,
each with the same arithmetic as the whole:
* steps 1-3 run on ``COST_MAP_CHUNK`` cost maps at a time, computed from the projected features chunk by chunk, so
  the activations of the patch convolutions (16 channels at half the cost-map resolution, per cost map) stay in
  cache instead of growing with (h*w)^2 (about 0.8 GB at 440x1024);
* the whole cost volume, which the decoder samples, is computed once more at the end (one extra matrix product,
  about 2 % of the forward FLOPs), so it never coexists with the rounds;
* in the rounds, the self-attention and the MLPs run on chunks of pixels / tokens, the local attention on bands of
  window rows and the global attention on bands of query rows (``ROW_CHUNK`` tokens each).
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.model.layers import ROW_CHUNK, map_rows
from core.model.position import linear_sine_code
from core.model.variants import ProtoFormerSpec

# Official keys relative to ``memory_encoder.`` (``feat_encoder.*`` belongs to the encoder) -> our keys.
_COST = r"cost_perceiver_encoder\."
_VERTICAL = _COST + r"vertical_encoder_layers\.(\d+)\."
OFFICIAL_KEY_MAP: list[tuple[str, str]] = [
    (r"channel_convertor\.weight", r"feature_proj.weight"),
    (_COST + r"latent_tokens", r"latent_tokens"),
    (_COST + r"patch_embed\.proj\.(0|2|4)\.(weight|bias)", r"patch_embed.convs.\1.\2"),
    (_COST + r"patch_embed\.ffn_with_coord\.0\.(weight|bias)", r"patch_embed.mlp_in.\1"),
    (_COST + r"patch_embed\.ffn_with_coord\.2\.(weight|bias)", r"patch_embed.mlp_out.\1"),
    (_COST + r"patch_embed\.norm\.(weight|bias)", r"patch_embed.norm.\1"),
    (_COST + r"input_layer\.ffn\.0\.(weight|bias)", r"cross_attention.ffn.fc1.\1"),
    (_COST + r"input_layer\.ffn\.3\.(weight|bias)", r"cross_attention.ffn.fc2.\1"),
    (_COST + r"input_layer\.(norm1|norm2|q|k|v|proj)\.(weight|bias)", r"cross_attention.\1.\2"),
    (_COST + r"encoder_layers\.(\d+)\.ffn\.0\.(weight|bias)", r"self_attention.\1.ffn.fc1.\2"),
    (_COST + r"encoder_layers\.(\d+)\.ffn\.3\.(weight|bias)", r"self_attention.\1.ffn.fc2.\2"),
    (_COST + r"encoder_layers\.(\d+)\.(norm1|norm2|q|k|v|proj)\.(weight|bias)", r"self_attention.\1.\2.\3"),
    (_VERTICAL + r"global_block\.attn\.sr_key\.(weight|bias)",
     r"vertical_attention.\1.global_block.attn.key_reduce.\2"),
    (_VERTICAL + r"global_block\.attn\.sr_value\.(weight|bias)",
     r"vertical_attention.\1.global_block.attn.value_reduce.\2"),
    (_VERTICAL + r"global_block\.attn\.norm\.(weight|bias)",
     r"vertical_attention.\1.global_block.attn.reduce_norm.\2"),
    (_VERTICAL + r"(local|global)_block\.(norm1|norm2|mlp\.fc[12]|attn\.(?:context_proj|q|k|v|proj))\.(weight|bias)",
     r"vertical_attention.\1.\2_block.\3.\4"),
]
# Every official parameter of this part is used by the forward pass.
OFFICIAL_UNUSED: list[str] = []

# Cost maps summarised per chunk in CostMemoryEncoder (measured on 2 CPU threads: 128-256 is fastest).
COST_MAP_CHUNK = 256


def _split_heads(x: Tensor, heads: int) -> Tensor:
    """[..., L, heads*d] -> [..., heads, L, d] (a view)."""
    return x.unflatten(-1, (heads, -1)).transpose(-3, -2)


def _merge_heads(x: Tensor) -> Tensor:
    """[..., heads, L, d] -> [..., L, heads*d]."""
    return x.transpose(-3, -2).flatten(-2)


def _grid_coords(height: int, width: int, step: float, offset: float, device: torch.device) -> Tensor:
    """[height, width, 2] pixel coordinates (x = step*col + offset, y = step*row + offset) in float32."""
    rows = torch.arange(height, device=device, dtype=torch.float32) * step + offset
    cols = torch.arange(width, device=device, dtype=torch.float32) * step + offset
    return torch.stack(torch.meshgrid(cols, rows, indexing="xy"), dim=-1)


class FeedForward(nn.Module):
    """Linear -> GELU -> Dropout -> Linear -> Dropout (the FFN/MLP of every cost-memory transformer layer)."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class CostPatchEmbedding(nn.Module):
    """FlowFormer's cost patch embedding (official ``CostPerceiverEncoder.patch_embed``).

    Each cost map is zero-padded right/bottom to a multiple of ``patch_size`` and reduced by stride-2 convs
    (kernel 6, padding 2; 1 -> P/4 -> P/2 -> P channels for patch 8, 1 -> P/4 -> P for patch 4). The
    P channels of every patch are joined with the linear sine code (width P) of the patch centre in cost-map
    pixels, then a 1x1 MLP (2P -> 2P, ReLU, 2P -> 2P) and a LayerNorm give the cost tokens.

    Input [M, 1, h, w] (M = B*h*w cost maps) -> tokens [M, L, 2P], L = ceil(h/p) * ceil(w/p).
    """

    def __init__(self, patch_size: int, patch_dim: int):
        super().__init__()
        if patch_size == 8:
            channels = [1, patch_dim // 4, patch_dim // 2, patch_dim]
        elif patch_size == 4:
            channels = [1, patch_dim // 4, patch_dim]
        else:
            raise ValueError(f"cost_patch_size must be 4 or 8, got {patch_size}")
        layers: list[nn.Module] = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers += [nn.Conv2d(c_in, c_out, kernel_size=6, stride=2, padding=2), nn.ReLU(inplace=True)]
        self.convs = nn.Sequential(*layers[:-1])
        self.patch_size = patch_size
        self.patch_dim = patch_dim
        # The MLP's 1x1 convs keep the official weight shapes; forward() applies them to tokens as linear maps.
        self.mlp_in = nn.Conv2d(2 * patch_dim, 2 * patch_dim, 1)
        self.mlp_out = nn.Conv2d(2 * patch_dim, 2 * patch_dim, 1)
        self.norm = nn.LayerNorm(2 * patch_dim)

    def forward(self, cost_maps: Tensor) -> Tensor:
        p = self.patch_size
        height, width = cost_maps.shape[-2:]
        x = self.convs[0](F.pad(cost_maps, (0, (-width) % p, 0, (-height) % p)))
        # The later convs run faster channels-last, and it makes the tokens below a contiguous view.
        x = self.convs[1:](x.contiguous(memory_format=torch.channels_last))
        tokens = x.flatten(2).transpose(1, 2)                                   # [M, L, P]
        centres = _grid_coords(x.shape[2], x.shape[3], p, p / 2, x.device).flatten(0, 1)
        position = linear_sine_code(centres, self.patch_dim).to(tokens.dtype)   # [L, P]
        # First 1x1 conv of [tokens, position]: the position half is the same for every cost map.
        w_in = self.mlp_in.weight.flatten(1)
        hidden = F.linear(tokens, w_in[:, : self.patch_dim])
        hidden += F.linear(position, w_in[:, self.patch_dim:], self.mlp_in.bias)
        out = F.linear(hidden.relu_(), self.mlp_out.weight.flatten(1), self.mlp_out.bias)
        return self.norm(out)


class LatentCrossAttention(nn.Module):
    """Cost-token summarisation into latent tokens (official ``CostPerceiverEncoder.input_layer``).

    The learned latents [1, T, D] are the queries (after LayerNorm ``norm1``); each pixel's cost tokens are keys and
    values (no norm). Multi-head attention with scale (D/heads)^-1/2, output projection, residual to the
    latents, then a pre-LN (``norm2``) FFN of width D with residual.

    latents [1, T, D], cost_tokens [M, L, C] -> [M, T, D].
    """

    def __init__(self, dim: int, token_dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(token_dim, dim)
        self.v = nn.Linear(token_dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.ffn = FeedForward(dim, dim, dropout)

    def forward(self, latents: Tensor, cost_tokens: Tensor) -> Tensor:
        m = cost_tokens.shape[0]
        q = _split_heads(self.q(self.norm1(latents)), self.heads).expand(m, -1, -1, -1)   # [M, heads, T, d]
        kv = F.linear(cost_tokens, torch.cat([self.k.weight, self.v.weight]),
                      torch.cat([self.k.bias, self.v.bias]))
        k, v = (_split_heads(t, self.heads) for t in kv.chunk(2, dim=-1))                # [M, heads, L, d]
        x = latents + self.proj(_merge_heads(F.scaled_dot_product_attention(q, k, v)))
        return x + self.ffn(self.norm2(x))


class LatentSelfAttention(nn.Module):
    """"Horizontal" self-attention among the T latent tokens of each pixel (official ``encoder_layers.i``).

    Pre-LN multi-head attention (scale (D/heads)^-1/2) + residual, then pre-LN FFN of width D + residual.
    [M, T, D] -> [M, T, D].
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.ffn = FeedForward(dim, dim, dropout)

    def forward(self, x: Tensor) -> Tensor:
        return map_rows(self._attend, x, max(1, ROW_CHUNK // x.shape[1]))  # pixels are independent

    def _attend(self, x: Tensor) -> Tensor:
        qkv = F.linear(self.norm1(x), torch.cat([self.q.weight, self.k.weight, self.v.weight]),
                       torch.cat([self.q.bias, self.k.bias, self.v.bias]))
        q, k, v = (_split_heads(t, self.heads) for t in qkv.chunk(3, dim=-1))
        x = x + self.proj(_merge_heads(F.scaled_dot_product_attention(q, k, v)))
        return x + self.ffn(self.norm2(x))


class VerticalLocalAttention(nn.Module):
    """Windowed attention across pixels with context-guided queries/keys (official ``LocallyGroupedAttnRPEContext``).

    For each image, latent index and ``window x window`` window (grid zero-padded right/bottom to a multiple of
    the window), queries and keys are linear maps of ``[tokens, context_proj(context)] + code(col, row)``, where
    ``code`` is the linear sine code (width D + Dc) of the position inside the window; values are a linear map of
    the tokens only. Padded positions take part as keys (zero content plus position code; not masked, as in
    the official model) and are cropped from the output. Scale (D/heads)^-1/2, output projection.

    Windows do not overlap, so bands of whole window rows (about ``ROW_CHUNK`` tokens each) are computed one at a
    time. x [B, h, w, T, D] (normalised tokens), context [B, h, w, C] -> [B, h, w, T, D].
    """

    def __init__(self, dim: int, context_dim: int, context_proj_dim: int, heads: int, window: int,
                 dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.window = window
        self.context_proj = nn.Linear(context_dim, context_proj_dim)
        self.q = nn.Linear(dim + context_proj_dim, dim)
        self.k = nn.Linear(dim + context_proj_dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        ws = self.window
        band = ws * max(1, ROW_CHUNK // (ws * x.shape[2] * x.shape[3]))
        if x.shape[1] <= band:
            return self._attend(x, context)
        out = x.new_empty(x.shape)
        for top in range(0, x.shape[1], band):
            out[:, top:top + band] = self._attend(x[:, top:top + band], context[:, top:top + band])
        return out

    def _attend(self, x: Tensor, context: Tensor) -> Tensor:
        batch, height, width, tokens, dim = x.shape
        ws = self.window
        pad_h, pad_w = (-height) % ws, (-width) % ws
        rows, cols = (height + pad_h) // ws, (width + pad_w) // ws

        def windows(t: Tensor) -> Tensor:
            """[B, rows*ws, cols*ws, *, C] -> [B, rows, cols, *, ws*ws, C]."""
            t = t.view(batch, rows, ws, cols, ws, -1, t.shape[-1]).permute(0, 1, 3, 5, 2, 4, 6)
            return t.reshape(batch, rows, cols, -1, ws * ws, t.shape[-1])

        x = windows(F.pad(x, (0, 0, 0, 0, 0, pad_w, 0, pad_h)))                         # [B, r, c, T, ws*ws, D]
        context = windows(F.pad(self.context_proj(context), (0, 0, 0, pad_w, 0, pad_h)))  # [B, r, c, 1, ws*ws, Dc]

        # Per-pixel part of q/k (context and in-window position code), shared by the T latents; v has none.
        code = linear_sine_code(_grid_coords(ws, ws, 1.0, 0.0, x.device), dim + context.shape[-1])
        w_qk = torch.cat([self.q.weight, self.k.weight])
        pixel_qk = F.linear(context, w_qk[:, dim:]) + F.linear(code.to(x.dtype).flatten(0, 1), w_qk,
                                                               torch.cat([self.q.bias, self.k.bias]))
        pixel_qkv = torch.cat([pixel_qk, self.v.bias.expand(*pixel_qk.shape[:-1], dim)], dim=-1)
        qkv = F.linear(x, torch.cat([w_qk[:, :dim], self.v.weight]))
        qkv += pixel_qkv                                                                  # [B, r, c, T, ws*ws, 3D]

        q, k, v = (_split_heads(t, self.heads) for t in qkv.flatten(0, 3).chunk(3, dim=-1))
        out = _merge_heads(F.scaled_dot_product_attention(q, k, v))                      # [B*r*c*T, ws*ws, D]
        out = out.view(batch, rows, cols, tokens, ws, ws, dim).permute(0, 1, 4, 2, 5, 3, 6)
        out = out.reshape(batch, rows * ws, cols * ws, tokens, dim)[:, :height, :width]
        return self.proj_drop(self.proj(out))


class VerticalGlobalAttention(nn.Module):
    """Sub-sampled global attention across pixels with context-guided queries/keys
    (official ``GlobalSubSampleAttnRPEContext``, Twins' GSA).

    The grid is zero-padded right/bottom to a multiple of ``sr``. Queries: linear map of
    ``[tokens, context_proj(context)] + code(col, row)`` (absolute padded-grid position, width D + Dc). Keys: a
    stride-``sr`` conv of ``[tokens, context]``, LayerNorm ``reduce_norm``, ``+ code(sr*col, sr*row)`` of the
    reduced grid (width D), linear map. Values: a stride-``sr`` conv of the tokens, the same LayerNorm, linear map.
    Every query attends to all reduced positions; scale (D/heads)^-1/2, output projection. Queries are formed
    for the h x w output positions only, in bands of rows (about ``ROW_CHUNK`` tokens each).

    x [B, h, w, T, D] (normalised tokens), context [B, h, w, C] -> [B, h, w, T, D].
    """

    def __init__(self, dim: int, context_dim: int, context_proj_dim: int, heads: int, sr: int,
                 dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.sr = sr
        self.context_proj = nn.Linear(context_dim, context_proj_dim)
        self.q = nn.Linear(dim + context_proj_dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)
        self.key_reduce = nn.Conv2d(dim + context_proj_dim, dim, kernel_size=sr, stride=sr)
        self.value_reduce = nn.Conv2d(dim, dim, kernel_size=sr, stride=sr)
        self.reduce_norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        batch, height, width, tokens, dim = x.shape
        sr = self.sr
        pad_h, pad_w = (-height) % sr, (-width) % sr
        rows, cols = (height + pad_h) // sr, (width + pad_w) // sr
        x = F.pad(x, (0, 0, 0, 0, 0, pad_w, 0, pad_h))                                   # [B, Hp, Wp, T, D]
        context = F.pad(self.context_proj(context), (0, 0, 0, pad_w, 0, pad_h))        # [B, Hp, Wp, Dc]

        code = linear_sine_code(_grid_coords(height, width, 1.0, 0.0, x.device), dim + context.shape[-1])
        pixel_q = F.linear(context[:, :height, :width], self.q.weight[:, dim:])
        pixel_q += F.linear(code.to(x.dtype), self.q.weight, self.q.bias)                # [B, h, w, D]

        # Stride-sr convs as linear maps of sr x sr patches: [B, rows, cols, T, sr*sr*D].
        patches = x.view(batch, rows, sr, cols, sr, tokens, dim).permute(0, 1, 3, 5, 2, 4, 6).flatten(4)
        w_key = self.key_reduce.weight
        w_patch = torch.cat([w_key[:, :dim], self.value_reduce.weight]).permute(0, 2, 3, 1).flatten(1)
        key, value = F.linear(patches, w_patch).chunk(2, dim=-1)
        key_context = F.conv2d(context.permute(0, 3, 1, 2), w_key[:, dim:], self.key_reduce.bias, stride=sr)
        key = self.reduce_norm(key + key_context.permute(0, 2, 3, 1).unsqueeze(3))
        value = self.reduce_norm(value + self.value_reduce.bias)
        key_code = linear_sine_code(_grid_coords(rows, cols, sr, 0.0, x.device), dim).to(x.dtype)
        k = self.k(key + key_code.unsqueeze(2))                                          # [B, rows, cols, T, D]
        v = self.v(value)

        # Attention over pixels for every (image, latent, head): [B, T*heads, positions, d] views.
        def heads_last(t: Tensor) -> Tensor:
            return t.reshape(batch, -1, tokens * self.heads, dim // self.heads).transpose(1, 2)

        k, v = heads_last(k), heads_last(v)
        out = x.new_empty(batch, height, width, tokens, dim)
        band = max(1, ROW_CHUNK // (width * tokens))  # query rows at a time (every query sees all keys)
        for top in range(0, height, band):
            rows_in_band = slice(top, min(top + band, height))
            q = F.linear(x[:, rows_in_band, :width], self.q.weight[:, :dim])
            q += pixel_q[:, rows_in_band].unsqueeze(3)                                   # [B, band, w, T, D]
            attended = F.scaled_dot_product_attention(heads_last(q), k, v).transpose(1, 2)
            out[:, rows_in_band] = attended.reshape(q.shape)
        return self.proj_drop(self.proj(out))


class VerticalAttentionBlock(nn.Module):
    """Pre-LN transformer block across pixels (official Twins ``Block``): x + attn(LN(x)), x + MLP(LN(x)).

    x [B, h, w, T, D], context [B, h, w, C] -> [B, h, w, T, D]; MLP width ``mlp_ratio * D``, GELU.
    """

    def __init__(self, attn: VerticalLocalAttention | VerticalGlobalAttention, dim: int, mlp_ratio: int,
                 dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = attn
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, mlp_ratio * dim, dropout)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x), context)
        return map_rows(self._mlp_residual, x.flatten(0, -2)).view_as(x)  # per token, in chunks

    def _mlp_residual(self, x: Tensor) -> Tensor:
        return x + self.mlp(self.norm2(x))


class VerticalAttention(nn.Module):
    """"Vertical" attention of one round (official ``VerticalSelfAttentionLayer``): a local window block, then a
    global sub-sampled block; each latent index attends across the pixels of its own image.

    x [B, h, w, T, D], context [B, h, w, C] -> [B, h, w, T, D].
    """

    def __init__(self, spec: ProtoFormerSpec, dropout: float = 0.0):
        super().__init__()
        dim, context_dim = spec.cost_latent_dim, spec.embed_dims[1]
        local = VerticalLocalAttention(dim, context_dim, spec.context_proj_dim, spec.cost_heads,
                                       spec.local_window, dropout)
        global_ = VerticalGlobalAttention(dim, context_dim, spec.context_proj_dim, spec.cost_heads,
                                          spec.global_sr, dropout)
        self.local_block = VerticalAttentionBlock(local, dim, 4, dropout)
        self.global_block = VerticalAttentionBlock(global_, dim, 4, dropout)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        return self.global_block(self.local_block(x, context), context)


class CostMemoryEncoder(nn.Module):
    """All-pairs cost volume and its latent cost memory (official ``memory_encoder`` minus ``feat_encoder``).

    Args:
        spec: network sizes (cost_* fields, context_proj_dim, local_window, global_sr, embed_dims[1]).
        dropout: dropout of the FFNs/MLPs and vertical attention projections (training only).

    forward(feat1, feat2, context), all [B, C, h, w] with C = embed_dims[1] (1/8-scale features of frames 1 and 2,
    context features of frame 1), returns:
        cost_memory [B*h*w, T, D]: T = cost_latent_tokens latent tokens of width D = cost_latent_dim per source
            pixel (raster order, image-major);
        cost_maps [B*h*w, 1, h, w]: the cost volume, one map over frame-2 pixels per frame-1 pixel.
    """

    def __init__(self, spec: ProtoFormerSpec, dropout: float = 0.0):
        super().__init__()
        feature_dim, dim = spec.embed_dims[1], spec.cost_latent_dim
        self.feature_proj = nn.Conv2d(feature_dim, feature_dim, 1, bias=False)
        self.patch_embed = CostPatchEmbedding(spec.cost_patch_size, spec.cost_patch_dim)
        self.latent_tokens = nn.Parameter(torch.randn(1, spec.cost_latent_tokens, dim))
        self.cross_attention = LatentCrossAttention(dim, 2 * spec.cost_patch_dim, spec.cost_heads, dropout)
        self.self_attention = nn.ModuleList(
            LatentSelfAttention(dim, spec.cost_heads, dropout) for _ in range(spec.cost_encoder_depth))
        self.vertical_attention = nn.ModuleList(
            VerticalAttention(spec, dropout) for _ in range(spec.cost_encoder_depth))

    @staticmethod
    def cost_volume(feat1: Tensor, feat2: Tensor) -> Tensor:
        """All-pairs dot products [B, C, h, w] x2 -> cost maps [B*h*w, 1, h, w] (no scaling)."""
        batch, _, height, width = feat1.shape
        cost = torch.bmm(feat1.flatten(2).transpose(1, 2), feat2.flatten(2))            # [B, h*w, h*w]
        return cost.view(batch * height * width, 1, height, width)

    @staticmethod
    def cost_map_chunks(feat1: Tensor, feat2: Tensor, chunk: int) -> Iterator[Tensor]:
        """The cost maps of :meth:`cost_volume` in order, ``chunk`` source pixels at a time: [<=chunk, 1, h, w]."""
        height, width = feat1.shape[-2:]
        for source, target in zip(feat1.flatten(2).transpose(1, 2), feat2.flatten(2)):  # [h*w, C], [C, h*w]
            for rows in source.split(chunk):
                yield torch.mm(rows, target).view(-1, 1, height, width)

    def forward(self, feat1: Tensor, feat2: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        if feat1.shape != feat2.shape or feat1.shape != context.shape or feat1.dim() != 4:
            raise ValueError("CostMemoryEncoder expects feat1, feat2 and context of one shape [B, C, h, w], got "
                             f"{tuple(feat1.shape)}, {tuple(feat2.shape)}, {tuple(context.shape)}")
        batch, _, height, width = feat1.shape
        feat1, feat2 = self.feature_proj(feat1), self.feature_proj(feat2)

        latents = torch.cat([self.cross_attention(self.latent_tokens, self.patch_embed(cost_maps))
                             for cost_maps in self.cost_map_chunks(feat1, feat2, COST_MAP_CHUNK)])  # [B*h*w, T, D]
        context_tokens = context.permute(0, 2, 3, 1)                                    # [B, h, w, C]
        x = latents
        for self_attention, vertical_attention in zip(self.self_attention, self.vertical_attention):
            x = self_attention(x)
            x = vertical_attention(x.view(batch, height, width, *x.shape[1:]), context_tokens).flatten(0, 2)
        # The whole volume (for the decoder's lookups) is only built now, so it never coexists with the rounds.
        return x + latents, self.cost_volume(feat1, feat2)
