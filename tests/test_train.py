"""The training entry point: DDP equivalence, exact resume, learning, non-finite steps, set-up errors, export.

Everything runs on the CPU with the small model at the smallest crop (32 x 32, 2 refinement iterations) and one
thread per process (the machine is shared; two OpenMP threads per process oversubscribe it badly).
"""

from __future__ import annotations

import math
import signal
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml

import train
from core.config import config_from_text, load_config, with_overrides
from core.data.synthetic import SyntheticFlowDataset
from core.model import build_model, load_weights
from core.model.checkpoint import WEIGHTS_FORMAT
from core.utils.distributed import DistributedContext, ResumableDistributedSampler, distributed_session
from core.utils.precision import Precision
from core.utils.runtime import configure_determinism

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "synthetic.yaml"
CPU = torch.device("cpu")

TINY = {
    "model.variant": "protoformer-s",
    "model.iters": "2",
    "data.crop_size": "[32, 32]",
    "synthetic.image_size": "[40, 48]",
    "synthetic.train_size": "16",
    "synthetic.val_size": "2",
    "synthetic.max_displacement": "4.0",
    "synthetic.num_layers": "[1, 2]",
    "data.num_workers": "0",
    "train.batch_size": "2",
    "train.num_steps": "4",
    "train.add_noise": "False",
    "train.val_sets": "[]",
    "train.log_freq": "2",
    "train.image_log_freq": "1000",
    "train.val_freq": "1000",
    "train.ckpt_freq": "1000",
}
NO_AUGMENTATION = {
    "aug.spatial_prob": "0.0", "aug.do_flip": "False", "aug.brightness": "0.0", "aug.contrast": "0.0",
    "aug.saturation": "0.0", "aug.hue": "0.0", "aug.asymmetric_color_prob": "0.0", "aug.eraser_prob": "0.0",
}


def tiny_config(**overrides: str):
    settings = {**TINY, **{key.replace("__", "."): value for key, value in overrides.items()}}
    return load_config(CONFIG, [item for pair in settings.items() for item in pair])


def single_process() -> DistributedContext:
    return DistributedContext(rank=0, world_size=1, local_rank=0, device=CPU)


def capture_first_gradients(trainer: train.Trainer) -> list[torch.Tensor]:
    """The gradients the optimizer receives at its first step (after the DDP all-reduce and clipping)."""
    captured: list[torch.Tensor] = []

    def hook(optimizer, args, kwargs):
        if not captured:
            captured.extend(p.grad.detach().clone() for p in trainer.model.parameters())

    trainer.optimizer.register_step_pre_hook(hook)
    return captured


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield
    configure_determinism(False)


# ----------------------------------------------------------------------------------------------- DDP
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, work_dir: str, opts: dict) -> None:
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    cfg = tiny_config(**opts)
    with distributed_session("cpu") as context:
        trainer = train.Trainer(cfg, Path(work_dir), context)
        gradients = capture_first_gradients(trainer)
        trainer.fit()
        torch.save({"gradients": gradients, "weights": trainer.model.state_dict(),
                    "is_ddp": isinstance(trainer.network, torch.nn.parallel.DistributedDataParallel)},
                   Path(work_dir) / f"rank{rank}.pt")


