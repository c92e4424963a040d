#!/usr/bin/env bash
# Session 7's second device call (2026-12-07): validates what the first call's numbers shipped
#   run(command="bash microbench/device_ship.sh", carry=[".devenv"], timeout_s=600)
# (DEC_S / PRE_S / SM80_S / DECODE_S: seconds per step, 0 skips it)
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
# one pytest per file, most important first, so a short budget still covers the decode
for spec in "decode:${DEC_S:-170}" "prefill:${PRE_S:-170}" "prefill_sm80:${SM80_S:-0}"; do
  f=${spec%%:*}; t=${spec##*:}
  [ "$t" -gt 0 ] || continue
  echo "== GPU tests: test_$f.py (${t} s)"
  timeout "$t" python3 -m pytest -v -m gpu "tests/gpu/test_$f.py" -n 16 -p no:cacheprovider \
    -rfE > "$OUT/gpu_tests_$f.log" 2>&1
  echo "rc=$? PASSED $(grep -c ' PASSED ' "$OUT/gpu_tests_$f.log") FAILED $(grep -c ' FAILED ' \
    "$OUT/gpu_tests_$f.log") SKIPPED $(grep -c ' SKIPPED ' "$OUT/gpu_tests_$f.log")"
  grep -E ' FAILED |^FAILED|^ERROR' "$OUT/gpu_tests_$f.log" | head -20; tail -2 "$OUT/gpu_tests_$f.log"
done
if [ "${DECODE_S:-0}" -gt 0 ]; then
  echo "== decode shipped, L=32K"
  PYTHONUNBUFFERED=1 timeout "$DECODE_S" python3 microbench/decode_probe.py --no-check \
    --no-old --no-raw --bits 4,2 --candidates nopl --pairs 88,42,24,48,84 --pair-knobs "" \
    --lengths 32768 --batches 1,8,32 > "$OUT/decode_32k.log" 2>&1
  echo "rc=$?"; grep -E "^L=|Error|error" "$OUT/decode_32k.log" | head -10
fi
