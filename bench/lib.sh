# shellcheck shell=bash
# Helpers shared by bench/run.sh and bench/redis.sh. Source it (after `set -euo pipefail`), do not
# run it. Nothing here starts a process or touches a file until a function is called.
#
# Globals the helpers read (the caller sets them):
#   BENCH_NAME                  name in error messages (default: the script's file name)
#   BENCH_DIR, REPO_ROOT        the bench/ directory (tiles.lua) and the repository root
#   SKIP_BUILD, TARGET_DIR      build_binaries
#   TILES, TILES_FILE           make_tiles, warm, check_hits
#   SERVER_CPU, LOAD_CPU        cores for the servers / for wrk, curl, the upstream
#   THREADS, CONNECTIONS        run_wrk (WRK_SCRIPT: its wrk script, default tiles.lua)
#   KEEP_TMP, LOG_FILES         cleanup (LOG_FILES: names in $TMP whose tails are shown on failure)
# Globals the helpers set: TMP and PIDS (bench_tmp), PROXY_BIN and UPSTREAM_BIN (build_binaries),
# UPSTREAM_PID, UPSTREAM_URL and UPSTREAM_PORT (start_upstream), CLK_TCK.

BENCH_NAME="${BENCH_NAME:-$(basename "$0")}"

die() { echo "$BENCH_NAME: error: $*" >&2; exit 1; }
log() { echo "==> $*" >&2; }

