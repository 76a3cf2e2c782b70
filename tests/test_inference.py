"""FlowEstimator (core.inference) and tiled inference (core.tiling).

The tiling machinery is checked exactly with "models" whose output is known (a smooth field encoded in the image):
the Gaussian blend must reproduce it up to float rounding. The real network is checked against itself (one tile
covering the image == whole-image inference, bit for bit; overlapping tiles within a measured tolerance). The
official release checkpoint through the same API is checked against golden outputs in tests/test_demo.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import core.inference
from core.config import load_config
from core.inference import FlowEstimator, MissingCheckpointError, forward_interpolate, to_image_tensor
from core.model import atomic_save, build_model
from core.model.checkpoint import WEIGHTS_FORMAT, CheckpointError
from core.tiling import TileGrid, run_tiled, tile_origins, tiled_predict

REPO = Path(__file__).resolve().parents[1]
SMALL = ["model.variant", "protoformer-s", "model.iters", "2"]


def small_cfg(*opts: str, model_type: str = "flow"):
    return load_config(REPO / "configs" / "synthetic.yaml", [*SMALL, "model.type", model_type, *opts])


@pytest.fixture(scope="module")
def estimator() -> FlowEstimator:
    return FlowEstimator.from_random_init(small_cfg(), seed=0, device="cpu")


def textured_pair(height: int, width: int, shift: tuple[int, int] = (1, 2), seed: int = 0) -> tuple[np.ndarray, ...]:
    """A smooth random texture (uint8 [H, W, 3]) and the same texture shifted by ``shift`` (dy, dx)."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((height // 6 + 3, width // 6 + 3, 3)).astype(np.float32)
    big = F.interpolate(torch.from_numpy(coarse).permute(2, 0, 1)[None], scale_factor=6, mode="bicubic")[0]
    image = np.clip(big.permute(1, 2, 0).numpy() * 255, 0, 255).astype(np.uint8)
    image1 = np.ascontiguousarray(image[4 : 4 + height, 4 : 4 + width])
    image2 = np.ascontiguousarray(image[4 - shift[0] : 4 - shift[0] + height, 4 - shift[1] : 4 - shift[1] + width])
    return image1, image2


# ----------------------------------------------------------------------------------------------- tile grid


