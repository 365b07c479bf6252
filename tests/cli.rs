//! The `tether` binary's contract: `check` and `run` refuse a bad file with
//! `file:line:column: key: why` and a non-zero exit, and accept the shipped sample.

use std::path::Path;
use std::process::{Command, Output};

fn tether(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(args)
        .output()
        .expect("running the tether binary")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

const GOOD_HEAD: &str = "listeners:\n  - bind: 127.0.0.1:0\nbackends:\n  chat:\n";

#[test]
fn the_sample_config_passes_check() {
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/tether.yaml");
    let out = tether(&["check", "--config", sample]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 server(s)"));
}

#[test]
fn check_and_run_name_file_line_column_and_key_of_a_bad_value() {
    let dir = tempfile::tempdir().unwrap();
    // A port of this test's own (bound to port 0), for a listener the config must refuse
    // before binding: were it not refused, `run` would fail to bind it, not serve on it.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held = holder.local_addr().unwrap().to_string();
    let cases = [
        // An unknown (misspelt) key, with the key it was probably meant to be.
        (
            "typo.yaml",
            format!("{GOOD_HEAD}    servers: [{{ id: a, addr: \"127.0.0.1:1\" }}]\n    placment: hash\n"),
            ":6:5: backends.chat.placment: unknown key",
            Some("did you mean `placement`"),
        ),
        // A value out of range, found after parsing, mapped back to its position.
        (
            "range.yaml",
            format!("{GOOD_HEAD}    load_factor: 0.9\n    servers: [{{ id: a, addr: \"127.0.0.1:1\" }}]\n"),
            ":5:18: backends.chat.load_factor:",
            None,
        ),
        // A route naming a backend that does not exist.
        (
            "route.yaml",
            format!("routes:\n  - {{ path_prefix: /, backend: nope }}\n{GOOD_HEAD}    servers: [{{ id: a, addr: \"127.0.0.1:1\" }}]\n"),
            ":2:32: routes[0].backend: unknown backend `nope`",
            None,
        ),
        // A port out of range is said to be, not "missing" (issue 13).
        (
            "port.yaml",
            "listeners:\n  - bind: 127.0.0.1:99999\nbackends:\n  chat:\n    servers: [{ id: a, addr: \"127.0.0.1:1\" }]\n".to_owned(),
            ":2:11: listeners[0].bind: invalid address \"127.0.0.1:99999\": port 99999 is out of range: 1-65535, or 0 for any free port",
            None,
        ),
        (
            "addr.yaml",
            format!("{GOOD_HEAD}    servers: [{{ id: a, addr: \"127.0.0.1:99999\" }}]\n"),
            ":5:30: backends.chat.servers[0].addr: invalid address \"127.0.0.1:99999\": port 99999 is out of range 1-65535",
            None,
        ),
        // A server that is tether's own listener: every request would loop (issue 13).
        (
            "loop.yaml",
            format!("listeners:\n  - bind: {held}\nbackends:\n  chat:\n    servers: [{{ id: a, addr: \"{held}\" }}]\n"),
            ":5:30: backends.chat.servers[0].addr: {held} is tether's own listeners[0] (bind {held}): requests would loop back into tether",
            None,
        ),
        // A Redis URL the registry could never use (issue 16).
        (
            "registry.yaml",
            format!("registry:\n  redis: \"redis://127.0.0.1:port\"\n{GOOD_HEAD}    servers: [{{ id: a, addr: \"127.0.0.1:1\" }}]\n"),
            ":2:10: registry.redis: \"redis://127.0.0.1:port\" is not a Redis URL",
            Some("e.g. redis://127.0.0.1:6379"),
        ),
        // A backend's cap on new sessions at 0, negative or garbled (issue 17).
        (
            "storm-zero.yaml",
            format!("{GOOD_HEAD}    handshakes: {{ per_second: 0, burst: 100 }}\n    servers: [{{ id: a, addr: \"127.0.0.1:1\" }}]\n"),
            ":5:31: backends.chat.handshakes.per_second: 0 is not a rate above 0",
            None,
        ),
        (
            "storm-negative.yaml",
            format!("{GOOD_HEAD}    handshakes: {{ per_second: 100, burst: -5 }}\n    servers: [{{ id: a, addr: \"127.0.0.1:1\" }}]\n"),
            ":5:",
            Some("backends.chat.handshakes.burst"),
        ),
        (
            "storm-garbled.yaml",
            format!("{GOOD_HEAD}    handshakes: {{ per_second: 100/s, burst: 100 }}\n    servers: [{{ id: a, addr: \"127.0.0.1:1\" }}]\n"),
            ":5:",
            Some("backends.chat.handshakes.per_second"),
        ),
        // Broken YAML.
        (
            "syntax.yaml",
            format!("{GOOD_HEAD}    servers: [\n"),
            ":6:1: invalid YAML",
            None,
        ),
    ];
    for (name, text, located, also) in cases {
        let located = located.replace("{held}", &held);
        let path = write(dir.path(), name, &text);
        for cmd in ["check", "run"] {
            let out = tether_exits(
                &[cmd, "--config", &path],
                std::time::Duration::from_secs(30),
            );
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{cmd} {name} must fail");
            assert!(
                err.contains(&format!("{path}{located}")),
                "{cmd} {name}: {err}"
            );
            if let Some(also) = also {
                assert!(err.contains(also), "{cmd} {name}: {err}");
            }
        }
    }
    drop(holder);
}

#[test]
fn the_config_file_can_be_named_as_an_argument_too() {
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/tether.yaml");
    // `tether check FILE`, as `nginx -t -c` and `haproxy -c -f` users type it.
    let out = tether(&["check", sample]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 server(s)"));
    // `run FILE` reads that file (a bad one, so that it stops at once).
    let dir = tempfile::tempdir().unwrap();
    let bad = write(dir.path(), "bad.yaml", "listeners: 3\n");
    let out = tether_exits(&["run", &bad], std::time::Duration::from_secs(30));
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!("tether: {bad}:1:12: listeners: expected a list, got the number 3")
    );
    // Both at once is ambiguous: refused.
    assert!(!tether(&["check", sample, "--config", sample])
        .status
        .success());
}

#[test]
fn a_missing_default_config_says_it_is_the_default_and_where_it_was_looked_for() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().canonicalize().unwrap();
    for cmd in ["check", "run"] {
        let out = Command::new(env!("CARGO_BIN_EXE_tether"))
            .arg(cmd)
            .current_dir(&cwd)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cmd}");
        assert_eq!(
            err.trim(),
            format!(
                "tether: conf/tether.yaml: cannot read the config file: No such file or directory (os error 2); looked for {}, as relative paths are read from the working directory; no config file was named, and this is the default: name one, as in `tether {cmd} path/to/tether.yaml`",
                cwd.join("conf/tether.yaml").display()
            ),
            "{cmd}"
        );
        assert_said_once(&err);
    }
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let out = tether(&["check", "--config", "/nonexistent/tether.yaml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/tether.yaml"));
}

