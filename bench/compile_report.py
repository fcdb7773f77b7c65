"""Compile report: what the compiler makes of every kernel launch, for GPUs this machine does not have.

    python bench/compile_report.py --kernel window_attn_fwd --shape training --dtype fp32-tf32 --target sm_90a
    python bench/compile_report.py --shape training --target sm_80            # every kernel, every dtype
    python bench/compile_report.py --all                                      # the full report -> bench/results/compile/

Each launch comes from the launcher's own plan function (`<stage>_plan`, kernels/launch.py) called
with `meta` tensors at a named shape, so the configuration compiled here is the one the launcher
picks. Every launch is compiled with `triton.compile(ASTSource(...), target=GPUTarget("cuda", cap, 32))`
(no GPU, no driver needed), specialised exactly as the JIT would specialise it on a GPU. Per launch it
prints: registers and spill store/load bytes (ptxas -v), shared memory (Triton's allocation), warps and
stages, and the static SASS instruction counts that matter (cuobjdump -sass): tensor-core MMA (HMMA on
sm_80, HGMMA = wgmma on sm_90a), FFMA, local loads/stores (LDL/STL); the number of `tt.dot`s and how
many of them did not get a tensor-core layout; the launch's FLOPs by the kernel's model (`Launch.flops`)
and the minimal FLOPs of the stage's algorithm. No timing: nothing runs.

Options: --kernel NAME (a kernel name such as `_window_attn_fwd_kernel`, a short name such as
`window_attn_fwd` or `dv`, a launch name such as `window_attn_bwd_fold_dq`, or a stage: hash, sort,
fwd, bwd; default all), --shape training|inference|demo (default training),
--dtype fp32-ieee|fp32-tf32|fp32-tf32x3|bf16|fp16 (default all), --target sm_80|sm_90a (default both);
--shape/--dtype/--target take comma-separated lists. --csv PATH / --markdown PATH write the tables,
--all writes the full report to bench/results/compile/triton-<version>.{csv,md}, --jobs N compiles the
targets in N processes. An unknown shape, dtype, target or kernel is a one-line error (exit status 2).
Runs with triton 3.6 and 3.9; needs no GPU and no dlsn._C (PYTHONPATH at a checkout is enough).
"""
import argparse
import contextlib
import csv
import dataclasses
import io
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Compiling needs real JIT functions: the CPU interpreter (TRITON_INTERPRET=1) replaces them.
if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)
# Triton 3.9 warns that its default (FP fusion on, as in 3.6) will change; compile what runs today.
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

from dlsn.kernels import bucket_sort, hash as hash_kernels, window_attention, window_attention_bwd  # noqa: E402
from dlsn.kernels.constants import dot_family  # noqa: E402

RESULTS = os.path.join(ROOT, "bench", "results", "compile")

# Target -> (compute capability, opt-in shared memory per block in bytes).
TARGETS = {"sm_80": (80, 163 * 1024), "sm_90a": (90, 227 * 1024)}

# dtype name -> (tensor dtype, precision of the float32 dots; 16-bit inputs ignore it).
DTYPES = {
    "fp32-ieee": (torch.float32, "ieee"),
    "fp32-tf32": (torch.float32, "tf32"),
    "fp32-tf32x3": (torch.float32, "tf32x3"),
    "bf16": (torch.bfloat16, "ieee"),
    "fp16": (torch.float16, "ieee"),
}
TENSOR_CORE_DTYPES = ("fp32-tf32", "fp32-tf32x3", "bf16", "fp16")


@dataclasses.dataclass(frozen=True)
class Shape:
    """A GLA problem in docs/internals.md's notation; `b` buckets per round (the package's rule
    b = max(1, min(L//l + (L//l) % 2, 128)); tests/test_compile_report.py checks it)."""

    N: int
    H: int
    W: int
    C: int
    c: int
    l: int  # noqa: E741
    h: int
    b: int
    note: str = ""

    @property
    def L(self):
        return self.H * self.W

    @property
    def Lp(self):
        return self.L + (-self.L) % self.l

    def text(self):
        return f"N{self.N} {self.H}x{self.W} C{self.C} c{self.c} l{self.l} h{self.h} b{self.b}"


SHAPES = {
    "training": Shape(16, 48, 48, 256, 64, 128, 3, 18, "DLSN training batch: 16 LR patches of 48x48"),
    "inference": Shape(1, 512, 512, 256, 64, 128, 3, 128, "one 512x512 LR image"),
    "demo": Shape(16, 32, 32, 48, 12, 64, 2, 16,
                  "dlsn/sr/configs/demo.yaml: n_feats 48, reduction 4, chunk 64, 2 rounds, batch 16 of 32x32 LR patches"),
}

