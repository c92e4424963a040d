#!/usr/bin/env bash
# Next session's first device call (written 2026-11-24, end of session 4):
#   run(command="FA4TQ_GIT_SHA=$(git rev-parse --short HEAD) bash microbench/device_next.sh",
#       carry=[".devenv"], timeout_s=600)
# 1. every GPU test (prefill sm90/sm80, decode with the session-4 ring defaults, compress,
#    dequantize);
# 2. Nsight Compute summary of the shipped K4V4 and K8V8 prefill (8K full);
# 3. the compress probe on the shipped defaults.
# Decode-only re-validation + timing: microbench/device_decode_check.sh.
set -uo pipefail
OUT=${OUT:-/tmp/fa4tq-out}
mkdir -p "$OUT"
source .devenv/setup.sh
export FA4TQ_GIT_SHA=${FA4TQ_GIT_SHA:-}
date -u
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv
echo "== GPU tests"
timeout ${TESTS_S:-330} python3 -m pytest -q -m gpu tests/gpu -n 16 -p no:cacheprovider -rfE \
  > "$OUT/gpu_tests.log" 2>&1
echo "rc=$?"; tail -25 "$OUT/gpu_tests.log"
for kv in 4,4 8,8; do
  echo "== ncu prefill K${kv/,/V}"
  timeout ${NCU_S:-80} python3 -m microbench ncu prefill --kv $kv --seqlens 8K --batch 1 \
    --no-causal --out-dir /tmp/fa4tq-ncu 2>&1 | tail -12
done
for f in /tmp/fa4tq-ncu/*.md; do [ -f "$f" ] && cp "$f" "$OUT/ncu-$(basename "$f")"; done
echo "== compress probe"
timeout ${COMPRESS_S:-100} python3 -m microbench.compress_probe > "$OUT/compress.log" 2>&1
echo "rc=$?"; tail -30 "$OUT/compress.log"
