"""Triton window-attention backward (`window_attn_bwd`) against float64 autograd of
`reference.window_attention` + `reference.scatter_back` with the same permutation.

float32: relative error <= 1e-4. bfloat16/float16: error against float64 no worse than twice that
of the reference autograd run in the same dtype. Also: awkward shapes, determinism, and gradcheck
in float64 (the kernels accumulate in float64 for float64 inputs; the interpreter runs them).
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from dlsn import reference  # noqa: E402
from dlsn.kernels.window_attention_bwd import window_attn_bwd  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_inputs(n, h, length, c, C, chunk_size, b, seed, zero_rows=2, relu=True):
    """float64 q (ReLU'd as after conv_match, first rows zero), v, F, a random upstream gradient g,
    and perm/inv (int64)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n, length, c, generator=gen, dtype=torch.float64)
    q = q.relu() if relu else q
    q[:, :zero_rows] = 0
    v = torch.randn(n, length, C, generator=gen, dtype=torch.float64)
    F = torch.randn(n, length, chunk_size, generator=gen, dtype=torch.float64)
    g = torch.randn(n, length, C, generator=gen, dtype=torch.float64)
    codes = torch.randint(0, b, (n, h, length), generator=gen)
    perm, inv = reference.sort_permutation(codes, chunk_size)
    return [t.to(DEVICE) for t in (q, v, F, g, perm, inv)]


def reference_grads(q, v, F, g, perm, inv, chunk_size):
    """(dq, dv, dF) of sum(out * g) by autograd of the reference, in the inputs' dtype; also out, LSE."""
    leaves = [t.detach().requires_grad_() for t in (q, v, F)]
    O, lse = reference.window_attention(*leaves, perm, chunk_size)
    out, LSE = reference.scatter_back(O, lse, inv)
    grads = torch.autograd.grad((out * g.to(out.dtype)).sum(), leaves)
    return grads, out.detach(), LSE.detach()


