"""Render the bundled demo sample (``assets/demo/``) from the built-in synthetic generator.

    python scripts/make_demo_sample.py                       # the shipped sample: seed 2024, index 2
    python scripts/make_demo_sample.py --index 3 --output /tmp/sample

Writes ``frame_0001.png`` and ``frame_0002.png`` (uint8 RGB), and with ``--with-gt`` also ``flow_gt.flo`` (the exact
flow from frame 1 to frame 2, pixels; not shipped, to keep the repository small), so that the demo's output can be
compared with the truth. The sample is a pure function of the
arguments (:func:`core.data.synthetic.render_pair`): a 288x384 layered scene from the validation stream, motions up
to 40 px, light photometric effects.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from loguru import logger  # noqa: E402

from core.data.formats import write_flo, write_image  # noqa: E402
from core.data.synthetic import STREAMS, render_pair  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--index", type=int, default=2)
    parser.add_argument("--size", type=int, nargs=2, default=[288, 384], metavar=("H", "W"))
    parser.add_argument("--max-displacement", type=float, default=40.0)
    parser.add_argument("--output", type=Path, default=REPO / "assets" / "demo")
    parser.add_argument("--with-gt", action="store_true", help="also write flow_gt.flo")
    args = parser.parse_args(argv)
    sample = render_pair(args.seed, args.index, tuple(args.size), stream=STREAMS["val"],
                         max_displacement=args.max_displacement, photometric=0.2)
    args.output.mkdir(parents=True, exist_ok=True)
    write_image(args.output / "frame_0001.png", sample["image1"])
    write_image(args.output / "frame_0002.png", sample["image2"])
    written = ["frame_0001.png", "frame_0002.png"]
    if args.with_gt:
        write_flo(args.output / "flow_gt.flo", sample["flow"])
        written.append("flow_gt.flo")
    logger.info(f"wrote {', '.join(written)} to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
