"""What a new user hits at the file system: output names, write errors, file modes (issue 13, items 2-5)."""
import os
import stat

import numpy as np
import pytest
import torch
from PIL import Image

from dlsn.sr.cli import main
from dlsn.sr.imageio import write_image

TINY = dict(n_resgroups=1, n_resblocks=1, n_feats=8, chunk_size=16, n_hashes=1)


def _one_error_line(capsys, *needles):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_rgba_to_jpeg_writes_the_jpeg_asked_for(tmp_path, capsys):
    rgba = torch.rand(4, 6, 7)
    rgba[3] = 0.0  # fully transparent: the JPEG shows the white it is composited on
    write_image(tmp_path / "in.png", rgba)
    out = tmp_path / "out.jpg"
    assert main(["upscale", str(tmp_path / "in.png"), "-o", str(out), "--model", "bicubic", "--scale", "2"]) == 0
    err = capsys.readouterr().err
    assert out.is_file() and not (tmp_path / "out.png").exists()
    assert Image.open(out).format == "JPEG" and Image.open(out).size == (14, 12)
    assert np.asarray(Image.open(out)).min() >= 250
    assert f"wrote {out}" in err and "composited on white" in err


def test_every_written_path_is_printed(tmp_path, capsys):
    for name in ("a", "b"):
        write_image(tmp_path / "in" / f"{name}.png", torch.rand(3, 5, 5))
    assert main(["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", "bicubic",
                 "--scale", "2", "--no-progress"]) == 0
    err = capsys.readouterr().err
    for name in ("a", "b"):
        assert f"wrote {tmp_path / 'out' / f'{name}_x2.png'}" in err


def test_single_output_with_any_image_suffix(tmp_path, capsys):
    write_image(tmp_path / "in.png", torch.rand(3, 5, 5))
    assert main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "o.webp"), "--model", "bicubic",
                 "--scale", "2"]) == 0
    assert Image.open(tmp_path / "o.webp").format == "WEBP"


@pytest.mark.parametrize("command", ["upscale", "eval", "export", "train"])
def test_output_below_a_file_is_one_line(tmp_path, capsys, checkpoint, command):
    blocker = tmp_path / "blocker"
    blocker.write_text("I am a file")
    write_image(tmp_path / "data" / "a.png", torch.rand(3, 24, 24))
    argv = {
        "upscale": ["upscale", str(tmp_path / "data" / "a.png"), "-o", str(blocker / "out.png"), "--model",
                    "bicubic", "--scale", "2"],
        "eval": ["eval", "--model", "bicubic", "--data", str(tmp_path / "data"), "--scale", "2",
                 "--save", str(blocker / "sr")],
        "export": ["export", "--checkpoint", str(checkpoint), "-o", str(blocker / "w.safetensors")],
        "train": ["train", "--config", "demo", f"log.out_dir={blocker / 'run'}",
                  f"data.train_dir={tmp_path / 'data'}", "train.iterations=1", "train.milestones=[1]", "data.patch_size=8",
                  "data.batch_size=1", "log.progress=false"],
    }[command]
    assert main(argv) == 2
    line = _one_error_line(capsys, str(blocker))
    assert "file, not a folder" in line, line


def test_unwritable_output_says_cannot_write_the_target(tmp_path, capsys, monkeypatch, checkpoint):
    write_image(tmp_path / "in.png", torch.rand(3, 5, 5))

    def refuse(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(Image.Image, "save", refuse)
    out = tmp_path / "out" / "x.png"
    assert main(["upscale", str(tmp_path / "in.png"), "-o", str(out), "--model", "bicubic", "--scale", "2"]) == 2
    line = _one_error_line(capsys, f"cannot write {out}: Operation not permitted")
    assert "format" not in line

    real_open = os.open

    def refuse_tmp(path, *args, **kwargs):
        if str(path).endswith(".tmp"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse_tmp)
    target = tmp_path / "w.safetensors"
    assert main(["export", "--checkpoint", str(checkpoint), "-o", str(target)]) == 2
    line = _one_error_line(capsys, f"cannot write {target}: Permission denied")
    assert ".tmp" not in line, line


def test_checkpoints_get_the_umask_mode(tmp_path, checkpoint):
    from dlsn.sr.checkpoint import atomic_save

    old = os.umask(0o022)
    try:
        atomic_save({"x": torch.zeros(1)}, tmp_path / "a.pt")
        assert main(["export", "--checkpoint", str(checkpoint), "-o", str(tmp_path / "w.safetensors")]) == 0
        os.umask(0o077)
        atomic_save({"x": torch.zeros(1)}, tmp_path / "private.pt")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.pt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "w.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "private.pt").stat().st_mode) == 0o600
    assert not list(tmp_path.glob(".*.tmp"))
