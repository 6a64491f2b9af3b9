//! `concurrency` and `partition_by`: several instances per stage, with what a user sees in the
//! output file (every record once, source order, per-key order), under a hot swap, and the
//! config mistakes a user can make, each refused with where and what to do.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use patchbay_runtime::admin_client::call;

use crate::{Scratch, patchbay, plugins_dir, text};

const MILLION: u64 = 1_000_000;

fn seqs(jsonl: &str) -> Vec<u64> {
    jsonl
        .lines()
        .map(|l| match serde_json::from_str::<serde_json::Value>(l) {
            Ok(v) => v["seq"].as_u64().unwrap(),
            Err(e) => panic!("torn or invalid line {l:?}: {e}"),
        })
        .collect()
}

/// Three pipelines of a million records each, in one process:
/// - `ordered`: four json-map instances, one sink: the file is in source order;
/// - `spread`: four json-map instances and four file-sink instances on one file: every record
///   exactly once, no line torn (batches land in the order the sinks finish them);
/// - `keyed`: the same with `partition_by = "key"` over 16 keys: each key's records in order.
#[test]
fn a_million_records_through_four_instances_keep_order_or_key_order_and_arrive_once() {
    let s = Scratch::new();
    s.mkdir("out");
    let mut file = String::new();
    for (name, extra) in [
        ("ordered", "[pipeline.stages.map]\nconcurrency = 4\n"),
        ("spread", "concurrency = 4\n"),
        ("keyed", "concurrency = 4\npartition_by = \"key\"\n"),
    ] {
        file.push_str(&format!(
            r#"
[plugins.gen-{name}]
path = "{{plugin:generator}}"
config = {{ count = {MILLION}, size = 80, keys = 16 }}

[plugins.out-{name}]
path = "{{plugin:file-sink}}"
config = {{ path = "/out/{name}.jsonl", format = "jsonl" }}
grants = {{ dirs = [{{ host = "out", guest = "/out", mode = "rw" }}] }}

[[pipeline]]
name = "{name}"
source = "gen-{name}"
transforms = ["map"]
sinks = ["out-{name}"]
batch_size = 512
{extra}"#
        ));
    }
    file.push_str(
        r#"
[plugins.map]
path = "{plugin:json-map}"
config = { rename = { data = "body" }, set = { tag = "v1" } }
"#,
    );
    s.write("p.toml", &file);
    let out = s.run(&["run", "p.toml", "--progress", "0s"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    for name in ["ordered", "spread", "keyed"] {
        assert!(
            stderr.contains(&format!(
                "pipeline `{name}`: {MILLION} in, 0 dropped, {MILLION} written to `out-{name}`"
            )),
            "{name}: {stderr}"
        );
    }

    let ordered = seqs(&s.read("out/ordered.jsonl"));
    assert_eq!(ordered.len() as u64, MILLION);
    assert!(
        ordered.iter().copied().eq(0..MILLION),
        "source order: first out of place at {:?}",
        ordered.iter().zip(0..).find(|(a, b)| **a != *b)
    );

    let mut spread = seqs(&s.read("out/spread.jsonl"));
    spread.sort_unstable();
    assert!(spread.iter().copied().eq(0..MILLION), "each record once");

    let keyed = seqs(&s.read("out/keyed.jsonl"));
    assert_eq!(keyed.len() as u64, MILLION);
    let mut by_key: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for seq in keyed {
        by_key.entry(seq % 16).or_default().push(seq);
    }
    assert_eq!(by_key.len(), 16);
    for (key, seqs) in by_key {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "key {key} out of order"
        );
        assert_eq!(seqs.len() as u64, MILLION / 16);
    }
}

/// A swap of a transform running four instances: every record once, each batch on one
/// version, and in the output (source order) exactly one switch per swap.
#[test]
fn swapping_a_transform_with_four_instances_under_traffic_is_exact() {
    const TOTAL: u64 = 150_000;
    const SWAPS: u64 = 6;
    let s = Scratch::new();
    s.mkdir("out");
    s.mkdir("plugins");
    for p in ["generator", "tagger-v1", "tagger-v2", "file-sink"] {
        std::fs::copy(
            plugins_dir().join(format!("{p}.wasm")),
            s.path().join(format!("plugins/{p}.wasm")),
        )
        .unwrap();
    }
    s.write(
        "p.toml",
        &format!(
            r#"
[plugins.gen]
path = "plugins/generator.wasm"
config = {{ count = {TOTAL}, rate = 25000 }}

[plugins.tag]
path = "plugins/tagger-v1.wasm"

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

[pipeline.stages.tag]
concurrency = 4
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
        .args(["run", "p.toml", "--progress", "0s"])
        .args(["--admin", &format!("127.0.0.1:{port}")])
        .args(["--admin-token", "tok"])
        .current_dir(s.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let token = Some("tok");
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
    for i in 0..SWAPS {
        let version = if i % 2 == 0 { "tagger-v2" } else { "tagger-v1" };
        let body = serde_json::json!({ "path": s.path().join(format!("plugins/{version}.wasm")) });
        let answer = rt
            .block_on(call(
                "POST",
                &format!("{base}/v1/plugins/tag/reload"),
                token,
                Some(body.to_string()),
            ))
            .unwrap();
        assert_eq!(answer.status, 200, "swap {i}: {}", answer.body);
        std::thread::sleep(Duration::from_millis(200));
    }
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

    let mut seen = BTreeSet::new();
    let mut batch_tags: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    let mut runs = 0;
    let mut last_tag = String::new();
    let mut last_seq = None;
    for line in s.read("out/out.jsonl").lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let seq = v["seq"].as_u64().unwrap();
        assert!(seen.insert(seq), "duplicate: {line}");
        assert!(last_seq < Some(seq), "source order: {line}");
        last_seq = Some(seq);
        let tag = v["tag"].as_str().unwrap().to_owned();
        if tag != last_tag {
            runs += 1;
            last_tag = tag.clone();
        }
        batch_tags
            .entry(v["batch"].as_u64().unwrap())
            .or_default()
            .insert(tag);
    }
    assert_eq!(seen.len() as u64, TOTAL);
    for (batch, tags) in &batch_tags {
        assert_eq!(tags.len(), 1, "batch {batch} ran on {tags:?}");
    }
    // v1, then one switch per swap: the four instances move together, between batches.
    assert_eq!(runs, SWAPS + 1, "tag runs in output order");
}

#[test]
fn concurrency_mistakes_are_refused_with_where_and_what_to_do() {
    let s = Scratch::new();
    s.write(
        "p.toml",
        r#"
[plugins.gen]
path = "{plugin:generator}"

[plugins.map]
path = "{plugin:json-map}"

[plugins.null]
path = "{plugin:blackhole}"

[[pipeline]]
name = "p"
source = "gen"
transforms = ["map"]
sinks = ["null"]
concurrency = 0
partition_by = "json.("

[pipeline.stages.gen]
concurrency = 2
partition_by = "key"

[pipeline.stages.mapp]
concurrency = "auto"
"#,
    );
    let out = s.run(&["validate", "p.toml"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    for expected in [
        "p.toml:16:15: pipeline `p`: concurrency 0 is out of range",
        "use 1 to 256 instances, or \"auto\" for one per core",
        "p.toml:17:16: pipeline `p`: partition_by `json.(` is not valid CEL",
        "p.toml:19:18: pipeline `p`: source `gen` takes `concurrency` but not `partition_by`: a source's instances each read their own share, and the broker decides which",
        "p.toml:23:18: pipeline `p`: [pipeline.stages.mapp] names no stage of this pipeline",
        "use one of: gen, map, null",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}
