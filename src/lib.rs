//! tether: a sticky-session-aware layer-7 load balancer for Socket.IO / Engine.IO.
//!
//! Module map, in the order a request meets them:
//!
//! - [`server`] binds the configured listeners and runs them until the shutdown token
//!   (fed by signals, `tether_kit::signal`) is cancelled.
//! - [`listener`] accepts connections (plain or TLS) and serves HTTP/1.1 on each.
//! - [`proxy`] is the request path: route by host and path, pick a server, forward
//!   the request over that server's keep-alive pool or relay a WebSocket tunnel, and
//!   rewrite hop-by-hop and forwarding headers on the way.
//! - [`engineio`] holds the protocol facts the proxy relies on: how a request is
//!   recognised as Engine.IO, where its sid is, what the open packet says.
//! - [`affinity`] keeps a client on its server: the learned sid table, the signed
//!   cookie, the hash key of a new session, trusted-proxy client addresses.
//! - [`balance`] places new sessions: consistent hashing with bounded load, and
//!   least-sessions; fixed-seed hashing so every instance routes alike.
//! - [`snapshot`] is the immutable routing snapshot behind one `ArcSwap`, and the
//!   store of what outlives snapshots; [`backends`] holds the per-server counters
//!   that survive a reload.
//! - [`config`] turns a YAML file into a validated runtime config, or an error that
//!   names file, line, column and key.
//! - [`backends`] also keeps each server's health and operator state (ready,
//!   draining, maint), runs the active health checks and DNS discovery.
//! - [`admin`] serves the operator's API: `/status`, `/metrics`, reload, drain.
//! - [`telemetry`] sets up logging and names the metrics; [`wakers`] lets long-lived
//!   tasks (tunnels) wait for a rare change without a lock on every poll.
//! - [`tls`] certificates, SNI, upstream TLS, and a development CA (`tether cert`, tests).
//! - [`demo`] (feature `bundled`) `tether demo`: the bundled nodes of the
//!   `tether-node` crate behind tether, one command.

pub mod admin;
pub mod affinity;
pub mod backends;
pub mod balance;
pub mod body;
pub mod config;
#[cfg(feature = "bundled")]
pub mod demo;
pub mod engineio;
pub mod listener;
pub mod proxy;
pub mod runtime;
pub mod server;
pub mod snapshot;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod wakers;
