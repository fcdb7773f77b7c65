"""Blocked window attention forward of GLA, gathering rows through the sort permutation.

Per (batch n, round r), in sorted order (docs/gla.md §4): for query slot `t < L` of chunk
`k = t // l`, `i = t mod l`, and each key slot `j` of the window (the multiset of chunks `k`, `k+1`,
`k-1` mod nC, in that order; duplicates when nC < 3):

    key_j       = q[perm j] / max(||q[perm j]||_2, KEY_NORM_EPS)
    s_tj        = q[perm t] . key_j + learned[perm j, i]
    round_max_t = max_j s_tj
    round_sum_t = sum_j exp(s_tj - round_max_t)               (>= 1)
    O_t         = sum_j exp(s_tj - round_max_t) v[perm j] / round_sum_t

so `lse_t = round_max_t + log(round_sum_t)`; the two numbers are returned separately so that no
float32 rounds lse at the scores' magnitude (the round merge weights with them exactly).

The kernel is a flash-attention forward: rows of q, v and learned are gathered through `perm` inside the
kernel (no sorted copies, no 3x window copies, no [l, 3l] score tensor), one program per
(query tile, batch x round) covering every value column (BLOCK_C = next_power_of_2(C)), so each
score is computed once. Float32 dots use `precision` ("ieee" FMAs, "tf32" or "tf32x3" tensor
cores); 16-bit inputs use 16-bit tensor-core dots (keys and probabilities rounded to the input
dtype) with float32 accumulation; float64 inputs (gradcheck) compute in float64.
The backward recomputes `P_tj` with the same window_common functions; nothing else is saved here.
Inputs are not validated here: the op layer checks them before launching.
"""
import torch
import triton
import triton.language as tl

from .constants import dot_family
from .launch import Config, Launch, config_blocks, pick_config, run
from .window_common import (accumulation_dtype, dot_constexprs, key_chunk_of_listing, load_keys, round_rows,
                            window_dot, window_scores)


@triton.jit
def _window_attn_fwd_kernel(
    Q, V, LEARNED, PERM, O, ROUND_MAX, ROUND_SUM,
    length, padded_length, n_chunks, n_hashes, match_channels, value_channels,
    CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ACC: tl.constexpr,
):
    """Grid: (query tiles holding a real slot = cdiv(L, BLOCK_M), N * h). BLOCK_M divides CHUNK."""
    pid_m = tl.program_id(0)
    nr = tl.program_id(1).to(tl.int64)
    tiles_per_chunk: tl.constexpr = CHUNK // BLOCK_M
    chunk = pid_m // tiles_per_chunk
    query_in_chunk = (pid_m % tiles_per_chunk) * BLOCK_M + tl.arange(0, BLOCK_M)
    query_slot = chunk * CHUNK + query_in_chunk

    _, perm_row, q_rows, v_rows, learned_rows = round_rows(Q, V, LEARNED, PERM, nr, n_hashes, length,
                                                           padded_length, match_channels, value_channels, CHUNK)
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < match_channels
    cols = tl.arange(0, BLOCK_C)
    col_mask = cols < value_channels

    query_pos = tl.load(perm_row + query_slot).to(tl.int64)
    q = tl.load(q_rows + query_pos[:, None] * match_channels + dims[None, :], mask=dim_mask[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), ACC)
    l_i = tl.zeros([BLOCK_M], ACC)
    acc = tl.zeros([BLOCK_M, BLOCK_C], ACC)
    # One flat loop over the 3 * CHUNK / BLOCK_N key blocks of the window.
    blocks_per_chunk: tl.constexpr = CHUNK // BLOCK_N
    for key_block in range(3 * blocks_per_chunk):
        key_chunk = key_chunk_of_listing(chunk, key_block // blocks_per_chunk, n_chunks)
        key_slot = key_chunk * CHUNK + (key_block % blocks_per_chunk) * BLOCK_N + tl.arange(0, BLOCK_N)
        key_pos = tl.load(perm_row + key_slot).to(tl.int64)
        key = load_keys(q_rows, key_pos, dims, dim_mask, match_channels, ACC)
        scores = window_scores(q, key, learned_rows, key_pos, query_in_chunk, CHUNK, PRECISION, UPCAST, ACC)
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_rows + key_pos[:, None] * value_channels + cols[None, :], mask=col_mask[None, :], other=0.0)
        acc = acc * alpha[:, None] + window_dot(p.to(v.dtype), v, PRECISION, UPCAST, ACC)
        m_i = m_new

    query_mask = query_slot < length
    out = acc / l_i[:, None]
    tl.store(O + (nr * length + query_slot[:, None]) * value_channels + cols[None, :],
             out.to(O.dtype.element_ty), mask=query_mask[:, None] & col_mask[None, :])
    tl.store(ROUND_MAX + nr * length + query_slot, m_i, mask=query_mask)
    tl.store(ROUND_SUM + nr * length + query_slot, l_i, mask=query_mask)


