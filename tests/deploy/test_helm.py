"""The Helm chart in helm/centrifugo-py, rendered offline by real Helm (PyPI `helm-python-sdk`
embeds Helm's Go SDK as a shared library) and checked three ways:

- every manifest validates against the Kubernetes OpenAPI schemas (PyPI `kubernetes-validate`,
  strict: unknown fields fail); the ServiceMonitor CRD against the fields of its CRD we use;
- the objects fit together (selectors, port names, secret keys, probe ports, HPA target);
- the rendered pod spec really starts the server: its ConfigMap becomes the config file, its
  env is resolved from the rendered Secret, and its readiness probe must answer.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from app.config import load_config

from . import (
    REPO_ROOT,
    clean_env,
    free_port,
    http_get,
    start,
    stop,
    wait_healthy,
    wait_workers,
    ws_round_trip,
)

CHART = REPO_ROOT / "helm" / "centrifugo-py"
RELEASE = "rt"
NAMESPACE = "realtime"
# Oldest and newest Kubernetes minor versions the manifests must be valid for.
KUBE_VERSIONS = ("1.29", kubernetes_validate.latest_version())

PRODUCTION: dict[str, Any] = {
    "replicaCount": 3,
    "webConcurrency": 2,
    "internalPort": 9000,
    "engine": {"type": "redis", "redis": {"address": ["redis://redis.data:6379"]}},
    "secrets": {"redisPassword": "redis-pass", "apiKey": "api-key-from-values"},
    "config": {"client": {"allowed_origins": ["https://app.example.com"]}},
    "ingress": {
        "enabled": True,
        "className": "nginx",
        "hosts": [
            {"host": "rt.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]},
        ],
        "tls": [{"secretName": "rt-tls", "hosts": ["rt.example.com"]}],
    },
    "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 12},
    "podDisruptionBudget": {"enabled": True, "minAvailable": 2, "maxUnavailable": ""},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
}
BUNDLED_REDIS: dict[str, Any] = {
    "replicaCount": 3,
    "redis": {"enabled": True},
    "secrets": {"redisPassword": "bundled-pass"},
    "podDisruptionBudget": {"enabled": True},
}


# --------------------------------------------------------------------------------------------
# rendering


class _StrictLoader(yaml.SafeLoader):
    """YAML that refuses duplicate mapping keys (Kubernetes would silently keep one)."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    keys = [loader.construct_object(k, deep=deep) for k, _ in node.value]
    duplicates = {k for k in keys if keys.count(k) > 1}
    if duplicates:
        raise yaml.constructor.ConstructorError(
            None, None, f"duplicate keys {duplicates}", node.start_mark
        )
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


@pytest.fixture(scope="module")
def chart() -> Any:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: Any, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """All manifests the chart renders for `values`, parsed."""
    out = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    manifests = []
    for template, text in sorted(out.items()):
        if template.endswith("NOTES.txt"):
            continue
        for doc in yaml.load_all(text, Loader=_StrictLoader):
            if doc:
                assert {"apiVersion", "kind", "metadata"} <= set(doc), (template, doc)
                manifests.append(doc)
    return manifests


def by_kind(manifests: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m["kind"], m["metadata"]["name"]): m for m in manifests}


def one(manifests: list[dict[str, Any]], kind: str, component: str = "server") -> dict[str, Any]:
    found = [
        m
        for m in manifests
        if m["kind"] == kind
        and m["metadata"].get("labels", {}).get("app.kubernetes.io/component", component)
        == component
    ]
    assert len(found) == 1, f"{len(found)} {kind} ({component}) manifests"
    return found[0]


def kinds(manifests: list[dict[str, Any]]) -> list[str]:
    return sorted(m["kind"] for m in manifests)


def server_container(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return container


def secret_data(manifests: list[dict[str, Any]]) -> dict[str, str]:
    data = one(manifests, "Secret")["data"]
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# --------------------------------------------------------------------------------------------
# Helm itself


def test_helm_is_a_real_helm() -> None:
    assert re.fullmatch(r"v[34]\.\d+\.\d+", helm.helm_sdk_version()), helm.helm_sdk_version()


@pytest.mark.parametrize(
    "values", [{}, PRODUCTION, BUNDLED_REDIS], ids=["default", "prod", "bundled"]
)
def test_helm_lint_strict(values: dict[str, Any]) -> None:
    report = helm.lint(CHART, values, strict=True, kube_version="v1.29.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


# --------------------------------------------------------------------------------------------
# Kubernetes schemas


SERVICE_MONITOR_SCHEMA = {
    # The part of prometheus-operator's ServiceMonitor CRD (monitoring.coreos.com/v1) the chart
    # uses; unknown fields in these objects fail, as the CRD's structural schema would prune them.
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                        }
                    },
                },
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "interval": {"type": "string", "pattern": r"^(\d+(ms|s|m|h))+$"},
                            "scrapeTimeout": {
                                "type": "string",
                                "pattern": r"^(\d+(ms|s|m|h))+$",
                            },
                        },
                    },
                },
            },
        },
    },
}


