"""Train ProtoFormer for one stage of a schedule, on one process or many (torchrun, DistributedDataParallel).

    python train.py --config configs/synthetic.yaml --work-dir runs/synthetic [KEY VALUE ...]
    torchrun --nproc_per_node=4 train.py --config configs/sintel.yaml --work-dir runs/sintel
    python train.py --work-dir runs/sintel --resume                 # continue where the run stopped
    python train.py --work-dir runs/sintel --export sintel.pth      # weights-only file of best.pth (or latest.pth)
    python train.py --work-dir runs/sintel --export sintel.pth --average 3   # ... of the mean of the last 3 step_*.pth
                                                                    # (train.keep_last, default 3, are kept)

The recipe is RAFT's, every number from the config: sequence loss ``sum_i gamma^(N-i-1) |f_i - f_gt|`` without the
pixels whose ground truth exceeds ``train.max_flow`` (:mod:`core.losses`; SILog for the depth head, both summed
for ``model.type joint``), AdamW, a one-cycle learning rate over ``train.num_steps + 100`` steps, gradient clipping,
optional mixed precision and Gaussian input noise. A step whose loss or gradient is not finite is skipped (no
optimizer update; the schedule still advances, as with a GradScaler) and the run stops after
``train.max_bad_steps`` such steps in a row.

Work directory::

    WORK_DIR/config.yaml                  the full config of the run
    WORK_DIR/train.log                    everything logged (rank 0)
    WORK_DIR/tb/                          TensorBoard: train/{loss,epe,1px,3px,5px,lr,images_per_s}, val/<set>/...
    WORK_DIR/checkpoints/step_NNNNNNN.pth the last train.keep_last checkpoints
    WORK_DIR/checkpoints/latest.pth       the newest one; best.pth the best by validation

A checkpoint holds the model (no ``module.`` prefix), optimizer, scheduler, GradScaler, step, the random states of
every rank and the config, so ``--resume`` continues exactly: the data order and augmentation are functions of
(seed, epoch, sample) (:class:`core.utils.distributed.ResumableDistributedSampler`), and on a CPU with
``--deterministic`` a resumed run ends with the same weights, bit for bit, as one that was never interrupted.
SIGINT / SIGTERM finish the current step, save a checkpoint and exit with code 3 (send twice to abort at once), so
a chain of stages (``scripts/train_cpu_default.sh``, ``set -e``) stops there instead of moving on; ``--stop-at``
exits with 0.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from loguru import logger
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, default_collate
from yacs.config import CfgNode

from core.config import config_from_text, flatten_config, load_config, with_overrides
from core.data.loader import build_train_dataset, build_val_dataset
from core.data.formats import read_image
from core.losses import depth_sequence_loss, sequence_loss
from core.metrics import DepthMetricAccumulator, FlowMetricAccumulator, disparity_to_depth
from core.model import build_model
from core.model.checkpoint import WEIGHTS_FORMAT, CheckpointError, atomic_save, load_weights, read_checkpoint
from core.utils.distributed import (
    DistributedContext,
    ResumableDistributedSampler,
    all_gather_object,
    all_reduce_max_,
    all_reduce_mean_,
    broadcast_object,
    distributed_session,
)
from core.utils.atomic import atomic_write_text
from core.utils.flow_viz import depth_to_color, flow_to_color
from core.utils.logs import TrainingMonitor, logging_session
from core.utils.precision import Precision
from core.utils.runtime import (
    SeededSamples,
    capture_rng_state,
    configure_determinism,
    derive_seed,
    leaf_datasets,
    restore_rng_state,
    seed_everything,
    worker_init_fn,
)

CHECKPOINT_FORMAT = "protoformer-train-v1"
# Keys that may differ between a run and its --resume: they change what is logged or kept, never the trajectory.
RESUMABLE_DIFFERENCES = (
    "data.num_workers", "data.roots.", "train.log_freq", "train.image_log_freq", "train.val_freq", "train.val_sets",
    "train.ckpt_freq", "train.keep_last", "train.max_bad_steps", "train.restore_ckpt", "eval.", "depth.eval_crop",
    "depth.median_scaling",
)
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, FileExistsError, CheckpointError)
NOISE_MAX_STD = 5.0  # RAFT: Gaussian noise with a standard deviation drawn from U(0, 5), images clamped to 0..255


class TrainingDiverged(RuntimeError):
    """Too many non-finite steps in a row (``train.max_bad_steps``)."""


# ----------------------------------------------------------------------------------------------- checks before work
def local_batch_size(cfg: CfgNode, world_size: int) -> int:
    """``train.batch_size`` (global) split over ``world_size`` processes. Raises ValueError if it does not divide."""
    batch = cfg.train.batch_size
    if batch < 1 or batch % world_size:
        raise ValueError(
            f"train.batch_size {batch} (the global batch) must be a positive multiple of the number of processes "
            f"({world_size}); use e.g. train.batch_size {max(1, batch // world_size) * world_size}"
        )
    return batch // world_size


def check_crop_fits(cfg: CfgNode, train_set: Dataset) -> None:
    """Raise ValueError if ``data.crop_size`` is larger than the images of any training set.

    The built-in synthetic sets have a known size (``synthetic.image_size``); for the others the first image of each
    set is read. (The augmentors would silently enlarge small images instead.)
    """
    crop_h, crop_w = cfg.data.crop_size
    for leaf in leaf_datasets(train_set):
        found = _image_size(leaf)
        if found is None:
            continue
        (height, width), source = found
        if crop_h > height or crop_w > width:
            raise ValueError(f"data.crop_size {crop_h}x{crop_w} is larger than {source}: {height}x{width}; "
                             f"use a crop of at most {height}x{width}")


def _image_size(dataset: Dataset) -> tuple[tuple[int, int], str] | None:
    """(H, W) of a dataset's images and where that comes from: the synthetic generator's configured size, or the
    first image file of a benchmark (flow ``pairs`` / depth ``frames``); None if the dataset does not say."""
    generator = getattr(dataset, "source", dataset)  # the synthetic depth set wraps the synthetic flow set
    if getattr(generator, "size", None):
        return tuple(generator.size), "synthetic.image_size"
    first = dataset.pairs[0].image1 if getattr(dataset, "pairs", None) else None
    if first is None and getattr(dataset, "frames", None):
        first = dataset.frames[0].image
    if first is None:
        return None
    return read_image(first).shape[:2], f"the images of {type(dataset).__name__} ({first})"


def build_val_sets(cfg: CfgNode) -> dict[str, Dataset]:
    """The validation sets of ``train.val_sets``; missing ones are skipped with a warning (synthetic always exists)."""
    val_sets = {}
    for name in cfg.train.val_sets:
        try:
            val_sets[name] = build_val_dataset(cfg, name)
        except FileNotFoundError as err:
            logger.warning(f"validation set '{name}' skipped, its data is missing: {err}")
    return val_sets


def check_samples(cfg: CfgNode, train_set: Dataset) -> None:
    """The first training sample has the crop size and, for depth training, a depth map. Raises ValueError."""
    sample = SeededSamples(train_set)[0, cfg.seed]
    height, width = sample["image1"].shape[-2:]
    if [height, width] != list(cfg.data.crop_size):
        raise ValueError(f"training samples are {height}x{width} but data.crop_size is {list(cfg.data.crop_size)}")
    if cfg.model.type in ("depth", "joint"):
        if "depth" not in sample:
            raise ValueError(f"model.type {cfg.model.type} needs depth ground truth, but the training sets "
                             f"{list(cfg.data.train_sets)} give none")
        if not bool((sample["depth"] > 0).any()):
            logger.warning("the first training sample has no valid depth (all <= 0): the depth head gets no "
                           "supervision from it (augmented synthetic pairs carry no depth)")


def model_input_keys(model: nn.Module) -> tuple[str, ...]:
    """The sample keys a model reads: both frames for flow, frame 1 only for a depth model (depth samples have one)."""
    return ("image1", "image2") if model.predicts_flow else ("image1",)


def collate_samples(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack the tensors of sample dicts (keys common to all samples); ``meta`` stays a list of dicts."""
    keys = set.intersection(*(set(s) for s in samples)) - {"meta"}
    batch = default_collate([{key: s[key] for key in keys} for s in samples])
    batch["meta"] = [s.get("meta") for s in samples]
    return batch


