#!/usr/bin/env bash
# Restart with a warm disk tier: fills a DISK_MIB disk tier (memory tier MEMORY_MIB), stops
# tile-proxy with SIGTERM, drops the tier's files from the page cache (as after a reboot or on a
# new node), starts it again on the same folder and measures, from the process start:
#   (a) the first 200 from /ready,
#   (b) the first `X-Cache: HIT` + `X-Cache-Tier: disk` for a tile stored before the restart,
# then how many of a sample of stored tiles are still hits, byte for byte the bodies served
# before the restart. See bench/README.md "Restart with a warm disk tier".
#
#   bench/restart.sh            # 1 GiB disk tier, ~90% filled with 100-400 KB tiles
#   bench/restart.sh --smoke    # the plumbing in < 60 s (128 MiB disk tier)
#
# Environment (all optional):
#   MEMORY_MIB=64  DISK_MIB=1024   tiers       FILL_PERCENT=90  how much of the disk tier to fill
#   MIN_SIZE=100000 MAX_SIZE=400000  tile bodies from the test upstream (bytes)
#   SAMPLE=200     stored tiles checked after the restart     TARGET_MS=2000  bound for (b)
#   RESTARTS=3     restarts measured (the folder is filled once)
#   COLD=1         drop the cache folder's files from the page cache before each start (0 = keep)
#   SERVER_CPU=0 / LOAD_CPU=1  cores;  SKIP_BUILD=1; TARGET_DIR=DIR; KEEP_TMP=1
#   PROXY_LOG=warn,foyer_storage=info  RUST_LOG of tile-proxy (foyer's recovery time is read from it)
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$BENCH_DIR/.." && pwd)"
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

smoke_flag restart.sh "$@"
if [ "$SMOKE" = 1 ]; then
    MEMORY_MIB=16 DISK_MIB=128 SAMPLE=40 RESTARTS=1
fi
MEMORY_MIB="${MEMORY_MIB:-64}"
DISK_MIB="${DISK_MIB:-1024}"
FILL_PERCENT="${FILL_PERCENT:-90}"
MIN_SIZE="${MIN_SIZE:-100000}"
MAX_SIZE="${MAX_SIZE:-400000}"
SAMPLE="${SAMPLE:-200}"
TARGET_MS="${TARGET_MS:-2000}"
RESTARTS="${RESTARTS:-3}"
COLD="${COLD:-1}"
common_defaults
for v in MEMORY_MIB DISK_MIB FILL_PERCENT MIN_SIZE MAX_SIZE SAMPLE TARGET_MS RESTARTS COLD SERVER_CPU LOAD_CPU; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a whole number (got '${!v}')"
done
[ "$FILL_PERCENT" -ge 10 ] && [ "$FILL_PERCENT" -le 100 ] || die "FILL_PERCENT must be 10..100"
[ "$MIN_SIZE" -ge 1000 ] && [ "$MAX_SIZE" -ge "$MIN_SIZE" ] && [ "$MAX_SIZE" -le 1500000 ] ||
    die "need 1000 <= MIN_SIZE <= MAX_SIZE <= 1500000 (max_entry_size is 2 MiB)"
[ "$RESTARTS" -ge 1 ] && [ "$RESTARTS" -le 20 ] || die "RESTARTS must be 1..20"
[ "$SAMPLE" -ge 1 ] || die "SAMPLE must be >= 1"

for t in curl taskset timeout dd; do command -v "$t" >/dev/null || die "needs $t"; done

build_binaries
LOG_FILES=(upstream.log proxy.log)
bench_tmp

TILES=$(((DISK_MIB * 1048576 * FILL_PERCENT / 100) / ((MIN_SIZE + MAX_SIZE) / 2)))
[ "$TILES" -ge $((SAMPLE + 1)) ] || die "only $TILES tiles fill the tier: lower SAMPLE"
# make_tiles has about 28,000 distinct tiles (z 12-14) to give.
[ "$TILES" -le 20000 ] || die "$TILES tiles needed: more than the 20000 the tile list has; raise the tile sizes"
TILES_FILE="$TMP/tiles.txt"
make_tiles
# The probe (b) is the tile at 10% of the list; the sample is spread over the rest.
PROBE_LINE=$((TILES / 10 + 1))
PROBE="$(sed -n "${PROBE_LINE}p" "$TILES_FILE")"
awk -v n="$TILES" -v s="$SAMPLE" -v p="$PROBE_LINE" \
    'BEGIN { step = n / s } NR != p && NR >= next_pick { print NR; next_pick += step }' "$TILES_FILE" |
    head -n "$SAMPLE" >"$TMP/sample.lines"
mkdir -p "$TMP/bodies"

