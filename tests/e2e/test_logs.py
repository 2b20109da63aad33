"""Structured logs end to end: JSON lines, `log.level`, `log.file`, one line per refused client.

Real server processes; their stderr is captured in `ServerHandle.log_path`. A refused connection
is logged before the server closes the socket, so once the client has seen the close, its line is
in the log; "exactly one line" is checked between snapshots taken around each refusal, with a
last refusal as a barrier so late extra lines of the one before would be noticed.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .helpers import RawWS, ServerHandle
from .redis_e2e_helpers import ApiClient, RedisProcess, redis_config, worker_of, worker_pids

REQUIRED = ("level", "time", "message", "worker")
GOOD_ORIGIN = "http://good.example"


def parse_lines(text: str) -> list[dict[str, Any]]:
    """Every non-empty line as a JSON object (fails on the first line that is not)."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"log line is not JSON: {line!r}") from None
        assert isinstance(obj, dict), line
        out.append(obj)
    return out


def centrifugo_lines(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [ln for ln in lines if str(ln.get("logger", "")).startswith("centrifugo")]


async def refuse_bad_token(srv: ServerHandle) -> tuple[int | None, str]:
    async with RawWS.connect(srv.ws_url) as ws:
        await ws.send({"id": 1, "connect": {"token": "not.a.jwt"}})
        return await ws.wait_closed()


async def refuse_bad_json(srv: ServerHandle) -> tuple[int | None, str]:
    async with RawWS.connect(srv.ws_url) as ws:
        await ws.send_text("{this is not json")
        return await ws.wait_closed()


async def refuse_origin(srv: ServerHandle) -> int:
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await s.ws_connect(srv.ws_url, headers={"Origin": "http://evil.example"})
    return e.value.status


def log_config(**extra: Any) -> dict[str, Any]:
    # Logging does not depend on the engine: memory only (the 2-worker test uses Redis).
    return {"engine": {"type": "memory"}, "client": {"allowed_origins": [GOOD_ORIGIN]}, **extra}


# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def srv(server_factory) -> ServerHandle:
    return server_factory(log_config())


async def test_refused_connections_log_one_line_each(srv: ServerHandle) -> None:
    counts: list[int] = []

    def mark() -> None:
        counts.append(len(srv.log_text().splitlines()))

    mark()
    assert await refuse_bad_token(srv) == (3500, "invalid token")
    mark()
    assert await refuse_bad_json(srv) == (3501, "bad request")
    mark()
    assert await refuse_origin(srv) == 403
    mark()
    # Barrier: a last refusal whose own line shows that everything before it was written.
    assert (await refuse_bad_json(srv))[0] == 3501
    text = srv.log_text()
    lines = text.splitlines()
    assert len(lines) > counts[-1], "barrier refusal left no line"

    chunks = [lines[a:b] for a, b in zip(counts, counts[1:], strict=False)]
    expectations = [("3500", "invalid token"), ("3501", "bad request"), ("origin", "evil.example")]
    for chunk, (code, reason) in zip(chunks, expectations, strict=True):
        assert len(chunk) == 1, f"expected one line for {code}, got:\n" + "\n".join(chunk)
        (obj,) = parse_lines(chunk[0])
        message = obj["message"].lower()
        assert code.lower() in message and reason in message, obj
        assert obj["level"] == "info", obj  # a client mistake, not a server fault
        assert "error" not in obj, obj  # no exception attached
    assert "Traceback" not in text


async def test_lines_are_json_with_worker_and_node(srv: ServerHandle) -> None:
    await refuse_bad_json(srv)
    lines = parse_lines(srv.log_text())
    for obj in lines:
        for key in REQUIRED:
            assert key in obj, f"{key} missing: {obj}"
        assert obj["level"] in ("debug", "info", "warn", "error", "fatal"), obj
        assert isinstance(obj["worker"], int), obj
    own = centrifugo_lines(lines)
    assert own, "no server line in the log"
    nodes = {obj.get("node") for obj in own}
    info = srv.api("info")["result"]["nodes"]
    assert nodes == {n["uid"] for n in info}, (nodes, info)


async def test_each_worker_logs_its_own_node(server_factory, redis_server: RedisProcess) -> None:
    srv = server_factory(redis_config(redis_server.port), workers=2)
    seen: set[int] = set()
    # Refusals until both workers have refused one (the kernel picks the worker).
    for _ in range(60):
        async with RawWS.connect(srv.ws_url) as ws:
            pid = worker_of(srv, ws.ws.get_extra_info("sockname")[1])
            assert pid is not None
            await ws.send_text("nonsense")
            assert (await ws.wait_closed())[0] == 3501
        seen.add(pid)
        if len(seen) == 2:
            break
    assert seen == set(worker_pids(srv))
    api = ApiClient(srv)
    try:
        # Both workers know each other once their heartbeats crossed.
        for _ in range(100):
            info = (await api.result("info"))["nodes"]
            if len(info) == 2:
                break
            await asyncio.sleep(0.1)  # poll interval
    finally:
        await api.close()
    own = centrifugo_lines(parse_lines(srv.log_text()))
    node_of: dict[int, set[str]] = {}
    for obj in own:
        node_of.setdefault(obj["worker"], set()).add(obj["node"])
    assert set(node_of) == seen, node_of
    assert all(len(v) == 1 for v in node_of.values()), node_of  # one node per worker
    assert {n for v in node_of.values() for n in v} == {n["uid"] for n in info}


async def test_level_error_suppresses_info(server_factory) -> None:
    srv = server_factory(log_config(log={"level": "error"}))
    assert (await refuse_bad_json(srv))[0] == 3501
    assert await refuse_origin(srv) == 403
    # The refusals' info lines would be written before the close the client saw.
    lines = parse_lines(srv.log_text())
    assert [ln for ln in lines if ln["level"] in ("debug", "info", "warn")] == []


async def test_level_debug_keeps_info(server_factory) -> None:
    srv = server_factory(log_config(log={"level": "debug"}))
    assert (await refuse_bad_json(srv))[0] == 3501
    lines = parse_lines(srv.log_text())
    assert any(ln["level"] == "info" and "3501" in ln["message"] for ln in lines), lines


async def test_log_file(server_factory, tmp_path: Path) -> None:
    path = tmp_path / "server.log"
    srv = server_factory(log_config(log={"level": "info", "file": str(path)}))
    assert (await refuse_bad_json(srv))[0] == 3501
    lines = parse_lines(path.read_text())
    assert any("3501" in ln["message"] for ln in centrifugo_lines(lines)), lines
    assert any(ln.get("logger") == "gunicorn.error" for ln in lines), "gunicorn lines go there too"
    # Nothing of it on stderr.
    assert "3501" not in srv.log_text()
    assert not [ln for ln in srv.log_text().splitlines() if ln.startswith("{")]
