#!/usr/bin/env node
// A real browser for tether's tests: headless Debian chromium (/usr/bin/chromium, installed by
// tests/setup.sh) driven by playwright-core (no browser download: we point it at the system
// binary).
//
//   node browser.js '<json options>'
//
// Prints JSON lines on stdout; the last one is the report, {"event":"final", ...}. Exits 0
// whenever it ran, whatever it found (assertions are the caller's), 2 on bad options, 1 when the
// browser cannot be started. Diagnostics go to stderr.
//
// Certificates: tether's tests serve a dev certificate that chromium does not trust, so every
// browser context is created with `ignoreHTTPSErrors: true` (certificate errors are accepted for
// that context only; TLS itself, ALPN and the WebSocket upgrade are real).
//
// Common options:
//   url            the page / server, e.g. "https://localhost:8443/"            (required)
//   chromium       the browser binary (default $TETHER_CHROMIUM or /usr/bin/chromium)
//   timeoutMs      how long to wait for a page to be connected (default 20000)
//
// Mode "chat": the demo chat page in two browser contexts (A and B).
//   screenshot         PNG path: A and B side by side after the run (optional)
//   maxTries           new contexts for B until A and B are on different nodes (default 10)
//   kill               false: skip the kill phase (default true)
//   killUrl            instead of asking on stdin, POST to this URL ("{node}" in it is replaced by
//                      the node's id) and go on once it answers 2xx
//   reconnectTimeoutMs how long B may take to show another node after the kill (default 15000)
//   Steps: both pages connected (#status data-state "connected" and #node set); B recreated until
//   it is on another node than A; A sends a message, B must show it; then the line
//   {"event":"kill","node":"<B's node>"} and a wait for a line "killed" on stdin (or killUrl);
//   B must show a connection to another node; B sends a message, A must show it.
//   Report: nodes [a, b], distinct, tries, transports [a, b], delivered, latencyMs (send click in
//   A to the element in B, both stamped by the pages' clocks), deliveredNode (data-node shown in B),
//   killed, reconnectedTo, reconnectMs (from "killed" to B connected elsewhere), statusAfter (B's
//   #status text), aNodeAfter (A's node after the kill), deliveredAfter, latencyAfterMs,
//   deliveredAfterNode, online [[nodes in A's who's-online list], [B's]], hintBefore (A's #hint
//   before any message: {visible, text}), hintAfter ([A's, B's] #hint visible after the first
//   message), you ([A's, B's] own entry in the online list, under long names: {text, found,
//   clippedBy: ancestors whose box cuts "(you)" off, overflowing: elements of the entry wider than
//   their box}), screenshot, pageErrors, error (only when something threw).
//
// Mode "dashboard": tether's admin dashboard (url: the admin listener's root) behind a token.
//   token        the right token (required)
//   wrongToken   a wrong one, tried first (default "not-the-token")
//   screenshot   PNG path of the dashboard once signed in (optional)
//   Steps: open the page; the login form (#login) must show with a message; sign in with the wrong
//   token, which must be refused with a message while the form stays usable; sign in with the
//   right one; the server cards (#backends [data-server]) must show; reload: still signed in (the
//   tab keeps the token); no cookie is ever set.
//   Report: pageStatus, loginShown, firstMessage, wrongMessage, retryPossible, servers (ids of the
//   cards), addresses (their [data-field=addr]), loginHiddenAfter, serversAfterReload, cookies
//   (count), tokenInUrl, screenshot, pageErrors, error.
//
// Mode "dashboard-live": the dashboard of a tether with live sessions, at laptop size and at phone
//   size, signed in through the form each time.
//   token        the right token (required); the script also reads /status, /sessions with it
//   servers      how many server cards to wait for (default 3)
//   maintCancel  a server id: click its Maint button, the confirmation must show; Cancel it
//   drain        a server id: click its Drain button; its state badge must turn "draining"
//   laptopShot   PNG path, full page at 1366x768 (optional)
//   darkShot     PNG path, the same in the dark colour scheme (optional)
//   phoneShot    PNG path, full page at 390x844 (optional)
//   waitMs       how long to wait for each condition (default 90000)
//   Steps (laptop): sign in; wait until every card shows the polling / WebSocket counts /status
//   gives at that moment and every sessions chart (the overview's and each card's) has drawn a
//   path of at least 2 points; hover the overview chart; look a live sid up in the "Find a
//   session" box; maintCancel; drain; wait for every chart (request rates too); screenshot; reload
//   (still signed in). Then (phone): sign in, wait for the cards and all their charts, measure
//   horizontal overflow, screenshot.
//   Report: servers (card ids), shown {id: {polling, websocket, load, state}}, statusShown (the
//   /status counts they matched), charts {name: points}, chartsAtShot (the same before the
//   laptop screenshot), hover (the overview chart's readout),
//   lookup {sid, server, shown}, maintConfirm (its text), maintCancelledState, drainShown (the
//   badge after the click), drainMessage, drainButtonDisabled, certificates (texts of the list), serversAfterReload, phone {servers, charts, scrollWidth,
//   innerWidth, overflowing: elements reaching past the viewport's right edge}, consoleErrors
//   [{page, signedIn, text}], pageErrors, laptopShot, phoneShot, error.
//
// Mode "socketio-client": the real socket.io-client bundle from npm in a blank page of the url's
// origin (GET /__browser_js_blank__, whatever it answers).
//   bundle   absolute path to node_modules/socket.io-client/dist/socket.io.min.js (default: ours)
//   Report: connected, upgraded, transport, echoOk, node, serverTransport, sid, connectMs,
//   upgradeMs, echoMs, error.
//
// Mode "tether-client": the same checks with our own client (/tether-client.js of the url's origin,
// or the file given as "client") in a blank page of that origin, plus a server-side ping count.
//   Report: connected, upgraded, transport, echoOk, node, serverTransport, sid, connectMs,
//   upgradeMs, echoMs, error.
"use strict";