def triton_grads(q, v, F, g, perm, inv, out, LSE, chunk_size, dtype):
    """window_attn_bwd on inputs rounded to dtype, with D = rowsum(g * out) from the float64 forward."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    D = (g.to(dtype).double() * out.double()).sum(-1)
    return window_attn_bwd(q.to(dtype), v.to(dtype), F.to(dtype), perm.int(), inv.int(), g.to(dtype),
                           D.to(acc), LSE.to(acc), chunk_size)


def rel_error(actual, expected):
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


SHAPES = [
    # n, h, L, c, C, chunk_size, b
    (1, 2, 35, 12, 48, 16, 3),   # nC = 3, padding, C = 48 / c = 12 (masked channels)
    (1, 1, 4, 8, 16, 16, 1),     # L < l with p = 12 > L: every slot has padded duplicates (wrapped)
    (1, 3, 16, 8, 16, 16, 2),    # nC = 1 exactly, no padding: the chunk listed three times
    (1, 4, 20, 8, 20, 16, 2),    # nC = 2: the other chunk listed twice; h = 4
    (2, 2, 45, 8, 24, 16, 4),    # batch 2, nC = 3
    (1, 1, 40, 4, 80, 32, 2),    # chunk 32, C = 80: two value tiles, the second masked
    (1, 1, 150, 8, 16, 128, 2),  # chunk 128: two query and key blocks per chunk
    (1, 2, 20, 8, 16, 256, 2),   # chunk 256, L < l: four blocks per chunk, wrapped padding
]


@pytest.mark.parametrize("n, h, length, c, C, chunk_size, b", SHAPES)
def test_float32_matches_float64_autograd(n, h, length, c, C, chunk_size, b):
    q, v, F, g, perm, inv = make_inputs(n, h, length, c, C, chunk_size, b, seed=length + C)
    expected, out, LSE = reference_grads(q, v, F, g, perm, inv, chunk_size)
    actual = triton_grads(q, v, F, g, perm, inv, out, LSE, chunk_size, torch.float32)
    for name, a, e, source in zip(("dq", "dv", "dF"), actual, expected, (q, v, F)):
        assert a.dtype == torch.float32 and a.shape == source.shape, name
        assert rel_error(a, e) <= 1e-4, (name, rel_error(a, e))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n, h, length, c, C, chunk_size, b", [SHAPES[0], SHAPES[3]])
def test_half_precision_no_worse_than_reference(dtype, n, h, length, c, C, chunk_size, b):
    q, v, F, g, perm, inv = make_inputs(n, h, length, c, C, chunk_size, b, seed=7 * length)
    exact, out, LSE = reference_grads(q, v, F, g, perm, inv, chunk_size)
    same_dtype, _, _ = reference_grads(q.to(dtype), v.to(dtype), F.to(dtype), g, perm, inv, chunk_size)
    actual = triton_grads(q, v, F, g, perm, inv, out, LSE, chunk_size, dtype)
    for name, a, r, e in zip(("dq", "dv", "dF"), actual, same_dtype, exact):
        assert a.dtype == dtype, name
        assert rel_error(a, e) <= 2 * rel_error(r, e), (name, rel_error(a, e), rel_error(r, e))


def test_zero_queries_take_the_clamped_norm_branch():
    """All queries zero but one: keys are q / 5e-5, their gradient is dkey / 5e-5."""
    q, v, F, g, perm, inv = make_inputs(1, 2, 20, 8, 16, 16, 2, seed=3, zero_rows=19)
    expected, out, LSE = reference_grads(q, v, F, g, perm, inv, 16)
    actual = triton_grads(q, v, F, g, perm, inv, out, LSE, 16, torch.float32)
    assert expected[0][:, :19].abs().max() > 0  # the zero rows do receive gradient
    for name, a, e in zip(("dq", "dv", "dF"), actual, expected):
        assert rel_error(a, e) <= 1e-4, (name, rel_error(a, e))


def test_two_runs_are_bitwise_equal():
    q, v, F, g, perm, inv = make_inputs(1, 3, 20, 8, 16, 16, 2, seed=11)
    _, out, LSE = reference_grads(q, v, F, g, perm, inv, 16)
    first = triton_grads(q, v, F, g, perm, inv, out, LSE, 16, torch.float32)
    second = triton_grads(q, v, F, g, perm, inv, out, LSE, 16, torch.float32)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


class _ReferenceForwardTritonBackward(torch.autograd.Function):
    """Reference forward (float64), Triton backward: gradcheck compares the kernels' gradient with
    finite differences of the reference."""

    @staticmethod
    def forward(ctx, q, v, F, perm, inv, chunk_size):
        O, lse = reference.window_attention(q, v, F, perm, chunk_size)
        out, LSE = reference.scatter_back(O, lse, inv)
        ctx.save_for_backward(q, v, F, perm, inv, out, LSE)
        ctx.chunk_size = chunk_size
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, v, F, perm, inv, out, LSE = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        D = (grad_out * out).sum(-1)
        dq, dv, dF = window_attn_bwd(q, v, F, perm.int(), inv.int(), grad_out, D, LSE, ctx.chunk_size)
        return dq, dv, dF, None, None, None


@pytest.mark.parametrize("length, h, fast_mode", [(5, 1, False), (20, 2, True)])
def test_gradcheck_float64(length, h, fast_mode):
    """No zero query rows here: keys of rows near 0 are q / 5e-5, so a finite-difference step moves
    them 2e4 times as far and the difference quotient is meaningless (the clamped branch is checked
    against autograd above). The full Jacobian for L = 5; fast_mode (random projections of the
Jacobian) for L = 20, whose full check takes ~100 s under the interpreter."""
    q, v, F, _, perm, inv = make_inputs(1, h, length, 4, 6, 16, 2, seed=length, zero_rows=0, relu=False)
    leaves = [t.requires_grad_() for t in (q, v, F)]
    assert torch.autograd.gradcheck(
        lambda q, v, F: _ReferenceForwardTritonBackward.apply(q, v, F, perm, inv, 16), leaves,
        eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=fast_mode)
