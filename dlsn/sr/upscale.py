"""``dlsn upscale``: super-resolve image files, keeping what the input is (grayscale, alpha,
16-bit precision) in what is written.

Errors in the input raise ``FileNotFoundError`` / ``ValueError`` with a message naming the file;
``dlsn.sr.cli`` prints it as one line and exits with status 2.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .imageio import IMAGE_EXTENSIONS, NO_ALPHA_EXTENSIONS, image_info, read_image_with_alpha, write_image
from .imresize import imresize
from .inference import DEFAULT_BORDER_PAD
from .inference_cli import add_inference_arguments, load_for_inference, set_memory_budget, super_resolve
from .progress import progress
from .utils import resolve_device

__all__ = ["add_arguments", "run"]


def add_arguments(parser):
    """Arguments of ``dlsn upscale``."""
    parser.description = (
        "Super-resolve image files. Inputs: PNG, JPEG and the other formats Pillow reads. Grayscale "
        "inputs are upscaled as RGB and written as grayscale; RGBA inputs have their colour upscaled "
        "by the model and their alpha by bicubic resizing, and are written as RGBA PNG; 16-bit PNGs "
        "are read at full precision and written as 16-bit PNG. Output names: <stem>_x<S>.png in OUT "
        "(or OUT itself for a single input when OUT ends in an image suffix such as .png or .jpg; a "
        "transparent input written as JPEG is composited on white, with a warning). An OUT with another "
        "suffix, an image file name for several inputs, or an output that would overwrite an input is an "
        "error; end OUT with '/' to make any name a folder. Every file written is printed."
    )
    parser.add_argument("inputs", nargs="+", metavar="IN", help="image files or folders of images")
    parser.add_argument("-o", "--output", required=True, metavar="OUT",
                        help="output folder, or image file for one input (see above)")
    add_inference_arguments(parser)
    parser.add_argument("--border-pad", type=int, default=DEFAULT_BORDER_PAD, metavar="P",
                        help="LR pixels of edge replication around each image before the network, cropped "
                             f"after, so the borders come out right (default {DEFAULT_BORDER_PAD}; 0: none)")
    parser.add_argument("--half", action="store_true", help="run the model in float16 (CUDA only)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress display (a bar in a terminal, plain lines when redirected)")
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


def _targets(inputs, output, scale):
    """The file each input is written to: ``output`` itself for one input when it names an image file,
    else ``<stem>_x<scale>.png`` in the folder ``output``. A ``ValueError`` (one line) for an output
    that cannot be what was meant: an image file name for several inputs, an unknown suffix, a target
    that is one of the inputs or that two inputs share."""
    out = Path(output)
    suffix = out.suffix.lower()
    folder = out.is_dir() or output.endswith(("/", os.sep)) or not suffix
    if not folder and suffix not in IMAGE_EXTENSIONS:
        raise ValueError(f"-o {output}: {out.suffix!r} is not an image format ({', '.join(IMAGE_EXTENSIONS)}); "
                         f"to write into a folder of that name, end it with '/': -o {output}/")
    if not folder and len(inputs) > 1:
        raise ValueError(f"-o {output} names one image file, but there are {len(inputs)} inputs: give a folder, "
                         f"e.g. -o {out.with_suffix('')}")
    targets = [out] if not folder else [out / f"{path.stem}_x{scale}.png" for path in inputs]
    sources = {path.resolve(): path for path in inputs}
    first = {}
    for path, target in zip(inputs, targets):
        if target.resolve() in sources:
            raise ValueError(f"-o {output}: writing {target} would overwrite the input {sources[target.resolve()]}; "
                             "choose another output")
        if target.resolve() in first:
            raise ValueError(f"-o {output}: {first[target.resolve()]} and {path} would both be written to {target}; "
                             "upscale them into different folders")
        first[target.resolve()] = path
    return targets


def _add_alpha(sr, alpha, scale, source, target, write):
    """``sr`` with the input's ``alpha`` resized by bicubic; composited on white instead (with a
    warning through ``write``) when ``target``'s format stores no transparency."""
    alpha = imresize(alpha.double(), scale=scale).float().clamp(0, 1)
    if target.suffix.lower() in NO_ALPHA_EXTENSIONS:
        # What the user asked for, composited on white as read_image does for the model.
        write(f"warning: {source} has transparency, which {target.suffix} cannot store: "
              f"{target} is composited on white")
        return sr * alpha + (1 - alpha)
    return torch.cat([sr, alpha], dim=0)


def _upscale_file(model, source, target, args, device, write):
    rgb_range = getattr(model, "rgb_range", 1.0)
    rgb, alpha = read_image_with_alpha(source)
    info = image_info(source)
    lr = rgb.unsqueeze(0).to(device) * rgb_range
    del rgb  # the image's memory counts against --max-memory
    if args.half:
        lr = lr.half()
    sr = super_resolve(model, lr, args, device, args.border_pad, show_progress=not args.no_progress, write=write)
    del lr
    # In place: a second full-size copy of the output would count against --max-memory.
    sr = sr.float().cpu()[0].div_(rgb_range).clamp_(0, 1)
    if info.gray:
        sr = sr.mean(dim=0, keepdim=True)
    if alpha is not None:
        sr = _add_alpha(sr, alpha, args.scale, source, target, write)
    keep_16_bit = info.format == "PNG" and info.bit_depth == 16 and target.suffix.lower() == ".png"
    write_image(target, sr, bit_depth=16 if keep_16_bit else 8)


def run(args) -> int:
    """``dlsn upscale``: writes one upscaled image per input; returns the exit status."""
    set_memory_budget(args)
    files = _expand_inputs(args.inputs)
    targets = _targets(files, args.output, args.scale)
    device = resolve_device(args.device)
    if args.half and device.type != "cuda":
        raise ValueError("--half needs a CUDA device (float16 convolutions are slow or missing on CPU)")
    model = load_for_inference(args.model, args.checkpoint, args.scale, device, n_hashes=args.n_hashes,
                               compile=args.compile)
    if args.half:
        model = model.half()
    with progress(total=len(files), desc="upscale", unit="img", disable=args.no_progress or len(files) < 2) as bar:
        for path, target in zip(files, targets):
            _upscale_file(model, path, target, args, device, bar.write)
            bar.write(f"wrote {target}")
            bar.update(1)
    return 0
