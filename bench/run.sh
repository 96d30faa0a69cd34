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

usage() { sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "run.sh: error: $*" >&2; exit 1; }
log() { echo "==> $*" >&2; }

SMOKE=0
for arg in "$@"; do
    case "$arg" in
        --smoke) SMOKE=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "run.sh: unknown argument '$arg'" >&2; usage >&2; exit 2 ;;
    esac
done

if [ "$SMOKE" = 1 ]; then
    DURATION=2 ROUNDS=1 TILES=200 WARMUP=1
fi
DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-3}"
CONNECTIONS="${CONNECTIONS:-32}"
THREADS="${THREADS:-1}"
TILES="${TILES:-2000}"
WARMUP="${WARMUP:-2}"
WORKERS="${WORKERS:-1}"
PROXY_LOG="${PROXY_LOG:-warn}"
SERVER_CPU="${SERVER_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
SKIP_BUILD="${SKIP_BUILD:-0}"
KEEP_TMP="${KEEP_TMP:-0}"
TARGET_DIR="${TARGET_DIR:-${CARGO_TARGET_DIR:-$REPO_ROOT/target}}"
KEY="bench-key-0123456789"
MIN_SIZE=5000
MAX_SIZE=60000

for v in DURATION ROUNDS CONNECTIONS THREADS TILES WARMUP WORKERS SERVER_CPU LOAD_CPU; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a whole number (got '${!v}')"
done
[ "$DURATION" -ge 1 ] && [ "$DURATION" -le 600 ] || die "DURATION must be 1..600"
[ "$ROUNDS" -ge 1 ] && [ "$ROUNDS" -le 50 ] || die "ROUNDS must be 1..50"
[ "$TILES" -ge 10 ] && [ "$TILES" -le 10000 ] || die "TILES must be 10..10000"
[ "$CONNECTIONS" -ge "$THREADS" ] && [ "$THREADS" -ge 1 ] || die "need 1 <= THREADS <= CONNECTIONS"
[ "$WORKERS" -ge 1 ] || die "WORKERS must be >= 1"

# ---- 1. tools ------------------------------------------------------------------------------
find_nginx() { command -v nginx 2>/dev/null || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true; }

apt_install() {
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || die "need root (or sudo) to install: $*"
        sudo=(sudo)
    fi
    log "installing: $*"
    if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"; then
        "${sudo[@]}" apt-get update
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
    fi
}

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
if [ "$SKIP_BUILD" != 1 ]; then
    log "cargo build --release --bins -p tile-proxy -p test-upstream (target dir $TARGET_DIR)"
    (cd "$REPO_ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release --bins -p tile-proxy -p test-upstream)
fi
PROXY_BIN="$TARGET_DIR/release/tile-proxy"
UPSTREAM_BIN="$TARGET_DIR/release/test-upstream"
[ -x "$PROXY_BIN" ] && [ -x "$UPSTREAM_BIN" ] || die "binaries not found in $TARGET_DIR/release (build first, or set TARGET_DIR)"

# ---- process bookkeeping and cleanup ---------------------------------------------------------
TMP="$(mktemp -d "${TMPDIR:-/tmp}/tile-proxy-bench.XXXXXX")"
chmod 755 "$TMP"
PIDS=()

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    local pid alive i
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for i in $(seq 50); do
        alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
    wait 2>/dev/null
    if [ "$rc" -ne 0 ]; then
        for f in upstream.log proxy.log nginx.out nginx-error.log; do
            [ -s "$TMP/$f" ] && { echo "---- last lines of $f ----" >&2; tail -n 15 "$TMP/$f" >&2; }
        done
    fi
    if [ "$KEEP_TMP" = 1 ]; then
        echo "temp dir kept: $TMP" >&2
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A port nothing listens on (checked by connecting; loopback only).
free_port() {
    local p _
    for _ in $(seq 200); do
        p=$((20000 + RANDOM % 30000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
    done
    die "no free port found"
}

wait_ready() { # name pid url
    local i
    for i in $(seq 300); do
        kill -0 "$2" 2>/dev/null || die "$1 exited during startup"
        curl -sf -o /dev/null --max-time 1 "$3" && return 0
        sleep 0.2
    done
    die "$1 not ready after 60 s ($3)"
}

upstream_total() {
    curl -sf --max-time 5 "$UPSTREAM_URL/__stats" | grep -o '"total":[ ]*[0-9]*' | grep -o '[0-9]*$'
}

# CPU seconds (user+sys) used so far by a process (all threads) and its children processes.
CLK_TCK="$(getconf CLK_TCK)"
cpu_ticks() { # pid...
    local total=0 p t
    for p in "$@"; do
        t="$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null || echo 0)"
        total=$((total + t))
    done
    echo "$total"
}

# "busy total steal" jiffies of one core, from /proc/stat (busy excludes idle and iowait).
core_jiffies() { # cpu-number
    awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= 9; i++) t += $i
        print t - $5 - $6, t, $9 }' /proc/stat
}
# Busy % of a core between two core_jiffies snapshots.
core_busy() { # "busy0 total0 steal0" "busy1 total1 steal1"
    awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " "); t = y[2] - x[2]
        if (t <= 0) print 0; else printf "%.0f\n", 100 * (y[1] - x[1]) / t }'
}

