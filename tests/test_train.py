"""Training loop: a tiny DLSN for a few steps; exact resume, Ctrl-C safety, fine-tuning, DDP on gloo."""
import os
import signal
import socket

import pytest
import torch
import torch.multiprocessing as mp

from dlsn.sr import checkpoint as ckpt
from dlsn.sr.config import config_from_dict
from dlsn.sr.data import ImagePairs, PatchPairs
from dlsn.sr.train import TrainingInterrupted, train


def tiny_config(out_dir, **train_overrides):
    return config_from_dict({
        "model": dict(n_resgroups=1, n_resblocks=1, n_feats=16, chunk_size=16, n_hashes=2),
        "data": dict(patch_size=12, batch_size=2, num_workers=0),
        "train": {**dict(iterations=6, milestones=[2, 4], lr=1e-3), **train_overrides},
        "log": dict(out_dir=str(out_dir), log_every=1, val_every=0, save_every=0, progress=False),
    })


@pytest.fixture(scope="module")
def pairs():
    g = torch.Generator().manual_seed(0)
    return ImagePairs([torch.rand(3, 40, 44, generator=g) for _ in range(3)], 2)


def final_state(out_dir, iteration=6):
    return torch.load(out_dir / "checkpoints" / f"iter_{iteration:08d}.pt", weights_only=True)


def assert_states_equal(a, b):
    for part in ("model", "ema"):
        if a[part] is None:
            assert b[part] is None
            continue
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key}"
    assert a["scheduler"] == b["scheduler"] and a["consumed"] == b["consumed"]
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])


def models_differ(a, b):
    return any(not torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


@pytest.mark.parametrize("extra", [dict(ema_decay=0.9), dict(grad_clip=0.05, amp="bf16")])
def test_resume_is_bit_exact(tmp_path, pairs, extra):
    straight = train(tiny_config(tmp_path / "straight", **extra), pairs=pairs, quiet=True)
    split = tmp_path / "split"
    train(tiny_config(split, **extra), pairs=pairs, stop_at=3, quiet=True)
    assert sorted(p.name for p in (split / "checkpoints").iterdir()) == ["iter_00000003.pt"]
    resumed = train(tiny_config(split, **extra), pairs=pairs, resume="auto", quiet=True)
    assert straight["iteration"] == resumed["iteration"] == 6
    a, b = final_state(tmp_path / "straight"), final_state(split)
    assert_states_equal(a, b)
    assert a["scheduler"]["last_epoch"] == 6 and a["optimizer"]["param_groups"][0]["lr"] == pytest.approx(2.5e-4)
    assert (split / "model.pt").is_file()
    rows = (split / "log.csv").read_text().splitlines()
    assert rows[0] == "iteration,loss,lr,val_psnr,seconds" and len(rows) == 7


def test_resume_depends_on_restored_rng(tmp_path, pairs, monkeypatch):
    """The comparison above can fail: skipping the RNG restore (GLA rotations) changes the result."""
    train(tiny_config(tmp_path / "straight"), pairs=pairs, quiet=True)
    train(tiny_config(tmp_path / "split"), pairs=pairs, stop_at=3, quiet=True)
    monkeypatch.setattr(ckpt, "set_rng_state", lambda state: torch.manual_seed(123))
    train(tiny_config(tmp_path / "split"), pairs=pairs, resume="auto", quiet=True)
    assert models_differ(final_state(tmp_path / "straight"), final_state(tmp_path / "split"))


def test_ctrl_c_checkpoints_and_resumes_exactly(tmp_path, pairs):
    train(tiny_config(tmp_path / "straight"), pairs=pairs, quiet=True)

    def interrupt(iteration):
        if iteration == 4:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted, match="iteration 4"):
        train(tiny_config(tmp_path / "run"), pairs=pairs, step_callback=interrupt, quiet=True)
    assert (tmp_path / "run" / "checkpoints" / "iter_00000004.pt").is_file()
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.suffix == ".tmp"]
    train(tiny_config(tmp_path / "run"), pairs=pairs, resume=tmp_path / "run" / "checkpoints" / "iter_00000004.pt",
          quiet=True)
    assert_states_equal(final_state(tmp_path / "straight"), final_state(tmp_path / "run"))


def test_keep_last_prunes_old_checkpoints(tmp_path, pairs):
    cfg = tiny_config(tmp_path)
    cfg.log.save_every, cfg.log.keep_last = 2, 2
    train(cfg, pairs=pairs, quiet=True)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["iter_00000004.pt", "iter_00000006.pt"]


