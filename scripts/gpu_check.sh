#!/usr/bin/env bash
# fastcnn GPU check, sized to fit one 10-minute session on a CUDA machine:
#   env       nvidia-smi, torch / CUDA / cuDNN versions, nvcc, compute-sanitizer
#   goldens   scripts/emu_goldens.cu: each emulated instruction on the GPU, $OUT/emu_goldens.json (commit it
#             as tests/data/emu_goldens.json: the emulator's tests then compare against it bit for bit)
#   build     the extension from source (setup.py build_ext --inplace, 16 jobs)
#   tests     python3 -m pytest -m cuda -q tests/
#   memcheck  compute-sanitizer --tool memcheck on a -k subset of the CUDA tests
#   racecheck compute-sanitizer --tool racecheck on the same subset
#   bench     python3 -m fastcnn bench --preset quick (JSON and PNG to $OUT, JSON copied to benchmarks/results/)
# and a summary table last. Every step runs under `timeout`, a failing step does not stop the later ones,
# and the exit code is non-zero if any step failed. Logs go to $OUT (./out when OUT is unset).
#
# Environment: OUT, PYTHON (python3), MAX_JOBS (16), CHECK_BUDGET_S (total seconds, 570),
# SANITIZE_K (pytest -k expression for the sanitizer runs), BENCH_ARGS (extra `fastcnn bench` arguments;
# default `--compile-mode none`: max-autotune compiles of every case would not fit the bench step's budget,
# so pass BENCH_ARGS="" or "--compile-mode max-autotune" to time torch.compile too).
set -u

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
export OUT="${OUT:-$ROOT/out}"
mkdir -p "$OUT"
export PYTHON="${PYTHON:-python3}"
export MAX_JOBS="${MAX_JOBS:-16}"
export PYTHONUNBUFFERED=1
export SANITIZE_K="${SANITIZE_K:-pool or relu or sigmoid or tanh or add or activation}"
export BENCH_ARGS="${BENCH_ARGS---compile-mode none}"
if [ -z "${CUDA_HOME:-}" ] && [ -d /usr/local/cuda ]; then export CUDA_HOME=/usr/local/cuda; fi
if [ -n "${CUDA_HOME:-}" ]; then export PATH="$PATH:$CUDA_HOME/bin"; fi

BUDGET=${CHECK_BUDGET_S:-570}
DEADLINE=$(($(date +%s) + BUDGET))
NAMES=()
STATES=()
SECONDS_USED=()
FAILED=0

# run_step NAME LIMIT_S LOGFILE FUNCTION: runs FUNCTION under timeout (capped by what is left of the
# budget), tees its output to LOGFILE (or only to stdout when LOGFILE is -), and records the outcome.
run_step() {
  local name=$1 limit=$2 log=$3 fn=$4
  local left=$((DEADLINE - $(date +%s) - 5))
  if ((left < limit)); then limit=$left; fi
  NAMES+=("$name")
  if ((limit < 10)); then
    echo "=== $name: skipped, the time budget is spent ==="
    STATES+=("SKIPPED (no time)")
    SECONDS_USED+=(0)
    FAILED=1
    return
  fi
  echo
  echo "=== $name (limit ${limit}s) ==="
  local t0 rc
  t0=$(date +%s)
  if [ "$log" = "-" ]; then
    timeout --kill-after=10 "$limit" bash -c "$fn" 2>&1
    rc=$?
  else
    timeout --kill-after=10 "$limit" bash -c "$fn" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
  fi
  SECONDS_USED+=($(($(date +%s) - t0)))
  if ((rc == 0)); then
    STATES+=("ok")
  elif ((rc == 124 || rc == 137)); then
    STATES+=("TIMEOUT after ${limit}s")
    FAILED=1
  else
    STATES+=("FAILED (rc $rc)")
    FAILED=1
  fi
}

step_env() {
  nvidia-smi || echo "nvidia-smi not available"
  "$PYTHON" - <<'EOF'
import torch
print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| cuDNN", torch.backends.cudnn.version())
print("cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device: {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.1f} GiB")
EOF
  command -v nvcc >/dev/null && nvcc --version | tail -n 2
  command -v compute-sanitizer >/dev/null && compute-sanitizer --version | head -n 2
  "$PYTHON" -m pip --version
  nproc
}

step_goldens() {
  set -o pipefail
  local inc
  inc=$("$PYTHON" -c 'import torch.utils.cpp_extension as c; print(" ".join("-I" + p for p in c.include_paths()))')
  # shellcheck disable=SC2086
  nvcc -std=c++17 -O2 -arch=sm_90 -Icsrc $inc scripts/emu_goldens.cu -o "$OUT/emu_goldens" &&
    "$OUT/emu_goldens" "$OUT/emu_goldens.json"
}

