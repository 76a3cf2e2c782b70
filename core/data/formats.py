"""File formats of the optical-flow and depth benchmarks (RAFT's ``frame_utils``, rewritten with strict checks).

Pure functions, one reader and one writer per format. Readers return numpy arrays in the layout the datasets use
(images ``uint8 [H, W, 3]`` RGB, flow ``float32 [H, W, 2]`` with channel 0 = u (x, right) and 1 = v (y, down), in
pixels) and raise a clear error naming the file for anything unexpected (missing file, wrong magic number,
truncated data, wrong header, wrong bit depth): they never return garbage. Writers are atomic: the bytes go to a
temporary file in the destination folder, which then replaces the destination (``os.replace``), so a crash never
leaves a half-written file. Binary formats are little-endian (PFM can also be written big-endian).

Formats:
    * Middlebury ``.flo`` (FlyingChairs, Sintel flow): float32 tag 202021.25, int32 width, int32 height,
      float32 (u, v) interleaved row by row.
    * ``.pfm`` (FlyingThings3D flow and disparity): text header ``PF`` (3 channels) or ``Pf`` (1 channel),
      ``width height``, scale (negative = little-endian); float32 rows stored bottom-to-top.
    * KITTI 16-bit PNG flow: R = u, G = v, B = valid, value = (I - 2**15) / 64.
    * KITTI 16-bit PNG disparity / depth: value = I / 256, 0 = invalid.
    * Sintel ``.dpt`` depth: float32 tag 202021.25, int32 width, int32 height, float32 depth.
    * Virtual KITTI 2 16-bit PNG depth: value = I / 100 m, I = 65535 (far plane, sky) and I = 0 invalid.
    * Sintel ``.cam`` camera: float32 tag 202021.25, float64 intrinsics [3, 3], float64 extrinsics [3, 4].
    * Sintel occlusion / invalid masks: 8-bit grey PNG, non-zero = set.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Union

import cv2
import numpy as np

from core.utils.atomic import atomic_write_bytes

PathLike = Union[str, os.PathLike]

FLO_TAG = 202021.25  # Middlebury / Sintel "PIEH" sanity tag (the bytes b"PIEH" read as a float32)
KITTI_FLOW_OFFSET = 2.0**15
KITTI_FLOW_SCALE = 64.0
KITTI_DISPARITY_SCALE = 256.0
VKITTI_DEPTH_SCALE = 100.0  # Virtual KITTI 2 depth PNGs store centimetres
VKITTI_FAR_PLANE = 65535  # code of the far plane (sky) in Virtual KITTI 2 depth PNGs: no depth there
_UINT16_MAX = np.iinfo(np.uint16).max
_FLO_HEADER = np.dtype([("tag", "<f4"), ("width", "<i4"), ("height", "<i4")])
_CAM_SIZE = 4 + 9 * 8 + 12 * 8
_PFM_HEADER = re.compile(rb"\A(P[Ff])\s+(\d+)\s+(\d+)\s+(\S+)\s")
_MAX_PIXELS = 1 << 28  # sanity bound on header sizes (far above any benchmark frame)


# ----------------------------------------------------------------------------------------------- helpers
def _read_bytes(path: PathLike, what: str) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    return path.read_bytes()


def _check_size(path: PathLike, what: str, width: int, height: int) -> None:
    if width <= 0 or height <= 0 or width * height > _MAX_PIXELS:
        raise ValueError(f"{path}: invalid {what} header size width={width}, height={height}")


def _check_payload(path: PathLike, what: str, payload: bytes, expected: int) -> None:
    if len(payload) < expected:
        raise ValueError(f"{path}: truncated {what} data: expected {expected} bytes of data, found {len(payload)}")
    if len(payload) > expected:
        raise ValueError(
            f"{path}: {len(payload) - expected} unexpected trailing bytes after the {what} data "
            f"(header says {expected} bytes)"
        )


def _as_float_array(data, name: str, ndim: tuple[int, ...], channels: int | None = None) -> np.ndarray:
    array = np.asarray(data)
    if array.ndim not in ndim or (channels is not None and array.shape[-1] != channels):
        expected = f"[H, W, {channels}]" if channels is not None else " or ".join(f"{n}-d" for n in ndim)
        raise ValueError(f"{name} must be {expected}, got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} must not be empty, got shape {array.shape}")
    return array.astype(np.float32, copy=False)


def _decode_png(path: PathLike, what: str) -> np.ndarray:
    payload = np.frombuffer(_read_bytes(path, what), dtype=np.uint8)
    image = cv2.imdecode(payload, cv2.IMREAD_UNCHANGED) if payload.size else None
    if image is None:
        raise ValueError(f"{path}: cannot decode {what} (not an image file or corrupted)")
    return image


def _encode(path: PathLike, image: np.ndarray, extension: str) -> bytes:
    ok, buffer = cv2.imencode(extension, image)
    if not ok:
        raise ValueError(f"cannot encode {path} as {extension} (dtype {image.dtype}, shape {image.shape})")
    return buffer.tobytes()


def _require_uint16(path: PathLike, what: str, image: np.ndarray) -> None:
    if image.dtype != np.uint16:
        bits = 8 * image.dtype.itemsize
        raise ValueError(f"{path}: {what} must be a 16-bit PNG, found a {bits}-bit image ({image.dtype})")


# ----------------------------------------------------------------------------------------------- images
def read_image(path: PathLike) -> np.ndarray:
    """Read an image (png, jpg, ppm, ...) as ``uint8 [H, W, 3]`` RGB.

    Grey images are repeated to three channels, an alpha channel is dropped, 16-bit images are scaled to 8 bits.
    """
    image = _decode_png(path, "image")
    if image.dtype == np.uint16:
        image = np.round(image / 257.0).astype(np.uint8)
    if image.dtype != np.uint8:
        raise ValueError(f"{path}: unsupported image dtype {image.dtype} (expected 8- or 16-bit)")
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if image.shape[2] in (3, 4):
        return np.ascontiguousarray(image[..., 2::-1])  # BGR(A) -> RGB
    raise ValueError(f"{path}: unsupported number of image channels {image.shape[2]}")


def write_image(path: PathLike, image: np.ndarray) -> None:
    """Write a ``uint8 [H, W, 3]`` RGB (or ``[H, W]`` grey) image; the extension selects the format."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"image for {path} must be uint8 [H, W, 3] or [H, W], got {image.dtype} {image.shape}")
    pixels = image[..., ::-1] if image.ndim == 3 else image
    atomic_write_bytes(path, _encode(path, np.ascontiguousarray(pixels), Path(path).suffix or ".png"))


