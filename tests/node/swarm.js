#!/usr/bin/env node
// A swarm of socket.io-client 4.8 clients, used by tether's tests as real Socket.IO peers.
//
//   node swarm.js '<json options>'
//
// Prints exactly ONE line of JSON (the report) on stdout and exits 0 whenever it ran, even if
// clients failed (the caller asserts on the report). Exits non-zero only on a usage error or a
// bug. Never runs much past `timeoutMs`.
//
// Options (all optional except url):
//   url                 "http://127.0.0.1:12345" (required unless urls; only loopback targets accepted)
//   urls                ["http://127.0.0.1:1", "http://127.0.0.1:2"]: client i uses urls[i % n]
//                       (e.g. straight at several cluster nodes, to check cross-node broadcasts)
//   clients             300
//   transports          socket.io-client default (["polling","websocket"]: polling, then upgrade)
//   upgrade             true
//   withCredentials     false  (engine.io-client >= 6.4 keeps a cookie jar per client in Node)
//   path                "/socket.io/"
//   connectConcurrency  50     handshakes in flight at once
//   timeoutMs           30000  overall budget
//   broadcast           true   client 0 emits `broadcast`, everyone counts the `bcast` echo
//   broadcastWaitMs     5000   how long to wait for the broadcast to reach everyone
//   holdMs              500    keep everyone connected this long after the checks
//   upgradeWaitMs       5000   how long a client waits for its upgrade before its checks
//   ackTimeoutMs        10000  per-ack timeout for whoami / echo
//   binary              false  also put a Buffer in the echo payload (binary attachments)
//   localAddresses      e.g. ["127.0.0.2","127.0.0.3"]: client i uses localAddresses[i % n]
//   httpAgent           "auto" (default) | "none" | "shared-keepalive" | "per-client-keepalive"
//                       "auto": no agent, except one plain http.Agent({localAddress}) per address
//                       when localAddresses is set, because engine.io-client's Node polling
//                       transport ignores `localAddress` (only `agent` reaches xmlhttprequest-ssl).
//                       "none": never pass an agent (polling then ignores localAddresses).
//                       "shared-keepalive": one keep-alive agent (per local address) shared by all
//                       clients, so one TCP connection carries requests of many sessions.
//                       "per-client-keepalive": one keep-alive agent per client.
//   alternatePorts      e.g. [8001, 8002]: every request a client's transport makes (each
//                       polling GET and POST, the WebSocket) goes to the next port in turn on
//                       the url's host, starting at a different one for each transport: two
//                       balancer instances that must agree on every session
//   extraHeaders, query, auth   passed to io() as is
//   ioOptions           raw extra io() options, merged last
"use strict";

const http = require("http");
const crypto = require("crypto");
const { io } = require("socket.io-client");

function usageError(msg) {
  process.stderr.write(`swarm.js: ${msg}\nusage: node swarm.js '{"url":"http://127.0.0.1:PORT", ...}'\n`);
  process.exit(2);
}

let opts;
try {
  if (process.argv.length !== 3) usageError("expected exactly one argument: the JSON options");
  opts = JSON.parse(process.argv[2]);
  if (!opts || typeof opts !== "object" || Array.isArray(opts)) usageError("options must be a JSON object");
} catch (err) {
  usageError(`bad JSON options: ${err.message}`);
}

const KNOWN = new Set(["url", "urls", "clients", "transports", "upgrade", "withCredentials", "path", "connectConcurrency",
  "timeoutMs", "broadcast", "broadcastWaitMs", "holdMs", "upgradeWaitMs", "ackTimeoutMs", "binary", "localAddresses",
  "httpAgent", "extraHeaders", "query", "auth", "ioOptions", "alternatePorts"]);
for (const k of Object.keys(opts)) if (!KNOWN.has(k)) usageError(`unknown option ${JSON.stringify(k)}`);

function intOpt(name, dflt, min) {
  const v = opts[name] === undefined ? dflt : opts[name];
  if (!Number.isInteger(v) || v < min) usageError(`${name} must be an integer >= ${min}`);
  return v;
}
function boolOpt(name, dflt) {
  const v = opts[name] === undefined ? dflt : opts[name];
  if (typeof v !== "boolean") usageError(`${name} must be a boolean`);
  return v;
}

