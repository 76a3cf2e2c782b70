"""Flow and depth decoders against the official ``flow_header`` / ``depth_header`` (golden fixtures), plus unit checks.

Fixture inputs: the cost memory, cost maps and context maps that the official model fed its heads (hooked), so
these tests exercise only the decoders. The perturbed fixture has GMA gamma != 0 and non-trivial LayerNorms; it
stores no cost maps, so there the flow decoder is checked stage by stage with the official per-call inputs.
"""

from __future__ import annotations

import re
from collections import defaultdict

import pytest
import torch

from core.model import depth_decoder, flow_decoder
from core.model.depth_decoder import DEPTH_ITERS, DepthDecoder
from core.model.flow_decoder import FlowDecoder, cost_window_offsets, sample_cost_window
from core.model.layers import MASK_SCALE, SepConvGRU, convex_upsample
from core.model.variants import VARIANTS
from core.utils.geometry import coords_grid

SPEC = VARIANTS["protoformer"]
ITERS = 12


# ----------------------------------------------------------------------------------------------- helpers
def map_official(module, prefix: str, state_dict: dict) -> tuple[dict, list[str]]:
    """Apply a module's OFFICIAL_KEY_MAP / OFFICIAL_UNUSED to the official keys under ``prefix``."""
    mapped, unused = {}, []
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        if any(re.fullmatch(p, rest) for p in module.OFFICIAL_UNUSED):
            unused.append(key)
            continue
        for pattern, replacement in module.OFFICIAL_KEY_MAP:
            match = re.fullmatch(pattern, rest)
            if match:
                ours = match.expand(replacement)
                assert ours not in mapped, f"two official keys map to {ours}"
                mapped[ours] = value
                break
        else:
            raise AssertionError(f"official key {key} is neither mapped nor listed as unused")
    return mapped, unused


def load(path):
    return torch.load(path, weights_only=True)


def official_weights(fixtures_dir, delta: dict | None = None) -> dict:
    """weights_seed0_fp16.pt (optionally overwritten by a fixture's ``state_dict_delta``), floats as float32."""
    weights = load(fixtures_dir / "weights_seed0_fp16.pt")
    weights.update(delta or {})
    return {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}


def build_flow(weights: dict) -> FlowDecoder:
    model = FlowDecoder(SPEC).eval()
    model.load_state_dict(map_official(flow_decoder, "flow_header.", weights)[0], strict=True)
    return model


def build_depth(weights: dict) -> DepthDecoder:
    model = DepthDecoder(SPEC).eval()
    model.load_state_dict(map_official(depth_decoder, "depth_header.", weights)[0], strict=True)
    return model


def assert_close(ours, ref, rtol: float = 1e-4, atol: float | None = None, what: str = ""):
    """|ours - ref| <= atol, with atol defaulting to rtol * max|ref| (NOTES 1.2)."""
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} vs {tuple(ref.shape)}"
    tol = atol if atol is not None else rtol * max(ref.abs().max().item(), 1e-6)
    err = (ours - ref).abs().max().item()
    assert err <= tol, f"{what}: max abs error {err:.3g} > {tol:.3g}"


def record_calls(model, names):
    """Forward hooks that append every output of the named sub-modules to a list (one entry per call)."""
    calls, handles = defaultdict(list), []
    for name in names:
        module = model.get_submodule(name)
        handles.append(module.register_forward_hook(lambda m, i, o, name=name: calls[name].append(o.detach())))
    return calls, handles


@pytest.fixture(scope="module")
def seed0_weights(fixtures_dir):
    return official_weights(fixtures_dir)


@pytest.fixture(scope="module")
def flow_case(fixtures_dir):
    golden = load(fixtures_dir / "golden_flow.pt")
    deep = load(fixtures_dir / "golden_flow_deep.pt")["intermediates"]
    cost_maps = deep["memory_encoder.cost_perceiver_encoder.input#call0.0"].reshape(12 * 16, 1, 12, 16)
    hooked = golden["intermediates"]
    return golden, deep, hooked["memory_encoder"], cost_maps, hooked["context_encoder.1"]


