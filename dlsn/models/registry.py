"""The model zoo's one registry: build an architecture from its fields, tell it from its state-dict
keys, read its constructor arguments off its weights.

Architectures (`ARCHS`): "dlsn" (`DLSN`), and "edsr", "rcan", "fsrcnn" with GLA layers
(`dlsn.models.backbones`). Fields are the names of the training config's `model` section
(`dlsn.sr.config.ModelConfig`); `ARCH_FIELDS` maps the ones each architecture reads to its
constructor arguments.
"""
import dataclasses
import re

from .backbones import EDSR, FSRCNN, RCAN
from .blocks import DIV2K_RGB_MEAN
from .dlsn import DLSN
from .state_dict import CheckpointError

__all__ = ["ARCHS", "ARCH_CLASSES", "ARCH_FIELDS", "build_model", "detect_arch", "infer_arguments"]

ARCHS = ("dlsn", "edsr", "rcan", "fsrcnn")
ARCH_CLASSES = {"dlsn": DLSN, "edsr": EDSR, "rcan": RCAN, "fsrcnn": FSRCNN}

_GLA_FIELDS = ("reduction", "chunk_size", "n_hashes", "backend", "fp32_precision", "check_finite", "similarity")
_SAME_NAME = ("scale", "rgb_range", "gla_positions") + _GLA_FIELDS
ARCH_FIELDS = {
    "dlsn": {name: name for name in ("scale", "n_resgroups", "n_resblocks", "n_feats", "res_scale", "rgb_range",
                                     "local_fusion", "eval_n_hashes") + _GLA_FIELDS},
    "edsr": {name: name for name in ("n_resblocks", "n_feats", "res_scale") + _SAME_NAME},
    "rcan": {name: name for name in ("n_resgroups", "n_resblocks", "n_feats") + _SAME_NAME},
    # FSRCNN: n_feats is d, n_resblocks is m (mapping layers); s is the published 12.
    "fsrcnn": {"n_feats": "d", "n_resblocks": "m", **{name: name for name in _SAME_NAME}},
}


def build_model(model_config):
    """The network a `ModelConfig` (or a dict of its fields) describes; `arch` defaults to "dlsn".

    A field the architecture does not read must keep its default (a dict must not name it): a
    setting that silently does nothing (local_fusion=false on EDSR, say) would be a wrong experiment.
    """
    is_config = dataclasses.is_dataclass(model_config)
    fields = dataclasses.asdict(model_config) if is_config else dict(model_config)
    defaults = dataclasses.asdict(type(model_config)()) if is_config else {}
    arch = fields.pop("arch", "dlsn")
    if arch not in ARCHS:
        raise ValueError(f"model.arch must be one of {ARCHS}, got {arch!r}")
    if arch == "dlsn" and fields.get("gla_positions"):
        raise ValueError("model.gla_positions is for arch edsr/rcan/fsrcnn; DLSN has a GLA in every group")
    read = ARCH_FIELDS[arch]
    ignored = sorted(name for name, value in fields.items()
                     if name not in read and (name not in defaults or value != defaults[name]))
    if ignored:
        raise ValueError(f"model.arch {arch!r} does not use model.{', model.'.join(ignored)}; "
                         f"it reads {', '.join(sorted(read))}")
    return ARCH_CLASSES[arch](**{argument: fields[name] for name, argument in read.items() if name in fields})


def detect_arch(state_dict):
    """Which of `ARCHS` a plain state dict belongs to, from key names only that architecture has
    (None if none fits)."""
    if "first_part.0.weight" in state_dict and "last_part.weight" in state_dict:
        return "fsrcnn"
    if any(".conv_match." in key for key in state_dict if key.startswith("body.")):
        return "dlsn"
    if "body.0.body.0.body.3.conv_du.0.weight" in state_dict:
        return "rcan"
    if "body.0.body.0.weight" in state_dict and "head.0.weight" in state_dict:
        return "edsr"
    return None


def _indices(state_dict, pattern):
    return sorted({int(m.group(1)) for key in state_dict for m in [re.match(pattern, key)] if m})


