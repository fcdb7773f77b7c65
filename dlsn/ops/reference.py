"""Pure-PyTorch reference of Global Learnable Attention (docs/gla.md says what it computes).

Every fused kernel is checked against these functions, and `dlsn.ops.gla_attention` runs them as
the "reference" backend (any device; the default off CUDA). They follow docs/gla.md literally,
stage by stage, so tests can drive each stage with injected inputs; `dlsn.sr.attention_maps`
reuses the window, score and merge pieces. They are device- and dtype-agnostic: hashing projects in float32 (a
flipped argmax moves a position to another bucket); everything else runs in the dtype of its
inputs, so a bfloat16 call measures what plain PyTorch gets in bfloat16.

Shapes (see docs/internals.md): `q` [N, L, c], `v` [N, L, C], `learned` [N, L, l] (the learned
score term), rotations [h, c, b], `perm` [N, h, Lp] and `inv` [N, h, L] as int64 here (the kernels
produce int32).
"""
import contextlib

import torch

from ..kernels.constants import KEY_NORM_EPS


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


def sort_permutation(codes, chunk_size, n_buckets=None, counting=False):
    """Stable per-round sort by code, padded to a multiple of `chunk_size` (docs/gla.md §3).

    Returns `perm` [N, h, Lp] (original position at each slot; padded slot `t` repeats slot
    `(t - p) mod L`) and `inv` [N, h, L] (slot of each position among the real slots).
    `counting=True` computes the same slots with `counting_sort_slots` (standard ops only, no
    TopK or ArgSort over the positions: what ONNX and TensorRT need); it needs `n_buckets`, the
    codes' bound. No branch depends on the size, so symbolic sizes (torch.export) trace.
    """
    length = codes.shape[-1]
    slots = torch.arange(length, device=codes.device).expand_as(codes)
    if counting:
        inv = counting_sort_slots(codes, n_buckets)
        order = torch.empty_like(inv).scatter_(-1, inv, slots)
    else:
        _, order = torch.sort(codes, dim=-1, stable=True)
        inv = torch.empty_like(codes, dtype=torch.int64).scatter_(-1, order, slots)
    pad = (-length) % chunk_size
    # A tensor divisor: ONNX export translates a remainder by a symbolic size only between tensors.
    divisor = torch.scalar_tensor(length, dtype=torch.int64, device=codes.device)
    pad_slots = (torch.arange(length, length + pad, device=codes.device) - pad).remainder(divisor)
    return torch.cat([order, order[..., pad_slots]], dim=-1), inv


def counting_sort_slots(codes, n_buckets):
    """`inv` of the stable sort of `codes` [N, h, L] (values in [0, n_buckets)) -> int64 [N, h, L].

    The slot of position `i` is (positions with a lower code) + (positions before `i` with its
    code): an exclusive prefix sum of the bucket sizes plus a running count within the bucket,
    read off a cumulative sum of the one-hot codes. Stable by construction. Its working memory is
    `N h L b` int32 (one-hot and running counts), a few percent of the window attention's.
    """
    codes = codes.long()
    buckets = torch.arange(n_buckets, device=codes.device)
    one_hot = (codes.unsqueeze(-1) == buckets).to(torch.int32)              # [N, h, L, b]
    running = one_hot.cumsum(dim=2, dtype=torch.int32)                      # inclusive count per bucket
    sizes = running[:, :, -1, :]                                            # [N, h, b]
    starts = sizes.cumsum(dim=2, dtype=torch.int32) - sizes                 # positions in lower buckets
    rank = running.gather(3, codes.unsqueeze(-1)).squeeze(-1)               # 1 + earlier equal codes
    return (starts.gather(2, codes) + rank - 1).long()

def normalized_keys(q):
    """Keys `q / max(||q||_2, KEY_NORM_EPS)` (docs/gla.md §4): a zero query gives a zero key."""
    return q / q.norm(dim=-1, keepdim=True).clamp_min(KEY_NORM_EPS)


