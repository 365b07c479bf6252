//! nginx: `upstream` blocks become backends, `server { listen; location { proxy_pass } }`
//! listeners and routes.

use super::tokenizer::{self, Token, Word};
use super::{At, Backend, ImportError, Listener, Plan, Route, Server};

/// One directive: its name, arguments and block (if it has one).
#[derive(Debug)]
pub struct Directive {
    pub name: Word,
    pub args: Vec<Word>,
    pub block: Option<Vec<Directive>>,
}

impl Directive {
    fn at(&self) -> At {
        self.name.at
    }
    fn text(&self) -> String {
        let mut s = self.name.text.clone();
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.text);
        }
        s
    }
    fn arg(&self, i: usize) -> Option<&str> {
        self.args.get(i).map(|w| w.text.as_str())
    }
}

/// The directive tree of an nginx file.
pub fn parse(text: &str) -> Result<Vec<Directive>, ImportError> {
    let tokens = tokenizer::nginx(text)?;
    let mut it = tokens.into_iter().peekable();
    let list = block(&mut it, None)?;
    Ok(list)
}

fn block(
    it: &mut std::iter::Peekable<std::vec::IntoIter<Token>>,
    opened: Option<At>,
) -> Result<Vec<Directive>, ImportError> {
    let mut out = Vec::new();
    loop {
        let name = match it.next() {
            None => match opened {
                None => return Ok(out),
                Some(at) => {
                    return Err(ImportError::syntax(at, "this `{` is never closed by a `}`"))
                }
            },
            Some(Token::Close(at)) => match opened {
                Some(_) => return Ok(out),
                None => return Err(ImportError::syntax(at, "`}` closes no block")),
            },
            Some(Token::Semicolon(at)) => {
                return Err(ImportError::syntax(at, "`;` with no directive before it"))
            }
            Some(Token::Open(at)) => {
                return Err(ImportError::syntax(
                    at,
                    "`{` with no directive name before it",
                ))
            }
            Some(Token::Word(w)) => w,
        };
        let mut args = Vec::new();
        loop {
            match it.next() {
                Some(Token::Word(w)) => args.push(w),
                Some(Token::Semicolon(_)) => {
                    out.push(Directive {
                        name,
                        args,
                        block: None,
                    });
                    break;
                }
                Some(Token::Open(at)) => {
                    let inner = block(it, Some(at))?;
                    out.push(Directive {
                        name,
                        args,
                        block: Some(inner),
                    });
                    break;
                }
                Some(Token::Close(at)) => {
                    return Err(ImportError::syntax(
                        at,
                        format!("`{}` is not ended by `;` before this `}}`", name.text),
                    ))
                }
                None => {
                    return Err(ImportError::syntax(
                        name.at,
                        format!("`{}` is not ended by `;`", name.text),
                    ))
                }
            }
        }
    }
}

/// Directives understood as needing nothing in tether: what tether does anyway.
fn built_in(d: &Directive) -> Option<&'static str> {
    let header = d.arg(0).map(str::to_ascii_lowercase);
    match (d.name.text.as_str(), header.as_deref()) {
        ("proxy_http_version", _) => Some("tether speaks HTTP/1.1 to servers (and upgrades WebSockets) by itself"),
        ("proxy_set_header", Some("upgrade" | "connection")) => Some("tether proxies WebSocket upgrades itself"),
        ("proxy_set_header", Some("host")) => Some("tether forwards the client's Host unchanged"),
        ("proxy_set_header", Some("x-real-ip" | "x-forwarded-for" | "x-forwarded-proto" | "x-forwarded-host")) => {
            Some("tether sets X-Forwarded-For, X-Real-IP, X-Forwarded-Proto and X-Forwarded-Host itself (trusting incoming ones only from `trusted_proxies`)")
        }
        _ => None,
    }
}