# ----------------------------------------------------------------------------------------------- .flo
def read_flo(path: PathLike) -> np.ndarray:
    """Read a Middlebury ``.flo`` file as ``float32 [H, W, 2]`` (u, v) in pixels."""
    payload = _read_bytes(path, ".flo flow")
    if len(payload) < _FLO_HEADER.itemsize:
        raise ValueError(f"{path}: truncated .flo header ({len(payload)} bytes, need {_FLO_HEADER.itemsize})")
    header = np.frombuffer(payload, _FLO_HEADER, count=1)[0]
    if header["tag"] != np.float32(FLO_TAG):
        raise ValueError(f"{path}: wrong .flo tag {float(header['tag'])!r} (expected {FLO_TAG}, bytes 'PIEH')")
    width, height = int(header["width"]), int(header["height"])
    _check_size(path, ".flo", width, height)
    data = payload[_FLO_HEADER.itemsize :]
    _check_payload(path, ".flo", data, height * width * 2 * 4)
    return np.frombuffer(data, "<f4").reshape(height, width, 2).astype(np.float32)


def write_flo(path: PathLike, flow: np.ndarray) -> None:
    """Write ``flow`` [H, W, 2] (u, v) as a Middlebury ``.flo`` file."""
    flow = _as_float_array(flow, "flow", ndim=(3,), channels=2)
    header = np.array([(FLO_TAG, flow.shape[1], flow.shape[0])], dtype=_FLO_HEADER)
    atomic_write_bytes(path, header.tobytes() + flow.astype("<f4").tobytes())


