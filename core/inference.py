"""Inference API: flow (and depth) of image pairs of any size, from a checkpoint, in one call.

    estimator = FlowEstimator.from_checkpoint("checkpoints/protoformer-s-synthetic.pth")
    flow = estimator.predict(frame1, frame2)            # [H, W, 2] float32 numpy, pixels (u right, v down)
    depth = estimator.predict_depth(frame1)             # [H, W] metres (depth / joint models)

Everything a caller would otherwise repeat is hidden here: picking the device and precision, turning numpy or
torch images of any layout (grey, RGB, RGBA; uint8 or float 0..255) into the network's input, padding to a
multiple of 8 (RAFT's ``InputPadder``), tiled inference for frames too large for one pass (:mod:`core.tiling`) and
warm starts across a sequence (RAFT's ``forward_interpolate``). ``evaluate.py``, ``demo.py`` and the downstream
tools all go through :class:`FlowEstimator`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from loguru import logger
from scipy.interpolate import griddata
from torch import Tensor
from yacs.config import CfgNode

from core.config import check_scales, config_from_text, get_cfg_defaults, load_config, with_overrides
from core.metrics import disparity_to_depth
from core.model import build_model
from core.model.checkpoint import CheckpointError, load_weights, read_checkpoint
from core.tiling import TileGrid, run_tiled
from core.utils.padder import InputPadder
from core.utils.runtime import resolve_device

DEFAULT_CHECKPOINT = Path("checkpoints/protoformer-s-synthetic.pth")  # relative to the repository root
DEFAULT_CHECKPOINT_PATH = Path(__file__).resolve().parents[1] / DEFAULT_CHECKPOINT  # the same file, from anywhere
TRAIN_COMMANDS = (
    "python train.py --config configs/synthetic.yaml --work-dir runs/synthetic",
    f"python train.py --work-dir runs/synthetic --export {DEFAULT_CHECKPOINT}",
)
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
# Above this many (padded) pixels the whole-image pass is not attempted in "auto" tiling mode: the all-pairs cost
# volume and the GMA attention alone take (H/8 * W/8)^2 * 4 bytes each, 1 GiB at 2^20 pixels (e.g. 1024 x 1024).
AUTO_TILE_PIXELS = 1 << 20


class MissingCheckpointError(FileNotFoundError):
    """The checkpoint file does not exist; the message says how to get or train one."""


def with_random_init_hint(err: Exception) -> str:
    """The message of a command-line tool's error; for a missing checkpoint, plus how to run on untrained weights
    (for the tools that have ``--random-init``)."""
    if isinstance(err, MissingCheckpointError):
        return f"{err}\n  To run the pipeline with untrained weights on purpose, pass --random-init."
    return str(err)


def missing_checkpoint_message(path: str | Path) -> str:
    """What to do when a checkpoint is missing (shown by the command-line tools).

    For the shipped default (:data:`DEFAULT_CHECKPOINT_PATH`): how to train and export one. For any other path, which
    the user named: check the path, and where the default lives.
    """
    if Path(path).resolve() != DEFAULT_CHECKPOINT_PATH:
        return (f"checkpoint not found: {path} (check the path; the default, used when no checkpoint is given, is "
                f"{DEFAULT_CHECKPOINT_PATH})")
    return (
        f"checkpoint not found: {path}\n"
        "  Train the small model on the built-in synthetic data (CPU, no download) and export its weights:\n"
        + "".join(f"    {command}\n" for command in TRAIN_COMMANDS)
        + "  or pass --ckpt with a checkpoint of this project or an official ProtoFormer release (.pth, as shipped)\n"
        "  together with its --config (e.g. configs/sintel.yaml)."
    )


@dataclass
class Prediction:
    """Raw outputs of :meth:`FlowEstimator.run` (all its passes), at the input size, float32 on the CPU.

    Attributes:
        flow: [B, 2, H, W] flow in pixels, or None for a depth model.
        flow_low: [B, 2, H8, W8] 1/8-scale flow on the padded grid of the first pass's input (the frames resized by
            ``FlowEstimator.scales[0]``; in its pixels): the warm-start state, or None. After a cascade or with
            ``flip_average`` it is the final flow averaged over those 8x8 cells.
        disparity: [B, 1, H, W] sigmoid disparity in (0, 1), or None for a flow model.
    """

    flow: Tensor | None = None
    flow_low: Tensor | None = None
    disparity: Tensor | None = None


# ----------------------------------------------------------------------------------------------- images


def to_image_tensor(image: np.ndarray | Tensor, name: str = "image") -> Tensor:
    """An image as the network wants it: float32 [3, H, W] RGB in 0..255.

    Accepts numpy ``[H, W]`` (grey), ``[H, W, 1|3|4]`` (grey, RGB, RGBA: alpha dropped) in uint8, uint16 (scaled to
    8 bits) or float 0..255, and torch ``[H, W]``, ``[1|3|4, H, W]`` or ``[1, C, H, W]`` (channels first). Colour
    order is RGB (``cv2.imread`` gives BGR); float images within 0..1 get a warning.
    """
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
            raise ValueError(f"{name}: expected a numpy image [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], "
                             f"got {image.shape}")
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    elif isinstance(image, Tensor):
        tensor = image.detach()
        if tensor.dim() == 4 and tensor.shape[0] == 1:
            tensor = tensor[0]
        if tensor.dim() == 2:
            tensor = tensor[None]
        if tensor.dim() != 3 or tensor.shape[0] not in (1, 3, 4):
            raise ValueError(f"{name}: expected a torch image [H, W], [C, H, W] or [1, C, H, W] with C in 1, 3, 4, "
                             f"got {tuple(image.shape)}")
    else:
        raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(image).__name__}")
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise ValueError(f"{name}: unsupported image dtype {tensor.dtype}")
    if min(tensor.shape[-2:]) < 1:
        raise ValueError(f"{name}: empty image of shape {tuple(image.shape)}")
    if tensor.is_floating_point() and 0.0 < float(tensor.max()) <= 1.0:
        logger.warning(f"{name}: float values within 0..1, but images are read as 0..255 (multiply by 255)")
    tensor = tensor.float() / 257.0 if tensor.dtype == torch.uint16 else tensor.float()
    channels = tensor.shape[0]
    tensor = tensor.expand(3, -1, -1) if channels == 1 else tensor[:3]
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name}: the image contains NaN or infinite values")
    return tensor.contiguous()


def resize_images(images: Tensor, size: tuple[int, int]) -> Tensor:
    """[B, C, H, W] images resized to ``size`` (H', W'): bilinear, antialiased (a widened filter) when shrinking."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    shrinking = size[0] < images.shape[-2] or size[1] < images.shape[-1]
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=shrinking)


