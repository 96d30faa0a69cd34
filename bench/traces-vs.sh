#!/usr/bin/env bash
# tile-proxy, nginx proxy_cache and Varnish side by side on the bench/trace.py traces (issue #23
# part 4). For each trace (zipf alpha ALPHA; viewport; zipf + a scan of 5x the memory tier, built
# as bench/eviction.sh builds them) one test-upstream (--sizes TRACE, --latency-ms LATENCY_MS, on
# LOAD_CPU) serves, in turn, each server started fresh (cold cache, empty directories) and pinned
# to SERVER_CPU; bench-replay (on LOAD_CPU) sends the trace in order, exactly once, over
# CONNECTIONS keep-alive connections.
#   M = MEM_PERCENT (5) % and D = DISK_PERCENT (50) % of the trace's distinct bytes (scan: of its
#   zipf base, as in eviction.sh); M is at least 1 MiB and D at least 16 MiB (varnishd's smallest
#   malloc storage, tile-proxy's smallest disk tier: only the smoke's traces are that small).
#   tile-proxy  default settings (memory_eviction s3fifo), memory tier M, disk tier D (temp dir),
#               TILE_PROXY_WORKERS=1, access log off, client rate limit off
#   nginx       Debian nginx, 1 worker, proxy_cache_path max_size=D (its memory is the OS page
#               cache), proxy_cache_lock NGINX_CACHE_LOCK (on: one upstream fetch a tile; its
#               waiters poll the cache every 500 ms), access_log off,
#               X-Cache: $upstream_cache_status; NGINX_MANAGER strict (default): its cache
#               manager may delete as fast as it likes once it runs (manager_files=10000
#               manager_sleep=10ms manager_threshold=1000ms); lazy: nginx's own defaults (100
#               files an iteration, 50 ms sleeps). In both, nginx 1.22 held 1.5-2x D at the end
#               of these 5-30 s replays (its manager looks at the size every 10 s at most, and
#               often deleted nothing), so:
#   MATCH_NGINX (1) when nginx held more than D (the median over the runs of its largest size
#               in each), tile-proxy replays the trace once more with a disk tier of that size
#               (row "tp@nginx"): the upstream requests of both at the same bytes held
#   varnish     Debian varnishd, 1 thread pool, VARNISH_STORAGE malloc+file (default): malloc M
#               plus file D - M (D in all; Varnish has no tiering: new objects go round-robin
#               to the two), or file: one file storage of D (its memory: the page cache); TTL
#               1 d for 200s, X-Cache HIT/MISS from obj.hits; no varnishncsa/varnishlog attached
# After each server its files are removed and `sync` runs, so no server starts while the previous
# one's dirty pages are being written back.
# RUNS (1) replays per trace and server, the servers taking turns (run 1: tile-proxy, nginx,
# varnish; run 2 starts with nginx, ...); with RUNS > 1 every run's row is printed, then the
# medians, and the ratios and targets are of the medians.
# Per server and trace: req/s, p50/p99, server CPU us per request (/proc stat utime+stime of the
# whole process tree: nginx master + workers + cache manager, varnishd manager + child), hit
# ratio (X-Cache: HIT per answer), upstream requests (the test upstream's /__stats delta); then
# `held MB` (what the server held: nginx, the largest du of its cache directory, sampled every
# second during the replay and at its end; Varnish, its storages' varnishstat g_bytes at the end;
# - for tile-proxy, whose disk tier is D by construction); then the
# tile-proxy / nginx and tile-proxy / varnish ratios and the targets (tile-proxy >= 1.2x nginx's
# req/s and >= 1.0x Varnish's, upstream requests <= each of theirs).
#
# Usage: bench/traces-vs.sh [--smoke]
#   --smoke  2,000-request traces, debug binaries by default: plumbing only. Exits non-zero if
#            any server answers a request with an error, a status other than 200 or a body size
#            other than the trace's (the full run checks the same). Varnish is skipped with a
#            message when varnishd is not installed (or VARNISHD is set empty).
# Env: REQUESTS (200000), DISTINCT (50000), ALPHA (1.0), SESSIONS (REQUESTS/100), SEED (1),
#      TRACES ("zipf viewport scan"), SERVERS ("tile-proxy nginx varnish"), MEM_PERCENT (5),
#      DISK_PERCENT (50), LATENCY_MS (0), NGINX_CACHE_LOCK (on), NGINX_MANAGER (strict),
#      VARNISH_STORAGE (malloc+file), RUNS (1), MATCH_NGINX (1),
#      CONNECTIONS (64), WORKERS (1), SERVER_CPU / LOAD_CPU (0 / 1), BIN_DIR or TARGET_DIR /
#      SKIP_BUILD (as eviction.sh), RUN_TIMEOUT (600 s a replay), KEEP_TMP=1.
# Results: bench/out/traces-vs-<UTC>.tsv and .txt.
set -euo pipefail
BENCH_DIR="$(cd "$(dirname "$0")" && pwd)"
REPO_ROOT="$(cd "$BENCH_DIR/.." && pwd)"
BENCH_NAME=traces-vs.sh
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

