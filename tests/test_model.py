"""The whole ProtoFormer against the official implementation's golden outputs, and its public contract.

Golden files (../shared/fixtures/protoformer) hold the outputs of the official code for the seed-0 weights:
every refinement iteration of flow, the depth head, a second input size (80x104), a warm start, and a
"perturbed" joint model whose constant-initialised parameters were redrawn (it exercises GMA, biases, norms and
the clustering scalars). Tolerances follow the fixture notes (§1.2): flow 1e-4 px, disparity 1e-5.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from core.config import load_config
from core.model import VARIANTS, build_model, cost_memory, flow_decoder, layers
from core.model.checkpoint import CheckpointError, convert_official_state_dict, load_weights, read_checkpoint
from core.model.cost_memory import CostMemoryEncoder
from core.model.flow_decoder import GMAAttention
from core.model.protoformer import ProtoFormer

REPO = Path(__file__).resolve().parents[1]
OFFICIAL_PARAMETERS = 15_987_814


def _official_weights(fixtures_dir: Path, golden: dict) -> dict[str, torch.Tensor]:
    state = torch.load(fixtures_dir / "weights_seed0_fp16.pt", weights_only=True)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    for key, value in golden.get("state_dict_delta", {}).items():
        state[key] = value.float()
    return state


_MODELS: dict[str, ProtoFormer] = {}


def _official_model(fixtures_dir: Path, golden: dict, model_type: str) -> ProtoFormer:
    """The official-size model with the fixture's weights (loaded with the ``module.`` prefix of the releases)."""
    if model_type not in _MODELS:
        model = ProtoFormer(VARIANTS["protoformer"], model_type=model_type, iters=12)
        load_weights(model, {f"module.{k}": v for k, v in _official_weights(fixtures_dir, golden).items()})
        _MODELS[model_type] = model.eval()
    return _MODELS[model_type]


@pytest.fixture(scope="module")
def golden(fixtures_dir):
    names = {"flow": "golden_flow.pt", "depth": "golden_depth.pt", "joint": "golden_joint_perturbed.pt"}
    yield {t: torch.load(fixtures_dir / n, weights_only=True) for t, n in names.items()}
    _MODELS.clear()


