"""Tests of the generator's monocular depth cues (core.data.synthetic with ``depth_cues=True``).

The cues must be there (the ground's depth grows up the image towards a sky at the far depth, objects stand on the
ground with an image size of focal * extent / depth, farther textures are finer and hazier) and the flow side must
stay exact (the photometric warp check of tests/test_synthetic.py still passes and still fails for a wrong flow).
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np
import pytest
import torch

from core.config import get_cfg_defaults
from core.data.synthetic import SceneParams, SyntheticFlowDataset, _Haze, _texture, render_pair
from test_synthetic import _digest, _warp_check_passes

SIZE = (128, 160)
FAR = 80.0  # the default far depth (metres): the sky's depth


def _cues(seed: int, index: int, size=SIZE, **params) -> dict:
    return render_pair(seed, index, size, depth_cues=True, return_layers=True, **params)


def _cues_digest(seed: int, index: int) -> str:
    return _digest(render_pair(seed, index, SIZE, depth_cues=True))


# ------------------------------------------------------------------------------------------- flow stays exact
@pytest.mark.parametrize("index", range(4))
def test_warp_check_passes_with_cues_and_fails_for_a_wrong_flow(index: int):
    sample = render_pair(0, index, SIZE, depth_cues=True)
    assert _warp_check_passes(sample, sample["flow"])
    assert not _warp_check_passes(sample, sample["flow"] + np.float32([3.0, 0.0]))
    assert not _warp_check_passes(sample, sample["flow"] + np.float32([0.0, -3.0]))


def test_warp_check_with_cues_large_motion_and_photometric_geometry():
    sample = render_pair(3, 0, SIZE, depth_cues=True, max_displacement=120.0, num_layers=(6, 6))
    assert _warp_check_passes(sample, sample["flow"])
    noisy = render_pair(3, 0, SIZE, depth_cues=True, max_displacement=120.0, num_layers=(6, 6), photometric=1.0)
    np.testing.assert_array_equal(noisy["flow"], sample["flow"])
    np.testing.assert_array_equal(noisy["depth"], sample["depth"])


@pytest.mark.parametrize("max_displacement", [8.0, 40.0])
def test_cues_respect_max_displacement(max_displacement: float):
    largest = [np.linalg.norm(render_pair(0, i, SIZE, depth_cues=True, max_displacement=max_displacement)["flow"],
                              axis=-1).max() for i in range(4)]
    assert max(largest) <= 1.02 * max_displacement
    assert max(largest) >= 0.5 * max_displacement


# ------------------------------------------------------------------------------------------- determinism
def test_cues_are_deterministic_by_seed_stream_and_index():
    first = _cues_digest(5, 3)
    render_pair(5, 4, SIZE, depth_cues=True)  # something in between must not matter
    assert _cues_digest(5, 3) == first
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        assert pool.submit(_cues_digest, 5, 3).result(timeout=120) == first
    reference = render_pair(5, 3, SIZE, depth_cues=True)
    for other in (render_pair(5, 4, SIZE, depth_cues=True), render_pair(6, 3, SIZE, depth_cues=True),
                  render_pair(5, 3, SIZE, depth_cues=True, stream=1), render_pair(5, 3, SIZE)):
        assert not np.array_equal(other["image1"], reference["image1"])
        assert not np.array_equal(other["depth"], reference["depth"])


# ------------------------------------------------------------------------------------------- the ground
def test_ground_depth_grows_up_the_image_to_the_sky():
    skies = 0
    for index in range(8):
        ground = _cues(1, index)["layer_depth"][0].astype(np.float64)  # the background layer everywhere
        assert ground.min() >= 1.0 and ground.max() <= FAR
        rising = np.diff(ground, axis=0)  # row r+1 minus row r: going down the image, depth never grows
        assert (rising <= 1e-4 * ground[1:]).all()
        assert (ground[-1] < ground[0]).any() or (ground == FAR).all()
        sky = ground >= FAR * (1 - 1e-6)
        skies += sky[0].all()
        assert not sky[-1].any(), "the bottom row is ground"
        # a plane seen in perspective: its inverse depth is linear in the image (second differences vanish)
        disparity = 1.0 / ground
        flat = ~sky[:-2] & ~sky[1:-1] & ~sky[2:]
        np.testing.assert_allclose((disparity[2:] - 2 * disparity[1:-1] + disparity[:-2])[flat], 0.0, atol=1e-6)
        flat = ~sky[:, :-2] & ~sky[:, 1:-1] & ~sky[:, 2:]
        np.testing.assert_allclose((disparity[:, 2:] - 2 * disparity[:, 1:-1] + disparity[:, :-2])[flat], 0.0,
                                   atol=1e-6)
    assert 2 <= skies <= 8, "most scenes show a sky along the top row"


def test_depth_is_the_nearest_covering_layer_with_cues():
    for index in range(4):
        sample = _cues(11, index, num_layers=(8, 8))
        coverage, layer_depth = sample["layer_coverage"], sample["layer_depth"]
        assert coverage[0].all()
        nearest = np.where(coverage, layer_depth, np.inf)
        np.testing.assert_allclose(sample["depth"], nearest.min(axis=0), rtol=1e-6)
        np.testing.assert_array_equal(sample["layers1"], nearest.argmin(axis=0))
        np.testing.assert_array_equal(sample["layers1"], coverage.shape[0] - 1 - coverage[::-1].argmax(axis=0))


@pytest.mark.parametrize("depth_range", [(2.0, 50.0), (1.0, 80.0), (0.5, 1.5)])
def test_cue_depths_stay_in_range(depth_range):
    for index in range(3):
        depth = render_pair(4, index, SIZE, depth_cues=True, depth_range=depth_range)["depth"]
        assert depth.dtype == np.float32
        assert depth.min() >= depth_range[0] and depth.max() <= depth_range[1] * (1 + 1e-6)


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (17, 31), (101, 7), (65, 257)])
def test_cues_at_any_size(size):
    sample = render_pair(0, 0, size, depth_cues=True, num_layers=(2, 4))
    assert sample["image1"].shape == (*size, 3) and sample["depth"].shape == size
    assert np.isfinite(sample["flow"]).all() and (sample["depth"] > 0).all()


# ------------------------------------------------------------------------------------------- the objects
def _objects(count: int) -> list[dict]:
    """Frame-1 statistics of the foreground layers whose coverage lies inside the image (not cut by an edge)."""
    found = []
    for index in range(count):
        sample = _cues(2, index, (192, 256), num_layers=(6, 6))
        ground = sample["layer_depth"][0]
        height, width = ground.shape
        for covered, depth in zip(sample["layer_coverage"][1:], sample["layer_depth"][1:]):
            rows, cols = np.flatnonzero(covered.any(axis=1)), np.flatnonzero(covered.any(axis=0))
            if rows.size < 3 or rows[0] == 0 or rows[-1] == height - 1 or cols[0] == 0 or cols[-1] == width - 1:
                continue
            object_depth = float(depth[rows[-1], cols[0]])
            # per column: the ground's depth falls monotonically down the image, so the rows where it is farther
            # than the object end at the row where the object would stand on it
            contact = (ground[:, cols] > object_depth).sum(axis=0)
            lowest = height - 1 - np.argmax(covered[::-1, cols], axis=0)
            found.append({"scene": index, "depth": object_depth, "bottom": rows[-1], "rows": rows.size,
                          "gap": int((contact - lowest).min()), "flat": bool(np.ptp(depth) < 1e-6)})
    return found


def _rank_correlation(a, b) -> float:
    ranks = [np.argsort(np.argsort(np.asarray(x, np.float64))) for x in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def test_objects_stand_on_the_ground_lower_is_nearer_and_nearer_is_larger():
    objects = _objects(12)
    assert len(objects) >= 20, "the test needs objects inside the image"
    assert all(o["flat"] for o in objects), "objects are fronto-parallel: one depth"
    depth = np.array([o["depth"] for o in objects])
    gap = np.array([o["gap"] for o in objects])  # rows between the object and the ground line of its depth
    assert (gap >= 1).all(), "an object is nearer than the ground under it"
    assert (gap <= 3).mean() > 0.55 and (gap > 10).mean() > 0.1, "most stand on the ground, some float above it"
    pairs = [(a, b) for a in objects for b in objects if a["scene"] == b["scene"] and a["bottom"] > b["bottom"] + 2]
    assert len(pairs) >= 20
    assert np.mean([a["depth"] < b["depth"] for a, b in pairs]) > 0.75, "in a scene, lower in the image = nearer"
    assert _rank_correlation([o["rows"] for o in objects], depth) < -0.4, "nearer = larger in the image"


def test_texture_detail_grows_with_distance_and_haze_fades_to_its_colour():
    def mean_gradient(detail: float) -> float:
        texture = _texture(np.random.default_rng(7), 96, 96, SceneParams(difficulty=0.0), detail).astype(np.float32)
        return float(np.abs(np.diff(texture, axis=0)).mean() + np.abs(np.diff(texture, axis=1)).mean())

    gradients = [mean_gradient(detail) for detail in (0.25, 1.0, 4.0)]
    assert gradients[0] < gradients[1] < gradients[2]

    haze = _Haze(colour=np.float32([200, 210, 230]), range=30.0, strength=0.8)
    colour = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    distance = [np.abs(haze.apply(colour, z).astype(np.float32) - haze.colour).mean() for z in (1.0, 10.0, 80.0)]
    assert distance[0] > distance[1] > distance[2]
    np.testing.assert_allclose(haze.apply(colour, 1e6), np.rint(colour + 0.8 * (haze.colour - colour)), atol=1)


# ------------------------------------------------------------------------------------------- configuration
def test_dataset_reads_depth_cues_from_the_config_and_the_override():
    cfg = get_cfg_defaults()
    cfg.synthetic.image_size = [48, 72]
    cfg.synthetic.train_size = 2
    assert cfg.synthetic.depth_cues is False, "the flow stages keep the layered scenes"
    layered = SyntheticFlowDataset(cfg, "train")[1]
    np.testing.assert_array_equal(layered["depth"][0].numpy(), render_pair(0, 1, (48, 72))["depth"])
    cues = SyntheticFlowDataset(cfg, "train", depth_cues=True)[1]
    np.testing.assert_array_equal(cues["depth"][0].numpy(), render_pair(0, 1, (48, 72), depth_cues=True)["depth"])
    cfg.synthetic.depth_cues = True
    assert torch.equal(SyntheticFlowDataset(cfg, "train")[1]["image1"], cues["image1"])
    with pytest.raises(ValueError, match="depth_cues"):
        render_pair(0, 0, (8, 8), depth_cues="yes")
