"""Depth datasets in their official layouts: values in metres, invalid masks, augmentation alignment, loader names."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from core.config import load_config
from core.data import depth_datasets, formats
from core.data.datasets import DatasetNotFoundError, RepeatDataset
from core.data.depth_datasets import (
    DEPTH_META_KEYS,
    DepthAugmentor,
    KittiEigenDepth,
    SintelDepth,
    SyntheticDepthDataset,
    VirtualKitti2Depth,
    read_eigen_split,
    resize_sparse_depth,
)
from core.data.loader import DEPTH_SETS, build_train_dataset, build_val_dataset, is_depth_set
from core.losses import depth_sequence_loss
from core.metrics import SKIP_NO_GROUND_TRUTH, DepthMetricAccumulator
from fake_trees import (
    DEPTH_HEIGHT,
    DEPTH_WIDTH,
    KITTI_DRIVES,
    VKITTI_FAR_ROWS,
    eigen_line,
    image_value,
    kitti_depth_codes,
    make_kitti_depth,
    make_sintel_depth,
    make_vkitti2,
    sintel_depth_values,
    vkitti_depth_codes,
)

REPO = Path(__file__).resolve().parents[1]
NO_PHOTOMETRIC = dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
DATE1, DRIVE1, _ = KITTI_DRIVES[0]
DATE2, DRIVE2, _ = KITTI_DRIVES[1]


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("depth_trees")
    return {"kitti_depth": make_kitti_depth(base / "kitti_depth"), "vkitti": make_vkitti2(base / "vkitti2"),
            "sintel_depth": make_sintel_depth(base / "Sintel-depth")}


def _check_sample(sample: dict, size: tuple[int, int] = (DEPTH_HEIGHT, DEPTH_WIDTH)) -> None:
    assert set(sample) == {"image1", "depth", "valid", "meta"}  # monocular: no image2, no flow
    assert sample["image1"].shape == (3, *size) and sample["image1"].dtype == torch.float32
    assert sample["depth"].shape == (1, *size) and sample["depth"].dtype == torch.float32
    assert sample["valid"].shape == size and sample["valid"].dtype == torch.float32
    assert torch.equal(sample["valid"], (sample["depth"][0] > 0).float())
    assert tuple(sample["meta"]) == DEPTH_META_KEYS


def _colour(sample: dict) -> tuple[int, int]:
    """(red, green) of the uniform fake image."""
    image = sample["image1"]
    return int(image[0].mean().round()), int(image[1].mean().round())


# ----------------------------------------------------------------------------------------------- KITTI Eigen
def test_kitti_eigen_values_are_metres_and_zero_is_invalid(trees):
    dataset = KittiEigenDepth(trees["kitti_depth"], split="training")
    assert len(dataset) == 4
    metas = [dataset[i]["meta"] for i in range(4)]
    assert [(m["scene"], m["frame"]) for m in metas] == [
        (f"{DRIVE1}/image_02", 1), (f"{DRIVE1}/image_02", 2), (f"{DRIVE1}/image_03", 1), (f"{DRIVE2}/image_02", 3)]
    assert "/val/" in metas[3]["depth_path"] and "/train/" in metas[0]["depth_path"]
    for index, (frame, camera) in enumerate([(1, 2), (2, 2), (1, 3), (3, 2)]):
        sample = dataset[index]
        _check_sample(sample)
        codes = kitti_depth_codes(frame, camera)
        assert torch.equal(sample["depth"][0], torch.from_numpy(codes.astype(np.float32) / 256.0))
        assert torch.equal(sample["valid"], torch.from_numpy((codes > 0).astype(np.float32)))
        assert _colour(sample) == (image_value(frame, camera), 255 - image_value(frame, camera))
    assert float(dataset[0]["depth"][0, 0, 1]) == pytest.approx((1 * 97 + 25 + 1) / 256)  # code 123 -> 0.48 m


def test_kitti_eigen_test_split_counts_frames_without_ground_truth(trees, messages):
    dataset = KittiEigenDepth(trees["kitti_depth"], split="test")
    assert len(dataset) == 2 and dataset.split == "test"
    assert dataset.skipped[KittiEigenDepth.no_ground_truth] == [
        f"eigen_test_files_with_gt.txt:3 {DATE2}/{DRIVE2}/image_02/data/{0:010d}.png"]
    assert dataset.skipped[KittiEigenDepth.files_missing] == []
    assert any("1 of 3 frames are skipped" in message and "None" in message for message in messages)


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _kitti_with_split(tmp_path: Path, lines: list[str]) -> Path:
    root = make_kitti_depth(tmp_path / "kitti_depth")
    _write(root / "custom.txt", lines)
    return root


def test_kitti_eigen_missing_frames_error_names_them(tmp_path):
    lines = [eigen_line(DATE1, DRIVE1, 1), eigen_line(DATE1, DRIVE1, 0),  # frame 0 has no annotated depth file
             eigen_line(DATE1, DRIVE1, 9), eigen_line(DATE2, DRIVE2, 2)]  # frame 9 has neither image nor depth
    root = _kitti_with_split(tmp_path, lines)
    with pytest.raises(DatasetNotFoundError) as error:
        KittiEigenDepth(root, split_file=root / "custom.txt")
    message = str(error.value)
    assert "2 of 4 frames listed in" in message and "custom.txt" in message
    assert "line 2: ground truth not found" in message and f"{0:010d}.png" in message
    assert "line 3: image not found" in message and f"{9:010d}.png" in message
    assert "line 1" not in message and "line 4" not in message
    assert "on_missing='skip'" in message


def test_kitti_eigen_missing_frames_skip_warns_with_count(tmp_path, messages):
    lines = [eigen_line(DATE1, DRIVE1, 1)] + [eigen_line(DATE1, DRIVE1, frame) for frame in range(10, 17)]
    root = _kitti_with_split(tmp_path, lines)
    dataset = KittiEigenDepth(root, split_file=root / "custom.txt", on_missing="skip")
    assert len(dataset) == 1 and len(dataset.skipped[KittiEigenDepth.files_missing]) == 7
    warning = next(message for message in messages if "skipping" in message)
    assert "7 of 8 frames" in warning and "... and 2 more" in warning  # the first 5 are named
    with pytest.raises(DatasetNotFoundError, match="no frames with ground-truth depth"):
        KittiEigenDepth(root, split_file=_write(root / "none.txt", lines[1:]), on_missing="skip")


def test_kitti_eigen_accepts_jpg_images(tmp_path):
    root = make_kitti_depth(tmp_path / "kitti_depth")
    png = root / "raw" / DATE1 / DRIVE1 / "image_02" / "data" / f"{1:010d}.png"
    cv2.imwrite(str(png.with_suffix(".jpg")), cv2.imread(str(png)))
    png.unlink()
    dataset = KittiEigenDepth(root)
    assert dataset.frames[0].image.suffix == ".jpg" and _colour(dataset[0])[0] == pytest.approx(image_value(1), abs=2)


def test_eigen_split_format_errors(tmp_path):
    good = eigen_line(DATE1, DRIVE1, 1)
    assert read_eigen_split(_write(tmp_path / "ok.txt", ["# comment", "", good])) == [
        (3, good.split()[0], good.split()[1])]
    cases = {"3 columns": [good, "a b"], "not '<date>/<drive>": [good.replace("image_02/data", "image_02")],
             "focal length": [good.replace("721.5377", "f=721")]}
    for match, lines in cases.items():
        with pytest.raises(ValueError, match=match) as error:
            read_eigen_split(_write(tmp_path / "bad.txt", lines))
        assert "bad.txt:" in str(error.value)


def test_kitti_eigen_missing_split_file_and_folders(tmp_path):
    root = make_kitti_depth(tmp_path / "kitti_depth")
    (root / "eigen_train_files_with_gt.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"(?s)Eigen split file not found.*eigen_train_files_with_gt"):
        KittiEigenDepth(root)
    with pytest.raises(DatasetNotFoundError, match="data_depth_annotated"):
        KittiEigenDepth(make_kitti_depth(tmp_path / "other") / "raw")
    with pytest.raises(ValueError, match="on_missing"):
        KittiEigenDepth(root, split="test", on_missing="ignore")


def test_kitti_eigen_rejects_8bit_ground_truth(tmp_path):
    root = make_kitti_depth(tmp_path / "kitti_depth")
    dataset = KittiEigenDepth(root)
    cv2.imwrite(str(dataset.frames[0].depth), np.full((DEPTH_HEIGHT, DEPTH_WIDTH), 40, np.uint8))
    with pytest.raises(ValueError, match=r"16-bit PNG, found a 8-bit") as error:
        dataset[0]
    assert str(dataset.frames[0].depth) in str(error.value)


def test_all_invalid_ground_truth_is_kept_and_skipped_by_metrics(tmp_path):
    root = make_kitti_depth(tmp_path / "kitti_depth")
    dataset = KittiEigenDepth(root)
    cv2.imwrite(str(dataset.frames[1].depth), np.zeros((DEPTH_HEIGHT, DEPTH_WIDTH), np.uint16))
    assert len(dataset) == 4 and float(dataset[1]["valid"].sum()) == 0
    accumulator = DepthMetricAccumulator()
    for index in range(len(dataset)):
        sample = dataset[index]
        accumulator.update(sample["depth"] + 0.5, sample["depth"], sample["valid"])
    assert accumulator.num_images == 3 and accumulator.skipped == {SKIP_NO_GROUND_TRUTH: ["image 1"]}
    assert all(np.isfinite(value) for value in accumulator.compute().values())


def test_depth_readers_live_in_formats_and_stay_importable(tmp_path):
    assert depth_datasets.read_vkitti_depth is formats.read_vkitti_depth
    assert depth_datasets.read_sintel_depth is formats.read_sintel_depth
    codes = np.array([[0, 150, 65535], [65534, 1, 4000]], np.uint16)
    cv2.imwrite(str(tmp_path / "depth.png"), codes)
    depth, valid = formats.read_vkitti_depth(tmp_path / "depth.png")
    assert valid.tolist() == [[0, 1, 0], [1, 1, 1]] and depth.dtype == np.float32
    np.testing.assert_allclose(depth, [[0, 1.5, 0], [655.34, 0.01, 40.0]], rtol=1e-6)
    formats.write_dpt(tmp_path / "depth.dpt", np.array([[np.inf, 0.0, -1.0, 2.5]], np.float32))
    depth, valid = formats.read_sintel_depth(tmp_path / "depth.dpt")
    assert depth.tolist() == [[0.0, 0.0, 0.0, 2.5]] and valid.tolist() == [[0, 0, 0, 1]]
    with pytest.raises(FileNotFoundError, match="absent.png"):
        formats.read_vkitti_depth(tmp_path / "absent.png")


# ----------------------------------------------------------------------------------------------- Virtual KITTI 2
def test_vkitti_centimetres_far_plane_and_scan(trees):
    dataset = VirtualKitti2Depth(trees["vkitti"])
    assert [(f.scene, f.frame) for f in dataset.frames] == [
        ("Scene01/clone", 0), ("Scene01/clone", 1), ("Scene01/fog", 0), ("Scene01/fog", 1),
        ("Scene02/clone", 0), ("Scene02/clone", 1)]
    sample = dataset[1]
    _check_sample(sample)
    codes = vkitti_depth_codes(1)
    expected_valid = (codes > 0) & (codes < 65535)
    assert torch.equal(sample["valid"], torch.from_numpy(expected_valid.astype(np.float32)))
    assert float(sample["valid"][:VKITTI_FAR_ROWS].sum()) == 0
    assert float(sample["depth"][0, :VKITTI_FAR_ROWS].max()) == 0
    assert torch.allclose(sample["depth"][0], torch.from_numpy(np.where(expected_valid, codes / 100.0, 0.0)).float())
    assert float(sample["depth"][0, VKITTI_FAR_ROWS, 0]) == pytest.approx((150 + 211 * VKITTI_FAR_ROWS + 7) / 100)
    assert _colour(sample)[0] == pytest.approx(image_value(1), abs=2)  # jpg
    assert len(VirtualKitti2Depth(trees["vkitti"], scenes=["Scene02"], variations=["clone"])) == 2
    assert len(VirtualKitti2Depth(trees["vkitti"], camera="Camera_1")) == 6
    with pytest.raises(DatasetNotFoundError, match="Scene06"):
        VirtualKitti2Depth(trees["vkitti"], scenes=["Scene06"])


def test_vkitti_rejects_8bit_depth_and_missing_depth(tmp_path):
    root = make_vkitti2(tmp_path / "vkitti2")
    dataset = VirtualKitti2Depth(root)
    cv2.imwrite(str(dataset.frames[0].depth), np.full((DEPTH_HEIGHT, DEPTH_WIDTH), 40, np.uint8))
    with pytest.raises(ValueError, match=r"Virtual KITTI 2 depth \(centimetres\) must be a 16-bit PNG, found a 8-bit"):
        dataset[0]
    dataset.frames[1].depth.unlink()
    with pytest.raises(DatasetNotFoundError, match=r"(?s)ground-truth depth not found.*depth_00001\.png"):
        VirtualKitti2Depth(root)


# ----------------------------------------------------------------------------------------------- Sintel depth
def test_sintel_depth_values_passes_and_no_cap(trees):
    clean = SintelDepth(trees["sintel_depth"], pass_name="clean")
    final = SintelDepth(trees["sintel_depth"], pass_name="final")
    assert [(f.scene, f.frame) for f in clean.frames] == [("alley_1", 1), ("alley_1", 2), ("market_2", 1)]
    sample = clean[1]
    _check_sample(sample)
    expected = sintel_depth_values(2)
    assert sample["valid"][0, :3].tolist() == [0.0, 0.0, 0.0]  # inf, 0 and negative depth are invalid
    assert torch.equal(sample["depth"][0, 1:], torch.from_numpy(expected[1:]))
    assert float(sample["depth"].max()) > 80 and float(sample["valid"][-1, -1]) == 1  # no clamping to 80 m
    assert _colour(sample)[0] == image_value(2) and _colour(final[1])[0] == image_value(2) + 100


def test_sintel_depth_images_from_another_root(tmp_path):
    root = make_sintel_depth(tmp_path / "depth_only", image_root=tmp_path / "Sintel")
    with pytest.raises(DatasetNotFoundError, match="clean"):
        SintelDepth(root)
    assert len(SintelDepth(root, image_root=tmp_path / "Sintel")) == 3


def test_far_ground_truth_is_left_to_the_loss_range(trees):
    sample = SintelDepth(trees["sintel_depth"])[1]
    depth = sample["depth"][None]
    far = (depth > 80).sum()
    assert far > 0
    disparity = [torch.full_like(depth, 1.0 / 80.0)]  # predicts 80 m everywhere
    _, all_pixels = depth_sequence_loss(disparity, depth, sample["valid"][None], max_depth=1000.0)
    _, capped = depth_sequence_loss(disparity, depth, sample["valid"][None], max_depth=80.0)
    assert capped["a1"] != all_pixels["a1"]


# ----------------------------------------------------------------------------------------------- augmentation
def test_resize_sparse_depth_moves_points_without_changing_values():
    depth = np.zeros((4, 8), np.float32)
    depth[1, 3], depth[2, 6], depth[3, 7] = 5.0, 7.0, 9.0
    up = resize_sparse_depth(depth, (8, 16))
    assert np.count_nonzero(up) == 3
    assert (up[3, 7], up[5, 13], up[7, 15]) == (5.0, 7.0, 9.0)  # floor((x + 0.5) * 2), values unchanged
    down = resize_sparse_depth(depth, (2, 4))  # (2, 6) and (3, 7) meet on pixel (1, 3): the nearest stays
    assert down[0, 1] == 5.0 and down[1, 3] == 7.0 and np.count_nonzero(down) == 2


def _blocks(height: int = 64, width: int = 96, block: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """An image of uniform blocks (R = 20 * column, G = 20 * row) and a depth that is a function of the block."""
    ys, xs = np.mgrid[0:height, 0:width]
    row, column = ys // block, xs // block
    image = np.stack([20 * column, 20 * row, np.full_like(row, 77)], axis=2).astype(np.uint8)
    depth = (1.0 + column + 100.0 * row).astype(np.float32)
    return image, depth


def _assert_aligned(image: np.ndarray, depth: np.ndarray, sparse: bool) -> None:
    """Every pixel whose colour is exactly a block colour has that block's depth (or 0 if sparse and empty)."""
    red, green, blue = (image[..., c].astype(np.int64) for c in range(3))
    exact = (red % 20 == 0) & (green % 20 == 0) & (blue == 77)
    expected = 1.0 + red / 20 + 100.0 * green / 20
    checked = exact & (depth > 0) if sparse else exact
    assert checked.sum() > 0.3 * (depth > 0).sum() and checked.sum() > 20
    np.testing.assert_array_equal(depth[checked], expected[checked])


