//! The layering of `src/`, kept by a test rather than by goodwill.
//!
//! Each top-level module of the library sits in one layer of [`LAYERS`]; a module may use
//! (`crate::x`) only modules of lower layers, never one of its own layer or above. The
//! bundled tools' crates (`tether_node`, `tether_bench`) may be named only by the modules
//! that exist to run them. ARCHITECTURE.md explains the order; this test holds it.

use std::path::{Path, PathBuf};

/// Bottom first. Modules sharing a layer are independent of each other.
const LAYERS: &[&[&str]] = &[
    // Plumbing with no knowledge of routing: metric names and logging, waker sets, the
    // one body type.
    &["telemetry", "wakers", "body"],
    &["config"],
    // Protocol facts, everything TLS, per-client admission, the access log, the fleet link
    // to Redis; and `tether
    // import` (other balancers' configs read into a tether config checked by `config`,
    // nothing of the proxy).
    &[
        "engineio",
        "tls",
        "admission",
        "access_log",
        "import",
        "fleet",
    ],
    // Placement of new sessions.
    &["balance"],
    // Connections to servers: dial, keep-alive pool, upgrades.
    &["upstream"],
    // Servers, their live state, health, discovery.
    &["backends"],
    // Sid table, cookie, client address, pick and learn.
    &["affinity"],
    // The routing snapshot and the store behind it.
    &["snapshot"],
    &["proxy"],
    &["listener"],
    // Reload, upkeep, shutdown.
    &["runtime"],
    &["admin"],
    // The composition root (runtime + admin), and the demo built on it.
    &["server"],
    &["demo"],
];

/// Modules allowed to name the bundled tools' crates.
const TOOL_USERS: &[&str] = &["demo"];
const TOOL_CRATES: &[&str] = &["tether_node", "tether_bench"];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The top-level module a file of `src/` belongs to (`src/proxy/tunnel.rs` → `proxy`).
fn module_of(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main").then(|| name.to_owned())
}

/// The top-level modules named by `crate::` paths on one line of code: `crate::a::b`,
/// and each item of `crate::{a, b::c}`.
fn crate_paths(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `tether_crate::`, not ours
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.push(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.push(name);
        }
    }
    found
}

/// Every breach of the layering in `files` ((path relative to `src/`, text)), one line
/// of explanation each.
fn check(files: &[(PathBuf, String)]) -> Vec<String> {
    let mut problems = Vec::new();
    for (path, text) in files {
        let Some(module) = module_of(path) else {
            continue;
        };
        let Some(own) = layer_of(&module) else {
            problems.push(format!(
                "src/{}: module `{module}` has no layer: add it to LAYERS in tests/architecture.rs (and to ARCHITECTURE.md)",
                path.display()
            ));
            continue;
        };
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            let at = format!("src/{}:{}", path.display(), n + 1);
            for used in crate_paths(code) {
                if used == module {
                    continue;
                }
                match layer_of(&used) {
                    Some(l) if l < own => {}
                    Some(l) => problems.push(format!(
                        "{at}: `{module}` (layer {own}) uses `{used}` (layer {l}); a module may only use layers below its own: {}",
                        line.trim()
                    )),
                    None => {} // a crate-root item, not a module
                }
            }
            for tool in TOOL_CRATES {
                let named = code.contains(&format!("{tool}::"));
                if named && !TOOL_USERS.contains(&module.as_str()) {
                    problems.push(format!(
                        "{at}: `{module}` names the bundled tool crate `{tool}`; only {TOOL_USERS:?} may (the proxy must build without them): {}",
                        line.trim()
                    ));
                }
            }
        }
    }
    problems
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable src/") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn source_tree() -> Vec<(PathBuf, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("readable source");
            (p.strip_prefix(&src).unwrap().to_path_buf(), text)
        })
        .collect()
}

#[test]
fn layers_only_point_down() {
    let problems = check(&source_tree());
    assert!(
        problems.is_empty(),
        "{} layering problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn every_module_of_lib_rs_has_a_layer() {
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs"))
        .expect("src/lib.rs");
    let modules: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';'))
        .collect();
    assert!(modules.len() > 10, "{modules:?}");
    for m in modules {
        assert!(layer_of(m).is_some(), "module `{m}` has no layer in LAYERS");
    }
}

