#!/usr/bin/env node
// A long-running swarm of socket.io-client 4.8 clients for tether's failover / reload / drain
// tests: every client stays connected (reconnecting by itself) and keeps emitting acked `echo`s
// while the test kills, reloads or drains backends, then one report says what the clients saw.
//
//   node soak.js '<json options>'
//
// stdout carries JSON lines only:
//   {"event":"ready","connected":N,"perNode":{...},...}   once every client is connected (or
//                                                          connectTimeoutMs passed)
//   {"event":"report",...counters...}                      for each `report` line read on stdin
//   {"event":"final",...counters...}                       last line; then exit 0
// Diagnostics go to stderr. Exits 0 whenever it ran (the caller asserts on the report), 2 on a
// usage error, 1 on a bug (after printing a final line with an `error` field).
//
// stdin line commands: `report` (print a report line now), `stop` (print the final line, exit 0).
// stdin EOF is ignored (stdin may be /dev/null, or a pipe kept open or closed by the harness).
// It never runs past durationMs + connectTimeoutMs + 15 s, whatever happens.
//
// Options (all optional except url and durationMs):
//   url                 "http://127.0.0.1:12345" (required; only loopback targets accepted)
//   durationMs          how long to run after the ready line (required; 1..120000)
//   clients             300
//   transports          socket.io-client default (["polling","websocket"]: polling, then upgrade)
//   connectConcurrency  50     initial handshakes in flight at once
//   connectTimeoutMs    30000  budget for everyone's initial connection (then `ready` anyway)
//   reconnection        true   (reconnectionDelay 100, reconnectionDelayMax 500; override
//                               these, or anything else, through ioOptions)
//   emitEveryMs         200    each connected client emits `echo` {c, seq, run} with an ack this
//                               often (one echo in flight per client at most; a tick that finds
//                               the previous echo still waiting is skipped)
//   ackTimeoutMs        2000   per-ack timeout of an echo
//   whoamiTimeoutMs     10000  per-ack timeout of a whoami (asked again when it times out)
//   localAddresses      e.g. ["127.0.0.2","127.0.0.3"]: client i uses localAddresses[i % n]; as in
//                       swarm.js (httpAgent "auto"), each address also gets one plain
//                       http.Agent({localAddress}) because engine.io-client's Node polling
//                       transport ignores `localAddress` (only `agent` reaches xmlhttprequest-ssl)
//   ioOptions           raw extra io() options, merged last
//
// Every client learns its node from a `whoami` ack after each `connect` event (server.js answers
// {node, transport, ...}). "Reconnected" below means connect + a successful whoami.
"use strict";

const http = require("http");
const crypto = require("crypto");
const { io } = require("socket.io-client");

const MAX_DURATION_MS = 120000;

function usageError(msg) {
  process.stderr.write(`soak.js: ${msg}\nusage: node soak.js '{"url":"http://127.0.0.1:PORT","durationMs":5000, ...}'\n`);
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

const KNOWN = new Set(["url", "clients", "transports", "connectConcurrency", "reconnection", "emitEveryMs",
  "ackTimeoutMs", "whoamiTimeoutMs", "durationMs", "connectTimeoutMs", "localAddresses", "ioOptions"]);
for (const k of Object.keys(opts)) if (!KNOWN.has(k)) usageError(`unknown option ${JSON.stringify(k)}`);

function intOpt(name, dflt, min, max = Number.MAX_SAFE_INTEGER) {
  const v = opts[name] === undefined ? dflt : opts[name];
  if (v === undefined) usageError(`${name} is required`);
  if (!Number.isInteger(v) || v < min || v > max) usageError(`${name} must be an integer in ${min}..${max}`);
  return v;
}
function boolOpt(name, dflt) {
  const v = opts[name] === undefined ? dflt : opts[name];
  if (typeof v !== "boolean") usageError(`${name} must be a boolean`);
  return v;
}

const URL_ = opts.url;
{
  if (typeof URL_ !== "string") usageError("url is required (a string)");
  let target;
  try {
    target = new URL(URL_);
  } catch (_) {
    usageError(`bad url ${JSON.stringify(URL_)}`);
  }
  if (target.protocol !== "http:" && target.protocol !== "https:") usageError(`url must be http(s), got ${URL_}`);
  const host = target.hostname.replace(/^\[|\]$/g, "");
  if (!(host === "localhost" || host === "::1" || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host))) {
    usageError(`url must point at a loopback address (127.0.0.0/8, localhost, [::1]), got ${host}`);
  }
}