/// Directives known, that tether has no use for, with the reason.
fn dropped(name: &str) -> Option<&'static str> {
    Some(match name {
        "proxy_read_timeout" | "proxy_send_timeout" => "tether derives a WebSocket's idle limit from the session's heartbeat (pingInterval + pingTimeout: `timeouts.tunnel_idle: auto`) and holds a long poll up to `timeouts.response`; a fixed long timeout would only keep dead connections open",
        "proxy_buffering" | "proxy_buffers" | "proxy_buffer_size" | "proxy_busy_buffers_size" | "proxy_request_buffering" => "tether streams bodies and never buffers a long poll",
        "proxy_cache" | "proxy_cache_bypass" | "proxy_no_cache" => "Engine.IO responses are not cacheable; tether caches nothing",
        "proxy_redirect" => "tether does not rewrite Location headers",
        "proxy_set_header" => "tether sets only the forwarding headers (X-Forwarded-*, X-Real-IP); other headers are passed through as the client sent them",
        "proxy_next_upstream" | "proxy_next_upstream_tries" | "proxy_next_upstream_timeout" => "tether retries only a new session's handshake elsewhere, and never a request of a known session",
        "keepalive" | "keepalive_timeout" | "keepalive_requests" | "keepalive_time" => "tether keeps its own keep-alive pool to each server and its own client limits (`limits`)",
        "worker_processes" | "worker_connections" | "worker_rlimit_nofile" | "pid" | "user" | "error_log" | "access_log" | "include" | "default_type" | "sendfile" | "tcp_nopush" | "tcp_nodelay" | "gzip" | "types" | "root" | "index" | "multi_accept" | "use" | "daemon" | "server_tokens" | "charset" | "client_max_body_size" | "log_format" => "not about balancing Socket.IO (tether's own logging and limits are in its config: `access_log`, `limits`)",
        "ssl_protocols" | "ssl_ciphers" | "ssl_prefer_server_ciphers" | "ssl_session_cache" | "ssl_session_timeout" | "ssl_dhparam" | "ssl_stapling" | "ssl_stapling_verify" => "tether uses rustls' safe defaults: TLS 1.2 and 1.3, modern ciphers only",
        "add_header" => "tether adds no headers to responses (except Strict-Transport-Security: `listeners[].tls.hsts`)",
        "map" => "variables are not needed: tether proxies upgrades itself",
        "return" | "rewrite" | "try_files" | "alias" => "tether serves no files and rewrites no URLs",
        "least_conn" => "tether places new sessions by least live sessions already (the default `placement: least_sessions`)",
        "zone" | "resolver" | "resolver_timeout" => "tether resolves server names itself, and `discover: { dns }` re-resolves a name",
        "allow" | "deny" => "not translated: tether's client address lists are `limits.per_client.allow` / `deny`",
        _ => return None,
    })
}

struct Reader {
    plan: Plan,
    /// Upstream name → index in `plan.backends`.
    upstreams: Vec<String>,
}

/// Reads an nginx config into a plan.
pub fn read(text: &str) -> Result<Plan, ImportError> {
    let tree = parse(text)?;
    let mut r = Reader {
        plan: Plan::default(),
        upstreams: Vec::new(),
    };
    let mut servers = Vec::new();
    r.walk(&tree, &mut servers)?;
    for d in servers {
        r.server_block(d)?;
    }
    if r.plan.backends.is_empty() {
        let at = first_at(&tree);
        return Err(ImportError::unusable(
            at,
            "no `upstream` block and no `proxy_pass` to a server: nothing for tether to balance",
        ));
    }
    if r.plan.listeners.is_empty() {
        r.plan.listeners.push(Listener {
            bind: "0.0.0.0:80".into(),
            comment: "nginx's default listen (no server block says otherwise)".into(),
            ..Default::default()
        });
    }
    // nginx picks the longest matching prefix; tether the first match.
    r.plan
        .routes
        .sort_by_key(|route| std::cmp::Reverse(route.path_prefix.len()));
    if r.plan.backends.len() == 1 && r.plan.routes.iter().all(|x| x.host.is_none()) {
        let only_root = r.plan.routes.len() == 1 && r.plan.routes[0].path_prefix == "/";
        if only_root {
            r.plan.routes.clear();
        }
    }
    Ok(r.plan)
}

