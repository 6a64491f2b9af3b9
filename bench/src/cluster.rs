//! The "cluster" section: bus mode on this machine. Three nats-servers (a private JetStream
//! cluster on ports 34221–34223) and three `patchbay node`s share its two cores, so the rates
//! say little about more machines; CPU per message does: it is what each added node brings.
//!
//! - Throughput: one JetStream-source pipeline (nats-source → json-map → blackhole) reading the
//!   same filled stream from the start, on 1, 2 and 3 nodes (`placement = { nodes = N }`).
//!   Rates are from the nodes' heartbeats (once a second), first written to last.
//! - Failover: `kill -9` of the node holding a single-source pipeline's lease, until another
//!   node reports it running with messages polled.
//! - Rolling upgrade: `patchbay cluster deploy` of a new transform version to three nodes
//!   under load, from start to end of the command.
//!
//! Status is read in-process through the runtime's own `cluster` module, so polling costs no
//! process start-ups on the measured cores.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use patchbay_runtime::cluster::report::ClusterStatus;
use patchbay_runtime::cluster::{Cluster, ConnectArgs};

use crate::{Options, Report};

const PORTS: [u16; 3] = [34221, 34222, 34223];
/// Messages in the stream every throughput row reads.
const MESSAGES: u64 = 400_000;

/// Child processes killed on drop (servers and nodes).
struct Procs(Vec<(String, Child)>);

