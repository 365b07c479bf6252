// A minimal Socket.IO server for examples/compose: rooms and broadcasts shared through
// Redis, GET /health for tether's health check (503 once SIGTERM arrives, so tether sends
// no new sessions while this one finishes), and a clean stop on SIGTERM.
const http = require("node:http");
const os = require("node:os");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const port = Number(process.env.PORT || 3000);
let draining = false;

const httpServer = http.createServer((req, res) => {
  if (req.url === "/health") {
    res.writeHead(draining ? 503 : 200, { "content-type": "text/plain" });
    res.end(draining ? "draining\n" : "ok\n");
    return;
  }
  res.writeHead(404).end();
});
const io = new Server(httpServer);

io.on("connection", (socket) => {
  socket.emit("hello", { node: os.hostname() });
  socket.on("chat", (msg) => io.emit("chat", { node: os.hostname(), msg }));
});

async function main() {
  if (process.env.REDIS_URL) {
    const pub = createClient({ url: process.env.REDIS_URL });
    const sub = pub.duplicate();
    await Promise.all([pub.connect(), sub.connect()]);
    io.adapter(createAdapter(pub, sub));
  }
  httpServer.listen(port, "0.0.0.0", () => console.log(`listening on ${port}`));
}

process.on("SIGTERM", () => {
  draining = true;
  // Give tether's health check (every 2 s, fall 3) time to see the 503, then close.
  setTimeout(() => io.close(() => process.exit(0)), 8000).unref();
});

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