if ((opts.url === undefined) === (opts.urls === undefined)) usageError("give exactly one of url and urls");
const URLS = opts.urls === undefined ? [opts.url] : opts.urls;
if (!Array.isArray(URLS) || !URLS.length) usageError("urls must be a non-empty array");
for (const u of URLS) {
  if (typeof u !== "string") usageError("url must be a string");
  let target;
  try {
    target = new URL(u);
  } catch (_) {
    usageError(`bad url ${JSON.stringify(u)}`);
  }
  if (target.protocol !== "http:" && target.protocol !== "https:") usageError(`url must be http(s), got ${u}`);
  const host = target.hostname.replace(/^\[|\]$/g, "");
  if (!(host === "localhost" || host === "::1" || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host))) {
    usageError(`url must point at a loopback address (127.0.0.0/8, localhost, [::1]), got ${host}`);
  }
}

const N = intOpt("clients", 300, 1);
const CONCURRENCY = intOpt("connectConcurrency", 50, 1);
const TIMEOUT_MS = intOpt("timeoutMs", 30000, 1);
const BROADCAST_WAIT_MS = intOpt("broadcastWaitMs", 5000, 0);
const HOLD_MS = intOpt("holdMs", 500, 0);
const UPGRADE_WAIT_MS = intOpt("upgradeWaitMs", 5000, 0);
const ACK_TIMEOUT_MS = intOpt("ackTimeoutMs", 10000, 1);
const UPGRADE = boolOpt("upgrade", true);
const WITH_CREDENTIALS = boolOpt("withCredentials", false);
const BROADCAST = boolOpt("broadcast", true);
const BINARY = boolOpt("binary", false);
const PATH = opts.path === undefined ? "/socket.io/" : opts.path;
if (typeof PATH !== "string" || !PATH.startsWith("/")) usageError("path must be a string starting with /");
const TRANSPORTS = opts.transports;
if (TRANSPORTS !== undefined &&
    (!Array.isArray(TRANSPORTS) || !TRANSPORTS.length || !TRANSPORTS.every((t) => ["polling", "websocket", "webtransport"].includes(t)))) {
  usageError('transports must be a non-empty array of "polling" / "websocket"');
}
const LOCAL_ADDRESSES = opts.localAddresses;
if (LOCAL_ADDRESSES !== undefined &&
    (!Array.isArray(LOCAL_ADDRESSES) || !LOCAL_ADDRESSES.length ||
     !LOCAL_ADDRESSES.every((a) => typeof a === "string" && /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(a)))) {
  usageError("localAddresses must be a non-empty array of 127.x.y.z strings");
}
const HTTP_AGENT = opts.httpAgent === undefined ? "auto" : opts.httpAgent;
if (!["auto", "none", "shared-keepalive", "per-client-keepalive"].includes(HTTP_AGENT)) {
  usageError('httpAgent must be one of "auto", "none", "shared-keepalive", "per-client-keepalive"');
}
for (const k of ["extraHeaders", "query", "auth", "ioOptions"]) {
  if (opts[k] !== undefined && (opts[k] === null || typeof opts[k] !== "object" || Array.isArray(opts[k]))) {
    usageError(`${k} must be an object`);
  }
}

const ALTERNATE_PORTS = opts.alternatePorts;
if (ALTERNATE_PORTS !== undefined) {
  if (!Array.isArray(ALTERNATE_PORTS) || ALTERNATE_PORTS.length < 2 ||
      !ALTERNATE_PORTS.every((p) => Number.isInteger(p) && p > 0 && p < 65536)) {
    usageError("alternatePorts must be an array of at least two ports");
  }
  // engine.io-client builds every request's URL with Transport#createUri, which asks
  // _port() once per request: turning it makes each transport's requests alternate.
  const { Transport } = require("engine.io-client");
  let nextStart = 0;
  Transport.prototype._port = function () {
    if (this.__turn === undefined) this.__turn = nextStart++;
    else this.__turn++;
    const port = ALTERNATE_PORTS[this.__turn % ALTERNATE_PORTS.length];
    report.requestsByPort[port] = (report.requestsByPort[port] || 0) + 1;
    return ":" + port;
  };
}

// Whether a client is expected to start on polling and then move to websocket.
const effectiveTransports = TRANSPORTS || ["polling", "websocket"];
const EXPECT_UPGRADE = UPGRADE && effectiveTransports[0] === "polling" && effectiveTransports.includes("websocket");

const startedAt = Date.now();
const deadline = startedAt + TIMEOUT_MS;
const runId = crypto.randomBytes(6).toString("hex");

