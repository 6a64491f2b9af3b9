//! The admin API of `patchbay run --admin`: health, Prometheus metrics that agree with the
//! records moved (and with the sandbox's denials), status, and the bearer token.

use std::process::Stdio;
use std::time::{Duration, Instant};

use patchbay_runtime::admin_client::{Answer, call};

use crate::{Scratch, patchbay};

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn get(rt: &tokio::runtime::Runtime, url: &str, token: Option<&str>) -> Answer {
    rt.block_on(call("GET", url, token, None)).unwrap()
}

/// Sample value of `name{labels}` in a parsed scrape.
pub(crate) fn sample(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

#[test]
fn metrics_and_status_agree_with_the_records_moved() {
    let s = Scratch::new();
    s.mkdir("out");
    s.write(
        "p.toml",
        r#"
[plugins.gen]
path = "{plugin:generator}"
config = { count = 5000 }

[plugins.out]
path = "{plugin:file-sink}"
config = { path = "/out/fixed.jsonl" }
grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }] }

[plugins.ticker]
path = "{plugin:generator}"
config = { count = 0, rate = 20 }

[plugins.fetch]
path = "{plugin:test-hostile}"
config = { attack = "http", url = "http://127.0.0.1:9/" }

[plugins.null]
path = "{plugin:blackhole}"

[[pipeline]]
name = "fixed"
source = "gen"
sinks = ["out"]

