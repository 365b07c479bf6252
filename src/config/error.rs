//! Config errors that point at the line to fix.
//!
//! Every error that comes from the file's content carries `file:line:column` and the key
//! path, because `tether check`, a failed reload in the log and `/status` are all read by
//! someone who then opens an editor at that line.

use std::fmt;
use std::path::PathBuf;

use super::locate::{self, KeyPath, Pos};

/// `file:line:column`, 1-based, the form editors and terminals turn into links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl Location {
    pub(crate) fn new(file: &std::path::Path, pos: Pos) -> Self {
        Location {
            file: file.to_path_buf(),
            line: pos.line,
            column: pos.column,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all (missing, unreadable, not a file, too big).
    #[error("{}: cannot read the config file: {cause}{}", path.display(), looked_for(.path, .relative_to))]
    Read {
        path: PathBuf,
        cause: std::io::Error,
        /// The working directory, when the path is relative: where it was looked for is
        /// then not where a reader of the message may think.
        relative_to: Option<PathBuf>,
    },
    /// The text is not well-formed YAML (or not UTF-8).
    #[error("{at}: {message}")]
    Syntax { at: Location, message: String },
    /// Well-formed YAML of the wrong shape: unknown or missing key, wrong type.
    #[error("{at}: {}{message}", key_prefix(.key))]
    Schema {
        at: Location,
        key: String,
        message: String,
    },
    /// The right shape, but a value that cannot work: bad address, unknown backend, ...
    #[error("{at}: {}{message}", key_prefix(.key))]
    Invalid {
        at: Location,
        key: String,
        message: String,
    },
}

/// A value that is valid but cannot work as meant (see `advice`): reported like an error,
/// at its key, but nothing is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {}{message}", key_prefix(.key))]
pub struct ConfigWarning {
    pub at: Location,
    pub key: String,
    pub message: String,
}

/// Where a relative path was looked for, said after the cause (`; looked for /abs/path,
/// ...`), or nothing for an absolute one. Shared with the TLS layer, whose certificate
/// paths are relative to the same working directory, not to the config file.
pub fn looked_for(path: &std::path::Path, relative_to: &Option<PathBuf>) -> String {
    match relative_to {
        Some(dir) if path.is_relative() => format!(
            "; looked for {}, as relative paths are read from the working directory",
            dir.join(path).display()
        ),
        _ => String::new(),
    }
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}: ")
    }
}

impl ConfigError {
    /// Where in the file, when the error is about its content.
    pub fn location(&self) -> Option<&Location> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Syntax { at, .. }
            | ConfigError::Schema { at, .. }
            | ConfigError::Invalid { at, .. } => Some(at),
        }
    }

    /// The key path (`backends.sockets.servers[1].addr`), when one is known.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Schema { key, .. } | ConfigError::Invalid { key, .. } => {
                Some(key.as_str()).filter(|k| !k.is_empty())
            }
            _ => None,
        }
    }

    /// Turns a serde_yaml error into one that names the key path, and for unknown keys the
    /// allowed ones.
    ///
    /// serde_yaml knows both the path and the position but only exposes them through its
    /// message (`path: msg at line L column C`), so the message is taken apart here. Only
    /// the wording of serde's own derive messages is relied on; anything unrecognised is
    /// passed through unchanged, so a future serde_yaml costs polish, not information.
    pub(crate) fn from_serde(
        err: &serde_yaml::Error,
        text: &str,
        origin: &std::path::Path,
    ) -> Self {
        let pos = err.location().map_or(Pos::START, |l| Pos {
            line: l.line().max(1),
            column: l.column().max(1),
        });
        let at = Location::new(origin, pos);
        let mut full = err.to_string();
        let mark = format!(" at line {} column {}", pos.line, pos.column);
        if let Some(i) = full.find(&mark) {
            full.replace_range(i..i + mark.len(), "");
        } else if let Some(i) = full.find(" at position ") {
            let digits = full[i + 13..]
                .bytes()
                .take_while(u8::is_ascii_digit)
                .count();
            full.replace_range(i..i + 13 + digits, "");
        }
        match split_path(&full) {
            (Some(path), msg) => shape_error(at, path, msg, text),
            (None, msg) if is_shape_message(msg) => shape_error(at, "", msg, text),
            (None, msg) => syntax_error(at, msg, text),
        }
    }
}

