#!/usr/bin/env bash
# Where a disk-tier hit's CPU goes. tile-proxy serves disk hits in run.sh's `disk` setup (working
# set DISK_RATIO x a DISK_MEMORY_MIB memory tier, page cache warm, wrk round robin over the
# tiles); one wrk run measures the server's CPU per request, a second one is sampled by
# `perf record` (cpu-clock, DWARF call graphs). Each sample goes to one bucket by its thread and
# stack, and each bucket is printed as µs per request: its share of the samples x the CPU per
# request of the run without perf. It tells foyer's part of a disk hit (its I/O threads, its
# checksum, the rest of its load) from ours (decoding out of foyer's buffer, promotion, the HTTP
# answer). See bench/README.md "Where a disk hit's CPU goes".
#
#   bench/disk-profile.sh            # 10 s measured, then 10 s sampled
#   bench/disk-profile.sh --smoke    # the plumbing in < 1 min (2 MiB memory tier, 2 s runs)
#
# Environment (all optional):
#   DURATION=10  CONNECTIONS=64  DISK_MEMORY_MIB=64  DISK_RATIO=4  FREQ=999 (samples per second)
#   SERVER_CPU=0 / LOAD_CPU=1  cores;  SKIP_BUILD=1; TARGET_DIR=DIR; KEEP_TMP=1 (keeps perf.data)
# Needs perf (Debian's linux-perf, installed if missing), wrk, curl, python3, taskset.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$BENCH_DIR/.." && pwd)"
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

smoke_flag disk-profile.sh "$@"
if [ "$SMOKE" = 1 ]; then
    DURATION=2 DISK_MEMORY_MIB=2
fi
DURATION="${DURATION:-10}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS=1
DISK_MEMORY_MIB="${DISK_MEMORY_MIB:-64}"
DISK_RATIO="${DISK_RATIO:-4}"
FREQ="${FREQ:-999}"
common_defaults
MIN_SIZE=5000 MAX_SIZE=60000
for v in DURATION CONNECTIONS DISK_MEMORY_MIB DISK_RATIO FREQ; do
    { [[ "${!v}" =~ ^[0-9]+$ ]] && [ "${!v}" -ge 1 ]; } || die "$v must be a whole number >= 1 (got '${!v}')"
done
[[ "$SERVER_CPU$LOAD_CPU" =~ ^[0-9]+$ ]] || die "SERVER_CPU and LOAD_CPU must be core numbers"
[ "$DURATION" -le 120 ] || die "DURATION must be 1..120"
[ "$FREQ" -le 4000 ] || die "FREQ must be 1..4000"

missing=()
command -v perf >/dev/null || missing+=(linux-perf)
command -v wrk >/dev/null || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
[ "${#missing[@]}" -eq 0 ] || apt_install "${missing[@]}"
for t in perf wrk curl python3 taskset timeout; do command -v "$t" >/dev/null || die "needs $t"; done

build_binaries
LOG_FILES=(upstream.log proxy.log perf.log)
bench_tmp

# The disk scenario's tiles: DISK_RATIO x the memory tier in bodies of the mean size.
TILES=$(((DISK_RATIO * DISK_MEMORY_MIB * 1048576 * 2 + MIN_SIZE + MAX_SIZE - 1) / (MIN_SIZE + MAX_SIZE)))
[ "$TILES" -le 20000 ] || die "DISK_RATIO x DISK_MEMORY_MIB asks for $TILES tiles (max 20000)"
TILES_FILE="$TMP/tiles.txt"
make_tiles

start_upstream "$KEY" "$MIN_SIZE" "$MAX_SIZE"
port="$(free_port "$UPSTREAM_PORT")"
URL="http://127.0.0.1:$port"
log "tile-proxy on $URL (core $SERVER_CPU, memory tier ${DISK_MEMORY_MIB}MiB, disk tier 1GiB, $TILES tiles)"
env -u RUST_LOG RUST_LOG=warn HERE_API_KEY="$KEY" TILE_PROXY_LISTEN="127.0.0.1:$port" \
    TILE_PROXY_RASTER_UPSTREAM="$UPSTREAM_URL" TILE_PROXY_VECTOR_UPSTREAM="$UPSTREAM_URL" \
    TILE_PROXY_CACHE_DIR="$TMP/cache" TILE_PROXY_MEMORY_CACHE="${DISK_MEMORY_MIB}MiB" \
    TILE_PROXY_DISK_CACHE=1GiB TILE_PROXY_DEFAULTS__RATE_LIMIT=0 TILE_PROXY_WORKERS=1 \
    taskset -c "$SERVER_CPU" "$PROXY_BIN" >"$TMP/proxy.log" 2>&1 &
PROXY_PID=$!
PIDS+=("$PROXY_PID")
wait_ready tile-proxy "$PROXY_PID" "$URL/ready"

# Fill (misses), then a second pass that must be all hits (it also reads the disk tier's files
# into the page cache), then an unmeasured wrk run.
warm fill "$URL"
up="$(upstream_total)"
warm pass2 "$URL"
[ "$(upstream_total)" -eq "$up" ] || die "the second pass went upstream: the disk tier dropped tiles"
run_wrk warmup "$URL" 2 "$TMP/wrk-warmup.txt" "$PROXY_PID" >/dev/null

# Hits so far by tier, from one scrape: "disk memory".
tier_hits() {
    curl -sf --max-time 5 "$URL/metrics" >"$TMP/metrics.txt" || die "cannot read $URL/metrics"
    echo "$(metric_sum "$TMP/metrics.txt" tile_proxy_cache_hits_total 'tier="disk"')" \
        "$(metric_sum "$TMP/metrics.txt" tile_proxy_cache_hits_total 'tier="memory"')"
}

