"""Which Centrifugo v6 configuration keys this server does not honour, and the report of them.

Every key of Centrifugo's schema is a key of ours (app/config/schema.py;
tests/data/centrifugo_v6_keys.txt is Centrifugo's own list, checked by
tests/unit/test_config_support.py). A key either works as
Centrifugo documents it or is listed here. A listed key set to anything but its default is
reported at start: one warning naming it, or, where the key is a security promise (TLS the
server would not serve, say), a refusal to start. `centrifugo checkconfig --strict` fails on
both. README's table of unsupported keys is `markdown_table()`; a test keeps them equal.

Patterns are dotted key paths; `[]` stands for any item of a list (`channel.namespaces[]`),
`*` for one path segment and `**` for any number of them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, fields, is_dataclass
from functools import cache
from typing import Any

__all__ = [
    "Finding",
    "UNSUPPORTED",
    "REFUSED",
    "findings",
    "markdown_table",
    "is_unsupported",
    "finding_for",
]


def _ns(*keys: str) -> dict[str, str]:
    """The same namespace option in `channel.without_namespace` and each namespace."""
    return {
        f"channel.{where}.{key}": ""
        for key in keys
        for where in ("without_namespace", "namespaces[]")
    }


_AUTOCERT = (
    "automatic ACME certificates need a public ACME server; use http_server.tls with your "
    "certificate"
)
_GO_BUFFERS = (
    "Go's WebSocket buffer tuning has no equivalent here (asyncio reads into its own buffer)"
)

# key pattern -> why it is not honoured (shown in the warning and in README's table)
UNSUPPORTED: dict[str, str] = {
    "http_server.tls_autocert.enabled": _AUTOCERT,
    "http_server.tls_autocert.**": _AUTOCERT,
    "http_server.h2c_external": "HTTP/2 is not served (HTTP/1.1 and WebSocket only)",
    "**.redis.replica_client.enabled": "reading from Redis replicas is not implemented",
    "**.redis.history_use_lists": "history is kept in Redis streams only",
    "**.redis.presence_hash_field_ttl": "presence uses the classic hash + sorted set layout",
    "**.redis.presence_user_mapping": "presence uses the classic hash + sorted set layout",
    "broker.redisnats": "the redisnats broker is not implemented",
    "map_broker.redis.presence_*": "presence keys belong to engine.redis; the map broker has none",
    **{
        f"consumers[].{kind}": "Google Pub/Sub, AWS SQS and Azure Service Bus consumers are not "
        "implemented"
        for kind in ("google_pub_sub", "aws_sqs", "azure_service_bus")
    },
    **{
        f"consumers[].redis_stream.{key}": "a redis_stream consumer reads one standalone Redis "
        "(address)"
        for key in ("cluster_address", "sentinel_*", "sentinel_tls.**")
    },
    "consumers[].kafka.dial_timeout": "aiokafka has no per-broker dial timeout (it connects "
    "within its 40 s request timeout)",
    "consumers[].kafka.assume_role_arn": "AWS MSK IAM authentication is not implemented "
    "(aiokafka has no aws-msk-iam SASL mechanism)",
    "channel.proxy.subscribe_stream.**": "subscription streams (subscribe_stream proxy) are "
    "not implemented",
    **{
        k: "subscription streams (subscribe_stream proxy) are not implemented"
        for k in _ns(
            "subscribe_stream_proxy_enabled",
            "subscribe_stream_proxy_name",
            "subscribe_stream_proxy_bidirectional",
        )
    },
    "*websocket.read_buffer_size": _GO_BUFFERS,
    "*websocket.write_buffer_size": _GO_BUFFERS,
    "*websocket.use_write_buffer_pool": _GO_BUFFERS,
    "client.channel_position_max_time_lag": "positioning checks the stream position only, "
    "not the time lag",
    "**.grpc.tls.insecure_skip_verify": "gRPC proxies always verify the server certificate "
    "(grpcio has no switch to skip it)",
    "swagger.**": "the Swagger UI is not served",
    "debug.**": "Go's pprof endpoints do not exist in this server",
    "init.**": "the connection init endpoint is not implemented",
    "prometheus.native_histograms": "prometheus_client has no native histograms",
    "opentelemetry.**": "OpenTelemetry tracing is not implemented",
    "graphite.**": "Graphite export is not implemented",
    "enable_unreleased_features": "this server has no unreleased features to enable",
}

# Keys whose setting promises security this server would not give: start-up fails on them.
REFUSED: frozenset[str] = frozenset({"http_server.tls_autocert.enabled"})


@dataclass(frozen=True, slots=True)
class Finding:
    key: str  # as the operator wrote it: channel.namespaces[chat].allowed_delta_types
    reason: str
    refused: bool

    def message(self) -> str:
        what = "refused" if self.refused else "ignored"
        return f"{self.key} is not supported by centrifugo-py and is {what}: {self.reason}"


@cache
def _regex(pattern: str) -> re.Pattern[str]:
    out = []
    for part in re.split(r"(\*\*|\*)", pattern):
        if part == "**":
            out.append(r".*")
        elif part == "*":
            out.append(r"[^.]*")
        else:
            out.append(re.escape(part))
    return re.compile("".join(out) + r"\Z")


def _match(path: str) -> str | None:
    """The pattern covering the normalized `path` (list items as `[]`), or None."""
    for pattern in UNSUPPORTED:
        if _regex(pattern).match(path):
            return pattern
    return None


def is_unsupported(path: str) -> bool:
    return _match(path) is not None


def finding_for(path: str) -> Finding | None:
    """What setting the normalized `path` would report (its reason, refused or not), or None
    for a key this server honours; `configdoc` shows it in the key's entry."""
    pattern = _match(path)
    return None if pattern is None else Finding(path, UNSUPPORTED[pattern], pattern in REFUSED)


