#!/usr/bin/env bash
# Cache-hit throughput of tile-proxy against nginx's proxy_cache, same upstream, same tiles,
# same core. See bench/README.md for what it measures and how to read it.
#
#   bench/run.sh            # full run: 2,000 tiles, 3 rounds of 10 s per server
#   bench/run.sh --smoke    # quick check that everything works (200 tiles, 1 round of 2 s)
#
# Environment (all optional):
#   DURATION=10      seconds of each measured wrk run
#   ROUNDS=3         rounds; each round measures tile-proxy then nginx (A B A B ...)
#   CONNECTIONS=32   wrk connections
#   THREADS=1        wrk threads
#   TILES=2000       distinct tiles (z 12..14), 5-60 KB each; max 10000
#   WARMUP=2         seconds of an unmeasured wrk run per server before round 1 (0 = none)
#   WORKERS=1        tile-proxy workers (TILE_PROXY_WORKERS); nginx always has 1 worker
#   PROXY_LOG=warn   RUST_LOG for tile-proxy (info = one JSON log line per request)
#   SERVER_CPU=0     core both servers are pinned to;  LOAD_CPU=1: core for wrk and the upstream
#   SKIP_BUILD=1     do not run cargo build
#   TARGET_DIR=DIR   cargo target dir to build into / take binaries from (default: REPO/target)
#   KEEP_TMP=1       keep the temp dir (configs, logs, caches) after the run
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$BENCH_DIR/.." && pwd)"

# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }

bench_args run.sh "$@"
WORKERS="${WORKERS:-1}"
PROXY_LOG="${PROXY_LOG:-warn}"
[[ "$WORKERS" =~ ^[0-9]+$ ]] && [ "$WORKERS" -ge 1 ] || die "WORKERS must be >= 1"

# ---- 1. tools ------------------------------------------------------------------------------
find_nginx() { command -v nginx 2>/dev/null || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true; }

missing=()
[ -n "$(find_nginx)" ] || missing+=(nginx)
command -v wrk >/dev/null || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
command -v taskset >/dev/null || missing+=(util-linux)
command -v timeout >/dev/null || missing+=(coreutils)
[ "${#missing[@]}" -eq 0 ] || apt_install "${missing[@]}"
NGINX="$(find_nginx)"
[ -n "$NGINX" ] || die "nginx not found after install"

ncpu="$(nproc)"
[ "$SERVER_CPU" -lt "$ncpu" ] && [ "$LOAD_CPU" -lt "$ncpu" ] || die "SERVER_CPU/LOAD_CPU must be < nproc ($ncpu)"

# ---- 2. build ------------------------------------------------------------------------------
build_binaries

# ---- process bookkeeping and cleanup (bench/lib.sh) -------------------------------------------
LOG_FILES=(upstream.log proxy.log nginx.out nginx-error.log)
bench_tmp

# ---- 3. tile list ----------------------------------------------------------------------------
TILES_FILE="$TMP/tiles.txt"
make_tiles

# ---- 4. servers ------------------------------------------------------------------------------
start_upstream "$KEY" "$MIN_SIZE" "$MAX_SIZE"

PROXY_PORT="$(free_port)"
PROXY_URL="http://127.0.0.1:$PROXY_PORT"
mkdir -p "$TMP/proxy-cache"
log "starting tile-proxy on $PROXY_URL (core $SERVER_CPU, $WORKERS worker(s), RUST_LOG=$PROXY_LOG)"
env HERE_API_KEY="$KEY" \
    TILE_PROXY_LISTEN="127.0.0.1:$PROXY_PORT" \
    TILE_PROXY_RASTER_UPSTREAM="$UPSTREAM_URL" \
    TILE_PROXY_VECTOR_UPSTREAM="$UPSTREAM_URL" \
    TILE_PROXY_CACHE_DIR="$TMP/proxy-cache" \
    TILE_PROXY_MEMORY_CACHE=512MiB \
    TILE_PROXY_DISK_CACHE=1GiB \
    TILE_PROXY_WORKERS="$WORKERS" \
    RUST_LOG="$PROXY_LOG" \
    taskset -c "$SERVER_CPU" "$PROXY_BIN" >"$TMP/proxy.log" 2>&1 &
