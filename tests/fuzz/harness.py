"""The lean WebSocket server in this process, fed bytes directly (for the parser properties).

A real worker's server — `build_server` (app/hosting/server.py): the aiohttp app from
`create_app` (a memory-engine Node, every route) behind the `LeanServer` the worker installs,
which hands other requests to aiohttp's `web.Server` — runs on a private event loop. Each
session is a real socket pair: the server end is an asyncio transport whose protocol is a
`LeanWebSocket`; the fuzz bytes go straight into that protocol's `data_received` (so an
exception fails the example at its cause), and the peer end reads back what the server
wrote, up to the server closing the socket after the peer's EOF. Log records at error level
(or with a traceback) from the server's own loggers and exceptions the loop catches are
collected: bad input must cause neither.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.config import load_config
from app.hosting.server import build_server
from app.node import NODE_KEY

SESSION_TIMEOUT = 5.0
# The channels both the in-process and the e2e fuzz servers serve: history, presence, a
# namespace with join/leave and recovery, so generated commands reach those code paths.
CHANNELS: dict[str, Any] = {
    "without_namespace": {"presence": True, "history_size": 10, "history_ttl": "60s"},
    "namespaces": [
        {
            "name": "ns",
            "join_leave": True,
            "force_recovery": True,
            "history_size": 5,
            "history_ttl": "60s",
        }
    ],
}
_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def _text_frame(payload: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    return (
        bytes((0x81, 0x80 | len(payload)))
        + mask
        + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    )


_WARM_UP = (
    b"GET /connection/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: " + _KEY.encode() + b"\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
    + _text_frame(b'{"id":1,"connect":{}}')
    + _text_frame(b'{"id":2,"subscribe":{"channel":"warm"}}')
    + _text_frame(b'{"id":3,"publish":{"channel":"warm","data":1}}')
)  # one session; a hang fails the example instead of the whole run


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        # Ours and asyncio's. How loud aiohttp's request handler is about bad HTTP is set
        # by the worker's logging config, which this process does not load: the e2e fuzz
        # test reads a real server's log for that.
        if not record.name.startswith(("centrifugo", "asyncio")):
            return
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)


class InProcessServer:
    def __init__(self, config: dict[str, Any]) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(self._loop_error)
        self.loop_errors: list[dict[str, Any]] = []
        self._dir = tempfile.TemporaryDirectory(prefix="cfpy-fuzz-")
        path = Path(self._dir.name) / "config.json"
        path.write_text(json.dumps(config))
        cfg = load_config(str(path), env={})
        gc_threshold = gc.get_threshold()
        # The server a worker runs (app/hosting/server.py); its low-level server is the
        # LeanServer in front of aiohttp's, which the sessions below connect to directly.
        self._runner = build_server(cfg)
        self.app = self._runner.app
        self.loop.run_until_complete(self._runner.setup())
        # The node tunes the worker's GC on start-up; this process is not a worker.
        gc.unfreeze()
        gc.set_threshold(*gc_threshold)
        assert self._runner.server is not None
        self.lean = self._runner.server
        self.node = self.app[NODE_KEY]
        self._log = _Collect()
        logging.getLogger().addHandler(self._log)
        # The engines start some clean-up loops on first use (presence): one session that
        # uses them starts those, so that a session's own tasks are the ones it waits for.
        warm = self._session([_WARM_UP], lambda sent: sent.count(b'{"id":') >= 3, settle=False)
        self.loop.run_until_complete(asyncio.wait_for(warm, SESSION_TIMEOUT))
        self.take_errors()

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.loop_errors.append(context)

    def close(self) -> None:
        logging.getLogger().removeHandler(self._log)
        self.loop.run_until_complete(self._runner.cleanup())
        self.loop.close()
        self._dir.cleanup()

    def take_errors(self) -> list[str]:
        """Error-level log lines and loop exceptions since the last call."""
        out = [f"{r.levelname} {r.name}: {r.getMessage()}" for r in self._log.records]
        out += [str(c.get("exception") or c.get("message")) for c in self.loop_errors]
        self._log.records.clear()
        self.loop_errors.clear()
        return out

    def session(self, chunks: list[bytes], until: Callable[[bytes], bool] | None = None) -> bytes:
        """Feed `chunks` to one new connection, then (once the bytes the server wrote
        satisfy `until`, if given) EOF; the bytes the server wrote."""
        return self.loop.run_until_complete(
            asyncio.wait_for(self._session(chunks, until), SESSION_TIMEOUT)
        )

    async def _session(
        self, chunks: list[bytes], until: Callable[[bytes], bool] | None, settle: bool = True
    ) -> bytes:
        loop = self.loop
        before = asyncio.all_tasks()  # the node's own, this one and its waiter
        ours, peer = socket.socketpair()
        peer.setblocking(False)
        try:
            transport, _ = await loop.connect_accepted_socket(self.lean, ours)
            for chunk in chunks:
                if transport.is_closing():
                    break
                # Direct call: the protocol is the LeanWebSocket, or aiohttp's handler
                # once the connection was handed over.
                transport.get_protocol().data_received(chunk)  # type: ignore[attr-defined]
                await asyncio.sleep(0)  # one loop turn: the Client handles what it got
            received = bytearray()
            # The peer's EOF ends the connection at once, replies still queued or not.
            while until is not None and not until(bytes(received)):
                data = await loop.sock_recv(peer, 65536)
                assert data, f"closed before the expected answer: {bytes(received)!r}"
                received += data
            peer.shutdown(socket.SHUT_WR)
            while True:
                data = await loop.sock_recv(peer, 65536)
                if not data:
                    break
                received += data
            # The socket is closed; the connection's tasks (the Client's inbox, its
            # close, aiohttp's handler) end in a few loop turns and may start others.
            while settle and (pending := asyncio.all_tasks() - before):
                await asyncio.wait(pending)
            assert not self.node.clients, "a connection outlived its socket"
            return bytes(received)
        finally:
            peer.close()
