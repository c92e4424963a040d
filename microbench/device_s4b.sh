#!/usr/bin/env bash
# Session 4, second device call: decode knob sets for every prefetching pair + K8V8 tile_bases,
# each checked against the shipped kernel on the same data, then timed (Hq32 Hkv8 D128 bs16).
set -uo pipefail
OUT=${OUT:-/tmp/fa4tq-out}
mkdir -p "$OUT"
source .devenv/setup.sh
date -u
timeout ${DECODE_S:-420} python3 microbench/decode_probe.py --no-check --no-old --no-raw \
  --bits "" --pairs 44,22,42,24,88 --pair-knobs btla,early_btla,ring_early,ring_early_tb,tb \
  --lengths 131072,32768,8192 --batches 32,8,1 > "$OUT/decode_pairs.log" 2>&1
echo "rc=$?"; grep -v Warning "$OUT/decode_pairs.log" | grep -v "exe_args" | tail -40
date -u
