"""Validation curve of one training run, or of consecutive stages, from their TensorBoard logs: CSV + PNG.

    python scripts/plot_val_curve.py runs/depth_synth --set synthetic_depth --metrics abs_rel silog a1 \\
        --out docs/depth_synthetic_curve.png
    python scripts/plot_val_curve.py runs/cpu_default/stage2 runs/cpu_default/stage3 --set synthetic \\
        --metrics epe 3px --out docs/default_checkpoint_curve.png

Reads the ``val/<set>/<metric>`` scalars that ``train.py`` writes to ``WORK_DIR/tb`` at every validation. Several
work dirs are taken as consecutive stages: the steps of each stage continue those of the one before (a stage that
starts from the previous stage's weights restarts its own step count at 0; a stage ends at the step of its
``checkpoints/latest.pth``), and a vertical line marks each stage change. Wall-clock minutes are counted from each
stage's first logged event (pauses between resumed runs included). Writes ``--out`` (PNG, one panel per
metric) and the same numbers as CSV beside it (``--csv``, default: ``--out`` with ``.csv``), and prints the CSV.

Stages whose work dirs are gone can be carried over from a CSV this script wrote before (``--prior CSV``): its rows
come first, with their own labels, and the work dirs continue where its last stage's last validation ended.

    python scripts/plot_val_curve.py runs/cpu_default/stage8 runs/cpu_default/stage9 --prior \
        docs/default_checkpoint_curve.csv --metrics epe 3px --labels "stage 8" "stage 9" \
        --out docs/default_checkpoint_curve.png
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.model.checkpoint import read_checkpoint  # noqa: E402
from core.utils.atomic import atomic_write_bytes, atomic_write_text  # noqa: E402


@dataclass
class Point:
    """One validation of one stage."""

    stage: int
    step: int  # within the stage
    total_step: int  # across the stages
    minutes: float  # since the stage's first logged event
    values: dict[str, float]


def read_stage(work_dir: Path, val_set: str, metrics: list[str]) -> tuple[list[tuple[int, float, dict]], int, float]:
    """``([(step, wall_time, {metric: value})], last_step, first_wall_time)`` of one run's TensorBoard folder."""
    tb_dir = work_dir / "tb"
    if not tb_dir.is_dir():
        raise FileNotFoundError(f"{work_dir}: no TensorBoard folder 'tb' (is this a train.py work dir?)")
    events = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    missing = [m for m in metrics if f"val/{val_set}/{m}" not in tags]
    if missing:
        found = sorted({t.split("/")[1] for t in tags if t.startswith("val/")})
        raise ValueError(f"{tb_dir}: no validation scalars val/{val_set}/{{{', '.join(missing)}}}; validation sets "
                         f"logged there: {found or 'none'}")
    series = {m: {e.step: e for e in events.Scalars(f"val/{val_set}/{m}")} for m in metrics}
    steps = sorted(set.intersection(*(set(s) for s in series.values())))
    rows = [(step, series[metrics[0]][step].wall_time, {m: series[m][step].value for m in metrics}) for step in steps]
    logged = [e for tag in tags for e in events.Scalars(tag)]
    last_step = max([e.step for e in logged] + [0])
    latest = work_dir / "checkpoints" / "latest.pth"
    if latest.is_file():  # where the run really ended (events past it are from an attempt that a resume rolled back)
        last_step = int(read_checkpoint(latest)["step"])
        rows = [row for row in rows if row[0] <= last_step]
    return rows, last_step, min(e.wall_time for e in logged)


@dataclass
class Prior:
    """Stages carried over from an earlier CSV: their points, stage starts (after the first) and labels."""

    points: list[Point]
    boundaries: list[int]
    labels: list[str]

    @property
    def end(self) -> int:
        """The total step where the next stage starts: the last validation of the last stage."""
        return self.points[-1].total_step if self.points else 0


