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
