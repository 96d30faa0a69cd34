#!/usr/bin/env bash
# The map page in a real browser (scripts/test.sh runs this after cargo test): Debian's headless
# chromium, driven by playwright-core, opens `/` of a tile-proxy in front of the test upstream
# (`--images`) and checks that the raster tiles load (all 200, no failure, no console error, no
# request to another host), that the page's icon and /favicon.ico load, that a second visitor gets
# every tile HIT, that the overlay counts them, that the cache overlay (after a purge, with the
# admin token typed in) draws cached and purged tiles, and that the MapLibre GL vector view renders
# through WebGL (SwiftShader), or says why it is skipped. See tests/browser/map.test.mjs.
#
#   scripts/check-browser.sh
#
# Screenshots: target/browser/map-raster.png, map-traffic.png, map-cache.png, map-vector.png (CI artifacts).
# Installs its tools first (scripts/install-browser-deps.sh: apt chromium, npm ci of
# playwright-core) and builds the binaries unless BIN_DIR holds them and SKIP_BUILD=1.
# About 10 s once installed and built.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
BIN_DIR="${BIN_DIR:-${CARGO_TARGET_DIR:-$REPO/target}/debug}"
export BIN_DIR

log() { echo "== check-browser: $*" >&2; }

started=$SECONDS
scripts/install-browser-deps.sh
[ -x "$BIN_DIR/tile-proxy" ] && [ -x "$BIN_DIR/test-upstream" ] && [ "${SKIP_BUILD:-0}" = 1 ] ||
    cargo build --workspace --bins --locked -q
log "node tests/browser/map.test.mjs (tile-proxy and test-upstream from $BIN_DIR)"
if ! node tests/browser/map.test.mjs; then
    echo "check-browser: FAILED (screenshots, if any, in target/browser/)" >&2
    exit 1
fi
log "passed in $((SECONDS - started)) s"