const report = {
  clients: N,
  connected: 0,
  connectErrors: 0,
  connectErrorSamples: [],
  upgraded: 0,
  acked: 0,
  echoOk: 0,
  broadcastReceived: 0,
  disconnects: 0,
  disconnectReasons: {},
  perNode: {},
  finalTransports: { websocket: 0, polling: 0 },
  elapsedMs: 0,
  // extras
  notStarted: 0,
  connectTimeouts: 0,
  ackFailures: 0,
  ackErrorSamples: [],
  echoMismatches: 0,
  broadcastSent: false,
  broadcastSender: null,
  cookieSeen: 0,
  serverSeenAddresses: {},
  serverSeenHandshakeAddresses: {},
  timedOut: false,
  localAddressMode: null,
  requestsByPort: {},
};

function sample(list, msg) {
  if (list.length < 5) list.push(msg);
}
function describeError(err) {
  if (!err) return "unknown error";
  let msg = err.message || String(err);
  const d = err.description;
  if (d !== undefined && d !== null) {
    if (typeof d === "number" || typeof d === "string") msg += ` (${d})`;
    else if (d.message) msg += ` (${d.message})`;
    else if (d.type) msg += ` (${d.type})`;
  }
  if (err.data !== undefined) {
    try { msg += ` data=${JSON.stringify(err.data)}`; } catch (_) {}
  }
  return msg;
}

// ---- HTTP agents (see the httpAgent option) ----
const agents = [];
function makeAgent(localAddress, keepAlive) {
  const a = new http.Agent({ keepAlive, ...(localAddress ? { localAddress } : {}) });
  agents.push(a);
  return a;
}
const sharedAgents = new Map(); // localAddress|"" -> agent
function agentFor(localAddress) {
  switch (HTTP_AGENT) {
    case "none":
      return undefined;
    case "auto":
      if (!localAddress) return undefined;
      if (!sharedAgents.has(localAddress)) sharedAgents.set(localAddress, makeAgent(localAddress, false));
      return sharedAgents.get(localAddress);
    case "shared-keepalive": {
      const key = localAddress || "";
      if (!sharedAgents.has(key)) sharedAgents.set(key, makeAgent(localAddress, true));
      return sharedAgents.get(key);
    }
    case "per-client-keepalive":
      return makeAgent(localAddress, true);
  }
  return undefined;
}
report.localAddressMode = LOCAL_ADDRESSES
  ? (HTTP_AGENT === "none" ? "localAddress only (websocket honours it, polling does not)" : `localAddress + http.Agent (${HTTP_AGENT})`)
  : null;

// ---- helpers ----
let finished = false;
let closing = false;
const deadlineWaiters = new Set();
const deadlineTimer = setTimeout(() => {
  report.timedOut = true;
  for (const w of deadlineWaiters) w();
  deadlineWaiters.clear();
}, TIMEOUT_MS);
// Last resort: always print something shortly after the budget, whatever is stuck.
setTimeout(() => finish("hard timeout"), TIMEOUT_MS + 3000);

function remaining() {
  return Math.max(0, deadline - Date.now());
}
/** Resolves to true when `setup(done)` calls done, or false after `ms` / at the deadline. */
function waitFor(setup, ms) {
  return new Promise((resolve) => {
    let settled = false;
    let timer = null;
    const settle = (v) => {
      if (settled) return false;
      settled = true;
      if (timer) clearTimeout(timer);
      deadlineWaiters.delete(onDeadline);
      resolve(v);
      return true;
    };
    const onDeadline = () => settle(false);
    if (remaining() <= 0) return settle(false);
    deadlineWaiters.add(onDeadline);
    if (ms !== undefined) timer = setTimeout(() => settle(false), Math.min(ms, remaining()));
    setup(() => settle(true)); // the callback returns false when the wait had already ended
  });
}
const sleep = (ms) => waitFor(() => {}, ms);

// Semaphore bounding the handshakes in flight.
let inFlight = 0;
const queue = [];
function acquire() {
  if (inFlight < CONCURRENCY) {
    inFlight++;
    return Promise.resolve(true);
  }
  return waitFor((done) => queue.push(done));
}
function release() {
  // Hand the slot straight to the next waiter that is still waiting (inFlight unchanged).
  while (queue.length) {
    if (queue.shift()()) return;
  }
  inFlight--;
}

function emitWithAck(socket, event, payload) {
  const ms = Math.min(ACK_TIMEOUT_MS, remaining());
  return new Promise((resolve) => {
    if (ms <= 0) return resolve({ err: new Error("deadline reached") });
    socket.timeout(ms).emit(event, payload, (err, res) => resolve({ err, res }));
  });
}

