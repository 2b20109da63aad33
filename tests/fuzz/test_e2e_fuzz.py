"""Fuzzing a real server process over the network, with a bystander that must not notice.

One server (memory engine, `python -m app` as tests/e2e/helpers.py starts it) and one
long-lived bystander, a centrifuge-python client subscribed to a channel. Each Hypothesis
example opens a fuzzing connection and sends it generated input: JSON or Protobuf client
messages in well-formed WebSocket frames (then a probe command, so the connection
answers in bounded time: the probe's reply, or a close), raw frames with broken headers,
or a generated request head. After each example:
- what the server wrote on the fuzzing connection is in the documented set
  (tests/fuzz/outcome.py: no error 100, close codes 1000-1011 or 3000-3999, no 5xx);
- the bystander receives an API publication sent after it;
- the server log gained no traceback and no error-level line.
The whole file runs in well under a minute in the suite (deterministic draw, see
profiles.py); FUZZ_EXAMPLES=5000 runs it longer.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from centrifuge import (  # type: ignore[import-untyped]
    Client,
)
from e2e.helpers import ServerHandle, start_server
from hypothesis import example, given, settings
from hypothesis import strategies as st

from app.protocol.gen import client_pb2 as pb
from app.protocol.protobuf import varint
from tests.support.sdk import SubEvents

from . import strategies as S
from .harness import CHANNELS
from .outcome import Outcome, parse_server_bytes
from .profiles import LONG, examples

pytestmark = pytest.mark.timeout(0 if LONG else 120)

CHANNEL = "bystander"
PROBE_ID = 999_999
ANSWER_TIMEOUT = 10.0  # the probe's answer; a hang past this fails the example
CONFIG: dict[str, Any] = {
    "client": {"insecure": True},
    "channel": CHANNELS,
}


class Rig:
    """The server, the bystander and an HTTP session, on one event loop of their own."""

    def __init__(
        self,
        config: dict[str, Any] = CONFIG,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        env: dict[str, str] | None = None,
        bystander_user: str = "",
    ) -> None:
        """`bystander_user`: the bystander connects with a token of this user (needed
        where connections without a token go to a connect proxy)."""
        self.loop = loop or asyncio.new_event_loop()
        self.srv: ServerHandle = start_server(config, env=env)
        self._log_offset = 0
        self._seq = 0
        self.loop.run_until_complete(self._start(bystander_user))

    async def _start(self, user: str) -> None:
        self.http = aiohttp.ClientSession()
        token = self.srv.token(user) if user else ""
        self.bystander = Client(self.srv.ws_url, proxy=None, token=token)
        self.pubs = SubEvents()
        sub = self.bystander.new_subscription(CHANNEL, events=self.pubs)
        await self.bystander.connect()
        await sub.subscribe()
        await sub.ready(5)

    def close(self) -> None:
        async def stop() -> None:
            await self.bystander.disconnect()
            await self.http.close()

        self.loop.run_until_complete(stop())
        # The SDK closes its connection in a task of its own: let it finish.
        pending = asyncio.all_tasks(self.loop)
        self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()
        self.srv.stop()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def check_unharmed(self) -> None:
        """The bystander gets a publication made now; the log has no new error."""
        await self.bystander_gets_publication()
        bad = [
            line
            for line in self.new_log_lines()
            if '"level":"error"' in line or "Traceback" in line
        ]
        assert not bad, "server log for bad input:\n" + "\n".join(bad)

    def new_log_lines(self) -> list[str]:
        """The server log's lines written since the last call."""
        text = self.srv.log_text()
        new, self._log_offset = text[self._log_offset :], len(text)
        return new.splitlines()

    async def bystander_gets_publication(self) -> None:
        self._seq += 1
        data = orjson.dumps({"seq": self._seq})
        async with self.http.post(
            f"{self.srv.api_url}/publish",
            data=orjson.dumps({"channel": CHANNEL, "data": {"seq": self._seq}}),
            headers={"X-API-Key": self.srv.api_key},
        ) as resp:
            assert resp.status == 200, await resp.text()
        got = orjson.dumps((await self.pubs.next("publication", timeout=5.0)).pub.data)
        assert got == data, (got, data)


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    r = Rig()
    try:
        yield r
    finally:
        r.close()


# --------------------------------------------------------------------- connection

