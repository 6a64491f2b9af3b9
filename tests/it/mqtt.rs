//! The MQTT connectors against Mosquitto on 127.0.0.1:1883, checked with `mosquitto_sub` and
//! `mosquitto_pub`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Running, Scratch, seq_counts, text};

const BROKER: &str = "127.0.0.1:1883";
const COUNT: u64 = 10_000;

/// Tests that use the shared broker on 1883 take this lock, one at a time: the stock
/// configuration queues at most 1,000 messages per client, and two 10,000-message runs at once
/// on a loaded machine can go past that. (A test that also takes `redis_lock` or `nats_lock`
/// takes them first: redis, then nats, then mqtt.)
pub(crate) static MQTT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub(crate) fn mqtt_lock() -> std::sync::MutexGuard<'static, ()> {
    MQTT_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

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
    let _mqtt = mqtt_lock();
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
    source_delivers_every_message_once(false);
}

/// `concurrency = 2` with a shared subscription: the broker splits the messages between the
/// two instances (clients `pb-N` and `pb-N-2`); each arrives once.
#[test]
fn two_mqtt_source_instances_share_a_subscription() {
    source_delivers_every_message_once(true);
}

fn source_delivers_every_message_once(shared: bool) {
    let _mqtt = mqtt_lock();
    require_broker();
    let topic = unique(if shared { "shared" } else { "source" });
    let (filter, stages) = if shared {
        (
            format!("$share/pb/{topic}/#"),
            "[pipeline.stages.src]\nconcurrency = 2\n",
        )
    } else {
        (format!("{topic}/#"), "")
    };
    let s = Scratch::new();
    let out_dir = s.mkdir("out");
    s.write(
        "p.toml",
        &format!(
            r#"
[plugins.src]
path = "{{plugin:mqtt-source}}"
config = {{ url = "mqtt://{BROKER}", topics = ["{filter}"], qos = 1, client_id = "pb-{}" }}
grants = {{ tcp = ["{BROKER}"] }}

[plugins.out]
path = "{{plugin:file-sink}}"
config = {{ path = "/out/out.jsonl" }}
grants = {{ dirs = [{{ host = "{}", guest = "/out", mode = "rw" }}] }}

[[pipeline]]
name = "from-mqtt"
source = "src"
sinks = ["out"]
{stages}"#,
            std::process::id(),
            out_dir.display()
        ),
    );
    let child = Running::start(s.path(), &["run", "p.toml"]);
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
    let (code, stderr) = child.interrupt();
    assert_eq!(code, Some(0), "{stderr}");
    if shared {
        assert!(stderr.contains("source `src` runs 2 instances"), "{stderr}");
    }
    let written = std::fs::read_to_string(out_dir.join("out.jsonl")).unwrap();
    let counts = seq_counts(&written);
    assert_eq!(counts.len() as u64, COUNT);
    assert!(counts.values().all(|n| *n == 1));
}

#[test]
fn the_mqtt_connectors_need_their_network_grant() {
    let _mqtt = mqtt_lock();
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
        stderr.contains(
            "sandbox: denied tcp access to a new socket for plugin `nogrant/src` (not granted: \
             no grants.tcp or grants.listen)"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "mqtt {BROKER}: the sandbox refused the connection"
        )),
        "{stderr}"
    );
}

/// A Mosquitto of the test's own on a free port, with persistence in a temporary directory,
/// so that restarting it disturbs no other test and its configuration is the test's to choose.
struct PrivateBroker {
    port: u16,
    conf: std::path::PathBuf,
    child: Option<std::process::Child>,
    _dir: tempfile::TempDir,
}

