#!/usr/bin/env bash
# Fleet simulation (issue #22 part 5): the whole stack on 127.0.0.1, run for real.
#
#   Debian's nginx with the project's template (nginx/templates/tile-proxy.conf.template,
#   `hash $uri consistent`, rendered with envsubst as the official image does)
#     -> N tile-proxy pods (own memory + disk tiers each)
#     -> a 6-node Redis Cluster (3 primaries, 3 replicas; `redis_mode = cluster`)
#     -> the test upstream, each answer after 30-80 ms (LATENCY_MS 30 + uniform 0..JITTER_MS 50).
#   The load: a seeded Zipf trace (bench/fleet-load.py) over DISTINCT distinct tiles around a few
#   hot city areas, replayed over CONNS keep-alive connections, in five phases:
#     2 pods | 4 pods (scaled up, nginx reloaded) | 2 pods (scaled down) | SIGKILL pod 2 (during
#     the phase, requests in flight) | Redis primary SIGKILLed (during the phase; its replica
#     takes over)
#   then the same run with Redis off (the last phase then has no event).
#   Printed per run: requests, p50/p99 ms, client errors (apart: the failed requests of the
#   killed pod's window), hit ratio per tier (from X-Cache/X-Cache-Tier of every answer), and
#   upstream requests per distinct tile (the test upstream's /__stats total / distinct tiles
#   requested).
#
# Usage: bench/fleet.sh [--smoke]
#   --smoke  a short run (CI, scripts/test.sh): 10,000 distinct tiles, 2,400 requests a phase;
#            exits non-zero when a target is missed: with Redis, upstream requests per new tile
#            <= 1.01 over phases 1-4 (the Redis primary outage's re-fetches are printed apart);
#            no client error (either run) outside the killed pod's in-flight requests.
# Env: BIN_DIR (tile-proxy + test-upstream; default target/release if built, else target/debug;
#      full runs: build --release first), DISTINCT (100000), PHASE_REQUESTS (20000), CONNS (32),
#      LATENCY_MS (30), JITTER_MS (50), MEMORY_CACHE per pod (16MiB; smoke 4MiB: smaller than the
#      working set, so the disk tier serves too), KEEP_TMP=1 keeps the temp folder, RUNS ("redis off"),
#      POD_ENV (more NAME=value settings for every pod, space-separated: the pods start with env -i).
# Every process it starts is killed on exit (trap); every wait is bounded; loopback only.
# SC2015: `A && B || die` means "die unless all hold", as intended. SC2016: literal ${...}
# patterns. SC2317: cleanup and the event functions run from a trap or by name.
# shellcheck disable=SC2015,SC2016,SC2317
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
BENCH_NAME=fleet.sh
die() { echo "$BENCH_NAME: error: $*" >&2; exit 1; }
log() { echo "==> $*" >&2; }

SMOKE=0
for a in "$@"; do
    case "$a" in
    --smoke) SMOKE=1 ;;
    -h | --help) sed -n '2,30p' "$0"; exit 0 ;;
    *) die "unknown argument: $a" ;;
    esac
done
if [ "$SMOKE" = 1 ]; then
    DISTINCT="${DISTINCT:-10000}"
    PHASE_REQUESTS="${PHASE_REQUESTS:-2400}"
    CONNS="${CONNS:-16}"
    MEMORY_CACHE="${MEMORY_CACHE:-4MiB}"
else
    DISTINCT="${DISTINCT:-100000}"
    PHASE_REQUESTS="${PHASE_REQUESTS:-20000}"
    CONNS="${CONNS:-32}"
    MEMORY_CACHE="${MEMORY_CACHE:-16MiB}"
fi
LATENCY_MS="${LATENCY_MS:-30}"
JITTER_MS="${JITTER_MS:-50}"
RUNS="${RUNS:-redis off}"
if [ -z "${BIN_DIR:-}" ]; then
    tdir="${CARGO_TARGET_DIR:-$REPO/target}"
    if [ -x "$tdir/release/tile-proxy" ] && [ "$SMOKE" = 0 ]; then BIN_DIR="$tdir/release"; else BIN_DIR="$tdir/debug"; fi
fi
[ -x "$BIN_DIR/tile-proxy" ] && [ -x "$BIN_DIR/test-upstream" ] ||
    die "tile-proxy and test-upstream not found in $BIN_DIR (cargo build [--release], or set BIN_DIR)"
NGINX_BIN="$(command -v nginx || echo /usr/sbin/nginx)"
[ -x "$NGINX_BIN" ] || die "nginx not found (apt-get install nginx)"
for t in envsubst redis-server redis-cli python3 curl; do
    command -v "$t" >/dev/null 2>&1 || die "$t not found (scripts/install-deps.sh, or apt-get install gettext-base redis-server redis-tools python3 curl)"
