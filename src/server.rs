//! A whole tether: the runtime with the admin API attached. The one place that knows
//! both, so neither has to know the other's layer (the runtime serves the admin
//! listener through [`AdminApi`], the admin API reads the runtime).

use std::sync::Arc;

use crate::admin;
use crate::config::Config;

pub use crate::runtime::{load_config, AdminApi, Runtime, StartError, Tether};

/// Binds every listener of `config` and its admin API; [`Tether::run`] serves them.
pub async fn bind(config: Config) -> Result<Tether, StartError> {
    Tether::bind(config, Arc::new(admin::Api)).await
}

/// [`bind`] for `tether run --takeover path`: takes over the listening sockets and
/// sessions of the tether listening on `path`, if any; run it with
/// [`Tether::run_taking_over`].
#[cfg(unix)]
pub async fn bind_taking_over(
    config: Config,
    path: &std::path::Path,
) -> Result<(Tether, crate::runtime::takeover::Takeover), StartError> {
    crate::runtime::takeover::bind(config, Arc::new(admin::Api), path).await
}
