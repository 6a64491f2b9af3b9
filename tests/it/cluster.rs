//! Bus mode: three `patchbay node`s on a private three-server NATS cluster started here (ports
//! 24222–24224, routes 26222–26224), deployed to with `patchbay cluster`, and watched through
//! `patchbay cluster status --json`, as an operator would.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::nats::Client;
use crate::{Running, Scratch, patchbay, plugin, seq_counts, text, wait_until};

const PORTS: [u16; 3] = [24222, 24223, 24224];

/// Three nats-servers with JetStream, clustered; stopped on drop.
struct NatsCluster {
    servers: Vec<Child>,
    urls: String,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    fn start() -> NatsCluster {
        let dir = tempfile::tempdir().unwrap();
        let routes: Vec<String> = PORTS
            .iter()
            .map(|p| format!("nats://127.0.0.1:{}", p + 2000))
            .collect();
        let mut servers = Vec::new();
        for (i, port) in PORTS.iter().enumerate() {
            let store = dir.path().join(format!("n{i}"));
            let log = std::fs::File::create(dir.path().join(format!("n{i}.log"))).unwrap();
            let child = Command::new("nats-server")
                .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js"])
                .args(["-sd", &store.display().to_string()])
                .args(["-n", &format!("pb{i}"), "--cluster_name", "patchbay-test"])
                .args(["--cluster", &routes[i], "--routes", &routes.join(",")])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("nats-server is not installed (Debian package nats-server)");
            servers.push(child);
        }
        let urls = PORTS
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        NatsCluster {
            servers,
            urls,
            _dir: dir,
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

/// `patchbay cluster ARGS --cluster URLS --replicas 3` in `dir`.
fn cluster(dir: &Path, urls: &str, args: &[&str]) -> std::process::Output {
    patchbay()
        .arg("cluster")
        .args(args)
        .args(["--cluster", urls, "--replicas", "3"])
        .current_dir(dir)
        .output()
        .unwrap()
}

fn status(dir: &Path, urls: &str) -> Value {
    let out = cluster(dir, urls, &["status", "--json"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "cluster status failed: {stderr}");
    serde_json::from_str(&stdout).unwrap()
}

/// The nodes running `pipeline` (state `running`), with their slots.
fn runners(status: &Value, pipeline: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for node in status["nodes"].as_array().unwrap() {
        for p in node["pipelines"].as_array().unwrap() {
            if p["name"] == pipeline && p["state"] == "running" {
                out.push((
                    node["name"].as_str().unwrap().to_owned(),
                    p["slot"].as_u64().unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

/// Poll `cluster status` until `done` holds; fail with the last status and the nodes' logs.
fn wait_status(
    what: &str,
    dir: &Path,
    urls: &str,
    nodes: &[(&str, Running)],
    mut done: impl FnMut(&Value) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = status(dir, urls);
        if done(&st) {
            return;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = nodes
                .iter()
                .map(|(name, n)| format!("node {name}:\n{}", n.stderr()))
                .collect();
            panic!(
                "{what}: not after 60s; cluster status:\n{st:#}\n{}",
                logs.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn sha256_hex(path: &str) -> String {
    Sha256::digest(std::fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn nodes_share_a_shared_source_and_a_dead_nodes_lease_moves_to_another_node() {
    let nats = NatsCluster::start();
    let urls = nats.urls.clone();
    let s = Scratch::new();
    s.mkdir("out");
    // The JetStream cluster needs a meta leader before buckets can be made.
    wait_until(
        "the NATS cluster to take JetStream requests",
        Duration::from_secs(60),
        || {
            cluster(s.path(), &urls, &["status", "--json"])
                .status
                .success()
        },
    );

    // A plugin pushed by hand comes back as NAME@SHA256.
    let generator = plugin("generator");
    let out = cluster(s.path(), &urls, &["push", &generator]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout, format!("generator@{}\n", sha256_hex(&generator)));

    let mut nodes = Vec::new();
    for (name, zone) in [("a", "eu"), ("b", "eu"), ("c", "us")] {
        let dir = s.mkdir(name);
        std::fs::create_dir_all(dir.join("out")).unwrap();
        let mut cmd = patchbay();
        cmd.args([
            "node",
            "--cluster",
            &urls,
            "--replicas",
            "3",
            "--name",
            name,
        ])
        .args(["--tags", &format!("zone={zone}")])
        .current_dir(&dir);
        nodes.push((name, Running::spawn(&mut cmd)));
    }
    wait_status(
        "three nodes in `cluster status`",
        s.path(),
        &urls,
        &nodes,
        |st| st["nodes"].as_array().unwrap().len() == 3,
    );

    // A file that does not validate is not deployed, and says why as `validate` would.
    let bad = s.write(
        "bad.toml",
        r#"
[plugins.ticks]
path = "{plugin:generator}"
config = { count = 0, bogus = 1 }
[plugins.drop]
path = "{plugin:blackhole}"
[[pipeline]]
name = "bad"
source = "ticks"
sinks = ["drop"]
"#,
    );
    let out = cluster(s.path(), &urls, &["deploy", bad.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("bogus"), "{stderr}");
    assert_eq!(
        status(s.path(), &urls)["pipelines"]
            .as_array()
            .unwrap()
            .len(),
        0
    );

    // A JetStream durable consumer can be shared: every node runs it, the server splits the
    // messages, and each arrives once.
    let mut client = Client::connect_to("127.0.0.1:24222");
    client.create_stream("CLUSTERED", "clustered.>");
    let shared = s.write(
        "shared.toml",
        r#"
[plugins.in]
path = "{plugin:nats-source}"
config = { url = "nats://127.0.0.1:24222", mode = "jetstream", stream = "CLUSTERED", consumer = "patchbay" }
grants = { tcp = ["127.0.0.1:24222"] }
[plugins.out]
path = "{plugin:file-sink}"
config = { path = "/out/shared.jsonl" }
grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }] }
[[pipeline]]
name = "shared"
source = "in"
sinks = ["out"]
batch_size = 20
"#,
    );
    let out = cluster(s.path(), &urls, &["deploy", shared.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.starts_with("deployed pipeline `shared` (revision "),
        "{stdout}"
    );
    wait_status(
        "`shared` running on three nodes",
        s.path(),
        &urls,
        &nodes,
        |st| {
            let slots: Vec<u64> = runners(st, "shared")
                .into_iter()
                .map(|(_, slot)| slot)
                .collect();
            let mut sorted = slots.clone();
            sorted.sort_unstable();
            sorted == [1, 2, 3]
        },
    );
    const N: u64 = 3000;
    client.fill_stream("clustered.x", 0..N);
    let lines = |node: &str| {
        std::fs::read_to_string(s.path().join(node).join("out/shared.jsonl")).unwrap_or_default()
    };
    wait_until(
        "every message written by some node",
        Duration::from_secs(60),
        || {
            ["a", "b", "c"]
                .iter()
                .map(|n| lines(n).lines().count())
                .sum::<usize>()
                >= N as usize
        },
    );
    let all: String = ["a", "b", "c"].iter().map(|n| lines(n)).collect();
    let counts = seq_counts(&all);
    assert_eq!(counts.len() as u64, N, "messages missing");
    assert!(
        counts.values().all(|&c| c == 1),
        "a message was written twice"
    );
    let split: Vec<usize> = ["a", "b", "c"]
        .iter()
        .map(|n| lines(n).lines().count())
        .collect();
    println!("{N} messages split over the nodes as {split:?}");
    assert!(split.iter().filter(|&&n| n > 0).count() >= 2, "{split:?}");

    let out = cluster(s.path(), &urls, &["undeploy", "shared"]);
    assert!(out.status.success(), "{}", text(&out).1);
    wait_status(
        "`shared` stopped everywhere",
        s.path(),
        &urls,
        &nodes,
        |st| runners(st, "shared").is_empty() && st["leases"].as_array().unwrap().is_empty(),
    );
    let out = cluster(s.path(), &urls, &["undeploy", "shared"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out).1,
        "error: no pipeline named `shared` is deployed; deployed: none\n"
    );

    // A generator is single: one node of zone eu holds its lease; when that node dies, the
    // other eu node takes it over (never the us one).
    let ticks = s.write(
        "ticks.toml",
        r#"
[plugins.ticks]
path = "{plugin:generator}"
config = { count = 0, rate = 200 }
[plugins.out]
path = "{plugin:file-sink}"
config = { path = "/out/ticks.jsonl" }
grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }] }
[[pipeline]]
name = "ticks"
source = "ticks"
sinks = ["out"]
placement = { tags = { zone = "eu" } }
"#,
    );
    let out = cluster(s.path(), &urls, &["deploy", ticks.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out).1);
    let mut holder = String::new();
    wait_status(
        "`ticks` running on one node",
        s.path(),
        &urls,
        &nodes,
        |st| {
            let running = runners(st, "ticks");
            if let [(node, 1)] = running.as_slice() {
                holder = node.clone();
                true
            } else {
                false
            }
        },
    );
    assert_ne!(holder, "c", "a pipeline placed in zone eu ran in zone us");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        runners(&status(s.path(), &urls), "ticks"),
        [(holder.clone(), 1)]
    );
    let (_, dead) = nodes.iter_mut().find(|(n, _)| *n == holder).unwrap();
    dead.kill_9();
    let killed = Instant::now();
    let mut heir = String::new();
    wait_status(
        "another node to take `ticks` over",
        s.path(),
        &urls,
        &nodes,
        |st| {
            let running = runners(st, "ticks");
            match running.as_slice() {
                [(node, 1)] if *node != holder => {
                    heir = node.clone();
                    true
                }
                _ => false,
            }
        },
    );
    println!(
        "`ticks` moved from {holder} to {heir} {:.1?} after kill -9",
        killed.elapsed()
    );
    assert_ne!(heir, "c");
    let heir_dir = s.path().join(&heir);
    wait_until("the heir to write ticks", Duration::from_secs(30), || {
        std::fs::read_to_string(heir_dir.join("out/ticks.jsonl"))
            .is_ok_and(|t| t.lines().count() > 10)
    });

    for (_, node) in nodes.iter_mut().filter(|(n, _)| *n != holder) {
        let (code, stderr) =
            std::mem::replace(node, Running::spawn(&mut Command::new("true"))).interrupt();
        assert_eq!(code, Some(0), "{stderr}");
    }
    drop(nats);
}
