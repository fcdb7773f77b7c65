"""SB-LSH hashing parameters of GLA: how many buckets, and the rotations that define them.

A position's code in hash round `r` is the bucket `k` whose rotation column `R[r, :, k]` has the
largest projection `q . R[r, :, k]` (computed in float32; ties go to the lowest `k`; a non-finite
projection is never the largest, and a row whose projections are all non-finite goes to bucket
0). `dlsn.ops.reference.hash_codes` states this in PyTorch, the Triton kernel `kernels/hash.py`
computes it; both take the rotations made here.
"""
import torch


def n_buckets(length: int, chunk_size: int, max_buckets: int = 128) -> int:
    """Buckets for `length = H*W` positions: `b = max(1, min(L//l + (L//l) % 2, max_buckets))`,
    about one chunk per bucket, rounded up to an even count as published."""
    n_chunks = length // chunk_size
    return max(1, min(n_chunks + n_chunks % 2, max_buckets))


def sblsh_rotations(dim, n_buckets, n_hashes, generator=None, device=None, dtype=None):
    """Super-bit LSH rotations `[n_hashes, dim, n_buckets]`.

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
