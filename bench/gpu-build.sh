#!/usr/bin/env bash
# Builds, on a CPU machine with PyPI at hand, the `graft` binary that bench/gpu-check.sh runs
# on a CUDA machine that can download nothing: the `tch` feature against the torch 2.11.0
# wheel's whole libtorch, CUDA libraries included (scripts/libtorch.sh --cuda). The result is
# bench/gpu/graft (git-ignored); `graft` alone is enough there, since `graft local` runs the
# coordinator and the workers as `graft coordinator` and `graft worker`.
#
# Its own target directory (target/tch-cuda): the link flag below must not leak into the
# CPU builds, and the CPU `tch` build links a different libtorch.
set -euo pipefail
cd "$(dirname "$0")/.."

line=$(./scripts/libtorch.sh --cuda | tail -n1)
export LIBTORCH="${line#LIBTORCH=}"
# libtorch_cuda.so needs cuBLAS, cuDNN, NCCL and more: the GPU machine has them (its torch's
# nvidia-* packages, found through libtorch_cuda.so's own RPATH), this one does not, so the
# link leaves those symbols to the loader there.
export RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=-Wl,--allow-shlib-undefined"
cargo build --release --workspace --features tch --bin graft --target-dir target/tch-cuda
mkdir -p bench/gpu
cp target/tch-cuda/release/graft bench/gpu/graft
needed=$(readelf -d bench/gpu/graft)
if ! grep -q 'libtorch_cuda.so' <<<"$needed"; then
  echo "gpu-build.sh: bench/gpu/graft is not linked against libtorch_cuda.so; it could not use CUDA" >&2
  exit 1
fi
echo "built bench/gpu/graft ($(du -h bench/gpu/graft | cut -f1)); run bench/gpu-check.sh on the GPU machine" >&2
