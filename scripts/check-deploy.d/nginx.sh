# shellcheck shell=bash
# SC2015: `A && B || die` means "die unless all hold", as intended. SC2016: literal ${...} patterns.
# SC2329: the cleanup functions run from traps.
# shellcheck disable=SC2015,SC2016,SC2329
# Deployment check "nginx", sourced by scripts/check-deploy.sh, which calls check_nginx with
# `set -euo pipefail`, REPO (the repository root), BIN_DIR (tile-proxy and test-upstream) and the
# functions `log MSG` and `die MSG` (prints, exits non-zero).
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
    local bin_dir="${BIN_DIR:-/work/main/target/debug}"
    local vars=(NGINX_PORT TILE_PROXY_SERVERS NGINX_CACHE NGINX_CACHE_DIR NGINX_CACHE_MAX_SIZE
        NGINX_RATE_LIMIT NGINX_RATE_BURST NGINX_ADMIN_ALLOW NGINX_REAL_IP_FROM)
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

    local -a rpid=() rport=()
    _nginx_start_replica() { # N
        local n="$1"
        mkdir -p "$tmp/cache-$n"
        # Only these variables: nothing from the caller's environment (an unknown TILE_PROXY_*
        # is an error, a known one would change the setup).
        env -i PATH="$PATH" HOME="$tmp" RUST_LOG=info HERE_API_KEY="$key" \
            TILE_PROXY_LISTEN=127.0.0.1:0 TILE_PROXY_CACHE_DIR="$tmp/cache-$n" \
            TILE_PROXY_MEMORY_CACHE=32MiB TILE_PROXY_DISK_CACHE=16MiB TILE_PROXY_WORKERS=1 \
            TILE_PROXY_RASTER_UPSTREAM="$up" TILE_PROXY_VECTOR_UPSTREAM="$up" \
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
        _nginx_get 127.0.0.1 "http://127.0.0.1:${rport[n]}/admin/purges" "$out" -H "Authorization: Bearer $token"
        [ "$code" = 200 ] || die "nginx: (g) /admin/purges directly on replica $n answered $code"
        _nginx_get 127.0.0.1 "http://127.0.0.1:${rport[n]}/metrics" "$out"
        [ "$code" = 200 ] && grep -q '^tile_proxy_' "$out.b" || die "nginx: (g) /metrics directly on replica $n answered $code"
    done
    # The allow-list (NGINX_ADMIN_ALLOW = allow 127.0.0.3 here).
    _nginx_get 127.0.0.3 "$base/metrics" "$out"
    [ "$code" = 200 ] && grep -q '^tile_proxy_' "$out.b" ||
        die "nginx: (g) /metrics through nginx from the allow-listed 127.0.0.3 answered $code"
    _nginx_get 127.0.0.3 "$base/admin/purges" "$out" -H "Authorization: Bearer $token"
    [ "$code" = 200 ] || die "nginx: (g) /admin/purges through nginx from the allow-listed 127.0.0.3 answered $code"
    log "nginx: (g) /admin/ and /metrics refused through nginx (403), open on the replicas and to the allow-list"

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
