"""The admin web UI (app/admin/web/) driven in a real browser against a real server.

Debian's Chromium (`/usr/bin/chromium`) under Playwright's async API; the module is skipped
when that binary is missing (failed under CI, whose .ci/run installs it). Playwright's own
browser downloads are never used. Every wait is Playwright's auto-waiting `expect(...)` on the
DOM or an awaited centrifuge-python event, never a sleep.

Each test saves screenshots of the pages it drove into one folder per run (printed, and
written to the terminal summary), so a reviewer can look at what the browser showed.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from centrifuge import Client  # type: ignore[import-untyped]
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from tests.support.redis_server import RedisProcess
from tests.support.sdk import ClientEvents, SubEvents

from .helpers import ServerHandle
from .redis_e2e_helpers import redis_config

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "admin-password-" + uuid.uuid4().hex[:8]
TOKEN_KEY = "centrifugo-py.admin.token"  # the UI's localStorage key (app/admin/web/js/api.js)
UI_TIMEOUT_MS = 10_000  # the status page polls every 2 s: a few polls fit in this
expect.set_options(timeout=UI_TIMEOUT_MS)

CONFIG = {
    # The UI does not depend on the engine: run once, on the memory engine.
    "engine": {"type": "memory"},
    "admin": {"enabled": True, "password": PASSWORD, "secret": "admin-secret-" + uuid.uuid4().hex},
    # The live tail's WebSocket and its admin/tail request come from the page's origin.
    "client": {"allowed_origins": ["http://127.0.0.1:*"]},
    "channel": {
        "namespaces": [
            {
                "name": "chat",
                "allow_subscribe_for_client": True,
                "presence": True,
                "history_size": 50,
                "history_ttl": "300s",
            }
        ]
    },
}

if not os.path.exists(CHROMIUM):
    reason = f"{CHROMIUM} missing (Debian's chromium package)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: .ci/run installs it", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def uid() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="module")
def srv(server_factory: Callable[..., ServerHandle]) -> ServerHandle:
    return server_factory(CONFIG)


@pytest.fixture(scope="module")
def shots(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Path]:
    """The screenshot folder of this run, named in the output when the module ends."""
    folder = tmp_path_factory.mktemp("admin-ui-screenshots")
    yield folder
    names = ", ".join(sorted(p.name for p in folder.glob("*.png")))
    line = f"admin UI screenshots in {folder}: {names}"
    print(line)  # in the captured output of a failing test
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        # At the end of the session, when output is no longer captured: shown with -q too.
        request.config.add_cleanup(lambda: reporter.write_line(line))


@pytest.fixture(scope="module")
def admin_token(srv: ServerHandle) -> str:
    """One sign-in through admin/auth for the tests that start signed in (sign-in attempts
    are rate limited per address: 5 at once)."""
    req = urllib.request.Request(
        f"{srv.url}/admin/auth",
        data=f"password={PASSWORD}".encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return str(json.load(resp)["token"])


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        await b.close()


@pytest.fixture
async def context(browser: Browser, shots: Path) -> AsyncIterator[BrowserContext]:
    """A fresh profile; page errors and failed console messages fail the test."""
    ctx = await browser.new_context(viewport={"width": 1200, "height": 900})
    ctx.set_default_timeout(UI_TIMEOUT_MS)
    errors: list[str] = []
    ctx.on("weberror", lambda e: errors.append(f"page error: {e.error}"))
    yield ctx
    await ctx.close()
    assert errors == []


async def signed_in_page(context: BrowserContext, srv: ServerHandle, token: str) -> Page:
    """A page of the UI that starts with `token` stored, as after a sign-in (the context's
    other pages share it: localStorage is per origin)."""
    page = await context.new_page()
    await page.goto(f"{srv.url}/admin/init")  # the server's origin, without the UI running
    await page.evaluate("([key, token]) => localStorage.setItem(key, token)", [TOKEN_KEY, token])
    await page.goto(f"{srv.url}/#/status")
    await expect(page.locator("#nav")).to_be_visible()
    return page


@pytest.fixture
async def sdk(srv: ServerHandle) -> AsyncIterator[list[Client]]:
    """centrifuge-python clients made by the test, disconnected at its end."""
    clients: list[Client] = []
    yield clients
    for c in clients:
        await c.disconnect()


async def sdk_client(srv: ServerHandle, clients: list[Client], user: str) -> Client:
    events = ClientEvents()
    client = Client(srv.ws_url, events=events, token=srv.token(user), proxy=None)
    clients.append(client)
    await client.connect()
    await events.next("connected")
    return client


# --------------------------------------------------------------------------------------------


async def test_sign_in_refuses_wrong_password_then_lands_on_status(
    srv: ServerHandle, context: BrowserContext, shots: Path
) -> None:
    page = await context.new_page()
    await page.goto(f"{srv.url}/")
    await expect(page.get_by_label("Admin password")).to_be_focused()
    await expect(page.locator("#nav")).to_be_hidden()

    await page.get_by_label("Admin password").fill("not-the-password")
    await page.locator("#signin-submit").click()
    await expect(page.locator("#signin-error")).to_have_text(re.compile("Wrong password"))
    await page.screenshot(path=shots / "signin-wrong-password.png")

    await page.get_by_label("Admin password").fill(PASSWORD)
    await page.locator("#signin-submit").click()
    await expect(page).to_have_url(re.compile(r"#/status$"))
    await expect(page.locator("[data-testid=node-row]")).to_have_count(1)
    token = await page.evaluate(f"localStorage.getItem({TOKEN_KEY!r})")
    assert token

    # Signing out forgets the token: a reload asks for the password again.
    await page.locator("#signout").click()
    await expect(page.locator("#signin-form")).to_be_visible()
    assert await page.evaluate(f"localStorage.getItem({TOKEN_KEY!r})") is None
    await page.reload()
    await expect(page.locator("#signin-form")).to_be_visible()


async def test_stale_token_goes_back_to_sign_in(srv: ServerHandle, context: BrowserContext) -> None:
    page = await context.new_page()
    await page.goto(f"{srv.url}/admin/init")
    await page.evaluate(f"localStorage.setItem({TOKEN_KEY!r}, 'not-a-valid-token')")
    await page.goto(f"{srv.url}/#/actions")
    await expect(page.locator("#signin-form")).to_be_visible()
    await expect(page.locator("#nav")).to_be_hidden()


async def test_unauthorized_answer_goes_back_to_sign_in(
    srv: ServerHandle, context: BrowserContext, admin_token: str
) -> None:
    """A token that stops being accepted mid-session: the next call's 401 shows the sign-in."""
    page = await signed_in_page(context, srv, admin_token)
    await page.evaluate(f"localStorage.setItem({TOKEN_KEY!r}, 'revoked')")
    await page.locator("[data-testid=nav-channels]").click()
    await expect(page.locator("#signin-form")).to_be_visible()
    assert await page.evaluate(f"localStorage.getItem({TOKEN_KEY!r})") is None


