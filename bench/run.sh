#!/usr/bin/env bash
# tile-proxy next to nginx proxy_cache and a bare actix-web server (the ceiling), same upstream,
# same tiles, same core, in four scenarios. See bench/README.md for what each measures and how
# to read the tables.
#
#   bench/run.sh            # every scenario, 3 rounds of 10 s per server
#   bench/run.sh --smoke    # every scenario, tiny (200 tiles, 1 round of 2 s): checks the plumbing
#   SCENARIOS="mem-quiet miss" bench/run.sh
#
# Scenarios (SCENARIOS, space-separated; default all four, in this order):
#   mem-quiet    memory-tier hits, per-request logging off everywhere (tile-proxy RUST_LOG=warn,
#                nginx access_log off); columns tile-proxy / nginx / ceiling
#   mem-logged   memory-tier hits, tile-proxy with its default log settings (no RUST_LOG), nginx
#                with a JSON access_log (buffer=64k); access lines counted after a clean stop
#   disk         disk-tier hits: working set DISK_RATIO x the memory tier, page cache warm
#   miss         every request a new tile (cache miss), low concurrency: direct to the upstream,
#                through tile-proxy, through nginx; added latency and CPU per miss
#
# Environment (all optional):
#   DURATION=10      seconds of each measured wrk run
#   ROUNDS=3         rounds; each round measures every server once (A B C A B C ...)
#   CONNECTIONS=64   wrk connections for the hit scenarios
#   THREADS=1        wrk threads
#   TILES=2000       distinct tiles of the memory scenarios (z 12..14), 5-60 KB each; max 10000
#   WARMUP=2         seconds of an unmeasured wrk run per server before round 1 (0 = none)
#   WORKERS=1        tile-proxy workers (TILE_PROXY_WORKERS); nginx and the ceiling have 1
#   DISK_MEMORY_MIB=64  tile-proxy memory tier in the disk scenario
#   DISK_RATIO=4     disk scenario: working set / memory tier (sets the number of tiles)
#   MISS_CONNECTIONS=4  wrk connections in the miss scenario
#   SERVER_CPU=0     core the servers are pinned to;  LOAD_CPU=1: core for wrk and the upstream
#   SKIP_BUILD=1     do not run cargo build
#   TARGET_DIR=DIR   cargo target dir to build into / take binaries from (default: REPO/target)
#   KEEP_TMP=1       keep the temp dir (configs, logs, caches, raw wrk output) after the run
#   CEILING_PROXY_HEADERS=1  the ceiling also sends the headers tile-proxy's hit carries
#                    (bench-ceiling --proxy-headers): the same response, so tile-proxy / ceiling
#                    is then the cost of tile-proxy's own work alone
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$BENCH_DIR/.." && pwd)"

# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

ALL_SCENARIOS="mem-quiet mem-logged disk miss"
CONNECTIONS="${CONNECTIONS:-64}"
bench_args run.sh "$@"
SCENARIOS="${SCENARIOS:-$ALL_SCENARIOS}"
WORKERS="${WORKERS:-1}"
DISK_MEMORY_MIB="${DISK_MEMORY_MIB:-64}"
DISK_RATIO="${DISK_RATIO:-4}"
MISS_CONNECTIONS="${MISS_CONNECTIONS:-4}"
if [ "$SMOKE" = 1 ]; then
    SCENARIOS="$ALL_SCENARIOS" DISK_MEMORY_MIB=2
fi
for v in WORKERS DISK_MEMORY_MIB DISK_RATIO MISS_CONNECTIONS; do
    [[ "${!v}" =~ ^[0-9]+$ ]] && [ "${!v}" -ge 1 ] || die "$v must be a whole number >= 1 (got '${!v}')"
done
[ "$MISS_CONNECTIONS" -ge "$THREADS" ] || die "need THREADS <= MISS_CONNECTIONS"
for s in $SCENARIOS; do
    case " $ALL_SCENARIOS " in *" $s "*) ;; *) die "unknown scenario '$s' (known: $ALL_SCENARIOS)" ;; esac
done
MEM_TILES="$TILES"
# The disk scenario's tile count: DISK_RATIO x the memory tier in bodies of the mean size.
DISK_TILES=$(((DISK_RATIO * DISK_MEMORY_MIB * 1048576 * 2 + MIN_SIZE + MAX_SIZE - 1) / (MIN_SIZE + MAX_SIZE)))
[ "$DISK_TILES" -le 100000 ] || die "DISK_RATIO x DISK_MEMORY_MIB asks for $DISK_TILES tiles (max 100000)"

# ---- tools, build, temp dir ------------------------------------------------------------------
find_nginx() { command -v nginx 2>/dev/null || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true; }
missing=()
[ -n "$(find_nginx)" ] || missing+=(nginx)
command -v wrk >/dev/null || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
command -v taskset >/dev/null || missing+=(util-linux)
command -v timeout >/dev/null || missing+=(coreutils)
command -v pgrep >/dev/null || missing+=(procps)
[ "${#missing[@]}" -eq 0 ] || apt_install "${missing[@]}"
NGINX="$(find_nginx)"
[ -n "$NGINX" ] || die "nginx not found after install"
ncpu="$(nproc)"
[ "$SERVER_CPU" -lt "$ncpu" ] && [ "$LOAD_CPU" -lt "$ncpu" ] || die "SERVER_CPU/LOAD_CPU must be < nproc ($ncpu)"

