//! `tether import` end to end: each config of tests/fixtures/migration (the shapes
//! Socket.IO scaling guides tell people to deploy in front of their nodes) imported, the
//! result put through `tether check`, then run with real Node `socket.io` nodes behind it
//! and a `socket.io-client` swarm through it that connects, upgrades and acks. The
//! fixtures' addresses are moved onto the test's loopback nodes with `--rewrite`, the
//! option a user moving hosts would use; nothing else of the output is touched.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::json;
use support::*;

fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures/migration").join(name)
}

fn tether(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(args)
        .output()
        .expect("tether runs")
}

fn import(file: &Path, rewrites: &[String]) -> Output {
    let mut args = vec!["import".to_owned(), file.display().to_string()];
    for r in rewrites {
        args.push("--rewrite".into());
        args.push(r.clone());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    tether(&args)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `tether check` on `yaml`, written to a file of `dir`.
fn check(dir: &Path, yaml: &str) -> Output {
    let path = dir.join("imported.yaml");
    std::fs::write(&path, yaml).unwrap();
    tether(&["check", path.to_str().unwrap()])
}

/// The `dropped` lines of an import's stderr, each as `LINE:COL: dropped `DIRECTIVE``.
fn dropped(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|l| {
            let at = l.find(": dropped `")?;
            let head = &l[..at];
            let pos = head.rsplitn(3, ':').take(2).collect::<Vec<_>>();
            let rest = &l[at + ": dropped `".len()..];
            let directive = &rest[..rest.find("`:")?];
            Some(format!("{}:{}: {directive}", pos[1], pos[0]))
        })
        .collect()
}

/// A free loopback port, for a listener whose port must be known before tether binds it
/// (a plain listener redirects to the TLS one's port).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until a polling handshake through `addr` succeeds (health checks may still be
/// rising when tether starts).
async fn until_handshake(addr: std::net::SocketAddr, path: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = get(addr, None, &format!("{path}?EIO=4&transport=polling"), &[]).await;
        if r.status == 200 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no handshake through tether: {} {}",
            r.status,
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn assert_swarm_passed(report: &serde_json::Value, clients: u64) {
    let n = |k: &str| report[k].as_u64().unwrap_or(u64::MAX);
    assert_eq!(n("connectErrors"), 0, "{report}");
    assert_eq!(n("connected"), clients, "{report}");
    assert_eq!(n("upgraded"), clients, "{report}");
    assert_eq!(n("acked"), clients, "{report}");
    assert_eq!(n("echoOk"), clients, "{report}");
    assert_eq!(n("disconnects"), 0, "{report}");
}

const CLIENTS: u64 = 60;

struct Case {
    file: &'static str,
    /// Addresses (or hosts, files) of the fixture, in order, moved to the test's nodes.
    servers: &'static [&'static str],
    /// The fixture's plain listener address.
    listen: &'static str,
    /// Extra rewrites: (FROM, TO) with TO possibly naming `{tls}` or `{cert}`.
    extra: &'static [(&'static str, &'static str)],
    /// `LINE:COL: directive` of each line reported as dropped.
    dropped: &'static [&'static str],
    /// The swarm's path.
    path: &'static str,
    /// Whether the swarm goes to the TLS listener.
    tls: bool,
    /// Whether the import has an affinity cookie: clients then keep cookies, and every
    /// one must come back with tether's.
    cookie: bool,
}

