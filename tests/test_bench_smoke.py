"""Every bench script runs with --smoke (tiny shapes; Triton on the CPU interpreter without CUDA) and
writes a CSV with the documented columns and a row per provider, plus a markdown summary."""
import csv
import os
import shutil
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
sys.path.insert(0, BENCH)
from harness import COLUMNS  # noqa: E402

EXPECTED = {
    "bench_gla": {"train-fwd": {"reference", "triton", "flex"}, "train-fwdbwd": {"reference", "triton", "flex"}},
    "bench_stages": {"hash": {"reference", "triton"}, "sort": {"reference", "triton", "torch.sort", "torch.argsort"},
                     "attention": {"reference", "triton"}, "scatter-back": {"reference", "triton"},
                     "fc": {"reference"}, "attention-bwd": {"reference", "triton"}},
    "bench_scaling": {"infer-fwd": {"reference", "triton"}},
    "bench_dlsn": {"train-step": {"reference", "triton"}, "infer-x2": {"reference", "triton"}},
}

# fused paths that exist now: a smoke run where they fail is a failure, not a skipped row
MUST_RUN = {
    "bench_gla": {("train-fwd", "triton"), ("train-fwdbwd", "triton"), ("train-fwd", "flex")},
    "bench_stages": {("hash", "triton"), ("sort", "triton"), ("attention", "triton"), ("attention-bwd", "triton")},
    "bench_scaling": {("infer-fwd", "triton")},
    "bench_dlsn": {("infer-x2", "triton")},
}


def run_smoke(script, out):
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"
    result = subprocess.run([sys.executable, os.path.join(BENCH, f"{script}.py"), "--smoke", "--out", str(out),
                             "--run-id", "smoke"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "Warning" not in result.stderr, result.stderr[-4000:]  # e.g. a deprecated torch argument
    return result


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_bench_smoke(script, tmp_path):
    run_smoke(script, tmp_path)
    with open(tmp_path / f"{script}.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == COLUMNS
        rows = list(reader)
    ceilings = [r for r in rows if r["case"] == "ceiling"]
    assert {r["provider"] for r in ceilings} == {"device-copy", "bf16-matmul"}
    assert float(ceilings[0]["gbps"] or ceilings[0]["tflops"]) > 0
    rows = [r for r in rows if r["case"] != "ceiling"]
    for case, providers in EXPECTED[script].items():
        for dtype in {r["dtype"] for r in rows}:
            got = {r["provider"] for r in rows if r["case"] == case and r["dtype"] == dtype}
            assert got == providers, (case, dtype, got)
    for row in rows:
        assert row["run_id"] == "smoke" and row["script"] == script
        assert row["status"] in ("ok", "skipped", "error", "oom"), row
        if row["status"] == "ok":
            assert float(row["ms"]) > 0 and row["timer"] in ("cpu-perf_counter", "cuda-do_bench-median"), row
        else:
            assert row["reason"], row  # a row that did not run says why
    for case, provider in MUST_RUN[script]:
        statuses = {r["status"] for r in rows if r["case"] == case and r["provider"] == provider}
        assert statuses == {"ok"}, (case, provider, [r["reason"] for r in rows if r["case"] == case and r["provider"] == provider])
    # the reference path runs everywhere: a smoke run that measured nothing would be a failure
    assert any(r["provider"] == "reference" and r["status"] == "ok" for r in rows)
    markdown = (tmp_path / f"{script}.md").read_text()
    assert "| case | shape | dtype | provider | status | ms |" in markdown
    assert markdown.count("\n| ") - 1 == len(rows) + len(ceilings)


def test_precision_modes_emulation_orders_the_modes(capsys):
    """bench/precision_modes.py on a CPU: the emulated TF32 error exceeds tf32x3's and ieee's (an
    emulation that ignored the mode would print three equal rows)."""
    import precision_modes

    assert precision_modes.main(["--length", "100", "--channels", "32", "--chunk", "16"]) == 0
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines()[2:]]
    forward = {row[1].strip(): float(row[3]) for row in rows}
    gradient = {row[1].strip(): float(row[4]) for row in rows}
    assert set(forward) == {"ieee", "tf32", "tf32x3"}
    for errors in (forward, gradient):
        assert errors["tf32"] > 10 * errors["tf32x3"] and errors["tf32"] > 10 * errors["ieee"]
        assert errors["ieee"] < 1e-5 and errors["tf32x3"] < 1e-5


def test_bench_data_smoke(tmp_path):
    """bench/bench_data.py --smoke: every provider of both cases measured (patches per CPU second), and
    a timed dlsn prepare per scale and degradation, in the harness's CSV columns."""
    run_smoke("bench_data", tmp_path)
    with open(tmp_path / "bench_data.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == COLUMNS
        rows = list(reader)
    providers = {"prepared", "prepared-dn", "png-premade", "fly-bi", "fly-bd", "fly-dn"}
    for case in ("patch8-x2", "patch8-x4"):
        assert {r["provider"] for r in rows if r["case"] == case} == providers
    assert {(r["case"], r["provider"]) for r in rows if r["case"].startswith("prepare-")} == {
        (f"prepare-x{s}", f"dlsn prepare {d}") for s in (2, 4) for d in ("bi", "bd")}
    assert all(r["status"] == "ok" and float(r["ms"]) > 0 and r["timer"] == "cpu-process_time" for r in rows)
    markdown = (tmp_path / "bench_data.md").read_text()
    assert markdown.count("| patch8-x") == 12 and "8298720128 bytes" in markdown  # 800 x 2040x1356 at x2, exact


@pytest.mark.skipif(shutil.which("git") is None or not os.path.exists(os.path.join(ROOT, ".git")),
                    reason="needs git and a git checkout")
def test_generated_results_are_ignored_by_git():
    """A run's default results folder leaves the tree clean; the committed compile tables stay tracked."""
    import harness

    def ignored(path):
        return subprocess.run(["git", "check-ignore", "-q", os.path.relpath(path, ROOT)], cwd=ROOT).returncode == 0

    assert ignored(os.path.join(harness.default_out(harness.default_run_id()), "summary.md"))
    assert not ignored(os.path.join(BENCH, "results", "compile", "triton-3.9.0.md"))


def test_upscale_tiles_smoke():
    """bench/upscale_tiles.py (the measurement behind --tile auto's sizes) runs: one row per --tile value."""
    pytest.importorskip("skimage")
    result = subprocess.run([sys.executable, os.path.join(BENCH, "upscale_tiles.py"), "--smoke"], capture_output=True,
                            text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| 16 |") or line.startswith("| 0 |")]
    assert len(rows) == 2 and "whole image" in rows[1] and "Warning" not in result.stderr, result.stdout
    assert all(float(row.split("|")[5]) > 0 for row in rows)  # CPU seconds measured