def test_ddp_matches_single_process_and_keeps_ranks_identical(tmp_path):
    opts = {"train__num_steps": "3", "train__ckpt_freq": "2"}
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "ddp"), opts), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "ddp" / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "ddp" / "rank1.pt", weights_only=True)
    assert rank0["is_ddp"] and rank1["is_ddp"]

    # One process on the whole global batch of 2 sees the same two samples as the two ranks (1 each).
    reference = train.Trainer(tiny_config(train__num_steps="1"), tmp_path / "single", single_process())
    gradients = capture_first_gradients(reference)
    reference.fit()
    assert len(gradients) == len(rank0["gradients"]) > 100
    norm = math.sqrt(sum(float(g.square().sum()) for g in gradients))
    assert norm > 0
    for single, g0, g1 in zip(gradients, rank0["gradients"], rank1["gradients"]):
        assert torch.equal(g0, g1)  # all-reduced: bit-identical on both ranks
        torch.testing.assert_close(g0, single, rtol=1e-4, atol=1e-6 * norm)

    # After 3 steps the replicas are still identical, bit for bit.
    assert rank0["weights"].keys() == rank1["weights"].keys()
    for key in rank0["weights"]:
        assert torch.equal(rank0["weights"][key], rank1["weights"][key]), key

    # Only rank 0 wrote checkpoints: unwrapped names and the random states of both ranks.
    checkpoints = tmp_path / "ddp" / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("*.pth")) == ["latest.pth", "step_0000002.pth", "step_0000003.pth"]
    saved = torch.load(checkpoints / "latest.pth", weights_only=True)
    assert saved["step"] == 3 and saved["world_size"] == 2 and len(saved["rng"]) == 2
    assert not any(key.startswith("module.") for key in saved["model"])
    for key, value in saved["model"].items():
        assert torch.equal(value, rank0["weights"][key])

    # A 2-process checkpoint resumes in one process: step 3 on the same global batch gives the same weights.
    (tmp_path / "single_resume" / "checkpoints").mkdir(parents=True)
    (checkpoints / "step_0000002.pth").rename(tmp_path / "single_resume" / "checkpoints" / "latest.pth")
    resumed = train.Trainer(tiny_config(**opts), tmp_path / "single_resume", single_process(), resume=True)
    assert resumed.step == 2
    resumed.fit()
    for key, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, rank0["weights"][key], rtol=1e-4, atol=1e-6, msg=key)


def test_sampler_global_batches_do_not_depend_on_the_number_of_processes():
    dataset = list(range(10))
    single = list(ResumableDistributedSampler(dataset, 1, 0, seed=7))
    ranks = [list(ResumableDistributedSampler(dataset, 2, rank, seed=7)) for rank in range(2)]
    # Global batch k of 4 = samples 4k..4k+3 of one process = 2k, 2k+1 of each of two processes.
    for k in range(2):
        assert sorted(single[4 * k : 4 * k + 4]) == sorted(ranks[0][2 * k : 2 * k + 2] + ranks[1][2 * k : 2 * k + 2])
    resumed = ResumableDistributedSampler(dataset, 1, 0, seed=7)
    resumed.skip = 3
    assert list(resumed) == single[3:] and len(resumed) == 7
    other_epoch = ResumableDistributedSampler(dataset, 1, 0, seed=7)
    other_epoch.set_epoch(1)
    assert [i for i, _ in other_epoch] != [i for i, _ in single]


# ----------------------------------------------------------------------------------------------- resume
def test_interrupted_and_resumed_run_ends_with_the_same_weights(tmp_path):
    configure_determinism(True)
    # Augmentation and input noise on: the randomness must resume exactly too.
    opts = {"train__num_steps": "5", "train__add_noise": "True", "train__ckpt_freq": "1000",
            "synthetic__train_size": "6"}  # 3 steps per epoch: the interruption falls mid-epoch, the run spans two
    straight = train.Trainer(tiny_config(**opts), tmp_path / "straight", single_process())
    straight.fit()

    # The same run, stopped by SIGTERM during its first step (it finishes that step and the next check stops it),
    # resumed by a fresh Trainer, with a loader worker this time (the data must not depend on workers either).
    cfg = tiny_config(**opts, data__num_workers="1")
    interrupted = train.Trainer(cfg, tmp_path / "resumed", single_process())
    handle = None

    def terminate_once(*_):
        handle.remove()
        signal.raise_signal(signal.SIGTERM)

    handle = interrupted.optimizer.register_step_post_hook(terminate_once)
    result = interrupted.fit()
    assert result["stopped"] and 0 < result["step"] < 5 and interrupted.interrupted
    assert (tmp_path / "resumed" / "checkpoints" / "latest.pth").exists()
    resumed = train.Trainer(cfg, tmp_path / "resumed", single_process(), resume=True)
    assert resumed.step == result["step"]
    assert resumed.fit() == {"step": 5, "best": None, "stopped": False} and not resumed.interrupted

    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    final = torch.load(tmp_path / "resumed" / "checkpoints" / "latest.pth", weights_only=True)
    assert final["step"] == 5 and final["scheduler"]["last_epoch"] == 5