start_upstream "$KEY" "$MIN_SIZE" "$MAX_SIZE"
PORT="$(free_port "$UPSTREAM_PORT")"
URL="http://127.0.0.1:$PORT"
CACHE="$TMP/cache"
mkdir -p "$CACHE"

start_proxy() { # -> PROXY_PID, T0_NS (the start, ns)
    T0_NS="$(date +%s%N)"
    env HERE_API_KEY="$KEY" TILE_PROXY_LISTEN="127.0.0.1:$PORT" \
        TILE_PROXY_RASTER_UPSTREAM="$UPSTREAM_URL" TILE_PROXY_VECTOR_UPSTREAM="$UPSTREAM_URL" \
        TILE_PROXY_CACHE_DIR="$CACHE" TILE_PROXY_MEMORY_CACHE="${MEMORY_MIB}MiB" \
        TILE_PROXY_DISK_CACHE="${DISK_MIB}MiB" TILE_PROXY_DEFAULTS__RATE_LIMIT=0 TILE_PROXY_WORKERS=2 TILE_PROXY_DRAIN_DELAY=0s \
        RUST_LOG="${PROXY_LOG:-warn,foyer_storage=info}" \
        taskset -c "$SERVER_CPU" "$PROXY_BIN" >>"$TMP/proxy.log" 2>&1 &
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
}

stop_proxy() { # -> STOP_MS
    local t0 t1
    t0="$(date +%s%N)"
    kill -TERM "$PROXY_PID"
    for _ in $(seq 600); do kill -0 "$PROXY_PID" 2>/dev/null || break; sleep 0.05; done
    kill -0 "$PROXY_PID" 2>/dev/null && die "tile-proxy did not stop within 30 s of SIGTERM"
    wait "$PROXY_PID" 2>/dev/null || true
    t1="$(date +%s%N)"
    STOP_MS=$(((t1 - t0) / 1000000))
}

# ---- fill --------------------------------------------------------------------------------------
start_proxy
wait_ready tile-proxy "$PROXY_PID" "$URL/ready"
log "filling: $TILES tiles of ${MIN_SIZE}-${MAX_SIZE} B (~${FILL_PERCENT}% of the ${DISK_MIB} MiB disk tier)"
awk -v base="$URL" -v dir="$TMP/bodies" 'NR == FNR { keep[$1] = 1; next }
    { printf "url = \"%s%s\"\noutput = \"%s\"\n", base, $0, (FNR in keep) ? dir "/" FNR : "/dev/null" }' \
    "$TMP/sample.lines" "$TILES_FILE" >"$TMP/fill.curl"
F0="$(date +%s%N)"
timeout 900 taskset -c "$LOAD_CPU" curl -s --parallel --parallel-max 8 --max-time 60 \
    -w '%{http_code} %{size_download}\n' -K "$TMP/fill.curl" >"$TMP/fill.out" 2>/dev/null || true
F1="$(date +%s%N)"
read -r FILLED FILL_BYTES < <(awk '$1 == 200 { n++; b += $2 } END { printf "%d %d\n", n, b }' "$TMP/fill.out")
[ "$FILLED" -eq "$TILES" ] || die "fill: $FILLED of $TILES requests answered 200"
log "filled $((FILL_BYTES / 1048576)) MiB in $(((F1 - F0) / 1000000)) ms"

# Sampled tiles: 1 per X-Cache answer class; bodies compared with those served while filling.
check_sample() { # -> "disk memory miss wrong"
    local line path d=0 m=0 x=0 w=0 hdr
    while read -r line; do
        path="$(sed -n "${line}p" "$TILES_FILE")"
        hdr="$(curl -s --max-time 10 -o "$TMP/got" -D - "$URL$path" | tr -d '\r' || true)"
        if grep -qi '^x-cache: *HIT$' <<<"$hdr"; then
            if grep -qi '^x-cache-tier: *disk$' <<<"$hdr"; then d=$((d + 1)); else m=$((m + 1)); fi
        else
            x=$((x + 1))
        fi
        cmp -s "$TMP/got" "$TMP/bodies/$line" || w=$((w + 1))
    done <"$TMP/sample.lines"
    echo "$d $m $x $w"
}
read -r B_DISK B_MEM B_MISS B_WRONG < <(check_sample)
log "before the restart: sample of $SAMPLE: disk hits $B_DISK, memory hits $B_MEM, misses $B_MISS, wrong bodies $B_WRONG"