# ---- minimal FLOPs of the algorithm (a multiply-add counts 2) ------------------------------------


def minimal_flops(stage, s):
    """FLOPs the algorithm needs, whatever the kernel: per real query slot and round, 3l keys.
    forward: scores (c) + P.V (C); backward: scores (c), dP = g.v (C), dv += P g (C), dkey and dq (2c);
    hash: the c x b projection per position and round; sort: no floating-point work."""
    scores = s.N * s.h * s.L * 3 * s.l
    return {
        "hash": 2 * s.c * s.b * s.N * s.L * s.h,
        "sort": 0,
        "fwd": 2 * (s.c + s.C) * scores,
        "bwd": 2 * (3 * s.c + 2 * s.C) * scores,
    }[stage]


# ---- launch plans ---------------------------------------------------------------------------------


def stage_inputs(s, dtype):
    """Meta tensors of every stage's inputs at shape s."""
    meta = dict(device="meta")
    q = torch.empty((s.N, s.L, s.c), dtype=dtype, **meta)
    v = torch.empty((s.N, s.L, s.C), dtype=dtype, **meta)
    learned = torch.empty((s.N, s.L, s.l), dtype=dtype, **meta)
    rotations = torch.empty((s.h, s.c, s.b), dtype=torch.float32, **meta)
    codes = torch.empty((s.N, s.h, s.L), dtype=torch.int32, **meta)
    perm = torch.empty((s.N, s.h, s.Lp), dtype=torch.int32, **meta)
    inv = torch.empty((s.N, s.h, s.L), dtype=torch.int32, **meta)
    g = torch.empty((s.N, s.L, s.C), dtype=dtype, **meta)
    stats = torch.empty((s.N, s.L), dtype=torch.float32, **meta)
    return dict(q=q, v=v, learned=learned, rotations=rotations, codes=codes, perm=perm, inv=inv, g=g, stats=stats)


def plans(s, dtype_name):
    """[(stage, [Launch])] for shape s and a DTYPES name, from the launchers' own plan functions
    (config=None: the config each launcher picks; on meta tensors the first valid of its list)."""
    dtype, precision = DTYPES[dtype_name]
    x = stage_inputs(s, dtype)
    stats = x["stats"]
    return [
        ("hash", hash_kernels.sblsh_hash_fwd_plan(x["q"], x["rotations"])[0]),
        ("sort", bucket_sort.bucket_sort_fwd_plan(x["codes"], s.b, s.l)[0]),
        ("fwd", window_attention.window_attn_fwd_plan(x["q"], x["v"], x["learned"], x["perm"], s.l, precision)[0]),
        ("bwd", window_attention_bwd.window_attn_bwd_plan(x["q"], x["v"], x["learned"], x["perm"], x["inv"], x["g"],
                                                          stats, stats, stats, s.l, precision)[0]),
    ]


def config_lists():
    """{module: {NAME_CONFIGS: list or {dot family: list}}}: every kernel's candidate configs, in order."""
    found = {}
    for module in (hash_kernels, bucket_sort, window_attention, window_attention_bwd):
        lists = {name: value for name, value in vars(module).items() if name.endswith("_CONFIGS")}
        if lists:
            found[module.__name__] = lists
    return found


def config_text(config):
    blocks = " ".join(f"{k}={v}" for k, v in config.kwargs.items())
    return f"{blocks} w{config.num_warps} s{config.num_stages}"


# ---- compiling one launch -------------------------------------------------------------------------


def _specialize(launch, target):
    """(signature, constexprs, attrs, options) exactly as the JIT computes them when it launches
    `launch` on a device of `target` (meta tensors: 16-byte aligned pointers, as allocations are)."""
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature
    fn = launch.kernel
    if not hasattr(fn, "_pack_args"):
        raise RuntimeError(f"{getattr(fn, '__name__', fn)} is not a compilable JIT function "
                           "(TRITON_INTERPRET=1 was set before triton was imported)")
    backend = make_backend(target)
    kwargs = dict(launch.args, **launch.constexprs, num_warps=launch.num_warps, num_stages=launch.num_stages)
    missing = set(fn.arg_names) - set(kwargs)
    if missing:
        raise ValueError(f"launch of {fn.__name__} names no value for {sorted(missing)}")
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound_args, specialization, options = binder(**kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound_args, specialization, options)
    return signature, constexprs, attrs, options


