"""Server API batches: the commands of one `batch` request run in chunks, in order or in
parallel, their replies yielded chunk by chunk.

A batch runs in chunks of BATCH_CHUNK commands (`BatchRunner.chunks()`): each chunk is
decoded, run and answered before the next is decoded, and the loop gets a turn between
chunks, so a batch holds one chunk's decoded commands and replies at a time however long it
is. Measured with `python -m bench.api_batch` (300k publishes, 16.5 MB): the worker peaked at
2.0 GB and kept 1.4 GB when the whole batch was decoded and answered at once, /health stalled
3 s.

Consecutive publishes go to the broker in one `Node.publish_many` call (one Redis round trip
instead of one each); every other command runs through the executor's `execute`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from app import jsonraw
from app.api.decode import BatchCommand, batch_item, parallel_flag, publication_data
from app.api.errors import api_error, error_body
from app.api.render import position_dict
from app.api.request import PlainPublish
from app.errors import ClientError

if TYPE_CHECKING:
    from app.channels import ChannelInfo
    from app.node import Node

log = logging.getLogger("centrifugo.api")

# Bounds how many publishes a broadcast (or parallel batch) keeps in flight, as Centrifugo does.
MAX_CONCURRENCY = 1024

# Commands of a batch decoded and run at a time: the memory a batch holds beyond its body,
# and the longest the loop waits for a turn (~20 ms for 1000 publishes on this machine).
BATCH_CHUNK = 1000

# Runs one decoded command (method, request) and answers its result; raises ClientError.
Execute = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


class BatchRunner:
    """Runs batch commands against one Node, every command but publish through `execute`
    (the executor's method table, error mapping and logging)."""

    def __init__(self, node: Node, execute: Execute) -> None:
        self.node = node
        self._execute = execute

    async def chunks(
        self, commands: Sequence[Any], decode: Callable[[Any], Any], parallel: Any
    ) -> AsyncGenerator[list[dict[str, Any]], None]:
        """The replies of a batch, one list per chunk (see `ApiExecutor.batch`)."""
        run_parallel = parallel_flag(parallel)

        def chunk_at(start: int) -> list[BatchCommand]:
            items = commands[start : start + BATCH_CHUNK]
            return [batch_item(decode(c), start + i) for i, c in enumerate(items)]

        first: list[BatchCommand] = []
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
                yield await self._parallel(chunk)
            else:
                yield await self._in_order(chunk)

    async def _one(self, cmd: BatchCommand) -> dict[str, Any]:
        if cmd is None:
            return {"error": error_body(api_error(107))}
        name, req = cmd
        if not name:
            return {"error": error_body(api_error(104))}
        assert type(req) is dict  # a PlainPublish is a publish: those run in _publish_run
        try:
            return {name: await self._execute(name, req)}
        except ClientError as e:
            return {"error": error_body(e)}

    async def _parallel(self, commands: list[BatchCommand]) -> list[dict[str, Any]]:
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

    async def _gather(self, commands: list[BatchCommand]) -> list[dict[str, Any]]:
        if len(commands) <= MAX_CONCURRENCY:
            return list(await asyncio.gather(*(self._one(c) for c in commands)))
        sem = asyncio.Semaphore(MAX_CONCURRENCY)

        async def one(c: BatchCommand) -> dict[str, Any]:
            async with sem:
                return await self._one(c)

        return list(await asyncio.gather(*(one(c) for c in commands)))

    async def _in_order(self, commands: list[BatchCommand]) -> list[dict[str, Any]]:
        """A sequential batch: each command applies after the ones before it.

        A run of consecutive publishes is issued back to back without awaiting each one
        (see _publish_run), so the publishes apply in batch order in one Redis round trip
        instead of one each. Any other command waits for the publishes before it and runs
        alone.
        """
        replies: list[dict[str, Any]] = []
        run: list[tuple[str, dict[str, Any] | PlainPublish]] = []
        for c in commands:
            if c is not None and c[0] == "publish":
                run.append(c)
                continue
            if run:
                replies.extend(await self._publish_run(run))
                run = []
            replies.append(await self._one(c))
        if run:
            replies.extend(await self._publish_run(run))
        return replies

    async def _publish_run(
        self, run: list[tuple[str, dict[str, Any] | PlainPublish]]
    ) -> list[dict[str, Any]]:
        """Batch replies of consecutive publish commands, applied in order.

        Every publication is checked here (`Node.publication_channel`) and handed over in one
        `Node.publish_many` call: the Redis engine queues all of them on its pipeline (issue
        order is kept per connection, and a channel always maps to one connection) before
        awaiting any.

        A PlainPublish (only channel and data; app/api/request.py) skips building and
        reading the general request's dozen fields; with the Redis broker's SPUBLISH groups
        (app/engines/redis/publish.py's PlainGroup has the measurement) it halves what a
        plain publication costs before Redis.
        """
        out: list[dict[str, Any]] = []
        items: list[tuple[ChannelInfo, bytes, dict[str, Any]]] = []
        slots: list[int] = []
        resolve = self.node.publication_channel
        for _, req in run:
            try:
                if type(req) is PlainPublish:
                    channel = req.channel
                    if not channel:
                        raise api_error(107)
                    data = jsonraw.payload(req.data)
                    items.append((resolve(channel, data, known_json=True), data, _DEFAULTS))
                    slots.append(len(out))
                    out.append(_PLAIN_REPLY)
                    continue
                assert type(req) is dict
                channel = req["channel"]
                if not channel:
                    raise api_error(107)
                data, known_json = publication_data(req)
                chinfo = resolve(channel, data, known_json=known_json)
            except ClientError as e:
                out.append({"error": error_body(e)})
                continue
            except Exception:
                log.exception("api publish failed")
                out.append({"error": error_body(api_error(100))})
                continue
            slots.append(len(out))
            out.append(_PLAIN_REPLY)
            # The arguments ApiExecutor._publish_one gives Node.publish, only those not at their default.
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
            items.append((chinfo, data, kwargs))
        if items:
            results = await self.node.publish_many(items)
            for i, result in zip(slots, results, strict=True):
                if isinstance(result, ClientError):
                    out[i] = {"error": error_body(result)}
                elif result.position.offset or result.position.epoch:
                    out[i] = {"publish": position_dict(result.position)}
        return out


# Node.publish_many's options of a publication with every option at its default (read only).
_DEFAULTS: dict[str, Any] = {}
# The reply of a publish without a stream position, shared by such replies: they are only
# serialised (the batch's response), never changed.
_PLAIN_REPLY: dict[str, Any] = {"publish": {}}
