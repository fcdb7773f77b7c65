"""What a new user hits (issue 20, part 3): progress and `wrote` lines, redirected output, a shortened
demo schedule, another command's outputs, checkpoint folders, output names, pickle warnings, requeued
jobs. The memory budget and whole-image progress are in test_tiling.py, the README in test_readme.py."""
import io
import json
import os
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch

import dlsn
from dlsn.sr import checkpoint as ckpt
from dlsn.sr import inference_cli
from dlsn.sr.cli import main
from dlsn.sr.config import apply_overrides, load_config, packaged_names
from dlsn.sr.data import ImagePairs
from dlsn.sr.imageio import read_image, write_image
from dlsn.sr.train import train

TINY = dict(n_resgroups=1, n_resblocks=1, n_feats=8, chunk_size=16, n_hashes=1)
TINY_TRAIN = ["train.device=cpu", "model.n_feats=8", "model.chunk_size=16", "data.patch_size=12",
              "data.batch_size=2", "log.progress=false"]


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _one_line(text):
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


# --- 4, 13: progress in a terminal and redirected -------------------------------------------------

def test_wrote_lines_do_not_overwrite_the_progress_bar(tmp_path, monkeypatch):
    for name in ("a", "b", "c"):
        write_image(tmp_path / "in" / f"{name}.png", torch.rand(3, 6, 5))
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", "bicubic",
                 "--scale", "2"]) == 0
    text = terminal.getvalue()
    assert "\r" in text  # a bar was drawn
    wrote = [line for line in text.split("\n") if "wrote " in line]
    assert len(wrote) == 3
    for line in wrote:  # what is left on the line after the bar's last carriage return
        assert line.split("\r")[-1].startswith("wrote "), repr(line)


def test_upscale_progress_is_plain_lines_when_redirected(tmp_path, checkpoint, capsys, monkeypatch):
    monkeypatch.setattr(inference_cli, "PROGRESS_DELAY", 0.0)
    write_image(tmp_path / "in.png", torch.rand(3, 20, 20))
    assert main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "o.png"), "--checkpoint",
                 str(checkpoint), "--scale", "2", "--tile", "8"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err, repr(err)
    assert "tiles: 25/25 tile (100%)" in err and f"wrote {tmp_path / 'o.png'}" in err


def test_training_progress_is_plain_lines_when_redirected(tmp_path, capsys):
    cfg = load_config("demo", [f"log.out_dir={tmp_path}", "train.iterations=3", "model.n_feats=8",
                               "model.chunk_size=16", "data.patch_size=12", "data.batch_size=2", "train.device=cpu"])
    assert cfg.log.progress
    pairs = ImagePairs([torch.rand(3, 30, 30, generator=torch.Generator().manual_seed(0))], 2)
    train(cfg, pairs=pairs)
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err, repr(err)
    assert "train: 3/3 it (100%)" in err


# --- 5: `dlsn train --config demo train.iterations=30` ----------------------------------------------

def test_a_shortened_schedule_scales_its_milestones(capsys):
    cfg = apply_overrides(load_config("demo"), ["train.iterations=30"])
    assert cfg.train.iterations == 30 and cfg.train.milestones == [20, 26]
    assert "train.milestones [267, 347] scaled with train.iterations 400 -> 30: [20, 26]" in capsys.readouterr().err
    chosen = apply_overrides(load_config("demo"), ["train.iterations=30", "train.milestones=[10]"])
    assert chosen.train.milestones == [10] and capsys.readouterr().err == ""
    assert load_config("dlsn_x2", ["train.iterations=150000"]).train.milestones == [30000, 60000, 90000, 120000]


def test_train_config_demo_trains_on_the_demo_photographs(tmp_path, capsys, monkeypatch):
    pytest.importorskip("skimage")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", "demo", "train.iterations=2", *TINY_TRAIN]) == 0
    assert (tmp_path / "runs" / "demo_train" / "model.pt").is_file()  # not runs/demo, where `dlsn demo` writes
    capsys.readouterr()
    # Again: the folder now holds that run's weights, which a fresh run would overwrite.
    assert main(["train", "--config", "demo", "train.iterations=2", *TINY_TRAIN]) == 2
    note, line = capsys.readouterr().err.strip().splitlines()
    assert note.startswith("note: train.milestones") and line.startswith("dlsn train: error: ")
    assert "runs/demo_train holds the outputs of another run" in line and "--overwrite" in line
    assert "--resume auto" in line and "log.out_dir=DIR" in line


