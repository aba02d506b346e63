#!/usr/bin/env bash
# Installs PyTorch from PyPI into bench/.venv for bench/pytorch_ddp.py. Not part of CI.
#
# The Linux wheel on PyPI is the CUDA build and pulls ~3 GB of nvidia-* / cuda-toolkit
# packages even for CPU use: with torch 2.11 a --no-deps install plus the CUDA runtime and
# CUPTI alone is not enough (importing torch loads libtorch_cuda, which links cuDNN, cuBLAS
# and the rest), so this installs the wheel with its dependencies. Set TORCH_VERSION to
# compare another release.
set -euo pipefail
cd "$(dirname "$0")"
TORCH_VERSION="${TORCH_VERSION:-2.11.0}"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet "torch==${TORCH_VERSION}" numpy
.venv/bin/python -c 'import torch; print("torch", torch.__version__)'
