"""Config schema: packaged configs load, unknown keys are errors with a suggestion, overrides are typed."""
import pytest

from dlsn.sr.config import ConfigError, apply_overrides, config_from_dict, load_config, packaged_config


@pytest.mark.parametrize("name", ["dlsn_x2", "dlsn_x3", "dlsn_x4", "demo"])
def test_packaged_configs_load(name):
    cfg = load_config(name)
    assert packaged_config(name).is_file()
    assert cfg.train.betas == [0.9, 0.999] and cfg.train.eps == 1e-8 and cfg.train.gamma == 0.5


def test_published_protocol():
    x2, x3, x4 = (load_config(f"dlsn_x{s}") for s in (2, 3, 4))
    assert (x2.data.patch_size, x2.data.batch_size, x2.train.lr) == (48, 16, 1e-4)
    assert (x2.model.n_feats, x2.model.n_resgroups, x2.model.chunk_size) == (256, 10, 128)
    assert x2.train.pretrained is None
    for cfg, scale in ((x3, 3), (x4, 4)):
        assert cfg.model.scale == scale
        assert cfg.train.pretrained and cfg.train.pretrained_exclude == ["tail.0."]


@pytest.mark.parametrize("raw, message", [
    ({"trian": {}}, "did you mean 'train'"),
    ({"train": {"lr_milestones": [1]}}, "did you mean 'milestones'"),
    ({"model": {"n_feat": 64}}, "did you mean 'n_feats'"),
    ({"train": {"lr": "fast"}}, "train.lr: expected a number"),
    ({"data": {"batch_size": 2.5}}, "data.batch_size: expected an integer"),
    ({"train": {"amp": "fp8"}}, "train.amp must be one of"),
    ({"train": {"milestones": [5, 3]}}, "increasing"),
    ({"log": {"tensorboard": "yes"}}, "expected true/false"),
    ({"model": [1, 2]}, "section 'model' must be a mapping"),
])
def test_bad_configs_are_errors(raw, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)


def test_overrides_are_typed():
    cfg = apply_overrides(load_config("dlsn_x2"), [
        "train.lr=2e-4", "train.milestones=[10, 20]", "data.val_dir=/tmp/set5", "train.amp=bf16",
        "log.tensorboard=false", "model.res_scale=1", "train.pretrained=null"])
    assert cfg.train.lr == 2e-4 and isinstance(cfg.train.lr, float)
    assert cfg.train.milestones == [10, 20]
    assert cfg.data.val_dir == "/tmp/set5" and cfg.train.amp == "bf16" and cfg.log.tensorboard is False
    assert cfg.model.res_scale == 1.0 and isinstance(cfg.model.res_scale, float)


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1", "did you mean 'lr'"),
    ("trainlr=1", "section.key"),
    ("train.lr", "section.key=value"),
    ("optim.lr=1", "unknown section 'optim'"),
    ("data.patch_size=big", "expected an integer"),
    ("data.patch_size=0", "must be positive"),
])
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(load_config("demo"), [override])


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lr: [1, \n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("train:\n  iteration: 10\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: unknown key train.iteration; did you mean 'iterations'"):
        load_config(typo)


def test_packaged_name_wins_over_a_folder_of_that_name(tmp_path, monkeypatch):
    """`dlsn train --config demo` run from a folder that holds a `demo/` folder (say, the demo's
    output) still finds the packaged config instead of calling the folder a missing file."""
    (tmp_path / "demo").mkdir()
    monkeypatch.chdir(tmp_path)
    assert load_config("demo").model.n_feats == 48
