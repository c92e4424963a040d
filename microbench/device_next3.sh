#!/usr/bin/env bash
# Next session's third device call (written 2026-12-08, session 9, no device lent then):
#   run(command="bash microbench/device_next3.sh", carry=[".devenv"], timeout_s=420)
# The decode candidates (w6 / tp / w6tp / pl_w6tp, docs/decode-notes.md §12) at L=32K and
# 128K: a second timing sample next to device_next.sh's 8K/32K one (the GPU is shared, +-6 %);
# the tile-pair knob on K4V8, and the L2 prefetch-size hint (l2p256 / l2p128) on K4V4 and
# K8V8 (their float64 cases first: tests/gpu/test_decode.py -k l2p).
set -uo pipefail
source microbench/device_env.sh
gpu_tests "${LT_S:-60}" gpu_tests_decode_l2p 4 tests/gpu/test_decode.py -k l2p
echo "== decode candidates, L=32K + 128K (${DT_S:-320} s)"
PYTHONUNBUFFERED=1 timeout "${DT_S:-320}" python3 microbench/decode_probe.py --no-check \
  --no-old --no-raw --bits 4,2 --candidates w6,tp,w6tp,pl_w6tp --pairs 42,48,44,88 \
  --pair-knobs w6,tp,l2p256,l2p128 --lengths 32768,131072 --batches 1,8,32 \
  > "$OUT/decode_candidates_128k.log" 2>&1
echo "rc=$?"; grep -E "^L=|Error|error" "$OUT/decode_candidates_128k.log" | head -12
