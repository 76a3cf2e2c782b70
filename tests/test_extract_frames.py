"""scripts/extract_frames.py: which frames it keeps, their pixels, and its errors."""

from __future__ import annotations

import numpy as np
import pytest

from core.data.formats import read_image, write_image
from core.data.synthetic import find_texture_images
from scripts import extract_frames


def _frame_folder(path, count: int) -> list[np.ndarray]:
    """A folder clip (lossless, so the extracted pixels can be compared exactly) of ``count`` distinct frames."""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(count)]
    path.mkdir()
    for index, frame in enumerate(frames):
        write_image(path / f"f{index:03d}.png", frame)
    return frames


def test_keeps_every_nth_frame_with_its_pixels(tmp_path):
    frames = _frame_folder(tmp_path / "clip", 7)
    out = tmp_path / "textures"
    assert extract_frames.main([str(tmp_path / "clip"), "--every", "3", "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["clip_0000.png", "clip_0003.png", "clip_0006.png"]
    for name in names:
        np.testing.assert_array_equal(read_image(out / name), frames[int(name[5:9])])
    assert len(find_texture_images(out)) == 3  # usable as synthetic.texture_dir


def test_one_step_per_video(tmp_path):
    _frame_folder(tmp_path / "a", 4)
    _frame_folder(tmp_path / "b", 4)
    out = tmp_path / "out"
    assert extract_frames.main([str(tmp_path / "a"), str(tmp_path / "b"), "--every", "2", "3", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_0000.png", "a_0002.png", "b_0000.png", "b_0003.png"]


def test_bad_arguments_and_missing_video(tmp_path, capsys):
    _frame_folder(tmp_path / "a", 3)
    with pytest.raises(SystemExit):
        extract_frames.main([str(tmp_path / "a"), "--every", "0", "--out", str(tmp_path / "o")])
    assert "--every must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        extract_frames.main([str(tmp_path / "a"), "--every", "1", "2", "3", "--out", str(tmp_path / "o")])
    assert "one per video (1)" in capsys.readouterr().err
    assert extract_frames.main([str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "o")]) == 2