def read_prior(path: Path, metrics: list[str]) -> Prior:
    """The stages of a CSV written by this script (``stage,step,total_step,minutes,<metrics>``)."""
    if not path.is_file():
        raise FileNotFoundError(f"--prior {path}: no such file")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [c for c in ("stage", "step", "total_step", "minutes", *metrics) if c not in columns]
        if missing:
            raise ValueError(f"--prior {path}: no column(s) {', '.join(missing)} (columns: {columns})")
        rows = list(reader)
    prior = Prior([], [], [])
    try:
        for row in rows:
            if row["stage"] not in prior.labels:
                prior.labels.append(row["stage"])
                if len(prior.labels) > 1:
                    prior.boundaries.append(int(row["total_step"]) - int(row["step"]))
            prior.points.append(Point(len(prior.labels), int(row["step"]), int(row["total_step"]),
                                      float(row["minutes"]), {m: float(row[m]) for m in metrics}))
    except (TypeError, ValueError) as err:
        raise ValueError(f"--prior {path}: row {len(prior.points) + 2} is not a row of numbers: {err}") from None
    return prior


def collect(work_dirs: list[Path], val_set: str, metrics: list[str],
            prior: Prior | None = None) -> tuple[list[Point], list[int]]:
    """Validation points of consecutive stages (after those of ``prior``) and the total steps at which the stages
    after the first start."""
    prior = prior or Prior([], [], [])
    points, boundaries, offset = list(prior.points), list(prior.boundaries), prior.end
    for stage, work_dir in enumerate(work_dirs, start=len(prior.labels) + 1):
        rows, last_step, start_time = read_stage(work_dir, val_set, metrics)
        if stage > 1:
            boundaries.append(offset)
        points += [Point(stage, step, offset + step, (wall - start_time) / 60.0, values) for step, wall, values in rows]
        offset += last_step
    return points, boundaries


def to_csv(points: list[Point], metrics: list[str], labels: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["stage", "step", "total_step", "minutes", *metrics])
    for p in points:
        writer.writerow([labels[p.stage - 1], p.step, p.total_step, f"{p.minutes:.1f}",
                         *(f"{p.values[m]:.4g}" for m in metrics)])
    return buffer.getvalue()


def plot(points: list[Point], boundaries: list[int], metrics: list[str], val_set: str, title: str,
         labels: list[str]) -> bytes:
    figure, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.4), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        for stage in sorted({p.stage for p in points}):
            own = [p for p in points if p.stage == stage]
            axis.plot([p.total_step for p in own], [p.values[metric] for p in own], "o-", label=labels[stage - 1])
        for boundary in boundaries:
            axis.axvline(boundary, color="grey", linestyle=":", linewidth=1)
        axis.set_xlabel("training step")
        axis.set_title(f"{val_set} val {metric}")
        axis.grid(alpha=0.3)
    if len(boundaries):
        axes[0][0].legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("work_dirs", type=Path, nargs="+", help="train.py work dirs, in stage order")
    parser.add_argument("--set", dest="val_set", default="synthetic", help="validation set name (default synthetic)")
    parser.add_argument("--metrics", nargs="+", default=["epe"], help="validation metrics to plot (default epe)")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--csv", type=Path, help="CSV to write (default: --out with .csv)")
    parser.add_argument("--title", default="", help="figure title (default: the work dirs)")
    parser.add_argument("--labels", nargs="+", help="legend names of the work dirs (default: stage 1, stage 2, ...)")
    parser.add_argument("--prior", type=Path, metavar="CSV",
                        help="stages carried over from a CSV this script wrote (their work dirs may be gone)")
    args = parser.parse_args(argv)
    try:
        prior = read_prior(args.prior, args.metrics) if args.prior else Prior([], [], [])
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    first = len(prior.labels) + 1
    labels = args.labels or [f"stage {k}" for k in range(first, first + len(args.work_dirs))]
    if len(labels) != len(args.work_dirs):
        parser.error(f"--labels: {len(labels)} names for {len(args.work_dirs)} work dirs")
    labels = prior.labels + labels
    try:
        points, boundaries = collect(args.work_dirs, args.val_set, args.metrics, prior)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not points:
        print(f"error: no validation points of '{args.val_set}' in {', '.join(map(str, args.work_dirs))}",
              file=sys.stderr)
        return 2
    table = to_csv(points, args.metrics, labels)
    names = ([args.prior.name] if args.prior else []) + [d.name for d in args.work_dirs]
    title = args.title or " -> ".join(names)
    atomic_write_bytes(args.out, plot(points, boundaries, args.metrics, args.val_set, title, labels))
    atomic_write_text(args.csv or args.out.with_suffix(".csv"), table)
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
