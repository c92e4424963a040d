#!/usr/bin/env bash
# One device command that validates and measures everything (see ../shared/device/README.md):
#   run(command="bash microbench/device_run.sh", carry=[".devenv"], timeout_s=600)
# Budgets (seconds) keep it inside one 10-minute call. Results in $OUT (at most 8 files):
# gpu_tests.log, compress.log, sweep.{csv,json,log,png}, ncu-*.md.
set -uo pipefail
TESTS_S=${TESTS_S:-170}
COMPRESS_S=${COMPRESS_S:-60}
SWEEP_S=${SWEEP_S:-250}
NCU_S=${NCU_S:-45}
OUT=${OUT:-/tmp/fa4tq-out}
mkdir -p "$OUT"
source .devenv/setup.sh
export FA4TQ_GIT_SHA=${FA4TQ_GIT_SHA:-}
date -u
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw --format=csv
XDIST=""
python3 -c "import xdist" 2>/dev/null && XDIST="-n ${XDIST_N:-8}"
echo "== GPU tests (budget ${TESTS_S}s, xdist: ${XDIST:-no})"
timeout "$TESTS_S" python3 -m pytest -q -m gpu tests/gpu $XDIST -p no:cacheprovider \
  > "$OUT/gpu_tests.log" 2>&1
echo "pytest rc=$?"; tail -25 "$OUT/gpu_tests.log"
if [ "$COMPRESS_S" -gt 0 ]; then
  echo "== compress probe (budget ${COMPRESS_S}s)"
  timeout "$COMPRESS_S" python3 -m microbench.compress_probe --quick --skip-tests > "$OUT/compress.log" 2>&1
  echo "compress_probe rc=$?"; tail -30 "$OUT/compress.log"
fi
echo "== sweep prefill+decode, all nine configs (budget ${SWEEP_S}s)"
timeout $((SWEEP_S + 40)) python3 -m microbench sweep --ops prefill,decode --time-budget "$SWEEP_S" \
  --csv "$OUT/sweep.csv" --json "$OUT/sweep.json" --plot "$OUT/sweep.png" > "$OUT/sweep.log" 2>&1
echo "sweep rc=$?"; tail -70 "$OUT/sweep.log"
if [ "$NCU_S" -gt 0 ]; then
  echo "== ncu (budget ${NCU_S}s)"
  timeout "$NCU_S" python3 -m microbench ncu prefill --kv 4,4 --seqlens 8K --batch 1 --no-causal \
    --out-dir /tmp/fa4tq-ncu 2>&1 | tail -12
  for f in /tmp/fa4tq-ncu/*.md; do [ -f "$f" ] && cp "$f" "$OUT/ncu-$(basename "$f")"; done
fi
