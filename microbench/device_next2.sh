#!/usr/bin/env bash
# Next session's second device call (written 2026-12-08, session 9, no device lent then):
#   run(command="bash microbench/device_next2.sh", carry=[".devenv"], timeout_s=600)
# 1. prefill step 10 (docs/prefill-sm90-notes.md): the conflict-free byte-table candidates
#    (prefill_sm90.LUT_REPLICA_CANDIDATES) - GPU tests first (bit-identical to the shipped
#    default + float64 reference), then `prefill_probe.py --replicas` (checks, timing against
#    the shipped default and FA4-bf16 on the same data);
# 2. the decode candidates again (a second sample of the timing: the GPU is shared, +-6 %),
#    L=128K this time.
# Step limits (s): RT_S 150, RP_S 220, DT_S 200; 0 skips a step.
set -uo pipefail
OUT=${OUT:-/tmp/fa4tq-out}
mkdir -p "$OUT"
source .devenv/setup.sh
export FA4TQ_GIT_SHA=${FA4TQ_GIT_SHA:-}
date -u
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv
if [ "${RT_S:-150}" -gt 0 ]; then
  echo "== prefill GPU tests -k replicas (${RT_S:-150} s)"
  timeout "${RT_S:-150}" python3 -m pytest -v -m gpu tests/gpu/test_prefill.py -k replicas \
    -n 8 -p no:cacheprovider -rfE > "$OUT/gpu_tests_prefill_replicas.log" 2>&1
  echo "rc=$? PASSED $(grep -c ' PASSED ' "$OUT/gpu_tests_prefill_replicas.log") FAILED \
$(grep -c ' FAILED ' "$OUT/gpu_tests_prefill_replicas.log")"
  grep -E ' FAILED |^FAILED|^ERROR' "$OUT/gpu_tests_prefill_replicas.log" | head -10
fi
if [ "${RP_S:-220}" -gt 0 ]; then
  echo "== prefill_probe.py --replicas (${RP_S:-220} s)"
  PYTHONUNBUFFERED=1 timeout "${RP_S:-220}" python3 microbench/prefill_probe.py --replicas \
    > "$OUT/prefill_replicas.log" 2>&1
  echo "rc=$?"; grep -E "^(CHECK|BENCH|ERROR|SKIP)" "$OUT/prefill_replicas.log" | cut -c1-260
fi
if [ "${DT_S:-200}" -gt 0 ]; then
  echo "== decode candidates, L=128K + 32K (${DT_S:-200} s)"
  PYTHONUNBUFFERED=1 timeout "${DT_S:-200}" python3 microbench/decode_probe.py --no-check \
    --no-old --no-raw --bits 4,2 --candidates w6,tp,w6tp,pl_w6tp --pairs 42 \
    --pair-knobs w6,tp,w6tp --lengths 32768,131072 --batches 1,8,32 \
    > "$OUT/decode_candidates_128k.log" 2>&1
  echo "rc=$?"; grep -E "^L=|Error|error" "$OUT/decode_candidates_128k.log" | head -12
fi