# Query x key tiles per dot family (kernels/constants.py), in order of preference: the interpreter
# and the compile report take the first that fits, which compiles without spills for sm_80 and
# sm_90a at the training, inference and demo shapes (bench/compile_report.py); a GPU tunes over the
# valid ones. The accumulator is [BLOCK_M, next_power_of_2(C)] (up to 256 columns) in float32 per
# program, spread over 8 warps for 64-row tiles. "tf32" and "16-bit" each make one tensor-core dot
# per dot and share their tiles.
_ONE_TENSOR_CORE_DOT = [
    Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=8, num_stages=2),
    Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=8, num_stages=2),
    Config({"BLOCK_M": 128, "BLOCK_N": 32}, num_warps=8, num_stages=2),
    Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=2),
    Config({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=2),
    Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=2),
]
WINDOW_ATTN_FWD_CONFIGS = {
    "fma": [
        Config({"BLOCK_M": 64, "BLOCK_N": 16}, num_warps=8, num_stages=1),
        Config({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=8, num_stages=1),
        Config({"BLOCK_M": 32, "BLOCK_N": 16}, num_warps=4, num_stages=1),
        Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=1),
    ],
    "tf32": _ONE_TENSOR_CORE_DOT,
    # tf32x3 splits both operands of every dot into high and low tf32 parts: more live registers.
    "tf32x3": [
        Config({"BLOCK_M": 32, "BLOCK_N": 16}, num_warps=8, num_stages=2),
        Config({"BLOCK_M": 32, "BLOCK_N": 16}, num_warps=4, num_stages=1),
        Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=2),
        Config({"BLOCK_M": 64, "BLOCK_N": 16}, num_warps=8, num_stages=2),
    ],
    "16-bit": _ONE_TENSOR_CORE_DOT,
}


def window_attn_fwd_min_flops(n_batch, n_hashes, length, match_channels, value_channels, chunk_size):
    """FLOPs of the minimal algorithm: q.k and p.v over the 3l keys of every real query slot."""
    return 2 * n_batch * n_hashes * length * 3 * chunk_size * (match_channels + value_channels)


def window_attn_fwd_plan(q, v, learned, perm, chunk_size, precision="ieee", config=None):
    """Plan of `window_attn_fwd` (see kernels/launch.py): ([Launch], (O, round_max, round_sum))."""
    n_batch, length, match_channels = q.shape
    value_channels = v.shape[-1]
    _, n_hashes, padded_length = perm.shape
    dtype = v.dtype
    dots = dot_constexprs(v, precision)
    precision = dots["PRECISION"]
    stats_dtype = accumulation_dtype(dtype)
    O = torch.empty((n_batch, n_hashes, length, value_channels), device=v.device, dtype=dtype)
    round_max = torch.empty((n_batch, n_hashes, length), device=v.device, dtype=stats_dtype)
    round_sum = torch.empty((n_batch, n_hashes, length), device=v.device, dtype=stats_dtype)
    outputs = (O, round_max, round_sum)

    block_d = max(16, triton.next_power_of_2(match_channels))
    block_c = max(16, triton.next_power_of_2(value_channels))
    if config is None:
        def trial(candidate):
            launches, _ = window_attn_fwd_plan(q, v, learned, perm, chunk_size, precision, candidate)
            return run(launches)

        config = pick_config(
            "window_attn_fwd", WINDOW_ATTN_FWD_CONFIGS[dot_family(dtype, precision)],
            (dtype, value_channels, match_channels, chunk_size, precision), v.device,
            lambda c: 16 <= c.kwargs["BLOCK_M"] <= chunk_size and 16 <= c.kwargs["BLOCK_N"] <= chunk_size,
            trial)
    block_m = config.kwargs["BLOCK_M"]
    grid = (triton.cdiv(length, block_m), n_batch * n_hashes)
    # Every program runs its BLOCK_M query rows (padded slots included) against the 3l window keys
    # over BLOCK_D score and BLOCK_C value columns; exp/max/scaling are not counted.
    flops = grid[0] * grid[1] * 3 * chunk_size * 2 * block_m * (block_d + block_c)
    launch = Launch(
        kernel=_window_attn_fwd_kernel, grid=grid,
        args=dict(Q=q, V=v, LEARNED=learned, PERM=perm, O=O, ROUND_MAX=round_max, ROUND_SUM=round_sum,
                  length=length, padded_length=padded_length, n_chunks=padded_length // chunk_size,
                  n_hashes=n_hashes, match_channels=match_channels, value_channels=value_channels),
        constexprs=dict(CHUNK=chunk_size, **config_blocks(config), BLOCK_D=block_d, BLOCK_C=block_c, **dots),
        num_warps=config.num_warps, num_stages=config.num_stages, flops=flops, name="window_attn_fwd")
    return [launch], outputs


def window_attn_fwd(q, v, learned, perm, chunk_size, precision="ieee"):
    """q [N, L, c], v [N, L, C], learned [N, L, l] (one float dtype, contiguous), perm [N, h, Lp] int32
    -> (O [N, h, L, C] in v's dtype, round_max [N, h, L], round_sum [N, h, L]) (float32; float64
    for float64 inputs). `precision` ("ieee", "tf32", "tf32x3") is the float32 dots' input precision.
    lse = round_max + log(round_sum)."""
    launches, outputs = window_attn_fwd_plan(q, v, learned, perm, chunk_size, precision)
    run(launches)
    return outputs
