"""Image-pair datasets for training and benchmarking.

``PairFolder`` (``TrainPairs``, ``BenchmarkPairs``) reads pairs from folders, ``ImagePairs`` makes them
from images in memory; all return full-size ``(lr, hr)`` pairs, float32 ``[3, h, w]`` and
``[3, s*h, s*w]`` in [0, 1]. ``PatchPairs`` cuts the training samples from them: random patches,
flips/transposes and ``rgb_range``, keyed by ``(index, sample_seed, epoch)`` so sampling resumes exactly.

Folder layouts (``root`` is the folder given by the user):

* DIV2K / EDSR: HR images in ``root/HR`` (or ``root/DIV2K_train_HR``, or ``root`` itself) and,
  optionally, pre-made LR images in ``root/LR_bicubic/X{s}`` named ``{stem}x{s}{ext}``
  (``0001.png`` -> ``0001x2.png``; ``baby.png`` -> ``babyx2.png``, the EDSR benchmark layout).
  ``DIV2K_train_LR_bicubic/X{s}`` is accepted as well.
* Pre-made LR images are used for ``degradation="bi"`` when that folder exists (``use_premade``);
  otherwise LR images are made on the fly from the HR images with ``dlsn.sr.degradations``.
  HR images are cropped to a multiple of the scale first (only needed when LR is made here).

DN noise is deterministic: image ``i`` in epoch ``e`` draws from a generator seeded with
``(seed, e, i)``; ``set_epoch`` changes ``e`` (a resumed run calls it with the epoch it stopped in).

Crop first. Datasets with ``lr_size(index)`` and ``patch(index, top, left, size, generator)``
(``PairFolder``, and ``dlsn.sr.prepared.PreparedPairs``) let ``PatchPairs`` choose the patch from the
image's size (read from the file header) and then fetch only the patch: ``PairFolder`` decodes the
PNG rows down to the patch (``read_image_window``), and degrades only the HR crop around the patch
that the degradation reads (``dlsn.sr.degradations.patch_window``). BI and BD patches are then
bit-identical to those cut from the whole degraded image (tested at every border); for DN each
patch draws its own noise from the patch's generator, after the crop and flips. Full-image
datasets (``ImagePairs``, any dataset of pairs) are cropped as before.

``training_pairs`` opens ``data.train_dir``: a prepared dataset (``dlsn prepare``) or an image folder.
``loader_workers`` resolves ``data.num_workers`` ("auto": from the CPUs this process may use), and
``TimedBatches`` times the training loop's wait for each batch.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import List, Optional, Tuple, Union

import torch
from torch.utils.data import Dataset

from .degradations import (DEGRADATIONS, DN_NOISE_LEVEL, add_noise, bicubic_down, crop_to_scale, degrade,
                           noise_generator, patch_window)
from .imageio import IMAGE_EXTENSIONS, image_size, read_image, read_image_window
from .prepared import PreparedPairs, is_prepared

__all__ = ["PairFolder", "TrainPairs", "BenchmarkPairs", "ImagePairs", "PatchPairs", "benchmark_pairs",
           "list_images", "find_hr_dir", "find_lr_dir", "load_pair", "training_pairs", "parse_num_workers",
           "loader_workers", "usable_cpus", "TimedBatches", "AUTO_WORKERS_CAP"]

# Most DataLoader workers "auto" starts per training process: a prepared dataset needs a fraction
# of one core for hundreds of patches per second, images degraded on the fly many cores (README).
AUTO_WORKERS_CAP = 16

PathLike = Union[str, Path]


def list_images(folder: Path) -> List[Path]:
    """Image files directly in ``folder``, sorted by name; an error naming the folder if none."""
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {folder}")
    return files


def find_hr_dir(root: Path) -> Path:
    if not root.exists():
        raise FileNotFoundError(f"data folder not found: {root}")
    if not root.is_dir():
        raise ValueError(f"data path is not a folder: {root}")
    for name in ("HR", "DIV2K_train_HR"):
        if (root / name).is_dir():
            return root / name
    return root


def find_lr_dir(root: Path, scale: int) -> Optional[Path]:
    for name in ("LR_bicubic", "DIV2K_train_LR_bicubic"):
        candidate = root / name / f"X{scale}"
        if candidate.is_dir():
            return candidate
    return None


def load_pair(hr_path: Path, lr_path: Optional[Path], scale: int, degradation: str = "bi",
              noise_level: float = DN_NOISE_LEVEL, generator: Optional[torch.Generator] = None):
    """The full ``(lr, hr)`` pair of the HR image ``hr_path``: LR read from ``lr_path`` (pre-made,
    HR cropped to ``scale`` times its size), or made by ``degrade`` (HR cropped to a multiple of
    ``scale``; DN noise from ``generator``). Float32 ``[3, h, w]``, ``[3, s*h, s*w]`` in [0, 1]."""
    hr = read_image(hr_path)
    s = scale
    if lr_path is not None:
        lr = read_image(lr_path)
        h, w = lr.shape[-2:]
        if hr.shape[-2] < h * s or hr.shape[-1] < w * s:
            raise ValueError(f"{hr_path}: HR {tuple(hr.shape[-2:])} is smaller than {s}x its LR image {lr_path} "
                             f"{(h, w)}")
        return lr, hr[:, : h * s, : w * s].contiguous()
    try:
        hr = crop_to_scale(hr, s).contiguous()
    except ValueError as exc:
        raise ValueError(f"{hr_path}: {exc}") from None
    return degrade(hr, s, degradation, noise_level, generator).float(), hr


class PairFolder(Dataset):
    """Full ``(lr, hr)`` pairs from a folder (layouts in the module docstring), read lazily, and
    patches of them read crop-first (``lr_size`` / ``patch``).

    Every image's size is read from its header when the folder is opened, so an unreadable image, or
    one smaller than the scale, is named then, not in the middle of training.

    Args:
        root: the data folder.
        scale: upscaling factor.
        degradation: ``"bi"``, ``"bd"`` or ``"dn"``.
        noise_level: DN noise std on the 0-255 scale.
        seed: base seed of the DN noise.
        use_premade: use ``LR_bicubic/X{s}`` when present (BI only).
        cache: keep decoded pairs in memory (small benchmark sets; not DIV2K).
        max_images: keep only the first N images (0: all).
        skip_unreadable: leave out unreadable images and images smaller than the scale, listed in
            ``skipped`` as ``(path, reason)`` (``dlsn prepare``), instead of refusing the folder.
    """

    def __init__(
        self,
        root: PathLike,
        scale: int,
        degradation: str = "bi",
        noise_level: float = DN_NOISE_LEVEL,
        seed: int = 0,
        use_premade: bool = True,
        cache: bool = False,
        max_images: int = 0,
        skip_unreadable: bool = False,
    ):
        if degradation not in DEGRADATIONS:
            raise ValueError(f"unknown degradation {degradation!r}; expected one of {DEGRADATIONS}")
        if not isinstance(scale, int) or scale < 1:
            raise ValueError(f"scale must be a positive int, got {scale!r}")
        self.root = Path(root)
        self.scale, self.degradation, self.noise_level, self.seed = scale, degradation, noise_level, seed
        self.epoch = 0
        self.hr_dir = find_hr_dir(self.root)
        hr_files = list_images(self.hr_dir)
        if max_images:
            hr_files = hr_files[:max_images]
        self.lr_dir = find_lr_dir(self.root, scale) if (use_premade and degradation == "bi") else None
        lr_files = [self._lr_path(self.lr_dir, p) for p in hr_files] if self.lr_dir is not None else None
        self._scan(hr_files, lr_files, skip_unreadable)
        self.names = [p.stem for p in self.hr_files]
        self._cache = {} if cache else None

    def _lr_path(self, lr_dir: Path, hr_path: Path) -> Path:
        for ext in (hr_path.suffix, ".png"):
            candidate = lr_dir / f"{hr_path.stem}x{self.scale}{ext}"
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(
            f"LR image for {hr_path.name} not found: expected {lr_dir / (hr_path.stem + f'x{self.scale}.png')} "
            f"(DIV2K naming); remove {lr_dir} or pass use_premade=False to make LR on the fly"
        )

    def _lr_size(self, hr_path: Path, lr_path: Optional[Path]) -> Tuple[int, int]:
        """LR size of a pair from the headers; ValueError naming the file when it cannot serve."""
        height, width = image_size(hr_path)
        s = self.scale
        if lr_path is None:
            if height < s or width < s:
                raise ValueError(f"{hr_path}: image of {height}x{width} pixels is smaller than the scale factor {s}")
            return height // s, width // s
        h, w = image_size(lr_path)
        if height < h * s or width < w * s:
            raise ValueError(f"{hr_path}: HR {(height, width)} is smaller than {s}x its LR image {lr_path} {(h, w)}")
        return h, w

    def _scan(self, hr_files: List[Path], lr_files: Optional[List[Path]], skip: bool) -> None:
        """Sizes of every pair (``lr_sizes``); unusable images refused or, with ``skip``, left out."""
        self.hr_files, self.lr_sizes, self.skipped = [], [], []
        kept_lr = []
        for i, hr_path in enumerate(hr_files):
            lr_path = lr_files[i] if lr_files is not None else None
            try:
                size = self._lr_size(hr_path, lr_path)
            except ValueError as exc:
                self.skipped.append((hr_path, str(exc)))
                continue
            self.hr_files.append(hr_path)
            self.lr_sizes.append(size)
            kept_lr.append(lr_path)
        self.lr_files: Optional[List[Path]] = kept_lr if lr_files is not None else None
        if self.skipped and not skip:
            more = f" (and {len(self.skipped) - 1} more unusable images)" if len(self.skipped) > 1 else ""
            raise ValueError(f"{self.skipped[0][1]}{more}")
        if not self.hr_files:
            raise ValueError(f"no usable images in {self.hr_dir}: " + "; ".join(reason for _, reason in self.skipped))

    def set_epoch(self, epoch: int) -> None:
        """Select the DN noise of ``epoch`` (no effect for BI/BD)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.hr_files)

    def lr_size(self, index: int) -> Tuple[int, int]:
        """``(h, w)`` of LR image ``index`` (from the headers; no decoding)."""
        return self.lr_sizes[index]

    def _load(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        lr_path = self.lr_files[index] if self.lr_files is not None else None
        return load_pair(self.hr_files[index], lr_path, self.scale, self.degradation, self.noise_level,
                         noise_generator(self.seed, self.epoch, index))

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        if self._cache is None:
            return self._load(index)
        key = (index, self.epoch if self.degradation == "dn" else 0)
        if key not in self._cache:
            self._cache[key] = self._load(index)
        return self._cache[key]

    def patch(self, index: int, top: int, left: int, size: int,
              generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """The LR patch ``[3, size, size]`` at LR ``(top, left)`` of pair ``index`` and its HR patch
        ``[3, s*size, s*size]``, reading and degrading only what the patch needs; DN noise from
        ``generator`` (default: the image's generator of the current epoch)."""
        s, hr_path = self.scale, self.hr_files[index]
        hr_box = (top * s, (top + size) * s, left * s, (left + size) * s)
        if self.lr_files is not None:
            return (read_image_window(self.lr_files[index], top, top + size, left, left + size),
                    read_image_window(hr_path, *hr_box))
        kind = "bi" if self.degradation == "dn" else self.degradation
        h, w = self.lr_sizes[index]
        (y0, y1, x0, x1), (oy, ox) = patch_window(kind, s, (h * s, w * s), top, left, size)
        window = read_image_window(hr_path, y0, y1, x0, x1)
        lr = degrade(window, s, kind)[:, oy:oy + size, ox:ox + size]
        if self.degradation == "dn":
            lr = add_noise(lr, self.noise_level, generator or noise_generator(self.seed, self.epoch, index))
        hr = window[:, hr_box[0] - y0:hr_box[1] - y0, hr_box[2] - x0:hr_box[3] - x0]
        return lr.contiguous(), hr.contiguous()


class TrainPairs(PairFolder):
    """Training pairs in the DIV2K layout; read lazily (DIV2K does not fit in memory as floats)."""


class BenchmarkPairs(PairFolder):
    """Benchmark pairs (Set5, Set14, ...): HR images or the EDSR ``HR`` + ``LR_bicubic`` layout; cached."""

    def __init__(self, root: PathLike, scale: int, degradation: str = "bi", **kwargs):
        kwargs.setdefault("cache", True)
        super().__init__(root, scale, degradation, **kwargs)


def benchmark_pairs(folder, scale: int, max_images: int = 0, degradation: str = "bi", noise_level: float = 30.0,
                    seed: int = 0):
    """Pairs of a benchmark folder (`BenchmarkPairs`: HR images, or HR + LR_bicubic for BI)."""
    return BenchmarkPairs(folder, scale, degradation, noise_level=noise_level, seed=seed, max_images=max_images)


class ImagePairs(Dataset):
    """Full-size `(lr, hr)` pairs made in memory from HR images in [0, 1] ([3, H, W]) by `degrade`
    (default BI, quantised to 8 bit); `PairFolder` serves folders the same way.

    HR images are cropped to a multiple of `scale` first, as in the SISR literature.
    """

    def __init__(self, hr_images, scale: int, degrade=bicubic_down, names=None):
        self.names = list(names) if names is not None else [f"image_{i}" for i in range(len(hr_images))]
        self.pairs = []
        for name, hr in zip(self.names, hr_images):
            if hr.dim() != 3 or hr.shape[0] != 3:
                raise ValueError(f"{name}: expected an RGB image [3, H, W], got shape {tuple(hr.shape)}")
            try:
                hr = crop_to_scale(hr, scale).float().contiguous()
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
            self.pairs.append((degrade(hr, scale).float(), hr))

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, index):
        return self.pairs[index]


class PatchPairs(Dataset):
    """Aligned random LR/HR patches of a dataset of `(lr, hr)` pairs.

    Items are keyed by `(index, sample_seed, epoch)`: the crop and the flips/transpose (and a DN
    patch's noise) are a function of the key alone; `epoch` selects the DN noise of full-pair
    datasets with `set_epoch` (`ImagePairs`-like datasets). Datasets with `lr_size` and `patch`
    (`PairFolder`, `PreparedPairs`) are read crop-first (module docstring); their sizes are checked
    against the patch when this is made. Values are scaled from [0, 1] to [0, rgb_range].
    """

    def __init__(self, pairs, scale: int, patch_size: int, augment: bool = True, rgb_range: float = 1.0):
        self.pairs, self.scale, self.patch_size = pairs, scale, patch_size
        self.augment, self.rgb_range = augment, rgb_range
        self.crop_first = callable(getattr(pairs, "patch", None)) and callable(getattr(pairs, "lr_size", None))
        if self.crop_first:
            self._check_sizes()

    def __len__(self):
        return len(self.pairs)

    def _name(self, index):
        names = getattr(self.pairs, "names", None)
        return names[index] if names else f"image {index}"

    def _check_sizes(self):
        """Every LR image holds a patch; else one error naming those that do not."""
        p = self.patch_size
        small = [f"{self._name(i)} ({h}x{w})" for i in range(len(self.pairs))
                 for h, w in [self.pairs.lr_size(i)] if h < p or w < p]
        if small:
            shown = ", ".join(small[:5]) + (f" and {len(small) - 5} more" if len(small) > 5 else "")
            raise ValueError(f"{len(small)} of {len(self.pairs)} LR images are smaller than the training patch "
                             f"{p}x{p} (data.patch_size): {shown}; remove them or lower data.patch_size")

    def _corner(self, g, index, h, w):
        p = self.patch_size
        if h < p or w < p:
            raise ValueError(f"{self._name(index)}: LR image {h}x{w} is smaller than the training patch {p}x{p} "
                             f"(data.patch_size)")
        return tuple(int(torch.randint(0, n - p + 1, (1,), generator=g)) for n in (h, w))

    def __getitem__(self, key):
        index, sample_seed, epoch = key
        p, s = self.patch_size, self.scale
        g = torch.Generator().manual_seed(sample_seed)
        if self.crop_first:
            y, x = self._corner(g, index, *self.pairs.lr_size(index))
            flips = torch.randint(0, 2, (3,), generator=g).tolist() if self.augment else None
            lr, hr = self.pairs.patch(index, y, x, p, g)
        else:
            if hasattr(self.pairs, "set_epoch"):
                self.pairs.set_epoch(epoch)
            lr, hr = self.pairs[index]
            h, w = lr.shape[-2:]
            if hr.shape[-2:] != (h * s, w * s):
                raise ValueError(f"image {index}: HR {tuple(hr.shape[-2:])} is not {s}x the LR {(h, w)}")
            y, x = self._corner(g, index, h, w)
            lr = lr[:, y:y + p, x:x + p]
            hr = hr[:, y * s:(y + p) * s, x * s:(x + p) * s]
            flips = torch.randint(0, 2, (3,), generator=g).tolist() if self.augment else None
        if flips is not None:
            hflip, vflip, transpose = flips
            dims = [d for d, flag in ((-1, hflip), (-2, vflip)) if flag]
            if dims:
                lr, hr = lr.flip(dims), hr.flip(dims)
            if transpose:
                lr, hr = lr.transpose(-1, -2), hr.transpose(-1, -2)
        return lr.contiguous() * self.rgb_range, hr.contiguous() * self.rgb_range


def training_pairs(root: PathLike, scale: int, degradation: str = "bi", noise_level: float = DN_NOISE_LEVEL,
                   seed: int = 0):
    """The training pairs of ``data.train_dir``: a `PreparedPairs` when ``root`` is a prepared dataset
    (finished or not: an unfinished one is refused with what to do), else a `TrainPairs` folder."""
    if is_prepared(root):
        return PreparedPairs(root, scale, degradation, noise_level, seed)
    return TrainPairs(root, scale=scale, degradation=degradation, noise_level=noise_level, seed=seed)


def parse_num_workers(value, option: str = "data.num_workers") -> Union[int, str]:
    """A number of worker processes: ``"auto"`` or an integer >= 0 (``option`` names it in the error)."""
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    if isinstance(value, bool) or not text.isdigit():
        raise ValueError(f"{option} must be 'auto' or an integer >= 0, got {value!r}")
    return int(text)


def usable_cpus() -> int:
    """The CPUs this process may run on (``os.sched_getaffinity``; the CPU count where that is unknown)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def loader_workers(setting, world_size: int = 1) -> int:
    """DataLoader workers per training process for ``data.num_workers``: a number as given; "auto"
    is the CPUs this process may run on (``os.sched_getaffinity``), shared between the
    ``world_size`` training processes of this machine, less one for the training loop itself, at
    most `AUTO_WORKERS_CAP`."""
    setting = parse_num_workers(setting)
    if setting != "auto":
        return setting
    return max(0, min(AUTO_WORKERS_CAP, usable_cpus() // max(1, world_size) - 1))


def _worker_error(exc: Exception) -> Optional[Exception]:
    """The one-line error a DataLoader worker raised, from the copy the loader re-raises (whose
    message is "Caught X in DataLoader worker process N." and the worker's traceback); None when
    ``exc`` is not such a copy."""
    lines = str(exc).strip().splitlines()
    if len(lines) < 2 or not lines[0].startswith("Caught ") or "DataLoader worker" not in lines[0]:
        return None
    prefix = f"{type(exc).__name__}: "
    last = lines[-1]
    try:
        return type(exc)(last[len(prefix):] if last.startswith(prefix) else last)
    except Exception:  # an exception type that takes other arguments: keep the loader's copy
        return None


class TimedBatches:
    """The batches of a DataLoader, with the seconds the caller waited for the last one (``wait``).

    An error raised in a worker process comes out as its own one-line message (the loader's copy
    carries the worker's whole traceback, which the command line would print)."""

    def __init__(self, loader):
        self._batches = iter(loader)
        self.wait = 0.0

    def __iter__(self):
        return self

    def __next__(self):
        start = time.perf_counter()
        try:
            batch = next(self._batches)
        except StopIteration:
            raise
        except Exception as exc:
            clean = _worker_error(exc)
            if clean is None:
                raise
            raise clean from exc
        self.wait = time.perf_counter() - start
        return batch
