//! The MQTT connectors against Mosquitto on 127.0.0.1:1883, checked with `mosquitto_sub` and
//! `mosquitto_pub`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Scratch, patchbay, seq_counts, text};

const BROKER: &str = "127.0.0.1:1883";
const COUNT: u64 = 10_000;

fn require_broker() {
    assert!(
        std::net::TcpStream::connect(BROKER).is_ok(),
        "Mosquitto is not listening on {BROKER}; start it with \
         `mosquitto -d -c /etc/mosquitto/mosquitto.conf`"
    );
}

fn unique(kind: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("patchbay-test/{kind}/{}/{nanos}", std::process::id())
}

#[test]
fn the_mqtt_sink_publishes_every_message_once_with_qos_1() {
    require_broker();
    let topic = unique("sink");
    let s = Scratch::new();
    // The broker's own client, subscribed before anything is published.
    let sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", "1883", "-q", "1", "-t", &topic])
        .args(["-C", &COUNT.to_string(), "-W", "60"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub (Debian package mosquitto-clients)");
    // Read its output as it comes: a full pipe would stall it, and the broker drops what a
    // stalled subscriber cannot take.
    let received = std::thread::spawn(move || sub.wait_with_output().unwrap());
    std::thread::sleep(Duration::from_millis(500));
    s.write(
        "p.toml",
        &format!(
            r#"
[plugins.gen]
path = "{{plugin:generator}}"
config = {{ count = {COUNT} }}

[plugins.out]
path = "{{plugin:mqtt-sink}}"
config = {{ url = "mqtt://{BROKER}", topic = "{topic}", qos = 1 }}
grants = {{ tcp = ["{BROKER}"] }}

[[pipeline]]
name = "to-mqtt"
source = "gen"
sinks = ["out"]
"#
        ),
    );
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "pipeline `to-mqtt`: {COUNT} in, 0 dropped, {COUNT} written to `out`"
        )),
        "{stderr}"
    );
    let received = received.join().unwrap();
    let counts = seq_counts(&String::from_utf8_lossy(&received.stdout));
    assert_eq!(counts.len() as u64, COUNT);
    assert!(counts.values().all(|n| *n == 1));
}

#[test]
fn the_mqtt_source_delivers_every_message_once_and_acknowledges_after_delivery() {
    require_broker();
    let topic = unique("source");
    let s = Scratch::new();
    let out_dir = s.mkdir("out");
    s.write(
        "p.toml",
        &format!(
            r#"
[plugins.src]
path = "{{plugin:mqtt-source}}"
config = {{ url = "mqtt://{BROKER}", topics = ["{topic}/#"], qos = 1, client_id = "pb-{}" }}
grants = {{ tcp = ["{BROKER}"] }}

[plugins.out]
path = "{{plugin:file-sink}}"
config = {{ path = "/out/out.jsonl" }}
grants = {{ dirs = [{{ host = "{}", guest = "/out", mode = "rw" }}] }}

[[pipeline]]
name = "from-mqtt"
source = "src"
sinks = ["out"]
"#,
            std::process::id(),
            out_dir.display()
        ),
    );
    let child = patchbay()
        .args(["run", "p.toml"])
        .current_dir(s.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = || {
        std::fs::read_to_string(out_dir.join("out.jsonl"))
            .unwrap_or_default()
            .lines()
            .count() as u64
    };
    // Give it time to subscribe, then publish in chunks the broker's default queue (1,000
    // messages per client) can hold.
    std::thread::sleep(Duration::from_millis(1000));
    let deadline = Instant::now() + Duration::from_secs(120);
    for chunk in 0..COUNT / 500 {
        let mut publish = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", "1883", "-q", "1", "-l"])
            .args(["-t", &format!("{topic}/devices/{}", chunk % 3)])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = String::new();
        for n in chunk * 500..(chunk + 1) * 500 {
            input.push_str(&format!("{{\"seq\":{n}}}\n"));
        }
        publish
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        assert!(publish.wait().unwrap().success());
        while lines() < (chunk + 1) * 500 {
            assert!(
                Instant::now() < deadline,
                "{} of {} after 120 s",
                lines(),
                (chunk + 1) * 500
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let written = std::fs::read_to_string(out_dir.join("out.jsonl")).unwrap();
    let counts = seq_counts(&written);
    assert_eq!(counts.len() as u64, COUNT);
    assert!(counts.values().all(|n| *n == 1));
}

#[test]
fn the_mqtt_connectors_need_their_network_grant() {
    require_broker();
    let s = Scratch::new();
    s.write(
        "p.toml",
        r#"
[plugins.src]
path = "{plugin:mqtt-source}"
config = { topics = ["a/#"] }

[plugins.null]
path = "{plugin:blackhole}"

[[pipeline]]
name = "nogrant"
source = "src"
sinks = ["null"]
"#,
    );
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "sandbox: denied tcp access to {BROKER} for plugin `nogrant/src` (not in grants.tcp)"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "mqtt {BROKER}: the sandbox refused the connection"
        )),
        "{stderr}"
    );
}
