#!/usr/bin/env bash
# What the Redis shared tier and active purge rules cost a memory-tier cache hit. Three
# tile-proxy instances of the same binary, same tiles, same core, measured in turn:
#   local            no Redis
#   redis            REDIS_URL to a private redis-server started by this script
#   redis+100rules   the same Redis (own key prefix) and 100 purge rules newer than every cached
#                    entry, none matching a requested tile: every hit walks all of them
# Memory hits never reach Redis: the script fails if an instance made a Redis GET while measured.
# See bench/README.md.
#
#   bench/redis.sh            # full run: 2,000 tiles, 3 rounds of 10 s per instance
#   bench/redis.sh --smoke    # quick check that everything works (200 tiles, 1 round of 2 s)
#
# Environment (all optional):
#   DURATION=10      seconds of each measured wrk run
#   ROUNDS=3         rounds; each round measures local, redis, redis+rules in that order
#   CONNECTIONS=32   wrk connections
#   THREADS=1        wrk threads
#   TILES=2000       distinct tiles (z 12..14), 5-60 KB each; max 10000
#   WARMUP=2         seconds of an unmeasured wrk run per instance before round 1 (0 = none)
#   RULES=100        purge rules on the third instance (1..1000)
#   SERVER_CPU=0     core the three tile-proxy instances are pinned to
#   LOAD_CPU=1       core for wrk, curl, the test upstream and redis-server
#   SKIP_BUILD=1     do not run cargo build
#   TARGET_DIR=DIR   cargo target dir to build into / take binaries from (default: REPO/target)
#   KEEP_TMP=1       keep the temp dir (logs, caches, raw wrk output) after the run
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$BENCH_DIR/.." && pwd)"

# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

bench_args redis.sh "$@"
RULES="${RULES:-100}"
ADMIN_TOKEN="bench-admin-token-0123456789"
[[ "$RULES" =~ ^[0-9]+$ ]] && [ "$RULES" -ge 1 ] && [ "$RULES" -le 1000 ] || die "RULES must be 1..1000"

# ---- 1. tools ------------------------------------------------------------------------------
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-cli >/dev/null || missing+=(redis-tools)
command -v wrk >/dev/null || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
command -v taskset >/dev/null || missing+=(util-linux)
command -v timeout >/dev/null || missing+=(coreutils)
[ "${#missing[@]}" -eq 0 ] || apt_install "${missing[@]}"
command -v redis-server >/dev/null && command -v redis-cli >/dev/null || die "redis-server/redis-cli not found after install"

ncpu="$(nproc)"
[ "$SERVER_CPU" -lt "$ncpu" ] && [ "$LOAD_CPU" -lt "$ncpu" ] || die "SERVER_CPU/LOAD_CPU must be < nproc ($ncpu)"

# ---- 2. build ------------------------------------------------------------------------------
build_binaries

# ---- process bookkeeping and cleanup (bench/lib.sh) -------------------------------------------
NAMES=(local redis "redis+${RULES}rules")
LOG_FILES=(upstream.log redis.log proxy-0.log proxy-1.log proxy-2.log)
bench_tmp

# ---- 3. tile list ----------------------------------------------------------------------------
TILES_FILE="$TMP/tiles.txt"
make_tiles

# ---- 4. upstream, redis-server, three tile-proxy instances -------------------------------------
start_upstream "$KEY" "$MIN_SIZE" "$MAX_SIZE"
USED_PORTS=("$UPSTREAM_PORT")

REDIS_PORT="$(free_port "${USED_PORTS[@]}")"
USED_PORTS+=("$REDIS_PORT")
mkdir -p "$TMP/redis"
log "starting redis-server on 127.0.0.1:$REDIS_PORT (core $LOAD_CPU, no persistence)"
taskset -c "$LOAD_CPU" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$TMP/redis" --loglevel warning >"$TMP/redis.log" 2>&1 &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }
for i in $(seq 100); do
    kill -0 "$REDIS_PID" 2>/dev/null || die "redis-server exited during startup"
    [ "$(rcli ping 2>/dev/null || true)" = PONG ] && break
    [ "$i" -lt 100 ] || die "redis-server not answering PING after 10 s"
    sleep 0.1
done
REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"

