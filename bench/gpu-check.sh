#!/usr/bin/env bash
# GPU check for the libtorch backend, for one NVIDIA machine (H100/H200 class) whose python3
# holds torch 2.11.0 (+cu130) and which can download nothing. Prepared on a CPU machine:
#
#   bench/gpu-build.sh           # there: bench/gpu/graft, linked against the 2.11.0 wheel
#   bench/gpu-check.sh           # here, from the repository root (a few minutes)
#
# It checks that the binary loads against this machine's torch/lib and sees the GPU; trains
# examples/dann-mnist-usps.toml on two cuda:0 workers (the coordinator evaluating on cuda:0);
# runs `graft bench train --workload dann --device cuda:0 --json` (skipped, with a message, by a
# binary without that command); times the same DANN step in PyTorch eager on the same GPU;
# and prints what it measured, ending with one JSON line. Any failed check stops it with a
# non-zero status and says which.
#
#   GRAFT_BIN        the binary (default bench/gpu/graft, then target/release/graft)
#   GRAFT_DATA_DIR   the datasets (default ../shared/data; mnist and usps are needed)
#   GPU_CHECK_STEPS  steps of the DANN job (default: the example's 3000)
#   GPU_CHECK_OUT    where logs and results go (default bench/gpu/out-<time>)
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
  echo "gpu-check: FAILED: $*" >&2
  exit 1
}
say() { echo "gpu-check: $*" >&2; }

bin="${GRAFT_BIN:-}"
if [ -z "$bin" ]; then
  for b in bench/gpu/graft target/release/graft; do
    if [ -x "$b" ]; then bin="$b"; break; fi
  done
fi
[ -n "$bin" ] && [ -x "$bin" ] || fail "no graft binary (build one with bench/gpu-build.sh, or set GRAFT_BIN)"
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
data="${GRAFT_DATA_DIR:-../shared/data}"
[ -d "$data/mnist" ] && [ -d "$data/usps" ] || fail "datasets not found in $data (set GRAFT_DATA_DIR)"
export GRAFT_DATA_DIR="$(cd "$data" && pwd)"
out="${GPU_CHECK_OUT:-bench/gpu/out-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

# 1. This machine's torch: version, GPU, and the lib/ folder the binary must load from.
torch_info=$(python3 - <<'EOF'
import os, torch
print(os.path.dirname(torch.__file__))
print(torch.__version__)
print(torch.version.cuda or "none")
print(torch.cuda.is_available())
print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
EOF
) || fail "python3 cannot import torch"
torch_dir=$(sed -n 1p <<<"$torch_info")
torch_version=$(sed -n 2p <<<"$torch_info")
cuda_version=$(sed -n 3p <<<"$torch_info")
cuda_ok=$(sed -n 4p <<<"$torch_info")
gpu=$(sed -n 5p <<<"$torch_info")
say "torch $torch_version (CUDA $cuda_version) at $torch_dir; GPU: $gpu"
[ "$cuda_ok" = True ] || fail "torch.cuda.is_available() is False"
case "$torch_version" in
  2.11.0*) ;;
  *) say "warning: bench/gpu/graft was built against torch 2.11.0, this is $torch_version" ;;
esac

