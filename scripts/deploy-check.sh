#!/usr/bin/env bash
# The deployment checks that need no cluster: every kustomize overlay renders, and the
# rendered objects pass strict schema validation for the oldest and newest Kubernetes we
# support. What no schema checks (probes, ports, config keys, command lines, a job trained
# through the rendered commands) is in tests/tests/deploy.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/deploy-tools.sh
KUBECTL=.venv/bin/kubectl
VALIDATE=.venv/bin/kubernetes-validate
OUT=target/deploy
mkdir -p "$OUT"

for overlay in deploy/k8s/overlays/*/; do
  name=$(basename "$overlay")
  "$KUBECTL" kustomize "$overlay" > "$OUT/$name.yaml"
  for version in 1.30.0 1.37.0; do
    "$VALIDATE" --strict --quiet -k "$version" "$OUT/$name.yaml"
  done
  echo "deploy: overlay $name renders $(grep -c '^kind:' "$OUT/$name.yaml") objects, valid for Kubernetes 1.30 and 1.37"
done
