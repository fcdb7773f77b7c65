"""Whole-image inference: tiling for bounded memory, x8 self-ensemble (DLSN+), a bicubic baseline.

Tiling: the LR image is cut into non-overlapping ``tile x tile`` cores; each core is run with up
to ``tile_overlap`` LR pixels of context on every side (clipped at the image border) and only the
core's part of the output is kept. For a model whose receptive field reaches at most
``tile_overlap`` LR pixels (convolutions, bicubic), tiled and untiled outputs are equal everywhere
(``tests/test_inference.py`` checks this). GLA attends globally, over hash buckets of the whole
image, so a DLSN's tiled output differs from its untiled output; the context margin keeps the
difference small near seams, and accuracy is best with large tiles. Peak activation memory is that
of one ``(tile + 2 * tile_overlap)``-sized input; ``dlsn.sr.tiling`` chooses tiles that fit the memory.

Borders: DLSN's convolutions pad with zeros, which the trained network renders as dark edges
(measured with the demo's model on Set5 bird: a mean error of 14.7/255 on the outermost HR rows and
columns against 2.9/255 inside). ``border_pad`` extends the LR image by replicating its edge pixels
before the network and crops the result, so the zero padding falls outside the kept pixels (same
model: 3.7/255), flat colours stay flat, and images smaller than the network's reach (down to 1x1)
keep their colour.
"""

from __future__ import annotations

import contextlib
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .imresize import imresize

__all__ = ["BicubicUpscaler", "upscale_tensor", "tiled_forward", "self_ensemble_forward", "count_tiles",
           "forward_stages", "counting_calls", "DEFAULT_BORDER_PAD"]

# LR pixels of edge replication around the image in `dlsn upscale` (measured on the demo model:
# 2 pixels remove most of the dark border, 4 and more all of it; 8 leaves room for deeper models).
DEFAULT_BORDER_PAD = 8


class BicubicUpscaler(nn.Module):
    """The bicubic baseline as a model: ``forward(lr) = imresize(lr, scale)`` (MATLAB-compatible)."""

    def __init__(self, scale: int, rgb_range: float = 1.0):
        super().__init__()
        self.scale = int(scale)
        self.rgb_range = rgb_range

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return imresize(lr, scale=self.scale)


def forward_stages(model) -> List[nn.Module]:
    """The modules one forward of ``model`` runs in turn, for a progress display: ``head``, the blocks
    of ``body`` (a composite block with a sequential ``body`` of its own, such as a DLSN group,
    counts each of its blocks) and ``tail``. Empty for models without that layout (bicubic, FSRCNN)."""
    body = getattr(model, "body", None)
    if not isinstance(body, nn.Sequential):
        return []
    stages = []
    for block in body:
        inner = getattr(block, "body", None)
        composite = isinstance(inner, nn.Sequential) and any(len(list(child.children())) for child in inner)
        stages.extend(inner if composite else [block])
    return [m for m in (getattr(model, "head", None), *stages, getattr(model, "tail", None)) if m is not None]


