"""Which backend runs GLA's attention core, and in which float32 dot mode.

`resolve_backend` is the one place that decides between the pure-PyTorch reference and the fused
Triton kernels. Nothing here imports triton unless the answer depends on it: importing triton fixes
whether its CPU interpreter is used (`TRITON_INTERPRET=1` must be set before).
"""
import importlib.util

import torch

from ..kernels.constants import CHUNK_SIZES
from .checks import check_fp32_precision, one_of
from .extension import extension_available

BACKENDS = ("auto", "reference", "triton")
# torch.get_float32_matmul_precision() -> the kernels' float32 dot mode.
MATMUL_PRECISION_TO_FP32 = {"highest": "ieee", "high": "tf32x3", "medium": "tf32"}


def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_device_problem(device):
    """Why the Triton kernels cannot run on tensors of `device`, or None when they can. Imports
    triton (through kernels/launch.py, which holds the one TRITON_INTERPRET test): call it only on
    the way to the kernels."""
    device = torch.device(device)
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        from ..kernels.launch import interpreting

        if interpreting():
            return None
        return ("the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1, set before triton is "
                "imported, to run them on the CPU interpreter)")
    return "the Triton kernels need CUDA tensors"


def resolve_backend(backend, device, chunk_size):
    """The backend a call on tensors of `device` runs: "reference" or "triton".

    backend: "reference", "triton" (an error when the kernels cannot run: no triton, an unsupported
        chunk size, a device they do not run on) or "auto" ("triton" for CUDA tensors when triton and
        the extension are installed and `chunk_size` is supported, else "reference").
    """
    one_of("backend", backend, BACKENDS)
    device = torch.device(device)
    if backend == "reference":
        return "reference"
    if backend == "auto":
        # CPU tensors never import triton here: importing it fixes whether its interpreter is used.
        fused_ok = (device.type == "cuda" and chunk_size in CHUNK_SIZES and _triton_installed()
                    and extension_available())
        return "triton" if fused_ok else "reference"
    if not _triton_installed():
        raise RuntimeError("backend='triton' needs the triton package; install it or use backend='reference'")
    if chunk_size not in CHUNK_SIZES:
        raise ValueError(f"backend='triton' supports chunk_size in {CHUNK_SIZES}, got {chunk_size}")
    problem = triton_device_problem(device)
    if problem:
        raise RuntimeError(f"backend='triton' got a tensor on {device}: {problem}")
    return "triton"


def resolve_precision(precision=None):
    """The float32 dot mode of the fused kernels: `precision`, or for None the one
    `torch.get_float32_matmul_precision()` asks for ("highest" -> "ieee", "high" -> "tf32x3",
    "medium" -> "tf32")."""
    if precision is None:
        return MATMUL_PRECISION_TO_FP32[torch.get_float32_matmul_precision()]
    return check_fp32_precision("precision", precision)
