"""CPU inference time of DLSN past eager PyTorch, side by side in one process: eager vs
`torch.compile` (Inductor) for the demo model and the published-size model, and onnxruntime vs
PyTorch eager for the demo model (its `dlsn export --format onnx` graph).

    python bench/bench_compile.py [--size 128] [--reps 3] [--out FILE.md]
    python bench/bench_compile.py --models demo --no-compile     # the onnxruntime row alone
    python bench/bench_compile.py --smoke            # tiny model and image: keeps the script alive in CI

Seeded random weights of each size (the timing does not depend on the values), reference GLA
backend (the CPU's), float32, batch 1, no_grad, eval mode. Each figure is the median of `--reps`
calls after one warm-up call (the compiled model's first call compiles: its time is reported as
`compile s`). Compiled outputs are checked against eager before they are timed.
"""
import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import dlsn  # noqa: E402

MODELS = {
    "demo": dict(n_resgroups=1, n_resblocks=2, n_feats=48, chunk_size=64, n_hashes=2, res_scale=1.0),
    "published": dict(n_resgroups=10, n_resblocks=4, n_feats=256, chunk_size=128, n_hashes=3, res_scale=0.1),
    "smoke": dict(n_resgroups=1, n_resblocks=1, n_feats=8, chunk_size=16, n_hashes=2, res_scale=1.0),
}


def median_seconds(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compile_row(name, size, reps):
    torch.manual_seed(0)
    model = dlsn.DLSN(scale=2, backend="reference", **MODELS[name]).eval()
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager_s = median_seconds(lambda: model(x), reps)
        expected = model(x)
        compiled = torch.compile(model, fullgraph=True)
        start = time.perf_counter()
        got = compiled(x)
        compile_s = time.perf_counter() - start
        error = (got - expected).abs().max().item()
        if error > 1e-4:
            raise SystemExit(f"{name}: compiled output differs from eager by {error:.2e}")
        compiled_s = median_seconds(lambda: compiled(x), reps)
    return (f"| {name} | {size}x{size} | {eager_s:.3f} | {compiled_s:.3f} | {eager_s / compiled_s:.2f}x "
            f"| {compile_s:.0f} | {error:.1e} |")


def onnx_row(name, size, reps):
    from dlsn.sr import deploy

    torch.manual_seed(0)
    model = dlsn.DLSN(scale=2, backend="reference", **MODELS[name]).eval()
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as folder:
        runner = deploy.load_onnx(deploy.save_onnx(model, os.path.join(folder, "m.onnx"), (48, 48)))
        with torch.no_grad():
            eager_s = median_seconds(lambda: model(x), reps)
            error = (runner(x) - model(x)).abs().max().item()
        onnx_s = median_seconds(lambda: runner(x), reps)
    return f"| {name} | {size}x{size} | {eager_s:.3f} | {onnx_s:.3f} | {eager_s / onnx_s:.2f}x | {error:.1e} |"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model and image (CI)")
    parser.add_argument("--size", type=int, default=128, help="LR image side (default 128)")
    parser.add_argument("--reps", type=int, default=3, help="timed calls per figure (median)")
    parser.add_argument("--models", default="demo,published", help="comma-separated: demo, published")
    parser.add_argument("--no-onnx", action="store_true", help="skip the onnxruntime row")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--out", default=None, help="also write the markdown here")
    args = parser.parse_args(argv)
    names, size, reps = (["smoke"], 12, 1) if args.smoke else (args.models.split(","), args.size, args.reps)
    lines = [f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
             f"{torch.get_num_threads()} torch threads; torch {torch.__version__}; load average "
             f"{os.getloadavg()[0]:.1f} at start", "",
             "| model | input | eager s | compiled s | speed-up | compile s | max abs diff |",
             "|---|---|---|---|---|---|---|"]
    for name in [] if args.no_compile else names:
        lines.append(compile_row(name, size, reps))
        print(lines[-1], flush=True)
    if not args.no_onnx:
        lines += ["", "| model | input | PyTorch eager s | onnxruntime s | speed-up | max abs diff |",
                  "|---|---|---|---|---|---|", onnx_row(names[0], size, reps)]
    lines.append(f"load average {os.getloadavg()[0]:.1f} at the end")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text)


if __name__ == "__main__":
    main()
