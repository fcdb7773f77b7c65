"""State dicts of the networks: unwrapping published checkpoints and loading strictly.

Published checkpoints are plain state dicts, possibly wrapped (`params_ema`, `params`,
`state_dict`, `model`) or with a DataParallel `module.` prefix. A load either copies every tensor
or nothing, and a mismatch names every missing, unexpected and mis-shaped key on one line.
"""
import torch
from torch import nn

CHECKPOINT_WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model")
# Keys listed per kind in a mismatch message; the count says how many there are in all.
_SHOWN_KEYS = 12


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the requested model."""


def unwrap_state_dict(state_dict):
    """A published checkpoint as a plain state dict: unwrap `params_ema`/`params`/`state_dict`/`model`
    containers and strip a DataParallel `module.` prefix."""
    if not isinstance(state_dict, dict):
        raise TypeError(f"a checkpoint must be a dict of tensors, got {type(state_dict).__name__}")
    while not any(isinstance(value, torch.Tensor) for value in state_dict.values()):
        wrapper = next((key for key in CHECKPOINT_WRAPPER_KEYS if isinstance(state_dict.get(key), dict)), None)
        if wrapper is None:
            raise ValueError(
                "checkpoint holds no tensors and none of the known wrappers "
                f"{CHECKPOINT_WRAPPER_KEYS}; its keys are {sorted(state_dict)[:10]}"
            )
        state_dict = state_dict[wrapper]
    if state_dict and all(key.startswith("module.") for key in state_dict):
        state_dict = {key[len("module."):]: value for key, value in state_dict.items()}
    return state_dict


def _listing(title, items):
    shown = items[:_SHOWN_KEYS] + ([f"... and {len(items) - _SHOWN_KEYS} more"] if len(items) > _SHOWN_KEYS else [])
    return f"{title} ({len(items)}): " + "; ".join(shown)


def load_state_dict_strict(model, state_dict, exclude=(), optional=()):
    """Copy `state_dict` (any wrapping `unwrap_state_dict` removes) into `model`, all or nothing.

    exclude: key prefixes neither loaded nor required (e.g. `("tail.0.",)` to fine-tune another
        scale from an x2 model).
    optional: prefixes of model keys the checkpoint may lack; they keep their initialisation (e.g.
        `("gla.",)`: a plain EDSR/RCAN/FSRCNN checkpoint into its GLA variant).
    Every other model key must be in the checkpoint with the same shape and every checkpoint key in
    the model; otherwise `CheckpointError` names them (a wrong scale shows as `tail.*` mismatches,
    a wrong width as mismatches everywhere). Returns the sorted model keys that were not loaded.
    """
    state_dict = unwrap_state_dict(state_dict)
    own = model.state_dict()

    def kept(key):
        return not key.startswith(tuple(exclude))

    absent = [k for k in own if kept(k) and k not in state_dict]
    missing = [k for k in absent if not k.startswith(tuple(optional))]
    unexpected = [k for k in state_dict if kept(k) and k not in own]
    mismatched = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if kept(k) and k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = [_listing(title, items) for title, items in (("shape mismatches", mismatched),
                 ("missing keys", missing), ("unexpected keys", unexpected)) if items]
        raise CheckpointError(f"checkpoint does not fit this {type(model).__name__} (check scale, width and "
                              "depth): " + " | ".join(parts))
    nn.Module.load_state_dict(model, {k: v for k, v in state_dict.items() if kept(k)}, strict=False)
    return sorted(absent)
