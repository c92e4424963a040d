#!/usr/bin/env bash
# Next session's first device call (written 2026-12-07, sessions 5-6; not yet run):
#   run(command="bash microbench/device_next.sh", carry=[".devenv"], timeout_s=600)
# 1. every GPU test (prefill sm90/sm80, decode, compress, dequantize). Session 5 refactored
#    the prefill producers' shared code (_decode_chunks, dequant.paged_cache_row) and added the
#    direct_loads tests; only 10 prefill tests + 9 probe checks ran on a GPU since then;
# 2. decode (session 6 candidates; their float64 checks are in 1.): the combine as a
#    programmatic dependent launch vs plain, the PRMT-addressed tables (DecodeConfig.prmt_lut:
#    K4V4 candidate pl, K2V2 pl, pl_w4tb; pair knobs pl, pl_w4c3 for K8V8, K4V8, K8V4, K4V2,
#    K2V4);
# 3. pack_gqa (opt-in, session 5, compile-checked only): checks + chunked-prefill timings;
# Decode-only re-validation + timing: microbench/device_decode_check.sh.
set -uo pipefail
OUT=${OUT:-/tmp/fa4tq-out}
mkdir -p "$OUT"
source .devenv/setup.sh
export FA4TQ_GIT_SHA=${FA4TQ_GIT_SHA:-}
date -u
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv
echo "== GPU tests"
# -v: one line per finished test, so a run cut by the timeout still says what passed/failed
timeout ${TESTS_S:-250} python3 -m pytest -v -m gpu tests/gpu -n 16 -p no:cacheprovider -rfE \
  > "$OUT/gpu_tests.log" 2>&1
echo "rc=$?"; echo "PASSED $(grep -c ' PASSED ' "$OUT/gpu_tests.log") FAILED $(grep -c ' FAILED ' \
  "$OUT/gpu_tests.log") SKIPPED $(grep -c ' SKIPPED ' "$OUT/gpu_tests.log")"
grep -E ' FAILED |^FAILED|^ERROR' "$OUT/gpu_tests.log" | head -30; tail -3 "$OUT/gpu_tests.log"
echo "== decode: --pdl, PRMT tables (candidates pl, pl_w4tb; pairs 88/48/84/42/24)"
PYTHONUNBUFFERED=1 timeout ${PDL_S:-170} python3 microbench/decode_probe.py --no-check --no-old \
  --no-raw --candidates pl,pl_w4tb --bits 4,2 --lengths 8192,131072 --batches 1,8,32 --pdl \
  --pairs 88,48,84,42,24 --pair-knobs pl,pl_w4c3 \
  > "$OUT/decode_pdl.log" 2>&1
echo "rc=$?"; grep -E "L=|pdl|Error|error" "$OUT/decode_pdl.log" | head -30
echo "== probe --pack-gqa"
PYTHONUNBUFFERED=1 timeout ${PACK_S:-100} python3 microbench/prefill_probe.py --pack-gqa \
  > "$OUT/pack_gqa.log" 2>&1
echo "rc=$?"; grep -E "CHECK|BENCH|ERROR|SKIP|total" "$OUT/pack_gqa.log"
