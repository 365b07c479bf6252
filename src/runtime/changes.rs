//! What a reload changed, said in one line: an operator who saved the file (or whose
//! deploy tool did) reads in the log whether tether saw what they meant, without
//! comparing `/status` before and after.

use crate::config::{BackendConfig, Config, ServerConfig};

/// A server's weight or state as the file gives it, changed by a reload: logged like an
/// admin API change of the same server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerChange {
    pub backend: String,
    pub server: String,
    pub what: &'static str,
    pub from: String,
    pub to: String,
}

/// What differs between the config in force and a new one.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// One phrase per kind of change, in file order.
    pub parts: Vec<String>,
    /// Weights and states the file changed.
    pub servers: Vec<ServerChange>,
}

impl std::fmt::Display for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.parts.is_empty() {
            // Equal configs are not reloaded at all; this is a change summary cannot name
            // (a field it does not know yet).
            return f.write_str("settings changed");
        }
        f.write_str(&self.parts.join("; "))
    }
}

/// Added, removed and changed names of one kind, as phrases.
fn listed(
    parts: &mut Vec<String>,
    kind: &str,
    added: &[String],
    removed: &[String],
    changed: &[String],
) {
    for (list, how) in [(added, "added"), (removed, "removed"), (changed, "changed")] {
        if !list.is_empty() {
            parts.push(format!("{kind} {how}: {}", list.join(", ")));
        }
    }
}

/// What `new` changes of `old`.
pub fn between(old: &Config, new: &Config) -> Changes {
    let mut c = Changes::default();

    let bind = |l: &crate::config::ListenerConfig| l.bind.to_string();
    let added: Vec<String> = new
        .listeners
        .iter()
        .filter(|n| !old.listeners.iter().any(|o| o.bind == n.bind))
        .map(bind)
        .collect();
    let removed: Vec<String> = old
        .listeners
        .iter()
        .filter(|o| !new.listeners.iter().any(|n| n.bind == o.bind))
        .map(bind)
        .collect();
    let changed: Vec<String> = new
        .listeners
        .iter()
        .filter(|n| old.listeners.iter().any(|o| o.bind == n.bind && o != *n))
        .map(bind)
        .collect();
    listed(&mut c.parts, "listeners", &added, &removed, &changed);
    if old.admin != new.admin {
        c.parts.push("admin API changed".to_owned());
    }
    for (differs, what) in [
        (
            old.trusted_proxies != new.trusted_proxies,
            "trusted_proxies",
        ),
        (old.limits != new.limits, "limits"),
        (old.shutdown_grace != new.shutdown_grace, "shutdown_grace"),
    ] {
        if differs {
            c.parts.push(format!("{what} changed"));
        }
    }
    if old.routes != new.routes {
        c.parts.push(format!(
            "routes changed ({} → {})",
            old.routes.len(),
            new.routes.len()
        ));
    }

    let named = |list: &[BackendConfig], name: &str| list.iter().find(|b| b.name == name).cloned();
    let added: Vec<String> = new
        .backends
        .iter()
        .filter(|n| named(&old.backends, &n.name).is_none())
        .map(|b| b.name.clone())
        .collect();
    let removed: Vec<String> = old
        .backends
        .iter()
        .filter(|o| named(&new.backends, &o.name).is_none())
        .map(|b| b.name.clone())
        .collect();
    let mut changed = Vec::new();
    let mut servers = (Vec::new(), Vec::new(), Vec::new());
    for n in &new.backends {
        let Some(o) = named(&old.backends, &n.name) else {
            continue;
        };
        if let Some(fields) = settings_changed(&o, n) {
            changed.push(format!("{} ({fields})", n.name));
        }
        compare_servers(
            &n.name,
            &o.servers,
            &n.servers,
            &mut servers,
            &mut c.servers,
        );
    }
    listed(&mut c.parts, "backends", &added, &removed, &changed);
    listed(&mut c.parts, "servers", &servers.0, &servers.1, &servers.2);
    for s in &c.servers {
        c.parts.push(format!(
            "{}/{} {} {} → {}",
            s.backend, s.server, s.what, s.from, s.to
        ));
    }
    c
}