def window_positions(perm, chunk_size):
    """perm [N, h, Lp] -> [N, h, nC, 3l]: the positions of each chunk's key window, chunk k, then
    k+1, then k-1 (mod nC), as published (docs/gla.md §4)."""
    n, h, lp = perm.shape
    chunks = perm.reshape(n, h, lp // chunk_size, chunk_size)
    return torch.cat([chunks, chunks.roll(-1, dims=2), chunks.roll(1, dims=2)], dim=3)


def gather_rows(rows, positions):
    """rows [N, L, D] at positions [N, *S] -> [N, *S, D]."""
    n, shape = positions.shape[0], positions.shape[1:]
    flat = positions.reshape(n, -1, 1).expand(-1, -1, rows.shape[-1])
    return rows.gather(1, flat).reshape(n, *shape, rows.shape[-1])


def window_scores(queries, keys, learned_terms, matmul=torch.matmul):
    """`s = queries . keysᵀ + learned_terms`: queries [..., Q, c], keys [..., K, c] (normalised),
    learned_terms [..., Q, K] (the learned term of key j at query i's place in its chunk)."""
    return matmul(queries, keys.transpose(-1, -2)) + learned_terms


def merge_weights(lse):
    """Weights of the hash rounds (dim 1) of each position: `softmax_r(lse_r)`. torch.softmax
    subtracts the largest `lse_r` before exponentiating, so they sum to 1 at any score magnitude."""
    return torch.softmax(lse, dim=1)


def window_attention(q, v, learned, perm, chunk_size, matmul=torch.matmul):
    """Per-round attention over each chunk's 3-chunk key window (docs/gla.md §4).

    Returns `O` [N, h, L, C] and `lse` [N, h, L] for the real sorted slots, in the input dtype.
    `matmul` computes the two products (scores, values): `bench/precision_modes.py` passes one that
    emulates TF32 operand rounding.
    """
    n, h, lp = perm.shape
    length = q.shape[1]
    windows = window_positions(perm, chunk_size)                        # [N, h, nC, 3l]
    q_chunks = gather_rows(q, perm.reshape(n, h, -1, chunk_size))       # [N, h, nC, l, c]
    # learned[key j, query slot i]: the window's rows of `learned`, transposed to [.., l, 3l].
    learned_terms = gather_rows(learned, windows).transpose(-1, -2)
    scores = window_scores(q_chunks, gather_rows(normalized_keys(q), windows), learned_terms, matmul)
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    out = matmul(torch.exp(scores - lse), gather_rows(v, windows))
    out = out.reshape(n, h, lp, v.shape[-1])[:, :, :length]
    return out, lse.reshape(n, h, lp)[:, :, :length]


def scatter_back(O, lse, inv):
    """Unsort each round and merge the rounds with `merge_weights` -> `out` [N, L, C], `LSE` [N, L]."""
    n, h, length, channels = O.shape
    O_pos = O.gather(2, inv.unsqueeze(-1).expand(-1, -1, -1, channels))
    lse_pos = lse.gather(2, inv)
    weights = merge_weights(lse_pos)
    out = (O_pos * weights.unsqueeze(-1)).sum(dim=1)
    return out, torch.logsumexp(lse_pos, dim=1)


def gla_core(q, v, learned, rotations, chunk_size, x, res_scale, hash_q=None, counting_sort=False):
    """Everything after the embeddings: hash, sort, attend, scatter back, residual -> y [N, C, H, W].
    `hash_q` (default: q) are the queries the positions are hashed by; `counting_sort` sorts with
    `counting_sort_slots` (same slots, standard ops only)."""
    codes = hash_codes(q if hash_q is None else hash_q, rotations)
    perm, inv = sort_permutation(codes, chunk_size, rotations.shape[2], counting=counting_sort)
    O, lse = window_attention(q, v, learned, perm, chunk_size)
    out, _ = scatter_back(O, lse, inv)
    n, channels, height, width = x.shape
    return out.transpose(1, 2).reshape(n, channels, height, width) * res_scale + x
