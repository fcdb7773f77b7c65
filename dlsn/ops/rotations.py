"""SB-LSH rotations: how many buckets, the rotations that define them, and the eval-mode rotations
as an op and as one constant table.

`n_buckets` and `sblsh_rotations` are re-exported by `dlsn.nn.hashing` (their public home).
Eval-mode rotations are drawn once per (channels, bucket count, rounds, seed, device) from a CPU
generator seeded with the layer's seed and cached:

- `torch.ops.dlsn.eval_rotations(dim, n_buckets, n_hashes, seed, device)` is that cached draw as a
  custom op, so `torch.compile` never traces the generator: the op is opaque to Dynamo (its fake
  implementation gives the shape) and draws, or reads the cache, when the compiled code runs.
- `eval_rotation_table(...)` packs the draws of every bucket count a layer can reach into one
  `[h, c, T]` tensor and `select_rotations(table, b, width)` picks one count's block out of it with
  integer arithmetic only (NaN-padded to a fixed width, which the hash never picks), so an exported
  graph with symbolic height and width holds the rotations of every size as a constant
  (torch.export, AOTInductor, ONNX). The blocks are the cached draws themselves: bitwise what eager
  mode uses.
"""
import torch

__all__ = ["n_buckets", "sblsh_rotations", "eval_draw", "eval_rotations", "eval_rotation_table", "reachable_buckets",
           "select_rotations", "table_offset"]


def n_buckets(length, chunk_size: int, max_buckets: int = 128):
    """Buckets for `length = H*W` positions: `b = max(1, min(L//l + (L//l) % 2, max_buckets))`,
    about one chunk per bucket, rounded up to an even count as published. `length` may be a
    symbolic size (torch.export): the result is then symbolic too, with no guard on it."""
    n_chunks = length // chunk_size
    return torch.sym_max(1, torch.sym_min(n_chunks + n_chunks % 2, max_buckets))


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


# (dim, n_buckets, n_hashes, seed, device) -> float32 rotations; grows by one entry per bucket count
# a layer meets (at most max_buckets / 2 + 1 per layer and device).
_EVAL_DRAWS = {}


def eval_draw(dim, buckets, n_hashes, seed, device):
    """The cached eval-mode rotations themselves (eager code: no op dispatch)."""
    key = (dim, buckets, n_hashes, seed, str(device))
    if key not in _EVAL_DRAWS:
        generator = torch.Generator().manual_seed(seed)
        _EVAL_DRAWS[key] = sblsh_rotations(dim, buckets, n_hashes, generator=generator, device=device)
    return _EVAL_DRAWS[key]


@torch.library.custom_op("dlsn::eval_rotations", mutates_args=())
def eval_rotations(dim: int, n_buckets: int, n_hashes: int, seed: int, device: torch.device) -> torch.Tensor:
    """The eval-mode rotations `[n_hashes, dim, n_buckets]` float32 on `device`: drawn once from a CPU
    generator seeded with `seed` (then cached), so every device gets the same numbers."""
    # A copy: an op's output must not alias state that outlives the call (compiled code may reuse it).
    return eval_draw(dim, n_buckets, n_hashes, seed, device).clone()


@eval_rotations.register_fake
def _(dim, n_buckets, n_hashes, seed, device):
    return torch.empty((n_hashes, dim, n_buckets), dtype=torch.float32, device=device)


def reachable_buckets(max_buckets):
    """Every bucket count `n_buckets` can return for this `max_buckets`, ascending: 1, the even
    counts below it, and `max_buckets` itself."""
    return sorted({1, max_buckets, *range(2, max_buckets, 2)})


def table_offset(buckets):
    """Column of bucket count `buckets`'s block in `eval_rotation_table`: the sum of the reachable
    counts below it, `j (j - 1) + [b > 1]` with `j = (b + 1) // 2`. Integer arithmetic only, so a
    symbolic `b` needs no guard."""
    half = (buckets + 1) // 2
    return half * (half - 1) + 1 - 1 // buckets


def eval_rotation_table(dim, n_hashes, max_buckets, seed, device):
    """`[n_hashes, dim, T]` float32: the eval rotations of every reachable bucket count side by side
    (`T = sum(reachable_buckets(max_buckets))`, 4161 for 128). Costs `4 T h c` bytes: 3.2 MB for
    the published layer (c = 64, h = 3), per layer and device."""
    blocks = [eval_draw(dim, b, n_hashes, seed, device) for b in reachable_buckets(max_buckets)]
    return torch.cat(blocks, dim=2)


def select_rotations(table, buckets, width):
    """`[h, c, width]`: the `buckets` columns of an `eval_rotation_table`'s block for that count,
    then NaN columns up to `width >= buckets`.

    With `width` fixed (the layer's `max_buckets`) the shape does not depend on the image size, so
    an exported graph needs no guard on `buckets` (a symbolic size). The NaN columns change
    nothing: a non-finite projection never wins the hash (`reference.hash_codes`), ties still go
    to the lowest bucket, and codes stay below `buckets`.
    """
    index = torch.arange(width, device=table.device)
    columns = (index + table_offset(buckets)).clamp(max=table.shape[2] - 1)
    return torch.where(index < buckets, table.index_select(2, columns), float("nan"))
