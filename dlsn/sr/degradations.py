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

__all__ = ["DEGRADATIONS", "crop_to_scale", "bicubic_down", "blur_down", "noisy_down", "degrade", "gaussian_kernel"]

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


def gaussian_kernel(size: int = BD_KERNEL_SIZE, sigma: float = BD_SIGMA) -> torch.Tensor:
    """MATLAB ``fspecial('gaussian', size, sigma)``: ``[size, size]`` float64, sums to 1."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel = torch.outer(g, g)
    return kernel / kernel.sum()


def bicubic_down(hr: torch.Tensor, scale: int, quantize: bool = True) -> torch.Tensor:
    """BI degradation."""
    _check(hr, scale, "bicubic_down")
    return _finish(imresize(hr, scale=1.0 / scale), quantize)


def blur_down(hr: torch.Tensor, scale: int, quantize: bool = True, sigma: float = BD_SIGMA) -> torch.Tensor:
    """BD degradation: 7x7 Gaussian blur (replicate borders), then MATLAB 'nearest' 1/s decimation."""
    _check(hr, scale, "blur_down")
    kernel = gaussian_kernel(BD_KERNEL_SIZE, sigma).to(hr.device)
    pad = BD_KERNEL_SIZE // 2
    x = hr.to(torch.float64).reshape(-1, 1, *hr.shape[-2:])
    blurred = F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="replicate"), kernel.view(1, 1, *kernel.shape))
    blurred = blurred.reshape(hr.shape)
    # imresize(., 1/s, 'nearest') picks input pixel floor(s*x + 1 - s/2) (1-based) for output x.
    offset = scale // 2
    return _finish(blurred[..., offset::scale, offset::scale], quantize).to(hr.dtype)


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
    lr = bicubic_down(hr, scale, quantize=quantize)
    noise = torch.randn(lr.shape, generator=generator, dtype=torch.float64, device=lr.device)
    return _finish(lr.to(torch.float64) + noise * (noise_level / 255.0), quantize).to(hr.dtype)


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
