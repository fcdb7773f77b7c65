"""Launch plans (kernels/launch.py) of the forward kernels: config selection, plans on meta tensors,
FLOPs models against the minimal algorithm, and the precision mode reaching the compiled code."""
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
import triton

from dlsn.kernels import launch as launch_module
from dlsn.kernels.bucket_sort import bucket_sort_fwd_plan
from dlsn.kernels.constants import DOT_FAMILIES, FP32_PRECISIONS, dot_family, effective_precision
from dlsn.kernels.hash import sblsh_hash_fwd_min_flops, sblsh_hash_fwd_plan
from dlsn.kernels.launch import Config, pick_config
from dlsn.kernels.window_attention import WINDOW_ATTN_FWD_CONFIGS, window_attn_fwd_min_flops, window_attn_fwd_plan
from dlsn.kernels.window_attention_bwd import DKDQ_CONFIGS, DV_CONFIGS

# name: (N, H*W, c, C, l, h, buckets)
SHAPES = {
    "training": (16, 48 * 48, 64, 256, 128, 3, 18),
    "inference": (1, 512 * 512, 64, 256, 128, 3, 128),
    "demo": (16, 48 * 48, 12, 48, 64, 2, 36),
}
MODES = [(torch.float32, "ieee"), (torch.float32, "tf32"), (torch.float32, "tf32x3"),
         (torch.bfloat16, "ieee"), (torch.float16, "ieee")]
CONFIGS = [Config({"BLOCK": 64}, num_warps=4), Config({"BLOCK": 32}, num_warps=4), Config({"BLOCK": 16}, num_warps=2)]


def meta_inputs(shape, dtype):
    n, length, c, C, l, h, _ = SHAPES[shape]
    padded = length + (-length) % l
    return (torch.empty(n, length, c, device="meta", dtype=dtype), torch.empty(n, length, C, device="meta", dtype=dtype),
            torch.empty(n, length, l, device="meta", dtype=dtype),
            torch.empty(n, h, padded, device="meta", dtype=torch.int32))


def test_pick_config_takes_the_first_valid_one_off_gpu():
    assert pick_config("k", CONFIGS, ("key",), "meta", lambda c: c.kwargs["BLOCK"] <= 32) is CONFIGS[1]
    assert pick_config("k", CONFIGS, ("key",), "cpu", lambda c: True, trial=lambda c: 1 / 0) is CONFIGS[0]


def test_pick_config_names_the_stage_when_nothing_fits():
    with pytest.raises(ValueError, match="window_attn_fwd: no launch config fits"):
        pick_config("window_attn_fwd", CONFIGS, ("key",), "meta", lambda c: False)


def test_tuning_drops_spilling_configs_and_caches_the_fastest(monkeypatch):
    # The CUDA branch with a fake compiled kernel and a fake timer: config 64 spills, 16 is fastest.
    class Compiled:
        def __init__(self, spills):
            self.n_spills = spills

    times = {64: 0.1, 32: 0.5, 16: 0.3}
    trials = []

    def trial(config):
        trials.append(config.kwargs["BLOCK"])
        return [Compiled(8 if config.kwargs["BLOCK"] == 64 else 0)]

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(launch_module, "_TUNED", {})
    monkeypatch.setattr(triton.testing, "do_bench", lambda fn: (fn(), times[trials[-1]])[1])
    assert pick_config("k", CONFIGS, ("key",), "cuda", lambda c: True, trial) is CONFIGS[2]
    count = len(trials)
    assert pick_config("k", CONFIGS, ("key",), "cuda", lambda c: True, trial) is CONFIGS[2]
    assert len(trials) == count, "a tuned key must come from the cache"


@pytest.mark.parametrize("dtype, precision", MODES)
def test_forward_flops_within_1_15_of_minimal_at_training_shape(dtype, precision):
    n, length, c, C, l, h, _ = SHAPES["training"]
    (launch,), (O, round_max, round_sum) = window_attn_fwd_plan(*meta_inputs("training", dtype), l, precision)
    assert launch.constexprs["BLOCK_C"] >= C, "one program must cover every value column"
    assert launch.flops <= 1.15 * window_attn_fwd_min_flops(n, h, length, c, C, l)
    assert O.shape == (n, h, length, C) and O.dtype == dtype
    assert round_max.dtype == round_sum.dtype == torch.float32


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype, precision", MODES)
def test_forward_plan_fits_the_grid_and_the_chunk(shape, dtype, precision):
    n, length, c, C, l, h, _ = SHAPES[shape]
    (launch,), _ = window_attn_fwd_plan(*meta_inputs(shape, dtype), l, precision)
    k = launch.constexprs
    assert 16 <= k["BLOCK_M"] <= l and 16 <= k["BLOCK_N"] <= l and k["CHUNK"] == l
    assert k["BLOCK_C"] == max(16, triton.next_power_of_2(C)) and k["BLOCK_D"] == max(16, triton.next_power_of_2(c))
    assert launch.grid == (triton.cdiv(length, k["BLOCK_M"]), n * h) and launch.grid[1] < 2 ** 16


