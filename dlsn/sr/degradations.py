"""LR images from HR images, as the SISR literature makes them (RDN / RCAN ``Prepare_TrainData``).

* **BI**: ``imresize(HR, 1/s, 'bicubic')`` (MATLAB-compatible, antialiased).
* **BD**: ``imfilter(HR, fspecial('gaussian', 7, 1.6), 'replicate')`` then ``imresize(., 1/s,
  'nearest')``, i.e. every s-th pixel starting at offset ``s // 2`` (RDN's / RCAN's BD; SRMD's
  direct downsampler). This reproduces the published bicubic BD baseline (Set5 x3: 28.78 / 0.8308;
  we get 28.79 / 0.8320), while blurring then *bicubic* downscaling, as some re-implementations
  do, gives 28.33 dB and is not comparable.
* **DN**: BI, then additive Gaussian noise ``sigma * randn`` on the 0-255 scale (RDN's
  ``imresize_DN.m``, sigma 30 in the papers), drawn from the given ``torch.Generator``.

Every function takes ``hr`` as a float tensor ``[..., 3, H, W]`` in [0, 1] whose H and W are
multiples of ``scale`` (crop first, see ``crop_to_scale``) and returns the LR image in [0, 1],
**quantised to 8 bit** (``quantize=True``, the default) as an LR PNG saved by MATLAB would be.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .imresize import imresize

__all__ = ["DEGRADATIONS", "crop_to_scale", "bicubic_down", "blur_down", "noisy_down", "add_noise", "degrade",
           "gaussian_kernel", "noise_generator", "context_margin", "patch_window"]

DEGRADATIONS = ("bi", "bd", "dn")
BD_KERNEL_SIZE = 7
BD_SIGMA = 1.6
DN_NOISE_LEVEL = 30.0


def crop_to_scale(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Crop the bottom/right of ``hr`` ``[..., H, W]`` so that H and W are multiples of ``scale``."""
    h, w = hr.shape[-2:]
    if h < scale or w < scale:
        raise ValueError(f"image of {h}x{w} pixels is smaller than the scale factor {scale}")
    return hr[..., : h - h % scale, : w - w % scale]


def _check(hr: torch.Tensor, scale: int, name: str) -> None:
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"{name}: scale must be a positive int, got {scale!r}")
    if hr.dim() < 3 or hr.shape[-3] != 3 or not hr.is_floating_point():
        raise ValueError(f"{name}: expected a float RGB tensor [..., 3, H, W], got {tuple(hr.shape)} {hr.dtype}")
    h, w = hr.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"{name}: HR size {h}x{w} is not a multiple of the scale {scale}; crop_to_scale first")


def _finish(lr: torch.Tensor, quantize: bool) -> torch.Tensor:
    lr = lr.clamp(0, 1)
    return lr.mul(255).round().div(255) if quantize else lr