declare -a P_PID P_URL
start_proxy() { # index [VAR=value...]: the instance's own settings
    local i="$1" port
    shift
    port="$(free_port "${USED_PORTS[@]}")"
    USED_PORTS+=("$port")
    P_URL[i]="http://127.0.0.1:$port"
    mkdir -p "$TMP/cache-$i"
    log "starting tile-proxy '${NAMES[i]}' on ${P_URL[i]} (core $SERVER_CPU, 1 worker)"
    # env -i: nothing from the caller's environment (a REDIS_URL, TILE_PROXY_*) reaches it
    env -i PATH="$PATH" HOME="${HOME:-/}" \
        HERE_API_KEY="$KEY" \
        TILE_PROXY_LISTEN="127.0.0.1:$port" \
        TILE_PROXY_RASTER_UPSTREAM="$UPSTREAM_URL" \
        TILE_PROXY_VECTOR_UPSTREAM="$UPSTREAM_URL" \
        TILE_PROXY_CACHE_DIR="$TMP/cache-$i" \
        TILE_PROXY_MEMORY_CACHE=512MiB \
        TILE_PROXY_DISK_CACHE=1GiB \
        TILE_PROXY_DEFAULTS__RATE_LIMIT=0 TILE_PROXY_WORKERS=1 \
        RUST_LOG=warn \
        "$@" \
        taskset -c "$SERVER_CPU" "$PROXY_BIN" >"$TMP/proxy-$i.log" 2>&1 &
    P_PID[i]=$!
    PIDS+=("${P_PID[i]}")
    wait_ready "${NAMES[i]}" "${P_PID[i]}" "${P_URL[i]}/ready"
}
start_proxy 0
start_proxy 1 REDIS_URL="$REDIS_URL"
start_proxy 2 REDIS_URL="$REDIS_URL" TILE_PROXY_REDIS__PREFIX=bench-rules TILE_PROXY_ADMIN_TOKEN="$ADMIN_TOKEN"

scrape() { curl -sf --max-time 5 "$1/metrics" || die "cannot read $1/metrics"; }
# metric_sum (bench/lib.sh): sum of a metric's series in a scrape, optionally filtered.
# "op/outcome+delta ..." for every tile_proxy_redis_ops_total series that moved between two scrapes.
ops_delta() { # before-file after-file
    awk '/^tile_proxy_redis_ops_total\{/ { v[$1] += (FILENAME == ARGV[1] ? -$NF : $NF) }
        END { for (k in v) if (v[k] != 0) { l = k; gsub(/.*op="|",outcome="/, "/", l); gsub(/^\/|"\}$/, "", l)
              printf "%s%s+%d", sep, l, v[k]; sep = " " } }' "$1" "$2"
}

# Both Redis instances must really be connected (fail-open would make them look like `local`).
for i in 1 2; do
    for t in $(seq 100); do
        scrape "${P_URL[i]}" >"$TMP/metrics-$i-start.txt"
        [ "$(metric_sum "$TMP/metrics-$i-start.txt" tile_proxy_redis_up)" = 1 ] && break
        [ "$t" -lt 100 ] || die "${NAMES[i]}: tile_proxy_redis_up is not 1 after 10 s"
        sleep 0.1
    done
done

# ---- 5. warm the caches, add the purge rules --------------------------------------------------
for i in 0 1 2; do
    log "warming ${NAMES[i]}: $TILES tiles"
    warm "${NAMES[i]}" "${P_URL[i]}"
    WARM_END_MS="$(date +%s%3N)"
    UP_WARM[i]="$(upstream_total)"
    [ "${UP_WARM[i]}" -eq $(((i + 1) * TILES)) ] ||
        die "upstream saw ${UP_WARM[i]} requests after warming ${NAMES[i]}, expected $(((i + 1) * TILES))"
    SAMPLED="$(check_hits "${NAMES[i]}" "${P_URL[i]}" memory)"
done
# Redis in use: every miss looked the tile up in Redis and stored it there.
for i in 1 2; do
    scrape "${P_URL[i]}" >"$TMP/metrics-$i-warm.txt"
    WARM_OPS[i]="$(metric_sum "$TMP/metrics-$i-warm.txt" tile_proxy_redis_ops_total 'outcome="ok"')"
    [ "${WARM_OPS[i]}" -ge "$TILES" ] ||
        die "${NAMES[i]}: only ${WARM_OPS[i]} successful Redis calls while warming $TILES tiles: is Redis in use?"
done
REDIS_KEYS="$(rcli dbsize)"

