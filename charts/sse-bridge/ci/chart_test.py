#!/usr/bin/env python3
"""Chart tests without a cluster: render, lint, validate, and check what the chart promises.

Run through scripts/chart-test.sh, which installs the pinned tools (charts/requirements.txt)
into a virtualenv first. Each values file in this folder (`*-values.yaml`) is:

  1. linted with Helm's own linter (helm-python-sdk binds Helm's Go SDK), strict;
  2. checked against values.schema.json and rendered as `helm template` would;
  3. validated manifest by manifest against the Kubernetes OpenAPI schemas of each pinned
     Kubernetes version, offline and strict (kubernetes-validate --strict: unknown fields fail);
     the ServiceMonitor and PrometheusRule (CRDs, not in those schemas) against subset schemas
     below;
  4. checked for what the chart promises: listeners off loopback, probes on the admin port,
     the admin port on its own ClusterIP Service only, memory.limit derived from the memory
     limit, memory request = limit, grace period > preStop + drain, the security context,
     Secrets by name, checksum roll on config change, the optional resources (the PDB on
     whenever more than one pod runs);
  5. its rendered bridge.toml is run through `sse-bridge --check-config` when a binary is given
     (SSE_BRIDGE_BIN), so the chart cannot emit a config the bridge refuses;
  6. rendered again as the release `sse-bridge` (whose Service names map to the bridge's own
     `SSE_BRIDGE_` prefix), beside a second release `sse-bridge-canary`, and checked with
     `--check-config` in the environment Kubernetes would inject for every Service of both
     (service links), although the pod spec turns service links off.

Then wrong values must be refused: by the schema (wrong types, unknown keys, keys the chart
owns, an ingress without trusted proxies) and by the template checks the schema cannot express
(heartbeat against the ingress read timeout, a CPU target without a CPU request, …). The ops
kit (ops_kit.py) is checked against a live bridge when SSE_BRIDGE_BIN is given: every metric
name of the PrometheusRule and the dashboard must be in its /metrics, every runbook link must
point at a heading that exists, and the `helm test` pod's script must pass against a stream and
fail against a refusal. And the Dockerfile is linted with hadolint when HADOLINT names it.

Ends with "N passed, N failed"; exits 1 on any failure.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
import traceback
from pathlib import Path
from typing import Any, Callable

import helm_python as helm
import jsonschema
import yaml

import ops_kit

HERE = Path(__file__).resolve().parent
CHART = HERE.parent
REPO = CHART.parent.parent
# Pinned: the oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and a current one.
KUBE_VERSIONS = os.environ.get("CHART_TEST_KUBE_VERSIONS", "1.30.0 1.34.0").split()
RELEASE, NAMESPACE = "bridge", "realtime"
OPTIONAL_KINDS = {"HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor", "Ingress", "NetworkPolicy",
                  "PrometheusRule", "ConfigMap/dashboard", "Pod/test-stream"}
# Kinds that are CRDs: no Kubernetes schema, a subset schema here instead.
CRD_KINDS = ("ServiceMonitor", "PrometheusRule")

passed: list[str] = []
failed: list[str] = []


def check(name: str, fn: Callable[[], Any]) -> None:
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - every failure is reported, then counted
        failed.append(name)
        detail = str(e) if isinstance(e, AssertionError) and str(e) else traceback.format_exc(limit=3)
        print(f"FAIL {name}\n    " + detail.strip().replace("\n", "\n    "))
    else:
        passed.append(name)
        print(f"ok   {name}")


def fail(msg: str) -> None:
    raise AssertionError(msg)


def load_values(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def render(chart: helm.Chart, values: dict[str, Any], release: str = RELEASE) -> dict[str, list[dict[str, Any]]]:
    """Renders like `helm template`: template path -> list of manifests (empty docs dropped)."""
    out = chart.render(values, name=release, namespace=NAMESPACE, is_install=True)
    docs: dict[str, list[dict[str, Any]]] = {}
    for path, text in out.items():
        if path.endswith("NOTES.txt"):
            continue
        parsed = [d for d in yaml.safe_load_all(text) if d]
        if parsed:
            docs[path] = parsed
    return docs


def by_kind(docs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Manifests by kind. The one named like the release (its full name) is `Kind`; another of
    the same kind is `Kind/<suffix>` (`Service/admin`, `ConfigMap/dashboard`, `Pod/test-stream`)."""
    full = next(m["metadata"]["name"] for ms in docs.values() for m in ms if m["kind"] == "Deployment")
    kinds: dict[str, dict[str, Any]] = {}
    for manifests in docs.values():
        for m in manifests:
            name = m["metadata"]["name"]
            key = m["kind"] if name == full else f"{m['kind']}/{name.removeprefix(full + '-')}"
            assert key not in kinds, f"two {key} manifests"
            kinds[key] = m
    return kinds


def bridge_toml(kinds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return tomllib.loads(kinds["ConfigMap"]["data"]["bridge.toml"])


def quantity_bytes(q: Any) -> int:
    if isinstance(q, int):
        return q
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    for suffix, mult in units.items():
        if q.endswith(suffix):
            return int(float(q[: -len(suffix)]) * mult)
    return int(q)


def seconds(d: str) -> float:
    for suffix, mult in (("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)):
        if d.endswith(suffix) and d[: -len(suffix)].isdigit():
            return int(d[: -len(suffix)]) * mult
    raise ValueError(d)


# A subset of monitoring.coreos.com/v1 ServiceMonitor (prometheus-operator's CRD), strict on
# every field the chart writes, since the Kubernetes schemas do not include CRDs.
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "matchExpressions": {"type": "array"},
                    },
                },
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                            "relabelings": {"type": "array", "items": {"type": "object"}},
                            "metricRelabelings": {"type": "array", "items": {"type": "object"}},
                        },
                    },
                },
            },
        },
    },
}


