"""The shell recipes (scripts/train_standard.sh, scripts/train_cpu_default.sh): which train.py commands they run,
fresh and after an interruption, checked with a stand-in Python that only records its arguments."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
AVERAGE = "--fp16 --average 7 model.iters 8 eval.refine_iters 2"  # the options of the recipe's average()
pytestmark = pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX sh")


def run_recipe(tmp_path: Path, script: str, *args: str, done: tuple[str, ...] = (),
               env: dict[str, str] | None = None) -> list[str]:
    """Run ``scripts/<script>`` with PYTHON = a recorder (and ``env`` added); ``done`` stages already have a
    latest.pth. The texture folders default to ``tmp_path`` (never the checkout's ``datasets/``)."""
    log = tmp_path / "calls.txt"
    recorder = tmp_path / "python"
    recorder.write_text(f'#!/bin/sh\necho "$*" >> "{log}"\n')
    recorder.chmod(0o755)
    for stage in done:
        (tmp_path / "work" / stage / "checkpoints").mkdir(parents=True)
        (tmp_path / "work" / stage / "checkpoints" / "latest.pth").write_bytes(b"")
    folders = {name: str(tmp_path / name.lower()) for name in ("TEXTURES", "TEXTURES_DENSE", "TEXTURES_MIX")}
    env = {**os.environ, "PYTHON": str(recorder), **folders, **(env or {})}
    subprocess.run(["sh", str(REPO / "scripts" / script), *args], cwd=REPO, env=env, check=True,
                   capture_output=True, timeout=60)
    return log.read_text().splitlines()


def fake_photos(tmp_path: Path) -> Path:
    """A stand-in for OpenCV's sample data folder holding the recipe's photographs (empty files)."""
    folder = tmp_path / "opencv_data"
    folder.mkdir()
    text = (REPO / "scripts" / "train_cpu_default.sh").read_text()
    names = text.split('PHOTO_FILES="')[1].split('"')[0].split()
    assert len(names) == 24
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


def test_train_standard_chains_the_stages_and_resumes_where_it_stopped(tmp_path):
    work = tmp_path / "work"
    calls = run_recipe(tmp_path, "train_standard.sh", "2", str(work))
    assert [c.split("--config ")[1].split()[0] for c in calls] == [
        "configs/chairs.yaml", "configs/things.yaml", "configs/sintel.yaml", "configs/kitti.yaml"]
    assert all("--nproc_per_node=2" in c for c in calls)
    assert "restore_ckpt" not in calls[0] and f"train.restore_ckpt {work}/chairs/checkpoints/latest.pth" in calls[1]
    assert f"train.restore_ckpt {work}/sintel/checkpoints/latest.pth" in calls[3]

    (tmp_path / "calls.txt").unlink()
    calls = run_recipe(tmp_path, "train_standard.sh", "2", str(work), done=("chairs", "things"))
    assert [("--resume" in c, "restore_ckpt" in c) for c in calls] == [(True, False), (True, False),
                                                                        (False, True), (False, True)]


def stages_9_and_10(work: Path, mix: Path, average: str) -> list[str]:
    """The recipe's calls from stage 9's start (stage 8's average in place) to the release."""
    return [
        f"train.py --config configs/cpu_default_ft8.yaml --work-dir {work}/stage9 synthetic.texture_dir {mix} "
        f"train.restore_ckpt {work}/stage8/average.pth",
        f"train.py --work-dir {work}/stage9 --export {work}/stage9/average.pth {average}",
        f"train.py --config configs/cpu_default_ft9.yaml --work-dir {work}/stage10 synthetic.texture_dir {mix} "
        f"train.restore_ckpt {work}/stage9/average.pth",
        f"train.py --work-dir {work}/stage10 --export checkpoints/protoformer-s-synthetic.pth {average}",
    ]


def test_train_cpu_default_runs_ten_stages_then_exports(tmp_path):
    work = tmp_path / "work"
    textures, dense = tmp_path / "textures", tmp_path / "dense"  # missing: the recipe extracts the frames into them
    mix, videos = tmp_path / "mix", tmp_path / "videos"
    env = {"TEXTURES": str(textures), "TEXTURES_DENSE": str(dense), "TEXTURES_MIX": str(mix), "VIDEOS": str(videos),
           "PHOTOS": str(fake_photos(tmp_path))}
    calls = run_recipe(tmp_path, "train_cpu_default.sh", str(work), env=env)
    configs = [c.split("--config ")[1].split()[0] for c in calls if "--config" in c]
    assert configs == ["configs/cpu_default.yaml", "configs/cpu_default_ft.yaml", "configs/cpu_default_ft2.yaml",
                       "configs/cpu_default_ft3.yaml", "configs/cpu_default_ft4.yaml", "configs/cpu_default_ft5.yaml",
                       "configs/cpu_default_ft6.yaml", "configs/cpu_default_ft7.yaml", "configs/cpu_default_ft8.yaml",
                       "configs/cpu_default_ft9.yaml"]
    assert calls[0] == f"train.py --config configs/cpu_default.yaml --work-dir {work}/stage1 --stop-at 500"
    assert "--stop-at 1400" in calls[2] and all("--stop-at" not in c for c in calls[3:])
    for index in range(1, 5):
        assert calls[index].endswith(f"--work-dir {work}/stage{index + 1}" + (" --stop-at 1400" if index == 2 else "")
                                     + f" train.restore_ckpt {work}/stage{index}/checkpoints/latest.pth")
    clips = f"{videos}/megamind.avi {videos}/tree.avi {videos}/vtest.avi"
    assert calls[5:] == [
        f"train.py --work-dir {work}/stage5 --export {work}/stage5/average.pth {AVERAGE}",
        f"scripts/extract_frames.py {clips} --every 9 4 40 --out {textures}",
        f"train.py --config configs/cpu_default_ft5.yaml --work-dir {work}/stage6 synthetic.texture_dir {textures} "
        f"train.restore_ckpt {work}/stage5/average.pth",
        f"train.py --work-dir {work}/stage6 --export {work}/stage6/average.pth {AVERAGE}",
        f"scripts/extract_frames.py {clips} --every 3 2 20 --out {dense}",
        f"train.py --config configs/cpu_default_ft6.yaml --work-dir {work}/stage7 synthetic.texture_dir {dense} "
        f"train.restore_ckpt {work}/stage6/average.pth",
        f"train.py --work-dir {work}/stage7 --export {work}/stage7/average.pth {AVERAGE}",
        f"train.py --config configs/cpu_default_ft7.yaml --work-dir {work}/stage8 synthetic.texture_dir {dense} "
        f"train.restore_ckpt {work}/stage7/average.pth",
        f"train.py --work-dir {work}/stage8 --export {work}/stage8/average.pth {AVERAGE}",
        f"scripts/extract_frames.py {clips} --every 3 2 20 --out {mix}/videos",
        *stages_9_and_10(work, mix, AVERAGE),
    ]
    copied = [f for f in (mix / "photos").iterdir() if not f.name.startswith(".")]
    assert len(copied) == 24 and (mix / "photos" / ".complete").is_file()

    (tmp_path / "calls.txt").unlink()
    calls = run_recipe(tmp_path, "train_cpu_default.sh", str(work), done=("stage1", "stage2", "stage3"), env=env)
    assert calls[0] == f"train.py --work-dir {work}/stage1 --resume --stop-at 500"
    assert calls[2] == f"train.py --work-dir {work}/stage3 --resume --stop-at 1400"
    assert "--config configs/cpu_default_ft3.yaml" in calls[3] and "stage3/checkpoints/latest.pth" in calls[3]
    assert "--config configs/cpu_default_ft4.yaml" in calls[4] and "stage4/checkpoints/latest.pth" in calls[4]

    for folder in (textures, dense, mix / "videos", mix / "photos"):  # every extraction and copy finished
        assert (folder / ".complete").is_file(), folder
    (tmp_path / "calls.txt").unlink()  # stage 10 under way: resumed, the averages and the textures not made again
    calls = run_recipe(tmp_path, "train_cpu_default.sh", str(work),
                       done=tuple(f"stage{index}" for index in range(4, 11)), env=env)
    assert not any("extract_frames.py" in c for c in calls)
    assert calls[-6:] == [f"train.py --work-dir {work}/stage6 --resume synthetic.texture_dir {textures}",
                          f"train.py --work-dir {work}/stage7 --resume synthetic.texture_dir {dense}",
                          f"train.py --work-dir {work}/stage8 --resume synthetic.texture_dir {dense}",
                          f"train.py --work-dir {work}/stage9 --resume synthetic.texture_dir {mix}",
                          f"train.py --work-dir {work}/stage10 --resume synthetic.texture_dir {mix}",
                          f"train.py --work-dir {work}/stage10 --export checkpoints/protoformer-s-synthetic.pth "
                          f"{AVERAGE}"]
    assert not any("average.pth" in c for c in calls)


def test_train_cpu_default_stops_with_a_clear_error_without_the_photographs(tmp_path):
    """Stage 9 needs OpenCV's sample photographs: without them the recipe stops before its first stage (not after
    eight), naming the missing file and where to get it, and copies nothing."""
    mix = tmp_path / "mix"
    photos = fake_photos(tmp_path)
    (photos / "baboon.jpg").unlink()
    env = {"TEXTURES_MIX": str(mix), "VIDEOS": str(tmp_path / "videos"), "PHOTOS": str(photos)}
    with pytest.raises(subprocess.CalledProcessError) as error:
        run_recipe(tmp_path, "train_cpu_default.sh", str(tmp_path / "work"), env=env)
    assert error.value.returncode == 2
    message = error.value.stderr.decode()
    assert f"{photos}/baboon.jpg not found" in message and "opencv-doc" in message
    assert not mix.exists() and not (tmp_path / "calls.txt").exists()


def test_train_cpu_default_hands_stage_8_to_stage_9(tmp_path):
    """Stage 8 done, stage 9 not started: stage 8's average is exported right before stage 9 starts from it, with
    the photographs copied and the video frames extracted into the two folders of the mixed texture folder."""
    work, mix, videos = tmp_path / "work", tmp_path / "mix", tmp_path / "videos"
    env = {"TEXTURES_MIX": str(mix), "VIDEOS": str(videos), "PHOTOS": str(fake_photos(tmp_path))}
    calls = run_recipe(tmp_path, "train_cpu_default.sh", str(work),
                       done=tuple(f"stage{index}" for index in range(1, 9)), env=env)
    assert calls[-7:] == [
        f"train.py --work-dir {work}/stage8 --resume synthetic.texture_dir {tmp_path}/textures_dense",
        f"train.py --work-dir {work}/stage8 --export {work}/stage8/average.pth {AVERAGE}",
        f"scripts/extract_frames.py {videos}/megamind.avi {videos}/tree.avi {videos}/vtest.avi --every 3 2 20 "
        f"--out {mix}/videos",
        *stages_9_and_10(work, mix, AVERAGE),
    ]
    assert sum("--export" in c for c in calls) == 3  # stage 8's and 9's averages and the release, no other average
    assert (mix / "photos" / "baboon.jpg").is_file() and (mix / "photos" / ".complete").is_file()


def test_train_cpu_default_hands_stage_6_to_stage_7(tmp_path):
    """Stage 6 done, stage 7 not started: stage 6's average is exported right before stage 7 starts from it, and
    only stage 7's frames, whose extraction did not finish, are extracted (again)."""
    work = tmp_path / "work"
    textures, dense = tmp_path / "textures", tmp_path / "dense"
    textures.mkdir()
    (textures / ".complete").write_bytes(b"")
    dense.mkdir()  # an interrupted extraction: frames but no marker, so it is redone
    (dense / "megamind_0000.png").write_bytes(b"")
    env = {"TEXTURES": str(textures), "TEXTURES_DENSE": str(dense), "TEXTURES_MIX": str(tmp_path / "mix"),
           "VIDEOS": str(tmp_path / "videos"), "PHOTOS": str(fake_photos(tmp_path))}
    calls = run_recipe(tmp_path, "train_cpu_default.sh", str(work),
                       done=tuple(f"stage{index}" for index in range(1, 7)), env=env)
    assert calls[5:9] == [
        f"train.py --work-dir {work}/stage6 --resume synthetic.texture_dir {textures}",
        f"train.py --work-dir {work}/stage6 --export {work}/stage6/average.pth {AVERAGE}",
        f"scripts/extract_frames.py {tmp_path}/videos/megamind.avi {tmp_path}/videos/tree.avi "
        f"{tmp_path}/videos/vtest.avi --every 3 2 20 --out {dense}",
        f"train.py --config configs/cpu_default_ft6.yaml --work-dir {work}/stage7 synthetic.texture_dir {dense} "
        f"train.restore_ckpt {work}/stage6/average.pth",
    ]
    assert sum(f"--out {dense}" in c for c in calls) == 1 and f"--out {textures}" not in "".join(calls)
