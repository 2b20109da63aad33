// Status page: every node (worker) and live charts of connections, subscriptions and
// messages per second, from admin/live (a fresh survey of every node with the fields of the
// server API's `info` plus publication/delivery counters; `info` itself reports what each node
// last broadcast, seconds old, and would disagree with the charts), refreshed every POLL_MS
// while the tab is visible (a hidden tab polls nothing; the gap breaks the chart lines).
// Totals and rates: live_samples.js.

import * as api from "./api.js";
import { LineChart } from "./chart.js";
import { LiveSamples } from "./live_samples.js";
import { h, replace, duration } from "./dom.js";

const POLL_MS = 2000;
const WINDOW_SECONDS = 300;

// Kept at module level, so the charts keep their last minutes across page switches.
const live = new LiveSamples(WINDOW_SECONDS);

const COLUMNS = [
  ["name", "Name", (n) => n.name],
  // Workers of one server share its name: the uid tells them apart.
  ["uid", "Node id", (n) => String(n.uid ?? "").slice(0, 8)],
  ["version", "Version", (n) => n.version],
  ["uptime", "Uptime", (n) => duration(n.uptime)],
  ["clients", "Clients", (n) => n.num_clients ?? 0, true],
  ["users", "Users", (n) => n.num_users ?? 0, true],
  ["subs", "Subscriptions", (n) => n.num_subs ?? 0, true],
  ["channels", "Channels", (n) => n.num_channels ?? 0, true],
];

function nodeRows(nodes) {
  const key = (n) => `${n.name}\u0000${n.uid}`;
  const sorted = [...nodes].sort((a, b) => key(a).localeCompare(key(b)));
  return sorted.map((node) =>
    h(
      "tr",
      { dataset: { testid: "node-row", uid: node.uid } },
      COLUMNS.map(([key, , value, numeric]) =>
        key === "name"
          ? h("th", { scope: "row", dataset: { testid: "node-name" } }, value(node))
          : h(
              "td",
              {
                class: numeric ? "num" : key === "uid" ? "code" : null,
                title: key === "uid" ? node.uid : null,
                dataset: { testid: `node-${key}` },
              },
              value(node),
            ),
      ),
    ),
  );
}

export function mount(view) {
  const charts = [
    new LineChart({
      id: "chart-connections",
      title: "Connections",
      series: [{ key: "clients", label: "clients" }],
      windowSeconds: WINDOW_SECONDS,
    }),
    new LineChart({
      id: "chart-subscriptions",
      title: "Subscriptions",
      series: [{ key: "subs", label: "subscriptions" }],
      windowSeconds: WINDOW_SECONDS,
    }),
    new LineChart({
      id: "chart-messages",
      title: "Messages per second",
      series: [
        { key: "publications", label: "publications/s" },
        { key: "deliveries", label: "deliveries/s" },
      ],
      windowSeconds: WINDOW_SECONDS,
    }),
  ];
  const tbody = h("tbody", { id: "nodes-body" });
  const updated = h("p", { id: "status-updated", class: "muted", "aria-live": "polite" }, "Loading…");
  const error = h("p", { id: "status-error", class: "error", role: "alert", hidden: true });

  view.append(
    h("h1", {}, "Status"),
    h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        { id: "nodes", class: "data" },
        h("caption", {}, "Nodes (one per worker)"),
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            COLUMNS.map(([, label, , numeric]) =>
              h("th", { scope: "col", class: numeric ? "num" : null }, label),
            ),
          ),
        ),
        tbody,
      ),
    ),
    updated,
    error,
    h("section", { class: "charts", "aria-label": "Last 5 minutes" }, charts.map((c) => c.element)),
  );

  let timer = null;
  let inFlight = false;
  let stopped = false;

  async function tick() {
    timer = null;
    inFlight = true;
    try {
      const sample = await api.live();
      if (stopped) return;
      replace(tbody, nodeRows(sample.nodes ?? []));
      live.add(sample);
      for (const chart of charts) chart.update(live.samples, sample.time);
      updated.textContent = `Updated ${new Date(sample.time * 1000).toLocaleTimeString()}`;
      error.hidden = true;
    } catch (e) {
      if (e instanceof api.Unauthorized || stopped) return;
      error.textContent = `Refresh failed: ${e.message}`;
      error.hidden = false;
    } finally {
      inFlight = false;
    }
    schedule();
  }

  function schedule() {
    if (!stopped && timer === null && document.visibilityState === "visible") {
      timer = setTimeout(tick, POLL_MS);
    }
  }

  function onVisibility() {
    if (document.visibilityState === "visible" && timer === null && !inFlight) tick();
    else if (document.visibilityState === "hidden" && timer !== null) {
      clearTimeout(timer);
      timer = null;
    }
  }

  document.addEventListener("visibilitychange", onVisibility);
  tick();
  return () => {
    stopped = true;
    if (timer !== null) clearTimeout(timer);
    document.removeEventListener("visibilitychange", onVisibility);
  };
}
