#!/usr/bin/env node
// One Socket.IO 4.8 cluster node, used as a real backend peer by tether's tests.
//
//   node server.js --id node-1 [--redis-socket /path/redis.sock | --redis-url redis://...]
//                  [--path /socket.io/] [--redis-key socket.io] [--cookie NAME]
//                  [--ping-interval MS] [--ping-timeout MS] [--ignore-stdin] [--port P (default 0)]
//                  [--health-status CODE (default 200) | --unhealthy] [--sid-prefix P]
//                  [--recovery] [--tick-ms MS [--tick-rooms N]]
//
// --recovery: connection state recovery (`connectionStateRecovery`) with
// @socket.io/redis-streams-adapter (needs --redis-socket or --redis-url), so a client that
// reconnects to ANOTHER node gets back its id, rooms and missed packets (with a workaround for
// the adapter's restore race: see exactRestore). --tick-ms MS: this node broadcasts `tick` with
// a sequence number (1, 2, ...) every MS, to every client, or with --tick-rooms N to each of
// the rooms room-0 .. room-(N-1) (clients join with the `join` event).
//
// Listens on 127.0.0.1 port 0 and prints exactly one line on stdout once ready:
//   {"event":"listening","port":<n>,"id":"<id>"}
// Everything else (errors, diagnostics) goes to stderr.
//
// It exits on SIGTERM/SIGINT and when its stdin reaches EOF, so a harness that dies takes
// its nodes with it (pass --ignore-stdin when starting it by hand with stdin on /dev/null).
//
// Plain HTTP routes (outside the Socket.IO path): `GET|HEAD /health` answers the current health
// status (200 "ok" by default; --health-status CODE / --unhealthy (= 503) set the initial one) and
// `GET|HEAD /whoami-http` answers the node id; both carry `x-node-id`. `GET /handshakes` answers
// {"id":..,"at":[ms,...]}: the wall-clock time (Date.now()) of every Engine.IO session this node
// opened (polling handshakes and WebSocket-only ones), so a test can measure the rate of new
// sessions at the node itself. `GET /sessions` answers {"id":..,"sessions":n}: the Engine.IO
// sessions open on this node now.
// The health status can be switched at run time:
//   - stdin line commands (unless --ignore-stdin), one per line:
//       `health ok`   (also `healthy`)   -> 200 "ok"
//       `health fail` (also `unhealthy`) -> 503 "unhealthy"
//       `health <CODE>`                  -> that status (100..599; body "ok" if 2xx, else "unhealthy")
//       `health hang`                    -> /health requests get no answer at all (held open until
//                                           the status changes again, then answered with the new one)
//     each command is acknowledged on stdout with {"event":"health","status":<n|"hang">,"id":"<id>"}
//     (after the listening line); unknown lines are ignored.
//   - SIGUSR2 toggles between 200 and 503 (standard signals coalesce: leave a few ms between two).
"use strict";

const http = require("http");
const { Server } = require("socket.io");

function usage(msg) {
  if (msg) process.stderr.write(`server.js: ${msg}\n`);
  process.stderr.write(
    "usage: node server.js --id ID [--redis-socket PATH | --redis-url URL] [--path /socket.io/]\n" +
      "                      [--redis-key KEY] [--cookie NAME] [--ping-interval MS] [--ping-timeout MS]\n" +
      "                      [--ignore-stdin] [--port P] [--health-status CODE | --unhealthy]\n" +
      "                      [--sid-prefix P] [--recovery] [--tick-ms MS [--tick-rooms N]]\n"
  );
  process.exit(2);
}