def test_every_config_table_is_keyed_by_the_dot_families():
    for table in (WINDOW_ATTN_FWD_CONFIGS, DV_CONFIGS, DKDQ_CONFIGS):
        assert tuple(table) == DOT_FAMILIES


@pytest.mark.parametrize("dtype, precision, effective, family", [
    (torch.float32, "ieee", "ieee", "fma"), (torch.float32, "tf32", "tf32", "tf32"),
    (torch.float32, "tf32x3", "tf32x3", "tf32x3"), (torch.bfloat16, "tf32", "ieee", "16-bit"),
    (torch.float16, "tf32x3", "ieee", "16-bit"), (torch.float64, "tf32", "ieee", "fma")])
def test_forward_starts_from_the_first_config_of_its_dot_family(dtype, precision, effective, family):
    assert (effective_precision(dtype, precision), dot_family(dtype, precision)) == (effective, family)
    (launch,), _ = window_attn_fwd_plan(*meta_inputs("training", dtype), SHAPES["training"][4], precision)
    first = WINDOW_ATTN_FWD_CONFIGS[family][0]
    assert all(launch.constexprs[k] == v for k, v in first.kwargs.items())
    assert (launch.num_warps, launch.num_stages) == (first.num_warps, first.num_stages)


def test_an_unknown_precision_has_no_dot_family():
    message = f"precision must be one of {FP32_PRECISIONS}, got 'tf64'"
    for dtype in (torch.float32, torch.bfloat16):
        for function in (effective_precision, dot_family):
            with pytest.raises(ValueError, match=re.escape(message)):
                function(dtype, "tf64")


def test_forward_plan_skips_query_tiles_of_padding_only():
    q, v, F, _ = (t[:, :130] for t in meta_inputs("demo", torch.float16))
    perm = torch.empty(16, 2, 192, device="meta", dtype=torch.int32)
    (launch,), _ = window_attn_fwd_plan(q, v, F, perm, 64)
    assert launch.grid[0] == triton.cdiv(130, launch.constexprs["BLOCK_M"])


@pytest.mark.parametrize("shape", SHAPES)
def test_hash_and_sort_plans(shape):
    n, length, c, _, l, h, b = SHAPES[shape]
    q = torch.empty(n, length, c, device="meta")
    rotations = torch.empty(h, c, b, device="meta")
    (hash_launch,), codes = sblsh_hash_fwd_plan(q, rotations)
    assert codes.shape == (n, h, length) and codes.dtype == torch.int32
    assert hash_launch.flops <= 2 * sblsh_hash_fwd_min_flops(n, length, c, h, b)
    (histogram, sort), (perm, inv, hist, starts) = bucket_sort_fwd_plan(codes, b, l)
    assert perm.shape == (n, h, length + (-length) % l) and inv.shape == (n, h, length)
    assert histogram.constexprs == sort.constexprs and hist.shape == starts.shape
    assert histogram.constexprs["BLOCK_L"] * histogram.constexprs["BLOCK_B"] <= 16384


COMPILE_SCRIPT = textwrap.dedent("""
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile
    from dlsn.kernels.window_attention import window_attn_fwd_plan
    types = {torch.float32: "*fp32", torch.int32: "*i32"}
    q, v, F = (torch.empty(1, 64, d, device="meta") for d in (16, 32, 32))
    perm = torch.empty(1, 1, 64, device="meta", dtype=torch.int32)
    for precision in ("ieee", "tf32"):
        (launch,), _ = window_attn_fwd_plan(q, v, F, perm, 32, precision)
        signature = {name: "constexpr" if name in launch.constexprs
                     else types[launch.args[name].dtype] if isinstance(launch.args[name], torch.Tensor) else "i32"
                     for name in launch.kernel.arg_names}
        source = ASTSource(fn=launch.kernel, signature=signature, constexprs=launch.constexprs)
        ptx = compile(source, target=GPUTarget("cuda", 80, 32),
                      options=dict(num_warps=launch.num_warps, num_stages=launch.num_stages)).asm["ptx"]
        print(precision, sum("mma.sync" in line and ".tf32" in line for line in ptx.splitlines()))
""")


def test_precision_reaches_the_compiled_code():
    # Compiled for sm_80 without a GPU (no interpreter in the child): tf32 lowers to tf32 MMAs, ieee to none.
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    counts = dict(line.split() for line in result.stdout.split("\n") if line)
    assert int(counts["ieee"]) == 0 and int(counts["tf32"]) > 0
