"""Reading and writing images as float tensors (Pillow + numpy only).

``read_image`` maps every input to a float32 tensor ``[3, H, W]`` in [0, 1]:

* 8-bit RGB, palette, CMYK, YCbCr, JPEG: converted to RGB by Pillow, divided by 255.
* Grayscale (1-bit, 8-bit, 16-bit): replicated to three channels; 16-bit values divided by 65535.
* 16-bit RGB / RGBA / gray+alpha PNGs: Pillow reduces these to 8 bit, so they are decoded here
  (zlib + PNG un-filtering in numpy) and divided by 65535: no precision is lost.
* Transparency (RGBA, LA, palette or gray with a transparent colour): composited on **white**,
  so a model never sees the arbitrary colour stored under transparent pixels.
  ``read_image_with_alpha`` instead returns the RGB (not composited) and the alpha plane, which
  ``dlsn upscale`` resizes separately to write an RGBA result.

``read_image_window`` reads a crop of an image, equal to cropping ``read_image``'s result: for 8-bit
RGB PNGs (DIV2K's kind) it decodes only the rows down to the crop's bottom edge and converts only
the crop to float, which is what makes cutting training patches from PNGs cheap. ``image_size``
reads an image's size from its header.

``image_info`` tells, from the file's header, its format, whether it is grayscale and whether it
holds 16-bit samples; ``dlsn upscale`` writes its result alike.

``write_image`` writes ``[3, H, W]`` (RGB), ``[4, H, W]`` (RGBA), ``[1, H, W]`` (gray) or ``[2, H, W]`` (gray+alpha) tensors in
[0, 1], rounded; ``bit_depth=16`` writes a 16-bit PNG, 8 writes any format Pillow knows from the
suffix (JPEG at quality 95; alpha is refused for formats without it).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import NamedTuple, Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .utils import WriteError, make_parent, os_error_reason

__all__ = ["read_image", "read_image_with_alpha", "read_image_window", "image_size", "write_image", "image_info",
           "ImageInfo", "IMAGE_EXTENSIONS", "NO_ALPHA_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# Formats that cannot store transparency.
NO_ALPHA_EXTENSIONS = (".jpg", ".jpeg", ".ppm", ".pgm")

PathLike = Union[str, Path]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour types that Pillow truncates at 16 bit, with their channel counts.
_PNG16_CHANNELS = {2: 3, 4: 2, 6: 4}
# PNG colour types of gray and gray + alpha images.
_PNG_GRAY_TYPES = (0, 4)
# Pillow modes of grayscale images, and those `_pil_to_array` reads as 16-bit samples.
_PIL_16BIT_MODES = ("I;16", "I;16B", "I;16L", "I")
_PIL_GRAY_MODES = ("1", "L", "LA", "F", *_PIL_16BIT_MODES)


def _png_header(path: Path) -> Optional[Tuple[int, int, int, int, int]]:
    """``(width, height, bit_depth, colour_type, interlace)`` of a PNG file, else None."""
    with open(path, "rb") as f:
        head = f.read(33)
    if len(head) < 33 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", head[16:29])
    return width, height, depth, ctype, interlace


def _png_chunks(blob: bytes):
    """``(kind, payload)`` of each chunk of a PNG file's bytes, up to IEND."""
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= len(blob):
        length, kind = struct.unpack(">I4s", blob[pos : pos + 8])
        yield kind, blob[pos + 8 : pos + 8 + length]
        if kind == b"IEND":
            return
        pos += 12 + length