async def test_status_page_shows_connected_client_and_charts(
    srv: ServerHandle, context: BrowserContext, admin_token: str, sdk: list[Client], shots: Path
) -> None:
    await sdk_client(srv, sdk, "status-" + uid())
    page = await signed_in_page(context, srv, admin_token)

    row = page.locator("[data-testid=node-row]")
    await expect(row).to_have_count(1)
    await expect(row.locator("[data-testid=node-clients]")).to_have_text(re.compile(r"^[1-9]\d*$"))
    await expect(row.locator("[data-testid=node-version]")).not_to_be_empty()
    await expect(row.locator("[data-testid=node-uptime]")).to_have_text(re.compile(r"\d+s$"))
    # The connections chart's legend shows the latest sample, at least our client.
    await expect(page.locator("[data-testid=chart-connections-clients]")).to_have_text(
        re.compile(r"^[1-9]\d*$")
    )
    # A rate needs two samples of the same node: then publications/s shows a number.
    await expect(page.locator("[data-testid=chart-messages-publications]")).to_have_text(
        re.compile(r"^\d+(\.\d)?$")
    )
    await expect(page.locator("#chart-connections polyline")).to_have_count(1)
    await page.screenshot(path=shots / "status.png", full_page=True)


async def test_actions_publish_reaches_sdk_subscriber_and_live_tail(
    srv: ServerHandle, context: BrowserContext, admin_token: str, sdk: list[Client], shots: Path
) -> None:
    channel = f"chat:ui-{uid()}"
    client = await sdk_client(srv, sdk, "reader-" + uid())
    sub_events = SubEvents()
    sub = client.new_subscription(channel, events=sub_events)
    await sub.subscribe()
    await sub_events.next("subscribed")

    # The live tail, open on the channel before the publish.
    tail = await signed_in_page(context, srv, admin_token)
    await tail.goto(f"{srv.url}/#/tail")
    await tail.get_by_label("Channel").fill(channel)
    await tail.locator("#tail-start").click()
    await expect(tail.locator("#tail-state")).to_have_attribute("data-state", "subscribed")

    actions = await context.new_page()
    await actions.goto(f"{srv.url}/#/actions")
    await actions.locator("#action-method").select_option("publish")
    await actions.get_by_label("channel").fill(channel)
    # JSON fields are checked before anything is sent.
    await actions.get_by_label("data").fill("{not json")
    await actions.locator("#action-submit").click()
    await expect(actions.locator("#action-problems")).to_contain_text("data is not valid JSON")
    await expect(actions.get_by_label("data")).to_have_attribute("aria-invalid", "true")
    await actions.get_by_label("version", exact=True).fill("1.5")
    await actions.locator("#action-submit").click()
    await expect(actions.locator("#action-problems")).to_contain_text("version must be an integer")
    await actions.get_by_label("version", exact=True).fill("")
    assert sub_events.pending("publication") == []

    # 2**64 - 1 does not fit a double: the UI must neither send nor show it rounded.
    payload = {"text": "hello from the admin UI", "n": 42, "big": 18446744073709551615}
    await actions.get_by_label("data").fill(json.dumps(payload))
    await actions.locator("#action-submit").click()
    result = actions.locator("#action-result")
    await expect(result).to_have_attribute("data-outcome", "ok")
    answer = json.loads(await result.inner_text())
    assert answer["result"]["offset"] == 1

    pub = (await sub_events.next("publication")).pub
    assert pub.data == payload
    assert pub.offset == 1
    await actions.screenshot(path=shots / "actions-publish.png", full_page=True)

    item = tail.locator("[data-testid=tail-item]")
    await expect(item).to_have_count(1)
    await expect(item).to_have_attribute("data-offset", "1")
    shown = json.loads(await item.locator("[data-testid=tail-data]").inner_text())
    assert shown == payload
    await tail.screenshot(path=shots / "live-tail.png", full_page=True)

    # An API error is shown as the answer, not raised: 102 unknown channel namespace.
    await actions.get_by_label("channel").fill(f"nope:{uid()}")
    await actions.locator("#action-submit").click()
    await expect(result).to_have_attribute("data-outcome", "error")
    assert json.loads(await result.inner_text())["error"]["code"] == 102


