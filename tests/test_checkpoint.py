"""Checkpoints: published formats load strictly, mismatches name keys and shapes, writes are atomic."""
import os

import pytest
import torch

import dlsn
from dlsn.sr import checkpoint as ckpt
from dlsn.models import infer_arguments, load_state_dict_strict
from dlsn.sr.checkpoint import CheckpointError

SMALL = dict(n_resgroups=2, n_resblocks=2, n_feats=16, reduction=4, chunk_size=16)


def small_model(scale=2, **kwargs):
    torch.manual_seed(scale)
    return dlsn.DLSN(scale=scale, **{**SMALL, **kwargs})


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "params", "params_ema", "module", "params_module"])
def test_published_formats_load(tmp_path, wrap):
    model = small_model(scale=3)
    sd = model.state_dict()
    assert "a" in sd and "body.0.body.2.conv_match.0.weight" in sd and "tail.0.0.weight" in sd
    if wrap in ("module", "params_module"):
        sd = {"module." + k: v for k, v in sd.items()}
    if wrap not in ("plain", "module"):
        sd = {"params" if wrap == "params_module" else wrap: sd}
    path = tmp_path / "published.pth"
    torch.save(sd, path)
    loaded = ckpt.load_model(path)
    assert not loaded.training and loaded.scale == 3
    assert_same_weights(loaded, model)
    assert ckpt.load_model(path, scale=3, chunk_size=16).scale == 3


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_architecture_is_inferred(scale):
    arch = infer_arguments(small_model(scale=scale, rgb_range=255.0).state_dict())
    assert arch == dict(scale=scale, rgb_range=255.0, **SMALL)


def test_params_ema_preferred_over_params(tmp_path):
    a, b = small_model(), small_model()
    with torch.no_grad():
        for p in b.parameters():
            p.add_(1)
    torch.save({"params": a.state_dict(), "params_ema": b.state_dict()}, tmp_path / "both.pth")
    assert_same_weights(ckpt.load_model(tmp_path / "both.pth"), b)


@pytest.mark.parametrize("request_, keys", [
    (dict(scale=3), r"(?s)scale=3 requested but the checkpoint has scale=2.*tail\.0\.0\.weight: checkpoint \(64, 16, 3, 3\) vs model \(144, 16, 3, 3\)"),
    (dict(scale=4), r"(?s)scale=4 requested.*missing keys \(2\): tail\.0\.2\.weight; tail\.0\.2\.bias"),
    (dict(chunk_size=32), r"(?s)chunk_size=32 requested.*body\.0\.body\.2\.fc\.0\.weight: checkpoint \(16, 16\) vs model \(32, 16\)"),
    (dict(n_feats=32), r"(?s)n_feats=32 requested.*head\.0\.weight: checkpoint \(16, 3, 3, 3\) vs model \(32, 3, 3, 3\)"),
    (dict(n_resgroups=3), r"(?s)n_resgroups=3 requested.*missing keys"),
    (dict(rgb_range=255.0), r"rgb_range=255.0 requested but the checkpoint has rgb_range=1.0"),
])
def test_mismatch_is_an_error_naming_keys(tmp_path, request_, keys):
    torch.save(small_model().state_dict(), tmp_path / "x2.pth")
    with pytest.raises(CheckpointError, match=keys):
        ckpt.load_model(tmp_path / "x2.pth", **request_)


def test_strict_load_reports_everything_and_copies_nothing():
    model, source = small_model(), small_model(scale=3).state_dict()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    source["extra.weight"] = torch.zeros(1)
    del source["head.0.bias"]
    with pytest.raises(CheckpointError) as info:
        load_state_dict_strict(model, source)
    text = str(info.value)
    assert "tail.0.0.weight: checkpoint (144, 16, 3, 3) vs model (64, 16, 3, 3)" in text
    assert "missing keys (1): head.0.bias" in text and "unexpected keys (1): extra.weight" in text
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_fine_tune_excludes_the_upsampler():
    x2, x4 = small_model(2), small_model(4)
    tail_before = x4.tail[0][0].weight.clone()
    load_state_dict_strict(x4, x2.state_dict(), exclude=("tail.0.",))
    assert torch.equal(x4.tail[0][0].weight, tail_before)
    for key, value in x2.state_dict().items():
        if not key.startswith("tail.0."):
            assert torch.equal(x4.state_dict()[key], value), key


