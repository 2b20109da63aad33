// Runs one centrifuge-js scenario against a running server and prints its result as JSON.
//
// Usage: node run.mjs [scenario.mjs]   (without a file the scenario is read from stdin)
//
// With CF_PROTOBUF=1 in the environment the SDK is centrifuge-js's Protobuf build
// ('centrifuge/build/protobuf'): the same API over the `centrifuge-protobuf` sub-protocol.
//
// A scenario is the BODY of an async function. It sees these names:
//   Centrifuge, WebSocket       the SDK class and the ws constructor
//   env                         process.env (CF_WS_URL, CF_HTTP_URL, CF_API_KEY, CF_TOKEN, ...)
//   newClient(opts)             a Centrifuge bound to env.CF_WS_URL using ws; closed at the end
//   waitEvent(em, name, ms, pred)  resolves with the next event context (optionally matching pred)
//   collect(em, name)           an array that fills with every later event context
//   waitUntil(em, names, cond, ms, what)  resolves once cond() holds, re-checked on each event
//   expectError(promise)        resolves with the rejection {code, message}; throws if it resolved
//   api(method, params)         POST /api/<method> with X-API-Key, returns the parsed body
//   token(user, {ttl, ...claims})            HS256 connection JWT signed with env.CF_HMAC_KEY
//   subToken(user, channel, {ttl, ...claims}) HS256 subscription JWT (env.CF_SUB_HMAC_KEY)
//   log(...)                    writes to stderr (shown by the Python helper on failure)
//   bus                         a fresh EventEmitter for the scenario's own signals
// and returns a JSON-serialisable value. The runner prints exactly one line to stdout:
//   {"ok": true, "result": <value>}   or   {"ok": false, "error": "...", "stack": "..."}
import { createHmac } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import WebSocket from 'ws';

const env = process.env;
const { Centrifuge } = await import(env.CF_PROTOBUF === '1' ? 'centrifuge/build/protobuf' : 'centrifuge');
const timeoutMs = Number(env.CF_TIMEOUT_MS || 20000);
const clients = [];
let finished = false;

function log(...args) {
  process.stderr.write(args.map((a) => (typeof a === 'string' ? a : JSON.stringify(a))).join(' ') + '\n');
}

function describe(err) {
  // centrifuge-js rejects with plain {code, message} objects, not Error instances.
  if (err instanceof Error) return { error: err.message, stack: err.stack, code: err.code };
  if (err && typeof err === 'object') {
    return { error: JSON.stringify(err), code: err.code, message: err.message };
  }
  return { error: String(err) };
}

function finish(payload, exitCode) {
  if (finished) return;
  finished = true;
  // Serialise before closing clients: their 'disconnected' handlers may mutate the result.
  let line;
  try {
    line = JSON.stringify(payload);
  } catch (e) {
    line = JSON.stringify({ ok: false, error: 'result is not JSON-serialisable: ' + String(e) });
  }
  for (const c of clients) {
    try {
      c.disconnect();
    } catch (e) {
      log('disconnect failed', String(e));
    }
  }
  process.stdout.write(line + '\n', () => process.exit(exitCode));
}

function newClient(opts = {}) {
  const url = opts.url || env.CF_WS_URL;
  const options = { websocket: WebSocket, ...opts };
  delete options.url;
  const c = new Centrifuge(url, options);
  if (env.CF_DEBUG_EVENTS) {
    for (const name of ['connecting', 'connected', 'disconnected', 'error']) {
      c.on(name, (ctx) => log('client', name, describe(ctx?.error ?? ctx)));
    }
  }
  clients.push(c);
  return c;
}

function waitEvent(emitter, name, ms = 5000, pred = null) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.off(name, handler);
      reject(new Error(`timeout after ${ms}ms waiting for event "${name}"`));
    }, ms);
    function handler(ctx) {
      if (pred && !pred(ctx)) return;
      clearTimeout(timer);
      emitter.off(name, handler);
      resolve(ctx);
    }
    emitter.on(name, handler);
  });
}

// Re-checks `cond` whenever `emitter` emits one of `names` (no polling).
function waitUntil(emitter, names, cond, ms = 5000, what = 'condition') {
  return new Promise((resolve, reject) => {
    if (cond()) return resolve();
    const list = Array.isArray(names) ? names : [names];
    const check = () => {
      if (!cond()) return;
      cleanup();
      resolve();
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`timeout after ${ms}ms waiting for ${what}`));
    }, ms);
    function cleanup() {
      clearTimeout(timer);
      for (const n of list) emitter.off(n, check);
    }
    // Listeners run in registration order; collect() handlers registered earlier already ran.
    for (const n of list) emitter.on(n, check);
  });
}

function collect(emitter, name) {
  const items = [];
  emitter.on(name, (ctx) => items.push(ctx));
  return items;
}

async function expectError(promise) {
  let value;
  try {
    value = await promise;
  } catch (err) {
    if (err instanceof Error) throw err;
    return { code: err?.code, message: err?.message };
  }
  throw new Error('expected a rejection, got ' + JSON.stringify(value));
}

async function api(method, params = {}) {
  const resp = await fetch(`${env.CF_HTTP_URL}/api/${method}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-API-Key': env.CF_API_KEY || '' },
    body: JSON.stringify(params),
  });
  const text = await resp.text();
  if (resp.status !== 200) throw new Error(`api ${method}: HTTP ${resp.status}: ${text}`);
  return JSON.parse(text);
}

// Minted here (not in Python) so getToken callbacks can return tokens with a fresh `exp`.
function signJwt(claims, secret) {
  const part = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
  const input = part({ alg: 'HS256', typ: 'JWT' }) + '.' + part(claims);
  return input + '.' + createHmac('sha256', secret).update(input).digest('base64url');
}

function claimsFor(user, opts) {
  const { ttl, ...extra } = opts;
  const now = Math.floor(Date.now() / 1000);
  const claims = { sub: user, iat: now, ...extra };
  if (ttl !== undefined && ttl !== null) claims.exp = now + ttl;
  return claims;
}

function token(user, opts = {}) {
  return signJwt(claimsFor(user, opts), env.CF_HMAC_KEY);
}

function subToken(user, channel, opts = {}) {
  return signJwt(claimsFor(user, { channel, ...opts }), env.CF_SUB_HMAC_KEY || env.CF_HMAC_KEY);
}

async function readSource() {
  const file = process.argv[2];
  if (file) return readFileSync(file, 'utf8');
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

process.on('unhandledRejection', (err) => finish({ ok: false, ...describe(err), where: 'unhandledRejection' }, 1));
process.on('uncaughtException', (err) => finish({ ok: false, ...describe(err), where: 'uncaughtException' }, 1));

const timer = setTimeout(
  () => finish({ ok: false, error: `scenario timed out after ${timeoutMs}ms` }, 1),
  timeoutMs,
);

try {
  const source = await readSource();
  const AsyncFunction = Object.getPrototypeOf(async function () {}).constructor;
  const scenario = new AsyncFunction(
    'Centrifuge', 'WebSocket', 'env', 'newClient', 'waitEvent', 'collect', 'expectError', 'api', 'log',
    'token', 'subToken', 'waitUntil', 'bus',
    source,
  );
  const result = await scenario(
    Centrifuge, WebSocket, env, newClient, waitEvent, collect, expectError, api, log,
    token, subToken, waitUntil, new EventEmitter(),
  );
  clearTimeout(timer);
  finish({ ok: true, result: result === undefined ? null : result }, 0);
} catch (err) {
  clearTimeout(timer);
  finish({ ok: false, ...describe(err) }, 1);
}
