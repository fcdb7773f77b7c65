"""GLA as a building block of other SR networks (the paper's Fig. 5): FSRCNN, EDSR and RCAN.

The plain backbones keep the state-dict key names of their widely used public PyTorch
implementations, so existing checkpoints load strictly:
- `EDSR` and `RCAN`: the EDSR-PyTorch family (sanghyun-son/EDSR-PyTorch, `src/model/edsr.py`,
  `rcan.py`; the same keys as yulunzhang/RCAN): `sub_mean.*`, `head.0.*`, `body.{i}.body.{0,2}.*`
  (EDSR residual blocks), `body.{g}.body.{b}.body.{0,2}.*` and `...body.3.conv_du.{0,2}.*` (RCAN
  residual groups of RCABs with channel attention), `body.{n}.*` (closing conv), `tail.0.{0,2}.*`
  (upsampler), `tail.1.*`, `add_mean.*`.
- `FSRCNN`: the layout of yjn870/FSRCNN-pytorch (`models.py`): `first_part.{0,1}.*` (Conv5x5 +
  PReLU), `mid_part.{2k,2k+1}.*` (shrink 1x1, `m` mapping 3x3, expand 1x1, each + PReLU),
  `last_part.*` (ConvTranspose 9x9 with stride `scale`). That repository trains on the Y channel
  (`n_colors=1`); this package's training and evaluation are RGB (`n_colors=3`), so its Y-channel
  checkpoints load with `FSRCNN(..., n_colors=1)` from Python only.

GLA layers are inserted at `gla_positions` and stored under `gla.{position}.*`, outside the backbone's
modules, so the backbone keys never move: a plain checkpoint loads into the GLA variant with only the
`gla.*` keys new (`load_backbone`). With no positions the network is the plain one, key for key and
output for output. A position `p` runs a GLA (with its residual, `res_scale` 1 as in DLSN) on the
features entering backbone stage `p`:
- EDSR: `p` in `0..n_resblocks`: before residual block `p` (`n_resblocks`: before the closing conv);
- RCAN: `p` in `0..n_resgroups`: before residual group `p` (`n_resgroups`: before the closing conv);
- FSRCNN: `p` in `0..m+2`: before mid-part stage `p` (0: shrink, 1..m: mapping, m+1: expand; m+2:
  before the deconvolution). Positions 0 and m+2 see `d` channels, the others `s`.
GLA layer `k` (in position order) uses eval seed `k`, as DLSN's layers do.

`dlsn.models.registry` builds, detects and reads the arguments of every architecture.
"""
from __future__ import annotations

import torch
from torch import nn

from ..nn import GLA
from .blocks import HashRounds, MeanShift, Upsampler, check_scale, default_conv
from .state_dict import load_state_dict_strict

__all__ = ["EDSR", "RCAN", "FSRCNN", "load_backbone"]


class _GLAInserts(HashRounds, nn.Module):
    """Mixin: `self.gla` = GLA layers keyed by the backbone stage they run before."""

    def _make_gla(self, positions, n_positions, channels_at, reduction, chunk_size, n_hashes, gla_options):
        positions = list(positions or ())
        bad = [p for p in positions if not isinstance(p, int) or isinstance(p, bool) or not 0 <= p <= n_positions]
        if bad or len(set(positions)) != len(positions):
            raise ValueError(f"{type(self).__name__}: gla_positions must be distinct integers in 0..{n_positions}, "
                             f"got {positions}")
        self.gla_positions = sorted(positions)
        self._init_hash_rounds(n_hashes)
        self.gla = nn.ModuleDict({
            str(p): GLA(channels_at(p), reduction=reduction, chunk_size=chunk_size, n_hashes=n_hashes,
                        res_scale=1.0, eval_seed=seed, **gla_options)
            for seed, p in enumerate(self.gla_positions)
        })

    def _stages(self, stages, x):
        """Run `stages` in order with the GLA layers at their positions."""
        for index, stage in enumerate(stages):
            if str(index) in self.gla:
                x = self.gla[str(index)](x)
            x = stage(x)
        if str(len(stages)) in self.gla:
            x = self.gla[str(len(stages))](x)
        return x

    def _check_input(self, x):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{type(self).__name__} expects a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != self.n_colors or not x.is_floating_point():
            raise ValueError(f"{type(self).__name__} expects a floating-point x of shape [N, {self.n_colors}, H, W], "
                             f"got {x.dtype} {tuple(x.shape)}")