@pytest.mark.parametrize("content, message", [(b"not a checkpoint", "not a readable dlsn checkpoint"), (None, "not found")])
def test_unreadable_files(tmp_path, content, message):
    path = tmp_path / "broken.pth"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises((CheckpointError, FileNotFoundError), match=message):
        ckpt.load_model(path)


def test_not_a_dlsn_state_dict(tmp_path):
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a DLSN state dict: key 'head.0.weight' is missing"):
        ckpt.load_model(tmp_path / "other.pth")
    torch.save({"epoch": 3}, tmp_path / "nothing.pth")
    with pytest.raises(ValueError, match="holds no tensors"):
        ckpt.load_model(tmp_path / "nothing.pth")


def test_atomic_save_interrupted_leaves_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    ckpt.atomic_save({"version": torch.tensor(1)}, path)

    def crash(obj, handle):
        handle.write(b"partial bytes")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.atomic_save({"version": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no temp file left behind
    assert int(torch.load(path)["version"]) == 1


def test_rng_state_round_trip(tmp_path):
    import random

    import numpy as np

    ckpt.save_training_checkpoint(tmp_path / "t.pt", rng=ckpt.rng_state())
    expected = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.set_rng_state(ckpt.read_checkpoint(tmp_path / "t.pt")["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]


def test_export_safetensors_round_trip(tmp_path):
    model = small_model(scale=4)
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, tmp_path / "m.pth")
    out = ckpt.export_safetensors(tmp_path / "m.pth", tmp_path / "m.safetensors")
    assert_same_weights(ckpt.load_model(out), model)
    assert sorted(os.listdir(tmp_path)) == ["m.pth", "m.safetensors"]


def test_untraceable_settings_travel_with_the_weights(tmp_path):
    """n_hashes and res_scale are not in the tensors: our weight files and exports record them."""
    model = small_model(res_scale=1.0, n_hashes=2)
    ckpt.save_weights(model.state_dict(), dict(res_scale=1.0, n_hashes=2), tmp_path / "model.pt")
    ckpt.export_safetensors(tmp_path / "model.pt", tmp_path / "model.safetensors")
    for name in ("model.pt", "model.safetensors"):
        loaded = ckpt.load_model(tmp_path / name)
        assert loaded.body[0].res_scale == 1.0 and loaded.gla_layers()[0].n_hashes == 2, name
        assert_same_weights(loaded, model)
    torch.save(model.state_dict(), tmp_path / "plain.pth")  # published format: the published values
    assert ckpt.load_model(tmp_path / "plain.pth").body[0].res_scale == 0.1


class _NotATensor:
    pass


def _broken_files(tmp_path):
    good = tmp_path / "good.pt"
    torch.save(small_model().state_dict(), good)
    data = good.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save({"params": small_model().state_dict(), "extra": _NotATensor()}, tmp_path / "unsafe.pt")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage!")
    return {"truncated.pt": "truncated", "empty.pt": "empty", "unsafe.pt": "_NotATensor",
            "bad.safetensors": "safetensors"}


def test_unreadable_checkpoints_are_one_line_of_our_own(tmp_path, capsys):
    from dlsn.sr.cli import main

    for name, why in _broken_files(tmp_path).items():
        with pytest.raises(ckpt.CheckpointError) as info:
            ckpt.load_model(tmp_path / name)
        message = str(info.value)
        assert "\n" not in message and str(tmp_path / name) in message and why in message, message
        assert "not a readable dlsn checkpoint or weights file" in message
        assert "weights_only" not in message and "False" not in message, message
        assert main(["upscale", str(tmp_path / name), "-o", str(tmp_path / "o"), "--checkpoint",
                     str(tmp_path / name), "--scale", "2"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and why in err, err
