//! `tether import`: an nginx, HAProxy or Kubernetes ingress-nginx config in, an equivalent
//! tether config out, with every directive either translated (or named as built in) or
//! reported as dropped, with the reason.
//!
//! Each reader ([`nginx`], [`haproxy`], [`ingress`]) fills one [`Plan`], the shape of a
//! tether config with the comments that explain it; [`emit`] writes it as YAML, and
//! [`import`] checks the YAML with [`crate::config::parse`] before handing it out, so
//! that what is printed is always a config tether accepts. The directive syntaxes are
//! read by a small [`tokenizer`] of our own: no maintained crate parses nginx and HAProxy
//! files as written (see the README's "Coming from nginx / HAProxy").

pub mod emit;
pub mod haproxy;
pub mod ingress;
pub mod nginx;
pub mod tokenizer;

use std::fmt;
use std::path::Path;

/// A position in the input file, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct At {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// Why a file cannot be imported. Each names the place in the input it is about.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The text does not follow the format's syntax.
    #[error("{at}: {message}")]
    Syntax { at: At, message: String },
    /// A directive, section or key the importer does not know: it cannot say what the
    /// config meant, so it does not guess.
    #[error("{at}: unknown directive `{name}`{hint}")]
    Unknown { at: At, name: String, hint: String },
    /// Syntactically fine, but there is nothing tether could balance, or a value is wrong.
    #[error("{at}: {message}")]
    Unusable { at: At, message: String },
    /// `--from` was not given and the content looks like none of the formats.
    #[error("1:1: cannot tell what this file is: not an nginx config (no `upstream`, `server` or `http` block), an HAProxy config (no `frontend`, `backend`, `listen`, `defaults` or `global` section) or a Kubernetes Ingress; name the format with --from nginx|haproxy|ingress")]
    Unrecognised,
    /// A `--rewrite FROM=TO` whose FROM is no address or path of the config.
    #[error("--rewrite {from}={to}: the imported config has no address or file {from:?} (it has: {known})")]
    UnusedRewrite {
        from: String,
        to: String,
        known: String,
    },
    /// A `--rewrite` not of the form FROM=TO.
    #[error("--rewrite {0:?}: expected FROM=TO, e.g. server1:3000=10.0.0.5:3000")]
    BadRewrite(String),
    /// The importer wrote YAML that tether refuses: a bug of the importer, said as such
    /// rather than printed.
    #[error("the imported config does not pass tether's own check (a bug of `tether import`, please report it): {0}")]
    Invalid(String),
    /// The secure random source failed while generating a cookie secret.
    #[error("could not generate a cookie secret: the system's random source failed")]
    Random,
}

impl ImportError {
    pub(crate) fn syntax(at: At, message: impl Into<String>) -> Self {
        ImportError::Syntax {
            at,
            message: message.into(),
        }
    }
    pub(crate) fn unusable(at: At, message: impl Into<String>) -> Self {
        ImportError::Unusable {
            at,
            message: message.into(),
        }
    }
    pub(crate) fn unknown(at: At, name: &str, hint: impl Into<String>) -> Self {
        ImportError::Unknown {
            at,
            name: name.to_owned(),
            hint: hint.into(),
        }
    }
    /// Where in the input, when the error is about a place in it.
    pub fn at(&self) -> Option<At> {
        match self {
            ImportError::Syntax { at, .. }
            | ImportError::Unknown { at, .. }
            | ImportError::Unusable { at, .. } => Some(*at),
            _ => None,
        }
    }
}

/// The input formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Nginx,
    Haproxy,
    Ingress,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Nginx => "nginx",
            Format::Haproxy => "HAProxy",
            Format::Ingress => "Kubernetes Ingress (ingress-nginx)",
        }
    }

    /// The format a file's content is in, from its first meaningful words.
    pub fn guess(text: &str) -> Option<Format> {
        let mut haproxy = false;
        let mut nginx = false;
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.starts_with("kind:") && line.contains("Ingress") {
                return Some(Format::Ingress);
            }
            let first = line.split_whitespace().next().unwrap_or("");
            match first {
                "global" | "defaults" | "frontend" | "backend" | "listen"
                    if !line.contains('{') && !line.ends_with(';') =>
                {
                    haproxy = true
                }
                "upstream" | "server" | "http" | "events" | "location" if line.ends_with('{') => {
                    nginx = true
                }
                _ => {}
            }
        }
        match (nginx, haproxy) {
            (true, false) => Some(Format::Nginx),
            (false, true) => Some(Format::Haproxy),
            _ => None,
        }
    }
}