BUILD_CEILING=1
build_binaries

LOG_FILES=(upstream.log)
bench_tmp

COMMIT="$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git -C "$REPO_ROOT" status --porcelain --untracked-files=no 2>/dev/null || true)" ]; then COMMIT="$COMMIT+dirty"; fi
NGINX_VERSION="$("$NGINX" -v 2>&1 | sed 's/^nginx version: //')"
WRK_VERSION="$(wrk --version 2>&1 | head -n1 | awk '{ print $2 }' || true)"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
CPU_SOURCE="schedstat"
[ -r "/proc/$$/task/$$/schedstat" ] || CPU_SOURCE="stat ticks (no schedstat)"

start_upstream "$KEY" "$MIN_SIZE" "$MAX_SIZE"

# ---- servers ---------------------------------------------------------------------------------
# Stops one server: SIGNAL (default TERM), then waits up to 30 s for it to exit (KILL after).
stop_server() { # pid [signal]
    local pid="$1" sig="${2:-TERM}" _
    kill -"$sig" "$pid" 2>/dev/null || return 0
    for _ in $(seq 300); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && { echo "WARNING: pid $pid still running 30 s after SIG$sig; killing it" >&2; kill -KILL "$pid"; }
    wait "$pid" 2>/dev/null || true
    local left=() p
    for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || left+=("$p"); done
    PIDS=("${left[@]}")
}

# tile-proxy NAME on a free port, pinned to SERVER_CPU; LOGS=quiet (RUST_LOG=warn) or default
# (no RUST_LOG and no TILE_PROXY_ACCESS_LOG* at all: whatever tile-proxy does out of the box).
# Sets PROXY_PID, PROXY_URL, PROXY_LOG (stdout + stderr).
start_proxy() { # name memory-cache logs
    local name="$1" mem="$2" logs="$3" port unset=(-u RUST_LOG) v
    port="$(free_port)"
    PROXY_URL="http://127.0.0.1:$port"
    PROXY_LOG="$TMP/$name-proxy.log"
    LOG_FILES+=("$name-proxy.log")
    mkdir -p "$TMP/$name-proxy-cache"
    for v in $(compgen -e); do case "$v" in TILE_PROXY_ACCESS_LOG*) unset+=(-u "$v") ;; esac; done
    local loglevel=()
    [ "$logs" = quiet ] && loglevel=(RUST_LOG=warn)
    log "$name: starting tile-proxy on $PROXY_URL (core $SERVER_CPU, $WORKERS worker(s), memory tier $mem, logs: $logs)"
    env "${unset[@]}" "${loglevel[@]}" \
        HERE_API_KEY="$KEY" \
        TILE_PROXY_LISTEN="127.0.0.1:$port" \
        TILE_PROXY_RASTER_UPSTREAM="$UPSTREAM_URL" \
        TILE_PROXY_VECTOR_UPSTREAM="$UPSTREAM_URL" \
        TILE_PROXY_CACHE_DIR="$TMP/$name-proxy-cache" \
        TILE_PROXY_MEMORY_CACHE="$mem" \
        TILE_PROXY_DISK_CACHE=1GiB \
        TILE_PROXY_DEFAULTS__RATE_LIMIT=0 TILE_PROXY_WORKERS="$WORKERS" \
        taskset -c "$SERVER_CPU" "$PROXY_BIN" >"$PROXY_LOG" 2>&1 &
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    wait_ready "$name tile-proxy" "$PROXY_PID" "$PROXY_URL/ready"
}

# nginx (bench/nginx-bench.conf) on a free port, pinned to SERVER_CPU; ACCESS=off or json
# (access_log with the bench_json format, buffer=64k, into NGINX_ACCESS). Sets NGINX_PID (the
# master; the workers are found through it), NGINX_URL.
start_nginx() { # name access
    local name="$1" access="$2" port dir="$TMP/$1-nginx" user_line="" access_line="access_log off;"
    port="$(free_port)"
    NGINX_URL="http://127.0.0.1:$port"
    NGINX_ACCESS="$dir/access.log"
    mkdir -p "$dir/cache" "$dir/tmp"
    LOG_FILES+=("$name-nginx/nginx-error.log")
    [ "$(id -u)" -eq 0 ] && user_line="user root;" # as root nginx would otherwise drop to nobody, who cannot read $TMP
    [ "$access" = json ] && access_line="access_log $NGINX_ACCESS bench_json buffer=64k;"
    sed -e "s|@TMP@/nginx-cache|$dir/cache|g" -e "s|@TMP@/nginx-tmp|$dir/tmp|g" -e "s|@TMP@|$dir|g" \
        -e "s|@PORT@|$port|g" -e "s|@UPSTREAM_PORT@|$UPSTREAM_PORT|g" -e "s|@KEY@|$KEY|g" \
        -e "s|@USER_LINE@|$user_line|g" -e "s|@ACCESS_LOG@|$access_line|g" \
        "$BENCH_DIR/nginx-bench.conf" >"$dir/nginx.conf"
    "$NGINX" -t -q -p "$dir/" -e "$dir/nginx-error.log" -c "$dir/nginx.conf" >"$dir/nginx.out" 2>&1 ||
        { cat "$dir/nginx.out" >&2; die "nginx config test failed"; }
    log "$name: starting nginx on $NGINX_URL (core $SERVER_CPU, 1 worker, access log: $access)"
    taskset -c "$SERVER_CPU" "$NGINX" -p "$dir/" -e "$dir/nginx-error.log" -c "$dir/nginx.conf" \
        -g 'daemon off;' >>"$dir/nginx.out" 2>&1 &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
    wait_ready "$name nginx" "$NGINX_PID" "$NGINX_URL/ready"
}

