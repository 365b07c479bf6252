//! tether: a sticky-session-aware layer-7 load balancer for Socket.IO / Engine.IO.
//!
//! Module map, in the order a request meets them:
//!
//! - [`server`] binds the configured listeners and runs them; [`shutdown`] turns
//!   signals into the one cancellation token that stops everything.
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
//! - [`certs`] makes a development CA and certificates it signs (`tether cert`, tests).
//! - [`pool`] real Socket.IO nodes (socketioxide) to balance: `tether node`, the demo
//!   chat application, adapters over Redis or an in-process bus.
//! - [`bench`] a Socket.IO-aware load generator (`tether bench`): real client sessions
//!   (polling then upgrade, or WebSocket), echo round trips, sessions per node.

pub mod admin;
pub mod affinity;
pub mod backends;
pub mod balance;
pub mod bench;
pub mod certs;
pub mod config;
pub mod engineio;
pub mod listener;
pub mod pool;
pub mod proxy;
pub mod server;
pub mod shutdown;
pub mod snapshot;
pub mod telemetry;
pub mod wakers;