def test_train_does_not_overwrite_the_demo_silently(tmp_path, capsys):
    demo = tmp_path / "demo"
    torch.manual_seed(0)
    ckpt.save_weights(dlsn.DLSN(scale=2, **TINY).state_dict(), {}, demo / "model.pt")
    (demo / "results.json").write_text("{}")
    data = tmp_path / "data"
    write_image(data / "0.png", torch.rand(3, 30, 30))
    argv = ["train", "--config", "demo", f"log.out_dir={demo}", f"data.train_dir={data}", "train.iterations=1",
            "train.milestones=[1]", *TINY_TRAIN]
    before = (demo / "model.pt").read_bytes()
    assert main(argv) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"{demo} holds the outputs of dlsn demo (model.pt, results.json)" in line and "--overwrite" in line
    assert (demo / "model.pt").read_bytes() == before
    assert main(argv + ["--overwrite"]) == 0
    assert "--overwrite: removed 2 file(s) of the previous run" in capsys.readouterr().out
    assert (demo / "model.pt").read_bytes() != before and not (demo / "results.json").exists()


# --- 6, 10: checkpoints -----------------------------------------------------------------------------

def test_a_checkpoint_folder_names_the_files_in_it(tmp_path, capsys):
    run = tmp_path / "run"
    torch.manual_seed(0)
    ckpt.save_weights(dlsn.DLSN(scale=2, **TINY).state_dict(), {}, run / "model.pt")
    ckpt.save_training_checkpoint(run / "checkpoints" / "iter_00000003.pt", iteration=3)
    write_image(tmp_path / "in.png", torch.rand(3, 8, 8))
    assert main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "o.png"), "--checkpoint", str(run),
                 "--scale", "2"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "is a folder, not a file" in line and "model.pt, checkpoints/iter_00000003.pt" in line
    assert "not found" not in line
    (tmp_path / "empty").mkdir()
    with pytest.raises(ckpt.CheckpointError, match="is a folder, not a file, and holds no checkpoint"):
        ckpt.load_model(tmp_path / "empty")


class _NotATensor:
    pass


def test_refused_pickle_is_dlsn_s_line_without_torch_s_warning(tmp_path, capsys):
    """torch warns of pickle protocols above 2 before its safe loader refuses them: dlsn's one line
    says why (the protocol) and torch's warning stays out."""
    torch.manual_seed(0)
    state = dlsn.DLSN(scale=2, **TINY).state_dict()
    torch.save({"params": state, "extra": _NotATensor()}, tmp_path / "unsafe_p4.pt", pickle_protocol=4)
    torch.save(state, tmp_path / "plain_p4.pt", pickle_protocol=4)
    write_image(tmp_path / "in.png", torch.rand(3, 8, 8))
    for name in ("unsafe_p4.pt", "plain_p4.pt"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "o.png"), "--checkpoint",
                         str(tmp_path / name), "--scale", "2"]) == 2
        assert [str(w.message) for w in caught] == []
        line = _one_line(capsys.readouterr().err)
        assert f"{tmp_path / name}: not a readable dlsn checkpoint" in line and "pickled with protocol 4" in line


# --- 7: output names --------------------------------------------------------------------------------

@pytest.mark.parametrize("output, inputs, needle", [
    ("out/two.png", ("a", "b"), "names one image file, but there are 2 inputs"),
    ("out/x.xyz", ("a",), "'.xyz' is not an image format"),
    ("a.png", ("a",), "would overwrite the input"),
])
def test_outputs_that_cannot_be_meant_are_refused(tmp_path, capsys, monkeypatch, output, inputs, needle):
    monkeypatch.chdir(tmp_path)
    for name in inputs:
        write_image(tmp_path / f"{name}.png", torch.rand(3, 5, 5))
    before = {name: (tmp_path / f"{name}.png").read_bytes() for name in inputs}
    assert main(["upscale", *[f"{name}.png" for name in inputs], "-o", output, "--model", "bicubic",
                 "--scale", "2"]) == 2
    assert needle in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()
    assert before == {name: (tmp_path / f"{name}.png").read_bytes() for name in inputs}


