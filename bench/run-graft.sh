#!/usr/bin/env bash
# The figures of docs/PERFORMANCE.md in one go: graft's, then PyTorch DDP's on the same
# workloads (when bench/install-pytorch.sh has made bench/.venv), one JSON object per line on
# stdout, preceded by the machine and its load (comment lines). Not part of CI.
#   bench/run-graft.sh > bench/results.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
G=target/release/graft
echo "# $(date -u +%FT%TZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg)"
$G bench allreduce --workers 2,4,8 --bytes "${SIZES:-4KiB,64KiB,1MiB,16MiB,64MiB,256MiB}" --algorithm ring --json
$G bench allreduce --workers 4 --bytes "${STAR_SIZES:-64KiB,1MiB,16MiB,64MiB}" --algorithm star --json
for w in mlp dann; do
  for a in ring star; do
    $G bench train --workload $w --workers 2 --allreduce $a --steps "${STEPS:-60}" --json
  done
  $G bench train --workload $w --workers 1 --steps "${STEPS:-60}" --json
done
if [ -x bench/.venv/bin/python ]; then
  for w in mlp dann; do
    for n in 2 1; do
      bench/.venv/bin/python bench/pytorch_ddp.py --workload $w --workers $n --steps "${TORCH_STEPS:-100}" --json
    done
  done
else
  echo "# PyTorch not installed (bench/install-pytorch.sh): no comparison figures"
fi
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
