"""Monocular depth benchmarks read from their official layouts, for ProtoFormer's depth head (NOTES §2.6).

The depth head reads only frame 1 (no cost volume, no frame 2), so a depth sample holds one image and its depth::

    {"image1": float32 [3, H, W] RGB in 0..255,
     "depth":  float32 [1, H, W] metres, 0 where there is no ground truth,
     "valid":  float32 [H, W], 1 where there is ground truth (exactly where depth > 0),
     "meta":   {"dataset", "split", "scene", "frame", "image1_path", "depth_path"}}   (DEPTH_META_KEYS)

Datasets (roots from ``cfg.data.roots``, trees in ``datasets/README.md``):

* :class:`KittiEigenDepth`: KITTI raw images with the annotated depth of the KITTI depth benchmark (Uhrig et al.,
  3DV 2017), listed by the Eigen split files of BTS / AdaBins (format in :func:`read_eigen_split`). Ground truth is
  a 16-bit PNG, depth = I / 256 m, I = 0 missing. (The official ProtoFormer loader reads I without dividing by 256
  and then clamps to [0.1, 80], so its "metres" are 256x too large and every missing pixel becomes a valid 80 m;
  here the values are metres and missing pixels stay invalid.)
* :class:`VirtualKitti2Depth`: Virtual KITTI 2 (Cabon et al., 2020), 16-bit PNG depth in centimetres; 65535 is the
  far plane (sky, "655.35 m") and is invalid. (The official loader scales I * 80 / 65535, i.e. 80 m at the far
  plane and every depth 8.2x too small.)
* :class:`SintelDepth`: MPI-Sintel depth (``.dpt`` float32, scene units taken as metres), clean or final pass.
* :class:`SyntheticDepthDataset`: the depth of frame 1 of the built-in procedural generator
  (:mod:`core.data.synthetic`), so depth training runs without any download.

Datasets never clamp or cap depth values: a depth of 120 m stays 120 m and valid; the training mask
(``core.losses.depth_sequence_loss``, official 0.1..80 m) and the evaluation range (``core.metrics``) decide which
values count. Augmentation (:class:`DepthAugmentor`) moves pixels but never changes a depth value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

import cv2
import numpy as np
import torch
from loguru import logger
from torch.utils.data import Dataset

from core.data.augment import _PairAugmentor, _resize
from core.data.datasets import DatasetNotFoundError, OfficialLayout, RepeatDataset, _numbered_files
from core.data.formats import PathLike, read_image, read_kitti_disparity, read_sintel_depth, read_vkitti_depth

DEPTH_META_KEYS = ("dataset", "split", "scene", "frame", "image1_path", "depth_path")
MISSING_REPORT_LINES = 5  # how many missing frames an error or warning names


# ----------------------------------------------------------------------------------------------- split files
def read_eigen_split(path: PathLike) -> list[tuple[int, str, str | None]]:
    """Parse a BTS / AdaBins Eigen split file (``eigen_train_files_with_gt.txt``, ``eigen_test_files_with_gt.txt``).

    One frame per line, three whitespace-separated columns::

        <date>/<drive>/image_02/data/<frame>.png <drive>/proj_depth/groundtruth/image_02/<frame>.png <focal>

    1. the RGB image relative to the KITTI raw root, ``<date>/<drive>/image_0[23]/data/<frame>.png`` (or ``.jpg``);
    2. the ground truth relative to the annotated-depth root, or ``None`` for a frame without annotated depth;
    3. the focal length in pixels (checked to be a positive number; the monocular model does not use it).

    Blank lines and lines starting with ``#`` are ignored. Returns ``(line number, image path, depth path or
    None)`` per frame. Raises ValueError naming the file and line for anything else.
    """
    path = Path(path)
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        columns = line.split()
        if not columns or columns[0].startswith("#"):
            continue
        if len(columns) != 3:
            raise ValueError(f"{path}:{number}: expected 3 columns '<rgb> <ground truth|None> <focal>' "
                             f"(BTS Eigen split format), got {len(columns)}: {line.strip()!r}")
        image, depth, focal = columns
        if _EIGEN_IMAGE.fullmatch(image) is None:
            raise ValueError(f"{path}:{number}: RGB path {image!r} is not '<date>/<drive>/image_02|image_03/data/"
                             f"<frame>.png|jpg' relative to the KITTI raw root")
        try:
            focal_length = float(focal)
        except ValueError:
            focal_length = float("nan")
        if not focal_length > 0:
            raise ValueError(f"{path}:{number}: focal length {focal!r} is not a positive number")
        entries.append((number, image, None if depth == "None" else depth))
    return entries


_EIGEN_IMAGE = re.compile(r"(?P<date>[^/]+)/(?P<drive>[^/]+)/(?P<camera>image_0[23])/data/(?P<frame>\d+)\.(png|jpg)")


# ----------------------------------------------------------------------------------------------- augmentation
def resize_sparse_depth(depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Rescale sparse depth (0 = no measurement) to ``size = (height, width)`` without interpolating it.

    Each measured pixel (x, y) moves to the pixel containing ``(x + 0.5) fx - 0.5`` (the pixel-centre mapping of
    ``cv2.resize``) and keeps its value: resizing an image changes where a point is, not how far away it is. When
    several points land on one pixel (downscaling), the nearest one is kept, as a z-buffer would. Returns
    ``float32 [height, width]``, 0 where no point landed.
    """
    height, width = depth.shape
    new_height, new_width = size
    ys, xs = np.nonzero(depth > 0)
    new_xs = np.floor((xs + 0.5) * (new_width / width)).astype(np.int64)
    new_ys = np.floor((ys + 0.5) * (new_height / height)).astype(np.int64)
    target = new_ys * new_width + new_xs
    values = depth[ys, xs]
    order = np.lexsort((values, target))  # by target pixel, nearest first
    target, values = target[order], values[order]
    first = np.ones(target.shape, bool)
    first[1:] = target[1:] != target[:-1]
    resized = np.zeros(new_height * new_width, np.float32)
    resized[target[first]] = values[first]
    return resized.reshape(new_height, new_width)


