"""Where the developers' reference data lives: ``$PROTOFORMER_SHARED``, else ``shared/`` beside the checkout.

That folder (golden outputs of the official code, real images with ground truth, real videos) is never part of
the repository and never needed at run time; the tests that use it skip without it, and the real-data benchmarks
take it as their default input folder.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_ENV = "PROTOFORMER_SHARED"


def shared_dir() -> Path:
    """``$PROTOFORMER_SHARED`` if set (and not empty), else ``<checkout>/../shared``; the folder may not exist."""
    return Path(os.environ.get(SHARED_ENV) or REPO_ROOT.parent / "shared")