@pytest.mark.parametrize("sparse", [False, True])
def test_augmentation_keeps_depth_aligned_and_values_unscaled(sparse):
    image, depth = _blocks()
    if sparse:
        depth[::2, :] = 0.0
        depth[:, ::3] = 0.0
    values = set(np.unique(depth)) | {0.0}
    augmentor = DepthAugmentor((40, 56), min_scale=-0.4, max_scale=0.6, spatial_prob=1.0, stretch_prob=0.5,
                               h_flip_prob=0.5, v_flip_prob=0.5, seed=3, **NO_PHOTOMETRIC)
    flipped = 0
    for _ in range(12):
        out_image, out_depth = augmentor(image, depth, sparse=sparse)
        assert out_image.shape == (40, 56, 3) and out_depth.shape == (40, 56) and out_depth.dtype == np.float32
        _assert_aligned(out_image, out_depth, sparse)
        assert set(np.unique(out_depth)) <= values  # moved, never interpolated or multiplied by the scale
        flipped += int(out_image[0, 0, 0] > out_image[0, -1, 0])
    assert flipped > 0


def test_dense_resize_samples_the_pixel_the_image_is_centred_on():
    ys, xs = np.mgrid[0:63, 0:95]
    depth = (1.0 + xs + 1000.0 * ys).astype(np.float32)  # unique per pixel: each output names its source pixel
    image = np.stack([2 * xs, 2 * ys, np.zeros_like(xs)], axis=2).astype(np.uint8)  # ramps: image position x 2
    scale = float(np.log2(136 / 95))  # 63x95 -> 90x136 = the crop (no offset); odd sizes: no nearest-neighbour ties
    augmentor = DepthAugmentor((90, 136), min_scale=scale, max_scale=scale, spatial_prob=1.0, stretch_prob=0.0,
                               do_flip=False, **NO_PHOTOMETRIC)
    out_image, out_depth = augmentor(image, depth)
    source_y, source_x = np.divmod(out_depth.astype(np.int64) - 1, 1000)
    rows, columns = np.mgrid[0:90, 0:136]
    np.testing.assert_array_equal(source_x, np.floor((columns + 0.5) * 95 / 136))  # pixel-centre nearest
    np.testing.assert_array_equal(source_y, np.floor((rows + 0.5) * 63 / 90))
    inner = (slice(2, -2), slice(2, -2))  # the bilinear image is sampled at (x + 0.5) / f - 0.5: within half a pixel
    assert np.abs(out_image[..., 0][inner] / 2.0 - source_x[inner]).max() <= 0.5 + 0.25  # + uint8 rounding
    assert np.abs(out_image[..., 1][inner] / 2.0 - source_y[inner]).max() <= 0.5 + 0.25


