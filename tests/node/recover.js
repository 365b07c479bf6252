#!/usr/bin/env node
// socket.io-client 4.8 clients that watch connection state recovery, for tether's tests.
//
//   node recover.js '{"url":"http://127.0.0.1:PORT","clients":30,"transports":["polling"],"rooms":10}'
//
// Connects `clients` clients (transports as given; default polling then upgrade), each
// counting the `tick` broadcasts (sequence numbers) it receives; with `rooms` N, client i
// first joins room-(i mod N) and counts only its room's ticks (server.js --tick-rooms).
// Prints {"event":"ready","nodes":{"node-1":n,...}} once every client is connected, in its
// room and has told its node (whoami). Then reads stdin lines:
//   "report" -> {"event":"report","clients":[{i, firstNode, node, firstId, id, recovered,
//                 reconnects, reasons, room, rooms, ticks, first, last, missed, duplicates,
//                 outOfOrder, foreign}]}: missed counts the sequence numbers absent between
//                 the client's first and last tick, foreign the ticks of another room, rooms
//                 what its node says it is in now, reasons why it was disconnected
//   "progress" -> {"event":"progress","clients":n,"connected":n,"disconnected":n,"back":n}
//                 (no round trip): back counts the clients disconnected at least once and
//                 connected again
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

function whoami(socket, ms = 5000) {
  return new Promise((resolve) => {
    socket.timeout(ms).emit("whoami", (err, res) => resolve(err ? null : res));
  });
}

const clients = [];
async function connect(i) {
  const ioOptions = { forceNew: true, reconnection: true, reconnectionDelay: 500, reconnectionDelayMax: 2000 };
  if (opts.transports) ioOptions.transports = opts.transports;
  const socket = io(opts.url, ioOptions);
  const room = opts.rooms ? `room-${i % opts.rooms}` : null;
  const c = { i, socket, room, ticks: [], foreign: 0, reasons: [], reconnects: 0, firstId: null, firstNode: null, recovered: null };
  socket.on("tick", (n, tickRoom) => {
    if (room && tickRoom !== room) c.foreign++;
    else c.ticks.push(n);
  });
  socket.on("disconnect", (reason) => c.reasons.push(reason));
  socket.on("connect", async () => {
    if (c.firstId === null) {
      c.firstId = socket.id;
    } else {
      c.reconnects++;
      c.recovered = socket.recovered;
    }
  });
  await new Promise((resolve) => socket.once("connect", resolve));
  if (room) {
    const joined = await new Promise((resolve) => socket.timeout(5000).emit("join", room, (err, ok) => resolve(!err && ok)));
    if (!joined) {
      out({ event: "final", error: `client ${i} could not join ${room}` });
      process.exit(1);
    }
  }
  const who = await whoami(socket);
  c.firstNode = who && who.node;
  clients.push(c);
}

function summary(c) {
  let missed = 0, duplicates = 0, outOfOrder = 0;
  for (let k = 1; k < c.ticks.length; k++) {
    const d = c.ticks[k] - c.ticks[k - 1];
    if (d === 0) duplicates++;
    else if (d < 0) outOfOrder++;
    else missed += d - 1;
  }
  return {
    i: c.i, firstNode: c.firstNode, node: null, firstId: c.firstId, id: c.socket.id,
    connected: c.socket.connected, recovered: c.recovered, reconnects: c.reconnects, reasons: c.reasons,
    room: c.room, rooms: null, ticks: c.ticks.length, first: c.ticks[0], last: c.ticks[c.ticks.length - 1],
    missed, duplicates, outOfOrder, foreign: c.foreign,
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
      // Every client's messages counted at the same instant; then where each is now.
      const list = clients.map((c) => summary(c));
      await Promise.all(clients.map(async (c, k) => {
        const who = c.socket.connected ? await whoami(c.socket, 15000) : null;
        list[k].node = who && who.node;
        list[k].rooms = who && who.rooms;
      }));
      out({ event: "report", clients: list });
    } else if (line.trim() === "progress") {
      // Cheap (no round trip): how many are connected, and how many of those that were
      // disconnected at least once are connected again.
      const connected = clients.filter((c) => c.socket.connected).length;
      const back = clients.filter((c) => c.reconnects > 0 && c.socket.connected).length;
      const disconnected = clients.filter((c) => c.reasons.length > 0).length;
      out({ event: "progress", clients: clients.length, connected, disconnected, back });
    } else if (line.trim() === "stop") {
      for (const c of clients) c.socket.close();
      out({ event: "final" });
      process.exit(0);
    }
  });
  rl.on("close", () => process.exit(0));
})();
