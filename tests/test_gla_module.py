import pytest
import torch

import dlsn
from dlsn.ops import reference
from dlsn.nn.hashing import sblsh_rotations


def small_gla(**kwargs):
    torch.manual_seed(0)
    options = dict(reduction=4, chunk_size=16, n_hashes=2, backend="reference")
    options.update(kwargs)
    return dlsn.GLA(8, **options)


def test_submodule_names_and_state_dict_keys():
    keys = set(small_gla().state_dict())
    assert keys == {
        "conv_match.0.weight", "conv_match.0.bias",
        "conv_assembly.0.weight", "conv_assembly.0.bias",
        "conv_assembly_fc.0.weight", "conv_assembly_fc.0.bias",
        "fc.0.weight", "fc.0.bias", "fc.2.weight", "fc.2.bias",
    }
    gla = small_gla()
    assert gla.conv_match[0].weight.shape == (2, 8, 3, 3)
    assert gla.fc[2].weight.shape == (16, 16)


def test_forward_equals_reference_core_of_the_embeddings():
    gla = small_gla().eval()
    x = torch.randn(2, 8, 5, 7)
    rotations = gla.rotations_for(35, x.device)
    q, v, learned = gla.embed(x)
    expected = reference.gla_core(q, v, learned, rotations, 16, x, 1.0)
    torch.testing.assert_close(gla(x), expected, rtol=0, atol=0)


def test_eval_mode_is_bitwise_deterministic_and_explicit_rotations_reproduce():
    gla = small_gla().eval()
    x = torch.randn(1, 8, 9, 9)
    first = gla(x)
    assert torch.equal(first, gla(x))
    assert torch.equal(first, small_gla().eval()(x))  # same weights, same eval seed -> same rotations
    rotations = sblsh_rotations(2, gla.n_buckets(81), 2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(gla(x, rotations), gla(x, rotations.clone()))
    other_seed = small_gla(eval_seed=1).eval()
    assert not torch.equal(other_seed.rotations_for(81, "cpu"), gla.rotations_for(81, "cpu"))


def test_training_mode_draws_fresh_rotations_from_torch_rng():
    gla = small_gla().train()
    x = torch.randn(1, 8, 12, 12)
    torch.manual_seed(1)
    a = gla(x)
    torch.manual_seed(1)
    assert torch.equal(a, gla(x))
    rot_a = gla.rotations_for(144, "cpu")
    rot_b = gla.rotations_for(144, "cpu")
    assert not torch.equal(rot_a, rot_b)


def test_gradients_reach_every_parameter():
    gla = small_gla().train()
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    gla(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, param in gla.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "build,error,match",
    [
        (lambda: dlsn.GLA(10, reduction=4), ValueError, "divisible by reduction"),
        (lambda: dlsn.GLA(8, backend="cuda"), ValueError, "backend must be one of"),
        (lambda: dlsn.GLA(8, chunk_size=0), ValueError, "chunk_size must be a positive integer"),
    ],
)
def test_bad_construction(build, error, match):
    with pytest.raises(error, match=match):
        build()


@pytest.mark.parametrize(
    "x,rotations,error,match",
    [
        (torch.randn(8, 4, 4), None, ValueError, r"\[N, C, H, W\], got 3-D"),
        (torch.randn(1, 6, 4, 4), None, ValueError, "8 channels"),
        (torch.ones(1, 8, 4, 4, dtype=torch.int64), None, TypeError, "floating-point"),
        (torch.randn(1, 8, 4, 4), torch.randn(2, 2, 3), ValueError, r"rotations must have shape .*\[2, 2, 2\] for a 4x4 input, got \[2, 2, 3\]"),
        (torch.randn(1, 8, 4, 4), torch.ones(2, 2, 2, dtype=torch.int64), TypeError, "rotations must be a floating-point"),
        ([[1.0]], None, TypeError, "torch.Tensor"),
    ],
)
def test_bad_input(x, rotations, error, match):
    with pytest.raises(error, match=match):
        small_gla()(x, rotations)


def test_triton_backend_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    gla = small_gla(backend="triton")
    with pytest.raises(RuntimeError, match="CUDA tensor"):
        gla(torch.randn(1, 8, 4, 4))


def test_auto_picks_reference_on_cpu_and_triton_needs_supported_chunk():
    assert small_gla(backend="auto").resolve_backend(torch.randn(1, 8, 2, 2)) == "reference"
    with pytest.raises(ValueError, match="chunk_size in"):
        small_gla(backend="triton", chunk_size=12).resolve_backend(torch.randn(1, 8, 2, 2))
