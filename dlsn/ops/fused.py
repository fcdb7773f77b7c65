"""The one entrance to the fused GLA path: checked stage functions and the differentiable attention.

Everything after the embeddings runs here (docs/internals.md has the layouts)::

    gla_attention(q, v, learned, rotations, chunk_size, x, res_scale, precision) -> y [N, C, H, W]
        = hash -> sort -> dlsn::gla_attention_fwd (window attention -> scatter-back + residual)

Inputs are checked once, here, before any launch (TypeError for a wrong type or dtype, ValueError
for a wrong shape, value or device); non-contiguous inputs are copied, not rejected. The kernels
run on CUDA tensors, or on CPU tensors under the Triton interpreter (`TRITON_INTERPRET=1` set
before triton is imported). One code path serves training, inference and autocast: under
`torch.no_grad()` the custom op saves nothing for backward.

Stages, callable alone for tests and benchmarks (each checks its own arguments with the same
checks the entrance uses):

    triton_hash(q, rotations)                          -> codes [N, h, L] int32
    triton_sort(codes, n_buckets, chunk_size)          -> perm [N, h, Lp] int32, inv [N, h, L] int32
    triton_window_attention(q, v, learned, perm, chunk_size, precision)
        -> O [N, h, L, C] (v's dtype), round_max [N, h, L] float32, round_sum [N, h, L] float32
    dlsn.ops.scatter.scatter_back(O, round_max, round_sum, inv, x, res_scale)
        -> y, out [N, L, C], lse_max [N, L], lse_sum [N, L]
    sorted_attention(q, v, learned, perm, inv, x, chunk_size, res_scale, precision) -> y
        (the differentiable attention for given slots)

Custom ops (`torch.library.custom_op`; fake and autograd registered beside them)::

    dlsn::sblsh_hash(q, rotations) -> codes
    dlsn::bucket_sort(codes, int n_buckets, int chunk_size) -> (perm, inv)
    dlsn::gla_attention_fwd(q, v, learned, perm, inv, x, int chunk_size, float res_scale, str? precision)
        -> (y, out, lse_max, lse_sum)
    dlsn::gla_attention_bwd(grad_y, q, v, learned, perm, inv, out, lse_max, lse_sum, int chunk_size,
        float res_scale, str? precision) -> (dq, dv, dlearned)

Every launch happens inside one of them, so `torch.compile(fullgraph=True)` and `torch.export` see
four opaque ops with fake implementations and never trace into a launcher. They are `custom_op`s,
not `torch.library.triton_op`s: fake-tensor tracing of a `triton_op` touches data pointers and
fails under the CPU interpreter, and the launchers pick their configs by timing candidates on the
first call, which tracing cannot follow. What Inductor sees on a GPU is therefore four fallback
kernels it calls as they are (no fusion into them, no Triton source in an AOTInductor package).

What backward saves: q, v, learned (the embeddings), perm, inv, out [N, L, C], lse_max and lse_sum
[N, L] float32: O(N L (c + C + l) + N h L), nothing with a 3l or l x 3l factor; the scores are
recomputed. `out`, `lse_max` and `lse_sum` are outputs of the forward op only so that they can be
saved; they are non-differentiable and the public functions return `y` alone. The backward is one
softmax over all rounds: P_tj = exp(s_tj - lse_max[perm t]) / lse_sum[perm t] (docs/gla.md §5).

Mixed precision: autocast does not cast custom-op inputs, so q, v and learned arrive in the dtype
their producers (conv, linear) gave them, which under autocast is the autocast dtype; the kernels
accumulate in float32. When the residual x has another dtype (float32 x under autocast), the
attention runs with a zero residual in v's dtype and x is added outside the op: `res_scale * out`
rounded to v's dtype, plus x, promoted - the reference's rounding - and x's gradient keeps x's dtype.

`precision` ("ieee", "tf32", "tf32x3") is how float32 dots run in the window-attention kernels
(16-bit inputs always use 16-bit tensor-core dots; the hash projection is always exact float32).
None follows `torch.get_float32_matmul_precision()`, read when the op runs (so compiled code follows
the setting of the call, as eager code does, and Dynamo never sees the non-tensor call).
"""
import contextlib
from typing import Optional

import torch

from ..kernels.bucket_sort import bucket_sort_fwd
from ..kernels.constants import CHUNK_SIZES
from ..kernels.hash import sblsh_hash_fwd
from ..kernels.window_attention import window_attn_fwd
from ..kernels.window_attention_bwd import window_attn_bwd
from .backends import resolve_precision, triton_device_problem
from .checks import check_fp32_precision, positive_int
from .scatter import attention_grad_rows, scatter_back

