"""What a node does with node-to-node control messages (their format: app/control.py).

The node that takes a server API action by user (subscribe, unsubscribe, disconnect,
refresh) applies it to its own connections and broadcasts it through the Controller; every
other node applies it to its own, and a node ignores its own broadcasts. Commands posted to
/emulation go to the node that holds the session's stream. Heartbeats, shutdown notices and
surveys are membership's (app/membership.py); this module answers the surveys.
"""

from __future__ import annotations

import base64
import fnmatch
import logging
from typing import TYPE_CHECKING, Any

from app import control
from app.broker import ControlEventHandler, Controller
from app.errors import Disconnect

if TYPE_CHECKING:
    from app.client import Client
    from app.node import Node

log = logging.getLogger("centrifugo.node")

LIVE_SURVEY = "admin_live"


class NodeControl:
    """The node's ControlEventHandler: registered with the Controller at start."""

    def __init__(self, node: Node, controller: Controller) -> None:
        self.id = node.id
        self._node = node
        self._controller = controller

    def handle_control(self, data: bytes) -> None:
        try:
            kind, origin, body = control.decode_message(data)
        except ValueError:
            log.warning("dropping malformed control message")
            return
        if origin == self.id:
            return
        node = self._node
        if kind == control.ACTION:
            node.spawn(self._apply(body))
        elif kind == control.EMULATION:
            self._deliver_emulation(body.get("session", ""), base64.b64decode(body.get("data", "")))
        else:
            node.membership.handle(kind, origin, body, node.spawn)

    # --- API actions by user ---

    async def user_action(self, action: control.UserAction, wait_local: bool = True) -> None:
        """Apply here, then tell every other node (their clients may be that user's too).
        With `wait_local` false the local part runs in the background, as it does on the
        other nodes: a connection closed here may take up to its close handshake's bound."""
        if wait_local:
            await self._apply(action)
        else:
            self._node.spawn(self._apply(action))
        await self._controller.publish_control(control.encode(self.id, action))

    def _user_clients(self, user: str, client: str = "", session: str = "") -> list[Client]:
        out = []
        for c in self._node.hub.user_connections(user):
            if client and c.uid != client:
                continue
            if session and c.session != session:
                continue
            out.append(c)
        return out  # type: ignore[return-value]

    async def _apply(self, a: control.UserAction) -> None:
        for c in self._user_clients(a.user, a.client, a.session):
            if a.op == "subscribe":
                await c.subscribe_server_side(
                    a.channel,
                    info=a.info,
                    data=a.data,
                    recover_since=a.recover_since,
                    expire_at=a.expire_at,
                    override=a.override,
                )
            elif a.op == "unsubscribe":
                for ch in [a.channel] if a.channel else c.channels():
                    await c.unsubscribe_server_side(ch)
            elif a.op == "disconnect":
                if c.uid not in a.whitelist:
                    await c.close(Disconnect(a.code, a.reason))
            elif a.op == "refresh":
                await c.refresh_server_side(expired=a.expired, expire_at=a.expire_at, info=a.info)

    # --- emulation ---

    async def emulation(self, node_id: str, session: str, data: bytes) -> bool:
        """Commands posted to /emulation: run them on the session's client, wherever
        its stream is held. False when the session is unknown here (local node)."""
        if node_id == self.id:
            return self._deliver_emulation(session, data)
        body = {"session": session, "data": base64.b64encode(data).decode()}
        await self._controller.publish_control(
            control.encode_message(control.EMULATION, self.id, body), node_id
        )
        return True

    def _deliver_emulation(self, session: str, data: bytes) -> bool:
        client = self._node.sessions.get(session)
        if client is None:
            return False
        # Commands of one session run in arrival order, like frames on a socket.
        client.enqueue_frame(data)
        return True

    # --- surveys ---

    async def answer_survey(self, op: str, data: Any) -> Any:
        """This node's answer to a survey (app/membership.py)."""
        if op == "channels":
            return self.local_channels(data or "")
        if op == LIVE_SURVEY:
            return self.live_sample()
        return None

    def live_sample(self) -> dict[str, Any]:
        """This node's counts for the admin UI's live charts (app/admin/live.py): the node
        info fields and the hub's publication and delivery totals since start."""
        hub = self._node.hub
        sample = self._node.local_info()
        sample["publications"] = hub.publications
        sample["deliveries"] = hub.deliveries
        return sample

    def local_channels(self, pattern: str) -> dict[str, int]:
        """Channel -> local subscribers, of the channels matching `pattern` ("": all)."""
        hub = self._node.hub
        out = {}
        for ch in hub.channels():
            if pattern and not fnmatch.fnmatchcase(ch, pattern):
                continue
            out[ch] = hub.num_subscribers(ch)
        return out


# Conformance, checked by mypy.
_handler: type[ControlEventHandler] = NodeControl