PROXY_PID=$!
PIDS+=("$PROXY_PID")
wait_ready tile-proxy "$PROXY_PID" "$PROXY_URL/ready"

NGINX_PORT="$(free_port)"
[ "$NGINX_PORT" != "$PROXY_PORT" ] || NGINX_PORT="$(free_port)"
NGINX_URL="http://127.0.0.1:$NGINX_PORT"
mkdir -p "$TMP/nginx-cache" "$TMP/nginx-tmp" "$TMP/nginx-logs"
USER_LINE=""
[ "$(id -u)" -eq 0 ] && USER_LINE="user root;" # as root nginx would otherwise drop to nobody, who cannot read $TMP
sed -e "s|@TMP@|$TMP|g" -e "s|@PORT@|$NGINX_PORT|g" -e "s|@UPSTREAM_PORT@|$UPSTREAM_PORT|g" \
    -e "s|@KEY@|$KEY|g" -e "s|@USER_LINE@|$USER_LINE|g" \
    "$BENCH_DIR/nginx-bench.conf" >"$TMP/nginx.conf"
"$NGINX" -t -q -p "$TMP/" -e "$TMP/nginx-error.log" -c "$TMP/nginx.conf" >"$TMP/nginx.out" 2>&1 ||
    { cat "$TMP/nginx.out" >&2; die "nginx config test failed"; }
log "starting nginx on $NGINX_URL (core $SERVER_CPU, 1 worker, access_log off)"
taskset -c "$SERVER_CPU" "$NGINX" -p "$TMP/" -e "$TMP/nginx-error.log" -c "$TMP/nginx.conf" \
    -g 'daemon off;' >>"$TMP/nginx.out" 2>&1 &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
wait_ready nginx "$NGINX_PID" "$NGINX_URL/ready"
NGINX_WORKERS="$(cat /proc/"$NGINX_PID"/task/*/children 2>/dev/null | tr -s ' \n' ' ' || true)"
[ -n "${NGINX_WORKERS// /}" ] || NGINX_WORKERS="$(pgrep -P "$NGINX_PID" 2>/dev/null | tr '\n' ' ' || true)"

# ---- 5. warm both caches ---------------------------------------------------------------------
log "warming tile-proxy: $TILES tiles"
warm tile-proxy "$PROXY_URL"
UP_AFTER_PROXY="$(upstream_total)"
[ "$UP_AFTER_PROXY" -eq "$TILES" ] || die "upstream saw $UP_AFTER_PROXY requests after warming tile-proxy, expected $TILES"
SAMPLED="$(check_hits tile-proxy "$PROXY_URL")"
log "warming nginx: $TILES tiles"
warm nginx "$NGINX_URL"
UP_AFTER_NGINX="$(upstream_total)"
[ "$UP_AFTER_NGINX" -eq $((2 * TILES)) ] ||
    die "upstream saw $UP_AFTER_NGINX requests after warming both, expected $((2 * TILES))"
check_hits nginx "$NGINX_URL" >/dev/null
log "caches warm: upstream requests tile-proxy=$UP_AFTER_PROXY nginx=$((UP_AFTER_NGINX - UP_AFTER_PROXY)) total=$UP_AFTER_NGINX; $SAMPLED sampled tiles HIT on each"

# ---- 6. measure ------------------------------------------------------------------------------
# server processes whose CPU is measured: the proxy; nginx's master and worker(s)
read -r -a NGINX_PIDS <<<"$NGINX_PID $NGINX_WORKERS"

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
if [ "$WARMUP" -gt 0 ]; then
    log "unmeasured ${WARMUP}s wrk warm-up against each server"
    run_wrk tile-proxy "$PROXY_URL" "$WARMUP" "$TMP/wrk-warmup-proxy.txt" "$PROXY_PID" >/dev/null
    run_wrk nginx "$NGINX_URL" "$WARMUP" "$TMP/wrk-warmup-nginx.txt" "${NGINX_PIDS[@]}" >/dev/null