smoke_flag "$BENCH_NAME" "$@"
common_defaults
if [ "$SMOKE" = 1 ]; then
    REQUESTS="${REQUESTS:-2000}" DISTINCT="${DISTINCT:-500}" SESSIONS="${SESSIONS:-40}" PROFILE="${PROFILE:-debug}"
fi
REQUESTS="${REQUESTS:-200000}"
DISTINCT="${DISTINCT:-50000}"
SESSIONS="${SESSIONS:-$((REQUESTS / 100 + 1))}"
ALPHA="${ALPHA:-1.0}"
SEED="${SEED:-1}"
TRACES="${TRACES:-zipf viewport scan}"
SERVERS="${SERVERS:-tile-proxy nginx varnish}"
MEM_PERCENT="${MEM_PERCENT:-5}"
DISK_PERCENT="${DISK_PERCENT:-50}"
LATENCY_MS="${LATENCY_MS:-0}"
NGINX_CACHE_LOCK="${NGINX_CACHE_LOCK:-on}"
NGINX_MANAGER="${NGINX_MANAGER:-strict}"
RUNS="${RUNS:-1}"
MATCH_NGINX="${MATCH_NGINX:-1}"
VARNISH_STORAGE="${VARNISH_STORAGE:-malloc+file}"
CONNECTIONS="${CONNECTIONS:-64}"
WORKERS="${WORKERS:-1}"
RUN_TIMEOUT="${RUN_TIMEOUT:-600}"
PROFILE="${PROFILE:-release}"
for v in REQUESTS DISTINCT SESSIONS SEED LATENCY_MS RUNS CONNECTIONS WORKERS RUN_TIMEOUT SERVER_CPU LOAD_CPU; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a whole number (got '${!v}')"
done
for v in MEM_PERCENT DISK_PERCENT; do [[ "${!v}" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "$v: '${!v}' is not a number"; done
awk -v m="$MEM_PERCENT" -v d="$DISK_PERCENT" 'BEGIN { exit !(m > 0 && d > m) }' || die "need 0 < MEM_PERCENT < DISK_PERCENT"
if [ "$REQUESTS" -lt 100 ] || [ "$REQUESTS" -gt 50000000 ]; then die "REQUESTS must be 100..50000000"; fi
for t in $TRACES; do
    case "$t" in zipf | viewport | scan) ;; *) die "unknown trace '$t' (zipf, viewport, scan)" ;; esac
