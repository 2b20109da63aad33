"""Django Channels peer of `python -m bench.peers`: the server a Django user would pick.

A minimal Django project in one module, deployed as Channels' docs deploy one: the ASGI
`application` is a `ProtocolTypeRouter` (HTTP through Django's own ASGI handler, WebSocket
through a `URLRouter` to one consumer), served by daphne, with the `channels_redis`
RedisChannelLayer as CHANNEL_LAYERS["default"] (bench/peers/publishers.py `layer_options`).
Left out on purpose: `AuthMiddlewareStack` (no users, sessions or database here) and
`AllowedHostsOriginValidator` (the bench clients send no Origin header, which it refuses).

The consumer (`AsyncWebsocketConsumer`, as Channels' tutorial writes one) speaks the subset of
the Centrifugo JSON protocol that the load generator's clients send (bench/load.py), so the
clients are the same ones the app is measured with: the `connect` command is answered, the
`subscribe` command adds the connection to the group named by its channel
(`channel_layer.group_add`) and is answered once it is in. Every group message
(`group_send(group, {"type": "bench.pub", "data": ...})` from the publisher process) reaches
`bench_pub`, which sends the push `{"push": {"channel": ..., "pub": {"data": ...}}}`, one per
WebSocket frame. `GET /health` answers {"subscribers": <open WebSocket connections>}.

usage: BENCH_REDIS_PORT=R DJANGO_SETTINGS_MODULE=bench.peers.channels_site \\
       daphne -b 127.0.0.1 -p P bench.peers.channels_site:application
"""

from __future__ import annotations

import json
import os
from typing import Any

import django
from django.conf import settings

from bench.peers.publishers import layer_options

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench-only",
        ALLOWED_HOSTS=["127.0.0.1", "localhost"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=["daphne", "channels"],
        ASGI_APPLICATION=f"{__name__}.application",
        CHANNEL_LAYERS={
            "default": {
                "BACKEND": "channels_redis.core.RedisChannelLayer",
                "CONFIG": layer_options(int(os.environ.get("BENCH_REDIS_PORT", "6379"))),
            }
        },
        LOGGING_CONFIG=None,
    )
    django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402  (after setup)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402
from django.http import HttpRequest, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402

_open = 0  # WebSocket connections of this process, for /health


def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"subscribers": _open})


urlpatterns = [path("health", health)]


class BenchConsumer(AsyncWebsocketConsumer):
    joined: list[str]

    async def connect(self) -> None:
        global _open
        self.joined = []
        _open += 1
        await self.accept()

    async def disconnect(self, code: int) -> None:
        global _open
        _open -= 1
        for group in self.joined:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        replies: list[dict[str, Any]] = []
        # The load generator sends `connect` and `subscribe` in one frame, newline-separated,
        # and answers pings with `{}` (this server sends none).
        for line in (text_data or "").split("\n"):
            cmd: dict[str, Any] = json.loads(line) if line.strip() else {}
            if "subscribe" in cmd:
                group = cmd["subscribe"]["channel"]
                await self.channel_layer.group_add(group, self.channel_name)
                self.joined.append(group)
                replies.append({"id": cmd.get("id"), "subscribe": {}})
            elif "connect" in cmd:
                replies.append({"id": cmd.get("id"), "connect": {}})
        if replies:
            await self.send(text_data="\n".join(json.dumps(r) for r in replies))

    async def bench_pub(self, event: dict[str, Any]) -> None:
        channel = self.joined[0] if self.joined else ""
        push = {"push": {"channel": channel, "pub": {"data": event["data"]}}}
        await self.send(text_data=json.dumps(push))


application = ProtocolTypeRouter(
    {
        "http": get_asgi_application(),
        "websocket": URLRouter([path("connection/websocket", BenchConsumer.as_asgi())]),
    }
)