def _ptxas_stats(log):
    def number(pattern):
        found = re.search(pattern, log)
        return int(found.group(1)) if found else 0
    if "Used" not in log:
        raise RuntimeError(f"unexpected ptxas -v output: {log[:500]}")
    return {"registers": number(r"Used (\d+) registers"), "spill_store_bytes": number(r"(\d+) bytes spill stores"),
            "spill_load_bytes": number(r"(\d+) bytes spill loads"), "stack_bytes": number(r"(\d+) bytes stack frame")}


def _tool(name, cap):
    from triton.backends.nvidia.compiler import get_ptxas
    ptxas = get_ptxas(cap)
    ptxas = getattr(ptxas, "path", ptxas)
    return ptxas if name == "ptxas" else os.path.join(os.path.dirname(ptxas), name)


SASS_OPS = ("HMMA", "HGMMA", "FFMA", "LDL", "STL")
_SASS_LINE = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9]*)")


def _sass_counts(cubin, cap):
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        sass = subprocess.run([_tool("cuobjdump", cap), "-sass", handle.name], capture_output=True, text=True,
                              check=True).stdout
    counts = dict.fromkeys(SASS_OPS, 0)
    for opcode in _SASS_LINE.findall(sass):
        if opcode in counts:
            counts[opcode] += 1
    return counts


_MMA_LAYOUT = re.compile(r"^#(\w+)\s*=\s*#(?:ttg|triton_gpu)\.nvidia_mma<", re.M)


def _dot_counts(ttgir):
    """(dots, dots without a tensor-core layout). wgmma dots (warp_group_dot) are tensor-core dots;
    a `tt.dot` is one when its result has an nvidia_mma layout, else it lowers to FMAs."""
    mma_aliases = set(_MMA_LAYOUT.findall(ttgir))
    dots = not_mma = 0
    for line in ttgir.splitlines():
        if re.search(r"\bwarp_group_dot\b", line) and "_wait" not in line:
            dots += 1
        elif re.search(r"\btt\.dot\b", line) and "->" in line:
            dots += 1
            result = line.rsplit("->", 1)[1]
            encoding = re.search(r",\s*#(\w+)>", result)
            if not (encoding and encoding.group(1) in mma_aliases) and "nvidia_mma" not in result:
                not_mma += 1
    return dots, not_mma


_COMPILED = {}


def compile_launch(launch, target_name):
    """Compile `launch` for `target_name`; returns the per-launch numbers (see the module docstring)."""
    if target_name not in TARGETS:
        raise ValueError(f"unknown target {target_name!r}; choose from {', '.join(TARGETS)}")
    cap, _ = TARGETS[target_name]
    target = GPUTarget("cuda", cap, 32)
    signature, constexprs, attrs, options = _specialize(launch, target)
    key = (launch.kernel, target_name, repr(sorted(signature.items())), repr(sorted(constexprs.items(), key=str)),
           repr(sorted(attrs.items(), key=str)), repr(sorted(options.__dict__.items())))
    if key in _COMPILED:
        return _COMPILED[key]
    from triton import knobs
    from triton.compiler import ASTSource
    # Triton's own ptxas run (its flags differ between versions) prints its -v log only when it
    # compiles, so the cache is bypassed.
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured), knobs.nvidia.scope(), knobs.compilation.scope():
        knobs.nvidia.dump_ptxas_log = True
        knobs.compilation.always_compile = True
        kernel = triton.compile(ASTSource(fn=launch.kernel, signature=signature, constexprs=constexprs, attrs=attrs),
                                target=target, options=options.__dict__)
    log = captured.getvalue()
    metadata = kernel.metadata
    stats = _ptxas_stats(log)
    sass = _sass_counts(kernel.asm["cubin"], cap)
    dots, dots_not_mma = _dot_counts(kernel.asm["ttgir"])
    result = dict(stats, shared_bytes=int(metadata.shared), num_warps=metadata.num_warps,
                  num_stages=metadata.num_stages, dots=dots, dots_not_mma=dots_not_mma, **sass)
    _COMPILED[key] = result
    return result


# ---- the report -----------------------------------------------------------------------------------

