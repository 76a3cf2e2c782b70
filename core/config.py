"""Experiment configuration (yacs).

One set of defaults lives here; every file in ``configs/`` is a stage that overrides some of them, and the
command line can override any key with ``KEY VALUE`` pairs (``train.lr 1e-4``). Unknown keys are errors, so a
typo never silently falls back to a default.

The model architecture is *not* spelled out key by key: ``model.variant`` names an entry of the size registry
:data:`core.model.VARIANTS` (timm style), so ``protoformer`` and ``protoformer-s`` share one code path and differ
only in numbers.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import numbers
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml
from yacs.config import CfgNode as CN

MIN_EVAL_SCALE, MAX_EVAL_SCALE = 0.1, 4.0  # bounds of every factor of eval.scales

_C = CN()
_C.name = "protoformer"  # run name, used in logs and checkpoint names
_C.stage = "synthetic"  # chairs | things | sintel | kitti | synthetic | depth_* (selects the training mixture)
_C.seed = 1234

# ----------------------------------------------------------------------------------------------- model
_C.model = CN()
_C.model.variant = "protoformer"  # key of core.model.VARIANTS
_C.model.type = "flow"  # flow | depth | joint
_C.model.iters = 12  # flow refinement iterations (official: decoder_depth = 12)
_C.model.dropout = 0.0  # dropout in the cost-memory transformer (training only)

# ----------------------------------------------------------------------------------------------- data
_C.data = CN()
# Dataset roots. Relative paths are resolved against the current working directory.
_C.data.roots = CN()
_C.data.roots.chairs = "datasets/FlyingChairs_release"
_C.data.roots.things = "datasets/FlyingThings3D"
_C.data.roots.sintel = "datasets/Sintel"
_C.data.roots.kitti = "datasets/KITTI"
_C.data.roots.hd1k = "datasets/HD1k"
_C.data.roots.kitti_depth = "datasets/kitti_depth"  # KITTI raw + annotated depth
_C.data.roots.vkitti = "datasets/vkitti2"
_C.data.roots.sintel_depth = "datasets/Sintel-depth"
# Training mixture: "name" or "name*repeat" entries, e.g. ["sintel_clean*100", "sintel_final*100", "kitti*200"].
_C.data.train_sets = ["synthetic"]
_C.data.crop_size = [368, 496]  # H, W of training crops
_C.data.num_workers = 4

# Augmentation (RAFT family). min/max_scale are log2 scale bounds.
_C.aug = CN()
_C.aug.min_scale = -0.2
_C.aug.max_scale = 0.6
_C.aug.spatial_prob = 0.8
_C.aug.stretch_prob = 0.8
_C.aug.max_stretch = 0.2
_C.aug.do_flip = True
_C.aug.h_flip_prob = 0.5
_C.aug.v_flip_prob = 0.1
_C.aug.brightness = 0.4
_C.aug.contrast = 0.4
_C.aug.saturation = 0.4
_C.aug.hue = 0.5 / 3.14
_C.aug.asymmetric_color_prob = 0.2
_C.aug.eraser_prob = 0.5

# Built-in procedural data (core.data.synthetic): used when a set is named "synthetic" / "synthetic_depth".
_C.synthetic = CN()
_C.synthetic.image_size = [384, 512]  # H, W rendered (then augmented/cropped like any dataset)
_C.synthetic.train_size = 20000  # number of distinct training pairs (index -> deterministic sample)
_C.synthetic.val_size = 64
_C.synthetic.max_displacement = 64.0  # pixels, largest layer translation
_C.synthetic.num_layers = [3, 8]  # min, max foreground layers
_C.synthetic.texture_dir = ""  # optional folder of images to use as textures
_C.synthetic.texture_image_prob = 0.5  # with texture_dir: share of layers textured by an image
_C.synthetic.texture_sampling = "image"  # image: every image equally often | folder: every subfolder equally often
_C.synthetic.difficulty = 1.0  # 0..1: upper bound of layer count, motion ranges, thin structures, holes
_C.synthetic.photometric = 0.0  # 0..1: strength of motion blur, noise and brightness change (GT stays exact)
_C.synthetic.dead_leaves = 0.0  # 0..1: share of procedural patterns drawn as dead leaves (sharp edges, all scales)
# Monocular depth cues (depth stages): a ground plane in perspective under a sky, objects standing on it with a size
# and texture detail set by their depth, haze. False = the layered scenes, whose depths no single image tells.
_C.synthetic.depth_cues = False
_C.synthetic.seed = 0

# ----------------------------------------------------------------------------------------------- training
_C.train = CN()
_C.train.batch_size = 8  # global batch (split across processes)
_C.train.num_steps = 100000
_C.train.lr = 2.5e-4
_C.train.weight_decay = 1e-4
_C.train.epsilon = 1e-8
_C.train.clip = 1.0
_C.train.pct_start = 0.05  # OneCycle warm-up share
_C.train.anneal_strategy = "linear"
_C.train.gamma = 0.8  # sequence-loss decay
_C.train.max_flow = 400.0  # pixels with larger ground-truth flow are excluded from the loss
_C.train.add_noise = True  # Gaussian noise on the inputs
_C.train.freeze_bn = False
_C.train.mixed_precision = False
_C.train.amp_dtype = "bfloat16"  # bfloat16 | float16 (CUDA only)
_C.train.restore_ckpt = ""  # weights to start from (official release or our checkpoint)
_C.train.val_freq = 5000
_C.train.val_sets = ["synthetic"]
_C.train.log_freq = 100
_C.train.image_log_freq = 1000
_C.train.ckpt_freq = 5000
_C.train.keep_last = 3
_C.train.max_bad_steps = 20  # stop after this many non-finite steps in a row

# ----------------------------------------------------------------------------------------------- depth
_C.depth = CN()
_C.depth.min_depth = 1e-3
_C.depth.max_depth = 80.0
_C.depth.silog_variance_focus = 0.85
_C.depth.eval_crop = "garg"  # garg | eigen | none
_C.depth.median_scaling = False

# ----------------------------------------------------------------------------------------------- evaluation
_C.eval = CN()
_C.eval.tile = False
_C.eval.tile_size = []  # H, W of tiles; empty = data.crop_size
_C.eval.tile_min_overlap = 0.25  # fraction of the tile that neighbouring tiles share at least
_C.eval.scales = [1.0]  # one network pass per factor on the resized frames, each from the previous pass's flow
_C.eval.refine_iters = 0  # iterations of every pass after the first of eval.scales; 0 = as many as the first
_C.eval.flip_average = False  # also run the left-right mirrored frames; average the two estimates (2x runtime)


class UnknownConfigKeyError(KeyError):
    """A config key that the defaults do not have. The message names its source and suggests the closest key."""

    def __init__(self, key: str, source: str | None = None) -> None:
        close = difflib.get_close_matches(key, list(flatten_config(_C)), n=1, cutoff=0.7)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        super().__init__(f"{source + ': ' if source else ''}unknown config key '{key}'{hint}")
        self.key = key

    def __str__(self) -> str:  # KeyError's own str() would quote the whole message
        return str(self.args[0])


def get_cfg_defaults() -> CN:
    """A fresh copy of the defaults (never the module-level object itself)."""
    return _C.clone()


def _coerce(value: str):
    """Turn a command-line string into the Python value yacs expects (number, bool, list, ...)."""
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def check_scales(scales: Sequence[float], name: str) -> None:
    """Raise a ValueError naming ``name`` unless ``scales`` is a non-empty list of numbers within the bounds."""
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence) or not scales or not all(
            isinstance(scale, numbers.Real) and not isinstance(scale, bool) for scale in scales):
        raise ValueError(f"{name} must be a non-empty list of numbers, got {scales!r}")
    if not all(MIN_EVAL_SCALE <= scale <= MAX_EVAL_SCALE for scale in scales):
        raise ValueError(f"{name} must lie in [{MIN_EVAL_SCALE:g}, {MAX_EVAL_SCALE:g}], got {list(scales)}")


def scale_factor(text: str) -> float:
    """argparse ``type`` of one ``--scales`` factor: a number within the bounds of ``eval.scales``."""
    try:
        value = float(text)
        check_scales([value], "a scale")
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: {err}") from None
    return value


def refine_iteration_count(text: str) -> int:
    """argparse ``type`` of ``--refine-iters``: an integer >= 0 (0 = as many as the first pass)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be >= 0 (0 = --iters)")
    return value


