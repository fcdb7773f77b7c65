"""The op registry: every torch op of dlsn is declared and given fake/autograd rules here.

- `dlsn.ops.scatter`: the C++/CUDA extension ops `dlsn::scatter_back`, `dlsn::scatter_back_backward`,
  `dlsn::attention_grad_rows` (imported by `dlsn` itself; loading the extension is lazy).
- `dlsn.ops.fused`: checked entry points of the Triton forward kernels and `gla_core_triton`.
- `dlsn.ops.fused_grad`: the differentiable fused attention `dlsn::gla_attention_fwd/bwd`.
The Triton modules are imported on demand: importing triton decides whether its CPU interpreter is used.
"""