# ---- tools and build -------------------------------------------------------------------------
apt_install() { # package...
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

# cargo build of the binaries into TARGET_DIR (unless SKIP_BUILD=1); sets PROXY_BIN, UPSTREAM_BIN
# and, with BUILD_CEILING=1, CEILING_BIN (bench/ceiling, the bare actix-web server).
build_binaries() {
    local pkgs=(-p tile-proxy -p test-upstream)
    [ "${BUILD_CEILING:-0}" != 1 ] || pkgs+=(-p bench-ceiling)
    if [ "$SKIP_BUILD" != 1 ]; then
        log "cargo build --release --locked --bins ${pkgs[*]} (target dir $TARGET_DIR)"
        (cd "$REPO_ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release --locked --bins "${pkgs[@]}")
    fi
    PROXY_BIN="$TARGET_DIR/release/tile-proxy"
    UPSTREAM_BIN="$TARGET_DIR/release/test-upstream"
    CEILING_BIN="$TARGET_DIR/release/bench-ceiling"
    [ -x "$PROXY_BIN" ] && [ -x "$UPSTREAM_BIN" ] || die "binaries not found in $TARGET_DIR/release (build first, or set TARGET_DIR)"
    [ "${BUILD_CEILING:-0}" != 1 ] || [ -x "$CEILING_BIN" ] || die "bench-ceiling not found in $TARGET_DIR/release"
}

# ---- process bookkeeping and cleanup ---------------------------------------------------------
# Makes the temp dir TMP and installs the traps: on exit (also on failure or Ctrl-C) every pid in
# PIDS is stopped (TERM, then KILL after 5 s) and TMP removed unless KEEP_TMP=1.
bench_tmp() {
    TMP="$(mktemp -d "${TMPDIR:-/tmp}/tile-proxy-bench.XXXXXX")"
    chmod 755 "$TMP"
    PIDS=()
    [ -n "${LOG_FILES+set}" ] || LOG_FILES=()
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    local pid alive _ f
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for _ in $(seq 50); do
        alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
    wait 2>/dev/null
    if [ "$rc" -ne 0 ]; then
        for f in "${LOG_FILES[@]}"; do
            [ -s "$TMP/$f" ] && { echo "---- last lines of $f ----" >&2; tail -n 15 "$TMP/$f" >&2; }
        done
    fi
    if [ "${KEEP_TMP:-0}" = 1 ]; then
        echo "temp dir kept: $TMP" >&2
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}

# A port nothing listens on (checked by connecting; loopback only), other than the ones given.
# Taken below the kernel's ephemeral range (ip_local_port_range) when there is room: a port in
# that range may be the local end of one of wrk's or curl's connections, and then a server's
# bind fails with "Address already in use" although nothing listens there.
free_port() { # [port-to-avoid...]
    local p _ q taken lo=32768 base=20000 span=30000
    read -r lo _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
    if [ "$lo" -gt 12000 ]; then base=10000 span=$((lo - 10000)); fi
    for _ in $(seq 200); do
        p=$((base + RANDOM % span))
        taken=0
        for q in "$@"; do [ "$q" = "$p" ] && taken=1; done
        [ "$taken" = 0 ] || continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
    done
    die "no free port found"
}

wait_ready() { # name pid url
    local _
    for _ in $(seq 300); do
        kill -0 "$2" 2>/dev/null || die "$1 exited during startup"
        curl -sf -o /dev/null --max-time 1 "$3" && return 0
        sleep 0.2
    done
    die "$1 not ready after 60 s ($3)"
}

# ---- test upstream ---------------------------------------------------------------------------
# Starts test-upstream on LOAD_CPU, logging to $TMP/upstream.log; sets UPSTREAM_PID/URL/PORT.
# Further arguments go to test-upstream as they are (e.g. --sizes FILE).
start_upstream() { # key min-size max-size [test-upstream arg...]
    local _ key="$1" min="$2" max="$3"
    shift 3
    log "starting test-upstream (core $LOAD_CPU, bodies $min-$max bytes${*:+; $*})"
    taskset -c "$LOAD_CPU" "$UPSTREAM_BIN" --listen 127.0.0.1:0 --key "$key" \
        --min-size "$min" --max-size "$max" "$@" >"$TMP/upstream.log" 2>&1 &
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
    # shellcheck disable=SC2034 # for the caller
    UPSTREAM_PORT="${UPSTREAM_URL##*:}"
    wait_ready test-upstream "$UPSTREAM_PID" "$UPSTREAM_URL/__stats"
}

upstream_total() { # -> requests the upstream has answered so far
    curl -sf --max-time 5 "$UPSTREAM_URL/__stats" | grep -o '"total":[ ]*[0-9]*' | grep -o '[0-9]*$'
}

# ---- CPU accounting --------------------------------------------------------------------------
CLK_TCK="$(getconf CLK_TCK)"
# Every pid of the process trees rooted at the given pids (nginx: master, workers, cache manager
# and loader), each once.
tree_pids() { # pid...
    local queue=("$@") seen=" " p c
    while [ "${#queue[@]}" -gt 0 ]; do
        p="${queue[0]}"
        queue=("${queue[@]:1}")
        case "$seen" in *" $p "*) continue ;; esac
        [ -d "/proc/$p" ] || continue
        seen="$seen$p "
        for c in $(cat /proc/"$p"/task/*/children 2>/dev/null || pgrep -P "$p" 2>/dev/null || true); do
            queue+=("$c")
        done
    done
    echo "$seen"
}

# CPU ticks (user+sys, 1/CLK_TCK s) used so far by the given process trees (all threads, also
# the ones that have exited).
cpu_ticks() { # pid...
    local total=0 p t
    for p in $(tree_pids "$@"); do
        t="$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null || echo 0)"
        total=$((total + t))
    done
    echo "$total"
}

# One line "tid ns" per thread of the given process trees: nanoseconds on CPU so far, from
# /proc/PID/task/TID/schedstat (first field), or from the thread's stat ticks where the kernel
# has no schedstat. Threads are read with grep, which skips one that exits while being read.
cpu_threads() { # pid...
    local p
    for p in $(tree_pids "$@"); do
        if [ -r "/proc/$p/task/$p/schedstat" ]; then
            { grep -H '' /proc/"$p"/task/*/schedstat 2>/dev/null || true; } | awk -F'[/: ]' '{ print $5, $7 }'
        else
            { grep -H '' /proc/"$p"/task/*/stat 2>/dev/null || true; } | awk -v tck="$CLK_TCK" '{
                split($0, a, "/"); tid = a[5]; sub(/^.*\) /, "")
                printf "%s %.0f\n", tid, ($12 + $13) * 1e9 / tck }'
        fi
    done
}

# CPU ns used between two cpu_threads snapshots, and how many threads exited in between (their
# time after the first snapshot is lost: a high count makes the figure a lower bound).
cpu_delta() { # before-file after-file -> "ns exited"
    awk 'FILENAME == ARGV[1] { b[$1] = $2; next }
         { seen[$1] = 1; d += $2 - (($1 in b) ? b[$1] : 0) }
         END { x = 0; for (t in b) if (!(t in seen)) x++; printf "%.0f %d\n", d, x }' "$1" "$2"
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

# ---- tiles -----------------------------------------------------------------------------------
# Writes TILES distinct raster tile paths (z 12..14, valid x and y) to TILES_FILE and exports it
# for tiles.lua. Deterministic: every run and every script requests the same tiles.
make_tiles() {
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
}

# Requests every tile once (curl on LOAD_CPU, 8 in parallel); every answer must be 200. Leaves
# the body bytes received in $TMP/warm-NAME.bytes.
warm() { # name base-url
    local name="$1" base="$2" cfg="$TMP/warm-$1.curl" ok
    awk -v base="$base" '{ printf "url = \"%s%s\"\noutput = \"/dev/null\"\n", base, $0 }' \
        "$TILES_FILE" >"$cfg"
    timeout 300 taskset -c "$LOAD_CPU" curl -s --parallel --parallel-max 8 --max-time 30 \
        -w '%{http_code} %{size_download}\n' -K "$cfg" >"$TMP/warm-$name.codes" 2>"$TMP/warm-$name.err" || true
    ok="$(grep -c '^200 ' "$TMP/warm-$name.codes" || true)"
    [ "$ok" -eq "$TILES" ] || die "warming $name: $ok of $TILES requests answered 200 (status x count:" \
        "$(awk '{ n[$1]++ } END { for (c in n) printf " %s x%d", c, n[c] }' "$TMP/warm-$name.codes"); 000 = no answer)"
    awk '$1 == 200 { s += $2 } END { printf "%d\n", s }' "$TMP/warm-$name.codes" >"$TMP/warm-$name.bytes"
}

# Every 1/20th tile must answer X-Cache: HIT (and, if a tier is given, X-Cache-Tier: that tier);
# prints how many tiles were sampled.
check_hits() { # name base-url [tier]
    local name="$1" base="$2" tier="${3:-}" step path n=0 hits=0 _ hdr
    step=$(((TILES + 19) / 20))
    while read -r path; do
        n=$((n + 1))
        for _ in 1 2 3 4 5; do
            hdr="$(curl -s --max-time 5 -o /dev/null -D - "$base$path" | tr -d '\r' || true)"
            if grep -qi '^x-cache: *HIT$' <<<"$hdr" &&
                { [ -z "$tier" ] || grep -qi "^x-cache-tier: *$tier\$" <<<"$hdr"; }; then
                hits=$((hits + 1)); break
            fi
            sleep 0.2
        done
    done < <(awk -v s="$step" '(NR - 1) % s == 0' "$TILES_FILE")
    [ "$hits" -eq "$n" ] ||
        die "$name: only $hits of $n sampled tiles answered X-Cache: HIT${tier:+ with X-Cache-Tier: $tier}"
    echo "$n"
}

# ---- wrk -------------------------------------------------------------------------------------
# wrk prints e.g. "456.00us", "1.23ms", "1.02s"; transfer as "12.34MB" (binary units).
to_ms() { awk -v v="$1" 'BEGIN { n = v + 0
    if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /m$/) n *= 60000
    else if (v ~ /s$/) n *= 1000
    printf "%.3f", n }'; }
to_mib() { awk -v v="$1" 'BEGIN { n = v + 0
    if (v ~ /GB$/) n *= 1024; else if (v ~ /MB$/) n += 0; else if (v ~ /KB$/) n /= 1024
    else if (v ~ /B$/) n /= 1048576
    printf "%.2f", n }'; }

# One wrk run (wrk on LOAD_CPU, tiles.lua over TILES_FILE, or the script WRK_SCRIPT names) against
# URL; the CPU of the given server process trees is measured over it. Prints one line:
#   rps p50_ms p99_ms mib_s requests errors server_cpu% wrk_cpu% server_core% load_core% server_cpu_s
#   server_cpu_ns exited_threads
# (server_cpu_s from /proc/PID/stat ticks; server_cpu_ns from per-thread schedstat, see cpu_threads.)
run_wrk() { # name url duration outfile pid...
    local name="$1" url="$2" dur="$3" out="$4"
    shift 4
    [ "$#" -ge 1 ] || die "run_wrk $name: no server pid to measure"
    local pids=("$@") c0 c1 t0 t1 user sys
    c0="$(cpu_ticks "${pids[@]}")"
    cpu_threads "${pids[@]}" >"$out.cpu0"
    local s0 l0 s1 l1
    s0="$(core_jiffies "$SERVER_CPU")"; l0="$(core_jiffies "$LOAD_CPU")"
    t0="$(date +%s.%N)"
    local TIMEFORMAT='%U %S'
    { time timeout $((dur + 30)) taskset -c "$LOAD_CPU" wrk -t"$THREADS" -c"$CONNECTIONS" -d"${dur}s" \
        --timeout 5s --latency -s "${WRK_SCRIPT:-$BENCH_DIR/tiles.lua}" "$url" >"$out" 2>"$out.err"; } 2>"$out.time" ||
        { cat "$out.err" >&2; die "wrk against $name failed"; }
    t1="$(date +%s.%N)"
    c1="$(cpu_ticks "${pids[@]}")"
    cpu_threads "${pids[@]}" >"$out.cpu1"
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
    local ns exited
    read -r ns exited < <(cpu_delta "$out.cpu0" "$out.cpu1")
    awk -v rps="$rps" -v p50="$p50" -v p99="$p99" -v x="$xfer" -v r="$reqs" -v e="$errs" \
        -v c0="$c0" -v c1="$c1" -v tck="$CLK_TCK" -v t0="$t0" -v t1="$t1" -v u="$user" -v s="$sys" \
        -v sb="$(core_busy "$s0" "$s1")" -v lb="$(core_busy "$l0" "$l1")" -v ns="$ns" -v ex="$exited" \
        'BEGIN { wall = t1 - t0; if (wall <= 0) wall = 1
                 printf "%.2f %.3f %.3f %.2f %d %d %.0f %.0f %d %d %.3f %.0f %d\n", rps, p50, p99, x, r, e,
                        100 * (c1 - c0) / tck / wall, 100 * (u + s) / wall, sb, lb, (c1 - c0) / tck, ns, ex }'
}

# Sum of a Prometheus metric's samples in a scrape, optionally only series whose text contains
# FILTER (e.g. 'tier="disk"').
metric_sum() { # file metric [filter]
    awk -v m="$2" -v f="${3:-}" '/^#/ { next } { n = $1; sub(/\{.*/, "", n) }
        n == m && (f == "" || index($1, f)) { s += $NF } END { printf "%d\n", s }' "$1"
}