def add_refinement_options(parser: argparse.ArgumentParser) -> None:
    """``--refine-iters`` and ``--flip-average`` (``eval.refine_iters``, ``eval.flip_average``), for the tools that
    build a :class:`core.inference.FlowEstimator` from the command line; both default to None = the config's."""
    parser.add_argument("--refine-iters", type=refine_iteration_count, metavar="N",
                        help="iterations of the passes after the first of --scales (default: eval.refine_iters of "
                             "the config; 0 = --iters)")
    parser.add_argument("--flip-average", action=argparse.BooleanOptionalAction, default=None,
                        help="also run the left-right mirrored frames and average the two flows (2x the runtime; "
                             "default: eval.flip_average of the config)")


BASE_KEY = "_base_"


def load_config(path: str | Path | None = None, opts: Sequence[str] | Iterable[str] = ()) -> CN:
    """Load the defaults, merge a stage file, then ``KEY VALUE`` overrides; return a frozen config.

    A stage file may start from another one: ``_base_: other.yaml`` (a path relative to the folder of the file as
    named, symlinks not followed) merges the other file first, then this file's keys over it (a list value replaces
    the base's list). Bases can chain.

    Raises:
        FileNotFoundError: the config file, or a base it names, does not exist.
        UnknownConfigKeyError: (a KeyError) a key in the file or in ``opts`` does not exist in the defaults.
        ValueError: the file is not a YAML mapping, bases form a cycle, ``opts`` is not a list of KEY VALUE pairs,
            or a value has the wrong type.
    """
    if path is None:
        return _finish(get_cfg_defaults(), opts)
    return _config_from_mapping(_read_config_file(Path(path), ()), opts, source=str(path))


