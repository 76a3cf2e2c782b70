"""Padding of images (and flows, masks) to a size the network accepts, and the exact inverse crop (RAFT's InputPadder).

The encoders work at 1/8 resolution, so evaluation pads each input to a multiple of 8 by replicating border pixels,
runs the model, and crops the prediction back. Two placements, as in RAFT:

* ``"sintel"``: centred, rows split top/bottom and columns left/right (the extra pixel goes bottom/right);
* ``"kitti"``: all rows at the bottom, columns centred (KITTI images are about 375 x 1242; the road stays in place).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

PAD_MODES = ("sintel", "kitti")


class InputPadder:
    """Pads [..., H, W] tensors to multiples of ``divisor`` (and at least ``min_size``) and crops them back.

    Args:
        shape: the input shape, e.g. ``image.shape``; only the last two entries (H, W) are used.
        mode: ``"sintel"`` (centred) or ``"kitti"`` (rows at the bottom, columns centred).
        divisor: padded height and width are multiples of it (8 for ProtoFormer).
        min_size: smallest padded side (rounded up to a multiple of ``divisor``); 0 = no minimum.

    Example::

        padder = InputPadder(image1.shape, mode="kitti")
        image1, image2 = padder.pad(image1, image2)
        flow = padder.unpad(model(image1, image2)["flow"][-1])
    """

    def __init__(self, shape: Sequence[int], mode: str = "sintel", divisor: int = 8, min_size: int = 0) -> None:
        if len(shape) < 2 or min(shape[-2:]) < 1:
            raise ValueError(f"InputPadder: shape must end with (H, W) >= 1, got {tuple(shape)}")
        if mode not in PAD_MODES:
            raise ValueError(f"InputPadder: mode must be one of {PAD_MODES}, got '{mode}'")
        if divisor < 1:
            raise ValueError(f"InputPadder: divisor must be a positive integer, got {divisor}")
        self.height, self.width = int(shape[-2]), int(shape[-1])
        smallest = -(-min_size // divisor) * divisor
        pad_height = max(-(-self.height // divisor) * divisor, smallest) - self.height
        pad_width = max(-(-self.width // divisor) * divisor, smallest) - self.width
        left, right = pad_width // 2, pad_width - pad_width // 2
        top, bottom = (pad_height // 2, pad_height - pad_height // 2) if mode == "sintel" else (0, pad_height)
        self.padding = (left, right, top, bottom)  # F.pad order for the last two dims
        self.padded_shape = (self.height + top + bottom, self.width + left + right)

    def pad(self, *tensors: Tensor) -> list[Tensor]:
        """Replicate-pad every tensor [..., H, W] (any leading dims, any dtype incl. bool) to ``padded_shape``."""
        padded = []
        for index, x in enumerate(tensors):
            if x.dim() < 2 or tuple(x.shape[-2:]) != (self.height, self.width):
                raise ValueError(f"InputPadder.pad: input {index} has shape {tuple(x.shape)}, "
                                 f"expected [..., {self.height}, {self.width}]")
            # Replicate padding wants [N, C, H, W] and has no bool kernel: masks go through uint8.
            flat = x.reshape(-1, 1, self.height, self.width)
            flat = F.pad(flat.byte() if x.dtype == torch.bool else flat, self.padding, mode="replicate")
            padded.append(flat.to(x.dtype).reshape(*x.shape[:-2], *self.padded_shape))
        return padded

    def unpad(self, x: Tensor) -> Tensor:
        """Crop a padded tensor [..., H_pad, W_pad] back to [..., H, W] (a view)."""
        if x.dim() < 2 or tuple(x.shape[-2:]) != self.padded_shape:
            raise ValueError(f"InputPadder.unpad: expected [..., {self.padded_shape[0]}, {self.padded_shape[1]}], "
                             f"got shape {tuple(x.shape)}")
        left, _, top, _ = self.padding
        return x[..., top:top + self.height, left:left + self.width]
