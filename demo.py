"""Run ProtoFormer on your own frames: colour-coded flow (and depth) images, .flo files, a video of the result.

    python demo.py                                          # bundled sample frames, default checkpoint
    python demo.py --input a.png b.png --output out --save-flo          # out/a_flow.png, out/a_pair.png, out/a.flo
    python demo.py --input frames/ --output out             # every consecutive pair of a folder + out/frames_flow.mp4
    python demo.py --input clip.mp4 --output out            # a video, read frame by frame (large frames tiled)
    python demo.py --input a.png b.png --depth --ckpt runs/joint/checkpoints/best.pth   # + depth PNG / .npy

For every consecutive pair (frame1, frame2) it writes ``<stem>_flow.png`` (Middlebury colour wheel: hue =
direction, saturation = length) and ``<stem>_pair.png`` (frame1 | flow side by side), where ``<stem>`` is frame1's
file name without extension (``<video>_<index>`` for a video). For a folder or a video the colour scale (the flow
length shown at full saturation) is a running maximum of the per-pair 99th percentile of the flow length, so colours
are comparable from frame to frame (``--max-flow`` fixes it), and the side-by-side images are also written to
``<name>_flow.mp4``. Unreadable frames and pairs of different sizes in a folder are reported and skipped (no pair
spans a skipped frame); for two explicit images they are errors. Without a trained checkpoint the demo stops and
says how to train one, unless ``--random-init`` asks for untrained weights on purpose.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
from loguru import logger
from tqdm import tqdm

from core.config import add_refinement_options, scale_factor
from core.data.formats import read_image, write_flo, write_image
from core.inference import (
    DEFAULT_CHECKPOINT, DEFAULT_CHECKPOINT_PATH, FlowEstimator, MissingCheckpointError,
    forward_interpolate, to_image_tensor, with_random_init_hint,
)
from core.model.checkpoint import CheckpointError
from core.utils.flow_viz import depth_to_color, flow_to_color

REPO = Path(__file__).resolve().parent
SAMPLE_FRAMES = REPO / "assets" / "demo"
DEFAULT_OUTPUT = Path("demo_output")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
RADIUS_PERCENTILE = 99.0
MIN_RADIUS = 1.0  # pixels: a still scene is drawn nearly white instead of amplifying noise to full colour


class DemoError(Exception):
    """A problem with the demo's inputs or options; the message says what to do."""


@dataclass
class Frame:
    """One input frame: its name (output stem), the image (uint8 [H, W, 3] RGB) or why it could not be read."""

    name: str
    image: np.ndarray | None = None
    error: str | None = None


@dataclass
class Source:
    """Where frames come from: ``kind`` is ``"pair"`` (explicit files), ``"folder"`` or ``"video"``."""

    kind: str
    name: str
    frames: Iterator[Frame]
    fps: float = 10.0
    length: int | None = None  # number of frames, if known (progress bar)


@dataclass
class Summary:
    pairs: int = 0
    depth_maps: int = 0
    skipped: list[str] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- inputs


