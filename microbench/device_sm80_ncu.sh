#!/usr/bin/env bash
# Device command for the first GPU run of the portable prefill (issue 6) plus the Nsight
# Compute summaries issue 7 still lacks:
#   run(command="bash microbench/device_sm80_ncu.sh", carry=[".devenv"], timeout_s=600)
# Results in $OUT: sm80_tests.log, prefill_tests.log, sm80_probe.log (+ its CSV), ncu-*.md.
set -uo pipefail
OUT=${OUT:-/tmp/fa4tq-out}
mkdir -p "$OUT"
source .devenv/setup.sh
export FA4TQ_GIT_SHA=${FA4TQ_GIT_SHA:-}
date -u
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu --format=csv
echo "== Sm80 GPU tests"
timeout ${SM80_TESTS_S:-150} python3 -m pytest -q -m gpu tests/gpu/test_prefill_sm80.py -n 8 \
  -p no:cacheprovider -x -q > "$OUT/sm80_tests.log" 2>&1
echo "rc=$?"; tail -30 "$OUT/sm80_tests.log"
echo "== Sm80 probe"
timeout ${SM80_PROBE_S:-130} python3 microbench/prefill_sm80_probe.py --quick > "$OUT/sm80_probe.log" 2>&1
echo "rc=$?"; tail -40 "$OUT/sm80_probe.log"
echo "== ncu"
for spec in "decode 4,4" "decode 2,2" "compress 4,4" "compress 2,2" "prefill 2,2"; do
  set -- $spec
  timeout ${NCU_S:-45} python3 -m microbench ncu "$1" --kv "$2" --out-dir /tmp/fa4tq-ncu 2>&1 | tail -4
done
for f in /tmp/fa4tq-ncu/*.md; do [ -f "$f" ] && cp "$f" "$OUT/ncu-$(basename "$f")"; done
if [ -n "${PREFILL_TESTS_S:-}" ]; then
  echo "== Sm90 prefill GPU tests"
  timeout "$PREFILL_TESTS_S" python3 -m pytest -q -m gpu tests/gpu/test_prefill.py -n 8 \
    -p no:cacheprovider > "$OUT/prefill_tests.log" 2>&1
  echo "rc=$?"; tail -8 "$OUT/prefill_tests.log"
fi
