//! What tether's tests share across crates (the proxy's integration tests, the node
//! pool's unit tests), so each harness exists once.
//!
//! - [`redis`] a real `redis-server` on a unix socket (and optionally a loopback port),
//!   killed on drop, that can be killed and started again in place.
//! - [`config`] a builder for tether's YAML config, for tests that need one.

pub mod config;
pub mod redis;

pub use config::ConfigBuilder;
pub use redis::{TestCluster, TestRedis};
