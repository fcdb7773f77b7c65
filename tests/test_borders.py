"""Image borders and tiny images in what users see (issue 13, items 1 and 7).

The dark border came from the convolutions' zero padding at the image edge (measured on a trained
demo model: 19.9/255 mean error on the outermost HR rows against 4.6/255 inside; see
dlsn/sr/inference.py). Training takes minutes, so these tests build the demo-sized network with
weights that make it a smooth upscaler (3x3 box blur, then pixel replication) and the same
mechanism: its 3x3 convolutions read zeros beyond the edge, pulling border pixels towards the
dataset mean (red turns brownish, as reported).
"""
import pytest
import torch

from dlsn.sr.cli import main
from dlsn.models import build_model
from dlsn.sr.config import load_config
from dlsn.sr.imageio import read_image, write_image
from dlsn.sr.inference import DEFAULT_BORDER_PAD, upscale_tensor

BORDER_FACTOR = 2.0  # outermost rows/columns may be at most this much worse than the interior (bicubic: 1.3)


def smooth_demo_model():
    """The demo config's DLSN (x2) computing box_blur_3x3(image) replicated 2x2; no GLA contribution."""
    model = build_model(load_config("demo").model).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.zero_()
        for c in range(3):
            model.head[0].weight[c, c] = 1 / 9  # 3x3 box blur of each colour
            for k in range(4):  # the upsampler's conv + PixelShuffle(2): copy to the 4 sub-pixels
                model.tail[0][0].weight[4 * c + k, c, 1, 1] = 1.0
            model.tail[1].weight[c, c, 1, 1] = 1.0
    return model


def _ring_and_interior(sr, hr):
    err = (sr.clamp(0, 1) - hr).abs().mean(0)
    ring = torch.stack([err[0].mean(), err[-1].mean(), err[:, 0].mean(), err[:, -1].mean()]).mean()
    return ring.item(), err[8:-8, 8:-8].mean().item()


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "smooth_demo_x2.pt"
    torch.save(smooth_demo_model().state_dict(), path)
    return path


def test_border_error_is_close_to_the_interior(tmp_path, checkpoint):
    torch.manual_seed(0)
    # A smooth photograph-like image: low-frequency colour waves.
    y, x = torch.meshgrid(torch.linspace(0, 3, 80), torch.linspace(0, 3, 96), indexing="ij")
    hr = torch.stack([0.5 + 0.4 * torch.sin(x + c) * torch.cos(y - c) for c in range(3)])
    lr = torch.nn.functional.avg_pool2d(hr[None], 2)
    write_image(tmp_path / "lr.png", lr[0], bit_depth=16)
    assert main(["upscale", str(tmp_path / "lr.png"), "-o", str(tmp_path / "sr.png"), "--checkpoint",
                 str(checkpoint), "--scale", "2", "--tile", "0"]) == 0
    ring, interior = _ring_and_interior(read_image(tmp_path / "sr.png"), hr)
    assert ring <= BORDER_FACTOR * interior, (ring, interior)
    # What the test guards against: the same model without border padding.
    ring0, interior0 = _ring_and_interior(upscale_tensor(smooth_demo_model(), lr, 2, border_pad=0)[0], hr)
    assert ring0 > 3 * BORDER_FACTOR * interior0, (ring0, interior0)


@pytest.mark.parametrize("size, tile", [(48, "0"), (48, "20"), (1, "0")])
def test_flat_colour_stays_flat(tmp_path, checkpoint, size, tile):
    red = torch.zeros(3, size, size)
    red[0] = 1.0
    write_image(tmp_path / "red.png", red)
    assert main(["upscale", str(tmp_path / "red.png"), "-o", str(tmp_path / "sr.png"), "--checkpoint",
                 str(checkpoint), "--scale", "2", "--tile", tile]) == 0
    sr = read_image(tmp_path / "sr.png")
    assert sr.shape == (3, 2 * size, 2 * size)
    assert (sr - red[:, :1, :1]).abs().max() <= 1 / 255, sr.mean((1, 2))
    # Without the padding the corners turn towards the dataset mean (brownish), a 1x1 image entirely.
    unpadded = upscale_tensor(smooth_demo_model(), red[None], 2, border_pad=0)[0].clamp(0, 1)
    assert (unpadded - red[:, :1, :1]).abs().max() > 0.2


def test_eval_save_pads_while_scores_follow_the_protocol(tmp_path, checkpoint, capsys):
    import json

    red = torch.zeros(3, 48, 48)
    red[0] = 1.0
    write_image(tmp_path / "bench" / "red.png", red)
    common = ["eval", "--checkpoint", str(checkpoint), "--data", str(tmp_path / "bench"), "--scale", "2", "--json"]
    assert main(common + ["--save", str(tmp_path / "saved")]) == 0
    with_save = json.loads(capsys.readouterr().out)["mean"]
    assert main(common) == 0
    assert json.loads(capsys.readouterr().out)["mean"] == with_save  # scores: unpadded, published protocol
    saved = read_image(tmp_path / "saved" / "red_x2.png")
    assert (saved - red[:, :1, :1]).abs().max() <= 1 / 255
    assert DEFAULT_BORDER_PAD > 0
