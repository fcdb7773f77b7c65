"""Stable counting sort of positions by hash code, per (batch, round), with the padded slots.

For each (n, r): `perm[s]` = original position at sorted slot `s` (equal codes keep ascending
position order), padded slots `s in [L, Lp)` repeat slot `(s - p) mod L`; `inv[perm[s]] = s` for
`s < L` (docs/gla.md §3, docs/internals.md). No comparison sort: histogram, prefix sum, rank.

Three steps, each parallel over (position tile, batch x round):
1. `_bucket_histogram_kernel`: per-tile bucket counts `hist[nr, tile, b]`.
2. Exclusive prefix sums in PyTorch on the small `[N*h, tiles, b]` table: the first slot of bucket
   `b` in tile `tile` is (positions in lower buckets) + (positions of bucket `b` in earlier tiles).
3. `_bucket_sort_fwd_kernel`: rank of each position among equal codes of its tile (a cumulative
   sum of the one-hot codes), slot = start + rank; scatter `perm`, `inv` and the padded copies.
Inputs are not validated here: the op layer checks them before launching.
"""
import torch
import triton
import triton.language as tl

from .launch import Config, Launch, pick_config, run


@triton.jit
def _bucket_histogram_kernel(
    CODES, HIST, length, n_buckets, n_tiles,
    BLOCK_L: tl.constexpr, BLOCK_B: tl.constexpr,
):
    """hist[nr, tile, k] = #{i in tile : codes[nr, i] == k}."""
    tile = tl.program_id(0)
    nr = tl.program_id(1).to(tl.int64)
    rows = tile * BLOCK_L + tl.arange(0, BLOCK_L)
    # -1 matches no bucket, so rows past the end count nowhere.
    code = tl.load(CODES + nr * length + rows, mask=rows < length, other=-1)
    buckets = tl.arange(0, BLOCK_B)
    one_hot = (code[:, None] == buckets[None, :]).to(tl.int32)
    tl.store(HIST + (nr * n_tiles + tile) * n_buckets + buckets, tl.sum(one_hot, axis=0), mask=buckets < n_buckets)


@triton.jit
def _bucket_sort_fwd_kernel(
    CODES, STARTS, PERM, INV,
    length, padded_length, pad, n_buckets, n_tiles, n_pad_copies,
    BLOCK_L: tl.constexpr, BLOCK_B: tl.constexpr,
):
    """slot(i) = starts[nr, tile, code_i] + #{j in tile, j < i : code_j == code_i}.

    Padded slot `t in [L, Lp)` holds the position of slot `(t - p) mod L`, so the position at slot
    `s` is also written to every `t = s + p - m*L` in `[L, Lp)` (m = 0 .. n_pad_copies - 1; more than
    one copy only when p > L).
    """
    tile = tl.program_id(0)
    nr = tl.program_id(1).to(tl.int64)
    rows = tile * BLOCK_L + tl.arange(0, BLOCK_L)
    row_mask = rows < length
    code = tl.load(CODES + nr * length + rows, mask=row_mask, other=-1)
    buckets = tl.arange(0, BLOCK_B)
    starts = tl.load(STARTS + (nr * n_tiles + tile) * n_buckets + buckets, mask=buckets < n_buckets, other=0)
    hit = code[:, None] == buckets[None, :]
    inclusive_rank = tl.cumsum(hit.to(tl.int32), axis=0)
    slot = tl.sum(tl.where(hit, starts[None, :] + inclusive_rank - 1, 0), axis=1)
    tl.store(INV + nr * length + rows, slot, mask=row_mask)
    perm_row = PERM + nr * padded_length
    tl.store(perm_row + slot, rows, mask=row_mask)
    for m in range(n_pad_copies):
        padded_slot = slot + pad - m * length
        tl.store(perm_row + padded_slot, rows,
                 mask=row_mask & (padded_slot >= length) & (padded_slot < padded_length))