function deepEqual(a, b) {
  if (Buffer.isBuffer(a) || Buffer.isBuffer(b) || a instanceof ArrayBuffer || b instanceof ArrayBuffer) {
    const ba = Buffer.from(a instanceof ArrayBuffer ? new Uint8Array(a) : a);
    const bb = Buffer.from(b instanceof ArrayBuffer ? new Uint8Array(b) : b);
    return ba.equals(bb);
  }
  if (a === null || b === null || typeof a !== "object" || typeof b !== "object") return Object.is(a, b);
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  const ka = Object.keys(a);
  const kb = Object.keys(b);
  if (ka.length !== kb.length) return false;
  return ka.every((k) => Object.prototype.hasOwnProperty.call(b, k) && deepEqual(a[k], b[k]));
}

// ---- clients ----
const clients = [];
let broadcastToken = null;
let broadcastAllReceived = null; // callback while waiting

function countBroadcastDone() {
  if (!broadcastAllReceived) return;
  const live = clients.filter((c) => c.socket && c.socket.connected).length;
  if (report.broadcastReceived >= live) broadcastAllReceived();
}

async function runClient(i) {
  const c = { i, socket: null, connected: false, upgraded: false, gotBroadcast: false };
  clients[i] = c;
  if (!(await acquire())) {
    report.notStarted++;
    return;
  }
  let released = false;
  const releaseOnce = () => {
    if (!released) {
      released = true;
      release();
    }
  };
  if (finished || remaining() <= 0) {
    releaseOnce();
    report.notStarted++;
    return;
  }

  const ioOpts = {
    forceNew: true,
    reconnection: false,
    path: PATH,
    upgrade: UPGRADE,
    withCredentials: WITH_CREDENTIALS,
    timeout: Math.max(1, Math.min(20000, remaining())),
  };
  if (TRANSPORTS) ioOpts.transports = TRANSPORTS;
  const localAddress = LOCAL_ADDRESSES ? LOCAL_ADDRESSES[i % LOCAL_ADDRESSES.length] : undefined;
  if (localAddress) ioOpts.localAddress = localAddress;
  const agent = agentFor(localAddress);
  if (agent) ioOpts.agent = agent;
  if (opts.extraHeaders) ioOpts.extraHeaders = opts.extraHeaders;
  if (opts.query) ioOpts.query = opts.query;
  if (opts.auth) ioOpts.auth = opts.auth;
  if (opts.ioOptions) Object.assign(ioOpts, opts.ioOptions);

  let socket;
  try {
    socket = io(URLS[i % URLS.length], ioOpts);
  } catch (err) {
    releaseOnce();
    report.connectErrors++;
    sample(report.connectErrorSamples, describeError(err));
    return;
  }
  c.socket = socket;

  let onUpgraded = null;
  socket.io.on("open", () => {
    const engine = socket.io.engine;
    if (engine.transport && engine.transport.name === "websocket") c.upgraded = true;
    engine.on("upgrade", (transport) => {
      if (transport && transport.name === "websocket") {
        c.upgraded = true;
        if (onUpgraded) onUpgraded();
      }
    });
  });
  socket.on("bcast", (payload) => {
    if (broadcastToken && payload && payload.token === broadcastToken && !c.gotBroadcast) {
      c.gotBroadcast = true;
      report.broadcastReceived++;
      countBroadcastDone();
    }
  });
  socket.on("disconnect", (reason) => {
    if (closing || finished) return;
    report.disconnects++;
    report.disconnectReasons[reason] = (report.disconnectReasons[reason] || 0) + 1;
    countBroadcastDone();
  });

  let connectError = null;
  const connected = await waitFor((done) => {
    if (socket.connected) return done();
    socket.once("connect", done);
    socket.once("connect_error", (err) => {
      connectError = err;
      done();
    });
  });
  releaseOnce();
  if (!connected || connectError) {
    if (connectError) {
      report.connectErrors++;
      sample(report.connectErrorSamples, describeError(connectError));
    } else {
      report.connectTimeouts++;
    }
    socket.close();
    return;
  }
  c.connected = true;
  report.connected++;

  // Let the upgrade finish first, so `whoami` reports the transport the client settles on.
  if (EXPECT_UPGRADE && !c.upgraded) {
    await waitFor((done) => {
      if (c.upgraded) return done();
      onUpgraded = done;
    }, UPGRADE_WAIT_MS);
    onUpgraded = null;
  }
  if (c.upgraded) report.upgraded++;
  if (!socket.connected || remaining() <= 0) return;

  const who = await emitWithAck(socket, "whoami", undefined);
  if (who.err || !who.res || typeof who.res !== "object") {
    report.ackFailures++;
    sample(report.ackErrorSamples, `whoami: ${who.err ? describeError(who.err) : "bad ack " + JSON.stringify(who.res)}`);
  } else {
    report.acked++;
    const node = String(who.res.node);
    report.perNode[node] = (report.perNode[node] || 0) + 1;
    c.node = node;
    c.ackTransport = who.res.transport;
    if (who.res.cookie) report.cookieSeen++;
    if (who.res.address) {
      const a = String(who.res.address).replace(/^::ffff:/, "");
      report.serverSeenAddresses[a] = (report.serverSeenAddresses[a] || 0) + 1;
    }
    if (who.res.handshakeAddress) {
      const a = String(who.res.handshakeAddress).replace(/^::ffff:/, "");
      report.serverSeenHandshakeAddresses[a] = (report.serverSeenHandshakeAddresses[a] || 0) + 1;
    }
  }
  if (!socket.connected || remaining() <= 0) return;

  const payload = {
    i,
    token: `${runId}-${i}-${crypto.randomBytes(4).toString("hex")}`,
    text: `héllo wörld ☃ 漢字 🙂 "quoted" \\ back\nslash ${i}`,
    list: [1, 2.5, -3, null, true, false, "", "x".repeat(i % 50)],
    nested: { a: { b: { c: [i, { d: "e" }] } } },
  };
  if (BINARY) payload.bin = crypto.randomBytes(32 + (i % 64));
  const echo = await emitWithAck(socket, "echo", payload);
  if (echo.err) {
    report.ackFailures++;
    sample(report.ackErrorSamples, `echo: ${describeError(echo.err)}`);
  } else if (deepEqual(payload, echo.res)) {
    report.echoOk++;
  } else {
    report.echoMismatches++;
    sample(report.ackErrorSamples, `echo mismatch for client ${i}`);
  }
}

