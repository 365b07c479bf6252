//! A Kubernetes `Ingress` (ingress-nginx annotations): each Service it routes to becomes
//! a backend that discovers the Service's pods by DNS, each rule a route; cookie affinity
//! becomes tether's signed cookie.

use serde_yaml::Value;

use super::{At, Backend, ImportError, Listener, Plan, Route};

const PREFIX: &str = "nginx.ingress.kubernetes.io/";

/// The position of the first line holding `needle` (where a key of the YAML is), else 1:1.
fn find(text: &str, needle: &str) -> At {
    for (i, line) in text.lines().enumerate() {
        if let Some(c) = line.find(needle) {
            return At {
                line: i + 1,
                column: line[..c].chars().count() + 1,
            };
        }
    }
    At { line: 1, column: 1 }
}

fn yaml_error(e: &serde_yaml::Error) -> ImportError {
    let at = e.location().map_or(At { line: 1, column: 1 }, |l| At {
        line: l.line(),
        column: l.column(),
    });
    let message = e.to_string();
    // serde_yaml appends " at line L column C"; the position is said first already.
    let message = match message.find(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message,
    };
    ImportError::syntax(at, format!("not valid YAML: {message}"))
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for k in path {
        cur = cur.get(*k)?;
    }
    cur.as_str()
}