@pytest.fixture(scope="module")
def perturbed(fixtures_dir):
    golden = load(fixtures_dir / "golden_joint_perturbed.pt")
    deep = load(fixtures_dir / "golden_joint_perturbed_deep.pt")["intermediates"]
    return golden, deep, official_weights(fixtures_dir, golden["state_dict_delta"])


# ----------------------------------------------------------------------------------------------- weights
def test_official_keys_map_and_load_strictly(seed0_weights):
    weights = seed0_weights
    for module, prefix, cls, unused_params in (
        (flow_decoder, "flow_header.", FlowDecoder, 2 * 319 * 128),  # GMA rel-position tables
        (depth_decoder, "depth_header.", DepthDecoder, 259_393),  # NOTES 4
    ):
        mapped, unused = map_official(module, prefix, weights)
        model = cls(SPEC)
        model.load_state_dict(mapped, strict=True)  # also checks every shape
        assert set(mapped) == set(model.state_dict())
        assert sum(weights[k].numel() for k in unused if weights[k].is_floating_point()) == unused_params
        n_official = sum(v.numel() for k, v in weights.items() if k.startswith(prefix) and v.is_floating_point())
        assert sum(p.numel() for p in model.parameters()) == n_official - unused_params


# ----------------------------------------------------------------------------------------------- flow
def test_flow_decoder_matches_official(seed0_weights, flow_case):
    golden, deep, cost_memory, cost_maps, context = flow_case
    model = build_flow(seed0_weights)
    names = ["context_proj", "gma_attention", "cost_query", "memory_decoder", "motion_encoder",
             "motion_aggregator", "gru", "flow_head", "mask_head"]
    calls, handles = record_calls(model, names)
    with torch.no_grad():
        flows, flow_low = model(cost_memory, cost_maps, context, ITERS)
        key, value = model.memory_decoder.memory_key_value(cost_memory)
    for handle in handles:
        handle.remove()

    reference = golden["outputs_all_iterations"]["flow_predictions_all"]
    assert len(flows) == ITERS
    for step in range(ITERS):
        assert_close(flows[step], reference[step], atol=1e-4, what=f"flow iteration {step}")
    assert_close(flow_low, golden["outputs"]["flow_low"], atol=1e-4, what="flow_low")

    h = "flow_header."
    assert_close(calls["context_proj"][0], deep[h + "proj#call0.0"], what="context projection")
    assert_close(calls["gma_attention"][0], deep[h + "att#call0.0"][:, 0], what="GMA attention")
    assert_close(key.transpose(1, 2).flatten(2), deep[h + "decoder_layer#call0.1"], what="memory keys")
    assert_close(value.transpose(1, 2).flatten(2), deep[h + "decoder_layer#call0.2"], what="memory values")
    pairs = {
        "cost_query": "flow_token_encoder", "memory_decoder": "decoder_layer",
        "motion_encoder": "update_block.encoder", "motion_aggregator": "update_block.aggregator",
        "gru": "update_block.gru", "flow_head": "update_block.flow_head",
    }
    for ours, official in pairs.items():
        assert len(calls[ours]) == ITERS
        for step in range(ITERS):
            assert_close(calls[ours][step], deep[f"{h}{official}#call{step}.0"], what=f"{ours} iteration {step}")
    for step in (0, ITERS - 1):
        mask = MASK_SCALE * calls["mask_head"][step]
        assert_close(mask, deep[f"{h}update_block#call{step}.1"], what=f"upsampling mask iteration {step}")


