"""GLA forward on fused Triton kernels: checked stage functions and the whole attention core.

Stages (docs/internals.md):
    triton_hash(q, rotations)                         -> codes [N, h, L] int32
    triton_sort(codes, n_buckets, chunk_size)         -> perm [N, h, Lp] int32, inv [N, h, L] int32
    triton_window_attention(q, v, F, perm, chunk_size) -> O [N, h, L, C] (v's dtype), lse [N, h, L] fp32
    gla_core_triton(q, v, F, rotations, chunk_size, x, res_scale) -> y [N, C, H, W] (v's dtype)

Every stage validates its inputs before any launch (TypeError for a wrong type or dtype, ValueError
for a wrong shape, value or device) and makes non-contiguous inputs contiguous (a copy) instead of
rejecting them. The kernels run on CUDA tensors, or on CPU tensors under the Triton interpreter
(`TRITON_INTERPRET=1` set before triton is imported). The round combine uses the extension's
`scatter_back` when it is built, else the reference combine; both compute the same function.

This is the forward pass only: `gla_core_triton` refuses inputs that require grad while grad mode
is on, rather than returning an output that silently has no gradient.
"""
import contextlib
import os

import torch

from .. import reference
from .._extension import extension_available
from ..kernels.bucket_sort import bucket_sort_fwd
from ..kernels.hash import sblsh_hash_fwd
from ..kernels.window_attention import window_attn_fwd
from .scatter import scatter_back

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
CHUNK_SIZES = (16, 32, 64, 128, 256)


def _check_tensor(name, tensor, ndim, dtypes):
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {list(tensor.shape)}")
    if tensor.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {tensor.dtype}")
    if tensor.numel() == 0:
        raise ValueError(f"{name} must be non-empty, got shape {list(tensor.shape)}")


def _check_device(named_tensors):
    """All tensors on one device that the kernels can run on; returns that device."""
    (first_name, first), *rest = named_tensors
    for name, tensor in rest:
        if tensor.device != first.device:
            raise ValueError(f"{name} is on {tensor.device} but {first_name} is on {first.device}")
    if first.device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(
                f"{first_name} is on the CPU; the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1, "
                "set before triton is imported, to run them on the CPU interpreter)"
            )
    elif first.device.type != "cuda":
        raise ValueError(f"{first_name} is on {first.device}; the Triton kernels need CUDA tensors")
    return first.device


