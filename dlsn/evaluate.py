"""``dlsn eval`` and ``dlsn upscale`` (wired into the command line by ``dlsn.cli``).

Errors in the input raise ``FileNotFoundError`` / ``ValueError`` with a message naming the file;
``dlsn.cli`` prints it as one line and exits with status 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from .data import BenchmarkPairs
from .degradations import DEGRADATIONS, DN_NOISE_LEVEL
from .imageio import IMAGE_EXTENSIONS, NO_ALPHA_EXTENSIONS, read_image_with_alpha, write_image
from .imresize import imresize
from .inference import BicubicUpscaler, upscale_tensor
from .metrics import calc_psnr, calc_ssim
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
    parser.add_argument("--tile", type=int, default=None, metavar="T",
                        help="run on T x T LR tiles to bound memory (GLA is global: tiles change results "
                             "slightly; larger is closer to whole-image inference)")
    parser.add_argument("--tile-overlap", type=int, default=16, metavar="O",
                        help="LR pixels of context around each tile (default 16)")
    parser.add_argument("--self-ensemble", action="store_true",
                        help="average over the 8 flips/transposes (DLSN+; 8x slower)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")


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
    parser.add_argument("--save", default=None, metavar="DIR", help="write the SR images (PNG) here")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    return parser


def run_eval(args) -> int:
    """``dlsn eval``: prints per-image and mean PSNR/SSIM; returns the exit status."""
    device = resolve_device(args.device)
    pairs = BenchmarkPairs(args.data, args.scale, args.degradation, noise_level=args.noise_level, seed=args.seed)
    model = load_for_inference(args.model, args.checkpoint, args.scale, device)
    rgb_range = getattr(model, "rgb_range", 1.0)
    rows = []
    for index, name in enumerate(pairs.names):
        lr, hr = pairs[index]
        sr = upscale_tensor(model, lr.unsqueeze(0).to(device) * rgb_range, args.scale, tile=args.tile,
                            tile_overlap=args.tile_overlap, self_ensemble=args.self_ensemble)
        sr = sr.float().cpu()[0] / rgb_range
        rows.append({"image": name, "psnr": calc_psnr(sr, hr, args.scale), "ssim": calc_ssim(sr, hr, args.scale)})
        if args.save:
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
        sr = upscale_tensor(model, lr, args.scale, tile=args.tile, tile_overlap=args.tile_overlap,
                            self_ensemble=args.self_ensemble)
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