const N = intOpt("clients", 300, 1);
const CONCURRENCY = intOpt("connectConcurrency", 50, 1);
const EMIT_EVERY_MS = intOpt("emitEveryMs", 200, 1);
const ACK_TIMEOUT_MS = intOpt("ackTimeoutMs", 2000, 1);
// A whoami is asked again when it times out, and a client counts as connected only once one
// is answered: on a loaded 2-core machine an answer may take seconds, which is no failure of
// anything under test, so its wait is longer than an echo's.
const WHOAMI_TIMEOUT_MS = intOpt("whoamiTimeoutMs", 10000, 1);
const DURATION_MS = intOpt("durationMs", undefined, 1, MAX_DURATION_MS);
const CONNECT_TIMEOUT_MS = intOpt("connectTimeoutMs", 30000, 1);
const RECONNECTION = boolOpt("reconnection", true);
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
if (opts.ioOptions !== undefined &&
    (opts.ioOptions === null || typeof opts.ioOptions !== "object" || Array.isArray(opts.ioOptions))) {
  usageError("ioOptions must be an object");
}

const startedAt = Date.now();
const runId = crypto.randomBytes(6).toString("hex");
const now = () => Date.now();

// ---- 400 / "Session ID unknown" detection ----
// engine.io answers a request for a session it does not know (e.g. routed to the wrong node, or
// to a restarted one) with HTTP 400 {"code":1,"message":"Session ID unknown"}. The client sees:
//   polling: a TransportError, message "xhr poll error" / "xhr post error", `description` = the
//            HTTP status (400), `context` = the xhr (responseText holds the JSON body)
//   websocket: a TransportError "websocket error" whose `description` is a ws ErrorEvent with
//            message "Unexpected server response: 400"
// It reaches us as a `connect_error` (during a (re)connection), as the `description` (2nd
// argument) of a `disconnect` with reason "transport error", or, for a failed websocket upgrade
// probe, only on the probe transport's own "error" event (the engine's `upgradeError` keeps just a
// string), which is why each engine's createTransport is wrapped below.
function errorText(err, depth = 0) {
  if (err === undefined || err === null) return "";
  if (typeof err === "string" || typeof err === "number") return String(err);
  if (depth > 3) return "";
  const parts = [];
  try {
    if (err.message) parts.push(String(err.message));
    if (err.type && typeof err.type === "string") parts.push(err.type);
    if (err.description !== undefined && err.description !== err) parts.push(errorText(err.description, depth + 1));
    if (err.error !== undefined && err.error !== err) parts.push(errorText(err.error, depth + 1));
    if (err.data !== undefined) {
      try { parts.push(JSON.stringify(err.data)); } catch (_) {}
    }
    const ctx = err.context;
    if (ctx && typeof ctx === "object") {
      if (typeof ctx.status === "number" && ctx.status) parts.push(`status ${ctx.status}`);
      // xmlhttprequest-ssl puts the error's *stack* in responseText on network errors: first line only.
      if (typeof ctx.responseText === "string" && ctx.responseText) parts.push(ctx.responseText.split("\n")[0].slice(0, 200));
    }
  } catch (_) {}
  if (!parts.length) {
    try { parts.push(String(err)); } catch (_) {}
  }
  return parts.filter(Boolean).join(" | ");
}
function is400(err) {
  if (!err || typeof err !== "object") return false;
  if (err.description === 400 || err.description === "400") return true; // polling: the HTTP status
  if (err.context && err.context.status === 400) return true;
  // Text checks are anchored (a bare /400/ would match ports or stack line numbers).
  return /session id unknown|unexpected server response: 400\b|\bstatus(?:code)?[ =:]*400\b/i.test(errorText(err));
}

// ---- HTTP agents (swarm.js's "auto" httpAgent mode) ----
const agents = new Map(); // localAddress -> http.Agent
function agentFor(localAddress) {
  if (!localAddress) return undefined;
  if (!agents.has(localAddress)) agents.set(localAddress, new http.Agent({ keepAlive: false, localAddress }));
  return agents.get(localAddress);
}