# ---- traces and replay (bench/eviction.sh, bench/traces-vs.sh) ---------------------------------
# replay_binaries: PROXY_BIN, UPSTREAM_BIN, REPLAY_BIN (bench-replay) from BIN_DIR when set (nothing
# is built), else from TARGET_DIR/PROFILE (release or debug) after a cargo build --locked of the
# three unless SKIP_BUILD=1.
replay_binaries() {
    if [ -z "${BIN_DIR:-}" ]; then
        BIN_DIR="$TARGET_DIR/$PROFILE"
        if [ "$SKIP_BUILD" != 1 ]; then
            local flags=(--locked --bins -p tile-proxy -p test-upstream -p bench-replay)
            [ "$PROFILE" = release ] && flags=(--release "${flags[@]}")
            log "cargo build ${flags[*]} (target dir $TARGET_DIR)"
            (cd "$REPO_ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build "${flags[@]}")
        fi
    fi
    PROXY_BIN="$BIN_DIR/tile-proxy" UPSTREAM_BIN="$BIN_DIR/test-upstream" REPLAY_BIN="$BIN_DIR/bench-replay"
    local b
    for b in "$PROXY_BIN" "$UPSTREAM_BIN" "$REPLAY_BIN"; do [ -x "$b" ] || die "$b not found (build it, or set BIN_DIR)"; done
}

# make_trace NAME [scan-bytes] (NAME zipf, viewport or scan-*; reads ALPHA, DISTINCT, REQUESTS,
# SESSIONS, SEED, TMP): writes $TMP/NAME.trace; its summary (key=value) to $TMP/NAME.summary.
make_trace() {
    local name="$1" args=()
    case "$name" in
        zipf) args=(zipf --alpha "$ALPHA" --distinct "$DISTINCT" --requests "$REQUESTS") ;;
        viewport) args=(viewport --sessions "$SESSIONS" --requests "$REQUESTS") ;;
        scan-*) args=(scan --base zipf --alpha "$ALPHA" --distinct "$DISTINCT" --requests "$REQUESTS" --scan-bytes "$2") ;;
    esac
    timeout 600 python3 "$BENCH_DIR/trace.py" "${args[@]}" --seed "$SEED" --out "$TMP/$name.trace" \
        2>"$TMP/$name.summary" || { cat "$TMP/$name.summary" >&2; die "trace.py $name failed"; }
    grep -q '^requests=' "$TMP/$name.summary" || die "trace.py $name printed no summary"
}

