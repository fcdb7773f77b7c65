"""The Global Learnable Attention module (docs/gla.md says what it computes)."""
import contextlib

import torch
from torch import nn

from .. import ops
from ..ops import checks
from ..ops.rotations import eval_draw, eval_rotation_table, eval_rotations, select_rotations
from .hashing import n_buckets, sblsh_rotations

SIMILARITIES = ("both", "dot", "learned")


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
            inputs when Triton and the C++/CUDA extension are installed and the chunk size is
            supported, else "reference".
        eval_seed: seed of the rotations used in eval mode. Training mode draws fresh rotations
            from torch's RNG on every call (as published); eval mode draws them once per bucket
            count from a CPU generator seeded with `eval_seed`, so inference is deterministic and
            identical across devices. `dlsn.DLSN` gives every layer its own seed (its group index).
        fp32_precision: how the fused kernels run float32 dots: "ieee" (exact FMAs), "tf32" (TF32
            tensor cores) or "tf32x3" (three TF32 products, near-float32 accuracy); None follows
            `torch.get_float32_matmul_precision()`: "highest" -> "ieee", "high" -> "tf32x3",
            "medium" -> "tf32". The hash projection is always exact float32; 16-bit inputs always
            use 16-bit tensor cores; the reference backend follows torch's own setting.
        check_finite: raise a ValueError naming the layer when the input holds NaN or inf (off by
            default: the check costs a device sync). Without it non-finite input is not an error:
            see `forward`.
        similarity: the attention score (the paper's Table 1 ablation). "both" (published): dot
            product plus learnable term; "dot": dot product only (no `conv_assembly_fc`/`fc`
            parameters); "learned": learnable term only (positions are still hashed by their
            queries; the attention gets zero queries, so the dot term vanishes).

    `n_hashes` is a plain attribute: setting it changes the rounds of later calls without touching
    the weights; eval-mode rotations are drawn (and cached) per round count from `eval_seed`.

    `torch.compile(gla, fullgraph=True)` works on both backends, in eval and training mode: eval
    rotations come from the op `dlsn::eval_rotations` (opaque to the compiler), the fused stages are
    custom ops, and the float32 dot mode is read when the op runs. For `torch.export` and ONNX see
    `export_mode`.
    """

    def __init__(self, channels, reduction=4, chunk_size=128, n_hashes=3, max_buckets=128,
                 res_scale=1.0, backend="auto", eval_seed=0, fp32_precision=None, check_finite=False,
                 similarity="both"):
        super().__init__()
        for name, value in (("channels", channels), ("reduction", reduction), ("chunk_size", chunk_size),
                            ("n_hashes", n_hashes), ("max_buckets", max_buckets)):
            checks.positive_int(f"GLA: {name}", value)
        if channels % reduction:
            raise ValueError(f"GLA: channels ({channels}) must be divisible by reduction ({reduction})")
        checks.one_of("GLA: backend", backend, ops.BACKENDS)
        checks.check_fp32_precision("GLA: fp32_precision", fp32_precision, allow_none=True)
        checks.one_of("GLA: similarity", similarity, SIMILARITIES)
        self.similarity = similarity
        self.channels = channels
        self.reduction = reduction
        self.chunk_size = chunk_size
        self.n_hashes = n_hashes
        self.max_buckets = max_buckets
        self.res_scale = res_scale
        self.backend = backend
        self.eval_seed = eval_seed
        self.fp32_precision = fp32_precision
        self.check_finite = bool(check_finite)
        # How errors name this layer; dlsn.DLSN sets it to the layer's path in the model.
        self.layer_name = "GLA"
        match_channels = channels // reduction
        self.conv_match = _conv_relu(channels, match_channels)
        self.conv_assembly = _conv_relu(channels, channels)
        if similarity != "dot":
            self.conv_assembly_fc = _conv_relu(channels, channels)
            self.fc = nn.Sequential(
                nn.Linear(channels, chunk_size), nn.ReLU(inplace=True), nn.Linear(chunk_size, chunk_size)
            )
        # Set by `export_mode` only: the packed eval rotations of every bucket count, and whether
        # the reference sorts with standard ops.
        self.rotation_table = None
        self.counting_sort = False

    def extra_repr(self):
        return (f"channels={self.channels}, reduction={self.reduction}, chunk_size={self.chunk_size}, "
                f"n_hashes={self.n_hashes}, max_buckets={self.max_buckets}, res_scale={self.res_scale}, "
                f"backend={self.backend!r}, eval_seed={self.eval_seed}, fp32_precision={self.fp32_precision!r}, "
                f"check_finite={self.check_finite}, "
                f"similarity={self.similarity!r}")

    def n_buckets(self, length):
        return n_buckets(length, self.chunk_size, self.max_buckets)

    def rotations_for(self, length, device):
        """The rotations this module uses for `length = H*W` positions in its current mode.

        Eval mode: drawn once per bucket count from a CPU generator seeded with `eval_seed` and
        cached (`eval_draw`; under torch.compile through the op `dlsn::eval_rotations`, which gives
        the same numbers), or within `export_mode` the same numbers taken out of the layer's
        constant table, NaN-padded to `max_buckets` columns (`select_rotations`: the same codes), so
        a symbolic `length` works.
        """
        buckets = self.n_buckets(length)
        match_channels = self.channels // self.reduction
        if self.training:
            return sblsh_rotations(match_channels, buckets, self.n_hashes, device=device)
        if self.rotation_table is not None:
            return select_rotations(self.rotation_table, buckets, self.max_buckets)
        if torch.compiler.is_compiling():
            # Dynamo cannot trace the seeded torch.Generator: the opaque op draws when the code runs.
            return eval_rotations(match_channels, buckets, self.n_hashes, self.eval_seed, torch.device(device))
        # Eager code takes the cached draw directly: a custom op's first call imports the compiler
        # stack (~900 modules, +150 MB resident), which `dlsn upscale --max-memory` would pay for.
        return eval_draw(match_channels, buckets, self.n_hashes, self.eval_seed, torch.device(device))

    def kernel_precision(self):
        """The float32 dot mode the fused kernels get now: "ieee", "tf32" or "tf32x3"."""
        return ops.resolve_precision(self.fp32_precision)

    def resolve_backend(self, x):
        """The backend a call on `x` runs: "reference" or "triton" (`dlsn.ops.resolve_backend`)."""
        return ops.resolve_backend(self.backend, x.device, self.chunk_size)

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
        if self.check_finite and not torch.isfinite(x).all():
            count = (~torch.isfinite(x)).sum().item()
            raise ValueError(f"{self.layer_name}: the input holds {count} non-finite value(s) (NaN or inf) "
                             f"of {x.numel()} (check_finite=True)")
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
        """The learned embeddings as rows: q [N, L, c], v [N, L, C], learned = fc(f) [N, L, l]."""
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
        """Attend every position to its hash buckets' windows; returns `res_scale * attention + x`.

        Args:
            x: [N, C, H, W] float32, float16 or bfloat16 (float64 on the reference backend);
                H*W = L may be anything >= 1 (L < chunk_size works: one padded chunk).
            rotations: optional [n_hashes, C // reduction, n_buckets] floating point, with
                n_buckets = `self.n_buckets(H*W)`. None: training mode draws fresh rotations from
                torch's RNG on every call; eval mode uses fixed ones seeded by `eval_seed`.
        Returns:
            [N, C, H, W] in x's dtype (under autocast: the attention in the autocast dtype plus x,
            promoted).

        Both backends compute the same function (docs/gla.md): queries q = conv_match(x) hashed to
        buckets by the rotations in float32, a stable sort per round, windows of 3 chunks, scores
        q . normalize(q_key) + fc(f_key)[i], a softmax over every round's window, residual add.
        The "triton" backend runs the fused kernels for training, inference and autocast alike;
        float32 dots follow `fp32_precision`. Gradients reach x and every parameter; the hash codes
        are constants. Non-finite input: a NaN/inf projection never wins the hash and a row of them
        goes to bucket 0, so the call never fails on it; NaN then reaches exactly the outputs whose
        windows or rounds touch a non-finite value, identically on both backends. `check_finite=True`
        turns non-finite input into a ValueError naming the layer.
        """
        self._check_input(x, rotations)
        if rotations is None:
            rotations = self.rotations_for(x.shape[2] * x.shape[3], x.device)
        q, v, learned = self.embed(x)
        return ops.gla_attention(self.attention_queries(q), v, learned, rotations, self.chunk_size, x,
                                 self.res_scale, backend=self.backend, precision=self.fp32_precision, hash_q=q,
                                 counting_sort=self.counting_sort)

    def attention_queries(self, q):
        """The queries the attention scores use, given those the positions are hashed by.

        similarity="learned": positions are hashed by their queries but attend with zero ones (keys
        normalise to zero too), so every score is the learnable term alone; `q * 0` keeps
        conv_match in the graph with a zero gradient (no unused parameters under DDP).
        """
        return q * 0 if self.similarity == "learned" else q


def gla_layers(model):
    """The GLA layers of `model` in module order."""
    return [module for module in model.modules() if isinstance(module, GLA)]


def export_problem(layer, device):
    """Why `layer` (a GLA) cannot be exported for `device`, or None: the fused backend's kernels
    are custom ops with no exportable math, and `check_finite` is a data-dependent raise."""
    if layer.check_finite:
        return f"{layer.layer_name} has check_finite=True, a data-dependent check that an exported graph cannot hold"
    if ops.resolve_backend(layer.backend, device, layer.chunk_size) != "reference":
        return (f"{layer.layer_name} runs backend={layer.backend!r} on {torch.device(device)}, whose Triton kernels "
                "cannot be exported; build the model with backend='reference' (or 'auto' and export on the CPU)")
    return None


@contextlib.contextmanager
def export_mode(model, device="cpu", counting_sort=False):
    """Within it, the GLA layers of `model` (in eval mode) can be exported with symbolic height
    and width (`torch.export`, AOTInductor, ONNX).

    Each layer holds its `eval_rotation_table` (the eval rotations of every reachable bucket
    count, bitwise those of eager mode) as a plain tensor attribute, which `torch.export` lifts
    into the graph as a constant (it never enters the state dict), and slices the block of the
    input's bucket count with integer arithmetic. `counting_sort=True` makes the reference sort
    without TopK/ArgSort over the positions (ONNX, TensorRT). A layer that cannot be exported
    (`export_problem`) is a ValueError before anything changes.
    """
    layers = gla_layers(model)
    for layer in layers:
        problem = export_problem(layer, device)
        if problem:
            raise ValueError(f"cannot export: {problem}")
    try:
        for layer in layers:
            layer.rotation_table = eval_rotation_table(layer.channels // layer.reduction, layer.n_hashes,
                                                       layer.max_buckets, layer.eval_seed, torch.device(device))
            layer.counting_sort = counting_sort
        yield model
    finally:
        for layer in layers:
            layer.rotation_table = None
            layer.counting_sort = False
