//! HAProxy: `backend` (and `listen`) sections become backends, `frontend` binds
//! listeners and `default_backend` / `use_backend` routes.

use super::tokenizer::{self, Word};
use super::{At, Backend, Health, ImportError, Listener, Plan, Route, Server};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Global,
    Defaults,
    Frontend,
    Backend,
    Listen,
    /// `userlist`, `peers`, `resolvers`, `program`, `cache`...: dropped whole.
    Other,
}

/// What `defaults` hands down to the proxies after it.
#[derive(Debug, Default, Clone)]
struct Defaults {
    connect: Option<(String, At)>,
    server: Option<(String, At)>,
    httpchk: Option<(String, At)>,
    expect: Option<u16>,
    balance: Option<(Vec<Word>, At)>,
}

/// Per-backend server defaults (`default-server`).
#[derive(Debug, Default, Clone)]
struct ServerDefaults {
    inter: Option<String>,
    rise: Option<u64>,
    fall: Option<u64>,
    maxconn: Option<u64>,
}

fn text(words: &[Word]) -> String {
    words
        .iter()
        .map(|w| w.text.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Reads an HAProxy config into a plan.
pub fn read(input: &str) -> Result<Plan, ImportError> {
    let lines = tokenizer::haproxy(input)?;
    let mut plan = Plan::default();
    let mut defaults = Defaults::default();
    let mut i = 0;
    let mut default_backend: Vec<(String, At)> = Vec::new();
    let mut backends_seen = 0;
    while i < lines.len() {
        let head = &lines[i];
        let name = head[0].text.as_str();
        let section = match name {
            "global" => Some(Kind::Global),
            "defaults" => Some(Kind::Defaults),
            "frontend" => Some(Kind::Frontend),
            "backend" => Some(Kind::Backend),
            "listen" => Some(Kind::Listen),
            "userlist" | "peers" | "resolvers" | "mailers" | "program" | "cache"
            | "http-errors" | "ring" => Some(Kind::Other),
            _ => None,
        };
        // Sections consume their lines, so a line here comes before any section.
        let Some(k) = section else {
            return Err(ImportError::syntax(head[0].at, format!("`{name}` outside any section: an HAProxy file starts with `global`, `defaults`, `frontend`, `backend` or `listen`")));
        };
        let start = i + 1;
        let mut end = start;
        while end < lines.len() && !is_section(&lines[end][0].text) {
            end += 1;
        }
        let body = &lines[start..end];
        match k {
            Kind::Global => global(&mut plan, body)?,
            Kind::Defaults => defaults = read_defaults(&mut plan, body)?,
            Kind::Frontend => frontend(&mut plan, head, body, &mut default_backend)?,
            Kind::Backend => {
                backends_seen += 1;
                backend(&mut plan, head, body, &defaults)?
            }
            Kind::Listen => {
                backends_seen += 1;
                let pname = head.get(1).map(|w| w.text.clone()).unwrap_or_default();
                let mut fe = Vec::new();
                let mut be = Vec::new();
                for l in body {
                    if matches!(l[0].text.as_str(), "bind" | "http-request" | "redirect") {
                        fe.push(l.clone());
                    } else {
                        be.push(l.clone());
                    }
                }
                frontend(&mut plan, head, &fe, &mut default_backend)?;
                backend(&mut plan, head, &be, &defaults)?;
                default_backend.push((pname, head[0].at));
            }
            Kind::Other => plan.drop(
                head[0].at,
                text(head),
                "not about proxying HTTP to Socket.IO servers",
            ),
        }
        i = end;
    }
    if backends_seen == 0 {
        return Err(ImportError::unusable(
            lines.first().map_or(At { line: 1, column: 1 }, |l| l[0].at),
            "no `backend` or `listen` section: nothing for tether to balance",
        ));
    }
    for (name, at) in default_backend {
        let backend = super::ident(&name);
        if !plan.backends.iter().any(|b| b.name == backend) {
            return Err(ImportError::unusable(
                at,
                format!("backend {name} is named but not defined"),
            ));
        }
        if !plan
            .routes
            .iter()
            .any(|r| r.backend == backend && r.path_prefix == "/")
        {
            plan.routes.push(Route {
                host: None,
                path_prefix: "/".into(),
                backend,
                comment: format!("line {}: default_backend {name}", at.line),
            });
        }
    }
    if plan.listeners.is_empty() {
        return Err(ImportError::unusable(
            lines.first().map_or(At { line: 1, column: 1 }, |l| l[0].at),
            "no `bind` in any frontend or listen section: tether needs an address to listen on",
        ));
    }
    if plan.backends.len() == 1 {
        plan.routes.clear();
    }
    Ok(plan)
}

fn is_section(word: &str) -> bool {
    matches!(
        word,
        "global"
            | "defaults"
            | "frontend"
            | "backend"
            | "listen"
            | "userlist"
            | "peers"
            | "resolvers"
            | "mailers"
            | "program"
            | "cache"
            | "http-errors"
            | "ring"
    )
}

fn unknown(w: &Word, section: &str) -> ImportError {
    ImportError::unknown(w.at, &w.text, format!(" in a `{section}` section"))
}

fn global(plan: &mut Plan, body: &[Vec<Word>]) -> Result<(), ImportError> {
    for l in body {
        let d = &l[0];
        match d.text.as_str() {
            "maxconn" => match l.get(1).and_then(|w| w.text.parse::<u64>().ok()).filter(|n| *n > 0) {
                Some(n) => plan.max_connections = Some((n, format!("line {}: maxconn {n}", d.at.line))),
                None => return Err(ImportError::unusable(d.at, "`maxconn` needs a positive number")),
            },
            "daemon" | "log" | "user" | "group" | "chroot" | "pidfile" | "stats" | "nbthread" | "nbproc" | "cpu-map" | "master-worker" | "log-send-hostname" | "ca-base" | "crt-base" | "server-state-file" | "node" | "description" | "uid" | "gid" | "quiet" | "ulimit-n" | "hard-stop-after" => {
                plan.drop(d.at, text(l), "process management and logging are the service manager's and tether's own (`access_log`, the admin API)")
            }
            t if t.starts_with("ssl-default-") || t.starts_with("ssl-") => plan.drop(d.at, text(l), "tether uses rustls' safe defaults: TLS 1.2 and 1.3, modern ciphers only"),
            t if t.starts_with("tune.") => plan.drop(d.at, text(l), "tether has no such tuning knob"),
            _ => return Err(unknown(d, "global")),
        }
    }
    Ok(())
}

fn read_defaults(plan: &mut Plan, body: &[Vec<Word>]) -> Result<Defaults, ImportError> {
    let mut out = Defaults::default();
    for l in body {
        let d = &l[0];
        match d.text.as_str() {
            "mode" => mode(plan, l),
            "timeout" => timeout(plan, l, &mut out)?,
            "balance" => out.balance = Some((l.clone(), d.at)),
            "option" if l.get(1).is_some_and(|w| w.text == "httpchk") => {
                out.httpchk = Some((httpchk_path(l), d.at));
            }
            "http-check" => out.expect = expect_status(l).or(out.expect),
            _ => common(plan, l, "defaults")?,
        }
    }
    Ok(out)
}

fn mode(plan: &mut Plan, l: &[Word]) {
    if l.get(1).map(|w| w.text.as_str()) != Some("http") {
        plan.drop(
            l[0].at,
            text(l),
            "tether proxies HTTP (and WebSockets in it), never raw TCP",
        );
    } else {
        plan.built_in(l[0].at, text(l), "tether is an HTTP proxy");
    }
}

fn timeout(plan: &mut Plan, l: &[Word], d: &mut Defaults) -> Result<(), ImportError> {
    let which = l.get(1).map(|w| w.text.as_str()).unwrap_or("");
    let Some(value) = l.get(2) else {
        return Err(ImportError::syntax(
            l[0].at,
            "`timeout` needs a name and a value",
        ));
    };
    let Some((spec, dur)) = super::duration(&value.text, "ms") else {
        return Err(ImportError::unusable(
            value.at,
            format!("{:?} is not a time HAProxy would take", value.text),
        ));
    };
    let at = l[0].at;
    match which {
        "connect" => d.connect = Some((spec, at)),
        "server" => {
            if dur.as_secs() >= 30 {
                d.server = Some((spec, at));
            } else {
                plan.drop(at, text(l), "tether holds a long poll up to `timeouts.response` (default 60s): under 30 s it would cut polls Engine.IO holds for pingInterval (25 s); kept at the default");
            }
        }
        "client" => plan.drop(at, text(l), "tether's client-side limits are `limits.header_read_timeout` / `body_read_timeout`, and a WebSocket's idle limit comes from the session's heartbeat; an idle timeout on the client side would cut long polls"),
        "tunnel" => plan.drop(at, text(l), "tether derives a WebSocket's idle limit from the session's heartbeat (pingInterval + pingTimeout: `timeouts.tunnel_idle: auto`); a fixed one would only keep dead tunnels open"),
        "http-request" => plan.drop(at, text(l), "tether's `limits.header_read_timeout` (default 10s) bounds the request head"),
        "http-keep-alive" | "client-fin" | "server-fin" | "queue" | "check" | "tarpit" => plan.drop(at, text(l), "tether has no such timeout; its own keep-alive and queueing need none"),
        _ => return Err(ImportError::unknown(l.get(1).map_or(at, |w| w.at), &format!("timeout {which}"), "")),
    }
    Ok(())
}

fn httpchk_path(l: &[Word]) -> String {
    // `option httpchk`, `option httpchk /p`, `option httpchk GET /p [HTTP/1.1]`.
    match l.len() {
        0..=2 => "/".into(),
        3 => l[2].text.clone(),
        _ => l[3].text.clone(),
    }
}

fn expect_status(l: &[Word]) -> Option<u16> {
    match l
        .iter()
        .map(|w| w.text.as_str())
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["http-check", "expect", "status", code] => code.parse().ok(),
        _ => None,
    }
}

/// Lines any proxy section may hold, known and dropped.
fn common(plan: &mut Plan, l: &[Word], section: &str) -> Result<(), ImportError> {
    let d = &l[0];
    let second = l.get(1).map(|w| w.text.as_str()).unwrap_or("");
    match (d.text.as_str(), second) {
        ("option", "forwardfor") => plan.built_in(d.at, text(l), "tether sets X-Forwarded-For (and X-Real-IP, X-Forwarded-Proto, X-Forwarded-Host) itself"),
        ("option", "http-server-close" | "httpclose" | "http-keep-alive" | "forceclose" | "http-pretend-keepalive" | "http-no-delay") => plan.drop(d.at, text(l), "tether keeps its own keep-alive pool to each server; connection handling needs no setting"),
        ("option", "httplog" | "tcplog" | "dontlognull" | "log-health-checks" | "logasap" | "dontlog-normal") => plan.drop(d.at, text(l), "logging: tether's is `access_log`"),
        ("option", "redispatch" | "abortonclose") => plan.drop(d.at, text(l), "tether re-places a new session on another server when its own cannot be reached, and never moves a live one"),
        ("option", _) => return Err(ImportError::unknown(l.get(1).map_or(d.at, |w| w.at), &format!("option {second}"), format!(" in a `{section}` section"))),
        ("log" | "retries" | "maxconn" | "errorfile" | "compression" | "monitor-uri" | "stats" | "capture" | "unique-id-format" | "unique-id-header" | "log-format" | "http-reuse" | "http-response" | "fullconn", _) => plan.drop(d.at, text(l), "not translated: no tether setting does this (limits are `limits`, logging `access_log`)"),
        ("acl", _) | ("use_backend", _) => plan.drop(d.at, text(l), "conditional routing is not translated: write a `routes` entry (host, path_prefix) by hand"),
        ("http-request", _) => plan.drop(d.at, text(l), "tether rewrites no requests"),
        _ => return Err(unknown(d, section)),
    }
    Ok(())
}

fn frontend(
    plan: &mut Plan,
    head: &[Word],
    body: &[Vec<Word>],
    default_backend: &mut Vec<(String, At)>,
) -> Result<(), ImportError> {
    let mut redirect = None;
    let mut plain = Vec::new();
    let mut tls_port = None;
    for l in body {
        let d = &l[0];
        match d.text.as_str() {
            "bind" => {
                let Some(spec) = l.get(1) else {
                    return Err(ImportError::syntax(d.at, "`bind` needs an address"));
                };
                let Some(bind) = super::bind_addr(&spec.text) else {
                    return Err(ImportError::unusable(
                        spec.at,
                        format!(
                            "bind {}: tether binds an IP address and port (e.g. 0.0.0.0:80)",
                            spec.text
                        ),
                    ));
                };
                if plan.listeners.iter().any(|l| l.bind == bind) {
                    return Err(ImportError::unusable(
                        spec.at,
                        format!(
                            "bind {}: this address is bound by an earlier `bind` already",
                            spec.text
                        ),
                    ));
                }
                let mut listener = Listener {
                    bind: bind.clone(),
                    comment: format!("line {}: bind {}", d.at.line, spec.text),
                    ..Default::default()
                };
                let mut k = 2;
                let mut ssl = false;
                while k < l.len() {
                    let w = &l[k];
                    match w.text.as_str() {
                        "ssl" => ssl = true,
                        "crt" => {
                            if let Some(f) = l.get(k + 1) {
                                listener.tls.push((f.text.clone(), f.text.clone()));
                                k += 1;
                            }
                        }
                        "alpn" => {
                            plan.built_in(
                                w.at,
                                format!(
                                    "bind {} alpn {}",
                                    spec.text,
                                    l.get(k + 1).map_or("", |x| x.text.as_str())
                                ),
                                "tether's TLS listeners offer h2 and http/1.1",
                            );
                            k += 1;
                        }
                        other => plan.drop(
                            w.at,
                            format!("bind {} {other}", spec.text),
                            "not a listener option tether has",
                        ),
                    }
                    k += 1;
                }
                if ssl && listener.tls.is_empty() {
                    return Err(ImportError::unusable(d.at, "`bind ... ssl` without `crt`"));
                }
                if !ssl {
                    listener.tls.clear();
                    plain.push(plan.listeners.len());
                } else {
                    tls_port = bind
                        .rsplit_once(':')
                        .and_then(|(_, p)| p.parse::<u16>().ok());
                }
                plan.listeners.push(listener);
            }
            "default_backend" => match l.get(1) {
                Some(n) => default_backend.push((n.text.clone(), d.at)),
                None => return Err(ImportError::syntax(d.at, "`default_backend` needs a name")),
            },
            "http-request" | "redirect" if text(l).contains("scheme https") => {
                redirect = Some(d.at)
            }
            "mode" => mode(plan, l),
            "timeout" => {
                let mut ignore = Defaults::default();
                timeout(plan, l, &mut ignore)?;
                if let Some((_, at)) = ignore.connect.or(ignore.server) {
                    plan.drop(
                        at,
                        text(l),
                        "a server-side timeout in a frontend does nothing",
                    );
                }
            }
            _ => common(plan, l, head[0].text.as_str())?,
        }
    }
    if let Some(at) = redirect {
        match tls_port {
            Some(port) => {
                for i in plain {
                    plan.listeners[i].redirect_https = Some(port);
                    plan.listeners[i]
                        .comment
                        .push_str(&format!("; line {}: redirect to https", at.line));
                }
            }
            None => plan.drop(
                at,
                "redirect scheme https",
                "no TLS bind in this frontend to redirect to",
            ),
        }
    }
    Ok(())
}

fn backend(
    plan: &mut Plan,
    head: &[Word],
    body: &[Vec<Word>],
    defaults: &Defaults,
) -> Result<(), ImportError> {
    let Some(name) = head.get(1) else {
        return Err(ImportError::syntax(
            head[0].at,
            format!("`{}` needs a name", head[0].text),
        ));
    };
    let mut b = Backend {
        name: super::ident(&name.text),
        comment: format!("line {}: {} {}", head[0].at.line, head[0].text, name.text),
        ..Default::default()
    };
    let mut local = defaults.clone();
    let mut sd = ServerDefaults::default();
    let mut checked = false;
    let mut hash_type = None;
    for l in body {
        let d = &l[0];
        match d.text.as_str() {
            "balance" => local.balance = Some((l.clone(), d.at)),
            "hash-type" => hash_type = Some(l.clone()),
            "option" if l.get(1).is_some_and(|w| w.text == "httpchk") => {
                local.httpchk = Some((httpchk_path(l), d.at))
            }
            "http-check" => match expect_status(l) {
                Some(s) => local.expect = Some(s),
                None => plan.drop(
                    d.at,
                    text(l),
                    "tether's health check expects one status code (`health.expect_status`)",
                ),
            },
            "mode" => mode(plan, l),
            "timeout" => timeout(plan, l, &mut local)?,
            "cookie" => {
                let Some(cname) = l.get(1) else {
                    return Err(ImportError::syntax(d.at, "`cookie` needs a name"));
                };
                b.cookie = Some(cname.text.clone());
                b.notes.push(format!("line {}: {} → tether's signed cookie: it names the server by an HMAC-signed id, so\nclients cannot pick a server by writing the cookie; per-server `cookie` values are not needed.", d.at.line, text(l)));
                let rest: Vec<&Word> = l[2..].iter().filter(|w| w.text != "insert").collect();
                if !rest.is_empty() {
                    plan.drop(rest[0].at, format!("cookie {} {}", cname.text, rest.iter().map(|w| w.text.as_str()).collect::<Vec<_>>().join(" ")), "tether always inserts its own cookie, never forwards it to the server (as `indirect`) and sends it only when it changes; caches must not store Engine.IO responses anyway (as `nocache`)");
                }
            }
            "default-server" => {
                let mut k = 1;
                while k < l.len() {
                    let w = &l[k];
                    let v = l.get(k + 1).map(|x| x.text.clone());
                    match w.text.as_str() {
                        "inter" => {
                            sd.inter = v.and_then(|v| super::duration(&v, "ms")).map(|x| x.0)
                        }
                        "rise" => sd.rise = v.and_then(|v| v.parse().ok()),
                        "fall" => sd.fall = v.and_then(|v| v.parse().ok()),
                        "maxconn" => sd.maxconn = v.and_then(|v| v.parse().ok()).filter(|n| *n > 0),
                        "check" => {
                            checked = true;
                            k += 1;
                            continue;
                        }
                        other => {
                            plan.drop(
                                w.at,
                                format!("default-server {other}"),
                                "not a server setting tether has",
                            );
                        }
                    }
                    k += 2;
                }
            }
            "server" => {
                let (Some(sname), Some(addr)) = (l.get(1), l.get(2)) else {
                    return Err(ImportError::syntax(
                        d.at,
                        "`server` needs a name and an address",
                    ));
                };
                let mut s = Server {
                    id: super::ident(&sname.text),
                    addr: server_addr(&addr.text, addr.at)?,
                    comment: format!("line {}: server {}", d.at.line, sname.text),
                    max_connections: sd.maxconn,
                    ..Default::default()
                };
                let mut k = 3;
                while k < l.len() {
                    let w = &l[k];
                    let v = l.get(k + 1);
                    match w.text.as_str() {
                        "check" => { checked = true; k += 1; continue; }
                        "weight" => s.weight = v.and_then(|v| v.text.parse().ok()).filter(|w: &u64| (1..=1000).contains(w)),
                        "maxconn" => s.max_connections = v.and_then(|v| v.text.parse().ok()).filter(|n: &u64| *n > 0),
                        "cookie" => plan.drop(w.at, format!("server {} cookie {}", sname.text, v.map_or("", |v| v.text.as_str())), "tether's cookie carries the server's signed id; no per-server value is needed"),
                        "disabled" => { s.state_draining = true; k += 1; continue; }
                        "inter" | "rise" | "fall" => plan.drop(w.at, format!("server {} {}", sname.text, w.text), "health settings are per backend in tether (`health`); the backend's are used"),
                        "backup" => { plan.drop(w.at, format!("server {} backup", sname.text), "tether has no backup servers: every ready server takes new sessions (kept as a normal server)"); k += 1; continue; }
                        other => { plan.drop(w.at, format!("server {} {other}", sname.text), "not a server setting tether has"); k += 1; continue; }
                    }
                    k += 2;
                }
                b.servers.push(s);
            }
            _ => common(plan, l, head[0].text.as_str())?,
        }
    }
    if b.servers.is_empty() {
        return Err(ImportError::unusable(
            head[0].at,
            format!(
                "{} {} has no `server` lines: tether needs at least one",
                head[0].text, name.text
            ),
        ));
    }
    if let Some((l, at)) = &local.balance {
        let algo = l.get(1).map(|w| w.text.as_str()).unwrap_or("");
        match algo {
            "source" => {
                plan.drop(*at, text(l), "replaced by sid learning + least sessions: tether keeps each session on its node by the sid it learns from the handshake, so clients behind one NAT are spread; `placement: hash` is offered in a comment for those who want it");
                b.notes.push(format!("balance source (line {}): tether learns each session's node from its handshake and places new\nsessions on the node with the fewest. To hash client IPs as `balance source` did, uncomment:\nplacement: hash", at.line));
            }
            "leastconn" => plan.built_in(*at, text(l), "tether places new sessions by least live sessions (the default `placement: least_sessions`)"),
            "roundrobin" | "static-rr" | "first" | "random" => plan.drop(*at, text(l), "tether places new sessions by least live sessions, and keeps them by sid; its own `balance: round_robin` would drop stickiness and break polling"),
            _ => {
                plan.drop(*at, text(l), "replaced by sid learning + least sessions; `placement: hash` with a `hash_key` is offered in a comment");
                b.notes.push(format!("{} (line {}): to place new sessions by a consistent hash instead, uncomment:\nplacement: hash\nhash_key: {{ header: NAME }}  # or client_ip, {{ query: NAME }}, {{ cookie: NAME }}", text(l), at.line));
            }
        }
    }
    if let Some(h) = hash_type {
        plan.drop(
            h[0].at,
            text(&h),
            "tether's `placement: hash` is always a consistent hash with bounded load",
        );
    }
    if let Some((spec, at)) = &local.connect {
        b.connect_timeout = Some(spec.clone());
        b.comment
            .push_str(&format!("; timeouts from line {}", at.line));
    }
    if let Some((spec, _)) = &local.server {
        b.response_timeout = Some(spec.clone());
    }
    if checked || local.httpchk.is_some() {
        b.health = Some(Health {
            path: local.httpchk.as_ref().map(|(p, _)| p.clone()),
            expect_status: local.expect.filter(|_| local.httpchk.is_some()),
            interval: sd.inter.clone(),
            timeout: None,
            rise: sd.rise,
            fall: sd.fall,
            comment: match &local.httpchk {
                Some((p, at)) => format!("line {}: option httpchk {p}", at.line),
                None => "`check` on the servers: a TCP connect check".into(),
            },
        });
    }
    plan.backends.push(b);
    Ok(())
}

fn server_addr(spec: &str, at: At) -> Result<String, ImportError> {
    let ok = match spec.rsplit_once(':') {
        Some((h, p)) => !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    };
    if !ok || spec.contains('/') {
        return Err(ImportError::unusable(
            at,
            format!("server address {spec:?}: tether needs host:port"),
        ));
    }
    Ok(spec.strip_prefix("*").unwrap_or(spec).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_without_servers_is_refused_at_its_header() {
        let e =
            read("frontend f\n  bind :80\n  default_backend b\n\nbackend b\n  balance source\n")
                .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("5:1: backend b has no `server` lines"),
            "{e}"
        );
    }

    #[test]
    fn an_unknown_keyword_is_refused_with_its_place() {
        let e = read("backend b\n  server a h:1\n  stick-magic on\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("3:3: unknown directive `stick-magic`"),
            "{e}"
        );
    }

    #[test]
    fn servers_health_and_weight_carry_over() {
        let plan = read("frontend f\n bind *:80\n default_backend b\nbackend b\n option httpchk GET /h\n default-server inter 3s fall 4\n server a 10.0.0.1:1 check weight 2\n").unwrap();
        let b = &plan.backends[0];
        assert_eq!(b.servers[0].weight, Some(2));
        let h = b.health.as_ref().unwrap();
        assert_eq!(h.path.as_deref(), Some("/h"));
        assert_eq!(h.interval.as_deref(), Some("3s"));
        assert_eq!(h.fall, Some(4));
    }

    #[test]
    fn an_address_bound_twice_is_refused_at_the_second_bind() {
        let e = read("frontend a\n bind :80\n default_backend b\nfrontend c\n bind *:80\nbackend b\n server s h:1\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("5:7: bind *:80: this address is bound"),
            "{e}"
        );
    }

    #[test]
    fn lines_outside_sections_are_refused() {
        let e = read("maxconn 10\n").unwrap_err();
        assert!(e.to_string().starts_with("1:1:"), "{e}");
    }
}
