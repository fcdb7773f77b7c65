"""What ``dlsn eval`` and ``dlsn upscale`` share: their model and tiling options, loading the model
the options name, and running it with the tiles they ask for (with a progress bar)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .checkpoint import load_model
from .deploy import compile_for_inference, load_inference_model
from .inference import BicubicUpscaler, count_tiles, counting_calls, forward_stages, upscale_tensor
from .progress import progress
from .tiling import (DEFAULT_MAX_TILE, DEFAULT_MAX_WHOLE, MEMORY_MARGIN, available_memory, format_size, parse_size,
                     plan_tiles, process_memory, unmap_freed_memory)

__all__ = ["add_inference_arguments", "set_memory_budget", "load_for_inference", "super_resolve", "PROGRESS_DELAY"]

PROGRESS_DELAY = 2.0  # seconds before progress shows: quicker runs show none


def add_inference_arguments(parser):
    """The options of the model to run and of its tiles."""
    parser.add_argument("--checkpoint", default=None, metavar="CKPT",
                        help="DLSN checkpoint (published state dict, a dlsn training checkpoint or safetensors), "
                             "or an ONNX model from `dlsn export --format onnx` (run by onnxruntime)")
    parser.add_argument("--scale", type=int, required=True, choices=(2, 3, 4, 8), help="upscaling factor")
    parser.add_argument("--model", default="dlsn", choices=("dlsn", "bicubic"),
                        help="'bicubic' runs the MATLAB-compatible bicubic baseline (no checkpoint)")
    parser.add_argument("--tile", type=_tile_argument, default="auto", metavar="T",
                        help="LR tile size: 'auto' (default) runs the whole image when it fits the memory budget "
                             f"and is at most {DEFAULT_MAX_WHOLE} pixels on a side, else the largest tiles of at "
                             f"most {DEFAULT_MAX_TILE} that fit (what measured fastest: README); 0 forces the whole "
                             "image; T runs T x T tiles. GLA's global attention then sees one tile plus its "
                             "overlap, so tiles change results slightly")
    parser.add_argument("--tile-overlap", type=int, default=16, metavar="O",
                        help="LR pixels of context around each tile (default 16)")
    parser.add_argument("--max-memory", default=None, metavar="SIZE",
                        help="bound on the whole process's memory at its peak, e.g. 2G, 512M: Python, PyTorch, "
                             "the model, the images and the forward (CPU: resident memory; CUDA: what PyTorch "
                             "allocates on the device), within about 10%%; --tile auto picks tiles to fit. Default: "
                             "what the process holds plus half the available memory")
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
    bad size fails before the model is loaded, and have freed memory leave the process at once
    (``unmap_freed_memory``), so that the budget bounds the process's peak."""
    args.max_memory_bytes = None if args.max_memory is None else parse_size(args.max_memory)
    unmap_freed_memory()


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
    if Path(checkpoint).suffix.lower() == ".onnx":
        return load_inference_model(Path(checkpoint), scale, device, n_hashes=n_hashes, compile=compile)
    model = load_model(checkpoint, scale=scale, map_location="cpu").to(device).eval()
    if n_hashes is not None:
        model.set_n_hashes(n_hashes)
    return compile_for_inference(model) if compile else model


def _stderr_line(line):
    print(line, file=sys.stderr, flush=True)


def _budget(args, device, held):
    """Bytes the whole process may hold at its peak: ``--max-memory``, else what it holds now plus
    ``MEMORY_MARGIN`` of the available memory (unbounded when that is unknown)."""
    if args.max_memory_bytes is not None:
        return args.max_memory_bytes
    available = available_memory(device)
    return held + int(available * MEMORY_MARGIN) if available is not None else sys.maxsize


def _auto_tile(model, height, width, batch, args, device, write):
    """The tile size of ``--tile auto`` for a padded ``height x width`` input (module ``dlsn.sr.tiling``):
    None for the whole image (or for a model without a memory estimate); when it tiles, it says so
    through ``write``."""
    held = process_memory(device) or 0
    plan = plan_tiles(model, height, width, _budget(args, device, held), overlap=args.tile_overlap, batch=batch,
                      device=device, self_ensemble=args.self_ensemble, held=held, max_tile=DEFAULT_MAX_TILE,
                      max_whole=DEFAULT_MAX_WHOLE)
    if plan is None or plan.tile is None:
        return None
    if plan.by_size:
        why = (f"images larger than {DEFAULT_MAX_WHOLE}x{DEFAULT_MAX_WHOLE} run faster in tiles of at most "
               f"{DEFAULT_MAX_TILE}, and in less memory (measured; --tile 0 forces the whole image)")
    else:
        why = (f"the whole image does not fit the memory budget of {format_size(plan.budget)} for this process "
               "(--max-memory sets it; --tile 0 forces the whole image)")
    write(f"tiling: {width}x{height} LR pixels (with border padding) run as {plan.count} tiles of "
          f"{plan.tile}x{plan.tile} (+{args.tile_overlap} pixels of overlap; about {format_size(plan.estimate)} "
          f"for the process at its peak): {why}. GLA's global attention then sees one tile's context plus the "
          "overlap, not the whole image")
    return plan.tile


def super_resolve(model, lr, args, device, border_pad, show_progress, write=_stderr_line):
    """``upscale_tensor`` with the tiles of ``--tile``/``--max-memory`` (``args`` after
    ``set_memory_budget``), showing progress over the tiles, or over the model's stages for a whole
    image, when the run lasts longer than ``PROGRESS_DELAY`` seconds. ``write`` prints a line (pass
    the ``write`` of a progress bar that is showing, so that the two do not overwrite each other)."""
    height, width = lr.shape[-2] + 2 * border_pad, lr.shape[-1] + 2 * border_pad
    if args.tile == "auto":
        tile = _auto_tile(model, height, width, lr.shape[0], args, device, write)
    else:
        tile = args.tile or None  # 0: the whole image
    passes = 8 if args.self_ensemble else 1
    stages = forward_stages(model) if tile is None and show_progress else []
    if tile is None:
        total, desc, unit = len(stages) * passes, "whole image", "stage"
    else:
        total, desc, unit = count_tiles(height, width, tile) * passes, "tiles", "tile"
    with progress(total=total, desc=desc, unit=unit, leave=False, delay=PROGRESS_DELAY,
                  disable=not show_progress or total < 2) as bar, counting_calls(stages, bar.update):
        return upscale_tensor(model, lr, args.scale, tile=tile, tile_overlap=args.tile_overlap,
                              self_ensemble=args.self_ensemble, border_pad=border_pad,
                              on_tile=None if tile is None else bar.update)
