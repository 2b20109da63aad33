"""`POST emulation.handler_prefix`: client-to-server half of the emulated
bidirectional transports (research §1.13).

Body: JSON `{"node": "...", "session": "...", "data": "<encoded commands>"}`
(`data` is a JSON string holding the commands), or with
`Content-Type: application/octet-stream` a Protobuf `EmulationRequest`
(data = the raw Protobuf commands). The commands run on the client
whose stream `node` holds, on whichever worker that is; replies travel down
that stream. Answers: 204 accepted, 400 malformed, 404 unknown node (or unknown
session on this node), 413 body too large.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web
from google.protobuf.message import DecodeError as PbDecodeError

from app.config import Config
from app.node import NODE_KEY, Node
from app.protocol.gen import client_pb2 as pb
from app.transports import admission
from app.transports.cors import cors_headers, empty_response, preflight_response
from app.transports.streaming import STATUS_CLIENT_CLOSED, BodyTooLarge, body_limit, read_body

log = logging.getLogger("centrifugo.emulation")


class MalformedRequest(ValueError):
    pass


def decode_protobuf_request(body: bytes) -> tuple[str, str, bytes]:
    """(node, session, data) from an encoded Protobuf EmulationRequest."""
    try:
        req = pb.EmulationRequest.FromString(body)
    except PbDecodeError as e:
        raise MalformedRequest(str(e)) from e
    return req.node, req.session, req.data


def decode_json_request(body: bytes) -> tuple[str, str, bytes]:
    try:
        obj: Any = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise MalformedRequest("invalid JSON") from e
    if not isinstance(obj, dict):
        raise MalformedRequest("not an object")
    node = obj.get("node") or ""
    session = obj.get("session") or ""
    data = obj.get("data")
    if not isinstance(node, str) or not isinstance(session, str):
        raise MalformedRequest("node and session must be strings")
    # For JSON sessions the commands travel as one JSON string.
    if not isinstance(data, str):
        raise MalformedRequest("data must be a string")
    return node, session, data.encode()


def _known_node(node: Node, node_id: str) -> bool:
    if node_id == node.id:
        return True
    return any(info.get("uid") == node_id for info in node.membership.nodes())


async def emulation_handler(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    cfg = node.config
    allowed = cfg.client.allowed_origins
    if request.method == "OPTIONS":
        return preflight_response(request, allowed, "POST, OPTIONS")
    cors = cors_headers(request, allowed)
    # No connection opens here (the stream did): no draining or limit check, origin only.
    refused = admission.check(node, request.headers.get("Origin"), connection=False)
    if refused is not None:
        return refused.response(cors)
    if request.method != "POST":
        return empty_response(405, cors)
    try:
        body = await read_body(request, body_limit(cfg.emulation.max_request_body_size))
    except BodyTooLarge:
        log.info("emulation: request body over emulation.max_request_body_size")
        return empty_response(413, cors)
    except ConnectionError as e:
        log.info("error reading emulation request body: %s", e)
        return empty_response(STATUS_CLIENT_CLOSED, cors)
    try:
        if request.content_type == "application/octet-stream":
            node_id, session, data = decode_protobuf_request(body)
        else:
            node_id, session, data = decode_json_request(body)
    except MalformedRequest as e:
        log.info("can't unmarshal emulation request: %s", e)
        return empty_response(400, cors)
    if not _known_node(node, node_id):
        log.info("emulation request for unknown node %r", node_id)
        return empty_response(404, cors)
    try:
        delivered = await node.emulation(node_id, session, data)
    except Exception as e:  # broker unavailable: the client will retry or reconnect
        log.error("error processing emulation request: %r", e)
        return empty_response(500, cors)
    if not delivered:
        log.info("emulation request for unknown session %r", session)
        return empty_response(404, cors)
    return empty_response(204, cors)


def add_routes(app: web.Application, cfg: Config) -> None:
    """Register `emulation.handler_prefix` when an emulated transport is enabled
    (as Centrifugo does: the endpoint exists only for SSE / HTTP-stream)."""
    if not (cfg.sse.enabled or cfg.http_stream.enabled):
        return
    prefix = cfg.emulation.handler_prefix.rstrip("/") or "/"
    app.router.add_route("*", prefix, emulation_handler)
