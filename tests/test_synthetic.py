"""Tests of the procedural flow/depth generator (core.data.synthetic).

The central check is photometric: backward-warping frame 2 with the ground-truth flow must reproduce frame 1
wherever the pixel stays visible, and the same check must fail for a flow that is off by a few pixels.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import cv2
import numpy as np
import pytest
import torch

from core.config import get_cfg_defaults, with_overrides
from core.data.datasets import META_KEYS
from core.data import synthetic
from core.data.synthetic import STREAMS, SyntheticFlowDataset, render_pair
from core.utils.geometry import backward_warp

SIZE = (128, 160)
WARP_MEAN_TOLERANCE = 1.5  # grey levels, mean |warped frame 2 - frame 1| over cleanly visible pixels
WARP_P99_TOLERANCE = 8.0  # grey levels, 99th percentile of the same


def _warp_error(sample: dict, flow: np.ndarray) -> np.ndarray:
    """Per-pixel mean |backward_warp(image2, flow) - image1| over RGB, [H, W]."""
    image1 = torch.from_numpy(sample["image1"]).permute(2, 0, 1)[None].float()
    image2 = torch.from_numpy(sample["image2"]).permute(2, 0, 1)[None].float()
    warped, _ = backward_warp(image2, torch.from_numpy(flow).permute(2, 0, 1)[None])
    return (warped - image1).abs().mean(dim=1)[0].numpy()


def _cleanly_visible(sample: dict) -> np.ndarray:
    """Valid, non-occluded pixels whose four bilinear neighbours in frame 2 all belong to the same layer (so that
    the bilinear lookup of frame 2 does not straddle an occlusion boundary)."""
    layers1, layers2, flow = sample["layers1"], sample["layers2"], sample["flow"]
    height, width = layers1.shape
    target_x = np.arange(width)[None, :] + flow[..., 0]
    target_y = np.arange(height)[:, None] + flow[..., 1]
    left = np.clip(np.floor(target_x), 0, width - 1).astype(int)
    top = np.clip(np.floor(target_y), 0, height - 1).astype(int)
    mask = sample["valid"] & ~sample["occlusion"]
    for rows in (top, np.minimum(top + 1, height - 1)):
        for cols in (left, np.minimum(left + 1, width - 1)):
            mask &= layers2[rows, cols] == layers1
    return mask


def _digest(sample: dict) -> str:
    hasher = hashlib.sha256()
    for key in sorted(sample):
        hasher.update(key.encode())
        hasher.update(np.ascontiguousarray(sample[key]).tobytes())
    return hasher.hexdigest()


def _digest_in_process(seed: int, index: int) -> str:
    return _digest(render_pair(seed, index, SIZE))


def _warp_check_passes(sample: dict, flow: np.ndarray) -> bool:
    """The photometric check: frame 2 warped back by ``flow`` matches frame 1 on cleanly visible pixels."""
    error = _warp_error(sample, flow)[_cleanly_visible(sample)]
    return bool(error.mean() < WARP_MEAN_TOLERANCE and np.percentile(error, 99) < WARP_P99_TOLERANCE)


# ------------------------------------------------------------------------------------------- (1) warp check
@pytest.mark.parametrize("index", range(4))
def test_backward_warp_of_frame2_reproduces_frame1(index: int):
    sample = render_pair(0, index, SIZE)
    assert _cleanly_visible(sample).mean() > 0.5, "most pixels should be cleanly visible"
    assert _warp_check_passes(sample, sample["flow"])


@pytest.mark.parametrize("index", range(4))
def test_warp_check_fails_for_a_wrong_flow(index: int):
    sample = render_pair(0, index, SIZE)
    assert not _warp_check_passes(sample, sample["flow"] + np.float32([3.0, 0.0]))
    assert not _warp_check_passes(sample, sample["flow"] + np.float32([0.0, -3.0]))
    assert not _warp_check_passes(sample, -sample["flow"])


def test_warp_check_with_perspective_and_large_motion():
    sample = render_pair(3, 0, SIZE, max_displacement=120.0, difficulty=1.0, num_layers=(6, 6))
    assert _cleanly_visible(sample).mean() > 0.3
    assert _warp_check_passes(sample, sample["flow"])


def test_occlusion_marks_pixels_leaving_the_image():
    sample = render_pair(1, 2, SIZE)
    height, width = SIZE
    target_x = np.arange(width)[None, :] + sample["flow"][..., 0]
    target_y = np.arange(height)[:, None] + sample["flow"][..., 1]
    outside = (target_x < 0) | (target_x > width - 1) | (target_y < 0) | (target_y > height - 1)
    assert np.all(sample["occlusion"][outside])
    error = _warp_error(sample, sample["flow"])
    assert error[sample["occlusion"]].mean() > error[~sample["occlusion"]].mean()


# ------------------------------------------------------------------------------------------- (2) determinism
def test_same_seed_and_index_give_the_same_sample_in_any_order():
    first = _digest(render_pair(5, 3, SIZE))
    render_pair(5, 4, SIZE)  # something in between must not matter
    render_pair(6, 3, SIZE)
    assert _digest(render_pair(5, 3, SIZE)) == first


def test_same_sample_in_another_process():
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        remote = pool.submit(_digest_in_process, 5, 3).result(timeout=120)
    assert remote == _digest_in_process(5, 3)


def test_different_index_seed_or_stream_give_different_samples():
    reference = render_pair(5, 3, SIZE)
    for other in (render_pair(5, 4, SIZE), render_pair(6, 3, SIZE), render_pair(5, 3, SIZE, stream=1)):
        assert not np.array_equal(other["image1"], reference["image1"])
        assert not np.array_equal(other["flow"], reference["flow"])


def test_photometric_effects_keep_the_geometry():
    exact = render_pair(2, 1, SIZE)
    noisy = render_pair(2, 1, SIZE, photometric=1.0)
    np.testing.assert_array_equal(noisy["flow"], exact["flow"])
    np.testing.assert_array_equal(noisy["depth"], exact["depth"])
    assert not np.array_equal(noisy["image2"], exact["image2"])


# ------------------------------------------------------------------------------------------- (3) ordering
def test_depth_is_the_nearest_covering_layer():
    overlapping = 0
    for index in range(4):
        sample = render_pair(11, index, SIZE, num_layers=(8, 8), return_layers=True)
        coverage, layer_depth = sample["layer_coverage"], sample["layer_depth"]
        assert coverage[0].all(), "the background covers every pixel"
        overlapping += (coverage[1:].sum(axis=0) >= 2).sum()
        nearest_depth = np.where(coverage, layer_depth, np.inf).min(axis=0)
        np.testing.assert_allclose(sample["depth"], nearest_depth, rtol=1e-6)
        nearest_layer = np.where(coverage, layer_depth, np.inf).argmin(axis=0)
        np.testing.assert_array_equal(sample["layers1"], nearest_layer)
        # painter's order = depth order: the covering layer drawn last (largest index) is the nearest one
        np.testing.assert_array_equal(sample["layers1"], coverage.shape[0] - 1 - coverage[::-1].argmax(axis=0))
    assert overlapping > 500, "the test needs overlapping foreground layers"


def test_depth_is_positive_and_in_range():
    sample = render_pair(4, 0, SIZE, depth_range=(2.0, 50.0))
    assert sample["depth"].dtype == np.float32
    assert sample["depth"].min() >= 2.0 and sample["depth"].max() <= 50.0


# ------------------------------------------------------------------------------------------- (4) sizes
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (17, 31), (37, 53), (101, 7), (65, 257)])
def test_any_size(size: tuple[int, int]):
    sample = render_pair(0, 0, size, num_layers=(2, 4))
    height, width = size
    assert sample["image1"].shape == sample["image2"].shape == (height, width, 3)
    assert sample["image1"].dtype == sample["image2"].dtype == np.uint8
    assert sample["flow"].shape == (height, width, 2) and sample["flow"].dtype == np.float32
    assert sample["depth"].shape == (height, width) and sample["depth"].dtype == np.float32
    assert sample["valid"].shape == sample["occlusion"].shape == (height, width)
    assert np.isfinite(sample["flow"]).all() and (sample["depth"] > 0).all()


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="size"):
        render_pair(0, 0, (0, 10))
    with pytest.raises(ValueError, match="rng_or_seed"):
        render_pair(-1, 0, SIZE)
    with pytest.raises(ValueError, match="index"):
        render_pair(0, -2, SIZE)
    with pytest.raises(ValueError, match="unknown parameter"):
        render_pair(0, 0, SIZE, max_flow=3)
    with pytest.raises(ValueError, match="max_displacement"):
        render_pair(0, 0, SIZE, max_displacement=0)
    with pytest.raises(ValueError, match="num_layers"):
        render_pair(0, 0, SIZE, num_layers=(5, 2))


def test_generator_input_is_used_as_is():
    first = render_pair(np.random.default_rng(9), 0, SIZE)
    second = render_pair(np.random.default_rng(9), 123, SIZE)
    np.testing.assert_array_equal(first["flow"], second["flow"])


# ------------------------------------------------------------------------------------------- (5) dataset
def _cfg(**synthetic):
    cfg = get_cfg_defaults()
    cfg.synthetic.image_size = [48, 72]
    cfg.synthetic.train_size = 5
    cfg.synthetic.val_size = 2
    for key, value in synthetic.items():
        cfg.synthetic[key] = value
    return cfg


def test_dataset_returns_the_contract_sample():
    dataset = SyntheticFlowDataset(_cfg(), "train")
    assert len(dataset) == 5 and len(SyntheticFlowDataset(_cfg(), "val")) == 2
    sample = dataset[3]
    assert set(sample) == {"image1", "image2", "flow", "valid", "depth", "meta"}
    for key, shape in (("image1", (3, 48, 72)), ("image2", (3, 48, 72)), ("flow", (2, 48, 72)),
                       ("valid", (48, 72)), ("depth", (1, 48, 72))):
        assert sample[key].shape == shape, key
        assert sample[key].dtype == torch.float32, key
    assert 0 <= sample["image1"].min() and sample["image1"].max() <= 255
    assert sample["valid"].eq(1).all() and sample["depth"].gt(0).all()
    assert sample["meta"]["dataset"] == "synthetic" and sample["meta"]["frame"] == 3
    assert set(sample["meta"]) == set(META_KEYS)
    reference = render_pair(0, 3, (48, 72), stream=STREAMS["train"])
    np.testing.assert_array_equal(sample["flow"].permute(1, 2, 0).numpy(), reference["flow"])
    batch = torch.utils.data.default_collate([dataset[0], dataset[1]])
    assert batch["image1"].shape == (2, 3, 48, 72)


def test_dataset_val_differs_from_train_and_seed_matters():
    train, val = SyntheticFlowDataset(_cfg(), "train"), SyntheticFlowDataset(_cfg(), "val")
    for index in range(2):
        assert not torch.equal(train[index]["image1"], val[index]["image1"])
    other_seed = SyntheticFlowDataset(_cfg(seed=1), "train")
    assert not torch.equal(train[0]["flow"], other_seed[0]["flow"])
    assert torch.equal(train[0]["flow"], SyntheticFlowDataset(_cfg(), "train")[0]["flow"])


def test_dataset_applies_the_augmentor():
    def crop(image1, image2, flow):
        return image1[4:36, 8:40], image2[4:36, 8:40], flow[4:36, 8:40] * 1.0

    def crop_with_depth(image1, image2, flow, depth=None):
        return (*crop(image1, image2, flow), depth[4:36, 8:40])

    sample = SyntheticFlowDataset(_cfg(), "train", augmentor=crop)[0]
    assert sample["image1"].shape == (3, 32, 32) and sample["flow"].shape == (2, 32, 32)
    assert sample["valid"].shape == (32, 32) and sample["depth"].shape == (1, 32, 32)
    assert sample["depth"].eq(0).all(), "depth cannot follow this augmentor, so it is marked invalid"

    sample = SyntheticFlowDataset(_cfg(), "train", augmentor=crop_with_depth)[0]
    reference = render_pair(0, 0, (48, 72))
    np.testing.assert_array_equal(sample["depth"][0].numpy(), reference["depth"][4:36, 8:40])
    np.testing.assert_array_equal(sample["flow"].permute(1, 2, 0).numpy(), reference["flow"][4:36, 8:40])


def test_dataset_difficulty_and_occlusion_options():
    dataset = SyntheticFlowDataset(_cfg(), "train", difficulty=0.0, return_occlusion=True)
    easy = dataset[0]
    assert easy["occlusion"].shape == (48, 72) and easy["occlusion"].dtype == torch.float32
    reference = render_pair(0, 0, (48, 72), difficulty=0.0)
    np.testing.assert_array_equal(easy["occlusion"].numpy(), reference["occlusion"].astype(np.float32))
    dataset.set_difficulty(1.0)
    np.testing.assert_array_equal(dataset[0]["flow"].permute(1, 2, 0).numpy(), render_pair(0, 0, (48, 72))["flow"])
    with pytest.raises(ValueError, match="difficulty"):
        dataset.set_difficulty(1.5)
    with pytest.raises(ValueError, match="augmentor"):
        SyntheticFlowDataset(_cfg(), "train", augmentor=lambda *a: a, return_occlusion=True)


def test_dataset_errors_and_texture_folder(tmp_path):
    with pytest.raises(ValueError, match="split"):
        SyntheticFlowDataset(_cfg(), "test")
    with pytest.raises(FileNotFoundError, match="texture_dir"):
        SyntheticFlowDataset(_cfg(texture_dir=str(tmp_path / "missing")), "train")
    with pytest.raises(FileNotFoundError, match="no images"):
        SyntheticFlowDataset(_cfg(texture_dir=str(tmp_path)), "train")
    with pytest.raises(IndexError):
        SyntheticFlowDataset(_cfg(), "val")[2]
    pattern = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "texture.png"), cv2.GaussianBlur(pattern, (0, 0), 1.5))
    dataset = SyntheticFlowDataset(_cfg(texture_dir=str(tmp_path)), "train")
    assert dataset[0]["image1"].shape == (3, 48, 72)


def test_image_textures_keep_the_warp_exact(tmp_path):
    pattern = np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    path = tmp_path / "texture.png"
    cv2.imwrite(str(path), cv2.GaussianBlur(pattern, (0, 0), 2.0))
    sample = render_pair(0, 0, SIZE, texture_paths=[str(path)], texture_image_prob=1.0)
    assert _warp_check_passes(sample, sample["flow"])
    assert not _warp_check_passes(sample, sample["flow"] + np.float32([3.0, 0.0]))


def test_dead_leaves_pattern_is_opaque_shapes_of_many_sizes():
    field = synthetic._dead_leaves(np.random.default_rng(0), 120, 160)
    assert field.shape == (120, 160) and field.dtype == np.float32 and 0.0 <= field.min() <= field.max() <= 1.0
    assert 0.6 < (field[:, 1:] == field[:, :-1]).mean() < 0.98, "flat leaves separated by sharp edges"
    levels = np.unique(field)
    assert levels.size > 50
    areas = np.concatenate([
        cv2.connectedComponentsWithStats((field == level).astype(np.uint8), connectivity=4)[2][1:, cv2.CC_STAT_AREA]
        for level in levels])
    assert (areas < 30).sum() > 20 and areas.max() > 500, "small leaves and large ones"


def test_dead_leaves_textures_keep_the_warp_exact():
    for index in range(2):
        sample = render_pair(0, index, SIZE, dead_leaves=1.0)
        assert _warp_check_passes(sample, sample["flow"])
        assert not _warp_check_passes(sample, sample["flow"] + np.float32([3.0, 0.0]))


def test_dead_leaves_are_drawn_only_when_asked(monkeypatch):
    calls = []
    draw = synthetic._dead_leaves
    monkeypatch.setattr(synthetic, "_dead_leaves", lambda *args: calls.append(args[1:]) or draw(*args))
    plain = render_pair(0, 0, SIZE)
    assert not calls and _digest(render_pair(0, 0, SIZE, dead_leaves=0.0)) == _digest(plain)
    leaves = render_pair(0, 0, SIZE, dead_leaves=1.0)
    assert calls and not np.array_equal(leaves["image1"], plain["image1"])
    with pytest.raises(ValueError, match="dead_leaves"):
        render_pair(0, 0, SIZE, dead_leaves=1.5)
    assert SyntheticFlowDataset(_cfg(dead_leaves=0.4), "train").params.dead_leaves == 0.4


# ------------------------------------------------------------------------------------------- (6) magnitudes
@pytest.mark.parametrize("max_displacement", [8.0, 40.0])
def test_flow_respects_max_displacement(max_displacement: float):
    largest = []
    for index in range(6):
        flow = render_pair(0, index, SIZE, max_displacement=max_displacement)["flow"]
        largest.append(np.linalg.norm(flow, axis=-1).max())
    assert max(largest) <= 1.02 * max_displacement
    assert max(largest) >= 0.5 * max_displacement, "the knob should be reached, not just respected"


def test_difficulty_scales_motion_and_layers():
    def statistics(difficulty: float) -> tuple[float, float]:
        samples = [render_pair(0, i, (64, 80), difficulty=difficulty) for i in range(8)]
        magnitude = np.mean([np.percentile(np.linalg.norm(s["flow"], axis=-1), 95) for s in samples])
        layers = np.mean([len(np.unique(s["layers1"])) for s in samples])
        return magnitude, layers

    easy, hard = statistics(0.0), statistics(1.0)
    assert easy[0] < hard[0]
    assert easy[1] < hard[1]


def test_validation_without_the_texture_folder_falls_back_to_procedural_textures(tmp_path, messages):
    """A checkpoint's stored config names the texture folder it was trained with; a fresh checkout lacks it.
    Validation then warns and uses procedural textures (the same pairs as with no texture folder); training still
    raises, since there the textures are the point."""
    from core.data.loader import build_train_dataset, build_val_dataset

    cfg = with_overrides(_cfg(), ["synthetic.texture_dir", str(tmp_path / "missing"),
                                  "data.train_sets", "['synthetic']"])
    procedural = build_val_dataset(with_overrides(cfg, ["synthetic.texture_dir", ""]), "synthetic")
    fallback = build_val_dataset(cfg, "synthetic")
    assert fallback.params.texture_paths == () and len(fallback) == 2
    torch.testing.assert_close(fallback[1]["image1"], procedural[1]["image1"], rtol=0, atol=0)
    assert any("synthetic.texture_dir" in m and "missing" in m and "procedural" in m for m in messages)
    depth = build_val_dataset(cfg, "synthetic_depth")
    assert depth.source.params.texture_paths == ()
    with pytest.raises(FileNotFoundError, match="texture_dir"):
        build_train_dataset(cfg)

    empty = build_val_dataset(with_overrides(cfg, ["synthetic.texture_dir", str(tmp_path)]), "synthetic")
    assert empty.params.texture_paths == () and any("holds no images" in m for m in messages)
    cv2.imwrite(str(tmp_path / "texture.png"), np.full((40, 50, 3), 128, np.uint8))
    present = build_val_dataset(with_overrides(cfg, ["synthetic.texture_dir", str(tmp_path)]), "synthetic")
    assert present.params.texture_paths == (str(tmp_path / "texture.png"),)


def test_folder_sampling_draws_every_texture_subfolder_equally_often(tmp_path, monkeypatch):
    """24 photographs beside 164 video frames should not be drawn 13 % of the time: with
    ``synthetic.texture_sampling folder`` every subfolder is drawn equally often, then an image within it."""
    root = tmp_path / "textures"
    for folder, count in (("photos", 1), ("videos", 9)):
        (root / folder).mkdir(parents=True)
        for i in range(count):
            cv2.imwrite(str(root / folder / f"{i}.png"), np.full((8, 8, 3), i, np.uint8))
    cv2.imwrite(str(root / "loose.png"), np.zeros((8, 8, 3), np.uint8))
    paths = synthetic.find_texture_images(root)
    groups = synthetic.texture_folder_groups(root, paths)
    assert [[paths[i].split("textures/")[1] for i in group] for group in groups] == [
        ["loose.png"], ["photos/0.png"], [f"videos/{i}.png" for i in range(9)]]

    drawn = []
    monkeypatch.setattr(synthetic, "_image_texture", lambda rng, path, h, w: drawn.append(path) or
                        np.zeros((h, w, 3), np.float32))

    def share_of_photos(sampling: str) -> float:
        dataset = SyntheticFlowDataset(_cfg(texture_dir=str(root), texture_image_prob=1.0,
                                            texture_sampling=sampling), "train")
        drawn.clear()
        rng = np.random.default_rng(0)
        for _ in range(600):
            synthetic._texture(rng, 8, 8, dataset.params)
        return sum("photos" in p for p in drawn) / len(drawn)

    assert 0.28 < share_of_photos("folder") < 0.39  # 1 of 3 groups
    assert 0.05 < share_of_photos("image") < 0.14  # 1 of 11 images
    for bad in (((), tuple(range(len(paths)))), ((0.0,), tuple(range(1, len(paths))))):
        with pytest.raises(ValueError, match="texture_groups"):
            synthetic.SceneParams(texture_paths=paths, texture_groups=bad)
    with pytest.raises(ValueError, match="not under the texture folder"):
        synthetic.texture_folder_groups(tmp_path / "elsewhere", paths)
    monkeypatch.undo()
    sample = SyntheticFlowDataset(_cfg(texture_dir=str(root), texture_sampling="folder"), "train")[0]
    assert sample["image1"].shape == (3, 48, 72) and np.isfinite(np.asarray(sample["flow"])).all()
    with pytest.raises(ValueError, match="every index"):
        synthetic.SceneParams(texture_paths=paths, texture_groups=((0, 1),))
    with pytest.raises(ValueError, match="texture_sampling"):
        with_overrides(get_cfg_defaults(), ["synthetic.texture_sampling", "folders"])
