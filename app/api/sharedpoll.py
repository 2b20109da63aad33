"""The server API's `shared_poll_publish` (Centrifugo 6.8+, internal/api/api.go
SharedPollPublish): push a new version of a tracked item to its subscribers without
waiting for the next poll.

Checks in Centrifugo's order, with its codes: empty channel or key, or version 0, is 107;
an unknown namespace 102; a namespace that is not shared_poll 107; `publish_enabled` off is
108 with one warning line; bad b64data 107. The item goes to the subscribers of every
worker (through the broker with the Redis engine, app/sharedpoll/manager.py), applied as
centrifuge's handlePublishedData: versioned channels only, a version not newer than the
one held is skipped (shared_poll_publish_count{result="skipped"}).

`SharedPollApi.handlers()` joins the executor's method table; the request shape is in
app/api/decode.py (SPECS).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from app.api.decode import b64decode
from app.api.errors import api_error
from app.errors import ERROR_UNKNOWN_CHANNEL, ClientError
from app.jsonraw import payload

if TYPE_CHECKING:
    from app.node import Node

log = logging.getLogger("centrifugo.api")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class SharedPollApi:
    def __init__(self, node: Node) -> None:
        self.node = node

    def handlers(self) -> dict[str, Handler]:
        return {"shared_poll_publish": self.shared_poll_publish}

    async def shared_poll_publish(self, req: dict[str, Any]) -> dict[str, Any]:
        channel, key, version = req["channel"], req["key"], req["version"]
        if not channel or not key or version == 0:
            raise api_error(107)
        try:
            ns = self.node.resolve(channel).options
        except ClientError as e:
            if e.code == ERROR_UNKNOWN_CHANNEL:
                raise api_error(ERROR_UNKNOWN_CHANNEL) from None
            raise api_error(100) from None
        if ns.subscription_type != "shared_poll":
            raise api_error(107)
        if not ns.shared_poll.publish_enabled:
            log.warning(
                "shared_poll publish_enabled is not enabled for channel %r in configuration",
                channel,
            )
            raise api_error(108)
        data = b64decode(req["b64data"]) if req["b64data"] else payload(req["data"])
        await self.node.shared_poll.publish(channel, key, version, req["epoch"], data)
        return {}
