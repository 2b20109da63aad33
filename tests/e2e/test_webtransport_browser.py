"""centrifuge-js over WebTransport in a real browser, across a worker SIGKILL.

Debian's Chromium (`/usr/bin/chromium`) under Playwright, started with the flags of
tests/support/wt_browser.py that trust the test's self-signed certificate for QUIC, loads a page
(tests/e2e/webtransport_page/, served by an aiohttp server of the test on another loopback port,
so the page is a secure context) with centrifuge-js's browser bundle configured with the
`webtransport` transport only. The server is `python -m app` with 2 workers on Redis, TLS, HTTP/3
and WebTransport enabled.

The page connects, subscribes to a channel with history, recovery and positioning, receives an
HTTP API publication and publishes one itself. The test then SIGKILLs the worker holding the
session, publishes while the page is away, and the page reconnects and recovers that
publication from the stream position it had.

Which worker holds the session: the server's connect proxy (`client.proxy.connect`) points at
the test's aiohttp server, and the worker that runs a connection's connect is the one calling
it, over a TCP connection psutil finds among that worker's sockets. The proxy request also
says the transport (`webtransport`) and the protocol (`json`, `protobuf`).

How the page learns the session is gone: the killed worker's UDP socket stays open in the
gunicorn master (its replacement takes it over) and aioquic sends no stateless reset, so
Chromium's QUIC sees only silence; it closes the session 6-10 s after its first unanswered
packet (blackhole detection, several PTOs), or at its idle timeout when it sends nothing.
centrifuge-js finds it first through Centrifugo's pings: the server pings every 2 s here
(`client.ping_interval`; 25 s by default) and the page allows 2 s more (`maxServerPingDelay`;
10 s by default), so it reconnects within about 4 s of the kill.

A second test takes the other way through the certificate check: no launch flags, the
certificate pinned with `serverCertificateHashes` by a page script (centrifuge-js passes no
options to `new WebTransport(url)`), one worker on the memory engine, and centrifuge-js's
Protobuf bundle: connect, subscribe, an API publication in, the page's publication back.

Every wait is `page.wait_for_function` on the page's event record, never a sleep. Screenshots
and the browser's console log are saved in one folder per run (printed at the end).
"""

from __future__ import annotations

import os
import signal
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil  # type: ignore[import-untyped]
import pytest
from aiohttp import web
from playwright.async_api import ConsoleMessage, Page, async_playwright

from tests.support.ports import free_port
from tests.support.redis_server import RedisProcess
from tests.support.tls_certs import Leaf, self_signed
from tests.support.wt_browser import BASE_ARGS, CHROMIUM, hash_pinning_script, launch_args

from .helpers import JS_DIR, ServerHandle, start_server
from .redis_e2e_helpers import redis_config, worker_pids

PAGE_DIR = Path(__file__).resolve().parent / "webtransport_page"
BUNDLE = JS_DIR / "node_modules" / "centrifuge" / "dist" / "centrifuge.js"
PROTOBUF_BUNDLE = BUNDLE.with_name("centrifuge.protobuf.js")  # the Protobuf protocol's
CHANNEL = "wt:room"
WAIT_MS = 10_000  # the session's loss takes up to ~4 s; every other wait is well under 1 s

for missing, why in (
    (CHROMIUM, "Debian's chromium package"),
    (BUNDLE, "cd tests/e2e/js && npm ci"),
    (PROTOBUF_BUNDLE, "cd tests/e2e/js && npm ci"),
):
    if not Path(missing).exists():
        reason = f"{missing} missing ({why})"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: .ci/run installs it", pytrace=False)
        pytest.skip(reason, allow_module_level=True)


