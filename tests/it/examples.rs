//! The bridge examples in examples/, run as a user would (`patchbay run pipeline.toml` in the
//! example's folder, with the plugins `cargo xtask build` made), fed and checked with the
//! services' own clients.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::{patchbay, root, seq_counts, text};

fn example(name: &str) -> PathBuf {
    root().join("examples").join(name)
}

/// `patchbay run pipeline.toml` in the example's folder.
fn start(name: &str) -> Child {
    patchbay()
        .args(["run", "pipeline.toml"])
        .current_dir(example(name))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Ctrl-C, then the exit code and stderr.
fn stop(child: Child) -> (Option<i32>, String) {
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    (out.status.code(), text(&out).1)
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not after {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
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

#[test]
fn webhook_to_redis_appends_every_posted_event_once() {
    let _redis = crate::redis::redis_lock();
    crate::redis::require_redis();
    const STREAM: &str = "patchbay-example:events";
    crate::redis::cli(&["DEL", STREAM]);
    let child = start("webhook-to-redis");
    wait_for(
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
    let (code, stderr) = stop(child);
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
