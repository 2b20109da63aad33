// Node.js socket.io peer of `python -m bench.peers` (bench/README.md, issue 23 target 5).
//
// What socket.io's own docs show for a production deployment with several servers:
// socket.io 4.8 on Node's http server, the Redis adapter (`createAdapter(pubClient, subClient)`
// with node-redis 4, as the adapter's README shows), WebSocket transport only (the bench
// clients never poll) and `bufferutil` installed (the "performance tuning" page: ws masks and
// unmasks frames in C with it). Everything else is left at socket.io's defaults
// (perMessageDeflate off, pings every 25 s).
//
// Publications never come from this process: another process publishes them the way
// `@socket.io/redis-emitter` does (`emitter.to(room).emit("m", data)`: a msgpack message
// ["emitter", packet, opts] on the Redis channel `socket.io#/#<room>#`), the adapter receives
// it on its pattern subscription `socket.io#/#*`, decodes it and broadcasts to the room's
// local sockets. The bench publisher builds those exact bytes in a Lua loop
// (bench/peers/publishers.py, checked against the real emitter in
// tests/test_bench_peers_smoke.py).
//
// A client joins a room by emitting `join` with the room's name; the ack answers once it is in
// (the same client path as the python-socketio peer, bench/load.py). `GET /health` answers
// {"subscribers": <sockets connected>} for the bench's readiness and drain checks.
//
// usage: node server.js --port P --redis-port R
"use strict";

const http = require("node:http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

function arg(name) {
  const i = process.argv.indexOf(name);
  if (i < 0 || i + 1 >= process.argv.length) {
    console.error(`missing ${name}`);
    process.exit(2);
  }
  return process.argv[i + 1];
}

async function main() {
  const port = Number(arg("--port"));
  const redisPort = Number(arg("--redis-port"));
  const pubClient = createClient({ url: `redis://127.0.0.1:${redisPort}` });
  const subClient = pubClient.duplicate();
  pubClient.on("error", (err) => console.error("redis pub client:", err.message));
  subClient.on("error", (err) => console.error("redis sub client:", err.message));
  await Promise.all([pubClient.connect(), subClient.connect()]);

  const httpServer = http.createServer((req, res) => {
    if (req.url === "/health") {
      res.writeHead(200, { "Content-Type": "application/json" });
      res.end(JSON.stringify({ subscribers: io.engine.clientsCount }));
      return;
    }
    // Engine.IO answers its own path before this handler; anything else is not served.
    res.writeHead(404);
    res.end();
  });
  const io = new Server(httpServer, {
    adapter: createAdapter(pubClient, subClient),
    transports: ["websocket"],
  });
  io.on("connection", (socket) => {
    socket.on("join", (room, ack) => {
      socket.join(room);
      if (typeof ack === "function") ack("ok");
    });
  });
  httpServer.listen(port, "127.0.0.1", 4096);

  const stop = () => {
    io.close();
    Promise.allSettled([pubClient.quit(), subClient.quit()]).then(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
