//! The bundled Socket.IO node pool: real Socket.IO servers (socketioxide) for local
//! clusters, demos, tests and benchmarks, sharing rooms and broadcasts through an
//! adapter — Redis pub/sub, Redis Streams, or an in-process bus when no Redis exists.
//!
//! - [`node`] one Socket.IO node served with hyper: `/health`, `/metrics`, the demo
//!   application ([`app`]) and the chat page ([`assets`]).
//! - [`drivers`] adapter drivers of our own: an in-process bus, Redis Streams.
//! - [`supervisor`] `tether pool`: nodes as child processes, restarted when they die.
//! - [`demo`] `tether demo`: nodes, tether, certificate, dashboard, one command.

pub mod app;
pub mod assets;
pub mod backoff;
pub mod demo;
pub mod drivers;
pub mod node;
pub mod supervisor;
#[cfg(test)]
mod test_redis;