def server_config(redis_port: int | None, cert: Leaf, proxy_url: str) -> dict[str, Any]:
    """Redis engine on `redis_port`, or the memory engine (one worker) without one."""
    cfg: dict[str, Any] = {"engine": {"type": "memory"}}
    if redis_port:
        cfg = redis_config(redis_port)
    cfg["http_server"] = {
        "tls": {"enabled": True, "cert_pem": str(cert.cert_path), "key_pem": str(cert.key_path)},
        "http3": {"enabled": True},
    }
    cfg["webtransport"] = {"enabled": True}
    cfg["client"] = {
        # The WebTransport CONNECT request carries the page's origin.
        "allowed_origins": ["http://127.0.0.1:*"],
        # Pings every 2 s (25 s by default): the page (maxServerPingDelay 2 s) finds a
        # session of the killed worker gone within 4 s, before Chromium's QUIC does.
        "ping_interval": "2s",
        "pong_timeout": "1s",
        "proxy": {"connect": {"enabled": True, "endpoint": proxy_url, "timeout": "5s"}},
    }
    cfg["channel"] = {
        "namespaces": [
            {
                "name": "wt",
                "history_size": 100,
                "history_ttl": "300s",
                "force_recovery": True,
                "force_positioning": True,
                "allow_subscribe_for_client": True,
                "allow_publish_for_subscriber": True,
            }
        ]
    }
    return cfg


def https_ready(ctx: ssl.SSLContext) -> Any:
    """start_server's readiness probe over HTTPS (its own one speaks plain HTTP)."""
    import urllib.error
    import urllib.request

    def ready(handle: ServerHandle) -> bool:
        try:
            url = f"https://127.0.0.1:{handle.port}/health"
            with urllib.request.urlopen(url, timeout=0.5, context=ctx) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    return ready


class PageServer:
    """The test's aiohttp server: the page, the SDK bundle (`/centrifuge.js`: `bundle`), and the
    connect proxy endpoint, which records the transport and protocol of each connect and the
    TCP port the asking worker called from."""

    def __init__(self, bundle: Path = BUNDLE) -> None:
        self.port = free_port()
        self.bundle = bundle
        self.srv: ServerHandle | None = None
        self.connects: list[dict[str, Any]] = []
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def worker_calling_from(self, peer_port: int) -> int | None:
        assert self.srv is not None
        for pid in worker_pids(self.srv):
            try:
                conns = psutil.Process(pid).net_connections(kind="tcp")
            except psutil.NoSuchProcess:
                continue
            if any(
                c.laddr.port == peer_port and c.raddr and c.raddr.port == self.port for c in conns
            ):
                return pid
        return None

    async def connect_proxy(self, request: web.Request) -> web.Response:
        body = await request.json()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.connects.append(
            {
                "transport": body.get("transport"),
                "protocol": body.get("protocol"),
                "peer_port": peer[1] if peer else None,
                "at": time.strftime("%H:%M:%S"),
            }
        )
        return web.json_response({"result": {"user": "browser"}})

    def worker_of_connect(self, i: int) -> int | None:
        """The worker that asked for connect `i`: its proxy connection is still open (the
        proxy client keeps it alive) and is one of that worker's sockets. Not looked up in
        the handler: reading a process's sockets scans the host's whole TCP table."""
        port = self.connects[i]["peer_port"]
        return None if port is None else self.worker_calling_from(port)

    async def start(self) -> None:
        app = web.Application()
        for route, path in (
            ("/", PAGE_DIR / "index.html"),
            ("/page.js", PAGE_DIR / "page.js"),
            ("/centrifuge.js", self.bundle),
        ):
            app.router.add_get(route, _file(path))
        app.router.add_get("/favicon.ico", _no_content)
        app.router.add_post("/connect", self.connect_proxy)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
def artifacts(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Path]:
    """The folder of this run's screenshots and console log, named at the end of the session."""
    folder = tmp_path_factory.mktemp("webtransport-browser")
    yield folder
    names = ", ".join(sorted(p.name for p in folder.iterdir()))
    line = f"WebTransport browser screenshots and console log in {folder}: {names}"
    print(line)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        request.config.add_cleanup(lambda: reporter.write_line(line))


async def api_publish(
    http: aiohttp.ClientSession, srv: ServerHandle, tls: ssl.SSLContext, data: dict[str, Any]
) -> dict[str, Any]:
    """HTTP API publish of `data` to CHANNEL over HTTPS; its result."""
    async with http.post(
        f"https://127.0.0.1:{srv.port}/api/publish",
        json={"channel": CHANNEL, "data": data},
        headers={"X-API-Key": srv.api_key},
        ssl=tls,
    ) as resp:
        body = await resp.json()
        assert resp.status == 200 and "result" in body, body
        return dict(body["result"])