def _read_config_file(path: Path, chain: tuple[Path, ...]) -> dict:
    """The mapping of a config file with its ``_base_`` chain merged in (``chain``: the files that named it)."""
    if not path.is_file():
        named_by = f" (the _base_ of {chain[-1]})" if chain else ""
        raise FileNotFoundError(f"config file not found: {path}{named_by}")
    if path.resolve() in [p.resolve() for p in chain]:
        raise ValueError(f"config bases form a cycle: {' -> '.join(str(p) for p in (*chain, path))}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        checkpoint = (" (a checkpoint? pass it with --ckpt)" if path.suffix in (".pth", ".pt", ".ckpt") and not chain
                      else "")
        raise ValueError(f"{path}: not a YAML config file, it is binary{checkpoint}") from None
    loaded = _parse_mapping(text, str(path))
    has_base = BASE_KEY in loaded
    base = loaded.pop(BASE_KEY, None)
    if chain:  # a base: a wrong key or value in it is reported with its own name (load_config's merge names the top)
        _merged_over_defaults(loaded, str(path))
    if not has_base:
        return loaded
    if not isinstance(base, str) or not base:  # also `_base_:` with nothing after it (None)
        raise ValueError(f"{path}: {BASE_KEY} must be the path of another config file, got {base!r}")
    return _merge_mappings(_read_config_file(path.parent / base, (*chain, path)), loaded)