fi

declare -a P_RPS P_P50 P_P99 P_XFER P_REQ P_ERR P_CPU P_WCPU P_C0 P_C1
declare -a N_RPS N_P50 N_P99 N_XFER N_REQ N_ERR N_CPU N_WCPU N_C0 N_C1
for r in $(seq 1 "$ROUNDS"); do
    log "round $r/$ROUNDS: tile-proxy ${DURATION}s"
    read -r P_RPS[r] P_P50[r] P_P99[r] P_XFER[r] P_REQ[r] P_ERR[r] P_CPU[r] P_WCPU[r] P_C0[r] P_C1[r] _ \
        < <(run_wrk tile-proxy "$PROXY_URL" "$DURATION" "$TMP/wrk-r$r-proxy.txt" "$PROXY_PID")
    [ -n "${P_RPS[r]}" ] || die "tile-proxy run $r failed"
    log "round $r/$ROUNDS: nginx ${DURATION}s"
    read -r N_RPS[r] N_P50[r] N_P99[r] N_XFER[r] N_REQ[r] N_ERR[r] N_CPU[r] N_WCPU[r] N_C0[r] N_C1[r] _ \
        < <(run_wrk nginx "$NGINX_URL" "$DURATION" "$TMP/wrk-r$r-nginx.txt" "${NGINX_PIDS[@]}")
    [ -n "${N_RPS[r]}" ] || die "nginx run $r failed"
done
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

UP_FINAL="$(upstream_total)"
UP_DURING=$((UP_FINAL - UP_AFTER_NGINX))
[ "$UP_DURING" -eq 0 ] || echo "WARNING: upstream saw $UP_DURING requests during measurement: not every request was a hit" >&2

# ---- 7. report -------------------------------------------------------------------------------
# median, ratio, fmt, json_arr, jnum: bench/lib.sh

MP_RPS="$(median "${P_RPS[@]}")";  MN_RPS="$(median "${N_RPS[@]}")"
MP_P50="$(median "${P_P50[@]}")";  MN_P50="$(median "${N_P50[@]}")"
MP_P99="$(median "${P_P99[@]}")";  MN_P99="$(median "${N_P99[@]}")"
MP_XFER="$(median "${P_XFER[@]}")"; MN_XFER="$(median "${N_XFER[@]}")"
MP_CPU="$(median "${P_CPU[@]}")";  MN_CPU="$(median "${N_CPU[@]}")"
MP_WCPU="$(median "${P_WCPU[@]}")"; MN_WCPU="$(median "${N_WCPU[@]}")"
MP_C0="$(median "${P_C0[@]}")"; MN_C0="$(median "${N_C0[@]}")"
MP_C1="$(median "${P_C1[@]}")"; MN_C1="$(median "${N_C1[@]}")"
R_RPS="$(ratio "$MP_RPS" "$MN_RPS")"
R_P99="$(ratio "$MP_P99" "$MN_P99")"
R_XFER="$(ratio "$MP_XFER" "$MN_XFER")"
TOTAL_ERR=0
for r in $(seq 1 "$ROUNDS"); do TOTAL_ERR=$((TOTAL_ERR + P_ERR[r] + N_ERR[r])); done

COMMIT="$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git -C "$REPO_ROOT" status --porcelain --untracked-files=no 2>/dev/null || true)" ]; then COMMIT="$COMMIT+dirty"; fi
NGINX_VERSION="$("$NGINX" -v 2>&1 | sed 's/^nginx version: //')"
WRK_VERSION="$(wrk --version 2>&1 | head -n1 | awk '{ print $2 }' || true)"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"

