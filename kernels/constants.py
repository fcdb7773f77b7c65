"""Constants shared by the kernels, the op layer and the reference; importing this module does not
import triton (importing triton decides whether its CPU interpreter is used)."""
import torch

# Keys are q / max(||q||_2, KEY_NORM_EPS): a zero query gives a zero key instead of a division by zero.
KEY_NORM_EPS = 5e-5

# Chunk sizes the fused kernels take: powers of two, so every tile divides the chunk (no masks on
# query or key tiles), from 16 (the smallest tl.dot tile) to 256 (the register budget of one window).
CHUNK_SIZES = (16, 32, 64, 128, 256)

# Input precisions of float32 dots (tl.dot's input_precision): exact FMAs, one TF32 tensor-core
# dot, or three TF32 dots that recover about float32 accuracy.
FP32_PRECISIONS = ("ieee", "tf32", "tf32x3")

# What the attention kernels' dots compile to, the keys of every kernel's config table: FMAs on
# register operands ("fma": float32 "ieee" and float64), TF32 tensor cores on float32 tiles ("tf32",
# and "tf32x3" with three dots' live operands), 16-bit tensor cores ("16-bit").
DOT_FAMILIES = ("fma", "tf32", "tf32x3", "16-bit")


def check_fp32_precision(name, value, allow_none=False):
    """`value` when it is one of `FP32_PRECISIONS` (or None with `allow_none`); else a ValueError
    naming `name`. Every layer checks a float32 dot mode with this rule."""
    allowed = ((None,) if allow_none else ()) + FP32_PRECISIONS
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def effective_precision(dtype, precision):
    """The input precision the dots of `dtype` inputs run in: `precision` for float32, "ieee" for
    16-bit inputs (their tensor-core dots take no precision) and float64 (exact, for gradcheck)."""
    check_fp32_precision("precision", precision)
    return precision if dtype == torch.float32 else "ieee"


def dot_family(dtype, precision):
    """The DOT_FAMILIES key of the kernels' config tables for `dtype` inputs and float32 `precision`."""
    precision = effective_precision(dtype, precision)
    if dtype in (torch.float16, torch.bfloat16):
        return "16-bit"
    return "fma" if precision == "ieee" else precision
