//! http-source (webhook ingress): requests are answered 200 only once their records reached the
//! sink, with 401/404/405/413/503 for what it refuses. A plain HTTP/1.1 client over TcpStream
//! plays the webhook callers.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use crate::{Running, Scratch, seq_counts, text};

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One request on a fresh connection: the status and the body of the answer, or the error of
/// a connection the server never took.
fn try_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    // A refused body (413) may find the socket closed: the answer is still there to read.
    let _ = stream.write_all(body);
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer);
    if answer.is_empty() {
        read?;
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer to {method} {path}: {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    try_request(addr, method, path, headers, body).unwrap()
}

/// POST as a webhook caller does: a connection reset before any answer (the listen queue, 128
/// deep, overflowed while 1,000 clients connected at once) is sent again. Returns the answer
/// and how many attempts were reset.
fn post_with_retry(addr: &str, body: &str) -> ((u16, String), u32) {
    let mut resets = 0;
    loop {
        match try_request(addr, "POST", "/events", &[], body.as_bytes()) {
            Ok(answer) => return (answer, resets),
            Err(e) if resets < 50 => {
                assert!(
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionRefused
                    ),
                    "{e}"
                );
                resets += 1;
                std::thread::sleep(Duration::from_millis(20 * u64::from(resets)));
            }
            Err(e) => panic!("{resets} resets, then {e}"),
        }
    }
}

fn post(addr: &str, body: &str) -> (u16, String) {
    request(addr, "POST", "/events", &[], body.as_bytes())
}

/// `patchbay run` of a webhook pipeline, started and listening.
struct Webhook {
    child: Running,
    addr: String,
    out: PathBuf,
    _scratch: Scratch,
}

impl Webhook {
    fn start(source_config: &str, sink: &str) -> Webhook {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let s = Scratch::new();
        let out_dir = s.mkdir("out");
        s.write(
            "p.toml",
            &format!(
                r#"
[plugins.hook]
path = "{{plugin:http-source}}"
config = {{ listen = "{addr}", path = "/events", {source_config} }}
grants = {{ listen = ["{addr}"] }}

[plugins.out]
{sink}
grants = {{ dirs = [{{ host = "{}", guest = "/out", mode = "rw" }}] }}

[[pipeline]]
name = "webhook"
source = "hook"
sinks = ["out"]
"#,
                out_dir.display()
            ),
        );
        let mut child = Running::start(s.path(), &["run", "p.toml"]);
        child.wait_for(
            &format!("http-source never listened on {addr}"),
            Duration::from_secs(60),
            || TcpStream::connect(&addr).is_ok(),
        );
        Webhook {
            child,
            addr,
            out: out_dir.join("out.jsonl"),
            _scratch: s,
        }
    }

    /// Ctrl-C, then the exit code and stderr.
    fn stop(self) -> (Option<i32>, String, String) {
        let (code, stderr) = self.child.interrupt();
        let written = std::fs::read_to_string(&self.out).unwrap_or_default();
        (code, stderr, written)
    }
}

fn delivered(out: &Path) -> String {
    std::fs::read_to_string(out).unwrap_or_default()
}

