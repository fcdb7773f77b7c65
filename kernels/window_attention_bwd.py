"""Backward of the blocked window attention (docs/gla.md §4-§5, docs/internals.md stage 5).

One softmax over all rounds, normalised as the forward's round merge normalises it: with
`lse_max[pos] = max_r round_max_r[pos]` and `lse_sum[pos] = sum_r round_sum_r[pos] exp(round_max_r[pos]
- lse_max[pos])` (interface 2), `g` the gradient of the merged output `out` and
`D[pos] = g[pos] . out[pos]`, for every round, real query slot `t < L` (`i = t mod l`) and key slot
`j` of its window (each multiset listing separately):

    P_tj  = exp(s_tj - lse_max[perm t]) / lse_sum[perm t]
    dS_tj = P_tj * (g[perm t] . v[perm j] - D[perm t])
    dv[perm j]    += P_tj g[perm t]
    dkey[perm j]  += dS_tj q[perm t]            then dq += d normalize(q) (dkey)
    dq[perm t]    += dS_tj key[perm j]
    dlearned[perm j, i] += dS_tj

`s - lse_max` is exact to the scores' own rounding at any magnitude (subtracting an `LSE` rounded
to float32 is not: an error of |LSE| 2^-24 in every exponent).

Two passes over key blocks, each program covering every query of the three windows that list its
keys (query chunks kc, kc - 1, kc + 1 mod nC; the same chunk several times when nC < 3):
- `_window_attn_bwd_dv_kernel`: S, P, dv += P^T g over all C value columns at once;
  2 (c + C) FLOPs per score element.
- `_window_attn_bwd_dkdq_kernel`: S, P, dP = g v^T (C reduced in BLOCK_C tiles), dS, then dkey, dlearned
  and this key block's share of dq (dS key), written to a transient per-(query slot, key block)
  buffer; 2 (3c + C) FLOPs per score element.
Together 2 (4c + 2C) per score element against the minimal 2 (3c + 2C) (S, dP, dV, dK, dQ once
each): 1.09x at c = 64, C = 256.
Deterministic, no atomics: every buffer row is written by exactly one program, and
`_fold_slots_kernel` reduces the buffers to positions in a fixed order (rounds ascending, then each
slot's dq parts in key-block order or its padded duplicates in order). Accumulation in float32
(float64 for float64 inputs, which exists for gradcheck).

Transient buffers (float32; allocated per call, nothing is kept): dv, dlearned and dkey slots N h Lp (C + l + c)
and the dq parts N h L (3 l / BLOCK_N) c. At the training shape (N = 16, h = 3, L = Lp = 2304,
C = 256, c = 64, l = 128) that is 198 MB of slots plus dq parts of 340 MB ("fma" configs, 32-key
blocks), 170 MB ("tf32" and "tf32x3", 64) or 85 MB ("16-bit", 128); at the inference shape
(N = 1, 512 x 512) 1.4 GB of slots and 2.4 / 1.2 / 0.6 GB of dq parts.
"""
import torch
import triton
import triton.language as tl

from .constants import KEY_NORM_EPS, dot_family
from .launch import Config, Launch, config_blocks, pick_config, run
from .window_common import (accumulation_dtype, dot_constexprs, load_keys, query_chunk_of_listing, round_rows,
                            window_dot, window_scores)


@triton.jit
def _probabilities(q, key, learned_rows, key_pos, query_in_chunk, query_pos, query_mask, LSE_MAX, LSE_SUM,
                   CHUNK: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr):
    """P [BLOCK_M, BLOCK_N] = exp(q . key + learned[key, i] - lse_max[query]) / lse_sum[query]; 0 on padded
    query rows."""
    scores = window_scores(q, key, learned_rows, key_pos, query_in_chunk, CHUNK, PRECISION, UPCAST, ACC)
    row_max = tl.load(LSE_MAX + query_pos, mask=query_mask, other=0.0).to(ACC)
    row_scale = 1.0 / tl.load(LSE_SUM + query_pos, mask=query_mask, other=1.0).to(ACC)
    return tl.where(query_mask[:, None], tl.exp(scores - row_max[:, None]) * row_scale[:, None], 0.0)