done
case "$VARNISH_STORAGE" in malloc+file | file) ;; *) die "VARNISH_STORAGE must be malloc+file or file" ;; esac
case "$NGINX_CACHE_LOCK" in on | off) ;; *) die "NGINX_CACHE_LOCK must be on or off" ;; esac
case "$MATCH_NGINX" in 0 | 1) ;; *) die "MATCH_NGINX must be 0 or 1" ;; esac
case "$NGINX_MANAGER" in
    strict) NGINX_MANAGER_PARAMS="manager_files=10000 manager_sleep=10ms manager_threshold=1000ms" ;;
    lazy) NGINX_MANAGER_PARAMS="" ;;
    *) die "NGINX_MANAGER must be strict or lazy" ;;
esac
if [ "$RUNS" -lt 1 ] || [ "$RUNS" -gt 20 ]; then die "RUNS must be 1..20"; fi
for s in $SERVERS; do
    case "$s" in tile-proxy | nginx | varnish) ;; *) die "unknown server '$s' (tile-proxy, nginx, varnish)" ;; esac
done
for tool in python3 curl taskset timeout; do command -v "$tool" >/dev/null || die "$tool not found"; done

NGINX="$(command -v nginx 2>/dev/null || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true)"
VARNISHD="${VARNISHD-$(command -v varnishd 2>/dev/null || { [ -x /usr/sbin/varnishd ] && echo /usr/sbin/varnishd; } || true)}"
has_server() { case " $SERVERS " in *" $1 "*) return 0 ;; esac; return 1; }
drop_server() { SERVERS="$(tr ' ' '\n' <<<"$SERVERS" | grep -vx "$1" | tr '\n' ' ')"; }
if has_server nginx && [ -z "$NGINX" ]; then die "nginx not found (apt-get install nginx, or SERVERS without nginx)"; fi
if has_server varnish && [ -z "$VARNISHD" ]; then
    log "varnishd not installed (apt-get install varnish): skipping Varnish"
    drop_server varnish
fi
NGINX_VERSION="$([ -z "$NGINX" ] || "$NGINX" -v 2>&1 | sed 's/^nginx version: //')"
VARNISH_VERSION="$([ -z "$VARNISHD" ] || "$VARNISHD" -V 2>&1 | sed -n 's/^varnishd (\(varnish-[^ ]*\).*/\1/p')"

replay_binaries
bench_tmp
# shellcheck disable=SC2034 # read by cleanup (lib.sh)
LOG_FILES=(upstream.log proxy.log replay.err nginx/error.log varnish.log)
T_START=$(date +%s)

# ---- the servers ----
# Each sets SERVER_URL and SERVER_PID (the root of the process tree whose CPU is counted).
start_tile_proxy() { # memory-bytes disk-bytes
    start_replay_proxy s3fifo "$1" "$2"
    SERVER_URL="$PROXY_URL" SERVER_PID="$PROXY_PID"
}

start_nginx_cache() { # disk-bytes
    local port dir="$TMP/nginx" user_line=""
    port="$(free_port "$UPSTREAM_PORT")"
    rm -rf "$dir"
    mkdir -p "$dir/cache" "$dir/tmp"
    [ "$(id -u)" -ne 0 ] || user_line="user root;" # as root nginx would drop to nobody, who cannot read $TMP
    cat >"$dir/nginx.conf" <<EOF
$user_line
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65s;
    keepalive_requests 1000000;
    client_body_temp_path $dir/tmp/client_body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    # 1 MiB of keys_zone holds ~8,000 keys: 64m for ~500,000 tiles.
    proxy_cache_path $dir/cache levels=1:2 keys_zone=tiles:64m max_size=$1 inactive=1d use_temp_path=off $NGINX_MANAGER_PARAMS;
    upstream tiles_upstream {
        server 127.0.0.1:$UPSTREAM_PORT;
        keepalive 32;
    }
    server {
        listen 127.0.0.1:$port;
        location = /ready { return 200 "ok\n"; }
        # tile-proxy's legacy route: /here-proxy/mc/{z}/{x}/{y}/{format} -> /v3/base/mc/..., key added.
        location ~ ^/here-proxy/mc/([0-9]+/[0-9]+/[0-9]+/[a-z0-9]+)\$ {
            proxy_pass http://tiles_upstream/v3/base/mc/\$1?\$args&apiKey=$KEY;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host 127.0.0.1:$UPSTREAM_PORT;
            proxy_cache tiles;
            proxy_cache_key \$uri\$is_args\$args;
            proxy_cache_valid 200 1d;
            proxy_cache_lock $NGINX_CACHE_LOCK;
            add_header X-Cache \$upstream_cache_status always;
        }
        location / { return 404; }
    }
}
EOF
    "$NGINX" -t -q -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf" >"$dir/nginx.out" 2>&1 ||
        { cat "$dir/nginx.out" >&2; die "nginx config test failed"; }
    taskset -c "$SERVER_CPU" "$NGINX" -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf" -g 'daemon off;' \
        >>"$dir/nginx.out" 2>&1 &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    SERVER_URL="http://127.0.0.1:$port"
    wait_ready nginx "$SERVER_PID" "$SERVER_URL/ready"
}

