"""`centrifugo configdoc` and `centrifugo serve`: two development helpers beside the server.

Both mirror Centrifugo v6 (internal/cli/configdoc.go, internal/cli/serve.go): the same flags,
defaults and output. `configdoc -m` prints the documentation tree of app/config/docs.py as
Markdown, one header per key (``Type: `int`. Default: `8000```, ``Env: `CENTRIFUGO_...```,
the description); without ``-m`` it serves one HTML page with a search box. Differences, on
purpose: that page is self-contained (Centrifugo's pulls Bootstrap from a CDN; the machines this
runs on may be offline), it listens on 127.0.0.1 only (Centrifugo binds every interface for a
page meant for the local browser), and no browser is opened: the URL is printed. `serve` is a
plain static file server for development, like Go's http.FileServer (index.html for a
directory, else a listing).

Both run until SIGINT or SIGTERM and then exit 0; a port that cannot be bound is one
``error: ...`` line and exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import re
import signal
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web

from app import VERSION
from app.config.docs import KeyDoc, config_docs

__all__ = ["COMMANDS", "add_parsers", "run", "markdown", "join_host_port"]

COMMANDS = ("configdoc", "serve")

CONFIGDOC_HOST = "127.0.0.1"
CONFIGDOC_PORT = 6060
SERVE_PORT = 3000

# How long a stop waits for requests still running (a browser's keep-alive connections are
# idle and close at once); a development server has nothing worth waiting longer for.
_SHUTDOWN_TIMEOUT = 2.0


def _port(text: str) -> int:
    # Checked here so a bad port is argparse's one-line error, not a bind of a wrapped value.
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {port}")
    return port


def add_parsers(sub: Any) -> None:
    """Add ``configdoc`` and ``serve`` to the CLI's subparsers (argparse's _SubParsersAction)."""
    p = sub.add_parser(
        "configdoc",
        help="show configuration documentation generated from the schema",
        description=(
            "Show the configuration documentation generated from the config schema: every key "
            "with its type, default, CENTRIFUGO_* variable and description. With -m it is "
            f"printed as Markdown; otherwise it is served as one HTML page on "
            f"http://{CONFIGDOC_HOST}:<port>/ - loopback only on purpose: it is a local "
            "documentation viewer (open the printed URL; no browser is started)."
        ),
    )
    p.add_argument("-m", "--markdown", action="store_true", help="output markdown to stdout")
    p.add_argument("-s", "--section", default="", help="filter by top-level section name")
    p.add_argument(
        "-p",
        "--port",
        type=_port,
        default=CONFIGDOC_PORT,
        help=f"port to run server on ({CONFIGDOC_HOST} only; default {CONFIGDOC_PORT})",
    )
    p.add_argument("-l", "--base-level", type=int, default=0, help="base level to use")

    p = sub.add_parser(
        "serve",
        help="run static file server (for development only)",
        description="Run static file server (for development only).",
    )
    p.add_argument("-d", "--dir", default="./", help="path to directory (default ./)")
    p.add_argument(
        "-p",
        "--port",
        type=_port,
        default=SERVE_PORT,
        help=f"port to serve on (default {SERVE_PORT})",
    )
    p.add_argument(
        "-a", "--address", default="", help="interface to serve on (default: all interfaces)"
    )


def run(command: str, args: argparse.Namespace) -> int:
    """Run ``configdoc`` or ``serve``; the exit code."""
    if command == "configdoc":
        return cmd_configdoc(args.markdown, args.section, args.port, args.base_level)
    return cmd_serve(args.dir, args.port, args.address)


# --------------------------------------------------------------------------------------------
# configdoc


def _filtered(section: str) -> tuple[KeyDoc, ...]:
    # Centrifugo filters by prefix at each level and skips the children of a skipped entry,
    # so in effect a prefix of the top-level key: "-s http" keeps http_server, http_api, ...
    return tuple(d for d in config_docs() if d.field.startswith(section))


def _type_line(doc: KeyDoc) -> str:
    text = f"Type: `{doc.type}`" + (" object" if doc.is_complex else "")
    if doc.default:
        text += f". Default: `{doc.default}`"
    if doc.env:
        text += f"\n\nEnv: `{doc.env}`"
    return text


def _unsupported_line(doc: KeyDoc) -> str:
    return f"Not supported by centrifugo-py: {doc.unsupported}."


def markdown(section: str = "", base_level: int = 0) -> str:
    """The documentation as Centrifugo's ``configdoc -m`` writes it."""
    parts: list[str] = []

    def write(entries: tuple[KeyDoc, ...]) -> None:
        for doc in entries:
            header = "#" * min(doc.level + base_level, 6)
            description = doc.description or "No documentation available."
            parts.append(f"{header} `{doc.field}`\n\n{_type_line(doc)}\n\n{description}\n\n")
            if doc.unsupported:
                parts.append(_unsupported_line(doc) + "\n\n")
            write(doc.children)

    write(_filtered(section))
    return "".join(parts)