def test_flow_decoder_warm_start(seed0_weights, flow_case):
    golden, _, cost_memory, cost_maps, context = flow_case
    model = build_flow(seed0_weights)
    with torch.no_grad():
        flow_init = golden["warm_flow_init"]
        flows, flow_low = model(cost_memory, cost_maps, context, ITERS, flow_init=flow_init, return_all=False)
    assert len(flows) == 1
    assert_close(flows[0], golden["warm_outputs"]["flow_up"], atol=1e-4, what="warm flow_up")
    assert_close(flow_low, golden["warm_outputs"]["flow_low"], atol=1e-4, what="warm flow_low")
    assert (flow_low - golden["outputs"]["flow_low"]).abs().max() > 1e-2  # the warm start changes the result


def test_flow_decoder_perturbed_stagewise(perturbed):
    """GMA gamma != 0 and perturbed LayerNorms; each stage is fed the official inputs of that call."""
    golden, deep, weights = perturbed
    model = build_flow(weights)
    h = "flow_header."
    assert model.motion_aggregator.gamma.item() != 0
    context = golden["intermediates"]["context_encoder.1"]
    with torch.no_grad():
        projected = model.context_proj(context)
        assert_close(projected, deep[h + "proj#call0.0"], what="context projection")
        net, inp = torch.tanh(projected[:, :128]), torch.relu(projected[:, 128:])
        attention = model.gma_attention(inp)
        assert_close(attention, deep[h + "att#call0.0"][:, 0], what="GMA attention")
        key, value = model.memory_decoder.memory_key_value(golden["intermediates"]["memory_encoder"])
        assert_close(key.transpose(1, 2).flatten(2), deep[h + "decoder_layer#call0.1"], what="memory keys")
        coords0 = coords_grid(1, 12, 16)
        coords1 = coords0
        for step in range(ITERS):
            query = deep[f"{h}flow_token_encoder#call{step}.0"]
            global_cost = model.memory_decoder(query, coords1, key, value)
            assert_close(global_cost, deep[f"{h}decoder_layer#call{step}.0"], what=f"memory decoder iteration {step}")
            motion = deep[f"{h}update_block.encoder#call{step}.0"]
            motion_global = model.motion_aggregator(attention, motion)
            assert_close(motion_global, deep[f"{h}update_block.aggregator#call{step}.0"], what=f"GMA iteration {step}")
            net = model.gru(net, torch.cat([inp, motion, deep[f"{h}update_block.aggregator#call{step}.0"]], dim=1))
            assert_close(net, deep[f"{h}update_block.gru#call{step}.0"], what=f"GRU iteration {step}")
            net = deep[f"{h}update_block.gru#call{step}.0"]
            delta = model.flow_head(net)
            assert_close(delta, deep[f"{h}update_block.flow_head#call{step}.0"], what=f"flow head iteration {step}")
            coords1 = coords1 + deep[f"{h}update_block.flow_head#call{step}.0"]
        mask = MASK_SCALE * model.mask_head(net)
        assert_close(mask, deep[f"{h}update_block#call{ITERS - 1}.1"], what="upsampling mask")
        flow_up = convex_upsample(coords1 - coords0, mask, 8, scale=8)
    assert_close(coords1 - coords0, golden["outputs"]["flow_low"], atol=1e-4, what="flow_low")
    assert_close(flow_up, golden["outputs"]["flow_up"], atol=1e-4, what="flow_up")


def test_cost_window_lookup_order_and_zeros():
    """Channel 9p+q samples (x + p - 4, y + q - 4): x varies slowest; bilinear inside, zero outside."""
    height, width = 6, 7
    ys, xs = torch.meshgrid(torch.arange(height).float(), torch.arange(width).float(), indexing="ij")
    ramp = (100 * xs + ys + 1).expand(height * width, 1, height, width)  # cost(x, y) = 100 x + y + 1
    coords = coords_grid(1, height, width) + torch.tensor([0.25, 0.5]).view(1, 2, 1, 1)
    samples = sample_cost_window(ramp, coords, cost_window_offsets(4))
    assert samples.shape == (1, 81, height, width)
    px, py = 3, 2  # source pixel; it looks around (3.25, 2.5)
    for p in range(9):
        for q in range(9):
            x, y = px + 0.25 + p - 4, py + 0.5 + q - 4
            inside = 0 <= x <= width - 1 and 0 <= y <= height - 1
            expected = 100 * x + y + 1 if inside else None
            value = samples[0, 9 * p + q, py, px].item()
            if expected is not None:
                assert value == pytest.approx(expected, abs=1e-3)
            elif x < -1 or x > width or y < -1 or y > height:
                assert value == 0.0


