#!/usr/bin/env bash
# Decode validation + timing on a GPU machine (session 4: the defaults after the ring measurements, K4V4 3 stages,
# K4V8/K2V8 ring 8 warps x 1 CTA): decode GPU tests, the probe's correctness matrix, K4V2
# 3 vs 4 stages, and the shipped nine pairs against SDPA/FA4 bf16.
set -uo pipefail
OUT=${OUT:-/tmp/fa4tq-out}
mkdir -p "$OUT"
source .devenv/setup.sh
date -u
t0=$(date +%s)
timeout ${TESTS_S:-150} python3 -m pytest -q -m gpu tests/gpu/test_decode.py -n 16 \
  -p no:cacheprovider -rfE > "$OUT/gpu_tests_decode.log" 2>&1
echo "tests rc=$? ($(( $(date +%s) - t0 )) s)"; tail -4 "$OUT/gpu_tests_decode.log"
timeout ${CHECK_S:-150} python3 microbench/decode_probe.py --no-bench --workers 12 \
  > "$OUT/decode_checks.log" 2>&1
echo "checks rc=$?"; grep -E "passed|FAIL" "$OUT/decode_checks.log" | tail -12
timeout ${DECODE_S:-240} python3 microbench/decode_probe.py --no-check --no-old --no-raw \
  --bits "" --pairs 44,42,22,88,48,84,28,82,24 --pair-knobs ring_s3,ring_s4 \
  --lengths 131072,32768,8192 --batches 32,8,1 > "$OUT/decode_shipped.log" 2>&1
echo "bench rc=$?"; grep "^L=\|    K" "$OUT/decode_shipped.log" | tail -30
date -u
