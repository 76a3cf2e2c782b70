"""Validate a checkpoint on a benchmark's training split, or write benchmark submission files.

    python evaluate.py --config configs/sintel.yaml --ckpt sintel.pth --dataset sintel --out sintel.json
    python evaluate.py --config configs/kitti.yaml --ckpt kitti.pth --dataset kitti
    python evaluate.py --ckpt checkpoints/protoformer-s-synthetic.pth --dataset synthetic
    python evaluate.py --config configs/sintel.yaml --ckpt sintel.pth --submission sintel --output sub/ --warm-start
    python evaluate.py --config configs/kitti.yaml --ckpt kitti.pth --submission kitti --output sub/

Protocols (RAFT's, which the ProtoFormer paper reports):

* Sintel (clean and final training passes): EPE, 1/3/5 px **pooled** over all pixels of all frames; matched /
  unmatched EPE (non-occluded / occluded pixels) when ``training/occlusions`` exists.
* KITTI-2015 (training): EPE averaged **per image** over its valid pixels, Fl-all in percent **pooled** over all
  valid pixels (outlier: EPE > 3 px and > 5 % of the ground-truth length). Padding goes to the bottom (RAFT).
* FlyingChairs (validation split), FlyingThings3D (TEST, clean and final), synthetic (val split): pooled EPE and
  1/3/5 px over valid pixels.

Trailing ``KEY VALUE`` pairs override the config (e.g. ``data.roots.sintel /data/Sintel``). Results go to a table
in the log and, with ``--out``, to a JSON file with every number and the options that produced them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Iterable

import torch
from loguru import logger
from torch.utils.data import Dataset
from tqdm import tqdm

from core.data.datasets import MpiSintel
from core.data.formats import write_flo, write_kitti_flow
from core.data.loader import build_test_dataset, build_val_dataset
from core.inference import DEFAULT_CHECKPOINT, FlowEstimator, MissingCheckpointError, forward_interpolate
from core.metrics import FlowMetricAccumulator
from core.model.checkpoint import CheckpointError

VALIDATION_SPLITS = {
    "chairs": ("chairs",),
    "things": ("things_clean", "things_final"),
    "sintel": ("sintel_clean", "sintel_final"),
    "kitti": ("kitti",),
    "synthetic": ("synthetic",),
}
DATASETS = tuple(VALIDATION_SPLITS)
SUBMISSIONS = ("sintel", "kitti")
SINTEL_PASSES = ("clean", "final")


def validation_sets(cfg, dataset: str) -> dict[str, Dataset]:
    """The named evaluation splits of ``dataset`` (two for the benchmarks with clean and final passes).

    Sintel is read with its occlusion masks when ``training/occlusions`` and ``training/invalid`` exist, for the
    matched / unmatched EPE; everything else comes from :func:`core.data.loader.build_val_dataset`.
    """
    if dataset not in VALIDATION_SPLITS:
        raise ValueError(f"unknown dataset '{dataset}', expected one of {DATASETS}")
    sets = {}
    for name in VALIDATION_SPLITS[dataset]:
        sintel = Path(cfg.data.roots.sintel) / "training"
        if name.startswith("sintel_") and (sintel / "occlusions").is_dir() and (sintel / "invalid").is_dir():
            sets[name] = MpiSintel(cfg.data.roots.sintel, pass_name=name.split("_")[1], split="training", masks=True)
        else:
            sets[name] = build_val_dataset(cfg, name)
    return sets


def _limited(dataset: Dataset, max_samples: int | None) -> Iterable[int]:
    return range(len(dataset) if max_samples is None else min(max_samples, len(dataset)))


@torch.inference_mode()
def validate(estimator: FlowEstimator, name: str, dataset: Dataset, max_samples: int | None = None) -> dict[str, Any]:
    """Metrics of ``estimator`` on one split (see the module docstring for the protocol of each benchmark)."""
    accumulator = FlowMetricAccumulator()
    indices = _limited(dataset, max_samples)
    for index in tqdm(indices, desc=name, unit="pair", leave=False, dynamic_ncols=True):
        sample = dataset[index]
        prediction = estimator.run(sample["image1"][None], sample["image2"][None])
        occluded = sample["occlusion"][None] if "occlusion" in sample else None
        accumulator.update(prediction.flow, sample["flow"][None], sample["valid"][None], occluded)
    metrics = accumulator.compute()
    if name == "kitti":
        result = {"epe": metrics["epe_per_image"], "fl_all": metrics["fl_all"], "epe_pooled": metrics["epe"]}
    else:
        result = {key: metrics[key] for key in ("epe", "1px", "3px", "5px")}
        result.update({key: metrics[key] for key in ("epe_matched", "epe_unmatched") if key in metrics})
    result.update(num_images=accumulator.num_images, num_pixels=accumulator.num_pixels)
    return result


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """The results as a fixed-width text table (one row per split)."""
    columns = ["epe", "1px", "3px", "5px", "fl_all", "epe_matched", "epe_unmatched", "num_images"]
    columns = [c for c in columns if any(c in r for r in results.values())]
    header = f"{'split':<14}" + "".join(f"{c:>15}" for c in columns)
    rows = [header, "-" * len(header)]
    for name, result in results.items():
        cells = []
        for column in columns:
            value = result.get(column)
            if value is None:
                cells.append(f"{'-':>15}")
            elif isinstance(value, int):
                cells.append(f"{value:>15d}")
            else:
                cells.append(f"{value:>15.4f}")
        rows.append(f"{name:<14}" + "".join(cells))
    return "\n".join(rows)


@torch.inference_mode()
def write_sintel_submission(estimator: FlowEstimator, cfg, output: Path, warm_start: bool = False,
                            max_samples: int | None = None) -> dict[str, int]:
    """``output/{clean,final}/<scene>/frame_XXXX.flo`` for every pair of the Sintel test split.

    With ``warm_start`` each pair starts from the previous pair's 1/8 flow projected forward (RAFT's
    ``forward_interpolate``), reset at the first pair of every scene. Returns the number of files per pass.
    """
    written = {}
    for pass_name in SINTEL_PASSES:
        dataset = build_test_dataset(cfg, f"sintel_{pass_name}")
        previous_scene, flow_low = None, None
        count = 0
        for index in tqdm(_limited(dataset, max_samples), desc=f"sintel {pass_name}", unit="pair", dynamic_ncols=True):
            sample = dataset[index]
            scene, frame = sample["meta"]["scene"], sample["meta"]["frame"]
            if scene != previous_scene:
                flow_low = None
            flow_init = forward_interpolate(flow_low) if warm_start and flow_low is not None else None
            prediction = estimator.run(sample["image1"][None], sample["image2"][None], flow_init)
            flow_low, previous_scene = prediction.flow_low, scene
            path = output / pass_name / scene / f"frame_{frame:04d}.flo"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_flo(path, prediction.flow[0].permute(1, 2, 0).numpy())
            count += 1
        written[pass_name] = count
        logger.info(f"sintel {pass_name}: wrote {count} .flo files to {output / pass_name}")
    return written


@torch.inference_mode()
def write_kitti_submission(estimator: FlowEstimator, cfg, output: Path,
                           max_samples: int | None = None) -> dict[str, int]:
    """``output/flow/XXXXXX_10.png`` (16-bit KITTI flow PNGs at the original size) for every KITTI test pair."""
    dataset = build_test_dataset(cfg, "kitti")
    folder = output / "flow"
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for index in tqdm(_limited(dataset, max_samples), desc="kitti", unit="pair", dynamic_ncols=True):
        sample = dataset[index]
        prediction = estimator.run(sample["image1"][None], sample["image2"][None])
        write_kitti_flow(folder / f"{sample['meta']['frame']:06d}_10.png", prediction.flow[0].permute(1, 2, 0).numpy())
        count += 1
    logger.info(f"kitti: wrote {count} flow PNGs to {folder}")
    return {"kitti": count}


def build_estimator(args: argparse.Namespace, pad_mode: str) -> FlowEstimator:
    options = dict(device=args.device, precision="fp16" if args.fp16 else None, iters=args.iters,
                   tile=True if args.tile else False, pad_mode=pad_mode)
    if args.random_init:
        if args.ckpt is not None:
            raise ValueError("--random-init and --ckpt exclude each other")
        return FlowEstimator.from_random_init(args.config, opts=args.opts, **options)
    return FlowEstimator.from_checkpoint(args.ckpt or DEFAULT_CHECKPOINT, config=args.config, opts=args.opts,
                                         **options)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="config file (default: the one stored with the checkpoint)")
    parser.add_argument("--ckpt", help=f"checkpoint: ours or an official release (default: {DEFAULT_CHECKPOINT})")
    parser.add_argument("--random-init", action="store_true", help="untrained weights (dry runs of the pipeline)")
    parser.add_argument("--dataset", choices=DATASETS, help="validate on this benchmark's training/validation split")
    parser.add_argument("--submission", choices=SUBMISSIONS, help="write benchmark files for the test split")
    parser.add_argument("--output", type=Path, help="folder for --submission files")
    parser.add_argument("--warm-start", action="store_true", help="Sintel submission: warm start within each scene")
    parser.add_argument("--iters", type=int, help="flow refinement iterations (default: model.iters of the config)")
    parser.add_argument("--tile", action="store_true",
                        help="tiled inference (Gaussian-blended tiles of eval.tile_size, default data.crop_size)")
    parser.add_argument("--fp16", action="store_true", help="fp16 autocast (CUDA only)")
    parser.add_argument("--device", help="cuda, cpu, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--max-samples", type=int, help="use only the first N pairs of each split (quick checks)")
    parser.add_argument("--out", type=Path, help="write the results as JSON to this file")
    parser.add_argument("opts", nargs="*", metavar="KEY VALUE", help="config overrides, e.g. data.roots.sintel /data")
    args = parser.parse_args(argv)
    if (args.dataset is None) == (args.submission is None):
        parser.error("give exactly one of --dataset and --submission")
    if args.submission and args.output is None:
        parser.error("--submission needs --output DIR")
    if args.warm_start and args.submission != "sintel":
        parser.error("--warm-start applies to --submission sintel only")
    if args.max_samples is not None and args.max_samples < 1:
        parser.error("--max-samples must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    task = args.dataset or args.submission
    try:
        estimator = build_estimator(args, pad_mode="kitti" if task == "kitti" else "sintel")
    except (MissingCheckpointError, CheckpointError, FileNotFoundError, ValueError, KeyError) as err:
        logger.error(str(err))
        return 2
    cfg = estimator.cfg
    report: dict[str, Any] = {
        "checkpoint": None if args.random_init else str(args.ckpt or DEFAULT_CHECKPOINT),
        "config": args.config,
        "options": {**estimator.describe(), "max_samples": args.max_samples, "overrides": list(args.opts)},
    }
    try:
        if args.submission:
            report["submission"] = args.submission
            report["output"] = str(args.output)
            report["options"]["warm_start"] = args.warm_start
            if args.submission == "sintel":
                report["files"] = write_sintel_submission(estimator, cfg, args.output, args.warm_start,
                                                          args.max_samples)
            else:
                report["files"] = write_kitti_submission(estimator, cfg, args.output, args.max_samples)
        else:
            splits = validation_sets(cfg, args.dataset)
            report["dataset"] = args.dataset
            report["dataset_sizes"] = {name: len(split) for name, split in splits.items()}
            report["results"] = {name: validate(estimator, name, split, args.max_samples)
                                 for name, split in splits.items()}
            logger.info(f"{args.dataset} ({estimator.iters} iters{', tiled' if estimator.tile else ''}):\n"
                        + format_table(report["results"]))
    except FileNotFoundError as err:  # DatasetNotFoundError included: names the path and the expected layout
        logger.error(str(err))
        return 2
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(_json_ready(report), indent=2, allow_nan=False) + "\n")
        logger.info(f"results written to {args.out}")
    return 0


def _json_ready(value: Any) -> Any:
    """``value`` with NaN / inf replaced by None (strict JSON) and paths as strings."""
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


if __name__ == "__main__":
    sys.exit(main())
