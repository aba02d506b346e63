#!/usr/bin/env bash
# Installs PyTorch (CPU use) from PyPI into bench/.venv for bench/pytorch_ddp.py.
#
# The PyPI torch wheel depends on ~3 GB of nvidia-* CUDA packages. On CPU only two of its
# shared libraries are needed at load time (libtorch_cpu.so links libcudart and libcupti),
# so this installs torch without dependencies, its small pure-Python dependencies, and the
# two CUDA runtime packages that match the wheel (read from its metadata).
# Not part of CI.
set -euo pipefail
cd "$(dirname "$0")"
TORCH_VERSION="${TORCH_VERSION:-2.11.0}"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip=".venv/bin/pip"
"$pip" install --quiet --upgrade pip
"$pip" install --quiet --no-deps "torch==${TORCH_VERSION}"
"$pip" install --quiet filelock typing-extensions sympy networkx jinja2 fsspec mpmath MarkupSafe numpy
# The CUDA runtime and CUPTI packages the wheel was built against (cu12 or cu13).
meta=$(.venv/bin/python - <<'PY'
import importlib.metadata as m
reqs = m.requires("torch") or []
want = [r.split(";")[0].strip() for r in reqs
        if r.startswith(("nvidia-cuda-runtime", "nvidia-cuda-cupti"))]
print(" ".join(want))
PY
)
if [ -n "$meta" ]; then
  # shellcheck disable=SC2086
  "$pip" install --quiet --no-deps $meta
fi
.venv/bin/python -c 'import torch; print("torch", torch.__version__, "threads", torch.get_num_threads())'
