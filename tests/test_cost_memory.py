"""CostMemoryEncoder: official weights, golden intermediates of the official model, batch independence, and an
independent re-derivation in the official layout (explicit concatenations, padding and strided convs) on grids
that are not multiples of the window / sub-sampling ratio."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from core.model.cost_memory import (OFFICIAL_KEY_MAP, OFFICIAL_UNUSED, CostMemoryEncoder, VerticalGlobalAttention,
                                    VerticalLocalAttention)
from core.model.variants import VARIANTS

PREFIX = "memory_encoder."
OUR_PART = re.compile(r"memory_encoder\.(?!feat_encoder\.).+")


def map_official(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official ``memory_encoder.*`` (minus feat_encoder) -> our keys, float32; every key must map exactly once."""
    mapped: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if not OUR_PART.fullmatch(key):
            continue
        rel = key[len(PREFIX):]
        if any(re.fullmatch(p, rel) for p in OFFICIAL_UNUSED):
            continue
        target = next((m.expand(r) for p, r in OFFICIAL_KEY_MAP if (m := re.fullmatch(p, rel))), None)
        assert target is not None, f"official key {key} has no mapping"
        assert target not in mapped, f"two official keys map to {target}"
        mapped[target] = value.float()
    return mapped


@pytest.fixture(scope="module")
def official_state(fixtures_dir: Path) -> dict[str, Tensor]:
    return torch.load(fixtures_dir / "weights_seed0_fp16.pt", weights_only=True)


@pytest.fixture(scope="module")
def golden(fixtures_dir: Path) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    main = torch.load(fixtures_dir / "golden_flow.pt", weights_only=True)["intermediates"]
    deep = torch.load(fixtures_dir / "golden_flow_deep.pt", weights_only=True)["intermediates"]
    return main, deep


def perturbed(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Random non-trivial weights: LayerNorm gains away from 1, non-zero biases everywhere."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=gen))
    return model.eval()


# ----------------------------------------------------------------------------------------------------------
# Independent re-derivation in the official layout (NOTES 2.4), written without the module's shortcuts.

def sine_code(coords: Tensor, dim: int) -> Tensor:
    freq = torch.arange(dim // 4, dtype=torch.float32)
    x, y = coords[..., :1] * freq * 3.14 / 200, coords[..., 1:] * freq * 3.14 / 200
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], -1)


def grid(height: int, width: int, step: float = 1.0, offset: float = 0.0) -> Tensor:
    ys, xs = torch.meshgrid(torch.arange(height) * step + offset, torch.arange(width) * step + offset,
                            indexing="ij")
    return torch.stack([xs, ys], -1).float()                                   # [H, W, (x, y)]


