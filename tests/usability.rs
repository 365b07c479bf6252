//! What a new user meets in the first hour, held in place: the README's commands are the
//! binary's real options, scripts find the binary wherever cargo builds it, logs carry no
//! escape codes outside a terminal, the demo's text for people has no machine lines in
//! it, and the licence Cargo.toml names is in the repository.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

const COMMANDS: &[&str] = &[
    "run", "check", "import", "cert", "health", "node", "pool", "demo", "bench",
];

fn readme() -> String {
    std::fs::read_to_string(repo().join("README.md")).expect("README.md")
}

/// `tether COMMAND --help`.
fn help(command: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args([command, "--help"])
        .output()
        .expect("tether runs");
    assert!(out.status.success(), "{command} --help: {:?}", out.status);
    String::from_utf8(out.stdout).expect("utf-8 help")
}

/// Long options of a help text, each with its possible values when it lists them.
fn options_in_help(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut options = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut in_values = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let option = trimmed
            .strip_prefix("-")
            .filter(|_| line.starts_with("  -") || line.starts_with("      --"))
            .and_then(|_| {
                trimmed
                    .split_whitespace()
                    .find(|w| w.starts_with("--"))
                    .map(|w| w.trim_end_matches(',').to_owned())
            });
        if let Some(o) = option {
            if o != "--help" && o != "--version" {
                options.insert(o.clone(), BTreeSet::new());
                current = Some(o);
            } else {
                current = None;
            }
            in_values = false;
        } else if trimmed.starts_with("Possible values:") {
            in_values = true;
        } else if in_values {
            match (trimmed.strip_prefix("- "), &current) {
                (Some(v), Some(o)) => {
                    let value = v.split(':').next().unwrap_or(v).trim().to_owned();
                    options.get_mut(o).expect("current option").insert(value);
                }
                _ => in_values = false,
            }
        }
    }
    options
}

/// Long options written after `tether COMMAND` in `text`, with the `a|b|c` values
/// written right after one.
fn options_in_text(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut options = BTreeMap::new();
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c == '[' || c == ']')
        .filter(|w| !w.is_empty())
        .collect();
    for (i, w) in words.iter().enumerate() {
        let Some(at) = w.find("--") else { continue };
        let name: String = w[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        if name.len() <= 2 {
            continue;
        }
        let values = options.entry(name).or_insert_with(BTreeSet::new);
        if let Some(next) = words.get(i + 1) {
            if next.contains('|') && !next.starts_with('-') {
                values.extend(next.split('|').map(str::to_owned));
            }
        }
    }
    options
}

/// The README's Commands block, per command (continuation lines joined).
fn commands_block() -> BTreeMap<String, String> {
    let text = readme();
    let start = text
        .find("## Commands\n\n```\n")
        .expect("a Commands section");
    let body = &text[start + "## Commands\n\n```\n".len()..];
    let body = &body[..body.find("```").expect("the block ends")];
    let mut per_command: BTreeMap<String, String> = BTreeMap::new();
    let mut current = String::new();
    for line in body.lines() {
        let line = line.split('#').next().unwrap_or("");
        if let Some(rest) = line.strip_prefix("tether ") {
            let mut parts = rest.splitn(2, ' ');
            current = parts.next().unwrap_or("").to_owned();
            if current.starts_with('[') {
                // Options of every command, written once: `tether [--global ...] COMMAND`.
                per_command.entry(String::new()).or_default().push_str(rest);
                current.clear();
                continue;
            }
            per_command
                .entry(current.clone())
                .or_default()
                .push_str(parts.next().unwrap_or(""));
        } else if !current.is_empty() {
            let entry = per_command.get_mut(&current).expect("current command");
            entry.push(' ');
            entry.push_str(line);
        }
    }
    per_command
}

#[test]
fn the_readme_commands_block_is_the_binary_s_real_options() {
    let block = commands_block();
    let listed: BTreeSet<&str> = block
        .keys()
        .map(String::as_str)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        listed,
        COMMANDS.iter().copied().collect(),
        "commands in the README's block"
    );
    // Options of every command (`tether --help`), written once on the block's first line.
    let top = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .arg("--help")
        .output()
        .expect("tether runs");
    let global = options_in_help(&String::from_utf8_lossy(&top.stdout));
    let written_global = options_in_text(block.get("").map_or("", String::as_str));
    assert_eq!(
        written_global.keys().collect::<BTreeSet<_>>(),
        global.keys().collect::<BTreeSet<_>>(),
        "options of every command in the README's block (its `tether [--...]` line)"
    );
    for command in COMMANDS {
        let mut real = options_in_help(&help(command));
        real.retain(|o, _| !global.contains_key(o));
        let written = options_in_text(&block[*command]);
        let real_names: BTreeSet<&String> = real.keys().collect();
        let written_names: BTreeSet<&String> = written.keys().collect();
        assert_eq!(
            written_names, real_names,
            "`tether {command}` in the README's Commands block against `tether {command} --help`"
        );
        for (option, values) in &written {
            if !values.is_empty() {
                assert_eq!(
                    values, &real[option],
                    "values of `tether {command} {option}` in the README"
                );
            }
        }
    }
}

