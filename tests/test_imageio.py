import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from dlsn.sr.imageio import _unfilter_png, image_size, read_image, read_image_window, read_image_with_alpha, write_image


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def _encode_png16(path, values, ctype, filters):
    """A minimal PNG encoder applying the given filter per row (loop reference of the PNG spec)."""
    h, w, ch = values.shape
    bpp = 2 * ch
    data = values.astype(">u2").reshape(h, w * ch).view(np.uint8).astype(np.int64)
    out = []
    for r in range(h):
        ftype = filters[r]
        row = []
        for i in range(data.shape[1]):
            a = data[r, i - bpp] if i >= bpp else 0
            b = data[r - 1, i] if r > 0 else 0
            c = data[r - 1, i - bpp] if (r > 0 and i >= bpp) else 0
            pred = [0, a, b, (a + b) // 2, _paeth(a, b, c)][ftype]
            row.append((data[r, i] - pred) & 0xFF)
        out.append(bytes([ftype]) + bytes(row))

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"".join(out)))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("ctype, channels", [(2, 3), (6, 4), (4, 2)])
def test_16bit_colour_png_all_filters(tmp_path, ctype, channels):
    rng = np.random.default_rng(ctype)
    values = rng.integers(0, 65536, size=(9, 7, channels)).astype(np.uint16)
    _encode_png16(tmp_path / "x.png", values, ctype, filters=[0, 1, 2, 3, 4, 4, 3, 2, 1])
    rgb, alpha = read_image_with_alpha(tmp_path / "x.png")
    got = np.round(rgb.numpy().transpose(1, 2, 0).astype(np.float64) * 65535).astype(np.int64)
    colour = values[..., :3] if channels >= 3 else np.repeat(values[..., :1], 3, axis=2)
    assert np.array_equal(got, colour)
    if channels in (2, 4):
        assert np.array_equal(np.round(alpha[0].numpy().astype(np.float64) * 65535), values[..., -1])


def test_unfilter_matches_pillow_on_8bit(tmp_path):
    # Pillow writes adaptive filters; our un-filtering must reproduce its decode byte for byte.
    rng = np.random.default_rng(0)
    arr = (rng.random((23, 17, 3)) * 40 + np.arange(17)[None, :, None] * 10).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png", optimize=True)
    blob = (tmp_path / "a.png").read_bytes()
    pos, idat = 8, b""
    while pos < len(blob):
        n, kind = struct.unpack(">I4s", blob[pos:pos + 8])
        idat += blob[pos + 8:pos + 8 + n] if kind == b"IDAT" else b""
        pos += 12 + n
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8)
    assert np.array_equal(_unfilter_png(raw, 23, 17 * 3, 3).reshape(23, 17, 3), arr)


def test_rgb_gray_16bit_gray_roundtrip(tmp_path):
    x = torch.rand(3, 10, 12)
    write_image(tmp_path / "rgb.png", x)
    assert (read_image(tmp_path / "rgb.png") - x).abs().max() <= 0.5 / 255 + 1e-6
    write_image(tmp_path / "rgb16.png", x, bit_depth=16)
    assert (read_image(tmp_path / "rgb16.png") - x).abs().max() <= 0.5 / 65535 + 1e-7
    g = torch.rand(1, 10, 12)
    write_image(tmp_path / "g16.png", g, bit_depth=16)
    back = read_image(tmp_path / "g16.png")
    assert back.shape == (3, 10, 12) and torch.equal(back[0], back[2])
    assert (back[0] - g[0]).abs().max() <= 0.5 / 65535 + 1e-7
    gray16 = np.array([[0, 65535], [1000, 30000]], dtype=np.uint16)
    Image.fromarray(gray16).save(tmp_path / "pil16.png")
    assert torch.allclose(read_image(tmp_path / "pil16.png")[1], torch.from_numpy(gray16 / 65535.0).float())
    Image.fromarray(np.full((4, 5), 51, np.uint8)).save(tmp_path / "g8.png")
    assert torch.allclose(read_image(tmp_path / "g8.png"), torch.full((3, 4, 5), 0.2))


