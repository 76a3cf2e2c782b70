"""The prototype token mixer of the ProtoFormer encoder (paper: Cross-Attention Prototyping and Latent
Synchronization; official ``encoders.Clustering``).

Per image and head, with d = head_dim channels, N = H*W pixels and K = g*g prototypes:

1. Cross-Attention Prototyping: prototypes start as the g x g adaptive average pool of the pixel embeddings and are
   refined by ``iters`` rounds of cross-attention (softmax over the prototypes of the cosine similarity to the
   keys, then an unnormalised weighted sum of the values).
2. Latent Synchronization: every pixel joins its most similar prototype (sigmoid(beta + alpha * cos), hard
   argmax); each prototype averages the similarity-weighted values of its members together with its pooled value,
   and the result is dispatched back to the members, scaled by their similarity.

Weight compatibility requires the official arithmetic, which reinterprets memory in three places instead of
rearranging pixel vectors (NOTES §2.3). With ``rows(T)`` = a channel-major buffer T (length d*M) read as an
M x d matrix of consecutive values (``T.reshape(M, d)``):
* the keys and values enter the attention as ``rows(V)`` and ``rows(F)`` (a row is *not* a pixel vector);
* every round writes the new prototypes as a row-major K x d buffer, which the next round (1x1 update conv) and
  the final similarity read as a channel-major d x K buffer;
* the dispatched output is stacked as a row-major N x d buffer and read back as a channel-major [d, H, W] map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _rows(buffer: Tensor, width: int) -> Tensor:
    """``rows(T)``: the channel-major buffer [b, d, ...] read as [b, M, width] rows of consecutive values."""
    return buffer.reshape(buffer.shape[0], -1, width)


def _pointwise(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """A 1x1 convolution applied to a channel-major [b, C_in, M] tensor -> [b, C_out, M] (contiguous)."""
    weight = conv.weight.flatten(1)
    return torch.baddbmm(conv.bias[:, None], weight.expand(x.shape[0], -1, -1), x)


class CrossAttentionPrototyping(nn.Module):
    """Cross-Attention Prototyping: prototype initialisation on a g x g grid and EM-style cross-attention updates.

    Args:
        head_dim: channels d per head.
        grid: prototypes are initialised by adaptive average pooling to ``grid x grid`` (K = grid**2).
        iters: cross-attention rounds (official ``num_clustering``).
    """

    def __init__(self, head_dim: int, grid: int, iters: int):
        super().__init__()
        self.head_dim = head_dim
        self.grid = grid
        self.iters = iters
        self.update_proj = nn.Conv2d(head_dim, head_dim, kernel_size=1)  # official conv_c

    def forward(self, embeddings: Tensor, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Args: ``embeddings``, ``keys``, ``values``: [b, d, H, W] per-head maps (b = batch * heads).

        Returns ``(prototypes, prototype_values)``, both [b, K, d]: the refined prototype vectors (compared with
        pixel embeddings by :class:`LatentSynchronization`) and ``rows`` of the pooled values (its aggregation prior).
        """
        batch_heads, dim = embeddings.shape[:2]
        prototype_values = _rows(F.adaptive_avg_pool2d(values, self.grid), dim)
        buffer = F.adaptive_avg_pool2d(embeddings, self.grid).reshape(batch_heads, dim, -1)
        unit_keys = F.normalize(_rows(keys, dim), dim=-1)
        value_rows = _rows(values, dim)
        for _ in range(self.iters):
            queries = F.normalize(_rows(_pointwise(self.update_proj, buffer), dim), dim=-1)
            attention = torch.bmm(unit_keys, queries.transpose(1, 2)).softmax(dim=-1)  # [b, N, K], over prototypes
            buffer = torch.bmm(attention.transpose(1, 2), value_rows).reshape(batch_heads, dim, -1)
            del attention  # not kept alive while the next round computes its own
        return buffer.transpose(1, 2), prototype_values


