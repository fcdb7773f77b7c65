import json

import numpy as np
import pytest
import torch
from PIL import Image

from dlsn.sr.cli import main
from dlsn.sr.data import BenchmarkPairs
from dlsn.sr.imageio import read_image, read_image_with_alpha, write_image
from dlsn.sr.imresize import imresize
from dlsn.sr.metrics import calc_psnr, calc_ssim

TINY = dict(n_resgroups=1, n_resblocks=1, n_feats=8, chunk_size=16, n_hashes=1)


@pytest.fixture
def bench(tmp_path):
    folder = tmp_path / "bench"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for name in ("a", "b"):
        # Smooth content so that bicubic is meaningful, plus noise.
        base = torch.linspace(0, 1, 28).view(1, 1, 28).expand(3, 26, 28)
        write_image(folder / f"{name}.png", (0.7 * base + 0.3 * torch.rand(3, 26, 28, generator=g)).clamp(0, 1))
    return folder


def test_eval_bicubic_json_matches_direct_computation(bench, capsys):
    assert main(["eval", "--model", "bicubic", "--data", str(bench), "--scale", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in result["images"]] == ["a", "b"]
    lr, hr = BenchmarkPairs(bench, 2)[1]
    sr = imresize(lr, scale=2)
    assert result["images"][1]["psnr"] == pytest.approx(calc_psnr(sr, hr, 2), abs=1e-9)
    assert result["images"][1]["ssim"] == pytest.approx(calc_ssim(sr, hr, 2), abs=1e-9)
    assert result["mean"]["psnr"] == pytest.approx(sum(r["psnr"] for r in result["images"]) / 2)


def test_eval_checkpoint_table_tiles_and_save(bench, checkpoint, tmp_path, capsys):
    out = tmp_path / "sr"
    argv = ["eval", "--checkpoint", str(checkpoint), "--data", str(bench), "--scale", "2", "--device", "cpu",
            "--tile", "8", "--tile-overlap", "4", "--save", str(out)]
    assert main(argv) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["image", "PSNR", "SSIM"] and table[-1].split()[0] == "mean"
    assert float(table[-1].split()[1]) > 5  # a real number, not nan
    assert read_image(out / "a_x2.png").shape == (3, 26, 28)


def test_eval_degradations(bench, capsys):
    for kind in ("bd", "dn"):
        assert main(["eval", "--model", "bicubic", "--data", str(bench), "--scale", "2",
                     "--degradation", kind, "--noise-level", "10", "--self-ensemble", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["degradation"] == kind


def _fails(argv, capsys, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err
    return err


def test_eval_bad_input(bench, checkpoint, tmp_path, capsys):
    _fails(["eval", "--model", "bicubic", "--data", str(tmp_path / "nope"), "--scale", "2"], capsys, "nope", "not found")
    _fails(["eval", "--checkpoint", str(tmp_path / "missing.pth"), "--data", str(bench), "--scale", "2"],
           capsys, "missing.pth")
    _fails(["eval", "--data", str(bench), "--scale", "2"], capsys, "--checkpoint is required")
    # A x2 checkpoint asked to run at x3: the loader names the mismatch.
    _fails(["eval", "--checkpoint", str(checkpoint), "--data", str(bench), "--scale", "3"], capsys, "tail")
    (bench / "c.png").write_bytes(b"broken")
    _fails(["eval", "--model", "bicubic", "--data", str(bench), "--scale", "2"], capsys, "c.png")
    (bench / "c.png").unlink()
    write_image(bench / "d.png", torch.rand(3, 1, 30))
    _fails(["eval", "--model", "bicubic", "--data", str(bench), "--scale", "2"], capsys, "d.png", "smaller than the scale")
    (bench / "d.png").unlink()
    write_image(bench / "e.png", torch.rand(3, 12, 30))
    _fails(["eval", "--model", "bicubic", "--data", str(bench), "--scale", "2"], capsys, "SSIM needs at least 11x11")


def test_upscale_formats(tmp_path, checkpoint, capsys):
    src = tmp_path / "in"
    src.mkdir()
    write_image(src / "rgb.jpg", torch.rand(3, 10, 12))
    Image.fromarray((np.random.default_rng(0).random((10, 12)) * 255).astype(np.uint8)).save(src / "gray.png")
    rgba = torch.rand(4, 10, 12)
    write_image(src / "rgba.png", rgba)
    write_image(src / "deep.png", torch.rand(3, 10, 12), bit_depth=16)
    out = tmp_path / "out"
    assert main(["upscale", str(src), "-o", str(out), "--checkpoint", str(checkpoint), "--scale", "2",
                 "--tile", "6", "--no-progress"]) == 0
    modes = {p.name: Image.open(p).mode for p in out.iterdir()}
    assert modes == {"rgb_x2.png": "RGB", "gray_x2.png": "L", "rgba_x2.png": "RGBA", "deep_x2.png": "RGB"}
    assert Image.open(out / "rgba_x2.png").size == (24, 20)
    raw = (out / "deep_x2.png").read_bytes()
    assert raw[24] == 16  # written as a 16-bit PNG
    alpha = np.asarray(Image.open(out / "rgba_x2.png"))[..., 3] / 255.0
    expected = imresize(read_image_with_alpha(src / "rgba.png")[1].double(), scale=2).clamp(0, 1)[0].numpy()
    assert np.abs(alpha - expected).max() <= 0.5 / 255 + 1e-6
    # A single input with a file name as output; bicubic needs no checkpoint.
    assert main(["upscale", str(src / "rgb.jpg"), "-o", str(tmp_path / "one.jpg"), "--model", "bicubic",
                 "--scale", "3"]) == 0
    assert Image.open(tmp_path / "one.jpg").size == (36, 30)


def test_upscale_bad_input(tmp_path, checkpoint, capsys):
    _fails(["upscale", str(tmp_path / "missing.png"), "-o", str(tmp_path), "--model", "bicubic", "--scale", "2"],
           capsys, "missing.png")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG garbage")
    _fails(["upscale", str(tmp_path / "junk.png"), "-o", str(tmp_path / "o"), "--model", "bicubic", "--scale", "2"],
           capsys, "junk.png")
    (tmp_path / "empty").mkdir()
    _fails(["upscale", str(tmp_path / "empty"), "-o", str(tmp_path / "o"), "--model", "bicubic", "--scale", "2"],
           capsys, "no images")
    write_image(tmp_path / "ok.png", torch.rand(3, 8, 8))
    _fails(["upscale", str(tmp_path / "ok.png"), "-o", str(tmp_path / "o"), "--checkpoint", str(checkpoint),
            "--scale", "2", "--half", "--device", "cpu"], capsys, "--half needs a CUDA device")


def test_upscale_images_smaller_than_chunk_and_tile(tmp_path, checkpoint):
    # 1x2 pixels: far fewer positions than the chunk size (16) and smaller than the tile.
    write_image(tmp_path / "tiny.png", torch.rand(3, 1, 2))
    assert main(["upscale", str(tmp_path / "tiny.png"), "-o", str(tmp_path / "big.png"), "--checkpoint",
                 str(checkpoint), "--scale", "2", "--tile", "64"]) == 0
    assert Image.open(tmp_path / "big.png").size == (4, 2)
