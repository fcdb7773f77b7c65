"""What ``dlsn eval`` and ``dlsn upscale`` share: their model and tiling options, loading the model
the options name, and running it with the tiles they ask for (with a progress bar)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from .checkpoint import load_model
from .deploy import compile_for_inference, load_inference_model
from .inference import BicubicUpscaler, count_tiles, upscale_tensor
from .tiling import MEMORY_MARGIN, available_memory, format_size, parse_size, plan_tiles

__all__ = ["add_inference_arguments", "set_memory_budget", "load_for_inference", "super_resolve"]


def add_inference_arguments(parser):
    """The options of the model to run and of its tiles."""
    parser.add_argument("--checkpoint", default=None, metavar="CKPT",
                        help="DLSN checkpoint (published state dict, a dlsn training checkpoint or safetensors), "
                             "or an ONNX model from `dlsn export --format onnx` (run by onnxruntime)")
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
    parser.add_argument("--compile", action="store_true",
                        help="run the model through torch.compile (the first image of each size compiles: "
                             "seconds to minutes on a CPU; see README for the speed-up)")
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


def set_memory_budget(args):
    """Parse ``--max-memory`` into ``args.max_memory_bytes`` (None: the available memory), so that a
    bad size fails before the model is loaded."""
    args.max_memory_bytes = None if args.max_memory is None else parse_size(args.max_memory)


def _check_n_hashes(n_hashes, model_name):
    if n_hashes is None:
        return
    if n_hashes < 1:
        raise ValueError(f"--n-hashes must be a positive number of hash rounds, got {n_hashes}")
    if model_name == "bicubic":
        raise ValueError("--n-hashes sets the hash rounds of a DLSN checkpoint; --model bicubic has none")


def load_for_inference(model_name, checkpoint, scale, device, n_hashes=None, compile=False):
    """The model to run: ``BicubicUpscaler`` for ``model_name="bicubic"``, else a checkpoint's DLSN
    (with ``n_hashes`` hash rounds at inference when given; the weights are untouched), or an ONNX
    export run by onnxruntime (``dlsn.sr.deploy.load_inference_model``); ``compile``: through
    ``torch.compile``."""
    _check_n_hashes(n_hashes, model_name)
    if model_name == "bicubic":
        return BicubicUpscaler(scale)
    if not checkpoint:
        raise ValueError("--checkpoint is required (or use --model bicubic for the baseline)")
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix.lower() == ".onnx":
        return load_inference_model(path, scale, device, n_hashes=n_hashes, compile=compile)
    model = load_model(path, scale=scale, map_location="cpu").to(device).eval()
    if n_hashes is not None:
        model.set_n_hashes(n_hashes)
    return compile_for_inference(model) if compile else model


def _auto_tile(model, height, width, batch, args, device):
    """The tile size of ``--tile auto`` for a padded ``height x width`` input: None when the whole
    image fits the memory budget (or nothing is known of the model or the memory); when it
    tiles, it says so on stderr."""
    budget = args.max_memory_bytes
    if budget is None:
        available = available_memory(device)
        if available is None:
            return None
        budget = int(available * MEMORY_MARGIN)
    plan = plan_tiles(model, height, width, budget, overlap=args.tile_overlap, batch=batch, device=device,
                      self_ensemble=args.self_ensemble)
    if plan is None or plan.tile is None:
        return None
    print(f"tiling: {width}x{height} LR pixels (with border padding) do not fit the memory budget "
          f"({format_size(plan.budget)}); running {plan.count} tiles of {plan.tile}x{plan.tile} "
          f"(+{args.tile_overlap} pixels of overlap, about {format_size(plan.estimate)}). GLA's global attention "
          "then sees one tile's context plus the overlap, not the whole image (--tile 0 forces the whole "
          "image, --max-memory sets the budget)", file=sys.stderr)
    return plan.tile


def super_resolve(model, lr, args, device, border_pad, show_progress):
    """``upscale_tensor`` with the tiles of ``--tile``/``--max-memory`` (``args`` after
    ``set_memory_budget``) and a progress bar over the tiles when there are several."""
    height, width = lr.shape[-2] + 2 * border_pad, lr.shape[-1] + 2 * border_pad
    if args.tile == "auto":
        tile = _auto_tile(model, height, width, lr.shape[0], args, device)
    else:
        tile = args.tile or None  # 0: the whole image
    tiles = 0 if tile is None else count_tiles(height, width, tile) * (8 if args.self_ensemble else 1)
    with tqdm(total=tiles, desc="tiles", unit="tile", file=sys.stderr, leave=False,
              disable=not show_progress or tiles < 2) as bar:
        return upscale_tensor(model, lr, args.scale, tile=tile, tile_overlap=args.tile_overlap,
                              self_ensemble=args.self_ensemble, border_pad=border_pad,
                              on_tile=None if tile is None else bar.update)
