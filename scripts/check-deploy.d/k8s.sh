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
