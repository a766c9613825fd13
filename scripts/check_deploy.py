"""Checks of the deployment files, run by scripts/check-deploy with the Python of its venv
(PyYAML comes with kubernetes-validate). Every failure names the file and the object.

  check_deploy.py render NAME RENDERED.yaml [--extra FILE]... [--external-secret NAME]...
      kubernetes-validate --strict on the render (and on each extra file) against every
      version in $KV_VERSIONS; a kind without a bundled schema is accepted only if it is
      one of the CRDs below, which get structural checks of their own; then cross-checks
      of the objects against each other and against the repository.
  check_deploy.py compose        docker-compose.yml and the files it mounts
  check_deploy.py dockerfile     Dockerfile and .dockerignore against the Cargo workspace
"""
import fnmatch
import glob
import os
import re
import shlex
import subprocess
import sys
import tomllib

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RULES_GLOB = "grafana/prometheus/rules/*.yml"
# Custom resources: kubernetes-validate has no schema for them (it only warns), so these
# are the kinds we accept without one, each with the structural check named here.
CRDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("keda.sh/v1alpha1", "ScaledObject"),
}
# SCANGW_* settings the deployment may set before the gateway reads them (the gateway
# ignores unknown SCANGW_* variables). SCANGW_REDIS_CLUSTER: the Redis Cluster work of
# issue 7, developed in parallel; drop it from here once src/config.rs has the field.
PENDING_SETTINGS = {"SCANGW_REDIS_CLUSTER"}
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")

errors = []


def err(msg):
    errors.append(msg)


def finish(what):
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    if errors:
        print(f"FAILED: {len(errors)} problem(s) in {what}", file=sys.stderr)
        sys.exit(1)


def rel(path):
    return os.path.relpath(path, ROOT)


def load_all(path):
    try:
        with open(path, encoding="utf-8") as f:
            return [d for d in yaml.safe_load_all(f) if d is not None]
    except (OSError, yaml.YAMLError) as e:
        err(f"{rel(path)}: not readable YAML: {e}")
        return []


def settings_fields():
    """SCANGW_<FIELD> for every field of `Settings` in src/config.rs."""
    src = open(os.path.join(ROOT, "src/config.rs"), encoding="utf-8").read()
    m = re.search(r"pub struct Settings \{(.*?)\n\}", src, re.S)
    if not m:
        err("src/config.rs: struct Settings not found (the list of known SCANGW_* settings)")
        return set()
    return {"SCANGW_" + f.upper() for f in re.findall(r"^\s*pub (\w+):", m.group(1), re.M)} | {"SCANGW_CONFIG"}


def rule_groups():
    groups = []
    for path in sorted(glob.glob(os.path.join(ROOT, RULES_GLOB))):
        doc = yaml.safe_load(open(path, encoding="utf-8"))
        groups += doc.get("groups", [])
    return groups


# ---------------------------------------------------------------- kubernetes-validate


