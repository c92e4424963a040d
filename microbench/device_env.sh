# Sourced by the microbench/device_next*.sh recipes (bash): the device bundle, $OUT, the
# GPU's clocks, and gpu_tests - one pytest step with a time limit and a pass/fail summary.
OUT=${OUT:-/tmp/fa4tq-out}
mkdir -p "$OUT"
source .devenv/setup.sh
export FA4TQ_GIT_SHA=${FA4TQ_GIT_SHA:-}
date -u
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv

# gpu_tests LIMIT_S LOG_NAME WORKERS TEST_FILE [pytest args...]: skipped when LIMIT_S is 0
gpu_tests() {
  local limit=$1 log="$OUT/$2.log" workers=$3 file=$4
  shift 4
  [ "$limit" -gt 0 ] || return 0
  echo "== GPU tests: $file $* ($limit s)"
  timeout "$limit" python3 -m pytest -v -m gpu "$file" "$@" -n "$workers" \
    -p no:cacheprovider -rfE > "$log" 2>&1
  echo "rc=$? PASSED $(grep -c ' PASSED ' "$log") FAILED $(grep -c ' FAILED ' "$log") SKIPPED \
$(grep -c ' SKIPPED ' "$log")"
  grep -E ' FAILED |^FAILED|^ERROR' "$log" | head -20
  tail -2 "$log"
}