sleep 1 # every cached entry is now strictly older than the rules to come
log "adding $RULES purge rules to ${NAMES[2]} (half for indices other-N, half a bbox far from every tile; none matches)"
for n in $(seq 1 "$RULES"); do
    if [ $((n % 2)) = 0 ]; then rule="{\"index\":\"other-$n\"}"; else rule="{\"bbox\":[100,-50,101,-49],\"zoom\":[0,22]}"; fi
    code="$(curl -s --max-time 10 -o "$TMP/purge.json" -w '%{http_code}' \
        -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' \
        -d "$rule" "${P_URL[2]}/admin/purge" || true)"
    [ "$code" = 200 ] || { cat "$TMP/purge.json" >&2 2>/dev/null; die "POST /admin/purge #$n answered ${code:-nothing}"; }
    grep -q '"redis":true' "$TMP/purge.json" || { cat "$TMP/purge.json" >&2; die "purge rule #$n was not shared through Redis"; }
done
sleep 1 # let the rules' pub/sub messages arrive (and prove they reach no other prefix)
curl -sf --max-time 5 -H "Authorization: Bearer $ADMIN_TOKEN" "${P_URL[2]}/admin/purges" >"$TMP/purges.json" ||
    die "GET /admin/purges failed"
LISTED="$(grep -o '"at_ms":[0-9]*' "$TMP/purges.json" | wc -l)"
[ "$LISTED" -eq "$RULES" ] || die "GET /admin/purges lists $LISTED rules, expected $RULES"
OLDEST_RULE_MS="$(grep -o '"at_ms":[0-9]*' "$TMP/purges.json" | cut -d: -f2 | sort -n | head -n1)"
[ "$OLDEST_RULE_MS" -gt "$WARM_END_MS" ] ||
    die "a purge rule ($OLDEST_RULE_MS) is not newer than the last warmed entry ($WARM_END_MS): hits would skip the rules"
for i in 0 1 2; do
    scrape "${P_URL[i]}" >"$TMP/metrics-$i-rules.txt"
    RULE_GAUGE[i]="$(metric_sum "$TMP/metrics-$i-rules.txt" tile_proxy_purge_rules)"
done
[ "${RULE_GAUGE[2]}" -eq "$RULES" ] || die "${NAMES[2]}: tile_proxy_purge_rules is ${RULE_GAUGE[2]}, expected $RULES"
[ "${RULE_GAUGE[0]}" -eq 0 ] && [ "${RULE_GAUGE[1]}" -eq 0 ] ||
    die "rules leaked to another instance (tile_proxy_purge_rules: local ${RULE_GAUGE[0]}, redis ${RULE_GAUGE[1]})"
check_hits "${NAMES[2]}" "${P_URL[2]}" memory >/dev/null # the rules purge nothing we request
log "caches warm: upstream requests ${UP_WARM[0]} + $((UP_WARM[1] - UP_WARM[0])) + $((UP_WARM[2] - UP_WARM[1])); $SAMPLED sampled tiles memory HITs on each; $LISTED rules, oldest $((OLDEST_RULE_MS - WARM_END_MS)) ms after the last warm request"

# ---- 6. measure ------------------------------------------------------------------------------
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
if [ "$WARMUP" -gt 0 ]; then
    log "unmeasured ${WARMUP}s wrk warm-up against each instance"
    for i in 0 1 2; do
        run_wrk "${NAMES[i]}" "${P_URL[i]}" "$WARMUP" "$TMP/wrk-warmup-$i.txt" "${P_PID[i]}" >/dev/null
    done
fi

for i in 0 1 2; do scrape "${P_URL[i]}" >"$TMP/metrics-$i-before.txt"; done
UP_BEFORE="$(upstream_total)"
keyspace_lookups() { rcli info stats | tr -d '\r' | awk -F: '/^keyspace_(hits|misses):/ { s += $2 } END { print s + 0 }'; }
KS_BEFORE="$(keyspace_lookups)"
REDIS_TICKS_BEFORE="$(cpu_ticks "$REDIS_PID")"

