"""Building blocks the networks share: convolutions, mean shift, upsampler, and the hash-round
switching of every network that holds GLA layers."""
import math

import torch
from torch import nn

from ..nn import gla_layers
from ..ops.checks import positive_int

DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)
SUPPORTED_SCALES = (2, 3, 4)


def default_conv(in_channels, out_channels, kernel_size):
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)


def check_scale(name, scale):
    if scale not in SUPPORTED_SCALES:
        raise ValueError(f"{name} supports scales {SUPPORTED_SCALES}, got {scale!r}")


class MeanShift(nn.Conv2d):
    """Fixed 1x1 convolution adding (`sign=1`) or removing (`sign=-1`) the dataset mean.

    Its weight and bias are parameters with `requires_grad=False`, as in the published code, so
    they appear in the state dict under `sub_mean.*` / `add_mean.*`.
    """

    def __init__(self, rgb_range, rgb_mean=DIV2K_RGB_MEAN, sign=-1):
        channels = len(rgb_mean)
        super().__init__(channels, channels, kernel_size=1)
        with torch.no_grad():
            self.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1))
            self.bias.copy_(sign * rgb_range * torch.tensor(rgb_mean))
        for param in self.parameters():
            param.requires_grad = False


class Upsampler(nn.Sequential):
    """EDSR upsampler: x2^k as k times Conv(n, 4n) + PixelShuffle(2); x3 as Conv(n, 9n) + PixelShuffle(3)."""

    def __init__(self, scale, n_feats):
        layers = []
        if scale == 3:
            layers += [default_conv(n_feats, 9 * n_feats, 3), nn.PixelShuffle(3)]
        else:
            for _ in range(int(math.log2(scale))):
                layers += [default_conv(n_feats, 4 * n_feats, 3), nn.PixelShuffle(2)]
        super().__init__(*layers)


class HashRounds:
    """Mixin of networks holding GLA layers: `n_hashes` rounds in training mode, `eval_n_hashes` in
    eval mode, switched by `train()`/`eval()`; `set_n_hashes` changes them on a built network
    without touching the weights (eval-mode rotations stay reproducible per layer for each count)."""

    def _init_hash_rounds(self, n_hashes, eval_n_hashes=None):
        self.train_n_hashes = positive_int("the number of hash rounds", n_hashes)
        self.eval_n_hashes = self.train_n_hashes if eval_n_hashes is None else \
            positive_int("the number of hash rounds", eval_n_hashes)

    def gla_layers(self):
        """The GLA layers in module order."""
        return gla_layers(self)

    def set_n_hashes(self, n_hashes, training=False):
        """Use `n_hashes` hash rounds in eval mode (or in training mode with `training=True`) in every
        GLA layer. Returns the network."""
        positive_int("the number of hash rounds", n_hashes)
        if training:
            self.train_n_hashes = n_hashes
        else:
            self.eval_n_hashes = n_hashes
        return self.train(self.training)

    def train(self, mode=True):
        super().train(mode)
        for layer in self.gla_layers():
            layer.n_hashes = self.train_n_hashes if mode else self.eval_n_hashes
        return self
