/*
 * tether-client.js: a small Engine.IO v4 / Socket.IO v5 browser client, written for tether's
 * demo chat page. Plain ES2017, no build step, no dependencies, no binary packets, one
 * namespace ("/"). Served by `tether node` at /tether-client.js.
 *
 *   const socket = TetherIO.connect();                 // same origin, path /socket.io/
 *   const socket = TetherIO.connect("https://lb:8443", { transports: ["polling", "websocket"] });
 *   socket.on("connect", () => socket.emit("hello", { name: "ada" }, (ans) => console.log(ans)));
 *   socket.on("chat", (msg) => ...);
 *   const me = await socket.emitWithAck("whoami");    // rejects on timeout or disconnect
 *
 * Engine.IO: polling handshake (GET ?EIO=4&transport=polling, open packet `0{...}`), a
 * long-polling GET loop, one POST at a time for sends (packets joined by \x1e, maxPayload
 * respected), upgrade to WebSocket with a probe (`2probe` -> `3probe`, polling paused, then
 * `5`), server pings answered with `3`, ping timeout (pingInterval + pingTimeout without a
 * packet closes the session). transports: ["websocket"] alone opens a WebSocket directly.
 * Socket.IO: CONNECT `40` (optional auth object) and its answer `40{"sid":...}`, CONNECT_ERROR
 * `44`, DISCONNECT `41`, events `42[...]` / `42<id>[...]`, acks `43<id>[...]` both ways.
 *
 * Reconnection after any loss (transport error, close, ping timeout, server disconnect, connect
 * error, handshake timeout): exponential back-off with jitter, reconnectionDelay (200 ms)
 * doubling up to reconnectionDelayMax (5 s), +-randomizationFactor (0.5). Only
 * socket.disconnect() stops it. Emits made while not connected are buffered and sent on the
 * next connect (at most maxBuffered of them).
 *
 * Events on the socket: "connect", "disconnect" (reason), "reconnecting" ({attempt, delay}),
 * "reconnect" (attempt), "connect_error" (Error), "upgrade" (transport name), "ping",
 * plus every event the server emits. Properties: socket.id (Socket.IO id), socket.engineId
 * (Engine.IO sid), socket.transport ("polling" | "websocket" | null), socket.connected.
 */
