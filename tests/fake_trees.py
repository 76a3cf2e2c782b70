"""Tiny fake copies of the depth benchmarks in their exact official layouts, for tests (not a test module).

Every builder writes small files with known contents, and the content functions (``kitti_depth_codes``, ...) let a
test compute what a loader must return. Ground-truth PNGs are written with OpenCV directly (raw 16-bit codes), not
with the project's writers, so a reader bug cannot cancel a writer bug.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from core.data.formats import write_dpt, write_image

DEPTH_HEIGHT, DEPTH_WIDTH = 48, 64  # size of every fake depth frame

# KITTI: (date, drive, annotated subset) of the fake drives; frames 0..3 exist in raw for both cameras.
KITTI_DRIVES = (("2011_09_26", "2011_09_26_drive_0001_sync", "train"),
                ("2011_09_28", "2011_09_28_drive_0002_sync", "val"))
KITTI_RAW_FRAMES = range(4)
KITTI_GT_FRAMES = (1, 2, 3)  # the annotated depth skips the first frame of each drive, like the real one
KITTI_FOCAL = "721.5377"


def image_value(frame: int, camera: int = 2) -> int:
    """Grey level of the fake image of ``frame`` (distinct per frame and camera)."""
    return (20 + 37 * frame + 50 * (camera - 2)) % 256


def kitti_depth_codes(frame: int, camera: int = 2, shape: tuple[int, int] = (DEPTH_HEIGHT, DEPTH_WIDTH)) -> np.ndarray:
    """uint16 codes (depth = code / 256 m) of a fake annotated frame; 0 (missing) on every third pixel."""
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
    codes = (ys * shape[1] + xs) * 97 % 30000 + 25 * frame + 1000 * (camera - 2) + 1
    codes[(xs + ys) % 3 == 0] = 0
    return codes.astype(np.uint16)


def _write_png16(path: Path, codes: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), codes):
        raise OSError(f"could not write {path}")


def _write_grey_image(path: Path, value: int, shape: tuple[int, int] = (DEPTH_HEIGHT, DEPTH_WIDTH)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((*shape, 3), value, np.uint8)
    image[..., 1] = 255 - value  # a non-grey colour, to catch channel-order mistakes
    write_image(path, image)


def eigen_line(date: str, drive: str, frame: int, camera: int = 2, ground_truth: bool = True) -> str:
    """One line of a BTS Eigen split file."""
    image = f"{date}/{drive}/image_0{camera}/data/{frame:010d}.png"
    depth = f"{drive}/proj_depth/groundtruth/image_0{camera}/{frame:010d}.png" if ground_truth else "None"
    return f"{image} {depth} {KITTI_FOCAL}"


def make_kitti_depth(root: Path, train_lines: list[str] | None = None, test_lines: list[str] | None = None) -> Path:
    """KITTI raw + annotated depth + Eigen split files under ``root`` (layout of ``KittiEigenDepth``).

    Default split files: training = frames 1, 2 of drive 1 (image_02), frame 1 of drive 1 (image_03) and frame 3
    of drive 2 (annotated under ``val/``); test = frame 3 of drive 1, frame 2 of drive 2 and a frame marked None.
    """
    for date, drive, subset in KITTI_DRIVES:
        for camera in (2, 3):
            for frame in KITTI_RAW_FRAMES:
                _write_grey_image(root / "raw" / date / drive / f"image_0{camera}" / "data" / f"{frame:010d}.png",
                                  image_value(frame, camera))
            for frame in KITTI_GT_FRAMES:
                gt = (root / "data_depth_annotated" / subset / drive / "proj_depth" / "groundtruth"
                      / f"image_0{camera}" / f"{frame:010d}.png")
                _write_png16(gt, kitti_depth_codes(frame, camera))
    (date1, drive1, _), (date2, drive2, _) = KITTI_DRIVES
    if train_lines is None:
        train_lines = [eigen_line(date1, drive1, 1), eigen_line(date1, drive1, 2), eigen_line(date1, drive1, 1, 3),
                       eigen_line(date2, drive2, 3)]
    if test_lines is None:
        test_lines = [eigen_line(date1, drive1, 3), eigen_line(date2, drive2, 2),
                      eigen_line(date2, drive2, 0, ground_truth=False)]
    (root / "eigen_train_files_with_gt.txt").write_text("\n".join(train_lines) + "\n")
    (root / "eigen_test_files_with_gt.txt").write_text("\n".join(test_lines) + "\n")
    return root


# Virtual KITTI 2: scenes, variations and frames of the fake tree.
VKITTI_SCENES = {"Scene01": ("clone", "fog"), "Scene02": ("clone",)}
VKITTI_FRAMES = (0, 1)
VKITTI_FAR_ROWS = 5  # the top rows are sky: code 65535


def vkitti_depth_codes(frame: int, shape: tuple[int, int] = (DEPTH_HEIGHT, DEPTH_WIDTH)) -> np.ndarray:
    """uint16 centimetre codes of a fake Virtual KITTI 2 depth frame: sky (65535) on top, one pixel with code 0."""
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
    codes = 150 + 13 * xs + 211 * ys + 7 * frame  # 1.5 m .. about 110 m
    codes[:VKITTI_FAR_ROWS] = 65535
    codes[-1, -1] = 0
    return codes.astype(np.uint16)


def make_vkitti2(root: Path) -> Path:
    """A Virtual KITTI 2 tree (rgb + depth archives extracted into one folder), Camera_0 and Camera_1."""
    for scene, variations in VKITTI_SCENES.items():
        for variation in variations:
            frames = root / scene / variation / "frames"
            for camera in ("Camera_0", "Camera_1"):
                for frame in VKITTI_FRAMES:
                    _write_grey_image(frames / "rgb" / camera / f"rgb_{frame:05d}.jpg", image_value(frame))
                    _write_png16(frames / "depth" / camera / f"depth_{frame:05d}.png", vkitti_depth_codes(frame))
    return root


# MPI-Sintel depth: scenes and frames of the fake tree.
SINTEL_DEPTH_SCENES = {"alley_1": (1, 2), "market_2": (1,)}


def sintel_depth_values(frame: int, shape: tuple[int, int] = (DEPTH_HEIGHT, DEPTH_WIDTH)) -> np.ndarray:
    """float32 depth of a fake Sintel frame: a ramp up to 150 m, with one inf, one 0 and one negative pixel."""
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    depth = 0.5 + 0.04 * xs * (ys + 1) + frame
    depth[0, 0], depth[0, 1], depth[0, 2] = np.inf, 0.0, -3.0
    return depth.astype(np.float32)


def make_sintel_depth(root: Path, image_root: Path | None = None) -> Path:
    """``training/depth/<scene>/frame_NNNN.dpt`` under ``root`` and clean/final images under ``image_root``
    (default ``root``). Clean images have value ``image_value(frame)``, final ones that plus 100."""
    image_root = root if image_root is None else image_root
    for scene, frames in SINTEL_DEPTH_SCENES.items():
        for frame in frames:
            depth_path = root / "training" / "depth" / scene / f"frame_{frame:04d}.dpt"
            depth_path.parent.mkdir(parents=True, exist_ok=True)
            write_dpt(depth_path, sintel_depth_values(frame))
            for pass_name, offset in (("clean", 0), ("final", 100)):
                _write_grey_image(image_root / "training" / pass_name / scene / f"frame_{frame:04d}.png",
                                  image_value(frame) + offset)
    return root
