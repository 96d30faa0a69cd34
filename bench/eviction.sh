#!/usr/bin/env bash
# Memory-tier eviction policies on tile traces (issue #23): tile-proxy's `memory_eviction` (lru,
# lfu, s3fifo, sieve, fifo: foyer's algorithms) replayed against deterministic bench/trace.py
# traces, next to the offline optimum (bench/belady.py `belady`, bytes) and simulated LRU.
#
# For each trace (zipf alpha ALPHA; viewport; zipf with a scan mixed in) and each memory size
# (PERCENTS of the trace's distinct bytes; the scan trace: of its zipf base, and its sweep covers
# 5x that size) and each policy: one test-upstream per trace (--sizes TRACE: every tile gets the
# trace's body size), a fresh tile-proxy per run (release, TILE_PROXY_WORKERS=WORKERS, pinned to
# SERVER_CPU, memory tier of that size, DISK TIER OFF (disk_cache=0: the memory policy alone
# decides every hit), access log off, client rate limit off), then bench-replay (bench/replay/,
# on LOAD_CPU) sends the trace in order, exactly once, over CONNECTIONS keep-alive connections.
# Per run: memory hit ratio (X-Cache: HIT + X-Cache-Tier: memory, per request; `x belady` is it
# over belady's), `no fetch` (1 - upstream requests / requests: memory hits plus the requests that
# joined an upstream fetch already in flight for the same tile, which report MISS; this is what
# the single-request simulators count as hits), req/s, p50/p99, server CPU us per request
# (/proc/PID/stat utime+stime over the replay), upstream requests (the test upstream's /__stats
# total). One table per trace and size; the scan trace adds the hot-set hit ratio (memory hits
# of the non-scan requests).
#
# Usage: bench/eviction.sh [--smoke]
#   --smoke  tiny matrix for CI: 2,000-request traces, POLICIES "lru s3fifo", PERCENTS 5; debug
#            binaries by default. Exits non-zero if a run fails (errors, a status other than 200,
#            a body size other than the trace's, fewer upstream requests than distinct tiles) or
#            a memory hit ratio exceeds belady's (impossible for any online policy: a bug).
#            The full run checks the same.
# Env: REQUESTS (200000), DISTINCT (50000, zipf tiles), ALPHA (1.0), SESSIONS (REQUESTS/100,
#      viewport sessions; the trace is cut at REQUESTS), SEED (1), TRACES ("zipf viewport scan"),
#      PERCENTS ("1 5"), POLICIES ("lru lfu s3fifo sieve fifo"), CONNECTIONS (64), WORKERS (1),
#      SERVER_CPU / LOAD_CPU (0 / 1), BIN_DIR (tile-proxy, test-upstream, bench-replay; when set
#      nothing is built), else TARGET_DIR (<repo>/target) with cargo build --locked of the three
#      (release; --smoke: debug) unless SKIP_BUILD=1, RUN_TIMEOUT (600 s per replay),
#      KEEP_TMP=1 keeps the temp dir. Results: bench/out/eviction-<UTC>.tsv and .txt.
set -euo pipefail
BENCH_DIR="$(cd "$(dirname "$0")" && pwd)"
REPO_ROOT="$(cd "$BENCH_DIR/.." && pwd)"
BENCH_NAME=eviction.sh
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

smoke_flag "$BENCH_NAME" "$@"
common_defaults
if [ "$SMOKE" = 1 ]; then
    REQUESTS="${REQUESTS:-2000}" DISTINCT="${DISTINCT:-500}" SESSIONS="${SESSIONS:-40}"
    POLICIES="${POLICIES:-lru s3fifo}" PERCENTS="${PERCENTS:-5}" PROFILE="${PROFILE:-debug}"
fi
REQUESTS="${REQUESTS:-200000}"
DISTINCT="${DISTINCT:-50000}"
SESSIONS="${SESSIONS:-$((REQUESTS / 100 + 1))}"
ALPHA="${ALPHA:-1.0}"
SEED="${SEED:-1}"
TRACES="${TRACES:-zipf viewport scan}"
PERCENTS="${PERCENTS:-1 5}"
POLICIES="${POLICIES:-lru lfu s3fifo sieve fifo}"
CONNECTIONS="${CONNECTIONS:-64}"
WORKERS="${WORKERS:-1}"
RUN_TIMEOUT="${RUN_TIMEOUT:-600}"
PROFILE="${PROFILE:-release}"
for v in REQUESTS DISTINCT SESSIONS SEED CONNECTIONS WORKERS RUN_TIMEOUT SERVER_CPU LOAD_CPU; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a whole number (got '${!v}')"
done
if [ "$REQUESTS" -lt 100 ] || [ "$REQUESTS" -gt 50000000 ]; then die "REQUESTS must be 100..50000000"; fi
for p in $POLICIES; do
    case "$p" in lru | lfu | s3fifo | sieve | fifo) ;; *) die "unknown policy '$p'" ;; esac