# ----------------------------------------------------------------------------------------------- .pfm
def read_pfm(path: PathLike) -> np.ndarray:
    """Read a ``.pfm`` file as ``float32 [H, W]`` ('Pf') or ``[H, W, 3]`` ('PF'), top row first."""
    payload = _read_bytes(path, ".pfm")
    match = _PFM_HEADER.match(payload)
    if match is None:
        raise ValueError(f"{path}: wrong PFM header {payload[:32]!r} (expected 'PF' or 'Pf', width height, scale)")
    channels = 3 if match.group(1) == b"PF" else 1
    width, height = int(match.group(2)), int(match.group(3))
    _check_size(path, "PFM", width, height)
    try:
        scale = float(match.group(4))
    except ValueError:
        raise ValueError(f"{path}: wrong PFM header, scale {match.group(4)!r} is not a number") from None
    if scale == 0.0 or not np.isfinite(scale):
        raise ValueError(f"{path}: wrong PFM header, scale must be a non-zero number (sign = endianness), got {scale}")
    data = payload[match.end() :]
    _check_payload(path, "PFM", data, height * width * channels * 4)
    dtype = "<f4" if scale < 0 else ">f4"
    shape = (height, width, channels) if channels == 3 else (height, width)
    return np.flipud(np.frombuffer(data, dtype).reshape(shape)).astype(np.float32)


def write_pfm(path: PathLike, data: np.ndarray, little_endian: bool = True) -> None:
    """Write ``data`` float [H, W] or [H, W, 3] as ``.pfm`` (rows bottom-to-top, scale magnitude 1)."""
    data = _as_float_array(data, "PFM data", ndim=(2, 3))
    if data.ndim == 3 and data.shape[2] != 3:
        raise ValueError(f"PFM data must be [H, W] or [H, W, 3], got shape {data.shape} (pad flow to 3 channels)")
    magic = b"PF" if data.ndim == 3 else b"Pf"
    header = magic + b"\n%d %d\n%s\n" % (data.shape[1], data.shape[0], b"-1.0" if little_endian else b"1.0")
    rows = np.flipud(data).astype("<f4" if little_endian else ">f4")
    atomic_write_bytes(path, header + rows.tobytes())