#[test]
fn every_command_line_in_the_docs_uses_options_that_exist() {
    let real: BTreeMap<&str, BTreeMap<String, BTreeSet<String>>> = COMMANDS
        .iter()
        .map(|c| (*c, options_in_help(&help(c))))
        .collect();
    let mut docs = vec![("README.md".to_owned(), readme())];
    for dir in ["examples", "benches", "conf"] {
        for entry in std::fs::read_dir(repo().join(dir)).expect("dir") {
            let path = entry.expect("entry").path();
            if path.is_file() {
                if let Ok(text) = std::fs::read_to_string(&path) {
                    docs.push((path.display().to_string(), text));
                }
            }
        }
    }
    let mut checked = 0;
    for (file, text) in &docs {
        for (n, line) in text.lines().enumerate() {
            for command in COMMANDS {
                for prefix in [format!("tether {command} "), format!("-- {command} ")] {
                    let Some(at) = line.find(&prefix) else {
                        continue;
                    };
                    // Up to the end of the command: a pipe, a `;`, a closing backtick.
                    let rest = &line[at + prefix.len()..];
                    let rest = rest.split(['|', ';', '`', ')']).next().unwrap_or("");
                    for option in options_in_text(rest).keys() {
                        assert!(
                            real[command].contains_key(option),
                            "{file}:{}: `{command} {option}` is not an option of `tether {command}`",
                            n + 1
                        );
                        checked += 1;
                    }
                }
            }
        }
    }
    // A floor, not a count: the docs name the config file as an argument now
    // (`tether check FILE`), which has no option to check.
    assert!(
        checked > 15,
        "only {checked} options found: is the parser right?"
    );
}

#[test]
fn scripts_find_the_binary_wherever_cargo_builds_it() {
    // `./target/release/tether` breaks under CARGO_TARGET_DIR (or a workspace elsewhere):
    // scripts ask cargo where the target directory is.
    let mut scripts = Vec::new();
    for dir in ["examples", "benches", "tests", ".ci", "fuzz"] {
        for entry in std::fs::read_dir(repo().join(dir)).expect("dir") {
            let path = entry.expect("entry").path();
            let is_script = path.extension().is_some_and(|e| e == "sh")
                || path.file_name().is_some_and(|n| n == "run");
            if is_script {
                scripts.push(path);
            }
        }
    }
    assert!(scripts.len() >= 5, "{scripts:?}");
    for path in scripts {
        let text = std::fs::read_to_string(&path).expect("script");
        for (n, line) in text.lines().enumerate() {
            assert!(
                !line.contains("./target/") && !line.contains(" target/release"),
                "{}:{}: a hard-coded target directory: {line}",
                path.display(),
                n + 1
            );
        }
    }
}

/// The README's `tether cert --out DIR` writes a private key into the clone: DIR is
/// ignored by git, so it cannot be committed by a `git add -A`, and the sample config's
/// TLS example reads its certificate from the same DIR.
#[test]
fn the_readme_s_certificate_directory_is_ignored_and_the_sample_names_it() {
    let readme = readme();
    let command = readme
        .lines()
        .find(|l| l.contains("-- cert --out "))
        .expect("a `cert --out` command in the README");
    let dir = command
        .split("--out ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the directory after --out")
        .trim_end_matches('/');
    let ignore = std::fs::read_to_string(repo().join(".gitignore")).expect(".gitignore");
    let ignored = ignore
        .lines()
        .map(str::trim)
        .any(|l| l.trim_start_matches('/').trim_end_matches('/') == dir);
    assert!(
        ignored,
        "{dir} (holding key.pem) is not in .gitignore:\n{ignore}"
    );
    let sample = std::fs::read_to_string(repo().join("conf/tether.yaml")).expect("sample");
    let named: Vec<&str> = sample
        .lines()
        .filter_map(|l| {
            let l = l.trim_start_matches(['#', ' ', '-']);
            l.strip_prefix("cert: ").or_else(|| l.strip_prefix("key: "))
        })
        .map(|v| v.split_whitespace().next().unwrap_or(""))
        .collect();
    assert!(
        named.len() >= 2,
        "the sample shows a certificate and key: {named:?}"
    );
    for path in named {
        assert!(
            path.starts_with(&format!("{dir}/")),
            "conf/tether.yaml names {path}, the README writes certificates into {dir}"
        );
    }
}

