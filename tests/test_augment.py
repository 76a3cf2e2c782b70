"""Augmentation keeps the flow consistent with the images (warp checks), sparse points exact, randomness seeded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from core.config import get_cfg_defaults
from core.data.augment import ColorJitter, FlowAugmentor, SparseFlowAugmentor, resize_sparse_flow
from core.utils.geometry import backward_warp

HEIGHT, WIDTH = 96, 128
CROP = (48, 64)
NO_PHOTOMETRIC = dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, eraser_prob=0.0)
NO_SPATIAL = dict(spatial_prob=0.0, stretch_prob=0.0, do_flip=False)


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    array = array[..., None] if array.ndim == 2 else array
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(2, 0, 1)[None]


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A smooth textured frame 2, a smooth flow (u about +2, v about -1) and frame 1 = frame 2 warped by it."""
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    rng = np.random.default_rng(3)
    channels = []
    for _ in range(3):
        texture = np.zeros((HEIGHT, WIDTH))
        for _ in range(4):
            period, angle, phase = rng.uniform(18, 40), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
            texture += np.sin(2 * np.pi * (xs * np.cos(angle) + ys * np.sin(angle)) / period + phase)
        channels.append(128 + 25 * texture)
    image2 = np.clip(np.stack(channels, axis=2), 0, 255)
    flow = np.stack([2.0 + 1.5 * np.sin(2 * np.pi * ys / HEIGHT), -1.0 + np.cos(2 * np.pi * xs / WIDTH)], axis=2)
    warped, _ = backward_warp(_to_tensor(image2), _to_tensor(flow))
    image1 = warped[0].permute(1, 2, 0).numpy()
    as_uint8 = lambda a: np.round(a).astype(np.uint8)  # noqa: E731
    return as_uint8(image1), as_uint8(image2), flow.astype(np.float32)


def warp_error(image1: np.ndarray, image2: np.ndarray, flow: np.ndarray, valid: np.ndarray | None = None,
               border: int = 6) -> float:
    """Mean |image1 - image2 warped by flow| over interior pixels that land inside image2 (and are valid)."""
    warped, inside = backward_warp(_to_tensor(image2), _to_tensor(flow))
    error = (warped - _to_tensor(image1)).abs().mean(dim=1)[0]
    keep = inside[0, 0].clone()
    keep[:border], keep[-border:], keep[:, :border], keep[:, -border:] = False, False, False, False
    if valid is not None:
        keep &= torch.from_numpy(valid > 0)
    assert keep.sum() > 50, "too few pixels to compare"
    return float(error[keep].mean())


def test_scene_is_consistent_and_the_check_has_power(scene):
    image1, image2, flow = scene
    assert warp_error(image1, image2, flow) < 0.5
    assert warp_error(image1, image2, flow * np.float32([-1, 1])) > 8.0  # a missing sign flip is caught
    assert warp_error(image1, image2, flow * 1.3) > 1.5  # a flow not rescaled with the image is caught


@pytest.mark.parametrize(
    "name, params",
    [
        ("crop", dict(NO_SPATIAL)),
        ("scale_up", dict(spatial_prob=1.0, stretch_prob=0.0, do_flip=False, min_scale=0.5, max_scale=0.5)),
        ("scale_down", dict(spatial_prob=1.0, stretch_prob=0.0, do_flip=False, min_scale=-0.5, max_scale=-0.5)),
        ("stretch", dict(spatial_prob=1.0, stretch_prob=1.0, max_stretch=0.4, do_flip=False, min_scale=0.0,
                         max_scale=0.0)),
        ("h_flip", dict(spatial_prob=0.0, do_flip=True, h_flip_prob=1.0, v_flip_prob=0.0)),
        ("v_flip", dict(spatial_prob=0.0, do_flip=True, h_flip_prob=0.0, v_flip_prob=1.0)),
        ("all", dict(spatial_prob=1.0, stretch_prob=1.0, do_flip=True, h_flip_prob=0.5, v_flip_prob=0.5,
                     min_scale=-0.4, max_scale=0.6)),
    ],
)
def test_dense_spatial_augmentation_keeps_flow_consistent(scene, name, params):
    image1, image2, flow = scene
    for seed in range(4):
        augmentor = FlowAugmentor(CROP, seed=seed, **NO_PHOTOMETRIC, **params)
        aug1, aug2, aug_flow = augmentor(image1, image2, flow)
        assert aug1.shape == aug2.shape == (*CROP, 3) and aug1.dtype == np.uint8
        assert aug_flow.shape == (*CROP, 2) and aug_flow.dtype == np.float32
        assert warp_error(aug1, aug2, aug_flow) < 1.0, f"{name}, seed {seed}"
        mean_u, mean_v = aug_flow[..., 0].mean(), aug_flow[..., 1].mean()
        if name == "h_flip":
            assert mean_u < -0.5 and mean_v < 0  # u negated, v kept (u > 0 and v <= 0 in the scene)
        if name == "v_flip":
            assert mean_u > 0.5 and mean_v > 0  # v negated, u kept
        if name.startswith("scale"):  # the flow was rescaled with the images: undoing that breaks the warp
            assert warp_error(aug1, aug2, aug_flow / 2 ** params["min_scale"]) > 1.5


