//! The NATS connectors against nats-server (with JetStream) on 127.0.0.1:4222, checked with a
//! small blocking client of the NATS text protocol written here, independent of the plugins'.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{Running, Scratch, seq_counts, text};

const SERVER: &str = "127.0.0.1:4222";
const COUNT: u64 = 10_000;
const START: &str = "start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server \
                     -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log";

/// NATS tests take this lock: one of them restarts the server.
static NATS_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub(crate) fn nats_lock() -> std::sync::MutexGuard<'static, ()> {
    NATS_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn require_server() {
    assert!(
        TcpStream::connect(SERVER).is_ok(),
        "nats-server is not listening on {SERVER}; start it with `{START}`"
    );
}

/// A subject (`pbtest.KIND.PID.NANOS`) and a stream name (`PBTEST_KIND_PID_NANOS`) no other
/// run uses.
pub(crate) fn unique(kind: &str) -> (String, String) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let id = format!("{kind}.{}.{nanos}", std::process::id());
    (
        format!("pbtest.{id}"),
        format!("PBTEST_{}", id.replace(['.', '-'], "_")),
    )
}

/// A message as the test client sees it.
#[derive(Debug)]
pub(crate) struct Received {
    pub subject: String,
    pub reply: Option<String>,
    /// The raw header block of an `HMSG` (empty for `MSG`).
    pub headers: String,
    pub payload: Vec<u8>,
}

impl Received {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.split("\r\n").skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// A blocking NATS client: just enough protocol to publish, subscribe and call the JetStream
/// API.
pub(crate) struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    out: Vec<u8>,
    inbox: String,
    next_reply: u64,
    queued: std::collections::VecDeque<Received>,
}

impl Client {
    pub fn connect() -> Client {
        Client::connect_to(SERVER)
    }

