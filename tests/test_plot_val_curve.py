"""scripts/plot_val_curve.py: validation curves of consecutive stages from their TensorBoard logs."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter

from core.model import atomic_save
from scripts import plot_val_curve


def fake_run(work_dir: Path, validations: dict[int, float], train_steps: list[int], latest_step: int | None) -> None:
    writer = SummaryWriter(log_dir=str(work_dir / "tb"))
    for step in train_steps:
        writer.add_scalar("train/loss", 1.0, step)
    for step, epe in validations.items():
        writer.add_scalar("val/synthetic/epe", epe, step)
        writer.add_scalar("val/synthetic/3px", 1.0 - epe / 10.0, step)
    writer.close()
    if latest_step is not None:
        atomic_save({"step": latest_step}, work_dir / "checkpoints" / "latest.pth")


def test_stages_are_chained_at_their_checkpoint_step(tmp_path, capsys):
    # stage 1 logged up to step 60 in an attempt that a resume rolled back to its step-40 checkpoint
    fake_run(tmp_path / "s1", {20: 9.0, 40: 8.0, 60: 99.0}, [10, 20, 30, 40, 50, 60], latest_step=40)
    fake_run(tmp_path / "s2", {10: 7.0, 20: 6.5}, [10, 20], latest_step=None)
    out = tmp_path / "curve.png"
    assert plot_val_curve.main([str(tmp_path / "s1"), str(tmp_path / "s2"), "--metrics", "epe", "3px",
                                "--out", str(out)]) == 0
    rows = [line.split(",") for line in out.with_suffix(".csv").read_text().splitlines()]
    assert rows[0] == ["stage", "step", "total_step", "minutes", "epe", "3px"]
    assert [(r[0], r[1], r[2], r[4]) for r in rows[1:]] == [
        ("stage 1", "20", "20", "9"), ("stage 1", "40", "40", "8"), ("stage 2", "10", "50", "7"),
        ("stage 2", "20", "60", "6.5")]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert capsys.readouterr().out == out.with_suffix(".csv").read_text()


def test_missing_set_or_folder_is_a_clear_error(tmp_path, capsys):
    fake_run(tmp_path / "run", {10: 5.0}, [10], latest_step=10)
    assert plot_val_curve.main([str(tmp_path / "run"), "--set", "sintel", "--out", str(tmp_path / "c.png")]) == 2
    err = capsys.readouterr().err
    assert "val/sintel/{epe}" in err and "['synthetic']" in err
    assert plot_val_curve.main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "c.png")]) == 2
    assert "no TensorBoard folder" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()


def test_prior_stages_come_from_an_earlier_csv(tmp_path, capsys):
    fake_run(tmp_path / "s1", {20: 9.0, 40: 8.0}, [20, 40], latest_step=40)
    fake_run(tmp_path / "s2", {10: 7.0, 20: 6.5}, [10, 20], latest_step=20)
    fake_run(tmp_path / "s3", {15: 6.0, 30: 5.5}, [15, 30], latest_step=30)
    first = tmp_path / "first.png"
    assert plot_val_curve.main([str(tmp_path / "s1"), str(tmp_path / "s2"), "--metrics", "epe", "3px",
                                "--labels", "warm-up", "main", "--out", str(first)]) == 0
    (tmp_path / "s1").rename(tmp_path / "gone1")  # their run folders are gone; the CSV stays
    out = tmp_path / "all.png"
    assert plot_val_curve.main([str(tmp_path / "s3"), "--prior", str(first.with_suffix(".csv")), "--metrics", "epe",
                                "3px", "--out", str(out)]) == 0
    rows = [line.split(",") for line in out.with_suffix(".csv").read_text().splitlines()]
    assert [(r[0], r[1], r[2], r[4]) for r in rows[1:]] == [
        ("warm-up", "20", "20", "9"), ("warm-up", "40", "40", "8"), ("main", "10", "50", "7"),
        ("main", "20", "60", "6.5"), ("stage 3", "15", "75", "6"), ("stage 3", "30", "90", "5.5")]
    points, boundaries = plot_val_curve.collect([tmp_path / "s3"], "synthetic", ["epe"],
                                                plot_val_curve.read_prior(first.with_suffix(".csv"), ["epe"]))
    assert boundaries == [40, 60] and [p.stage for p in points] == [1, 1, 2, 2, 3, 3]
    capsys.readouterr()
    assert plot_val_curve.main([str(tmp_path / "s3"), "--prior", str(first.with_suffix(".csv")), "--metrics", "a1",
                                "--out", str(tmp_path / "x.png")]) == 2
    assert "no column(s) a1" in capsys.readouterr().err
    assert plot_val_curve.main([str(tmp_path / "s3"), "--prior", str(tmp_path / "none.csv"),
                                "--out", str(tmp_path / "x.png")]) == 2
    assert "none.csv: no such file" in capsys.readouterr().err