ROWFMT='%-7s %-10s %9s %8s %8s %8s %9s %9s %7s %7s %6s\n'
{
    echo
    echo "tile-proxy vs nginx proxy_cache: cache hits ($COMMIT, $STAMP)"
    echo "  $TILES distinct tiles (z12-14, ${MIN_SIZE}-${MAX_SIZE} B), all cached; wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s, $ROUNDS round(s) A/B alternating"
    echo "  servers pinned to core $SERVER_CPU (tile-proxy $WORKERS worker(s), nginx 1 worker); wrk + upstream on core $LOAD_CPU; loopback"
    echo "  binaries: $TARGET_DIR/release ($([ "$SKIP_BUILD" = 1 ] && echo "prebuilt, SKIP_BUILD=1" || echo "built by this run"))"
    case "$PROXY_LOG" in
        warn | error | off) echo "  per-request logging off on both: tile-proxy RUST_LOG=$PROXY_LOG, nginx access_log off" ;;
        *) echo "  NOTE: tile-proxy RUST_LOG=$PROXY_LOG may log every request; nginx access_log off" ;;
    esac
    echo "  upstream requests while warming: tile-proxy $UP_AFTER_PROXY + nginx $((UP_AFTER_NGINX - UP_AFTER_PROXY)) = $UP_AFTER_NGINX; during measurement: $UP_DURING"
    echo "  load average before/after: $LOAD_BEFORE / $LOAD_AFTER"
    echo
    printf "$ROWFMT" round server 'req/s' 'p50 ms' 'p99 ms' 'MiB/s' 'srv cpu%' 'wrk cpu%' "core$SERVER_CPU%" "core$LOAD_CPU%" errors
    for r in $(seq 1 "$ROUNDS"); do
        printf "$ROWFMT" "$r" tile-proxy "$(fmt "${P_RPS[r]}" 0)" "$(fmt "${P_P50[r]}" 2)" "$(fmt "${P_P99[r]}" 2)" \
            "$(fmt "${P_XFER[r]}" 1)" "${P_CPU[r]}" "${P_WCPU[r]}" "${P_C0[r]}" "${P_C1[r]}" "${P_ERR[r]}"
        printf "$ROWFMT" "$r" nginx "$(fmt "${N_RPS[r]}" 0)" "$(fmt "${N_P50[r]}" 2)" "$(fmt "${N_P99[r]}" 2)" \
            "$(fmt "${N_XFER[r]}" 1)" "${N_CPU[r]}" "${N_WCPU[r]}" "${N_C0[r]}" "${N_C1[r]}" "${N_ERR[r]}"
    done
    printf "$ROWFMT" median tile-proxy "$(fmt "$MP_RPS" 0)" "$(fmt "$MP_P50" 2)" "$(fmt "$MP_P99" 2)" \
        "$(fmt "$MP_XFER" 1)" "$(fmt "$MP_CPU" 0)" "$(fmt "$MP_WCPU" 0)" "$(fmt "$MP_C0" 0)" "$(fmt "$MP_C1" 0)" ""
    printf "$ROWFMT" median nginx "$(fmt "$MN_RPS" 0)" "$(fmt "$MN_P50" 2)" "$(fmt "$MN_P99" 2)" \
        "$(fmt "$MN_XFER" 1)" "$(fmt "$MN_CPU" 0)" "$(fmt "$MN_WCPU" 0)" "$(fmt "$MN_C0" 0)" "$(fmt "$MN_C1" 0)" ""
    echo
    echo "  tile-proxy / nginx:  req/s x$R_RPS   p99 x$R_P99   transfer/s x$R_XFER   (errors: $TOTAL_ERR)"
    echo
}

