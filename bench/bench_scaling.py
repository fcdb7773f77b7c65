"""Time and peak memory of the GLA layer forward against L = H*W (inference maps, batch 1).

Full run: 64x64, 128x128, 256x256, 384x384, 512x512, C=256, l=128, h=3, float32 and bf16 autocast,
providers reference and triton (`harness.layer_call`, as in bench_gla.py). Writes a PNG plot (`bench_scaling.png`) when
matplotlib is installed, else says so. `--smoke`: 8x8..16x16 on the CPU.
Linear scaling shows as constant ms per 1k positions and MiB per 1k positions in the summary.
"""
import harness
import torch

from dlsn import GLA

PAIRS = (("triton", "reference"),)


def plot(recorder, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        message = "matplotlib is not installed: no plot written."
        print(f"[bench_scaling] {message}", flush=True)
        return message
    figure, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(10, 4))
    for (provider, dtype), points in sorted(_series(recorder).items()):
        lengths = [p[0] for p in points]
        ax_time.plot(lengths, [p[1] for p in points], marker="o", label=f"{provider} {dtype}")
        if all(p[2] is not None for p in points):
            ax_mem.plot(lengths, [p[2] for p in points], marker="o", label=f"{provider} {dtype}")
    for axis, label in ((ax_time, "ms"), (ax_mem, "peak MiB")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("L = H*W")
        axis.set_ylabel(label)
        axis.legend()
    figure.suptitle(f"GLA forward vs L — {recorder.env['gpu']}, run {recorder.run_id}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return f"Plot: `{path.rsplit('/', 1)[-1]}`."


def _series(recorder):
    series = {}
    for row in recorder.ok_rows():
        series.setdefault((row["provider"], row["dtype"]), []).append((row["L"], row["ms"], row.get("peak_mib")))
    return series


def main(argv=None):
    args = harness.parse_args(__doc__.splitlines()[0], argv)
    device = harness.select_device(args)
    recorder = harness.Recorder("bench_scaling", args, device, PAIRS)
    if args.smoke:
        channels, chunk, sizes, autocasts = 32, 16, (8, 16), (False,)
    else:
        channels, chunk, sizes, autocasts = 256, 128, (64, 128, 256, 384, 512), (False, True)
    torch.manual_seed(0)
    layer = GLA(channels, chunk_size=chunk, backend="reference").to(device).eval()
    weight_bytes = sum(p.numel() * 4 for p in layer.parameters())
    core, reason = harness.fused_gla_attention(device)
    for size in sizes:
        s = harness.gla_shape(1, size, size, channels, chunk=chunk)
        x = torch.randn(1, channels, size, size, device=device)
        rotations = layer.rotations_for(size * size, device)
        for autocast in autocasts:
            dtype = torch.bfloat16 if autocast else torch.float32
            for provider in ("reference", "triton"):
                if provider == "triton" and core is None:
                    recorder.skip("infer-fwd", harness.shape_text(s), provider, dtype, reason)
                    continue
                call = harness.layer_call(provider, layer, x, rotations, False, autocast, core)
                row = recorder.measure("infer-fwd", harness.shape_text(s), provider, dtype, call,
                                       harness.layer_flops(s),
                                       harness.layer_min_bytes(s, harness.ELEMENT_BYTES[dtype], weight_bytes))
                if row:
                    row["L"] = s["L"]
        if device.type == "cuda":
            torch.cuda.empty_cache()
    lines = ["", "## Per 1k positions (constant = linear in L)", ""]
    for (provider, dtype), points in sorted(_series(recorder).items()):
        per_k = ", ".join(f"L={n}: {1e3 * ms / n:.4g} ms" + (f" / {1e3 * mib / n:.4g} MiB" if mib else "")
                          for n, ms, mib in points)
        lines.append(f"- {provider} {dtype}: {per_k}")
    lines += ["", plot(recorder, f"{recorder.out}/bench_scaling.png")]
    recorder.write(PAIRS, lines)
    return recorder


if __name__ == "__main__":
    main()
