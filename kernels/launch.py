"""Launch plans: every launcher is "plan for this problem" + "run the plan".

A plan is the list of kernel launches a launcher makes, with exactly the configuration it picks,
built from tensors that may live on the `meta` device. The launcher runs the plan; the compile
report (`bench/compile_report.py`) builds the same plans from meta tensors at named shapes and
compiles each launch for sm_80 / sm_90a without a GPU, so what it reports cannot drift from what runs.

Contract of a plan function `<stage>_plan(...)` (one per launcher, next to it):
- takes the launcher's tensor arguments (any device, `meta` included) and a `config` (None: the one
  `pick_config` chooses), allocates the outputs with `torch.empty(..., device=inputs' device)`;
- returns `(launches, outputs)`; the launcher is `run(launches)` followed by its PyTorch glue.
  Where glue sits between two launches (the bucket sort's prefix sum), the plan allocates the glue's
  output too and the launcher runs the launches one at a time around the glue.
Each `Launch` names every argument of the jitted function: `args` by parameter name (tensors for
pointers; Python ints/floats for scalars), `constexprs` by parameter name.

Configs: each kernel has a short list of `triton.Config`s (block sizes as kwargs, warps, stages),
ordered by preference. `pick_config` drops the ones that do not fit the problem (a predicate: tiles
divide the chunk, blocks of at least 16 for tl.dot, ...), then
- on the CPU interpreter or with `meta`/CPU tensors (the compile report), returns the first valid
  config, so the first valid config of every list must be the spill-free one on sm_80 and sm_90a;
- on a CUDA device, runs every valid config once per tuning key (dtype, channel counts, chunk size,
  precision: what the launcher names), drops those whose compiled kernel spills registers or that
  do not fit the device, times the rest with `triton.testing.do_bench` and caches the fastest
  for the process.
"""
import math
import os
from dataclasses import dataclass, field

import torch
import triton

Config = triton.Config


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
        """Launch; returns what triton returns (the compiled kernel on a GPU, None on the interpreter)."""
        return self.kernel[self.grid](**self.args, **self.constexprs, num_warps=self.num_warps,
                                      num_stages=self.num_stages)


def run(launches):
    """Launch in order; returns the compiled kernels (None entries on the interpreter)."""
    return [launch() for launch in launches]


def interpreting():
    return os.environ.get("TRITON_INTERPRET") == "1"


def config_blocks(config):
    """The constexpr block sizes of a config, as a dict to merge into a Launch's constexprs."""
    return dict(config.kwargs)


_TUNED = {}


def pick_config(stage, configs, key, device, fits, trial=None):
    """The config `stage` launches with for the problem `key` (hashable) on `device`.

    `fits(config) -> bool` prunes the list; `trial(config) -> compiled kernels` runs the stage once
    with a config on the real inputs (writing only the stage's own outputs), used on CUDA to tune.
    A problem no config fits is a one-line ValueError naming the stage.
    """
    valid = [config for config in configs if fits(config)]
    if not valid:
        raise ValueError(f"{stage}: no launch config fits the problem {key}")
    if torch.device(device).type != "cuda" or interpreting() or trial is None or len(valid) == 1:
        return valid[0]
    cache_key = (stage, key, torch.device(device).index)
    if cache_key not in _TUNED:
        _TUNED[cache_key] = _fastest_without_spills(valid, trial)
    return _TUNED[cache_key]


def _fastest_without_spills(configs, trial):
    from triton.testing import do_bench

    best, best_ms = None, math.inf
    for config in configs:
        try:
            kernels = trial(config)
        except triton.runtime.errors.OutOfResources:
            continue
        if any(getattr(kernel, "n_spills", 0) for kernel in kernels):
            continue
        ms = do_bench(lambda: trial(config))
        if ms < best_ms:
            best, best_ms = config, ms
    # Every config spilled or ran out of resources: keep the preferred one rather than failing.
    return configs[0] if best is None else best
