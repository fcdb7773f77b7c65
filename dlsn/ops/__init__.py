"""The op layer: GLA's attention core on either backend, between the kernels and the GLA module.

    gla_attention(q, v, learned, rotations, chunk_size, x, res_scale, backend="auto", precision=None,
                  hash_q=None) -> y [N, C, H, W]

is the one backend switch (`backends.resolve_backend`): "reference" runs `reference.gla_core` (pure
PyTorch, any device, the oracle every kernel is tested against), "triton" runs `fused.gla_attention`
(the Triton kernels and the `dlsn._C` extension). Modules:

- `checks`: argument rules shared by every layer (positive integers, float32 dot modes).
- `backends`: which backend runs, and the float32 dot mode of the kernels.
- `reference`: docs/gla.md stage by stage in PyTorch; also the pieces `dlsn.sr.attention_maps` uses.
- `rotations`: bucket counts, SB-LSH rotations, the eval-rotation op `dlsn::eval_rotations` and the
  packed table of every bucket count that exported graphs hold.
- `fused`: checked stage functions and the differentiable custom ops over the kernels. Imported on
  demand, since importing triton decides whether its CPU interpreter is used.
- `scatter`: Python side of the extension ops (fake implementations; imported by `dlsn`, never fails).
- `extension`: loads `dlsn._C` lazily with a clear error when it is missing.
"""
from . import reference
from .backends import BACKENDS, resolve_backend, resolve_precision

__all__ = ["gla_attention", "resolve_backend", "resolve_precision", "BACKENDS"]


def gla_attention(q, v, learned, rotations, chunk_size, x, res_scale, backend="auto", precision=None, hash_q=None,
                  counting_sort=False):
    """GLA after the embeddings: hash, sort, window attention, scatter-back, residual -> y [N, C, H, W].

    Args:
        q [N, L, c], v [N, L, C], learned [N, L, chunk_size]: the embeddings (`dlsn.GLA.embed`).
        rotations [h, c, b]: SB-LSH rotations, projected in float32.
        chunk_size: the chunk size `l`.
        x [N, C, H, W], H * W = L: the residual.
        res_scale: float, scale of the attention output.
        backend: "auto", "reference" or "triton" (see `resolve_backend`).
        precision: float32 dot mode of the fused kernels ("ieee", "tf32", "tf32x3"; None follows
            `torch.get_float32_matmul_precision()`); the reference follows torch's own setting.
        hash_q: [N, L, c] queries the positions are hashed by (default: q).
        counting_sort: the reference sorts by a counting sort of standard ops instead of
            `torch.sort` (same slots; what an ONNX export needs, see `reference.sort_permutation`);
            the fused backend always runs its counting-sort kernel.
    Both backends compute the same function (docs/gla.md); gradients reach q, v, learned and x.
    """
    if resolve_backend(backend, x.device, chunk_size) == "triton":
        from . import fused

        return fused.gla_attention(q, v, learned, rotations, chunk_size, x, res_scale, precision=precision,
                                   hash_q=hash_q)
    return reference.gla_core(q, v, learned, rotations, chunk_size, x, res_scale, hash_q=hash_q,
                              counting_sort=counting_sort)
