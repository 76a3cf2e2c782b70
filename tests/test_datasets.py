"""Datasets on tiny fake trees in the official layouts, read through the real classes and the config builders."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import ConcatDataset, DataLoader

from core.config import get_cfg_defaults
from core.data import formats
from core.data.augment import FlowAugmentor, SparseFlowAugmentor
from core.data.datasets import (
    HD1K, KITTI, META_KEYS, DatasetNotFoundError, FlyingChairs, FlyingThings3D, MpiSintel, RepeatDataset, repeat,
)
from core.data.loader import build_test_dataset, build_train_dataset, build_val_dataset, parse_train_sets

HEIGHT, WIDTH = 32, 48


def _image(path: Path, value: int) -> None:
    """A frame whose red channel holds ``value`` (so tests can tell frames apart) over a random texture."""
    rng = np.random.default_rng(value)
    image = rng.integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
    image[..., 0] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    formats.write_image(path, image)


def _constant_flow(u: float, v: float) -> np.ndarray:
    return np.broadcast_to(np.float32([u, v]), (HEIGHT, WIDTH, 2)).copy()


def _flow_file(path: Path, flow: np.ndarray, valid: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    formats.write_flow(path, flow, valid)


# ----------------------------------------------------------------------------------------------- fake trees
def make_chairs(root: Path, split_values: list[int] | None, pairs: int = 4) -> None:
    for number in range(1, pairs + 1):
        _image(root / "data" / f"{number:05d}_img1.ppm", number)
        _image(root / "data" / f"{number:05d}_img2.ppm", 100 + number)
        flow = _constant_flow(number, -number)
        flow[0, 0] = 2000.0  # one unusable ground-truth pixel
        _flow_file(root / "data" / f"{number:05d}_flow.flo", flow)
    if split_values is not None:
        (root / "FlyingChairs_train_val.txt").write_text("\n".join(map(str, split_values)) + "\n")


def make_things(root: Path, subset: str = "TRAIN", frames: range = range(6, 10)) -> None:
    for sequence in ("A/0000", "B/0001"):
        for frame in frames:
            _image(root / "frames_cleanpass" / subset / sequence / "left" / f"{frame:04d}.png", frame)
            _image(root / "frames_cleanpass" / subset / sequence / "right" / f"{frame:04d}.png", 50 + frame)
            for direction, name, sign in (("into_future", "Future", 1), ("into_past", "Past", -1)):
                flow_dir = root / "optical_flow" / subset / sequence / direction / "left"
                _flow_file(flow_dir / f"OpticalFlowInto{name}_{frame:04d}_L.pfm", _constant_flow(frame, sign))


def make_sintel(root: Path) -> None:
    for scene, frames in (("alley_1", 3), ("bamboo_1", 2)):
        for number in range(1, frames + 1):
            for pass_name in ("clean", "final"):
                _image(root / "training" / pass_name / scene / f"frame_{number:04d}.png", number)
            _image(root / "test" / "clean" / f"test_{scene}" / f"frame_{number:04d}.png", number)
            if number < frames:
                _flow_file(root / "training" / "flow" / scene / f"frame_{number:04d}.flo",
                           _constant_flow(number, len(scene)))
                occlusion = np.zeros((HEIGHT, WIDTH), bool)
                occlusion[:, :number] = True
                (root / "training" / "occlusions" / scene).mkdir(parents=True, exist_ok=True)
                formats.write_mask(root / "training" / "occlusions" / scene / f"frame_{number:04d}.png", occlusion)
            (root / "training" / "invalid" / scene).mkdir(parents=True, exist_ok=True)
            formats.write_mask(root / "training" / "invalid" / scene / f"frame_{number:04d}.png",
                               np.zeros((HEIGHT, WIDTH), bool))


def kitti_valid(number: int) -> np.ndarray:
    valid = np.zeros((HEIGHT, WIDTH), np.float32)
    valid[HEIGHT // 2 :, number :: 3] = 1.0  # sparse ground truth in the lower half
    return valid


def make_kitti(root: Path, ids: tuple[int, ...] = (0, 1, 7)) -> None:
    for number in ids:
        for split in ("training", "testing"):
            _image(root / split / "image_2" / f"{number:06d}_10.png", number)
            _image(root / split / "image_2" / f"{number:06d}_11.png", 100 + number)
        _flow_file(root / "training" / "flow_occ" / f"{number:06d}_10.png", _constant_flow(number + 0.25, -3.5),
                   kitti_valid(number))


def make_hd1k(root: Path) -> None:
    for sequence, frames in ((0, 3), (1, 2)):
        for frame in range(frames):
            _image(root / "hd1k_input" / "image_2" / f"{sequence:06d}_{frame:04d}.png", 10 * sequence + frame)
            valid = np.zeros((HEIGHT, WIDTH), np.float32)
            valid[::2, ::2] = 1
            _flow_file(root / "hd1k_flow_gt" / "flow_occ" / f"{sequence:06d}_{frame:04d}.png",
                       _constant_flow(frame, sequence), valid)


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("datasets")
    roots = {name: base / name for name in ("chairs", "things", "sintel", "kitti", "hd1k")}
    make_chairs(roots["chairs"], [1, 2, 1, 1])
    make_things(roots["things"])
    make_things(roots["things"], subset="TEST", frames=range(6, 8))
    make_sintel(roots["sintel"])
    make_kitti(roots["kitti"])
    make_hd1k(roots["hd1k"])
    return roots


def _check_sample(sample: dict, has_flow: bool = True, size: tuple[int, int] = (HEIGHT, WIDTH)) -> None:
    for key in ("image1", "image2"):
        assert sample[key].dtype == torch.float32 and sample[key].shape == (3, *size)
        assert 0 <= sample[key].min() and sample[key].max() <= 255
    assert set(sample["meta"]) == set(META_KEYS)
    assert ("flow" in sample) == ("valid" in sample) == has_flow
    if has_flow:
        assert sample["flow"].dtype == torch.float32 and sample["flow"].shape == (2, *size)
        assert sample["valid"].dtype == torch.float32 and sample["valid"].shape == size


def _red(sample: dict, key: str) -> int:
    return int(sample[key][0, 0, 0])


# ----------------------------------------------------------------------------------------------- FlyingChairs
def test_chairs_split_and_values(trees):
    training = FlyingChairs(trees["chairs"], split="training")
    validation = FlyingChairs(trees["chairs"], split="validation")
    assert [p.frame for p in training.pairs] == [1, 3, 4] and [p.frame for p in validation.pairs] == [2]
    sample = training[1]
    _check_sample(sample)
    assert _red(sample, "image1") == 3 and _red(sample, "image2") == 103
    assert sample["flow"][0, 5, 5] == 3 and sample["flow"][1, 5, 5] == -3
    assert sample["valid"][0, 0] == 0 and sample["valid"].sum() == HEIGHT * WIDTH - 1  # |flow| >= 1000 is invalid
    assert sample["meta"]["dataset"] == "chairs" and sample["meta"]["frame"] == 3
    assert sample["meta"]["flow_path"].endswith("00003_flow.flo")


def test_chairs_uses_shipped_official_split(tmp_path):
    make_chairs(tmp_path / "chairs", split_values=None, pairs=6)
    # The official list starts 1 1 1 1 1 2: pair 6 is the first validation pair.
    assert [p.frame for p in FlyingChairs(tmp_path / "chairs", split="validation").pairs] == [6]
    assert len(FlyingChairs(tmp_path / "chairs", split="training")) == 5


def test_chairs_incomplete_tree(tmp_path):
    make_chairs(tmp_path / "chairs", [1, 1, 1])
    (tmp_path / "chairs" / "data" / "00002_flow.flo").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"(?s)00002_flow\.flo.*Expected layout.*_img1\.ppm"):
        FlyingChairs(tmp_path / "chairs")
    with pytest.raises(ValueError, match="unknown split"):
        FlyingChairs(tmp_path / "chairs", split="train")


# ----------------------------------------------------------------------------------------------- FlyingThings3D
def test_things_directions(trees):
    dataset = FlyingThings3D(trees["things"], pass_name="clean", split="training")
    assert len(dataset) == 2 * (3 + 3)  # two sequences, frames 6..9: future pairs 6,7,8 and past pairs 7,8,9
    future = next(i for i, p in enumerate(dataset.pairs) if p.scene == "A/0000/left/into_future" and p.frame == 7)
    past = next(i for i, p in enumerate(dataset.pairs) if p.scene == "A/0000/left/into_past" and p.frame == 7)
    sample = dataset[future]
    _check_sample(sample)
    assert (_red(sample, "image1"), _red(sample, "image2")) == (7, 8)
    assert sample["flow"][0].eq(7).all() and sample["flow"][1].eq(1).all()
    sample = dataset[past]
    assert (_red(sample, "image1"), _red(sample, "image2")) == (7, 6)  # into_past: frame n -> frame n-1
    assert sample["flow"][1].eq(-1).all() and "into_past" in sample["meta"]["flow_path"]
    assert sample["valid"].eq(1).all()


def test_things_validation_reads_test_subset(trees):
    dataset = FlyingThings3D(trees["things"], split="validation", directions=("into_future",))
    assert len(dataset) == 2 and all("/TEST/" in str(p.image1) for p in dataset.pairs)
    with pytest.raises(DatasetNotFoundError, match="frames_finalpass"):
        FlyingThings3D(trees["things"], pass_name="final")
    with pytest.raises(DatasetNotFoundError, match="into_future/right"):
        FlyingThings3D(trees["things"], cameras=("right",))


# ----------------------------------------------------------------------------------------------- Sintel
def test_sintel_training_pairs_and_ids(trees):
    dataset = MpiSintel(trees["sintel"], pass_name="final", split="training")
    assert [(p.scene, p.frame) for p in dataset.pairs] == [("alley_1", 1), ("alley_1", 2), ("bamboo_1", 1)]
    sample = dataset[1]
    _check_sample(sample)
    assert (_red(sample, "image1"), _red(sample, "image2")) == (2, 3)
    assert sample["flow"][0].eq(2).all() and sample["flow"][1].eq(len("alley_1")).all()
    assert (sample["meta"]["scene"], sample["meta"]["frame"], sample["meta"]["split"]) == ("alley_1", 2, "training")
    assert "/final/" in sample["meta"]["image1_path"]


def test_sintel_masks(trees):
    dataset = MpiSintel(trees["sintel"], masks=True)
    sample = dataset[1]
    assert sample["occlusion"].shape == (HEIGHT, WIDTH) and sample["occlusion"][:, :2].eq(1).all()
    assert sample["occlusion"][:, 2:].eq(0).all() and sample["invalid"].eq(0).all()
    with pytest.raises(ValueError, match="masks=True"):
        MpiSintel(trees["sintel"], split="test", masks=True)


def test_sintel_test_split_has_no_ground_truth(trees):
    dataset = MpiSintel(trees["sintel"], split="test")
    assert len(dataset) == 3
    sample = dataset[2]
    _check_sample(sample, has_flow=False)
    assert sample["meta"]["scene"] == "test_bamboo_1" and sample["meta"]["flow_path"] == ""
    with pytest.raises(ValueError, match="cannot be augmented"):
        MpiSintel(trees["sintel"], split="test", augmentor=FlowAugmentor((24, 32)))


def test_sintel_missing_flow_is_reported(tmp_path):
    make_sintel(tmp_path / "sintel")
    (tmp_path / "sintel" / "training" / "flow" / "bamboo_1" / "frame_0001.flo").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"(?s)bamboo_1/frame_0001\.flo.*Expected layout"):
        MpiSintel(tmp_path / "sintel")


# ----------------------------------------------------------------------------------------------- KITTI / HD1K
def test_kitti_sparse_valid_and_ids(trees):
    dataset = KITTI(trees["kitti"], split="training")
    assert [p.frame for p in dataset.pairs] == [0, 1, 7]
    sample = dataset[2]
    _check_sample(sample)
    assert (_red(sample, "image1"), _red(sample, "image2")) == (7, 107)
    torch.testing.assert_close(sample["valid"], torch.from_numpy(kitti_valid(7)), rtol=0, atol=0)
    valid = sample["valid"].bool()
    assert sample["flow"][0][valid].eq(7.25).all() and sample["flow"][1][valid].eq(-3.5).all()
    assert sample["flow"][:, ~valid].eq(0).all()
    test = KITTI(trees["kitti"], split="testing")
    _check_sample(test[0], has_flow=False)
    assert test[2]["meta"]["frame"] == 7


def test_kitti_rejects_8bit_ground_truth(tmp_path):
    make_kitti(tmp_path / "kitti", ids=(0,))
    formats.write_image(tmp_path / "kitti" / "training" / "flow_occ" / "000000_10.png",
                        np.zeros((HEIGHT, WIDTH, 3), np.uint8))
    with pytest.raises(ValueError, match=r"000000_10\.png.*16-bit"):
        KITTI(tmp_path / "kitti")[0]


def test_hd1k_sequences(trees):
    dataset = HD1K(trees["hd1k"])
    assert [(p.scene, p.frame) for p in dataset.pairs] == [("000000", 0), ("000000", 1), ("000001", 0)]
    sample = dataset[1]
    _check_sample(sample)
    assert (_red(sample, "image1"), _red(sample, "image2")) == (1, 2)
    assert sample["valid"].sum() == (HEIGHT // 2) * (WIDTH // 2)
    assert sample["flow"][0, 0, 0] == 1 and sample["flow"][1, 0, 0] == 0


# ----------------------------------------------------------------------------------------------- errors, repeat
@pytest.mark.parametrize("cls", [FlyingChairs, FlyingThings3D, MpiSintel, KITTI, HD1K])
def test_missing_root_names_path_and_layout(tmp_path, cls):
    with pytest.raises(DatasetNotFoundError, match=r"(?s)nowhere.*Expected layout:\n"):
        cls(tmp_path / "nowhere")


def test_empty_tree_is_reported(tmp_path):
    (tmp_path / "kitti" / "training" / "image_2").mkdir(parents=True)
    (tmp_path / "kitti" / "training" / "flow_occ").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no image pairs found"):
        KITTI(tmp_path / "kitti")


def test_repeat_and_concat(trees):
    sintel = MpiSintel(trees["sintel"])
    repeated = 3 * sintel
    assert isinstance(repeated, RepeatDataset) and len(repeated) == 9 and len(sintel) == 3
    assert repeated[4]["meta"]["frame"] == sintel[1]["meta"]["frame"]
    assert len(2 * repeated) == 18 and repeat(sintel, 1) is sintel
    with pytest.raises(IndexError):
        repeated[9]
    with pytest.raises(ValueError, match="positive integer"):
        RepeatDataset(sintel, 0)
    assert len(sintel + KITTI(trees["kitti"])) == 6


def test_augmented_datasets_and_mixed_batches(trees):
    sintel = MpiSintel(trees["sintel"], augmentor=FlowAugmentor((24, 32), seed=0))
    kitti = KITTI(trees["kitti"], augmentor=SparseFlowAugmentor((24, 32), seed=0))
    _check_sample(sintel[0], size=(24, 32))
    _check_sample(kitti[0], size=(24, 32))
    batch = next(iter(DataLoader(ConcatDataset([sintel, kitti]), batch_size=6)))
    assert batch["image1"].shape == (6, 3, 24, 32) and batch["meta"]["dataset"] == ["sintel"] * 3 + ["kitti"] * 3
    with pytest.raises(ValueError, match="SparseFlowAugmentor"):
        KITTI(trees["kitti"], augmentor=FlowAugmentor((24, 32)))


# ----------------------------------------------------------------------------------------------- loader
@pytest.fixture
def cfg(trees):
    cfg = get_cfg_defaults()
    for name, root in trees.items():
        cfg.data.roots[name] = str(root)
    cfg.data.crop_size = [24, 32]
    return cfg


def test_parse_train_sets():
    assert parse_train_sets(["sintel_clean*100", " kitti * 2 ", "hd1k"]) == [
        ("sintel_clean", 100), ("kitti", 2), ("hd1k", 1)]
    for bad in (["sintel"], ["kitti*0"], ["kitti*x"], "kitti", []):
        with pytest.raises(ValueError, match="train_sets"):
            parse_train_sets(bad)


def test_build_train_dataset(cfg):
    cfg.data.train_sets = ["sintel_clean*3", "kitti*2", "chairs", "things_clean", "hd1k"]
    mixture = build_train_dataset(cfg)
    assert len(mixture) == 3 * 3 + 2 * 3 + 3 + 12 + 3
    kitti_set = mixture.datasets[1].dataset
    assert isinstance(kitti_set.augmentor, SparseFlowAugmentor)
    assert (kitti_set.augmentor.min_scale, kitti_set.augmentor.max_scale) == (-0.2, 0.4)
    assert mixture.datasets[0].dataset.augmentor.min_scale == cfg.aug.min_scale
    _check_sample(mixture[len(mixture) - 1], size=(24, 32))
    cfg.data.train_sets = ["sintel_final", "sintel_clean"]
    final, clean = build_train_dataset(cfg).datasets  # each once, so not wrapped
    assert "/final/" in final[0]["meta"]["image1_path"] and "/clean/" in clean[0]["meta"]["image1_path"]


def test_missing_roots_are_reported_before_any_work(cfg, tmp_path):
    cfg.data.roots.sintel = str(tmp_path / "no_sintel")
    cfg.data.roots.hd1k = str(tmp_path / "no_hd1k")
    cfg.data.train_sets = ["chairs", "sintel_final*10", "hd1k"]
    with pytest.raises(DatasetNotFoundError, match=r"(?s)data\.roots\.sintel.*no_sintel.*data\.roots\.hd1k"):
        build_train_dataset(cfg)


def test_build_val_and_test_datasets(cfg):
    assert len(build_val_dataset(cfg, "chairs")) == 1
    assert len(build_val_dataset(cfg, "sintel_final")) == 3
    for name, pass_dir in (("sintel_final", "/final/"), ("sintel_clean", "/clean/"),
                           ("things_clean", "/frames_cleanpass/")):
        assert pass_dir in build_val_dataset(cfg, name)[0]["meta"]["image1_path"], name
    assert len(build_val_dataset(cfg, "things_clean")) == 2 * 2  # TEST frames 6, 7: one pair per direction
    assert build_val_dataset(cfg, "kitti").augmentor is None
    assert build_test_dataset(cfg, "sintel_clean").is_test and build_test_dataset(cfg, "kitti").split == "testing"
    with pytest.raises(ValueError, match="unknown validation set"):
        build_val_dataset(cfg, "middlebury")


def test_synthetic_is_imported_lazily(cfg, monkeypatch):
    calls = []

    class FakeSynthetic(torch.utils.data.Dataset):
        def __init__(self, cfg, split="train", augmentor=None):
            calls.append((split, augmentor))

        def __len__(self):
            return 5

    monkeypatch.setitem(sys.modules, "core.data.synthetic", types.SimpleNamespace(SyntheticFlowDataset=FakeSynthetic))
    cfg.data.train_sets = ["synthetic*2"]
    assert len(build_train_dataset(cfg)) == 10
    assert len(build_val_dataset(cfg, "synthetic")) == 5
    assert calls[0][0] == "train" and isinstance(calls[0][1], FlowAugmentor) and calls[1] == ("val", None)
