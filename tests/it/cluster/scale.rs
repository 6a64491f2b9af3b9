//! 200,000 sequence-numbered messages through one shared JetStream pipeline on three nodes
//! (NATS on ports 25222–25224), while a node is killed with `kill -9` and one of the three
//! NATS servers dies: every number comes out exactly once (the sink de-duplicates by
//! `Nats-Msg-Id`), and every node did part of the work.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{NatsCluster, cluster, node, status, wait_ready, wait_status};
use crate::nats::Client;
use crate::{Scratch, seq_counts, text, wait_until};

const PORTS: [u16; 3] = [25222, 25223, 25224];
const TOTAL: u64 = 200_000;
/// The server the test's own clients use; the first one dies.
const WATCHER: &str = "127.0.0.1:25224";

/// `work` reads stream WORK through the durable consumer `work` (shared: every node runs it)
/// and publishes each message into stream DONE with the id it came with. The plugins know all
/// three servers and start with the first, the one that dies.
const WORK: &str = r#"
[plugins.in]
path = "{plugin:nats-source}"
config = { url = "nats://127.0.0.1:25222,nats://127.0.0.1:25223,nats://127.0.0.1:25224", mode = "jetstream", stream = "WORK", consumer = "work", ack_wait = "3s" }
grants = { tcp = ["127.0.0.1:25222", "127.0.0.1:25223", "127.0.0.1:25224"] }
[plugins.out]
path = "{plugin:nats-sink}"
config = { url = "nats://127.0.0.1:25222,nats://127.0.0.1:25223,nats://127.0.0.1:25224", subject = "done.numbers", mode = "jetstream", msg_id = "header:Nats-Msg-Id" }
grants = { tcp = ["127.0.0.1:25222", "127.0.0.1:25223", "127.0.0.1:25224"] }

[[pipeline]]
name = "work"
source = "in"
sinks = ["out"]
batch_size = 250
"#;

