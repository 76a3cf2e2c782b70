"""Real-image benchmark: ProtoFormer against OpenCV DIS (medium preset) and Farneback on real photographs.

    python scripts/benchmark_real.py                                    # default checkpoint, $PROTOFORMER_SHARED/realdata
    python scripts/benchmark_real.py --ckpt /tmp/pf.pth --scales 1 1,2 1,2+flip --previews docs/real
    python scripts/benchmark_real.py --data DIR --iters 12 --out runs/benchmark_real/results.json

Accuracy is measured on the Middlebury 2014 "Motorcycle" stereo pair (``DIR/motorcycle``: ``im0.png`` left,
``im1.png`` right, ``flow_gt.flo`` = the left-to-right flow ``(-disparity, 0)``, ``valid.png`` with 255 = valid).
Every method computes the flow from ``im0`` to ``im1``; the metrics of :func:`core.metrics.flow_metrics` are taken
over the valid pixels: EPE (mean end-point error, px), 1px / 3px (share of pixels with EPE < 1 / 3 px) and Fl-all
(percent of pixels with EPE > 3 px and > 5 % of the true motion). The runtime is the wall time of that one call
(``im0`` and ``im1`` as uint8 RGB in, flow out; model loading excluded, no warm-up) on this machine.

The network can also be run at scaled resolutions (``--scales 1 0.5``: one row per item): the frames are resized
by the factor, and the flow is resized back and its vectors divided by the factor; ``1,2`` is a cascade (a pass at
full size, then one at twice the size started from its flow, with ``eval.refine_iters`` iterations or
``--refine-iters``: ``FlowEstimator``'s ``scales``), and ``+flip`` (``1,2+flip``) also runs every pass on the
left-right mirrored frames and averages the two estimates (for every row: ``--flip-average``, else
``eval.flip_average``). Without ``--scales`` the row uses ``eval.scales`` of the config. DIS and Farneback always
run at full resolution. Stereo pairs have purely horizontal motion, which none of the methods is told. A last
row, zero flow, shows where chance lies (its EPE is the mean true motion).

Outputs: a Markdown table on stdout (ready for the README), ``--out`` (JSON with every number and the settings),
and with ``--previews DIR`` small PNGs for visual checks: ``motorcycle.png`` (image | GT | ours | DIS, one colour
scale: the largest valid GT motion), ``rubberwhale.png``, ``basketball.png`` and, from the clips in ``DIR/videos``,
``video_vtest.png``, ``video_megamind.png``, ``video_tree.png`` (image | ours | DIS, one colour scale per pair: the
99th percentile of the DIS motion; the frames used are in :data:`VIDEO_PAIRS`), where ours is the first
``--scales`` item.
A missing folder or clip only skips its preview, with a warning.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from loguru import logger

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from core.config import add_refinement_options, scale_factor  # noqa: E402
from core.data.formats import read_flo, read_image, read_mask, write_image  # noqa: E402
from core.flow_backends import FlowFn, make_flow_backend  # noqa: E402
from core.inference import (  # noqa: E402
    DEFAULT_CHECKPOINT, DEFAULT_CHECKPOINT_PATH, FlowEstimator, MissingCheckpointError,
)
from core.metrics import flow_metrics  # noqa: E402
from core.model.checkpoint import CheckpointError  # noqa: E402
from core.utils.atomic import atomic_write_text  # noqa: E402
from core.utils.flow_viz import flow_to_color  # noqa: E402
from core.utils.shared import shared_dir  # noqa: E402
from core.video import MIN_FRAMES, VideoError, open_frames  # noqa: E402

DEFAULT_DATA = shared_dir() / "realdata"
DEFAULT_OUT = REPO / "runs" / "benchmark_real" / "results.json"
STEREO_PAIR = "motorcycle"
STEREO_FILES = ("im0.png", "im1.png", "flow_gt.flo", "valid.png")
VISUAL_PAIRS = ("rubberwhale", "basketball")  # folders with frame1.png, frame2.png and no ground truth
# preview name -> (clip under DATA/videos, first frame, second frame), 0-based; pairs chosen for visible motion:
# walkers in a still scene, an animated character, a hand passing fast in front of a tree
VIDEO_PAIRS = {"vtest": ("vtest.avi", 200, 202), "megamind": ("megamind.avi", 30, 31), "tree": ("tree.avi", 60, 61)}
REPORTED_METRICS = ("epe", "1px", "3px", "fl_all")
PREVIEW_TILE_WIDTH = 200  # px, width of each panel of a preview image
DIS_MEDIUM = "DIS (OpenCV, medium)"
VISUAL_RADIUS_PERCENTILE = 99.0  # colour scale of the pairs without ground truth
ZERO_FLOW = "zero flow (reference)"
MOTION_BINS = (0.0, 10.0, 20.0, 30.0, 40.0, 50.0, math.inf)  # px, ranges of the true motion length for the EPE split


@dataclass
class StereoPair:
    """The motorcycle pair: frames uint8 [H, W, 3] RGB, ground-truth flow float32 [H, W, 2] (px), valid bool [H, W]."""

    image1: np.ndarray
    image2: np.ndarray
    flow: np.ndarray
    valid: np.ndarray


@dataclass
class Method:
    """One row of the table: a name, the flow function and how it was set up."""

    name: str
    flow_fn: FlowFn
    settings: dict[str, Any]


# ----------------------------------------------------------------------------------------------- data


def load_stereo_pair(data: Path) -> StereoPair:
    """Read ``data/motorcycle`` (see the module docstring).

    Raises:
        FileNotFoundError: the data folder, the pair's folder or one of its files is missing.
        ValueError: the files disagree in size or no pixel is valid.
    """
    if not data.is_dir():
        raise FileNotFoundError(f"--data: real-image folder not found: {data} (expected {STEREO_PAIR}/ with "
                                f"{', '.join(STEREO_FILES)}; see the README.md of the shared realdata folder)")
    folder = data / STEREO_PAIR
    missing = [name for name in STEREO_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"--data: {folder} lacks {', '.join(missing)} (expected {', '.join(STEREO_FILES)})")
    image1, image2 = read_image(folder / "im0.png"), read_image(folder / "im1.png")
    flow, valid = read_flo(folder / "flow_gt.flo"), read_mask(folder / "valid.png")
    size = image1.shape[:2]
    for name, array in (("im1.png", image2), ("flow_gt.flo", flow), ("valid.png", valid)):
        if array.shape[:2] != size:
            raise ValueError(f"{folder / name} is {array.shape[1]}x{array.shape[0]}, im0.png is {size[1]}x{size[0]}")
    valid &= np.isfinite(flow).all(axis=2)
    if not valid.any():
        raise ValueError(f"{folder / 'valid.png'}: no valid pixel")
    return StereoPair(image1, image2, flow, valid)


def load_visual_pair(data: Path, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``data/name/frame1.png`` and ``frame2.png`` as uint8 RGB, or None (with a warning) if the folder is absent."""
    folder = data / name
    frames = [folder / "frame1.png", folder / "frame2.png"]
    if not all(path.is_file() for path in frames):
        logger.warning(f"no preview of {name}: {frames[0]} or {frames[1]} is missing")
        return None
    image1, image2 = (read_image(path) for path in frames)
    if image1.shape != image2.shape:
        raise ValueError(f"{folder}: frame1.png is {image1.shape[:2]}, frame2.png is {image2.shape[:2]}")
    return image1, image2


