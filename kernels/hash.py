"""SB-LSH hashing: fused fp32 projection + argmax for all hash rounds in one launch.

`codes[n, r, i] = argmax_k (q[n, i] . R[r, :, k])` over the finite projections, ties -> lowest k
(docs/gla.md §2); a non-finite projection (NaN, +-inf) is never the maximum, and a row whose
projections are all non-finite goes to bucket 0 (the reference does the same).
Inputs are not validated here: the op layer checks them before launching.
"""
import torch
import triton
import triton.language as tl

from .launch import Config, Launch, config_blocks, pick_config, run


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
    operand in registers, so any c fits. Non-finite projections become -inf before the argmax, so
    they never win and the reduction never sees a NaN; the running (max, argmax) over bucket tiles
    takes a later tile only when it is strictly larger, which keeps ties on the lowest bucket (as
    tl.max does inside a tile) and leaves an all-(-inf) row on bucket 0.
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
            # |x| < inf is false for NaN and +-inf alike.
            eligible = bucket_mask[None, :] & (tl.abs(projected) < float("inf"))
            projected = tl.where(eligible, projected, float("-inf"))
            tile_value, tile_index = tl.max(projected, axis=1, return_indices=True, return_indices_tie_break_left=True)
            take = tile_value > best_value
            best_value = tl.where(take, tile_value, best_value)
            best_index = tl.where(take, b0 + tile_index, best_index)
        tl.store(CODES + (n * n_hashes + r) * length + rows, best_index, mask=row_mask)


# Position x bucket tiles; the bucket tile is clamped to next_power_of_2(b) (no all-masked columns).
SBLSH_HASH_FWD_CONFIGS = [
    Config({"BLOCK_L": 128, "BLOCK_B": 32}, num_warps=4, num_stages=1),
    Config({"BLOCK_L": 64, "BLOCK_B": 32}, num_warps=4, num_stages=1),
    Config({"BLOCK_L": 256, "BLOCK_B": 32}, num_warps=8, num_stages=1),
    Config({"BLOCK_L": 128, "BLOCK_B": 64}, num_warps=8, num_stages=1),
    Config({"BLOCK_L": 64, "BLOCK_B": 128}, num_warps=8, num_stages=1),
]


def sblsh_hash_fwd_min_flops(n_batch, length, match_channels, n_hashes, n_buckets):
    """FLOPs of the projection itself: one c-long dot per (position, round, bucket)."""
    return 2 * n_batch * length * n_hashes * n_buckets * match_channels


def sblsh_hash_fwd_plan(q, rotations, config=None):
    """Plan of `sblsh_hash_fwd` (see kernels/launch.py): ([Launch], codes)."""
    n_batch, length, match_channels = q.shape
    n_hashes, _, n_buckets = rotations.shape
    codes = torch.empty((n_batch, n_hashes, length), device=q.device, dtype=torch.int32)
    if config is None:
        def trial(candidate):
            return run(sblsh_hash_fwd_plan(q, rotations, candidate)[0])

        config = pick_config("sblsh_hash_fwd", SBLSH_HASH_FWD_CONFIGS, (q.dtype, match_channels, n_buckets),
                             q.device, lambda c: c.kwargs["BLOCK_B"] <= max(32, triton.next_power_of_2(n_buckets)),
                             trial)
    blocks = config_blocks(config)
    blocks["BLOCK_B"] = min(blocks["BLOCK_B"], triton.next_power_of_2(n_buckets))
    grid = (triton.cdiv(length, blocks["BLOCK_L"]), n_batch)
    bucket_tiles = triton.cdiv(n_buckets, blocks["BLOCK_B"])
    flops = 2 * grid[0] * grid[1] * n_hashes * bucket_tiles * blocks["BLOCK_B"] * blocks["BLOCK_L"] * match_channels
    launch = Launch(
        kernel=_sblsh_hash_fwd_kernel, grid=grid,
        args=dict(Q=q, R=rotations, CODES=codes, length=length, n_hashes=n_hashes,
                  match_channels=match_channels, n_buckets=n_buckets),
        constexprs=blocks, num_warps=config.num_warps, num_stages=config.num_stages, flops=flops,
        name="sblsh_hash_fwd")
    return [launch], codes


def sblsh_hash_fwd(q, rotations):
    """q [N, L, c] (float, contiguous), rotations [h, c, b] float32 contiguous -> codes [N, h, L] int32."""
    launches, codes = sblsh_hash_fwd_plan(q, rotations)
    run(launches)
    return codes
