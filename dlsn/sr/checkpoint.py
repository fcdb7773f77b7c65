"""Loading published DLSN weights strictly, and saving/loading our training checkpoints atomically.

Published checkpoints are plain state dicts, possibly wrapped (`params_ema`, `params`, `state_dict`,
`model`) or with a DataParallel `module.` prefix. `load_model` infers the architecture from the
tensors (width from `head.0.weight`, groups/blocks from the `body.*` indices, reduction from
`conv_match`, chunk size from `fc.0.weight`, scale from the upsampler `tail.0.*`, `rgb_range` from
`sub_mean.bias`); `n_hashes` and `res_scale` leave no trace in the weights and default to the
published 3 and 0.1. Any key or shape that does not match is an error naming it: a partial load
never happens silently.

Our training checkpoints (`save_training_checkpoint`) are dicts with `format: "dlsn-train"` and
model, EMA, optimizer, scheduler, GradScaler, iteration, sampler position, config and RNG states.
They are written atomically (`dlsn.sr.utils.atomic_write`): a temp file in the same folder, flushed and
fsync'ed, then renamed over the target, so an interrupted write leaves the previous file intact.
Files get the mode the umask gives any new file, so other users can read shared weights.
"""
from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import torch

from ..models.backbones import detect_arch, load_arch_model
from ..models.dlsn import DLSN, DIV2K_RGB_MEAN, unwrap_state_dict
from .utils import atomic_write

__all__ = ["CheckpointError", "load_model", "load_state_dict_strict", "infer_architecture", "read_checkpoint",
           "atomic_save", "save_training_checkpoint", "save_weights", "load_pretrained", "export_safetensors",
           "rng_state", "set_rng_state", "TRAIN_FORMAT"]

