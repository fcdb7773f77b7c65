"""`dlsn export --format pt2|onnx` and `dlsn upscale --checkpoint model.onnx` from the command line,
and their bad input: one `dlsn <command>: error:` line, nothing written."""
import numpy as np
import pytest
import torch
from PIL import Image

from dlsn.sr.cli import main

TINY = dict(n_resgroups=1, n_resblocks=1, n_feats=16, chunk_size=16, n_hashes=2)


def one_error_line(capsys, command, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"dlsn {command}: error:"), err
    for needle in needles:
        assert needle in err[0], err[0]


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory):
    """A tiny x2 checkpoint and its ONNX export, written by the CLI."""
    pytest.importorskip("onnxruntime")
    import dlsn

    folder = tmp_path_factory.mktemp("deploy")
    torch.manual_seed(0)
    torch.save(dlsn.DLSN(scale=2, **TINY).state_dict(), folder / "tiny.pth")
    assert main(["export", "--checkpoint", str(folder / "tiny.pth"), "-o", str(folder / "tiny.onnx"),
                 "--size", "12x10"]) == 0
    return folder


def test_upscale_with_onnx_gives_the_checkpoints_image(onnx_export, tmp_path):
    """Same padding and tiling as the PyTorch checkpoint: the written images agree to one grey level."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (21, 26, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    outputs = {}
    for suffix in ("pth", "onnx"):
        target = tmp_path / f"out_{suffix}.png"
        assert main(["upscale", str(tmp_path / "in.png"), "-o", str(target), "--checkpoint",
                     str(onnx_export / f"tiny.{suffix}"), "--scale", "2", "--device", "cpu", "--tile", "12"]) == 0
        outputs[suffix] = np.asarray(Image.open(target), dtype=np.int16)
    assert outputs["onnx"].shape == (42, 52, 3)
    assert np.abs(outputs["onnx"] - outputs["pth"]).max() <= 1


@pytest.mark.parametrize("argv, needles", [
    (["--format", "zip"], ["invalid choice: 'zip'"]),
    (["--format", "onnx", "-o", "{tmp}/m.pt2"], ["--format onnx writes a .onnx file"]),
    (["-o", "{tmp}/m.bin"], ["cannot tell the format from the suffix '.bin'"]),
    (["-o", "{tmp}/file.txt/m.onnx"], ["cannot write", "a part of the path is a file"]),
    (["-o", "{tmp}/m.onnx", "--opset", "12"], ["opset >= 18"]),
    (["-o", "{tmp}/m.pt2", "--size", "1x8"], ["height and width must be >= 2"]),
])
def test_export_bad_input_is_one_line_and_writes_nothing(argv, needles, onnx_export, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("a file, not a folder")
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]
    if "-o" not in argv:
        argv += ["-o", str(tmp_path / "m.onnx")]
    code = main(["export", "--checkpoint", str(onnx_export / "tiny.pth"), *argv])
    assert code == 2
    if "invalid choice" in needles[0] or "must be >= 2" in needles[0]:  # argparse prints usage too
        assert needles[0] in capsys.readouterr().err
    else:
        one_error_line(capsys, "export", *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_upscale_onnx_bad_input(onnx_export, tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "in.png")
    base = ["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), "--device", "cpu"]
    assert main(base + ["--checkpoint", str(onnx_export / "tiny.onnx"), "--scale", "2", "--n-hashes", "4"]) == 2
    one_error_line(capsys, "upscale", "--n-hashes does not apply to an ONNX model")
    assert main(base + ["--checkpoint", str(onnx_export / "tiny.onnx"), "--scale", "3"]) == 2
    one_error_line(capsys, "upscale", "the ONNX model is x2")
    (tmp_path / "fake.onnx").write_bytes(b"\x08\x01garbage")
    assert main(base + ["--checkpoint", str(tmp_path / "fake.onnx"), "--scale", "2"]) == 2
    one_error_line(capsys, "upscale", "fake.onnx")
    assert not (tmp_path / "out.png").exists()


def test_pt2_from_the_command_line_runs_at_another_size(onnx_export, tmp_path):
    import dlsn.sr.checkpoint as ckpt

    assert main(["export", "--checkpoint", str(onnx_export / "tiny.pth"), "-o", str(tmp_path / "m.pt2"),
                 "--size", "12x10"]) == 0
    exported = torch.export.load(str(tmp_path / "m.pt2")).module()
    model = ckpt.load_model(onnx_export / "tiny.pth", scale=2)
    x = torch.rand(1, 3, 9, 7, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.double()(x.double())
        assert (exported(x).double() - expected).abs().max().item() <= 1e-5
