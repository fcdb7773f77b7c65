"""SB-LSH hashing parameters of GLA: how many buckets, and the rotations that define them.

A position's code in hash round `r` is the bucket `k` whose rotation column `R[r, :, k]` has the
largest projection `q . R[r, :, k]` (computed in float32; ties go to the lowest `k`; a non-finite
projection is never the largest, and a row whose projections are all non-finite goes to bucket
0). `dlsn.ops.reference.hash_codes` states this in PyTorch, the Triton kernel `kernels/hash.py`
computes it; both take the rotations made here. The functions live in the op layer
(`dlsn.ops.rotations`, which also registers the eval-rotation op) and are public here.
"""
from ..ops.rotations import n_buckets, sblsh_rotations

__all__ = ["n_buckets", "sblsh_rotations"]