TRAIN_FORMAT = "dlsn-train"
# Model settings that leave no trace in the weights; stored next to them where we write weights.
_UNTRACEABLE = {"n_hashes": int, "res_scale": float, "similarity": str}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the requested model."""


def _unreadable(path, why):
    return CheckpointError(f"{path}: not a readable dlsn checkpoint or weights file: {why}")


def _load_failure_reason(exc) -> str:
    """Why torch.load failed, in one line of our own (torch's text suggests disabling safe loading)."""
    text = str(exc)
    if isinstance(exc, EOFError):
        return "the file ends before its data does (truncated?)"
    if "central directory" in text or "zip archive" in text:
        return "the file is truncated or corrupt (its zip archive is incomplete)"
    unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if unsafe:
        return (f"it stores Python objects ({unsafe.group(1)}) besides tensors; dlsn reads checkpoints "
                "with safe loading, which runs no code from the file: re-save the weights as a plain state dict")
    if "Weights only load failed" in text:
        return "it holds pickled data that safe loading cannot read; re-save the weights as a plain state dict"
    return f"not a PyTorch file ({type(exc).__name__}: {text.splitlines()[0] if text else 'no details'})"


def read_checkpoint(path, map_location="cpu"):
    """The object stored at `path` (a torch file or `.safetensors`).

    Unreadable files raise `CheckpointError("PATH: not a readable dlsn checkpoint or weights file:
    reason")` on one line. Files are read with `torch.load(weights_only=True)`: tensors and plain
    containers only, never code from the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} not found")
    if path.stat().st_size == 0:
        raise _unreadable(path, "the file is empty")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device=str(map_location)) as handle:
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
                metadata = handle.metadata() or {}
        except SafetensorError as exc:
            raise _unreadable(path, f"corrupt safetensors data ({exc})") from None
        model = {k: _UNTRACEABLE[k](metadata[k]) for k in _UNTRACEABLE if k in metadata}
        if "chunk_size" in metadata:
            model["chunk_size"] = int(metadata["chunk_size"])
        return {"params": tensors, "config": {"model": model}}
    try:
        return torch.load(str(path), map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated/corrupt/foreign files
        raise _unreadable(path, _load_failure_reason(exc)) from None


def _model_state(obj, prefer_ema=True):
    """The weights inside any supported checkpoint object, as a plain state dict."""
    if isinstance(obj, dict) and obj.get("format") == TRAIN_FORMAT:
        return obj["ema"] if prefer_ema and obj.get("ema") is not None else obj["model"]
    return unwrap_state_dict(obj)


def _indices(state_dict, pattern):
    return sorted({int(m.group(1)) for key in state_dict for m in [re.match(pattern, key)] if m})


def infer_architecture(state_dict) -> dict:
    """DLSN constructor arguments read off a (plain) state dict."""
    try:
        n_feats = state_dict["head.0.weight"].shape[0]
        groups = _indices(state_dict, r"body\.(\d+)\.body\.")
        blocks = _indices(state_dict, r"body\.0\.body\.(\d+)\.body\.0\.weight$")
        c = state_dict[f"body.0.body.{len(blocks)}.conv_match.0.weight"].shape[0]
        # A similarity="dot" model has no fc: its chunk size comes from the recorded config.
        fc_key = f"body.0.body.{len(blocks)}.fc.0.weight"
        chunk_size = state_dict[fc_key].shape[0] if fc_key in state_dict else None
        upsample_convs = _indices(state_dict, r"tail\.0\.(\d+)\.weight$")
        first_up = state_dict["tail.0.0.weight"].shape[0]
        bias = state_dict["sub_mean.bias"]
    except KeyError as exc:
        raise CheckpointError(
            f"not a DLSN state dict: key {exc.args[0]!r} is missing (first keys: {sorted(state_dict)[:6]})"
        ) from None
    if first_up == 9 * n_feats and len(upsample_convs) == 1:
        scale = 3
    elif first_up == 4 * n_feats:
        scale = 2 ** len(upsample_convs)
    else:
        raise CheckpointError(f"cannot read the scale off tail.0.0.weight {tuple(state_dict['tail.0.0.weight'].shape)} "
                              f"with n_feats={n_feats}")
    arch = dict(scale=scale, n_resgroups=len(groups), n_resblocks=len(blocks), n_feats=n_feats,
                reduction=n_feats // c, chunk_size=chunk_size,
                rgb_range=round(float(-bias[0]) / DIV2K_RGB_MEAN[0], 3))  # float32 bias: 255 reads as 255.000001
    if chunk_size is None:
        del arch["chunk_size"]
        arch["similarity"] = "dot"
    return arch


def load_state_dict_strict(model, state_dict, exclude=()):
    """Copy `state_dict` into `model`, failing with every missing, unexpected and mis-shaped key named.

    `exclude`: key prefixes that are neither loaded nor required (e.g. `("tail.0.",)` to fine-tune
    another scale from an x2 model). Nothing is copied unless everything matches.
    """
    state_dict = unwrap_state_dict(state_dict)
    own = model.state_dict()

    def kept(key):
        return not any(key.startswith(prefix) for prefix in exclude)

    missing = [k for k in own if kept(k) and k not in state_dict]
    unexpected = [k for k in state_dict if kept(k) and k not in own]
    mismatched = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if kept(k) and k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        lines = ["checkpoint does not match the model:"]
        for title, items in (("shape mismatches", mismatched), ("missing keys", missing),
                             ("unexpected keys", unexpected)):
            if items:
                shown = items[:12] + ([f"... and {len(items) - 12} more"] if len(items) > 12 else [])
                lines.append(f"  {title} ({len(items)}): " + "; ".join(shown))
        raise CheckpointError("\n".join(lines))
    selected = {k: v for k, v in state_dict.items() if kept(k)}
    result = torch.nn.Module.load_state_dict(model, selected, strict=not exclude)
    if exclude:
        bad = [k for k in result.missing_keys if kept(k)] + list(result.unexpected_keys)
        assert not bad, bad  # guaranteed by the checks above
    return model


def load_model(path, scale=None, map_location="cpu", prefer_ema=True, **overrides) -> DLSN:
    """A `DLSN` with the weights of the checkpoint at `path` (published format, ours, or safetensors).

    EDSR/RCAN/FSRCNN checkpoints (ours, whose config names the `arch`, or plain published ones, told
    apart by their keys) go to `dlsn.models.backbones.load_arch_model` and return that network.

    The architecture is inferred from the weights; `scale` and `overrides` (any `DLSN` argument) are
    checked against it where the weights determine them, so a wrong scale, chunk size or width is a
    `CheckpointError` naming the keys and shapes that disagree. The model is returned in eval mode.
    """
    obj = read_checkpoint(path, map_location=map_location)
    state_dict = _model_state(obj, prefer_ema=prefer_ema)
    stored = obj["config"].get("model", {}) if isinstance(obj, dict) and isinstance(obj.get("config"), dict) else {}
    if (stored.get("arch") or detect_arch(state_dict) or "dlsn") != "dlsn":
        return load_arch_model(path, state_dict, stored, scale=scale, **overrides)
    arch = infer_architecture(state_dict)
    if isinstance(obj, dict) and isinstance(obj.get("config"), dict):
        trained = obj["config"].get("model", {})
        arch.update({k: trained[k] for k in _UNTRACEABLE if k in trained})
        if "chunk_size" not in arch and "chunk_size" in trained:
            arch["chunk_size"] = trained["chunk_size"]
        if trained.get("eval_n_hashes") is not None:  # test-time rounds chosen in the training config
            arch["eval_n_hashes"] = trained["eval_n_hashes"]
    requested = dict(overrides)
    if scale is not None:
        requested["scale"] = scale
    kwargs = {**arch, **requested}
    try:
        model = DLSN(**kwargs)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot build DLSN({kwargs}): {exc}") from None
    conflicts = {k: (arch[k], v) for k, v in requested.items() if k in arch and arch[k] != v}
    try:
        load_state_dict_strict(model, state_dict)
    except CheckpointError as exc:
        said = "; ".join(f"{k}={v!r} requested but the checkpoint has {k}={a!r}" for k, (a, v) in conflicts.items())
        raise CheckpointError(f"{path}: {said + ': ' if said else ''}{exc}") from None
    if conflicts:  # a value the weights cannot tell apart (rgb_range); still a conflict with the file
        said = "; ".join(f"{k}={v!r} requested but the checkpoint has {k}={a!r}" for k, (a, v) in conflicts.items())
        raise CheckpointError(f"{path}: {said}")
    return model.eval()


def load_pretrained(model, path, exclude=("tail.0.",)):
    """Initialise `model` from the weights at `path`, skipping keys under `exclude` (fine-tuning)."""
    state_dict = _model_state(read_checkpoint(path), prefer_ema=True)
    try:
        return load_state_dict_strict(model, state_dict, exclude=tuple(exclude))
    except CheckpointError as exc:
        raise CheckpointError(f"pretrained weights {path}: {exc}") from None


def atomic_save(obj, path):
    """`torch.save(obj, path)` atomically (`dlsn.sr.utils.atomic_write`)."""
    return atomic_write(path, lambda handle: torch.save(obj, handle))


def rng_state() -> dict:
    """Every RNG the training loop draws from: torch CPU (GLA rotations), CUDA, numpy, python."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    # numpy's key array is stored as a tensor so the checkpoint loads with `weights_only=True`.
    state = {"torch": torch.get_rng_state(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_checkpoint(path, **fields):
    """Write a training checkpoint (`format: dlsn-train`) atomically; `fields` are its entries."""
    return atomic_save({"format": TRAIN_FORMAT, **fields}, path)


def save_weights(state_dict, model_config, path):
    """Write final weights as `{"params": state_dict, "config": {"model": model_config}}` atomically;
    the config keeps `n_hashes`/`res_scale`, which `load_model` cannot read off the tensors."""
    return atomic_save({"params": {k: v.detach().cpu() for k, v in state_dict.items()},
                        "config": {"model": dict(model_config)}}, path)


def export_safetensors(checkpoint, out, prefer_ema=True):
    """Write the weights of `checkpoint` (any supported format) to a `.safetensors` file; the
    architecture, `n_hashes` and `res_scale` (when the checkpoint records them) go into its metadata."""
    from safetensors.torch import save

    obj = read_checkpoint(checkpoint)
    state_dict = _model_state(obj, prefer_ema=prefer_ema)
    metadata = {"format": "dlsn", **{k: str(v) for k, v in infer_architecture(state_dict).items()}}
    if isinstance(obj, dict) and isinstance(obj.get("config"), dict):
        trained = obj["config"].get("model", {})
        metadata.update({k: str(trained[k]) for k in _UNTRACEABLE if k in trained})
        if "chunk_size" in trained:
            metadata.setdefault("chunk_size", str(trained["chunk_size"]))
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    return atomic_write(out, lambda handle: handle.write(save(tensors, metadata=metadata)))
