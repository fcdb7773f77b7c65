import math

import numpy as np
import pytest
import torch

from dlsn.sr.degradations import bicubic_down, blur_down, crop_to_scale
from dlsn.sr.imageio import read_image
from dlsn.sr.imresize import imresize
from dlsn.sr.metrics import calc_psnr, calc_ssim, quantize, rgb_to_y

# Published bicubic baselines on Set5 (RCAN / RDN tables).
PUBLISHED_BI = {2: (33.66, 0.9299), 3: (30.39, 0.8682), 4: (28.42, 0.8104)}
PUBLISHED_BD_X3 = (28.78, 0.8308)


def test_rgb_to_y_matlab_coefficients():
    rgb = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]],
                       dtype=torch.float64).T.reshape(3, 1, 5)
    y = rgb_to_y(rgb)[0]
    assert torch.allclose(y, torch.tensor([16 + 65.481, 16 + 128.553, 16 + 24.966, 235.0, 16.0], dtype=torch.float64))


def test_psnr_matches_formula_on_y():
    g = torch.Generator().manual_seed(1)
    hr = torch.randint(0, 256, (3, 20, 24), generator=g).double() / 255
    sr = (hr + torch.randn(hr.shape, generator=g, dtype=torch.float64) * 0.05).clamp(0, 1)
    s = 3
    y_sr = 16 + (np.round(sr.numpy() * 255) * np.array([65.481, 128.553, 24.966])[:, None, None] / 255).sum(0)
    y_hr = 16 + (np.round(hr.numpy() * 255) * np.array([65.481, 128.553, 24.966])[:, None, None] / 255).sum(0)
    mse = ((y_sr - y_hr)[s:-s, s:-s] ** 2).mean()
    assert calc_psnr(sr, hr, s) == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-10)
    assert calc_psnr(hr, hr, s) == math.inf
    # rgb_range scales the inputs, not the result.
    assert calc_psnr(sr * 255, hr * 255, s, rgb_range=255) == pytest.approx(calc_psnr(sr, hr, s), abs=1e-10)


def test_psnr_quantises_to_8_bit():
    hr = torch.full((3, 16, 16), 100 / 255, dtype=torch.float64)
    assert calc_psnr(hr + 0.4 / 255, hr, 2) == math.inf  # rounds back to the same level
    assert calc_psnr(hr + 0.6 / 255, hr, 2) < 100


def test_ssim_against_direct_2d_window():
    # SSIM map computed naively with the 11x11 window (no separability), at a few positions.
    g = torch.Generator().manual_seed(2)
    hr = torch.rand(3, 30, 28, generator=g, dtype=torch.float64)
    sr = (hr + 0.1 * torch.randn(hr.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    s = 2
    x = rgb_to_y(quantize(sr) / 255)[s:-s, s:-s]
    y = rgb_to_y(quantize(hr) / 255)[s:-s, s:-s]
    coords = torch.arange(11, dtype=torch.float64) - 5
    win = torch.exp(-(coords[:, None] ** 2 + coords[None, :] ** 2) / (2 * 1.5**2))
    win /= win.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
            mx, my = (win * px).sum(), (win * py).sum()
            vx, vy = (win * px * px).sum() - mx**2, (win * py * py).sum() - my**2
            cxy = (win * px * py).sum() - mx * my
            vals.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    assert calc_ssim(sr, hr, s) == pytest.approx(torch.stack(vals).mean().item(), abs=1e-12)
    assert calc_ssim(hr, hr, s) == pytest.approx(1.0, abs=1e-12)


def test_rgb_mode_and_batches():
    hr = torch.rand(2, 3, 24, 24, dtype=torch.float64)
    sr = (hr + 0.02).clamp(0, 1)
    assert calc_psnr(sr, hr, 2, y_channel=False) != calc_psnr(sr, hr, 2)
    assert 0 < calc_ssim(sr, hr, 2, y_channel=False) < 1


@pytest.mark.parametrize("args, match", [
    ((torch.rand(3, 8, 8), torch.rand(3, 8, 9), 2), "shapes differ"),
    ((torch.rand(1, 8, 8), torch.rand(1, 8, 8), 2), "RGB"),
    ((torch.rand(3, 8, 8), torch.rand(3, 8, 8), 4), "too small"),
])
def test_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        calc_psnr(*args)
    with pytest.raises(ValueError, match=match):
        calc_ssim(*args)


def test_ssim_needs_11_pixels():
    with pytest.raises(ValueError, match="11x11"):
        calc_ssim(torch.rand(3, 12, 12), torch.rand(3, 12, 12), 2)


def _set5_baseline(set5_dir, scale, degrade):
    # set5_dir (tests/conftest.py): ../shared/data/Set5 or $DLSN_SET5; skipped only where absent.
    files = sorted(set5_dir.glob("*.png"))
    assert len(files) == 5, f"expected the 5 Set5 images in {set5_dir}, found {len(files)}"
    psnrs, ssims = [], []
    for path in files:
        hr = crop_to_scale(read_image(path).double(), scale)
        sr = imresize(degrade(hr, scale), scale=scale)
        psnrs.append(calc_psnr(sr, hr, scale))
        ssims.append(calc_ssim(sr, hr, scale))
    return sum(psnrs) / 5, sum(ssims) / 5


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_set5_bicubic_baseline_reproduces_published(set5_dir, scale):
    psnr, ssim = _set5_baseline(set5_dir, scale, bicubic_down)
    want_psnr, want_ssim = PUBLISHED_BI[scale]
    assert abs(psnr - want_psnr) <= 0.05, f"x{scale} PSNR {psnr:.3f} vs published {want_psnr}"
    assert abs(ssim - want_ssim) <= 0.002, f"x{scale} SSIM {ssim:.4f} vs published {want_ssim}"


def test_set5_bd_bicubic_baseline_reproduces_published(set5_dir):
    psnr, ssim = _set5_baseline(set5_dir, 3, blur_down)
    assert abs(psnr - PUBLISHED_BD_X3[0]) <= 0.05, f"BD x3 PSNR {psnr:.3f} vs published {PUBLISHED_BD_X3[0]}"
    assert abs(ssim - PUBLISHED_BD_X3[1]) <= 0.002, f"BD x3 SSIM {ssim:.4f} vs published {PUBLISHED_BD_X3[1]}"
