"""The networks: DLSN and EDSR/RCAN/FSRCNN with GLA layers, their blocks, state dicts and registry.

- `dlsn`: `DLSN` (the published network) and its blocks `GLAFFM`, `LFFB`.
- `backbones`: `EDSR`, `RCAN`, `FSRCNN` with GLA layers at chosen positions.
- `blocks`: convolutions, `MeanShift`, `Upsampler`, hash-round switching shared by all of them.
- `state_dict`: unwrapping published checkpoints, all-or-nothing strict loading, `CheckpointError`.
- `registry`: build from config fields, detect from state-dict keys, read arguments off weights.
"""
from .backbones import EDSR, FSRCNN, RCAN, load_backbone
from .blocks import MeanShift
from .dlsn import DLSN, GLAFFM, LFFB
from .registry import ARCHS, build_model, detect_arch, infer_arguments
from .state_dict import CheckpointError, load_state_dict_strict, unwrap_state_dict

__all__ = ["DLSN", "GLAFFM", "LFFB", "MeanShift", "EDSR", "RCAN", "FSRCNN", "ARCHS", "build_model", "detect_arch",
           "infer_arguments", "load_backbone", "load_state_dict_strict", "unwrap_state_dict", "CheckpointError"]
