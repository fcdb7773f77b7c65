"""The `dlsn` command line: help works, every subcommand rejects bad input clearly with status != 0."""
import subprocess
import sys

import pytest
import torch

import dlsn
from dlsn.sr.cli import main


def test_python_m_dlsn_help():
    result = subprocess.run([sys.executable, "-m", "dlsn", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for command in ("train", "eval", "upscale", "demo", "export"):
        assert command in result.stdout


@pytest.mark.parametrize("command", ["train", "eval", "upscale", "demo", "export"])
def test_subcommand_help(command, capsys):
    assert main([command, "--help"]) == 0
    assert f"dlsn {command}" in capsys.readouterr().out


def test_no_command_and_unknown_command(capsys):
    assert main([]) == 2
    assert main(["trian"]) == 2
    assert "invalid choice: 'trian'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["train"], "the following arguments are required: --config"),
    (["train", "--config", "missing.yaml"], "config file 'missing.yaml' not found"),
    (["train", "--config", "demo", "train.lrr=1"], "did you mean 'lr'"),
    (["train", "--config", "dlsn_x2", "train.device=cpu"], "data.train_dir is not set"),
    (["train", "--config", "demo", "data.train_dir=/nonexistent/DIV2K", "train.device=cpu"], "/nonexistent/DIV2K"),
    (["export", "--checkpoint", "missing.pth", "-o", "x.safetensors"], "checkpoint 'missing.pth' not found"),
    (["export", "--checkpoint", "x.pth", "-o", "x.bin"], "cannot tell the format from the suffix '.bin'"),
    (["demo", "--iters", "0"], "--iters must be positive"),
    (["demo", "--data", "/nonexistent/Set5"], "/nonexistent/Set5"),
    (["demo", "model.scale=3"], "the demo is x2"),
])
def test_bad_input_is_a_clear_error(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("command", ["eval", "upscale"])
def test_eval_and_upscale_bad_input(command, capsys, tmp_path):
    code = main([command, "--checkpoint", str(tmp_path / "missing.pth"), "--scale", "2", "--data",
                 str(tmp_path / "missing_folder")]
                if command == "eval" else
                [command, str(tmp_path / "missing.png"), "-o", str(tmp_path / "out"),
                 "--checkpoint", str(tmp_path / "missing.pth"), "--scale", "2"])
    assert code != 0
    err = capsys.readouterr().err
    assert err.startswith(f"dlsn {command}: error:") and "missing" in err


def test_export_round_trip(tmp_path, capsys):
    torch.manual_seed(0)
    model = dlsn.DLSN(scale=2, n_resgroups=1, n_resblocks=1, n_feats=16, chunk_size=16)
    torch.save({"params": model.state_dict()}, tmp_path / "m.pth")
    assert main(["export", "--checkpoint", str(tmp_path / "m.pth"), "-o", str(tmp_path / "m.safetensors")]) == 0
    from safetensors.torch import load_file

    exported = load_file(str(tmp_path / "m.safetensors"))
    assert exported.keys() == model.state_dict().keys()
    assert all(torch.equal(exported[k], v) for k, v in model.state_dict().items())


def test_train_from_cli(tmp_path, monkeypatch):
    """`dlsn train` end to end on a folder of images (DIV2K layout: HR only, LR made on the fly)."""
    from PIL import Image

    hr = tmp_path / "data" / "HR"
    hr.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for i in range(2):
        array = (torch.rand(40, 48, 3, generator=g) * 255).byte().numpy()
        Image.fromarray(array).save(hr / f"{i:04d}.png")
    out = tmp_path / "run"
    argv = ["train", "--config", "demo", f"data.train_dir={tmp_path / 'data'}", f"log.out_dir={out}",
            "train.iterations=2", "train.milestones=[1]", "model.n_feats=8", "model.chunk_size=16",
            "data.patch_size=12", "data.batch_size=2", "train.device=cpu", "log.progress=false"]
    assert main(argv) == 0
    assert (out / "model.pt").is_file() and (out / "checkpoints" / "iter_00000002.pt").is_file()
    assert main(argv[:-3] + ["train.iterations=3", "train.device=cpu", "log.progress=false", ]
                + ["--resume", "auto"]) == 0
    assert (out / "checkpoints" / "iter_00000003.pt").is_file()
