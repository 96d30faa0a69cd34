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
    TILE_PROXY_CACHE_DIR="$tmp/cache" TILE_PROXY_MEMORY_CACHE=16MiB TILE_PROXY_DISK_CACHE=64MiB \
    TILE_PROXY_WORKERS=2 TILE_PROXY_UPSTREAM__RETRY_ATTEMPTS=2 TILE_PROXY_UPSTREAM__RETRY_MIN_DELAY=10ms \
    TILE_PROXY_UPSTREAM__RETRY_MAX_DELAY=50ms TILE_PROXY_UPSTREAM__BREAKER_FAILURES=2 \
    TILE_PROXY_UPSTREAM__BREAKER_COOLDOWN=60s \
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
