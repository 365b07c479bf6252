//! The admin listener: what an operator and a deploy script talk to.
//!
//! `GET /metrics` (Prometheus text), `GET /status` (JSON: backends, servers, state,
//! health, sessions, drained, readiness, certificates, last reload), `GET /history` (the
//! dashboard's fifteen minutes of samples), `GET /sessions` and `GET /sessions/{sid}`
//! (the session registry), `GET /healthz` and `GET /readyz` (probes), `GET /` (the live
//! dashboard), `POST /reload`, `POST /backends/{b}/servers/{s}/{drain|ready|maint}`.
//! With a token configured, every request but the dashboard page and the two probes
//! needs `Authorization: Bearer <token>` (the page asks for it and sends it); [`guard`]
//! says who else is refused (foreign host names, cross-origin changes).

mod guard;
mod sessions;
mod status;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tether_kit::throttle::Throttle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::ServerState;
use crate::fleet::StateChange;
use crate::listener::MIN_HEADER_BUF;
use crate::runtime::watch::Trigger;
use crate::runtime::{AdminApi, Runtime};
use guard::Refusal;

const DASHBOARD: &str = include_str!("dashboard.html");

/// The admin API, as the runtime serves it on the admin listener.
#[derive(Debug, Clone, Copy)]
pub struct Api;

impl AdminApi for Api {
    fn serve(
        &self,
        listener: TcpListener,
        rt: Arc<Runtime>,
        stop: CancellationToken,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(serve(listener, rt, stop))
    }
}

/// Serves admin requests until `stop`.
pub async fn serve(listener: TcpListener, rt: Arc<Runtime>, stop: CancellationToken) {
    tether_kit::accept::accept_loop(&listener, &stop.clone(), "admin", &[], |stream, peer, _| {
        let rt_limits = rt.store.load().limits.clone();
        let rt = Arc::clone(&rt);
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let rt = Arc::clone(&rt);
                async move { Ok::<_, Infallible>(handle(&rt, req, peer).await) }
            });
            // The proxy's limits on a request head apply here too: a client that sends
            // half a head and goes quiet is closed, not kept for ever.
            let limits = rt_limits.clone();
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BUF))
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    })
    .await
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Full<Bytes>> {
    reply(status, "application/json", v.to_string())
}

/// The dashboard's Content-Security-Policy: its one inline script (by its hash) and its
/// inline styles, requests to the admin API itself, inline `data:` images, and nothing
/// else: the page loads nothing from anywhere, and even a script slipped into it could
/// send the token nowhere but here. Kept out of frames, so no other page can overlay its
/// token field.
fn dashboard_csp() -> &'static str {
    static CSP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CSP.get_or_init(|| {
        use base64::Engine as _;
        use sha2::Digest as _;
        let script = inline_script(DASHBOARD).expect("the dashboard has an inline script");
        let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(script));
        format!(
            "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'"
        )
    })
}

/// The text of a page's one `<script>` element (none when it has none or several).
fn inline_script(page: &str) -> Option<&str> {
    let (_, rest) = page.split_once("<script>")?;
    let (script, after) = rest.split_once("</script>")?;
    (!after.contains("<script")).then_some(script)
}

/// The dashboard page. Served to anyone who reaches the admin listener by one of its
/// host names (it holds no data).
fn dashboard() -> Response<Full<Bytes>> {
    let mut r = reply(StatusCode::OK, "text/html; charset=utf-8", DASHBOARD);
    let h = r.headers_mut();
    h.insert(
        header::X_FRAME_OPTIONS,
        http::HeaderValue::from_static("DENY"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        http::HeaderValue::from_str(dashboard_csp()).expect("a header value"),
    );
    h.insert(
        header::REFERRER_POLICY,
        http::HeaderValue::from_static("no-referrer"),
    );
    r
}

/// `405 Method Not Allowed`, saying which method the URL takes (RFC 9110 requires the
/// `Allow` header), so a script that sent GET learns to send POST instead of guessing
/// from a 404 that the URL is wrong.
fn not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut r = reply(
        StatusCode::METHOD_NOT_ALLOWED,
        "text/plain",
        format!("method not allowed: use {allow}\n"),
    );
    r.headers_mut()
        .insert(header::ALLOW, http::HeaderValue::from_static(allow));
    r
}

