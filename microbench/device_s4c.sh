#!/usr/bin/env bash
# Session 4, third device call: with table_lookahead shipped for the prefetching pairs,
# (1) the ring variants vs shipped for K4V4/K4V2/K2V4 (agreement at the shipped split
# count, then timing with each config's own split choice), (2) the decode GPU tests.
set -uo pipefail
OUT=${OUT:-/tmp/fa4tq-out}
mkdir -p "$OUT"
source .devenv/setup.sh
date -u
timeout ${DECODE_S:-200} python3 microbench/decode_probe.py --no-check --no-old --no-raw \
  --bits "" --pairs 44,42,24,22 --pair-knobs nobtla,ring_early,ring_early_tb \
  --lengths 131072,32768,8192 --batches 32,8,1 > "$OUT/decode_pairs.log" 2>&1
echo "rc=$?"; grep "^L=\|    K" "$OUT/decode_pairs.log" | tail -40
echo "== decode GPU tests"
t0=$(date +%s)
timeout ${TESTS_S:-200} python3 -m pytest -q -m gpu tests/gpu/test_decode.py -n 16 \
  -p no:cacheprovider -rfE > "$OUT/gpu_tests_decode.log" 2>&1
echo "rc=$? ($(( $(date +%s) - t0 )) s)"; tail -8 "$OUT/gpu_tests_decode.log"
date -u
