"""ProtoFormerEncoder and its prototype token mixer vs the official model's golden outputs (NOTES §1, §2.2-2.3)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from core.model.encoder import OFFICIAL_KEY_MAP, OFFICIAL_UNUSED, ProtoFormerEncoder
from core.model.prototyping import PrototypeTokenMixer
from core.model.variants import VARIANTS

CONTEXT = "context_encoder."
FEATURE = "memory_encoder.feat_encoder."
RTOL = 1e-4  # of max |reference| (NOTES §1.2)


def _load(path: Path) -> dict:
    if not path.is_file():
        pytest.skip(f"fixture {path.name} not found in {path.parent}")
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def weights(fixtures_dir: Path) -> dict[str, Tensor]:
    return _load(fixtures_dir / "weights_seed0_fp16.pt")


@pytest.fixture(scope="module")
def golden(fixtures_dir: Path) -> dict:
    return _load(fixtures_dir / "golden_flow.pt")


@pytest.fixture(scope="module")
def deep(fixtures_dir: Path) -> dict:
    return _load(fixtures_dir / "golden_flow_deep.pt")


@pytest.fixture(scope="module")
def perturbed(fixtures_dir: Path) -> dict:
    return _load(fixtures_dir / "golden_joint_perturbed.pt")


def _convert(state_dict: dict[str, Tensor], prefix: str) -> tuple[dict[str, Tensor], list[str]]:
    """Our state_dict for the encoder under official ``prefix`` (float32), and the official keys left unused."""
    converted, unused = {}, []
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        if any(re.fullmatch(pattern, rest) for pattern in OFFICIAL_UNUSED):
            unused.append(rest)
            continue
        for pattern, replacement in OFFICIAL_KEY_MAP:
            match = re.fullmatch(pattern, rest)
            if match:
                ours = match.expand(replacement)
                assert ours not in converted, f"two official keys map to {ours}"
                converted[ours] = value.float()
                break
        else:
            raise AssertionError(f"official key {key} is neither mapped nor listed as unused")
    return converted, unused


def _official_encoder(state_dict: dict[str, Tensor], prefix: str) -> ProtoFormerEncoder:
    encoder = ProtoFormerEncoder(VARIANTS["protoformer"]).eval()
    encoder.load_state_dict(_convert(state_dict, prefix)[0], strict=True)
    return encoder


def _normalise(image: Tensor) -> Tensor:
    return 2.0 * (image / 255.0) - 1.0


def _mixer(encoder: ProtoFormerEncoder, official_name: str) -> PrototypeTokenMixer:
    stage, block = re.search(r"blocks\.(\d+)\.(\d+)\.attn", official_name).groups()
    return encoder.stages[int(stage)].blocks[int(block)].mixer


def _assert_close(ours: Tensor, ref: Tensor, what: str) -> float:
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} vs {tuple(ref.shape)}"
    err = (ours - ref).abs().max().item()
    assert err <= RTOL * ref.abs().max().item(), f"{what}: max abs error {err:.3g} (max |ref| {ref.abs().max():.3g})"
    return err


def _dense_reference_mixer(mixer: PrototypeTokenMixer, tokens: Tensor, size: tuple[int, int]) -> Tensor:
    """NOTES §2.3 transcribed literally (dense one-hot mask, broadcast sums, official reshapes); slow but plain."""
    batch, num_tokens, channels = tokens.shape
    height, width = size
    d, grid = mixer.head_dim, mixer.prototyping.grid
    x = tokens.transpose(1, 2).reshape(batch, channels, height, width)
    emb = mixer.embed_proj(x).reshape(-1, d, height, width)
    key = mixer.key_proj(x).reshape(-1, d, height, width)
    val = mixer.value_proj(x).reshape(-1, d, height, width)
    b = emb.shape[0]
    key_rows, val_rows = key.reshape(b, num_tokens, d), val.reshape(b, num_tokens, d)
    prior = F.adaptive_avg_pool2d(val, grid).reshape(b, grid * grid, d)
    centres = F.adaptive_avg_pool2d(emb, grid)
    for _ in range(mixer.prototyping.iters):
        c = mixer.prototyping.update_proj(centres).reshape(b, grid * grid, d)
        attn = (F.normalize(c, dim=-1) @ F.normalize(key_rows, dim=-1).transpose(1, 2)).softmax(dim=1)
        centres = (attn @ val_rows).reshape(b, d, grid, grid)
    sync = mixer.synchronization
    cos = F.normalize(centres.reshape(b, d, -1).transpose(1, 2), dim=-1) @ F.normalize(emb.reshape(b, d, -1), dim=1)
    sim = torch.sigmoid(sync.sim_beta + sync.sim_alpha * cos)  # [b, K, N]
    mask = torch.zeros_like(sim).scatter_(1, sim.argmax(dim=1, keepdim=True), 1.0)
    sim = sim * mask
    agg = ((val_rows[:, None] * sim[..., None]).sum(2) + prior) / (mask.sum(-1, keepdim=True) + 1.0)
    out = (agg[:, :, None] * sim[..., None]).sum(1).reshape(batch, channels, height, width)
    return mixer.out_proj(out).reshape(batch, channels, num_tokens).transpose(1, 2)


def test_key_map_covers_the_official_encoder(weights):
    for prefix in (CONTEXT, FEATURE):
        converted, unused = _convert(weights, prefix)
        assert sorted(unused) == ["svt.norm.bias", "svt.norm.weight"]
        ours = ProtoFormerEncoder(VARIANTS["protoformer"]).state_dict()
        assert set(converted) == set(ours)
        assert all(converted[k].shape == ours[k].shape for k in ours)


@torch.no_grad()
def test_every_clustering_call_matches_official(weights, deep):
    encoders = {CONTEXT: _official_encoder(weights, CONTEXT), FEATURE: _official_encoder(weights, FEATURE)}
    assert len(deep["clustering_inputs"]) == 12
    for name, tokens in deep["clustering_inputs"].items():
        encoder = encoders[CONTEXT if name.startswith(CONTEXT) else FEATURE]
        size = {24 * 32: (24, 32), 12 * 16: (12, 16)}[tokens.shape[1]]  # stage 1 / 2 of the 96x128 input
        out, assignment = _mixer(encoder, name).mix(tokens, size)
        reference_assignment = deep["clustering_assign"][name].long()
        flipped = assignment[0] != reference_assignment
        # A flip is acceptable only at an fp32 near-tie (NOTES §1.2); none occur on this input.
        assert (deep["clustering_top1_top2_gap"][name][flipped] < 1e-5).all(), f"{name}: assignments differ"
        _assert_close(out, deep["intermediates"][name + ".0"], name)


@torch.no_grad()
def test_context_encoder_matches_official(weights, golden):
    features = _official_encoder(weights, CONTEXT)(_normalise(golden["image1"]))
    for level in range(2):
        _assert_close(features[level], golden["intermediates"][f"context_encoder.{level}"], f"context level {level}")


@torch.no_grad()
def test_feature_encoder_matches_official_on_both_frames(weights, golden, deep):
    encoder = _official_encoder(weights, FEATURE)
    for call, image in enumerate((golden["image1"], golden["image2"])):
        features = encoder(_normalise(image))
        for level in range(2):
            reference = deep["intermediates"][f"memory_encoder.feat_encoder#call{call}.{level}"]
            _assert_close(features[level], reference, f"feature encoder call {call} level {level}")


@torch.no_grad()
def test_context_encoder_matches_official_with_perturbed_constants(weights, perturbed):
    state_dict = {**weights, **perturbed["state_dict_delta"]}
    encoder = _official_encoder(state_dict, CONTEXT)
    assert encoder.stages[0].blocks[0].mixer.synchronization.sim_alpha.item() != 1.0
    features = encoder(_normalise(perturbed["image1"]))
    for level in range(2):
        reference = perturbed["intermediates"][f"context_encoder.{level}"]
        _assert_close(features[level], reference, f"perturbed context level {level}")


@torch.no_grad()
def test_batch_equals_single_runs(weights, golden, perturbed):
    encoder = _official_encoder(weights, CONTEXT)
    images = _normalise(torch.cat([golden["image1"], perturbed["image1"]]))
    batched = encoder(images)
    singles = [encoder(images[i : i + 1]) for i in range(2)]
    for level in range(2):
        _assert_close(batched[level], torch.cat([s[level] for s in singles]), f"batched level {level}")


@torch.no_grad()
def test_uneven_size_matches_dense_reference(weights, golden):
    """80x104 (case 2): pooling bins that do not divide evenly, N not a multiple of head_dim, 10x13 at 1/8."""
    encoder = _official_encoder(weights, CONTEXT)
    captured: list[tuple[PrototypeTokenMixer, Tensor, tuple[int, int], Tensor]] = []
    hooks = [
        block.mixer.register_forward_hook(lambda m, args, out: captured.append((m, args[0], args[1], out)))
        for stage in encoder.stages
        for block in stage.blocks
    ]
    features = encoder(_normalise(golden["case2_image1"]))
    for hook in hooks:
        hook.remove()
    assert [tuple(f.shape) for f in features] == [(1, 128, 20, 26), (1, 256, 10, 13)]
    assert [c[2] for c in captured] == [(20, 26), (20, 26), (10, 13), (10, 13)]
    for index, (mixer, tokens, size, out) in enumerate(captured):
        _assert_close(out, _dense_reference_mixer(mixer, tokens, size), f"mixer {index} at {size}")


def test_small_variant_shapes_and_gradients():
    spec = VARIANTS["protoformer-s"]
    encoder = ProtoFormerEncoder(spec)
    features = encoder(torch.rand(2, 3, 64, 96) * 2 - 1)
    assert [tuple(f.shape) for f in features] == [(2, spec.embed_dims[0], 16, 24), (2, spec.embed_dims[1], 8, 12)]
    sum(f.square().mean() for f in features).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in encoder.parameters())
    mixer = encoder.stages[0].blocks[0].mixer
    _, assignment = mixer.mix(torch.randn(1, 16 * 24, spec.embed_dims[0]), (16, 24))
    assert assignment.shape == (1, spec.embed_dims[0] // spec.head_dim, 16 * 24)
    assert int(assignment.max()) < spec.prototype_grid**2


def test_official_initialisation():
    encoder = ProtoFormerEncoder(VARIANTS["protoformer"])
    sync = encoder.stages[1].blocks[0].mixer.synchronization
    assert sync.sim_alpha.item() == 1.0 and sync.sim_beta.item() == 0.0
    block = encoder.stages[0].blocks[0]
    assert torch.all(block.norm1.weight == 1) and torch.all(block.norm1.bias == 0)
    assert torch.all(block.mixer_adapter.down.bias == 0) and torch.all(block.mlp.fc1.bias == 0)
    assert block.mlp.fc1.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert block.mixer_adapter.up.weight.abs().max().item() <= 2.0
    assert block.mixer.embed_proj.weight.std().item() == pytest.approx((2.0 / 128) ** 0.5, rel=0.05)
    assert encoder.stages[0].peg.proj.weight.std().item() == pytest.approx((2.0 / 9) ** 0.5, rel=0.1)


def test_bad_input_is_rejected():
    encoder = ProtoFormerEncoder(VARIANTS["protoformer-s"])
    with pytest.raises(ValueError, match="divisible by 8"):
        encoder(torch.zeros(1, 3, 60, 96))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        encoder(torch.zeros(1, 1, 64, 96))