/// `POST /backends/{b}/servers/{s}/{drain|ready|maint|migrate}`: sets the operator
/// state (a migration sets draining, then moves the sessions at `?rate=` per second, the
/// backend's `migrate_rate` by default) and answers with the server as `/status` shows
/// it, now in its new state.
fn server_action(
    rt: &Arc<Runtime>,
    method: &Method,
    (backend, server, action): (&str, &str, &str),
    query: Option<&str>,
) -> Response<Full<Bytes>> {
    let state = match action {
        "drain" | "migrate" => ServerState::Draining,
        "ready" => ServerState::Ready,
        "maint" => ServerState::Maint,
        _ => {
            return json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({ "error": "action must be drain, ready, maint or migrate" }),
            )
        }
    };
    let rate = match (action, query) {
        ("migrate", Some(q)) => {
            match form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "rate") {
                None => None,
                Some((_, v)) => match v.parse::<f64>() {
                    Ok(r) if crate::config::migrate_rate_in_range(r) => Some(r),
                    _ => {
                        return json(
                            StatusCode::BAD_REQUEST,
                            &serde_json::json!({ "error": format!("rate={v}: sessions per second, more than 0 and at most 100000") }),
                        )
                    }
                },
            }
        }
        _ => None,
    };
    if method != Method::POST {
        return not_allowed("POST");
    }
    let snap = rt.store.load();
    // A typo is answered with what exists, so the next try can be right.
    let names = |names: Vec<&str>| match names.is_empty() {
        true => "none".to_owned(),
        false => names.join(", "),
    };
    let Some(b) = snap.backend(backend) else {
        let known = names(snap.backends.iter().map(|b| &*b.name).collect());
        return json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({ "error": format!("there is no backend {backend}; the backends are: {known}") }),
        );
    };
    let Some(found) = b.server(server) else {
        let known = names(b.servers.iter().map(|s| &*s.id).collect());
        return json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({ "error": format!("backend {backend} has no server {server}; its servers are: {known}") }),
        );
    };
    let migrate_rate = (action == "migrate").then(|| {
        rate.unwrap_or_else(|| {
            rt.store
                .config()
                .backends
                .iter()
                .find(|b| b.name == backend)
                .map_or(crate::config::DEFAULT_MIGRATE_RATE, |b| b.migrate_rate)
        })
    });
    if let Some(rate) = migrate_rate {
        crate::runtime::migrate::start(rt, Arc::clone(&found.stats), rate);
    } else if let Some(old) = found.stats.condition.set_state_by_admin(state) {
        tracing::info!(%backend, %server, from = %old.as_str(), to = %state.as_str(), "server state set by the admin API");
        // Maintenance ends the server's sessions: counted out now rather than at the
        // next upkeep tick, so this answer already shows it.
        rt.store.sids.sweep();
    }
    let mut answer = status::server_json(found);
    // With a registry, every instance of the fleet is told (even when this one had the
    // state already: another may not); the answer says whether that was possible. A
    // migration is announced with its rate, and each instance moves its own sessions.
    let fleet = &rt.store.fleet;
    if fleet.is_on() {
        let shared = fleet.announce(StateChange {
            backend: backend.to_owned(),
            server: server.to_owned(),
            state,
            migrate_rate,
        });
        let up = fleet.status().is_some_and(|l| l.up);
        answer["fleet"] = serde_json::json!(match (shared, up) {
            (true, true) => "announced",
            (true, false) => "queued: the registry is unreachable",
            (false, _) => "not announced: the registry's queue is full",
        });
    }
    json(StatusCode::OK, &answer)
}

/// One line a second at most for refused tokens, one for missing ones: a script guessing
/// tokens must not flood the log, and the first of each is what the operator needs.
static TOKEN_REFUSED_LOG: Throttle = Throttle::new(Duration::from_secs(1));
static TOKEN_MISSING_LOG: Throttle = Throttle::new(Duration::from_secs(1));

