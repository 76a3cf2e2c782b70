"""The ProtoFormer feature / context encoder (the paper's prototype encoder; official ``encoders.py``).

A Twins-SVT skeleton cut to its first two stages, whose token mixer is the prototype op of
:mod:`core.model.prototyping`. Each stage: strided patch embedding + LayerNorm, then prototype blocks, with
Twins' positional encoding generator (PEG, a depth-wise 3x3 conv plus identity) after the first block.

    image [B, 3, H, W] --stage 1 (conv k4 s4)--> [B, C1, H/4, W/4] --stage 2 (conv k2 s2)--> [B, C2, H/8, W/8]
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from core.model.layers import map_rows
from core.model.prototyping import PrototypeTokenMixer
from core.model.variants import ProtoFormerSpec

# Official keys relative to ``svt.`` inside ``memory_encoder.feat_encoder`` / ``context_encoder``.
_BLOCK = r"svt\.blocks\.(\d+)\.(\d+)\."
_OURS = r"stages.\1.blocks.\2."
OFFICIAL_KEY_MAP: list[tuple[str, str]] = [
    (r"svt\.patch_embeds\.(\d+)\.(proj|norm)\.(weight|bias)", r"stages.\1.patch_embed.\2.\3"),
    (r"svt\.pos_block\.(\d+)\.proj\.0\.(weight|bias)", r"stages.\1.peg.proj.\2"),
    (_BLOCK + r"(norm1|norm2)\.(weight|bias)", _OURS + r"\3.\4"),
    (_BLOCK + r"attn\.conv1\.(weight|bias)", _OURS + r"mixer.embed_proj.\3"),
    (_BLOCK + r"attn\.conv_v\.(weight|bias)", _OURS + r"mixer.key_proj.\3"),
    (_BLOCK + r"attn\.conv_f\.(weight|bias)", _OURS + r"mixer.value_proj.\3"),
    (_BLOCK + r"attn\.conv2\.(weight|bias)", _OURS + r"mixer.out_proj.\3"),
    (_BLOCK + r"attn\.conv_c\.(weight|bias)", _OURS + r"mixer.prototyping.update_proj.\3"),
    (_BLOCK + r"attn\.(sim_alpha|sim_beta)", _OURS + r"mixer.synchronization.\3"),
    (_BLOCK + r"mlp\.(fc1|fc2)\.(weight|bias)", _OURS + r"mlp.\3.\4"),
    (_BLOCK + r"adapter_atn\.l1\.(weight|bias)", _OURS + r"mixer_adapter.down.\3"),
    (_BLOCK + r"adapter_atn\.l2\.(weight|bias)", _OURS + r"mixer_adapter.up.\3"),
    (_BLOCK + r"adapter_mlp\.l1\.(weight|bias)", _OURS + r"mlp_adapter.down.\3"),
    (_BLOCK + r"adapter_mlp\.l2\.(weight|bias)", _OURS + r"mlp_adapter.up.\3"),
]
# The final LayerNorm of the full Twins-L model (1024 channels, stage 4) is kept by the official code after stages
# 3-4 are deleted, but its forward returns the stage maps without applying it.
OFFICIAL_UNUSED: list[str] = [r"svt\.norm\.(weight|bias)"]


class PatchEmbed(nn.Module):
    """Strided conv patch embedding + LayerNorm (eps 1e-5): [B, C_in, H, W] -> tokens [B, N, C], (H/p, W/p)."""

    def __init__(self, in_dim: int, dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(in_dim, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x = self.proj(x)
        return self.norm(x.flatten(2).transpose(1, 2)), (x.shape[2], x.shape[3])


class PositionalEncodingGenerator(nn.Module):
    """Twins' conditional positional encoding (PEG): tokens + depth-wise 3x3 conv of their map. [B, N, C] -> same."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)

    def forward(self, tokens: Tensor, size: tuple[int, int]) -> Tensor:
        feature_map = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *size)
        return tokens + self.proj(feature_map).flatten(2).transpose(1, 2)


