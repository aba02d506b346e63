#!/usr/bin/env bash
# Installs the Python packages that the Python client example (examples/python/) and the
# TensorBoard read-back test need into ./.venv, pinned, from PyPI: PyTorch to load and
# evaluate graft's exports and to train the state_dict that graft starts from, grpcio-tools
# to generate the client's stubs from proto/ at run time, safetensors, and tensorboard for
# its event-file reader. Idempotent: a second run that finds the same pins installed does
# nothing. tests/tests/python.rs and tests/tests/tensorboard.rs run it themselves.
#
# PyTorch: the wheel that scripts/libtorch.sh keeps in $GRAFT_LIBTORCH_CACHE (default
# ~/.cache/graft/wheels) is installed from there when it is present, so the ~500 MB wheel is
# not downloaded twice. PyPI's Linux wheel of torch is built for CUDA: pip also fetches the
# CUDA libraries it links against (a few GB, once per machine; pip's cache keeps them), even
# though everything here runs on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
TORCH_VERSION="${GRAFT_TORCH_VERSION:-2.11.0}"
PINS="torch==$TORCH_VERSION numpy==2.3.5 safetensors==0.7.0 grpcio==1.76.0 grpcio-tools==1.76.0 protobuf==6.33.1 tensorboard==2.20.0"
STAMP="$VENV/.graft-python-tools"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$PINS" ] && [ -x "$VENV/bin/python" ]; then
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
cache="${GRAFT_LIBTORCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/graft}"
torch_req="torch==$TORCH_VERSION"
wheel=$(find "$cache/wheels" -maxdepth 1 -name "torch-$TORCH_VERSION-cp$("$VENV/bin/python" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')-*linux*x86_64.whl" 2>/dev/null | sort | tail -n1 || true)
if [ -n "$wheel" ]; then
  torch_req="$wheel"
fi
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  "$torch_req" ${PINS#"torch==$TORCH_VERSION "}
echo "$PINS" > "$STAMP"