def cmd_configdoc(md: bool, section: str, port: int, base_level: int) -> int:
    if md:
        print(markdown(section, base_level))
        return 0
    docs = _filtered(section)
    app = web.Application()

    async def page(request: web.Request) -> web.Response:
        body = _simple_page(docs) if request.query.get("simple") == "1" else _page(docs)
        return web.Response(text=body, content_type="text/html", charset="utf-8")

    app.router.add_get("/", page)
    url = f"http://{CONFIGDOC_HOST}:{port}/"
    return _serve_until_signal(
        app, CONFIGDOC_HOST, port, f"configuration documentation on {url} (Ctrl+C to stop)"
    )


def _inline(text: str) -> str:
    """Escaped text with Markdown inline code (`x`) as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _simple_page(docs: tuple[KeyDoc, ...]) -> str:
    """Centrifugo's ``?simple=1`` view: the Markdown document as plain HTML, no script."""
    parts: list[str] = []

    def write(entries: tuple[KeyDoc, ...]) -> None:
        for doc in entries:
            n = min(doc.level, 6)
            suffix = (" <code>[...]</code>" if doc.default == "[]" else " <code>{...}</code>") * (
                doc.is_complex
            )
            parts.append(f"<h{n}><code>{html.escape(doc.field)}</code>{suffix}</h{n}>")
            for paragraph in _type_line(doc).split("\n\n"):
                parts.append(f"<p>{_inline(paragraph)}</p>")
            for paragraph in (doc.description or "No documentation available.").split("\n\n"):
                parts.append(f"<p>{_inline(paragraph)}</p>")
            if doc.unsupported:
                parts.append(f'<p class="unsupported">{_inline(_unsupported_line(doc))}</p>')
            write(doc.children)

    write(docs)
    return _SIMPLE_TEMPLATE.replace("{version}", html.escape(VERSION)).replace(
        "{content}", "\n".join(parts)
    )


def _page(docs: tuple[KeyDoc, ...]) -> str:
    """The searchable page: the tree embedded as JSON, rendered and filtered by the script."""
    # "<" escaped so no description can close the <script> element holding the data.
    data = json.dumps([d.to_json() for d in docs], ensure_ascii=False).replace("<", "\\u003c")
    return _PAGE_TEMPLATE.replace("{version}", html.escape(VERSION)).replace("{data}", data)


_STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; margin: 0; color: #212529; background: #fff; }
main { max-width: 1024px; margin: auto; padding: 1rem 2rem; }
code { color: #0b7261; background: #f3f5f7; padding: 0.1rem 0.3rem; border-radius: 3px; }
h1 code, h2 code, h3 code, h4 code, h5 code, h6 code { color: #04416d; }
.unsupported { color: #8a4b00; }
"""

_SIMPLE_TEMPLATE = (
    """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Centrifugo {version} Configuration Options (Simple View)</title>
<style>"""
    + _STYLE
    + """</style></head>
<body><main><p><a href="/">Switch to the searchable view</a></p>
{content}
</main></body></html>
"""
)

_PAGE_TEMPLATE = (
    """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Centrifugo {version} Configuration Options</title>
<style>"""
    + _STYLE
    + """
.bar { position: sticky; top: 0; background: #f8f9fa; border-bottom: 1px solid #dee2e6;
       padding: 0.75rem 2rem; display: flex; gap: 1rem; align-items: center; }
.bar input { flex: 1; font: inherit; padding: 0.4rem 0.6rem; border: 1px solid #ced4da;
             border-radius: 4px; }
.entry { border-left: 3px solid #dee2e6; padding: 0.2rem 0 0.2rem 0.8rem; margin: 0.6rem 0; }
.entry .key { font-weight: 600; }
.entry .meta { color: #6c757d; font-size: 0.9em; }
.entry p { margin: 0.2rem 0; }
.entry.off { border-left-color: #f0ad4e; }
</style></head>
<body>
<div class="bar"><input id="q" type="search" placeholder="Search keys, variables, descriptions"
 autofocus aria-label="Search"><span id="count"></span><a href="/?simple=1">Simple view</a></div>
<main><div id="list"></div></main>
<script type="application/json" id="data">{data}</script>
<script>
"use strict";
const docs = JSON.parse(document.getElementById("data").textContent);
const entries = [];
(function walk(list) { for (const d of list) { entries.push(d); walk(d.children || []); } })(docs);
function esc(s) {
  return s.replace(/[&<>"']/g, (c) =>
    ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"})[c]);
}
function inline(s) {
  return esc(s).replace(/`([^`]+)`/g, "<code>$1</code>").split("\\n\\n").join("</p><p>");
}
const list = document.getElementById("list");
const nodes = entries.map((d) => {
  const el = document.createElement("div");
  el.className = "entry" + (d.unsupported ? " off" : "");
  el.style.marginLeft = (d.level - 1) * 1.2 + "rem";
  el.id = d.field;
  let meta = "Type: <code>" + esc(d.type) + "</code>" + (d.is_complex_type ? " object" : "");
  if (d.default) meta += " · Default: <code>" + esc(d.default) + "</code>";
  if (d.env) meta += " · Env: <code>" + esc(d.env) + "</code>";
  el.innerHTML = '<div class="key"><code>' + esc(d.field) + "</code></div>" +
    '<div class="meta">' + meta + "</div><p>" +
    inline(d.comment || "No documentation available.") + "</p>" +
    (d.unsupported ? '<p class="unsupported">Not supported by centrifugo-py: ' +
      inline(d.unsupported) + ".</p>" : "");
  list.appendChild(el);
  return [el, [d.field, d.env, d.type, d.comment, d.unsupported].join(" ").toLowerCase()];
});
const count = document.getElementById("count");
function filter() {
  const terms = document.getElementById("q").value.toLowerCase().split(/\\s+/).filter(Boolean);
  let shown = 0;
  for (const [el, text] of nodes) {
    const ok = terms.every((t) => text.includes(t));
    el.hidden = !ok;
    if (ok) shown++;
  }
  count.textContent = shown + " of " + nodes.length + " keys";
}
document.getElementById("q").addEventListener("input", filter);
filter();
</script>
</body></html>
"""
)


# --------------------------------------------------------------------------------------------
# serve


def join_host_port(host: str, port: int) -> str:
    """Go's net.JoinHostPort: ``:3000``, ``127.0.0.1:3000``, ``[::1]:3000``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class StaticDirectory:
    """Files under ``root`` as Go's http.FileServer(http.Dir(root)) serves them: a directory
    answers its index.html or a listing, ``/dir`` redirects to ``/dir/``, ``/x/index.html``
    to ``/x/``. A path that resolves outside ``root`` (``..``, a symlink) is 404, where Go
    would follow the symlink: nothing outside the directory named is served."""

    def __init__(self, root: Path) -> None:
        self._root = root.resolve()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        # Blocking stat calls in the loop: a development server for one browser.
        path = request.path
        target = (self._root / path.lstrip("/")).resolve()
        if "\x00" in path or not target.is_relative_to(self._root) or not target.exists():
            raise web.HTTPNotFound()
        if path.endswith("/index.html"):
            raise web.HTTPMovedPermanently(path[: -len("index.html")])
        if target.is_dir():
            if not path.endswith("/"):
                raise web.HTTPMovedPermanently(path + "/")
            index = target / "index.html"
            if index.is_file():
                return web.FileResponse(index)
            return web.Response(text=_listing(target), content_type="text/html", charset="utf-8")
        if path.endswith("/"):
            raise web.HTTPMovedPermanently(path.rstrip("/"))
        return web.FileResponse(target)


def _listing(directory: Path) -> str:
    # Go's dirList: a <pre> of links, directories with a trailing slash, sorted by name.
    lines = []
    for child in sorted(directory.iterdir(), key=lambda p: p.name):
        name = child.name + ("/" if child.is_dir() else "")
        lines.append(f'<a href="{html.escape(quote(name))}">{html.escape(name)}</a>')
    body = "\n".join(lines)
    return f'<!doctype html>\n<meta name="viewport" content="width=device-width">\n<pre>\n{body}\n</pre>\n'


def cmd_serve(directory: str, port: int, address: str) -> int:
    app = web.Application()
    app.router.add_get("/{tail:.*}", StaticDirectory(Path(directory)).handle)
    announce = f"start serving {directory} on {join_host_port(address, port)}"
    # "" binds every interface, as Go's ListenAndServe(":3000").
    return _serve_until_signal(app, address or None, port, announce)


# --------------------------------------------------------------------------------------------


def _serve_until_signal(app: web.Application, host: str | None, port: int, announce: str) -> int:
    """Serve ``app`` on host:port until SIGINT or SIGTERM; 0 after a clean stop, 1 (one error
    line) when the port cannot be bound."""

    async def main() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        # Installed before the socket is bound: a signal sent once the server answers is ours.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        runner = web.AppRunner(app, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            try:
                await site.start()
            except OSError as e:
                where = join_host_port(host or "", port)
                print(f"error: can not listen on {where}: {e.strerror or e}", file=sys.stderr)
                return 1
            print(announce, flush=True)
            await stop.wait()
            return 0
        finally:
            await runner.cleanup()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    return asyncio.run(main())
