#!/usr/bin/env bash
# The reverse-validation grid of the MNIST <-> USPS DANN recipes (docs/methods.md): every
# candidate in both directions, over several seeds, one process per direction and candidate,
# and the choice per direction by the mean score over the seeds. It reads no target label.
#
#   bench/dann_reverse_validation_grid.sh [OUT.jsonl]      # default bench/dann-reverse-validation-grid.jsonl
#
# Made for a CUDA machine (24 processes share one GPU: a few minutes on an H200); with
# RV_DEVICE=cpu it runs anywhere, but takes hours. Needs python3 with torch and numpy (on a
# CPU machine, bench/install-pytorch.sh and PYTHON=bench/.venv/bin/python).
#
#   RV_DEVICE       cuda (default) or cpu
#   RV_SEEDS        seeds of every candidate, comma-separated (default 1,2,3)
#   RV_CANDIDATES   space-separated raw|std:WIDTHS[:LAMBDA] (default: the grid below)
#   RV_STEPS        steps of each training (default: the examples' 3000; fewer for a smoke test)
#   GRAFT_DATA_DIR  the datasets (default ../shared/data; mnist and usps are needed)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/dann-reverse-validation-grid.jsonl}"
device="${RV_DEVICE:-cuda}"
seeds="${RV_SEEDS:-1,2,3}"
steps="${RV_STEPS:-3000}"
python="${PYTHON:-python3}"
# Input scaling x domain head (the DANN paper's 100, ADDA's 500-500) x the reversal's
# largest weight: a weaker reversal trades alignment for the source features' accuracy.
default_grid=""
for scaling in raw std; do
  for head in 100 500,500; do
    for lam in 0.1 0.3 1; do
      default_grid="$default_grid $scaling:$head:$lam"
    done
  done
done
read -r -a candidates <<<"${RV_CANDIDATES:-$default_grid}"

: >"$out"
pids=()
for dir in mnist:usps usps:mnist; do
  for c in "${candidates[@]}"; do
    # Each line is one write, so the processes can share the file.
    "$python" "$here/dann_reverse_validation.py" --source "${dir%%:*}" --target "${dir##*:}" \
      --candidate "$c" --seeds "$seeds" --steps "$steps" --device "$device" >>"$out" &
    pids+=("$!")
  done
done
failed=0
for p in "${pids[@]}"; do
  wait "$p" || failed=$((failed + 1))
done
if [ "$failed" -gt 0 ]; then
  echo "dann_reverse_validation_grid: $failed of ${#pids[@]} runs failed" >&2
  exit 1
fi
# The per-process choices (one candidate each) are dropped; the grid's choice follows.
grep -v '"chosen"' "$out" >"$out.tmp" && mv "$out.tmp" "$out"
"$python" "$here/dann_reverse_validation.py" --summarize "$out" | tee -a "$out"
