#!/usr/bin/env node
// Cross-node delivery checks with real socket.io-client 4.8 clients, for the bundled
// Rust nodes behind tether. Prints JSON lines on stdout; the Rust tests assert.
//
//   node crossnode.js '<json options>'
//
// Options: url (required, loopback), clients (default 30), mode:
//   "rooms"     one-shot: everyone joins "all", even-numbered clients also join "red";
//               client 0 broadcasts, one client emits to room "red"; reports who got what
//               by node, and echo acks.
//   "stream"    long-running: client 0 broadcasts {seq} every intervalMs, every client
//               emits echo with ack every 200 ms; stdin "mark" records a time mark,
//               "report" prints counters, "stop" ends. Reports, per node of the receiver,
//               broadcasts received, the first seq received after the last mark and how
//               long after the mark it came, and ack failures.
//   "numbered"  client 0 sends `count` numbered broadcasts, one every intervalMs (default
//               5); reports per client whether it got all of them in order.
// transports default ["websocket"] (tests pin by node via tether anyway).
"use strict";

const { io } = require("socket.io-client");

const opts = JSON.parse(process.argv[2] || "{}");
const url = opts.url;
if (!url || !/^https?:\/\/(127\.|localhost|\[::1\])/.test(url)) {
  process.stderr.write("crossnode.js: url must be a loopback http(s) URL\n");
  process.exit(2);
}
const N = opts.clients || 30;
const mode = opts.mode || "rooms";
const transports = opts.transports || ["websocket"];
const ioOptions = Object.assign({ transports, reconnection: true, reconnectionDelay: 100, reconnectionDelayMax: 500,
  timeout: 5000, forceNew: true }, opts.ioOptions || {});
const out = (v) => process.stdout.write(JSON.stringify(v) + "\n");
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const hardLimit = setTimeout(() => { out({ event: "final", error: "hard timeout" }); process.exit(0); },
  (opts.limitMs || 120000));
hardLimit.unref();

function ack(socket, event, payload, ms = 3000) {
  return new Promise((resolve) => {
    socket.timeout(ms).emit(event, payload, (err, res) => resolve(err ? null : res));
  });
}

async function connectAll() {
  const clients = [];
  for (let i = 0; i < N; i++) {
    const socket = io(url, ioOptions);
    const c = { i, socket, node: null, got: [], room: [], acksOk: 0, ackFail: 0 };
    socket.on("connect", async () => {
      const who = await ack(socket, "whoami", undefined);
      if (who) c.node = who.node;
    });
    socket.on("bcast", (p) => c.got.push({ p, at: Date.now() }));
    socket.on("room", (p) => c.room.push(p));
    clients.push(c);
  }
  const deadline = Date.now() + 20000;
  while (Date.now() < deadline && clients.some((c) => !c.node)) await sleep(50);
  return clients;
}

function byNode(clients, f) {
  const m = {};
  for (const c of clients) m[c.node] = (m[c.node] || 0) + f(c);
  return m;
}

async function rooms() {
  const clients = await connectAll();
  const connected = clients.filter((c) => c.node).length;
  for (const c of clients) if (c.i % 2 === 0) await ack(c.socket, "join", "red");
  await sleep(200);
  clients[0].socket.emit("broadcast", { kind: "all" });
  const sender = clients[1];
  sender.socket.emit("to-room", { room: "red", payload: { kind: "red", from: sender.node } });
  let echoOk = 0;
  await Promise.all(clients.map(async (c) => {
    const r = await ack(c.socket, "echo", { i: c.i });
    if (r && r.i === c.i) echoOk++;
  }));
  await sleep(1500);
  const red = clients.filter((c) => c.i % 2 === 0);
  const others = clients.filter((c) => c.i % 2 === 1);
  out({
    event: "final", mode, connected, perNode: byNode(clients, () => 1), echoOk,
    broadcastReceived: clients.filter((c) => c.got.length === 1).length,
    broadcastByNode: byNode(clients, (c) => c.got.length),
    redMembers: red.length, redReceived: red.filter((c) => c.room.length === 1).length,
    redByNode: byNode(red, (c) => c.room.length), redSenderNode: sender.node,
    nonMembersReceived: others.filter((c) => c.room.length > 0).length,
  });
  for (const c of clients) c.socket.close();
}