start_varnish() { # memory-bytes disk-bytes
    local port dir="$TMP/varnish"
    port="$(free_port "$UPSTREAM_PORT")"
    rm -rf "$dir"
    mkdir -p "$dir"
    chmod 755 "$dir"
    local storage=(-s "mem=malloc,${1}b" -s "disk=file,$dir/storage.bin,$(($2 - $1))b")
    [ "$VARNISH_STORAGE" = malloc+file ] || storage=(-s "disk=file,$dir/storage.bin,${2}b")
    cat >"$dir/bench.vcl" <<EOF
vcl 4.1;
backend up { .host = "127.0.0.1"; .port = "$UPSTREAM_PORT"; }
sub vcl_recv {
    if (req.url == "/ready") { return (synth(200, "ok")); }
    if (req.url !~ "^/here-proxy/mc/[0-9]+/[0-9]+/[0-9]+/[a-z0-9]+(\?|$)") { return (synth(404)); }
    unset req.http.Cookie;
    unset req.http.Authorization;
    return (hash);
}
sub vcl_backend_fetch {
    set bereq.url = regsub(bereq.url, "^/here-proxy/mc/", "/v3/base/mc/");
    if (bereq.url ~ "\?") { set bereq.url = bereq.url + "&apiKey=$KEY"; }
    else { set bereq.url = bereq.url + "?apiKey=$KEY"; }
}
sub vcl_backend_response {
    if (beresp.status == 200) {
        set beresp.ttl = 1d;
        set beresp.grace = 0s;
    } else {
        set beresp.uncacheable = true;
        set beresp.ttl = 0s;
    }
    return (deliver);
}
sub vcl_deliver {
    if (obj.hits > 0) { set resp.http.X-Cache = "HIT"; } else { set resp.http.X-Cache = "MISS"; }
}
EOF
    taskset -c "$SERVER_CPU" "$VARNISHD" -F -n "$dir/work" -a "127.0.0.1:$port" -f "$dir/bench.vcl" \
        "${storage[@]}" \
        -p thread_pools=1 -p default_ttl=86400 >"$TMP/varnish.log" 2>&1 &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    SERVER_URL="http://127.0.0.1:$port"
    wait_ready varnish "$SERVER_PID" "$SERVER_URL/ready"
}

# Bytes the server holds at the end of a replay: nginx, du of its cache directory; varnish, its
# storages' g_bytes (varnishstat); tile-proxy: - (bounded by construction: a disk tier of D).
cache_bytes() { # server
    case "$1" in
        tile-proxy) echo - ;; # its disk tier's files have size D from the start (no occupancy gauge)
        # (its cache manager may delete a file while du walks the tree: du then fails, its total stands)
        nginx) { du -sb "$TMP/nginx/cache" 2>/dev/null || true; } | tail -n1 | cut -f1 ;;
        varnish) { timeout 10 varnishstat -n "$TMP/varnish/work" -1 -f 'SMA.*.g_bytes' -f 'SMF.*.g_bytes' 2>/dev/null || true; } |
            awk '{ s += $2 } END { printf "%d\n", s }' ;;
    esac
}

