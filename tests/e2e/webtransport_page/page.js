// One centrifuge-js client over WebTransport only, driven by the test through `start(cfg)`.
// Every event is kept in `window.rec` (the test awaits conditions on it with
// page.wait_for_function) and written to the page and the console (the test saves both).
'use strict';

window.rec = {
  states: [],
  connecting: [],
  connected: [],
  disconnected: [],
  subscribing: [],
  subscribed: [],
  pubs: [],
  published: [],
  errors: [],
};

const utf8 = new TextDecoder();

function show(line) {
  const text = `${new Date().toISOString()} ${line}`;
  document.getElementById('log').textContent += text + '\n';
  console.log(text);
}

document.addEventListener('DOMContentLoaded', () => {
  document.getElementById('support').textContent = String(typeof WebTransport === 'function');
});

window.start = (cfg) => {
  const client = new Centrifuge(
    // WebTransport alone: no fallback to WebSocket, so a connection is a WebTransport session.
    [{ transport: 'webtransport', endpoint: cfg.endpoint }],
    // Reconnect soon after a loss (the defaults start at 500 ms), and find a silent session
    // 2 s after a missed ping (10 s by default): the test waits for both.
    { debug: true, minReconnectDelay: 100, maxReconnectDelay: 1000, maxServerPingDelay: 2000 },
  );
  client.on('state', (ctx) => {
    rec.states.push(ctx.newState);
    document.getElementById('state').textContent = ctx.newState;
  });
  client.on('connecting', (ctx) => {
    rec.connecting.push({ code: ctx.code, reason: ctx.reason });
    show(`connecting: ${ctx.code} ${ctx.reason}`);
  });
  client.on('connected', (ctx) => {
    rec.connected.push({ client: ctx.client, transport: ctx.transport });
    show(`connected: client ${ctx.client} over ${ctx.transport}`);
  });
  client.on('disconnected', (ctx) => {
    rec.disconnected.push({ code: ctx.code, reason: ctx.reason });
    show(`disconnected: ${ctx.code} ${ctx.reason}`);
  });
  client.on('error', (ctx) => {
    rec.errors.push(ctx.error ? `${ctx.type}: ${ctx.error.code} ${ctx.error.message}` : ctx.type);
    show(`client error: ${ctx.type} ${JSON.stringify(ctx.error)}`);
  });

  const sub = client.newSubscription(cfg.channel);
  sub.on('subscribing', (ctx) => {
    rec.subscribing.push({ code: ctx.code, reason: ctx.reason });
    show(`subscribing: ${ctx.code} ${ctx.reason}`);
  });
  sub.on('subscribed', (ctx) => {
    const pos = ctx.streamPosition || {};
    rec.subscribed.push({
      recoverable: ctx.recoverable,
      positioned: ctx.positioned,
      wasRecovering: ctx.wasRecovering,
      recovered: ctx.recovered,
      offset: pos.offset,
      epoch: pos.epoch,
    });
    show(
      `subscribed to ${ctx.channel}: recoverable ${ctx.recoverable}, positioned ` +
        `${ctx.positioned}, wasRecovering ${ctx.wasRecovering}, recovered ${ctx.recovered}, ` +
        `offset ${pos.offset}, epoch ${pos.epoch}`,
    );
  });
  sub.on('publication', (ctx) => {
    // The Protobuf bundle hands data over as bytes: here they are always JSON text.
    const data = ctx.data instanceof Uint8Array ? JSON.parse(utf8.decode(ctx.data)) : ctx.data;
    rec.pubs.push({ data, offset: ctx.offset });
    show(`publication at offset ${ctx.offset}: ${JSON.stringify(data)}`);
  });
  sub.on('error', (ctx) => {
    rec.errors.push(`sub ${ctx.type}: ${ctx.error.code} ${ctx.error.message}`);
    show(`subscription error: ${ctx.type} ${JSON.stringify(ctx.error)}`);
  });

  // `publish(data)`: the outcome lands in rec.published ("ok" or the error), never thrown.
  window.publish = (data) => {
    sub.publish(data).then(
      () => { rec.published.push('ok'); show(`published ${data instanceof Uint8Array ? utf8.decode(data) : JSON.stringify(data)}`); },
      (e) => { rec.published.push(`${e.code} ${e.message}`); show(`publish failed: ${JSON.stringify(e)}`); },
    );
  };
  sub.subscribe();
  client.connect();
};
