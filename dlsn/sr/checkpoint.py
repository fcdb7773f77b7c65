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
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..models import DLSN, CheckpointError, detect_arch, infer_arguments, load_state_dict_strict, unwrap_state_dict
from ..models.registry import ARCH_CLASSES, ARCH_FIELDS
from .utils import atomic_write

__all__ = ["CheckpointError", "load_model", "read_checkpoint",
           "atomic_save", "save_training_checkpoint", "save_weights", "load_pretrained", "export_safetensors",
           "rng_state", "set_rng_state", "TRAIN_FORMAT"]

TRAIN_FORMAT = "dlsn-train"
# Model settings that leave no trace in the weights; stored next to them where we write weights.
_UNTRACEABLE = {"n_hashes": int, "res_scale": float, "similarity": str}


def _unreadable(path, why):
    return CheckpointError(f"{path}: not a readable dlsn checkpoint or weights file: {why}")


def _pickle_protocol(path) -> int:
    """The pickle protocol of a torch file (its `data.pkl` in the zip format, else the file itself);
    0 when unknown."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
                head = archive.open(name).read(2)
        else:
            with open(path, "rb") as handle:
                head = handle.read(2)
    except (OSError, StopIteration, zipfile.BadZipFile):
        return 0
    return head[1] if len(head) == 2 and head[0] == 0x80 else 0


def _load_failure_reason(exc, path) -> str:
    """Why torch.load failed, in one line of our own (torch's text suggests disabling safe loading)."""
    text = str(exc)
    if isinstance(exc, EOFError):
        return "the file ends before its data does (truncated?)"
    if "central directory" in text or "zip archive" in text:
        return "the file is truncated or corrupt (its zip archive is incomplete)"
    protocol = _pickle_protocol(path)
    if "Unsupported operand" in text and protocol > 2:
        return (f"it was pickled with protocol {protocol}, which safe loading (torch.load with weights_only=True, "
                "running no code from the file) cannot read: re-save the weights with torch.save's default protocol")
    unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if unsafe:
        return (f"it stores Python objects ({unsafe.group(1)}) besides tensors; dlsn reads checkpoints "
                "with safe loading, which runs no code from the file: re-save the weights as a plain state dict")
    if "Weights only load failed" in text:
        return "it holds pickled data that safe loading cannot read; re-save the weights as a plain state dict"
    return f"not a PyTorch file ({type(exc).__name__}: {text.splitlines()[0] if text else 'no details'})"


_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")


def _folder_error(folder: Path) -> CheckpointError:
    """The error for a folder given as a checkpoint: the checkpoint files in it (a training run's
    `model.pt`, `best.pt` and latest `checkpoints/iter_*.pt`, or any weights file), to pick from."""
    found = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix in _CHECKPOINT_SUFFIXES)
    found += [str(p.relative_to(folder)) for p in sorted((folder / "checkpoints").glob("iter_*.pt"))[-1:]]
    if not found:
        return CheckpointError(f"checkpoint {str(folder)!r} is a folder, not a file, and holds no checkpoint "
                               f"({', '.join('*' + s for s in _CHECKPOINT_SUFFIXES)})")
    return CheckpointError(f"checkpoint {str(folder)!r} is a folder, not a file; it holds {', '.join(found)}: "
                           f"give one of them, e.g. {folder / found[0]}")