[[pipeline]]
name = "forever"
source = "ticker"
transforms = ["fetch"]
sinks = ["null"]
batch_size = 1
"#,
    );
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let child = patchbay()
        .args([
            "run",
            "p.toml",
            "--admin",
            &format!("127.0.0.1:{port}"),
            "--admin-token",
            "s3cret",
        ])
        .current_dir(s.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Wait until the finite pipeline is done and the other has been denied at least once.
    let started = Instant::now();
    let status = loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "pipelines did not get going"
        );
        std::thread::sleep(Duration::from_millis(100));
        let Ok(answer) = rt.block_on(call(
            "GET",
            &format!("{base}/v1/pipelines"),
            Some("s3cret"),
            None,
        )) else {
            continue;
        };
        assert_eq!(answer.status, 200, "{}", answer.body);
        let status: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        let done = status["pipelines"][0]["state"] == "finished";
        let denied = status["denied"].as_array().is_some_and(|d| !d.is_empty());
        if done && denied {
            break status;
        }
    };
    assert_eq!(status["pipelines"][0]["name"], "fixed");
    assert_eq!(status["pipelines"][0]["in"], 5000);
    assert_eq!(status["pipelines"][0]["written"]["out"], 5000);
    assert_eq!(status["pipelines"][0]["in_flight_batches"], 0);
    assert_eq!(status["pipelines"][1]["state"], "running");

    // The token: needed for /metrics and /v1/pipelines, not for /health.
    assert_eq!(get(&rt, &format!("{base}/metrics"), None).status, 401);
    assert_eq!(
        get(&rt, &format!("{base}/v1/pipelines"), Some("wrong")).status,
        401
    );
    let health = get(&rt, &format!("{base}/health"), None);
    assert_eq!(health.status, 200, "{}", health.body);
    let health: serde_json::Value = serde_json::from_str(&health.body).unwrap();
    assert_eq!(health["status"], "ok");

    let metrics = get(&rt, &format!("{base}/metrics"), Some("s3cret"));
    assert_eq!(metrics.status, 200);
    let lines = metrics.body.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    let written_lines = s.read("out/fixed.jsonl").lines().count();
    assert_eq!(written_lines, 5000);
    assert_eq!(
        sample(
            &scrape,
            "patchbay_messages_in_total",
            &[("pipeline", "fixed")]
        ),
        Some(5000.0)
    );
    assert_eq!(
        sample(
            &scrape,
            "patchbay_messages_written_total",
            &[("pipeline", "fixed"), ("sink", "out")]
        ),
        Some(written_lines as f64)
    );
    assert_eq!(
        sample(&scrape, "patchbay_pipeline_up", &[("pipeline", "fixed")]),
        Some(0.0)
    );
    assert_eq!(
        sample(&scrape, "patchbay_pipeline_up", &[("pipeline", "forever")]),
        Some(1.0)
    );
    // A finished pipeline has nothing in flight.
    assert_eq!(
        sample(
            &scrape,
            "patchbay_pipeline_in_flight_batches",
            &[("pipeline", "fixed")]
        ),
        Some(0.0)
    );
    let denied = sample(
        &scrape,
        "patchbay_denied_total",
        &[("plugin", "forever/fetch"), ("capability", "http")],
    )
    .unwrap();
    assert!(denied >= 1.0, "{}", metrics.body);
    // Every message the ticker produced was denied once, and all went to the blackhole.
    let forever_in = sample(
        &scrape,
        "patchbay_messages_in_total",
        &[("pipeline", "forever")],
    );
    assert!(forever_in.is_some_and(|n| n >= 1.0), "{}", metrics.body);
    let reported = sample(
        &scrape,
        "plugin_blackhole_messages_total",
        &[("plugin", "null")],
    );
    assert!(reported.is_some_and(|n| n >= 1.0), "{}", metrics.body);

    // Per-call metrics: `write` of the file sink was called, and saw every record.
    assert_eq!(
        sample(
            &scrape,
            "patchbay_plugin_records_total",
            &[("plugin", "fixed/out"), ("function", "write")]
        ),
        Some(5000.0)
    );
    assert!(
        sample(
            &scrape,
            "patchbay_plugin_call_seconds_count",
            &[("plugin", "fixed/out"), ("function", "write")]
        )
        .is_some_and(|n| n >= 1.0),
        "{}",
        metrics.body
    );
    assert_eq!(
        sample(&scrape, "patchbay_swaps_total", &[("plugin", "out")]),
        Some(0.0)
    );

    // `/v1/plugins`: what runs, with its grants.
    let plugins = get(&rt, &format!("{base}/v1/plugins"), Some("s3cret"));
    assert_eq!(plugins.status, 200, "{}", plugins.body);
    let plugins: serde_json::Value = serde_json::from_str(&plugins.body).unwrap();
    let out = plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "out")
        .unwrap();
    assert_eq!(out["world"], "sink");
    assert_eq!(out["version"], "0.1.0");
    assert_eq!(out["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(out["grants"]["dirs"][0]["guest"], "/out");
    assert_eq!(out["grants"]["dirs"][0]["mode"], "rw");

    // `patchbay status` prints the same.
    let out = patchbay()
        .args(["status", "--admin", &base, "--admin-token", "s3cret"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(
            "pipeline `fixed` (finished): 5000 in, 0 dropped, written 5000 to `out`, 0 dead-lettered, 0 retries, 0 restarts"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("http access"), "{stdout}");

    // Ctrl-C drains and exits 0.
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("sandbox denied "), "{stderr}");
}

#[test]
fn a_non_loopback_admin_address_needs_a_token() {
    let s = Scratch::new();
    s.write(
        "p.toml",
        r#"
[plugins.gen]
path = "{plugin:generator}"
config = { count = 1 }

[plugins.null]
path = "{plugin:blackhole}"

[[pipeline]]
name = "p"
source = "gen"
sinks = ["null"]
"#,
    );
    let expected = "admin API at 0.0.0.0:0: a non-loopback address needs a token; set --admin-token or PATCHBAY_ADMIN_TOKEN, or bind to 127.0.0.1";
    let out = patchbay()
        .args(["run", "p.toml", "--admin", "0.0.0.0:0"])
        .env_remove("PATCHBAY_ADMIN_TOKEN")
        .current_dir(s.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(expected), "{stderr}");
    // The same from the file's `[admin]` table; nothing ran.
    let text = s.read("p.toml");
    s.write(
        "q.toml",
        &format!("[admin]\nlisten = \"0.0.0.0:0\"\n{text}"),
    );
    let out = patchbay()
        .args(["run", "q.toml"])
        .env_remove("PATCHBAY_ADMIN_TOKEN")
        .current_dir(s.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(expected), "{stderr}");
    assert!(!stderr.contains(" in, "), "a pipeline ran: {stderr}");
}

/// A plugin that reports more series than its cap, a label value that tries to end its line,
/// a `plugin` label and a name that is no name: the excess and the bad ones are refused and
/// counted, and the scrape still parses, with no forged series in it.
#[test]
fn a_plugin_cannot_flood_or_forge_the_metrics() {
    let s = Scratch::new();
    s.write(
        "p.toml",
        r#"
[plugins.ticker]
path = "{plugin:generator}"
config = { count = 0, rate = 20 }

[plugins.noisy]
path = "{plugin:test-hostile}"
config = { attack = "metrics", count = 1500 }

[plugins.null]
path = "{plugin:blackhole}"

[[pipeline]]
name = "noisy"
source = "ticker"
transforms = ["noisy"]
sinks = ["null"]
batch_size = 1
"#,
    );
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = patchbay()
        .args(["run", "p.toml", "--admin", &format!("127.0.0.1:{port}")])
        .current_dir(s.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let started = Instant::now();
    // The attack runs once, on the first message; the refusals are counted as it runs, the
    // first two (the `plugin` label, the bad name) before any series: wait for all 503.
    let scrape = loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the attack did not run"
        );
        std::thread::sleep(Duration::from_millis(100));
        let Ok(answer) = rt.block_on(call("GET", &format!("{base}/metrics"), None, None)) else {
            continue;
        };
        assert_eq!(answer.status, 200);
        let lines = answer.body.lines().map(|l| Ok(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
        if sample(
            &scrape,
            "patchbay_plugin_metrics_refused_total",
            &[("plugin", "noisy")],
        ) == Some(503.0)
        {
            break (scrape, answer.body);
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let (scrape, body) = scrape;
    // The forging label value is kept, escaped (the scrape parsed); the `plugin` label and the
    // bad name are refused; of the 1,500 series 999 fit under the cap of 1,000 and 501 do not.
    let kept = scrape
        .samples
        .iter()
        .filter(|x| x.metric == "plugin_hostile_series_total")
        .count();
    assert_eq!(kept, 999);
    assert!(
        body.lines().any(|l| l
            == r#"plugin_hostile_forge{plugin="noisy",v="x\"} 0\npatchbay_pipeline_up{pipeline=\"victim"} 1.0"#),
        "{body}"
    );
    assert_eq!(
        sample(
            &scrape,
            "patchbay_plugin_metrics_refused_total",
            &[("plugin", "noisy")]
        ),
        Some(503.0)
    );
    assert!(
        !body
            .lines()
            .any(|l| l.starts_with("patchbay_pipeline_up{pipeline=\"victim")),
        "{body}"
    );
    assert!(
        !scrape
            .samples
            .iter()
            .any(|x| x.labels.get("plugin") == Some("victim")),
        "a forged plugin label"
    );
}

#[test]
fn dead_letters_are_listed_filtered_and_paged_and_events_stream_the_counters() {
    let s = Scratch::new();
    s.mkdir("out");
    s.write(
        "p.toml",
        &(r#"
[plugins.gen]
path = "{plugin:generator}"
config = { count = 100 }

[plugins.inverse]
path = "{plugin:map}"
config = { set = { inverse = "100 / (json.seq % 10)" } }

[plugins.out]
path = "{plugin:file-sink}"
config = { path = "/out/out.jsonl" }
grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }] }

[[pipeline]]
name = "orders"
source = "gen"
transforms = ["inverse"]
sinks = ["out"]
on_error = "dead-letter"
dead_letter = { path = "out/dead.jsonl" }
"#
        .to_owned()
            + FOREVER),
    );
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = patchbay()
        .args(["run", "p.toml", "--admin", &format!("127.0.0.1:{port}")])
        .current_dir(s.path())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let started = Instant::now();
    let all = loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no dead letters"
        );
        std::thread::sleep(Duration::from_millis(100));
        let Ok(answer) = rt.block_on(call("GET", &format!("{base}/v1/dead-letters"), None, None))
        else {
            continue;
        };
        assert_eq!(answer.status, 200, "{}", answer.body);
        let page: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        if page["total"] == 10 {
            break page;
        }
    };
    // Every tenth record divides by zero: seq 0, 10, … 90, in order, with their context.
    let entries = all["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 10);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e["id"], format!("orders:{}", i + 1));
        assert_eq!(e["pipeline"], "orders");
        assert_eq!(e["stage"], "transform");
        assert_eq!(e["plugin"], "inverse");
        assert_eq!(e["error_kind"], "invalid-data");
        let payload: serde_json::Value =
            serde_json::from_str(e["message"]["payload"].as_str().unwrap()).unwrap();
        assert_eq!(payload["seq"], i as u64 * 10);
    }
    let page = get(
        &rt,
        &format!("{base}/v1/dead-letters?pipeline=orders&offset=8&limit=5"),
        None,
    );
    let page: serde_json::Value = serde_json::from_str(&page.body).unwrap();
    assert_eq!(
        (page["total"].as_u64(), page["offset"].as_u64()),
        (Some(10), Some(8))
    );
    let ids: Vec<&str> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["orders:9", "orders:10"]);
    let none = get(&rt, &format!("{base}/v1/dead-letters?stage=sink"), None);
    assert!(none.body.contains(r#""total":0"#), "{}", none.body);
    let unknown = get(&rt, &format!("{base}/v1/dead-letters?pipeline=nope"), None);
    assert_eq!(unknown.status, 404);
    assert_eq!(
        unknown.body,
        r#"{"error":"no pipeline `nope`; the pipelines are: orders, forever"}"#
    );
    let bad = get(&rt, &format!("{base}/v1/dead-letters?limit=0"), None);
    assert_eq!(bad.status, 400);
    assert_eq!(
        bad.body,
        r#"{"error":"limit 0 is out of range; give 1 to 1000"}"#
    );

    // /v1/events: `status` events whose counters rise (the ticker runs at 20 a second).
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    std::io::Write::write_all(
        &mut stream,
        b"GET /v1/events HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n\r\n",
    )
    .unwrap();
    let mut reader = std::io::BufReader::new(stream);
    let mut counts = Vec::new();
    let mut saw_type = false;
    // Until the count rose (at most 30 events: 30 s).
    while counts.len() < 30 && counts.first() >= counts.last() {
        let mut line = String::new();
        assert!(std::io::BufRead::read_line(&mut reader, &mut line).unwrap() > 0);
        saw_type |= line.trim_end() == "content-type: text/event-stream";
        if line.starts_with("event:") {
            assert_eq!(line.trim_end(), "event: status");
        }
        if let Some(data) = line.strip_prefix("data: ") {
            let status: serde_json::Value = serde_json::from_str(data).unwrap();
            assert_eq!(status["pipelines"][1]["name"], "forever");
            counts.push(status["pipelines"][1]["in"].as_u64().unwrap());
        }
    }
    assert!(saw_type);
    assert!(counts.first() < counts.last(), "{counts:?}");
    let _ = child.kill();
    let _ = child.wait();
}

/// `forever`: a ticker at 20 records a second into a blackhole, appended to a pipeline file
/// for counters that keep rising.
pub(crate) const FOREVER: &str = r#"
[plugins.ticker]
path = "{plugin:generator}"
config = { count = 0, rate = 20 }

[plugins.null]
path = "{plugin:blackhole}"

[[pipeline]]
name = "forever"
source = "ticker"
sinks = ["null"]
"#;

/// A pipeline whose records wait for data in Redis: `gen` (20 records) → `lookup` (key
/// `PREFIX:{seq}`, missing → invalid-data) → `out` (out/out.jsonl), dead letters in
/// out/dead.jsonl; and `forever`, a ticker at 20 a second into a blackhole. The browser tests
/// run it too.
pub(crate) fn enrichment_pipeline(prefix: &str) -> String {
    r#"
[plugins.gen]
path = "{plugin:generator}"
config = { count = 20 }

[plugins.lookup]
path = "{plugin:redis-lookup}"
grants = { tcp = ["127.0.0.1:6379"] }
config = { url = "redis://127.0.0.1:6379", key = "PREFIX:{seq}", into = "found", missing = "fail" }

[plugins.out]
path = "{plugin:file-sink}"
config = { path = "/out/out.jsonl" }
grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }] }

