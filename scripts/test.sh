#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (`.ci/run` calls this script).
# Formatting, lints, every unit and integration test of both crates, the map page in headless
# Chromium (scripts/check-browser.sh), then the deployment checks (scripts/check-deploy.sh) and the
# short fleet simulation (bench/fleet.sh --smoke), the eviction traces' check (bench/trace-check.sh) and
# the eviction policies' smoke matrix (bench/eviction.sh --smoke) and the side-by-side smoke
# (bench/traces-vs.sh --smoke: tile-proxy, nginx, Varnish on the same traces).
# The integration tests start their own servers on 127.0.0.1 (the proxy, the HERE-like test
# upstream, private redis-server instances) and use temporary folders.
#
# Every step runs even when an earlier one failed. The last line is always
# `all tests: N passed, N failed` (CI reads it; N counts the cargo tests), the line before it
# names the steps that failed, and the exit status is non-zero when any step failed: fmt,
# clippy, a test, the browser check or the deployment checks.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

failed_steps=()
# step NAME COMMAND...: runs it, remembers NAME if it failed.
step() {
    local name=$1
    shift
    echo "== $name"
    if ! "$@"; then
        echo "== $name: FAILED" >&2
        failed_steps+=("$name")
    fi
}

step "install-deps" scripts/install-deps.sh
step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# --no-fail-fast: a failing test binary does not skip the ones after it (the counts cover all).
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log"
test_status=${PIPESTATUS[0]}
passed=$(grep -E '^test result:' "$log" | grep -oE '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -E '^test result:' "$log" | grep -oE '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
# A build error runs no test at all: still a failure.
if [ "$test_status" -ne 0 ] || [ "$failed" -ne 0 ]; then
    failed_steps+=("cargo test")
fi

step "browser test (map page)" scripts/check-browser.sh
step "deployment checks" scripts/check-deploy.sh
# The fleet simulation, short: nginx + 2-4 pods + a Redis Cluster, scale, SIGKILL, failover.
step "fleet simulation (smoke)" bench/fleet.sh --smoke
# Eviction traces and the offline optimum (#23): deterministic, Belady's MIN self-checked.
step "traces and Belady (smoke)" bench/trace-check.sh
# Memory-tier eviction policies replayed through tile-proxy (#23): plumbing, and no hit ratio above Belady's.
step "eviction policies (smoke)" bench/eviction.sh --smoke
# tile-proxy, nginx proxy_cache and Varnish on the same traces (#23): every answer 200 with the trace's size.
step "side by side on traces (smoke)" bench/traces-vs.sh --smoke

if [ "${#failed_steps[@]}" -gt 0 ]; then
    echo "failed steps: $(printf '%s; ' "${failed_steps[@]}" | sed 's/; $//')"
else
    echo "failed steps: none"
fi
echo "all tests: ${passed} passed, ${failed} failed"
[ "${#failed_steps[@]}" -eq 0 ]