# bench-ceiling over TILES_FILE, 1 worker, pinned to SERVER_CPU. Sets CEIL_PID, CEIL_URL.
start_ceiling() { # name
    local name="$1" port
    port="$(free_port)"
    CEIL_URL="http://127.0.0.1:$port"
    LOG_FILES+=("$name-ceiling.log")
    log "$name: starting bench-ceiling on $CEIL_URL (core $SERVER_CPU, 1 worker)"
    taskset -c "$SERVER_CPU" "$CEILING_BIN" --listen "127.0.0.1:$port" --tiles "$TILES_FILE" \
        --min-size "$MIN_SIZE" --max-size "$MAX_SIZE" --workers 1 ${CEILING_PROXY_HEADERS:+--proxy-headers} \
        >"$TMP/$name-ceiling.log" 2>&1 &
    CEIL_PID=$!
    PIDS+=("$CEIL_PID")
    wait_ready "$name bench-ceiling" "$CEIL_PID" "$CEIL_URL/ready"
}

# The ceiling must give the same bytes as the proxy: compares a few sampled tiles.
check_same_bodies() { # url-a url-b
    local path a b n=0
    while read -r path; do
        a="$(curl -sf --max-time 5 "$1$path" | cksum)" || die "cannot fetch $1$path"
        b="$(curl -sf --max-time 5 "$2$path" | cksum)" || die "cannot fetch $2$path"
        [ "$a" = "$b" ] || die "bench-ceiling and tile-proxy give different bytes for $path"
        n=$((n + 1))
    done < <(awk -v s="$(((TILES + 4) / 5))" '(NR - 1) % s == 0' "$TILES_FILE")
    echo "$n"
}

# X-Cache-Tier of 1 in 20 tiles: "disk-count memory-count other-count".
tier_sample() { # url
    local path d=0 m=0 o=0 tier
    while read -r path; do
        tier="$(curl -s --max-time 5 -o /dev/null -D - "$1$path" | tr -d '\r' |
            awk -F': *' 'tolower($1) == "x-cache-tier" { print tolower($2) }')"
        case "$tier" in disk) d=$((d + 1)) ;; memory) m=$((m + 1)) ;; *) o=$((o + 1)) ;; esac
    done < <(awk -v s="$(((TILES + 19) / 20))" '(NR - 1) % s == 0' "$TILES_FILE")
    echo "$d $m $o"
}

# Access lines in a log: tile-proxy's (target tile_proxy::access) and nginx's bench_json lines.
access_lines() { grep -cE 'tile_proxy::access|"message": ?"request"' "$1" || true; }

# ---- measurement bookkeeping -------------------------------------------------------------------
# Per run: R_<field>[server,round]; fields as run_wrk prints them, plus US (CPU µs per request).
declare -A R_RPS R_P50 R_P99 R_XFER R_REQ R_ERR R_CPU R_WCPU R_C0 R_C1 R_NS R_EX R_US R_UP

# measure SERVER ROUND URL DURATION pid...: one wrk run, results stored under [SERVER,ROUND].
measure() { # server round url duration pid...
    local srv="$1" r="$2" url="$3" dur="$4" line k="$1,$2" _s
    shift 4
    line="$(run_wrk "$srv" "$url" "$dur" "$TMP/$SCEN-wrk-$r-$srv.txt" "$@")"
    read -r "R_RPS[$k]" "R_P50[$k]" "R_P99[$k]" "R_XFER[$k]" "R_REQ[$k]" "R_ERR[$k]" "R_CPU[$k]" "R_WCPU[$k]" \
        "R_C0[$k]" "R_C1[$k]" _s "R_NS[$k]" "R_EX[$k]" <<<"$line"
    [ -n "${R_EX[$k]}" ] && [ "${R_REQ[$k]}" -gt 0 ] || die "$SCEN: $srv run $r failed (no requests)"
    R_US[$k]="$(awk -v ns="${R_NS[$k]}" -v n="${R_REQ[$k]}" 'BEGIN { printf "%.2f", ns / 1e3 / n }')"
}
# warm-up runs are measured the same way but kept under round 0 and left out of the medians
warmup_run() { # server url pid...
    local srv="$1" url="$2"
    shift 2
    [ "$WARMUP" -gt 0 ] || return 0
    measure "$srv" 0 "$url" "$WARMUP" "$@"
}

col() { # array-name server -> the measured rounds' values
    local -n arr="$1"
    local r out=()
    for r in $(seq 1 "$ROUNDS"); do out+=("${arr[$2,$r]}"); done
    echo "${out[*]}"
}
med() { # array-name server
    # shellcheck disable=SC2046 # one word per round
    median $(col "$1" "$2")
}
errors_of() { # server
    local r n=0
    for r in $(seq 0 "$ROUNDS"); do n=$((n + ${R_ERR[$1,$r]:-0})); done
    echo "$n"
}

