"""EDSR / RCAN / FSRCNN with GLA layers (dlsn.models.backbones): public key layouts, GLA off = plain network,
strict loading of plain checkpoints into the GLA variants, training and `dlsn eval` through the config."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from dlsn.models import EDSR, FSRCNN, RCAN, build_model, load_backbone
from dlsn.sr.checkpoint import CheckpointError, load_model, save_weights
from dlsn.sr.cli import main
from dlsn.sr.config import ModelConfig, load_config
from dlsn.sr.imageio import write_image

GLA_ARGS = dict(reduction=4, chunk_size=16, n_hashes=2)


def edsr(**kw):
    return EDSR(**{**dict(n_resblocks=3, n_feats=16), **kw})


def rcan(**kw):
    return RCAN(**{**dict(n_resgroups=2, n_resblocks=2, n_feats=32), **kw})


def fsrcnn(**kw):
    return FSRCNN(**{**dict(d=16, s=8, m=2), **kw})


# --- independent functional forwards, read off the public implementations' key layouts ----------

def _conv(sd, name, x):
    weight = sd[name + ".weight"]
    return F.conv2d(x, weight, sd[name + ".bias"], padding=weight.shape[-1] // 2)


def _upsample(sd, x, scale):
    stages = [(0, 3)] if scale == 3 else [(2 * k, 2) for k in range(scale.bit_length() - 1)]
    for index, factor in stages:
        x = F.pixel_shuffle(_conv(sd, f"tail.0.{index}", x), factor)
    return x


def plain_edsr(sd, x, n_resblocks, scale, res_scale=1.0):
    h = _conv(sd, "head.0", _conv(sd, "sub_mean", x))
    r = h
    for i in range(n_resblocks):
        r = r + res_scale * _conv(sd, f"body.{i}.body.2", F.relu(_conv(sd, f"body.{i}.body.0", r)))
    r = _conv(sd, f"body.{n_resblocks}", r) + h
    return _conv(sd, "add_mean", _conv(sd, "tail.1", _upsample(sd, r, scale)))


def plain_rcan(sd, x, n_resgroups, n_resblocks, scale):
    h = _conv(sd, "head.0", _conv(sd, "sub_mean", x))
    r = h
    for g in range(n_resgroups):
        group_in = r
        for b in range(n_resblocks):
            p = f"body.{g}.body.{b}.body."
            y = _conv(sd, p + "2", F.relu(_conv(sd, p + "0", r)))
            ca = torch.sigmoid(_conv(sd, p + "3.conv_du.2", F.relu(_conv(sd, p + "3.conv_du.0", y.mean((2, 3), keepdim=True)))))
            r = y * ca + r
        r = _conv(sd, f"body.{g}.body.{n_resblocks}", r) + group_in
    r = _conv(sd, f"body.{n_resgroups}", r) + h
    return _conv(sd, "add_mean", _conv(sd, "tail.1", _upsample(sd, r, scale)))


def plain_fsrcnn(sd, x, m, scale):
    x = F.prelu(_conv(sd, "first_part.0", x), sd["first_part.1.weight"])
    for k in range(m + 2):
        x = F.prelu(_conv(sd, f"mid_part.{2 * k}", x), sd[f"mid_part.{2 * k + 1}.weight"])
    return F.conv_transpose2d(x, sd["last_part.weight"], sd["last_part.bias"], stride=scale, padding=4,
                              output_padding=scale - 1)


PLAIN = {
    "edsr": (edsr, lambda sd, x, scale: plain_edsr(sd, x, 3, scale)),
    "rcan": (rcan, lambda sd, x, scale: plain_rcan(sd, x, 2, 2, scale)),
    "fsrcnn": (fsrcnn, lambda sd, x, scale: plain_fsrcnn(sd, x, 2, scale)),
}
GLA_POSITIONS = {"edsr": [0, 2, 3], "rcan": [1, 2], "fsrcnn": [0, 1, 4]}


def test_plain_key_layouts():
    keys = set(edsr(scale=4).state_dict())
    assert {"sub_mean.weight", "sub_mean.bias", "head.0.weight", "body.0.body.0.weight", "body.2.body.2.bias",
            "body.3.weight", "tail.0.0.weight", "tail.0.2.weight", "tail.1.weight", "add_mean.bias"} <= keys
    assert len(keys) == 4 + 2 + 3 * 4 + 2 + 4 + 2
    keys = set(rcan().state_dict())
    assert {"body.1.body.1.body.3.conv_du.0.weight", "body.1.body.1.body.3.conv_du.2.bias", "body.0.body.2.weight",
            "body.2.weight", "tail.0.0.weight", "tail.1.bias"} <= keys
    assert len(keys) == 4 + 2 + 2 * (2 * 8 + 2) + 2 + 2 + 2
    assert set(fsrcnn().state_dict()) == {"first_part.0.weight", "first_part.0.bias", "first_part.1.weight",
                                         *(f"mid_part.{i}.{n}" for i in range(0, 8, 2) for n in ("weight", "bias")),
                                         *(f"mid_part.{i}.weight" for i in range(1, 8, 2)),
                                         "last_part.weight", "last_part.bias"}


@pytest.mark.parametrize("arch", PLAIN)
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_gla_off_is_the_plain_network(arch, scale):
    make, reference = PLAIN[arch]
    torch.manual_seed(0)
    model = make(scale=scale).eval()
    assert not any(key.startswith("gla.") for key in model.state_dict())
    x = torch.rand(1, 3, 11, 9)
    with torch.no_grad():
        out = model(x)
        expected = reference(model.state_dict(), x, scale)
    assert out.shape == (1, 3, 11 * scale, 9 * scale)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize("arch", PLAIN)
def test_shape_and_gradient_with_gla(arch):
    make, _ = PLAIN[arch]
    torch.manual_seed(0)
    model = make(scale=2, gla_positions=GLA_POSITIONS[arch], **GLA_ARGS).train()
    assert len(model.gla_layers()) == len(GLA_POSITIONS[arch])
    assert [layer.eval_seed for layer in model.gla_layers()] == list(range(len(GLA_POSITIONS[arch])))
    x = torch.rand(2, 3, 10, 13)
    out = model(x)
    assert out.shape == (2, 3, 20, 26)
    out.square().mean().backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
    for layer in model.gla_layers():  # the GLA layers learn: both the dot product and the learnable term
        assert layer.conv_match[0].weight.grad.abs().sum() > 0 and layer.fc[2].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", PLAIN)
def test_plain_checkpoint_loads_strictly_into_the_gla_variant(arch):
    make, reference = PLAIN[arch]
    torch.manual_seed(0)
    plain = make(scale=2)
    state = plain.state_dict()
    model = make(scale=2, gla_positions=GLA_POSITIONS[arch], **GLA_ARGS).eval()
    new = load_backbone(model, {"params": {f"module.{k}": v for k, v in state.items()}})
    assert new == sorted(k for k in model.state_dict() if k.startswith("gla."))
    assert {k.split(".")[1] for k in new} == {str(p) for p in GLA_POSITIONS[arch]}
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value), key
    # GLA layers whose values are zero add nothing: the GLA variant then computes the plain network.
    with torch.no_grad():
        for layer in model.gla_layers():
            layer.conv_assembly[0].weight.zero_()
            layer.conv_assembly[0].bias.zero_()
        x = torch.rand(1, 3, 12, 10)
        torch.testing.assert_close(model(x), reference(state, x, 2), rtol=0, atol=0)


@pytest.mark.parametrize("make,kwargs,names", [
    (edsr, dict(scale=3), ["tail.0.0.weight: checkpoint (64, 16, 3, 3) vs model (144, 16, 3, 3)"]),
    (edsr, dict(scale=4), ["missing keys (2): tail.0.2.weight; tail.0.2.bias"]),
    (edsr, dict(n_feats=8), ["head.0.weight: checkpoint (16, 3, 3, 3) vs model (8, 3, 3, 3)"]),
    (edsr, dict(n_resblocks=2), ["missing keys (2): body.2.weight; body.2.bias", "unexpected keys (6)", "body.3.weight"]),
    (rcan, dict(scale=3), ["tail.0.0.weight"]),
    (rcan, dict(n_feats=16), ["head.0.weight", "conv_du"]),
])
def test_wrong_scale_or_width_names_the_keys(make, kwargs, names):
    plain = make(scale=2).state_dict()
    model = make(**{**dict(scale=2, gla_positions=[1], **GLA_ARGS), **kwargs})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_backbone(model, plain)
    message = str(info.value)
    assert "\n" not in message and all(name in message for name in names), message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing copied


def test_bad_positions_and_arch():
    with pytest.raises(ValueError, match="gla_positions must be distinct integers in 0..3"):
        edsr(gla_positions=[4])
    with pytest.raises(ValueError, match="distinct"):
        rcan(gla_positions=[1, 1])
    with pytest.raises(ValueError, match="model.arch must be one of"):
        build_model({"arch": "edsrr"})
    with pytest.raises(ValueError, match="gla_positions is for arch"):
        build_model({"arch": "dlsn", "gla_positions": [1]})


def test_packaged_configs_build_their_arch():
    for name, cls, positions in (("edsr_gla_x2", EDSR, [8]), ("rcan_gla_x2", RCAN, [5]), ("fsrcnn_gla_x2", FSRCNN, [0])):
        model = build_model(load_config(name).model)
        assert type(model) is cls and model.gla_positions == positions and model.scale == 2


@pytest.mark.parametrize("arch,make", [("edsr", edsr), ("rcan", rcan)])
def test_load_model_reads_a_published_style_plain_checkpoint(tmp_path, arch, make):
    torch.manual_seed(0)
    plain = make(scale=2, rgb_range=255).eval()
    path = tmp_path / f"{arch}.pt"
    torch.save(plain.state_dict(), path)
    loaded = load_model(path)
    assert type(loaded) is type(plain) and loaded.rgb_range == 255 and loaded.scale == 2
    x = torch.rand(1, 3, 8, 8) * 255
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), plain(x), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match=r"(?s)scale=4 requested but the checkpoint is x2: .*tail\.0\.2\.weight"):
        load_model(path, scale=4)


def test_fsrcnn_weights_need_the_scale(tmp_path):
    path = tmp_path / "fsrcnn.pt"
    torch.save(fsrcnn(scale=3).state_dict(), path)
    with pytest.raises(CheckpointError, match="do not record the scale"):
        load_model(path)
    assert load_model(path, scale=3).scale == 3


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    g = torch.Generator().manual_seed(0)
    for name in ("a", "b", "c"):
        base = torch.linspace(0, 1, 36).view(1, 1, 36).expand(3, 32, 36)
        write_image(folder / f"{name}.png", (0.7 * base + 0.3 * torch.rand(3, 32, 36, generator=g)).clamp(0, 1))
    return folder


@pytest.mark.parametrize("config", ["edsr_gla_x2", "rcan_gla_x2", "fsrcnn_gla_x2"])
def test_train_and_eval_with_the_same_commands(tmp_path, images, capsys, config):
    out = tmp_path / "run"
    groups = ["model.n_resgroups=2"] if config.startswith("rcan") else []  # only RCAN has groups
    tiny = ["model.n_feats=16", "model.n_resblocks=2", *groups, "model.gla_positions=[1]",
            "model.chunk_size=16", "model.n_hashes=1", f"data.train_dir={images}", "data.patch_size=12",
            "data.batch_size=2", "data.num_workers=0", "train.iterations=2", "train.milestones=[1]",
            f"log.out_dir={out}", "log.val_every=0", "log.save_every=0", "log.progress=false", "log.tensorboard=false"]
    assert main(["train", "--config", config, *tiny]) == 0
    capsys.readouterr()
    model = load_model(out / "model.pt")
    assert type(model).__name__ == config.split("_")[0].upper() and model.gla_positions == [1]
    assert main(["eval", "--checkpoint", str(out / "model.pt"), "--data", str(images), "--scale", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    # Two iterations train nothing useful (FSRCNN starts near zero output): only check the numbers exist.
    assert len(result["images"]) == 3 and all(math.isfinite(row["psnr"]) for row in result["images"])
    assert main(["eval", "--checkpoint", str(out / "model.pt"), "--data", str(images), "--scale", "3"]) == 2
    assert "scale=3 requested but the checkpoint is x2" in capsys.readouterr().err


def test_saved_initialised_gla_model_round_trips(tmp_path):
    torch.manual_seed(0)
    config = {"arch": "edsr", "scale": 2, "n_resblocks": 2, "n_feats": 16, "gla_positions": [0, 2],
              "reduction": 4, "chunk_size": 16, "n_hashes": 2, "res_scale": 1.0, "rgb_range": 1.0}
    model = build_model(config).eval()
    save_weights(model.state_dict(), config, tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt")
    x = torch.rand(1, 3, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    # The same weights without their config: the architecture is read off the keys.
    torch.save(model.state_dict(), tmp_path / "raw.pt")
    assert load_model(tmp_path / "raw.pt", n_hashes=2).gla_positions == [0, 2]


def test_set_n_hashes_changes_the_rounds_not_the_weights():
    torch.manual_seed(0)
    model = edsr(gla_positions=[1, 3], **GLA_ARGS)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.set_n_hashes(5).eval()
    assert [layer.n_hashes for layer in model.gla_layers()] == [5, 5]
    model.train()
    assert [layer.n_hashes for layer in model.gla_layers()] == [2, 2]
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    reference = edsr(gla_positions=[1, 3], **{**GLA_ARGS, "n_hashes": 5})
    reference.load_state_dict(state)
    x = torch.rand(1, 3, 9, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), reference.eval()(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="positive integer"):
        model.set_n_hashes(0)


def test_a_setting_the_architecture_ignores_is_an_error():
    """local_fusion is DLSN's; on EDSR it would silently do nothing. GLA options reach the GLA layers."""
    config = ModelConfig(arch="edsr", n_feats=16, n_resblocks=2, gla_positions=[1], chunk_size=16,
                         fp32_precision="tf32", check_finite=True)
    assert [(g.fp32_precision, g.check_finite) for g in build_model(config).gla.values()] == [("tf32", True)]
    config.local_fusion = False
    with pytest.raises(ValueError, match="model.arch 'edsr' does not use model.local_fusion"):
        build_model(config)
