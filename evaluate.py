"""Validate a checkpoint on a benchmark's training split, or write benchmark submission files.

    python evaluate.py --config configs/sintel.yaml --ckpt sintel.pth --dataset sintel --out sintel.json
    python evaluate.py --config configs/kitti.yaml --ckpt kitti.pth --dataset kitti
    python evaluate.py --ckpt checkpoints/protoformer-s-synthetic.pth --dataset synthetic
    python evaluate.py --config configs/sintel.yaml --ckpt sintel.pth --submission sintel --output sub/ --warm-start
    python evaluate.py --config configs/kitti.yaml --ckpt kitti.pth --submission kitti --output sub/
    python evaluate.py --ckpt depth_eigen.pth --dataset kitti_eigen --out eigen.json
    python evaluate.py --ckpt depth_vkitti.pth --dataset vkitti --median-scaling
    python evaluate.py --random-init --config configs/depth_synthetic.yaml --dataset synthetic_depth

Flow protocols (RAFT's, which the ProtoFormer paper reports):

* Sintel (clean and final training passes): EPE, 1/3/5 px **pooled** over all pixels of all frames; matched /
  unmatched EPE (non-occluded / occluded pixels) when ``training/occlusions`` exists.
* KITTI-2015 (training): EPE averaged **per image** over its valid pixels, Fl-all in percent **pooled** over all
  valid pixels (outlier: EPE > 3 px and > 5 % of the ground-truth length). Padding goes to the bottom (RAFT).
* FlyingChairs (validation split), FlyingThings3D (TEST, clean and final), synthetic (val split): pooled EPE and
  1/3/5 px over valid pixels.

Depth protocol (Eigen et al. / Monodepth2, :class:`core.metrics.DepthMetricAccumulator`), for a depth or joint
model on ``kitti_eigen`` (Eigen test split), ``vkitti``, ``sintel_depth`` (clean and final; or
``sintel_depth_clean`` / ``sintel_depth_final``) and ``synthetic_depth``: the depth head's disparity becomes depth
as the official code does, ``1 / max(disparity, 1 / depth.max_depth)``; AbsRel, SqRel, RMSE, RMSE log, log10,
SILog and delta < 1.25 / 1.25^2 / 1.25^3 per image over the ground-truth pixels with ``depth.min_depth < gt <
depth.max_depth`` (1e-3..80 m), the prediction optionally multiplied by ``median(gt) / median(pred)`` first
(``--median-scaling`` or ``depth.median_scaling``) and clamped to the same range; then averaged over images. KITTI
uses the ``depth.eval_crop`` crop (``garg`` by default, or ``eigen``), the other sets none unless ``--eval-crop``
asks. Frames without ground truth are skipped and counted with their reason.

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

from core.config import add_refinement_options, scale_factor
from core.data.datasets import MpiSintel
from core.data.formats import write_flo, write_kitti_flow
from core.data.loader import build_test_dataset, build_val_dataset, is_depth_set
from core.inference import (
    DEFAULT_CHECKPOINT, DEFAULT_CHECKPOINT_PATH, FlowEstimator, MissingCheckpointError,
    forward_interpolate, with_random_init_hint,
)
from core.metrics import DepthMetricAccumulator, FlowMetricAccumulator, disparity_to_depth
from core.model.checkpoint import CheckpointError

VALIDATION_SPLITS = {
    "chairs": ("chairs",),
    "things": ("things_clean", "things_final"),
    "sintel": ("sintel_clean", "sintel_final"),
    "kitti": ("kitti",),
    "synthetic": ("synthetic",),
    "kitti_eigen": ("kitti_eigen",),
    "vkitti": ("vkitti",),
    "sintel_depth": ("sintel_depth_clean", "sintel_depth_final"),
    "sintel_depth_clean": ("sintel_depth_clean",),
    "sintel_depth_final": ("sintel_depth_final",),
    "synthetic_depth": ("synthetic_depth",),
}
DATASETS = tuple(VALIDATION_SPLITS)
DEPTH_DATASETS = tuple(name for name, sets in VALIDATION_SPLITS.items() if all(map(is_depth_set, sets)))
EVAL_CROPS = ("garg", "eigen", "none")
FLOW_COLUMNS = {"epe": "epe", "1px": "1px", "3px": "3px", "5px": "5px", "fl_all": "fl_all",
                "epe_matched": "epe_matched", "epe_unmatched": "epe_unmatched", "num_images": "num_images"}
DEPTH_COLUMNS = {"abs_rel": "AbsRel", "sq_rel": "SqRel", "rmse": "RMSE", "rmse_log": "RMSE log", "a1": "d<1.25",
                 "a2": "d<1.25^2", "a3": "d<1.25^3", "silog": "SILog", "num_images": "images",
                 "num_skipped": "skipped"}
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
        with_masks = (sintel / "occlusions").is_dir() and (sintel / "invalid").is_dir()
        if name in VALIDATION_SPLITS["sintel"] and with_masks:
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


def _sample_name(sample: dict[str, Any], index: int) -> str:
    """How a skipped depth sample is named in the report: its ground-truth file, else dataset, split and index."""
    meta = sample.get("meta", {})
    return meta.get("depth_path") or f"{meta.get('dataset', 'sample')} {meta.get('split', '')} #{index}".strip()


@torch.inference_mode()
def validate_depth(estimator: FlowEstimator, name: str, dataset: Dataset, accumulator: DepthMetricAccumulator,
                   max_samples: int | None = None) -> dict[str, Any]:
    """Depth metrics of ``estimator`` (a depth or joint model) on one depth split, with the protocol of
    ``accumulator`` (crop, caps, median scaling; see the module docstring).

    Frames the dataset itself dropped (``dataset.skipped``: KITTI split lines without annotated depth) and frames
    whose ground truth has no pixel to evaluate are counted in the result under their reason, never averaged.
    Returns :meth:`DepthMetricAccumulator.summary`.
    """
    for reason, names in getattr(dataset, "skipped", {}).items():
        accumulator.skip(reason, names)
    max_depth = estimator.cfg.depth.max_depth
    for index in tqdm(_limited(dataset, max_samples), desc=name, unit="image", leave=False, dynamic_ncols=True):
        sample = dataset[index]
        disparity = estimator.run(sample["image1"][None]).disparity
        depth = disparity_to_depth(disparity, max_depth)
        accumulator.update(depth, sample["depth"][None], sample["valid"][None], names=[_sample_name(sample, index)])
    if accumulator.num_images == 0:
        logger.warning(f"{name}: no image could be evaluated ({accumulator.num_skipped} skipped)")
    return accumulator.summary()


def format_table(results: dict[str, dict[str, Any]], labels: dict[str, str] | None = None) -> str:
    """The results as a fixed-width text table (one row per split); ``labels`` maps result keys to column titles
    (default: the flow columns)."""
    labels = FLOW_COLUMNS if labels is None else labels
    columns = [c for c in labels if any(c in r for r in results.values())]
    header = f"{'split':<20}" + "".join(f"{labels[c]:>12}" for c in columns)
    rows = [header, "-" * len(header)]
    for name, result in results.items():
        cells = []
        for column in columns:
            value = result.get(column)
            if value is None:
                cells.append(f"{'-':>12}")
            elif isinstance(value, int):
                cells.append(f"{value:>12d}")
            else:
                cells.append(f"{value:>12.4f}")
        rows.append(f"{name:<20}" + "".join(cells))
    return "\n".join(rows)


def describe_depth_protocol(protocol: dict[str, Any]) -> str:
    """One line naming the depth protocol, e.g. ``crop garg, depth caps 0.001..80 m, median scaling off``."""
    return (f"crop {protocol['crop']}, depth caps {protocol['min_depth']:g}..{protocol['max_depth']:g} m, "
            f"median scaling {'on' if protocol['median_scaling'] else 'off'}")


def format_skipped(results: dict[str, dict[str, Any]]) -> str:
    """One line per split and reason: how many frames were skipped and why (empty if none was)."""
    return "\n".join(f"{name}: skipped {count} frame(s): {reason}"
                     for name, result in results.items() for reason, count in result.get("skipped", {}).items())


def evaluate_depth(estimator: FlowEstimator, args: argparse.Namespace, report: dict[str, Any]) -> None:
    """Depth metrics of every split of ``args.dataset`` into ``report`` (``protocol``, ``dataset_sizes``,
    ``results``), and the table, the protocol and the skipped frames into the log."""
    cfg = estimator.cfg
    splits = validation_sets(cfg, args.dataset)
    accumulators = {name: DepthMetricAccumulator.from_config(cfg, name, args.eval_crop, args.median_scaling)
                    for name in splits}
    protocol = next(iter(accumulators.values())).protocol
    report["dataset"] = args.dataset
    report["protocol"] = {**protocol, "depth_from_disparity": f"1 / max(disparity, 1 / {cfg.depth.max_depth:g})"}
    report["dataset_sizes"] = {name: len(split) for name, split in splits.items()}
    report["results"] = {name: validate_depth(estimator, name, split, accumulators[name], args.max_samples)
                         for name, split in splits.items()}
    skipped = format_skipped(report["results"])
    logger.info(f"{args.dataset} depth ({describe_depth_protocol(protocol)}):\n"
                + format_table(report["results"], DEPTH_COLUMNS) + (f"\n{skipped}" if skipped else ""))


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
                   tile=True if args.tile else False, pad_mode=pad_mode, scales=args.scales,
                   refine_iters=args.refine_iters, flip_average=args.flip_average)
    if args.random_init:
        if args.ckpt is not None:
            raise ValueError("--random-init and --ckpt exclude each other")
        return FlowEstimator.from_random_init(args.config, opts=args.opts, **options)
    return FlowEstimator.from_checkpoint(args.ckpt or DEFAULT_CHECKPOINT_PATH, config=args.config, opts=args.opts,
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
    parser.add_argument("--scales", type=scale_factor, nargs="+", metavar="S",
                        help="one network pass per factor on the resized frames, each from the previous pass's flow; "
                             "e.g. 1 2: full size, then refined at twice the size (more precise, ~12x the runtime) "
                             "(default: eval.scales of the config, 1; put KEY VALUE overrides before it or after --)")
    add_refinement_options(parser)
    parser.add_argument("--tile", action="store_true",
                        help="tiled inference (Gaussian-blended tiles of eval.tile_size, default data.crop_size)")
    parser.add_argument("--fp16", action="store_true", help="fp16 autocast (CUDA only)")
    parser.add_argument("--device", help="cuda, cpu, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--max-samples", type=int, help="use only the first N pairs of each split (quick checks)")
    parser.add_argument("--median-scaling", action=argparse.BooleanOptionalAction, default=None,
                        help="depth: scale each prediction by median(gt) / median(pred) before the metrics "
                             "(for scale-ambiguous models; default: depth.median_scaling of the config)")
    parser.add_argument("--eval-crop", choices=EVAL_CROPS,
                        help="depth: evaluation crop (default: depth.eval_crop of the config for kitti_eigen, "
                             "none for the other sets)")
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
    if (args.median_scaling is not None or args.eval_crop is not None) and args.dataset not in DEPTH_DATASETS:
        parser.error(f"--median-scaling and --eval-crop apply to the depth datasets {', '.join(DEPTH_DATASETS)}")
    return args


def check_model_fits(estimator: FlowEstimator, dataset: str) -> None:
    """ValueError unless the model predicts what ``dataset`` measures (depth sets: depth or joint; others: flow)."""
    model_type = estimator.cfg.model.type
    if dataset in DEPTH_DATASETS and not estimator.predicts_depth:
        raise ValueError(f"--dataset {dataset} measures depth, but the model is a '{model_type}' model without a "
                         "depth head output: pass a depth or joint checkpoint (model.type depth or joint), or with "
                         "--random-init a depth config such as configs/depth_synthetic.yaml")
    if dataset not in DEPTH_DATASETS and not estimator.predicts_flow:
        raise ValueError(f"--dataset {dataset} measures optical flow, but the model is a '{model_type}' model "
                         "without flow output: pass a flow or joint checkpoint")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    task = args.dataset or args.submission
    try:
        estimator = build_estimator(args, pad_mode="kitti" if task.startswith("kitti") else "sintel")
        if args.dataset is not None:
            check_model_fits(estimator, args.dataset)
    except (MissingCheckpointError, CheckpointError, FileNotFoundError, ValueError, KeyError) as err:
        logger.error(with_random_init_hint(err))
        return 2
    cfg = estimator.cfg
    report: dict[str, Any] = {
        "checkpoint": None if args.random_init else str(args.ckpt or DEFAULT_CHECKPOINT_PATH),
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
        elif args.dataset in DEPTH_DATASETS:
            evaluate_depth(estimator, args, report)
        else:
            splits = validation_sets(cfg, args.dataset)
            report["dataset"] = args.dataset
            report["dataset_sizes"] = {name: len(split) for name, split in splits.items()}
            report["results"] = {name: validate(estimator, name, split, args.max_samples)
                                 for name, split in splits.items()}
            logger.info(f"{args.dataset} ({estimator.passes_description()}{', tiled' if estimator.tile else ''}):\n"
                        + format_table(report["results"]))
    except FileNotFoundError as err:  # DatasetNotFoundError included: names the path and the expected layout
        logger.error(str(err))
        return 2
    except ValueError as err:  # unreadable ground truth (e.g. an 8-bit PNG where 16 bits are required), bad split file
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
