#!/usr/bin/env bash
# Next session's third device call (written 2026-12-08, session 9, no device lent then):
#   run(command="bash microbench/device_next3.sh", carry=[".devenv"], timeout_s=400)
# The decode candidates (w6 / tp / w6tp / pl_w6tp, docs/decode-notes.md §12) at L=32K and
# 128K: a second timing sample next to device_next.sh's 8K/32K one (the GPU is shared, +-6 %).
set -uo pipefail
source microbench/device_env.sh
echo "== decode candidates, L=32K + 128K (${DT_S:-300} s)"
PYTHONUNBUFFERED=1 timeout "${DT_S:-300}" python3 microbench/decode_probe.py --no-check \
  --no-old --no-raw --bits 4,2 --candidates w6,tp,w6tp,pl_w6tp --pairs 42,48 \
  --pair-knobs w6,tp --lengths 32768,131072 --batches 1,8,32 \
  > "$OUT/decode_candidates_128k.log" 2>&1
echo "rc=$?"; grep -E "^L=|Error|error" "$OUT/decode_candidates_128k.log" | head -12
