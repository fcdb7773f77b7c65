"""Python side of the C++/CUDA extension ops (``dlsn._C``): fake implementations and checked calls.

The window attention computes every hash round in sorted order; the scatter-back unsorts the
``h`` round results of each original position and merges them (docs/internals.md, stage 4). For
position ``pos`` of image ``n``, ``s_r = inv[n, r, pos]`` is its slot in round ``r`` and, with the
round statistics ``m_r = round_max[n, r, s_r]`` and ``z_r = round_sum[n, r, s_r]``::

    lse_max[n, pos] = max_r m_r
    lse_sum[n, pos] = sum_r z_r exp(m_r - lse_max)
    w_r             = z_r exp(m_r - lse_max) / lse_sum       (sum to 1 at any score magnitude)
    out[n, pos]     = sum_r w_r O[n, r, s_r]
    y               = res_scale * out (as NCHW) + residual

Ops (schemas in ``csrc/scatter_back.cpp``; CPU in C++, CUDA in ``csrc/cuda``)::

    dlsn::scatter_back(Tensor O, Tensor round_max, Tensor round_sum, Tensor inv, Tensor residual,
        float res_scale) -> (Tensor y, Tensor out, Tensor lse_max, Tensor lse_sum)
    dlsn::attention_grad_rows(Tensor grad_y, Tensor out, float res_scale) -> (Tensor g, Tensor D)

Neither op has an autograd formula: the differentiable fused attention (``dlsn.ops.fused``) calls
them inside its own forward and backward. Every tensor argument must be contiguous and on one
device; violations raise ``ValueError`` (shape, layout, device, index range) or ``TypeError``
(dtype) naming the tensor and the expected shape. On CPU ``inv[n, r]`` is checked to be a
permutation of ``[0, L)``; on CUDA that check would need a device sync and is skipped (an
out-of-range entry yields NaN for its position, never an out-of-bounds access). The CUDA kernels
take at most 16 hash rounds and run on the current stream.

Importing this module never fails when the extension is missing; the functions below then raise a
``RuntimeError`` saying how to build it.
"""
import torch

from .extension import extension_available, load_extension

__all__ = ["scatter_back", "attention_grad_rows"]

_registered = False


def _stats_dtype(element_dtype: torch.dtype) -> torch.dtype:
    """dtype of lse_max, lse_sum and D: float64 for float64 elements, float32 otherwise."""
    return torch.float64 if element_dtype == torch.float64 else torch.float32


def _scatter_back_fake(O, round_max, round_sum, inv, residual, res_scale):
    torch._check(O.dim() == 4, lambda: f"scatter_back: O must be 4-D [N, h, L, C], got shape {tuple(O.shape)}")
    N, _, L, C = O.shape
    stats = O.new_empty((N, L), dtype=_stats_dtype(O.dtype))
    return torch.empty_like(residual), O.new_empty((N, L, C)), stats, torch.empty_like(stats)


def _attention_grad_rows_fake(grad_y, out, res_scale):
    torch._check(out.dim() == 3, lambda: f"attention_grad_rows: out must be 3-D [N, L, C], got shape {tuple(out.shape)}")
    return torch.empty_like(out), out.new_empty(out.shape[:2], dtype=_stats_dtype(out.dtype))


def _register():
    global _registered
    if _registered:
        return
    torch.library.register_fake("dlsn::scatter_back", _scatter_back_fake)
    torch.library.register_fake("dlsn::attention_grad_rows", _attention_grad_rows_fake)
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


def scatter_back(O, round_max, round_sum, inv, residual, res_scale=1.0):
    """Unsort and merge the per-round attention results, add the residual.

    Args:
        O: ``[N, h, L, C]`` round outputs in sorted order; float32, float16, bfloat16 (float64 on CPU).
        round_max: ``[N, h, L]`` running score maximum of each query slot, float32 (float64 accepted
            when ``O`` is float64).
        round_sum: ``[N, h, L]`` ``sum_j exp(s_j - round_max)`` of each query slot, dtype of ``round_max``.
        inv: ``[N, h, L]`` int32, ``inv[n, r, pos]`` = slot of ``pos`` in round ``r``; each
            ``inv[n, r]`` a permutation of ``[0, L)``.
        residual: ``[N, C, H, W]``, dtype of ``O``, ``H * W == L``.
        res_scale: Python float.

    Returns:
        ``y`` ``[N, C, H, W]`` (dtype of ``O``) = ``res_scale * out + residual``;
        ``out`` ``[N, L, C]`` (dtype of ``O``) the merged attention output, rows by position;
        ``lse_max``, ``lse_sum`` ``[N, L]`` float32 (float64 for float64 ``O``): the merged
        log-sum-exp is ``lse_max + log(lse_sum)``. Accumulation is fp32 (fp64 for float64).
    """
    _check_tensors("scatter_back", O=O, round_max=round_max, round_sum=round_sum, inv=inv, residual=residual)
    return _ops().scatter_back(O, round_max, round_sum, inv, residual, _check_scale("scatter_back", res_scale))


def attention_grad_rows(grad_y, out, res_scale=1.0):
    """Per-position inputs of the fused attention backward (docs/internals.md, stage 5).

    Args: ``grad_y`` ``[N, C, H, W]`` (gradient of GLA's output), ``out`` ``[N, L, C]`` (merged
    attention output from :func:`scatter_back`), same dtype, ``H * W == L``.

    Returns ``g`` ``[N, L, C]`` (dtype of ``out``) = ``res_scale * grad_y`` as rows, and ``D``
    ``[N, L]`` float32 (float64 for float64) = ``rowsum(g * out)`` computed from the rounded ``g``.
    With ``P = exp(s - lse_max[perm t]) / lse_sum[perm t]`` each round's attention backward is a
    flash-attention backward with ``dO = g[perm t]`` and ``Delta = D[perm t]``.
    """
    _check_tensors("attention_grad_rows", grad_y=grad_y, out=out)
    return _ops().attention_grad_rows(grad_y, out, _check_scale("attention_grad_rows", res_scale))


# When the extension is importable, register now so that torch.ops.dlsn.* trace under
# torch.compile even when called directly; when it is not, the functions above raise on use.
if extension_available():
    _register()
