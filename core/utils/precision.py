"""Mixed-precision policy of a training run: which autocast to enter and whether a GradScaler is needed.

``train.mixed_precision`` turns autocast on with ``train.amp_dtype``: ``bfloat16`` (CUDA, or CPU where it is
supported but usually slower than float32, hence off by default) or ``float16`` (CUDA only, with dynamic loss
scaling by :class:`torch.amp.GradScaler`, since float16 gradients underflow). Losses are computed in float32 outside
autocast by the trainer.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """Autocast settings for one device: ``enabled`` with ``dtype`` on ``device_type`` (``"cuda"``/``"cpu"``)."""

    enabled: bool
    dtype: torch.dtype
    device_type: str

    @classmethod
    def from_config(cls, mixed_precision: bool, amp_dtype: str, device: torch.device) -> "Precision":
        """The policy for ``train.mixed_precision`` / ``train.amp_dtype`` on ``device``.

        Raises:
            ValueError: an unknown dtype, float16 on a CPU, or bfloat16 on a GPU without bfloat16 support.
        """
        if amp_dtype not in _DTYPES:
            raise ValueError(f"train.amp_dtype must be one of {sorted(_DTYPES)}, got '{amp_dtype}'")
        dtype = _DTYPES[amp_dtype]
        if mixed_precision and device.type == "cpu" and dtype == torch.float16:
            raise ValueError("train.amp_dtype float16 needs CUDA; on a CPU use bfloat16 (or train.mixed_precision False)")
        if mixed_precision and device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise ValueError(f"{torch.cuda.get_device_name(device)} does not support bfloat16; use train.amp_dtype float16")
        return cls(enabled=bool(mixed_precision), dtype=dtype, device_type=device.type)

    @property
    def needs_grad_scaler(self) -> bool:
        return self.enabled and self.dtype == torch.float16

    def autocast(self) -> AbstractContextManager:
        """The autocast context for the forward pass (a disabled one when mixed precision is off)."""
        return torch.autocast(device_type=self.device_type, dtype=self.dtype, enabled=self.enabled)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler, enabled only for float16 (a disabled scaler passes everything through unchanged)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.needs_grad_scaler)
