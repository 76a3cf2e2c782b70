"""File formats: exact round trips, hand-written headers, and clear errors for bad files."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest

from core.data import formats


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# ----------------------------------------------------------------------------------------------- .flo
def test_flo_round_trip_and_byte_layout(tmp_path, rng):
    flow = rng.normal(scale=20, size=(5, 7, 2)).astype(np.float32)
    path = tmp_path / "a.flo"
    formats.write_flo(path, flow)
    raw = path.read_bytes()
    assert raw[:4] == b"PIEH" and struct.unpack("<ii", raw[4:12]) == (7, 5)
    assert struct.unpack("<ff", raw[12:20]) == (flow[0, 0, 0], flow[0, 0, 1])  # u, v interleaved, row-major
    assert len(raw) == 12 + 5 * 7 * 2 * 4
    read = formats.read_flo(path)
    assert read.dtype == np.float32 and read.shape == (5, 7, 2)
    np.testing.assert_array_equal(read, flow)
    assert [p.name for p in tmp_path.iterdir()] == ["a.flo"]  # the atomic write left no temporary file


def test_flo_hand_written_file(tmp_path):
    path = tmp_path / "hand.flo"
    path.write_bytes(struct.pack("<fii", 202021.25, 2, 1) + struct.pack("<4f", 1.5, -2.0, 3.0, 4.25))
    np.testing.assert_array_equal(formats.read_flo(path), [[[1.5, -2.0], [3.0, 4.25]]])


def test_flo_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.flo"):
        formats.read_flo(tmp_path / "missing.flo")


def test_flo_truncated(tmp_path, rng):
    path = tmp_path / "cut.flo"
    formats.write_flo(path, rng.normal(size=(4, 4, 2)))
    path.write_bytes(path.read_bytes()[:-6])
    with pytest.raises(ValueError, match=r"cut\.flo.*truncated"):
        formats.read_flo(path)
    path.write_bytes(b"PIEH\x01")
    with pytest.raises(ValueError, match=r"cut\.flo.*truncated \.flo header"):
        formats.read_flo(path)


def test_flo_wrong_tag(tmp_path):
    path = tmp_path / "bad.flo"
    path.write_bytes(struct.pack("<fii", 1.0, 1, 1) + struct.pack("<2f", 0, 0))
    with pytest.raises(ValueError, match=r"bad\.flo.*wrong \.flo tag"):
        formats.read_flo(path)


def test_flo_bad_size_and_trailing_bytes(tmp_path):
    path = tmp_path / "size.flo"
    path.write_bytes(struct.pack("<fii", 202021.25, -3, 2))
    with pytest.raises(ValueError, match="invalid .flo header size"):
        formats.read_flo(path)
    path.write_bytes(struct.pack("<fii", 202021.25, 1, 1) + struct.pack("<3f", 0, 0, 0))
    with pytest.raises(ValueError, match="trailing bytes"):
        formats.read_flo(path)


def test_write_flo_rejects_wrong_shape(tmp_path):
    with pytest.raises(ValueError, match=r"\[H, W, 2\]"):
        formats.write_flo(tmp_path / "x.flo", np.zeros((4, 4, 3)))


# ----------------------------------------------------------------------------------------------- .pfm
@pytest.mark.parametrize("little_endian", [True, False])
@pytest.mark.parametrize("shape", [(6, 5), (6, 5, 3)])
def test_pfm_round_trip(tmp_path, rng, little_endian, shape):
    data = rng.normal(size=shape).astype(np.float32)
    path = tmp_path / "a.pfm"
    formats.write_pfm(path, data, little_endian=little_endian)
    raw = path.read_bytes()
    assert raw.startswith(b"PF\n" if len(shape) == 3 else b"Pf\n")
    assert (b"\n-1.0\n" in raw) == little_endian
    read = formats.read_pfm(path)
    assert read.dtype == np.float32 and read.shape == shape
    np.testing.assert_array_equal(read, data)


def test_pfm_rows_are_bottom_to_top(tmp_path):
    path = tmp_path / "hand.pfm"
    # 2 x 2 big-endian greyscale: stored rows are the bottom row (3, 4) then the top row (1, 2).
    path.write_bytes(b"Pf\n2 2\n1.0\n" + struct.pack(">4f", 3, 4, 1, 2))
    np.testing.assert_array_equal(formats.read_pfm(path), [[1, 2], [3, 4]])


def test_pfm_wrong_header(tmp_path):
    path = tmp_path / "bad.pfm"
    path.write_bytes(b"P6\n2 2\n255\n" + bytes(12))
    with pytest.raises(ValueError, match=r"bad\.pfm.*wrong PFM header"):
        formats.read_pfm(path)
    path.write_bytes(b"PF\n2 2\nabc\n" + bytes(48))
    with pytest.raises(ValueError, match=r"bad\.pfm.*not a number"):
        formats.read_pfm(path)
    path.write_bytes(b"Pf\n2 2\n0\n" + bytes(16))
    with pytest.raises(ValueError, match="non-zero"):
        formats.read_pfm(path)


def test_pfm_truncated(tmp_path):
    path = tmp_path / "cut.pfm"
    path.write_bytes(b"PF\n4 3\n-1.0\n" + bytes(4 * 3 * 3 * 4 - 1))
    with pytest.raises(ValueError, match=r"cut\.pfm.*truncated"):
        formats.read_pfm(path)


def test_read_flow_dispatch(tmp_path, rng):
    flow = rng.normal(size=(4, 6, 2)).astype(np.float32)
    three_channels = np.concatenate([flow, np.zeros_like(flow[..., :1])], axis=2)
    formats.write_pfm(tmp_path / "things.pfm", three_channels)
    read, valid = formats.read_flow(tmp_path / "things.pfm")
    assert valid is None and read.shape == (4, 6, 2)
    np.testing.assert_array_equal(read, flow)
    for name in ("a.flo", "b.pfm"):
        formats.write_flow(tmp_path / name, flow)
        np.testing.assert_array_equal(formats.read_flow(tmp_path / name)[0], flow)
    formats.write_pfm(tmp_path / "grey.pfm", flow[..., 0])
    with pytest.raises(ValueError, match="3 channels"):
        formats.read_flow(tmp_path / "grey.pfm")
    with pytest.raises(ValueError, match="unknown flow file extension"):
        formats.read_flow(tmp_path / "flow.npy")


# ----------------------------------------------------------------------------------------------- KITTI
def test_kitti_flow_round_trip_with_valid(tmp_path, rng):
    flow = (np.round(rng.normal(scale=50, size=(5, 8, 2)) * 64) / 64).astype(np.float32)
    valid = (rng.random((5, 8)) > 0.4).astype(np.float32)
    path = tmp_path / "000000_10.png"
    formats.write_kitti_flow(path, flow, valid)
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw.shape == (5, 8, 3)
    y, x = np.argwhere(valid)[0]
    assert raw[y, x, 2] == round(flow[y, x, 0] * 64 + 2**15)  # red = u (OpenCV stores BGR)
    assert raw[y, x, 0] == 1  # blue = valid
    read, read_valid = formats.read_kitti_flow(path)
    np.testing.assert_array_equal(read_valid, valid)
    np.testing.assert_array_equal(read, flow * valid[..., None])
    read, dispatched_valid = formats.read_flow(path)
    np.testing.assert_array_equal(dispatched_valid, valid)


def test_kitti_flow_hand_encoded(tmp_path):
    bgr = np.array([[[1, 2**15 - 64, 2**15 + 128], [0, 7, 9]]], np.uint16)  # (u, v) = (2, -1) valid; invalid
    path = tmp_path / "hand.png"
    cv2.imwrite(str(path), bgr)
    flow, valid = formats.read_kitti_flow(path)
    np.testing.assert_array_equal(flow, [[[2.0, -1.0], [0.0, 0.0]]])
    np.testing.assert_array_equal(valid, [[1.0, 0.0]])


def test_kitti_flow_rejects_8bit_png(tmp_path):
    path = tmp_path / "eight.png"
    cv2.imwrite(str(path), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"eight\.png.*16-bit.*8-bit"):
        formats.read_kitti_flow(path)
    with pytest.raises(ValueError, match=r"eight\.png.*16-bit.*8-bit"):
        formats.read_kitti_disparity(path)


def test_kitti_flow_write_out_of_range(tmp_path):
    with pytest.raises(ValueError, match="KITTI range"):
        formats.write_kitti_flow(tmp_path / "x.png", np.full((2, 2, 2), 600.0))
    formats.write_kitti_flow(tmp_path / "y.png", np.full((2, 2, 2), 600.0), valid=np.zeros((2, 2)))
    assert formats.read_kitti_flow(tmp_path / "y.png")[1].sum() == 0


def test_kitti_disparity_round_trip(tmp_path, rng):
    disparity = (np.round(rng.uniform(0, 200, size=(6, 9)) * 256) / 256).astype(np.float32)
    disparity[0, :3] = 0.0  # missing measurements
    path = tmp_path / "disp.png"
    formats.write_kitti_disparity(path, disparity)
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw.ndim == 2
    assert raw[1, 1] == round(disparity[1, 1] * 256)
    read, valid = formats.read_kitti_disparity(path)
    np.testing.assert_array_equal(read, disparity)
    np.testing.assert_array_equal(valid, disparity > 0)
    formats.write_kitti_flow(tmp_path / "flow.png", np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="single-channel"):
        formats.read_kitti_disparity(tmp_path / "flow.png")


def test_kitti_unreadable_png(tmp_path):
    path = tmp_path / "junk.png"
    path.write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=r"junk\.png.*cannot decode"):
        formats.read_kitti_flow(path)


# ----------------------------------------------------------------------------------------------- Sintel
def test_dpt_round_trip_and_errors(tmp_path, rng):
    depth = rng.uniform(0.1, 100, size=(4, 7)).astype(np.float32)
    path = tmp_path / "frame_0001.dpt"
    formats.write_dpt(path, depth)
    assert path.read_bytes()[:12] == struct.pack("<fii", 202021.25, 7, 4)
    np.testing.assert_array_equal(formats.read_dpt(path), depth)
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(ValueError, match=r"frame_0001\.dpt.*truncated"):
        formats.read_dpt(path)
    path.write_bytes(struct.pack("<fii", 3.0, 1, 1) + bytes(4))
    with pytest.raises(ValueError, match="wrong .dpt tag"):
        formats.read_dpt(path)
    with pytest.raises(FileNotFoundError, match="nothing.dpt"):
        formats.read_dpt(tmp_path / "nothing.dpt")


def test_sintel_camera_round_trip(tmp_path, rng):
    intrinsics, extrinsics = rng.normal(size=(3, 3)), rng.normal(size=(3, 4))
    path = tmp_path / "frame_0001.cam"
    formats.write_sintel_camera(path, intrinsics, extrinsics)
    read_k, read_rt = formats.read_sintel_camera(path)
    np.testing.assert_array_equal(read_k, intrinsics)
    np.testing.assert_array_equal(read_rt, extrinsics)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated"):
        formats.read_sintel_camera(path)


def test_mask_round_trip(tmp_path, rng):
    mask = rng.random((5, 6)) > 0.5
    formats.write_mask(tmp_path / "occ.png", mask)
    assert cv2.imread(str(tmp_path / "occ.png"), cv2.IMREAD_UNCHANGED).max() == 255
    np.testing.assert_array_equal(formats.read_mask(tmp_path / "occ.png"), mask)


# ----------------------------------------------------------------------------------------------- images
def test_read_image_channels(tmp_path, rng):
    rgb = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    formats.write_image(tmp_path / "rgb.png", rgb)
    np.testing.assert_array_equal(formats.read_image(tmp_path / "rgb.png"), rgb)
    formats.write_image(tmp_path / "rgb.ppm", rgb)
    np.testing.assert_array_equal(formats.read_image(tmp_path / "rgb.ppm"), rgb)
    grey = rgb[..., 0]
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    np.testing.assert_array_equal(formats.read_image(tmp_path / "grey.png"), np.repeat(grey[..., None], 3, axis=2))
    bgra = np.concatenate([rgb[..., ::-1], np.full((4, 5, 1), 7, np.uint8)], axis=2)
    cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
    np.testing.assert_array_equal(formats.read_image(tmp_path / "rgba.png"), rgb)


def test_read_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="gone.png"):
        formats.read_image(tmp_path / "gone.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match=r"broken\.png.*cannot decode"):
        formats.read_image(tmp_path / "broken.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.jpg"):
        formats.read_image(tmp_path / "empty.jpg")


def test_write_into_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        formats.write_flo(tmp_path / "no" / "a.flo", np.zeros((2, 2, 2)))