// ---- counters ----
const counters = {
  connectErrors: 0,
  connectErrors400: 0,
  reconnectAttempts: 0,
  reconnectFailed: 0,
  disconnects: 0,
  disconnectsByStartNode: {},
  disconnectsByNode: {},
  disconnectReasons: {},
  disconnects400: 0,
  upgradeErrors: 0,
  upgradeErrors400: 0,
  reconnects: 0,
  reconnectsToNode: {},
  reconnectMsList: [],
  acksOk: 0,
  ackTimeouts: 0,
  ackMismatches: 0,
  ackAborted: 0,
  whoamiFailures: 0,
  echoSkippedBusy: 0,
  lateConnects: 0,
  closedBeforeConnect: 0,
};
const samples = { connectErrors: [], disconnects: [], upgradeErrors: [], ackErrors: [], sessionUnknown: [] };
function sample(list, msg, max = 5) {
  if (list.length < max && !list.includes(msg)) list.push(msg);
}
function bump(map, key) {
  key = String(key);
  map[key] = (map[key] || 0) + 1;
}

// ---- state ----
let phase = "connecting"; // connecting -> running -> finished
let readyAt = null;
let readyConnected = 0;
let readyPerNode = {};
let finished = false;
const clients = [];

// ---- initial-connection semaphore (lifted at `ready`: late clients then start at once) ----
let inFlight = 0;
let unlimited = false;
const waiting = [];
/** Resolves true with a slot held, or false when the limit is gone. */
function acquire() {
  if (unlimited) return Promise.resolve(false);
  if (inFlight < CONCURRENCY) {
    inFlight++;
    return Promise.resolve(true);
  }
  return new Promise((resolve) => waiting.push(resolve));
}
function release() {
  if (unlimited) return;
  if (waiting.length) waiting.shift()(true);
  else inFlight--;
}
function liftLimit() {
  unlimited = true;
  for (const resolve of waiting.splice(0)) resolve(false);
}

let initialPending = N; // clients whose first connect+whoami has not completed nor given up
let onInitialDone = null;
function initialSettled(c) {
  if (c.initialSettled) return;
  c.initialSettled = true;
  initialPending--;
  if (initialPending === 0 && onInitialDone) onInitialDone();
}

function currentTransport(c) {
  const eng = c.socket && c.socket.io && c.socket.io.engine;
  return eng && eng.transport ? eng.transport.name : null;
}

