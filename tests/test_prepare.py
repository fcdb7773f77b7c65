"""dlsn prepare / prepared datasets: same patches as the images on the fly, exact size, resumable,
validated on load, one-line errors for bad input; training reads them and resumes bit-exactly."""
import errno
import json
import os

import numpy as np
import pytest
import torch

from dlsn.sr import prepare
from dlsn.sr.cli import main
from dlsn.sr.config import config_from_dict
from dlsn.sr.data import PatchPairs, TrainPairs, training_pairs
from dlsn.sr.imageio import write_image
from dlsn.sr.prepare import prepare_dataset
from dlsn.sr.prepared import HEADER_BYTES, MANIFEST, PreparedDatasetError, PreparedPairs, read_manifest
from dlsn.sr.train import train
from dlsn.sr.utils import WriteError

SIZES = [(36, 44), (41, 38), (30, 50)]  # HR sizes; not multiples of 3, so the scale crop matters


@pytest.fixture
def source(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for i, size in enumerate(SIZES):
        # smooth enough to look like a photograph, with noise so that every pixel differs
        base = torch.nn.functional.interpolate(torch.rand(1, 3, 6, 6, generator=g), size=size, mode="bilinear")[0]
        write_image(folder / f"{i:04d}.png", (base + 0.1 * torch.rand(3, *size, generator=g)).clamp(0, 1))
    return folder


def _prepare(src, out, scale=2, degradation="bi", **kwargs):
    kwargs.setdefault("workers", 0)
    return prepare_dataset(src, out, scale, degradation, show_progress=False, log=kwargs.pop("log", lambda line: None),
                           **kwargs)


@pytest.mark.parametrize("degradation,scale", [("bi", 2), ("bd", 3), ("dn", 2), ("premade", 2)])
def test_prepared_patches_equal_patches_made_on_the_fly(source, tmp_path, degradation, scale):
    """The same keys give bit-identical patches from the prepared dataset and from the images (DN:
    a BI dataset with the noise drawn per patch, as on the fly; premade: BI from LR_bicubic/X2 PNGs)."""
    if degradation == "premade":
        degradation = "bi"
        for i, (h, w) in enumerate(SIZES):  # LR that is not dlsn's bicubic, so that using it shows
            write_image(source / "LR_bicubic" / "X2" / f"{i:04d}x2.png", torch.rand(3, h // 2, w // 2))
    _prepare(source, tmp_path / "out", scale, "bi" if degradation == "dn" else degradation)
    assert (source / "LR_bicubic").exists() == ("pre-made" in read_manifest(tmp_path / "out")["lr_source"])
    prepared = PatchPairs(PreparedPairs(tmp_path / "out", scale, degradation), scale, 8)
    fly = PatchPairs(TrainPairs(source, scale, degradation), scale, 8)
    for key in [(i % 3, 50 + i, 0) for i in range(15)]:
        (lr_a, hr_a), (lr_b, hr_b) = prepared[key], fly[key]
        assert torch.equal(lr_a, lr_b) and torch.equal(hr_a, hr_b), key
    pairs = PreparedPairs(tmp_path / "out", scale, "bi" if degradation == "dn" else degradation)
    lr, hr = pairs[2]
    assert torch.equal(hr, TrainPairs(source, scale)[2][1]) and lr.shape[-2:] == (30 // scale, 50 // scale)


def test_size_on_disk_is_the_pixels(source, tmp_path):
    result = _prepare(source, tmp_path / "out", scale=3)
    pixels = sum(3 * (h - h % 3) * (w - w % 3) * (1 + 1 / 9) for h, w in SIZES)
    assert result["bytes"] == pixels
    assert (tmp_path / "out" / "hr.u8").stat().st_size + (tmp_path / "out" / "lr.u8").stat().st_size == \
        2 * HEADER_BYTES + pixels
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["dlsn-prepared.json", "hr.u8", "lr.u8"]


def test_again_is_up_to_date_and_verifies_checksums(source, tmp_path):
    out = tmp_path / "out"
    _prepare(source, out)
    assert _prepare(source, out)["up_to_date"]
    with open(out / "hr.u8", "r+b") as handle:  # one pixel changed: same size and header, wrong checksum
        handle.seek(HEADER_BYTES + 5000)
        value = handle.read(1)
        handle.seek(HEADER_BYTES + 5000)
        handle.write(bytes([value[0] ^ 1]))
    PreparedPairs(out, 2)  # loading checks sizes and headers only (cheap)
    with pytest.raises(PreparedDatasetError, match="0001 do not match their checksum"):
        _prepare(source, out)


def test_unreadable_images_are_skipped_and_said_once(source, tmp_path):
    (source / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    write_image(source / "tiny.png", torch.rand(3, 1, 9))
    lines = []
    result = _prepare(source, tmp_path / "out", log=lines.append)
    assert result["images"] == 3 and len(lines) == 1
    assert lines[0].startswith("skipped 2 unusable image(s): ") and "broken.png" in lines[0] and "tiny.png" in lines[0]
    assert [item["file"].split("/")[-1] for item in result["skipped"]] == ["broken.png", "tiny.png"]


def test_an_image_that_fails_to_decode_is_left_out(source, tmp_path):
    blob = (source / "0001.png").read_bytes()
    (source / "0001.png").write_bytes(blob[: len(blob) // 2])  # header intact, data cut
    lines = []
    result = _prepare(source, tmp_path / "out", log=lines.append)
    assert PreparedPairs(tmp_path / "out", 2).names == ["0000", "0002"] and result["images"] == 2
    assert len(lines) == 1 and "0001.png" in lines[0]


def test_folders_without_usable_images(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        _prepare(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"no")
    with pytest.raises(ValueError, match="no usable images in .*a.png"):
        _prepare(tmp_path / "bad", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_images_smaller_than_the_patch_are_named_before_training(source, tmp_path):
    _prepare(source, tmp_path / "out")
    with pytest.raises(ValueError, match=r"2 of 3 LR images are smaller than the training patch 19x19 .*0000 "
                                         r"\(18x22\), 0002 \(15x25\)"):
        PatchPairs(PreparedPairs(tmp_path / "out", 2), 2, 19)


def test_disk_too_small_fails_before_any_work_and_leaves_nothing(source, tmp_path, monkeypatch):
    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space, raising=False)
    with pytest.raises(WriteError, match="cannot create the dataset in .*out: No space left on device"):
        _prepare(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    usage = prepare.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(prepare.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    (tmp_path / "empty").mkdir()
    with pytest.raises(WriteError, match=r"not enough disk space for .*empty: the dataset needs [0-9.]+ MB, "
                                         r"0.0 MB are free"):
        _prepare(source, tmp_path / "empty")
    assert list((tmp_path / "empty").iterdir()) == []


def test_interrupted_preparation_is_refused_then_resumed(source, tmp_path, monkeypatch):
    """A full disk after the first image: the folder is refused (training too) until the same call
    finishes it; the result is byte-identical to an uninterrupted preparation."""
    write_at = prepare._write_at
    calls = []

    def disk_full_later(path, offset, pixels):
        calls.append(path)
        if len(calls) > 2:  # HR and LR of the first image fit
            raise WriteError(f"cannot write {path}: No space left on device")
        write_at(path, offset, pixels)

    monkeypatch.setattr(prepare, "_write_at", disk_full_later)
    out = tmp_path / "out"
    with pytest.raises(WriteError, match="No space left"):
        _prepare(source, out)
    for load in (lambda: PreparedPairs(out, 2), lambda: training_pairs(out, 2)):
        with pytest.raises(PreparedDatasetError, match=r"has not finished \(1 of 3 images done\); run the same"):
            load()
    monkeypatch.setattr(prepare, "_write_at", write_at)
    assert _prepare(source, out)["images"] == 3
    _prepare(source, tmp_path / "straight")
    for name in ("hr.u8", "lr.u8"):
        a, b = (out / name).read_bytes(), (tmp_path / "straight" / name).read_bytes()
        assert a[HEADER_BYTES:] == b[HEADER_BYTES:]
    assert not (out / ".prepare").exists()


def test_resume_refuses_changed_sources_and_other_settings(source, tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "_write_at", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        _prepare(source, tmp_path / "out")
    monkeypatch.undo()
    with pytest.raises(PreparedDatasetError, match="unfinished preparation with degradation bi .now bd."):
        _prepare(source, tmp_path / "out", degradation="bd")
    os.utime(source / "0002.png", ns=(1, 1))
    with pytest.raises(PreparedDatasetError, match="unfinished preparation with source image 0002.png changed"):
        _prepare(source, tmp_path / "out")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(PreparedDatasetError, match="other exists and is not an empty folder nor a prepared"):
        _prepare(source, tmp_path / "other")


def test_load_refuses_foreign_stale_and_mismatching_datasets(source, tmp_path):
    _prepare(source, tmp_path / "a")
    _prepare(source, tmp_path / "b", use_premade=False, max_images=2)
    with pytest.raises(PreparedDatasetError, match=r"prepared for x2 \(BI\), this run needs x4; use a dataset "
                                                   r"prepared with --scale 4 \(dlsn prepare .*src -o NEW_FOLDER"):
        PreparedPairs(tmp_path / "a", 4)
    with pytest.raises(PreparedDatasetError, match="prepared with BI degradation, data.degradation=bd needs"):
        PreparedPairs(tmp_path / "a", 2, "bd")
    (tmp_path / "a" / "lr.u8").write_bytes((tmp_path / "b" / "lr.u8").read_bytes())
    with pytest.raises(PreparedDatasetError, match=r"lr.u8: \d+ bytes where the manifest expects \d+"):
        PreparedPairs(tmp_path / "a", 2)
    _prepare(source, tmp_path / "c")
    blob = (tmp_path / "c" / "lr.u8").read_bytes()
    (tmp_path / "c" / "lr.u8").write_bytes(blob.replace(blob[20:30], b"0123456789", 1))  # another token
    with pytest.raises(PreparedDatasetError, match="belongs to another preparation"):
        PreparedPairs(tmp_path / "c", 2)
    manifest = json.loads((tmp_path / "b" / MANIFEST).read_text())
    (tmp_path / "b" / MANIFEST).write_text(json.dumps({**manifest, "version": 99}))
    with pytest.raises(PreparedDatasetError, match="format version 99, this one reads version 1; prepare it again"):
        PreparedPairs(tmp_path / "b", 2)
    (tmp_path / "b" / MANIFEST).write_text(json.dumps({"format": "something else"}))
    with pytest.raises(PreparedDatasetError, match="foreign"):
        PreparedPairs(tmp_path / "b", 2)
    (tmp_path / "b" / MANIFEST).write_text("{")
    with pytest.raises(PreparedDatasetError, match="unreadable manifest"):
        PreparedPairs(tmp_path / "b", 2)
    with pytest.raises(ValueError, match="DN training reads a BI dataset"):
        _prepare(source, tmp_path / "d", degradation="dn")


def test_cli(source, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["prepare", str(source), "-o", str(out), "--scale", "2", "--workers", "0", "--no-progress"]) == 0
    assert f"{out}: 3 images, x2 BI" in capsys.readouterr().out
    assert main(["prepare", str(source), "-o", str(out), "--scale", "3", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dlsn prepare: error: ") and "already holds a prepared dataset with scale 2 (now 3)" in err
    assert len(err.splitlines()) == 1
    assert main(["prepare", str(source), "-o", str(tmp_path / "x"), "--scale", "2", "--workers", "two"]) == 2
    assert "--workers must be 'auto' or an integer" in capsys.readouterr().err


def test_workers_in_processes_give_the_same_dataset(source, tmp_path):
    _prepare(source, tmp_path / "one", workers=0)
    _prepare(source, tmp_path / "two", workers=2)
    for name in ("hr.u8", "lr.u8"):
        assert (tmp_path / "one" / name).read_bytes()[HEADER_BYTES:] == (tmp_path / "two" / name).read_bytes()[HEADER_BYTES:]


def _config(out, train_dir, workers=0):
    return config_from_dict({
        "model": dict(n_resgroups=1, n_resblocks=1, n_feats=8, chunk_size=16, n_hashes=1),
        "data": dict(train_dir=str(train_dir), patch_size=8, batch_size=2, num_workers=workers),
        "train": dict(iterations=4, milestones=[2], lr=1e-3),
        "log": dict(out_dir=str(out), log_every=1, val_every=0, save_every=0, progress=False),
    })


def test_training_reads_prepared_data_and_resumes_bit_exactly(source, tmp_path):
    """Same run from the images and from the prepared dataset (same patches, so the same weights);
    split + resume equals the straight run; a DataLoader worker changes nothing."""
    _prepare(source, tmp_path / "ready")
    final = {}
    for name, train_dir, workers in (("fly", source, 0), ("ready", tmp_path / "ready", 0),
                                     ("worker", tmp_path / "ready", 1)):
        train(_config(tmp_path / name, train_dir, workers), quiet=True)
        final[name] = torch.load(tmp_path / name / "checkpoints" / "iter_00000004.pt", weights_only=True)["model"]
    train(_config(tmp_path / "split", tmp_path / "ready"), stop_at=2, quiet=True)
    train(_config(tmp_path / "split", tmp_path / "ready"), resume="auto", quiet=True)
    final["split"] = torch.load(tmp_path / "split" / "checkpoints" / "iter_00000004.pt", weights_only=True)["model"]
    for name in ("ready", "worker", "split"):
        assert all(torch.equal(final["fly"][k], final[name][k]) for k in final["fly"]), name
    start = torch.load(tmp_path / "split" / "checkpoints" / "iter_00000002.pt", weights_only=True)["model"]
    assert not all(torch.equal(start[k], final["fly"][k]) for k in start)  # the comparison can fail


def test_loader_defaults(tmp_path, monkeypatch):
    from dlsn.sr.train import Trainer
    from dlsn.sr.data import ImagePairs

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)), raising=False)
    pairs = ImagePairs([torch.rand(3, 32, 32)], 2)
    trainer = Trainer(_config(tmp_path, tmp_path, workers="auto"), quiet=True)
    trainer.load_data(pairs)
    loader = trainer.loader
    assert (loader.num_workers, loader.prefetch_factor, loader.pin_memory, loader.persistent_workers) == (5, 4, False,
                                                                                                          False)
    trainer.device = torch.device("cuda")  # the settings only: nothing runs on it
    trainer.load_data(pairs)
    assert trainer.loader.pin_memory and trainer.loader.persistent_workers
    trainer.cfg.data.num_workers = 0
    trainer.load_data(pairs)
    assert trainer.loader.num_workers == 0 and trainer.loader.prefetch_factor is None


def test_sixteen_bit_sources_are_stored_at_eight_bits_and_said_so(source, tmp_path):
    write_image(source / "0001.png", torch.rand(3, 20, 24, generator=torch.Generator().manual_seed(1)), bit_depth=16)
    lines = []
    _prepare(source, tmp_path / "out", log=lines.append)
    assert lines == ["1 image(s) have more than 8 bits per sample and are stored at 8 bits: 0001"]
