#!/usr/bin/env bash
# Next session's first device call (written 2026-12-08, sessions 8-9; session 9 had no device):
#   run(command="bash microbench/device_next.sh", carry=[".devenv"], timeout_s=600)
# (step limits add up to ~590 s; override with PREWARM_S / PROBE_S / CAND_S / REST_S / W6T_S /
# W6_S; 0 skips a test or w6 step)
# Session 8 ran every prefill (Sm90 247/247, Sm80 227/227, incl. the issue's matrix) and the
# decode matrix (27/27) GPU test at the shipped defaults; nothing there changed since. New and
# never run on a GPU: the compress candidates (CompressConfig.smem_stages / index8:
# "lut-wide-r3", "lut-pf-i8", "lut-r2"; docs/compress-notes.md, 2026-12-08 prediction) and the
# decode candidate "w6". This call:
# 1. compiles the compress probe's configs in parallel (CuTeDSL file cache), then smoke-checks
#    every candidate bit-exact and times it at 4096 / 65536 tokens next to binary / lut /
#    lut-wide / lut-pf (compress only);
# 2. the candidate GPU tests (bit-exact against reference.compress_store over 12 shapes,
#    edge vectors, rejections);
# 3. the rest of the compress GPU test file (unchanged kernels at their defaults; 60 s, it
#    may not finish: it passed in full before);
# 4. the decode candidate "w6" (the 4-bit-K ring at 6 warps x 2 CTAs per SM instead of 4 x 2;
#    docs/decode-notes.md §11): its float64 cases, then timed against the shipped config
#    (K4V4 candidate, K4V2 pair knob) at L 8K/32K/128K x B 1/8/32.
set -uo pipefail
OUT=${OUT:-/tmp/fa4tq-out}
mkdir -p "$OUT"
source .devenv/setup.sh
export FA4TQ_GIT_SHA=${FA4TQ_GIT_SHA:-}
date -u
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv
echo "== compress candidates: prewarm (${PREWARM_S:-70} s), probe (${PROBE_S:-140} s)"
timeout "${PREWARM_S:-70}" python3 -m microbench.compress_probe --prewarm --candidates \
  > "$OUT/compress_prewarm.log" 2>&1
echo "rc=$?"; tail -2 "$OUT/compress_prewarm.log"
PYTHONUNBUFFERED=1 timeout "${PROBE_S:-140}" python3 -m microbench.compress_probe --candidates \
  --skip-tests > "$OUT/compress_probe.log" 2>&1
echo "rc=$?"; grep -E "smoke|MISMATCH|mismatch|Error|row" "$OUT/compress_probe.log" | tail -40
for spec in "candidate:${CAND_S:-140}" "not candidate:${REST_S:-0}"; do
  k=${spec%%:*}; t=${spec##*:}
  [ "$t" -gt 0 ] || continue
  f="$OUT/gpu_tests_compress_${k// /_}.log"
  echo "== GPU tests: test_compress.py -k '$k' (${t} s)"
  timeout "$t" python3 -m pytest -v -m gpu tests/gpu/test_compress.py -k "$k" -n 16 \
    -p no:cacheprovider -rfE > "$f" 2>&1
  echo "rc=$? PASSED $(grep -c ' PASSED ' "$f") FAILED $(grep -c ' FAILED ' "$f") SKIPPED \
$(grep -c ' SKIPPED ' "$f")"
  grep -E ' FAILED |^FAILED|^ERROR' "$f" | head -20; tail -2 "$f"
done
echo "== decode candidates w6 / tp / w6tp / pl_w6tp: float64 cases (${W6T_S:-100} s), timing (${W6_S:-150} s)"
if [ "${W6T_S:-100}" -gt 0 ]; then
  timeout "${W6T_S:-100}" python3 -m pytest -v -m gpu tests/gpu/test_decode.py -k "w6 or tp" -n 8 \
    -p no:cacheprovider -rfE > "$OUT/gpu_tests_decode_w6.log" 2>&1
  echo "rc=$? PASSED $(grep -c ' PASSED ' "$OUT/gpu_tests_decode_w6.log") FAILED \
$(grep -c ' FAILED ' "$OUT/gpu_tests_decode_w6.log")"
fi
if [ "${W6_S:-150}" -gt 0 ]; then
  PYTHONUNBUFFERED=1 timeout "${W6_S:-150}" python3 microbench/decode_probe.py --no-check \
    --no-old --no-raw --bits 4,2 --candidates w6,tp,w6tp,pl_w6tp --pairs 42 \
    --pair-knobs w6,tp,w6tp --lengths ${W6_L:-8192,32768} --batches 1,8,32 \
    > "$OUT/decode_w6.log" 2>&1
  echo "rc=$?"; grep -E "^L=|Error|error" "$OUT/decode_w6.log" | head -12
fi