#[test]
fn an_upward_import_is_caught_with_its_line() {
    let files = vec![
        (
            PathBuf::from("backends/health.rs"),
            "//! Uses crate::snapshot in a comment only.\nuse crate::config::HealthConfig;\nuse crate::{engineio, snapshot::Snapshot};\n"
                .to_owned(),
        ),
        (
            PathBuf::from("balance/mod.rs"),
            "pub fn f() { let _ = crate::balance::placement_hash(b\"\"); let _ = crate::tls::pem::load_certs; }\n"
                .to_owned(),
        ),
        (
            PathBuf::from("tls/mod.rs"),
            "use crate::engineio::Transport;\n".to_owned(),
        ),
        (
            PathBuf::from("proxy/mod.rs"),
            "use tether_node::node;\n".to_owned(),
        ),
        (PathBuf::from("newthing.rs"), String::new()),
    ];
    let problems = check(&files);
    assert_eq!(problems.len(), 4, "{problems:#?}");
    assert!(
        problems[0].starts_with(
            "src/backends/health.rs:3: `backends` (layer 5) uses `snapshot` (layer 7)"
        ),
        "{}",
        problems[0]
    );
    assert!(
        problems[1].starts_with("src/tls/mod.rs:1: `tls` (layer 2) uses `engineio` (layer 2)"),
        "same layer: {}",
        problems[1]
    );
    assert!(
        problems[2].contains("names the bundled tool crate `tether_node`"),
        "{}",
        problems[2]
    );
    assert!(
        problems[3].contains("`newthing` has no layer"),
        "{}",
        problems[3]
    );
}

/// Every place an error type of `files` would print its cause twice. The convention
/// (ARCHITECTURE.md, Errors): an error's message carries its cause and `source()` is
/// left unset, because these errors are read through `Display` (logs, `/status`), where
/// a cause left out of the message would be lost. A cause that is also the `source()`
/// (`#[from]`, `#[source]`, or a field named `source`) is printed again by anything that
/// walks the chain (anyhow's `{:#}`), as `tether check` once did. Only a
/// `#[error(transparent)]` variant may hand its source on: it prints nothing of its own.
fn causes_said_twice(files: &[(PathBuf, String)]) -> Vec<String> {
    let mut problems = Vec::new();
    for (path, text) in files {
        let mut in_error_type = false;
        let mut depth = 0usize;
        let mut opened = false;
        let mut transparent = false;
        for (n, line) in text.lines().enumerate() {
            let code = line.trim();
            if code.starts_with("//") {
                continue;
            }
            if code.starts_with("#[derive(") && code.contains("thiserror::Error") {
                (in_error_type, depth, opened) = (true, 0, false);
                continue;
            }
            if !in_error_type {
                continue;
            }
            if code.starts_with("#[error(") {
                transparent = code.contains("transparent");
            }
            let hands_on = code.contains("#[from]")
                || code.contains("#[source]")
                || (!code.starts_with("#[") && declares_source_field(code));
            if hands_on && !transparent {
                problems.push(format!(
                    "{}:{}: a cause that is also the error's source() is printed twice when the chain is walked; keep it in the message only (a field not named `source`, a hand-written From): {code}",
                    path.display(),
                    n + 1
                ));
            }
            // Attributes hold format strings, whose braces are no block.
            if code.starts_with("#[") {
                continue;
            }
            depth += code.matches('{').count();
            opened |= depth > 0;
            depth = depth.saturating_sub(code.matches('}').count());
            if (opened && depth == 0) || (!opened && code.ends_with(';')) {
                in_error_type = false;
            }
        }
    }
    problems
}

/// `source: T` as a field, which thiserror makes the error's `source()` by its name alone.
fn declares_source_field(code: &str) -> bool {
    code.match_indices("source").any(|(i, _)| {
        let before = code[..i].chars().next_back();
        let after = code[i + "source".len()..].trim_start();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.')
            && after.starts_with(':')
            && !after.starts_with("::")
    })
}

fn rust_files_under(dir: &str) -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut paths = Vec::new();
    rust_files(&root.join(dir), &mut paths);
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("readable source");
            (p.strip_prefix(root).unwrap().to_path_buf(), text)
        })
        .collect()
}

#[test]
fn errors_say_their_cause_once() {
    let mut files = rust_files_under("src");
    for krate in ["kit", "bench", "node", "testkit", "alloc"] {
        files.extend(rust_files_under(&format!("crates/{krate}/src")));
    }
    let problems = causes_said_twice(&files);
    assert!(
        problems.is_empty(),
        "{} error(s) that print a cause twice:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn a_cause_said_twice_is_caught_with_its_line() {
    let text = r#"
#[derive(Debug, thiserror::Error)]
pub enum E {
    #[error(transparent)]
    Inner(#[from] Other),
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parsing: {0}")]
    Parse(#[from] ParseError),
    #[error("writing: {cause}")]
    Write { cause: std::io::Error },
}

pub struct NotAnError {
    source: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Plain(#[source] Other);
"#;
    let problems = causes_said_twice(&[(PathBuf::from("src/x.rs"), text.to_owned())]);
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(problems[0].starts_with("src/x.rs:7:"), "{}", problems[0]);
    assert!(problems[1].starts_with("src/x.rs:9:"), "{}", problems[1]);
    assert!(problems[2].starts_with("src/x.rs:20:"), "{}", problems[2]);
}
