"""The `dlsn` command line (`dlsn ...` or `python -m dlsn ...`).

`COMMANDS` is the table of subcommands. Each lives in a module of `dlsn.sr` with
`add_arguments(parser)` and `run(args)` (returning the exit status), imported only when its command
runs: `dlsn --help` lists them all from the table, and a command whose module cannot be imported
fails alone. Errors in the input (missing files, config typos, checkpoints that do not fit) and
every file-system error (naming the path and the reason) print one `dlsn <command>: error: ...`
line and exit with status 2; an interrupted training run exits with 130 after writing its
checkpoint.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from importlib.metadata import version

from .utils import TrainingInterrupted, os_error_reason

__all__ = ["main", "build_parser", "command_parser", "COMMANDS"]

# name -> (module of dlsn.sr, one-line help)
COMMANDS = {
    "train": ("train", "train DLSN from a YAML config (published protocol or your own)"),
    "prepare": ("prepare", "turn a folder of HR images into a prepared training dataset (no image decoding "
                           "during training)"),
    "eval": ("evaluate", "evaluate a checkpoint (or bicubic) on a benchmark folder: PSNR/SSIM"),
    "upscale": ("upscale", "super-resolve image files with a checkpoint"),
    "demo": ("demo", "train a small DLSN on a CPU in minutes and compare with bicubic"),
    "export": ("export", "write a checkpoint as .safetensors weights, a torch.export program (.pt2), an "
                         "AOTInductor package or an ONNX model"),
    "attention": ("attention_maps", "draw where a GLA layer looks for chosen pixels, with and without the "
                                    "learnable term"),
}


def build_parser():
    """The `dlsn` parser: `--version`, `--help` and the list of commands (`command_parser` parses
    a command's own arguments)."""
    parser = argparse.ArgumentParser(prog="dlsn", description="DLSN / Global Learnable Attention super-resolution")
    parser.add_argument("--version", action="version", version=f"dlsn {version('dlsn')}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, text) in COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    return parser


def command_parser(name):
    """`(parser, run)` of the command `name`, its module imported now."""
    module_name, text = COMMANDS[name]
    try:
        module = importlib.import_module(f".{module_name}", __package__)
    except ImportError as exc:
        raise RuntimeError(f"'dlsn {name}' is unavailable: dlsn.sr.{module_name} cannot be imported ({exc})") from None
    parser = argparse.ArgumentParser(prog=f"dlsn {name}", description=text)
    module.add_arguments(parser)
    return parser, module.run


def main(argv=None) -> int:
    """Run the `dlsn` command line on `argv` (default `sys.argv[1:]`); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else None
    try:
        if command not in COMMANDS:  # no command: --help, --version, a usage error or the help
            parser = build_parser()
            parser.parse_args(argv)
            parser.print_help()
            return 2
        parser, run = command_parser(command)
        return int(run(parser.parse_args(argv[1:])) or 0)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2, message already printed)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except KeyboardInterrupt:
        print(f"dlsn {command}: interrupted", file=sys.stderr)
        return 130
    except TrainingInterrupted:  # train() has said where its checkpoint is
        return 130
    except OSError as exc:  # every file-system error: the path and the reason, one line
        print(f"dlsn {command}: error: {os_error_reason(exc)}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError, TypeError, ImportError) as exc:
        print(f"dlsn {command}: error: {exc}", file=sys.stderr)
        return 2
