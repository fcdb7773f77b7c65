"""Argument rules every layer shares, each stated once with one wording.

Importing this module imports neither triton nor the extension.
"""
from ..kernels.constants import FP32_PRECISIONS, check_fp32_precision

__all__ = ["FP32_PRECISIONS", "check_fp32_precision", "positive_int", "one_of"]


def positive_int(name, value):
    """`value` when it is a positive Python int (bools excluded); else ValueError naming `name`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def one_of(name, value, allowed):
    """`value` when it is in `allowed`; else ValueError listing them."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value