impl Procs {
    fn kill(&mut self, name: &str) {
        if let Some(i) = self.0.iter().position(|(n, _)| n == name) {
            let (_, mut child) = self.0.remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// CPU seconds (user + system) used so far by the processes whose names start with
    /// `prefix`, from /proc/PID/stat.
    fn cpu(&self, prefix: &str) -> f64 {
        self.0
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .filter_map(|(_, c)| proc_cpu(c.id()))
            .sum()
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn proc_cpu(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit(')').next()?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based), so 11 and 12 after `)`.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / crate::scaling::clock_ticks())
}

fn urls() -> String {
    PORTS
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn start_servers(dir: &Path, procs: &mut Procs) -> anyhow::Result<()> {
    let routes: Vec<String> = PORTS
        .iter()
        .map(|p| format!("nats://127.0.0.1:{}", p + 2000))
        .collect();
    for (i, port) in PORTS.iter().enumerate() {
        let log = std::fs::File::create(dir.join(format!("nats{i}.log")))?;
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js"])
            .arg("-sd")
            .arg(dir.join(format!("nats{i}")))
            .args([
                "-n",
                &format!("bench{i}"),
                "--cluster_name",
                "patchbay-bench",
            ])
            .args(["--cluster", &routes[i], "--routes", &routes.join(",")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start nats-server (Debian package nats-server)")?;
        procs.0.push((format!("nats{i}"), child));
    }
    Ok(())
}

fn start_node(o: &Options, dir: &Path, name: &str, procs: &mut Procs) -> anyhow::Result<()> {
    let work = dir.join(name);
    std::fs::create_dir_all(&work)?;
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let child = Command::new(std::path::absolute(&o.patchbay)?)
        .args([
            "node",
            "--cluster",
            &urls(),
            "--replicas",
            "3",
            "--name",
            name,
        ])
        .current_dir(&work)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("cannot start patchbay node")?;
    procs.0.push((format!("node-{name}"), child));
    Ok(())
}

/// `patchbay cluster ARGS`; fails with what it said unless it succeeds.
fn cluster_cmd(o: &Options, dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(std::path::absolute(&o.patchbay)?)
        .arg("cluster")
        .args(args)
        .args(["--cluster", &urls(), "--replicas", "3"])
        .current_dir(dir)
        .output()?;
    if !out.status.success() {
        bail!(
            "patchbay cluster {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Poll the cluster's status until `done` gives a value; fail after `limit`.
async fn wait<T>(
    c: &Cluster,
    what: &str,
    limit: Duration,
    mut done: impl FnMut(&ClusterStatus) -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(st) = ClusterStatus::gather(c).await
            && let Some(v) = done(&st)
        {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("cluster bench: {what}: not within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Messages written by `pipeline` over all nodes, and on how many nodes it runs.
fn written(st: &ClusterStatus, pipeline: &str) -> (u64, usize) {
    let mut sum = 0;
    let mut nodes = 0;
    for n in &st.nodes {
        for p in n.pipelines.iter().filter(|p| p.name == pipeline) {
            sum += p.written;
            nodes += usize::from(p.state == "running");
        }
    }
    (sum, nodes)
}

/// The node other than `except` whose `pipeline` runs with messages polled.
fn flowing(st: &ClusterStatus, pipeline: &str, except: &str) -> Option<String> {
    st.nodes
        .iter()
        .filter(|n| n.name != except)
        .find(|n| {
            n.pipelines
                .iter()
                .any(|p| p.name == pipeline && p.state == "running" && p.polled > 0)
        })
        .map(|n| n.name.clone())
}

fn plugin(o: &Options, name: &str) -> anyhow::Result<PathBuf> {
    Ok(std::path::absolute(o.plugins.join(format!("{name}.wasm")))?)
}

/// nats-source (durable `consumer` on BENCH) → `transform` → blackhole.
fn consume(
    o: &Options,
    name: &str,
    consumer: &str,
    transform: &str,
    nodes: usize,
) -> anyhow::Result<String> {
    Ok(format!(
        r#"
[plugins.in]
path = "{source}"
config = {{ url = "nats://127.0.0.1:{port}", mode = "jetstream", stream = "BENCH", consumer = "{consumer}" }}
grants = {{ tcp = ["127.0.0.1:{port}"] }}
[plugins.t]
path = "{t}"
config = {config}
[plugins.null]
path = "{null}"
[[pipeline]]
name = "{name}"
source = "in"
transforms = ["t"]
sinks = ["null"]
batch_size = 256
placement = {{ nodes = {nodes} }}
"#,
        source = plugin(o, "nats-source")?.display(),
        port = PORTS[0],
        t = plugin(o, transform)?.display(),
        config = if transform == "json-map" {
            r#"{ rename = { data = "body" }, drop = ["seq"], set = { source = "bench" } }"#
        } else {
            "{}"
        },
        null = plugin(o, "blackhole")?.display(),
    ))
}

pub(crate) async fn table(o: &Options, r: &mut Report) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dir = dir.path();
    let mut procs = Procs(Vec::new());
    start_servers(dir, &mut procs)?;
    let args = ConnectArgs {
        servers: urls(),
        nats_user: None,
        nats_password: None,
        nats_token: None,
        nats_creds: None,
        nats_nkey: None,
        nats_tls: false,
        nats_ca: None,
        nats_cert: None,
        nats_key: None,
        replicas: 3,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let c = loop {
        match Cluster::connect(&args, "patchbay-bench").await {
            Ok(c) => break c,
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    let fill = dir.join("fill.toml");
    std::fs::write(
        &fill,
        format!(
            r#"
[plugins.gen]
path = "{}"
config = {{ count = {MESSAGES}, size = 100 }}
[plugins.out]
path = "{}"
config = {{ url = "nats://127.0.0.1:{port}", subject = "bench.in", mode = "jetstream", create_stream = "BENCH" }}
grants = {{ tcp = ["127.0.0.1:{port}"] }}
[[pipeline]]
name = "fill"
source = "gen"
sinks = ["out"]
batch_size = 512
"#,
            plugin(o, "generator")?.display(),
            plugin(o, "nats-sink")?.display(),
            port = PORTS[0],
        ),
    )?;
    let filled = Command::new(std::path::absolute(&o.patchbay)?)
        .arg("run")
        .arg(&fill)
        .env("PATCHBAY_CACHE_DIR", dir.join("cache"))
        .output()?;
    if !filled.status.success() {
        bail!("filling BENCH: {}", String::from_utf8_lossy(&filled.stderr));
    }
    for name in ["a", "b", "c"] {
        start_node(o, dir, name, &mut procs)?;
    }
    wait(&c, "three nodes", Duration::from_secs(60), |st| {
        (st.nodes.len() == 3).then_some(())
    })
    .await?;

    r.line(format!(
        "## Cluster: bus mode over NATS JetStream (3 nats-servers and up to 3 nodes on this \
         machine's 2 cores; nats-source → json-map → blackhole reading {MESSAGES} 100-byte \
         messages from a one-replica stream (the fill's `create_stream`), batches of 256; buckets \
         with 3 replicas)\n"
    ));
    r.line(
        "All processes share two cores, so the rate cannot grow with nodes here; CPU per \
         message (the nodes' own, then the servers') is what predicts scaling where each node \
         has its cores.\n",
    );
    r.line(
        "| nodes | rate | node CPU per message | nats-server CPU per message | rate vs 1 node |",
    );
    r.line("|---|---|---|---|---|");
    let mut base = 0.0;
    for n in 1..=3usize {
        let name = format!("consume{n}");
        let file = dir.join(format!("{name}.toml"));
        std::fs::write(&file, consume(o, &name, &name, "json-map", n)?)?;
        let (node_cpu, nats_cpu) = (procs.cpu("node-"), procs.cpu("nats"));
        cluster_cmd(o, dir, &["deploy", &file.display().to_string()])?;
        // (time, written) at the first heartbeat that shows progress, then at the end.
        let first = wait(&c, &name, Duration::from_secs(120), |st| {
            let (w, _) = written(st, &name);
            (w > 0).then(|| (Instant::now(), w))
        })
        .await?;
        let last = wait(&c, &name, Duration::from_secs(600), |st| {
            let (w, _) = written(st, &name);
            (w >= MESSAGES).then(|| (Instant::now(), w))
        })
        .await?;
        let (node_cpu, nats_cpu) = (procs.cpu("node-") - node_cpu, procs.cpu("nats") - nats_cpu);
        let rate = (last.1 - first.1) as f64 / (last.0 - first.0).as_secs_f64().max(1e-3);
        if n == 1 {
            base = rate;
        }
        r.line(format!(
            "| {n} | {:.1} k/s | {:.1} µs | {:.1} µs | {:.2}× |",
            rate / 1e3,
            node_cpu * 1e6 / MESSAGES as f64,
            nats_cpu * 1e6 / MESSAGES as f64,
            rate / base
        ));
        cluster_cmd(o, dir, &["undeploy", &name])?;
        wait(&c, "undeploy", Duration::from_secs(60), |st| {
            (written(st, &name).1 == 0).then_some(())
        })
        .await?;
    }

    failover_and_upgrade(o, dir, &c, &mut procs, r).await
}

async fn failover_and_upgrade(
    o: &Options,
    dir: &Path,
    c: &Cluster,
    procs: &mut Procs,
    r: &mut Report,
) -> anyhow::Result<()> {
    // Failover: a generator (single source) and who holds it.
    let single = dir.join("single.toml");
    std::fs::write(
        &single,
        format!(
            "[plugins.gen]\npath = \"{}\"\nconfig = {{ count = 0, rate = 1000 }}\n\
             [plugins.null]\npath = \"{}\"\n\
             [[pipeline]]\nname = \"single\"\nsource = \"gen\"\nsinks = [\"null\"]\n",
            plugin(o, "generator")?.display(),
            plugin(o, "blackhole")?.display()
        ),
    )?;
    cluster_cmd(o, dir, &["deploy", &single.display().to_string()])?;
    let holder = wait(c, "`single` running", Duration::from_secs(60), |st| {
        flowing(st, "single", "")
    })
    .await?;
    procs.kill(&format!("node-{holder}"));
    let killed = Instant::now();
    let heir = wait(c, "`single` taken over", Duration::from_secs(60), |st| {
        flowing(st, "single", &holder)
    })
    .await?;
    let failover = killed.elapsed();
    cluster_cmd(o, dir, &["undeploy", "single"])?;
    start_node(o, dir, &holder, procs)?;
    wait(c, "three nodes again", Duration::from_secs(60), |st| {
        (st.nodes.len() == 3).then_some(())
    })
    .await?;

    // Rolling upgrade under load: tagger-v1 → v2 on three nodes reading BENCH.
    let v1 = dir.join("upgrade-v1.toml");
    std::fs::write(&v1, consume(o, "upgrade", "upgrade", "tagger-v1", 3)?)?;
    cluster_cmd(o, dir, &["deploy", &v1.display().to_string()])?;
    wait(
        c,
        "`upgrade` on three nodes",
        Duration::from_secs(60),
        |st| {
            let (w, nodes) = written(st, "upgrade");
            (nodes == 3 && w > 0).then_some(())
        },
    )
    .await?;
    let v2 = dir.join("upgrade-v2.toml");
    std::fs::write(&v2, consume(o, "upgrade", "upgrade", "tagger-v2", 3)?)?;
    let started = Instant::now();
    let said = cluster_cmd(o, dir, &["deploy", &v2.display().to_string()])?;
    let upgrade = started.elapsed();
    if !said.contains("rolled out node by node") {
        bail!("the upgrade was not rolled out node by node:\n{said}");
    }

    r.line(String::new());
    r.line(format!(
        "- Failover: `kill -9` of node {holder}, which held the lease of a single-source \
         pipeline, until node {heir} reported it running with messages polled: **{:.1} s** \
         (lease expiry 5 s after the last renewal, claims once a second, heartbeats once a \
         second).",
        failover.as_secs_f64()
    ));
    r.line(format!(
        "- Rolling upgrade of a transform (tagger-v1 → v2) on 3 nodes under load, the whole \
         `patchbay cluster deploy` (trial init on every node, then a swap on one node at a \
         time): **{:.1} s**.\n",
        upgrade.as_secs_f64()
    ));
    Ok(())
}
