"""Helpers for end-to-end tests: real server processes, tokens, raw WebSocket, centrifuge-js.

Everything here talks to a real `python -m app` process on a 127.0.0.1 free port; nothing is
mocked. Import from test modules in this package as `from .helpers import ...`.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt

# free_port is re-exported: the e2e tests take it from here with the other helpers.
from tests.support.ports import accepts, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
JS_DIR = Path(__file__).resolve().parent / "js"
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


# --------------------------------------------------------------------------------------------
# ports and config


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Nested dict merge; values in `override` win, dicts are merged key by key."""
    out: dict[str, Any] = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _section(cfg: dict[str, Any], *path: str) -> dict[str, Any]:
    node = cfg
    for key in path:
        node = node.setdefault(key, {})
    return node


def prepare_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Fill in what every test server needs unless the test set it explicitly.

    Binds 127.0.0.1, enables /health (the readiness probe), and gives the connection token and
    the HTTP API random keys when none are configured, so `.hmac_key` / `.api_key` always work.
    """
    cfg = copy.deepcopy(dict(config))
    _section(cfg, "http_server").setdefault("address", "127.0.0.1")
    _section(cfg, "health").setdefault("enabled", True)
    _section(cfg, "client", "token").setdefault("hmac_secret_key", "hmac-" + secrets.token_hex(16))
    http_api = _section(cfg, "http_api")
    if not http_api.get("insecure"):
        http_api.setdefault("key", "api-" + secrets.token_hex(16))
    _section(cfg, "log").setdefault("level", "info")
    return cfg


# --------------------------------------------------------------------------------------------
# tokens


def make_token(
    secret: str,
    user: str = "",
    *,
    ttl: float | None = None,
    algorithm: str = "HS256",
    **claims: Any,
) -> str:
    """A connection JWT: `sub` = user, `exp` = now + ttl when ttl is given, extra claims as is."""
    payload: dict[str, Any] = {"sub": user, "iat": int(time.time())}
    if ttl is not None:
        payload["exp"] = int(time.time() + ttl)
    payload.update(claims)
    return jwt.encode(payload, secret, algorithm=algorithm)


def make_sub_token(
    secret: str,
    user: str,
    channel: str,
    *,
    ttl: float | None = None,
    algorithm: str = "HS256",
    **claims: Any,
) -> str:
    """A subscription JWT for `channel` (claims `sub`, `channel`, optional `exp`)."""
    return make_token(secret, user, ttl=ttl, algorithm=algorithm, channel=channel, **claims)


# --------------------------------------------------------------------------------------------
# server process


class ServerStartError(RuntimeError):
    pass


@dataclass
class ServerHandle:
    """A running server process. Created by `start_server`; stopped with `stop()`."""

    config: dict[str, Any]
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    workdir: Path
    _stopped: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        prefix = self.config.get("websocket", {}).get("handler_prefix", "/connection/websocket")
        return f"ws://127.0.0.1:{self.port}{prefix}"

    @property
    def api_url(self) -> str:
        prefix = self.config.get("http_api", {}).get("handler_prefix", "/api")
        return f"{self.url}{prefix}"

    @property
    def api_key(self) -> str:
        return self.config.get("http_api", {}).get("key", "")

    @property
    def hmac_key(self) -> str:
        return self.config["client"]["token"].get("hmac_secret_key", "")

    @property
    def sub_hmac_key(self) -> str:
        """Key for subscription tokens: the separate one when `subscription_token.enabled`."""
        sub = self.config.get("client", {}).get("subscription_token", {})
        if sub.get("enabled"):
            return sub.get("hmac_secret_key", "")
        return self.hmac_key

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def token(self, user: str = "", *, ttl: float | None = None, **claims: Any) -> str:
        return make_token(self.hmac_key, user, ttl=ttl, **claims)

    def sub_token(self, user: str, channel: str, *, ttl: float | None = None, **claims: Any) -> str:
        return make_sub_token(self.sub_hmac_key, user, channel, ttl=ttl, **claims)

    def api(self, method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Synchronous POST /api/<method>; returns the parsed JSON body (asserts HTTP 200)."""
        status, body = self.api_raw(method, json.dumps(params or {}).encode())
        assert status == 200, f"api {method}: HTTP {status}: {body!r}\n{self.log_tail()}"
        return json.loads(body)

    def api_raw(
        self, method: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> tuple[int, bytes]:
        hdrs = {"Content-Type": "application/json", "X-API-Key": self.api_key}
        if headers is not None:
            hdrs = dict(headers)
        req = urllib.request.Request(f"{self.api_url}/{method}", data=body, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    async def api_async(
        self, method: str, params: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        async with aiohttp.ClientSession() as s:
            async with s.post(
                f"{self.api_url}/{method}", json=params or {}, headers={"X-API-Key": self.api_key}
            ) as resp:
                text = await resp.text()
                assert resp.status == 200, f"api {method}: HTTP {resp.status}: {text!r}"
                return json.loads(text)

    async def publish_each(self, channel: str, *datas: Any) -> list[dict[str, Any]]:
        """API publish of each of `datas` to `channel` in turn; their results."""
        out = []
        for d in datas:
            rep = await self.api_async("publish", {"channel": channel, "data": d})
            assert "result" in rep, rep
            out.append(rep["result"])
        return out

    def js_env(self, **extra: str) -> dict[str, str]:
        """Environment for `run_js`: URLs and keys of this server plus `extra`."""
        env = {
            "CF_WS_URL": self.ws_url,
            "CF_HTTP_URL": self.url,
            "CF_API_KEY": self.api_key,
            "CF_HMAC_KEY": self.hmac_key,
            "CF_SUB_HMAC_KEY": self.sub_hmac_key,
        }
        env.update(extra)
        return env

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_text().splitlines()
        return "----- server log (tail) -----\n" + "\n".join(text[-lines:])

    def stop(self, check_log: bool = True) -> None:
        """SIGTERM, SIGKILL after 10 s; then assert the log shows no Python traceback."""
        if self._stopped:
            return
        self._stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                # The process group is ours (start_new_session): take gunicorn workers too.
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(5)
        text = self.log_text()
        shutil.rmtree(self.workdir, ignore_errors=True)
        if check_log:
            assert "Traceback" not in text, f"server log has a traceback:\n{text[-8000:]}"


def _probe_ready(handle: ServerHandle) -> bool:
    if handle.config.get("health", {}).get("enabled", True):
        prefix = handle.config.get("health", {}).get("handler_prefix", "/health")
        try:
            with urllib.request.urlopen(f"{handle.url}{prefix}", timeout=0.5) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False
    return accepts(handle.port)


def start_server(
    config: Mapping[str, Any],
    workers: int = 1,
    env: Mapping[str, str] | None = None,
    args: Iterable[str] = (),
    ready: Callable[[ServerHandle], bool] | None = None,
) -> ServerHandle:
    """Start `python -m app -c <tmp config> --http_server.port <free port>` and wait for /health.

    `ready(handle)`, when given, replaces the /health 200 probe (a server started while its
    Redis is down answers 500 until Redis is back).

    `config` is completed by `prepare_config`. `env` is added to the inherited environment
    (with any CENTRIFUGO_* variables of the caller removed so they cannot leak into tests).
    `workers` is passed as `--workers N`. Raises ServerStartError with the log if the process
    exits or /health does not answer within READY_TIMEOUT seconds.
    """
    cfg = prepare_config(config)
    workdir = Path(tempfile.mkdtemp(prefix="cfpy-e2e-"))
    config_path = workdir / "config.json"
    config_path.write_text(json.dumps(cfg, indent=2))
    log_path = workdir / "server.log"
    port = free_port()
    cmd = [sys.executable, "-m", "app", "-c", str(config_path), "--http_server.port", str(port)]
    # Always explicit, so a WEB_CONCURRENCY in the caller's environment cannot change it.
    cmd += ["--workers", str(workers), *args]
    proc_env = {k: v for k, v in os.environ.items() if not k.startswith("CENTRIFUGO_")}
    proc_env["PYTHONUNBUFFERED"] = "1"
    if env:
        proc_env.update(env)
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=proc_env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    handle = ServerHandle(config=cfg, port=port, proc=proc, log_path=log_path, workdir=workdir)
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if proc.poll() is not None:
            text = handle.log_text()
            handle.stop(check_log=False)
            raise ServerStartError(f"server exited with {proc.returncode} before ready:\n{text}")
        if (ready or _probe_ready)(handle):
            return handle
        if time.monotonic() > deadline:
            text = handle.log_text()
            handle.stop(check_log=False)
            raise ServerStartError(f"server not ready after {READY_TIMEOUT}s:\n{text}")
        time.sleep(0.05)  # poll interval of the readiness loop, not synchronisation


# --------------------------------------------------------------------------------------------
# raw WebSocket (protocol-level tests)


class WSClosed(Exception):
    """The server closed the socket; `code` and `reason` are from its close frame."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"websocket closed: {code} {reason!r}")
        self.code = code
        self.reason = reason


class RawWS:
    """A JSON-protocol WebSocket client speaking raw frames (aiohttp).

    Frames may hold several newline-separated replies; `recv()` returns them one at a time and
    keeps pushes and pings for later inspection via `pushes` / `pings`.

        async with RawWS.connect(server.ws_url) as ws:
            reply = await ws.command({"connect": {"token": t}})
    """

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._session = session
        self.ws = ws
        self._pending: list[dict[str, Any]] = []
        self._next_id = 1
        self.pushes: list[dict[str, Any]] = []
        self.pings = 0
        self.close_code: int | None = None
        self.close_reason: str = ""

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        protocols: Iterable[str] = (),
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
    ) -> _RawWSContext:
        return _RawWSContext(cls, url, tuple(protocols), dict(headers or {}), timeout)

    async def send_text(self, text: str) -> None:
        await self.ws.send_str(text)

    async def send(self, *commands: Mapping[str, Any]) -> None:
        """Send commands in ONE text frame, newline-separated."""
        await self.ws.send_str("\n".join(json.dumps(c, separators=(",", ":")) for c in commands))

    def next_id(self) -> int:
        i = self._next_id
        self._next_id += 1
        return i

    async def recv_frame(self, timeout: float = 5.0) -> str:
        """The next text frame as is. Raises WSClosed on close, TimeoutError on silence."""
        msg = await asyncio.wait_for(self.ws.receive(), timeout)
        if msg.type == aiohttp.WSMsgType.TEXT:
            return msg.data
        if msg.type == aiohttp.WSMsgType.BINARY:
            raise AssertionError(f"unexpected binary frame on a JSON connection: {msg.data!r}")
        if msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSING,
            aiohttp.WSMsgType.CLOSED,
        ):
            if msg.type == aiohttp.WSMsgType.CLOSE:
                self.close_code, self.close_reason = msg.data, msg.extra or ""
            else:
                self.close_code = self.ws.close_code
            raise WSClosed(self.close_code, self.close_reason)
        if msg.type == aiohttp.WSMsgType.ERROR:
            raise WSClosed(self.ws.close_code, f"error: {msg.data!r}")
        raise AssertionError(f"unexpected websocket message {msg!r}")

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next reply object (pings `{}` included), splitting multi-reply frames."""
        if not self._pending:
            frame = await self.recv_frame(timeout)
            for line in frame.split("\n"):
                if line.strip():
                    self._pending.append(json.loads(line))
        return self._pending.pop(0)

    async def reply(self, cmd_id: int, timeout: float = 5.0) -> dict[str, Any]:
        """Wait for the reply with `id` == cmd_id; pushes and pings seen meanwhile are recorded."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError(f"no reply with id {cmd_id}")
            obj = await self.recv(left)
            if obj.get("id") == cmd_id:
                return obj
            self._record(obj)

    async def push(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next push (already received pushes first); pings are counted and skipped."""
        if self.pushes:
            return self.pushes.pop(0)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError("no push")
            obj = await self.recv(left)
            if "push" in obj:
                return obj["push"]
            self._record(obj)

    def _record(self, obj: dict[str, Any]) -> None:
        if "push" in obj:
            self.pushes.append(obj["push"])
        elif not obj:
            self.pings += 1
        else:
            raise AssertionError(f"unexpected reply {obj!r}")

    async def command(self, cmd: Mapping[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        """Send one command (an `id` is added unless present) and return its reply."""
        body = dict(cmd)
        if "id" not in body:
            body["id"] = self.next_id()
        await self.send(body)
        return await self.reply(body["id"], timeout)

    async def connect_cmd(self, token: str = "", **fields: Any) -> dict[str, Any]:
        """Send `connect` and return the reply (asserts nothing)."""
        req: dict[str, Any] = dict(fields)
        if token:
            req["token"] = token
        return await self.command({"connect": req})

    async def wait_closed(self, timeout: float = 5.0) -> tuple[int | None, str]:
        """Read until the server closes; returns (code, reason). Replies meanwhile are recorded."""
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            while True:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    raise TimeoutError("server did not close the connection")
                self._pending.clear()
                await self.recv_frame(left)
        except WSClosed as e:
            return e.code, e.reason

    async def close(self) -> None:
        await self.ws.close()
        await self._session.close()


class _RawWSContext:
    def __init__(
        self,
        cls: type[RawWS],
        url: str,
        protocols: tuple[str, ...],
        headers: dict[str, str],
        timeout: float,
    ) -> None:
        self._args = (cls, url, protocols, headers, timeout)
        self._client: RawWS | None = None

    async def __aenter__(self) -> RawWS:
        cls, url, protocols, headers, timeout = self._args
        session = aiohttp.ClientSession()
        try:
            ws = await session.ws_connect(
                url,
                protocols=protocols,
                headers=headers,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=timeout),
                autoping=True,
                max_msg_size=0,
            )
        except BaseException:
            await session.close()
            raise
        self._client = cls(session, ws)
        return self._client

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.close()


# --------------------------------------------------------------------------------------------
# centrifuge-js


class JsScenarioError(AssertionError):
    def __init__(self, message: str, output: dict[str, Any] | None, stderr: str) -> None:
        super().__init__(f"{message}\n----- node stderr -----\n{stderr[-6000:]}")
        self.output = output
        self.stderr = stderr


def node_available() -> str | None:
    """None when node and the installed centrifuge-js are usable, else the reason they are not."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (JS_DIR / "node_modules" / "centrifuge").is_dir():
        return "centrifuge-js is not installed (run: cd tests/e2e/js && npm ci)"
    return None


def _js_command(env: Mapping[str, str], timeout: float) -> tuple[list[str], dict[str, str]]:
    proc_env = dict(os.environ)
    proc_env.update({k: str(v) for k, v in env.items()})
    proc_env["CF_TIMEOUT_MS"] = str(int(timeout * 1000))
    return ["node", str(JS_DIR / "run.mjs")], proc_env


def _parse_js_output(stdout: str, stderr: str, rc: int | None) -> dict[str, Any]:
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    if not lines:
        raise JsScenarioError(f"node printed nothing (exit {rc})", None, stderr)
    try:
        out = json.loads(lines[-1])
    except json.JSONDecodeError:
        raise JsScenarioError(f"node printed non-JSON: {stdout[-2000:]!r}", None, stderr) from None
    if not out.get("ok"):
        raise JsScenarioError(
            f"scenario failed: {out.get('error')}\n{out.get('stack', '')}", out, stderr
        )
    result = out.get("result")
    return result if isinstance(result, dict) else {"value": result}


def run_js(script: str, env: Mapping[str, str], timeout: float = 20.0) -> dict[str, Any]:
    """Run a centrifuge-js scenario (the body of an async function, see js/run.mjs).

    Returns what the scenario returned (a non-dict value comes back as {"value": v}).
    Raises JsScenarioError with node's stderr when the scenario throws or times out.
    """
    cmd, proc_env = _js_command(env, timeout)
    try:
        done = subprocess.run(
            cmd,
            input=script.encode(),
            capture_output=True,
            env=proc_env,
            cwd=JS_DIR,
            timeout=timeout + 10,
        )
    except subprocess.TimeoutExpired as e:
        err = (e.stderr or b"").decode(errors="replace")
        raise JsScenarioError(f"node did not exit within {timeout + 10}s", None, err) from None
    return _parse_js_output(
        done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace"), done.returncode
    )


async def run_js_async(
    script: str, env: Mapping[str, str], timeout: float = 20.0
) -> dict[str, Any]:
    """`run_js` for async tests (does not block the event loop)."""
    cmd, proc_env = _js_command(env, timeout)
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=proc_env,
        cwd=JS_DIR,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(script.encode()), timeout + 10)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise JsScenarioError(f"node did not exit within {timeout + 10}s", None, "") from None
    return _parse_js_output(
        stdout.decode(errors="replace"), stderr.decode(errors="replace"), proc.returncode
    )
