#!/usr/bin/env bash
# Latency over expiry boundaries: a small hot set of tiles with a short TTL under constant load,
# served by two tile-proxy instances of the same binary, measured in turn on the same core:
#   xfetch   early_refresh_beta = BETA (1.0): a hit just before expiry refreshes the tile in the
#            background (XFetch), clients keep getting HIT
#   plain    early_refresh_beta = 0: the tile expires, the next requests wait for the upstream
# The upstream answers every tile after LATENCY_MS, so a client that waits for it shows in p99.
# Both instances have no stale-while-revalidate (an expired tile is a MISS). Per instance the
# script reports p50/p99/max latency, the answers by X-Cache (from the proxy's own
# tile_proxy_requests_total) and the upstream requests made while measured. See bench/README.md.
#
#   bench/expiry.sh            # full run: 20 tiles, TTL 3 s, 15 s per instance
#   bench/expiry.sh --smoke    # quick check (TTL 2 s, 4 s per instance; < 30 s with built binaries)
#
# Environment (all optional):
#   DURATION=15      seconds of each measured wrk run (several TTLs: several expiry boundaries)
#   ROUNDS=1         rounds; each round measures xfetch then plain
#   TTL=3            seconds; the index TTL of both instances
#   TILES=20         distinct hot tiles (10..200)
#   LATENCY_MS=100   upstream delay before every tile answer's head
#   BETA=1.0         early_refresh_beta of the xfetch instance
#   CONNECTIONS=16   wrk connections;  THREADS=1: wrk threads
#   SERVER_CPU=0     core both tile-proxy instances are pinned to
#   LOAD_CPU=1       core for wrk, curl and the test upstream
#   SKIP_BUILD=1     do not run cargo build
#   TARGET_DIR=DIR   cargo target dir to build into / take binaries from (default: REPO/target)
#   KEEP_TMP=1       keep the temp dir (logs, raw wrk output) after the run
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$BENCH_DIR/.." && pwd)"

# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

smoke_flag expiry.sh "$@"
if [ "$SMOKE" = 1 ]; then
    DURATION="${DURATION:-4}" TTL="${TTL:-2}"