def kubernetes_validate(path, where):
    versions = os.environ.get("KV_VERSIONS", "").split()
    if not versions:
        err("KV_VERSIONS is empty (scripts/check-deploy sets the Kubernetes versions to validate against)")
        return set()
    unchecked = set()
    for v in versions:
        r = subprocess.run(["kubernetes-validate", "--strict", "-k", v, path], text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        passed = 0
        for line in r.stdout.splitlines():
            if line.startswith("INFO") and " passed for resource " in line:
                passed += 1
                continue
            m = re.search(r"Couldn't find schema for kind (\S+) with api version (\S+)", line)
            if m and (m.group(2), m.group(1)) in CRDS:
                unchecked.add((m.group(2), m.group(1)))
                continue
            if m:
                err(f"{where}: kind {m.group(1)} ({m.group(2)}) has no schema in kubernetes-validate and "
                    f"is not a known custom resource of this project")
            elif line.strip():
                err(f"{where}: kubernetes-validate --strict -k {v}: {line.strip()}")
        if r.returncode != 0 and not any(where in e for e in errors):
            err(f"{where}: kubernetes-validate --strict -k {v} exited {r.returncode}")
        print(f"  kubernetes-validate --strict -k {v}: {passed} resource(s) passed the schema"
              + (f"; no schema for {', '.join(sorted(k for _, k in unchecked))} (custom resources, "
                 "checked structurally below)" if unchecked else ""))
    return unchecked


# ---------------------------------------------------------------- rendered manifests


def index(docs):
    by = {}
    for d in docs:
        by.setdefault(d.get("kind"), {})[(d.get("metadata") or {}).get("name")] = d
    return by


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_basics(docs, where):
    seen = set()
    for d in docs:
        if not isinstance(d, dict):
            err(f"{where}: a document is not a mapping")
            continue
        api, kind, meta = d.get("apiVersion"), d.get("kind"), d.get("metadata")
        if not isinstance(api, str) or not api or not isinstance(kind, str) or not kind:
            err(f"{where}: a document without apiVersion/kind: {str(d)[:80]}")
            continue
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
            err(f"{where}: {kind} without metadata.name")
            continue
        name = meta["name"]
        if len(name) > 253 or not DNS1123.match(name):
            err(f"{where}: {kind}/{name}: metadata.name is not a DNS-1123 name")
        for k, v in (meta.get("labels") or {}).items():
            if not isinstance(v, str) or len(v) > 63:
                err(f"{where}: {kind}/{name}: label {k} must be a string of at most 63 characters")
        key = (kind, meta.get("namespace"), name)
        if key in seen:
            err(f"{where}: {kind}/{name} appears twice")
        seen.add(key)


def check_crd_shapes(docs, where, by, deployments):
    for d in docs:
        kind, name = d.get("kind"), (d.get("metadata") or {}).get("name")
        spec = d.get("spec")
        if (d.get("apiVersion"), kind) not in CRDS:
            continue
        w = f"{where}: {kind}/{name}"
        if not isinstance(spec, dict):
            err(f"{w}: spec must be a mapping")
            continue
        if kind == "ServiceMonitor":
            sel = (spec.get("selector") or {}).get("matchLabels") or {}
            services = [s for s in by.get("Service", {}).values() if selects(sel, (s["metadata"].get("labels") or {}))]
            if not services:
                err(f"{w}: spec.selector.matchLabels {sel} selects no Service of the render")
            eps = spec.get("endpoints")
            if not isinstance(eps, list) or not eps:
                err(f"{w}: spec.endpoints must be a non-empty list")
                eps = []
            for ep in eps:
                port = ep.get("port")
                if not any(port in [p.get("name") for p in s["spec"].get("ports", [])] for s in services):
                    err(f"{w}: endpoint port {port!r} is not a named port of the selected Service")
                if ep.get("path") != "/metrics":
                    err(f"{w}: endpoint path must be /metrics, not {ep.get('path')!r}")
            job = spec.get("jobLabel")
            for s in services:
                value = (s["metadata"].get("labels") or {}).get(job) if job else s["metadata"]["name"]
                if value != "scan-gateway":
                    err(f"{w}: the job label would be {value!r} for Service {s['metadata']['name']}, but the "
                        f"rules and dashboards select job=\"scan-gateway\" (set jobLabel to a label with that value)")
        elif kind == "PrometheusRule":
            groups = spec.get("groups")
            if not isinstance(groups, list) or not groups:
                err(f"{w}: spec.groups must be a non-empty list")
                continue
            for g in groups:
                for r in g.get("rules") or []:
                    if ("record" in r) == ("alert" in r) or not isinstance(r.get("expr"), str):
                        err(f"{w}: group {g.get('name')}: every rule needs exactly one of record/alert, and expr")
            if groups != rule_groups():
                err(f"{w}: spec.groups differ from {RULES_GLOB}; run scripts/gen-deploy")
        elif kind == "ScaledObject":
            target = (spec.get("scaleTargetRef") or {}).get("name")
            if target not in deployments:
                err(f"{w}: spec.scaleTargetRef.name {target!r} is not a Deployment of the render")
            triggers = spec.get("triggers")
            if not isinstance(triggers, list) or not triggers:
                err(f"{w}: spec.triggers must be a non-empty list")
                triggers = []
            for t in triggers:
                if not isinstance(t.get("type"), str) or not isinstance(t.get("metadata"), dict):
                    err(f"{w}: every trigger needs a type and a metadata mapping")
                elif t["type"] == "cron":
                    missing = {"timezone", "start", "end", "desiredReplicas"} - set(t["metadata"])
                    if missing:
                        err(f"{w}: cron trigger lacks {', '.join(sorted(missing))}")
            lo, hi = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
            if not (isinstance(lo, int) and isinstance(hi, int) and lo <= hi):
                err(f"{w}: minReplicaCount/maxReplicaCount must be integers with min <= max")


def dockerfile_uid():
    m = re.search(r"^USER\s+(\d+)", open(os.path.join(ROOT, "Dockerfile"), encoding="utf-8").read(), re.M)
    return int(m.group(1)) if m else None


def check_gateway(where, by, external_secrets, known):
    dep = by.get("Deployment", {}).get("scan-gateway")
    if not dep:
        err(f"{where}: no Deployment scan-gateway")
        return
    w = f"{where}: Deployment/scan-gateway"
    spec, tmpl = dep["spec"], dep["spec"]["template"]
    pod_labels = tmpl["metadata"].get("labels") or {}
    if not selects(spec["selector"].get("matchLabels"), pod_labels):
        err(f"{w}: spec.selector does not match the pod template's labels")
    pod = tmpl["spec"]
    ctr = next((c for c in pod["containers"] if c["name"] == "scan-gateway"), None)
    if not ctr:
        err(f"{w}: no container scan-gateway")
        return
    ports = {p.get("name"): p["containerPort"] for p in ctr.get("ports", [])}

    # Settings: ConfigMaps (envFrom) and env, as the process will see them.
    env = {}
    for ef in ctr.get("envFrom", []):
        ref = (ef.get("configMapRef") or {}).get("name")
        if ref is not None:
            cm = by.get("ConfigMap", {}).get(ref)
            if not cm:
                err(f"{w}: envFrom ConfigMap {ref} is not in the render")
            else:
                env.update(cm.get("data") or {})
        if ef.get("secretRef"):
            err(f"{w}: envFrom secretRef: reference single keys with secretKeyRef instead")
    for e in ctr.get("env", []):
        skr = (e.get("valueFrom") or {}).get("secretKeyRef")
        if "value" in e:
            env[e["name"]] = e["value"]
            if re.search(r"TOKEN|SECRET", e["name"]):
                err(f"{w}: {e['name']} has a literal value; secrets come from secretKeyRef only")
        elif skr:
            env[e["name"]] = "<secret>"
            sec = by.get("Secret", {}).get(skr["name"])
            if sec:
                if skr["key"] not in (sec.get("data") or {}) and not skr.get("optional"):
                    err(f"{w}: {e['name']}: Secret {skr['name']} has no key {skr['key']}")
            elif skr["name"] not in external_secrets:
                err(f"{w}: {e['name']}: Secret {skr['name']} is neither in the render nor declared as "
                    f"created out of band for this overlay")
    for k in env:
        if k.startswith("SCANGW_") and k not in known:
            err(f"{w}: {k} is not a gateway setting (src/config.rs Settings)")
    for k in ("SCANGW_ADMIN_TOKEN", "SCANGW_PLATFORM_TOKEN", "SCANGW_PATIENT_KEY_SECRET"):
        if env.get(k) != "<secret>":
            err(f"{w}: {k} must come from a secretKeyRef")
    listen = env.get("SCANGW_LISTEN", "127.0.0.1:8080")
    host, _, port = listen.rpartition(":")
    if host not in ("0.0.0.0", "[::]"):
        err(f"{w}: SCANGW_LISTEN={listen} is not reachable from outside the pod (use 0.0.0.0)")
    if port != str(ports.get("http")):
        err(f"{w}: SCANGW_LISTEN port {port} differs from containerPort http {ports.get('http')}")

    # Probes, shutdown ordering, resources, security.
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/livez")):
        hg = (ctr.get(probe) or {}).get("httpGet") or {}
        if hg.get("path") != path:
            err(f"{w}: {probe} must GET {path}")
        if hg.get("port") not in ports and hg.get("port") not in ports.values():
            err(f"{w}: {probe} port {hg.get('port')!r} is not a container port")
    cmd = (((ctr.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command") or []
    sleep = int(cmd[-1]) if len(cmd) == 2 and cmd[0].endswith("sleep") and cmd[-1].isdigit() else None
    if sleep is None:
        err(f"{w}: lifecycle.preStop must be exec [/bin/sleep, N]")
        sleep = 0
    grace = int(env.get("SCANGW_SHUTDOWN_GRACE_S", "20"))
    tgps = pod.get("terminationGracePeriodSeconds", 30)
    # src/shutdown.rs waits grace + 1 s before it stops without draining.
    if tgps <= sleep + grace + 1:
        err(f"{w}: terminationGracePeriodSeconds {tgps} must exceed preStop {sleep} s + "
            f"SCANGW_SHUTDOWN_GRACE_S {grace} s + 1 s")
    res = ctr.get("resources") or {}
    if "cpu" not in (res.get("requests") or {}):
        err(f"{w}: resources.requests.cpu is needed by the CPU HPA")
    if "memory" not in (res.get("limits") or {}):
        err(f"{w}: resources.limits.memory is missing")
    psc, csc = pod.get("securityContext") or {}, ctr.get("securityContext") or {}
    if not (psc.get("runAsNonRoot") or csc.get("runAsNonRoot")):
        err(f"{w}: runAsNonRoot must be true")
    if not csc.get("readOnlyRootFilesystem"):
        err(f"{w}: readOnlyRootFilesystem must be true")
    if csc.get("allowPrivilegeEscalation") is not False:
        err(f"{w}: allowPrivilegeEscalation must be false")
    uid = psc.get("runAsUser", csc.get("runAsUser"))
    if uid != dockerfile_uid():
        err(f"{w}: runAsUser {uid} differs from the Dockerfile's USER {dockerfile_uid()}")

    hpas = [h for h in by.get("HorizontalPodAutoscaler", {}).values()
            if h["spec"]["scaleTargetRef"].get("name") == "scan-gateway"]
    if not hpas:
        err(f"{where}: no HorizontalPodAutoscaler targets Deployment scan-gateway")
    for h in hpas:
        hs = h["spec"]
        if "replicas" in spec:
            err(f"{w}: sets replicas although HPA {h['metadata']['name']} owns the count")
        if not hs.get("minReplicas", 1) <= hs["maxReplicas"]:
            err(f"{where}: HPA {h['metadata']['name']}: minReplicas > maxReplicas")
        down = ((hs.get("behavior") or {}).get("scaleDown") or {}).get("stabilizationWindowSeconds")
        if not isinstance(down, int) or down < 300:
            err(f"{where}: HPA {h['metadata']['name']}: behavior.scaleDown.stabilizationWindowSeconds "
                f"must be set, at least 300")
        if not any(m.get("type") == "Resource" and m["resource"]["name"] == "cpu" for m in hs.get("metrics", [])):
            err(f"{where}: HPA {h['metadata']['name']} does not scale on CPU")
    pdbs = [p for p in by.get("PodDisruptionBudget", {}).values()
            if selects(p["spec"].get("selector", {}).get("matchLabels"), pod_labels)]
    if not pdbs:
        err(f"{where}: no PodDisruptionBudget selects the gateway pods")
    svc = by.get("Service", {}).get("scan-gateway")
    if not svc:
        err(f"{where}: no Service scan-gateway")
    else:
        if not selects(svc["spec"].get("selector"), pod_labels):
            err(f"{where}: Service/scan-gateway does not select the gateway pods")
        for p in svc["spec"]["ports"]:
            if p.get("targetPort") not in ports and p.get("targetPort") not in ports.values():
                err(f"{where}: Service/scan-gateway targetPort {p.get('targetPort')!r} is not a container port")
    for ing in by.get("Ingress", {}).values():
        iw = f"{where}: Ingress/{ing['metadata']['name']}"
        hb = (ing["metadata"].get("annotations") or {}).get("nginx.ingress.kubernetes.io/upstream-hash-by", "")
        if not hb.startswith("$"):
            err(f"{iw}: annotation nginx.ingress.kubernetes.io/upstream-hash-by must name an nginx variable")
        for rule in ing["spec"].get("rules", []):
            for p in rule["http"]["paths"]:
                b = p["backend"]["service"]
                target = by.get("Service", {}).get(b["name"])
                names = [x.get("name") for x in target["spec"]["ports"]] if target else []
                if not target or (b["port"].get("name") not in names
                                  and b["port"].get("number") not in [x["port"] for x in target["spec"]["ports"]]):
                    err(f"{iw}: backend {b['name']}:{b['port']} is not a Service port of the render")
    return env


def check_redis_statefulset(where, by):
    sts = by.get("StatefulSet", {}).get("redis")
    if not sts:
        err(f"{where}: no StatefulSet redis (the dev overlay runs its own Redis)")
        return
    w = f"{where}: StatefulSet/redis"
    pod = sts["spec"]["template"]["spec"]
    ctr = pod["containers"][0]
    cmd = ctr.get("command", []) + ctr.get("args", [])
    vcts = [v["metadata"]["name"] for v in sts["spec"].get("volumeClaimTemplates", [])]
    if not vcts:
        err(f"{w}: no volumeClaimTemplates: the AOF would not survive the pod")
    mounts = {m["mountPath"]: m["name"] for m in ctr.get("volumeMounts", [])}
    data_dir = cmd[cmd.index("--dir") + 1] if "--dir" in cmd else None
    if mounts.get(data_dir) not in vcts:
        err(f"{w}: --dir {data_dir} is not on a volume from volumeClaimTemplates")
    conf = next((c for c in cmd if c.endswith(".conf")), None)
    cm_name = next((v["configMap"]["name"] for v in pod.get("volumes", [])
                    if "configMap" in v and mounts.get(os.path.dirname(conf or "")) == v["name"]), None)
    cm = by.get("ConfigMap", {}).get(cm_name)
    text = (cm or {}).get("data", {}).get(os.path.basename(conf or ""), "")
    if not re.search(r"^appendonly yes$", text, re.M):
        err(f"{w}: the mounted configuration {conf} has no 'appendonly yes'")
    svc = by.get("Service", {}).get(sts["spec"].get("serviceName"))
    if not svc or not selects(svc["spec"].get("selector"), sts["spec"]["template"]["metadata"]["labels"]):
        err(f"{w}: serviceName {sts['spec'].get('serviceName')} is not a Service selecting its pods")


def cmd_render(args):
    name, path = args[0], args[1]
    extras, external = [], set()
    rest = args[2:]
    while rest:
        flag, value, rest = rest[0], rest[1], rest[2:]
        (extras.append if flag == "--extra" else external.add)(value)
    where = f"{name} ({rel(path) if path.startswith(ROOT) else os.path.basename(path)})"
    kubernetes_validate(path, where)
    docs = load_all(path)
    if not docs:
        err(f"{where}: the render is empty")
    check_basics(docs, where)
    if errors:
        finish(where)
    by = index(docs)
    known = settings_fields() | PENDING_SETTINGS
    env = check_gateway(where, by, external, known) or {}
    deployments = set(by.get("Deployment", {}))
    check_crd_shapes(docs, where, by, deployments)
    for kind in ("ServiceMonitor", "PrometheusRule"):
        if not by.get(kind):
            err(f"{where}: no {kind} in the render")
    if name == "dev":
        check_redis_statefulset(where, by)
    if name == "prod":
        urls = [u for u in env.get("SCANGW_REDIS_URL", "").split(",") if u.strip()]
        if env.get("SCANGW_REDIS_CLUSTER") != "true" or len(urls) < 2 or not all(
                u.startswith(("redis://", "rediss://")) for u in urls):
            err(f"{where}: production must set SCANGW_REDIS_CLUSTER=true and SCANGW_REDIS_URL to the "
                f"cluster's nodes (comma-separated redis:// URLs)")
        if by.get("Secret"):
            err(f"{where}: the production render must not carry a Secret (it is created out of band)")
    for extra in extras:
        ew = f"{name} + {rel(extra)}"
        kubernetes_validate(extra, ew)
        edocs = load_all(extra)
        check_basics(edocs, ew)
        check_crd_shapes(edocs, ew, by, deployments)
    finish(where)
    print(f"  SUCCESS: {name}: {len(docs)} objects; cross-checks of Deployment, Service, Ingress, HPA, PDB, "
          f"ServiceMonitor, PrometheusRule{', StatefulSet' if name == 'dev' else ''}"
          f"{', ' + ', '.join(rel(e) for e in extras) if extras else ''} passed")


# ---------------------------------------------------------------- docker-compose.yml

EXPECTED_SERVICES = {"redis", "gateway-1", "gateway-2", "seed", "nginx", "prometheus", "grafana"}


def repo_path(src):
    return os.path.normpath(os.path.join(ROOT, src))


def cmd_compose(_args):
    path = os.path.join(ROOT, "docker-compose.yml")
    w = "docker-compose.yml"
    docs = load_all(path)
    finish(w) if errors else None
    c = docs[0]
    services = c.get("services") or {}
    if set(services) != EXPECTED_SERVICES:
        err(f"{w}: services are {sorted(services)}, expected {sorted(EXPECTED_SERVICES)}")
    named_volumes = set(c.get("volumes") or {})
    networks = set(c.get("networks") or {})
    mounts = {}  # service -> {container path: repo path}
    for sname, s in services.items():
        sw = f"{w}: service {sname}"
        if "build" in s:
            b = s["build"] if isinstance(s["build"], dict) else {"context": s["build"]}
            ctx = repo_path(b.get("context", "."))
            if not os.path.isfile(os.path.join(ctx, b.get("dockerfile", "Dockerfile"))):
                err(f"{sw}: build file {b.get('dockerfile', 'Dockerfile')} not found in context {b.get('context')}")
        elif "image" not in s:
            err(f"{sw}: neither build nor image")
        if s.get("image", "").endswith(":latest") or ("build" not in s and ":" not in s.get("image", ":")):
            err(f"{sw}: pin the image tag (not latest)")
        for ef in s.get("env_file", []) or []:
            p = ef["path"] if isinstance(ef, dict) else ef
            full = repo_path(p)
            if os.path.exists(full):
                continue
            # A secrets file is created by the operator under the git-ignored var/; its
            # template must exist instead.
            example = os.path.join(ROOT, "deploy/compose", os.path.basename(p) + ".example")
            if not p.lstrip("./").startswith("var/") or not os.path.isfile(example):
                err(f"{sw}: env_file {p} does not exist (and is not a var/ file with {rel(example)})")
        smounts = {}
        for v in s.get("volumes", []) or []:
            if isinstance(v, dict):
                src, dst, typ = v.get("source"), v.get("target"), v.get("type")
            else:
                parts = v.split(":")
                src, dst = parts[0], parts[1] if len(parts) > 1 else None
                typ = "bind" if src.startswith((".", "/")) else "volume"
            if typ == "bind":
                if not os.path.exists(repo_path(src)):
                    err(f"{sw}: mounts {src}, which does not exist")
                smounts[dst] = repo_path(src)
            elif src not in named_volumes:
                err(f"{sw}: volume {src} is not declared under top-level volumes")
        mounts[sname] = smounts
        deps = s.get("depends_on") or []
        for d in (deps if isinstance(deps, list) else list(deps)):
            if d not in services:
                err(f"{sw}: depends_on unknown service {d}")
        nets = s.get("networks") or []
        for n in (nets if isinstance(nets, list) else list(nets)):
            if n not in networks:
                err(f"{sw}: network {n} is not declared")

    # Grafana: the provisioning directory, and the dashboards where the provider looks.
    g = mounts.get("grafana", {})
    if g.get("/etc/grafana/provisioning") != repo_path("grafana/provisioning"):
        err(f"{w}: grafana must mount ./grafana/provisioning at /etc/grafana/provisioning")
    for prov in glob.glob(os.path.join(ROOT, "grafana/provisioning/dashboards/*.yml")):
        for p in yaml.safe_load(open(prov, encoding="utf-8")).get("providers", []):
            want = p.get("options", {}).get("path")
            if g.get(want) != repo_path("grafana/dashboards"):
                err(f"{w}: grafana must mount ./grafana/dashboards at {want} ({rel(prov)})")
    genv = services.get("grafana", {}).get("environment") or {}
    def strings(node):
        if isinstance(node, dict):
            for v in node.values():
                yield from strings(v)
        elif isinstance(node, list):
            for v in node:
                yield from strings(v)
        elif isinstance(node, str):
            yield node

    provs = glob.glob(os.path.join(ROOT, "grafana/provisioning/**/*.yml"), recursive=True)
    for prov in provs:
        # Grafana expands $VAR and ${VAR} in the values it reads (comments do not count).
        for value in strings(yaml.safe_load(open(prov, encoding="utf-8"))):
            for a, b in re.findall(r"\$\{(\w+)\}|\$([A-Za-z_]\w*)", value):
                if (a or b) not in genv:
                    err(f"{w}: grafana's environment lacks {a or b}, which {rel(prov)} expands")

    # Gateways: listen outside the container, reach the compose Redis, drain within stop_grace_period.
    for gname in ("gateway-1", "gateway-2"):
        s = services.get(gname, {})
        env = s.get("environment") or {}
        if not str(env.get("SCANGW_LISTEN", "")).startswith("0.0.0.0:"):
            err(f"{w}: {gname}: SCANGW_LISTEN must listen on 0.0.0.0")
        if "redis://redis:" not in str(env.get("SCANGW_REDIS_URL", "")):
            err(f"{w}: {gname}: SCANGW_REDIS_URL must point at the redis service")
        stop = int(str(s.get("stop_grace_period", "10s")).rstrip("s"))
        if stop <= int(env.get("SCANGW_SHUTDOWN_GRACE_S", 20)) + 1:
            err(f"{w}: {gname}: stop_grace_period {stop}s must exceed SCANGW_SHUTDOWN_GRACE_S + 1 s")

    # nginx: every include resolves to a mounted file; upstream servers are compose services.
    n = mounts.get("nginx", {})
    conf = n.get("/etc/nginx/nginx.conf")
    if not conf or not os.path.isfile(conf):
        err(f"{w}: nginx must mount its configuration at /etc/nginx/nginx.conf")
    else:
        text = open(conf, encoding="utf-8").read()
        for inc in re.findall(r"^\s*include\s+([^;]+);", text, re.M):
            if inc.strip() == "mime.types" or inc.startswith("/etc/nginx/mime.types"):
                continue
            if inc not in n or not os.path.isfile(n[inc]):
                err(f"{rel(conf)}: include {inc} is not a file mounted into the nginx service")
        for host in re.findall(r"^\s*server\s+([\w.-]+):\d+", text, re.M):
            if host not in services:
                err(f"{rel(conf)}: upstream server {host} is not a compose service")
        if not re.search(r"^\s*hash\s+\$facility_key\s+consistent;", text, re.M):
            err(f"{rel(conf)}: the upstream must hash $facility_key consistently")
    finish(w)
    print(f"  SUCCESS: {w}: services {', '.join(sorted(services))}; every mounted file, env file template, "
          f"include and upstream resolves")


def cmd_prom_tree(args):
    """Materialise the prometheus service's bind mounts under args[0] (for promtool)."""
    c = load_all(os.path.join(ROOT, "docker-compose.yml"))[0]
    for v in c["services"]["prometheus"].get("volumes", []):
        src, dst = v.split(":")[:2]
        if src.startswith((".", "/")) and dst.startswith("/etc/prometheus"):
            target = os.path.join(args[0], dst.lstrip("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.symlink(repo_path(src), target)
    print(os.path.join(args[0], "etc/prometheus/prometheus.yml"))


# ---------------------------------------------------------------- Dockerfile


def dockerignore_patterns():
    path = os.path.join(ROOT, ".dockerignore")
    if not os.path.isfile(path):
        err(".dockerignore is missing")
        return []
    pats = []
    for line in open(path, encoding="utf-8"):
        line = line.strip()
        if line and not line.startswith("#"):
            pats.append(line)
    return pats


def ignored(relpath, pats):
    out = False
    for p in pats:
        neg = p.startswith("!")
        p = p.lstrip("!").rstrip("/").lstrip("/")
        if p.startswith("**/"):
            hit = any(fnmatch.fnmatch("/".join(relpath.split("/")[i:]), p[3:]) or
                      relpath.split("/")[i] == p[3:] for i in range(len(relpath.split("/"))))
        else:
            hit = fnmatch.fnmatch(relpath, p) or relpath.startswith(p + "/")
        if hit:
            out = not neg
    return out


def cmd_dockerfile(_args):
    w = "Dockerfile"
    text = open(os.path.join(ROOT, "Dockerfile"), encoding="utf-8").read()
    text = re.sub(r"\\\n", " ", text)
    pats = dockerignore_patterns()
    for need in (".git", "target", "var", "fuzz/target", "node_modules"):
        probe = need if need != "node_modules" else "tests/browser/node_modules"
        if not ignored(probe, pats):
            err(f".dockerignore does not exclude {need}")
    copied = []
    stages = 0
    args = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, rest = line.partition(" ")
        instr = instr.upper()
        if instr == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            args[k.strip()] = v.strip()
        if instr == "FROM":
            stages += 1
            image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), rest.split()[0])
            if ":" not in image or image.endswith(":latest"):
                err(f"{w}: FROM {image}: pin a tag")
        if instr in ("COPY", "ADD"):
            words = shlex.split(rest)
            if any(x.startswith("--from") for x in words):
                continue
            srcs = [x for x in words if not x.startswith("--")][:-1]
            for s in srcs:
                if not glob.glob(os.path.join(ROOT, s)):
                    err(f"{w}: {instr} {s}: no such file or directory in the repository")
                elif ignored(s.rstrip("/"), pats):
                    err(f"{w}: {instr} {s}: excluded by .dockerignore")
                copied.append(s.rstrip("/"))
    if stages < 2:
        err(f"{w}: expected a multi-stage build (builder and runtime)")

    def is_copied(p):
        return any(p == c or p.startswith(c + "/") for c in copied)

    cargo = tomllib.load(open(os.path.join(ROOT, "Cargo.toml"), "rb"))
    for m in cargo.get("workspace", {}).get("members", []):
        if m != "." and not is_copied(m.rstrip("/")):
            err(f"{w}: workspace member {m} (Cargo.toml) is not copied; cargo cannot load the workspace")
    for need in ("Cargo.toml", "Cargo.lock", "src"):
        if not is_copied(need):
            err(f"{w}: {need} is not copied")
    for rs in glob.glob(os.path.join(ROOT, "src/**/*.rs"), recursive=True):
        code = open(rs, encoding="utf-8").read()
        # A release build does not compile the unit-test module (`#[cfg(test)] mod ...`).
        code = re.split(r"^#\[cfg\(test\)\]\s*\n\s*mod ", code, maxsplit=1, flags=re.M)[0]
        for inc in re.findall(r"include_(?:str|bytes)!\(\s*\"([^\"]+)\"", code):
            target = rel(os.path.normpath(os.path.join(os.path.dirname(rs), inc)))
            if not is_copied(target):
                err(f"{w}: {rel(rs)} includes {target}, which is not copied into the builder")
    bins = [b["name"] for b in cargo.get("bin", [])] or [cargo["package"]["name"]]
    ep = re.search(r"^ENTRYPOINT\s+(\[.*\])", text, re.M)
    if not ep or os.path.basename(yaml.safe_load(ep.group(1))[0]) not in bins:
        err(f"{w}: ENTRYPOINT must run one of the binaries {bins}")
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    if not user or user[-1].split(":")[0] in ("0", "root"):
        err(f"{w}: the runtime stage must switch to a non-root USER")
    expose = re.findall(r"^EXPOSE\s+(\d+)", text, re.M)
    listen = re.search(r"^ENV\s+SCANGW_LISTEN=(\S+)", text, re.M)
    if not listen or not expose or listen.group(1).rpartition(":")[2] != expose[-1]:
        err(f"{w}: ENV SCANGW_LISTEN must listen on the EXPOSEd port")
    finish(w)
    print(f"  SUCCESS: {w}: {stages} stages; COPY sources {', '.join(copied)} exist and are not ignored; "
          f"workspace members and include_str! files copied; non-root USER {user[-1]}")


if __name__ == "__main__":
    cmds = {"render": cmd_render, "compose": cmd_compose, "dockerfile": cmd_dockerfile, "prom-tree": cmd_prom_tree}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    cmds[sys.argv[1]](sys.argv[2:])
