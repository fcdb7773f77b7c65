"""The `dlsn` command line (`dlsn ...` or `python -m dlsn ...`).

Subcommands: `train`, `eval`, `upscale`, `demo`, `export`, `attention`. `eval` and `upscale` live in
`dlsn.sr.evaluate` and are imported only when used. Errors in the input (missing files, config typos,
checkpoints that do not fit) and every file-system error (naming the path and the reason) print
one `dlsn <command>: error: ...` line and exit with status 2;
an interrupted training run exits with 130 after writing its checkpoint.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]

_LAZY = {
    "eval": ("add_eval_arguments", "run_eval", "evaluate a checkpoint (or bicubic) on a benchmark folder: PSNR/SSIM"),
    "upscale": ("add_upscale_arguments", "run_upscale", "super-resolve image files with a checkpoint"),
}


def _add_train_arguments(parser):
    parser.add_argument("--config", required=True,
                        help="YAML config file, or the name of a packaged one: dlsn_x2, dlsn_x3, dlsn_x4, demo")
    parser.add_argument("--resume", default=None, metavar="CKPT",
                        help="continue from a training checkpoint, or 'auto' for the latest in log.out_dir")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="config overrides, e.g. train.lr=2e-4 data.train_dir=/data/DIV2K")


def _run_train(args):
    from .config import load_config
    from .train import train

    cfg = load_config(args.config, args.overrides)
    result = train(cfg, resume=args.resume)
    print(f"finished at iteration {result['iteration']}; outputs in {result['out_dir']}")
    return 0


def _add_export_arguments(parser):
    parser.add_argument("--checkpoint", required=True, type=Path, help="published or dlsn training checkpoint")
    parser.add_argument("-o", "--output", required=True, type=Path, help="output .safetensors file")
    parser.add_argument("--no-ema", action="store_true", help="export the raw weights rather than the EMA ones")


def _run_export(args):
    from .checkpoint import export_safetensors

    if args.output.suffix != ".safetensors":
        raise ValueError(f"--output {str(args.output)!r}: the file name must end in .safetensors")
    out = export_safetensors(args.checkpoint, args.output, prefer_ema=not args.no_ema)
    print(f"wrote {out}")
    return 0


def _add_attention_arguments(parser):
    from .attention_maps import add_attention_arguments

    add_attention_arguments(parser)


def _run_attention(args):
    from .attention_maps import run_attention

    return run_attention(args)


def _run_demo(args):
    from .demo import run_demo

    return run_demo(args)


def _add_demo_arguments(parser):
    from .demo import add_demo_arguments

    add_demo_arguments(parser)


_COMMANDS = {
    "train": (_add_train_arguments, _run_train, "train DLSN from a YAML config (published protocol or your own)"),
    "demo": (_add_demo_arguments, _run_demo, "train a small DLSN on a CPU in minutes and compare with bicubic"),
    "export": (_add_export_arguments, _run_export, "write a checkpoint's weights as .safetensors"),
    "attention": (_add_attention_arguments, _run_attention,
                  "draw where a GLA layer looks for chosen pixels, with and without the learnable term"),
}


def build_parser():
    from importlib.metadata import version

    parser = argparse.ArgumentParser(prog="dlsn", description="DLSN / Global Learnable Attention super-resolution")
    parser.add_argument("--version", action="version", version=f"dlsn {version('dlsn')}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in ("train", "eval", "upscale", "demo", "export", "attention"):
        if name in _LAZY:
            # Listed for --help only; `main` hands these to a parser built on use (`dlsn.sr.evaluate`).
            sub.add_parser(name, help=_LAZY[name][2], add_help=False)
        else:
            add, _, text = _COMMANDS[name]
            add(sub.add_parser(name, help=text, description=text))
    return parser


def _lazy_command(name, rest):
    add_name, run_name, text = _LAZY[name]
    try:
        from . import evaluate
    except ImportError as exc:
        raise RuntimeError(f"'dlsn {name}' is unavailable: dlsn.sr.evaluate cannot be imported ({exc})") from None
    parser = argparse.ArgumentParser(prog=f"dlsn {name}", description=text)
    getattr(evaluate, add_name)(parser)
    return getattr(evaluate, run_name), parser.parse_args(rest)


def main(argv=None) -> int:
    """Run the `dlsn` command line on `argv` (default `sys.argv[1:]`); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    command = argv[0] if argv else None
    try:
        if command in _LAZY:
            run, args = _lazy_command(command, argv[1:])
        else:
            args = parser.parse_args(argv)
            if args.command is None:
                parser.print_help()
                return 2
            run = _COMMANDS[args.command][1]
        return int(run(args) or 0)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2, message already printed)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except KeyboardInterrupt:
        print(f"dlsn {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from .train import TrainingInterrupted

        if isinstance(exc, TrainingInterrupted):
            return 130
        if isinstance(exc, OSError):  # every file-system error: the path and the reason, one line
            from .utils import os_error_reason

            print(f"dlsn {command}: error: {os_error_reason(exc)}", file=sys.stderr)
            return 2
        if isinstance(exc, (ValueError, RuntimeError, TypeError, ImportError)):
            print(f"dlsn {command}: error: {exc}", file=sys.stderr)
            return 2
        raise