def test_stop_at_pauses_with_a_checkpoint_and_resume_finishes_the_same_schedule(tmp_path):
    opts = {"train__num_steps": "4", "train__ckpt_freq": "1000"}
    paused = train.Trainer(tiny_config(**opts), tmp_path, single_process(), stop_at=2)
    assert paused.fit() == {"step": 2, "best": None, "stopped": True} and not paused.interrupted
    checkpoint = torch.load(tmp_path / "checkpoints" / "latest.pth", weights_only=True)
    assert checkpoint["step"] == 2 and checkpoint["scheduler"]["total_steps"] == 4 + 100
    again = train.Trainer(tiny_config(**opts), tmp_path, single_process(), resume=True, stop_at=2)
    assert again.fit()["step"] == 2  # already there: no step taken
    resumed = train.Trainer(tiny_config(**opts), tmp_path, single_process(), resume=True)
    assert resumed.fit() == {"step": 4, "best": None, "stopped": False}
    with pytest.raises(ValueError, match="--stop-at"):
        train.Trainer(tiny_config(**opts), tmp_path / "other", single_process(), stop_at=0)


def test_resume_refuses_a_changed_schedule_and_fresh_runs_refuse_an_used_work_dir(tmp_path):
    trainer = train.Trainer(tiny_config(train__num_steps="1"), tmp_path, single_process())
    trainer.fit()
    with pytest.raises(FileExistsError, match="--resume"):
        train.Trainer(tiny_config(train__num_steps="1"), tmp_path, single_process())
    with pytest.raises(ValueError, match=r"train\.lr"):
        train.Trainer(tiny_config(train__num_steps="1", train__lr="1e-3"), tmp_path, single_process(), resume=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train.Trainer(tiny_config(), tmp_path / "empty", single_process(), resume=True)
    # Bookkeeping keys may change; the checkpoint's own config is used when --config is omitted.
    cfg = config_from_text((tmp_path / "config.yaml").read_text(), ["train.log_freq", "7"])
    assert cfg.train.log_freq == 7 and cfg.train.num_steps == 1
    train.check_resumable(cfg, (tmp_path / "config.yaml").read_text(), tmp_path)


def test_resume_accepts_a_checkpoint_written_before_a_config_key_existed(tmp_path):
    """A run saved before a key was added to the defaults was trained with that key's default: resuming it is
    allowed, unless the key is now set to something else."""
    cfg = tiny_config(train__num_steps="1")
    saved = yaml.safe_load(cfg.dump())
    del saved["synthetic"]["texture_sampling"], saved["synthetic"]["dead_leaves"]
    old_text = yaml.safe_dump(saved)
    train.check_resumable(cfg, old_text, tmp_path)
    with pytest.raises(ValueError, match=r"synthetic\.texture_sampling: 'image' -> 'folder'"):
        train.check_resumable(with_overrides(cfg, ["synthetic.texture_sampling", "folder"]), old_text, tmp_path)


# ----------------------------------------------------------------------------------------------- learning
def test_overfits_a_few_synthetic_pairs(tmp_path):
    """Four fixed pairs, no augmentation: the EPE on them falls by more than half in 100 steps (~40 s on one core)."""
    cfg = tiny_config(**NO_AUGMENTATION, synthetic__train_size="4", synthetic__image_size="[40, 40]",
                      train__num_steps="100", train__lr="1e-3", train__pct_start="0.1", train__log_freq="1000")
    pairs = SyntheticFlowDataset(cfg, split="train")
    precision = Precision.from_config(False, "bfloat16", CPU)
    trainer = train.Trainer(cfg, tmp_path, single_process())
    trainer.model.eval()
    before = train.evaluate(trainer.model, pairs, "synthetic", cfg, precision, CPU)["epe"]
    trainer.fit()
    trainer.model.eval()
    after = train.evaluate(trainer.model, pairs, "synthetic", cfg, precision, CPU)["epe"]
    assert after < 0.5 * before, f"EPE {before:.3f} -> {after:.3f}"


# ----------------------------------------------------------------------------------------------- non-finite steps
def _poison_loss(monkeypatch, bad_steps: set[int], trainer_box: list) -> None:
    """Make the flow loss NaN at the given (1-based) steps, keeping it attached to the graph."""
    real_loss = train.sequence_loss

    def loss(*args, **kwargs):
        value, metrics = real_loss(*args, **kwargs)
        if trainer_box[0].step + 1 in bad_steps:
            value = value * float("nan")
        return value, metrics

    monkeypatch.setattr(train, "sequence_loss", loss)


def test_a_non_finite_step_is_skipped_and_counted(tmp_path, monkeypatch):
    box: list = []
    _poison_loss(monkeypatch, {2}, box)
    trainer = train.Trainer(tiny_config(train__ckpt_freq="1"), tmp_path, single_process())
    box.append(trainer)
    weights = {}
    trainer.optimizer.register_step_post_hook(lambda *_: weights.setdefault(trainer.step + 1, [
        p.detach().clone() for p in trainer.model.parameters()]))
    assert trainer.fit()["step"] == 4
    assert sorted(weights) == [1, 3, 4]  # no optimizer step at step 2
    assert trainer.bad_total == 1 and trainer.bad_in_a_row == 0
    assert trainer.scheduler.last_epoch == 4  # the schedule still advanced, as with a GradScaler
    adam_steps = {int(state["step"]) for state in trainer.optimizer.state.values()}
    assert adam_steps == {3}
    checkpoint = torch.load(tmp_path / "checkpoints" / "step_0000002.pth", weights_only=True)
    assert checkpoint["bad_total"] == 1
    for key, value in checkpoint["model"].items():
        assert torch.isfinite(value).all(), key


def test_run_stops_after_max_bad_steps_without_a_nan_checkpoint(tmp_path, monkeypatch):
    box: list = []
    _poison_loss(monkeypatch, set(range(1, 100)), box)
    trainer = train.Trainer(tiny_config(train__num_steps="50", train__max_bad_steps="3", train__ckpt_freq="1"),
                            tmp_path, single_process())
    box.append(trainer)
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(train.TrainingDiverged, match="3 non-finite steps in a row"):
        trainer.fit()
    assert trainer.step == 3 and trainer.bad_total == 3
    for path in (tmp_path / "checkpoints").glob("*.pth"):
        saved = torch.load(path, weights_only=True)
        for key, value in saved["model"].items():
            assert torch.equal(value, initial[key]), key  # no update ever happened, nothing non-finite was written

    # Weights that did become non-finite are never written.
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("nan"))
    with pytest.raises(RuntimeError, match="non-finite weights"):
        trainer.save_checkpoint(is_best=False)
    assert torch.load(tmp_path / "checkpoints" / "latest.pth", weights_only=True)["step"] == 2


