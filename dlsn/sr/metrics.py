"""PSNR and SSIM as the SISR literature reports them (docs/gla.md §7).

Conventions, following the MATLAB scripts that produced the published tables (SRCNN's and RCAN's
``Evaluate_PSNR_SSIM.m``, which call ``rgb2ycbcr``, ``csnr`` and Wang et al.'s ``ssim_index``):

* Both images are first **quantised to 8 bit**: ``round(clamp(x * 255 / rgb_range, 0, 255))``.
  The ground truth is an 8-bit PNG already; the SR output is what would be saved to disk
  (EDSR's ``quantize``). Scores of unquantised outputs are slightly higher and not comparable.
* The **Y channel** of ITU-R BT.601 YCbCr, ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` for RGB
  in [0, 1] (equivalently ``16 + (65.481 R + 128.553 G + 24.966 B) / 255`` for RGB on the 0-255
  scale, the form docs/gla.md §7 quotes), kept as a float on the 0-255 scale (MATLAB's ``rgb2ycbcr``
  on doubles, times 255; not rounded). ``y_channel=False`` scores all three RGB channels instead.
* **Borders** of ``scale`` pixels are shaved on every side before scoring.
* PSNR ``= 10 log10(255^2 / MSE)`` over the shaved Y image, in float64.
* SSIM: 11x11 Gaussian window, sigma 1.5, normalised; ``K1 = 0.01, K2 = 0.03, L = 255``; only
  positions where the window fits ('valid' filtering); the mean of the SSIM map. On RGB inputs the
  per-channel maps are averaged. No automatic downsampling (that is ``ssim.m``, not ``ssim_index``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["rgb_to_y", "quantize", "calc_psnr", "calc_ssim"]

_Y_COEFFS = (65.481, 128.553, 24.966)


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """Luma of BT.601 YCbCr: ``[..., 3, H, W]`` RGB in [0, 1] -> ``[..., H, W]`` Y in [16, 235]."""
    if img.dim() < 3 or img.shape[-3] != 3:
        raise ValueError(f"rgb_to_y: expected an RGB tensor [..., 3, H, W], got shape {tuple(img.shape)}")
    r, g, b = img.unbind(dim=-3)
    return 16.0 + _Y_COEFFS[0] * r + _Y_COEFFS[1] * g + _Y_COEFFS[2] * b


def quantize(img: torch.Tensor, rgb_range: float = 1.0) -> torch.Tensor:
    """Round ``img`` (values in [0, rgb_range]) to 8-bit levels; returns float64 on the 0-255 scale."""
    return (img.to(torch.float64) * (255.0 / rgb_range)).clamp(0, 255).round()


def _prepare(sr: torch.Tensor, hr: torch.Tensor, scale: int, rgb_range: float, y_channel: bool, name: str):
    if sr.shape != hr.shape:
        raise ValueError(f"{name}: sr and hr shapes differ: {tuple(sr.shape)} vs {tuple(hr.shape)}")
    if sr.dim() not in (3, 4) or sr.shape[-3] != 3:
        raise ValueError(f"{name}: expected RGB images [3, H, W] or [N, 3, H, W], got {tuple(sr.shape)}")
    if scale < 0:
        raise ValueError(f"{name}: scale (border to shave) must be >= 0, got {scale}")
    h, w = sr.shape[-2:]
    if h <= 2 * scale or w <= 2 * scale:
        raise ValueError(f"{name}: image {h}x{w} is too small to shave a border of {scale} pixels")
    # Both on the 0-255 scale as float64; Y uses RGB in [0, 1].
    sr8, hr8 = quantize(sr, rgb_range), quantize(hr, rgb_range)
    if y_channel:
        sr8, hr8 = rgb_to_y(sr8 / 255.0).unsqueeze(-3), rgb_to_y(hr8 / 255.0).unsqueeze(-3)
    if scale > 0:
        sr8 = sr8[..., scale:-scale, scale:-scale]
        hr8 = hr8[..., scale:-scale, scale:-scale]
    return sr8, hr8


def calc_psnr(sr: torch.Tensor, hr: torch.Tensor, scale: int, rgb_range: float = 1.0, y_channel: bool = True) -> float:
    """PSNR in dB of ``sr`` against ``hr`` (``[3, H, W]`` or ``[N, 3, H, W]``, values in [0, rgb_range]).

    A batch is scored as one image set (MSE over all pixels). Identical images give ``inf``.
    """
    sr8, hr8 = _prepare(sr, hr, scale, rgb_range, y_channel, "calc_psnr")
    mse = (sr8 - hr8).pow(2).mean().item()
    if mse == 0:
        return math.inf
    return 10.0 * math.log10(255.0**2 / mse)


def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    # MATLAB's fspecial('gaussian', 11, 1.5) is the outer product of this normalised 1-D kernel.
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def calc_ssim(sr: torch.Tensor, hr: torch.Tensor, scale: int, rgb_range: float = 1.0, y_channel: bool = True) -> float:
    """Mean SSIM of ``sr`` against ``hr`` (``[3, H, W]`` or ``[N, 3, H, W]``, values in [0, rgb_range]).

    A batch gives the mean over all images' SSIM maps. Needs at least 11x11 pixels after shaving.
    """
    sr8, hr8 = _prepare(sr, hr, scale, rgb_range, y_channel, "calc_ssim")
    if sr8.shape[-1] < 11 or sr8.shape[-2] < 11:
        raise ValueError(f"calc_ssim: image is {tuple(sr8.shape[-2:])} after shaving; SSIM needs at least 11x11")
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    x = sr8.reshape(-1, 1, *sr8.shape[-2:])
    y = hr8.reshape(-1, 1, *hr8.shape[-2:])
    g = _gaussian_1d().to(x.device)
    # The five local statistics in one separable 'valid' filtering pass (5x cheaper than 11x11).
    stats = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    n = stats.shape[1]
    stats = F.conv2d(stats, g.view(1, 1, 1, 11).expand(n, 1, 1, 11), groups=n)
    stats = F.conv2d(stats, g.view(1, 1, 11, 1).expand(n, 1, 11, 1), groups=n)
    mu_x, mu_y, e_xx, e_yy, e_xy = stats.unbind(dim=1)
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    sigma_xx, sigma_yy, sigma_xy = e_xx - mu_xx, e_yy - mu_yy, e_xy - mu_xy
    ssim_map = ((2 * mu_xy + c1) * (2 * sigma_xy + c2)) / ((mu_xx + mu_yy + c1) * (sigma_xx + sigma_yy + c2))
    return ssim_map.mean().item()