# libtorch_cuda.so finds cuBLAS, cuDNN, NCCL through its RPATH (../../nvidia/*/lib); the
# nvidia folders go on the path too, for loaders that ignore it.
site=$(dirname "$torch_dir")
ld_path="$torch_dir/lib"
for d in "$site"/nvidia/*/lib; do
  [ -d "$d" ] && ld_path="$ld_path:$d"
done
export LD_LIBRARY_PATH="$ld_path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# 2. The binary loads, is linked against CUDA libtorch, and refuses what it must refuse.
if missing=$(ldd "$bin" | grep 'not found'); then
  fail "$bin cannot load: $missing"
fi
# Outputs are captured before grep -q: with pipefail, a writer cut off by grep's early exit
# would turn a match into a failure.
linked=$(ldd "$bin")
grep -q libtorch_cuda.so <<<"$linked" \
  || fail "$bin is not linked against libtorch_cuda.so (built against a CPU-only libtorch?)"
if "$bin" worker --coordinator http://127.0.0.1:9 --device cuda:999 >"$out/refuse.log" 2>&1; then
  fail "a worker accepted cuda:999"
fi
grep -q "cuda:999" "$out/refuse.log" || fail "cuda:999 refused without naming it: $(cat "$out/refuse.log")"
say "binary loads, links libtorch_cuda.so, refuses cuda:999"

# 3. DANN MNIST -> USPS on two cuda:0 workers.
steps_env=()
if [ -n "${GPU_CHECK_STEPS:-}" ]; then steps_env=(env "GRAFT_JOB_TRAINING__STEPS=$GPU_CHECK_STEPS"); fi
say "training examples/dann-mnist-usps.toml on 2 cuda:0 workers (logs in $out/dann)"
start=$(date +%s.%N)
if ! "${steps_env[@]}" "$bin" local examples/dann-mnist-usps.toml --workers 2 --device cuda:0 \
  --state-dir "$out/dann" --json >"$out/dann.json" 2>"$out/dann.err"; then
  tail -n 20 "$out/dann.err" >&2
  fail "graft local on cuda:0 did not complete (logs: $out/dann/logs)"
fi
end=$(date +%s.%N)
dann_line=$(tail -n1 "$out/dann.json")
python3 - "$dann_line" <<'EOF' || fail "the DANN job's result is not a completed job: $dann_line"
import json, sys
r = json.loads(sys.argv[1])
assert r["state"] == "COMPLETED", r
acc = r["metrics"]["target_accuracy"]
assert 0.0 <= acc <= 1.0, acc
EOF
grep -q "device=cuda:0" "$out/dann/logs/worker-0.log" || fail "worker-0 did not register on cuda:0"
say "DANN job done in $(python3 -c "print(f'{$end - $start:.1f}')") s: $dann_line"

# 4. graft bench train (issue #4's command), if this binary has it.
bench_line='null'
bench_help=$("$bin" bench --help 2>/dev/null || true)
if grep -qE '^\s+train\b' <<<"$bench_help"; then
  if "$bin" bench train --workload dann --device cuda:0 --json >"$out/bench.json" 2>"$out/bench.err"; then
    bench_line=$(tail -n1 "$out/bench.json")
    python3 -c 'import json,sys; json.loads(sys.argv[1])' "$bench_line" \
      || fail "graft bench train printed no JSON line: $bench_line"
    say "graft bench train: $bench_line"
  else
    tail -n 20 "$out/bench.err" >&2
    fail "graft bench train --workload dann --device cuda:0 failed"
  fi
else
  say "graft bench train is not in this binary (it comes with issue #4, the ring all-reduce); skipped"
fi

# 5. The same DANN step in PyTorch eager: the digits CNN of Ganin et al. as graft builds it
#    (conv 5x5 32, pool, conv 5x5 48, pool; label head 100-100-10; domain head 100-1 behind a
#    gradient reversal), a source batch and a target batch of 64 28x28 images, SGD momentum.
torch_line=$(python3 - <<'EOF'
import json, time, torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
dev = torch.device("cuda:0")

class Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lam):
        ctx.lam = lam
        return x.view_as(x)
    @staticmethod
    def backward(ctx, g):
        return -ctx.lam * g, None

features = nn.Sequential(
    nn.Conv2d(1, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(32, 48, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
label = nn.Sequential(nn.Linear(768, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10))
domain = nn.Sequential(nn.Linear(768, 100), nn.ReLU(), nn.Linear(100, 1))
model = nn.ModuleList([features, label, domain]).to(dev)
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
b = 64
xs, ys = torch.rand(b, 1, 28, 28, device=dev), torch.randint(0, 10, (b,), device=dev)
xt = torch.rand(b, 1, 28, 28, device=dev)

def step(lam=0.5):
    opt.zero_grad(set_to_none=True)
    fs, ft = features(xs), features(xt)
    loss = F.cross_entropy(label(fs), ys)
    ds, dt = domain(Reverse.apply(fs, lam)), domain(Reverse.apply(ft, lam))
    loss = loss + 0.5 * (F.binary_cross_entropy_with_logits(ds, torch.zeros_like(ds))
                         + F.binary_cross_entropy_with_logits(dt, torch.ones_like(dt)))
    loss.backward()
    opt.step()
    return loss

for _ in range(50):
    step()
torch.cuda.synchronize()
times = []
for _ in range(300):
    t = time.perf_counter()
    step()
    torch.cuda.synchronize()
    times.append(time.perf_counter() - t)
times.sort()
loss = float(step())
assert loss == loss, "NaN loss"
print(json.dumps({"workload": "dann", "framework": "pytorch-eager", "device": "cuda:0",
                  "batch": b, "step_ms_median": 1e3 * times[len(times) // 2],
                  "step_ms_p90": 1e3 * times[int(len(times) * 0.9)],
                  "steps_per_s": 1.0 / times[len(times) // 2]}))
EOF
) || fail "the PyTorch eager DANN step failed"
say "PyTorch eager: $torch_line"

# 6. What was measured, for docs/PERFORMANCE.md.
summary=$(python3 - "$dann_line" "$bench_line" "$torch_line" "$gpu" "$torch_version" \
  "$(python3 -c "print($end - $start)")" <<'EOF'
import json, sys
dann, bench, torch_eager = (json.loads(a) for a in sys.argv[1:4])
print(json.dumps({"gpu": sys.argv[4], "torch": sys.argv[5],
                  "dann_local_cuda": {"seconds_wall": round(float(sys.argv[6]), 1),
                                      "steps": dann.get("steps"),
                                      "seconds": dann.get("seconds"),
                                      "metrics": dann.get("metrics")},
                  "graft_bench_train": bench, "pytorch_eager": torch_eager}))
EOF
)
echo "$summary" | tee "$out/summary.json"
say "all checks passed; results in $out"