# make_base_trace TRACE (zipf, viewport or scan): writes the trace the capacities are taken from
# and sets BASE to its name: TRACE's own, or for scan its zipf base (the scan trace itself is
# made later, with a sweep sized from those capacities).
make_base_trace() {
    if [ "$1" = scan ]; then
        [ -s "$TMP/zipf.trace" ] || make_trace zipf
        BASE=zipf
    else
        make_trace "$1"
        BASE="$1"
    fi
}
summary() { # name key
    tr ' ' '\n' <"$TMP/$1.summary" | sed -n "s/^$2=//p" | head -n1
}
# stop_pid PID: TERM, KILL after 15 s; drops it from PIDS.
stop_pid() {
    local pid="$1" _ left=() p
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || left+=("$p"); done
    PIDS=("${left[@]}")
}

# start_replay_proxy: a fresh tile-proxy (empty cache dir $TMP/cache) on a free port, pinned to
# SERVER_CPU, in front of UPSTREAM_URL: memory tier of that policy and size, disk tier of
# disk-bytes (0: off), TILE_PROXY_WORKERS=WORKERS, access log off, client rate limit off,
# RUST_LOG=warn. Sets PROXY_URL and PROXY_PID (added to PIDS).
# PROXY_ENV: more of tile-proxy's environment, space-separated NAME=value words (a setting to
# compare, e.g. PROXY_ENV="TILE_PROXY_DISK_ADMISSION=repeat").
start_replay_proxy() { # policy memory-bytes disk-bytes
    local port extra=()
    read -ra extra <<<"${PROXY_ENV:-}"
    for kv in "${extra[@]}"; do [[ "$kv" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "PROXY_ENV: '$kv' is not NAME=value"; done
    port="$(free_port "$UPSTREAM_PORT")"
    PROXY_URL="http://127.0.0.1:$port"
    rm -rf "$TMP/cache"
    mkdir -p "$TMP/cache"
    env -i PATH="$PATH" HOME="$TMP" RUST_LOG=warn HERE_API_KEY="$KEY" \
        TILE_PROXY_LISTEN="127.0.0.1:$port" \
        TILE_PROXY_RASTER_UPSTREAM="$UPSTREAM_URL" TILE_PROXY_VECTOR_UPSTREAM="$UPSTREAM_URL" \
        TILE_PROXY_CACHE_DIR="$TMP/cache" \
        TILE_PROXY_MEMORY_CACHE="$2" TILE_PROXY_MEMORY_EVICTION="$1" TILE_PROXY_DISK_CACHE="$3" \
        TILE_PROXY_ACCESS_LOG=false TILE_PROXY_DEFAULTS__RATE_LIMIT=0 TILE_PROXY_WORKERS="$WORKERS" \
        "${extra[@]}" taskset -c "$SERVER_CPU" "$PROXY_BIN" >"$TMP/proxy.log" 2>&1 &
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    wait_ready "tile-proxy ($1)" "$PROXY_PID" "$PROXY_URL/ready"
}

# ---- numbers ---------------------------------------------------------------------------------
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END {
    if (NR % 2) printf "%.3f", a[(NR + 1) / 2]; else printf "%.3f", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "n/a"; else printf "%.3f", a / b }'; }
fmt() { awk -v v="$1" -v d="$2" 'BEGIN { printf "%.*f", d, v }'; }
json_arr() { local IFS=,; echo "[$*]"; }
jnum() { [ "$1" = n/a ] && echo null || echo "$1"; }

# ---- the knobs both benchmarks share ---------------------------------------------------------
# bench_args NAME ARGS...: --smoke / --help, the shared knobs' defaults, validation; sets SMOKE,
# DURATION, ROUNDS, CONNECTIONS, THREADS, TILES, WARMUP, SERVER_CPU, LOAD_CPU, SKIP_BUILD,
# KEEP_TMP, TARGET_DIR, KEY, MIN_SIZE, MAX_SIZE. The caller defines REPO_ROOT.
# smoke_flag NAME ARGS...: the one argument every bench script takes: sets SMOKE (--smoke), or
# prints `usage` (--help) and exits; anything else is an error naming the script.

# The running script's header comment (from its second line to the first non-comment line).
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

# Defaults every bench script shares: cores, build, temp dir, the test upstream's key.
common_defaults() {
    SERVER_CPU="${SERVER_CPU:-0}"
    LOAD_CPU="${LOAD_CPU:-1}"
    SKIP_BUILD="${SKIP_BUILD:-0}"
    KEEP_TMP="${KEEP_TMP:-0}"
    TARGET_DIR="${TARGET_DIR:-${CARGO_TARGET_DIR:-$REPO_ROOT/target}}"
    # shellcheck disable=SC2034 # for the caller
    KEY="bench-key-0123456789"
}
smoke_flag() {
    local name="$1" arg
    shift
    SMOKE=0
    for arg in "$@"; do
        case "$arg" in
            --smoke) SMOKE=1 ;;
            -h | --help) usage; exit 0 ;;
            *) echo "$name: unknown argument '$arg'" >&2; usage >&2; exit 2 ;;
        esac
    done
}