impl PrivateBroker {
    fn new() -> PrivateBroker {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.path().join("mosquitto.conf");
        // `persistence` keeps sessions and their queued QoS 1 messages over a restart (written
        // on SIGTERM); `max_queued_messages 0` lifts the default limit of 1,000 per client,
        // beyond which Mosquitto drops messages for a slow or absent client even after it
        // acknowledged them to the publisher; `user root` keeps it from switching to the
        // `mosquitto` user, who could not write the temporary directory (ignored unless root).
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {}/\nmax_queued_messages 0\nuser root\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let mut broker = PrivateBroker {
            port,
            conf,
            child: None,
            _dir: dir,
        };
        assert!(
            broker.start(),
            "mosquitto -c {} did not start",
            broker.conf.display()
        );
        broker
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn accepts(&self) -> bool {
        std::net::TcpStream::connect(self.addr()).is_ok()
    }

    /// Start it; wait (up to 10 s) until it accepts.
    fn start(&mut self) -> bool {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto (Debian package mosquitto)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.accepts() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.accepts()
    }

    /// SIGTERM (it saves its persistence file on the way out); wait until it is gone.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `mosquitto_sub -q 1 -c -i ID -t TOPIC`, its output lines collected into a shared list.
struct Subscriber {
    child: std::process::Child,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Subscriber {
    fn start(
        port: u16,
        id: &str,
        topic: &str,
        lines: &std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    ) -> Self {
        let mut child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-c"])
            .args(["-i", id, "-t", topic])
            .stdout(Stdio::piped())
            .spawn()
            .expect("mosquitto_sub (Debian package mosquitto-clients)");
        let stdout = child.stdout.take().unwrap();
        let lines = lines.clone();
        // Read as it comes: a stalled subscriber makes the broker queue, then drop.
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
        });
        Subscriber {
            child,
            reader: Some(reader),
        }
    }

    fn stop(self) {
        drop(self);
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        // SIGTERM: it prints (and flushes) every message it acknowledged before it goes.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

fn publish_seqs(port: u16, topic: &str, seqs: std::ops::Range<u64>) -> bool {
    let port = port.to_string();
    let mut publish = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port, "-q", "1", "-l", "-t", topic])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let input: String = seqs.map(|n| format!("{{\"seq\":{n}}}\n")).collect();
    let _ = publish.stdin.take().unwrap().write_all(input.as_bytes());
    publish.wait().unwrap().success()
}

/// Restart Mosquitto (SIGTERM, down for a second, started again) while both MQTT connectors
/// run: each notices, reconnects by itself, and nothing the broker acknowledged is lost.
///
/// The broker is the test's own ([`PrivateBroker`]): `persistence` writes the persistent
/// sessions (`clean_session = false`: the source's, and the checking subscriber's) and the
/// QoS 1 messages queued or in flight for them when Mosquitto stops on SIGTERM, and reads them
/// back on start; `max_queued_messages 0` keeps the broker from dropping what it acknowledged
/// to a publisher when a subscriber falls behind (the stock configuration drops beyond 1,000
/// per client, which on a loaded machine the checking subscriber can be).
#[test]
fn the_mqtt_connectors_recover_when_the_broker_restarts() {
    let mut broker = PrivateBroker::new();
    let addr = broker.addr();
    let port = broker.port;
    let pid = std::process::id();
    let src_topic = unique("restart-source");
    let sink_topic = unique("restart-sink");
    let sub_id = format!("pb-restart-check-{pid}");
    let source_id = format!("pb-restart-source-{pid}");
    let total = 20_000u64;
    let s = Scratch::new();
    let out_dir = s.mkdir("out");
    s.write(
        "p.toml",
        &format!(
            r#"
[plugins.gen]
path = "{{plugin:generator}}"
config = {{ count = {total}, rate = 4000 }}

[plugins.to-mqtt]
path = "{{plugin:mqtt-sink}}"
config = {{ url = "mqtt://{addr}", topic = "{sink_topic}", qos = 1, client_id = "pb-restart-sink-{pid}" }}
grants = {{ tcp = ["{addr}"] }}

[plugins.from-mqtt]
path = "{{plugin:mqtt-source}}"
config = {{ url = "mqtt://{addr}", topics = ["{src_topic}/#"], qos = 1, client_id = "{source_id}" }}
grants = {{ tcp = ["{addr}"] }}

[plugins.out]
path = "{{plugin:file-sink}}"
config = {{ path = "/out/out.jsonl" }}
grants = {{ dirs = [{{ host = "{}", guest = "/out", mode = "rw" }}] }}

[[pipeline]]
name = "into"
source = "gen"
sinks = ["to-mqtt"]
batch_size = 500
retry = {{ attempts = 200, backoff = "20ms", max_backoff = "200ms" }}

[[pipeline]]
name = "out-of"
source = "from-mqtt"
sinks = ["out"]
"#,
            out_dir.display()
        ),
    );
    // The checking subscriber's persistent session, registered before the run: from here on
    // the broker keeps what the sink publishes for it, connected or not.
    let status = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-c"])
        .args(["-i", &sub_id, "-t", &sink_topic, "-E"])
        .status()
        .unwrap();
    assert!(status.success());
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sub = Subscriber::start(port, &sub_id, &sink_topic, &received);
    let count_received = || received.lock().unwrap().len() as u64;
    let read =
        || seq_counts(&std::fs::read_to_string(out_dir.join("out.jsonl")).unwrap_or_default());
    let started = Instant::now();
    let child = Running::start(s.path(), &["run", "p.toml"]);
    let wait = |what: &str, secs: u64, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !done() {
            assert!(Instant::now() < deadline, "{what} after {secs} s");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // The sink is publishing; a first chunk through the source shows it has subscribed.
    wait("the sink did not start", 60, &|| count_received() >= 1000);
    assert!(publish_seqs(port, &format!("{src_topic}/a"), 0..100));
    wait("the source did not start", 60, &|| read().len() >= 100);
    // A chunk that may be only partly read (and acknowledged) when the broker goes.
    assert!(publish_seqs(port, &format!("{src_topic}/b"), 100..600));
    let restart = Instant::now();
    broker.stop();
    let down = restart.elapsed();
    sub.stop();
    std::thread::sleep(Duration::from_secs(1));
    assert!(broker.start(), "mosquitto did not come back");
    let sub = Subscriber::start(port, &sub_id, &sink_topic, &received);
    let restarted = restart.elapsed();
    // Published while the source may still be waiting out its back-off: its persistent
    // session, read back from the broker's file, keeps them.
    assert!(publish_seqs(port, &format!("{src_topic}/c"), 600..1100));
    // From here on a failure is reported with what `patchbay run` said: wait, stop it, then
    // check.
    let until = |secs: u64, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !done() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        restart.elapsed()
    };
    let source_done = until(60, &|| read().len() >= 1100);
    let sink_done = until(90, &|| {
        seq_counts(&received.lock().unwrap().join("\n")).len() as u64 >= total
    });
    let (code, stderr) = child.interrupt();
    sub.stop();
    eprintln!(
        "broker refusing {down:?} after the SIGTERM, accepting again after {restarted:?}; source \
         side complete after {source_done:?}, sink side after {sink_done:?}; whole run {:?}",
        started.elapsed()
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains(" failed in "), "{stderr}");
    // Both noticed and came back by themselves.
    for stage in ["out-of/from-mqtt", "into/to-mqtt"] {
        for event in ["connection lost", "reconnected"] {
            assert!(
                stderr.contains(&format!("{stage}: mqtt {addr}: {event}")),
                "{stage} {event}?\n{stderr}"
            );
        }
    }
    assert!(
        stderr.contains(&format!(
            "pipeline `into`: {total} in, 0 dropped, {total} written to `to-mqtt`"
        )),
        "{stderr}"
    );
    // Source side: every number mosquitto_pub had acknowledged came out at least once.
    let read = read();
    let missing: Vec<u64> = (0..1100).filter(|n| !read.contains_key(n)).collect();
    assert!(missing.is_empty(), "missing from the file: {missing:?}");
    // Sink side: every message the pipeline reported written reached the subscriber at least
    // once (the broker acknowledged each, and kept it for the subscriber over the restart).
    let got = seq_counts(&received.lock().unwrap().join("\n"));
    let missing: Vec<u64> = (0..total).filter(|n| !got.contains_key(n)).collect();
    assert!(
        missing.is_empty(),
        "{} of {total} missing at the subscriber: {:?}…\n{stderr}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
}