/// What the importer could not carry over, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub at: At,
    /// The directive as written (words joined by a space).
    pub directive: String,
    pub reason: String,
}

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: dropped `{}`: {}",
            self.at, self.directive, self.reason
        )
    }
}

/// Options of one import.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// `FROM=TO` pairs: an address (server, listen/bind, discovered service), a route's
    /// host name or a file path (certificate) of the input replaced by another, for a config moved to other hosts
    /// or tried locally.
    pub rewrites: Vec<(String, String)>,
    /// The signing secret of a cookie section; `None`: a fresh random one.
    pub cookie_secret: Option<String>,
}

impl Options {
    /// Parses `FROM=TO` (the last `=` splits, so IPv6 and paths with `=` in FROM work
    /// only when TO has none).
    pub fn parse_rewrite(spec: &str) -> Result<(String, String), ImportError> {
        match spec.rsplit_once('=') {
            Some((from, to)) if !from.is_empty() && !to.is_empty() => {
                Ok((from.to_owned(), to.to_owned()))
            }
            _ => Err(ImportError::BadRewrite(spec.to_owned())),
        }
    }
}

/// The result: the YAML to print, and what was dropped (for stderr).
#[derive(Debug)]
pub struct Imported {
    pub format: Format,
    pub yaml: String,
    pub dropped: Vec<Dropped>,
}

/// A tether config in the making, with its comments.
#[derive(Debug, Default)]
pub struct Plan {
    /// Lines of the header comment.
    pub notes: Vec<String>,
    pub listeners: Vec<Listener>,
    pub routes: Vec<Route>,
    pub backends: Vec<Backend>,
    /// `limits.max_connections`.
    pub max_connections: Option<(u64, String)>,
    pub dropped: Vec<Dropped>,
    /// Directives tether needs no setting for: what it does anyway (same shape as
    /// `dropped`, written as comments in the YAML).
    pub built_in: Vec<Dropped>,
}

#[derive(Debug, Default, Clone)]
pub struct Listener {
    /// `ip:port`.
    pub bind: String,
    /// PEM files: certificate chain, key (HAProxy's `crt` holds both: the same file).
    pub tls: Vec<(String, String)>,
    pub redirect_https: Option<u16>,
    pub comment: String,
}

#[derive(Debug, Default, Clone)]
pub struct Route {
    pub host: Option<String>,
    pub path_prefix: String,
    pub backend: String,
    pub comment: String,
}

#[derive(Debug, Default, Clone)]
pub struct Backend {
    pub name: String,
    pub comment: String,
    /// Comment lines written inside the backend (translations, offered alternatives).
    pub notes: Vec<String>,
    pub servers: Vec<Server>,
    /// `name:port` for DNS discovery.
    pub discover: Option<String>,
    pub cookie: Option<String>,
    pub health: Option<Health>,
    pub connect_timeout: Option<String>,
    pub response_timeout: Option<String>,
}

#[derive(Debug, Default, Clone)]
pub struct Server {
    pub id: String,
    pub addr: String,
    pub weight: Option<u64>,
    pub max_connections: Option<u64>,
    pub state_draining: bool,
    pub comment: String,
}

#[derive(Debug, Clone)]
pub struct Health {
    /// `None`: a TCP check.
    pub path: Option<String>,
    pub expect_status: Option<u16>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub rise: Option<u64>,
    pub fall: Option<u64>,
    pub comment: String,
}

impl Plan {
    pub fn built_in(&mut self, at: At, directive: impl Into<String>, why: impl Into<String>) {
        self.built_in.push(Dropped {
            at,
            directive: directive.into(),
            reason: why.into(),
        });
    }
    pub fn drop(&mut self, at: At, directive: impl Into<String>, reason: impl Into<String>) {
        self.dropped.push(Dropped {
            at,
            directive: directive.into(),
            reason: reason.into(),
        });
    }
}

