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

pub mod advice;
mod duration;
mod error;
mod locate;
pub mod model;
mod schema;
mod validate;

use std::io::Read;
use std::path::Path;

/// The config's duration syntax (`500ms`, `2s`, `1h30m`, `7d`), for readers of other formats.
pub use duration::parse as parse_duration;
pub use error::{looked_for, ConfigError, ConfigWarning, Location};
pub use model::*;

/// Bigger than any real config; stops `--config /dev/zero` from eating memory.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Reads and validates a file. Errors name file:line:column and the key.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_checked(path, |_| Ok(()))
}

/// A file the config names, for the check given to [`load_checked`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamedFile<'a> {
    /// A listener's certificate chain, leaf first.
    Certificate(&'a Path),
    /// A listener's private key, and the certificate it has to belong to.
    PrivateKey { key: &'a Path, cert: &'a Path },
    /// A CA bundle that a backend's servers are verified against.
    CaBundle(&'a Path),
}

/// Like [`load`], and then every file the config names is put through `check` in file
/// order; the first one refused is reported at the key that names it, the check's
/// message as the reason.
///
/// A callback because what makes a certificate good is the TLS layer's knowledge, which
/// sits above this one; this layer knows where each file is named.
pub fn load_checked(
    path: &Path,
    check: impl Fn(NamedFile<'_>) -> Result<(), String>,
) -> Result<Config, ConfigError> {
    let read_err = |cause| ConfigError::Read {
        path: path.to_path_buf(),
        cause,
        relative_to: path
            .is_relative()
            .then(std::env::current_dir)
            .and_then(Result::ok),
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
        let line = &valid[line_start..];
        // A BOM is invisible in an editor: it is no column.
        let line = line.strip_prefix(BOM.as_bytes()).unwrap_or(line);
        let pos = locate::Pos {
            line: 1 + valid.iter().filter(|&&b| b == b'\n').count(),
            column: 1 + String::from_utf8_lossy(line).chars().count(),
        };
        ConfigError::Syntax {
            at: Location::new(path, pos),
            message: "the file is not UTF-8 text".to_owned(),
        }
    })?;
    let mut config = parse_checked(&text, path, check)?;
    config.source = Some(path.to_path_buf());
    Ok(config)
}

/// Same from text; `origin` is the name used in messages (e.g. "conf/tether.yaml" or "<inline>").
pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
    parse_checked(text, origin, |_| Ok(()))
}

/// [`parse`], with the files the config names put through `check` as in [`load_checked`].
pub fn parse_checked(
    text: &str,
    origin: &Path,
    check: impl Fn(NamedFile<'_>) -> Result<(), String>,
) -> Result<Config, ConfigError> {
    // Editors on Windows save UTF-8 with a byte order mark; the YAML parser would read it
    // as part of the first key, and report a good file as missing `backends`. Taken off
    // here, every position is still the one an editor shows (it shows no BOM).
    let text = text.strip_prefix(BOM).unwrap_or(text);
    if let Some(message) = nothing_in(text) {
        return Err(ConfigError::Syntax {
            at: Location::new(origin, locate::Pos::START),
            message,
        });
    }
    let raw: schema::RawConfig =
        serde_yaml::from_str(text).map_err(|e| ConfigError::from_serde(&e, text, origin))?;
    let place = |p: &validate::Problem| {
        Location::new(
            origin,
            locate::locate(text, p.at.as_ref().unwrap_or(&p.key)),
        )
    };
    let mut config = validate::validate(raw).map_err(|p| ConfigError::Invalid {
        at: place(&p),
        key: p.key.to_string(),
        message: p.message,
    })?;
    for (key, file) in named_files(&config) {
        if let Err(message) = check(file) {
            return Err(ConfigError::Invalid {
                at: Location::new(origin, locate::locate(text, &key)),
                key: key.to_string(),
                message,
            });
        }
    }
    config.warnings = advice::warnings(&config)
        .into_iter()
        .map(|p| ConfigWarning {
            at: place(&p),
            key: p.key.to_string(),
            message: p.message,
        })
        .collect();
    Ok(config)
}

/// The UTF-8 byte order mark.
const BOM: &str = "\u{feff}";

/// Why a file with no YAML content in it cannot be a config, said as such: serde would
/// report the first required key as missing, which reads as if the rest were there.
fn nothing_in(text: &str) -> Option<String> {
    let mut lines = text.lines().map(str::trim);
    if !lines.all(|l| l.is_empty() || l.starts_with('#') || l == "---" || l == "...") {
        return None;
    }
    let what = if text.trim().is_empty() {
        "the file is empty"
    } else {
        "the file holds only comments"
    };
    Some(format!(
        "{what}; a config needs at least listeners: and backends: (conf/tether.yaml is a sample to start from)"
    ))
}

/// Every file `config` names, with the key that names it, in file order (a certificate
/// before its key: a key is checked against its certificate).
fn named_files(config: &Config) -> Vec<(locate::KeyPath, NamedFile<'_>)> {
    let root = locate::KeyPath::root();
    let mut out = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let Some(tls) = &l.tls else { continue };
        let pairs = root
            .key("listeners")
            .index(i)
            .key("tls")
            .key("certificates");
        for (j, pair) in tls.certificates.iter().enumerate() {
            out.push((
                pairs.index(j).key("cert"),
                NamedFile::Certificate(&pair.cert),
            ));
            out.push((
                pairs.index(j).key("key"),
                NamedFile::PrivateKey {
                    key: &pair.key,
                    cert: &pair.cert,
                },
            ));
        }
    }
    for b in &config.backends {
        if let Some(ca) = b.tls.as_ref().and_then(|t| t.ca.as_deref()) {
            let key = root.key("backends").key(&b.name).key("tls").key("ca");
            out.push((key, NamedFile::CaBundle(ca)));
        }
    }
    out
}

