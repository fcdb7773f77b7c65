"""Shared benchmark harness: environment record, timing, peak memory, roofline counts, CSV/markdown.

Timing: on CUDA, `triton.testing.do_bench(..., return_mode="median")` (CUDA events, after warm-up);
peak memory: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`, inputs included.
On a CPU (``--smoke``) do_bench cannot run: the median of `time.perf_counter` over a few calls is
used, the rows say `timer=cpu-perf_counter` and peak memory is left empty. CPU rows are smoke
checks of the scripts, not benchmark figures.

Every row carries FLOPs and the minimum bytes of its call (each input read once, each output
written once), so achieved TFLOP/s, GB/s and the fraction of the ceilings measured in the same run
(a large device copy and a large bf16 matmul) follow. A provider that cannot run is recorded as a
`skipped` row with the reason; an exception during a measurement is recorded as `error`.
"""
import argparse
import contextlib
import csv
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import time

# The interpreter must be chosen before triton is first imported (torch may import it): a smoke run
# on a machine without a GPU runs the Triton kernels on the CPU interpreter.
if "--smoke" in sys.argv and shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

COLUMNS = [
    "run_id", "script", "gpu", "driver", "torch", "triton", "git_sha", "dtype", "tf32", "timer",
    "case", "shape", "provider", "status", "reason", "ms", "tflops", "gbps", "frac_peak_flops",
    "frac_peak_bw", "peak_mib", "flops", "min_bytes",
]
ELEMENT_BYTES = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2, torch.float64: 8}


def parse_args(description, argv=None, flex_all=False):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes; runs on CPU (Triton under TRITON_INTERPRET=1)")
    parser.add_argument("--out", default=None, help="results folder (default bench/results/<run-id>)")
    parser.add_argument("--run-id", default=None, help="run id (default: UTC time + git SHA)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--max-batch", type=int, default=256, help="cap of the largest-batch search (bench_dlsn)")
    if flex_all:
        parser.add_argument("--flex-all", action="store_true", help="FlexAttention at every shape (bench_gla)")
    return parser.parse_args(argv)


def git_sha():
    """HEAD's SHA; DLSN_GIT_SHA overrides it (a device machine gets the tree without .git)."""
    if os.environ.get("DLSN_GIT_SHA"):
        return os.environ["DLSN_GIT_SHA"]
    try:
        return subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def triton_version():
    try:
        import triton
        return triton.__version__
    except ImportError:
        return "absent"


def environment(device):
    """GPU name, driver, versions, git SHA and TF32 state of this process."""
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            driver = "unknown"
    else:
        gpu, driver = "cpu", "none"
    if device.type == "cuda":
        tf32 = (f"matmul={'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'} "
                f"cudnn={'on' if torch.backends.cudnn.allow_tf32 else 'off'}")
    else:
        tf32 = "n/a (cpu)"
    return {"gpu": gpu, "driver": driver, "torch": torch.__version__, "triton": triton_version(),
            "git_sha": git_sha(), "tf32": tf32}


def select_device(args):
    if args.device:
        return torch.device(args.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def interpreter_ready(device):
    """Triton kernels run here: on CUDA, or on CPU under TRITON_INTERPRET=1."""
    if device.type == "cuda":
        return True, ""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False, "Triton on CPU needs TRITON_INTERPRET=1 set before triton is imported"
    return True, ""


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, device, smoke=False):
    """Median milliseconds of fn() after warm-up, and the timer used."""
    if device.type == "cuda":
        from triton.testing import do_bench
        warmup, rep = (5, 20) if smoke else (25, 100)
        return float(do_bench(fn, warmup=warmup, rep=rep, return_mode="median")), "cuda-do_bench-median"
    fn()
    samples = []
    for _ in range(2 if smoke else 5):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples), "cpu-perf_counter"