function parseArgs(argv) {
  const opts = { id: null, redisSocket: null, redisUrl: null, path: "/socket.io/", redisKey: null, cookie: null,
    pingInterval: null, pingTimeout: null, ignoreStdin: false, port: 0, healthStatus: 200 };
  const valued = {
    "--id": "id", "--redis-socket": "redisSocket", "--redis-url": "redisUrl", "--path": "path",
    "--redis-key": "redisKey", "--cookie": "cookie", "--ping-interval": "pingInterval", "--ping-timeout": "pingTimeout",
    "--port": "port", "--health-status": "healthStatus", "--sid-prefix": "sidPrefix",
    "--tick-ms": "tickMs", "--tick-rooms": "tickRooms",
  };
  for (let i = 0; i < argv.length; i++) {
    let arg = argv[i];
    let value;
    const eq = arg.indexOf("=");
    if (arg.startsWith("--") && eq > 0) {
      value = arg.slice(eq + 1);
      arg = arg.slice(0, eq);
    }
    if (arg === "--ignore-stdin") { opts.ignoreStdin = true; continue; }
    if (arg === "--recovery") { opts.recovery = true; continue; }
    if (arg === "--unhealthy") { opts.healthStatus = 503; continue; }
    if (arg === "--help" || arg === "-h") usage();
    const key = valued[arg];
    if (!key) usage(`unknown argument ${JSON.stringify(arg)}`);
    if (value === undefined) {
      if (i + 1 >= argv.length) usage(`${arg} needs a value`);
      value = argv[++i];
    }
    opts[key] = value;
  }
  if (!opts.id) usage("--id is required");
  if (opts.redisSocket && opts.redisUrl) usage("give at most one of --redis-socket and --redis-url");
  if (!opts.path.startsWith("/")) usage("--path must start with /");
  opts.port = Number(opts.port);
  if (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535) usage("--port must be 0..65535");
  opts.healthStatus = Number(opts.healthStatus);
  if (!Number.isInteger(opts.healthStatus) || opts.healthStatus < 100 || opts.healthStatus > 599) {
    usage("--health-status must be an HTTP status 100..599");
  }
  for (const k of ["pingInterval", "pingTimeout"]) {
    if (opts[k] !== null) {
      const n = Number(opts[k]);
      if (!Number.isInteger(n) || n <= 0) usage(`--${k === "pingInterval" ? "ping-interval" : "ping-timeout"} must be a positive integer`);
      opts[k] = n;
    }
  }
  return opts;
}

const opts = parseArgs(process.argv.slice(2));
const ID = opts.id;

function logErr(...parts) {
  const msg = parts.map((p) => (p instanceof Error ? p.stack || p.message : typeof p === "string" ? p : JSON.stringify(p)));
  process.stderr.write(`[${ID}] ${msg.join(" ")}\n`);
}

process.on("unhandledRejection", (err) => logErr("unhandled rejection:", err));
process.on("uncaughtException", (err) => logErr("uncaught exception:", err));
// Never die on a closed stdout/stderr pipe.
process.stdout.on("error", () => {});
process.stderr.on("error", () => {});

const ioPath = opts.path.replace(/\/+$/, "") || "/";

// ---- /health status, switchable at run time (see the header) ----
let healthStatus = opts.healthStatus; // a number, or "hang"
const hungHealth = new Set(); // /health requests held open while "hang"
let listening = false;

function answerHealth(req, res) {
  const ok = healthStatus >= 200 && healthStatus < 300;
  res.writeHead(healthStatus, { "content-type": "text/plain", "x-node-id": ID });
  res.end(req.method === "HEAD" ? undefined : ok ? "ok" : "unhealthy");
}

function setHealth(status) {
  healthStatus = status;
  if (status !== "hang") {
    for (const { req, res } of hungHealth) {
      if (!res.writableEnded && !res.destroyed) answerHealth(req, res);
    }
    hungHealth.clear();
  }
  const line = JSON.stringify({ event: "health", status, id: ID });
  if (listening) process.stdout.write(line + "\n");
  else logErr(line);
}

function healthCommand(line) {
  const words = line.trim().toLowerCase().split(/\s+/);
  if (words.length === 1 && words[0] === "healthy") return setHealth(200);
  if (words.length === 1 && words[0] === "unhealthy") return setHealth(503);
  if (words.length !== 2 || words[0] !== "health") return;
  const arg = words[1];
  if (arg === "ok" || arg === "pass" || arg === "up") return setHealth(200);
  if (arg === "fail" || arg === "down") return setHealth(503);
  if (arg === "hang") return setHealth("hang");
  const code = Number(arg);
  if (Number.isInteger(code) && code >= 100 && code <= 599) return setHealth(code);
  logErr(`ignoring health command ${JSON.stringify(line.trim())}`);
}

const httpServer = http.createServer((req, res) => {
  // socket.io/engine.io requests never reach here: engine.io intercepts its path first.
  const url = (req.url || "/").split("?")[0];
  if (req.method === "GET" || req.method === "HEAD") {
    if (url === "/health") {
      if (healthStatus === "hang") {
        const entry = { req, res };
        hungHealth.add(entry);
        res.on("close", () => hungHealth.delete(entry));
        return;
      }
      return void answerHealth(req, res);
    }
    if (url === "/handshakes" && req.method === "GET") {
      res.writeHead(200, { "content-type": "application/json", "x-node-id": ID });
      return void res.end(JSON.stringify({ id: ID, at: handshakeTimes }));
    }
    if (url === "/sessions" && req.method === "GET") {
      res.writeHead(200, { "content-type": "application/json", "x-node-id": ID });
      return void res.end(JSON.stringify({ id: ID, sessions: io.engine.clientsCount }));
    }
    if (url === "/whoami-http") {
      res.writeHead(200, { "content-type": "text/plain", "x-node-id": ID });
      return void res.end(req.method === "HEAD" ? undefined : ID);
    }
  }
  res.writeHead(404, { "content-type": "text/plain", "x-node-id": ID });
  res.end("not found");
});
httpServer.on("clientError", (err, socket) => {
  if (err.code !== "ECONNRESET") logErr("http clientError:", err.code || err.message);
  if (socket.writable) socket.end("HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n");
  else socket.destroy();
});