def load_video_pair(data: Path, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The two frames of :data:`VIDEO_PAIRS` ``[name]`` as uint8 RGB, or None (with a warning) if the clip is absent.

    Raises:
        VideoError: the clip does not decode or ends before the second frame.
    """
    clip, first, second = VIDEO_PAIRS[name]
    path = data / "videos" / clip
    if not path.is_file():
        logger.warning(f"no preview of {name}: {path} is missing")
        return None
    frames = {}
    for index, frame in enumerate(open_frames(path, max_frames=max(second + 1, MIN_FRAMES))):
        if index in (first, second):
            frames[index] = frame
    if second not in frames:
        raise VideoError(f"{path}: ends before frame {second}, which the {name} preview needs")
    return frames[first], frames[second]


# ----------------------------------------------------------------------------------------------- methods


def zero_flow(image1: np.ndarray, image2: np.ndarray) -> np.ndarray:
    """The reference a method must beat: no motion anywhere (its EPE is the mean true motion)."""
    return np.zeros((*image1.shape[:2], 2), np.float32)


@dataclass
class Passes:
    """One ``--scales`` item: the network's passes (``scales``), mirrored and averaged if ``flip`` (None: as
    ``--flip-average`` or the config's ``eval.flip_average`` say)."""

    scales: list[float]
    flip: bool | None = None


FLIP_SUFFIX = "+flip"


def parse_passes(text: str) -> Passes:
    """``--scales`` item: ``"1"`` (one pass), ``"1,2"`` (a pass at full size, then one at twice the size), either
    with ``+flip`` (``"1,2+flip"``: every pass also on the mirrored frames, the two averaged)."""
    flip = text.endswith(FLIP_SUFFIX)
    scales = text[:-len(FLIP_SUFFIX)] if flip else text
    return Passes([scale_factor(part) for part in scales.split(",")], True if flip else None)


def build_methods(ckpt: Path, config: Path | None, iters: int | None, refine_iters: int | None,
                  flip_average: bool | None, items: list[Passes] | None) -> list[Method]:
    """ProtoFormer with the passes of every ``--scales`` item (``None``: the config's ``eval.scales``), mirrored
    where the item says ``+flip``, else as ``flip_average`` says (``None``: the config's ``eval.flip_average``),
    then DIS (medium) and Farneback (the settings of :mod:`core.flow_backends`), then the zero-flow reference."""
    loaded = FlowEstimator.from_checkpoint(ckpt, config=config, iters=iters, refine_iters=refine_iters,
                                           flip_average=flip_average)
    estimators = [loaded] if items is None else [
        FlowEstimator(loaded.model, loaded.cfg, device=loaded.device, precision=loaded.precision, iters=loaded.iters,
                      tile=loaded.tile, pad_mode=loaded.pad_mode, scales=item.scales,
                      refine_iters=loaded.refine_iters,
                      flip_average=loaded.flip_average if item.flip is None else item.flip)
        for item in items]
    methods = [Method(f"ProtoFormer ({e.cfg.model.variant}, {e.passes_description()})", e.predict,
                      {"checkpoint": str(ckpt), **e.describe()}) for e in estimators]
    methods.append(Method(DIS_MEDIUM, make_flow_backend("dis"), {"preset": "medium", "scales": [1.0]}))
    methods.append(Method("Farneback (OpenCV)", make_flow_backend("farneback"), {"scales": [1.0]}))
    methods.append(Method(ZERO_FLOW, zero_flow, {"scales": [1.0]}))
    return methods


def timed_flow(flow_fn: FlowFn, image1: np.ndarray, image2: np.ndarray) -> tuple[np.ndarray, float]:
    """(flow float32 [H, W, 2], wall seconds) of one call."""
    start = time.perf_counter()
    flow = flow_fn(image1, image2)
    return np.asarray(flow, np.float32), time.perf_counter() - start


def epe_by_motion(flow: np.ndarray, truth: np.ndarray, valid: np.ndarray,
                  edges: tuple[float, ...] = MOTION_BINS) -> list[dict[str, Any]]:
    """EPE over the valid pixels whose true motion length (px) lies in each ``[low, high)`` range of ``edges``.

    Shows where an error comes from (e.g. large motions underestimated). Ranges without a valid pixel are left out.
    Returns ``[{"range": "10-20", "pixels": n, "epe": px}, ...]``.
    """
    length = np.linalg.norm(truth, axis=-1)
    error = np.linalg.norm(flow - truth, axis=-1)
    rows = []
    for low, high in zip(edges[:-1], edges[1:]):
        inside = valid & (length >= low) & (length < high)
        if inside.any():
            name = f"{low:g}-{high:g}" if math.isfinite(high) else f">={low:g}"
            rows.append({"range": name, "pixels": int(inside.sum()), "epe": float(error[inside].mean())})
    return rows


def evaluate(method: Method, pair: StereoPair) -> tuple[dict[str, float], np.ndarray]:
    """Metrics and runtime of one method on the stereo pair, and its flow [H, W, 2]."""
    flow, seconds = timed_flow(method.flow_fn, pair.image1, pair.image2)
    metrics = flow_metrics(torch.from_numpy(flow).permute(2, 0, 1), torch.from_numpy(pair.flow).permute(2, 0, 1),
                           torch.from_numpy(pair.valid)[None])
    logger.info(f"{method.name}: EPE {metrics['epe']:.3f} px, Fl-all {metrics['fl_all']:.2f} %, {seconds:.3f} s")
    return {**metrics, "seconds": seconds}, flow


# ----------------------------------------------------------------------------------------------- output


def markdown_table(rows: list[dict[str, Any]], size: tuple[int, int]) -> str:
    """The README table: one line per method."""
    lines = [
        f"Motorcycle stereo pair (Middlebury 2014, {size[1]}x{size[0]}), flow im0 -> im1 over valid pixels:",
        "",
        "| method | EPE (px) | 1px (%) | 3px (%) | Fl-all (%) | runtime (s/pair) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        metrics = row["metrics"]
        lines.append(f"| {row['method']} | {metrics['epe']:.2f} | {100 * metrics['1px']:.1f} | "
                     f"{100 * metrics['3px']:.1f} | {metrics['fl_all']:.1f} | {metrics['seconds']:.2f} |")
    if rows and rows[0].get("epe_by_motion"):
        bins = rows[0]["epe_by_motion"]
        total = sum(b["pixels"] for b in bins)
        lines += ["", "EPE (px) by the length of the true motion (px; share of the valid pixels):", "",
                  "| method | " + " | ".join(f"{b['range']} ({100 * b['pixels'] / total:.0f} %)" for b in bins) + " |",
                  "|---|" + "---:|" * len(bins)]
        lines += [f"| {row['method']} | " + " | ".join(f"{b['epe']:.2f}" for b in row["epe_by_motion"]) + " |"
                  for row in rows]
    return "\n".join(lines) + "\n"


def _panel(image: np.ndarray, label: str) -> np.ndarray:
    """``image`` resized to :data:`PREVIEW_TILE_WIDTH` px wide with ``label`` in its top-left corner."""
    height, width = image.shape[:2]
    size = (PREVIEW_TILE_WIDTH, max(1, round(height * PREVIEW_TILE_WIDTH / width)))
    panel = np.ascontiguousarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA))
    for colour, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):
        cv2.putText(panel, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, thickness, cv2.LINE_AA)
    return panel


