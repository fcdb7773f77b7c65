"""Error of each float32 precision mode ("ieee", "tf32", "tf32x3") against the float64 reference,
forward and gradients, on one GLA attention problem.

On CUDA it measures the fused kernels themselves (`GLA(fp32_precision=mode)`'s path: the op
`dlsn.ops.fused.gla_attention` with `precision=mode`). On a CPU the Triton interpreter ignores the
dot precision (every mode computes exact float32), so the script instead EMULATES each mode in the
PyTorch reference: the two products of the window attention (scores and values; forward and
backward) get their operands rounded as the tensor cores would - "tf32": operands truncated to
TF32's 10 mantissa bits; "tf32x3": each operand split into a TF32 part and a TF32 remainder,
three products (big*big + big*small + small*big). The rows say which of the two they are.

    python bench/precision_modes.py                 # CPU: emulated modes
    python bench/precision_modes.py --device cuda   # GPU: the kernels
Relative error = max |x - x64| / max |x64| per tensor; the largest over the gradients of q, v,
learned and x is reported.
"""
import argparse
import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: the CPU has no other way

from dlsn.ops import reference  # noqa: E402
from dlsn.nn.hashing import n_buckets, sblsh_rotations  # noqa: E402

MODES = ("ieee", "tf32", "tf32x3")


def tf32_truncate(x):
    """float32 -> the TF32 value the tensor core multiplies (10 mantissa bits, low bits dropped)."""
    return (x.contiguous().view(torch.int32) & ~0x1FFF).view(torch.float32)


def tf32_round(x):
    """float32 -> nearest TF32 (ties away from zero), as `cvt.rna.tf32.f32` splits operands."""
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


def emulated_product(a, b, mode):
    if mode == "ieee":
        return a @ b
    if mode == "tf32":
        return tf32_truncate(a) @ tf32_truncate(b)
    a_big, b_big = tf32_round(a), tf32_round(b)
    a_small, b_small = tf32_round(a - a_big), tf32_round(b - b_big)
    return a_big @ b_big + (a_big @ b_small + a_small @ b_big)


class EmulatedMatmul(torch.autograd.Function):
    """a @ b whose forward and backward products both follow `mode` (the kernels run every dot,
    backward included, in the same precision)."""

    @staticmethod
    def forward(ctx, a, b, mode):
        ctx.save_for_backward(a, b)
        ctx.mode = mode
        return emulated_product(a, b, mode)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        return (emulated_product(grad, b.transpose(-1, -2), ctx.mode),
                emulated_product(a.transpose(-1, -2), grad, ctx.mode), None)


def make_problem(length, match_channels, channels, chunk_size, n_hashes, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, length, match_channels, generator=g, dtype=torch.float64).relu()
    v = torch.randn(1, length, channels, generator=g, dtype=torch.float64)
    learned = torch.randn(1, length, chunk_size, generator=g, dtype=torch.float64)
    side = int(length ** 0.5)
    x = torch.randn(1, channels, side, length // side, generator=g, dtype=torch.float64)
    dy = torch.randn(x.shape, generator=g, dtype=torch.float64)
    rotations = sblsh_rotations(match_channels, n_buckets(length, chunk_size), n_hashes,
                                generator=torch.Generator().manual_seed(seed))
    return (q, v, learned, x), dy, rotations


def attention_with_grads(run, inputs, dy):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    y = run(*leaves)
    (y.double() * dy).sum().backward()
    return y.detach(), [t.grad for t in leaves]


def relative_error(actual, expected):
    return ((actual.double() - expected).abs().max() / expected.abs().max()).item()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--length", type=int, default=576, help="H*W (a square-ish image), default 24x24")
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--hashes", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    inputs, dy, rotations = make_problem(args.length, args.channels // 4, args.channels, args.chunk, args.hashes,
                                         args.seed)
    codes = reference.hash_codes(inputs[0].float(), rotations)
    perm, inv = reference.sort_permutation(codes, args.chunk)

    def reference_run(matmul):
        def run(q, v, learned, x):
            O, lse = reference.window_attention(q, v, learned, perm, args.chunk, matmul=matmul)
            out, _ = reference.scatter_back(O, lse, inv)
            return out.transpose(1, 2).reshape(x.shape) + x
        return run

    y64, grads64 = attention_with_grads(reference_run(torch.matmul), inputs, dy)
    device = torch.device(args.device)
    kind = "kernels" if device.type == "cuda" else "emulated (CPU)"
    print(f"| mode | measured on | forward rel. error | gradient rel. error (max of dq, dv, dlearned, dx) |")
    print("|---|---|---|---|")
    for mode in MODES:
        if device.type == "cuda":
            from dlsn.ops.fused import gla_attention

            def run(q, v, learned, x, mode=mode):
                return gla_attention(q, v, learned, rotations.to(device), args.chunk, x, 1.0, precision=mode)
        else:
            def run(q, v, learned, x, mode=mode):
                return reference_run(lambda a, b: EmulatedMatmul.apply(a, b, mode))(q, v, learned, x)
        y, grads = attention_with_grads(run, [t.float().to(device) for t in inputs], dy.to(device))
        grad_error = max(relative_error(g.cpu(), g64) for g, g64 in zip(grads, grads64))
        print(f"| {mode} | {kind} | {relative_error(y.cpu(), y64):.1e} | {grad_error:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