bench_args() {
    local name="$1" v
    shift
    smoke_flag "$name" "$@"
    if [ "$SMOKE" = 1 ]; then
        DURATION=2 ROUNDS=1 TILES=200 WARMUP=1
    fi
    DURATION="${DURATION:-10}"
    ROUNDS="${ROUNDS:-3}"
    CONNECTIONS="${CONNECTIONS:-32}"
    THREADS="${THREADS:-1}"
    TILES="${TILES:-2000}"
    WARMUP="${WARMUP:-2}"
    common_defaults
    # shellcheck disable=SC2034 # for the caller
    MIN_SIZE=5000 MAX_SIZE=60000
    for v in DURATION ROUNDS CONNECTIONS THREADS TILES WARMUP SERVER_CPU LOAD_CPU; do
        [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a whole number (got '${!v}')"
    done
    [ "$DURATION" -ge 1 ] && [ "$DURATION" -le 600 ] || die "DURATION must be 1..600"
    [ "$ROUNDS" -ge 1 ] && [ "$ROUNDS" -le 50 ] || die "ROUNDS must be 1..50"
    [ "$TILES" -ge 10 ] && [ "$TILES" -le 10000 ] || die "TILES must be 10..10000"
    [ "$WARMUP" -le 60 ] || die "WARMUP must be 0..60"
    [ "$CONNECTIONS" -ge "$THREADS" ] && [ "$THREADS" -ge 1 ] || die "need 1 <= THREADS <= CONNECTIONS"
}

# ---- trace-replay results (bench/eviction.sh, bench/traces-vs.sh) ------------------------------
# A key of the last bench-replay output line ($TMP/replay.out: key=value pairs).
r() { tr ' ' '\n' <"$TMP/replay.out" | sed -n "s/^$1=//p" | head -n1; }

# results_open NAME HEADER: bench/out/NAME-<UTC>.tsv (with HEADER, tab-separated) and .txt as
# TSV and TXT; FAILED=0. Then `out LINE` prints and keeps a line, `fail LINE` one that fails the run.
results_open() { # name header
    mkdir -p "$BENCH_DIR/out"
    local stamp
    stamp="$(date -u +%Y%m%dT%H%M%SZ)"
    TSV="$BENCH_DIR/out/$1-$stamp.tsv"
    TXT="$BENCH_DIR/out/$1-$stamp.txt"
    printf '%s\n' "$2" >"$TSV"
    FAILED=0
}
fail() { echo "FAIL: $*" | tee -a "$TXT" >&2; FAILED=1; }
out() { echo "$*" | tee -a "$TXT"; }

# The machine as a results line: cores, CPU model, load average.
machine() { echo "$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')), load average $(cut -d' ' -f1-3 /proc/loadavg)"; }