[[pipeline]]
name = "orders"
source = "gen"
transforms = ["lookup"]
sinks = ["out"]
batch_size = 5
on_error = "dead-letter"
dead_letter = { path = "out/dead.jsonl" }
"#
    .replace("PREFIX", prefix)
        + FOREVER
}

/// Wait until `GET /v1/dead-letters` holds `n` entries; the page.
pub(crate) fn wait_for_dead_letters(
    rt: &tokio::runtime::Runtime,
    base: &str,
    n: u64,
) -> serde_json::Value {
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{n} dead letters never showed"
        );
        std::thread::sleep(Duration::from_millis(100));
        let Ok(answer) = rt.block_on(call("GET", &format!("{base}/v1/dead-letters"), None, None))
        else {
            continue;
        };
        let page: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        if page["total"] == n {
            return page;
        }
    }
}

#[test]
fn dead_letters_replayed_through_the_api_are_delivered_and_leave_the_list() {
    let _redis = crate::redis::redis_lock();
    crate::redis::require_redis();
    let s = Scratch::new();
    s.mkdir("out");
    let port = free_port();
    let prefix = format!("replay-api-{port}");
    // Even records find their data; odd ones fail until it arrives.
    for seq in (0..20).step_by(2) {
        crate::redis::cli(&["SET", &format!("{prefix}:{seq}"), r#"{"ok":true}"#]);
    }
    s.write("p.toml", &enrichment_pipeline(&prefix));
    let base = format!("http://127.0.0.1:{port}");
    let _patchbay = crate::Running::start(
        s.path(),
        &["run", "p.toml", "--admin", &format!("127.0.0.1:{port}")],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let page = wait_for_dead_letters(&rt, &base, 10);
    assert_eq!(page["entries"][0]["error_kind"], "invalid-data");
    let post = |body: &str| {
        rt.block_on(call(
            "POST",
            &format!("{base}/v1/dead-letters/replay"),
            None,
            Some(body.to_owned()),
        ))
        .unwrap()
    };
    // Nothing is taken for a request that names an entry that is not there.
    let missing = post(r#"{"ids": ["orders:1", "orders:11"]}"#);
    assert_eq!(missing.status, 409, "{}", missing.body);
    assert_eq!(
        missing.body,
        r#"{"error":"no dead letter `orders:11`: pipeline `orders` has 10 (ids change after a replay; list them again)","replays":[]}"#
    );
    let bad = post(r#"{"ids": ["orders"]}"#);
    assert_eq!(bad.status, 400);
    assert_eq!(
        bad.body,
        r#"{"error":"id `orders` is not PIPELINE:N (N from 1); take ids from GET /v1/dead-letters"}"#
    );
    // The data arrives; records 1, 3, 5 and 7 (the first four entries) go back.
    for seq in (1..20).step_by(2) {
        crate::redis::cli(&["SET", &format!("{prefix}:{seq}"), r#"{"ok":true}"#]);
    }
    let done = post(r#"{"ids": ["orders:1", "orders:2", "orders:3", "orders:4"]}"#);
    assert_eq!(done.status, 200, "{}", done.body);
    // Compared as JSON: the workspace build turns on serde_json's preserve_order (key order
    // then follows the struct), a build of this crate alone sorts the keys.
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&done.body).unwrap(),
        serde_json::json!({"replays": [
            {"pipeline": "orders", "replayed": 4, "delivered": 4, "dead_lettered_again": 0}
        ]})
    );
    let written = s.read("out/out.jsonl");
    let mut seqs: Vec<u64> = written
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    seqs.sort_unstable();
    let mut expected: Vec<u64> = (0..20).step_by(2).chain([1, 3, 5, 7]).collect();
    expected.sort_unstable();
    assert_eq!(seqs, expected);
    // Six remain, renumbered from 1: records 9 … 19.
    let page = wait_for_dead_letters(&rt, &base, 6);
    let first: serde_json::Value =
        serde_json::from_str(page["entries"][0]["message"]["payload"].as_str().unwrap()).unwrap();
    assert_eq!(
        (page["entries"][0]["id"].as_str(), first["seq"].as_u64()),
        (Some("orders:1"), Some(9))
    );
    crate::redis::cli(&[
        "EVAL",
        "for _,k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end",
        "0",
        &format!("{prefix}:*"),
    ]);
}