def test_dense_small_image_is_enlarged_to_fit_the_crop(scene):
    image1, image2, flow = scene
    augmentor = FlowAugmentor((90, 120), seed=0, **NO_PHOTOMETRIC, **NO_SPATIAL)  # needs >= 98 x 128 before crop
    aug1, aug2, aug_flow = augmentor(image1, image2, flow)
    assert aug1.shape == (90, 120, 3)
    assert warp_error(aug1, aug2, aug_flow) < 1.0


def test_dense_depth_follows_frame1(scene):
    image1, image2, flow = scene
    depth = image1[..., 0].astype(np.float32)
    augmentor = FlowAugmentor(CROP, seed=1, **NO_PHOTOMETRIC, spatial_prob=0.0, h_flip_prob=1.0, v_flip_prob=1.0)
    aug1, _, _, aug_depth = augmentor(image1, image2, flow, depth=depth)
    np.testing.assert_array_equal(aug_depth, aug1[..., 0].astype(np.float32))


# ----------------------------------------------------------------------------------------------- sparse
def test_resize_sparse_flow_integer_scale_is_exact():
    rng = np.random.default_rng(0)
    flow = rng.normal(scale=5, size=(10, 12, 2)).astype(np.float32)
    valid = (rng.random((10, 12)) > 0.6).astype(np.float32)
    new_flow, new_valid = resize_sparse_flow(flow, valid, (20, 24))
    assert new_valid.sum() == valid.sum()
    ys, xs = np.nonzero(valid)
    # pixel centre x -> (x + 0.5) * 2 - 0.5 = 2x + 0.5, rounded up to 2x + 1
    np.testing.assert_array_equal(new_valid[2 * ys + 1, 2 * xs + 1], 1.0)
    np.testing.assert_array_equal(new_flow[2 * ys + 1, 2 * xs + 1], flow[ys, xs] * 2)
    assert not new_flow[new_valid == 0].any()


def test_resize_sparse_flow_downscale_keeps_values_exact():
    rng = np.random.default_rng(1)
    flow = rng.normal(scale=5, size=(30, 40, 2)).astype(np.float32)
    valid = (rng.random((30, 40)) > 0.8).astype(np.float32)
    new_flow, new_valid = resize_sparse_flow(flow, valid, (21, 26))
    fx, fy = 26 / 40, 21 / 30
    ys, xs = np.nonzero(valid)
    targets = np.floor((ys + 0.5) * fy).astype(int), np.floor((xs + 0.5) * fx).astype(int)
    assert np.all(new_valid[targets] == 1) and new_valid.sum() == len(set(zip(*targets)))
    for y, x in zip(*np.nonzero(new_valid)):  # every output value is exactly a scaled input point mapped there
        sources = (targets[0] == y) & (targets[1] == x)
        candidates = flow[ys[sources], xs[sources]] * np.float32([fx, fy])
        assert np.any(np.all(candidates == new_flow[y, x], axis=1))


@pytest.mark.parametrize("seed", range(4))
def test_sparse_augmentation_keeps_valid_points_consistent(scene, seed):
    image1, image2, flow = scene
    valid = (np.random.default_rng(seed).random((HEIGHT, WIDTH)) > 0.7).astype(np.float32)
    sparse_flow = flow * valid[..., None]
    augmentor = SparseFlowAugmentor(CROP, seed=seed, **NO_PHOTOMETRIC, spatial_prob=1.0, stretch_prob=0.5,
                                    min_scale=-0.3, max_scale=0.5, do_flip=True, h_flip_prob=0.5, v_flip_prob=0.5)
    aug1, aug2, aug_flow, aug_valid = augmentor(image1, image2, sparse_flow, valid)
    assert aug_flow.shape == (*CROP, 2) and aug_valid.shape == CROP and aug_valid.dtype == np.float32
    assert set(np.unique(aug_valid)) <= {0.0, 1.0} and aug_valid.sum() > 100
    assert not aug_flow[aug_valid == 0].any()
    assert warp_error(aug1, aug2, aug_flow, aug_valid) < 1.0
    assert warp_error(aug1, aug2, -aug_flow, aug_valid) > 4.0


