"""Transport-agnostic server API: validates a method's params and runs it on the Node.

`ApiExecutor.call(method, params)` takes params already decoded (a dict, or None meaning an
empty request) and returns the result as a dict ready for `orjson.dumps`. Payload fields
(`data`, `info`, `params`) arrive as the bytes received: `msgspec.Raw` spans of a JSON body
(app/api/request.py) or `bytes` from gRPC; they become the Publication's data as they are,
never parsed and re-encoded. User payloads (`data`, `conn_info`, `chan_info`) appear in
results as `orjson.Fragment` so their raw bytes are spliced into the output the same way.

A batch runs in chunks of BATCH_CHUNK commands (`batch()`): each chunk is decoded, run and
answered before the next is decoded, and the loop gets a turn between chunks, so a batch
holds one chunk's decoded commands and replies at a time however long it is. Measured with
`python -m bench.api_batch` (300k publishes, 16.5 MB): the worker peaked at 2.0 GB and kept
1.4 GB when the whole batch was decoded and answered at once, /health stalled 3 s.

Errors are `ClientError` with the server API codes and messages (100, 102, 104, 107, 108,
112). `ApiDecodeError` (a 107) marks a request whose JSON does not fit the method's shape
(wrong types): Centrifugo decodes API bodies into typed structs, so the HTTP layer answers
those with a plain HTTP 400 instead of a 107 in the body.

Result shapes follow Centrifugo's `apiproto` JSON (Go `encoding/json`, `omitempty` on most
fields): zero offsets and empty epochs are omitted from publish results, `history` always
carries `publications`, `offset` and `epoch`, `presence_stats` both counters, ClientInfo its
`user` and `client`.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import orjson

from app import jsonraw, metrics
from app.auth import OVERRIDE_FIELDS, SubscribeOverride
from app.errors import ClientError, Disconnect
from app.models import ClientInfo, Publication, StreamPosition

if TYPE_CHECKING:
    from app.node import Node

log = logging.getLogger("centrifugo.api")

# Server API error messages differ from the client protocol ones for 104 and 113.
API_ERROR_MESSAGES: dict[int, str] = {
    100: "internal server error",
    102: "unknown channel",
    104: "not found",
    107: "bad request",
    108: "not available",
    112: "unrecoverable position",
    113: "conflict",
}

# Bounds how many publishes a broadcast (or parallel batch) keeps in flight, as Centrifugo does.
MAX_CONCURRENCY = 1024

# Commands of a batch decoded and run at a time: the memory a batch holds beyond its body,
# and the longest the loop waits for a turn (~20 ms for 1000 publishes on this machine).
BATCH_CHUNK = 1000


def api_error(code: int) -> ClientError:
    return ClientError(code, API_ERROR_MESSAGES.get(code))


class ApiDecodeError(ClientError):
    """The request does not decode into the method's request type (HTTP answers 400)."""

    def __init__(self, detail: str = ""):
        super().__init__(107, API_ERROR_MESSAGES[107])
        self.detail = detail


def error_body(err: ClientError) -> dict[str, Any]:
    """`{"code", "message"}` as the server API writes errors (no `temporary` flag)."""
    return {"code": err.code, "message": API_ERROR_MESSAGES.get(err.code, err.message)}


# --------------------------------------------------------------------------------------------
# params decoding: JSON values -> typed values, mirroring Go's encoding/json into apiproto
# structs. A null value or a missing key is the zero value; a wrong type is a decode error.


def _str(v: Any, name: str) -> str:
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    raise ApiDecodeError(f"{name}: expected string")


def _bool(v: Any, name: str) -> bool:
    if v is None:
        return False
    if isinstance(v, bool):
        return v
    raise ApiDecodeError(f"{name}: expected bool")


def _int(lo: int, hi: int) -> Callable[[Any, str], int]:
    def conv(v: Any, name: str) -> int:
        if v is None:
            return 0
        # bool is an int subclass in Python but not a JSON number; 1.0 does not fit a Go int.
        if isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi:
            return v
        raise ApiDecodeError(f"{name}: expected integer in [{lo}, {hi}]")

    return conv


_int32 = _int(-(2**31), 2**31 - 1)
_int64 = _int(-(2**63), 2**63 - 1)
_uint32 = _int(0, 2**32 - 1)
_uint64 = _int(0, 2**64 - 1)


