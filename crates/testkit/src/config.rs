//! A builder for tether's YAML config, so tests say what differs from a plain config
//! instead of concatenating YAML by hand.
//!
//! ```
//! use tether_testkit::ConfigBuilder;
//! let yaml = ConfigBuilder::new()
//!     .admin()
//!     .backend("sockets")
//!     .with("balance: round_robin")
//!     .server("node-1", "127.0.0.1:3001")
//!     .build();
//! assert!(yaml.contains("  sockets:\n    balance: round_robin\n    servers:\n"));
//! ```

use std::fmt::Display;

/// One listener on a free loopback port unless [`ConfigBuilder::listeners`] or
/// [`ConfigBuilder::listener`] says otherwise.
#[derive(Debug, Clone, Default)]
pub struct ConfigBuilder {
    listeners: Vec<String>,
    admin: Option<String>,
    top: Vec<String>,
    routes: Vec<String>,
    backends: Vec<Backend>,
}

#[derive(Debug, Clone)]
struct Backend {
    name: String,
    lines: Vec<String>,
    servers: Vec<String>,
}

impl ConfigBuilder {
    pub fn new() -> ConfigBuilder {
        ConfigBuilder::default()
    }

    /// Plain listeners on these binds (replacing the default one).
    pub fn listeners(mut self, binds: &[&str]) -> ConfigBuilder {
        self.listeners
            .extend(binds.iter().map(|b| format!("  - bind: \"{b}\"\n")));
        self
    }

    /// A listener given as the YAML of its list entry, after `  - ` (continuation lines
    /// indented by four spaces), e.g. `bind: "127.0.0.1:0"\n    redirect_https: 443`.
    pub fn listener(mut self, entry: &str) -> ConfigBuilder {
        self.listeners.push(format!("  - {}\n", entry.trim_end()));
        self
    }

    /// A TLS listener on a free loopback port serving one certificate.
    pub fn tls_listener(self, cert: impl Display, key: impl Display) -> ConfigBuilder {
        self.listener(&format!(
            "bind: \"127.0.0.1:0\"\n    tls:\n      certificates:\n        - {{ cert: \"{cert}\", key: \"{key}\" }}"
        ))
    }

    /// An admin listener on a free loopback port.
    pub fn admin(self) -> ConfigBuilder {
        self.admin_yaml("bind: \"127.0.0.1:0\"")
    }

    /// An admin section given as its body (lines indented by two spaces after the first).
    pub fn admin_yaml(mut self, body: &str) -> ConfigBuilder {
        self.admin = Some(format!("admin:\n  {body}\n"));
        self
    }

    /// Top-level YAML spliced in as given (e.g. `limits: { ... }`).
    pub fn top(mut self, yaml: &str) -> ConfigBuilder {
        self.top.push(format!("{}\n", yaml.trim_end()));
        self
    }

    /// A route, as the inline map of its list entry: `{ host: a.test, backend: a }`.
    pub fn route(mut self, entry: &str) -> ConfigBuilder {
        self.routes.push(format!("  - {entry}\n"));
        self
    }

    /// Starts a backend; [`with`](Self::with) and [`server`](Self::server) apply to the
    /// last one started.
    pub fn backend(mut self, name: &str) -> ConfigBuilder {
        self.backends.push(Backend {
            name: name.to_owned(),
            lines: Vec::new(),
            servers: Vec::new(),
        });
        self
    }

    /// Keys of the current backend, one per line, as they would stand under it.
    pub fn with(mut self, yaml: &str) -> ConfigBuilder {
        let b = self.current();
        b.lines.extend(
            yaml.lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| format!("    {l}\n")),
        );
        self
    }

    /// A server of the current backend.
    pub fn server(self, id: &str, addr: impl Display) -> ConfigBuilder {
        self.server_with(id, addr, "")
    }

    /// A server of the current backend with more keys (`weight: 2, state: draining`).
    pub fn server_with(mut self, id: &str, addr: impl Display, extra: &str) -> ConfigBuilder {
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!(", {extra}")
        };
        self.current()
            .servers
            .push(format!("      - {{ id: {id}, addr: \"{addr}\"{extra} }}\n"));
        self
    }

    fn current(&mut self) -> &mut Backend {
        self.backends
            .last_mut()
            .expect("call .backend(name) before adding to a backend")
    }

    pub fn build(&self) -> String {
        let mut yaml = String::from("listeners:\n");
        if self.listeners.is_empty() {
            yaml.push_str("  - bind: \"127.0.0.1:0\"\n");
        }
        self.listeners.iter().for_each(|l| yaml.push_str(l));
        if let Some(a) = &self.admin {
            yaml.push_str(a);
        }
        self.top.iter().for_each(|t| yaml.push_str(t));
        if !self.routes.is_empty() {
            yaml.push_str("routes:\n");
            self.routes.iter().for_each(|r| yaml.push_str(r));
        }
        yaml.push_str("backends:\n");
        for b in &self.backends {
            yaml.push_str(&format!("  {}:\n", b.name));
            b.lines.iter().for_each(|l| yaml.push_str(l));
            if !b.servers.is_empty() {
                yaml.push_str("    servers:\n");
                b.servers.iter().for_each(|s| yaml.push_str(s));
            }
        }
        yaml
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_the_yaml_a_test_would_write_by_hand() {
        let yaml = ConfigBuilder::new()
            .listeners(&["127.0.0.1:0", "127.0.0.2:0"])
            .admin()
            .top("limits: { max_header_bytes: 1024 }")
            .route("{ path_prefix: /socket.io/, backend: a }")
            .backend("a")
            .with("health: { path: /health }\nbalance: round_robin")
            .server("n1", "127.0.0.1:3001")
            .server_with("n2", "127.0.0.1:3002", "weight: 2")
            .backend("b")
            .with("discover: { dns: \"localhost:3001\" }")
            .build();
        assert_eq!(
            yaml,
            "listeners:\n  - bind: \"127.0.0.1:0\"\n  - bind: \"127.0.0.2:0\"\n\
             admin:\n  bind: \"127.0.0.1:0\"\n\
             limits: { max_header_bytes: 1024 }\n\
             routes:\n  - { path_prefix: /socket.io/, backend: a }\n\
             backends:\n  a:\n    health: { path: /health }\n    balance: round_robin\n    servers:\n\
             \x20     - { id: n1, addr: \"127.0.0.1:3001\" }\n\
             \x20     - { id: n2, addr: \"127.0.0.1:3002\", weight: 2 }\n\
             \x20 b:\n    discover: { dns: \"localhost:3001\" }\n"
        );
    }
}