declare -a R_STOP R_READY R_HIT R_FIRST R_DISK R_MEM R_MISS R_WRONG R_RECOVER
FAILS=0
for r in $(seq "$RESTARTS"); do
    stop_proxy
    R_STOP[r]="$STOP_MS"
    if [ "$COLD" = 1 ]; then
        # POSIX_FADV_DONTNEED on our own files only (the rest of the machine keeps its page cache).
        for f in "$CACHE"/*; do dd if="$f" iflag=nocache count=0 status=none 2>/dev/null || true; done
    fi
    : >"$TMP/ready.ns"
    start_proxy
    # (a) /ready, polled in the background every 10 ms.
    (
        for _ in $(seq 6000); do
            if curl -sf -o /dev/null --max-time 1 "$URL/ready" 2>/dev/null; then date +%s%N >"$TMP/ready.ns"; exit 0; fi
            sleep 0.01
        done
    ) &
    POLLER=$!
    PIDS+=("$POLLER")
    # (b) the probe tile until its first answer: expected X-Cache: HIT from the disk tier.
    first=none
    hit_ns=""
    for _ in $(seq 6000); do
        kill -0 "$PROXY_PID" 2>/dev/null || die "tile-proxy exited during startup"
        if hdr="$(curl -s --max-time 5 -o "$TMP/probe.body" -D - "$URL$PROBE" 2>/dev/null | tr -d '\r')" && [ -n "$hdr" ]; then
            now="$(date +%s%N)"
            cache="$(awk -F': *' 'tolower($1) == "x-cache" { print $2 }' <<<"$hdr")"
            tier="$(awk -F': *' 'tolower($1) == "x-cache-tier" { print $2 }' <<<"$hdr")"
            first="${cache:-?}${tier:+/$tier}"
            [ "$first" = HIT/disk ] && hit_ns="$now"
            break
        fi
        sleep 0.01
    done
    wait "$POLLER" || true
    ready_ns="$(cat "$TMP/ready.ns")"
    [ -n "$ready_ns" ] || die "restart $r: /ready never answered 200"
    R_READY[r]=$(((ready_ns - T0_NS) / 1000000))
    R_FIRST[r]="$first"
    if [ -n "$hit_ns" ]; then
        R_HIT[r]=$(((hit_ns - T0_NS) / 1000000))
        [ "${R_HIT[r]}" -le "$TARGET_MS" ] || FAILS=$((FAILS + 1))
    else
        R_HIT[r]=-
        FAILS=$((FAILS + 1))
    fi
    R_RECOVER[r]="$(grep -o 'recover\] finish in [0-9.]*[a-zµ]*' "$TMP/proxy.log" | tail -n1 | awk '{ print $4 }')"
    read -r "R_DISK[r]" "R_MEM[r]" "R_MISS[r]" "R_WRONG[r]" < <(check_sample)
    [ "${R_WRONG[r]}" -eq 0 ] || FAILS=$((FAILS + 1))
    log "restart $r: ready ${R_READY[r]} ms, first probe answer $first at ${R_HIT[r]} ms; sample disk ${R_DISK[r]}, memory ${R_MEM[r]}, miss ${R_MISS[r]}, wrong ${R_WRONG[r]}"
done
stop_proxy

COMMIT="$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git -C "$REPO_ROOT" status --porcelain --untracked-files=no 2>/dev/null || true)" ]; then COMMIT="$COMMIT+dirty"; fi
echo
echo "tile-proxy restart with a warm disk tier ($COMMIT, $(date -u +%Y%m%dT%H%M%SZ))"
echo "  memory tier $MEMORY_MIB MiB, disk tier $DISK_MIB MiB holding $((FILL_BYTES / 1048576)) MiB in $TILES tiles of ${MIN_SIZE}-${MAX_SIZE} B"
echo "  page cache of the tier's files $([ "$COLD" = 1 ] && echo "dropped before each start (cold)" || echo "kept (warm)")"
echo "  sample of $SAMPLE stored tiles before the restart: disk $B_DISK, memory $B_MEM, miss $B_MISS, wrong $B_WRONG"
echo
ROWFMT='%-8s %8s %10s %12s %12s %14s %11s %6s %6s\n'
printf "$ROWFMT" restart 'stop ms' 'ready ms' 'disk HIT ms' 'first answer' 'foyer recover' 'sample hit' miss wrong
for r in $(seq "$RESTARTS"); do
    printf "$ROWFMT" "$r" "${R_STOP[r]}" "${R_READY[r]}" "${R_HIT[r]}" "${R_FIRST[r]}" "${R_RECOVER[r]:--}" \
        "$((R_DISK[r] + R_MEM[r]))/$SAMPLE" "${R_MISS[r]}" "${R_WRONG[r]}"
done
echo
if [ "$FAILS" -eq 0 ]; then
    echo "PASS: every restart served a disk hit within $TARGET_MS ms of the process start, no wrong body"
else
    echo "FAIL: $FAILS check(s) failed (disk hit later than $TARGET_MS ms, not a disk hit, or a wrong body)"
    exit 1
fi
