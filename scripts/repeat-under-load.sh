#!/usr/bin/env bash
# Runs one integration test file many times in a row while every core is kept busy, and stops at
# the first failure: the check a test that touches Redis, timers or several processes must pass
# before it is called done.
#
#   scripts/repeat-under-load.sh redis 30        # cargo test -p tile-proxy --test redis, 30 times
#   SPINNERS=4 scripts/repeat-under-load.sh freshness 30
#
# SPINNERS (default: the number of cores) busy loops run beside the tests, at the tests' own
# priority; they are killed when the script ends, however it ends. Each run is bounded (10 min).
# Prints one line per run and `N passed, N failed` (runs, not tests) at the end; exits non-zero
# on a failed run, leaving its output in the file the line names.
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:?usage: repeat-under-load.sh TEST_FILE RUNS}
runs=${2:-30}
spinners=${SPINNERS:-$(nproc)}

cargo test -p tile-proxy --test "$name" --no-run -q 2>/dev/null
out=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
for _ in $(seq "$spinners"); do
    timeout 3600 sh -c 'while :; do :; done' &
    pids+=($!)
done

passed=0
failed=0
for i in $(seq "$runs"); do
    start=$(date +%s.%N)
    if timeout 600 cargo test -p tile-proxy --test "$name" -q >"$out/$i.log" 2>&1; then
        passed=$((passed + 1))
        verdict=ok
    else
        failed=$((failed + 1))
        verdict="FAILED (output: $out/$i.log)"
    fi
    printf 'run %2d: %-6s %5.1f s  load %s\n' "$i" "$verdict" "$(echo "$(date +%s.%N) - $start" | bc)" \
        "$(cut -d' ' -f1 /proc/loadavg)"
    [ "$failed" -eq 0 ] || break
done
echo "$name under load ($spinners spinners): $passed passed, $failed failed"
[ "$failed" -eq 0 ]