const fs = require("fs");
const path = require("path");
const readline = require("readline");

process.stdout.on("error", () => {});
process.stderr.on("error", () => {});

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}
function log(...parts) {
  process.stderr.write(`[browser.js] ${parts.join(" ")}\n`);
}
function fail(code, msg) {
  log(msg);
  out({ event: "final", error: msg });
  process.exit(code);
}

let opts;
try {
  opts = JSON.parse(process.argv[2] || "");
} catch (err) {
  fail(2, "usage: node browser.js '<json options>' (see the header)");
}
if (!opts || typeof opts.url !== "string") fail(2, "options need a url");
const mode = opts.mode || "chat";
const chromiumPath = opts.chromium || process.env.TETHER_CHROMIUM || "/usr/bin/chromium";
const timeoutMs = Number(opts.timeoutMs) || 20000;

let chromium;
try {
  ({ chromium } = require("playwright-core"));
} catch (err) {
  fail(1, `playwright-core is not installed (tests/setup.sh): ${err.message}`);
}

// ---- stdin lines (chat mode waits for "killed")
const stdinLines = [];
const stdinWaiters = [];
let stdinClosed = false;
function watchStdin() {
  const rl = readline.createInterface({ input: process.stdin });
  rl.on("line", (line) => {
    const w = stdinWaiters.shift();
    if (w) w.resolve(line.trim());
    else stdinLines.push(line.trim());
  });
  rl.on("close", () => {
    stdinClosed = true;
    while (stdinWaiters.length) stdinWaiters.shift().reject(new Error("stdin closed"));
  });
}
function nextStdinLine(limitMs) {
  if (stdinLines.length) return Promise.resolve(stdinLines.shift());
  if (stdinClosed) return Promise.reject(new Error("stdin closed"));
  return new Promise((resolve, reject) => {
    const w = { resolve, reject };
    stdinWaiters.push(w);
    setTimeout(() => {
      const i = stdinWaiters.indexOf(w);
      if (i >= 0) {
        stdinWaiters.splice(i, 1);
        reject(new Error(`no line on stdin within ${limitMs} ms`));
      }
    }, limitMs).unref();
  });
}

async function launch() {
  if (!fs.existsSync(chromiumPath)) fail(1, `no chromium at ${chromiumPath} (tests/setup.sh installs Debian's)`);
  try {
    return await chromium.launch({
      executablePath: chromiumPath,
      args: ["--headless=new", "--no-sandbox", "--disable-gpu"],
      timeout: 60000,
    });
  } catch (err) {
    fail(1, `chromium did not start: ${err.message}`);
  }
}

function newContext(browser) {
  // ignoreHTTPSErrors: the tests' dev certificate is not in chromium's trust store (see the header).
  return browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 960, height: 720 } });
}

// ---------------------------------------------------------------- chat mode