def write_preview(path: Path, image: np.ndarray, flows: dict[str, np.ndarray], max_radius: float,
                  valid: np.ndarray | None = None) -> None:
    """Side-by-side PNG: the first frame, then every flow coloured with the same ``max_radius`` (px)."""
    panels = [_panel(image, "image")]
    panels += [_panel(flow_to_color(flow, max_radius=max_radius, valid=valid if label == "GT" else None), label)
               for label, flow in flows.items()]
    write_image(path, np.concatenate(panels, axis=1))
    logger.info(f"wrote {path}")


def visual_previews(data: Path, folder: Path, ours: Method, dis: Method) -> dict[str, dict[str, float]]:
    """Previews of the pairs without ground truth; returns the runtimes (s) of ours and DIS on them."""
    runtimes = {}
    sources = [(name, name, load_visual_pair) for name in VISUAL_PAIRS]
    sources += [(f"video_{name}", name, load_video_pair) for name in VIDEO_PAIRS]
    for preview, name, load in sources:
        frames = load(data, name)
        if frames is None:
            continue
        flow_ours, seconds_ours = timed_flow(ours.flow_fn, *frames)
        flow_dis, seconds_dis = timed_flow(dis.flow_fn, *frames)
        radius = float(np.percentile(np.linalg.norm(flow_dis, axis=2), VISUAL_RADIUS_PERCENTILE))
        write_preview(folder / f"{preview}.png", frames[0], {"ours": flow_ours, "DIS": flow_dis}, max(radius, 1.0))
        runtimes[preview] = {"ours_seconds": seconds_ours, "dis_seconds": seconds_dis, "max_radius": radius}
    return runtimes