# ----------------------------------------------------------------------------------------------- checkpoints
class CheckpointStore:
    """``WORK_DIR/checkpoints``: ``step_NNNNNNN.pth`` (the last ``keep_last``), ``latest.pth``, ``best.pth``.

    Files are written atomically (:func:`core.model.checkpoint.atomic_save`); ``latest.pth`` and ``best.pth`` are
    hard links to a step file (copies where links are not supported), replaced atomically.
    """

    def __init__(self, folder: Path, keep_last: int) -> None:
        self.folder = folder
        self.keep_last = max(int(keep_last), 0)

    @property
    def latest(self) -> Path:
        return self.folder / "latest.pth"

    @property
    def best(self) -> Path:
        return self.folder / "best.pth"

    def step_files(self) -> list[Path]:
        return sorted(self.folder.glob("step_*.pth"))

    def save(self, state: Mapping[str, Any], step: int, is_best: bool) -> Path:
        """Write ``state`` as the checkpoint of ``step`` (and as best.pth if ``is_best``); returns its path."""
        if self.keep_last:
            path = self.folder / f"step_{step:07d}.pth"
            atomic_save(state, path)
            self._link(path, self.latest)
        else:
            path = self.latest
            atomic_save(state, path)
        if is_best:
            self._link(path, self.best)
        if self.keep_last:
            for old in self.step_files()[: -self.keep_last]:
                old.unlink(missing_ok=True)
        return path

    @staticmethod
    def _link(source: Path, target: Path) -> None:
        temporary = target.with_name(f".{target.name}.link")
        temporary.unlink(missing_ok=True)
        try:
            temporary.hardlink_to(source)
        except OSError:
            temporary.write_bytes(source.read_bytes())
        temporary.replace(target)


