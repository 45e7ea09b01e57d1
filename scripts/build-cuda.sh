#!/usr/bin/env bash
# Builds tardbot-pipeline with candle's CUDA backend (`--features cuda`) on any Linux x86_64 machine,
# with or without a GPU: nvcc, the CUDA headers and the libraries to link against come from NVIDIA's
# PyPI wheels, installed into a venv.
#
#   scripts/build-cuda.sh                     # -> target-cuda/release/tardbot-pipeline
#   CUDA_COMPUTE_CAP=80 scripts/build-cuda.sh # A100 (default 90: H100/H200)
#
# Settings (environment):
#   CUDA_COMPUTE_CAP   GPU architecture the kernels are compiled for (default 90).
#   CARGO_TARGET_DIR   default target-cuda/ (its own: the CPU build's target/ stays as it is).
#   CUDA_VENV          the venv of the wheels (default $CARGO_TARGET_DIR/cuda-venv; reused if there).
#   PYTHON             the Python that makes the venv (default python3).
#
# Why CUDA 13 wheels: the `nvidia-cuda-nvcc-cu12` wheels (12.0 … 12.9) ship only ptxas and libnvvm,
# no nvcc; the CUDA 13 wheels (`nvidia-cuda-nvcc`, with `nvidia-cuda-crt` and `nvidia-nvvm`) ship the
# whole compiler under one prefix, site-packages/nvidia/cu13/{bin,include,lib,nvvm}. cudarc 0.19 (used
# by candle 0.11) supports CUDA 13.0 … 13.4; 13.0 is pinned here. A CUDA 13 binary needs an NVIDIA
# driver of release 580 or newer where it runs.
#
# How the pieces are found (read in candle-kernels 0.11 / cudaforge 0.1 / cudarc 0.19 build scripts):
#   - candle-kernels (cudaforge) runs nvcc from $NVCC, PATH or $CUDA_HOME/bin, for the architecture in
#     $CUDA_COMPUTE_CAP (there is no GPU to ask), and links its MoE kernels' static library against
#     libcudart;
#   - cudarc reads the CUDA version from `nvcc --version` and, with candle's `dynamic-linking`, links
#     libcuda, libnvrtc, libcurand, libcublas and libcublasLt from $CUDA_HOME/lib (and lib/stubs).
#     The wheels ship versioned names only (libcublas.so.13), so unversioned links are made beside
#     them; libcuda (the driver) is in no wheel, so a stub libcuda.so (soname libcuda.so.1, every
#     `cu*` entry point cudarc declares, as empty functions) is compiled into lib/stubs — at run time
#     the driver's own libcuda.so.1 is loaded instead.
#
# At run time the binary needs libcuda.so.1 (the driver) and the CUDA 13 libraries above on the
# loader's path: LD_LIBRARY_PATH=$CUDA_VENV/lib/python3*/site-packages/nvidia/cu13/lib, or a system
# CUDA 13 toolkit's lib64.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target-cuda}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
CUDA_VENV="${CUDA_VENV:-$CARGO_TARGET_DIR/cuda-venv}"
PYTHON="${PYTHON:-python3}"
CUDA_VERSION_PIN="13.0.*"

if [ ! -x "$CUDA_VENV/bin/python" ]; then
    "$PYTHON" -m venv "$CUDA_VENV"
fi
if ! "$CUDA_VENV/bin/python" -c 'import nvidia, os, sys; sys.exit(not any(os.path.exists(os.path.join(p, "cu13/bin/nvcc")) for p in nvidia.__path__))' 2>/dev/null; then
    "$CUDA_VENV/bin/pip" install --quiet \
        "nvidia-cuda-nvcc==$CUDA_VERSION_PIN" "nvidia-cuda-crt==$CUDA_VERSION_PIN" \
        "nvidia-nvvm==$CUDA_VERSION_PIN" "nvidia-cuda-cccl==$CUDA_VERSION_PIN" \
        "nvidia-cuda-runtime==$CUDA_VERSION_PIN" "nvidia-cuda-nvrtc==$CUDA_VERSION_PIN" \
        "nvidia-cublas==13.0.*" "nvidia-curand"
fi
CUDA_HOME="$("$CUDA_VENV/bin/python" -c 'import nvidia, os; print([os.path.join(p, "cu13") for p in nvidia.__path__ if os.path.exists(os.path.join(p, "cu13/bin/nvcc"))][0])')"
export CUDA_HOME
export PATH="$CUDA_HOME/bin:$PATH"
nvcc --version | tail -2

# Unversioned names for the linker (the wheels have libcublas.so.13, …).
for lib in cudart cublas cublasLt curand nvrtc; do
    real="$(ls "$CUDA_HOME/lib/lib$lib.so."* 2>/dev/null | grep -E "lib$lib\.so\.[0-9]+$" | head -1 || true)"
    [ -n "$real" ] || { echo "no lib$lib.so.* in $CUDA_HOME/lib" >&2; exit 1; }
    ln -sf "$(basename "$real")" "$CUDA_HOME/lib/lib$lib.so"
done

# The driver stub: every cu* function cudarc's driver bindings declare.
mkdir -p "$CUDA_HOME/lib/stubs"
if [ ! -f "$CUDA_HOME/lib/stubs/libcuda.so" ]; then
    cargo fetch --quiet
    sys="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.*/src/driver/sys/mod.rs | tail -1)"
    stub_c="$CARGO_TARGET_DIR/libcuda-stub.c"
    grep -oE '^pub unsafe fn cu[A-Za-z0-9_]+' "$sys" | awk '{print "void " $4 "(void) {}"}' | sort -u > "$stub_c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$CUDA_HOME/lib/stubs/libcuda.so" "$stub_c"
fi

started=$(date +%s)
cargo build --release -p tardbot-pipeline --features cuda
echo "built $CARGO_TARGET_DIR/release/tardbot-pipeline (CUDA $(nvcc --version | grep -oE 'release [0-9.]+' | cut -d' ' -f2), sm_$CUDA_COMPUTE_CAP) in $(( $(date +%s) - started )) s"
echo "run it with: LD_LIBRARY_PATH=$CUDA_HOME/lib (or the GPU machine's CUDA 13 libraries)"