ROWFMT='%-7s %-10s %9s %8s %8s %8s %8s %9s %8s %6s %6s %6s\n'
print_header() {
    printf "$ROWFMT" round server 'req/s' 'p50 ms' 'p99 ms' 'MiB/s' 'srv cpu%' 'cpu us/req' 'wrk cpu%' \
        "core$SERVER_CPU%" "core$LOAD_CPU%" errors
}
print_rows() { # server...
    local r s k
    for r in $(seq 1 "$ROUNDS"); do
        for s in "$@"; do
            k="$s,$r"
            printf "$ROWFMT" "$r" "$s" "$(fmt "${R_RPS[$k]}" 0)" "$(fmt "${R_P50[$k]}" 2)" "$(fmt "${R_P99[$k]}" 2)" \
                "$(fmt "${R_XFER[$k]}" 1)" "${R_CPU[$k]}" "$(fmt "${R_US[$k]}" 1)" "${R_WCPU[$k]}" \
                "${R_C0[$k]}" "${R_C1[$k]}" "${R_ERR[$k]}"
        done
    done
    for s in "$@"; do
        printf "$ROWFMT" median "$s" "$(fmt "$(med R_RPS "$s")" 0)" "$(fmt "$(med R_P50 "$s")" 2)" \
            "$(fmt "$(med R_P99 "$s")" 2)" "$(fmt "$(med R_XFER "$s")" 1)" "$(fmt "$(med R_CPU "$s")" 0)" \
            "$(fmt "$(med R_US "$s")" 1)" "$(fmt "$(med R_WCPU "$s")" 0)" "$(fmt "$(med R_C0 "$s")" 0)" \
            "$(fmt "$(med R_C1 "$s")" 0)" "$(errors_of "$s")"
    done
}
# "a / b: req/s xR  cpu/req xR  p99 xR" of the medians
ratio_line() { # a b
    printf '  %-22s req/s x%s   cpu/req x%s   p50 x%s   p99 x%s\n' "$1 / $2:" \
        "$(ratio "$(med R_RPS "$1")" "$(med R_RPS "$2")")" "$(ratio "$(med R_US "$1")" "$(med R_US "$2")")" \
        "$(ratio "$(med R_P50 "$1")" "$(med R_P50 "$2")")" "$(ratio "$(med R_P99 "$1")" "$(med R_P99 "$2")")"
}
# A target, checked on the medians and printed as met / NOT met; never fails the run (speed is
# the quiet machine's business, see README).
TARGETS_JSON=()
target() { # description value op threshold
    local ok
    ok="$(awk -v v="$2" -v t="$4" -v op="$3" 'BEGIN { if (v == "n/a") print "n/a"
        else if (op == ">=") print (v + 0 >= t + 0) ? "met" : "NOT met"; else print (v + 0 <= t + 0) ? "met" : "NOT met" }')"
    printf '  target: %-46s %8s %s %-6s %s\n' "$1" "$2" "$3" "$4" "$ok"
    TARGETS_JSON+=("{\"target\":\"$1 $3 $4\",\"value\":$(jnum "$2"),\"met\":$([ "$ok" = met ] && echo true || echo false)}")
}
srv_json() { # server
    local s="$1" f out=() name
    for f in RPS P50 P99 XFER REQ ERR CPU WCPU US EX; do
        case "$f" in RPS) name=req_per_s ;; P50) name=p50_ms ;; P99) name=p99_ms ;; XFER) name=transfer_mib_per_s ;;
            REQ) name=requests ;; ERR) name=errors ;; CPU) name=server_cpu_pct ;; WCPU) name=wrk_cpu_pct ;;
            US) name=cpu_us_per_req ;; EX) name=threads_exited ;; esac
        # shellcheck disable=SC2046 # one word per round
        out+=("\"$name\":$(json_arr $(col "R_$f" "$s"))")
    done
    printf '{"rounds":{%s},"median":{"req_per_s":%s,"p50_ms":%s,"p99_ms":%s,"transfer_mib_per_s":%s,"server_cpu_pct":%s,"cpu_us_per_req":%s}}' \
        "$(IFS=,; echo "${out[*]}")" "$(med R_RPS "$s")" "$(med R_P50 "$s")" "$(med R_P99 "$s")" \
        "$(med R_XFER "$s")" "$(med R_CPU "$s")" "$(med R_US "$s")"
}
SCEN_JSON=()
REPORT="$TMP/report.txt"
: >"$REPORT"