def read_training_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by :class:`CheckpointStore` (read with ``weights_only=True``).

    Raises:
        ValueError: the file is another kind of checkpoint (e.g. a weights-only release file).
    """
    checkpoint = read_checkpoint(path)
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a training checkpoint of this project (format "
                         f"{checkpoint.get('format')!r}, expected {CHECKPOINT_FORMAT!r})")
    return checkpoint


def check_resumable(cfg: CfgNode, saved_text: str, path: Path) -> None:
    """Raise ValueError if ``cfg`` changes the training trajectory of the checkpoint's config.

    The saved text is read over today's defaults, so a key added to the project after the checkpoint was written
    counts as its default (the value the run was trained with), not as a difference.
    """
    saved = flatten_config(config_from_text(saved_text, source=f"the config stored in {path}"))
    current = flatten_config(cfg)
    changed = [
        f"{key}: {saved.get(key)!r} -> {current.get(key)!r}"
        for key in sorted(set(saved) | set(current))
        if saved.get(key) != current.get(key) and not key.startswith(RESUMABLE_DIFFERENCES)
    ]
    if changed:
        raise ValueError(
            f"--resume: the config differs from the one {path} was trained with:\n  " + "\n  ".join(changed)
            + "\nResume with the original config (omit --config to use the checkpoint's), or start a new work dir "
            "with train.restore_ckpt to fine-tune from it."
        )


# ----------------------------------------------------------------------------------------------- the trainer
class Trainer:
    """One training stage: builds data, model and optimizer from ``cfg``, then :meth:`fit` runs the loop.

    Every check that can fail (batch split, datasets, crop, resume state) runs in the constructor, before any
    training work. All ranks run the same code; only rank 0 writes files.

    Args:
        cfg: the frozen config.
        work_dir: the run's folder (created).
        context: this process (rank, world size, device).
        resume: continue from ``work_dir/checkpoints/latest.pth``.
        stop_at: pause (with a checkpoint) once this step is reached, e.g. to fit a job's time limit; the schedule
            still spans ``train.num_steps`` and ``--resume`` continues from there.
    """

    def __init__(self, cfg: CfgNode, work_dir: Path, context: DistributedContext, resume: bool = False,
                 stop_at: int | None = None) -> None:
        if stop_at is not None and stop_at < 1:
            raise ValueError(f"--stop-at must be a positive step, got {stop_at}")
        self.cfg, self.work_dir, self.context = cfg, Path(work_dir), context
        self.stop_at = stop_at
        self.device = context.device
        self.local_batch = local_batch_size(cfg, context.world_size)
        self.store = CheckpointStore(self.work_dir / "checkpoints", cfg.train.keep_last)
        checkpoint = self._checkpoint_to_resume(resume)

        train_set = build_train_dataset(cfg)
        check_crop_fits(cfg, train_set)
        check_samples(cfg, train_set)
        self.val_sets = build_val_sets(cfg)
        self.sampler = ResumableDistributedSampler(train_set, context.world_size, context.rank, cfg.seed)
        self.steps_per_epoch = self.sampler.num_samples // self.local_batch
        if self.steps_per_epoch < 1:
            raise ValueError(f"the training mixture has {len(train_set)} samples, fewer than one global batch of "
                             f"{cfg.train.batch_size}; lower train.batch_size or add data")
        self.loader_generator = torch.Generator()
        self.loader = DataLoader(
            SeededSamples(train_set), batch_size=self.local_batch, sampler=self.sampler, drop_last=True,
            num_workers=cfg.data.num_workers, collate_fn=collate_samples, worker_init_fn=worker_init_fn,
            generator=self.loader_generator, pin_memory=self.device.type == "cuda",
        )

        seed_everything(cfg.seed)  # the same initial weights on every rank
        self.model = build_model(cfg).to(self.device)
        if checkpoint is not None:
            self.model.load_state_dict(checkpoint["model"], strict=True)
        elif cfg.train.restore_ckpt:
            load_weights(self.model, cfg.train.restore_ckpt, fresh_heads=True)
            logger.info(f"initial weights from {cfg.train.restore_ckpt}")
        self.network: nn.Module = self.model
        if context.is_distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.network = DistributedDataParallel(self.model, device_ids=device_ids)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.train.lr,
                                           weight_decay=cfg.train.weight_decay, eps=cfg.train.epsilon,
                                           fused=self.device.type in ("cpu", "cuda"))
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=cfg.train.lr, total_steps=cfg.train.num_steps + 100,
            pct_start=cfg.train.pct_start, cycle_momentum=False, anneal_strategy=cfg.train.anneal_strategy,
        )
        self.precision = Precision.from_config(cfg.train.mixed_precision, cfg.train.amp_dtype, self.device)
        self.scaler = self.precision.grad_scaler()

        self.step = 0
        self.bad_in_a_row = 0
        self.bad_total = 0
        self.best: dict[str, Any] | None = None  # {"set", "metric", "value", "step"}
        if checkpoint is not None:
            self._restore(checkpoint)
        else:
            seed_everything(cfg.seed + context.rank)
        self._stop_requested = False
        self.interrupted = False  # stopped by SIGINT / SIGTERM (on any rank), not by --stop-at or the end
        self._window = self._empty_window()

    # ------------------------------------------------------------------------------------------- set-up helpers
    def _checkpoint_to_resume(self, resume: bool) -> dict[str, Any] | None:
        if not resume:
            if self.store.latest.exists():
                raise FileExistsError(
                    f"{self.work_dir} already holds checkpoints ({self.store.latest}); pass --resume to continue that "
                    "run, or choose another --work-dir"
                )
            return None
        if not self.store.latest.exists():
            raise FileNotFoundError(f"--resume: no checkpoint to resume from in {self.store.folder} (latest.pth missing)")
        checkpoint = read_training_checkpoint(self.store.latest)
        check_resumable(self.cfg, checkpoint["config"], self.store.latest)
        return checkpoint

    def _restore(self, checkpoint: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.step = int(checkpoint["step"])
        self.bad_in_a_row = int(checkpoint["bad_in_a_row"])
        self.bad_total = int(checkpoint["bad_total"])
        self.best = checkpoint["best"]
        rng_states = checkpoint["rng"]
        if len(rng_states) == self.context.world_size:
            restore_rng_state(rng_states[self.context.rank])
        else:
            logger.warning(f"the checkpoint was written by {len(rng_states)} processes, this run has "
                           f"{self.context.world_size}: fresh random states (data order and augmentation still resume)")
            seed_everything(derive_seed(self.cfg.seed, self.context.rank, self.step))
        logger.info(f"resumed from {self.store.latest} at step {self.step}")

    @staticmethod
    def _empty_window() -> dict[str, Any]:
        return {"sums": {}, "good_steps": 0, "steps": 0, "start": time.perf_counter()}

    def _train_mode(self) -> None:
        """Training mode, with BatchNorm layers kept in eval mode if ``train.freeze_bn`` (RAFT's freeze_bn)."""
        self.model.train()
        if self.cfg.train.freeze_bn:
            for module in self.model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()

    # ------------------------------------------------------------------------------------------- the loop
    def fit(self) -> dict[str, Any]:
        """Train until ``train.num_steps`` (or a stop request); returns ``{"step", "best", "stopped"}``."""
        cfg, context = self.cfg, self.context
        if context.is_main:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            (self.work_dir / "config.yaml").write_text(cfg.dump())
        logger.info(
            f"{cfg.name}: {sum(p.numel() for p in self.model.parameters()):,} parameters, {context.world_size} "
            f"process(es) on {self.device}, global batch {cfg.train.batch_size}, steps {self.step} -> "
            f"{cfg.train.num_steps}, {self.steps_per_epoch} steps per epoch"
        )
        if self.stop_at is not None and self.step >= self.stop_at:
            logger.info(f"already at step {self.step}, not before --stop-at {self.stop_at}: nothing to do")
            return {"step": self.step, "best": self.best, "stopped": True}
        monitor = TrainingMonitor(self.work_dir / "tb", cfg.train.num_steps, self.step, enabled=context.is_main,
                                  description=cfg.name)
        self._train_mode()
        previous_handlers = self._install_signal_handlers()
        stopped = False
        try:
            while self.step < cfg.train.num_steps and not stopped:
                epoch, batches_done = divmod(self.step, self.steps_per_epoch)
                self.sampler.set_epoch(epoch)
                self.sampler.skip = batches_done * self.local_batch
                self.loader_generator.manual_seed(derive_seed(cfg.seed, context.rank, epoch))
                for batch in self.loader:
                    stopped = self._train_step(batch, monitor)
                    if stopped or self.step >= cfg.train.num_steps:
                        break
        finally:
            self._restore_signal_handlers(previous_handlers)
            monitor.close()
        if stopped:
            logger.warning(f"stopped at step {self.step}; continue with --resume")
        else:
            logger.info(f"finished {self.step} steps; best: {self.best}")
        return {"step": self.step, "best": self.best, "stopped": stopped}

    def _train_step(self, batch: dict[str, Any], monitor: TrainingMonitor) -> bool:
        """One optimizer step (or a skipped one) plus its logging, validation and checkpoint. True: stop now."""
        cfg = self.cfg
        images = [batch[key].to(self.device, non_blocking=True) for key in model_input_keys(self.model)]
        if cfg.train.add_noise:
            images = self._add_noise(images)

        self.optimizer.zero_grad(set_to_none=True)
        with self.precision.autocast():
            output = self.network(*images)
        loss, metrics = self._loss(output, batch)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        max_norm = cfg.train.clip if cfg.train.clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)

        flags = torch.tensor([0.0 if torch.isfinite(loss) and torch.isfinite(grad_norm) else 1.0,
                              float(self._stop_requested)], device=self.device)
        skipped, stop = (bool(v) for v in all_reduce_max_(flags).tolist())
        self.interrupted = self.interrupted or stop
        if not skipped:
            self.scaler.step(self.optimizer)
        self.scaler.update()
        with warnings.catch_warnings():
            # A skipped first step is deliberate: the schedule advances as if the step had been taken.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            self.scheduler.step()
        self.step += 1
        self._window["steps"] += 1

        if skipped:
            self.bad_in_a_row += 1
            self.bad_total += 1
            logger.warning(f"step {self.step}: non-finite loss ({loss.item():.4g}) or gradient norm "
                           f"({grad_norm.item():.4g}); update skipped ({self.bad_in_a_row} in a row, "
                           f"{self.bad_total} in total)")
            if self.bad_in_a_row >= cfg.train.max_bad_steps:
                raise TrainingDiverged(
                    f"{self.bad_in_a_row} non-finite steps in a row (train.max_bad_steps {cfg.train.max_bad_steps}); "
                    f"stopping at step {self.step}. The last checkpoint is {self.store.latest}; lower train.lr, "
                    "check the data, or turn off train.mixed_precision"
                )
        else:
            self.bad_in_a_row = 0
            self._accumulate(loss.item(), metrics)
        lr = self.scheduler.get_last_lr()[0]
        monitor.advance(loss.item(), metrics.get("epe"), lr)

        if self.step % cfg.train.log_freq == 0:
            self._log_window(monitor, lr)
        if self.context.is_main and self.step % cfg.train.image_log_freq == 0:
            monitor.image("train/input_pred_gt", self._visualise(batch, output), self.step)
        final = self.step >= cfg.train.num_steps
        improved = False
        if self.step % cfg.train.val_freq == 0 or final:
            improved = self._validate(monitor)
        if self.stop_at is not None and self.step >= self.stop_at and not final:
            if not stop:
                logger.info(f"step {self.step}: reached --stop-at {self.stop_at}")
            stop = True
        if self.step % cfg.train.ckpt_freq == 0 or final or improved or stop:
            self.save_checkpoint(improved)
        return stop

    def _add_noise(self, images: list[Tensor]) -> list[Tensor]:
        """RAFT's input noise: N(0, s^2) with s ~ U(0, 5) per batch, clamped to 0..255; seeded by (seed, rank, step)."""
        generator = torch.Generator(device=self.device)
        generator.manual_seed(derive_seed(self.cfg.seed, self.context.rank, self.step))
        std = NOISE_MAX_STD * torch.rand((), generator=generator, device=self.device)
        return [(image + std * torch.randn(image.shape, generator=generator, device=self.device)).clamp(0.0, 255.0)
                for image in images]

    def _loss(self, output: Mapping[str, Any], batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """Flow sequence loss and/or depth sequence loss (their sum for a joint model), in float32."""
        cfg = self.cfg
        loss = None
        metrics: dict[str, float] = {}
        if self.model.predicts_flow:
            loss, metrics = sequence_loss(
                [flow.float() for flow in output["flow"]], batch["flow"].to(self.device),
                batch["valid"].to(self.device), gamma=cfg.train.gamma, max_flow=cfg.train.max_flow,
            )
        if self.model.predicts_depth:
            depth_loss, depth_metrics = depth_sequence_loss(
                [disparity.float() for disparity in output["disparity"]], batch["depth"].to(self.device),
                gamma=cfg.train.gamma, variance_focus=cfg.depth.silog_variance_focus,
                min_depth=cfg.depth.min_depth, max_depth=cfg.depth.max_depth,
            )
            loss = depth_loss if loss is None else loss + depth_loss
            metrics.update(depth_metrics)
        return loss, metrics

    # ------------------------------------------------------------------------------------------- logging
    def _accumulate(self, loss: float, metrics: Mapping[str, float]) -> None:
        sums = self._window["sums"]
        for key, value in {"loss": loss, **metrics}.items():
            sums[key] = sums.get(key, 0.0) + value
        self._window["good_steps"] += 1

    def _log_window(self, monitor: TrainingMonitor, lr: float) -> None:
        """Means over the steps since the last log line, averaged over ranks, to the log and TensorBoard."""
        window, self._window = self._window, self._empty_window()
        keys = sorted(window["sums"])  # the same on every rank: skipped steps are skipped everywhere
        means = {}
        if keys:
            values = [window["sums"][key] / window["good_steps"] for key in keys]
            means = dict(zip(keys, all_reduce_mean_(torch.tensor(values, dtype=torch.float64, device=self.device)).tolist()))
        elapsed = time.perf_counter() - window["start"]
        means["lr"] = lr
        means["images_per_s"] = window["steps"] * self.cfg.train.batch_size / max(elapsed, 1e-9)
        monitor.scalars("train", means, self.step)
        shown = " ".join(f"{key} {value:.4g}" for key, value in means.items())
        logger.info(f"step {self.step}/{self.cfg.train.num_steps} {shown}")

    def _visualise(self, batch: Mapping[str, Any], output: Mapping[str, Any]) -> np.ndarray:
        """Input | prediction | ground truth of the batch's first sample (flow: Middlebury colours, same scale)."""
        panels = [batch["image1"][0].permute(1, 2, 0).clamp(0, 255).byte().numpy()]
        if self.model.predicts_flow:
            flow_gt = batch["flow"][0].permute(1, 2, 0)
            valid = batch["valid"][0] >= 0.5
            radius = float(torch.linalg.vector_norm(flow_gt[valid], dim=-1).max()) if valid.any() else None
            prediction = output["flow"][-1][0].detach().float().permute(1, 2, 0)
            panels += [flow_to_color(prediction, max_radius=radius), flow_to_color(flow_gt, max_radius=radius, valid=valid)]
        if self.model.predicts_depth:
            depth = disparity_to_depth(output["disparity"][-1][0, 0].detach().float(), self.cfg.depth.max_depth)
            panels.append(depth_to_color(depth))
            if "depth" in batch:
                panels.append(depth_to_color(batch["depth"][0, 0]))
        return np.concatenate(panels, axis=1)

    # ------------------------------------------------------------------------------------------- validation
    def _validate(self, monitor: TrainingMonitor) -> bool:
        """Validate on rank 0 (the others wait), log, track the best. True if this step is the new best."""
        results: dict[str, dict[str, float]] = {}
        if self.context.is_main and self.val_sets:
            self.model.eval()
            for name, dataset in self.val_sets.items():
                start = time.perf_counter()
                results[name] = evaluate(self.model, dataset, name, self.cfg, self.precision, self.device)
                monitor.scalars(f"val/{name}", results[name], self.step)
                shown = " ".join(f"{key} {value:.4g}" for key, value in results[name].items())
                logger.info(f"step {self.step} validation {name}: {shown} ({time.perf_counter() - start:.1f} s)")
            self._train_mode()
        results = broadcast_object(results)
        if not results:
            return False
        name = next(iter(results))
        metric = "epe" if "epe" in results[name] else "abs_rel"
        value = results[name][metric]
        if self.best is None or value < self.best["value"]:
            self.best = {"set": name, "metric": metric, "value": value, "step": self.step}
            return True
        return False

    # ------------------------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self, is_best: bool) -> None:
        """Write a checkpoint of this step (rank 0; every rank contributes its random state).

        Raises RuntimeError instead of writing weights that are not finite.
        """
        rng_states = all_gather_object(capture_rng_state())
        state_dict = self.model.state_dict()
        bad = [key for key, value in state_dict.items() if value.is_floating_point() and not torch.isfinite(value).all()]
        if bad:
            raise RuntimeError(f"step {self.step}: refusing to save a checkpoint with non-finite weights in "
                               f"{bad[:5]}{' ...' if len(bad) > 5 else ''}")
        if not self.context.is_main:
            return
        state = {
            "format": CHECKPOINT_FORMAT,
            "model": state_dict,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "bad_in_a_row": self.bad_in_a_row,
            "bad_total": self.bad_total,
            "best": self.best,
            "rng": rng_states,
            "world_size": self.context.world_size,
            "config": self.cfg.dump(),
        }
        path = self.store.save(state, self.step, is_best)
        logger.info(f"step {self.step}: checkpoint {path}" + (" (best)" if is_best else ""))

    # ------------------------------------------------------------------------------------------- signals
    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        trainer_pid = os.getpid()

        def request_stop(signum: int, frame: Any) -> None:
            if os.getpid() != trainer_pid:  # a DataLoader worker forked with this handler: the trainer decides
                return
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True
            logger.warning(f"{signal.Signals(signum).name}: stopping after this step with a checkpoint "
                           "(send again to abort at once)")

        return {signum: signal.signal(signum, request_stop) for signum in (signal.SIGINT, signal.SIGTERM)}

    @staticmethod
    def _restore_signal_handlers(handlers: Mapping[int, Any]) -> None:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, name: str, cfg: CfgNode, precision: Precision,
             device: torch.device) -> dict[str, float]:
    """Flow metrics (pooled EPE, 1/3/5 px, Fl-all, per-image EPE) and/or depth metrics of ``model`` on ``dataset``."""
    loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=cfg.data.num_workers,
                        collate_fn=collate_samples, generator=torch.Generator().manual_seed(0))
    flow_metrics = FlowMetricAccumulator() if model.predicts_flow else None
    depth_metrics = None
    if model.predicts_depth:
        depth_metrics = DepthMetricAccumulator.from_config(cfg, name)
    for sample in loader:
        with precision.autocast():
            output = model(*(sample[key].to(device) for key in model_input_keys(model)), iters=cfg.model.iters)
        if flow_metrics is not None:
            flow_metrics.update(output["flow"][-1].float(), sample["flow"].to(device), sample["valid"].to(device))
        if depth_metrics is not None and "depth" in sample:
            depth = disparity_to_depth(output["disparity"][-1].float(), cfg.depth.max_depth)
            depth_metrics.update(depth, sample["depth"].to(device))
    results = flow_metrics.compute() if flow_metrics is not None else {}
    if depth_metrics is not None and depth_metrics.num_images:
        results.update(depth_metrics.compute())
    return results