declare -A RPS P50 P99 XFER REQ ERR CPU WCPU C0 C1 US
for r in $(seq 1 "$ROUNDS"); do
    for i in 0 1 2; do
        log "round $r/$ROUNDS: ${NAMES[i]} ${DURATION}s"
        line="$(run_wrk "${NAMES[i]}" "${P_URL[i]}" "$DURATION" "$TMP/wrk-r$r-$i.txt" "${P_PID[i]}")"
        read -r RPS[$i,$r] P50[$i,$r] P99[$i,$r] XFER[$i,$r] REQ[$i,$r] ERR[$i,$r] CPU[$i,$r] WCPU[$i,$r] \
            C0[$i,$r] C1[$i,$r] _ cpu_ns _ <<<"$line"
        [ -n "$cpu_ns" ] && [ "${REQ[$i,$r]}" -gt 0 ] || die "${NAMES[i]} run $r failed"
        US[$i,$r]="$(awk -v c="$cpu_ns" -v n="${REQ[$i,$r]}" 'BEGIN { printf "%.2f", c / 1e3 / n }')"
    done
done
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

REDIS_CPU_MS=$((($(cpu_ticks "$REDIS_PID") - REDIS_TICKS_BEFORE) * 1000 / CLK_TCK))
KS_DURING=$(($(keyspace_lookups) - KS_BEFORE))
UP_DURING=$(($(upstream_total) - UP_BEFORE))
for i in 0 1 2; do
    scrape "${P_URL[i]}" >"$TMP/metrics-$i-after.txt"
    b="$TMP/metrics-$i-before.txt" a="$TMP/metrics-$i-after.txt"
    OPS[i]=$(($(metric_sum "$a" tile_proxy_redis_ops_total) - $(metric_sum "$b" tile_proxy_redis_ops_total)))
    GETS[i]=$(($(metric_sum "$a" tile_proxy_redis_ops_total 'op="get"') - $(metric_sum "$b" tile_proxy_redis_ops_total 'op="get"')))
    OPS_DETAIL[i]="$(ops_delta "$b" "$a")"
done

# ---- 7. report -------------------------------------------------------------------------------
# medians: M<stat>[i]
series() { local -n arr="$1"; local r; for r in $(seq 1 "$ROUNDS"); do echo "${arr[$2,$r]}"; done; }
declare -a MRPS MP50 MP99 MCPU MUS MWCPU MC0 MC1 TERR
TOTAL_ERR=0
for i in 0 1 2; do
    # shellcheck disable=SC2046 # one number per line
    MRPS[i]="$(median $(series RPS "$i"))"; MP50[i]="$(median $(series P50 "$i"))"
    MP99[i]="$(median $(series P99 "$i"))"; MCPU[i]="$(median $(series CPU "$i"))"
    MUS[i]="$(median $(series US "$i"))"; MWCPU[i]="$(median $(series WCPU "$i"))"
    MC0[i]="$(median $(series C0 "$i"))"; MC1[i]="$(median $(series C1 "$i"))"
    TERR[i]=0
    for r in $(seq 1 "$ROUNDS"); do TERR[i]=$((TERR[i] + ${ERR[$i,$r]})); done
    TOTAL_ERR=$((TOTAL_ERR + TERR[i]))
done
R_RPS_REDIS="$(ratio "${MRPS[1]}" "${MRPS[0]}")"; R_RPS_RULES="$(ratio "${MRPS[2]}" "${MRPS[0]}")"
R_US_REDIS="$(ratio "${MUS[1]}" "${MUS[0]}")";   R_US_RULES="$(ratio "${MUS[2]}" "${MUS[0]}")"
R_P99_REDIS="$(ratio "${MP99[1]}" "${MP99[0]}")"; R_P99_RULES="$(ratio "${MP99[2]}" "${MP99[0]}")"
# Round-to-round spread of the same instance: how far apart equal things land (noise floor).
# shellcheck disable=SC2046
spread() { printf '%s\n' $(series "$1" "$2") | awk -v m="$3" 'NR == 1 || $1 < lo { lo = $1 } NR == 1 || $1 > hi { hi = $1 }
    END { if (NR < 2 || m + 0 == 0) print "n/a"; else printf "%.1f", 100 * (hi - lo) / m }'; }
pct() { [ "$1" = n/a ] && echo "n/a (1 round)" || echo "$1%"; }
SPREAD_RPS="$(spread RPS 0 "${MRPS[0]}")"; SPREAD_US="$(spread US 0 "${MUS[0]}")"

COMMIT="$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git -C "$REPO_ROOT" status --porcelain --untracked-files=no 2>/dev/null || true)" ]; then COMMIT="$COMMIT+dirty"; fi
REDIS_VERSION="$(redis-server --version | grep -o 'v=[0-9.]*' | cut -c3- || true)"
WRK_VERSION="$(wrk --version 2>&1 | head -n1 | awk '{ print $2 }' || true)"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"