__all__ = ["gla_attention", "sorted_attention", "triton_hash", "triton_sort", "triton_window_attention"]

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# Checks ------------------------------------------------------------------------------------------

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
    problem = triton_device_problem(first.device)
    if problem:
        raise ValueError(f"{first_name} is on {first.device}: {problem}")
    return first.device


def _check_shape(name, tensor, expected, meaning):
    if tuple(tensor.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {meaning} = {list(expected)}, got {list(tensor.shape)}")


def _check_index_range(name, index, upper):
    """Indices outside [0, upper) would make the kernels read or write out of bounds (one host sync)."""
    low, high = torch.aminmax(index)
    if low.item() < 0 or high.item() >= upper:
        raise ValueError(f"{name} must lie in [0, {upper}), got values in [{low.item()}, {high.item()}]")


def _check_rotations(rotations, q):
    _check_tensor("rotations", rotations, 3, FLOAT_DTYPES + (torch.float64,))
    _check_device([("q", q), ("rotations", rotations)])
    if rotations.shape[1] != q.shape[2]:
        raise ValueError(
            f"rotations [h, c, b] must have c = q.shape[2] = {q.shape[2]}, got shape {list(rotations.shape)}"
        )


def _check_embeddings(q, v, learned, chunk_size):
    """q [N, L, c], v [N, L, C], learned [N, L, chunk_size] of one float dtype on one device."""
    if chunk_size not in CHUNK_SIZES:
        raise ValueError(f"chunk_size must be a power of two in {CHUNK_SIZES}, got {chunk_size!r}")
    _check_tensor("q", q, 3, FLOAT_DTYPES)
    _check_tensor("v", v, 3, FLOAT_DTYPES)
    _check_tensor("learned", learned, 3, FLOAT_DTYPES)
    device = _check_device([("q", q), ("v", v), ("learned", learned)])
    if v.dtype != q.dtype or learned.dtype != q.dtype:
        raise TypeError(f"q, v and learned must share one dtype, got q {q.dtype}, v {v.dtype}, "
                        f"learned {learned.dtype}")
    n_batch, length, _ = q.shape
    _check_shape("v", v, (n_batch, length, v.shape[2]), "[N, L, C] (N, L of q)")
    _check_shape("learned", learned, (n_batch, length, chunk_size), "[N, L, chunk_size]")
    return device


def _check_perm(perm, q, chunk_size):
    _check_tensor("perm", perm, 3, (torch.int32,))
    _check_device([("q", q), ("perm", perm)])
    length = q.shape[1]
    _check_shape("perm", perm, (q.shape[0], perm.shape[1], length + (-length) % chunk_size),
                 "[N, h, L + (-L) mod chunk_size]")


def _check_attention_inputs(q, v, learned, x, chunk_size, res_scale, precision):
    """Everything the attention op takes besides the slots."""
    _check_embeddings(q, v, learned, chunk_size)
    check_fp32_precision("precision", precision, allow_none=True)
    _check_tensor("x", x, 4, FLOAT_DTYPES)
    _check_device([("q", q), ("x", x)])
    n_batch, length, channels = v.shape
    if x.shape[0] != n_batch or x.shape[1] != channels or x.shape[2] * x.shape[3] != length:
        raise ValueError(f"x must have shape [N, C, H, W] with N = {n_batch}, C = {channels}, "
                         f"H*W = {length} (from v [N, L, C]), got {list(x.shape)}")
    if isinstance(res_scale, bool) or not isinstance(res_scale, (int, float)):
        raise TypeError(f"res_scale must be a Python float, got {type(res_scale).__name__}")


def _launch_device(device):
    """Triton launches on the current CUDA device: make it the tensors' device."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


# Stages ------------------------------------------------------------------------------------------

# The hash and the sort are custom ops, like the attention, so that torch.compile and torch.export
# see opaque ops with fake implementations instead of tracing into the Python launchers.

@torch.library.custom_op("dlsn::sblsh_hash", mutates_args=())
def _sblsh_hash(q: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    with _launch_device(q.device):
        return sblsh_hash_fwd(q, rotations)


@_sblsh_hash.register_fake
def _(q, rotations):
    return q.new_empty((q.shape[0], rotations.shape[0], q.shape[1]), dtype=torch.int32)


@torch.library.custom_op("dlsn::bucket_sort", mutates_args=())
def _bucket_sort(codes: torch.Tensor, n_buckets: int, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    with _launch_device(codes.device):
        return bucket_sort_fwd(codes, n_buckets, chunk_size)


@_bucket_sort.register_fake
def _(codes, n_buckets, chunk_size):
    n_batch, n_hashes, length = codes.shape
    perm = codes.new_empty((n_batch, n_hashes, length + (-length) % chunk_size), dtype=torch.int32)
    return perm, codes.new_empty((n_batch, n_hashes, length), dtype=torch.int32)


def triton_hash(q, rotations):
    """SB-LSH codes, all rounds in one launch (docs/gla.md §2).

    Args:
        q: [N, L, c] float32/bfloat16/float16 queries.
        rotations: [h, c, b] floating point; projected in float32 (other float dtypes are converted).
    Returns:
        codes [N, h, L] int32, `argmax_k (q[n, i] . R[r, :, k])` in float32, ties -> lowest k.
    """
    _check_tensor("q", q, 3, FLOAT_DTYPES)
    _check_rotations(rotations, q)
    return _sblsh_hash(q.contiguous(), rotations.to(torch.float32).contiguous())


def triton_sort(codes, n_buckets, chunk_size, check_range=True):
    """Stable counting sort per (batch, round) with the padded slots (docs/gla.md §3).

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
    positive_int("n_buckets", n_buckets)
    positive_int("chunk_size", chunk_size)
    _check_device([("codes", codes)])
    if check_range:
        _check_index_range("codes", codes, n_buckets)
    return _bucket_sort(codes.contiguous(), n_buckets, chunk_size)


def triton_window_attention(q, v, learned, perm, chunk_size, precision="ieee", check_range=True):
    """Blocked window attention of every round in sorted order (docs/gla.md §4).

    Args:
        q: [N, L, c], v: [N, L, C], learned: [N, L, chunk_size], one dtype of float32/bfloat16/float16.
        perm: [N, h, Lp] int32 slot -> position (from `triton_sort`).
        chunk_size: power of two from 16 to 256.
        precision: float32 dots, "ieee", "tf32" or "tf32x3".
        check_range: verify perm lies in [0, L) (one host sync); `triton_sort` output always does.
    Returns:
        O [N, h, L, C] in v's dtype, round_max and round_sum [N, h, L] float32, for the real slots.
    """
    device = _check_embeddings(q, v, learned, chunk_size)
    check_fp32_precision("precision", precision)
    _check_perm(perm, q, chunk_size)
    if check_range:
        _check_index_range("perm", perm, q.shape[1])
    with _launch_device(device):
        return window_attn_fwd(q.contiguous(), v.contiguous(), learned.contiguous(), perm.contiguous(), chunk_size,
                               precision=precision)


# The differentiable attention ---------------------------------------------------------------------

@torch.library.custom_op("dlsn::gla_attention_fwd", mutates_args=())
def _gla_attention_fwd(q: torch.Tensor, v: torch.Tensor, learned: torch.Tensor, perm: torch.Tensor,
                       inv: torch.Tensor, x: torch.Tensor, chunk_size: int, res_scale: float, precision: Optional[str]
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    with _launch_device(q.device):
        O, round_max, round_sum = window_attn_fwd(q, v, learned, perm, chunk_size,
                                                  precision=resolve_precision(precision))
    return scatter_back(O, round_max, round_sum, inv, x, res_scale)


@_gla_attention_fwd.register_fake
def _(q, v, learned, perm, inv, x, chunk_size, res_scale, precision):
    n_batch, length, channels = v.shape
    stats = v.new_empty((n_batch, length), dtype=torch.float32)
    return torch.empty_like(x), v.new_empty((n_batch, length, channels)), stats, torch.empty_like(stats)


@torch.library.custom_op("dlsn::gla_attention_bwd", mutates_args=())
def _gla_attention_bwd(grad_y: torch.Tensor, q: torch.Tensor, v: torch.Tensor, learned: torch.Tensor,
                       perm: torch.Tensor, inv: torch.Tensor, out: torch.Tensor, lse_max: torch.Tensor,
                       lse_sum: torch.Tensor, chunk_size: int, res_scale: float, precision: Optional[str]
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g, D = attention_grad_rows(grad_y, out, res_scale)
    with _launch_device(q.device):
        return window_attn_bwd(q, v, learned, perm, inv, g, D, lse_max, lse_sum, chunk_size,
                               precision=resolve_precision(precision))


@_gla_attention_bwd.register_fake
def _(grad_y, q, v, learned, perm, inv, out, lse_max, lse_sum, chunk_size, res_scale, precision):
    return torch.empty_like(q), torch.empty_like(v), torch.empty_like(learned)


def _setup_context(ctx, inputs, output):
    q, v, learned, perm, inv, _, chunk_size, res_scale, precision = inputs
    _, out, lse_max, lse_sum = output
    ctx.save_for_backward(q, v, learned, perm, inv, out, lse_max, lse_sum)
    ctx.chunk_size, ctx.res_scale, ctx.precision = chunk_size, res_scale, precision
    ctx.mark_non_differentiable(out, lse_max, lse_sum)


def _backward(ctx, grad_y, grad_out, grad_lse_max, grad_lse_sum):
    q, v, learned, perm, inv, out, lse_max, lse_sum = ctx.saved_tensors
    need_q, need_v, need_learned, _, _, need_x = ctx.needs_input_grad[:6]
    dq = dv = dlearned = None
    if need_q or need_v or need_learned:
        dq, dv, dlearned = _gla_attention_bwd(grad_y.contiguous(), q, v, learned, perm, inv, out, lse_max, lse_sum,
                                              ctx.chunk_size, ctx.res_scale, ctx.precision)
    return dq, dv, dlearned, None, None, grad_y if need_x else None, None, None, None


_gla_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


def _attend(q, v, learned, perm, inv, x, chunk_size, res_scale, precision):
    """The checked inputs through the custom op; a residual of another dtype is added outside."""
    q, v, learned, perm, inv = (t.contiguous() for t in (q, v, learned, perm, inv))
    args = (int(chunk_size), float(res_scale), precision)
    if x.dtype == v.dtype:
        return _gla_attention_fwd(q, v, learned, perm, inv, x.contiguous(), *args)[0]
    zero_residual = torch.zeros(x.shape, device=x.device, dtype=v.dtype)
    return _gla_attention_fwd(q, v, learned, perm, inv, zero_residual, *args)[0] + x


def sorted_attention(q, v, learned, perm, inv, x, chunk_size, res_scale, precision="ieee"):
    """`res_scale * out + x` (NCHW) for the window attention of every round, merged over rounds,
    with given slots (differentiable w.r.t. q, v, learned and x; slots are constants).

    Args:
        q [N, L, c], v [N, L, C], learned [N, L, chunk_size]: one dtype of float32/bfloat16/float16.
        perm [N, h, Lp] int32 and inv [N, h, L] int32: from `triton_sort` (or the reference's, as int32).
        x [N, C, H, W], H * W = L: residual, any float dtype (see the module note on mixed precision).
        chunk_size: power of two from 16 to 256. res_scale: float. precision: float32 dot mode.
    Returns:
        y [N, C, H, W]: v's dtype when x has it, else the promoted dtype. Two backward passes give
        bitwise-equal gradients.
    """
    _check_attention_inputs(q, v, learned, x, chunk_size, res_scale, precision)
    _check_perm(perm, q, chunk_size)
    _check_tensor("inv", inv, 3, (torch.int32,))
    _check_device([("q", q), ("inv", inv)])
    _check_shape("inv", inv, (q.shape[0], perm.shape[1], q.shape[1]), "[N, h, L]")
    return _attend(q, v, learned, perm, inv, x, chunk_size, res_scale, precision)


def gla_attention(q, v, learned, rotations, chunk_size, x, res_scale, precision="ieee", hash_q=None):
    """GLA after the embeddings on the fused kernels: hash, sort, attend, scatter back, residual.

    Args:
        q [N, L, c], v [N, L, C], learned [N, L, chunk_size]: one dtype of float32/bfloat16/float16
            (`GLA.embed`); differentiable.
        rotations [h, c, b]: floating point, projected in float32.
        chunk_size: power of two from 16 to 256.
        x [N, C, H, W], H * W = L: the residual, any float dtype; differentiable.
        res_scale: float.
        precision: "ieee", "tf32" or "tf32x3": how float32 dots run in the attention kernels; None:
            from `torch.get_float32_matmul_precision()` when the op runs (`resolve_precision`).
        hash_q: [N, L, c] queries the positions are hashed by (default: q; `GLA(similarity="learned")`
            hashes by the real queries and attends with zero ones).
    Returns:
        y [N, C, H, W] (v's dtype when x has it, else the promoted dtype); equals
        `dlsn.ops.reference.gla_core` with the same rotations. Hashing runs on detached queries: the
        codes are constants of the graph.
    """
    _check_attention_inputs(q, v, learned, x, chunk_size, res_scale, precision)
    if hash_q is None:
        hash_q = q
    else:
        _check_tensor("hash_q", hash_q, 3, FLOAT_DTYPES)
        _check_device([("q", q), ("hash_q", hash_q)])
        _check_shape("hash_q", hash_q, q.shape, "[N, L, c] of q")
    _check_rotations(rotations, hash_q)
    codes = _sblsh_hash(hash_q.detach().contiguous(), rotations.to(torch.float32).contiguous())
    perm, inv = _bucket_sort(codes, rotations.shape[2], chunk_size)
    return _attend(q, v, learned, perm, inv, x, chunk_size, res_scale, precision)