function finish(why) {
  if (finished) return;
  finished = true;
  closing = true;
  if (why === "hard timeout") report.timedOut = true;
  clearTimeout(deadlineTimer);
  for (const c of clients) {
    if (c && c.socket && c.socket.connected) {
      const eng = c.socket.io.engine;
      const name = eng && eng.transport ? eng.transport.name : "unknown";
      report.finalTransports[name] = (report.finalTransports[name] || 0) + 1;
    }
  }
  for (const c of clients) {
    if (c && c.socket) {
      try { c.socket.disconnect(); } catch (_) {}
    }
  }
  for (const a of agents) {
    try { a.destroy(); } catch (_) {}
  }
  report.elapsedMs = Date.now() - startedAt;
  const line = JSON.stringify(report) + "\n";
  process.stdout.write(line, () => process.exit(0));
  // In case stdout never drains (closed pipe): do not hang.
  setTimeout(() => process.exit(0), 1000).unref();
}

async function main() {
  await Promise.all(Array.from({ length: N }, (_, i) => runClient(i)));

  if (BROADCAST && remaining() > 0) {
    const sender = clients.find((c) => c && c.socket && c.socket.connected);
    if (sender) {
      broadcastToken = `bcast-${runId}-${crypto.randomBytes(6).toString("hex")}`;
      report.broadcastSender = sender.i;
      report.broadcastSent = true;
      await waitFor((done) => {
        broadcastAllReceived = done;
        sender.socket.emit("broadcast", { token: broadcastToken, from: sender.i, node: sender.node || null });
        countBroadcastDone();
      }, BROADCAST_WAIT_MS);
      broadcastAllReceived = null;
    }
  }

  if (HOLD_MS > 0 && remaining() > 0) await sleep(HOLD_MS);
  finish("done");
}

process.on("uncaughtException", (err) => {
  process.stderr.write(`swarm.js: uncaught exception: ${err && err.stack ? err.stack : err}\n`);
  process.exitCode = 1;
  if (!finished) {
    finished = true;
    process.stdout.write(JSON.stringify({ ...report, elapsedMs: Date.now() - startedAt, error: String(err && err.message) }) + "\n", () => process.exit(1));
    setTimeout(() => process.exit(1), 1000).unref();
  }
});
process.on("unhandledRejection", (err) => {
  process.stderr.write(`swarm.js: unhandled rejection: ${err && err.stack ? err.stack : err}\n`);
});

main().catch((err) => {
  process.stderr.write(`swarm.js: bug: ${err && err.stack ? err.stack : err}\n`);
  process.exitCode = 1;
  if (!finished) {
    finished = true;
    process.stdout.write(JSON.stringify({ ...report, elapsedMs: Date.now() - startedAt, error: String(err && err.message) }) + "\n", () => process.exit(1));
    setTimeout(() => process.exit(1), 1000).unref();
  }
});