def test_a_trailing_slash_makes_any_name_a_folder(tmp_path, capsys):
    write_image(tmp_path / "a.png", torch.rand(3, 5, 5))
    assert main(["upscale", str(tmp_path / "a.png"), "-o", f"{tmp_path / 'v1.xyz'}/", "--model", "bicubic",
                 "--scale", "2"]) == 0
    assert read_image(tmp_path / "v1.xyz" / "a_x2.png").shape == (3, 10, 10)


def test_two_inputs_onto_one_output_and_outputs_onto_inputs_are_refused(tmp_path, capsys):
    for name in ("a.png", "a.bmp"):
        write_image(tmp_path / "in" / name, torch.rand(3, 5, 5))
    assert main(["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", "bicubic",
                 "--scale", "2"]) == 2
    assert "would both be written to" in _one_line(capsys.readouterr().err)
    write_image(tmp_path / "same" / "b.png", torch.rand(3, 5, 5))
    write_image(tmp_path / "same" / "b_x2.png", torch.rand(3, 5, 5))
    assert main(["upscale", str(tmp_path / "same"), "-o", str(tmp_path / "same"), "--model", "bicubic",
                 "--scale", "2"]) == 2
    assert "would overwrite the input" in _one_line(capsys.readouterr().err)


# --- 9: every packaged config is listed ----------------------------------------------------------------

def test_train_help_lists_every_packaged_config(capsys):
    assert len(packaged_names()) >= 18
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in packaged_names():
        assert name in text, name


# --- 12: `--resume auto` from the first launch of a job on ------------------------------------------

_REQUEUE_CONFIG = """
model: {n_resgroups: 1, n_resblocks: 1, n_feats: 8, chunk_size: 16, n_hashes: 1}
data: {train_dir: DATA, patch_size: 12, batch_size: 2, num_workers: 0}
train: {iterations: 40, milestones: [20], lr: 1.0e-3, device: cpu}
log: {out_dir: OUT, log_every: 1, val_every: 0, save_every: 1, keep_last: 3, progress: false}
"""


def _launch(config):
    env = {**os.environ, "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "1")}
    return subprocess.Popen([sys.executable, "-m", "dlsn", "train", "--config", str(config), "--resume", "auto"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _latest_iteration(out):
    found = sorted((out / "checkpoints").glob("iter_*.pt"))
    return int(found[-1].stem.split("_")[1]) if found else 0


def test_requeued_job_resumes_after_sigkill_and_ends_bitwise_equal(tmp_path):
    """One command for every launch: the first starts afresh (saying so), each later one resumes the
    latest checkpoint; killed 4 times with SIGKILL, the run ends equal to an uninterrupted one."""
    write_image(tmp_path / "data" / "0.png", torch.rand(3, 30, 34, generator=torch.Generator().manual_seed(0)))
    config = tmp_path / "run.yaml"
    config.write_text(_REQUEUE_CONFIG.replace("DATA", str(tmp_path / "data")).replace("OUT", str(tmp_path / "run")))
    straight = tmp_path / "straight.yaml"
    straight.write_text(config.read_text().replace(str(tmp_path / "run"), str(tmp_path / "straight")))
    train(load_config(straight), quiet=True)
    out, killed, outputs = tmp_path / "run", 0, []
    for _ in range(12):
        process = _launch(config)
        if killed < 4:  # SIGKILL as soon as this launch has written a checkpoint of its own
            start, deadline = _latest_iteration(out), time.monotonic() + 300
            while _latest_iteration(out) == start and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            process.kill()
        outputs.append(process.communicate(timeout=300)[0])
        killed += process.returncode == -signal.SIGKILL
        if process.returncode != -signal.SIGKILL and killed == 4:
            break
    assert killed == 4 and process.returncode == 0, outputs
    assert f"--resume auto: no checkpoint in {out / 'checkpoints'} yet: starting a fresh run" in outputs[0]
    assert all("resumed from" in output for output in outputs[1:]), outputs
    a = torch.load(tmp_path / "straight" / "checkpoints" / "iter_00000040.pt", weights_only=True)
    b = torch.load(out / "checkpoints" / "iter_00000040.pt", weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["consumed"] == b["consumed"] and a["scheduler"] == b["scheduler"]
    assert json.dumps(a["optimizer"]["param_groups"]) == json.dumps(b["optimizer"]["param_groups"])
