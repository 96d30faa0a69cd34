#!/usr/bin/env bash
# Instructions per cache hit, counted by callgrind: a figure that does not move with the load of
# a shared, noisy machine (the same binary and inputs give the same count), so two builds can be
# compared to the percent. Complements run.sh (req/s against nginx, which does move with load).
#
#   bench/instructions.sh                     # this tree's release build
#   bench/instructions.sh DIR [DIR ...]       # release builds in these cargo target dirs
#
# Environment: HITS=2000 (requests counted, after 100 misses and 100 warm-up hits), SIZE=20000
# (tile bytes), REDIS=1 (the proxy uses a private redis-server the script starts), RULES=N (N
# purge rules made after the warm-up, so every entry is older than every rule and each hit takes
# the rule check's slow path: half index rules for other indices, half bbox rules elsewhere, none
# matching), LIMIT=1 (a client rate limit on every index, high enough never to refuse: the cost
# of the check, local or with REDIS=1 in Redis), LOG=1 (tile-proxy's default logging, one access line
# per request, instead of RUST_LOG=warn; the log writer thread's instructions count too). Needs valgrind
# and curl (apt-get install valgrind curl). KEEP=DIR keeps the callgrind files (DIR/<target name>/)
# for callgrind_annotate. PROXY_ENV="NAME=value ..." adds settings (e.g. TILE_PROXY_ACCESS_LOG_SAMPLE=10).
# CEILING=1 then counts the bare actix ceiling (bench-ceiling of the first target dir, built when
# missing) on the same hits of the same tiles: plain (Content-Type only), and with
# --proxy-headers (the headers tile-proxy's hit carries, as fixed values). tile-proxy minus the
# second is the work of tile-proxy's own code per hit; the second minus the first is what its
# headers cost actix to write.
#
#   bench/instructions.sh; REDIS=1 bench/instructions.sh; REDIS=1 RULES=100 bench/instructions.sh
#   LIMIT=1 bench/instructions.sh; REDIS=1 LIMIT=1 bench/instructions.sh
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HITS=${HITS:-2000}
SIZE=${SIZE:-20000}
TILES=100
REDIS=${REDIS:-0}
RULES=${RULES:-0}
LIMIT=${LIMIT:-0}
LOG=${LOG:-0}
TOKEN=bench-admin-token-0123456789
command -v valgrind >/dev/null && command -v callgrind_control >/dev/null && command -v curl >/dev/null \
    || { echo "instructions.sh: needs valgrind and curl" >&2; exit 1; }
