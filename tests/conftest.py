"""Shared test setup: the Triton interpreter on machines without a GPU, the device every kernel test
runs on, a fixture that forbids kernel launches, and error measures. Tests import the helpers with
`from conftest import DEVICE, max_error` (pytest puts this directory on sys.path)."""
import os
from pathlib import Path

import pytest
import torch

# The Triton kernels run on the CPU interpreter when there is no GPU; it must be chosen before
# triton is first imported, hence here, before any test module is collected.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SET5 = Path(os.environ.get("DLSN_SET5", Path(__file__).resolve().parents[2] / "shared" / "data" / "Set5"))

# Every launcher the op layer calls (names as dlsn.ops.fused imports them).
LAUNCHERS = ("sblsh_hash_fwd", "bucket_sort_fwd", "window_attn_fwd", "window_attn_bwd")


def max_error(actual, expected):
    """Largest absolute difference, in float64."""
    return (actual.double() - expected.double()).abs().max().item()


def rel_error(actual, expected):
    """||actual - expected|| / ||expected|| in float64."""
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


def unit_roundoff(dtype):
    """u: the largest relative error of rounding a real number to `dtype` (2^-24 for float32)."""
    return torch.finfo(dtype).eps / 2


def low_precision_allowance(baseline_error, dtype, factor=2.0, scale=1.0):
    """What a 16-bit result may be off by: `factor` x the error of the same computation in plain
    PyTorch in that dtype (the baseline, flash-attention's yardstick), and never less than
    u(dtype) x scale: rounding the result to dtype alone may cost that much, so a baseline whose
    float32 accumulations happened to round well (their order depends on the BLAS kernel) cannot
    fail a correct kernel."""
    return max(factor * baseline_error, unit_roundoff(dtype) * scale)


def exact_score_inputs(n, length, c, C, chunk_size, generator, offset=2.0 ** 17):
    """float64 q, v, learned whose scores float32 holds exactly, whatever order a dot sums in: each q
    row has one nonzero entry a in {64, 128, 256}, so ||q|| = a and key = e_d exactly (powers of two:
    exact even with a GPU's approximate sqrt and division) and q . key is a or 0; learned =
    offset + k / 8 with integer |k| <= 512, so every score is a multiple of 1/8 below 2^18. v holds
    float32 numbers. Softmaxes are nearly one-hot (gaps of 64..256 from q . key, a few units from
    learned) and the scores near `offset`."""
    q = torch.zeros(n, length, c, dtype=torch.float64)
    magnitude = 2.0 ** torch.randint(6, 9, (n, length, 1), generator=generator, dtype=torch.float64)
    q.scatter_(2, torch.randint(0, c, (n, length, 1), generator=generator), magnitude)
    k = torch.randint(-512, 513, (n, length, chunk_size), generator=generator, dtype=torch.float64)
    v = torch.randn(n, length, C, generator=generator).double()
    return q, v, offset + k / 8


def float32_gla_bounds(chunk_size, n_hashes, channels, slots=1):
    """First-order bounds on the float32 fused GLA's rounding errors when float32 holds every score
    exactly (tests build such inputs: then round maxima and lse_max are exact), whatever order a
    BLAS kernel sums in. A sum's error is at most eps x its magnitude, the same sum with every term
    made nonnegative. -> dict(round_sum=, round_out=, out=, grad=).

    u = 2^-24, l = chunk_size, h = n_hashes, C = channels, k = slots a position fills in a round
    (padding repeats positions), n = 3l keys per window, B = n / 16 key blocks at most. A float32
    exp is within e = (8 + 88) u: 4 ulp, plus on GPUs exp2's rounded argument (|x| u, |x| < 88
    wherever the result does not underflow). Each term of
    - a round's sum z of exp(s - m): its exp and up to B - 1 online rescalings (an exp and a
      product each), n additions: B (e + u) + n u (also the error of log z);
    - a round's output O = (sum_j exp(s_j - m) v_j) / z, stored: twice that, + 3u;
    - the merge's weights z_r exp(m_r - lse_max) / lse_sum: z twice, an exp, a product, h
      additions and a division, then h additions of w_r O_r: 2 (z) + 2 (e + u) + 2 h u;
    - a backward weight P = exp(s - lse_max) / lse_sum: lse_sum (z, an exp and a product per round,
      h additions), an exp, a reciprocal and a product;
    - dS = P (g . v - D): the C-term dot g . v, D (a C-term dot with the output, plus the output's
      own error) and 3 roundings (g = res_scale dy, the difference, the product);
    - a gradient entry: at most k n h terms dS or P g (dq: two such sums, one divided by ||q||).
    """
    u = unit_roundoff(torch.float32)
    n = 3 * chunk_size
    e = (8 + 88) * u
    z = (n // 16) * (e + u) + n * u
    out = (2 * z + 3 * u) + 2 * z + 2 * (e + u) + 2 * n_hashes * u
    weight = z + 2 * (e + u) + (n_hashes + 2) * u
    grad = weight + 2 * channels * u + out + 3 * u + (2 * slots * n * n_hashes + 2) * u
    return dict(round_sum=z, round_out=2 * z + 3 * u, out=out, grad=grad)


@pytest.fixture
def no_launch(monkeypatch):
    """Make every kernel launch of the op layer an AssertionError: for tests of bad input."""
    from dlsn.ops import fused

    def fail(*args, **kwargs):
        raise AssertionError("kernel launched on invalid input")

    for launcher in LAUNCHERS:
        monkeypatch.setattr(fused, launcher, fail)


@pytest.fixture
def reversed_program_order(monkeypatch):
    """Run every Triton launch's programs in reverse grid order (the interpreter otherwise runs them
    in one fixed order, where an order-dependent reduction could never show). GPU: skipped, the
    hardware schedules programs in no fixed order anyway."""
    if DEVICE.type != "cpu":
        pytest.skip("program order is controllable on the Triton interpreter only")
    from triton.runtime import interpreter

    builder = interpreter.interpreter_builder
    set_grid_idx = builder.set_grid_idx

    def reversed_grid_idx(x, y, z):
        nx, ny, nz = builder.grid_dim
        set_grid_idx(nx - 1 - x, ny - 1 - y, nz - 1 - z)

    monkeypatch.setattr(builder, "set_grid_idx", reversed_grid_idx)


@pytest.fixture
def set5_dir():
    if not SET5.is_dir():
        pytest.skip(f"Set5 not found at {SET5} (set DLSN_SET5)")
    return SET5


@pytest.fixture
def checkpoint(tmp_path, request):
    """A tiny x2 DLSN's weights on disk; the test module's `TINY` dict gives the model's sizes."""
    import dlsn

    torch.manual_seed(0)
    path = tmp_path / "tiny_x2.pth"
    torch.save(dlsn.DLSN(scale=2, **request.module.TINY).state_dict(), path)
    return path
