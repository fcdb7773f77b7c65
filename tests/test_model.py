import pytest
import torch

import dlsn


def expected_keys(n_resgroups, n_resblocks, scale):
    keys = {"a", "sub_mean.weight", "sub_mean.bias", "add_mean.weight", "add_mean.bias", "head.0.weight", "head.0.bias"}
    for g in range(n_resgroups):
        for blk in range(n_resblocks):
            for conv in (0, 2):
                keys |= {f"body.{g}.body.{blk}.body.{conv}.weight", f"body.{g}.body.{blk}.body.{conv}.bias"}
        gla = f"body.{g}.body.{n_resblocks}"
        for part in ("conv_match.0", "conv_assembly.0", "conv_assembly_fc.0", "fc.0", "fc.2"):
            keys |= {f"{gla}.{part}.weight", f"{gla}.{part}.bias"}
        keys |= {f"body.{g}.body.{n_resblocks + 1}.weight", f"body.{g}.body.{n_resblocks + 1}.bias"}
    keys |= {f"body.{n_resgroups}.weight", f"body.{n_resgroups}.bias"}
    upsampler_convs = {2: [0], 3: [0], 4: [0, 2]}[scale]
    for conv in upsampler_convs:
        keys |= {f"tail.0.{conv}.weight", f"tail.0.{conv}.bias"}
    keys |= {"tail.1.weight", "tail.1.bias"}
    return keys


def small(scale=2, **kwargs):
    options = dict(n_resgroups=2, n_resblocks=2, n_feats=8, chunk_size=16, n_hashes=2, backend="reference")
    options.update(kwargs)
    return dlsn.DLSN(scale=scale, **options)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_output_shape_and_published_keys(scale):
    model = small(scale).eval()
    assert model(torch.rand(2, 3, 7, 5)).shape == (2, 3, 7 * scale, 5 * scale)
    assert set(model.state_dict()) == expected_keys(2, 2, scale)


def test_published_default_keys_and_shapes():
    model = dlsn.DLSN()
    state = model.state_dict()
    assert set(state) == expected_keys(10, 4, 2)
    assert state["body.0.body.4.conv_match.0.weight"].shape == (64, 256, 3, 3)
    assert state["body.0.body.4.fc.0.weight"].shape == (128, 256)
    assert state["tail.0.0.weight"].shape == (1024, 256, 3, 3)
    assert state["a"].shape == (1,)


def test_gradients_flow_to_every_trainable_parameter_except_a():
    torch.manual_seed(0)
    model = small().train()
    model(torch.rand(2, 3, 6, 6)).abs().mean().backward()
    for name, param in model.named_parameters():
        if name == "a" or not param.requires_grad:
            assert param.grad is None, name
        else:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"sub_mean.weight", "sub_mean.bias", "add_mean.weight", "add_mean.bias"}


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"state_dict": sd},
    lambda sd: {"params_ema": sd, "params": {}},
    lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}},
])
def test_load_published_style_checkpoints(wrap):
    source = small().eval()
    target = small().eval()
    torch.nn.init.zeros_(target.head[0].weight)
    target.load_state_dict(wrap(source.state_dict()))
    x = torch.rand(1, 3, 6, 6)
    assert torch.equal(source(x), target(x))


def test_mismatching_checkpoint_is_an_error():
    with pytest.raises(RuntimeError, match="size mismatch"):
        small(scale=2).load_state_dict(small(scale=3).state_dict())
    with pytest.raises(ValueError, match="holds no tensors"):
        small().load_state_dict({"meta": {"epoch": 3}})


def test_eval_is_deterministic_and_layers_use_distinct_seeds():
    model = small().eval()
    x = torch.rand(1, 3, 9, 9)
    assert torch.equal(model(x), model(x))
    assert [layer.eval_seed for layer in model.gla_layers()] == [0, 1]


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(scale=5), ValueError, "scales"),
    (dict(n_feats=10, reduction=4), ValueError, "divisible by reduction"),
    (dict(n_colors=1), ValueError, "colour channels"),
])
def test_bad_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        small(**kwargs)


@pytest.mark.parametrize("x,error,match", [
    (torch.rand(1, 1, 4, 4), ValueError, r"\[N, 3, H, W\]"),
    (torch.randint(0, 255, (1, 3, 4, 4)), TypeError, "floating-point"),
])
def test_bad_input(x, error, match):
    with pytest.raises(error, match=match):
        small()(x)