mkdir -p "$BENCH_DIR/out"
JSON="$BENCH_DIR/out/result-$STAMP.json"
server_json() { # rps p50 p99 xfer req err cpu wcpu medians...
    cat <<EOF
{
      "rounds": {
        "req_per_s": $1, "p50_ms": $2, "p99_ms": $3, "transfer_mib_per_s": $4,
        "requests": $5, "errors": $6, "server_cpu_pct": $7, "wrk_cpu_pct": $8,
        "server_core_busy_pct": ${15}, "load_core_busy_pct": ${16}
      },
      "median": {
        "req_per_s": $9, "p50_ms": ${10}, "p99_ms": ${11}, "transfer_mib_per_s": ${12},
        "server_cpu_pct": ${13}, "wrk_cpu_pct": ${14},
        "server_core_busy_pct": ${17}, "load_core_busy_pct": ${18}
      }
    }
EOF
}
cat >"$JSON" <<EOF
{
  "timestamp": "$STAMP",
  "commit": "$COMMIT",
  "smoke": $([ "$SMOKE" = 1 ] && echo true || echo false),
  "binaries": "$TARGET_DIR/release", "built_by_run": $([ "$SKIP_BUILD" = 1 ] && echo false || echo true),
  "config": {
    "tiles": $TILES, "min_size": $MIN_SIZE, "max_size": $MAX_SIZE, "duration_s": $DURATION,
    "rounds": $ROUNDS, "connections": $CONNECTIONS, "wrk_threads": $THREADS, "warmup_s": $WARMUP,
    "tile_proxy_workers": $WORKERS, "tile_proxy_rust_log": "$PROXY_LOG", "nginx_workers": 1,
    "server_cpu": $SERVER_CPU, "load_cpu": $LOAD_CPU,
    "nginx_version": "$NGINX_VERSION", "wrk_version": "$WRK_VERSION",
    "loadavg_before": "$LOAD_BEFORE", "loadavg_after": "$LOAD_AFTER"
  },
  "upstream_requests": {
    "warm_tile_proxy": $UP_AFTER_PROXY, "warm_nginx": $((UP_AFTER_NGINX - UP_AFTER_PROXY)),
    "warm_total": $UP_AFTER_NGINX, "during_measurement": $UP_DURING
  },
  "servers": {
    "tile-proxy": $(server_json "$(json_arr "${P_RPS[@]}")" "$(json_arr "${P_P50[@]}")" "$(json_arr "${P_P99[@]}")" \
        "$(json_arr "${P_XFER[@]}")" "$(json_arr "${P_REQ[@]}")" "$(json_arr "${P_ERR[@]}")" "$(json_arr "${P_CPU[@]}")" \
        "$(json_arr "${P_WCPU[@]}")" "$MP_RPS" "$MP_P50" "$MP_P99" "$MP_XFER" "$MP_CPU" "$MP_WCPU" \
        "$(json_arr "${P_C0[@]}")" "$(json_arr "${P_C1[@]}")" "$MP_C0" "$MP_C1"),
    "nginx": $(server_json "$(json_arr "${N_RPS[@]}")" "$(json_arr "${N_P50[@]}")" "$(json_arr "${N_P99[@]}")" \
        "$(json_arr "${N_XFER[@]}")" "$(json_arr "${N_REQ[@]}")" "$(json_arr "${N_ERR[@]}")" "$(json_arr "${N_CPU[@]}")" \
        "$(json_arr "${N_WCPU[@]}")" "$MN_RPS" "$MN_P50" "$MN_P99" "$MN_XFER" "$MN_CPU" "$MN_WCPU" \
        "$(json_arr "${N_C0[@]}")" "$(json_arr "${N_C1[@]}")" "$MN_C0" "$MN_C1")
  },
  "ratios_tile_proxy_over_nginx": {
    "req_per_s": $(jnum "$R_RPS"), "p99": $(jnum "$R_P99"), "transfer_per_s": $(jnum "$R_XFER")
  },
  "errors": $TOTAL_ERR
}
EOF
echo "JSON: $JSON"
[ "$TOTAL_ERR" -eq 0 ] || die "$TOTAL_ERR errors (non-2xx or socket errors) during measurement"
[ "$UP_DURING" -eq 0 ] || die "upstream saw $UP_DURING requests during measurement"