done
LOAD="$REPO/bench/fleet-load.py"
TEMPLATE="$REPO/nginx/templates/tile-proxy.conf.template"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/fleet.XXXXXX")"
chmod 755 "$TMP"
PIDS=()
cleanup() {
    local rc=$? pid i alive
    set +e
    local -a all=()
    for pid in "${PIDS[@]}"; do
        all+=("$pid")
        for i in $(pgrep -P "$pid" 2>/dev/null); do all+=("$i"); done
    done
    for pid in "${all[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for i in $(seq 50); do
        alive=0
        for pid in "${all[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${all[@]}"; do kill -KILL "$pid" 2>/dev/null; done
    if [ "$rc" -ne 0 ]; then
        for f in "$TMP"/*.err "$TMP"/nginx-stderr.log; do
            [ -s "$f" ] || continue
            echo "---- last lines of $f ----" >&2
            tail -n 8 "$f" >&2
        done
    fi
    if [ "${KEEP_TMP:-0}" = 1 ]; then echo "fleet.sh: temp folder kept: $TMP" >&2; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A free port below the ephemeral range (outgoing connections cannot take it meanwhile).
EPH_LOW="$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)"
[ "$EPH_LOW" -gt 21000 ] 2>/dev/null || EPH_LOW=32768
declare -A TAKEN=()
free_port() { # sets FREE_PORT
    local p i
    for i in $(seq 200); do
        p=$((20000 + RANDOM % (EPH_LOW - 20000 - 10000)))
        [ -z "${TAKEN[$p]:-}" ] && [ -z "${TAKEN[$((p + 10000))]:-}" ] || continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && ! (exec 3<>"/dev/tcp/127.0.0.1/$((p + 10000))") 2>/dev/null; then
            TAKEN[$p]=1
            FREE_PORT="$p"
            return 0
        fi
    done
    die "no free port found"
}

# ---- the test upstream ----
KEY="fleet-key-$RANDOM$RANDOM"
"$BIN_DIR/test-upstream" --listen 127.0.0.1:0 --key "$KEY" --latency-ms "$LATENCY_MS" --latency-jitter-ms "$JITTER_MS" >"$TMP/upstream.log" 2>"$TMP/upstream.err" &
PIDS+=("$!")
UP=""
for _ in $(seq 100); do
    UP="$(sed -n 's/^listening on \(http:\/\/[0-9.:]*\).*/\1/p' "$TMP/upstream.log" | head -n 1)"
    [ -n "$UP" ] && break
    sleep 0.05
done
[ -n "$UP" ] || die "test-upstream did not print its address"

# ---- the trace ----
TOTAL=$((PHASE_REQUESTS * 5))
python3 "$LOAD" trace --tiles "$DISTINCT" --requests "$TOTAL" --seed 22 --out "$TMP/trace.txt" >/dev/null

# ---- Redis Cluster: 6 nodes, 3 primaries ----
REDIS_PORTS=()
REDIS_PIDS=()
start_cluster() {
    local n p i
    REDIS_PORTS=()
    REDIS_PIDS=()
    for n in 1 2 3 4 5 6; do
        free_port
        p="$FREE_PORT"
        mkdir -p "$TMP/redis-$n"
        redis-server --port "$p" --cluster-port $((p + 10000)) --cluster-enabled yes \
            --cluster-config-file nodes.conf --cluster-node-timeout 1000 --bind 127.0.0.1 \
            --save "" --appendonly no --daemonize no --loglevel warning --dir "$TMP/redis-$n" \
            >"$TMP/redis-$n.log" 2>&1 &
        PIDS+=("$!")
        REDIS_PIDS+=("$!")
        REDIS_PORTS+=("$p")
    done
    for p in "${REDIS_PORTS[@]}"; do
        for i in $(seq 100); do
            redis-cli -p "$p" ping >/dev/null 2>&1 && break
            [ "$i" = 100 ] && die "redis-server on $p did not start"
            sleep 0.05
        done
    done
    local -a addrs=()
    for p in "${REDIS_PORTS[@]}"; do addrs+=("127.0.0.1:$p"); done
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >"$TMP/cluster-create.log" 2>&1 ||
        die "redis-cli --cluster create failed: $(tail -n 5 "$TMP/cluster-create.log")"
    for i in $(seq 200); do
        local ok=1
        for p in "${REDIS_PORTS[@]}"; do
            redis-cli -p "$p" cluster info 2>/dev/null | grep -q 'cluster_state:ok' || ok=0
        done
        [ "$ok" = 1 ] && return 0
        sleep 0.1
    done
    die "the Redis cluster did not reach cluster_state:ok within 20 s"
}

# ---- pods ----
declare -A POD_PID=() POD_PORT=() POD_ADMIN=()
start_pod() { # N redis|off
    local n="$1" mode="$2"
    local -a redis_env=() pod_env=()
    read -r -a pod_env <<<"${POD_ENV:-}"
    if [ "$mode" = redis ]; then
        local nodes="" p
        for p in "${REDIS_PORTS[@]}"; do nodes+="${nodes:+,}redis://127.0.0.1:$p"; done
        redis_env=(TILE_PROXY_REDIS_MODE=cluster "TILE_PROXY_REDIS_NODES=$nodes")
    fi
    rm -rf "$TMP/cache-$n"
    mkdir -p "$TMP/cache-$n"
    env -i PATH="$PATH" HOME="$TMP" RUST_LOG=info TILE_PROXY_ACCESS_LOG=false HERE_API_KEY="$KEY" \
        TILE_PROXY_LISTEN=127.0.0.1:0 TILE_PROXY_ADMIN_LISTEN=127.0.0.1:0 TILE_PROXY_CACHE_DIR="$TMP/cache-$n" \
        TILE_PROXY_MEMORY_CACHE="$MEMORY_CACHE" TILE_PROXY_DISK_CACHE=256MiB TILE_PROXY_WORKERS=2 \
        TILE_PROXY_RASTER_UPSTREAM="$UP" TILE_PROXY_VECTOR_UPSTREAM="$UP" \
        TILE_PROXY_TRAFFIC_RASTER_UPSTREAM="$UP" TILE_PROXY_TRAFFIC_VECTOR_UPSTREAM="$UP" \
        TILE_PROXY_TRUSTED_PROXIES=127.0.0.1 TILE_PROXY_LOG_FORMAT=json TILE_PROXY_SHUTDOWN_TIMEOUT=2s TILE_PROXY_DEFAULTS__RATE_LIMIT=0 \
        "${redis_env[@]}" "${pod_env[@]}" "$BIN_DIR/tile-proxy" serve >"$TMP/pod-$n.log" 2>"$TMP/pod-$n.err" &
    POD_PID[$n]=$!
    PIDS+=("$!")
}
wait_pod() { # N
    local n="$1" port="" i
    for i in $(seq 300); do
        kill -0 "${POD_PID[$n]}" 2>/dev/null || die "pod $n exited at start: $(tail -n 3 "$TMP/pod-$n.err" "$TMP/pod-$n.log")"
        port="$(grep -m 1 '"tile-proxy listening"' "$TMP/pod-$n.log" |
            sed -n 's/.*"addr":"127\.0\.0\.1:\([0-9]*\)".*/\1/p' || true)"
        [ -n "$port" ] && curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$port/ready" && break
        port=""
        sleep 0.1
    done
    [ -n "$port" ] || die "pod $n not ready within 30 s"
    POD_PORT[$n]="$port"
    POD_ADMIN[$n]="$(grep -m 1 '"tile-proxy listening"' "$TMP/pod-$n.log" |
        sed -n 's/.*"admin_addr":"127\.0\.0\.1:\([0-9]*\)".*/\1/p' || true)"
    [ -n "${POD_ADMIN[$n]}" ] || die "pod $n logged no admin_addr"
}