# ---- hit scenarios ---------------------------------------------------------------------------
hit_scenario() { # mem-quiet | mem-logged | disk
    SCEN="$1"
    local mem logs access desc
    case "$SCEN" in
        mem-quiet) TILES="$MEM_TILES" mem=512MiB logs=quiet access=off
            desc="memory-tier hits, per-request logging off (tile-proxy RUST_LOG=warn, nginx access_log off)" ;;
        mem-logged) TILES="$MEM_TILES" mem=512MiB logs=default access=json
            desc="memory-tier hits, logging on: tile-proxy default log settings, nginx JSON access_log buffer=64k" ;;
        disk) TILES="$DISK_TILES" mem="${DISK_MEMORY_MIB}MiB" logs=quiet access=off
            desc="disk-tier hits (working set ~${DISK_RATIO}x the ${DISK_MEMORY_MIB} MiB memory tier), logging off" ;;
    esac
    TILES_FILE="$TMP/$SCEN-tiles.txt"
    make_tiles
    log "==== $SCEN: $desc; $TILES tiles"

    start_proxy "$SCEN" "$mem" "$logs"
    start_nginx "$SCEN" "$access"
    start_ceiling "$SCEN"
    local up0 up1 up2 up3 passes=1 sampled
    up0="$(upstream_total)"
    warm "$SCEN-proxy" "$PROXY_URL"
    up1="$(upstream_total)"
    [ $((up1 - up0)) -eq "$TILES" ] || die "$SCEN: upstream saw $((up1 - up0)) requests while warming tile-proxy, expected $TILES"
    local bytes
    bytes="$(cat "$TMP/warm-$SCEN-proxy.bytes")"
    if [ "$SCEN" = disk ]; then
        # Second pass: every tile must now come from a tier (the disk tier drops entries when its
        # write queue overflows: then they are fetched again; a third pass must be clean), and
        # it reads the disk tier's files into the page cache.
        while :; do
            passes=$((passes + 1))
            warm "$SCEN-proxy-pass$passes" "$PROXY_URL"
            up2="$(upstream_total)"
            [ "$up2" -eq "$up1" ] && break
            echo "WARNING: $SCEN: warm pass $passes sent $((up2 - up1)) requests upstream (tiles dropped by the disk tier's write queue?)" >&2
            [ "$passes" -lt 3 ] || die "$SCEN: tile-proxy still misses after $passes warm passes"
            up1="$up2"
        done
    fi
    local tiers="" td tm to
    if [ "$SCEN" = disk ]; then
        # before check_hits: a disk hit may be promoted to the memory tier
        read -r td tm to < <(tier_sample "$PROXY_URL")
        tiers="X-Cache-Tier of 1 in 20 tiles after warming: disk $td, memory $tm, other $to"
        log "$SCEN: $tiers"
    fi
    sampled="$(check_hits "$SCEN tile-proxy" "$PROXY_URL")"
    up1="$(upstream_total)"
    warm "$SCEN-nginx" "$NGINX_URL"
    up2="$(upstream_total)"
    [ $((up2 - up1)) -eq "$TILES" ] || die "$SCEN: upstream saw $((up2 - up1)) requests while warming nginx, expected $TILES"
    [ "$SCEN" != disk ] || warm "$SCEN-nginx-pass2" "$NGINX_URL"
    check_hits "$SCEN nginx" "$NGINX_URL" >/dev/null
    local same
    same="$(check_same_bodies "$CEIL_URL" "$PROXY_URL")"
    up2="$(upstream_total)"
    [ "$up2" -eq $((up1 + TILES)) ] || die "$SCEN: upstream saw $((up2 - up1 - TILES)) unexpected requests while checking"
    log "$SCEN: caches warm ($((bytes / 1048576)) MiB of bodies); $sampled sampled tiles HIT on both; ceiling gives the same bytes for $same sampled tiles"

    local tiers_before="$TMP/$SCEN-metrics-before.txt" tiers_after="$TMP/$SCEN-metrics-after.txt"
    local nginx_tree proxy_tree ceil_tree
    read -r -a nginx_tree <<<"$(tree_pids "$NGINX_PID")"
    proxy_tree=("$PROXY_PID") ceil_tree=("$CEIL_PID")
    local load_before load_after r
    load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
    warmup_run tile-proxy "$PROXY_URL" "$PROXY_PID"
    warmup_run nginx "$NGINX_URL" "${nginx_tree[@]}"
    warmup_run ceiling "$CEIL_URL" "${ceil_tree[@]}"
    curl -sf --max-time 5 "$PROXY_URL/metrics" >"$tiers_before" || die "cannot read $PROXY_URL/metrics"
    up3="$(upstream_total)"
    for r in $(seq 1 "$ROUNDS"); do
        log "$SCEN round $r/$ROUNDS: tile-proxy, nginx, ceiling, ${DURATION}s each"
        measure tile-proxy "$r" "$PROXY_URL" "$DURATION" "${proxy_tree[@]}"
        measure nginx "$r" "$NGINX_URL" "$DURATION" "${nginx_tree[@]}"
        measure ceiling "$r" "$CEIL_URL" "$DURATION" "${ceil_tree[@]}"
    done
    load_after="$(cut -d' ' -f1-3 /proc/loadavg)"
    local up_during
    up_during=$(($(upstream_total) - up3))
    curl -sf --max-time 5 "$PROXY_URL/metrics" >"$tiers_after" || die "cannot read $PROXY_URL/metrics"
    local mem_hits disk_hits
    mem_hits=$(($(metric_sum "$tiers_after" tile_proxy_cache_hits_total 'tier="memory"') -
        $(metric_sum "$tiers_before" tile_proxy_cache_hits_total 'tier="memory"')))
    disk_hits=$(($(metric_sum "$tiers_after" tile_proxy_cache_hits_total 'tier="disk"') -
        $(metric_sum "$tiers_before" tile_proxy_cache_hits_total 'tier="disk"')))

    # Access lines: stop both servers cleanly first (tile-proxy SIGTERM, nginx SIGQUIT), so
    # whatever they buffer is on disk. Every request the script sent must have its line.
    local proxy_lines=0 nginx_lines=0 sent_min=0 sent_max=0 nginx_min=0 runs=0 log_json=null rr rc rp
    stop_server "$PROXY_PID" TERM
    stop_server "$NGINX_PID" QUIT
    stop_server "$CEIL_PID" TERM
    if [ "$logs" = default ]; then
        proxy_lines="$(access_lines "$PROXY_LOG")"
        nginx_lines="$(access_lines "$NGINX_ACCESS")"
        # sent for sure: the warm pass, the sampled tiles, wrk's completed requests; on top of
        # that (not counted here): wrk requests in flight when a run ends, readiness probes,
        # the body comparison, metrics scrapes, check retries.
        runs=$((ROUNDS + (WARMUP > 0 ? 1 : 0)))
        sent_min=$((TILES + sampled + $(col R_REQ tile-proxy | tr ' ' '+') + ${R_REQ[tile-proxy,0]:-0}))
        sent_max=$((sent_min + runs * CONNECTIONS + 200))
        nginx_min=$((TILES + sampled + $(col R_REQ nginx | tr ' ' '+') + ${R_REQ[nginx,0]:-0}))
        log_json="{\"tile_proxy_lines\":$proxy_lines,\"tile_proxy_requests_min\":$sent_min,\"nginx_lines\":$nginx_lines,\"nginx_requests_min\":$nginx_min}"
    fi

    {
        echo
        echo "== $SCEN: $desc"
        echo "  $TILES tiles (z12-14, ${MIN_SIZE}-${MAX_SIZE} B, $((bytes / 1048576)) MiB of bodies), tile-proxy memory tier $mem;" \
            "wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s, $ROUNDS round(s) A/B/C"
        echo "  upstream requests during measurement: $up_during; load average before/after: $load_before / $load_after"
        if [ "$SCEN" = disk ]; then
            echo "  tile-proxy hits by tier during measurement (tile_proxy_cache_hits_total): disk $disk_hits, memory $mem_hits" \
                "($(awk -v d="$disk_hits" -v m="$mem_hits" 'BEGIN { if (d + m) printf "%.0f%% disk", 100 * d / (d + m); else print "none" }'));" \
                "warm passes $passes"
            echo "  $tiers"
        fi
        echo
        print_header
        print_rows tile-proxy nginx ceiling
        echo
        ratio_line tile-proxy nginx
        ratio_line tile-proxy ceiling
        ratio_line nginx ceiling
        if [ "$logs" = default ]; then
            echo "  access lines after a clean stop: tile-proxy $proxy_lines for >= $sent_min requests" \
                "(x$(ratio "$proxy_lines" "$sent_min")), nginx $nginx_lines for >= $nginx_min (x$(ratio "$nginx_lines" "$nginx_min"))"
        fi
        TARGETS_JSON=()
        rr="$(ratio "$(med R_RPS tile-proxy)" "$(med R_RPS nginx)")"
        rc="$(ratio "$(med R_US tile-proxy)" "$(med R_US nginx)")"
        rp="$(ratio "$(med R_P99 tile-proxy)" "$(med R_P99 nginx)")"
        case "$SCEN" in
            mem-logged)
                target "req/s tile-proxy / nginx" "$rr" ">=" 1.2
                target "cpu/req tile-proxy / nginx" "$rc" "<=" 1
                target "p99 tile-proxy / nginx (at -c$CONNECTIONS)" "$rp" "<=" 1 ;;
            mem-quiet)
                target "req/s tile-proxy / nginx" "$rr" ">=" 1.3
                target "req/s tile-proxy / ceiling" "$(ratio "$(med R_RPS tile-proxy)" "$(med R_RPS ceiling)")" ">=" 0.9
                target "p99 tile-proxy / nginx (at -c$CONNECTIONS)" "$rp" "<=" 1 ;;
            disk)
                target "req/s tile-proxy / nginx" "$rr" ">=" 0.8 ;;
        esac
    } >"$TMP/$SCEN-section.txt"
    tee -a "$REPORT" <"$TMP/$SCEN-section.txt"

    SCEN_JSON+=("\"$SCEN\":{\"tiles\":$TILES,\"body_bytes\":$bytes,\"memory_tier\":\"$mem\",\"connections\":$CONNECTIONS,\"tile_proxy_logs\":\"$logs\",\"nginx_access_log\":\"$access\",\"upstream_requests_during_measurement\":$up_during,\"hits_by_tier\":{\"memory\":$mem_hits,\"disk\":$disk_hits},\"access_log\":$log_json,\"loadavg_before\":\"$load_before\",\"loadavg_after\":\"$load_after\",\"servers\":{\"tile-proxy\":$(srv_json tile-proxy),\"nginx\":$(srv_json nginx),\"ceiling\":$(srv_json ceiling)},\"ratios\":{\"tile_proxy_over_nginx\":{\"req_per_s\":$(jnum "$(ratio "$(med R_RPS tile-proxy)" "$(med R_RPS nginx)")"),\"cpu_per_req\":$(jnum "$(ratio "$(med R_US tile-proxy)" "$(med R_US nginx)")"),\"p99\":$(jnum "$(ratio "$(med R_P99 tile-proxy)" "$(med R_P99 nginx)")")},\"tile_proxy_over_ceiling\":{\"req_per_s\":$(jnum "$(ratio "$(med R_RPS tile-proxy)" "$(med R_RPS ceiling)")"),\"cpu_per_req\":$(jnum "$(ratio "$(med R_US tile-proxy)" "$(med R_US ceiling)")"),\"p99\":$(jnum "$(ratio "$(med R_P99 tile-proxy)" "$(med R_P99 ceiling)")")}},\"targets\":[$(IFS=,; echo "${TARGETS_JSON[*]}")]}")

    # plumbing checks (never speed)
    local e=$(($(errors_of tile-proxy) + $(errors_of nginx) + $(errors_of ceiling)))
    [ "$e" -eq 0 ] || die "$SCEN: $e errors (non-2xx or socket errors) during the wrk runs"
    [ "$up_during" -eq 0 ] || die "$SCEN: upstream saw $up_during requests during measurement: not every request was a hit"
    if [ "$SCEN" = disk ]; then
        [ "$disk_hits" -gt 0 ] || die "$SCEN: no disk-tier hit during measurement"
        [ "$td" -gt 0 ] || die "$SCEN: no sampled tile answered X-Cache-Tier: disk ($tiers)"
        [ "$disk_hits" -ge "$mem_hits" ] ||
            echo "WARNING: $SCEN: only $disk_hits of $((disk_hits + mem_hits)) hits came from the disk tier" >&2
    fi
    if [ "$logs" = default ]; then
        [ "$proxy_lines" -ge "$sent_min" ] && [ "$proxy_lines" -le "$sent_max" ] ||
            die "$SCEN: tile-proxy wrote $proxy_lines access lines for $sent_min..$sent_max requests"
        [ "$nginx_lines" -ge "$nginx_min" ] && [ "$nginx_lines" -le $((nginx_min + runs * CONNECTIONS + 200)) ] ||
            die "$SCEN: nginx wrote $nginx_lines access lines for >= $nginx_min requests"
    fi
}

