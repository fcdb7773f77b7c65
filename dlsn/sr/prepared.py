"""Prepared training datasets: HR and LR pixels stored once as raw uint8, read through a memory map.

A training patch cut from a PNG costs a PNG decode (most of the image, for one 48x48 patch); cut
from a prepared dataset it costs a slice of a memory-mapped file: no decode, no resize, and after
the first epoch the bytes come from the page cache. ``dlsn prepare`` (``dlsn.sr.prepare``) writes
the format; ``PreparedPairs`` reads it, and training takes it when ``data.train_dir`` is one.

Why raw pixels in two files rather than per-image ``.npy`` files, sub-image PNGs or LMDB:
* no decode at all (sub-image PNGs, BasicSR's choice, still decode a 480x480 PNG per patch);
* two memory maps per process instead of one per image: DataLoader workers would each hold 1600
  maps (and as many file descriptors) for DIV2K otherwise;
* the whole size is known before the first image is made, so the space is reserved up front: a
  disk that is too small fails at once, not after an hour;
* no dependency (LMDB is a package and a database for what is an array of bytes).
Images are stored as rows of RGB pixels (``[H, W, 3]``): a 96x96 HR patch touches 96 runs of 288
bytes (about 96 pages) instead of 288 runs of 96 bytes, which matters when the dataset is read
from disk rather than from the page cache. The price is space: raw pixels take about twice
DIV2K's PNGs (3 * H * W * (1 + 1 / s^2) bytes per image; see the README for DIV2K's figures).

A prepared folder holds:
* ``hr.u8`` and ``lr.u8``: a 64-byte header (``DLSNPREP``, the format version, ``hr``/``lr`` and the
  preparation's random token), then the pixels of every image, one after another;
* ``dlsn-prepared.json``, the manifest, written last (atomically): format and version, the token,
  scale, degradation and its parameters, where the LR came from, the source folder with each
  source file's size and modification time, and per image its name, HR and LR sizes, offsets and
  the CRC-32 of its HR and LR bytes. A folder without it is not a dataset: while ``dlsn prepare``
  runs (or after it was interrupted) there is a ``.prepare/`` folder instead, holding the plan and
  a journal of finished images, from which the same command resumes.

Loading checks, each failure a one-line ``PreparedDatasetError`` that says what to do: the manifest
exists and is this format and version, the scale and degradation fit the run, both data files
exist with the size the manifest implies and carry the manifest's token (a file from another
preparation, or a truncated one, is refused). ``verify=True`` also checks every image's CRC-32
(reads everything; ``dlsn prepare`` does it when asked to prepare a folder that is already done).

Patches equal those made from the source images on the fly: HR is stored as decoded (8-bit) and
LR is made by the same functions (``dlsn.sr.data.load_pair``), so the same keys give bit-identical
BI and BD patches. DN is stored as its BI image; the noise is drawn per patch during training.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .degradations import DN_NOISE_LEVEL, add_noise, noise_generator

__all__ = ["PreparedPairs", "PreparedDatasetError", "is_prepared", "read_manifest", "file_header", "FORMAT",
           "VERSION", "MANIFEST", "WORK_DIR", "HEADER_BYTES", "DATA_FILES", "PREPARED_DEGRADATIONS"]

FORMAT = "dlsn-prepared"
VERSION = 1
MANIFEST = "dlsn-prepared.json"
WORK_DIR = ".prepare"
HEADER_BYTES = 64
DATA_FILES = {"hr": "hr.u8", "lr": "lr.u8"}
# What can be prepared; DN is BI plus noise drawn during training.
PREPARED_DEGRADATIONS = ("bi", "bd")


class PreparedDatasetError(ValueError):
    """A prepared dataset that cannot be used (unfinished, foreign, stale, another scale or degradation)."""


def file_header(kind: str, token: str) -> bytes:
    """The 64-byte header of the data file of ``kind`` ("hr" or "lr") of the preparation ``token``."""
    return f"DLSNPREP {VERSION} {kind} {token}\n".encode().ljust(HEADER_BYTES, b"\0")


def is_prepared(root) -> bool:
    """Whether ``root`` is a prepared dataset, finished or not (it then has a manifest or a ``.prepare/``)."""
    root = Path(root)
    return (root / MANIFEST).is_file() or (root / WORK_DIR).is_dir()


def _again(manifest: dict) -> str:
    source = manifest.get("source", {}).get("folder", "SOURCE")
    return f"prepare it again: dlsn prepare {source} -o NEW_FOLDER --scale {manifest.get('scale', 'S')}"


def _unfinished(root: Path) -> PreparedDatasetError:
    work = root / WORK_DIR
    try:
        planned = len(json.loads((work / "plan.json").read_text())["images"])
        done = sum(1 for line in (work / "journal").read_text().splitlines() if line.strip())
        state = f" ({done} of {planned} images done)"
    except (OSError, ValueError, KeyError, TypeError):
        state = ""
    return PreparedDatasetError(f"{root}: the preparation of this dataset has not finished{state}; run the same "
                                "`dlsn prepare` command again to complete it")


def read_manifest(root) -> dict:
    """The manifest of the prepared dataset ``root``, checked for format and version."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        if (root / WORK_DIR).is_dir():
            raise _unfinished(root)
        raise PreparedDatasetError(f"{root}: not a prepared dataset (no {MANIFEST}); make one with dlsn prepare")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PreparedDatasetError(f"{path}: unreadable manifest ({exc}); prepare the dataset again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PreparedDatasetError(f"{path}: not a dlsn prepared-dataset manifest (foreign file); "
                                   "remove it or use another folder")
    if manifest.get("version") != VERSION:
        raise PreparedDatasetError(f"{root}: prepared by a dlsn with format version {manifest.get('version')}, this "
                                   f"one reads version {VERSION}; {_again(manifest)}")
    return manifest


