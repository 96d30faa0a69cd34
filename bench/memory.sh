#!/usr/bin/env bash
# Resident memory of tile-proxy against its memory tier: fills the cache with FILL x the memory
# tier's capacity of distinct tiles, sends hit traffic, lets it settle and reports VmRSS / VmHWM
# minus the tier, for several builds / environments side by side in one run, with a PASS/FAIL
# line against the bound (RSS <= memory tier + BOUND_MIB). See bench/README.md "Memory bound".
#
#   bench/memory.sh            # this tree's release build, disk tier on and memory-only
#   bench/memory.sh --smoke    # the plumbing in < 60 s: 16 MiB tier, short settle
#   VARIANTS="glibc:/tmp/t-glibc glibc-arena2:/tmp/t-glibc:MALLOC_ARENA_MAX=2 jemalloc:/tmp/t-jemalloc" \
#       SKIP_BUILD=1 bench/memory.sh
#
# Environment (all optional):
#   VARIANTS="NAME[:TARGET_DIR[:VAR=VALUE;VAR=VALUE...]] ..."  builds to compare: the binary is
#                    TARGET_DIR/release/tile-proxy (default TARGET_DIR), the variables are added
#                    to its environment (MALLOC_ARENA_MAX=2, TILE_PROXY_DISK_BUFFER=4MiB, ...).
#                    Default: one variant "default" from TARGET_DIR.
#   MODES="disk memory"  disk = memory tier + DISK_MIB disk tier; memory = memory tier only
#   MEMORY_MIB=64    memory tier          DISK_MIB=512  disk tier
#   FILL=4           distinct tiles worth FILL x the memory tier are requested once each
#   BOUND_MIB=64     PASS when the settled VmRSS <= memory tier + BOUND_MIB
#   SETTLE=10        seconds between the last request and the reading (RSS sampled each second)
#   HIT_SECONDS=5    seconds of wrk on tiles the memory tier holds (req/s column; 0 = none)
#   WORKERS=2        tile-proxy workers    SERVER_CPU=0 / LOAD_CPU=1  cores (proxy / load+upstream)
#   SKIP_BUILD=1     do not run cargo      TARGET_DIR=DIR  cargo target dir (default REPO/target)
#   KEEP_TMP=1       keep the temp dir (logs, caches)
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$BENCH_DIR/.." && pwd)"
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

smoke_flag memory.sh "$@"
if [ "$SMOKE" = 1 ]; then
    MEMORY_MIB=16 DISK_MIB=128 SETTLE=2 HIT_SECONDS=1
fi
MEMORY_MIB="${MEMORY_MIB:-64}"
DISK_MIB="${DISK_MIB:-512}"
FILL="${FILL:-4}"
BOUND_MIB="${BOUND_MIB:-64}"
SETTLE="${SETTLE:-10}"
HIT_SECONDS="${HIT_SECONDS:-5}"
WORKERS="${WORKERS:-2}"
common_defaults
MODES="${MODES:-disk memory}"
VARIANTS="${VARIANTS:-default:$TARGET_DIR}"
MIN_SIZE=5000
MAX_SIZE=60000
THREADS=1
CONNECTIONS=16
for v in MEMORY_MIB DISK_MIB FILL BOUND_MIB SETTLE HIT_SECONDS WORKERS SERVER_CPU LOAD_CPU; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a whole number (got '${!v}')"
done
[ "$MEMORY_MIB" -ge 8 ] && [ "$MEMORY_MIB" -le 1024 ] || die "MEMORY_MIB must be 8..1024"
[ "$DISK_MIB" -ge $((2 * MEMORY_MIB)) ] || die "DISK_MIB must be at least 2 x MEMORY_MIB"
[ "$FILL" -ge 1 ] && [ "$FILL" -le 16 ] || die "FILL must be 1..16"
[ "$SETTLE" -le 300 ] && [ "$HIT_SECONDS" -le 120 ] || die "SETTLE <= 300, HIT_SECONDS <= 120"
for m in $MODES; do [ "$m" = disk ] || [ "$m" = memory ] || die "MODES: 'disk' or 'memory', not '$m'"; done

missing=()
for t in curl wrk taskset timeout; do command -v "$t" >/dev/null || missing+=("$t"); done
[ "${#missing[@]}" -eq 0 ] || die "missing tools: ${missing[*]} (apt-get install curl wrk util-linux coreutils)"

