"""Helpers the training loop and the inference commands share: device choice, atomic file writes,
one-line descriptions of file-system errors, the exception by which an interrupted training run
reaches the command line, and the font of captions on the images the commands draw."""
from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path
from typing import BinaryIO, Callable

import torch

__all__ = ["resolve_device", "atomic_write", "WriteError", "os_error_reason", "make_parent", "TrainingInterrupted",
           "label_font"]


class TrainingInterrupted(RuntimeError):
    """Raised by `dlsn.sr.train.train` after Ctrl-C, once the checkpoint holding the finished steps is written."""


def resolve_device(name, option: str = "--device", local_rank: int = 0) -> torch.device:
    """`torch.device` for `name`; "auto" (or None) is `cuda:local_rank` when CUDA is available, else the CPU.

    `option` names the setting in the error raised when CUDA is asked for but missing.
    """
    if name in (None, "auto"):
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{option}={name}: not a device; use cpu, cuda, cuda:1, ... or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{option}={name}: CUDA is not available on this machine; use {option}=cpu")
    return device


class WriteError(OSError):
    """A file could not be written; the message names the file and the reason on one line."""


def os_error_reason(exc: OSError, target=None) -> str:
    """The reason of `exc` in words, naming the path it concerns when that is not `target` itself."""
    reason = exc.strerror or str(exc)
    if isinstance(exc, (FileExistsError, NotADirectoryError)) or exc.errno in (errno.EEXIST, errno.ENOTDIR):
        # mkdir or open through a path component that is a file
        reason = "a part of the path is a file, not a folder"
    culprit = exc.filename
    if culprit is not None and (target is None or Path(culprit) != Path(target)):
        return f"{culprit}: {reason}"
    return reason


def make_parent(path: Path) -> None:
    """Create `path`'s folder; a `WriteError` naming `path` when that is impossible."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {os_error_reason(exc, path)}") from None


def atomic_write(path, write: Callable[[BinaryIO], None]) -> Path:
    """Write `path` through `write(handle)` so that readers see the old file or the whole new one.

    The bytes go to a temporary file beside `path` (created with the umask's normal mode, as any
    new file), are flushed and fsync'ed, and the temporary file is renamed over `path`. Any
    failure removes the temporary file and raises `WriteError("cannot write PATH: reason")`.
    """
    path = Path(path)
    make_parent(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            if tmp.exists():
                tmp.unlink()
            raise
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {os_error_reason(exc, tmp)}") from None
    try:  # make the rename itself durable
        dir_fd = os.open(str(path.parent), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def label_font(size: int = 14):
    """Pillow's bundled font at `size` pixels, for captions drawn on output images (its small bitmap
    font where Pillow is older than 10.1 or built without FreeType)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()
