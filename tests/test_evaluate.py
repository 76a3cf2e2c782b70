"""evaluate.py on tiny fake Sintel and KITTI trees in the official layouts.

The numbers in the JSON are checked against metrics computed here independently: the same checkpoint run through
FlowEstimator, end-point errors in numpy. Submissions are read back with the format readers (names, sizes, values).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import evaluate
from core.config import load_config
from core.data import formats
from core.inference import FlowEstimator, forward_interpolate, to_image_tensor
from core.model import atomic_save, build_model
from core.model.checkpoint import WEIGHTS_FORMAT

REPO = Path(__file__).resolve().parents[1]
SINTEL_SIZE = (36, 52)  # not multiples of 8: padding and cropping back are part of the test
SINTEL_SCENES = {"alley_1": 3, "market_2": 2}  # scene -> frames (pairs = frames - 1)
KITTI_SIZES = {0: (30, 70), 3: (34, 62)}  # KITTI images differ in size from pair to pair


def _texture(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    coarse = rng.integers(0, 256, (size[0] // 4 + 2, size[1] // 4 + 2, 3)).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(np.repeat(coarse, 4, 0), 4, 1)[: size[0], : size[1]])


def make_sintel(root: Path, seed: int = 0) -> None:
    """training/{clean,final,flow,occlusions,invalid} and test/{clean,final} with SINTEL_SCENES."""
    rng = np.random.default_rng(seed)
    for split in ("training", "test"):
        for scene, frames in SINTEL_SCENES.items():
            for number in range(1, frames + 1):
                for pass_name in ("clean", "final"):
                    path = root / split / pass_name / scene / f"frame_{number:04d}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    formats.write_image(path, _texture(rng, SINTEL_SIZE))
                if split == "test" or number == frames:
                    continue
                for folder in ("flow", "occlusions", "invalid"):
                    (root / split / folder / scene).mkdir(parents=True, exist_ok=True)
                name = f"frame_{number:04d}"
                formats.write_flo(root / split / "flow" / scene / f"{name}.flo",
                                  rng.normal(0, 2, (*SINTEL_SIZE, 2)).astype(np.float32))
                formats.write_mask(root / split / "occlusions" / scene / f"{name}.png", rng.random(SINTEL_SIZE) < 0.3)
                formats.write_mask(root / split / "invalid" / scene / f"{name}.png", np.zeros(SINTEL_SIZE, bool))


def make_kitti(root: Path, seed: int = 1) -> None:
    """training/{image_2,flow_occ} (sparse ground truth) and testing/image_2, images of different sizes."""
    rng = np.random.default_rng(seed)
    for split in ("training", "testing"):
        (root / split / "image_2").mkdir(parents=True, exist_ok=True)
        for number, size in KITTI_SIZES.items():
            for suffix in ("10", "11"):
                formats.write_image(root / split / "image_2" / f"{number:06d}_{suffix}.png", _texture(rng, size))
            if split == "training":
                (root / split / "flow_occ").mkdir(exist_ok=True)
                flow = rng.normal(0, 3, (*size, 2)).astype(np.float32)
                valid = rng.random(size) < 0.4
                formats.write_kitti_flow(root / split / "flow_occ" / f"{number:06d}_10.png", flow, valid)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("evaluate")
    make_sintel(base / "Sintel")
    make_kitti(base / "KITTI")
    cfg = load_config(REPO / "configs" / "synthetic.yaml", ["model.variant", "protoformer-s", "model.iters", "2"])
    torch.manual_seed(0)
    checkpoint = base / "random.pth"
    atomic_save({"format": WEIGHTS_FORMAT, "model": build_model(cfg).state_dict(), "config": cfg.dump()}, checkpoint)
    return {"base": base, "sintel": base / "Sintel", "kitti": base / "KITTI", "ckpt": checkpoint}


def _roots(setup) -> list[str]:
    return ["data.roots.sintel", str(setup["sintel"]), "data.roots.kitti", str(setup["kitti"])]


def _frames(root: Path, split: str, pass_name: str, scene: str, number: int) -> tuple[np.ndarray, np.ndarray]:
    folder = root / split / pass_name / scene
    return (formats.read_image(folder / f"frame_{number:04d}.png"),
            formats.read_image(folder / f"frame_{number + 1:04d}.png"))


def test_sintel_validation_matches_independent_metrics(setup):
    out = setup["base"] / "sintel.json"
    assert evaluate.main(["--ckpt", str(setup["ckpt"]), "--dataset", "sintel", "--out", str(out), *_roots(setup)]) == 0
    report = json.loads(out.read_text())
    assert report["dataset_sizes"] == {"sintel_clean": 3, "sintel_final": 3}
    assert report["options"]["iters"] == 2 and report["options"]["tile"] is False
    assert report["checkpoint"] == str(setup["ckpt"])

    estimator = FlowEstimator.from_checkpoint(setup["ckpt"], device="cpu")
    for pass_name in ("clean", "final"):
        errors, occluded = [], []
        for scene, frames in SINTEL_SCENES.items():
            for number in range(1, frames):
                image1, image2 = _frames(setup["sintel"], "training", pass_name, scene, number)
                flow = estimator.predict(image1, image2)
                truth = formats.read_flo(setup["sintel"] / "training" / "flow" / scene / f"frame_{number:04d}.flo")
                errors.append(np.linalg.norm(flow - truth, axis=2).ravel())
                occluded.append(formats.read_mask(setup["sintel"] / "training" / "occlusions" / scene /
                                                  f"frame_{number:04d}.png").ravel())
        epe, occ = np.concatenate(errors), np.concatenate(occluded)
        result = report["results"][f"sintel_{pass_name}"]
        assert result["num_images"] == 3 and result["num_pixels"] == epe.size
        np.testing.assert_allclose(result["epe"], epe.mean(), rtol=1e-5)
        for threshold in (1, 3, 5):
            np.testing.assert_allclose(result[f"{threshold}px"], (epe < threshold).mean(), rtol=1e-6)
        np.testing.assert_allclose(result["epe_matched"], epe[~occ].mean(), rtol=1e-5)
        np.testing.assert_allclose(result["epe_unmatched"], epe[occ].mean(), rtol=1e-5)


def test_kitti_validation_matches_independent_metrics(setup):
    out = setup["base"] / "kitti.json"
    assert evaluate.main(["--ckpt", str(setup["ckpt"]), "--dataset", "kitti", "--out", str(out), *_roots(setup)]) == 0
    report = json.loads(out.read_text())
    assert report["options"]["pad_mode"] == "kitti"

    estimator = FlowEstimator.from_checkpoint(setup["ckpt"], device="cpu", pad_mode="kitti")
    per_image, outliers = [], []
    for number in KITTI_SIZES:
        folder = setup["kitti"] / "training" / "image_2"
        flow = estimator.predict(formats.read_image(folder / f"{number:06d}_10.png"),
                                 formats.read_image(folder / f"{number:06d}_11.png"))
        truth, valid = formats.read_kitti_flow(setup["kitti"] / "training" / "flow_occ" / f"{number:06d}_10.png")
        valid = valid > 0.5
        epe = np.linalg.norm(flow - truth, axis=2)[valid]
        magnitude = np.linalg.norm(truth, axis=2)[valid]
        per_image.append(epe.mean())
        outliers.append((epe > 3.0) & (epe / magnitude > 0.05))
    result = report["results"]["kitti"]
    np.testing.assert_allclose(result["epe"], np.mean(per_image), rtol=1e-5)  # mean of per-image means (RAFT)
    np.testing.assert_allclose(result["fl_all"], 100 * np.concatenate(outliers).mean(), rtol=1e-5)  # pooled
    assert result["num_images"] == 2


def test_sintel_submission_files(setup):
    output = setup["base"] / "sintel_submission"
    args = ["--ckpt", str(setup["ckpt"]), "--submission", "sintel", "--output", str(output), *_roots(setup)]
    assert evaluate.main(args) == 0
    expected = {f"{p}/{s}/frame_{n:04d}.flo" for p in ("clean", "final") for s, f in SINTEL_SCENES.items()
                for n in range(1, f)}
    assert {str(p.relative_to(output)) for p in output.rglob("*.flo")} == expected
    estimator = FlowEstimator.from_checkpoint(setup["ckpt"], device="cpu")
    for name in expected:
        pass_name, scene, file_name = name.split("/")
        number = int(file_name[len("frame_"):-len(".flo")])
        flow = formats.read_flo(output / name)
        assert flow.shape == (*SINTEL_SIZE, 2)
        np.testing.assert_allclose(flow, estimator.predict(*_frames(setup["sintel"], "test", pass_name, scene, number)),
                                   atol=1e-5)


def test_sintel_submission_warm_start_resets_per_scene(setup):
    output = setup["base"] / "sintel_warm"
    args = ["--ckpt", str(setup["ckpt"]), "--submission", "sintel", "--output", str(output), "--warm-start",
            *_roots(setup)]
    assert evaluate.main(args) == 0
    estimator = FlowEstimator.from_checkpoint(setup["ckpt"], device="cpu")
    root = setup["sintel"]
    for scene in SINTEL_SCENES:  # the first pair of every scene starts cold
        cold = estimator.predict(*_frames(root, "test", "clean", scene, 1))
        np.testing.assert_allclose(formats.read_flo(output / "clean" / scene / "frame_0001.flo"), cold, atol=1e-5)
    # the second pair of alley_1 starts from the first pair's flow, projected forward
    first = estimator.run(*(to_image_tensor(f)[None] for f in _frames(root, "test", "clean", "alley_1", 1)))
    second = estimator.run(*(to_image_tensor(f)[None] for f in _frames(root, "test", "clean", "alley_1", 2)),
                           flow_init=forward_interpolate(first.flow_low))
    np.testing.assert_allclose(formats.read_flo(output / "clean" / "alley_1" / "frame_0002.flo"),
                               second.flow[0].permute(1, 2, 0).numpy(), atol=1e-5)


def test_kitti_submission_files(setup):
    output = setup["base"] / "kitti_submission"
    args = ["--ckpt", str(setup["ckpt"]), "--submission", "kitti", "--output", str(output), *_roots(setup)]
    assert evaluate.main(args) == 0
    assert sorted(p.name for p in (output / "flow").iterdir()) == [f"{n:06d}_10.png" for n in KITTI_SIZES]
    estimator = FlowEstimator.from_checkpoint(setup["ckpt"], device="cpu", pad_mode="kitti")
    for number, size in KITTI_SIZES.items():
        flow, valid = formats.read_kitti_flow(output / "flow" / f"{number:06d}_10.png")
        assert flow.shape == (*size, 2) and valid.all()  # original size, every pixel written
        folder = setup["kitti"] / "testing" / "image_2"
        expected = estimator.predict(formats.read_image(folder / f"{number:06d}_10.png"),
                                     formats.read_image(folder / f"{number:06d}_11.png"))
        # 1/64 px quantisation of the format (+ run-to-run float noise that can flip a rounding)
        np.testing.assert_allclose(flow, expected, atol=1 / 64 + 1e-6)


def test_missing_dataset_and_bad_arguments(setup, tmp_path):
    missing = ["data.roots.sintel", str(tmp_path / "nowhere")]
    assert evaluate.main(["--ckpt", str(setup["ckpt"]), "--dataset", "sintel", *missing]) == 2
    assert evaluate.main(["--ckpt", str(tmp_path / "absent.pth"), "--dataset", "sintel", *_roots(setup)]) == 2
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--dataset", "sintel", "--submission", "kitti"])
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--submission", "kitti"])  # needs --output
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--dataset", "sintel", "--scales", "1", "0"])
    args = evaluate.parse_args(["--ckpt", str(setup["ckpt"]), "--dataset", "sintel", "--scales", "1", "2", "--",
                                "data.roots.sintel", str(tmp_path)])
    assert args.opts == ["data.roots.sintel", str(tmp_path)]
    assert evaluate.build_estimator(args, "sintel").scales == [1.0, 2.0]
    args = evaluate.parse_args(["--ckpt", str(setup["ckpt"]), "--dataset", "sintel", "--refine-iters", "3",
                                "--flip-average", "--scales", "1", "2"])
    estimator = evaluate.build_estimator(args, "sintel")
    assert (estimator.refine_iters, estimator.flip_average) == (3, True)
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--dataset", "sintel", "--refine-iters", "-1"])


def test_tiled_evaluation_records_its_options(setup):
    out = setup["base"] / "kitti_tiled.json"
    args = ["--ckpt", str(setup["ckpt"]), "--dataset", "kitti", "--tile", "--iters", "1", "--out", str(out),
            *_roots(setup), "eval.tile_size", "[16, 32]"]
    assert evaluate.main(args) == 0
    report = json.loads(out.read_text())
    assert report["options"]["tile"] is True and report["options"]["iters"] == 1
    assert report["options"]["scales"] == [1.0]
    assert report["options"]["tile_size"] == [16, 32]
    assert report["options"]["overrides"][-2:] == ["eval.tile_size", "[16, 32]"]
    estimator = FlowEstimator.from_checkpoint(setup["ckpt"], device="cpu", pad_mode="kitti", iters=1, tile=True,
                                              opts=["eval.tile_size", "[16, 32]"])
    per_image = []
    for number in KITTI_SIZES:
        folder = setup["kitti"] / "training" / "image_2"
        flow = estimator.predict(formats.read_image(folder / f"{number:06d}_10.png"),
                                 formats.read_image(folder / f"{number:06d}_11.png"))
        truth, valid = formats.read_kitti_flow(setup["kitti"] / "training" / "flow_occ" / f"{number:06d}_10.png")
        per_image.append(np.linalg.norm(flow - truth, axis=2)[valid > 0.5].mean())
    np.testing.assert_allclose(report["results"]["kitti"]["epe"], np.mean(per_image), rtol=1e-5)