# ---- miss scenario ---------------------------------------------------------------------------
MISS_RUN=0
miss_run() { # server round url pid...
    local srv="$1" r="$2" url="$3" up0 up1 dur="$DURATION" k="$1,$2"
    shift 3
    [ "$r" -gt 0 ] || dur="$WARMUP"
    MISS_RUN=$((MISS_RUN + 1))
    export MISS_BASE=$((MISS_RUN * 268435456)) MISS_QUERY=""
    [ "$srv" = direct ] && MISS_QUERY="?apiKey=$KEY"
    up0="$(upstream_total)"
    local CONNECTIONS="$MISS_CONNECTIONS" WRK_SCRIPT="$BENCH_DIR/misses.lua"
    measure "$srv" "$r" "$url" "$dur" "$@"
    up1="$(upstream_total)"
    R_UP[$k]=$((up1 - up0))
    # every request a miss: the upstream saw each one wrk counted, plus at most the ones in
    # flight when wrk stopped
    [ "${R_UP[$k]}" -ge "${R_REQ[$k]}" ] && [ "${R_UP[$k]}" -le $((R_REQ[$k] + MISS_CONNECTIONS)) ] ||
        die "miss: $srv run $r: upstream saw ${R_UP[$k]} requests for ${R_REQ[$k]} wrk requests"
}

