"""The Global Learnable Attention module (contract: shared/design/GLA.md)."""
import os

import torch
from torch import nn

from . import reference

BACKENDS = ("auto", "reference", "triton")
SIMILARITIES = ("both", "dot", "learned")
TRITON_CHUNK_SIZES = (16, 32, 64, 128, 256)


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _conv_relu(in_channels, out_channels):
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True))


class GLA(nn.Module):
    """Global Learnable Attention: SB-LSH bucketed attention with a learnable similarity term.

    Args:
        channels: input/output channels `C`.
        reduction: `c = C // reduction` channels for queries/keys; must divide `channels`.
        chunk_size: bucket/chunk size `l`; also the output width of `fc`, so it is fixed by the
            weights. The Triton backend needs a power of two from 16 to 256.
        n_hashes: hash rounds `h`.
        max_buckets: upper bound on the number of buckets.
        res_scale: scale of the attention output before the residual add.
        backend: "reference" (pure PyTorch), "triton" (fused kernels) or "auto": "triton" for CUDA
            inputs when Triton is installed and the chunk size is supported, else "reference".
        eval_seed: seed of the rotations used in eval mode. Training mode draws fresh rotations
            from torch's RNG on every call (as published); eval mode draws them once per bucket
            count from a CPU generator seeded with `eval_seed`, so inference is deterministic and
            identical across devices. `dlsn.DLSN` gives every layer its own seed (its group index).
        similarity: the attention score (the paper's Table 1 ablation). "both" (published): dot
            product plus learnable term; "dot": dot product only (no `conv_assembly_fc`/`fc`
            parameters); "learned": learnable term only (positions are still hashed by their
            queries; the attention gets zero queries, so the dot term vanishes).

    `n_hashes` is a plain attribute: setting it changes the rounds of later calls without touching
    the weights; eval-mode rotations are drawn (and cached) per round count from `eval_seed`.

    `forward(x, rotations=None)`: `x` [N, C, H, W] floating point; explicit `rotations`
    [n_hashes, C // reduction, n_buckets] override the drawn ones (n_buckets from
    `dlsn.reference.n_buckets(H*W, chunk_size, max_buckets)`). Returns [N, C, H, W].
    """

    def __init__(self, channels, reduction=4, chunk_size=128, n_hashes=3, max_buckets=128,
                 res_scale=1.0, backend="auto", eval_seed=0, similarity="both"):
        super().__init__()
        for name, value in (("channels", channels), ("reduction", reduction), ("chunk_size", chunk_size),
                            ("n_hashes", n_hashes), ("max_buckets", max_buckets)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GLA: {name} must be a positive integer, got {value!r}")
        if channels % reduction:
            raise ValueError(f"GLA: channels ({channels}) must be divisible by reduction ({reduction})")
        if backend not in BACKENDS:
            raise ValueError(f"GLA: backend must be one of {BACKENDS}, got {backend!r}")
        if similarity not in SIMILARITIES:
            raise ValueError(f"GLA: similarity must be one of {SIMILARITIES}, got {similarity!r}")
        self.similarity = similarity
        self.channels = channels
        self.reduction = reduction
        self.chunk_size = chunk_size
        self.n_hashes = n_hashes
        self.max_buckets = max_buckets
        self.res_scale = res_scale
        self.backend = backend
        self.eval_seed = eval_seed
        match_channels = channels // reduction
        self.conv_match = _conv_relu(channels, match_channels)
        self.conv_assembly = _conv_relu(channels, channels)
        if similarity != "dot":
            self.conv_assembly_fc = _conv_relu(channels, channels)
            self.fc = nn.Sequential(
                nn.Linear(channels, chunk_size), nn.ReLU(inplace=True), nn.Linear(chunk_size, chunk_size)
            )
        self._eval_rotations = {}

    def extra_repr(self):
        return (f"channels={self.channels}, reduction={self.reduction}, chunk_size={self.chunk_size}, "
                f"n_hashes={self.n_hashes}, max_buckets={self.max_buckets}, res_scale={self.res_scale}, "
                f"backend={self.backend!r}, eval_seed={self.eval_seed}, similarity={self.similarity!r}")

    def n_buckets(self, length):
        return reference.n_buckets(length, self.chunk_size, self.max_buckets)

    def rotations_for(self, length, device):
        """The rotations this module uses for `length = H*W` positions in its current mode."""
        buckets = self.n_buckets(length)
        match_channels = self.channels // self.reduction
        if self.training:
            return reference.sblsh_rotations(match_channels, buckets, self.n_hashes, device=device)
        key = (buckets, str(device), self.n_hashes)
        if key not in self._eval_rotations:
            generator = torch.Generator().manual_seed(self.eval_seed)
            self._eval_rotations[key] = reference.sblsh_rotations(
                match_channels, buckets, self.n_hashes, generator=generator, device=device
            )
        return self._eval_rotations[key]

    def resolve_backend(self, x):
        """The backend a call on `x` runs: "reference" or "triton"."""
        if self.backend == "reference":
            return "reference"
        triton_ok = _triton_importable() and self.chunk_size in TRITON_CHUNK_SIZES
        if self.backend == "auto":
            return "triton" if x.is_cuda and triton_ok else "reference"
        if not _triton_importable():
            raise RuntimeError("GLA(backend='triton') needs the triton package; install it or use backend='reference'")
        if self.chunk_size not in TRITON_CHUNK_SIZES:
            raise ValueError(f"GLA(backend='triton') supports chunk_size in {TRITON_CHUNK_SIZES}, got {self.chunk_size}")
        if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError(
                f"GLA(backend='triton') got a tensor on {x.device}; the Triton kernels need a CUDA tensor "
                "(or TRITON_INTERPRET=1, set before triton is imported, to run them on the CPU interpreter)"
            )
        return "triton"

    def _check_input(self, x, rotations):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"GLA expects a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"GLA expects x of shape [N, C, H, W], got {x.dim()}-D shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"GLA expects a floating-point x, got dtype {x.dtype}")
        if x.shape[1] != self.channels:
            raise ValueError(f"GLA expects x with {self.channels} channels, got shape {tuple(x.shape)}")
        if x.shape[0] == 0 or x.shape[2] * x.shape[3] == 0:
            raise ValueError(f"GLA expects a non-empty x, got shape {tuple(x.shape)}")
        if rotations is None:
            return
        if not isinstance(rotations, torch.Tensor) or not rotations.is_floating_point():
            raise TypeError("GLA: rotations must be a floating-point tensor")
        expected = (self.n_hashes, self.channels // self.reduction, self.n_buckets(x.shape[2] * x.shape[3]))
        if tuple(rotations.shape) != expected:
            raise ValueError(
                f"GLA: rotations must have shape [n_hashes, C // reduction, n_buckets] = {list(expected)} "
                f"for a {x.shape[2]}x{x.shape[3]} input, got {list(rotations.shape)}"
            )
        if rotations.device != x.device:
            raise ValueError(f"GLA: rotations are on {rotations.device} but x is on {x.device}")

    def embed(self, x):
        """The learned embeddings as rows: q [N, L, c], v [N, L, C], F = fc(f) [N, L, l]."""
        def rows(t):
            return t.flatten(2).transpose(1, 2)

        q = rows(self.conv_match(x)).contiguous()
        v = rows(self.conv_assembly(x)).contiguous()
        if self.similarity == "dot":
            learned = v.new_zeros(v.shape[0], v.shape[1], self.chunk_size)
        else:
            learned = self.fc(rows(self.conv_assembly_fc(x))).contiguous()
        return q, v, learned

    def forward(self, x, rotations=None):
        self._check_input(x, rotations)
        backend = self.resolve_backend(x)
        if rotations is None:
            rotations = self.rotations_for(x.shape[2] * x.shape[3], x.device)
        q, v, learned = self.embed(x)
        if self.similarity == "learned":
            return self._learned_only(q, v, learned, rotations, x, backend)
        if backend == "triton":
            from .ops.fused import gla_core_triton
            from .ops.fused_grad import gla_core_triton_grad

            # The differentiable op also covers autocast (x in float32, embeddings in 16 bit);
            # the forward-only pipeline skips saving what backward needs.
            needs_graph = torch.is_grad_enabled() and any(t.requires_grad for t in (x, q, v, learned))
            if needs_graph or x.dtype != v.dtype:
                return gla_core_triton_grad(q, v, learned, rotations, self.chunk_size, x, self.res_scale)
            return gla_core_triton(q, v, learned, rotations, self.chunk_size, x, self.res_scale)
        return reference.gla_core(q, v, learned, rotations, self.chunk_size, x, self.res_scale)

    def _learned_only(self, q, v, learned, rotations, x, backend):
        """similarity="learned": hash and sort by the real queries, attend with zero queries (keys
        normalise to zero too), so every score is the learnable term alone. `q * 0` keeps
        `conv_match` in the graph with a zero gradient (no unused parameters under DDP)."""
        zero_queries = q * 0
        if backend == "triton":
            from .ops.fused import triton_hash, triton_sort
            from .ops.fused_grad import gla_attention

            codes = triton_hash(q.detach(), rotations)
            perm, inv = triton_sort(codes, rotations.shape[2], self.chunk_size, check_range=False)
            return gla_attention(zero_queries, v, learned, perm, inv, x, self.chunk_size, self.res_scale)
        perm, inv = reference.sort_permutation(reference.hash_codes(q, rotations), self.chunk_size)
        out, lse = reference.window_attention(zero_queries, v, learned, perm, self.chunk_size)
        out, _ = reference.combine_rounds(out, lse, inv)
        n, channels, height, width = x.shape
        return out.transpose(1, 2).reshape(n, channels, height, width) * self.res_scale + x
