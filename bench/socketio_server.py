"""python-socketio peer: the server a Python user would pick instead (perf-anchors §2, §3.6).

`socketio.AsyncServer` in aiohttp mode, WebSocket transport only, with `AsyncRedisManager`: every
emit from any process is published on the one Redis channel `socketio`, and each server process
receives it, decodes it and emits to the room's local clients. A client joins a room by emitting
`join` with the room name (the ack answers once it is in); the bench names rooms like the app's
channels. Publications come from the bench publisher as the manager's own messages
(`bench/publish.py`, mode `sio`), the way `AsyncRedisManager(write_only=True).emit(...)` sends
them from outside the server.

usage: python -m bench.socketio_server --port P --redis-port R [--channel socketio]
"""

from __future__ import annotations

import argparse

from aiohttp import web


def make_app(redis_port: int, channel: str) -> web.Application:
    import socketio  # python-socketio: only needed for this peer (`pip install '.[bench]'`)

    mgr = socketio.AsyncRedisManager(f"redis://127.0.0.1:{redis_port}/0", channel=channel)
    # python-socketio's defaults otherwise (ping every 25 s). The bench clients do not offer
    # permessage-deflate, so frames go out uncompressed as the app's do.
    sio = socketio.AsyncServer(async_mode="aiohttp", client_manager=mgr, transports=["websocket"])

    @sio.event
    async def join(sid: str, room: str) -> str:
        await sio.enter_room(sid, room)
        return "ok"

    async def health(request: web.Request) -> web.Response:
        # Every connected client is in the namespace's `None` room.
        clients = len(sio.manager.rooms.get("/", {}).get(None, ()))
        return web.json_response({"subscribers": clients})

    app = web.Application()
    sio.attach(app)
    app.router.add_get("/health", health)
    return app


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.socketio_server", description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--redis-port", type=int, required=True)
    ap.add_argument("--channel", default="socketio", help="Redis channel of the manager")
    args = ap.parse_args(argv)
    web.run_app(
        make_app(args.redis_port, args.channel),
        host=args.host,
        port=args.port,
        print=None,
        access_log=None,
        backlog=4096,
        shutdown_timeout=2.0,
    )


if __name__ == "__main__":
    main()