const serverOpts = { path: ioPath, serveClient: false };
if (opts.cookie) serverOpts.cookie = { name: opts.cookie, path: "/", httpOnly: true, sameSite: "lax" };
if (opts.pingInterval) serverOpts.pingInterval = opts.pingInterval;
if (opts.pingTimeout) serverOpts.pingTimeout = opts.pingTimeout;
if (opts.recovery) serverOpts.connectionStateRecovery = {};
const io = new Server(httpServer, serverOpts);
// --sid-prefix P: every sid starts with P, so tether's `sid_prefix: P` routes it here with no
// table (README, "Stateless stickiness"). engine.io's own generator (base64id, 15 random bytes
// in URL-safe base64) is not exported, so the same id is made with node:crypto.
if (opts.sidPrefix) {
  io.engine.generateId = () => opts.sidPrefix + require("crypto").randomBytes(15).toString("base64url");
}

// What the node saw on the latest request of each Engine.IO session, per transport (the
// WebSocket handshake, or the latest polling request), so `whoami` can tell a test which source
// address and cookies reached the backend on the transport the session is using now.
const lastSeen = new Map(); // sid -> { polling: { address, cookie }, websocket: { address, cookie } }

io.engine.on("initial_headers", (headers) => {
  headers["x-node-id"] = ID;
});
io.engine.on("headers", (headers, req) => {
  headers["x-node-id"] = ID;
  const sid = req._query && req._query.sid;
  if (sid && io.engine.clients[sid]) {
    const transport = req._query.transport === "websocket" ? "websocket" : "polling";
    const entry = lastSeen.get(sid) || {};
    entry[transport] = { address: req.socket && req.socket.remoteAddress, cookie: req.headers.cookie || null };
    lastSeen.set(sid, entry);
  }
});
// When each Engine.IO session was opened (GET /handshakes); bounded, for long runs.
const handshakeTimes = [];
io.engine.on("connection", (rawSocket) => {
  if (handshakeTimes.length < 1000000) handshakeTimes.push(Date.now());
  rawSocket.once("close", () => lastSeen.delete(rawSocket.id));
});
io.engine.on("connection_error", (err) => {
  const req = err.req || {};
  logErr(`engine connection_error code=${err.code} message=${JSON.stringify(err.message)} ` +
    `method=${req.method} url=${JSON.stringify(req.url)}`);
});

io.on("connection", (socket) => {
  socket.on("whoami", (...args) => {
    const ack = args[args.length - 1];
    if (typeof ack !== "function") return;
    const seen = (lastSeen.get(socket.conn.id) || {})[socket.conn.transport.name] || {};
    ack({
      node: ID,
      transport: socket.conn.transport.name,
      sid: socket.conn.id,
      id: socket.id,
      recovered: socket.recovered,
      rooms: [...socket.rooms].filter((r) => r !== socket.id),
      handshakeAddress: socket.handshake.address,
      address: seen.address || socket.conn.remoteAddress,
      cookie: seen.cookie || null,
    });
  });
  socket.on("echo", (payload, ack) => {
    if (typeof ack === "function") ack(payload);
  });
  socket.on("broadcast", (payload) => {
    io.emit("bcast", payload);
  });
  socket.on("join", (room, ack) => {
    if (typeof room === "string" || typeof room === "number") socket.join(String(room));
    if (typeof ack === "function") ack(typeof room === "string" || typeof room === "number");
  });
  socket.on("to-room", (msg) => {
    if (msg && (typeof msg.room === "string" || typeof msg.room === "number")) {
      io.to(String(msg.room)).emit("room", msg.payload);
    }
  });
  socket.on("error", (err) => logErr("socket error:", err));
});

let redisClients = [];
let msgpackDecode = null;