@triton.jit
def _window_attn_bwd_dv_kernel(
    Q, LEARNED, G, PERM, LSE_MAX, LSE_SUM, DV_SLOT,
    length, padded_length, n_chunks, n_hashes, match_channels, value_channels,
    CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_C: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr,
):
    """DV_SLOT[n, r, j, :] = sum over the windows holding key slot j of P_tj g[perm t, :], all value
    columns in one program (BLOCK_C >= C), so P is computed once. Grid: (nC * CHUNK / BLOCK_N, N * h)."""
    pid_k = tl.program_id(0)
    nr = tl.program_id(1).to(tl.int64)
    n, perm_row, q_rows, g_rows, learned_rows = round_rows(Q, G, LEARNED, PERM, nr, n_hashes, length,
                                                           padded_length, match_channels, value_channels, CHUNK)
    blocks_per_chunk: tl.constexpr = CHUNK // BLOCK_N
    key_chunk = pid_k // blocks_per_chunk
    key_slot = key_chunk * CHUNK + (pid_k % blocks_per_chunk) * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < match_channels
    cols = tl.arange(0, BLOCK_C)
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
        p = _probabilities(q, key, learned_rows, key_pos, query_in_chunk, query_pos, query_mask,
                           LSE_MAX + n * length, LSE_SUM + n * length, CHUNK, PRECISION, UPCAST, ACC)
        g = tl.load(g_rows + query_pos[:, None] * value_channels + cols[None, :],
                    mask=query_mask[:, None] & col_mask[None, :], other=0.0)
        dv += window_dot(tl.trans(p).to(g.dtype), g, PRECISION, UPCAST, ACC)
    tl.store(DV_SLOT + (nr * padded_length + key_slot[:, None]) * value_channels + cols[None, :], dv,
             mask=col_mask[None, :])


