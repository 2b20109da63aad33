"""Implicit pipelining: commands issued close together share one write on one connection.

redis-py spends a pool checkout, a socket write, a wake-up and a read per command; on a
loaded 2-core box that is 70-500 µs of CPU each (research/perf-anchors.md §3.2). Here a
command is packed (hiredis, in C) into a per-endpoint buffer; the buffer is written once
at the end of the event-loop turn, or as soon as it holds MAX_BATCH commands. Redis runs
commands of one connection in order and answers in order, so replies are matched to the
awaiting callers by a FIFO, and two commands issued one after another (e.g. two publishes
to one channel) are applied in that order without the first being awaited. This is what
centrifuge does with rueidis (research/redis-engine.md §7, §9). There is no extra flush
delay: under load every turn already carries many commands, and a timer would only add
latency to a lone publish (epoll rounds waits up to whole milliseconds).

A group of commands packed by the caller (`execute_many`: a batch's plain SPUBLISHes) travels
the same way as one entry with one future for all its replies.

Failure handling mirrors what the engine had with redis-py:
- connection errors (a refused connect, a connection closed under in-flight commands, a
  demoted Sentinel master answering READONLY) retry every affected command once on a new
  connection, in issue order, then fail it with redis ConnectionError;
- no progress on a connection with commands outstanding for `io_timeout` aborts it and fails
  those commands with redis TimeoutError (no retry: Redis may be frozen, and a retry would
  double the wait); a connect that takes longer than `connect_timeout` fails the same way;
- AUTH, CLIENT SETNAME (the section's client_name, if any) and SELECT are awaited on a new
  connection before any command is written to it (connect.open_connection, as for the
  PUB/SUB readers); a refused one fails the waiting commands without a retry;
- scripts given to the pipeline are loaded (SCRIPT LOAD) right after the handshake of every
  new connection, ahead of the commands waiting for it, so a restarted Redis (empty script
  cache) never answers NOSCRIPT to commands that wait for the reconnect. A NOSCRIPT all the
  same (SCRIPT FLUSH under a live connection) re-sends the command once as EVAL with the
  script body; commands written behind it before the NOSCRIPT came back then run before it
  (the only case where issue order is not kept);
- with a `fallback` (Redis Cluster), redirections (MOVED/ASK/TRYAGAIN/CLUSTERDOWN) and
  connection errors hand the command to the fallback (redis-py's cluster client, which
  re-reads the slot map and retries) instead; such a command may overtake later ones.
Nothing bounds how many commands wait: callers are bounded upstream (API batches, clients).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, cast

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.engines.redis.connect import Endpoint, open_connection
from app.engines.redis.resp import eval_command, evalsha_command, pack_command

log = logging.getLogger("centrifugo.redis.pipeline")

# Commands per write at most: a burst starts reaching Redis while the rest is still packed.
MAX_BATCH = 512

_REDIRECTS = ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN")

# Runs a command another way (the cluster client, which follows redirections); a
# coroutine function, as its result is run in a task.
Fallback = Callable[[tuple[Any, ...]], Coroutine[Any, Any, Any]]


class Script:
    """A Lua script called by SHA1 (computed here; no SCRIPT LOAD round trip)."""

    __slots__ = ("name", "body", "sha")

    def __init__(self, name: str, body: str) -> None:
        self.name = name
        self.body = body.encode()
        self.sha = hashlib.sha1(self.body).hexdigest().encode()


class _Cmd:
    __slots__ = ("fut", "args", "data", "script", "retried", "reloaded", "parts", "replies")

    def __init__(
        self,
        fut: asyncio.Future[Any] | None,
        args: tuple[Any, ...],
        script: Script | None,
        data: bytes | None = None,
    ) -> None:
        self.fut = fut  # None: a script load whose reply nobody awaits
        self.args = args  # kept for the cluster hand-over (a packed EVALSHA: name, SHA, nkeys)
        self.data: bytes = pack_command(args) if data is None else data
        self.script = script
        self.retried = False  # used its one retry after a connection error
        self.reloaded = False  # used its one retry after NOSCRIPT
        # A group (`AutoPipeline.execute_many`): its commands, packed, and their replies so
        # far; None for a single command.
        self.parts: list[bytes] | None = None
        self.replies: list[Any] | None = None


def _group(fut: asyncio.Future[Any], parts: list[bytes]) -> _Cmd:
    cmd = _Cmd(fut, (), None, b"".join(parts))
    cmd.parts = parts
    cmd.replies = []
    return cmd


class _HandshakeError(RedisConnectionError):
    """AUTH, CLIENT SETNAME or SELECT refused: retrying cannot help."""


def _fail(cmd: _Cmd, exc: BaseException) -> None:
    fut = cmd.fut
    if fut is None or fut.done():
        return
    replies = cmd.replies
    if replies is None:
        fut.set_exception(exc)
    else:
        # A group answers per command: the replies it got, then `exc` for each of the rest.
        assert cmd.parts is not None
        fut.set_result(replies + [exc] * (len(cmd.parts) - len(replies)))


class _Conn(asyncio.Protocol):
    """One connection, handshake done (connect.open_connection makes it only then); its
    in-flight commands in the order their replies will come."""

    def __init__(self, owner: AutoPipeline) -> None:
        self.owner = owner
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.transport: asyncio.Transport | None = None
        self.inflight: deque[_Cmd] = deque()
        self.progress_at = 0.0  # loop time of the last reply, or of a write into idle
        self.dropped = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # create_connection gives a stream transport; asyncio.Protocol's signature says
        # BaseTransport, which has no write().
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.dropped:
            return
        owner = self.owner
        self.progress_at = owner._loop.time()
        reader = self.reader
        reader.feed(data)
        inflight = self.inflight
        while True:
            reply = reader.gets()
            if reply is False:
                return
            if not inflight:
                owner._drop(self, RedisConnectionError("unexpected reply from redis"), False)
                return
            cmd = inflight[0]
            replies = cmd.replies
            if replies is not None:  # a group: its replies, errors included, as a list
                replies.append(reply)
                if len(replies) == len(cmd.parts):  # type: ignore[arg-type]
                    inflight.popleft()
                    self._group_done(cmd, replies)
                    if self.dropped:
                        return
                continue
            inflight.popleft()
            if type(reply) is ResponseError:
                owner._on_error_reply(self, cmd, reply)
                if self.dropped:
                    return
                continue
            fut = cmd.fut
            if fut is not None and not fut.done():
                fut.set_result(reply)

    def _group_done(self, cmd: _Cmd, replies: list[Any]) -> None:
        fut = cmd.fut
        if fut is not None and not fut.done():
            fut.set_result(replies)
        # A command of the group refused as written to a replica (Sentinel failover): that
        # command fails (it is not retried: the group's others may have been applied), and
        # the connection is dropped so what follows goes to the new master.
        for reply in replies:
            if type(reply) is ResponseError and str(reply).startswith("READONLY"):
                self.owner._drop(self, RedisConnectionError("the master is now a replica"), True)
                return

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.dropped:
            reason = f"connection to redis lost: {exc}" if exc else "connection closed by server"
            self.owner._drop(self, RedisConnectionError(reason), True)


class AutoPipeline:
    """Pipelined commands to one Redis endpoint over one connection at a time.

    `resolve` is called for every (re)connect, so a Sentinel-managed master is looked up
    again after a failover. `execute`/`evalsha` return a Future right away (the command is
    queued in issue order before they return); await it for the reply.
    """

    def __init__(
        self,
        resolve: Callable[[], Awaitable[Endpoint]],
        *,
        db: int = 0,
        connect_timeout: float = 1.0,
        io_timeout: float = 4.0,
        name: str = "",
        fallback: Fallback | None = None,
        scripts: Sequence[Script] = (),
    ) -> None:
        self._resolve = resolve
        self._scripts = tuple(scripts)
        self._db = db
        self._connect_timeout = connect_timeout
        self._io_timeout = io_timeout
        self._name = name
        self._fallback = fallback
        self._loop = asyncio.get_running_loop()
        self._pending: list[_Cmd] = []  # not yet written, in issue order
        self._retry_at = 0  # where in _pending retries go: before commands issued after them
        self._flush_scheduled = False
        self._conn: _Conn | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._closed = False

    # --- issuing ---

    def execute(self, *args: Any) -> asyncio.Future[Any]:
        fut = self._loop.create_future()
        self._enqueue(_Cmd(fut, args, None))
        return fut

    def execute_many(self, parts: list[bytes]) -> asyncio.Future[list[Any]]:
        """Commands already packed (one RESP command each), queued as one group: one
        future for all of them, resolved with their replies in order, an error reply or
        a connection failure in the place of each command it hit (nothing is raised).

        After a connection error the commands not yet answered are sent once more, the
        answered ones never. Not for a pipeline with a `fallback` (a Cluster's commands may
        each go elsewhere) nor for scripts (no NOSCRIPT handling).

        Why: a batch of plain publishes paid a future, a _Cmd and hiredis packing per
        SPUBLISH (app/engines/redis/publish.py's PlainGroup has the measurement)."""
        assert self._fallback is None
        fut: asyncio.Future[list[Any]] = self._loop.create_future()
        self._enqueue(_group(fut, parts))
        return fut

    def evalsha(
        self,
        script: Script,
        keys: Sequence[Any],
        args: Sequence[Any],
        packed: bytes | None = None,
    ) -> asyncio.Future[Any]:
        """`packed`, when given, is `keys` and `args` already encoded as RESP bulk strings
        (see resp.bulk): a caller that builds them from cached pieces saves hiredis packing
        every argument again (~0.3 µs each; a batch call has hundreds)."""
        fut = self._loop.create_future()
        cmd_args = ("EVALSHA", script.sha, len(keys), *keys, *args)
        data = None if packed is None else evalsha_command(script.sha, len(keys), len(args), packed)
        self._enqueue(_Cmd(fut, cmd_args, script, data))
        return fut

    def evalsha_packed(
        self, script: Script, nkeys: int, nargs: int, packed: bytes
    ) -> asyncio.Future[Any]:
        """EVALSHA of keys and args given only as RESP (`packed`: `nkeys` keys, then `nargs`
        args): no plain argument list is kept, so the command cannot be handed over to
        redis-py; not for a Cluster node's pipeline (which hands redirected commands over)."""
        assert self._fallback is None, "a Cluster node's pipeline needs the plain arguments"
        fut = self._loop.create_future()
        data = evalsha_command(script.sha, nkeys, nargs, packed)
        self._enqueue(_Cmd(fut, ("EVALSHA", script.sha, nkeys), script, data))
        return fut

    def _enqueue(self, cmd: _Cmd) -> None:
        if self._closed:
            _fail(cmd, RedisConnectionError("redis client closed"))
            return
        pending = self._pending
        pending.append(cmd)
        if len(pending) >= MAX_BATCH:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _requeue(self, cmd: _Cmd) -> None:
        """A retry goes ahead of every command issued after the retried one."""
        self._pending.insert(self._retry_at, cmd)
        self._retry_at += 1
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        conn = self._conn
        if conn is None:
            if self._pending and self._connecting is None and not self._closed:
                self._connecting = self._loop.create_task(self._connect())
            return
        pending = self._pending
        if not pending:
            return
        self._pending = []
        self._retry_at = 0
        inflight = conn.inflight
        if not inflight:
            conn.progress_at = self._loop.time()
            if self._watchdog is None and self._io_timeout > 0:
                self._watchdog = self._loop.call_later(self._io_timeout, self._check_progress)
        inflight.extend(pending)
        assert conn.transport is not None
        if len(pending) == 1:
            conn.transport.write(pending[0].data)
        else:
            conn.transport.write(b"".join([c.data for c in pending]))

    # --- connection ---

    async def _connect(self) -> None:
        try:
            loop = self._loop
            connect_by = loop.time() + self._connect_timeout if self._connect_timeout else None
            try:
                # One bound for finding the endpoint and dialling it.
                async with asyncio.timeout_at(connect_by):
                    ep = await self._resolve()
                if self._closed:
                    raise RedisConnectionError("redis client closed")
                # The name goes on every connection (the section's client_name, if any), as
                # rueidis sends ClientName in its HELLO.
                conn = await open_connection(
                    ep,
                    lambda: _Conn(self),
                    connect_by=connect_by,
                    handshake_timeout=self._io_timeout,
                    db=self._db,
                )
            except TimeoutError:
                raise RedisTimeoutError("Timeout connecting to server") from None
            except hiredis.ReplyError as e:
                # A command must never run as another user or in another database because
                # its handshake failed.
                raise _HandshakeError(f"redis handshake failed: {e}") from None
            except RedisConnectionError:
                raise
            except OSError as e:
                raise RedisConnectionError(f"Error connecting to redis: {e}") from None
        except BaseException as e:
            self._connecting = None
            if isinstance(e, Exception):
                self._connect_failed(e)
                return
            raise
        self._connecting = None
        self._conn = conn
        # Scripts load ahead of the waiting commands, in the same write: a restarted Redis
        # (empty script cache) answers no NOSCRIPT to them. A failed load is only logged.
        loads = [_Cmd(None, ("SCRIPT", "LOAD", s.body), s) for s in self._scripts]
        self._pending[0:0] = loads
        self._retry_at += len(loads)
        self._flush()

    def _connect_failed(self, exc: Exception) -> None:
        retryable = isinstance(exc, RedisConnectionError) and not isinstance(exc, _HandshakeError)
        pending, self._pending = self._pending, []
        self._retry_at = 0
        failed = 0
        for cmd in pending:
            if cmd.fut is not None and cmd.fut.done():
                continue
            if retryable and self._fallback is not None and cmd.fut is not None:
                self._hand_over(cmd)
            elif retryable and not cmd.retried:
                cmd.retried = True
                self._pending.append(cmd)
            else:
                failed += 1
                _fail(cmd, exc)
        if failed:
            log.debug("%s: %d command(s) failed: %s", self._name, failed, exc)
        if self._pending:
            self._connecting = self._loop.create_task(self._connect())

    def _drop(self, conn: _Conn, exc: Exception, retry: bool) -> None:
        """Takes `conn` out of service; its in-flight commands retry once or fail."""
        if conn.dropped:
            return
        conn.dropped = True
        if self._conn is conn:
            self._conn = None
        if conn.transport is not None:
            conn.transport.abort()
        inflight, conn.inflight = conn.inflight, deque()
        retries = []
        for cmd in inflight:
            fut = cmd.fut
            if fut is None or fut.done():
                continue
            if retry and self._fallback is not None:
                self._hand_over(cmd)
            elif retry and not cmd.retried:
                cmd.retried = True
                if cmd.replies:  # a group half answered: only the rest go again
                    assert cmd.parts is not None
                    cmd.data = b"".join(cmd.parts[len(cmd.replies) :])
                retries.append(cmd)
            else:
                _fail(cmd, exc)
        if retries:
            # After retries queued earlier (issued before these), before fresh commands.
            at = self._retry_at
            self._pending[at:at] = retries
            self._retry_at = at + len(retries)
        if self._pending and not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _check_progress(self) -> None:
        self._watchdog = None
        conn = self._conn
        if conn is None or not conn.inflight:
            return
        idle = self._loop.time() - conn.progress_at
        if idle >= self._io_timeout:
            log.warning("%s: no reply from redis in %.1fs, reconnecting", self._name, idle)
            self._drop(conn, RedisTimeoutError("Timeout reading from redis"), False)
            return
        self._watchdog = self._loop.call_later(self._io_timeout - idle, self._check_progress)

    # --- error replies ---

    def _on_error_reply(self, conn: _Conn, cmd: _Cmd, err: ResponseError) -> None:
        msg = str(err)
        if cmd.fut is None:
            # A script load of the handshake (not allowed by an ACL?): calls by SHA will fall
            # back to EVAL.
            name = cmd.script.name if cmd.script is not None else cmd.args[0]
            log.warning("%s: loading script %s failed: %s", self._name, name, msg)
            return
        if cmd.fut.done():
            return
        script = cmd.script
        if script is not None and not cmd.reloaded and msg.startswith("NOSCRIPT"):
            cmd.reloaded = True
            cmd.data = eval_command(cmd.data, script.body)
            self._requeue(cmd)
            return
        if msg.startswith("READONLY"):
            # Sentinel failover: still connected to the old master, now a replica. Reconnect
            # (resolving the master again) and retry, as redis-py's Sentinel client does.
            conn.inflight.appendleft(cmd)
            self._drop(conn, RedisConnectionError("the previous master is now a replica"), True)
            return
        if self._fallback is not None and msg.startswith(_REDIRECTS):
            self._hand_over(cmd)
            return
        cmd.fut.set_exception(err)

    def _hand_over(self, cmd: _Cmd) -> None:
        assert self._fallback is not None and cmd.fut is not None
        args = cmd.args
        if cmd.script is not None:
            args = ("EVAL", cmd.script.body, *args[2:])
        fut = cmd.fut
        task = self._loop.create_task(self._fallback(args))

        def done(t: asyncio.Task[Any]) -> None:
            if fut.done():
                if not t.cancelled():
                    t.exception()  # retrieved: the caller is gone
                return
            if t.cancelled():
                fut.cancel()
            elif (exc := t.exception()) is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(t.result())

        task.add_done_callback(done)

    # --- lifecycle ---

    async def close(self) -> None:
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
            self._connecting = None
        exc = RedisConnectionError("redis client closed")
        if self._conn is not None:
            self._drop(self._conn, exc, False)
        for cmd in self._pending:
            _fail(cmd, exc)
        self._pending = []
