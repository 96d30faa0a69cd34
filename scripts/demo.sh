#!/usr/bin/env bash
# Runs tile-proxy in front of the project's HERE-like test upstream: no HERE key, no internet.
# Then try:  curl -i 'http://127.0.0.1:8080/here-proxy/mc/5/15/13/png?indice=demo&size=512'
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins
./target/release/test-upstream --listen 127.0.0.1:9090 --key demo-key --min-size 5000 --max-size 60000 &
up=$!
trap 'kill $up 2>/dev/null || true' EXIT
HERE_API_KEY=demo-key \
TILE_PROXY_LISTEN="${TILE_PROXY_LISTEN:-127.0.0.1:8080}" \
TILE_PROXY_RASTER_UPSTREAM=http://127.0.0.1:9090 \
TILE_PROXY_VECTOR_UPSTREAM=http://127.0.0.1:9090 \
TILE_PROXY_LOG_FORMAT="${TILE_PROXY_LOG_FORMAT:-text}" \
  ./target/release/tile-proxy serve
