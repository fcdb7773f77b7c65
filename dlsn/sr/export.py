"""``dlsn export``: a checkpoint's weights as a ``.safetensors`` file."""

from __future__ import annotations

from pathlib import Path

from .checkpoint import export_safetensors

__all__ = ["add_arguments", "run"]


def add_arguments(parser):
    """Arguments of ``dlsn export``."""
    parser.add_argument("--checkpoint", required=True, type=Path, help="published or dlsn training checkpoint")
    parser.add_argument("-o", "--output", required=True, type=Path, help="output .safetensors file")
    parser.add_argument("--no-ema", action="store_true", help="export the raw weights rather than the EMA ones")


def run(args) -> int:
    """``dlsn export``: writes the file; returns the exit status."""
    if args.output.suffix != ".safetensors":
        raise ValueError(f"--output {str(args.output)!r}: the file name must end in .safetensors")
    out = export_safetensors(args.checkpoint, args.output, prefer_ema=not args.no_ema)
    print(f"wrote {out}")
    return 0