class DepthAugmentor(_PairAugmentor):
    """Augmentation of one image and its depth map for the monocular depth head.

    Steps, from the ``aug`` config like the flow augmentors: colour jitter of the image (``brightness``,
    ``contrast``, ``saturation``, ``hue``), random scale ``2 ** U(min_scale, max_scale)`` with optional stretch
    (``spatial_prob``, ``stretch_prob``, ``max_stretch``; the image is never shrunk below the crop), flips
    (``do_flip``, ``h_flip_prob``, ``v_flip_prob``) and a uniform random crop of ``crop_size``. The frame-2 settings
    (``eraser_prob``, ``asymmetric_color_prob``) do not apply to a single image.

    Depth values are never changed, only moved with their pixels: dense depth is resized with the nearest
    neighbour (pixel-centre mapping, ``cv2.INTER_NEAREST_EXACT``, so it stays aligned with the bilinearly resized
    image and never mixes depths across an edge); sparse depth (KITTI LiDAR) moves every measurement to its new
    pixel (:func:`resize_sparse_depth`). Missing depth is 0 and stays 0.
    """

    scale_margin = 0  # the rescaled image only has to hold the crop

    def __call__(self, image: np.ndarray, depth: np.ndarray, sparse: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Augment ``image`` (uint8 [H, W, 3]) and ``depth`` (float [H, W] metres, 0 = none); ``sparse`` selects the
        point-moving resize. Returns ``(image uint8 [h, w, 3], depth float32 [h, w])`` with (h, w) = ``crop_size``."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"depth augmentor needs a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
        if depth.shape != image.shape[:2]:
            raise ValueError(f"depth must be [H, W] = {image.shape[:2]}, got {depth.shape}")
        if not self.color_jitter.is_identity:
            image = self.color_jitter(image, self.rng)
        return self.spatial_transform(image, depth.astype(np.float32, copy=False), sparse)

    def spatial_transform(self, image: np.ndarray, depth: np.ndarray, sparse: bool) -> tuple[np.ndarray, np.ndarray]:
        """Scale (and stretch), flip and crop the image and its depth consistently."""
        height, width = image.shape[:2]
        scale = self.sample_scale(height, width)
        if scale is not None:
            size = self._scaled_size(height, width, scale)
            image = _resize(image, size, cv2.INTER_LINEAR)
            depth = resize_sparse_depth(depth, size) if sparse else _resize(depth, size, cv2.INTER_NEAREST_EXACT)
        h_flip, v_flip = self.sample_flips()
        if h_flip:
            image, depth = image[:, ::-1], depth[:, ::-1]
        if v_flip:
            image, depth = image[::-1], depth[::-1]
        y0, x0 = self.sample_crop(*image.shape[:2])
        crop_height, crop_width = self.crop_size
        window = (slice(y0, y0 + crop_height), slice(x0, x0 + crop_width))
        return np.ascontiguousarray(image[window]), np.ascontiguousarray(depth[window])


# ----------------------------------------------------------------------------------------------- samples
def depth_sample(image: np.ndarray, depth: np.ndarray, meta: dict) -> dict:
    """The sample dict of the module docstring from ``image`` uint8 [H, W, 3] and ``depth`` [H, W] (0 = none)."""
    depth = np.ascontiguousarray(depth, dtype=np.float32)
    return {
        "image1": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)),
        "depth": torch.from_numpy(depth)[None],
        "valid": torch.from_numpy((depth > 0).astype(np.float32)),
        "meta": meta,
    }


