"""Backward of the blocked window attention (contract sections 4-5, docs/internals.md "Fused backward").

One softmax over all rounds: with `LSE[pos] = logsumexp_r lse_r[pos]`, `g` the gradient of the merged
output `out` and `D[pos] = g[pos] . out[pos]`, for every round, real query slot `t < L`
(`i = t mod l`) and key slot `j` of its window (each multiset listing separately):

    P_tj  = exp(s_tj - LSE[perm t])
    dS_tj = P_tj * (g[perm t] . v[perm j] - D[perm t])
    dv[perm j]    += P_tj g[perm t]
    dkey[perm j]  += dS_tj q[perm t]            then dq += d normalize(q) (dkey)
    dq[perm t]    += dS_tj key[perm j]
    dF[perm j, i] += dS_tj

Deterministic, no atomics: key-side gradients are computed per (n, r, key block) over the three
query-chunk listings whose windows hold that key chunk (query chunks kc, kc - 1, kc + 1 mod nC,
the same chunk several times when nC < 3), query-side per (n, r, query block) over its window;
both write per-slot buffers that `_fold_slots_kernel` reduces to positions in a fixed order
(rounds ascending, then the padded duplicates of each slot). Accumulation in float32 (float64 for
float64 inputs, which exists for gradcheck).
"""
import torch
import triton
import triton.language as tl

from .constants import KEY_NORM_EPS
from .window_common import (key_chunk_of_listing, load_keys, query_chunk_of_listing, round_rows, window_dot,
                            window_scores)


@triton.jit
def _probabilities(q, key, f_rows, key_pos, query_in_chunk, query_pos, query_mask, LSE,
                   CHUNK: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr, UPCAST: tl.constexpr):
    """P [BLOCK_M, BLOCK_N] = exp(q . key + F[key, i] - LSE[query]); 0 on padded query rows."""
    scores = window_scores(q, key, f_rows, key_pos, query_in_chunk, CHUNK, PRECISION, UPCAST, ACC)
    lse = tl.load(LSE + query_pos, mask=query_mask, other=0.0).to(ACC)
    return tl.where(query_mask[:, None], tl.exp(scores - lse[:, None]), 0.0)


@triton.jit
def _score_gradient(p, g_rows, v_rows, query_pos, query_mask, key_pos, DELTA, value_channels,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                    PRECISION: tl.constexpr, ACC: tl.constexpr, UPCAST: tl.constexpr):
    """dS = P * (g[query] . v[key] - D[query]), the value dim reduced in BLOCK_C tiles."""
    dp = tl.zeros([BLOCK_M, BLOCK_N], ACC)
    for col_start in range(0, value_channels, BLOCK_C):
        cols = col_start + tl.arange(0, BLOCK_C)
        col_mask = cols < value_channels
        g = tl.load(g_rows + query_pos[:, None] * value_channels + cols[None, :],
                    mask=query_mask[:, None] & col_mask[None, :], other=0.0)
        v = tl.load(v_rows + key_pos[:, None] * value_channels + cols[None, :], mask=col_mask[None, :], other=0.0)
        dp += window_dot(g, tl.trans(v.to(g.dtype)), PRECISION, UPCAST, ACC)
    delta = tl.load(DELTA + query_pos, mask=query_mask, other=0.0).to(ACC)
    return p * (dp - delta[:, None])