def _unfilter_png(data: np.ndarray, height: int, row_bytes: int, bpp: int) -> np.ndarray:
    """Undo PNG scanline filters; ``data`` is the inflated IDAT stream. Returns ``[H, row_bytes]`` uint8.

    Each reconstructed byte depends on its left, upper and upper-left neighbours, so pixels on the
    same anti-diagonal (row + column = const) are independent: iterating over the H + W diagonals,
    vectorised along each, keeps this fast in numpy for any filter mix.
    """
    rows = data.reshape(height, row_bytes + 1)
    filters = rows[:, 0].astype(np.int64)
    if filters.max(initial=0) > 4:
        raise ValueError(f"invalid PNG filter type {int(filters.max())}")
    width = row_bytes // bpp
    raw = rows[:, 1:].reshape(height, width, bpp).astype(np.int64)
    # One zero row above and one zero pixel to the left stand for the PNG's "outside" bytes.
    recon = np.zeros((height + 1, width + 1, bpp), dtype=np.int64)
    for diag in range(height + width - 1):
        r = np.arange(max(0, diag - width + 1), min(height, diag + 1))
        c = diag - r
        left, up, up_left = recon[r + 1, c], recon[r, c + 1], recon[r, c]
        p = left + up - up_left
        pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - up_left)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, up_left))
        predictors = np.stack([np.zeros_like(left), left, up, (left + up) // 2, paeth])
        pred = predictors[filters[r], np.arange(len(r))]
        recon[r + 1, c + 1] = (raw[r, c] + pred) & 0xFF
    return recon[1:, 1:].reshape(height, row_bytes).astype(np.uint8)


def _read_png16(path: Path, width: int, height: int, ctype: int, interlace: int) -> np.ndarray:
    """Decode a 16-bit RGB / RGBA / gray+alpha PNG to float32 ``[H, W, C]`` in [0, 1]."""
    if interlace:
        raise ValueError(f"{path}: interlaced 16-bit colour PNGs are not supported; re-save without interlacing")
    idat = [payload for kind, payload in _png_chunks(path.read_bytes()) if kind == b"IDAT"]
    channels = _PNG16_CHANNELS[ctype]
    bpp = 2 * channels
    row_bytes = width * bpp
    try:
        data = np.frombuffer(zlib.decompress(b"".join(idat)), dtype=np.uint8)
    except zlib.error as exc:
        raise ValueError(f"{path}: corrupt PNG image data ({exc})") from exc
    if data.size < height * (row_bytes + 1):
        raise ValueError(f"{path}: truncated PNG image data")
    pixels = _unfilter_png(data[: height * (row_bytes + 1)], height, row_bytes, bpp)
    values = pixels.reshape(height, width * channels, 2).view(">u2").reshape(height, width, channels)
    return values.astype(np.float32) / 65535.0


def _pil_to_array(img: Image.Image) -> np.ndarray:
    """Float32 ``[H, W, C]`` in [0, 1] with C in {1, 2, 3, 4} (gray, gray+alpha, RGB, RGBA)."""
    mode = img.mode
    if mode in _PIL_16BIT_MODES:
        # Pillow opens 16-bit grayscale PNGs as I;16 (or I); values are 0..65535.
        return (np.asarray(img, dtype=np.float64) / 65535.0).clip(0, 1).astype(np.float32)[..., None]
    if mode == "F":
        return np.asarray(img, dtype=np.float32).clip(0, 1)[..., None]
    has_alpha = mode in ("RGBA", "LA", "PA") or "transparency" in img.info
    if mode in ("L", "1") and not has_alpha:
        img = img.convert("L")
    elif mode in ("L", "LA", "1") and has_alpha:
        img = img.convert("LA")
    else:
        img = img.convert("RGBA" if has_alpha else "RGB")
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return arr[..., None] if arr.ndim == 2 else arr


def _image_file(path: PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    if not path.is_file():
        raise ValueError(f"not an image file (a folder?): {path}")
    return path


def _unreadable(path: Path, exc: Exception) -> ValueError:
    return ValueError(f"cannot read image {path}: {exc}")


# What Pillow fails with on files it cannot decode.
_PIL_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError)


def _load_array(path: PathLike) -> np.ndarray:
    path = _image_file(path)
    header = _png_header(path)
    if header is not None and header[2] == 16 and header[3] in _PNG16_CHANNELS:
        width, height, _, ctype, interlace = header
        return _read_png16(path, width, height, ctype, interlace)
    try:
        with Image.open(path) as img:
            img.load()
            return _pil_to_array(img)
    except _PIL_ERRORS as exc:
        raise _unreadable(path, exc) from exc


class ImageInfo(NamedTuple):
    """What an image file holds: its format (Pillow's name, e.g. ``"PNG"``), whether it is
    grayscale (with or without alpha) and the bits per sample ``read_image`` keeps (16 or 8)."""

    format: str
    gray: bool
    bit_depth: int


def image_info(path: PathLike) -> ImageInfo:
    """The ``ImageInfo`` of the image at ``path``, from its header (no pixels are decoded).

    Raises ``FileNotFoundError`` / ``ValueError`` naming ``path`` for missing or unreadable files.
    """
    path = _image_file(path)
    header = _png_header(path)
    if header is not None:
        _, _, depth, ctype, _ = header
        return ImageInfo("PNG", gray=ctype in _PNG_GRAY_TYPES, bit_depth=16 if depth == 16 else 8)
    try:
        with Image.open(path) as img:
            mode, image_format = img.mode, img.format
    except _PIL_ERRORS as exc:
        raise _unreadable(path, exc) from exc
    return ImageInfo(image_format, gray=mode in _PIL_GRAY_MODES, bit_depth=16 if mode in _PIL_16BIT_MODES else 8)


def image_size(path: PathLike) -> Tuple[int, int]:
    """``(height, width)`` of the image at ``path``, from its header (no pixels are decoded).

    Raises ``FileNotFoundError`` / ``ValueError`` naming ``path`` for missing or unreadable files.
    """
    path = _image_file(path)
    header = _png_header(path)
    if header is not None:
        return header[1], header[0]
    try:
        with Image.open(path) as img:
            width, height = img.size
    except _PIL_ERRORS as exc:
        raise _unreadable(path, exc) from exc
    return height, width


def _png_rgb8_rows(path: Path, rows: int) -> Optional[np.ndarray]:
    """The first ``rows`` rows of an 8-bit RGB, non-interlaced, opaque PNG as uint8 ``[rows, W, 3]``
    (only those rows are inflated and un-filtered, by Pillow's PNG decoder); None for other images."""
    header = _png_header(path)
    if header is None or header[2:] != (8, 2, 0):  # bit depth 8, colour type 2 (RGB), not interlaced
        return None
    blob = path.read_bytes()
    chunks = list(_png_chunks(blob))
    if any(kind == b"tRNS" for kind, _ in chunks):  # a transparent colour: read_image composites it
        return None
    data = b"".join(payload for kind, payload in chunks if kind == b"IDAT")
    try:
        img = Image.frombytes("RGB", (header[0], rows), data, "zip", "RGB")
    except _PIL_ERRORS as exc:
        raise _unreadable(path, exc) from exc
    return np.asarray(img)


def read_image_window(path: PathLike, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """``read_image(path)[:, top:bottom, left:right]`` (float32 ``[3, bottom - top, right - left]``).

    PNG rows form one compressed stream, so the rows below ``bottom`` need not be decoded: for 8-bit
    RGB PNGs only rows ``0:bottom`` are, and only the window is converted to float (equal values:
    ``k / 255`` in float32 either way). Other images are read whole and cropped.
    """
    path = _image_file(path)
    height, width = image_size(path)
    if not (0 <= top < bottom <= height and 0 <= left < right <= width):
        raise ValueError(f"{path}: window rows {top}:{bottom}, columns {left}:{right} is outside the "
                         f"{height}x{width} image")
    rows = _png_rgb8_rows(path, bottom)
    if rows is None:
        return read_image(path)[:, top:bottom, left:right].contiguous()
    window = torch.from_numpy(np.ascontiguousarray(rows[top:bottom, left:right].transpose(2, 0, 1)))
    return window.float().div_(255.0)


def _split(arr: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """``[H, W, C]`` -> RGB ``[H, W, 3]`` and alpha ``[H, W]`` (None when opaque by format)."""
    channels = arr.shape[2]
    if channels in (1, 2):
        rgb = np.repeat(arr[..., :1], 3, axis=2)
    else:
        rgb = arr[..., :3]
    alpha = arr[..., -1] if channels in (2, 4) else None
    return rgb, alpha


def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32))


def read_image(path: PathLike) -> torch.Tensor:
    """Read an image as float32 ``[3, H, W]`` RGB in [0, 1]; transparency composited on white.

    Raises ``FileNotFoundError`` / ``ValueError`` naming ``path`` for missing or unreadable files.
    """
    rgb, alpha = _split(_load_array(path))
    if alpha is not None:
        a = alpha[..., None]
        rgb = rgb * a + (1.0 - a)
    return _to_tensor(rgb)


def read_image_with_alpha(path: PathLike) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Read an image as ``(rgb [3, H, W], alpha [1, H, W] or None)``, float32 in [0, 1], not composited."""
    rgb, alpha = _split(_load_array(path))
    return _to_tensor(rgb), None if alpha is None else _to_tensor(alpha[..., None])


def _write_png16(path: Path, arr: np.ndarray) -> None:
    height, width, channels = arr.shape
    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = arr.astype(">u2").reshape(height, width * channels)
    raw = np.concatenate([np.zeros((height, 1), dtype=np.uint8), rows.view(np.uint8)], axis=1)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 16, ctype, 0, 0, 0)
    data = _PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + chunk(b"IEND", b"")
    path.write_bytes(data)


def _quantized(tensor: torch.Tensor, levels: int, dtype) -> np.ndarray:
    """``round(clamp(tensor, 0, 1) * levels)`` as an ``[H, W, C]`` array of ``dtype``, computed in
    float64 a band of rows at a time: a float64 copy of a whole large image would cost more memory
    than the upscale's own output (``dlsn upscale --max-memory`` counts it)."""
    channels, height, width = tensor.shape
    out = np.empty((height, width, channels), dtype=dtype)
    rows = max(1, 2 ** 20 // (width * channels))  # 8 MB of float64 per band
    for top in range(0, height, rows):
        band = tensor[:, top:top + rows].detach().to("cpu", torch.float64).clamp(0, 1).permute(1, 2, 0).numpy()
        out[top:top + rows] = np.round(band * float(levels))
    return out


def write_image(path: PathLike, tensor: torch.Tensor, bit_depth: int = 8) -> None:
    """Write ``tensor`` (``[C, H, W]``, C in {1, 2, 3, 4}: gray, gray+alpha, RGB, RGBA; values in [0, 1],
    clamped and rounded) to ``path``.

    ``bit_depth=16`` needs a ``.png`` path. The parent folder is created if missing. Failures are
    one-line errors ``cannot write PATH: reason`` (``ValueError`` for an unknown suffix, else
    ``dlsn.sr.utils.WriteError``, an ``OSError``).
    """
    path = Path(path)
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != 3 or tensor.shape[0] not in (1, 2, 3, 4):
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ValueError(f"write_image({path}): expected a tensor [C, H, W] with C in (1, 2, 3, 4), got {shape}")
    if bit_depth not in (8, 16):
        raise ValueError(f"write_image({path}): bit_depth must be 8 or 16, got {bit_depth}")
    suffix = path.suffix.lower()
    if bit_depth == 16 and suffix != ".png":
        raise ValueError(f"write_image({path}): 16-bit output needs a .png file name")
    if tensor.shape[0] in (2, 4) and suffix in NO_ALPHA_EXTENSIONS:
        raise ValueError(f"write_image({path}): {suffix} has no alpha channel; write PNG or drop alpha")
    make_parent(path)
    try:
        if bit_depth == 16:
            _write_png16(path, _quantized(tensor, 65535, np.uint16))
            return
        arr8 = _quantized(tensor, 255, np.uint8)
        img = Image.fromarray(arr8[..., 0] if arr8.shape[2] == 1 else arr8)
        kwargs = {"quality": 95} if suffix in (".jpg", ".jpeg") else {}
        try:
            img.save(path, **kwargs)
        except (KeyError, ValueError) as exc:  # Pillow: no writer for this suffix
            raise ValueError(f"cannot write {path}: no image format for the suffix {suffix!r} ({exc})") from None
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {os_error_reason(exc, path)}") from None