# ----------------------------------------------------------------------------------------------- depth
def test_depth_decoder_matches_official(fixtures_dir, seed0_weights):
    golden = load(fixtures_dir / "golden_depth.pt")
    model = build_depth(seed0_weights)
    context = [golden["intermediates"]["context_encoder.0"], golden["intermediates"]["context_encoder.1"]]
    with torch.no_grad():
        disparities = model(context)
        last = model(context, return_all=False)
    reference = golden["outputs_all_iterations"]["depth_predictions_all"]
    assert len(disparities) == DEPTH_ITERS
    for step in range(DEPTH_ITERS):
        assert_close(disparities[step], reference[step], atol=1e-5, what=f"disparity iteration {step}")
    assert len(last) == 1 and torch.equal(last[0], disparities[-1])
    assert_close(last[0], golden["outputs"]["disp_up"], atol=1e-5, what="disp_up")


def test_depth_decoder_perturbed(perturbed):
    golden, deep, weights = perturbed
    model = build_depth(weights)
    names = ["init_from_feat8", "input_from_state1", "input_from_feat4", "input_from_state3", "gru",
             "motion_encoder", "disp_head", "mask_head"]
    calls, handles = record_calls(model, names)
    context = [golden["intermediates"]["context_encoder.0"], golden["intermediates"]["context_encoder.1"]]
    with torch.no_grad():
        disparities = model(context)
    for handle in handles:
        handle.remove()
    reference = golden["outputs_all_iterations"]["depth_predictions_all"]
    for step in range(DEPTH_ITERS):
        assert_close(disparities[step], reference[step], atol=1e-5, what=f"disparity iteration {step}")
    h = "depth_header."
    single = {"init_from_feat8": "convX31", "input_from_state1": "convX32", "input_from_feat4": "convX21",
              "input_from_state3": "convX22"}
    for ours, official in single.items():
        assert_close(calls[ours][0], deep[f"{h}{official}#call0.0"], what=ours)
    repeated = {
        "gru": ("gruc", 3), "motion_encoder": ("update_block.encoder", 4), "disp_head": ("update_block.depth_head", 4),
    }
    for ours, (official, count) in repeated.items():
        assert len(calls[ours]) == count
        for step in range(count):
            assert_close(calls[ours][step], deep[f"{h}{official}#call{step}.0"], what=f"{ours} call {step}")
    for step in (0, DEPTH_ITERS - 1):
        assert_close(MASK_SCALE * calls["mask_head"][step], deep[f"{h}update_block#call{step}.1"], what=f"mask {step}")


# ----------------------------------------------------------------------------------------------- generic behaviour
def random_flow_inputs(spec, batch: int, height: int, width: int, tokens: int = 8):
    n = batch * height * width
    return (
        torch.randn(n, tokens, spec.cost_latent_dim),
        3 * torch.randn(n, 1, height, width),
        torch.randn(batch, spec.embed_dims[1], height, width),
    )