(function (global) {
  "use strict";

  var SEP = "\x1e";
  var RESERVED = ["connect", "disconnect", "reconnecting", "reconnect", "connect_error", "upgrade", "ping"];
  var DEFAULTS = {
    path: "/socket.io/",
    transports: ["polling", "websocket"],
    upgrade: true,
    auth: null,
    query: null,
    withCredentials: false,
    reconnection: true,
    reconnectionDelay: 200,
    reconnectionDelayMax: 5000,
    randomizationFactor: 0.5,
    timeout: 10000, // handshake + Socket.IO CONNECT must finish within this
    probeTimeout: 10000,
    ackTimeout: 5000, // default for emitWithAck
    maxBuffered: 100,
  };

  function assign(target) {
    for (var i = 1; i < arguments.length; i++) {
      var src = arguments[i];
      if (src) for (var k in src) if (Object.prototype.hasOwnProperty.call(src, k)) target[k] = src[k];
    }
    return target;
  }

  function Emitter() {
    this._handlers = {};
  }
  Emitter.prototype.on = function (event, fn) {
    (this._handlers[event] = this._handlers[event] || []).push(fn);
    return this;
  };
  Emitter.prototype.once = function (event, fn) {
    var self = this;
    function once() {
      self.off(event, once);
      fn.apply(self, arguments);
    }
    once.fn = fn;
    return this.on(event, once);
  };
  Emitter.prototype.off = function (event, fn) {
    if (event === undefined) { this._handlers = {}; return this; }
    if (!fn) { delete this._handlers[event]; return this; }
    var list = this._handlers[event] || [];
    this._handlers[event] = list.filter(function (h) { return h !== fn && h.fn !== fn; });
    return this;
  };
  Emitter.prototype._fire = function (event, args) {
    var list = (this._handlers[event] || []).slice();
    for (var i = 0; i < list.length; i++) {
      try {
        list[i].apply(this, args || []);
      } catch (err) {
        setTimeout(function () { throw err; }); // report it without breaking the protocol loop
      }
    }
  };

  // ---------------------------------------------------------------- Engine.IO session

  // One Engine.IO session: handshake, transports, upgrade, heartbeat. Calls
  // handlers.open(handshake), handlers.message(data), handlers.close(reason), handlers.upgrade(name),
  // handlers.ping(). Never reconnects by itself.
  function Engine(base, opts, handlers) {
    this.base = base; // "http(s)://host:port/path/"
    this.opts = opts;
    this.h = handlers;
    this.id = null;
    this.transport = null; // "polling" | "websocket"
    this.state = "opening";
    this.pingInterval = 25000;
    this.pingTimeout = 20000;
    this.maxPayload = 1000000;
    this.outbox = []; // encoded packets waiting to be written
    this.polling = false; // a long-poll GET is in flight
    this.posting = false; // a POST is in flight
    this.paused = false; // polling paused for the upgrade
    this.pausing = null; // callback to run once polling is idle
    this.ws = null; // the WebSocket (probing or upgraded)
    this.aborts = []; // AbortControllers of in-flight fetches
    this.timers = {};
    this._open();
  }

  Engine.prototype._url = function (transport, withSid) {
    var q = "EIO=4&transport=" + transport;
    if (withSid && this.id) q += "&sid=" + encodeURIComponent(this.id);
    var extra = this.opts.query;
    if (extra) for (var k in extra) q += "&" + encodeURIComponent(k) + "=" + encodeURIComponent(extra[k]);
    if (transport === "polling") q += "&t=" + Date.now().toString(36) + Math.random().toString(36).slice(2, 6);
    var url = this.base + "?" + q;
    return transport === "websocket" ? url.replace(/^http/, "ws") : url;
  };

  Engine.prototype._fetch = function (method, body) {
    var self = this;
    var ctl = typeof AbortController === "function" ? new AbortController() : null;
    if (ctl) this.aborts.push(ctl);
    var init = {
      method: method,
      cache: "no-store",
      credentials: this.opts.withCredentials ? "include" : "same-origin",
      signal: ctl ? ctl.signal : undefined,
    };
    if (body !== undefined) {
      init.body = body;
      init.headers = { "content-type": "text/plain;charset=UTF-8" };
    }
    var url = this._url("polling", true);
    var done = function () {
      if (ctl) self.aborts = self.aborts.filter(function (c) { return c !== ctl; });
    };
    return fetch(url, init).then(function (res) {
      return res.text().then(function (text) {
        done();
        if (!res.ok) throw new Error("HTTP " + res.status + " " + text.slice(0, 120));
        return text;
      });
    }, function (err) {
      done();
      throw err;
    });
  };

  Engine.prototype._open = function () {
    var self = this;
    this._timer("handshake", this.opts.timeout, function () { self._close("handshake timeout"); });
    if (this.opts.transports.indexOf("polling") < 0) {
      this._openWebSocketDirect();
      return;
    }
    this.transport = "polling";
    this.polling = true;
    this._fetch("GET").then(function (text) {
      self.polling = false;
      if (self.state === "closed") return;
      self._onPayload(text);
      if (self.state === "open") self._poll();
    }, function (err) {
      self.polling = false;
      self._close("transport error: " + (err && err.message ? err.message : err));
    });
  };

  Engine.prototype._openWebSocketDirect = function () {
    var self = this;
    this.transport = "websocket";
    var ws;
    try {
      ws = new WebSocket(this._url("websocket", false));
    } catch (err) {
      setTimeout(function () { self._close("transport error: " + err.message); });
      return;
    }
    this.ws = ws;
    this._wireWebSocket(ws);
  };

  Engine.prototype._wireWebSocket = function (ws) {
    var self = this;
    ws.onmessage = function (ev) {
      if (typeof ev.data === "string") self._onPacket(ev.data);
    };
    ws.onclose = function (ev) {
      if (self.ws === ws && self.transport === "websocket") self._close("transport close (websocket " + ev.code + ")");
    };
    ws.onerror = function () {
      if (self.ws === ws && self.transport === "websocket") self._close("transport error (websocket)");
    };
  };

  // Splits a polling payload into packets.
  Engine.prototype._onPayload = function (text) {
    var packets = text.split(SEP);
    for (var i = 0; i < packets.length && this.state !== "closed"; i++) {
      if (packets[i].length) this._onPacket(packets[i]);
    }
  };

  Engine.prototype._onPacket = function (packet) {
    if (this.state === "closed") return;
    var type = packet.charAt(0);
    var data = packet.slice(1);
    if (this.state === "open") this._resetPingTimer();
    switch (type) {
      case "0": return this._onOpen(data);
      case "1": return this._close("transport close (server sent close)");
      case "2": // ping: answer with a pong
        this._write("3");
        this.h.ping();
        return;
      case "3": return; // pong (probe answers arrive on the probe socket, not here)
      case "4": return this.h.message(data);
      case "6": return; // noop
      default: return; // binary ("b...") and unknown packets are not supported
    }
  };

  Engine.prototype._onOpen = function (data) {
    var hs;
    try {
      hs = JSON.parse(data);
    } catch (err) {
      return this._close("parse error: bad open packet");
    }
    this.id = hs.sid;
    if (hs.pingInterval) this.pingInterval = hs.pingInterval;
    if (hs.pingTimeout) this.pingTimeout = hs.pingTimeout;
    if (hs.maxPayload) this.maxPayload = hs.maxPayload;
    this.state = "open";
    this._resetPingTimer();
    this.h.open(hs);
    this._flush();
    var canUpgrade = this.transport === "polling" && this.opts.upgrade &&
      this.opts.transports.indexOf("websocket") >= 0 && typeof WebSocket === "function" &&
      (hs.upgrades || []).indexOf("websocket") >= 0;
    if (canUpgrade) this._probe();
  };

  Engine.prototype._resetPingTimer = function () {
    var self = this;
    this._timer("ping", this.pingInterval + this.pingTimeout, function () { self._close("ping timeout"); });
  };

  Engine.prototype._timer = function (name, ms, fn) {
    clearTimeout(this.timers[name]);
    this.timers[name] = ms === null ? undefined : setTimeout(fn, ms);
  };

  // ---- polling

  Engine.prototype._poll = function () {
    var self = this;
    if (this.polling || this.paused || this.state !== "open" || this.transport !== "polling") return;
    this.polling = true;
    this._fetch("GET").then(function (text) {
      self.polling = false;
      if (self.state === "closed") return;
      self._onPayload(text);
      self._checkPaused();
      if (self.state === "open" && self.transport === "polling" && !self.pausing && !self.paused) self._poll();
    }, function (err) {
      self.polling = false;
      if (self.transport === "polling") self._close("transport error: " + (err && err.message ? err.message : err));
    });
  };

  // Writes one encoded packet (buffered while the transport can't take it).
  Engine.prototype._write = function (packet) {
    if (this.state === "closed") return;
    this.outbox.push(packet);
    this._flush();
  };

  Engine.prototype._flush = function () {
    var self = this;
    if (this.state !== "open" || !this.outbox.length) return;
    if (this.transport === "websocket") {
      var ws = this.ws;
      while (this.outbox.length) ws.send(this.outbox.shift());
      return;
    }
    if (this.posting || this.paused || this.pausing) return;
    // Take as many packets as fit in maxPayload (always at least one).
    var n = 0;
    var size = 0;
    while (n < this.outbox.length) {
      size += this.outbox[n].length * 3 + 1; // utf-8 upper bound
      if (n > 0 && size > this.maxPayload) break;
      n++;
    }
    var batch = this.outbox.splice(0, n);
    this.posting = true;
    this._fetch("POST", batch.join(SEP)).then(function () {
      self.posting = false;
      if (self.state === "closed") return;
      self._checkPaused();
      self._flush();
    }, function (err) {
      self.posting = false;
      if (self.transport === "polling") self._close("transport error: POST " + (err && err.message ? err.message : err));
    });
  };

  // ---- upgrade to WebSocket

  Engine.prototype._probe = function () {
    var self = this;
    var ws;
    try {
      ws = new WebSocket(this._url("websocket", true));
    } catch (err) {
      return; // stay on polling
    }
    var failed = false;
    function fail() {
      if (failed || self.transport === "websocket") return;
      failed = true;
      clearTimeout(self.timers.probe);
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try { ws.close(); } catch (_) {}
      if (self.ws === ws) self.ws = null;
      // Polling goes on as before.
      self.pausing = null;
      self.paused = false;
      if (self.state === "open") { self._poll(); self._flush(); }
    }
    this.ws = ws;
    this._timer("probe", this.opts.probeTimeout, fail);
    ws.onopen = function () { ws.send("2probe"); };
    ws.onerror = fail;
    ws.onclose = fail;
    ws.onmessage = function (ev) {
      if (failed || ev.data !== "3probe" || self.state !== "open") return fail();
      ws.onmessage = null;
      // Pause polling: wait for the in-flight GET (the server ends it with a noop) and POST.
      self._pause(function () {
        if (failed || self.state !== "open") return;
        clearTimeout(self.timers.probe);
        ws.send("5");
        self.transport = "websocket";
        self.paused = false;
        self._wireWebSocket(ws);
        self.h.upgrade("websocket");
        self._flush();
      });
    };
  };

  Engine.prototype._pause = function (then) {
    this.pausing = then;
    this._checkPaused();
  };

  Engine.prototype._checkPaused = function () {
    if (!this.pausing || this.polling || this.posting) return;
    var then = this.pausing;
    this.pausing = null;
    this.paused = true;
    then();
  };

  // ---- close

  Engine.prototype.close = function (reason) {
    if (this.state === "closed") return;
    // Tell the server (best effort), then drop everything.
    if (this.state === "open" && this.transport === "websocket" && this.ws && this.ws.readyState === 1) {
      try { this.ws.send("1"); } catch (_) {}
    } else if (this.state === "open" && this.transport === "polling") {
      try { fetch(this._url("polling", true), { method: "POST", body: "1", credentials: "same-origin", keepalive: true }).catch(function () {}); } catch (_) {}
    }
    this._close(reason || "io client disconnect");
  };

  Engine.prototype._close = function (reason) {
    if (this.state === "closed") return;
    this.state = "closed";
    for (var k in this.timers) clearTimeout(this.timers[k]);
    this.aborts.forEach(function (c) { try { c.abort(); } catch (_) {} });
    this.aborts = [];
    this.outbox = [];
    if (this.ws) {
      var ws = this.ws;
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try { ws.close(); } catch (_) {}
      this.ws = null;
    }
    this.h.close(reason);
  };

  // ---------------------------------------------------------------- Socket.IO socket

  function Socket(url, opts) {
    Emitter.call(this);
    this.opts = assign({}, DEFAULTS, opts || {});
    // Only the origin of url counts (a path in it would be a namespace: not supported).
    var origin = new URL(url ? String(url).replace(/^ws/i, "http") : "/", global.location.href).origin;
    var path = this.opts.path.replace(/\/*$/, "/");
    if (path.charAt(0) !== "/") path = "/" + path;
    this.base = origin + path;
    this.id = null; // Socket.IO id (answer to CONNECT)
    this.engineId = null;
    this.transport = null;
    this.connected = false;
    this.attempts = 0; // reconnection attempts since the last connect
    this.engine = null;
    this._acks = {}; // id -> fn
    this._nextAck = 0;
    this._buffer = []; // {packet, ack} emitted while not connected, sent on the next connect
    this._closed = false;
    this._reconnectTimer = null;
    this.open();
  }
  Socket.prototype = Object.create(Emitter.prototype);
  Socket.prototype.constructor = Socket;

  Socket.prototype.open = function () {
    var self = this;
    if (this.engine || this._closed) return this;
    clearTimeout(this._reconnectTimer);
    var engine = new Engine(this.base, this.opts, {
      open: function () {
        self.engineId = engine.id;
        self.transport = engine.transport;
        var connect = "0";
        if (self.opts.auth) connect += JSON.stringify(typeof self.opts.auth === "function" ? self.opts.auth() : self.opts.auth);
        engine._write("4" + connect);
      },
      message: function (data) { if (engine === self.engine) self._onPacket(data); },
      upgrade: function (name) {
        self.transport = name;
        self._fire("upgrade", [name]);
      },
      ping: function () { self._fire("ping"); },
      close: function (reason) { if (engine === self.engine) self._onClose(reason); },
    });
    this.engine = engine;
    return this;
  };

  Socket.prototype._send = function (packet) {
    if (this.engine) this.engine._write("4" + packet);
  };

  // Parses a Socket.IO packet: type, optional "/nsp,", optional ack id, JSON data.
  Socket.prototype._onPacket = function (str) {
    var type = Number(str.charAt(0));
    var i = 1;
    if (str.charAt(i) === "/") {
      var comma = str.indexOf(",", i);
      var nsp = comma < 0 ? str.slice(i) : str.slice(i, comma);
      if (nsp !== "/") return; // only the main namespace
      i = comma < 0 ? str.length : comma + 1;
    }
    var start = i;
    while (i < str.length && str.charCodeAt(i) >= 48 && str.charCodeAt(i) <= 57) i++;
    var id = i > start ? Number(str.slice(start, i)) : null;
    var data;
    if (i < str.length) {
      try {
        data = JSON.parse(str.slice(i));
      } catch (err) {
        return; // malformed: ignored
      }
    }
    switch (type) {
      case 0: return this._onConnect(data || {});
      case 1: return this._lose("io server disconnect");
      case 2: return this._onEvent(data, id);
      case 3: return this._onAck(data, id);
      case 4: {
        var err = new Error((data && data.message) || "connect error");
        err.data = data && data.data;
        this._fire("connect_error", [err]);
        return this._lose("connect error");
      }
      default: return; // binary packets are not supported
    }
  };

  Socket.prototype._onConnect = function (data) {
    var reconnected = this.attempts;
    this.id = data.sid || null;
    this.connected = true;
    this.attempts = 0;
    clearTimeout(this.engine.timers.handshake);
    this.transport = this.engine.transport;
    var buffered = this._buffer;
    this._buffer = [];
    if (reconnected) this._fire("reconnect", [reconnected]);
    this._fire("connect");
    for (var i = 0; i < buffered.length; i++) this._send(buffered[i].packet);
  };

  Socket.prototype._onEvent = function (data, id) {
    if (!Array.isArray(data) || !data.length) return;
    var args = data.slice(1);
    if (id !== null) {
      var self = this;
      var sent = false;
      args.push(function () {
        if (sent) return;
        sent = true;
        self._send("3" + id + JSON.stringify(Array.prototype.slice.call(arguments)));
      });
    }
    this._fire(String(data[0]), args);
  };

  Socket.prototype._onAck = function (data, id) {
    var fn = this._acks[id];
    if (!fn) return;
    delete this._acks[id];
    fn.apply(this, Array.isArray(data) ? data : []);
  };

  // emit(event, ...args, ackFn?)
  Socket.prototype.emit = function (event) {
    if (RESERVED.indexOf(event) >= 0) throw new Error('"' + event + '" is a reserved event name');
    var args = Array.prototype.slice.call(arguments);
    var packet = "2";
    var id = null;
    if (typeof args[args.length - 1] === "function") {
      id = this._nextAck++;
      this._acks[id] = args.pop();
      packet += id;
    }
    packet += JSON.stringify(args);
    if (this.connected) this._send(packet);
    else if (this._buffer.length < this.opts.maxBuffered) this._buffer.push({ packet: packet, ack: id });
    else if (id !== null) delete this._acks[id]; // dropped: its ack can never come
    return this;
  };

  // Promise form: resolves with the ack's first argument; rejects on timeout or disconnect.
  Socket.prototype.emitWithAck = function (event) {
    var self = this;
    var args = Array.prototype.slice.call(arguments);
    return new Promise(function (resolve, reject) {
      var timer;
      var onLost = function (reason) {
        clearTimeout(timer);
        self.off("disconnect", onLost);
        reject(new Error("disconnected before the ack (" + reason + ")"));
      };
      var settle = function (value) {
        clearTimeout(timer);
        self.off("disconnect", onLost);
        resolve(value);
      };
      args.push(settle);
      self.emit.apply(self, args);
      var id = self._nextAck - 1;
      timer = setTimeout(function () {
        delete self._acks[id];
        self.off("disconnect", onLost);
        reject(new Error('no ack for "' + event + '" within ' + self.opts.ackTimeout + " ms"));
      }, self.opts.ackTimeout);
      if (self.connected) self.on("disconnect", onLost);
    });
  };

  // The session is gone (any reason): tell the page, then reconnect unless closed by us.
  Socket.prototype._onClose = function (reason) {
    this.engine = null;
    var wasConnected = this.connected;
    this.connected = false;
    this.transport = null;
    // Acks of sent packets can never come; those of buffered packets still may.
    var keep = {};
    for (var i = 0; i < this._buffer.length; i++) {
      var id = this._buffer[i].ack;
      if (id !== null && this._acks[id]) keep[id] = this._acks[id];
    }
    this._acks = keep;
    if (wasConnected) this._fire("disconnect", [reason]);
    else if (!this._closed) this._fire("connect_error", [new Error(reason)]);
    this._scheduleReconnect();
  };

  Socket.prototype._lose = function (reason) {
    if (this.engine) this.engine.close(reason); // -> _onClose(reason)
  };

  Socket.prototype._scheduleReconnect = function () {
    var self = this;
    if (this._closed || !this.opts.reconnection || this._reconnectTimer) return;
    this.attempts++;
    var o = this.opts;
    var delay = Math.min(o.reconnectionDelayMax, o.reconnectionDelay * Math.pow(2, Math.min(this.attempts - 1, 30)));
    var jitter = o.randomizationFactor;
    delay = Math.round(Math.min(o.reconnectionDelayMax, delay * (1 - jitter + 2 * jitter * Math.random())));
    this._fire("reconnecting", [{ attempt: this.attempts, delay: delay }]);
    this._reconnectTimer = setTimeout(function () {
      self._reconnectTimer = null;
      self.open();
    }, delay);
  };

  Socket.prototype.disconnect = function () {
    this._closed = true;
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    if (this.engine) {
      if (this.connected) this._send("1");
      this.engine.close();
    }
    return this;
  };
  Socket.prototype.close = Socket.prototype.disconnect;

  // Reconnects at once (skipping the back-off) if not connected; reopens after disconnect().
  Socket.prototype.connect = function () {
    this._closed = false;
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    return this.open();
  };

  global.TetherIO = {
    connect: function (url, opts) {
      if (url && typeof url === "object") { opts = url; url = undefined; }
      return new Socket(url, opts);
    },
    Socket: Socket,
    protocol: 5,
  };
})(typeof window !== "undefined" ? window : this);
