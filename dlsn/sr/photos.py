"""The photographs `dlsn demo` trains and evaluates on: scikit-image's bundled ones (`skimage.data`,
no download).

A training config selects them with `data.train_dir: skimage:photographs` (`DEMO_PHOTOGRAPHS`; the
packaged `demo` config does), so `dlsn train --config demo` trains on what `dlsn demo` trains on.
Grayscale photographs are replicated to RGB; LR images are made by MATLAB-compatible bicubic
downscaling (BI), as `ImagePairs` makes them.
"""
from __future__ import annotations

import numpy as np
import torch

from .data import ImagePairs

__all__ = ["photographs", "photograph_pairs", "TRAIN_PHOTOS", "HELD_OUT_PHOTOS", "DEMO_PHOTOGRAPHS"]

DEMO_PHOTOGRAPHS = "skimage:photographs"
# Photographs in skimage.data (synthetic images, and `cat`, a copy of `chelsea`, are left out).
TRAIN_PHOTOS = ("coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina", "camera", "moon",
                "page", "text", "clock", "coins", "grass", "gravel", "brick", "stereo_motorcycle")
HELD_OUT_PHOTOS = ("astronaut", "chelsea")


def photographs(names):
    """`(name, image)` pairs: scikit-image's bundled images as float RGB tensors [3, H, W] in [0, 1]."""
    try:
        import skimage.data
    except ImportError:
        raise RuntimeError("the demo's photographs come with scikit-image: pip install scikit-image") from None
    images = []
    for name in names:
        array = getattr(skimage.data, name)()
        if isinstance(array, tuple):  # stereo pairs: the left view
            array = array[0]
        tensor = torch.from_numpy(np.ascontiguousarray(array)).float().div(255)
        tensor = tensor.unsqueeze(0).expand(3, -1, -1) if tensor.dim() == 2 else tensor.permute(2, 0, 1)[:3]
        images.append((name, tensor.contiguous()))
    return images


def photograph_pairs(names, scale):
    """`ImagePairs` (full-size BI `(lr, hr)` pairs, named) of the photographs `names`."""
    found_names, images = zip(*photographs(names))
    return ImagePairs(images, scale, names=found_names)
