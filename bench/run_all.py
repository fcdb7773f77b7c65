"""Run every benchmark into one run folder and write `summary.md` (headline ratios against the targets).

    python bench/run_all.py [--smoke] [--out DIR] [--run-id ID] [--only gla,stages,scaling,dlsn]

Each script stays runnable alone; this runs them in one process so that they share one run id.
"""
import os
import sys
import traceback

import harness

import bench_dlsn
import bench_gla
import bench_scaling
import bench_stages

SCRIPTS = {"gla": bench_gla, "stages": bench_stages, "scaling": bench_scaling, "dlsn": bench_dlsn}
TARGETS = [
    ("bench_gla", "train-fwdbwd", ("triton", "reference"), "GLA fwd+bwd, training shape: >= 10x faster and >= 15x less peak memory than reference"),
    ("bench_gla", "train-fwdbwd", ("triton", "flex"), "GLA fwd+bwd, training shape: faster than FlexAttention"),
    ("bench_stages", "sort", ("triton", "torch.sort"), "counting sort >= 3x faster than torch.sort"),
    ("bench_dlsn", "train-step", ("triton", "reference"), "DLSN training step >= 1.5x faster than reference"),
]


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    only = None
    if "--only" in argv:
        index = argv.index("--only")
        only = argv[index + 1].split(",")
        del argv[index:index + 2]
    args = harness.parse_args(__doc__.splitlines()[0], argv)
    recorders, failures = {}, []
    run_id, out = args.run_id, args.out
    for name, module in SCRIPTS.items():
        if only and name not in only:
            continue
        script_argv = list(argv)
        if run_id:
            script_argv = [a for i, a in enumerate(script_argv) if a != "--run-id" and (i == 0 or script_argv[i - 1] != "--run-id")]
            script_argv += ["--run-id", run_id]
        if out and "--out" not in script_argv:
            script_argv += ["--out", out]
        try:
            recorder = module.main(script_argv)
        except Exception:
            failures.append(f"{name}: {traceback.format_exc().splitlines()[-1]}")
            traceback.print_exc()
            continue
        recorders[recorder.script] = recorder
        run_id, out = recorder.run_id, recorder.out
    if not recorders:
        print("no benchmark ran", file=sys.stderr)
        return 1
    lines = [f"# Benchmark summary — run {run_id}", ""]
    env = next(iter(recorders.values())).env
    lines += [f"GPU {env['gpu']}, driver {env['driver']}, torch {env['torch']}, triton {env['triton']}, "
              f"git {env['git_sha']}, TF32 {env['tf32']}.", ""]
    lines += sorted({note for r in recorders.values() for note in r.notes if "Ceilings" in note or "CPU run" in note})
    lines += ["", "## Targets (goals, not asserts)", ""]
    for script, case, pair, text in TARGETS:
        recorder = recorders.get(script)
        found = recorder.ratio_lines([pair]) if recorder else []
        found = [f for f in found if f.startswith(f"- {case},")]
        lines.append(f"- **{text}**")
        lines += ["  " + f for f in found] or ["  - no ratio: a provider did not run (see the script's table)"]
    gla = recorders.get("bench_gla")
    if gla:
        lines += ["- **fused GLA forward within 3x of its roofline floor** (floor = max(FLOPs / bf16 matmul peak, "
                  "min bytes / copy bandwidth), both measured in this run)"]
        for row in gla.ok_rows():
            if row["provider"] == "triton" and row["case"].endswith("-fwd") and row.get("flops"):
                floor = max(row["flops"] / gla.ceilings["bf16_tflops"] / 1e9, row["min_bytes"] / gla.ceilings["copy_gbps"] / 1e6)
                lines.append(f"  - {row['case']}, {row['shape']}, {row['dtype']}: {row['ms'] / floor:.1f}x the floor")
    for name, recorder in recorders.items():
        skipped = [r for r in recorder.rows if r["status"] != "ok"]
        if skipped:
            lines += ["", f"## Not measured in {name}", ""]
            lines += [f"- {r['case']} {r['shape']} {r['dtype']} {r['provider']}: {r['status']}: {r['reason']}" for r in skipped]
    if failures:
        lines += ["", "## Scripts that failed", ""] + [f"- {f}" for f in failures]
    path = os.path.join(out, "summary.md")
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print(f"[run_all] wrote {path}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
