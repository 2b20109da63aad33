"""Protocol pings of a connection: a ping every client.ping_interval (the first one
spread over half an interval), and a connection that sends no pong within
client.pong_timeout closed with 3012."""

from __future__ import annotations

import random

from app import metrics
from app.client.state import ClientState, State
from app.errors import DISCONNECT_NO_PONG, Disconnect
from app.transport import sends_pings


class PingPong(ClientState):
    """Pings and pongs: a part of `Client` (app/client/connection.py)."""

    __slots__ = ()

    def _pong_expected(self) -> bool:
        return (
            self.cfg.ping_interval > 0
            and self.cfg.pong_timeout > 0
            and not self.transport.unidirectional
        )

    def _pings(self) -> bool:
        # uni_grpc relies on HTTP/2 keepalive instead of protocol pings.
        return self.cfg.ping_interval > 0 and sends_pings(self.transport)

    def _schedule_ping(self, first: bool = False) -> None:
        interval = self.cfg.ping_interval
        if not self._pings():
            return
        # Spread the first ping so that a reconnect wave does not ping in lockstep.
        delay = random.uniform(interval / 2, interval) if first else interval
        self._ping_handle = self.node.timers.call_later(delay, self._on_ping_time)

    def _on_ping_time(self) -> None:
        if self.state is not State.CONNECTED:
            return
        self.send(self.codec.ping, "server_ping")
        if self._pong_expected() and not self._waiting_pong:
            self._waiting_pong = True
            self._ping_at = self.node.loop.time()
            self._pong_handle = self.node.timers.call_later(self.cfg.pong_timeout, self._on_no_pong)
        self._schedule_ping()

    def _on_pong(self) -> None:
        self._waiting_pong = False
        # centrifuge's observePingPongDuration: ping written to pong read.
        elapsed = self.node.loop.time() - self._ping_at
        metrics.child(metrics.PING_PONG_DURATION, self.transport.name).observe(elapsed)
        if self._pong_handle is not None:
            self._pong_handle.cancel()
            self._pong_handle = None

    def _on_no_pong(self) -> None:
        if self._waiting_pong:
            self.disconnect_soon(Disconnect(DISCONNECT_NO_PONG))