met() { # value op bound -> met / NOT met
    awk -v a="$1" -v op="$2" -v b="$3" 'BEGIN { if (a == "n/a") { print "n/a"; exit }
        ok = (op == ">=") ? (a + 0 >= b) : (a + 0 <= b); print ok ? "met" : "NOT met" }'
}


# ---- the runs ----
results_open traces-vs $'trace\trun\tserver\trequests\tmemory_bytes\tdisk_bytes\trps\tp50_ms\tp99_ms\tcpu_us_per_req\thit_ratio\thot_hit_ratio\tupstream_requests\terrors\theld_bytes'

out "bench/traces-vs.sh$([ "$SMOKE" = 1 ] && echo ' --smoke (plumbing only, numbers meaningless)'): $(machine)"
out "servers on core $SERVER_CPU, bench-replay + test-upstream (latency $LATENCY_MS ms) on core $LOAD_CPU; $CONNECTIONS connections, trace in order, each line once; seed $SEED"
out "tile-proxy $PROXY_BIN (memory_eviction s3fifo, $WORKERS worker(s), disk tier on)${NGINX_VERSION:+; $NGINX_VERSION}${VARNISH_VERSION:+; $VARNISH_VERSION ($VARNISH_STORAGE storage)}"

# One replay of the trace through one server, started fresh: prints its row, appends it to the
# TSV, checks it; sets rps p50 p99 cpu hit hot upstream held held_mb for the caller.
replay_server() { # server run-label disk-bytes [row-label]
    local server="$1" label="${4:-$1}"
    case "$server" in
        tile-proxy) start_tile_proxy "$mem" "$3" ;;
        nginx) start_nginx_cache "$disk" ;;
        varnish) start_varnish "$mem" "$disk" ;;
    esac
    up0="$(upstream_total)"
    c0="$(cpu_ticks "$SERVER_PID")"
    rc=0
    # nginx's cache grows past max_size and is trimmed later: its size is sampled every second
    # during the replay (du, on LOAD_CPU), and the largest sample is what it held.
    local sampler="" peak_file="$TMP/peak_bytes"
    echo 0 >"$peak_file"
    if [ "$server" = nginx ]; then
        (
            peak=0
            while :; do
                b="$(cache_bytes nginx)"
                [ "${b:-0}" -le "$peak" ] || { peak="$b"; echo "$peak" >"$peak_file"; }
                sleep 1
            done
        ) &
        sampler=$!
        taskset -pc "$LOAD_CPU" "$sampler" >/dev/null
    fi
    timeout "$RUN_TIMEOUT" taskset -c "$LOAD_CPU" "$REPLAY_BIN" --url "$SERVER_URL" --trace "$TMP/$name.trace" \
        --connections "$CONNECTIONS" >"$TMP/replay.out" 2>"$TMP/replay.err" || rc=$?
    c1="$(cpu_ticks "$SERVER_PID")"
    up1="$(upstream_total)"
    [ -z "$sampler" ] || { kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null || true; }
    held="$(cache_bytes "$server")"
    [ "$server" != nginx ] || held="$(awk -v a="$held" -v b="$(cat "$peak_file")" 'BEGIN { printf "%d", (b + 0 > a + 0) ? b : a }')"
    stop_pid "$SERVER_PID"
    # Its files go, and what is still dirty is written now: the next server does not pay for
    # this one's writeback (kernel flusher threads are not pinned, they can run on SERVER_CPU).
    rm -rf "$TMP/cache" "$TMP/nginx" "$TMP/varnish"
    timeout 300 sync || log "sync did not finish within 300 s"
    [ "$rc" = 0 ] || { cat "$TMP/replay.err" >&2; die "bench-replay failed ($trace, $server, exit $rc)"; }
    n="$(r requests)" errs="$(r errors)" ok200="$(r status_200)" mism="$(r size_mismatch)"
    rps="$(r rps)" p50="$(r p50_ms)" p99="$(r p99_ms)"
    hit="$(awk -v h="$(r hits)" -v n="$n" 'BEGIN { printf "%.4f", h / n }')"
    hot="$(r hot_hit_ratio)"
    upstream=$((up1 - up0))
    cpu="$(awk -v t=$((c1 - c0)) -v k="$CLK_TCK" -v n="$n" 'BEGIN { printf "%.1f", t / k * 1e6 / n }')"
    held_mb="$(awk -v b="$held" 'BEGIN { if (b == "-") print "-"; else printf "%.1f", b / 1048576 }')"
    out "$(printf '   %-10s %4s %9.0f %8.2f %8.2f %10s %9s %8s %9d %6d %9s' "$label" "$2" "$rps" "$p50" "$p99" "$cpu" "$hit" "$hot" \
        "$upstream" "$errs" "$held_mb")"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$trace" "$2" "$server" "$n" "$mem" "$3" "$(r rps)" \
        "$(r p50_ms)" "$(r p99_ms)" "$cpu" "$hit" "$hot" "$upstream" "$errs" "$held" >>"$TSV"
    [ "$n" = "$reqs" ] || fail "$trace $server: $n requests replayed, trace has $reqs"
    if [ "$errs" != 0 ] || [ "${ok200:-0}" != "$n" ]; then
        fail "$trace $server: $errs errors, ${ok200:-0} of $n answered 200 ($(tr ' ' '\n' <"$TMP/replay.out" | grep '^status_' | tr '\n' ' '))"
    fi
    [ "$mism" = 0 ] || fail "$trace $server: $mism bodies differ from the trace's size ($(tail -n 3 "$TMP/replay.err" | tr '\n' ' '))"
    [ "$upstream" -ge "$dist" ] || fail "$trace $server: $upstream upstream requests < $dist distinct tiles"
}

