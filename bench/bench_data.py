"""Training input: patches per second per core from a prepared dataset, pre-made LR PNGs and LR made
on the fly (BI, BD, DN), side by side in one run; and the time and disk space of `dlsn prepare`.

    python bench/bench_data.py [--smoke] [--images N] [--seconds S] [--baseline COMMIT] [--out DIR] [--run-id ID]

Images: N (default 4) DIV2K-sized 2040x1356 RGB PNGs, each a mosaic of scikit-image's bundled
photographs (astronaut, chelsea, coffee, rocket, the left view of stereo_motorcycle) tiled at their
native resolution, each tile a seeded random choice, mirrored at random, so that PNG compression and
decoding see photographs (not noise, which compresses and decodes differently). Pre-made LR PNGs
(`LR_bicubic/X2`, `X4`, DIV2K naming) are made from them with dlsn's bicubic.

Patches: `PatchPairs` (the training loop's sampler, augmentation on) at LR patch 48 x2 and 64 x4,
one process, `torch.set_num_threads(1)`, every provider drawing the same keys:
- `prepared` / `prepared-dn`: a `dlsn prepare` dataset (BI; DN adds the noise per patch);
- `png-premade`: HR + pre-made LR PNGs (`PairFolder` with `LR_bicubic/X{s}`), crop first;
- `fly-bi` / `fly-bd` / `fly-dn`: HR PNGs only, LR made per patch, crop first;
- `before-*` (with `--baseline COMMIT`): the same four PNG providers with the code of COMMIT
  (`git archive` into a temporary folder, measured in a subprocess with the same settings).
Each provider runs one untimed patch, then patches until `--seconds` CPU seconds have passed (at
least 3 patches). Per core = patches per CPU-second of the process (`time.process_time`), which a
busy machine changes much less than the wall time (also reported, with the load average). Files
are in the page cache (just written), as they are from the second epoch of a real run on.

`dlsn prepare`: `prepare_dataset(workers=0)` (one process, one thread) on the N images, per image,
extrapolated to DIV2K's 800 training images; disk space: exact, from the format (64-byte header per
file, 3 * H * W bytes per HR image, 3 * H/s * W/s per LR image), for 800 images of 2040x1356.

Writes `bench_data.csv` (the harness's columns: `ms` = CPU milliseconds per patch or per prepared
image, `timer=cpu-process_time`) and `bench_data.md` (the table with the ratios) into the run folder.
"""
import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import harness  # noqa: E402

CASES = [(2, 48), (4, 64)]  # (scale, LR patch side)
SMOKE_CASES = [(2, 8), (4, 8)]
SIZE, SMOKE_SIZE = (1356, 2040), (68, 104)  # HR height, width (multiples of 4, as DIV2K's)
DIV2K_IMAGES = 800
PNG_PROVIDERS = {"png-premade": ("bi", True), "fly-bi": ("bi", False), "fly-bd": ("bd", False),
                 "fly-dn": ("dn", False)}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny images, a few patches (CI)")
    parser.add_argument("--images", type=int, default=None, help="images to make (default 4; smoke 2)")
    parser.add_argument("--seconds", type=float, default=None, help="CPU seconds per provider (default 5; smoke 0.05)")
    parser.add_argument("--baseline", default=None, metavar="COMMIT", help="also measure the code of COMMIT")
    parser.add_argument("--workdir", default=None, help="folder for the images (default: a temporary one)")
    parser.add_argument("--out", default=None, help="results folder (default bench/results/<run-id>)")
    parser.add_argument("--run-id", default=None)
    parser.add_argument("--device", default=None, help="ignored: this benchmark runs on the CPU")
    parser.add_argument("--max-batch", default=None, help=argparse.SUPPRESS)  # run_all passes the harness's options
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # the baseline subprocess
    args = parser.parse_args(argv)
    args.images = args.images or (2 if args.smoke else 4)
    args.seconds = args.seconds if args.seconds is not None else (0.05 if args.smoke else 5.0)
    return args


def photographs():
    import skimage.data as data

    return [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.stereo_motorcycle()[0]]


def mosaic(photos, size, seed):
    """uint8 [H, W, 3]: rows of photographs at native resolution, each a seeded choice, maybe mirrored."""
    rng = np.random.default_rng(seed)
    height, width = size
    out = np.zeros((height, width, 3), np.uint8)
    y = 0
    while y < height:
        x, row_height = 0, height
        while x < width:
            photo = photos[rng.integers(len(photos))]
            photo = photo[:, ::-1] if rng.integers(2) else photo
            h, w = min(photo.shape[0], height - y), min(photo.shape[1], width - x)
            out[y:y + h, x:x + w] = photo[:h, :w]
            x, row_height = x + w, min(row_height, photo.shape[0])
        y += row_height
    return out


