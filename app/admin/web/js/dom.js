// Tiny DOM helpers shared by the pages: no framework, so these keep the page code readable.

/**
 * h("button", {id: "x", onclick: fn, dataset: {testid: "y"}}, "text", child...)
 * Attributes starting with "on" become listeners; `dataset` and `hidden`/`disabled`-style
 * booleans are set as properties; null/false children are skipped; strings become text nodes
 * (never innerHTML: every value shown comes from the server or the operator).
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else if (value === true) {
      el.setAttribute(key, "");
    } else {
      el.setAttribute(key, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace all children of `el`. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

/** Pretty JSON for display. */
export const pretty = (value) => JSON.stringify(value, null, 2);

/** 3725 → "1h 2m 5s". */
export function duration(seconds) {
  let s = Math.max(0, Math.floor(Number(seconds) || 0));
  const parts = [];
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60]]) {
    if (s >= size || parts.length) {
      parts.push(`${Math.floor(s / size)}${unit}`);
      s %= size;
    }
  }
  parts.push(`${s}s`);
  return parts.join(" ");
}

/** A labelled form row: <label for=id>text</label> + control (control must carry that id). */
export function field(labelText, control, hint) {
  return h(
    "div",
    { class: "field" },
    h("label", { for: control.id }, labelText),
    control,
    hint ? h("small", { class: "muted" }, hint) : null,
  );
}
