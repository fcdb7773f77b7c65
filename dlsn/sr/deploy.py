"""Deploying a model past eager PyTorch: an ExportedProgram (`.pt2`), an AOTInductor package, an
ONNX model run by onnxruntime, and `torch.compile` for the command line.

Every export traces the model once, in eval mode on the CPU, with `torch.export` on one image
with symbolic height and width (any size from 2x2 up, including sizes that are not a multiple of
the chunk and images smaller than one chunk; `OnnxModel` runs a batch image by image),
inside `dlsn.nn.export_mode`: each GLA layer's eval rotations for every bucket count are a
constant of the graph, bitwise those of eager mode, and the weights are the only other tensors.
The GLA layers run the reference math (the fused backend's Triton kernels are custom ops with no
exportable form); for ONNX its sort is the counting sort of standard ops (no TopK or ArgSort over
the positions, which TensorRT limits to K <= 3840).

    export_program(model, size)                 -> torch.export.ExportedProgram
    save_pt2(model, path, size)                 `torch.export.load(path).module()(x)`
    save_aoti(model, path, size)                `torch._inductor.aoti_load_package(path)(x)` (CPU)
    save_onnx(model, path, size, opset)         onnxruntime, with `dlsn` metadata
    load_onnx(path, scale)                      -> OnnxModel, a callable like a PyTorch model

Files are written atomically (a temporary file renamed over the target), and the output path is
checked before the minutes a compile can take. onnx, onnxruntime and onnxscript come with the
`deploy` extra (`pip install -e ".[deploy]"`); without them the ONNX functions raise an ImportError
saying so.
"""
from __future__ import annotations

import importlib
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
import torch.fx.experimental._config as fx_config
from torch import nn

from ..nn import export_mode
from .utils import atomic_write, make_parent

__all__ = ["FORMATS", "MIN_OPSET", "MIN_SIZE", "DEFAULT_OPSET", "ONNX_FORMAT", "OnnxModel", "export_program",
           "save_pt2", "save_aoti", "save_onnx", "load_onnx", "load_inference_model", "check_output_path",
           "compile_for_inference"]

FORMATS = ("safetensors", "pt2", "aoti", "onnx")
# The dynamo exporter's translations start at opset 18.
MIN_OPSET = 18
DEFAULT_OPSET = 18
# Exported graphs take one image of at least 2x2 pixels: PyTorch's convolutions specialise on a
# size of 1 when they are traced (their memory format), so 1 cannot stay symbolic.
MIN_SIZE = 2
# `metadata_props["format"]` of the ONNX files save_onnx writes.
ONNX_FORMAT = "dlsn-onnx"


def _status(message):
    print(message, file=sys.stderr, flush=True)


@contextmanager
def _timed(step):
    """`step ...` before and `step: done in S s` after a long step (plain lines: no bar can show
    the progress of one opaque library call)."""
    start = time.perf_counter()
    _status(f"{step} ...")
    yield
    _status(f"{step}: done in {time.perf_counter() - start:.1f} s")


def _require(module, what):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{what} needs the package {module.split('.')[0]}: "
                          'pip install --no-build-isolation -e ".[deploy]"') from None


def _parameter_dtype(model):
    return next(iter(model.parameters()), torch.empty(0)).dtype


def export_program(model: nn.Module, size=(48, 48), counting_sort=False) -> torch.export.ExportedProgram:
    """`model` (a float32 CPU network, put in eval mode) traced by `torch.export` on a
    `[1, n_colors, *size]` example, with symbolic height and width (>= `MIN_SIZE`; batch 1).

    `counting_sort`: sort GLA's buckets with standard ops only (ONNX). A GLA layer that cannot be
    exported (fused backend, `check_finite`) is a ValueError naming it.
    """
    if _parameter_dtype(model) != torch.float32:
        raise ValueError(f"export takes a float32 model, got parameters of {_parameter_dtype(model)}")
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("export takes a model on the CPU (the exported graph holds its weights)")
    if min(size) < MIN_SIZE:
        raise ValueError(f"--size {size[0]}x{size[1]}: the example image needs height and width >= {MIN_SIZE}")
    model = model.eval()
    example = torch.rand(1, getattr(model, "n_colors", 3), *size)
    height, width = (torch.export.Dim(name, min=MIN_SIZE) for name in ("height", "width"))
    # Size-oblivious reasoning keeps sizes of 1 valid where the graph is general anyway (one chunk,
    # one bucket, one padded slot) instead of specialising on them.
    with export_mode(model, counting_sort=counting_sort), fx_config.patch(backed_size_oblivious=True):
        return torch.export.export(model, (example,), dynamic_shapes={"x": {2: height, 3: width}})