#[test]
fn a_thousand_concurrent_requests_get_200_only_once_their_records_reached_the_sink() {
    let hook = Webhook::start(
        "max_pending = 100000",
        r#"path = "{plugin:file-sink}"
config = { path = "/out/out.jsonl" }"#,
    );
    const CLIENTS: u64 = 1000;
    let start = Arc::new(Barrier::new(CLIENTS as usize));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let (addr, out, start) = (hook.addr.clone(), hook.out.clone(), start.clone());
            std::thread::spawn(move || {
                let body = format!("{{\"seq\":{n}}}");
                start.wait();
                let ((status, answer), resets) = post_with_retry(&addr, &body);
                // The answer came: the record must be in the sink's output already.
                let there = delivered(&out).lines().any(|l| l == body);
                (status, answer, there, resets)
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ok = results.iter().filter(|r| r.0 == 200).count() as u64;
    assert_eq!(ok, CLIENTS, "{:?}", results.iter().find(|r| r.0 != 200));
    assert!(results.iter().all(|r| r.1 == r#"{"accepted":1}"#));
    let resets: u32 = results.iter().map(|r| r.3).sum();
    eprintln!("1000 concurrent webhook requests: {resets} connections reset and sent again");
    assert!(
        results.iter().all(|r| r.2),
        "a request was answered 200 before its record reached the sink"
    );
    let (code, stderr, written) = hook.stop();
    assert_eq!(code, Some(0), "{stderr}");
    let counts = seq_counts(&written);
    assert_eq!(counts.len() as u64, CLIENTS);
    assert!(counts.values().all(|n| *n == 1));
    assert!(
        stderr.contains("pipeline `webhook`: 1000 in, 0 dropped, 1000 written to `out`"),
        "{stderr}"
    );
}

#[test]
fn the_http_source_refuses_what_it_must_and_takes_the_rest() {
    let hook = Webhook::start(
        r#"token = "s3cret", max_body = 1024, split = "lines", key_header = "x-device""#,
        r#"path = "{plugin:file-sink}"
config = { path = "/out/out.jsonl" }"#,
    );
    let addr = hook.addr.clone();
    let auth = ("authorization", "Bearer s3cret");
    let lines = "{\"seq\":1}\n{\"seq\":2}\n\n{\"seq\":3}\n";
    // No token, a wrong one.
    let (status, body) = request(&addr, "POST", "/events", &[], lines.as_bytes());
    assert_eq!(
        (status, body.as_str()),
        (401, r#"{"error":"a valid bearer token is required"}"#)
    );
    let wrong = ("authorization", "Bearer guess");
    assert_eq!(
        request(&addr, "POST", "/events", &[wrong], lines.as_bytes()).0,
        401
    );
    // Too large: 2000 bytes against max_body 1024.
    let big = format!("{{\"seq\":9,\"pad\":\"{}\"}}", "x".repeat(2000));
    let (status, body) = request(&addr, "POST", "/events", &[auth], big.as_bytes());
    assert_eq!(status, 413);
    assert_eq!(
        body,
        r#"{"error":"body of 2018 bytes is over the limit of 1024 bytes (max_body)"}"#
    );
    // Another path, another method.
    let (status, body) = request(&addr, "POST", "/other", &[auth], lines.as_bytes());
    assert_eq!(
        (status, body.as_str()),
        (
            404,
            r#"{"error":"no such path `/other`; records go to `/events`"}"#
        )
    );
    assert_eq!(request(&addr, "GET", "/events", &[auth], b"").0, 405);
    // The good one: three records (the empty line is not one), keyed by the device header.
    let (status, body) = request(
        &addr,
        "POST",
        "/events",
        &[auth, ("x-device", "sensor-7")],
        lines.as_bytes(),
    );
    assert_eq!((status, body.as_str()), (200, r#"{"accepted":3}"#));
    let (code, stderr, written) = hook.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(written, "{\"seq\":1}\n{\"seq\":2}\n{\"seq\":3}\n");
    assert!(
        stderr.contains("pipeline `webhook`: 3 in, 0 dropped, 3 written to `out`"),
        "{stderr}"
    );
}

#[test]
fn the_http_source_answers_503_under_back_pressure_and_loses_nothing() {
    // A sink that takes 20 ms per message, and at most 20 records waiting.
    let hook = Webhook::start(
        "max_pending = 20",
        r#"path = "{plugin:slow-sink}"
config = { path = "/out/out.jsonl", per_message = "20ms" }"#,
    );
    const CLIENTS: u64 = 200;
    let start = Arc::new(Barrier::new(CLIENTS as usize));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let (addr, start) = (hook.addr.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                (n, post(&addr, &format!("{{\"seq\":{n}}}")))
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ok: Vec<u64> = results
        .iter()
        .filter(|(_, (s, _))| *s == 200)
        .map(|(n, _)| *n)
        .collect();
    let busy = results.iter().filter(|(_, (s, _))| *s == 503).count();
    assert_eq!(ok.len() + busy, CLIENTS as usize, "{results:?}");
    assert!(busy > 0, "no request was turned away with 503");
    assert!(ok.len() >= 20, "only {} accepted", ok.len());
    let (code, stderr, written) = hook.stop();
    assert_eq!(code, Some(0), "{stderr}");
    // Exactly the accepted records were delivered: none of the refused, none twice.
    let counts = seq_counts(&written);
    assert_eq!(counts.len(), ok.len());
    assert!(ok.iter().all(|n| counts.get(n) == Some(&1)));
}

#[test]
fn the_http_source_needs_its_listen_grant() {
    let port = free_port();
    let s = Scratch::new();
    s.write(
        "p.toml",
        &format!(
            r#"
[plugins.hook]
path = "{{plugin:http-source}}"
config = {{ listen = "127.0.0.1:{port}" }}

[plugins.null]
path = "{{plugin:blackhole}}"

[[pipeline]]
name = "nogrant"
source = "hook"
sinks = ["null"]
"#
        ),
    );
    let out = s.run(&["run", "p.toml"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "sandbox: denied tcp access to a new socket for plugin `nogrant/hook` (not granted: \
             no grants.tcp or grants.listen)"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "http 127.0.0.1:{port}: the sandbox refused to listen"
        )),
        "{stderr}"
    );
}
