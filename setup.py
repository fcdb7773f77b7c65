"""Build of the dlsn package and its torch extension `dlsn._C`.

Install with `pip install --no-build-isolation -e .`: the extension compiles against the torch that
is already installed (an isolated build would fetch another torch, possibly a multi-GB CUDA build).
The CUDA sources are compiled when torch has CUDA and nvcc is found, or when FORCE_CUDA=1.
"""
import glob
import os

from setuptools import setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError as exc:  # pragma: no cover - reached only on a broken install
    raise SystemExit(
        "dlsn builds a torch extension and needs torch installed first: "
        "`pip install torch` then `pip install --no-build-isolation -e .`"
    ) from exc


def _want_cuda() -> bool:
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    return torch.version.cuda is not None and CUDA_HOME is not None


def _extensions():
    sources = sorted(glob.glob("csrc/*.cpp"))
    if not sources:
        return []
    cxx_flags = ["-O3", "-std=c++17"]
    if _want_cuda():
        sources += sorted(glob.glob("csrc/cuda/*.cpp")) + sorted(glob.glob("csrc/cuda/*.cu"))
        return [
            CUDAExtension(
                "dlsn._C",
                sources,
                define_macros=[("DLSN_WITH_CUDA", None)],
                extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++17", "--use_fast_math"]},
            )
        ]
    return [CppExtension("dlsn._C", sources, extra_compile_args={"cxx": cxx_flags})]


setup(
    name="dlsn",
    version="0.1.0",
    description="DLSN / Global Learnable Attention for super-resolution with fused Triton kernels",
    packages=["dlsn", "dlsn.ops", "dlsn.nn", "dlsn.models", "dlsn.sr", "dlsn.kernels"],
    package_dir={"dlsn": "dlsn", "dlsn.kernels": "kernels"},
    package_data={"dlsn.sr": ["configs/*.yaml"]},
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.4",
        "triton>=3.0; platform_system == 'Linux'",
        "numpy",
        "pyyaml",
        "pillow",
        "safetensors",
        "tqdm",
    ],
    extras_require={
        "test": ["pytest"],
        "demo": ["scikit-image"],
        # ONNX export (torch's dynamo exporter) and onnxruntime; none of them pulls torch.
        "deploy": ["onnx>=1.17", "onnxruntime>=1.20", "onnxscript>=0.3"],
        # spandrel needs torchvision, whose wheel must match the installed torch (see README).
        "spandrel": ["spandrel>=0.4"],
    },
    entry_points={"console_scripts": ["dlsn = dlsn.sr.cli:main"]},
    ext_modules=_extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
