"""The scatter-back extension ops (dlsn::scatter_back, its backward, attention_grad_rows).

Each op is compared with a pure-PyTorch formulation of the same merge written here (float64), on
permutations built as docs/internals.md describes (random codes with ties, stable sort, padding to
a chunk multiple). CUDA variants run when a GPU is present.
"""
import math
import subprocess
import sys

import pytest
import torch

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
    for name in ("scatter_back", "scatter_back_backward", "attention_grad_rows"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"dlsn::{name}", "CPU"), name


def test_missing_extension_fails_on_use_not_on_import():
    script = (
        "import sys; sys.modules['dlsn._C'] = None\n"  # makes `import dlsn._C` raise ImportError
        "import torch, dlsn.ops.scatter as ops\n"
        "try:\n"
        "    ops.scatter_back(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1), torch.zeros(1, 1, 1, dtype=torch.int32),"
        " torch.zeros(1, 1, 1, 1))\n"
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
    gen = torch.Generator().manual_seed(seed)
    L = H * W
    codes = torch.randint(0, max(1, L // 3), (N, h, L), generator=gen)  # few buckets: many ties
    perm, inv = build_perm_inv(codes, chunk)
    assert torch.equal(inv.long().gather(-1, perm[..., :L].long()), torch.arange(L).expand(N, h, L))
    lse_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    O = torch.randn(N, h, L, C, generator=gen).to(dtype)
    lse = (3 * torch.randn(N, h, L, generator=gen)).to(lse_dtype)
    residual = torch.randn(N, C, H, W, generator=gen).to(dtype)
    return [t.to(device) for t in (O, lse, inv, residual)]


def merge_reference(O, lse, inv, residual, res_scale):
    """float64 (y, out, LSE) by the formulas of docs/internals.md, gathering each position's slots."""
    N, h, L, C = O.shape
    index = inv.long()
    O_pos = O.double().gather(2, index[..., None].expand(N, h, L, C))
    lse_pos = lse.double().gather(2, index)
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
    O, lse, inv, residual = make_inputs(N, h, H, W, C, chunk, dtype, device, seed=h)
    y, out, LSE = ops.scatter_back(O, lse, inv, residual, 0.7)
    y_ref, out_ref, LSE_ref = merge_reference(O, lse, inv, residual, 0.7)
    atol, rtol = TOLERANCES[dtype]
    assert y.shape == residual.shape and y.dtype == dtype and y.is_contiguous()
    assert out.shape == (N, H * W, C) and out.dtype == dtype
    assert LSE.shape == (N, H * W) and LSE.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(out.double(), out_ref, atol=atol, rtol=rtol)
    torch.testing.assert_close(y.double(), y_ref, atol=atol, rtol=rtol)
    lse_tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(LSE.double(), LSE_ref, atol=lse_tol, rtol=lse_tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("N,H,W,C", [(0, 2, 3, 4), (1, 0, 3, 4), (2, 2, 3, 0)])
def test_empty_sizes(device, N, H, W, C):
    O, lse, inv, residual = make_inputs(N, 2, H, W, C, 4, torch.float32, device)
    y, out, LSE = ops.scatter_back(O, lse, inv, residual, 1.0)
    for got, want in zip((y, out, LSE), merge_reference(O, lse, inv, residual, 1.0)):
        assert got.shape == want.shape
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    grad_O, grad_lse = ops.scatter_back_backward(torch.ones_like(y), None, O, lse, inv, out, LSE, 1.0)
    assert grad_O.shape == O.shape and grad_lse.shape == lse.shape
    torch.testing.assert_close(grad_lse, torch.zeros_like(grad_lse))  # C = 0 or nothing at all
    g, D = ops.attention_grad_rows(y, out, 1.0)
    assert g.shape == out.shape and D.shape == out.shape[:2]


def test_float64_O_accepts_float32_lse():
    O, lse, inv, residual = make_inputs(2, 3, 5, 7, 6, 8, torch.float64, "cpu")
    lse32 = lse.float()
    y, out, LSE = ops.scatter_back(O, lse32, inv, residual, 1.0)
    y_ref, out_ref, LSE_ref = merge_reference(O, lse32, inv, residual, 1.0)
    assert LSE.dtype == torch.float64
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(LSE, LSE_ref, atol=1e-12, rtol=1e-12)


def test_equal_lse_is_plain_mean_and_h1_is_identity_gather():
    gen = torch.Generator().manual_seed(3)
    N, h, H, W, C = 1, 3, 2, 4, 5
    L = H * W
    O = torch.randn(N, h, L, C, generator=gen, dtype=torch.float64)
    inv = random_inv(N, h, L, gen)
    residual = torch.zeros(N, C, H, W, dtype=torch.float64)
    y, out, LSE = ops.scatter_back(O, torch.zeros(N, h, L, dtype=torch.float64), inv, residual, 1.0)
    gathered = O.gather(2, inv.long()[..., None].expand(N, h, L, C))
    torch.testing.assert_close(out, gathered.mean(1), atol=1e-14, rtol=0)
    torch.testing.assert_close(LSE, torch.full((N, L), math.log(h), dtype=torch.float64), atol=1e-14, rtol=0)
    y1, out1, _ = ops.scatter_back(O[:, :1].contiguous(), torch.randn(N, 1, L, dtype=torch.float64, generator=gen),
                                   inv[:, :1].contiguous(), residual, 2.0)
    torch.testing.assert_close(out1, gathered[:, 0], atol=0, rtol=0)
    torch.testing.assert_close(y1, 2.0 * gathered[:, 0].transpose(1, 2).reshape(N, C, H, W), atol=0, rtol=0)


def backward_reference(grad_y, grad_out, O, lse, inv, residual, res_scale):
    """float64 gradients of the merge w.r.t. O and lse by autograd, LSE held out of the loss."""
    O64 = O.double().requires_grad_()
    lse64 = lse.double().requires_grad_()
    y, out, _ = merge_reference(O64, lse64, inv, residual, res_scale)
    loss = (y * grad_y.double()).sum()
    if grad_out is not None:
        loss = loss + (out * grad_out.double()).sum()
    return torch.autograd.grad(loss, (O64, lse64))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("with_grad_out", [False, True])
@pytest.mark.parametrize("shape,h", [(SHAPES[0], 3), (SHAPES[2], 1), (SHAPES[3], 4), (SHAPES[4], 2)])
def test_backward_op_matches_autograd_of_merge(device, dtype, with_grad_out, shape, h):
    if device == "cuda" and dtype == torch.float64:
        pytest.skip("float64 is CPU-only")
    N, H, W, C, chunk = shape
    O, lse, inv, residual = make_inputs(N, h, H, W, C, chunk, dtype, device, seed=10 + h)
    gen = torch.Generator().manual_seed(20 + h)
    grad_y = torch.randn(residual.shape, generator=gen).to(dtype).to(device)
    grad_out = torch.randn(N, H * W, C, generator=gen).to(dtype).to(device) if with_grad_out else None
    _, out, LSE = ops.scatter_back(O, lse, inv, residual, 0.3)
    grad_O, grad_lse = ops.scatter_back_backward(grad_y, grad_out, O, lse, inv, out, LSE, 0.3)
    ref_O, ref_lse = backward_reference(grad_y, grad_out, O, lse, inv, residual, 0.3)
    assert grad_O.dtype == dtype and grad_O.shape == O.shape
    assert grad_lse.dtype == lse.dtype and grad_lse.shape == lse.shape
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(grad_O.double(), ref_O, atol=atol, rtol=rtol)
    # grad_lse is a C-long dot product with (O - out), out rounded to the element type: its error
    # grows like sqrt(C) (measured: at most 0.4 of this bound over several seeds).
    lse_atol = 1e-11 if dtype == torch.float64 else atol * math.sqrt(C)
    torch.testing.assert_close(grad_lse.double(), ref_lse, atol=lse_atol, rtol=rtol)


def test_gradcheck_float64():
    O, lse, inv, residual = make_inputs(2, 3, 2, 3, 4, 4, torch.float64, "cpu", seed=5)
    inputs = [t.requires_grad_() for t in (O, lse, residual)]
    assert torch.autograd.gradcheck(lambda O, lse, res: ops.scatter_back(O, lse, inv, res, 0.6), inputs)


@pytest.mark.parametrize("used", ["y", "out", "LSE"])
def test_autograd_single_output_and_noncontiguous_grad(used):
    O, lse, inv, residual = make_inputs(1, 2, 3, 4, 5, 4, torch.float64, "cpu", seed=6)
    leaves = [t.clone().requires_grad_() for t in (O, lse, residual)]
    outputs = dict(zip(["y", "out", "LSE"], ops.scatter_back(leaves[0], leaves[1], inv, leaves[2], 0.5)))
    outputs[used].sum().backward()  # the gradient of sum() is an expanded, non-contiguous tensor
    refs = [t.clone().requires_grad_() for t in (O, lse, residual)]
    ref_outputs = dict(zip(["y", "out", "LSE"], merge_reference(refs[0], refs[1], inv, refs[2], 0.5)))
    ref_outputs[used].sum().backward()
    for leaf, ref in zip(leaves, refs):
        expected = ref.grad if ref.grad is not None else torch.zeros_like(ref)
        actual = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
        torch.testing.assert_close(actual, expected, atol=1e-12, rtol=1e-12)


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
    O, lse, inv, residual = make_inputs(2, 3, 3, 5, 7, 4, dtype, device, seed=8)
    _, out, LSE = ops.scatter_back(O, lse, inv, residual, 0.5)
    grad_y = torch.randn_like(residual)
    grad_out = torch.randn_like(out)
    torch.library.opcheck(torch.ops.dlsn.scatter_back.default,
                          (O.requires_grad_(), lse.requires_grad_(), inv, residual.requires_grad_(), 0.5))
    for g_out in (grad_out, None):
        torch.library.opcheck(torch.ops.dlsn.scatter_back_backward.default,
                              (grad_y, g_out, O.detach(), lse.detach(), inv, out, LSE, 0.5))
    torch.library.opcheck(torch.ops.dlsn.attention_grad_rows.default, (grad_y, out, 0.5))


def test_torch_compile_fullgraph():
    O, lse, inv, residual = make_inputs(1, 2, 3, 5, 4, 4, torch.float32, "cpu", seed=9)

    def f(O, lse, residual):
        y, out, LSE = ops.scatter_back(O, lse, inv, residual, 0.5)
        return y.sum() + out.square().sum() + LSE.sum()

    leaves = [t.clone().requires_grad_() for t in (O, lse, residual)]
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)(*leaves)
    grads = torch.autograd.grad(compiled, leaves)
    eager_leaves = [t.clone().requires_grad_() for t in (O, lse, residual)]
    eager = f(*eager_leaves)
    torch.testing.assert_close(compiled, eager)
    for got, want in zip(grads, torch.autograd.grad(eager, eager_leaves)):
        torch.testing.assert_close(got, want)


# ---------------------------------------------------------------------------------------------
# Bad input: every TORCH_CHECK of csrc/scatter_back.cpp (and the Python argument checks).

def _forward_args():
    O, lse, inv, residual = make_inputs(1, 2, 2, 3, 4, 4, torch.float32, "cpu", seed=11)
    return {"O": O, "lse": lse, "inv": inv, "residual": residual}


FORWARD_BAD = [
    ("O", lambda a: a["O"][0], ValueError, r"O must be 4-D \[N, h, L, C\]"),
    ("O", lambda a: a["O"][:, :0], ValueError, r"at least one hash round"),
    ("O", lambda a: a["O"].int(), TypeError, r"O must be float32, float16, bfloat16 or float64"),
    ("lse", lambda a: a["lse"].half(), TypeError, r"lse must be float32"),
    ("lse", lambda a: a["lse"].double(), TypeError, r"float64 is accepted when O is float64"),
    ("inv", lambda a: a["inv"].long(), TypeError, r"inv must be int32"),
    ("residual", lambda a: a["residual"].double(), TypeError, r"residual must have the dtype of O"),
    ("lse", lambda a: a["lse"][:, :1], ValueError, r"lse must have shape \[N, h, L\] = \[1, 2, 6\]"),
    ("inv", lambda a: a["inv"][..., :5], ValueError, r"inv must have shape \[N, h, L\] = \[1, 2, 6\]"),
    ("residual", lambda a: a["residual"][:, :, :1], ValueError, r"residual must have shape \[N, C, H, W\].*L = 6"),
    ("residual", lambda a: a["residual"][:, :3], ValueError, r"residual must have shape \[N, C, H, W\].*C = 4"),
    ("O", lambda a: a["O"].transpose(2, 3).contiguous().transpose(2, 3), ValueError, r"O must be contiguous"),
    ("lse", lambda a: a["lse"].transpose(1, 2).contiguous().transpose(1, 2), ValueError, r"lse must be contiguous"),
    ("inv", lambda a: a["inv"].transpose(1, 2).contiguous().transpose(1, 2), ValueError, r"inv must be contiguous"),
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
        torch.ops.dlsn.scatter_back(args["O"], args["lse"], args["inv"], args["residual"], 1.0)


def test_scatter_back_rejects_too_many_positions():
    big = 2**31  # zero-element tensors: no memory, the size check alone fires
    with pytest.raises(ValueError, match=r"L = 2147483648 positions do not fit the int32 indices"):
        torch.ops.dlsn.scatter_back(torch.empty(0, 1, big, 0), torch.empty(0, 1, big),
                                    torch.empty(0, 1, big, dtype=torch.int32), torch.empty(0, 0, big, 1), 1.0)


@pytest.mark.parametrize("name", ["lse", "inv", "residual"])
def test_scatter_back_rejects_mixed_devices(name):
    # The CPU kernel is called directly: with a meta tensor among the arguments the dispatcher
    # would otherwise route the call to the fake implementation.
    args = _forward_args()
    args[name] = args[name].to("meta")
    with pytest.raises(ValueError, match=rf"scatter_back: {name} must be on the device of O \(cpu\), got meta"):
        torch.ops.dlsn.scatter_back.default.redispatch(CPU_KEYSET, args["O"], args["lse"], args["inv"],
                                                       args["residual"], 1.0)


def test_cpu_kernels_reject_other_devices():
    args = {k: v.to("meta") for k, v in _forward_args().items()}
    with pytest.raises(ValueError, match=r"scatter_back: the CPU implementation got tensors on meta"):
        torch.ops.dlsn.scatter_back.default.redispatch(CPU_KEYSET, args["O"], args["lse"], args["inv"],
                                                       args["residual"], 1.0)
    y, out, LSE = torch.ops.dlsn.scatter_back(args["O"], args["lse"], args["inv"], args["residual"], 1.0)
    with pytest.raises(ValueError, match=r"scatter_back_backward: the CPU implementation got tensors on meta"):
        torch.ops.dlsn.scatter_back_backward.default.redispatch(CPU_KEYSET, y, None, args["O"], args["lse"],
                                                                args["inv"], out, LSE, 1.0)
    with pytest.raises(ValueError, match=r"attention_grad_rows: the CPU implementation got tensors on meta"):
        torch.ops.dlsn.attention_grad_rows.default.redispatch(CPU_KEYSET, y, out, 1.0)


def _backward_args():
    args = _forward_args()
    _, out, LSE = ops.scatter_back(args["O"], args["lse"], args["inv"], args["residual"], 1.0)
    gen = torch.Generator().manual_seed(12)
    return {"grad_y": torch.randn(args["residual"].shape, generator=gen), "grad_out": torch.randn(out.shape, generator=gen),
            "O": args["O"], "lse": args["lse"], "inv": args["inv"], "out": out, "LSE": LSE}


BACKWARD_BAD = [
    ("grad_y", lambda a: a["grad_y"].half(), TypeError, r"scatter_back_backward: grad_y must have the dtype of O"),
    ("grad_y", lambda a: a["grad_y"][:, :, :1], ValueError, r"grad_y must have shape \[N, C, H, W\]"),
    ("grad_y", lambda a: a["grad_y"].contiguous(memory_format=torch.channels_last), ValueError,
     r"grad_y must be contiguous"),
    ("out", lambda a: a["out"].double(), TypeError, r"out must have the dtype of O"),
    ("out", lambda a: a["out"][:, :5], ValueError, r"out must have shape \[N, L, C\] = \[1, 6, 4\]"),
    ("out", lambda a: a["out"].transpose(1, 2).contiguous().transpose(1, 2), ValueError, r"out must be contiguous"),
    ("LSE", lambda a: a["LSE"].double(), TypeError, r"LSE must be Float for O of dtype Float"),
    ("LSE", lambda a: a["LSE"][:, :5], ValueError, r"LSE must have shape \[N, L\] = \[1, 6\]"),
    ("LSE", lambda a: a["LSE"][:, :1].expand(1, 6), ValueError, r"LSE must be contiguous"),
    ("grad_out", lambda a: a["grad_out"].half(), TypeError, r"grad_out must have the dtype of O"),
    ("grad_out", lambda a: a["grad_out"][:, :, :3], ValueError, r"grad_out must have shape \[N, L, C\] = \[1, 6, 4\]"),
    ("grad_out", lambda a: a["grad_out"].transpose(1, 2).contiguous().transpose(1, 2), ValueError,
     r"grad_out must be contiguous"),
    ("O", lambda a: a["O"][..., :3], ValueError, r"grad_y must have shape \[N, C, H, W\].*C = 3"),
    ("inv", lambda a: torch.where(a["inv"] == 0, 1, a["inv"]).int(), ValueError,
     r"scatter_back_backward: slot 1 appears twice"),
]


def _call_backward(a, redispatch=False):
    args = (a["grad_y"], a["grad_out"], a["O"], a["lse"], a["inv"], a["out"], a["LSE"], 1.0)
    if redispatch:
        return torch.ops.dlsn.scatter_back_backward.default.redispatch(CPU_KEYSET, *args)
    return torch.ops.dlsn.scatter_back_backward(*args)


@pytest.mark.parametrize("name,mutate,error,message", BACKWARD_BAD)
def test_scatter_back_backward_rejects(name, mutate, error, message):
    args = _backward_args()
    args[name] = mutate(args)
    with pytest.raises(error, match=message):
        _call_backward(args)


@pytest.mark.parametrize("name", ["grad_y", "grad_out", "out", "LSE"])
def test_scatter_back_backward_rejects_mixed_devices(name):
    args = _backward_args()
    args[name] = args[name].to("meta")
    with pytest.raises(ValueError, match=rf"scatter_back_backward: {name} must be on the device of O \(cpu\)"):
        _call_backward(args, redispatch=True)


GRAD_ROWS_BAD = [
    ("out", lambda a: a["out"][0], ValueError, r"attention_grad_rows: out must be 3-D \[N, L, C\]"),
    ("out", lambda a: a["out"].int(), TypeError, r"out must be float32, float16, bfloat16 or float64"),
    ("grad_y", lambda a: a["grad_y"].double(), TypeError, r"grad_y must have the dtype of out"),
    ("grad_y", lambda a: a["grad_y"][:, :, :1], ValueError, r"grad_y must have shape \[N, C, H, W\].*L = 6"),
    ("grad_y", lambda a: a["grad_y"].contiguous(memory_format=torch.channels_last), ValueError,
     r"attention_grad_rows: grad_y must be contiguous"),
    ("out", lambda a: a["out"].transpose(1, 2).contiguous().transpose(1, 2), ValueError,
     r"attention_grad_rows: out must be contiguous"),
]


@pytest.mark.parametrize("name,mutate,error,message", GRAD_ROWS_BAD)
def test_attention_grad_rows_rejects(name, mutate, error, message):
    args = _backward_args()
    args[name] = mutate(args)
    with pytest.raises(error, match=message):
        torch.ops.dlsn.attention_grad_rows(args["grad_y"], args["out"], 1.0)


def test_attention_grad_rows_rejects_mixed_devices():
    args = _backward_args()
    with pytest.raises(ValueError, match=r"attention_grad_rows: grad_y must be on the device of out \(cpu\), got meta"):
        torch.ops.dlsn.attention_grad_rows.default.redispatch(CPU_KEYSET, args["grad_y"].to("meta"), args["out"], 1.0)


def test_python_wrappers_reject_non_tensors_and_bad_scale():
    args = _forward_args()
    with pytest.raises(TypeError, match=r"scatter_back: inv must be a torch.Tensor, got list"):
        ops.scatter_back(args["O"], args["lse"], args["inv"].tolist(), args["residual"])
    with pytest.raises(TypeError, match=r"scatter_back: res_scale must be a Python float, got Tensor"):
        ops.scatter_back(args["O"], args["lse"], args["inv"], args["residual"], torch.tensor(1.0))
    with pytest.raises(TypeError, match=r"attention_grad_rows: out must be a torch.Tensor"):
        ops.attention_grad_rows(args["residual"], None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_specific_checks():
    args = {k: v.cuda() for k, v in _forward_args().items()}
    with pytest.raises(TypeError, match=r"on CUDA O must be float32, float16 or bfloat16"):
        torch.ops.dlsn.scatter_back(args["O"].double(), args["lse"].double(), args["inv"], args["residual"].double(), 1.0)
    O, lse, inv, residual = make_inputs(1, 17, 2, 3, 4, 4, torch.float32, "cuda")
    with pytest.raises(ValueError, match=r"at most 16 hash rounds, got h = 17"):
        torch.ops.dlsn.scatter_back(O, lse, inv, residual, 1.0)
    cuda_keyset = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
    cpu_args = _forward_args()
    with pytest.raises(ValueError, match=r"scatter_back: the CUDA implementation got tensors on cpu"):
        torch.ops.dlsn.scatter_back.default.redispatch(cuda_keyset, cpu_args["O"], cpu_args["lse"], cpu_args["inv"],
                                                       cpu_args["residual"], 1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_runs_on_current_stream_and_matches_cpu():
    O, lse, inv, residual = make_inputs(2, 3, 9, 9, 33, 16, torch.float32, "cpu", seed=13)
    expected = ops.scatter_back(O, lse, inv, residual, 0.5)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        got = ops.scatter_back(*(t.cuda() for t in (O, lse, inv, residual)), 0.5)
    stream.synchronize()
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.cpu(), e, atol=1e-5, rtol=1e-5)
