#!/usr/bin/env bash
# Session 4, first device call: all GPU tests (incl. the decode speed candidates restored
# from branch decode-speed-candidates), decode candidate timing, ncu of the K4V4 prefill.
set -uo pipefail
OUT=${OUT:-/tmp/fa4tq-out}
mkdir -p "$OUT"
source .devenv/setup.sh
export FA4TQ_GIT_SHA=${FA4TQ_GIT_SHA:-}
date -u
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv
echo "== GPU tests"
t0=$(date +%s)
timeout ${TESTS_S:-330} python3 -m pytest -q -m gpu tests/gpu -n 16 -p no:cacheprovider -rfE \
  > "$OUT/gpu_tests.log" 2>&1
echo "rc=$? ($(( $(date +%s) - t0 )) s)"; tail -25 "$OUT/gpu_tests.log"
echo "== decode candidates"
timeout ${DECODE_S:-130} python3 microbench/decode_probe.py --no-check --no-old --no-raw \
  --bits 4,2 --lengths 131072,8192 --batches 32,8,1 \
  --candidates early,btla,early_btla,ring,ring_early > "$OUT/decode_bench.log" 2>&1
echo "rc=$?"; tail -60 "$OUT/decode_bench.log"
echo "== ncu prefill K4V4"
timeout ${NCU_S:-85} python3 -m microbench ncu prefill --kv 4,4 --seqlens 8K --batch 1 \
  --no-causal --out-dir /tmp/fa4tq-ncu 2>&1 | tail -12
for f in /tmp/fa4tq-ncu/*.md; do [ -f "$f" ] && cp "$f" "$OUT/ncu-$(basename "$f")"; done
date -u