fi
DURATION="${DURATION:-15}"
ROUNDS="${ROUNDS:-1}"
TTL="${TTL:-3}"
TILES="${TILES:-20}"
LATENCY_MS="${LATENCY_MS:-100}"
BETA="${BETA:-1.0}"
CONNECTIONS="${CONNECTIONS:-16}"
THREADS="${THREADS:-1}"
common_defaults
for v in DURATION ROUNDS TTL TILES LATENCY_MS CONNECTIONS THREADS SERVER_CPU LOAD_CPU; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a whole number (got '${!v}')"
done
[[ "$BETA" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "BETA must be a number like 1.0 (got '$BETA')"
[ "$DURATION" -ge 1 ] && [ "$DURATION" -le 600 ] || die "DURATION must be 1..600"
[ "$ROUNDS" -ge 1 ] && [ "$ROUNDS" -le 20 ] || die "ROUNDS must be 1..20"
[ "$TTL" -ge 1 ] && [ "$TTL" -le 600 ] || die "TTL must be 1..600"
[ "$TILES" -ge 10 ] && [ "$TILES" -le 200 ] || die "TILES must be 10..200"
[ "$LATENCY_MS" -le 10000 ] || die "LATENCY_MS must be 0..10000"
[ "$CONNECTIONS" -ge "$THREADS" ] && [ "$THREADS" -ge 1 ] || die "need 1 <= THREADS <= CONNECTIONS"

# ---- 1. tools and build ------------------------------------------------------------------------
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
command -v taskset >/dev/null || missing+=(util-linux)
command -v timeout >/dev/null || missing+=(coreutils)
[ "${#missing[@]}" -eq 0 ] || apt_install "${missing[@]}"
ncpu="$(nproc)"
[ "$SERVER_CPU" -lt "$ncpu" ] && [ "$LOAD_CPU" -lt "$ncpu" ] || die "SERVER_CPU/LOAD_CPU must be < nproc ($ncpu)"
build_binaries

LOG_FILES=(upstream.log proxy-xfetch.log proxy-plain.log)
bench_tmp
TILES_FILE="$TMP/tiles.txt"
make_tiles
# tiles.lua's requests plus p99.9 and p99.99 (a stall at each expiry is a few hundred requests
# of a few hundred thousand: wrk's closed loop shows it in the far tail and the maximum).
WRK_SCRIPT="$BENCH_DIR/expiry.lua"
TILES_LUA="$BENCH_DIR/tiles.lua"
export TILES_LUA

# ---- 2. servers ----------------------------------------------------------------------------------
start_upstream "$KEY" 5000 20000
curl -sf --max-time 5 -X POST -o /dev/null "$UPSTREAM_URL/__latency?ms=$LATENCY_MS" ||
    die "cannot set the upstream latency"

declare -A URL PID
start_proxy() { # name beta
    local name="$1" beta="$2" port
    port="$(free_port "${UPSTREAM_PORT}")"
    URL[$name]="http://127.0.0.1:$port"
    log "starting tile-proxy '$name' on ${URL[$name]} (core $SERVER_CPU, 1 worker, ttl ${TTL}s, early_refresh_beta $beta)"
    env HERE_API_KEY="$KEY" \
        TILE_PROXY_LISTEN="127.0.0.1:$port" \
        TILE_PROXY_RASTER_UPSTREAM="$UPSTREAM_URL" \
        TILE_PROXY_VECTOR_UPSTREAM="$UPSTREAM_URL" \
        TILE_PROXY_CACHE_DIR="$TMP/cache-$name" \
        TILE_PROXY_MEMORY_CACHE=64MiB \
        TILE_PROXY_DISK_CACHE=0 \
        TILE_PROXY_DEFAULTS__RATE_LIMIT=0 TILE_PROXY_WORKERS=1 \
        TILE_PROXY_DEFAULTS__TTL="${TTL}s" \
        TILE_PROXY_DEFAULTS__STALE_WHILE_REVALIDATE=0s \
        TILE_PROXY_DEFAULTS__EARLY_REFRESH_BETA="$beta" \
        RUST_LOG=warn \
        taskset -c "$SERVER_CPU" "$PROXY_BIN" >"$TMP/proxy-$name.log" 2>&1 &
    PID[$name]=$!
    PIDS+=("${PID[$name]}")
    wait_ready "tile-proxy $name" "${PID[$name]}" "${URL[$name]}/ready"
}
start_proxy xfetch "$BETA"
start_proxy plain 0

# tile_proxy_requests_total by cache result, summed over indices: "hit miss coalesced stale other"
answers() { # base-url
    curl -sf --max-time 5 "$1/metrics" | awk '
        /^tile_proxy_requests_total\{/ {
            c = $0; sub(/.*cache="/, "", c); sub(/".*/, "", c)
            n[c] += $NF
        }
        END { printf "%d %d %d %d %d\n", n["hit"], n["miss"], n["coalesced"], n["stale"],
              n["error"] + n["invalid"] + n["negative_hit"] }'
}
# Tile answers the proxy itself took longer than 50 ms over (its request duration histogram):
# unlike wrk's percentiles, hardly moved by other processes competing for the cores.
slow_answers() { # base-url
    curl -sf --max-time 5 "$1/metrics" | awk '
        /^tile_proxy_http_requests_duration_seconds_count\{/ && /tiles_or_unknown/ { n += $NF }
        /^tile_proxy_http_requests_duration_seconds_bucket\{/ && /tiles_or_unknown/ && /le="0.05"/ { f += $NF }
        END { print n - f }'
}
early_refreshes() { # base-url
    curl -sf --max-time 5 "$1/metrics" | awk '/^tile_proxy_early_refresh_total[{ ]/ { n += $NF } END { print n + 0 }'
}

# ---- 3. warm (with the upstream latency, so each entry's fetch time is the real one) --------
for name in xfetch plain; do
    log "warming $name: $TILES tiles"
    warm "$name" "${URL[$name]}"
done

# ---- 4. measure ----------------------------------------------------------------------------------
declare -A RES
for r in $(seq 1 "$ROUNDS"); do
    for name in xfetch plain; do
        # The tiles expired while the other instance was measured: fetch them again first
        # (unmeasured), so each run starts from fresh tiles, as after the first warm-up.
        [ "$r" = 1 ] && [ "$name" = xfetch ] || warm "$name-r$r" "${URL[$name]}"
        log "round $r/$ROUNDS: $name ${DURATION}s (about $((DURATION / TTL)) expiry boundaries per tile)"
        read -r h0 m0 c0 s0 o0 <<<"$(answers "${URL[$name]}")"
        e0="$(early_refreshes "${URL[$name]}")"
        w0="$(slow_answers "${URL[$name]}")"
        u0="$(upstream_total)"
        out="$TMP/wrk-r$r-$name.txt"
        read -r rps p50 p99 _ reqs errs _ < <(run_wrk "$name" "${URL[$name]}" "$DURATION" "$out" "${PID[$name]}")
        [ -n "${rps:-}" ] || die "$name run $r failed"
        # A refresh may still be running when wrk stops: let it end before counting (bounded).
        sleep 1
        u1="$(upstream_total)"
        e1="$(early_refreshes "${URL[$name]}")"
        w1="$(slow_answers "${URL[$name]}")"
        read -r h1 m1 c1 s1 o1 <<<"$(answers "${URL[$name]}")"
        max="$(to_ms "$(awk '$1 == "Latency" { print $4; exit }' "$out")")"
        p999="$(to_ms "$(awk '$1 == "tail" && $2 == "99.9%" { print $3 }' "$out")")"
        p9999="$(to_ms "$(awk '$1 == "tail" && $2 == "99.99%" { print $3 }' "$out")")"
        RES[$name,$r]="$rps $p50 $p99 $p999 $p9999 $max $reqs $errs $((h1 - h0)) $((m1 - m0 + c1 - c0)) $((s1 - s0)) $((o1 - o0)) $((u1 - u0)) $((e1 - e0)) $((w1 - w0))"
    done
done

# ---- 5. report ----------------------------------------------------------------------------------
echo
echo "Expiry under traffic: $TILES hot tiles, ttl ${TTL}s, upstream latency ${LATENCY_MS}ms, ${DURATION}s per run,"
echo "wrk -t$THREADS -c$CONNECTIONS on core $LOAD_CPU, each tile-proxy (1 worker) on core $SERVER_CPU"
echo
printf '%-6s %-7s %8s %7s %7s %8s %8s %8s %8s %8s %9s %6s %6s %8s %6s %8s\n' \
    round server req/s p50_ms p99_ms p99.9_ms p99.99ms max_ms requests HIT MISS+coal STALE errors upstream early srv\>50ms
for r in $(seq 1 "$ROUNDS"); do
    for name in xfetch plain; do
        read -r rps p50 p99 p999 p9999 max reqs errs hit miss stale other up early slow <<<"${RES[$name,$r]}"
        printf '%-6s %-7s %8.0f %7.2f %7.2f %8.2f %8.2f %8.2f %8d %8d %9d %6d %6d %8d %6d %8d\n' \
            "$r" "$name" "$rps" "$p50" "$p99" "$p999" "$p9999" "$max" "$reqs" "$hit" "$miss" "$stale" \
            "$((errs + other))" "$up" "$early" "$slow"
    done
done
echo
echo "MISS+coal: answers that waited for the upstream (the leader's MISS and the requests coalesced on it);"
echo "upstream: requests the test upstream answered during the run; early: tile_proxy_early_refresh_total;"
echo "srv>50ms: tile answers the proxy itself took over 50 ms for (its duration histogram, not wrk's clock)."
echo "wrk's percentiles are corrected for coordinated omission (a stalled request counts as the requests"
echo "it held back), so one 100 ms stall per connection and expiry shows in p99; they also take in every"
echo "scheduling delay of a shared machine: compare srv>50ms and MISS+coal first."