COLUMNS = ["triton", "target", "shape", "dtype", "stage", "launch", "kernel", "grid", "constexprs", "num_warps",
           "num_stages", "registers", "spill_store_bytes", "spill_load_bytes", "stack_bytes", "shared_bytes",
           "shared_limit", "dots", "dots_not_mma", "HMMA", "HGMMA", "FFMA", "LDL", "STL", "flops",
           "stage_flops", "stage_min_flops", "stage_flops_ratio", "error"]


def _short(name):
    return name.strip("_").removesuffix("_kernel")


def _constexpr_text(constexprs):
    return " ".join(f"{k}={getattr(v, '__name__', None) or str(v).replace('triton.language.', 'tl.')}"
                    for k, v in constexprs.items())


def select_kernel(launches, stage, kernel):
    if kernel in (None, "all", stage):
        return launches
    return [x for x in launches if kernel in (x.kernel.__name__, _short(x.kernel.__name__), x.name)
            or _short(x.kernel.__name__).endswith("_" + kernel)]


def report_rows(shape_name, dtype_names, target_names, kernel=None, progress=None):
    """One row per (target, dtype, launch) at shape `shape_name`."""
    if shape_name not in SHAPES:
        raise ValueError(f"unknown shape {shape_name!r}; choose from {', '.join(SHAPES)}")
    for name in target_names:
        if name not in TARGETS:
            raise ValueError(f"unknown target {name!r}; choose from {', '.join(TARGETS)}")
    for name in dtype_names:
        if name not in DTYPES:
            raise ValueError(f"unknown dtype {name!r}; choose from {', '.join(DTYPES)}")
    s = SHAPES[shape_name]
    rows = []
    for dtype_name in dtype_names:
        for stage, launches in plans(s, dtype_name):
            stage_flops = sum(x.flops for x in launches)
            minimal = minimal_flops(stage, s)
            for launch in select_kernel(launches, stage, kernel):
                for target_name in target_names:
                    row = dict(triton=triton.__version__, target=target_name, shape=shape_name, dtype=dtype_name,
                               stage=stage, launch=launch.name or _short(launch.kernel.__name__),
                               kernel=launch.kernel.__name__,
                               grid="x".join(str(g) for g in launch.grid), constexprs=_constexpr_text(launch.constexprs),
                               num_warps=launch.num_warps, num_stages=launch.num_stages,
                               shared_limit=TARGETS[target_name][1], flops=launch.flops, stage_flops=stage_flops,
                               stage_min_flops=minimal,
                               stage_flops_ratio=round(stage_flops / minimal, 3) if minimal else "", error="")
                    try:
                        row.update(compile_launch(launch, target_name))
                    except Exception as error:  # a launch that does not compile is a finding of the report
                        row["error"] = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}" \
                            if str(error).strip() else type(error).__name__
                    rows.append(row)
                    if progress:
                        progress(row)
    if kernel not in (None, "all") and not rows:
        known = sorted({_short(x.kernel.__name__) for _, ls in plans(s, dtype_names[0]) for x in ls})
        raise ValueError(f"unknown kernel {kernel!r}; choose from {', '.join(known)} or a stage (hash, sort, fwd, bwd)")
    return rows


def _report_task(task):
    shape_names, dtype_names, target_name, kernel = task
    return [row for shape in shape_names for row in report_rows(shape, dtype_names, [target_name], kernel)]


def report(shape_names, dtype_names, target_names, kernel=None, jobs=1, progress=None):
    """report_rows over several shapes; with jobs > 1, one worker process per target (launches that
    specialise alike at two shapes are compiled once per process)."""
    for name in shape_names:
        if name not in SHAPES:
            raise ValueError(f"unknown shape {name!r}; choose from {', '.join(SHAPES)}")
    if jobs <= 1 or len(target_names) == 1:
        return [row for shape in shape_names
                for row in report_rows(shape, dtype_names, target_names, kernel, progress)]
    import concurrent.futures
    import multiprocessing
    tasks = [(list(shape_names), list(dtype_names), target, kernel) for target in target_names]
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(_report_task, tasks))
    rows = [row for result in results for row in result]
    if progress:
        for row in rows:
            progress(row)
    return rows


def problems(row):
    """What the CI gate rejects in a row: spill stores, dots off the tensor cores in a tensor-core
    dtype, shared memory over the target's limit, a compile error."""
    found = []
    if row.get("error"):
        found.append(f"compile error: {row['error']}")
        return found
    if row["spill_store_bytes"]:
        found.append(f"{row['spill_store_bytes']} B spill stores")
    if row["dtype"] in TENSOR_CORE_DTYPES and row["dots_not_mma"]:
        found.append(f"{row['dots_not_mma']} of {row['dots']} dots not on tensor cores")
    if row["shared_bytes"] > row["shared_limit"]:
        found.append(f"{row['shared_bytes']} B shared > {row['shared_limit']} B")
    return found