#[test]
fn cert_writes_a_dev_ca_and_a_certificate_tether_can_serve() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    let run = tether(&[
        "cert",
        "--out",
        out.to_str().unwrap(),
        "--name",
        "localhost",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        assert!(out.join(f).exists(), "{f} written");
    }
    let yaml = format!(
        "listeners:\n  - bind: 127.0.0.1:0\n    tls:\n      certificates:\n        - {{ cert: \"{}\", key: \"{}\" }}\nbackends:\n  b:\n    servers: [{{ id: a, addr: \"127.0.0.1:1\" }}]\n",
        out.join("cert.pem").display(),
        out.join("key.pem").display()
    );
    let path = write(dir.path(), "tls.yaml", &yaml);
    // `check` validates the file; `run` would load the pair: do it through the library.
    assert!(tether(&["check", "--config", &path]).status.success());
    let config = tether::config::load(Path::new(&path)).unwrap();
    let tls = config.listeners[0].tls.as_ref().unwrap();
    assert!(tether::tls::acceptor(tls).is_ok());
    // `check` reads the pair too: a key that does not match is caught before `run`.
    let other = dir.path().join("other");
    assert!(tether(&["cert", "--out", other.to_str().unwrap()])
        .status
        .success());
    let mismatched = yaml.replace(
        &out.join("key.pem").display().to_string(),
        &other.join("key.pem").display().to_string(),
    );
    let bad = write(dir.path(), "bad.yaml", &mismatched);
    let out_bad = tether(&["check", "--config", &bad]);
    assert!(!out_bad.status.success());
    assert!(
        String::from_utf8_lossy(&out_bad.stderr).contains("key.pem"),
        "{}",
        String::from_utf8_lossy(&out_bad.stderr)
    );
    // It will not overwrite without --force.
    let again = tether(&["cert", "--out", out.to_str().unwrap()]);
    assert!(!again.status.success());
}