def _read_frame(path: Path) -> Frame:
    try:
        return Frame(path.stem, image=read_image(path))
    except (OSError, ValueError) as err:
        return Frame(path.stem, error=str(err))


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _video_frames(path: Path, capture: cv2.VideoCapture) -> Iterator[Frame]:
    """Frames of a video decoded one at a time (the video is never held in memory)."""
    try:
        index = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            yield Frame(f"{path.stem}_{index:06d}", image=cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            index += 1
    finally:
        capture.release()


def open_source(inputs: list[Path], depth: bool = False) -> Source:
    """Interpret ``--input``: image files (a sequence, usually two), one folder of frames, or one video file. One
    image alone is an error unless ``depth`` (depth needs one image, flow two)."""
    missing = [str(p) for p in inputs if not p.exists()]
    if missing:
        raise DemoError(f"--input not found: {', '.join(missing)}")
    if len(inputs) == 1 and inputs[0].is_dir():
        files = _image_files(inputs[0])
        if len(files) < 2:
            raise DemoError(f"{inputs[0]}: a folder needs at least two frames ({', '.join(IMAGE_SUFFIXES)}), "
                            f"found {len(files)}")
        logger.info(f"input: folder {inputs[0]} with {len(files)} frames")
        return Source("folder", inputs[0].name or "frames", (_read_frame(p) for p in files), length=len(files))
    if len(inputs) == 1 and inputs[0].suffix.lower() in VIDEO_SUFFIXES:
        capture = cv2.VideoCapture(str(inputs[0]))
        if not capture.isOpened():
            raise DemoError(f"{inputs[0]}: cannot open the video (unsupported codec or not a video file)")
        fps = capture.get(cv2.CAP_PROP_FPS) or 10.0
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        logger.info(f"input: video {inputs[0]} ({count} frames at {fps:.3g} fps)")
        return Source("video", inputs[0].stem, _video_frames(inputs[0], capture), fps=fps, length=count or None)
    if any(p.is_dir() for p in inputs):
        raise DemoError("--input takes image files, one folder or one video, not a mix")
    if len(inputs) == 1 and not depth:
        raise DemoError(f"--input {inputs[0]}: one image; optical flow needs two (--input FIRST SECOND), a folder of "
                        "frames or a video (one image is enough with --depth)")
    frames = []
    for path in inputs:
        frame = _read_frame(path)
        if frame.error is not None:
            raise DemoError(f"cannot read frame {path}: {frame.error}")
        frames.append(frame)
    return Source("pair", inputs[0].stem, iter(frames))


# ----------------------------------------------------------------------------------------------- outputs


class FlowVideo:
    """An .mp4 (``mp4v``) of the side-by-side images, opened at the first frame; frames of another size are left out."""

    def __init__(self, path: Path, fps: float):
        self.path, self.fps = path, fps
        self.writer: cv2.VideoWriter | None = None
        self.size: tuple[int, int] | None = None
        self.frames = 0

    def add(self, image: np.ndarray) -> None:
        size = (image.shape[1], image.shape[0])
        if self.writer is None:
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, size)
            if not self.writer.isOpened():
                raise DemoError(f"cannot write the video {self.path} (OpenCV has no mp4v encoder here?)")
            self.size = size
        if size != self.size:
            logger.warning(f"{self.path.name}: a frame of {size[0]}x{size[1]} does not fit the video "
                           f"({self.size[0]}x{self.size[1]}); left out of the video")
            return
        self.writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


class ColourScale:
    """The flow length drawn at full saturation: fixed, per pair, or a running maximum over a sequence."""

    def __init__(self, fixed: float | None, running: bool):
        self.fixed, self.running = fixed, running
        self.radius = 0.0

    def __call__(self, flow: np.ndarray) -> float | None:
        if self.fixed is not None:
            return self.fixed
        if not self.running:
            return None
        length = np.linalg.norm(flow, axis=2)
        self.radius = max(self.radius, float(np.percentile(length, RADIUS_PERCENTILE)), MIN_RADIUS)
        return self.radius