async def test_channels_page_lists_channel_with_presence_and_history(
    srv: ServerHandle, context: BrowserContext, admin_token: str, sdk: list[Client], shots: Path
) -> None:
    channel = f"chat:browse-{uid()}"
    user = "browser-" + uid()
    client = await sdk_client(srv, sdk, user)
    sub_events = SubEvents()
    sub = client.new_subscription(channel, events=sub_events)
    await sub.subscribe()
    await sub_events.next("subscribed")
    for n in (1, 2):
        srv.api("publish", {"channel": channel, "data": {"n": n}})

    page = await signed_in_page(context, srv, admin_token)
    await page.goto(f"{srv.url}/#/channels")
    await page.get_by_label("Pattern").fill("chat:browse-*")
    await page.locator("#channels-refresh").click()
    row = page.locator(f"[data-testid=channel-row][data-channel='{channel}']")
    await expect(row.locator("[data-testid=channel-clients]")).to_have_text("1")
    await row.get_by_role("button", name=channel).click()

    await expect(page.locator("[data-testid=presence-row]")).to_have_count(1)
    await expect(page.locator("[data-testid=presence-row]")).to_contain_text(user)
    items = page.locator("[data-testid=history-item]")
    await expect(items).to_have_count(2)
    # Newest first (reverse: true).
    await expect(items.nth(0)).to_have_attribute("data-offset", "2")
    await expect(items.nth(1)).to_have_attribute("data-offset", "1")
    await page.screenshot(path=shots / "channels.png", full_page=True)


