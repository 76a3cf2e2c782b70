"""Save every N-th frame of videos as PNG images, e.g. as real-photo textures for the synthetic generator.

    python scripts/extract_frames.py clip.mp4 --every 10 --out datasets/textures
    python scripts/extract_frames.py a.avi b.avi --every 9 4 --out runs/textures    # one step per video

The synthetic data (``core/data/synthetic.py``) paints its layers with procedural patterns; with
``synthetic.texture_dir DIR`` a share of the layers (``synthetic.texture_image_prob``) are painted with random crops
of the images in ``DIR`` instead, as FlyingChairs pastes photographs. Frames of your own footage are a source of
such images that needs no download. Frame ``i`` of ``clip.avi`` is written as ``OUT/clip_{i:04d}.png`` (RGB, the
video's size); frames ``0, N, 2N, ...`` are kept. Each file is written atomically, and an existing folder is only
added to.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loguru import logger
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from core.data.formats import write_image  # noqa: E402
from core.video import VideoError, open_frames  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("videos", nargs="+", type=Path, help="video files or frame folders")
    parser.add_argument("--every", type=int, nargs="+", default=[10],
                        help="keep every N-th frame: one N for all videos, or one per video (default 10)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNG frames (created if missing)")
    args = parser.parse_args(argv)
    if len(args.every) not in (1, len(args.videos)):
        parser.error(f"--every takes one step or one per video ({len(args.videos)}), got {len(args.every)}")
    if min(args.every) < 1:
        parser.error(f"--every must be >= 1, got {args.every}")
    return args


def extract_frames(video: Path, every: int, out: Path) -> list[Path]:
    """Write frames ``0, every, 2 * every, ...`` of ``video`` to ``out`` and return their paths.

    Raises:
        FileNotFoundError, VideoError: ``video`` is missing or cannot be decoded (see :func:`core.video.open_frames`).
    """
    source = open_frames(video)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for index, frame in enumerate(tqdm(source, total=source.frame_count, desc=video.name, unit="frame")):
        if index % every == 0:
            path = out / f"{video.stem}_{index:04d}.png"
            write_image(path, frame)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    steps = args.every * len(args.videos) if len(args.every) == 1 else args.every
    total = 0
    for video, every in zip(args.videos, steps):
        try:
            written = extract_frames(video, every, args.out)
        except (FileNotFoundError, VideoError) as err:
            logger.error(str(err))
            return 2
        logger.info(f"{video}: {len(written)} frames (every {every}) -> {args.out}")
        total += len(written)
    logger.info(f"{total} images in {args.out}; use them with synthetic.texture_dir {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
