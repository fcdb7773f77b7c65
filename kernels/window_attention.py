"""Blocked window attention forward of GLA, gathering rows through the sort permutation.

Per (batch n, round r), in sorted order (contract section 4, docs/internals.md stage 3): for query
slot `t < L` of chunk `k = t // l`, `i = t mod l`, and each key slot `j` of the window
(the multiset of chunks `k`, `k+1`, `k-1` mod nC, in that order; duplicates when nC < 3):

    key_j = q[perm j] / max(||q[perm j]||_2, 5e-5)
    s_tj  = q[perm t] . key_j + F[perm j, i]
    lse_t = logsumexp_j s_tj                        (float32)
    O_t   = sum_j exp(s_tj - lse_t) v[perm j]       (float32 accumulation, stored in v's dtype)

The kernel is a flash-attention forward: rows of q, v and F are gathered through `perm` inside the
kernel (no sorted copies, no 3x window copies, no [l, 3l] score tensor); the online softmax keeps
a running max `m_t` and sum `l_t = sum_j exp(s_tj - m_t)` in natural-log units, and the value dim
is split over the grid (`BLOCK_C` columns per program; every program recomputes the same scores).
Dots take float32 operands for float32 inputs with input_precision="ieee" (no TF32); 16-bit inputs
use 16-bit operands (keys and probabilities rounded to the input dtype) with float32 accumulation.
A backward can recompute `P_tj = exp(s_tj - LSE)` with exactly these formulas.
Inputs are not validated here: `dlsn.ops.fused.triton_window_attention` checks them before launching.
"""
import torch
import triton
import triton.language as tl

from .window_common import key_chunk_of_listing, load_keys, round_rows, window_dot, window_scores


@triton.jit
def _window_attn_fwd_kernel(
    Q, V, F, PERM, O, LSE,
    length, padded_length, n_chunks, n_hashes, match_channels, value_channels,
    CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr, PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
):
    """Grid: (query tiles = nC * CHUNK / BLOCK_M, N * h, value-dim tiles)."""
    pid_m = tl.program_id(0)
    nr = tl.program_id(1).to(tl.int64)
    pid_c = tl.program_id(2)
    tiles_per_chunk: tl.constexpr = CHUNK // BLOCK_M
    chunk = pid_m // tiles_per_chunk
    query_in_chunk = (pid_m % tiles_per_chunk) * BLOCK_M + tl.arange(0, BLOCK_M)
    query_slot = chunk * CHUNK + query_in_chunk

    _, perm_row, q_rows, v_rows, f_rows = round_rows(Q, V, F, PERM, nr, n_hashes, length, padded_length,
                                                     match_channels, value_channels, CHUNK)
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < match_channels
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    col_mask = cols < value_channels

    query_pos = tl.load(perm_row + query_slot).to(tl.int64)
    q = tl.load(q_rows + query_pos[:, None] * match_channels + dims[None, :], mask=dim_mask[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_C], tl.float32)
    # One flat loop over the 3 * CHUNK / BLOCK_N key blocks of the window.
    blocks_per_chunk: tl.constexpr = CHUNK // BLOCK_N
    for key_block in range(3 * blocks_per_chunk):
        key_chunk = key_chunk_of_listing(chunk, key_block // blocks_per_chunk, n_chunks)
        key_slot = key_chunk * CHUNK + (key_block % blocks_per_chunk) * BLOCK_N + tl.arange(0, BLOCK_N)
        key_pos = tl.load(perm_row + key_slot).to(tl.int64)
        key = load_keys(q_rows, key_pos, dims, dim_mask, match_channels, tl.float32)
        scores = window_scores(q, key, f_rows, key_pos, query_in_chunk, CHUNK, PRECISION, UPCAST_DOT, tl.float32)
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_rows + key_pos[:, None] * value_channels + cols[None, :], mask=col_mask[None, :], other=0.0)
        acc = acc * alpha[:, None] + window_dot(p.to(v.dtype), v, PRECISION, UPCAST_DOT, tl.float32)
        m_i = m_new

    query_mask = query_slot < length
    out = acc / l_i[:, None]
    tl.store(O + (nr * length + query_slot[:, None]) * value_channels + cols[None, :],
             out.to(O.dtype.element_ty), mask=query_mask[:, None] & col_mask[None, :])
    if pid_c == 0:
        tl.store(LSE + nr * length + query_slot, m_i + tl.log(l_i), mask=query_mask)


def _launch_config(dtype, chunk_size, value_channels):
    """(BLOCK_M, BLOCK_N, BLOCK_C, num_warps), chosen from sm_90 builds of the C = 256, l = 128 case
    (ptxas register counts; untimed): the float32 "ieee" dot runs on FMAs and keeps its operands in
    registers, so float32 takes smaller tiles than the 16-bit tensor-core path. Every block is at
    least 16 (tl.dot) and divides chunk_size, so query and key tiles never need masks.
    """
    if dtype == torch.float32:
        block_m, block_n, block_c = 32, 64, 64
    else:
        block_m, block_n, block_c = 64, 64, 128
    block_m, block_n = min(block_m, chunk_size), min(block_n, chunk_size)
    block_c = min(block_c, max(16, triton.next_power_of_2(value_channels)))
    num_warps = 8 if block_m * block_n >= 2048 else 4
    return block_m, block_n, block_c, num_warps


def window_attn_fwd(q, v, F, perm, chunk_size, precision="ieee"):
    """q [N, L, c], v [N, L, C], F [N, L, l] (one float dtype, contiguous), perm [N, h, Lp] int32
    -> (O [N, h, L, C] in v's dtype, lse [N, h, L] float32). `precision` ("ieee", "tf32",
    "tf32x3") is the float32 dots' input precision."""
    n_batch, length, match_channels = q.shape
    value_channels = v.shape[-1]
    _, n_hashes, padded_length = perm.shape
    n_chunks = padded_length // chunk_size
    O = torch.empty((n_batch, n_hashes, length, value_channels), device=v.device, dtype=v.dtype)
    lse = torch.empty((n_batch, n_hashes, length), device=v.device, dtype=torch.float32)
    block_m, block_n, block_c, num_warps = _launch_config(v.dtype, chunk_size, value_channels)
    block_d = max(16, triton.next_power_of_2(match_channels))
    grid = (n_chunks * (chunk_size // block_m), n_batch * n_hashes, triton.cdiv(value_channels, block_c))
    _window_attn_fwd_kernel[grid](
        q, v, F, perm, O, lse,
        length, padded_length, n_chunks, n_hashes, match_channels, value_channels,
        CHUNK=chunk_size, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, BLOCK_C=block_c, PRECISION=precision,
        UPCAST_DOT=v.device.type == "cpu" and v.dtype == torch.bfloat16, num_warps=num_warps, num_stages=2,
    )
    return O, lse