function startClient(c) {
  const i = c.i;
  const ioOpts = {
    forceNew: true,
    reconnection: RECONNECTION,
    reconnectionDelay: 100,
    reconnectionDelayMax: 500,
    timeout: Math.min(20000, CONNECT_TIMEOUT_MS),
  };
  if (TRANSPORTS) ioOpts.transports = TRANSPORTS;
  const localAddress = LOCAL_ADDRESSES ? LOCAL_ADDRESSES[i % LOCAL_ADDRESSES.length] : undefined;
  if (localAddress) ioOpts.localAddress = localAddress;
  const agent = agentFor(localAddress);
  if (agent) ioOpts.agent = agent;
  if (opts.ioOptions) Object.assign(ioOpts, opts.ioOptions);

  let socket;
  try {
    socket = io(URL_, ioOpts);
  } catch (err) {
    counters.connectErrors++;
    sample(samples.connectErrors, `io(): ${errorText(err)}`);
    c.slotHeld = false;
    release();
    initialSettled(c);
    return;
  }
  c.socket = socket;
  const mgr = socket.io;

  mgr.on("reconnect_attempt", () => {
    if (!finished) counters.reconnectAttempts++;
  });
  // The client gave up (reconnectionAttempts exhausted): it will never come back by itself.
  mgr.on("reconnect_failed", () => {
    if (!finished) counters.reconnectFailed++;
  });
  mgr.on("open", () => {
    const engine = mgr.engine;
    if (!engine || engine.__soakWrapped) return;
    engine.__soakWrapped = true;
    engine.on("upgradeError", (err) => {
      if (finished) return;
      counters.upgradeErrors++;
      sample(samples.upgradeErrors, errorText(err));
    });
    // Upgrade probes are created right after "open": see the 400 notes above.
    const create = engine.createTransport;
    if (typeof create === "function") {
      engine.createTransport = function (name) {
        const t = create.apply(this, arguments);
        try {
          t.on("error", (err) => {
            if (finished || engine.transport === t) return; // not a probe (any more)
            if (is400(err)) {
              counters.upgradeErrors400++;
              sample(samples.sessionUnknown, `upgrade probe ${name}: ${errorText(err)}`);
            }
          });
        } catch (_) {}
        return t;
      };
    }
  });

  socket.on("connect", () => {
    c.live = true;
    const epoch = ++c.epoch;
    c.connectedAt = now();
    askWho(c, epoch);
  });
  function askWho(c, epoch) {
    socket.timeout(WHOAMI_TIMEOUT_MS).emit("whoami", (err, res) => {
      if (finished || epoch !== c.epoch) return;
      if (err || !res || typeof res !== "object" || res.node === undefined) {
        counters.whoamiFailures++;
        sample(samples.ackErrors, `whoami: ${err ? errorText(err) : "bad ack " + JSON.stringify(res)}`);
        if (!c.everConnected) {
          // Give the initial slot back; the client does not count as connected at `ready` but
          // keeps trying (below), and may still connect late.
          if (c.slotHeld) { c.slotHeld = false; release(); }
          initialSettled(c);
        }
        // Still connected on the same connection: ask again (no echoes until it answers).
        if (socket.connected) setTimeout(() => { if (!finished && epoch === c.epoch) askWho(c, epoch); }, 100);
        return;
      }
      const node = String(res.node);
      const t = now();
      c.node = node;
      c.whoamiOk = true;
      if (!c.everConnected) {
        c.everConnected = true;
        c.startNode = node;
        c.firstConnectedAt = t;
        if (phase !== "connecting") counters.lateConnects++;
        if (c.slotHeld) { c.slotHeld = false; release(); }
        initialSettled(c);
      } else if (c.pendingDisconnects.length) {
        counters.reconnects++;
        bump(counters.reconnectsToNode, node);
        c.reconnects.push({ t: t - startedAt, node });
        for (const d of c.pendingDisconnects) counters.reconnectMsList.push(t - d);
        c.pendingDisconnects = [];
      }
      scheduleEcho(c, epoch);
    });
  }

  socket.on("connect_error", (err) => {
    if (finished) return;
    counters.connectErrors++;
    c.connectErrors++;
    if (is400(err)) {
      counters.connectErrors400++;
      sample(samples.sessionUnknown, `connect_error: ${errorText(err)}`);
    }
    sample(samples.connectErrors, errorText(err));
    if (!c.everConnected && c.slotHeld) {
      // Free the handshake slot; the manager keeps retrying by itself if reconnection is on.
      c.slotHeld = false;
      release();
    }
    if (!c.everConnected && !RECONNECTION) initialSettled(c);
  });

  socket.on("disconnect", (reason, description) => {
    if (finished) return;
    c.epoch++;
    c.whoamiOk = false;
    stopEcho(c);
    // socket.io-client also emits `disconnect` when an engine that opened closes before the
    // Socket.IO CONNECT went through (the same failure already came as a connect_error): that is
    // a failed (re)connection, not a lost connection.
    const wasLive = c.live;
    c.live = false;
    if (!wasLive) {
      counters.closedBeforeConnect++;
      return;
    }
    const t = now();
    counters.disconnects++;
    bump(counters.disconnectReasons, reason);
    bump(counters.disconnectsByStartNode, c.startNode === undefined ? "unknown" : c.startNode);
    bump(counters.disconnectsByNode, c.node === undefined ? "unknown" : c.node);
    const detail = description === undefined ? "" : errorText(description);
    if (is400(description)) {
      counters.disconnects400++;
      sample(samples.sessionUnknown, `disconnect ${reason}: ${detail}`);
    }
    sample(samples.disconnects, detail ? `${reason}: ${detail}` : reason);
    c.disconnects.push({ t: t - startedAt, reason, node: c.node === undefined ? null : c.node });
    if (c.everConnected) c.pendingDisconnects.push(t);
  });
}

