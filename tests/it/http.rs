//! The HTTP sink against a small HTTP server run by the test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use crate::{Scratch, seq_counts, text};

/// One request the server received.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub(crate) type Policy = Arc<dyn Fn(usize, &Received) -> u16 + Send + Sync>;

/// An HTTP/1.1 server on a free port answering each request with the status `policy` gives
/// (request number from 0, the request); it keeps every request. Returns the address and the
/// requests.
pub(crate) fn server(policy: Policy) -> (String, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let log = log.clone();
            let policy = policy.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut stream = stream;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut parts = line.split_whitespace();
                    let method = parts.next().unwrap_or_default().to_owned();
                    let path = parts.next().unwrap_or_default().to_owned();
                    let mut headers = Vec::new();
                    loop {
                        let mut h = String::new();
                        reader.read_line(&mut h).unwrap();
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        if let Some((n, v)) = h.split_once(':') {
                            headers.push((n.trim().to_owned(), v.trim().to_owned()));
                        }
                    }
                    let header = |name: &str| {
                        headers
                            .iter()
                            .find(|(n, _): &&(String, String)| n.eq_ignore_ascii_case(name))
                            .map(|(_, v)| v.clone())
                    };
                    let mut body = Vec::new();
                    if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
                        loop {
                            let mut size = String::new();
                            reader.read_line(&mut size).unwrap();
                            let size = usize::from_str_radix(size.trim(), 16).unwrap();
                            let mut chunk = vec![0; size + 2];
                            reader.read_exact(&mut chunk).unwrap();
                            if size == 0 {
                                break;
                            }
                            body.extend_from_slice(&chunk[..size]);
                        }
                    } else {
                        let len: usize = header("content-length").map_or(0, |v| v.parse().unwrap());
                        body.resize(len, 0);
                        reader.read_exact(&mut body).unwrap();
                    }
                    let request = Received {
                        method,
                        path,
                        headers,
                        body,
                    };
                    let status = {
                        let mut log = log.lock().unwrap();
                        let status = policy(log.len(), &request);
                        log.push(request);
                        status
                    };
                    let answer = format!("status {status}");
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n\r\n{answer}",
                        answer.len()
                    );
                }
            });
        }
    });
    (addr, seen)
}

const COUNT: u64 = 10_000;

#[test]
fn the_http_sink_posts_every_message_once_in_ndjson_batches() {
    let (addr, seen) = server(Arc::new(|_, _| 200));
    let s = Scratch::new();
    s.write(
        "p.toml",
        &format!(
            r#"
[plugins.gen]
path = "{{plugin:generator}}"
config = {{ count = {COUNT} }}

[plugins.api]
path = "{{plugin:http-sink}}"
config = {{ url = "http://{addr}/ingest", batch = "ndjson", headers = {{ authorization = "Bearer t0ken" }} }}
grants = {{ http = ["{addr}"] }}

[[pipeline]]
name = "to-http"
source = "gen"
sinks = ["api"]
batch_size = 500
"#
        ),
    );
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "pipeline `to-http`: {COUNT} in, 0 dropped, {COUNT} written to `api`"
        )),
        "{stderr}"
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len() as u64, COUNT / 500);
    let mut lines = String::new();
    for r in seen.iter() {
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/ingest"));
        assert_eq!(r.header("authorization"), Some("Bearer t0ken"));
        assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
        lines.push_str(std::str::from_utf8(&r.body).unwrap());
    }
    let counts = seq_counts(&lines);
    assert_eq!(counts.len() as u64, COUNT);
    assert!(counts.values().all(|n| *n == 1));
}

#[test]
fn the_http_sink_retries_5xx_and_dead_letters_4xx() {
    // Every 4th request first gets a 503; the message with seq 7 (and 107, 207) a 400.
    let (addr, seen) = server(Arc::new(|n, r| {
        let body = String::from_utf8_lossy(&r.body);
        if body.contains("\"seq\":7,") || body.contains("07,") {
            400
        } else if n % 4 == 3 {
            503
        } else {
            200
        }
    }));
    let s = Scratch::new();
    s.write(
        "p.toml",
        &format!(
            r#"
[plugins.gen]
path = "{{plugin:generator}}"
config = {{ count = 300 }}

[plugins.api]
path = "{{plugin:http-sink}}"
config = {{ url = "http://{addr}/one", method = "PUT", content_type = "application/json" }}
grants = {{ http = ["{addr}"] }}

[[pipeline]]
name = "per-record"
source = "gen"
sinks = ["api"]
batch_size = 50
on_error = "dead-letter"
retry = {{ attempts = 5, backoff = "1ms", max_backoff = "5ms" }}
"#
        ),
    );
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "pipeline `per-record`: 300 in, 0 dropped, 297 written to `api`, 3 dead-lettered;"
        ),
        "{stderr}"
    );
    let dead = s.read("dead-letter/per-record.jsonl");
    let dead: Vec<serde_json::Value> = dead
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(dead.len(), 3, "{dead:?}");
    for entry in &dead {
        assert_eq!(entry["error_kind"], "invalid-data", "{entry}");
        let message = entry["error"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("PUT http://{addr}/one answered 400: status 400")),
            "{message}"
        );
    }
    // Each of the 297 others arrived with 200 exactly once (503s were retried).
    let seen = seen.lock().unwrap();
    let mut ok = std::collections::BTreeMap::new();
    for (n, r) in seen.iter().enumerate() {
        assert_eq!(r.method, "PUT");
        assert_eq!(r.header("content-type"), Some("application/json"));
        let body = String::from_utf8_lossy(&r.body).into_owned();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let seq = v["seq"].as_u64().unwrap();
        let status = if body.contains("\"seq\":7,") || body.contains("07,") {
            400
        } else if n % 4 == 3 {
            503
        } else {
            200
        };
        if status == 200 {
            *ok.entry(seq).or_insert(0) += 1;
        }
    }
    assert_eq!(ok.len(), 297);
    assert!(ok.values().all(|n| *n == 1));
}

#[test]
fn the_http_sink_needs_its_grant() {
    let (addr, seen) = server(Arc::new(|_, _| 200));
    let s = Scratch::new();
    s.write(
        "p.toml",
        &format!(
            r#"
[plugins.gen]
path = "{{plugin:generator}}"
config = {{ count = 10 }}

[plugins.api]
path = "{{plugin:http-sink}}"
config = {{ url = "http://{addr}/ingest" }}

[[pipeline]]
name = "nogrant"
source = "gen"
sinks = ["api"]
"#
        ),
    );
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "http://{addr}/ingest: HTTP request denied by the sandbox: the destination is not in grants.http; grant it in the pipeline file, e.g. grants = {{ http = [\"{addr}\"] }}"
        )),
        "{stderr}"
    );
    assert!(seen.lock().unwrap().is_empty());
}
