//! TEMPORARY STUB — replaced by the real module.
pub mod model;
pub use model::*;
#[derive(Debug, thiserror::Error)]
#[error("stub")]
pub struct ConfigError;
pub fn load(_p: &std::path::Path) -> Result<Config, ConfigError> { Err(ConfigError) }
pub fn parse(_t: &str, _p: &std::path::Path) -> Result<Config, ConfigError> { Err(ConfigError) }
