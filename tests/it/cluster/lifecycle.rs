//! A cluster's life on ports 24222–24224: push, deploy (and a refused deploy), placement by
//! tags, hand-over through a stream, the admin API, rolling upgrades (one halted), `kill -9`
//! of a lease holder, undeploy, host state following its lease, a store that lost a component.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{NatsCluster, cluster, node, runners, sha256_hex, status, wait_ready, wait_status};
use crate::admin::{free_port, get, sample};
use crate::nats::Client;
use crate::{Running, Scratch, patchbay, plugin, seq_counts, text, wait_until};

const PORTS: [u16; 3] = [24222, 24223, 24224];

/// Messages `produce` makes (at 300/s).
const TOTAL: usize = 4500;

/// `produce` (a generator, single) publishes into stream HANDOFF; `consume` (a durable
/// consumer, shared) tags and writes them.
const HANDOFF: &str = r#"
[plugins.numbers]
path = "{plugin:generator}"
config = { count = {total}, rate = 300 }
[plugins.publish]
path = "{plugin:nats-sink}"
config = { url = "nats://127.0.0.1:24222", subject = "handoff.orders", mode = "jetstream", msg_id = "key" }
grants = { tcp = ["127.0.0.1:24222"] }
[plugins.in]
path = "{plugin:nats-source}"
config = { url = "nats://127.0.0.1:24222", mode = "jetstream", stream = "HANDOFF", consumer = "consume", ack_wait = "2s" }
grants = { tcp = ["127.0.0.1:24222"] }
[plugins.tag]
path = "{tag}"
config = { attack = "bogus" }
[plugins.out]
path = "{plugin:file-sink}"
config = { path = "/out/consumed.jsonl" }
grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }] }

[[pipeline]]
name = "produce"
source = "numbers"
sinks = ["publish"]
batch_size = 20
placement = { tags = { zone = "eu" } }

[[pipeline]]
name = "consume"
source = "in"
transforms = ["tag"]
sinks = ["out"]
batch_size = 20
"#;