def _keys(section: Any) -> dict[str, Any]:
    """The config keys of a section instance and their values, from its dataclass fields
    (whether a section has an `enabled` switch or a `name` is read from its fields, not probed)."""
    return {
        f.name: getattr(section, f.name)
        for f in fields(section)
        if f.init and not f.metadata.get("internal")
    }


def _walk(value: Any, default: Any, shown: str, norm: str) -> Iterator[tuple[str, str]]:
    """(shown path, normalized path) of every leaf of `value` that differs from `default`.

    The keys of a section switched off by its own `enabled: false` are skipped: they do
    nothing in Centrifugo either (genconfig writes an admin password with the admin off)."""
    if is_dataclass(value) and not isinstance(value, type):
        keys, defaults = _keys(value), _keys(default)
        switched_off = keys.get("enabled") is False
        for name, sub in keys.items():
            if switched_off and name != "enabled":
                continue
            sub_shown = f"{shown}.{name}" if shown else name
            sub_norm = f"{norm}.{name}" if norm else name
            yield from _walk(sub, defaults[name], sub_shown, sub_norm)
        return
    if isinstance(value, tuple) and value and all(is_dataclass(v) for v in value):
        for i, item in enumerate(value):
            label = _keys(item).get("name") or str(i)
            yield from _walk(item, type(item)(), f"{shown}[{label}]", f"{norm}[]")
        return
    if value != default:
        yield shown, norm


def findings(cfg: Any) -> list[Finding]:
    """Every unsupported key `cfg` sets to something other than its default."""
    out = []
    for shown, norm in _walk(cfg, type(cfg)(), "", ""):
        pattern = _match(norm)
        if pattern is not None:
            out.append(Finding(shown, UNSUPPORTED[pattern], pattern in REFUSED))
    return out


def markdown_table() -> str:
    """README's table of unsupported keys (one row per pattern)."""
    rows = ["| Key | State | Why |", "| --- | --- | --- |"]
    for pattern, reason in UNSUPPORTED.items():
        state = "refused at start" if pattern in REFUSED else "warning at start"
        rows.append(f"| `{pattern}` | {state} | {reason} |")
    return "\n".join(rows)
