// JSON without losing big integers. JSON.parse turns 12345678901234567890 into
// 12345678901234567000; Centrifugo passes publication data through byte-exact, so the UI must
// not round what an operator publishes or what it shows.
//
// - Sending: a JSON field's text is validated with JSON.parse but sent as typed (RawJSON,
//   spliced into the request body by stringify()), so every browser sends it exactly.
// - Showing: parse() keeps integers that a double cannot hold as JSON.rawJSON values, which
//   JSON.stringify writes back as their source text (browsers with JSON.parse source text
//   access: Chromium 114+, Firefox 135+; elsewhere they are rounded for display only).

/** JSON text to be sent as it is (already validated). */
export class RawJSON {
  constructor(text) {
    this.text = text;
  }
}

/** JSON.stringify, with RawJSON values written as their text. */
export function stringify(value) {
  const raws = [];
  const nonce = Math.random().toString(36).slice(2);
  const mark = (i) => `\u0000${nonce}:${i}`;
  const text = JSON.stringify(value, (_key, v) =>
    v instanceof RawJSON ? mark(raws.push(v.text) - 1) : v,
  );
  // JSON.stringify escapes U+0000 as \u0000, so the marks appear as "\u0000<nonce>:<i>".
  const escaped = new RegExp(`"\\\\u0000${nonce}:(\\d+)"`, "g");
  return text.replace(escaped, (_m, i) => raws[Number(i)]);
}

const keepsSource = typeof JSON.rawJSON === "function";

/** JSON.parse keeping integers beyond 2^53 exact where the browser can. */
export function parse(text) {
  if (!keepsSource) return JSON.parse(text);
  return JSON.parse(text, (_key, value, context) =>
    typeof value === "number" && Number.isInteger(value) && !Number.isSafeInteger(value)
      ? JSON.rawJSON(context.source)
      : value,
  );
}
