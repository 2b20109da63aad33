// Publishes one event through the real `@socket.io/redis-emitter` and exits: the reference the
// bench's Lua publisher is checked against (tests/test_bench_peers_smoke.py).
//
// usage: node emit_once.js --redis-port R --room ROOM --data JSON
"use strict";

const { Emitter } = require("@socket.io/redis-emitter");
const { createClient } = require("redis");

function arg(name) {
  const i = process.argv.indexOf(name);
  return process.argv[i + 1];
}

async function main() {
  const client = createClient({ url: `redis://127.0.0.1:${Number(arg("--redis-port"))}` });
  await client.connect();
  const emitter = new Emitter(client);
  emitter.to(arg("--room")).emit("m", JSON.parse(arg("--data")));
  await client.quit(); // sends QUIT after the PUBLISH, so the message is out
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