    /// A client of the server at `addr` (`HOST:PORT`).
    pub fn connect_to(addr: &str) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut client = Client {
            stream,
            buf: Vec::new(),
            out: Vec::new(),
            inbox: format!("_INBOX.test{}", std::process::id()),
            next_reply: 0,
            queued: Default::default(),
        };
        let info = client.line(Duration::from_secs(5)).unwrap();
        assert!(info.starts_with("INFO "), "{info}");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        client.inbox = format!("_INBOX.test{}x{nanos}", std::process::id());
        client.out.extend_from_slice(
            b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"no_responders\":true,\"protocol\":1,\"name\":\"patchbay-test\"}\r\n",
        );
        let sub = format!("SUB {}.* 999999\r\n", client.inbox);
        client.out.extend_from_slice(sub.as_bytes());
        client.flush();
        client
    }

    /// One protocol line, waiting at most `timeout`.
    fn line(&mut self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Some(line);
            }
            self.fill(deadline)?;
        }
    }

    /// Read more bytes; `None` at the deadline.
    fn fill(&mut self, deadline: Instant) -> Option<()> {
        let left = deadline.checked_duration_since(Instant::now())?;
        self.stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(0) => panic!("nats-server closed the test client's connection"),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Some(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("reading from nats-server: {e}"),
        }
    }

    fn exact(&mut self, n: usize, deadline: Instant) -> Option<Vec<u8>> {
        while self.buf.len() < n + 2 {
            self.fill(deadline)?;
        }
        let bytes = self.buf[..n].to_vec();
        self.buf.drain(..n + 2);
        Some(bytes)
    }

    /// The next message (answering PINGs), or `None` after `timeout`. Handles PONG itself
    /// when `pong` is given (it is set when one came).
    fn read(&mut self, timeout: Duration, mut pong: Option<&mut bool>) -> Option<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let line = self.line(deadline.saturating_duration_since(Instant::now()))?;
            let parts: Vec<&str> = line.split(' ').collect();
            match parts[0] {
                "PING" => self.stream.write_all(b"PONG\r\n").unwrap(),
                "PONG" => {
                    if let Some(p) = pong.as_deref_mut() {
                        *p = true;
                        return None;
                    }
                }
                "+OK" | "INFO" => {}
                "-ERR" => panic!("nats-server: {line}"),
                "MSG" | "HMSG" => {
                    let hmsg = parts[0] == "HMSG";
                    let n = parts.len();
                    let total: usize = parts[n - 1].parse().unwrap();
                    let hdr: usize = if hmsg {
                        parts[n - 2].parse().unwrap()
                    } else {
                        0
                    };
                    let fixed = if hmsg { 5 } else { 4 };
                    let reply = (n == fixed + 1).then(|| parts[3].to_owned());
                    let body = self.exact(total, deadline + Duration::from_secs(5))?;
                    return Some(Received {
                        subject: parts[1].to_owned(),
                        reply,
                        headers: String::from_utf8_lossy(&body[..hdr]).into_owned(),
                        payload: body[hdr..].to_vec(),
                    });
                }
                _ => panic!("unexpected from nats-server: {line}"),
            }
        }
    }

    /// The next message, queued ones first.
    pub fn next(&mut self, timeout: Duration) -> Option<Received> {
        self.queued.pop_front().or_else(|| self.read(timeout, None))
    }

    /// Send what is buffered, then PING and wait for the PONG.
    pub fn flush(&mut self) {
        self.out.extend_from_slice(b"PING\r\n");
        let out = std::mem::take(&mut self.out);
        self.stream.write_all(&out).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut pong = false;
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no PONG from nats-server");
            if let Some(m) = self.read(left, Some(&mut pong)) {
                self.queued.push_back(m);
            }
            if pong {
                return;
            }
        }
    }

    pub fn sub(&mut self, subject: &str, sid: u64) {
        self.out
            .extend_from_slice(format!("SUB {subject} {sid}\r\n").as_bytes());
        self.flush();
    }

    /// Buffer a PUB (or HPUB with `headers`); [`Client::flush`] sends it.
    pub fn publish(
        &mut self,
        subject: &str,
        reply: Option<&str>,
        headers: &[(&str, &str)],
        payload: &[u8],
    ) {
        let reply = reply.map(|r| format!(" {r}")).unwrap_or_default();
        if headers.is_empty() {
            self.out.extend_from_slice(
                format!("PUB {subject}{reply} {}\r\n", payload.len()).as_bytes(),
            );
        } else {
            let mut block = String::from("NATS/1.0\r\n");
            for (k, v) in headers {
                block.push_str(&format!("{k}: {v}\r\n"));
            }
            block.push_str("\r\n");
            self.out.extend_from_slice(
                format!(
                    "HPUB {subject}{reply} {} {}\r\n{block}",
                    block.len(),
                    block.len() + payload.len()
                )
                .as_bytes(),
            );
        }
        self.out.extend_from_slice(payload);
        self.out.extend_from_slice(b"\r\n");
    }

    pub fn reply_subject(&mut self) -> String {
        self.next_reply += 1;
        format!("{}.{}", self.inbox, self.next_reply)
    }

    /// A JetStream API call: `$JS.API.{api}` with `body`; the JSON answer.
    pub fn api(&mut self, api: &str, body: &Value) -> Value {
        self.try_api(api, body)
            .unwrap_or_else(|| panic!("no answer to $JS.API.{api}"))
    }

    /// [`Client::api`], or `None` without an answer within 10 s.
    pub fn try_api(&mut self, api: &str, body: &Value) -> Option<Value> {
        let reply = self.reply_subject();
        let payload = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        self.publish(&format!("$JS.API.{api}"), Some(&reply), &[], &payload);
        self.flush();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut others = Vec::new();
        let answer = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(m) = self.next(left) else {
                self.queued.extend(others);
                return None;
            };
            if m.subject == reply {
                break m;
            }
            others.push(m);
        };
        self.queued.extend(others);
        Some(serde_json::from_slice(&answer.payload).unwrap_or(Value::Null))
    }

    /// Publish `{"seq":N}` for N in `range` into a stream (with a reply each) and wait for
    /// every PubAck.
    pub fn fill_stream(&mut self, subject: &str, range: std::ops::Range<u64>) {
        let mut replies = std::collections::HashSet::new();
        for n in range {
            let reply = self.reply_subject();
            self.publish(
                subject,
                Some(&reply),
                &[],
                format!("{{\"seq\":{n}}}").as_bytes(),
            );
            replies.insert(reply);
            if self.out.len() > 256 * 1024 {
                let out = std::mem::take(&mut self.out);
                self.stream.write_all(&out).unwrap();
            }
        }
        self.flush();
        while !replies.is_empty() {
            let m = self
                .next(Duration::from_secs(10))
                .unwrap_or_else(|| panic!("{} PubAcks missing", replies.len()));
            if replies.remove(&m.subject) {
                let ack: Value = serde_json::from_slice(&m.payload).unwrap();
                assert!(ack["seq"].as_u64().is_some(), "{ack}");
            }
        }
    }

    pub fn create_stream(&mut self, name: &str, subject: &str) {
        let created = self.api(
            &format!("STREAM.CREATE.{name}"),
            &json!({ "name": name, "subjects": [subject], "storage": "file" }),
        );
        assert!(created.get("error").is_none(), "{created}");
    }

    pub fn delete_stream(&mut self, name: &str) {
        self.api(&format!("STREAM.DELETE.{name}"), &Value::Null);
    }

    pub fn stream_messages(&mut self, name: &str) -> u64 {
        let info = self.api(&format!("STREAM.INFO.{name}"), &Value::Null);
        info["state"]["messages"]
            .as_u64()
            .unwrap_or_else(|| panic!("{info}"))
    }

    /// Every payload in a stream, one per line, read through an ephemeral push consumer.
    pub fn read_stream(&mut self, name: &str) -> String {
        let total = self.stream_messages(name);
        let deliver = format!("{}.read", self.inbox.replace("_INBOX", "_PBREAD"));
        self.sub(&deliver, 777);
        let created = self.api(
            &format!("CONSUMER.CREATE.{name}"),
            &json!({ "stream_name": name, "config": {
                "deliver_subject": deliver, "ack_policy": "none", "deliver_policy": "all"
            }}),
        );
        assert!(created.get("error").is_none(), "{created}");
        let mut lines = String::new();
        let mut got = 0;
        while got < total {
            let m = self
                .next(Duration::from_secs(10))
                .unwrap_or_else(|| panic!("read {got} of {total} messages of {name}"));
            if m.reply
                .as_deref()
                .is_some_and(|r| r.starts_with("$JS.ACK."))
            {
                lines.push_str(&String::from_utf8_lossy(&m.payload));
                lines.push('\n');
                got += 1;
            }
        }
        lines
    }
}