step_build() {
  set -o pipefail
  export FASTCNN_CUDA=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
  # In place (incremental, in build/), against the installed torch; fastcnn imports from the checkout.
  "$PYTHON" setup.py -q build_ext --inplace || return 1
  "$PYTHON" - <<'EOF'
import torch
import fastcnn
print("fastcnn from", fastcnn.__file__)
assert fastcnn.built_with_cuda(), "fastcnn._C has no CUDA kernels"
ops = ["relu", "sigmoid", "tanh", "add", "activation_backward", "max_pool2d", "max_pool2d_backward",
       "avg_pool2d", "avg_pool2d_backward", "adaptive_avg_pool2d", "adaptive_avg_pool2d_backward",
       "conv2d", "conv2d_backward", "linear", "linear_backward"]
for op in ops:
    print(f"  {op:<30} CUDA kernel: {torch._C._dispatch_has_kernel_for_dispatch_key('fastcnn::' + op, 'CUDA')}")
EOF
}

step_tests() {
  if [ ! -d tests ]; then
    echo "no tests/ directory"
    return 1
  fi
  "$PYTHON" -m pytest -m cuda -q tests/
}

sanitize() {
  local tool=$1
  local sanitizer
  sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
  if [ -z "$sanitizer" ]; then
    echo "compute-sanitizer not found"
    return 1
  fi
  if [ ! -d tests ]; then
    echo "no tests/ directory"
    return 1
  fi
  # Without the caching allocator every tensor is its own allocation, so memcheck sees overruns.
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" --tool "$tool" --error-exitcode 3 --print-limit 20 \
    "$PYTHON" -m pytest -m cuda -q -x -p no:cacheprovider tests/ -k "$SANITIZE_K"
}

step_memcheck() { sanitize memcheck; }
step_racecheck() { sanitize racecheck; }

step_bench() {
  set -o pipefail
  # shellcheck disable=SC2086
  "$PYTHON" -m fastcnn bench --preset quick --json "$OUT/bench.json" --plot "$OUT/bench.png" $BENCH_ARGS
  local rc=$?
  if [ -f "$OUT/bench.json" ]; then
    local name
    name=$("$PYTHON" -c 'import json, os, sys; print(os.path.basename(json.load(open(sys.argv[1]))["default_json"]))' "$OUT/bench.json")
    mkdir -p benchmarks/results && cp "$OUT/bench.json" "benchmarks/results/$name" &&
      echo "copied to benchmarks/results/$name"
  fi
  return $rc
}

export -f step_env step_goldens step_build step_tests sanitize step_memcheck step_racecheck step_bench

run_step env 30 - step_env
run_step goldens 60 "$OUT/goldens.log" step_goldens
run_step build 240 "$OUT/build.log" step_build
run_step tests 120 "$OUT/pytest.log" step_tests
run_step memcheck 75 "$OUT/memcheck.log" step_memcheck
run_step racecheck 45 "$OUT/racecheck.log" step_racecheck
run_step bench 150 "$OUT/bench.log" step_bench

{
  echo
  echo "================ fastcnn gpu_check summary ================"
  printf '%-12s %-24s %8s\n' step result seconds
  for i in "${!NAMES[@]}"; do
    printf '%-12s %-24s %8s\n' "${NAMES[$i]}" "${STATES[$i]}" "${SECONDS_USED[$i]}"
  done
  if [ -f "$OUT/pytest.log" ]; then
    echo "pytest:    $(grep -E '(passed|failed|error|no tests ran)' "$OUT/pytest.log" | tail -n 1)"
  fi
  for tool in memcheck racecheck; do
    if [ -f "$OUT/$tool.log" ]; then
      echo "$tool: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/$tool.log" | tail -n 1)"
    fi
  done
  if [ -f "$OUT/bench.json" ]; then
    "$PYTHON" - "$OUT/bench.json" <<'EOF'
import json, math, sys
rec = json.load(open(sys.argv[1]))
c = rec["ceilings"]
print(f"bench ({rec['device']['name']}): ceilings copy {c['copy_gbs']:.0f} GB/s, matmul "
      + ", ".join(f"{k} {v:.1f} TFLOP/s" for k, v in c["matmul_tflops"].items()))
print("geomean PyTorch time / fastcnn time, > 1 = fastcnn faster")
groups = {}
for r in rec["cases"]:
    for who, ratio in r["ratios"].items():
        groups.setdefault((r["op"], r["dtype"] + "-" + r["layout"], who), []).append(ratio)
for (op, cfg, who), ratios in sorted(groups.items()):
    gm = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
    print(f"  {op:<30} {cfg:<20} vs {who:<8} {len(ratios):3d} cases  x{gm:.3f}")
for s in rec["skipped"]:
    print("  skipped:", s["op"], "-", s["reason"])
print(f"  failed cases: {len(rec['failed'])}")
EOF
  fi
  echo "overall: $([ "$FAILED" = 0 ] && echo PASS || echo FAIL)   logs in $OUT"
} | tee "$OUT/summary.txt"

exit "$FAILED"
