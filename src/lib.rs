//! tether: a sticky-session-aware layer-7 load balancer for Socket.IO / Engine.IO.
//!
//! Module map, in layers from the bottom (a module uses only layers below its own;
//! `tests/architecture.rs` holds that, ARCHITECTURE.md explains it):
//!
//! - [`telemetry`] logging and the metric names; [`wakers`] lets long-lived tasks
//!   (tunnels) wait for a rare change without a lock per poll; [`body`] the one body type
//!   that crosses the proxy.
//! - [`config`] turns a YAML file into a validated runtime config, or an error that names
//!   file, line, column and key.
//! - [`import`] `tether import`: an nginx, HAProxy or ingress-nginx config read and written
//!   as an equivalent tether config, each directive translated or reported as dropped.
//! - [`engineio`] the protocol facts the proxy relies on: how a request is recognised as
//!   Engine.IO, where its sid is, what the open packet says. [`tls`] certificates chosen
//!   by SNI, upstream TLS, PEM loading, a development CA (`tether cert`, tests).
//!   [`admission`] what one client address may take: connections, session and request
//!   rates, allow and deny lists. [`access_log`] one line per request and per closed
//!   tunnel, written off the request path. [`fleet`] what instances share through Redis:
//!   learned sids (the registry) and operator states.
//! - [`balance`] places new sessions: least sessions, consistent hash with bounded load,
//!   round robin, slow start; fixed-seed hashing so every instance routes alike.
//! - [`upstream`] talks to one server: dial (TCP, TLS), its keep-alive pool, upgrades.
//! - [`backends`] a backend's servers and their live state (counters that outlive
//!   reloads, health, ready / draining / maint), active and passive health, DNS discovery.
//! - [`affinity`] keeps a client on its server: the learned sid table, the signed cookie,
//!   the hash key of a new session, trusted-proxy client addresses; which server a
//!   request goes to, and what a response teaches.
//! - [`snapshot`] the immutable routing snapshot behind one `ArcSwap`, and the store of
//!   what outlives snapshots.
//! - [`proxy`] the request path: route, pick, rewrite headers, forward over the server's
//!   pool (a new session retried elsewhere if its server cannot be reached), or relay a
//!   WebSocket tunnel.
//! - [`listener`] accepts connections (plain or TLS) and serves HTTP/1.1 or HTTP/2.
//! - [`runtime`] one running tether: binding, reloads, upkeep (sweeps, discovery, health
//!   checks following each new snapshot), graceful shutdown, and the binary upgrade
//!   that hands listening sockets and learned sessions to a new process (`--takeover`).
//! - [`admin`] the operator's API: `/status`, `/metrics`, reload, drain, the dashboard.
//! - [`server`] the composition root: a runtime with the admin API ([`server::bind`]).
//! - [`demo`] (feature `bundled`) `tether demo`: the bundled nodes of the `tether-node`
//!   crate behind tether, one command.
//!
//! The bundled node pool (`tether node`, `tether pool`) and the load generator
//! (`tether bench`) are crates of their own under `crates/`; the proxy never links them.

pub mod access_log;
pub mod admin;
pub mod admission;
pub mod affinity;
pub mod backends;
pub mod balance;
pub mod body;
pub mod config;
#[cfg(feature = "bundled")]
pub mod demo;
pub mod engineio;
pub mod fleet;
pub mod import;
pub mod listener;
pub mod proxy;
pub mod runtime;
pub mod server;
pub mod snapshot;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod wakers;