// One page of the chat app in its own context.
async function openChat(browser, label, pageErrors) {
  const context = await newContext(browser);
  const page = await context.newPage();
  page.on("pageerror", (err) => pageErrors.push(`${label}: ${err.message}`));
  page.on("console", (msg) => {
    if (msg.type() === "error") pageErrors.push(`${label} console: ${msg.text()}`.slice(0, 300));
  });
  await page.goto(opts.url, { waitUntil: "domcontentloaded", timeout: timeoutMs });
  await waitConnected(page, null, timeoutMs);
  return { context, page, label };
}

// Waits until the page is connected with a node shown (and, if `not` is given, another node).
async function waitConnected(page, not, limitMs) {
  await page.waitForFunction(
    (not) => {
      const s = document.getElementById("status");
      const n = document.getElementById("node");
      const node = n && n.textContent.trim();
      return s && s.dataset.state === "connected" && /connected/.test(s.textContent) && node && node !== not;
    },
    not,
    { timeout: limitMs, polling: 50 }
  );
  return page.evaluate(() => ({
    node: document.getElementById("node").textContent.trim(),
    transport: document.getElementById("transport").textContent.trim(),
    status: document.getElementById("status").textContent.trim(),
  }));
}

// Whether the first-time hint of the message pane shows, and what it says.
function hintState(page) {
  return page.evaluate(() => {
    const h = document.getElementById("hint");
    if (!h) return { visible: false, text: null };
    const r = h.getBoundingClientRect();
    return { visible: !h.hidden && r.width > 0 && r.height > 0, text: h.textContent.replace(/\s+/g, " ").trim() };
  });
}

// The page's own entry in "who's online" once it shows `name`: is its "(you)" cut off by any
// box around it, and is anything in the entry wider than its box?
async function youState(page, name) {
  await page.waitForFunction(
    (name) => { const li = document.querySelector("#online li.me"); return li && li.textContent.includes(name); },
    name,
    { timeout: 6000, polling: 50 }
  ).catch(() => {});
  return page.evaluate(() => {
    const li = document.querySelector("#online li.me");
    if (!li) return { found: false, text: null };
    const walker = document.createTreeWalker(li, NodeFilter.SHOW_TEXT);
    let node = walker.nextNode();
    while (node && !node.data.includes("(you)")) node = walker.nextNode();
    if (!node) return { found: false, text: li.textContent };
    const range = document.createRange();
    const at = node.data.indexOf("(you)");
    range.setStart(node, at);
    range.setEnd(node, at + "(you)".length);
    const r = range.getBoundingClientRect();
    const clippedBy = [];
    for (let e = node.parentElement; e && e !== document.body; e = e.parentElement) {
      if (getComputedStyle(e).overflowX === "visible") continue;
      const b = e.getBoundingClientRect();
      if (r.left < b.left - 0.5 || r.right > b.right + 0.5) clippedBy.push(e.id || e.className || e.tagName);
    }
    const overflowing = [li, ...li.querySelectorAll("*")]
      .filter((e) => e.clientWidth > 0 && e.scrollWidth > e.clientWidth + 1)
      .map((e) => e.className || e.tagName);
    return { found: true, text: li.textContent, width: r.width, clippedBy, overflowing };
  });
}

// Types `text` into `from` and sends it; waits for it in `to`. Returns {delivered, latencyMs, node}.
async function sendAndSee(from, to, text, limitMs) {
  await from.page.fill("#text", text);
  const sentAt = await from.page.evaluate(() => {
    const t = Date.now();
    document.getElementById("send").click();
    return t;
  });
  try {
    const handle = await to.page.waitForFunction(
      (text) => {
        for (const m of document.querySelectorAll("#messages .msg")) {
          if (m.textContent.includes(text)) return { node: m.dataset.node, at: Number(m.dataset.receivedAt) };
        }
        return null;
      },
      text,
      { timeout: limitMs, polling: 10 }
    );
    const seen = await handle.jsonValue();
    return { delivered: true, latencyMs: seen.at - sentAt, node: seen.node };
  } catch (err) {
    return { delivered: false, latencyMs: null, node: null, error: err.message.split("\n")[0] };
  }
}

async function sideBySide(browser, a, b, file) {
  const [sa, sb] = await Promise.all([a.page.screenshot({ fullPage: true }), b.page.screenshot({ fullPage: true })]);
  const ctx = await browser.newContext({ viewport: { width: 1940, height: 760 } });
  const page = await ctx.newPage();
  const img = (buf, label) =>
    `<figure><figcaption>${label}</figcaption><img src="data:image/png;base64,${buf.toString("base64")}"></figure>`;
  await page.setContent(
    `<html><body style="margin:0;display:flex;gap:20px;background:#888;font:14px sans-serif">` +
      img(sa, "browser A") + img(sb, "browser B") +
      `<style>figure{margin:0}figcaption{padding:4px 8px;color:#fff}img{display:block}</style></body></html>`
  );
  await page.waitForFunction(() => Array.from(document.images).every((i) => i.complete));
  fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
  await page.screenshot({ path: file, fullPage: true });
  await ctx.close();
}