async fn handle(
    rt: &Arc<Runtime>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let Some(cfg) = rt.admin_config() else {
        return reply(StatusCode::NOT_FOUND, "text/plain", "not found\n");
    };
    let access = guard::access(req.method(), req.uri().path());
    match guard::check(&cfg, access, req.method(), req.headers()) {
        Ok(()) => {}
        Err(refused @ (Refusal::TokenMissing | Refusal::TokenRefused)) => {
            let path = req.uri().path();
            if refused == Refusal::TokenRefused {
                if let Some(suppressed) = TOKEN_REFUSED_LOG.allow() {
                    tracing::warn!(%peer, method = %req.method(), %path, suppressed, "admin request with a wrong token refused");
                }
            } else if let Some(suppressed) = TOKEN_MISSING_LOG.allow() {
                tracing::info!(%peer, method = %req.method(), %path, suppressed, "admin request without a token refused");
            }
            let mut r = reply(
                StatusCode::UNAUTHORIZED,
                "text/plain",
                format!("{refused}\n"),
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
        Err(refused) => {
            tracing::debug!(error = %refused, "admin request refused");
            return reply(StatusCode::FORBIDDEN, "text/plain", format!("{refused}\n"));
        }
    }
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method(), segments.as_slice()) {
        (&Method::GET | &Method::HEAD, [""]) => dashboard(),
        // HEAD is GET without the body (hyper leaves it out): monitors probe with it.
        (&Method::GET | &Method::HEAD, ["status"]) => json(StatusCode::OK, &status::status(rt)),
        (&Method::GET | &Method::HEAD, ["metrics"]) => {
            status::export_gauges(rt);
            reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                tether_kit::recorder::handle().render(),
            )
        }
        // Liveness: the process answers. Readiness: send it clients (see
        // `status::not_ready`); the body says why not, for the operator reading the probe.
        (&Method::GET | &Method::HEAD, ["healthz"]) => reply(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET | &Method::HEAD, ["readyz"]) => {
            let why = status::not_ready(rt);
            match why.is_empty() {
                true => reply(StatusCode::OK, "text/plain", "ready\n"),
                false => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: {}\n", why.join("; ")),
                ),
            }
        }
        (&Method::GET | &Method::HEAD, ["history"]) => json(StatusCode::OK, &rt.history.to_json()),
        (&Method::GET | &Method::HEAD, ["sessions"]) => {
            let (status, doc) = sessions::list(rt, req.uri().query());
            json(status, &doc)
        }
        (&Method::GET | &Method::HEAD, ["sessions", sid]) => {
            let (status, doc) = sessions::one(rt, sid);
            json(status, &doc)
        }
        (&Method::POST, ["reload"]) => match rt.reload(Trigger::Admin).await {
            Ok(()) => json(
                StatusCode::OK,
                &serde_json::json!({ "ok": true, "generation": rt.reload_status().generation }),
            ),
            Err(e) => json(
                StatusCode::UNPROCESSABLE_ENTITY,
                &serde_json::json!({ "ok": false, "error": e.to_string() }),
            ),
        },
        (method, ["backends", backend, "servers", server, action]) => {
            server_action(rt, method, (backend, server, action), req.uri().query())
        }
        (_, [""]) => not_allowed("GET, HEAD"),
        (_, ["status" | "metrics" | "healthz" | "readyz" | "history" | "sessions"])
        | (_, ["sessions", _]) => not_allowed("GET, HEAD"),
        (_, ["reload"]) => not_allowed("POST"),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dashboard_is_one_page_whose_script_the_policy_allows_by_hash() {
        let script = inline_script(DASHBOARD).expect("one inline script");
        assert!(script.contains("refreshStatus"), "the page's own script");
        let csp = dashboard_csp();
        assert!(csp.contains("script-src 'sha256-"), "{csp}");
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        // Nothing from elsewhere: no external script, style sheet, font or image.
        for foreign in [
            "http://",
            "https://",
            "<script src",
            "<link rel=\"stylesheet",
            "@import",
            "url(",
        ] {
            let outside = DASHBOARD
                .match_indices(foreign)
                // The SVG namespace is a name, not an address anything is fetched from.
                .filter(|(i, _)| !DASHBOARD[*i..].starts_with("http://www.w3.org/2000/svg"))
                .count();
            assert_eq!(outside, 0, "{foreign} in the dashboard");
        }
        assert_eq!(inline_script("<script>a</script><script>b</script>"), None);
    }
}