declare -A RPS CPU UP ROWS
m_nginx_held=0
for trace in $TRACES; do
    make_base_trace "$trace"
    base="$BASE"
    distinct_bytes="$(summary "$base" distinct_bytes)"
    mem="$(awk -v b="$distinct_bytes" -v p="$MEM_PERCENT" 'BEGIN { printf "%d", b * p / 100 }')"
    disk="$(awk -v b="$distinct_bytes" -v p="$DISK_PERCENT" 'BEGIN { printf "%d", b * p / 100 }')"
    # Floors only the smoke's traces hit: tile-proxy's disk tier is at least 4 blocks of 4 MiB,
    # varnishd's malloc storage at least 1 MiB.
    [ "$disk" -ge 16777216 ] || disk=16777216
    [ "$mem" -ge 1048576 ] || mem=1048576
    name="$trace"
    if [ "$trace" = scan ]; then
        name="scan-$MEM_PERCENT"
        make_trace "$name" $((5 * mem))
    fi
    reqs="$(summary "$name" requests)"
    dist="$(summary "$name" distinct_tiles)"
    start_upstream "$KEY" 5120 61440 --sizes "$TMP/$name.trace" --latency-ms "$LATENCY_MS"
    case "$trace" in
        zipf) desc="zipf alpha $ALPHA, $DISTINCT tiles" ;;
        viewport) desc="viewport, $SESSIONS sessions" ;;
        scan) desc="zipf alpha $ALPHA + scan of 5x M ($(summary "$name" scan_requests) sweep requests)" ;;
    esac
    out ""
    out "== $desc: $reqs requests, $dist distinct tiles, $(summary "$name" distinct_bytes) distinct bytes"
    out "   M = $MEM_PERCENT % = $mem bytes, D = $DISK_PERCENT % = $disk bytes (of $base's $distinct_bytes distinct bytes)"
    out "$(printf '   %-10s %4s %9s %8s %8s %10s %9s %8s %9s %6s %9s' server run 'req/s' 'p50 ms' 'p99 ms' 'cpu us/req' 'hit ratio' 'hot hit' upstream errors 'held MB')"
    read -ra order <<<"$SERVERS"
    for run in $(seq "$RUNS"); do
        for server in "${order[@]}"; do
            replay_server "$server" "$run" "$disk"
            ROWS[$server]+="$rps $p50 $p99 $cpu $hit $hot $upstream $held_mb"$'\n'
        done
        order=("${order[@]:1}" "${order[0]}") # the next run starts with the next server
    done
    # Medians of the runs (the middle run by each column; the lower middle for an even count).
    for server in $SERVERS; do
        med="$(printf '%s' "${ROWS[$server]}" | awk '{ for (i = 1; i <= NF; i++) v[i, NR] = $i; nf = NF }
            END { for (i = 1; i <= nf; i++) { n = 0; for (j = 1; j <= NR; j++) a[++n] = v[i, j]
                    if (a[1] != "-") for (x = 2; x <= n; x++) { y = a[x]; for (k = x - 1; k >= 1 && a[k] + 0 > y + 0; k--) a[k + 1] = a[k]; a[k + 1] = y }
                    printf "%s%s", a[int((n + 1) / 2)], (i < nf ? " " : "\n") } }')"
        read -r m_rps m_p50 m_p99 m_cpu m_hit m_hot m_up m_held <<<"$med"
        RPS[$trace,$server]="$m_rps" CPU[$trace,$server]="$m_cpu" UP[$trace,$server]="$m_up"
        [ "$server" != nginx ] || m_nginx_held="$m_held"
        [ "$RUNS" = 1 ] || out "$(printf '   %-10s %4s %9.0f %8.2f %8.2f %10s %9s %8s %9d %6s %9s' "$server" med "$m_rps" "$m_p50" "$m_p99" "$m_cpu" "$m_hit" "$m_hot" "$m_up" - "$m_held")"
    done
    ROWS=()
    # nginx held more than D: tile-proxy again with a disk tier of what nginx held.
    MATCHED=""
    if [ "$MATCH_NGINX" = 1 ] && has_server nginx && has_server tile-proxy &&
        awk -v h="$m_nginx_held" -v d="$disk" 'BEGIN { exit !(h * 1048576 > d) }'; then
        matched="$(awk -v h="$m_nginx_held" 'BEGIN { printf "%d", h * 1048576 }')"
        out "   tile-proxy again with a disk tier of nginx's median held bytes ($matched):"
        replay_server tile-proxy 1 "$matched" "tp@nginx"
        MATCHED="$upstream"
    fi
    stop_pid "${UPSTREAM_PID:?}"
    if has_server tile-proxy; then
        for other in nginx varnish; do
            has_server "$other" || continue
            rr="$(ratio "${RPS[$trace,tile-proxy]}" "${RPS[$trace,$other]}")"
            rc="$(ratio "${CPU[$trace,tile-proxy]}" "${CPU[$trace,$other]}")"
            ru="$(ratio "${UP[$trace,tile-proxy]}" "${UP[$trace,$other]}")"
            want=1.0
            [ "$other" = nginx ] && want=1.2
            out "   tile-proxy / $other: req/s x$rr, cpu/req x$rc, upstream requests x$ru;" \
                "targets: req/s >= $want $(met "$rr" ">=" "$want"), upstream <= 1 $(met "$ru" "<=" 1)"
            if [ "$other" = nginx ] && [ -n "$MATCHED" ]; then
                ru="$(ratio "$MATCHED" "${UP[$trace,nginx]}")"
                out "   at the same bytes held (tile-proxy with nginx's): upstream requests x$ru; upstream <= 1 $(met "$ru" "<=" 1)"
            fi
        done
    fi
done
out ""
out "results: $TSV ($(($(date +%s) - T_START)) s)"
[ "$FAILED" = 0 ] || die "some runs failed (see FAIL lines)"