class ResultWriter:
    """Writes everything the demo produces for one source into ``output`` and keeps the tally."""

    def __init__(self, estimator: FlowEstimator, source: Source, output: Path, save_flo: bool, max_flow: float | None):
        self.estimator, self.output, self.save_flo = estimator, output, save_flo
        sequence = source.kind != "pair"
        self.scale = ColourScale(max_flow, running=sequence)
        flow_video = sequence and estimator.predicts_flow
        self.video = FlowVideo(output / f"{source.name}_flow.mp4", source.fps) if flow_video else None
        self.summary = Summary()
        output.mkdir(parents=True, exist_ok=True)

    def flow(self, frame: Frame, flow: np.ndarray) -> None:
        """``<stem>_flow.png``, ``<stem>_pair.png`` (frame | flow), optionally ``<stem>.flo``, and a video frame."""
        colour = flow_to_color(flow, max_radius=self.scale(flow))
        side_by_side = np.concatenate([frame.image, colour], axis=1)
        paths = [self.output / f"{frame.name}_flow.png", self.output / f"{frame.name}_pair.png"]
        write_image(paths[0], colour)
        write_image(paths[1], side_by_side)
        if self.save_flo:
            paths.append(self.output / f"{frame.name}.flo")
            write_flo(paths[-1], flow)
        if self.video is not None:
            self.video.add(side_by_side)
        self.summary.pairs += 1
        self.summary.written += paths

    def depth(self, frame: Frame, disparity: np.ndarray) -> None:
        """``<stem>_depth.png`` (inverse depth, colour-mapped) and ``<stem>_depth.npy`` (metres, float32)."""
        depth = self.estimator.depth_from_disparity(disparity)
        paths = [self.output / f"{frame.name}_depth.png", self.output / f"{frame.name}_depth.npy"]
        write_image(paths[0], depth_to_color(1.0 / depth, vmin=1.0 / self.estimator.cfg.depth.max_depth, vmax=1.0))
        np.save(paths[1], depth)
        self.summary.depth_maps += 1
        self.summary.written += paths

    def close(self) -> Summary:
        if self.video is not None:
            self.video.close()
            if self.video.frames:
                self.summary.written.append(self.video.path)
            if self.scale.running and self.scale.fixed is None:
                logger.info(f"colour scale: full saturation at {self.scale.radius:.2f} px "
                            f"(running maximum of the per-pair {RADIUS_PERCENTILE:g}th percentile)")
        return self.summary


# ----------------------------------------------------------------------------------------------- the loop


def run_demo(estimator: FlowEstimator, source: Source, output: Path, save_flo: bool = False, depth: bool = False,
             max_flow: float | None = None, warm_start: bool = False) -> Summary:
    """Process every consecutive pair of ``source`` (every frame, for a depth-only model) and write the results.

    An unreadable frame is skipped and ends the chain (the next pair starts after it); so does a change of size.
    """
    sequence = source.kind != "pair"
    writer = ResultWriter(estimator, source, output, save_flo, max_flow)
    previous: Frame | None = None
    flow_low = None
    try:
        frames = tqdm(source.frames, desc="frames", unit="frame", total=source.length, disable=not sequence,
                      dynamic_ncols=True)
        for frame in frames:
            if frame.error is not None:
                logger.warning(f"skipping frame {frame.name}: {frame.error}")
                writer.summary.skipped.append(frame.name)
                previous, flow_low = None, None
                continue
            if not estimator.predicts_flow:
                writer.depth(frame, estimator.run(to_image_tensor(frame.image)[None]).disparity[0, 0].numpy())
                continue
            if previous is not None and previous.image.shape != frame.image.shape:
                message = (f"frames {previous.name} ({previous.image.shape[1]}x{previous.image.shape[0]}) and "
                           f"{frame.name} ({frame.image.shape[1]}x{frame.image.shape[0]}) have different sizes")
                if not sequence:
                    raise DemoError(message + ": both frames of a pair must have the same size")
                logger.warning(f"skipping the pair {previous.name} -> {frame.name}: {message}")
                writer.summary.skipped.append(f"{previous.name}->{frame.name}")
                previous, flow_low = frame, None
                continue
            if previous is not None:
                init = forward_interpolate(flow_low) if warm_start and flow_low is not None else None
                prediction = estimator.run(to_image_tensor(previous.image)[None], to_image_tensor(frame.image)[None],
                                           init)
                flow_low = prediction.flow_low
                writer.flow(previous, prediction.flow[0].permute(1, 2, 0).numpy())
                if depth and prediction.disparity is not None:
                    writer.depth(previous, prediction.disparity[0, 0].numpy())
            previous = frame
    finally:
        summary = writer.close()
    return summary


# ----------------------------------------------------------------------------------------------- command line