const CASES: &[Case] = &[
    Case {
        file: "nginx-ip-hash-socketio-path.conf",
        servers: &["server1:3000", "server2:3000", "server3:3000"],
        listen: "0.0.0.0:80",
        extra: &[],
        dropped: &["2:5: ip_hash"],
        path: "/socket.io/",
        tls: false,
        cookie: false,
    },
    Case {
        file: "nginx-ip-hash-long-timeouts.conf",
        servers: &["localhost:5001", "localhost:5002", "localhost:5003"],
        listen: "0.0.0.0:80",
        extra: &[],
        dropped: &[
            "2:5: ip_hash",
            "21:9: proxy_connect_timeout 7d",
            "22:9: proxy_send_timeout 7d",
            "23:9: proxy_read_timeout 7d",
        ],
        path: "/socket.io/",
        tls: false,
        cookie: false,
    },
    Case {
        file: "haproxy-balance-source.cfg",
        servers: &["localhost:5001", "localhost:5002", "localhost:5003"],
        listen: "0.0.0.0:80",
        extra: &[],
        dropped: &[
            "7:5: timeout client 50000ms",
            "15:5: balance source",
            "16:5: option http-server-close",
        ],
        path: "/socket.io/",
        tls: false,
        cookie: false,
    },
    Case {
        file: "haproxy-consistent-httpchk.cfg",
        servers: &["10.0.0.11:3000", "10.0.0.12:3000", "10.0.0.13:3000"],
        listen: "0.0.0.0:8080",
        extra: &[
            ("0.0.0.0:8443", "{tls}"),
            ("/etc/haproxy/certs/chat.pem", "{cert}"),
        ],
        dropped: &[
            "7:5: timeout client 30s",
            "9:5: timeout tunnel 1h",
            "18:5: balance source",
            "19:5: hash-type consistent",
        ],
        path: "/socket.io/",
        tls: true,
        cookie: false,
    },
    Case {
        file: "haproxy-cookie-insert.cfg",
        servers: &["app1.internal:3000", "app2.internal:3000"],
        listen: "0.0.0.0:80",
        extra: &[],
        dropped: &[
            "4:5: timeout client 60s",
            "6:5: timeout tunnel 1h",
            "13:5: balance roundrobin",
            "14:28: cookie SERVERID indirect nocache",
            "16:42: server app1 cookie app1",
            "17:42: server app2 cookie app2",
        ],
        path: "/socket.io/",
        tls: false,
        cookie: true,
    },
    Case {
        file: "k8s-ingress-cookie-affinity.yaml",
        servers: &["socketio-service:80"],
        listen: "0.0.0.0:80",
        extra: &[("socketio.example.com", "127.0.0.1")],
        dropped: &[
            "8:5: nginx.ingress.kubernetes.io/session-cookie-hash: sha1",
            "9:5: nginx.ingress.kubernetes.io/proxy-read-timeout: 3600",
        ],
        path: "/socket.io/",
        tls: false,
        cookie: true,
    },
];

#[test]
fn every_fixture_imports_and_its_output_passes_tether_check() {
    let dir = tempfile::tempdir().unwrap();
    let cert = combined_pem(dir.path());
    for case in CASES {
        let rewrites: Vec<String> = case
            .extra
            .iter()
            .filter(|(from, _)| from.starts_with('/'))
            .map(|(from, _)| format!("{from}={}", cert.display()))
            .collect();
        let out = import(&fixture(case.file), &rewrites);
        let stderr = text(&out.stderr);
        assert!(out.status.success(), "{}: {stderr}", case.file);
        assert_eq!(dropped(&stderr), case.dropped, "{}: {stderr}", case.file);
        let yaml = text(&out.stdout);
        let checked = check(dir.path(), &yaml);
        assert!(
            checked.status.success(),
            "{}: tether check: {}{}\n{yaml}",
            case.file,
            text(&checked.stdout),
            text(&checked.stderr)
        );
    }
}

