#!/usr/bin/env bash
# fastcnn GPU check, sized to fit the 15 minutes of device time a task gets in all (one call of about 9.5
# minutes, leaving time to rerun a step):
#   env        nvidia-smi, torch / CUDA / cuDNN versions, nvcc, compute-sanitizer
#   goldens    scripts/emu_goldens.cu: each emulated instruction on the GPU, $OUT/emu_goldens.json (commit it
#              as tests/data/emu_goldens.json: the emulator's tests then compare against it bit for bit)
#   build      the extension from source (setup.py build_ext --inplace, MAX_JOBS=16)
#   resources  scripts/gemm_resources.py: registers, spills, shared memory and residency of every GEMM-core
#              kernel from ptxas -v ($OUT/gemm_resources.json), to set against benchmarks/NOTES.md's table
#   tests      python3 -m pytest -m cuda -q tests/
#   memcheck   compute-sanitizer --tool memcheck on a -k subset of the CUDA tests
#   racecheck  compute-sanitizer --tool racecheck on the same subset
#   ncu        Nsight Compute on three ResNet-50 layers (3x3 fwd, stride-2 3x3 dgrad, OC=64 3x3 wgrad; fp16
#              channels_last): tensor-pipe instructions, global load bytes, cp.async instructions, shared
#              bank conflicts, achieved occupancy, registers, to set against the emulator's counts
#              (benchmarks/results/emu-counters-*.json)
#   bench      fastcnn bench on ResNet-50's conv layers (conv2d, conv2d_backward; fp16 channels_last) vs
#              cuDNN and torch.compile ($OUT/bench_layers.json)
#   models     ResNet-50 inference and SGD step end to end vs eager and torch.compile ($OUT/bench_models.json)
# and a summary table last. Every step runs under `timeout`, a failing step does not stop the later ones,
# and the exit code is non-zero if any step failed. Nothing is committed or copied into the checkout:
# every result lands in $OUT (./out when OUT is unset); copy the JSON into benchmarks/results/ by hand.
#
# Environment: OUT, PYTHON (python3), MAX_JOBS (16), CHECK_BUDGET_S (total seconds, 570),
# SANITIZE_K (pytest -k expression for the sanitizer runs), COMPILE_MODE (torch.compile mode of the bench
# steps, default `default`: max-autotune compiles would not fit), BENCH_ARGS (extra `fastcnn bench`
# arguments for both bench steps).
set -u

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
export OUT="${OUT:-$ROOT/out}"
mkdir -p "$OUT"
export PYTHON="${PYTHON:-python3}"
export MAX_JOBS="${MAX_JOBS:-16}"
export PYTHONUNBUFFERED=1
export SANITIZE_K="${SANITIZE_K:-pool or relu or sigmoid or tanh or add or activation}"
export COMPILE_MODE="${COMPILE_MODE:-default}"
export BENCH_ARGS="${BENCH_ARGS:-}"
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

step_resources() {
  "$PYTHON" scripts/gemm_resources.py --json "$OUT/gemm_resources.json"
}

# Three layers whose emulated counts moved most (benchmarks/NOTES.md): a 3x3 forward, the stride-2 3x3
# dgrad (one GEMM per stride phase) and the 64-output-channel 3x3 wgrad (64x64 tiles).
step_ncu() {
  local ncu
  ncu=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -n 1)
  if [ -z "$ncu" ]; then
    echo "ncu not found"
    return 1
  fi
  cat >"$OUT/ncu_layers.py" <<'EOF'
import torch
import fastcnn  # noqa: F401

def t(*shape):
    return (torch.rand(*shape, device="cuda") + 0.5).half().contiguous(memory_format=torch.channels_last)