@pytest.mark.parametrize("model_type", ["flow", "joint"])
@pytest.mark.parametrize("case", ["main", "case2", "warm"])
def test_flow_matches_official_every_iteration(fixtures_dir, golden, model_type, case):
    ref = golden[model_type]
    model = _official_model(fixtures_dir, ref, model_type)
    prefix = "" if case in ("main", "warm") else "case2_"
    flow_init = ref["warm_flow_init"] if case == "warm" else None
    with torch.no_grad():
        out = model(ref[prefix + "image1"], ref[prefix + "image2"], iters=12, flow_init=flow_init, return_all=True)
    expected = {"main": ref["outputs"], "case2": ref["case2_outputs"], "warm": ref["warm_outputs"]}[case]
    torch.testing.assert_close(out["flow"][-1], expected["flow_up"], atol=1e-4, rtol=0)
    torch.testing.assert_close(out["flow_low"], expected["flow_low"], atol=1e-4, rtol=0)
    if case == "main":
        all_iters = ref["outputs_all_iterations"]["flow_predictions_all"]
        assert len(out["flow"]) == 12
        for i, (ours, theirs) in enumerate(zip(out["flow"], all_iters)):
            torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0, msg=lambda m: f"iteration {i}: {m}")
    if model_type == "joint":
        torch.testing.assert_close(out["disparity"][-1], expected["disp_up"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_type", ["depth", "joint"])
@pytest.mark.parametrize("case", ["main", "case2"])
def test_depth_matches_official_every_iteration(fixtures_dir, golden, model_type, case):
    ref = golden[model_type]
    model = _official_model(fixtures_dir, ref, model_type)
    prefix = "" if case == "main" else "case2_"
    with torch.no_grad():
        out = model(ref[prefix + "image1"], ref[prefix + "image2"], return_all=True)
    expected = ref["outputs"] if case == "main" else ref["case2_outputs"]
    torch.testing.assert_close(out["disparity"][-1], expected["disp_up"], atol=1e-5, rtol=0)
    if case == "main":
        for i, (ours, theirs) in enumerate(zip(out["disparity"], ref["outputs_all_iterations"]["depth_predictions_all"])):
            torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0, msg=lambda m: f"iteration {i}: {m}")


def test_depth_model_ignores_second_frame(fixtures_dir, golden):
    ref = golden["depth"]
    model = _official_model(fixtures_dir, ref, "depth")
    with torch.no_grad():
        a = model(ref["image1"], ref["image2"])["disparity"][-1]
        b = model(ref["image1"])["disparity"][-1]
    assert torch.equal(a, b)
    assert not hasattr(model, "cost_memory") and not hasattr(model, "feature_encoder")


def test_joint_model_without_second_frame_predicts_depth_only(fixtures_dir, golden):
    ref = golden["joint"]
    model = _official_model(fixtures_dir, ref, "joint")
    with torch.no_grad():
        out = model(ref["image1"])
    assert set(out) == {"disparity"}
    torch.testing.assert_close(out["disparity"][-1], ref["outputs"]["disp_up"], atol=1e-5, rtol=0)


def test_official_parameters_are_all_accounted_for(fixtures_dir):
    """Every official tensor is loaded into the joint model or is one of the documented unused ones."""
    official = torch.load(fixtures_dir / "weights_seed0_fp16.pt", weights_only=True)
    assert sum(v.numel() for k, v in official.items() if not k.endswith("rel_ind")) == OFFICIAL_PARAMETERS
    converted, unused = convert_official_state_dict(official)
    joint = ProtoFormer(VARIANTS["protoformer"], model_type="joint")
    ours = sum(p.numel() for p in joint.parameters())
    dropped = sum(official[k].numel() for k in unused if not k.endswith("rel_ind"))
    assert ours + dropped == OFFICIAL_PARAMETERS
    assert ours == sum(v.numel() for v in converted.values())
    # the official forward reads 12,554,177 parameters in flow mode (NOTES §4); ours holds exactly those
    flow = ProtoFormer(VARIANTS["protoformer"], model_type="flow")
    assert sum(p.numel() for p in flow.parameters()) == 12_554_177


def test_official_checkpoint_through_config(fixtures_dir, golden, tmp_path):
    """An official release-style file (module. prefix) loads via the stage config and reproduces 12 iterations."""
    ref = golden["flow"]
    path = tmp_path / "official_release.pth"
    torch.save({f"module.{k}": v for k, v in _official_weights(fixtures_dir, ref).items()}, path)
    model = build_model(load_config(REPO / "configs" / "sintel.yaml"))
    load_weights(model, path)
    with torch.no_grad():
        flow = model.eval()(ref["image1"], ref["image2"], iters=12)["flow"][-1]
    torch.testing.assert_close(flow, ref["outputs"]["flow_up"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("case", ["main", "case2"])
def test_small_chunks_still_match_official(fixtures_dir, golden, monkeypatch, case):
    """The fixtures' 12x16 and 10x13 grids fit in one chunk of every chunked computation; with tiny chunks the
    cost maps, GMA rows, token MLPs, self-attention pixels and both vertical attentions (bands of window / query
    rows, the last band padded) run in many pieces and must still give the official flow (perturbed weights)."""
    monkeypatch.setattr(layers, "ROW_CHUNK", 100)
    monkeypatch.setattr(cost_memory, "ROW_CHUNK", 100)
    monkeypatch.setattr(cost_memory, "COST_MAP_CHUNK", 50)
    monkeypatch.setattr(flow_decoder, "GMA_ROW_CHUNK", 50)
    ref = golden["joint"]
    model = _official_model(fixtures_dir, ref, "joint")
    prefix = "" if case == "main" else "case2_"
    with torch.no_grad():
        out = model(ref[prefix + "image1"], ref[prefix + "image2"], iters=12)
    expected = ref["outputs"] if case == "main" else ref["case2_outputs"]
    torch.testing.assert_close(out["flow"][-1], expected["flow_up"], atol=1e-4, rtol=0)


def test_small_chunks_give_the_same_training_gradients(monkeypatch):
    """The chunked computations write into preallocated outputs: gradients must flow through them unchanged."""
    model = ProtoFormer(VARIANTS["protoformer-s"], model_type="flow", iters=2).train()
    image1, image2 = torch.rand(2, 2, 3, 64, 96) * 255

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad()
        sum(f.abs().mean() for f in model(image1, image2)["flow"]).backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    whole = gradients()
    monkeypatch.setattr(layers, "ROW_CHUNK", 50)
    monkeypatch.setattr(cost_memory, "ROW_CHUNK", 50)
    monkeypatch.setattr(cost_memory, "COST_MAP_CHUNK", 20)
    monkeypatch.setattr(flow_decoder, "GMA_ROW_CHUNK", 20)
    chunked = gradients()
    for name, grad in whole.items():
        torch.testing.assert_close(chunked[name], grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of tensor storage created inside the mode and still alive: ``now`` and the ``peak`` over all ops."""

    def __init__(self):
        super().__init__()
        self.storages: dict[int, tuple[int, int]] = {}
        self.now = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor.untyped_storage().data_ptr() not in self.storages:
                storage = tensor.untyped_storage()
                self.storages[storage.data_ptr()] = (storage._weak_ref(), storage.nbytes())
        for key in [k for k, (ref, _) in self.storages.items() if torch.UntypedStorage._expired(ref)]:
            torch.UntypedStorage._free_weak_ref(self.storages.pop(key)[0])
        self.now = sum(size for _, size in self.storages.values())
        self.peak = max(self.peak, self.now)
        return out


def test_gma_attention_holds_a_single_pairwise_map():
    """The N x N logits are never all alive next to their softmax (2 N^2 floats, 400 MB at 440x1024)."""
    attention = GMAAttention(64).eval()
    inp = torch.randn(1, 64, 48, 64)
    pairwise = (48 * 64) ** 2 * 4
    with torch.no_grad():
        expected = (attention.scale * attention.to_qk(inp).flatten(2)[:, :64]).transpose(1, 2)
        expected = torch.bmm(expected, attention.to_qk(inp).flatten(2)[:, 64:]).softmax(dim=-1)
        with LiveTensorBytes() as tracker:
            out = attention(inp)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    # one N x N map, plus the logits and softmax of one chunk of rows (2 x 512 of 3072 rows here)
    assert tracker.peak < 1.5 * pairwise, f"peak {tracker.peak / pairwise:.2f} x N^2 floats"


def test_cost_volume_is_not_held_during_the_attention_rounds():
    """The whole [N, N] cost volume (198 MB at 440x1024) exists only after the transformer rounds."""
    model = CostMemoryEncoder(VARIANTS["protoformer-s"]).eval()
    feat1, feat2, context = torch.randn(3, 1, 128, 40, 56)
    pairwise = (40 * 56) ** 2 * 4
    alive_at_rounds = []
    for rounds in model.vertical_attention:
        rounds.register_forward_pre_hook(lambda module, args: alive_at_rounds.append(tracker.now))
    with torch.no_grad(), LiveTensorBytes() as tracker:
        model(feat1, feat2, context)
    assert alive_at_rounds and max(alive_at_rounds) < pairwise, f"{max(alive_at_rounds) / pairwise:.2f} x N^2 floats"


def test_batch_of_two_equals_single_runs(fixtures_dir, golden):
    ref = golden["joint"]
    model = _official_model(fixtures_dir, ref, "joint")
    image1 = torch.cat([ref["image1"], ref["image2"]])
    image2 = torch.cat([ref["image2"], ref["image1"].flip(-1)])
    with torch.no_grad():
        batch = model(image1, image2, iters=4)
        singles = [model(image1[i : i + 1], image2[i : i + 1], iters=4) for i in range(2)]
    for key in ("flow", "disparity"):
        for i in range(2):
            torch.testing.assert_close(batch[key][-1][i : i + 1], singles[i][key][-1], atol=1e-5, rtol=1e-5)


def test_any_input_size_is_padded_not_floored():
    model = ProtoFormer(VARIANTS["protoformer-s"], model_type="joint", iters=2).eval()
    for height, width in [(50, 70), (37, 41), (17, 23)]:
        image = torch.rand(1, 3, height, width) * 255
        with torch.no_grad():
            out = model(image, image)
        assert out["flow"][-1].shape == (1, 2, height, width)
        assert out["disparity"][-1].shape == (1, 1, height, width)
        assert torch.isfinite(out["flow"][-1]).all() and torch.isfinite(out["disparity"][-1]).all()


def test_train_mode_returns_every_iteration_and_backpropagates():
    model = ProtoFormer(VARIANTS["protoformer-s"], model_type="joint", iters=3).train()
    image1, image2 = torch.rand(2, 1, 3, 64, 64) * 255
    out = model(image1, image2)
    assert len(out["flow"]) == 3 and len(out["disparity"]) == 4
    (sum(f.abs().mean() for f in out["flow"]) + sum(d.mean() for d in out["disparity"])).backward()
    assert all(p.grad is not None for name, p in model.named_parameters()), "every parameter is used"


@pytest.mark.parametrize(
    "image1, image2, message",
    [
        (torch.rand(3, 64, 64), torch.rand(3, 64, 64), r"\[B, 3, H, W\]"),
        (torch.rand(1, 1, 64, 64), torch.rand(1, 1, 64, 64), r"\[B, 3, H, W\]"),
        (torch.rand(1, 3, 64, 64) * 255, torch.rand(1, 3, 64, 72) * 255, "same shape"),
        (torch.rand(1, 3, 64, 64) * 2 - 1, torch.rand(1, 3, 64, 64), "0..255"),
        (torch.rand(1, 3, 64, 64) * 1000, torch.rand(1, 3, 64, 64), "0..255"),
        (torch.rand(1, 3, 64, 64) * 255, None, "needs image2"),
    ],
)
def test_bad_inputs_raise_clear_errors(image1, image2, message):
    model = ProtoFormer(VARIANTS["protoformer-s"], model_type="flow", iters=1).eval()
    with pytest.raises(ValueError, match=message):
        model(image1, image2)


def test_checkpoint_that_does_not_fit_lists_the_problem(tmp_path):
    small = ProtoFormer(VARIANTS["protoformer-s"], model_type="flow")
    path = tmp_path / "small.pth"
    torch.save({"model": small.state_dict()}, path)
    big = ProtoFormer(VARIANTS["protoformer"], model_type="flow")
    with pytest.raises(CheckpointError, match="shape mismatches") as err:
        load_weights(big, path)
    assert "model.variant" in str(err.value)
    depth = ProtoFormer(VARIANTS["protoformer-s"], model_type="depth")
    with pytest.raises(CheckpointError, match="missing keys"):
        load_weights(depth, path)
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth: not a PyTorch checkpoint"):
        load_weights(small, tmp_path / "garbage.pth")


@pytest.mark.parametrize("layout", ["plain", "model", "state_dict", "module.", "_orig_mod.", "state_dict+module."])
def test_every_supported_checkpoint_layout_loads_the_same_weights(layout):
    source = ProtoFormer(VARIANTS["protoformer-s"], model_type="flow")
    weights = source.state_dict()
    prefix = layout.split("+")[-1] if layout.endswith(".") else ""
    stored = {f"{prefix}{key}": value for key, value in weights.items()}
    if layout.startswith(("model", "state_dict")):
        stored = {layout.split("+")[0]: stored, "step": 7}
    torch.manual_seed(1)
    target = ProtoFormer(VARIANTS["protoformer-s"], model_type="flow")
    assert not all(torch.equal(value, weights[key]) for key, value in target.state_dict().items())
    load_weights(target, stored)
    for key, value in target.state_dict().items():
        torch.testing.assert_close(value, weights[key], rtol=0, atol=0)


class _Opaque:  # an object a weights-only load refuses
    pass


def test_unreadable_checkpoints_say_why_without_advising_an_unsafe_load(tmp_path):
    torch.save({"model": _Opaque()}, tmp_path / "object.pth")
    torch.save({"model": {"w": torch.zeros(3)}}, tmp_path / "good.pth")
    good = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="object.pth: holds Python objects .*_Opaque") as err:
        read_checkpoint(tmp_path / "object.pth")
    assert "weights_only set to False" not in str(err.value) and "add_safe_globals" not in str(err.value)
    with pytest.raises(CheckpointError, match="cut.pth: cannot be read as a torch checkpoint, truncated or corrupt"):
        read_checkpoint(tmp_path / "cut.pth")
    assert read_checkpoint(tmp_path / "good.pth")["model"]["w"].shape == (3,)