def test_sparse_pads_small_images_with_invalid_pixels(scene):
    image1, image2, flow = scene
    valid = np.ones((HEIGHT, WIDTH), np.float32)
    augmentor = SparseFlowAugmentor((100, 140), seed=0, **NO_PHOTOMETRIC, **NO_SPATIAL)
    aug1, aug2, aug_flow, aug_valid = augmentor(image1, image2, flow, valid)
    assert aug1.shape == (100, 140, 3) and aug_valid.shape == (100, 140)
    assert 0 < aug_valid.sum() < 100 * 140


# ----------------------------------------------------------------------------------------------- photometric
def test_color_jitter_identity_and_effect(scene):
    image1, _, _ = scene
    rng = np.random.default_rng(0)
    assert ColorJitter().is_identity
    np.testing.assert_array_equal(ColorJitter()(image1, rng), image1)
    brighter = ColorJitter(brightness=0.5)
    changed = brighter(image1, rng)
    assert changed.dtype == np.uint8 and changed.shape == image1.shape and not np.array_equal(changed, image1)
    hue_only = ColorJitter(hue=0.5)(image1, rng)
    grey_level = lambda a: a.astype(float).max(axis=2)  # noqa: E731  (HSV value channel is kept by a hue shift)
    assert np.abs(grey_level(hue_only) - grey_level(image1)).mean() < 2.0
    with pytest.raises(ValueError, match="hue"):
        ColorJitter(hue=0.7)


def test_symmetric_jitter_and_eraser(scene):
    image1, _, flow = scene
    augmentor = FlowAugmentor(CROP, seed=0, asymmetric_color_prob=0.0, eraser_prob=0.0, **NO_SPATIAL)
    out1, out2 = augmentor.color_transform(image1, image1.copy())
    np.testing.assert_array_equal(out1, out2)  # the same jitter for both frames
    eraser = FlowAugmentor((80, 100), seed=0, eraser_prob=1.0, eraser_bounds=(10, 20))
    untouched = image1.copy()
    erased = eraser.eraser_transform(untouched)
    np.testing.assert_array_equal(untouched, image1)  # input not modified in place
    changed = np.any(erased != image1, axis=2)
    assert changed.any()
    mean_color = np.round(image1.reshape(-1, 3).mean(axis=0))
    assert np.all(np.abs(erased[changed].astype(float) - mean_color) <= 1)


def test_seeded_augmentors_are_reproducible(scene):
    image1, image2, flow = scene
    run = lambda seed: FlowAugmentor(CROP, seed=seed, min_scale=-0.2, max_scale=0.5)(image1, image2, flow)  # noqa: E731
    first, again, other = run(5), run(5), run(6)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


class _Draws(Dataset):
    def __init__(self, augmentor: FlowAugmentor):
        self.augmentor = augmentor

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> float:
        return float(self.augmentor.rng.random())


def test_workers_get_different_streams():
    loader = DataLoader(_Draws(FlowAugmentor(CROP, seed=0)), batch_size=1, num_workers=2)
    draws = torch.cat(list(loader)).tolist()
    assert len(set(draws)) == 4  # worker 0 and worker 1 do not repeat each other's numbers


def test_from_config_reads_aug_section():
    cfg = get_cfg_defaults()
    cfg.aug.min_scale, cfg.aug.max_scale, cfg.aug.eraser_prob = -0.1, 1.0, 0.25
    augmentor = FlowAugmentor.from_config(cfg, seed=0, v_flip_prob=0.0)
    assert (augmentor.min_scale, augmentor.max_scale, augmentor.eraser_prob) == (-0.1, 1.0, 0.25)
    assert augmentor.crop_size == tuple(cfg.data.crop_size) and augmentor.v_flip_prob == 0.0
    assert augmentor.color_jitter.hue == pytest.approx(0.5 / 3.14)
    with pytest.raises(ValueError, match="unknown augmentation parameters"):
        FlowAugmentor.from_config(cfg, scale=2)


def test_bad_inputs_are_rejected(scene):
    image1, image2, flow = scene
    augmentor = FlowAugmentor(CROP, seed=0)
    with pytest.raises(ValueError, match="uint8"):
        augmentor(image1.astype(np.float32), image2, flow)
    with pytest.raises(ValueError, match="flow must be"):
        augmentor(image1, image2, flow[:-1])
    with pytest.raises(ValueError, match="min_scale"):
        FlowAugmentor(CROP, min_scale=1.0, max_scale=0.0)