/// Runs the binary like [`tether`], for a command expected to fail at once (`run` with a
/// config it cannot start from); one that keeps running past `limit` is killed and fails
/// the test instead of hanging it.
fn tether_exits(args: &[&str], limit: std::time::Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running the tether binary");
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().expect("polling tether").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "tether {args:?} still running after {limit:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// No line says one thing twice: the failure the issue saw was a cause printed by its
/// error's message and again as that error's source (`...: No such file or directory
/// (os error 2): No such file or directory (os error 2)`).
fn assert_said_once(stderr: &str) {
    assert!(!stderr.trim().is_empty(), "an error is printed");
    for line in stderr.lines() {
        let parts: Vec<&str> = line
            .split(": ")
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        for (i, part) in parts.iter().enumerate() {
            assert!(
                !parts[i + 1..].contains(part),
                "{part:?} is said twice in {line:?}"
            );
        }
        assert!(
            line.matches("(os error").count() <= 1,
            "an OS error is said twice in {line:?}"
        );
    }
}

#[test]
fn a_missing_config_file_is_said_once() {
    let dir = tempfile::tempdir().unwrap();
    let nope = dir.path().join("nope.yaml");
    let nope = nope.to_str().unwrap();
    for cmd in ["check", "run"] {
        let out = tether_exits(&[cmd, "--config", nope], std::time::Duration::from_secs(30));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cmd}");
        assert_eq!(
            err.trim(),
            format!("tether: {nope}: cannot read the config file: No such file or directory (os error 2)"),
            "{cmd}"
        );
        assert_said_once(&err);
    }
}

#[test]
fn a_port_in_use_is_said_once() {
    let dir = tempfile::tempdir().unwrap();
    // Held by the test, so tether's bind fails.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let servers = "    servers: [{ id: a, addr: \"127.0.0.1:1\" }]\n";
    // Each says where the file asks for the address: which of several is taken.
    let cases = [
        (
            "listener.yaml",
            format!("listeners:\n  - bind: 127.0.0.1:0\n  - bind: 127.0.0.1:{port}\nbackends:\n  chat:\n{servers}"),
            format!("3:11: listeners[1].bind: cannot listen on 127.0.0.1:{port}: Address already in use (os error 98)"),
        ),
        (
            "admin.yaml",
            format!("listeners:\n  - bind: 127.0.0.1:0\nadmin:\n  bind: 127.0.0.1:{port}\nbackends:\n  chat:\n{servers}"),
            format!("4:9: admin.bind: cannot listen on 127.0.0.1:{port}: Address already in use (os error 98)"),
        ),
    ];
    for (name, yaml, expected) in cases {
        let path = write(dir.path(), name, &yaml);
        let expected = format!("tether: {path}:{expected}");
        let out = tether_exits(
            &["run", "--config", &path],
            std::time::Duration::from_secs(30),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}");
        assert!(
            err.lines().any(|l| l == expected),
            "{name}: expected {expected:?} in {err}"
        );
        assert_said_once(&err);
    }
    drop(taken);
}

/// A development certificate and key written into `dir` (as `tether cert` does).
fn dev_pair(dir: &Path, names: &[&str]) -> (String, String) {
    let paths = tether::tls::dev_ca::generate_dev_cert(names)
        .unwrap()
        .write(dir)
        .unwrap();
    let s = |p: std::path::PathBuf| p.to_str().unwrap().to_owned();
    (s(paths.cert), s(paths.key))
}

fn tls_config(cert: &str, key: &str, ca: &str) -> String {
    format!(
        "listeners:\n  - bind: 127.0.0.1:0\n    tls:\n      certificates:\n        - cert: \"{cert}\"\n          key: \"{key}\"\nbackends:\n  chat:\n    servers: [{{ id: a, addr: \"127.0.0.1:1\" }}]\n    tls:\n      ca: \"{ca}\"\n"
    )
}