# ---- 3. tile list ----------------------------------------------------------------------------
TILES_FILE="$TMP/tiles.txt"
awk -v n="$TILES" 'BEGIN {
    count = 0
    for (i = 0; count < n; i++) {
        z = 12 + i % 3; m = 2 ^ z
        x = (i * 7919 + 1234) % m; y = (i * 104729 + 4321) % m
        k = z "/" x "/" y
        if (!(k in seen)) { seen[k] = 1; print "/v3/base/mc/" k "/png"; count++ }
    }
}' >"$TILES_FILE"
[ "$(sort -u "$TILES_FILE" | wc -l)" -eq "$TILES" ] || die "tile list is not $TILES distinct tiles"
export TILES_FILE

# ---- 4. servers ------------------------------------------------------------------------------
log "starting test-upstream (core $LOAD_CPU, bodies $MIN_SIZE-$MAX_SIZE bytes)"
taskset -c "$LOAD_CPU" "$UPSTREAM_BIN" --listen 127.0.0.1:0 --key "$KEY" \
    --min-size "$MIN_SIZE" --max-size "$MAX_SIZE" >"$TMP/upstream.log" 2>&1 &
UPSTREAM_PID=$!
PIDS+=("$UPSTREAM_PID")
UPSTREAM_URL=""
for _ in $(seq 100); do
    kill -0 "$UPSTREAM_PID" 2>/dev/null || die "test-upstream exited during startup"
    UPSTREAM_URL="$(sed -n 's/^listening on \(http:\/\/[0-9.:]*\).*/\1/p' "$TMP/upstream.log" | head -n1)"
    [ -n "$UPSTREAM_URL" ] && break
    sleep 0.1
done
[ -n "$UPSTREAM_URL" ] || die "test-upstream did not print its address"
UPSTREAM_PORT="${UPSTREAM_URL##*:}"
wait_ready test-upstream "$UPSTREAM_PID" "$UPSTREAM_URL/__stats"

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
warm() { # name base-url
    local name="$1" base="$2" cfg="$TMP/warm-$1.curl" ok
    awk -v base="$base" '{ printf "url = \"%s%s\"\noutput = \"/dev/null\"\n", base, $0 }' \
        "$TILES_FILE" >"$cfg"
    timeout 300 taskset -c "$LOAD_CPU" curl -s --parallel --parallel-max 8 --max-time 30 \
        -w '%{http_code}\n' -K "$cfg" >"$TMP/warm-$name.codes" 2>"$TMP/warm-$name.err" || true
    ok="$(grep -c '^200$' "$TMP/warm-$name.codes" || true)"
    [ "$ok" -eq "$TILES" ] || die "warming $name: $ok of $TILES requests answered 200"
}

check_hits() { # name base-url -> every 1/20th tile must answer X-Cache: HIT
    local name="$1" base="$2" step path n=0 hits=0 try
    step=$(((TILES + 19) / 20))
    while read -r path; do
        n=$((n + 1))
        for try in 1 2 3 4 5; do
            if curl -s --max-time 5 -o /dev/null -D - "$base$path" | tr -d '\r' | grep -qi '^x-cache: *HIT$'; then
                hits=$((hits + 1)); break
            fi
            sleep 0.2
        done
    done < <(awk -v s="$step" '(NR - 1) % s == 0' "$TILES_FILE")
    [ "$hits" -eq "$n" ] || die "$name: only $hits of $n sampled tiles answered X-Cache: HIT"
    echo "$n"
}

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
# wrk prints e.g. "456.00us", "1.23ms", "1.02s"; transfer as "12.34MB" (binary units).
to_ms() { awk -v v="$1" 'BEGIN { n = v + 0
    if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /m$/) n *= 60000
    else if (v ~ /s$/) n *= 1000
    printf "%.3f", n }'; }
to_mib() { awk -v v="$1" 'BEGIN { n = v + 0
    if (v ~ /GB$/) n *= 1024; else if (v ~ /MB$/) n += 0; else if (v ~ /KB$/) n /= 1024
    else if (v ~ /B$/) n /= 1048576
    printf "%.2f", n }'; }