def _raw(v: Any, name: str) -> msgspec.Raw | bytes | None:
    # A payload as received: a Raw span of a JSON body, or bytes from gRPC; None when absent.
    if v is None or type(v) is msgspec.Raw or type(v) is bytes:
        return v
    raise ApiDecodeError(f"{name}: expected raw JSON")


def _str_map(v: Any, name: str) -> dict[str, str]:
    if v is None:
        return {}
    if isinstance(v, dict):
        out: dict[str, str] = {}
        for k, item in v.items():
            out[k] = _str(item, f"{name}.{k}")
        return out
    raise ApiDecodeError(f"{name}: expected object of strings")


def _str_list(v: Any, name: str) -> list[str]:
    if v is None:
        return []
    if isinstance(v, list):
        return [_str(item, f"{name}[]") for item in v]
    raise ApiDecodeError(f"{name}: expected array of strings")


def _obj(v: Any, name: str) -> dict[str, Any]:
    if v is None:
        return {}
    if isinstance(v, dict):
        return v
    raise ApiDecodeError(f"{name}: expected object")


def _position(v: Any, name: str) -> StreamPosition | None:
    if v is None:
        return None
    p = _obj(v, name)
    return StreamPosition(
        offset=_uint64(p.get("offset"), f"{name}.offset"), epoch=_str(p.get("epoch"), name)
    )


def _bool_value(v: Any, name: str) -> bool | None:
    # Protobuf BoolValue wrapper: {"value": bool}; {} means false, null means not set.
    if v is None:
        return None
    return _bool(_obj(v, name).get("value"), f"{name}.value")


def _override(v: Any, name: str) -> SubscribeOverride | None:
    if v is None:
        return None
    p = _obj(v, name)
    values = {f: _bool_value(p.get(f), f"{name}.{f}") for f in OVERRIDE_FIELDS}
    if all(x is None for x in values.values()):
        return None
    return SubscribeOverride(**values)


@dataclass(slots=True)
class _DisconnectSpec:
    code: int
    reason: str | None


def _disconnect(v: Any, name: str) -> _DisconnectSpec | None:
    if v is None:
        return None
    p = _obj(v, name)
    code = _uint32(p.get("code"), f"{name}.code")
    reason = p.get("reason")
    return _DisconnectSpec(code, _str(reason, f"{name}.reason") if reason is not None else None)


Decoder = Callable[[Any, str], Any]


def _decode(params: Any, spec: dict[str, Decoder]) -> dict[str, Any]:
    p = _obj(params, "params")
    fixed, fresh = _ZEROS[id(spec)]
    out = dict(fixed)
    for key, conv in fresh:
        out[key] = conv(None, key)
    # Only the fields sent are converted: a batch item usually sets 2 of the 9.
    for key, value in p.items():
        if value is not None:
            conv = spec.get(key)
            if conv is not None:
                out[key] = conv(value, key)
    return out


def _zero_values(
    spec: dict[str, Decoder],
) -> tuple[dict[str, Any], tuple[tuple[str, Decoder], ...]]:
    """A spec's zero values to copy, and the fields whose zero value (a list or a dict)
    is made anew for every request."""
    fixed: dict[str, Any] = {}
    fresh: list[tuple[str, Decoder]] = []
    for key, conv in spec.items():
        zero = conv(None, key)
        if isinstance(zero, (list, dict)):
            fresh.append((key, conv))
        else:
            fixed[key] = zero
    return fixed, tuple(fresh)


_PUBLISH_FIELDS: dict[str, Decoder] = {
    "data": _raw,
    "b64data": _str,
    "skip_history": _bool,
    "tags": _str_map,
    "idempotency_key": _str,
    "delta": _bool,
    # Versioned publish: the broker drops a version not newer than the channel's last one.
    "version": _uint64,
    "version_epoch": _str,
}

_SPECS: dict[str, dict[str, Decoder]] = {
    "publish": {"channel": _str, **_PUBLISH_FIELDS},
    "broadcast": {"channels": _str_list, **_PUBLISH_FIELDS},
    "subscribe": {
        "user": _str,
        "channel": _str,
        "expire_at": _int64,
        "info": _raw,
        "b64info": _str,
        "client": _str,
        "session": _str,
        "data": _raw,
        "b64data": _str,
        "recover_since": _position,
        "override": _override,
    },
    "unsubscribe": {"user": _str, "channel": _str, "client": _str, "session": _str},
    "disconnect": {
        "user": _str,
        "client": _str,
        "session": _str,
        "whitelist": _str_list,
        "disconnect": _disconnect,
    },
    "refresh": {
        "user": _str,
        "client": _str,
        "session": _str,
        "expired": _bool,
        "expire_at": _int64,
        "info": _raw,
    },
    "presence": {"channel": _str},
    "presence_stats": {"channel": _str},
    "history": {"channel": _str, "limit": _int32, "since": _position, "reverse": _bool},
    "history_remove": {"channel": _str},
    "channels": {"pattern": _str},
    "info": {},
    "rpc": {"method": _str, "params": _raw},
}

