#!/usr/bin/env bash
# Installs what the test suite needs on a fresh machine: the Rust components used by the checks,
# and the programs the integration tests start themselves (redis-server on private ports,
# openssl for the TLS tests' certificates, Debian's nginx as the TLS and HTTP/2 upstream of
# tests/http2.rs, Debian's varnish for bench/traces-vs.sh --smoke). The deployment checks install
# their own tools (scripts/check-deploy.sh).
set -euo pipefail
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust stable (https://rustup.rs) first" >&2
  exit 1
fi
if command -v rustup >/dev/null 2>&1; then
  for c in rustfmt clippy; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^$c"; then
      rustup component add "$c"
    fi
  done
fi
missing=()
# redis-server also runs the Sentinels of tests/redis_cluster.rs (`redis-server FILE --sentinel`);
# redis-cli (redis-tools) joins its Redis Cluster (`redis-cli --cluster create`).
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# tests/http2.rs runs /usr/sbin/nginx (not on every user's PATH).
[ -x /usr/sbin/nginx ] || missing+=(nginx)
# bench/fleet.sh --smoke renders the nginx template with envsubst, as the official image does.
command -v envsubst >/dev/null 2>&1 || missing+=(gettext-base)
# bench/traces-vs.sh --smoke puts Varnish (Debian's varnishd) next to tile-proxy and nginx.
[ -x /usr/sbin/varnishd ] || command -v varnishd >/dev/null 2>&1 || missing+=(varnish)
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  echo "installing: ${missing[*]}" >&2
  if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"; then
    "${sudo[@]}" apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
  fi
  # The tests start their own servers; a packaged one left running is not needed.
  for service in redis-server nginx varnish; do
    if [[ " ${missing[*]} " == *" $service "* ]] && command -v systemctl >/dev/null 2>&1; then
      "${sudo[@]}" systemctl disable --now "$service" >/dev/null 2>&1 || true
    fi
  done
fi