async function stream() {
  const clients = await connectAll();
  out({ event: "ready", connected: clients.filter((c) => c.node).length, perNode: byNode(clients, () => 1),
    senderNode: clients[0].node });
  let seq = 0;
  let mark = null;
  const interval = opts.intervalMs || 100;
  const sender = setInterval(() => clients[0].socket.emit("broadcast", { seq: ++seq }), interval);
  const echo = setInterval(() => {
    for (const c of clients) {
      if (!c.socket.connected) continue;
      ack(c.socket, "echo", { t: Date.now() }, 2000).then((r) => (r ? c.acksOk++ : c.ackFail++));
    }
  }, 200);
  const report = (event) => {
    const nodes = {};
    for (const c of clients) {
      const n = (nodes[c.node] = nodes[c.node] || { clients: 0, received: 0, firstAfterMarkMs: null, firstSeqAfterMark: null, acksOk: 0, ackFail: 0 });
      n.clients++;
      n.received += c.got.length;
      n.acksOk += c.acksOk;
      n.ackFail += c.ackFail;
      if (mark !== null) {
        const first = c.got.find((g) => g.at >= mark);
        if (first && (n.firstAfterMarkMs === null || first.at - mark > n.firstAfterMarkMs)) {
          // the slowest client of the node decides when delivery resumed there
          n.firstAfterMarkMs = first.at - mark;
          n.firstSeqAfterMark = first.p.seq;
        }
      }
    }
    out({ event, sent: seq, senderNode: clients[0].node, nodes, connected: clients.filter((c) => c.socket.connected).length });
  };
  let stopped = false;
  process.stdin.setEncoding("utf8");
  let buf = "";
  process.stdin.on("data", (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, i).trim();
      buf = buf.slice(i + 1);
      if (line === "mark") { mark = Date.now(); for (const c of clients) c.marked = true; out({ event: "marked" }); }
      else if (line === "report") report("report");
      else if (line === "stop") stopped = true;
    }
  });
  const until = Date.now() + (opts.durationMs || 60000);
  while (!stopped && Date.now() < until) await sleep(50);
  clearInterval(sender);
  clearInterval(echo);
  await sleep(300);
  report("final");
  for (const c of clients) c.socket.close();
}

async function numbered() {
  const clients = await connectAll();
  const count = opts.count || 1000;
  out({ event: "ready", connected: clients.filter((c) => c.node).length, perNode: byNode(clients, () => 1),
    senderNode: clients[0].node });
  const interval = opts.intervalMs || 5;
  for (let s = 1; s <= count; s++) {
    clients[0].socket.emit("broadcast", { n: s });
    if (s === Math.floor(count / 2)) out({ event: "half", sent: s });
    await sleep(interval);
  }
  await sleep(opts.settleMs || 3000);
  const perClient = clients.map((c) => {
    const ns = c.got.map((g) => g.p && g.p.n).filter((n) => typeof n === "number");
    let inOrder = true;
    for (let k = 1; k < ns.length; k++) if (ns[k] <= ns[k - 1]) inOrder = false;
    return { node: c.node, received: ns.length, inOrder, missing: count - new Set(ns).size };
  });
  const nodes = {};
  for (const p of perClient) {
    const n = (nodes[p.node] = nodes[p.node] || { clients: 0, complete: 0, inOrder: 0, missing: 0 });
    n.clients++;
    if (p.missing === 0) n.complete++;
    if (p.inOrder) n.inOrder++;
    n.missing += p.missing;
  }
  out({ event: "final", mode, count, senderNode: clients[0].node, nodes });
  for (const c of clients) c.socket.close();
}

({ rooms, stream, numbered })[mode]().then(() => process.exit(0), (e) => {
  out({ event: "final", error: String(e && e.stack || e) });
  process.exit(1);
});