class Adapter(nn.Module):
    """Residual bottleneck adapter (official ``adapter_atn`` / ``adapter_mlp``): x + up(relu(down(x)))."""

    def __init__(self, dim: int):
        super().__init__()
        self.down = nn.Linear(dim, dim // 2)
        self.up = nn.Linear(dim // 2, dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.up(F.relu(self.down(x)))


class Mlp(nn.Module):
    """Transformer MLP: Linear -> GELU (exact) -> Linear."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class PrototypeBlock(nn.Module):
    """Pre-norm transformer block with the prototype token mixer and adapters (LayerNorm eps 1e-6).

    x = x + Adapter(Mixer(LN1(x))); x = x + Adapter(MLP(LN2(x))). Tokens [B, N, C] -> [B, N, C].
    """

    def __init__(self, dim: int, spec: ProtoFormerSpec):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.mixer = PrototypeTokenMixer(dim, spec.head_dim, spec.prototype_grid, spec.em_iters)
        self.mixer_adapter = Adapter(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * spec.mlp_ratio))
        self.mlp_adapter = Adapter(dim)

    def forward(self, tokens: Tensor, size: tuple[int, int]) -> Tensor:
        tokens = tokens + self.mixer_adapter(self.mixer(self.norm1(tokens), size))
        # Per token: in chunks of tokens, the 4C-wide hidden layer stays small.
        return map_rows(self._mlp_residual, tokens.flatten(0, 1)).view_as(tokens)

    def _mlp_residual(self, tokens: Tensor) -> Tensor:
        return tokens + self.mlp_adapter(self.mlp(self.norm2(tokens)))


class EncoderStage(nn.Module):
    """Patch embedding, prototype blocks with a PEG after the first one: [B, C_in, H, W] -> [B, C, H/p, W/p]."""

    def __init__(self, in_dim: int, dim: int, patch: int, depth: int, spec: ProtoFormerSpec):
        super().__init__()
        self.patch_embed = PatchEmbed(in_dim, dim, patch)
        self.blocks = nn.ModuleList(PrototypeBlock(dim, spec) for _ in range(depth))
        self.peg = PositionalEncodingGenerator(dim)

    def forward(self, x: Tensor) -> Tensor:
        tokens, size = self.patch_embed(x)
        for index, block in enumerate(self.blocks):
            tokens = block(tokens, size)
            if index == 0:
                tokens = self.peg(tokens, size)
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, *size)


class ProtoFormerEncoder(nn.Module):
    """Two-stage prototype encoder; used as the feature encoder (both frames) and the context encoder (frame 1).

    Args:
        spec: sizes (``embed_dims``, ``depths``, ``head_dim``, ``prototype_grid``, ``em_iters``, ``mlp_ratio``).
    """

    def __init__(self, spec: ProtoFormerSpec):
        super().__init__()
        dim1, dim2 = spec.embed_dims
        self.stages = nn.ModuleList([
            EncoderStage(3, dim1, 4, spec.depths[0], spec),
            EncoderStage(dim1, dim2, 2, spec.depths[1], spec),
        ])
        self.apply(_init_weights)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Args: ``x`` [B, 3, H, W], images scaled to [-1, 1], H and W multiples of 8.

        Returns ``[feat4 [B, C1, H/4, W/4], feat8 [B, C2, H/8, W/8]]``.
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"ProtoFormerEncoder expects images [B, 3, H, W], got {tuple(x.shape)}")
        if x.shape[2] % 8 or x.shape[3] % 8:
            raise ValueError(f"ProtoFormerEncoder needs H and W divisible by 8, got {tuple(x.shape[2:])}")
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


def _init_weights(module: nn.Module) -> None:
    """Twins initialisation (it runs last in the official model, so it also overrides the adapters' own init):
    Linear trunc-normal(std 0.02) / zero bias; LayerNorm 1 / 0; Conv normal(0, sqrt(2 / fan_out)) / zero bias."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, std=math.sqrt(2.0 / fan_out))
        nn.init.zeros_(module.bias)