ROWFMT='%-7s %-15s %9s %8s %8s %9s %9s %9s %7s %7s %6s\n'
{
    echo
    echo "tile-proxy memory-tier hits: no Redis vs Redis vs Redis + $RULES purge rules ($COMMIT, $STAMP)"
    echo "  $TILES distinct tiles (z12-14, ${MIN_SIZE}-${MAX_SIZE} B), all in the memory tier; wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s, $ROUNDS round(s), instances in turn"
    echo "  3 instances of one binary pinned to core $SERVER_CPU (1 worker, RUST_LOG=warn); wrk + upstream + redis-server $REDIS_VERSION on core $LOAD_CPU; loopback"
    echo "  binaries: $TARGET_DIR/release ($([ "$SKIP_BUILD" = 1 ] && echo "prebuilt, SKIP_BUILD=1" || echo "built by this run"))"
    echo "  upstream requests while warming: ${UP_WARM[0]} + $((UP_WARM[1] - UP_WARM[0])) + $((UP_WARM[2] - UP_WARM[1])); during measurement: $UP_DURING"
    echo "  Redis while warming: ${WARM_OPS[1]} + ${WARM_OPS[2]} successful calls, $REDIS_KEYS keys; ${NAMES[2]}: $RULES rules (half index other-N, half a bbox elsewhere), all newer than every entry"
    echo "  load average before/after: $LOAD_BEFORE / $LOAD_AFTER"
    echo
    printf "$ROWFMT" round instance 'req/s' 'p50 ms' 'p99 ms' 'srv cpu%' 'cpu us/req' 'wrk cpu%' "core$SERVER_CPU%" "core$LOAD_CPU%" errors
    for r in $(seq 1 "$ROUNDS"); do
        for i in 0 1 2; do
            printf "$ROWFMT" "$r" "${NAMES[i]}" "$(fmt "${RPS[$i,$r]}" 0)" "$(fmt "${P50[$i,$r]}" 2)" "$(fmt "${P99[$i,$r]}" 2)" \
                "${CPU[$i,$r]}" "$(fmt "${US[$i,$r]}" 1)" "${WCPU[$i,$r]}" "${C0[$i,$r]}" "${C1[$i,$r]}" "${ERR[$i,$r]}"
        done
    done
    for i in 0 1 2; do
        printf "$ROWFMT" median "${NAMES[i]}" "$(fmt "${MRPS[i]}" 0)" "$(fmt "${MP50[i]}" 2)" "$(fmt "${MP99[i]}" 2)" \
            "$(fmt "${MCPU[i]}" 0)" "$(fmt "${MUS[i]}" 1)" "$(fmt "${MWCPU[i]}" 0)" "$(fmt "${MC0[i]}" 0)" "$(fmt "${MC1[i]}" 0)" "${TERR[i]}"
    done
    echo
    printf '  %-24s req/s x%s   cpu/req x%s   p99 x%s\n' "redis / local:" "$R_RPS_REDIS" "$R_US_REDIS" "$R_P99_REDIS"
    printf '  %-24s req/s x%s   cpu/req x%s   p99 x%s\n' "${NAMES[2]} / local:" "$R_RPS_RULES" "$R_US_RULES" "$R_P99_RULES"
    echo "  noise: local's own spread between rounds (max-min)/median: req/s $(pct "$SPREAD_RPS"), cpu/req $(pct "$SPREAD_US")"
    echo
    echo "  Redis calls during the measured runs (tile_proxy_redis_ops_total):"
    for i in 0 1 2; do
        printf '    %-16s %d (get %d)%s\n' "${NAMES[i]}" "${OPS[i]}" "${GETS[i]}" "${OPS_DETAIL[i]:+: ${OPS_DETAIL[i]}}"
    done
    echo "  redis-server during the measured runs: $KS_DURING keyspace lookups, ${REDIS_CPU_MS} ms CPU"
    echo "  errors: $TOTAL_ERR"
    echo
}

