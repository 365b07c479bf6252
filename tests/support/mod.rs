//! Small builders for integration tests, one concern per file: real Node `socket.io`
//! nodes ([`nodes`]), tether itself on ephemeral ports ([`instance`]), long-running and
//! one-shot `socket.io-client` scripts ([`scripts`]), and a raw HTTP / WebSocket client
//! that can choose its source address ([`wire`]); children's stderr is shown only
//! when a test fails ([`quiet`]). A real `redis-server` and the config
//! builder come from `tether-testkit`, shared with the other crates' tests. Every
//! listener binds port 0 (Redis listens on a unix socket unless asked for TCP).

#![allow(dead_code, unused_imports)]

pub mod instance;
pub mod nodes;
pub mod quiet;
pub mod scripts;
pub mod wire;

use std::path::PathBuf;

pub use instance::*;
pub use nodes::*;
pub use quiet::StderrTail;
pub use scripts::*;
pub use tether_testkit::{ConfigBuilder, TestCluster, TestRedis};
pub use wire::*;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Heavy real-peer scenarios share two cores; running them one at a time keeps their
/// timing honest.
pub static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
