#!/usr/bin/env bash
# Session 5 device call (one run, <= 600 s):
#   run(command="bash microbench/device_s5.sh", carry=[".devenv"], timeout_s=600)
# 1. prefill_probe.py --direct: checks + timing of the staging-free producer (step 7) vs the
#    shipped default vs FA4-bf16 (same data, same bench call);
# 2. every prefill GPU test (sm90 incl. the new direct_loads tests, sm80): the producers'
#    shared code was refactored (_decode_chunks, paged_cache_row).
set -uo pipefail
OUT=${OUT:-/tmp/fa4tq-out}
mkdir -p "$OUT"
source .devenv/setup.sh
date -u
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv
echo "== probe --direct"
PYTHONUNBUFFERED=1 timeout ${PROBE_S:-220} python3 microbench/prefill_probe.py --direct \
  > "$OUT/direct.log" 2>&1
echo "rc=$?"; grep -E "CHECK|BENCH|ERROR|SKIP|total" "$OUT/direct.log"
echo "== prefill GPU tests"
timeout ${TESTS_S:-120} python3 -m pytest -q -m gpu tests/gpu/test_prefill.py \
  tests/gpu/test_prefill_sm80.py -n 16 -p no:cacheprovider -rfE \
  -k "${TESTS_K:-direct or all_bit_widths or cluster_share_bit}" > "$OUT/gpu_tests.log" 2>&1
echo "rc=$?"; tail -15 "$OUT/gpu_tests.log"
