// Live tail page: pick a channel, see its publications as they arrive (newest on top).
// At most MAX_ROWS rows stay in the DOM; while paused, arriving publications are held (also
// at most MAX_ROWS) and shown on resume. `#/tail/<name>` starts tailing that channel.

import { TailSocket } from "./tail_socket.js";
import { h, pretty } from "./dom.js";

const MAX_ROWS = 500;

function row(pub, channel) {
  return h(
    "li",
    { dataset: { testid: "tail-item", offset: pub.offset ?? "" } },
    h(
      "div",
      { class: "pub-meta" },
      h("time", {}, new Date().toLocaleTimeString()),
      h("span", { class: "badge" }, pub.offset !== undefined ? `#${pub.offset}` : "no offset"),
      h("span", { class: "code" }, channel),
      pub.info ? h("span", {}, `from ${pub.info.user || "(anonymous)"}`) : null,
      pub.tags ? h("span", { class: "code" }, `tags ${JSON.stringify(pub.tags)}`) : null,
    ),
    h("pre", { class: "code", dataset: { testid: "tail-data" } }, pretty(pub.data)),
  );
}

export function mount(view, initial) {
  const input = h("input", {
    id: "tail-channel",
    type: "text",
    required: true,
    autocomplete: "off",
    value: initial || "",
  });
  const start = h("button", { id: "tail-start", type: "submit" }, "Tail");
  const pause = h("button", { id: "tail-pause", type: "button", "aria-pressed": "false", disabled: true }, "Pause");
  const clear = h("button", { id: "tail-clear", type: "button" }, "Clear");
  const state = h(
    "p",
    { id: "tail-state", class: "muted", role: "status", dataset: { state: "idle" } },
    "Not tailing.",
  );
  const counter = h("span", { id: "tail-count", class: "muted" });
  const lastClose = h("span", { id: "tail-last-close", class: "muted" });
  const list = h("ol", { id: "tail-list", class: "pubs", reversed: true, "aria-live": "off" });

  let socket = null;
  let paused = false;
  let held = [];
  let received = 0;

  const showCount = () => {
    counter.textContent = `${received} received${held.length ? `, ${held.length} held while paused` : ""}`;
  };

  function add(pub, channel) {
    list.prepend(row(pub, channel));
    while (list.childElementCount > MAX_ROWS) list.lastElementChild.remove();
  }

  function onPublication(pub, channel) {
    received += 1;
    if (paused) {
      held.push([pub, channel]);
      if (held.length > MAX_ROWS) held.shift();
    } else {
      add(pub, channel);
    }
    showCount();
  }

  let connects = 0;

  function onState(name, detail) {
    state.dataset.state = name;
    const channel = socket?.channel ?? "";
    if (name === "subscribed") {
      connects += 1;
      state.dataset.connects = String(connects); // how many times it (re)subscribed
      state.dataset.client = detail;
    }
    if (name === "closed") lastClose.textContent = `last close: ${detail}`;
    state.textContent = {
      connecting: `Connecting to ${channel}… ${detail}`,
      subscribed: `Tailing ${channel}.`,
      closed: `Connection closed (${detail}); reconnecting…`,
      failed: `Cannot tail ${channel}: ${detail}`,
    }[name];
    state.className = name === "failed" || name === "closed" ? "error" : "muted";
  }

  function begin(channel) {
    socket?.stop();
    list.replaceChildren();
    held = [];
    received = 0;
    connects = 0;
    lastClose.textContent = "";
    showCount();
    pause.disabled = false;
    socket = new TailSocket(channel, { onState, onPublication });
    socket.start();
  }

  const form = h(
    "form",
    { id: "tail-form", class: "inline" },
    h("label", { for: "tail-channel" }, "Channel"),
    input,
    start,
    pause,
    clear,
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (input.value.trim()) begin(input.value.trim());
  });
  pause.addEventListener("click", () => {
    paused = !paused;
    pause.textContent = paused ? "Resume" : "Pause";
    pause.setAttribute("aria-pressed", String(paused));
    if (!paused) {
      for (const [pub, channel] of held) add(pub, channel);
      held = [];
      showCount();
    }
  });
  clear.addEventListener("click", () => {
    list.replaceChildren();
    held = [];
    showCount();
  });

  view.append(h("h1", {}, "Live tail"), form, h("div", { class: "tail-status" }, state, counter, lastClose), list);
  if (initial) begin(initial);
  return () => socket?.stop();
}