# The order in which Centrifugo looks for the one command set in a batch item.
_BATCH_ORDER = (
    "publish",
    "broadcast",
    "subscribe",
    "unsubscribe",
    "disconnect",
    "history",
    "history_remove",
    "presence",
    "presence_stats",
    "info",
    "rpc",
    "refresh",
    "channels",
)

METHODS = frozenset((*_SPECS, "batch"))
_ZEROS = {id(spec): _zero_values(spec) for spec in _SPECS.values()}

# A batch command ready to run: (method, request), ("", {}) when it names no method (104),
# None for a null command (107).
_BatchCommand = tuple[str, dict[str, Any]] | None


def _same(value: Any) -> Any:
    return value


def _batch_command(cmd: Any, index: int) -> _BatchCommand:
    """A decoded batch command checked and converted; ApiDecodeError if it cannot be."""
    if cmd is None:
        return None
    if not isinstance(cmd, dict):
        raise ApiDecodeError(f"commands[{index}]: expected object")
    if len(cmd) == 1:
        # The usual shape, one method per command: no need to try all 13 names.
        ((name, value),) = cmd.items()
        spec = _SPECS.get(name)
        if spec is None or value is None:
            return "", {}
        return name, _decode(value, spec)
    # Every known field is decoded (a bad one fails the whole batch, as in Go); the first
    # one set in Centrifugo's order is run; none set means 104.
    chosen: _BatchCommand = None
    for name in _BATCH_ORDER:
        value = cmd.get(name)
        if value is None:
            continue
        req = _decode(value, _SPECS[name])
        if chosen is None:
            chosen = (name, req)
    return chosen if chosen is not None else ("", {})


# --------------------------------------------------------------------------------------------
# payload helpers