def resize_flow(flow: Tensor, size: tuple[int, int]) -> Tensor:
    """A [B, 2, H, W] flow field resized to ``size`` (H', W'), its vectors rescaled to the new pixels (u by W'/W,
    v by H'/H)."""
    height, width = flow.shape[-2:]
    if (height, width) == tuple(size):
        return flow
    factors = torch.tensor([size[1] / width, size[0] / height], dtype=flow.dtype, device=flow.device)
    return resize_images(flow, size) * factors.view(1, 2, 1, 1)


def mirror_images(images: Tensor) -> Tensor:
    """[B, C, H, W] images (or any per-pixel map) mirrored left-right."""
    return torch.flip(images, dims=[-1])


def mirror_flow(flow: Tensor) -> Tensor:
    """A flow [B, 2, H, W] of a pair as the flow of the left-right mirrored pair: mirrored, x component negated.
    Its own inverse. (On a padded grid, the mirror is exact when the padding is symmetric, else off by one pixel
    of the padded input.)"""
    mirrored = mirror_images(flow)
    return torch.cat([-mirrored[:, :1], mirrored[:, 1:]], dim=1)


def forward_interpolate(flow_low: Tensor) -> Tensor:
    """Project a flow forward by itself: the warm start of the next pair of a sequence (RAFT's forward_interpolate).

    Every pixel ``p`` with flow ``f`` lands at ``p + f`` in the next frame; the moved vectors that stay inside the
    frame are interpolated back onto the pixel grid by nearest neighbour (``scipy.interpolate.griddata``), so each
    pixel of the next frame starts from the motion of the nearest point that arrived there.

    Args:
        flow_low: [2, h, w] or [B, 2, h, w] flow (usually the 1/8-scale ``flow_low`` of the previous pair).

    Returns:
        The projected flow, same shape, dtype and device; zeros where nothing usable is left.
    """
    if flow_low.dim() == 4:
        return torch.stack([forward_interpolate(f) for f in flow_low])
    if flow_low.dim() != 3 or flow_low.shape[0] != 2:
        raise ValueError(f"forward_interpolate: expected a flow [2, h, w] or [B, 2, h, w], got {tuple(flow_low.shape)}")
    flow = flow_low.detach().cpu().double().numpy()
    height, width = flow.shape[1:]
    y0, x0 = np.mgrid[0:height, 0:width]
    x1, y1 = x0 + flow[0], y0 + flow[1]
    inside = (x1 > 0) & (x1 < width) & (y1 > 0) & (y1 < height) & np.isfinite(x1) & np.isfinite(y1)
    if not inside.any():
        return torch.zeros_like(flow_low)
    points = np.stack([x1[inside], y1[inside]], axis=1)
    grid = (x0, y0)
    moved = [griddata(points, component[inside], grid, method="nearest", fill_value=0.0) for component in flow]
    return torch.from_numpy(np.stack(moved)).to(flow_low)


