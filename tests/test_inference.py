import pytest
import torch
from torch import nn

import dlsn
from dlsn.sr.imresize import imresize
from dlsn.sr.inference import BicubicUpscaler, tiled_forward, upscale_tensor


class ConvSR(nn.Module):
    """Conv-only x`scale` model: receptive field radius 2 LR pixels (two 3x3 convs)."""

    def __init__(self, scale):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3 * scale**2, 3, padding=1))
        self.up = nn.PixelShuffle(scale)

    def forward(self, x):
        return self.up(self.body(x))


def _tiny_dlsn(scale=2):
    torch.manual_seed(0)
    return dlsn.DLSN(scale=scale, n_resgroups=1, n_resblocks=1, n_feats=8, chunk_size=16, n_hashes=1).eval()


@pytest.mark.parametrize("tile, overlap", [(8, 2), (7, 3), (5, 4), (64, 2)])
def test_tiles_equal_whole_image_for_local_models(tile, overlap):
    lr = torch.rand(2, 3, 19, 23, dtype=torch.float64)
    model = ConvSR(3).double()
    whole = upscale_tensor(model, lr, 3)
    assert torch.allclose(upscale_tensor(model, lr, 3, tile=tile, tile_overlap=overlap), whole, atol=1e-12)
    bicubic = BicubicUpscaler(2)
    assert torch.allclose(upscale_tensor(bicubic, lr, 2, tile=tile, tile_overlap=overlap),
                          imresize(lr, scale=2), atol=1e-12)


def test_too_little_overlap_shows_seams():
    lr = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    model = ConvSR(2).double()
    diff = (upscale_tensor(model, lr, 2, tile=8, tile_overlap=0) - upscale_tensor(model, lr, 2)).abs()
    assert diff.max() > 1e-6  # the test above would catch a tiler that ignored the context
    assert diff[..., :12, :12].max() < 1e-12  # ... and only near the seam at LR column/row 8 (HR 16)


def test_tiled_dlsn_is_close_and_bounds_tile_input():
    model = _tiny_dlsn()
    seen = []
    lr = torch.rand(1, 3, 20, 20)

    def spy(x):
        seen.append(tuple(x.shape[-2:]))
        return model(x)

    with torch.no_grad():
        whole = model(lr)
    tiled = upscale_tensor(spy, lr, 2, tile=10, tile_overlap=4)
    assert max(max(s) for s in seen) <= 10 + 2 * 4
    assert tiled.shape == whole.shape
    # GLA is global, so tiles change the result (measured: mean 7e-5, max 5e-4 on outputs ~0.4);
    # with res_scale 0.1 the attention term is small, so a tiler bug (misplaced tile) would be far larger.
    assert (tiled - whole).abs().max() < 5e-3


def test_self_ensemble_is_mean_of_the_eight_transforms():
    lr = torch.rand(1, 3, 9, 11, dtype=torch.float64)
    model = ConvSR(2).double()
    outs = []
    with torch.no_grad():
        for t in (False, True):
            for fh in (False, True):
                for fw in (False, True):
                    x = lr.transpose(-1, -2) if t else lr
                    dims = [d for d, f in ((-2, fh), (-1, fw)) if f]
                    y = model(x.flip(dims) if dims else x)
                    y = y.flip(dims) if dims else y
                    outs.append(y.transpose(-1, -2) if t else y)
    expected = torch.stack(outs).mean(0)
    got = upscale_tensor(model, lr, 2, self_ensemble=True)
    assert torch.allclose(got, expected, atol=1e-12)
    assert not torch.allclose(got, upscale_tensor(model, lr, 2), atol=1e-6)
    # Self-ensemble of an equivariant model (bicubic) changes nothing; it also combines with tiles.
    bic = BicubicUpscaler(2)
    assert torch.allclose(upscale_tensor(bic, lr, 2, tile=4, tile_overlap=3, self_ensemble=True),
                          imresize(lr, scale=2), atol=1e-12)


def test_dlsn_self_ensemble_runs_and_restores_train_mode():
    model = _tiny_dlsn().train()
    sr = upscale_tensor(model, torch.rand(1, 3, 12, 12), 2, self_ensemble=True)
    assert sr.shape == (1, 3, 24, 24) and torch.isfinite(sr).all()
    assert model.training


def test_input_cast_to_model_dtype_and_errors():
    model = ConvSR(2)
    assert upscale_tensor(model, torch.rand(1, 3, 6, 6, dtype=torch.float64), 2).dtype == torch.float32
    with pytest.raises(RuntimeError, match="does not match scale 3"):
        upscale_tensor(model, torch.rand(1, 3, 6, 6), 3)
    with pytest.raises(RuntimeError, match="does not match scale 3"):
        upscale_tensor(model, torch.rand(1, 3, 6, 6), 3, tile=4)
    with pytest.raises(ValueError, match=r"\[N, C, h, w\]"):
        upscale_tensor(model, torch.rand(3, 6, 6), 2)
    with pytest.raises(ValueError, match="tile must be"):
        tiled_forward(model, torch.rand(1, 3, 6, 6), 2, tile=0)
