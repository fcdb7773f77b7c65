"""Differentiable fused GLA attention: Triton window attention + extension scatter-back, with the
fused backward of contract section 4 (one softmax over all rounds).

Ops (torch.library custom ops, autograd by `register_autograd`)::

    dlsn::gla_attention_fwd(Tensor q, Tensor v, Tensor F, Tensor perm, Tensor inv, Tensor x,
        int chunk_size, float res_scale) -> (Tensor y, Tensor out, Tensor LSE)
    dlsn::gla_attention_bwd(Tensor grad_y, Tensor q, Tensor v, Tensor F, Tensor perm, Tensor inv,
        Tensor out, Tensor LSE, int chunk_size, float res_scale) -> (Tensor dq, Tensor dv, Tensor dF)

Public functions:
    gla_attention(q, v, F, perm, inv, x, chunk_size, res_scale) -> y [N, C, H, W]
    gla_core_triton_grad(q, v, F, rotations, chunk_size, x, res_scale) -> y (hash + sort + the above)

What backward saves: q, v, F (the embeddings), perm, inv, out [N, L, C], LSE [N, L] float32 —
O(N L (c + C + l) + N h L) — nothing with a 3l or l x 3l factor; scores are recomputed.
`out` and `LSE` are outputs of the forward op only so that they can be saved; they are marked
non-differentiable and `gla_attention` returns `y` alone.

Mixed precision: autocast does not cast custom-op inputs, so q, v, F arrive in the dtype their
producers (conv, linear) gave them, which under autocast is the autocast dtype; the kernels
accumulate in float32 and LSE/D are float32. When the residual x has another dtype (float32 x under
autocast), the attention runs with a zero residual in v's dtype and x is added outside the op in
PyTorch: `res_scale * out` rounded to v's dtype, plus x, promoted — the same rounding as the
reference, and x's gradient stays in x's dtype.
"""
import torch

from ..kernels.window_attention import window_attn_fwd
from ..kernels.window_attention_bwd import window_attn_bwd
from .fused import (FLOAT_DTYPES, _check_device, _check_embeddings, _check_shape, _check_tensor,
                    _launch_device, triton_hash, triton_sort)
from .scatter import attention_grad_rows, scatter_back

__all__ = ["gla_attention", "gla_core_triton_grad"]


@torch.library.custom_op("dlsn::gla_attention_fwd", mutates_args=())
def _gla_attention_fwd(q: torch.Tensor, v: torch.Tensor, F: torch.Tensor, perm: torch.Tensor, inv: torch.Tensor,
                       x: torch.Tensor, chunk_size: int, res_scale: float
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    with _launch_device(q.device):
        O, round_max, round_sum = window_attn_fwd(q, v, F, perm, chunk_size)
        lse = round_max + round_sum.log()
    return scatter_back(O, lse, inv, x, res_scale)


@_gla_attention_fwd.register_fake
def _(q, v, F, perm, inv, x, chunk_size, res_scale):
    n_batch, length, _ = v.shape
    return (torch.empty_like(x), v.new_empty((n_batch, length, v.shape[2])),
            v.new_empty((n_batch, length), dtype=torch.float32))


@torch.library.custom_op("dlsn::gla_attention_bwd", mutates_args=())
def _gla_attention_bwd(grad_y: torch.Tensor, q: torch.Tensor, v: torch.Tensor, F: torch.Tensor, perm: torch.Tensor,
                       inv: torch.Tensor, out: torch.Tensor, LSE: torch.Tensor, chunk_size: int, res_scale: float
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g, D = attention_grad_rows(grad_y, out, res_scale)
    with _launch_device(q.device):
        return window_attn_bwd(q, v, F, perm, inv, g, D, LSE, chunk_size)


@_gla_attention_bwd.register_fake
def _(grad_y, q, v, F, perm, inv, out, LSE, chunk_size, res_scale):
    return torch.empty_like(q), torch.empty_like(v), torch.empty_like(F)


def _setup_context(ctx, inputs, output):
    q, v, F, perm, inv, _, chunk_size, res_scale = inputs
    _, out, LSE = output
    ctx.save_for_backward(q, v, F, perm, inv, out, LSE)
    ctx.chunk_size, ctx.res_scale = chunk_size, res_scale
    ctx.mark_non_differentiable(out, LSE)


def _backward(ctx, grad_y, grad_out, grad_LSE):
    q, v, F, perm, inv, out, LSE = ctx.saved_tensors
    need_q, need_v, need_F, _, _, need_x, _, _ = ctx.needs_input_grad
    dq = dv = dF = None
    if need_q or need_v or need_F:
        dq, dv, dF = _gla_attention_bwd(grad_y.contiguous(), q, v, F, perm, inv, out, LSE,
                                        ctx.chunk_size, ctx.res_scale)
    return dq, dv, dF, None, None, grad_y if need_x else None, None, None


_gla_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


def gla_attention(q, v, F, perm, inv, x, chunk_size, res_scale):
    """`res_scale * out + x` (NCHW) for the window attention of every round merged over rounds.

    Args:
        q [N, L, c], v [N, L, C], F [N, L, chunk_size]: one dtype of float32/bfloat16/float16.
        perm [N, h, Lp] int32 and inv [N, h, L] int32: from `dlsn.ops.fused.triton_sort` (constants).
        x [N, C, H, W], H * W = L: residual, any float dtype (see the module note on mixed precision).
        chunk_size: power of two from 16 to 256. res_scale: float.
    Returns:
        y [N, C, H, W]: v's dtype when x has it, else the promoted dtype. Differentiable w.r.t.
        q, v, F and x; two backward passes give bitwise-equal gradients.
    """
    _check_embeddings(q, v, F, chunk_size)
    n_batch, length, _ = q.shape
    padded_length = length + (-length) % chunk_size
    _check_tensor("perm", perm, 3, (torch.int32,))
    _check_tensor("inv", inv, 3, (torch.int32,))
    _check_tensor("x", x, 4, FLOAT_DTYPES)
    _check_device([("q", q), ("perm", perm), ("inv", inv), ("x", x)])
    _check_shape("perm", perm, (n_batch, perm.shape[1], padded_length), "[N, h, L + (-L) mod chunk_size]")
    _check_shape("inv", inv, (n_batch, perm.shape[1], length), "[N, h, L]")
    if x.shape[0] != n_batch or x.shape[1] != v.shape[2] or x.shape[2] * x.shape[3] != length:
        raise ValueError(f"x must have shape [N, C, H, W] with N = {n_batch}, C = {v.shape[2]}, "
                         f"H*W = {length} (from v [N, L, C]), got {list(x.shape)}")
    q, v, F, perm, inv = (t.contiguous() for t in (q, v, F, perm, inv))
    if x.dtype == v.dtype:
        y, _, _ = _gla_attention_fwd(q, v, F, perm, inv, x.contiguous(), int(chunk_size), float(res_scale))
        return y
    zero_residual = torch.zeros(x.shape, device=x.device, dtype=v.dtype)
    attention, _, _ = _gla_attention_fwd(q, v, F, perm, inv, zero_residual, int(chunk_size), float(res_scale))
    return attention + x


def gla_core_triton_grad(q, v, F, rotations, chunk_size, x, res_scale):
    """Differentiable counterpart of `dlsn.ops.fused.gla_core_triton` (same arguments, same y):
    hash and sort on detached q (codes are constants), then `gla_attention`."""
    codes = triton_hash(q.detach(), rotations)
    perm, inv = triton_sort(codes, rotations.shape[2], chunk_size, check_range=False)
    return gla_attention(q, v, F, perm, inv, x, chunk_size, res_scale)
