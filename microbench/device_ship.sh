#!/usr/bin/env bash
# Session 7's second device call (2026-12-07): validates what the first call's numbers shipped
#   run(command="bash microbench/device_ship.sh", carry=[".devenv"], timeout_s=600)
# - decode: DecodeConfig.for_problem now uses prmt_lut for K4V4, K2V2, K4V2, K2V4, K4V8, K8V4
#   at D=128, so every decode GPU test runs again (the first call's 250 s cut them);
# - prefill: PACK_GQA_MEASURED = True, so the op's default path packs short chunks: every
#   Sm90 prefill test again, and the Sm80 tests the first call did not reach;
# - a short timing of the shipped decode at L=32K (the first call timed 8K and 128K).
set -uo pipefail
OUT=${OUT:-/tmp/fa4tq-out}
mkdir -p "$OUT"
source .devenv/setup.sh
export FA4TQ_GIT_SHA=${FA4TQ_GIT_SHA:-}
date -u
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv
echo "== GPU tests (decode, prefill sm90, prefill sm80)"
timeout ${TESTS_S:-330} python3 -m pytest -v -m gpu tests/gpu/test_decode.py \
  tests/gpu/test_prefill.py tests/gpu/test_prefill_sm80.py -n 16 -p no:cacheprovider -rfE \
  > "$OUT/gpu_tests.log" 2>&1
echo "rc=$?"; echo "PASSED $(grep -c ' PASSED ' "$OUT/gpu_tests.log") FAILED $(grep -c ' FAILED ' \
  "$OUT/gpu_tests.log") SKIPPED $(grep -c ' SKIPPED ' "$OUT/gpu_tests.log")"
grep -E ' FAILED |^FAILED|^ERROR' "$OUT/gpu_tests.log" | head -30; tail -3 "$OUT/gpu_tests.log"
echo "== decode shipped, L=32K"
PYTHONUNBUFFERED=1 timeout ${DECODE_S:-100} python3 microbench/decode_probe.py --no-check \
  --no-old --no-raw --bits 4,2 --candidates nopl --pairs 88,42,24,48,84 --pair-knobs "" \
  --lengths 32768 --batches 1,8,32 > "$OUT/decode_32k.log" 2>&1
echo "rc=$?"; grep -E "^L=|Error|error" "$OUT/decode_32k.log" | head -10
