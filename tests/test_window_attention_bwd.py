"""Triton window-attention backward (`window_attn_bwd`) against float64 autograd of
`reference.window_attention` + `reference.scatter_back` with the same permutation.

The backward takes the round merge's statistics lse_max / lse_sum (interface 2); the tests compute
them from the scores as the merge does (per position: max over rounds of the round's row max, and
the sum of exp(score - lse_max) over every round's window).
float32: relative error <= 1e-4. bfloat16/float16: error against float64 no worse than twice that
of the reference autograd run in the same dtype (never below u); nearly one-hot softmaxes with
scores near 2^17 held exactly by float32: within the rounding bound derived from u = 2^-24, which
an LSE rounded to float32 misses. Also: every shape class, gradcheck in float64 (the kernels
accumulate in float64 for float64 inputs), determinism under a reversed program and launch order,
the config lists, the precision plumbing and the FLOPs model.
"""
import pytest
import torch
from conftest import DEVICE, exact_score_inputs, float32_gla_bounds, low_precision_allowance, rel_error

from dlsn.ops import reference
from dlsn.kernels import window_attention_bwd as bwd
from dlsn.kernels.launch import run
from dlsn.kernels.window_attention import window_attn_fwd
from dlsn.kernels.window_attention_bwd import window_attn_bwd, window_attn_bwd_plan


