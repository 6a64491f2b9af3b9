//! Request/reply (contract 0.2.0, `source-reply-api`): `http-source` with `respond =
//! "pipeline"` and `nats-source` with `reply = true` answer each request with what the pipeline
//! sends to its `reply` destination; a refused body gets 422 with the reason, a slow pipeline
//! 504 after `reply_timeout` without losing anything else.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::nats::{Client, nats_lock, unique};
use crate::{Running, Scratch};

fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn open(addr: &str) -> Conn {
        let writer = TcpStream::connect(addr).unwrap();
        writer
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let reader = BufReader::new(writer.try_clone().unwrap());
        Conn { writer, reader }
    }

    /// POST `body`; the status, content type and body of the answer.
    fn post(&mut self, body: &str) -> (u16, String, String) {
        let head = format!(
            "POST /api HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n",
            body.len()
        );
        self.writer.write_all(head.as_bytes()).unwrap();
        self.writer.write_all(body.as_bytes()).unwrap();
        let mut status_line = String::new();
        self.reader.read_line(&mut status_line).unwrap();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP answer: {status_line:?}"));
        let (mut length, mut content_type) = (0usize, String::new());
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap(),
                    "content-type" => content_type = value.trim().to_owned(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).unwrap();
        (status, content_type, String::from_utf8(body).unwrap())
    }
}

/// `http-source` (respond = "pipeline") → `map` → `reply`, plus `extra` TOML.
fn gateway(addr: &str, map: &str, sinks: &str, extra: &str, timeout: &str) -> (Scratch, Running) {
    let s = Scratch::new();
    s.mkdir("out");
    s.write(
        "p.toml",
        &format!(
            r#"
[plugins.api]
path = "{{plugin:http-source}}"
config = {{ listen = "{addr}", path = "/api", respond = "pipeline" }}
grants = {{ listen = ["{addr}"] }}

[plugins.m]
path = "{{plugin:map}}"
config = {map}
{extra}
[[pipeline]]
name = "api"
source = "api"
transforms = ["m"]
sinks = {sinks}
reply_timeout = "{timeout}"
"#
        ),
    );
    let mut child = Running::start(s.path(), &["run", "p.toml"]);
    child.wait_for("http-source listening", Duration::from_secs(60), || {
        TcpStream::connect(addr).is_ok()
    });
    (s, child)
}

#[test]
fn a_thousand_requests_over_16_connections_each_get_their_own_answer() {
    let addr = free_addr();
    let (_s, child) = gateway(
        &addr,
        r#"{ root = "{'id': json.id, 'twice': json.n * 2, 'hello': 'hello ' + json.name}", drop_if = "json.id < 0" }"#,
        r#"["reply"]"#,
        "",
        "10s",
    );
    let threads: Vec<_> = (0..16u64)
        .map(|t| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut conn = Conn::open(&addr);
                let mut answered = 0;
                for i in (t..1000).step_by(16) {
                    let body = format!(r#"{{"id":{i},"n":{},"name":"caller {i}"}}"#, i * 3);
                    let (status, content_type, answer) = conn.post(&body);
                    assert_eq!(status, 200, "{answer}");
                    assert_eq!(content_type, "application/json");
                    assert_eq!(
                        answer,
                        format!(
                            r#"{{"hello":"hello caller {i}","id":{i},"twice":{}}}"#,
                            i * 6
                        )
                    );
                    answered += 1;
                }
                answered
            })
        })
        .collect();
    let answered: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(answered, 1000);

    // A body `map` cannot read is refused with the reason; the connection serves on.
    let mut conn = Conn::open(&addr);
    let (status, _, answer) = conn.post("not json");
    assert_eq!(status, 422, "{answer}");
    assert!(answer.starts_with(r#"{"error":""#), "{answer}");
    assert!(answer.contains("not JSON"), "{answer}");
    // One the pipeline drops: nothing reaches `reply`, so no content.
    let (status, _, answer) = conn.post(r#"{"id":-1,"n":1,"name":"dropped"}"#);
    assert_eq!((status, answer.as_str()), (204, ""));
    let (status, _, answer) = conn.post(r#"{"id":1,"n":1,"name":"again"}"#);
    assert_eq!(
        (status, answer.as_str()),
        (200, r#"{"hello":"hello again","id":1,"twice":2}"#)
    );

    let (code, stderr) = child.interrupt();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("1001 written to `reply`"), "{stderr}");
}

#[test]
fn a_slow_pipeline_answers_504_after_reply_timeout_and_loses_nothing() {
    let addr = free_addr();
    let (s, child) = gateway(
        &addr,
        r#"{ set = { seen = "true" } }"#,
        r#"["reply", "slow"]"#,
        r#"
[plugins.slow]
path = "{plugin:slow-sink}"
config = { path = "/out/slow.jsonl", delay = "700ms" }
grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }] }
"#,
        "200ms",
    );
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || Conn::open(&addr).post(&format!(r#"{{"id":{i}}}"#)))
        })
        .collect();
    for t in threads {
        let (status, _, answer) = t.join().unwrap();
        assert_eq!(status, 504, "{answer}");
        assert_eq!(
            answer,
            r#"{"error":"the pipeline gave no answer within its reply_timeout"}"#
        );
    }
    // Every record still reaches the slow sink.
    let out = s.path().join("out/slow.jsonl");
    crate::wait_until("the slow sink's writes", Duration::from_secs(60), || {
        std::fs::read_to_string(&out).is_ok_and(|t| t.lines().count() == 4)
    });
    let (code, stderr) = child.interrupt();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("4 requests timed out (reply_timeout)"),
        "{stderr}"
    );
}