miss_scenario() {
    SCEN=miss
    log "==== miss: every request a new z18 tile, $MISS_CONNECTIONS connections"
    start_proxy miss 512MiB quiet
    start_nginx miss off
    local nginx_tree r load_before load_after
    read -r -a nginx_tree <<<"$(tree_pids "$NGINX_PID")"
    load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
    if [ "$WARMUP" -gt 0 ]; then
        miss_run direct 0 "$UPSTREAM_URL" "$UPSTREAM_PID"
        miss_run tile-proxy 0 "$PROXY_URL" "$PROXY_PID"
        miss_run nginx 0 "$NGINX_URL" "${nginx_tree[@]}"
    fi
    for r in $(seq 1 "$ROUNDS"); do
        log "miss round $r/$ROUNDS: direct, tile-proxy, nginx, ${DURATION}s each"
        miss_run direct "$r" "$UPSTREAM_URL" "$UPSTREAM_PID"
        miss_run tile-proxy "$r" "$PROXY_URL" "$PROXY_PID"
        miss_run nginx "$r" "$NGINX_URL" "${nginx_tree[@]}"
    done
    load_after="$(cut -d' ' -f1-3 /proc/loadavg)"
    stop_server "$PROXY_PID" TERM
    stop_server "$NGINX_PID" QUIT

    local dp50 dp99 pp50 pp99 np50 np99 add_p add_n add_p99 add_n99
    dp50="$(med R_P50 direct)" dp99="$(med R_P99 direct)"
    pp50="$(med R_P50 tile-proxy)" pp99="$(med R_P99 tile-proxy)"
    np50="$(med R_P50 nginx)" np99="$(med R_P99 nginx)"
    add_p="$(awk -v a="$pp50" -v b="$dp50" 'BEGIN { printf "%.3f", a - b }')"
    add_n="$(awk -v a="$np50" -v b="$dp50" 'BEGIN { printf "%.3f", a - b }')"
    add_p99="$(awk -v a="$pp99" -v b="$dp99" 'BEGIN { printf "%.3f", a - b }')"
    add_n99="$(awk -v a="$np99" -v b="$dp99" 'BEGIN { printf "%.3f", a - b }')"
    local ups=() s
    for s in direct tile-proxy nginx; do ups+=("$s $(($(col R_UP "$s" | tr ' ' '+')))/$(($(col R_REQ "$s" | tr ' ' '+')))"); done
    {
        echo
        echo "== miss: every request a new tile (cache miss), wrk -t$THREADS -c$MISS_CONNECTIONS -d${DURATION}s, $ROUNDS round(s) A/B/C"
        echo "  direct = wrk straight to the test upstream (with its apiKey); its 'srv' columns are the upstream's own CPU."
        echo "  tile-proxy / nginx rows: the proxy's CPU only (the upstream's is excluded); logging off on both"
        echo "  upstream requests / wrk requests per server (measured rounds): ${ups[*]}"
        echo "  load average before/after: $load_before / $load_after"
        echo
        print_header
        print_rows direct tile-proxy nginx
        echo
        printf '  added latency over direct (medians):  tile-proxy p50 %+.3f ms  p99 %+.3f ms;  nginx p50 %+.3f ms  p99 %+.3f ms\n' \
            "$add_p" "$add_p99" "$add_n" "$add_n99"
        printf '  CPU per miss: tile-proxy %s us, nginx %s us (x%s); upstream %s us\n' "$(fmt "$(med R_US tile-proxy)" 1)" \
            "$(fmt "$(med R_US nginx)" 1)" "$(ratio "$(med R_US tile-proxy)" "$(med R_US nginx)")" "$(fmt "$(med R_US direct)" 1)"
        ratio_line tile-proxy nginx
        TARGETS_JSON=()
        target "added p50 latency tile-proxy - direct, ms" "$add_p" "<=" 1
    } >"$TMP/miss-section.txt"
    tee -a "$REPORT" <"$TMP/miss-section.txt"
    SCEN_JSON+=("\"miss\":{\"connections\":$MISS_CONNECTIONS,\"loadavg_before\":\"$load_before\",\"loadavg_after\":\"$load_after\",\"servers\":{\"direct\":$(srv_json direct),\"tile-proxy\":$(srv_json tile-proxy),\"nginx\":$(srv_json nginx)},\"upstream_requests\":{\"direct\":$(json_arr "$(col R_UP direct | tr ' ' ',')"),\"tile-proxy\":$(json_arr "$(col R_UP tile-proxy | tr ' ' ',')"),\"nginx\":$(json_arr "$(col R_UP nginx | tr ' ' ',')")},\"added_ms\":{\"tile_proxy_p50\":$add_p,\"tile_proxy_p99\":$add_p99,\"nginx_p50\":$add_n,\"nginx_p99\":$add_n99},\"cpu_us_per_miss\":{\"tile_proxy\":$(med R_US tile-proxy),\"nginx\":$(med R_US nginx),\"upstream\":$(med R_US direct)},\"ratios\":{\"tile_proxy_over_nginx\":{\"cpu_per_req\":$(jnum "$(ratio "$(med R_US tile-proxy)" "$(med R_US nginx)")"),\"p50\":$(jnum "$(ratio "$pp50" "$np50")"),\"p99\":$(jnum "$(ratio "$pp99" "$np99")")}},\"targets\":[$(IFS=,; echo "${TARGETS_JSON[*]}")]}")
    local e=$(($(errors_of direct) + $(errors_of tile-proxy) + $(errors_of nginx)))
    [ "$e" -eq 0 ] || die "miss: $e errors (non-2xx or socket errors) during the wrk runs"
}

