"""The process's runtime environment for training: device choice, determinism, seeding and RNG state.

Randomness in training comes from three places, each made reproducible here:

* the global generators (``random``, ``numpy``, ``torch``, ``torch.cuda``): seeded per process with
  ``seed + rank`` (:func:`seed_everything`); their state is captured into checkpoints and restored on resume
  (:func:`capture_rng_state`, :func:`restore_rng_state`);
* data augmentation: every training sample is produced under its own seed derived from (seed, epoch, dataset
  index) (:class:`SeededSamples`, fed by :class:`core.utils.distributed.ResumableDistributedSampler`), so the data
  order and augmentation depend neither on the number of processes or loader workers nor on where a run was
  resumed;
* DataLoader workers: :func:`worker_init_fn` seeds ``random`` and ``numpy`` from the worker's torch seed.
"""

from __future__ import annotations

import os
import random
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset


def resolve_device(request: str | torch.device | None = None) -> torch.device:
    """The device a request names, checked before anything is moved there.

    Args:
        request: ``None`` or ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` (the current GPU) or
            ``"cuda:N"``, or a ``torch.device``.

    Raises:
        ValueError: not a device name, or CUDA requested but not available, or a GPU index that does not exist.
    """
    if request is None or request == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(request)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got '{request}'") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {request}: CUDA is not available on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {request}: GPU {device.index} requested, only {torch.cuda.device_count()} "
                             "visible")
    elif device.type != "cpu":
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got '{request}'")
    return device


def select_device(request: str, local_rank: int = 0) -> torch.device:
    """The device a training process runs on, made the current CUDA device when it is a GPU.

    Args:
        request: as for :func:`resolve_device`; ``"cuda"`` (and ``"auto"`` on a GPU machine) means GPU
            ``local_rank``, an explicit ``"cuda:N"`` is for single-process runs.
        local_rank: this process's index on its machine (torchrun's ``LOCAL_RANK``).

    Raises:
        ValueError: as :func:`resolve_device`, or GPU ``local_rank`` does not exist.
    """
    device = resolve_device(request)
    if device.type == "cuda" and device.index is None:
        device = resolve_device(f"cuda:{local_rank}")  # the same checks, for this process's GPU
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def configure_determinism(deterministic: bool) -> None:
    """Deterministic kernels (bit-exact reruns, slower) or cuDNN autotuning (fast, run-to-run noise on GPU)."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def derive_seed(*keys: int) -> int:
    """A well-mixed 32-bit seed from a tuple of non-negative integers (e.g. seed, epoch, index)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint32)[0])


def seed_everything(seed: int, cuda: bool = True) -> None:
    """Seed ``random``, ``numpy`` and torch's CPU generator, and every GPU's unless ``cuda`` is false."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    if cuda:
        torch.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)


def worker_init_fn(worker_id: int) -> None:
    """DataLoader worker start: seed ``random`` and ``numpy`` from the worker's torch seed.

    torch gives every worker ``base_seed + worker_id``, with ``base_seed`` drawn from the loader's generator (seeded
    per rank and epoch by the trainer), but leaves the other generators as forked copies of the parent's.
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


@contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Run a block with ``random``, ``numpy`` and torch's CPU generator seeded to ``seed``, then restore them."""
    python_state, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    seed_everything(seed, cuda=False)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)


def leaf_datasets(dataset: Dataset) -> list[Dataset]:
    """The datasets at the bottom of a tree of wrappers (``ConcatDataset.datasets``, ``Subset``/repeat ``.dataset``)."""
    if hasattr(dataset, "datasets"):
        return [leaf for part in dataset.datasets for leaf in leaf_datasets(part)]
    if hasattr(dataset, "dataset"):
        return leaf_datasets(dataset.dataset)
    return [dataset]


class SeededSamples(Dataset):
    """Wraps a dataset so that item ``(index, seed)`` is ``dataset[index]`` produced under its own seed.

    Before the sample is read, the global generators (``random``, ``numpy``, torch CPU) and the generator of every
    augmentor in the dataset tree (a leaf's ``augmentor`` with a ``reseed(seed)`` method, see
    :mod:`core.data.augment`) are seeded from ``seed``; the global ones are restored afterwards. A sample's
    augmentation then depends only on ``seed`` (given by the sampler), never on which process or worker loads it nor
    on what was loaded before, so an interrupted run resumes with exactly the same data.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        augmentors = (getattr(leaf, "augmentor", None) for leaf in leaf_datasets(dataset))
        self._augmentors = [a for a in augmentors if callable(getattr(a, "reseed", None))]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        for number, augmentor in enumerate(self._augmentors):
            # Reading ``rng`` first lets a fresh DataLoader worker do its one-time re-seeding now, not after ours.
            getattr(augmentor, "rng", None)
            augmentor.reseed(derive_seed(seed, number))
        with seeded_rng(seed):
            return self.dataset[index]


def capture_rng_state() -> dict[str, Any]:
    """The state of every global generator of this process, as tensors and plain Python values.

    The result survives ``torch.load(..., weights_only=True)`` (numpy's key array is stored as a tensor).
    """
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore generators captured by :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