def line(row):
    if row.get("error"):
        return f"{row['target']:6s} {row['dtype']:11s} {row['launch']:26s} ERROR {row['error']}"
    mma = row["HGMMA"] + row["HMMA"]
    return (f"{row['target']:6s} {row['dtype']:11s} {row['launch']:26s} regs {row['registers']:3d} "
            f"spill st/ld {row['spill_store_bytes']:5d}/{row['spill_load_bytes']:5d} B  smem {row['shared_bytes']:6d} B  "
            f"w{row['num_warps']} s{row['num_stages']}  MMA {mma:4d} FFMA {row['FFMA']:5d} LDL {row['LDL']:4d} "
            f"STL {row['STL']:4d}  dots {row['dots']} (not MMA {row['dots_not_mma']})  "
            f"GFLOP {row['flops'] / 1e9:.2f}  [{row['constexprs']}]")


NUMERIC = {"num_warps", "num_stages", "registers", "spill_store_bytes", "spill_load_bytes", "stack_bytes",
           "shared_bytes", "shared_limit", "dots", "dots_not_mma", "HMMA", "HGMMA", "FFMA", "LDL", "STL", "flops",
           "stage_flops", "stage_min_flops"}


def read_csv(path):
    """Rows written by write_csv, numbers as ints (empty where a launch did not compile)."""
    with open(path, newline="") as handle:
        return [{k: (int(v) if k in NUMERIC and v != "" else v) for k, v in row.items()} for row in csv.DictReader(handle)]


