"""Pure-PyTorch reference of Global Learnable Attention (contract: shared/design/GLA.md).

Every fused kernel is checked against these functions. They follow the contract literally, stage by
stage, so tests can drive each stage with injected inputs. They are device- and dtype-agnostic:
hashing projects in float32 (a flipped argmax moves a position to another bucket); everything else
runs in the dtype of its inputs, so a bfloat16 call measures what plain PyTorch gets in bfloat16.

Shapes (see docs/internals.md): `q` [N, L, c], `v` [N, L, C], `F` [N, L, l], rotations [h, c, b],
`perm` [N, h, Lp] and `inv` [N, h, L] as int64 here (the kernels produce int32).
"""
import torch

KEY_NORM_EPS = 5e-5


def n_buckets(length: int, chunk_size: int, max_buckets: int = 128) -> int:
    """`b = max(1, min(L//l + (L//l) % 2, max_buckets))` (contract section 2)."""
    n_chunks = length // chunk_size
    return max(1, min(n_chunks + n_chunks % 2, max_buckets))


def sblsh_rotations(dim, n_buckets, n_hashes, generator=None, device=None, dtype=None):
    """Super-bit LSH rotations `[n_hashes, dim, n_buckets]` (contract section 2).

    A Gaussian `dim x n_buckets` matrix per round whose columns are orthonormalised (QR) in groups
    of at most `dim`. With a `generator` the draw happens on the generator's device, then moves to
    `device`, so a seeded CPU generator gives the same rotations on every device. Without one the
    draw uses torch's global RNG on `device`.
    """
    if dim < 1 or n_buckets < 1 or n_hashes < 1:
        raise ValueError(
            f"sblsh_rotations needs positive sizes, got dim={dim}, n_buckets={n_buckets}, n_hashes={n_hashes}"
        )
    dtype = dtype or torch.float32
    draw_device = generator.device if generator is not None else device
    # Seeded draws are made in float64 so the QR, and hence eval-mode hashing, is reproducible.
    draw_dtype = torch.float64 if generator is not None else torch.float32
    gauss = torch.randn(n_hashes, dim, n_buckets, generator=generator, device=draw_device, dtype=draw_dtype)
    groups = []
    for start in range(0, n_buckets, dim):
        block = gauss[:, :, start:start + dim]
        q, r = torch.linalg.qr(block)
        # Fix QR's sign ambiguity so the frame depends only on the Gaussian draw, not the LAPACK build.
        signs = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
        signs = torch.where(signs == 0, torch.ones_like(signs), signs)
        groups.append(q * signs.unsqueeze(-2))
    return torch.cat(groups, dim=-1).to(device=device, dtype=dtype)


def hash_codes(q, rotations):
    """`code[n, r, i] = argmax_k (q[n, i] . R[r, :, k])` in float32, ties -> lowest k. -> int64 [N, h, L]."""
    projected = torch.einsum("nlc,hcb->nhlb", q.float(), rotations.float())
    # torch.argmax does not promise the first maximal index on every device; take it explicitly.
    best = projected.amax(dim=-1, keepdim=True)
    n_buckets_ = projected.shape[-1]
    index = torch.arange(n_buckets_, device=q.device).expand_as(projected)
    return torch.where(projected == best, index, n_buckets_).amin(dim=-1)


def sort_permutation(codes, chunk_size):
    """Stable per-round sort by code, padded to a multiple of `chunk_size` (contract section 3).

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


def window_attention(q, v, F, perm, chunk_size):
    """Per-round attention over each chunk's 3-chunk key window (contract section 4).

    Returns `O` [N, h, L, C] and `lse` [N, h, L] for the real sorted slots, in the input dtype.
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
    learned_windows = _windows(chunked(F))  # [N, h, nC, 3l, l]: F[key j, query slot i]
    scores = q_chunks @ key_windows.transpose(-1, -2) + learned_windows.transpose(-1, -2)
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    out = torch.exp(scores - lse) @ value_windows
    out = out.reshape(n, h, lp, v.shape[-1])[:, :, :length]
    return out, lse.reshape(n, h, lp)[:, :, :length]


def combine_rounds(O, lse, inv):
    """Unsort each round and merge with `softmax_r(lse)` -> `out` [N, L, C], `LSE` [N, L]."""
    n, h, length, channels = O.shape
    O_pos = O.gather(2, inv.unsqueeze(-1).expand(-1, -1, -1, channels))
    lse_pos = lse.gather(2, inv)
    weights = torch.softmax(lse_pos, dim=1)
    out = (O_pos * weights.unsqueeze(-1)).sum(dim=1)
    return out, torch.logsumexp(lse_pos, dim=1)


def gla_core(q, v, F, rotations, chunk_size, x, res_scale):
    """Everything after the embeddings: hash, sort, attend, combine, residual -> y [N, C, H, W]."""
    codes = hash_codes(q, rotations)
    perm, inv = sort_permutation(codes, chunk_size)
    O, lse = window_attention(q, v, F, perm, chunk_size)
    out, _ = combine_rounds(O, lse, inv)
    n, channels, height, width = x.shape
    return out.transpose(1, 2).reshape(n, channels, height, width) * res_scale + x