def _merge_mappings(base: dict, override: dict) -> dict:
    """``base`` with ``override`` merged in, section by section (nested mappings merge, other values replace)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge_mappings(merged[key], value)
        else:
            merged[key] = value
    return merged


def _parse_mapping(text: str, source: str) -> dict:
    """The YAML mapping in ``text`` (empty text: ``{}``). Raises ValueError naming ``source``."""
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"{source}: not valid YAML ({' '.join(str(err).split())})") from None
    if loaded is None:  # an empty file changes nothing
        return {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{source}: a config must be a YAML mapping of sections (model:, train:, ...), "
                         f"got a {type(loaded).__name__}")
    return loaded


def config_from_text(text: str, opts: Sequence[str] | Iterable[str] = (), source: str = "stored config") -> CN:
    """A config dumped as YAML text (``cfg.dump()``, e.g. stored in a checkpoint) over the defaults, then ``opts``.

    Checked exactly like a config file; ``source`` names the text in error messages. Text has no folder, so it
    cannot name a ``_base_`` (use :func:`load_config` for a file that does).

    Raises:
        UnknownConfigKeyError: (a KeyError) the text or ``opts`` name a key that does not exist in the defaults.
        ValueError: the text is not a YAML mapping, names a ``_base_``, or a value has the wrong type.
    """
    loaded = _parse_mapping(text, source)
    if BASE_KEY in loaded:
        raise ValueError(f"{source}: {BASE_KEY} is only allowed in a config file (it is a path relative to the file)")
    return _config_from_mapping(loaded, opts, source)


def _config_from_mapping(loaded: dict, opts: Sequence[str] | Iterable[str], source: str) -> CN:
    """The defaults with the mapping ``loaded`` merged in, then ``opts``; validated and frozen."""
    return _finish(_merged_over_defaults(loaded, source), opts)


def _merged_over_defaults(loaded: dict, source: str) -> CN:
    """The defaults with the mapping ``loaded`` merged in (not validated). Errors name ``source``."""
    cfg = get_cfg_defaults()
    try:
        cfg.merge_from_other_cfg(CN(loaded))
    except KeyError as err:  # yacs: "Non-existent config key: train.lr_typo"
        raise UnknownConfigKeyError(str(err.args[0]).split(": ", 1)[-1], source) from None
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
    except Exception as err:  # yacs asserts on values it cannot hold (e.g. a dict where a number belongs)
        raise ValueError(f"{source}: not a valid config ({type(err).__name__}: {err})") from None
    return cfg


def flatten_config(node: CN, prefix: str = "") -> dict[str, Any]:
    """``{"train.lr": 4e-4, ...}``: every leaf of a config under its dotted key."""
    flat = {}
    for key, value in node.items():
        if isinstance(value, CN):
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _finish(cfg: CN, opts: Sequence[str] | Iterable[str]) -> CN:
    """Apply ``KEY VALUE`` overrides to ``cfg``, validate and freeze it."""
    opts = list(opts)
    if len(opts) % 2:
        raise ValueError(f"config overrides must be KEY VALUE pairs, got an odd number of items: {opts}")
    for key, value in zip(opts[0::2], opts[1::2]):
        node, *parents = cfg, *key.split(".")[:-1]
        for part in parents:
            if not isinstance(node, CN) or part not in node:
                raise UnknownConfigKeyError(key)
            node = node[part]
        leaf = key.split(".")[-1]
        if not isinstance(node, CN) or leaf not in node:
            raise UnknownConfigKeyError(key)
        value = _coerce(value) if isinstance(value, str) else value
        if isinstance(node[leaf], float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # "train.lr 1" means 1.0
        try:
            cfg.merge_from_list([key, value])
        except ValueError as err:
            raise ValueError(f"config override {key}={value!r}: {err}") from None
    validate(cfg)
    cfg.freeze()
    return cfg


def with_overrides(cfg: CN, opts: Sequence[str] | Iterable[str]) -> CN:
    """A validated, frozen copy of ``cfg`` with ``KEY VALUE`` overrides applied (``cfg`` itself is not changed).

    Raises:
        KeyError: an override names a key that does not exist.
        ValueError: an odd number of items, or a value of the wrong type or out of range.
    """
    cfg = cfg.clone()
    cfg.defrost()
    return _finish(cfg, opts)


def validate(cfg: CN) -> None:
    """Check values that yacs' type check cannot (choices and ranges). Raises ValueError."""
    from core.model import VARIANTS  # imported here: the model package imports nothing from config

    if cfg.model.variant not in VARIANTS:
        raise ValueError(f"model.variant '{cfg.model.variant}' is not one of {sorted(VARIANTS)}")
    if cfg.model.type not in ("flow", "depth", "joint"):
        raise ValueError(f"model.type must be flow, depth or joint, got '{cfg.model.type}'")
    if cfg.model.iters < 1:
        raise ValueError(f"model.iters must be >= 1, got {cfg.model.iters}")
    if len(cfg.data.crop_size) != 2 or min(cfg.data.crop_size) < 32:
        raise ValueError(f"data.crop_size must be [H, W] with both >= 32, got {list(cfg.data.crop_size)}")
    if cfg.train.amp_dtype not in ("bfloat16", "float16"):
        raise ValueError(f"train.amp_dtype must be bfloat16 or float16, got '{cfg.train.amp_dtype}'")
    if cfg.synthetic.texture_sampling not in ("image", "folder"):
        raise ValueError(f"synthetic.texture_sampling must be image or folder, got '{cfg.synthetic.texture_sampling}'")
    check_scales(cfg.eval.scales, "eval.scales")
    if cfg.eval.refine_iters < 0:
        raise ValueError(f"eval.refine_iters must be >= 0 (0 = as many as the first pass), got {cfg.eval.refine_iters}")
    if cfg.depth.eval_crop not in ("garg", "eigen", "none"):
        raise ValueError(f"depth.eval_crop must be garg, eigen or none, got '{cfg.depth.eval_crop}'")
