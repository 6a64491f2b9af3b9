//! The Redis connectors against the Redis server on 127.0.0.1:6379, checked with `redis-cli`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Running, Scratch, seq_counts, text};

const REDIS: &str = "127.0.0.1:6379";
const COUNT: u64 = 10_000;

/// Redis tests take this lock: one of them restarts the server.
pub(crate) static REDIS_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub(crate) fn redis_lock() -> std::sync::MutexGuard<'static, ()> {
    REDIS_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn require_redis() {
    assert!(
        std::net::TcpStream::connect(REDIS).is_ok(),
        "Redis is not listening on {REDIS}; start it with `redis-server --daemonize yes --bind \
         127.0.0.1 -::1 --port 6379 --save \"\" --appendonly no --dir /var/lib/redis --logfile \
         /var/log/redis/ci.log`"
    );
}

/// `redis-cli ARGS`: its output.
pub(crate) fn cli(args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379"])
        .args(args)
        .output()
        .expect("redis-cli (Debian package redis-tools)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A key no other run uses.
fn unique(kind: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("patchbay-test:{kind}:{}:{nanos}", std::process::id())
}

/// The JSON payloads in `redis-cli` output (one value per line).
pub(crate) fn payload_lines(output: &str) -> String {
    output
        .lines()
        .filter(|l| l.starts_with("{\"seq\""))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn sink_pipeline(mode: &str, key: &str) -> String {
    format!(
        r#"
[plugins.gen]
path = "{{plugin:generator}}"
config = {{ count = {COUNT} }}

[plugins.out]
path = "{{plugin:redis-sink}}"
config = {{ url = "redis://{REDIS}", mode = "{mode}", key = "{key}" }}
grants = {{ tcp = ["{REDIS}"] }}

[[pipeline]]
name = "to-redis"
source = "gen"
sinks = ["out"]
"#
    )
}

#[test]
fn the_redis_sink_writes_every_message_once_to_a_stream_and_a_list() {
    let _redis = redis_lock();
    require_redis();
    let s = Scratch::new();
    for mode in ["stream", "list"] {
        let key = unique(mode);
        s.write("p.toml", &sink_pipeline(mode, &key));
        let out = s.run(&["run", "p.toml"]);
        let (_, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "pipeline `to-redis`: {COUNT} in, 0 dropped, {COUNT} written to `out`"
            )),
            "{stderr}"
        );
        let (length, content) = if mode == "stream" {
            (cli(&["XLEN", &key]), cli(&["XRANGE", &key, "-", "+"]))
        } else {
            (cli(&["LLEN", &key]), cli(&["LRANGE", &key, "0", "-1"]))
        };
        assert_eq!(length.trim(), COUNT.to_string(), "{mode}");
        let counts = seq_counts(&payload_lines(&content));
        assert_eq!(counts.len() as u64, COUNT, "{mode}");
        assert!(counts.values().all(|n| *n == 1), "{mode}");
        cli(&["DEL", &key]);
    }
}

/// Fill a stream with `COUNT` entries `{"seq":N}` through `redis-cli --pipe`.
fn fill_stream(key: &str, from: u64, to: u64) {
    let mut protocol = Vec::new();
    for n in from..to {
        let payload = format!(r#"{{"seq":{n}}}"#);
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
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
}

#[test]
fn the_redis_source_delivers_every_entry_once_and_acknowledges_it() {
    source_delivers_every_entry_once(1);
}

/// `concurrency = 2` on the source: two consumers of one group share the stream; every entry
/// arrives once and is acknowledged by the consumer that read it.
#[test]
fn two_redis_source_instances_share_the_group_and_deliver_each_entry_once() {
    source_delivers_every_entry_once(2);
}

/// `COUNT` entries, then 100 more while it runs, through `instances` instances of the source:
/// each written once, nothing left pending in the group.
fn source_delivers_every_entry_once(instances: u32) {
    let _redis = redis_lock();
    require_redis();
    let s = Scratch::new();
    let out_dir = s.mkdir("out");
    let key = unique(if instances == 1 { "source" } else { "shared" });
    fill_stream(&key, 0, COUNT);
    s.write(
        "p.toml",
        &format!(
            r#"
[plugins.src]
path = "{{plugin:redis-source}}"
config = {{ url = "redis://{REDIS}", stream = "{key}", group = "g", consumer = "c", start = "0" }}
grants = {{ tcp = ["{REDIS}"] }}

[plugins.out]
path = "{{plugin:file-sink}}"
config = {{ path = "/out/out.jsonl" }}
grants = {{ dirs = [{{ host = "{}", guest = "/out", mode = "rw" }}] }}

[[pipeline]]
name = "from-redis"
source = "src"
sinks = ["out"]
batch_size = 64

[pipeline.stages.src]
concurrency = {instances}
"#,
            out_dir.display()
        ),
    );
    let mut child = Running::start(s.path(), &["run", "p.toml"]);
    let lines = || {
        std::fs::read_to_string(out_dir.join("out.jsonl"))
            .unwrap_or_default()
            .lines()
            .count() as u64
    };
    child.wait_for("every entry written", Duration::from_secs(60), || {
        lines() >= COUNT
    });
    // More entries while it runs: they arrive too.
    fill_stream(&key, COUNT, COUNT + 100);
    child.wait_for("the later entries written", Duration::from_secs(60), || {
        lines() >= COUNT + 100
    });
    let (code, stderr) = child.interrupt();
    assert_eq!(code, Some(0), "{stderr}");
    let counts = seq_counts(&std::fs::read_to_string(out_dir.join("out.jsonl")).unwrap());
    assert_eq!(counts.len() as u64, COUNT + 100);
    assert!(counts.values().all(|n| *n == 1), "duplicates");
    // Everything delivered was acknowledged: nothing pending in the group.
    let pending = cli(&["XPENDING", &key, "g"]);
    assert_eq!(pending.lines().next(), Some("0"), "{pending}");
    // Every instance read from the group as a consumer of its own (listed once it has read).
    let consumers = cli(&["XINFO", "CONSUMERS", &key, "g"]);
    let names: Vec<&str> = consumers
        .lines()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "name")
        .map(|w| w[1])
        .collect();
    let expected: &[&str] = if instances == 1 {
        &["c"]
    } else {
        &["c", "c.2"]
    };
    assert_eq!(names, expected, "{consumers}");
    if instances > 1 {
        assert!(
            stderr.contains(&format!(
                "instance 2 reads stream `{key}` as consumer `c.2` of group `g`"
            )),
            "{stderr}"
        );
    }
    cli(&["DEL", &key]);
}

#[test]
fn the_redis_connectors_need_their_network_grant() {
    let _redis = redis_lock();
    require_redis();
    let s = Scratch::new();
    for (name, plugin, config) in [
        ("sink", "redis-sink", r#"{ key = "never" }"#),
        ("source", "redis-source", r#"{ stream = "never" }"#),
    ] {
        let (src, sinks) = if name == "sink" {
            (
                "[plugins.gen]\npath = \"{plugin:generator}\"\nconfig = { count = 1 }\n",
                "gen\"\nsinks = [\"r\"]",
            )
        } else {
            (
                "[plugins.null]\npath = \"{plugin:blackhole}\"\n",
                "r\"\nsinks = [\"null\"]",
            )
        };
        s.write(
            "p.toml",
            &format!(
                "{src}\n[plugins.r]\npath = \"{{plugin:{plugin}}}\"\nconfig = {config}\n\n[[pipeline]]\nname = \"nogrant\"\nsource = \"{sinks}\n"
            ),
        );
        let out = s.run(&["run", "p.toml"]);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(
                "sandbox: denied tcp access to a new socket for plugin `nogrant/r` (not granted: \
             no grants.tcp or grants.listen)"
            ),
            "{stderr}"
        );
        assert!(
            stderr.contains(&format!(
                "redis {REDIS}: the sandbox refused the connection"
            )) && stderr.contains(&format!(
                "grant it in the pipeline file: grants = {{ tcp = [\"{REDIS}\"] }}"
            )),
            "{stderr}"
        );
    }
}

/// Stop the server (it keeps nothing on disk, so its data goes) and start it again with the
/// machine's own command; wait until it answers.
fn restart_redis() {
    let _ = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379", "shutdown", "nosave"])
        .output();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(REDIS).is_ok() {
        assert!(Instant::now() < deadline, "Redis did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Down for a moment, as in a real restart.
    std::thread::sleep(Duration::from_millis(500));
    let status = Command::new("redis-server")
        .args([
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "-::1",
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            "/var/lib/redis",
            "--logfile",
            "/var/log/redis/ci.log",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    while cli_ok(&["PING"]).as_deref() != Some("PONG") {
        assert!(Instant::now() < deadline, "Redis did not come back");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn cli_ok(args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379"])
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Restart Redis while both connectors run: each reconnects by itself, and everything sent or
/// added after the restart arrives exactly once. (This Redis keeps nothing on disk, so what it
/// held before the restart is gone with it; that is the server's choice, not the connectors'.)
#[test]
fn the_redis_connectors_recover_when_the_server_restarts() {
    let _redis = redis_lock();
    require_redis();
    let s = Scratch::new();
    let out_dir = s.mkdir("out");
    let list = unique("restart-list");
    let stream = unique("restart-stream");
    let total = 8_000u64;
    s.write(
        "p.toml",
        &format!(
            r#"
[plugins.gen]
path = "{{plugin:generator}}"
config = {{ count = {total}, rate = 2000 }}

[plugins.to-redis]
path = "{{plugin:redis-sink}}"
config = {{ mode = "list", key = "{list}" }}
grants = {{ tcp = ["{REDIS}"] }}

[plugins.from-redis]
path = "{{plugin:redis-source}}"
config = {{ stream = "{stream}", group = "g", start = "0" }}
grants = {{ tcp = ["{REDIS}"] }}

[plugins.out]
path = "{{plugin:file-sink}}"
config = {{ path = "/out/out.jsonl" }}
grants = {{ dirs = [{{ host = "{}", guest = "/out", mode = "rw" }}] }}

[[pipeline]]
name = "into"
source = "gen"
sinks = ["to-redis"]
batch_size = 50
retry = {{ attempts = 100, backoff = "20ms", max_backoff = "200ms" }}

[[pipeline]]
name = "out-of"
source = "from-redis"
sinks = ["out"]
"#,
            out_dir.display()
        ),
    );
    let mut child = Running::start(s.path(), &["run", "p.toml"]);
    // Let both run for a second, then restart the server under them.
    fill_stream(&stream, 0, 100);
    std::thread::sleep(Duration::from_secs(1));
    restart_redis();
    // New entries after the restart (the group is gone with the old data: the source makes
    // it again and reads them).
    fill_stream(&stream, 1000, 1100);
    child.wait_for(
        "entries after the restart did not arrive",
        Duration::from_secs(60),
        || {
            seq_counts(&std::fs::read_to_string(out_dir.join("out.jsonl")).unwrap_or_default())
                .range(1000..1100)
                .count()
                >= 100
        },
    );
    // The generator's pipeline ends by itself once every message is written.
    child.wait_for(
        "the sink did not finish after the restart",
        Duration::from_secs(60),
        || {
            cli_ok(&["LLEN", &list])
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n > 0)
                && cli_ok(&["LINDEX", &list, "-1"])
                    .is_some_and(|l| l.contains(&format!("\"seq\":{}", total - 1)))
        },
    );
    let (code, stderr) = child.interrupt();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("connection lost"), "{stderr}");
    assert!(stderr.contains(": reconnected"), "{stderr}");
    // The list holds a run of sequence numbers that ends with the last one, each once: what
    // was written after the restart, with no gap and no duplicate.
    let written = payload_lines(&cli(&["LRANGE", &list, "0", "-1"]));
    let counts = seq_counts(&written);
    assert!(
        counts.values().all(|n| *n == 1),
        "duplicates after the restart"
    );
    let first = *counts.keys().next().unwrap();
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        (first..total).collect::<Vec<_>>()
    );
    assert!(
        first > 0,
        "the restart should have cost the list its old items"
    );
    // Every entry added after the restart came out exactly once.
    let read = seq_counts(&std::fs::read_to_string(out_dir.join("out.jsonl")).unwrap());
    assert!((1000..1100).all(|n| read.get(&n) == Some(&1)), "{read:?}");
    cli(&["DEL", &list, &stream]);
}
