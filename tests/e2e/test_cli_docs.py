"""`centrifugo configdoc` and `centrifugo serve` run as the command is run (`python -m app`),
asked over HTTP, and stopped with a signal: they exit 0 with no traceback."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.config.docs import iter_docs
from tests.support.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"  # Debian's, as tests/e2e/test_admin_ui.py drives it
STOP_TIMEOUT = 10.0


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CENTRIFUGO_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Command:
    """A `centrifugo` subcommand running in its own process group, its stdout a pipe."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app", *args],
            cwd=REPO_ROOT,
            env=_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def first_line(self) -> str:
        """The line it prints once it listens (the event tests wait for)."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(STOP_TIMEOUT)
            assert self.proc.stderr is not None
            pytest.fail(f"exited with {self.proc.returncode}: {self.proc.stderr.read()}")
        return line.rstrip("\n")

    def stop(self, sig: signal.Signals) -> tuple[int, str]:
        """Send `sig`; (exit code, stderr)."""
        self.proc.send_signal(sig)
        _, err = self.proc.communicate(timeout=STOP_TIMEOUT)
        return self.proc.returncode, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


@pytest.fixture
def commands() -> Iterator[list[Command]]:
    started: list[Command] = []
    yield started
    for command in started:
        command.kill()


def _get(port: int, path: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()


def _raw_status(port: int, path: str) -> int:
    """Status of GET `path` sent as is (urllib would normalise `..`)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def _outbound_address() -> str | None:
    """This machine's address on the interface it would reach the internet by (a UDP
    connect sends nothing), or None when it has none but loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: routing only
        except OSError:
            return None
        address = str(s.getsockname()[0])
    return None if address.startswith("127.") else address


def test_configdoc_markdown() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "app", "configdoc", "-m"],
        cwd=REPO_ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "# `http_server`\n\nType: `HTTPServerConfig` object\n\n" in proc.stdout
    assert (
        "## `http_server.port`\n\nType: `int`. Default: `8000`\n\n"
        "Env: `CENTRIFUGO_HTTP_SERVER_PORT`\n\n" in proc.stdout
    )
    assert "### `channel.namespaces[].presence`" in proc.stdout


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_configdoc_serves_the_page_on_loopback(
    commands: list[Command], sig: signal.Signals
) -> None:
    port = free_port()
    command = Command("configdoc", "-p", str(port))
    commands.append(command)
    assert command.first_line() == (
        f"configuration documentation on http://127.0.0.1:{port}/ (Ctrl+C to stop)"
    )

    status, content_type, page = _get(port, "/")
    assert status == 200 and content_type.startswith("text/html")
    assert "<title>Centrifugo 6.9.1 Configuration Options</title>" in page
    assert '<input id="q" type="search"' in page
    # Self-contained: nothing fetched from elsewhere.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    data = re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S)
    assert data is not None
    tree = json.loads(data.group(1))
    fields = {d["field"] for d in tree}
    assert {"http_server", "client", "channel", "proxies"} <= fields
    http_server = next(d for d in tree if d["field"] == "http_server")
    port_doc = next(c for c in http_server["children"] if c["field"] == "http_server.port")
    assert port_doc["env"] == "CENTRIFUGO_HTTP_SERVER_PORT" and port_doc["default"] == "8000"

    status, _, simple = _get(port, "/?simple=1")
    assert status == 200
    assert "<h2><code>http_server.port</code></h2>" in simple
    assert "<script" not in simple

    # Loopback only: this machine's address on its outbound interface is not served.
    other = _outbound_address()
    if other is not None:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((other, port), timeout=5).close()
    assert command.stop(sig) == (0, "")


def test_configdoc_page_searches_in_a_browser(commands: list[Command]) -> None:
    """The page in Debian's Chromium: every key listed, the search box narrows the list, and
    the browser asks nothing of any other host."""
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} missing: .ci/run installs it")
        pytest.skip(f"{CHROMIUM} missing (Debian's chromium package)")
    from playwright.sync_api import expect, sync_playwright

    port = free_port()
    command = Command("configdoc", "-p", str(port))
    commands.append(command)
    command.first_line()
    total = len(iter_docs())
    origin = f"http://127.0.0.1:{port}/"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            requested: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            page.goto(origin)
            expect(page.locator("#count")).to_have_text(f"{total} of {total} keys")

            page.fill("#q", "namespaces presence")
            entry = page.locator('[id="channel.namespaces[].presence"]')
            expect(entry).to_be_visible()
            expect(entry).to_contain_text("CENTRIFUGO_CHANNEL_NAMESPACES_<NAME>_PRESENCE")
            expect(page.locator('[id="http_server.port"]')).to_be_hidden()
            shown = [
                e.field
                for e in iter_docs()
                if all(
                    t in f"{e.field} {e.env} {e.type} {e.description} {e.unsupported}".lower()
                    for t in ("namespaces", "presence")
                )
            ]
            expect(page.locator("#count")).to_have_text(f"{len(shown)} of {total} keys")

            page.fill("#q", "tls_autocert.enabled")
            expect(
                page.locator('[id="http_server.tls_autocert.enabled"] .unsupported')
            ).to_contain_text("Not supported by centrifugo-py")
        finally:
            browser.close()
    assert requested and all(url.startswith(origin) for url in requested), requested
    assert command.stop(signal.SIGTERM) == (0, "")


def test_configdoc_section_filter_page(commands: list[Command]) -> None:
    port = free_port()
    command = Command("configdoc", "-s", "rpc", "--port", str(port))
    commands.append(command)
    command.first_line()
    _, _, page = _get(port, "/")
    data = re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S)
    assert data is not None
    assert [d["field"] for d in json.loads(data.group(1))] == ["rpc"]
    assert command.stop(signal.SIGTERM) == (0, "")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_a_directory(commands: list[Command], tmp_path: Path, sig: signal.Signals) -> None:
    root = tmp_path / "site"
    (root / "docs").mkdir(parents=True)
    (root / "hello.txt").write_text("hello from serve\n")
    (root / "docs" / "index.html").write_text("<p>docs index</p>")
    (tmp_path / "secret.txt").write_text("outside")
    (root / "link.txt").symlink_to(tmp_path / "secret.txt")

    port = free_port()
    command = Command("serve", "-a", "127.0.0.1", "-p", str(port), "-d", str(root))
    commands.append(command)
    assert command.first_line() == f"start serving {root} on 127.0.0.1:{port}"

    status, content_type, text = _get(port, "/hello.txt")
    assert (status, text) == (200, "hello from serve\n")
    assert content_type.startswith("text/plain")
    # A directory answers its index.html (after the /docs -> /docs/ redirect), else a listing.
    assert _get(port, "/docs")[2] == "<p>docs index</p>"
    status, content_type, listing = _get(port, "/")
    assert status == 200 and content_type.startswith("text/html")
    assert '<a href="hello.txt">hello.txt</a>' in listing and '<a href="docs/">docs/</a>' in listing
    # Nothing outside the directory: not by `..`, not through a symlink.
    assert _raw_status(port, "/../secret.txt") == 404
    assert _raw_status(port, "/%2e%2e/secret.txt") == 404
    assert _raw_status(port, "/link.txt") == 404
    assert _raw_status(port, "/missing.txt") == 404
    assert command.stop(sig) == (0, "")


def test_serve_port_taken(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "app", "serve", "-a", "127.0.0.1", "-p", str(port)],
            cwd=REPO_ROOT,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 1
    assert proc.stdout == ""  # the line says it serves, so only once it does
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: can not listen on 127.0.0.1:{port}")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "-p", "70000"], "error: argument -p/--port: port out of range: 70000"),
        (["configdoc", "--port", "web"], "error: argument -p/--port: invalid port: 'web'"),
    ],
)
def test_bad_port_is_one_error_line(args: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=REPO_ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", message + "\n")
