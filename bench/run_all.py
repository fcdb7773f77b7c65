"""Run the benchmarks into one run folder and write `summary.md` (headline ratios against the targets).

    python bench/run_all.py [--smoke] [--out DIR] [--run-id ID] [--only gla,stages,scaling,dlsn,data]
    python bench/run_all.py --summary-only --out DIR     # rebuild summary.md from the CSVs in DIR

The summary is built from every `bench_*.csv` in the run folder, so scripts run one at a time (each
under its own timeout, as bench/gpu_run.sh does) still give one summary. It ends with a short table
of every row on stdout.
"""
import csv
import glob
import os
import sys
import traceback

import harness

import bench_data
import bench_dlsn
import bench_gla
import bench_scaling
import bench_stages

SCRIPTS = {"gla": bench_gla, "stages": bench_stages, "scaling": bench_scaling, "dlsn": bench_dlsn, "data": bench_data}
TARGETS = [
    ("bench_gla", "train-fwdbwd", ("triton", "reference"),
     "GLA fwd+bwd, training shape: >= 10x faster and >= 15x less peak memory than reference"),
    ("bench_gla", "train-fwdbwd", ("triton", "flex"), "GLA fwd+bwd, training shape: faster than FlexAttention"),
    ("bench_stages", "sort", ("triton", "torch.sort"), "counting sort >= 3x faster than torch.sort"),
    ("bench_dlsn", "train-step", ("triton", "reference"), "DLSN training step >= 1.5x faster than reference"),
]


def _pop_option(argv, name, has_value=True):
    if name not in argv:
        return None
    index = argv.index(name)
    value = argv[index + 1] if has_value else True
    del argv[index:index + (2 if has_value else 1)]
    return value


def read_rows(out):
    rows = {}
    for path in sorted(glob.glob(os.path.join(out, "bench_*.csv"))):
        with open(path, newline="") as handle:
            rows[os.path.basename(path)[:-4]] = list(csv.DictReader(handle))
    return rows


def summarize(out, failures=()):
    """Write <out>/summary.md from the CSVs there; print a short table. Returns the summary path."""
    rows = read_rows(out)
    if not rows:
        raise SystemExit(f"no bench_*.csv in {out}")
    # The header describes the device run; bench_data always measures the CPU (the training input).
    first = next((r for script_rows in rows.values() for r in script_rows if r["gpu"] != "cpu"),
                 next(r for script_rows in rows.values() for r in script_rows))
    lines = [f"# Benchmark summary — run {first['run_id']}", "",
             f"GPU {first['gpu']}, driver {first['driver']}, torch {first['torch']}, triton {first['triton']}, "
             f"git {first['git_sha']}, TF32 {first['tf32']}.", ""]
    if first["gpu"] == "cpu":
        lines += ["CPU run (smoke): CPU timings, not GPU figures; peak memory not measured.", ""]
    ceilings = {}
    for script_rows in rows.values():
        for r in script_rows:
            if r["case"] == "ceiling":
                ceilings.setdefault(r["provider"], []).append(float(r["gbps"] or r["tflops"]))
    lines += [f"Ceilings measured in this run: device copy {max(ceilings.get('device-copy', [0])):.1f} GB/s, "
              f"bf16 matmul {max(ceilings.get('bf16-matmul', [0])):.2f} TFLOP/s (best of the scripts' measurements).",
              "", "## Targets (goals, not asserts)", ""]
    ok = {script: [r for r in script_rows if r["status"] == "ok"] for script, script_rows in rows.items()}
    for script, case, pair, text in TARGETS:
        found = [f for f in harness.ratio_lines(ok.get(script, []), [pair]) if f.startswith(f"- {case},")]
        lines.append(f"- **{text}**")
        lines += ["  " + f for f in found] or ["  - no ratio: a provider did not run (see the script's table)"]
    lines.append("- **fused GLA forward within 3x of its roofline floor** (floor = max(FLOPs / bf16 matmul "
                 "ceiling, min bytes / copy ceiling), ceilings of this run)")
    copy, matmul = max(ceilings.get("device-copy", [0])), max(ceilings.get("bf16-matmul", [0]))
    for r in ok.get("bench_gla", []):
        if r["provider"] == "triton" and r["case"].endswith("-fwd") and r["flops"] and copy and matmul:
            floor = max(float(r["flops"]) / matmul / 1e9, float(r["min_bytes"]) / copy / 1e6)
            lines.append(f"  - {r['case']}, {r['shape']}, {r['dtype']}: {float(r['ms']) / floor:.1f}x the floor")
    scaling = [r for r in ok.get("bench_scaling", []) if r["peak_mib"]]
    if scaling:
        lines += ["- **inference memory linear in image area** (peak MiB per 1k positions, bench_scaling)"]
        for r in scaling:
            length = int(r["shape"].split()[1].split("x")[0]) ** 2
            lines.append(f"  - {r['provider']} {r['dtype']} L={length}: {1e3 * float(r['peak_mib']) / length:.3g}")
    lines += ["", "## All ratios", ""]
    for script, script_rows in ok.items():
        lines += harness.ratio_lines(script_rows, [("triton", "reference"), ("triton", "flex"), ("triton", "torch.sort")])
    for script, script_rows in rows.items():
        bad = [r for r in script_rows if r["status"] != "ok"]
        if bad:
            lines += ["", f"## Not measured in {script}", ""]
            lines += [f"- {r['case']} {r['shape']} {r['dtype']} {r['provider']}: {r['status']}: {r['reason']}" for r in bad]
    if failures:
        lines += ["", "## Scripts that failed", ""] + [f"- {f}" for f in failures]
    path = os.path.join(out, "summary.md")
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    for script_rows in rows.values():
        for r in script_rows:
            if r["case"] != "ceiling":
                print(f"{r['script']:13s} {r['case']:14s} {r['dtype']:9s} {r['provider']:13s} {r['status']:7s} "
                      f"{r['ms']:>9s} ms {r['peak_mib']:>8s} MiB  {r['shape']}")
    print(f"[run_all] wrote {path}")
    return path


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    only = _pop_option(argv, "--only")
    if _pop_option(argv, "--summary-only", has_value=False):
        args = harness.parse_args(__doc__.splitlines()[0], argv)
        summarize(args.out)
        return 0
    args = harness.parse_args(__doc__.splitlines()[0], argv)
    run_id = args.run_id or harness.default_run_id()
    out = args.out or harness.default_out(run_id)
    for option in ("--run-id", "--out"):
        _pop_option(argv, option)
    argv += ["--run-id", run_id, "--out", out]
    failures = []
    for name, module in SCRIPTS.items():
        if only and name not in only.split(","):
            continue
        try:
            module.main(list(argv))
        except Exception:
            failures.append(f"{name}: {traceback.format_exc().splitlines()[-1]}")
            traceback.print_exc()
    if not os.path.isdir(out):
        print("no benchmark ran", file=sys.stderr)
        return 1
    args.out = out
    summarize(args.out, failures)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