#[test]
fn a_bad_certificate_file_is_reported_at_the_key_that_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (cert, key) = dev_pair(&d.join("good"), &["localhost"]);
    let (_, other_key) = dev_pair(&d.join("other"), &["localhost"]);
    let ca = d.join("good/ca.pem").to_str().unwrap().to_owned();
    let nope = d.join("nope.pem").to_str().unwrap().to_owned();
    let garbage = write(d, "garbage.pem", "not a certificate\n");
    let missing = "No such file or directory (os error 2)";
    let cases = [
        (
            tls_config(&nope, &key, &ca),
            format!(":5:17: listeners[0].tls.certificates[0].cert: cannot read {nope}: {missing}"),
        ),
        (
            tls_config(&cert, &nope, &ca),
            format!(":6:16: listeners[0].tls.certificates[0].key: cannot read {nope}: {missing}"),
        ),
        (
            tls_config(&garbage, &key, &ca),
            format!(":5:17: listeners[0].tls.certificates[0].cert: {garbage}: no certificate found"),
        ),
        (
            tls_config(&cert, &cert, &ca),
            format!(":6:16: listeners[0].tls.certificates[0].key: {cert}: no private key found"),
        ),
        (
            tls_config(&cert, &other_key, &ca),
            format!(":6:16: listeners[0].tls.certificates[0].key: {other_key}: private key does not match the certificate in {cert}"),
        ),
        (
            tls_config(&cert, &key, &nope),
            format!(":11:11: backends.chat.tls.ca: cannot read {nope}: {missing}"),
        ),
        (
            tls_config(&cert, &key, &garbage),
            format!(":11:11: backends.chat.tls.ca: {garbage}: no certificate found"),
        ),
    ];
    let good = write(d, "good.yaml", &tls_config(&cert, &key, &ca));
    assert!(tether(&["check", "--config", &good]).status.success());
    for (i, (yaml, located)) in cases.iter().enumerate() {
        let path = write(d, &format!("case{i}.yaml"), yaml);
        for cmd in ["check", "run"] {
            let out = tether_exits(
                &[cmd, "--config", &path],
                std::time::Duration::from_secs(30),
            );
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{cmd} case {i}");
            assert!(
                err.contains(&format!("tether: {path}{located}")),
                "{cmd} case {i}: expected {located:?} in {err}"
            );
            assert_said_once(&err);
        }
    }
}

#[test]
fn a_missing_relative_certificate_says_where_it_was_looked_for() {
    let dir = tempfile::tempdir().unwrap();
    let (_, key) = dev_pair(&dir.path().join("certs"), &["localhost"]);
    let path = write(
        dir.path(),
        "tls.yaml",
        &tls_config(
            "nope.pem",
            &key,
            &dir.path().join("certs/ca.pem").to_string_lossy(),
        ),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["check", "--config", &path])
        .current_dir(dir.path().join("certs"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let cwd = dir.path().join("certs").canonicalize().unwrap();
    assert!(
        err.contains(&format!(
            "cannot read nope.pem: No such file or directory (os error 2); looked for {}, as relative paths are read from the working directory",
            cwd.join("nope.pem").display()
        )),
        "{err}"
    );
}

/// `tether run` as a child whose output is read line by line while it runs; killed on drop.
struct Running {
    child: std::process::Child,
    stdout: std::sync::mpsc::Receiver<String>,
    stderr: std::sync::mpsc::Receiver<String>,
    /// Every stderr line seen so far, for failure messages.
    seen: Vec<String>,
}

impl Running {
    fn start(config: &str) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tether"))
            .args(["run", "--config", config])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("running the tether binary");
        fn lines(pipe: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        }
        Running {
            stdout: lines(child.stdout.take().unwrap()),
            stderr: lines(child.stderr.take().unwrap()),
            child,
            seen: Vec::new(),
        }
    }

    /// The first stdout line starting with `prefix`, the rest of it.
    fn stdout_after(&self, prefix: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.to_owned();
                    }
                }
                Err(e) => panic!("no {prefix:?} on stdout: {e}"),
            }
        }
    }

    /// Waits for a stderr line holding every one of `parts`.
    fn stderr_line(&mut self, parts: &[&str]) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if parts.iter().all(|p| line.contains(p)) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "no line with {parts:?} on stderr ({e}):\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET /status` on the admin API.