/// Imports `text` (read from `origin`, used in messages of tether's own check only).
pub fn import(
    text: &str,
    format: Option<Format>,
    options: &Options,
    origin: &Path,
) -> Result<Imported, ImportError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let format = match format {
        Some(f) => f,
        None => Format::guess(text).ok_or(ImportError::Unrecognised)?,
    };
    let mut plan = match format {
        Format::Nginx => nginx::read(text)?,
        Format::Haproxy => haproxy::read(text)?,
        Format::Ingress => ingress::read(text)?,
    };
    rewrite(&mut plan, &options.rewrites)?;
    let secret = match (
        &options.cookie_secret,
        plan.backends.iter().any(|b| b.cookie.is_some()),
    ) {
        (Some(s), _) => Some(s.clone()),
        (None, true) => Some(random_secret()?),
        (None, false) => None,
    };
    let origin_name = origin.display().to_string();
    let yaml = emit::yaml(&plan, format, &origin_name, secret.as_deref());
    crate::config::parse(&yaml, Path::new("<imported>"))
        .map_err(|e| ImportError::Invalid(e.to_string()))?;
    let mut dropped = plan.dropped;
    dropped.sort_by_key(|d| (d.at.line, d.at.column));
    Ok(Imported {
        format,
        yaml,
        dropped,
    })
}