/// Publish `{"seq":N}` with `Nats-Msg-Id: N` for every N in `range`, 5,000 at a time, until
/// the stream acknowledged each one: a publish left without an answer while the servers elect
/// a new leader is sent again (the stream drops a second copy by its id).
fn fill(client: &mut Client, subject: &str, range: std::ops::Range<u64>) {
    let deadline = Instant::now() + Duration::from_secs(180);
    let all: Vec<u64> = range.collect();
    for chunk in all.chunks(5_000) {
        let mut pending: Vec<u64> = chunk.to_vec();
        while !pending.is_empty() {
            assert!(
                Instant::now() < deadline,
                "{} messages still not stored after 180s",
                pending.len()
            );
            let mut waiting: HashMap<String, u64> = HashMap::new();
            for n in &pending {
                let reply = client.reply_subject();
                let id = n.to_string();
                client.publish(
                    subject,
                    Some(&reply),
                    &[("Nats-Msg-Id", &id)],
                    format!("{{\"seq\":{n}}}").as_bytes(),
                );
                waiting.insert(reply, *n);
            }
            client.flush();
            let mut failed = Vec::new();
            while !waiting.is_empty() {
                let Some(answer) = client.next(Duration::from_secs(5)) else {
                    break;
                };
                let Some(n) = waiting.remove(&answer.subject) else {
                    continue;
                };
                let ack: Value = serde_json::from_slice(&answer.payload).unwrap_or(Value::Null);
                if ack["seq"].as_u64().is_none() {
                    failed.push(n);
                }
            }
            pending = failed;
            pending.extend(waiting.into_values());
            if !pending.is_empty() {
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// The payloads of messages 1..=`total` of `stream`, one per line, read one by one
/// (`STREAM.MSG.GET`, answered by the stream's leader, 5,000 requests at a time): with a
/// server of the cluster down, NATS 2.9 may place a new consumer on it and never deliver.
fn read_by_sequence(client: &mut Client, stream: &str, total: u64) -> String {
    use base64::Engine as _;
    let mut lines = String::new();
    let mut seq = 1;
    while seq <= total {
        let last = (seq + 4_999).min(total);
        let mut waiting: HashMap<String, u64> = HashMap::new();
        for n in seq..=last {
            let reply = client.reply_subject();
            let body = format!("{{\"seq\":{n}}}");
            client.publish(
                &format!("$JS.API.STREAM.MSG.GET.{stream}"),
                Some(&reply),
                &[],
                body.as_bytes(),
            );
            waiting.insert(reply, n);
        }
        client.flush();
        let mut got = BTreeMap::new();
        while !waiting.is_empty() {
            let answer = client
                .next(Duration::from_secs(10))
                .unwrap_or_else(|| panic!("{} of {stream}'s messages unanswered", waiting.len()));
            let Some(n) = waiting.remove(&answer.subject) else {
                continue;
            };
            let reply: Value = serde_json::from_slice(&answer.payload).unwrap();
            let data = reply["message"]["data"]
                .as_str()
                .unwrap_or_else(|| panic!("message {n} of {stream}: {reply}"));
            let data = base64::engine::general_purpose::STANDARD
                .decode(data)
                .unwrap();
            got.insert(n, String::from_utf8(data).unwrap());
        }
        for line in got.into_values() {
            lines.push_str(&line);
            lines.push('\n');
        }
        seq = last + 1;
    }
    lines
}

/// How many messages `stream` holds; `None` while no server answers for it (a new leader is
/// being elected).
fn stored(client: &mut Client, stream: &str) -> Option<u64> {
    client.try_api(&format!("STREAM.INFO.{stream}"), &Value::Null)?["state"]["messages"].as_u64()
}

/// Messages written by each node's `work`.
fn shares(st: &Value) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for n in st["nodes"].as_array().unwrap() {
        for p in n["pipelines"].as_array().unwrap() {
            if p["name"] == "work" {
                out.insert(
                    n["name"].as_str().unwrap().to_owned(),
                    p["written"].as_u64().unwrap(),
                );
            }
        }
    }
    out
}

#[test]
fn two_hundred_thousand_messages_over_three_nodes_survive_a_node_and_a_nats_server_dying() {
    let began = Instant::now();
    let mut nats = NatsCluster::start(PORTS);
    let urls = nats.urls.clone();
    let s = Scratch::new();
    wait_ready(s.path(), &urls);
    let mut client = Client::connect_to(WATCHER);
    for (name, subjects) in [("WORK", "work.>"), ("DONE", "done.>")] {
        let created = client.api(
            &format!("STREAM.CREATE.{name}"),
            &json!({"name": name, "subjects": [subjects], "storage": "file", "num_replicas": 3}),
        );
        assert!(created.get("error").is_none(), "{created}");
    }
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        let dir = s.mkdir(name);
        nodes.push((name, node(&dir, &urls, name, &[])));
    }
    wait_status("three nodes", s.path(), &urls, &nodes, |st| {
        st["nodes"].as_array().unwrap().len() == 3
    });
    println!("{:.1?}: three nodes up", began.elapsed());
    let file = s.write("work.toml", WORK);
    let out = cluster(s.path(), &urls, &["deploy", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out).1);
    wait_status("`work` on three nodes", s.path(), &urls, &nodes, |st| {
        super::runners(st, "work").len() == 3
    });

    // The first half goes in now; the second only once a node and a server are dead, so
    // that the run goes on after both whatever the machine's speed.
    let (go_on, go) = mpsc::channel::<()>();
    let filler = std::thread::spawn(move || {
        let mut client = Client::connect_to(WATCHER);
        fill(&mut client, "work.numbers", 0..TOTAL / 2);
        go.recv().unwrap();
        fill(&mut client, "work.numbers", TOTAL / 2..TOTAL);
    });
    let mut before = BTreeMap::new();
    wait_status(
        "every node to write part of the first half",
        s.path(),
        &urls,
        &nodes,
        |st| {
            before = shares(st);
            before.len() == 3 && before.values().all(|n| *n > 0)
        },
    );
    wait_until("a quarter through", Duration::from_secs(180), || {
        stored(&mut client, "DONE").is_some_and(|n| n >= TOTAL / 4)
    });
    println!("written per node early on: {before:?}");
    let at_kill = shares(&status(s.path(), &urls));
    nodes[2].1.kill_9();
    nats.kill_9(0);
    println!(
        "{:.1?}: killed node c and the first NATS server; written per node then: {at_kill:?}",
        began.elapsed()
    );
    go_on.send(()).unwrap();
    filler.join().unwrap();
    println!("{:.1?}: all {TOTAL} in WORK", began.elapsed());

    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let now = stored(&mut client, "DONE");
        if now.is_some_and(|n| n >= TOTAL) {
            break;
        }
        if Instant::now() > deadline {
            panic!(
                "DONE holds {now:?} of {TOTAL} after 240s; status:\n{:#}\nnode a:\n{}\nnode b:\n{}\nNATS 3:\n{}",
                status(s.path(), &urls),
                nodes[0].1.stderr(),
                nodes[1].1.stderr(),
                nats.log(2)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("{:.1?}: all {TOTAL} in DONE", began.elapsed());
    // Whatever the dead node had taken and not acknowledged came again (ack_wait 3 s) and was
    // dropped by DONE as a duplicate: exactly once.
    std::thread::sleep(Duration::from_secs(4));
    let held = client.stream_messages("DONE");
    assert_eq!(
        held, TOTAL,
        "DONE holds more than {TOTAL}: a duplicate got in"
    );
    let done = read_by_sequence(&mut client, "DONE", held);
    println!("{:.1?}: DONE read", began.elapsed());
    let counts = seq_counts(&done);
    assert_eq!(counts.len() as u64, TOTAL);
    assert_eq!(counts.keys().next_back(), Some(&(TOTAL - 1)));
    assert!(counts.values().all(|n| *n == 1), "a number came out twice");
    // The second half was done by a and b alone, and both still run `work`.
    let last = status(s.path(), &urls);
    println!(
        "written per node at the end (since each started it): {:?}",
        shares(&last)
    );
    let running: Vec<String> = super::runners(&last, "work")
        .into_iter()
        .map(|(node, _)| node)
        .collect();
    assert_eq!(running, ["a", "b"], "{last:#}");

    for (_, node) in nodes.into_iter().take(2) {
        let (code, stderr) = node.interrupt();
        assert_eq!(code, Some(0), "{stderr}");
    }
    println!("{:.1?}: nodes stopped", began.elapsed());
}
