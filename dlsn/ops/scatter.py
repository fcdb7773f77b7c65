"""Scatter-back ops of the fused GLA pipeline (C++/CUDA extension ``dlsn._C``).

The attention core computes every hash round in sorted order; the scatter-back merges the ``h``
round results of each original position (contract §4, ``docs/internals.md``). For position ``pos``
of image ``n``, ``s_r = inv[n, r, pos]`` is its slot in round ``r`` and::

    w_r          = softmax_r(lse[n, r, s_r])
    out[n, pos]  = sum_r w_r * O[n, r, s_r]
    LSE[n, pos]  = logsumexp_r lse[n, r, s_r]
    y            = res_scale * out (as NCHW) + residual

Ops (schemas in ``csrc/scatter_back.cpp``; CPU in C++, CUDA in ``csrc/cuda``)::

    dlsn::scatter_back(Tensor O, Tensor lse, Tensor inv, Tensor residual, float res_scale)
        -> (Tensor y, Tensor out, Tensor LSE)
    dlsn::scatter_back_backward(Tensor grad_y, Tensor? grad_out, Tensor O, Tensor lse, Tensor inv,
        Tensor out, Tensor LSE, float res_scale) -> (Tensor grad_O, Tensor grad_lse)
    dlsn::attention_grad_rows(Tensor grad_y, Tensor out, float res_scale) -> (Tensor g, Tensor D)

Every tensor argument must be contiguous and on one device; violations raise ``ValueError``
(shape, layout, device, index range) or ``TypeError`` (dtype) naming the tensor and the expected
shape. On CPU ``inv[n, r]`` is checked to be a permutation of ``[0, L)``; on CUDA that check would
need a device sync and is skipped (an out-of-range entry yields NaN for its position, never an
out-of-bounds access). The CUDA kernels take at most 16 hash rounds and run on the current stream.

This module is the one place that registers the Python side of these ops: ``register_fake`` for
all three (so they trace under ``torch.compile``) and ``register_autograd`` for ``scatter_back``.
Importing it never fails when the extension is missing; the public functions below then raise a
``RuntimeError`` saying how to build it.
"""
import torch

from .._extension import extension_available, load_extension

__all__ = ["scatter_back", "scatter_back_backward", "attention_grad_rows"]

_registered = False


def _accumulation_dtype(element_dtype: torch.dtype) -> torch.dtype:
    """dtype of LSE, grad_lse and D: float64 for float64 elements, float32 otherwise."""
    return torch.float64 if element_dtype == torch.float64 else torch.float32


def _scatter_back_fake(O, lse, inv, residual, res_scale):
    torch._check(O.dim() == 4, lambda: f"scatter_back: O must be 4-D [N, h, L, C], got shape {tuple(O.shape)}")
    N, _, L, C = O.shape
    y = torch.empty_like(residual)
    out = O.new_empty((N, L, C))
    LSE = O.new_empty((N, L), dtype=_accumulation_dtype(O.dtype))
    return y, out, LSE


def _scatter_back_backward_fake(grad_y, grad_out, O, lse, inv, out, LSE, res_scale):
    torch._check(O.dim() == 4, lambda: f"scatter_back_backward: O must be 4-D [N, h, L, C], got shape {tuple(O.shape)}")
    return torch.empty_like(O), O.new_empty(O.shape[:3], dtype=_accumulation_dtype(O.dtype))


def _attention_grad_rows_fake(grad_y, out, res_scale):
    torch._check(out.dim() == 3, lambda: f"attention_grad_rows: out must be 3-D [N, L, C], got shape {tuple(out.shape)}")
    return torch.empty_like(out), out.new_empty(out.shape[:2], dtype=_accumulation_dtype(out.dtype))


def _setup_context(ctx, inputs, output):
    O, lse, inv, residual, res_scale = inputs
    _, out, LSE = output
    ctx.save_for_backward(O, lse, inv, out, LSE)
    ctx.res_scale = res_scale
    ctx.residual_shape = residual.shape
    # Unused outputs then give None instead of zero tensors: no zero grad_out is read, and the
    # LSE term below is skipped when LSE takes no part in the loss.
    ctx.set_materialize_grads(False)


def _lse_gradient_through_LSE(lse, inv, LSE, grad_LSE):
    """d loss / d lse through LSE = logsumexp_r lse_r: grad_lse[n, r, s_r] = w_r * grad_LSE[n, pos]."""
    index = inv.long()
    lse_by_position = lse.to(LSE.dtype).gather(2, index)
    contribution = torch.exp(lse_by_position - LSE[:, None]) * grad_LSE[:, None].to(LSE.dtype)
    return torch.zeros_like(contribution).scatter_(2, index, contribution)


def _backward(ctx, grad_y, grad_out, grad_LSE):
    O, lse, inv, out, LSE = ctx.saved_tensors
    need_O, need_lse, _, need_residual, _ = ctx.needs_input_grad
    grad_O = grad_lse = None
    if need_O or need_lse:
        grad_y_rows = grad_y if grad_y is not None else O.new_zeros(ctx.residual_shape)
        grad_O, grad_lse = torch.ops.dlsn.scatter_back_backward(
            grad_y_rows.contiguous(),
            None if grad_out is None else grad_out.contiguous(),
            O,
            lse,
            inv,
            out,
            LSE,
            ctx.res_scale,
        )
        if grad_LSE is not None:
            grad_lse = grad_lse + _lse_gradient_through_LSE(lse, inv, LSE, grad_LSE)
        grad_lse = grad_lse.to(lse.dtype)
    grad_residual = grad_y if need_residual else None
    return grad_O, grad_lse, None, grad_residual, None