async def wait(page: Page, condition: str, what: str) -> None:
    try:
        await page.wait_for_function(condition, timeout=WAIT_MS)
    except Exception as e:
        rec = await page.evaluate("JSON.stringify(window.rec)")
        raise AssertionError(f"page: not within {WAIT_MS} ms: {what}\nrec: {rec}") from e


async def test_centrifuge_js_over_webtransport_recovers_after_worker_sigkill(
    redis_server: RedisProcess, artifacts: Path
) -> None:
    cert = self_signed(artifacts, "server", hosts=("127.0.0.1",))
    tls = ssl.create_default_context(cafile=str(cert.cert_path))
    pages = PageServer()
    await pages.start()
    srv = start_server(
        server_config(redis_server.port, cert, f"{pages.url}/connect"),
        workers=2,
        ready=https_ready(tls),
    )
    pages.srv = srv
    console: list[str] = []
    # A connection per call: a kept-alive one may belong to the worker the test kills.
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))

    async def publish(data: dict[str, Any]) -> dict[str, Any]:
        return await api_publish(http, srv, tls, data)

    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=CHROMIUM, args=launch_args(cert.cert_pem, "127.0.0.1", srv.port)
            )
            page = await browser.new_page(viewport={"width": 1100, "height": 700})
            page.on("console", lambda m: console.append(_console_line(m)))
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            await page.goto(pages.url)
            assert await page.evaluate("typeof WebTransport") == "function"
            endpoint = f"https://127.0.0.1:{srv.port}/connection/webtransport"
            await page.evaluate("cfg => start(cfg)", {"endpoint": endpoint, "channel": CHANNEL})

            # Connected and subscribed over WebTransport, with a stream position.
            await wait(page, "rec.subscribed.length === 1", "first subscribe")
            rec = await page.evaluate("rec")
            assert rec["connected"][0]["transport"] == "webtransport", rec
            first = rec["subscribed"][0]
            assert first["recoverable"] and first["positioned"], first
            assert [c["transport"] for c in pages.connects] == ["webtransport"], pages.connects
            assert pages.connects[0]["protocol"] == "json", pages.connects
            holder = pages.worker_of_connect(0)
            assert holder in worker_pids(srv), (holder, worker_pids(srv))

            # An HTTP API publication reaches the page; the page's own publication comes back.
            await publish({"n": 1, "from": "api"})
            await wait(page, "rec.pubs.length === 1", "the API publication")
            await page.evaluate("publish({n: 2, from: 'browser'})")
            await wait(page, "rec.pubs.length === 2", "the page's own publication")
            assert await page.evaluate("rec.published") == ["ok"]
            await page.screenshot(path=str(artifacts / "1-connected.png"))

            # The worker holding the session dies; a publication is made while the page is away.
            await page.evaluate(
                "pid => show(`test: SIGKILL worker ${pid}, which holds the session`)", holder
            )
            os.kill(holder, signal.SIGKILL)
            away = await publish({"n": 3, "from": "api, while away"})
            await wait(page, "rec.connecting.length === 2", "the session's loss")
            # 2: no ping within ping_interval + maxServerPingDelay (1: Chromium closed it first).
            assert (await page.evaluate("rec.connecting[1].code")) in (1, 2)
            await page.screenshot(path=str(artifacts / "2-reconnecting.png"))

            # Reconnected to a live worker, resubscribed with recovery: the missed publication.
            await wait(page, "rec.subscribed.length === 2", "resubscribe after the kill")
            rec = await page.evaluate("rec")
            again = rec["subscribed"][1]
            assert again["wasRecovering"] and again["recovered"], again
            assert again["epoch"] == first["epoch"], (first, again)
            await wait(page, "rec.pubs.length === 3", "the recovered publication")
            assert len(pages.connects) == 2, pages.connects
            assert pages.connects[1]["transport"] == "webtransport", pages.connects
            again_pid = pages.worker_of_connect(1)
            assert again_pid in (set(worker_pids(srv)) - {holder}), (again_pid, holder)
            await page.evaluate(
                "pid => show(`test: the new session is on worker ${pid}`)", again_pid
            )
            # And the new session is live.
            await publish({"n": 4, "from": "api, after"})
            await wait(page, "rec.pubs.length === 4", "a live publication after recovery")
            rec = await page.evaluate("rec")
            assert [p["data"]["n"] for p in rec["pubs"]] == [1, 2, 3, 4], rec["pubs"]
            assert [p["offset"] for p in rec["pubs"]] == [1, 2, 3, 4], rec["pubs"]
            assert rec["pubs"][2]["offset"] == away["offset"], (rec["pubs"], away)
            await page.screenshot(path=str(artifacts / "3-recovered.png"))
            await browser.close()
    finally:
        (artifacts / "console.log").write_text("\n".join(console) + "\n")
        (artifacts / "server.log").write_text(srv.log_text())
        await http.close()
        await pages.stop()
        srv.stop()
    assert not [ln for ln in console if ln.startswith("pageerror")], console