/// Which settings of a backend other than its servers differ, if any.
fn settings_changed(old: &BackendConfig, new: &BackendConfig) -> Option<String> {
    let mut fields = Vec::new();
    macro_rules! compare {
        ($($field:ident),*) => {$(
            if old.$field != new.$field {
                fields.push(stringify!($field));
            }
        )*};
    }
    compare!(
        balance,
        placement,
        hash_key,
        load_factor,
        cookie,
        sessions,
        timeouts,
        health,
        max_connections,
        handshakes,
        slow_start,
        discover,
        tls,
        proxy_protocol
    );
    let rest_differs = {
        let strip = |b: &BackendConfig| BackendConfig {
            servers: Vec::new(),
            ..b.clone()
        };
        strip(old) != strip(new)
    };
    match (fields.is_empty(), rest_differs) {
        (false, _) => Some(fields.join(", ")),
        // A setting this list does not name yet.
        (true, true) => Some("settings".to_owned()),
        (true, false) => None,
    }
}

/// Servers added, removed and changed (address, max_connections) by id, as
/// `backend/id`; weight and state changes go to `moved`.
fn compare_servers(
    backend: &str,
    old: &[ServerConfig],
    new: &[ServerConfig],
    (added, removed, changed): &mut (Vec<String>, Vec<String>, Vec<String>),
    moved: &mut Vec<ServerChange>,
) {
    let name = |s: &ServerConfig| format!("{backend}/{}", s.id);
    for n in new {
        let Some(o) = old.iter().find(|o| o.id == n.id) else {
            added.push(name(n));
            continue;
        };
        if o.addr != n.addr || o.max_connections != n.max_connections {
            changed.push(name(n));
        }
        let change = |what, from: String, to: String| ServerChange {
            backend: backend.to_owned(),
            server: n.id.clone(),
            what,
            from,
            to,
        };
        if o.weight != n.weight {
            moved.push(change("weight", o.weight.to_string(), n.weight.to_string()));
        }
        if o.state != n.state {
            moved.push(change(
                "state",
                o.state.as_str().to_owned(),
                n.state.as_str().to_owned(),
            ));
        }
    }
    removed.extend(
        old.iter()
            .filter(|o| !new.iter().any(|n| n.id == o.id))
            .map(name),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra_listener: bool, servers: &str) -> Config {
        let listeners = if extra_listener {
            "  - bind: 127.0.0.1:0\n  - bind: 127.0.0.1:9\n"
        } else {
            "  - bind: 127.0.0.1:0\n"
        };
        let yaml = format!("listeners:\n{listeners}backends:\n  chat:\n    servers:\n{servers}");
        crate::config::parse(&yaml, std::path::Path::new("t.yaml")).unwrap()
    }

    #[test]
    fn a_reload_says_what_it_added_removed_and_changed() {
        let old = config(
            false,
            "      - { id: a, addr: \"127.0.0.1:1\" }\n      - { id: b, addr: \"127.0.0.1:2\" }\n",
        );
        let new = config(
            true,
            "      - { id: a, addr: \"127.0.0.1:1\", weight: 3, state: draining }\n      - { id: c, addr: \"127.0.0.1:3\" }\n",
        );
        let changes = between(&old, &new);
        assert_eq!(
            changes.to_string(),
            "listeners added: 127.0.0.1:9; servers added: chat/c; servers removed: chat/b; chat/a weight 1 → 3; chat/a state ready → draining"
        );
        assert_eq!(changes.servers.len(), 2);
        assert_eq!(between(&new, &new), Changes::default());
    }

    #[test]
    fn a_backend_s_own_settings_are_named() {
        let old = config(false, "      - { id: a, addr: \"127.0.0.1:1\" }\n");
        let mut new = old.clone();
        new.backends[0].max_connections = Some(5);
        new.shutdown_grace = std::time::Duration::from_secs(1);
        assert_eq!(
            between(&old, &new).to_string(),
            "shutdown_grace changed; backends changed: chat (max_connections)"
        );
    }
}