# ----------------------------------------------------------------------------------------------- config


def _stored_config(text: str, opts: Iterable[str] = ()) -> CfgNode:
    """The config stored in a checkpoint over the defaults, then ``KEY VALUE`` opts (checked like a config file).

    Raises :class:`CheckpointError` if the stored config does not fit this code.
    """
    try:
        stored = config_from_text(text)
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"the config stored in the checkpoint does not fit this code: {err}") from None
    return with_overrides(stored, opts)


def _embedded_config(raw: Any) -> str | None:
    if isinstance(raw, Mapping) and isinstance(raw.get("config"), str):
        return raw["config"]
    return None


def resolve_config(checkpoint: Path | None, raw: Any, config: str | Path | CfgNode | None,
                   opts: Iterable[str] = ()) -> CfgNode:
    """The config that describes a checkpoint's network.

    Order: ``config`` if given (a path or a config node); else the config the checkpoint carries (our exports store
    ``cfg.dump()`` under ``"config"``); else a ``.yaml`` beside the checkpoint with the same stem; else the
    defaults (the official architecture, as for a release checkpoint). When both an explicit config and an
    embedded one exist and name different ``model.variant``, the checkpoint's wins (its weights fit only it).
    """
    embedded = _embedded_config(raw)
    if isinstance(config, CfgNode):
        cfg = config
    elif config is not None:
        cfg = load_config(config, opts)
    elif embedded is not None:
        return _stored_config(embedded, opts)
    elif checkpoint is not None and checkpoint.with_suffix(".yaml").is_file():
        logger.info(f"config: {checkpoint.with_suffix('.yaml')} (beside the checkpoint)")
        return load_config(checkpoint.with_suffix(".yaml"), opts)
    else:
        logger.warning("no config given and none stored with the checkpoint: using the defaults "
                       f"(model.variant '{get_cfg_defaults().model.variant}', the official architecture)")
        return load_config(None, opts)
    if embedded is not None:
        stored = _stored_config(embedded)
        if stored.model.variant != cfg.model.variant:
            logger.warning(f"the checkpoint was trained as model.variant '{stored.model.variant}', the config says "
                           f"'{cfg.model.variant}': using '{stored.model.variant}'")
            cfg = cfg.clone()
            cfg.defrost()
            cfg.model.variant = stored.model.variant
            cfg.freeze()
    return cfg


# ----------------------------------------------------------------------------------------------- estimator