/// The YAML parser's own message, unless the cause is one a newcomer would not guess
/// from it: a tab in the indentation reads as `found character that cannot start any
/// token` or `a tab character that violates indentation`.
fn syntax_error(mut at: Location, msg: &str, text: &str) -> ConfigError {
    let line = text.lines().nth(at.line.saturating_sub(1)).unwrap_or("");
    let indent = line
        .char_indices()
        .take_while(|(_, c)| c.is_whitespace())
        .find(|(_, c)| *c == '\t');
    if let Some((byte, _)) = indent {
        at.column = 1 + line[..byte].chars().count();
        return ConfigError::Syntax {
            at,
            message: "a tab in the indentation: YAML indents with spaces, never tabs; replace it with spaces".to_owned(),
        };
    }
    ConfigError::Syntax {
        at,
        message: format!("invalid YAML: {msg}"),
    }
}

fn shape_error(mut at: Location, path: &str, msg: &str, text: &str) -> ConfigError {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_owned()
        } else {
            format!("{path}.{k}")
        }
    };
    if msg.starts_with("unknown field `<<`") {
        return schema(at, join("<<"), NO_MERGE_KEYS.to_owned());
    }
    if let Some(field) = backquoted_after(msg, "unknown field ") {
        let allowed = backquoted_list(&msg[msg.find(", ").unwrap_or(msg.len())..]);
        let mut message = format!("unknown key `{field}`");
        if let Some(near) = closest(field, &allowed) {
            message.push_str(&format!(" (did you mean `{near}`?)"));
        }
        if path.is_empty() && field.starts_with("x-") {
            // docker-compose's habit: a top-level `x-` key holding anchors.
            message.push_str(" (extension keys are not supported: put an anchor where its value is first written)");
        }
        if allowed.is_empty() {
            message.push_str("; this map takes no keys");
        } else {
            message.push_str(&format!("; allowed keys here: {}", allowed.join(", ")));
        }
        return schema(at, join(field), message);
    }
    if let Some(field) = backquoted_after(msg, "missing field ") {
        return schema(at, join(field), "required key is missing".to_owned());
    }
    let duplicate = backquoted_after(msg, "duplicate field ")
        .or_else(|| backquoted_after(msg, "duplicate key "));
    if let Some(field) = duplicate {
        if let Some(p) = locate::locate_duplicate_key(text, &parse_path(path), field) {
            at.line = p.line;
            at.column = p.column;
        }
        return schema(at, join(field), "key given twice; keep one".to_owned());
    }
    if let Some(rest) = msg.strip_prefix("unknown variant ") {
        return schema(at, path.to_owned(), format!("unknown value {rest}"));
    }
    if let Some(message) = wrong_type(msg, path, value_at(text, &at)) {
        return schema(at, path.to_owned(), message);
    }
    schema(at, path.to_owned(), msg.to_owned())
}

/// What a `<<` key is told: serde_yaml reads it as a key like any other.
const NO_MERGE_KEYS: &str = "merge keys (`<<: *anchor`) are not supported: write the keys out; a whole value can still be reused, with an anchor where it is first written (`health: &checks { ... }`) and an alias where it is wanted again (`health: *checks`)";