def make_inputs(n, h, length, c, C, chunk_size, b, seed, zero_rows=2, relu=True, scale=1.0):
    """float64 q (ReLU'd as after conv_match, first rows zero, times `scale`), v, learned, a random upstream
    gradient g, and perm/inv (int64)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n, length, c, generator=gen, dtype=torch.float64)
    q = (q.relu() if relu else q) * scale
    q[:, :zero_rows] = 0
    v = torch.randn(n, length, C, generator=gen, dtype=torch.float64)
    learned = torch.randn(n, length, chunk_size, generator=gen, dtype=torch.float64)
    g = torch.randn(n, length, C, generator=gen, dtype=torch.float64)
    codes = torch.randint(0, b, (n, h, length), generator=gen)
    perm, inv = reference.sort_permutation(codes, chunk_size)
    return [t.to(DEVICE) for t in (q, v, learned, g, perm, inv)]


def merge_stats(q, learned, perm, inv, chunk_size, dtype):
    """(lse_max, lse_sum) [N, L] as the forward in `dtype` and the round merge form them: scores of q,
    learned and keys rounded to dtype (the dot's operands) accumulated in float32 (float64 for float64),
    each round's row max m_r and row sum sum_j exp(s - m_r), merged per position."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    n, h, lp = perm.shape
    length, n_chunks = q.shape[1], lp // chunk_size
    q, learned = q.to(dtype).to(acc), learned.to(dtype).to(acc)
    keys = (q / q.norm(dim=-1, keepdim=True).clamp_min(bwd.KEY_NORM_EPS)).to(dtype).to(acc)

    def chunks(rows):  # [N, h, nC, l, D] in sorted order
        sorted_rows = rows.gather(1, perm.reshape(n, -1, 1).expand(-1, -1, rows.shape[-1]))
        return sorted_rows.reshape(n, h, n_chunks, chunk_size, -1)

    def windows(rows):  # [N, h, nC, 3l, D]: chunks k, k + 1, k - 1
        rows = chunks(rows)
        return torch.cat([rows, rows.roll(-1, dims=2), rows.roll(1, dims=2)], dim=3)

    scores = chunks(q) @ windows(keys).transpose(-1, -2) + windows(learned).transpose(-1, -2)
    round_max = scores.amax(-1)
    round_sum = torch.exp(scores - round_max[..., None]).sum(-1)
    round_max, round_sum = (x.reshape(n, h, lp)[:, :, :length].gather(2, inv) for x in (round_max, round_sum))
    lse_max = round_max.amax(1)
    return lse_max, (round_sum * torch.exp(round_max - lse_max[:, None])).sum(1)


def reference_grads(q, v, learned, g, perm, inv, chunk_size):
    """(dq, dv, dlearned) of sum(out * g) by autograd of the reference, in the inputs' dtype; also out."""
    leaves = [t.detach().requires_grad_() for t in (q, v, learned)]
    O, lse = reference.window_attention(*leaves, perm, chunk_size)
    out, _ = reference.scatter_back(O, lse, inv)
    grads = torch.autograd.grad((out * g.to(out.dtype)).sum(), leaves)
    return grads, out.detach()


def kernel_args(q, v, learned, g, perm, inv, out, chunk_size, dtype):
    """window_attn_bwd's arguments on inputs rounded to dtype, with D = rowsum(g * out) from the float64
    forward and the merge statistics of a forward in dtype."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    D = (g.to(dtype).double() * out.double()).sum(-1)
    lse_max, lse_sum = merge_stats(q, learned, perm, inv, chunk_size, dtype)
    return (q.to(dtype), v.to(dtype), learned.to(dtype), perm.int(), inv.int(), g.to(dtype), D.to(acc),
            lse_max.to(acc), lse_sum.to(acc), chunk_size)


def triton_grads(q, v, learned, g, perm, inv, out, chunk_size, dtype):
    return window_attn_bwd(*kernel_args(q, v, learned, g, perm, inv, out, chunk_size, dtype))


SHAPES = [
    # n, h, L, c, C, chunk_size, b
    (1, 2, 35, 12, 48, 16, 3),   # nC = 3, padding, C = 48 / c = 12 (masked channels)
    (1, 1, 4, 8, 16, 16, 1),     # L < l with p = 12 > L: every slot has padded duplicates (wrapped)
    (1, 3, 16, 8, 16, 16, 2),    # nC = 1 exactly, no padding: the chunk listed three times
    (1, 4, 20, 8, 20, 16, 2),    # nC = 2: the other chunk listed twice; h = 4; C = 20
    (2, 2, 45, 8, 24, 16, 4),    # batch 2, nC = 3
    (1, 1, 40, 4, 80, 32, 2),    # chunk 32, C = 80: dkdq's value tiles, the last one masked
    (1, 1, 150, 8, 16, 128, 2),  # chunk 128: several query and key blocks per chunk, nC = 2
    (1, 1, 20, 8, 16, 256, 2),   # chunk 256, L < l: many blocks per chunk, wrapped padding
]


@pytest.mark.parametrize("n, h, length, c, C, chunk_size, b", SHAPES)
def test_float32_matches_float64_autograd(n, h, length, c, C, chunk_size, b):
    q, v, learned, g, perm, inv = make_inputs(n, h, length, c, C, chunk_size, b, seed=length + C)
    expected, out = reference_grads(q, v, learned, g, perm, inv, chunk_size)
    actual = triton_grads(q, v, learned, g, perm, inv, out, chunk_size, torch.float32)
    for name, a, e, source in zip(("dq", "dv", "dlearned"), actual, expected, (q, v, learned)):
        assert a.dtype == torch.float32 and a.shape == source.shape, name
        assert rel_error(a, e) <= 1e-4, (name, rel_error(a, e))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n, h, length, c, C, chunk_size, b", [SHAPES[0], SHAPES[3]])
def test_half_precision_no_worse_than_reference(dtype, n, h, length, c, C, chunk_size, b):
    q, v, learned, g, perm, inv = make_inputs(n, h, length, c, C, chunk_size, b, seed=7 * length)
    exact, out = reference_grads(q, v, learned, g, perm, inv, chunk_size)
    same_dtype, _ = reference_grads(q.to(dtype), v.to(dtype), learned.to(dtype), g, perm, inv, chunk_size)
    actual = triton_grads(q, v, learned, g, perm, inv, out, chunk_size, dtype)
    for name, a, r, e in zip(("dq", "dv", "dlearned"), actual, same_dtype, exact):
        assert a.dtype == dtype, name
        bound = low_precision_allowance(rel_error(r, e), dtype)
        assert rel_error(a, e) <= bound, (name, rel_error(a, e), bound)


def forward_merge_stats(q, v, learned, perm, inv, chunk_size):
    """(lse_max, lse_sum) from the Triton forward's round_max / round_sum, merged per position as
    the round merge does: the scores the backward recomputes are bitwise those of the forward."""
    _, round_max, round_sum = window_attn_fwd(q, v, learned, perm, chunk_size)
    round_max, round_sum = round_max.gather(2, inv.long()), round_sum.gather(2, inv.long())
    lse_max = round_max.amax(1)
    return lse_max, (round_sum * torch.exp(round_max - lse_max[:, None])).sum(1)


def exact_score_case(seed, n=1, h=3, length=90, c=8, C=16, chunk_size=32, b=2):
    """conftest.exact_score_inputs, a float32-exact upstream gradient g, and perm/inv."""
    gen = torch.Generator().manual_seed(seed)
    q, v, learned = exact_score_inputs(n, length, c, C, chunk_size, gen)
    g = torch.randn(n, length, C, generator=gen).double()
    perm, inv = reference.sort_permutation(torch.randint(0, b, (n, h, length), generator=gen), chunk_size)
    return [t.to(DEVICE) for t in (q, v, learned, g, perm, inv)]


def gradient_magnitudes(q, v, learned, g, perm, inv, chunk_size):
    """(dq, dv, dlearned) with every term of their sums made nonnegative, by float64 autograd: with
    v -> |v| (out' = P |v|) and D' = |g| . out', the loss sum |g| . out' + 2 D' LSE has the score
    gradient P (|g| . |v| + D') >= |P (g . v - D)| = |dS| and the value gradient P^T |g|. Keys and
    the key normalisation's backward keep signs for q >= 0 with one nonzero entry per row."""
    leaves = [t.detach().requires_grad_() for t in (q, v.abs(), learned)]
    O, lse = reference.window_attention(*leaves, perm, chunk_size)
    out, LSE = reference.scatter_back(O, lse, inv)
    D = (g.abs() * out).sum(-1).detach()
    return torch.autograd.grad((out * g.abs()).sum() + 2 * (D * LSE).sum(), leaves)


def test_nearly_one_hot_softmax_keeps_float32_accuracy():
    """Nearly one-hot softmaxes of scores near 2^17 that float32 holds exactly (exact_score_case):
    the kernels' only errors are their own roundings. With the forward's statistics each gradient
    is within eps ||M|| of float64 (M: gradient_magnitudes; eps: float32_gla_bounds' grad, derived
    from u = 2^-24 and the sizes). The same kernels given LSE rounded to float32 (lse_max = LSE,
    lse_sum = 1) are off by up to |LSE| u = 2^-7 in every exponent: dv misses the bound."""
    length, C, chunk_size, h = 90, 16, 32, 3
    q, v, learned, g, perm, inv = exact_score_case(seed=5, h=h, length=length, C=C, chunk_size=chunk_size)
    exact, out = reference_grads(q, v, learned, g, perm, inv, chunk_size)
    magnitudes = gradient_magnitudes(q, v, learned, g, perm, inv, chunk_size)
    args = list(kernel_args(q, v, learned, g, perm, inv, out, chunk_size, torch.float32))
    lse_max, lse_sum = args[7], args[8] = forward_merge_stats(*args[:4], inv, chunk_size)
    exact_max, _ = merge_stats(q, learned, perm, inv, chunk_size, torch.float64)
    assert torch.equal(lse_max.double(), exact_max), "the scores are not exact in float32"
    eps = float32_gla_bounds(chunk_size, h, C, slots=2)["grad"]  # p = 6 < L: at most two slots
    actual = window_attn_bwd(*args)
    for name, a, e, m in zip(("dq", "dv", "dlearned"), actual, exact, magnitudes):
        error = (a.double() - e).norm().item()
        assert error <= eps * m.norm().item(), (name, error, eps * m.norm().item())
    args[7], args[8] = lse_max + lse_sum.log(), torch.ones_like(lse_sum)
    rounded_lse_dv = window_attn_bwd(*args)[1]
    assert (rounded_lse_dv.double() - exact[1]).norm().item() > eps * magnitudes[1].norm().item()


def test_zero_queries_take_the_clamped_norm_branch():
    """All queries zero but one: keys are q / 5e-5, their gradient is dkey / 5e-5."""
    q, v, learned, g, perm, inv = make_inputs(1, 2, 20, 8, 16, 16, 2, seed=3, zero_rows=19)
    expected, out = reference_grads(q, v, learned, g, perm, inv, 16)
    actual = triton_grads(q, v, learned, g, perm, inv, out, 16, torch.float32)
    assert expected[0][:, :19].abs().max() > 0  # the zero rows do receive gradient
    for name, a, e in zip(("dq", "dv", "dlearned"), actual, expected):
        assert rel_error(a, e) <= 1e-4, (name, rel_error(a, e))


def test_every_config_of_the_lists_is_correct():
    """Each candidate config that fits chunk 32 (not only the first, which the interpreter picks)
    gives the right gradients; the dv and dkdq lists are walked side by side."""
    q, v, learned, g, perm, inv = make_inputs(1, 2, 70, 8, 24, 32, 3, seed=13)
    expected, out = reference_grads(q, v, learned, g, perm, inv, 32)
    args = kernel_args(q, v, learned, g, perm, inv, out, 32, torch.float32)
    dv_configs = [cfg for table in bwd.DV_CONFIGS.values() for cfg in table]
    dkdq_configs = [cfg for table in bwd.DKDQ_CONFIGS.values() for cfg in table]
    fitting = [[cfg for cfg in table if max(cfg.kwargs["BLOCK_N"], cfg.kwargs["BLOCK_M"]) <= 32]
               for table in (dv_configs, dkdq_configs)]
    assert len(fitting[0]) >= 3 and len(fitting[1]) >= 3
    for i in range(max(map(len, fitting))):
        config = dict(dv=fitting[0][i % len(fitting[0])], dkdq=fitting[1][i % len(fitting[1])])
        launches, grads = window_attn_bwd_plan(*args, config=config)
        run(launches)
        dq = grads["dq"] + bwd._key_normalization_backward(args[0], grads["dkey"])
        for name, a, e in zip(("dq", "dv", "dlearned"), (dq, grads["dv"], grads["dlearned"]), expected):
            assert rel_error(a, e) <= 1e-4, (name, config)


def _meta_inputs(n, h, length, c, C, chunk_size, dtype):
    meta = dict(device="meta")
    padded = length + (-length) % chunk_size
    return (torch.empty(n, length, c, dtype=dtype, **meta), torch.empty(n, length, C, dtype=dtype, **meta),
            torch.empty(n, length, chunk_size, dtype=dtype, **meta),
            torch.empty(n, h, padded, dtype=torch.int32, **meta),
            torch.empty(n, h, length, dtype=torch.int32, **meta), torch.empty(n, length, C, dtype=dtype, **meta),
            *(torch.empty(n, length, **meta) for _ in range(3)), chunk_size)


@pytest.mark.parametrize("dtype, precision, family", [
    (torch.float32, "ieee", "fma"), (torch.float32, "tf32", "tf32"), (torch.float32, "tf32x3", "tf32x3"),
    (torch.bfloat16, "tf32", "16-bit"), (torch.float16, "ieee", "16-bit"), (torch.float64, "tf32", "fma")])
def test_precision_reaches_the_kernels(dtype, precision, family):
    """The float32 dots' precision is a constexpr of both kernels (16-bit and float64 inputs: "ieee"),
    and each picks the first config of its family that fits (the interpreter / meta tensors do not tune)."""
    launches, _ = window_attn_bwd_plan(*_meta_inputs(2, 3, 300, 64, 256, 128, dtype), precision=precision)
    expected = precision if dtype == torch.float32 else "ieee"
    for launch, table in zip(launches[:2], (bwd.DV_CONFIGS, bwd.DKDQ_CONFIGS)):
        assert launch.constexprs["PRECISION"] == expected
        first = table[family][0]
        assert all(launch.constexprs[k] == v for k, v in first.kwargs.items()), launch.name
        assert (launch.num_warps, launch.num_stages) == (first.num_warps, first.num_stages)
    with pytest.raises(ValueError, match="precision"):
        window_attn_bwd_plan(*_meta_inputs(1, 1, 40, 8, 16, 16, dtype), precision="tf64")


def test_results_do_not_depend_on_program_or_launch_order(request):
    """Bitwise-equal gradients when every launch runs its programs in reverse order and the two
    kernels and the four folds launch in another order (test_gla_triton_grad shows that the reversal
    exposes an order-dependent reduction)."""
    q, v, learned, g, perm, inv = make_inputs(2, 3, 40, 8, 16, 16, 2, seed=11)
    _, out = reference_grads(q, v, learned, g, perm, inv, 16)
    args = kernel_args(q, v, learned, g, perm, inv, out, 16, torch.float32)
    launches, first = window_attn_bwd_plan(*args)
    run(launches)
    request.getfixturevalue("reversed_program_order")
    launches, second = window_attn_bwd_plan(*args)
    run([launches[1], launches[0]] + launches[:1:-1])  # kernels swapped, folds reversed (after both)
    for name in first:
        assert torch.equal(first[name], second[name]), name


class _ReferenceForwardTritonBackward(torch.autograd.Function):
    """Reference forward (float64), Triton backward: gradcheck compares the kernels' gradient with
    finite differences of the reference."""

    @staticmethod
    def forward(ctx, q, v, learned, perm, inv, chunk_size):
        O, lse = reference.window_attention(q, v, learned, perm, chunk_size)
        out, _ = reference.scatter_back(O, lse, inv)
        ctx.save_for_backward(q, v, learned, perm, inv, out, *merge_stats(q, learned, perm, inv, chunk_size, q.dtype))
        ctx.chunk_size = chunk_size
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, v, learned, perm, inv, out, lse_max, lse_sum = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        D = (grad_out * out).sum(-1)
        dq, dv, dlearned = window_attn_bwd(q, v, learned, perm.int(), inv.int(), grad_out, D, lse_max, lse_sum,
                                           ctx.chunk_size)
        return dq, dv, dlearned, None, None, None


@pytest.mark.parametrize("length, h, fast_mode", [(5, 1, False), (20, 2, True)])
def test_gradcheck_float64(length, h, fast_mode):
    """No zero query rows here: keys of rows near 0 are q / 5e-5, so a finite-difference step moves
    them 2e4 times as far and the difference quotient is meaningless (the clamped branch is checked
    against autograd above). The full Jacobian for L = 5; fast_mode (random projections of the
    Jacobian) for L = 20, whose full check takes ~100 s under the interpreter."""
    q, v, learned, _, perm, inv = make_inputs(1, h, length, 4, 6, 16, 2, seed=length, zero_rows=0, relu=False)
    leaves = [t.requires_grad_() for t in (q, v, learned)]
    assert torch.autograd.gradcheck(
        lambda q, v, learned: _ReferenceForwardTritonBackward.apply(q, v, learned, perm, inv, 16), leaves,
        eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=fast_mode)


@pytest.mark.parametrize("dtype, precision", [(torch.float32, "ieee"), (torch.float32, "tf32"),
                                              (torch.bfloat16, "ieee"), (torch.float16, "ieee")])
def test_flops_model_within_1_15_of_minimal_at_the_training_shape(dtype, precision):
    """FLOPs of the launches (by their models) against the minimal backward, at batch 16, 48x48,
    C = 256, c = 64, l = 128, h = 3, built from meta tensors with the configs the launcher picks."""
    n, h, length, c, C, chunk_size = 16, 3, 48 * 48, 64, 256, 128
    launches, _ = window_attn_bwd_plan(*_meta_inputs(n, h, length, c, C, chunk_size, dtype), precision=precision)
    ratio = sum(launch.flops for launch in launches) / bwd.minimal_bwd_flops(n, h, length, c, C, chunk_size)
    assert 1.0 <= ratio <= 1.15, ratio