def read_checkpoint(path, map_location="cpu"):
    """The object stored at `path` (a torch file or `.safetensors`).

    Unreadable files raise `CheckpointError("PATH: not a readable dlsn checkpoint or weights file:
    reason")` on one line; a folder raises a `CheckpointError` naming the checkpoint files in it.
    Files are read with `torch.load(weights_only=True)`: tensors and plain containers only, never
    code from the file.
    """
    path = Path(path)
    if path.is_dir():
        raise _folder_error(path)
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
        with warnings.catch_warnings():
            # torch warns of any pickle protocol above 2 before it tries to read the file: the load
            # works, or the one line of `_unreadable` says why not (the protocol included).
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(str(path), map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated/corrupt/foreign files
        raise _unreadable(path, _load_failure_reason(exc, path)) from None


def _model_state(obj, prefer_ema=True):
    """The weights inside any supported checkpoint object, as a plain state dict."""
    if isinstance(obj, dict) and obj.get("format") == TRAIN_FORMAT:
        return obj["ema"] if prefer_ema and obj.get("ema") is not None else obj["model"]
    return unwrap_state_dict(obj)


def load_model(path, scale=None, map_location="cpu", prefer_ema=True, **overrides) -> DLSN:
    """A `DLSN` with the weights of the checkpoint at `path` (published format, ours, or safetensors).

    EDSR/RCAN/FSRCNN checkpoints (ours, whose config names the `arch`, or plain published ones, told
    apart by their keys) return that network (`_load_backbone_model`).

    The architecture is inferred from the weights; `scale` and `overrides` (any `DLSN` argument) are
    checked against it where the weights determine them, so a wrong scale, chunk size or width is a
    `CheckpointError` naming the keys and shapes that disagree. The model is returned in eval mode.
    """
    obj = read_checkpoint(path, map_location=map_location)
    state_dict = _model_state(obj, prefer_ema=prefer_ema)
    stored = obj["config"].get("model", {}) if isinstance(obj, dict) and isinstance(obj.get("config"), dict) else {}
    if (stored.get("arch") or detect_arch(state_dict) or "dlsn") != "dlsn":
        return _load_backbone_model(path, state_dict, stored, scale=scale, **overrides)
    arch = infer_arguments(state_dict, "dlsn")
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


def _load_backbone_model(path, state_dict, model_config=None, scale=None, **overrides):
    """An EDSR/RCAN/FSRCNN (with its GLA layers) holding `state_dict`, in eval mode.

    model_config: the `model` section stored with our checkpoints; without it (a published plain
    checkpoint) the architecture is read off the weights (`infer_arguments`). `scale` and `overrides`
    (config field names, e.g. `n_hashes`) replace the stored values; a scale or shape that does not fit
    the weights is a `CheckpointError` naming the keys.
    """
    model_config = model_config or {}
    arch = model_config.get("arch") or detect_arch(state_dict)
    fields = {**model_config, **overrides}
    if model_config.get("arch"):
        stored_scale = model_config.get("scale")
        kwargs = {argument: fields[name] for name, argument in ARCH_FIELDS[arch].items() if name in fields}
    else:  # weights only, perhaps with the untraceable settings (n_hashes, ...) stored next to them
        kwargs = infer_arguments(state_dict, arch)
        stored_scale = kwargs.get("scale")
        kwargs.update({ARCH_FIELDS[arch][name]: value for name, value in fields.items() if name in ARCH_FIELDS[arch]})
    if "scale" not in kwargs and scale is None:
        raise CheckpointError(f"{path}: {arch} weights do not record the scale; give it (--scale / scale=)")
    said = ""
    if scale is not None:
        if stored_scale is not None and scale != stored_scale:
            said = f"scale={scale} requested but the checkpoint is x{stored_scale}: "
        kwargs["scale"] = scale
    try:
        model = ARCH_CLASSES[arch](**kwargs)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot build {arch}({kwargs}): {exc}") from None
    try:
        load_state_dict_strict(model, state_dict)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {said}{exc}") from None
    if said:  # FSRCNN's scale leaves no trace in the weights
        raise CheckpointError(f"{path}: {said.rstrip(': ')}")
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
    metadata = {"format": "dlsn", **{k: str(v) for k, v in infer_arguments(state_dict, "dlsn").items()}}
    if isinstance(obj, dict) and isinstance(obj.get("config"), dict):
        trained = obj["config"].get("model", {})
        metadata.update({k: str(trained[k]) for k in _UNTRACEABLE if k in trained})
        if "chunk_size" in trained:
            metadata.setdefault("chunk_size", str(trained["chunk_size"]))
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    return atomic_write(out, lambda handle: handle.write(save(tensors, metadata=metadata)))