/// Reads the first `Ingress` of a (possibly multi-document) YAML file.
pub fn read(text: &str) -> Result<Plan, ImportError> {
    let mut ingress = None;
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v = <Value as serde::Deserialize>::deserialize(doc).map_err(|e| yaml_error(&e))?;
        if v.get("kind").and_then(Value::as_str) == Some("Ingress") {
            if ingress.is_some() {
                return Err(ImportError::unusable(
                    find(text, "kind: Ingress"),
                    "more than one Ingress in the file: import them one at a time",
                ));
            }
            ingress = Some(v);
        }
    }
    let Some(ing) = ingress else {
        return Err(ImportError::unusable(
            At { line: 1, column: 1 },
            "no document of `kind: Ingress` in the file",
        ));
    };
    let mut plan = Plan::default();
    let name = str_at(&ing, &["metadata", "name"])
        .unwrap_or("ingress")
        .to_owned();
    plan.notes.push(format!(
        "From Ingress {name}: tether runs in the cluster (a Deployment with this config) instead of the\n\
         ingress controller. Each backend discovers its Service's pods by DNS: the Service must be\n\
         headless (`clusterIP: None`) so that its name resolves to every pod, and the port is then\n\
         the pods' own port (the Service's targetPort)."
    ));
    plan.listeners.push(Listener {
        bind: "0.0.0.0:80".into(),
        comment: "ingress-nginx's HTTP port".into(),
        ..Default::default()
    });
    let spec = ing
        .get("spec")
        .ok_or_else(|| ImportError::unusable(find(text, "kind:"), "the Ingress has no `spec`"))?;
    let mut cookie = None;
    let mut connect = None;
    if let Some(Value::Mapping(ann)) = ing.get("metadata").and_then(|m| m.get("annotations")) {
        for (k, v) in ann {
            let (Some(k), v) = (
                k.as_str(),
                v.as_str()
                    .map(str::to_owned)
                    .or_else(|| v.as_u64().map(|n| n.to_string()))
                    .unwrap_or_default(),
            ) else {
                continue;
            };
            let at = find(text, k);
            let Some(short) = k.strip_prefix(PREFIX) else {
                plan.drop(
                    at,
                    format!("{k}: {v}"),
                    "not an ingress-nginx annotation; nothing of tether's",
                );
                continue;
            };
            match short {
                "affinity" if v == "cookie" => cookie = Some(cookie.unwrap_or_else(|| "INGRESSCOOKIE".to_owned())),
                "affinity" => plan.drop(at, format!("{k}: {v}"), "tether's affinity is the sid it learns, and a cookie"),
                "session-cookie-name" => cookie = Some(v.clone()),
                "session-cookie-hash" => plan.drop(at, format!("{k}: {v}"), "tether signs its cookie with HMAC-SHA256 under a secret (`cookie.secret`); the hash is not a choice"),
                "affinity-mode" | "session-cookie-path" | "session-cookie-change-on-failure" | "session-cookie-samesite" | "session-cookie-conditional-samesite-none" => plan.drop(at, format!("{k}: {v}"), "tether's cookie re-pins when its server is gone and is `same_site: lax` by default; set `cookie.same_site` if needed"),
                "session-cookie-max-age" | "session-cookie-expires" => plan.drop(at, format!("{k}: {v}"), "kept as a session cookie: set `cookie.max_age` for a lasting one"),
                "proxy-read-timeout" | "proxy-send-timeout" => plan.drop(at, format!("{k}: {v}"), "tether derives a WebSocket's idle limit from the session's heartbeat (pingInterval + pingTimeout: `timeouts.tunnel_idle: auto`) and holds a long poll up to `timeouts.response`; a fixed long timeout would only keep dead connections open"),
                "proxy-connect-timeout" => match super::duration(&v, "s") {
                    Some((t, d)) if !d.is_zero() && d.as_secs() <= 75 => connect = Some(t),
                    _ => plan.drop(at, format!("{k}: {v}"), "not a connect timeout tether would take; kept at 2s"),
                },
                "upstream-hash-by" | "load-balance" => plan.drop(at, format!("{k}: {v}"), "replaced by sid learning + least sessions; `placement: hash` with a `hash_key` places by a consistent hash"),
                "ssl-redirect" | "force-ssl-redirect" => plan.drop(at, format!("{k}: {v}"), "the TLS certificates live in a Secret; once mounted, add a TLS listener and `redirect_https` on the plain one"),
                "websocket-services" | "proxy-http-version" | "use-forwarded-headers" | "proxy-body-size" | "backend-protocol" | "enable-cors" | "rewrite-target" | "configuration-snippet" | "server-snippet" => plan.drop(at, format!("{k}: {v}"), "not translated: tether proxies WebSockets and forwarding headers itself, rewrites no paths and runs no snippets"),
                _ => plan.drop(at, format!("{k}: {v}"), "an ingress-nginx setting tether has no counterpart for"),
            }
        }
    }
    if let Some(c) = spec.get("ingressClassName").and_then(Value::as_str) {
        plan.drop(
            find(text, "ingressClassName"),
            format!("ingressClassName: {c}"),
            "tether is not an ingress controller: it takes this config instead",
        );
    }
    if spec.get("tls").is_some() {
        plan.drop(find(text, "tls:"), "spec.tls", "the certificates live in a Secret: mount it into tether's pod and add a listener with `tls.certificates` (cert: tls.crt, key: tls.key)");
    }
    let add_backend = |plan: &mut Plan, svc: &Value, at: At| -> Result<String, ImportError> {
        let Some(name) = svc.get("name").and_then(Value::as_str) else {
            return Err(ImportError::unusable(
                at,
                "a backend with no `service.name`",
            ));
        };
        let port = match svc.get("port") {
            Some(p) => match (p.get("number").and_then(Value::as_u64), p.get("name").and_then(Value::as_str)) {
                (Some(n), _) if (1..=65535).contains(&n) => n,
                (_, Some(pn)) => return Err(ImportError::unusable(find(text, pn), format!("service {name} port {pn:?} is named: tether needs the pods' port number (the Service's targetPort)"))),
                _ => return Err(ImportError::unusable(at, format!("service {name}: no port number"))),
            },
            None => return Err(ImportError::unusable(at, format!("service {name}: no port"))),
        };
        let bname = super::ident(name);
        if !plan.backends.iter().any(|b| b.name == bname) {
            plan.backends.push(Backend {
                name: bname.clone(),
                comment: format!("line {}: service {name} port {port}", at.line),
                discover: Some(format!("{name}:{port}")),
                cookie: cookie.clone(),
                connect_timeout: connect.clone(),
                notes: if cookie.is_some() {
                    vec!["Cookie affinity → tether's signed cookie (the sid keeps a session on its pod anyway; the\ncookie brings a returning browser back to the same pod)".to_owned()]
                } else {
                    Vec::new()
                },
                ..Default::default()
            });
        }
        Ok(bname)
    };
    if let Some(svc) = spec.get("defaultBackend").and_then(|d| d.get("service")) {
        let at = find(text, "defaultBackend");
        let b = add_backend(&mut plan, svc, at)?;
        plan.routes.push(Route {
            host: None,
            path_prefix: "/".into(),
            backend: b,
            comment: format!("line {}: defaultBackend", at.line),
        });
    }
    let mut rule_routes = Vec::new();
    for rule in spec
        .get("rules")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        let host = rule.get("host").and_then(Value::as_str).map(str::to_owned);
        for p in rule
            .get("http")
            .and_then(|h| h.get("paths"))
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let path = p
                .get("path")
                .and_then(Value::as_str)
                .unwrap_or("/")
                .to_owned();
            let at = find(text, &format!("path: {path}"));
            if p.get("pathType").and_then(Value::as_str) == Some("Exact") {
                plan.drop(
                    at,
                    format!("path: {path} (Exact)"),
                    "an exact match becomes a prefix route: tether routes by path prefix",
                );
            }
            let Some(svc) = p.get("backend").and_then(|b| b.get("service")) else {
                return Err(ImportError::unusable(
                    at,
                    format!("path {path}: no `backend.service`"),
                ));
            };
            let b = add_backend(&mut plan, svc, at)?;
            rule_routes.push(Route {
                host: host.clone(),
                path_prefix: path,
                backend: b,
                comment: format!("line {}: rule {}", at.line, host.as_deref().unwrap_or("*")),
            });
        }
    }
    rule_routes.sort_by_key(|r| (r.host.is_none(), std::cmp::Reverse(r.path_prefix.len())));
    // Rules before the default backend's catch-all.
    rule_routes.append(&mut plan.routes);
    plan.routes = rule_routes;
    if plan.backends.is_empty() {
        return Err(ImportError::unusable(
            find(text, "spec:"),
            "the Ingress routes to no Service: no `rules` with a backend and no `defaultBackend`",
        ));
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_becomes_a_route_to_a_discovered_service() {
        let plan = read("kind: Ingress\nmetadata: { name: x }\nspec:\n  rules:\n    - host: a.example\n      http:\n        paths:\n          - path: /\n            pathType: Prefix\n            backend: { service: { name: svc, port: { number: 3000 } } }\n").unwrap();
        assert_eq!(plan.backends[0].discover.as_deref(), Some("svc:3000"));
        assert_eq!(plan.routes[0].host.as_deref(), Some("a.example"));
    }

    #[test]
    fn broken_yaml_is_refused_with_its_place() {
        let e = read("kind: Ingress\nspec: [\n").unwrap_err();
        assert!(matches!(e, ImportError::Syntax { .. }), "{e}");
        assert!(e.at().is_some());
    }

    #[test]
    fn an_ingress_with_no_service_is_refused() {
        let e = read("kind: Ingress\nspec:\n  rules: []\n").unwrap_err();
        assert!(e.to_string().contains("routes to no Service"), "{e}");
    }
}
