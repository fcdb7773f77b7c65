"""SB-LSH hashing: fused fp32 projection + argmax for all hash rounds in one launch.

`codes[n, r, i] = argmax_k (q[n, i] . R[r, :, k])`, ties -> lowest k (contract section 2).
Inputs are not validated here: `dlsn.ops.fused.triton_hash` checks them before launching.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _sblsh_hash_fwd_kernel(
    Q, R, CODES,
    length, n_hashes, match_channels, n_buckets,
    BLOCK_L: tl.constexpr, BLOCK_B: tl.constexpr,
):
    """One program per (batch, tile of BLOCK_L positions); loops over rounds and bucket tiles.

    The projection tile [BLOCK_L, BLOCK_B] lives only in registers. It is accumulated as a sum of
    outer products over the channels in float32 FMAs (no tensor cores, so no TF32: a flipped argmax
    moves a position to another bucket); unlike an fp32 tl.dot this does not hold a [BLOCK_L, c]
    operand in registers, so any c fits. The running (max, argmax) over bucket tiles takes a later
    tile only when it is strictly larger, which keeps ties on the lowest bucket (as tl.max does
    inside a tile).
    """
    pid_l = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    rows = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    row_mask = rows < length
    q_rows = Q + n * length * match_channels + rows.to(tl.int64) * match_channels
    buckets = tl.arange(0, BLOCK_B)
    for r in range(n_hashes):
        best_value = tl.full([BLOCK_L], float("-inf"), tl.float32)
        best_index = tl.zeros([BLOCK_L], tl.int32)
        for b0 in range(0, n_buckets, BLOCK_B):
            bucket_mask = (b0 + buckets) < n_buckets
            projected = tl.zeros([BLOCK_L, BLOCK_B], tl.float32)
            for d in range(match_channels):
                q_col = tl.load(q_rows + d, mask=row_mask, other=0.0).to(tl.float32)
                rot_row = tl.load(R + (r * match_channels + d) * n_buckets + b0 + buckets, mask=bucket_mask, other=0.0)
                projected += q_col[:, None] * rot_row[None, :]
            projected = tl.where(bucket_mask[None, :], projected, float("-inf"))
            tile_value, tile_index = tl.max(projected, axis=1, return_indices=True, return_indices_tie_break_left=True)
            take = tile_value > best_value
            best_value = tl.where(take, tile_value, best_value)
            best_index = tl.where(take, b0 + tile_index, best_index)
        tl.store(CODES + (n * n_hashes + r) * length + rows, best_index, mask=row_mask)


def sblsh_hash_fwd(q, rotations):
    """q [N, L, c] (float, contiguous), rotations [h, c, b] float32 contiguous -> codes [N, h, L] int32."""
    n_batch, length, match_channels = q.shape
    n_hashes, _, n_buckets = rotations.shape
    codes = torch.empty((n_batch, n_hashes, length), device=q.device, dtype=torch.int32)
    block_b = min(32, triton.next_power_of_2(n_buckets))
    block_l = 128
    grid = (triton.cdiv(length, block_l), n_batch)
    _sblsh_hash_fwd_kernel[grid](
        q, rotations, codes, length, n_hashes, match_channels, n_buckets,
        BLOCK_L=block_l, BLOCK_B=block_b, num_warps=4,
    )
    return codes