/// Sequence numbers of the `{"seq":N}` lines (other lines ignored).
fn seqs(lines: &str) -> BTreeMap<u64, u32> {
    // Lines kept as they were, so that `seq_counts` can tell a last line still being written.
    let only: String = lines
        .split_inclusive('\n')
        .filter(|l| l.contains("\"seq\""))
        .collect();
    seq_counts(&only)
}

fn summary(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| l.contains("msg/s") && !l.contains("progress"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_nats_sink_publishes_every_message_once_with_headers() {
    let _nats = nats_lock();
    require_server();
    let (subject, _) = unique("sink-core");
    let s = Scratch::new();
    // The test's own subscriber, subscribed (and confirmed by PONG) before anything is sent.
    let mut sub = Client::connect();
    sub.sub(&subject, 1);
    let received = std::thread::spawn(move || {
        let mut all = Vec::new();
        while (all.len() as u64) < COUNT {
            match sub.next(Duration::from_secs(60)) {
                Some(m) => all.push(m),
                None => break,
            }
        }
        // Anything past COUNT would be a duplicate.
        while let Some(m) = sub.next(Duration::from_millis(500)) {
            all.push(m);
        }
        all
    });
    s.write(
        "p.toml",
        &format!(
            r#"
[plugins.gen]
path = "{{plugin:generator}}"
config = {{ count = {COUNT}, time_header = "produced-at" }}

[plugins.out]
path = "{{plugin:nats-sink}}"
config = {{ url = "nats://{SERVER}", subject = "{subject}" }}
grants = {{ tcp = ["{SERVER}"] }}

[[pipeline]]
name = "to-nats"
source = "gen"
sinks = ["out"]
"#
        ),
    );
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    eprintln!("{}", summary(&stderr));
    assert!(
        stderr.contains(&format!(
            "pipeline `to-nats`: {COUNT} in, 0 dropped, {COUNT} written to `out`"
        )),
        "{stderr}"
    );
    let received = received.join().unwrap();
    let mut lines = String::new();
    for m in &received {
        assert_eq!(m.subject, subject);
        // The message's header came along as a NATS header.
        let at = m.header("produced-at").unwrap_or_else(|| panic!("{m:?}"));
        assert!(at.parse::<u64>().is_ok(), "{m:?}");
        lines.push_str(&String::from_utf8_lossy(&m.payload));
        lines.push('\n');
    }
    let counts = seqs(&lines);
    assert_eq!(received.len() as u64, COUNT);
    assert_eq!(counts.len() as u64, COUNT);
    assert!(counts.values().all(|n| *n == 1));
}

#[test]
fn the_nats_sink_stores_every_message_once_in_a_jetstream_stream() {
    let _nats = nats_lock();
    require_server();
    let (subject, stream) = unique("sink-js");
    let mut client = Client::connect();
    client.create_stream(&stream, &subject);
    let s = Scratch::new();
    s.write(
        "p.toml",
        &format!(
            r#"
[plugins.gen]
path = "{{plugin:generator}}"
config = {{ count = {COUNT} }}

[plugins.out]
path = "{{plugin:nats-sink}}"
config = {{ subject = "{subject}", mode = "jetstream", msg_id = "key" }}
grants = {{ tcp = ["{SERVER}"] }}

[[pipeline]]
name = "to-stream"
source = "gen"
sinks = ["out"]
"#
        ),
    );
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    eprintln!("{}", summary(&stderr));
    assert!(
        stderr.contains(&format!(
            "pipeline `to-stream`: {COUNT} in, 0 dropped, {COUNT} written to `out`"
        )),
        "{stderr}"
    );
    assert_eq!(client.stream_messages(&stream), COUNT);
    let counts = seqs(&client.read_stream(&stream));
    assert_eq!(counts.len() as u64, COUNT);
    assert!(counts.values().all(|n| *n == 1));
    client.delete_stream(&stream);
}

fn file_sink(out_dir: &std::path::Path) -> String {
    format!(
        r#"
[plugins.out]
path = "{{plugin:file-sink}}"
config = {{ path = "/out/out.jsonl" }}
grants = {{ dirs = [{{ host = "{}", guest = "/out", mode = "rw" }}] }}
"#,
        out_dir.display()
    )
}

#[test]
fn the_nats_source_delivers_every_core_message_once() {
    let _nats = nats_lock();
    require_server();
    let (subject, _) = unique("source-core");
    let s = Scratch::new();
    let out_dir = s.mkdir("out");
    s.write(
        "p.toml",
        &format!(
            r#"
[plugins.src]
path = "{{plugin:nats-source}}"
config = {{ url = "nats://{SERVER}", subject = "{subject}.>", queue = "workers" }}
grants = {{ tcp = ["{SERVER}"] }}
{}
[[pipeline]]
name = "from-nats"
source = "src"
sinks = ["out"]
"#,
            file_sink(&out_dir)
        ),
    );
    let mut child = Running::start(s.path(), &["run", "p.toml"]);
    let read = || std::fs::read_to_string(out_dir.join("out.jsonl")).unwrap_or_default();
    // Core NATS delivers to current subscribers only: probe until the source is subscribed.
    let mut client = Client::connect();
    child.wait_for(
        "the source never subscribed",
        Duration::from_secs(60),
        || {
            client.publish(&format!("{subject}.probe"), None, &[], b"{\"probe\":true}");
            client.flush();
            std::thread::sleep(Duration::from_millis(100));
            !read().is_empty()
        },
    );
    let started = Instant::now();
    for n in 0..COUNT {
        client.publish(
            &format!("{subject}.devices.{}", n % 3),
            None,
            &[],
            format!("{{\"seq\":{n}}}").as_bytes(),
        );
        if n % 1000 == 999 {
            client.flush();
        }
    }
    client.flush();
    child.wait_for(
        "not every message arrived",
        Duration::from_secs(120),
        || seqs(&read()).len() as u64 >= COUNT,
    );
    eprintln!(
        "nats-source core: {COUNT} messages in {:.2}s",
        started.elapsed().as_secs_f64()
    );
    let (code, stderr) = child.interrupt();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "subscribed to `{subject}.>` in queue group `workers`"
        )),
        "{stderr}"
    );
    let counts = seqs(&read());
    assert_eq!(counts.len() as u64, COUNT);
    assert!(counts.values().all(|n| *n == 1));
}

