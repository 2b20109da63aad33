// The admin backend, as the UI sees it: init, auth, the server API (admin/api), and our two
// endpoints admin/live and admin/tail. Every URL is relative, so the UI works under any
// admin.handler_prefix. A 401 from any call clears the token and fires "admin:unauthorized"
// on window; main.js answers it by showing the sign-in page.

import * as json from "./json.js";

const TOKEN_KEY = "centrifugo-py.admin.token";

export class Unauthorized extends Error {
  constructor() {
    super("not signed in");
    this.name = "Unauthorized";
  }
}

/** An HTTP error other than 401 (status kept), or a server API error ({code, message}). */
export class ApiError extends Error {
  constructor(message, { status = 0, code = 0 } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

export const getToken = () => localStorage.getItem(TOKEN_KEY) ?? "";
export const setToken = (token) => localStorage.setItem(TOKEN_KEY, token);
export const clearToken = () => localStorage.removeItem(TOKEN_KEY);

function authHeaders() {
  const token = getToken();
  // Centrifugo's admin scheme is "token <t>", not "Bearer".
  return token ? { Authorization: `token ${token}` } : {};
}

async function send(path, init) {
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    throw new ApiError(`network error: ${e.message}`);
  }
  if (resp.status === 401) {
    clearToken();
    window.dispatchEvent(new CustomEvent("admin:unauthorized"));
    throw new Unauthorized();
  }
  return resp;
}

async function jsonBody(resp) {
  const text = await resp.text();
  try {
    return text ? json.parse(text) : {};
  } catch {
    // Go's http.Error answers plain text ("Bad Request"): keep it for the message.
    return { error: { code: 0, message: text.trim() || resp.statusText } };
  }
}

async function postJSON(path, body) {
  const resp = await send(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", ...authHeaders() },
    body: json.stringify(body), // JSON fields typed by the operator are sent exactly
  });
  const data = await jsonBody(resp);
  if (!resp.ok) {
    // admin/tail says why as a string ({"error": "..."}); others as {"error": {code, message}}.
    const error = typeof data?.error === "string" ? { message: data.error } : data?.error;
    const message = error?.message || `HTTP ${resp.status}`;
    throw new ApiError(message, { status: resp.status, code: error?.code ?? 0 });
  }
  return data;
}

/** GET admin/init → {insecure, edition, authenticated}. */
export async function init() {
  const resp = await send("admin/init", { headers: authHeaders() });
  if (!resp.ok) throw new ApiError(`admin/init: HTTP ${resp.status}`, { status: resp.status });
  return resp.json();
}

/** POST admin/auth (form field password); stores the token. 400 = wrong, 429 = rate limited. */
export async function signIn(password) {
  const resp = await fetch("admin/auth", {
    method: "POST",
    body: new URLSearchParams({ password }),
  });
  if (resp.ok) {
    const { token } = await resp.json();
    setToken(token);
    return token;
  }
  const message =
    resp.status === 429
      ? "Too many sign-in attempts from this address: wait a minute and try again."
      : resp.status === 400
        ? "Wrong password (or the server has no admin password configured)."
        : `Sign-in failed: HTTP ${resp.status}.`;
  throw new ApiError(message, { status: resp.status });
}

/** The whole answer of a server API call: {result} or {error: {code, message}}. */
export const command = (method, params = {}) => postJSON("admin/api", { method, params });

/** A server API call's result; its error raised as ApiError. */
export async function call(method, params = {}) {
  const answer = await command(method, params);
  if (answer.error) {
    throw new ApiError(`${answer.error.message} (code ${answer.error.code})`, {
      code: answer.error.code,
    });
  }
  return answer.result ?? {};
}

/** POST admin/live → {time, nodes: [{uid, ..., publications, deliveries}]}. */
export const live = () => postJSON("admin/live", {});

/** POST admin/tail → {token, url}: a connection token already subscribed to `channel`. */
export const tail = (channel) => postJSON("admin/tail", { channel });
