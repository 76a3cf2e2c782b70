"""Shared pytest fixtures.

``shared_dir`` points at ``../shared`` beside the checkout (reference notes, golden fixtures of the official
model, real images). It is not part of the project; tests that need it skip with a clear reason when it is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from loguru import logger

from core.utils import shared

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = shared.shared_dir()


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Tests run on 2 CPU threads with a fixed seed, like the measurements in the README."""
    torch.manual_seed(0)
    torch.set_num_threads(2)
    yield


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED_DIR.is_dir():
        pytest.skip(f"../shared not found at {SHARED_DIR} (reference data for developers; set PROTOFORMER_SHARED)")
    return SHARED_DIR


@pytest.fixture(scope="session")
def fixtures_dir(shared_dir: Path) -> Path:
    path = shared_dir / "fixtures" / "protoformer"
    if not path.is_dir():
        pytest.skip(f"golden fixtures of the official model not found at {path}")
    return path


@pytest.fixture
def messages() -> list[str]:
    """Everything logged at INFO and above while the test runs (loguru does not write to pytest's captured stderr)."""
    lines: list[str] = []
    handler = logger.add(lambda message: lines.append(str(message)), level="INFO")
    yield lines
    logger.remove(handler)