#[test]
fn the_nats_source_reads_a_stream_and_acknowledges_after_delivery() {
    jetstream_source_delivers_every_message_once(1);
}

/// `concurrency = 2` on a JetStream source: two instances pull from one durable consumer;
/// every message arrives once, each acknowledged once (none delivered again).
#[test]
fn two_jetstream_source_instances_share_one_durable_consumer() {
    jetstream_source_delivers_every_message_once(2);
}

/// `COUNT` messages of a stream through `instances` instances of the source pulling from one
/// durable consumer: each written once, acknowledged once, nothing left.
fn jetstream_source_delivers_every_message_once(instances: u32) {
    let _nats = nats_lock();
    require_server();
    let (subject, stream) = unique(&format!("source-js{instances}"));
    let mut client = Client::connect();
    client.create_stream(&stream, &format!("{subject}.>"));
    client.fill_stream(&format!("{subject}.a"), 0..COUNT);
    assert_eq!(client.stream_messages(&stream), COUNT);
    let s = Scratch::new();
    let out_dir = s.mkdir("out");
    s.write(
        "p.toml",
        &format!(
            r#"
[plugins.src]
path = "{{plugin:nats-source}}"
config = {{ mode = "jetstream", stream = "{stream}", consumer = "pb", filter_subject = "{subject}.>" }}
grants = {{ tcp = ["{SERVER}"] }}
{}
[[pipeline]]
name = "from-stream"
source = "src"
sinks = ["out"]
batch_size = 100

[pipeline.stages.src]
concurrency = {instances}
"#,
            file_sink(&out_dir)
        ),
    );
    let started = Instant::now();
    let mut child = Running::start(s.path(), &["run", "p.toml"]);
    let read = || std::fs::read_to_string(out_dir.join("out.jsonl")).unwrap_or_default();
    child.wait_for(
        "not every message arrived",
        Duration::from_secs(120),
        || read().lines().count() as u64 >= COUNT,
    );
    eprintln!(
        "nats-source jetstream, {instances} instance(s): {COUNT} messages in {:.2}s (with \
         start-up)",
        started.elapsed().as_secs_f64()
    );
    let (code, stderr) = child.interrupt();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!("consumer `pb` on stream `{stream}`")),
        "{stderr}"
    );
    if instances > 1 {
        assert!(
            stderr.contains(&format!("source `src` runs {instances} instances")),
            "{stderr}"
        );
    }
    let counts = seqs(&read());
    assert_eq!(counts.len() as u64, COUNT);
    assert!(counts.values().all(|n| *n == 1), "duplicates");
    // Everything delivered was acknowledged once, and nothing is left.
    let mut info = Value::Null;
    crate::wait_until(
        "the consumer still has unacknowledged messages",
        Duration::from_secs(10),
        || {
            info = client.api(&format!("CONSUMER.INFO.{stream}.pb"), &Value::Null);
            info["num_pending"] == 0 && info["num_ack_pending"] == 0
        },
    );
    assert_eq!(info["delivered"]["stream_seq"], COUNT, "{info}");
    assert_eq!(info["num_redelivered"], 0, "acknowledged once each: {info}");
    client.delete_stream(&stream);
}

