"""Seeded differential fuzzing of the fused GLA path (`dlsn.ops.fused.gla_attention`) against the
float64 reference (`dlsn.ops.reference.gla_core`), forward and gradients.

Each case draws its shape and settings from its seed: batch 1..2, value channels, chunk 16 or 32,
H*W just below, at or above a multiple of the chunk (and below one chunk), 1..4 hash rounds, a
bucket cap of 1..3 or the default, zero query rows, duplicated query rows and rotation columns
(exact ties in the hash), input scale 1 or 1e4, dtype float32/bfloat16/float16, and NaN/inf input.
Bounds: float32 relative errors at scale 1; 16-bit errors no worse than twice the same-dtype
reference's; at scale 1e4 (float32, scores that float32 holds exactly) the rounding bound derived
from u = 2^-24 (rounding_bounds): the float32 reference is no yardstick there, it subtracts a
float32 LSE and its gradients are off by orders of magnitude.
A failure prints one line with the seed, the parameters and the command that reruns that case.
`test_fuzz_catches_*` show that the comparison fails on a deliberately broken pipeline.
"""
import os
import random

import pytest
import torch
import triton
import triton.language as tl
from conftest import DEVICE, float32_gla_bounds, low_precision_allowance, rel_error, unit_roundoff

from dlsn.ops import reference
from dlsn.nn.hashing import sblsh_rotations
from dlsn.nn.hashing import n_buckets
from dlsn.ops import fused

# float32 relative error bounds against float64 (forward output, gradients), and the 16-bit cases'
# "no worse than `factor` x the same-dtype reference's error" (conftest.low_precision_allowance).
FP32_FORWARD, FP32_GRADIENT = 1e-5, 1e-4
LOW_PRECISION_FACTOR = 2.0


def draw_case(seed, kind):
    """The parameters of case `seed` of class `kind` (a dict; reproducible from the seed alone)."""
    rng = random.Random(f"{kind}-{seed}")
    chunk = rng.choice([16, 32])
    length = max(1, rng.choice([chunk - 1, chunk, chunk + 1, 2 * chunk - 1, 2 * chunk, 3 * chunk + 1,
                                rng.randint(1, chunk - 1), rng.randint(2 * chunk, 4 * chunk)]))
    width = rng.choice([d for d in range(1, length + 1) if length % d == 0])
    case = dict(seed=seed, kind=kind, n=rng.randint(1, 2), channels=rng.choice([4, 8, 12]), chunk=chunk,
                height=length // width, width=width, rounds=rng.randint(1, 4),
                max_buckets=rng.choice([1, 2, 3, 128]), zero_rows=rng.randint(0, 3), duplicate_rows=rng.random() < 0.5,
                tied_rotations=rng.random() < 0.3, scale=1.0, dtype="float32", res_scale=rng.choice([1.0, 0.1]))
    if kind == "low_precision":
        case["dtype"] = rng.choice(["bfloat16", "float16"])
    if kind == "large_scale":
        case["scale"] = 1e4
    return case


