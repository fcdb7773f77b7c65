"""Triton window-attention forward (kernels/window_attention.py) against dlsn.ops.reference.window_attention.

The launcher returns (O, round_max, round_sum); lse = round_max + log(round_sum) is formed in
float64 here. float32: relative error <= 1e-4 against the float64 reference; scores near 2^17 that
float32 holds exactly: within the rounding bound derived from u = 2^-24. bfloat16/float16: error
against the float64 reference no worse than twice that of the reference run in the same dtype
(never below u: conftest.low_precision_allowance). float64 inputs (gradcheck's dtype) match to 1e-12.
"""
import pytest
import torch
from conftest import DEVICE, exact_score_inputs, float32_gla_bounds, low_precision_allowance, max_error

from dlsn.ops import reference
from dlsn.kernels.window_attention import window_attn_fwd, window_attn_fwd_plan
from dlsn.ops import fused


def make_inputs(n, h, length, c, C, chunk_size, b, dtype, seed, zero_rows=2):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, length, c, generator=g, dtype=torch.float64).relu()
    q[:, :zero_rows] = 0  # zero queries: keys become 0 (the norm is clamped at KEY_NORM_EPS)
    v = torch.randn(n, length, C, generator=g, dtype=torch.float64)
    learned = torch.randn(n, length, chunk_size, generator=g, dtype=torch.float64)
    codes = torch.randint(0, b, (n, h, length), generator=g)
    perm, _ = reference.sort_permutation(codes, chunk_size)
    q, v, learned = (t.to(device=DEVICE, dtype=dtype) for t in (q, v, learned))
    return q, v, learned, perm.to(device=DEVICE, dtype=torch.int32)


def run_kernel(q, v, learned, perm, chunk_size, precision="ieee"):
    """-> (O, lse in float64), after checking the launcher's output contract."""
    O, round_max, round_sum = window_attn_fwd(q, v, learned, perm, chunk_size, precision)
    n, h, _ = perm.shape
    stats_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    assert O.dtype == v.dtype and O.shape == (n, h, q.shape[1], v.shape[2])
    for stat in (round_max, round_sum):
        assert stat.dtype == stats_dtype and stat.shape == (n, h, q.shape[1])
    # the row maximum's own term is exp(0) = 1
    assert (round_sum >= 1).all()
    return O, round_max.double() + round_sum.double().log()


SHAPES = [
    # n, h, L, c, C, chunk_size, b
    (2, 3, 45, 12, 48, 16, 4),   # nC = 3, padding, C = 48 / c = 12 (masked channels)
    (1, 1, 5, 12, 48, 16, 1),    # L < l: nC = 1, the chunk is listed 3 times, wrapped padding
    (1, 2, 16, 16, 32, 16, 1),   # nC = 1 exactly, no padding
    (1, 4, 20, 8, 20, 16, 2),    # nC = 2: the other chunk listed twice; h = 4
    (1, 2, 100, 16, 136, 32, 4),  # C = 136: one 256-column value tile, masked past 136; nC = 4
    (1, 1, 40, 16, 16, 64, 2),   # chunk 64, L < l
    (1, 1, 150, 16, 16, 128, 2),  # chunk 128, several query tiles per chunk, padded query tiles skipped
    (1, 1, 20, 12, 16, 256, 1),  # chunk 256, L < l
]


@pytest.mark.parametrize("n, h, length, c, C, chunk_size, b", SHAPES)
def test_float32_matches_float64_reference(n, h, length, c, C, chunk_size, b):
    q, v, learned, perm = make_inputs(n, h, length, c, C, chunk_size, b, torch.float32, seed=length + C)
    O, lse = run_kernel(q, v, learned, perm, chunk_size)
    ref_O, ref_lse = reference.window_attention(q.double(), v.double(), learned.double(), perm.long(), chunk_size)
    assert max_error(O, ref_O) <= 1e-4 * ref_O.abs().max().item()
    assert max_error(lse, ref_lse) <= 1e-4 * ref_lse.abs().max().item()


@pytest.mark.parametrize("n, h, length, c, C, chunk_size, b", [SHAPES[0], SHAPES[3]])
def test_float64_matches_reference_exactly(n, h, length, c, C, chunk_size, b):
    q, v, learned, perm = make_inputs(n, h, length, c, C, chunk_size, b, torch.float64, seed=length)
    O, lse = run_kernel(q, v, learned, perm, chunk_size)
    ref_O, ref_lse = reference.window_attention(q, v, learned, perm.long(), chunk_size)
    assert max_error(O, ref_O) <= 1e-12 * ref_O.abs().max().item()
    assert max_error(lse, ref_lse) <= 1e-12 * ref_lse.abs().max().item()


def test_large_scores_keep_float32_accuracy():
    """Scores near 2^17 that float32 holds exactly (conftest.exact_score_inputs), so the kernel's only
    errors are its own roundings (derived from u = 2^-24 in float32_gla_bounds): lse within
    round_sum of float64, each entry of O within round_out times that of O', the output for |v|
    (the same sums with nonnegative terms). The lse check can fail: an lse rounded to float32 is off
    by up to |lse| u = 2^-7."""
    n, h, length, c, C, chunk_size, b = 1, 2, 45, 12, 24, 16, 3
    gen = torch.Generator().manual_seed(5)
    q, v, learned = (t.float().to(DEVICE) for t in exact_score_inputs(n, length, c, C, chunk_size, gen))
    perm, _ = reference.sort_permutation(torch.randint(0, b, (n, h, length), generator=gen), chunk_size)
    perm = perm.to(device=DEVICE, dtype=torch.int32)
    O, round_max, round_sum = window_attn_fwd(q, v, learned, perm, chunk_size)
    lse = round_max.double() + round_sum.double().log()
    exact_O, exact_lse = reference.window_attention(q.double(), v.double(), learned.double(), perm.long(), chunk_size)
    magnitude, _ = reference.window_attention(q.double(), v.double().abs(), learned.double(), perm.long(), chunk_size)
    bounds = float32_gla_bounds(chunk_size, h, C)
    assert max_error(lse, exact_lse) <= bounds["round_sum"]
    assert ((O.double() - exact_O).abs() <= bounds["round_out"] * magnitude).all()
    assert max_error(lse.float(), exact_lse) > bounds["round_sum"]