@contextlib.contextmanager
def counting_calls(modules, on_call: Callable[[], None]):
    """Within: ``on_call()`` after every forward of each of ``modules`` (forward hooks, removed on exit)."""
    handles = [module.register_forward_hook(lambda *_: on_call()) for module in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _tile_starts(length: int, tile: int):
    return list(range(0, length, tile))


def count_tiles(height: int, width: int, tile: int) -> int:
    """How many ``tile x tile`` cores cover a ``height x width`` image."""
    return len(_tile_starts(height, tile)) * len(_tile_starts(width, tile))


def tiled_forward(model: Callable, lr: torch.Tensor, scale: int, tile: int, tile_overlap: int = 16,
                  on_tile: Optional[Callable[[], None]] = None) -> torch.Tensor:
    """``model(lr)`` computed tile by tile (see module docstring). ``lr``: ``[N, C, h, w]``.

    ``on_tile`` is called after each tile (progress bars)."""
    if tile < 1 or tile_overlap < 0:
        raise ValueError(f"tile must be >= 1 and tile_overlap >= 0, got tile={tile}, tile_overlap={tile_overlap}")
    n, _, h, w = lr.shape
    out = None
    for y0 in _tile_starts(h, tile):
        for x0 in _tile_starts(w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            cy0, cx0 = max(y0 - tile_overlap, 0), max(x0 - tile_overlap, 0)
            cy1, cx1 = min(y1 + tile_overlap, h), min(x1 + tile_overlap, w)
            sr_tile = model(lr[:, :, cy0:cy1, cx0:cx1])
            expected = (n, (cy1 - cy0) * scale, (cx1 - cx0) * scale)
            if (sr_tile.shape[0], sr_tile.shape[2], sr_tile.shape[3]) != expected:
                raise RuntimeError(
                    f"model output {tuple(sr_tile.shape)} does not match scale {scale} for input tile "
                    f"{tuple(lr[:, :, cy0:cy1, cx0:cx1].shape)}; is --scale the model's scale?"
                )
            if out is None:
                out = sr_tile.new_empty(n, sr_tile.shape[1], h * scale, w * scale)
            oy, ox = (y0 - cy0) * scale, (x0 - cx0) * scale
            out[:, :, y0 * scale : y1 * scale, x0 * scale : x1 * scale] = sr_tile[
                :, :, oy : oy + (y1 - y0) * scale, ox : ox + (x1 - x0) * scale
            ]
            if on_tile is not None:
                on_tile()
    return out


# The dihedral group of the square: (transpose, flip H, flip W). Inverses undo in reverse order.
_TRANSFORMS = [(t, fh, fw) for t in (False, True) for fh in (False, True) for fw in (False, True)]


def _apply(x: torch.Tensor, transform) -> torch.Tensor:
    transpose, flip_h, flip_w = transform
    if transpose:
        x = x.transpose(-1, -2)
    dims = [d for d, f in ((-2, flip_h), (-1, flip_w)) if f]
    return x.flip(dims) if dims else x


def _invert(x: torch.Tensor, transform) -> torch.Tensor:
    transpose, flip_h, flip_w = transform
    dims = [d for d, f in ((-2, flip_h), (-1, flip_w)) if f]
    if dims:
        x = x.flip(dims)
    return x.transpose(-1, -2) if transpose else x


def self_ensemble_forward(forward: Callable, lr: torch.Tensor) -> torch.Tensor:
    """Mean of ``inverse_t(forward(t(lr)))`` over the 8 flips/transposes (accumulated in float32+)."""
    total = None
    for transform in _TRANSFORMS:
        sr = _invert(forward(_apply(lr, transform).contiguous()), transform)
        sr = sr.float() if sr.dtype in (torch.float16, torch.bfloat16) else sr
        total = sr.clone() if total is None else total.add_(sr)
    return total / len(_TRANSFORMS)


def _model_dtype(model) -> Optional[torch.dtype]:
    if isinstance(model, nn.Module):
        for p in model.parameters():
            return p.dtype
    return None


@torch.no_grad()
def upscale_tensor(
    model: Callable,
    lr: torch.Tensor,
    scale: int,
    tile: Optional[int] = None,
    tile_overlap: int = 16,
    self_ensemble: bool = False,
    border_pad: int = 0,
    on_tile: Optional[Callable[[], None]] = None,
) -> torch.Tensor:
    """Super-resolve ``lr`` ``[N, 3, h, w]`` (values in [0, rgb_range]) -> ``[N, 3, s*h, s*w]``.

    ``model`` is any callable (an ``nn.Module`` is put in eval mode for the call and restored);
    the input is cast to the model's parameter dtype and the output returned in that dtype
    (float32 for a float16/bfloat16 model with ``self_ensemble``, whose mean is accumulated in
    float32), unclamped. ``tile`` bounds memory (``None``: whole image; tiles cover the padded
    image); ``self_ensemble`` averages the 8 flips/transposes; ``border_pad`` LR pixels of edge
    replication are added around the image and their output cropped (module docstring; 0, the
    default, is the published evaluation protocol); ``on_tile`` is called after each tile.
    """
    if not isinstance(lr, torch.Tensor) or lr.dim() != 4:
        raise ValueError(f"upscale_tensor: expected lr as [N, C, h, w], got {getattr(lr, 'shape', type(lr))}")
    if border_pad < 0:
        raise ValueError(f"border_pad must be >= 0, got {border_pad}")
    dtype = _model_dtype(model)
    if dtype is not None and lr.dtype != dtype:
        lr = lr.to(dtype)
    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    try:
        def forward(x):
            if tile is not None:
                return tiled_forward(model, x, scale, tile, tile_overlap, on_tile)
            sr = model(x)
            if sr.shape[-2:] != (x.shape[-2] * scale, x.shape[-1] * scale):
                raise RuntimeError(
                    f"model output {tuple(sr.shape)} does not match scale {scale} for input {tuple(x.shape)}; "
                    f"is --scale the model's scale?"
                )
            return sr

        if border_pad:
            lr = F.pad(lr, (border_pad,) * 4, mode="replicate")
        sr = self_ensemble_forward(forward, lr) if self_ensemble else forward(lr)
        if border_pad:
            crop = border_pad * scale
            sr = sr[..., crop:-crop, crop:-crop]
        return sr
    finally:
        if was_training:
            model.train()
