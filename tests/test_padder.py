"""InputPadder: divisibility, exact round trip, placement of the padding (sintel centred, kitti bottom)."""

from __future__ import annotations

import pytest
import torch

from core.utils.padder import InputPadder

SIZES = [(436, 1024), (375, 1242), (100, 130), (8, 8), (1, 1)]


@pytest.mark.parametrize("mode", ["sintel", "kitti"])
@pytest.mark.parametrize("divisor", [8, 32, 7])
@pytest.mark.parametrize("size", SIZES)
def test_round_trip_and_divisibility(size, mode, divisor):
    image = torch.rand(1, 3, *size)
    padder = InputPadder(image.shape, mode=mode, divisor=divisor)
    padded, flow = padder.pad(image, torch.rand(1, 2, *size))
    assert padded.shape[-2] % divisor == 0 and padded.shape[-1] % divisor == 0
    assert padded.shape[-2] - size[0] < divisor and padded.shape[-1] - size[1] < divisor
    assert tuple(padded.shape[-2:]) == padder.padded_shape == tuple(flow.shape[-2:])
    assert torch.equal(padder.unpad(padded), image)


def test_padding_placement_by_hand():
    # 375 x 1242 -> 376 x 1248: one row, six columns.
    kitti = InputPadder((375, 1242), mode="kitti")
    assert kitti.padding == (3, 3, 0, 1)  # (left, right, top, bottom): rows at the bottom only
    sintel = InputPadder((375, 1242), mode="sintel")
    assert sintel.padding == (3, 3, 0, 1)  # one row: the odd pixel goes to the bottom
    # 436 x 1024 -> 440 x 1024; 100 x 130 -> 104 x 136.
    assert InputPadder((436, 1024), mode="sintel").padding == (0, 0, 2, 2)
    assert InputPadder((436, 1024), mode="kitti").padding == (0, 0, 0, 4)
    assert InputPadder((100, 130), mode="sintel").padding == (3, 3, 2, 2)
    assert InputPadder((100, 130), mode="kitti").padding == (3, 3, 0, 4)
    assert InputPadder((101, 131), mode="sintel").padding == (2, 3, 1, 2)


def test_replicated_content():
    image = torch.arange(12.0).reshape(1, 1, 3, 4)
    (kitti,) = InputPadder(image.shape, mode="kitti", divisor=4).pad(image)  # 3 x 4 -> 4 x 4, one row at the bottom
    assert torch.equal(kitti[..., :3, :], image) and torch.equal(kitti[..., 3, :], image[..., 2, :])
    (sintel,) = InputPadder(image.shape, mode="sintel", divisor=6).pad(image)  # 3 x 4 -> 6 x 6: rows 1/2, cols 1/1
    assert sintel.shape[-2:] == (6, 6)
    assert torch.equal(sintel[..., 1:4, 1:5], image)
    assert torch.equal(sintel[..., 0, 1:5], image[..., 0, :]) and torch.equal(sintel[..., 5, 1:5], image[..., 2, :])
    assert sintel[..., 0, 0].item() == image[..., 0, 0].item() and sintel[..., 5, 5].item() == image[..., 2, 3].item()


def test_any_leading_dims_and_dtypes():
    padder = InputPadder((5, 7), divisor=4)
    for x in (torch.rand(5, 7), torch.rand(2, 5, 7), torch.rand(2, 3, 2, 5, 7), torch.rand(2, 5, 7) > 0.5,
              torch.randint(0, 9, (1, 5, 7))):
        (padded,) = padder.pad(x)
        assert padded.shape == (*x.shape[:-2], 8, 8) and padded.dtype == x.dtype
        assert torch.equal(padder.unpad(padded), x)


def test_min_size():
    padder = InputPadder((20, 100), min_size=32)
    assert padder.padded_shape == (32, 104)
    assert InputPadder((20, 20), min_size=30).padded_shape == (32, 32)  # min_size rounded up to the divisor


def test_errors():
    padder = InputPadder((1, 3, 10, 10))
    with pytest.raises(ValueError, match=r"input 1 has shape"):
        padder.pad(torch.rand(1, 3, 10, 10), torch.rand(1, 3, 10, 12))
    with pytest.raises(ValueError, match="unpad"):
        padder.unpad(torch.rand(1, 3, 10, 10))
    with pytest.raises(ValueError, match="mode"):
        InputPadder((10, 10), mode="kitti400")
    with pytest.raises(ValueError, match="divisor"):
        InputPadder((10, 10), divisor=0)
    with pytest.raises(ValueError, match="shape"):
        InputPadder((10,))
