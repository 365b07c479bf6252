//! Loading `tether.yaml` into a [`Config`].
//!
//! Two stages, because they fail differently and must not be mixed:
//!
//! 1. **schema** — serde_yaml reads the text into raw structs that mirror the file. This
//!    stage knows positions, so malformed YAML, unknown keys (always refused: a typo must
//!    not silently fall back to a default) and wrong types come out with `file:line:column`.
//! 2. **validate** — raw values become the runtime types of [`model`]: addresses, CIDRs and
//!    durations parsed, routes resolved to backend indexes, defaults filled in, cross-field
//!    rules checked. Those rules need the whole document, which serde has no place for, and
//!    they run after positions are gone, so an error here carries a key path that
//!    [`locate`] maps back to a line and column by re-reading the text — only when there
//!    is an error to report.
//!
//! The request path sees only [`Config`]: nothing there re-parses or re-validates.

mod error;
mod locate;
pub mod model;
mod schema;
mod validate;

use std::io::Read;
use std::path::Path;

pub use error::{ConfigError, Location};
pub use model::*;

/// Bigger than any real config; stops `--config /dev/zero` from eating memory.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Reads and validates a file. Errors name file:line:column and the key.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let read_err = |cause| ConfigError::Read {
        path: path.to_path_buf(),
        cause,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(read_err(std::io::Error::other(format!(
            "larger than {} MiB; is this really a config file?",
            MAX_FILE_BYTES >> 20
        ))));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line_start = valid.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let pos = locate::Pos {
            line: 1 + valid.iter().filter(|&&b| b == b'\n').count(),
            column: 1 + String::from_utf8_lossy(&valid[line_start..])
                .chars()
                .count(),
        };
        ConfigError::Syntax {
            at: Location::new(path, pos),
            message: "the file is not UTF-8 text".to_owned(),
        }
    })?;
    let mut config = parse(&text, path)?;
    config.source = Some(path.to_path_buf());
    Ok(config)
}

/// Same from text; `origin` is the name used in messages (e.g. "conf/tether.yaml" or "<inline>").
pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
    let raw: schema::RawConfig =
        serde_yaml::from_str(text).map_err(|e| ConfigError::from_serde(&e, text, origin))?;
    validate::validate(raw).map_err(|p| {
        let pos = locate::locate(text, p.at.as_ref().unwrap_or(&p.key));
        ConfigError::Invalid {
            at: Location::new(origin, pos),
            key: p.key.to_string(),
            message: p.message,
        }
    })
}
