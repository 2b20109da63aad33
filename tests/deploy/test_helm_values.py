"""The Helm chart's values one feature at a time (issue 18): each combination rendered by real
Helm, validated in strict mode against two Kubernetes versions (tests/deploy/helm_support.py),
and its rendered fields asserted. The bugs of chart 0.1.0 have a test each: the user's
config.engine overwritten, two `httpGet:` keys on a probe override, probes ignoring
health.handler_prefix, secrets regenerated on every render with an existingSecret, and the gRPC
ports never exposed. Value names follow Centrifugo's official chart (charts/centrifugo).
"""

from __future__ import annotations

import json
from typing import Any

import helm_python as helm
import pytest

from .helm_support import (
    CHART,
    NAMESPACE,
    env_map,
    kinds,
    named,
    one,
    pod_spec,
    render,
    render_text,
    secret_data,
    selects,
    server_container,
    validate_all,
)

FULLNAME = "rt-centrifugo-py"
REDIS: dict[str, Any] = {
    "type": "redis",
    "redis": {"address": ["redis://redis.data:6379"], "prefix": "rt"},
}


@pytest.fixture(scope="module")
def chart() -> Any:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def valid(chart: Any, values: dict[str, Any]) -> list[dict[str, Any]]:
    manifests = render(chart, values)
    assert validate_all(manifests)
    return manifests


