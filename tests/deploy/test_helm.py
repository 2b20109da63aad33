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
import hashlib
import json
import re
import secrets
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate  # type: ignore[import-untyped]
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
from .helm_support import (
    CHART,
    KUBE_VERSIONS,
    by_kind,
    env_map,
    kinds,
    one,
    pod_spec,
    render,
    secret_data,
    selects,
    server_container,
    validate_all,
)

PRODUCTION: dict[str, Any] = {
    "replicaCount": 3,
    "webConcurrency": 2,
    "secrets": {"redisPassword": "redis-pass", "apiKey": "api-key-from-values"},
    "config": {
        "client": {"allowed_origins": ["https://app.example.com"]},
        "engine": {"type": "redis", "redis": {"address": ["redis://redis.data:6379"]}},
    },
    "ingress": {
        "enabled": True,
        "ingressClassName": "nginx",
        "hosts": [
            {"host": "rt.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]},
        ],
        "tls": [{"secretName": "rt-tls", "hosts": ["rt.example.com"]}],
    },
    "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 12},
    "podDisruptionBudget": {"enabled": True, "minAvailable": 2, "maxUnavailable": ""},
    "metrics": {"serviceMonitor": {"enabled": True, "additionalLabels": {"release": "prom"}}},
}
BUNDLED_REDIS: dict[str, Any] = {
    "replicaCount": 3,
    "redis": {"enabled": True},
    "secrets": {"redisPassword": "bundled-pass"},
    "podDisruptionBudget": {"enabled": True},
}


@pytest.fixture(scope="module")
def chart() -> Any:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


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


def test_duplicate_keys_are_refused() -> None:
    # Control for the strict loader: two `httpGet:` in one probe (chart 0.1.0's readinessProbe
    # override) must not parse.
    from .helm_support import _StrictLoader

    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate"):
        yaml.load("probe:\n  httpGet: {port: a}\n  httpGet: {port: b}\n", Loader=_StrictLoader)


def test_default_values(chart: Any) -> None:
    manifests = render(chart)
    assert validate_all(manifests)
    assert kinds(manifests) == ["ConfigMap", "Deployment", "Secret", "Service", "ServiceAccount"]
    deployment = one(manifests, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["revisionHistoryLimit"] == 10
    config = json.loads(one(manifests, "ConfigMap")["data"]["config.json"])
    assert config["engine"] == {"type": "memory"}
    assert config["health"] == {"enabled": True}
    # As the official chart: the internal port is on, metrics are served there.
    assert config["http_server"] == {"port": 8000, "internal_port": 9000}
    assert config["prometheus"] == {"enabled": True}
    assert "grpc_api" not in config and "uni_grpc" not in config
    container = server_container(manifests)
    assert container["command"] == ["centrifugo"]
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [
        ("external", 8000),
        ("internal", 9000),
    ]
    service = one(manifests, "Service")
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        ("external", 8000, "external"),
        ("internal", 9000, "internal"),
    ]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {
            "path": "/health",
            "port": "internal",
            "scheme": "HTTP",
        }
    assert "startupProbe" not in container
    # Endpoints are removed before SIGTERM starts the drain.
    assert container["lifecycle"]["preStop"] == {"exec": {"command": ["sleep", "5"]}}
    # The secrets nobody gave are generated, never empty, and loaded with envFrom.
    data = secret_data(manifests)
    assert set(data) == {
        "CENTRIFUGO_CLIENT_TOKEN_HMAC_SECRET_KEY",
        "CENTRIFUGO_HTTP_API_KEY",
        "CENTRIFUGO_ADMIN_PASSWORD",
        "CENTRIFUGO_ADMIN_SECRET",
    }
    assert all(len(v) >= 32 for v in data.values())
    assert container["envFrom"] == [
        {"secretRef": {"name": one(manifests, "Secret")["metadata"]["name"]}}
    ]


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
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]

    pdb = one(manifests, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 2 and "maxUnavailable" not in pdb["spec"]
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels)

    ingress = one(manifests, "Ingress")
    annotations = ingress["metadata"]["annotations"]
    for key in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[f"nginx.ingress.kubernetes.io/{key}"]) >= 3600
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    # Clients only: the API, metrics and admin stay on the internal port.
    assert backend == {"name": service["metadata"]["name"], "port": {"name": "external"}}
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"hosts": ["rt.example.com"], "secretName": "rt-tls"}]

    # Metrics are scraped from the internal port, where Centrifugo serves them.
    monitor = one(manifests, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["metadata"]["namespace"] == "realtime"
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["port"] == "internal"
    assert endpoint["scheme"] == "http"
    assert "internal" in {p["name"] for p in service["spec"]["ports"]}

    # The user's engine is the engine (chart 0.1.0 replaced it with the memory engine).
    config = json.loads(one(manifests, "ConfigMap")["data"]["config.json"])
    assert config["engine"] == {"type": "redis", "redis": {"address": ["redis://redis.data:6379"]}}
    assert config["prometheus"] == {"enabled": True}
    assert config["http_server"] == {"port": 8000, "internal_port": 9000}
    assert config["client"]["allowed_origins"] == ["https://app.example.com"]

    container = server_container(manifests)
    assert env_map(container)["WEB_CONCURRENCY"]["value"] == "2"
    data = secret_data(manifests)
    assert data["CENTRIFUGO_HTTP_API_KEY"] == "api-key-from-values"
    assert data["CENTRIFUGO_ENGINE_REDIS_PASSWORD"] == "redis-pass"
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
    assert redis_container["image"] == "redis:7-alpine"
    assert "--requirepass" in redis_container["args"]
    secret = one(manifests, "Secret")
    assert redis_container["env"] == [
        {
            "name": "REDIS_PASSWORD",
            "valueFrom": {
                "secretKeyRef": {
                    "name": secret["metadata"]["name"],
                    "key": "CENTRIFUGO_ENGINE_REDIS_PASSWORD",
                }
            },
        }
    ]

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
    assert config["engine"] == {"type": "redis", "redis": {"address": [f"redis://{name}:6379"]}}


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

    # Secrets come from the chart's Secret as CENTRIFUGO_* variables (envFrom).
    secret = one(manifests, "Secret")
    assert {"secretRef": {"name": secret["metadata"]["name"]}} in container["envFrom"]
    assert all(key.startswith("CENTRIFUGO_") for key in secret["data"])
    # The pods roll when the Secret's data changes: the checksum is of exactly that data.
    data = secret_data(manifests)
    expected = hashlib.sha256(
        json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    assert pod["metadata"]["annotations"]["checksum/secret"] == expected

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
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert f"{security['runAsUser']}:{security['runAsGroup']}" == dockerfile_user
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}
    assert pod["metadata"]["annotations"]["checksum/config"]

    # The preStop sleep and the drain window fit in the grace period.
    config = json.loads(one(manifests, "ConfigMap")["data"]["config.json"])
    cfg = load_config_text(config)
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    assert pre_stop + cfg.shutdown.timeout < pod["spec"]["terminationGracePeriodSeconds"]


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
        ({"config": {"engine": {"type": "redis"}}}, "config.engine.redis.address"),
        ({"config": {"engine": {"type": "nats"}}}, "memory or redis"),
        (
            {
                "redis": {"enabled": True},
                "podDisruptionBudget": {"enabled": True, "minAvailable": 1, "maxUnavailable": 1},
            },
            "not both",
        ),
        (
            {"ingressInternal": {"enabled": True}, "servers": {"internal": {"port": 0}}},
            "internal port is off",
        ),
        (
            {"serviceInternal": {"useSeparate": True}, "servers": {"internal": {"port": 0}}},
            "internal port is off",
        ),
        # Keys of chart 0.1.0 fail with where they went instead of being ignored.
        ({"engine": {"type": "redis"}}, "config.engine"),
        ({"internalPort": 9000}, "servers.internal.port"),
        ({"containerPort": 8000}, "servers.external.port"),
        ({"extraEnv": []}, "moved to env"),
        ({"strategy": {}}, "deploymentStrategy"),
        ({"secrets": {"existingSecret": "s"}}, "top-level existingSecret"),
        ({"ingress": {"className": "nginx"}}, "ingress.ingressClassName"),
        ({"metrics": {"serviceMonitor": {"labels": {}}}}, "additionalLabels"),
        ({"autoscaling": {"targetCPUUtilizationPercentage": 50}}, "autoscaling.cpu"),
    ],
)
def test_broken_topologies_fail_to_render(chart: Any, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        render(chart, values)


# --------------------------------------------------------------------------------------------
# The rendered pod starts the server


def run_pod(manifests: list[dict[str, Any]], tmp_path: Path, workers: int) -> None:
    """Run the server container of `manifests` as a local process: ConfigMap files where the
    volume is mounted (rebased into tmp_path), env resolved from the chart's Secret (envFrom)
    and values, then the probes, every container port, the ServiceMonitor's scrape and a
    WebSocket + API round trip against the container ports."""
    container = server_container(manifests)
    pod = pod_spec(manifests)
    configmap = one(manifests, "ConfigMap")
    secret = one(manifests, "Secret")
    data = secret_data(manifests)

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
    for source in container.get("envFrom", []):
        # Only the chart's own Secret exists here.
        assert source == {"secretRef": {"name": secret["metadata"]["name"]}}, source
        env.update(data)
    for item in container["env"]:
        assert "value" in item, item
        env[item["name"]] = str(item["value"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}

    workdir = tmp_path / "workdir"
    workdir.mkdir()
    log_path = tmp_path / "pod.log"
    # The container's command `centrifugo`, here as `python -m app` of this checkout.
    assert container["command"] == ["centrifugo"]
    proc = start([sys.executable, "-m", "app", *args], clean_env(env), workdir, log_path)

    def probe_url(probe: dict[str, Any]) -> str:
        get = probe["httpGet"]
        return f"{get.get('scheme', 'HTTP').lower()}://127.0.0.1:{ports[get['port']]}{get['path']}"

    try:
        wait_healthy(proc, probe_url(container["readinessProbe"]), log_path)
        wait_workers(proc.pid, workers)
        for probe in ("livenessProbe", "startupProbe"):
            if probe in container:
                assert http_get(probe_url(container[probe]))[0] == 200, probe
        # Every declared container port has the server listening behind it.
        for port in ports.values():
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass
        monitors = [m for m in manifests if m["kind"] == "ServiceMonitor"]
        for monitor in monitors:
            # What Prometheus would scrape: the endpoint's Service port -> container port.
            for endpoint in monitor["spec"]["endpoints"]:
                (svc_port,) = [
                    p
                    for m in manifests
                    if m["kind"] == "Service"
                    for p in m["spec"]["ports"]
                    if p["name"] == endpoint["port"]
                ]
                url = f"http://127.0.0.1:{ports[svc_port['targetPort']]}{endpoint['path']}"
                status, body = http_get(url)
                assert status == 200 and b"centrifugo_node_num_clients" in body, (url, status)
        api_port = ports.get("internal", ports["external"])
        asyncio.run(
            ws_round_trip(
                f"http://127.0.0.1:{ports['external']}",
                data["CENTRIFUGO_CLIENT_TOKEN_HMAC_SECRET_KEY"],
                data["CENTRIFUGO_HTTP_API_KEY"],
                api_base=f"http://127.0.0.1:{api_port}",
            )
        )
    finally:
        code = stop(proc)
    text = log_path.read_text()
    assert code == 0 and "Traceback" not in text, text


def _local_servers(**extra: int) -> dict[str, Any]:
    servers = {"external": {"port": free_port()}, "internal": {"port": free_port()}}
    for name, port in extra.items():
        servers[name] = {"port": port}
    return servers


def test_default_pod_starts(chart: Any, tmp_path: Path) -> None:
    values = {
        "servers": _local_servers(),
        "config": {
            "http_server": {"address": "127.0.0.1"},
            "channel": {"without_namespace": {"allow_subscribe_for_client": True}},
        },
    }
    run_pod(render(chart, values), tmp_path, workers=1)


def test_single_port_pod_starts(chart: Any, tmp_path: Path) -> None:
    # servers.internal.port 0: API, health and metrics on the external port.
    values = {
        "servers": {"external": {"port": free_port()}, "internal": {"port": 0}},
        "config": {
            "http_server": {"address": "127.0.0.1"},
            "channel": {"without_namespace": {"allow_subscribe_for_client": True}},
        },
    }
    manifests = render(chart, values)
    assert [p["name"] for p in server_container(manifests)["ports"]] == ["external"]
    run_pod(manifests, tmp_path, workers=1)


def test_grpc_and_custom_health_pod_starts(chart: Any, tmp_path: Path) -> None:
    # The gRPC API and uni_grpc ports the chart declares are where the server listens, and the
    # probes follow health.handler_prefix.
    values = {
        "servers": _local_servers(grpc=free_port(), uniGrpc=free_port()),
        "startupProbe": {"failureThreshold": 30, "periodSeconds": 2},
        "config": {
            "http_server": {"address": "127.0.0.1"},
            "grpc_api": {"enabled": True, "address": "127.0.0.1"},
            "uni_grpc": {"enabled": True, "address": "127.0.0.1"},
            "health": {"handler_prefix": "/custom/health"},
            "channel": {"without_namespace": {"allow_subscribe_for_client": True}},
        },
    }
    manifests = render(chart, values)
    container = server_container(manifests)
    assert {p["name"] for p in container["ports"]} == {"external", "internal", "grpc", "uni-grpc"}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] == "/custom/health"
    run_pod(manifests, tmp_path, workers=1)


def test_production_pod_starts(chart: Any, tmp_path: Path, e2e_redis_url: str) -> None:
    values = json.loads(json.dumps(PRODUCTION))
    values["servers"] = _local_servers()
    values["config"]["engine"]["redis"] = {
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
    """Each value is read by a template: as .Values.<path> or, for values handed to a helper
    (`$sm := .Values.metrics.serviceMonitor`, `"service" .Values.serviceGrpc`), as a field
    of that section."""
    templates = "\n".join(p.read_text() for p in (CHART / "templates").iterdir())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    unused = []
    for path in _value_paths(values):
        prefixes = [".".join(path[:n]) for n in range(1, len(path) + 1)]
        direct = any(re.search(rf"\.Values\.{re.escape(p)}(?![\w.])", templates) for p in prefixes)
        # A section passed whole to a helper: its last key read as a field there.
        section = ".".join(path[:-1])
        handed = (
            bool(section)
            and re.search(rf"\.Values\.{re.escape(section)}(?![\w.])", templates)
            and re.search(rf"\.{re.escape(path[-1])}(?![\w])", templates)
        )
        if not (direct or handed):
            unused.append(".".join(path))
    assert unused == []