@pytest.mark.parametrize("precision", ["tf32", "tf32x3"])
def test_precision_modes_run(precision):
    # The interpreter computes every mode in full float32 (PITFALLS.md); on a GPU tf32 is ~1e-3 relative.
    q, v, learned, perm = make_inputs(1, 2, 45, 12, 48, 16, 4, torch.float32, seed=3)
    O, lse = run_kernel(q, v, learned, perm, 16, precision)
    ref_O, ref_lse = reference.window_attention(q.double(), v.double(), learned.double(), perm.long(), 16)
    tolerance = 1e-4 if DEVICE.type == "cpu" else 1e-2
    assert max_error(O, ref_O) <= tolerance * ref_O.abs().max().item()
    assert max_error(lse, ref_lse) <= tolerance * ref_lse.abs().max().item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n, h, length, c, C, chunk_size, b", [SHAPES[0], SHAPES[3], SHAPES[4]])
def test_half_precision_no_worse_than_reference(n, h, length, c, C, chunk_size, b, dtype):
    q, v, learned, perm = make_inputs(n, h, length, c, C, chunk_size, b, dtype, seed=length)
    O, lse = run_kernel(q, v, learned, perm, chunk_size)
    exact_O, exact_lse = reference.window_attention(q.double(), v.double(), learned.double(), perm.long(), chunk_size)
    same_dtype_O, same_dtype_lse = reference.window_attention(q, v, learned, perm.long(), chunk_size)
    for name, actual, exact, same_dtype in (("O", O, exact_O, same_dtype_O), ("lse", lse, exact_lse, same_dtype_lse)):
        bound = low_precision_allowance(max_error(same_dtype, exact), dtype, scale=exact.abs().max().item())
        assert max_error(actual, exact) <= bound, (name, max_error(actual, exact), bound)


@pytest.mark.parametrize("dtype, precision, expected", [
    (torch.float32, "ieee", "ieee"), (torch.float32, "tf32", "tf32"), (torch.float32, "tf32x3", "tf32x3"),
    (torch.bfloat16, "tf32", "ieee"), (torch.float16, "tf32x3", "ieee"), (torch.float64, "tf32", "ieee"),
])
def test_precision_reaches_the_kernel(dtype, precision, expected):
    q, v, learned, perm = (torch.empty(shape, device="meta", dtype=dt) for shape, dt in [
        ((2, 300, 12), dtype), ((2, 300, 48), dtype), ((2, 300, 64), dtype), ((2, 3, 320), torch.int32)])
    (launch,), _ = window_attn_fwd_plan(q, v, learned, perm, 64, precision)
    assert launch.constexprs["PRECISION"] == expected


def test_unknown_precision_is_an_error():
    q, v, learned, perm = make_inputs(1, 1, 16, 8, 16, 16, 1, torch.float32, seed=1)
    with pytest.raises(ValueError, match="precision must be"):
        window_attn_fwd(q, v, learned, perm, 16, "bf16")


def test_non_contiguous_inputs_are_copied():
    q, v, learned, perm = make_inputs(1, 2, 40, 12, 24, 16, 3, torch.float32, seed=11)
    v_strided = v.transpose(1, 2).contiguous().transpose(1, 2)
    F_strided = learned.transpose(1, 2).contiguous().transpose(1, 2)
    strided = fused.triton_window_attention(q, v_strided, F_strided, perm, 16)
    contiguous = fused.triton_window_attention(q, v, learned, perm, 16)
    assert all(torch.equal(a, b) for a, b in zip(strided, contiguous))



@pytest.mark.parametrize(
    "mutate, error, match",
    [
        (lambda q, v, learned, p: (q, v.half(), learned, p, 16), TypeError, "must share one dtype"),
        (lambda q, v, learned, p: (q.double(), v, learned, p, 16), TypeError, "q must have dtype"),
        (lambda q, v, learned, p: (q, v, learned[..., :8], p, 16), ValueError, "learned must have shape"),
        (lambda q, v, learned, p: (q, v[:, :10], learned, p, 16), ValueError, "v must have shape"),
        (lambda q, v, learned, p: (q, v, learned, p[..., :16], 16), ValueError, "perm must have shape"),
        (lambda q, v, learned, p: (q, v, learned, p.long(), 16), TypeError, "perm must have dtype"),
        (lambda q, v, learned, p: (q, v, learned, p + 40, 16), ValueError, "perm must lie in \\[0, 40\\)"),
        (lambda q, v, learned, p: (q, v, learned, p, 24), ValueError, "chunk_size must be a power of two"),
        (lambda q, v, learned, p: (q, v, learned, p, 8), ValueError, "chunk_size must be a power of two"),
        (lambda q, v, learned, p: (q[0], v, learned, p, 16), ValueError, "q must be 3-D"),
    ],
)
def test_bad_input_raises_before_launch(no_launch, mutate, error, match):
    q, v, learned, perm = make_inputs(1, 2, 40, 12, 24, 16, 3, torch.float32, seed=12)
    with pytest.raises(error, match=match):
        fused.triton_window_attention(*mutate(q, v, learned, perm))