# ---- run -------------------------------------------------------------------------------------
{
    echo
    echo "tile-proxy / nginx proxy_cache / bare actix ceiling ($COMMIT, $STAMP)$([ "$SMOKE" = 1 ] && echo "  SMOKE RUN: plumbing only, numbers meaningless")"
    echo "  scenarios: $SCENARIOS"
    echo "  servers pinned to core $SERVER_CPU (tile-proxy $WORKERS worker(s), nginx 1 worker, ceiling 1 worker$([ -n "${CEILING_PROXY_HEADERS:-}" ] && echo ", with tile-proxy's headers")); wrk + upstream on core $LOAD_CPU; loopback"
    echo "  binaries: $TARGET_DIR/release ($([ "$SKIP_BUILD" = 1 ] && echo "prebuilt, SKIP_BUILD=1" || echo "built by this run")); $NGINX_VERSION; wrk $WRK_VERSION"
    echo "  cpu us/req: server CPU (all threads of the server's process tree, from $CPU_SOURCE) / wrk's requests"
} | tee -a "$REPORT"
for s in $SCENARIOS; do
    case "$s" in
        miss) miss_scenario ;;
        *) hit_scenario "$s" ;;
    esac
done

mkdir -p "$BENCH_DIR/out"
JSON="$BENCH_DIR/out/result-$STAMP.json"
{
    printf '{"timestamp":"%s","commit":"%s","smoke":%s,' "$STAMP" "$COMMIT" "$([ "$SMOKE" = 1 ] && echo true || echo false)"
    printf '"config":{"duration_s":%s,"rounds":%s,"connections":%s,"miss_connections":%s,"wrk_threads":%s,"warmup_s":%s,' \
        "$DURATION" "$ROUNDS" "$CONNECTIONS" "$MISS_CONNECTIONS" "$THREADS" "$WARMUP"
    printf '"tiles":%s,"disk_tiles":%s,"disk_memory_mib":%s,"disk_ratio":%s,"min_size":%s,"max_size":%s,' \
        "$MEM_TILES" "$DISK_TILES" "$DISK_MEMORY_MIB" "$DISK_RATIO" "$MIN_SIZE" "$MAX_SIZE"
    printf '"tile_proxy_workers":%s,"server_cpu":%s,"load_cpu":%s,"cpu_source":"%s","nginx_version":"%s","wrk_version":"%s"},' \
        "$WORKERS" "$SERVER_CPU" "$LOAD_CPU" "$CPU_SOURCE" "$NGINX_VERSION" "$WRK_VERSION"
    printf '"scenarios":{%s}}\n' "$(IFS=,; echo "${SCEN_JSON[*]}")"
} >"$JSON"
cp "$REPORT" "$BENCH_DIR/out/result-$STAMP.txt"
echo "JSON: $JSON (table: ${JSON%.json}.txt)" >&2