build_binaries
LOG_FILES=(upstream.log proxy.log)
bench_tmp

# ---- tiles: FILL x the tier, by the upstream's mean body size -------------------------------
TILES=$(((FILL * MEMORY_MIB * 1048576) / ((MIN_SIZE + MAX_SIZE) / 2) + 1))
# make_tiles has about 28,000 distinct tiles (z 12-14) to give.
[ "$TILES" -le 20000 ] || die "$TILES tiles needed: more than the 20000 the tile list has; raise the tile sizes"
TILES_FILE="$TMP/tiles.txt"
make_tiles
ALL_TILES="$TILES_FILE"
# Hit traffic: the first quarter again (disk hits with the disk tier, misses without), then wrk
# on the most recent tiles of that pass worth half the memory tier (memory hits in both modes).
QUARTER=$((TILES / 4))
head -n "$QUARTER" "$ALL_TILES" >"$TMP/again.txt"
HOT=$(((MEMORY_MIB * 1048576 / 2) / ((MIN_SIZE + MAX_SIZE) / 2)))
[ "$HOT" -le "$QUARTER" ] || HOT="$QUARTER"
tail -n "$HOT" "$TMP/again.txt" >"$TMP/hot.txt"

start_upstream "$KEY" "$MIN_SIZE" "$MAX_SIZE"

# Requests every path in a file once (8 in parallel, bounded); prints "ok bytes".
fetch_all() { # name file base-url
    local cfg="$TMP/fetch-$1.curl"
    awk -v base="$3" '{ printf "url = \"%s%s\"\noutput = \"/dev/null\"\n", base, $0 }' "$2" >"$cfg"
    timeout 600 taskset -c "$LOAD_CPU" curl -s --parallel --parallel-max 8 --max-time 30 \
        -w '%{http_code} %{size_download}\n' -K "$cfg" >"$TMP/fetch-$1.out" 2>/dev/null || true
    awk '$1 == 200 { n++; b += $2 } END { printf "%d %d\n", n, b }' "$TMP/fetch-$1.out"
}

kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; } # pid field -> kB
mib() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }

