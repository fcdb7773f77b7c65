"""The compile gate: every kernel launch at the training and inference shapes, compiled for sm_80 and
sm_90a exactly as its launcher configures it (bench/compile_report.py), has no spill stores, lowers
every dot of a 16-bit or TF32 mode to tensor-core instructions, and fits the target's shared memory.
Paired with checks that the gate can fail: a kernel that must spill, and an ieee float32 dot that
must come out as FMAs. Needs no GPU (Triton compiles offline with its bundled ptxas). The compiles
run in subprocesses: the test session runs Triton on its CPU interpreter, which replaces the JIT."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
sys.path.insert(0, BENCH)
import compile_report  # noqa: E402

CLEAN_ENV = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def run_report(tmp_path, *options):
    """Rows of `bench/compile_report.py OPTIONS` (written to a CSV), run without the interpreter."""
    path = tmp_path / "report.csv"
    result = subprocess.run([sys.executable, os.path.join(BENCH, "compile_report.py"), *options, "--csv", str(path)],
                            capture_output=True, text=True, cwd=ROOT, env=CLEAN_ENV, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return compile_report.read_csv(path)


@pytest.fixture(scope="module")
def gate_rows(tmp_path_factory):
    """Both gated shapes on both targets in every dtype, in two worker processes."""
    return run_report(tmp_path_factory.mktemp("gate"), "--shape", "training,inference", "--jobs", "2")


def test_every_launch_compiles_spill_free_on_tensor_cores_within_shared_memory(gate_rows):
    assert {(r["shape"], r["target"], r["dtype"]) for r in gate_rows} == {
        (s, t, d) for s in ("training", "inference") for t in compile_report.TARGETS for d in compile_report.DTYPES}
    failures = [f"{r['shape']} {r['target']} {r['dtype']} {r['kernel']}: {'; '.join(compile_report.problems(r))}"
                for r in gate_rows if compile_report.problems(r)]
    assert not failures, f"{len(failures)} of {len(gate_rows)} launches fail the compile gate:\n" + "\n".join(failures)


def test_tensor_core_modes_reach_tensor_cores(gate_rows):
    """Every attention kernel has dots, and in a tensor-core dtype some SASS MMA instruction (HMMA on
    sm_80, HGMMA on sm_90a): a dot count of zero would make the not-on-tensor-cores check vacuous."""
    attention = [r for r in gate_rows if r["stage"] in ("fwd", "bwd") and "fold" not in r["kernel"] and not r["error"]]
    assert attention
    for r in attention:
        assert r["dots"] > 0, r
        if r["dtype"] in compile_report.TENSOR_CORE_DTYPES:
            assert r["HMMA"] + r["HGMMA"] > 0, r


SPILLING_TOY = '''
import json, sys
sys.path.insert(0, {bench!r})
import compile_report
import torch
import triton
import triton.language as tl
from dlsn.kernels.launch import Launch


@triton.jit
def _spilling_toy_kernel(X, Y, BLOCK: tl.constexpr):
    # A [BLOCK, BLOCK] float32 tile live across a reduction: 512 values per thread with one warp
    # at BLOCK = 128, more than the 255 registers a thread can have.
    rows = tl.arange(0, BLOCK)
    offsets = rows[:, None] * BLOCK + rows[None, :]
    x = tl.load(X + offsets)
    total = tl.sum(x, axis=1)
    tl.store(Y + offsets, x / total[:, None])


tile = torch.empty((128, 128), device="meta")
launch = Launch(_spilling_toy_kernel, (1,), dict(X=tile, Y=tile), dict(BLOCK=128), num_warps=1, num_stages=1)
print(json.dumps(compile_report.compile_launch(launch, "sm_80")))
'''


def test_gate_catches_spill_stores(tmp_path):
    script = tmp_path / "spilling_toy.py"
    script.write_text(textwrap.dedent(SPILLING_TOY.format(bench=BENCH)))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=ROOT, env=CLEAN_ENV,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    assert stats["spill_store_bytes"] > 0 and stats["STL"] > 0, stats
    row = dict(stats, dtype="bf16", shared_limit=compile_report.TARGETS["sm_80"][1], error="")
    assert any("spill stores" in p for p in compile_report.problems(row))


def test_gate_catches_a_dot_off_the_tensor_cores(tmp_path):
    """The forward kernel with ieee float32 dots compiles to FMAs: the report counts its dots as not
    on tensor cores and finds no MMA instruction, and the gate rejects that in a tensor-core mode."""
    (row,) = run_report(tmp_path, "--kernel", "window_attn_fwd", "--shape", "training", "--dtype", "fp32-ieee",
                        "--target", "sm_80")
    assert row["dots"] > 0 and row["dots_not_mma"] == row["dots"], row
    assert row["HMMA"] == 0 and row["FFMA"] > 0, row
    row = dict(row, spill_store_bytes=0)
    assert not any("tensor cores" in p for p in compile_report.problems(row))
    assert any("not on tensor cores" in p for p in compile_report.problems(dict(row, dtype="fp32-tf32")))


def test_gate_catches_shared_memory_over_the_limit():
    row = dict(error="", dtype="bf16", spill_store_bytes=0, dots=0, dots_not_mma=0,
               shared_bytes=compile_report.TARGETS["sm_80"][1] + 1, shared_limit=compile_report.TARGETS["sm_80"][1])
    assert any("shared" in p for p in compile_report.problems(row))
    assert not compile_report.problems(dict(row, shared_bytes=row["shared_limit"]))


def test_named_shapes_follow_the_package_bucket_rule():
    try:
        from dlsn.nn.hashing import n_buckets
    except ImportError:
        from dlsn.ops.reference import n_buckets
    for shape in compile_report.SHAPES.values():
        assert shape.b == n_buckets(shape.L, shape.l), shape


@pytest.mark.parametrize("option", [["--shape", "validation"], ["--target", "sm_70"], ["--dtype", "fp8"],
                                    ["--kernel", "no_such_kernel", "--dtype", "bf16", "--target", "sm_80"]])
def test_unknown_names_are_one_line_errors(option):
    result = subprocess.run([sys.executable, os.path.join(BENCH, "compile_report.py"), *option],
                            capture_output=True, text=True, cwd=ROOT, env=CLEAN_ENV, timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    error_lines = result.stderr.strip().splitlines()
    assert len(error_lines) == 1 and error_lines[0].startswith("compile_report: error: unknown"), result.stderr


def test_minimal_flops_agree_with_the_kernels_own_models():
    """The report's minimal-algorithm model and the kernel modules' are written independently."""
    from dlsn.kernels.hash import sblsh_hash_fwd_min_flops
    from dlsn.kernels.window_attention import window_attn_fwd_min_flops
    from dlsn.kernels.window_attention_bwd import minimal_bwd_flops
    for s in compile_report.SHAPES.values():
        assert compile_report.minimal_flops("hash", s) == sblsh_hash_fwd_min_flops(s.N, s.L, s.c, s.h, s.b)
        assert compile_report.minimal_flops("fwd", s) == window_attn_fwd_min_flops(s.N, s.h, s.L, s.c, s.C, s.l)
        assert compile_report.minimal_flops("bwd", s) == minimal_bwd_flops(s.N, s.h, s.L, s.c, s.C, s.l)