def test_flow_batch_equals_single_runs(flow_case, perturbed):
    _, _, cost_memory, cost_maps, context = flow_case
    model = build_flow(perturbed[2])  # gamma != 0: GMA must not mix images
    other = random_flow_inputs(SPEC, 1, 12, 16)
    flow_init = torch.randn(2, 2, 12, 16)
    with torch.no_grad():
        batched, low = model(torch.cat([cost_memory, other[0]]), torch.cat([cost_maps, other[1]]),
                             torch.cat([context, other[2]]), 3, flow_init=flow_init)
        for b, inputs in enumerate([(cost_memory, cost_maps, context), other]):
            single, single_low = model(*inputs, 3, flow_init=flow_init[b : b + 1])
            for step in range(3):
                assert_close(batched[step][b : b + 1], single[step], atol=1e-4, what=f"image {b} iteration {step}")
            assert_close(low[b : b + 1], single_low, atol=1e-5, what=f"image {b} flow_low")


def test_depth_batch_equals_single_runs(perturbed):
    golden, _, weights = perturbed
    model = build_depth(weights)
    first = [golden["intermediates"]["context_encoder.0"], golden["intermediates"]["context_encoder.1"]]
    second = [torch.randn_like(first[0]), torch.randn_like(first[1])]
    with torch.no_grad():
        batched = model([torch.cat([a, b]) for a, b in zip(first, second)])
        for b, context in enumerate([first, second]):
            for step, disparity in enumerate(model(context)):
                assert_close(batched[step][b : b + 1], disparity, atol=1e-6, what=f"image {b} iteration {step}")


def test_small_variant_builds_and_runs():
    spec = VARIANTS["protoformer-s"]
    flow, depth = FlowDecoder(spec).eval(), DepthDecoder(spec).eval()
    with torch.no_grad():
        flows, flow_low = flow(*random_flow_inputs(spec, 2, 5, 7, tokens=spec.cost_latent_tokens), iters=4)
        disparities = depth([torch.randn(2, spec.embed_dims[0], 8, 12), torch.randn(2, spec.embed_dims[1], 4, 6)])
    assert len(flows) == 4 and all(f.shape == (2, 2, 40, 56) and torch.isfinite(f).all() for f in flows)
    assert flow_low.shape == (2, 2, 5, 7)
    assert len(disparities) == DEPTH_ITERS
    assert all(d.shape == (2, 1, 32, 48) and (d > 0).all() and (d < 1).all() for d in disparities)
    assert sum(p.numel() for p in flow.parameters()) < sum(p.numel() for p in FlowDecoder(SPEC).parameters()) / 2


def test_gradients_reach_every_parameter_in_train_mode():
    spec = VARIANTS["protoformer-s"]
    flow, depth = FlowDecoder(spec).train(), DepthDecoder(spec).train()
    with torch.no_grad():
        flow.motion_aggregator.gamma.fill_(0.5)
    memory, cost_maps, context = random_flow_inputs(spec, 1, 6, 8, tokens=spec.cost_latent_tokens)
    memory.requires_grad_(True)
    flow_init = torch.zeros(1, 2, 6, 8, requires_grad=True)
    flows, _ = flow(memory, cost_maps, context, iters=3, flow_init=flow_init)
    assert len(flows) == 3
    sum(f.square().mean() for f in flows).backward()
    for name, param in flow.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"no gradient for flow_decoder.{name}"
    assert memory.grad is not None and memory.grad.abs().sum() > 0
    assert flow_init.grad is None  # coords1 is detached at the start of every iteration (official)

    disparities = depth([torch.randn(1, spec.embed_dims[0], 8, 10), torch.randn(1, spec.embed_dims[1], 4, 5)])
    sum(d.mean() for d in disparities).backward()
    for name, param in depth.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"no gradient for depth_decoder.{name}"


def test_flow_return_all_false_gives_the_last_prediction():
    spec = VARIANTS["protoformer-s"]
    flow = FlowDecoder(spec).eval()
    inputs = random_flow_inputs(spec, 1, 4, 5, tokens=spec.cost_latent_tokens)
    with torch.no_grad():
        every, low = flow(*inputs, iters=3)
        last, last_low = flow(*inputs, iters=3, return_all=False)
    assert len(last) == 1 and torch.equal(last[0], every[-1]) and torch.equal(low, last_low)


