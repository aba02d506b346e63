#!/usr/bin/env bash
# The test command of the README: formatting, lints, a release build, the deployment
# manifests, every test.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d "${GRAFT_DATA_DIR:-../shared/data}" ]; then
  echo "datasets not found at ${GRAFT_DATA_DIR:-../shared/data}: see the README's \"Data\" section" >&2
  exit 1
fi

if ! cargo fmt --version >/dev/null 2>&1; then rustup component add rustfmt; fi
if ! cargo clippy --version >/dev/null 2>&1; then rustup component add clippy; fi

cargo fmt --all -- --check
# One feature resolution for the whole workspace, so the build below is reused by the tests.
cargo build --release --workspace --all-targets
cargo clippy --workspace --all-targets -- -D warnings
# kubectl and kubernetes-validate into .venv (pinned, skipped when present); every overlay
# renders and passes strict validation. tests/tests/deploy.rs uses the same kubectl.
./scripts/deploy-check.sh
cargo test --release --workspace -- --test-threads=1
