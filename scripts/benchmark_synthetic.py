"""Throughput of the procedural training data (core.data.synthetic) on this machine.

Renders ``--count`` pairs per size, once through ``render_pair`` and once through ``SyntheticFlowDataset``
(which adds the conversion to the contract's tensors), and logs a table of pairs per second. OpenCV runs with
``--cv2-threads`` threads (default 1, as inside one DataLoader worker); CPU time is reported beside wall time
because wall time also counts other processes on a shared machine.

    python scripts/benchmark_synthetic.py                       # 384x512 and 256x256, 50 pairs each
    python scripts/benchmark_synthetic.py --size 368 496 --count 200 --difficulty 0.5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
from loguru import logger

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from core.config import get_cfg_defaults  # noqa: E402
from core.data.synthetic import SyntheticFlowDataset, render_pair  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, action="append", metavar=("H", "W"),
                        help="image size, repeatable (default: 384 512 and 256 256)")
    parser.add_argument("--count", type=int, default=50, help="pairs rendered per size and path (default 50)")
    parser.add_argument("--difficulty", type=float, default=1.0, help="generator difficulty in [0, 1]")
    parser.add_argument("--photometric", type=float, default=0.0, help="photometric effect strength in [0, 1]")
    parser.add_argument("--max-displacement", type=float, default=64.0, help="largest flow in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cv2-threads", type=int, default=1, help="cv2.setNumThreads (default 1)")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error(f"--count must be >= 1, got {args.count}")
    if any(h < 1 or w < 1 for h, w in args.size or []):
        parser.error(f"--size needs positive H W, got {args.size}")
    return args


def _timed(function, count: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of ``function(i)`` for i in range(count), after one warm-up call."""
    function(count)
    wall, cpu = time.perf_counter(), time.process_time()
    for index in range(count):
        function(index)
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cv2.setNumThreads(args.cv2_threads)
    sizes = [tuple(size) for size in args.size] if args.size else [(384, 512), (256, 256)]
    params = dict(difficulty=args.difficulty, photometric=args.photometric, max_displacement=args.max_displacement)

    logger.info(f"{args.count} pairs per row, difficulty {args.difficulty}, photometric {args.photometric}, "
                f"max displacement {args.max_displacement} px, cv2 threads {args.cv2_threads}")
    logger.info(f"{'size':>10} | {'path':>12} | {'pairs/s':>8} | {'ms/pair':>8} | {'CPU ms/pair':>11}")
    for height, width in sizes:
        cfg = get_cfg_defaults()
        cfg.synthetic.image_size = [height, width]
        cfg.synthetic.train_size = args.count + 1
        cfg.synthetic.max_displacement = args.max_displacement
        cfg.synthetic.seed = args.seed
        dataset = SyntheticFlowDataset(cfg, "train", difficulty=args.difficulty, photometric=args.photometric)
        paths = {
            "render_pair": lambda i: render_pair(args.seed, i, (height, width), **params),
            "dataset": dataset.__getitem__,
        }
        for name, function in paths.items():
            wall, cpu = _timed(function, args.count)
            logger.info(f"{f'{height}x{width}':>10} | {name:>12} | {args.count / wall:8.1f} | "
                        f"{1000 * wall / args.count:8.1f} | {1000 * cpu / args.count:11.1f}")


if __name__ == "__main__":
    main()
