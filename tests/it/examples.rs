//! The bridge examples in examples/, run as a user would (`patchbay run pipeline.toml` in the
//! example's folder, with the plugins `cargo xtask build` made), fed and checked with the
//! services' own clients.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use crate::{Running, root, seq_counts};

fn example(name: &str) -> PathBuf {
    root().join("examples").join(name)
}

/// `patchbay run pipeline.toml` in the example's folder.
fn start(name: &str) -> Running {
    Running::start(&example(name), &["run", "pipeline.toml"])
}

/// POST `body` with the example's token; the status line and body of the answer.
fn post(addr: &str, path: &str, token: &str, body: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

/// GET `path` on a fresh connection: the status and body of the answer.
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn api_gateway_answers_each_caller_from_redis() {
    let _redis = crate::redis::redis_lock();
    crate::redis::require_redis();
    for n in 1..=50 {
        let customer = format!(r#"{{"name":"c{n}","tier":"t{}","email":"x"}}"#, n % 3);
        crate::redis::cli(&["SET", &format!("customer:{n}"), &customer]);
    }
    let mut child = start("api-gateway");
    child.wait_for(
        "http-source listening on 127.0.0.1:8089",
        Duration::from_secs(60),
        || TcpStream::connect("127.0.0.1:8089").is_ok(),
    );
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            std::thread::spawn(move || {
                for n in (1 + t..=60).step_by(8) {
                    let (status, body) = get("127.0.0.1:8089", &format!("/customers/{n}"));
                    if n <= 50 {
                        assert_eq!(status, 200, "{body}");
                        assert_eq!(
                            body,
                            format!(r#"{{"id":"{n}","name":"c{n}","tier":"t{}"}}"#, n % 3)
                        );
                    } else {
                        assert_eq!(status, 404, "{body}");
                        assert_eq!(body, format!(r#"{{"error":"no customer {n}"}}"#));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let (code, stderr) = child.interrupt();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("60 in, 0 dropped, 60 written to `reply`"),
        "{stderr}"
    );
    for n in 1..=50 {
        crate::redis::cli(&["DEL", &format!("customer:{n}")]);
    }
}

#[test]
fn webhook_to_redis_appends_every_posted_event_once() {
    let _redis = crate::redis::redis_lock();
    crate::redis::require_redis();
    const STREAM: &str = "patchbay-example:events";
    crate::redis::cli(&["DEL", STREAM]);
    let mut child = start("webhook-to-redis");
    child.wait_for(
        "http-source listening on 127.0.0.1:8088",
        Duration::from_secs(60),
        || TcpStream::connect("127.0.0.1:8088").is_ok(),
    );
    // 10 callers × 1,000 NDJSON events each.
    let threads: Vec<_> = (0..10u64)
        .map(|c| {
            std::thread::spawn(move || {
                let body: String = (c * 1000..(c + 1) * 1000)
                    .map(|n| format!("{{\"seq\":{n}}}\n"))
                    .collect();
                post("127.0.0.1:8088", "/events", "change-me", &body)
            })
        })
        .collect();
    for t in threads {
        let answer = t.join().unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.ends_with(r#"{"accepted":1000}"#), "{answer}");
    }
    // Answered means stored: Redis holds all of them now.
    assert_eq!(crate::redis::cli(&["XLEN", STREAM]).trim(), "10000");
    let (code, stderr) = child.interrupt();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(
            "pipeline `webhook-to-redis`: 10000 in, 0 dropped, 10000 written to `events`"
        ),
        "{stderr}"
    );
    let entries = crate::redis::payload_lines(&crate::redis::cli(&["XRANGE", STREAM, "-", "+"]));
    assert!(
        entries.lines().all(|l| l.ends_with(r#","via":"webhook"}"#)),
        "{entries}"
    );
    let counts = seq_counts(&entries);
    assert_eq!(counts.len(), 10_000);
    assert!(counts.values().all(|n| *n == 1));
    crate::redis::cli(&["DEL", STREAM]);
}

#[test]
fn mqtt_to_nats_stores_every_reading_once_in_jetstream() {
    let _nats = crate::nats::nats_lock();
    let _mqtt = crate::mqtt::mqtt_lock();
    const STREAM: &str = "PATCHBAY_EXAMPLE_SENSORS";
    const COUNT: u64 = 10_000;
    let mut nats = crate::nats::Client::connect();
    nats.delete_stream(STREAM); // the sink creates it again at start
    let mut child = start("mqtt-to-nats");
    // The source subscribes at start: wait until the sink created the stream, then a little.
    child.wait_for(
        "the stream created by nats-sink",
        Duration::from_secs(60),
        || {
            nats.api(&format!("STREAM.INFO.{STREAM}"), &serde_json::Value::Null)
                .get("error")
                .is_none()
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    // Devices publish with QoS 1, in chunks the broker's per-client queue can hold.
    for chunk in 0..COUNT / 500 {
        let mut publish = std::process::Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", "1883", "-q", "1", "-l"])
            .args(["-t", &format!("patchbay-example/sensors/dev-{}", chunk % 4)])
            .stdin(Stdio::piped())
            .spawn()
            .expect("mosquitto_pub (Debian package mosquitto-clients)");
        let input: String = (chunk * 500..(chunk + 1) * 500)
            .map(|n| format!("{{\"seq\":{n},\"temp\":21.5,\"debug\":true}}\n"))
            .collect();
        publish
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        assert!(publish.wait().unwrap().success());
        child.wait_for("readings stored", Duration::from_secs(120), || {
            nats.stream_messages(STREAM) >= (chunk + 1) * 500
        });
    }
    let (code, stderr) = child.interrupt();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "pipeline `mqtt-to-nats`: {COUNT} in, 0 dropped, {COUNT} written to `bus`"
        )),
        "{stderr}"
    );
    let stored = nats.read_stream(STREAM);
    assert!(
        stored
            .lines()
            .all(|l| l.ends_with(r#","temperature_c":21.5,"bridge":"mqtt-to-nats"}"#)),
        "{}",
        stored.lines().next().unwrap_or_default()
    );
    let counts = seq_counts(&stored);
    assert_eq!(counts.len() as u64, COUNT);
    assert!(counts.values().all(|n| *n == 1));
    nats.delete_stream(STREAM);
}

#[test]
fn nats_to_http_posts_every_message_once() {
    let _nats = crate::nats::nats_lock();
    const COUNT: u64 = 10_000;
    let out = example("nats-to-http").join("out").join("orders.jsonl");
    let _ = std::fs::remove_file(&out);
    let lines = || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .count() as u64
    };
    let mut receiver = Running::start(&example("nats-to-http"), &["run", "receiver.toml"]);
    receiver.wait_for(
        "the receiver listening on 127.0.0.1:8089",
        Duration::from_secs(60),
        || TcpStream::connect("127.0.0.1:8089").is_ok(),
    );
    let mut bridge = start("nats-to-http");
    // Core NATS delivers to subscribers present when a message is published: wait until the
    // bridge's subscription is there (a probe message comes through), then publish.
    let mut nats = crate::nats::Client::connect();
    bridge.wait_for("the bridge subscribed", Duration::from_secs(60), || {
        nats.publish("patchbay-example.orders", None, &[], b"{\"seq\":-1}");
        nats.flush();
        std::thread::sleep(Duration::from_millis(100));
        lines() > 0
    });
    let probes = lines();
    for n in 0..COUNT {
        nats.publish(
            "patchbay-example.orders",
            None,
            &[],
            format!("{{\"seq\":{n}}}").as_bytes(),
        );
        if n % 500 == 499 {
            nats.flush();
        }
    }
    nats.flush();
    bridge.wait_for("every order posted", Duration::from_secs(120), || {
        lines() >= probes + COUNT
    });
    let (code, stderr) = bridge.interrupt();
    assert_eq!(code, Some(0), "{stderr}");
    let (code, receiver_err) = receiver.interrupt();
    assert_eq!(code, Some(0), "{receiver_err}");
    let written: String = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .filter(|l| *l != "{\"seq\":-1}")
        .map(|l| format!("{l}\n"))
        .collect();
    let counts = seq_counts(&written);
    assert_eq!(counts.len() as u64, COUNT);
    assert!(counts.values().all(|n| *n == 1));
    let _ = std::fs::remove_file(&out);
}

#[test]
fn amqp_to_postgres_writes_every_order_once_and_dead_letters_the_bad_one() {
    use crate::amqp::{queue_depth, rabbitmqctl, require_rabbitmq};
    use crate::postgres::{psql, require_postgres};
    require_rabbitmq();
    require_postgres();
    const QUEUE: &str = "patchbay-example-orders";
    psql("DROP TABLE IF EXISTS patchbay_example_orders");
    psql(
        "CREATE TABLE patchbay_example_orders (id bigint PRIMARY KEY, customer text NOT NULL, \
         amount numeric(10,2) NOT NULL)",
    );
    let _ = std::process::Command::new("rabbitmqctl")
        .args(["-q", "delete_queue", QUEUE])
        .output();
    let dead = example("amqp-to-postgres").join("dead-letter/orders.jsonl");
    let _ = std::fs::remove_file(&dead);
    let mut child = start("amqp-to-postgres");
    child.wait_for("the queue declared", Duration::from_secs(60), || {
        rabbitmqctl(&["list_queues", "name"])
            .lines()
            .any(|l| l.trim() == QUEUE)
    });
    // 10,000 good orders and one the table refuses, published by amqp-sink.
    let s = crate::Scratch::new();
    s.mkdir("data");
    let mut orders: String = (1..=10_000)
        .map(|n| {
            format!(
                "{{\"id\":{n},\"customer\":\"c{}\",\"amount\":{}.25}}\n",
                n % 7,
                n % 100
            )
        })
        .collect();
    orders.push_str("{\"id\":20000,\"customer\":\"bad\",\"amount\":\"abc\"}\n");
    s.write("data/orders.jsonl", &orders);
    s.write(
        "fill.toml",
        &format!(
            r#"
[plugins.src]
path = "{{plugin:file-source}}"
config = {{ path = "/data/orders.jsonl" }}
grants = {{ dirs = [{{ host = "data", guest = "/data", mode = "ro" }}] }}

[plugins.mq]
path = "{{plugin:amqp-sink}}"
config = {{ routing_key = "{QUEUE}" }}
grants = {{ tcp = ["127.0.0.1:5672"] }}

[[pipeline]]
name = "publish"
source = "src"
sinks = ["mq"]
"#
        ),
    );
    let out = s.run(&["run", "fill.toml"]);
    assert!(out.status.success(), "{}", crate::text(&out).1);
    child.wait_for("every order in the table", Duration::from_secs(60), || {
        psql("SELECT count(*) FROM patchbay_example_orders") == "10000"
            && std::fs::read_to_string(&dead).is_ok_and(|t| t.lines().count() == 1)
    });
    let (code, stderr) = child.interrupt();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        psql("SELECT count(DISTINCT id), sum(amount) FROM patchbay_example_orders"),
        format!(
            "10000|{:.2}",
            (1..=10_000).map(|n| (n % 100) as f64 + 0.25).sum::<f64>()
        )
    );
    let entry = std::fs::read_to_string(&dead).unwrap();
    assert!(
        entry.contains("invalid input syntax for type numeric: \\\"abc\\\""),
        "{entry}"
    );
    assert_eq!(queue_depth(QUEUE), 0);
    psql("DROP TABLE patchbay_example_orders");
}

/// An example's pipeline.toml copied into `dir` with the plugins' absolute paths and
/// `replace` applied (for a server the test starts on another port).
fn copied(name: &str, dir: &std::path::Path, replace: &[(&str, &str)]) {
    let mut text = std::fs::read_to_string(example(name).join("pipeline.toml")).unwrap();
    let plugins = format!("{}/", crate::plugins_dir().display());
    text = text.replace("../../target/plugins/", &plugins);
    for (from, to) in replace {
        text = text.replace(from, to);
    }
    std::fs::write(dir.join("pipeline.toml"), text).unwrap();
}

/// The example as written, against a private PostgreSQL with `wal_level = logical` (the
/// machine's own has `replica`): 1,000 inserts, 100 updates and 100 deletes reach JetStream
/// in commit order.
#[test]
fn postgres_cdc_to_nats_publishes_every_change_in_commit_order() {
    use crate::postgres::PrivatePostgres;
    let _nats = crate::nats::nats_lock();
    const STREAM: &str = "PATCHBAY_EXAMPLE_CHANGES";
    const PORT: u16 = 25436;
    let pg = PrivatePostgres::start(PORT, &["wal_level=logical"], &[]);
    pg.psql(
        "CREATE TABLE patchbay_example_accounts (id bigint PRIMARY KEY, owner text NOT NULL, \
         balance numeric(12,2) NOT NULL)",
    );
    let mut nats = crate::nats::Client::connect();
    nats.delete_stream(STREAM);
    let s = crate::Scratch::new();
    let url = format!("127.0.0.1:{PORT}/postgres");
    let grant = format!("127.0.0.1:{PORT}\"");
    copied(
        "postgres-cdc-to-nats",
        s.path(),
        &[("127.0.0.1:5432/test", &url), ("127.0.0.1:5432\"", &grant)],
    );
    let mut child = Running::start(s.path(), &["run", "pipeline.toml"]);
    child.wait_for("the slot made", Duration::from_secs(60), || {
        pg.psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'patchbay_example'")
            == "1"
    });
    pg.psql(
        "INSERT INTO patchbay_example_accounts SELECT n, 'owner ' || n, n * 1.5 \
         FROM generate_series(1, 1000) n",
    );
    pg.psql("UPDATE patchbay_example_accounts SET balance = balance + 1 WHERE id <= 100");
    pg.psql("DELETE FROM patchbay_example_accounts WHERE id > 900");
    child.wait_for("every change stored", Duration::from_secs(60), || {
        nats.stream_messages(STREAM) >= 1200
    });
    let (code, stderr) = child.interrupt();
    assert_eq!(code, Some(0), "{stderr}");
    let stored = nats.read_stream(STREAM);
    let lines: Vec<&str> = stored.lines().collect();
    let changes: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(changes.len(), 1200);
    let ops: Vec<&str> = changes.iter().map(|c| c["op"].as_str().unwrap()).collect();
    assert!(ops[..1000].iter().all(|op| *op == "insert"));
    assert!(ops[1000..1100].iter().all(|op| *op == "update"));
    assert!(ops[1100..].iter().all(|op| *op == "delete"));
    // A numeric keeps its digits, as PostgreSQL wrote it.
    assert!(
        lines[1000].contains(r#""after":{"id":1,"owner":"owner 1","balance":2.50}"#),
        "{}",
        lines[1000]
    );
    assert_eq!(changes[1199]["before"], serde_json::json!({"id": 1000}));
    nats.delete_stream(STREAM);
}

/// The example as written: its certs.sh and mosquitto.conf make a TLS-only broker on
/// 127.0.0.1:8883, and 10,000 readings published over TLS land in the table once each.
#[test]
fn mqtt_to_postgres_over_tls_writes_every_reading_once() {
    use crate::postgres::{psql, require_postgres};
    let _mqtt = crate::mqtt::mqtt_lock();
    require_postgres();
    const COUNT: u64 = 10_000;
    let dir = example("mqtt-to-postgres");
    let made = std::process::Command::new("sh")
        .arg("certs.sh")
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let mut broker = std::process::Command::new("mosquitto")
        .args(["-c", "mosquitto.conf"])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto (Debian package mosquitto)");
    crate::wait_until("the TLS broker", Duration::from_secs(10), || {
        TcpStream::connect("127.0.0.1:8883").is_ok()
    });
    psql("DROP TABLE IF EXISTS patchbay_example_readings");
    psql(
        "CREATE TABLE patchbay_example_readings (device text NOT NULL, seq bigint NOT NULL, \
         celsius numeric NOT NULL, at timestamptz NOT NULL DEFAULT now(), \
         PRIMARY KEY (device, seq))",
    );
    // The example's persistent session, made before it starts (as mosquitto_sub -c makes it),
    // so that nothing published before its subscription is lost.
    let session = std::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            "8883",
            "--cafile",
            "certs/ca.pem",
            "-c",
            "-q",
            "1",
        ])
        .args(["-i", "patchbay-example-mqtt-to-postgres"])
        .args(["-t", "patchbay-example/readings/#", "-E"])
        .current_dir(&dir)
        .output()
        .expect("mosquitto_sub (Debian package mosquitto-clients)");
    assert!(session.status.success(), "{session:?}");
    let mut child = start("mqtt-to-postgres");
    for chunk in 0..COUNT / 500 {
        let mut publish = std::process::Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", "8883", "--cafile", "certs/ca.pem"])
            .args(["-q", "1", "-l", "-t"])
            .arg(format!("patchbay-example/readings/dev-{}", chunk % 4))
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .spawn()
            .expect("mosquitto_pub (Debian package mosquitto-clients)");
        let input: String = (chunk * 500..(chunk + 1) * 500)
            .map(|n| {
                format!(
                    "{{\"device\":\"dev-{}\",\"seq\":{n},\"celsius\":21.5}}\n",
                    chunk % 4
                )
            })
            .collect();
        publish
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        assert!(publish.wait().unwrap().success());
        child.wait_for("readings written", Duration::from_secs(120), || {
            psql("SELECT count(*) FROM patchbay_example_readings")
                .parse::<u64>()
                .is_ok_and(|n| n >= (chunk + 1) * 500)
        });
    }
    let (code, stderr) = child.interrupt();
    let _ = broker.kill();
    let _ = broker.wait();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        psql(
            "SELECT count(*), count(DISTINCT seq), min(seq), max(seq) FROM patchbay_example_readings"
        ),
        format!("{COUNT}|{COUNT}|0|{}", COUNT - 1)
    );
    psql("DROP TABLE patchbay_example_readings");
}

#[test]
fn xml_orders_to_json_writes_the_valid_orders_and_dead_letters_the_others_with_the_reason() {
    let dir = example("xml-orders-to-json");
    let _ = std::fs::remove_file(dir.join("out/orders.jsonl"));
    let _ = std::fs::remove_dir_all(dir.join("dead-letter"));
    let out = crate::run_in(&dir, &["run", "pipeline.toml"]);
    let (_, stderr) = crate::text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "pipeline `xml-orders`: 5 in, 0 dropped, 3 written to `out`, 2 dead-lettered"
        ),
        "{stderr}"
    );
    let written = std::fs::read_to_string(dir.join("out/orders.jsonl")).unwrap();
    let lines: Vec<&str> = written.lines().collect();
    assert_eq!(
        lines,
        [
            r#"{"currency":"EUR","customer":"Ada Lovelace","id":1001,"items":[{"price":9.5,"qty":2,"sku":"A-1"},{"price":24.0,"qty":1,"sku":"B-7"}],"lines":2}"#,
            r#"{"currency":"EUR","customer":"Grace Hopper","id":1002,"items":[{"price":1.25,"qty":5,"sku":"C-3"}],"lines":1}"#,
            r#"{"currency":"CHF","customer":"Barbara Liskov","id":1005,"items":[{"price":0.8,"qty":12,"sku":"E-2"},{"price":9.5,"qty":1,"sku":"A-1"},{"price":15.0,"qty":2,"sku":"F-4"}],"lines":3}"#,
        ]
    );
    let dead = std::fs::read_to_string(dir.join("dead-letter/orders.jsonl")).unwrap();
    let entries: Vec<serde_json::Value> = dead
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let reasons: Vec<(&str, &str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["message"]["headers"][0][1].as_str().unwrap(),
                e["plugin"].as_str().unwrap(),
                e["error"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [
            (
                "order-0004.xml",
                "xml",
                "payload is not well-formed XML (at byte 219): ill-formed document: expected \
                 `</item>`, but `</order>` was found"
            ),
            (
                "order-0003.xml",
                "schema",
                "payload does not match the schema: /order: \"customer\" is a required property \
                 (rule required at /properties/order/required)"
            ),
        ]
    );
    let _ = std::fs::remove_file(dir.join("out/orders.jsonl"));
    let _ = std::fs::remove_dir_all(dir.join("dead-letter"));
}
