import os

import pytest
import torch

from dlsn.sr.data import (BenchmarkPairs, PairFolder, PatchPairs, TimedBatches, TrainPairs, loader_workers,
                          parse_num_workers, training_pairs)
from dlsn.sr.degradations import add_noise, bicubic_down, blur_down
from dlsn.sr.imageio import read_image, write_image
from dlsn.sr.prepare import prepare_dataset
from dlsn.sr.prepared import PreparedPairs


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
    _make_hr(tmp_path, size=(24, 30))
    pairs = TrainPairs(tmp_path, 2)
    lr, hr = PatchPairs(pairs, 2, patch_size=6, augment=False)[(0, 5, 0)]
    assert lr.shape == (3, 6, 6) and hr.shape == (3, 12, 12)
    with pytest.raises(ValueError, match="smaller than the training patch"):
        PatchPairs(pairs, 2, patch_size=20)[(0, 1, 0)]


class WholeImages(torch.utils.data.Dataset):
    """The pairs of a folder without `patch`/`lr_size`: PatchPairs then crops the whole degraded images."""

    def __init__(self, pairs):
        self.pairs, self.names = pairs, pairs.names

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, index):
        return self.pairs[index]


@pytest.mark.parametrize("degradation,scale,premade", [("bi", 2, False), ("bd", 3, False), ("bi", 4, False),
                                                       ("bi", 2, True)])
def test_crop_first_patches_equal_whole_image_patches(tmp_path, degradation, scale, premade):
    """PatchPairs reads a folder crop-first (PNG rows down to the patch, the degradation's window):
    the same keys give bit-identical LR and HR patches as cropping the whole degraded images. The
    images are barely larger than the patch, so the patches touch every border."""
    _make_hr(tmp_path / "HR", size=(scale * 9 + 1, scale * 11))
    if premade:
        (tmp_path / "LR_bicubic" / f"X{scale}").mkdir(parents=True)
        for name in ("0001", "0002"):
            hr = read_image(tmp_path / "HR" / f"{name}.png")[:, :scale * 9, :]
            write_image(tmp_path / "LR_bicubic" / f"X{scale}" / f"{name}x{scale}.png", bicubic_down(hr, scale))
    pairs = TrainPairs(tmp_path, scale, degradation)
    assert (pairs.lr_files is not None) == premade and pairs.lr_size(1) == (9, 11)
    crop_first, whole = PatchPairs(pairs, scale, 6), PatchPairs(WholeImages(pairs), scale, 6)
    assert crop_first.crop_first and not whole.crop_first
    for key in [(i % 2, 100 + i, 0) for i in range(24)]:
        (lr_a, hr_a), (lr_b, hr_b) = crop_first[key], whole[key]
        assert torch.equal(lr_a, lr_b) and torch.equal(hr_a, hr_b), key


def test_dn_patches_draw_their_noise_from_the_key(tmp_path):
    """DN, crop first: the BI patch plus noise drawn from the patch's generator after its crop and flips."""
    _make_hr(tmp_path, size=(40, 44))
    dn, bi = PatchPairs(TrainPairs(tmp_path, 2, "dn", noise_level=20.0), 2, 8), PatchPairs(TrainPairs(tmp_path, 2), 2, 8)
    lr, hr = dn[(1, 7, 0)]
    assert torch.equal(lr, dn[(1, 7, 3)][0]) and not torch.equal(lr, dn[(1, 8, 0)][0])
    g = torch.Generator().manual_seed(7)
    y, x = (int(torch.randint(0, n - 8 + 1, (1,), generator=g)) for n in (20, 22))
    hflip, vflip, transpose = torch.randint(0, 2, (3,), generator=g).tolist()
    clean = bicubic_down(read_image(tmp_path / "0002.png")[:, :40, :44], 2)[:, y:y + 8, x:x + 8]
    noisy = add_noise(clean, 20.0, g)
    dims = [d for d, flag in ((-1, hflip), (-2, vflip)) if flag]
    noisy = noisy.flip(dims) if dims else noisy
    assert torch.equal(lr, noisy.transpose(-1, -2) if transpose else noisy)
    assert torch.equal(hr, bi[(1, 7, 0)][1])


def test_unusable_images_are_named_when_the_folder_is_opened(tmp_path):
    _make_hr(tmp_path, names=("a", "b", "c"), size=(20, 20))
    (tmp_path / "d.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read image .*d\.png"):
        TrainPairs(tmp_path, 2)
    pairs = PairFolder(tmp_path, 2, skip_unreadable=True)
    assert pairs.names == ["a", "b", "c"] and [p.name for p, _ in pairs.skipped] == ["d.png"]
    _make_hr(tmp_path / "small", names=("big", "tiny"), size=(20, 20))
    _make_hr(tmp_path / "small", names=("tiny",), size=(20, 12))
    with pytest.raises(ValueError, match=r"^1 of 2 LR images are smaller than the training patch 8x8 "
                                         r"\(data.patch_size\): tiny \(10x6\); remove them or lower"):
        PatchPairs(TrainPairs(tmp_path / "small", 2), 2, 8)


def test_training_pairs_opens_folders_and_prepared_datasets(tmp_path):
    _make_hr(tmp_path / "src")
    assert isinstance(training_pairs(tmp_path / "src", 2), TrainPairs)
    prepare_dataset(tmp_path / "src", tmp_path / "ready", 2, workers=0, show_progress=False)
    assert isinstance(training_pairs(tmp_path / "ready", 2, "dn"), PreparedPairs)


@pytest.mark.parametrize("cpus,world,expected", [(2, 1, 1), (1, 1, 0), (8, 1, 7), (8, 2, 3), (64, 1, 16)])
def test_auto_workers_follow_the_cpus(monkeypatch, cpus, world, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    assert loader_workers("auto", world) == expected
    assert loader_workers(3, world) == loader_workers("3") == 3


def test_parse_num_workers():
    assert parse_num_workers(" Auto ") == "auto" and parse_num_workers(0) == 0
    for bad in (-1, "x", 1.5, True):
        with pytest.raises(ValueError, match="data.num_workers must be 'auto' or an integer >= 0"):
            parse_num_workers(bad)


class Failing(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        if index == 2:
            raise ValueError("cannot read image 0003.png: broken data stream")
        return torch.zeros(1)


def test_timed_batches_time_the_wait_and_give_worker_errors_one_line():
    batches = TimedBatches(torch.utils.data.DataLoader(Failing(), batch_size=1, num_workers=1))
    next(batches)
    assert batches.wait > 0
    next(batches)
    with pytest.raises(ValueError) as error:
        next(batches)
    assert str(error.value) == "cannot read image 0003.png: broken data stream"
    assert "Traceback" in str(error.value.__cause__)  # the worker's traceback stays reachable
    with pytest.raises(ValueError, match="^cannot read image 0003.png"):  # in the main process: untouched
        list(TimedBatches(torch.utils.data.DataLoader(Failing(), batch_size=1)))