def test_augmentation_catches_a_misaligned_depth():
    image, depth = _blocks()
    out_image, out_depth = DepthAugmentor((64, 96), spatial_prob=0.0, do_flip=False, **NO_PHOTOMETRIC)(image, depth)
    with pytest.raises(AssertionError):
        _assert_aligned(out_image, out_depth[:, ::-1], sparse=False)


def test_flips_and_crop_exact():
    image, depth = _blocks()
    h_flip = DepthAugmentor((64, 96), spatial_prob=0.0, h_flip_prob=1.0, v_flip_prob=0.0, **NO_PHOTOMETRIC)
    out_image, out_depth = h_flip(image, depth)
    assert np.array_equal(out_image, image[:, ::-1]) and np.array_equal(out_depth, depth[:, ::-1])
    v_flip = DepthAugmentor((64, 96), spatial_prob=0.0, h_flip_prob=0.0, v_flip_prob=1.0, **NO_PHOTOMETRIC)
    out_image, out_depth = v_flip(image, depth)
    assert np.array_equal(out_image, image[::-1]) and np.array_equal(out_depth, depth[::-1])
    ys, xs = np.mgrid[0:64, 0:96]
    depth = (1.0 + xs + 1000.0 * ys).astype(np.float32)  # unique per pixel: the crop offset can be read back
    crop = DepthAugmentor((32, 40), spatial_prob=0.0, do_flip=False, seed=1, **NO_PHOTOMETRIC)
    offsets = set()
    for _ in range(5):
        out_image, out_depth = crop(image, depth)
        y0, x0 = divmod(int(out_depth[0, 0]) - 1, 1000)
        window = (slice(y0, y0 + 32), slice(x0, x0 + 40))
        assert np.array_equal(out_depth, depth[window]) and np.array_equal(out_image, image[window])
        offsets.add((y0, x0))
    assert len(offsets) > 1