async function chat(browser) {
  const report = { event: "final", mode: "chat", pageErrors: [] };
  const nonce = Math.random().toString(36).slice(2, 8);
  let a, b;
  try {
    a = await openChat(browser, "A", report.pageErrors);
    b = await openChat(browser, "B", report.pageErrors);
    let nodeA = await waitConnected(a.page, null, timeoutMs);
    let nodeB = await waitConnected(b.page, null, timeoutMs);
    // B in a fresh context (no cookies) until it lands on another node than A.
    const maxTries = Number(opts.maxTries) || 10;
    report.tries = 1;
    while (nodeB.node === nodeA.node && report.tries < maxTries) {
      await b.context.close();
      b = await openChat(browser, "B", report.pageErrors);
      nodeB = await waitConnected(b.page, null, timeoutMs);
      report.tries++;
    }
    // Wait for A to settle too (its transport may have been upgraded meanwhile).
    nodeA = await waitConnected(a.page, null, timeoutMs);
    report.nodes = [nodeA.node, nodeB.node];
    report.distinct = nodeA.node !== nodeB.node;
    report.hintBefore = await hintState(a.page);
    // Long names (the field takes 40 characters): the online list must still show "(you)".
    const names = [`alice-with-a-long-name-${nonce}`, `bob-also-has-a-long-name-${nonce}`];
    await a.page.fill("#name", names[0]);
    await a.page.dispatchEvent("#name", "change");
    await b.page.fill("#name", names[1]);
    await b.page.dispatchEvent("#name", "change");
    // Let both sides upgrade (if they will) before measuring.
    await Promise.all([a.page, b.page].map((p) =>
      p.waitForFunction(() => document.getElementById("transport").textContent === "websocket", null, { timeout: 3000 })
        .catch(() => {})));
    report.transports = await Promise.all([a.page, b.page].map((p) => p.textContent("#transport")));

    const first = await sendAndSee(a, b, `hello from A ${nonce}`, 10000);
    report.hintAfter = await Promise.all([a.page, b.page].map(async (p) => (await hintState(p)).visible));
    report.you = await Promise.all([youState(a.page, names[0]), youState(b.page, names[1])]);
    report.delivered = first.delivered;
    report.latencyMs = first.latencyMs;
    report.deliveredNode = first.node;
    if (first.error) report.deliveredError = first.error;

    if (opts.kill !== false) {
      const victim = nodeB.node;
      report.killed = victim;
      if (opts.killUrl) {
        const url = opts.killUrl.replace("{node}", encodeURIComponent(victim));
        const res = await fetch(url, { method: "POST" });
        if (!res.ok) throw new Error(`killUrl answered ${res.status}`);
      } else {
        out({ event: "kill", node: victim });
        const line = await nextStdinLine(Number(opts.killTimeoutMs) || 120000);
        if (line !== "killed") throw new Error(`expected "killed" on stdin, got ${JSON.stringify(line)}`);
      }
      const killedAt = Date.now();
      const limit = Number(opts.reconnectTimeoutMs) || 15000;
      try {
        const after = await waitConnected(b.page, victim, limit);
        report.reconnectedTo = after.node;
        report.reconnectMs = Date.now() - killedAt;
        report.statusAfter = after.status;
      } catch (err) {
        report.reconnectedTo = null;
        report.statusAfter = await b.page.textContent("#status").catch(() => null);
        throw new Error(`B did not reconnect to another node within ${limit} ms (status: ${report.statusAfter})`);
      }
      const aAfter = await waitConnected(a.page, victim, limit).catch(() => null);
      report.aNodeAfter = aAfter && aAfter.node;
      const second = await sendAndSee(b, a, `hello again from B ${nonce}`, 10000);
      report.deliveredAfter = second.delivered;
      report.latencyAfterMs = second.latencyMs;
      report.deliveredAfterNode = second.node;
      if (second.error) report.deliveredAfterError = second.error;
    }
  } catch (err) {
    report.error = err.message.split("\n")[0];
    log("chat:", err.stack || err.message);
  }
  if (a && b) {
    // Both "who's online" lists up to date (they refresh every 2 s), for the report and the picture.
    report.online = await Promise.all([a.page, b.page].map(async (p) => {
      await p.waitForFunction(() => document.querySelectorAll("#online li").length >= 2, null, { timeout: 3000 })
        .catch(() => {});
      return p.evaluate(() => Array.from(document.querySelectorAll("#online li"), (li) => li.dataset.node)).catch(() => null);
    }));
  }
  if (opts.screenshot && a && b) {
    try {
      await sideBySide(browser, a, b, opts.screenshot);
      report.screenshot = path.resolve(opts.screenshot);
    } catch (err) {
      report.screenshotError = err.message.split("\n")[0];
    }
  }
  return report;
}