#[test]
fn nats_requests_get_the_pipelines_answer() {
    let _lock = nats_lock();
    let (subject, _) = unique("req");
    let s = Scratch::new();
    s.write(
        "p.toml",
        &format!(
            r#"
[plugins.svc]
path = "{{plugin:nats-source}}"
config = {{ subject = "{subject}", reply = true }}
grants = {{ tcp = ["127.0.0.1:4222"] }}

[plugins.m]
path = "{{plugin:map}}"
config = {{ root = "{{'sum': json.a + json.b}}" }}

[[pipeline]]
name = "svc"
source = "svc"
transforms = ["m"]
sinks = ["reply"]
"#
        ),
    );
    let mut child = Running::start(s.path(), &["run", "p.toml"]);
    let mut client = Client::connect();
    // The subscription is up once a request gets the service's answer (before that, the
    // server answers at once with an empty "no responders" status).
    child.wait_for("the service answering", Duration::from_secs(60), || {
        let inbox = client.reply_subject();
        client.publish(&subject, Some(&inbox), &[], br#"{"a":0,"b":0}"#);
        client.flush();
        let answered = client
            .next(Duration::from_millis(500))
            .is_some_and(|m| !m.payload.is_empty());
        if !answered {
            std::thread::sleep(Duration::from_millis(100));
        }
        answered
    });
    while client.next(Duration::from_millis(300)).is_some() {}
    let mut inboxes = Vec::new();
    for i in 0..200u64 {
        let inbox = client.reply_subject();
        let body = format!(r#"{{"a":{i},"b":{}}}"#, i * 10);
        client.publish(&subject, Some(&inbox), &[], body.as_bytes());
        inboxes.push((inbox, i * 11));
    }
    let bad = client.reply_subject();
    client.publish(&subject, Some(&bad), &[], b"{");
    client.flush();
    let mut answers = std::collections::BTreeMap::new();
    while answers.len() < 201 {
        let m = client
            .next(Duration::from_secs(30))
            .expect("an answer to every request");
        answers.insert(m.subject.clone(), m);
    }
    for (inbox, sum) in &inboxes {
        let payload = String::from_utf8(answers[inbox].payload.clone()).unwrap();
        assert_eq!(payload, format!(r#"{{"sum":{sum}}}"#), "{inbox}");
    }
    // A request the pipeline refuses: an empty answer with the NATS service error headers.
    let refused = &answers[&bad];
    assert!(refused.payload.is_empty());
    assert_eq!(refused.header("Nats-Service-Error-Code"), Some("422"));
    assert!(
        refused
            .header("Nats-Service-Error")
            .is_some_and(|e| e.contains("not JSON")),
        "{:?}",
        refused.headers
    );
    let (code, stderr) = child.interrupt();
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn reply_needs_a_source_that_answers_requests() {
    let s = Scratch::new();
    s.write(
        "p.toml",
        r#"
[plugins.gen]
path = "{plugin:generator}"
config = { count = 1 }

[[pipeline]]
name = "p"
source = "gen"
sinks = ["reply"]
"#,
    );
    let out = s.run(&["validate", "p.toml"]);
    let (_, stderr) = crate::text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "p.toml:9:10: pipeline `p`: `reply` is one of its destinations, but source `gen` \
             does not answer requests (it exports no `source-reply-api`)"
        ),
        "{stderr}"
    );
}