class _HeadBodyTail(_GLAInserts):
    """EDSR and RCAN: head, body stages (GLA layers before the chosen ones) and a closing conv with
    a long skip, upsampling tail; `sub_mean`/`add_mean` around them."""

    def forward(self, x):
        self._check_input(x)
        x = self.head(self.sub_mean(x))
        stages, closing = list(self.body)[:-1], self.body[-1]
        x = closing(self._stages(stages, x)) + x
        return self.add_mean(self.tail(x))


class ResBlock(nn.Module):
    """EDSR residual block: Conv-ReLU-Conv, `body(x) * res_scale + x`; keys `body.0.*`, `body.2.*`."""

    def __init__(self, n_feats, res_scale=1.0):
        super().__init__()
        self.body = nn.Sequential(default_conv(n_feats, n_feats, 3), nn.ReLU(inplace=True),
                                  default_conv(n_feats, n_feats, 3))
        self.res_scale = res_scale

    def forward(self, x):
        return self.body(x) * self.res_scale + x


class EDSR(_HeadBodyTail):
    """EDSR (Lim et al. 2017) with optional GLA layers; defaults: EDSR-baseline (16 blocks, 64 features).

    The large EDSR is `n_resblocks=32, n_feats=256, res_scale=0.1`; EDSR-PyTorch's published weights
    use `rgb_range=255`. `forward(x)`: `x` [N, 3, h, w] in [0, rgb_range] -> [N, 3, scale*h, scale*w].
    """

    def __init__(self, scale=2, n_resblocks=16, n_feats=64, res_scale=1.0, rgb_range=1.0, n_colors=3,
                 gla_positions=(), reduction=4, chunk_size=128, n_hashes=3, **gla_options):
        super().__init__()
        check_scale("EDSR", scale)
        self.scale, self.rgb_range, self.n_colors = scale, rgb_range, n_colors
        self.sub_mean = MeanShift(rgb_range, sign=-1)
        self.head = nn.Sequential(default_conv(n_colors, n_feats, 3))
        self.body = nn.Sequential(*[ResBlock(n_feats, res_scale) for _ in range(n_resblocks)],
                                  default_conv(n_feats, n_feats, 3))
        self.tail = nn.Sequential(Upsampler(scale, n_feats), default_conv(n_feats, n_colors, 3))
        self.add_mean = MeanShift(rgb_range, sign=1)
        self._make_gla(gla_positions, n_resblocks, lambda p: n_feats, reduction, chunk_size, n_hashes, gla_options)

