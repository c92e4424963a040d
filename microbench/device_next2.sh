#!/usr/bin/env bash
# Next session's second device call (written 2026-12-08, session 9, no device lent then):
#   run(command="bash microbench/device_next2.sh", carry=[".devenv"], timeout_s=600)
# 1. prefill step 10 (docs/prefill-sm90-notes.md): the conflict-free byte-table candidates
#    (prefill_candidates.SM90_LUT_CANDIDATES) - GPU tests first (bit-identical to the shipped
#    default + float64 reference), then `prefill_probe.py --replicas` (checks, timing against
#    the shipped default and FA4-bf16 on the same data);
# 2. the Sm80-class prefill's PRMT-addressed tables (prefill_candidates.SM80_PRMT_LUT_CANDIDATES): GPU
#    tests (bit-identical to the shared-memory-LUT build + reference), then
#    `prefill_sm80_probe.py --prmt` (against the shipped register LUT, same data).
# Step limits (s): RT_S 130, RP_S 180 (the probe stops starting steps after 165 s), ST_S 90, SP_S 120; 0 skips a step.
# (microbench/device_next3.sh: the decode candidates at L=128K, a second timing sample.)
set -uo pipefail
source microbench/device_env.sh
gpu_tests "${RT_S:-130}" gpu_tests_prefill_replicas 8 tests/gpu/test_prefill.py -k replicas
if [ "${RP_S:-180}" -gt 0 ]; then
  echo "== prefill_probe.py --replicas (${RP_S:-180} s)"
  PYTHONUNBUFFERED=1 timeout "${RP_S:-180}" python3 microbench/prefill_probe.py --replicas \
    > "$OUT/prefill_replicas.log" 2>&1
  echo "rc=$?"; grep -E "^(CHECK|BENCH|ERROR|SKIP)" "$OUT/prefill_replicas.log" | cut -c1-260
fi
FA4TQ_UNVALIDATED_SM80=1 gpu_tests "${ST_S:-90}" gpu_tests_prefill_sm80_prmt 4 \
  tests/gpu/test_prefill_sm80.py -k prmt
if [ "${SP_S:-120}" -gt 0 ]; then
  echo "== prefill_sm80_probe.py --prmt (${SP_S:-120} s)"
  PYTHONUNBUFFERED=1 timeout "${SP_S:-120}" python3 microbench/prefill_sm80_probe.py --prmt \
    > "$OUT/prefill_sm80_prmt.log" 2>&1
  echo "rc=$?"; grep -E "^(CHECK|BENCH|ERROR)" "$OUT/prefill_sm80_prmt.log" | cut -c1-260
fi
