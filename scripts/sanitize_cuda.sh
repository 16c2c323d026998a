#!/usr/bin/env bash
# Runs fastcnn's whole `cuda` test suite under compute-sanitizer, once per tool:
#   memcheck   out-of-bounds and misaligned accesses, invalid frees, leaks of device allocations
#   racecheck  shared-memory data races (hazards between threads of a block)
#   initcheck  reads of uninitialised global memory
# and exits non-zero if any tool reports an error or any test fails. The `large` tests (> 2^31-element
# tensors) are left out: under the sanitizers they would take hours. Logs go to $OUT (./out/sanitize).
#
# Environment: PYTHON (python3), OUT, TOOLS (default "memcheck racecheck initcheck"), PYTEST_ARGS (extra
# pytest arguments, e.g. -k pool), SANITIZER_ARGS (extra compute-sanitizer arguments).
# Usage: bash scripts/sanitize_cuda.sh          (after building fastcnn with FASTCNN_CUDA=1)
set -u -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-$ROOT/out}/sanitize"
TOOLS="${TOOLS:-memcheck racecheck initcheck}"
mkdir -p "$OUT"
if [ -z "${CUDA_HOME:-}" ] && [ -d /usr/local/cuda ]; then export CUDA_HOME=/usr/local/cuda; fi

SANITIZER=$(command -v compute-sanitizer || ls "${CUDA_HOME:-/usr/local/cuda}"/bin/compute-sanitizer 2>/dev/null | head -n 1)
if [ -z "$SANITIZER" ]; then
  echo "compute-sanitizer not found (looked in PATH and \$CUDA_HOME/bin)" >&2
  exit 2
fi
if ! "$PYTHON" -c 'import sys, fastcnn; sys.exit(0 if fastcnn.cuda_available() else 1)'; then
  echo "fastcnn's CUDA kernels or a GPU are not available: build with FASTCNN_CUDA=1 on a GPU machine" >&2
  exit 2
fi

# Without the caching allocator every tensor is its own cudaMalloc, so memcheck sees an overrun past a
# tensor's end and initcheck sees reads of memory no kernel wrote (a cached block may hold old data).
export PYTORCH_NO_CUDA_MEMORY_CACHING=1
export PYTHONUNBUFFERED=1

FAILED=0
SUMMARY=()
for tool in $TOOLS; do
  extra=()
  case "$tool" in
    memcheck) extra=(--leak-check full) ;;
    racecheck) extra=(--racecheck-report all) ;;
    initcheck) extra=(--track-unused-memory no) ;;
    *) echo "unknown tool $tool" >&2; exit 2 ;;
  esac
  log="$OUT/$tool.log"
  echo "=== compute-sanitizer --tool $tool (log: $log) ==="
  start=$(date +%s)
  # --error-exitcode makes any reported error fail the run even when every test passes.
  # shellcheck disable=SC2086
  "$SANITIZER" --tool "$tool" "${extra[@]}" --error-exitcode 86 --print-limit 50 ${SANITIZER_ARGS:-} \
    "$PYTHON" -m pytest -q -p no:cacheprovider -p no:xdist -m "cuda and not large" tests/ ${PYTEST_ARGS:-} \
    2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  seconds=$(($(date +%s) - start))
  errors=$(grep -E "(ERROR|RACECHECK) SUMMARY" "$log" | tail -n 1)
  if [ "$rc" -ne 0 ]; then
    FAILED=1
    state="FAIL (rc $rc)"
  else
    state="ok"
  fi
  SUMMARY+=("$(printf '%-10s %-14s %6ss  %s' "$tool" "$state" "$seconds" "${errors:-no summary line}")")
done

echo
echo "=============== fastcnn sanitize_cuda summary ==============="
for line in "${SUMMARY[@]}"; do echo "$line"; done
echo "overall: $([ "$FAILED" = 0 ] && echo PASS || echo FAIL)   logs in $OUT"
exit "$FAILED"