def make_images(root, n, size, scales):
    """HR PNGs in root/HR and pre-made LR PNGs in root/LR_bicubic/X{s} (dlsn's bicubic)."""
    from PIL import Image

    from dlsn.sr.degradations import bicubic_down
    from dlsn.sr.imageio import read_image, write_image

    os.makedirs(os.path.join(root, "HR"), exist_ok=True)
    photos = photographs()
    for i in range(n):
        path = os.path.join(root, "HR", f"{i + 1:04d}.png")
        Image.fromarray(mosaic(photos, size, seed=i)).save(path)
        for s in scales:
            write_image(os.path.join(root, "LR_bicubic", f"X{s}", f"{i + 1:04d}x{s}.png"), bicubic_down(read_image(path), s))


def measure(patches, n_images, seconds):
    """One untimed patch, then patches until `seconds` CPU seconds (at least 3): CPU and wall ms per patch."""
    patches[(0, 999, 0)]
    count, cpu, wall = 0, time.process_time(), time.perf_counter()
    while count < 3 or time.process_time() - cpu < seconds:
        patches[(count % n_images, 1000 + count, 0)]
        count += 1
    return {"patches": count, "cpu_ms": 1e3 * (time.process_time() - cpu) / count,
            "wall_ms": 1e3 * (time.perf_counter() - wall) / count}


def png_providers(root, scale, patch, seconds, n_images):
    """{provider: measurement} for the PNG providers, with this process's dlsn (the current or baseline code)."""
    from dlsn.sr.data import PairFolder, PatchPairs

    results = {}
    for name, (degradation, premade) in PNG_PROVIDERS.items():
        pairs = PairFolder(root, scale, degradation, use_premade=premade)
        results[name] = measure(PatchPairs(pairs, scale, patch), n_images, seconds)
    return results


def baseline(commit, args):
    """The PNG providers measured with the code of `commit`, in a subprocess: {(scale, patch): {provider: ...}}."""
    with tempfile.TemporaryDirectory() as tree:
        archive = subprocess.run(["git", "-C", ROOT, "archive", commit], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
        env = dict(os.environ, PYTHONPATH=tree)
        command = [sys.executable, os.path.abspath(__file__), "--measure", args.workdir, "--seconds", str(args.seconds),
                   "--images", str(args.images)] + (["--smoke"] if args.smoke else [])
        result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tree)
        if result.returncode:
            raise RuntimeError(f"baseline {commit} failed: {result.stderr.strip().splitlines()[-1:]}")
        return {tuple(json.loads(k)): v for k, v in json.loads(result.stdout.strip().splitlines()[-1]).items()}


def measure_only(args):
    """The baseline subprocess: PNG providers of every case, printed as one JSON line."""
    torch.set_num_threads(1)
    cases = SMOKE_CASES if args.smoke else CASES
    print(json.dumps({json.dumps(case): png_providers(args.measure, case[0], case[1], args.seconds, args.images)
                      for case in cases}))


def prepare_all(root, scales, n_images):
    """Prepared BI datasets per scale and a timed preparation of each (CPU s per image)."""
    from dlsn.sr.prepare import prepare_dataset

    timings = {}
    for s in scales:
        for degradation in ("bi", "bd"):
            cpu, wall = time.process_time(), time.perf_counter()
            result = prepare_dataset(root, os.path.join(root, f"prepared_x{s}_{degradation}"), s, degradation,
                                     workers=0, use_premade=False, show_progress=False, log=lambda line: None)
            timings[(s, degradation)] = {"cpu_s": (time.process_time() - cpu) / n_images,
                                         "wall_s": (time.perf_counter() - wall) / n_images, "bytes": result["bytes"]}
    return timings


def prepared_providers(root, scale, patch, seconds, n_images):
    from dlsn.sr.data import PatchPairs
    from dlsn.sr.prepared import PreparedPairs

    folder = os.path.join(root, f"prepared_x{scale}_bi")
    return {name: measure(PatchPairs(PreparedPairs(folder, scale, degradation), scale, patch), n_images, seconds)
            for name, degradation in (("prepared", "bi"), ("prepared-dn", "dn"))}