def _file(path: Path) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(_: web.Request) -> web.StreamResponse:
        return web.FileResponse(path)

    return handler


async def _no_content(_: web.Request) -> web.Response:
    return web.Response(status=204)


def _console_line(m: ConsoleMessage) -> str:
    return f"{m.type}: {m.text}"


async def test_centrifuge_js_protobuf_with_server_certificate_hashes(artifacts: Path) -> None:
    """The other way through (tests/support/wt_browser.py): no launch flags, and a page script
    that gives every `new WebTransport(url)` the certificate's SHA-256 in
    `serverCertificateHashes`; centrifuge-js, which passes no options, connects unchanged.
    With its Protobuf bundle: `?cf_protocol=protobuf` on the URL, varint-delimited frames."""
    cert = self_signed(artifacts, "server", hosts=("127.0.0.1",))
    tls = ssl.create_default_context(cafile=str(cert.cert_path))
    pages = PageServer(PROTOBUF_BUNDLE)
    await pages.start()
    srv = start_server(server_config(None, cert, f"{pages.url}/connect"), ready=https_ready(tls))
    console: list[str] = []
    http = aiohttp.ClientSession()
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=list(BASE_ARGS))
            page = await browser.new_page(viewport={"width": 1100, "height": 400})
            page.on("console", lambda m: console.append(_console_line(m)))
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            await page.add_init_script(hash_pinning_script(cert.cert_pem))
            await page.goto(pages.url)
            endpoint = f"https://127.0.0.1:{srv.port}/connection/webtransport"
            await page.evaluate("cfg => start(cfg)", {"endpoint": endpoint, "channel": CHANNEL})
            await wait(page, "rec.subscribed.length === 1", "subscribe with pinned certificate")
            rec = await page.evaluate("rec")
            assert [c["transport"] for c in rec["connected"]] == ["webtransport"], rec
            assert [(c["transport"], c["protocol"]) for c in pages.connects] == [
                ("webtransport", "protobuf")
            ], pages.connects
            await api_publish(http, srv, tls, {"n": 1, "from": "api"})
            await wait(page, "rec.pubs.length === 1", "an API publication over Protobuf")
            assert await page.evaluate("rec.pubs") == [
                {"data": {"n": 1, "from": "api"}, "offset": 1}
            ]
            await page.evaluate("publish(new TextEncoder().encode(JSON.stringify({n: 2})))")
            await wait(page, "rec.pubs.length === 2", "the page's own Protobuf publication")
            assert await page.evaluate("rec.pubs[1].data") == {"n": 2}
            await page.screenshot(path=str(artifacts / "pinned-protobuf.png"))
            await browser.close()
    finally:
        (artifacts / "console.log").write_text("\n".join(console) + "\n")
        (artifacts / "server.log").write_text(srv.log_text())
        await http.close()
        await pages.stop()
        srv.stop()
    assert not [ln for ln in console if ln.startswith("pageerror")], console
