"""Datasets named in the config: the training mixture and the validation / test sets (RAFT's ``fetch_dataloader``).

``cfg.data.train_sets`` lists ``"name"`` or ``"name*repeat"`` entries, e.g. RAFT's Sintel stage
``["things_clean", "sintel_clean*100", "sintel_final*100", "kitti*200", "hd1k*5"]``. Flow names:
``chairs, things_clean, things_final, sintel_clean, sintel_final, kitti, hd1k, synthetic``; monocular depth names
(:mod:`core.data.depth_datasets`, samples with ``image1`` and ``depth`` only): ``kitti_eigen, vkitti,
sintel_depth_clean, sintel_depth_final, synthetic_depth``. A mixture is all flow or all depth, and depth sets train
only a ``model.type depth`` model. Roots come from ``cfg.data.roots`` (see ``datasets/README.md``). Every root is
checked before any file is scanned.

Augmentation: every training set gets its own augmentor built from ``cfg.aug`` and ``cfg.data.crop_size``, seeded
with ``cfg.seed + position in the list``. The dense sets (chairs, things, sintel, synthetic) use ``cfg.aug`` as is,
so a stage config sets their scale range (RAFT: chairs -0.1..1.0, things -0.4..0.8, sintel -0.2..0.6). The sparse
sets keep their own RAFT settings from :data:`SPARSE_AUG_OVERRIDES` whatever the stage, because in a mixture their
images (KITTI 375x1242, HD1K 1080x2560) need other scale ranges than the dense sets they are mixed with: kitti
-0.2..0.4, hd1k -0.5..0.2, and RAFT's sparse photometrics (symmetric jitter of strength 0.3, no stretch, no vertical
flip). ``cfg.aug.do_flip`` still applies to them (the KITTI stage turns flips off). Depth sets use a
:class:`~core.data.depth_datasets.DepthAugmentor` built from ``cfg.aug`` as is (the depth stage configs hold the
official settings).

Depth validation: ``kitti_eigen`` is the Eigen test split (frames missing on disk are an error, frames without
annotated depth are skipped and counted), ``vkitti`` and ``sintel_depth_*`` their training frames, ``synthetic_depth``
the procedural ``val`` split. ``sintel_depth_*`` reads its images from ``data.roots.sintel_depth`` when it holds
``training/clean|final``, else from ``data.roots.sintel``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from loguru import logger
from torch.utils.data import ConcatDataset, Dataset

from core.data.augment import FlowAugmentor, SparseFlowAugmentor
from core.data.datasets import HD1K, KITTI, DatasetNotFoundError, FlyingChairs, FlyingThings3D, MpiSintel, repeat
from core.data.depth_datasets import (
    DepthAugmentor,
    KittiEigenDepth,
    SintelDepth,
    SyntheticDepthDataset,
    VirtualKitti2Depth,
)

FLOW_SETS = ("chairs", "things_clean", "things_final", "sintel_clean", "sintel_final", "kitti", "hd1k", "synthetic")
DEPTH_SETS = ("kitti_eigen", "vkitti", "sintel_depth_clean", "sintel_depth_final", "synthetic_depth")
TRAIN_SETS = FLOW_SETS + DEPTH_SETS
VAL_SETS = FLOW_SETS + DEPTH_SETS
TEST_SETS = ("sintel_clean", "sintel_final", "kitti")

_RAFT_SPARSE = dict(stretch_prob=0.0, v_flip_prob=0.0, asymmetric_color_prob=0.0,
                    brightness=0.3, contrast=0.3, saturation=0.3, hue=0.3 / 3.14)
SPARSE_AUG_OVERRIDES = {
    "kitti": dict(min_scale=-0.2, max_scale=0.4, **_RAFT_SPARSE),
    "hd1k": dict(min_scale=-0.5, max_scale=0.2, **_RAFT_SPARSE),
}
_ENTRY = re.compile(r"\s*([a-z0-9_]+)\s*(?:\*\s*(\d+)\s*)?")
_ROOT_KEYS = {"synthetic": None, "synthetic_depth": None, "kitti_eigen": "kitti_depth", "vkitti": "vkitti",
              "sintel_depth_clean": "sintel_depth", "sintel_depth_final": "sintel_depth"}


def _root_key(name: str) -> str | None:
    """The ``cfg.data.roots`` key of a set name (None for the procedural sets)."""
    return _ROOT_KEYS[name] if name in _ROOT_KEYS else name.split("_")[0]


def is_depth_set(name: str) -> bool:
    """True for the monocular depth sets (samples ``image1``, ``depth``, ``valid``; no ``image2``, no flow)."""
    return name in DEPTH_SETS


def parse_train_sets(entries: Sequence[str]) -> list[tuple[str, int]]:
    """``["sintel_clean*100", "kitti"]`` -> ``[("sintel_clean", 100), ("kitti", 1)]``; ValueError on bad entries."""
    if isinstance(entries, str) or not entries:
        raise ValueError(f"data.train_sets must be a non-empty list of 'name' or 'name*repeat', got {entries!r}")
    parsed = []
    for entry in entries:
        match = _ENTRY.fullmatch(str(entry))
        if match is None or match.group(1) not in TRAIN_SETS:
            raise ValueError(
                f"data.train_sets entry {entry!r}: expected 'name' or 'name*repeat' with name in {TRAIN_SETS}"
            )
        times = int(match.group(2) or 1)
        if times < 1:
            raise ValueError(f"data.train_sets entry {entry!r}: the repeat count must be >= 1")
        parsed.append((match.group(1), times))
    return parsed


def check_roots(cfg, names: Sequence[str]) -> None:
    """Raise :class:`DatasetNotFoundError` listing every missing root of the named sets (no scanning yet)."""
    missing = []
    for key in dict.fromkeys(_root_key(name) for name in names):
        root = None if key is None else Path(cfg.data.roots[key])
        if root is not None and not root.is_dir():
            missing.append(f"  data.roots.{key} = {root} (resolved: {root.resolve()})")
    if missing:
        raise DatasetNotFoundError(
            "dataset roots not found:\n" + "\n".join(missing)
            + "\nSee datasets/README.md for the expected layouts, or set data.roots.<name> to the right folder."
        )


def _make_synthetic(cfg, split: str, augmentor: FlowAugmentor | None) -> Dataset:
    from core.data.synthetic import SyntheticFlowDataset  # imported here: the generator is optional for real data

    return SyntheticFlowDataset(cfg, split=split, augmentor=augmentor)


def _sintel_depth_image_root(cfg, pass_name: str) -> Path:
    """Where the Sintel images of a depth set are: ``data.roots.sintel_depth`` if it has them, else ``roots.sintel``."""
    depth_root, flow_root = Path(cfg.data.roots.sintel_depth), Path(cfg.data.roots.sintel)
    if (depth_root / "training" / pass_name).is_dir() or not (flow_root / "training" / pass_name).is_dir():
        return depth_root
    logger.info(f"sintel_depth_{pass_name}: images from data.roots.sintel = {flow_root}")
    return flow_root


def _make_depth_set(cfg, name: str, training: bool, augmentor: DepthAugmentor | None) -> Dataset:
    """A depth set: training split (augmented, KITTI frames missing on disk skipped) or validation split."""
    roots = cfg.data.roots
    if name == "kitti_eigen":
        return KittiEigenDepth(roots.kitti_depth, split="training" if training else "test", augmentor=augmentor,
                               on_missing="skip" if training else "error")
    if name == "vkitti":
        return VirtualKitti2Depth(roots.vkitti, augmentor=augmentor)
    if name.startswith("sintel_depth_"):
        pass_name = name[len("sintel_depth_"):]
        return SintelDepth(roots.sintel_depth, pass_name=pass_name, augmentor=augmentor,
                           image_root=_sintel_depth_image_root(cfg, pass_name))
    return SyntheticDepthDataset(cfg, split="train" if training else "val", augmentor=augmentor)


def _check_kinds(cfg, names: Sequence[str]) -> None:
    """A mixture is all flow or all depth sets, and depth sets go with ``model.type depth``; ValueError otherwise."""
    depth_sets = [name for name in names if is_depth_set(name)]
    flow_sets = [name for name in names if not is_depth_set(name)]
    if depth_sets and flow_sets:
        raise ValueError(f"data.train_sets mixes flow sets {flow_sets} with monocular depth sets {depth_sets}; "
                         f"their samples differ (image pair + flow vs. one image + depth)")
    if depth_sets and cfg.model.type != "depth":
        raise ValueError(f"data.train_sets {depth_sets} are monocular depth sets, they need model.type depth "
                         f"(got '{cfg.model.type}')")
    if flow_sets and cfg.model.type == "depth":
        raise ValueError(f"model.type depth trains on depth sets {list(DEPTH_SETS)}, but data.train_sets are the "
                         f"flow sets {flow_sets}")


def _make_train_set(cfg, name: str, seed: int) -> Dataset:
    roots = cfg.data.roots
    if is_depth_set(name):
        return _make_depth_set(cfg, name, training=True, augmentor=DepthAugmentor.from_config(cfg, seed=seed))
    if name in SPARSE_AUG_OVERRIDES:
        augmentor = SparseFlowAugmentor.from_config(cfg, seed=seed, **SPARSE_AUG_OVERRIDES[name])
        if name == "kitti":
            return KITTI(roots.kitti, split="training", augmentor=augmentor)
        return HD1K(roots.hd1k, split="training", augmentor=augmentor)
    augmentor = FlowAugmentor.from_config(cfg, seed=seed)
    if name == "chairs":
        return FlyingChairs(roots.chairs, split="training", augmentor=augmentor)
    if name.startswith("things_"):
        return FlyingThings3D(roots.things, pass_name=name[len("things_"):], split="training", augmentor=augmentor)
    if name.startswith("sintel_"):
        return MpiSintel(roots.sintel, pass_name=name[len("sintel_"):], split="training", augmentor=augmentor)
    return _make_synthetic(cfg, "train", augmentor)


def build_train_dataset(cfg) -> Dataset:
    """The training mixture of ``cfg.data.train_sets`` (augmented, repeated, concatenated)."""
    entries = parse_train_sets(cfg.data.train_sets)
    _check_kinds(cfg, [name for name, _ in entries])
    check_roots(cfg, [name for name, _ in entries])
    parts = []
    for position, (name, times) in enumerate(entries):
        dataset = _make_train_set(cfg, name, seed=cfg.seed + position)
        logger.info(f"training set {name}: {len(dataset)} pairs x {times}")
        parts.append(repeat(dataset, times))
    mixture = parts[0] if len(parts) == 1 else ConcatDataset(parts)
    logger.info(f"training mixture: {len(mixture)} samples per epoch")
    return mixture


def build_val_dataset(cfg, name: str) -> Dataset:
    """A validation set without augmentation (RAFT's choices: Chairs validation split, Things TEST, Sintel and
    KITTI training, HD1K training, procedural ``val`` split; depth sets as in the module docstring)."""
    if name not in VAL_SETS:
        raise ValueError(f"unknown validation set '{name}', expected one of {VAL_SETS}")
    check_roots(cfg, [name])
    if is_depth_set(name):
        return _make_depth_set(cfg, name, training=False, augmentor=None)
    roots = cfg.data.roots
    if name == "chairs":
        return FlyingChairs(roots.chairs, split="validation")
    if name.startswith("things_"):
        return FlyingThings3D(roots.things, pass_name=name[len("things_"):], split="validation")
    if name.startswith("sintel_"):
        return MpiSintel(roots.sintel, pass_name=name[len("sintel_"):], split="training")
    if name == "kitti":
        return KITTI(roots.kitti, split="training")
    if name == "hd1k":
        return HD1K(roots.hd1k, split="training")
    return _make_synthetic(cfg, "val", None)


def build_test_dataset(cfg, name: str) -> Dataset:
    """A benchmark test split for submissions (samples without ground truth; ``meta`` holds scene and frame)."""
    if name not in TEST_SETS:
        raise ValueError(f"unknown test set '{name}', expected one of {TEST_SETS}")
    check_roots(cfg, [name])
    if name == "kitti":
        return KITTI(cfg.data.roots.kitti, split="testing")
    return MpiSintel(cfg.data.roots.sintel, pass_name=name[len("sintel_"):], split="test")