@triton.jit
def _window_attn_bwd_dkdq_kernel(
    Q, V, LEARNED, G, PERM, LSE_MAX, LSE_SUM, DELTA, DKEY_SLOT, DLEARNED_SLOT, DQ_PARTS,
    length, padded_length, n_chunks, n_hashes, match_channels, value_channels,
    CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_C: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr,
):
    """For key block b of key chunk kc and the query chunks listing it (listing 0, 1, 2):
    DKEY_SLOT[n, r, j] = sum dS_tj q[perm t] (gradient of the normalised key),
    DLEARNED_SLOT[n, r, j, i] = sum dS_tj, and DQ_PARTS[n, r, t, listing * CHUNK / BLOCK_N + b] =
    sum_{j in block} dS_tj key[perm j] (each (query slot, part) written by one program).
    Grid: (nC * CHUNK / BLOCK_N, N * h)."""
    pid_k = tl.program_id(0)
    nr = tl.program_id(1).to(tl.int64)
    n, perm_row, q_rows, v_rows, learned_rows = round_rows(Q, V, LEARNED, PERM, nr, n_hashes, length,
                                                           padded_length, match_channels, value_channels, CHUNK)
    g_rows = G + n * length * value_channels
    blocks_per_chunk: tl.constexpr = CHUNK // BLOCK_N
    n_parts: tl.constexpr = 3 * blocks_per_chunk
    key_chunk = pid_k // blocks_per_chunk
    key_block = pid_k % blocks_per_chunk
    key_slot = key_chunk * CHUNK + key_block * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < match_channels

    key_pos = tl.load(perm_row + key_slot).to(tl.int64)
    key = load_keys(q_rows, key_pos, dims, dim_mask, match_channels, ACC)
    dkey = tl.zeros([BLOCK_N, BLOCK_D], ACC)
    # Outer loop over query rows i of a chunk, inner over the three listings: dlearned[j, i] is complete
    # after the inner loop and is stored once.
    for query_block in range(CHUNK // BLOCK_M):
        query_in_chunk = query_block * BLOCK_M + tl.arange(0, BLOCK_M)
        dlearned = tl.zeros([BLOCK_M, BLOCK_N], ACC)
        for listing in range(3):
            query_slot = query_chunk_of_listing(key_chunk, listing, n_chunks) * CHUNK + query_in_chunk
            query_mask = query_slot < length
            query_pos = tl.load(perm_row + query_slot, mask=query_mask, other=0).to(tl.int64)
            q = tl.load(q_rows + query_pos[:, None] * match_channels + dims[None, :],
                        mask=query_mask[:, None] & dim_mask[None, :], other=0.0)
            p = _probabilities(q, key, learned_rows, key_pos, query_in_chunk, query_pos, query_mask,
                               LSE_MAX + n * length, LSE_SUM + n * length, CHUNK, PRECISION, UPCAST, ACC)
            dp = tl.zeros([BLOCK_M, BLOCK_N], ACC)
            for col_start in range(0, value_channels, BLOCK_C):
                cols = col_start + tl.arange(0, BLOCK_C)
                col_mask = cols < value_channels
                g = tl.load(g_rows + query_pos[:, None] * value_channels + cols[None, :],
                            mask=query_mask[:, None] & col_mask[None, :], other=0.0)
                v = tl.load(v_rows + key_pos[:, None] * value_channels + cols[None, :],
                            mask=col_mask[None, :], other=0.0)
                dp += window_dot(g, tl.trans(v.to(g.dtype)), PRECISION, UPCAST, ACC)
            delta = tl.load(DELTA + n * length + query_pos, mask=query_mask, other=0.0).to(ACC)
            ds = p * (dp - delta[:, None])
            dkey += window_dot(tl.trans(ds).to(q.dtype), q, PRECISION, UPCAST, ACC)
            dlearned += ds
            dq_part = window_dot(ds.to(q.dtype), key.to(q.dtype), PRECISION, UPCAST, ACC)
            part = listing * blocks_per_chunk + key_block
            tl.store(DQ_PARTS + ((nr * length + query_slot[:, None]) * n_parts + part) * match_channels + dims[None, :],
                     dq_part, mask=query_mask[:, None] & dim_mask[None, :])
        tl.store(DLEARNED_SLOT + (nr * padded_length + key_slot[None, :]) * CHUNK + query_in_chunk[:, None], dlearned)
    tl.store(DKEY_SLOT + (nr * padded_length + key_slot[:, None]) * match_channels + dims[None, :], dkey,
             mask=dim_mask[None, :])


@triton.jit
def _fold_slots_kernel(
    SLOT, INV, OUT, length, slot_rows, n_hashes, width, n_duplicates,
    N_PARTS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """OUT[n, pos, :width] = sum_r (sum_k SLOT[n, r, inv[n, r, pos], k] + its padded duplicates), in a
    fixed order; SLOT is [N, h, slot_rows, N_PARTS, width]. Padded slot L + m repeats slot (m - p) mod L,
    so slot s has duplicates L + m for m = (s + p) mod L + k L < p, p = slot_rows - L.
    Grid: (cdiv(L, BLOCK_P), N, cdiv(width, BLOCK_W))."""
    positions = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.program_id(1).to(tl.int64)
    cols = tl.program_id(2) * BLOCK_W + tl.arange(0, BLOCK_W)
    pos_mask = positions < length
    mask = pos_mask[:, None] & (cols < width)[None, :]
    pad = slot_rows - length
    acc = tl.zeros([BLOCK_P, BLOCK_W], SLOT.dtype.element_ty)
    for r in range(n_hashes):
        nr = n * n_hashes + r
        slot = tl.load(INV + nr * length + positions, mask=pos_mask, other=0).to(tl.int64)
        for k in range(N_PARTS):
            acc += tl.load(SLOT + ((nr * slot_rows + slot[:, None]) * N_PARTS + k) * width + cols[None, :],
                           mask=mask, other=0.0)
        for k in range(n_duplicates):
            m = (slot + pad) % length + k * length
            dup_mask = mask & (m < pad)[:, None]
            acc += tl.load(SLOT + ((nr * slot_rows + length + m[:, None]) * N_PARTS) * width + cols[None, :],
                           mask=dup_mask, other=0.0)
    tl.store(OUT + (n * length + positions[:, None]) * width + cols[None, :], acc, mask=mask)


def _fold_launch(slot_grad, inv, out, name):
    """Launch folding [N, h, rows, parts, width] slot gradients into out [N, L, width]."""
    n_batch, n_hashes, slot_rows, n_parts, width = slot_grad.shape
    length = inv.shape[2]
    block_p, block_w = 32, min(64, triton.next_power_of_2(width))
    n_duplicates = triton.cdiv(slot_rows - length, length)
    return Launch(
        _fold_slots_kernel, (triton.cdiv(length, block_p), n_batch, triton.cdiv(width, block_w)),
        dict(SLOT=slot_grad, INV=inv, OUT=out, length=length, slot_rows=slot_rows, n_hashes=n_hashes,
             width=width, n_duplicates=n_duplicates),
        dict(N_PARTS=n_parts, BLOCK_P=block_p, BLOCK_W=block_w), num_warps=4, num_stages=1,
        flops=n_batch * length * width * n_hashes * (n_parts + n_duplicates), name=name)


def _key_normalization_backward(q, dkey):
    """Gradient w.r.t. q of key = q / max(||q||, eps), given dkey (accumulation dtype)."""
    q = q.to(dkey.dtype)
    norm = q.norm(dim=-1, keepdim=True)
    key = q / norm.clamp_min(KEY_NORM_EPS)
    projected = (dkey - key * (key * dkey).sum(-1, keepdim=True)) / norm.clamp_min(KEY_NORM_EPS)
    return torch.where(norm > KEY_NORM_EPS, projected, dkey / KEY_NORM_EPS)


# Candidate tiles per kernel and dot family (kernels/constants.py), in order of preference;
# `pick_config` keeps those that fit the problem (tiles >= 16 dividing the chunk) and, on a GPU,
# times them. The first of each list compiles without register spills for sm_80 and sm_90a at the
# training, inference and demo shapes in every dtype and precision of its family
# (bench/compile_report.py); the last, 16 x 16 tiles, is there for chunk 16. "fma" dots run on
# register operands, hence small tiles and 8 warps; "tf32x3" (three TF32 dots per dot) compiles
# spill-free on the "tf32" tiles, so the two share a list. The dkdq kernel's BLOCK_N sets the dq
# buffer: 3 CHUNK / BLOCK_N parts per query slot.
_DV_TF32 = [Config(dict(BLOCK_N=64, BLOCK_M=32), num_warps=8, num_stages=1),
            Config(dict(BLOCK_N=16, BLOCK_M=16), num_warps=4, num_stages=1)]
_DKDQ_TF32 = [Config(dict(BLOCK_N=64, BLOCK_M=32, BLOCK_C=32), num_warps=8, num_stages=1),
              Config(dict(BLOCK_N=16, BLOCK_M=16, BLOCK_C=32), num_warps=4, num_stages=1)]
DV_CONFIGS = {
    "fma": [Config(dict(BLOCK_N=16, BLOCK_M=16), num_warps=8, num_stages=1),
            Config(dict(BLOCK_N=16, BLOCK_M=16), num_warps=16, num_stages=1)],
    "tf32": _DV_TF32,
    "tf32x3": _DV_TF32,
    "16-bit": [Config(dict(BLOCK_N=64, BLOCK_M=64), num_warps=8, num_stages=1),
               Config(dict(BLOCK_N=64, BLOCK_M=32), num_warps=8, num_stages=1),
               Config(dict(BLOCK_N=16, BLOCK_M=16), num_warps=4, num_stages=1)],
}
DKDQ_CONFIGS = {
    "fma": [Config(dict(BLOCK_N=32, BLOCK_M=16, BLOCK_C=32), num_warps=8, num_stages=1),
            Config(dict(BLOCK_N=16, BLOCK_M=16, BLOCK_C=32), num_warps=8, num_stages=1)],
    "tf32": _DKDQ_TF32,
    "tf32x3": _DKDQ_TF32,
    "16-bit": [Config(dict(BLOCK_N=128, BLOCK_M=32, BLOCK_C=32), num_warps=8, num_stages=1),
               Config(dict(BLOCK_N=64, BLOCK_M=32, BLOCK_C=32), num_warps=8, num_stages=1),
               Config(dict(BLOCK_N=16, BLOCK_M=16, BLOCK_C=32), num_warps=4, num_stages=1)],
}


def _score_elements(n_batch, n_hashes, rows, chunk_size):
    """Score elements (query slot, window key) of `rows` query slots per (batch, round)."""
    return n_batch * n_hashes * rows * 3 * chunk_size


class _KeyBlockLaunches:
    """The dv and dkdq kernels' launches for one problem, built per config from inputs and slot
    buffers prepared once: the plan builds those of the configs it picks, tuning on a GPU one per
    candidate. FLOPs models (multiply-add = 2; padded block widths count): the dv kernel
    2 (BLOCK_D + BLOCK_C), the dkdq kernel 2 (3 BLOCK_D + C rounded up to BLOCK_C) per score
    element of every slot t < Lp."""

    def __init__(self, q, v, learned, perm, g, D, lse_max, lse_sum, chunk_size, precision):
        self.n_batch, self.length, self.match_channels = q.shape
        self.value_channels = v.shape[2]
        _, self.n_hashes, padded_length = perm.shape
        self.q, self.v, self.chunk_size = q, v, chunk_size
        acc_dtype = accumulation_dtype(q.dtype)
        self.new = dict(device=q.device, dtype=acc_dtype)
        self.common = dict(CHUNK=chunk_size, BLOCK_D=max(16, triton.next_power_of_2(self.match_channels)),
                           **dot_constexprs(q, precision))
        self.shape_args = dict(length=self.length, padded_length=padded_length,
                               n_chunks=padded_length // chunk_size, n_hashes=self.n_hashes,
                               match_channels=self.match_channels, value_channels=self.value_channels)
        self.rows = dict(Q=q, LEARNED=learned, G=g.contiguous(), PERM=perm,
                         LSE_MAX=lse_max.to(acc_dtype).contiguous(), LSE_SUM=lse_sum.to(acc_dtype).contiguous())
        self.delta = D.to(acc_dtype).contiguous()
        # Key-side gradients per slot, as [N, h, Lp, parts = 1, width]: the layout the folds take.
        self.slots = {name: torch.empty((self.n_batch, self.n_hashes, padded_length, 1, width), **self.new)
                      for name, width in (("dv", self.value_channels), ("dkey", self.match_channels),
                                          ("dlearned", chunk_size))}
        self.elements = _score_elements(self.n_batch, self.n_hashes, padded_length, chunk_size)

    def _grid(self, cfg):
        return (self.shape_args["n_chunks"] * (self.chunk_size // cfg.kwargs["BLOCK_N"]), self.n_batch * self.n_hashes)

    def dv(self, cfg):
        block_c = max(16, triton.next_power_of_2(self.value_channels))
        return Launch(_window_attn_bwd_dv_kernel, self._grid(cfg),
                      dict(**self.rows, DV_SLOT=self.slots["dv"], **self.shape_args),
                      dict(**self.common, **config_blocks(cfg), BLOCK_C=block_c),
                      num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                      flops=2 * self.elements * (self.common["BLOCK_D"] + block_c), name="window_attn_bwd_dv")

    def dq_parts(self, cfg):
        """The dkdq kernel's dq buffer under `cfg`: [N, h, L, 3 CHUNK / BLOCK_N, c]."""
        n_parts = 3 * self.chunk_size // cfg.kwargs["BLOCK_N"]
        return torch.empty((self.n_batch, self.n_hashes, self.length, n_parts, self.match_channels), **self.new)

    def dkdq(self, cfg, dq_parts):
        block_c = cfg.kwargs["BLOCK_C"]
        return Launch(_window_attn_bwd_dkdq_kernel, self._grid(cfg),
                      dict(**self.rows, V=self.v, DELTA=self.delta, DKEY_SLOT=self.slots["dkey"],
                           DLEARNED_SLOT=self.slots["dlearned"], DQ_PARTS=dq_parts, **self.shape_args),
                      dict(**self.common, **config_blocks(cfg)), num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                      flops=2 * self.elements * (3 * self.common["BLOCK_D"]
                                                 + triton.cdiv(self.value_channels, block_c) * block_c),
                      name="window_attn_bwd_dkdq")

    def pick_configs(self):
        """{"dv": Config, "dkdq": Config}: `pick_config` over the lists of this problem's dot family."""
        dtype, precision = self.q.dtype, self.common["PRECISION"]
        key = (dtype, self.value_channels, self.match_channels, self.chunk_size, precision)
        family = dot_family(dtype, precision)

        def fits(cfg):
            return all(16 <= cfg.kwargs[b] <= self.chunk_size and self.chunk_size % cfg.kwargs[b] == 0
                       for b in ("BLOCK_N", "BLOCK_M"))

        return dict(
            dv=pick_config("window_attn_bwd_dv", DV_CONFIGS[family], key, self.q.device, fits,
                           lambda cfg: run([self.dv(cfg)])),
            dkdq=pick_config("window_attn_bwd_dkdq", DKDQ_CONFIGS[family], key, self.q.device, fits,
                             lambda cfg: run([self.dkdq(cfg, self.dq_parts(cfg))])))


def window_attn_bwd_plan(q, v, learned, perm, inv, g, D, lse_max, lse_sum, chunk_size, precision="ieee", config=None):
    """Launches of `window_attn_bwd` (see there for the arguments) and their outputs.

    `config`: None (each kernel's from `pick_config` over DV_CONFIGS / DKDQ_CONFIGS) or
    {"dv": Config, "dkdq": Config}.
    Returns (launches, outputs): outputs["dv"] [N, L, C], ["dlearned"] [N, L, l], ["dkey"] [N, L, c] and
    ["dq"] [N, L, c] (query role only) in the accumulation dtype, filled by running the launches: the
    two kernels (FLOPs models in `_KeyBlockLaunches`), then four folds (one add per element read).
    """
    kernels = _KeyBlockLaunches(q, v, learned, perm, g, D, lse_max, lse_sum, chunk_size, precision)
    if config is None:
        config = kernels.pick_configs()
    dq_parts = kernels.dq_parts(config["dkdq"])
    n_batch, length, match_channels = q.shape
    outputs = {name: torch.empty((n_batch, length, width), **kernels.new)
               for name, width in (("dv", v.shape[2]), ("dlearned", chunk_size), ("dkey", match_channels),
                                   ("dq", match_channels))}
    slots = dict(kernels.slots, dq=dq_parts)
    folds = [_fold_launch(slots[name], inv, outputs[name], f"window_attn_bwd_fold_{name}") for name in outputs]
    return [kernels.dv(config["dv"]), kernels.dkdq(config["dkdq"], dq_parts), *folds], outputs


def minimal_bwd_flops(n_batch, n_hashes, length, match_channels, value_channels, chunk_size):
    """FLOPs of the minimal backward: per score element of each real query slot, S (c), dP (C), dV (C),
    dK (c) and dQ (c) once each."""
    return 2 * _score_elements(n_batch, n_hashes, length, chunk_size) * (3 * match_channels + 2 * value_channels)


def window_attn_bwd(q, v, learned, perm, inv, g, D, lse_max, lse_sum, chunk_size, precision="ieee"):
    """Gradients of the merged window attention w.r.t. q, v and learned.

    Args:
        q [N, L, c], v [N, L, C], learned [N, L, l]: contiguous, one dtype (float32/bfloat16/float16;
            float64 for gradcheck).
        perm [N, h, Lp] int32 and inv [N, h, L] int32 from the bucket sort (contiguous).
        g [N, L, C] (dtype of v): gradient of `out`; D [N, L] = rowsum(g * out) from `attention_grad_rows`.
        lse_max, lse_sum [N, L] (float32; float64 for float64 inputs): the round merge's statistics,
            LSE = lse_max + log(lse_sum).
        chunk_size: power of two, 16..256.
        precision: input precision of the float32 dots ("ieee", "tf32", "tf32x3").
    Returns:
        dq [N, L, c], dv [N, L, C], dlearned [N, L, l] in the input dtype (float32 accumulation).
    Saves nothing; the transient buffers are listed in the module docstring.
    Inputs are not validated here: the op layer (`dlsn.ops`) checks them.
    """
    launches, out = window_attn_bwd_plan(q, v, learned, perm, inv, g, D, lse_max, lse_sum, chunk_size, precision)
    run(launches)
    dq = out["dq"] + _key_normalization_backward(q, out["dkey"])
    return dq.to(q.dtype), out["dv"].to(v.dtype), out["dlearned"].to(learned.dtype)