done
for t in $TRACES; do
    case "$t" in zipf | viewport | scan) ;; *) die "unknown trace '$t' (zipf, viewport, scan)" ;; esac
done
for p in $PERCENTS; do [[ "$p" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "PERCENTS: '$p' is not a number"; done

for tool in python3 curl taskset timeout; do command -v "$tool" >/dev/null || die "$tool not found"; done

# ---- binaries ----
replay_binaries

bench_tmp
# shellcheck disable=SC2034 # read by cleanup (lib.sh)
LOG_FILES=(upstream.log proxy.log replay.err)
T_START=$(date +%s)

# ---- traces and the offline optimum ----
# belady NAME CAPACITY -> "belady lru belady_hot lru_hot" (request hit ratios; hot: non-scan)
belady() {
    timeout 900 python3 "$BENCH_DIR/belady.py" --trace "$TMP/$1.trace" --capacity-bytes "$2" --json >"$TMP/$1-$2.belady" ||
        die "belady.py $1 failed"
    python3 - "$TMP/$1-$2.belady" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
rows = {(r["policy"], r["capacity"]): r for r in d["results"][0]["policies"]}
b, l = rows[("belady", "bytes")], rows[("lru", "bytes")]
hot = lambda r: r["hot_hit_ratio"] if r["hot_hit_ratio"] is not None else r["hit_ratio"]
print(f'{b["hit_ratio"]:.4f} {l["hit_ratio"]:.4f} {hot(b):.4f} {hot(l):.4f}')
PY
}

# ---- processes ----

# ---- the matrix ----
results_open eviction $'trace\tpercent\tcapacity_bytes\tpolicy\trequests\tmemory_hit_ratio\tno_fetch_ratio\thot_hit_ratio\tbelady\tbelady_hot\tlru_sim\tlru_sim_hot\trps\tp50_ms\tp99_ms\tcpu_us_per_req\tupstream_requests\terrors\tmetric_memory_hits'

out "bench/eviction.sh$([ "$SMOKE" = 1 ] && echo ' --smoke'): $(machine)"
out "tile-proxy: $PROXY_BIN, $WORKERS worker(s) on core $SERVER_CPU, disk tier off (disk_cache=0), access log off, rate limit off;"
out "bench-replay + test-upstream on core $LOAD_CPU, $CONNECTIONS keep-alive connections, trace in order, each line once; seed $SEED"

for trace in $TRACES; do
    # The scan trace's sizes come from its zipf base: the same capacities as the zipf table.
    make_base_trace "$trace"
    base="$BASE"
    distinct_bytes="$(summary "$base" distinct_bytes)"
    for pct in $PERCENTS; do
        cap="$(awk -v b="$distinct_bytes" -v p="$pct" 'BEGIN { printf "%d", b * p / 100 }')"
        name="$trace"
        if [ "$trace" = scan ]; then
            name="scan-$pct"
            make_trace "$name" $((5 * cap))
        fi
        read -r bel lru bel_hot lru_hot < <(belady "$name" "$cap")
        reqs="$(summary "$name" requests)"
        dist="$(summary "$name" distinct_tiles)"
        start_upstream "$KEY" 5120 61440 --sizes "$TMP/$name.trace"
        out ""
        case "$trace" in
            zipf) desc="zipf alpha $ALPHA, $DISTINCT tiles" ;;
            viewport) desc="viewport, $SESSIONS sessions" ;;
            scan) desc="zipf alpha $ALPHA + scan of 5x the tier ($(summary "$name" scan_requests) sweep requests, $(summary "$name" scan_bytes) bytes)" ;;
        esac
        out "== $desc: $reqs requests, $dist distinct tiles, $(summary "$name" distinct_bytes) distinct bytes"
        out "   memory tier $pct % of $base's distinct bytes = $cap bytes; belady (bytes) $bel, simulated LRU (bytes) $lru$([ "$trace" = scan ] && echo "; hot set: belady $bel_hot, LRU $lru_hot")"
        out "$(printf '   %-8s %9s %8s %8s %8s %8s %8s %8s %8s %10s %9s %6s' policy 'mem hit' 'x belady' 'no fetch' 'sim LRU' 'hot-set' \
            'req/s' 'p50 ms' 'p99 ms' 'cpu us/req' upstream errors)"
        for policy in $POLICIES; do
            start_replay_proxy "$policy" "$cap" 0
            up0="$(upstream_total)"
            c0="$(cpu_ticks "$PROXY_PID")"
            rc=0
            timeout "$RUN_TIMEOUT" taskset -c "$LOAD_CPU" "$REPLAY_BIN" --url "$PROXY_URL" --trace "$TMP/$name.trace" \
                --connections "$CONNECTIONS" >"$TMP/replay.out" 2>"$TMP/replay.err" || rc=$?
            c1="$(cpu_ticks "$PROXY_PID")"
            up1="$(upstream_total)"
            curl -sf --max-time 10 "$PROXY_URL/metrics" >"$TMP/metrics" || : >"$TMP/metrics"
            stop_pid "$PROXY_PID"
            [ "$rc" = 0 ] || { cat "$TMP/replay.err" >&2; die "bench-replay failed ($trace $pct % $policy, exit $rc)"; }
            n="$(r requests)" hit="$(r memory_hit_ratio)" hot="$(r hot_memory_hit_ratio)" errs="$(r errors)"
            ok200="$(r status_200)" mism="$(r size_mismatch)"
            [ "$trace" = scan ] || hot="$hit"
            upstream=$((up1 - up0))
            cpu="$(awk -v t=$((c1 - c0)) -v k="$CLK_TCK" -v n="$n" 'BEGIN { printf "%.1f", t / k * 1e6 / n }')"
            mhits="$(metric_sum "$TMP/metrics" tile_proxy_cache_hits_total 'tier="memory"')"
            xb="$(ratio "$hit" "$bel")"
            nofetch="$(awk -v u="$upstream" -v n="$n" 'BEGIN { printf "%.4f", 1 - u / n }')"
            out "$(printf '   %-8s %9s %8s %8s %8s %8s %8.0f %8.2f %8.2f %10s %9d %6d' "$policy" "$hit" "$xb" "$nofetch" "$lru" \
                "$([ "$trace" = scan ] && echo "$hot" || echo -)" "$(r rps)" "$(r p50_ms)" "$(r p99_ms)" "$cpu" "$upstream" "$errs")"
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$trace" "$pct" "$cap" "$policy" \
                "$n" "$hit" "$nofetch" "$hot" "$bel" "$bel_hot" "$lru" "$lru_hot" "$(r rps)" "$(r p50_ms)" "$(r p99_ms)" "$cpu" \
                "$upstream" "$errs" "$mhits" >>"$TSV"
            [ "$n" = "$reqs" ] || fail "$trace $pct % $policy: $n requests replayed, trace has $reqs"
            if [ "$errs" != 0 ] || [ "${ok200:-0}" != "$n" ]; then
                fail "$trace $pct % $policy: $errs errors, ${ok200:-0} of $n answered 200 ($(tr ' ' '\n' <"$TMP/replay.out" | grep '^status_' | tr '\n' ' '))"
            fi
            [ "$mism" = 0 ] || fail "$trace $pct % $policy: $mism bodies differ from the trace's size ($(tail -n 3 "$TMP/replay.err" | tr '\n' ' '))"
            [ "$upstream" -ge "$dist" ] || fail "$trace $pct % $policy: $upstream upstream requests < $dist distinct tiles"
            awk -v h="$hit" -v b="$bel" 'BEGIN { exit !(h > b) }' &&
                fail "$trace $pct % $policy: memory hit ratio $hit exceeds belady's $bel (impossible: a bug)"
            [ "$mhits" = "$(r memory_hits)" ] ||
                log "note: $trace $pct % $policy: /metrics counts $mhits memory hits, the replayer $(r memory_hits)"
        done
        stop_pid "${UPSTREAM_PID:?}"
    done
done
out ""
out "results: $TSV ($(($(date +%s) - T_START)) s)"
[ "$FAILED" = 0 ] || die "some runs failed (see FAIL lines)"
