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

`build_model(model_config)` builds any of `ARCHS` (DLSN included) from a `ModelConfig` or a dict;
config fields map to constructor arguments as `ARCH_FIELDS` lists.
"""
from __future__ import annotations

import dataclasses
import re

import torch
from torch import nn

from ..nn.gla import GLA
from .dlsn import (DIV2K_RGB_MEAN, DLSN, SUPPORTED_SCALES, MeanShift, Upsampler, _positive_rounds, default_conv,
                    unwrap_state_dict)

__all__ = ["ARCHS", "ARCH_FIELDS", "EDSR", "RCAN", "FSRCNN", "build_model", "load_backbone", "detect_arch", "load_arch_model"]

ARCHS = ("dlsn", "edsr", "rcan", "fsrcnn")


class _GLAInserts(nn.Module):
    """Mixin: `self.gla` = GLA layers keyed by the backbone stage they run before."""

    def _make_gla(self, positions, n_positions, channels_at, reduction, chunk_size, n_hashes, gla_options):
        positions = list(positions or ())
        bad = [p for p in positions if not isinstance(p, int) or isinstance(p, bool) or not 0 <= p <= n_positions]
        if bad or len(set(positions)) != len(positions):
            raise ValueError(f"{type(self).__name__}: gla_positions must be distinct integers in 0..{n_positions}, "
                             f"got {positions}")
        self.gla_positions = sorted(positions)
        self._rounds = {True: n_hashes, False: n_hashes}  # hash rounds in train / eval mode
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

    def gla_layers(self):
        return [self.gla[str(p)] for p in self.gla_positions]

    def set_n_hashes(self, n_hashes, training=False):
        """Use `n_hashes` hash rounds in eval mode (or in training mode with `training=True`) in every
        GLA layer, as `DLSN.set_n_hashes`; the weights are untouched. Returns the model."""
        self._rounds[bool(training)] = _positive_rounds(n_hashes)
        return self.train(self.training)

    def train(self, mode=True):
        super().train(mode)
        for layer in self.gla_layers():
            layer.n_hashes = self._rounds[bool(mode)]
        return self

    def _check_input(self, x):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{type(self).__name__} expects a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != self.n_colors or not x.is_floating_point():
            raise ValueError(f"{type(self).__name__} expects a floating-point x of shape [N, {self.n_colors}, H, W], "
                             f"got {x.dtype} {tuple(x.shape)}")


def _check_scale(name, scale):
    if scale not in SUPPORTED_SCALES:
        raise ValueError(f"{name} supports scales {SUPPORTED_SCALES}, got {scale!r}")


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
        _check_scale("EDSR", scale)
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
        _check_scale("RCAN", scale)
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
        _check_scale("FSRCNN", scale)
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


# Config fields (`dlsn.sr.config.ModelConfig`) each architecture reads, as constructor arguments.
# GLA keywords every architecture passes to its GLA layers unchanged.
_GLA_OPTIONS = {name: name for name in ("backend", "fp32_precision", "check_finite", "similarity")}
ARCH_FIELDS = {
    "edsr": {"scale": "scale", "n_resblocks": "n_resblocks", "n_feats": "n_feats", "res_scale": "res_scale",
             "rgb_range": "rgb_range", "gla_positions": "gla_positions", "reduction": "reduction",
             "chunk_size": "chunk_size", "n_hashes": "n_hashes", **_GLA_OPTIONS},
    "rcan": {"scale": "scale", "n_resgroups": "n_resgroups", "n_resblocks": "n_resblocks", "n_feats": "n_feats",
             "rgb_range": "rgb_range", "gla_positions": "gla_positions", "reduction": "reduction",
             "chunk_size": "chunk_size", "n_hashes": "n_hashes", **_GLA_OPTIONS},
    # FSRCNN: n_feats is d, n_resblocks is m (mapping layers); s is the published 12.
    "fsrcnn": {"scale": "scale", "n_feats": "d", "n_resblocks": "m", "rgb_range": "rgb_range",
               "gla_positions": "gla_positions", "reduction": "reduction", "chunk_size": "chunk_size",
               "n_hashes": "n_hashes", **_GLA_OPTIONS},
}
_CLASSES = {"edsr": EDSR, "rcan": RCAN, "fsrcnn": FSRCNN}
_NOT_DLSN = ("arch", "gla_positions")


def build_model(model_config):
    """The network a `ModelConfig` (or a dict of its fields) describes; `arch` defaults to "dlsn"."""
    fields = dataclasses.asdict(model_config) if dataclasses.is_dataclass(model_config) else dict(model_config)
    arch = fields.get("arch", "dlsn")
    if arch not in ARCHS:
        raise ValueError(f"model.arch must be one of {ARCHS}, got {arch!r}")
    if arch == "dlsn":
        if fields.get("gla_positions"):
            raise ValueError("model.gla_positions is for arch edsr/rcan/fsrcnn; DLSN has a GLA in every group")
        return DLSN(**{k: v for k, v in fields.items() if k not in _NOT_DLSN})
    from ..sr.config import ModelConfig

    # A field this architecture does not read must keep its default: a setting that silently does
    # nothing (local_fusion=false on EDSR, say) would be a wrong experiment.
    defaults = dataclasses.asdict(ModelConfig())
    ignored = sorted(name for name, value in fields.items()
                     if name not in ARCH_FIELDS[arch] and name != "arch" and value != defaults.get(name, value))
    if ignored:
        raise ValueError(f"model.arch {arch!r} does not use model.{', model.'.join(ignored)}; "
                         f"it reads {', '.join(sorted(ARCH_FIELDS[arch]))}")
    kwargs = {argument: fields[name] for name, argument in ARCH_FIELDS[arch].items() if name in fields}
    return _CLASSES[arch](**kwargs)


def load_backbone(model, state_dict):
    """Load a plain EDSR/RCAN/FSRCNN checkpoint strictly into `model` (plain or with GLA layers).

    Every checkpoint key must exist in `model` with the same shape, and every model key the checkpoint
    lacks must be a GLA key (`gla.*`); otherwise `CheckpointError` names the keys (a wrong scale shows
    as `tail.*` shape mismatches or unexpected keys, a wrong width as mismatches everywhere). Wrappers
    (`params_ema`, `state_dict`, ...) and a `module.` prefix are removed first. Nothing is copied
    unless everything fits. Returns the sorted list of model keys that were not in the checkpoint
    (the new GLA keys, left at their initialisation).
    """
    from ..sr.checkpoint import CheckpointError

    state_dict = unwrap_state_dict(state_dict)
    own = model.state_dict()
    new = sorted(k for k in own if k not in state_dict)
    missing = [k for k in new if not k.startswith("gla.")]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in state_dict if k in own and state_dict[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        for title, items in (("shape mismatches", mismatched), ("missing backbone keys", missing),
                             ("unexpected keys", unexpected)):
            if items:
                shown = items[:8] + ([f"... and {len(items) - 8} more"] if len(items) > 8 else [])
                parts.append(f"{title} ({len(items)}): " + "; ".join(shown))
        raise CheckpointError(f"checkpoint does not fit this {type(model).__name__} (check scale, width and depth): "
                              + " | ".join(parts))
    result = nn.Module.load_state_dict(model, state_dict, strict=False)
    assert not result.unexpected_keys and sorted(result.missing_keys) == new  # guaranteed by the checks above
    return new


def detect_arch(state_dict):
    """Which of `ARCHS` a plain state dict belongs to, from its key names (None if none fits)."""
    if "first_part.0.weight" in state_dict and "last_part.weight" in state_dict:
        return "fsrcnn"
    if any(".conv_match." in key for key in state_dict if key.startswith("body.")):
        return "dlsn"
    if "body.0.body.0.body.3.conv_du.0.weight" in state_dict:
        return "rcan"
    if "body.0.body.0.weight" in state_dict and "head.0.weight" in state_dict:
        return "edsr"
    return None


def _count(state_dict, pattern):
    return len({m.group(1) for key in state_dict for m in [re.match(pattern, key)] if m})


def _infer_kwargs(arch, state_dict):
    """Constructor arguments of a plain or GLA EDSR/RCAN/FSRCNN read off its weights (no config stored).

    Not in the weights: `n_hashes` (GLA's default 3), FSRCNN's scale (the caller's), EDSR's
    `res_scale` (EDSR-PyTorch's convention: 0.1 for the 256-feature model, else 1).
    """
    positions = sorted({int(m.group(1)) for key in state_dict for m in [re.match(r"gla\.(\d+)\.", key)] if m})
    kwargs = {"gla_positions": positions}
    if positions:
        first = f"gla.{positions[0]}."
        kwargs["chunk_size"] = state_dict[first + "fc.0.weight"].shape[0]
        kwargs["reduction"] = (state_dict[first + "conv_match.0.weight"].shape[1]
                               // state_dict[first + "conv_match.0.weight"].shape[0])
    if arch == "fsrcnn":
        conv = state_dict["first_part.0.weight"]
        kwargs.update(d=conv.shape[0], n_colors=conv.shape[1], s=state_dict["mid_part.0.weight"].shape[0],
                      m=_count(state_dict, r"mid_part\.(\d+)\.bias$") - 2)
        return kwargs
    n_feats = state_dict["head.0.weight"].shape[0]
    first_up = state_dict["tail.0.0.weight"].shape[0]
    ups = _count(state_dict, r"tail\.0\.(\d+)\.weight$")
    kwargs.update(n_feats=n_feats, n_colors=state_dict["head.0.weight"].shape[1],
                  scale=3 if first_up == 9 * n_feats and ups == 1 else 2 ** ups,
                  rgb_range=round(float(-state_dict["sub_mean.bias"][0]) / DIV2K_RGB_MEAN[0], 3))
    if arch == "edsr":
        kwargs.update(n_resblocks=_count(state_dict, r"body\.(\d+)\.body\.0\.weight$"),
                      res_scale=0.1 if n_feats == 256 else 1.0)
    else:
        kwargs.update(n_resgroups=_count(state_dict, r"body\.(\d+)\.body\.0\.body\.0\.weight$"),
                      n_resblocks=_count(state_dict, r"body\.0\.body\.(\d+)\.body\.0\.weight$"),
                      ca_reduction=n_feats // state_dict["body.0.body.0.body.3.conv_du.0.weight"].shape[0])
    return kwargs


def load_arch_model(path, state_dict, model_config=None, scale=None, **overrides):
    """An EDSR/RCAN/FSRCNN (with its GLA layers) holding `state_dict`, in eval mode (`dlsn.sr.checkpoint.load_model`
    hands non-DLSN checkpoints here).

    model_config: the `model` section stored with our checkpoints; without it (a published plain
    checkpoint) the architecture is read off the weights (`_infer_kwargs`). `scale` and `overrides`
    (config field names, e.g. `n_hashes`) replace the stored values; a scale or shape that does not fit
    the weights is a `CheckpointError` naming the keys.
    """
    from ..sr.checkpoint import CheckpointError, load_state_dict_strict

    model_config = model_config or {}
    arch = model_config.get("arch") or detect_arch(state_dict)
    if model_config.get("arch"):
        fields = {**model_config, **overrides}
        stored_scale = model_config.get("scale")
        kwargs = {argument: fields[name] for name, argument in ARCH_FIELDS[arch].items() if name in fields}
    else:  # weights only, perhaps with the untraceable settings (n_hashes, ...) stored next to them
        kwargs = _infer_kwargs(arch, state_dict)
        stored_scale = kwargs.get("scale")
        fields = {**model_config, **overrides}
        kwargs.update({ARCH_FIELDS[arch][name]: value for name, value in fields.items() if name in ARCH_FIELDS[arch]})
    if "scale" not in kwargs and scale is None:
        raise CheckpointError(f"{path}: {arch} weights do not record the scale; give it (--scale / scale=)")
    said = ""
    if scale is not None:
        if stored_scale is not None and scale != stored_scale:
            said = f"scale={scale} requested but the checkpoint is x{stored_scale}: "
        kwargs["scale"] = scale
    try:
        model = _CLASSES[arch](**kwargs)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot build {arch}({kwargs}): {exc}") from None
    try:
        load_state_dict_strict(model, state_dict)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {said}{exc}") from None
    if said:  # FSRCNN's scale leaves no trace in the weights
        raise CheckpointError(f"{path}: {said.rstrip(': ')}")
    return model.eval()