def _b64(value: str) -> bytes:
    # Go's base64.StdEncoding: padded, standard alphabet, CR/LF ignored.
    s = value.replace("\r", "").replace("\n", "")
    if len(s) % 4:
        raise api_error(107)
    try:
        return binascii.a2b_base64(s.encode(), strict_mode=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise api_error(107) from None


def _opt_payload(value: msgspec.Raw | bytes | None) -> bytes | None:
    # None when absent or null: the user action keeps what the connection has.
    return jsonraw.payload(value) or None


class _NotJson(Exception):
    """A stored payload is not JSON, so a JSON API answer cannot carry it."""


def _fragment(data: bytes) -> orjson.Fragment:
    # Go's encoder checks every raw value it writes and fails the response otherwise;
    # binary payloads (b64data / protobuf clients) cannot be shown in a JSON answer.
    if not jsonraw.is_json(data):
        raise _NotJson()
    return orjson.Fragment(data)


def client_info_dict(info: ClientInfo) -> dict[str, Any]:
    out: dict[str, Any] = {"user": info.user, "client": info.client}
    if info.conn_info:
        out["conn_info"] = _fragment(info.conn_info)
    if info.chan_info:
        out["chan_info"] = _fragment(info.chan_info)
    return out


def publication_dict(pub: Publication) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if pub.data:
        out["data"] = _fragment(pub.data)
    if pub.info is not None:
        out["info"] = client_info_dict(pub.info)
    if pub.offset:
        out["offset"] = pub.offset
    if pub.tags:
        out["tags"] = pub.tags
    return out


def _position_dict(pos: StreamPosition) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if pos.offset:
        out["offset"] = pos.offset
    if pos.epoch:
        out["epoch"] = pos.epoch
    return out


# --------------------------------------------------------------------------------------------


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
            p = _obj(params, "params")
            commands = p.get("commands")
            if commands is None:
                commands = []
            elif not isinstance(commands, list):
                raise ApiDecodeError("commands: expected array")
            replies: list[dict[str, Any]] = []
            async for chunk in self._batch_chunks(commands, _same, p.get("parallel")):
                replies.extend(chunk)
            return {"replies": replies}
        spec = _SPECS.get(method)
        if spec is None:
            raise api_error(104)
        return await self._execute(method, _decode(params, spec))

    async def _execute(self, method: str, req: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self._run[method](req)
        except ClientError as e:
            if e.message != API_ERROR_MESSAGES.get(e.code, e.message):
                raise api_error(e.code) from None
            raise
        except _NotJson:
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
            async for chunk in self._batch_chunks(commands, decode, parallel):
                yield chunk
        except ClientError as e:
            metrics.child(metrics.API_ERRORS, self.protocol, "batch", str(e.code)).inc()
            raise
        finally:
            self._observe("batch", started)

    async def _batch_chunks(
        self, commands: Sequence[Any], decode: Callable[[Any], Any], parallel: Any
    ) -> AsyncGenerator[list[dict[str, Any]], None]:
        run_parallel = _bool(parallel, "parallel")

        def chunk_at(start: int) -> list[_BatchCommand]:
            items = commands[start : start + BATCH_CHUNK]
            return [_batch_command(decode(c), start + i) for i, c in enumerate(items)]

        first: list[_BatchCommand] = []
        for start in range(0, len(commands), BATCH_CHUNK):
            if start == 0:
                first = chunk_at(0)
            else:
                chunk_at(start)  # checked and dropped
                await asyncio.sleep(0)  # the loop's turn (the check pass runs no I/O)
        for start in range(0, len(commands), BATCH_CHUNK):
            if start == 0:
                chunk, first = first, []
            else:
                await asyncio.sleep(0)
                chunk = chunk_at(start)
            if run_parallel:
                yield await self._batch_parallel(chunk)
            else:
                yield await self._batch_in_order(chunk)

    async def _batch_one(self, cmd: _BatchCommand) -> dict[str, Any]:
        if cmd is None:
            return {"error": error_body(api_error(107))}
        name, req = cmd
        if not name:
            return {"error": error_body(api_error(104))}
        try:
            return {name: await self._execute(name, req)}
        except ClientError as e:
            return {"error": error_body(e)}

    async def _batch_parallel(self, commands: list[_BatchCommand]) -> list[dict[str, Any]]:
        """Every publish in one run, the other commands concurrently beside it."""
        pubs = [i for i, c in enumerate(commands) if c is not None and c[0] == "publish"]
        if not pubs:
            return await self._gather(commands)
        chosen = set(pubs)
        rest = [i for i in range(len(commands)) if i not in chosen]
        run = self._publish_run([commands[i] for i in pubs])  # type: ignore[misc]
        done, others = await asyncio.gather(run, self._gather([commands[i] for i in rest]))
        replies: list[dict[str, Any]] = [{}] * len(commands)
        for i, reply in zip(pubs, done, strict=True):
            replies[i] = reply
        for i, reply in zip(rest, others, strict=True):
            replies[i] = reply
        return replies

    async def _gather(self, commands: list[_BatchCommand]) -> list[dict[str, Any]]:
        if len(commands) <= MAX_CONCURRENCY:
            return list(await asyncio.gather(*(self._batch_one(c) for c in commands)))
        sem = asyncio.Semaphore(MAX_CONCURRENCY)

        async def one(c: _BatchCommand) -> dict[str, Any]:
            async with sem:
                return await self._batch_one(c)

        return list(await asyncio.gather(*(one(c) for c in commands)))

    async def _batch_in_order(self, commands: list[_BatchCommand]) -> list[dict[str, Any]]:
        """A sequential batch: each command applies after the ones before it.

        A run of consecutive publishes is issued back to back without awaiting each one
        (see _publish_run), so the publishes apply in batch order in one Redis round trip
        instead of one each. Any other command waits for the publishes before it and runs
        alone.
        """
        replies: list[dict[str, Any]] = []
        run: list[tuple[str, dict[str, Any]]] = []
        for c in commands:
            if c is not None and c[0] == "publish":
                run.append(c)
                continue
            if run:
                replies.extend(await self._publish_run(run))
                run = []
            replies.append(await self._batch_one(c))
        if run:
            replies.extend(await self._publish_run(run))
        return replies

    async def _publish_run(self, run: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        """Batch replies of consecutive publish commands, applied in order.

        Every publication is checked here and handed over in one `Node.publish_many` call:
        the Redis engine queues all of them on its pipeline (issue order is kept per
        connection, and a channel always maps to one connection) before awaiting any.
        """
        out: list[dict[str, Any]] = []
        items: list[tuple[str, bytes, dict[str, Any]]] = []
        slots: list[int] = []
        for _, req in run:
            try:
                channel = req["channel"]
                if not channel:
                    raise api_error(107)
                data, known_json = self._payload(req)
                self._check_format(channel, data, known_json)
            except ClientError as e:
                out.append({"error": error_body(e)})
                continue
            except Exception:
                log.exception("api publish failed")
                out.append({"error": error_body(api_error(100))})
                continue
            slots.append(len(out))
            out.append({})
            # The arguments _publish_one gives Node.publish, only those not at their default.
            kwargs: dict[str, Any] = {}
            if req["tags"]:
                kwargs["tags"] = req["tags"]
            if req["skip_history"]:
                kwargs["skip_history"] = True
            if req["idempotency_key"]:
                kwargs["idempotency_key"] = req["idempotency_key"]
            if req["delta"]:
                kwargs["delta"] = True
            if req["version"]:
                kwargs["version"] = req["version"]
                kwargs["version_epoch"] = req["version_epoch"]
            items.append((channel, data, kwargs))
        if items:
            results = await self.node.publish_many(items)
            for i, result in zip(slots, results, strict=True):
                if isinstance(result, ClientError):
                    out[i] = {"error": error_body(result)}
                else:
                    out[i] = {"publish": _position_dict(result.position)}
        return out

    # --- publish / broadcast ---

    def _payload(self, req: dict[str, Any]) -> tuple[bytes, bool]:
        """Publication bytes as received, and whether they are known to be JSON (a Raw span
        of a JSON body, validated by its decoder) rather than b64data or gRPC bytes."""
        if req["b64data"]:
            return _b64(req["b64data"]), False
        data = req["data"]
        return jsonraw.payload(data), type(data) is msgspec.Raw

    def _check_format(self, channel: str, data: bytes, known_json: bool) -> None:
        """Resolve the channel (102/107) and check data against publication_data_format.
        (The namespace's delta_publish is applied by Node, from the same options.)"""
        options = self.node.resolver.resolve(channel, client_side=False).options
        fmt = options.publication_data_format or self.node.config.channel.publication_data_format
        if fmt == "binary":
            return
        if not data:
            raise api_error(107)
        if fmt == "json" and not known_json and not jsonraw.is_json(data):
            raise api_error(107)
        if fmt == "json_object" and not (
            data.lstrip()[:1] == b"{" and (known_json or jsonraw.is_json(data))
        ):
            raise api_error(107)

    async def _publish_one(
        self, channel: str, data: bytes, known_json: bool, req: dict[str, Any]
    ) -> dict[str, Any]:
        if not channel:
            raise api_error(107)
        self._check_format(channel, data, known_json)
        result = await self.node.publish(
            channel,
            data,
            tags=req["tags"] or None,
            skip_history=req["skip_history"],
            idempotency_key=req["idempotency_key"],
            delta=req["delta"],
            version=req["version"],
            version_epoch=req["version_epoch"],
        )
        # A dropped version answers the stream's current top, as Centrifugo does.
        return _position_dict(result.position)

    async def _publish(self, req: dict[str, Any]) -> dict[str, Any]:
        if not req["channel"]:
            raise api_error(107)
        data, known_json = self._payload(req)
        return await self._publish_one(req["channel"], data, known_json, req)

    async def _broadcast(self, req: dict[str, Any]) -> dict[str, Any]:
        channels: list[str] = req["channels"]
        if not channels:
            raise api_error(107)
        data, known_json = self._payload(req)
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
        data = _b64(req["b64data"]) if req["b64data"] else _opt_payload(req["data"])
        info = _b64(req["b64info"]) if req["b64info"] else _opt_payload(req["info"])
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
        spec: _DisconnectSpec | None = req["disconnect"]
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
            info=_opt_payload(req["info"]),
        )
        return {}

    # --- channel state ---

    def _channel_options(self, channel: str) -> Any:
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
        return {"nodes": [_node_dict(n) for n in nodes]}

    async def _rpc(self, req: dict[str, Any]) -> dict[str, Any]:
        # No server API RPC extensions exist in OSS Centrifugo.
        if not req["method"]:
            raise api_error(107)
        raise api_error(104)


_NODE_REQUIRED = ("uid", "name", "version", "num_clients", "num_users", "num_channels", "num_subs")


def _node_dict(n: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        k: n.get(k, "" if k in ("uid", "name", "version") else 0) for k in _NODE_REQUIRED
    }
    if n.get("uptime"):
        out["uptime"] = n["uptime"]
    for k in ("metrics", "process"):
        if n.get(k):
            out[k] = n[k]
    return out
