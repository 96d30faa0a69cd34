#!/usr/bin/env bash
# Runs tile-proxy in front of the project's HERE-like test upstream, which draws real PNG/JPEG
# tiles (a grid and each tile's z/x/y) and, with the same `--images`, MVT vector tiles: no HERE
# key, no internet, nothing leaves 127.0.0.1. Open the proxy's map page (`/`).
#
#   scripts/demo.sh        # builds, starts both servers, prints the URLs; Ctrl-C stops both
#
# Optional environment:
#   TILE_PROXY_LISTEN      proxy address               (default 127.0.0.1:8080)
#   TILE_PROXY_CACHE_DIR   proxy disk cache folder     (default ./demo-cache, so demo tiles never
#                                                       mix with a real run's ./tile-cache)
#   TILE_PROXY_LOG_FORMAT  text or json                (default text)
#   DEMO_UPSTREAM_LISTEN   test upstream address       (default 127.0.0.1:9090)
#   CARGO_TARGET_DIR       where cargo builds          (default ./target)
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
    echo "demo: ERROR: $*" >&2
    exit 1
}

command -v cargo >/dev/null || die "cargo not found"
command -v curl >/dev/null || die "curl not found (needed to check that the servers are up)"

upstream_listen="${DEMO_UPSTREAM_LISTEN:-127.0.0.1:9090}"
proxy_listen="${TILE_PROXY_LISTEN:-127.0.0.1:8080}"
cache_dir="${TILE_PROXY_CACHE_DIR:-./demo-cache}"
bin_dir="${CARGO_TARGET_DIR:-target}/release"
key=demo-key
startup_secs=30

# http://HOST:PORT for a listen address; wildcard hosts become loopback.
url_of() {
    local host="${1%:*}" port="${1##*:}"
    case "$host" in
        0.0.0.0 | "") host=127.0.0.1 ;;
        "[::]") host="[::1]" ;;
    esac
    echo "http://$host:$port"
}
upstream_url="$(url_of "$upstream_listen")"
proxy_url="$(url_of "$proxy_listen")"

# Fails when something already accepts connections there (curl connected: an answer, an HTTP
# error, a timeout or an empty reply). Other failures are left to the server to report.
check_free() {
    local name="$1" url="$2" env_var="$3" rc=0
    curl -s -o /dev/null --max-time 2 "$url/" || rc=$?
    case "$rc" in
        0 | 22 | 28 | 52 | 56) die "something already listens on ${url#http://} (wanted for $name); stop it or set $env_var" ;;
    esac
}

# Waits until `url` answers 2xx, at most $startup_secs; fails if `pid` exits first.
wait_ready() {
    local name="$1" pid="$2" url="$3" deadline=$((SECONDS + startup_secs))
    while [ "$SECONDS" -lt "$deadline" ]; do
        kill -0 "$pid" 2>/dev/null || die "$name exited during startup (its message is above)"
        curl -fs -o /dev/null --max-time 2 "$url" && return 0
        sleep 0.2
    done
    die "$name did not answer $url within ${startup_secs}s"
}

# Two builds, not one: built together, the two packages unify their dependencies' features
# differently from the README's `cargo run --release` (flate2 and tile-proxy compiled again);
# built alone, tile-proxy is exactly the binary that command already made.
echo "demo: cargo build --release -p tile-proxy (as the README's first command), then -p test-upstream"
cargo build --release -p tile-proxy --bins
cargo build --release -p test-upstream --bins
[ -x "$bin_dir/tile-proxy" ] && [ -x "$bin_dir/test-upstream" ] || die "binaries not found in $bin_dir"

check_free "the test upstream" "$upstream_url" DEMO_UPSTREAM_LISTEN
check_free "tile-proxy" "$proxy_url" TILE_PROXY_LISTEN

pids=()
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "demo: starting the test upstream on $upstream_url (real images and Mapbox Vector Tiles)"
"$bin_dir/test-upstream" --listen "$upstream_listen" --key "$key" --images &
upstream_pid=$!
pids+=("$upstream_pid")
wait_ready "the test upstream" "$upstream_pid" "$upstream_url/__stats"

echo "demo: starting tile-proxy on $proxy_url (cache in $cache_dir)"
mkdir -p "$cache_dir"
HERE_API_KEY="$key" \
    TILE_PROXY_LISTEN="$proxy_listen" \
    TILE_PROXY_RASTER_UPSTREAM="$upstream_url" \
    TILE_PROXY_VECTOR_UPSTREAM="$upstream_url" \
    TILE_PROXY_TRAFFIC_RASTER_UPSTREAM="$upstream_url" \
    TILE_PROXY_TRAFFIC_VECTOR_UPSTREAM="$upstream_url" \
    TILE_PROXY_CACHE_DIR="$cache_dir" \
    TILE_PROXY_LOG_FORMAT="${TILE_PROXY_LOG_FORMAT:-text}" \
    "$bin_dir/tile-proxy" serve &
proxy_pid=$!
pids+=("$proxy_pid")
wait_ready "tile-proxy" "$proxy_pid" "$proxy_url/ready"

cat <<EOF

demo: tile-proxy is up. Open its map page (raster and vector views, cache counts, URL templates):

    $proxy_url/

Single tiles:

    $proxy_url/here-proxy/mc/5/15/13/png?indice=demo
    $proxy_url/v3/base/mc/5/15/13/png?size=512&style=explore.night

URL template for a map client (Leaflet L.tileLayer, MapLibre raster source "tiles"):

    $proxy_url/here-proxy/mc/{z}/{x}/{y}/png?indice=demo
    $proxy_url/v3/base/mc/{z}/{x}/{y}/png?style=explore.day&size=512   (MapLibre: tileSize 512)

Proxy: $proxy_url/health, $proxy_url/metrics. Upstream: $upstream_url/__stats; make it
misbehave with POST $upstream_url/__fault (see: $bin_dir/test-upstream --help).
Ctrl-C stops both servers.

EOF
wait "$proxy_pid"