# Position tiles; the one-hot tile [BLOCK_L, next_power_of_2(b)] must stay near 16K elements, except
# that 16-row tiles are always allowed (any bucket count sorts).
BUCKET_SORT_FWD_CONFIGS = [
    Config({"BLOCK_L": 256}, num_warps=4, num_stages=1),
    Config({"BLOCK_L": 128}, num_warps=4, num_stages=1),
    Config({"BLOCK_L": 64}, num_warps=4, num_stages=1),
    Config({"BLOCK_L": 32}, num_warps=4, num_stages=1),
    Config({"BLOCK_L": 16}, num_warps=4, num_stages=1),
]


def bucket_sort_fwd_plan(codes, n_buckets, chunk_size, config=None):
    """Plan of `bucket_sort_fwd` (see kernels/launch.py): ([histogram Launch, sort Launch],
    (perm, inv, hist, starts)). `starts` is the prefix-sum glue's output: the launcher fills it from
    `hist` between the two launches."""
    n_batch, n_hashes, length = codes.shape
    pad = (-length) % chunk_size
    padded_length = length + pad
    n_pad_copies = (pad - 1) // length + 1 if pad else 0
    block_b = triton.next_power_of_2(n_buckets)
    if config is None:
        def trial(candidate):
            return _bucket_sort(codes, n_buckets, chunk_size, candidate)[2]

        config = pick_config("bucket_sort_fwd", BUCKET_SORT_FWD_CONFIGS, (n_buckets, chunk_size), codes.device,
                             lambda c: c.kwargs["BLOCK_L"] * block_b <= 16384 or c.kwargs["BLOCK_L"] == 16, trial)
    block_l = config.kwargs["BLOCK_L"]
    n_tiles = triton.cdiv(length, block_l)
    grid = (n_tiles, n_batch * n_hashes)
    hist = torch.empty((n_batch * n_hashes, n_tiles, n_buckets), device=codes.device, dtype=torch.int32)
    starts = torch.empty_like(hist)
    perm = torch.empty((n_batch, n_hashes, padded_length), device=codes.device, dtype=torch.int32)
    inv = torch.empty((n_batch, n_hashes, length), device=codes.device, dtype=torch.int32)
    blocks = dict(BLOCK_L=block_l, BLOCK_B=block_b)
    histogram = Launch(
        kernel=_bucket_histogram_kernel, grid=grid,
        args=dict(CODES=codes, HIST=hist, length=length, n_buckets=n_buckets, n_tiles=n_tiles),
        constexprs=blocks, num_warps=config.num_warps, num_stages=config.num_stages, name="bucket_histogram")
    sort = Launch(
        kernel=_bucket_sort_fwd_kernel, grid=grid,
        args=dict(CODES=codes, STARTS=starts, PERM=perm, INV=inv, length=length, padded_length=padded_length,
                  pad=pad, n_buckets=n_buckets, n_tiles=n_tiles, n_pad_copies=n_pad_copies),
        constexprs=blocks, num_warps=config.num_warps, num_stages=config.num_stages, name="bucket_sort_fwd")
    return [histogram, sort], (perm, inv, hist, starts)


def _bucket_sort(codes, n_buckets, chunk_size, config):
    (histogram, sort), (perm, inv, hist, starts) = bucket_sort_fwd_plan(codes, n_buckets, chunk_size, config)
    kernels = run([histogram])
    totals = hist.sum(dim=1, keepdim=True)
    starts.copy_((totals.cumsum(dim=2) - totals) + (hist.cumsum(dim=1) - hist))
    kernels += run([sort])
    return perm, inv, kernels


def bucket_sort_fwd(codes, n_buckets, chunk_size):
    """codes [N, h, L] int32/int64 in [0, n_buckets), contiguous -> (perm [N, h, Lp] int32, inv [N, h, L] int32)."""
    perm, inv, _ = _bucket_sort(codes, n_buckets, chunk_size, None)
    return perm, inv
