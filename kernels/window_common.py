"""Window math shared by the forward and every backward kernel of the blocked window attention.

The backward recomputes the forward's probabilities instead of saving them; it reproduces them
exactly only if both passes evaluate the scores with the same code, so the pieces of that
computation live here once: which chunks a window lists, the per-(batch, round) row pointers, the
normalised keys, the dot with its precision handling, and the score itself.

For a query slot `t` (chunk `k = t // l`, `i = t mod l`) and a key slot `j` of its window:

    key_j = q[perm j] / max(||q[perm j]||_2, KEY_NORM_EPS)
    s_tj  = q[perm t] . key_j + learned[perm j, i]

The window of chunk `k` lists chunks k, k + 1, k - 1 (mod nC), in that order (the published order).
"""
import torch
import triton
import triton.language as tl

from .constants import KEY_NORM_EPS, effective_precision

_KEY_NORM_EPS = tl.constexpr(KEY_NORM_EPS)


@triton.jit
def key_chunk_of_listing(query_chunk, listing, n_chunks):
    """Chunk listed `listing` = 0, 1, 2 in the window of `query_chunk`: k, k + 1, k - 1 (mod nC)."""
    return (query_chunk + listing - 3 * (listing // 2) + n_chunks) % n_chunks


@triton.jit
def query_chunk_of_listing(key_chunk, listing, n_chunks):
    """Query chunk whose window lists `key_chunk` as its listing 0, 1, 2: the inverse of the above."""
    return (key_chunk - listing + 3 * (listing // 2) + n_chunks) % n_chunks


@triton.jit
def round_rows(Q, V, LEARNED, PERM, nr, n_hashes, length, padded_length, match_channels, value_channels,
               CHUNK: tl.constexpr):
    """Pointers of program (batch x round) `nr` (int64): its perm row and batch n's rows of q, v, learned.
    Rows are `[L, width]` blocks of contiguous `[N, L, width]` tensors; `V` also serves any other
    `[N, L, C]` tensor (the backward's output gradient)."""
    n = nr // n_hashes
    perm_row = PERM + nr * padded_length
    q_rows = Q + n * length * match_channels
    v_rows = V + n * length * value_channels
    learned_rows = LEARNED + n * length * CHUNK
    return n, perm_row, q_rows, v_rows, learned_rows


@triton.jit
def window_dot(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr):
    """a @ b accumulated in ACC. float32 operands use PRECISION ("ieee", "tf32" or "tf32x3");
    16-bit operands use 16-bit tensor-core dots (PRECISION does not apply).

    UPCAST multiplies float32 copies of the operands instead: exact products and float32 sums of
    the same values, which is what the 16-bit tensor-core dot computes. Launchers set it only for
    bfloat16 on the CPU interpreter, whose dot multiplies bfloat16 operands as raw integers.
    """
    if UPCAST:
        result = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee", out_dtype=ACC)
    else:
        result = tl.dot(a, b, input_precision=PRECISION, out_dtype=ACC)
    return result


@triton.jit
def load_keys(q_rows, key_pos, dims, dim_mask, match_channels, ACC: tl.constexpr):
    """Rows q[key_pos] / max(||q||, KEY_NORM_EPS), normalised in ACC: [BLOCK_N, BLOCK_D]."""
    key = tl.load(q_rows + key_pos[:, None] * match_channels + dims[None, :],
                  mask=dim_mask[None, :], other=0.0).to(ACC)
    norm = tl.sqrt(tl.sum(key * key, axis=1))
    return key / tl.maximum(norm, _KEY_NORM_EPS)[:, None]


@triton.jit
def window_scores(q, key, learned_rows, key_pos, query_in_chunk, CHUNK: tl.constexpr,
                  PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr):
    """s [BLOCK_M, BLOCK_N] = q . key^T + learned[key_pos, query_in_chunk] in ACC; the keys enter the dot
    rounded to q's dtype (the 16-bit dot's operand)."""
    scores = window_dot(q, tl.trans(key.to(q.dtype)), PRECISION, UPCAST, ACC)
    scores += tl.load(learned_rows + key_pos[None, :] * CHUNK + query_in_chunk[:, None]).to(ACC)
    return scores


def accumulation_dtype(dtype):
    """The dtype the kernels accumulate `dtype` inputs in: float64 for float64 (gradcheck), else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def dot_constexprs(x, precision):
    """PRECISION, UPCAST and ACC of window_dot / window_scores for inputs like `x` and float32 dots of
    `precision` (ValueError for an unknown one)."""
    return dict(PRECISION=effective_precision(x.dtype, precision),
                UPCAST=x.device.type == "cpu" and x.dtype == torch.bfloat16,
                ACC=tl.float64 if x.dtype == torch.float64 else tl.float32)
