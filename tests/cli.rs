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
        // Broken YAML.
        (
            "syntax.yaml",
            format!("{GOOD_HEAD}    servers: [\n"),
            ":6:1: invalid YAML",
            None,
        ),
    ];
    for (name, text, located, also) in cases {
        let path = write(dir.path(), name, &text);
        for cmd in ["check", "run"] {
            let out = tether(&[cmd, "--config", &path]);
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
    let cases = [
        (
            "listener.yaml",
            format!("listeners:\n  - bind: 127.0.0.1:{port}\nbackends:\n  chat:\n{servers}"),
            format!("tether: cannot listen on 127.0.0.1:{port}: Address already in use (os error 98)"),
        ),
        (
            "admin.yaml",
            format!("listeners:\n  - bind: 127.0.0.1:0\nadmin:\n  bind: 127.0.0.1:{port}\nbackends:\n  chat:\n{servers}"),
            format!("tether: admin: cannot listen on 127.0.0.1:{port}: Address already in use (os error 98)"),
        ),
    ];
    for (name, yaml, expected) in cases {
        let path = write(dir.path(), name, &yaml);
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
