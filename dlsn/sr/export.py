"""``dlsn export``: a checkpoint as ``.safetensors`` weights, a ``torch.export`` program (``.pt2``), an
AOTInductor package for the CPU, or an ONNX model (``dlsn.sr.deploy`` says what each holds)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .checkpoint import export_safetensors, load_model
from .deploy import DEFAULT_OPSET, FORMATS, MIN_SIZE, check_output_path, save_aoti, save_onnx, save_pt2

__all__ = ["add_arguments", "run", "format_for"]

# Output suffix -> format when --format is not given (".pt2" is the ExportedProgram; an AOTInductor
# package is a .pt2 too, so it is only ever asked for by name).
_SUFFIX_FORMATS = {".safetensors": "safetensors", ".pt2": "pt2", ".onnx": "onnx"}
_SUFFIXES = {"safetensors": ".safetensors", "pt2": ".pt2", "aoti": ".pt2", "onnx": ".onnx"}


def _size(text):
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW (e.g. 48x48), got {text!r}") from None
    if min(height, width) < MIN_SIZE:
        raise argparse.ArgumentTypeError(f"height and width must be >= {MIN_SIZE}, got {text!r}")
    return height, width


def add_arguments(parser):
    """Arguments of ``dlsn export``."""
    parser.description = (
        "Export a checkpoint: safetensors weights, or the network as a torch.export program (pt2: load with "
        "torch.export.load(path).module()), an AOTInductor package for the CPU (aoti: "
        "torch._inductor.aoti_load_package(path)) or an ONNX model for onnxruntime (onnx: also runs with "
        "`dlsn upscale --checkpoint model.onnx`). pt2, aoti and onnx take one image of any height and width "
        f">= {MIN_SIZE}; GLA runs its reference math there, with the eval rotations of every size as constants."
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="published or dlsn training checkpoint")
    parser.add_argument("-o", "--output", required=True, type=Path,
                        help="output file (.safetensors, .pt2 or .onnx; --format aoti writes a .pt2 package)")
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="what to write (default: from the output suffix)")
    parser.add_argument("--scale", type=int, default=None, choices=(2, 3, 4, 8),
                        help="the model's scale, checked against the weights (needed for FSRCNN weights)")
    parser.add_argument("--size", type=_size, default=(48, 48), metavar="HxW",
                        help="size of the example image the graph is traced with (default 48x48; the graph "
                             "takes any size)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset (default and smallest: {DEFAULT_OPSET})")
    parser.add_argument("--no-ema", action="store_true", help="export the raw weights rather than the EMA ones")


def format_for(output: Path, requested=None) -> str:
    """The format to write `output` in: `requested`, or the one its suffix names. A suffix that
    does not fit the format is a ValueError (a .onnx file holding a pt2 program helps nobody)."""
    suffix = output.suffix.lower()
    fmt = requested or _SUFFIX_FORMATS.get(suffix)
    if fmt is None:
        raise ValueError(f"--output {str(output)!r}: cannot tell the format from the suffix {suffix or '(none)'!r}; "
                         f"name a .safetensors, .pt2 or .onnx file or give --format {{{','.join(FORMATS)}}}")
    if suffix != _SUFFIXES[fmt]:
        raise ValueError(f"--output {str(output)!r}: --format {fmt} writes a {_SUFFIXES[fmt]} file")
    return fmt


def run(args) -> int:
    """``dlsn export``: writes the file; returns the exit status."""
    fmt = format_for(args.output, args.format)
    check_output_path(args.output)
    if fmt == "safetensors":
        out = export_safetensors(args.checkpoint, args.output, prefer_ema=not args.no_ema)
    else:
        # The graph runs GLA's reference math; the checkpoint's backend and checks are runtime choices.
        model = load_model(args.checkpoint, scale=args.scale, prefer_ema=not args.no_ema, backend="reference",
                           check_finite=False)
        if fmt == "pt2":
            out = save_pt2(model, args.output, args.size)
        elif fmt == "aoti":
            out = save_aoti(model, args.output, args.size)
        else:
            out = save_onnx(model, args.output, args.size, opset=args.opset)
    print(f"wrote {out}")
    return 0
