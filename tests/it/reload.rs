//! Hot swap under traffic (`patchbay reload`, `POST /v1/plugins/NAME/reload`): every record exactly
//! once, one version per batch, host state carried over, and every bad swap refused with its
//! reason while the old version keeps serving.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use patchbay_runtime::admin_client::call;

use crate::{Scratch, patchbay, plugins_dir};

const TOTAL: u64 = 200_000;

#[test]
fn swapping_a_transform_ten_times_under_traffic_loses_and_duplicates_nothing() {
    let s = Scratch::new();
    s.mkdir("out");
    s.mkdir("plugins");
    s.mkdir("elsewhere");
    for p in [
        "generator",
        "tagger-v1",
        "tagger-v2",
        "test-hostile",
        "blackhole",
        "file-sink",
    ] {
        std::fs::copy(
            plugins_dir().join(format!("{p}.wasm")),
            s.path().join(format!("plugins/{p}.wasm")),
        )
        .unwrap();
    }
    std::fs::copy(
        plugins_dir().join("tagger-v2.wasm"),
        s.path().join("elsewhere/tagger-v2.wasm"),
    )
    .unwrap();
    std::fs::write(s.path().join("plugins/garbage.wasm"), [7u8; 4096]).unwrap();
    s.write(
        "p.toml",
        &format!(
            r#"
[plugins.gen]
path = "plugins/generator.wasm"
config = {{ count = {TOTAL}, rate = 25000 }}

[plugins.tag]
path = "plugins/tagger-v1.wasm"
config = {{ attack = "bogus" }}

[plugins.tag2]
path = "plugins/tagger-v1.wasm"
config = {{ attack = "init-loop" }}
limits = {{ init_timeout = "300ms" }}

[plugins.out]
path = "plugins/file-sink.wasm"
config = {{ path = "/out/out.jsonl" }}
grants = {{ dirs = [{{ host = "out", guest = "/out", mode = "rw" }}] }}

[plugins.one]
path = "plugins/generator.wasm"
config = {{ count = 1 }}

[plugins.null]
path = "plugins/blackhole.wasm"

[[pipeline]]
name = "main"
source = "gen"
transforms = ["tag"]
sinks = ["out"]
batch_size = 100

[[pipeline]]
name = "side"
source = "one"
transforms = ["tag2"]
sinks = ["null"]
"#
        ),
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let child = patchbay()
        .args([
            "run",
            "p.toml",
            "--progress",
            "0s",
            "--admin",
            &format!("127.0.0.1:{port}"),
            "--admin-token",
            "tok",
        ])
        .current_dir(s.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let token = Some("tok");
    let reload = |plugin: &str, path: Option<&str>| {
        let body = match path {
            Some(p) => serde_json::json!({ "path": s.path().join(p) }).to_string(),
            None => String::new(),
        };
        rt.block_on(call(
            "POST",
            &format!("{base}/v1/plugins/{plugin}/reload"),
            token,
            Some(body),
        ))
        .unwrap()
    };
    // Wait for traffic.
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < Duration::from_secs(60), "no traffic");
        std::thread::sleep(Duration::from_millis(50));
        if let Ok(a) = rt.block_on(call("GET", &format!("{base}/v1/pipelines"), token, None))
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&a.body)
            && v["pipelines"][0]["in"].as_u64().unwrap_or(0) > 5000
        {
            break;
        }
    }

    for i in 0..10 {
        let version = if i % 2 == 0 { "tagger-v2" } else { "tagger-v1" };
        let answer = reload("tag", Some(&format!("plugins/{version}.wasm")));
        assert_eq!(answer.status, 200, "swap {i}: {}", answer.body);
        let swapped: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(swapped["generation"], i + 1);
        assert_eq!(
            swapped["version"],
            if i % 2 == 0 { "2.0.0" } else { "1.0.0" }
        );
        std::thread::sleep(Duration::from_millis(150));

        // Between good swaps, bad ones: each refused with its reason.
        let refused = |answer: patchbay_runtime::admin_client::Answer, code: u16, reason: &str| {
            assert_eq!(answer.status, code, "{}", answer.body);
            let v: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
            let error = v["error"].as_str().unwrap();
            assert!(error.contains(reason), "{error}");
        };
        match i {
            0 => refused(
                reload("tag", Some("plugins/garbage.wasm")),
                422,
                "is not a WebAssembly component",
            ),
            1 => refused(
                reload("tag", Some("plugins/blackhole.wasm")),
                422,
                "is a sink but plugin `tag` is a transform; a swap keeps the world",
            ),
            2 => refused(
                reload("tag", Some("plugins/test-hostile.wasm")),
                422,
                "`init` of test-hostile 0.1.0 returned fatal error: config key `attack`: `bogus` is not one of",
            ),
            3 => refused(
                reload("tag2", Some("plugins/test-hostile.wasm")),
                422,
                "ran past its deadline of 300ms",
            ),
            4 => refused(
                reload("tag", Some("elsewhere/tagger-v2.wasm")),
                403,
                "is outside the directories plugins are loaded from",
            ),
            5 => {
                let a = rt
                    .block_on(call(
                        "POST",
                        &format!("{base}/v1/plugins/tag/reload"),
                        None,
                        Some(String::new()),
                    ))
                    .unwrap();
                assert_eq!(a.status, 401, "{}", a.body);
            }
            6 => refused(reload("nope", None), 404, "no plugin `nope`"),
            _ => {}
        }
    }
    let metrics = rt
        .block_on(call("GET", &format!("{base}/metrics"), token, None))
        .unwrap();
    assert!(
        metrics
            .body
            .contains("patchbay_swaps_total{plugin=\"tag\"} 10"),
        "{}",
        metrics.body
    );
    let plugins = rt
        .block_on(call("GET", &format!("{base}/v1/plugins"), token, None))
        .unwrap();
    let plugins: serde_json::Value = serde_json::from_str(&plugins.body).unwrap();
    let tag = plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "tag")
        .unwrap();
    assert_eq!(tag["generation"], 10);
    assert_eq!(tag["version"], "1.0.0");
    assert_eq!(tag["state"][0]["pipeline"], "main");
    assert_eq!(tag["state"][0]["keys"], 1);
    let status = rt
        .block_on(call("GET", &format!("{base}/v1/pipelines"), token, None))
        .unwrap();
    let status: serde_json::Value = serde_json::from_str(&status.body).unwrap();
    assert!(
        status["pipelines"][0]["in"].as_u64().unwrap() < TOTAL,
        "the swaps must happen under traffic; make the run longer: {status}"
    );

    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "pipeline `main`: {TOTAL} in, 0 dropped, {TOTAL} written to `out`"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("pipeline `main`: transform `tag` (#1) now runs version 2.0.0"),
        "{stderr}"
    );

    let text = s.read("out/out.jsonl");
    let mut seqs = BTreeSet::new();
    let mut ns = BTreeSet::new();
    let mut batch_tags: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    let mut switches = 0;
    let mut last_tag = String::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(seqs.insert(v["seq"].as_u64().unwrap()), "duplicate: {line}");
        assert!(ns.insert(v["n"].as_u64().unwrap()), "state reset: {line}");
        let tag = v["tag"].as_str().unwrap().to_owned();
        if tag != last_tag {
            switches += 1;
            last_tag = tag.clone();
        }
        batch_tags
            .entry(v["batch"].as_u64().unwrap())
            .or_default()
            .insert(tag);
    }
    // Every record exactly once.
    assert_eq!(seqs.len() as u64, TOTAL);
    assert_eq!(seqs.iter().next_back().copied(), Some(TOTAL - 1));
    // The host state carried across versions: the counter ran 1..=TOTAL without restarting.
    assert_eq!(ns.len() as u64, TOTAL);
    assert_eq!(ns.iter().next_back().copied(), Some(TOTAL));
    // One version per batch: tags switch only between batches.
    for (batch, tags) in &batch_tags {
        assert_eq!(tags.len(), 1, "batch {batch} ran on {tags:?}");
    }
    // v1, then ten swaps: eleven runs of one tag.
    assert_eq!(switches, 11, "tag runs in output order");
}