def build_estimator(args: argparse.Namespace) -> tuple[FlowEstimator, str]:
    """The estimator the options ask for, and a sentence saying which weights it uses."""
    options = dict(device=args.device, iters=args.iters, tile=True if args.tile else "auto", scales=args.scales,
                   refine_iters=args.refine_iters, flip_average=args.flip_average)
    if args.random_init:
        if args.ckpt is not None:
            raise DemoError("--random-init and --ckpt exclude each other")
        config = args.config or REPO / "configs" / "synthetic.yaml"
        return FlowEstimator.from_random_init(config, **options), f"random weights ({config})"
    checkpoint = Path(args.ckpt) if args.ckpt else DEFAULT_CHECKPOINT_PATH
    estimator = FlowEstimator.from_checkpoint(checkpoint, config=args.config, **options)
    return estimator, str(checkpoint)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", type=Path,
                        help=f"IMG1 IMG2 [IMG3 ...] | FOLDER | VIDEO (default: the sample frames in {SAMPLE_FRAMES})")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="output folder (default: %(default)s)")
    parser.add_argument("--ckpt", help=f"checkpoint (default: {DEFAULT_CHECKPOINT})")
    parser.add_argument("--config", help="config file (default: the one stored with the checkpoint)")
    parser.add_argument("--random-init", action="store_true", help="untrained weights, on purpose (no checkpoint)")
    parser.add_argument("--iters", type=int, help="flow refinement iterations (default: model.iters)")
    parser.add_argument("--scales", type=scale_factor, nargs="+", metavar="S",
                        help="one network pass per factor on the resized frames, each from the previous pass's flow; "
                             "e.g. 1 2: full size, then refined at twice the size (more precise, ~12x the runtime) "
                             "(default: eval.scales of the config, 1)")
    add_refinement_options(parser)
    parser.add_argument("--tile", action="store_true",
                        help="always use tiled inference (default: only for frames too large for one pass)")
    parser.add_argument("--save-flo", action="store_true", help="also write <stem>.flo (Middlebury format)")
    parser.add_argument("--depth", action="store_true", help="depth/joint models: write <stem>_depth.png and .npy")
    parser.add_argument("--max-flow", type=float, help="flow length (px) at full colour saturation, for all frames")
    parser.add_argument("--warm-start", action="store_true", help="sequences: start each pair from the previous flow")
    parser.add_argument("--max-frames", type=int, help="read at most this many frames of a folder or video")
    parser.add_argument("--device", help="cuda, cpu, ... (default: cuda if available)")
    args = parser.parse_args(argv)
    if args.max_frames is not None and args.max_frames < 2:
        parser.error("--max-frames must be at least 2 (one pair)")
    if args.max_flow is not None and args.max_flow <= 0:
        parser.error("--max-flow must be positive")
    if args.iters is not None and args.iters < 1:
        parser.error("--iters must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    inputs = args.input
    if inputs is None:
        inputs = [SAMPLE_FRAMES]
        logger.info(f"no --input given: using the bundled sample frames in {SAMPLE_FRAMES}")
    try:
        estimator, weights = build_estimator(args)
        if args.depth and not estimator.predicts_depth:
            raise DemoError(f"--depth needs a depth or joint model; {weights} is a '{estimator.cfg.model.type}' model")
        source = open_source(inputs, depth=args.depth)
        if args.max_frames is not None:
            source.frames = itertools.islice(source.frames, args.max_frames)
            source.length = min(source.length or args.max_frames, args.max_frames)
        logger.info(f"model: {estimator.cfg.model.variant} ({estimator.cfg.model.type}), weights: {weights}, "
                    f"{estimator.passes_description()}, device {estimator.device}")
        summary = run_demo(estimator, source, args.output, save_flo=args.save_flo, depth=args.depth,
                           max_flow=args.max_flow, warm_start=args.warm_start)
    except (DemoError, MissingCheckpointError, CheckpointError, FileNotFoundError, ValueError, KeyError) as err:
        logger.error(with_random_init_hint(err))
        return 2
    if summary.skipped:
        logger.warning(f"skipped {len(summary.skipped)}: {', '.join(summary.skipped)}")
    if summary.pairs == 0 and summary.depth_maps == 0:
        logger.error("nothing was processed (no readable pair of frames of the same size)")
        return 2
    logger.info(f"wrote {len(summary.written)} files for {summary.pairs} pairs"
                + (f" and {summary.depth_maps} depth maps" if summary.depth_maps else "")
                + f" to {args.output.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
