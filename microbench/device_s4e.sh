#!/usr/bin/env bash
# Session 4, fifth device call: the smem ring at other geometries (3 stages, 8 warps x 1 CTA,
# 4 warps x 1 CTA) for K4V4 and the 8-bit pairs (which have no register prefetch).
set -uo pipefail
OUT=${OUT:-/tmp/fa4tq-out}
mkdir -p "$OUT"
source .devenv/setup.sh
date -u
timeout ${DECODE_S:-400} python3 microbench/decode_probe.py --no-check --no-old --no-raw \
  --bits "" --pairs 88,48,84,28,82,44 --pair-knobs ring_s3,ring_w8c1,ring_w8c1_s3,ring_w4c1 \
  --lengths 131072,8192 --batches 32,8,1 > "$OUT/decode_ring.log" 2>&1
echo "rc=$?"; grep "^L=\|    K" "$OUT/decode_ring.log" | tail -40
date -u
