"""Transport-agnostic server API: runs a method's decoded request on the Node.

`ApiExecutor.call(method, params)` takes params already decoded (a dict, or None meaning an
empty request) and returns the result as a dict ready for `orjson.dumps`. The request is
converted by app/api/decode.py, results are shaped by app/api/render.py, errors are those of
app/api/errors.py, and a `batch` runs through app/api/batch.py. The map methods live in
app/api/maps.py and join the method table here (`_run`): a family of methods is one table
update.

Every publish (publish, broadcast, batch) goes through `Node.publication_channel`: the
channel is resolved once and the data checked against its publication_data_format there,
the same rule the client publish uses.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from app import metrics
from app.api.batch import MAX_CONCURRENCY, BatchRunner
from app.api.decode import (
    SPECS,
    DisconnectSpec,
    as_is,
    b64decode,
    batch_request,
    decode_request,
    optional_payload,
    publication_data,
)
from app.api.errors import API_ERROR_MESSAGES, api_error, error_body
from app.api.maps import MapApi
from app.api.render import (
    NotJson,
    client_info_dict,
    json_payload,
    node_dict,
    position_dict,
    publication_dict,
)
from app.api.sharedpoll import SharedPollApi
from app.errors import ClientError, Disconnect
from app.models import ClientInfo, Publication

if TYPE_CHECKING:
    from app.config import ChannelOptions
    from app.node import Node

log = logging.getLogger("centrifugo.api")


class ApiExecutor:
    """Runs server API methods against one Node."""

    def __init__(self, node: Node, protocol: str = "http") -> None:
        self.node = node
        self.protocol = protocol  # metrics label: "http" or "grpc"
        self._run: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "publish": self._publish,
            "broadcast": self._broadcast,
            "subscribe": self._subscribe,
            "unsubscribe": self._unsubscribe,
            "disconnect": self._disconnect,
            "refresh": self._refresh,
            "presence": self._presence,
            "presence_stats": self._presence_stats,
            "history": self._history,
            "history_remove": self._history_remove,
            "channels": self._channels,
            "info": self._info,
            "rpc": self._rpc,
        }
        self._run.update(MapApi(node, self._render_payload).handlers())
        self._run.update(SharedPollApi(node).handlers())
        self._batch = BatchRunner(node, self._execute)

    async def call(self, method: str, params: Any) -> dict[str, Any]:
        """Run `method` with decoded `params`; returns the result dict.

        For `batch` the dict is `{"replies": [...]}` with per-command errors inside (a
        transport that can stream the replies uses `batch()` instead).
        Raises ClientError (ApiDecodeError for undecodable params).
        """
        started = time.perf_counter()
        try:
            return await self._call(method, params)
        except ClientError as e:
            metrics.child(metrics.API_ERRORS, self.protocol, method, str(e.code)).inc()
            raise
        finally:
            self._observe(method, started)

    def _observe(self, method: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        metrics.child(metrics.API_DURATION, self.protocol, method).observe(elapsed)
        metrics.child(metrics.API_DURATION_HISTOGRAM, self.protocol, method).observe(elapsed)

    async def _call(self, method: str, params: Any) -> dict[str, Any]:
        if method == "batch":
            commands, parallel = batch_request(params)
            replies: list[dict[str, Any]] = []
            async for chunk in self._batch.chunks(commands, as_is, parallel):
                replies.extend(chunk)
            return {"replies": replies}
        spec = SPECS.get(method)
        if spec is None:
            raise api_error(104)
        return await self._execute(method, decode_request(params, spec))

    async def _execute(self, method: str, req: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self._run[method](req)
        except ClientError as e:
            if e.message != API_ERROR_MESSAGES.get(e.code, e.message):
                raise api_error(e.code) from None
            raise
        except NotJson:
            log.error("api %s: stored payload is not JSON, cannot encode the result", method)
            raise api_error(100) from None
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("api %s failed", method)
            raise api_error(100) from None

    # --- batch ---

    async def batch(
        self, commands: Sequence[Any], decode: Callable[[Any], Any], parallel: Any
    ) -> AsyncGenerator[list[dict[str, Any]], None]:
        """The replies of a batch, one list per chunk of BATCH_CHUNK commands, in order.

        `decode(item)` turns one element of `commands` into the command object (a dict with
        one method key, or None for a null command) or raises ApiDecodeError. As in
        Centrifugo, a batch with any undecodable command fails as a whole before anything
        runs (ApiDecodeError from the first iteration), so a batch longer than one chunk is
        decoded twice: once to check it (1.6 us a command), once chunk by chunk to run it.
        """
        started = time.perf_counter()
        try:
            async for chunk in self._batch.chunks(commands, decode, parallel):
                yield chunk
        except ClientError as e:
            metrics.child(metrics.API_ERRORS, self.protocol, "batch", str(e.code)).inc()
            raise
        finally:
            self._observe("batch", started)

    # --- publish / broadcast ---

    async def _publish_one(
        self, channel: str, data: bytes, known_json: bool, req: dict[str, Any]
    ) -> dict[str, Any]:
        if not channel:
            raise api_error(107)
        chinfo = self.node.publication_channel(channel, data, known_json=known_json)
        result = await self.node.publish(
            channel,
            data,
            chinfo=chinfo,
            tags=req["tags"] or None,
            skip_history=req["skip_history"],
            idempotency_key=req["idempotency_key"],
            delta=req["delta"],
            version=req["version"],
            version_epoch=req["version_epoch"],
        )
        # A dropped version answers the stream's current top, as Centrifugo does.
        return position_dict(result.position)

    async def _publish(self, req: dict[str, Any]) -> dict[str, Any]:
        if not req["channel"]:
            raise api_error(107)
        data, known_json = publication_data(req)
        return await self._publish_one(req["channel"], data, known_json, req)

    async def _broadcast(self, req: dict[str, Any]) -> dict[str, Any]:
        channels: list[str] = req["channels"]
        if not channels:
            raise api_error(107)
        data, known_json = publication_data(req)
        sem = asyncio.Semaphore(MAX_CONCURRENCY)

        async def one(channel: str) -> dict[str, Any]:
            async with sem:
                try:
                    result = await self._execute_publish(channel, data, known_json, req)
                except ClientError as e:
                    return {"error": error_body(e)}
                return {"result": result}

        return {"responses": list(await asyncio.gather(*(one(ch) for ch in channels)))}

    async def _execute_publish(
        self, channel: str, data: bytes, known_json: bool, req: dict[str, Any]
    ) -> dict[str, Any]:
        try:
            return await self._publish_one(channel, data, known_json, req)
        except ClientError:
            raise
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("api broadcast: publish to %r failed", channel)
            raise api_error(100) from None

    # --- user-targeted methods ---

    async def _subscribe(self, req: dict[str, Any]) -> dict[str, Any]:
        channel = req["channel"]
        if not channel:
            raise api_error(107)
        self.node.resolver.resolve(channel, client_side=False)
        data = b64decode(req["b64data"]) if req["b64data"] else optional_payload(req["data"])
        info = b64decode(req["b64info"]) if req["b64info"] else optional_payload(req["info"])
        await self.node.subscribe_user(
            req["user"],
            channel,
            client=req["client"],
            session=req["session"],
            info=info,
            data=data,
            recover_since=req["recover_since"],
            expire_at=req["expire_at"],
            override=req["override"],
        )
        return {}

    async def _unsubscribe(self, req: dict[str, Any]) -> dict[str, Any]:
        # An empty channel means every channel of the user's connections.
        if req["channel"]:
            self.node.resolver.resolve(req["channel"], client_side=False)
        await self.node.unsubscribe_user(
            req["user"], req["channel"], client=req["client"], session=req["session"]
        )
        return {}

    async def _disconnect(self, req: dict[str, Any]) -> dict[str, Any]:
        spec: DisconnectSpec | None = req["disconnect"]
        if spec is None or spec.code == 0:
            disconnect = Disconnect(3503, spec.reason if spec is not None else None)
        else:
            disconnect = Disconnect(spec.code, spec.reason)
        await self.node.disconnect_user(
            req["user"],
            disconnect,
            client=req["client"],
            session=req["session"],
            whitelist=req["whitelist"],
        )
        return {}

    async def _refresh(self, req: dict[str, Any]) -> dict[str, Any]:
        await self.node.refresh_user(
            req["user"],
            client=req["client"],
            session=req["session"],
            expired=req["expired"],
            expire_at=req["expire_at"],
            info=optional_payload(req["info"]),
        )
        return {}

    # --- channel state ---

    def _channel_options(self, channel: str) -> ChannelOptions:
        if not channel:
            raise api_error(107)
        return self.node.resolver.resolve(channel, client_side=False).options

    async def _presence(self, req: dict[str, Any]) -> dict[str, Any]:
        if not self._channel_options(req["channel"]).presence:
            raise api_error(108)
        presence = await self.node.presence(req["channel"])
        return {"presence": {cid: self._render_info(ci) for cid, ci in presence.items()}}

    # How payload-carrying objects appear in results. JSON rendering needs JSON payloads;
    # the gRPC executor overrides these to keep raw bytes.
    def _render_info(self, info: ClientInfo) -> Any:
        return client_info_dict(info)

    def _render_publication(self, pub: Publication) -> Any:
        return publication_dict(pub)

    def _render_payload(self, data: bytes) -> Any:
        return json_payload(data)

    async def _presence_stats(self, req: dict[str, Any]) -> dict[str, Any]:
        if not self._channel_options(req["channel"]).presence:
            raise api_error(108)
        stats = await self.node.presence_stats(req["channel"])
        return {"num_clients": stats.num_clients, "num_users": stats.num_users}

    async def _history(self, req: dict[str, Any]) -> dict[str, Any]:
        if not self._channel_options(req["channel"]).history_enabled:
            raise api_error(108)
        limit = req["limit"]
        try:
            result = await self.node.history(
                req["channel"],
                limit=-1 if limit < 0 else limit,
                since=req["since"],
                reverse=req["reverse"],
            )
        except ClientError as e:
            # Centrifugo's API passes on only these; any other history failure is internal
            # (including reverse with since.offset 0, which clients get as 107).
            if e.code in (102, 108, 112):
                raise
            raise api_error(100) from None
        return {
            "publications": [self._render_publication(p) for p in result.publications],
            "offset": result.position.offset,
            "epoch": result.position.epoch,
        }

    async def _history_remove(self, req: dict[str, Any]) -> dict[str, Any]:
        if not self._channel_options(req["channel"]).history_enabled:
            raise api_error(108)
        await self.node.remove_history(req["channel"])
        return {}

    async def _channels(self, req: dict[str, Any]) -> dict[str, Any]:
        channels = await self.node.channels(req["pattern"])
        return {"channels": {ch: ({"num_clients": n} if n else {}) for ch, n in channels.items()}}

    async def _info(self, req: dict[str, Any]) -> dict[str, Any]:
        nodes = await self.node.info()
        return {"nodes": [node_dict(n) for n in nodes]}

    async def _rpc(self, req: dict[str, Any]) -> dict[str, Any]:
        # No server API RPC extensions exist in OSS Centrifugo.
        if not req["method"]:
            raise api_error(107)
        raise api_error(104)
