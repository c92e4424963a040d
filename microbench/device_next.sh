#!/usr/bin/env bash
# Next session's first device call (written 2026-12-07, end of session 5):
#   run(command="bash microbench/device_next.sh", carry=[".devenv"], timeout_s=600)
# 1. every GPU test (prefill sm90/sm80, decode, compress, dequantize). Session 5 refactored
#    the prefill producers' shared code (_decode_chunks, dequant.paged_cache_row) and added the
#    direct_loads tests; only 10 prefill tests + 9 probe checks ran on a GPU since then;
# 2. decode with the combine as a programmatic dependent launch (session 6) vs plain, and the
#    K2V2 byte-indexed table candidates (bl2, bl2_w4; their float64 checks are in 1.);
# 3. pack_gqa (opt-in, session 5, compile-checked only): checks + chunked-prefill timings;
# 4. Nsight Compute summary of the shipped K4V4 prefill (8K full).
# Decode-only re-validation + timing: microbench/device_decode_check.sh.
set -uo pipefail
OUT=${OUT:-/tmp/fa4tq-out}
mkdir -p "$OUT"
source .devenv/setup.sh
export FA4TQ_GIT_SHA=${FA4TQ_GIT_SHA:-}
date -u
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv
echo "== GPU tests"
timeout ${TESTS_S:-250} python3 -m pytest -q -m gpu tests/gpu -n 16 -p no:cacheprovider -rfE \
  > "$OUT/gpu_tests.log" 2>&1
echo "rc=$?"; tail -25 "$OUT/gpu_tests.log"
echo "== decode --pdl, K2V2 byte table (bl2)"
PYTHONUNBUFFERED=1 timeout ${PDL_S:-120} python3 microbench/decode_probe.py --no-check --no-old \
  --no-raw --candidates bl2,bl2_w4 --bits 4,2 --lengths 8192,131072 --batches 1,8,32 --pdl \
  > "$OUT/decode_pdl.log" 2>&1
echo "rc=$?"; grep -E "L=|pdl|Error|error" "$OUT/decode_pdl.log" | head -30
echo "== probe --pack-gqa"
PYTHONUNBUFFERED=1 timeout ${PACK_S:-100} python3 microbench/prefill_probe.py --pack-gqa \
  > "$OUT/pack_gqa.log" 2>&1
echo "rc=$?"; grep -E "CHECK|BENCH|ERROR|SKIP|total" "$OUT/pack_gqa.log"
for kv in 4,4; do
  echo "== ncu prefill K${kv/,/V}"
  timeout ${NCU_S:-50} python3 -m microbench ncu prefill --kv $kv --seqlens 8K --batch 1 \
    --no-causal --out-dir /tmp/fa4tq-ncu 2>&1 | tail -12
done
for f in /tmp/fa4tq-ncu/*.md; do [ -f "$f" ] && cp "$f" "$OUT/ncu-$(basename "$f")"; done