def test_rgba_composited_on_white_or_kept(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[0, 0, 3] = 0
    rgba[0, 1, 3] = 255
    rgba[1, :, 3] = 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert img[:, 0, 0].tolist() == [1.0, 1.0, 1.0]  # transparent -> white
    assert img[:, 0, 1].tolist() == [1.0, 0.0, 0.0]
    a = 128 / 255
    assert torch.allclose(img[:, 1, 0], torch.tensor([1.0, 1 - a, 1 - a]))
    rgb, alpha = read_image_with_alpha(tmp_path / "a.png")
    assert rgb[0].eq(1).all() and torch.allclose(alpha[0], torch.from_numpy(rgba[..., 3] / 255).float())
    write_image(tmp_path / "b.png", torch.cat([rgb, alpha]))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b.png")), rgba)


def test_jpeg(tmp_path):
    x = torch.full((3, 16, 16), 0.5)
    write_image(tmp_path / "x.jpg", x)
    assert (read_image(tmp_path / "x.jpg") - x).abs().max() < 3 / 255
    with pytest.raises(ValueError, match=r"\.jpg has no alpha"):
        write_image(tmp_path / "y.jpg", torch.rand(4, 4, 4))


def test_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="junk.png"):
        read_image(tmp_path / "junk.png")
    with pytest.raises(ValueError, match="not an image file"):
        read_image(tmp_path)
    with pytest.raises(ValueError, match="16-bit output needs a .png"):
        write_image(tmp_path / "x.jpg", torch.rand(3, 4, 4), bit_depth=16)
    with pytest.raises(ValueError, match=r"\[C, H, W\]"):
        write_image(tmp_path / "x.png", torch.rand(5, 4, 4))
    write_image(tmp_path / "la.png", torch.rand(2, 4, 4))  # gray + alpha
    assert Image.open(tmp_path / "la.png").mode == "LA"


def _photo(h=40, w=52, channels=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)


@pytest.mark.parametrize("kind", ["rgb8", "rgba", "gray", "rgb16", "jpeg", "rgb_trns", "palette", "interlaced"])
def test_read_image_window_is_a_crop_of_read_image(tmp_path, kind):
    """Equal values for every kind of image, whether the fast path (8-bit RGB PNG) or the fallback reads it."""
    path = tmp_path / ("x.jpg" if kind == "jpeg" else "x.png")
    if kind == "rgb16":
        _encode_png16(path, np.random.default_rng(1).integers(0, 65536, (40, 52, 3)), 2, [r % 5 for r in range(40)])
    else:
        image = Image.fromarray(_photo(channels=4 if kind == "rgba" else 3))
        image = {"rgba": image, "gray": image.convert("L"), "palette": image.convert("P")}.get(kind, image)
        extra = {"transparency": (10, 20, 30)} if kind == "rgb_trns" else {}
        image.save(path, interlace=kind == "interlaced", **extra)
    whole = read_image(path)
    assert image_size(path) == tuple(whole.shape[-2:]) == (40, 52)
    for box in [(0, 40, 0, 52), (0, 7, 0, 9), (33, 40, 45, 52), (10, 27, 5, 31)]:
        window = read_image_window(path, *box)
        assert torch.equal(window, whole[:, box[0]:box[1], box[2]:box[3]]), box


def test_read_image_window_decodes_only_the_rows_it_needs(tmp_path):
    """A PNG cut off after half its rows: the top rows still read through the window, the whole image
    does not (so the rows below a window are indeed never decoded)."""
    path = tmp_path / "cut.png"
    Image.fromarray(_photo(64, 64)).save(path, compress_level=0)
    full = read_image(path)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    assert torch.equal(read_image_window(path, 2, 20, 3, 40), full[:, 2:20, 3:40])
    with pytest.raises(ValueError, match="cut.png"):
        read_image(path)
    with pytest.raises(ValueError, match="cannot read image .*cut.png"):
        read_image_window(path, 40, 60, 0, 10)


def test_read_image_window_errors(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(_photo()).save(path)
    with pytest.raises(ValueError, match="outside the 40x52 image"):
        read_image_window(path, 30, 41, 0, 5)
    with pytest.raises(ValueError, match="outside"):
        read_image_window(path, 5, 5, 0, 5)
    (tmp_path / "bad.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.png"):
        image_size(tmp_path / "bad.png")
    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_image_window(tmp_path / "nope.png", 0, 1, 0, 1)