class LatentSynchronization(nn.Module):
    """Latent Synchronization: hard assignment of pixels to prototypes, aggregation, and dispatch to the pixels.

    Holds the similarity scale and shift (official ``sim_alpha`` = 1, ``sim_beta`` = 0 at init, shared by all heads).
    """

    def __init__(self):
        super().__init__()
        self.sim_alpha = nn.Parameter(torch.ones(1))
        self.sim_beta = nn.Parameter(torch.zeros(1))

    def assign(self, prototypes: Tensor, embeddings: Tensor) -> tuple[Tensor, Tensor]:
        """Best prototype per pixel.

        Args: ``prototypes`` [b, K, d]; ``embeddings`` [b, d, H, W] pixel embeddings.
        Returns ``(similarity [b, N], assignment [b, N] int64)``: sigmoid(beta + alpha * cos) of the chosen prototype
        and its index (ties go to the lowest index, like ``torch.argmax``).
        """
        pixels = F.normalize(embeddings.flatten(2).transpose(1, 2), dim=-1)
        unit_prototypes = F.normalize(prototypes, dim=-1)
        # beta + alpha * cos in one op (the same arithmetic); the cosine map [b, N, K] is not kept, so at most two
        # such maps exist at once.
        logits = torch.addcmul(self.sim_beta, self.sim_alpha, torch.bmm(pixels, unit_prototypes.transpose(1, 2)))
        return torch.sigmoid(logits).max(dim=-1)

    def forward(self, prototypes: Tensor, prototype_values: Tensor, embeddings: Tensor, values: Tensor) -> Tensor:
        """Args: ``prototypes``, ``prototype_values`` [b, K, d] (from :class:`CrossAttentionPrototyping`);
        ``embeddings``, ``values`` [b, d, H, W].

        Returns the dispatched features [b, d, H, W] (official layout: the N x d pixel rows read back channel-major).
        """
        return self.synchronize(prototypes, prototype_values, embeddings, values)[0]

    def synchronize(
        self, prototypes: Tensor, prototype_values: Tensor, embeddings: Tensor, values: Tensor
    ) -> tuple[Tensor, Tensor]:
        """:meth:`forward` that also returns the assignment [b, N] (for diagnostics and visualisation)."""
        batch_heads, num_prototypes, dim = prototypes.shape
        similarity, assignment = self.assign(prototypes, embeddings)
        # Sparse form of the official one-hot mask: each pixel contributes to exactly one prototype.
        offsets = num_prototypes * torch.arange(batch_heads, device=assignment.device)
        flat_assignment = (assignment + offsets[:, None]).flatten()  # index into the [b * K] prototypes
        weighted_rows = (_rows(values, dim) * similarity[..., None]).reshape(-1, dim)
        members = torch.bincount(flat_assignment, minlength=batch_heads * num_prototypes)
        totals = weighted_rows.new_zeros(batch_heads * num_prototypes, dim).index_add(0, flat_assignment, weighted_rows)
        aggregated = (totals + prototype_values.reshape(-1, dim)) / (members[:, None] + 1).to(totals.dtype)
        dispatched = aggregated[flat_assignment] * similarity.reshape(-1, 1)  # [b * N, d], pixel rows
        return dispatched.reshape(embeddings.shape), assignment


class PrototypeTokenMixer(nn.Module):
    """The token mixer of every encoder block (official ``Clustering`` with windows off and ``return_center=False``).

    1x1 projections give per-head pixel embeddings (official ``conv1``), keys (``conv_v``) and values (``conv_f``);
    :class:`CrossAttentionPrototyping` forms K = grid**2 prototypes per head, :class:`LatentSynchronization` sends
    them back to the pixels, and a 1x1 projection (``conv2``) merges the heads.

    Args:
        dim: token channels C (a multiple of ``head_dim``; heads = C / head_dim).
        head_dim: channels per head.
        grid: prototype grid side g.
        iters: cross-attention prototyping rounds.
    """

    def __init__(self, dim: int, head_dim: int, grid: int, iters: int):
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"dim ({dim}) must be a multiple of head_dim ({head_dim})")
        self.head_dim = head_dim
        self.embed_proj = nn.Conv2d(dim, dim, kernel_size=1)
        self.key_proj = nn.Conv2d(dim, dim, kernel_size=1)
        self.value_proj = nn.Conv2d(dim, dim, kernel_size=1)
        self.prototyping = CrossAttentionPrototyping(head_dim, grid, iters)
        self.synchronization = LatentSynchronization()
        self.out_proj = nn.Conv2d(dim, dim, kernel_size=1)

    def forward(self, tokens: Tensor, size: tuple[int, int]) -> Tensor:
        """Args: ``tokens`` [B, N, C] in raster order; ``size`` (H, W) with H*W = N. Returns [B, N, C]."""
        return self.mix(tokens, size)[0]

    def mix(self, tokens: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """:meth:`forward` that also returns each pixel's prototype index per head, [B, heads, N] int64."""
        batch, num_tokens, channels = tokens.shape
        height, width = size
        if height * width != num_tokens:
            raise ValueError(f"size {size} does not match the {num_tokens} tokens")
        d = self.head_dim
        channel_major = tokens.transpose(1, 2)  # [B, C, N]
        merged = tokens.new_empty(batch, channels, num_tokens)  # dispatched features, heads stacked channel-major
        assignment = torch.empty(batch, channels // d, num_tokens, dtype=torch.long, device=tokens.device)
        # Images are independent: one at a time, so that only its projections and [heads, N, K] maps exist at once.
        for image in range(batch):
            embeddings, keys, values = (
                _pointwise(conv, channel_major[image:image + 1]).view(-1, d, height, width)
                for conv in (self.embed_proj, self.key_proj, self.value_proj))
            prototypes, prototype_values = self.prototyping(embeddings, keys, values)
            dispatched, assignment[image] = self.synchronization.synchronize(
                prototypes, prototype_values, embeddings, values)
            merged[image] = dispatched.view(channels, num_tokens)
        out = F.linear(merged.transpose(1, 2), self.out_proj.weight.flatten(1), self.out_proj.bias)
        return out, assignment
