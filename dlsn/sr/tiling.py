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

Available memory: on CPU ``MemAvailable`` from ``/proc/meminfo`` (and the cgroup limit, when lower),
on CUDA the free device memory plus what PyTorch's allocator holds unused; a margin
(``MEMORY_MARGIN``) is kept free.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..models import DLSN

__all__ = ["forward_bytes", "available_memory", "parse_size", "format_size", "plan_tiles", "TilePlan",
           "MIN_TILE", "MEMORY_MARGIN"]

MIN_TILE = 16
MEMORY_MARGIN = 0.75  # use at most this share of the available memory
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
    of the planned run; ``budget``: bytes it had to fit in."""

    tile: Optional[int]
    count: int
    estimate: int
    budget: int


def _run_bytes(model, tile_h, tile_w, height, width, batch, dtype, device, scale, ensemble) -> int:
    forward = forward_bytes(model, tile_h, tile_w, batch, dtype, device)
    # The whole LR input and HR output stay allocated while tiles run; the self-ensemble adds its sum.
    images = batch * height * width * 3 * (1 + scale * scale * (2 if ensemble else 1)) * 4
    return forward + images


def plan_tiles(model, height: int, width: int, budget: int, overlap: int = 16, batch: int = 1, dtype=None,
               device="cpu", self_ensemble: bool = False) -> Optional[TilePlan]:
    """The whole image when its forward fits in ``budget`` bytes, else the largest square LR tiles
    (with ``overlap`` pixels of context on each side) that fit, evened out over the image.

    ``None`` when ``model`` has no estimate. Raises ``ValueError`` when not even ``MIN_TILE`` tiles fit.
    """
    if forward_bytes(model, 1, 1, batch, dtype, device) is None:
        return None
    scale = model.scale

    def cost(tile):
        return _run_bytes(model, min(tile + 2 * overlap, height), min(tile + 2 * overlap, width), height, width,
                          batch, dtype, device, scale, self_ensemble)

    whole = _run_bytes(model, height, width, height, width, batch, dtype, device, scale, self_ensemble)
    if whole <= budget:
        return TilePlan(None, 1, whole, budget)
    smallest = cost(MIN_TILE)
    if smallest > budget:
        raise ValueError(
            f"a memory budget of {format_size(budget)} is too small: even {MIN_TILE}x{MIN_TILE} tiles "
            f"(+{overlap} pixels of overlap) need about {format_size(smallest)}, the whole "
            f"{width}x{height} image about {format_size(whole)}; allow more with --max-memory")
    lo, hi = MIN_TILE, max(height, width)
    while lo < hi:  # largest tile whose cost fits; cost grows with the tile
        mid = (lo + hi + 1) // 2
        if cost(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    rows, cols = math.ceil(height / lo), math.ceil(width / lo)
    tile = max(math.ceil(height / rows), math.ceil(width / cols))
    return TilePlan(tile, rows * cols, cost(tile), budget)