def kubernetes_validate(files: list[Path], version: str) -> None:
    """kubernetes-validate --strict on every file; only the CRDs may lack a schema."""
    exe = Path(sys.executable).with_name("kubernetes-validate")
    r = subprocess.run(
        [str(exe), "--strict", "--kubernetes-version", version, *map(str, files)],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = (r.stdout + r.stderr).splitlines()
    errors = [ln for ln in lines if ln.startswith(("ERROR", "FATAL"))]
    warns = [ln for ln in lines if ln.startswith("WARN") and not any(k in ln for k in CRD_KINDS)]
    infos = [ln for ln in lines if ln.startswith("INFO") and "passed" in ln]
    assert r.returncode == 0 and not errors and not warns, "\n".join(errors + warns) or r.stdout + r.stderr
    assert infos, f"kubernetes-validate validated nothing:\n{r.stdout}{r.stderr}"


# A P-256 public key (its private half was thrown away): what a Secret given as
# secrets.authKeys would hold, for `--check-config` to load.
TEST_PUBLIC_KEY = """-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEgkUlWhkE8Li912B4OO6eysv4JUWy
wesHLkR/fe6Hg8XWxmzSZdMh/NCmi0tRElJ5ZmXIWUB3AjD/6H6Km/WIaw==
-----END PUBLIC KEY-----
"""


def test_jwks() -> str:
    der = base64.b64decode("".join(TEST_PUBLIC_KEY.splitlines()[1:-1]))
    point = der[-65:]  # 0x04 || x || y
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()  # noqa: E731
    return json.dumps({"keys": [{"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "test",
                                 "x": b64(point[1:33]), "y": b64(point[33:])}]})


AUTH_MOUNT = "/etc/sse-bridge-auth/"


def check_config(toml_text: str, env: dict[str, str]) -> None:
    """`sse-bridge --check-config` on the rendered file, when SSE_BRIDGE_BIN names a binary.
    Key files the chart mounts from a Secret are stood in for by TEST_PUBLIC_KEY."""
    binary = os.environ.get("SSE_BRIDGE_BIN")
    if not binary:
        return
    with tempfile.TemporaryDirectory() as d:
        keys = Path(d) / "auth"
        keys.mkdir()
        for name in {line.split(AUTH_MOUNT, 1)[1].split('"')[0] for line in toml_text.splitlines() if AUTH_MOUNT in line}:
            (keys / name).write_text(TEST_PUBLIC_KEY if not name.endswith(".json") else test_jwks())
        toml_text = stand_in_secret_files(toml_text, Path(d))
        p = Path(d) / "bridge.toml"
        p.write_text(toml_text.replace(AUTH_MOUNT, f"{keys}/"))
        clean = {k: v for k, v in os.environ.items() if not k.startswith("SSE_BRIDGE_")}
        r = subprocess.run(
            [binary, "--config", str(p), "--check-config"],
            env={**clean, **env},
            capture_output=True,
            text=True,
            check=False,
            cwd=d,
        )
        assert r.returncode == 0, f"sse-bridge --check-config refused the rendered bridge.toml:\n{r.stderr}{r.stdout}\n{toml_text}"


SECRET_MOUNTS = ("/etc/sse-bridge-tls/", "/etc/sse-bridge-secrets/")


def stand_in_secret_files(toml_text: str, d: Path) -> str:
    """Files the chart mounts from Secrets (publicTls, secretFiles), stood in for so that
    `--check-config` can read them: one self-signed certificate and its key (openssl) for
    *.crt/*.pem and *.key, a line of text for anything else (tokens, passwords)."""
    paths = set(re.findall(r'"(/etc/sse-bridge-(?:tls|secrets)/[^"]+)"', toml_text))
    if not paths:
        return toml_text
    cert, key = d / "stand-in.crt", d / "stand-in.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=stand-in", "-days", "2"],
                   check=True, capture_output=True)
    for path in paths:
        local = d / "mounts" / path.lstrip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        if path.endswith(".key"):
            local.write_text(key.read_text())
        elif path.endswith((".crt", ".pem")):
            local.write_text(cert.read_text())
        else:
            local.write_text("a-stand-in-secret\n")
    for mount in SECRET_MOUNTS:
        toml_text = toml_text.replace(mount, f"{d}/mounts{mount}")
    return toml_text