class FlowEstimator:
    """A ProtoFormer in eval mode with everything needed to run it on real images.

    Args:
        model: a ProtoFormer (built by :func:`core.model.build_model`), weights loaded.
        cfg: its config (``model.iters``, ``eval.tile*``, ``data.crop_size``, ``depth.max_depth`` are used).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a ``torch.device``; ``None`` or ``"auto"`` = CUDA if
            available, else CPU (checked by :func:`core.utils.runtime.resolve_device`: a ValueError if unavailable).
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"`` (autocast); ``None`` = fp32. Reduced precision needs CUDA
            for fp16; bf16 on the CPU is allowed when asked for but is very slow (never a default).
        iters: flow refinement iterations; ``None`` = ``cfg.model.iters``.
        tile: ``True`` (always tiled), ``False`` (always whole image), ``"auto"`` (tiled above
            :data:`AUTO_TILE_PIXELS` padded pixels); ``None`` = ``cfg.eval.tile``.
        pad_mode: where padding goes, ``"sintel"`` (centred) or ``"kitti"`` (rows at the bottom), as in RAFT.
        scales: the network runs once per entry on the frames resized by that factor (bilinear up, antialiased
            down), each pass warm-started from the previous pass's flow; the flow comes back at the input size, in
            input pixels. The depth head's disparity is resized only; a depth model runs one pass, at the last
            scale, and a joint model's disparity comes from the last pass. ``None`` = ``cfg.eval.scales``,
            ``[1.0]`` by default: one pass at the input size. ``[1, 2]`` finds the motion at full size and refines
            it at twice the size: a network working on a 1/8 grid gets more precise, while a single pass at 2x
            would lose the largest motions. The second pass has 4x the pixels and a 16x larger all-pairs cost
            volume (both passes about 12x the runtime of one on a 741x500 pair on the CPU, with 8 + 2
            iterations). ``flow_init`` and ``Prediction.flow_low`` live on the first pass's grid.
        refine_iters: iterations of every pass after the first of ``scales``; ``None`` = ``cfg.eval.refine_iters``;
            0 = as many as the first pass (``iters``). A pass started from a good flow needs few: the shipped
            checkpoint's config says 2, chosen on a synthetic validation set (see the README's "Evaluation").
        flip_average: also run every pass on the left-right mirrored frames (and mirrored warm start) and average
            the two estimates (the mirrored flow's x component negated back; disparity mirrored back); twice the
            runtime. ``None`` = ``cfg.eval.flip_average``. With it, ``Prediction.flow_low`` is the averaged flow
            averaged over the first pass's 8x8 cells, as after a cascade.
    """

    def __init__(self, model: torch.nn.Module, cfg: CfgNode, device: str | torch.device | None = None,
                 precision: str | None = None, iters: int | None = None, tile: bool | str | None = None,
                 pad_mode: str = "sintel", scales: Sequence[float] | None = None, refine_iters: int | None = None,
                 flip_average: bool | None = None):
        self.cfg = cfg
        self.device = resolve_device(device)
        self.precision = precision or "fp32"
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got '{precision}'")
        if self.precision == "fp16" and self.device.type != "cuda":
            raise ValueError("precision 'fp16' needs a CUDA device (use fp32 on the CPU)")
        if self.precision == "bf16" and self.device.type == "cpu":
            logger.warning("bf16 on the CPU is much slower than fp32 here; use it only to check numerics")
        self.iters = int(iters if iters is not None else cfg.model.iters)
        if self.iters < 1:
            raise ValueError(f"iters must be >= 1, got {self.iters}")
        refine_iters = int(cfg.eval.refine_iters if refine_iters is None else refine_iters)
        if refine_iters < 0:
            raise ValueError(f"refine_iters must be >= 0 (0 = iters), got {refine_iters}")
        self.refine_iters = refine_iters or self.iters
        self.flip_average = bool(cfg.eval.flip_average if flip_average is None else flip_average)
        self.tile = cfg.eval.tile if tile is None else tile
        if self.tile not in (True, False, "auto"):
            raise ValueError(f"tile must be True, False or 'auto', got {tile!r}")
        tile_size = list(cfg.eval.tile_size) or list(cfg.data.crop_size)
        if len(tile_size) != 2:
            raise ValueError(f"eval.tile_size must be [H, W] (or empty for data.crop_size), got {tile_size}")
        self.tile_size = (int(tile_size[0]), int(tile_size[1]))
        self.tile_min_overlap = float(cfg.eval.tile_min_overlap)
        self.pad_mode = pad_mode
        scales = list(cfg.eval.scales if scales is None else scales)
        check_scales(scales, "scales")
        self.scales = [float(scale) for scale in scales]
        self.model = model.to(self.device).eval()

    # ------------------------------------------------------------------------------------------- construction
    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path | None = None,
                        config: str | Path | CfgNode | None = None, device: str | torch.device | None = None,
                        precision: str | None = None, iters: int | None = None, tile: bool | str | None = None,
                        pad_mode: str = "sintel", scales: Sequence[float] | None = None,
                        refine_iters: int | None = None, flip_average: bool | None = None,
                        opts: Iterable[str] = ()) -> "FlowEstimator":
        """Build the network a checkpoint needs and load it.

        ``checkpoint`` (default: the shipped :data:`DEFAULT_CHECKPOINT` of this repository, wherever the caller
        runs from) may be this project's training checkpoint or weight export (which carry their config), an
        official ProtoFormer release (keys with ``module.``; pass its ``config``, e.g. ``configs/sintel.yaml``) or a
        plain state_dict. See :func:`resolve_config` for how the config is found. ``opts`` are ``KEY VALUE``
        config overrides.

        Raises:
            MissingCheckpointError: the file does not exist (the message says how to train one).
            CheckpointError: the file is unreadable or does not fit the network.
        """
        path = DEFAULT_CHECKPOINT_PATH if checkpoint is None else Path(checkpoint)
        if not path.is_file():
            raise MissingCheckpointError(missing_checkpoint_message(path))
        raw = read_checkpoint(path)
        cfg = resolve_config(path, raw, config, opts)
        model = load_weights(build_model(cfg), raw)
        logger.info(f"loaded {path} ({cfg.model.variant}, type {cfg.model.type})")
        return cls(model, cfg, device=device, precision=precision, iters=iters, tile=tile, pad_mode=pad_mode,
                   scales=scales, refine_iters=refine_iters, flip_average=flip_average)

    @classmethod
    def from_random_init(cls, config: str | Path | CfgNode | None = None, seed: int | None = None,
                         opts: Iterable[str] = (), **kwargs) -> "FlowEstimator":
        """An untrained network (for tests and dry runs of the pipeline); ``seed`` defaults to ``cfg.seed``."""
        cfg = config if isinstance(config, CfgNode) else load_config(config, opts)
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(cfg.seed if seed is None else seed)
        try:
            model = build_model(cfg)
        finally:
            torch.random.set_rng_state(generator_state)
        logger.warning(f"using a randomly initialised {cfg.model.variant} ({cfg.model.type}): "
                       "its output is meaningless")
        return cls(model, cfg, **kwargs)

    # ------------------------------------------------------------------------------------------- properties
    @property
    def predicts_flow(self) -> bool:
        return self.model.predicts_flow

    @property
    def predicts_depth(self) -> bool:
        return self.model.predicts_depth

    def describe(self) -> dict[str, Any]:
        """The options that shape the outputs (for logs and result files)."""
        return {
            "variant": self.cfg.model.variant, "type": self.cfg.model.type, "iters": self.iters,
            "tile": self.tile, "tile_size": list(self.tile_size), "tile_min_overlap": self.tile_min_overlap,
            "precision": self.precision, "device": str(self.device), "pad_mode": self.pad_mode, "scales": self.scales,
            "refine_iters": self.refine_iters, "flip_average": self.flip_average,
        }

    def passes_description(self) -> str:
        """The passes in a few words, e.g. ``8 it, scale 1`` or ``8+4 it, scales 1,2, flip-averaged``."""
        if len(self.scales) == 1:
            name = f"{self.iters} it, scale {self.scales[0]:g}"
        else:
            name = f"{self.iters}+{self.refine_iters} it, scales " + ",".join(f"{scale:g}" for scale in self.scales)
        return name + (", flip-averaged" if self.flip_average else "")

    # ------------------------------------------------------------------------------------------- tensor API
    def _autocast(self):
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _uses_tiles(self, padded_shape: tuple[int, int]) -> bool:
        if self.tile == "auto":
            return padded_shape[0] * padded_shape[1] > AUTO_TILE_PIXELS
        return bool(self.tile)

    def _forward_padded(self, image1: Tensor, image2: Tensor | None, flow_init: Tensor | None,
                        iters: int) -> dict[str, Tensor]:
        """One network pass on padded inputs; returns the last flow, flow_low and disparity (those that exist)."""
        with self._autocast():
            out = self.model(image1, image2, iters=iters, flow_init=flow_init)
        result = {}
        if "flow" in out and image2 is not None:
            result["flow"] = out["flow"][-1].float()
            result["flow_low"] = out["flow_low"].float()
        if "disparity" in out:
            result["disparity"] = out["disparity"][-1].float()
        return result

    @torch.inference_mode()
    def run(self, image1: Tensor, image2: Tensor | None = None, flow_init: Tensor | None = None) -> Prediction:
        """Run the network on a batch: one pass per entry of ``scales``, each from the previous pass's flow.

        Args:
            image1, image2: [B, 3, H, W] float RGB in 0..255 (any H, W). ``image2`` is needed for flow; without it a
                depth or joint model predicts the depth of ``image1`` only (one pass, at the last scale).
            flow_init: [B, 2, H8, W8] warm start of the first pass, on the padded 1/8 grid of its input (the frames
                resized by ``scales[0]``): ``Prediction.flow_low`` of this size, e.g.
                ``forward_interpolate(previous.flow_low)``, or None.

        Returns:
            :class:`Prediction` on the CPU, cropped back to H x W.
        """
        if image2 is None and not self.predicts_depth:
            raise ValueError("a flow model needs two images (image2 is None)")
        inputs = [image1.to(self.device, torch.float32)]
        if image2 is not None:
            if image2.shape != image1.shape:
                raise ValueError(f"the two images must have the same size, got {tuple(image1.shape)} and "
                                 f"{tuple(image2.shape)}")
            inputs.append(image2.to(self.device, torch.float32))
        if flow_init is not None:
            expected = (image1.shape[0], 2, *self._eighth_grid(*image1.shape[-2:]))
            if tuple(flow_init.shape) != expected:
                raise ValueError(f"flow_init must be {list(expected)} (1/8 of the padded network input), "
                                 f"got {list(flow_init.shape)}")
            flow_init = flow_init.to(self.device, torch.float32)
        if image2 is None or not self.predicts_flow:  # a depth model ignores image2: one pass, at the last scale
            out = self._pass(inputs[:1], self.scales[-1], self.iters, None, None)
        else:
            mirrored_init = mirror_flow(flow_init) if flow_init is not None and self.flip_average else None
            out = self._pass(inputs, self.scales[0], self.iters, flow_init, mirrored_init)
            for scale in self.scales[1:]:
                mirrored_init = self.eighth_scale_flow(mirror_flow(out["flow"]), scale) if self.flip_average else None
                out = self._pass(inputs, scale, self.refine_iters, self.eighth_scale_flow(out["flow"], scale),
                                 mirrored_init)
            if len(self.scales) > 1 or self.flip_average:  # no single network state: derive it from the flow
                out["flow_low"] = self.eighth_scale_flow(out["flow"], self.scales[0])
        return Prediction(**{key: value.cpu().contiguous() for key, value in out.items()})

    def _pass(self, inputs: list[Tensor], scale: float, iters: int, flow_init: Tensor | None,
              mirrored_init: Tensor | None) -> dict[str, Tensor]:
        """One network pass of ``iters`` iterations on the frames resized by ``scale`` (``flow_init`` on that
        pass's padded 1/8 grid), averaged with a pass on the mirrored frames (from ``mirrored_init``, the mirrored
        pair's warm start) if ``flip_average``. Returns flow and disparity at the input size (flow in input pixels)
        and the unmirrored pass's own flow_low, on the device; those the model predicts."""
        out = self._single_pass(inputs, scale, iters, flow_init)
        if not self.flip_average:
            return out
        mirrored = self._single_pass([mirror_images(image) for image in inputs], scale, iters, mirrored_init)
        if "flow" in out:
            out["flow"] = (out["flow"] + mirror_flow(mirrored["flow"])) / 2
        if "disparity" in out:
            out["disparity"] = (out["disparity"] + mirror_images(mirrored["disparity"])) / 2
        return out

    def _single_pass(self, inputs: list[Tensor], scale: float, iters: int, flow_init: Tensor | None
                     ) -> dict[str, Tensor]:
        """:meth:`_pass` without the mirrored pass."""
        size = tuple(inputs[0].shape[-2:])
        resized = [resize_images(image, self.network_size(*size, scale)) for image in inputs]
        padder = InputPadder(resized[0].shape, mode=self.pad_mode, min_size=self.model.min_size)
        padded = padder.pad(*resized)
        if len(padded) == 2 and self._uses_tiles(padder.padded_shape):
            out = self._run_tiled(padded[0], padded[1], flow_init, iters)
        else:
            out = self._forward_padded(padded[0], padded[1] if len(padded) == 2 else None, flow_init, iters)
        if "flow" in out:
            out["flow"] = resize_flow(padder.unpad(out["flow"]), size)
        if "disparity" in out:
            out["disparity"] = resize_images(padder.unpad(out["disparity"]), size)
        return out

    def network_size(self, height: int, width: int, scale: float | None = None) -> tuple[int, int]:
        """The (H, W) the network runs at for an input of ``height`` x ``width`` (before padding): ``scale``
        (default: the first of ``scales``) times it, rounded."""
        scale = self.scales[0] if scale is None else scale
        if scale == 1.0:
            return height, width
        return max(1, round(height * scale)), max(1, round(width * scale))

    def _eighth_grid(self, height: int, width: int, scale: float | None = None) -> tuple[int, int]:
        """(H8, W8) of the padded 1/8 grid of a pass at ``scale`` (default: the first) over ``height`` x ``width``."""
        padder = InputPadder(self.network_size(height, width, scale), mode=self.pad_mode, min_size=self.model.min_size)
        return padder.padded_shape[0] // 8, padder.padded_shape[1] // 8

    def eighth_scale_flow(self, flow: Tensor, scale: float | None = None) -> Tensor:
        """A full-resolution flow [B, 2, H, W] (input pixels) as the warm start of a pass at ``scale`` (default: the
        first of ``scales``): resized to that pass's input, padded, averaged over 8x8 cells, in 1/8-grid pixels
        [B, 2, H8, W8]."""
        resized = resize_flow(flow.float(), self.network_size(*flow.shape[-2:], scale))
        padder = InputPadder(resized.shape, mode=self.pad_mode, min_size=self.model.min_size)
        (padded,) = padder.pad(resized)
        return F.avg_pool2d(padded, kernel_size=8) / 8.0

    def _run_tiled(self, image1: Tensor, image2: Tensor, flow_init: Tensor | None, iters: int) -> dict[str, Tensor]:
        grid = TileGrid.plan(image1.shape[-2], image1.shape[-1], self.tile_size, self.tile_min_overlap)
        logger.debug(f"tiled inference: {len(grid)} tiles of {grid.tile_height}x{grid.tile_width} "
                     f"over {grid.height}x{grid.width}")
        flow_channels = 2

        def tile_fn(tile1: Tensor, tile2: Tensor, tile_init: Tensor | None) -> tuple[Tensor, Tensor]:
            out = self._forward_padded(tile1, tile2, tile_init, iters)
            full = torch.cat([out["flow"], out["disparity"]], 1) if "disparity" in out else out["flow"]
            return full, out["flow_low"]

        full, flow_low = run_tiled(tile_fn, image1, image2, grid, flow_init)
        result = {"flow": full[:, :flow_channels], "flow_low": flow_low}
        if full.shape[1] > flow_channels:
            result["disparity"] = full[:, flow_channels:]
        return result

    # ------------------------------------------------------------------------------------------- numpy API
    def predict(self, image1: np.ndarray | Tensor, image2: np.ndarray | Tensor,
                flow_init: np.ndarray | Tensor | None = None) -> np.ndarray:
        """Flow from ``image1`` to ``image2``: float32 numpy [H, W, 2] in pixels (u right, v down).

        Args:
            image1, image2: one image each, numpy [H, W(, C)] or torch [(1,) C, H, W], uint8 or float 0..255, grey,
                RGB or RGBA, any size (both the same).
            flow_init: optional guess of this pair's flow at full resolution, [H, W, 2] numpy or [2, H, W] torch,
                in pixels (e.g. a previous estimate); it seeds the recurrent refinement.
        """
        frame1, frame2 = to_image_tensor(image1, "image1"), to_image_tensor(image2, "image2")
        if frame1.shape != frame2.shape:
            raise ValueError(f"image1 and image2 must have the same size, got {tuple(frame1.shape[1:])} and "
                             f"{tuple(frame2.shape[1:])}")
        init = None if flow_init is None else self._downsample_flow(flow_init, frame1.shape[-2:])
        return self._flow_numpy(self.run(frame1[None], frame2[None], init))

    def _downsample_flow(self, flow: np.ndarray | Tensor, size: tuple[int, int]) -> Tensor:
        """A full-resolution flow guess [H, W, 2] / [2, H, W] -> the model's [1, 2, H8, W8] warm start."""
        tensor = torch.from_numpy(np.asarray(flow)).permute(2, 0, 1) if isinstance(flow, np.ndarray) else flow
        tensor = tensor.detach().float().cpu()
        if tensor.dim() == 4 and tensor.shape[0] == 1:
            tensor = tensor[0]
        if tuple(tensor.shape) != (2, *size):
            raise ValueError(f"flow_init must be [H, W, 2] (numpy) or [2, H, W] (torch) with H, W = {tuple(size)}, "
                             f"got {tuple(np.shape(flow))}")
        return self.eighth_scale_flow(tensor[None])

    @staticmethod
    def _flow_numpy(prediction: Prediction) -> np.ndarray:
        return prediction.flow[0].permute(1, 2, 0).numpy().astype(np.float32, copy=False)

    def predict_sequence(self, frames: Iterable[np.ndarray | Tensor], warm_start: bool = True) -> Iterator[np.ndarray]:
        """Flow of every consecutive pair of ``frames`` (an iterable, read lazily: a video is never held whole).

        With ``warm_start`` each pair starts from the previous pair's 1/8-scale flow projected forward
        (:func:`forward_interpolate`), as RAFT does on Sintel. Yields float32 [H, W, 2] per pair.
        """
        previous, flow_low = None, None
        for index, frame in enumerate(frames):
            current = to_image_tensor(frame, f"frame {index}")
            if previous is not None:
                if current.shape != previous.shape:
                    raise ValueError(f"frame {index} is {tuple(current.shape[1:])}, the previous frame was "
                                     f"{tuple(previous.shape[1:])}: all frames of a sequence must have one size")
                init = forward_interpolate(flow_low) if warm_start and flow_low is not None else None
                prediction = self.run(previous[None], current[None], init)
                flow_low = prediction.flow_low
                yield self._flow_numpy(prediction)
            previous = current

    def predict_disparity(self, image: np.ndarray | Tensor) -> np.ndarray:
        """Sigmoid disparity of one image, float32 [H, W] in (0, 1) (depth and joint models)."""
        if not self.predicts_depth:
            raise ValueError(f"this is a '{self.cfg.model.type}' model: it predicts no depth (use a depth or joint "
                             "checkpoint and config)")
        prediction = self.run(to_image_tensor(image)[None])
        return prediction.disparity[0, 0].numpy().astype(np.float32, copy=False)

    def predict_depth(self, image: np.ndarray | Tensor) -> np.ndarray:
        """Depth of one image in metres, float32 [H, W]: ``1 / max(disparity, 1 / depth.max_depth)``."""
        return self.depth_from_disparity(self.predict_disparity(image))

    def depth_from_disparity(self, disparity: np.ndarray) -> np.ndarray:
        """Metres from the depth head's sigmoid disparity: ``1 / max(disparity, 1 / depth.max_depth)``."""
        return disparity_to_depth(torch.from_numpy(np.asarray(disparity)), self.cfg.depth.max_depth).numpy()