def test_small_images_are_enlarged_and_jitter_leaves_depth_alone():
    image, depth = _blocks(height=32, width=48)
    out_image, out_depth = DepthAugmentor((40, 56), spatial_prob=0.0, do_flip=False, brightness=0.5, seed=0,
                                          contrast=0.5, saturation=0.5, hue=0.1)(image, depth)
    assert out_image.shape == (40, 56, 3) and set(np.unique(out_depth)) <= set(np.unique(depth))
    jitter = DepthAugmentor((32, 48), spatial_prob=0.0, do_flip=False, brightness=0.5, contrast=0.5, seed=0)
    out_image, out_depth = jitter(image, depth)
    assert np.array_equal(out_depth, depth) and not np.array_equal(out_image, image)


def test_augmented_datasets_give_crops(trees):
    augmentor = DepthAugmentor((32, 48), min_scale=-0.2, max_scale=0.4, seed=0)
    for dataset in (KittiEigenDepth(trees["kitti_depth"], augmentor=augmentor),
                    VirtualKitti2Depth(trees["vkitti"], augmentor=augmentor),
                    SintelDepth(trees["sintel_depth"], augmentor=augmentor)):
        _check_sample(dataset[0], size=(32, 48))
    with pytest.raises(ValueError, match="DepthAugmentor"):
        SintelDepth(trees["sintel_depth"], augmentor=object())


