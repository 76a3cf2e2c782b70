"""What a training run reports: loguru messages (console and ``train.log``), a tqdm progress bar, TensorBoard.

Only rank 0 writes. The other ranks keep a console sink for warnings and errors (prefixed with their rank) and get
a :class:`TrainingMonitor` whose methods do nothing, so the trainer calls the same code on every rank.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
from loguru import logger
from tqdm import tqdm

CONSOLE_FORMAT = "<green>{time:HH:mm:ss}</green> <level>{level: <7}</level> {message}"
FILE_FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} {level: <7} {name}:{line} {message}"


def _console_sink(message: str) -> None:
    """Print through tqdm so that log lines do not break the progress bar."""
    tqdm.write(message, end="", file=sys.stderr)


@contextmanager
def logging_session(log_file: Path | None, rank: int) -> Iterator[None]:
    """Route loguru to the console (and on rank 0 to ``log_file``) for the duration of the block.

    Replaces loguru's handlers while the block runs and puts a plain stderr handler back afterwards.
    """
    logger.remove()
    if rank == 0:
        handlers = [logger.add(_console_sink, level="INFO", format=CONSOLE_FORMAT, colorize=sys.stderr.isatty())]
        if log_file is not None:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            handlers.append(logger.add(log_file, level="DEBUG", format=FILE_FORMAT, encoding="utf8"))
    else:
        handlers = [logger.add(sys.stderr, level="WARNING", format=f"[rank {rank}] {CONSOLE_FORMAT}", colorize=False)]
    try:
        yield
    finally:
        for handler in handlers:
            logger.remove(handler)
        logger.add(sys.stderr)


class TrainingMonitor:
    """Progress bar and TensorBoard scalars/images of one run (``enabled`` on rank 0 only).

    Args:
        tb_dir: TensorBoard folder (``WORK_DIR/tb``).
        total_steps: optimizer steps of the whole schedule; ``start_step``: where this run starts (resume).
        enabled: false on every rank but 0, where all methods are no-ops.
    """

    def __init__(self, tb_dir: Path, total_steps: int, start_step: int, enabled: bool, description: str = "train"):
        self.enabled = enabled
        self._bar = None
        self._writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(tb_dir))
            interactive = sys.stderr.isatty()
            self._bar = tqdm(total=total_steps, initial=start_step, desc=description, unit="step",
                             dynamic_ncols=True, mininterval=0.5 if interactive else 30.0, file=sys.stderr)

    def advance(self, loss: float, epe: float | None, lr: float) -> None:
        """One optimizer step done: update the bar (step, loss, EPE, lr; tqdm shows the ETA)."""
        if self._bar is None:
            return
        postfix = {"loss": f"{loss:.4f}", "lr": f"{lr:.2e}"}
        if epe is not None:
            postfix["epe"] = f"{epe:.3f}"
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(1)

    def scalars(self, prefix: str, values: Mapping[str, float], step: int) -> None:
        """``prefix/key`` scalars at ``step``."""
        if self._writer is None:
            return
        for key, value in values.items():
            self._writer.add_scalar(f"{prefix}/{key}", value, step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """A uint8 [H, W, 3] RGB image at ``step``."""
        if self._writer is not None:
            self._writer.add_image(tag, image, step, dataformats="HWC")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._writer is not None:
            self._writer.close()