declare -a ROWS=()
FAILS=0
for spec in $VARIANTS; do
    IFS=: read -r name dir envs <<<"$spec"
    dir="${dir:-$TARGET_DIR}"
    bin="$dir/release/tile-proxy"
    [ -x "$bin" ] || die "variant $name: no binary $bin"
    extra=()
    [ -z "$envs" ] || IFS=";" read -r -a extra <<<"$envs"
    for mode in $MODES; do
        label="$name/$mode"
        disk=0
        [ "$mode" = disk ] && disk="${DISK_MIB}MiB"
        port="$(free_port "$UPSTREAM_PORT")"
        url="http://127.0.0.1:$port"
        cache="$TMP/cache-$name-$mode"
        mkdir -p "$cache"
        log "$label: tile-proxy on $url (memory ${MEMORY_MIB}MiB, disk $disk, ${extra[*]:-no extra env})"
        env HERE_API_KEY="$KEY" TILE_PROXY_LISTEN="127.0.0.1:$port" \
            TILE_PROXY_RASTER_UPSTREAM="$UPSTREAM_URL" TILE_PROXY_VECTOR_UPSTREAM="$UPSTREAM_URL" \
            TILE_PROXY_CACHE_DIR="$cache" TILE_PROXY_MEMORY_CACHE="${MEMORY_MIB}MiB" \
            TILE_PROXY_DISK_CACHE="$disk" TILE_PROXY_DEFAULTS__RATE_LIMIT=0 TILE_PROXY_WORKERS="$WORKERS" TILE_PROXY_DRAIN_DELAY=0s \
            RUST_LOG=warn "${extra[@]}" \
            taskset -c "$SERVER_CPU" "$bin" >"$TMP/proxy.log" 2>&1 &
        pid=$!
        PIDS+=("$pid")
        wait_ready tile-proxy "$pid" "$url/ready"
        up0="$(upstream_total)"

        read -r filled fill_bytes < <(fetch_all "$name-$mode-fill" "$ALL_TILES" "$url")
        [ "$filled" -eq "$TILES" ] || die "$label: $filled of $TILES fill requests answered 200"
        read -r again _ < <(fetch_all "$name-$mode-again" "$TMP/again.txt" "$url")
        [ "$again" -eq "$QUARTER" ] || die "$label: $again of $QUARTER repeat requests answered 200"
        up1="$(upstream_total)"
        rps=-
        if [ "$HIT_SECONDS" -gt 0 ]; then
            fetch_all "$name-$mode-hot" "$TMP/hot.txt" "$url" >/dev/null
            up_hot="$(upstream_total)"
            export TILES_FILE="$TMP/hot.txt" # tiles.lua reads it
            line="$(run_wrk "$label" "$url" "$HIT_SECONDS" "$TMP/wrk-$name-$mode.txt" "$pid")"
            read -r rps _ _ _ _ errs _ <<<"$line"
            [ "$errs" -eq 0 ] || die "$label: wrk saw $errs errors"
            [ "$(upstream_total)" -eq "$up_hot" ] || log "WARNING $label: upstream requests during the hit run (not all hits)"
            rps="$(fmt "$rps" 0)"
        fi
        used="$(curl -sf --max-time 5 "$url/health" | grep -o '"used_bytes":[ ]*[0-9]*' | grep -o '[0-9]*$' | head -n1 || echo 0)"

        peak=0
        for _ in $(seq "$SETTLE"); do
            sleep 1
            r="$(kib "$pid" VmRSS)"
            [ "$r" -le "$peak" ] || peak="$r"
        done
        rss="$(kib "$pid" VmRSS)"
        hwm="$(kib "$pid" VmHWM)"
        threads="$(kib "$pid" Threads)"
        over=$(((rss / 1024) - MEMORY_MIB))
        verdict=PASS
        [ "$over" -le "$BOUND_MIB" ] || { verdict=FAIL; FAILS=$((FAILS + 1)); }
        ROWS+=("$(printf '%-22s %6s %7s %6s %7s %8s %7s %8s %7s %8s  %s' "$label" \
            "$(mib $((fill_bytes / 1024)))" "$(mib $((used / 1024)))" "$threads" "$(mib "$rss")" "+$over" \
            "$(mib "$hwm")" "+$(($(mib "$hwm") - MEMORY_MIB))" "$((up1 - up0))" "$rps" "$verdict")")
        log "$label: VmRSS $(mib "$rss") MiB (tier $MEMORY_MIB MiB, +$over), VmHWM $(mib "$hwm") MiB, hits $rps req/s: $verdict"

        kill -TERM "$pid"
        for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && die "$label: tile-proxy did not stop within 30 s of SIGTERM"
        wait "$pid" 2>/dev/null || true
        rm -rf "$cache"
    done
done

COMMIT="$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git -C "$REPO_ROOT" status --porcelain --untracked-files=no 2>/dev/null || true)" ]; then COMMIT="$COMMIT+dirty"; fi
echo
echo "tile-proxy resident memory vs a ${MEMORY_MIB} MiB memory tier ($COMMIT, $(date -u +%Y%m%dT%H%M%SZ))"
echo "  fill: $TILES distinct tiles (${MIN_SIZE}-${MAX_SIZE} B) once, then the first $QUARTER again, then"
echo "  ${HIT_SECONDS}s wrk -c$CONNECTIONS on $HOT of them; settle ${SETTLE}s; $WORKERS worker(s); disk tier ${DISK_MIB} MiB in 'disk' mode"
echo
printf '%-22s %6s %7s %6s %7s %8s %7s %8s %7s %8s  %s\n' variant/mode 'filled' 'tier' threads 'VmRSS' 'RSS-tier' 'VmHWM' 'HWM-tier' 'upstrm' 'hit rps' "bound +${BOUND_MIB}"
printf '%-22s %6s %7s %6s %7s %8s %7s %8s %7s %8s\n' '' MiB 'used' '' MiB MiB MiB MiB 'reqs' ''
for row in "${ROWS[@]}"; do echo "$row"; done
echo
if [ "$FAILS" -eq 0 ]; then
    echo "PASS: every run settled within memory tier + $BOUND_MIB MiB"
else
    echo "FAIL: $FAILS run(s) settled above memory tier + $BOUND_MIB MiB"
    exit 1
fi