# ----------------------------------------------------------------------------------------------- loader
def _config(name: str, trees: dict[str, Path], *opts: str):
    roots = [item for key, root in trees.items() for item in (f"data.roots.{key}", str(root))]
    return load_config(REPO / "configs" / f"{name}.yaml",
                       [*roots, "data.crop_size", "[32, 48]", "synthetic.image_size", "[48, 64]",
                        "synthetic.train_size", "3", "synthetic.val_size", "2", *opts])


@pytest.mark.parametrize("config, dataset_type, length", [
    ("depth_eigen", KittiEigenDepth, 4), ("depth_vkitti", VirtualKitti2Depth, 6),
    ("depth_sintel", SintelDepth, 3 + 3), ("depth_synthetic", SyntheticDepthDataset, 3)])
def test_depth_configs_build_their_training_sets(trees, config, dataset_type, length):
    cfg = _config(config, trees)
    assert cfg.model.type == "depth" and cfg.train.gamma == 0.85
    dataset = build_train_dataset(cfg)
    parts = getattr(dataset, "datasets", [dataset])
    assert all(isinstance(part, dataset_type) for part in parts) and len(dataset) == length
    assert all(isinstance(part.augmentor, DepthAugmentor) for part in parts)
    batch = next(iter(DataLoader(dataset, batch_size=2)))
    assert batch["image1"].shape == (2, 3, 32, 48) and batch["depth"].shape == (2, 1, 32, 48)
    assert "image2" not in batch and "flow" not in batch