def _gaussian_taps(size: int, sigma: float) -> torch.Tensor:
    """The 1-D factor of ``gaussian_kernel``: ``[size]`` float64 summing to 1."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def gaussian_kernel(size: int = BD_KERNEL_SIZE, sigma: float = BD_SIGMA) -> torch.Tensor:
    """MATLAB ``fspecial('gaussian', size, sigma)``: ``[size, size]`` float64, sums to 1."""
    g = _gaussian_taps(size, sigma)
    kernel = torch.outer(g, g)
    return kernel / kernel.sum()


def bicubic_down(hr: torch.Tensor, scale: int, quantize: bool = True) -> torch.Tensor:
    """BI degradation."""
    _check(hr, scale, "bicubic_down")
    return _finish(imresize(hr, scale=1.0 / scale), quantize)


def blur_down(hr: torch.Tensor, scale: int, quantize: bool = True, sigma: float = BD_SIGMA) -> torch.Tensor:
    """BD degradation: 7x7 Gaussian blur (replicate borders), then MATLAB 'nearest' 1/s decimation.

    The Gaussian is separable and only every s-th blurred pixel is kept, so the blur is computed as
    two 7-tap passes at the kept rows, then the kept columns (float64; equal to the 2-D convolution
    to rounding, 1e-16), instead of a full 7x7 convolution of the whole image (measured on one core
    for a 2040x1356 image: 0.19 CPU s against 2.9 s).
    """
    _check(hr, scale, "blur_down")
    taps = _gaussian_taps(BD_KERNEL_SIZE, sigma).tolist()
    pad = BD_KERNEL_SIZE // 2
    h, w = hr.shape[-2:]
    x = hr.to(torch.float64).reshape(-1, 1, h, w)
    x = F.pad(x, (pad, pad, pad, pad), mode="replicate").reshape(*hr.shape[:-2], h + 2 * pad, w + 2 * pad)
    # imresize(., 1/s, 'nearest') picks input pixel floor(s*x + 1 - s/2) (1-based) for output x, i.e.
    # 0-based pixels s//2, s//2 + s, ...; in the padded image tap k of output i sits at s//2 + s*i + k.
    offset = scale // 2
    rows = sum(t * x[..., offset + k:offset + k + h - scale + 1:scale, :] for k, t in enumerate(taps))
    blurred = sum(t * rows[..., offset + k:offset + k + w - scale + 1:scale] for k, t in enumerate(taps))
    return _finish(blurred, quantize).to(hr.dtype)


def add_noise(
    lr: torch.Tensor,
    noise_level: float = DN_NOISE_LEVEL,
    generator: Optional[torch.Generator] = None,
    quantize: bool = True,
) -> torch.Tensor:
    """The noise of DN: ``lr`` (float, in [0, 1], any shape) plus Gaussian noise of std ``noise_level``
    on the 0-255 scale, drawn in float64 from ``generator`` (on ``lr``'s device); ``lr``'s dtype."""
    if noise_level < 0:
        raise ValueError(f"noise_level must be >= 0, got {noise_level}")
    noise = torch.randn(lr.shape, generator=generator, dtype=torch.float64, device=lr.device)
    return _finish(lr.to(torch.float64) + noise * (noise_level / 255.0), quantize).to(lr.dtype)


def noisy_down(
    hr: torch.Tensor,
    scale: int,
    noise_level: float = DN_NOISE_LEVEL,
    generator: Optional[torch.Generator] = None,
    quantize: bool = True,
) -> torch.Tensor:
    """DN degradation: bicubic downscale, then Gaussian noise of std ``noise_level`` (0-255 scale).

    The noise comes from ``generator`` (on ``hr``'s device) so results never depend on the global RNG.
    """
    _check(hr, scale, "noisy_down")
    if noise_level < 0:
        raise ValueError(f"noisy_down: noise_level must be >= 0, got {noise_level}")
    return add_noise(bicubic_down(hr, scale, quantize=quantize), noise_level, generator, quantize)


def noise_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The CPU generator of image ``index``'s DN noise in ``epoch`` of a run seeded ``seed``: one
    independent stream per key, whatever the order or the process that reads the image."""
    key = (seed * 1_000_003 + epoch) * 1_000_003 + index
    return torch.Generator().manual_seed(key % (2**63))


def context_margin(kind: str, scale: int) -> int:
    """HR pixels beyond an LR patch's HR block that degrading it reads, rounded up to a multiple of ``scale``.

    BI and DN: MATLAB's antialiased cubic at 1/s has a support of 4s HR pixels centred on the LR
    pixel, i.e. it reaches less than 2s pixels beyond the block. BD: the 7x7 blur reaches 3 pixels
    from the kept pixel, which lies inside the block.
    """
    kind = kind.lower()
    if kind not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {kind!r}; expected one of {DEGRADATIONS}")
    reach = BD_KERNEL_SIZE // 2 if kind == "bd" else 2 * scale
    return scale * -(-reach // scale)


def patch_window(kind: str, scale: int, hr_size, top: int, left: int, size: int):
    """The HR crop whose degradation holds an LR patch exactly as degrading the whole image gives it.

    The LR patch is rows ``top:top + size`` and columns ``left:left + size`` of the LR image of an
    HR image of ``hr_size`` = ``(H, W)`` (multiples of ``scale``). The crop reaches
    ``context_margin(kind, scale)`` HR pixels beyond the patch's HR block, starts and ends on the
    scale grid, and is clipped to the image: at a border the crop contains the border itself, so the
    degradation pads it there as it pads the whole image. Degrading the crop then gives the patch's
    pixels to float64 rounding (BI, BD; the noise of DN is drawn separately).

    Returns:
        ``((y0, y1, x0, x1), (oy, ox))``: the HR crop ``[y0:y1, x0:x1]`` and the patch's top-left
        corner in the crop's LR image.
    """
    height, width = hr_size
    if height % scale or width % scale:
        raise ValueError(f"patch_window: HR size {height}x{width} is not a multiple of the scale {scale}")
    if top < 0 or left < 0 or (top + size) * scale > height or (left + size) * scale > width:
        raise ValueError(f"patch_window: LR patch {size}x{size} at ({top}, {left}) lies outside the LR image "
                         f"{height // scale}x{width // scale}")
    margin = context_margin(kind, scale)
    y0, x0 = max(0, top * scale - margin), max(0, left * scale - margin)
    y1, x1 = min(height, (top + size) * scale + margin), min(width, (left + size) * scale + margin)
    return (y0, y1, x0, x1), (top - y0 // scale, left - x0 // scale)


def degrade(
    hr: torch.Tensor,
    scale: int,
    kind: str = "bi",
    noise_level: float = DN_NOISE_LEVEL,
    generator: Optional[torch.Generator] = None,
    quantize: bool = True,
) -> torch.Tensor:
    """Dispatch on ``kind`` in ``("bi", "bd", "dn")``; ``noise_level``/``generator`` only for DN."""
    kind = kind.lower()
    if kind == "bi":
        return bicubic_down(hr, scale, quantize)
    if kind == "bd":
        return blur_down(hr, scale, quantize)
    if kind == "dn":
        return noisy_down(hr, scale, noise_level, generator, quantize)
    raise ValueError(f"unknown degradation {kind!r}; expected one of {DEGRADATIONS}")
