//! What an operator reads while running tether: the routing decisions at debug, failures
//! that name the backend, the server's address and the reason, what a reload changed,
//! the admin API's refusals, loops refused, plain HTTP on a TLS port answered, and the
//! progress of a shutdown. Each runs the real binary and reads its log.

mod support;

use std::time::Duration;

use support::*;

/// Long enough for a busy 2-core machine; each wait ends as soon as the line is there.
const LOG_WAIT: Duration = Duration::from_secs(20);

/// An address with nothing listening on it (bound, then released).
fn dead_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn write_config(dir: &std::path::Path, yaml: &str) -> std::path::PathBuf {
    let path = dir.join("tether.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// One request with a body, on a fresh connection.
async fn post(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> RawResponse {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    raw_exchange(addr, None, req.as_bytes()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_logs_say_where_each_session_went_and_why_a_sid_is_unknown() {
    let node = NodeServer::spawn("node-1", None, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = sockets(std::slice::from_ref(&node))
        .with("cookie:\n  secret: \"operating-test-secret-0123456789\"")
        .build();
    let t = TetherProcess::start(&write_config(dir.path(), &yaml), "debug").await;

    // A handshake: placed by the backend's policy, then its sid learned.
    let hs = get(t.addr, None, &eio_path(None), &[]).await;
    assert_eq!(hs.status, 200, "{}", hs.text());
    let sid = hs.sid();
    let cookie = hs
        .header("set-cookie")
        .expect("a cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    t.log
        .wait_for(
            0,
            &[
                "new session placed",
                "backend=sockets",
                "server=node-1",
                "policy=least_sessions",
            ],
            LOG_WAIT,
        )
        .await;
    t.log
        .wait_for(
            0,
            &["sid learned", &format!("sid={sid}"), "server=node-1"],
            LOG_WAIT,
        )
        .await;

    // A sid nobody ever learned, without a cookie: said as such, not as a server gone.
    let r = get(t.addr, None, &eio_path(Some("never-seen-sid")), &[]).await;
    assert_eq!(r.status, 400, "{}", r.text());
    t.log
        .wait_for(
            0,
            &[
                "Session ID unknown",
                "sid=never-seen-sid",
                "reason=unknown sid",
            ],
            LOG_WAIT,
        )
        .await;

    // A session tether never saw (made on the node directly) whose cookie names its
    // server: routed by the cookie, and learned from it.
    let direct = get(node.addr, None, &eio_path(None), &[]).await;
    let other = direct.sid();
    let r = post(
        t.addr,
        &eio_path(Some(&other)),
        &[("Cookie", &cookie)],
        "40",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    t.log
        .wait_for(
            0,
            &[
                "sid re-learned from the cookie",
                &format!("sid={other}"),
                "server=node-1",
            ],
            LOG_WAIT,
        )
        .await;

    // Once per decision: one placement (the handshake), one sid learned, one refusal.
    assert_eq!(t.log.matching(0, &["new session placed"]).len(), 1);
    assert_eq!(t.log.matching(0, &["sid learned"]).len(), 1);
    assert_eq!(t.log.matching(0, &["Session ID unknown"]).len(), 1);
    assert!(t
        .log
        .matching(0, &["request refused", "Session ID unknown"])
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_name_the_backend_the_server_s_address_and_the_reason() {
    let dead = dead_addr();
    let dir = tempfile::tempdir().unwrap();
    let yaml = ConfigBuilder::new()
        .backend("chat")
        .server("gone", dead)
        .build();
    let t = TetherProcess::start(&write_config(dir.path(), &yaml), "info").await;

    // Refused connections: 502, said with the address; three in a row mark it down.
    let r = get(t.addr, None, &eio_path(None), &[]).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(
        r.text(),
        "the server could not be reached\n",
        "no server address for the client"
    );
    t.log
        .wait_for(
            0,
            &[
                "request failed",
                &format!("connecting to gone at {dead}: Connection refused"),
            ],
            LOG_WAIT,
        )
        .await;
    let mut last = 0;
    for _ in 0..10 {
        last = get(t.addr, None, &eio_path(None), &[]).await.status;
        if last == 503 {
            break;
        }
    }
    assert_eq!(last, 503, "down after the refusals");
    t.log
        .wait_for(
            0,
            &[
                "request failed",
                "backend chat: no server can take a new session: its one server is down",
            ],
            LOG_WAIT,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_comes_back_round_a_loop_is_refused_not_forwarded_again() {
    let node = NodeServer::spawn("node-1", None, &[]).await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // B in front of the node, A in front of B: a chain of two tethers works.
    let b_yaml = |server: std::net::SocketAddr| {
        ConfigBuilder::new()
            .admin()
            .backend("chat")
            .server("next", server)
            .build()
    };
    let b_file = write_config(dir_b.path(), &b_yaml(node.addr));
    let b = TetherProcess::start(&b_file, "info").await;
    let a_yaml = ConfigBuilder::new()
        .backend("front")
        .server("b", b.addr)
        .build();
    let a = TetherProcess::start(&write_config(dir_a.path(), &a_yaml), "info").await;
    let hs = get(a.addr, None, &eio_path(None), &[]).await;
    assert_eq!(hs.status, 200, "through two tethers: {}", hs.text());

    // B now sends to A: a request to A goes A → B → A, and A knows its own mark.
    std::fs::write(&b_file, b_yaml(a.addr)).unwrap();
    let r = admin_request(b.admin().await, "POST", "/reload").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let started = std::time::Instant::now();
    let r = get(a.addr, None, "/", &[]).await;
    assert_eq!(r.status, 508, "{}", r.text());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    a.log
        .wait_for(
            0,
            &["WARN", "request failed", "loop detected", "backend front"],
            LOG_WAIT,
        )
        .await;
    // Each time refused at once; the log line is throttled (one a second at most).
    let burst = std::time::Instant::now();
    for _ in 0..3 {
        assert_eq!(get(a.addr, None, "/", &[]).await.status, 508);
    }
    let lines = a.log.matching(0, &["loop detected"]).len();
    let allowed = 2 + burst.elapsed().as_secs() as usize;
    assert!(lines <= allowed, "{lines} loop lines for 4 loops");
}

/// `GET /status` of a tether process's admin API, as JSON.
async fn status(admin: std::net::SocketAddr) -> serde_json::Value {
    let r = admin_request(admin, "GET", "/status").await;
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_str(&r.text()).expect("status is JSON")
}

fn server_of(status: &serde_json::Value, id: &str) -> serde_json::Value {
    status["backends"][0]["servers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["id"] == id)
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_reload_says_why_and_what_changed_and_nothing_is_not_a_new_generation() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (dead_addr(), dead_addr(), dead_addr());
    let yaml = |a_extra: &str, with_c: bool| {
        let mut cfg = ConfigBuilder::new()
            .admin()
            .backend("chat")
            .server_with("a", a, a_extra)
            .server("b", b);
        if with_c {
            cfg = cfg.server("c", c);
        }
        cfg.build()
    };
    let path = write_config(dir.path(), &yaml("", false));
    let t = TetherProcess::start(&path, "info").await;
    let admin = t.admin().await;
    t.log.wait_for(0, &["config file watched"], LOG_WAIT).await;

    // Saved as it was (an editor's save, a touch): said, and no new generation.
    let mark = t.log.mark();
    write_atomically(&path, &yaml("", false));
    t.log
        .wait_for(
            mark,
            &["config unchanged", "trigger=the config file changed"],
            LOG_WAIT,
        )
        .await;
    assert_eq!(status(admin).await["reload"]["generation"], 1);

    // A weight and a server: both named, the weight as the admin API's changes are.
    let mark = t.log.mark();
    write_atomically(&path, &yaml("weight: 3", true));
    t.log
        .wait_for(
            mark,
            &[
                "config reloaded: servers added: chat/c; chat/a weight 1 → 3",
                "generation=2",
            ],
            LOG_WAIT,
        )
        .await;
    t.log
        .wait_for(
            mark,
            &[
                "server weight set by the config file",
                "server=a",
                "from=1",
                "to=3",
            ],
            LOG_WAIT,
        )
        .await;

    // Drained by the API, then `state: ready` written: the API's state holds, and the
    // log and /status say why.
    let r = admin_request(admin, "POST", "/backends/chat/servers/a/drain").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let s = server_of(&status(admin).await, "a");
    assert_eq!(
        (s["state"].as_str(), s["state_source"].as_str()),
        (Some("draining"), Some("admin")),
        "{s}"
    );
    let mark = t.log.mark();
    write_atomically(&path, &yaml("weight: 3, state: ready", true));
    t.log.wait_for(mark, &["config unchanged"], LOG_WAIT).await;
    t.log
        .wait_for(
            mark,
            &[
                "server keeps the state the admin API set",
                "server=a",
                "state=draining",
                "file_state=ready",
            ],
            LOG_WAIT,
        )
        .await;
    let s = server_of(&status(admin).await, "a");
    assert_eq!(
        (s["state"].as_str(), s["state_source"].as_str()),
        (Some("draining"), Some("admin")),
        "{s}"
    );

    // The file changes the state: it wins, logged like an API change.
    let mark = t.log.mark();
    write_atomically(&path, &yaml("weight: 3, state: maint", true));
    t.log
        .wait_for(
            mark,
            &[
                "config reloaded: chat/a state ready → maint",
                "generation=3",
            ],
            LOG_WAIT,
        )
        .await;
    t.log
        .wait_for(
            mark,
            &[
                "server state set by the config file",
                "server=a",
                "from=draining",
                "to=maint",
            ],
            LOG_WAIT,
        )
        .await;
    let s = server_of(&status(admin).await, "a");
    assert_eq!(
        (s["state"].as_str(), s["state_source"].as_str()),
        (Some("maint"), Some("file")),
        "{s}"
    );
    assert_eq!(server_of(&status(admin).await, "b")["state_source"], "file");
}

/// One admin request with an empty body and, when given, a bearer token.
async fn admin_call(
    admin: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> RawResponse {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\n{auth}Connection: close\r\nContent-Length: 0\r\n\r\n"
    );
    raw_exchange(admin, None, req.as_bytes()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_says_what_exists_and_why_a_token_was_refused() {
    let token = "admin-test-token-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let yaml = ConfigBuilder::new()
        .admin_yaml(&format!("bind: \"127.0.0.1:0\"\n  token: \"{token}\""))
        .backend("chat")
        .server("a", dead_addr())
        .server("b", dead_addr())
        .build();
    let t = TetherProcess::start(&write_config(dir.path(), &yaml), "info").await;
    let admin = t.admin().await;
    let call = |method: &'static str, path: &'static str, token: Option<&'static str>| {
        admin_call(admin, method, path, token)
    };

    let r = call("POST", "/backends/ap/servers/a/drain", Some(token)).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.text(),
        r#"{"error":"there is no backend ap; the backends are: chat"}"#
    );
    let r = call("POST", "/backends/chat/servers/z/drain", Some(token)).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.text(),
        r#"{"error":"backend chat has no server z; its servers are: a, b"}"#
    );

    let r = call("GET", "/status", None).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (401, "admin token required\n")
    );
    let r = call("GET", "/status", Some("not-the-token-at-all")).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (401, "admin token refused\n")
    );
    t.log
        .wait_for(
            0,
            &[
                "WARN",
                "admin request with a wrong token refused",
                "peer=127.0.0.1:",
                "path=/status",
            ],
            LOG_WAIT,
        )
        .await;

    // HEAD is answered like GET, without the body.
    let r = call("HEAD", "/status", Some(token)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.body.is_empty());
    let r = call("DELETE", "/status", Some(token)).await;
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));
}

#[test]
fn a_short_admin_token_is_refused_at_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = ConfigBuilder::new()
        .admin_yaml("bind: \"127.0.0.1:0\"\n  token: \"letmein\"")
        .backend("chat")
        .server("a", "127.0.0.1:1")
        .build();
    let path = write_config(dir.path(), &yaml);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:5:10: admin.token: the token is 7 bytes; at least 16 are needed",
            path.display()
        )),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_do_not_feed_on_a_log_file_beside_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = ConfigBuilder::new()
        .admin()
        .backend("chat")
        .server("a", dead_addr())
        .build();
    let path = write_config(dir.path(), &yaml);
    let t = TetherProcess::start(&path, "trace").await;
    t.log.wait_for(0, &["config file watched"], LOG_WAIT).await;
    // What a log file next to the config sees: a write per line tether logs.
    let other = dir.path().join("tether.log");
    for i in 0..5 {
        std::fs::write(&other, format!("line {i}\n")).unwrap();
    }
    // Then the config itself: once its reload is logged, the events before it were seen.
    let mark = t.log.mark();
    write_atomically(&path, &yaml);
    t.log.wait_for(mark, &["config unchanged"], LOG_WAIT).await;
    let machinery = t.log.matching(0, &["inotify"]);
    assert!(machinery.is_empty(), "{machinery:#?}");
    // tether's own debug lines are still there.
    let r = get(t.addr, None, &eio_path(Some("never-seen-sid")), &[]).await;
    assert_eq!(r.status, 400);
    t.log
        .wait_for(mark, &["DEBUG", "Session ID unknown"], LOG_WAIT)
        .await;
}