def write_csv(rows, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def markdown(rows, title):
    lines = [f"# {title}", "",
             "Static compile results (no GPU ran anything). `smem` = Triton's shared-memory allocation per block; "
             "MMA = HMMA + HGMMA (tensor-core) SASS instructions; FFMA/LDL/STL = static SASS counts; "
             "`dots !mma` = `tt.dot`s left without a tensor-core layout; GFLOP = the launch's FLOPs by the "
             "kernel's model; stage x min = the stage's launches' FLOPs over the algorithm's minimal FLOPs.", "",
             "| target | shape | dtype | stage | kernel | config | regs | spill st/ld B | smem B | MMA | FFMA | LDL | STL | "
             "dots (!mma) | GFLOP | stage x min | gate |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gate = "; ".join(problems(r)) or "ok"
        if r.get("error"):
            lines.append(f"| {r['target']} | {r['shape']} | {r['dtype']} | {r['stage']} | {r['launch']} | "
                         f"{r['constexprs']} w{r['num_warps']} s{r['num_stages']} | | | | | | | | | | | {gate} |")
            continue
        lines.append(
            f"| {r['target']} | {r['shape']} | {r['dtype']} | {r['stage']} | {r['launch']} | "
            f"{r['constexprs']} w{r['num_warps']} s{r['num_stages']} | {r['registers']} | "
            f"{r['spill_store_bytes']}/{r['spill_load_bytes']} | {r['shared_bytes']} | {r['HMMA'] + r['HGMMA']} | "
            f"{r['FFMA']} | {r['LDL']} | {r['STL']} | {r['dots']} ({r['dots_not_mma']}) | {r['flops'] / 1e9:.2f} | "
            f"{r['stage_flops_ratio']} | {gate} |")
    return "\n".join(lines + summary_lines(rows) + config_lines(rows)) + "\n"


def summary_lines(rows):
    """Per shape and dtype: each stage's FLOPs against the minimal algorithm; launches failing the gate."""
    lines = ["", "## FLOPs against the minimal algorithm, and the gate", "",
             "| shape | dtype | hash x min | fwd x min | bwd x min | fwd GFLOP (min) | bwd GFLOP (min) | launches failing the gate |",
             "|---|---|---|---|---|---|---|---|"]
    groups = {}
    for r in rows:
        groups.setdefault((r["shape"], r["dtype"]), []).append(r)
    for (shape, dtype), group in groups.items():
        stage = {r["stage"]: r for r in group}
        failing = sorted({f"{r['target']} {r['launch']}" for r in group if problems(r)})

        def ratio(name):
            return stage[name]["stage_flops_ratio"] if name in stage else ""

        def gflop(name):
            if name not in stage:
                return ""
            return f"{stage[name]['stage_flops'] / 1e9:.1f} ({stage[name]['stage_min_flops'] / 1e9:.1f})"
        lines.append(f"| {shape} | {dtype} | {ratio('hash')} | {ratio('fwd')} | {ratio('bwd')} | {gflop('fwd')} | "
                     f"{gflop('bwd')} | {', '.join(failing) or 'none'} |")
    return lines


def _config_used(config, row):
    blocks = dict(item.split("=", 1) for item in row["constexprs"].split())
    return (all(blocks.get(k) == str(v) for k, v in config.kwargs.items())
            and int(row["num_warps"]) == config.num_warps and int(row["num_stages"]) == config.num_stages)


def config_lines(rows):
    """Every kernel's candidate configs in order of preference, marked where a launch of this report
    starts from one (the first valid config; the same for both targets, a GPU then tunes over the valid
    ones). A table keyed by dot family (kernels/constants.py) is matched to a row through
    `dot_family(dtype, precision)`; families that share one list are listed once, together."""
    lines = ["", "## Candidate configs (in order; `start` = what the launchers pick without a GPU)", ""]
    for module_name, lists in config_lists().items():
        for name, value in lists.items():
            for families, configs in _family_groups(value):
                keys = f"[{', '.join(f'`{family}`' for family in families)}]" if families else ""
                lines.append(f"- `{module_name}.{name}`{keys}:")
                for config in configs:
                    used = sorted({f"{r['shape']} {r['dtype']}" for r in rows
                                   if _list_matches(name, r) and _config_used(config, r)
                                   and (not families or dot_family(*DTYPES[r["dtype"]]) in families)})
                    lines.append(f"  - {config_text(config)}" + (f" — start: {', '.join(used)}" if used else ""))
    return lines


def _family_groups(value):
    """[(families, configs)] of a config list (no families) or of a table keyed by dot family, one
    entry per distinct list (two families may share one)."""
    if not isinstance(value, dict):
        return [((), value)]
    groups = {}
    for family, configs in value.items():
        groups.setdefault(id(configs), ([], configs))[0].append(family)
    return [(tuple(families), configs) for families, configs in groups.values()]


def _list_matches(list_name, row):
    """Whether config list `list_name` (e.g. DV_CONFIGS, WINDOW_ATTN_FWD_CONFIGS) belongs to row's launch."""
    stem = list_name[: -len("_CONFIGS")].lower()
    return stem == row["launch"] or row["launch"].endswith("_" + stem) or stem == row["launch"].rsplit("_", 1)[-1] \
        or (stem == "bucket_sort_fwd" and row["stage"] == "sort")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", default=None, help="kernel name, short name or stage (default: all)")
    parser.add_argument("--shape", default="training", help=f"{', '.join(SHAPES)}; comma-separated for several (default training)")
    parser.add_argument("--dtype", default=None, help=f"{', '.join(DTYPES)}; comma-separated for several (default: all)")
    parser.add_argument("--target", default=None, help=f"{', '.join(TARGETS)}; comma-separated for both (default: both)")
    parser.add_argument("--csv", default=None, help="write the rows to this CSV")
    parser.add_argument("--markdown", default=None, help="write the rows to this markdown file")
    parser.add_argument("--all", action="store_true", help=f"every shape, dtype and target into {RESULTS}")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes, one target each (default 1)")
    args = parser.parse_args(argv)
    try:
        shapes = list(SHAPES) if args.all else args.shape.split(",")
        dtypes = args.dtype.split(",") if args.dtype else list(DTYPES)
        targets = args.target.split(",") if args.target else list(TARGETS)
        rows = report(shapes, dtypes, targets, args.kernel, args.jobs, progress=lambda r: print(line(r), flush=True))
    except ValueError as error:
        parser.exit(2, f"compile_report: error: {error}\n")
    if args.all:
        version = triton.__version__
        args.csv = args.csv or os.path.join(RESULTS, f"triton-{version}.csv")
        args.markdown = args.markdown or os.path.join(RESULTS, f"triton-{version}.md")
    if args.csv:
        write_csv(rows, args.csv)
    if args.markdown:
        with open(args.markdown, "w") as handle:
            handle.write(markdown(rows, f"Compile report, triton {triton.__version__}"))
    bad = [r for r in rows if problems(r)]
    print(f"{len(rows)} launches compiled; {len(bad)} with spill stores, dots off the tensor cores in a "
          f"tensor-core dtype, shared memory over the limit, or compile errors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