def test_official_numbers_of_the_depth_configs():
    official = {"depth_eigen": (6.5e-5, 160000, 1e-4), "depth_vkitti": (1e-4, 140000, 1e-4),
                "depth_sintel": (5e-5, 50000, 1e-5)}
    for name, (lr, steps, decay) in official.items():
        cfg = load_config(REPO / "configs" / f"{name}.yaml")
        assert (cfg.train.lr, cfg.train.num_steps, cfg.train.weight_decay) == (lr, steps, decay)
        assert cfg.train.batch_size == 3 and list(cfg.data.crop_size) == [368, 800]
        assert cfg.model.variant == "protoformer" and cfg.train.gamma == 0.85
        assert cfg.aug.do_flip is False and all(is_depth_set(name) for name in cfg.train.val_sets)
    assert load_config(REPO / "configs" / "depth_synthetic.yaml").model.variant == "protoformer-s"


def test_loader_names_repeat_and_validation(trees):
    cfg = _config("depth_eigen", trees, "data.train_sets", "['kitti_eigen*2']")
    dataset = build_train_dataset(cfg)
    assert isinstance(dataset, RepeatDataset) and len(dataset) == 8
    assert dataset.dataset.skipped[KittiEigenDepth.files_missing] == []
    val = {name: build_val_dataset(cfg, name) for name in DEPTH_SETS}
    assert val["kitti_eigen"].split == "test" and len(val["kitti_eigen"]) == 2
    assert all(getattr(v, "augmentor") is None for v in val.values())
    assert len(val["sintel_depth_final"]) == 3 and len(val["synthetic_depth"]) == 2
    _check_sample(val["vkitti"][0])
    _check_sample(val["synthetic_depth"][0], size=(48, 64))


