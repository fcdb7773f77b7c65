import pytest
import torch
import torch.nn.functional as F

from dlsn.sr import degradations
from dlsn.sr.degradations import (add_noise, blur_down, bicubic_down, context_margin, crop_to_scale, degrade,
                                  gaussian_kernel, noisy_down, patch_window)
from dlsn.sr.imresize import imresize


def _hr(h=24, w=30, seed=0):
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


def test_crop_to_scale():
    assert crop_to_scale(torch.zeros(3, 25, 31), 4).shape == (3, 24, 28)
    with pytest.raises(ValueError, match="smaller than the scale"):
        crop_to_scale(torch.zeros(3, 2, 31), 3)


def test_bi_is_quantised_imresize():
    hr = _hr()
    lr = bicubic_down(hr, 3)
    assert lr.shape == (3, 8, 10)
    assert torch.equal(lr, imresize(hr, 1 / 3).clamp(0, 1).mul(255).round().div(255))
    assert torch.allclose(bicubic_down(hr, 3, quantize=False), imresize(hr, 1 / 3).clamp(0, 1))


def test_gaussian_kernel_is_fspecial():
    k = gaussian_kernel(7, 1.6)
    assert k.shape == (7, 7) and k.sum().item() == pytest.approx(1.0, abs=1e-15)
    assert k[3, 3] / k[3, 4] == pytest.approx(torch.exp(torch.tensor(1 / (2 * 1.6**2), dtype=torch.float64)).item())


def test_bd_blur_then_matlab_nearest_decimation():
    hr = _hr(21, 27)
    k = gaussian_kernel()
    blurred = F.conv2d(F.pad(hr.double().unsqueeze(1), (3, 3, 3, 3), mode="replicate"), k.view(1, 1, 7, 7)).squeeze(1)
    # imresize(., 1/3, 'nearest') keeps pixels 2, 5, 8, ... (1-based): offset 1.
    expected = blurred[:, 1::3, 1::3].clamp(0, 1).mul(255).round().div(255)
    assert torch.allclose(blur_down(hr, 3).double(), expected, atol=1e-6)
    assert blur_down(_hr(8, 8), 2).shape == (3, 4, 4)
    # A constant image is unchanged by the normalised blur (replicate borders).
    flat = torch.full((3, 12, 12), 0.5)
    assert torch.allclose(blur_down(flat, 2, quantize=False), torch.full((3, 6, 6), 0.5))


def test_dn_is_seeded_and_has_the_requested_noise():
    hr = torch.full((3, 96, 96), 0.5)
    g = lambda: torch.Generator().manual_seed(7)
    a = noisy_down(hr, 2, 30.0, g(), quantize=False)
    b = noisy_down(hr, 2, 30.0, g(), quantize=False)
    assert torch.equal(a, b)
    assert not torch.equal(a, noisy_down(hr, 2, 30.0, torch.Generator().manual_seed(8), quantize=False))
    std = ((a - 0.5) * 255).std().item()
    assert 27 < std < 33  # 0.5 is far from the clamp at 0 and 1
    state = torch.random.get_rng_state()
    noisy_down(hr, 2, 30.0, g())
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched
    assert torch.equal(noisy_down(hr, 2, 0.0, g()), bicubic_down(hr, 2))


def test_degrade_dispatch_and_errors():
    hr = _hr()
    assert torch.equal(degrade(hr, 2, "bi"), bicubic_down(hr, 2))
    assert torch.equal(degrade(hr, 2, "BD"), blur_down(hr, 2))
    with pytest.raises(ValueError, match="unknown degradation"):
        degrade(hr, 2, "jpeg")
    with pytest.raises(ValueError, match="not a multiple"):
        bicubic_down(_hr(25, 30), 2)
    with pytest.raises(ValueError, match="RGB"):
        bicubic_down(torch.rand(1, 8, 8), 2)
    with pytest.raises(ValueError, match="noise_level"):
        noisy_down(hr, 2, -1.0)


def test_bd_against_a_float64_oracle():
    """blur_down (two 7-tap passes at the kept pixels) against the 2-D 7x7 convolution of the whole
    image, both in float64: equal to a few units of float64 roundoff."""
    hr = _hr(33, 40).double()
    k = gaussian_kernel()
    for s in (2, 3, 4):
        x = crop_to_scale(hr, s)
        blurred = F.conv2d(F.pad(x.unsqueeze(1), (3, 3, 3, 3), mode="replicate"), k.view(1, 1, 7, 7)).squeeze(1)
        oracle = blurred[:, s // 2::s, s // 2::s].clamp(0, 1)
        assert (blur_down(x, s, quantize=False) - oracle).abs().max().item() < 8 * 2.0**-53


def test_add_noise_is_the_noise_of_dn():
    hr = _hr()
    g = lambda: torch.Generator().manual_seed(3)
    assert torch.equal(noisy_down(hr, 2, 15.0, g()), add_noise(bicubic_down(hr, 2), 15.0, g()))
    with pytest.raises(ValueError, match="noise_level"):
        add_noise(hr, -1.0)


# LR patch corners of a 30x37 LR image (patch 8): the four corners, the middle of each border, inside.
CORNERS = [(0, 0), (0, 29), (22, 0), (22, 29), (0, 14), (22, 14), (11, 0), (11, 29), (11, 14), (1, 1), (21, 28)]


def _crop_first_error(kind, s, hr, full):
    worst = 0.0
    for top, left in CORNERS:
        (y0, y1, x0, x1), (oy, ox) = patch_window(kind, s, tuple(hr.shape[-2:]), top, left, 8)
        assert y0 % s == x0 % s == y1 % s == x1 % s == 0
        lr = degrade(hr[:, y0:y1, x0:x1], s, kind, quantize=False)[:, oy:oy + 8, ox:ox + 8]
        worst = max(worst, (lr.double() - full[:, top:top + 8, left:left + 8].double()).abs().max().item())
    return worst


@pytest.mark.parametrize("kind", ["bi", "bd"])
@pytest.mark.parametrize("s", [2, 3, 4])
def test_crop_first_degradation_equals_the_whole_image(kind, s, monkeypatch):
    """Degrading the crop `patch_window` gives, then cropping the LR, equals degrading the whole image
    (within 1e-6; measured: identical) at every border and corner; with one scale step less of
    context it does not, so the margin is needed."""
    hr = _hr(30 * s, 37 * s, seed=s)
    full = degrade(hr, s, kind, quantize=False)
    assert _crop_first_error(kind, s, hr, full) <= 1e-6
    margin = context_margin(kind, s)
    monkeypatch.setattr(degradations, "context_margin", lambda kind, scale: margin - scale)
    assert _crop_first_error(kind, s, hr, full) > 1e-6


def test_patch_window_errors():
    with pytest.raises(ValueError, match="not a multiple"):
        patch_window("bi", 2, (31, 40), 0, 0, 4)
    with pytest.raises(ValueError, match="outside"):
        patch_window("bi", 2, (30, 40), 12, 0, 4)
    with pytest.raises(ValueError, match="unknown degradation"):
        context_margin("jpeg", 2)
    assert context_margin("bi", 3) == context_margin("dn", 3) == 6 and context_margin("bd", 2) == 4
