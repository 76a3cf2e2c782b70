"""Configs: every stage file loads, overrides work and are typed, unknown keys and bad values are errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import config_from_text, flatten_config, get_cfg_defaults, load_config, with_overrides

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_the_stage_files_exist():
    names = {p.stem for p in CONFIGS}
    assert {"chairs", "things", "sintel", "kitti", "synthetic"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_stage_file_loads(path):
    cfg = load_config(path)
    assert cfg.stage in {"chairs", "things", "sintel", "kitti", "synthetic"} or cfg.stage.startswith("depth")
    assert cfg.is_frozen()


def test_official_schedule_numbers():
    chairs = load_config(CONFIGS[0].parent / "chairs.yaml")
    assert (chairs.train.num_steps, chairs.train.batch_size, list(chairs.data.crop_size), chairs.train.lr) == (
        140000, 8, [368, 496], 2.5e-4)
    sintel = load_config(CONFIGS[0].parent / "sintel.yaml")
    assert (sintel.train.num_steps, sintel.train.batch_size, list(sintel.data.crop_size), sintel.train.lr) == (
        220000, 4, [368, 800], 8.5e-5)
    assert {s.split("*")[0] for s in sintel.data.train_sets} == {"sintel_clean", "sintel_final", "kitti", "hd1k", "things_clean"}
    kitti = load_config(CONFIGS[0].parent / "kitti.yaml")
    assert (kitti.train.num_steps, kitti.train.lr) == (60000, 6.5e-5)
    things = load_config(CONFIGS[0].parent / "things.yaml")
    assert (things.train.num_steps, list(things.data.crop_size)) == (180000, [368, 800])


def test_command_line_overrides_are_typed():
    cfg = load_config(None, ["train.lr", "1e-3", "data.crop_size", "[64, 96]", "model.variant", "protoformer-s",
                             "train.add_noise", "False"])
    assert cfg.train.lr == pytest.approx(1e-3)
    assert list(cfg.data.crop_size) == [64, 96]
    assert cfg.model.variant == "protoformer-s"
    assert cfg.train.add_noise is False


def test_defaults_are_not_shared_state():
    a = get_cfg_defaults()
    a.train.lr = 123.0
    assert get_cfg_defaults().train.lr != 123.0


@pytest.mark.parametrize(
    "opts, error, message",
    [
        (["train.lrr", "1"], KeyError, "train.lrr"),
        (["nosection.lr", "1"], KeyError, "nosection"),
        (["train.lr"], ValueError, "KEY VALUE"),
        (["train.lr", "fast"], ValueError, "train.lr"),
        (["model.variant", "protoformer-xxl"], ValueError, "protoformer-xxl"),
        (["model.type", "segmentation"], ValueError, "model.type"),
        (["data.crop_size", "[8, 8]"], ValueError, "crop_size"),
        (["train.amp_dtype", "float8"], ValueError, "train.amp_dtype must be bfloat16 or float16, got 'float8'"),
        (["depth.eval_crop", "center"], ValueError, "depth.eval_crop must be garg, eigen or none, got 'center'"),
        (["model.iters", "0"], ValueError, "model.iters must be >= 1"),
    ],
)
def test_bad_overrides_are_clear_errors(opts, error, message):
    with pytest.raises(error, match=message):
        load_config(None, opts)


def test_unknown_key_in_file_names_the_file(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(KeyError, match="typo.yaml"):
        load_config(path)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")


def test_unreadable_config_files_are_clear_errors(tmp_path):
    broken, scalar, binary, empty = (tmp_path / name for name in ("broken.yaml", "scalar.yaml", "model.pth", "e.yaml"))
    broken.write_text("train: [\n")
    scalar.write_text("hello\n")
    binary.write_bytes(b"PK\x03\x04\xff\xfe binary")
    empty.write_text("")
    with pytest.raises(ValueError, match="broken.yaml: not valid YAML"):
        load_config(broken)
    with pytest.raises(ValueError, match="scalar.yaml: a config must be a YAML mapping .* got a str"):
        load_config(scalar)
    with pytest.raises(ValueError, match="model.pth: not a YAML config file, it is binary .*--ckpt"):
        load_config(binary)
    assert load_config(empty) == load_config(None)


def test_unknown_keys_suggest_the_closest_and_print_without_quotes(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("train:\n  lr_typo: 1\n")
    with pytest.raises(KeyError) as error:
        load_config(path)
    assert str(error.value).startswith(f"{path}: unknown config key 'train.lr_typo'")
    with pytest.raises(KeyError) as error:
        load_config(None, ["model.itres", "3"])
    assert str(error.value) == "unknown config key 'model.itres' (did you mean 'model.iters'?)"
    with pytest.raises(KeyError) as error:
        load_config(None, ["zzz.qqq", "3"])
    assert str(error.value) == "unknown config key 'zzz.qqq'"


def test_config_from_text_round_trips_a_dump_and_names_its_source():
    cfg = load_config(None, ["train.lr", "1e-3", "model.variant", "protoformer-s"])
    again = config_from_text(cfg.dump(), ["train.batch_size", "3"])
    assert again.train.lr == 1e-3 and again.model.variant == "protoformer-s" and again.train.batch_size == 3
    flat = flatten_config(again)
    assert flat["train.lr"] == 1e-3 and flat["model.variant"] == "protoformer-s"
    with pytest.raises(KeyError, match="ckpt.pth: unknown config key"):
        config_from_text("train:\n  no_such_key: 1\n", source="ckpt.pth")
    with pytest.raises(ValueError, match="ckpt.pth"):
        config_from_text("train:\n  lr: [1, 2]\n", source="ckpt.pth")


def test_with_overrides_returns_a_checked_copy_and_leaves_the_original():
    cfg = load_config(None, ["model.iters", "6"])
    changed = with_overrides(cfg, ["model.iters", "12", "train.lr", "2e-4"])
    assert (changed.model.iters, changed.train.lr) == (12, 2e-4) and changed.is_frozen()
    assert cfg.model.iters == 6 and cfg.is_frozen()
    with pytest.raises(KeyError, match="model.no_such_key"):
        with_overrides(cfg, ["model.no_such_key", "1"])
    with pytest.raises(ValueError, match="model.iters must be >= 1"):
        with_overrides(cfg, ["model.iters", "0"])


def test_a_stage_file_merges_its_base_chain_then_its_own_keys(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "first.yaml").write_text(
        "model:\n  iters: 5\ndata:\n  crop_size: [96, 128]\ntrain:\n  lr: 1.0e-3\n  batch_size: 3\n")
    (tmp_path / "sub" / "second.yaml").write_text(
        "_base_: ../first.yaml\ndata:\n  crop_size: [64, 64]\ntrain:\n  lr: 2.0e-4\n")
    (tmp_path / "third.yaml").write_text("_base_: sub/second.yaml\ntrain:\n  batch_size: 7\n")
    cfg = load_config(tmp_path / "third.yaml", ["model.iters", "9"])
    assert cfg.model.iters == 9  # the command line wins over every file
    assert list(cfg.data.crop_size) == [64, 64]  # a list replaces the base's list, it is not merged item by item
    assert (cfg.train.lr, cfg.train.batch_size) == (2.0e-4, 7)  # nearest file wins, per key inside a section
    assert cfg.train.num_steps == get_cfg_defaults().train.num_steps  # keys no file names keep the defaults


def test_bad_bases_are_clear_errors(tmp_path):
    (tmp_path / "orphan.yaml").write_text("_base_: missing.yaml\n")
    with pytest.raises(FileNotFoundError, match=r"missing.yaml \(the _base_ of .*orphan.yaml\)"):
        load_config(tmp_path / "orphan.yaml")
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    with pytest.raises(ValueError, match="cycle: .*a.yaml -> .*b.yaml -> .*a.yaml"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "typo.yaml").write_text("train:\n  lr_typo: 1\n")
    (tmp_path / "child.yaml").write_text("_base_: typo.yaml\n")
    with pytest.raises(KeyError, match=r"typo.yaml: unknown config key 'train.lr_typo'"):
        load_config(tmp_path / "child.yaml")  # the error names the file that holds the wrong key
    for bad in ("[a.yaml]", "", "''"):
        (tmp_path / "badbase.yaml").write_text(f"_base_: {bad}\n")
        with pytest.raises(ValueError, match="_base_ must be the path of another config file"):
            load_config(tmp_path / "badbase.yaml")
    with pytest.raises(ValueError, match="only allowed in a config file"):
        config_from_text("_base_: a.yaml\n", source="ckpt.pth")


def test_the_last_stage_resolves_to_the_config_shipped_with_the_default_checkpoint():
    """The stage files are diffs of each other; resolved, stage 10's is the whole config the shipped checkpoint
    was trained with (its export set only the inference settings, 8 iterations and 2 in a refining pass, and
    recorded the starting weights)."""
    shipped = flatten_config(load_config(CONFIGS[0].parents[1] / "checkpoints" / "protoformer-s-synthetic.yaml"))
    stage10 = flatten_config(load_config(CONFIGS[0].parent / "cpu_default_ft9.yaml", [
        "model.iters", "8", "eval.refine_iters", "2", "train.restore_ckpt", "runs/cpu_default/stage9/average.pth"]))
    assert stage10 == shipped


def test_the_default_checkpoint_stages_inherit_what_they_do_not_change():
    stage = {p.stem: load_config(p) for p in CONFIGS if p.stem.startswith("cpu_default")}
    first, stage7 = stage["cpu_default"], stage["cpu_default_ft6"]
    assert "_base_" in (CONFIGS[0].parent / "cpu_default_ft6.yaml").read_text()
    # named only by stage 1 and still in force at stage 7
    assert (stage7.model.variant, stage7.model.iters, list(stage7.data.crop_size)) == ("protoformer-s", 6, [192, 256])
    assert (stage7.train.batch_size, stage7.aug.max_scale) == (4, first.aug.max_scale) == (4, 0.4)
    # changed by stages 2, 4 and 5, then inherited; and stage 7's own keys
    assert list(stage7.synthetic.image_size) == [288, 384] and stage7.synthetic.max_displacement == 100.0
    assert (stage7.train.keep_last, stage7.train.ckpt_freq) == (7, 100)
    assert (stage7.synthetic.seed, stage7.synthetic.texture_image_prob, stage7.train.num_steps) == (8, 0.8, 1800)
    assert len({s.synthetic.seed for s in stage.values()}) == len(stage)  # every stage draws new samples
    assert (stage["cpu_default_ft8"].model.iters, stage["cpu_default_ft8"].synthetic.texture_image_prob) == (8, 0.8)