# ----------------------------------------------------------------------------------------------- KITTI PNG
def read_kitti_flow(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read KITTI 16-bit PNG flow: ``(flow float32 [H, W, 2], valid float32 [H, W] in {0, 1})``.

    Flow is set to 0 where it is not valid (the file stores no information there).
    """
    image = _decode_png(path, "KITTI flow PNG")
    _require_uint16(path, "KITTI flow", image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{path}: KITTI flow PNG must have 3 channels (u, v, valid), got shape {image.shape}")
    rgb = image[..., ::-1]  # OpenCV decodes to BGR
    valid = (rgb[..., 2] > 0).astype(np.float32)
    flow = (rgb[..., :2].astype(np.float32) - KITTI_FLOW_OFFSET) / KITTI_FLOW_SCALE
    return flow * valid[..., None], valid


def write_kitti_flow(path: PathLike, flow: np.ndarray, valid: np.ndarray | None = None) -> None:
    """Write ``flow`` [H, W, 2] as a KITTI 16-bit PNG; ``valid`` [H, W] (default: all valid).

    Raises:
        ValueError: a valid flow value is outside the representable range [-512, 512).
    """
    flow = _as_float_array(flow, "flow", ndim=(3,), channels=2)
    valid_mask = np.ones(flow.shape[:2], bool) if valid is None else np.asarray(valid) > 0
    if valid_mask.shape != flow.shape[:2]:
        raise ValueError(f"valid must be [H, W] = {flow.shape[:2]}, got {valid_mask.shape}")
    encoded = np.round(flow * KITTI_FLOW_SCALE + KITTI_FLOW_OFFSET)
    valid_values = encoded[valid_mask]
    if valid_values.size and not (np.isfinite(valid_values).all() and valid_values.min() >= 0
                                  and valid_values.max() <= _UINT16_MAX):
        raise ValueError(f"flow for {path} has valid values outside the KITTI range [-512, 512) or non-finite")
    encoded = np.where(valid_mask[..., None], encoded, 0.0)
    rgb = np.concatenate([encoded, valid_mask[..., None].astype(np.float64)], axis=2).astype(np.uint16)
    atomic_write_bytes(path, _encode(path, np.ascontiguousarray(rgb[..., ::-1]), ".png"))


def read_kitti_disparity(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a KITTI 16-bit PNG disparity (or depth) map: ``(values float32 [H, W], valid float32 [H, W])``.

    value = I / 256; I = 0 marks a missing measurement (valid = 0, value = 0).
    """
    image = _decode_png(path, "KITTI disparity PNG")
    _require_uint16(path, "KITTI disparity/depth", image)
    if image.ndim != 2:
        raise ValueError(f"{path}: KITTI disparity/depth PNG must be single-channel, got shape {image.shape}")
    return image.astype(np.float32) / KITTI_DISPARITY_SCALE, (image > 0).astype(np.float32)


def write_kitti_disparity(path: PathLike, disparity: np.ndarray, valid: np.ndarray | None = None) -> None:
    """Write disparity (or depth) [H, W] as a KITTI 16-bit PNG (I = round(256 value), 0 = invalid).

    ``valid`` defaults to ``disparity > 0``. A valid value below 1/512 is stored as the smallest code 1 so that it
    stays valid. Raises ValueError for valid values that are negative, non-finite or above 65535 / 256.
    """
    disparity = _as_float_array(disparity, "disparity", ndim=(2,))
    valid_mask = disparity > 0 if valid is None else np.asarray(valid) > 0
    if valid_mask.shape != disparity.shape:
        raise ValueError(f"valid must be [H, W] = {disparity.shape}, got {valid_mask.shape}")
    valid_values = disparity[valid_mask]
    if valid_values.size and not (np.isfinite(valid_values).all() and valid_values.min() >= 0
                                  and valid_values.max() <= _UINT16_MAX / KITTI_DISPARITY_SCALE):
        raise ValueError(f"disparity for {path} has valid values outside [0, {_UINT16_MAX / 256:.3f}] or non-finite")
    codes = np.clip(np.round(np.where(valid_mask, disparity, 0.0) * KITTI_DISPARITY_SCALE), 1, _UINT16_MAX)
    atomic_write_bytes(path, _encode(path, np.where(valid_mask, codes, 0).astype(np.uint16), ".png"))


# ----------------------------------------------------------------------------------------------- Sintel
def read_dpt(path: PathLike) -> np.ndarray:
    """Read a Sintel ``.dpt`` depth file as ``float32 [H, W]``."""
    payload = _read_bytes(path, ".dpt depth")
    if len(payload) < _FLO_HEADER.itemsize:
        raise ValueError(f"{path}: truncated .dpt header ({len(payload)} bytes, need {_FLO_HEADER.itemsize})")
    header = np.frombuffer(payload, _FLO_HEADER, count=1)[0]
    if header["tag"] != np.float32(FLO_TAG):
        raise ValueError(f"{path}: wrong .dpt tag {float(header['tag'])!r} (expected {FLO_TAG})")
    width, height = int(header["width"]), int(header["height"])
    _check_size(path, ".dpt", width, height)
    data = payload[_FLO_HEADER.itemsize :]
    _check_payload(path, ".dpt", data, height * width * 4)
    return np.frombuffer(data, "<f4").reshape(height, width).astype(np.float32)


def write_dpt(path: PathLike, depth: np.ndarray) -> None:
    """Write ``depth`` [H, W] as a Sintel ``.dpt`` file."""
    depth = _as_float_array(depth, "depth", ndim=(2,))
    header = np.array([(FLO_TAG, depth.shape[1], depth.shape[0])], dtype=_FLO_HEADER)
    atomic_write_bytes(path, header.tobytes() + depth.astype("<f4").tobytes())


def read_sintel_depth(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a Sintel ``.dpt`` depth map: ``(depth float32 [H, W], valid float32 [H, W])``; valid = finite and > 0,
    depth 0 where invalid."""
    depth = read_dpt(path)
    valid = np.isfinite(depth) & (depth > 0)
    return np.where(valid, depth, np.float32(0.0)).astype(np.float32), valid.astype(np.float32)


# ----------------------------------------------------------------------------------------------- Virtual KITTI 2
def read_vkitti_depth(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a Virtual KITTI 2 depth PNG: ``(depth float32 [H, W] metres, valid float32 [H, W])``.

    The file is a single-channel 16-bit PNG of centimetres; code 65535 (far plane / sky) and code 0 are invalid
    (depth 0 there).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a single-channel 16-bit PNG (e.g. an 8-bit visualisation).
    """
    codes = _decode_png(path, "Virtual KITTI 2 depth PNG")
    _require_uint16(path, "Virtual KITTI 2 depth (centimetres)", codes)
    if codes.ndim != 2:
        raise ValueError(f"{path}: Virtual KITTI 2 depth must be single-channel, got shape {codes.shape}")
    valid = (codes > 0) & (codes < VKITTI_FAR_PLANE)
    depth = np.where(valid, codes.astype(np.float32) / VKITTI_DEPTH_SCALE, np.float32(0.0))
    return depth.astype(np.float32), valid.astype(np.float32)


def read_sintel_camera(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a Sintel ``.cam`` file: ``(intrinsics float64 [3, 3], extrinsics float64 [3, 4] world-to-camera)``."""
    payload = _read_bytes(path, ".cam camera")
    if len(payload) != _CAM_SIZE:
        raise ValueError(f"{path}: a Sintel .cam file has {_CAM_SIZE} bytes, found {len(payload)} (truncated?)")
    tag = np.frombuffer(payload, "<f4", count=1)[0]
    if tag != np.float32(FLO_TAG):
        raise ValueError(f"{path}: wrong .cam tag {float(tag)!r} (expected {FLO_TAG})")
    matrices = np.frombuffer(payload, "<f8", offset=4).astype(np.float64)
    return matrices[:9].reshape(3, 3), matrices[9:].reshape(3, 4)


def write_sintel_camera(path: PathLike, intrinsics: np.ndarray, extrinsics: np.ndarray) -> None:
    """Write a Sintel ``.cam`` file from ``intrinsics`` [3, 3] and ``extrinsics`` [3, 4]."""
    intrinsics, extrinsics = np.asarray(intrinsics, np.float64), np.asarray(extrinsics, np.float64)
    if intrinsics.shape != (3, 3) or extrinsics.shape != (3, 4):
        raise ValueError(f"camera matrices must be [3, 3] and [3, 4], got {intrinsics.shape}, {extrinsics.shape}")
    payload = np.float32(FLO_TAG).astype("<f4").tobytes() + intrinsics.astype("<f8").tobytes()
    atomic_write_bytes(path, payload + extrinsics.astype("<f8").tobytes())


def read_mask(path: PathLike) -> np.ndarray:
    """Read an 8-bit mask PNG (Sintel ``occlusions/``, ``invalid/``) as ``bool [H, W]`` (non-zero = set)."""
    image = _decode_png(path, "mask PNG")
    if image.dtype != np.uint8:
        raise ValueError(f"{path}: mask must be an 8-bit image, found {image.dtype}")
    if image.ndim == 3:
        image = image.max(axis=2)
    return image > 0


def write_mask(path: PathLike, mask: np.ndarray) -> None:
    """Write a boolean mask [H, W] as an 8-bit grey PNG (255 = set), the Sintel convention."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask for {path} must be [H, W], got shape {mask.shape}")
    atomic_write_bytes(path, _encode(path, np.where(mask > 0, 255, 0).astype(np.uint8), ".png"))


# ----------------------------------------------------------------------------------------------- dispatch
def read_flow(path: PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Read flow by extension: ``(flow float32 [H, W, 2], valid float32 [H, W] or None)``.

    ``.flo`` and ``.pfm`` are dense (valid is None: the format stores no validity; a 3-channel PFM keeps its
    first two channels, FlyingThings3D's third channel is zero); ``.png`` is KITTI 16-bit flow with its valid mask.
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".flo":
        return read_flo(path), None
    if suffix == ".pfm":
        data = read_pfm(path)
        if data.ndim != 3:
            raise ValueError(f"{path}: flow PFM must have 3 channels ('PF'), found a single-channel 'Pf' file")
        return np.ascontiguousarray(data[..., :2]), None
    if suffix == ".png":
        return read_kitti_flow(path)
    raise ValueError(f"{path}: unknown flow file extension '{suffix}' (expected .flo, .pfm or .png)")


def write_flow(path: PathLike, flow: np.ndarray, valid: np.ndarray | None = None) -> None:
    """Write flow [H, W, 2] by extension (``.flo``, ``.pfm`` with a zero third channel, ``.png`` KITTI)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".png":
        write_kitti_flow(path, flow, valid)
        return
    if valid is not None:
        raise ValueError(f"{path}: '{suffix}' flow files cannot store a valid mask (use .png)")
    if suffix == ".flo":
        write_flo(path, flow)
    elif suffix == ".pfm":
        flow = _as_float_array(flow, "flow", ndim=(3,), channels=2)
        write_pfm(path, np.concatenate([flow, np.zeros_like(flow[..., :1])], axis=2))
    else:
        raise ValueError(f"{path}: unknown flow file extension '{suffix}' (expected .flo, .pfm or .png)")
