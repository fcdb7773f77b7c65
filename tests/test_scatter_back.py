"""The extension ops dlsn::scatter_back and dlsn::attention_grad_rows.

Each op is compared with a pure-PyTorch formulation of the same merge written here (float64), on
permutations built as docs/internals.md describes (random codes with ties, stable sort, padding to
a chunk multiple). CUDA variants run when a GPU is present.
"""
import subprocess
import sys

import pytest
import torch

from dlsn.ops import reference
from dlsn.ops import scatter as ops

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
CPU_KEYSET = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)

# (N, H, W, C, chunk): padding p = (-L) mod chunk, and L < chunk; C odd, not a multiple of any
# vector width, and spanning several channel chunks of the CUDA kernel.
SHAPES = [
    (2, 5, 7, 6, 8),  # L = 35 > one CPU block, p = 5
    (1, 4, 4, 16, 8),  # L = 16, no padding
    (1, 3, 1, 3, 8),  # L = 3 < chunk: wrapped padding
    (2, 9, 9, 33, 16),  # L = 81 > one CUDA tile, odd C
    (1, 2, 3, 130, 4),  # C > 2 channel chunks of the widest CUDA vector
]
# atol, rtol of y and out against the float64 merge of the same (rounded) inputs.
TOLERANCES = {
    torch.float64: (1e-12, 1e-12),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


def test_extension_is_built_and_registered():
    # Not a skip condition: the package is installed with its extension, and these tests must
    # never pass by skipping.
    import dlsn._C  # noqa: F401

    assert ops._registered
    for name in ("scatter_back", "attention_grad_rows"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"dlsn::{name}", "CPU"), name


def test_missing_extension_fails_on_use_not_on_import():
    script = (
        "import sys; sys.modules['dlsn._C'] = None\n"  # makes `import dlsn._C` raise ImportError
        "import torch, dlsn.ops.scatter as ops\n"
        "try:\n"
        "    ops.scatter_back(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1), torch.ones(1, 1, 1),"
        " torch.zeros(1, 1, 1, dtype=torch.int32), torch.zeros(1, 1, 1, 1))\n"
        "except RuntimeError as exc:\n"
        "    print('RuntimeError:', exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "RuntimeError: the dlsn C++/CUDA extension (dlsn._C) is not available" in result.stdout
    assert "pip install --no-build-isolation -e ." in result.stdout


def build_perm_inv(codes, chunk):
    """perm [N, h, Lp] and inv [N, h, L] as in docs/internals.md, both int32."""
    L = codes.shape[-1]
    pad = (-L) % chunk
    order = torch.sort(codes, dim=-1, stable=True).indices
    padded = (torch.arange(L, L + pad, device=codes.device) - pad) % L
    perm = torch.cat([order, order[..., padded]], dim=-1)
    inv = torch.empty_like(order)
    inv.scatter_(-1, order, torch.arange(L, device=codes.device).expand_as(order))
    return perm.int(), inv.int()


def make_inputs(N, h, H, W, C, chunk, dtype, device, seed=0):
    """O, round_max, round_sum, inv, residual; round_sum >= 1 as the window attention gives it."""
    gen = torch.Generator().manual_seed(seed)
    L = H * W
    codes = torch.randint(0, max(1, L // 3), (N, h, L), generator=gen)  # few buckets: many ties
    perm, inv = build_perm_inv(codes, chunk)
    assert torch.equal(inv.long().gather(-1, perm[..., :L].long()), torch.arange(L).expand(N, h, L))
    stats_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    O = torch.randn(N, h, L, C, generator=gen).to(dtype)
    round_max = (3 * torch.randn(N, h, L, generator=gen)).to(stats_dtype)
    round_sum = (1 + 5 * torch.rand(N, h, L, generator=gen)).to(stats_dtype)
    residual = torch.randn(N, C, H, W, generator=gen).to(dtype)
    return [t.to(device) for t in (O, round_max, round_sum, inv, residual)]


def merge_reference(O, round_max, round_sum, inv, residual, res_scale):
    """float64 (y, out, LSE): the softmax over rounds of lse_r = round_max + log(round_sum)."""
    N, h, L, C = O.shape
    index = inv.long()
    O_pos = O.double().gather(2, index[..., None].expand(N, h, L, C))
    lse_pos = (round_max.double() + round_sum.double().log()).gather(2, index)
    weights = torch.softmax(lse_pos, dim=1)
    out = (weights[..., None] * O_pos).sum(1)
    y = res_scale * out.transpose(1, 2).reshape(residual.shape) + residual.double()
    return y, out, torch.logsumexp(lse_pos, dim=1)


def random_inv(N, h, L, gen):
    return torch.stack([torch.stack([torch.randperm(L, generator=gen) for _ in range(h)]) for _ in range(N)]).int()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("h", [1, 2, 3, 4])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_merge(device, dtype, h, shape):
    if device == "cuda" and dtype == torch.float64:
        pytest.skip("float64 is CPU-only")
    N, H, W, C, chunk = shape
    O, round_max, round_sum, inv, residual = make_inputs(N, h, H, W, C, chunk, dtype, device, seed=h)
    y, out, lse_max, lse_sum = ops.scatter_back(O, round_max, round_sum, inv, residual, 0.7)
    y_ref, out_ref, LSE_ref = merge_reference(O, round_max, round_sum, inv, residual, 0.7)
    atol, rtol = TOLERANCES[dtype]
    stats_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert y.shape == residual.shape and y.dtype == dtype and y.is_contiguous()
    assert out.shape == (N, H * W, C) and out.dtype == dtype
    for stat in (lse_max, lse_sum):
        assert stat.shape == (N, H * W) and stat.dtype == stats_dtype
    torch.testing.assert_close(out.double(), out_ref, atol=atol, rtol=rtol)
    torch.testing.assert_close(y.double(), y_ref, atol=atol, rtol=rtol)
    index = inv.long()
    torch.testing.assert_close(lse_max, round_max.gather(2, index).amax(1), atol=0, rtol=0)
    assert (lse_sum >= 1).all()
    lse_tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(lse_max.double() + lse_sum.double().log(), LSE_ref, atol=lse_tol, rtol=lse_tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("split", ["lse_as_max", "random"])
@pytest.mark.parametrize("magnitude", [1e2, 1e3, 1e4, 1e5])
def test_merge_is_exact_at_any_score_magnitude(device, split, magnitude):
    """Issue 15: O = 1 everywhere, lse_r = B + U(0, 1) over 2 rounds: out must be 1 at the float32
    reference merge's level (6e-8), where weights exp(lse_r - LSE) with a float32 LSE gave 3.7e-3
    at B = 1e5. The statistics are fed as round_max = lse, round_sum = 1, and as random splits
    (round_max = lse - log(round_sum)) that a window attention could produce."""
    gen = torch.Generator().manual_seed(int(magnitude))
    N, h, H, W, C = 2, 2, 16, 16, 8
    L = H * W
    lse = magnitude + torch.rand(N, h, L, generator=gen, dtype=torch.float64)
    if split == "lse_as_max":
        round_max, round_sum = lse.float(), torch.ones(N, h, L)
    else:
        round_sum = 1 + 30 * torch.rand(N, h, L, generator=gen)
        round_max = (lse - round_sum.double().log()).float()
    inv = random_inv(N, h, L, gen)
    O = torch.ones(N, h, L, C)
    residual = torch.zeros(N, C, H, W)
    _, out, _, _ = ops.scatter_back(*(t.to(device) for t in (O, round_max, round_sum, inv, residual)), 1.0)
    error = (out.double() - 1).abs().max().item()
    reference_out, _ = reference.scatter_back(O, (round_max.double() + round_sum.double().log()).float(), inv.long())
    reference_error = (reference_out.double() - 1).abs().max().item()
    assert reference_error <= 1.2e-7
    assert error <= max(2 * reference_error, 2.4e-7), (error, reference_error)
    # The bound can fail: weights exp(lse_r - LSE) with LSE rounded to float32 miss it from B = 1e2.
    lse32 = (round_max.double() + round_sum.double().log()).float()
    rounded_weights = torch.exp(lse32 - torch.logsumexp(lse32, dim=1, keepdim=True)).sum(1)
    assert (rounded_weights.double() - 1).abs().max().item() > max(2 * reference_error, 2.4e-7)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("N,H,W,C", [(0, 2, 3, 4), (1, 0, 3, 4), (2, 2, 3, 0)])
def test_empty_sizes(device, N, H, W, C):
    O, round_max, round_sum, inv, residual = make_inputs(N, 2, H, W, C, 4, torch.float32, device)
    y, out, lse_max, lse_sum = ops.scatter_back(O, round_max, round_sum, inv, residual, 1.0)
    y_ref, out_ref, LSE_ref = merge_reference(O, round_max, round_sum, inv, residual, 1.0)
    for got, want in ((y, y_ref), (out, out_ref), (lse_max.double() + lse_sum.double().log(), LSE_ref)):
        assert got.shape == want.shape
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    g, D = ops.attention_grad_rows(y, out, 1.0)
    assert g.shape == out.shape and D.shape == out.shape[:2]


def test_float64_O_accepts_float32_statistics():
    O, round_max, round_sum, inv, residual = make_inputs(2, 3, 5, 7, 6, 8, torch.float64, "cpu")
    round_max, round_sum = round_max.float(), round_sum.float()
    y, out, lse_max, lse_sum = ops.scatter_back(O, round_max, round_sum, inv, residual, 1.0)
    y_ref, out_ref, LSE_ref = merge_reference(O, round_max, round_sum, inv, residual, 1.0)
    assert lse_max.dtype == lse_sum.dtype == torch.float64
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(lse_max + lse_sum.log(), LSE_ref, atol=1e-12, rtol=1e-12)


def test_equal_statistics_give_the_plain_mean_and_h1_is_identity_gather():
    gen = torch.Generator().manual_seed(3)
    N, h, H, W, C = 1, 3, 2, 4, 5
    L = H * W
    O = torch.randn(N, h, L, C, generator=gen, dtype=torch.float64)
    inv = random_inv(N, h, L, gen)
    residual = torch.zeros(N, C, H, W, dtype=torch.float64)
    zeros, ones = torch.zeros(N, h, L, dtype=torch.float64), torch.ones(N, h, L, dtype=torch.float64)
    y, out, lse_max, lse_sum = ops.scatter_back(O, zeros, ones, inv, residual, 1.0)
    gathered = O.gather(2, inv.long()[..., None].expand(N, h, L, C))
    torch.testing.assert_close(out, gathered.mean(1), atol=1e-14, rtol=0)
    assert torch.equal(lse_max, torch.zeros(N, L, dtype=torch.float64))
    assert torch.equal(lse_sum, torch.full((N, L), float(h), dtype=torch.float64))
    y1, out1, _, _ = ops.scatter_back(O[:, :1].contiguous(), torch.randn(N, 1, L, dtype=torch.float64, generator=gen),
                                      ones[:, :1] * 7, inv[:, :1].contiguous(), residual, 2.0)
    torch.testing.assert_close(out1, gathered[:, 0], atol=0, rtol=0)
    torch.testing.assert_close(y1, 2.0 * gathered[:, 0].transpose(1, 2).reshape(N, C, H, W), atol=0, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_non_finite_statistics_give_nan_rows_where_the_reference_does(device):
    """A NaN or +inf statistic (non-finite input reaching the scores) makes its position NaN, and
    only its position, as the reference's softmax over rounds does."""
    O, round_max, round_sum, inv, residual = make_inputs(1, 3, 3, 4, 5, 4, torch.float32, device, seed=4)
    round_max[0, 0, 2] = float("nan")
    round_max[0, 1, 5] = float("inf")
    round_sum[0, 2, 7] = float("nan")
    _, out, _, _ = ops.scatter_back(O, round_max, round_sum, inv, residual, 1.0)
    _, expected, _ = merge_reference(O, round_max, round_sum, inv, residual, 1.0)
    assert torch.equal(out.isnan().any(-1), expected.isnan().any(-1))
    assert out.isnan().any(-1).sum() == 3
    finite = ~expected.isnan().any(-1)
    torch.testing.assert_close(out[finite].double(), expected[finite], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[3], SHAPES[4]])
def test_attention_grad_rows(device, dtype, shape):
    if device == "cuda" and dtype == torch.float64:
        pytest.skip("float64 is CPU-only")
    N, H, W, C, _ = shape
    gen = torch.Generator().manual_seed(7)
    grad_y = torch.randn(N, C, H, W, generator=gen).to(dtype).to(device)
    out = torch.randn(N, H * W, C, generator=gen).to(dtype).to(device)
    g, D = ops.attention_grad_rows(grad_y, out, 0.1)
    g_ref = (0.1 * grad_y.double()).flatten(2).transpose(1, 2)
    atol, rtol = TOLERANCES[dtype]
    assert g.dtype == dtype and g.shape == out.shape and g.is_contiguous()
    assert D.dtype == (torch.float64 if dtype == torch.float64 else torch.float32) and D.shape == (N, H * W)
    torch.testing.assert_close(g.double(), g_ref, atol=atol, rtol=rtol)
    # D is defined from the rounded g: exact up to the fp32 (fp64) accumulation.
    D_ref = (g.double() * out.double()).sum(-1)
    D_tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(D.double(), D_ref, atol=D_tol, rtol=D_tol)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    dtype = torch.float64 if device == "cpu" else torch.float32
    O, round_max, round_sum, inv, residual = make_inputs(2, 3, 3, 5, 7, 4, dtype, device, seed=8)
    _, out, _, _ = ops.scatter_back(O, round_max, round_sum, inv, residual, 0.5)
    torch.library.opcheck(torch.ops.dlsn.scatter_back.default, (O, round_max, round_sum, inv, residual, 0.5))
    torch.library.opcheck(torch.ops.dlsn.attention_grad_rows.default, (torch.randn_like(residual), out, 0.5))


def test_torch_compile_fullgraph():
    O, round_max, round_sum, inv, residual = make_inputs(1, 2, 3, 5, 4, 4, torch.float32, "cpu", seed=9)

    def f(O, round_max, round_sum, residual):
        y, out, lse_max, lse_sum = ops.scatter_back(O, round_max, round_sum, inv, residual, 0.5)
        return y.sum() + out.square().sum() + lse_max.sum() + lse_sum.sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)(O, round_max, round_sum, residual)
    torch.testing.assert_close(compiled, f(O, round_max, round_sum, residual))


# ---------------------------------------------------------------------------------------------
# Bad input: every TORCH_CHECK of csrc/scatter_back.cpp (and the Python argument checks).

def _forward_args():
    O, round_max, round_sum, inv, residual = make_inputs(1, 2, 2, 3, 4, 4, torch.float32, "cpu", seed=11)
    return {"O": O, "round_max": round_max, "round_sum": round_sum, "inv": inv, "residual": residual}


def _call_forward(a, redispatch=False):
    args = (a["O"], a["round_max"], a["round_sum"], a["inv"], a["residual"], 1.0)
    if redispatch:
        return torch.ops.dlsn.scatter_back.default.redispatch(CPU_KEYSET, *args)
    return torch.ops.dlsn.scatter_back(*args)


def _transposed(t):
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


FORWARD_BAD = [
    ("O", lambda a: a["O"][0], ValueError, r"O must be 4-D \[N, h, L, C\]"),
    ("O", lambda a: a["O"][:, :0], ValueError, r"at least one hash round"),
    ("O", lambda a: a["O"].int(), TypeError, r"O must be float32, float16, bfloat16 or float64"),
    ("round_max", lambda a: a["round_max"].half(), TypeError, r"round_max must be float32"),
    ("round_sum", lambda a: a["round_sum"].double(), TypeError, r"round_sum must be float32 \(float64 is accepted when O is float64\)"),
    ("inv", lambda a: a["inv"].long(), TypeError, r"inv must be int32"),
    ("residual", lambda a: a["residual"].double(), TypeError, r"residual must have the dtype of O"),
    ("round_max", lambda a: a["round_max"][:, :1], ValueError, r"round_max must have shape \[N, h, L\] = \[1, 2, 6\]"),
    ("round_sum", lambda a: a["round_sum"][..., :5], ValueError, r"round_sum must have shape \[N, h, L\] = \[1, 2, 6\]"),
    ("inv", lambda a: a["inv"][..., :5], ValueError, r"inv must have shape \[N, h, L\] = \[1, 2, 6\]"),
    ("residual", lambda a: a["residual"][:, :, :1], ValueError, r"residual must have shape \[N, C, H, W\].*L = 6"),
    ("residual", lambda a: a["residual"][:, :3], ValueError, r"residual must have shape \[N, C, H, W\].*C = 4"),
    ("O", lambda a: _transposed(a["O"]), ValueError, r"O must be contiguous"),
    ("round_max", lambda a: _transposed(a["round_max"]), ValueError, r"round_max must be contiguous"),
    ("round_sum", lambda a: _transposed(a["round_sum"]), ValueError, r"round_sum must be contiguous"),
    ("inv", lambda a: _transposed(a["inv"]), ValueError, r"inv must be contiguous"),
    ("residual", lambda a: a["residual"].contiguous(memory_format=torch.channels_last), ValueError,
     r"residual must be contiguous"),
    ("inv", lambda a: torch.where(a["inv"] == 2, -1, a["inv"]).int(), ValueError, r"= -1 is outside \[0, L = 6\)"),
    ("inv", lambda a: torch.where(a["inv"] == 2, 6, a["inv"]).int(), ValueError, r"= 6 is outside \[0, L = 6\)"),
    ("inv", lambda a: torch.where(a["inv"] == 2, 3, a["inv"]).int(), ValueError, r"slot 3 appears twice in inv\[0, 0\]"),
]


@pytest.mark.parametrize("name,mutate,error,message", FORWARD_BAD)
def test_scatter_back_rejects(name, mutate, error, message):
    args = _forward_args()
    args[name] = mutate(args)
    with pytest.raises(error, match=message):
        _call_forward(args)


def test_scatter_back_rejects_too_many_positions():
    big = 2**31  # zero-element tensors: no memory, the size check alone fires
    with pytest.raises(ValueError, match=r"L = 2147483648 positions do not fit the int32 indices"):
        torch.ops.dlsn.scatter_back(torch.empty(0, 1, big, 0), torch.empty(0, 1, big), torch.empty(0, 1, big),
                                    torch.empty(0, 1, big, dtype=torch.int32), torch.empty(0, 0, big, 1), 1.0)


@pytest.mark.parametrize("name", ["round_max", "round_sum", "inv", "residual"])
def test_scatter_back_rejects_mixed_devices(name):
    # The CPU kernel is called directly: with a meta tensor among the arguments the dispatcher
    # would otherwise route the call to the fake implementation.
    args = _forward_args()
    args[name] = args[name].to("meta")
    with pytest.raises(ValueError, match=rf"scatter_back: {name} must be on the device of O \(cpu\), got meta"):
        _call_forward(args, redispatch=True)


def test_cpu_kernels_reject_other_devices():
    args = {k: v.to("meta") for k, v in _forward_args().items()}
    with pytest.raises(ValueError, match=r"scatter_back: the CPU implementation got tensors on meta"):
        _call_forward(args, redispatch=True)
    y, out, _, _ = _call_forward(args)
    with pytest.raises(ValueError, match=r"attention_grad_rows: the CPU implementation got tensors on meta"):
        torch.ops.dlsn.attention_grad_rows.default.redispatch(CPU_KEYSET, y, out, 1.0)


def _grad_rows_args():
    args = _forward_args()
    y, out, _, _ = _call_forward(args)
    return {"grad_y": torch.randn(y.shape, generator=torch.Generator().manual_seed(12)), "out": out}


GRAD_ROWS_BAD = [
    ("out", lambda a: a["out"][0], ValueError, r"attention_grad_rows: out must be 3-D \[N, L, C\]"),
    ("out", lambda a: a["out"].int(), TypeError, r"out must be float32, float16, bfloat16 or float64"),
    ("grad_y", lambda a: a["grad_y"].double(), TypeError, r"grad_y must have the dtype of out"),
    ("grad_y", lambda a: a["grad_y"][:, :, :1], ValueError, r"grad_y must have shape \[N, C, H, W\].*L = 6"),
    ("grad_y", lambda a: a["grad_y"].contiguous(memory_format=torch.channels_last), ValueError,
     r"attention_grad_rows: grad_y must be contiguous"),
    ("out", lambda a: _transposed(a["out"]), ValueError, r"attention_grad_rows: out must be contiguous"),
]


@pytest.mark.parametrize("name,mutate,error,message", GRAD_ROWS_BAD)
def test_attention_grad_rows_rejects(name, mutate, error, message):
    args = _grad_rows_args()
    args[name] = mutate(args)
    with pytest.raises(error, match=message):
        torch.ops.dlsn.attention_grad_rows(args["grad_y"], args["out"], 1.0)


def test_attention_grad_rows_rejects_mixed_devices():
    args = _grad_rows_args()
    with pytest.raises(ValueError, match=r"attention_grad_rows: grad_y must be on the device of out \(cpu\), got meta"):
        torch.ops.dlsn.attention_grad_rows.default.redispatch(CPU_KEYSET, args["grad_y"].to("meta"), args["out"], 1.0)


def test_python_wrappers_reject_non_tensors_and_bad_scale():
    a = _forward_args()
    with pytest.raises(TypeError, match=r"scatter_back: inv must be a torch.Tensor, got list"):
        ops.scatter_back(a["O"], a["round_max"], a["round_sum"], a["inv"].tolist(), a["residual"])
    with pytest.raises(TypeError, match=r"scatter_back: res_scale must be a Python float, got Tensor"):
        ops.scatter_back(a["O"], a["round_max"], a["round_sum"], a["inv"], a["residual"], torch.tensor(1.0))
    with pytest.raises(TypeError, match=r"attention_grad_rows: out must be a torch.Tensor"):
        ops.attention_grad_rows(a["residual"], None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_specific_checks():
    args = {k: v.cuda() for k, v in _forward_args().items()}
    with pytest.raises(TypeError, match=r"on CUDA O must be float32, float16 or bfloat16"):
        torch.ops.dlsn.scatter_back(args["O"].double(), args["round_max"].double(), args["round_sum"].double(),
                                    args["inv"], args["residual"].double(), 1.0)
    O, round_max, round_sum, inv, residual = make_inputs(1, 17, 2, 3, 4, 4, torch.float32, "cuda")
    with pytest.raises(ValueError, match=r"at most 16 hash rounds, got h = 17"):
        torch.ops.dlsn.scatter_back(O, round_max, round_sum, inv, residual, 1.0)
    cuda_keyset = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
    cpu_args = _forward_args()
    with pytest.raises(ValueError, match=r"scatter_back: the CUDA implementation got tensors on cpu"):
        torch.ops.dlsn.scatter_back.default.redispatch(cuda_keyset, *cpu_args.values(), 1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_runs_on_current_stream_and_matches_cpu():
    inputs = make_inputs(2, 3, 9, 9, 33, 16, torch.float32, "cpu", seed=13)
    expected = ops.scatter_back(*inputs, 0.5)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        got = ops.scatter_back(*(t.cuda() for t in inputs), 0.5)
    stream.synchronize()
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.cpu(), e, atol=1e-5, rtol=1e-5)