def make_inputs(case):
    """float64 q (ReLU'd, some rows zero or duplicated), v, learned, x, grad_y; rotations float32."""
    gen = torch.Generator().manual_seed(case["seed"])
    n, C, chunk = case["n"], case["channels"], case["chunk"]
    length, c = case["height"] * case["width"], max(1, C // 4)
    q = torch.randn(n, length, c, generator=gen, dtype=torch.float64).relu()
    q[:, :case["zero_rows"]] = 0
    if case["duplicate_rows"] and length > 2:
        q[:, length // 2:] = q[:, :length - length // 2].clone()
    v = torch.randn(n, length, C, generator=gen, dtype=torch.float64)
    learned = torch.randn(n, length, chunk, generator=gen, dtype=torch.float64)
    x = torch.randn(n, C, case["height"], case["width"], generator=gen, dtype=torch.float64)
    grad_y = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    buckets = n_buckets(length, chunk, case["max_buckets"])
    rotations = sblsh_rotations(c, buckets, case["rounds"], generator=gen)
    if case["tied_rotations"] and buckets > 1:
        rotations[:, :, -1] = rotations[:, :, 0]
    if case["kind"] == "large_scale":
        # Scores float32 holds exactly (rounding_bounds needs them): each q row keeps its largest
        # entry, as the nearest power of two to it times the scale (key = e_d exactly), learned
        # times the scale lies on a 1/8 grid (|s| < 2^21), and the other inputs are float32 numbers.
        top, channel = q.max(dim=-1, keepdim=True)
        power = 2.0 ** torch.round(torch.log2(top.clamp_min(1e-3) * case["scale"]))
        q = torch.zeros_like(q).scatter_(-1, channel, torch.where(top > 0, power, 0.0))
        learned = torch.round(learned * case["scale"] * 8) / 8
        v, x, grad_y = (t.float().double() for t in (v, x, grad_y))
    else:
        q, learned = q * case["scale"], learned * case["scale"]
    return [t.to(DEVICE) for t in (q, v, learned, x, grad_y, rotations)]


def run(case, inputs, dtype, fused_path):
    """y and the gradients of sum(y * grad_y) w.r.t. q, v, learned, x, on inputs rounded to dtype."""
    q, v, learned, x, grad_y, rotations = inputs
    leaves = [t.to(dtype).requires_grad_() for t in (q, v, learned, x)]
    args = (*leaves[:3], rotations, case["chunk"], leaves[3], case["res_scale"])
    y = fused.gla_attention(*args) if fused_path else reference.gla_core(*args)
    grads = torch.autograd.grad((y.double() * grad_y).sum(), leaves, allow_unused=True)
    return y.detach(), [torch.zeros_like(leaf) if grad is None else grad for leaf, grad in zip(leaves, grads)]


def errors(result, exact):
    """Relative errors of (y, dq, dv, dlearned, dx) against the float64 run."""
    (y, grads), (y_exact, grads_exact) = result, exact
    return [rel_error(y, y_exact)] + [rel_error(g, e) if e.norm() > 0 else g.double().norm().item()
                                      for g, e in zip(grads, grads_exact)]


def absolute_errors(result, exact):
    """||error|| of (y, dq, dv, dlearned, dx) against the float64 run."""
    (y, grads), (y_exact, grads_exact) = result, exact
    return [(a.double() - e).norm().item() for a, e in zip([y] + grads, [y_exact] + grads_exact)]


def rounding_bounds(case, inputs, exact):
    """Bounds on absolute_errors of the float32 fused path for inputs whose scores float32 holds
    exactly: eps (conftest.float32_gla_bounds, from u = 2^-24) times each sum's magnitude, the same
    sum with every term made nonnegative, by float64 autograd of the reference pipeline with v -> |v|
    (out' = P |v|), g = |res_scale dy| and D' = g . out': the loss sum g . out' + 2 D' LSE has the
    score gradient P (g . |v| + D') >= |dS| and the value gradient P^T g; one nonzero entry per
    q row (or none) keeps keys and the key normalisation's backward sign-preserving.
    y = out res_scale + x: res_scale and the product rounded, the sum rounded; dx is dy."""
    q, v, learned, x, grad_y, rotations = inputs
    chunk, rounds, res_scale = case["chunk"], case["rounds"], case["res_scale"]
    perm, inv = reference.sort_permutation(reference.hash_codes(q, rotations), chunk)
    length = q.shape[1]
    eps = float32_gla_bounds(chunk, rounds, v.shape[-1], slots=-(-perm.shape[-1] // length))
    g = (res_scale * grad_y).flatten(2).transpose(1, 2).abs()
    leaves = [t.detach().requires_grad_() for t in (q, v.abs(), learned)]
    O, lse = reference.window_attention(*leaves, perm, chunk)
    out, LSE = reference.scatter_back(O, lse, inv)
    D = (g * out).sum(-1).detach()
    magnitudes = torch.autograd.grad((g * out).sum() + 2 * (D * LSE).sum(), leaves)
    u = unit_roundoff(torch.float32)
    y_bound = (eps["out"] + 2 * u) * res_scale * out.norm().item() + u * exact[0].norm().item()
    return [y_bound] + [eps["grad"] * m.norm().item() for m in magnitudes] + [u * grad_y.norm().item()]


def fail_line(case, message):
    test = os.environ.get("PYTEST_CURRENT_TEST", "tests/test_fuzz.py").rsplit(" ", 1)[0]
    return f"FUZZ {message} | case {case} | rerun: python -m pytest -q '{test}'"


NAMES = ("y", "dq", "dv", "dlearned", "dx")


def check_case(case, gradients=True):
    """Raises AssertionError with a one-line reproducer when the fused path is off."""
    inputs = make_inputs(case)
    dtype = getattr(torch, case["dtype"])
    exact = run(case, inputs, torch.float64, fused_path=False)
    fused_run = run(case, inputs, dtype, fused_path=True)
    if case["kind"] == "large_scale":
        measure, fused_errors, bounds = "error", absolute_errors(fused_run, exact), rounding_bounds(case, inputs, exact)
    elif case["kind"] == "fp32":
        measure, fused_errors, bounds = "relative error", errors(fused_run, exact), [FP32_FORWARD] + [FP32_GRADIENT] * 4
    else:
        same_dtype = errors(run(case, inputs, dtype, fused_path=False), exact)
        measure, fused_errors = "relative error", errors(fused_run, exact)
        bounds = [low_precision_allowance(e, dtype, factor=LOW_PRECISION_FACTOR) for e in same_dtype]
    for name, error, bound in list(zip(NAMES, fused_errors, bounds))[:None if gradients else 1]:
        assert error <= bound, fail_line(case, f"{name} {measure} {error:.3g} > bound {bound:.3g}")


FP32_SEEDS = range(10)
LOW_PRECISION_SEEDS = range(100, 104)
LARGE_SCALE_SEEDS = range(200, 204)

@pytest.mark.parametrize("seed", FP32_SEEDS)
def test_fuzz_fp32(seed):
    check_case(draw_case(seed, "fp32"))


@pytest.mark.parametrize("seed", LOW_PRECISION_SEEDS)
def test_fuzz_low_precision(seed):
    check_case(draw_case(seed, "low_precision"))


@pytest.mark.parametrize("seed", LARGE_SCALE_SEEDS)
def test_fuzz_large_scale(seed):
    check_case(draw_case(seed, "large_scale"))


NON_FINITE_CASES = [(300, "q", "inf"), (301, "v", "nan"), (302, "learned", "-inf"), (303, "v", "inf"),
                    (304, "q", "nan")]


@pytest.mark.parametrize("seed, bad_tensor, bad_value", NON_FINITE_CASES)
def test_fuzz_non_finite(seed, bad_tensor, bad_value):
    """NaN/inf in one row of q, v or learned: no error, and the fused output is non-finite exactly
    where the reference's is (same hash rule, same windows), equal elsewhere."""
    case = dict(draw_case(seed, "non_finite"), bad_tensor=bad_tensor, bad_value=bad_value)
    q, v, learned, x, _, rotations = make_inputs(case)
    tensors = {"q": q.float(), "v": v.float(), "learned": learned.float()}
    tensors[bad_tensor][-1, -1, 0] = float(bad_value)
    args = (tensors["q"], tensors["v"], tensors["learned"], rotations, case["chunk"], x.float(), case["res_scale"])
    with torch.no_grad():
        y = fused.gla_attention(*args)
        expected = reference.gla_core(*args)
    bad = ~torch.isfinite(expected)
    # A -inf score only removes its key; NaN and +inf reach the output.
    assert bad.any() or bad_value == "-inf", fail_line(case, "the case has no non-finite output")
    assert torch.equal(~torch.isfinite(y), bad), fail_line(case, f"non-finite at {(~torch.isfinite(y)).sum()} "
                                                                 f"outputs, reference {bad.sum()}")
    if not bad.all():
        assert rel_error(y[~bad], expected[~bad]) <= 1e-5, fail_line(case, "finite outputs differ")


def test_fuzz_catches_a_merge_that_ignores_the_round_statistics(monkeypatch):
    """The fuzz comparison fails when the rounds are merged with equal weights."""
    case = next(case for case in (draw_case(seed, "fp32") for seed in range(1000)) if case["rounds"] >= 2)
    check_case(case, gradients=False)  # passes unbroken
    real = fused.scatter_back
    monkeypatch.setattr(fused, "scatter_back", lambda O, round_max, round_sum, inv, residual, res_scale: real(
        O, torch.zeros_like(round_max), torch.ones_like(round_sum), inv, residual, res_scale))
    with pytest.raises(AssertionError, match=r"^FUZZ \w+ relative error .* rerun: python -m pytest"):
        check_case(case)


@triton.jit
def listing_without_wrap(query_chunk, listing, n_chunks):
    chunk = query_chunk + listing - 3 * (listing // 2)
    return tl.minimum(tl.maximum(chunk, 0), n_chunks - 1)


def test_fuzz_catches_a_window_listing_without_the_wrap_around(monkeypatch):
    """The fuzz comparison fails when the forward kernel's windows do not wrap around (chunk 0 lists
    itself instead of the last chunk, the last chunk itself instead of chunk 0)."""
    from dlsn.kernels import window_attention

    case = next(case for case in (draw_case(seed, "fp32") for seed in range(1000))
                if case["height"] * case["width"] > 2 * case["chunk"])
    check_case(case, gradients=False)  # passes unbroken
    name = next(name for name in ("key_chunk_of_listing", "_key_chunk_of_listing") if hasattr(window_attention, name))
    monkeypatch.setattr(window_attention, name, listing_without_wrap)
    with pytest.raises(AssertionError, match=r"^FUZZ \w+ relative error .* rerun: python -m pytest"):
        check_case(case, gradients=False)