def disk_bytes(scale, size=SIZE, n=DIV2K_IMAGES):
    from dlsn.sr.prepared import HEADER_BYTES

    h, w = size
    return 2 * HEADER_BYTES + n * 3 * (h * w + (h // scale) * (w // scale))


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    import PIL

    return (f"{cpu}, {cores} cores, {platform.python_implementation()} {platform.python_version()}, torch "
            f"{torch.__version__}, numpy {np.__version__}, Pillow {PIL.__version__}")


def rows_and_lines(args, env, results, timings, base, load):
    """CSV rows (harness columns) and the markdown of the run."""
    size = SMOKE_SIZE if args.smoke else SIZE
    rows, lines = [], [f"# bench_data — run {args.run_id}", "", f"Machine: {machine()}; git {env['git_sha']}.",
                       f"Load average (1 min) at the start / end: {load[0]:.1f} / {load[1]:.1f}.",
                       f"Images: {args.images} mosaics of scikit-image photographs, {size[1]}x{size[0]} PNG (Pillow's "
                       f"default compression, {args.png_mb:.2f} MB on average); one process, one torch thread; at "
                       f"least {args.seconds:g} CPU s per provider.", "",
                       "| case | provider | patches/s per core (CPU) | patches/s (wall) | CPU ms/patch | patches "
                       "| x before (CPU) |", "|---|---|---|---|---|---|---|"]
    base_row = dict(env, run_id=args.run_id, script="bench_data", dtype="uint8", timer="cpu-process_time",
                    status="ok", reason="", shape=f"{size[1]}x{size[0]} PNG")
    for (scale, patch), providers in results.items():
        case = f"patch{patch}-x{scale}"
        before = base.get((scale, patch), {})
        everything = {**providers, **{f"before-{k[4:] if k.startswith('fly-') else k}": v for k, v in before.items()}}
        for name, m in everything.items():
            rows.append(dict(base_row, case=case, provider=name, ms=m["cpu_ms"]))
            reference = before.get({"prepared": "png-premade", "prepared-dn": "fly-dn"}.get(name, name))
            ratio = f"{reference['cpu_ms'] / m['cpu_ms']:.1f}" if reference and not name.startswith("before") else ""
            lines.append(f"| {case} | {name} | {1e3 / m['cpu_ms']:.1f} | {1e3 / m['wall_ms']:.1f} | {m['cpu_ms']:.2f} "
                         f"| {m['patches']} | {ratio} |")
    lines += ["", "`x before`: CPU time per patch of the same provider with the code of "
              f"{args.baseline or '(no --baseline given)'} over this code's; `prepared` is compared with "
              "`before-png-premade`, `prepared-dn` with `before-dn`.", "",
              "## dlsn prepare (one process, one thread) and disk space", "",
              "| scale | degradation | CPU s / image | wall s / image | 800 images, one core (CPU) | "
              "disk for 800 images of 2040x1356 |", "|---|---|---|---|---|---|"]
    for (scale, degradation), t in timings.items():
        rows.append(dict(base_row, case=f"prepare-x{scale}", provider=f"dlsn prepare {degradation}", ms=1e3 * t["cpu_s"],
                         shape=f"{size[1]}x{size[0]} PNG, per image"))
        lines.append(f"| x{scale} | {degradation.upper()} | {t['cpu_s']:.2f} | {t['wall_s']:.2f} | "
                     f"{DIV2K_IMAGES * t['cpu_s'] / 60:.1f} min | {disk_bytes(scale) / 1e9:.3f} GB "
                     f"({disk_bytes(scale)} bytes) |")
    return rows, lines


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.measure:
        return measure_only(args)
    torch.set_num_threads(1)
    args.run_id = args.run_id or harness.default_run_id()
    out = args.out or harness.default_out(args.run_id)
    os.makedirs(out, exist_ok=True)
    env = harness.environment(torch.device("cpu"))
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as scratch:
        args.workdir = args.workdir or scratch
        cases = SMOKE_CASES if args.smoke else CASES
        make_images(args.workdir, args.images, SMOKE_SIZE if args.smoke else SIZE, sorted({s for s, _ in cases}))
        hr_dir = os.path.join(args.workdir, "HR")
        args.png_mb = np.mean([os.path.getsize(os.path.join(hr_dir, name)) for name in os.listdir(hr_dir)]) / 1e6
        timings = prepare_all(args.workdir, sorted({s for s, _ in cases}), args.images)
        results = {}
        for scale, patch in cases:
            results[(scale, patch)] = {**prepared_providers(args.workdir, scale, patch, args.seconds, args.images),
                                       **png_providers(args.workdir, scale, patch, args.seconds, args.images)}
            print(f"[bench_data] x{scale} patch {patch}: " + ", ".join(
                f"{k} {1e3 / v['cpu_ms']:.1f}/s" for k, v in results[(scale, patch)].items()), flush=True)
        base = baseline(args.baseline, args) if args.baseline else {}
    load.append(os.getloadavg()[0])
    rows, lines = rows_and_lines(args, env, results, timings, base, load)
    with open(os.path.join(out, "bench_data.csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=harness.COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: harness._fmt(row.get(k)) for k in harness.COLUMNS} for row in rows)
    with open(os.path.join(out, "bench_data.md"), "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"[bench_data] wrote {out}/bench_data.csv and bench_data.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
