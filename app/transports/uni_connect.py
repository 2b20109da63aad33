"""The connect step every unidirectional transport shares (research §1.11, §1.12).

Decoding the JSON ConnectRequest (uni_sse, uni_http_stream, uni_websocket), running
connect on a new client (with its errors turned into disconnects, or kept for
`connect_code_to_http_response` and turned into HTTP statuses by
`connect_error_response`). uni_grpc gets its ConnectRequest as Protobuf and only runs it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from app import jsonraw
from app.client import Client
from app.config import CodeTransformsConfig
from app.errors import DISCONNECT_BAD_REQUEST, DISCONNECT_SERVER_ERROR, ClientError, Disconnect
from app.node import Node
from app.protocol import DecodeError
from app.protocol.gen.client_pb2 import ConnectRequest
from app.transport import Transport

log = logging.getLogger("centrifugo.uni")


class BadConnectRequest(ValueError):
    """The ConnectRequest is not a JSON object (or `null`)."""


_CONNECT_REQUEST = jsonraw.decoder(ConnectRequest.DESCRIPTOR)


def decode_connect_request(data: bytes | str) -> dict[str, Any]:
    """A JSON ConnectRequest (its `data` kept as the bytes received); `null` is an empty
    request, as in Centrifugo."""
    buf = data.encode() if isinstance(data, str) else data
    if buf.strip() == b"null":
        return {}
    try:
        obj: dict[str, Any] = jsonraw.decode(_CONNECT_REQUEST, buf)
    except jsonraw.JsonError as e:
        raise BadConnectRequest(str(e)) from None
    return obj


def new_client(node: Node, transport: Transport, headers: Mapping[str, str]) -> Client:
    # Unidirectional connections get a session id, reported in the connect push.
    return Client(node, transport, session=str(uuid.uuid4()), headers=headers)


async def connect(client: Client, request: dict[str, Any]) -> bool:
    """Connect a unidirectional client; on failure it is already closed (disconnect push)."""
    try:
        return await client.connect_unidirectional(request)
    except Exception:
        log.exception("connect failed for client %s", client.uid)
        await client.close(Disconnect(DISCONNECT_SERVER_ERROR))
        return False


async def connect_or_error(
    client: Client, request: dict[str, Any]
) -> ClientError | Disconnect | None:
    """Connect keeping the original error (for `connect_code_to_http_response`); the
    client is left closed, with nothing sent, when the error is returned."""
    err: ClientError | Disconnect
    try:
        # The protocol connect command itself: connect_unidirectional would already have
        # turned an error into a disconnect code, losing the code the transforms match on.
        await client.connect_request(request)
        return None
    except (ClientError, Disconnect) as e:
        err = e
    except DecodeError:
        err = Disconnect(DISCONNECT_BAD_REQUEST)
    except Exception:
        log.exception("connect failed for client %s", client.uid)
        err = ClientError(100)
    await client.close(None)
    return err


def connect_error_response(
    err: ClientError | Disconnect, transforms: CodeTransformsConfig
) -> web.Response:
    """The configured HTTP answer for a connect error; 500 when no transform matches."""
    body = err.message if isinstance(err, ClientError) else err.reason
    for t in transforms.transforms:
        if t.get("code") != err.code:
            continue
        to = t.get("to") or {}
        status = int(to.get("status_code") or 0)
        if status <= 0:
            break
        return web.Response(status=status, text=str(to.get("body") or body))
    return web.Response(status=500, text="Internal Server Error")


async def connect_stream(
    client: Client, request: dict[str, Any], transforms: CodeTransformsConfig
) -> bool | web.Response:
    """The connect step of a unidirectional stream (app/transports/streaming.py): with
    `connect_code_to_http_response` enabled a connect error is answered with its HTTP
    status instead of the stream; otherwise a failed connect still answers 200, its
    disconnect push being the body."""
    if transforms.enabled:
        err = await connect_or_error(client, request)
        if err is not None:
            return connect_error_response(err, transforms)
    else:
        await connect(client, request)
    return True
