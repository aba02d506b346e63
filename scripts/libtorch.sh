#!/usr/bin/env bash
# Prepares libtorch for the `tch` build from the PyTorch wheel on PyPI (download.pytorch.org
# is not reachable from where graft is built) and prints the `LIBTORCH=...` to build with.
#
#   scripts/libtorch.sh            # CPU-only libtorch: what CI and `--device libtorch-cpu` use
#   scripts/libtorch.sh --cuda     # the wheel's whole torch/lib, to build a binary for CUDA hosts
#
#   export "$(scripts/libtorch.sh | tail -n1)"
#   cargo build --release --workspace --features tch
#   LD_LIBRARY_PATH="$LIBTORCH/lib" target/release/graft local ... --device libtorch-cpu
#
# Why the CPU folder is not simply the wheel's torch/: burn-tch links libtorch_cuda.so
# whenever it finds it next to libtorch_cpu.so, and then every start of the binary loads the
# whole CUDA stack (cuBLAS, cuDNN, NCCL: gigabytes of wheels that a CPU machine lacks). So the
# CPU folder leaves the CUDA libraries out, and adds the two small ones that libtorch_cpu.so
# itself needs even on a CPU (libcudart and libcupti, from the nvidia-cuda-runtime and
# nvidia-cuda-cupti wheels of the CUDA major the torch wheel was built for).
#
# Wheels and the unpacked folders live in $GRAFT_LIBTORCH_CACHE (default ~/.cache/graft), so
# a second run on the same machine downloads nothing (pip's own cache helps too).
# GRAFT_TORCH_VERSION picks the wheel (default 2.11.0; tch 0.22 was made for 2.9.0 and
# builds and runs against both).
set -euo pipefail

mode=cpu
case "${1:-}" in
  "" | --cpu) mode=cpu ;;
  --cuda) mode=cuda ;;
  *) echo "usage: $0 [--cpu|--cuda]" >&2; exit 2 ;;
esac

version="${GRAFT_TORCH_VERSION:-2.11.0}"
cache="${GRAFT_LIBTORCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/graft}"
wheels="$cache/wheels"
dest="$cache/libtorch-$version-$mode"
python="${PYTHON:-python3}"

if [ -f "$dest/.complete" ]; then
  echo "LIBTORCH=$dest"
  exit 0
fi

mkdir -p "$wheels"
log() { echo "libtorch.sh: $*" >&2; }

# pip download <requirement>: the wheel file it saved (or already had).
fetch() {
  local req="$1" pattern="$2" found
  found=$(find "$wheels" -maxdepth 1 -name "$pattern" | sort | tail -n1)
  if [ -z "$found" ]; then
    log "downloading $req from PyPI"
    "$python" -m pip download --quiet --no-deps --only-binary=:all: -d "$wheels" "$req" >&2
    found=$(find "$wheels" -maxdepth 1 -name "$pattern" | sort | tail -n1)
  fi
  if [ -z "$found" ]; then
    log "pip saved no wheel matching $pattern for $req"
    exit 1
  fi
  echo "$found"
}

torch_whl=$(fetch "torch==$version" "torch-$version-*linux*x86_64.whl")

# The wheel's METADATA pins the CUDA runtime it was built with: directly
# (nvidia-cuda-runtime-cu12==...) up to 2.9, through cuda-toolkit[cudart,cupti]==13.x since.
pins() {
  "$python" - "$1" <<'EOF'
import re, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    text = z.read(meta).decode()
for line in text.splitlines():
    if not line.startswith("Requires-Dist:"):
        continue
    req = line.split(":", 1)[1].split(";", 1)[0].strip()
    m = re.match(r"(nvidia-cuda-(?:runtime|cupti)(?:-cu\d+)?|cuda-toolkit)(\[[^\]]*\])?\s*==\s*(\S+)", req)
    if m:
        print(f"{m.group(1)}=={m.group(3)}")
EOF
}

declare -a runtime_reqs=()
while read -r req; do
  case "$req" in
    cuda-toolkit==*)
      kit=$(fetch "$req" "cuda_toolkit-${req#cuda-toolkit==}-*.whl")
      while read -r sub; do runtime_reqs+=("$sub"); done < <(pins "$kit" | grep -v '^cuda-toolkit')
      ;;
    *) runtime_reqs+=("$req") ;;
  esac
done < <(pins "$torch_whl")
if [ "${#runtime_reqs[@]}" -eq 0 ] && [ "$mode" = cpu ]; then
  log "no CUDA runtime pinned in $(basename "$torch_whl"); assuming a CPU-only wheel"
fi

declare -a runtime_whls=()
if [ "$mode" = cpu ]; then
  for req in "${runtime_reqs[@]}"; do
    name="${req%%==*}"
    ver="${req#*==}"
    ver="${ver%.\*}"
    runtime_whls+=("$(fetch "$req" "${name//-/_}-${ver}*.whl")")
  done
fi

tmp="$dest.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp/lib"
trap 'rm -rf "$tmp"' EXIT
log "unpacking $(basename "$torch_whl") ($mode) into $dest"
"$python" - "$torch_whl" "$tmp" "$mode" "${runtime_whls[@]}" <<'EOF'
import os, shutil, sys, zipfile

wheel, out, mode, runtimes = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
# What a CPU build must not see: with these present burn-tch links the CUDA stack, and the
# Python bindings are of no use to a Rust binary.
cuda_only = ("libtorch_cuda", "libc10_cuda", "libcaffe2_nvrtc", "libtorch_nvshmem")
skip = ("libtorch_python",)

def copy(z, info, target):
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with z.open(info) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)

with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        name = info.filename
        if info.is_dir():
            continue
        if name.startswith("torch/include/"):
            copy(z, info, os.path.join(out, name[len("torch/"):]))
        elif name.startswith("torch/lib/"):
            base = os.path.basename(name)
            if base.startswith(skip) or (mode == "cpu" and base.startswith(cuda_only)):
                continue
            copy(z, info, os.path.join(out, name[len("torch/"):]))
for runtime in runtimes:
    with zipfile.ZipFile(runtime) as z:
        for info in z.infolist():
            base = os.path.basename(info.filename)
            if base.startswith(("libcudart.so", "libcupti.so")):
                copy(z, info, os.path.join(out, "lib", base))
EOF

if [ "$mode" = cpu ]; then
  for needed in libtorch_cpu.so libc10.so; do
    if [ ! -f "$tmp/lib/$needed" ]; then log "$needed missing from the wheel"; exit 1; fi
  done
fi
echo "$version" > "$tmp/torch-version"
touch "$tmp/.complete"
rm -rf "$dest"
mv "$tmp" "$dest"
trap - EXIT
echo "LIBTORCH=$dest"