# ----------------------------------------------------------------------------------------------- set-up errors
def test_clear_errors_before_any_work(tmp_path):
    with pytest.raises(ValueError, match=r"train.batch_size 3 .* multiple of the number of processes \(2\)"):
        train.Trainer(tiny_config(train__batch_size="3"), tmp_path, DistributedContext(0, 2, 0, CPU))
    with pytest.raises(ValueError, match=r"data.crop_size 64x64 is larger than synthetic.image_size: 40x48"):
        train.Trainer(tiny_config(data__crop_size="[64, 64]"), tmp_path, single_process())
    with pytest.raises(FileNotFoundError, match=r"data.roots.sintel = .*missing_sintel"):
        train.Trainer(tiny_config(data__train_sets='["sintel_clean"]', data__roots__sintel=str(tmp_path / "missing_sintel")),
                      tmp_path, single_process())
    with pytest.raises(ValueError, match="fewer than one global batch"):
        train.Trainer(tiny_config(synthetic__train_size="1"), tmp_path, single_process())
    assert not (tmp_path / "checkpoints").exists()
    # A missing validation set is skipped; the synthetic one always exists.
    val_sets = train.build_val_sets(tiny_config(train__val_sets='["kitti", "synthetic"]',
                                                data__roots__kitti=str(tmp_path / "missing_kitti")))
    assert list(val_sets) == ["synthetic"]


def test_command_line_reports_setup_errors_with_exit_code_2(tmp_path, capfd):
    code = train.main(["--config", str(CONFIG), "--work-dir", str(tmp_path), "--device", "cpu",
                       *[item for pair in TINY.items() for item in pair], "data.crop_size", "[64, 64]"])
    assert code == 2
    assert "crop_size 64x64 is larger than synthetic.image_size" in capfd.readouterr().err
    assert "larger than synthetic.image_size" in (tmp_path / "train.log").read_text()


