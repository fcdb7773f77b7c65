"""Argument rules every layer shares, each stated once with one wording.

Importing this module imports neither triton nor the extension.
"""
# The float32 dot modes of the fused kernels (docs/gla.md §9).
FP32_PRECISIONS = ("ieee", "tf32", "tf32x3")


def positive_int(name, value):
    """`value` when it is a positive Python int (bools excluded); else ValueError naming `name`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def fp32_precision(name, value, allow_none=False):
    """`value` when it is one of `FP32_PRECISIONS` (or None with `allow_none`); else ValueError."""
    allowed = ((None,) if allow_none else ()) + FP32_PRECISIONS
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def one_of(name, value, allowed):
    """`value` when it is in `allowed`; else ValueError listing them."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value