async def test_live_tail_reconnects_pauses_and_clears(
    srv: ServerHandle, context: BrowserContext, admin_token: str
) -> None:
    channel = f"chat:tail-{uid()}"
    page = await signed_in_page(context, srv, admin_token)
    await page.goto(f"{srv.url}/#/tail/{channel}")  # the channel in the route starts the tail
    state = page.locator("#tail-state")
    await expect(state).to_have_attribute("data-connects", "1")
    first = await state.get_attribute("data-client")
    assert first

    # A reconnecting disconnect (4000-4499): the reason is shown, a fresh token resubscribes.
    srv.api(
        "disconnect",
        {"user": "", "client": first, "disconnect": {"code": 4001, "reason": "ui test"}},
    )
    await expect(page.locator("#tail-last-close")).to_have_text("last close: 4001 ui test")
    await expect(state).to_have_attribute("data-connects", "2")
    await expect(state).to_have_attribute("data-state", "subscribed")
    second = await state.get_attribute("data-client")
    assert second and second != first

    # Paused: arrivals are held, not shown; resumed: shown; cleared: gone.
    await page.locator("#tail-pause").click()
    await expect(page.locator("#tail-pause")).to_have_attribute("aria-pressed", "true")
    srv.api("publish", {"channel": channel, "data": {"n": 1}})
    await expect(page.locator("#tail-count")).to_have_text("1 received, 1 held while paused")
    items = page.locator("[data-testid=tail-item]")
    await expect(items).to_have_count(0)
    await page.locator("#tail-pause").click()
    await expect(items).to_have_count(1)
    await expect(page.locator("#tail-count")).to_have_text("1 received")
    await page.locator("#tail-clear").click()
    await expect(items).to_have_count(0)

    # A channel the server refuses to tail: the reason is shown and nothing is retried.
    await page.get_by_label("Channel").fill("x" * 300)
    await page.locator("#tail-start").click()
    await expect(state).to_have_attribute("data-state", "failed")
    await expect(state).to_contain_text("channel longer than channel.max_length (255)")
    await page.get_by_label("Channel").fill(channel)
    await page.locator("#tail-start").click()
    await expect(state).to_have_attribute("data-connects", "1")
    second = await state.get_attribute("data-client")

    # Centrifugo's default API disconnect is terminal (no reconnect): the tail says so and stops.
    srv.api("disconnect", {"user": "", "client": second})
    await expect(state).to_have_attribute("data-state", "failed")
    await expect(state).to_contain_text("closed the connection for good")
    await expect(state).to_have_attribute("data-connects", "1")


async def test_insecure_ui_under_a_handler_prefix_needs_no_sign_in(
    server_factory: Callable[..., ServerHandle], context: BrowserContext
) -> None:
    """admin.insecure: no sign-in and no sign-out; under /ops the UI's relative URLs reach
    /ops/admin/*."""
    insecure = server_factory(
        {
            "engine": {"type": "memory"},
            "admin": {"enabled": True, "insecure": True, "handler_prefix": "/ops"},
        }
    )
    page = await context.new_page()
    await page.goto(f"{insecure.url}/ops/")
    await expect(page.locator("[data-testid=node-row]")).to_have_count(1)
    await expect(page.locator("#signout")).to_be_hidden()
    await page.locator("[data-testid=nav-actions]").click()
    await page.locator("#action-method").select_option("info")
    await page.locator("#action-submit").click()
    await expect(page.locator("#action-result")).to_have_attribute("data-outcome", "ok")
    answer = json.loads(await page.locator("#action-result").inner_text())
    assert len(answer["result"]["nodes"]) == 1


async def test_message_rates_come_from_counter_deltas_per_node(
    srv: ServerHandle, context: BrowserContext
) -> None:
    """The status charts' arithmetic (js/live_samples.js), run in the browser as it ships."""
    page = await context.new_page()
    await page.goto(f"{srv.url}/")
    samples = await page.evaluate(
        """async () => {
            const { LiveSamples } = await import("./js/live_samples.js");
            const live = new LiveSamples(300);
            const node = (uid, publications, deliveries) =>
                ({ uid, num_clients: 1, num_subs: 2, publications, deliveries });
            return [
                live.add({ time: 100, nodes: [node("a", 10, 20)] }),
                // b is new: only a's deltas count; 4 and 10 over 2 s.
                live.add({ time: 102, nodes: [node("a", 14, 30), node("b", 5, 5)] }),
                // a restarted (counters went down): only b's deltas.
                live.add({ time: 104, nodes: [node("a", 1, 1), node("b", 9, 7)] }),
                // Beyond the window: the first three samples are dropped.
                live.add({ time: 500, nodes: [node("a", 1, 1)] }),
            ].concat([live.samples.length]);
        }"""
    )
    assert samples == [
        {"t": 100, "values": {"clients": 1, "subs": 2}},
        {"t": 102, "values": {"clients": 2, "subs": 4, "publications": 2, "deliveries": 5}},
        {"t": 104, "values": {"clients": 2, "subs": 4, "publications": 2, "deliveries": 1}},
        {"t": 500, "values": {"clients": 1, "subs": 2, "publications": 0, "deliveries": 0}},
        1,
    ]