def test_loader_rejects_mixtures_and_wrong_model_type(trees):
    with pytest.raises(ValueError, match="mixes flow sets"):
        build_train_dataset(_config("depth_eigen", trees, "data.train_sets", "['kitti_eigen', 'synthetic']"))
    with pytest.raises(ValueError, match="need model.type depth"):
        build_train_dataset(_config("depth_eigen", trees, "model.type", "flow"))
    with pytest.raises(ValueError, match="model.type depth trains on depth sets"):
        build_train_dataset(_config("depth_eigen", trees, "data.train_sets", "['synthetic']"))


def test_loader_reports_missing_depth_roots(trees, tmp_path):
    cfg = _config("depth_sintel", trees, "data.roots.sintel_depth", str(tmp_path / "nothing"),
                  "data.train_sets", "['sintel_depth_clean', 'vkitti']")
    with pytest.raises(DatasetNotFoundError, match=r"data\.roots\.sintel_depth = .*nothing"):
        build_train_dataset(cfg)
    with pytest.raises(DatasetNotFoundError, match=r"data\.roots\.kitti_depth"):
        build_val_dataset(_config("depth_eigen", trees, "data.roots.kitti_depth", str(tmp_path / "no_kitti")),
                          "kitti_eigen")


def test_sintel_depth_images_fall_back_to_the_sintel_root(trees, tmp_path):
    make_sintel_depth(tmp_path / "depth_only", image_root=tmp_path / "Sintel")
    cfg = _config("depth_sintel", trees, "data.roots.sintel_depth", str(tmp_path / "depth_only"),
                  "data.roots.sintel", str(tmp_path / "Sintel"))
    sample = build_val_dataset(cfg, "sintel_depth_final")[0]
    assert sample["meta"]["image1_path"].startswith(str(tmp_path / "Sintel"))


def test_synthetic_depth_is_augmented_with_its_depth(trees):
    cfg = _config("depth_synthetic", trees)
    augmented = build_train_dataset(cfg)[0]
    _check_sample(augmented, size=(32, 48))
    assert float(augmented["valid"].min()) == 1 and float(augmented["depth"].min()) > 0  # dense, kept
    plain = build_val_dataset(cfg, "synthetic_depth")[1]
    assert plain["meta"] == {"dataset": "synthetic_depth", "split": "val", "scene": "", "frame": 1,
                             "image1_path": "", "depth_path": ""}
