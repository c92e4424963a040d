#!/usr/bin/env bash
# Session 8's first device call (written 2026-12-07, session 7; matrix added in session 8):
#   run(command="bash microbench/device_next.sh", carry=[".devenv"], timeout_s=600)
# Session 7 ran every decode GPU test on the new defaults (83/83) and 56 of the 82 Sm90 prefill
# tests after pack_gqa became the default; its device time ran out before:
# 1. the rest of tests/gpu/test_prefill.py (cluster_share / direct_loads / explicit pack_gqa,
#    test_default_path_packs_short_chunks) plus, new in session 8, the issue's correctness
#    matrix (test_matrix: nine pairs x D 64/128 x GQA 1/4/8 x full/causal/window, lengths up
#    to 4097, block sizes 16/128); the decode matrix cases (27: nine pairs x D 64/128/256,
#    lengths up to 128K); tests/gpu/test_prefill_sm80.py (with the same matrix);
# 2. the shipped decode at L=32K (8K and 128K were timed) with the previous default (nopl) as
#    A/B, and the two-column-tile / D=256 / K2V2 q_len>2 register bounds (never timed: a
#    q_len 4 / G 16 row against the same config without the bound).
set -uo pipefail
OUT=${OUT:-/tmp/fa4tq-out}
mkdir -p "$OUT"
source .devenv/setup.sh
export FA4TQ_GIT_SHA=${FA4TQ_GIT_SHA:-}
date -u
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv
for spec in "prefill:${PRE_S:-230}" "decode:${DEC_S:-80}" "prefill_sm80:${SM80_S:-150}" \
            "compress:${COMP_S:-0}"; do
  f=${spec%%:*}; t=${spec##*:}
  [ "$t" -gt 0 ] || continue
  echo "== GPU tests: test_$f.py (${t} s)"
  sel=(); [ "$f" = decode ] && sel=(-k "${DEC_K:-matrix}")  # session 7 ran the rest: 83/83
  timeout "$t" python3 -m pytest -v -m gpu "tests/gpu/test_$f.py" "${sel[@]}" -n 16 \
    -p no:cacheprovider -rfE > "$OUT/gpu_tests_$f.log" 2>&1
  echo "rc=$? PASSED $(grep -c ' PASSED ' "$OUT/gpu_tests_$f.log") FAILED $(grep -c ' FAILED ' \
    "$OUT/gpu_tests_$f.log") SKIPPED $(grep -c ' SKIPPED ' "$OUT/gpu_tests_$f.log")"
  grep -E ' FAILED |^FAILED|^ERROR' "$OUT/gpu_tests_$f.log" | head -20; tail -2 "$OUT/gpu_tests_$f.log"
done
echo "== decode shipped, L=32K (A/B: nopl = the pair tables, the default before 2026-12-07)"
PYTHONUNBUFFERED=1 timeout ${DECODE_S:-150} python3 microbench/decode_probe.py --no-check \
  --no-old --no-raw --bits 4,2 --candidates nopl,pl_w4tb --pairs 88,42,24,48,84 \
  --pair-knobs nopl --lengths 32768 --batches 1,8,32 > "$OUT/decode_32k.log" 2>&1
echo "rc=$?"; grep -E "^L=|Error|error" "$OUT/decode_32k.log" | head -10
echo "== decode, register-bounded geometries (q_len 4, G 16)"
PYTHONUNBUFFERED=1 timeout ${BOUND_S:-60} python3 -m microbench decode --kv 4,4 2,2 \
  --batch 8 --seqlens 32768 --q-len 4 --hq 32 --hkv 2 --decode-config min_ctas_per_sm=0 \
  > "$OUT/decode_bound.log" 2>&1
echo "rc=$?"; tail -8 "$OUT/decode_bound.log"
