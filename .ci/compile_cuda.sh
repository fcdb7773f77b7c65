#!/usr/bin/env bash
# Compile every csrc/cuda/*.cu with nvcc alone (no torch headers, no GPU needed) so that a CUDA
# compile error fails CI on machines that cannot build the CUDA extension itself.
set -euo pipefail
cd "$(dirname "$0")/.."

NVCC="${NVCC:-nvcc}"
if ! command -v "$NVCC" >/dev/null 2>&1; then
  echo "compile_cuda.sh: nvcc not found (set NVCC or put it on PATH)" >&2
  exit 1
fi

shopt -s nullglob
sources=(csrc/cuda/*.cu)
if [ ${#sources[@]} -eq 0 ]; then
  echo "compile_cuda.sh: no csrc/cuda/*.cu to compile" >&2
  exit 1
fi

objdir="$(mktemp -d)"
trap 'rm -rf "$objdir"' EXIT
for src in "${sources[@]}"; do
  echo "nvcc $src"
  "$NVCC" -std=c++17 -O3 --use_fast_math \
    -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
    -c "$src" -o "$objdir/$(basename "${src%.cu}").o"
done
echo "compile_cuda.sh: ${#sources[@]} CUDA source(s) compiled"