/// A core subscription without a queue group cannot be split: `run` says why and what to set.
#[test]
fn a_core_nats_source_without_a_queue_group_refuses_two_instances() {
    require_server();
    let s = Scratch::new();
    s.write(
        "p.toml",
        &format!(
            r#"
[plugins.src]
path = "{{plugin:nats-source}}"
config = {{ subject = "x.>" }}
grants = {{ tcp = ["{SERVER}"] }}

[plugins.null]
path = "{{plugin:blackhole}}"

[[pipeline]]
name = "p"
source = "src"
sinks = ["null"]

[pipeline.stages.src]
concurrency = 2
"#
        ),
    );
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "pipeline `p`: source `src` cannot run 2 instances (`concurrency = 2` in \
             [pipeline.stages.src]): with mode = \"core\" and no `queue`, each of the 2 \
             instances would get every message; set `queue`"
        ),
        "{stderr}"
    );
}

/// Headers and payloads pass from NATS through the source and the sink back to NATS.
#[test]
fn nats_headers_pass_through_both_connectors() {
    let _nats = nats_lock();
    require_server();
    let (subject, _) = unique("through");
    let s = Scratch::new();
    s.write(
        "p.toml",
        &format!(
            r#"
[plugins.src]
path = "{{plugin:nats-source}}"
config = {{ subject = "{subject}.in" }}
grants = {{ tcp = ["{SERVER}"] }}

[plugins.out]
path = "{{plugin:nats-sink}}"
config = {{ subject = "{subject}.out" }}
grants = {{ tcp = ["{SERVER}"] }}

[[pipeline]]
name = "through"
source = "src"
sinks = ["out"]
"#
        ),
    );
    let mut sub = Client::connect();
    sub.sub(&format!("{subject}.out"), 1);
    let child = Running::start(s.path(), &["run", "p.toml"]);
    let mut client = Client::connect();
    // Probe until the source is subscribed.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        client.publish(&format!("{subject}.in"), None, &[], b"probe");
        client.flush();
        if sub.next(Duration::from_millis(200)).is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "the source never subscribed");
    }
    while sub.next(Duration::from_millis(300)).is_some() {}
    let big = vec![b'x'; 200_000];
    for n in 0..100u32 {
        let trace = format!("t-{n}");
        let payload = if n == 50 {
            big.clone()
        } else {
            format!("m-{n}").into_bytes()
        };
        client.publish(
            &format!("{subject}.in"),
            None,
            &[("X-Trace", &trace), ("X-Two", "a b")],
            &payload,
        );
    }
    client.publish(&format!("{subject}.in"), None, &[], b"plain");
    client.flush();
    for n in 0..100u32 {
        let m = sub
            .next(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("message {n} missing"));
        assert_eq!(
            m.header("X-Trace"),
            Some(format!("t-{n}").as_str()),
            "{m:?}"
        );
        assert_eq!(m.header("X-Two"), Some("a b"));
        if n == 50 {
            assert_eq!(m.payload, big);
        } else {
            assert_eq!(m.payload, format!("m-{n}").as_bytes());
        }
    }
    let plain = sub.next(Duration::from_secs(10)).unwrap();
    assert_eq!(
        (plain.payload.as_slice(), plain.headers.as_str()),
        (&b"plain"[..], "")
    );
    let (code, stderr) = child.interrupt();
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn the_nats_connectors_explain_a_missing_stream() {
    let _nats = nats_lock();
    require_server();
    let (subject, stream) = unique("nostream");
    let s = Scratch::new();
    s.write(
        "p.toml",
        &format!(
            r#"
[plugins.gen]
path = "{{plugin:generator}}"
config = {{ count = 5 }}

[plugins.out]
path = "{{plugin:nats-sink}}"
config = {{ subject = "{subject}", mode = "jetstream" }}
grants = {{ tcp = ["{SERVER}"] }}

[[pipeline]]
name = "nostream"
source = "gen"
sinks = ["out"]
"#
        ),
    );
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("no JetStream stream captures subject `{subject}`")),
        "{stderr}"
    );
    s.write(
        "p.toml",
        &format!(
            r#"
[plugins.src]
path = "{{plugin:nats-source}}"
config = {{ mode = "jetstream", stream = "{stream}", consumer = "c" }}
grants = {{ tcp = ["{SERVER}"] }}

[plugins.null]
path = "{{plugin:blackhole}}"

[[pipeline]]
name = "nostream"
source = "src"
sinks = ["null"]
"#
        ),
    );
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("JetStream stream `{stream}` does not exist"))
            && stderr.contains(&format!("$JS.API.STREAM.CREATE.{stream}")),
        "{stderr}"
    );
}

