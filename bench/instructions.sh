#!/usr/bin/env bash
# Instructions per cache hit, counted by callgrind: a figure that does not move with the load of
# a shared, noisy machine (the same binary and inputs give the same count), so two builds can be
# compared to the percent. Complements run.sh (req/s against nginx, which does move with load).
#
#   bench/instructions.sh                     # this tree's release build
#   bench/instructions.sh DIR [DIR ...]       # release builds in these cargo target dirs
#
# Environment: HITS=2000 (requests counted, after 100 misses and 100 warm-up hits), SIZE=20000
# (tile bytes). Needs valgrind and curl (apt-get install valgrind curl).
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HITS=${HITS:-2000}
SIZE=${SIZE:-20000}
TILES=100
command -v valgrind >/dev/null && command -v callgrind_control >/dev/null && command -v curl >/dev/null \
    || { echo "instructions.sh: needs valgrind and curl" >&2; exit 1; }
[ $# -gt 0 ] || { (cd "$REPO_ROOT" && cargo build --release --bins -p tile-proxy -p test-upstream >&2); set -- "$REPO_ROOT/target"; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

measure() {
    local target=$1 tmp up_port px_port up px
    tmp=$(mktemp -d)
    up_port=$(free_port); px_port=$(free_port)
    "$target/release/test-upstream" --listen "127.0.0.1:$up_port" --key k --min-size "$SIZE" --max-size "$SIZE" \
        >"$tmp/upstream.log" 2>&1 &
    up=$!
    env -i PATH="$PATH" HERE_API_KEY=k TILE_PROXY_LISTEN="127.0.0.1:$px_port" \
        TILE_PROXY_RASTER_UPSTREAM="http://127.0.0.1:$up_port" TILE_PROXY_VECTOR_UPSTREAM="http://127.0.0.1:$up_port" \
        TILE_PROXY_CACHE_DIR="$tmp/cache" TILE_PROXY_WORKERS=1 RUST_LOG=warn \
        valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.out" "$target/release/tile-proxy" serve \
        >"$tmp/proxy.log" 2>&1 &
    px=$!
    trap 'kill $px $up 2>/dev/null || true; rm -rf "$tmp"' RETURN
    local ok=0
    for _ in $(seq 1 120); do
        if curl -sf -o /dev/null "http://127.0.0.1:$px_port/live"; then ok=1; break; fi
        sleep 0.5
    done
    [ $ok = 1 ] || { echo "tile-proxy did not start under valgrind:" >&2; cat "$tmp/proxy.log" >&2; return 1; }
    local urls=() hits=()
    for i in $(seq 0 $((TILES - 1))); do urls+=("http://127.0.0.1:$px_port/here-proxy/mc/12/$i/7/png?indice=bench"); done
    curl -sf "${urls[@]}" >/dev/null # misses fill the cache
    curl -sf "${urls[@]}" >/dev/null # warm-up hits
    callgrind_control -z "$px" >/dev/null 2>&1
    for _ in $(seq 1 $((HITS / TILES))); do hits+=("${urls[@]}"); done
    curl -sf "${hits[@]}" >/dev/null # one keep-alive connection
    callgrind_control -d "$px" >/dev/null 2>&1
    sleep 1
    local ir
    ir=$(cat "$tmp"/cg.out.* 2>/dev/null | awk '/^(summary|totals):/ {s+=$2} END {print s+0}')
    printf '%-40s %12d instructions for %d hits: %d per hit\n' "$target" "$ir" "${#hits[@]}" $((ir / ${#hits[@]}))
}

for t in "$@"; do measure "$t"; done