#[test]
fn a_watched_plugin_follows_its_file_and_ignores_a_broken_one() {
    let s = Scratch::new();
    s.mkdir("out");
    s.mkdir("plugins");
    for p in ["generator", "file-sink"] {
        std::fs::copy(
            plugins_dir().join(format!("{p}.wasm")),
            s.path().join(format!("plugins/{p}.wasm")),
        )
        .unwrap();
    }
    let tagger = s.path().join("plugins/tagger.wasm");
    std::fs::copy(plugins_dir().join("tagger-v1.wasm"), &tagger).unwrap();
    // Replace the file the way a build or a deploy does: write aside, then rename over it.
    let replace = |bytes: Vec<u8>| {
        let tmp = s.path().join("plugins/tagger.wasm.part");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, &tagger).unwrap();
    };
    let total = 60_000u64;
    s.write(
        "p.toml",
        &format!(
            r#"
[plugins.gen]
path = "plugins/generator.wasm"
config = {{ count = {total}, rate = 15000 }}

[plugins.tag]
path = "plugins/tagger.wasm"
watch = true

[plugins.out]
path = "plugins/file-sink.wasm"
config = {{ path = "/out/out.jsonl" }}
grants = {{ dirs = [{{ host = "out", guest = "/out", mode = "rw" }}] }}

[[pipeline]]
name = "main"
source = "gen"
transforms = ["tag"]
sinks = ["out"]
batch_size = 100
"#
        ),
    );
    let child = patchbay()
        .args(["run", "p.toml", "--progress", "0s"])
        .current_dir(s.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while std::fs::metadata(s.path().join("out/out.jsonl")).map_or(true, |m| m.len() == 0) {
        assert!(started.elapsed() < Duration::from_secs(60), "no output");
        std::thread::sleep(Duration::from_millis(20));
    }
    replace(vec![7u8; 4096]);
    std::thread::sleep(Duration::from_millis(900));
    replace(std::fs::read(plugins_dir().join("tagger-v2.wasm")).unwrap());

    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("changed but was not swapped: ")
            && stderr.contains("is not a WebAssembly component"),
        "{stderr}"
    );
    assert!(
        stderr.contains("changed; now version 2.0.0 (generation 1)"),
        "{stderr}"
    );
    let mut seqs = BTreeSet::new();
    let mut runs = Vec::<String>::new();
    let mut batch_tags: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for line in s.read("out/out.jsonl").lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(seqs.insert(v["seq"].as_u64().unwrap()), "duplicate: {line}");
        let tag = v["tag"].as_str().unwrap().to_owned();
        if runs.last() != Some(&tag) {
            runs.push(tag.clone());
        }
        batch_tags
            .entry(v["batch"].as_u64().unwrap())
            .or_default()
            .insert(tag);
    }
    assert_eq!(seqs.len() as u64, total);
    assert_eq!(
        runs,
        ["v1", "v2"],
        "the broken file changed nothing; the good one took over"
    );
    assert!(batch_tags.values().all(|t| t.len() == 1));
}