def secret_env_for_check(kinds: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Stand-in values for the env vars the pod would get from Secrets."""
    stand_in = {
        "SSE_BRIDGE_PUBLISH__TOKEN": "a-long-test-token",
        "SSE_BRIDGE_NATS__URL": "nats://user:pass@nats.example:4222",
        "SSE_BRIDGE_REDIS__URL": "redis://user:pass@redis.example:6379/0",
        "SSE_BRIDGE_JETSTREAM__URL": "nats://user:pass@nats.example:4222",
        "SSE_BRIDGE_REDIS_STREAMS__URL": "rediss://user:pass@redis.example:6380/0",
        "SSE_BRIDGE_AUTH__SECRET": "a-test-hs256-secret-of-at-least-32-bytes",
    }
    env = {}
    for e in container(kinds).get("env", []):
        if "valueFrom" in e and e["name"] in stand_in:
            env[e["name"]] = stand_in[e["name"]]
        elif "value" in e:
            env[e["name"]] = e["value"]
    return env


# Release names whose Services map to the bridge's prefix: `sse-bridge` (fullname `sse-bridge`)
# and a second release in the same namespace (`sse-bridge-canary`); a pod gets the links of
# every Service of its namespace, not only its own release's.
LINKED_RELEASES = ("sse-bridge", "sse-bridge-canary")


def service_link_env(services: list[dict[str, Any]], ipv6: bool = False) -> dict[str, str]:
    """What the kubelet injects for `services` (pkg/kubelet/envvars FromServices): per Service
    with a cluster IP, `<NAME>_SERVICE_HOST`, `_SERVICE_PORT`, `_SERVICE_PORT_<PORT_NAME>` and
    the Docker-link variables `<NAME>_PORT`, `<NAME>_PORT_<port>_<PROTO>[_PROTO|_PORT|_ADDR]`."""
    env: dict[str, str] = {}
    for i, svc in enumerate(services):
        spec = svc["spec"]
        if spec.get("type") == "ExternalName" or spec.get("clusterIP") == "None":
            continue  # no cluster IP, no variables
        ip = spec.get("clusterIP") or (f"fd00::{i + 10:x}" if ipv6 else f"10.96.0.{i + 10}")
        host = f"[{ip}]" if ":" in ip else ip
        name = svc["metadata"]["name"].upper().replace("-", "_")
        ports = spec["ports"]
        env[f"{name}_SERVICE_HOST"] = ip
        env[f"{name}_SERVICE_PORT"] = str(ports[0]["port"])
        for p in ports:
            if p.get("name"):
                env[f"{name}_SERVICE_PORT_{p['name'].upper().replace('-', '_')}"] = str(p["port"])
        for j, p in enumerate(ports):
            proto = p.get("protocol", "TCP")
            url = f"{proto.lower()}://{host}:{p['port']}"
            if j == 0:
                env[f"{name}_PORT"] = url
            prefix = f"{name}_PORT_{p['port']}_{proto.upper()}"
            env.update({prefix: url, f"{prefix}_PROTO": proto.lower(), f"{prefix}_PORT": str(p["port"]),
                        f"{prefix}_ADDR": ip})
    return env


def services_of(docs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [m for manifests in docs.values() for m in manifests if m["kind"] == "Service"]


def check_service_links(name: str, chart: helm.Chart, values: dict[str, Any]) -> None:
    """Installed as `sse-bridge` beside `sse-bridge-canary`, with service links on: the pod's
    environment holds `SSE_BRIDGE_SERVICE_HOST`, `SSE_BRIDGE_PORT=tcp://…` and the rest, for
    every Service both releases render, and the bridge must still accept its configuration."""
    renders = {release: render(chart, values, release) for release in LINKED_RELEASES}
    kinds = by_kind(renders["sse-bridge"])
    services = [svc for docs in renders.values() for svc in services_of(docs)]

    def links_off():
        for release, docs in renders.items():
            pod = by_kind(docs)["Deployment"]["spec"]["template"]["spec"]
            assert pod.get("enableServiceLinks") is False, (release, pod.get("enableServiceLinks"))

    def bridge_accepts_links():
        assert kinds["Service"]["metadata"]["name"] == "sse-bridge", kinds["Service"]["metadata"]["name"]
        for ipv6 in (False, True):
            links = service_link_env(services, ipv6)
            for want in ("SSE_BRIDGE_SERVICE_HOST", "SSE_BRIDGE_PORT", "SSE_BRIDGE_CANARY_SERVICE_HOST"):
                assert want in links, (want, sorted(links))
            clash = sorted(set(links) & {e["name"] for e in container(kinds).get("env", [])})
            assert not clash, f"a service link has the name of an env var the chart sets: {clash}"
            check_config(kinds["ConfigMap"]["data"]["bridge.toml"], {**links, **secret_env_for_check(kinds)})

    check(f"{name}: as release sse-bridge: enableServiceLinks false", links_off)
    check(f"{name}: as release sse-bridge: --check-config with every Service's links", bridge_accepts_links)


def container(kinds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The bridge's container (extraContainers may add sidecars after it)."""
    cs = kinds["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert cs[0]["name"] == "sse-bridge", [c["name"] for c in cs]
    return cs[0]


def check_common(name: str, chart: helm.Chart, values: dict[str, Any], docs: dict, outdir: Path) -> None:
    """What every rendering must satisfy."""
    kinds = by_kind(docs)
    merged = chart.merge_values(values)
    dep = kinds["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    c = container(kinds)
    toml = bridge_toml(kinds)
    toml_text = kinds["ConfigMap"]["data"]["bridge.toml"]

    def metadata():
        for k, m in kinds.items():
            assert m["metadata"]["name"].startswith(RELEASE), (k, m["metadata"]["name"])
            assert m["metadata"].get("namespace") == NAMESPACE, (k, m["metadata"].get("namespace"))
            assert m["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE, k

    def listeners():
        assert toml["server"]["listen"] == f"0.0.0.0:{merged['containerPorts']['http']}", toml["server"]
        assert toml["admin"]["listen"] == f"0.0.0.0:{merged['containerPorts']['admin']}", toml["admin"]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports == {"http": merged["containerPorts"]["http"], "admin": merged["containerPorts"]["admin"]}, ports
        svc = {p["name"]: (p["port"], p["targetPort"]) for p in kinds["Service"]["spec"]["ports"]}
        assert svc == {"http": (merged["service"]["port"], "http")}, f"the public Service carries the SSE port only: {svc}"
        admin = kinds["Service/admin"]
        ports = {p["name"]: (p["port"], p["targetPort"]) for p in admin["spec"]["ports"]}
        assert ports == {"admin": (merged["service"]["adminPort"], "admin")}, ports
        assert admin["spec"]["type"] == "ClusterIP", admin["spec"]
        assert admin["metadata"]["name"] == f"{kinds['Service']['metadata']['name']}-admin"

    def config_mount():
        assert c["args"] == ["--config", "/etc/sse-bridge/bridge.toml"], c["args"]
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        assert mounts["config"]["mountPath"] == "/etc/sse-bridge" and mounts["config"]["readOnly"] is True
        vols = {v["name"]: v for v in pod["volumes"]}
        assert vols["config"]["configMap"]["name"] == kinds["ConfigMap"]["metadata"]["name"]

    def config_roundtrip():
        # Every key set in values reaches bridge.toml with its value.
        for section, table in (merged.get("config") or {}).items():
            if section == "delivery":
                assert toml.get("delivery", []) == table, (toml.get("delivery"), table)
                continue
            for k, v in (table or {}).items():
                if section == "memory" and k == "limit" and not v:
                    continue
                if (section, k) == ("server", "trusted_proxies"):  # plus ingress.trustedProxies
                    assert set(v) <= set(toml[section][k]), (v, toml[section][k])
                    continue
                assert toml[section][k] == v, f"{section}.{k}: values {v!r}, bridge.toml {toml[section].get(k)!r}"
        for section in ("nats", "redis"):
            assert (section in toml) == bool(merged["config"].get(section)), section

    def trusted_proxies():
        want = list((merged["config"].get("server") or {}).get("trusted_proxies") or [])
        if merged["ingress"]["enabled"]:
            want += [p for p in merged["ingress"]["trustedProxies"] if p not in want]
        assert toml["server"].get("trusted_proxies", []) == want, (toml["server"].get("trusted_proxies"), want)

    def memory_budget():
        explicit = (merged["config"].get("memory") or {}).get("limit") or 0
        limit = quantity_bytes(merged["resources"]["limits"]["memory"])
        want = explicit or limit * merged["memoryBudgetPercent"] // 100
        assert toml["memory"]["limit"] == want, (toml["memory"], want)
        assert 0 < toml["memory"]["limit"] <= limit

    def probes():
        admin = "admin"
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": admin}, c["livenessProbe"]
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": admin}, c["readinessProbe"]

    def shutdown():
        drain = seconds((merged["config"].get("server") or {}).get("drain_timeout", "10s"))
        pre = merged["preStopSleepSeconds"]
        assert pod["terminationGracePeriodSeconds"] > pre + drain, (pod["terminationGracePeriodSeconds"], pre, drain)
        if pre:
            assert c["lifecycle"]["preStop"] == {"sleep": {"seconds": pre}}, c.get("lifecycle")

    def security():
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True, sc
        assert sc["capabilities"]["drop"] == ["ALL"] and sc["runAsNonRoot"] is True, sc
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False

    def resources():
        assert c["resources"]["limits"]["memory"] == merged["resources"]["limits"]["memory"]
        want = (merged["resources"].get("requests") or {}).get("memory") or merged["resources"]["limits"]["memory"]
        assert c["resources"]["requests"]["memory"] == want, c["resources"]

    def checksum():
        want = hashlib.sha256(chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)[
            "sse-bridge/templates/configmap.yaml"].encode()).hexdigest()
        got = dep["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        assert got == want, (got, want)

    def replicas():
        if merged["autoscaling"]["enabled"]:
            assert "replicas" not in dep["spec"], "replicas must be left to the HPA"
        else:
            assert dep["spec"]["replicas"] == merged["replicaCount"]

    def optional_kinds():
        pods = merged["autoscaling"]["minReplicas"] if merged["autoscaling"]["enabled"] else merged["replicaCount"]
        pdb = merged["podDisruptionBudget"].get("enabled")
        want = {
            "HorizontalPodAutoscaler": merged["autoscaling"]["enabled"],
            "PodDisruptionBudget": pods > 1 if pdb is None else pdb,
            "ServiceMonitor": merged["serviceMonitor"]["enabled"],
            "Ingress": merged["ingress"]["enabled"],
            "NetworkPolicy": merged["networkPolicy"]["enabled"],
            "PrometheusRule": merged["prometheusRule"]["enabled"],
            "ConfigMap/dashboard": merged["grafanaDashboard"]["enabled"],
            "Pod/test-stream": merged["helmTest"]["enabled"],
        }
        got = {k: k in kinds for k in OPTIONAL_KINDS}
        assert got == want, (got, want)

    def service_monitor():
        if "ServiceMonitor" in kinds:
            jsonschema.validate(kinds["ServiceMonitor"], SERVICE_MONITOR_SCHEMA)
            assert kinds["ServiceMonitor"]["spec"]["endpoints"][0]["port"] == "admin"
            # It selects the admin Service, and only it.
            sel = kinds["ServiceMonitor"]["spec"]["selector"]["matchLabels"]
            chosen = [k for k, m in kinds.items() if m["kind"] == "Service"
                      and all(m["metadata"]["labels"].get(a) == b for a, b in sel.items())]
            assert chosen == ["Service/admin"], chosen

    def prometheus_rule():
        if "PrometheusRule" in kinds:
            jsonschema.validate(kinds["PrometheusRule"], ops_kit.PROMETHEUS_RULE_SCHEMA)
            ops_kit.check_rule(kinds["PrometheusRule"], merged)

    def dashboard():
        if "ConfigMap/dashboard" in kinds:
            cm = kinds["ConfigMap/dashboard"]
            for k, v in merged["grafanaDashboard"]["labels"].items():
                assert cm["metadata"]["labels"].get(k) == v, cm["metadata"]["labels"]
            shipped = json.loads((CHART / "dashboards" / "sse-bridge.json").read_text())
            assert json.loads(cm["data"]["sse-bridge.json"]) == shipped, "the ConfigMap must carry the shipped file"

    def test_pod():
        if "Pod/test-stream" in kinds:
            pod = kinds["Pod/test-stream"]
            assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test", pod["metadata"]
            sel = kinds["Deployment"]["spec"]["selector"]["matchLabels"]
            labels = pod["metadata"]["labels"]
            assert not all(labels.get(k) == v for k, v in sel.items()), "a Service or the PDB would select the test pod"
            env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
            host = f"{kinds['Service']['metadata']['name']}.{NAMESPACE}.svc:{merged['service']['port']}"
            assert env["STREAM_URL"].startswith(f"http://{host}/events?topic="), env

    def probes_and_containers():
        if merged["startupProbe"]["enabled"]:
            assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}, c["startupProbe"]
            assert "enabled" not in c["startupProbe"], c["startupProbe"]
        else:
            assert "startupProbe" not in c
        assert pod.get("initContainers", []) == merged["initContainers"], pod.get("initContainers")
        assert pod["containers"][1:] == merged["extraContainers"], pod["containers"][1:]

    def bridge_accepts():
        check_config(toml_text, secret_env_for_check(kinds))

    for fn in (metadata, listeners, config_mount, config_roundtrip, trusted_proxies, memory_budget, probes, shutdown, security,
               resources, checksum, replicas, optional_kinds, service_monitor, prometheus_rule, dashboard, test_pod,
               probes_and_containers, bridge_accepts):
        check(f"{name}: {fn.__name__}", fn)

    files = []
    for path, manifests in docs.items():
        for i, m in enumerate(manifests):
            f = outdir / f"{Path(path).stem}-{i}.yaml"
            f.write_text(yaml.safe_dump(m))
            files.append(f)
    for v in KUBE_VERSIONS:
        check(f"{name}: kubernetes-validate --strict k8s {v} ({len(files)} manifests)", lambda v=v: kubernetes_validate(files, v))


def main() -> int:
    print(f"helm-python-sdk {helm.__version__}, Helm SDK {helm.helm_sdk_version()}, "
          f"Kubernetes schemas {' '.join(KUBE_VERSIONS)}")
    values_files = sorted(HERE.glob("*-values.yaml"))
    assert values_files, "no ci/*-values.yaml"
    chart = helm.Chart.load(CHART)
    renders: dict[str, dict] = {}
    work = tempfile.TemporaryDirectory(prefix="chart-test-")

    for vf in values_files:
        name = vf.name.removesuffix("-values.yaml")
        values = load_values(vf)

        def lint(values=values):
            for v in KUBE_VERSIONS:
                report = helm.lint(CHART, values, strict=True, kube_version=f"v{v}")
                bad = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
                assert not bad, json.dumps(bad, indent=2)

        check(f"{name}: helm lint --strict", lint)
        check(f"{name}: values.schema.json accepts it", lambda values=values: chart.validate_schema(values))
        try:
            docs = render(chart, values)
        except helm.HelmError as e:
            check(f"{name}: renders", lambda e=e: fail(str(e)))
            continue
        check(f"{name}: renders", lambda: None)
        renders[name] = docs
        outdir = Path(work.name) / name
        outdir.mkdir()
        check_common(name, chart, values, docs, outdir)
        check_service_links(name, chart, values)

    specific_checks(chart, renders)
    schema_rejections(chart)
    render_rejections(chart)
    ops_kit_live(renders)
    dockerfile_lint()

    work.cleanup()
    print(f"\n{len(passed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def specific_checks(chart: helm.Chart, renders: dict[str, dict]) -> None:
    if "default" in renders:
        kinds = by_kind(renders["default"])

        def defaults_are_quiet():
            toml = bridge_toml(kinds)
            assert "nats" not in toml and "redis" not in toml and "publish" not in toml, toml
            assert "env" not in container(kinds), container(kinds).get("env")
            limit = quantity_bytes(chart.values["resources"]["limits"]["memory"])
            assert toml["memory"]["limit"] == limit * 50 // 100, toml["memory"]

        check("default: no source, no publish token, budget 50% of the memory limit", defaults_are_quiet)

    if "all-on" in renders:
        kinds = by_kind(renders["all-on"])

        def ingress_sse():
            a = kinds["Ingress"]["metadata"]["annotations"]
            want = {
                "nginx.ingress.kubernetes.io/proxy-buffering": "off",
                "nginx.ingress.kubernetes.io/proxy-request-buffering": "off",
                "nginx.ingress.kubernetes.io/proxy-http-version": "1.1",
                "nginx.ingress.kubernetes.io/proxy-read-timeout": "3600",
                "nginx.ingress.kubernetes.io/proxy-send-timeout": "3600",
                "cert-manager.io/cluster-issuer": "letsencrypt",
            }
            assert all(a.get(k) == v for k, v in want.items()), a
            backend = kinds["Ingress"]["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
            assert backend == {"name": kinds["Service"]["metadata"]["name"], "port": {"name": "http"}}, backend

        def spread():
            tsc = kinds["Deployment"]["spec"]["template"]["spec"]["topologySpreadConstraints"]
            assert [t["topologyKey"] for t in tsc] == ["topology.kubernetes.io/zone", "kubernetes.io/hostname"], tsc
            sel = kinds["Deployment"]["spec"]["selector"]["matchLabels"]
            assert all(t["labelSelector"]["matchLabels"] == sel for t in tsc)

        def hpa_pdb():
            hpa = kinds["HorizontalPodAutoscaler"]["spec"]
            assert hpa["scaleTargetRef"]["name"] == kinds["Deployment"]["metadata"]["name"]
            assert {m["resource"]["name"] for m in hpa["metrics"]} == {"cpu", "memory"}, hpa["metrics"]
            assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 20)
            assert kinds["PodDisruptionBudget"]["spec"] == {
                "minAvailable": 2,
                "selector": {"matchLabels": kinds["Deployment"]["spec"]["selector"]["matchLabels"]},
            }

        def network_policy():
            np = kinds["NetworkPolicy"]["spec"]
            assert np["policyTypes"] == ["Ingress", "Egress"]
            assert [r["ports"][0]["port"] for r in np["ingress"]] == ["http", "http", "admin"], np["ingress"]
            assert np["egress"][0]["ports"][0]["port"] == 53 and len(np["egress"]) == 3, np["egress"]

        def image_digest():
            assert container(kinds)["image"].startswith("registry.example.com/sse-bridge@sha256:")

        def auth_keys_mounted():
            pod = kinds["Deployment"]["spec"]["template"]["spec"]
            vols = {v["name"]: v for v in pod["volumes"]}
            assert vols["auth-keys"]["secret"] == {"secretName": "jwt-issuer",
                                                   "items": [{"key": "public.pem", "path": "public.pem"}]}, vols
            mounts = {m["name"]: m for m in container(kinds)["volumeMounts"]}
            assert mounts["auth-keys"] == {"name": "auth-keys", "mountPath": "/etc/sse-bridge-auth", "readOnly": True}
            assert "subPath" not in mounts["auth-keys"], "a subPath mount would never see a rotated key"
            auth = bridge_toml(kinds)["auth"]
            assert auth["public_key_file"] == "/etc/sse-bridge-auth/public.pem" and "jwks_file" not in auth, auth
            assert auth["rules"] == [{"topics": "ticker.>", "access": "public"}, {"topics": "orders.*", "access": "token"}]

        def telemetry_float():
            assert bridge_toml(kinds)["telemetry"]["sampling_ratio"] == 0.25

        for fn in (ingress_sse, spread, hpa_pdb, network_policy, image_digest, auth_keys_mounted, telemetry_float):
            check(f"all-on: {fn.__name__}", fn)

    if "broker-tls" in renders:
        kinds = by_kind(renders["broker-tls"])

        def tls_and_secret_files_mounted():
            pod = kinds["Deployment"]["spec"]["template"]["spec"]
            vols = {v["name"]: v for v in pod["volumes"]}
            assert vols["public-tls"]["secret"] == {"secretName": "bridge-tls"}, vols
            assert vols["secret-files-nats"]["secret"] == {"secretName": "nats-bridge-user"}, vols
            mounts = {m["name"]: m for m in container(kinds)["volumeMounts"]}
            assert mounts["public-tls"] == {"name": "public-tls", "mountPath": "/etc/sse-bridge-tls", "readOnly": True}
            assert mounts["secret-files-nats"]["mountPath"] == "/etc/sse-bridge-secrets/nats"
            assert not any("subPath" in m for m in mounts.values()), "a subPath mount never sees a renewed file"
            toml = bridge_toml(kinds)
            assert toml["server"]["tls"] == {"cert_file": "/etc/sse-bridge-tls/tls.crt",
                                             "key_file": "/etc/sse-bridge-tls/tls.key",
                                             "client_ca_file": "/etc/sse-bridge-tls/ca.crt"}, toml["server"]
            assert toml["nats"]["tls"]["ca_file"] == "/etc/sse-bridge-secrets/nats/ca.crt", toml["nats"]
            assert "token" not in json.dumps(container(kinds).get("env", [])), "no secret value in the pod spec"

        check("broker-tls: public TLS and broker secret files mounted from Secrets", tls_and_secret_files_mounted)

    if "external-secrets" in renders:
        kinds = by_kind(renders["external-secrets"])

        def secrets_by_name():
            env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container(kinds)["env"]}
            assert env == {
                "SSE_BRIDGE_PUBLISH__TOKEN": {"name": "sse-bridge-publish", "key": "token"},
                "SSE_BRIDGE_NATS__URL": {"name": "nats-credentials", "key": "url"},
                "SSE_BRIDGE_REDIS__URL": {"name": "redis-credentials", "key": "redis-url"},
                "SSE_BRIDGE_JETSTREAM__URL": {"name": "nats-credentials", "key": "jetstream-url"},
                "SSE_BRIDGE_REDIS_STREAMS__URL": {"name": "redis-credentials", "key": "streams-url"},
                "SSE_BRIDGE_AUTH__SECRET": {"name": "jwt-hs256", "key": "secret"},
            }, env
            assert container(kinds)["envFrom"] == [{"secretRef": {"name": "sse-bridge-extra"}}]
            toml = bridge_toml(kinds)
            assert "url" not in toml["nats"] and "url" not in toml["redis"] and "publish" not in toml, toml
            assert "url" not in toml["jetstream"] and "url" not in toml["redis_streams"], toml
            assert "secret" not in toml["auth"], toml["auth"]
            assert "Secret" not in kinds, "the chart must not create Secrets"

        check("external-secrets: credentials only from Secrets, none in the ConfigMap", secrets_by_name)

    def checksum_rolls():
        def sum_of(values):
            kinds = by_kind(render(chart, values))
            return kinds["Deployment"]["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

        base = sum_of({})
        assert sum_of({"config": {"server": {"retry": "5s"}}}) != base, "config change must change the checksum"
        assert sum_of({"resources": {"limits": {"memory": "3Gi"}}}) != base, "memory.limit follows the limit"
        assert sum_of({"replicaCount": 5}) == base, "a non-config change must not roll the pods"

    check("checksum/config changes with the config, only with it", checksum_rolls)

    def quantities():
        for q, want in (("1Gi", 2**30), ("1.5G", 1_500_000_000), (536870912, 2**29), ("2048Mi", 2**31),
                        ("786432Ki", 786432 * 1024)):
            toml = bridge_toml(by_kind(render(chart, {"resources": {"limits": {"memory": q}}})))
            assert toml["memory"]["limit"] == want * 50 // 100, (q, toml["memory"]["limit"], want * 50 // 100)

    check("memory.limit = 50% (the default) of Ki/Mi/Gi/G/byte quantities", quantities)

    def toml_strings():
        nasty = 'a"b\\c <>&é\u2028 \t#x'
        values = {"config": {"log": {"level": nasty}, "nats": {"subjects": ["x.>", "ä.*"]}}}
        toml = bridge_toml(by_kind(render(chart, values)))
        assert toml["log"]["level"] == nasty and toml["nats"]["subjects"] == ["x.>", "ä.*"], toml

    check("bridge.toml strings survive quotes, backslashes, unicode", toml_strings)

    def grace_follows_drain():
        kinds = by_kind(render(chart, {"config": {"server": {"drain_timeout": "2m"}},
                                       "terminationGracePeriodSeconds": 130}))
        assert kinds["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 130
        assert bridge_toml(kinds)["server"]["drain_timeout"] == "2m"

    check("drain_timeout 2m with a 130s grace period renders", grace_follows_drain)

    def jwks_from_secret():
        values = {"config": {"auth": {"algorithm": "RS256"}},
                  "secrets": {"authKeys": {"existingSecret": "issuer-jwks", "key": "jwks.json", "format": "jwks"}}}
        kinds = by_kind(render(chart, values))
        auth = bridge_toml(kinds)["auth"]
        assert auth == {"algorithm": "RS256", "jwks_file": "/etc/sse-bridge-auth/jwks.json"}, auth

    check("secrets.authKeys format jwks sets auth.jwks_file", jwks_from_secret)
    operator_checks(chart, renders)


def operator_checks(chart: helm.Chart, renders: dict[str, dict]) -> None:
    """Issue #13: per-IP limits behind an ingress, a private admin port, disruption defaults,
    the ops kit, `helm test`, and the schema's new keys."""
    ing = {"ingress": {"enabled": True, "trustedProxies": ["10.244.0.0/16"]}}

    def kinds_of(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return by_kind(render(chart, values))

    def notes(values: dict[str, Any]) -> str:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)["sse-bridge/templates/NOTES.txt"]

    def proxies_from_ingress():
        toml = bridge_toml(kinds_of(ing))
        assert toml["server"]["trusted_proxies"] == ["10.244.0.0/16"], toml["server"]
        both = deep_merge(ing, {"config": {"server": {"trusted_proxies": ["10.0.0.1", "10.244.0.0/16"]}}})
        assert bridge_toml(kinds_of(both))["server"]["trusted_proxies"] == ["10.0.0.1", "10.244.0.0/16"]
        off = {"ingress": {"enabled": False, "trustedProxies": ["10.244.0.0/16"]}}
        assert "trusted_proxies" not in bridge_toml(kinds_of(off))["server"], "ingress off: its proxies are not trusted"
        own = {"ingress": {"enabled": True}, "config": {"server": {"trusted_proxies": ["192.0.2.0/24"]}}}
        assert bridge_toml(kinds_of(own))["server"]["trusted_proxies"] == ["192.0.2.0/24"]
        text = notes(ing)
        assert "X-Forwarded-For" in text and "10.244.0.0/16" in text and "Raise them" not in text, text

    def per_proxy_limits():
        values = {"ingress": {"enabled": True, "perProxyLimits": True}}
        assert "trusted_proxies" not in bridge_toml(kinds_of(values))["server"]
        assert "count each ingress controller pod as one client" in notes(values), notes(values)

    def admin_private():
        for t in ("ClusterIP", "NodePort", "LoadBalancer"):
            k = kinds_of({"service": {"type": t}})
            assert [p["name"] for p in k["Service"]["spec"]["ports"]] == ["http"], (t, k["Service"]["spec"])
            assert k["Service/admin"]["spec"]["type"] == "ClusterIP", t
        svc = by_kind(renders["all-on"])["Service"]["spec"]
        assert (svc["type"], svc["externalTrafficPolicy"], svc["loadBalancerSourceRanges"], svc["sessionAffinity"]) == (
            "LoadBalancer", "Local", ["203.0.113.0/24"], "ClientIP"), svc
        cip = kinds_of({"service": {"externalTrafficPolicy": "Local", "loadBalancerSourceRanges": ["10.0.0.0/8"]}})
        assert "externalTrafficPolicy" not in cip["Service"]["spec"] and "loadBalancerSourceRanges" not in cip["Service"]["spec"]
        long = render(chart, {"fullnameOverride": "x" * 63, "grafanaDashboard": {"enabled": True}})
        names = [m["metadata"]["name"] for ms in long.values() for m in ms]
        assert all(len(n) <= 63 for n in names), names

    def disruption_defaults():
        def pdb(values):
            return kinds_of(values).get("PodDisruptionBudget")
        assert pdb({})["spec"]["maxUnavailable"] == 1, "two replicas by default: a PDB by default"
        assert pdb({"replicaCount": 1}) is None
        assert pdb({"replicaCount": 1, "podDisruptionBudget": {"enabled": True}}) is not None
        assert pdb({"replicaCount": 3, "podDisruptionBudget": {"enabled": False}}) is None
        assert pdb({"replicaCount": 1, "autoscaling": {"enabled": True, "minReplicas": 2}}) is not None
        assert pdb({"autoscaling": {"enabled": True, "minReplicas": 1}}) is None
        res = container(kinds_of({}))["resources"]
        assert res["requests"]["memory"] == res["limits"]["memory"], res
        res = container(kinds_of({"resources": {"limits": {"memory": "3Gi"}}}))["resources"]
        assert res["requests"]["memory"] == "3Gi" and res["requests"]["cpu"] == "100m", res
        hpa = kinds_of({"autoscaling": {"enabled": True, "targetCPUUtilizationPercentage": 0,
                                        "targetMemoryUtilizationPercentage": 80}, "resources": {"requests": {"cpu": None}}})
        assert [m["resource"]["name"] for m in hpa["HorizontalPodAutoscaler"]["spec"]["metrics"]] == ["memory"]

    def heartbeat_vs_ingress():
        for hb, timeout in (("15s", 30), ("30m", 3600), ("1h", 7200), ("500ms", 30), ("1m 30s", 180)):
            kinds_of(deep_merge(ing, {"ingress": {"readTimeoutSeconds": timeout},
                                      "config": {"server": {"heartbeat_interval": hb}}}))

    def rule_follows_values():
        k = kinds_of({"prometheusRule": {"enabled": True}})
        rules = {r["alert"]: r for r in k["PrometheusRule"]["spec"]["groups"][0]["rules"]}
        assert 'job="bridge-sse-bridge-admin"' in rules["SseBridgeBrokerDown"]["expr"], rules["SseBridgeBrokerDown"]
        assert "SseBridgeCpuSaturated" not in rules, "no CPU limit by default: no CPU ceiling alert"
        assert str(2**30) in rules["SseBridgeRssNearLimit"]["expr"], rules["SseBridgeRssNearLimit"]["expr"]
        assert "100000" in rules["SseBridgeNearStreamCap"]["expr"]
        assert rules["SseBridgeBrokerDown"]["annotations"]["runbook_url"] == "docs/observability.md#runbook-broker-down"
        k = kinds_of({"prometheusRule": {"enabled": True, "selector": 'cluster="eu", app="sse"',
                                         "disabledAlerts": ["SseBridgeNoEvents"],
                                         "additionalRules": [{"alert": "Mine", "expr": "vector(1)"}]},
                      "config": {"limits": {"max_streams": 0}, "fanout": {"ingest_queue": 100}},
                      "resources": {"limits": {"cpu": "1500m", "memory": "1Gi"}}})
        rules = {r["alert"]: r for r in k["PrometheusRule"]["spec"]["groups"][0]["rules"]}
        assert "SseBridgeNoEvents" not in rules and "SseBridgeNearStreamCap" not in rules and "Mine" in rules
        assert all('cluster="eu", app="sse"' in r["expr"] for n, r in rules.items() if n != "Mine")
        assert "> 1.35" in rules["SseBridgeCpuSaturated"]["expr"], rules["SseBridgeCpuSaturated"]["expr"]
        assert "> 100 * 0.8" in rules["SseBridgeIngestSaturated"]["expr"], rules["SseBridgeIngestSaturated"]["expr"]
        all_on = by_kind(renders["all-on"])["PrometheusRule"]
        assert all_on["metadata"]["labels"]["release"] == "prometheus"
        ops_kit.check_rule(all_on, chart.merge_values(load_values(HERE / "all-on-values.yaml")))

    def rule_covers_observability():
        # Every metric docs/observability.md gives an alert for appears in some alert.
        rule = by_kind(renders["all-on"])["PrometheusRule"]
        used = set(ops_kit.kit_names(rule, {"panels": []}))
        doc = (REPO / "docs" / "observability.md").read_text()
        alerting = set()
        for line in doc.splitlines():
            cells = [c.strip() for c in line.split("|")]
            if len(cells) > 4 and cells[1].startswith("`sse_bridge_") and cells[-2] not in ("alert", "—", ""):
                for name in re.findall(r"`(sse_bridge_[a-z0-9_]+)", cells[1]):
                    alerting.add(name)
        skip = {"sse_bridge_replay_retained_events", "sse_bridge_replay_retained_bytes", "sse_bridge_replay_topics",
                "sse_bridge_resume_broker_reads_peak"}  # "pinned at the limit is normal" / peak is a record
        hist = {n.removesuffix("_bucket") for n in used}
        missing = sorted(n for n in alerting - skip if n not in used and n not in hist)
        assert not missing, f"docs/observability.md gives these an alert, the PrometheusRule does not: {missing}"

    def dashboard_panels():
        dash = json.loads((CHART / "dashboards" / "sse-bridge.json").read_text())
        names = set(ops_kit.kit_names(None, dash))
        want = {"sse_bridge_resident_memory_bytes", "sse_bridge_heap_allocated_bytes", "sse_bridge_tokio_alive_tasks",
                "sse_bridge_open_streams", "sse_bridge_deliveries_total", "sse_bridge_delivery_latency_seconds_bucket",
                "sse_bridge_queue_depth_streams", "sse_bridge_dropped_events_total", "sse_bridge_requests_rejected_total",
                "sse_bridge_broker_up", "process_open_fds", "process_max_fds"}
        assert want <= names, f"the dashboard lacks {sorted(want - names)}"
        exprs = [e for w, e in ops_kit.dashboard_exprs(dash) if w.startswith("panel")]
        assert all('pod=~"$pod"' in e for e in exprs), [e for e in exprs if 'pod=~"$pod"' not in e]
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)), "panel ids must be unique"
        k = kinds_of({"grafanaDashboard": {"enabled": True, "namespace": "monitoring"}})
        assert k["ConfigMap/dashboard"]["metadata"]["namespace"] == "monitoring"
        assert k["ConfigMap/dashboard"]["metadata"]["labels"]["grafana_dashboard"] == "1"

    def helm_test_pod():
        assert "Pod/test-stream" not in kinds_of({"helmTest": {"enabled": False}})
        k = kinds_of({"helmTest": {"topic": "a b&c"}})
        env = k["Pod/test-stream"]["spec"]["containers"][0]["env"][0]["value"]
        assert env.endswith("/events?topic=a+b%26c"), env
        np = by_kind(renders["all-on"])["NetworkPolicy"]["spec"]["ingress"]
        assert any(r.get("from", [{}])[0].get("podSelector", {}).get("matchLabels", {}).get("sse-bridge/helm-test") == "true"
                   for r in np), np

    for fn in (proxies_from_ingress, per_proxy_limits, admin_private, disruption_defaults, heartbeat_vs_ingress,
               rule_follows_values, rule_covers_observability, dashboard_panels, helm_test_pod):
        check(f"#13: {fn.__name__}", fn)


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def schema_rejections(chart: helm.Chart) -> None:
    """Wrong values that values.schema.json must refuse, naming the key."""
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("replicaCount as a string", {"replicaCount": "two"}, "/replicaCount"),
        ("queue_capacity as a string", {"config": {"server": {"queue_capacity": "many"}}}, "queue_capacity"),
        ("a duration as a number", {"config": {"server": {"heartbeat_interval": 15}}}, "heartbeat_interval"),
        ("an unknown config key", {"config": {"server": {"queue_capacty": 10}}}, "queue_capacty"),
        ("an unknown section", {"config": {"sever": {}}}, "sever"),
        ("server.listen (the chart's)", {"config": {"server": {"listen": "0.0.0.0:1"}}}, "listen"),
        ("admin.listen (the chart's)", {"config": {"admin": {"listen": "0.0.0.0:1"}}}, "admin"),
        ("publish.token in a ConfigMap", {"config": {"publish": {"token": "secret-token"}}}, "token"),
        ("a bad slow_consumer policy", {"config": {"server": {"slow_consumer": "sometimes"}}}, "slow_consumer"),
        ("fanout.shards above 1024", {"config": {"fanout": {"shards": 2000}}}, "shards"),
        ("a delivery rule without topics", {"config": {"delivery": [{"max_rate": 5}]}}, "topics"),
        ("a delivery max_rate of 0", {"config": {"delivery": [{"topics": "a", "max_rate": 0}]}}, "max_rate"),
        ("nats without subjects", {"config": {"nats": {"url": "nats://n:4222"}}}, "subjects"),
        ("a redis URL with another scheme", {"config": {"redis": {"url": "http://r", "channels": ["c"]}}}, "url"),
        ("redis without channels or patterns", {"config": {"redis": {"envelope": True}}}, "redis"),
        ("a bad CORS origin", {"config": {"server": {"cors_origins": ["app.example.com"]}}}, "cors_origins"),
        ("log.format yaml", {"config": {"log": {"format": "yaml"}}}, "format"),
        ("no memory limit", {"resources": {"limits": {"memory": None}}}, "memory"),
        ("a memory limit that is not a quantity", {"resources": {"limits": {"memory": "lots"}}}, "memory"),
        ("memoryBudgetPercent 120", {"memoryBudgetPercent": 120}, "memoryBudgetPercent"),
        ("a port above 65535", {"service": {"port": 70000}}, "port"),
        ("an image digest that is a tag", {"image": {"digest": "latest"}}, "digest"),
        ("a secret reference as a string", {"secrets": {"natsUrl": "nats-credentials"}}, "natsUrl"),
        ("an ingress pathType typo", {"ingress": {"enabled": True, "hosts": [
            {"host": "a", "paths": [{"path": "/", "pathType": "Any"}]}]}}, "pathType"),
        ("an enabled ingress without hosts", {"ingress": {"enabled": True, "hosts": []}}, "hosts"),
        ("a drain_timeout the chart cannot check", {"config": {"server": {"drain_timeout": "1m 30s"}}}, "drain_timeout"),
        ("an unknown top-level key", {"replicas": 3}, "replicas"),
        ("auth.secret in a ConfigMap", {"config": {"auth": {"secret": "x" * 40}}}, "secret"),
        ("an auth rule access typo", {"config": {"auth": {"rules": [{"topics": "a", "access": "open"}]}}}, "access"),
        ("an auth algorithm typo", {"config": {"auth": {"algorithm": "none"}}}, "algorithm"),
        ("sampling_ratio above 1", {"config": {"telemetry": {"sampling_ratio": 2}}}, "sampling_ratio"),
        ("an authKeys format typo", {"secrets": {"authKeys": {"existingSecret": "k", "key": "k.pem", "format": "der"}}}, "format"),
        ("an ingress with neither trusted proxies nor perProxyLimits", {"ingress": {"enabled": True}}, "trustedProxies"),
        ("a trusted proxy that is not an address", {"ingress": {"trustedProxies": ["ingress-nginx"]}}, "trustedProxies"),
        ("externalTrafficPolicy in lower case", {"service": {"externalTrafficPolicy": "local"}}, "externalTrafficPolicy"),
        ("a sessionAffinity typo", {"service": {"sessionAffinity": "Sticky"}}, "sessionAffinity"),
        ("a loadBalancerSourceRange that is not a CIDR", {"service": {"loadBalancerSourceRanges": ["any"]}},
         "loadBalancerSourceRanges"),
        ("a service key typo", {"service": {"externalTrafficPolicies": "Local"}}, "externalTrafficPolicies"),
        ("a startupProbe typo", {"startupProbe": {"enable": True}}, "enable"),
        ("an init container without a name", {"initContainers": [{"image": "busybox"}]}, "name"),
        ("initContainers as a map", {"initContainers": {"name": "x"}}, "initContainers"),
        ("extraContainer (singular)", {"extraContainer": [{"name": "x"}]}, "extraContainer"),
        ("a resources.requests typo", {"resources": {"requests": {"memroy": "1Gi"}}}, "memroy"),
        ("a PDB enabled as a string", {"podDisruptionBudget": {"enabled": "yes"}}, "enabled"),
        ("a jetstreamUrl secret as a string", {"secrets": {"jetstreamUrl": "nats-credentials"}}, "jetstreamUrl"),
        ("a prometheusRule typo", {"prometheusRule": {"enable": True}}, "enable"),
        ("a disabled alert that is not one", {"prometheusRule": {"disabledAlerts": ["NoEvents"]}}, "disabledAlerts"),
        ("a grafanaDashboard label that is not a string", {"grafanaDashboard": {"labels": {"grafana_dashboard": 1}}},
         "grafana_dashboard"),
        ("a helmTest image without a tag", {"helmTest": {"image": {"repository": "curl", "tag": ""}}}, "tag"),
    ]
    defaults = chart.values
    for label, bad, needle in cases:
        def one(bad=bad, needle=needle):
            # What an install would validate: the chart's defaults with the user's values on top.
            merged = deep_merge(defaults, bad)
            try:
                chart.validate_schema(merged)
            except helm.HelmValuesError as e:
                assert needle in str(e), f"refused, but the message does not name {needle!r}: {e}"
            else:
                raise AssertionError(f"values.schema.json accepted {bad}")
            try:  # and the install path (render validates too)
                chart.render(bad, name=RELEASE, namespace=NAMESPACE, is_install=True)
            except helm.HelmError:
                pass
            else:
                raise AssertionError(f"render accepted {bad}")

        check(f"schema refuses {label}", one)


def render_rejections(chart: helm.Chart) -> None:
    """Values the schema cannot judge alone; the templates refuse them with a reason."""
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("a grace period not longer than preStop + drain", {"terminationGracePeriodSeconds": 15}, "terminationGracePeriodSeconds"),
        ("a drain longer than the grace period", {"config": {"server": {"drain_timeout": "1m"}}}, "drain_timeout"),
        ("a memory.limit above the container limit", {"config": {"memory": {"limit": 2**31}}}, "memory.limit"),
        ("a container limit too small for a budget", {"resources": {"limits": {"memory": "16Mi"}}}, "16 MiB"),
        ("a NATS secret with no subjects", {"secrets": {"natsUrl": {"existingSecret": "n", "key": "url"}}}, "config.nats"),
        ("a Redis secret with no channels", {"secrets": {"redisUrl": {"existingSecret": "r", "key": "url"}}}, "config.redis"),
        ("a PDB with neither minAvailable nor maxUnavailable",
         {"podDisruptionBudget": {"enabled": True, "minAvailable": None, "maxUnavailable": None}}, "minAvailable"),
        ("authKeys with the default HS256 algorithm",
         {"secrets": {"authKeys": {"existingSecret": "k", "key": "k.pem", "format": "pem"}}}, "RS256 or ES256"),
        ("authKeys and authSecret together", {"config": {"auth": {"algorithm": "ES256"}}, "secrets": {
            "authKeys": {"existingSecret": "k", "key": "k.pem", "format": "pem"},
            "authSecret": {"existingSecret": "s", "key": "secret"}}}, "use one"),
        ("authKeys and a public_key_file", {"config": {"auth": {"algorithm": "ES256", "public_key_file": "/k.pem"}},
                                            "secrets": {"authKeys": {"existingSecret": "k", "key": "k.pem", "format": "pem"}}},
         "use one"),
        ("an HS256 secret with algorithm ES256", {"config": {"auth": {"algorithm": "ES256"}},
                                                  "secrets": {"authSecret": {"existingSecret": "s", "key": "secret"}}}, "HS256"),
        ("autoscaling min above max", {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}, "minReplicas"),
        ("an HPA CPU target without a CPU request",
         {"autoscaling": {"enabled": True}, "resources": {"requests": {"cpu": None}}}, "resources.requests.cpu"),
        ("a heartbeat above half the ingress read timeout",
         {"ingress": {"enabled": True, "perProxyLimits": True, "readTimeoutSeconds": 60},
          "config": {"server": {"heartbeat_interval": "45s"}}}, "heartbeat_interval"),
        ("a 1h 30m heartbeat with the default 3600 s read timeout",
         {"ingress": {"enabled": True, "perProxyLimits": True}, "config": {"server": {"heartbeat_interval": "1h 30m"}}},
         "heartbeat_interval"),
        ("a JetStream secret with no streams", {"secrets": {"jetstreamUrl": {"existingSecret": "n", "key": "url"}}},
         "config.jetstream"),
        ("a Redis Streams secret with no keys", {"secrets": {"redisStreamsUrl": {"existingSecret": "r", "key": "url"}}},
         "config.redis_streams"),
    ]
    for label, bad, needle in cases:
        def one(bad=bad, needle=needle):
            try:
                chart.render(bad, name=RELEASE, namespace=NAMESPACE, is_install=True)
            except helm.HelmError as e:
                assert needle in str(e), f"refused, but the message does not name {needle!r}: {e}"
            else:
                raise AssertionError(f"rendered {bad}")

        check(f"templates refuse {label}", one)


def ops_kit_live(renders: dict[str, dict]) -> None:
    """The PrometheusRule (of all-on, where every optional alert renders), the dashboard and the
    default `helm test` script against a live bridge, when SSE_BRIDGE_BIN names one."""
    binary = os.environ.get("SSE_BRIDGE_BIN")
    if not binary:
        print("skip ops kit against a live bridge (SSE_BRIDGE_BIN unset)")
        return
    rule = by_kind(renders["all-on"]).get("PrometheusRule") if "all-on" in renders else None
    check("ops kit: all-on renders a PrometheusRule", lambda: rule or fail("no PrometheusRule in all-on"))
    pod = by_kind(renders["default"]).get("Pod/test-stream") if "default" in renders else None
    script = pod["spec"]["containers"][0]["args"][0] if pod else None
    check("ops kit: default renders the helm test pod", lambda: script or fail("no helm test pod in default"))
    ops_kit.live_check(binary, rule, script, check)


def dockerfile_lint() -> None:
    hadolint = os.environ.get("HADOLINT")
    if not hadolint:
        print("skip Dockerfile lint (HADOLINT unset)")
        return

    def run():
        r = subprocess.run([hadolint, "--no-color", "--failure-threshold", "info", str(REPO / "Dockerfile")],
                           capture_output=True, text=True, check=False)
        assert r.returncode == 0, r.stdout + r.stderr

    check("hadolint Dockerfile", run)


if __name__ == "__main__":
    sys.exit(main())