# ----------------------------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, default=DEFAULT_CHECKPOINT_PATH,
                        help=f"ProtoFormer checkpoint (default: {DEFAULT_CHECKPOINT} in the repository)")
    parser.add_argument("--config", type=Path, help="its config (default: the one stored with the checkpoint)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="real-image folder with motorcycle/ (default: $PROTOFORMER_SHARED/realdata, else "
                             "../shared/realdata beside the repository)")
    parser.add_argument("--iters", type=int, help="refinement iterations (default: model.iters of the config)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="JSON result file (default: runs/benchmark_real/results.json)")
    parser.add_argument("--previews", type=Path, metavar="DIR", help="also write preview PNGs into DIR")
    parser.add_argument("--scales", type=parse_passes, nargs="+", metavar="S[,S...][+flip]",
                        help="one row per item: the network on frames resized by S, or a cascade of passes (1,2: "
                             "full size, then refined at twice the size); +flip also runs every pass on the "
                             "mirrored frames and averages the two (without it: --flip-average) (default: eval.scales "
                             "of the config)")
    add_refinement_options(parser)
    args = parser.parse_args(argv)
    if args.iters is not None and args.iters < 1:
        parser.error(f"--iters must be >= 1, got {args.iters}")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark; returns what is written to ``--out``."""
    pair = load_stereo_pair(args.data)
    methods = build_methods(args.ckpt, args.config, args.iters, args.refine_iters, args.flip_average,
                            args.scales)
    rows, flows = [], []
    for method in methods:
        metrics, flow = evaluate(method, pair)
        rows.append({"method": method.name, "settings": method.settings, "metrics": metrics,
                     "epe_by_motion": epe_by_motion(flow, pair.flow, pair.valid)})
        flows.append(flow)
    ours, dis = methods[0], next(method for method in methods if method.name == DIS_MEDIUM)  # ours: the first scale
    result: dict[str, Any] = {
        "pair": STEREO_PAIR, "data": str(args.data), "size": list(pair.flow.shape[:2]),
        "valid_pixels": int(pair.valid.sum()), "direction": "im0 -> im1 (left to right), gt = (-disparity, 0)",
        "metrics_note": "epe in px; 1px, 3px in [0, 1]; fl_all in percent; seconds = wall time of one call",
        "torch_threads": torch.get_num_threads(), "cv2_threads": cv2.getNumThreads(), "machine": platform.machine(),
        "rows": rows, "markdown": markdown_table(rows, pair.flow.shape[:2]),
    }
    if args.previews is not None:
        args.previews.mkdir(parents=True, exist_ok=True)
        radius = float(np.linalg.norm(pair.flow[pair.valid], axis=1).max())
        write_preview(args.previews / f"{STEREO_PAIR}.png", pair.image1,
                      {"GT": pair.flow, "ours": flows[0], "DIS": flows[methods.index(dis)]}, radius, pair.valid)
        result["previews"] = {"folder": str(args.previews), "ours": ours.name, "motorcycle_max_radius": radius,
                              **visual_previews(args.data, args.previews, ours, dis)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    logger.info(f"wrote {args.out}")
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except (MissingCheckpointError, CheckpointError, FileNotFoundError, ValueError) as err:  # VideoError is one
        logger.error(str(err))
        return 2
    sys.stdout.write(result["markdown"])  # the product of the script, for pasting into the README
    return 0


if __name__ == "__main__":
    sys.exit(main())