// ---------------------------------------------------------------- dashboard mode

async function dashboard(browser) {
  const report = { event: "final", mode: "dashboard", pageErrors: [] };
  if (typeof opts.token !== "string" || !opts.token) fail(2, "dashboard mode needs a token");
  const context = await newContext(browser);
  try {
    const page = await context.newPage();
    page.on("pageerror", (err) => report.pageErrors.push(err.message));
    const visible = (sel) => page.isVisible(sel);
    const serverIds = () => page.$$eval("#backends [data-server]", (cards) => cards.map((c) => c.dataset.server));
    const res = await page.goto(opts.url, { waitUntil: "domcontentloaded", timeout: timeoutMs });
    report.pageStatus = res && res.status();
    await page.waitForSelector("#login:not([hidden])", { timeout: timeoutMs });
    await page.waitForFunction(() => document.getElementById("login-msg").textContent.trim() !== "", null, { timeout: timeoutMs });
    report.loginShown = await visible("#login");
    report.firstMessage = (await page.textContent("#login-msg")).trim();

    await page.fill("#token", opts.wrongToken || "not-the-token");
    await page.click("#login-submit");
    await page.waitForFunction(() => /refused/.test(document.getElementById("login-msg").textContent), null, { timeout: timeoutMs });
    report.wrongMessage = (await page.textContent("#login-msg")).trim();
    report.retryPossible = (await visible("#login")) && !(await page.isDisabled("#login-submit")) && (await page.isEditable("#token"));

    await page.fill("#token", opts.token);
    await page.click("#login-submit");
    await page.waitForSelector("#backends [data-server]", { timeout: timeoutMs });
    report.servers = await serverIds();
    report.addresses = await page.$$eval("#backends [data-server] [data-field=addr]", (cells) => cells.map((c) => c.textContent));
    report.loginHiddenAfter = !(await visible("#login"));
    // Still fresh a second later: the page keeps polling /status with the token.
    await page.waitForTimeout(1500);
    report.serversLater = await serverIds();
    report.loginHiddenLater = !(await visible("#login"));

    if (opts.screenshot) {
      fs.mkdirSync(path.dirname(path.resolve(opts.screenshot)), { recursive: true });
      await page.screenshot({ path: opts.screenshot, fullPage: true });
      report.screenshot = path.resolve(opts.screenshot);
    }
    await page.reload({ waitUntil: "domcontentloaded", timeout: timeoutMs });
    await page.waitForSelector("#backends [data-server]", { timeout: timeoutMs }).catch(() => {});
    report.serversAfterReload = await serverIds();
    report.cookies = (await context.cookies()).length;
    report.tokenInUrl = page.url().includes(opts.token);
  } catch (err) {
    report.error = err.message.split("\n")[0];
    log("dashboard:", err.stack || err.message);
  } finally {
    await context.close().catch(() => {});
  }
  return report;
}

// ---------------------------------------------------------------- dashboard-live mode

// GET a JSON document of the admin API with the token, from Node (not the page).
async function adminJson(pathname) {
  const res = await fetch(new URL(pathname, opts.url), { headers: { Authorization: `Bearer ${opts.token}` } });
  if (!res.ok) throw new Error(`${pathname}: ${res.status} ${await res.text()}`);
  return res.json();
}

// A dashboard page in a context of its own, signed in through the form; console errors and page
// errors are collected with whether the page was signed in yet (the API's 401 before the
// sign-in is expected, and chromium logs it as a failed resource load).
async function openDashboard(browser, label, viewport, report) {
  const context = await browser.newContext({ viewport, deviceScaleFactor: 1, isMobile: label === "phone", hasTouch: label === "phone" });
  const page = await context.newPage();
  const tab = { context, page, signedIn: false };
  page.on("pageerror", (err) => report.pageErrors.push(`${label}: ${err.message}`));
  page.on("console", (msg) => {
    if (msg.type() === "error") report.consoleErrors.push({ page: label, signedIn: tab.signedIn, text: msg.text().slice(0, 300) });
  });
  await page.goto(opts.url, { waitUntil: "domcontentloaded", timeout: timeoutMs });
  await page.waitForSelector("#login:not([hidden])", { timeout: timeoutMs });
  await page.fill("#token", opts.token);
  tab.signedIn = true;
  await page.click("#login-submit");
  await page.waitForSelector("#dash:not([hidden]) #backends [data-server]", { timeout: timeoutMs });
  return tab;
}

