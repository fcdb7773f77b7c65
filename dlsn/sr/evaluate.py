"""``dlsn eval`` and ``dlsn upscale`` (wired into the command line by ``dlsn.sr.cli``).

Errors in the input raise ``FileNotFoundError`` / ``ValueError`` with a message naming the file;
``dlsn.sr.cli`` prints it as one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import torch

from .data import BenchmarkPairs
from .degradations import DEGRADATIONS, DN_NOISE_LEVEL
from .imageio import IMAGE_EXTENSIONS, NO_ALPHA_EXTENSIONS, read_image_with_alpha, write_image
from .imresize import imresize
from .inference import DEFAULT_BORDER_PAD, BicubicUpscaler, count_tiles, upscale_tensor
from .metrics import calc_psnr, calc_ssim
from .tiling import MEMORY_MARGIN, available_memory, format_size, parse_size, plan_tiles
from .utils import resolve_device

__all__ = ["add_eval_arguments", "run_eval", "add_upscale_arguments", "run_upscale", "load_for_inference",
           "write_results_table", "PAPER_BENCHMARKS"]

# The benchmark order of the paper's tables.
PAPER_BENCHMARKS = ("Set5", "Set14", "B100", "Urban100", "Manga109")


def _check_n_hashes(n_hashes, model_name):
    if n_hashes is None:
        return
    if n_hashes < 1:
        raise ValueError(f"--n-hashes must be a positive number of hash rounds, got {n_hashes}")
    if model_name == "bicubic":
        raise ValueError("--n-hashes sets the hash rounds of a DLSN checkpoint; --model bicubic has none")


def load_for_inference(model_name, checkpoint, scale, device, n_hashes=None):
    """The model to run: ``BicubicUpscaler`` for ``model_name="bicubic"``, else a checkpoint's DLSN
    (with ``n_hashes`` hash rounds at inference when given; the weights are untouched)."""
    _check_n_hashes(n_hashes, model_name)
    if model_name == "bicubic":
        return BicubicUpscaler(scale)
    if not checkpoint:
        raise ValueError("--checkpoint is required (or use --model bicubic for the baseline)")
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    from .checkpoint import load_model

    model = load_model(path, scale=scale, map_location="cpu").to(device).eval()
    if n_hashes is not None:
        model.set_n_hashes(n_hashes)
    return model


def _add_inference_arguments(parser):
    parser.add_argument("--checkpoint", default=None, metavar="CKPT",
                        help="DLSN checkpoint (published state dict, a dlsn training checkpoint or safetensors)")
    parser.add_argument("--scale", type=int, required=True, choices=(2, 3, 4, 8), help="upscaling factor")
    parser.add_argument("--model", default="dlsn", choices=("dlsn", "bicubic"),
                        help="'bicubic' runs the MATLAB-compatible bicubic baseline (no checkpoint)")
    parser.add_argument("--tile", type=_tile_argument, default="auto", metavar="T",
                        help="LR tile size: 'auto' (default) runs the whole image when the estimated memory "
                             "fits (available RAM, or free GPU memory, with a margin) and else the largest "
                             "tiles that fit; 0 forces the whole image; T runs T x T tiles. GLA's global "
                             "attention then sees one tile plus its overlap, so tiles change results slightly")
    parser.add_argument("--tile-overlap", type=int, default=16, metavar="O",
                        help="LR pixels of context around each tile (default 16)")
    parser.add_argument("--max-memory", default=None, metavar="SIZE",
                        help="memory budget of --tile auto instead of the available memory, e.g. 2G, 512M")
    parser.add_argument("--self-ensemble", action="store_true",
                        help="average over the 8 flips/transposes (DLSN+; 8x slower)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--n-hashes", type=int, default=None, metavar="H",
                        help="hash rounds of every GLA layer at inference (default: the checkpoint's; "
                             "the weights are unchanged: more rounds, more accuracy and time)")


def _tile_argument(text):
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a tile size >= 0 (0: whole image), got {text!r}")
    return value


def _super_resolve(model, lr, args, device, border_pad, show_progress):
    """``upscale_tensor`` with the tiles of ``--tile``/``--max-memory``, saying so when it tiles."""
    from tqdm import tqdm

    height, width = lr.shape[-2] + 2 * border_pad, lr.shape[-1] + 2 * border_pad
    tile = None if args.tile in (0, "auto") else args.tile
    if args.tile == "auto":
        budget = args.max_memory_bytes
        if budget is None:
            available = available_memory(device)
            budget = None if available is None else int(available * MEMORY_MARGIN)
        plan = None if budget is None else plan_tiles(
            model, height, width, budget, overlap=args.tile_overlap, batch=lr.shape[0],
            device=device, self_ensemble=args.self_ensemble)
        if plan is not None and plan.tile is not None:
            tile = plan.tile
            print(f"tiling: {width}x{height} LR pixels (with border padding) do not fit the memory budget "
                  f"({format_size(plan.budget)}); running {plan.count} tiles of {tile}x{tile} (+{args.tile_overlap} "
                  f"pixels of overlap, about {format_size(plan.estimate)}). GLA's global attention then sees one "
                  "tile's context plus the overlap, not the whole image (--tile 0 forces the whole image, "
                  "--max-memory sets the budget)", file=sys.stderr)
    bar = None
    if tile is not None:
        total = count_tiles(height, width, tile) * (8 if args.self_ensemble else 1)
        bar = tqdm(total=total, desc="tiles", unit="tile", file=sys.stderr, leave=False,
                   disable=not show_progress or total < 2)
    try:
        return upscale_tensor(model, lr, args.scale, tile=tile, tile_overlap=args.tile_overlap,
                              self_ensemble=args.self_ensemble, border_pad=border_pad,
                              on_tile=None if bar is None else bar.update)
    finally:
        if bar is not None:
            bar.close()


def add_eval_arguments(parser):
    """Arguments of ``dlsn eval``."""
    parser.description = (
        "Evaluate a checkpoint (or the bicubic baseline) on a benchmark folder: per-image and mean "
        "PSNR/SSIM on the Y channel, borders of `scale` pixels shaved, outputs quantised to 8 bit "
        "(the SISR literature's protocol). DATA holds HR images (LR made on the fly) or the EDSR "
        "layout HR/ + LR_bicubic/X{s}/."
    )
    _add_inference_arguments(parser)
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


def _check_memory_arguments(args):
    args.max_memory_bytes = None if args.max_memory is None else parse_size(args.max_memory)


def _benchmark_name(folder: Path) -> str:
    folder = Path(folder).resolve()
    return folder.parent.name if folder.name in ("HR", "GTmod12", "original") else folder.name


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
        sr = _super_resolve(model, lr, args, device, score_pad, show_progress=True).float().cpu()[0] / rgb_range
        seconds += time.perf_counter() - started
        rows.append({"image": name, "psnr": calc_psnr(sr, hr, args.scale), "ssim": calc_ssim(sr, hr, args.scale)})
        if save_dir is not None:
            if save_pad != score_pad:
                sr = _super_resolve(model, lr, args, device, save_pad, show_progress=True).float().cpu()[0] / rgb_range
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


def run_eval(args) -> int:
    """``dlsn eval``: prints per-image and mean PSNR/SSIM (one folder) or a table (several);
    returns the exit status."""
    folders = [Path(d) for d in args.data]
    for folder in folders:  # every folder is checked before minutes of inference
        if not folder.is_dir():
            raise FileNotFoundError(f"--data: benchmark folder {str(folder)!r} not found")
    names = [_benchmark_name(folder) for folder in folders]
    if len(set(names)) != len(names):
        raise ValueError(f"--data: two benchmark folders share a name ({', '.join(names)})")
    _check_memory_arguments(args)
    device = resolve_device(args.device)
    model = load_for_inference(args.model, args.checkpoint, args.scale, device, n_hashes=args.n_hashes)
    results = []
    for folder, name in zip(folders, names):
        save_dir = None if not args.save else (Path(args.save) / name if len(folders) > 1 else Path(args.save))
        rows, mean, seconds = _evaluate_folder(model, folder, args, device, save_dir)
        results.append({"benchmark": name, "data": str(folder), "images": rows, "mean": mean,
                        "seconds": seconds})
    method = _method_label(args)
    if args.table:
        written = write_results_table(args.table, method, args.scale, args.degradation,
                                      {r["benchmark"]: r["mean"] for r in results})
        print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    if args.json:
        common = {"scale": args.scale, "model": args.model, "method": method, "degradation": args.degradation,
                  "n_hashes": args.n_hashes, "self_ensemble": args.self_ensemble}
        if len(results) == 1:
            print(json.dumps({**common, **results[0]}, indent=2))
        else:
            print(json.dumps({**common, "benchmarks": results}, indent=2))
        return 0
    if len(results) == 1:
        rows, mean = results[0]["images"], results[0]["mean"]
        width = max(len("image"), max(len(r["image"]) for r in rows))
        print(f"{'image':<{width}}  {'PSNR':>8}  {'SSIM':>7}")
        for r in rows:
            print(f"{r['image']:<{width}}  {r['psnr']:8.2f}  {r['ssim']:7.4f}")
        print(f"{'mean':<{width}}  {mean['psnr']:8.2f}  {mean['ssim']:7.4f}")
        return 0
    print(_markdown_table([_table_row(method, args.scale, args.degradation,
                                      {r["benchmark"]: r["mean"] for r in results})], names))
    return 0


_FIXED_COLUMNS = ("method", "scale", "degradation")


def _table_row(method, scale, degradation, means):
    row = {"method": method, "scale": f"x{scale}", "degradation": degradation.upper()}
    for name, mean in means.items():
        row[f"{name} PSNR"] = f"{mean['psnr']:.2f}"
        row[f"{name} SSIM"] = f"{mean['ssim']:.4f}"
    return row


def _ordered_benchmarks(names):
    known = [b for b in PAPER_BENCHMARKS if b in names]
    return known + [n for n in names if n not in known]


def _markdown_table(rows, benchmarks):
    """The paper's layout: one row per method and scale, `PSNR/SSIM` per benchmark."""
    header = ["Method", "Scale", "Degradation", *benchmarks]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + [":---:"] * len(benchmarks)) + "|"]
    for row in rows:
        cells = [row["method"], row["scale"], row["degradation"]]
        for name in benchmarks:
            psnr, ssim = row.get(f"{name} PSNR", ""), row.get(f"{name} SSIM", "")
            cells.append(f"{psnr}/{ssim}" if psnr else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results_table(path, method, scale, degradation, means):
    """Add (or replace) the row `method` x `scale` x `degradation` with `means` ({benchmark: {"psnr",
    "ssim"}}) in the table at `path` (`.md` and `.csv`, suffixes added); other rows are kept.
    Rows sort by degradation, scale, then method. Returns the two paths written."""
    base = Path(path)
    if base.suffix in (".md", ".csv"):
        base = base.with_suffix("")
    csv_path, md_path = base.with_suffix(".csv"), base.with_suffix(".md")
    rows = []
    if csv_path.is_file():
        with open(csv_path, newline="") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or not set(_FIXED_COLUMNS) <= set(reader.fieldnames):
                raise ValueError(f"--table: {csv_path} exists but is not a dlsn results table")
            rows = [dict(row) for row in reader]
    new = _table_row(method, scale, degradation, means)
    rows = [r for r in rows if tuple(r[c] for c in _FIXED_COLUMNS) != tuple(new[c] for c in _FIXED_COLUMNS)]
    rows.append(new)
    rows.sort(key=lambda r: (r["degradation"], int(r["scale"].lstrip("x")), r["method"]))
    names = {key[: -len(" PSNR")] for r in rows for key in r if key.endswith(" PSNR") and r[key]}
    benchmarks = _ordered_benchmarks(sorted(names))
    fields = [*_FIXED_COLUMNS] + [f"{b} {m}" for b in benchmarks for m in ("PSNR", "SSIM")]
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = csv_path.with_name(f".{csv_path.name}.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in fields})
    tmp.replace(csv_path)
    md_tmp = md_path.with_name(f".{md_path.name}.tmp")
    md_tmp.write_text("PSNR (dB) / SSIM on the Y channel, borders of `scale` pixels shaved.\n\n"
                      + _markdown_table(rows, benchmarks) + "\n")
    md_tmp.replace(md_path)
    return [md_path, csv_path]


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
    _add_inference_arguments(parser)
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


def _is_16bit_png(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(25)
    return len(head) == 25 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[24] == 16


def _is_gray(path: Path) -> bool:
    from PIL import Image

    with Image.open(path) as img:
        return img.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def run_upscale(args) -> int:
    """``dlsn upscale``: writes one upscaled image per input; returns the exit status."""
    _check_memory_arguments(args)
    from tqdm import tqdm

    files = _expand_inputs(args.inputs)
    out = Path(args.output)
    single_file = len(files) == 1 and out.suffix.lower() in IMAGE_EXTENSIONS
    device = resolve_device(args.device)
    if args.half and device.type != "cuda":
        raise ValueError("--half needs a CUDA device (float16 convolutions are slow or missing on CPU)")
    model = load_for_inference(args.model, args.checkpoint, args.scale, device, n_hashes=args.n_hashes)
    if args.half:
        model = model.half()
    rgb_range = getattr(model, "rgb_range", 1.0)
    for path in tqdm(files, desc="upscale", unit="img", disable=args.no_progress or len(files) < 2, file=sys.stderr):
        rgb, alpha = read_image_with_alpha(path)
        lr = rgb.unsqueeze(0).to(device) * rgb_range
        if args.half:
            lr = lr.half()
        sr = _super_resolve(model, lr, args, device, args.border_pad, show_progress=not args.no_progress)
        sr = (sr.float().cpu()[0] / rgb_range).clamp(0, 1)
        if _is_gray(path):
            sr = sr.mean(dim=0, keepdim=True)
        target = out if single_file else out / f"{path.stem}_x{args.scale}.png"
        if alpha is not None:
            alpha = imresize(alpha.double(), scale=args.scale).float().clamp(0, 1)
            if target.suffix.lower() in NO_ALPHA_EXTENSIONS:
                # What the user asked for, composited on white as read_image does for the model.
                sr = sr * alpha + (1 - alpha)
                print(f"warning: {path} has transparency, which {target.suffix} cannot store: "
                      f"{target} is composited on white", file=sys.stderr)
            else:
                sr = torch.cat([sr, alpha], dim=0)
        bit_depth = 16 if _is_16bit_png(path) and target.suffix.lower() == ".png" else 8
        write_image(target, sr, bit_depth=bit_depth)
        print(f"wrote {target}", file=sys.stderr)
    return 0
