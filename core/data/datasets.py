"""Optical-flow benchmarks read from their official directory layouts (RAFT's ``core/datasets.py`` conventions).

Every dataset is a list of :class:`FlowPair` (two image files, an optional ground-truth file, the scene and frame
number) found by scanning the official tree once, and :class:`FlowDataset` turns a pair into the sample dict the
training and evaluation code consume::

    {"image1": float32 [3, H, W] in 0..255, "image2": float32 [3, H, W],
     "flow":   float32 [2, H, W] pixels (u right, v down)       -- absent for test splits,
     "valid":  float32 [H, W], 1 where the flow is valid          -- absent for test splits,
     "meta":   {"dataset", "split", "scene", "frame", "image1_path", "image2_path", "flow_path"}}

Dense sets (FlyingChairs, FlyingThings3D, Sintel) mark ``valid`` where |u| < 1000 and |v| < 1000 (after
augmentation, as RAFT does); sparse sets (KITTI, HD1K) read it from the ground-truth PNG. ``meta`` has the same keys
for every dataset (strings and ints, so the default collate works on mixtures); ``frame`` is the number in the file
name of frame 1 (Sintel ``frame_0001.png`` -> 1, KITTI ``000007_10.png`` -> 7), which is what submissions need.

``times * dataset`` (or :func:`repeat`) repeats a dataset without copying its file lists; ``a + b`` concatenates.
A missing or incomplete tree raises :class:`DatasetNotFoundError` naming the path and showing the expected layout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, NoReturn, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from core.data.augment import FlowAugmentor, SparseFlowAugmentor
from core.data.formats import read_flow, read_image, read_kitti_flow, read_mask

META_KEYS = ("dataset", "split", "scene", "frame", "image1_path", "image2_path", "flow_path")
DENSE_FLOW_LIMIT = 1000.0  # |u| or |v| at or above this marks a dense ground-truth pixel invalid (RAFT)
SHIPPED_CHAIRS_SPLIT = Path(__file__).with_name("chairs_split.txt")  # official FlyingChairs_train_val.txt


class DatasetNotFoundError(FileNotFoundError):
    """A dataset root or a required part of its official layout is missing."""


@dataclass(frozen=True)
class FlowPair:
    """Files of one sample: frame 1, frame 2, ground truth (None for test splits) and per-pair masks."""

    image1: Path
    image2: Path
    flow: Path | None
    scene: str
    frame: int
    masks: tuple[tuple[str, Path], ...] = ()


def _numbered_files(folder: Path, pattern: str) -> dict[int, Path]:
    """Files of ``folder`` whose name fully matches ``pattern``, keyed by the integer of its first group."""
    regex = re.compile(pattern)
    files = {}
    for path in folder.iterdir():
        match = regex.fullmatch(path.name)
        if match:
            files[int(match.group(1))] = path
    return dict(sorted(files.items()))


class RepeatDataset(Dataset):
    """``dataset`` seen ``times`` times in a row (RAFT's ``100 * sintel``) without copying its file list."""

    def __init__(self, dataset: Dataset, times: int):
        if isinstance(times, bool) or not isinstance(times, int) or times < 1:
            raise ValueError(f"repeat count must be a positive integer, got {times!r}")
        self.dataset, self.times = dataset, times

    def __len__(self) -> int:
        return self.times * len(self.dataset)

    def __getitem__(self, index: int):
        length = len(self)
        if not -length <= index < length:
            raise IndexError(f"index {index} out of range for a dataset of {length} samples")
        return self.dataset[index % len(self.dataset)]

    def __rmul__(self, times: int) -> "RepeatDataset":
        return RepeatDataset(self.dataset, self.times * times)

    __mul__ = __rmul__


def repeat(dataset: Dataset, times: int) -> Dataset:
    """``dataset`` repeated ``times`` times (the dataset itself when ``times == 1``)."""
    return dataset if times == 1 else RepeatDataset(dataset, times)


class OfficialLayout:
    """Checks that a dataset's files are where its official layout puts them; errors show that layout.

    Subclasses set ``layout`` (the expected tree, shown in every error).
    """

    layout: ClassVar[str] = ""

    @classmethod
    def _missing(cls, path: Path, what: str) -> NoReturn:
        raise DatasetNotFoundError(f"{cls.__name__}: {what} {path}\nExpected layout:\n{cls.layout.strip()}")

    @classmethod
    def _require(cls, path: Path, what: str = "missing folder") -> Path:
        if not path.is_dir():
            cls._missing(path, what)
        return path

    @classmethod
    def _require_file(cls, path: Path, what: str) -> Path:
        if not path.is_file():
            cls._missing(path, f"{what} not found:")
        return path


class FlowDataset(OfficialLayout, Dataset):
    """Base class: a list of :class:`FlowPair` read into sample dicts, with an optional augmentor.

    Subclasses scan their official layout and set ``name`` (meta ``dataset``), ``sparse`` (ground truth is a
    KITTI-style PNG with a valid channel) and ``layout`` (shown in errors).
    """

    name: ClassVar[str] = "flow"
    sparse: ClassVar[bool] = False
    splits: ClassVar[tuple[str, ...]] = ("training",)
    test_splits: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        root: str | Path,
        split: str,
        pairs: Sequence[FlowPair],
        augmentor: FlowAugmentor | SparseFlowAugmentor | None = None,
    ):
        self.root, self.split, self.pairs = Path(root), split, list(pairs)
        if not self.pairs:
            self._missing(self.root, f"no image pairs found for split '{split}' under")
        expected = SparseFlowAugmentor if self.sparse else FlowAugmentor
        if augmentor is not None and not isinstance(augmentor, expected):
            raise ValueError(f"{type(self).__name__} needs a {expected.__name__}, got {type(augmentor).__name__}")
        if augmentor is not None and self.is_test:
            raise ValueError(f"{type(self).__name__} split '{split}' has no ground truth and cannot be augmented")
        self.augmentor = augmentor

    # ------------------------------------------------------------------------------------------- scanning helpers
    @classmethod
    def _check_split(cls, split: str) -> str:
        if split not in cls.splits + cls.test_splits:
            raise ValueError(f"{cls.__name__}: unknown split '{split}', expected one of {cls.splits + cls.test_splits}")
        return split

    # ------------------------------------------------------------------------------------------- samples
    @property
    def is_test(self) -> bool:
        return self.split in self.test_splits

    def __len__(self) -> int:
        return len(self.pairs)

    def __rmul__(self, times: int) -> RepeatDataset:
        return RepeatDataset(self, times)

    __mul__ = __rmul__

    def read_ground_truth(self, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
        """(flow [H, W, 2], valid [H, W] or None for dense formats)."""
        return read_kitti_flow(path) if self.sparse else read_flow(path)

    def meta(self, pair: FlowPair) -> dict:
        return {
            "dataset": self.name,
            "split": self.split,
            "scene": pair.scene,
            "frame": pair.frame,
            "image1_path": str(pair.image1),
            "image2_path": str(pair.image2),
            "flow_path": "" if pair.flow is None else str(pair.flow),
        }

    def __getitem__(self, index: int) -> dict:
        pair = self.pairs[index]
        image1, image2 = read_image(pair.image1), read_image(pair.image2)
        if image1.shape != image2.shape:
            raise ValueError(
                f"frame sizes differ: {pair.image1} {image1.shape[:2]} vs {pair.image2} {image2.shape[:2]}"
            )
        sample = {"meta": self.meta(pair)}
        if pair.flow is not None:
            flow, valid = self.read_ground_truth(pair.flow)
            if flow.shape[:2] != image1.shape[:2]:
                raise ValueError(f"{pair.flow}: flow size {flow.shape[:2]} differs from image size {image1.shape[:2]}")
            if self.augmentor is not None and self.sparse:
                image1, image2, flow, valid = self.augmentor(image1, image2, flow, valid)
            elif self.augmentor is not None:
                image1, image2, flow = self.augmentor(image1, image2, flow)
            if valid is None:
                valid = (np.abs(flow) < DENSE_FLOW_LIMIT).all(axis=2)
            sample["flow"] = torch.from_numpy(np.ascontiguousarray(flow.transpose(2, 0, 1), dtype=np.float32))
            sample["valid"] = torch.from_numpy(np.ascontiguousarray(valid, dtype=np.float32))
            for mask_name, mask_path in pair.masks:
                mask = read_mask(mask_path)
                if mask.shape != image1.shape[:2]:
                    raise ValueError(f"{mask_path}: mask size {mask.shape} differs from image size {image1.shape[:2]}")
                sample[mask_name] = torch.from_numpy(mask.astype(np.float32))
        sample["image1"] = torch.from_numpy(np.ascontiguousarray(image1.transpose(2, 0, 1), dtype=np.float32))
        sample["image2"] = torch.from_numpy(np.ascontiguousarray(image2.transpose(2, 0, 1), dtype=np.float32))
        return sample


class FlyingChairs(FlowDataset):
    """FlyingChairs (Dosovitskiy et al., FlowNet 2015): 22872 pairs, official train (1) / validation (2) split.

    The split list ``FlyingChairs_train_val.txt`` is read from the dataset root when present, otherwise the copy
    shipped with the code (``core/data/chairs_split.txt``). Line ``n`` gives the split of pair ``n`` (1-based, the
    number in ``NNNNN_img1.ppm``).
    """

    name = "chairs"
    splits = ("training", "validation")
    layout = """
FlyingChairs_release/
    data/00001_img1.ppm  00001_img2.ppm  00001_flow.flo  ...  22872_flow.flo
    FlyingChairs_train_val.txt   (optional; 22872 lines of 1 = training / 2 = validation)"""

    def __init__(self, root: str | Path = "datasets/FlyingChairs_release", split: str = "training",
                 augmentor: FlowAugmentor | None = None):
        self._check_split(split)
        root = self._require(Path(root), "dataset root not found:")
        data = self._require(root / "data")
        split_ids = self._read_split(root / "FlyingChairs_train_val.txt")
        wanted = 1 if split == "training" else 2
        pairs = []
        for number, image1 in _numbered_files(data, r"(\d+)_img1\.ppm").items():
            if number > len(split_ids):
                raise ValueError(f"{image1}: pair {number} is beyond the {len(split_ids)} entries of the split list")
            if split_ids[number - 1] != wanted:
                continue
            stem = image1.name[: -len("_img1.ppm")]
            image2 = self._require_file(data / f"{stem}_img2.ppm", "second frame")
            flow = self._require_file(data / f"{stem}_flow.flo", "ground-truth flow")
            pairs.append(FlowPair(image1, image2, flow, scene="", frame=number))
        super().__init__(root, split, pairs, augmentor)

    @staticmethod
    def _read_split(candidate: Path) -> list[int]:
        path = candidate if candidate.is_file() else SHIPPED_CHAIRS_SPLIT
        values = path.read_text().split()
        if not values or any(value not in ("1", "2") for value in values):
            raise ValueError(f"{path}: a FlyingChairs split list holds only 1 (training) and 2 (validation) per line")
        return [int(value) for value in values]


class FlyingThings3D(FlowDataset):
    """FlyingThings3D (Mayer et al., 2016), clean or final pass, both flow directions (RAFT's setup).

    ``into_future`` gives pairs (frame n, frame n+1) with flow of frame n; ``into_past`` gives (frame n, frame
    n-1) with the into-past flow of frame n. Split ``training`` reads ``TRAIN``, ``validation`` reads ``TEST``
    (RAFT's convention for Things validation). ``meta["scene"]`` is ``"<A|B|C>/<seq>/<camera>/<direction>"``.
    """

    name = "things"
    splits = ("training", "validation")
    directions_all = ("into_future", "into_past")
    layout = """
FlyingThings3D/
    frames_cleanpass/TRAIN|TEST/A|B|C/0000/left|right/0006.png ...
    frames_finalpass/TRAIN|TEST/A|B|C/0000/left|right/0006.png ...
    optical_flow/TRAIN|TEST/A|B|C/0000/into_future|into_past/left|right/OpticalFlowIntoFuture_0006_L.pfm ...
                                                                          (OpticalFlowIntoPast_0006_L.pfm)"""

    def __init__(self, root: str | Path = "datasets/FlyingThings3D", pass_name: str = "clean",
                 split: str = "training", augmentor: FlowAugmentor | None = None,
                 cameras: Sequence[str] = ("left",), directions: Sequence[str] = directions_all):
        self._check_split(split)
        if pass_name not in ("clean", "final"):
            raise ValueError(f"FlyingThings3D pass_name must be 'clean' or 'final', got '{pass_name}'")
        if not set(cameras) <= {"left", "right"} or not set(directions) <= set(self.directions_all):
            raise ValueError(f"FlyingThings3D cameras/directions unknown: {cameras}, {directions}")
        root = self._require(Path(root), "dataset root not found:")
        subset = "TRAIN" if split == "training" else "TEST"
        frames_root = self._require(root / f"frames_{pass_name}pass" / subset)
        flow_root = self._require(root / "optical_flow" / subset)
        pairs = []
        for sequence in sorted(p for p in frames_root.glob("*/*") if p.is_dir()):
            scene = f"{sequence.parent.name}/{sequence.name}"
            for camera in cameras:
                images = _numbered_files(self._require(sequence / camera), r"(\d+)\.png")
                for direction in directions:
                    flow_dir = self._require(flow_root / scene / direction / camera)
                    flows = _numbered_files(flow_dir, r"OpticalFlowInto(?:Future|Past)_(\d+)_[LR]\.pfm")
                    step = 1 if direction == "into_future" else -1
                    for number, flow in flows.items():
                        if number in images and number + step in images:
                            pairs.append(FlowPair(images[number], images[number + step], flow,
                                                  scene=f"{scene}/{camera}/{direction}", frame=number))
        super().__init__(root, split, pairs, augmentor)


class MpiSintel(FlowDataset):
    """MPI-Sintel (Butler et al., ECCV 2012), clean or final pass; consecutive frames of every scene.

    With ``masks=True`` (training split, no augmentation) samples also hold ``occlusion`` (1 = occluded in frame 2,
    Sintel's ``occlusions/``, the "unmatched" pixels of the benchmark) and ``invalid`` (Sintel's ``invalid/``).
    """

    name = "sintel"
    test_splits = ("test",)
    layout = """
Sintel/   (MPI-Sintel-complete)
    training/clean|final/<scene>/frame_0001.png ...
    training/flow/<scene>/frame_0001.flo ...              (flow of frame n -> n+1)
    training/occlusions/<scene>/frame_0001.png ...        (only for masks=True)
    training/invalid/<scene>/frame_0001.png ...           (only for masks=True)
    test/clean|final/<scene>/frame_0001.png ..."""

    def __init__(self, root: str | Path = "datasets/Sintel", pass_name: str = "clean", split: str = "training",
                 augmentor: FlowAugmentor | None = None, masks: bool = False):
        self._check_split(split)
        if pass_name not in ("clean", "final"):
            raise ValueError(f"MpiSintel pass_name must be 'clean' or 'final', got '{pass_name}'")
        if masks and (split != "training" or augmentor is not None):
            raise ValueError("MpiSintel masks=True needs the training split and no augmentor")
        root = self._require(Path(root), "dataset root not found:")
        image_root = self._require(root / split / pass_name)
        pairs = []
        for scene_dir in sorted(p for p in image_root.iterdir() if p.is_dir()):
            scene = scene_dir.name
            frames = _numbered_files(scene_dir, r"frame_(\d+)\.png")
            for number, image1 in frames.items():
                if number + 1 not in frames:
                    continue
                name = f"frame_{number:04d}"
                flow = None
                mask_files: tuple[tuple[str, Path], ...] = ()
                if split == "training":
                    flow = self._require_file(root / split / "flow" / scene / f"{name}.flo", "ground-truth flow")
                if masks:
                    mask_files = tuple(
                        (key, self._require_file(root / split / folder / scene / f"{name}.png", f"{folder} mask"))
                        for key, folder in (("occlusion", "occlusions"), ("invalid", "invalid"))
                    )
                pairs.append(FlowPair(image1, frames[number + 1], flow, scene, number, mask_files))
        super().__init__(root, split, pairs, augmentor)


class KITTI(FlowDataset):
    """KITTI 2015 optical flow (Menze & Geiger, CVPR 2015): 200 training / 200 test pairs, sparse ground truth.

    ``flow_dir`` selects ``flow_occ`` (all pixels, RAFT's choice) or ``flow_noc`` (non-occluded pixels).
    ``meta["frame"]`` is the 6-digit id (``000007_10.png`` -> 7).
    """

    name = "kitti"
    sparse = True
    test_splits = ("testing",)
    layout = """
KITTI/   (data_scene_flow)
    training/image_2/000000_10.png  000000_11.png ...
    training/flow_occ/000000_10.png ...        (16-bit PNG: u, v, valid)
    testing/image_2/000000_10.png  000000_11.png ..."""

    def __init__(self, root: str | Path = "datasets/KITTI", split: str = "training",
                 augmentor: SparseFlowAugmentor | None = None, flow_dir: str = "flow_occ"):
        self._check_split(split)
        if flow_dir not in ("flow_occ", "flow_noc"):
            raise ValueError(f"KITTI flow_dir must be 'flow_occ' or 'flow_noc', got '{flow_dir}'")
        root = self._require(Path(root), "dataset root not found:")
        image_dir = self._require(root / split / "image_2")
        flow_root = self._require(root / split / flow_dir) if split == "training" else None
        pairs = []
        for number, image1 in _numbered_files(image_dir, r"(\d+)_10\.png").items():
            stem = image1.name[: -len("_10.png")]
            image2 = self._require_file(image_dir / f"{stem}_11.png", "second frame")
            flow = None if flow_root is None else self._require_file(flow_root / image1.name, "ground-truth flow")
            pairs.append(FlowPair(image1, image2, flow, scene="", frame=number))
        super().__init__(root, split, pairs, augmentor)


class HD1K(FlowDataset):
    """HD1K benchmark (Kondermann et al., CVPRW 2016): 36 driving sequences, sparse 16-bit PNG ground truth.

    Pairs (frame n, frame n+1) of every sequence that has flow for frame n. ``meta["scene"]`` is the 6-digit
    sequence id, ``meta["frame"]`` the frame number.
    """

    name = "hd1k"
    sparse = True
    layout = """
HD1k/
    hd1k_input/image_2/000000_0000.png ...      (<sequence>_<frame>.png)
    hd1k_flow_gt/flow_occ/000000_0000.png ...   (16-bit PNG: u, v, valid)"""

    def __init__(self, root: str | Path = "datasets/HD1k", split: str = "training",
                 augmentor: SparseFlowAugmentor | None = None):
        self._check_split(split)
        root = self._require(Path(root), "dataset root not found:")
        image_dir = self._require(root / "hd1k_input" / "image_2")
        flow_dir = self._require(root / "hd1k_flow_gt" / "flow_occ")
        pattern = re.compile(r"(\d+)_(\d+)\.png")
        images = {m.groups(): p for p in image_dir.iterdir() if (m := pattern.fullmatch(p.name))}
        pairs = []
        for flow in sorted(flow_dir.iterdir()):
            match = pattern.fullmatch(flow.name)
            if match is None:
                continue
            sequence, frame = match.groups()
            following = (sequence, f"{int(frame) + 1:0{len(frame)}d}")
            if (sequence, frame) in images and following in images:
                pairs.append(FlowPair(images[sequence, frame], images[following], flow, sequence, int(frame)))
        super().__init__(root, split, pairs, augmentor)