async function setupRedis() {
  if (!opts.redisSocket && !opts.redisUrl) return;
  const { createClient } = require("redis");
  const { createAdapter } = require("@socket.io/redis-adapter");
  if (opts.recovery) msgpackDecode = require("@msgpack/msgpack").decode;
  const clientOpts = opts.redisSocket
    ? { socket: { path: opts.redisSocket, reconnectStrategy: (n) => Math.min(50 * (n + 1), 1000) } }
    : { url: opts.redisUrl, socket: { reconnectStrategy: (n) => Math.min(50 * (n + 1), 1000) } };
  const pub = createClient(clientOpts);
  const sub = pub.duplicate();
  redisClients = [pub, sub];
  let lastLogged = 0;
  for (const [name, client] of [["pub", pub], ["sub", sub]]) {
    client.on("error", (err) => {
      // node-redis reconnects by itself; rate-limit the noise while redis is away.
      const now = Date.now();
      if (now - lastLogged > 1000) {
        lastLogged = now;
        logErr(`redis ${name} error:`, err && err.message ? err.message : String(err));
      }
    });
  }
  const connectTimeoutMs = 15000;
  let timer;
  await Promise.race([
    Promise.all([pub.connect(), sub.connect()]),
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`redis not reachable within ${connectTimeoutMs} ms`)), connectTimeoutMs);
    }),
  ]).finally(() => clearTimeout(timer));
  const adapterOpts = {};
  if (opts.redisKey) adapterOpts.key = opts.redisKey;
  if (opts.recovery) {
    const streams = require("@socket.io/redis-streams-adapter").createAdapter(pub);
    // Called with `new` by socket.io, like the factory it wraps (which returns the adapter).
    io.adapter(function (nsp) {
      return exactRestore(streams(nsp), pub);
    });
  } else {
    io.adapter(createAdapter(pub, sub, adapterOpts));
  }
  if (opts.tickMs) {
    // Without --tick-rooms: `tick` n to everyone. With --tick-rooms N: `tick` n to each of the
    // rooms room-0 .. room-(N-1), one broadcast per room, so a client sees 1, 2, 3, ... only
    // while it is in its room.
    const rooms = Number(opts.tickRooms || 0);
    let seq = 0;
    setInterval(() => {
      seq++;
      if (!rooms) return void io.emit("tick", seq);
      for (let r = 0; r < rooms; r++) io.to(`room-${r}`).emit("tick", seq, `room-${r}`);
    }, Number(opts.tickMs)).unref();
  }
}

// ---- connection state recovery without the adapter's race ----
//
// @socket.io/redis-streams-adapter 0.3.1 restores a session by reading the packets it missed
// with XRANGE (on the publishing connection) up to the end of the stream, while a separate
// reader (XREAD BLOCK) hands new stream entries to the sockets connected at that moment. The
// restored socket joins only after restoreSession returns, so:
//   - an entry added after the last XRANGE and read before the socket joined is lost to it;
//   - an entry the XRANGE returned but the (lagging) reader hands out after the socket joined
//     reaches it twice.
// The wrapper below waits, after the XRANGE loop, until the reader has handed out the last entry
// the loop covered (so nothing it returned can come again), then adds what the reader handed out
// after that entry (so nothing falls between). From there the socket joins within the same turn
// of the event loop: a reader delivery needs I/O, so none can come in between.
// What it does not cover: a node's own broadcasts reach its sockets when its XADD is answered,
// not through the reader, and can still fall between; the tests publish from a separate node.
function exactRestore(adapter, pub) {
  const Streams = adapter.constructor; // decode() and nextOffset() are static there
  const stream = "socket.io"; // the adapter's default streamName (streamCount 1)
  const sessionKeyPrefix = "sio:session:";
  const recent = []; // [{ id, raw }] handed out by the reader, oldest first, bounded
  let readerAt = null; // the last entry id the reader handed out
  const waiters = []; // [{ id, resolve }]: resolved once readerAt >= id
  const cmp = (a, b) => {
    const [am, as] = a.split("-").map(Number);
    const [bm, bs] = b.split("-").map(Number);
    return am - bm || as - bs;
  };

  const onRawMessage = adapter.onRawMessage.bind(adapter);
  adapter.onRawMessage = (raw, id) => {
    readerAt = id;
    recent.push({ id, raw });
    if (recent.length > 20000) recent.splice(0, recent.length - 10000);
    for (let k = waiters.length - 1; k >= 0; k--) {
      if (cmp(id, waiters[k].id) >= 0) waiters.splice(k, 1)[0].resolve(true);
    }
    onRawMessage(raw, id);
  };
  const readerPassed = (id, ms) => {
    if (readerAt !== null && cmp(readerAt, id) >= 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const w = { id, resolve };
      waiters.push(w);
      setTimeout(() => {
        const k = waiters.indexOf(w);
        if (k >= 0) waiters.splice(k, 1);
        resolve(false);
      }, ms).unref();
    });
  };
  const included = (rooms, o) =>
    (o.rooms.length === 0 || rooms.some((r) => o.rooms.includes(r))) && rooms.every((r) => !o.except.includes(r));

  adapter.restoreSession = async (pid, offset) => {
    if (!/^[0-9]+-[0-9]+$/.test(offset)) throw "invalid offset";
    const key = sessionKeyPrefix + pid;
    const [got, exists] = await Promise.all([pub.multi().get(key).del(key).exec(), pub.xRange(stream, offset, offset)]);
    if (!got[0] || exists.length === 0) throw "session or offset not found";
    const session = msgpackDecode(Buffer.from(got[0], "base64"));
    session.missedPackets = [];
    const take = (id, raw) => {
      if (raw.nsp !== adapter.nsp.name || raw.type !== "3") return;
      const { packet, opts: o } = Streams.decode(raw).data;
      if (included(session.rooms, o)) {
        packet.data.push(id);
        session.missedPackets.push(packet.data);
      }
    };
    let last = offset;
    for (let i = 0; i < 100; i++) {
      const entries = await pub.xRange(stream, Streams.nextOffset(last), "+");
      if (entries.length === 0) break;
      for (const e of entries) {
        take(e.id, e.message);
        last = e.id;
      }
    }
    // An entry of another namespace moves the stream but not this namespace's reader:
    // after a while, go on with what there is.
    if (!(await readerPassed(last, 2000))) logErr(`restore ${session.sid}: the stream reader did not reach ${last} in 2 s`);
    for (const e of recent) if (cmp(e.id, last) > 0) take(e.id, e.raw);
    return session;
  };
  return adapter;
}

