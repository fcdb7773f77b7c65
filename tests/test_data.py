import pytest
import torch

from dlsn.sr.data import BenchmarkPairs, TrainPairs
from dlsn.sr.degradations import bicubic_down, blur_down
from dlsn.sr.imageio import read_image, write_image


def _make_hr(folder, names=("0001", "0002"), size=(26, 31)):
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for name in names:
        write_image(folder / f"{name}.png", torch.rand(3, *size, generator=g))


def test_hr_only_folder_makes_lr_on_the_fly(tmp_path):
    _make_hr(tmp_path)
    pairs = TrainPairs(tmp_path, scale=3)
    assert len(pairs) == 2 and pairs.names == ["0001", "0002"]
    lr, hr = pairs[0]
    assert hr.shape == (3, 24, 30) and lr.shape == (3, 8, 10)  # HR cropped to a multiple of 3
    assert torch.equal(lr, bicubic_down(hr, 3))
    assert torch.equal(TrainPairs(tmp_path, 3, "bd")[1][0], blur_down(read_image(tmp_path / "0002.png")[:, :24, :30], 3))


def test_div2k_layout_with_premade_lr(tmp_path):
    _make_hr(tmp_path / "HR", size=(24, 30))
    lr_dir = tmp_path / "LR_bicubic" / "X2"
    lr_dir.mkdir(parents=True)
    marker = torch.full((3, 12, 15), 0.25)
    for name in ("0001", "0002"):
        write_image(lr_dir / f"{name}x2.png", marker)
    lr, hr = TrainPairs(tmp_path, scale=2)[1]
    assert torch.allclose(lr, marker, atol=1 / 255) and hr.shape == (3, 24, 30)
    # Pre-made LR is BI only; other degradations (or use_premade=False) make LR from HR.
    lr_bd, _ = TrainPairs(tmp_path, scale=2, degradation="bd")[1]
    assert not torch.allclose(lr_bd, marker, atol=1 / 255)
    (lr_dir / "0002x2.png").unlink()
    with pytest.raises(FileNotFoundError, match="0002x2.png"):
        TrainPairs(tmp_path, scale=2)


def test_dn_noise_is_deterministic_per_seed_epoch_image(tmp_path):
    _make_hr(tmp_path)
    a = TrainPairs(tmp_path, 2, "dn", seed=1)
    b = TrainPairs(tmp_path, 2, "dn", seed=1)
    assert torch.equal(a[1][0], b[1][0])  # same seed, any access order
    assert not torch.equal(a[0][0], TrainPairs(tmp_path, 2, "dn", seed=2)[0][0])
    first = a[0][0]
    a.set_epoch(1)
    assert not torch.equal(first, a[0][0])
    a.set_epoch(0)
    assert torch.equal(first, a[0][0])  # resuming at an epoch reproduces its noise


def test_benchmark_caches_and_limits(tmp_path):
    _make_hr(tmp_path, names=("a", "b", "c"))
    pairs = BenchmarkPairs(tmp_path, 2, max_images=2)
    assert pairs.names == ["a", "b"]
    assert pairs[0][0] is pairs[0][0]
    with pytest.raises(IndexError):
        pairs[2]


def test_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        TrainPairs(tmp_path / "nope", 2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        TrainPairs(tmp_path / "empty", 2)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        TrainPairs(tmp_path / "file.txt", 2)
    with pytest.raises(ValueError, match="unknown degradation"):
        TrainPairs(tmp_path, 2, "blur")
    _make_hr(tmp_path / "tiny", names=("t",), size=(2, 9))
    with pytest.raises(ValueError, match="t.png.*smaller than the scale"):
        TrainPairs(tmp_path / "tiny", 3)[0]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="x.png"):
        TrainPairs(tmp_path / "bad", 2)[0]


def test_patches_from_train_pairs(tmp_path):
    # The training loop's patch sampler (dlsn.sr.data.PatchPairs) on these pairs: aligned and clear on small images.
    from dlsn.sr.data import PatchPairs

    _make_hr(tmp_path, size=(24, 30))
    pairs = TrainPairs(tmp_path, 2)
    lr, hr = PatchPairs(pairs, 2, patch_size=6, augment=False)[(0, 5, 0)]
    assert lr.shape == (3, 6, 6) and hr.shape == (3, 12, 12)
    with pytest.raises(ValueError, match="smaller than the training patch"):
        PatchPairs(pairs, 2, patch_size=20)[(0, 1, 0)]