[ $# -gt 0 ] || { (cd "$REPO_ROOT" && cargo build --release --bins -p tile-proxy -p test-upstream >&2); set -- "$REPO_ROOT/target"; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The TILES tile URLs every measurement asks for, on 127.0.0.1:PORT.
tile_urls() { # port
    local i
    for i in $(seq 0 $((TILES - 1))); do echo "http://127.0.0.1:$1/here-proxy/mc/12/$i/7/png?indice=bench"; done
}

# Waits for URL to answer (up to 60 s: valgrind starts slowly); else shows LOG and fails.
await_url() { # url what log
    for _ in $(seq 1 120); do
        curl -sf -o /dev/null "$1" && return 0
        sleep 0.5
    done
    echo "$2 did not start under valgrind:" >&2
    cat "$3" >&2
    return 1
}

# The instructions callgrind counts in PID over HITS requests (TILES urls round robin, one
# keep-alive connection), zeroed before and dumped after into TMP/cg.out.*: sets IR and NHITS.
count_hits() { # pid tmp url...
    local pid=$1 tmp=$2 hits=()
    shift 2
    callgrind_control -z "$pid" >/dev/null 2>&1
    for _ in $(seq 1 $((HITS / TILES))); do hits+=("$@"); done
    curl -sf "${hits[@]}" >/dev/null
    callgrind_control -d "$pid" >/dev/null 2>&1
    sleep 1
    IR=$(cat "$tmp"/cg.out.* 2>/dev/null | awk '/^totals:/ {s+=$2} END {print s+0}')
    NHITS=${#hits[@]}
}

measure() {
    local target=$1 tmp up_port px_port up px b
    for b in tile-proxy test-upstream; do
        [ -x "$target/release/$b" ] || {
            echo "instructions.sh: $target/release/$b is missing (cargo build --release --bins -p tile-proxy -p test-upstream)" >&2
            return 1
        }
    done
    tmp=$(mktemp -d)
    up_port=$(free_port); px_port=$(free_port)
    local redis_env=() rd=""
    if [ "$REDIS" = 1 ]; then
        local rd_port
        rd_port=$(free_port)
        redis-server --port "$rd_port" --bind 127.0.0.1 --save "" --appendonly no >"$tmp/redis.log" 2>&1 &
        rd=$!
        redis_env=(REDIS_URL="redis://127.0.0.1:$rd_port/0")
    fi
    [ "$LIMIT" = 1 ] && redis_env+=(TILE_PROXY_DEFAULTS__RATE_LIMIT=1000000)
    [ "$LOG" = 1 ] || redis_env+=(RUST_LOG=warn)
    # shellcheck disable=SC2206 # PROXY_ENV is a list of NAME=value words on purpose
    [ -z "${PROXY_ENV:-}" ] || redis_env+=($PROXY_ENV)
    "$target/release/test-upstream" --listen "127.0.0.1:$up_port" --key k --min-size "$SIZE" --max-size "$SIZE" \
        >"$tmp/upstream.log" 2>&1 &
    up=$!
    env -i PATH="$PATH" HERE_API_KEY=k TILE_PROXY_LISTEN="127.0.0.1:$px_port" \
        TILE_PROXY_RASTER_UPSTREAM="http://127.0.0.1:$up_port" TILE_PROXY_VECTOR_UPSTREAM="http://127.0.0.1:$up_port" \
        TILE_PROXY_CACHE_DIR="$tmp/cache" TILE_PROXY_DEFAULTS__RATE_LIMIT=0 TILE_PROXY_WORKERS=1 TILE_PROXY_ADMIN_TOKEN="$TOKEN" \
        "${redis_env[@]}" \
        valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.out" "$target/release/tile-proxy" serve \
        >"$tmp/proxy.log" 2>&1 &
    px=$!
    # RETURN for a normal end; EXIT too, as `set -e` ends the script from inside (a failed curl).
    trap 'kill $px $up $rd 2>/dev/null || true; rm -rf "$tmp"' RETURN
    trap 'kill ${px:-} ${up:-} ${rd:-} 2>/dev/null || true; [ -z "${tmp:-}" ] || rm -rf "$tmp"' EXIT
    await_url "http://127.0.0.1:$px_port/live" tile-proxy "$tmp/proxy.log"
    local urls
    mapfile -t urls < <(tile_urls "$px_port")
    curl -sf "${urls[@]}" >/dev/null # misses fill the cache
    curl -sf "${urls[@]}" >/dev/null # warm-up hits
    local r body
    for r in $(seq 1 "$RULES"); do
        if [ $((r % 2)) = 0 ]; then body="{\"index\": \"other-$r\"}"; else body="{\"bbox\": [100, -50, 101, -49], \"zoom\": [0, 22]}"; fi
        curl -sf -o /dev/null -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -d "$body" \
            "http://127.0.0.1:$px_port/admin/purge"
    done
    curl -sf "${urls[@]}" >/dev/null # hits after the rules
    count_hits "$px" "$tmp" "${urls[@]}"
    if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP/$(basename "$target")" && cp "$tmp"/cg.out.* "$KEEP/$(basename "$target")/"; fi
    printf '%-40s redis=%s rules=%-4s limit=%s log=%s %12d instructions for %d hits: %d per hit\n' "$target" "$REDIS" "$RULES" "$LIMIT" "$LOG" "$IR" \
        "$NHITS" $((IR / NHITS))
}

measure_ceiling() { # target [bench-ceiling flag...]
    local target=$1 tmp port ce i
    shift
    tmp=$(mktemp -d)
    port=$(free_port)
    for i in $(seq 0 $((TILES - 1))); do echo "/here-proxy/mc/12/$i/7/png"; done >"$tmp/tiles.txt"
    valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.out" "$target/release/bench-ceiling" --tiles "$tmp/tiles.txt" \
        --listen "127.0.0.1:$port" --min-size "$SIZE" --max-size "$SIZE" --workers 1 "$@" >"$tmp/ceiling.log" 2>&1 &
    ce=$!
    trap 'kill $ce 2>/dev/null || true; rm -rf "$tmp"' RETURN
    trap 'kill ${ce:-} 2>/dev/null || true; [ -z "${tmp:-}" ] || rm -rf "$tmp"' EXIT
    await_url "http://127.0.0.1:$port/ready" bench-ceiling "$tmp/ceiling.log"
    local urls
    mapfile -t urls < <(tile_urls "$port")
    curl -sf "${urls[@]}" >/dev/null # warm-up
    count_hits "$ce" "$tmp" "${urls[@]}"
    printf '%-40s %-41s %12d instructions for %d hits: %d per hit\n' "bench-ceiling" "${*:-(plain)}" "$IR" "$NHITS" \
        $((IR / NHITS))
}

for t in "$@"; do measure "$t"; done
if [ "${CEILING:-0}" = 1 ]; then
    [ -x "$1/release/bench-ceiling" ] || (cd "$REPO_ROOT" && CARGO_TARGET_DIR="$1" cargo build --release -p bench-ceiling >&2)
    measure_ceiling "$1"
    measure_ceiling "$1" --proxy-headers
fi