# Every method of the actions page with the fields an operator would fill (ids are
# "param-" + the field's dotted name with dots as dashes); each must be answered with a result,
# but rpc: Centrifugo OSS registers no server API RPC extension, so a named method is 104 (not
# found), where a request without its method would be 107 (bad request).
FORMS: dict[str, dict[str, str | bool]] = {
    "publish": {"channel": "chat:forms", "data": '{"a": 1}', "tags": '{"k": "v"}'},
    "broadcast": {"channels": "chat:forms, chat:forms2", "data": "[1, 2]", "skip_history": True},
    "subscribe": {
        "channel": "chat:forms",
        "user": "nobody",
        "override": '{"presence": {"value": true}}',
    },
    "unsubscribe": {"channel": "chat:forms", "user": "nobody"},
    "disconnect": {"user": "nobody", "disconnect-code": "4000", "disconnect-reason": "bye"},
    "refresh": {"user": "nobody", "expired": True},
    "presence": {"channel": "chat:forms"},
    "presence_stats": {"channel": "chat:forms"},
    "history": {"channel": "chat:forms", "limit": "5", "reverse": True},
    "history_remove": {"channel": "chat:forms"},
    "channels": {"pattern": "chat:*"},
    "info": {},
    "rpc": {"method": "ping", "params": '{"x": 1}'},
}


async def test_every_action_form_is_answered_with_a_result(
    srv: ServerHandle, context: BrowserContext, admin_token: str
) -> None:
    page = await signed_in_page(context, srv, admin_token)
    await page.goto(f"{srv.url}/#/actions")
    options = await page.locator("#action-method option").all_inner_texts()
    assert options == list(FORMS)
    result = page.locator("#action-result")
    for method, fields in FORMS.items():
        await page.locator("#action-method").select_option(method)
        for name, value in fields.items():
            control = page.locator(f"#param-{name}")
            if isinstance(value, bool):
                await control.check()
            else:
                await control.fill(value)
        await page.locator("#action-submit").click()
        await expect(result).not_to_have_attribute("data-outcome", "pending")
        answer = json.loads(await result.inner_text())
        if method == "rpc":
            assert answer == {"error": {"code": 104, "message": "not found"}}
        else:
            assert "result" in answer, (method, answer)
    # The last one sent: history of chat:forms after history_remove is empty.
    await page.locator("#action-method").select_option("history")
    await page.locator("#param-channel").fill("chat:forms")
    await page.locator("#action-submit").click()
    await expect(result).to_have_attribute("data-outcome", "ok")
    assert json.loads(await result.inner_text())["result"].get("publications", []) == []


async def test_status_page_lists_every_worker(
    server_factory: Callable[..., ServerHandle],
    redis_server: RedisProcess,
    context: BrowserContext,
    sdk: list[Client],
    shots: Path,
) -> None:
    """Two gunicorn workers on the Redis engine are two nodes: a row each (same name, own
    uid), and the charts sum them."""
    cfg = redis_config(redis_server.port)
    cfg["admin"] = {"enabled": True, "insecure": True}
    workers = server_factory(cfg, workers=2)
    for n in range(3):
        await sdk_client(workers, sdk, f"worker-client-{n}")
    page = await context.new_page()
    await page.goto(f"{workers.url}/#/status")
    rows = page.locator("[data-testid=node-row]")
    await expect(rows).to_have_count(2)
    # Each row is one worker's own node: names and uids differ.
    uids = {await r.get_attribute("data-uid") for r in await rows.all()}
    assert len(uids) == 2
    await expect(page.locator("[data-testid=chart-connections-clients]")).to_have_text("3")
    # Table and charts come from the same admin/live sample: the rows add up to the total.
    counts = await rows.locator("[data-testid=node-clients]").all_inner_texts()
    assert sum(map(int, counts)) == 3
    await page.screenshot(path=shots / "status-two-workers.png", full_page=True)