def validate_all(manifests: list[dict[str, Any]]) -> list[str]:
    checked = []
    for m in manifests:
        if m["apiVersion"].startswith("monitoring.coreos.com/"):
            jsonschema.validate(m, SERVICE_MONITOR_SCHEMA)
        else:
            for version in KUBE_VERSIONS:
                kubernetes_validate.validate(m, version, strict=True)
        checked.append(m["kind"])
    return checked


def test_schema_validation_catches_mistakes(chart: Any) -> None:
    # Control: the validator rejects a misspelt field and a wrong type, so passing means
    # something.
    deployment = one(render(chart), "Deployment")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBE_VERSIONS[0], strict=True)
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBE_VERSIONS[0], strict=True)


def test_default_values(chart: Any) -> None:
    manifests = render(chart)
    assert validate_all(manifests)
    assert kinds(manifests) == ["ConfigMap", "Deployment", "Secret", "Service", "ServiceAccount"]
    deployment = one(manifests, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    config = json.loads(one(manifests, "ConfigMap")["data"]["config.json"])
    assert config["engine"] == {"type": "memory"}
    assert config["health"] == {"enabled": True}
    assert "prometheus" not in config
    # The secrets nobody gave are generated, never empty.
    data = secret_data(manifests)
    assert set(data) == {"token_hmac_secret_key", "http_api_key", "admin_password", "admin_secret"}
    assert all(len(v) >= 32 for v in data.values())


def test_production_values(chart: Any) -> None:
    manifests = render(chart, PRODUCTION)
    assert validate_all(manifests)
    assert kinds(manifests) == [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "Ingress",
        "PodDisruptionBudget",
        "Secret",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ]
    deployment = one(manifests, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = one(manifests, "Service")

    # The HPA owns the replica count; it starts from the configured minimum.
    assert "replicas" not in deployment["spec"]
    hpa = one(manifests, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"

    pdb = one(manifests, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 2 and "maxUnavailable" not in pdb["spec"]
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels)

    ingress = one(manifests, "Ingress")
    annotations = ingress["metadata"]["annotations"]
    for key in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[f"nginx.ingress.kubernetes.io/{key}"]) >= 3600
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": service["metadata"]["name"], "port": {"name": "http"}}
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"hosts": ["rt.example.com"], "secretName": "rt-tls"}]

    # Metrics are scraped from the internal port, where Centrifugo serves them.
    monitor = one(manifests, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["port"] == "internal"
    assert "internal" in {p["name"] for p in service["spec"]["ports"]}

    config = json.loads(one(manifests, "ConfigMap")["data"]["config.json"])
    assert config["engine"]["type"] == "redis"
    assert config["engine"]["redis"]["address"] == ["redis://redis.data:6379"]
    assert config["prometheus"] == {"enabled": True}
    assert config["http_server"] == {"port": 8000, "internal_port": 9000}
    assert config["client"]["allowed_origins"] == ["https://app.example.com"]

    container = server_container(manifests)
    env = {e["name"]: e for e in container["env"]}
    assert env["WEB_CONCURRENCY"]["value"] == "2"
    data = secret_data(manifests)
    assert data["http_api_key"] == "api-key-from-values"
    assert data["redis_password"] == "redis-pass"
    assert env["CENTRIFUGO_ENGINE_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == (
        "redis_password"
    )
    # No secret in the ConfigMap.
    text = one(manifests, "ConfigMap")["data"]["config.json"]
    assert all(value not in text for value in data.values())


def test_bundled_redis(chart: Any) -> None:
    manifests = render(chart, BUNDLED_REDIS)
    assert validate_all(manifests)
    assert kinds(manifests).count("Deployment") == 2 and kinds(manifests).count("Service") == 2
    server = one(manifests, "Deployment")
    redis_deployment = one(manifests, "Deployment", component="redis")
    redis_service = one(manifests, "Service", component="redis")
    assert server["spec"]["replicas"] == 3
    (redis_container,) = redis_deployment["spec"]["template"]["spec"]["containers"]
    assert redis_container["image"].startswith("redis:7")
    assert "--requirepass" in redis_container["args"]

    redis_pod_labels = redis_deployment["spec"]["template"]["metadata"]["labels"]
    server_pod_labels = server["spec"]["template"]["metadata"]["labels"]
    # Each Service reaches its own pods only.
    assert selects(redis_service["spec"]["selector"], redis_pod_labels)
    assert not selects(redis_service["spec"]["selector"], server_pod_labels)
    server_service = one(manifests, "Service")
    assert not selects(server_service["spec"]["selector"], redis_pod_labels)
    pdb = one(manifests, "PodDisruptionBudget")
    assert not selects(pdb["spec"]["selector"]["matchLabels"], redis_pod_labels)

    config = json.loads(one(manifests, "ConfigMap")["data"]["config.json"])
    name = redis_service["metadata"]["name"]
    assert config["engine"]["type"] == "redis"
    assert config["engine"]["redis"]["address"] == [f"redis://{name}:6379"]


@pytest.mark.parametrize(
    "values", [{}, PRODUCTION, BUNDLED_REDIS], ids=["default", "prod", "bundled"]
)
def test_objects_fit_together(chart: Any, values: dict[str, Any]) -> None:
    manifests = render(chart, values)
    objects = by_kind(manifests)
    deployment = one(manifests, "Deployment")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
    service = one(manifests, "Service")
    assert selects(service["spec"]["selector"], labels)

    container = server_container(manifests)
    port_names = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
        assert container[probe]["httpGet"]["port"] in port_names

    # Secrets come from the Secret, as CENTRIFUGO_* variables, by keys the Secret has.
    secret = one(manifests, "Secret")
    from_secret = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert {
        "CENTRIFUGO_CLIENT_TOKEN_HMAC_SECRET_KEY",
        "CENTRIFUGO_HTTP_API_KEY",
        "CENTRIFUGO_ADMIN_PASSWORD",
        "CENTRIFUGO_ADMIN_SECRET",
    } <= set(from_secret)
    for name, ref in from_secret.items():
        assert ref["name"] == secret["metadata"]["name"], name
        assert ref["key"] in secret["data"] or ref.get("optional"), name

    # The config file comes from the ConfigMap, mounted where the args point.
    (config_volume,) = [v for v in pod["spec"]["volumes"] if "configMap" in v]
    assert ("ConfigMap", config_volume["configMap"]["name"]) in objects
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == config_volume["name"]]
    assert container["args"] == ["--config", f"{mount['mountPath']}/config.json"]

    # Non-root, matching the image's USER, with a read-only root filesystem and a writable /tmp.
    dockerfile_user = [
        line.split()[1]
        for line in (REPO_ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("USER ")
    ][-1]
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True
    assert f"{security['runAsUser']}:{security['runAsGroup']}" == dockerfile_user
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}
    assert pod["metadata"]["annotations"]["checksum/config"]

    # The drain window fits in the grace period.
    config = json.loads(one(manifests, "ConfigMap")["data"]["config.json"])
    cfg = load_config_text(config)
    assert cfg.shutdown.timeout < pod["spec"]["terminationGracePeriodSeconds"]


