"""Rendering the Helm chart in helm/centrifugo-py with real Helm (PyPI `helm-python-sdk`, Helm's
Go SDK as a shared library) and validating what it renders, shared by the Helm tests.

- `render` parses every manifest with a YAML loader that refuses duplicate keys (Kubernetes and
  kubectl would silently keep one of two `httpGet:`);
- `validate_all` checks each manifest against the Kubernetes OpenAPI schemas of the oldest and
  newest supported minor (PyPI `kubernetes-validate`, strict: unknown fields fail), and the
  ServiceMonitor against the part of prometheus-operator's CRD the chart uses.
"""

from __future__ import annotations

import base64
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import yaml

from . import REPO_ROOT

CHART = REPO_ROOT / "helm" / "centrifugo-py"
RELEASE = "rt"
NAMESPACE = "realtime"
# Oldest and newest Kubernetes minor versions the manifests must be valid for.
KUBE_VERSIONS = ("1.29", kubernetes_validate.latest_version())


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


def render_text(chart: Any, values: dict[str, Any] | None = None) -> dict[str, str]:
    """template path -> rendered text, NOTES.txt included."""
    out: dict[str, str] = chart.render(
        values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True
    )
    return out


def render(chart: Any, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """All manifests the chart renders for `values`, parsed."""
    manifests = []
    for template, text in sorted(render_text(chart, values).items()):
        if template.endswith("NOTES.txt"):
            continue
        for doc in yaml.load_all(text, Loader=_StrictLoader):
            if doc:
                assert {"apiVersion", "kind", "metadata"} <= set(doc), (template, doc)
                manifests.append(doc)
    return manifests


def by_kind(manifests: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m["kind"], m["metadata"]["name"]): m for m in manifests}


def named(manifests: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return by_kind(manifests)[(kind, name)]


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


def pod_spec(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(manifests, "Deployment")["spec"]["template"]["spec"]
    return spec


def server_container(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = [c for c in pod_spec(manifests)["containers"] if c["name"] == "centrifugo"]
    return container


def env_map(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def secret_data(manifests: list[dict[str, Any]]) -> dict[str, str]:
    data = one(manifests, "Secret")["data"]
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


_DURATION = {"type": "string", "pattern": r"^(\d+(ms|s|m|h))+$"}
_RELABEL_CONFIGS = {
    # prometheus-operator's RelabelConfig (monitoring.coreos.com/v1).
    "type": "array",
    "items": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "sourceLabels": {"type": "array", "items": {"type": "string"}},
            "separator": {"type": "string"},
            "targetLabel": {"type": "string"},
            "regex": {"type": "string"},
            "modulus": {"type": "integer", "minimum": 0},
            "replacement": {"type": "string"},
            "action": {
                "enum": [
                    "replace",
                    "Replace",
                    "keep",
                    "Keep",
                    "drop",
                    "Drop",
                    "hashmod",
                    "HashMod",
                    "labelmap",
                    "LabelMap",
                    "labeldrop",
                    "LabelDrop",
                    "labelkeep",
                    "LabelKeep",
                    "lowercase",
                    "Lowercase",
                    "uppercase",
                    "Uppercase",
                    "keepequal",
                    "KeepEqual",
                    "dropequal",
                    "DropEqual",
                ]
            },
        },
    },
}
SERVICE_MONITOR_SCHEMA = {
    # The part of prometheus-operator's ServiceMonitor CRD (monitoring.coreos.com/v1) the chart
    # uses; unknown fields in these objects fail, as the CRD's structural schema would prune them.
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name", "namespace"],
            "properties": {
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
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
                            "scheme": {"enum": ["http", "https"]},
                            "interval": _DURATION,
                            "scrapeTimeout": _DURATION,
                            "honorLabels": {"type": "boolean"},
                            "relabelings": _RELABEL_CONFIGS,
                            "metricRelabelings": _RELABEL_CONFIGS,
                        },
                    },
                },
            },
        },
    },
}


def validate_all(manifests: list[dict[str, Any]]) -> list[str]:
    """Validate every manifest (see the module docstring); the kinds checked."""
    checked = []
    for m in manifests:
        if m["apiVersion"].startswith("monitoring.coreos.com/"):
            jsonschema.validate(m, SERVICE_MONITOR_SCHEMA)
        else:
            for version in KUBE_VERSIONS:
                kubernetes_validate.validate(m, version, strict=True)
        checked.append(m["kind"])
    return checked