/// Where the `bind` of listener `listener` (or, for `None`, of the admin API) is written
/// in the file `source`: `file:line:column: key`, or the key alone when the config did
/// not come from a file. For a failure found only when the address is bound (a port in
/// use), so the file is read again, as for any error located after validation.
pub fn bind_key(source: Option<&Path>, listener: Option<usize>) -> String {
    let root = locate::KeyPath::root();
    let key = match listener {
        Some(i) => root.key("listeners").index(i).key("bind"),
        None => root.key("admin").key("bind"),
    };
    match source.and_then(|f| Some((f, std::fs::read_to_string(f).ok()?))) {
        Some((file, text)) => format!(
            "{}: {key}",
            Location::new(file, locate::locate(&text, &key))
        ),
        None => key.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "\
listeners:
  - bind: 127.0.0.1:0
  - bind: 127.0.0.1:0
    tls:
      certificates:
        - { cert: a.crt, key: a.key }
        - cert: b.crt
          key: b.key
backends:
  chat:
    servers: [{ id: a, addr: \"127.0.0.1:1\" }]
    tls: { ca: ca.pem }
";

    fn refusing(bad: &'static str) -> impl Fn(NamedFile<'_>) -> Result<(), String> {
        move |f| {
            let path = match f {
                NamedFile::Certificate(p) | NamedFile::CaBundle(p) => p,
                NamedFile::PrivateKey { key, .. } => key,
            };
            if path == Path::new(bad) {
                Err(format!("cannot read {bad}: gone"))
            } else {
                Ok(())
            }
        }
    }

    /// `text` refused, with the whole message.
    fn refused(text: &str) -> String {
        parse(text, Path::new("c.yaml")).unwrap_err().to_string()
    }

    const GOOD: &str =
        "listeners:\n  - bind: 127.0.0.1:0\nbackends:\n  chat:\n    servers: [{ id: a, addr: \"127.0.0.1:1\" }]\n";

    #[test]
    fn a_byte_order_mark_is_not_content_and_counts_no_column() {
        assert!(parse(&format!("{BOM}{GOOD}"), Path::new("c.yaml")).is_ok());
        // Line 1 is counted as an editor shows it, without the (invisible) BOM.
        assert_eq!(
            refused(&format!("{BOM}listeners: 3\nbackends: {{}}\n")),
            "c.yaml:1:12: listeners: expected a list, got the number 3"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bom.yaml");
        std::fs::write(&file, format!("{BOM}{GOOD}")).unwrap();
        assert!(load(&file).is_ok());
        let mut bytes = BOM.as_bytes().to_vec();
        bytes.extend_from_slice(b"ab\xff");
        std::fs::write(&file, bytes).unwrap();
        let err = load(&file).unwrap_err().to_string();
        assert!(
            err.ends_with("bom.yaml:1:3: the file is not UTF-8 text"),
            "{err}"
        );
    }

    #[test]
    fn an_empty_file_is_said_to_be_empty() {
        for (text, what) in [
            ("", "the file is empty"),
            ("\n  \n", "the file is empty"),
            (
                "# listeners: later\n\n---\n",
                "the file holds only comments",
            ),
            (BOM, "the file is empty"),
        ] {
            assert_eq!(
                refused(text),
                format!("c.yaml:1:1: {what}; a config needs at least listeners: and backends: (conf/tether.yaml is a sample to start from)"),
                "{text:?}"
            );
        }
    }

    #[test]
    fn yaml_mistakes_are_said_in_yaml_s_terms_at_their_place() {
        let servers = |s: &str| {
            format!("listeners:\n  - bind: 127.0.0.1:0\nbackends:\n  chat:\n    servers:\n{s}")
        };
        let cases = [
            // A tab: the parser says "found character that cannot start any token".
            ("listeners:\n\t- bind: 127.0.0.1:0\n".to_owned(), "c.yaml:2:1: a tab in the indentation: YAML indents with spaces, never tabs; replace it with spaces"),
            (servers("      - id: a\n    \t  addr: x\n"), "c.yaml:7:5: a tab in the indentation: YAML indents with spaces, never tabs; replace it with spaces"),
            // Unquoted IPv6: YAML reads a list.
            (servers("      - id: a\n        addr: [::1]:43311\n"), "c.yaml:7:15: backends.chat.servers[0].addr: an IPv6 address must be quoted, or YAML reads the [ as the start of a list: write addr: \"[::1]:43311\""),
            (servers("      - { id: a, addr: [::1]:43311 }\n"), "c.yaml:6:24: backends.chat.servers[0].addr: an IPv6 address must be quoted, or YAML reads the [ as the start of a list: write addr: \"[::1]:43311\""),
            ("listeners:\n  - bind: [::]:8080\n".to_owned(), "c.yaml:2:11: listeners[0].bind: an IPv6 address must be quoted, or YAML reads the [ as the start of a list: write bind: \"[::]:8080\""),
            // A key one level too shallow.
            ("listeners:\n  - bind: 127.0.0.1:0\nbackends:\n  chat:\n  servers:\n    - { id: a, addr: \"127.0.0.1:1\" }\n".to_owned(), "c.yaml:6:5: backends.servers: expected a mapping (key: value lines), got a list; if `servers` belongs under the key above it, indent it further"),
            ("listeners:\n  - 127.0.0.1:0\n".to_owned(), "c.yaml:2:5: listeners[0]: expected a mapping (key: value lines), got text \"127.0.0.1:0\""),
            // Numbers, booleans, lists, text.
            (servers("      - { id: a, addr: \"127.0.0.1:1\", weight: \"2\" }\n"), "c.yaml:6:47: backends.chat.servers[0].weight: expected a whole number, got text \"2\"; write it without quotes: weight: 2"),
            (servers("      - { id: a, addr: \"127.0.0.1:1\", weight: -1 }\n"), "c.yaml:6:47: backends.chat.servers[0].weight: expected a whole number, got the number -1; it cannot be negative"),
            (servers("      - { id: a, addr: \"127.0.0.1:1\", weight: 1.5 }\n"), "c.yaml:6:47: backends.chat.servers[0].weight: expected a whole number, got the number 1.5"),
            (servers("      - { id: a, addr: \"127.0.0.1:1\" }\n    load_factor: x\n"), "c.yaml:7:18: backends.chat.load_factor: expected a number, got text \"x\""),
            (servers("      - { id: a, addr: \"127.0.0.1:1\" }\n    cookie: { secret: 0123456789abcdef, secure: yes }\n"), "c.yaml:7:49: backends.chat.cookie.secure: expected true or false, got text \"yes\"; YAML 1.2 reads yes, no, on and off as text"),
            ("listeners: 3\n".to_owned(), "c.yaml:1:12: listeners: expected a list, got the number 3"),
            ("trusted_proxies: 10.0.0.0/8\n".to_owned(), "c.yaml:1:18: trusted_proxies: expected a list, got text \"10.0.0.0/8\"; one item is still a list: trusted_proxies: [10.0.0.0/8]"),
            (servers("      - { id: [a], addr: \"127.0.0.1:1\" }\n"), "c.yaml:6:15: backends.chat.servers[0].id: expected text, got a list: YAML reads an unquoted [ as the start of one; quote the value: id: \"[a]\""),
            (servers("      - { id: a, addr: \"127.0.0.1:1\" }\n    health: { mode: [tcp] }\n"), "c.yaml:7:21: backends.chat.health.mode: expected a single word, got a list"),
            ("listeners:\n  - bind: 127.0.0.1:0\nbackends:\n  - chat\n".to_owned(), "c.yaml:4:3: backends: expected a mapping (key: value lines) of backend names to their settings, got a list"),
            // Merge keys, in a struct and where backend names go.
            (servers("      - <<: { id: a, addr: \"127.0.0.1:1\" }\n"), "c.yaml:6:9: backends.chat.servers[0].<<: merge keys (`<<: *anchor`) are not supported: write the keys out; a whole value can still be reused, with an anchor where it is first written (`health: &checks { ... }`) and an alias where it is wanted again (`health: *checks`)"),
            ("listeners:\n  - bind: 127.0.0.1:0\nbackends:\n  <<: { chat: { servers: [{ id: a, addr: \"127.0.0.1:1\" }] } }\n".to_owned(), "c.yaml:4:3: backends.<<: merge keys (`<<: *anchor`) are not supported: write the keys out; a whole value can still be reused, with an anchor where it is first written (`health: &checks { ... }`) and an alias where it is wanted again (`health: *checks`)"),
            ("x-servers: &s [{ id: a, addr: \"127.0.0.1:1\" }]\n".to_owned(), "c.yaml:1:1: x-servers: unknown key `x-servers` (extension keys are not supported: put an anchor where its value is first written); allowed keys here: listeners, admin, trusted_proxies, limits, routes, backends, shutdown_grace, access_log, registry"),
        ];
        for (text, expected) in cases {
            let said = refused(&text);
            assert_eq!(said, expected, "{text}");
            for rust in [
                "u64", "f64", "struct", "Raw", "sequence", "a map ", "YAML tag",
            ] {
                assert!(!said.contains(rust), "{rust} in {said}");
            }
        }
    }

    #[test]
    fn a_whole_value_is_reused_with_an_anchor_and_an_alias() {
        let text = "listeners:\n  - bind: 127.0.0.1:0\nbackends:\n  a:\n    health: &checks { mode: tcp, interval: 5s }\n    servers: [{ id: a, addr: \"127.0.0.1:1\" }]\n  b:\n    health: *checks\n    servers: [{ id: b, addr: \"127.0.0.1:2\" }]\nroutes: [{ backend: a }]\n";
        let config = parse(text, Path::new("c.yaml")).unwrap();
        assert_eq!(config.backends[1].health, config.backends[0].health);
        assert!(config.backends[1].health.is_some());
    }

    #[test]
    fn every_named_file_is_checked_in_file_order() {
        let seen = std::cell::RefCell::new(Vec::new());
        parse_checked(YAML, Path::new("c.yaml"), |f| {
            seen.borrow_mut().push(format!("{f:?}"));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            seen.into_inner(),
            [
                "Certificate(\"a.crt\")",
                "PrivateKey { key: \"a.key\", cert: \"a.crt\" }",
                "Certificate(\"b.crt\")",
                "PrivateKey { key: \"b.key\", cert: \"b.crt\" }",
                "CaBundle(\"ca.pem\")",
            ]
        );
    }

    #[test]
    fn a_refused_file_is_reported_at_the_key_that_names_it() {
        for (bad, expected) in [
            (
                "a.crt",
                "c.yaml:6:19: listeners[1].tls.certificates[0].cert: cannot read a.crt: gone",
            ),
            (
                "a.key",
                "c.yaml:6:31: listeners[1].tls.certificates[0].key: cannot read a.key: gone",
            ),
            (
                "b.crt",
                "c.yaml:7:17: listeners[1].tls.certificates[1].cert: cannot read b.crt: gone",
            ),
            (
                "b.key",
                "c.yaml:8:16: listeners[1].tls.certificates[1].key: cannot read b.key: gone",
            ),
            (
                "ca.pem",
                "c.yaml:12:16: backends.chat.tls.ca: cannot read ca.pem: gone",
            ),
        ] {
            let err = parse_checked(YAML, Path::new("c.yaml"), refusing(bad)).unwrap_err();
            assert_eq!(err.to_string(), expected);
        }
    }
}
