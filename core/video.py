"""Streaming video I/O for the downstream tools (``scripts/stabilize.py``, ``scripts/track.py``).

A clip is either a video file (anything OpenCV's FFmpeg backend decodes: .mp4, .avi, .mov, ...) or a folder of
frame images (sorted by file name). :func:`open_frames` checks the clip up front (it exists, it decodes, it has at
least :data:`MIN_FRAMES` frames) and returns a :class:`FrameSource`: iterating it decodes the frames one at a time,
as ``uint8 [H, W, 3]`` RGB, so a long video is never held in memory. Every iteration starts again from the first
frame (a tool may read a clip twice instead of keeping it).

:class:`VideoWriter` writes an ``mp4v`` .mp4 atomically: frames go to a hidden temporary file beside the
destination, which replaces the destination only when the writer is closed without an error, so an interrupted
run never leaves a truncated video under the final name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
from loguru import logger

from core.data.formats import read_image
from core.utils.atomic import publish, temporary_path_beside

MIN_FRAMES = 2
DEFAULT_FPS = 10.0  # frame folders carry no frame rate
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")


class VideoError(ValueError):
    """A clip that cannot be used: unreadable, undecodable, too short or with frames of different sizes."""


@dataclass(frozen=True)
class FrameSource:
    """A clip that can be read lazily, any number of times.

    Attributes:
        path: the video file or frame folder.
        kind: ``"video"`` or ``"folder"``.
        frame_count: number of frames if known (exact for a folder; the container's count for a video, which some
            formats only estimate), capped by ``max_frames``; None if the container does not say.
        fps: frames per second (:data:`DEFAULT_FPS` for a folder or a video that does not say).
        height, width: size of the first frame in pixels (every frame must have it).
        max_frames: read at most this many frames (None = all).
        files: the frame files of a folder, in reading order.
    """

    path: Path
    kind: str
    frame_count: int | None
    fps: float
    height: int
    width: int
    max_frames: int | None = None
    files: tuple[Path, ...] = field(default=(), repr=False)

    @property
    def name(self) -> str:
        return self.path.stem if self.kind == "video" else self.path.name

    def __iter__(self) -> Iterator[np.ndarray]:
        frames = self._folder_frames() if self.kind == "folder" else self._video_frames()
        for index, frame in enumerate(frames):
            if self.max_frames is not None and index >= self.max_frames:
                return
            if frame.shape[:2] != (self.height, self.width):
                raise VideoError(f"{self.path}: frame {index} is {frame.shape[1]}x{frame.shape[0]}, the first frame "
                                 f"is {self.width}x{self.height}; all frames of a clip must have one size")
            yield frame

    def _folder_frames(self) -> Iterator[np.ndarray]:
        for file in self.files:
            yield _read_frame_file(file)

    def _video_frames(self) -> Iterator[np.ndarray]:
        capture = _open_capture(self.path)
        try:
            while True:
                ok, frame = capture.read()
                if not ok:
                    return
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        finally:
            capture.release()


def _read_frame_file(path: Path) -> np.ndarray:
    try:
        return read_image(path)
    except (OSError, ValueError) as err:
        raise VideoError(f"cannot read frame {path}: {err}") from None


def _open_capture(path: Path) -> cv2.VideoCapture:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise VideoError(f"{path}: cannot open the video (not a video file, corrupted, or a codec OpenCV lacks)")
    return capture


def _too_short(path: Path, count: int) -> VideoError:
    return VideoError(f"{path}: the clip has {count} readable frame{'s' if count != 1 else ''}; "
                      f"at least {MIN_FRAMES} are needed")


def open_frames(path: str | os.PathLike, max_frames: int | None = None) -> FrameSource:
    """Open a video file or a folder of frames for lazy reading, after checking that it is usable.

    The first :data:`MIN_FRAMES` frames are decoded once here, so an unreadable file or a clip that is too short
    fails now, with a message naming the path, instead of in the middle of a run.

    Args:
        path: a video file or a folder of images (``IMAGE_SUFFIXES``, read in file-name order).
        max_frames: read only the first ``max_frames`` frames (must be >= MIN_FRAMES).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        VideoError: the file does not decode, the folder has no frames, or the clip is shorter than MIN_FRAMES.
        ValueError: a bad ``max_frames``.
    """
    path = Path(path)
    if max_frames is not None and max_frames < MIN_FRAMES:
        raise ValueError(f"max_frames must be >= {MIN_FRAMES}, got {max_frames}")
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    if path.is_dir():
        files = tuple(sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        if len(files) < MIN_FRAMES:
            raise VideoError(f"{path}: the folder has {len(files)} frame image{'s' if len(files) != 1 else ''} "
                             f"({', '.join(IMAGE_SUFFIXES)}); at least {MIN_FRAMES} are needed")
        if max_frames is not None:
            files = files[:max_frames]
        height, width = _read_frame_file(files[0]).shape[:2]
        return FrameSource(path, "folder", len(files), DEFAULT_FPS, height, width, max_frames, files)

    capture = _open_capture(path)
    try:
        fps = capture.get(cv2.CAP_PROP_FPS)
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        first = [frame for ok, frame in (capture.read() for _ in range(MIN_FRAMES)) if ok]
    finally:
        capture.release()
    if not first:
        raise VideoError(f"{path}: no frame could be decoded (not a video file, corrupted, or an unsupported codec)")
    if len(first) < MIN_FRAMES:
        raise _too_short(path, len(first))
    frame_count = count if count >= MIN_FRAMES else None
    if frame_count is not None and max_frames is not None:
        frame_count = min(frame_count, max_frames)
    fps = float(fps) if fps and np.isfinite(fps) and fps > 0 else DEFAULT_FPS
    height, width = first[0].shape[:2]
    return FrameSource(path, "video", frame_count, fps, height, width, max_frames)


def count_frames(path: str | os.PathLike) -> int:
    """The number of frames that actually decode (reads the whole clip, one frame at a time)."""
    return sum(1 for _ in open_frames(path))


class VideoWriter:
    """An .mp4 (``mp4v``) written atomically; use as a context manager or call :meth:`close` / :meth:`abort`.

    The frame size is fixed by the first frame (``uint8 [H, W, 3]`` RGB); odd sizes are padded to even ones by
    repeating the last row / column (the MPEG-4 encoder would otherwise drop them). On :meth:`close` the
    temporary file replaces ``path``; on :meth:`abort` (or an exception inside the ``with`` block) it is deleted
    and ``path`` is left as it was.
    """

    def __init__(self, path: str | os.PathLike, fps: float):
        self.path = Path(path)
        if self.path.suffix.lower() != ".mp4":
            raise ValueError(f"output video {self.path} must end in .mp4")
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"cannot write {self.path}: folder {self.path.parent} does not exist")
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.fps = float(fps)
        self.frames = 0
        self._size: tuple[int, int] | None = None  # (height, width) of the frames given to write()
        self._writer: cv2.VideoWriter | None = None
        # a unique hidden name beside the destination (same file system, so the final rename is atomic); it must
        # end in .mp4 for OpenCV to pick the container
        self._temp = temporary_path_beside(self.path)

    def write(self, frame: np.ndarray) -> None:
        """Append one ``uint8 [H, W, 3]`` RGB frame."""
        if self._temp is None:
            raise ValueError(f"{self.path}: the writer is already closed")
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"{self.path}: frames must be uint8 [H, W, 3] RGB, got {frame.dtype} {frame.shape}")
        if self._writer is None:
            self._size = frame.shape[:2]
            height, width = (s + s % 2 for s in self._size)
            self._writer = cv2.VideoWriter(str(self._temp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (width, height))
            if not self._writer.isOpened():
                self.abort()
                raise OSError(f"cannot write {self.path}: OpenCV has no mp4v encoder here")
            if (height, width) != self._size:
                logger.info(f"{self.path.name}: {self._size[1]}x{self._size[0]} padded to {width}x{height} "
                            "(mp4v needs even sizes)")
        if frame.shape[:2] != self._size:
            raise ValueError(f"{self.path}: frame of {frame.shape[1]}x{frame.shape[0]} does not fit the video "
                             f"({self._size[1]}x{self._size[0]})")
        bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        pad_rows, pad_cols = self._size[0] % 2, self._size[1] % 2
        if pad_rows or pad_cols:
            bgr = cv2.copyMakeBorder(bgr, 0, pad_rows, 0, pad_cols, cv2.BORDER_REPLICATE)
        self._writer.write(bgr)
        self.frames += 1

    def close(self) -> Path:
        """Finish the file and move it into place; returns ``path``. A writer that got no frame writes nothing."""
        if self._temp is None:
            return self.path
        if self._writer is None:
            self.abort()
            raise ValueError(f"{self.path}: no frame was written")
        self._writer.release()
        publish(self._temp, self.path)
        self._temp, self._writer = None, None
        return self.path

    def abort(self) -> None:
        """Drop the temporary file; ``path`` is not touched."""
        if self._writer is not None:
            self._writer.release()
        if self._temp is not None:
            self._temp.unlink(missing_ok=True)
        self._temp, self._writer = None, None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