@triton.jit
def _window_attn_bwd_dv_kernel(
    Q, F, G, PERM, LSE, DV_SLOT,
    length, padded_length, n_chunks, n_hashes, match_channels, value_channels,
    CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_C: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr, UPCAST: tl.constexpr,
):
    """DV_SLOT[n, r, j, cols] = sum over windows holding key slot j of P_tj g[perm t, cols].
    Grid: (nC * CHUNK / BLOCK_N, N * h, value-dim tiles)."""
    pid_k = tl.program_id(0)
    nr = tl.program_id(1).to(tl.int64)
    n, perm_row, q_rows, g_rows, f_rows = round_rows(Q, G, F, PERM, nr, n_hashes, length, padded_length,
                                                     match_channels, value_channels, CHUNK)
    blocks_per_chunk: tl.constexpr = CHUNK // BLOCK_N
    key_chunk = pid_k // blocks_per_chunk
    key_slot = key_chunk * CHUNK + (pid_k % blocks_per_chunk) * BLOCK_N + tl.arange(0, BLOCK_N)
    lse_rows = LSE + n * length
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < match_channels
    cols = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_mask = cols < value_channels

    key_pos = tl.load(perm_row + key_slot).to(tl.int64)
    key = load_keys(q_rows, key_pos, dims, dim_mask, match_channels, ACC)
    dv = tl.zeros([BLOCK_N, BLOCK_C], ACC)
    query_blocks: tl.constexpr = CHUNK // BLOCK_M
    for step in range(3 * query_blocks):
        query_chunk = query_chunk_of_listing(key_chunk, step // query_blocks, n_chunks)
        query_in_chunk = (step % query_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
        query_slot = query_chunk * CHUNK + query_in_chunk
        query_mask = query_slot < length
        query_pos = tl.load(perm_row + query_slot, mask=query_mask, other=0).to(tl.int64)
        q = tl.load(q_rows + query_pos[:, None] * match_channels + dims[None, :],
                    mask=query_mask[:, None] & dim_mask[None, :], other=0.0)
        p = _probabilities(q, key, f_rows, key_pos, query_in_chunk, query_pos, query_mask, lse_rows,
                           CHUNK, PRECISION, ACC, UPCAST)
        g = tl.load(g_rows + query_pos[:, None] * value_channels + cols[None, :],
                    mask=query_mask[:, None] & col_mask[None, :], other=0.0)
        dv += window_dot(tl.trans(p).to(g.dtype), g, PRECISION, UPCAST, ACC)
    tl.store(DV_SLOT + (nr * padded_length + key_slot[:, None]) * value_channels + cols[None, :], dv,
             mask=col_mask[None, :])


@triton.jit
def _window_attn_bwd_dkdf_kernel(
    Q, V, F, G, PERM, LSE, DELTA, DK_SLOT, DF_SLOT,
    length, padded_length, n_chunks, n_hashes, match_channels, value_channels,
    CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_C: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr, UPCAST: tl.constexpr,
):
    """DK_SLOT[n, r, j] = sum dS_tj q[perm t] (gradient of the normalised key), DF_SLOT[n, r, j, i]
    = sum dS_tj over the listings of slot j. Grid: (nC * CHUNK / BLOCK_N, N * h)."""
    pid_k = tl.program_id(0)
    nr = tl.program_id(1).to(tl.int64)
    n, perm_row, q_rows, v_rows, f_rows = round_rows(Q, V, F, PERM, nr, n_hashes, length, padded_length,
                                                     match_channels, value_channels, CHUNK)
    g_rows = G + n * length * value_channels
    blocks_per_chunk: tl.constexpr = CHUNK // BLOCK_N
    key_chunk = pid_k // blocks_per_chunk
    key_slot = key_chunk * CHUNK + (pid_k % blocks_per_chunk) * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < match_channels

    key_pos = tl.load(perm_row + key_slot).to(tl.int64)
    key = load_keys(q_rows, key_pos, dims, dim_mask, match_channels, ACC)
    dkey = tl.zeros([BLOCK_N, BLOCK_D], ACC)
    # Outer loop over query rows i of a chunk, inner over the three listings: dF[j, i] is complete
    # after the inner loop and is stored once.
    for query_block in range(CHUNK // BLOCK_M):
        query_in_chunk = query_block * BLOCK_M + tl.arange(0, BLOCK_M)
        dF = tl.zeros([BLOCK_M, BLOCK_N], ACC)
        for listing in range(3):
            query_slot = query_chunk_of_listing(key_chunk, listing, n_chunks) * CHUNK + query_in_chunk
            query_mask = query_slot < length
            query_pos = tl.load(perm_row + query_slot, mask=query_mask, other=0).to(tl.int64)
            q = tl.load(q_rows + query_pos[:, None] * match_channels + dims[None, :],
                        mask=query_mask[:, None] & dim_mask[None, :], other=0.0)
            p = _probabilities(q, key, f_rows, key_pos, query_in_chunk, query_pos, query_mask, LSE + n * length,
                               CHUNK, PRECISION, ACC, UPCAST)
            ds = _score_gradient(p, g_rows, v_rows, query_pos, query_mask, key_pos, DELTA + n * length,
                                 value_channels, BLOCK_M, BLOCK_N, BLOCK_C, PRECISION, ACC, UPCAST)
            dkey += window_dot(tl.trans(ds).to(q.dtype), q, PRECISION, UPCAST, ACC)
            dF += ds
        tl.store(DF_SLOT + (nr * padded_length + key_slot[None, :]) * CHUNK + query_in_chunk[:, None], dF)
    tl.store(DK_SLOT + (nr * padded_length + key_slot[:, None]) * BLOCK_D + dims[None, :], dkey)


@triton.jit
def _window_attn_bwd_dq_kernel(
    Q, V, F, G, PERM, LSE, DELTA, DQ_ROUND,
    length, padded_length, n_chunks, n_hashes, match_channels, value_channels,
    CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_C: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr, UPCAST: tl.constexpr,
):
    """DQ_ROUND[n, r, perm t] = sum_j dS_tj key[perm j] (query role; one real slot per position and
    round, so rows never collide). Grid: (nC * CHUNK / BLOCK_M, N * h)."""
    pid_m = tl.program_id(0)
    nr = tl.program_id(1).to(tl.int64)
    n, perm_row, q_rows, v_rows, f_rows = round_rows(Q, V, F, PERM, nr, n_hashes, length, padded_length,
                                                     match_channels, value_channels, CHUNK)
    g_rows = G + n * length * value_channels
    query_blocks: tl.constexpr = CHUNK // BLOCK_M
    query_chunk = pid_m // query_blocks
    query_in_chunk = (pid_m % query_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
    query_slot = query_chunk * CHUNK + query_in_chunk
    query_mask = query_slot < length
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < match_channels

    query_pos = tl.load(perm_row + query_slot, mask=query_mask, other=0).to(tl.int64)
    q = tl.load(q_rows + query_pos[:, None] * match_channels + dims[None, :],
                mask=query_mask[:, None] & dim_mask[None, :], other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], ACC)
    blocks_per_chunk: tl.constexpr = CHUNK // BLOCK_N
    for key_block in range(3 * blocks_per_chunk):
        key_chunk = key_chunk_of_listing(query_chunk, key_block // blocks_per_chunk, n_chunks)
        key_slot = key_chunk * CHUNK + (key_block % blocks_per_chunk) * BLOCK_N + tl.arange(0, BLOCK_N)
        key_pos = tl.load(perm_row + key_slot).to(tl.int64)
        key = load_keys(q_rows, key_pos, dims, dim_mask, match_channels, ACC)
        p = _probabilities(q, key, f_rows, key_pos, query_in_chunk, query_pos, query_mask, LSE + n * length,
                           CHUNK, PRECISION, ACC, UPCAST)
        ds = _score_gradient(p, g_rows, v_rows, query_pos, query_mask, key_pos, DELTA + n * length,
                             value_channels, BLOCK_M, BLOCK_N, BLOCK_C, PRECISION, ACC, UPCAST)
        dq += window_dot(ds.to(q.dtype), key.to(q.dtype), PRECISION, UPCAST, ACC)
    tl.store(DQ_ROUND + (nr * length + query_pos[:, None]) * BLOCK_D + dims[None, :], dq,
             mask=query_mask[:, None])


@triton.jit
def _fold_slots_kernel(
    SLOT, INV, OUT, length, padded_length, n_hashes, width, slot_width, n_duplicates,
    BLOCK_P: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """OUT[n, pos, :width] = sum_r (SLOT[n, r, inv[n, r, pos]] + its padded duplicates), in a fixed
    order. Padded slot L + m repeats slot (m - p) mod L, so slot s has duplicates L + m for
    m = (s + p) mod L + k L < p. Grid: (cdiv(L, BLOCK_P), N, cdiv(width, BLOCK_W))."""
    positions = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.program_id(1).to(tl.int64)
    cols = tl.program_id(2) * BLOCK_W + tl.arange(0, BLOCK_W)
    pos_mask = positions < length
    mask = pos_mask[:, None] & (cols < width)[None, :]
    pad = padded_length - length
    acc = tl.zeros([BLOCK_P, BLOCK_W], SLOT.dtype.element_ty)
    for r in range(n_hashes):
        nr = n * n_hashes + r
        slot = tl.load(INV + nr * length + positions, mask=pos_mask, other=0).to(tl.int64)
        acc += tl.load(SLOT + (nr * padded_length + slot[:, None]) * slot_width + cols[None, :], mask=mask, other=0.0)
        for k in range(n_duplicates):
            m = (slot + pad) % length + k * length
            dup_mask = mask & (m < pad)[:, None]
            acc += tl.load(SLOT + (nr * padded_length + length + m[:, None]) * slot_width + cols[None, :],
                           mask=dup_mask, other=0.0)
    tl.store(OUT + (n * length + positions[:, None]) * width + cols[None, :], acc, mask=mask)


def _fold_slots(slot_grad, inv, width):
    """[N, h, Lp, >= width] slot gradients -> [N, L, width] position gradients (same dtype)."""
    n_batch, n_hashes, padded_length, slot_width = slot_grad.shape
    length = inv.shape[2]
    out = torch.empty((n_batch, length, width), device=slot_grad.device, dtype=slot_grad.dtype)
    pad = padded_length - length
    block_p, block_w = 32, min(128, triton.next_power_of_2(width))
    grid = (triton.cdiv(length, block_p), n_batch, triton.cdiv(width, block_w))
    _fold_slots_kernel[grid](slot_grad, inv, out, length, padded_length, n_hashes, width, slot_width,
                             triton.cdiv(pad, length), BLOCK_P=block_p, BLOCK_W=block_w)
    return out


def _key_normalization_backward(q, dkey):
    """Gradient w.r.t. q of key = q / max(||q||, eps), given dkey (accumulation dtype)."""
    q = q.to(dkey.dtype)
    norm = q.norm(dim=-1, keepdim=True)
    key = q / norm.clamp_min(KEY_NORM_EPS)
    projected = (dkey - key * (key * dkey).sum(-1, keepdim=True)) / norm.clamp_min(KEY_NORM_EPS)
    return torch.where(norm > KEY_NORM_EPS, projected, dkey / KEY_NORM_EPS)


def window_attn_bwd(q, v, F, perm, inv, g, D, LSE, chunk_size, precision="ieee"):
    """Gradients of the merged window attention w.r.t. q, v and F.

    Args:
        q [N, L, c], v [N, L, C], F [N, L, l]: contiguous, one dtype (float32/bfloat16/float16;
            float64 for gradcheck).
        perm [N, h, Lp] int32 and inv [N, h, L] int32 from the bucket sort (contiguous).
        g [N, L, C] (dtype of v): gradient of `out`; D [N, L] = rowsum(g * out) and LSE [N, L]
            (float32, float64 for float64 inputs) from the forward / `attention_grad_rows`.
        chunk_size: power of two, 16..256.
        precision: input precision of the float32 dots ("ieee", "tf32", "tf32x3").
    Returns:
        dq [N, L, c], dv [N, L, C], dF [N, L, l] in the input dtype (float32 accumulation).
    Inputs are not validated here: `dlsn.ops.fused_grad` checks them.
    """
    n_batch, length, match_channels = q.shape
    value_channels = v.shape[2]
    _, n_hashes, padded_length = perm.shape
    n_chunks = padded_length // chunk_size
    acc_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    acc = tl.float64 if q.dtype == torch.float64 else tl.float32
    upcast = q.device.type == "cpu" and q.dtype == torch.bfloat16
    block_m = block_n = min(64, chunk_size)
    block_c = min(64, max(16, triton.next_power_of_2(value_channels)))
    block_d = max(16, triton.next_power_of_2(match_channels))
    LSE, D = LSE.to(acc_dtype), D.to(acc_dtype)
    shape_args = (length, padded_length, n_chunks, n_hashes, match_channels, value_channels)
    # Untuned (no GPU was available): the key-side dkey/dF program holds about eight
    # BLOCK_N x 64 float32 tiles, so 64-row blocks get 8 warps.
    blocks = dict(CHUNK=chunk_size, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, BLOCK_C=block_c,
                  PRECISION="ieee" if q.dtype == torch.float64 else precision, ACC=acc, UPCAST=upcast, num_warps=8 if block_n >= 64 else 4)
    new = dict(device=q.device, dtype=acc_dtype)
    dv_slot = torch.empty((n_batch, n_hashes, padded_length, value_channels), **new)
    dkey_slot = torch.empty((n_batch, n_hashes, padded_length, block_d), **new)
    dF_slot = torch.empty((n_batch, n_hashes, padded_length, chunk_size), **new)
    dq_round = torch.zeros((n_batch, n_hashes, length, block_d), **new)
    key_grid = (n_chunks * (chunk_size // block_n), n_batch * n_hashes)
    _window_attn_bwd_dv_kernel[key_grid + (triton.cdiv(value_channels, block_c),)](
        q, F, g, perm, LSE, dv_slot, *shape_args, **blocks)
    _window_attn_bwd_dkdf_kernel[key_grid](q, v, F, g, perm, LSE, D, dkey_slot, dF_slot, *shape_args, **blocks)
    _window_attn_bwd_dq_kernel[(n_chunks * (chunk_size // block_m), n_batch * n_hashes)](
        q, v, F, g, perm, LSE, D, dq_round, *shape_args, **blocks)
    dv = _fold_slots(dv_slot, inv, value_channels)
    dF = _fold_slots(dF_slot, inv, chunk_size)
    dkey = _fold_slots(dkey_slot, inv, match_channels)
    dq = dq_round[..., :match_channels].sum(dim=1) + _key_normalization_backward(q, dkey)
    return dq.to(q.dtype), dv.to(v.dtype), dF.to(F.dtype)
