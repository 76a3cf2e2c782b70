"""The registry of ProtoFormer sizes (one code path, many sizes, as in timm).

``protoformer`` is the architecture of the official release (15,987,814 parameters in the official state_dict,
weight-compatible with it). Smaller sizes change only numbers, never the code path.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class ProtoFormerSpec:
    """Every number that shapes the network. Field comments give the official value and config name.

    Feature/context encoder (ProtoFormer encoder, Twins-SVT skeleton with prototype token mixers):
        embed_dims: channels of the 1/4 and 1/8 stages (128, 256).
        depths: blocks per stage (2, 2).
        head_dim: channels per prototype head (32); heads = embed_dim // head_dim.
        prototype_grid: prototypes are initialised on a g x g pooled grid, K = g*g per head (10 -> 100).
        em_iters: cross-attention prototyping iterations (3).
        mlp_ratio: MLP expansion of the encoder blocks (4).
    Cost memory (CostMemoryEncoder, FlowFormer-style latent cost tokens):
        cost_patch_size: patch size of the cost-map embedding (8; official ``patch_size``).
        cost_patch_dim: conv channels of the cost patch embedding (64; ``cost_latent_input_dim``).
        cost_latent_dim: width of the latent cost tokens (128; ``cost_latent_dim``).
        cost_latent_tokens: latent tokens per source pixel (8; ``cost_latent_token_num``).
        cost_heads: attention heads in the cost-memory transformer (8).
        cost_encoder_depth: self/vertical attention rounds (3; ``encoder_depth``).
        context_proj_dim: context channels concatenated to queries/keys of vertical attention (64; ``vert_c_dim``).
        local_window: window of the local vertical attention (7).
        global_sr: sub-sampling ratio of the global vertical attention (4).
    Flow decoder (RAFT/GMA-style recurrent refinement):
        query_dim: width of the per-pixel cost query in the memory decoder (64; ``query_latent_dim``).
        decoder_heads: heads of the memory cross-attention (8).
        corr_radius: radius of the local cost lookup window (4 -> 9x9 = 81 samples).
        hidden_dim: GRU hidden state = context input width (128 = embed_dims[1] // 2).
    """

    embed_dims: tuple[int, int] = (128, 256)
    depths: tuple[int, int] = (2, 2)
    head_dim: int = 32
    prototype_grid: int = 10
    em_iters: int = 3
    mlp_ratio: float = 4.0
    cost_patch_size: int = 8
    cost_patch_dim: int = 64
    cost_latent_dim: int = 128
    cost_latent_tokens: int = 8
    cost_heads: int = 8
    cost_encoder_depth: int = 3
    context_proj_dim: int = 64
    local_window: int = 7
    global_sr: int = 4
    query_dim: int = 64
    decoder_heads: int = 8
    corr_radius: int = 4

    @property
    def hidden_dim(self) -> int:
        return self.embed_dims[1] // 2


VARIANTS: dict[str, ProtoFormerSpec] = {
    "protoformer": ProtoFormerSpec(),
    "protoformer-s": replace(
        ProtoFormerSpec(),
        embed_dims=(64, 128),
        depths=(1, 1),
        prototype_grid=6,
        em_iters=2,
        cost_patch_dim=32,
        cost_latent_dim=64,
        cost_latent_tokens=4,
        cost_heads=4,
        cost_encoder_depth=1,
        context_proj_dim=32,
        query_dim=32,
        decoder_heads=4,
    ),
}
