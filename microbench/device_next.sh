#!/usr/bin/env bash
# Next session's first device call (written 2026-11-23 without device time left): validates
# the opt-in variants that only ran on the CPU, then measures them against the shipped
# defaults and the baselines in the same call.
#   run(command="FA4TQ_GIT_SHA=$(git rev-parse --short HEAD) bash microbench/device_next.sh",
#       carry=[".devenv"], timeout_s=600)
# 1. every GPU test on main (incl. the cluster_share=2 prefill tests and the compress
#    candidate tests, never run yet);
# 2. prefill: cluster_share=2 vs producer_wgs 1/2 vs FA4-bf16 (docs/prefill-sm90-notes.md step 5);
# 3. compress: lut-pf / lut-s4 / lut-pf-s4 / lut-wide-s4 vs lut / lut-wide / copy
#    (docs/compress-notes.md, H7 section).
# The decode candidates live on branch decode-speed-candidates (docs/decode-notes.md §7):
# measure them in a second call from that branch.
set -uo pipefail
OUT=${OUT:-/tmp/fa4tq-out}
mkdir -p "$OUT"
source .devenv/setup.sh
export FA4TQ_GIT_SHA=${FA4TQ_GIT_SHA:-}
date -u
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv
echo "== GPU tests"
timeout ${TESTS_S:-300} python3 -m pytest -q -m gpu tests/gpu -n 16 -p no:cacheprovider -rfE \
  > "$OUT/gpu_tests.log" 2>&1
echo "rc=$?"; tail -25 "$OUT/gpu_tests.log"
echo "== prefill cluster_share probe"
timeout ${PREFILL_S:-130} python3 microbench/prefill_probe.py --cluster-share > "$OUT/prefill_cs.log" 2>&1
echo "rc=$?"; tail -30 "$OUT/prefill_cs.log"
echo "== compress candidates"
timeout ${COMPRESS_S:-110} python3 -m microbench.compress_probe --candidates > "$OUT/compress_cand.log" 2>&1
echo "rc=$?"; tail -30 "$OUT/compress_cand.log"