/// 32 random bytes, hex: a cookie secret nobody has seen.
fn random_secret() -> Result<String, ImportError> {
    let mut bytes = [0u8; 32];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| ImportError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Applies `--rewrite`s; one that matches nothing is an error (a typo would otherwise
/// leave the old address in place unnoticed).
fn rewrite(plan: &mut Plan, rewrites: &[(String, String)]) -> Result<(), ImportError> {
    for (from, to) in rewrites {
        let mut used = false;
        let mut swap = |s: &mut String| {
            if s == from {
                *s = to.clone();
                used = true;
            }
        };
        for l in &mut plan.listeners {
            swap(&mut l.bind);
            for (cert, key) in &mut l.tls {
                swap(cert);
                swap(key);
            }
        }
        for r in &mut plan.routes {
            if let Some(h) = &mut r.host {
                swap(h);
            }
        }
        for b in &mut plan.backends {
            for s in &mut b.servers {
                swap(&mut s.addr);
            }
            if let Some(d) = &mut b.discover {
                swap(d);
            }
        }
        if !used {
            return Err(ImportError::UnusedRewrite {
                from: from.clone(),
                to: to.clone(),
                known: known_names(plan).join(", "),
            });
        }
    }
    // A redirect follows its TLS listener's port when that was rewritten.
    let tls_port = plan
        .listeners
        .iter()
        .find(|l| !l.tls.is_empty())
        .and_then(|l| l.bind.rsplit_once(':'))
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .filter(|p| *p != 0);
    for l in &mut plan.listeners {
        if l.redirect_https.is_some() {
            if let Some(p) = tls_port {
                l.redirect_https = Some(p);
            }
        }
    }
    Ok(())
}

fn known_names(plan: &Plan) -> Vec<String> {
    let mut out = Vec::new();
    for l in &plan.listeners {
        out.push(l.bind.clone());
        for (c, k) in &l.tls {
            out.push(c.clone());
            if k != c {
                out.push(k.clone());
            }
        }
    }
    for r in &plan.routes {
        out.extend(r.host.clone());
    }
    for b in &plan.backends {
        out.extend(b.servers.iter().map(|s| s.addr.clone()));
        out.extend(b.discover.clone());
    }
    out
}

/// A name made of `[A-Za-z0-9._-]` (backend names, server ids), from anything.
pub(crate) fn ident(s: &str) -> String {
    let out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let out = out.trim_matches('-').to_owned();
    if out.is_empty() {
        "backend".to_owned()
    } else {
        out
    }
}

/// A listen/bind address as `ip:port`: `80`, `*:80`, `:80` → `0.0.0.0:80`;
/// `[::]:80` stays; `localhost:80` → `127.0.0.1:80`.
pub(crate) fn bind_addr(spec: &str) -> Option<String> {
    if let Ok(port) = spec.parse::<u16>() {
        return Some(format!("0.0.0.0:{port}"));
    }
    let (host, port) = spec.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = match host {
        "" | "*" => "0.0.0.0".to_owned(),
        "localhost" => "127.0.0.1".to_owned(),
        h if h.starts_with('[') => h.to_owned(),
        h if h.parse::<std::net::Ipv4Addr>().is_ok() => h.to_owned(),
        _ => return None,
    };
    Some(format!("{host}:{port}"))
}

/// nginx / HAProxy time values (`7d`, `5000ms`, `50s`, `1h`, bare number with a default
/// unit) as a tether duration string, and its length.
pub(crate) fn duration(spec: &str, bare_unit: &str) -> Option<(String, std::time::Duration)> {
    let text = if spec.chars().all(|c| c.is_ascii_digit()) && !spec.is_empty() {
        format!("{spec}{bare_unit}")
    } else {
        spec.to_owned()
    };
    let d = crate::config::parse_duration(&text).ok()?;
    Some((text, d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_is_guessed_from_the_content() {
        assert_eq!(
            Format::guess("upstream a {\n server x:1;\n}\n"),
            Some(Format::Nginx)
        );
        assert_eq!(
            Format::guess("backend b\n  server a x:1\n"),
            Some(Format::Haproxy)
        );
        assert_eq!(
            Format::guess("apiVersion: networking.k8s.io/v1\nkind: Ingress\n"),
            Some(Format::Ingress)
        );
        assert_eq!(Format::guess("hello"), None);
        assert_eq!(
            Format::guess("server {\n    listen 80;\n}\n"),
            Some(Format::Nginx)
        );
    }

    #[test]
    fn listen_forms_become_ip_and_port() {
        assert_eq!(bind_addr("80").as_deref(), Some("0.0.0.0:80"));
        assert_eq!(bind_addr("*:80").as_deref(), Some("0.0.0.0:80"));
        assert_eq!(bind_addr(":8443").as_deref(), Some("0.0.0.0:8443"));
        assert_eq!(bind_addr("[::]:80").as_deref(), Some("[::]:80"));
        assert_eq!(bind_addr("example.com:80"), None);
    }

    #[test]
    fn durations_take_the_formats_default_unit() {
        assert_eq!(duration("5000", "ms").unwrap().0, "5000ms");
        assert_eq!(duration("7d", "s").unwrap().1.as_secs(), 7 * 86400);
        assert!(duration("soon", "s").is_none());
    }

    #[test]
    fn a_rewrite_that_matches_nothing_is_refused() {
        let mut plan = Plan::default();
        plan.listeners.push(Listener {
            bind: "0.0.0.0:80".into(),
            ..Default::default()
        });
        let e = rewrite(&mut plan, &[("0.0.0.0:81".into(), "127.0.0.1:0".into())]).unwrap_err();
        assert!(e.to_string().contains("it has: 0.0.0.0:80"), "{e}");
        rewrite(&mut plan, &[("0.0.0.0:80".into(), "127.0.0.1:0".into())]).unwrap();
        assert_eq!(plan.listeners[0].bind, "127.0.0.1:0");
    }

    proptest::proptest! {
        /// No input makes a reader panic: arbitrary text, and text made of each
        /// format's own punctuation and keywords (more likely to reach deep paths).
        #[test]
        fn no_input_panics_any_reader(text in "\\PC{0,200}") {
            for f in [Format::Nginx, Format::Haproxy, Format::Ingress] {
                let _ = import(&text, Some(f), &Options::default(), Path::new("p"));
            }
            let _ = import(&text, None, &Options::default(), Path::new("p"));
        }

        #[test]
        fn no_directive_soup_panics_any_reader(
            words in proptest::collection::vec(
                proptest::sample::select(vec![
                    "upstream", "u", "{", "}", ";", "server", "a:1", "listen", "80", "location",
                    "/", "proxy_pass", "http://u", "ip_hash", "\n", "backend", "b", "frontend",
                    "bind", ":80", "default_backend", "cookie", "option", "httpchk", "timeout",
                    "\"", "'", "#", "kind: Ingress\n", "spec:", "rules:", "- host: x\n",
                    "check", "weight", "ssl", "crt", "=", "*:8443", "http-request", "listen",
                ]),
                0..60,
            )
        ) {
            let text = words.join(" ");
            for f in [Format::Nginx, Format::Haproxy, Format::Ingress] {
                // What is printed is always a config tether accepts.
                let r = import(&text, Some(f), &Options::default(), Path::new("p"));
                proptest::prop_assert!(!matches!(r, Err(ImportError::Invalid(_))), "{:?}: {:?}", text, r);
            }
        }
    }

    #[test]
    fn random_secrets_are_long_and_differ() {
        let a = random_secret().unwrap();
        assert_eq!(a.len(), 64);
        assert_ne!(a, random_secret().unwrap());
    }
}
