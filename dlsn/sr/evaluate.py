"""``dlsn eval`` and ``dlsn upscale`` (wired into the command line by ``dlsn.sr.cli``).

Errors in the input raise ``FileNotFoundError`` / ``ValueError`` with a message naming the file;
``dlsn.sr.cli`` prints it as one line and exits with status 2.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from .data import BenchmarkPairs
from .degradations import DEGRADATIONS, DN_NOISE_LEVEL
from .imageio import IMAGE_EXTENSIONS, NO_ALPHA_EXTENSIONS, image_info, read_image_with_alpha, write_image
from .imresize import imresize
from .inference import DEFAULT_BORDER_PAD
from .inference_cli import add_inference_arguments, load_for_inference, set_memory_budget, super_resolve
from .metrics import calc_psnr, calc_ssim
from .results import markdown_table, results_row, write_results_table
from .utils import resolve_device

__all__ = ["add_eval_arguments", "run_eval", "add_upscale_arguments", "run_upscale"]


def add_eval_arguments(parser):
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


def run_eval(args) -> int:
    """``dlsn eval``: prints per-image and mean PSNR/SSIM (one folder) or a table (several);
    returns the exit status."""
    folders, names = _benchmarks(args.data)
    set_memory_budget(args)
    device = resolve_device(args.device)
    model = load_for_inference(args.model, args.checkpoint, args.scale, device, n_hashes=args.n_hashes)
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


def add_upscale_arguments(parser):
    """Arguments of ``dlsn upscale``."""
    parser.description = (
        "Super-resolve image files. Inputs: PNG, JPEG and the other formats Pillow reads. Grayscale "
        "inputs are upscaled as RGB and written as grayscale; RGBA inputs have their colour upscaled "
        "by the model and their alpha by bicubic resizing, and are written as RGBA PNG; 16-bit PNGs "
        "are read at full precision and written as 16-bit PNG. Output names: <stem>_x<S>.png in OUT "
        "(or OUT itself for a single input when OUT ends in an image suffix such as .png or .jpg; a "
        "transparent input written as JPEG is composited on white, with a warning). Every file "
        "written is printed."
    )
    parser.add_argument("inputs", nargs="+", metavar="IN", help="image files or folders of images")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder (or file for one input)")
    add_inference_arguments(parser)
    parser.add_argument("--border-pad", type=int, default=DEFAULT_BORDER_PAD, metavar="P",
                        help="LR pixels of edge replication around each image before the network, cropped "
                             f"after, so the borders come out right (default {DEFAULT_BORDER_PAD}; 0: none)")
    parser.add_argument("--half", action="store_true", help="run the model in float16 (CUDA only)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _expand_inputs(inputs):
    files = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise FileNotFoundError(f"no images in folder {path}")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"input not found: {path}")
    return files


def _add_alpha(sr, alpha, scale, source, target):
    """``sr`` with the input's ``alpha`` resized by bicubic; composited on white instead (with a
    warning) when ``target``'s format stores no transparency."""
    alpha = imresize(alpha.double(), scale=scale).float().clamp(0, 1)
    if target.suffix.lower() in NO_ALPHA_EXTENSIONS:
        # What the user asked for, composited on white as read_image does for the model.
        print(f"warning: {source} has transparency, which {target.suffix} cannot store: "
              f"{target} is composited on white", file=sys.stderr)
        return sr * alpha + (1 - alpha)
    return torch.cat([sr, alpha], dim=0)


def _upscale_file(model, source, target, args, device):
    rgb_range = getattr(model, "rgb_range", 1.0)
    rgb, alpha = read_image_with_alpha(source)
    info = image_info(source)
    lr = rgb.unsqueeze(0).to(device) * rgb_range
    if args.half:
        lr = lr.half()
    sr = super_resolve(model, lr, args, device, args.border_pad, show_progress=not args.no_progress)
    sr = (sr.float().cpu()[0] / rgb_range).clamp(0, 1)
    if info.gray:
        sr = sr.mean(dim=0, keepdim=True)
    if alpha is not None:
        sr = _add_alpha(sr, alpha, args.scale, source, target)
    keep_16_bit = info.format == "PNG" and info.bit_depth == 16 and target.suffix.lower() == ".png"
    write_image(target, sr, bit_depth=16 if keep_16_bit else 8)


def run_upscale(args) -> int:
    """``dlsn upscale``: writes one upscaled image per input; returns the exit status."""
    set_memory_budget(args)
    files = _expand_inputs(args.inputs)
    out = Path(args.output)
    single_file = len(files) == 1 and out.suffix.lower() in IMAGE_EXTENSIONS
    device = resolve_device(args.device)
    if args.half and device.type != "cuda":
        raise ValueError("--half needs a CUDA device (float16 convolutions are slow or missing on CPU)")
    model = load_for_inference(args.model, args.checkpoint, args.scale, device, n_hashes=args.n_hashes)
    if args.half:
        model = model.half()
    for path in tqdm(files, desc="upscale", unit="img", disable=args.no_progress or len(files) < 2, file=sys.stderr):
        target = out if single_file else out / f"{path.stem}_x{args.scale}.png"
        _upscale_file(model, path, target, args, device)
        print(f"wrote {target}", file=sys.stderr)
    return 0
