"""Atomic file output: a crash or an error never leaves a half-written checkpoint, flow file or video behind."""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``path`` (same suffix, so writers that pick a format by the file
    extension still work); when the block succeeds, move it onto ``path`` with the permissions a plain ``open``
    would give; when it raises, delete it and leave ``path`` untouched.

        with atomic_path("out/flow.png") as tmp:
            cv2.imwrite(str(tmp), image)
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist")
    temporary = temporary_path_beside(path)
    try:
        yield temporary
        publish(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def temporary_path_beside(path: Path) -> Path:
    """A unique hidden name in the folder of ``path`` (same file system, so the final rename is atomic)."""
    return path.parent / f".{path.stem}.{uuid.uuid4().hex[:12]}.tmp{path.suffix}"


def publish(temporary: Path, path: Path) -> None:
    """Move a finished temporary file onto ``path``, with the permissions a plain ``open`` would have given."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    os.replace(temporary, path)


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(payload)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))
