"""``dlsn eval``: per-image and mean PSNR/SSIM of a checkpoint (or the bicubic baseline) on
benchmark folders, as a table, a results table in the paper's layout (``dlsn.sr.results``) or JSON.

Errors in the input raise ``FileNotFoundError`` / ``ValueError`` with a message naming the file;
``dlsn.sr.cli`` prints it as one line and exits with status 2.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .data import BenchmarkPairs
from .degradations import DEGRADATIONS, DN_NOISE_LEVEL
from .imageio import write_image
from .inference import DEFAULT_BORDER_PAD
from .inference_cli import add_inference_arguments, load_for_inference, set_memory_budget, super_resolve
from .metrics import calc_psnr, calc_ssim
from .results import markdown_table, results_row, write_results_table
from .utils import resolve_device

__all__ = ["add_arguments", "run"]


def add_arguments(parser):
    """Arguments of ``dlsn eval``."""
    parser.description = (
        "Evaluate a checkpoint (or the bicubic baseline) on a benchmark folder: per-image and mean "
        "PSNR/SSIM on the Y channel, borders of `scale` pixels shaved, outputs quantised to 8 bit "
        "(the SISR literature's protocol). DATA holds HR images (LR made on the fly) or the EDSR "
        "layout HR/ + LR_bicubic/X{s}/."
    )
    add_inference_arguments(parser)
    parser.add_argument("--data", required=True, nargs="+", metavar="DIR",
                        help="benchmark folder(s), e.g. --data Set5 Set14 B100 Urban100 Manga109 (named by "
                             "the folder; with several, a table in the paper's layout is printed)")
    parser.add_argument("--table", default=None, metavar="PATH",
                        help="write the results table as PATH.md (markdown) and PATH.csv in the paper's layout "
                             "(method x scale rows, PSNR/SSIM per benchmark); rows of other methods, scales "
                             "or degradations already in PATH.csv are kept, so calls for x2/x3/x4 and "
                             "--self-ensemble (the DLSN+ row) build one table")
    parser.add_argument("--degradation", default="bi", choices=DEGRADATIONS,
                        help="bi: bicubic; bd: 7x7 Gaussian blur (sigma 1.6) + bicubic; dn: bicubic + noise")
    parser.add_argument("--noise-level", type=float, default=DN_NOISE_LEVEL,
                        help=f"DN noise std on the 0-255 scale (default {DN_NOISE_LEVEL:g})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the DN noise")
    parser.add_argument("--save", default=None, metavar="DIR",
                        help="write the SR images (PNG) here; they are made with --border-pad "
                             f"(default {DEFAULT_BORDER_PAD}) so their borders are right, by a second run of the "
                             "model unless --border-pad is given")
    parser.add_argument("--border-pad", type=int, default=None, metavar="P",
                        help="LR pixels of edge replication around each image before the network, cropped "
                             "after. Scores use 0 (the published protocol) unless P is given")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    return parser


def _benchmark_name(folder: Path) -> str:
    folder = Path(folder).resolve()
    return folder.parent.name if folder.name in ("HR", "GTmod12", "original") else folder.name


def _benchmarks(data):
    """The ``--data`` folders and their benchmark names, all checked before minutes of inference."""
    folders = [Path(d) for d in data]
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"--data: benchmark folder {str(folder)!r} not found")
    names = [_benchmark_name(folder) for folder in folders]
    if len(set(names)) != len(names):
        raise ValueError(f"--data: two benchmark folders share a name ({', '.join(names)})")
    return folders, names


def _evaluate_folder(model, folder, args, device, save_dir):
    """Per-image PSNR/SSIM rows, their mean and the seconds spent in the model, for one benchmark
    folder. Scores come from the unpadded input (the published protocol) unless --border-pad is
    given; saved images are border-padded (a second run when the two differ)."""
    pairs = BenchmarkPairs(folder, args.scale, args.degradation, noise_level=args.noise_level, seed=args.seed)
    rgb_range = getattr(model, "rgb_range", 1.0)
    score_pad = args.border_pad or 0
    save_pad = DEFAULT_BORDER_PAD if args.border_pad is None else args.border_pad
    rows, seconds = [], 0.0
    for index, name in enumerate(pairs.names):
        lr, hr = pairs[index]
        lr = lr.unsqueeze(0).to(device) * rgb_range
        started = time.perf_counter()
        sr = super_resolve(model, lr, args, device, score_pad, show_progress=True).float().cpu()[0] / rgb_range
        seconds += time.perf_counter() - started
        rows.append({"image": name, "psnr": calc_psnr(sr, hr, args.scale), "ssim": calc_ssim(sr, hr, args.scale)})
        if save_dir is not None:
            if save_pad != score_pad:
                sr = super_resolve(model, lr, args, device, save_pad, show_progress=True).float().cpu()[0] / rgb_range
            write_image(Path(save_dir) / f"{name}_x{args.scale}.png", sr)
    mean = {"psnr": sum(r["psnr"] for r in rows) / len(rows), "ssim": sum(r["ssim"] for r in rows) / len(rows)}
    return rows, mean, seconds


def _method_label(args) -> str:
    label = "Bicubic" if args.model == "bicubic" else "DLSN"
    if args.self_ensemble:
        label += "+"
    if args.n_hashes is not None:
        label += f" (H={args.n_hashes})"
    return label


def _print_json(results, method, args):
    common = {"scale": args.scale, "model": args.model, "method": method, "degradation": args.degradation,
              "n_hashes": args.n_hashes, "self_ensemble": args.self_ensemble}
    if len(results) == 1:
        print(json.dumps({**common, **results[0]}, indent=2))
    else:
        print(json.dumps({**common, "benchmarks": results}, indent=2))


def _print_scores(rows, mean):
    width = max(len("image"), max(len(r["image"]) for r in rows))
    print(f"{'image':<{width}}  {'PSNR':>8}  {'SSIM':>7}")
    for r in rows:
        print(f"{r['image']:<{width}}  {r['psnr']:8.2f}  {r['ssim']:7.4f}")
    print(f"{'mean':<{width}}  {mean['psnr']:8.2f}  {mean['ssim']:7.4f}")


def run(args) -> int:
    """``dlsn eval``: prints per-image and mean PSNR/SSIM (one folder) or a table (several);
    returns the exit status."""
    folders, names = _benchmarks(args.data)
    set_memory_budget(args)
    device = resolve_device(args.device)
    model = load_for_inference(args.model, args.checkpoint, args.scale, device, n_hashes=args.n_hashes,
                               compile=args.compile)
    results = []
    for folder, name in zip(folders, names):
        save_dir = None if not args.save else (Path(args.save) / name if len(folders) > 1 else Path(args.save))
        rows, mean, seconds = _evaluate_folder(model, folder, args, device, save_dir)
        results.append({"benchmark": name, "data": str(folder), "images": rows, "mean": mean,
                        "seconds": seconds})
    method = _method_label(args)
    means = {r["benchmark"]: r["mean"] for r in results}
    if args.table:
        written = write_results_table(args.table, method, args.scale, args.degradation, means)
        print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    if args.json:
        _print_json(results, method, args)
    elif len(results) == 1:
        _print_scores(results[0]["images"], results[0]["mean"])
    else:
        print(markdown_table([results_row(method, args.scale, args.degradation, means)], names))
    return 0
