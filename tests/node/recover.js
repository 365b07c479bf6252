#!/usr/bin/env node
// socket.io-client 4.8 clients that watch connection state recovery, for tether's tests.
//
//   node recover.js '{"url":"http://127.0.0.1:PORT","clients":30,"transports":["polling"]}'
//
// Connects `clients` clients (transports as given; default polling then upgrade), each
// counting the `tick` broadcasts (sequence numbers) it receives, and prints
//   {"event":"ready","nodes":{"node-1":n,...}}
// once every client is connected and has told its node (whoami). Then reads stdin lines:
//   "report" -> {"event":"report","clients":[{i, firstNode, node, firstId, id, recovered,
//                 reconnects, missed, duplicates, outOfOrder}]}: missed counts the sequence
//                 numbers absent between the client's first and last tick
//   "stop"   -> closes every client, prints {"event":"final"} and exits
// Loopback URLs only; exits by itself after limitMs (default 120000).
"use strict";

const { io } = require("socket.io-client");

const opts = JSON.parse(process.argv[2] || "{}");
if (!opts.url || !/^https?:\/\/(127\.|localhost|\[::1\])/.test(opts.url)) {
  process.stderr.write("recover.js: url must be a loopback http(s) URL\n");
  process.exit(2);
}
const N = opts.clients || 30;
const out = (v) => process.stdout.write(JSON.stringify(v) + "\n");
setTimeout(() => { out({ event: "final", error: "hard timeout" }); process.exit(0); }, opts.limitMs || 120000).unref();

function whoami(socket) {
  return new Promise((resolve) => {
    socket.timeout(5000).emit("whoami", (err, res) => resolve(err ? null : res));
  });
}

const clients = [];
async function connect(i) {
  const ioOptions = { forceNew: true, reconnection: true, reconnectionDelay: 500, reconnectionDelayMax: 2000 };
  if (opts.transports) ioOptions.transports = opts.transports;
  const socket = io(opts.url, ioOptions);
  const c = { i, socket, ticks: [], reconnects: 0, firstId: null, firstNode: null, recovered: null };
  socket.on("tick", (n) => c.ticks.push(n));
  socket.on("connect", async () => {
    if (c.firstId === null) {
      c.firstId = socket.id;
    } else {
      c.reconnects++;
      c.recovered = socket.recovered;
    }
  });
  await new Promise((resolve) => socket.once("connect", resolve));
  const who = await whoami(socket);
  c.firstNode = who && who.node;
  clients.push(c);
}

function summary(c, who) {
  let missed = 0, duplicates = 0, outOfOrder = 0;
  for (let k = 1; k < c.ticks.length; k++) {
    const d = c.ticks[k] - c.ticks[k - 1];
    if (d === 0) duplicates++;
    else if (d < 0) outOfOrder++;
    else missed += d - 1;
  }
  return {
    i: c.i, firstNode: c.firstNode, node: who && who.node, firstId: c.firstId, id: c.socket.id,
    connected: c.socket.connected, recovered: c.recovered, reconnects: c.reconnects,
    ticks: c.ticks.length, missed, duplicates, outOfOrder,
  };
}

(async () => {
  const batch = 10;
  for (let i = 0; i < N; i += batch) {
    await Promise.all(Array.from({ length: Math.min(batch, N - i) }, (_, k) => connect(i + k)));
  }
  const nodes = {};
  for (const c of clients) nodes[c.firstNode] = (nodes[c.firstNode] || 0) + 1;
  out({ event: "ready", nodes });
  const rl = require("readline").createInterface({ input: process.stdin });
  rl.on("line", async (line) => {
    if (line.trim() === "report") {
      const list = [];
      for (const c of clients) list.push(summary(c, c.socket.connected ? await whoami(c.socket) : null));
      out({ event: "report", clients: list });
    } else if (line.trim() === "stop") {
      for (const c of clients) c.socket.close();
      out({ event: "final" });
      process.exit(0);
    }
  });
  rl.on("close", () => process.exit(0));
})();