@pytest.mark.parametrize("length, tile, overlap", [(64, 64, 16), (1088, 368, 92), (1920, 496, 124), (136, 64, 8)])
def test_tile_origins_cover_with_overlap(length, tile, overlap):
    origins = tile_origins(length, tile, overlap)
    assert origins[0] == 0 and origins[-1] == length - tile
    assert all(o % 8 == 0 for o in origins)
    steps = np.diff(origins)
    assert (steps > 0).all() and (tile - steps >= overlap).all()  # neighbours share at least `overlap` pixels
    if len(origins) > 2:  # and no tile could be dropped without breaking the overlap guarantee
        assert math.ceil((length - tile) / ((tile - overlap) // 8 * 8)) + 1 == len(origins)


def test_blend_weights_are_a_partition_of_unity():
    grid = TileGrid.plan(200, 312, (96, 128), min_overlap=0.25)
    for scale in (1, 8):
        total = torch.zeros(200 // scale, 312 // scale)
        for (top, left), weight in zip(grid.origins, grid.blend_weights(scale)):
            rows = slice(top // scale, (top + grid.tile_height) // scale)
            total[rows, left // scale : (left + grid.tile_width) // scale] += weight
        torch.testing.assert_close(total, torch.ones_like(total), atol=1e-6, rtol=0)


def test_blend_weights_favour_the_tile_centre():
    grid = TileGrid.plan(96, 160, (96, 96), min_overlap=0.25)  # two tiles side by side, 32 columns shared
    assert grid.origins == ((0, 0), (0, 64))
    first, second = grid.blend_weights(1)
    assert first[48, 48] > 0.999 and second[48, 48] > 0.999  # each tile centre belongs to its tile
    # in the shared columns 64..95 the weight moves from the first tile to the second, equal at the midpoint 80
    shared = first[48, 64:96]
    assert (shared[1:] < shared[:-1]).all()
    assert first[48, 79] > 0.5 > first[48, 80]


def _field(height: int, width: int) -> torch.Tensor:
    """A smooth 3-channel "image" whose first two channels are a known flow field of the absolute position."""
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    u = 3.0 * torch.sin(xs / 17.0) + 0.01 * ys
    v = 2.0 * torch.cos(ys / 11.0) - 0.02 * xs
    return torch.stack([u, v, u * v])[None]


def _known_model(tile1, tile2, init):
    """A stand-in for the network: flow = first two channels of image1 (+ the warm start), flow_low = its 8x8 means."""
    flow = tile1[:, :2] + tile2[:, :2]
    if init is not None:
        flow = flow + init.repeat_interleave(8, -2).repeat_interleave(8, -1)
    return flow, F.avg_pool2d(flow, 8)


@pytest.mark.parametrize("size, tile", [((128, 192), (64, 96)), ((200, 304), (96, 128)), ((64, 96), (368, 496))])
def test_run_tiled_reproduces_a_known_field(size, tile):
    image1, image2 = _field(*size), 0.5 * _field(*size)
    init = torch.randn(1, 2, size[0] // 8, size[1] // 8)
    grid = TileGrid.plan(*size, tile, min_overlap=0.25)
    flow, flow_low = run_tiled(_known_model, image1, image2, grid, flow_init=init)
    expected, expected_low = _known_model(image1, image2, init)
    torch.testing.assert_close(flow, expected, atol=2e-5, rtol=1e-6)
    torch.testing.assert_close(flow_low, expected_low, atol=2e-5, rtol=1e-6)


def test_tiled_predict_any_size():
    image1, image2 = _field(131, 203), _field(131, 203)
    out = tiled_predict(lambda a, b: a - 0.25 * b, image1, image2, tile_size=(48, 80))
    torch.testing.assert_close(out, 0.75 * image1, atol=2e-5, rtol=1e-6)


def test_tile_grid_rejects_bad_input():
    with pytest.raises(ValueError, match="multiple of 8"):
        TileGrid.plan(100, 128, (64, 64))
    with pytest.raises(ValueError, match="min_overlap"):
        TileGrid.plan(128, 128, (64, 64), min_overlap=1.0)
    grid = TileGrid.plan(128, 128, (64, 64))
    with pytest.raises(ValueError, match="do not match"):
        run_tiled(_known_model, _field(64, 64), _field(64, 64), grid)


# ----------------------------------------------------------------------------------------------- the real network


def test_single_tile_equals_whole_image(estimator):
    image1, image2 = textured_pair(60, 90)
    whole = estimator.predict(image1, image2)
    estimator.tile = True
    try:
        tiled = estimator.predict(image1, image2)  # tile size (192, 256) covers the padded 64x96: one tile
    finally:
        estimator.tile = False
    np.testing.assert_array_equal(tiled, whole)


def test_overlapping_tiles_close_to_whole_image():
    """With overlapping tiles the flow differs from the whole-image flow: each tile sees less context, and an
    untrained network's output depends strongly on the global content (GMA attention, prototype clustering).

    Measured for this fixed random protoformer-s (2 iterations) on a 96x144 pair in 4 tiles of 64x96: mean |diff|
    0.13 px (max 0.74 px) for a mean |flow| of 0.52 px, i.e. about 25 %. The bounds leave a margin of about two;
    the blending itself is tested exactly above with known fields, and one tile == whole image bit for bit.
    """
    cfg = small_cfg("eval.tile_size", "[64, 96]")
    estimator = FlowEstimator.from_random_init(cfg, seed=0, device="cpu")
    image1, image2 = textured_pair(96, 144, shift=(2, 3), seed=1)
    whole = estimator.predict(image1, image2)
    estimator.tile = True
    tiled = estimator.predict(image1, image2)
    difference = np.abs(tiled - whole)
    scale = np.abs(whole).mean()
    assert difference.mean() < 0.5 * scale, (difference.mean(), scale)
    assert difference.max() < 3 * np.abs(whole).max(), difference.max()


def test_auto_tiling_threshold(estimator, monkeypatch):
    import core.inference as inference

    calls = []
    monkeypatch.setattr(inference, "run_tiled", lambda *a, **k: calls.append(1) or run_tiled(*a, **k))
    monkeypatch.setattr(inference, "AUTO_TILE_PIXELS", 64 * 96 - 1)
    estimator.tile = "auto"
    try:
        image1, image2 = textured_pair(40, 48)
        estimator.predict(image1, image2)  # 40x48 pixels: below the threshold, whole image
        assert not calls
        image1, image2 = textured_pair(64, 96)
        estimator.predict(image1, image2)  # above it: tiled
        assert calls
    finally:
        estimator.tile = False


def test_predict_output_and_input_layouts(estimator):
    image1, image2 = textured_pair(45, 67)  # neither side a multiple of 8
    flow = estimator.predict(image1, image2)
    assert flow.shape == (45, 67, 2) and flow.dtype == np.float32 and np.isfinite(flow).all()
    # float 0..255, torch channels-first and a batch of one give the same answer as uint8 numpy
    as_float = estimator.predict(image1.astype(np.float64), image2.astype(np.float32))
    as_torch = estimator.predict(torch.from_numpy(image1).permute(2, 0, 1),
                                 torch.from_numpy(image2).permute(2, 0, 1)[None])
    np.testing.assert_array_equal(as_float, flow)
    np.testing.assert_array_equal(as_torch, flow)
    # grey and RGBA are converted (grey -> three equal channels, alpha dropped)
    grey1, grey2 = image1[..., 0], image2[..., 0]
    rgba2 = np.dstack([np.repeat(grey2[..., None], 3, 2), np.full_like(grey2, 7)])
    np.testing.assert_array_equal(estimator.predict(grey1, rgba2),
                                  estimator.predict(np.dstack([grey1] * 3), rgba2[..., :3]))


def test_to_image_tensor_conversions_and_errors():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    tensor = to_image_tensor(grey)
    assert tensor.shape == (3, 3, 4) and tensor.dtype == torch.float32
    assert (tensor[0] == tensor[2]).all() and tensor[1, 2, 3] == 11
    assert to_image_tensor(np.full((2, 2), 65535, np.uint16)).max() == 255  # 16-bit scaled to 8-bit range
    with pytest.raises(ValueError, match="image1"):
        to_image_tensor(np.zeros((4, 4, 2)), "image1")
    with pytest.raises(ValueError, match="NaN"):
        to_image_tensor(np.full((4, 4, 3), np.nan))
    with pytest.raises(TypeError):
        to_image_tensor([[1, 2], [3, 4]])


def test_images_scaled_to_0_1_get_a_warning(messages):
    to_image_tensor(np.full((4, 4, 3), 200.0, np.float32), "image1")
    to_image_tensor(np.zeros((4, 4, 3), np.float32), "image1")  # a black frame is fine
    to_image_tensor(np.ones((4, 4, 3), np.uint8), "image1")  # so is a dark uint8 one
    assert not messages
    to_image_tensor(torch.rand(3, 4, 4), "image2")
    assert len(messages) == 1 and "image2: float values within 0..1" in messages[0]


def test_mismatched_sizes_are_rejected(estimator):
    image1, _ = textured_pair(40, 48)
    _, image2 = textured_pair(40, 56)
    with pytest.raises(ValueError, match="same size"):
        estimator.predict(image1, image2)


def test_forward_interpolate_matches_a_brute_force_nearest_splat():
    rng = np.random.default_rng(3)
    flow = torch.from_numpy(rng.normal(0, 1.5, (2, 6, 7))).float()
    projected = forward_interpolate(flow).numpy()
    # reference: every grid pixel takes the flow of the nearest moved point that stayed inside the frame
    ys, xs = np.mgrid[0:6, 0:7]
    x1, y1 = xs + flow[0].numpy(), ys + flow[1].numpy()
    inside = (x1 > 0) & (x1 < 7) & (y1 > 0) & (y1 < 6)
    points = np.stack([x1[inside], y1[inside]], 1)
    distance = np.linalg.norm(np.stack([xs, ys], -1)[:, :, None, :] - points[None, None], axis=-1)
    nearest = distance.argmin(-1)
    expected = np.stack([flow[0].numpy()[inside][nearest], flow[1].numpy()[inside][nearest]])
    np.testing.assert_allclose(projected, expected, atol=1e-6)
    assert forward_interpolate(flow[None]).shape == (1, 2, 6, 7)
    assert (forward_interpolate(torch.full((2, 3, 3), 50.0)) == 0).all()  # everything left the frame


def test_warm_start_and_sequence(estimator):
    image1, image2 = textured_pair(48, 64, shift=(1, 1))
    _, image3 = textured_pair(48, 64, shift=(2, 2))
    frames = [image1, image2, image3]
    cold = list(estimator.predict_sequence(frames, warm_start=False))
    warm = list(estimator.predict_sequence(iter(frames), warm_start=True))
    assert len(cold) == len(warm) == 2
    np.testing.assert_array_equal(warm[0], cold[0])  # the first pair has nothing to start from
    first = estimator.run(to_image_tensor(image1)[None], to_image_tensor(image2)[None])
    second = estimator.run(to_image_tensor(image2)[None], to_image_tensor(image3)[None],
                           forward_interpolate(first.flow_low))
    np.testing.assert_array_equal(warm[1], second.flow[0].permute(1, 2, 0).numpy())
    assert not np.array_equal(warm[1], cold[1])
    # a full-resolution guess is accepted by predict and changes the result
    guess = np.full((48, 64, 2), 2.0, np.float32)
    assert not np.array_equal(estimator.predict(image1, image2, flow_init=guess), cold[0])
    with pytest.raises(ValueError, match="flow_init"):
        estimator.predict(image1, image2, flow_init=guess[:40])


def test_a_full_resolution_guess_reaches_the_model_in_eighth_scale_pixels(estimator, monkeypatch):
    image1, image2 = textured_pair(48, 64, shift=(1, 1))
    seen = []
    real_run = estimator.run
    monkeypatch.setattr(estimator, "run", lambda a, b, init=None: seen.append(init) or real_run(a, b, init))
    guess = np.zeros((48, 64, 2), np.float32)
    guess[..., 0], guess[..., 1] = 16.0, -8.0
    guess[:8, :8] = (32.0, 0.0)  # one 8x8 cell: its own mean
    estimator.predict(image1, image2, flow_init=guess)
    (init,) = seen
    expected = torch.tensor([2.0, -1.0]).view(1, 2, 1, 1).expand(1, 2, 6, 8).clone()
    expected[0, :, 0, 0] = torch.tensor([4.0, 0.0])
    torch.testing.assert_close(init, expected)


# ----------------------------------------------------------------------------------------------- checkpoints


def _export(cfg, path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    atomic_save({"format": WEIGHTS_FORMAT, "model": build_model(cfg).state_dict(), "config": cfg.dump()}, path)
    return path


def test_from_checkpoint_uses_the_stored_config(tmp_path, estimator):
    path = _export(small_cfg(), tmp_path / "small.pth")
    loaded = FlowEstimator.from_checkpoint(path, device="cpu")
    assert loaded.cfg.model.variant == "protoformer-s" and loaded.iters == 2
    assert FlowEstimator.from_checkpoint(path, iters=3, device="cpu").iters == 3
    image1, image2 = textured_pair(40, 48)
    np.testing.assert_array_equal(loaded.predict(image1, image2), estimator.predict(image1, image2))  # same seed
    # an explicit config with another variant: the checkpoint's variant wins (only it fits the weights)
    explicit = FlowEstimator.from_checkpoint(path, config=REPO / "configs" / "sintel.yaml", device="cpu")
    assert explicit.cfg.model.variant == "protoformer-s" and explicit.iters == 12


def test_default_checkpoint_is_found_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the shipped file lies in the repository, not under the caller's directory
    loaded = FlowEstimator.from_checkpoint(device="cpu")
    assert loaded.cfg.model.variant == "protoformer-s"


def test_missing_or_wrong_checkpoint(tmp_path, monkeypatch):
    with pytest.raises(MissingCheckpointError, match="absent.pth [(]check the path") as error:
        FlowEstimator.from_checkpoint(tmp_path / "absent.pth")
    assert "train.py" not in str(error.value)
    monkeypatch.setattr(core.inference, "DEFAULT_CHECKPOINT_PATH", tmp_path / "default.pth")
    with pytest.raises(MissingCheckpointError, match="(?s)default.pth\n.*train.py"):
        FlowEstimator.from_checkpoint()
    plain = tmp_path / "plain.pth"
    torch.manual_seed(0)
    atomic_save(build_model(small_cfg()).state_dict(), plain)  # no stored config -> defaults = official size
    with pytest.raises(CheckpointError, match="does not fit"):
        FlowEstimator.from_checkpoint(plain)
    assert FlowEstimator.from_checkpoint(plain, config=small_cfg()).cfg.model.variant == "protoformer-s"


def test_precision_rules():
    cfg = small_cfg()
    model = build_model(cfg)
    assert FlowEstimator(model, cfg, device="cpu").precision == "fp32"
    with pytest.raises(ValueError, match="CUDA"):
        FlowEstimator(model, cfg, device="cpu", precision="fp16")
    with pytest.raises(ValueError, match="precision"):
        FlowEstimator(model, cfg, device="cpu", precision="int8")


def test_depth_of_depth_and_joint_models(estimator):
    image1, image2 = textured_pair(50, 70)
    with pytest.raises(ValueError, match="no depth"):
        estimator.predict_depth(image1)
    joint = FlowEstimator.from_random_init(small_cfg(model_type="joint"), seed=0, device="cpu")
    depth_only = FlowEstimator.from_random_init(small_cfg(model_type="depth"), seed=0, device="cpu")
    disparity = joint.predict_disparity(image1)
    depth = joint.predict_depth(image1)
    assert depth.shape == disparity.shape == (50, 70) and depth.dtype == np.float32
    np.testing.assert_allclose(depth, 1.0 / np.maximum(disparity, 1.0 / 80.0), rtol=1e-6)
    assert 1.0 <= depth.min() and depth.max() <= 80.0
    # the joint model's depth of frame 1 is the same whether it also estimates flow or not
    pair = joint.run(to_image_tensor(image1)[None], to_image_tensor(image2)[None])
    np.testing.assert_allclose(pair.disparity[0, 0].numpy(), disparity, atol=1e-6)
    assert pair.flow.shape == (1, 2, 50, 70)
    assert depth_only.predict_depth(image1).shape == (50, 70)
    with pytest.raises(ValueError, match="two images"):
        estimator.run(to_image_tensor(image1)[None])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_unavailable_or_unknown_device_is_a_clear_error():
    model, cfg = build_model(small_cfg()), small_cfg()
    assert FlowEstimator(model, cfg).device == torch.device("cpu") == FlowEstimator(model, cfg, device="auto").device
    with pytest.raises(ValueError, match="--device cuda:1: CUDA is not available on this machine"):
        FlowEstimator(model, cfg, device="cuda:1")
    with pytest.raises(ValueError, match="--device must be auto, cpu, cuda or cuda:N, got 'gpu'"):
        FlowEstimator(model, cfg, device="gpu")


# ----------------------------------------------------------------------------------------------- input scales


class _KnownStepNet(torch.nn.Module):
    """A stand-in network that records the size it runs at and answers its warm start (nearest-upsampled, in its
    pixels) plus a fixed step of (8, -4) of its pixels; its flow_low is the 1/8 mean + 100 (told apart from a
    flow_low computed by the estimator)."""

    min_size, predicts_flow, predicts_depth = 0, True, False

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, ...]] = []

    def forward(self, image1, image2, iters, flow_init=None):
        self.seen.append(tuple(image1.shape[-2:]))
        batch, _, height, width = image1.shape
        flow = torch.tensor([8.0, -4.0]).view(1, 2, 1, 1).expand(batch, 2, height, width)
        if flow_init is not None:
            flow = flow + 8.0 * flow_init.repeat_interleave(8, -2).repeat_interleave(8, -1)
        return {"flow": [flow], "flow_low": F.avg_pool2d(flow, 8) / 8.0 + 100.0}


@pytest.mark.parametrize("scale, size, network, padded", [
    (2.0, (40, 48), (80, 96), (80, 96)),
    (0.5, (40, 48), (20, 24), (24, 24)),
    (1.5, (41, 50), (62, 75), (64, 80)),
])
def test_the_network_runs_on_resized_frames_and_the_flow_comes_back_in_input_pixels(scale, size, network, padded):
    net = _KnownStepNet()
    estimator = FlowEstimator(net, small_cfg(), device="cpu", scales=[scale])
    assert estimator.network_size(*size) == network and estimator.describe()["scales"] == [scale]
    image1, image2 = textured_pair(*size)
    flow = estimator.predict(image1, image2)
    assert net.seen == [padded] and flow.shape == (*size, 2)
    single = estimator.run(to_image_tensor(image1)[None], to_image_tensor(image2)[None])
    assert single.flow_low.min() > 99.0  # one pass: the network's own flow_low, untouched
    net.seen.clear()
    np.testing.assert_allclose(flow[..., 0], 8.0 * size[1] / network[1], rtol=1e-6)  # u in input pixels
    np.testing.assert_allclose(flow[..., 1], -4.0 * size[0] / network[0], rtol=1e-6)
    # a full-resolution guess and the warm start of a sequence live on the resized frames' grid
    estimator.predict(image1, image2, flow_init=flow)
    list(estimator.predict_sequence([image1, image2, image1], warm_start=True))
    assert net.seen == [padded] * 3


def test_a_cascade_refines_the_first_pass_at_the_next_scale():
    net = _KnownStepNet()
    estimator = FlowEstimator(net, small_cfg(), device="cpu", scales=[1, 2])
    image1, image2 = textured_pair(40, 48)
    prediction = estimator.run(to_image_tensor(image1)[None], to_image_tensor(image2)[None])
    assert net.seen == [(40, 48), (80, 96)]
    # pass 1: (8, -4) px; pass 2 starts from it, (16, -8) of its pixels, adds (8, -4) and halves: (12, -6) px
    torch.testing.assert_close(prediction.flow, torch.tensor([12.0, -6.0]).view(1, 2, 1, 1).expand(1, 2, 40, 48))
    # the warm-start state for the next pair lives on the first pass's grid, in its pixels
    torch.testing.assert_close(prediction.flow_low, torch.tensor([1.5, -0.75]).view(1, 2, 1, 1).expand(1, 2, 5, 6))
    sequence = list(estimator.predict_sequence([image1, image2, image1], warm_start=True))
    assert [tuple(frame.shape) for frame in sequence] == [(40, 48, 2)] * 2
    assert len(sequence) == 2 and net.seen[2:] == [(40, 48), (80, 96)] * 2
    # pass 1 from the carried 1.5 cells: 12 + 8 = 20 px; pass 2 from 40 of its pixels: (40 + 8) / 2 = 24 px
    np.testing.assert_allclose(sequence[1][..., 0], 24.0)


class _RampNet(torch.nn.Module):
    """A stand-in network whose flow is (x, -4) in its own pixels, x the column of its (padded) input, whatever the
    images: not mirror-symmetric, so only a correct mirroring of the flow back undoes it. It records the iterations
    it is asked for."""

    min_size, predicts_flow, predicts_depth = 0, True, False

    def __init__(self) -> None:
        super().__init__()
        self.iters: list[int] = []

    def forward(self, image1, image2, iters, flow_init=None):
        self.iters.append(iters)
        batch, _, height, width = image1.shape
        column = torch.arange(width, dtype=torch.float32).view(1, 1, 1, width).expand(batch, 1, height, width)
        flow = torch.cat([column, torch.full_like(column, -4.0)], 1)
        return {"flow": [flow], "flow_low": F.avg_pool2d(flow, 8) / 8.0}


def test_passes_after_the_first_run_refine_iters():
    net = _RampNet()
    image1, image2 = (to_image_tensor(image)[None] for image in textured_pair(40, 48))
    FlowEstimator(net, small_cfg(), device="cpu", iters=8, refine_iters=3, scales=[1, 2, 3]).run(image1, image2)
    assert net.iters == [8, 3, 3]
    net.iters.clear()
    FlowEstimator(net, small_cfg(), device="cpu", iters=8, scales=[1, 2]).run(image1, image2)  # 0: as many as iters
    assert net.iters == [8, 8]
    net.iters.clear()
    estimator = FlowEstimator(net, small_cfg("eval.refine_iters", "2"), device="cpu", iters=5, scales=[1, 2])
    estimator.run(image1, image2)
    assert net.iters == [5, 2] and estimator.describe()["refine_iters"] == 2
    assert estimator.passes_description() == "5+2 it, scales 1,2"
    with pytest.raises(ValueError, match=r"refine_iters must be >= 0 \(0 = iters\), got -1"):
        FlowEstimator(net, small_cfg(), device="cpu", refine_iters=-1)
    with pytest.raises(ValueError, match=r"eval.refine_iters must be >= 0"):
        small_cfg("eval.refine_iters", "-1")


@pytest.mark.parametrize("size", [(40, 48), (37, 45)])  # no padding; odd padding (the mirror is still exact here)
def test_flip_average_mirrors_the_frames_and_the_flow_back(size):
    net = _RampNet()
    estimator = FlowEstimator(net, small_cfg(), device="cpu", flip_average=True)
    image1, image2 = (to_image_tensor(image)[None] for image in textured_pair(*size))
    prediction = estimator.run(image1, image2)
    assert len(net.iters) == 2  # the frames as they are, then mirrored
    # x + pad_left from the frames as they are; from the mirrored ones -(W - 1 - x + pad_left): mean x - (W - 1) / 2
    width = size[1]
    expected_u = torch.arange(width, dtype=torch.float32) - (width - 1) / 2
    torch.testing.assert_close(prediction.flow[0, 0], expected_u.expand(size[0], width))
    torch.testing.assert_close(prediction.flow[0, 1], torch.full(size, -4.0))
    # flow_low: the averaged flow over the 8x8 cells of the (padded) first pass, in its pixels
    torch.testing.assert_close(prediction.flow_low, estimator.eighth_scale_flow(prediction.flow))
    assert estimator.passes_description() == f"{estimator.iters} it, scale 1, flip-averaged"
    assert FlowEstimator(net, small_cfg("eval.flip_average", "True"), device="cpu").flip_average
    assert not FlowEstimator(net, small_cfg("eval.flip_average", "True"), device="cpu", flip_average=False).flip_average


class _EchoNet(torch.nn.Module):
    """A stand-in network whose flow is (first channel of image1, first channel of image2): it shows which frames,
    mirrored or not, each pass was given."""

    min_size, predicts_flow, predicts_depth = 0, True, False

    def forward(self, image1, image2, iters, flow_init=None):
        flow = torch.cat([image1[:, :1], image2[:, :1]], 1)
        return {"flow": [flow], "flow_low": F.avg_pool2d(flow, 8) / 8.0}


def test_flip_average_gives_the_mirrored_pass_both_frames_mirrored():
    image1, image2 = (to_image_tensor(image)[None] for image in textured_pair(40, 48))
    prediction = FlowEstimator(_EchoNet(), small_cfg(), device="cpu", flip_average=True).run(image1, image2)
    # as they are: (I1(x), I2(x)); mirrored frames, mirrored back: (-I1(x), I2(x)); mean (0, I2(x))
    torch.testing.assert_close(prediction.flow[:, 0], torch.zeros_like(prediction.flow[:, 0]))
    torch.testing.assert_close(prediction.flow[:, 1], image2[:, 0])


def test_flip_average_mirrors_the_warm_start_of_each_pass():
    net = _KnownStepNet()  # warm start + (8, -4) of its pixels: the mirrored pass sees the mirrored warm start
    estimator = FlowEstimator(net, small_cfg(), device="cpu", flip_average=True)
    image1, image2 = (to_image_tensor(image)[None] for image in textured_pair(40, 48))
    init = torch.tensor([2.0, 1.0]).view(1, 2, 1, 1).expand(1, 2, 5, 6)
    prediction = estimator.run(image1, image2, flow_init=init)
    # as they are: (16 + 8, 8 - 4); mirrored: (-16 + 8, 8 - 4), mirrored back (8, 4): mean (16, 4)
    torch.testing.assert_close(prediction.flow, torch.tensor([16.0, 4.0]).view(1, 2, 1, 1).expand(1, 2, 40, 48))
    net.seen.clear()
    cascade = FlowEstimator(net, small_cfg(), device="cpu", flip_average=True, scales=[1, 2]).run(image1, image2)
    assert net.seen == [(40, 48), (40, 48), (80, 96), (80, 96)]
    # pass 1: (8, -4) and mirrored back (-8, -4): (0, -4) px. Pass 2 from (0, -8) of its pixels: (8, -12), mirrored
    # (-8, -12) after the step; mean (0, -12) of its pixels = (0, -6) px
    torch.testing.assert_close(cascade.flow, torch.tensor([0.0, -6.0]).view(1, 2, 1, 1).expand(1, 2, 40, 48))
    # from (2, 1) cells: pass 1 gives (16, 4) px as above. Pass 2 starts from (4, 1) cells of its grid: (40, 4); the
    # mirrored pair from (-4, 1): (-24, 4), mirrored back (24, 4); mean (32, 4) of its pixels = (16, 2) px
    cascade = FlowEstimator(net, small_cfg(), device="cpu", flip_average=True, scales=[1, 2]).run(image1, image2, init)
    torch.testing.assert_close(cascade.flow, torch.tensor([16.0, 2.0]).view(1, 2, 1, 1).expand(1, 2, 40, 48))
    # a warm start that grows along x, j cells in column j: the mirrored pass gets it mirrored in space, too
    ramp = torch.zeros(1, 2, 5, 6)
    ramp[:, 0] = torch.arange(6.0)
    prediction = estimator.run(image1, image2, flow_init=ramp)
    # as they are: 8 j + 8; mirrored, mirrored back: 8 j - 8; mean 8 j, with j = x // 8
    expected = 8.0 * (torch.arange(48) // 8).float()
    torch.testing.assert_close(prediction.flow[0, 0], expected.expand(40, 48))
    torch.testing.assert_close(prediction.flow[0, 1], torch.full((40, 48), -4.0))


def test_mirror_flow_is_its_own_inverse_and_negates_x():
    flow = torch.randn(2, 2, 5, 7)
    mirrored = core.inference.mirror_flow(flow)
    torch.testing.assert_close(mirrored[:, 0], -flow[:, 0].flip(-1))
    torch.testing.assert_close(mirrored[:, 1], flow[:, 1].flip(-1))
    torch.testing.assert_close(core.inference.mirror_flow(mirrored), flow)


def test_resize_flow_rescales_the_vectors_to_the_new_pixels():
    flow = torch.zeros(1, 2, 10, 20)
    flow[:, 0], flow[:, 1] = 3.0, -2.0
    resized = core.inference.resize_flow(flow, (20, 30))
    assert resized.shape == (1, 2, 20, 30)
    torch.testing.assert_close(resized[:, 0], torch.full((1, 20, 30), 4.5))  # 3 px * 30 / 20
    torch.testing.assert_close(resized[:, 1], torch.full((1, 20, 30), -4.0))  # -2 px * 20 / 10
    assert core.inference.resize_flow(flow, (10, 20)) is flow


def test_a_depth_model_runs_one_pass_at_the_last_scale_even_when_given_two_images():
    estimator = FlowEstimator.from_random_init(small_cfg(model_type="depth"), seed=0, device="cpu", scales=[1, 2])
    image1, image2 = (to_image_tensor(image)[None] for image in textured_pair(40, 48))
    prediction = estimator.run(image1, image2)
    assert prediction.flow is None and prediction.disparity.shape == (1, 1, 40, 48)
    at_two = FlowEstimator(estimator.model, estimator.cfg, device="cpu", scales=[2]).run(image1)
    torch.testing.assert_close(prediction.disparity, at_two.disparity)


def test_flip_average_mirrors_the_disparity_back():
    plain = FlowEstimator.from_random_init(small_cfg(model_type="depth"), seed=0, device="cpu")
    image = to_image_tensor(textured_pair(40, 48)[0])[None]
    by_hand = (plain.run(image).disparity + plain.run(image.flip(-1)).disparity.flip(-1)) / 2
    mirrored = FlowEstimator(plain.model, plain.cfg, device="cpu", flip_average=True).run(image)
    torch.testing.assert_close(mirrored.disparity, by_hand)
    assert not torch.allclose(mirrored.disparity, plain.run(image).disparity)


def test_scales_come_from_the_config_and_are_checked():
    assert FlowEstimator(_KnownStepNet(), small_cfg("eval.scales", "[1, 2]"), device="cpu").scales == [1.0, 2.0]
    assert FlowEstimator(_KnownStepNet(), small_cfg("eval.scales", "[2]"), device="cpu", scales=[1]).scales == [1.0]
    with pytest.raises(ValueError, match=r"scales must lie in \[0.1, 4\], got \[0\]"):
        FlowEstimator(_KnownStepNet(), small_cfg(), device="cpu", scales=[0])
    with pytest.raises(ValueError, match="scales must be a non-empty list"):
        FlowEstimator(_KnownStepNet(), small_cfg(), device="cpu", scales=[])
    with pytest.raises(ValueError, match=r"eval.scales must lie in \[0.1, 4\], got \[1, 5\]"):
        small_cfg("eval.scales", "[1, 5]")