/// The README's drain recipe ends: a wait for `drained` alone lasts as long as the
/// longest-connected client (hours), so it is held to a `timeout`, after which `maint`
/// moves the sessions that are left. And `sh` can parse it as written.
#[test]
fn the_readme_s_drain_recipe_cannot_wait_for_ever() {
    let readme = readme();
    let block = readme
        .split("```")
        .find(|b| b.contains("/drain") && b.starts_with("sh\n"))
        .expect("a sh block with the drain recipe");
    let commands: Vec<&str> = block
        .lines()
        .skip(1)
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .collect();
    let at = |what: &str| {
        commands
            .iter()
            .position(|c| c.contains(what))
            .unwrap_or_else(|| panic!("no {what:?} in {commands:#?}"))
    };
    let (drain, wait, maint) = (at("/drain"), at("drained"), at("/maint"));
    assert!(
        commands[wait].starts_with("timeout "),
        "the wait for drained is not bounded: {}",
        commands[wait]
    );
    assert!(drain < wait && wait < maint, "{commands:#?}");
    let parsed = std::process::Command::new("sh")
        .args(["-n", "-c", block.trim_start_matches("sh\n")])
        .output()
        .expect("sh");
    assert!(
        parsed.status.success(),
        "{}",
        String::from_utf8_lossy(&parsed.stderr)
    );
}

#[test]
fn the_licence_cargo_toml_names_is_in_the_repository() {
    let manifest = std::fs::read_to_string(repo().join("Cargo.toml")).expect("Cargo.toml");
    assert!(
        manifest.contains("license = \"MIT OR Apache-2.0\""),
        "the licence changed: update this test and the files"
    );
    let mit = std::fs::read_to_string(repo().join("LICENSE-MIT")).expect("LICENSE-MIT");
    assert!(mit.contains("Permission is hereby granted, free of charge"));
    let apache = std::fs::read_to_string(repo().join("LICENSE-APACHE")).expect("LICENSE-APACHE");
    assert!(apache.contains("Apache License") && apache.contains("Version 2.0"));
}

/// What `tether ARGS` (a node) writes on stderr through a pipe from start to a SIGTERM
/// stop, with `NO_COLOR` unset and `RUST_LOG=info`.
async fn node_logs(args: &[&str]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(args)
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("tether node");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(20), stdout.next_line())
        .await
        .expect("the node starts")
        .unwrap()
        .expect("its listening line");
    tether_kit::signal::send_signal(child.id().unwrap(), "TERM");
    let mut stderr = String::new();
    tokio::time::timeout(
        Duration::from_secs(20),
        child.stderr.take().unwrap().read_to_string(&mut stderr),
    )
    .await
    .expect("the node stops")
    .unwrap();
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_written_to_a_pipe_carry_no_colour_codes() {
    let stderr = node_logs(&["node", "--port", "0"]).await;
    assert!(stderr.contains("INFO"), "no log lines to check: {stderr:?}");
    assert!(
        !stderr.contains('\x1b'),
        "escape codes in a pipe: {stderr:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_prints_text_for_people_and_json_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["demo", "--no-redis", "--base-port", "0"])
        .args(["--port", "0", "--tls-port", "0", "--admin-port", "0"])
        .arg("--cert-dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("tether demo");
    let _stderr = StderrTail::follow("demo", child.stderr.take().unwrap());
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut text = Vec::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(30), stdout.next_line())
            .await
            .expect("the demo prints its addresses")
            .unwrap()
            .unwrap_or_else(|| panic!("the demo ended: {text:#?}"));
        let done = line.contains("take a node out");
        text.push(line);
        if done {
            break;
        }
    }
    tether_kit::signal::send_signal(child.id().unwrap(), "TERM");
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(20), stdout.next_line()).await
    {
        text.push(line);
    }
    assert!(text.iter().any(|l| l.contains("chat page")), "{text:#?}");
    assert!(
        text.iter().all(|l| !l.trim_start().starts_with('{')),
        "a machine line among the text: {text:#?}"
    );
}