/// serde's `invalid type: GOT, expected WANT` in the file's own terms: no Rust type
/// names (`u64`, `struct RawBackend`), YAML's words for what was written, and what to
/// change when the mistake is a common one.
///
/// `written` is the text of the value as it stands in the file, for the mistakes that
/// show only there: an unquoted `[::1]:3001` is a list to YAML.
fn wrong_type(msg: &str, path: &str, written: &str) -> Option<String> {
    let rest = msg
        .strip_prefix("invalid type: ")
        .or_else(|| msg.strip_prefix("invalid value: "))?;
    // The value may hold ", expected " itself (a quoted string); the expectation never does.
    let (got, want) = rest.rsplit_once(", expected ")?;
    let key = path.rsplit('.').next().unwrap_or(path);
    let named_key = !key.is_empty() && !key.ends_with(']');
    let want = match want {
        "a string" => "text",
        "u8" | "u16" | "u32" | "u64" | "usize" | "i8" | "i16" | "i32" | "i64" => "a whole number",
        "f32" | "f64" => "a number",
        "a boolean" => "true or false",
        "a sequence" => "a list",
        // serde_yaml's word for an enum given a list or a mapping.
        "a YAML tag starting with '!'" => "a single word",
        w if w.starts_with("struct ") || w == "a map" => "a mapping (key: value lines)",
        w => w,
    };
    let quoted = got.strip_prefix("string ");
    let unquoted = quoted.map(|q| q.trim_matches('"'));
    let hint = match (want, got) {
        ("text", "sequence") if written.starts_with('[') => {
            let value = written
                .split([',', '}', '#'])
                .next()
                .unwrap_or(written)
                .trim();
            return Some(if is_bracketed_address(value) {
                format!("an IPv6 address must be quoted, or YAML reads the [ as the start of a list: write {key}: \"{value}\"")
            } else {
                format!("expected text, got a list: YAML reads an unquoted [ as the start of one; quote the value: {key}: \"{value}\"")
            });
        }
        ("a whole number" | "a number", _)
            if unquoted.is_some_and(|u| u.parse::<f64>().is_ok()) =>
        {
            format!(
                "; write it without quotes: {key}: {}",
                unquoted.unwrap_or_default()
            )
        }
        ("true or false", _)
            if unquoted.is_some_and(|u| {
                ["yes", "no", "on", "off", "y", "n"].contains(&u.to_ascii_lowercase().as_str())
            }) =>
        {
            "; YAML 1.2 reads yes, no, on and off as text".to_owned()
        }
        ("a mapping (key: value lines)", "sequence") if named_key => {
            format!("; if `{key}` belongs under the key above it, indent it further")
        }
        ("a list", _) if quoted.is_some() => format!(
            "; one item is still a list: {key}: [{}]",
            unquoted.unwrap_or_default()
        ),
        ("a whole number", g) if g.starts_with("integer `-") => {
            "; it cannot be negative".to_owned()
        }
        _ => String::new(),
    };
    let got = match got {
        "sequence" => "a list".to_owned(),
        "map" => "a mapping".to_owned(),
        "unit value" => "nothing".to_owned(),
        g => match (quoted, g.split_once(' ')) {
            (Some(q), _) => format!("text {q}"),
            (None, Some(("integer" | "floating", n))) => {
                format!(
                    "the number {}",
                    n.trim_start_matches("point ").trim_matches('`')
                )
            }
            (None, Some(("boolean", b))) => b.trim_matches('`').to_owned(),
            _ => g.to_owned(),
        },
    };
    Some(format!("expected {want}, got {got}{hint}"))
}

/// `[v6]` or `[v6]:port`, as a server or listener address is written.
fn is_bracketed_address(s: &str) -> bool {
    let Some((ip, after)) = s.strip_prefix('[').and_then(|r| r.split_once(']')) else {
        return false;
    };
    let port_ok = after.is_empty()
        || after
            .strip_prefix(':')
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    port_ok && ip.parse::<std::net::Ipv6Addr>().is_ok()
}

/// The rest of the line from `at`, as written.
fn value_at<'t>(text: &'t str, at: &Location) -> &'t str {
    let line = text.lines().nth(at.line.saturating_sub(1)).unwrap_or("");
    let start = line
        .char_indices()
        .nth(at.column.saturating_sub(1))
        .map_or(line.len(), |(i, _)| i);
    line[start..].trim_end()
}