def check_output_path(path) -> Path:
    """`path` when a file can be written there (its folder exists or can be made, and it is not a
    folder); else the OSError that says why, before any slow step."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(21, "is a folder, not a file", str(path))
    make_parent(path)
    return path


def _copy_into(path, source):
    def write(handle):
        with open(source, "rb") as src:
            shutil.copyfileobj(src, handle)

    return atomic_write(path, write)


def save_pt2(model, path, size=(48, 48)) -> Path:
    """Write `model` as an ExportedProgram (`torch.export.save`); load it with
    `torch.export.load(path).module()`: no dlsn needed, one image of any height and width >= 2."""
    path = check_output_path(path)
    with _timed("tracing with torch.export"):
        program = export_program(model, size)
    return atomic_write(path, lambda handle: torch.export.save(program, handle))


def save_aoti(model, path, size=(48, 48)) -> Path:
    """Write `model` as an AOTInductor package for the CPU (C++ compiled by Inductor; needs a C++
    compiler, minutes on a small CPU); load it with `torch._inductor.aoti_load_package(path)`."""
    path = check_output_path(path)
    with _timed("tracing with torch.export"):
        program = export_program(model, size)
    with tempfile.TemporaryDirectory() as folder:
        package = Path(folder) / "model.pt2"
        with _timed("compiling the AOTInductor package (C++; minutes on a small CPU)"):
            torch._inductor.aoti_compile_and_package(program, package_path=str(package))
        return _copy_into(path, package)


def _model_metadata(model, opset):
    return {"format": ONNX_FORMAT, "dlsn_version": version("dlsn"), "opset": str(opset),
            "architecture": type(model).__name__, "scale": str(getattr(model, "scale", "")),
            "rgb_range": str(getattr(model, "rgb_range", 1.0)), "n_colors": str(getattr(model, "n_colors", 3))}


def save_onnx(model, path, size=(48, 48), opset=DEFAULT_OPSET) -> Path:
    """Write `model` as ONNX (dynamo exporter, opset >= `MIN_OPSET`) with dynamic height and width, no op outside the default domain, and its scale and rgb_range in `metadata_props`."""
    if not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(f"--opset {opset}: dlsn's ONNX export needs opset >= {MIN_OPSET} (the dynamo exporter's "
                         "smallest)")
    _require("onnxscript", "ONNX export")
    onnx = _require("onnx", "ONNX export")
    path = check_output_path(path)
    with _timed("tracing with torch.export"):
        program = export_program(model, size, counting_sort=True)
    with _timed(f"translating to ONNX opset {opset}"):
        onnx_program = torch.onnx.export(program, dynamo=True, opset_version=opset, verbose=False)
    proto = onnx_program.model_proto
    for key, value in _model_metadata(model, opset).items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    return atomic_write(path, lambda handle: handle.write(proto.SerializeToString()))


class OnnxModel:
    """An ONNX export of a dlsn model run by onnxruntime, called like the PyTorch model:
    `model(x)` with `x` `[N, n_colors, h, w]` float32 in [0, rgb_range] (any device; computed on
    the CPU unless onnxruntime has the CUDA provider and `x` is on CUDA) -> `[N, n_colors, s h, s w]`
    on `x`'s device. `scale`, `rgb_range`, `n_colors` come from the file's metadata."""

    def __init__(self, path, session, metadata):
        self.path = Path(path)
        self.session = session
        self.scale = int(metadata["scale"])
        self.rgb_range = float(metadata["rgb_range"])
        self.n_colors = int(metadata.get("n_colors", 3))
        self.input_name = session.get_inputs()[0].name

    def __call__(self, x):
        if x.dtype != torch.float32:
            raise ValueError(f"{self.path}: ONNX models take float32 input, got {x.dtype}")
        if x.dim() != 4 or x.shape[1] != self.n_colors or min(x.shape[2:]) < MIN_SIZE:
            raise ValueError(f"{self.path}: expects [N, {self.n_colors}, H, W] with H, W >= {MIN_SIZE}, "
                             f"got {tuple(x.shape)}")
        images = x.detach().cpu().contiguous().numpy()
        # The graph takes one image at a time.
        outs = [self.session.run(None, {self.input_name: images[i:i + 1]})[0] for i in range(len(images))]
        return torch.from_numpy(np.concatenate(outs)).to(x.device)

    def half(self):
        raise ValueError(f"--half: {self.path} is an ONNX model, which runs in float32")


def load_onnx(path, scale=None) -> OnnxModel:
    """An `OnnxModel` of a file `save_onnx` wrote. A file that is not ONNX, an ONNX model that is
    not a dlsn export, or a `scale` other than the file's is a ValueError naming the file."""
    ort = _require("onnxruntime", "running an ONNX model")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
        raise ValueError(f"{path}: not an ONNX model onnxruntime can load "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    metadata = session.get_modelmeta().custom_metadata_map
    if metadata.get("format") != ONNX_FORMAT:
        raise ValueError(f"{path}: an ONNX model, but not one `dlsn export --format onnx` wrote (no dlsn "
                         "metadata: its scale and value range are unknown)")
    model = OnnxModel(path, session, metadata)
    if scale is not None and scale != model.scale:
        raise ValueError(f"{path}: --scale {scale} requested but the ONNX model is x{model.scale}")
    return model


def load_inference_model(path, scale, device, n_hashes=None, compile=False):
    """`load_onnx` for `dlsn upscale|eval --checkpoint model.onnx`: the options an ONNX model cannot
    honour (its hash rounds and precision are fixed in the graph, it is not PyTorch code to compile)
    are one-line errors."""
    for given, option, why in ((n_hashes is not None, "--n-hashes", "its hash rounds are fixed in the graph"),
                               (compile, "--compile", "onnxruntime runs it, not torch.compile")):
        if given:
            raise ValueError(f"{option} does not apply to an ONNX model ({path}): {why}")
    if torch.device(device).type != "cpu":
        _status(f"note: {path} runs on the CPU (onnxruntime's CPU provider); the result is moved to {device}")
    return load_onnx(path, scale)


def compile_for_inference(model):
    """`model` compiled in place with `torch.compile(fullgraph=True)` (an nn.Module keeps its class,
    so tiling still sees what it is); other callables are returned as they are. The first call of
    each new size compiles (seconds to minutes on a CPU)."""
    if isinstance(model, nn.Module) and any(True for _ in model.parameters()):
        model.compile(fullgraph=True)
    return model