# ---- nginx: the project's template, a minimal nginx.conf around it ----
NGINX_PORT=""
render_nginx() { # pod numbers...
    local servers="" admin="" n
    for n in "$@"; do
        servers+="server 127.0.0.1:${POD_PORT[$n]} max_fails=1 fail_timeout=30s; "
        admin+="server 127.0.0.1:${POD_ADMIN[$n]}; "
    done
    local -a values=(
        "NGINX_PORT=127.0.0.1:$NGINX_PORT"
        "TILE_PROXY_SERVERS=$servers"
        "NGINX_CACHE=off"
        "NGINX_CACHE_DIR=$TMP/nginx-cache"
        "NGINX_CACHE_MAX_SIZE=64m"
        "NGINX_RATE_LIMIT=100000r/s"
        "NGINX_RATE_BURST=100000"
        "NGINX_ADMIN_ALLOW=allow 127.0.0.1;"
        "NGINX_REAL_IP_FROM="
        "TILE_PROXY_ADMIN_SERVERS=$admin"
    )
    local -a names=()
    local v
    for v in "${values[@]}"; do names+=("${v%%=*}"); done
    env -i "${values[@]}" envsubst "$(printf '${%s} ' "${names[@]}")" <"$TEMPLATE" >"$TMP/conf.d/tile-proxy.conf"
    ! grep -q '\${' "$TMP/conf.d/tile-proxy.conf" || die "the rendered template still holds \${...}"
}
NGINX_PID=""
start_nginx() { # pod numbers...
    mkdir -p "$TMP/conf.d" "$TMP/nginx-cache" "$TMP/temp"
    local user_line=""
    [ "$(id -u)" -ne 0 ] || user_line="user root;"
    cat >"$TMP/nginx.conf" <<EOF
$user_line
worker_processes 1;
pid $TMP/nginx.pid;
error_log $TMP/nginx-stderr.log warn;
events { worker_connections 1024; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    client_body_temp_path $TMP/temp/client_body;
    proxy_temp_path $TMP/temp/proxy;
    fastcgi_temp_path $TMP/temp/fastcgi;
    uwsgi_temp_path $TMP/temp/uwsgi;
    scgi_temp_path $TMP/temp/scgi;
    include $TMP/conf.d/*.conf;
}
EOF
    free_port
    NGINX_PORT="$FREE_PORT"
    render_nginx "$@"
    "$NGINX_BIN" -t -q -p "$TMP" -c "$TMP/nginx.conf" >"$TMP/nginx-t.log" 2>&1 || die "nginx -t: $(cat "$TMP/nginx-t.log")"
    "$NGINX_BIN" -p "$TMP" -c "$TMP/nginx.conf" -g 'daemon off;' >"$TMP/nginx.out" 2>&1 &
    NGINX_PID=$!
    PIDS+=("$!")
    local i
    for i in $(seq 100); do
        curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$NGINX_PORT/" && return 0
        kill -0 "$NGINX_PID" 2>/dev/null || die "nginx exited: $(tail -n 3 "$TMP/nginx-stderr.log")"
        sleep 0.05
    done
    die "nginx did not answer within 5 s"
}
reload_nginx() { # pod numbers...
    render_nginx "$@"
    "$NGINX_BIN" -t -q -p "$TMP" -c "$TMP/nginx.conf" >"$TMP/nginx-t.log" 2>&1 || die "nginx -t: $(cat "$TMP/nginx-t.log")"
    "$NGINX_BIN" -p "$TMP" -c "$TMP/nginx.conf" -s reload
    sleep 0.5 # the new workers take over; the old ones finish their requests
}
stop_pid() { # PID (TERM, then KILL after 5 s)
    local pid="$1" i
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# load PHASE START [event]: replays PHASE_REQUESTS trace lines from START; with an event, fires
# it (a function name) once a third of the phase is answered, while requests are in flight.
load_phase() {
    local phase="$1" start="$2" event="${3:-}" i
    local mark="$TMP/mark-$RUN-$start"
    python3 "$LOAD" run --url "http://127.0.0.1:$NGINX_PORT" --trace "$TMP/trace.txt" --start "$start" \
        --count "$PHASE_REQUESTS" --phase "$phase" --conns "$CONNS" --out "$TMP/requests-$RUN.tsv" \
        --mark-at $((PHASE_REQUESTS / 3)) --mark-file "$mark" &
    local lpid=$!
    PIDS+=("$lpid")
    if [ -n "$event" ]; then
        for i in $(seq 1200); do
            [ -e "$mark" ] && break
            kill -0 "$lpid" 2>/dev/null || break
            sleep 0.05
        done
        "$event"
    fi
    wait "$lpid" || die "the load generator failed in phase $phase"
    # The test upstream's count so far: the report shows each phase's share.
    printf '%s\t%s\n' "$phase" "$(upstream_total)" >>"$TMP/upstream-$RUN.tsv"
}
upstream_total() { curl -sf --max-time 5 "$UP/__stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])'; }
kill_pod_2() {
    echo "kill $(date +%s.%N)" >>"$TMP/events-$RUN"
    kill -KILL "${POD_PID[2]}"
    { wait "${POD_PID[2]}"; } 2>/dev/null || true # reaped here: no "Killed" line from bash
    log "$RUN: SIGKILL pod 2 (pid ${POD_PID[2]})"
}
kill_redis_primary() {
    [ "$RUN" = redis ] || return 0
    local p line
    line="$(redis-cli -p "${REDIS_PORTS[0]}" cluster nodes | awk '$3 ~ /master/ && $3 !~ /fail/ {print $2; exit}')"
    p="${line%%@*}"
    p="${p##*:}"
    local i
    for i in "${!REDIS_PORTS[@]}"; do
        if [ "${REDIS_PORTS[$i]}" = "$p" ]; then
            kill -KILL "${REDIS_PIDS[$i]}"
            { wait "${REDIS_PIDS[$i]}"; } 2>/dev/null || true
            log "$RUN: SIGKILL Redis primary :$p"
            return 0
        fi
    done
    die "no Redis primary found in cluster nodes"
}

# ---- one run ----
declare -A RESULT=()
run_fleet() { # redis|off
    RUN="$1"
    log "$RUN: starting (distinct tiles $DISTINCT, $PHASE_REQUESTS requests a phase, $CONNS connections, bin $BIN_DIR)"
    curl -sf -X POST -o /dev/null "$UP/__reset"
    [ "$RUN" != redis ] || start_cluster
    local n
    for n in 1 2; do start_pod "$n" "$RUN"; done
    for n in 1 2; do wait_pod "$n"; done
    start_nginx 1 2
    : >"$TMP/requests-$RUN.tsv"
    : >"$TMP/events-$RUN"
    : >"$TMP/upstream-$RUN.tsv"
    local s=0
    load_phase "1: 2 pods" $s
    s=$((s + PHASE_REQUESTS))
    for n in 3 4; do start_pod "$n" "$RUN"; done
    for n in 3 4; do wait_pod "$n"; done
    reload_nginx 1 2 3 4
    log "$RUN: scaled to 4 pods"
    load_phase "2: 4 pods" $s
    s=$((s + PHASE_REQUESTS))
    reload_nginx 1 2
    for n in 3 4; do stop_pid "${POD_PID[$n]}"; done
    log "$RUN: scaled back to 2 pods"
    load_phase "3: 2 pods again" $s
    s=$((s + PHASE_REQUESTS))
    load_phase "4: SIGKILL pod 2" $s kill_pod_2
    s=$((s + PHASE_REQUESTS))
    if [ "$RUN" = redis ]; then
        load_phase "5: Redis primary killed" $s kill_redis_primary
    else
        load_phase "5: (no Redis)" $s
    fi
    # Teardown of this run: nginx, pods, Redis.
    stop_pid "$NGINX_PID"
    for n in 1 2; do stop_pid "${POD_PID[$n]}"; done
    local pid
    for pid in "${REDIS_PIDS[@]}"; do stop_pid "$pid"; done
    REDIS_PIDS=()
    # Upstream requests per distinct tile requested.
    local up_total distinct
    up_total="$(upstream_total)"
    distinct="$(sort -u "$TMP/trace.txt" | wc -l)"
    RESULT[$RUN]="$up_total $distinct"
}

rc=0
for r in $RUNS; do
    case "$r" in redis | off) ;; *) die "RUNS: unknown run $r (redis, off)" ;; esac
    run_fleet "$r"
done

echo
echo "fleet simulation: $DISTINCT distinct tiles (Zipf, hot city areas), $PHASE_REQUESTS requests a phase, $CONNS connections, memory tier $MEMORY_CACHE a pod, upstream latency $LATENCY_MS-$((LATENCY_MS + JITTER_MS)) ms, binaries ${BIN_DIR#"$REPO"/}"
for r in $RUNS; do
    echo
    if [ "$r" = redis ]; then echo "== Redis cluster on (6 nodes)"; else echo "== Redis off"; fi
    if ! python3 "$LOAD" report --log "$TMP/requests-$r.tsv" --events "$TMP/events-$r" --upstream "$TMP/upstream-$r.tsv" --ratio-out "$TMP/ratio-$r"; then
        [ "$SMOKE" = 0 ] || { echo "TARGET MISSED: client errors in the Redis-$r run" >&2; rc=1; }
    fi
    read -r up_total distinct <<<"${RESULT[$r]}"
    ratio="$(python3 -c "print(f'{$up_total / max($distinct, 1):.3f}')")"
    echo "whole run: $up_total upstream requests for $distinct distinct tiles requested: $ratio per distinct tile"
    # The target, with Redis: <= 1.01 over phases 1-4 (scaling and the SIGKILL). A Redis
    # primary's outage (phase 5) costs re-fetches of tiles its slots held (printed above apart,
    # like the killed pod's in-flight requests); the whole-run figure is printed as measured.
    if [ "$r" = redis ]; then
        ratio4="$(cat "$TMP/ratio-$r")"
        if ! python3 -c "import sys; sys.exit(0 if $ratio4 <= 1.01 else 1)"; then
            echo "TARGET MISSED: upstream requests per new tile over phases 1-4 $ratio4 > 1.01 with Redis" >&2
            [ "$SMOKE" = 0 ] || rc=1
        fi
    fi
done
exit "$rc"