# One JSON line on stdout, also kept in bench/out/.
inst_json() { # index
    local i="$1" k
    printf '{"req_per_s":%s,"p50_ms":%s,"p99_ms":%s,"server_cpu_pct":%s,"cpu_us_per_req":%s,"requests":%s,"errors":%s,' \
        "$(json_arr $(series RPS "$i"))" "$(json_arr $(series P50 "$i"))" "$(json_arr $(series P99 "$i"))" \
        "$(json_arr $(series CPU "$i"))" "$(json_arr $(series US "$i"))" "$(json_arr $(series REQ "$i"))" \
        "$(json_arr $(series ERR "$i"))"
    printf '"wrk_cpu_pct":%s,"server_core_busy_pct":%s,"load_core_busy_pct":%s,' \
        "$(json_arr $(series WCPU "$i"))" "$(json_arr $(series C0 "$i"))" "$(json_arr $(series C1 "$i"))"
    printf '"median":{"req_per_s":%s,"p50_ms":%s,"p99_ms":%s,"server_cpu_pct":%s,"cpu_us_per_req":%s},' \
        "${MRPS[i]}" "${MP50[i]}" "${MP99[i]}" "${MCPU[i]}" "${MUS[i]}"
    printf '"redis_ops_during_measurement":%d,"redis_gets_during_measurement":%d}' "${OPS[i]}" "${GETS[i]}"
}
# shellcheck disable=SC2046
JSON_LINE="$(
    printf '{"bench":"redis","timestamp":"%s","commit":"%s","smoke":%s,"built_by_run":%s,' \
        "$STAMP" "$COMMIT" "$([ "$SMOKE" = 1 ] && echo true || echo false)" "$([ "$SKIP_BUILD" = 1 ] && echo false || echo true)"
    printf '"config":{"tiles":%d,"min_size":%d,"max_size":%d,"duration_s":%d,"rounds":%d,"connections":%d,"wrk_threads":%d,"warmup_s":%d,"rules":%d,"server_cpu":%d,"load_cpu":%d,"redis_version":"%s","wrk_version":"%s","loadavg_before":"%s","loadavg_after":"%s"},' \
        "$TILES" "$MIN_SIZE" "$MAX_SIZE" "$DURATION" "$ROUNDS" "$CONNECTIONS" "$THREADS" "$WARMUP" "$RULES" \
        "$SERVER_CPU" "$LOAD_CPU" "$REDIS_VERSION" "$WRK_VERSION" "$LOAD_BEFORE" "$LOAD_AFTER"
    printf '"instances":{"%s":%s,"%s":%s,"%s":%s},' "${NAMES[0]}" "$(inst_json 0)" "${NAMES[1]}" "$(inst_json 1)" \
        "${NAMES[2]}" "$(inst_json 2)"
    printf '"ratios":{"redis_over_local":{"req_per_s":%s,"cpu_per_req":%s,"p99":%s},"rules_over_local":{"req_per_s":%s,"cpu_per_req":%s,"p99":%s}},' \
        "$(jnum "$R_RPS_REDIS")" "$(jnum "$R_US_REDIS")" "$(jnum "$R_P99_REDIS")" \
        "$(jnum "$R_RPS_RULES")" "$(jnum "$R_US_RULES")" "$(jnum "$R_P99_RULES")"
    printf '"local_spread_pct":{"req_per_s":%s,"cpu_per_req":%s},' "$(jnum "$SPREAD_RPS")" "$(jnum "$SPREAD_US")"
    printf '"upstream_requests":{"warm":[%d,%d,%d],"during_measurement":%d},' \
        "${UP_WARM[0]}" "$((UP_WARM[1] - UP_WARM[0]))" "$((UP_WARM[2] - UP_WARM[1]))" "$UP_DURING"
    printf '"redis_server":{"keyspace_lookups_during_measurement":%d,"cpu_ms_during_measurement":%d},' "$KS_DURING" "$REDIS_CPU_MS"
    printf '"errors":%d}' "$TOTAL_ERR"
)"
mkdir -p "$BENCH_DIR/out"
JSON="$BENCH_DIR/out/redis-$STAMP.json"
echo "$JSON_LINE" >"$JSON"
echo "$JSON_LINE"
echo "JSON: $JSON" >&2

[ "$TOTAL_ERR" -eq 0 ] || die "$TOTAL_ERR errors (non-2xx or socket errors) during measurement"
[ "$UP_DURING" -eq 0 ] || die "upstream saw $UP_DURING requests during measurement: not every request was a hit"
for i in 0 1 2; do
    [ "${GETS[i]}" -eq 0 ] || die "${NAMES[i]} made ${GETS[i]} Redis GET calls during measurement: memory hits reached Redis"
done