def test_command_line_exits_3_when_a_signal_stops_training_and_0_at_stop_at(tmp_path, monkeypatch):
    """A chain of stages under ``set -e`` must stop when a stage was interrupted, not export its half-trained
    weights and start the next stage from them; a planned pause (--stop-at) is a success."""
    fit = train.Trainer.fit

    def fit_then_sigterm(trainer):
        def terminate_once(*_):
            handle.remove()
            signal.raise_signal(signal.SIGTERM)

        handle = trainer.optimizer.register_step_post_hook(terminate_once)
        return fit(trainer)

    command = ["--config", str(CONFIG), "--device", "cpu", *[item for pair in TINY.items() for item in pair],
               "train.num_steps", "4", "train.val_freq", "1000"]
    assert train.main(["--work-dir", str(tmp_path / "paused"), "--stop-at", "1", *command]) == 0
    monkeypatch.setattr(train.Trainer, "fit", fit_then_sigterm)
    assert train.main(["--work-dir", str(tmp_path / "stopped"), *command]) == 3
    checkpoint = torch.load(tmp_path / "stopped" / "checkpoints" / "latest.pth", weights_only=True)
    assert 0 < checkpoint["step"] < 4


def test_depth_model_trains_on_synthetic_depth(tmp_path, monkeypatch):
    """The depth path: one-image samples, SILog loss, depth validation with abs_rel as the best-model metric."""
    cfg = tiny_config(**NO_AUGMENTATION, model__type="depth", data__train_sets='["synthetic_depth"]',
                      synthetic__train_size="4", train__num_steps="3", train__val_freq="1000",
                      train__val_sets='["synthetic_depth"]', synthetic__val_size="2")
    trainer = train.Trainer(cfg, tmp_path, single_process())
    losses = []
    real_loss = train.depth_sequence_loss

    def recording_loss(*args, **kwargs):
        loss, metrics = real_loss(*args, **kwargs)
        losses.append(loss.item())
        return loss, metrics

    monkeypatch.setattr(train, "depth_sequence_loss", recording_loss)
    result = trainer.fit()
    assert not hasattr(trainer.model, "flow_decoder")
    assert result["best"]["metric"] == "abs_rel" and math.isfinite(result["best"]["value"])
    assert trainer.bad_total == 0 and len(losses) == 3
    assert all(math.isfinite(loss) and loss > 1.0 for loss in losses), losses  # supervised: SILog of a random net


# ----------------------------------------------------------------------------------------------- logging, export
def test_validation_logging_best_checkpoint_and_export(tmp_path):
    cfg = tiny_config(train__num_steps="2", train__val_freq="1", train__val_sets='["synthetic"]',
                      train__image_log_freq="1", train__log_freq="1", train__keep_last="1", model__type="joint")
    trainer = train.Trainer(cfg, tmp_path, single_process())
    result = trainer.fit()
    assert result["best"]["set"] == "synthetic" and result["best"]["metric"] == "epe"
    checkpoints = tmp_path / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("*.pth")) == ["best.pth", "latest.pth", "step_0000002.pth"]
    assert torch.load(checkpoints / "best.pth", weights_only=True)["step"] == result["best"]["step"]
    assert any((tmp_path / "tb").iterdir())

    for half in (False, True):
        out = tmp_path / f"release_{half}.pth"
        assert train.main(["--work-dir", str(tmp_path), "--export", str(out)] + (["--fp16"] if half else [])) == 0
        release = torch.load(out, weights_only=True)
        assert release["format"] == WEIGHTS_FORMAT and "stage: synthetic" in release["config"]
        assert out.with_suffix(".yaml").read_text() == release["config"]
        dtype = torch.float16 if half else torch.float32
        assert all(v.dtype == dtype for v in release["model"].values() if v.is_floating_point())
        model = load_weights(build_model(cfg), out)
        best = torch.load(checkpoints / "best.pth", weights_only=True)["model"]
        for key, value in model.state_dict().items():
            torch.testing.assert_close(value, best[key], rtol=1e-3 if half else 0, atol=1e-3 if half else 0)

    out = tmp_path / "more_iters.pth"
    assert train.main(["--work-dir", str(tmp_path), "--export", str(out), "model.iters", "7"]) == 0
    assert config_from_text(torch.load(out, weights_only=True)["config"]).model.iters == 7 != cfg.model.iters
    assert "iters: 7" in out.with_suffix(".yaml").read_text()
    assert train.main(["--work-dir", str(tmp_path), "--export", str(tmp_path / "bad.pth"), "model.nope", "1"]) == 2
    assert not (tmp_path / "bad.pth").exists()
    with pytest.raises(SystemExit):
        train.parse_args(["--work-dir", str(tmp_path), "--export", str(out), "--config", "configs/synthetic.yaml"])