def _check_shape(name, tensor, expected, meaning):
    if tuple(tensor.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {meaning} = {list(expected)}, got {list(tensor.shape)}")


def _check_positive_int(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_index_range(name, index, upper):
    """Indices outside [0, upper) would make the kernels read or write out of bounds (one host sync)."""
    low, high = torch.aminmax(index)
    if low.item() < 0 or high.item() >= upper:
        raise ValueError(f"{name} must lie in [0, {upper}), got values in [{low.item()}, {high.item()}]")


def _launch_device(device):
    """Triton launches on the current CUDA device: make it the tensors' device."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def triton_hash(q, rotations):
    """SB-LSH codes, all rounds in one launch (contract section 2).

    Args:
        q: [N, L, c] float32/bfloat16/float16 queries.
        rotations: [h, c, b] floating point; projected in float32 (other float dtypes are converted).
    Returns:
        codes [N, h, L] int32, `argmax_k (q[n, i] . R[r, :, k])` in float32, ties -> lowest k.
    """
    _check_tensor("q", q, 3, FLOAT_DTYPES)
    _check_tensor("rotations", rotations, 3, FLOAT_DTYPES + (torch.float64,))
    device = _check_device([("q", q), ("rotations", rotations)])
    if rotations.shape[1] != q.shape[2]:
        raise ValueError(
            f"rotations [h, c, b] must have c = q.shape[2] = {q.shape[2]}, got shape {list(rotations.shape)}"
        )
    with _launch_device(device):
        return sblsh_hash_fwd(q.contiguous(), rotations.to(torch.float32).contiguous())


def triton_sort(codes, n_buckets, chunk_size, check_range=True):
    """Stable counting sort per (batch, round) with the padded slots (contract section 3).

    Args:
        codes: [N, h, L] int32/int64 bucket codes in [0, n_buckets).
        n_buckets: number of buckets `b`.
        chunk_size: chunk size `l`; `Lp = L + (-L) mod l`.
        check_range: verify the codes lie in [0, n_buckets) (one host sync); codes straight from
            `triton_hash` with `b = n_buckets` always do.
    Returns:
        perm [N, h, Lp] int32 (position at each slot, padded slot `t` repeats slot `(t - p) mod L`)
        and inv [N, h, L] int32 (slot of each position).
    """
    _check_tensor("codes", codes, 3, (torch.int32, torch.int64))
    _check_positive_int("n_buckets", n_buckets)
    _check_positive_int("chunk_size", chunk_size)
    device = _check_device([("codes", codes)])
    if check_range:
        _check_index_range("codes", codes, n_buckets)
    with _launch_device(device):
        return bucket_sort_fwd(codes.contiguous(), n_buckets, chunk_size)


def _check_embeddings(q, v, F, chunk_size):
    """q [N, L, c], v [N, L, C], F [N, L, chunk_size] of one float dtype on one device; returns the device."""
    if chunk_size not in CHUNK_SIZES:
        raise ValueError(f"chunk_size must be a power of two in {CHUNK_SIZES}, got {chunk_size!r}")
    _check_tensor("q", q, 3, FLOAT_DTYPES)
    _check_tensor("v", v, 3, FLOAT_DTYPES)
    _check_tensor("F", F, 3, FLOAT_DTYPES)
    device = _check_device([("q", q), ("v", v), ("F", F)])
    if v.dtype != q.dtype or F.dtype != q.dtype:
        raise TypeError(f"q, v and F must share one dtype, got q {q.dtype}, v {v.dtype}, F {F.dtype}")
    n_batch, length, _ = q.shape
    _check_shape("v", v, (n_batch, length, v.shape[2]), "[N, L, C] (N, L of q)")
    _check_shape("F", F, (n_batch, length, chunk_size), "[N, L, chunk_size]")
    return device


def triton_window_attention(q, v, F, perm, chunk_size, check_range=True):
    """Blocked window attention of every round in sorted order (contract section 4).

    Args:
        q: [N, L, c], v: [N, L, C], F: [N, L, chunk_size], one dtype of float32/bfloat16/float16.
        perm: [N, h, Lp] int32 slot -> position (from `triton_sort`).
        chunk_size: power of two from 16 to 256.
        check_range: verify perm lies in [0, L) (one host sync); `triton_sort` output always does.
    Returns:
        O [N, h, L, C] in v's dtype and lse [N, h, L] float32, for the real slots t < L.
    """
    device = _check_embeddings(q, v, F, chunk_size)
    _check_tensor("perm", perm, 3, (torch.int32,))
    _check_device([("q", q), ("perm", perm)])
    length = q.shape[1]
    _check_shape("perm", perm, (q.shape[0], perm.shape[1], length + (-length) % chunk_size),
                 "[N, h, L + (-L) mod chunk_size]")
    if check_range:
        _check_index_range("perm", perm, q.shape[1])
    with _launch_device(device):
        O, round_max, round_sum = window_attn_fwd(q.contiguous(), v.contiguous(), F.contiguous(), perm.contiguous(),
                                                  chunk_size)
    return O, round_max + round_sum.log()


def _combine_rounds(O, lse, inv, x, res_scale):
    """y = res_scale * (rounds merged with softmax_r(lse)) as NCHW + x, in O's dtype.

    The extension's scatter_back when it is built, else the reference merge (float32 weights) rounded
    to O's dtype: the same function either way.
    """
    if extension_available():
        y, _, _ = scatter_back(O, lse, inv, x, float(res_scale))
        return y
    out, _ = reference.combine_rounds(O, lse, inv.long())
    n_batch, channels, height, width = x.shape
    out = out.to(O.dtype).transpose(1, 2).reshape(n_batch, channels, height, width)
    return out * res_scale + x


def gla_core_triton(q, v, F, rotations, chunk_size, x, res_scale):
    """GLA after the embeddings on the fused kernels: hash, sort, attend, combine, residual.

    Args:
        q: [N, L, c], v: [N, L, C], F: [N, L, chunk_size]: one dtype of float32/bfloat16/float16.
        rotations: [h, c, b] floating point (projected in float32).
        chunk_size: power of two from 16 to 256.
        x: [N, C, H, W] residual with H * W = L, dtype of v.
        res_scale: scale of the attention output.
    Returns:
        y [N, C, H, W] in v's dtype; equals `dlsn.reference.gla_core` with the same rotations.
    """
    device = _check_embeddings(q, v, F, chunk_size)
    _check_tensor("x", x, 4, FLOAT_DTYPES)
    _check_device([("q", q), ("x", x)])
    if x.dtype != v.dtype:
        raise TypeError(f"x must have the dtype of v ({v.dtype}), got {x.dtype}")
    n_batch, length, _ = v.shape
    if x.shape[0] != n_batch or x.shape[1] != v.shape[2] or x.shape[2] * x.shape[3] != length:
        raise ValueError(
            f"x must have shape [N, C, H, W] with N = {n_batch}, C = {v.shape[2]}, H*W = {length} "
            f"(from v [N, L, C]), got {list(x.shape)}"
        )
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, v, F, x)):
        raise RuntimeError(
            "gla_core_triton is the forward pass only and its output would carry no gradient; "
            "call it under torch.no_grad() (or use the reference backend for training)"
        )
    codes = triton_hash(q, rotations)
    with _launch_device(device):
        perm, inv = bucket_sort_fwd(codes, rotations.shape[2], chunk_size)
        O, round_max, round_sum = window_attn_fwd(q.contiguous(), v.contiguous(), F.contiguous(), perm, chunk_size)
        lse = round_max + round_sum.log()
    return _combine_rounds(O, lse, inv, x.contiguous(), res_scale)
