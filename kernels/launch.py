"""Launch plans: every launcher is "plan for this problem" + "run the plan".

A plan is the list of kernel launches a launcher makes, with exactly the configuration it picks,
built from tensors that may live on the `meta` device. The launcher runs the plan; the compile
report (`bench/compile_report.py`) builds the same plans from meta tensors at named shapes and
compiles each launch for sm_80 / sm_90a without a GPU, so what it reports cannot drift from what runs.

Contract of a plan function `<stage>_plan(...)` (one per launcher, next to it):
- takes the launcher's tensor arguments (any device, `meta` included) and a `config` (None: the one
  `pick_config` chooses), allocates the outputs with `torch.empty(..., device=inputs' device)`;
- returns `(launches, outputs)`; the launcher is `run(launches)` followed by its PyTorch glue.
Each `Launch` names every argument of the jitted function: `args` by parameter name (tensors for
pointers; Python ints/floats for scalars), `constexprs` by parameter name.
"""
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Launch:
    """One kernel launch. `flops`: floating-point operations the kernel executes by its model
    (a multiply-add counts 2), so that the compile report can set it against the minimal algorithm."""

    kernel: object  # the @triton.jit function itself (not an autotuner)
    grid: tuple
    args: dict
    constexprs: dict
    num_warps: int
    num_stages: int
    flops: int = 0
    name: str = field(default="")

    def __call__(self):
        self.kernel[self.grid](**self.args, **self.constexprs, num_warps=self.num_warps, num_stages=self.num_stages)


def run(launches):
    for launch in launches:
        launch()