conv, bwd = torch.ops.fastcnn.conv2d, torch.ops.fastcnn.conv2d_backward
x, w = t(32, 64, 56, 56), t(64, 64, 3, 3)
conv(x, w, None, [1, 1], [1, 1], [1, 1], 1, 0, None)
x2, w2, gy2 = t(32, 128, 56, 56), t(128, 128, 3, 3), t(32, 128, 28, 28)
bwd(gy2, x2, w2, None, [2, 2], [1, 1], [1, 1], 1, 0, [True, False, False])
gy = t(32, 64, 56, 56)
bwd(gy, x, w, None, [1, 1], [1, 1], [1, 1], 1, 0, [False, True, False])
torch.cuda.synchronize()
EOF
  local metrics=smsp__inst_executed_pipe_tensor.sum,l1tex__t_bytes_pipe_lsu_mem_global_op_ld.sum
  metrics+=,smsp__sass_inst_executed_op_ldgsts.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum
  metrics+=,sm__warps_active.avg.pct_of_peak_sustained_active,launch__registers_per_thread
  metrics+=,launch__occupancy_limit_registers,dram__bytes_read.sum
  PYTHONPATH="$ROOT" "$ncu" --kernel-name regex:conv_gemm_kernel --csv --page raw --metrics "$metrics" \
    "$PYTHON" "$OUT/ncu_layers.py" >"$OUT/ncu_layers.csv"
  local rc=$?
  cat "$OUT/ncu_layers.csv"
  return $rc
}

bench_to() {
  set -o pipefail
  local json=$1
  shift
  # shellcheck disable=SC2086
  "$PYTHON" -m fastcnn bench --device cuda --compile-mode "$COMPILE_MODE" --json "$json" "$@" $BENCH_ARGS
}

step_bench() {
  bench_to "$OUT/bench_layers.json" --preset full --networks resnet50 --ops conv2d,conv2d_backward \
    --dtype fp16 --layout channels_last --max-shapes 8 --plot "$OUT/bench_layers.png"
}

step_models() {
  bench_to "$OUT/bench_models.json" --preset models --networks resnet50 \
    --ops resnet50_inference,resnet50_train_step --batch 32 --dtype fp16 --layout channels_last
}

export -f step_env step_goldens step_build step_resources step_tests sanitize step_memcheck step_racecheck \
  step_ncu bench_to step_bench step_models

run_step env 20 - step_env
run_step goldens 45 "$OUT/goldens.log" step_goldens
run_step build 200 "$OUT/build.log" step_build
run_step resources 60 "$OUT/resources.log" step_resources
run_step tests 90 "$OUT/pytest.log" step_tests
run_step memcheck 50 "$OUT/memcheck.log" step_memcheck
run_step racecheck 30 "$OUT/racecheck.log" step_racecheck
run_step ncu 40 "$OUT/ncu.log" step_ncu
run_step bench 90 "$OUT/bench.log" step_bench
run_step models 60 "$OUT/models.log" step_models

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
  if [ -f "$OUT/gemm_resources.json" ]; then
    "$PYTHON" - "$OUT/gemm_resources.json" <<'EOF'
import json, sys
rows = json.load(open(sys.argv[1]))["kernels"]
low = [r for r in rows if r["warps_per_sm"] < 8 or r.get("spill_store_bytes", 0) > 0]
print(f"resources: {len(rows)} GEMM kernels, warps/SM {min(r['warps_per_sm'] for r in rows)}-"
      f"{max(r['warps_per_sm'] for r in rows)}, registers {min(r['registers'] for r in rows)}-"
      f"{max(r['registers'] for r in rows)}, {len(low)} below 8 warps or spilling")
EOF
  fi
  if [ -f "$OUT/ncu_layers.csv" ]; then
    echo "ncu: $(($(grep -c conv_gemm_kernel "$OUT/ncu_layers.csv"))) conv_gemm_kernel launches profiled ($OUT/ncu_layers.csv)"
  fi
  for bench_json in "$OUT/bench_layers.json" "$OUT/bench_models.json"; do
    [ -f "$bench_json" ] || continue
    "$PYTHON" - "$bench_json" <<'EOF'
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
  done
  echo "overall: $([ "$FAILED" = 0 ] && echo PASS || echo FAIL)   logs in $OUT"
} | tee "$OUT/summary.txt"

exit "$FAILED"