def _check_fit(manifest: dict, root: Path, scale: Optional[int], degradation: str) -> None:
    """The dataset's scale and degradation against what the run asks for."""
    prepared = manifest["degradation"]
    if scale is not None and manifest["scale"] != scale:
        raise PreparedDatasetError(
            f"{root}: prepared for x{manifest['scale']} ({prepared.upper()}), this run needs x{scale}; "
            f"use a dataset prepared with --scale {scale} (dlsn prepare {manifest['source']['folder']} "
            f"-o NEW_FOLDER --scale {scale})")
    if (degradation == "dn" and prepared != "bi") or (degradation != "dn" and degradation != prepared):
        needed = "bi" if degradation == "dn" else degradation
        raise PreparedDatasetError(
            f"{root}: prepared with {prepared.upper()} degradation, data.degradation={degradation} needs a "
            f"dataset prepared with --degradation {needed}")


def _check_files(manifest: dict, root: Path) -> None:
    for kind, name in DATA_FILES.items():
        path = root / name
        expected = HEADER_BYTES + manifest["files"][kind]["bytes"]
        if not path.is_file():
            raise PreparedDatasetError(f"{path}: missing; {_again(manifest)}")
        size = path.stat().st_size
        if size != expected:
            raise PreparedDatasetError(f"{path}: {size} bytes where the manifest expects {expected} (truncated or "
                                       f"replaced); {_again(manifest)}")
        with open(path, "rb") as handle:
            header = handle.read(HEADER_BYTES)
        if header != file_header(kind, manifest["token"]):
            raise PreparedDatasetError(f"{path}: belongs to another preparation than {root / MANIFEST} "
                                       f"(stale or foreign file); {_again(manifest)}")


def _to_float(pixels: np.ndarray) -> torch.Tensor:
    """uint8 ``[h, w, 3]`` -> float32 ``[3, h, w]`` in [0, 1] (``k / 255``, as ``read_image`` gives)."""
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))).float().div_(255.0)


