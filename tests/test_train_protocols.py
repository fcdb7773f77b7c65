"""Training as the paper's protocols need it: the best-validation checkpoint beside the latest (exact
across resume), the start-of-training estimate of the whole schedule and progress with an ETA."""
import csv
import re

import pytest
import torch

from dlsn.sr import checkpoint as ckpt
from dlsn.sr.cli import main
from dlsn.sr.config import config_from_dict
from dlsn.sr.data import ImagePairs
from dlsn.sr.train import _training_pairs, format_duration, train


def tiny_config(out_dir, iterations=6, **log):
    return config_from_dict({
        "model": dict(n_resgroups=1, n_resblocks=1, n_feats=16, chunk_size=16, n_hashes=2),
        "data": dict(patch_size=12, batch_size=2, num_workers=0),
        "train": dict(iterations=iterations, milestones=[2, 4], lr=1e-3),
        "log": {**dict(out_dir=str(out_dir), log_every=1, val_every=2, save_every=1, keep_last=0,
                       progress=False), **log},
    })


@pytest.fixture(scope="module")
def pairs():
    g = torch.Generator().manual_seed(0)
    return ImagePairs([torch.rand(3, 40, 44, generator=g) for _ in range(3)], 2)


@pytest.fixture(scope="module")
def val_pairs():
    g = torch.Generator().manual_seed(1)
    return ImagePairs([torch.rand(3, 24, 28, generator=g) for _ in range(2)], 2)


def logged_psnr(out_dir):
    with open(out_dir / "log.csv") as handle:
        return {int(r["iteration"]): float(r["val_psnr"]) for r in csv.DictReader(handle) if r["val_psnr"]}


def test_best_validation_weights_are_kept_beside_the_latest(tmp_path, pairs, val_pairs):
    out = tmp_path / "run"
    result = train(tiny_config(out), pairs=pairs, val_pairs=val_pairs, quiet=True)
    psnr = logged_psnr(out)
    assert sorted(psnr) == [2, 4, 6]
    best_iteration = max(psnr, key=psnr.get)
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["best"]["iteration"] == best_iteration == result["best"]["iteration"]
    assert best["best"]["psnr"] == pytest.approx(psnr[best_iteration], abs=1e-3)
    at_best = ckpt.read_checkpoint(out / "checkpoints" / f"iter_{best_iteration:08d}.pt")
    for key, value in at_best["model"].items():
        assert torch.equal(best["params"][key], value), key
    assert at_best["best"]["iteration"] == best_iteration
    # The latest is still there, and best.pt is a weights file the inference loader reads.
    assert (out / "model.pt").is_file() and (out / "checkpoints" / "iter_00000006.pt").is_file()
    model = ckpt.load_model(out / "best.pt")
    assert model.scale == 2 and not list(out.glob("*.tmp")) and not list(out.glob(".best.pt*"))


def test_best_record_survives_resume_exactly(tmp_path, pairs, val_pairs):
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(tiny_config(straight), pairs=pairs, val_pairs=val_pairs, quiet=True)
    train(tiny_config(split), pairs=pairs, val_pairs=val_pairs, stop_at=3, quiet=True)
    train(tiny_config(split), pairs=pairs, val_pairs=val_pairs, resume="auto", quiet=True)
    a, b = (torch.load(d / "best.pt", weights_only=True) for d in (straight, split))
    assert a["best"] == b["best"]
    for key in a["params"]:
        assert torch.equal(a["params"][key], b["params"][key]), key


def test_a_worse_validation_after_resume_keeps_the_earlier_best(tmp_path, pairs, val_pairs):
    out = tmp_path / "run"
    train(tiny_config(out), pairs=pairs, val_pairs=val_pairs, stop_at=2, quiet=True)
    state = ckpt.read_checkpoint(out / "checkpoints" / "iter_00000002.pt")
    state["best"]["psnr"] = 1e9  # pretend iteration 2 was unbeatable
    ckpt.atomic_save(state, out / "checkpoints" / "iter_00000002.pt")
    before = (out / "best.pt").read_bytes()
    result = train(tiny_config(out), pairs=pairs, val_pairs=val_pairs, resume="auto", quiet=True)
    assert result["best"]["iteration"] == 2 and (out / "best.pt").read_bytes() == before


def test_schedule_estimate_and_progress_with_eta(tmp_path, pairs, capsys):
    out = tmp_path / "run"
    cfg = tiny_config(out, iterations=24, val_every=0, save_every=0, log_every=4)
    cfg.train.milestones = [12]
    train(cfg, pairs=pairs)
    printed = capsys.readouterr().out
    text = (out / "train.log").read_text()
    estimate = re.search(r"speed: ([0-9.]+) s/iteration over iterations 2-21; estimated wall time of the "
                         r"whole schedule \(24 iterations\): ([0-9:]+)", text)
    assert estimate, text
    seconds = sum(int(p) * 60 ** i for i, p in enumerate(reversed(estimate.group(2).split(":"))))
    assert seconds == round(float(estimate.group(1)) * 24) or abs(seconds - float(estimate.group(1)) * 24) <= 1
    progress = re.findall(r"iteration (\d+)/24 loss [0-9.]+ lr [0-9.e+-]+ [0-9.]+ s/it data (\d+)% elapsed [0-9:]+ "
                          r"ETA ([0-9:]+)", text)
    assert [int(i) for i, _, _ in progress] == [4, 8, 12, 16, 20, 24] and progress[-1][2] == "0:00:00"
    assert all(0 <= int(share) <= 100 for _, share, _ in progress)  # the share of each step spent waiting for data
    assert "estimated wall time of the whole schedule" in printed and "ETA" in printed


def test_quiet_training_prints_nothing_but_still_logs(tmp_path, pairs, capsys):
    out = tmp_path / "run"
    train(tiny_config(out, iterations=4, val_every=0, save_every=0), pairs=pairs, quiet=True)
    assert capsys.readouterr().out == ""
    assert "ETA" in (out / "train.log").read_text()


@pytest.mark.parametrize("seconds, text", [(7.4, "0:00:07"), (3 * 3600 + 65, "3:01:05"),
                                           (2 * 86400 + 4 * 3600 + 5, "2 d 04:00:05")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_missing_validation_benchmark_is_a_one_line_error(tmp_path, capsys):
    from PIL import Image

    hr = tmp_path / "data" / "HR"
    hr.mkdir(parents=True)
    Image.new("RGB", (40, 40)).save(hr / "0001.png")
    code = main(["train", "--config", "demo", f"data.train_dir={tmp_path / 'data'}", f"log.out_dir={tmp_path / 'run'}",
                 f"data.val_dir={tmp_path / 'Set14'}", "log.val_every=1", "train.iterations=1", "train.milestones=[]",
                 "train.device=cpu", "log.progress=false"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "Set14" in err and "not found" in err


def test_dn_noise_level_reaches_the_training_pairs(tmp_path):
    from PIL import Image

    Image.new("RGB", (12, 12)).save(tmp_path / "0001.png")
    cfg = config_from_dict({"data": {"train_dir": str(tmp_path), "degradation": "dn", "noise_level": 15}})
    train_pairs = _training_pairs(cfg)
    assert train_pairs.degradation == "dn" and train_pairs.noise_level == 15.0