fn status(admin: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        s,
        "GET /status HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

/// A stand-in for a stock `new Server().listen(port)`: 404 to every path it does not
/// serve (here, to every path: the health check is what is looked at). Counts the
/// connections it takes.
fn plain_socket_io_server() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = std::sync::Arc::clone(&seen);
    std::thread::spawn(move || {
        for mut s in l.incoming().map_while(Result::ok) {
            use std::io::{Read, Write};
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            drop(s);
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    (addr, seen)
}

#[test]
fn the_sample_config_keeps_plain_socket_io_servers_up() {
    let mut text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/tether.yaml")).unwrap();
    let servers: Vec<_> = (0..3).map(|_| plain_socket_io_server()).collect();
    let binds = [
        ("127.0.0.1:8080", "127.0.0.1:0".to_owned()),
        ("127.0.0.1:9900", "127.0.0.1:0".to_owned()),
    ];
    let nodes = (1..=3).map(|i| (format!("127.0.0.1:300{i}"), servers[i - 1].0.to_string()));
    for (from, to) in binds
        .into_iter()
        .map(|(f, t)| (f.to_owned(), t))
        .chain(nodes)
    {
        assert!(text.contains(&from), "the sample has {from}");
        text = text.replace(&from, &to);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "tether.yaml", &text);
    let mut tether = Running::start(&path);
    let admin = tether.stdout_after("tether admin on http://");
    // Each server probed `fall` (3 in the sample) + 1 times: the verdicts of the first
    // `fall` are in. An HTTP check of a path these servers do not serve would have
    // marked them down by then.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while servers
        .iter()
        .any(|(_, seen)| seen.load(std::sync::atomic::Ordering::SeqCst) < 4)
    {
        assert!(std::time::Instant::now() < deadline, "probes did not come");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let status = status(&admin);
    let health: Vec<&str> = status["backends"][0]["servers"]
        .as_array()
        .expect("servers in /status")
        .iter()
        .map(|s| s["health"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(health, ["up", "up", "up"], "{status}");
    drop(tether.child.kill());
    let _ = tether.child.wait();
    let logged: Vec<String> = tether.stderr.try_iter().collect();
    assert!(
        !logged.iter().any(|l| l.contains("server down")),
        "{logged:?}"
    );
}

#[test]
fn a_server_taken_down_by_a_404_is_told_of_tcp_checks() {
    let (server, _) = plain_socket_io_server();
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "tether.yaml",
        &format!("listeners:\n  - bind: 127.0.0.1:0\nbackends:\n  chat:\n    health: {{ path: /health, interval: 100ms, timeout: 1s, rise: 1, fall: 1 }}\n    servers: [{{ id: a, addr: \"{server}\" }}]\n"),
    );
    let mut tether = Running::start(&path);
    tether.stderr_line(&[
        "WARN",
        "server down",
        "status 404, expected 200 (does the server answer GET /health? use health.mode: tcp otherwise)",
    ]);
}

/// `POST /reload` on the admin API: the status code and the JSON answer.
fn reload(admin: &str) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        s,
        "POST /reload HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    (
        status,
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}")),
    )
}

#[test]
fn run_logs_warnings_and_a_reload_with_a_bad_certificate_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let head = "listeners:\n  - bind: 127.0.0.1:0\nadmin:\n  bind: 127.0.0.1:0\nbackends:\n  chat:\n    servers: [{ id: a, addr: \"127.0.0.1:1\" }]\n";
    let path = write(
        dir.path(),
        "tether.yaml",
        &format!("{head}    timeouts: {{ response: 10ms }}\n"),
    );
    let mut tether = Running::start(&path);
    let addr = tether.stdout_after("tether listening on http://");
    let admin = tether.stdout_after("tether admin on http://");
    // At start-up, at WARN, at the key.
    tether.stderr_line(&[
        "WARN",
        &format!("{path}:8:27: backends.chat.timeouts.response: 10ms is too short for a long poll"),
    ]);

    // A certificate that is not there: refused at its key, the running config stays.
    let nope = dir.path().join("nope.pem");
    let nope = nope.to_str().unwrap();
    let bad = format!(
        "listeners:\n  - bind: 127.0.0.1:0\n  - bind: 127.0.0.1:0\n    tls:\n      certificates: [{{ cert: \"{nope}\", key: \"{nope}\" }}]\nadmin:\n  bind: 127.0.0.1:0\nbackends:\n  chat:\n    servers: [{{ id: a, addr: \"127.0.0.1:1\" }}]\n    timeouts: {{ tunnel_idle: 10s }}\n"
    );
    write(dir.path(), "tether.yaml", &bad);
    let located = format!(
        "{path}:5:30: listeners[1].tls.certificates[0].cert: cannot read {nope}: No such file or directory (os error 2)"
    );
    let (status, answer) = reload(&admin);
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["error"], located.as_str(), "{answer}");
    assert_said_once(&located);
    tether.stderr_line(&["config rejected", &located]);
    // Still serving as before: the old listener answers, no TLS listener was added.
    assert!(std::net::TcpStream::connect(&addr).is_ok());

    // A good file with a value that cannot work: put in force, and warned of again.
    write(
        dir.path(),
        "tether.yaml",
        &format!("{head}    timeouts: {{ tunnel_idle: 10s }}\n"),
    );
    let (status, answer) = reload(&admin);
    assert_eq!(status, 200, "{answer}");
    tether.stderr_line(&[
        "WARN",
        &format!("{path}:8:30: backends.chat.timeouts.tunnel_idle: 10s would close quiet WebSocket sessions"),
    ]);
}