#[test]
fn the_readme_lists_every_metric_with_its_labels() {
    let text = readme();
    let rows: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once("` | "))
        .filter(|(name, _)| name.starts_with("tether_") || name.starts_with("process_"))
        .map(|(name, rest)| (name.to_owned(), rest.to_owned()))
        .collect();
    for m in tether::telemetry::ALL {
        let row = rows
            .get(m.name)
            .unwrap_or_else(|| panic!("{} is not in the README's metrics table", m.name));
        let labels = m.labels.join(", ");
        let labels = if labels.is_empty() {
            "—".to_owned()
        } else {
            labels
        };
        assert!(
            row.contains(&format!("| {labels} |")),
            "{}: the README's labels are not {labels}: {row}",
            m.name
        );
    }
    for name in rows.keys() {
        assert!(
            tether::telemetry::ALL.iter().any(|m| m.name == name),
            "the README lists {name}, which tether does not export"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_can_be_json_lines_for_a_collector() {
    let stderr = node_logs(&["--log-format", "json", "node", "--port", "0"]).await;
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!lines.is_empty(), "no log lines: {stderr}");
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
        assert!(v["timestamp"].is_string(), "{line}");
    }
}

/// `tether demo --no-redis --json` on free ports with `env` set (`None`: removed), until
/// it announces itself: the CA path it printed, or, if it exits first, its stderr.
async fn demo_ca(env: &[(&str, Option<&std::path::Path>)]) -> Result<std::path::PathBuf, String> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tether"));
    command
        .args(["demo", "--no-redis", "--base-port", "0", "--json"])
        .args(["--port", "0", "--tls-port", "0", "--admin-port", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (name, value) in env {
        match value {
            Some(v) => command.env(name, v),
            None => command.env_remove(name),
        };
    }
    let mut child = command.spawn().expect("tether demo");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), stdout.next_line())
        .await
        .expect("the demo starts or stops")
        .unwrap();
    let Some(line) = line else {
        let mut err = String::new();
        let _ = child.stderr.take().unwrap().read_to_string(&mut err).await;
        return Err(err);
    };
    let demo: serde_json::Value = serde_json::from_str(&line).expect("the JSON line");
    tether_kit::signal::send_signal(child.id().unwrap(), "TERM");
    let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
    Ok(demo["ca"].as_str().expect("ca").into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_keeps_its_certificate_in_a_private_directory_of_the_user_s_own() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let root = tempfile::tempdir().unwrap();
    let (home, tmp) = (root.path().join("home"), root.path().join("tmp"));
    for d in [&home, &tmp] {
        std::fs::create_dir(d).unwrap();
    }
    let mode = |dir: &std::path::Path| std::fs::metadata(dir).unwrap().mode() & 0o777;
    // The user's cache directory.
    let ca = demo_ca(&[
        ("HOME", Some(&home)),
        ("XDG_CACHE_HOME", None),
        ("TMPDIR", Some(&tmp)),
    ])
    .await
    .unwrap();
    let dir = home.join(".cache/tether/demo");
    assert_eq!(ca, dir.join("ca.pem"));
    assert_eq!(mode(&dir), 0o700);
    let xdg = root.path().join("xdg");
    let ca = demo_ca(&[("HOME", Some(&home)), ("XDG_CACHE_HOME", Some(&xdg))])
        .await
        .unwrap();
    assert_eq!(ca, xdg.join("tether/demo/ca.pem"));
    // No home: a directory named for the user in the temp directory; one found there
    // already, open to others, is narrowed to 0700.
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    let dir = tmp.join(format!("tether-demo-{uid}"));
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let no_home = [
        ("HOME", None),
        ("XDG_CACHE_HOME", None),
        ("TMPDIR", Some(tmp.as_path())),
    ];
    let ca = demo_ca(&no_home).await.unwrap();
    assert_eq!(ca, dir.join("ca.pem"));
    assert_eq!(mode(&dir), 0o700);
    // One that another user made first is not written into (only root can give a
    // directory away, so only root checks this).
    if std::os::unix::fs::chown(&dir, Some(uid + 4242), None).is_ok() {
        let err = demo_ca(&no_home).await.unwrap_err();
        assert!(
            err.contains(&format!("writing the demo certificate into {}: it belongs to another user (uid {}, not {uid})", dir.display(), uid + 4242)),
            "{err}"
        );
    }
}

