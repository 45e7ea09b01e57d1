#!/usr/bin/env bash
# Makes the Python environment the interop tests run in: PyTorch + transformers (the Hugging
# Face export), llama-cpp-python (the GGUF export; built from source, ~7 minutes on 2 cores) and the
# `openai` client (the API server).
# The tests find it at $TARDBOT_INTEROP_PYTHON, else at the default place below; without it they skip.
#
#   tests/interop/setup.sh [VENV_DIR]     # default: ~/.cache/tardbot/interop-venv
set -euo pipefail
venv="${1:-${TARDBOT_INTEROP_VENV:-$HOME/.cache/tardbot/interop-venv}}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
pip() { "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@"; }
# Versions the checks were written against (transformers' Qwen2-MoE code and llama.cpp's `llama` MoE
# were read in these releases).
pip "torch==2.15.*" "numpy<3" "transformers==5.24.*" "safetensors>=0.4" "jinja2>=3.1" "openai>=1.50,<3"
if ! "$venv/bin/python" -c "import llama_cpp" 2>/dev/null; then
  # Built for this machine's CPU; no GPU backend.
  CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON}" pip "llama-cpp-python==0.3.36"
fi
"$venv/bin/python" -c "import torch, transformers, llama_cpp, openai; print('interop env:', '$venv', 'torch', torch.__version__, 'transformers', transformers.__version__, 'llama-cpp-python', llama_cpp.__version__, 'openai', openai.__version__)"