# ----------------------------------------------------------------------------------------------- export
def average_weights(checkpoints: Mapping[Path, Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the model weights of the training ``checkpoints`` (path -> checkpoint, oldest first;
    computed in float64, stored in each tensor's own dtype; integer tensors such as counters are taken from the last
    checkpoint).

    Averaging the checkpoints of the end of an annealed schedule (one trajectory, as in stochastic weight averaging)
    smooths the step-to-step noise of the weights.
    """
    paths = list(checkpoints)
    models = [checkpoints[path]["model"] for path in paths]
    keys = set(models[-1])
    for path, model in zip(paths, models):
        if set(model) != keys:
            raise ValueError(f"--average: {path} holds other weights than {paths[-1]} (a different model)")
    return {key: (sum(model[key].double() for model in models) / len(models)).to(value.dtype)
            if value.is_floating_point() else value for key, value in models[-1].items()}


def export_weights(work_dir: Path, output: Path, half: bool = False, opts: Sequence[str] = (),
                   average: int | None = None) -> Path:
    """Write the weights of ``best.pth`` (else ``latest.pth``) as a release file; returns the source checkpoint.

    With ``average`` = N the weights are instead the mean of the last N ``step_*.pth`` (:func:`average_weights`; the
    config is the newest one's, which is the returned source); the run must have kept them (``train.keep_last``).

    ``opts`` (``KEY VALUE`` pairs) change the stored config, e.g. ``model.iters 12`` to make inference run more
    refinement iterations than training did; they are checked like any override.

    The file is ``{"format": "protoformer-weights-v1", "model": state_dict, "config": cfg.dump()}`` (the config is
    also written beside it as ``<output stem>.yaml``), readable with
    ``torch.load(path, weights_only=True)`` and :func:`core.model.checkpoint.load_weights`; ``half`` stores float
    tensors as float16 (half the size; the loader casts them back).
    """
    store = CheckpointStore(Path(work_dir) / "checkpoints", keep_last=0)
    if average is not None:
        sources = store.step_files()[-average:]
        if len(sources) < average:
            raise FileNotFoundError(f"--average {average}: {store.folder} holds {len(sources)} step_*.pth "
                                    "(train.keep_last must keep at least that many)")
    else:
        sources = [store.best if store.best.exists() else store.latest]
        if not sources[0].exists():
            raise FileNotFoundError(f"--export: no checkpoint in {store.folder} (neither best.pth nor latest.pth)")
    checkpoints = {path: read_training_checkpoint(path) for path in sources}  # each file read once
    source = sources[-1]
    checkpoint = checkpoints[source]
    config = checkpoint["config"]
    if opts:
        config = with_overrides(config_from_text(config, source=f"the config stored in {source}"), opts).dump()
        logger.info(f"stored config changed by {' '.join(map(str, opts))}")
    weights = checkpoint["model"] if average is None else average_weights(checkpoints)
    model = {key: value.half() if half and value.is_floating_point() else value for key, value in weights.items()}
    atomic_save({"format": WEIGHTS_FORMAT, "model": model, "config": config}, output)
    atomic_write_text(output.with_suffix(".yaml"), config)
    what = source if average is None else f"the mean of {', '.join(path.name for path in sources)}"
    logger.info(f"exported the weights of {what} (step {checkpoint['step']}) to {output}"
                + (" in float16" if half else "") + f", its config to {output.with_suffix('.yaml')}")
    return source


# ----------------------------------------------------------------------------------------------- command line
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train ProtoFormer for one stage (single process, or under torchrun for DDP).",
        epilog="Example: python train.py --config configs/synthetic.yaml --work-dir runs/synthetic train.lr 2e-4",
    )
    parser.add_argument("--config", type=Path, help="stage config (configs/*.yaml); with --resume/--export the "
                        "checkpoint's own config is used when omitted")
    parser.add_argument("--work-dir", type=Path, required=True, help="folder for the log, TensorBoard and checkpoints")
    parser.add_argument("--resume", action="store_true", help="continue from WORK_DIR/checkpoints/latest.pth")
    parser.add_argument("--export", type=Path, metavar="OUT", help="write a weights-only file of best.pth (else "
                        "latest.pth) for release and exit")
    parser.add_argument("--fp16", action="store_true", help="with --export: store the weights as float16")
    parser.add_argument("--average", type=int, metavar="N", help="with --export: the mean of the weights of the last N "
                        "step_*.pth instead of best.pth")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    parser.add_argument("--deterministic", action="store_true", help="deterministic kernels (bit-exact resume)")
    parser.add_argument("--stop-at", type=int, metavar="STEP", help="pause with a checkpoint at this step (the "
                        "schedule still spans train.num_steps); continue later with --resume")
    parser.add_argument("opts", nargs="*", metavar="KEY VALUE", help="config overrides, e.g. train.lr 2e-4")
    args = parser.parse_args(argv)
    if args.config is None and not (args.resume or args.export):
        parser.error("--config is required (except with --resume or --export)")
    if args.fp16 and not args.export:
        parser.error("--fp16 only applies to --export")
    if args.average is not None and (not args.export or args.average < 1):
        parser.error(f"--average N (N >= 1) only applies to --export, got {args.average}")
    if args.export and (args.config or args.resume or args.stop_at):
        parser.error("--export writes the checkpoint's own config: --config, --resume and --stop-at do not apply "
                     "(change stored values with KEY VALUE overrides, e.g. model.iters 12)")
    return args


def _load_run_config(args: argparse.Namespace) -> CfgNode:
    if args.config is not None:
        return load_config(args.config, args.opts)
    latest = CheckpointStore(args.work_dir / "checkpoints", 0).latest
    return config_from_text(read_checkpoint(latest)["config"], args.opts, source=f"the config stored in {latest}")


def run(args: argparse.Namespace) -> bool:
    """Export, or train one stage in this process (joining torchrun's process group if there is one); returns
    whether a signal interrupted the training."""
    if args.export:
        export_weights(args.work_dir, args.export, half=args.fp16, opts=args.opts, average=args.average)
        return False
    cfg = _load_run_config(args)
    configure_determinism(args.deterministic)
    with distributed_session(args.device) as context:
        trainer = Trainer(cfg, args.work_dir, context, resume=args.resume, stop_at=args.stop_at)
        trainer.fit()
    return trainer.interrupted


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (2: bad setup, 1: training failed, 3: stopped by a signal
    with a checkpoint: continue with ``--resume``)."""
    args = parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    log_file = args.work_dir / "train.log" if rank == 0 and not args.export else None
    new_work_dir = log_file is not None and not args.work_dir.exists()
    with logging_session(log_file, rank):
        try:
            interrupted = run(args)
        except USER_ERRORS as err:
            logger.error(f"{type(err).__name__}: {err}")
            code = 2
        except TrainingDiverged as err:
            logger.error(str(err))
            code = 1
        except Exception:
            logger.exception("training failed")
            code = 1
        else:
            code = 3 if interrupted else 0
    if code == 2 and new_work_dir and [p.name for p in args.work_dir.glob("*")] == ["train.log"]:
        shutil.rmtree(args.work_dir)  # a run refused before it started leaves no folder behind (its error was shown)
    return code


if __name__ == "__main__":
    sys.exit(main())
