"""The API documents itself; optional TensorBoard logging works where installed (issue 13, items 8, 11)."""
import importlib.util
import pydoc

import pytest
import torch

import dlsn


def test_dlsn_forward_is_documented_on_the_method():
    text = pydoc.render_doc(dlsn.DLSN.forward, renderer=pydoc.plaintext)
    for needle in ("[N, n_colors, h, w]", "scale*h", "rgb_range", "eval mode", "training mode", "rotations",
                   "backend", "dtype"):
        assert needle in text, needle


def _tiny_run(out_dir, tensorboard):
    from dlsn.sr.config import config_from_dict
    from dlsn.sr.data import ImagePairs
    from dlsn.sr.train import train

    cfg = config_from_dict({
        "model": dict(n_resgroups=1, n_resblocks=1, n_feats=8, chunk_size=16, n_hashes=1),
        "data": dict(patch_size=8, batch_size=1, num_workers=0),
        "train": dict(iterations=3, milestones=[2], lr=1e-3),
        "log": dict(out_dir=str(out_dir), log_every=1, val_every=0, save_every=0, progress=False,
                    tensorboard=tensorboard),
    })
    pairs = ImagePairs([torch.rand(3, 20, 20, generator=torch.Generator().manual_seed(0))], 2)
    return train(cfg, pairs=pairs, quiet=True)


def test_missing_tensorboard_is_a_one_line_notice(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    result = _tiny_run(tmp_path, tensorboard=True)
    assert result["iteration"] == 3
    err = capsys.readouterr().err.strip().splitlines()
    notices = [line for line in err if "TensorBoard" in line]
    assert len(notices) == 1 and notices[0].startswith("notice:") and "pip install tensorboard" in notices[0]
    assert len((tmp_path / "log.csv").read_text().splitlines()) == 4  # header + 3 iterations


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                    reason="tensorboard is not installed (pip install tensorboard to run this test)")
def test_tensorboard_logs_the_training_scalars(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = _tiny_run(tmp_path, tensorboard=True)
    assert "notice" not in capsys.readouterr().err
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/lr"} <= set(events.Tags()["scalars"])
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 3]
    assert loss[-1].value == pytest.approx(result["loss"], rel=1e-6)
    assert events.Scalars("train/lr")[0].value == pytest.approx(1e-3)
