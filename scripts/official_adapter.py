"""Build and run the official ProtoFormer from a local checkout (for side-by-side benchmarks only).

Nothing of the official code lives in this repository: :func:`build_official` imports it at run time from the
checkout given on the command line (``--official PATH``, the repository root or its ``Protoformer/`` folder). The
official code needs timm 0.4.12-era APIs; pass a directory holding such a timm as ``extra_path`` (e.g. made with
``pip install --no-deps --target DIR timm==0.4.12``) instead of changing the main environment.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import Tensor


def _code_root(path: Path) -> Path:
    for root in (path, path / "Protoformer"):
        if (root / "core" / "Protoformer" / "__init__.py").is_file() and (root / "configs" / "sintel.py").is_file():
            return root
    raise FileNotFoundError(f"--official {path}: no official ProtoFormer checkout there "
                            "(expected core/Protoformer/ and configs/sintel.py, or a Protoformer/ folder holding them)")


def build_official(path: str | Path, iters: int, state_dict: Mapping[str, Tensor] | None = None,
                   extra_path: str | Path | None = None) -> tuple[Callable[[Tensor, Tensor], Tensor], int]:
    """The official sintel-config flow model with ``iters`` decoder iterations, as ``(image1, image2) -> flow``.

    Images are [B, 3, H, W] in 0..255 with H, W multiples of 8 (the official model floors other sizes).
    ``state_dict`` is in the official key layout (floating tensors are cast to float32); without it the weights
    are the official random initialisation under ``torch.manual_seed(0)``. Returns the callable and the number
    of parameters.
    """
    root = _code_root(Path(path).expanduser().resolve())
    # The official package is also called ``core``: hide ours while the official model is imported and built.
    ours = {name: sys.modules.pop(name) for name in list(sys.modules) if name == "core" or name.startswith("core.")}
    saved_path = list(sys.path)
    sys.path[:0] = ([str(Path(extra_path).resolve())] if extra_path else []) + [str(root), str(root / "core")]
    try:
        from configs.sintel import get_cfg  # the official checkout, imported at run time
        from core.Protoformer import build_Protoformer

        cfg = get_cfg()
        cfg.latentcostformer.type = "flow"
        cfg.latentcostformer.decoder_depth = iters
        torch.manual_seed(0)
        model = build_Protoformer(cfg).eval()
    finally:
        for name in [n for n in sys.modules if n == "core" or n.startswith("core.")]:
            del sys.modules[name]
        sys.modules.update(ours)
        sys.path[:] = saved_path
    if state_dict is not None:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()},
                              strict=True)

    def run(image1: Tensor, image2: Tensor) -> Tensor:
        if image1.shape[-2] % 8 or image1.shape[-1] % 8:
            raise ValueError(f"official model: image size must be a multiple of 8, got {tuple(image1.shape[-2:])}")
        flow_predictions, _ = model(image1, image2)
        return flow_predictions[0]  # eval mode: (flow_up, flow_low)

    return run, sum(p.numel() for p in model.parameters())