class PreparedPairs(Dataset):
    """``(lr, hr)`` pairs and patches of a prepared dataset (format in the module docstring).

    Args:
        root: the prepared folder.
        scale: the run's scale; None accepts the dataset's.
        degradation: ``"bi"`` or ``"bd"`` (the dataset's), or ``"dn"`` on a BI dataset (noise added here).
        noise_level: DN noise std on the 0-255 scale.
        seed: base seed of the DN noise of full pairs (``__getitem__``); patches take a generator.
        verify: also check every image's CRC-32 (reads the whole dataset).

    ``patch`` and ``lr_size`` make ``dlsn.sr.data.PatchPairs`` cut patches without reading whole
    images. Items are float32 ``[3, h, w]`` (LR) and ``[3, s*h, s*w]`` (HR) in [0, 1].
    """

    def __init__(self, root, scale: Optional[int] = None, degradation: str = "bi",
                 noise_level: float = DN_NOISE_LEVEL, seed: int = 0, verify: bool = False):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"prepared dataset folder not found: {self.root}")
        self.manifest = read_manifest(self.root)
        _check_fit(self.manifest, self.root, scale, degradation)
        _check_files(self.manifest, self.root)
        self.scale, self.degradation = self.manifest["scale"], degradation
        self.noise_level, self.seed, self.epoch = noise_level, seed, 0
        self.images = self.manifest["images"]
        self.names = [image["name"] for image in self.images]
        self._maps = None  # opened on first use, in each process
        if verify:
            self.verify()

    def __getstate__(self):
        # Memory maps must not travel to DataLoader workers (pickling one copies its whole array).
        return {**self.__dict__, "_maps": None}

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        """Select the DN noise of ``epoch`` for full pairs (patches draw theirs from their generator)."""
        self.epoch = int(epoch)

    def lr_size(self, index: int) -> Tuple[int, int]:
        """``(h, w)`` of LR image ``index``."""
        return tuple(self.images[index]["lr"])

    def _pixels(self, kind: str, index: int) -> np.ndarray:
        """uint8 ``[H, W, 3]`` view of image ``index`` in the memory map of ``kind``."""
        if self._maps is None:
            self._maps = {k: np.memmap(self.root / name, dtype=np.uint8, mode="r", offset=HEADER_BYTES)
                          for k, name in DATA_FILES.items()}
        image = self.images[index]
        height, width = image[kind]
        start = image[f"{kind}_offset"]
        return self._maps[kind][start:start + height * width * 3].reshape(height, width, 3)

    def _noisy(self, lr: torch.Tensor, generator: Optional[torch.Generator], index: int) -> torch.Tensor:
        if self.degradation != "dn":
            return lr
        return add_noise(lr, self.noise_level, generator or noise_generator(self.seed, self.epoch, index))

    def patch(self, index: int, top: int, left: int, size: int,
              generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """The LR patch ``[3, size, size]`` at LR ``(top, left)`` of image ``index`` and its HR patch
        ``[3, s*size, s*size]``; DN noise (if any) from ``generator``."""
        height, width = self.lr_size(index)
        if top < 0 or left < 0 or top + size > height or left + size > width:
            raise ValueError(f"{self.names[index]}: LR patch {size}x{size} at ({top}, {left}) lies outside the "
                             f"{height}x{width} LR image")
        s = self.scale
        lr = self._pixels("lr", index)[top:top + size, left:left + size]
        hr = self._pixels("hr", index)[top * s:(top + size) * s, left * s:(left + size) * s]
        return self._noisy(_to_float(lr), generator, index), _to_float(hr)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        lr, hr = _to_float(self._pixels("lr", index)), _to_float(self._pixels("hr", index))
        return self._noisy(lr, None, index), hr

    def verify(self) -> None:
        """Check every image's CRC-32 against the manifest; a `PreparedDatasetError` names the first mismatch."""
        for index, image in enumerate(self.images):
            for kind in DATA_FILES:
                if zlib.crc32(self._pixels(kind, index)) != image[f"{kind}_crc32"]:
                    raise PreparedDatasetError(
                        f"{self.root / DATA_FILES[kind]}: the pixels of {image['name']} do not match their "
                        f"checksum (damaged file); {_again(self.manifest)}")
