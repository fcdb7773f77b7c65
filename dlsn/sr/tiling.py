"""Memory-aware tiling for inference: how much memory one forward needs, how much there is, and the
largest tiles that fit.

The estimate (``forward_bytes``) counts the tensors alive at the two peaks of a no-grad DLSN forward,
per LR pixel of the input:

* inside a GLA layer: the feature maps held for the residuals (network input, group input, layer
  input: ``3C``), the embeddings (``q`` c, ``v`` C, ``learned`` l) and the attention's working set. The
  reference backend materialises, per hash round, the query chunk (c), the 3-chunk key/value/learned
  windows (``3c + 3C + 3l``), the scores and two same-sized temporaries of the softmax (``9l``) and
  its output (C): ``h (4c + 4C + 12l)``. The fused Triton backend keeps only the per-round outputs and
  their statistics (``h (C + 4)``). Hashing projects in float32 onto ``b`` buckets (``13 h b`` bytes
  per pixel: scores, mask, indices), freed before the attention.
* in the upsampler: the body output (C) and, per x2 stage, a convolution output and its
  pixel-shuffled copy (x2: ``9C``; x3: ``19C``; x4: ``37C`` counted at LR resolution).

plus the input and the HR output. Checked against the peak resident memory measured on CPU
(``tests/test_tiling.py``: within a factor of 1.6 either way, for the demo-sized and a larger model;
the README lists measured peaks). Models other than ``dlsn.DLSN`` have no estimate (``None``): they
run on the whole image unless a tile size is given.

The budget a plan fits (``plan_tiles``) bounds the whole process at its peak: what it holds before
the run (``process_memory``: Python, PyTorch, the model), the image buffers (``IMAGE_COPIES``) and
one forward. By default it is what the process holds plus ``MEMORY_MARGIN`` of the available memory:
on CPU ``MemAvailable`` from ``/proc/meminfo`` (and the cgroup limit, when lower), on CUDA the free
device memory plus what PyTorch's allocator holds unused. On CPU, ``unmap_freed_memory`` keeps
freed buffers from piling up between tiles. Besides memory, ``DEFAULT_MAX_WHOLE`` and
``DEFAULT_MAX_TILE`` keep runs at the sizes measured fastest.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..models import DLSN

__all__ = ["forward_bytes", "available_memory", "process_memory", "parse_size", "format_size", "plan_tiles",
           "TilePlan", "unmap_freed_memory", "MIN_TILE", "MEMORY_MARGIN", "DEFAULT_MAX_TILE", "DEFAULT_MAX_WHOLE",
           "IMAGE_COPIES"]

MIN_TILE = 16
MEMORY_MARGIN = 0.5  # by default use at most this share of the available memory: never most of the machine
# The sizes `dlsn upscale --tile auto` keeps to (LR pixels on a side), from the time against the tile
# size (`python bench/upscale_tiles.py`: the demo's network; tables in README). The time per pixel
# a forward computes was flat (39-42 us) for forwards from about 440 to 1100 pixels on a side, and
# higher for tiles of 384 (1.1x) and 256 (1.25x) and for a whole 1516x1016 image (1.15x); tiles add
# their overlap on top.
# So an image runs whole up to DEFAULT_MAX_WHOLE on a side, beyond that in tiles of at most
# DEFAULT_MAX_TILE, which evened out over such an image are never smaller than 512.
DEFAULT_MAX_TILE = 768
DEFAULT_MAX_WHOLE = 1024
# Image buffers alive during a forward, in float32 copies of the LR and of the HR image: the decoded
# input, its scaled copy on the device and the border-padded one; the HR output (the tiles' canvas).
# The self-ensemble adds its running sum.
IMAGE_COPIES = (3, 1)
_HASH_BYTES_PER_SCORE = 4 + 1 + 8  # float32 projection, its argmax mask, int64 candidate indices


def _element_size(dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def _dlsn_shape(model):
    if not isinstance(model, DLSN):
        return None
    gla = model.gla_layers()[0] if model.gla_layers() else None
    n_feats = model.head[0].out_channels
    return n_feats, gla, model.scale


def forward_bytes(model, height: int, width: int, batch: int = 1, dtype=None, device="cpu") -> Optional[int]:
    """Estimated peak bytes allocated by one no-grad forward of ``model`` on ``[batch, 3, height, width]``.

    ``dtype``/``device``: those of the run (default: the model's parameters, CPU). ``None`` for models
    without an estimate (anything but ``dlsn.DLSN``).
    """
    shape = _dlsn_shape(model)
    if shape is None:
        return None
    n_feats, gla, scale = shape
    if dtype is None:
        dtype = next(model.parameters()).dtype
    size = _element_size(dtype)
    pixels = height * width
    feats = n_feats
    gla_stage = 0
    hash_stage = 0
    if gla is not None:
        c, l, h = gla.channels // gla.reduction, gla.chunk_size, gla.n_hashes
        backend = gla.resolve_backend(torch.empty(0, device=device))
        attention = h * (4 * c + 4 * feats + 12 * l) if backend == "reference" else h * (feats + 4)
        held = 3 * feats + c + feats + l
        gla_stage = (held + attention) * size
        buckets = gla.n_buckets(pixels)
        hash_stage = (held + c) * size + h * buckets * _HASH_BYTES_PER_SCORE
    stages = {2: 9, 3: 19, 4: 37}
    upsampler = stages.get(scale, 37) * feats * size
    per_pixel = max(gla_stage, hash_stage, upsampler) + (3 + 3 * scale * scale) * size
    return int(batch * pixels * per_pixel)


def _meminfo_available() -> Optional[int]:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    match = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def _cgroup_available() -> Optional[int]:
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
    except OSError:
        return None
    if limit == "max":
        return None
    return max(int(limit) - int(used), 0)


def available_memory(device) -> Optional[int]:
    """Bytes a forward on ``device`` may still allocate (before the margin); ``None`` if unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    if device.type == "cpu":
        found = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
        if not found and hasattr(os, "sysconf"):
            try:
                found = [os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")]
            except (ValueError, OSError):
                pass
        return min(found) if found else None
    return None


def process_memory(device) -> Optional[int]:
    """Bytes this process holds now where a run on ``device`` allocates: on CPU its resident memory
    (``/proc/self/statm``), on CUDA what PyTorch has allocated on the device; ``None`` if unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
_MMAP_THRESHOLD = 128 * 1024  # glibc's default starting value


@functools.lru_cache(maxsize=1)
def unmap_freed_memory() -> bool:
    """Make freed buffers leave the process at once (CPU, glibc; once per process): allocations of
    128 KiB and more are mapped on their own and unmapped when freed, at glibc's starting threshold,
    which glibc otherwise raises after each large free up to 32 MiB, serving later buffers from a heap
    that does not shrink. Measured with `dlsn upscale --max-memory`: without this, each tile started
    higher than the last and the process peaked 1.2x above the budget; with it, within it, at the same
    CPU time. True when set."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD))
    except (OSError, AttributeError):  # not glibc
        return False


_UNITS = {"": 1, "b": 1, "k": 2 ** 10, "kb": 10 ** 3, "kib": 2 ** 10, "m": 2 ** 20, "mb": 10 ** 6, "mib": 2 ** 20,
          "g": 2 ** 30, "gb": 10 ** 9, "gib": 2 ** 30, "t": 2 ** 40, "tb": 10 ** 12, "tib": 2 ** 40}


def parse_size(text: str) -> int:
    """Bytes in ``text``: a number with an optional unit, e.g. ``"512M"``, ``"1.5GB"``, ``"2GiB"``
    (K/M/G/T and KiB/MiB/GiB/TiB are powers of 1024, KB/MB/GB/TB powers of 1000)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"--max-memory {text!r}: expected a size such as 512M, 4G, 1.5GB or 8GiB")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ValueError(f"--max-memory {text!r}: the size must be positive")
    return value


def format_size(n: int) -> str:
    for unit, factor in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{n} B"


@dataclass
class TilePlan:
    """``tile``: LR tile size (``None``: whole image); ``count``: tiles per image; ``estimate``: bytes
    of the planned run; ``budget``: bytes it had to fit in; ``by_size``: tiled because of
    ``max_tile`` or ``max_whole`` although the whole image would fit the budget."""

    tile: Optional[int]
    count: int
    estimate: int
    budget: int
    by_size: bool = False


def _run_bytes(model, tile_h, tile_w, height, width, batch, dtype, device, scale, ensemble) -> int:
    """Bytes a run allocates beyond what the process holds before it: one forward on a
    `tile_h x tile_w` input, and the image buffers alive meanwhile (`IMAGE_COPIES`)."""
    forward = forward_bytes(model, tile_h, tile_w, batch, dtype, device)
    lr_copies, hr_copies = IMAGE_COPIES
    images = batch * height * width * 3 * (lr_copies + scale * scale * (hr_copies + (1 if ensemble else 0))) * 4
    return forward + images


def plan_tiles(model, height: int, width: int, budget: int, overlap: int = 16, batch: int = 1, dtype=None,
               device="cpu", self_ensemble: bool = False, held: int = 0,
               max_tile: Optional[int] = None, max_whole: Optional[int] = None) -> Optional[TilePlan]:
    """The whole image when its run fits in ``budget`` bytes, else the largest square LR tiles
    (with ``overlap`` pixels of context on each side) that fit, evened out over the image.

    ``held``: bytes the process holds already (interpreter, PyTorch, model: ``process_memory``),
    counted against ``budget``, so that the budget bounds the whole process. ``max_whole``: the whole
    image only when neither side exceeds it, else tiles of at most ``max_tile`` (default: ``max_whole``)
    (``DEFAULT_MAX_WHOLE``, ``DEFAULT_MAX_TILE``: what measured fastest).
    ``None`` when ``model`` has no estimate. Raises ``ValueError`` when not even ``MIN_TILE`` tiles fit.
    """
    if forward_bytes(model, 1, 1, batch, dtype, device) is None:
        return None
    scale = model.scale

    def cost(tile):
        return held + _run_bytes(model, min(tile + 2 * overlap, height), min(tile + 2 * overlap, width), height,
                                 width, batch, dtype, device, scale, self_ensemble)

    whole = held + _run_bytes(model, height, width, height, width, batch, dtype, device, scale, self_ensemble)
    max_tile = max_whole if max_tile is None else max_tile
    by_size = max_whole is not None and max(height, width) > max_whole
    if whole <= budget and not by_size:
        return TilePlan(None, 1, whole, budget)
    smallest = cost(MIN_TILE)
    if smallest > budget:
        already = f"the {format_size(held)} the process holds already (Python, PyTorch, the model) plus " \
            if held else ""
        raise ValueError(
            f"a memory budget of {format_size(budget)} is too small: {already}even {MIN_TILE}x{MIN_TILE} tiles "
            f"(+{overlap} pixels of overlap) need about {format_size(smallest)}, the whole "
            f"{width}x{height} image about {format_size(whole)}; allow more with --max-memory")
    lo, hi = MIN_TILE, max(height, width) if max_tile is None else max(MIN_TILE, max_tile)
    while lo < hi:  # largest tile whose cost fits; cost grows with the tile
        mid = (lo + hi + 1) // 2
        if cost(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    rows, cols = math.ceil(height / lo), math.ceil(width / lo)
    tile = max(math.ceil(height / rows), math.ceil(width / cols))
    return TilePlan(tile, rows * cols, cost(tile), budget, by_size=by_size and whole <= budget)
