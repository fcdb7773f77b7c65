"""``dlsn eval`` and ``dlsn upscale`` (wired into the command line by ``dlsn.cli``).

Errors in the input raise ``FileNotFoundError`` / ``ValueError`` with a message naming the file;
``dlsn.cli`` prints it as one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
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

__all__ = ["add_eval_arguments", "run_eval", "add_upscale_arguments", "run_upscale", "load_for_inference"]


def load_for_inference(model_name, checkpoint, scale, device):
    """The model to run: ``BicubicUpscaler`` for ``model_name="bicubic"``, else a checkpoint's DLSN."""
    if model_name == "bicubic":
        return BicubicUpscaler(scale)
    if not checkpoint:
        raise ValueError("--checkpoint is required (or use --model bicubic for the baseline)")
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    from .checkpoint import load_model

    return load_model(path, scale=scale, map_location="cpu").to(device).eval()


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
    parser.add_argument("--data", required=True, metavar="DIR", help="benchmark folder")
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


def run_eval(args) -> int:
    """``dlsn eval``: prints per-image and mean PSNR/SSIM; returns the exit status."""
    _check_memory_arguments(args)
    device = resolve_device(args.device)
    pairs = BenchmarkPairs(args.data, args.scale, args.degradation, noise_level=args.noise_level, seed=args.seed)
    model = load_for_inference(args.model, args.checkpoint, args.scale, device)
    rgb_range = getattr(model, "rgb_range", 1.0)
    rows = []
    score_pad = args.border_pad or 0
    save_pad = DEFAULT_BORDER_PAD if args.border_pad is None else args.border_pad
    for index, name in enumerate(pairs.names):
        lr, hr = pairs[index]
        lr = lr.unsqueeze(0).to(device) * rgb_range
        sr = _super_resolve(model, lr, args, device, score_pad, show_progress=True).float().cpu()[0] / rgb_range
        rows.append({"image": name, "psnr": calc_psnr(sr, hr, args.scale), "ssim": calc_ssim(sr, hr, args.scale)})
        if args.save:
            if save_pad != score_pad:
                sr = _super_resolve(model, lr, args, device, save_pad, show_progress=True).float().cpu()[0] / rgb_range
            write_image(Path(args.save) / f"{name}_x{args.scale}.png", sr)
    mean = {"psnr": sum(r["psnr"] for r in rows) / len(rows), "ssim": sum(r["ssim"] for r in rows) / len(rows)}
    if args.json:
        print(json.dumps({"scale": args.scale, "model": args.model, "degradation": args.degradation,
                          "data": str(args.data), "images": rows, "mean": mean}, indent=2))
        return 0
    width = max(len("image"), max(len(r["image"]) for r in rows))
    print(f"{'image':<{width}}  {'PSNR':>8}  {'SSIM':>7}")
    for r in rows:
        print(f"{r['image']:<{width}}  {r['psnr']:8.2f}  {r['ssim']:7.4f}")
    print(f"{'mean':<{width}}  {mean['psnr']:8.2f}  {mean['ssim']:7.4f}")
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
    model = load_for_inference(args.model, args.checkpoint, args.scale, device)
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
