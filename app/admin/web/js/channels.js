// Channels page: the server API's `channels` (active channels with their subscriber counts,
// filtered by a glob pattern), and for the channel picked its presence and last history
// (`history` with limit 20, newest first). `#/channels/<name>` opens with that channel picked.

import * as api from "./api.js";
import { h, replace, pretty } from "./dom.js";

const HISTORY_LIMIT = 20;
const compact = (value) => (value === undefined || value === null ? "" : JSON.stringify(value));

function explain(e) {
  // 108 is Centrifugo's "not available": presence or history is off for the namespace.
  if (e.code === 108) return `Not enabled for this channel's namespace (${e.message}).`;
  return e.message;
}

const cell = (text, cls) => h("td", { class: cls ?? null }, text);

function presenceView(result) {
  const clients = Object.values(result.presence ?? {});
  if (!clients.length) return h("p", { class: "muted" }, "Nobody is subscribed with presence.");
  const headers = ["User", "Client", "Connection info", "Channel info"];
  return h(
    "table",
    { class: "data", dataset: { testid: "presence-table" } },
    h("thead", {}, h("tr", {}, headers.map((c) => h("th", { scope: "col" }, c)))),
    h(
      "tbody",
      {},
      clients.map((c) =>
        h(
          "tr",
          { dataset: { testid: "presence-row" } },
          cell(c.user || "(anonymous)"),
          cell(c.client, "code"),
          cell(compact(c.conn_info), "code"),
          cell(compact(c.chan_info), "code"),
        ),
      ),
    ),
  );
}

function publicationItem(p) {
  const from = p.info
    ? h("span", {}, `from ${p.info.user || "(anonymous)"} · ${p.info.client}`)
    : h("span", { class: "muted" }, "no client info (server API)");
  return h(
    "li",
    { dataset: { testid: "history-item", offset: p.offset ?? "" } },
    h(
      "div",
      { class: "pub-meta" },
      h("span", { class: "badge" }, `#${p.offset ?? "–"}`),
      from,
      p.tags ? h("span", { class: "code" }, `tags ${compact(p.tags)}`) : null,
    ),
    h("pre", { class: "code" }, pretty(p.data)),
  );
}

function historyView(result) {
  const pubs = result.publications ?? [];
  const top = `Stream top: offset ${result.offset ?? 0}, epoch ${result.epoch || "–"}`;
  const position = h("p", { class: "muted" }, top);
  if (!pubs.length) return [position, h("p", { class: "muted" }, "No publications in history.")];
  return [position, h("ol", { class: "pubs" }, pubs.map(publicationItem))];
}

async function section(el, load, render) {
  replace(el, h("p", { class: "muted" }, "Loading…"));
  try {
    replace(el, render(await load()));
  } catch (e) {
    if (!(e instanceof api.Unauthorized)) replace(el, h("p", { class: "error" }, explain(e)));
  }
}

export function mount(view, initial) {
  const pattern = h("input", {
    id: "channels-pattern",
    type: "search",
    placeholder: "e.g. chat:*",
    autocomplete: "off",
  });
  const list = h("tbody", { id: "channels-body" });
  const summary = h("p", { id: "channels-summary", class: "muted", "aria-live": "polite" });
  const detail = h("section", { id: "channel-detail", "aria-label": "Channel detail" });
  let selected = initial || "";

  async function load() {
    summary.textContent = "Loading…";
    try {
      const result = await api.call("channels", pattern.value ? { pattern: pattern.value } : {});
      const entries = Object.entries(result.channels ?? {}).sort(([a], [b]) => a.localeCompare(b));
      summary.textContent = `${entries.length} active channel${entries.length === 1 ? "" : "s"}`;
      replace(
        list,
        entries.map(([name, info]) =>
          h(
            "tr",
            { dataset: { testid: "channel-row", channel: name }, class: name === selected ? "selected" : null },
            h("td", {}, h("button", { type: "button", class: "link", onclick: () => pick(name) }, name)),
            h("td", { class: "num", dataset: { testid: "channel-clients" } }, info.num_clients ?? 0),
          ),
        ),
      );
    } catch (e) {
      if (!(e instanceof api.Unauthorized)) summary.textContent = `Cannot list channels: ${explain(e)}`;
    }
  }

  function pick(name) {
    selected = name;
    for (const row of list.rows) row.classList.toggle("selected", row.dataset.channel === name);
    const presence = h("div", { id: "channel-presence" });
    const history = h("div", { id: "channel-history" });
    replace(
      detail,
      h("h2", {}, name),
      h("p", {}, h("a", { href: `#/tail/${encodeURIComponent(name)}` }, "Live tail this channel")),
      h("h3", {}, "Presence"),
      presence,
      h("h3", {}, `History (last ${HISTORY_LIMIT}, newest first)`),
      history,
    );
    section(presence, () => api.call("presence", { channel: name }), presenceView);
    const lastPublications = { channel: name, limit: HISTORY_LIMIT, reverse: true };
    section(history, () => api.call("history", lastPublications), historyView);
  }

  const form = h(
    "form",
    { id: "channels-form", class: "inline", role: "search" },
    h("label", { for: "channels-pattern" }, "Pattern"),
    pattern,
    h("button", { id: "channels-refresh", type: "submit" }, "Refresh"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    load();
  });

  view.append(
    h("h1", {}, "Channels"),
    form,
    summary,
    h(
      "div",
      { class: "split" },
      h(
        "table",
        { id: "channels", class: "data" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            h("th", { scope: "col" }, "Channel"),
            h("th", { scope: "col", class: "num" }, "Subscribers"),
          ),
        ),
        list,
      ),
      detail,
    ),
  );
  load();
  if (selected) pick(selected);
  return null;
}