let shuttingDown = false;
function shutdown(why, code = 0) {
  if (shuttingDown) return;
  shuttingDown = true;
  if (why) logErr(`shutting down (${why})`);
  // Hard stop whatever happens below.
  setTimeout(() => process.exit(code), 2000).unref();
  try { process.stdin.destroy(); } catch (_) {}
  for (const { res } of hungHealth) {
    try { res.destroy(); } catch (_) {} // held /health requests must not delay the close
  }
  hungHealth.clear();
  const within = (p, ms) => Promise.race([p, new Promise((resolve) => setTimeout(resolve, ms))]);
  (async () => {
    try {
      // Disconnects every socket, closes the adapter (redis unsubscribes) and the HTTP server.
      await within(io.close(), 1000);
    } catch (err) {
      logErr("io.close:", err);
    }
    try { httpServer.closeAllConnections(); } catch (_) {}
    // QUIT lets the adapter's pending UNSUBSCRIBEs finish instead of rejecting them.
    await within(Promise.allSettled(redisClients.map((c) => (c.isOpen ? c.quit() : Promise.resolve()))), 500);
  })()
    .catch((err) => logErr("shutdown:", err))
    .finally(() => process.exit(code));
}

process.on("SIGTERM", () => shutdown(null));
process.on("SIGINT", () => shutdown(null));
process.on("SIGHUP", () => shutdown("SIGHUP"));
process.on("SIGUSR2", () => setHealth(healthStatus === 200 ? 503 : 200));
if (!opts.ignoreStdin) {
  process.stdin.on("end", () => shutdown("stdin closed"));
  process.stdin.on("close", () => shutdown("stdin closed"));
  process.stdin.on("error", () => shutdown("stdin error"));
  // Line commands (see the header); anything else the harness writes is drained and ignored.
  let pending = "";
  process.stdin.setEncoding("utf8");
  process.stdin.on("data", (chunk) => {
    pending += chunk;
    let nl;
    while ((nl = pending.indexOf("\n")) >= 0) {
      const line = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      if (line.trim()) healthCommand(line);
    }
    if (pending.length > 4096) pending = ""; // not a command: never buffer without bound
  });
  process.stdin.resume();
}

(async () => {
  try {
    await setupRedis();
  } catch (err) {
    logErr("startup failed:", err);
    return shutdown("startup failure", 1);
  }
  if (shuttingDown) return;
  httpServer.once("error", (err) => {
    logErr("listen failed:", err);
    shutdown("listen failure", 1);
  });
  httpServer.listen(opts.port, "127.0.0.1", () => {
    const { port } = httpServer.address();
    process.stdout.write(JSON.stringify({ event: "listening", port, id: ID }) + "\n");
    listening = true;
  });
})();