/// A certificate and its key in one PEM file, as HAProxy's `crt` takes them.
fn combined_pem(dir: &Path) -> PathBuf {
    let dev = tether::tls::dev_ca::generate_dev_cert(&["localhost", "127.0.0.1"]).unwrap();
    let path = dir.join("chat.pem");
    std::fs::write(&path, format!("{}{}", dev.cert_pem, dev.key_pem)).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_imported_fixture_carries_a_real_socket_io_swarm() {
    let _heavy = HEAVY.lock().await;
    let cluster = Cluster::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    let cert = combined_pem(dir.path());
    for case in CASES {
        let tls_port = free_port();
        let mut rewrites: Vec<String> = case
            .servers
            .iter()
            .zip(&cluster.nodes)
            .map(|(from, node)| format!("{from}={}", node.addr))
            .collect();
        rewrites.push(format!("{}=127.0.0.1:0", case.listen));
        for (from, to) in case.extra {
            let to = to
                .replace("{tls}", &format!("127.0.0.1:{tls_port}"))
                .replace("{cert}", &cert.display().to_string());
            rewrites.push(format!("{from}={to}"));
        }
        let out = import(&fixture(case.file), &rewrites);
        assert!(out.status.success(), "{}: {}", case.file, text(&out.stderr));
        let yaml = text(&out.stdout);
        let checked = check(dir.path(), &yaml);
        assert!(
            checked.status.success(),
            "{}: {}",
            case.file,
            text(&checked.stderr)
        );
        let tether = TetherHandle::start(&yaml).await;
        let addrs = tether.runtime.local_addrs();
        let url = if case.tls {
            // The plain listener sends everyone to the TLS one, as the fixture's
            // `redirect scheme https` did.
            let r = get(addrs[0], None, "/socket.io/?EIO=4&transport=polling", &[]).await;
            assert_eq!(r.status, 308, "{}: {}", case.file, r.text());
            let location = r.header("location").unwrap_or_default().to_owned();
            assert!(
                location.starts_with(&format!("https://127.0.0.1:{tls_port}/")),
                "{location}"
            );
            format!("https://127.0.0.1:{}", addrs[1].port())
        } else {
            until_handshake(addrs[0], case.path).await;
            format!("http://{}", addrs[0])
        };
        let mut options = json!({
            "url": url, "clients": CLIENTS, "path": case.path, "broadcast": false, "holdMs": 100
        });
        if case.tls {
            // The test's own development CA: the client is told not to verify.
            options["ioOptions"] = json!({ "rejectUnauthorized": false });
        }
        if case.cookie {
            options["withCredentials"] = json!(true);
        }
        let report = swarm(options).await;
        println!("{}: {report}", case.file);
        assert_swarm_passed(&report, CLIENTS);
        if case.cookie {
            assert_eq!(report["cookieSeen"], CLIENTS, "{}: {report}", case.file);
        }
        tether.stop().await;
    }
}

/// Runs `tether import` on `input` written to a file named `name`.
fn import_text(name: &str, input: &str, from: Option<&str>) -> (Output, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, input).unwrap();
    let mut args = vec!["import", path.to_str().unwrap()];
    if let Some(f) = from {
        args.extend(["--from", f]);
    }
    let out = tether(&args);
    let stderr = text(&out.stderr).replace(&path.display().to_string(), name);
    (out, stderr)
}

#[test]
fn unusable_inputs_fail_with_their_place_and_print_nothing() {
    let cases: &[(&str, &str, Option<&str>, &str)] = &[
        (
            "garbage.conf",
            "\u{1}\u{2} this is not a config\n",
            None,
            "garbage.conf: 1:1: cannot tell what this file is",
        ),
        (
            "garbage.conf",
            "upstream u {\n  server a:1;\n",
            Some("nginx"),
            "garbage.conf:1:12: this `{` is never closed",
        ),
        (
            "no-upstream.conf",
            "server {\n    listen 80;\n    location / {\n        root /srv;\n    }\n}\n",
            None,
            "no-upstream.conf:1:1: no `upstream` block and no `proxy_pass` to a server",
        ),
        (
            "empty-backend.cfg",
            "frontend f\n    bind :80\n    default_backend b\n\nbackend b\n    balance source\n",
            None,
            "empty-backend.cfg:5:1: backend b has no `server` lines",
        ),
        (
            "unknown.conf",
            "upstream u {\n    server a:1;\n    sticky cookie srv_id;\n}\n",
            None,
            "unknown.conf:3:5: unknown directive `sticky`",
        ),
        (
            "unknown.cfg",
            "backend b\n    server a h:1\n    stick-table type ip size 1m\n",
            None,
            "unknown.cfg:3:5: unknown directive `stick-table`",
        ),
        (
            "bad.yaml",
            "kind: Ingress\nspec: [\n",
            Some("ingress"),
            "bad.yaml:3:1: not valid YAML",
        ),
    ];
    for (name, input, from, expected) in cases {
        let (out, stderr) = import_text(name, input, *from);
        assert!(!out.status.success(), "{name}: {stderr}");
        assert!(
            out.stdout.is_empty(),
            "{name}: printed {}",
            text(&out.stdout)
        );
        assert!(
            stderr.contains(expected),
            "{name}: expected {expected:?} in {stderr:?}"
        );
    }
}

#[test]
fn a_rewrite_that_matches_nothing_is_refused() {
    let out = import(
        &fixture("haproxy-cookie-insert.cfg"),
        &["app9.internal:3000=127.0.0.1:1".into()],
    );
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("has no address or file \"app9.internal:3000\""),
        "{stderr}"
    );
}
