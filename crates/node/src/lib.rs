//! The bundled Socket.IO node pool: real Socket.IO servers (socketioxide) for local
//! clusters, demos, tests and benchmarks, sharing rooms and broadcasts through an
//! adapter — Redis pub/sub, Redis Streams, or an in-process bus when no Redis exists.
//!
//! A crate of its own so the proxy never compiles or ships a Socket.IO server: the
//! `tether` binary links it only with its `bundled` feature (`tether node`, `tether pool`,
//! and `tether demo`, which puts these nodes behind the proxy).
//!
//! - [`node`] one Socket.IO node served with hyper: `/health`, `/metrics`, the demo
//!   application ([`app`]) and the chat page ([`assets`]).
//! - [`drivers`] adapter drivers of our own: an in-process bus, Redis Streams.
//! - [`plain`] a plain WebSocket echo server (no Engine.IO), for benchmarks.
//! - [`supervisor`] `tether pool`: nodes as child processes, restarted when they die.

pub mod app;
pub mod assets;
pub mod drivers;
pub mod node;
pub mod plain;
pub mod supervisor;