class CALayer(nn.Module):
    """Channel attention: global average pool, 1x1 down (C/reduction), ReLU, 1x1 up, sigmoid; keys `conv_du.{0,2}.*`."""

    def __init__(self, channels, reduction=16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(nn.Conv2d(channels, channels // reduction, 1), nn.ReLU(inplace=True),
                                     nn.Conv2d(channels // reduction, channels, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.conv_du(self.avg_pool(x))


class RCAB(nn.Module):
    """Residual channel attention block: Conv-ReLU-Conv-CA plus identity (no scaling, as published)."""

    def __init__(self, n_feats, ca_reduction=16):
        super().__init__()
        self.body = nn.Sequential(default_conv(n_feats, n_feats, 3), nn.ReLU(inplace=True),
                                  default_conv(n_feats, n_feats, 3), CALayer(n_feats, ca_reduction))

    def forward(self, x):
        return self.body(x) + x


class ResidualGroup(nn.Module):
    """`n_resblocks` RCABs and a conv, plus identity; keys `body.{b}.*`, `body.{n_resblocks}.*`."""

    def __init__(self, n_feats, n_resblocks, ca_reduction=16):
        super().__init__()
        self.body = nn.Sequential(*[RCAB(n_feats, ca_reduction) for _ in range(n_resblocks)],
                                  default_conv(n_feats, n_feats, 3))

    def forward(self, x):
        return self.body(x) + x


class RCAN(_HeadBodyTail):
    """RCAN (Zhang et al. 2018) with optional GLA layers; defaults: the published 10 groups x 20 RCABs x 64.

    `ca_reduction` is the channel attention's (16); `reduction` is GLA's. Published RCAN weights use
    `rgb_range=255`. `forward(x)`: `x` [N, 3, h, w] in [0, rgb_range] -> [N, 3, scale*h, scale*w].
    """

    def __init__(self, scale=2, n_resgroups=10, n_resblocks=20, n_feats=64, ca_reduction=16, rgb_range=1.0,
                 n_colors=3, gla_positions=(), reduction=4, chunk_size=128, n_hashes=3, **gla_options):
        super().__init__()
        check_scale("RCAN", scale)
        if n_feats % ca_reduction:
            raise ValueError(f"RCAN: n_feats ({n_feats}) must be divisible by ca_reduction ({ca_reduction})")
        self.scale, self.rgb_range, self.n_colors = scale, rgb_range, n_colors
        self.sub_mean = MeanShift(rgb_range, sign=-1)
        self.head = nn.Sequential(default_conv(n_colors, n_feats, 3))
        self.body = nn.Sequential(*[ResidualGroup(n_feats, n_resblocks, ca_reduction) for _ in range(n_resgroups)],
                                  default_conv(n_feats, n_feats, 3))
        self.tail = nn.Sequential(Upsampler(scale, n_feats), default_conv(n_feats, n_colors, 3))
        self.add_mean = MeanShift(rgb_range, sign=1)
        self._make_gla(gla_positions, n_resgroups, lambda p: n_feats, reduction, chunk_size, n_hashes, gla_options)

class FSRCNN(_GLAInserts):
    """FSRCNN (Dong et al. 2016) with optional GLA layers: `d` features, shrink to `s`, `m` mapping layers.

    Inputs in [0, rgb_range] (no mean shift, as in the reference layout); the deconvolution upsamples
    by `scale`. `forward(x)`: [N, n_colors, h, w] -> [N, n_colors, scale*h, scale*w].
    """

    def __init__(self, scale=2, d=56, s=12, m=4, rgb_range=1.0, n_colors=3, gla_positions=(), reduction=4,
                 chunk_size=128, n_hashes=3, **gla_options):
        super().__init__()
        check_scale("FSRCNN", scale)
        self.scale, self.rgb_range, self.n_colors = scale, rgb_range, n_colors
        self.first_part = nn.Sequential(nn.Conv2d(n_colors, d, 5, padding=2), nn.PReLU(d))
        mid = [nn.Conv2d(d, s, 1), nn.PReLU(s)]
        for _ in range(m):
            mid += [nn.Conv2d(s, s, 3, padding=1), nn.PReLU(s)]
        mid += [nn.Conv2d(s, d, 1), nn.PReLU(d)]
        self.mid_part = nn.Sequential(*mid)
        self.last_part = nn.ConvTranspose2d(d, n_colors, 9, stride=scale, padding=4, output_padding=scale - 1)
        self._reset_parameters()
        self._make_gla(gla_positions, m + 2, lambda p: d if p in (0, m + 2) else s, reduction, chunk_size,
                       n_hashes, gla_options)

    def _reset_parameters(self):
        # FSRCNN's initialisation (He-normal convs, a small deconvolution): PyTorch's default for the
        # 9x9 deconvolution starts training far from an image.
        for module in [*self.first_part, *self.mid_part]:
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=(2 / (module.out_channels * module.weight[0, 0].numel())) ** 0.5)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.last_part.weight, std=1e-3)
        nn.init.zeros_(self.last_part.bias)

    def forward(self, x):
        self._check_input(x)
        x = self.first_part(x)
        stages = [self.mid_part[i:i + 2] for i in range(0, len(self.mid_part), 2)]
        return self.last_part(self._stages(stages, x))


def load_backbone(model, state_dict):
    """Load a plain EDSR/RCAN/FSRCNN checkpoint strictly into `model` (plain or with GLA layers): only
    the GLA keys (`gla.*`) may be absent from it. Returns the model keys it did not hold (the new
    GLA keys, left at their initialisation)."""
    return load_state_dict_strict(model, state_dict, optional=("gla.",))
