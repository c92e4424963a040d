#!/usr/bin/env bash
# One device command that validates and measures everything (see ../shared/device/README.md):
#   run(command="bash microbench/device_run.sh", carry=[".devenv"], timeout_s=600)
# Budgets (seconds) keep it inside one 10-minute call: GPU tests, sweep, ncu.
# Results land in $OUT: gpu_tests.log, sweep.{csv,json,log,png}, ncu/*.md, env.txt.
set -uo pipefail
TESTS_S=${TESTS_S:-200}
SWEEP_S=${SWEEP_S:-300}
NCU_S=${NCU_S:-60}
OUT=${OUT:-/tmp/fa4tq-out}
mkdir -p "$OUT"
source .devenv/setup.sh
export FA4TQ_GIT_SHA=${FA4TQ_GIT_SHA:-unknown}
{ date -u; nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw \
    --format=csv; python3 -c "import torch, cutlass, flash_attn; print(torch.__version__)"; } \
  > "$OUT/env.txt" 2>&1
echo "== GPU tests (budget ${TESTS_S}s)"
timeout "$TESTS_S" python3 -m pytest -q -m gpu tests/gpu -n 8 -p no:cacheprovider \
  2>&1 | tee "$OUT/gpu_tests.log" | tail -25
echo "== sweep (budget ${SWEEP_S}s)"
timeout $((SWEEP_S + 30)) python3 -m microbench sweep --time-budget "$SWEEP_S" \
  --csv "$OUT/sweep.csv" --json "$OUT/sweep.json" --plot "$OUT/sweep.png" --quiet \
  > "$OUT/sweep.log" 2>&1
tail -60 "$OUT/sweep.log"
if [ "$NCU_S" -gt 0 ]; then
  echo "== ncu (budget ${NCU_S}s)"
  mkdir -p "$OUT/ncu"
  timeout "$NCU_S" python3 -m microbench ncu prefill --kv 4,4 --seqlens 8K --batch 1 --no-causal \
    --out-dir /tmp/fa4tq-ncu 2>&1 | tail -15; cp /tmp/fa4tq-ncu/*.md "$OUT/ncu/" 2>/dev/null
fi