def test_the_best_checkpoint_is_the_lowest_validation_error(tmp_path, monkeypatch):
    cfg = tiny_config(train__num_steps="3", train__val_freq="1", train__val_sets='["synthetic"]')
    trainer = train.Trainer(cfg, tmp_path, single_process())
    errors = iter([2.0, 1.0, 3.0])
    monkeypatch.setattr(train, "evaluate", lambda *args, **kwargs: {"epe": next(errors)})
    result = trainer.fit()
    assert result["best"]["step"] == 2 and result["best"]["value"] == 1.0
    assert torch.load(tmp_path / "checkpoints" / "best.pth", weights_only=True)["step"] == 2


def test_restore_ckpt_starts_from_its_weights_and_a_depth_model_from_flow_weights(tmp_path):
    flow = build_model(tiny_config())
    with torch.no_grad():
        for value in flow.state_dict().values():
            if value.is_floating_point():
                value.add_(torch.randn_like(value))  # far from any initialisation
    weights = tmp_path / "flow.pth"
    torch.save({"format": WEIGHTS_FORMAT, "model": flow.state_dict()}, weights)

    trainer = train.Trainer(tiny_config(train__restore_ckpt=str(weights)), tmp_path / "flow", single_process())
    for key, value in trainer.model.state_dict().items():
        torch.testing.assert_close(value, flow.state_dict()[key], rtol=0, atol=0)

    depth_opts = {"model__type": "depth", "data__train_sets": '["synthetic_depth"]'}
    trainer = train.Trainer(tiny_config(**depth_opts, train__restore_ckpt=str(weights)), tmp_path / "depth",
                            single_process())
    train.seed_everything(tiny_config().seed)
    initial = build_model(tiny_config(**depth_opts)).state_dict()  # the trainer's seeded initialisation
    for key, value in trainer.model.state_dict().items():
        expected = flow.state_dict()[key] if key.startswith("context_encoder.") else initial[key]
        torch.testing.assert_close(value, expected, rtol=0, atol=0)
    assert any(key.startswith("depth_decoder.") for key in initial)


def test_export_average_is_the_mean_of_the_last_step_checkpoints(tmp_path, capfd):
    cfg = tiny_config()
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    reference = build_model(cfg).state_dict()
    for step in (1, 2, 3):  # every float weight of step s is s; integer buffers are kept from the newest file
        model = {key: torch.full_like(value, step) for key, value in reference.items()}
        torch.save({"format": train.CHECKPOINT_FORMAT, "model": model, "step": step,
                    "config": cfg.dump()}, folder / f"step_{step:07d}.pth")
    out = tmp_path / "averaged.pth"
    assert train.main(["--work-dir", str(tmp_path), "--export", str(out), "--average", "2"]) == 0
    release = torch.load(out, weights_only=True)
    assert release["format"] == WEIGHTS_FORMAT and set(release["model"]) == set(reference)
    for key, value in release["model"].items():
        assert value.dtype == reference[key].dtype
        torch.testing.assert_close(value, torch.full_like(value, 2.5 if value.is_floating_point() else 3))
    assert "step_0000002.pth, step_0000003.pth" in capfd.readouterr().err

    assert train.main(["--work-dir", str(tmp_path), "--export", str(tmp_path / "four.pth"), "--average", "4"]) == 2
    assert "holds 3 step_*.pth" in capfd.readouterr().err and not (tmp_path / "four.pth").exists()
    for argv in (["--average", "2"], ["--export", str(out), "--average", "0"]):
        with pytest.raises(SystemExit):
            train.parse_args(["--work-dir", str(tmp_path), *argv])


def test_refused_runs_leave_no_new_work_dir_behind(tmp_path, capfd):
    assert train.main(["--work-dir", str(tmp_path / "typo"), "--resume"]) == 2
    assert "checkpoint not found" in capfd.readouterr().err
    assert not (tmp_path / "typo").exists()
    assert train.main(["--config", str(CONFIG), "--work-dir", str(tmp_path / "new"), "model.itres", "3"]) == 2
    assert "did you mean 'model.iters'" in capfd.readouterr().err
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()  # a folder that existed before is never removed
    assert train.main(["--work-dir", str(tmp_path / "kept"), "--resume"]) == 2
    assert (tmp_path / "kept").is_dir()