def load_config_text(config: dict[str, Any]) -> Any:
    """The config through the server's own loader (validates keys, types, durations)."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "config.json"
        path.write_text(json.dumps(config))
        return load_config(str(path), env={})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": 2}, "redis engine"),
        ({"webConcurrency": 3}, "redis engine"),
        ({"autoscaling": {"enabled": True}}, "redis engine"),
        ({"engine": {"type": "redis"}}, "engine.redis.address"),
        ({"engine": {"type": "nats"}}, "memory or redis"),
        (
            {
                "redis": {"enabled": True},
                "podDisruptionBudget": {"enabled": True, "minAvailable": 1, "maxUnavailable": 1},
            },
            "not both",
        ),
    ],
)
def test_broken_topologies_fail_to_render(chart: Any, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        render(chart, values)


def test_given_and_existing_secrets(chart: Any) -> None:
    manifests = render(chart, {"secrets": {"tokenHmacSecretKey": "given-hmac"}})
    assert secret_data(manifests)["token_hmac_secret_key"] == "given-hmac"
    # With an existing Secret the chart renders none and points the env at it.
    manifests = render(chart, {"secrets": {"existingSecret": "my-secret"}})
    assert "Secret" not in kinds(manifests)
    refs = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for e in server_container(manifests)["env"]
        if "valueFrom" in e
    }
    assert refs == {"my-secret"}


# --------------------------------------------------------------------------------------------
# The rendered pod starts the server


def run_pod(manifests: list[dict[str, Any]], tmp_path: Path, workers: int) -> None:
    """Run the server container of `manifests` as a local process: ConfigMap files where the
    volume is mounted (rebased into tmp_path), env resolved from the Secret, probes and a
    WebSocket + API round trip against the container ports."""
    container = server_container(manifests)
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    configmap = one(manifests, "ConfigMap")
    secret = secret_data(manifests)

    args = list(container["args"])
    for mount in container["volumeMounts"]:
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        if "configMap" in volume:
            local = tmp_path / "mounts" / mount["mountPath"].strip("/")
            local.mkdir(parents=True)
            for key, text in configmap["data"].items():
                (local / key).write_text(text)
            args = [a.replace(mount["mountPath"], str(local)) for a in args]

    env: dict[str, str] = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "secretKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["secretKeyRef"]
            if ref["key"] in secret:
                env[item["name"]] = secret[ref["key"]]
            else:
                assert ref.get("optional"), item
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}

    workdir = tmp_path / "workdir"
    workdir.mkdir()
    log_path = tmp_path / "pod.log"
    # `centrifugo <args>`: the image's ENTRYPOINT, here as `python -m app` of this checkout.
    proc = start([sys.executable, "-m", "app", *args], clean_env(env), workdir, log_path)
    readiness = container["readinessProbe"]["httpGet"]
    probe_url = f"http://127.0.0.1:{ports[readiness['port']]}{readiness['path']}"
    try:
        wait_healthy(proc, probe_url, log_path)
        wait_workers(proc.pid, workers)
        liveness = container["livenessProbe"]["httpGet"]
        assert http_get(f"http://127.0.0.1:{ports[liveness['port']]}{liveness['path']}")[0] == 200
        monitors = [m for m in manifests if m["kind"] == "ServiceMonitor"]
        for monitor in monitors:
            # What Prometheus would scrape: the endpoint's Service port -> container port.
            service = one(manifests, "Service")
            for endpoint in monitor["spec"]["endpoints"]:
                (svc_port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
                url = f"http://127.0.0.1:{ports[svc_port['targetPort']]}{endpoint['path']}"
                status, body = http_get(url)
                assert status == 200 and b"centrifugo_node_num_clients" in body, (url, status)
        api_port = ports.get("internal", ports["http"])
        asyncio.run(
            ws_round_trip(
                f"http://127.0.0.1:{ports['http']}",
                secret["token_hmac_secret_key"],
                secret["http_api_key"],
                api_base=f"http://127.0.0.1:{api_port}",
            )
        )
    finally:
        code = stop(proc)
    text = log_path.read_text()
    assert code == 0 and "Traceback" not in text, text


def test_default_pod_starts(chart: Any, tmp_path: Path) -> None:
    values = {
        "containerPort": free_port(),
        "config": {
            "http_server": {"address": "127.0.0.1"},
            "channel": {"without_namespace": {"allow_subscribe_for_client": True}},
        },
    }
    run_pod(render(chart, values), tmp_path, workers=1)


def test_production_pod_starts(chart: Any, tmp_path: Path, e2e_redis_url: str) -> None:
    values = json.loads(json.dumps(PRODUCTION))
    values["containerPort"] = free_port()
    values["internalPort"] = free_port()
    values["engine"]["redis"] = {
        "address": [e2e_redis_url],
        "prefix": "helm-" + secrets.token_hex(4),
    }
    values["secrets"]["redisPassword"] = ""  # the test Redis has none
    values["config"]["http_server"] = {"address": "127.0.0.1"}
    values["config"]["channel"] = {"without_namespace": {"allow_subscribe_for_client": True}}
    run_pod(render(chart, values), tmp_path, workers=2)


# --------------------------------------------------------------------------------------------
# values.yaml: documented, and every value does something


def _values_lines() -> list[tuple[int, str, bool]]:
    """(indent, key, has a comment right above) for every mapping key line of values.yaml."""
    out = []
    previous = ""
    for line in (CHART / "values.yaml").read_text().splitlines():
        stripped = line.strip()
        m = re.match(r"^( *)([A-Za-z][\w.-]*):", line)
        if m:
            out.append((len(m.group(1)), m.group(2), previous.startswith("#")))
        if stripped:
            previous = stripped
    return out


def test_values_are_documented() -> None:
    """A key with a comment above documents its whole block; a key without one must be a
    section whose keys are each documented."""
    lines = _values_lines()
    undocumented = []
    covered_below: int | None = None  # indent of the documented key whose block we are in
    for i, (indent, key, commented) in enumerate(lines):
        if covered_below is not None and indent > covered_below:
            continue
        covered_below = None
        if commented:
            covered_below = indent
            continue
        is_section = i + 1 < len(lines) and lines[i + 1][0] > indent
        if not is_section:
            undocumented.append(key)
    assert undocumented == []


def _value_paths(node: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(node, dict) and node:
        return [p for k, v in node.items() for p in _value_paths(v, (*prefix, k))]
    return [prefix]


def test_every_value_is_used_by_a_template() -> None:
    templates = "\n".join(p.read_text() for p in (CHART / "templates").iterdir())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    unused = []
    for path in _value_paths(values):
        prefixes = [".".join(path[:n]) for n in range(1, len(path) + 1)]
        if not any(re.search(rf"\.Values\.{re.escape(p)}(?![\w.])", templates) for p in prefixes):
            unused.append(".".join(path))
    assert unused == []
