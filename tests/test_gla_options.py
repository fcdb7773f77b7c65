"""GLA/DLSN options: fp32_precision reaches the kernels; check_finite and non-finite input."""
import pytest
import torch
from conftest import DEVICE

import dlsn
from dlsn.ops import fused


@pytest.fixture
def recorded_precision(monkeypatch):
    """Wrap the window-attention launchers to record the `precision` each call receives."""
    seen = {"fwd": [], "bwd": []}
    real_fwd, real_bwd = fused.window_attn_fwd, fused.window_attn_bwd

    def fwd(*args, precision, **kwargs):
        seen["fwd"].append(precision)
        return real_fwd(*args, precision=precision, **kwargs)

    def bwd(*args, precision, **kwargs):
        seen["bwd"].append(precision)
        return real_bwd(*args, precision=precision, **kwargs)

    monkeypatch.setattr(fused, "window_attn_fwd", fwd)
    monkeypatch.setattr(fused, "window_attn_bwd", bwd)
    return seen


@pytest.fixture
def matmul_precision():
    """Set torch's float32 matmul precision inside a test; restored afterwards."""
    before = torch.get_float32_matmul_precision()
    yield torch.set_float32_matmul_precision
    torch.set_float32_matmul_precision(before)


def tiny_gla(**options):
    torch.manual_seed(0)
    return dlsn.GLA(8, chunk_size=16, n_hashes=2, backend="triton", **options).to(DEVICE)


def run_forward_backward(gla):
    x = torch.randn(1, 8, 3, 5, device=DEVICE, requires_grad=True)
    gla(x).sum().backward()


@pytest.mark.parametrize("torch_setting, expected", [("highest", "ieee"), ("high", "tf32x3"), ("medium", "tf32")])
def test_default_precision_follows_torch(recorded_precision, matmul_precision, torch_setting, expected):
    matmul_precision(torch_setting)
    gla = tiny_gla()
    assert gla.kernel_precision() == expected
    run_forward_backward(gla)
    assert recorded_precision == {"fwd": [expected], "bwd": [expected]}


@pytest.mark.parametrize("mode", ["ieee", "tf32", "tf32x3"])
def test_explicit_precision_overrides_torch(recorded_precision, matmul_precision, mode):
    matmul_precision("medium" if mode == "ieee" else "highest")
    run_forward_backward(tiny_gla(fp32_precision=mode))
    with torch.no_grad():
        tiny_gla(fp32_precision=mode).eval()(torch.randn(1, 8, 4, 4, device=DEVICE))
    assert recorded_precision == {"fwd": [mode, mode], "bwd": [mode]}


def test_bad_precision_is_a_clear_error(no_launch):
    with pytest.raises(ValueError, match=r"fp32_precision must be one of \(None, 'ieee', 'tf32', 'tf32x3'\), got 'fp16'"):
        dlsn.GLA(8, chunk_size=16, fp32_precision="fp16")
    gla = tiny_gla()
    q, v, learned = (torch.zeros(1, 9, n, device=DEVICE) for n in (2, 8, 16))
    with pytest.raises(ValueError, match=r"precision must be one of \(None, 'ieee', 'tf32', 'tf32x3'\), got 'tf16'"):
        fused.gla_attention(q, v, learned, gla.rotations_for(9, DEVICE), 16, torch.zeros(1, 8, 3, 3, device=DEVICE),
                            1.0, precision="tf16")


def test_dlsn_and_config_pass_the_options_through():
    from dlsn.models import build_model
    from dlsn.sr.config import ModelConfig

    model = dlsn.DLSN(n_resgroups=2, n_resblocks=1, n_feats=8, chunk_size=16, fp32_precision="tf32", check_finite=True)
    assert [(gla.fp32_precision, gla.check_finite) for gla in model.gla_layers()] == [("tf32", True)] * 2
    assert [gla.layer_name for gla in model.gla_layers()] == ["DLSN.body.0.body.1", "DLSN.body.1.body.1"]
    config = ModelConfig(n_resgroups=1, n_resblocks=1, n_feats=8, fp32_precision="tf32x3")
    assert build_model(config).gla_layers()[0].fp32_precision == "tf32x3"


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_check_finite_names_the_layer(backend):
    model = dlsn.DLSN(n_resgroups=1, n_resblocks=1, n_feats=8, chunk_size=16, n_hashes=2, backend=backend,
                      check_finite=True).to(DEVICE)
    image = torch.rand(1, 3, 4, 4, device=DEVICE)
    model(image)  # finite input passes
    model.head[0].bias.data[0] = float("nan")
    with pytest.raises(ValueError, match=r"^DLSN.body.0.body.1: the input holds 128 non-finite value\(s\) \(NaN or inf\) of 128"):
        model(image)


def nonfinite_input(kind, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 8, 5, 7, generator=g)
    if kind == "nan_pixel":
        x[0, :, 2, 3] = float("nan")
    elif kind == "inf_channel":
        x[1, 3, 1, 1] = float("inf")
    elif kind == "all_nan_image":
        x[1] = float("nan")
    return x.to(DEVICE)


@pytest.mark.parametrize("kind", ["nan_pixel", "inf_channel", "all_nan_image"])
def test_non_finite_input_gives_non_finite_outputs_where_the_reference_does(kind):
    """Same buckets on both backends (a non-finite projection never wins; an all-non-finite row goes
    to bucket 0), so the same windows and rounds touch the non-finite values; no error."""
    gla = tiny_gla().eval()
    x = nonfinite_input(kind, seed=3)
    with torch.no_grad():
        y = gla(x)
        gla.backend = "reference"
        expected = gla(x)
    bad = ~torch.isfinite(expected)
    assert bad.any() and not bad.all()
    assert torch.equal(~torch.isfinite(y), bad)
    torch.testing.assert_close(y[~bad], expected[~bad], atol=1e-4, rtol=1e-4)
