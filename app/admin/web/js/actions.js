// Actions page: a form for every server API method, sent through admin/api as
// {"method", "params"}, with the whole JSON answer shown pretty-printed.
//
// Field kinds: text, number (integer), bool (checkbox), json (textarea parsed before sending),
// list (comma-separated strings → array). A field's name may be a dotted path
// ("disconnect.code") to build a nested object. Empty fields are left out, so the server
// applies Centrifugo's defaults. Param names are Centrifugo's (internal/apiproto/api.proto).

import * as api from "./api.js";
import { h, field, pretty, replace } from "./dom.js";
import { RawJSON } from "./json.js";

const channel = { name: "channel", kind: "text", required: true };
const user = { name: "user", kind: "text" };
const client = { name: "client", kind: "text", hint: "a client id (UUID)" };
const session = { name: "session", kind: "text" };
const publishOptions = [
  { name: "tags", kind: "json", hint: 'an object of strings, e.g. {"kind": "test"}' },
  { name: "idempotency_key", kind: "text" },
  { name: "skip_history", kind: "bool" },
  { name: "delta", kind: "bool" },
  { name: "version", kind: "number" },
  { name: "version_epoch", kind: "text" },
];

export const METHODS = {
  publish: [channel, { name: "data", kind: "json", required: true, rows: 5 }, ...publishOptions],
  broadcast: [
    { name: "channels", kind: "list", required: true, hint: "comma-separated" },
    { name: "data", kind: "json", required: true, rows: 5 },
    ...publishOptions,
  ],
  subscribe: [
    channel,
    { ...user, required: true },
    client,
    session,
    { name: "expire_at", kind: "number", hint: "unix seconds" },
    { name: "info", kind: "json" },
    { name: "data", kind: "json" },
    { name: "recover_since.offset", kind: "number" },
    { name: "recover_since.epoch", kind: "text" },
    { name: "override", kind: "json", hint: '{"presence": {"value": true}, ...}' },
  ],
  unsubscribe: [channel, { ...user, required: true }, client, session],
  disconnect: [
    { ...user, required: true },
    client,
    session,
    { name: "whitelist", kind: "list", hint: "client ids to keep, comma-separated" },
    { name: "disconnect.code", kind: "number", hint: "e.g. 4000" },
    { name: "disconnect.reason", kind: "text" },
  ],
  refresh: [
    { ...user, required: true },
    client,
    session,
    { name: "expired", kind: "bool" },
    { name: "expire_at", kind: "number", hint: "unix seconds" },
    { name: "info", kind: "json" },
  ],
  presence: [channel],
  presence_stats: [channel],
  history: [
    channel,
    { name: "limit", kind: "number" },
    { name: "since.offset", kind: "number" },
    { name: "since.epoch", kind: "text" },
    { name: "reverse", kind: "bool" },
  ],
  history_remove: [channel],
  channels: [{ name: "pattern", kind: "text", hint: "glob, e.g. chat:*" }],
  info: [],
  rpc: [{ name: "method", kind: "text", required: true }, { name: "params", kind: "json" }],
};

const controlId = (name) => `param-${name.replace(/\./g, "-")}`;

function control(spec) {
  const id = controlId(spec.name);
  const common = {
    id,
    name: spec.name,
    "aria-required": spec.required ? "true" : null,
    dataset: { kind: spec.kind },
  };
  switch (spec.kind) {
    case "bool":
      return h("input", { ...common, type: "checkbox" });
    case "number":
      // Text, not type=number: that reads "" for what it cannot parse, hiding a typo.
      return h("input", { ...common, type: "text", inputmode: "numeric", autocomplete: "off" });
    case "json":
      return h("textarea", { ...common, rows: spec.rows ?? 2, spellcheck: "false", class: "code" });
    default:
      return h("input", { ...common, type: "text", autocomplete: "off" });
  }
}

function setPath(obj, path, value) {
  const keys = path.split(".");
  const last = keys.pop();
  let target = obj;
  for (const key of keys) target = target[key] ??= {};
  target[last] = value;
}

/** The params object from the form, or a list of {name, message} problems. */
export function readParams(form, specs) {
  const params = {};
  const problems = [];
  for (const spec of specs) {
    const el = form.querySelector(`#${controlId(spec.name)}`);
    el.removeAttribute("aria-invalid");
    let value;
    if (spec.kind === "bool") {
      if (el.checked) value = true;
    } else if (el.value.trim() !== "") {
      const raw = el.value.trim();
      if (spec.kind === "number") {
        // Sent as typed: version, offsets and expire_at are 64-bit in Centrifugo.
        if (/^-?\d+$/.test(raw)) value = new RawJSON(raw);
        else problems.push({ spec, message: "must be an integer" });
      } else if (spec.kind === "json") {
        try {
          JSON.parse(raw); // validate; send the text as typed (big integers stay exact)
          value = new RawJSON(raw);
        } catch (e) {
          problems.push({ spec, message: `is not valid JSON: ${e.message}` });
        }
      } else if (spec.kind === "list") {
        value = raw.split(",").map((x) => x.trim()).filter(Boolean);
      } else {
        value = el.value;
      }
    } else if (spec.required) {
      problems.push({ spec, message: "is required" });
    }
    if (value !== undefined) setPath(params, spec.name, value);
  }
  for (const { spec } of problems) {
    form.querySelector(`#${controlId(spec.name)}`).setAttribute("aria-invalid", "true");
  }
  return { params, problems };
}

export function mount(view) {
  const select = h(
    "select",
    // No name: rpc has a parameter called "method"; controls are found by id, not by name.
    { id: "action-method" },
    Object.keys(METHODS).map((m) => h("option", { value: m }, m)),
  );
  const fields = h("div", { id: "action-fields", class: "fields" });
  const problemsEl = h("ul", { id: "action-problems", class: "error", role: "alert", hidden: true });
  const submit = h("button", { id: "action-submit", type: "submit" }, "Send");
  const result = h("pre", { id: "action-result", class: "result", "aria-live": "polite", tabindex: 0 });
  const form = h(
    "form",
    { id: "action-form", class: "card", novalidate: true },
    field("Method", select),
    fields,
    problemsEl,
    submit,
  );

  function renderFields() {
    const specs = METHODS[select.value];
    replace(
      fields,
      specs.length
        ? specs.map((spec) => field(spec.name + (spec.required ? " *" : ""), control(spec), spec.hint))
        : h("p", { class: "muted" }, "No parameters."),
    );
    problemsEl.hidden = true;
  }

  select.addEventListener("change", renderFields);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const method = select.value;
    const { params, problems } = readParams(form, METHODS[method]);
    if (problems.length) {
      replace(problemsEl, problems.map(({ spec, message }) => h("li", {}, `${spec.name} ${message}`)));
      problemsEl.hidden = false;
      return;
    }
    problemsEl.hidden = true;
    submit.disabled = true;
    result.className = "result pending";
    result.dataset.outcome = "pending";
    result.textContent = `Sending ${method}…`;
    try {
      const answer = await api.command(method, params);
      result.className = answer.error ? "result failed" : "result ok";
      result.dataset.outcome = answer.error ? "error" : "ok";
      result.textContent = pretty(answer);
    } catch (e) {
      if (e instanceof api.Unauthorized) return;
      result.className = "result failed";
      result.dataset.outcome = "error";
      result.textContent = e.message;
    } finally {
      submit.disabled = false;
    }
  });

  renderFields();
  view.append(
    h("h1", {}, "Actions"),
    h("div", { class: "split" }, form, h("section", { "aria-label": "Answer" }, h("h2", {}, "Answer"), result)),
  );
  return null;
}
