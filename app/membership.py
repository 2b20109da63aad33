"""Which nodes exist, and questions asked of all of them (research/redis-engine.md §6).

Every node broadcasts its info every HEARTBEAT seconds; peers keep a registry
and forget a node silent for EXPIRE seconds (or at once on its shutdown
message). `info` is then a local read. A survey broadcasts a question and
gathers one answer per known node, up to a deadline.

A node's metrics snapshot (app/info_metrics.py) rides in its info as centrifuge's pubNode
carries it: only in the first heartbeat after it was taken, peers keeping the last one they
got (nodeRegistry.add); a newcomer's greeting carries it too, so a new peer need not wait an
interval for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from app import control

log = logging.getLogger("centrifugo.membership")

HEARTBEAT = 3.0
EXPIRE = 7.0
SURVEY_TIMEOUT = 5.0


class Membership:
    def __init__(
        self,
        node_id: str,
        local_info: Callable[[], dict[str, Any]],
        send: Callable[[bytes, str], Awaitable[None]],
        answer: Callable[[str, Any], Awaitable[Any]],
    ) -> None:
        """send(data, node_id) publishes a control message ("" = everyone);
        answer(op, data) computes this node's reply to a survey."""
        self._id = node_id
        self._local_info = local_info
        self._send = send
        self._answer = answer
        self._peers: dict[str, tuple[dict[str, Any], float]] = {}
        self._surveys: dict[str, tuple[asyncio.Future[None], list[Any]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._metrics: dict[str, Any] | None = None
        self._metrics_unsent = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._heartbeat())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self._send(control.encode_message(control.SHUTDOWN, self._id, {}), "")

    def set_metrics(self, snapshot: dict[str, Any]) -> None:
        """This node's latest metrics snapshot: sent with the next heartbeat."""
        self._metrics = snapshot
        self._metrics_unsent = True

    def _info(self, with_metrics: bool) -> dict[str, Any]:
        info = self._local_info()
        if with_metrics and self._metrics is not None:
            info["metrics"] = self._metrics
        return info

    async def _heartbeat(self) -> None:
        while True:
            try:
                # Sent once per snapshot: it can be sizeable, and peers keep the last one.
                snapshot = self._metrics
                unsent = self._metrics_unsent
                await self._send(
                    control.encode_message(control.NODE, self._id, self._info(unsent)), ""
                )
                if unsent and snapshot is self._metrics:
                    self._metrics_unsent = False
            except Exception as e:  # broker down: peers will expire us, we retry
                log.debug("heartbeat failed: %s", e)
            now = time.monotonic()
            for uid, (_, seen) in list(self._peers.items()):
                if now - seen > EXPIRE:
                    del self._peers[uid]
            await asyncio.sleep(HEARTBEAT)

    # --- incoming ---

    def handle(self, kind: str, origin: str, body: Any, spawn: Callable[[Any], Any]) -> None:
        if kind == control.NODE:
            if origin not in self._peers:
                # A newcomer: tell it about us now rather than in up to 3 s.
                spawn(
                    self._send_best_effort(
                        control.encode_message(control.NODE, self._id, self._info(True)), origin
                    )
                )
            else:
                known = self._peers[origin][0].get("metrics")
                if known is not None and "metrics" not in body:
                    body = {**body, "metrics": known}
            self._peers[origin] = (body, time.monotonic())
        elif kind == control.SHUTDOWN:
            self._peers.pop(origin, None)
        elif kind == control.SURVEY:
            spawn(self._reply(origin, body))
        elif kind == control.REPLY:
            pending = self._surveys.get(body.get("id", ""))
            if pending is not None:
                fut, answers = pending
                answers.append(body.get("data"))
                if len(answers) >= len(self._peers) and not fut.done():
                    fut.set_result(None)

    async def _reply(self, origin: str, body: dict[str, Any]) -> None:
        data = await self._answer(body["op"], body.get("data"))
        await self._send_best_effort(
            control.encode_message(control.REPLY, self._id, {"id": body["id"], "data": data}),
            origin,
        )

    async def _send_best_effort(self, data: bytes, to: str) -> None:
        """A message nobody waits on (a greeting, a survey reply): when the broker is down
        it is lost like a heartbeat (the broker has logged why); the survey times out."""
        try:
            await self._send(data, to)
        except Exception as e:
            log.debug("control message to %s lost: %s", to or "all", e)

    # --- queries ---

    @property
    def num_peers(self) -> int:
        return len(self._peers)

    def nodes(self) -> list[dict[str, Any]]:
        return [self._info(True)] + [info for info, _ in self._peers.values()]

    async def survey(self, op: str, data: Any) -> list[Any]:
        """Answers of every node, this one first."""
        answers = [await self._answer(op, data)]
        if not self._peers:
            return answers
        sid = str(uuid.uuid4())
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        replies: list[Any] = []
        self._surveys[sid] = (fut, replies)
        try:
            await self._send(
                control.encode_message(
                    control.SURVEY, self._id, {"id": sid, "op": op, "data": data}
                ),
                "",
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SURVEY_TIMEOUT):
                    await fut
        finally:
            del self._surveys[sid]
        return answers + replies
