#!/usr/bin/env bash
# Next session's first device call (written 2026-12-08, sessions 8-9; session 9 had no device):
# Budget: device_next.sh ~570 s + device_next2.sh ~530 s + device_next3.sh ~380 s, plus ~90 s
# of start-up each: ~1750 s of the 1800 s. After refused starts, drop device_next3.sh first.
#   run(command="bash microbench/device_next.sh", carry=[".devenv"], timeout_s=600)
# (step limits add up to ~570 s; override with PREWARM_S / PROBE_S / CAND_S / REST_S / W6T_S /
# W6_S; 0 skips a test or w6 step)
# Session 8 ran every prefill (Sm90 247/247, Sm80 227/227, incl. the matrix) and the
# decode matrix (27/27) GPU test at the shipped defaults; nothing there changed since. New and
# never run on a GPU: the compress candidates (CompressConfig.smem_stages / index8:
# "lut-wide-r3", "lut-pf-i8", "lut-r2"; docs/compress-notes.md, 2026-12-08 prediction) and the
# decode candidates "w6" (session 8) and "tp" / "w6tp" / "pl_w6tp" (tile pairs, session 9).
# This call:
# 1. compiles the compress probe's configs in parallel (CuTeDSL file cache), then smoke-checks
#    every candidate bit-exact and times it at 4096 / 65536 tokens next to binary / lut /
#    lut-wide / lut-pf (compress only);
# 2. the candidate GPU tests (bit-exact against reference.compress_store over 12 shapes,
#    edge vectors, rejections); the rest of the compress file only with REST_S > 0 (unchanged
#    kernels at their defaults; it passed in full before);
# 3. the decode candidates (docs/decode-notes.md §11-12): their float64 cases, then timed
#    against the shipped config (K4V4 / K2V2 candidates, K4V2 pair knobs) at L 8K/32K (W6_L)
#    x B 1/8/32. Next calls: device_next2.sh (prefill tables), device_next3.sh (decode 128K).
set -uo pipefail
source microbench/device_env.sh
echo "== compress candidates: prewarm (${PREWARM_S:-70} s), probe (${PROBE_S:-130} s)"
timeout "${PREWARM_S:-70}" python3 -m microbench.compress_probe --prewarm --candidates \
  > "$OUT/compress_prewarm.log" 2>&1
echo "rc=$?"; tail -2 "$OUT/compress_prewarm.log"
PYTHONUNBUFFERED=1 timeout "${PROBE_S:-130}" python3 -m microbench.compress_probe --candidates \
  --skip-tests > "$OUT/compress_probe.log" 2>&1
echo "rc=$?"; grep -E "smoke|MISMATCH|mismatch|Error|row" "$OUT/compress_probe.log" | tail -40
gpu_tests "${CAND_S:-120}" gpu_tests_compress_candidate 16 tests/gpu/test_compress.py \
  -k candidate
gpu_tests "${REST_S:-0}" gpu_tests_compress_not_candidate 16 tests/gpu/test_compress.py \
  -k "not candidate"
echo "== decode candidates w6 / tp / w6tp / pl_w6tp: float64 cases (${W6T_S:-100} s), timing (${W6_S:-150} s)"
gpu_tests "${W6T_S:-100}" gpu_tests_decode_w6 8 tests/gpu/test_decode.py -k "w6 or tp"
if [ "${W6_S:-150}" -gt 0 ]; then
  PYTHONUNBUFFERED=1 timeout "${W6_S:-150}" python3 microbench/decode_probe.py --no-check \
    --no-old --no-raw --bits 4,2 --candidates w6,tp,w6tp,pl_w6tp --pairs 42 \
    --pair-knobs w6,tp --lengths ${W6_L:-8192,32768} --batches 1,8,32 \
    > "$OUT/decode_w6.log" 2>&1
  echo "rc=$?"; grep -E "^L=|Error|error" "$OUT/decode_w6.log" | head -12
fi
