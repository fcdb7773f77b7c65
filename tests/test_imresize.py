import math

import pytest
import torch
import torch.nn.functional as F

from dlsn.sr.imresize import contributions, cubic_kernel, imresize


def test_cubic_kernel_values():
    x = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, -0.5], dtype=torch.float64)
    # Keys a = -0.5: 1.5|x|^3 - 2.5|x|^2 + 1 on [0, 1]; -0.5|x|^3 + 2.5|x|^2 - 4|x| + 2 on (1, 2].
    expected = torch.tensor([1.0, 0.5625, 0.0, -0.0625, 0.0, 0.0, 0.5625], dtype=torch.float64)
    assert torch.equal(cubic_kernel(x), expected)


def test_downscale_x2_weights_are_matlabs():
    # MATLAB imresize(., 0.5): antialiased kernel cubic(x/2)/2 at offsets +-0.25, +-0.75, ... (exact binary fractions).
    weights, indices = contributions(4, 2, 0.5)
    row = torch.tensor([-0.01171875, -0.03515625, 0.11328125, 0.43359375], dtype=torch.float64)
    assert torch.allclose(weights[0], torch.cat([row, row.flip(0)]), atol=0, rtol=1e-15)
    # Symmetric padding repeats the edge pixel: ... 2 1 0 | 0 1 2 3 | 3 2 ...
    assert indices.tolist() == [[2, 1, 0, 0, 1, 2, 3, 3], [0, 0, 1, 2, 3, 3, 2, 1]]


def test_upscale_x2_weights_by_hand():
    weights, indices = contributions(3, 6, 2.0)
    # Output 1 sits at input coordinate 0.75 (1-based): taps at distances 0.75, 0.25, 0.75, 1.75 (normalised sum 1).
    hand = cubic_kernel(torch.tensor([1.75, 0.75, 0.25, 1.25], dtype=torch.float64))
    assert torch.allclose(weights[0], hand / hand.sum())
    assert indices[0].tolist() == [1, 0, 0, 1]
    assert torch.allclose(weights.sum(1), torch.ones(6, dtype=torch.float64))


def test_known_4x4_to_3x3():
    x = torch.arange(16, dtype=torch.float64).view(4, 4)
    y = imresize(x, size=(3, 3))
    # Linear ramps stay linear-ish; the centre maps to the centre exactly, and the result is point-symmetric.
    assert y[1, 1].item() == pytest.approx(7.5, abs=1e-12)
    assert torch.allclose(y + y.flip(0, 1), torch.full_like(y, 15.0))
    assert y[0, 0].item() == pytest.approx(0.7506, abs=1e-4)


def test_reference_loop_random_sizes():
    # A direct, loop-based transcription of imresize.m (separable, rows first) on random data.
    g = torch.Generator().manual_seed(0)
    for (h, w, scale) in [(7, 9, 0.5), (5, 6, 1 / 3), (4, 3, 2.0), (2, 5, 3.0), (9, 8, 0.25)]:
        x = torch.rand(2, h, w, generator=g, dtype=torch.float64)
        out_h, out_w = math.ceil(h * scale - 1e-9), math.ceil(w * scale - 1e-9)
        expected = x.clone()
        for dim, (n_in, n_out) in ((1, (h, out_h)), (2, (w, out_w))):
            wts, idx = contributions(n_in, n_out, scale)
            moved = expected.movedim(dim, -1)
            res = torch.zeros(*moved.shape[:-1], n_out, dtype=torch.float64)
            for i in range(n_out):
                for p in range(wts.shape[1]):
                    res[..., i] += wts[i, p] * moved[..., idx[i, p]]
            expected = res.movedim(-1, dim)
        assert torch.allclose(imresize(x, scale), expected, atol=1e-12)


def test_constant_image_preserved_and_shapes():
    x = torch.full((1, 3, 10, 14), 0.3)
    for scale, shape in [(0.5, (5, 7)), (2, (20, 28)), (3, (30, 42))]:
        y = imresize(x, scale)
        assert y.shape[-2:] == shape and y.dtype == torch.float32
        assert torch.allclose(y, torch.full_like(y, 0.3), atol=1e-6)
    assert imresize(torch.rand(255, 255, dtype=torch.float64), 1 / 3).shape == (85, 85)


def test_differs_from_torch_bicubic_when_shrinking():
    x = torch.rand(1, 1, 16, 16, dtype=torch.float64)
    ours = imresize(x, 0.5)
    theirs = F.interpolate(x, scale_factor=0.5, mode="bicubic", align_corners=False)
    assert (ours - theirs).abs().max() > 1e-3  # antialiasing matters: a plain interpolate is not MATLAB's


def test_gradients_flow():
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: imresize(t, 0.5), (x,))


@pytest.mark.parametrize("bad, match", [
    (dict(img=torch.zeros(4, 4, dtype=torch.uint8), scale=2), "floating-point"),
    (dict(img=torch.zeros(4), scale=2), "H, W"),
    (dict(img=torch.zeros(4, 4), scale=2, size=(8, 8)), "exactly one"),
    (dict(img=torch.zeros(4, 4), scale=-1.0), "positive"),
    (dict(img=torch.zeros(4, 4), size=(0, 3)), "positive"),
])
def test_bad_input(bad, match):
    with pytest.raises((TypeError, ValueError), match=match):
        imresize(**bad)
