"""Pure-PyTorch reference of Global Learnable Attention (docs/gla.md says what it computes).

Every fused kernel is checked against these functions; nothing in the package's production path
imports this module. They follow docs/gla.md literally, stage by stage, so tests can drive each
stage with injected inputs. They are device- and dtype-agnostic: hashing projects in float32 (a
flipped argmax moves a position to another bucket); everything else runs in the dtype of its
inputs, so a bfloat16 call measures what plain PyTorch gets in bfloat16.

Shapes (see docs/internals.md): `q` [N, L, c], `v` [N, L, C], `learned` [N, L, l] (the learned
score term), rotations [h, c, b], `perm` [N, h, Lp] and `inv` [N, h, L] as int64 here (the kernels
produce int32).
"""
import contextlib

import torch

from .hashing import n_buckets, sblsh_rotations  # noqa: F401  (the reference's own stage 0)
from .kernels.constants import KEY_NORM_EPS


def hash_codes(q, rotations):
    """`code[n, r, i] = argmax_k (q[n, i] . R[r, :, k])` in float32, ties -> lowest k. -> int64 [N, h, L].

    A non-finite projection (NaN, +-inf) is never the maximum; a row whose projections are all
    non-finite gets code 0, so every code lies in [0, b) whatever the input.
    """
    n, length, channels = q.shape
    n_hashes, _, n_buckets_ = rotations.shape
    # float32 whatever the autocast state. Every column is projected by the same chain of float32
    # multiplies and adds, channel by channel, so identical columns give identical projections and
    # exact ties really go to the lowest column; a matmul rounds a column according to its place
    # (and to the BLAS kernel the machine picks).
    device = q.device.type
    with torch.autocast(device, enabled=False) if torch.amp.is_autocast_available(device) else contextlib.nullcontext():
        q_channels = q.detach().float().permute(2, 0, 1).contiguous()  # [c, N, L]
        columns = rotations.detach().float().permute(1, 0, 2).reshape(channels, n_hashes * n_buckets_)
        projected = q_channels[0, ..., None] * columns[0]
        product = torch.empty_like(projected)
        for d in range(1, channels):
            torch.mul(q_channels[d, ..., None], columns[d], out=product)
            projected += product
    projected = projected.view(n, length, n_hashes, n_buckets_).permute(0, 2, 1, 3)
    projected = torch.where(projected.isfinite(), projected, float("-inf"))
    # torch.argmax does not promise the first maximal index on every device; take it explicitly.
    best = projected.amax(dim=-1, keepdim=True)
    index = torch.arange(n_buckets_, device=q.device).expand_as(projected)
    return torch.where(projected == best, index, n_buckets_).amin(dim=-1)


def sort_permutation(codes, chunk_size):
    """Stable per-round sort by code, padded to a multiple of `chunk_size` (docs/gla.md §3).

    Returns `perm` [N, h, Lp] (original position at each slot; padded slot `t` repeats slot
    `(t - p) mod L`) and `inv` [N, h, L] (slot of each position among the real slots).
    """
    length = codes.shape[-1]
    _, order = torch.sort(codes, dim=-1, stable=True)
    pad = (-length) % chunk_size
    if pad:
        pad_slots = (torch.arange(length, length + pad, device=codes.device) - pad) % length
        order = torch.cat([order, order[..., pad_slots]], dim=-1)
    inv = torch.empty_like(codes, dtype=torch.int64)
    slots = torch.arange(length, device=codes.device).expand_as(codes)
    inv.scatter_(-1, order[..., :length], slots)
    return order, inv


def _gather_rows(rows, perm):
    """rows [N, L, D], perm [N, h, Lp] -> [N, h, Lp, D]."""
    n, h, lp = perm.shape
    flat = perm.reshape(n, h * lp, 1).expand(-1, -1, rows.shape[-1])
    return rows.gather(1, flat).reshape(n, h, lp, rows.shape[-1])


def _windows(chunks):
    """[N, h, nC, l, D] -> [N, h, nC, 3l, D]: chunk k, then k+1, then k-1 (mod nC), as published."""
    return torch.cat([chunks, chunks.roll(-1, dims=2), chunks.roll(1, dims=2)], dim=3)


def window_attention(q, v, learned, perm, chunk_size, matmul=torch.matmul):
    """Per-round attention over each chunk's 3-chunk key window (docs/gla.md §4).

    Returns `O` [N, h, L, C] and `lse` [N, h, L] for the real sorted slots, in the input dtype.
    `matmul` computes the two products (scores, values): `bench/precision_modes.py` passes one that
    emulates TF32 operand rounding.
    """
    n, h, lp = perm.shape
    length = q.shape[1]
    n_chunks = lp // chunk_size
    keys = q / q.norm(dim=-1, keepdim=True).clamp_min(KEY_NORM_EPS)

    def chunked(rows):
        return _gather_rows(rows, perm).reshape(n, h, n_chunks, chunk_size, rows.shape[-1])

    q_chunks = chunked(q)
    key_windows = _windows(chunked(keys))
    value_windows = _windows(chunked(v))
    learned_windows = _windows(chunked(learned))  # [N, h, nC, 3l, l]: learned[key j, query slot i]
    scores = matmul(q_chunks, key_windows.transpose(-1, -2)) + learned_windows.transpose(-1, -2)
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    out = matmul(torch.exp(scores - lse), value_windows)
    out = out.reshape(n, h, lp, v.shape[-1])[:, :, :length]
    return out, lse.reshape(n, h, lp)[:, :, :length]


def scatter_back(O, lse, inv):
    """Unsort each round and merge the rounds with `softmax_r(lse)` -> `out` [N, L, C], `LSE` [N, L].

    torch.softmax subtracts the largest `lse_r` before exponentiating, so the weights sum to 1 at
    any score magnitude."""
    n, h, length, channels = O.shape
    O_pos = O.gather(2, inv.unsqueeze(-1).expand(-1, -1, -1, channels))
    lse_pos = lse.gather(2, inv)
    weights = torch.softmax(lse_pos, dim=1)
    out = (O_pos * weights.unsqueeze(-1)).sum(dim=1)
    return out, torch.logsumexp(lse_pos, dim=1)


def gla_core(q, v, learned, rotations, chunk_size, x, res_scale, hash_q=None):
    """Everything after the embeddings: hash, sort, attend, scatter back, residual -> y [N, C, H, W].
    `hash_q` (default: q) are the queries the positions are hashed by."""
    perm, inv = sort_permutation(hash_codes(q if hash_q is None else hash_q, rotations), chunk_size)
    O, lse = window_attention(q, v, learned, perm, chunk_size)
    out, _ = scatter_back(O, lse, inv)
    n, channels, height, width = x.shape
    return out.transpose(1, 2).reshape(n, channels, height, width) * res_scale + x