def test_fine_tune_loads_all_but_the_upsampler(tmp_path, pairs):
    train(tiny_config(tmp_path / "x2"), pairs=pairs, quiet=True)
    x2_weights = torch.load(tmp_path / "x2" / "model.pt", weights_only=True)["params"]
    pairs_x4 = ImagePairs([hr for _, hr in pairs], 4)
    cfg = tiny_config(tmp_path / "x4", pretrained=str(tmp_path / "x2" / "model.pt"), lr=0.0)
    cfg.model.scale, cfg.data.patch_size, cfg.train.iterations, cfg.train.milestones = 4, 8, 1, []
    model = train(cfg, pairs=pairs_x4, quiet=True)["model"]
    own = model.state_dict()
    assert own["tail.0.2.weight"].shape == (64, 16, 3, 3)
    for key, value in x2_weights.items():
        if not key.startswith("tail.0."):
            assert torch.equal(own[key], value), key  # lr 0: exactly the pretrained values
    assert not torch.equal(own["tail.0.0.weight"], x2_weights["tail.0.0.weight"])


def test_resume_rejects_published_weights(tmp_path, pairs):
    train(tiny_config(tmp_path), pairs=pairs, quiet=True)
    with pytest.raises(ckpt.CheckpointError, match="not a dlsn training checkpoint"):
        train(tiny_config(tmp_path), pairs=pairs, resume=tmp_path / "model.pt", quiet=True)


def test_resume_auto_without_a_checkpoint_starts_afresh(tmp_path, pairs, capsys):
    """A requeued job passes --resume auto from its first launch on: with nothing to resume it is the
    fresh run, said in one line."""
    train(tiny_config(tmp_path / "fresh"), pairs=pairs, quiet=True)
    result = train(tiny_config(tmp_path / "auto"), pairs=pairs, resume="auto")
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"--resume auto: no checkpoint in {tmp_path / 'auto' / 'checkpoints'} yet: starting a fresh run"
    assert result["iteration"] == 6
    assert_states_equal(final_state(tmp_path / "fresh"), final_state(tmp_path / "auto"))


def test_images_smaller_than_the_patch(tmp_path):
    small = ImagePairs([torch.rand(3, 16, 40)], 2, names=["thin.png"])
    with pytest.raises(ValueError, match=r"thin.png: LR image 8x20 is smaller than the training patch 12x12"):
        train(tiny_config(tmp_path), pairs=small, quiet=True)


def test_patches_are_aligned_and_keyed():
    hr = torch.rand(3, 40, 44)
    pairs = ImagePairs([hr], 2)
    patches = PatchPairs(pairs, 2, 10, augment=True, rgb_range=255.0)
    lr_a, hr_a = patches[(0, 7, 0)]
    lr_b, hr_b = patches[(0, 7, 0)]
    assert torch.equal(lr_a, lr_b) and torch.equal(hr_a, hr_b)
    assert lr_a.shape == (3, 10, 10) and hr_a.shape == (3, 20, 20) and hr_a.max() > 1.5
    # The HR patch is a crop of the (flipped/transposed) HR image: find it among the 8 symmetries.
    candidates = [hr * 255.0, (hr * 255.0).transpose(-1, -2)]
    found = False
    for img in candidates:
        for dims in ([], [-1], [-2], [-1, -2]):
            view = img.flip(dims) if dims else img
            windows = view.unfold(1, 20, 1).unfold(2, 20, 1)
            found |= bool((windows == hr_a.unsqueeze(1).unsqueeze(1).permute(0, 1, 2, 3, 4)).flatten(3).all(-1).all(0).any())
    assert found


def _ddp_worker(rank, port, out_dir, pairs):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    model = train(tiny_config(out_dir, iterations=2, milestones=[1]), pairs=pairs, quiet=True)["model"]
    torch.save(model.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_ddp_gloo_two_processes(tmp_path, pairs):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, str(tmp_path), pairs), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for key in a:
        assert torch.equal(a[key], b[key]), key  # DDP kept the replicas in sync
    state = final_state(tmp_path, 2)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert not (tmp_path / "checkpoints" / "rank1").exists() and (tmp_path / "log.csv").is_file()


def test_validation_is_logged_and_leaves_training_untouched(tmp_path, pairs):
    train(tiny_config(tmp_path / "plain"), pairs=pairs, quiet=True)
    cfg = tiny_config(tmp_path / "val")
    cfg.log.val_every = 3
    result = train(cfg, pairs=pairs, val_pairs=ImagePairs([hr for _, hr in pairs][:2], 2), quiet=True)
    rows = (tmp_path / "val" / "log.csv").read_text().splitlines()
    psnr = [row.split(",")[3] for row in rows[1:]]
    assert psnr[2] and psnr[5] and not psnr[0]  # iterations 3 and 6
    assert 5 < float(psnr[5]) < 60 and result["val_psnr"] == pytest.approx(float(psnr[5]))
    assert_states_equal(final_state(tmp_path / "plain"), final_state(tmp_path / "val"))


def test_fp16_autocast_with_grad_scaler(tmp_path, pairs):
    result = train(tiny_config(tmp_path, amp="fp16", iterations=2, milestones=[1]), pairs=pairs, quiet=True)
    state = final_state(tmp_path, 2)
    assert state["scaler"] and torch.isfinite(torch.tensor(result["loss"]))