// What the page shows: per card its counts and state, and the points of every chart drawn.
function readDashboard(page) {
  return page.evaluate(() => {
    const shown = {};
    for (const card of document.querySelectorAll("#backends [data-server]")) {
      const f = (name) => {
        const e = card.querySelector(`[data-field=${name}]`);
        return e ? e.textContent.trim() : null;
      };
      shown[card.dataset.server] = {
        polling: Number(f("polling")), websocket: Number(f("websocket")), load: Number(f("load")), state: f("state"),
      };
    }
    const charts = {};
    for (const fig of document.querySelectorAll("[data-chart]")) {
      const card = fig.closest("[data-server]");
      const name = card ? `${card.dataset.server}/${fig.dataset.chart}` : fig.dataset.chart;
      const path = fig.querySelector("path.line");
      charts[name] = path && /^M[\d.]+,[\d.]+L/.test(path.getAttribute("d") || "") ? Number(fig.dataset.points) : 0;
    }
    return { shown, charts };
  });
}

// Every sessions chart has a path of 2 points or more.
function sessionChartsDrawn(charts, servers) {
  const names = Object.keys(charts).filter((n) => n.endsWith("sessions"));
  return names.length >= servers + 1 && names.every((n) => charts[n] >= 2);
}

async function dashboardLive(browser) {
  const report = { event: "final", mode: "dashboard-live", pageErrors: [], consoleErrors: [] };
  if (typeof opts.token !== "string" || !opts.token) fail(2, "dashboard-live mode needs a token");
  const servers = Number(opts.servers) || 3;
  const waitMs = Number(opts.waitMs) || 90000;
  const tabs = [];
  let last = null;
  try {
    const laptop = await openDashboard(browser, "laptop", { width: 1366, height: 768 }, report);
    tabs.push(laptop);
    const page = laptop.page;

    // Wait (on conditions, not for a fixed time) until the cards agree with /status and the
    // charts have drawn.
    const deadline = Date.now() + waitMs;
    for (;;) {
      const status = await adminJson("/status");
      const want = {};
      for (const b of status.backends) for (const s of b.servers) want[s.id] = { polling: s.sessions.polling, websocket: s.sessions.websocket };
      last = { ...(await readDashboard(page)), want };
      const ids = Object.keys(last.shown);
      const agree = ids.length === servers && Object.keys(want).length === servers &&
        ids.every((id) => want[id] && last.shown[id].polling === want[id].polling && last.shown[id].websocket === want[id].websocket);
      if (agree && sessionChartsDrawn(last.charts, servers)) break;
      if (Date.now() > deadline) throw new Error(`the dashboard did not match /status with its charts drawn within ${waitMs} ms: ${JSON.stringify(last)}`);
      await page.waitForTimeout(250);
    }
    report.servers = Object.keys(last.shown);
    report.shown = last.shown;
    report.statusShown = last.want;
    report.charts = last.charts;

    // The overview chart reads out the figures under the pointer.
    const box = await page.locator("[data-chart=overview-sessions] .plot").boundingBox();
    await page.mouse.move(box.x + box.width * 0.9, box.y + box.height / 2);
    report.hover = (await page.textContent("[data-chart=overview-sessions] .read")).trim();
    await page.mouse.move(0, 0);

    // A live session looked up by its sid.
    const list = await adminJson("/sessions?limit=1");
    if (list.sessions.length) {
      const one = list.sessions[0];
      await page.fill("#find-sid", one.sid);
      await page.click("#find button[type=submit]");
      await page.waitForSelector("#find-out:not([hidden]) [data-field=server]", { timeout: waitMs });
      report.lookup = { sid: one.sid, server: one.server, shown: (await page.textContent("#find-out [data-field=server]")).trim() };
    }

    const card = (id) => `#backends [data-server="${id}"]`;
    if (opts.maintCancel) {
      await page.click(`${card(opts.maintCancel)} button[data-action=maint]`);
      await page.waitForSelector(`${card(opts.maintCancel)} .confirm:not([hidden])`, { timeout: waitMs });
      report.maintConfirm = (await page.textContent(`${card(opts.maintCancel)} .confirm p`)).trim();
      await page.click(`${card(opts.maintCancel)} .confirm button[data-confirm=cancel]`);
      await page.waitForSelector(`${card(opts.maintCancel)} .confirm`, { state: "hidden", timeout: waitMs });
      report.maintCancelledState = (await page.textContent(`${card(opts.maintCancel)} [data-field=state]`)).trim();
    }
    if (opts.drain) {
      await page.click(`${card(opts.drain)} button[data-action=drain]`);
      await page.waitForFunction(
        (sel) => { const e = document.querySelector(sel); return e && e.textContent.trim() === "draining"; },
        `${card(opts.drain)} [data-field=state]`, { timeout: waitMs, polling: 100 });
      report.drainShown = (await page.textContent(`${card(opts.drain)} [data-field=state]`)).trim();
      report.drainMessage = (await page.textContent(`${card(opts.drain)} .msg`)).trim();
      report.drainButtonDisabled = await page.isDisabled(`${card(opts.drain)} button[data-action=drain]`);
    }
    // For the picture: every chart drawn, the request rates too (they need a third sample).
    await page.waitForFunction(
      () => [...document.querySelectorAll("[data-chart]")].every((f) => Number(f.dataset.points) >= 2),
      null, { timeout: waitMs, polling: 250 });
    report.chartsAtShot = (await readDashboard(page)).charts;
    report.certificates = await page.$$eval("#certs li", (items) => items.map((li) => li.textContent));
    await page.evaluate(() => window.scrollTo(0, 0));
    if (opts.laptopShot) {
      fs.mkdirSync(path.dirname(path.resolve(opts.laptopShot)), { recursive: true });
      await page.screenshot({ path: opts.laptopShot, fullPage: true });
      report.laptopShot = path.resolve(opts.laptopShot);
    }
    if (opts.darkShot) {
      await page.emulateMedia({ colorScheme: "dark" });
      await page.screenshot({ path: opts.darkShot, fullPage: true });
      report.darkShot = path.resolve(opts.darkShot);
      await page.emulateMedia({ colorScheme: "light" });
    }
    await page.reload({ waitUntil: "domcontentloaded", timeout: timeoutMs });
    await page.waitForSelector("#dash:not([hidden]) #backends [data-server]", { timeout: waitMs }).catch(() => {});
    report.serversAfterReload = Object.keys((await readDashboard(page)).shown);

    const phone = await openDashboard(browser, "phone", { width: 390, height: 844 }, report);
    tabs.push(phone);
    await phone.page.waitForFunction(
      (n) => {
        const figs = [...document.querySelectorAll("[data-chart]")];
        return document.querySelectorAll("#backends [data-server]").length === n && figs.length === 2 * (n + 1) &&
          figs.every((f) => Number(f.dataset.points) >= 2);
      },
      servers, { timeout: waitMs, polling: 250 });
    const p = await readDashboard(phone.page);
    report.phone = {
      servers: Object.keys(p.shown),
      charts: p.charts,
      ...(await phone.page.evaluate(() => ({
        scrollWidth: document.documentElement.scrollWidth,
        innerWidth: window.innerWidth,
        overflowing: [...document.querySelectorAll("body *")]
          .filter((e) => { const r = e.getBoundingClientRect(); return r.width > 0 && r.right > window.innerWidth + 0.5; })
          .map((e) => `${e.tagName.toLowerCase()}${e.id ? `#${e.id}` : ""}${e.className && typeof e.className === "string" ? `.${e.className.split(" ").join(".")}` : ""}`)
          .slice(0, 20),
      }))),
    };
    if (opts.phoneShot) {
      fs.mkdirSync(path.dirname(path.resolve(opts.phoneShot)), { recursive: true });
      await phone.page.screenshot({ path: opts.phoneShot, fullPage: true });
      report.phoneShot = path.resolve(opts.phoneShot);
    }
  } catch (err) {
    report.error = err.message.split("\n")[0].slice(0, 4000);
    log("dashboard-live:", err.stack || err.message);
  } finally {
    for (const t of tabs) await t.context.close().catch(() => {});
  }
  return report;
}

// ---------------------------------------------------------------- client modes

// A page of the url's origin (a path nothing serves: whatever the server answers, a 404 most
// likely, becomes an empty document of that origin), so the Socket.IO requests that follow are
// same-origin and need no CORS. It is really loaded from the server, not fulfilled by the driver:
// chromium's local-network-access checks block WebSockets to localhost from a driver-made page.
async function blankPage(browser) {
  const context = await newContext(browser);
  const page = await context.newPage();
  const origin = new URL(opts.url).origin;
  await page.goto(`${origin}/__browser_js_blank__`, { waitUntil: "domcontentloaded", timeout: timeoutMs });
  return page;
}

async function clientMode(browser, which) {
  const report = { event: "final", mode };
  try {
    const page = await blankPage(browser);
    if (which === "socketio-client") {
      const bundle = opts.bundle || path.join(__dirname, "node_modules/socket.io-client/dist/socket.io.min.js");
      await page.addScriptTag({ path: bundle });
    } else if (opts.client) {
      await page.addScriptTag({ path: opts.client });
    } else {
      await page.addScriptTag({ url: new URL("/tether-client.js", opts.url).href });
    }
    const r = await page.evaluate(
      async ({ url, which, timeoutMs }) => {
        const r = { connected: false, upgraded: false, transport: null, echoOk: false };
        const t0 = performance.now();
        const within = (p, ms, what) =>
          Promise.race([p, new Promise((_, rej) => setTimeout(() => rej(new Error(`${what}: none within ${ms} ms`)), ms))]);
        let socket;
        let transportNow;
        let upgradedP;
        let ack;
        if (which === "socketio-client") {
          socket = io(url, { transports: ["polling", "websocket"], reconnection: false });
          transportNow = () => socket.io.engine && socket.io.engine.transport && socket.io.engine.transport.name;
          ack = (ev, arg) =>
            arg === undefined ? socket.timeout(5000).emitWithAck(ev) : socket.timeout(5000).emitWithAck(ev, arg);
          upgradedP = new Promise((resolve) => {
            const hook = () => {
              if (transportNow() === "websocket") return resolve();
              socket.io.engine.once("upgrade", () => resolve());
            };
            if (socket.io.engine) hook();
            else socket.io.once("open", hook);
          });
        } else {
          socket = TetherIO.connect(url, { reconnection: false });
          transportNow = () => socket.transport;
          ack = (ev, arg) => (arg === undefined ? socket.emitWithAck(ev) : socket.emitWithAck(ev, arg));
          upgradedP = new Promise((resolve) => socket.on("upgrade", () => resolve()));
        }
        try {
          await within(new Promise((resolve, reject) => {
            socket.on("connect", resolve);
            socket.on("connect_error", (e) => reject(new Error(`connect_error: ${e && e.message}`)));
          }), timeoutMs, "connect");
          r.connected = true;
          r.connectMs = Math.round(performance.now() - t0);
          r.firstTransport = transportNow();
          await within(upgradedP, 10000, "upgrade");
          r.upgraded = true;
          r.upgradeMs = Math.round(performance.now() - t0);
          r.transport = transportNow();
          const payload = { hello: "browser", n: 42, list: [1, "two", null], nested: { ok: true } };
          const t1 = performance.now();
          const echoed = await ack("echo", payload);
          r.echoMs = Math.round((performance.now() - t1) * 10) / 10;
          r.echoOk = JSON.stringify(echoed) === JSON.stringify(payload);
          const me = await ack("whoami");
          r.node = me && me.node;
          r.serverTransport = me && me.transport;
          r.sid = me && me.sid;
        } catch (err) {
          r.error = err.message;
        }
        r.transport = transportNow() || r.transport;
        socket.disconnect();
        return r;
      },
      { url: opts.url, which, timeoutMs }
    );
    Object.assign(report, r);
  } catch (err) {
    report.error = err.message.split("\n")[0];
    log(`${mode}:`, err.stack || err.message);
  }
  return report;
}

// ---------------------------------------------------------------- main

(async () => {
  if (!["chat", "dashboard", "dashboard-live", "socketio-client", "tether-client"].includes(mode)) fail(2, `unknown mode ${JSON.stringify(mode)}`);
  if (mode === "chat") watchStdin();
  const browser = await launch();
  let report;
  try {
    if (mode === "chat") report = await chat(browser);
    else if (mode === "dashboard") report = await dashboard(browser);
    else if (mode === "dashboard-live") report = await dashboardLive(browser);
    else report = await clientMode(browser, mode);
  } finally {
    // A hard stop in case closing the browser hangs.
    setTimeout(() => process.exit(0), 10000).unref();
    await browser.close().catch(() => {});
  }
  out(report);
  process.exit(0);
})().catch((err) => {
  log(err.stack || err.message);
  out({ event: "final", error: err.message });
  process.exit(0);
});