def attend(q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
    """[..., Lq, D], [..., Lk, D] -> [..., Lq, D]: explicit softmax(q k^T / sqrt(d)) v per head."""
    split = lambda t: t.unflatten(-1, (heads, -1)).transpose(-3, -2)          # noqa: E731
    q, k, v = split(q), split(k), split(v)
    attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return (attn @ v).transpose(-3, -2).flatten(-2)


def ref_local(attn: VerticalLocalAttention, x: Tensor, ctx: Tensor) -> Tensor:
    """x [BT, h, w, D] normalised tokens, ctx [BT, h, w, C] (context of each row's own image)."""
    bt, h, w, d = x.shape
    ws = attn.window
    xqk = torch.cat([x, attn.context_proj(ctx)], -1)
    ph, pw = -h % ws, -w % ws
    x, xqk = F.pad(x, (0, 0, 0, pw, 0, ph)), F.pad(xqk, (0, 0, 0, pw, 0, ph))
    rows, cols = x.shape[1] // ws, x.shape[2] // ws

    def windows(t: Tensor) -> Tensor:
        return t.reshape(bt, rows, ws, cols, ws, -1).transpose(2, 3).reshape(bt, rows, cols, ws * ws, -1)

    xqk = windows(xqk) + sine_code(grid(ws, ws), xqk.shape[-1]).reshape(ws * ws, -1)
    out = attend(attn.q(xqk), attn.k(xqk), attn.v(windows(x)), attn.heads)
    out = out.reshape(bt, rows, cols, ws, ws, d).transpose(2, 3).reshape(bt, rows * ws, cols * ws, d)
    return attn.proj(out[:, :h, :w])


def ref_global(attn: VerticalGlobalAttention, x: Tensor, ctx: Tensor) -> Tensor:
    bt, h, w, d = x.shape
    sr = attn.sr
    xqk = torch.cat([x, attn.context_proj(ctx)], -1)
    ph, pw = -h % sr, -w % sr
    x, xqk = F.pad(x, (0, 0, 0, pw, 0, ph)), F.pad(xqk, (0, 0, 0, pw, 0, ph))
    hp, wp = x.shape[1:3]
    q = attn.q(xqk + sine_code(grid(hp, wp), xqk.shape[-1])).flatten(1, 2)
    key = attn.reduce_norm(attn.key_reduce(xqk.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
    value = attn.reduce_norm(attn.value_reduce(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
    k = attn.k(key + sine_code(grid(hp // sr, wp // sr, step=sr), d)).flatten(1, 2)
    out = attend(q, k, attn.v(value).flatten(1, 2), attn.heads).reshape(bt, hp, wp, d)
    return attn.proj(out[:, :h, :w])


def reference_cost_memory(model: CostMemoryEncoder, feat1: Tensor, feat2: Tensor, context: Tensor) -> Tensor:
    b, c, h, w = feat1.shape
    f1, f2 = model.feature_proj(feat1).flatten(2), model.feature_proj(feat2).flatten(2)
    cost = torch.einsum("bci,bcj->bij", f1, f2).reshape(b * h * w, 1, h, w)

    embed = model.patch_embed
    p = embed.patch_size
    x = embed.convs(F.pad(cost, (0, -w % p, 0, -h % p)))
    pe = sine_code(grid(x.shape[2], x.shape[3], step=p, offset=p / 2), x.shape[1]).permute(2, 0, 1)
    x = embed.mlp_out(F.relu(embed.mlp_in(torch.cat([x, pe.expand(x.shape[0], -1, -1, -1)], 1))))
    tokens = embed.norm(x.flatten(2).transpose(1, 2))

    cross = model.cross_attention
    lat = model.latent_tokens.expand(tokens.shape[0], -1, -1)
    x = lat + cross.proj(attend(cross.q(cross.norm1(lat)), cross.k(tokens), cross.v(tokens), cross.heads))
    x = x + cross.ffn(cross.norm2(x))
    shortcut = x

    t, d = x.shape[1:]
    ctx = context.permute(0, 2, 3, 1).repeat_interleave(t, dim=0)                 # [B*T, h, w, C], image-major
    for layer, vertical in zip(model.self_attention, model.vertical_attention):
        y = layer.norm1(x)
        x = x + layer.proj(attend(layer.q(y), layer.k(y), layer.v(y), layer.heads))
        x = x + layer.ffn(layer.norm2(x))
        x = x.reshape(b, h, w, t, d).permute(0, 3, 1, 2, 4).reshape(b * t, h, w, d)
        for block, ref_attn in ((vertical.local_block, ref_local), (vertical.global_block, ref_global)):
            x = x + ref_attn(block.attn, block.norm1(x), ctx)
            x = x + block.mlp(block.norm2(x))
        x = x.reshape(b, t, h, w, d).permute(0, 2, 3, 1, 4).reshape(b * h * w, t, d)
    return x + shortcut


# ----------------------------------------------------------------------------------------------------------

def test_official_weights_load_strict(official_state):
    model = CostMemoryEncoder(VARIANTS["protoformer"])
    mapped = map_official(official_state)
    model.load_state_dict(mapped, strict=True)
    n_official = sum(1 for k in official_state if OUR_PART.fullmatch(k))
    assert len(mapped) == n_official == len(model.state_dict())


def test_matches_official_intermediates(official_state, golden):
    main, deep = golden
    model = CostMemoryEncoder(VARIANTS["protoformer"]).eval()
    model.load_state_dict(map_official(official_state), strict=True)

    captured: dict[str, Tensor] = {}
    hooks = {"patch_embed": model.patch_embed, "input_layer": model.cross_attention}
    for i in range(len(model.self_attention)):
        hooks[f"encoder_layers.{i}"] = model.self_attention[i]
        hooks[f"vertical_encoder_layers.{i}"] = model.vertical_attention[i]
        hooks[f"vertical_encoder_layers.{i}.local_block"] = model.vertical_attention[i].local_block
    for name, module in hooks.items():
        module.register_forward_hook(lambda m, i, o, name=name: captured.__setitem__(name, o))

    feat1, feat2 = deep["memory_encoder.feat_encoder#call0.1"], deep["memory_encoder.feat_encoder#call1.1"]
    with torch.no_grad():
        memory, cost_maps = model(feat1, feat2, main["context_encoder.1"])

    def check(name: str, ours: Tensor, ref: Tensor) -> None:
        assert ours.shape == ref.shape, name
        err = (ours - ref).abs().max().item()
        assert err <= 1e-4 * ref.abs().max().item(), f"{name}: max abs error {err:.3g}"

    cost_ref = deep["memory_encoder.cost_perceiver_encoder.input#call0.0"]               # [1, 1, 12, 16, 12, 16]
    check("cost maps", cost_maps, cost_ref.reshape(12 * 16, 1, 12, 16))
    for name, ours in captured.items():
        ref = deep[f"memory_encoder.cost_perceiver_encoder.{name}#call0.0"]
        if name.startswith("vertical"):                                                   # [B*T, h*w, D] layout
            ref = ref.reshape(1, 8, 12, 16, 128).permute(0, 2, 3, 1, 4)
        check(name, ours, ref)
    check("cost memory", memory, main["memory_encoder"])
    assert torch.equal(main["memory_encoder"], deep["memory_encoder#call0.0"])


@pytest.mark.parametrize("variant", ["protoformer", "protoformer-s"])
def test_matches_official_layout_reference_on_odd_grid(variant):
    """10x13 grid (case2 size): local windows pad to 14x14, global sub-sampling pads to 12x16, cost patches
    to 16x16; random weights with non-zero biases, so padded keys/values are not zero; batch of 2."""
    spec = VARIANTS[variant]
    model = perturbed(CostMemoryEncoder(spec))
    c = spec.embed_dims[1]
    feat1, feat2, context = (torch.randn(2, c, 10, 13) / math.sqrt(c) for _ in range(3))
    with torch.no_grad():
        memory, cost_maps = model(feat1, feat2, context)
        ref = reference_cost_memory(model, feat1, feat2, context)
    assert memory.shape == (2 * 10 * 13, spec.cost_latent_tokens, spec.cost_latent_dim)
    assert cost_maps.shape == (2 * 10 * 13, 1, 10, 13)
    assert (memory - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_batch_equals_single_runs(official_state):
    """Each image's latents see only that image's context (fixes the official pairing bug, NOTES 5.3)."""
    model = CostMemoryEncoder(VARIANTS["protoformer"]).eval()
    model.load_state_dict(map_official(official_state), strict=True)
    feat1, feat2 = torch.randn(2, 256, 10, 13), torch.randn(2, 256, 10, 13)
    context = torch.randn(2, 256, 10, 13)
    with torch.no_grad():
        memory, cost_maps = model(feat1, feat2, context)
        singles = [model(feat1[i:i + 1], feat2[i:i + 1], context[i:i + 1]) for i in range(2)]
        swapped_context, _ = model(feat1[:1], feat2[:1], context[1:])
    torch.testing.assert_close(memory, torch.cat([s[0] for s in singles]), rtol=0, atol=1e-5)
    torch.testing.assert_close(cost_maps, torch.cat([s[1] for s in singles]), rtol=0, atol=1e-5)
    assert (swapped_context - singles[0][0]).abs().max() > 1e-3                     # the context matters


@pytest.mark.parametrize("size", [(2, 2), (7, 8), (8, 8)])
def test_small_grids_and_gradients(size):
    spec = VARIANTS["protoformer-s"]
    model = perturbed(CostMemoryEncoder(spec)).train()
    feat1, feat2, context = (torch.randn(1, spec.embed_dims[1], *size) for _ in range(3))
    memory, cost_maps = model(feat1, feat2, context)
    (memory.square().sum() + cost_maps.square().sum()).backward()
    assert torch.isfinite(memory).all()
    assert all(p.grad is not None for p in model.parameters()), "every parameter must be used by forward"


def test_rejects_mismatched_inputs():
    model = CostMemoryEncoder(VARIANTS["protoformer-s"])
    with pytest.raises(ValueError, match="one shape"):
        model(torch.randn(1, 128, 4, 4), torch.randn(1, 128, 4, 5), torch.randn(1, 128, 4, 4))


def test_matches_perturbed_fixture(official_state, fixtures_dir):
    """golden_joint_perturbed.pt (non-trivial LayerNorms and biases everywhere). Its feature-encoder outputs are
    not stored, so they come from the project's ProtoFormerEncoder (verified separately in test_encoder.py)."""
    from core.model.encoder import OFFICIAL_KEY_MAP as ENCODER_KEY_MAP
    from core.model.encoder import OFFICIAL_UNUSED as ENCODER_UNUSED
    from core.model.encoder import ProtoFormerEncoder

    fixture = torch.load(fixtures_dir / "golden_joint_perturbed.pt", weights_only=True)
    state = {**official_state, **fixture["state_dict_delta"]}
    spec = VARIANTS["protoformer"]
    model = CostMemoryEncoder(spec).eval()
    model.load_state_dict(map_official(state), strict=True)

    encoder = ProtoFormerEncoder(spec).eval()
    prefix = "memory_encoder.feat_encoder."
    encoder_state = {}
    for key, value in state.items():
        rel = key[len(prefix):]
        if key.startswith(prefix) and not any(re.fullmatch(p, rel) for p in ENCODER_UNUSED):
            encoder_state[next(m.expand(r) for p, r in ENCODER_KEY_MAP if (m := re.fullmatch(p, rel)))] = value.float()
    encoder.load_state_dict(encoder_state, strict=True)

    with torch.no_grad():
        images = torch.cat([fixture["image1"], fixture["image2"]]) / 127.5 - 1.0
        feat1, feat2 = encoder(images)[1].chunk(2)
        memory, _ = model(feat1, feat2, fixture["intermediates"]["context_encoder.1"])
    ref = fixture["intermediates"]["memory_encoder"]
    err = (memory - ref).abs().max().item()
    assert err <= 1e-4 * ref.abs().max().item(), f"max abs error {err:.3g}"