def _register():
    global _registered
    if _registered:
        return
    torch.library.register_fake("dlsn::scatter_back", _scatter_back_fake)
    torch.library.register_fake("dlsn::scatter_back_backward", _scatter_back_backward_fake)
    torch.library.register_fake("dlsn::attention_grad_rows", _attention_grad_rows_fake)
    torch.library.register_autograd("dlsn::scatter_back", _backward, setup_context=_setup_context)
    _registered = True


def _ops():
    """Load the extension (clear RuntimeError when missing), register once, return torch.ops.dlsn."""
    load_extension()
    _register()
    return torch.ops.dlsn


def _check_tensors(op: str, **tensors):
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(value).__name__}")


def _check_scale(op: str, res_scale) -> float:
    if isinstance(res_scale, bool) or not isinstance(res_scale, (int, float)):
        raise TypeError(f"{op}: res_scale must be a Python float, got {type(res_scale).__name__}")
    return float(res_scale)


def scatter_back(O, lse, inv, residual, res_scale=1.0):
    """Merge the per-round attention results and add the residual (differentiable).

    Args:
        O: ``[N, h, L, C]`` round outputs in sorted order; float32, float16, bfloat16
            (float64 on CPU).
        lse: ``[N, h, L]`` per-round log-sum-exp in sorted order; float32 (float64 accepted when
            ``O`` is float64).
        inv: ``[N, h, L]`` int32, ``inv[n, r, pos]`` = slot of ``pos`` in round ``r``; each
            ``inv[n, r]`` a permutation of ``[0, L)``.
        residual: ``[N, C, H, W]``, dtype of ``O``, ``H * W == L``.
        res_scale: Python float.

    Returns:
        ``y`` ``[N, C, H, W]`` (dtype of ``O``) = ``res_scale * out + residual``;
        ``out`` ``[N, L, C]`` (dtype of ``O``) the merged attention output, rows by position;
        ``LSE`` ``[N, L]`` float32 (float64 for float64 ``O``) = ``logsumexp_r lse_r``.
        Accumulation is fp32 (fp64 for float64).

    Backward saves ``O, lse, inv, out, LSE`` and calls ``dlsn::scatter_back_backward``; the
    residual's gradient is ``grad_y``. A gradient reaching ``LSE`` adds ``w_r * grad_LSE`` to
    ``lse``'s gradient; ``inv`` gets none.
    """
    _check_tensors("scatter_back", O=O, lse=lse, inv=inv, residual=residual)
    return _ops().scatter_back(O, lse, inv, residual, _check_scale("scatter_back", res_scale))


def scatter_back_backward(grad_y, grad_out, O, lse, inv, out, LSE, res_scale=1.0):
    """Gradient of :func:`scatter_back` w.r.t. ``O`` and ``lse`` (``LSE`` treated as a constant).

    With ``G[pos] = res_scale * grad_y[:, :, pos] + grad_out[pos]`` (``grad_out`` may be None),
    ``w_r = exp(lse[r, s_r] - LSE[pos])``::

        grad_O[r, s_r]   = w_r * G[pos]
        grad_lse[r, s_r] = w_r * (G[pos] . (O[r, s_r] - out[pos]))

    Args: ``grad_y`` ``[N, C, H, W]`` and ``grad_out`` ``[N, L, C]`` in the dtype of ``O``; ``O``,
    ``lse``, ``inv`` as for :func:`scatter_back`; ``out`` and ``LSE`` as it returned them.
    Returns ``grad_O`` ``[N, h, L, C]`` (dtype of ``O``) and ``grad_lse`` ``[N, h, L]`` float32
    (float64 for float64 ``O``).
    """
    _check_tensors("scatter_back_backward", grad_y=grad_y, O=O, lse=lse, inv=inv, out=out, LSE=LSE)
    if grad_out is not None:
        _check_tensors("scatter_back_backward", grad_out=grad_out)
    return _ops().scatter_back_backward(
        grad_y, grad_out, O, lse, inv, out, LSE, _check_scale("scatter_back_backward", res_scale)
    )


def attention_grad_rows(grad_y, out, res_scale=1.0):
    """Per-position inputs of the fused attention backward (contract §4 identity).

    Args: ``grad_y`` ``[N, C, H, W]`` (gradient of GLA's output), ``out`` ``[N, L, C]`` (merged
    attention output from :func:`scatter_back`), same dtype, ``H * W == L``.

    Returns ``g`` ``[N, L, C]`` (dtype of ``out``) = ``res_scale * grad_y`` as rows, and ``D``
    ``[N, L]`` float32 (float64 for float64) = ``rowsum(g * out)`` computed from the rounded ``g``.
    With ``P = exp(s - LSE[perm t])`` each round's attention backward is a flash-attention backward
    with ``dO = g[perm t]`` and ``Delta = D[perm t]``.
    """
    _check_tensors("attention_grad_rows", grad_y=grad_y, out=out)
    return _ops().attention_grad_rows(grad_y, out, _check_scale("attention_grad_rows", res_scale))


# When the extension is importable, register now so that torch.ops.dlsn.* work under autograd and
# torch.compile even when called directly; when it is not, the public functions raise on use.
if extension_available():
    _register()