fn first_at(tree: &[Directive]) -> At {
    tree.first()
        .map_or(At { line: 1, column: 1 }, Directive::at)
}

impl Reader {
    /// Top level and `http`: collects upstreams now, `server` blocks for later (their
    /// `proxy_pass` may name an upstream written after them).
    fn walk<'a>(
        &mut self,
        list: &'a [Directive],
        servers: &mut Vec<&'a Directive>,
    ) -> Result<(), ImportError> {
        for d in list {
            match (d.name.text.as_str(), &d.block) {
                ("http", Some(inner)) => self.walk(inner, servers)?,
                ("events", Some(_)) | ("stream", Some(_)) | ("mail", Some(_)) => self.plan.drop(
                    d.at(),
                    d.name.text.clone(),
                    "not about proxying HTTP to Socket.IO servers",
                ),
                ("upstream", Some(inner)) => self.upstream(d, inner)?,
                ("server", Some(_)) => servers.push(d),
                _ => self.other(d)?,
            }
        }
        Ok(())
    }

    fn other(&mut self, d: &Directive) -> Result<(), ImportError> {
        if let Some(why) = built_in(d) {
            self.plan.built_in(d.at(), d.text(), why);
            return Ok(());
        }
        match dropped(&d.name.text) {
            Some(why) => {
                self.plan.drop(d.at(), d.text(), why);
                Ok(())
            }
            None => Err(ImportError::unknown(
                d.at(),
                &d.name.text,
                " (tether import knows upstream, server, listen, server_name, location, proxy_pass, ssl_certificate, the proxy_* timeouts and headers, ip_hash, hash, least_conn)",
            )),
        }
    }

    fn upstream(&mut self, d: &Directive, inner: &[Directive]) -> Result<(), ImportError> {
        let Some(name) = d.arg(0) else {
            return Err(ImportError::syntax(d.at(), "`upstream` needs a name"));
        };
        let mut b = Backend {
            name: super::ident(name),
            comment: format!("line {}: upstream {name}", d.at().line),
            ..Default::default()
        };
        let mut passive = None;
        for s in inner {
            match s.name.text.as_str() {
                "server" => {
                    let Some(addr) = s.arg(0) else {
                        return Err(ImportError::syntax(s.at(), "`server` needs an address"));
                    };
                    let addr = server_addr(addr, s.at())?;
                    let mut server = Server {
                        id: super::ident(&addr.replace(':', "-")),
                        addr: addr.clone(),
                        comment: format!("line {}: server {addr}", s.at().line),
                        ..Default::default()
                    };
                    for p in &s.args[1..] {
                        let (k, v) = p.text.split_once('=').unwrap_or((p.text.as_str(), ""));
                        match k {
                            "weight" => server.weight = v.parse().ok(),
                            "max_conns" => server.max_connections = v.parse().ok().filter(|n| *n > 0),
                            "max_fails" | "fail_timeout" => {
                                passive.get_or_insert(p.at);
                            }
                            "down" => server.state_draining = true,
                            "backup" => self.plan.drop(p.at, format!("server {addr} backup"), "tether has no backup servers: every ready server takes new sessions (kept as a normal server)"),
                            _ => self.plan.drop(p.at, format!("server {addr} {}", p.text), "not a server parameter tether has"),
                        }
                    }
                    b.servers.push(server);
                }
                "ip_hash" => {
                    self.plan.drop(s.at(), "ip_hash", "replaced by sid learning + least sessions: tether keeps each session on its node by the sid it learns from the handshake, so clients behind one NAT are spread and survive node changes; `placement: hash` is offered in a comment for those who want IP hashing");
                    b.notes.push(format!("ip_hash (line {}): tether learns each session's node from its handshake and places new\nsessions on the node with the fewest. To hash client IPs as ip_hash did, uncomment:\nplacement: hash", s.at().line));
                }
                "hash" => {
                    let key = s.arg(0).unwrap_or("");
                    self.plan.drop(s.at(), s.text(), "replaced by sid learning + least sessions; `placement: hash` with a `hash_key` is offered in a comment");
                    b.notes.push(format!("hash {key} (line {}): to place new sessions by a consistent hash instead of least sessions:\nplacement: hash\nhash_key: {{ header: NAME }}  # or client_ip, {{ query: NAME }}, {{ cookie: NAME }}", s.at().line));
                }
                _ => self.other(s)?,
            }
        }
        if let Some(at) = passive {
            self.plan.drop(at, "max_fails / fail_timeout", "tether marks a server down after failed requests and probes it with `health` checks; add `health:` for active checks");
        }
        if b.servers.is_empty() {
            return Err(ImportError::unusable(
                d.at(),
                format!("upstream {name} has no `server`: tether needs at least one"),
            ));
        }
        self.upstreams.push(name.to_owned());
        self.plan.backends.push(b);
        Ok(())
    }

    fn server_block(&mut self, d: &Directive) -> Result<(), ImportError> {
        let inner = d.block.as_deref().unwrap_or(&[]);
        let mut hosts: Vec<String> = Vec::new();
        let mut listens: Vec<(String, bool, At)> = Vec::new();
        let mut cert: Option<String> = None;
        let mut key: Option<String> = None;
        let mut routes = Vec::new();
        let mut connect = None;
        for s in inner {
            match s.name.text.as_str() {
                "listen" => {
                    let Some(spec) = s.arg(0) else {
                        return Err(ImportError::syntax(
                            s.at(),
                            "`listen` needs an address or port",
                        ));
                    };
                    let Some(bind) = super::bind_addr(spec) else {
                        return Err(ImportError::unusable(s.args[0].at, format!("listen {spec}: tether binds an IP address and port (e.g. 0.0.0.0:80), not a name or unix socket")));
                    };
                    let ssl = s.args.iter().any(|a| a.text == "ssl");
                    for a in &s.args[1..] {
                        if !matches!(
                            a.text.as_str(),
                            "ssl" | "http2" | "default_server" | "default" | "reuseport"
                        ) {
                            self.plan.drop(
                                a.at,
                                format!("listen {spec} {}", a.text),
                                "not a listener option tether has",
                            );
                        }
                    }
                    listens.push((bind, ssl, s.at()));
                }
                "server_name" => {
                    for a in &s.args {
                        let h = a.text.as_str();
                        match h {
                            "_" | "" => {}
                            // `.example.com`: the name and its subdomains.
                            _ if h.starts_with('.') => {
                                hosts.push(h[1..].to_owned());
                                hosts.push(format!("*{h}"));
                            }
                            _ if h.starts_with('~') || h.ends_with(".*") => self.plan.drop(
                                a.at,
                                format!("server_name {h}"),
                                "tether matches hosts exactly or as *.suffix, not by regular expression or trailing wildcard",
                            ),
                            _ => hosts.push(h.to_owned()),
                        }
                    }
                }
                "ssl_certificate" => cert = s.arg(0).map(str::to_owned),
                "ssl_certificate_key" => key = s.arg(0).map(str::to_owned),
                "location" => {
                    if let Some(route) = self.location(s, &mut connect)? {
                        routes.push(route);
                    }
                }
                "proxy_connect_timeout" => connect = self.connect_timeout(s).or(connect),
                "http2" => {}
                _ => self.other(s)?,
            }
        }
        if listens.is_empty() {
            listens.push(("0.0.0.0:80".into(), false, d.at()));
        }
        for (bind, ssl, at) in listens {
            if self.plan.listeners.iter().any(|l| l.bind == bind) {
                continue;
            }
            let mut l = Listener {
                bind: bind.clone(),
                comment: format!("line {}: listen", at.line),
                ..Default::default()
            };
            if ssl {
                match (&cert, &key) {
                    (Some(c), Some(k)) => l.tls.push((c.clone(), k.clone())),
                    (Some(c), None) => l.tls.push((c.clone(), c.clone())),
                    _ => {
                        return Err(ImportError::unusable(
                            at,
                            "`listen ... ssl` without `ssl_certificate` in its server block",
                        ))
                    }
                }
            }
            self.plan.listeners.push(l);
        }
        for (path, backend, comment) in routes {
            if let Some(b) = connect.as_ref() {
                if let Some(be) = self.plan.backends.iter_mut().find(|x| x.name == backend) {
                    be.connect_timeout.get_or_insert_with(|| b.clone());
                }
            }
            if hosts.is_empty() {
                self.plan.routes.push(Route {
                    host: None,
                    path_prefix: path,
                    backend,
                    comment,
                });
            } else {
                for h in &hosts {
                    self.plan.routes.push(Route {
                        host: Some(h.clone()),
                        path_prefix: path.clone(),
                        backend: backend.clone(),
                        comment: comment.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    fn connect_timeout(&mut self, s: &Directive) -> Option<String> {
        let spec = s.arg(0)?;
        match super::duration(spec, "s") {
            Some((text, d)) if d.as_secs() <= 75 && !d.is_zero() => Some(text),
            _ => {
                self.plan.drop(s.at(), s.text(), "a connect timeout this long only delays trying another node (nginx itself caps it at 75 s); tether keeps its default `timeouts.connect: 2s`");
                None
            }
        }
    }

    /// A `location` that proxies: (path prefix, backend, comment).
    fn location(
        &mut self,
        d: &Directive,
        connect: &mut Option<String>,
    ) -> Result<Option<(String, String, String)>, ImportError> {
        let inner = d.block.as_deref().unwrap_or(&[]);
        let (modifier, path) = match d.args.as_slice() {
            [p] => ("", p.text.clone()),
            [m, p] => (m.text.as_str(), p.text.clone()),
            _ => {
                return Err(ImportError::syntax(
                    d.at(),
                    "`location` takes a path (and an optional modifier)",
                ))
            }
        };
        let mut backend = None;
        for s in inner {
            match s.name.text.as_str() {
                "proxy_pass" => backend = Some(self.proxy_pass(s)?),
                "proxy_connect_timeout" => *connect = self.connect_timeout(s).or(connect.take()),
                _ => self.other(s)?,
            }
        }
        let Some(backend) = backend else {
            self.plan.drop(
                d.at(),
                d.text(),
                "this location proxies nothing (no proxy_pass); tether serves nothing itself",
            );
            return Ok(None);
        };
        match modifier {
            "" | "^~" => {}
            "=" => self.plan.drop(
                d.at(),
                d.text(),
                "an exact match becomes a prefix route: tether routes by path prefix",
            ),
            _ => {
                self.plan.drop(d.at(), d.text(), "tether routes by path prefix, not by regular expression: this location was not carried over; write a `routes` entry by hand");
                return Ok(None);
            }
        }
        let comment = format!("line {}: location {path}", d.at().line);
        Ok(Some((path, backend, comment)))
    }

    /// The backend a `proxy_pass` names: an upstream, or a server of its own.
    fn proxy_pass(&mut self, d: &Directive) -> Result<String, ImportError> {
        let Some(url) = d.args.first() else {
            return Err(ImportError::syntax(d.at(), "`proxy_pass` needs a URL"));
        };
        let rest = url
            .text
            .strip_prefix("http://")
            .or_else(|| url.text.strip_prefix("https://"))
            .ok_or_else(|| {
                ImportError::unusable(
                    url.at,
                    format!("proxy_pass {}: tether proxies to http:// servers", url.text),
                )
            })?;
        let authority = rest.split('/').next().unwrap_or("");
        if rest.len() > authority.len() + 1 {
            self.plan.drop(
                url.at,
                d.text(),
                "tether forwards the request's path unchanged (no URI part on proxy_pass)",
            );
        }
        if url.text.starts_with("https://") {
            self.plan.drop(
                url.at,
                d.text(),
                "TLS towards servers is `backends.NAME.tls: {}` in tether; not set here",
            );
        }
        if let Some(i) = self.upstreams.iter().position(|u| u == authority) {
            return Ok(self.plan.backends[i].name.clone());
        }
        let addr = server_addr(authority, url.at)?;
        let name = super::ident(&addr.replace(':', "-"));
        if !self.plan.backends.iter().any(|b| b.name == name) {
            self.plan.backends.push(Backend {
                name: name.clone(),
                comment: format!("line {}: proxy_pass {}", d.at().line, url.text),
                servers: vec![Server {
                    id: name.clone(),
                    addr: addr.clone(),
                    ..Default::default()
                }],
                ..Default::default()
            });
            self.upstreams.push(format!("\0{authority}"));
        }
        Ok(name)
    }
}

/// `host[:port]` of an upstream server (nginx's default port is 80).
fn server_addr(spec: &str, at: At) -> Result<String, ImportError> {
    if spec.starts_with("unix:") {
        return Err(ImportError::unusable(
            at,
            format!("{spec}: tether connects to servers over TCP (host:port), not unix sockets"),
        ));
    }
    let has_port = match spec.rsplit_once(':') {
        Some((h, p)) => {
            !h.is_empty() && p.parse::<u16>().is_ok() && (!h.contains(':') || h.ends_with(']'))
        }
        None => false,
    };
    if spec.is_empty() || spec.contains('/') || spec.contains(' ') {
        return Err(ImportError::unusable(
            at,
            format!("{spec:?} is not a host:port"),
        ));
    }
    Ok(if has_port {
        spec.to_owned()
    } else {
        format!("{spec}:80")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upstream_and_its_location_become_a_backend_and_a_route() {
        let plan = read("upstream u { ip_hash; server a:1; server b:2 weight=3; }\nserver { listen 8080; location /socket.io/ { proxy_pass http://u; proxy_read_timeout 1h; } }\n").unwrap();
        assert_eq!(plan.listeners[0].bind, "0.0.0.0:8080");
        assert_eq!(plan.backends[0].servers[1].weight, Some(3));
        assert_eq!(plan.routes[0].path_prefix, "/socket.io/");
        let dropped: Vec<_> = plan.dropped.iter().map(|d| d.directive.as_str()).collect();
        assert_eq!(dropped, ["ip_hash", "proxy_read_timeout 1h"]);
    }

    #[test]
    fn no_upstream_is_refused_at_the_first_directive() {
        let e = read("\nserver {\n  listen 80;\n  location / { root /srv; }\n}\n").unwrap_err();
        assert!(e.to_string().starts_with("2:1: no `upstream`"), "{e}");
    }

    #[test]
    fn an_unknown_directive_is_refused_with_its_place() {
        let e = read("upstream u {\n  server a:1;\n  sticky_magic on;\n}\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("3:3: unknown directive `sticky_magic`"),
            "{e}"
        );
    }

    #[test]
    fn unbalanced_braces_are_syntax_errors() {
        assert!(read("upstream u {\n server a:1;\n")
            .unwrap_err()
            .to_string()
            .starts_with("1:12:"));
        assert!(read("}\n").unwrap_err().to_string().starts_with("1:1:"));
        assert!(read("upstream u { server a:1 }")
            .unwrap_err()
            .to_string()
            .starts_with("1:25:"));
    }

    #[test]
    fn a_dotted_server_name_routes_the_name_and_its_subdomains() {
        let plan = read("upstream u { server a:1; }\nserver { server_name .example.com ~^re$; location / { proxy_pass http://u; } }\n").unwrap();
        let hosts: Vec<_> = plan
            .routes
            .iter()
            .map(|r| r.host.clone().unwrap())
            .collect();
        assert_eq!(hosts, ["example.com", "*.example.com"]);
        assert_eq!(plan.dropped[0].directive, "server_name ~^re$");
    }

    #[test]
    fn an_empty_upstream_is_refused() {
        let e = read("upstream u {\n}\n").unwrap_err();
        assert!(e.to_string().contains("has no `server`"), "{e}");
    }
}