# run_wrk NAME URL DURATION OUTFILE -> prints "rps p50_ms p99_ms mib_s requests errors server_cpu% wrk_cpu%"
run_wrk() {
    local name="$1" url="$2" dur="$3" out="$4" pids c0 c1 t0 t1 wall user sys
    if [ "$name" = tile-proxy ]; then pids=("$PROXY_PID"); else read -r -a pids <<<"$NGINX_PID $NGINX_WORKERS"; fi
    c0="$(cpu_ticks "${pids[@]}")"
    local s0 l0 s1 l1
    s0="$(core_jiffies "$SERVER_CPU")"; l0="$(core_jiffies "$LOAD_CPU")"
    t0="$(date +%s.%N)"
    local TIMEFORMAT='%U %S'
    { time timeout $((dur + 30)) taskset -c "$LOAD_CPU" wrk -t"$THREADS" -c"$CONNECTIONS" -d"${dur}s" \
        --timeout 5s --latency -s "$BENCH_DIR/tiles.lua" "$url" >"$out" 2>"$out.err"; } 2>"$out.time" ||
        { cat "$out.err" >&2; die "wrk against $name failed"; }
    t1="$(date +%s.%N)"
    c1="$(cpu_ticks "${pids[@]}")"
    s1="$(core_jiffies "$SERVER_CPU")"; l1="$(core_jiffies "$LOAD_CPU")"
    read -r user sys <"$out.time"
    local rps p50 p99 xfer reqs errs
    rps="$(awk '/^Requests\/sec:/ { print $2 }' "$out")"
    p50="$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")"
    p99="$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")"
    xfer="$(to_mib "$(awk '/^Transfer\/sec:/ { print $2 }' "$out")")"
    reqs="$(awk '/requests in/ { print $1 }' "$out")"
    errs="$(awk '/Non-2xx or 3xx responses:/ { n += $NF }
                 /Socket errors:/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 }
                 END { print n + 0 }' "$out")"
    [ -n "$rps" ] && [ -n "$reqs" ] || { cat "$out" >&2; die "cannot parse wrk output for $name"; }
    awk -v rps="$rps" -v p50="$p50" -v p99="$p99" -v x="$xfer" -v r="$reqs" -v e="$errs" \
        -v c0="$c0" -v c1="$c1" -v tck="$CLK_TCK" -v t0="$t0" -v t1="$t1" -v u="$user" -v s="$sys" \
        -v sb="$(core_busy "$s0" "$s1")" -v lb="$(core_busy "$l0" "$l1")" \
        'BEGIN { wall = t1 - t0; if (wall <= 0) wall = 1
                 printf "%.2f %.3f %.3f %.2f %d %d %.0f %.0f %d %d\n", rps, p50, p99, x, r, e,
                        100 * (c1 - c0) / tck / wall, 100 * (u + s) / wall, sb, lb }'
}

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
if [ "$WARMUP" -gt 0 ]; then
    log "unmeasured ${WARMUP}s wrk warm-up against each server"
    run_wrk tile-proxy "$PROXY_URL" "$WARMUP" "$TMP/wrk-warmup-proxy.txt" >/dev/null
    run_wrk nginx "$NGINX_URL" "$WARMUP" "$TMP/wrk-warmup-nginx.txt" >/dev/null
fi

declare -a P_RPS P_P50 P_P99 P_XFER P_REQ P_ERR P_CPU P_WCPU P_C0 P_C1
declare -a N_RPS N_P50 N_P99 N_XFER N_REQ N_ERR N_CPU N_WCPU N_C0 N_C1
for r in $(seq 1 "$ROUNDS"); do
    log "round $r/$ROUNDS: tile-proxy ${DURATION}s"
    read -r P_RPS[r] P_P50[r] P_P99[r] P_XFER[r] P_REQ[r] P_ERR[r] P_CPU[r] P_WCPU[r] P_C0[r] P_C1[r] \
        < <(run_wrk tile-proxy "$PROXY_URL" "$DURATION" "$TMP/wrk-r$r-proxy.txt")
    [ -n "${P_RPS[r]}" ] || die "tile-proxy run $r failed"
    log "round $r/$ROUNDS: nginx ${DURATION}s"
    read -r N_RPS[r] N_P50[r] N_P99[r] N_XFER[r] N_REQ[r] N_ERR[r] N_CPU[r] N_WCPU[r] N_C0[r] N_C1[r] \
        < <(run_wrk nginx "$NGINX_URL" "$DURATION" "$TMP/wrk-r$r-nginx.txt")
    [ -n "${N_RPS[r]}" ] || die "nginx run $r failed"
done
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

UP_FINAL="$(upstream_total)"
UP_DURING=$((UP_FINAL - UP_AFTER_NGINX))
[ "$UP_DURING" -eq 0 ] || echo "WARNING: upstream saw $UP_DURING requests during measurement: not every request was a hit" >&2

# ---- 7. report -------------------------------------------------------------------------------
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END {
    if (NR % 2) printf "%.3f", a[(NR + 1) / 2]; else printf "%.3f", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "n/a"; else printf "%.3f", a / b }'; }
fmt() { awk -v v="$1" -v d="$2" 'BEGIN { printf "%.*f", d, v }'; }

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
json_arr() { local IFS=,; echo "[$*]"; }
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
jnum() { [ "$1" = n/a ] && echo null || echo "$1"; }
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
