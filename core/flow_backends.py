"""Dense optical flow behind one small interface, for the downstream tools and their benchmarks.

    flow_fn = make_flow_backend("dis")                     # or "protoformer" (default), "farneback"
    flow = flow_fn(frame1, frame2)                         # float32 [H, W, 2], pixels, frame1 -> frame2

Backends:
    * ``protoformer``: :class:`core.inference.FlowEstimator` on a checkpoint (default
      ``checkpoints/protoformer-s-synthetic.pth`` in the repository).
    * ``dis``: OpenCV's Dense Inverse Search (Kroeger et al., ECCV 2016), ``MEDIUM`` preset, on grey images.
    * ``farneback``: OpenCV's polynomial-expansion flow (Farneback, SCIA 2003) on grey images.

Frames are ``uint8 [H, W, 3]`` RGB, both of one size. ``max_side`` runs the backend on frames downscaled so that
their longer side is at most ``max_side`` pixels and scales the flow back to the input size and units.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import cv2
import numpy as np

FlowFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
BACKENDS = ("protoformer", "dis", "farneback")
# The downstream tools' default: DIS, measured ahead of the shipped checkpoint on their benchmark (README,
# "Downstream tools"); ProtoFormer whenever the user names a checkpoint or config.
TOOL_DEFAULT_BACKEND = "dis"
FARNEBACK_PARAMS = dict(pyr_scale=0.5, levels=5, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)


def choose_backend(backend: str | None, ckpt: str | Path | None = None, config: str | Path | None = None) -> str:
    """The backend a downstream tool runs: ``backend`` if given, else ``protoformer`` if a checkpoint or config is
    given, else :data:`TOOL_DEFAULT_BACKEND`."""
    if backend is not None:
        return backend
    return "protoformer" if ckpt is not None or config is not None else TOOL_DEFAULT_BACKEND


def describe_backend(name: str) -> str:
    """One log line naming the backend a tool runs, with how to get the ProtoFormer model when it is another."""
    if name == "protoformer":
        return "flow backend: protoformer"
    return f"flow backend: {name} (for the ProtoFormer model: --backend protoformer, or --ckpt)"


def _check_pair(image1: np.ndarray, image2: np.ndarray) -> None:
    for name, image in (("image1", image1), ("image2", image2)):
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"{name} must be a uint8 [H, W, 3] RGB numpy array, got "
                             f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}")
    if image1.shape != image2.shape:
        raise ValueError(f"image1 and image2 must have the same size, got {image1.shape} and {image2.shape}")


def _grey(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def _dis_backend() -> FlowFn:
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)

    def flow_fn(image1: np.ndarray, image2: np.ndarray) -> np.ndarray:
        return dis.calc(_grey(image1), _grey(image2), None)

    return flow_fn


def _farneback_backend() -> FlowFn:
    def flow_fn(image1: np.ndarray, image2: np.ndarray) -> np.ndarray:
        return cv2.calcOpticalFlowFarneback(_grey(image1), _grey(image2), None, **FARNEBACK_PARAMS)

    return flow_fn


def _protoformer_backend(ckpt: str | Path | None, config: str | Path | None, device: str | None) -> FlowFn:
    from core.inference import DEFAULT_CHECKPOINT_PATH, FlowEstimator

    checkpoint = Path(ckpt) if ckpt is not None else DEFAULT_CHECKPOINT_PATH
    estimator = FlowEstimator.from_checkpoint(checkpoint, config=config, device=device)
    return estimator.predict


def _limit_side(flow_fn: FlowFn, max_side: int) -> FlowFn:
    """Run ``flow_fn`` on frames whose longer side is at most ``max_side`` px; resize and rescale the flow back."""

    def limited(image1: np.ndarray, image2: np.ndarray) -> np.ndarray:
        height, width = image1.shape[:2]
        scale = max_side / max(height, width)
        if scale >= 1.0:
            return flow_fn(image1, image2)
        small = (max(1, round(width * scale)), max(1, round(height * scale)))
        flow = flow_fn(*(cv2.resize(image, small, interpolation=cv2.INTER_AREA) for image in (image1, image2)))
        flow = cv2.resize(flow, (width, height), interpolation=cv2.INTER_LINEAR)
        return flow * np.array([width / small[0], height / small[1]], np.float32)

    return limited


def make_flow_backend(name: str = "protoformer", ckpt: str | Path | None = None, config: str | Path | None = None,
                      device: str | None = None, max_side: int | None = None) -> FlowFn:
    """A function ``(frame1, frame2) -> flow`` computing dense optical flow.

    Args:
        name: one of :data:`BACKENDS`.
        ckpt, config, device: for ``protoformer`` only: the checkpoint (default: the repository's
            ``checkpoints/protoformer-s-synthetic.pth``), its config (default: the one stored with it) and the
            device (default: CUDA if available).
        max_side: if given, the flow is computed on frames downscaled to at most this many pixels on the longer
            side, then resized to the input size with the vectors scaled accordingly.

    Returns:
        ``flow_fn(image1, image2)``: ``uint8 [H, W, 3]`` RGB frames -> ``float32 [H, W, 2]`` flow in pixels
        (channel 0 = x to the right, 1 = y down) from ``image1`` to ``image2``.

    Raises:
        ValueError: an unknown backend name, or options that only ``protoformer`` takes given to another backend.
        core.inference.MissingCheckpointError: (a FileNotFoundError) the ``protoformer`` checkpoint does not exist;
            the message says how to train one.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown flow backend '{name}'; choose one of: {', '.join(BACKENDS)}")
    if max_side is not None and max_side < 8:
        raise ValueError(f"max_side must be at least 8 pixels, got {max_side}")
    if name != "protoformer" and (ckpt is not None or config is not None):
        raise ValueError(f"--ckpt / --config are options of the 'protoformer' backend, not of '{name}'")
    if name == "dis":
        flow_fn = _dis_backend()
    elif name == "farneback":
        flow_fn = _farneback_backend()
    else:
        flow_fn = _protoformer_backend(ckpt, config, device)
    if max_side is not None:
        flow_fn = _limit_side(flow_fn, max_side)

    def checked(image1: np.ndarray, image2: np.ndarray) -> np.ndarray:
        _check_pair(image1, image2)
        return np.ascontiguousarray(flow_fn(image1, image2), dtype=np.float32)

    return checked
