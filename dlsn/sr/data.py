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
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple, Union

import torch
from torch.utils.data import Dataset

from .degradations import DEGRADATIONS, DN_NOISE_LEVEL, bicubic_down, crop_to_scale, degrade
from .imageio import IMAGE_EXTENSIONS, read_image

__all__ = ["PairFolder", "TrainPairs", "BenchmarkPairs", "ImagePairs", "PatchPairs", "benchmark_pairs",
           "list_images", "find_hr_dir", "find_lr_dir"]

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


class PairFolder(Dataset):
    """Full ``(lr, hr)`` pairs from a folder (layouts in the module docstring), read lazily.

    Args:
        root: the data folder.
        scale: upscaling factor.
        degradation: ``"bi"``, ``"bd"`` or ``"dn"``.
        noise_level: DN noise std on the 0-255 scale.
        seed: base seed of the DN noise.
        use_premade: use ``LR_bicubic/X{s}`` when present (BI only).
        cache: keep decoded pairs in memory (small benchmark sets; not DIV2K).
        max_images: keep only the first N images (0: all).
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
    ):
        if degradation not in DEGRADATIONS:
            raise ValueError(f"unknown degradation {degradation!r}; expected one of {DEGRADATIONS}")
        if not isinstance(scale, int) or scale < 1:
            raise ValueError(f"scale must be a positive int, got {scale!r}")
        self.root = Path(root)
        self.scale, self.degradation, self.noise_level, self.seed = scale, degradation, noise_level, seed
        self.epoch = 0
        self.hr_dir = find_hr_dir(self.root)
        self.hr_files = list_images(self.hr_dir)
        if max_images:
            self.hr_files = self.hr_files[:max_images]
        self.names = [p.stem for p in self.hr_files]
        lr_dir = find_lr_dir(self.root, scale) if (use_premade and degradation == "bi") else None
        self.lr_files: Optional[List[Path]] = None
        if lr_dir is not None:
            self.lr_files = [self._lr_path(lr_dir, p) for p in self.hr_files]
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

    def set_epoch(self, epoch: int) -> None:
        """Select the DN noise of ``epoch`` (no effect for BI/BD)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.hr_files)

    def _generator(self, index: int) -> torch.Generator:
        # One independent stream per (seed, epoch, image): order- and worker-independent.
        key = (self.seed * 1_000_003 + self.epoch) * 1_000_003 + index
        return torch.Generator().manual_seed(key % (2**63))

    def _load(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        hr_path = self.hr_files[index]
        hr = read_image(hr_path)
        s = self.scale
        if self.lr_files is not None:
            lr = read_image(self.lr_files[index])
            h, w = lr.shape[-2:]
            if hr.shape[-2] < h * s or hr.shape[-1] < w * s:
                raise ValueError(
                    f"{hr_path}: HR {tuple(hr.shape[-2:])} is smaller than {s}x its LR image "
                    f"{self.lr_files[index]} {(h, w)}"
                )
            return lr, hr[:, : h * s, : w * s].contiguous()
        try:
            hr = crop_to_scale(hr, s).contiguous()
        except ValueError as exc:
            raise ValueError(f"{hr_path}: {exc}") from None
        lr = degrade(hr, s, self.degradation, self.noise_level, self._generator(index))
        return lr.float(), hr

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        if self._cache is None:
            return self._load(index)
        key = (index, self.epoch if self.degradation == "dn" else 0)
        if key not in self._cache:
            self._cache[key] = self._load(index)
        return self._cache[key]


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
    """Aligned random LR/HR patches of a dataset of full `(lr, hr)` pairs.

    Items are keyed by `(index, sample_seed, epoch)`: the crop and the flips/transpose are a function
    of the key alone; `epoch` selects the DN noise of datasets with `set_epoch` (`PairFolder`).
    Values are scaled from [0, 1] to [0, rgb_range].
    """

    def __init__(self, pairs, scale: int, patch_size: int, augment: bool = True, rgb_range: float = 1.0):
        self.pairs, self.scale, self.patch_size = pairs, scale, patch_size
        self.augment, self.rgb_range = augment, rgb_range

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, key):
        index, sample_seed, epoch = key
        if hasattr(self.pairs, "set_epoch"):
            self.pairs.set_epoch(epoch)
        lr, hr = self.pairs[index]
        p, s = self.patch_size, self.scale
        h, w = lr.shape[-2:]
        if h < p or w < p:
            name = getattr(self.pairs, "names", None)
            name = name[index] if name else f"image {index}"
            raise ValueError(f"{name}: LR image {h}x{w} is smaller than the training patch {p}x{p} "
                             f"(data.patch_size)")
        if hr.shape[-2:] != (h * s, w * s):
            raise ValueError(f"image {index}: HR {tuple(hr.shape[-2:])} is not {s}x the LR {(h, w)}")
        g = torch.Generator().manual_seed(sample_seed)
        y, x = (int(torch.randint(0, n - p + 1, (1,), generator=g)) for n in (h, w))
        lr = lr[:, y:y + p, x:x + p]
        hr = hr[:, y * s:(y + p) * s, x * s:(x + p) * s]
        if self.augment:
            hflip, vflip, transpose = torch.randint(0, 2, (3,), generator=g).tolist()
            dims = [d for d, flag in ((-1, hflip), (-2, vflip)) if flag]
            if dims:
                lr, hr = lr.flip(dims), hr.flip(dims)
            if transpose:
                lr, hr = lr.transpose(-1, -2), hr.transpose(-1, -2)
        return lr.contiguous() * self.rgb_range, hr.contiguous() * self.rgb_range