def peak_mib(fn, device):
    """Peak allocated MiB during one call of fn (everything live included); None on CPU."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def is_oom(error):
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def measure_ceilings(device, smoke):
    """Device copy bandwidth (GB/s, read + write counted) and bf16 matmul rate (TFLOP/s), measured now."""
    n_bytes = (1 << 20) if smoke else (2 << 30)
    src = torch.randn(n_bytes // 4, device=device)
    dst = torch.empty_like(src)
    copy_ms, _ = time_ms(lambda: dst.copy_(src), device, smoke)
    size = 256 if smoke else 8192
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    mm_ms, _ = time_ms(lambda: a @ b, device, smoke)
    del src, dst, a, b
    return {"copy_gbps": 2 * n_bytes / copy_ms / 1e6, "bf16_tflops": 2 * size**3 / mm_ms / 1e9}


def fused_ops(device):
    """(`dlsn.ops.fused`, "") where the fused kernels run on `device`, else (None, why): the stage
    functions, `gla_attention`, and the custom ops `torch.ops.dlsn.gla_attention_fwd/bwd` it registers."""
    ready, reason = interpreter_ready(device)
    if not ready:
        return None, reason
    try:
        from dlsn.ops import fused
    except ImportError as error:
        return None, f"dlsn.ops.fused not importable: {error}"
    return fused, ""


def fused_gla_attention(device):
    """(`dlsn.ops.fused.gla_attention`, "") where the fused kernels run on `device`, else (None, why)."""
    fused, reason = fused_ops(device)
    return (fused.gla_attention if fused is not None else None), reason


def layer_call(provider, layer, x, rotations, backward, autocast, core):
    """A closure running one forward (no grad) or forward+backward of the GLA layer `layer` on x:
    provider "reference" calls the layer, any other runs `layer.embed` and then
    `core(q, v, F, rotations, chunk, x, res_scale)` (the fused `gla_attention`, or bench_gla's flex core)."""
    chunk = layer.chunk_size
    dy = torch.randn_like(x)
    context = (lambda: torch.autocast(x.device.type, dtype=torch.bfloat16)) if autocast else contextlib.nullcontext

    def forward():
        if provider == "reference":
            return layer(x, rotations)
        q, v, F = layer.embed(x)
        return core(q, v, F, rotations, chunk, x, layer.res_scale)

    def call():
        if backward:
            layer.zero_grad(set_to_none=True)
            x.grad = None
            with context():
                y = forward()
            y.backward(dy.to(y.dtype))
        else:
            with torch.no_grad(), context():
                forward()
    return call


# ---- FLOP and byte counts (docs/internals.md notation: N, L, c, C, l, h, b) --------------------------------

def gla_shape(batch, height, width, channels=256, reduction=4, chunk=128, hashes=3, max_buckets=128):
    length = height * width
    buckets = max(1, min(length // chunk + (length // chunk) % 2, max_buckets))
    return {"N": batch, "H": height, "W": width, "L": length, "C": channels, "c": channels // reduction,
            "l": chunk, "h": hashes, "b": buckets}


def shape_text(s):
    return f"N{s['N']} {s['H']}x{s['W']} C{s['C']} c{s['c']} l{s['l']} h{s['h']}"


def hash_flops(s):
    return 2 * s["N"] * s["h"] * s["L"] * s["c"] * s["b"]


def attention_flops(s):
    """Window attention forward of every round: QK^T and PV over 3l keys per real query."""
    return 2 * s["N"] * s["h"] * s["L"] * 3 * s["l"] * (s["c"] + s["C"])


def embed_flops(s):
    """conv_match (C->c), conv_assembly and conv_assembly_fc (C->C), 3x3, plus fc (C->l->l)."""
    n_l = s["N"] * s["L"]
    return 2 * n_l * 9 * s["C"] * (s["c"] + 2 * s["C"]) + 2 * n_l * (s["C"] * s["l"] + s["l"] * s["l"])


def core_flops(s, backward=False):
    """Hash + attention (+ its backward: 5 matmuls against the forward's 2, i.e. 2.5x)."""
    attn = attention_flops(s)
    return hash_flops(s) + attn + (int(2.5 * attn) if backward else 0)


def layer_flops(s, backward=False):
    """GLA layer: embeddings + core; backward of the convs/fc costs twice their forward."""
    return core_flops(s, backward) + embed_flops(s) * (3 if backward else 1)


def layer_min_bytes(s, elem, weight_bytes, backward=False):
    """Read x and the weights once, write y once (plus dy in, dx and weight gradients out)."""
    n_l = s["N"] * s["L"]
    fwd = elem * n_l * 2 * s["C"] + weight_bytes
    return fwd + ((elem * n_l * 2 * s["C"] + weight_bytes) if backward else 0)


# ---- results -------------------------------------------------------------------------------------

def default_run_id():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + git_sha()


def default_out(run_id):
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", run_id)


class Recorder:
    """Collects rows of one script's run and writes `<script>.csv` and `<script>.md` into the run folder."""

    def __init__(self, script, args, device, pairs=()):
        self.script, self.args, self.device, self.pairs = script, args, device, pairs
        self.env = environment(device)
        self.run_id = args.run_id or default_run_id()
        self.out = args.out or default_out(self.run_id)
        os.makedirs(self.out, exist_ok=True)
        self.rows = []
        self.notes = []
        self.ceilings = measure_ceilings(device, args.smoke)
        for provider, key, column in (("device-copy", "copy_gbps", "gbps"), ("bf16-matmul", "bf16_tflops", "tflops")):
            row = self._base("ceiling", "2 GiB copy" if key == "copy_gbps" else "8192^3", provider, "")
            row.update(status="ok", reason="", timer="", **{column: self.ceilings[key]})
            self.rows.append(row)
        self.notes.append(f"Ceilings measured in this run on {self.env['gpu']}: copy "
                          f"{self.ceilings['copy_gbps']:.1f} GB/s, bf16 matmul {self.ceilings['bf16_tflops']:.2f} TFLOP/s.")
        if device.type != "cuda":
            self.notes.append("CPU run (smoke): timings are time.perf_counter medians on the CPU, "
                              "not GPU figures; peak memory is not measured.")

    def _base(self, case, shape, provider, dtype):
        return dict(self.env, run_id=self.run_id, script=self.script, dtype=str(dtype).replace("torch.", ""),
                    case=case, shape=shape, provider=provider)

    def skip(self, case, shape, provider, dtype, reason, status="skipped"):
        row = self._base(case, shape, provider, dtype)
        row.update(status=status, reason=reason)
        self.rows.append(row)
        print(f"[{self.script}] {case} | {shape} | {provider} | {status}: {reason}", flush=True)
        self.write(self.pairs, quiet=True)

    def measure(self, case, shape, provider, dtype, fn, flops=0, min_bytes=0, memory=True):
        """Time fn (and its peak memory); record a row. fn errors become `error`/`oom` rows."""
        try:
            ms, timer = time_ms(fn, self.device, self.args.smoke)
            mib = peak_mib(fn, self.device) if memory else None
        except Exception as error:  # a failing provider is a result to report, not a crash of the suite
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            status = "oom" if is_oom(error) else "error"
            self.skip(case, shape, provider, dtype, f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
                      if str(error) else type(error).__name__, status)
            return None
        row = self._base(case, shape, provider, dtype)
        tflops = flops / ms / 1e9 if flops else None
        gbps = min_bytes / ms / 1e6 if min_bytes else None
        row.update(status="ok", reason="", timer=timer, ms=ms, tflops=tflops, gbps=gbps,
                   frac_peak_flops=tflops / self.ceilings["bf16_tflops"] if tflops else None,
                   frac_peak_bw=gbps / self.ceilings["copy_gbps"] if gbps else None,
                   peak_mib=mib, flops=flops or None, min_bytes=min_bytes or None)
        self.rows.append(row)
        print(f"[{self.script}] {case} | {shape} | {provider} | {ms:.3f} ms ({timer})"
              + (f" | {mib:.0f} MiB" if mib is not None else ""), flush=True)
        self.write(self.pairs, quiet=True)  # a run cut short by a timeout keeps its rows
        return row

    def ok_rows(self, case=None):
        return [r for r in self.rows if r["status"] == "ok" and r["case"] != "ceiling"
                and (case is None or r["case"] == case)]

    def ratio_lines(self, pairs):
        return ratio_lines(self.ok_rows(), pairs)

    def write(self, ratio_pairs=(), extra_lines=(), quiet=False):
        csv_path = os.path.join(self.out, f"{self.script}.csv")
        with open(csv_path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            for row in self.rows:
                writer.writerow({k: _fmt(row.get(k)) for k in COLUMNS})
        md_path = os.path.join(self.out, f"{self.script}.md")
        env = self.env
        lines = [f"# {self.script} — run {self.run_id}", "",
                 f"GPU {env['gpu']}, driver {env['driver']}, torch {env['torch']}, triton {env['triton']}, "
                 f"git {env['git_sha']}, TF32 {env['tf32']}.", ""] + [n for n in self.notes] + [""]
        lines += ["| case | shape | dtype | provider | status | ms | TFLOP/s | GB/s | % peak FLOP | % peak BW | peak MiB | note |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            pct = (lambda x: f"{100 * x:.1f}" if x is not None else "")
            lines.append(f"| {r['case']} | {r['shape']} | {r['dtype']} | {r['provider']} | {r['status']} | "
                         f"{_fmt(r.get('ms'))} | {_fmt(r.get('tflops'))} | {_fmt(r.get('gbps'))} | "
                         f"{pct(r.get('frac_peak_flops'))} | {pct(r.get('frac_peak_bw'))} | {_fmt(r.get('peak_mib'))} | "
                         f"{r.get('reason', '')} |")
        ratios = self.ratio_lines(ratio_pairs)
        if ratios:
            lines += ["", "## Ratios", ""] + ratios
        lines += list(extra_lines)
        with open(md_path, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        if not quiet:
            print(f"[{self.script}] wrote {csv_path} and {md_path}", flush=True)
        return csv_path, md_path


def ratio_lines(rows, pairs):
    """Markdown lines `a vs b: time ratio, peak-memory ratio` for each (case, shape, dtype) with both.

    rows: ok rows, as recorded or as read back from a CSV (numbers as strings)."""
    def number(value):
        return float(value) if value not in (None, "") else None
    lines = []
    keyed = {(r["case"], r["shape"], r["dtype"], r["provider"]): r for r in rows if r["case"] != "ceiling"}
    for (case, shape, dtype, provider), row in keyed.items():
        for fast, slow in pairs:
            if provider != fast or (case, shape, dtype, slow) not in keyed:
                continue
            other = keyed[(case, shape, dtype, slow)]
            text = (f"- {case}, {shape}, {dtype}: {fast} vs {slow}: time ratio "
                    f"{number(other['ms']) / number(row['ms']):.3g} (>1: {fast} is faster)")
            mine, theirs = number(row.get("peak_mib")), number(other.get("peak_mib"))
            if mine and theirs:
                text += f", peak-memory ratio {theirs / mine:.3g} (>1: {fast} uses less)"
            lines.append(text)
    return lines


def _fmt(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