/// `tether demo` with one port taken by this test: it exits at once, saying which
/// option moves that port and that 0 takes any free one.
async fn demo_with_a_taken_port(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["demo", "--no-redis"])
        .args(args)
        .arg("--cert-dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("tether demo");
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the demo exits when a port is taken")
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_names_the_option_that_moves_a_taken_port() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let free = ["--tls-port", "0", "--admin-port", "0"];
    let err =
        demo_with_a_taken_port(&[&["--port", &port, "--base-port", "0"][..], &free[..]].concat())
            .await;
    let expected = format!("tether: cannot listen on 127.0.0.1:{port}: Address already in use (os error 98); choose another with --port N, or --port 0 for any free port");
    assert!(err.lines().any(|l| l == expected), "{err}");

    let err =
        demo_with_a_taken_port(&[&["--port", "0", "--base-port", &port][..], &free[..]].concat())
            .await;
    let expected = format!("tether: cannot listen on 127.0.0.1:{port}: Address already in use (os error 98); choose another with --base-port N, or --base-port 0 for any free ports");
    assert!(err.lines().any(|l| l == expected), "{err}");
    drop(taken);
}

/// `bash examples/local-cluster.sh` with the binary under test, in a process group of its
/// own (which a failing test kills whole: the script's children with it).
struct Script {
    child: tokio::process::Child,
    log: StderrTail,
}

impl Script {
    fn start(env: &[(&str, &str)]) -> Script {
        let mut child = Command::new("bash")
            .arg(repo().join("examples/local-cluster.sh"))
            .env("TETHER", env!("CARGO_BIN_EXE_tether"))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("bash");
        let log = StderrTail::follow("local-cluster.sh", child.stderr.take().unwrap());
        Script { child, log }
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Some(pid) = self.child.id() {
                tether_kit::signal::send_signal(pid, "KILL");
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pid}")])
                    .status();
            }
        }
    }
}

fn refused(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_cluster_script_says_ready_once_tether_listens_and_stops_all_it_started() {
    let mut script = Script::start(&[("PORT", "0"), ("ADMIN_PORT", "0"), ("BASE_PORT", "0")]);
    let banner = script
        .log
        .wait_for(
            0,
            &["tether: http://127.0.0.1:", "in front of node-1..3"],
            Duration::from_secs(60),
        )
        .await;
    // `tether: http://127.0.0.1:P in front of node-1..3 (127.0.0.1:A, B, C)`
    let url = banner.split_whitespace().nth(1).unwrap().to_owned();
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let inner = banner.split_once('(').unwrap().1.trim_end_matches(')');
    let mut ports: Vec<u16> = inner
        .trim_start_matches("127.0.0.1:")
        .split(", ")
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(ports.len(), 3, "{banner}");
    let hs = get(addr, None, &eio_path(None), &[]).await;
    assert_eq!(hs.status, 200, "{}", hs.text());
    assert!(
        script.log.matching(0, &["cannot listen"]).is_empty(),
        "the banner came after tether listened"
    );

    // Stopping the script stops everything it started, by pid. TERM, not Ctrl-C's INT:
    // a shell started in the background (as a test runner may be) ignores INT, and its
    // children inherit that, so a script there could not trap it; both run one cleanup.
    tether_kit::signal::send_signal(script.child.id().unwrap(), "TERM");
    let status = tokio::time::timeout(Duration::from_secs(30), script.child.wait())
        .await
        .expect("the script stops")
        .unwrap();
    assert_eq!(status.code(), Some(143));
    ports.push(addr.port());
    for port in ports {
        assert!(refused(port), "127.0.0.1:{port} still answers");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_cluster_script_says_why_tether_could_not_start_and_no_banner() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let mut script = Script::start(&[("PORT", &port), ("ADMIN_PORT", "0"), ("BASE_PORT", "0")]);
    let status = tokio::time::timeout(Duration::from_secs(60), script.child.wait())
        .await
        .expect("the script ends")
        .unwrap();
    assert_eq!(status.code(), Some(1));
    script
        .log
        .wait_for(
            0,
            &[
                &format!("cannot listen on 127.0.0.1:{port}"),
                "Address already in use",
            ],
            Duration::from_secs(5),
        )
        .await;
    script
        .log
        .wait_for(
            0,
            &["tether did not start", "PORT=N"],
            Duration::from_secs(5),
        )
        .await;
    assert!(script.log.matching(0, &["Ctrl-C stops it all"]).is_empty());
    drop(taken);
}
