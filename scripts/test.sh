#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (`.ci/run` calls this script).
# Formatting, lints, every unit and integration test of both crates, the map page in headless
# Chromium (scripts/check-browser.sh), then the deployment checks (scripts/check-deploy.sh).
# The integration tests start their own servers on 127.0.0.1 (the proxy, the HERE-like test
# upstream, private redis-server instances) and use temporary folders.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
passed=$(grep -E '^test result:' "$log" | grep -oE '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -E '^test result:' "$log" | grep -oE '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
echo "all tests: ${passed} passed, ${failed} failed"
echo "== browser test (map page)"
scripts/check-browser.sh
echo "== deployment checks"
scripts/check-deploy.sh