#[test]
fn check_prints_what_cannot_work_and_still_passes() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "warn.yaml",
        &format!("{GOOD_HEAD}    servers: [{{ id: a, addr: \"127.0.0.1:1\" }}]\n    timeouts: {{ response: 10ms }}\n    health: {{ interval: 1s, timeout: 2s }}\n"),
    );
    let out = tether(&["check", "--config", &path]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with(&format!("tether: warning: {path}:6:27: backends.chat.timeouts.response: 10ms is too short for a long poll")),
        "{err}"
    );
    assert!(
        lines[1].starts_with(&format!("tether: warning: {path}:7:38: backends.chat.health.timeout: 2s is longer than the interval (1s)")),
        "{err}"
    );
    assert_said_once(&err);
    assert!(
        String::from_utf8_lossy(&out.stdout).ends_with("1 server(s)), 2 warning(s)\n"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The README's sentence on durations and the parser agree: every example it gives as
/// accepted is, every one it gives as refused is, with the accepted forms in the message.
#[test]
fn the_readme_duration_grammar_is_the_parsers() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("\nDurations: ")
        .expect("a Durations: paragraph");
    let para = &readme[start..start + readme[start..].find("\n\n").unwrap()];
    let (accepted, refused) = para.split_once("Anything").expect("accepted, then refused");
    let examples = |text: &str| -> Vec<String> {
        text.split('`')
            .skip(1)
            .step_by(2)
            .filter(|e| e.starts_with(|c: char| c.is_ascii_digit()))
            .map(str::to_owned)
            .collect()
    };
    let (accepted, refused) = (examples(accepted), examples(refused));
    assert!(
        accepted.len() >= 5 && refused.len() >= 3,
        "{accepted:?} {refused:?}"
    );
    let parse = |d: &str| {
        let yaml = format!("shutdown_grace: \"{d}\"\n{GOOD_HEAD}    servers: [{{ id: a, addr: \"127.0.0.1:1\" }}]\n");
        tether::config::parse(&yaml, Path::new("d.yaml"))
    };
    for d in &accepted {
        assert!(parse(d).is_ok(), "{d}: {}", parse(d).unwrap_err());
    }
    for d in &refused {
        let err = parse(d).expect_err(d).to_string();
        assert!(
            err.starts_with(&format!(
                "d.yaml:1:17: shutdown_grace: invalid duration \"{d}\": "
            )) && err.contains("500ms, 1.5s, 2m, 1h30m or 365d"),
            "{err}"
        );
    }
}