def _head_and_tail(state_dict):
    """Width, colours, scale and rgb_range of a network with EDSR's head, upsampler and mean shift."""
    n_feats = state_dict["head.0.weight"].shape[0]
    first_up = state_dict["tail.0.0.weight"].shape[0]
    upsample_convs = len(_indices(state_dict, r"tail\.0\.(\d+)\.weight$"))
    if first_up == 9 * n_feats and upsample_convs == 1:
        scale = 3
    elif first_up == 4 * n_feats:
        scale = 2 ** upsample_convs
    else:
        raise CheckpointError(f"cannot read the scale off tail.0.0.weight {tuple(state_dict['tail.0.0.weight'].shape)} "
                              f"with n_feats={n_feats}")
    # float32 bias: 255 reads as 255.000001
    rgb_range = round(float(-state_dict["sub_mean.bias"][0]) / DIV2K_RGB_MEAN[0], 3)
    return dict(n_feats=n_feats, n_colors=state_dict["head.0.weight"].shape[1], scale=scale, rgb_range=rgb_range)


def _dlsn_arguments(state_dict):
    shape = _head_and_tail(state_dict)
    blocks = _indices(state_dict, r"body\.0\.body\.(\d+)\.body\.0\.weight$")
    gla = f"body.0.body.{len(blocks)}."
    arguments = dict(scale=shape["scale"], n_resgroups=len(_indices(state_dict, r"body\.(\d+)\.body\.")),
                     n_resblocks=len(blocks), n_feats=shape["n_feats"],
                     reduction=shape["n_feats"] // state_dict[gla + "conv_match.0.weight"].shape[0],
                     rgb_range=shape["rgb_range"])
    # A similarity="dot" model has no fc: its chunk size comes from the recorded config.
    if gla + "fc.0.weight" in state_dict:
        arguments["chunk_size"] = state_dict[gla + "fc.0.weight"].shape[0]
    else:
        arguments["similarity"] = "dot"
    return arguments


def _gla_arguments(state_dict):
    """GLA positions, chunk size and reduction of an EDSR/RCAN/FSRCNN with GLA layers."""
    positions = _indices(state_dict, r"gla\.(\d+)\.")
    arguments = {"gla_positions": positions}
    if positions:
        match = state_dict[f"gla.{positions[0]}.conv_match.0.weight"]
        arguments.update(chunk_size=state_dict[f"gla.{positions[0]}.fc.0.weight"].shape[0],
                         reduction=match.shape[1] // match.shape[0])
    return arguments


def _fsrcnn_arguments(state_dict):
    conv = state_dict["first_part.0.weight"]
    return dict(_gla_arguments(state_dict), d=conv.shape[0], n_colors=conv.shape[1],
                s=state_dict["mid_part.0.weight"].shape[0],
                m=len(_indices(state_dict, r"mid_part\.(\d+)\.bias$")) - 2)


def _edsr_arguments(state_dict):
    shape = _head_and_tail(state_dict)
    # EDSR-PyTorch's convention: res_scale 0.1 for the 256-feature model, else 1.
    return dict(_gla_arguments(state_dict), **shape,
                n_resblocks=len(_indices(state_dict, r"body\.(\d+)\.body\.0\.weight$")),
                res_scale=0.1 if shape["n_feats"] == 256 else 1.0)


def _rcan_arguments(state_dict):
    shape = _head_and_tail(state_dict)
    return dict(_gla_arguments(state_dict), **shape,
                n_resgroups=len(_indices(state_dict, r"body\.(\d+)\.body\.0\.body\.0\.weight$")),
                n_resblocks=len(_indices(state_dict, r"body\.0\.body\.(\d+)\.body\.0\.weight$")),
                ca_reduction=shape["n_feats"] // state_dict["body.0.body.0.body.3.conv_du.0.weight"].shape[0])


_ARGUMENT_READERS = {"dlsn": _dlsn_arguments, "edsr": _edsr_arguments, "rcan": _rcan_arguments,
                     "fsrcnn": _fsrcnn_arguments}


def infer_arguments(state_dict, arch=None):
    """Constructor arguments of `arch` (default: `detect_arch`) read off a plain state dict.

    Not in the weights: the hash rounds (GLA's default 3), DLSN's `res_scale` (published 0.1),
    FSRCNN's scale (the caller's), the chunk size of a similarity="dot" DLSN (it has no `fc`; the
    result says `similarity="dot"` instead). A missing key is a `CheckpointError` naming it.
    """
    arch = arch or detect_arch(state_dict)
    if arch not in _ARGUMENT_READERS:
        raise CheckpointError(f"not a state dict of any of {ARCHS} (first keys: {sorted(state_dict)[:6]})")
    try:
        return _ARGUMENT_READERS[arch](state_dict)
    except KeyError as exc:
        raise CheckpointError(f"not a {arch.upper()} state dict: key {exc.args[0]!r} is missing "
                              f"(first keys: {sorted(state_dict)[:6]})") from None