fn schema(at: Location, key: String, message: String) -> ConfigError {
    ConfigError::Schema { at, key, message }
}

/// Messages serde's derive produces while checking shape; anything else without a path is
/// the YAML parser's.
fn is_shape_message(msg: &str) -> bool {
    [
        "invalid type",
        "invalid value",
        "invalid length",
        "unknown field",
        "unknown variant",
        "missing field",
        "duplicate field",
        "duplicate key",
    ]
    .iter()
    .any(|p| msg.starts_with(p))
}

/// `listeners[0].tls: unknown field ...` → (`listeners[0].tls`, `unknown field ...`).
/// A path never contains spaces in this schema before `: `, while every message does.
fn split_path(full: &str) -> (Option<&str>, &str) {
    match full.split_once(": ") {
        Some((p, rest)) if !p.is_empty() && !p.contains(char::is_whitespace) => (Some(p), rest),
        _ => (None, full),
    }
}

/// Inverse of `KeyPath`'s display, good enough for serde's paths (used only to locate).
fn parse_path(s: &str) -> KeyPath {
    let mut path = KeyPath::root();
    for part in s.split('.') {
        let (name, mut idx) = part.split_once('[').map_or((part, ""), |(n, i)| (n, i));
        if !name.is_empty() {
            path = path.key(name);
        }
        while let Some((n, rest)) = idx.split_once(']') {
            if let Ok(n) = n.parse() {
                path = path.index(n);
            }
            idx = rest.trim_start_matches('[');
        }
    }
    path
}

fn backquoted_after<'a>(msg: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = msg.strip_prefix(prefix)?.strip_prefix('`')?;
    rest.split_once('`').map(|(name, _)| name)
}

fn backquoted_list(s: &str) -> Vec<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

/// The allowed key a typo most likely meant: edit distance at most 2 (or a third of it).
fn closest<'a>(got: &str, allowed: &[&'a str]) -> Option<&'a str> {
    let limit = (got.chars().count() / 3).clamp(1, 2);
    allowed
        .iter()
        .map(|a| (edit_distance(got, a), *a))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typo_suggestion_picks_the_nearest_allowed_key() {
        assert_eq!(closest("bnd", &["bind", "tls"]), Some("bind"));
        assert_eq!(
            closest("placment", &["balance", "placement"]),
            Some("placement")
        );
        assert_eq!(closest("zzzzzz", &["bind", "tls"]), None);
    }

    #[test]
    fn serde_paths_parse_back_into_key_paths() {
        let p = parse_path("backends.sockets.servers[1][2].addr");
        assert_eq!(p.to_string(), "backends.sockets.servers[1][2].addr");
    }

    #[test]
    fn message_without_path_is_not_split() {
        assert_eq!(split_path("invalid type: map").0, None);
        assert_eq!(
            split_path("a.b[0]: invalid type: map"),
            (Some("a.b[0]"), "invalid type: map")
        );
    }

    #[test]
    fn read_error_names_the_file() {
        let e = ConfigError::Read {
            path: "conf/x.yaml".into(),
            cause: std::io::Error::from(std::io::ErrorKind::NotFound),
            relative_to: Some("/home/u".into()),
        };
        assert_eq!(
            e.to_string(),
            "conf/x.yaml: cannot read the config file: entity not found; looked for /home/u/conf/x.yaml, as relative paths are read from the working directory"
        );
        assert!(e.location().is_none());
        let e = ConfigError::Read {
            path: "/etc/x.yaml".into(),
            cause: std::io::Error::from(std::io::ErrorKind::NotFound),
            relative_to: Some("/home/u".into()),
        };
        assert_eq!(
            e.to_string(),
            "/etc/x.yaml: cannot read the config file: entity not found"
        );
    }
}
