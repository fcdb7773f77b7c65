"""spandrel support: DLSN and EDSR/RCAN with GLA layers load through `spandrel.ModelLoader`, the
loader chaiNNer and ComfyUI use.

    import dlsn.spandrel
    dlsn.spandrel.install()                       # once, like spandrel_extra_arches.install()
    model = spandrel.ModelLoader().load_from_file("DLSN_x3.pt")   # an ImageModelDescriptor
    sr = model(image)                             # [1, 3, H, W] in [0, 1] -> [1, 3, 3H, 3W]

The architectures are told apart by keys only they have (`dlsn.models.detect_arch`): GLA's
`conv_match` inside DLSN's groups, or `gla.<position>.conv_match` beside an EDSR or RCAN body. They
are tried before spandrel's RCAN, whose keys an RCAN with GLA layers also holds; plain EDSR and RCAN
state dicts are left to spandrel. The descriptor reports the scale and channels read off the
weights, tiling as "discouraged" (GLA attends over the whole image: tiles change the result), and
float16 and bfloat16 as supported: measured on the CPU with the reference backend
(`tests/test_spandrel.py`, and the README), both run and stay within a few units of the dtype's
roundoff of the float64 result. Inputs in [0, 1] are scaled to the model's `rgb_range` and back.

A top-level module rather than part of `dlsn.sr`: it is an integration other tools import, not a
piece of the SR application, and it imports spandrel (an optional dependency) at import time.
"""
from __future__ import annotations

import spandrel
from spandrel import ArchSupport, Architecture, ImageModelDescriptor, ModelTiling

from .models import detect_arch, infer_arguments, load_state_dict_strict
from .models.registry import ARCH_CLASSES

__all__ = ["install", "ARCHITECTURES", "DLSNArch"]


def _has_gla_layers(state_dict):
    return any(key.startswith("gla.") and ".conv_match." in key for key in state_dict)


class DLSNArch(Architecture):
    """One of dlsn's architectures ("dlsn", or "edsr"/"rcan" with GLA layers) as a spandrel
    Architecture."""

    def __init__(self, arch, name):
        self.arch = arch
        super().__init__(id=name, detect=self._detect)

    def _detect(self, state_dict):
        found = detect_arch(state_dict)
        return found == self.arch and (self.arch == "dlsn" or _has_gla_layers(state_dict))

    def load(self, state_dict):
        model = ARCH_CLASSES[self.arch](**infer_arguments(state_dict, self.arch))
        load_state_dict_strict(model, state_dict)
        gla = model.gla_layers()
        tags = [f"{model.head[0].out_channels}nf", f"{len(gla)}gla", f"chunk{gla[0].chunk_size}"]
        return ImageModelDescriptor(
            model.eval(), state_dict, architecture=self, purpose="SR", tags=tags,
            supports_half=True, supports_bfloat16=True, scale=model.scale,
            input_channels=model.n_colors, output_channels=model.n_colors, tiling=ModelTiling.DISCOURAGED,
            call_fn=_call_in_unit_range)


def _call_in_unit_range(model, image):
    return model(image * model.rgb_range) / model.rgb_range


ARCHITECTURES = (DLSNArch("dlsn", "DLSN"), DLSNArch("edsr", "EDSR+GLA"), DLSNArch("rcan", "RCAN+GLA"))


def install(registry=None, ignore_duplicates=False):
    """Register DLSN, EDSR+GLA and RCAN+GLA with `registry` (default: spandrel's `MAIN_REGISTRY`),
    ahead of spandrel's RCAN. Returns the ArchSupports added."""
    registry = spandrel.MAIN_REGISTRY if registry is None else registry
    supports = [ArchSupport.from_architecture(arch, before=("RCAN",) if "RCAN" in registry else ())
                for arch in ARCHITECTURES]
    return registry.add(*supports, ignore_duplicates=ignore_duplicates)
