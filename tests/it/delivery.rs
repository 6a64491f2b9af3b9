//! Delivery under real traffic (issue 25): large records never wedge a source, a failed poll
//! never ends a pipeline, `kill -9` tears no line and loses no record, a source's position in
//! durable host state survives the process.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::redis::{cli, redis_lock, require_redis};
use crate::{Running, Scratch, seq_counts, text};

const REDIS: &str = "127.0.0.1:6379";

/// A stream key no other run uses.
fn unique(kind: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("patchbay-test:{kind}:{}:{nanos}", std::process::id())
}

/// Add entries `{"seq":N,"pad":"xx…"}` (`pad` bytes of padding) for N in `range`.
fn fill_padded(key: &str, range: std::ops::Range<u64>, pad: usize) {
    let padding = "x".repeat(pad);
    let mut protocol = Vec::new();
    for n in range {
        let payload = format!(r#"{{"seq":{n},"pad":"{padding}"}}"#);
        let args = ["XADD", key, "*", "payload", &payload];
        write!(protocol, "*{}\r\n", args.len()).unwrap();
        for a in args {
            write!(protocol, "${}\r\n{a}\r\n", a.len()).unwrap();
        }
    }
    let mut child = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379", "--pipe"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&protocol).unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
}

/// A Redis stream → file-sink pipeline with default settings.
fn stream_to_file(s: &Scratch, key: &str) -> std::path::PathBuf {
    let out = s.mkdir("out");
    s.write(
        "p.toml",
        &format!(
            r#"
[plugins.src]
path = "{{plugin:redis-source}}"
config = {{ stream = "{key}", group = "g", start = "0" }}
grants = {{ tcp = ["{REDIS}"] }}

[plugins.out]
path = "{{plugin:file-sink}}"
config = {{ path = "/out/out.jsonl" }}
grants = {{ dirs = [{{ host = "{}", guest = "/out", mode = "rw" }}] }}

[[pipeline]]
name = "big"
source = "src"
sinks = ["out"]
"#,
            out.display()
        ),
    );
    out.join("out.jsonl")
}

fn pending(key: &str) -> String {
    cli(&["XPENDING", key, "g"])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// 300 entries of 70 KiB are 17.5 MiB for the default `batch_size = 256`, over the default
/// `limits.max_output` of 16 MiB: the poll is cut to `batch_bytes` instead of failing.
#[test]
fn three_hundred_redis_entries_of_70_kib_all_arrive_with_default_settings() {
    let _redis = redis_lock();
    require_redis();
    let s = Scratch::new();
    let key = unique("big");
    fill_padded(&key, 0..300, 70 * 1024);
    let file = stream_to_file(&s, &key);
    let mut child = Running::start(s.path(), &["run", "p.toml"]);
    child.wait_for("300 records written", Duration::from_secs(60), || {
        seq_counts(&std::fs::read_to_string(&file).unwrap_or_default()).len() == 300
    });
    child.wait_for("nothing pending", Duration::from_secs(10), || {
        pending(&key) == "0"
    });
    let (code, stderr) = child.interrupt();
    assert_eq!(code, Some(0), "{stderr}");
    let counts = seq_counts(&std::fs::read_to_string(&file).unwrap());
    assert_eq!(counts.len(), 300);
    assert!(counts.values().all(|n| *n == 1), "each once");
    assert!(
        stderr.contains("pipeline `big`: 300 in, 0 dropped, 300 written to `out`"),
        "{stderr}"
    );
    cli(&["DEL", &key]);
}

/// Every line of `text` is whole (ends in a newline) and parses as JSON.
fn assert_no_torn_line(text: &str) {
    for (i, line) in text.split_inclusive('\n').enumerate() {
        assert!(line.ends_with('\n'), "line {} has no newline", i + 1);
        let parsed: Result<serde_json::Value, _> = serde_json::from_str(line);
        assert!(parsed.is_ok(), "line {} is not JSON: {:.80}", i + 1, line);
    }
}

#[test]
fn kill_9_at_ten_moments_of_a_redis_to_file_run_loses_nothing_and_tears_no_line() {
    let _redis = redis_lock();
    require_redis();
    let s = Scratch::new();
    let key = unique("kill");
    let total = 400u64;
    fill_padded(&key, 0..total, 100 * 1024);
    let file = stream_to_file(&s, &key);
    // Moments spread over the run, different every time (no fixed schedule to get lucky on).
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    let mut cut = 0;
    for _ in 0..10 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let after = Duration::from_millis(150 + seed % 600);
        let mut child = Running::start(s.path(), &["run", "p.toml"]);
        std::thread::sleep(after);
        // SIGKILL: no drain, no flush, no ack.
        child.kill_9();
        let stderr = child.stderr();
        if stderr.contains("ended in a line without its newline") {
            cut += 1;
        }
    }
    let mut child = Running::start(s.path(), &["run", "p.toml"]);
    child.wait_for("every record written", Duration::from_secs(120), || {
        seq_counts(&std::fs::read_to_string(&file).unwrap_or_default()).len() as u64 == total
    });
    child.wait_for("nothing pending", Duration::from_secs(10), || {
        pending(&key) == "0"
    });
    let (code, stderr) = child.interrupt();
    assert_eq!(code, Some(0), "{stderr}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert_no_torn_line(&text);
    let counts = seq_counts(&text);
    assert_eq!(counts.len() as u64, total, "every record present");
    eprintln!(
        "{} lines for {total} records ({} redelivered after kills), {cut} torn lines cut",
        text.lines().count(),
        text.lines().count() as u64 - total
    );
    cli(&["DEL", &key]);
}

#[test]
fn a_source_that_traps_on_every_third_poll_delivers_everything_and_counts_the_restarts() {
    let s = Scratch::new();
    let out = s.mkdir("out");
    s.write(
        "p.toml",
        &format!(
            r#"
[plugins.rows]
path = "{{plugin:test-state-source}}"
config = {{ count = 3000, trap_every = 3 }}

[plugins.out]
path = "{{plugin:file-sink}}"
config = {{ path = "/out/out.jsonl" }}
grants = {{ dirs = [{{ host = "{}", guest = "/out", mode = "rw" }}] }}

[[pipeline]]
name = "rows"
source = "rows"
sinks = ["out"]
batch_size = 100
"#,
            out.display()
        ),
    );
    let output = s.run(&["run", "p.toml", "--progress", "0s"]);
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let counts = seq_counts(&s.read("out/out.jsonl"));
    assert_eq!(counts.len(), 3000, "every row delivered");
    // Each instance polls twice, then traps: 30 batches of rows take 15 instances.
    let restarts = stderr.matches("starting a fresh instance").count();
    assert!(restarts >= 15, "{restarts} restarts:\n{stderr}");
    assert!(
        stderr.contains(&format!("{restarts} instances restarted after traps")),
        "{stderr}"
    );
    // Positions live in host state: a fresh instance goes on where the last ack left it.
    assert!(stderr.contains("starting at row 0"), "{stderr}");
    // Only what was in flight at a trap comes again: a fresh instance keeps one batch in
    // flight until its first ack, so a row is lost to at most two traps (the first
    // instance polls ahead before any ack, its successors do not).
    assert!(
        counts.values().all(|n| *n <= 3),
        "only what was in flight comes again: {:?}",
        counts
            .iter()
            .filter(|(_, n)| **n > 3)
            .take(5)
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_polling_source_resumes_from_its_position_in_durable_state_after_kill_9() {
    let s = Scratch::new();
    let out = s.mkdir("out");
    s.write(
        "p.toml",
        &format!(
            r#"
[state]
dir = "state"

[plugins.rows]
path = "{{plugin:test-state-source}}"
config = {{ count = 4000, poll_pause = 20 }}

[plugins.out]
path = "{{plugin:file-sink}}"
config = {{ path = "/out/out.jsonl" }}
grants = {{ dirs = [{{ host = "{}", guest = "/out", mode = "rw" }}] }}

[[pipeline]]
name = "rows"
source = "rows"
sinks = ["out"]
batch_size = 50
"#,
            out.display()
        ),
    );
    let file = out.join("out.jsonl");
    let mut child = Running::start(s.path(), &["run", "p.toml", "--progress", "0s"]);
    child.wait_for("a quarter of the rows", Duration::from_secs(60), || {
        seq_counts(&std::fs::read_to_string(&file).unwrap_or_default()).len() >= 1000
    });
    child.kill_9();
    let first = seq_counts(&std::fs::read_to_string(&file).unwrap());
    let delivered = first.len() as u64;
    assert!(delivered < 4000, "killed before the end");

    let output = s.run(&["run", "p.toml", "--progress", "0s"]);
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    // It starts at a saved position: past row 0, and no further than what was delivered (what
    // was delivered and not yet acknowledged comes again).
    let start: u64 = stderr
        .split("starting at row ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no start position in:\n{stderr}"));
    assert!(
        start > 0 && start <= delivered,
        "start {start}, delivered {delivered}"
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert_no_torn_line(&text);
    let counts = seq_counts(&text);
    assert_eq!(counts.len(), 4000, "every row");
    // Rows acknowledged before the kill were not read again.
    assert!(counts.range(..start).all(|(_, n)| *n == 1));
    assert!(
        stderr.contains(&format!(
            "pipeline `rows`: {} in, 0 dropped, {} written to `out`",
            4000 - start,
            4000 - start
        )),
        "{stderr}"
    );
}

#[test]
fn a_pipeline_that_fails_at_run_time_says_so_at_once_and_on_the_admin_api() {
    let s = Scratch::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    s.write(
        "p.toml",
        r#"
[plugins.gen]
path = "{plugin:generator}"
config = { rate = 200 }

[plugins.once]
path = "{plugin:generator}"
config = { count = 10 }

[plugins.bad]
path = "{plugin:test-trap}"
config = { after = 0 }

[plugins.null]
path = "{plugin:blackhole}"

[[pipeline]]
name = "steady"
source = "gen"
sinks = ["null"]

[[pipeline]]
name = "doomed"
source = "once"
transforms = ["bad"]
sinks = ["null"]
retry = { attempts = 2, backoff = "1ms", max_backoff = "2ms" }
"#,
    );
    let admin = format!("127.0.0.1:{port}");
    let mut child = Running::start(
        s.path(),
        &["run", "p.toml", "--progress", "200ms", "--admin", &admin],
    );
    // Said the moment it fails, while the other pipeline runs on.
    let log = child.log.path().to_owned();
    child.wait_for("the failure logged", Duration::from_secs(30), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("pipeline `doomed`"))
    });
    let status = crate::run_in(s.path(), &["status", "--admin", &format!("http://{admin}")]);
    let (stdout, _) = text(&status);
    assert!(
        stdout.contains("pipeline `doomed` (failed)")
            && stdout.contains("  error: pipeline `doomed`"),
        "{stdout}"
    );
    // Progress lines go on for the pipeline that runs, not for the failed one.
    let before = child.stderr().len();
    std::thread::sleep(Duration::from_millis(600));
    let later = child.stderr()[before..].to_owned();
    assert!(later.contains("progress: pipeline `steady`"), "{later}");
    assert!(!later.contains("progress: pipeline `doomed`"), "{later}");
    let (code, stderr) = child.interrupt();
    assert_eq!(code, Some(1), "{stderr}");
}

#[test]
fn forty_concurrent_1_mb_posts_each_get_an_answer_and_every_accepted_record_arrives() {
    let s = Scratch::new();
    let out = s.mkdir("out");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    s.write(
        "p.toml",
        &format!(
            r#"
[plugins.hook]
path = "{{plugin:http-source}}"
config = {{ listen = "{addr}" }}
grants = {{ listen = ["{addr}"] }}

[plugins.out]
path = "{{plugin:file-sink}}"
config = {{ path = "/out/out.jsonl" }}
grants = {{ dirs = [{{ host = "{}", guest = "/out", mode = "rw" }}] }}

[[pipeline]]
name = "hook"
source = "hook"
sinks = ["out"]
"#,
            out.display()
        ),
    );
    let mut child = Running::start(s.path(), &["run", "p.toml", "--progress", "0s"]);
    child.wait_for("listening", Duration::from_secs(30), || {
        std::net::TcpStream::connect(&addr).is_ok()
    });
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(40));
    let callers: Vec<_> = (0..40u64)
        .map(|i| {
            let (addr, barrier) = (addr.clone(), barrier.clone());
            std::thread::spawn(move || {
                // 1,000,000 bytes: under the default max_body of 1 MiB.
                let head = format!(r#"{{"seq":{i},"pad":""#);
                let body = format!(r#"{head}{}"}}"#, "x".repeat(1_000_000 - head.len() - 2));
                assert_eq!(body.len(), 1_000_000);
                barrier.wait();
                post(&addr, body.as_bytes())
            })
        })
        .collect();
    let answers: Vec<u16> = callers.into_iter().map(|c| c.join().unwrap()).collect();
    let accepted: Vec<u64> = (0..40).filter(|i| answers[*i as usize] == 200).collect();
    assert!(
        answers.iter().all(|a| [200, 413, 503].contains(a)),
        "{answers:?}"
    );
    assert!(!accepted.is_empty(), "{answers:?}");
    let text = std::fs::read_to_string(out.join("out.jsonl")).unwrap();
    let counts = seq_counts(&text);
    for i in &accepted {
        assert_eq!(
            counts.get(i),
            Some(&1),
            "accepted record {i} is in the sink once"
        );
    }
    // The pipeline is still up: one more caller is served.
    let again = post(&addr, br#"{"seq":99}"#);
    assert_eq!(again, 200);
    let (code, stderr) = child.interrupt();
    assert_eq!(code, Some(0), "{stderr}");
    eprintln!(
        "{} accepted, {} refused with 503",
        accepted.len(),
        answers.iter().filter(|a| **a == 503).count()
    );
}

/// POST `body` on a fresh connection; the status of the answer.
fn post(addr: &str, body: &[u8]) -> u16 {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let head = format!(
        "POST / HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .unwrap_or_else(|e| panic!("no answer after {:?}: {e}", started.elapsed()));
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {answer:?}"))
}
