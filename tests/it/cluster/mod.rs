//! Bus mode: `patchbay node`s on a private three-server NATS cluster started by each test (its
//! own ports, routes at port + 2000), deployed to with `patchbay cluster`, and watched through
//! `patchbay cluster status --json`, as an operator would. `lifecycle` walks deploy, placement,
//! upgrades and failover; `scale` runs 200,000 messages over three nodes while a node and a
//! NATS server die.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{Running, output_within, patchbay, text};

mod lifecycle;
mod scale;

/// Three nats-servers with JetStream, clustered; stopped on drop.
pub struct NatsCluster {
    servers: Vec<Option<Child>>,
    pub urls: String,
    dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Servers on `ports`; routes on each port + 2000.
    pub fn start(ports: [u16; 3]) -> NatsCluster {
        let dir = tempfile::tempdir().unwrap();
        let routes: Vec<String> = ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{}", p + 2000))
            .collect();
        let mut servers = Vec::new();
        for (i, port) in ports.iter().enumerate() {
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
            servers.push(Some(child));
        }
        let urls = ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        NatsCluster { servers, urls, dir }
    }

    /// `kill -9` server `i`.
    pub fn kill_9(&mut self, i: usize) {
        if let Some(mut server) = self.servers[i].take() {
            let _ = server.kill();
            let _ = server.wait();
        }
    }

    /// What server `i` logged.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("n{i}.log"))).unwrap_or_default()
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill_9(i);
        }
    }
}

/// `patchbay node --cluster URLS --replicas 3 --name NAME ARGS` in `dir`.
pub fn node(dir: &Path, urls: &str, name: &str, args: &[&str]) -> Running {
    let mut cmd = patchbay();
    cmd.args(["node", "--cluster", urls, "--replicas", "3", "--name", name])
        .args(args)
        .current_dir(dir);
    Running::spawn(&mut cmd)
}

/// `patchbay cluster ARGS --cluster URLS --replicas 3` in `dir`.
pub fn cluster(dir: &Path, urls: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = patchbay();
    cmd.arg("cluster")
        .args(args)
        .args(["--cluster", urls, "--replicas", "3"])
        .current_dir(dir);
    output_within(&mut cmd, Duration::from_secs(60))
}

pub fn status(dir: &Path, urls: &str) -> Value {
    let out = cluster(dir, urls, &["status", "--json"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "cluster status failed: {stderr}");
    serde_json::from_str(&stdout).unwrap()
}

/// The nodes running `pipeline` (state `running`), with their slots.
pub fn runners(status: &Value, pipeline: &str) -> Vec<(String, u64)> {
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
pub fn wait_status(
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

/// Wait until the NATS cluster takes JetStream requests (it needs a meta leader before
/// buckets can be made).
pub fn wait_ready(dir: &Path, urls: &str) {
    crate::wait_until(
        "the NATS cluster to take JetStream requests",
        Duration::from_secs(60),
        || cluster(dir, urls, &["status", "--json"]).status.success(),
    );
}

pub fn sha256_hex(path: &str) -> String {
    Sha256::digest(std::fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