def test_decoders_run_under_cpu_autocast():
    spec = VARIANTS["protoformer-s"]
    flow, depth = FlowDecoder(spec).eval(), DepthDecoder(spec).eval()
    inputs = random_flow_inputs(spec, 1, 4, 6, tokens=spec.cost_latent_tokens)
    context = [torch.randn(1, spec.embed_dims[0], 8, 12), torch.randn(1, spec.embed_dims[1], 4, 6)]
    with torch.no_grad():
        reference = depth(context)[-1]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            flows, flow_low = flow(*inputs, iters=2)
            disparity = depth(context)[-1]
    assert torch.isfinite(flows[-1]).all() and flow_low.dtype == torch.float32  # coordinates stay fp32
    assert (disparity.float() - reference).abs().max() < 0.05


def test_convex_upsample_hand_values():
    values = torch.arange(6.0).view(1, 1, 2, 3)
    mask = torch.full((1, 9 * 4, 2, 3), -1e4)
    mask[:, 4 * 4 : 5 * 4] = 0.0  # all weight on the centre neighbour (index 4) -> nearest upsampling
    up = convex_upsample(values, mask, factor=2, scale=3.0)
    assert torch.equal(up, 3.0 * values.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
    uniform = convex_upsample(torch.ones(1, 2, 3, 3), torch.zeros(1, 9 * 4, 3, 3), factor=2)
    assert uniform[0, 0, 2, 2] == pytest.approx(1.0)  # centre cell: all 9 neighbours exist
    assert uniform[0, 0, 0, 0] == pytest.approx(4 / 9)  # corner cell: 5 zero-padded neighbours
    with pytest.raises(ValueError, match="mask"):
        convex_upsample(values, torch.zeros(1, 10, 2, 3), factor=2)


def test_sep_conv_gru_keeps_state_when_update_gate_is_closed():
    gru = SepConvGRU(hidden_dim=4, input_dim=3, kernel_size=3)
    for gate_pass in (gru.horizontal, gru.vertical):
        torch.nn.init.zeros_(gate_pass.update_gate.weight)
        torch.nn.init.constant_(gate_pass.update_gate.bias, -1e4)  # z = 0 -> h' = h
    hidden = torch.randn(2, 4, 5, 6)
    assert torch.equal(gru(hidden, torch.randn(2, 3, 5, 6)), hidden)


def test_bad_inputs_raise_clear_errors():
    spec = VARIANTS["protoformer-s"]
    flow, depth = FlowDecoder(spec), DepthDecoder(spec)
    memory, cost_maps, context = random_flow_inputs(spec, 1, 4, 5, tokens=spec.cost_latent_tokens)
    with pytest.raises(ValueError, match="cost_maps"):
        flow(memory, cost_maps[:, :, :3], context, iters=2)
    with pytest.raises(ValueError, match="cost_memory"):
        flow(memory[:-1], cost_maps, context, iters=2)
    with pytest.raises(ValueError, match="context"):
        flow(memory, cost_maps, context[:, :-1], iters=2)
    with pytest.raises(ValueError, match="iters"):
        flow(memory, cost_maps, context, iters=0)
    with pytest.raises(ValueError, match="flow_init"):
        flow(memory, cost_maps, context, iters=2, flow_init=torch.zeros(1, 2, 5, 4))
    feat4, feat8 = torch.randn(1, spec.embed_dims[0], 8, 8), torch.randn(1, spec.embed_dims[1], 4, 4)
    with pytest.raises(ValueError, match="twice"):
        depth([feat4[..., :6], feat8])
    with pytest.raises(ValueError, match="at least 4"):
        depth([feat4[..., :6, :6], feat8[..., :3, :3]])
    with pytest.raises(ValueError, match="feat4, feat8"):
        depth(feat8)