#[test]
fn the_nats_connectors_need_their_network_grant() {
    let _nats = nats_lock();
    require_server();
    let s = Scratch::new();
    for (name, plugin, config) in [
        ("sink", "nats-sink", r#"{ subject = "never" }"#),
        ("source", "nats-source", r#"{ subject = "never" }"#),
    ] {
        let (src, sinks) = if name == "sink" {
            (
                "[plugins.gen]\npath = \"{plugin:generator}\"\nconfig = { count = 1 }\n",
                "gen\"\nsinks = [\"n\"]",
            )
        } else {
            (
                "[plugins.null]\npath = \"{plugin:blackhole}\"\n",
                "n\"\nsinks = [\"null\"]",
            )
        };
        s.write(
            "p.toml",
            &format!(
                "{src}\n[plugins.n]\npath = \"{{plugin:{plugin}}}\"\nconfig = {config}\n\n[[pipeline]]\nname = \"nogrant\"\nsource = \"{sinks}\n"
            ),
        );
        let out = s.run(&["run", "p.toml"]);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{plugin}: {stderr}");
        assert!(
            stderr.contains(
                "sandbox: denied tcp access to a new socket for plugin `nogrant/n` (not granted: \
             no grants.tcp or grants.listen)"
            ),
            "{plugin}: {stderr}"
        );
        assert!(
            stderr.contains(&format!(
                "nats {SERVER}: the sandbox refused the connection"
            )) && stderr.contains(&format!(
                "grant it in the pipeline file: grants = {{ tcp = [\"{SERVER}\"] }}"
            )),
            "{plugin}: {stderr}"
        );
    }
}

/// The pid of the machine's nats-server (the one started with `-p 4222`), not of the private
/// servers other tests run at the same time (a `pidof nats-server` once stopped those too, and
/// `start-stop-daemon` then saw them and did not start this one).
fn machine_nats_pid() -> Option<String> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let nats = args.first().is_some_and(|a| a.ends_with(b"nats-server"));
        if nats && args.windows(2).any(|w| w[0] == b"-p" && w[1] == b"4222") {
            return Some(entry.file_name().to_string_lossy().into_owned());
        }
    }
    None
}

