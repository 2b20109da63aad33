"""Server API results as JSON-ready dicts, in the shapes of Centrifugo's `apiproto` JSON
(Go `encoding/json`, `omitempty` on most fields): zero offsets and empty epochs are omitted
from publish results, ClientInfo always carries its `user` and `client`.

User payloads (`data`, `conn_info`, `chan_info`) appear as `orjson.Fragment`, so their raw
bytes are spliced into the output as received, never parsed and re-encoded; one that is not
JSON raises `NotJson` (the executor answers 100, as Go's encoder fails the response).
"""

from __future__ import annotations

from typing import Any

import orjson

from app import jsonraw
from app.models import ClientInfo, Publication, StreamPosition


class NotJson(Exception):
    """A stored payload is not JSON, so a JSON API answer cannot carry it."""


def json_payload(data: bytes) -> orjson.Fragment:
    """A stored payload spliced into a JSON answer as the bytes it is (NotJson otherwise)."""
    # Go's encoder checks every raw value it writes and fails the response otherwise;
    # binary payloads (b64data / protobuf clients) cannot be shown in a JSON answer.
    if not jsonraw.is_json(data):
        raise NotJson()
    return orjson.Fragment(data)


def client_info_dict(info: ClientInfo) -> dict[str, Any]:
    out: dict[str, Any] = {"user": info.user, "client": info.client}
    if info.conn_info:
        out["conn_info"] = json_payload(info.conn_info)
    if info.chan_info:
        out["chan_info"] = json_payload(info.chan_info)
    return out


def publication_dict(pub: Publication) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if pub.data:
        out["data"] = json_payload(pub.data)
    if pub.info is not None:
        out["info"] = client_info_dict(pub.info)
    if pub.offset:
        out["offset"] = pub.offset
    if pub.tags:
        out["tags"] = pub.tags
    return out


def position_dict(pos: StreamPosition) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if pos.offset:
        out["offset"] = pos.offset
    if pos.epoch:
        out["epoch"] = pos.epoch
    return out


_NODE_REQUIRED = ("uid", "name", "version", "num_clients", "num_users", "num_channels", "num_subs")


def node_dict(n: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        k: n.get(k, "" if k in ("uid", "name", "version") else 0) for k in _NODE_REQUIRED
    }
    if n.get("uptime"):
        out["uptime"] = n["uptime"]
    for k in ("metrics", "process"):
        if n.get(k):
            out[k] = n[k]
    return out