// ---- echo loop: at most one echo in flight per client ----
function scheduleEcho(c, epoch) {
  stopEcho(c);
  const tick = () => {
    if (finished || epoch !== c.epoch || !c.socket.connected) return;
    if (c.echoInFlight) {
      counters.echoSkippedBusy++;
      return;
    }
    const seq = ++c.seq;
    const payload = { c: c.i, seq, run: runId };
    c.echoInFlight = true;
    c.socket.timeout(ACK_TIMEOUT_MS).emit("echo", payload, (err, res) => {
      c.echoInFlight = false;
      if (finished) return;
      if (err) {
        if (/disconnected/i.test(err.message || "")) {
          counters.ackAborted++;
        } else {
          counters.ackTimeouts++;
          sample(samples.ackErrors, `echo client ${c.i} seq ${seq}: ${errorText(err)}`);
        }
      } else if (res && res.c === c.i && res.seq === seq && res.run === runId && Object.keys(res).length === 3) {
        counters.acksOk++;
      } else {
        counters.ackMismatches++;
        sample(samples.ackErrors, `echo mismatch client ${c.i} seq ${seq}: ${JSON.stringify(res).slice(0, 200)}`);
      }
    });
  };
  // Spread the clients over the period instead of all ticking together.
  c.echoTimer = setTimeout(() => {
    c.echoTimer = setInterval(tick, EMIT_EVERY_MS);
    tick();
  }, Math.floor(Math.random() * EMIT_EVERY_MS));
}
function stopEcho(c) {
  if (c.echoTimer) {
    clearTimeout(c.echoTimer);
    clearInterval(c.echoTimer);
    c.echoTimer = null;
  }
}

// ---- reports ----
function percentile(sorted, p) {
  if (!sorted.length) return null;
  const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[idx];
}

function buildReport(event) {
  const perNodeNow = {};
  const transportsNow = {};
  let connectedNow = 0;
  let upgraded = 0;
  let clientsDisconnected = 0;
  const clientsDisconnectedByStartNode = {};
  let notReconnected = 0;
  let neverConnected = 0;
  let moved = 0;
  for (const c of clients) {
    if (!c) continue;
    if (!c.everConnected) neverConnected++;
    if (c.disconnects.length) {
      clientsDisconnected++;
      bump(clientsDisconnectedByStartNode, c.startNode === undefined ? "unknown" : c.startNode);
    }
    const live = !!(c.socket && c.socket.connected);
    if (c.everConnected && (!live || !c.whoamiOk)) notReconnected++;
    if (live) {
      connectedNow++;
      const tr = currentTransport(c);
      if (tr) bump(transportsNow, tr);
      if (tr === "websocket") upgraded++;
      if (c.whoamiOk && c.node !== undefined) {
        bump(perNodeNow, c.node);
        if (c.node !== c.startNode) moved++;
      }
    }
  }
  const rs = counters.reconnectMsList.slice().sort((a, b) => a - b);
  const sessionUnknown = counters.connectErrors400 + counters.disconnects400 + counters.upgradeErrors400;
  return {
    event,
    phase,
    clients: N,
    connected: readyConnected,
    perNode: readyPerNode,
    connectedNow,
    perNodeFinal: perNodeNow,
    transportsNow,
    upgraded,
    neverConnected,
    lateConnects: counters.lateConnects,
    moved,
    disconnects: counters.disconnects,
    disconnectsByStartNode: counters.disconnectsByStartNode,
    disconnectsByNode: counters.disconnectsByNode,
    disconnectReasons: counters.disconnectReasons,
    clientsDisconnected,
    clientsDisconnectedByStartNode,
    reconnects: counters.reconnects,
    reconnectsToNode: counters.reconnectsToNode,
    reconnectAttempts: counters.reconnectAttempts,
    reconnectFailed: counters.reconnectFailed,
    reconnectMs: {
      count: rs.length,
      max: rs.length ? rs[rs.length - 1] : null,
      p50: percentile(rs, 50),
      p99: percentile(rs, 99),
    },
    notReconnected,
    connectErrors: counters.connectErrors,
    sessionUnknown,
    sessionUnknownBy: {
      connectError: counters.connectErrors400,
      disconnect: counters.disconnects400,
      upgradeProbe: counters.upgradeErrors400,
    },
    upgradeErrors: counters.upgradeErrors,
    closedBeforeConnect: counters.closedBeforeConnect,
    acksOk: counters.acksOk,
    ackFailures: counters.ackTimeouts + counters.ackMismatches,
    ackTimeouts: counters.ackTimeouts,
    ackMismatches: counters.ackMismatches,
    ackAborted: counters.ackAborted,
    whoamiFailures: counters.whoamiFailures,
    echoSkippedBusy: counters.echoSkippedBusy,
    samples,
    readyAtMs: readyAt === null ? null : readyAt - startedAt,
    runningMs: readyAt === null ? 0 : now() - readyAt,
    elapsedMs: now() - startedAt,
  };
}