/// Stop nats-server (SIGTERM: it shuts down cleanly, JetStream data stays in
/// /var/lib/nats-server) and start it again with the machine's own command (see below); wait until
/// JetStream answers for `stream`.
fn restart_nats(stream: &str) {
    let pid = machine_nats_pid().expect("nats-server is not running on port 4222");
    assert!(Command::new("kill").arg(&pid).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while machine_nats_pid().is_some() {
        assert!(Instant::now() < deadline, "nats-server did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Down for a moment, as in a real restart.
    std::thread::sleep(Duration::from_millis(700));
    // The machine's command, with a pid file of its own: by `--exec` alone, start-stop-daemon
    // takes any nats-server (the cluster test's private ones) for this one and starts nothing.
    let restart = START.replacen(
        "--oknodo",
        "--oknodo --make-pidfile --pidfile /tmp/patchbay-test-nats-4222.pid",
        1,
    );
    let status = Command::new("sh").args(["-c", &restart]).status().unwrap();
    assert!(status.success());
    while TcpStream::connect(SERVER).is_err() {
        assert!(Instant::now() < deadline, "nats-server did not come back");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut client = Client::connect();
    let info = client.api(&format!("STREAM.INFO.{stream}"), &Value::Null);
    assert!(info.get("error").is_none(), "{info}");
}

/// Restart the server while a JetStream source and a JetStream sink run: both reconnect by
/// themselves, and nothing acknowledged is lost.
#[test]
fn the_nats_connectors_recover_when_the_server_restarts() {
    let _nats = nats_lock();
    require_server();
    let (in_subject, in_stream) = unique("restart-in");
    let (out_subject, out_stream) = unique("restart-out");
    let mut client = Client::connect();
    client.create_stream(&in_stream, &in_subject);
    client.create_stream(&out_stream, &out_subject);
    let total = 6_000u64;
    client.fill_stream(&in_subject, 0..total / 2);
    let s = Scratch::new();
    let out_dir = s.mkdir("out");
    s.write(
        "p.toml",
        &format!(
            r#"
[plugins.gen]
path = "{{plugin:generator}}"
config = {{ count = {total}, rate = 1500 }}

[plugins.to-stream]
path = "{{plugin:nats-sink}}"
config = {{ subject = "{out_subject}", mode = "jetstream", msg_id = "key" }}
grants = {{ tcp = ["{SERVER}"] }}

[plugins.from-stream]
path = "{{plugin:nats-source}}"
config = {{ mode = "jetstream", stream = "{in_stream}", consumer = "c", ack_wait_ms = 2000 }}
grants = {{ tcp = ["{SERVER}"] }}
{}
[[pipeline]]
name = "into"
source = "gen"
sinks = ["to-stream"]
batch_size = 50
retry = {{ attempts = 200, backoff = "20ms", max_backoff = "500ms" }}

[[pipeline]]
name = "out-of"
source = "from-stream"
sinks = ["out"]
batch_size = 100
"#,
            file_sink(&out_dir)
        ),
    );
    let mut child = Running::start(s.path(), &["run", "p.toml"]);
    let read = || seqs(&std::fs::read_to_string(out_dir.join("out.jsonl")).unwrap_or_default());
    child.wait_for("the source did not start", Duration::from_secs(60), || {
        !read().is_empty()
    });
    std::thread::sleep(Duration::from_millis(800));
    drop(client);
    restart_nats(&in_stream);
    let mut client = Client::connect();
    client.fill_stream(&in_subject, total / 2..total);
    child.wait_for(
        "the source did not read everything after the restart",
        Duration::from_secs(90),
        || read().len() as u64 >= total,
    );
    // The generator's pipeline ends by itself once every message is stored.
    child.wait_for(
        "the sink did not finish after the restart",
        Duration::from_secs(90),
        || {
            client.stream_messages(&out_stream) >= total
                && seqs(&client.read_stream(&out_stream)).len() as u64 >= total
        },
    );
    let (code, stderr) = child.interrupt();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("connection lost"), "{stderr}");
    assert!(stderr.contains(": reconnected"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "pipeline `into`: {total} in, 0 dropped, {total} written"
        )),
        "{stderr}"
    );
    // Every message at least once on both sides.
    let read = read();
    assert!((0..total).all(|n| read.contains_key(&n)), "{read:?}");
    let stored = seqs(&client.read_stream(&out_stream));
    assert!((0..total).all(|n| stored.contains_key(&n)), "{stored:?}");
    client.delete_stream(&in_stream);
    client.delete_stream(&out_stream);
}