@dataclass(frozen=True)
class DepthFrame:
    """Files of one depth sample: the image, its ground-truth depth, scene and frame number."""

    image: Path
    depth: Path
    scene: str
    frame: int


class DepthDataset(OfficialLayout, Dataset):
    """Base class: a list of :class:`DepthFrame` read into depth samples, with an optional :class:`DepthAugmentor`.

    Subclasses scan their official layout, set ``name`` (meta ``dataset``), ``sparse`` (LiDAR-like ground truth,
    resized by moving points), ``layout`` (shown in errors) and ``splits``, and implement :meth:`read_depth`.
    """

    name: ClassVar[str] = "depth"
    sparse: ClassVar[bool] = False
    splits: ClassVar[tuple[str, ...]] = ("training",)

    def __init__(self, root: str | Path, split: str, frames: Sequence[DepthFrame],
                 augmentor: DepthAugmentor | None = None):
        self.root, self.split, self.frames = Path(root), split, list(frames)
        if not self.frames:
            self._missing(self.root, f"no frames with ground-truth depth found for split '{split}' under")
        if augmentor is not None and not isinstance(augmentor, DepthAugmentor):
            raise ValueError(f"{type(self).__name__} needs a DepthAugmentor, got {type(augmentor).__name__}")
        self.augmentor = augmentor

    @classmethod
    def _check_split(cls, split: str) -> None:
        if split not in cls.splits:
            raise ValueError(f"{cls.__name__}: unknown split '{split}', expected one of {cls.splits}")

    def read_depth(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """``(depth float32 [H, W] metres, valid float32 [H, W])`` of a ground-truth file."""
        raise NotImplementedError(f"{type(self).__name__} must implement read_depth")

    def __len__(self) -> int:
        return len(self.frames)

    def __rmul__(self, times: int) -> RepeatDataset:
        return RepeatDataset(self, times)

    __mul__ = __rmul__

    def meta(self, frame: DepthFrame) -> dict:
        return {"dataset": self.name, "split": self.split, "scene": frame.scene, "frame": frame.frame,
                "image1_path": str(frame.image), "depth_path": str(frame.depth)}

    def __getitem__(self, index: int) -> dict:
        frame = self.frames[index]
        image = read_image(frame.image)
        depth, valid = self.read_depth(frame.depth)
        if depth.shape != image.shape[:2]:
            raise ValueError(f"{frame.depth}: depth size {depth.shape} differs from the size {image.shape[:2]} of "
                             f"its image {frame.image}")
        depth = np.where(valid > 0, depth, np.float32(0.0))
        if self.augmentor is not None:
            image, depth = self.augmentor(image, depth, sparse=self.sparse)
        return depth_sample(image, depth, self.meta(frame))


class KittiEigenDepth(DepthDataset):
    """KITTI raw + the KITTI depth benchmark's annotated depth, on the Eigen split (Eigen et al., NIPS 2014).

    The frames are the lines of a BTS / AdaBins split file (:func:`read_eigen_split`), by default
    ``<root>/eigen_train_files_with_gt.txt`` (split ``training``) or ``<root>/eigen_test_files_with_gt.txt``
    (split ``test``, the 697-line benchmark list). A ground-truth path is looked up in
    ``data_depth_annotated/train/``, then ``val/``, then ``data_depth_annotated/`` itself (train and val merged).
    An image listed as ``.png`` may be stored as ``.jpg`` (Monodepth2's conversion), and vice versa.

    Frames the split file marks ``None`` (no annotated depth) are skipped and counted. Frames whose image or
    ground truth is missing on disk raise :class:`DatasetNotFoundError` naming the first few (``on_missing=
    "error"``, the default, so an evaluation never silently runs on fewer frames) or are skipped with a warning
    (``on_missing="skip"``). ``self.skipped`` maps each reason to the skipped entries (``"<file>:<line> <path>"``).
    ``meta["scene"]`` is ``"<drive>/<camera>"``, ``meta["frame"]`` the raw frame number.
    """

    name = "kitti_eigen"
    sparse = True
    splits = ("training", "test")
    split_files = {"training": "eigen_train_files_with_gt.txt", "test": "eigen_test_files_with_gt.txt"}
    no_ground_truth = "no annotated ground truth ('None' in the split file)"
    files_missing = "image or ground truth missing on disk"
    layout = """
kitti_depth/
    raw/2011_09_26/2011_09_26_drive_0001_sync/image_02/data/0000000000.png ...   (KITTI raw, synced+rectified)
    data_depth_annotated/train|val/2011_09_26_drive_0001_sync/proj_depth/groundtruth/image_02/0000000005.png ...
                                                           (KITTI depth benchmark: 16-bit PNG, depth = I / 256 m)
    eigen_train_files_with_gt.txt  eigen_test_files_with_gt.txt   (Eigen split files of BTS, placed by you;
        lines '<date>/<drive>/image_02/data/<frame>.png <drive>/proj_depth/groundtruth/image_02/<frame>.png <focal>')"""

    def __init__(self, root: str | Path = "datasets/kitti_depth", split: str = "training",
                 augmentor: DepthAugmentor | None = None, split_file: str | Path | None = None,
                 on_missing: str = "error"):
        self._check_split(split)
        if on_missing not in ("error", "skip"):
            raise ValueError(f"KittiEigenDepth on_missing must be 'error' or 'skip', got '{on_missing}'")
        root = self._require(Path(root), "dataset root not found:")
        raw_root = self._require(root / "raw")
        annotated_root = self._require(root / "data_depth_annotated")
        split_path = Path(split_file) if split_file is not None else root / self.split_files[split]
        self._require_file(split_path, "Eigen split file")
        entries = read_eigen_split(split_path)
        frames: list[DepthFrame] = []
        self.skipped: dict[str, list[str]] = {self.no_ground_truth: [], self.files_missing: []}
        missing_details = []
        for line, image_name, depth_name in entries:
            where = f"{split_path.name}:{line} {image_name}"
            if depth_name is None:
                self.skipped[self.no_ground_truth].append(where)
                continue
            image = self._find_image(raw_root / image_name)
            depth_candidates = [annotated_root / part / depth_name for part in ("train", "val", "")]
            depth = next((path for path in depth_candidates if path.is_file()), None)
            problems = [] if image is not None else [f"image not found: {raw_root / image_name}"]
            if depth is None:
                problems.append(f"ground truth not found: {depth_candidates[0]} (nor under val/ or merged)")
            if problems:
                self.skipped[self.files_missing].append(where)
                missing_details.append(f"line {line}: " + "; ".join(problems))
                continue
            match = _EIGEN_IMAGE.fullmatch(image_name)
            frames.append(DepthFrame(image, depth, f"{match['drive']}/{match['camera']}", int(match["frame"])))
        self._report_skipped(split_path, len(entries), missing_details, on_missing)
        super().__init__(root, split, frames, augmentor)

    @staticmethod
    def _find_image(path: Path) -> Path | None:
        """``path``, or the same frame with the other of the extensions .png / .jpg; None if neither exists."""
        if path.is_file():
            return path
        other = path.with_suffix(".jpg" if path.suffix == ".png" else ".png")
        return other if other.is_file() else None

    def _report_skipped(self, split_path: Path, total: int, missing_details: list[str], on_missing: str) -> None:
        without_ground_truth = len(self.skipped[self.no_ground_truth])
        if without_ground_truth:
            logger.info(f"KittiEigenDepth {split_path.name}: {without_ground_truth} of {total} frames are skipped: "
                        f"{self.no_ground_truth}")
        if not missing_details:
            return
        listing = "\n  ".join(missing_details[:MISSING_REPORT_LINES])
        more = len(missing_details) - MISSING_REPORT_LINES
        listing += f"\n  ... and {more} more" if more > 0 else ""
        summary = f"{len(missing_details)} of {total} frames listed in {split_path} are missing on disk:\n  {listing}"
        if on_missing == "error":
            raise DatasetNotFoundError(f"KittiEigenDepth: {summary}\nExpected layout:\n{self.layout.strip()}\n"
                                       f"(on_missing='skip' uses only the frames that exist)")
        logger.warning(f"KittiEigenDepth: skipping {summary}")

    def read_depth(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        return read_kitti_disparity(path)


class VirtualKitti2Depth(DepthDataset):
    """Virtual KITTI 2 (Cabon et al., 2020): every scene and variation (weather, time of day, rotated cameras).

    ``scenes`` / ``variations`` restrict the scan (default: all found; the official depth pre-training uses all
    five scenes and all variations), ``camera`` picks ``Camera_0`` (left, default) or ``Camera_1``. Depth is read
    by :func:`read_vkitti_depth` (centimetres -> metres, far plane invalid). ``meta["scene"]`` is
    ``"<Scene>/<variation>"``, ``meta["frame"]`` the number in ``rgb_00042.jpg``.
    """

    name = "vkitti"
    layout = """
vkitti2/   (vkitti_2.0.3_rgb.tar and vkitti_2.0.3_depth.tar extracted into the same folder)
    Scene01/clone/frames/rgb/Camera_0/rgb_00000.jpg ...
    Scene01/clone/frames/depth/Camera_0/depth_00000.png ...   (16-bit PNG, centimetres, 65535 = far plane)
    Scene01/15-deg-left|15-deg-right|30-deg-left|30-deg-right|fog|morning|overcast|rain|sunset/frames/...
    Scene02/  Scene06/  Scene18/  Scene20/"""

    def __init__(self, root: str | Path = "datasets/vkitti2", split: str = "training",
                 augmentor: DepthAugmentor | None = None, scenes: Sequence[str] | None = None,
                 variations: Sequence[str] | None = None, camera: str = "Camera_0"):
        self._check_split(split)
        if camera not in ("Camera_0", "Camera_1"):
            raise ValueError(f"VirtualKitti2Depth camera must be 'Camera_0' or 'Camera_1', got '{camera}'")
        root = self._require(Path(root), "dataset root not found:")
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and re.fullmatch(r"Scene\d+", p.name))
        for scene in scenes or ():
            if scene not in found:
                self._missing(root / scene, f"scene '{scene}' not found (found {found}):")
        frames = []
        for scene in scenes or found:
            variation_dirs = sorted(p for p in (root / scene).iterdir() if p.is_dir())
            for variation in variations or ():
                if variation not in [p.name for p in variation_dirs]:
                    self._missing(root / scene / variation, "variation not found:")
            for variation_dir in variation_dirs:
                if variations is not None and variation_dir.name not in variations:
                    continue
                rgb_dir = self._require(variation_dir / "frames" / "rgb" / camera)
                depth_dir = self._require(variation_dir / "frames" / "depth" / camera)
                for number, image in _numbered_files(rgb_dir, r"rgb_(\d+)\.jpg").items():
                    depth = self._require_file(depth_dir / f"depth_{number:05d}.png", "ground-truth depth")
                    frames.append(DepthFrame(image, depth, f"{scene}/{variation_dir.name}", number))
        super().__init__(root, split, frames, augmentor)

    def read_depth(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        return read_vkitti_depth(path)


class SintelDepth(DepthDataset):
    """MPI-Sintel depth (Butler et al., ECCV 2012; the separate depth/camera archive), clean or final pass.

    Every frame with a ``training/depth/<scene>/frame_NNNN.dpt`` is a sample; its image is
    ``training/<pass>/<scene>/frame_NNNN.png`` under ``image_root`` (default: ``root``, i.e. the depth archive
    extracted into MPI-Sintel-complete). Only the training split has depth. ``meta["frame"]`` is NNNN.
    """

    name = "sintel_depth"
    layout = """
Sintel-depth/   (MPI-Sintel-depth-training extracted into MPI-Sintel-complete, or images under image_root)
    training/depth/<scene>/frame_0001.dpt ...        (float32 depth)
    training/clean|final/<scene>/frame_0001.png ..."""

    def __init__(self, root: str | Path = "datasets/Sintel-depth", pass_name: str = "clean",
                 split: str = "training", augmentor: DepthAugmentor | None = None,
                 image_root: str | Path | None = None):
        self._check_split(split)
        if pass_name not in ("clean", "final"):
            raise ValueError(f"SintelDepth pass_name must be 'clean' or 'final', got '{pass_name}'")
        root = self._require(Path(root), "dataset root not found:")
        depth_root = self._require(root / "training" / "depth")
        image_dir = self._require(Path(image_root if image_root is not None else root) / "training" / pass_name)
        frames = []
        for scene_dir in sorted(p for p in depth_root.iterdir() if p.is_dir()):
            for number, depth in _numbered_files(scene_dir, r"frame_(\d+)\.dpt").items():
                image = self._require_file(image_dir / scene_dir.name / f"frame_{number:04d}.png",
                                           f"{pass_name} pass image")
                frames.append(DepthFrame(image, depth, scene_dir.name, number))
        super().__init__(root, split, frames, augmentor)

    def read_depth(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        return read_sintel_depth(path)


class SyntheticDepthDataset(Dataset):
    """Depth samples of the procedural generator: frame 1 of ``SyntheticFlowDataset(cfg, split)`` and its depth.

    The generator's own depth is dense and positive; unlike ``SyntheticFlowDataset`` with an augmentor (which has
    to drop depth), the :class:`DepthAugmentor` keeps it aligned. ``split`` is ``train`` or ``val`` (seed streams
    of ``cfg.synthetic.seed``); ``meta["frame"]`` is the sample index.
    """

    name = "synthetic_depth"

    def __init__(self, cfg, split: str = "train", augmentor: DepthAugmentor | None = None):
        from core.data.synthetic import SyntheticFlowDataset  # imported here: the generator is optional

        if augmentor is not None and not isinstance(augmentor, DepthAugmentor):
            raise ValueError(f"SyntheticDepthDataset needs a DepthAugmentor, got {type(augmentor).__name__}")
        self.split, self.augmentor = split, augmentor
        self.source = SyntheticFlowDataset(cfg, split=split)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        rendered = self.source[index]
        image = rendered["image1"].permute(1, 2, 0).numpy().astype(np.uint8)  # exact: the renderer gives uint8
        depth = rendered["depth"][0].numpy()
        if self.augmentor is not None:
            image, depth = self.augmentor(image, depth)
        meta = {"dataset": self.name, "split": self.split, "scene": "", "frame": int(index), "image1_path": "",
                "depth_path": ""}
        return depth_sample(image, depth, meta)