def config_of(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(one(manifests, "ConfigMap")["data"]["config.json"])
    return config


# --------------------------------------------------------------------------------------------
# config.engine


@pytest.mark.parametrize("replicas", [1, 3])
def test_user_engine_is_kept(chart: Any, replicas: int) -> None:
    # 0.1.0 replaced it with the memory engine at 1 pod and refused to render at 3.
    extra = {"pool_size": 64, "force_resp2": True}
    engine = {**REDIS, "redis": {**REDIS["redis"], **extra}}
    manifests = valid(chart, {"replicaCount": replicas, "config": {"engine": engine}})
    assert config_of(manifests)["engine"] == engine
    assert one(manifests, "Deployment")["spec"]["replicas"] == replicas


def test_bundled_redis_keeps_the_users_engine_keys(chart: Any) -> None:
    values = {
        "redis": {"enabled": True},
        "config": {"engine": {"redis": {"prefix": "tenant-a", "address": ["redis://x:1"]}}},
    }
    manifests = valid(chart, values)
    assert config_of(manifests)["engine"] == {
        "type": "redis",
        "redis": {"prefix": "tenant-a", "address": [f"redis://{FULLNAME}-redis:6379"]},
    }


def test_memory_engine_with_redis_broker_and_presence_scales(chart: Any) -> None:
    redis = {"enabled": True, "type": "redis", "redis": {"address": ["redis://r:6379"]}}
    values = {
        "replicaCount": 3,
        "webConcurrency": 2,
        "config": {"broker": redis, "presence_manager": redis},
    }
    manifests = valid(chart, values)
    config = config_of(manifests)
    assert config["engine"] == {"type": "memory"}
    assert config["broker"] == redis and config["presence_manager"] == redis


@pytest.mark.parametrize(
    "source",
    [
        {"existingSecret": "rt-env"},
        {"envFrom": [{"secretRef": {"name": "rt-env"}}]},
        {"env": {"CENTRIFUGO_ENGINE_REDIS_ADDRESS": "redis://r:6379"}},
        {
            "envSecret": [
                {
                    "name": "CENTRIFUGO_ENGINE_REDIS_ADDRESS",
                    "secretKeyRef": {"name": "redis", "key": "url"},
                }
            ]
        },
    ],
    ids=["existingSecret", "envFrom", "env", "envSecret"],
)
def test_redis_address_from_the_environment(chart: Any, source: dict[str, Any]) -> None:
    values = {"replicaCount": 2, "config": {"engine": {"type": "redis"}}, **source}
    manifests = valid(chart, values)
    assert config_of(manifests)["engine"] == {"type": "redis"}


# --------------------------------------------------------------------------------------------
# probes


def test_probe_httpget_override_is_merged_not_duplicated(chart: Any) -> None:
    # render() refuses duplicate keys: 0.1.0 rendered the chart's httpGet and the user's.
    values = {"readinessProbe": {"httpGet": {"path": "/ready", "port": "external"}}}
    container = server_container(valid(chart, values))
    assert container["readinessProbe"] == {
        "httpGet": {"path": "/ready", "port": "external", "scheme": "HTTP"},
        "initialDelaySeconds": 2,
        "periodSeconds": 5,
        "timeoutSeconds": 3,
        "failureThreshold": 3,
    }
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"


def test_full_probe_override_with_another_handler(chart: Any) -> None:
    tcp = {"tcpSocket": {"port": "external"}, "periodSeconds": 7}
    values = {"livenessProbe": tcp, "startupProbe": {"exec": {"command": ["true"]}}}
    container = server_container(valid(chart, values))
    assert container["livenessProbe"] == {
        **tcp,
        "initialDelaySeconds": 10,
        "timeoutSeconds": 5,
        "failureThreshold": 6,
    }
    assert container["startupProbe"] == {"exec": {"command": ["true"]}}


@pytest.mark.parametrize("internal", [9000, 0])
def test_probes_follow_health_handler_prefix(chart: Any, internal: int) -> None:
    values = {
        "servers": {"internal": {"port": internal, "scheme": "HTTPS"}},
        "startupProbe": {"failureThreshold": 30},
        "config": {"health": {"handler_prefix": "/_/health"}},
    }
    container = server_container(valid(chart, values))
    expected = (
        {"path": "/_/health", "port": "internal", "scheme": "HTTPS"}
        if internal
        else {"path": "/_/health", "port": "external"}
    )
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == expected, probe
    assert container["startupProbe"]["failureThreshold"] == 30


def test_lifecycle_can_be_replaced_or_disabled(chart: Any) -> None:
    hook = {"preStop": {"exec": {"command": ["sleep", "15"]}}}
    manifests = valid(chart, {"lifecycle": hook, "terminationGracePeriodSeconds": 45})
    assert server_container(manifests)["lifecycle"] == hook
    assert pod_spec(manifests)["terminationGracePeriodSeconds"] == 45
    assert "lifecycle" not in server_container(valid(chart, {"lifecycle": None}))


# --------------------------------------------------------------------------------------------
# secrets


def test_existing_secret_renders_nothing_random(chart: Any) -> None:
    values = {"existingSecret": "rt-env"}
    first, second = render_text(chart, values), render_text(chart, values)
    # Argo CD / `helm template` renders: identical every time, so nothing rotates.
    assert first == second
    manifests = valid(chart, values)
    assert "Secret" not in kinds(manifests)
    container = server_container(manifests)
    assert container["envFrom"] == [{"secretRef": {"name": "rt-env"}}]
    assert (
        "checksum/secret"
        not in one(manifests, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    )
    assert "get secret" not in first["centrifugo-py/templates/NOTES.txt"]


def test_existing_secret_with_given_values(chart: Any) -> None:
    values = {
        "existingSecret": "rt-env",
        "secrets": {"apiKey": "given-api-key", "redisPassword": "pw"},
        "config": {"engine": REDIS},
        "envFrom": [{"configMapRef": {"name": "extra"}}],
    }
    assert render_text(chart, values) == render_text(chart, values)
    manifests = valid(chart, values)
    # Only what was given, nothing generated.
    assert secret_data(manifests) == {
        "CENTRIFUGO_HTTP_API_KEY": "given-api-key",
        "CENTRIFUGO_ENGINE_REDIS_PASSWORD": "pw",
    }
    # Later envFrom sources win: the chart's Secret, then existingSecret, then envFrom.
    assert server_container(manifests)["envFrom"] == [
        {"secretRef": {"name": FULLNAME}},
        {"secretRef": {"name": "rt-env"}},
        {"configMapRef": {"name": "extra"}},
    ]


def test_generated_secrets_are_consistent_within_a_render(chart: Any) -> None:
    # Without a cluster `lookup` finds no Secret, so each render generates new keys (the
    # limitation values.yaml documents); within one render the Secret and the checksum agree.
    first, second = secret_data(render(chart)), secret_data(render(chart))
    assert first.keys() == second.keys()
    assert all(first[k] != second[k] for k in first)
    given = {
        "tokenHmacSecretKey": "h",
        "apiKey": "a",
        "adminPassword": "p",
        "adminSecret": "s",
    }
    assert render_text(chart, {"secrets": given}) == render_text(chart, {"secrets": given})
    values = (CHART / "values.yaml").read_text()
    assert "`lookup`" in values and "helm template" in values and "Argo CD" in values


# --------------------------------------------------------------------------------------------
# ports and Services


GRPC_ON = {"config": {"grpc_api": {"enabled": True}, "uni_grpc": {"enabled": True}}}


def test_grpc_ports_on_the_main_service(chart: Any) -> None:
    manifests = valid(chart, GRPC_ON)
    config = config_of(manifests)
    assert config["grpc_api"] == {"enabled": True, "port": 10000}
    assert config["uni_grpc"] == {"enabled": True, "port": 11000}
    container = server_container(manifests)
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [
        ("external", 8000),
        ("internal", 9000),
        ("grpc", 10000),
        ("uni-grpc", 11000),
    ]
    (service,) = [m for m in manifests if m["kind"] == "Service"]
    assert [
        (p["name"], p["port"], p["targetPort"], p.get("appProtocol"))
        for p in service["spec"]["ports"]
    ] == [
        ("external", 8000, "external", "http"),
        ("internal", 9000, "internal", "http"),
        ("grpc", 10000, "grpc", "grpc"),
        ("uni-grpc", 11000, "uni-grpc", "grpc"),
    ]


def test_separate_services(chart: Any) -> None:
    separate = {"useSeparate": True, "type": "NodePort", "nodePort": 30001, "labels": {"tier": "x"}}
    values = {
        **GRPC_ON,
        "servers": {"grpc": {"port": 10500}},
        "service": {"type": "LoadBalancer", "annotations": {"lb": "public"}, "appProtocol": ""},
        "serviceInternal": {"useSeparate": True, "port": 9900, "clusterIP": "None"},
        "serviceGrpc": {**separate, "port": 10001},
        "serviceUniGrpc": {**separate, "nodePort": 30002, "annotations": {"a": "b"}},
        "metrics": {"serviceMonitor": {"enabled": True}},
    }
    manifests = valid(chart, values)
    pod_labels = one(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    main = named(manifests, "Service", FULLNAME)
    assert main["spec"]["type"] == "LoadBalancer"
    assert main["metadata"]["annotations"] == {"lb": "public"}
    # The public Service carries the client port only.
    assert main["spec"]["ports"] == [
        {"name": "external", "port": 8000, "targetPort": "external", "protocol": "TCP"}
    ]
    internal = named(manifests, "Service", f"{FULLNAME}-internal")
    assert internal["spec"]["type"] == "ClusterIP" and internal["spec"]["clusterIP"] == "None"
    assert [(p["name"], p["port"]) for p in internal["spec"]["ports"]] == [("internal", 9900)]
    grpc = named(manifests, "Service", f"{FULLNAME}-grpc-api")
    assert grpc["spec"]["type"] == "NodePort" and grpc["metadata"]["labels"]["tier"] == "x"
    assert grpc["spec"]["ports"] == [
        {
            "name": "grpc",
            "port": 10001,
            "targetPort": "grpc",
            "protocol": "TCP",
            "appProtocol": "grpc",
            "nodePort": 30001,
        }
    ]
    uni = named(manifests, "Service", f"{FULLNAME}-uni-grpc")
    assert uni["spec"]["ports"][0]["nodePort"] == 30002 and uni["metadata"]["annotations"] == {
        "a": "b"
    }
    assert {p["containerPort"] for p in server_container(manifests)["ports"]} >= {10500}
    for service in (main, internal, grpc, uni):
        assert selects(service["spec"]["selector"], pod_labels)
    # The ServiceMonitor's port exists on the internal Service only.
    monitor = one(manifests, "ServiceMonitor")
    assert selects(monitor["spec"]["selector"]["matchLabels"], internal["metadata"]["labels"])
    assert monitor["spec"]["endpoints"][0]["port"] == "internal"


def test_grpc_off_exposes_no_grpc_port(chart: Any) -> None:
    values = {"serviceGrpc": {"useSeparate": True}, "serviceUniGrpc": {"useSeparate": True}}
    manifests = valid(chart, values)
    assert [m["metadata"]["name"] for m in manifests if m["kind"] == "Service"] == [FULLNAME]
    assert {p["name"] for p in server_container(manifests)["ports"]} == {"external", "internal"}


@pytest.mark.parametrize("separate", [False, True])
def test_ingress_internal(chart: Any, separate: bool) -> None:
    values = {
        "serviceInternal": {"useSeparate": separate},
        "ingress": {
            "enabled": True,
            "ingressClassName": "nginx",
            "labels": {"public": "yes"},
            "hosts": [
                {"host": "rt.example.com", "paths": ["/", {"path": "/ws", "pathType": "Exact"}]}
            ],
        },
        "ingressInternal": {
            "enabled": True,
            "ingressClassName": "internal",
            "annotations": {"nginx.ingress.kubernetes.io/whitelist-source-range": "10.0.0.0/8"},
            "hosts": [{"host": "rt-api.internal", "paths": ["/api"]}],
            "tls": [{"secretName": "api-tls", "hosts": ["rt-api.internal"]}],
        },
    }
    manifests = valid(chart, values)
    public = named(manifests, "Ingress", FULLNAME)
    assert public["metadata"]["labels"]["public"] == "yes"
    paths = public["spec"]["rules"][0]["http"]["paths"]
    assert [(p["path"], p["pathType"]) for p in paths] == [("/", "Prefix"), ("/ws", "Exact")]
    assert {p["backend"]["service"]["port"]["name"] for p in paths} == {"external"}
    internal = named(manifests, "Ingress", f"{FULLNAME}-internal")
    assert internal["spec"]["ingressClassName"] == "internal"
    assert internal["spec"]["tls"] == [{"hosts": ["rt-api.internal"], "secretName": "api-tls"}]
    (path,) = internal["spec"]["rules"][0]["http"]["paths"]
    target = f"{FULLNAME}-internal" if separate else FULLNAME
    assert path == {
        "path": "/api",
        "pathType": "Prefix",
        "backend": {"service": {"name": target, "port": {"name": "internal"}}},
    }
    service = named(manifests, "Service", target)
    assert "internal" in {p["name"] for p in service["spec"]["ports"]}


# --------------------------------------------------------------------------------------------
# environment, pod extras, images


def test_env_forms(chart: Any) -> None:
    env_secret = [
        {"name": "CENTRIFUGO_GRPC_API_KEY", "secretKeyRef": {"name": "grpc", "key": "key"}}
    ]
    manifests = valid(
        chart, {"env": {"CENTRIFUGO_LOG_LEVEL": "debug", "N": 3}, "envSecret": env_secret}
    )
    env = env_map(server_container(manifests))
    assert env["CENTRIFUGO_LOG_LEVEL"] == {"name": "CENTRIFUGO_LOG_LEVEL", "value": "debug"}
    assert env["N"]["value"] == "3"
    assert env["CENTRIFUGO_GRPC_API_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "grpc", "key": "key"}
    }
    field = {
        "name": "CENTRIFUGO_NODE_NAME",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
    }
    env = env_map(server_container(valid(chart, {"env": [field]})))
    assert env["CENTRIFUGO_NODE_NAME"] == field and env["WEB_CONCURRENCY"]["value"] == "1"


def test_pod_extras(chart: Any) -> None:
    values = {
        "revisionHistoryLimit": 3,
        "annotations": {"team": "rt"},
        "volumes": [{"name": "certs", "secret": {"secretName": "rt-tls"}}],
        "volumeMounts": [{"name": "certs", "mountPath": "/certs", "readOnly": True}],
        "initContainers": [
            {"name": "wait-redis", "image": "busybox:1.36", "command": ["sh", "-c", "true"]}
        ],
        "extraContainers": [{"name": "proxy", "image": "envoyproxy/envoy:v1.30.0"}],
        "deploymentStrategy": {"type": "Recreate"},
    }
    manifests = valid(chart, values)
    deployment = one(manifests, "Deployment")
    assert deployment["spec"]["revisionHistoryLimit"] == 3
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert deployment["metadata"]["annotations"] == {"team": "rt"}
    pod = pod_spec(manifests)
    assert [v["name"] for v in pod["volumes"]] == ["config", "tmp", "certs"]
    assert [c["name"] for c in pod["initContainers"]] == ["wait-redis"]
    assert [c["name"] for c in pod["containers"]] == ["centrifugo", "proxy"]
    mounts = server_container(manifests)["volumeMounts"]
    assert mounts[-1] == {"name": "certs", "mountPath": "/certs", "readOnly": True}


def test_image_registries_and_pull_secrets(chart: Any) -> None:
    values: dict[str, Any] = {
        "image": {"registry": "ghcr.io/acme", "tag": "1.2.3"},
        "imagePullSecrets": ["regcred", {"name": "other"}],
        "redis": {"enabled": True},
        "replicaCount": 2,
    }
    manifests = valid(chart, values)
    assert server_container(manifests)["image"] == "ghcr.io/acme/centrifugo-py:1.2.3"
    assert pod_spec(manifests)["imagePullSecrets"] == [{"name": "regcred"}, {"name": "other"}]
    redis = one(manifests, "Deployment", component="redis")["spec"]["template"]["spec"]
    assert redis["containers"][0]["image"] == "redis:7-alpine"

    values["global"] = {"imageRegistry": "mirror.local:5000", "imagePullSecrets": ["mirror"]}
    manifests = valid(chart, values)
    assert server_container(manifests)["image"] == "mirror.local:5000/centrifugo-py:1.2.3"
    redis = one(manifests, "Deployment", component="redis")["spec"]["template"]["spec"]
    assert redis["containers"][0]["image"] == "mirror.local:5000/redis:7-alpine"
    for spec in (pod_spec(manifests), redis):
        assert spec["imagePullSecrets"] == [{"name": "mirror"}]


# --------------------------------------------------------------------------------------------
# ServiceMonitor and HPA


def test_service_monitor_options(chart: Any) -> None:
    relabel = [{"sourceLabels": ["__meta_kubernetes_pod_name"], "targetLabel": "pod"}]
    drop = [{"sourceLabels": ["__name__"], "regex": "go_.*", "action": "drop"}]
    official = [{"sourceLabels": ["__name__"], "regex": "python_.*", "action": "drop"}]
    values = {
        "servers": {"internal": {"scheme": "HTTPS"}},
        "config": {"prometheus": {"handler_prefix": "/_/metrics"}},
        "metrics": {
            "serviceMonitor": {
                "enabled": True,
                "namespace": "monitoring",
                "interval": "15s",
                "scrapeTimeout": "",
                "honorLabels": True,
                "relabelings": relabel,
                "metricRelabelings": drop,
                # The official chart's name for metric relabelings.
                "relabellings": official,
                "additionalLabels": {"release": "kps"},
                "annotations": {"owner": "sre"},
            }
        },
    }
    manifests = valid(chart, values)
    monitor = one(manifests, "ServiceMonitor")
    assert monitor["metadata"]["namespace"] == "monitoring"
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["metadata"]["annotations"] == {"owner": "sre"}
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert monitor["spec"]["endpoints"] == [
        {
            "port": "internal",
            "path": "/_/metrics",
            "scheme": "https",
            "interval": "15s",
            "honorLabels": True,
            "relabelings": relabel,
            "metricRelabelings": drop + official,
        }
    ]
    assert config_of(manifests)["prometheus"] == {"enabled": True, "handler_prefix": "/_/metrics"}


def test_metrics_off(chart: Any) -> None:
    assert "prometheus" not in config_of(valid(chart, {"metrics": {"enabled": False}}))


def test_hpa_custom_metrics(chart: Any) -> None:
    custom = [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": "centrifugo_node_num_clients"},
                "target": {"type": "AverageValue", "averageValue": "5000"},
            },
        }
    ]
    values = {
        "config": {"engine": REDIS},
        "autoscaling": {
            "enabled": True,
            "minReplicas": 2,
            "maxReplicas": 20,
            "cpu": {"enabled": False},
            "memory": {"enabled": True, "targetMemoryUtilizationPercentage": 75},
            "customMetrics": custom,
            "behavior": None,
        },
    }
    manifests = valid(chart, values)
    hpa = one(manifests, "HorizontalPodAutoscaler")
    assert hpa["spec"]["metrics"] == [
        *custom,
        {
            "type": "Resource",
            "resource": {
                "name": "memory",
                "target": {"type": "Utilization", "averageUtilization": 75},
            },
        },
    ]
    assert "behavior" not in hpa["spec"]
    assert "replicas" not in one(manifests, "Deployment")["spec"]


def test_everything_at_once_lints(chart: Any) -> None:
    values = {
        **GRPC_ON,
        "config": {**GRPC_ON["config"], "engine": REDIS},
        "existingSecret": "rt-env",
        "serviceInternal": {"useSeparate": True},
        "serviceGrpc": {"useSeparate": True},
        "serviceUniGrpc": {"useSeparate": True},
        "ingress": {"enabled": True},
        "ingressInternal": {"enabled": True, "hosts": [{"host": "i.example.com", "paths": ["/"]}]},
        "autoscaling": {"enabled": True},
        "podDisruptionBudget": {"enabled": True},
        "metrics": {"serviceMonitor": {"enabled": True}},
        "startupProbe": {"periodSeconds": 2},
    }
    manifests = valid(chart, values)
    assert kinds(manifests).count("Service") == 4 and kinds(manifests).count("Ingress") == 2
    report = helm.lint(CHART, values, strict=True, kube_version="v1.29.0")
    assert report["errors"] == [] and [m for m in report["messages"] if m["severity"] >= 2] == []