#[test]
fn pipelines_spread_over_nodes_hand_over_through_jetstream_and_survive_a_node_killed() {
    let nats = NatsCluster::start(PORTS);
    let urls = nats.urls.clone();
    let s = Scratch::new();
    s.mkdir("out");
    wait_ready(s.path(), &urls);

    // A plugin pushed by hand comes back as NAME@SHA256.
    let generator = plugin("generator");
    let out = cluster(s.path(), &urls, &["push", &generator]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout, format!("generator@{}\n", sha256_hex(&generator)));

    let mut nodes = Vec::new();
    let admin_port = free_port();
    for (name, zone) in [("a", "eu"), ("b", "eu"), ("c", "us")] {
        let dir = s.mkdir(name);
        std::fs::create_dir_all(dir.join("out")).unwrap();
        let tags = format!("zone={zone}");
        let admin = format!("127.0.0.1:{admin_port}");
        let mut args = vec!["--tags", tags.as_str()];
        if name == "c" {
            args.extend(["--admin", admin.as_str()]);
        }
        nodes.push((name, node(&dir, &urls, name, &args)));
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

    // Two pipelines hand over through a JetStream stream. `produce` has a single source (a
    // generator), so it runs on one node of zone eu; `consume` reads the stream through a
    // durable consumer, which can be shared, so every node runs it and the server splits the
    // messages.
    let mut client = Client::connect_to("127.0.0.1:24222");
    // On all three servers, as the cluster's buckets are: one server may go.
    let created = client.api(
        "STREAM.CREATE.HANDOFF",
        &serde_json::json!({"name": "HANDOFF", "subjects": ["handoff.>"], "storage": "file", "num_replicas": 3}),
    );
    assert!(created.get("error").is_none(), "{created}");
    // `consume` tags each record with the version of `tag` that processed it (tagger-v1, -v2).
    let handoff_file = |name: &str, tag: &str| {
        s.write(
            name,
            &HANDOFF
                .replace("{tag}", &format!("{{plugin:{tag}}}"))
                .replace("{total}", &TOTAL.to_string()),
        )
    };
    let handoff = handoff_file("handoff.toml", "tagger-v1");
    let out = cluster(s.path(), &urls, &["deploy", handoff.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let deployed: Vec<&str> = stdout.lines().collect();
    assert_eq!(deployed.len(), 2, "{stdout}");
    assert!(
        deployed[0].starts_with("deployed pipeline `produce` (revision "),
        "{stdout}"
    );
    assert!(
        deployed[1].starts_with("deployed pipeline `consume` (revision "),
        "{stdout}"
    );
    let mut holder = String::new();
    wait_status(
        "`consume` on three nodes, `produce` on one of zone eu",
        s.path(),
        &urls,
        &nodes,
        |st| {
            let slots: Vec<u64> = runners(st, "consume")
                .into_iter()
                .map(|(_, slot)| slot)
                .collect();
            let mut sorted = slots.clone();
            sorted.sort_unstable();
            match runners(st, "produce").as_slice() {
                [(node, 1)] if sorted == [1, 2, 3] => {
                    holder = node.clone();
                    true
                }
                _ => false,
            }
        },
    );
    assert_ne!(holder, "c", "a pipeline placed in zone eu ran in zone us");

    // Node c's admin API: its own pipelines, its name on every metric, and the whole cluster.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let base = format!("http://127.0.0.1:{admin_port}");
    let health: Value =
        serde_json::from_str(&get(&rt, &format!("{base}/health"), None).body).unwrap();
    assert_eq!(health["node"], "c");
    assert_eq!(
        health["pipelines"],
        serde_json::json!([{"name": "consume", "state": "running"}])
    );
    let scrape = get(&rt, &format!("{base}/metrics"), None).body;
    let scrape = prometheus_parse::Scrape::parse(scrape.lines().map(|l| Ok(l.to_owned()))).unwrap();
    assert!(
        sample(
            &scrape,
            "patchbay_messages_in_total",
            &[("pipeline", "consume"), ("node", "c")]
        )
        .is_some(),
        "no patchbay_messages_in_total{{pipeline=\"consume\",node=\"c\"}}"
    );
    let whole: Value =
        serde_json::from_str(&get(&rt, &format!("{base}/v1/cluster"), None).body).unwrap();
    assert_eq!(whole["nodes"].as_array().unwrap().len(), 3, "{whole:#}");
    assert_eq!(whole["pipelines"].as_array().unwrap().len(), 2, "{whole:#}");

    // A new version of `tag`: only a component changed, so it is swapped under traffic, node by
    // node, each after a trial init on every node; nothing restarts.
    let v2 = handoff_file("handoff-v2.toml", "tagger-v2");
    let out = cluster(s.path(), &urls, &["deploy", v2.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let lines_out: Vec<&str> = stdout.lines().collect();
    assert!(
        lines_out[0].starts_with("pipeline `produce` is deployed as it is (revision "),
        "{stdout}"
    );
    assert!(
        lines_out[1].starts_with("pipeline `consume`: rolling upgrade of tag@")
            && lines_out[1].ends_with(" on 3 nodes (a, b, c): trial first"),
        "{stdout}"
    );
    assert_eq!(
        lines_out[2..6],
        [
            "  trial init ok on every node",
            "  a: swapped",
            "  b: swapped",
            "  c: swapped"
        ],
        "{stdout}"
    );
    assert!(
        lines_out[6].starts_with("deployed pipeline `consume` (revision "),
        "{stdout}"
    );
    assert!(
        lines_out[6].contains("rolled out node by node without a restart"),
        "{stdout}"
    );
    let v2_sha = sha256_hex(&plugin("tagger-v2"));
    let consumers = |st: &Value| -> Vec<(String, u64, String, u64)> {
        let mut out = Vec::new();
        for n in st["nodes"].as_array().unwrap() {
            for p in n["pipelines"].as_array().unwrap() {
                if p["name"] == "consume" {
                    out.push((
                        n["name"].as_str().unwrap().to_owned(),
                        p["generation"].as_u64().unwrap(),
                        p["plugins"]["tag"].as_str().unwrap().to_owned(),
                        p["revision"].as_u64().unwrap(),
                    ));
                }
            }
        }
        out
    };
    let mut upgraded = Vec::new();
    wait_status(
        "every node on tagger-v2, at the new revision",
        s.path(),
        &urls,
        &nodes,
        |st| {
            upgraded = consumers(st);
            let revision = st["pipelines"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == "consume")
                .unwrap()["revision"]
                .as_u64()
                .unwrap();
            upgraded.len() == 3
                && upgraded
                    .iter()
                    .all(|(_, g, sha, r)| *g == 1 && *sha == v2_sha && *r == revision)
        },
    );
    // A version whose init refuses this config halts the upgrade before any node swaps.
    let bad = handoff_file("handoff-bad.toml", "test-hostile");
    let out = cluster(s.path(), &urls, &["deploy", bad.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("pipeline `consume`: rolling upgrade of tag@"),
        "{stdout}"
    );
    assert!(
        stderr.starts_with("error: pipeline `consume`: upgrade halted: node a: refused: `tag`@"),
        "{stderr}"
    );
    assert!(
        stderr.contains("`init` of test-hostile 0.1.0 returned fatal error: config key `attack`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("nodes that had not swapped keep the version they run"),
        "{stderr}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        consumers(&status(s.path(), &urls)),
        upgraded,
        "a refused upgrade changed something"
    );

    // The producer's node dies mid-stream: the other eu node takes `produce` over and its
    // generator starts again from 0; JetStream drops what was published already
    // (`Nats-Msg-Id` = the key), so the stream ends with each message exactly once.
    wait_until(
        "the first messages in the stream",
        Duration::from_secs(30),
        || client.stream_messages("HANDOFF") >= 300,
    );
    let (_, dead) = nodes.iter_mut().find(|(n, _)| *n == holder).unwrap();
    dead.kill_9();
    let killed = Instant::now();
    let mut heir = String::new();
    wait_status(
        "another node to take `produce` over",
        s.path(),
        &urls,
        &nodes,
        |st| {
            let produce: Vec<(String, u64)> = st["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["name"] != holder.as_str())
                .flat_map(|n| {
                    n["pipelines"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|p| p["name"] == "produce")
                        .map(move |p| {
                            (
                                n["name"].as_str().unwrap().to_owned(),
                                p["slot"].as_u64().unwrap(),
                            )
                        })
                })
                .collect();
            match produce.as_slice() {
                [(node, 1)] => {
                    heir = node.clone();
                    true
                }
                _ => false,
            }
        },
    );
    println!(
        "`produce` moved from {holder} to {heir} {:.1?} after kill -9",
        killed.elapsed()
    );
    assert_ne!(heir, "c");
    wait_status(
        "`produce` to finish on the heir",
        s.path(),
        &urls,
        &nodes,
        |st| {
            st["nodes"].as_array().unwrap().iter().any(|n| {
                n["name"] == heir.as_str()
                    && n["pipelines"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|p| p["name"] == "produce" && p["state"] == "finished")
            })
        },
    );
    assert_eq!(
        client.stream_messages("HANDOFF"),
        TOTAL as u64,
        "exactly once into the stream"
    );
    let lines = |node: &str| {
        std::fs::read_to_string(s.path().join(node).join("out/consumed.jsonl")).unwrap_or_default()
    };
    // What the dead node had taken and not acknowledged comes again (ack_wait 2 s) to the
    // others: at least once out of the stream.
    wait_until(
        "every message consumed by some node",
        Duration::from_secs(60),
        || seq_counts(&["a", "b", "c"].iter().map(|n| lines(n)).collect::<String>()).len() == TOTAL,
    );
    let split: Vec<usize> = ["a", "b", "c"]
        .iter()
        .map(|n| lines(n).lines().count())
        .collect();
    println!("{TOTAL} messages consumed over the nodes as {split:?}");
    let all: String = ["a", "b", "c"].iter().map(|n| lines(n)).collect();
    let (v1, v2) = (
        all.matches("\"tag\":\"v1\"").count(),
        all.matches("\"tag\":\"v2\"").count(),
    );
    println!("tagged by v1: {v1}, by v2: {v2}");
    assert!(v1 > 0 && v2 > 0, "v1 {v1}, v2 {v2}");
    assert!(split.iter().filter(|&&n| n > 0).count() >= 2, "{split:?}");

    let out = cluster(s.path(), &urls, &["undeploy", "consume"]);
    assert!(out.status.success(), "{}", text(&out).1);
    assert_eq!(
        text(&out).0,
        "undeployed pipeline `consume`: the nodes running it drain it and stop\n"
    );
    wait_status(
        "`consume` stopped everywhere",
        s.path(),
        &urls,
        &nodes,
        |st| {
            runners(st, "consume").is_empty()
                && st["leases"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|l| l["pipeline"] != "consume")
        },
    );
    let out = cluster(s.path(), &urls, &["undeploy", "consume"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out).1,
        "error: no pipeline named `consume` is deployed; deployed: produce\n"
    );
    let out = cluster(s.path(), &urls, &["status"]);
    let (stdout, _) = text(&out);
    assert!(
        stdout.starts_with("pipelines (1):\n  produce  revision "),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("leases {heir}#1")), "{stdout}");
    assert!(stdout.contains("nodes (2):"), "{stdout}");

    // A single source that keeps its position in host state (test-state-source, rows 0..3000)
    // follows its lease: the node that takes over starts from the last acknowledged row.
    let rows = s.write(
        "rows.toml",
        r#"
[plugins.rows]
path = "{plugin:test-state-source}"
config = { count = 3000, poll_pause = 50 }
[plugins.out]
path = "{plugin:file-sink}"
config = { path = "/out/rows.jsonl" }
grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }] }
[[pipeline]]
name = "rows"
source = "rows"
sinks = ["out"]
batch_size = 20
"#,
    );
    let out = cluster(s.path(), &urls, &["deploy", rows.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out).1);
    let mut first = String::new();
    wait_status(
        "`rows` running on one node",
        s.path(),
        &urls,
        &nodes,
        |st| match runners(st, "rows").as_slice() {
            [(node, 1)] => {
                first = node.clone();
                true
            }
            _ => false,
        },
    );
    let rows_of = |node: &str| {
        std::fs::read_to_string(s.path().join(node).join("out/rows.jsonl")).unwrap_or_default()
    };
    wait_until(
        "rows written on the first node",
        Duration::from_secs(30),
        || rows_of(&first).lines().count() >= 300,
    );
    let (_, victim) = nodes.iter_mut().find(|(n, _)| *n == first).unwrap();
    victim.kill_9();
    let mut second = String::new();
    wait_status(
        "another node to take `rows` over",
        s.path(),
        &urls,
        &nodes,
        |st| {
            let others: Vec<(String, u64)> = runners(st, "rows")
                .into_iter()
                .filter(|(n, _)| *n != first)
                .collect();
            match others.as_slice() {
                [(node, 1)] => {
                    second = node.clone();
                    true
                }
                _ => false,
            }
        },
    );
    wait_until("every row written", Duration::from_secs(60), || {
        seq_counts(&(rows_of(&first) + &rows_of(&second))).len() == 3000
    });
    let written_first = rows_of(&first).lines().count();
    let resumed_at = *seq_counts(&rows_of(&second)).keys().next().unwrap();
    println!("`rows` resumed on {second} at row {resumed_at}; {first} had written {written_first}");
    assert!(
        resumed_at > 0,
        "the node that took `rows` over read from the top"
    );
    assert!(resumed_at as usize <= written_first, "rows were skipped");

    // A node that joins after the plugin store lost its components refuses what it cannot
    // fetch, saying so, rather than run anything else.
    let purged = client.api("STREAM.PURGE.OBJ_patchbay-plugins", &Value::Null);
    assert_eq!(purged["success"], true, "{purged}");
    let dir = s.mkdir("d");
    nodes.push(("d", node(&dir, &urls, "d", &[])));
    wait_status(
        "node d to refuse `produce`",
        s.path(),
        &urls,
        &nodes,
        |st| {
            st["nodes"].as_array().unwrap().iter().any(|n| {
                n["name"] == "d"
                    && n["pipelines"].as_array().unwrap().iter().any(|p| {
                        p["name"] == "produce"
                            && p["state"]
                                .as_str()
                                .unwrap()
                                .starts_with("failed: component ")
                            && p["state"]
                                .as_str()
                                .unwrap()
                                .contains(" is not in the plugin store")
                    })
            })
        },
    );

    // In the text, a refused pipeline holds no slot and shows why.
    let out = cluster(s.path(), &urls, &["status"]);
    let (stdout, _) = text(&out);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("    produce  revision ")
                && l.contains("  failed: component ")
                && l.contains(" is not in the plugin store: ")),
        "{stdout}"
    );

    for (_, node) in nodes.iter_mut() {
        if node.exited() {
            continue;
        }
        let (code, stderr) =
            std::mem::replace(node, Running::spawn(&mut Command::new("true"))).interrupt();
        assert_eq!(code, Some(0), "{stderr}");
    }
    drop(nats);
}

#[test]
fn a_node_without_a_route_to_nats_retries_and_says_so() {
    let s = Scratch::new();
    let mut cmd = patchbay();
    cmd.args([
        "node",
        "--cluster",
        "nats://127.0.0.1:1",
        "--name",
        "lonely",
    ])
    .current_dir(s.path());
    let node = Running::spawn(&mut cmd);
    wait_until(
        "the node to say it retries",
        Duration::from_secs(30),
        || {
            node.stderr()
                .contains("cannot connect to the cluster at nats://127.0.0.1:1")
        },
    );
    let (code, stderr) = node.interrupt();
    assert!(stderr.contains("; trying again in 5s"), "{stderr}");
    assert_eq!(code, Some(1), "{stderr}");
}