log "measuring: wrk ${DURATION}s, no profiler"
read -r d0 m0 < <(tier_hits)
read -r rps _ _ _ reqs errs _ _ _ _ _ cpu_ns _ < <(run_wrk measured "$URL" "$DURATION" "$TMP/wrk-measured.txt" "$PROXY_PID")
read -r d1 m1 < <(tier_hits)
[ "$errs" -eq 0 ] || die "wrk counted $errs errors"
US_PER_REQ="$(awk -v ns="$cpu_ns" -v r="$reqs" 'BEGIN { printf "%.1f", ns / 1000 / r }')"
DISK_SHARE="$(awk -v d=$((d1 - d0)) -v m=$((m1 - m0)) 'BEGIN { if (d + m) printf "%.0f", 100 * d / (d + m); else print 0 }')"

log "sampling: wrk ${DURATION}s under perf record -F $FREQ"
perf record -F "$FREQ" -e cpu-clock --call-graph dwarf,16384 -p "$PROXY_PID" -o "$TMP/perf.data" \
    >"$TMP/perf.log" 2>&1 &
PERF_PID=$!
sleep 0.5
run_wrk sampled "$URL" "$DURATION" "$TMP/wrk-sampled.txt" "$PROXY_PID" >/dev/null
kill -INT "$PERF_PID"
wait "$PERF_PID" || true
[ -s "$TMP/perf.data" ] || { cat "$TMP/perf.log" >&2; die "perf recorded nothing (perf_event_paranoid? $(cat /proc/sys/kernel/perf_event_paranoid))"; }
perf script -i "$TMP/perf.data" -F comm,tid,ip,sym --no-inline 2>/dev/null >"$TMP/stacks.txt"

echo
echo "Where a disk-tier hit's CPU goes ($(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u +%Y%m%dT%H%M%SZ))"
echo "  $TILES tiles ($MIN_SIZE-$MAX_SIZE B) over a ${DISK_MEMORY_MIB} MiB memory tier; wrk -c$CONNECTIONS ${DURATION}s on core $LOAD_CPU, tile-proxy on core $SERVER_CPU"
echo "  without perf: $rps req/s, $US_PER_REQ µs of server CPU per request; $DISK_SHARE% of the hits from the disk tier"
python3 - "$TMP/stacks.txt" "$US_PER_REQ" <<'EOF'
import sys

# (bucket, whose, test on the sample's thread name and frames); the first that matches wins.
BUCKETS = [
    ("foyer's I/O threads: pread of the record, blocking-pool hand-off", "foyer",
     lambda comm, frames: comm.startswith("foyer-")),
    ("foyer's checksum of the record read (xxHash64, always on)", "foyer",
     lambda comm, frames: any("Checksummer::checksum64" in f for f in frames)),
    ("decoding the entry out of foyer's read buffer (one copy of the body)", "ours",
     lambda comm, frames: any("tile_proxy::entry::Entry::decode" in f for f in frames)),
    ("foyer's load, the rest: index, read buffer, hand-off, header, metrics", "foyer",
     lambda comm, frames: any("BlockEngine<K,V,P>::load" in f or "foyer_storage::store::Store" in f for f in frames)),
    ("disk lookup, the rest: promotion into the memory tier", "ours",
     lambda comm, frames: any("FoyerTier as tile_proxy::cache::Tier>::get" in f for f in frames)),
    ("the rest: HTTP in and out, metrics, send, freeing the entry, wake-ups", "ours",
     lambda comm, frames: True),
]

ROOTS = ("HttpServiceHandlerResponse", "h1::dispatcher", "LocalSet", "runtime::", "start_thread", "clone3")


def samples(path):
    comm, frames = None, []
    with open(path, errors="replace") as f:
        for line in f:
            if not line.strip():
                if comm is not None:
                    yield comm, frames
                comm, frames = None, []
            elif not line[0].isspace():
                comm, frames = line.rsplit(None, 1)[0].strip(), []
            else:
                parts = line.split(None, 1)
                frames.append(parts[1].strip() if len(parts) > 1 else "")
    if comm is not None:
        yield comm, frames

counts = [0] * len(BUCKETS)
total = rooted = 0
for comm, frames in samples(sys.argv[1]):
    total += 1
    # A stack unwound up to actix's HTTP service (the buckets' frames all lie below it), the
    # runtime's loop or a thread's start was read deep enough.
    if any(r in f for f in frames for r in ROOTS):
        rooted += 1
    for i, (_, _, test) in enumerate(BUCKETS):
        if test(comm, frames):
            counts[i] += 1
            break
if total == 0:
    sys.exit("disk-profile: no samples")
us = float(sys.argv[2])
print(f"  {total} samples; {100 * rooted / total:.0f}% with a stack deep enough to place (the rest count in the last row)")
print()
print(f"  {'µs/req':>7} {'share':>6}  whose  where")
per = {"foyer": 0.0, "ours": 0.0}
for (name, whose, _), n in zip(BUCKETS, counts):
    share = n / total
    per[whose] += share * us
    print(f"  {share * us:7.1f} {100 * share:5.1f}%  {whose:<5}  {name}")
print(f"  {us:7.1f} 100.0%         all")
print()
print(f"  foyer's read path: {per['foyer']:.1f} µs per request; ours: {per['ours']:.1f}")
EOF
