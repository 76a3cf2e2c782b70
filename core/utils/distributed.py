"""Splitting training over processes: the process group, a few collectives, and the data shard of each process.

A run started by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``) joins a process group, NCCL on CUDA and gloo on CPU; a plain ``python train.py`` is a single
process and creates none. Every helper here is a no-op (or the identity) in a single process, so the trainer has one
code path.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator

import torch
import torch.distributed as dist
from loguru import logger
from torch.utils.data import Dataset, DistributedSampler

from core.utils.runtime import derive_seed, select_device

# Long enough for rank 0 to validate and save a checkpoint while the other ranks wait for its results.
PROCESS_GROUP_TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class DistributedContext:
    """Who this process is: ``rank`` of ``world_size`` processes, ``local_rank`` on its machine, its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes logs, images and checkpoints."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got '{value}'") from None


@contextmanager
def distributed_session(device_request: str = "auto") -> Iterator[DistributedContext]:
    """Join the process group torchrun describes (if any) for the duration of the block.

    The group is destroyed on the way out, whether the block returns or raises, so a failed run never leaves a
    dangling group behind.

    Args:
        device_request: ``--device`` (see :func:`core.utils.runtime.select_device`); with several processes on CUDA
            each uses GPU ``LOCAL_RANK``.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is not within WORLD_SIZE={world_size}")
    device = select_device(device_request, local_rank)
    if world_size > 1 and device.type == "cuda" and device.index != local_rank:
        raise ValueError(f"--device {device_request}: with torchrun every process uses GPU LOCAL_RANK; pass --device cuda")
    context = DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)
    if context.is_distributed:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, timeout=PROCESS_GROUP_TIMEOUT)
        logger.debug(f"rank {rank}/{world_size}: process group ({backend}) on {device}")
    try:
        yield context
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce_max_(tensor: torch.Tensor) -> torch.Tensor:
    """Elementwise maximum over all processes, in place (e.g. flags: does any process want to stop?)."""
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def all_reduce_mean_(tensor: torch.Tensor) -> torch.Tensor:
    """Elementwise mean over all processes, in place (e.g. logged metrics)."""
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


def all_gather_object(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order (a list of one item in a single process)."""
    if not _active():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every process."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


class ResumableDistributedSampler(DistributedSampler):
    """:class:`~torch.utils.data.DistributedSampler` for training that yields ``(index, sample_seed)`` pairs.

    * Shuffled once per epoch (``set_epoch``) with the same permutation on every rank; rank ``r`` of ``R`` takes
      positions ``r, r + R, ...`` (the tail that does not divide evenly is dropped). Global batch ``k`` is thus the
      same set of samples for any number of processes.
    * ``sample_seed = derive_seed(seed, epoch, index)``: the augmentation of a sample (see
      :class:`core.utils.runtime.SeededSamples`) depends only on the seed, the epoch and the sample.
    * ``skip``: samples of this rank's shard to leave out at the start of the epoch, to resume mid-epoch exactly
      where an interrupted run stopped (set it after ``set_epoch``, every epoch).
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.skip = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in list(super().__iter__())[self.skip:]:
            yield index, derive_seed(self.seed, self.epoch, index)

    def __len__(self) -> int:
        return max(self.num_samples - self.skip, 0)