UPGRADE = (
    f"GET {S.WS_PATH}{{query}} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    f"Connection: Upgrade\r\nSec-WebSocket-Key: {S.KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def _pb(cmd: pb.Command) -> bytes:
    body = cmd.SerializeToString()
    return varint(len(body)) + body


def _pb_connect() -> bytes:
    cmd = pb.Command(id=1)
    cmd.connect.SetInParent()
    return _pb(cmd)


def _pb_probe() -> bytes:
    cmd = pb.Command(id=PROBE_ID)
    cmd.ping.SetInParent()
    return _pb(cmd)


JSON_OPEN = UPGRADE.format(query="").encode() + S.ws_frame(b'{"id":1,"connect":{}}')
JSON_PROBE = S.ws_frame(b'{"id":%d,"ping":{}}' % PROBE_ID)
PB_OPEN = UPGRADE.format(query="?format=protobuf").encode() + S.ws_frame(_pb_connect(), 2)
PB_PROBE = S.ws_frame(_pb_probe(), 2)


async def _exchange(
    rig: Rig, data: bytes, *, protobuf: bool = False, probe: bool = True
) -> Outcome:
    """Send `data`; read until the probe's reply or a close (probe=True), else until the
    server closes after our EOF. Then the bystander must be unharmed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", rig.srv.port)
    received = bytearray()
    reset = False
    try:
        writer.write(data)
        if not probe:
            writer.write_eof()
        async with asyncio.timeout(ANSWER_TIMEOUT):
            while True:
                try:
                    chunk = await reader.read(65536)
                except ConnectionResetError:
                    # The server aborts a socket it has closed (SO_LINGER 0, so a peer that
                    # never reads cannot hold it); the reset may overtake its last bytes.
                    reset = True
                    break
                if not chunk:
                    break
                received += chunk
                if probe and _answered(bytes(received), protobuf):
                    break
    finally:
        writer.close()
    out = parse_server_bytes(bytes(received), protobuf=protobuf, reset=reset)
    if probe and out.status == 101 and not reset:
        assert out.close_code is not None or any(r.get("id") == PROBE_ID for r in out.replies), (
            f"neither the probe's reply nor a close: {out}"
        )
    await rig.check_unharmed()
    return out


def _answered(data: bytes, protobuf: bool) -> bool:
    try:
        out = parse_server_bytes(data, protobuf=protobuf)
    except (AssertionError, IndexError, ValueError):
        return False  # a frame cut in two so far
    if out.status and out.status != 101:
        return True
    return out.close_code is not None or any(r.get("id") == PROBE_ID for r in out.replies)


def _message(payload: bytes) -> bytes:
    """A well-formed frame: text when the payload is UTF-8 (as SDKs send JSON), else binary."""
    try:
        payload.decode()
    except UnicodeDecodeError:
        return S.ws_frame(payload, 2)
    return S.ws_frame(payload, 1)


# ------------------------------------------------------------------------ examples


@settings(max_examples=examples(150))
@given(st.lists(st.one_of(S.json_frames(), st.binary(max_size=64)), min_size=1, max_size=3))
def test_json_messages_get_documented_answers(rig: Rig, messages: list[bytes]) -> None:
    data = JSON_OPEN + b"".join(_message(m) for m in messages) + JSON_PROBE
    rig.run(_exchange(rig, data))


@settings(max_examples=examples(100))
@given(st.lists(st.one_of(S.pb_frames(), st.binary(max_size=64)), min_size=1, max_size=3))
def test_protobuf_messages_get_documented_answers(rig: Rig, messages: list[bytes]) -> None:
    data = PB_OPEN + b"".join(S.ws_frame(m, 2) for m in messages) + PB_PROBE
    rig.run(_exchange(rig, data, protobuf=True))


@settings(max_examples=examples(100))
@given(st.lists(S.ws_frames(st.one_of(S.json_frames(), st.binary(max_size=64))), max_size=4))
def test_broken_frames_get_documented_answers(rig: Rig, frames: list[bytes]) -> None:
    rig.run(_exchange(rig, JSON_OPEN + b"".join(frames), probe=False))


@settings(max_examples=examples(60))
@given(S.request_heads())
# A key that is not ASCII: aiohttp's handshake raises ValueError (HTTP 500, a traceback).
@example(UPGRADE.format(query="").replace(S.KEY, "\u0080").encode().rstrip(b"\r\n"))
def test_request_heads_get_documented_answers(rig: Rig, head: bytes) -> None:
    rig.run(_exchange(rig, head + b"\r\n\r\n", probe=False))


def test_the_rig_sees_error_100_and_a_traceback_as_failures(rig: Rig) -> None:
    """The checks can fail: a reply with error 100 is refused by the outcome parser (the
    server does not answer 100 on demand, so the frame is built here)."""
    reply = b'{"id":5,"error":{"code":100,"message":"internal server error"}}'
    head = b"HTTP/1.1 101 Switching Protocols\r\n\r\n"
    with pytest.raises(AssertionError, match="error 100"):
        parse_server_bytes(head + bytes((0x81, len(reply))) + reply)
    assert os.path.exists(rig.srv.log_path)
