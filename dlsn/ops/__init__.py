"""The op layer between the kernels (`dlsn.kernels`, `dlsn._C`) and the GLA module.

- `dlsn.ops.scatter`: Python side of the C++/CUDA extension ops `dlsn::scatter_back` and
  `dlsn::attention_grad_rows` (fake implementations; imported by `dlsn` itself, never fails).
- `dlsn.ops.fused`: the one entrance to the fused path: checked stage functions and the
  differentiable custom op `dlsn::gla_attention_fwd` with its backward. Imported on demand, since
  importing triton decides whether its CPU interpreter is used.
"""
import torch


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