function writeLine(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

// ---- lifecycle ----
let durationTimer = null;
let hardTimer = null;

function finish(why, code = 0, extra) {
  if (finished) return;
  const report = buildReport("final"); // before closing anything: the state at the end
  report.endReason = why;
  if (extra) Object.assign(report, extra);
  finished = true;
  phase = "finished";
  clearTimeout(durationTimer);
  clearTimeout(hardTimer);
  for (const c of clients) {
    if (!c) continue;
    stopEcho(c);
    if (c.socket) {
      try { c.socket.disconnect(); } catch (_) {}
    }
  }
  for (const a of agents.values()) {
    try { a.destroy(); } catch (_) {}
  }
  process.stdout.write(JSON.stringify(report) + "\n", () => process.exit(code));
  // In case stdout never drains (closed pipe): do not hang.
  setTimeout(() => process.exit(code), 1000).unref();
}

function goReady() {
  if (phase !== "connecting" || finished) return;
  phase = "running";
  readyAt = now();
  liftLimit();
  readyPerNode = {};
  readyConnected = 0;
  for (const c of clients) {
    if (c && c.socket && c.socket.connected && c.whoamiOk && c.node !== undefined) {
      readyConnected++;
      bump(readyPerNode, c.node);
    }
  }
  writeLine({
    event: "ready",
    connected: readyConnected,
    perNode: readyPerNode,
    clients: N,
    connectErrors: counters.connectErrors,
    elapsedMs: readyAt - startedAt,
  });
  durationTimer = setTimeout(() => finish("duration"), DURATION_MS);
}

// Hard bound, whatever is stuck.
hardTimer = setTimeout(() => finish("hard timeout"), DURATION_MS + CONNECT_TIMEOUT_MS + 15000);

// ---- stdin commands ----
{
  let pending = "";
  process.stdin.setEncoding("utf8");
  process.stdin.on("data", (chunk) => {
    pending += chunk;
    let nl;
    while ((nl = pending.indexOf("\n")) >= 0) {
      const line = pending.slice(0, nl).trim().toLowerCase();
      pending = pending.slice(nl + 1);
      if (!line) continue;
      if (finished) return;
      if (line === "report") writeLine(buildReport("report"));
      else if (line === "stop") return finish("stop");
      else process.stderr.write(`soak.js: ignoring stdin line ${JSON.stringify(line)}\n`);
    }
    if (pending.length > 4096) pending = "";
  });
  process.stdin.on("end", () => {}); // EOF means nothing
  process.stdin.on("error", () => {});
  process.stdin.resume();
}
process.stdout.on("error", () => {});
process.stderr.on("error", () => {});

process.on("uncaughtException", (err) => {
  process.stderr.write(`soak.js: uncaught exception: ${err && err.stack ? err.stack : err}\n`);
  finish("bug", 1, { error: String(err && err.message) });
});
process.on("unhandledRejection", (err) => {
  process.stderr.write(`soak.js: unhandled rejection: ${err && err.stack ? err.stack : err}\n`);
});

async function main() {
  const connectTimer = setTimeout(goReady, CONNECT_TIMEOUT_MS);
  onInitialDone = () => {
    clearTimeout(connectTimer);
    goReady();
  };
  for (let i = 0; i < N; i++) {
    clients[i] = {
      i, socket: null, live: false, epoch: 0, seq: 0, node: undefined, startNode: undefined, whoamiOk: false,
      everConnected: false, initialSettled: false, slotHeld: false, echoInFlight: false, echoTimer: null,
      connectErrors: 0, disconnects: [], reconnects: [], pendingDisconnects: [],
    };
  }
  for (let i = 0; i < N; i++) {
    // After `ready` (connectTimeoutMs over) the rest start at once, slot-free, and may connect late.
    clients[i].slotHeld = await acquire();
    if (finished) return;
    startClient(clients[i]);
  }
}

main().catch((err) => {
  process.stderr.write(`soak.js: bug: ${err && err.stack ? err.stack : err}\n`);
  finish("bug", 1, { error: String(err && err.message) });
});
